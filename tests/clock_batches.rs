//! The chunk loop reads the clock once per batch of short chunks: a batch
//! that turns long (short chunks, then long ones, awaited or held in place)
//! still times each long chunk, checkpoints on time and renews the lease.

// Test code: a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use spotbatch::{
    async_trait, BoxError, CheckpointPolicy, CheckpointStore, Chunk, ChunkContext, Every, Job,
    JobKey, MemoryStore, Runner,
};

/// `short` chunks that return at once, then `long` chunks of `took` each:
/// awaited (a timer) or not (work in place, no `.await`).
struct ShortThenLong {
    short: u64,
    long: u64,
    took: Duration,
    in_place: bool,
    done: Arc<AtomicU64>,
}

#[async_trait]
impl Job for ShortThenLong {
    type Cursor = u64;
    type State = ();

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>, BoxError> {
        Ok((*at < self.short + self.long).then(|| Chunk::between(*at, at + 1)))
    }

    async fn process(
        &mut self,
        chunk: &Chunk<u64>,
        _: &mut (),
        _: &ChunkContext,
    ) -> Result<(), BoxError> {
        if *chunk.start() >= self.short {
            if self.in_place {
                std::thread::sleep(self.took);
            } else {
                tokio::time::sleep(self.took).await;
            }
        }
        self.done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[tokio::test]
async fn long_chunks_after_short_ones_are_each_timed_and_checkpointed_on_time() {
    // Real time (the batches end on the kernel's coarse clock): 5000
    // instant chunks make the batches 1024 chunks long; then 20 chunks of
    // 150 ms each, every one well under the 7.5 s drain budget.
    let job = ShortThenLong {
        short: 5000,
        long: 20,
        took: Duration::from_millis(150),
        in_place: false,
        done: Arc::default(),
    };
    let report = Runner::new("short-then-long", job)
        .store(MemoryStore::new())
        .signals(&[])
        .checkpoint(Every::seconds(1))
        .no_lease()
        .grace(Duration::from_secs(10))
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    assert_eq!(report.stats.chunks, 5020);
    // Each long chunk is timed on its own: the slowest is one of them (plus
    // at most a timer tick of short chunks before it), not a batch of them.
    let slowest = report.stats.slowest_chunk;
    assert!(
        slowest >= Duration::from_millis(150) && slowest < Duration::from_millis(300),
        "{slowest:?}"
    );
    assert_eq!(report.stats.chunks_over_drain_budget, 0);
    // Every second over the 3 s of long chunks: 2 or 3 periodic checkpoints.
    assert!(report.stats.checkpoints >= 2, "{:?}", report.stats);
}

#[test]
fn the_lease_is_renewed_while_chunks_in_place_turn_long() {
    // Real time: 3000 instant chunks, then 25 chunks of 100 ms that run in
    // place (no `.await`): 2.5 s against a 1 s lease.
    let store = MemoryStore::new();
    let done = Arc::new(AtomicU64::new(0));
    // With `short` 0 this passes: the batches of short chunks are the cause.
    let short = 3000;
    let job = ShortThenLong {
        short,
        long: 25,
        took: Duration::from_millis(100),
        in_place: true,
        done: done.clone(),
    };
    let runner = Runner::new("in-place", job)
        .store(store.clone())
        .signals(&[])
        .checkpoint(CheckpointPolicy::at_exit_only())
        .lease(Duration::from_secs(1))
        .grace(Duration::from_secs(10));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Watch the stored lease from another thread while the long chunks run.
    let watcher = {
        let store = store.clone();
        let done = done.clone();
        let key = JobKey::new("in-place").unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut expired_seen = false;
            while done.load(Ordering::Relaxed) < short + 20 {
                if done.load(Ordering::Relaxed) > short + 5 {
                    let loaded = rt.block_on(store.load(&key)).unwrap();
                    if let Some(cp) = loaded {
                        if let Some(lease) = cp.lease {
                            if lease.expires_ms < now_ms() {
                                expired_seen = true;
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            expired_seen
        })
    };
    let report = rt.block_on(runner.run());
    assert!(report.is_complete(), "{:?}", report.outcome);
    let expired_seen = watcher.join().unwrap();
    assert!(
        !expired_seen,
        "the stored lease expired while the runner was still working: another runner could take the job over"
    );
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}
