//! Chunk durations against the drain budget, and the drain deadline a chunk
//! reads from its context; on paused tokio time with a `MemoryStore`.

// Test code: a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use spotbatch::concurrent::{Concurrent, ConcurrentJob};
use spotbatch::{
    async_trait, BoxError, CheckpointPolicy, Chunk, ChunkContext, Job, MemoryStore, Outcome, Runner,
};
use spotbatch_test_support::logs::LogBuffer;
use tokio::time::{sleep, Instant};

/// grace 10 s → reserve 2.5 s: the drain budget is 7.5 s.
const GRACE: Duration = Duration::from_secs(10);
const DRAIN: Duration = Duration::from_millis(7_500);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Chunks `0..durations.len()`, chunk `i` sleeping `durations[i]`; each
/// records the drain deadline its context gave when it started and ended.
#[derive(Clone)]
struct Timed {
    durations: Vec<Duration>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A chunk's start, and the drain deadline its context gave when it began and ended.
type Seen = (u64, Option<Instant>, Option<Instant>);

impl Timed {
    fn new(durations: &[u64]) -> Self {
        Self {
            durations: durations.iter().map(|&s| secs(s)).collect(),
            seen: Arc::default(),
        }
    }

    fn next(&self, at: u64) -> Option<Chunk<u64>> {
        (at < self.durations.len() as u64).then(|| Chunk::between(at, at + 1))
    }

    async fn work(&self, chunk: &Chunk<u64>, ctx: &ChunkContext) {
        let before = ctx.drain_deadline();
        sleep(self.durations[*chunk.start() as usize]).await;
        let after = ctx.drain_deadline();
        self.seen
            .lock()
            .unwrap()
            .push((*chunk.start(), before, after));
    }
}

#[async_trait]
impl Job for Timed {
    type Cursor = u64;
    type State = ();

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>, BoxError> {
        Ok(self.next(*at))
    }

    async fn process(
        &mut self,
        chunk: &Chunk<u64>,
        _: &mut (),
        ctx: &ChunkContext,
    ) -> Result<(), BoxError> {
        self.work(chunk, ctx).await;
        Ok(())
    }
}

#[async_trait]
impl ConcurrentJob for Timed {
    type Cursor = u64;
    type State = ();
    type Output = ();

    async fn next_chunk(&self, at: &u64) -> Result<Option<Chunk<u64>>, BoxError> {
        Ok(self.next(*at))
    }

    async fn process(&self, chunk: &Chunk<u64>, ctx: &ChunkContext) -> Result<(), BoxError> {
        self.work(chunk, ctx).await;
        Ok(())
    }

    async fn commit(&self, _: &Chunk<u64>, (): (), _: &mut ()) -> Result<(), BoxError> {
        Ok(())
    }
}

fn runner<J: Job>(job: J, store: &MemoryStore) -> Runner<J> {
    named("timed", job, store)
}

fn named<J: Job>(key: &str, job: J, store: &MemoryStore) -> Runner<J> {
    Runner::new(key, job)
        .store(store.clone())
        .signals(&[])
        .checkpoint(CheckpointPolicy::at_exit_only())
        .no_lease()
        .grace(GRACE)
}

#[tokio::test(start_paused = true)]
async fn a_chunk_longer_than_the_drain_budget_is_warned_of_once_and_summed_up() {
    let logs = LogBuffer::global();
    // Two chunks over the 7.5 s budget, two under it.
    let report = named("timed-logs", Timed::new(&[1, 9, 2, 8]), &MemoryStore::new())
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    assert_eq!(report.stats.slowest_chunk, secs(9));
    assert_eq!(report.stats.mean_chunk, secs(5));
    assert_eq!(report.stats.chunks_over_drain_budget, 2);

    let text = logs.text();
    let warnings: Vec<_> = text
        .lines()
        .filter(|l| l.contains("longer than the drain budget") && l.contains("job=timed-logs"))
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
    assert!(warnings[0].contains("chunk_took=9s"), "{}", warnings[0]);
    assert!(warnings[0].contains("drain_budget=7.5s"), "{}", warnings[0]);
    let ended = text
        .lines()
        .find(|l| l.contains("run ended") && l.contains("job=timed-logs"))
        .expect(&text);
    assert!(ended.contains("slowest_chunk=9s"), "{ended}");
    assert!(ended.contains("chunks_over_drain_budget=2"), "{ended}");

    // Chunks within the budget: no warning, nothing over it.
    let report = named("timed-within", Timed::new(&[1, 7]), &MemoryStore::new())
        .run()
        .await;
    assert_eq!(report.stats.slowest_chunk, secs(7));
    assert_eq!(report.stats.chunks_over_drain_budget, 0);
    let text = logs.text();
    assert!(
        !text
            .lines()
            .any(|l| l.contains("drain budget") && l.contains("job=timed-within")),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_long_chunk_among_thousands_of_short_ones_is_counted() {
    // The runner reads the clock once per batch of short chunks: the long
    // one, in the middle of a batch, still counts, once.
    let mut durations = vec![0; 5000];
    durations.push(9);
    durations.extend([0; 10]);
    let report = runner(Timed::new(&durations), &MemoryStore::new())
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    assert_eq!(report.stats.chunks, 5011);
    assert_eq!(report.stats.chunks_over_drain_budget, 1);
    assert!(
        report.stats.slowest_chunk >= secs(9)
            && report.stats.slowest_chunk < secs(9) + Duration::from_millis(10),
        "{:?}",
        report.stats.slowest_chunk
    );
}

#[tokio::test(start_paused = true)]
async fn the_context_gives_the_drain_deadline_once_a_stop_is_requested() {
    let job = Timed::new(&[2, 2, 2]);
    let seen = job.seen.clone();
    let stopped = Arc::new(Mutex::new(None));
    let at = stopped.clone();
    let report = runner(job, &MemoryStore::new())
        .stop_on("test", async move {
            sleep(secs(3)).await;
            *at.lock().unwrap() = Some(Instant::now());
        })
        .run()
        .await;
    assert!(matches!(report.outcome, Outcome::Interrupted(_)));
    let stop = stopped.lock().unwrap().unwrap();
    // Chunk 0 ran before the stop; chunk 1 was in hand when it came at 3 s.
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(0, None, None), (1, None, Some(stop + DRAIN))]
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_chunks_are_timed_on_their_tasks_and_see_the_deadline() {
    // Four in flight: the runner waits 9 s for the first chunk and hardly at
    // all for the others, which finished meanwhile; their own times count.
    let job = Timed::new(&[9, 8, 1, 1]);
    let report = runner(Concurrent::new(job, 4), &MemoryStore::new())
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    assert_eq!(report.stats.slowest_chunk, secs(9));
    assert_eq!(report.stats.chunks_over_drain_budget, 2);
    assert_eq!(report.stats.mean_chunk, Duration::from_micros(4_750_000));

    let job = Timed::new(&[2, 4, 4, 4]);
    let seen = job.seen.clone();
    let stopped = Arc::new(Mutex::new(None));
    let at = stopped.clone();
    let report = runner(Concurrent::new(job, 2), &MemoryStore::new())
        .stop_on("test", async move {
            sleep(secs(3)).await;
            *at.lock().unwrap() = Some(Instant::now());
        })
        .run()
        .await;
    assert!(matches!(report.outcome, Outcome::Interrupted(_)));
    let stop = stopped.lock().unwrap().unwrap();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_by_key(|s| s.0);
    // Chunks 0 and 1 started at once; chunk 2 when chunk 0 was committed
    // (2 s); chunk 1 and 2 were in flight at the stop and finished in the drain.
    assert_eq!(
        seen,
        vec![
            (0, None, None),
            (1, None, Some(stop + DRAIN)),
            (2, None, Some(stop + DRAIN)),
        ]
    );
}
