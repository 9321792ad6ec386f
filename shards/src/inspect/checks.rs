//! The checks `verify` runs on a sealed segment's bytes (raw or compressed), also used
//! by the archive on what it uploads and downloads.

use crate::compressed_format::CompressedSegment;
use crate::error::AofResult;
use crate::format::{
    self, ScanStop, SegmentFooter, FOOTER_LEN, FOOTER_REGION, HEADER_LEN, NO_RECORD,
};
use crate::log::SealedSegment;
use crate::recovery::{corruption, Used};
use std::path::Path;

/// Checks the bytes of sealed segment `s` as `verify` checks its file: a raw file's
/// header, frames, chain and zeros, or a compressed file's structure and every chunk
/// inflated and checked the same way (`s.compressed`). `path` names it in errors (the
/// archive checks an upload, or a download, this way).
pub fn check_sealed_bytes(path: &Path, s: &SealedSegment, bytes: &[u8]) -> AofResult<()> {
    let u = Used {
        id: s.header.segment_id,
        path: path.to_path_buf(),
        header: s.header,
        seed: s.seed,
        footer: Some(s.footer),
        damaged_footer: None,
        compressed: s.compressed,
        disk_bytes: bytes.len() as u64,
    };
    let expected = s.header.encode().0;
    if bytes.len() < HEADER_LEN || bytes[..HEADER_LEN] != expected {
        return Err(corruption(
            path,
            u.id,
            0,
            "the segment header is not the one the log recorded",
        ));
    }
    if s.compressed {
        check_compressed_image(&u, &s.footer, bytes)
    } else {
        check_raw_image(&u, &s.footer, bytes)
    }
}

/// A raw sealed segment's bytes: long enough, frames and chain, zeros where there are
/// no frames.
pub(super) fn check_raw_image(u: &Used, f: &SegmentFooter, image: &[u8]) -> AofResult<()> {
    if (image.len() as u64) < u.header.file_size {
        return Err(corruption(
            &u.path,
            u.id,
            image.len() as u64,
            format!(
                "file is shorter than the {} bytes its header states",
                u.header.file_size
            ),
        ));
    }
    let image = &image[..u.header.file_size as usize];
    let bad = |off: u64, why: String| corruption(&u.path, u.id, off, why);
    check_sealed_frames(u, f, image)?;
    let footer_at = (u.header.file_size - FOOTER_REGION) as usize;
    // Past the data end: zeros, or a recycled file's stale bytes (never read).
    let data_tail = if u.header.recycled {
        (footer_at, footer_at)
    } else {
        (f.data_end as usize, footer_at)
    };
    let zeros = [data_tail, (footer_at + FOOTER_LEN, image.len())];
    for (a, b) in zeros {
        if let Some(i) = image[a..b].iter().position(|&x| x != 0) {
            return Err(bad(
                (a + i) as u64,
                "a non-zero byte where a sealed segment holds only zeros".into(),
            ));
        }
    }
    Ok(())
}

/// A compressed segment's bytes: its structures, every chunk inflated, and the frames
/// they hold checked as a raw segment's are.
pub(super) fn check_compressed_image(u: &Used, f: &SegmentFooter, map: &[u8]) -> AofResult<()> {
    let c = CompressedSegment::parse_at(map)
        .map_err(|(at, e)| corruption(&u.path, u.id, at, format!("compressed segment: {e}")))?;
    let mut image = map[..HEADER_LEN].to_vec();
    for (i, chunk) in c.chunks.iter().enumerate() {
        let raw = c.inflate(i).map_err(|e| {
            corruption(
                &u.path,
                u.id,
                chunk.raw_start,
                format!("compressed chunk at {}: {e}", chunk.comp_off),
            )
        })?;
        image.extend_from_slice(&raw);
    }
    check_sealed_frames(u, f, &image)
}

/// The frames of sealed segment `u` in `image` (from offset 0): every checksum and
/// link, and that they end where footer `f` says, with its count, last record and CRC.
fn check_sealed_frames(u: &Used, f: &SegmentFooter, image: &[u8]) -> AofResult<()> {
    let bad = |off: u64, why: String| corruption(&u.path, u.id, off, why);
    let mut it = format::frames(u.seed, image, f.data_end);
    let (mut count, mut last_record, mut open_batch) = (0u64, NO_RECORD, false);
    for fr in it.by_ref() {
        let fr = fr.map_err(|(off, why)| bad(off, why))?;
        if fr.header.kind == format::FrameKind::Record {
            count += 1;
            last_record = fr.offset as u32;
            open_batch = fr.header.continues_batch();
        }
    }
    if open_batch {
        return Err(bad(
            u64::from(last_record),
            "sealed inside an atomic batch (its last record says more follow)".into(),
        ));
    }
    if let Some(ScanStop::Blank) = it.stop() {
        return Err(bad(
            it.position(),
            format!("zeros where the footer says frames run to {}", f.data_end),
        ));
    }
    if it.position() != f.data_end {
        return Err(bad(
            it.position(),
            format!(
                "the last frame ends past the sealed data end {}",
                f.data_end
            ),
        ));
    }
    if count != f.record_count || last_record != f.last_record_offset {
        return Err(bad(
                f.data_end,
                format!(
                    "the footer says {} records (last at {}), the frames hold {count} (last at {last_record})",
                    f.record_count, f.last_record_offset
                ),
            ));
    }
    if it.last_crc() != f.last_frame_crc {
        return Err(bad(
            f.data_end,
            "the footer does not seal the last frame (checksum differs)".into(),
        ));
    }
    Ok(())
}
