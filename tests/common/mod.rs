//! Helpers for end-to-end tests: run the quickstart example as a real process.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output};

use spotbatch::{Checkpoint, FileStore, JobKey};
// Each test binary uses some of these.
#[allow(unused_imports)]
pub use spotbatch_test_support::{
    as_pid1, command_line, example_bin, example_command, finish, signal, signal_pid, stderr,
    wait_within,
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
    /// More flags, after the others.
    pub extra_args: Vec<String>,
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
            extra_args: Vec::new(),
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
            .arg("75")
            .args(&self.extra_args);
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
