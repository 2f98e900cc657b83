//! End-to-end: `examples/steps.rs` (extract → transform → load on local
//! files) as real processes, stopped by SIGTERM and killed by SIGKILL at
//! random moments until it completes: its three files are byte for byte
//! those of an uninterrupted run, and each stop's checkpoint names the step
//! the job was in.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use spotbatch::{Checkpoint, FileStore, JobKey, Status};
use spotbatch_test_support::{example_command, finish, signal, stderr};

const LIMIT: Duration = Duration::from_secs(60);
const FILES: [&str; 3] = ["extracted.csv", "transformed.jsonl", "loaded.tsv"];
const STEPS: [&str; 3] = ["extract", "transform", "load"];

/// One run of the steps example in its own directory.
struct Etl {
    dir: tempfile::TempDir,
    records: u64,
    chunk: u64,
    work_us: u64,
    codec: &'static str,
}

impl Etl {
    fn new(records: u64, chunk: u64, work_us: u64, codec: &'static str) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            records,
            chunk,
            work_us,
            codec,
        }
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn command(&self) -> Command {
        let mut cmd = example_command("steps");
        cmd.args(["--records", &self.records.to_string()])
            .args(["--chunk", &self.chunk.to_string()])
            .args(["--work-us", &self.work_us.to_string()])
            .args(["--every-chunks", "4"])
            .args(["--codec", self.codec])
            .arg("--out")
            .arg(self.out())
            .arg("--store")
            .arg(format!("file://{}", self.dir.path().join("ckpt").display()))
            .args(["--interrupted-exit-code", "75"]);
        cmd
    }

    /// The stored checkpoint, decoded and verified; panics if it is torn.
    fn checkpoint(&self) -> Option<Checkpoint> {
        let store = FileStore::new(self.dir.path().join("ckpt"));
        let path = store.path_of(&JobKey::new("steps").unwrap());
        match std::fs::read(&path) {
            Ok(bytes) => Some(
                Checkpoint::decode(&bytes)
                    .unwrap_or_else(|e| panic!("checkpoint {} is torn: {e}", path.display())),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("read checkpoint: {e}"),
        }
    }

    fn files(&self) -> Vec<Vec<u8>> {
        files(&self.out())
    }
}

fn files(dir: &Path) -> Vec<Vec<u8>> {
    FILES
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap_or_default())
        .collect()
}

/// Stops the job again and again (SIGTERM or SIGKILL, as `rng` draws, after
/// 5 to 300 ms) until a run completes; returns the steps the stops left
/// the job in.
fn stop_until_done(etl: &Etl, rng: &mut fastrand::Rng) -> BTreeSet<String> {
    let mut stopped_in = BTreeSet::new();
    let (mut graceful, mut kills) = (0, 0);
    for run in 0.. {
        assert!(run < 400, "no completion after {run} runs");
        let child = etl.command().spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.u64(5..300)));
        let sig = if rng.bool() {
            libc::SIGTERM
        } else {
            libc::SIGKILL
        };
        signal(&child, sig);
        let (status, _, err) = finish(child, LIMIT);
        match (status.code(), status.signal()) {
            (Some(0), _) => break,
            (Some(75), _) if sig == libc::SIGTERM => {
                graceful += 1;
                // Unless stopped before its first chunk.
                if let Some(summary) = err.lines().find(|l| l.contains("run ended")) {
                    assert!(
                        summary.contains(" step=") || err.contains("before the first chunk"),
                        "the summary names the step: {summary}"
                    );
                }
            }
            (None, Some(s)) if s == sig => kills += 1,
            other => panic!("run {run}: unexpected exit {other:?} after signal {sig}\n{err}"),
        }
        if let Some(c) = etl.checkpoint() {
            let names: Vec<&str> = c.steps.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, STEPS);
            if sig == libc::SIGTERM {
                assert!(
                    matches!(c.status, Status::Interrupted { .. } | Status::Running),
                    "status after SIGTERM: {}",
                    c.status
                );
            }
            stopped_in.insert(c.step_name().unwrap().to_owned());
        }
    }
    assert!(
        graceful >= 3 && kills >= 3,
        "{graceful} graceful stops, {kills} kills"
    );
    stopped_in
}

#[test]
fn steps_stopped_and_killed_at_random_moments_write_what_an_uninterrupted_run_writes() {
    let (records, chunk, work_us) = (12_100, 200, 40);
    let reference = Etl::new(records, chunk, 0, "bincode");
    let out = reference.command().output().unwrap();
    assert!(out.status.success(), "reference run: {}", stderr(&out));
    let expected = reference.files();
    // Each step read the whole output of the one before.
    let text = |i: usize| String::from_utf8(expected[i].clone()).unwrap();
    let extracted: Vec<String> = text(0).lines().skip(1).map(str::to_owned).collect();
    assert_eq!(extracted.len() as u64, records);
    let kept = extracted
        .iter()
        .filter(|l| l.rsplit(',').next().unwrap().parse::<u64>().unwrap() >= 1000)
        .count();
    assert_eq!(text(1).lines().count(), kept);
    let loaded = text(2);
    assert_eq!(loaded.lines().count(), kept + 1);
    assert!(
        loaded
            .lines()
            .last()
            .unwrap()
            .starts_with(&format!("total\t{kept}\t")),
        "{loaded}"
    );

    let mut rng = fastrand::Rng::with_seed(0x5eed_57e9);
    for codec in ["bincode", "json"] {
        let etl = Etl::new(records, chunk, work_us, codec);
        let stopped_in = stop_until_done(&etl, &mut rng);
        assert!(
            stopped_in.len() >= 2,
            "{codec}: the stops all left the job in {stopped_in:?}"
        );
        for (file, (got, want)) in FILES.iter().zip(etl.files().iter().zip(&expected)) {
            assert!(
                got == want,
                "{codec}: {file} differs from the uninterrupted run's"
            );
        }
        let c = etl.checkpoint().unwrap();
        assert_eq!(c.status, Status::Completed);
        assert_eq!(c.step_name(), Some("load"));

        // Completed: the next run does nothing.
        let out = etl.command().output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stderr(&out).contains("job already completed"));
        assert_eq!(etl.files(), expected);
    }
}
