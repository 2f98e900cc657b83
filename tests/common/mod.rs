//! Helpers for end-to-end tests: run the quickstart example as a real process.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use spotbatch::{Checkpoint, FileStore, JobKey};

pub const JOB: &str = "e2e";

/// An example's binary, which `cargo test` builds next to the test binaries.
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("examples").join(name);
    assert!(
        bin.exists(),
        "{} is missing: run the whole suite with `cargo test`, which builds the examples",
        bin.display()
    );
    bin
}

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
        let mut cmd = Command::new(quickstart_bin());
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
            .arg("75")
            .env("RUST_LOG", "info")
            .env_remove("SPOTBATCH_STORE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
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

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn signal(child: &Child, sig: i32) {
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// Waits for the child, failing the test if it outlives `limit`.
pub fn wait_within(child: &mut Child, limit: Duration) -> (ExitStatus, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return (status, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for the child and returns its status and stderr.
pub fn finish(mut child: Child, limit: Duration) -> (ExitStatus, Duration, String) {
    let mut err = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    let (status, took) = wait_within(&mut child, limit);
    (status, took, reader.join().expect("stderr reader"))
}
