//! End-to-end: a checkpoint the next run cannot read is never written, and
//! a checkpoint of changed cursor or state types is never misread.
//!
//! Each run is a real process: this test binary started again with
//! `SPOTBATCH_TYPES_JOB` naming the job to run (`job_process` below), so
//! that each run can be built with other types, as a redeployed job is.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use spotbatch::prelude::*;
use spotbatch::{Checkpoint, Codec, FileStore, JobKey, Status};
use spotbatch_test_support::{finish, signal, stderr};

const JOB_VAR: &str = "SPOTBATCH_TYPES_JOB";
const DIR_VAR: &str = "SPOTBATCH_TYPES_DIR";
const KEY: &str = "typed";
/// Chunks in a job: one item each, item `i` adding `i` to the total.
const CHUNKS: u64 = 40;

// ---------------------------------------------------------------------------
// The jobs, as the child process runs them

/// The state as first deployed.
mod v1 {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub struct State {
        pub count: u64,
        pub total: u64,
    }
}

/// The state redeployed with `count` signed: same name, another shape.
mod v2 {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub struct State {
        pub count: i64,
        pub total: u64,
    }
}

/// A state whose mean goes NaN at one chunk when the job is broken.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Stats {
    count: u64,
    mean: f64,
}

trait Tally: Serialize + serde::de::DeserializeOwned + Clone + Default + Send + Sync + 'static {
    fn add(&mut self, i: u64);
}

impl Tally for v1::State {
    fn add(&mut self, i: u64) {
        self.count += 1;
        self.total += i;
    }
}

impl Tally for v2::State {
    fn add(&mut self, i: u64) {
        self.count += 1;
        self.total += i;
    }
}

/// `CHUNKS` chunks of one item, `work` each.
struct Summing<S> {
    work: Duration,
    /// Convert a `v1` checkpoint (the job redeployed with a migration).
    migrates: bool,
    _state: std::marker::PhantomData<S>,
}

#[async_trait]
impl<S: Tally> Job for Summing<S> {
    type Cursor = u64;
    type State = S;

    /// One name for both deployments, as a job that edits its `State` in
    /// place has (or that pins the name, as the guide advises).
    fn cursor_type() -> &'static str {
        "typed/sum"
    }

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < CHUNKS).then(|| Chunk::between(*at, *at + 1)))
    }

    async fn process(&mut self, chunk: &Chunk<u64>, state: &mut S, _: &ChunkContext) -> Result<()> {
        tokio::time::sleep(self.work).await;
        state.add(*chunk.start());
        Ok(())
    }

    fn migrate(&self, stored: &Checkpoint) -> Result<Option<(u64, S)>> {
        if !self.migrates {
            return Ok(None);
        }
        let cursor = stored.codec.decode::<u64>(&stored.cursor)?;
        let old = stored.codec.decode::<v1::State>(&stored.state)?;
        // Through JSON: the one conversion this test's states share.
        let new = serde_json::from_value(serde_json::json!({
            "count": i64::try_from(old.count)?,
            "total": old.total,
        }))?;
        Ok(Some((cursor, new)))
    }
}

/// `CHUNKS` chunks whose running mean turns NaN at chunk 5 when `broken`.
struct Averaging {
    broken: bool,
}

#[async_trait]
impl Job for Averaging {
    type Cursor = u64;
    type State = Stats;

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < CHUNKS).then(|| Chunk::between(*at, *at + 1)))
    }

    async fn process(&mut self, chunk: &Chunk<u64>, s: &mut Stats, _: &ChunkContext) -> Result<()> {
        let i = *chunk.start();
        s.count += 1;
        s.mean = if self.broken && i == 5 {
            f64::NAN
        } else {
            s.mean + (i as f64 - s.mean) / s.count as f64
        };
        Ok(())
    }
}

fn summing<S>(work_ms: u64, migrates: bool) -> Summing<S> {
    Summing {
        work: Duration::from_millis(work_ms),
        migrates,
        _state: std::marker::PhantomData,
    }
}

async fn run_job(name: &str, dir: PathBuf) -> u8 {
    let store = FileStore::new(dir);
    let every = Every::chunk();
    let report = match name {
        "v1" => {
            Runner::new(KEY, summing::<v1::State>(20, false))
                .store(store)
                .checkpoint(every)
                .run()
                .await
        }
        "v2" | "v2-migrates" => {
            Runner::new(KEY, summing::<v2::State>(0, name == "v2-migrates"))
                .store(store)
                .checkpoint(every)
                .run()
                .await
        }
        "nan" | "fixed" => {
            Runner::new(
                KEY,
                Averaging {
                    broken: name == "nan",
                },
            )
            .store(store)
            .codec(Codec::Json)
            .checkpoint(every)
            .run()
            .await
        }
        other => panic!("no job {other:?}"),
    };
    if let Some(e) = report.error() {
        eprintln!("error: {e}");
    }
    report.code()
}

/// The child process: runs the job `SPOTBATCH_TYPES_JOB` names and exits
/// with its code. In the test run itself (no such variable), does nothing.
#[test]
fn job_process() {
    let Ok(name) = std::env::var(JOB_VAR) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(DIR_VAR).unwrap());
    let code = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run_job(&name, dir));
    std::process::exit(i32::from(code));
}

// ---------------------------------------------------------------------------
// The tests

fn job_command(name: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "job_process", "--nocapture", "--test-threads=1"])
        .env(JOB_VAR, name)
        .env(DIR_VAR, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn run(name: &str, dir: &Path) -> Output {
    job_command(name, dir).output().unwrap()
}

fn stored_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(FileStore::new(dir).path_of(&JobKey::new(KEY).unwrap())).unwrap()
}

fn stored(dir: &Path) -> Checkpoint {
    Checkpoint::decode(&stored_bytes(dir)).unwrap()
}

#[test]
fn a_changed_field_type_is_refused_saying_what_changed_and_can_be_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();

    // v1, stopped by SIGTERM once a few chunks are checkpointed.
    let child = job_command("v1", dir).spawn().unwrap();
    let started = Instant::now();
    while !stored_at_least(dir, 3) {
        assert!(started.elapsed() < Duration::from_secs(20), "no checkpoint");
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(&child, libc::SIGTERM);
    let (status, _, err) = finish(child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{err}");
    let interrupted = stored(dir);
    assert!(
        matches!(interrupted.status, Status::Interrupted { .. }),
        "{:?}",
        interrupted.status
    );
    let cursor: u64 = interrupted.codec.decode(&interrupted.cursor).unwrap();
    assert!(cursor < CHUNKS, "the run was interrupted before the end");
    let types = interrupted.types.as_ref().expect("the shape is recorded");
    assert!(
        types
            .to_string()
            .contains("State = struct { count: u64, total: u64 }"),
        "{types}"
    );

    // v2 reads the same bytes as another State: refused, saying what changed.
    let before = stored_bytes(dir);
    let out = run("v2", dir);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(err.contains("State.count: was u64, now i64"), "{err}");
    assert!(
        err.contains("spotbatch reset") && err.contains("Job::migrate"),
        "{err}"
    );
    assert_eq!(
        stored_bytes(dir),
        before,
        "the checkpoint is left as it was"
    );

    // Redeployed with a migration: it resumes and the totals are right.
    let out = run("v2-migrates", dir);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let done = stored(dir);
    assert_eq!(done.status, Status::Completed);
    let state: v2::State = done.codec.decode(&done.state).unwrap();
    assert_eq!(state.count, CHUNKS as i64);
    assert_eq!(state.total, (0..CHUNKS).sum::<u64>());
    assert!(
        done.types.unwrap().to_string().contains("count: i64"),
        "the new shape is recorded"
    );
}

fn stored_at_least(dir: &Path, cursor: u64) -> bool {
    let Ok(bytes) = std::fs::read(FileStore::new(dir).path_of(&JobKey::new(KEY).unwrap())) else {
        return false;
    };
    let checkpoint = Checkpoint::decode(&bytes).unwrap();
    checkpoint.codec.decode::<u64>(&checkpoint.cursor).unwrap() >= cursor
}

#[test]
fn a_state_the_codec_cannot_read_back_is_never_saved() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();

    // The mean turns NaN at chunk 5: JSON would write it as null.
    let out = run("nan", dir);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("json could not read back the state at `mean`"),
        "{err}"
    );
    assert!(err.contains("NaN or infinite float"), "{err}");

    // The last readable checkpoint stays, and records the failure.
    let kept = stored(dir);
    let cursor: u64 = kept.codec.decode(&kept.cursor).unwrap();
    assert_eq!(cursor, 5, "the checkpoint of the chunks before the NaN");
    let stats: Stats = kept.codec.decode(&kept.state).unwrap();
    assert_eq!(stats.count, 5);
    match &kept.status {
        Status::Failed { message } => assert!(message.contains("mean"), "{message}"),
        other => panic!("expected the failure recorded, got {other:?}"),
    }

    // The job fixed, the next run resumes from it and completes.
    let out = run("fixed", dir);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let done = stored(dir);
    assert_eq!(done.status, Status::Completed);
    let stats: Stats = done.codec.decode(&done.state).unwrap();
    assert_eq!(stats.count, CHUNKS);
}
