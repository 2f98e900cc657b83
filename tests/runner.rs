//! Integration tests of the `Runner`, through the public API only.
//!
//! Every test uses a `MemoryStore` (clones share contents) and paused tokio
//! time, so sleeps are instant and exact. Stops come from `Runner::stop_on`
//! and `Runner::max_runtime`; no signal handlers are installed.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spotbatch::{
    async_trait, BoxError, Cancelled, Checkpoint, CheckpointPolicy, CheckpointStore, Chunk,
    ChunkContext, Codec, Error, Every, FailureKind, InterruptSource, Job, JobKey, MemoryStore,
    Outcome, Report, Runner, Status, StoreError, TypeDescription, Writer,
};
use spotbatch_test_support::logs::LogBuffer;
use tokio::sync::Notify;
use tokio::time::{sleep, Instant};

const SEC: Duration = Duration::from_secs(1);

/// The sum of `0..n`: the state of a `Counter` whose cursor is `n`.
fn sum_below(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------
// Test jobs
// ---------------------------------------------------------------------------

/// What a `Counter` records, shared between job instances and the test.
#[derive(Clone, Default)]
struct Log {
    /// The start of every chunk `process` was called for.
    started: Arc<Mutex<Vec<u64>>>,
    /// The start of every chunk `process` returned `Ok` for.
    finished: Arc<Mutex<Vec<u64>>>,
    /// Every `(cursor, state)` `resume` was called with.
    resumed: Arc<Mutex<Vec<(u64, u64)>>>,
    /// Notified by `Trap::Stop`; see `Log::stop_request`.
    stop: Arc<Notify>,
    /// The checkpoint `Trap::Intrude` wrote.
    intruder: Arc<Mutex<Option<Checkpoint>>>,
}

impl Log {
    fn started(&self) -> Vec<u64> {
        self.started.lock().unwrap().clone()
    }

    fn finished(&self) -> Vec<u64> {
        self.finished.lock().unwrap().clone()
    }

    fn resumed(&self) -> Vec<(u64, u64)> {
        self.resumed.lock().unwrap().clone()
    }

    fn intruder(&self) -> Option<Checkpoint> {
        self.intruder.lock().unwrap().clone()
    }

    /// A future for `Runner::stop_on` that completes when a `Trap::Stop` chunk runs.
    fn stop_request(&self) -> impl Future<Output = ()> + Send + 'static {
        let stop = self.stop.clone();
        async move { stop.notified().await }
    }
}

/// Something a `Counter` chunk does at one cursor, after adding to the sum.
#[derive(Clone)]
enum Trap {
    /// Returns an error.
    Fail,
    /// Waits until cancelled, then returns `Cancelled`.
    Cooperate,
    /// Sleeps for an hour, ignoring cancellation.
    Ignore,
    /// Requests a stop (through `Log::stop_request`), then finishes normally.
    Stop,
    /// Saves a checkpoint of its own under `key`, as a second runner would,
    /// then finishes normally.
    Intrude { store: MemoryStore, key: JobKey },
}

/// Counts `0..end` in chunks of `step`; the state is the running sum.
/// Each chunk takes `chunk_time` (paused time).
struct Counter {
    end: u64,
    step: u64,
    chunk_time: Duration,
    trap: Option<(u64, Trap)>,
    log: Log,
}

impl Counter {
    /// `0..end` in chunks of `step`, one second each.
    fn new(end: u64, step: u64) -> Self {
        Self {
            end,
            step,
            chunk_time: SEC,
            trap: None,
            log: Log::default(),
        }
    }

    /// Ten chunks of ten: `0..100`, final sum 4950.
    fn ten() -> Self {
        Self::new(100, 10)
    }

    fn log(mut self, log: &Log) -> Self {
        self.log = log.clone();
        self
    }

    fn trap(mut self, at: u64, trap: Trap) -> Self {
        self.trap = Some((at, trap));
        self
    }
}

#[async_trait]
impl Job for Counter {
    type Cursor = u64;
    type State = u64;

    async fn resume(&mut self, cursor: &u64, sum: &u64) -> Result<(), BoxError> {
        self.log.resumed.lock().unwrap().push((*cursor, *sum));
        Ok(())
    }

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>, BoxError> {
        Ok((*at < self.end).then(|| Chunk::between(*at, (*at + self.step).min(self.end))))
    }

    async fn process(
        &mut self,
        chunk: &Chunk<u64>,
        sum: &mut u64,
        ctx: &ChunkContext,
    ) -> Result<(), BoxError> {
        let start = *chunk.start();
        self.log.started.lock().unwrap().push(start);
        // Mutate the state first, so that a chunk that then fails or is
        // abandoned shows whether the runner rolls it back.
        *sum += chunk.range().sum::<u64>();
        match self
            .trap
            .as_ref()
            .filter(|(at, _)| *at == start)
            .map(|(_, t)| t)
        {
            None => {}
            Some(Trap::Fail) => return Err(format!("boom at {start}").into()),
            Some(Trap::Cooperate) => {
                ctx.cancelled().await;
                assert!(ctx.stop_requested(), "cancelled without a stop request");
                return Err(Cancelled.into());
            }
            Some(Trap::Ignore) => sleep(Duration::from_secs(3600)).await,
            Some(Trap::Stop) => self.log.stop.notify_one(),
            Some(Trap::Intrude { store, key }) => {
                let current = store.load(key).await?;
                let mut foreign = current
                    .clone()
                    .unwrap_or_else(|| Checkpoint::new(key.clone(), Writer::this_process()));
                foreign.version = current.as_ref().map_or(1, |c| c.version + 1);
                foreign.writer.host = "intruder".into();
                store.save(&foreign, current.map(|c| c.version)).await?;
                *self.log.intruder.lock().unwrap() = Some(foreign);
            }
        }
        sleep(self.chunk_time).await;
        self.log.finished.lock().unwrap().push(start);
        Ok(())
    }
}

/// A `Counter` declaring schema version `SCHEMA` and, if `PINNED`, naming
/// its cursor type `counter/sum` itself (same Rust cursor and state types).
struct Variant<const SCHEMA: u32, const PINNED: bool>(Counter);

impl<const SCHEMA: u32, const PINNED: bool> From<Counter> for Variant<SCHEMA, PINNED> {
    fn from(counter: Counter) -> Self {
        Self(counter)
    }
}

/// Schema version 2.
type CounterV2 = Variant<2, false>;
/// A fixed cursor type name.
type Pinned = Variant<1, true>;

#[async_trait]
impl<const SCHEMA: u32, const PINNED: bool> Job for Variant<SCHEMA, PINNED> {
    type Cursor = u64;
    type State = u64;
    const SCHEMA_VERSION: u32 = SCHEMA;

    fn cursor_type() -> &'static str {
        if PINNED {
            "counter/sum"
        } else {
            Counter::cursor_type()
        }
    }

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>, BoxError> {
        self.0.next_chunk(at).await
    }

    async fn process(
        &mut self,
        chunk: &Chunk<u64>,
        sum: &mut u64,
        ctx: &ChunkContext,
    ) -> Result<(), BoxError> {
        self.0.process(chunk, sum, ctx).await
    }
}

/// A one-chunk job whose cursor is a `String`.
struct Named;

#[async_trait]
impl Job for Named {
    type Cursor = String;
    type State = u64;

    async fn next_chunk(&mut self, at: &String) -> Result<Option<Chunk<String>>, BoxError> {
        Ok(at
            .is_empty()
            .then(|| Chunk::new(String::new(), "done".to_owned())))
    }

    async fn process(
        &mut self,
        _: &Chunk<String>,
        n: &mut u64,
        _: &ChunkContext,
    ) -> Result<(), BoxError> {
        *n += 1;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A runner on `store` with no signal handlers, checkpoints at exit only and
/// no lease (so versions count checkpoints exactly; tests/lease.rs covers leases).
fn runner<J: Job>(key: &str, job: J, store: &MemoryStore) -> Runner<J> {
    Runner::new(key, job)
        .store(store.clone())
        .signals(&[])
        .checkpoint(CheckpointPolicy::at_exit_only())
        .no_lease()
}

fn key(name: &str) -> JobKey {
    JobKey::new(name).unwrap()
}

async fn stored(store: &MemoryStore, name: &str) -> Checkpoint {
    store
        .load(&key(name))
        .await
        .expect("the checkpoint loads")
        .expect("a checkpoint is stored")
}

/// The `Counter` cursor and state of a checkpoint.
fn cursor_and_sum(ckpt: &Checkpoint) -> (u64, u64) {
    (
        ckpt.codec
            .decode::<u64>(&ckpt.cursor)
            .expect("cursor decodes"),
        ckpt.codec
            .decode::<u64>(&ckpt.state)
            .expect("state decodes"),
    )
}

fn error(report: &Report) -> &Error {
    report
        .error()
        .unwrap_or_else(|| panic!("expected a failure, got {:?}", report.outcome))
}

fn interrupted_by(report: &Report) -> InterruptSource {
    match &report.outcome {
        Outcome::Interrupted(source) => source.clone(),
        other => panic!("expected an interruption, got {other:?}"),
    }
}

/// Completes after `delay`, recording when into `at`.
fn stop_after(
    delay: Duration,
    at: &Arc<Mutex<Option<Instant>>>,
) -> impl Future<Output = ()> + Send + 'static {
    let at = at.clone();
    async move {
        sleep(delay).await;
        *at.lock().unwrap() = Some(Instant::now());
    }
}

fn since(at: &Arc<Mutex<Option<Instant>>>) -> Duration {
    at.lock()
        .unwrap()
        .expect("the stop request fired")
        .elapsed()
}

// ---------------------------------------------------------------------------
// 1. A fresh run to completion
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn fresh_run_completes_and_says_so_in_the_checkpoint() {
    let store = MemoryStore::new();
    let log = Log::default();
    let report = runner("count", Counter::ten().log(&log), &store)
        .checkpoint(Every::chunks(4))
        .run()
        .await;

    assert!(
        matches!(report.outcome, Outcome::Completed),
        "{:?}",
        report.outcome
    );
    assert!(report.is_complete());
    assert_eq!(report.code(), 0);
    assert_eq!(report.stats.resumed_from, None);
    assert_eq!(report.stats.chunks, 10);
    assert_eq!(report.stats.items, 100);
    assert_eq!(
        report.stats.checkpoints, 3,
        "after chunks 4 and 8, and the final one"
    );
    assert!(!report.stats.abandoned_chunk);
    assert_eq!(report.stats.elapsed, 10 * SEC);
    assert_eq!(log.resumed(), vec![(0, 0)]);
    assert_eq!(log.finished(), (0..100).step_by(10).collect::<Vec<_>>());

    let ckpt = stored(&store, "count").await;
    assert_eq!(ckpt.job, key("count"));
    assert_eq!(ckpt.status, Status::Completed);
    assert_eq!(ckpt.codec, Codec::Bincode);
    assert_eq!(Codec::Bincode.decode::<u64>(&ckpt.cursor).unwrap(), 100);
    assert_eq!(
        Codec::Bincode.decode::<u64>(&ckpt.state).unwrap(),
        sum_below(100)
    );
    assert_eq!(ckpt.version, 3, "one version per checkpoint written");
    assert_eq!(ckpt.schema, 1);
    assert_eq!(ckpt.counters.chunks, 10);
    assert_eq!(ckpt.counters.items, 100);
    assert_eq!(ckpt.counters.checkpoints, 3);
    assert_eq!(ckpt.counters.runs, 1);
    assert_eq!(ckpt.counters.interruptions, 0);
    assert_eq!(ckpt.writer.pid, std::process::id());
}

#[tokio::test(start_paused = true)]
async fn the_json_codec_is_recorded_and_readable() {
    let store = MemoryStore::new();
    let report = runner("json", Counter::ten(), &store)
        .codec(Codec::Json)
        .run()
        .await;
    assert!(
        matches!(report.outcome, Outcome::Completed),
        "{:?}",
        report.outcome
    );
    let ckpt = stored(&store, "json").await;
    assert_eq!(ckpt.codec, Codec::Json);
    assert_eq!(ckpt.cursor, b"100");
    assert_eq!(ckpt.state, b"4950");
}

// ---------------------------------------------------------------------------
// 2. Checkpoint policy
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn checkpoints_every_n_chunks_plus_the_final_one() {
    for (n, periodic) in [(3, 3), (5, 2), (10, 1), (11, 0), (1, 10)] {
        let store = MemoryStore::new();
        let report = runner("count", Counter::ten(), &store)
            .checkpoint(Every::chunks(n))
            .run()
            .await;
        assert!(report.is_complete(), "{:?}", report.outcome);
        assert_eq!(report.stats.checkpoints, periodic + 1, "Every::chunks({n})");
        assert_eq!(
            stored(&store, "count").await.version,
            periodic + 1,
            "Every::chunks({n})"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn checkpoints_by_interval_follow_the_clock() {
    // Ten chunks of one second each: a checkpoint after the first chunk that
    // ends at least `interval` after the previous checkpoint.
    for (interval, periodic) in [
        (ms(500), 10),
        (ms(2_500), 3),
        (ms(4_500), 2),
        (ms(10_000), 1),
        (ms(10_001), 0),
    ] {
        let store = MemoryStore::new();
        let report = runner("count", Counter::ten(), &store)
            .checkpoint(Every::interval(interval))
            .run()
            .await;
        assert!(report.is_complete(), "{:?}", report.outcome);
        assert_eq!(
            report.stats.checkpoints,
            periodic + 1,
            "Every::interval({interval:?})"
        );
    }
    // Whichever comes first.
    let store = MemoryStore::new();
    let report = runner("count", Counter::ten(), &store)
        .checkpoint(Every::chunks(4).or_interval(ms(2_500)))
        .run()
        .await;
    assert_eq!(report.stats.checkpoints, 3 + 1, "after chunks 3, 6 and 9");
}

// ---------------------------------------------------------------------------
// 3. Resume
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_interrupted_run_resumes_where_it_stopped() {
    // The uninterrupted reference.
    let reference = MemoryStore::new();
    let report = runner("count", Counter::ten(), &reference).run().await;
    assert!(report.is_complete());
    let (_, reference_sum) = cursor_and_sum(&stored(&reference, "count").await);
    assert_eq!(reference_sum, sum_below(100));

    let store = MemoryStore::new();
    let log = Log::default();
    // The chunk at 30 requests the stop while it runs, and still finishes.
    let first = runner(
        "count",
        Counter::ten().trap(30, Trap::Stop).log(&log),
        &store,
    )
    .checkpoint(Every::chunks(3))
    .stop_on("test", log.stop_request())
    .run()
    .await;
    assert_eq!(
        interrupted_by(&first),
        InterruptSource::Requested("test".into())
    );
    assert_eq!(first.code(), 0);
    assert_eq!(first.stats.chunks, 4);
    assert_eq!(
        first.stats.checkpoints, 2,
        "after chunk 3, and the final one"
    );
    assert!(!first.stats.abandoned_chunk);
    let ckpt = stored(&store, "count").await;
    assert_eq!(
        ckpt.status,
        Status::Interrupted {
            source: "stop request: test".into()
        }
    );
    assert_eq!(cursor_and_sum(&ckpt), (40, sum_below(40)));
    assert_eq!(ckpt.version, 2);
    assert_eq!(ckpt.counters.interruptions, 1);

    let second = runner("count", Counter::ten().log(&log), &store)
        .checkpoint(Every::chunks(3))
        .run()
        .await;
    assert!(
        matches!(second.outcome, Outcome::Completed),
        "{:?}",
        second.outcome
    );
    assert_eq!(second.stats.resumed_from, Some(2));
    assert_eq!(second.stats.chunks, 6);
    assert_eq!(log.resumed(), vec![(0, 0), (40, sum_below(40))]);

    let ckpt = stored(&store, "count").await;
    assert_eq!(ckpt.status, Status::Completed);
    assert_eq!(cursor_and_sum(&ckpt), (100, reference_sum));
    assert_eq!(ckpt.version, 2 + second.stats.checkpoints);
    assert_eq!(ckpt.counters.chunks, 10, "totals carry over between runs");
    assert_eq!(ckpt.counters.items, 100);
    assert_eq!(ckpt.counters.runs, 2);
    assert_eq!(ckpt.counters.interruptions, 1);
    assert_eq!(ckpt.counters.checkpoints, ckpt.version);

    // Every chunk was processed exactly once across the two runs.
    let all: Vec<u64> = (0..100).step_by(10).collect();
    assert_eq!(log.started(), all);
    assert_eq!(log.finished(), all);
}

// ---------------------------------------------------------------------------
// 4. Already completed, and restart
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_completed_job_does_nothing_until_restarted() {
    let store = MemoryStore::new();
    let log = Log::default();
    let first = runner("count", Counter::ten().log(&log), &store)
        .checkpoint(Every::chunks(5))
        .run()
        .await;
    assert!(matches!(first.outcome, Outcome::Completed));
    let version = stored(&store, "count").await.version;
    assert_eq!(version, 3);
    let raw = store.raw(&key("count")).unwrap();

    let again = runner("count", Counter::ten().log(&log), &store)
        .run()
        .await;
    assert!(
        matches!(again.outcome, Outcome::AlreadyCompleted),
        "{:?}",
        again.outcome
    );
    assert!(again.is_complete());
    assert_eq!(again.code(), 0);
    assert_eq!(again.stats.resumed_from, Some(version));
    assert_eq!((again.stats.chunks, again.stats.checkpoints), (0, 0));
    assert_eq!(log.started().len(), 10, "nothing processed");
    assert_eq!(log.resumed(), vec![(0, 0)], "resume not called");
    assert_eq!(
        store.raw(&key("count")).unwrap(),
        raw,
        "the checkpoint is untouched"
    );

    let restarted = runner("count", Counter::ten().log(&log), &store)
        .restart()
        .run()
        .await;
    assert!(
        matches!(restarted.outcome, Outcome::Completed),
        "{:?}",
        restarted.outcome
    );
    assert_eq!(restarted.stats.resumed_from, Some(version));
    assert_eq!(restarted.stats.chunks, 10);
    assert_eq!(log.started().len(), 20);
    assert_eq!(
        log.resumed(),
        vec![(0, 0), (0, 0)],
        "restarted from the defaults"
    );
    let ckpt = stored(&store, "count").await;
    assert_eq!(ckpt.status, Status::Completed);
    assert_eq!(
        cursor_and_sum(&ckpt),
        (100, sum_below(100)),
        "the sum was not carried over"
    );
    assert_eq!(ckpt.version, version + restarted.stats.checkpoints);
    assert_eq!(ckpt.counters.chunks, 10, "restart resets the totals");
}

// ---------------------------------------------------------------------------
// 5. The drain deadline
// ---------------------------------------------------------------------------

/// grace 10 s → reserve 2.5 s, drain deadline 7.5 s after the stop, and a
/// cancelled chunk has 625 ms to return before it is dropped.
const GRACE: Duration = Duration::from_secs(10);
const DRAIN: Duration = Duration::from_millis(7_500);
const COOPERATE: Duration = Duration::from_millis(625);

#[tokio::test(start_paused = true)]
async fn a_chunk_past_the_drain_deadline_is_cancelled_and_rolled_back() {
    for trap in [Trap::Cooperate, Trap::Ignore] {
        let name = match trap {
            Trap::Cooperate => "cooperating chunk",
            _ => "chunk ignoring cancellation",
        };
        let store = MemoryStore::new();
        let log = Log::default();
        let stopped = Arc::new(Mutex::new(None));
        // Chunks 0 and 10 take a second each; chunk 20 starts at 2 s and hangs;
        // the stop comes at 2.5 s.
        let report = runner(
            "count",
            Counter::ten().trap(20, trap.clone()).log(&log),
            &store,
        )
        .grace(GRACE)
        .stop_on("test", stop_after(ms(2_500), &stopped))
        .run()
        .await;
        let took = since(&stopped);

        assert_eq!(
            interrupted_by(&report),
            InterruptSource::Requested("test".into()),
            "{name}"
        );
        assert_eq!(report.code(), 0, "{name}");
        assert!(report.stats.abandoned_chunk, "{name}");
        assert_eq!(report.stats.chunks, 2, "{name}");
        assert_eq!(log.started(), vec![0, 10, 20], "{name}");
        assert_eq!(log.finished(), vec![0, 10], "{name}");
        let ckpt = stored(&store, "count").await;
        assert_eq!(ckpt.status.name(), "interrupted", "{name}");
        assert_eq!(
            cursor_and_sum(&ckpt),
            (20, sum_below(20)),
            "{name}: state rolled back"
        );
        assert!(took < GRACE, "{name}: returned {took:?} after the stop");
        match trap {
            Trap::Cooperate => assert!(
                took >= DRAIN && took < DRAIN + COOPERATE,
                "{name}: {took:?}"
            ),
            _ => assert!(took >= DRAIN + COOPERATE, "{name}: {took:?}"),
        }

        // The next run redoes the abandoned chunk and reaches the same end.
        let next = runner("count", Counter::ten().log(&log), &store)
            .run()
            .await;
        assert!(
            matches!(next.outcome, Outcome::Completed),
            "{name}: {:?}",
            next.outcome
        );
        assert_eq!(
            cursor_and_sum(&stored(&store, "count").await),
            (100, sum_below(100))
        );
        assert_eq!(
            log.finished(),
            (0..100).step_by(10).collect::<Vec<_>>(),
            "{name}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_chunk_that_ends_before_the_drain_deadline_is_kept() {
    let store = MemoryStore::new();
    let stopped = Arc::new(Mutex::new(None));
    let mut job = Counter::ten();
    job.chunk_time = 5 * SEC; // shorter than the 7.5 s drain
    let report = runner("count", job, &store)
        .grace(GRACE)
        .stop_on("test", stop_after(ms(5_500), &stopped))
        .run()
        .await;
    assert_eq!(
        since(&stopped),
        ms(4_500),
        "the chunk in hand was let finish"
    );
    assert!(!report.stats.abandoned_chunk);
    assert_eq!(report.stats.chunks, 2);
    assert_eq!(
        cursor_and_sum(&stored(&store, "count").await),
        (20, sum_below(20))
    );
}

// ---------------------------------------------------------------------------
// 6. A request from another source is the same stop: the drain goes on
//    (a repeated signal skipping it is tested with real signals in signals.rs)
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_request_from_another_source_does_not_cut_the_drain_short() {
    // Second request from another stop_on future, or from max_runtime; the
    // chunk in hand cooperates or ignores cancellation.
    for (trap, by_max_runtime) in [
        (Trap::Cooperate, false),
        (Trap::Ignore, false),
        (Trap::Cooperate, true),
        (Trap::Ignore, true),
    ] {
        let name = format!(
            "cooperates: {}, max_runtime: {by_max_runtime}",
            matches!(trap, Trap::Cooperate)
        );
        let store = MemoryStore::new();
        let first = Arc::new(Mutex::new(None));
        let second = Arc::new(Mutex::new(None));
        let mut runner = runner("count", Counter::ten().trap(20, trap), &store)
            .grace(GRACE)
            .stop_on("first", stop_after(ms(2_500), &first));
        runner = if by_max_runtime {
            runner.max_runtime(3 * SEC)
        } else {
            runner.stop_on("second", stop_after(3 * SEC, &second))
        };
        let report = runner.run().await;
        let took = since(&first);

        assert_eq!(
            interrupted_by(&report),
            InterruptSource::Requested("first".into()),
            "{name}"
        );
        // The chunk that never finishes is abandoned at the drain deadline
        // of the first request, not at the second.
        assert!(report.stats.abandoned_chunk, "{name}");
        assert!(
            took >= DRAIN && took <= DRAIN + COOPERATE + ms(100),
            "{name}: returned {took:?} after the first request"
        );
        let ckpt = stored(&store, "count").await;
        assert_eq!(cursor_and_sum(&ckpt), (20, sum_below(20)), "{name}");
    }
}

// ---------------------------------------------------------------------------
// 7. max_runtime
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn max_runtime_interrupts_and_the_next_run_resumes() {
    let store = MemoryStore::new();
    let log = Log::default();
    let report = runner("count", Counter::ten().log(&log), &store)
        .max_runtime(ms(3_500))
        .run()
        .await;
    assert_eq!(
        interrupted_by(&report),
        InterruptSource::MaxRuntime(ms(3_500))
    );
    assert_eq!(report.code(), 0);
    assert_eq!(
        report.stats.chunks, 4,
        "the chunk in hand at 3.5 s finishes"
    );
    assert_eq!(report.stats.elapsed, 4 * SEC);
    assert_eq!(report.stats.checkpoints, 1);
    let ckpt = stored(&store, "count").await;
    assert_eq!(
        ckpt.status,
        Status::Interrupted {
            source: "max runtime 3.5s".into()
        }
    );
    assert_eq!(cursor_and_sum(&ckpt), (40, sum_below(40)));

    let next = runner("count", Counter::ten().log(&log), &store)
        .run()
        .await;
    assert!(
        matches!(next.outcome, Outcome::Completed),
        "{:?}",
        next.outcome
    );
    assert_eq!(next.stats.resumed_from, Some(1));
    assert_eq!(next.stats.chunks, 6);
    assert_eq!(
        cursor_and_sum(&stored(&store, "count").await),
        (100, sum_below(100))
    );
    assert_eq!(log.started(), (0..100).step_by(10).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------
// 8. A job error
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_job_error_fails_the_run_with_a_rolled_back_checkpoint() {
    let store = MemoryStore::new();
    let log = Log::default();
    let report = runner(
        "count",
        Counter::ten().trap(30, Trap::Fail).log(&log),
        &store,
    )
    .checkpoint(Every::chunks(2))
    .run()
    .await;
    assert_eq!(report.code(), 1);
    assert!(!report.is_complete());
    let err = error(&report);
    assert!(matches!(err, Error::Job { .. }), "{err:?}");
    assert_eq!(err.kind(), FailureKind::Failed);
    let message = err.to_string();
    assert!(
        message.contains("boom at 30") && message.contains("process"),
        "{message}"
    );
    assert_eq!(report.stats.chunks, 3);
    assert_eq!(
        report.stats.checkpoints, 2,
        "after chunk 2, and the final one"
    );

    let ckpt = stored(&store, "count").await;
    assert_eq!(ckpt.status, Status::Failed { message });
    assert_eq!(
        cursor_and_sum(&ckpt),
        (30, sum_below(30)),
        "state rolled back"
    );
    assert_eq!(ckpt.version, 2);

    // A failed checkpoint is resumable.
    let next = runner("count", Counter::ten().log(&log), &store)
        .run()
        .await;
    assert!(
        matches!(next.outcome, Outcome::Completed),
        "{:?}",
        next.outcome
    );
    assert_eq!(log.resumed().last(), Some(&(30, sum_below(30))));
    assert_eq!(
        cursor_and_sum(&stored(&store, "count").await),
        (100, sum_below(100))
    );
}

// ---------------------------------------------------------------------------
// 9. Bad checkpoints
// ---------------------------------------------------------------------------

/// Runs a `Counter` under "mine" on `store`; checks that the checkpoint
/// stored there is refused with exit code 65, without touching it or running
/// the job (and, when `even_restart`, also with `.restart()`). Returns the message.
async fn refused(store: &MemoryStore, even_restart: bool) -> String {
    let before = store.raw(&key("mine")).expect("something is stored");
    let log = Log::default();
    let report = runner("mine", Counter::ten().log(&log), store).run().await;
    assert_eq!(report.code(), 65, "{:?}", report.outcome);
    let err = error(&report);
    assert_eq!(err.kind(), FailureKind::BadCheckpoint);
    assert!(
        log.resumed().is_empty() && log.started().is_empty(),
        "the job did not run"
    );
    assert_eq!(
        store.raw(&key("mine")).unwrap(),
        before,
        "the stored bytes are untouched"
    );
    if even_restart {
        let report = runner("mine", Counter::ten(), store).restart().run().await;
        assert_eq!(report.code(), 65, "restart: {:?}", report.outcome);
        assert_eq!(store.raw(&key("mine")).unwrap(), before);
    }
    err.to_string()
}

#[tokio::test(start_paused = true)]
async fn a_corrupt_checkpoint_is_refused_and_left_alone() {
    let store = MemoryStore::new();
    let report = runner("mine", Counter::ten(), &store)
        .max_runtime(ms(2_500))
        .run()
        .await;
    assert_eq!(report.code(), 0);
    let mut bytes = store.raw(&key("mine")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    store.put_raw(&key("mine"), bytes);

    let message = refused(&store, true).await;
    assert!(message.contains("checksum"), "{message}");
    assert!(message.contains("mine"), "{message}");
}

/// An emptied checkpoint (a `touch`, a copy cut short by a full disk) is
/// named for what it is, with what to do; so is one cut short.
#[tokio::test(start_paused = true)]
async fn an_empty_or_truncated_checkpoint_is_refused_saying_which_and_what_to_do() {
    let store = MemoryStore::new();
    let report = runner("mine", Counter::ten(), &store)
        .max_runtime(ms(2_500))
        .run()
        .await;
    assert_eq!(report.code(), 0);
    let whole = store.raw(&key("mine")).unwrap();
    for (bytes, says) in [
        (vec![], "checkpoint is empty (0 bytes)".to_owned()),
        (
            whole[..6].to_vec(),
            "6 bytes, shorter than its 14-byte header".to_owned(),
        ),
        (
            whole[..40].to_vec(),
            format!("40 bytes of the {} its header declares", whole.len()),
        ),
    ] {
        store.put_raw(&key("mine"), bytes);
        let message = refused(&store, true).await;
        assert!(
            message.contains(&says)
                && message.contains("\"mine\"")
                && message.contains("remove it by hand"),
            "{message}"
        );
        assert!(!message.contains("magic"), "{message}");
    }
}

#[tokio::test(start_paused = true)]
async fn another_jobs_checkpoint_is_refused() {
    let store = MemoryStore::new();
    let report = runner("other", Counter::ten(), &store).run().await;
    assert!(report.is_complete());
    store.put_raw(&key("mine"), store.raw(&key("other")).unwrap());

    let message = refused(&store, true).await;
    assert!(
        message.contains("\"other\"") && message.contains("\"mine\""),
        "{message}"
    );
    assert!(message.contains("belongs to job"), "{message}");
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_of_another_cursor_type_is_refused() {
    let store = MemoryStore::new();
    let report = runner("mine", Named, &store).run().await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    assert!(stored(&store, "mine").await.cursor_type.contains("String"));

    let message = refused(&store, false).await;
    assert!(message.contains("cursor: was string, now u64"), "{message}");
    assert!(
        message.contains("String") && message.contains("(u64, u64)"),
        "{message}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_renamed_type_of_the_same_shape_is_accepted() {
    let store = MemoryStore::new();
    let report = runner("mine", Pinned::from(Counter::ten()), &store)
        .max_runtime(ms(2_500))
        .run()
        .await;
    assert_eq!(report.code(), 0, "{:?}", report.outcome);
    assert_eq!(stored(&store, "mine").await.cursor_type, "counter/sum");

    // The same shape under the default name: it resumes, and the new name is recorded.
    let log = Log::default();
    let report = runner("mine", Counter::ten().log(&log), &store).run().await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    assert_eq!(log.resumed(), vec![(30, sum_below(30))]);
    let done = stored(&store, "mine").await;
    assert_eq!(cursor_and_sum(&done), (100, sum_below(100)));
    assert_eq!(done.cursor_type, Counter::cursor_type());
}

#[tokio::test(start_paused = true)]
async fn without_a_recorded_shape_the_type_name_is_compared() {
    let store = MemoryStore::new();
    let report = runner("mine", Pinned::from(Counter::ten()), &store)
        .max_runtime(ms(2_500))
        .run()
        .await;
    assert_eq!(report.code(), 0, "{:?}", report.outcome);
    // As a checkpoint written before shapes were recorded.
    let mut old = stored(&store, "mine").await;
    assert!(old.types.is_some());
    old.types = None;
    store.put_raw(&key("mine"), old.encode());

    // The same Rust types under the default name are another type.
    let message = refused(&store, false).await;
    assert!(
        message.contains("counter/sum") && message.contains("Job::cursor_type"),
        "{message}"
    );
    // Under the stored name it resumes, and its saves record the shape.
    let report = runner("mine", Pinned::from(Counter::ten()), &store)
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    let done = stored(&store, "mine").await;
    assert_eq!(cursor_and_sum(&done), (100, sum_below(100)));
    assert_eq!(
        done.types,
        Some(TypeDescription::trace::<u64, u64>().unwrap())
    );
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_of_another_schema_version_is_refused() {
    let store = MemoryStore::new();
    let report = runner("mine", CounterV2::from(Counter::ten()), &store)
        .max_runtime(ms(2_500))
        .run()
        .await;
    assert_eq!(
        interrupted_by(&report),
        InterruptSource::MaxRuntime(ms(2_500))
    );
    assert_eq!(stored(&store, "mine").await.schema, 2);

    let message = refused(&store, false).await;
    assert!(
        message.contains("schema 2") && message.contains("schema 1"),
        "{message}"
    );
}

/// `0..10`, one chunk of one second each, keeping a running mean (the
/// state's second field) that turns NaN at chunk `nan_at`.
struct Mean {
    nan_at: Option<u64>,
}

#[async_trait]
impl Job for Mean {
    type Cursor = u64;
    type State = (u64, f64);

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>, BoxError> {
        Ok((*at < 10).then(|| Chunk::between(*at, *at + 1)))
    }

    async fn process(
        &mut self,
        chunk: &Chunk<u64>,
        (count, mean): &mut (u64, f64),
        _: &ChunkContext,
    ) -> Result<(), BoxError> {
        let i = *chunk.start();
        *count += 1;
        *mean = if self.nan_at == Some(i) {
            f64::NAN
        } else {
            *mean + (i as f64 - *mean) / *count as f64
        };
        sleep(SEC).await;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_state_that_would_not_read_back_is_never_saved() {
    let store = MemoryStore::new();
    let report = runner("mean", Mean { nan_at: None }, &store)
        .codec(Codec::Json)
        .max_runtime(ms(3_500))
        .run()
        .await;
    assert_eq!(report.code(), 0, "{:?}", report.outcome);
    let before = stored(&store, "mean").await;

    // Without a lease and checkpointing at exit only, this run's one save
    // is its last: it fails, and the failure is recorded on the checkpoint
    // the run resumed from.
    let report = runner("mean", Mean { nan_at: Some(5) }, &store)
        .codec(Codec::Json)
        .run()
        .await;
    assert_eq!(report.code(), 1, "{:?}", report.outcome);
    let message = error(&report).to_string();
    assert!(
        message.contains("json could not read back the state at `[1]`"),
        "{message}"
    );
    let kept = stored(&store, "mean").await;
    assert_eq!(kept.version, before.version + 1);
    assert_eq!((&kept.cursor, &kept.state), (&before.cursor, &before.state));
    match &kept.status {
        Status::Failed { message } => assert!(message.contains("NaN"), "{message}"),
        other => panic!("expected the failure recorded, got {other:?}"),
    }

    // Fixed, the job resumes from the last readable checkpoint.
    let report = runner("mean", Mean { nan_at: None }, &store)
        .codec(Codec::Json)
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    let done = stored(&store, "mean").await;
    let (count, mean): (u64, f64) = done.codec.decode(&done.state).unwrap();
    assert_eq!((count, mean), (10, 4.5));
}

// ---------------------------------------------------------------------------
// 10. A conflicting writer
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_foreign_save_fences_the_runner_off() {
    // The conflict shows at a periodic checkpoint, or at the final one.
    for (policy, chunks, checkpoints, expected, found) in [
        (Every::chunk(), 4, 3, Some(3), Some(4)),
        (CheckpointPolicy::at_exit_only(), 10, 0, None, Some(1)),
    ] {
        let store = MemoryStore::new();
        let log = Log::default();
        let intrude = Trap::Intrude {
            store: store.clone(),
            key: key("count"),
        };
        let report = runner("count", Counter::ten().trap(30, intrude).log(&log), &store)
            .checkpoint(policy)
            .run()
            .await;
        assert_eq!(report.code(), 73, "{policy:?}: {:?}", report.outcome);
        let err = error(&report);
        assert_eq!(err.kind(), FailureKind::Conflict);
        match err {
            Error::Store(StoreError::Conflict {
                expected: e,
                found: f,
                ..
            }) => assert_eq!((*e, *f), (expected, found), "{policy:?}"),
            other => panic!("{policy:?}: expected a conflict, got {other:?}"),
        }
        assert_eq!(report.stats.chunks, chunks, "{policy:?}");
        assert_eq!(report.stats.checkpoints, checkpoints, "{policy:?}");

        let foreign = log.intruder().expect("the intruder saved");
        assert_eq!(
            stored(&store, "count").await,
            foreign,
            "{policy:?}: the foreign checkpoint stays"
        );
        assert_eq!(foreign.writer.host, "intruder");
    }
}

// ---------------------------------------------------------------------------
// 11. Configuration errors
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn bad_configuration_exits_78_and_writes_nothing() {
    let store = MemoryStore::new();
    let log = Log::default();

    let report = runner("", Counter::ten().log(&log), &store).run().await;
    assert_eq!(report.code(), 78, "{:?}", report.outcome);
    assert!(
        matches!(error(&report), Error::Config(m) if m.contains("empty")),
        "{:?}",
        report.outcome
    );

    let report = runner("count", Counter::ten().log(&log), &store)
        .grace(Duration::ZERO)
        .run()
        .await;
    assert_eq!(report.code(), 78, "{:?}", report.outcome);
    assert_eq!(error(&report).kind(), FailureKind::BadConfig);

    let report = runner("count", Counter::ten().log(&log), &store)
        .grace(GRACE)
        .checkpoint_reserve(GRACE)
        .run()
        .await;
    assert_eq!(report.code(), 78, "{:?}", report.outcome);

    assert!(log.resumed().is_empty() && log.started().is_empty());
    assert!(store.list().await.unwrap().is_empty());

    // A bad store URL is a configuration error of the run, found before anything is opened.
    for url in ["ftp://x", "file://otherhost/ckpt", "file://"] {
        let report = Runner::new("count", Counter::ten())
            .store_url(url)
            .run()
            .await;
        assert_eq!(report.code(), 78, "{url}: {:?}", report.outcome);
        match &report.outcome {
            Outcome::Failed(err) => {
                assert_eq!(err.kind(), FailureKind::BadConfig);
                assert!(err.to_string().contains(url), "{err}");
            }
            other => panic!("{url}: {other:?}"),
        }
    }
    let report = Runner::new("count", Counter::ten())
        .store_url("memory://")
        .run()
        .await;
    assert_eq!(report.code(), 0, "{:?}", report.outcome);
}

// ---------------------------------------------------------------------------
// 12. Exit codes
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_interrupted_exit_code_is_configurable() {
    let store = MemoryStore::new();
    let report = runner("count", Counter::ten(), &store)
        .interrupted_exit_code(75)
        .max_runtime(ms(2_500))
        .run()
        .await;
    assert!(
        matches!(report.outcome, Outcome::Interrupted(_)),
        "{:?}",
        report.outcome
    );
    assert_eq!(report.code(), 75);

    // It changes nothing else: the completed run exits 0.
    let report = runner("count", Counter::ten(), &store)
        .interrupted_exit_code(75)
        .run()
        .await;
    assert!(
        matches!(report.outcome, Outcome::Completed),
        "{:?}",
        report.outcome
    );
    assert_eq!(report.code(), 0);
}

// ---------------------------------------------------------------------------
// A save that lands although the store reports an error
// ---------------------------------------------------------------------------

/// A MemoryStore whose `fail_after`-th save lands but reports an I/O error,
/// as when the answer of a write that reached S3 or Postgres is lost.
#[derive(Debug, Clone)]
struct LostAnswer {
    inner: MemoryStore,
    saves: Arc<Mutex<u64>>,
    fail_at: u64,
}

#[async_trait]
impl CheckpointStore for LostAnswer {
    fn location(&self) -> String {
        "lost-answer://".into()
    }

    async fn load(&self, key: &JobKey) -> Result<Option<Checkpoint>, StoreError> {
        self.inner.load(key).await
    }

    async fn save(&self, c: &Checkpoint, expected: Option<u64>) -> Result<(), StoreError> {
        self.inner.save(c, expected).await?;
        let mut saves = self.saves.lock().unwrap();
        *saves += 1;
        if *saves == self.fail_at {
            return Err(StoreError::Io {
                store: self.location(),
                key: c.job.to_string(),
                operation: "save",
                source: "connection reset after the write".into(),
            });
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<spotbatch::Listing>, StoreError> {
        self.inner.list().await
    }

    async fn delete(&self, key: &JobKey, expected: u64) -> Result<(), StoreError> {
        self.inner.delete(key, expected).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_save_whose_answer_was_lost_is_not_mistaken_for_another_runner() {
    for fail_at in [1, 2, 5] {
        let inner = MemoryStore::new();
        let store = LostAnswer {
            inner: inner.clone(),
            saves: Arc::default(),
            fail_at,
        };
        let report = Runner::new("count", Counter::ten())
            .store(store)
            .signals(&[])
            .checkpoint(Every::chunk())
            .run()
            .await;
        assert!(
            report.is_complete(),
            "fail at save {fail_at}: {:?}",
            report.outcome
        );
        let (cursor, sum) = cursor_and_sum(&stored(&inner, "count").await);
        assert_eq!(
            (cursor, sum),
            (100, sum_below(100)),
            "fail at save {fail_at}"
        );
    }
}

// ---------------------------------------------------------------------------
// A stop before the first chunk
// ---------------------------------------------------------------------------

/// A store that cannot be reached: every operation fails with an I/O error.
#[derive(Debug)]
struct Unreachable;

impl Unreachable {
    fn error(&self, key: &str, operation: &'static str) -> StoreError {
        StoreError::Io {
            store: self.location(),
            key: key.into(),
            operation,
            source: "connection refused".into(),
        }
    }
}

#[async_trait]
impl CheckpointStore for Unreachable {
    fn location(&self) -> String {
        "unreachable://".into()
    }

    async fn load(&self, key: &JobKey) -> Result<Option<Checkpoint>, StoreError> {
        Err(self.error(key.as_str(), "load"))
    }

    async fn save(&self, c: &Checkpoint, _: Option<u64>) -> Result<(), StoreError> {
        Err(self.error(c.job.as_str(), "save"))
    }

    async fn list(&self) -> Result<Vec<spotbatch::Listing>, StoreError> {
        Err(self.error("", "list"))
    }

    async fn delete(&self, key: &JobKey, _: u64) -> Result<(), StoreError> {
        Err(self.error(key.as_str(), "delete"))
    }
}

#[tokio::test(start_paused = true)]
async fn a_stop_while_the_store_is_unreachable_is_an_interruption() {
    let started = Instant::now();
    let report = Runner::new("count", Counter::ten())
        .store(Unreachable)
        .signals(&[])
        .stop_on("test", sleep(SEC))
        .run()
        .await;
    assert_eq!(interrupted_by(&report).to_string(), "stop request: test");
    assert_eq!(report.code(), 0);
    let took = started.elapsed();
    assert!(
        took < SEC + ms(10),
        "took {took:?}: kept retrying after the stop"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_store_fails_the_run_after_30_seconds_of_retries() {
    let started = Instant::now();
    let report = Runner::new("count", Counter::ten())
        .store(Unreachable)
        .signals(&[])
        .run()
        .await;
    let err = error(&report).to_string();
    assert!(
        err.contains("unreachable://") && err.contains("connection refused"),
        "{err}"
    );
    assert_eq!(report.code(), 1);
    let took = started.elapsed();
    assert!(
        (SEC * 25..=SEC * 31).contains(&took),
        "gave up after {took:?}"
    );
}

// ---------------------------------------------------------------------------
// Progress lines
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn progress_is_logged_between_checkpoints() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let store = MemoryStore::new();
    // Ten chunks of one second, a progress line every 2 s, no periodic checkpoint.
    let report = runner("count", Counter::ten(), &store)
        .progress_every(Some(Duration::from_secs(2)))
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    let text = logs.text();
    let lines: Vec<_> = text.lines().filter(|l| l.contains(" progress ")).collect();
    assert!((4..=5).contains(&lines.len()), "{text}");
    assert!(lines[0].contains("rate=\"10/s\""), "{}", lines[0]);
    assert!(
        lines[0].contains("progress=\"unknown size\""),
        "{}",
        lines[0]
    );
}
