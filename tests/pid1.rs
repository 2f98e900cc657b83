//! End-to-end: the job as PID 1 of a new PID namespace, as in a container.
//!
//! Needs root (as CI and `scripts/test` have) for `unshare --pid`.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{as_pid1, command_line, finish, signal_pid, Quickstart};
use spotbatch::Status;

#[test]
fn as_pid1_sigterm_drains_and_checkpoints() {
    let job = Quickstart::new(50_000, 100, 100); // ~5 s of work
    let (unshare, pid1) = as_pid1(&job.command());
    std::thread::sleep(Duration::from_millis(1_000));
    signal_pid(pid1, libc::SIGTERM);
    let (status, took, err) = finish(unshare, Duration::from_secs(30));
    assert_eq!(status.code(), Some(75), "{err}");
    assert!(took < Duration::from_secs(3), "took {took:?}\n{err}");
    let ckpt = job.checkpoint().expect("a final checkpoint");
    assert!(
        matches!(&ckpt.status, Status::Interrupted { source } if source == "SIGTERM"),
        "{}",
        ckpt.status
    );
    assert!(
        job.cursor() > 0 && job.cursor() < 50_000,
        "cursor {}",
        job.cursor()
    );
}

/// The pitfall, shown: a shell wrapper without `exec` is PID 1, has no SIGTERM
/// handler, so the kernel drops the signal and the job never hears it; the
/// platform then SIGKILLs everything and no final checkpoint is written.
#[test]
fn a_shell_wrapper_without_exec_swallows_sigterm() {
    let job = Quickstart::new(50_000, 100, 100);
    let mut line = String::new();
    for arg in command_line(&job.command()) {
        line.push_str(&format!("'{arg}' "));
    }
    line.push_str("; echo wrapper done");
    let mut sh = Command::new("sh");
    sh.args(["-c", &line]).env("RUST_LOG", "info");
    let (mut unshare, pid1) = as_pid1(&sh);
    std::thread::sleep(Duration::from_millis(1_000));
    signal_pid(pid1, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(
        unshare.try_wait().unwrap().is_none(),
        "the wrapper exited on SIGTERM: the pitfall no longer shows"
    );
    // What the platform does when the grace period ends: SIGKILL PID 1, which
    // takes the whole namespace with it.
    // SAFETY: kill(2) on the namespace's PID 1, still alive.
    assert_eq!(unsafe { libc::kill(pid1, libc::SIGKILL) }, 0);
    let (_, _, err) = finish(unshare, Duration::from_secs(10));
    assert!(
        !err.contains("stop requested"),
        "the job heard SIGTERM:\n{err}"
    );
    if let Some(ckpt) = job.checkpoint() {
        assert_eq!(
            ckpt.status,
            Status::Running,
            "no final checkpoint is written"
        );
    }
}
