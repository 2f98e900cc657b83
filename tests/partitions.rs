//! Partitioned jobs: many tasks on one job through the file store's leases.
//!
//! - 8 dynamic tasks (real processes of `examples/partitioned.rs`) on 64
//!   partitions, stopped at random by SIGTERM and SIGKILL and started again:
//!   the job comes out whole ([`fleet::Fleet::check`]);
//! - static tasks from the AWS Batch and the Kubernetes variables, one of
//!   them stopped (SIGTERM, SIGKILL) and replaced by a task of the same
//!   index;
//! - in one process: a partition whose holder stopped renewing its lease is
//!   taken over when the lease lapses; concurrent tasks run the completion
//!   hook once; a task given another number of partitions is refused.
//!
//! The same fleet on the S3 and Postgres stores: `tests/partitions_stores.rs`.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod fleet;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet::{wait, Chaos, Fleet, RETRY_ME};
use spotbatch::checkpoint::{Checkpoint, Lease, RunRecord, Writer};
use spotbatch::partition::{Assignment, Partition, PartitionedRunner, TaskOutcome};
use spotbatch::prelude::*;
use spotbatch::{CheckpointStore, FileStore, JobKey, MemoryStore};

fn file_fleet(partitions: u32) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt");
    let mut fleet = Fleet::new(
        format!("file://{}", path.display()),
        Arc::new(FileStore::new(&path)),
        partitions,
    );
    fleet.dir = dir;
    fleet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_dynamic_tasks_on_64_partitions_survive_sigterm_and_sigkill() {
    let fleet = file_fleet(64);
    let seed = fastrand::u64(..);
    eprintln!("seed {seed}");
    let chaos = fleet.chaos(8, seed, 0.3).await;
    eprintln!(
        "{} runs, {} SIGTERM, {} SIGKILL",
        chaos.runs,
        chaos.sigterms,
        chaos.killed.len()
    );
    assert!(
        chaos.sigterms + chaos.killed.len() > 0,
        "no task was stopped"
    );
    fleet.check(&chaos).await;
}

/// Starts static tasks `0..count` with `vars(i)`, stops task `victim` with
/// `sig` once it has done a few chunks of its first partition, replaces it,
/// and checks the job.
fn static_tasks(
    partitions: u32,
    count: u32,
    vars: impl Fn(u32) -> Vec<(String, String)>,
    victim: u32,
    sig: i32,
) {
    let fleet = file_fleet(partitions);
    let mut chaos = Chaos::default();
    let start = |i: u32, name: &str, chaos: &mut Chaos| {
        let mut cmd = fleet.command(&["--assign", "static"]);
        cmd.envs(vars(i));
        let log = fleet.dir.path().join(format!("logs/{name}.log"));
        (fleet.spawn(cmd, name, chaos), log)
    };
    let mut tasks: Vec<_> = (0..count)
        .map(|i| start(i, &format!("t{i}"), &mut chaos))
        .collect();

    // The victim's first partition is its index.
    let audit = fleet.audit_dir().join(format!("p-{victim:04}.txt"));
    let began = Instant::now();
    while std::fs::read_to_string(&audit)
        .unwrap_or_default()
        .lines()
        .count()
        < 7
    {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "task {victim} did no work"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (victim_child, victim_log) = &mut tasks[victim as usize];
    fleet::send(victim_child.id(), sig);
    if sig == libc::SIGKILL {
        chaos.killed.insert(victim_child.id());
    } else {
        chaos.sigterms += 1;
    }
    let status = wait(victim_child, victim_log, Duration::from_secs(20));
    if sig == libc::SIGTERM {
        assert_eq!(status.code(), Some(RETRY_ME), "{}", fleet::tail(victim_log));
    }
    // The platform's replacement: same index.
    tasks[victim as usize] = start(victim, &format!("t{victim}-again"), &mut chaos);
    for (child, log) in &mut tasks {
        let status = wait(child, log, Duration::from_secs(120));
        assert_eq!(status.code(), Some(0), "{}", fleet::tail(log));
    }
    let replacement = std::fs::read_to_string(&tasks[victim as usize].1).unwrap();
    assert!(
        replacement.contains("resuming from checkpoint"),
        "{replacement}"
    );
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(fleet.check(&chaos));
}

fn vars(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

#[test]
fn static_tasks_from_aws_batch_variables_and_a_replaced_task() {
    // 10 partitions, 4 tasks: task 1 runs partitions 1, 5 and 9.
    static_tasks(
        10,
        4,
        |i| {
            vars(&[
                ("AWS_BATCH_JOB_ARRAY_INDEX", i.to_string()),
                ("AWS_BATCH_JOB_ARRAY_SIZE", "4".into()),
            ])
        },
        1,
        libc::SIGTERM,
    );
}

#[test]
fn static_tasks_from_kubernetes_variables_and_a_killed_pod_replaced() {
    static_tasks(
        6,
        3,
        |i| {
            vars(&[
                ("JOB_COMPLETION_INDEX", i.to_string()),
                ("SPOTBATCH_TASK_COUNT", "3".into()),
            ])
        },
        2,
        libc::SIGKILL,
    );
}

// ---------------------------------------------------------------------------
// In one process
// ---------------------------------------------------------------------------

/// Counts `0..10` in chunks of one, noting (partition, item) as it goes.
struct Count {
    partition: u32,
    seen: Arc<Mutex<Vec<(u32, u64)>>>,
}

#[async_trait]
impl Job for Count {
    type Cursor = u64;
    type State = ();

    fn cursor_type() -> &'static str {
        "test/count"
    }

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < 10).then(|| Chunk::between(*at, *at + 1)))
    }

    async fn process(&mut self, chunk: &Chunk<u64>, _: &mut (), _: &ChunkContext) -> Result<()> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.seen
            .lock()
            .unwrap()
            .push((self.partition, *chunk.start()));
        Ok(())
    }
}

fn counting(
    job: &str,
    partitions: u32,
    store: &MemoryStore,
    seen: &Arc<Mutex<Vec<(u32, u64)>>>,
) -> PartitionedRunner<Count> {
    let seen = Arc::clone(seen);
    PartitionedRunner::new(job, partitions, move |p: Partition| {
        let seen = Arc::clone(&seen);
        async move {
            Ok(Count {
                partition: p.index(),
                seen,
            })
        }
    })
    .shared_store(Arc::new(store.clone()))
    .signals(&[])
    .poll_interval(Duration::from_millis(50))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tasks_complete_the_job_once_and_run_the_hook_once() {
    let store = MemoryStore::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hooks = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let hooks = Arc::clone(&hooks);
            let runner = counting("once", 12, &store, &seen).on_completed(move |_| {
                let hooks = Arc::clone(&hooks);
                async move {
                    hooks.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            });
            tokio::spawn(runner.run())
        })
        .collect();
    let mut completed = 0;
    for task in tasks {
        let report = task.await.unwrap();
        assert_eq!(report.code(), 0, "{:?}", report.outcome);
        if matches!(report.outcome, TaskOutcome::JobCompleted) {
            completed += 1;
        }
    }
    assert_eq!(completed, 1, "tasks that completed the job");
    assert_eq!(hooks.load(Ordering::SeqCst), 1, "hook runs");
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    let expected: Vec<(u32, u64)> = (0..12).flat_map(|p| (0..10).map(move |i| (p, i))).collect();
    assert_eq!(seen, expected, "every item of every partition, once");

    // A task started now exits 0 at once, doing nothing.
    let report = counting("once", 12, &store, &Arc::default()).run().await;
    assert!(
        matches!(report.outcome, TaskOutcome::AlreadyCompleted),
        "{:?}",
        report.outcome
    );
    assert!(report.runs.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_whose_holder_stopped_renewing_is_taken_over_when_its_lease_lapses() {
    let store = MemoryStore::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    // Partition 1 held by a runner on another host, killed: its lease lapses in 1.5 s.
    let key = JobKey::new("stale/p-0001").unwrap();
    let mut holder = Writer::this_process();
    holder.host = "another-host".into();
    let mut stale = Checkpoint::new(key.clone(), holder.clone());
    stale.cursor_type = "test/count".into();
    stale.schema = 1;
    stale.cursor = spotbatch::Codec::default().encode(&4u64).unwrap();
    stale.state = spotbatch::Codec::default().encode(&()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    stale.lease = Some(Lease::new(holder.run_id, now + 1_500));
    stale.history = vec![RunRecord::started(&holder, now)];
    store.save(&stale, None).await.unwrap();

    let started = Instant::now();
    let report = counting("stale", 3, &store, &seen).run().await;
    assert!(
        matches!(report.outcome, TaskOutcome::JobCompleted),
        "{:?}",
        report.outcome
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1_400),
        "took it over before the lease lapsed"
    );
    let taken = store.load(&key).await.unwrap().unwrap();
    assert!(taken.lease.is_none());
    let killed = taken
        .history
        .iter()
        .find(|r| r.run_id == holder.run_id)
        .unwrap();
    assert_eq!(killed.outcome, "killed");
    // The holder had done items 0..4: the new holder did 4..10.
    let items: Vec<u64> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| *p == 1)
        .map(|(_, i)| *i)
        .collect();
    assert_eq!(items, (4..10).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_task_given_another_number_of_partitions_is_refused() {
    let store = MemoryStore::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let report = counting("count", 4, &store, &seen)
        .assignment(Assignment::fixed(0, 4).unwrap())
        .run()
        .await;
    assert!(
        matches!(report.outcome, TaskOutcome::PartitionsDone),
        "{:?}",
        report.outcome
    );
    let report = counting("count", 5, &store, &seen).run().await;
    assert_eq!(report.code(), 78, "{:?}", report.outcome);
    let error = report.error().unwrap().to_string();
    assert!(
        error.contains("has 4 partitions") && error.contains("given 5"),
        "{error}"
    );

    // A single job's key is not a partitioned job's.
    let single = Runner::new(
        "single",
        Count {
            partition: 0,
            seen: Arc::clone(&seen),
        },
    )
    .store(store.clone())
    .signals(&[])
    .run()
    .await;
    assert!(single.is_complete());
    let report = counting("single", 2, &store, &seen).run().await;
    assert_eq!(report.code(), 65, "{:?}", report.outcome);
}
