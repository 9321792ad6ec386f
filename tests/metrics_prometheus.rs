//! `AofManager::prometheus_text`: the exposition format's rules, one labelled series
//! per open log, histograms that count every durable record, manager-wide series
//! unlabelled, and closed logs gone.

mod common;

use bop_rs::aof2::Aof;
use common::*;
use std::collections::{BTreeMap, HashMap};

/// (name, labels) -> value, and each family's TYPE, checking HELP/TYPE come once,
/// before the family's samples.
fn parse(text: &str) -> (HashMap<(String, String), f64>, BTreeMap<String, String>) {
    let mut samples = HashMap::new();
    let mut types = BTreeMap::new();
    let mut helped = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap().to_string();
            assert!(helped.insert(name.clone()), "HELP of {name} twice");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            assert!(helped.contains(name), "TYPE of {name} before its HELP");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "TYPE of {name} twice"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n.to_string(), l.trim_end_matches('}').to_string()),
            None => (series.to_string(), String::new()),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(&name);
        assert!(types.contains_key(family), "{name} before its TYPE");
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        assert!(
            samples.insert((name.clone(), labels), v).is_none(),
            "{line} twice"
        );
    }
    (samples, types)
}

#[test]
fn every_open_log_is_one_labelled_series_and_histograms_count_every_durable_record() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let open_log = |name: &str| open(&m, small_cfg(&dir.path().join(name)));
    // The label is `root_dir` as configured, not the absolute path it resolves to.
    let a: Aof = open_log("./a");
    let b: Aof = open_log("b \"quoted\"");
    for (aof, n) in [(&a, 50u64), (&b, 120)] {
        for i in 0..n {
            let rid = aof.append_record(&payload(n, i)).unwrap();
            if i % 7 == 0 {
                aof.flush_until(rid).unwrap();
            }
        }
        aof.flush().unwrap();
    }
    let text = m.prometheus_text();
    let (s, types) = parse(&text);
    for (name, kind) in &types {
        match kind.as_str() {
            "counter" => assert!(name.ends_with("_total"), "{name}"),
            "gauge" | "histogram" => assert!(!name.ends_with("_total"), "{name}"),
            k => panic!("{name}: type {k}"),
        }
    }
    let la = format!("log=\"{}\"", dir.path().join("./a").display());
    let lb = format!(
        "log=\"{}\"",
        dir.path()
            .join("b \"quoted\"")
            .display()
            .to_string()
            .replace('"', "\\\"")
    );
    for (label, n) in [(&la, 50.0), (&lb, 120.0)] {
        let get = |name: &str| s[&(name.to_string(), label.to_string())];
        assert_eq!(get("aof_records_appended_total"), n);
        assert_eq!(get("aof_flush_backlog_bytes"), 0.0);
        // Every record became durable, and each is counted once.
        assert_eq!(get("aof_append_to_durable_seconds_count"), n);
        assert!(get("aof_sync_duration_seconds_count") >= 1.0);
        assert_eq!(get("aof_records_per_sync_sum"), n);
        let sum = get("aof_append_to_durable_seconds_sum");
        assert!(sum > 0.0 && sum < n * 10.0, "{sum} s");
        // Buckets never decrease and end at the count.
        for h in [
            "aof_append_to_durable_seconds",
            "aof_sync_duration_seconds",
            "aof_records_per_sync",
        ] {
            let mut buckets: Vec<(f64, f64)> = s
                .iter()
                .filter(|((name, l), _)| {
                    name == &format!("{h}_bucket") && l.starts_with(&format!("{label},"))
                })
                .map(|((_, l), v)| {
                    let le = l.rsplit_once("le=\"").unwrap().1.trim_end_matches('"');
                    (
                        if le == "+Inf" {
                            f64::INFINITY
                        } else {
                            le.parse().unwrap()
                        },
                        *v,
                    )
                })
                .collect();
            buckets.sort_by(|x, y| x.0.total_cmp(&y.0));
            assert!(buckets.len() > 5, "{h}: {buckets:?}");
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{h}: {buckets:?}"
            );
            assert_eq!(buckets.last().unwrap().1, get(&format!("{h}_count")), "{h}");
        }
    }
    // Manager-wide series carry no log label.
    assert!(s.contains_key(&("aof_tier0_bytes".to_string(), String::new())));
    assert!(s
        .keys()
        .any(|(n, l)| n == "aof_shard_logs" && l.starts_with("shard=")));
    // A closed log is gone from the next scrape.
    a.close().unwrap();
    let (s, _) = parse(&m.prometheus_text());
    assert!(
        !s.keys().any(|(_, l)| l.contains(&la)),
        "a closed log is not exported"
    );
    assert!(s.keys().any(|(_, l)| l.contains(&lb)));
}
