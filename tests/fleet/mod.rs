//! Many tasks of the partitioned example on one job, as a platform runs
//! them: started, stopped by random SIGTERM or SIGKILL, started again; and
//! the checks that the job came out whole.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spotbatch::partition::{progress, Claim, JobProgress, PartitionState};
use spotbatch::{CheckpointStore, JobKey};
use spotbatch_test_support::example_bin;

pub const JOB: &str = "fleet";
/// The interrupted exit code the tasks are given.
pub const RETRY_ME: i32 = 75;
/// How many times each worker of [`Fleet::chaos`] is stopped at most.
pub const STOPS_PER_WORKER: usize = 4;
/// Time from SIGTERM to SIGKILL, and the tasks' `--grace` (a little less).
const GRACE: Duration = Duration::from_secs(10);

/// One partitioned job and where its tasks write.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    /// The store's URL, as the tasks get it.
    pub url: String,
    /// The same store, opened by the test.
    pub store: Arc<dyn CheckpointStore>,
    pub partitions: u32,
    pub records: u64,
    pub chunk: u64,
    pub work_us: u64,
    pub every_chunks: u64,
    /// Environment the tasks need (the S3 endpoint…).
    pub env: Vec<(String, String)>,
}

impl Drop for Fleet {
    /// Keeps the tasks' logs and outputs of a failed test.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!(
                "the fleet's logs and outputs are kept in {}",
                dir.keep().display()
            );
        }
    }
}

/// What the chaos did.
#[derive(Debug, Default)]
pub struct Chaos {
    pub runs: usize,
    pub sigterms: usize,
    /// The pids that were SIGKILLed.
    pub killed: BTreeSet<u32>,
    /// Every run's log file.
    pub logs: Vec<PathBuf>,
}

impl Fleet {
    pub fn new(url: String, store: Arc<dyn CheckpointStore>, partitions: u32) -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            url,
            store,
            partitions,
            records: 2_000,
            chunk: 100,
            work_us: 100,
            every_chunks: 5,
            env: Vec::new(),
        }
    }

    pub fn out_dir(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    pub fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("audit")
    }

    fn log_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// A task's command line; `extra` adds flags (the assignment).
    pub fn command(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new(example_bin("partitioned"));
        cmd.env("RUST_LOG", "info")
            .env_remove("SPOTBATCH_STORE")
            .env_remove("AWS_BATCH_JOB_ARRAY_INDEX")
            .env_remove("JOB_COMPLETION_INDEX")
            .env_remove("SPOTBATCH_TASK_INDEX")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .args(["--partitions", &self.partitions.to_string()])
            .args(["--records-per-partition", &self.records.to_string()])
            .args(["--chunk", &self.chunk.to_string()])
            .args(["--work-us", &self.work_us.to_string()])
            .args(["--every-chunks", &self.every_chunks.to_string()])
            .args(["--grace", &(GRACE.as_secs_f64() - 2.0).to_string()])
            .args(["--lease", "5"])
            .args(["--poll-ms", "200"])
            .args(["--interrupted-exit-code", &RETRY_ME.to_string()])
            .args(["--job", JOB, "--store", &self.url])
            .arg("--out-dir")
            .arg(self.out_dir())
            .arg("--audit-dir")
            .arg(self.audit_dir())
            .args(extra);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts a task whose log goes to a file of its own.
    pub fn spawn(&self, mut cmd: Command, name: &str, chaos: &mut Chaos) -> Child {
        std::fs::create_dir_all(self.log_dir()).expect("log dir");
        let log = self.log_dir().join(format!("{name}.log"));
        cmd.stderr(File::create(&log).expect("log file"));
        chaos.logs.push(log);
        chaos.runs += 1;
        cmd.spawn().expect("spawn the partitioned example")
    }

    pub async fn progress(&self) -> JobProgress {
        self.try_progress().await.expect("the job-level checkpoint")
    }

    /// `None` before the first task created the job-level checkpoint.
    pub async fn try_progress(&self) -> Option<JobProgress> {
        progress(Arc::clone(&self.store), &JobKey::new(JOB).expect("key"))
            .await
            .expect("read the job's progress")
    }

    /// `workers` dynamic tasks, each stopped a random 0.3–1.5 s after it is
    /// ready (its store open: a Postgres store's migrations take a while
    /// when many tasks start at once) by SIGTERM or (with probability
    /// `kill_ratio`) SIGKILL and started again, up to [`STOPS_PER_WORKER`]
    /// times each (which bounds the test's time on a loaded machine) and
    /// until every partition is done; then the tasks run to their end.
    pub async fn chaos(&self, workers: usize, seed: u64, kill_ratio: f64) -> Chaos {
        struct Slot {
            child: Option<Child>,
            name: String,
            /// When the task said "task started" (its store open, its handlers installed).
            ready: Option<Instant>,
            stop_after: Duration,
            sent: Option<(bool, Instant)>,
            done: bool,
            runs: usize,
        }
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut chaos = Chaos::default();
        let mut slots: Vec<Slot> = (0..workers)
            .map(|_| Slot {
                child: None,
                name: String::new(),
                ready: None,
                stop_after: Duration::ZERO,
                sent: None,
                done: false,
                runs: 0,
            })
            .collect();
        let began = Instant::now();
        let mut chaos_on = true;
        let mut looked = Instant::now();
        while !slots.iter().all(|s| s.done) {
            assert!(
                began.elapsed() < Duration::from_secs(240),
                "the fleet did not finish in 240 s (seed {seed}); logs in {}",
                self.log_dir().display()
            );
            if chaos_on && looked.elapsed() > Duration::from_millis(100) {
                looked = Instant::now();
                if let Some(p) = self.try_progress().await {
                    chaos_on = p.count(PartitionState::Completed) < self.partitions as usize;
                }
            }
            for (w, slot) in slots.iter_mut().enumerate() {
                if slot.done {
                    continue;
                }
                let Some(child) = slot.child.as_mut() else {
                    slot.runs += 1;
                    slot.name = format!("w{w}-run{}", slot.runs);
                    slot.child = Some(self.spawn(self.command(&[]), &slot.name, &mut chaos));
                    slot.ready = None;
                    slot.stop_after = Duration::from_millis(rng.u64(300..=1_500));
                    slot.sent = None;
                    continue;
                };
                let pid = child.id();
                if let Some(status) = child.try_wait().expect("try_wait") {
                    slot.child = None;
                    let log = self.log_dir().join(format!("{}.log", slot.name));
                    match (slot.sent, status.code(), status.signal()) {
                        (_, Some(0), _) => slot.done = true,
                        (Some((false, _)), Some(RETRY_ME), _) => {}
                        (Some((true, _)), _, Some(libc::SIGKILL)) => {}
                        // SIGTERM before the task installed its handlers (it
                        // logs "task started" after): it had done nothing.
                        (Some((false, _)), _, Some(libc::SIGTERM))
                            if !std::fs::read_to_string(&log)
                                .unwrap_or_default()
                                .contains("task started") => {}
                        _ => panic!(
                            "task {} (pid {pid}) ended with {status} after {:?} (seed {seed}):\n{}",
                            slot.name,
                            slot.sent
                                .map(|(kill, _)| if kill { "SIGKILL" } else { "SIGTERM" }),
                            tail(&log)
                        ),
                    }
                    continue;
                }
                if slot.ready.is_none() {
                    let log = self.log_dir().join(format!("{}.log", slot.name));
                    if std::fs::read_to_string(log)
                        .unwrap_or_default()
                        .contains("task started")
                    {
                        slot.ready = Some(Instant::now());
                    }
                }
                match slot.sent {
                    None if chaos_on
                        && slot.runs <= STOPS_PER_WORKER
                        && slot.ready.is_some_and(|at| at.elapsed() >= slot.stop_after) =>
                    {
                        let kill = rng.f64() < kill_ratio;
                        send(pid, if kill { libc::SIGKILL } else { libc::SIGTERM });
                        if kill {
                            chaos.killed.insert(pid);
                        } else {
                            chaos.sigterms += 1;
                        }
                        slot.sent = Some((kill, Instant::now()));
                    }
                    Some((false, at)) if at.elapsed() > GRACE => panic!(
                        "task {} (pid {pid}) still runs {GRACE:?} after SIGTERM (seed {seed}):\n{}",
                        slot.name,
                        tail(&self.log_dir().join(format!("{}.log", slot.name)))
                    ),
                    _ => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        chaos
    }

    /// The job came out whole: completed once, every partition's output an
    /// uninterrupted run's, no claim left behind, every chunk done (exactly
    /// once, but for what a SIGKILLed task had done since its last
    /// checkpoint: at most `every_chunks` chunks each).
    pub async fn check(&self, chaos: &Chaos) {
        let p = self.progress().await;
        assert!(
            p.is_completed(),
            "the job is not completed: {}",
            p.summary()
        );
        assert!(
            p.checkpoint.lease.is_none(),
            "the job-level lease was not released"
        );
        for row in &p.rows {
            assert_eq!(
                row.state,
                PartitionState::Completed,
                "partition {}",
                row.index
            );
            assert_eq!(
                row.claim,
                Claim::Free,
                "partition {} keeps a claim",
                row.index
            );
        }

        // Completed exactly once: one run of the completion step recorded it,
        // one task says so.
        let completing: Vec<_> = p
            .checkpoint
            .history
            .iter()
            .filter(|r| r.outcome == "completed")
            .collect();
        assert_eq!(completing.len(), 1, "{:?}", p.checkpoint.history);
        let said: usize = chaos
            .logs
            .iter()
            .map(|log| std::fs::read_to_string(log).unwrap_or_default())
            .map(|text| text.matches("outcome=job completed").count())
            .sum();
        assert_eq!(said, 1, "tasks that say they completed the job");
        // The hook ran once, unless a run of the completion step was cut off.
        let hooks = std::fs::read_to_string(self.audit_dir().join("hook.txt")).unwrap_or_default();
        let starts = hooks.lines().count();
        if p.checkpoint.history.len() == 1 {
            assert_eq!(starts, 1, "the completion hook ran {starts} times");
        } else {
            assert!(starts >= 1, "the completion hook never ran");
        }
        assert!(self.out_dir().join("_SUCCESS").exists(), "no _SUCCESS");

        // Outputs: each partition's file is an uninterrupted run's.
        let reference = reference(self.partitions, self.records, self.chunk);
        for (i, expected) in reference.iter().enumerate() {
            let path = self.out_dir().join(format!("part-{i:04}.txt"));
            let got = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                got == *expected,
                "{} differs from an uninterrupted run's",
                path.display()
            );
        }

        // Chunks: all done; done twice only after a SIGKILL, at most every_chunks each.
        for i in 0..self.partitions {
            let path = self.audit_dir().join(format!("p-{i:04}.txt"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
            let mut redone: BTreeMap<u32, u64> = BTreeMap::new();
            for line in text.lines() {
                let f: Vec<u64> = line.split(' ').map(|x| x.parse().expect("audit")).collect();
                let (start, pid) = (f[0], u32::try_from(f[2]).expect("pid"));
                if let Some(&first) = seen.get(&start) {
                    assert!(
                        chaos.killed.contains(&first),
                        "partition {i}: chunk {start} done by pid {first}, which was not SIGKILLed, and again by {pid}"
                    );
                    *redone.entry(first).or_default() += 1;
                }
                seen.insert(start, pid);
            }
            let range = part_range(i, self.partitions, self.records);
            let expected: BTreeSet<u64> = range.clone().step_by(self.chunk as usize).collect();
            let done: BTreeSet<u64> = seen.keys().copied().collect();
            assert_eq!(done, expected, "partition {i}: chunks done");
            for (pid, n) in redone {
                assert!(
                    n <= self.every_chunks,
                    "partition {i}: {n} chunks of SIGKILLed pid {pid} redone (checkpoint every {})",
                    self.every_chunks
                );
            }
        }
    }
}

/// Partition `i`'s records, as `Partition::range` cuts them.
fn part_range(i: u32, partitions: u32, per: u64) -> std::ops::Range<u64> {
    let total = u64::from(partitions) * per;
    let at = |i: u32| total * u64::from(i) / u64::from(partitions);
    at(i)..at(i + 1)
}

/// The partitions' outputs of one uninterrupted task (static, task 0 of 1,
/// on a file store).
pub fn reference(partitions: u32, records: u64, chunk: u64) -> Vec<Vec<u8>> {
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new(example_bin("partitioned"))
            .env_remove("SPOTBATCH_STORE")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .args(["--partitions", &partitions.to_string()])
            .args(["--records-per-partition", &records.to_string()])
            .args(["--chunk", &chunk.to_string()])
            .args(["--assign", "static", "--index", "0", "--count", "1"])
            .arg("--store")
            .arg(format!("file://{}", dir.path().join("ckpt").display()))
            .arg("--out-dir")
            .arg(dir.path().join("out"))
            .status()
            .expect("reference run");
        assert!(status.success(), "reference run: {status}");
        (0..partitions)
            .map(|i| {
                std::fs::read(dir.path().join(format!("out/part-{i:04}.txt"))).expect("reference")
            })
            .collect()
    }
}

/// Sends `sig` to `pid`, a child not yet reaped.
pub fn send(pid: u32, sig: i32) {
    let pid = i32::try_from(pid).expect("pid");
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// The last lines of a log.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Waits for a task; panics with its log past `limit`.
pub fn wait(child: &mut Child, log: &Path, limit: Duration) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("task did not exit within {limit:?}:\n{}", tail(log));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
