//! End-to-end: a stop request at any moment of the process, from the first
//! line of `main` on, ends it with the interrupted exit code before the
//! grace period ends, whatever the job's code does; the checkpoint stays at
//! the last one the job's outputs were flushed for.
//!
//! Each case runs the quickstart example as a real process stopped by a
//! real SIGTERM, as a plain child and as PID 1 of a new PID namespace (as in
//! a container, where the kernel drops a signal PID 1 has no handler for).
//! The PID 1 cases need root (as CI and `scripts/test` have) for `unshare --pid`.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod common;

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use common::{as_pid1, finish, reference_output, signal_pid, Quickstart};
use spotbatch::Status;

/// How long a test waits for a process before it fails.
const LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
enum As {
    /// A child of the test.
    Child,
    /// PID 1 of a PID namespace of its own.
    Pid1,
}

/// Starts the quickstart with `extra` flags; returns it and the pid to signal.
fn spawn(job: &Quickstart, extra: &[&str], how: As) -> (Child, i32) {
    let mut cmd = job.command();
    cmd.args(extra);
    match how {
        As::Child => {
            let child = cmd.spawn().expect("spawn quickstart");
            let pid = i32::try_from(child.id()).unwrap();
            (child, pid)
        }
        As::Pid1 => as_pid1(&cmd),
    }
}

/// Starts the quickstart with `extra` flags, sends it SIGTERM `after` its
/// start, and waits for it: its status, how long it took from the signal,
/// and its log.
fn sigterm_after(
    job: &Quickstart,
    extra: &[&str],
    how: As,
    after: Duration,
) -> (ExitStatus, Duration, String) {
    let started = Instant::now();
    let (child, pid) = spawn(job, extra, how);
    std::thread::sleep(after.saturating_sub(started.elapsed()));
    signal_pid(pid, libc::SIGTERM);
    finish(child, LIMIT)
}

// ---------------------------------------------------------------------------
// Before the run: set-up that can be cut short, and set-up that cannot

/// A stop during the set-up `main` does before the run (given to
/// `Shutdown::interruptible`) ends the process at once: no store opened,
/// no chunk.
fn stop_during_set_up(how: As) {
    let job = Quickstart::new(1_000, 10, 10_000); // 100 chunks of 100 ms
    let (status, took, err) = sigterm_after(
        &job,
        &["--setup-secs", "2"],
        how,
        Duration::from_millis(500),
    );
    assert_eq!(status.code(), Some(75), "{how:?}: {status:?}\n{err}");
    assert!(
        took < Duration::from_secs(1),
        "{how:?}: took {took:?}\n{err}"
    );
    assert!(
        err.contains("stop requested before the first chunk"),
        "{err}"
    );
    assert!(job.checkpoint().is_none(), "a checkpoint was written");
    assert!(job.audited_chunks().is_empty(), "a chunk ran");
}

#[test]
fn a_stop_during_the_set_up_ends_the_process_at_once() {
    stop_during_set_up(As::Child);
}

#[test]
fn a_stop_during_the_set_up_ends_the_process_at_once_as_pid1() {
    stop_during_set_up(As::Pid1);
}

/// A stop during set-up that is not interruptible: the run that follows
/// returns at once, having run no chunk and written nothing.
fn stop_during_set_up_that_runs_on(how: As) {
    let job = Quickstart::new(1_000, 10, 10_000);
    let (status, took, err) = sigterm_after(
        &job,
        &["--setup-secs", "2", "--setup-not-interruptible"],
        how,
        Duration::from_millis(500),
    );
    assert_eq!(status.code(), Some(75), "{how:?}: {status:?}\n{err}");
    // The rest of the set-up (1.5 s), then at once: far below the 10 s of
    // chunks (the bound leaves room for a loaded machine; that no chunk ran
    // is checked below).
    assert!(
        took < Duration::from_secs(5),
        "{how:?}: took {took:?}\n{err}"
    );
    assert!(
        err.contains("stop requested before the first chunk"),
        "{err}"
    );
    assert!(job.checkpoint().is_none(), "a checkpoint was written");
    assert!(job.audited_chunks().is_empty(), "a chunk ran");
}

#[test]
fn a_stop_during_set_up_that_runs_on_ends_the_run_before_its_first_chunk() {
    stop_during_set_up_that_runs_on(As::Child);
}

#[test]
fn a_stop_during_set_up_that_runs_on_ends_the_run_before_its_first_chunk_as_pid1() {
    stop_during_set_up_that_runs_on(As::Pid1);
}

// ---------------------------------------------------------------------------
// During a chunk whose work does not give way
//
// Chunks of 8 s (10 records of 800 ms), a checkpoint after each, a grace
// period of 6 s of which 3 s are kept for the final flush and save (drain
// 3 s). The watchdog gives the job's code half the reserve to give way,
// then writes with the other half, 1.5 s: a disk still writing back the
// gigabytes a build just wrote can take over a second for one fsync (seen
// with the default reserve, 1.5 s). SIGTERM half a second into the second
// chunk, which would go on for 7.5 s more.

const GRACE: Duration = Duration::from_secs(6);

fn stubborn_job() -> Quickstart {
    let mut job = Quickstart::new(30, 10, 800_000);
    job.grace_secs = GRACE.as_secs_f64();
    job
}

/// Stops a job whose second chunk's work runs on `work_on` (and `extra`
/// flags) mid-chunk; it must end before the grace period, interrupted, at
/// the first chunk; a resumed run then completes it exactly.
fn stop_stubborn_chunk(how: As, work_on: &str, extra: &[&str], expect_log: &str) {
    let job = stubborn_job();
    let mut flags = vec!["--work-on", work_on, "--every-secs", "1", "--reserve", "3"];
    flags.extend(extra);
    let (child, pid) = spawn(&job, &flags, how);
    // Half a second into the second chunk: once the first one's checkpoint
    // is saved, however slow the machine.
    let started = Instant::now();
    while job.checkpoint().is_none_or(|c| c.counters.chunks < 1) {
        assert!(started.elapsed() < LIMIT, "the first chunk never ended");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    signal_pid(pid, libc::SIGTERM);
    let (status, took, err) = finish(child, LIMIT);
    assert_eq!(status.code(), Some(75), "{how:?}: {status:?}\n{err}");
    assert!(
        took < GRACE,
        "{how:?}: exit {took:?} after SIGTERM, grace is {GRACE:?}\n{err}"
    );
    assert!(
        err.contains(expect_log),
        "{how:?}: no {expect_log:?} in\n{err}"
    );
    let ckpt = job.checkpoint().expect("a checkpoint");
    assert_eq!(
        ckpt.status,
        Status::Interrupted {
            source: "SIGTERM".into()
        },
        "{err}"
    );
    assert_eq!(
        job.cursor(),
        10,
        "the checkpoint is at the first chunk\n{err}"
    );
    assert_eq!(ckpt.lease, None, "the lease is released");
    assert_eq!(job.audited_chunks(), vec![(0, 10)]);

    let mut rest = Quickstart::new(30, 10, 0);
    rest.dir = job.dir;
    let out = rest.run();
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(
        std::fs::read(rest.out()).unwrap(),
        reference_output(30, 10),
        "the resumed output differs from an uninterrupted run's"
    );
}

/// CPU work in `spawn_blocking`, as advised: the chunk is given up at the
/// drain deadline and the final checkpoint saved, but the blocking thread
/// runs on and dropping the runtime waits for it; the watchdog ends the
/// process before the grace period does.
#[test]
fn spawn_blocking_work_left_running_does_not_outlive_the_grace_period() {
    stop_stubborn_chunk(
        As::Child,
        "blocking-pool",
        &[],
        "the process is still alive at the end of the grace period",
    );
}

#[test]
fn spawn_blocking_work_left_running_does_not_outlive_the_grace_period_as_pid1() {
    stop_stubborn_chunk(
        As::Pid1,
        "blocking-pool",
        &[],
        "the process is still alive at the end of the grace period",
    );
}

/// Work that holds the chunk's own thread (no `.await`): the run cannot
/// act; the watchdog records the stop on the last checkpoint and exits.
#[test]
fn a_chunk_that_holds_its_thread_is_ended_by_the_watchdog() {
    stop_stubborn_chunk(
        As::Child,
        "job-thread",
        &[],
        "the watchdog records the stop on the last checkpoint",
    );
}

#[test]
fn a_chunk_that_holds_its_thread_is_ended_by_the_watchdog_as_pid1() {
    stop_stubborn_chunk(
        As::Pid1,
        "job-thread",
        &[],
        "the watchdog records the stop on the last checkpoint",
    );
}

/// The same on a current-thread runtime, whose only thread the chunk holds:
/// the signal is heard on a thread of its own all the same.
#[test]
fn a_chunk_that_holds_the_only_runtime_thread_is_ended_by_the_watchdog() {
    stop_stubborn_chunk(
        As::Child,
        "job-thread",
        &["--current-thread"],
        "the watchdog records the stop on the last checkpoint",
    );
}

#[test]
fn a_chunk_that_holds_the_only_runtime_thread_is_ended_by_the_watchdog_as_pid1() {
    stop_stubborn_chunk(
        As::Pid1,
        "job-thread",
        &["--current-thread"],
        "the watchdog records the stop on the last checkpoint",
    );
}
