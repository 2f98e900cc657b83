//! Helpers for end-to-end tests: run the quickstart example as a real process.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use spotbatch::{Checkpoint, FileStore, JobKey};
// Each test binary uses some of these.
#[allow(unused_imports)]
pub use spotbatch_test_support::{
    example_bin, example_command, finish, signal, stderr, wait_within,
};

pub const JOB: &str = "e2e";

/// The quickstart example binary.
pub fn quickstart_bin() -> PathBuf {
    example_bin("quickstart")
}

/// One quickstart job in its own temporary directory.
pub struct Quickstart {
    pub dir: tempfile::TempDir,
    pub records: u64,
    pub chunk: u64,
    pub work_us: u64,
    pub grace_secs: f64,
    pub every_chunks: u64,
}

impl Quickstart {
    pub fn new(records: u64, chunk: u64, work_us: u64) -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            records,
            chunk,
            work_us,
            grace_secs: 30.0,
            every_chunks: 100,
        }
    }

    pub fn out(&self) -> PathBuf {
        self.dir.path().join("out.txt")
    }

    pub fn audit(&self) -> PathBuf {
        self.dir.path().join("audit.txt")
    }

    pub fn store(&self) -> FileStore {
        FileStore::new(self.dir.path().join("ckpt"))
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        self.store().path_of(&JobKey::new(JOB).expect("key"))
    }

    /// The stored checkpoint, decoded and verified; panics if it is torn.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        match std::fs::read(self.checkpoint_path()) {
            Ok(bytes) => Some(Checkpoint::decode(&bytes).unwrap_or_else(|e| {
                panic!(
                    "checkpoint {} is torn: {e}",
                    self.checkpoint_path().display()
                )
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("read checkpoint: {e}"),
        }
    }

    /// The stored cursor (next record).
    pub fn cursor(&self) -> u64 {
        let c = self.checkpoint().expect("a checkpoint");
        c.codec.decode(&c.cursor).expect("cursor")
    }

    pub fn command(&self) -> Command {
        let mut cmd = example_command("quickstart");
        cmd.arg("--records")
            .arg(self.records.to_string())
            .arg("--chunk")
            .arg(self.chunk.to_string())
            .arg("--work-us")
            .arg(self.work_us.to_string())
            .arg("--grace")
            .arg(self.grace_secs.to_string())
            .arg("--every-chunks")
            .arg(self.every_chunks.to_string())
            .arg("--out")
            .arg(self.out())
            .arg("--audit")
            .arg(self.audit())
            .arg("--store")
            .arg(format!("file://{}", self.dir.path().join("ckpt").display()))
            .arg("--job")
            .arg(JOB)
            .arg("--interrupted-exit-code")
            .arg("75");
        cmd
    }

    pub fn spawn(&self) -> Child {
        self.command().spawn().expect("spawn quickstart")
    }

    /// Runs to the end without interruption.
    pub fn run(&self) -> Output {
        self.command().output().expect("run quickstart")
    }

    /// Chunks processed, as (start, end), in the order the runs did them.
    pub fn audited_chunks(&self) -> Vec<(u64, u64)> {
        let text = std::fs::read_to_string(self.audit()).unwrap_or_default();
        text.lines()
            .map(|l| {
                let (a, b) = l.split_once(' ').expect("audit line");
                (a.parse().expect("start"), b.parse().expect("end"))
            })
            .collect()
    }
}

/// The output of an uninterrupted run with the same parameters, for comparison.
pub fn reference_output(records: u64, chunk: u64) -> Vec<u8> {
    let reference = Quickstart::new(records, chunk, 0);
    let out = reference.run();
    assert!(
        out.status.success(),
        "reference run failed: {}",
        stderr(&out)
    );
    std::fs::read(reference.out()).expect("reference output")
}

/// A command's program and arguments, as strings.
pub fn command_line(cmd: &Command) -> Vec<String> {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// Starts `args` as PID 1 of a new PID namespace, as in a container (needs
/// root, as CI and `scripts/test` have, for `unshare --pid`); returns the
/// `unshare` process, whose exit status is PID 1's, and the host pid of the
/// namespace's PID 1, to signal.
// The child is returned to the caller, who waits for it.
#[allow(clippy::zombie_processes)]
pub fn as_pid1(args: &[String]) -> (Child, i32) {
    let mut child = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--"])
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("SPOTBATCH_STORE")
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

/// Sends `sig` to the process `pid`.
///
/// # Panics
///
/// When kill(2) fails.
pub fn signal_pid(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a pid we started whose parent (us, or `unshare`)
    // has not reaped it yet: it cannot name another process.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}
