//! The writer and the checker behind `scripts/crash-test.sh`.
//!
//! `aof2-torture write DIR ACKS ROUND` appends records forever in groups (every other
//! one an atomic `append_batch`, the rest one `append_record` each; rolls, seals,
//! records larger than a segment, and now and then a clean close and reopen, after
//! which the log continues its last segment), and after each `flush_until` appends one
//! line per acknowledged record to ACKS: `ROUND SEQ RECORD_ID`. It is meant to be
//! killed.
//!
//! `aof2-torture check DIR ACKS` opens the log (recovering it, as a restarted writer
//! would) and checks that every acknowledged record is there, byte for byte, and that
//! each round's records form a gap-free prefix in order that does not end inside an
//! atomic batch. Exit status 1 on any breach.

use bop_rs::aof2::reader::SealedSegmentStream;
use bop_rs::aof2::{Aof, AofConfig, AofManager, AofManagerConfig, RecordId};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// Record `seq` of `round`: both numbers first, then filler of a length and content
/// derived from them (now and then larger than a 64 KiB segment).
fn payload(round: u64, seq: u64) -> Vec<u8> {
    let h = round.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seq.wrapping_mul(0xff51_afd7_ed55_8ccd);
    let len = if seq % 97 == 96 {
        70_000 + (h % 30_000) as usize
    } else {
        (h % 3000) as usize
    };
    let mut p = Vec::with_capacity(16 + len);
    p.extend_from_slice(&round.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend((0..len).map(|i| (i as u64 ^ h) as u8));
    p
}

/// The group of records starting at `seq`: its length, and whether it is appended as
/// one atomic batch.
fn group(seq: u64) -> (u64, bool) {
    (1 + seq % 13, seq % 2 == 1)
}

fn config(dir: &Path) -> AofConfig {
    let mut c = AofConfig::default();
    c.root_dir = dir.to_path_buf();
    c.segment_min_bytes = 64 * 1024;
    c.segment_target_bytes = 64 * 1024;
    c.segment_max_bytes = 1024 * 1024;
    c.flush.flush_interval_ms = 2;
    c.flush.flush_watermark_bytes = 64 * 1024;
    c
}

fn write(dir: &Path, acks: &Path, round: u64) -> Result<(), String> {
    let m = AofManager::with_config(AofManagerConfig::default()).map_err(|e| e.to_string())?;
    let mut aof = Aof::new(m.handle(), config(dir)).map_err(|e| e.to_string())?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(acks)
        .map_err(|e| format!("{}: {e}", acks.display()))?;
    let mut seq = 0u64;
    loop {
        let (batch, atomic) = group(seq);
        let payloads: Vec<(u64, Vec<u8>)> =
            (seq..seq + batch).map(|s| (s, payload(round, s))).collect();
        let mut rids = Vec::new();
        if atomic {
            let refs: Vec<&[u8]> = payloads.iter().map(|p| p.1.as_slice()).collect();
            let last = aof.append_batch(&refs).map_err(|e| e.to_string())?;
            // The batch's records lie back to back before its last one.
            let mut off = last.segment_offset();
            let mut ids = vec![last; payloads.len()];
            for i in (0..payloads.len() - 1).rev() {
                off -= aof2_shards::format::frame_size(payloads[i].1.len()) as u32;
                ids[i] = RecordId::from_parts(last.segment_index(), off);
            }
            rids.extend(payloads.iter().map(|p| p.0).zip(ids));
        } else {
            for (s, p) in &payloads {
                rids.push((*s, aof.append_record(p).map_err(|e| e.to_string())?));
            }
        }
        seq += batch;
        aof.flush_until(rids.last().expect("a batch").1)
            .map_err(|e| e.to_string())?;
        let mut lines = String::new();
        for (s, rid) in rids {
            lines.push_str(&format!("{round} {s} {}\n", rid.as_u64()));
        }
        // One write per batch: a kill cuts at most the last line, which check ignores.
        log.write_all(lines.as_bytes()).map_err(|e| e.to_string())?;
        if seq % 211 < batch {
            aof.seal_active().map_err(|e| e.to_string())?;
        }
        if seq % 157 < batch {
            // A clean close, then a new session that continues the last segment.
            drop(aof);
            aof = Aof::new(m.handle(), config(dir)).map_err(|e| e.to_string())?;
        }
    }
}

fn check(dir: &Path, acks: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(acks).unwrap_or_default();
    // A kill during the writer's write of its acknowledgements can leave the last line
    // torn ("11 149 126701537" for "11 149 1267015373..."), which would parse as
    // another id: only lines the writer finished (with their newline) are read.
    let finished = text.rfind('\n').map_or("", |end| &text[..=end]);
    let mut acked: Vec<(u64, u64, RecordId)> = Vec::new();
    for line in finished.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if let [r, s, id] = f[..] {
            if let (Ok(r), Ok(s), Ok(id)) = (r.parse(), s.parse(), id.parse()) {
                acked.push((r, s, RecordId::from_u64(id)));
            }
        }
    }
    if !dir.exists() {
        return if acked.is_empty() {
            Ok("no log yet".into())
        } else {
            Err(format!("{} acknowledged records but no log", acked.len()))
        };
    }
    let m = AofManager::with_config(AofManagerConfig::default()).map_err(|e| e.to_string())?;
    let aof = Aof::new(m.handle(), config(dir)).map_err(|e| format!("reopen: {e}"))?;
    // Everything in the log, in order.
    let mut found: HashMap<RecordId, (u64, u64)> = HashMap::new();
    let mut next_seq: HashMap<u64, u64> = HashMap::new();
    let mut last_round = 0;
    // Closed first: the stream then ends once it has delivered everything durable.
    aof.close().map_err(|e| format!("close: {e}"))?;
    let mut stream = SealedSegmentStream::new(&aof).map_err(|e| e.to_string())?;
    while let Some(seg) = stream.next_segment_blocking().map_err(|e| e.to_string())? {
        let mut cursor = seg.into_cursor();
        while let Some(rec) = cursor.next().map_err(|e| e.to_string())? {
            let p = rec.payload();
            if p.len() < 16 {
                return Err(format!(
                    "record {} is not a torture record",
                    rec.record_id()
                ));
            }
            let round = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
            let seq = u64::from_le_bytes(p[8..16].try_into().expect("8 bytes"));
            if p != payload(round, seq).as_slice() {
                return Err(format!(
                    "record {} ({round}, {seq}) has other bytes",
                    rec.record_id()
                ));
            }
            let want = next_seq.entry(round).or_insert(0);
            if seq != *want || round < last_round {
                return Err(format!(
                    "record {} is ({round}, {seq}) but ({round}, {want}) was due: a gap or reordering",
                    rec.record_id()
                ));
            }
            *want += 1;
            last_round = round;
            found.insert(rec.record_id(), (round, seq));
        }
    }
    for (round, seq, rid) in &acked {
        match found.get(rid) {
            Some(&(r, s)) if (r, s) == (*round, *seq) => {}
            other => {
                return Err(format!(
                    "acknowledged record ({round}, {seq}) at {rid} is {}",
                    match other {
                        Some((r, s)) => format!("({r}, {s}) instead"),
                        None => "lost".into(),
                    }
                ))
            }
        }
    }
    for (round, n) in &next_seq {
        let mut start = 0;
        while start < *n {
            let (len, atomic) = group(start);
            if atomic && start + len > *n {
                return Err(format!(
                    "round {round} ends inside atomic batch [{start}, {}): {n} records came back",
                    start + len
                ));
            }
            start += len;
        }
    }
    Ok(format!(
        "{} records in {} rounds, {} acknowledged, all present",
        found.len(),
        next_seq.len(),
        acked.len()
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let r = match args.get(1).map(String::as_str) {
        Some("write") if args.len() == 5 => match args[4].parse() {
            Ok(round) => {
                write(Path::new(&args[2]), Path::new(&args[3]), round).map(|_| String::new())
            }
            Err(_) => Err(format!("ROUND must be a number, not {:?}", args[4])),
        },
        Some("check") if args.len() == 4 => check(Path::new(&args[2]), Path::new(&args[3])),
        _ => Err("usage: aof2-torture write DIR ACKS ROUND | aof2-torture check DIR ACKS".into()),
    };
    match r {
        Ok(msg) => {
            if !msg.is_empty() {
                println!("{msg}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("aof2-torture: {e}");
            ExitCode::FAILURE
        }
    }
}
