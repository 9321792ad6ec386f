//! Unit tests of the io_uring ring: a tiny submission queue, a lost completion, a drop
//! that must leak.

use super::*;
use crate::buffer::AlignedBuf;
use crate::exec::NeverSleep;
use crate::fs::posix::PosixFs;
use crate::fs::{Fs, OpenMode};
use crate::log::ops::IoData;
use io_uring::{opcode, types};
use std::os::fd::AsRawFd;
use std::os::fd::{FromRawFd, OwnedFd};

fn eventfd() -> OwnedFd {
    // SAFETY: plain syscall; the result is checked before being owned.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn ring_or_skip(efd: &OwnedFd, entries: u32) -> Option<UringRing> {
    match UringRing::with_entries(efd.as_raw_fd(), 0, &[], entries) {
        Ok(r) => Some(r),
        Err(e) => {
            assert!(
                std::env::var("AOF2_REQUIRE_URING").as_deref() != Ok("1"),
                "io_uring required: {e}"
            );
            eprintln!("io_uring unavailable ({e}); nothing to check");
            None
        }
    }
}

fn block_of(byte: u8) -> IoData {
    let b = AlignedBuf::zeroed(crate::format::BLOCK);
    // SAFETY: a fresh block, ours alone.
    unsafe { b.write(0, &[byte; crate::format::BLOCK]) };
    IoData::Owned(b)
}

#[test]
fn a_full_submission_queue_queues_whole_groups_in_order_and_never_panics() {
    let efd = eventfd();
    let Some(mut ring) = ring_or_skip(&efd, 4) else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let file = PosixFs::default()
        .open(&d.path().join("f"), OpenMode::create_new(false))
        .unwrap();
    // 40 groups of three linked entries into a queue of four: at most one group
    // fits at a time, and none may be split.
    let mut token = 0;
    for g in 0..40u64 {
        let mut subs = Vec::new();
        for k in 0..2u64 {
            subs.push(Submission {
                token,
                op: RingOp::Write {
                    file: file.clone(),
                    offset: (g * 2 + k) * crate::format::BLOCK as u64,
                    data: vec![block_of((g * 2 + k) as u8)],
                    dsync: false,
                },
            });
            token += 1;
        }
        subs.push(Submission {
            token,
            op: RingOp::Sync { file: file.clone() },
        });
        token += 1;
        ring.submit_linked(subs);
    }
    assert!(ring.unqueued() > 30, "most groups wait for room");
    // A group that could never fit fails instead of panicking.
    ring.submit_linked(
        (1000..1005)
            .map(|t| Submission {
                token: t,
                op: RingOp::Sync { file: file.clone() },
            })
            .collect(),
    );
    let mut done = Vec::new();
    while done.len() < 125 {
        ring.wait(0, None, true, &NeverSleep, &mut done).unwrap();
    }
    let (ok, failed): (Vec<_>, Vec<_>) = done.iter().partition(|(_, r)| r.is_ok());
    assert_eq!(ok.len(), 120, "every queued operation completed");
    assert!(failed.iter().all(|(t, _)| (1000..1005).contains(t)));
    let mut got = vec![0u8; 80 * crate::format::BLOCK];
    crate::fs::read_exact_at(&*file, 0, &mut got).unwrap();
    for (i, b) in got.chunks(crate::format::BLOCK).enumerate() {
        assert!(b.iter().all(|&x| x == i as u8), "block {i}");
    }
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn a_lost_completion_fails_the_ring_instead_of_wedging_it() {
    let efd = eventfd();
    let Some(mut ring) = ring_or_skip(&efd, 8) else {
        return;
    };
    ring.inject_lost_completion();
    let mut out = Vec::new();
    let e = ring
        .wait(0, None, false, &NeverSleep, &mut out)
        .unwrap_err();
    assert!(e.to_string().contains("dropped 1 completion"), "{e}");
}

#[test]
fn dropping_a_ring_with_an_operation_that_never_completes_returns_and_leaks() {
    let efd = eventfd();
    let Some(mut ring) = ring_or_skip(&efd, 8) else {
        return;
    };
    // A one-hour timeout stands in for an operation the kernel never finishes: held
    // like an I/O, so `Drop` must wait for it and then give up.
    let ts = Box::new(types::Timespec::new().sec(3600));
    let e = opcode::Timeout::new(&*ts).build().user_data(7);
    let d = tempfile::tempdir().unwrap();
    let file = PosixFs::default()
        .open(&d.path().join("f"), OpenMode::create_new(false))
        .unwrap();
    ring.held.insert(
        7,
        Held {
            op: RingOp::Sync { file },
            _iov: Vec::new(),
            _dir: None,
        },
    );
    std::mem::forget(ts); // the kernel copied it at submission; leaked for the test
    ring.queue(vec![e]);
    ring.wait(0, None, false, &NeverSleep, &mut Vec::new())
        .unwrap();
    ring.set_drop_wait(Duration::from_millis(200));
    let t = Instant::now();
    drop(ring);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "drop returned after {:?}",
        t.elapsed()
    );
}

#[test]
fn a_host_waiting_ring_leaves_no_completion_behind_in_the_kernel() {
    // With DEFER_TASKRUN, completions wait in the kernel as task work that only an
    // enter runs, 20 items per enter (Linux 6.13+), and the eventfd is written only
    // when that list was empty. A glommio shard sleeps on the eventfd: a wait that
    // left items behind would leave them there until an unrelated completion came.
    let efd = eventfd();
    let Some(mut ring) = ring_or_skip(&efd, 128) else {
        return;
    };
    let host_efd = eventfd();
    ring.notify_eventfd(host_efd.as_raw_fd()).unwrap();
    let d = tempfile::tempdir().unwrap();
    let file = PosixFs::default()
        .open(&d.path().join("f"), OpenMode::create_new(false))
        .unwrap();
    const N: u64 = 90;
    for t in 0..N {
        ring.submit_linked(vec![Submission {
            token: t,
            op: RingOp::Sync { file: file.clone() },
        }]);
    }
    let mut done = Vec::new();
    // Submits them; whatever completes at once is reaped.
    ring.wait(0, None, false, &NeverSleep, &mut done).unwrap();
    // Every sync finishes (in the kernel's workers) and queues its completion.
    std::thread::sleep(Duration::from_millis(300));
    ring.wait(0, None, false, &NeverSleep, &mut done).unwrap();
    assert_eq!(
        done.len() as u64,
        N,
        "one wait reaps every completion the kernel holds (defer_taskrun: {})",
        ring.setup().features.defer_taskrun
    );
    assert!(done.iter().all(|(_, r)| r.is_ok()));
}
