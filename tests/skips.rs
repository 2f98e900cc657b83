//! Skipped chunks and their redrive, through the public API, on paused
//! tokio time with a `MemoryStore`.

// Test code: a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spotbatch::concurrent::{Concurrent, ConcurrentJob};
use spotbatch::{
    async_trait, transient, BoxError, Checkpoint, CheckpointPolicy, CheckpointStore, Chunk,
    ChunkContext, Codec, Job, JobKey, MemoryStore, Outcome, Report, Runner, SkipPolicy,
};

/// How a chunk fails.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Error,
    Transient,
    Panic,
}

/// Sums `0..100` in chunks of ten; the state is the running sum, and each
/// chunk also writes its sum under its start in a shared output (keyed by
/// the chunk: writing it twice changes nothing). Chunks whose start is in
/// `faults` fail.
#[derive(Clone, Default)]
struct Sums {
    faults: Arc<Mutex<BTreeMap<u64, Fault>>>,
    output: Arc<Mutex<BTreeMap<u64, u64>>>,
    redriven: Arc<Mutex<Vec<u64>>>,
}

impl Sums {
    fn failing(faults: &[(u64, Fault)]) -> Self {
        let job = Self::default();
        job.faults.lock().unwrap().extend(faults.iter().copied());
        job
    }

    fn fix(&self) {
        self.faults.lock().unwrap().clear();
    }

    fn next(at: u64) -> Option<Chunk<u64>> {
        (at < 100).then(|| Chunk::between(at, at + 10))
    }

    fn work(&self, chunk: &Chunk<u64>, ctx: &ChunkContext) -> Result<u64, BoxError> {
        if ctx.is_redrive() {
            self.redriven.lock().unwrap().push(*chunk.start());
        }
        let fault = self.faults.lock().unwrap().get(chunk.start()).copied();
        match fault {
            Some(Fault::Error) => Err(format!("bad record at {}", chunk.start()).into()),
            Some(Fault::Transient) => Err(transient("throttled")),
            Some(Fault::Panic) => panic!("poison record at {}", chunk.start()),
            None => Ok(chunk.range().sum()),
        }
    }

    fn output(&self) -> BTreeMap<u64, u64> {
        self.output.lock().unwrap().clone()
    }
}

#[async_trait]
impl Job for Sums {
    type Cursor = u64;
    type State = u64;

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>, BoxError> {
        Ok(Self::next(*at))
    }

    async fn process(
        &mut self,
        chunk: &Chunk<u64>,
        sum: &mut u64,
        ctx: &ChunkContext,
    ) -> Result<(), BoxError> {
        let part = self.work(chunk, ctx)?;
        *sum += part;
        self.output.lock().unwrap().insert(*chunk.start(), part);
        Ok(())
    }
}

#[async_trait]
impl ConcurrentJob for Sums {
    type Cursor = u64;
    type State = u64;
    type Output = u64;

    async fn next_chunk(&self, at: &u64) -> Result<Option<Chunk<u64>>, BoxError> {
        Ok(Self::next(*at))
    }

    async fn process(&self, chunk: &Chunk<u64>, ctx: &ChunkContext) -> Result<u64, BoxError> {
        self.work(chunk, ctx)
    }

    async fn commit(&self, chunk: &Chunk<u64>, part: u64, sum: &mut u64) -> Result<(), BoxError> {
        *sum += part;
        self.output.lock().unwrap().insert(*chunk.start(), part);
        Ok(())
    }
}

/// What an uninterrupted run of `Sums` gives: every chunk's sum.
fn uninterrupted() -> BTreeMap<u64, u64> {
    (0..100)
        .step_by(10)
        .map(|at| (at, (at..at + 10).sum()))
        .collect()
}

const TOTAL: u64 = 4950;

fn runner<J: Job>(job: J, store: &MemoryStore) -> Runner<J> {
    Runner::new("sums", job)
        .store(store.clone())
        .signals(&[])
        .checkpoint(CheckpointPolicy::at_exit_only())
        .no_lease()
}

async fn stored(store: &MemoryStore) -> Checkpoint {
    store
        .load(&JobKey::new("sums").unwrap())
        .await
        .unwrap()
        .unwrap()
}

/// What `spotbatch redrive` does: sets the flag by compare-and-swap.
async fn request_redrive(store: &MemoryStore) {
    let mut c = stored(store).await;
    let version = c.version;
    c.redrive = true;
    c.version += 1;
    store.save(&c, Some(version)).await.unwrap();
}

fn cursor_and_sum(c: &Checkpoint) -> (u64, u64) {
    (
        c.codec.decode(&c.cursor).unwrap(),
        c.codec.decode(&c.state).unwrap(),
    )
}

fn failed_with(report: &Report) -> String {
    match &report.outcome {
        Outcome::Failed(e) => e.to_string(),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn skips_within_the_limit_are_recorded_and_a_redrive_completes_the_output() {
    let store = MemoryStore::new();
    let job = Sums::failing(&[(20, Fault::Error), (50, Fault::Transient)]);
    let report = runner(job.clone(), &store)
        .skip(SkipPolicy::at_most(2))
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    assert_eq!((report.stats.chunks, report.stats.skipped), (8, 2));
    assert_eq!(
        report.stats.retries, 2,
        "the transient one was retried first"
    );
    let c = stored(&store).await;
    assert_eq!(c.status.name(), "completed");
    let skipped: Vec<_> = c
        .skipped
        .iter()
        .map(|s| {
            (
                s.start_text.as_str(),
                s.next_text.as_str(),
                s.items,
                s.attempts,
            )
        })
        .collect();
    assert_eq!(skipped, vec![("20", "30", 10, 1), ("50", "60", 10, 3)]);
    assert_eq!(c.skipped[0].error, "bad record at 20");
    assert_eq!(c.skipped[1].error, "throttled (transient)");
    assert_eq!(c.skipped[0].run_id, c.writer.run_id);
    assert!(!c.redrive);
    assert_eq!(
        c.counters.chunks, 8,
        "skipped chunks are not counted as done"
    );
    assert_eq!(cursor_and_sum(&c), (100, TOTAL - 245 - 545));

    // Without a redrive request, a completed job stays completed.
    let again = runner(job.clone(), &store).run().await;
    assert!(matches!(again.outcome, Outcome::AlreadyCompleted));

    // Fixed, and redriven: only the skipped chunks run, and the job's
    // output and state are an uninterrupted run's.
    job.fix();
    request_redrive(&store).await;
    let report = runner(job.clone(), &store)
        .skip(SkipPolicy::at_most(2))
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    assert_eq!((report.stats.chunks, report.stats.redriven), (2, 2));
    assert_eq!(*job.redriven.lock().unwrap(), vec![20, 50]);
    let c = stored(&store).await;
    assert!(c.skipped.is_empty() && !c.redrive);
    assert_eq!(c.counters.chunks, 10);
    assert_eq!(cursor_and_sum(&c), (100, TOTAL));
    assert_eq!(job.output(), uninterrupted());
}

#[tokio::test(start_paused = true)]
async fn a_redriven_chunk_that_fails_again_is_skipped_again_by_that_run() {
    let store = MemoryStore::new();
    let job = Sums::failing(&[(20, Fault::Error), (30, Fault::Error)]);
    let report = runner(job.clone(), &store)
        .skip(SkipPolicy::at_most(5))
        .run()
        .await;
    assert!(report.is_complete());
    job.faults.lock().unwrap().remove(&30);
    request_redrive(&store).await;
    let report = runner(job.clone(), &store)
        .skip(SkipPolicy::at_most(5))
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    assert_eq!(report.stats.redriven, 1);
    assert_eq!(report.stats.skipped, 1, "20 skipped again, by this run");
    let c = stored(&store).await;
    assert_eq!(c.skipped.len(), 1);
    assert_eq!(c.skipped[0].start_text, "20");
    assert_eq!(c.skipped[0].run_id, c.writer.run_id);
    let run = c.history.last().unwrap();
    assert_eq!((run.run_id, run.skipped), (c.writer.run_id, 1));
    assert!(
        !c.redrive,
        "the redrive was done; 20 waits for the next one"
    );
    assert_eq!(cursor_and_sum(&c), (100, TOTAL - 245));
}

#[tokio::test(start_paused = true)]
async fn a_redrive_stopped_midway_is_taken_up_at_the_chunks_not_yet_tried() {
    let store = MemoryStore::new();
    let job = Sums::failing(&[(20, Fault::Error), (30, Fault::Error), (50, Fault::Error)]);
    let report = runner(job.clone(), &store)
        .skip(SkipPolicy::at_most(5))
        .run()
        .await;
    assert!(report.is_complete());
    // 20 still fails for good; 30 now fails with transient errors, and the
    // run is stopped while it waits to retry it.
    job.faults.lock().unwrap().insert(30, Fault::Transient);
    request_redrive(&store).await;
    let seen = job.redriven.clone();
    let report = runner(job.clone(), &store)
        .skip(SkipPolicy::at_most(5))
        .stop_on("test", async move {
            while !seen.lock().unwrap().contains(&30) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .run()
        .await;
    assert!(
        matches!(report.outcome, Outcome::Interrupted(_)),
        "{:?}",
        report.outcome
    );
    let c = stored(&store).await;
    let order: Vec<&str> = c.skipped.iter().map(|s| s.start_text.as_str()).collect();
    // 20, tried and failed again, went to the back: the next run starts
    // with 30, which it did not finish, then 50, never tried.
    assert_eq!(order, ["30", "50", "20"]);
    assert!(c.redrive, "the redrive is not done");

    job.fix();
    job.redriven.lock().unwrap().clear();
    let report = runner(job.clone(), &store)
        .skip(SkipPolicy::at_most(5))
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    assert_eq!(*job.redriven.lock().unwrap(), vec![30, 50, 20]);
    let c = stored(&store).await;
    assert!(c.skipped.is_empty() && !c.redrive);
    assert_eq!(job.output(), uninterrupted());
}

#[tokio::test(start_paused = true)]
async fn past_the_limit_the_run_fails_at_the_last_chunk_done_and_resumes_there() {
    let store = MemoryStore::new();
    let job = Sums::failing(&[(20, Fault::Error), (50, Fault::Error), (70, Fault::Error)]);
    let report = runner(job.clone(), &store)
        .skip(SkipPolicy::at_most(2))
        .run()
        .await;
    assert_eq!(report.code(), 1);
    let message = failed_with(&report);
    assert!(message.contains("cursor 70"), "{message}");
    assert!(
        message.contains("past the skip limit (2 chunks skipped"),
        "{message}"
    );
    assert!(message.contains("bad record at 70"), "{message}");
    assert_eq!(report.stats.skipped, 2);
    let c = stored(&store).await;
    assert_eq!(c.status.name(), "failed");
    assert_eq!(c.skipped.len(), 2, "the skips before the failure are kept");
    assert_eq!(cursor_and_sum(&c), (70, (0..70).sum::<u64>() - 245 - 545));

    // Once 70 is fixed, the next run resumes at 70.
    job.faults.lock().unwrap().remove(&70);
    let report = runner(job.clone(), &store)
        .skip(SkipPolicy::at_most(2))
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    assert_eq!(report.stats.chunks, 3);
    assert_eq!(
        cursor_and_sum(&stored(&store).await),
        (100, TOTAL - 245 - 545)
    );

    // Without a skip policy, the first failure fails the run, as ever.
    let store = MemoryStore::new();
    let report = runner(Sums::failing(&[(20, Fault::Error)]), &store)
        .run()
        .await;
    assert_eq!(report.code(), 1);
    assert!(!failed_with(&report).contains("skip"));
    let c = stored(&store).await;
    assert!(c.skipped.is_empty());
    assert_eq!(cursor_and_sum(&c).0, 20);
}

#[tokio::test(start_paused = true)]
async fn a_fraction_counts_the_chunks_seen() {
    // A quarter: 20 is 1 skip of 3 chunks seen (ceil 0.75 = 1, allowed);
    // 30 would be 2 of 4 (ceil 1 = 1): the run fails there.
    let store = MemoryStore::new();
    let job = Sums::failing(&[(20, Fault::Error), (30, Fault::Error)]);
    let report = runner(job, &store)
        .skip(SkipPolicy::fraction(0.25))
        .run()
        .await;
    assert_eq!(report.code(), 1);
    assert_eq!(report.stats.skipped, 1);
    assert_eq!(cursor_and_sum(&stored(&store).await).0, 30);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_chunk_is_skipped_with_its_message() {
    let store = MemoryStore::new();
    let job = Sums::failing(&[(30, Fault::Panic)]);
    let report = runner(job.clone(), &store)
        .skip(SkipPolicy::at_most(1))
        .codec(Codec::Json)
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    let c = stored(&store).await;
    assert_eq!(c.skipped.len(), 1);
    assert_eq!(
        c.skipped[0].error,
        "the chunk panicked: poison record at 30"
    );
    assert_eq!(c.skipped[0].start, b"30");
    job.fix();
    request_redrive(&store).await;
    let report = runner(job.clone(), &store).run().await;
    assert!(report.is_complete());
    assert_eq!(job.output(), uninterrupted());
}

#[tokio::test(start_paused = true)]
async fn concurrent_jobs_skip_and_redrive_too() {
    let store = MemoryStore::new();
    let job = Sums::failing(&[(0, Fault::Error), (40, Fault::Panic), (90, Fault::Error)]);
    let report = runner(Concurrent::new(job.clone(), 4), &store)
        .skip(SkipPolicy::at_most(3))
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    assert_eq!((report.stats.chunks, report.stats.skipped), (7, 3));
    let c = stored(&store).await;
    let starts: BTreeSet<_> = c.skipped.iter().map(|s| s.start_text.clone()).collect();
    assert_eq!(starts, ["0", "40", "90"].map(String::from).into());
    assert_eq!(
        cursor_and_sum(&c).0,
        100,
        "skipped chunks count for the watermark"
    );

    job.fix();
    request_redrive(&store).await;
    let report = runner(Concurrent::new(job.clone(), 4), &store).run().await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    assert_eq!(report.stats.redriven, 3);
    assert_eq!(*job.redriven.lock().unwrap(), vec![0, 40, 90]);
    let c = stored(&store).await;
    assert!(c.skipped.is_empty());
    assert_eq!(cursor_and_sum(&c), (100, TOTAL));
    assert_eq!(job.output(), uninterrupted());
}
