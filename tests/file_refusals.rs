//! A file store that refuses for good (a path through a file, a read-only
//! file system, a full disk, permission denied) ends the run at once with
//! exit 74 and a message naming the store, the path and the cause, and the
//! last checkpoint stays as it was. Real processes on real file systems: a
//! read-only bind mount and a small tmpfs inside a private mount namespace
//! (`unshare --mount`: nothing shows outside it), and a run as `nobody`
//! (root is never denied). These need root, as CI has.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use common::{finish, Quickstart};

/// Far more than a refused run takes, far less than the 30 s of retries a
/// store that may come back gets.
const QUICK: Duration = Duration::from_secs(10);
/// Past the retries, so that a run that retries fails the test on its exit
/// code and time rather than being killed.
const LIMIT: Duration = Duration::from_secs(60);

fn assert_root() {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests mount file systems in a private mount namespace and run a process as \
         another user: they need root (CI runs as root)"
    );
}

/// A job stopped (SIGTERM) after some checkpoints: its stored checkpoint's bytes.
fn interrupted_job() -> (Quickstart, Vec<u8>) {
    let mut q = Quickstart::new(100_000, 10, 1000);
    q.every_chunks = 1;
    let child = q.spawn();
    let started = std::time::Instant::now();
    while q.checkpoint().is_none_or(|c| c.counters.chunks == 0) {
        assert!(started.elapsed() < LIMIT, "no chunk was checkpointed");
        std::thread::sleep(Duration::from_millis(10));
    }
    common::signal(&child, libc::SIGTERM);
    let (status, _, log) = finish(child, LIMIT);
    assert_eq!(status.code(), Some(75), "{log}");
    let stored = std::fs::read(q.checkpoint_path()).unwrap();
    (q, stored)
}

/// `cmd` as the last arguments of `sh -c script`, run as
/// `unshare --mount` (its mounts stay in its own namespace), with the same
/// environment and a piped stderr.
fn in_mount_namespace(script: &str, cmd: &Command) -> Command {
    let mut wrapped = Command::new("unshare");
    wrapped
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (name, value) in cmd.get_envs() {
        match value {
            Some(value) => wrapped.env(name, value),
            None => wrapped.env_remove(name),
        };
    }
    wrapped
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    wrapped
}

/// The run was refused at once, with exit 74 and a message naming each of `names`.
fn assert_refused(status: ExitStatus, took: Duration, log: &str, names: &[&str]) {
    assert_eq!(status.code(), Some(74), "{status} after {took:?}:\n{log}");
    assert!(
        took < QUICK,
        "took {took:?}: retried an error that will not pass\n{log}"
    );
    let failed = log
        .lines()
        .find(|l| l.contains("run failed"))
        .unwrap_or_else(|| panic!("no 'run failed' line:\n{log}"));
    for name in names.iter().chain(&["retrying cannot help"]) {
        assert!(failed.contains(name), "{name:?} is not named in: {failed}");
    }
    assert!(!log.contains("yet; retrying"), "retried:\n{log}");
}

#[test]
fn a_store_path_through_a_file_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = common::example_command("quickstart");
    cmd.args(["--records", "100", "--job", common::JOB])
        .arg("--out")
        .arg(dir.path().join("out.txt"))
        .args(["--store", "file:///dev/null/x"]);
    let (status, took, log) = finish(cmd.spawn().unwrap(), LIMIT);
    assert_refused(
        status,
        took,
        &log,
        &[
            "file:///dev/null/x",
            "/dev/null/x/e2e.ckpt",
            "Not a directory",
        ],
    );
}

#[test]
fn a_read_only_file_system_is_refused_at_the_first_save_and_the_checkpoint_stays() {
    assert_root();
    let (q, stored) = interrupted_job();
    let dir = q.store().dir().to_path_buf();
    let script = format!(
        "mount --bind '{d}' '{d}' && mount -o remount,bind,ro '{d}' && exec \"$@\"",
        d = dir.display()
    );
    let child = in_mount_namespace(&script, &q.command()).spawn().unwrap();
    let (status, took, log) = finish(child, LIMIT);
    let lock = dir.join("e2e.lock");
    assert_refused(
        status,
        took,
        &log,
        &[
            &format!("file://{}", dir.display()),
            &lock.display().to_string(),
            "Read-only file system",
        ],
    );
    assert_eq!(std::fs::read(q.checkpoint_path()).unwrap(), stored);
}

#[test]
fn a_full_disk_is_refused_at_the_first_save_and_the_checkpoint_stays() {
    assert_root();
    let (q, stored) = interrupted_job();
    let dir = q.store().dir().to_path_buf();
    let saved = q.dir.path().join("saved.ckpt");
    let after = q.dir.path().join("after.ckpt");
    std::fs::write(&saved, &stored).unwrap();
    // A 64 KiB tmpfs over the store's directory holding the checkpoint,
    // filled up; what the run left is copied out before the namespace goes.
    let script = format!(
        "mount -t tmpfs -o size=64k,mode=0700 spotbatch-full '{d}' && cp '{saved}' '{ckpt}' \
         && {{ dd if=/dev/zero of='{d}/fill' bs=4k 2>/dev/null; true; }} \
         && \"$@\"; rc=$?; cp '{ckpt}' '{after}'; exit $rc",
        d = dir.display(),
        saved = saved.display(),
        ckpt = q.checkpoint_path().display(),
        after = after.display(),
    );
    let child = in_mount_namespace(&script, &q.command()).spawn().unwrap();
    let (status, took, log) = finish(child, LIMIT);
    assert_refused(
        status,
        took,
        &log,
        &[
            &format!("file://{}", dir.display()),
            &format!("{}/.e2e.ckpt.", dir.display()),
            "No space left on device",
        ],
    );
    assert_eq!(std::fs::read(&after).unwrap(), stored);
}

#[test]
fn permission_denied_is_refused_at_the_first_save_and_the_checkpoint_stays() {
    assert_root();
    let (q, stored) = interrupted_job();
    let dir = q.store().dir().to_path_buf();
    // `nobody` may read the store (and write its output), not write the store.
    let mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    mode(q.dir.path(), 0o755);
    mode(&dir, 0o755);
    mode(&q.checkpoint_path(), 0o644);
    for output in [q.out(), q.audit()] {
        std::os::unix::fs::chown(&output, Some(65534), Some(65534)).unwrap();
    }
    let cmd = q.command();
    let mut as_nobody = Command::new("setpriv");
    as_nobody
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (name, value) in cmd.get_envs() {
        match value {
            Some(value) => as_nobody.env(name, value),
            None => as_nobody.env_remove(name),
        };
    }
    as_nobody
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let (status, took, log) = finish(as_nobody.spawn().unwrap(), LIMIT);
    assert_refused(
        status,
        took,
        &log,
        &[
            &format!("file://{}", dir.display()),
            &dir.join("e2e.lock").display().to_string(),
            "Permission denied",
        ],
    );
    assert_eq!(std::fs::read(q.checkpoint_path()).unwrap(), stored);
}
