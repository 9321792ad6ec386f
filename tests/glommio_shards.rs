//! Shards hosted in glommio (`ShardExecutor::Glommio`, cargo feature `glommio`): tasks
//! spawned onto them use glommio itself (timers, local tasks, channels) through the
//! service's own `glommio` dependency; appends from a task on the log's shard make no
//! eventfd write; the manager refuses what glommio cannot run on with a clear error.
//! (The rest of the suite runs on glommio with `AOF2_EXECUTOR=glommio`.)
#![cfg(feature = "glommio")]

mod common;

use bop_rs::aof2::config::{AofConfig, AofManagerConfig, IoBackend, ShardExecutor};
use bop_rs::aof2::{Aof, AofError, AofManager};
use common::*;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn glommio_manager() -> AofManager {
    init_log();
    let mut c = AofManagerConfig::default();
    c.shards = 2;
    c.executor = ShardExecutor::Glommio;
    AofManager::with_config(c).expect("glommio shards start")
}

fn placed(m: &AofManager, root: &std::path::Path, shard: usize) -> Arc<Aof> {
    let mut c = AofConfig::default();
    c.root_dir = root.to_path_buf();
    c.shard = Some(shard);
    Arc::new(open(m, c))
}

#[test]
fn tasks_on_a_glommio_shard_use_glommio_timers_tasks_and_channels() {
    let m = glommio_manager();
    assert!(m.executor().is_glommio());
    assert_eq!(m.io_backend(), "io_uring");
    let dir = tempfile::tempdir().unwrap();
    let log = placed(&m, dir.path(), 1);
    let l = log.clone();
    let t = m
        .spawn_on_shard(1, move || async move {
            let t0 = Instant::now();
            glommio::timer::sleep(Duration::from_millis(20)).await;
            let slept = t0.elapsed();
            // A glommio local task and a local channel, with !Send state.
            let (tx, rx) = glommio::channels::local_channel::new_bounded(4);
            let shared = Rc::new(std::cell::Cell::new(0u32));
            let s = shared.clone();
            let l2 = l.clone();
            let child = glommio::spawn_local(async move {
                for i in 0..3u32 {
                    let rid = l2.append_record_async(&i.to_le_bytes()).await.unwrap();
                    l2.flush_until_async(rid).await.unwrap();
                    s.set(s.get() + 1);
                    tx.send(rid).await.unwrap();
                }
            });
            let mut rids = Vec::new();
            for _ in 0..3 {
                rids.push(rx.recv().await.unwrap());
            }
            child.await;
            (slept, shared.get(), rids)
        })
        .unwrap();
    let (slept, n, rids) = t.join().unwrap();
    assert!(slept >= Duration::from_millis(20), "{slept:?}");
    assert_eq!(n, 3);
    for (i, rid) in rids.iter().enumerate() {
        assert_eq!(read_back(&log, *rid), (i as u32).to_le_bytes());
    }
}

#[test]
fn a_task_on_a_glommio_shard_commits_with_no_eventfd_write() {
    let m = glommio_manager();
    let dir = tempfile::tempdir().unwrap();
    let log = placed(&m, dir.path(), 0);
    let run = |n: u32| {
        let l = log.clone();
        m.spawn_on_shard(0, move || async move {
            for i in 0..n {
                let rid = l.append_record_async(&[i as u8; 4096]).await.unwrap();
                l.flush_until_async(rid).await.unwrap();
            }
        })
        .unwrap()
        .join()
        .unwrap()
    };
    run(200); // the first segment's file is prepared meanwhile
    let (s0, m0) = (m.shard_stats()[0], log.flush_metrics());
    run(400);
    let (s1, m1) = (m.shard_stats()[0], log.flush_metrics());
    assert!(m1.syncs - m0.syncs >= 400);
    // The spawn itself may write the eventfd once (the shard was asleep); nothing else.
    assert!(
        s1.eventfd_wakeups - s0.eventfd_wakeups <= 1,
        "{s0:?} -> {s1:?}"
    );
    assert_eq!(s1.foreign_task_wakeups, s0.foreign_task_wakeups);
}

#[test]
fn glommio_with_the_portable_backend_is_a_clear_error() {
    let mut c = AofManagerConfig::default();
    c.executor = ShardExecutor::Glommio;
    c.backend = IoBackend::Sync;
    let e = AofManager::with_config(c).expect_err("refused");
    assert!(matches!(e, AofError::InvalidConfig(_)), "{e}");
    assert!(e.to_string().contains("io_uring"), "{e}");
}

/// Dropping the manager with tasks pending on glommio shards (one of them asleep in a
/// glommio timer) drains the logs and cancels the tasks.
#[test]
fn dropping_a_glommio_manager_cancels_its_pending_tasks() {
    let m = glommio_manager();
    let dir = tempfile::tempdir().unwrap();
    let log = placed(&m, dir.path(), 0);
    let rid = log.append_record(b"kept").unwrap();
    let sleeping = m
        .spawn_on_shard(0, || glommio::timer::sleep(Duration::from_secs(3600)))
        .unwrap();
    let t0 = Instant::now();
    drop(m);
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(matches!(
        sleeping.join(),
        Err(AofError::TaskCancelled { .. })
    ));
    drop(log);
    let m = glommio_manager();
    let log = placed(&m, dir.path(), 1);
    assert_eq!(read_back(&log, rid), b"kept");
}

/// A service running its own glommio executors hosts the shards in them: each host is
/// built here and run on the executor's thread (its ring is set up there, so
/// `SINGLE_ISSUER` holds), beside the service's own glommio tasks, which append to the
/// log of their shard with no hop; dropping the manager drains the logs and ends the
/// hosts' loops.
#[test]
fn a_service_hosts_the_shards_in_its_own_glommio_executors() {
    init_log();
    let mut c = AofManagerConfig::default();
    c.shards = 2;
    c.executor = ShardExecutor::Glommio;
    let (m, hosts) = AofManager::with_hosted_shards(c).expect("hosted shards");
    assert_eq!(hosts.len(), 2);
    let dir = tempfile::tempdir().unwrap();
    let logs: Vec<Arc<Aof>> = (0..2)
        .map(|i| placed(&m, &dir.path().join(format!("log{i}")), i))
        .collect();
    let executors: Vec<_> = hosts
        .into_iter()
        .enumerate()
        .map(|(i, host)| {
            let log = logs[i].clone();
            assert_eq!(host.shard(), i);
            glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(i))
                .name(&format!("service-{i}"))
                .io_memory(64 << 10)
                .spawn(move || async move {
                    let shard = glommio::spawn_local(host.run());
                    // The service's own task on this executor appends to its shard's log.
                    let mut rids = Vec::new();
                    for n in 0..50u32 {
                        let rid = log.append_record_async(&n.to_le_bytes()).await.unwrap();
                        log.flush_until_async(rid).await.unwrap();
                        rids.push(rid);
                    }
                    // Blocking here would stall the shard: refused.
                    assert!(matches!(log.flush(), Err(AofError::WouldDeadlock { .. })));
                    // The executor runs the shard's loop until the manager shuts down.
                    shard.await;
                    rids
                })
                .unwrap()
        })
        .collect();
    // A plain thread appends to the hosted shard's log too.
    let rid = logs[0].append_record(b"from a plain thread").unwrap();
    logs[0].flush_until(rid).unwrap();
    // Tasks spawned onto a hosted shard run in its host's loop.
    let v = m
        .spawn_on_shard(1, || async {
            std::thread::current().name().map(String::from)
        })
        .unwrap()
        .join()
        .unwrap();
    // (glommio names a spawned executor's thread `<name>-<id>`.)
    assert!(v.as_deref().unwrap_or("").starts_with("service-1"), "{v:?}");
    // Dropping the manager drains the logs and ends the hosts' loops; the executors'
    // futures then return.
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    drop(m);
    let rids: Vec<_> = executors.into_iter().map(|ex| ex.join().unwrap()).collect();
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    drop(logs);
    // Everything acknowledged is there after a reopen.
    let m = AofManager::with_config(AofManagerConfig::default()).unwrap();
    for (i, rids) in rids.iter().enumerate() {
        let log = open(&m, {
            let mut c = AofConfig::default();
            c.root_dir = dir.path().join(format!("log{i}"));
            c
        });
        for (n, r) in rids.iter().enumerate() {
            assert_eq!(read_back(&log, *r), (n as u32).to_le_bytes());
        }
        if i == 0 {
            assert_eq!(read_back(&log, rid), b"from a plain thread");
        }
    }
}

/// A host dropped without running fails its shard: nothing waits for it.
#[test]
fn a_host_dropped_unrun_fails_its_shard_clearly() {
    let mut c = AofManagerConfig::default();
    c.shards = 1;
    c.executor = ShardExecutor::Glommio;
    let (m, hosts) = AofManager::with_hosted_shards(c).unwrap();
    drop(hosts);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = AofConfig::default();
    cfg.root_dir = dir.path().to_path_buf();
    let e = Aof::new(m.handle(), cfg).expect_err("refused");
    assert!(e.to_string().contains("dropped without running"), "{e}");
    assert!(m
        .spawn_on_shard(0, || async {})
        .unwrap_err()
        .to_string()
        .contains("dropped without running"));
}
