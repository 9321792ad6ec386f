//! Record sizes across every boundary, with the default configuration: the block, a
//! buffer, a new log's first segment, the target size, the maximum; on a new log, a
//! reopened one and a slow one that stays in small segments.

mod common;
use bop_rs::aof2::config::AofConfig;
use common::*;

fn default_cfg(root: &std::path::Path) -> AofConfig {
    let mut c = AofConfig::default();
    c.root_dir = root.to_path_buf();
    c
}

#[test]
fn a_new_logs_first_record_of_about_one_mib_is_durable_and_reads_back() {
    let m = manager();
    for len in [1_048_512usize, 1_100_000, 2 << 20, 3_000_000] {
        let dir = tempfile::tempdir().unwrap();
        let aof = open(&m, default_cfg(dir.path()));
        let rec: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let rid = aof.append_record(&rec).expect("append");
        aof.flush_until(rid).expect("flush");
        assert_eq!(read_back(&aof, rid), rec, "len {len}");
    }
}
