//! A chunk's failures: transient errors retried with backoff, the retry
//! limit, errors not retried, panics caught as failures (one at a time and
//! with chunks in flight), and a stop during a retry's wait.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spotbatch::concurrent::{Concurrent, ConcurrentJob};
use spotbatch::prelude::*;
use spotbatch::{transient, CheckpointStore, ChunkPanicked, JobKey, MemoryStore, Status};

/// What chunk `i`'s attempts do, in order; `Ok` once they run out.
#[derive(Clone, Copy, Debug)]
enum Attempt {
    Transient,
    Fatal,
    Panic,
}

/// Ten chunks of one record; the state sums the records done. Each
/// chunk's attempts follow `script`; every attempt is counted.
struct Scripted {
    script: HashMap<u64, Vec<Attempt>>,
    attempts: Arc<Mutex<HashMap<u64, u32>>>,
}

impl Scripted {
    fn new(script: &[(u64, &[Attempt])]) -> Self {
        Self {
            script: script.iter().map(|(i, a)| (*i, a.to_vec())).collect(),
            attempts: Arc::default(),
        }
    }

    fn attempt(&self, chunk: &Chunk<u64>, ctx: &ChunkContext) -> Result<()> {
        let i = *chunk.start();
        let n = {
            let mut attempts = self.attempts.lock().unwrap();
            let n = attempts.entry(i).or_default();
            *n += 1;
            *n
        };
        assert_eq!(n, ctx.attempt(), "the context's attempt number");
        match self.script.get(&i).and_then(|a| a.get(n as usize - 1)) {
            Some(Attempt::Transient) => Err(transient(format!("chunk {i} attempt {n}: timeout"))),
            Some(Attempt::Fatal) => Err(format!("chunk {i}: bad record").into()),
            Some(Attempt::Panic) => panic!("chunk {i}: index out of bounds"),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Job for Scripted {
    type Cursor = u64;
    type State = u64;

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < 10).then(|| Chunk::between(*at, at + 1)))
    }

    async fn process(
        &mut self,
        chunk: &Chunk<u64>,
        sum: &mut u64,
        ctx: &ChunkContext,
    ) -> Result<()> {
        // The state changes before the failure: a retry must start from a clean one.
        *sum += chunk.start();
        self.attempt(chunk, ctx)
    }
}

#[async_trait]
impl ConcurrentJob for Scripted {
    type Cursor = u64;
    type State = u64;
    type Output = u64;

    async fn next_chunk(&self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < 10).then(|| Chunk::between(*at, at + 1)))
    }

    async fn process(&self, chunk: &Chunk<u64>, ctx: &ChunkContext) -> Result<u64> {
        self.attempt(chunk, ctx)?;
        Ok(*chunk.start())
    }

    async fn commit(&self, _: &Chunk<u64>, record: u64, sum: &mut u64) -> Result<()> {
        *sum += record;
        Ok(())
    }
}

fn runner<J: Job>(store: &Arc<MemoryStore>, job: J) -> Runner<J> {
    Runner::new("failures", job)
        .shared_store(Arc::clone(store) as Arc<dyn CheckpointStore>)
        .checkpoint(Every::chunk())
        .signals(&[])
        .progress_every(None)
        .ecs_identity(false)
        .retry(RetryPolicy::attempts(3).backoff(Duration::from_millis(100), Duration::from_secs(1)))
}

async fn stored(store: &MemoryStore) -> (u64, u64, Status) {
    let c = store
        .load(&JobKey::new("failures").unwrap())
        .await
        .unwrap()
        .unwrap();
    (
        c.codec.decode(&c.cursor).unwrap(),
        c.codec.decode(&c.state).unwrap(),
        c.status,
    )
}

/// The sum of records 0..10.
const SUM: u64 = 45;

#[tokio::test(start_paused = true)]
async fn transient_errors_are_retried_until_the_chunk_succeeds() {
    let store = Arc::new(MemoryStore::new());
    let job = Scripted::new(&[
        (3, &[Attempt::Transient, Attempt::Transient]),
        (7, &[Attempt::Transient]),
    ]);
    let attempts = Arc::clone(&job.attempts);
    let report = runner(&store, job).run().await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    assert_eq!(report.stats.retries, 3);
    assert_eq!(attempts.lock().unwrap()[&3], 3);
    assert_eq!(
        stored(&store).await,
        (10, SUM, Status::Completed),
        "a failed attempt left its trace in the state"
    );
}

#[tokio::test(start_paused = true)]
async fn with_chunks_in_flight_transient_errors_are_retried_too() {
    let store = Arc::new(MemoryStore::new());
    let job = Scripted::new(&[
        (3, &[Attempt::Transient, Attempt::Transient]),
        (8, &[Attempt::Transient]),
    ]);
    let attempts = Arc::clone(&job.attempts);
    let report = runner(&store, Concurrent::new(job, 4)).run().await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    assert_eq!(report.stats.retries, 3);
    assert_eq!(attempts.lock().unwrap()[&3], 3);
    assert_eq!(stored(&store).await, (10, SUM, Status::Completed));
}

#[tokio::test(start_paused = true)]
async fn past_the_retry_limit_the_run_fails_at_the_last_good_chunk_and_a_rerun_resumes() {
    let store = Arc::new(MemoryStore::new());
    let job = Scripted::new(&[(4, &[Attempt::Transient; 3])]);
    let report = runner(&store, job).run().await;
    let error = report.error().expect("the run failed").to_string();
    assert!(
        error.contains("attempt 3") && error.contains("timeout"),
        "{error}"
    );
    assert_eq!(report.stats.retries, 2);
    let (cursor, sum, status) = stored(&store).await;
    assert_eq!(
        (cursor, sum),
        (4, 6),
        "the checkpoint is not at the last good chunk"
    );
    assert!(matches!(status, Status::Failed { .. }), "{status}");

    // The next run (the flaky dependency is back) resumes from chunk 4.
    let job = Scripted::new(&[]);
    let attempts = Arc::clone(&job.attempts);
    let report = runner(&store, job).run().await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    assert_eq!(attempts.lock().unwrap().len(), 6, "chunks 4..10 only");
    assert_eq!(stored(&store).await, (10, SUM, Status::Completed));
}

#[tokio::test(start_paused = true)]
async fn an_error_not_marked_transient_is_not_retried() {
    let store = Arc::new(MemoryStore::new());
    let job = Scripted::new(&[(2, &[Attempt::Fatal])]);
    let attempts = Arc::clone(&job.attempts);
    let report = runner(&store, job).run().await;
    assert!(report.error().is_some(), "{:?}", report.outcome);
    assert_eq!(report.stats.retries, 0);
    assert_eq!(attempts.lock().unwrap()[&2], 1);
    assert_eq!(stored(&store).await.0, 2);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_chunk_fails_the_run_with_its_message_and_the_checkpoint_is_saved() {
    let store = Arc::new(MemoryStore::new());
    let report = runner(&store, Scripted::new(&[(5, &[Attempt::Panic])]))
        .run()
        .await;
    let error = report.error().expect("the run failed");
    assert!(
        std::error::Error::source(error).is_some_and(|e| e.is::<ChunkPanicked>()),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("chunk 5: index out of bounds"),
        "{error}"
    );
    let (cursor, sum, status) = stored(&store).await;
    assert_eq!((cursor, sum), (5, 10));
    assert!(
        matches!(&status, Status::Failed { message } if message.contains("panicked")),
        "{status}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_chunk_in_flight_fails_the_run_the_same_way() {
    let store = Arc::new(MemoryStore::new());
    let report = runner(
        &store,
        Concurrent::new(Scripted::new(&[(5, &[Attempt::Panic])]), 4),
    )
    .run()
    .await;
    let error = report.error().expect("the run failed").to_string();
    assert!(error.contains("chunk 5: index out of bounds"), "{error}");
    assert_eq!(stored(&store).await.0, 5);
}

#[tokio::test(start_paused = true)]
async fn a_stop_during_a_retry_wait_ends_it() {
    let store = Arc::new(MemoryStore::new());
    let job = Scripted::new(&[(2, &[Attempt::Transient; 2])]);
    let started = tokio::time::Instant::now();
    let report = runner(&store, job)
        .retry(RetryPolicy::attempts(3).backoff(Duration::from_secs(600), Duration::from_secs(600)))
        .stop_on("test stop", tokio::time::sleep(Duration::from_secs(1)))
        .run()
        .await;
    assert!(
        matches!(report.outcome, Outcome::Interrupted(_)),
        "{:?}",
        report.outcome
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(stored(&store).await.0, 2);
}

/// Counts to 10 and, at the end, adds 1000 to the state once `complete`
/// is allowed to succeed.
struct Completing {
    fail_complete: bool,
    completions: Arc<Mutex<u32>>,
}

#[async_trait]
impl Job for Completing {
    type Cursor = u64;
    type State = u64;

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < 10).then(|| Chunk::between(*at, at + 1)))
    }

    async fn process(&mut self, chunk: &Chunk<u64>, sum: &mut u64, _: &ChunkContext) -> Result<()> {
        *sum += chunk.start();
        Ok(())
    }

    async fn complete(&mut self, cursor: &u64, sum: &mut u64) -> Result<()> {
        assert_eq!(*cursor, 10);
        *sum += 1000;
        if self.fail_complete {
            return Err("the _SUCCESS marker could not be written".into());
        }
        *self.completions.lock().unwrap() += 1;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn the_completion_hook_runs_at_the_end_and_a_failed_one_runs_again_in_the_next_run() {
    let store = Arc::new(MemoryStore::new());
    let completions = Arc::new(Mutex::new(0));
    let job = |fail_complete| Completing {
        fail_complete,
        completions: Arc::clone(&completions),
    };

    let report = runner(&store, job(true)).run().await;
    let error = report.error().expect("the hook failed").to_string();
    assert!(
        error.contains("complete") && error.contains("_SUCCESS"),
        "{error}"
    );
    let (cursor, sum, status) = stored(&store).await;
    assert_eq!(
        (cursor, sum),
        (10, SUM),
        "the failed hook's state change was saved"
    );
    assert!(matches!(status, Status::Failed { .. }), "{status}");
    assert_eq!(report.state::<u64>(), Some(&SUM));

    let report = runner(&store, job(false)).run().await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    assert_eq!(report.cursor::<u64>(), Some(&10));
    assert_eq!(
        report.state::<u64>(),
        Some(&(SUM + 1000)),
        "the final state, with the hook's change"
    );
    assert_eq!(report.state::<String>(), None, "another type");
    assert_eq!(stored(&store).await, (10, SUM + 1000, Status::Completed));
    assert_eq!(*completions.lock().unwrap(), 1);

    let report = runner(&store, job(false)).run().await;
    assert!(
        matches!(report.outcome, Outcome::AlreadyCompleted),
        "{:?}",
        report.outcome
    );
    assert_eq!(
        *completions.lock().unwrap(),
        1,
        "the hook ran again after completion"
    );
}
