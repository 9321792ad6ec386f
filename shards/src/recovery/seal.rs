//! Sealing the last segment of a log at recovery: its frames verified, a torn tail
//! zeroed, the footer written at its last valid frame.

use super::*;

/// Verifies the frames of the last, unsealed segment and seals it at its last valid
/// frame. A torn tail (bytes of writes no sync covered) is zeroed (and synced) first;
/// damage to synced frames is an error and nothing is changed.
pub(super) fn seal_unsealed(fs: &dyn Fs, u: &Used, clock: &Clock) -> AofResult<SegmentFooter> {
    let file = fs
        .open(&u.path, OpenMode::Read)
        .map_err(io_err("open", &u.path))?;
    let image = file.map().map_err(io_err("map", &u.path))?;
    let capacity = format::data_capacity(u.header.file_size);
    let scan = format::scan_frames(u.seed, &image, capacity);
    if let ScanStop::Invalid { offset, reason } = &scan.stop {
        if let Some(proof) =
            format::find_frame_proving_corruption(u.seed, &image, *offset, capacity)
        {
            return Err(corruption(
                &u.path,
                u.id,
                *offset,
                format!(
                    "{reason}; the frame at offset {proof} was appended after this offset was durable, \
                     so synced data is damaged (not a torn write). Nothing was changed on disk"
                ),
            ));
        }
        if u.header.recycled {
            log::info!(
                "aof2: recycled segment {} ends at offset {offset} ({reason}: a torn write or \
                 the stale bytes of its earlier use); sealing at the last valid frame",
                u.path.display()
            );
        } else {
            log::warn!(
                "aof2: segment {} ends in a torn write at offset {offset} ({reason}): records \
                 from there were never acknowledged; sealing at the last valid frame",
                u.path.display()
            );
        }
    }
    if scan.torn_batch > 0 {
        log::warn!(
            "aof2: segment {} ends inside an atomic batch: its {} records from offset {} \
             were never acknowledged (the batch's last record is missing); sealing before them",
            u.path.display(),
            scan.torn_batch,
            scan.data_end
        );
    }
    // Zero the torn tail before sealing: it was never acknowledged, and a sealed
    // segment holds nothing but zeros past its data end, so `aof2 verify` can check
    // every byte of it.
    // A recycled file's tail is stale bytes by definition (the format allows them):
    // only the block the data ends in is rewritten, its tail zeroed.
    let tail_end = if u.header.recycled {
        // A torn batch's frames validate under this header: zero them too.
        Some(scan.frames_end).filter(|e| e % BLOCK as u64 != 0 || scan.torn_batch > 0)
    } else {
        image[..capacity as usize]
            .iter()
            .rposition(|&b| b != 0)
            .map(|i| i as u64 + 1)
            .filter(|&e| e > scan.data_end)
    };
    let from = scan.data_end & !(BLOCK as u64 - 1);
    let kept = image[from as usize..scan.data_end as usize].to_vec();
    drop(image);
    let w = fs
        .open(&u.path, OpenMode::Write { direct: true })
        .map_err(io_err("open", &u.path))?;
    if let Some(end) = tail_end {
        let end = end.div_ceil(BLOCK as u64) * BLOCK as u64;
        let mut at = from;
        while at < end {
            let len = (end - at).min(crate::buffer::PREP_CHUNK as u64) as usize;
            let chunk = AlignedBuf::zeroed(len);
            if at == from {
                // SAFETY: a fresh buffer, ours alone; `kept` is shorter than a block.
                unsafe { chunk.write(0, &kept) };
            }
            // SAFETY: ours alone, as above.
            let bytes = unsafe { chunk.slice(0, len) };
            crate::fs::write_all_at(&*w, at, &[bytes])
                .map_err(io_err("zero torn tail", &u.path))?;
            at += len as u64;
        }
        w.fdatasync().map_err(io_err("fdatasync", &u.path))?;
    }
    let footer = SegmentFooter {
        segment_id: u.id,
        record_count: scan.record_count,
        data_end: scan.data_end,
        last_frame_crc: scan.last_crc,
        last_record_offset: scan.last_record_offset,
        sealed_at_ns: clock.realtime_ns().max(scan.last_timestamp_ns),
        index_offset: 0,
        index_len: 0,
        index_crc: 0,
        closed_cleanly: false,
    };
    let block = AlignedBuf::zeroed(BLOCK);
    // SAFETY: a fresh block, ours alone.
    unsafe { block.write(0, &footer.encode(u.seed)) };
    // SAFETY: ours alone, as above.
    let bytes = unsafe { block.slice(0, BLOCK) };
    crate::fs::write_all_at(&*w, u.header.file_size - FOOTER_REGION, &[bytes])
        .map_err(io_err("write seal footer", &u.path))?;
    w.fdatasync().map_err(io_err("fdatasync", &u.path))?;
    log::info!(
        "aof2: sealed {} at offset {} with {} records",
        u.path.display(),
        scan.data_end,
        scan.record_count
    );
    Ok(footer)
}
