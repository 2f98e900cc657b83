//! The runner with an S3 store: two runners on one job.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod s3_common;

use std::time::Duration;

use spotbatch::prelude::*;
use spotbatch::s3::S3Store;
use spotbatch::{CheckpointStore, Error, JobKey, Report, Status, StoreError};

/// Adds up record numbers, slowly.
struct Sum {
    records: u64,
    pause: Duration,
}

#[async_trait]
impl Job for Sum {
    type Cursor = u64;
    type State = u64;

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < self.records).then(|| Chunk::between(*at, *at + 1)))
    }

    async fn process(&mut self, chunk: &Chunk<u64>, sum: &mut u64, _: &ChunkContext) -> Result<()> {
        tokio::time::sleep(self.pause).await;
        *sum += chunk.start();
        Ok(())
    }
}

async fn run(store: S3Store, key: &str, records: u64) -> Report {
    Runner::new(
        key,
        Sum {
            records,
            pause: Duration::from_millis(20),
        },
    )
    .store(store)
    .checkpoint(Every::chunk())
    .signals(&[])
    .run()
    .await
}

/// Checks that of two reports exactly one completed and the other was fenced
/// off or refused (exit code 73), and that the stored checkpoint is the
/// winner's alone.
async fn exactly_one_advanced(store: &S3Store, key: &str, reports: [Report; 2], records: u64) {
    let mut codes: Vec<u8> = reports.iter().map(Report::code).collect();
    codes.sort_unstable();
    assert_eq!(codes, [0, 73], "{reports:?}");
    let loser = reports.iter().find(|r| r.code() == 73).expect("a loser");
    // Fenced by compare-and-swap, or refused at start by the winner's live
    // lease (a runner of this same process is never taken for a dead one).
    assert!(
        matches!(
            loser.error(),
            Some(Error::Store(StoreError::Conflict { .. }) | Error::Held { .. })
        ),
        "{:?}",
        loser.error()
    );
    let stored = store
        .load(&JobKey::new(key).unwrap())
        .await
        .unwrap()
        .expect("a checkpoint");
    assert_eq!(stored.status, Status::Completed);
    assert_eq!(
        stored.counters.chunks, records,
        "chunks counted by both runners"
    );
    let sum: u64 = stored.codec.decode(&stored.state).unwrap();
    assert_eq!(sum, (0..records).sum::<u64>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_runners_on_one_job_exactly_one_advances_the_other_is_fenced() {
    let first = s3_common::fresh_store("two-runners").await;
    let endpoint = s3_common::endpoint();
    let second = || s3_common::store_on(&endpoint, first.bucket(), first.prefix());
    let records = 15;

    // Both start from nothing: both create version 1, If-None-Match lets one through.
    let (a, b) = tokio::join!(run(first.clone(), "together", records), async {
        run(second().await, "together", records).await
    });
    exactly_one_advanced(&first, "together", [a, b], records).await;

    // The second starts while the first is under way: both hold the same
    // version at some point, and only one can replace it.
    let a = tokio::spawn(run(first.clone(), "staggered", records));
    let key = JobKey::new("staggered").unwrap();
    loop {
        if matches!(first.load(&key).await, Ok(Some(c)) if c.version >= 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let b = run(second().await, "staggered", records).await;
    let a = a.await.unwrap();
    exactly_one_advanced(&first, "staggered", [a, b], records).await;
}
