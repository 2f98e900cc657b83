//! Helpers for the CLI's tests: run the `spotbatch` binary, make checkpoints
//! with the core API, find the quickstart example.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use spotbatch::{Checkpoint, CheckpointStore, Codec, FileStore, JobKey, Lease, Status, Writer};

/// The `spotbatch` binary under test.
pub fn spotbatch() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spotbatch"));
    cmd.stdin(Stdio::null()).env_remove("SPOTBATCH_STORE");
    cmd
}

/// Runs `spotbatch ARGS` to the end (bounded by 60 s).
pub fn run(args: &[&str]) -> Output {
    let mut cmd = spotbatch();
    cmd.args(args);
    output_within(cmd, Duration::from_secs(60))
}

/// Runs a command, failing the test if it outlives `limit` (it is then
/// SIGTERMed, which makes `simulate` kill its job, then SIGKILLed).
pub fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).ok();
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        err.read_to_end(&mut v).ok();
        v
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > limit {
            let pid = i32::try_from(child.id()).expect("pid");
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            std::thread::sleep(Duration::from_millis(500));
            let _ = child.kill();
            let _ = child.wait();
            let err = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
            panic!("{cmd:?} did not finish within {limit:?}\n{err}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code, showing the output when it differs.
#[track_caller]
pub fn assert_code(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

/// A file store in a temporary directory.
pub struct Store {
    pub dir: tempfile::TempDir,
}

impl Store {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("ckpt")
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.path().display())
    }

    pub fn store(&self) -> FileStore {
        FileStore::new(self.path())
    }

    pub fn file_of(&self, job: &str) -> PathBuf {
        self.store().path_of(&key(job))
    }

    /// Saves through the real store (compare-and-swap on `expected`).
    pub fn save(&self, c: &Checkpoint, expected: Option<u64>) {
        block_on(self.store().save(c, expected)).expect("save");
    }

    pub fn load(&self, job: &str) -> Option<Checkpoint> {
        block_on(self.store().load(&key(job))).expect("load")
    }

    pub fn bytes(&self, job: &str) -> Vec<u8> {
        std::fs::read(self.file_of(job)).expect("read checkpoint file")
    }
}

pub fn key(job: &str) -> JobKey {
    JobKey::new(job).expect("key")
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// A JSON-codec checkpoint as a runner would write it: cursor `{"next": N}`, state `{"out_len": L}`.
pub fn json_checkpoint(job: &str, next: u64, out_len: u64) -> Checkpoint {
    let mut c = Checkpoint::new(key(job), Writer::this_process());
    c.version = 7;
    c.status = Status::Interrupted {
        source: "SIGTERM".into(),
    };
    c.codec = Codec::Json;
    c.cursor_type = "(my_job::Cursor, my_job::State)".into();
    c.schema = 1;
    c.cursor = serde_json::to_vec(&serde_json::json!({ "next": next })).expect("json");
    c.state = serde_json::to_vec(&serde_json::json!({ "out_len": out_len })).expect("json");
    c.counters.chunks = 12;
    c.counters.items = 1200;
    c.counters.checkpoints = 7;
    c.counters.interruptions = 1;
    c.counters.runs = 2;
    c
}

/// A bincode checkpoint (the default codec): cursor `u64`.
pub fn bincode_checkpoint(job: &str, next: u64) -> Checkpoint {
    let mut c = Checkpoint::new(key(job), Writer::this_process());
    c.status = Status::Running;
    c.codec = Codec::Bincode;
    c.cursor_type = "(u64, u64)".into();
    c.schema = 1;
    c.cursor = Codec::Bincode.encode(&next).expect("bincode");
    c.state = Codec::Bincode.encode(&0u64).expect("bincode");
    c
}

/// Gives `c` a lease held by this (live) process for `secs` more seconds, as a runner's save does.
pub fn with_live_lease(mut c: Checkpoint, task: &str, secs: u64) -> Checkpoint {
    c.writer.task = task.into();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    c.lease = Some(Lease::new(c.writer.run_id, now + secs * 1000));
    c
}

/// The quickstart example binary (`cargo test --workspace` builds it; so
/// does `cargo build --examples -p spotbatch`), next to the test binaries.
pub fn quickstart_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("examples").join("quickstart");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --examples -p spotbatch` (or run `cargo test --workspace`)",
        bin.display()
    );
    bin
}
