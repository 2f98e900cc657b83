//! End-to-end: the job as PID 1 of a new PID namespace, as in a container.
//!
//! Needs root (as CI and `scripts/test` have) for `unshare --pid`.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{finish, quickstart_bin, Quickstart};
use spotbatch::Status;

/// Starts `args` as PID 1 of a new PID namespace; returns the `unshare`
/// process and the host pid of the namespace's PID 1.
// The child is returned to the caller, who waits for it.
#[allow(clippy::zombie_processes)]
fn as_pid1(args: &[String]) -> (Child, i32) {
    let mut child = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux) is needed for the PID 1 tests");
    let children = format!("/proc/{0}/task/{0}/children", child.id());
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&children).unwrap_or_default();
        if let Some(pid) = text.split_whitespace().next() {
            return (child, pid.parse().expect("pid"));
        }
        if started.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("unshare started no child: are we root?");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sigterm(pid: i32) {
    // SAFETY: kill(2) on a pid we started; it is alive (its parent still waits for it).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

fn quickstart_args(job: &Quickstart) -> Vec<String> {
    job.command()
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn as_pid1_sigterm_drains_and_checkpoints() {
    let job = Quickstart::new(50_000, 100, 100); // ~5 s of work
    let mut args = vec![quickstart_bin().display().to_string()];
    args.extend(quickstart_args(&job));
    let (unshare, pid1) = as_pid1(&args);
    std::thread::sleep(Duration::from_millis(1_000));
    sigterm(pid1);
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
    let mut line = format!("'{}'", quickstart_bin().display());
    for arg in quickstart_args(&job) {
        line.push_str(&format!(" '{arg}'"));
    }
    line.push_str("; echo wrapper done");
    let (mut unshare, pid1) = as_pid1(&["sh".into(), "-c".into(), line]);
    std::thread::sleep(Duration::from_millis(1_000));
    sigterm(pid1);
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
