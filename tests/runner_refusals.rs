//! Each write of a run that a store can refuse for good (the lease taken at
//! start, a periodic checkpoint, a lease renewal during a chunk, the final
//! checkpoint) ends the run at once with exit 74, never retried, and the
//! failure is recorded on the last checkpoint when the store takes that
//! write. Time is tokio's paused clock: a retry would show as time passed.
//! (Each store's own refusals, against real servers and file systems:
//! tests/file_refusals.rs, tests/s3_refusals.rs, tests/postgres_refusals.rs.)

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use spotbatch::prelude::*;
use spotbatch::{
    Checkpoint, CheckpointStore, Error, JobKey, MemoryStore, Refusal, Status, StoreError,
};
use tokio::time::Instant;

const JOB: &str = "refused";

/// Counts to ten, a chunk a number, each chunk taking `chunk_time`; the
/// state is the sum so far.
struct Count {
    chunk_time: Duration,
}

#[async_trait]
impl Job for Count {
    type Cursor = u64;
    type State = u64;

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < 10).then(|| Chunk::between(*at, *at + 1)))
    }

    async fn process(&mut self, chunk: &Chunk<u64>, sum: &mut u64, _: &ChunkContext) -> Result<()> {
        tokio::time::sleep(self.chunk_time).await;
        *sum += chunk.start();
        Ok(())
    }
}

/// Which writes a [`Refusing`] store refuses.
type Rule = fn(&Checkpoint, Write) -> bool;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    Save,
    Renew,
}

/// A memory store that refuses, for good, the writes `refuses` picks (as a
/// read-only or full store, or one rejecting the data, would).
#[derive(Debug, Clone)]
struct Refusing {
    inner: MemoryStore,
    refuses: Rule,
}

impl Refusing {
    fn check(&self, c: &Checkpoint, write: Write) -> Result<(), StoreError> {
        if (self.refuses)(c, write) {
            return Err(StoreError::Refused {
                store: self.location(),
                key: c.job.to_string(),
                operation: "save",
                cause: Refusal::Rejected,
                source: format!("{write:?} of version {} refused", c.version).into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl CheckpointStore for Refusing {
    fn location(&self) -> String {
        "refusing://".into()
    }

    async fn load(&self, key: &JobKey) -> Result<Option<Checkpoint>, StoreError> {
        self.inner.load(key).await
    }

    async fn save(&self, c: &Checkpoint, expected: Option<u64>) -> Result<(), StoreError> {
        self.check(c, Write::Save)?;
        self.inner.save(c, expected).await
    }

    async fn renew(&self, c: &Checkpoint, expected: Option<u64>) -> Result<(), StoreError> {
        self.check(c, Write::Renew)?;
        self.inner.save(c, expected).await
    }

    async fn list(&self) -> Result<Vec<spotbatch::Listing>, StoreError> {
        self.inner.list().await
    }

    async fn delete(&self, key: &JobKey, expected: u64) -> Result<(), StoreError> {
        self.inner.delete(key, expected).await
    }
}

/// Runs the job on a store refusing what `refuses` picks; returns the
/// report, the virtual time it took and the stored checkpoint.
async fn run(refuses: Rule, chunk_time: Duration) -> (spotbatch::Report, Duration, Checkpoint) {
    let inner = MemoryStore::new();
    let started = Instant::now();
    let report = Runner::new(JOB, Count { chunk_time })
        .store(Refusing {
            inner: inner.clone(),
            refuses,
        })
        .signals(&[])
        .checkpoint(Every::chunks(3))
        .lease(Duration::from_millis(900))
        .run()
        .await;
    let stored = inner
        .load(&JobKey::new(JOB).unwrap())
        .await
        .unwrap()
        .unwrap();
    (report, started.elapsed(), stored)
}

/// The run ended with the refusal, at once, with exit 74.
fn assert_refused(report: &spotbatch::Report, took: Duration, within: Duration) {
    let err = report
        .error()
        .unwrap_or_else(|| panic!("{:?}", report.outcome));
    assert!(
        matches!(err, Error::Store(StoreError::Refused { .. })),
        "{err:?}"
    );
    assert_eq!(report.code(), 74, "{err}");
    assert!(took <= within, "took {took:?}: retried a refusal");
}

fn cursor(c: &Checkpoint) -> u64 {
    c.codec.decode(&c.cursor).unwrap()
}

fn failure(c: &Checkpoint) -> String {
    match &c.status {
        Status::Failed { message } => message.clone(),
        other => panic!("status {other}, not failed"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_periodic_checkpoint_ends_the_run_and_the_last_one_records_why() {
    // Refuses checkpoints past chunk 3 (their data, say), not the failure.
    let (report, took, stored) = run(
        |c, _| c.status == Status::Running && c.counters.chunks > 3,
        Duration::from_millis(10),
    )
    .await;
    assert_refused(&report, took, Duration::from_millis(60));
    assert_eq!((cursor(&stored), stored.lease), (3, None));
    assert!(failure(&stored).contains("refused"), "{}", stored.status);
}

#[tokio::test(start_paused = true)]
async fn a_refused_lease_renewal_stops_the_chunk_at_once_and_the_last_checkpoint_records_why() {
    // Chunks of 2 s and a 900 ms lease: renewed (and refused) at 300 ms.
    let (report, took, stored) = run(
        |c, write| write == Write::Renew && c.status == Status::Running,
        Duration::from_secs(2),
    )
    .await;
    assert_refused(&report, took, Duration::from_millis(300));
    assert_eq!((cursor(&stored), stored.lease), (0, None));
    assert!(
        failure(&stored).contains("Renew of version 2 refused"),
        "{}",
        stored.status
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_final_checkpoint_is_not_retried_and_the_last_one_records_why() {
    let (report, took, stored) = run(
        |c, _| c.status == Status::Completed,
        Duration::from_millis(10),
    )
    .await;
    assert_refused(&report, took, Duration::from_millis(100));
    assert_eq!((cursor(&stored), stored.lease), (9, None));
    assert!(failure(&stored).contains("refused"), "{}", stored.status);
}

#[tokio::test(start_paused = true)]
async fn a_refused_lease_at_start_ends_the_run_at_once_having_written_nothing() {
    let (report, took, _) = {
        let inner = MemoryStore::new();
        let store = Refusing {
            inner: inner.clone(),
            refuses: |_, _| true,
        };
        let started = Instant::now();
        let report = Runner::new(
            JOB,
            Count {
                chunk_time: Duration::ZERO,
            },
        )
        .store(store)
        .signals(&[])
        .run()
        .await;
        let stored = inner.load(&JobKey::new(JOB).unwrap()).await.unwrap();
        assert_eq!(stored, None);
        (report, started.elapsed(), ())
    };
    assert_refused(&report, took, Duration::ZERO);
}
