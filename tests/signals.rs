//! End-to-end: the quickstart example as a real process, stopped by real signals.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::{finish, reference_output, signal, stderr, Quickstart};
use spotbatch::Status;

const LIMIT: Duration = Duration::from_secs(60);

/// (a) SIGTERM at many random moments: every run drains, the output equals an
/// uninterrupted run's and no chunk is processed twice.
#[test]
fn sigterm_at_random_moments_loses_nothing_and_repeats_nothing() {
    let (records, chunk) = (40_000, 100);
    let job = Quickstart::new(records, chunk, 20);
    let mut rng = fastrand::Rng::with_seed(0x5eed_0001);
    let (mut graceful, mut early) = (0, 0);
    for run in 0.. {
        assert!(run < 300, "no completion after {run} runs");
        let child = job.spawn();
        std::thread::sleep(Duration::from_millis(rng.u64(5..250)));
        signal(&child, libc::SIGTERM);
        let (status, _, err) = finish(child, LIMIT);
        match (status.code(), status.signal()) {
            (Some(0), _) => break,
            // Before the first chunk: nothing done, nothing written.
            (Some(75), _) if err.contains("stop requested before the first chunk") => early += 1,
            (Some(75), _) => graceful += 1,
            // The signal came before `main` installed its handler.
            (None, Some(libc::SIGTERM)) => early += 1,
            other => panic!("run {run}: unexpected exit {other:?}\n{err}"),
        }
        if let Some(c) = job.checkpoint() {
            assert!(
                matches!(c.status, Status::Interrupted { .. } | Status::Running),
                "status after SIGTERM: {}",
                c.status
            );
        }
    }
    assert!(
        graceful >= 5,
        "only {graceful} graceful interruptions ({early} early)"
    );

    assert_eq!(
        std::fs::read(job.out()).unwrap(),
        reference_output(records, chunk)
    );
    let chunks = job.audited_chunks();
    let mut starts: Vec<u64> = chunks.iter().map(|c| c.0).collect();
    starts.sort_unstable();
    let expected: Vec<u64> = (0..records).step_by(chunk as usize).collect();
    assert_eq!(starts, expected, "a chunk was processed twice or never");
    let c = job.checkpoint().unwrap();
    assert_eq!(c.status, Status::Completed);
    assert_eq!(
        (c.counters.chunks, c.counters.items),
        (records / chunk, records)
    );
    assert!(
        c.counters.interruptions >= graceful,
        "{} interruptions recorded, {graceful} graceful stops",
        c.counters.interruptions
    );
}

/// (b) SIGKILL at random moments: the checkpoint is never torn, and the output
/// equals an uninterrupted run's (the resumed run truncates the excess).
#[test]
fn sigkill_at_random_moments_never_tears_the_checkpoint_and_output_matches() {
    let (records, chunk) = (40_000, 100);
    let mut job = Quickstart::new(records, chunk, 20);
    job.every_chunks = 10;
    let mut rng = fastrand::Rng::with_seed(0x5eed_0002);
    let mut kills = 0;
    for run in 0.. {
        assert!(run < 300, "no completion after {run} runs");
        let child = job.spawn();
        std::thread::sleep(Duration::from_millis(rng.u64(5..250)));
        signal(&child, libc::SIGKILL);
        let (status, _, err) = finish(child, LIMIT);
        match (status.code(), status.signal()) {
            (Some(0), _) => break,
            (None, Some(libc::SIGKILL)) => kills += 1,
            other => panic!("run {run}: unexpected exit {other:?}\n{err}"),
        }
        // Decodes and verifies the checksum, or panics.
        let _ = job.checkpoint();
    }
    assert!(kills >= 5, "only {kills} kills landed");
    assert_eq!(
        std::fs::read(job.out()).unwrap(),
        reference_output(records, chunk)
    );
    let mut starts: Vec<u64> = job.audited_chunks().iter().map(|c| c.0).collect();
    starts.sort_unstable();
    starts.dedup();
    let expected: Vec<u64> = (0..records).step_by(chunk as usize).collect();
    assert_eq!(starts, expected, "some chunk was never processed");
}

/// A holder SIGKILLed and not yet reaped by its parent (a zombie: state `Z`
/// in `/proc/<pid>/stat`) has exited: a new runner on this host takes its
/// job over at once, not when its 10-minute lease expires.
#[test]
fn a_sigkilled_holder_not_yet_reaped_is_taken_over_at_once() {
    let mut job = Quickstart::new(40_000, 100, 200);
    job.every_chunks = 5;
    let mut holder = job
        .command()
        .args(["--lease", "600"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !job
        .checkpoint()
        .is_some_and(|c| c.lease.is_some() && c.counters.chunks > 0)
    {
        assert!(started.elapsed() < LIMIT, "the holder never checkpointed");
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(&holder, libc::SIGKILL);
    // Not waited for: the holder stays a zombie (this test is its parent).
    let stat = format!("/proc/{}/stat", holder.id());
    let state = || {
        let text = std::fs::read_to_string(&stat).unwrap();
        let after = text.rsplit_once(')').unwrap().1.to_owned();
        after.split_whitespace().next().unwrap().to_owned()
    };
    while state() != "Z" {
        assert!(started.elapsed() < LIMIT, "the holder is not a zombie");
        std::thread::sleep(Duration::from_millis(1));
    }
    let held = job.checkpoint().unwrap();
    assert_eq!(held.writer.pid, holder.id());

    let (status, _, err) = finish(job.spawn(), LIMIT);
    assert_eq!(state(), "Z", "the holder was reaped during the test");
    holder.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        err.contains("taking the job over: the previous holder's process is gone"),
        "{err}"
    );
    let done = job.checkpoint().unwrap();
    assert_eq!(done.status, Status::Completed);
    assert_eq!(done.history[0].run_id, held.writer.run_id);
    assert_eq!(done.history[0].outcome, "killed");
}

/// (c) SIGTERM during a chunk longer than the grace period: the process exits
/// before the grace period ends, with the checkpoint at the last finished chunk.
#[test]
fn sigterm_during_a_chunk_longer_than_grace_exits_within_grace() {
    let mut job = Quickstart::new(20, 10, 500_000); // 5 s per chunk
    job.grace_secs = 2.0;
    let started = Instant::now();
    let child = job.spawn();
    // First chunk ends at ~5 s; the second runs until ~10 s.
    std::thread::sleep(Duration::from_millis(6_500).saturating_sub(started.elapsed()));
    signal(&child, libc::SIGTERM);
    let (status, took, err) = finish(child, LIMIT);
    assert_eq!(status.code(), Some(75), "{err}");
    assert!(
        took < Duration::from_secs(2),
        "exit took {took:?} after SIGTERM, grace is 2 s\n{err}"
    );
    assert!(err.contains("drain deadline reached"), "{err}");
    assert_eq!(
        job.cursor(),
        10,
        "checkpoint must stay at the last finished chunk"
    );
    assert!(matches!(
        job.checkpoint().unwrap().status,
        Status::Interrupted { .. }
    ));
    assert_eq!(job.audited_chunks(), vec![(0, 10)]);

    job.work_us = 0;
    let out = job.run();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(job.out()).unwrap(), reference_output(20, 10));
}

/// (d) A second SIGTERM skips the drain: the process exits at once.
#[test]
fn second_sigterm_exits_at_once() {
    let job = Quickstart::new(20, 10, 1_000_000); // 10 s per chunk, grace 30 s
    let child = job.spawn();
    std::thread::sleep(Duration::from_millis(1_000));
    signal(&child, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    let second = Instant::now();
    signal(&child, libc::SIGTERM);
    let (status, _, err) = finish(child, LIMIT);
    let took = second.elapsed();
    assert_eq!(status.code(), Some(75), "{err}");
    assert!(
        took < Duration::from_secs(2),
        "exit took {took:?} after the second SIGTERM\n{err}"
    );
    assert!(err.contains("second stop request"), "{err}");
    assert_eq!(job.cursor(), 0);
    assert!(job.audited_chunks().is_empty());
}

/// The platform's SIGTERM after a stop the job asked for itself (here
/// `max_runtime`; an EC2 Spot notice or a `stop_on` future alike) is the same
/// stop, not an impatient user: the chunk in hand still finishes.
#[test]
fn sigterm_after_another_stop_request_keeps_draining() {
    let job = Quickstart::new(20, 10, 200_000); // 2 s per chunk, grace 30 s
    let mut cmd = job.command();
    cmd.args(["--max-runtime", "0.5"]);
    let child = cmd.spawn().expect("spawn quickstart");
    std::thread::sleep(Duration::from_millis(1_000));
    signal(&child, libc::SIGTERM);
    let (status, _, err) = finish(child, LIMIT);
    assert_eq!(status.code(), Some(75), "{err}");
    assert!(err.contains("source=max runtime"), "{err}");
    assert!(err.contains("the same stop; the drain goes on"), "{err}");
    assert!(!err.contains("chunk abandoned"), "{err}");
    assert_eq!(
        job.cursor(),
        10,
        "the chunk in hand finished and was checkpointed"
    );
    assert_eq!(job.audited_chunks(), vec![(0, 10)]);
}

/// (e) A completed job exits 0 at once and changes nothing.
#[test]
fn completed_job_exits_zero_at_once() {
    let job = Quickstart::new(5_000, 100, 0);
    let first = job.run();
    assert!(first.status.success(), "{}", stderr(&first));
    let before = job.checkpoint().unwrap();
    let output = std::fs::read(job.out()).unwrap();
    let audited = job.audited_chunks().len();

    let again = job.run();
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already completed"),
        "{}",
        stderr(&again)
    );
    assert_eq!(job.checkpoint().unwrap(), before, "the checkpoint changed");
    assert_eq!(std::fs::read(job.out()).unwrap(), output);
    assert_eq!(job.audited_chunks().len(), audited, "chunks ran again");
}

/// (f) A byte-flipped checkpoint: a clear error naming store, key and reason,
/// the distinct exit code, and neither the checkpoint nor the output changed.
#[test]
fn byte_flipped_checkpoint_is_refused_and_left_untouched() {
    let job = Quickstart::new(20_000, 100, 50);
    let child = job.spawn();
    std::thread::sleep(Duration::from_millis(400));
    signal(&child, libc::SIGTERM);
    let (status, _, err) = finish(child, LIMIT);
    assert_eq!(status.code(), Some(75), "{err}");

    let path = job.checkpoint_path();
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();
    let output = std::fs::read(job.out()).unwrap();

    let out = job.run();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(65), "{err}");
    for needle in ["checksum", "\"e2e\"", &path.display().to_string()] {
        assert!(
            err.contains(needle),
            "error does not mention {needle}: {err}"
        );
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the corrupt checkpoint was changed"
    );
    assert_eq!(
        std::fs::read(job.out()).unwrap(),
        output,
        "the output was changed"
    );
}
