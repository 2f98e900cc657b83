//! Jobs of steps (`spotbatch::steps::Steps`) through the public API: resume
//! from every checkpoint, across the moves from one step to the next; a
//! graceful stop in a step, at its last chunk, and while moving on; steps
//! and types changed between runs; the move never skipped.
//!
//! A `MemoryStore` (clones share contents) and paused tokio time; outputs
//! are lines in memory that behave like a `FileSink`: their length rides in
//! the state, and `resume` cuts what a killed run wrote past it.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spotbatch::concurrent::{Concurrent, ConcurrentJob};
use spotbatch::steps::{First, Steps, Then};
use spotbatch::{
    async_trait, BoxError, Checkpoint, CheckpointError, CheckpointStore, Chunk, ChunkContext,
    Codec, Error, Every, Job, JobKey, MemoryStore, Outcome, Report, Runner, SkipPolicy, Status,
    StoreError,
};
use spotbatch_test_support::logs::LogBuffer;
use tokio::sync::Notify;

const KEY: &str = "steps";

fn key() -> JobKey {
    JobKey::new(KEY).unwrap()
}

// ---------------------------------------------------------------------------
// Test jobs
// ---------------------------------------------------------------------------

/// An output file's lines, shared by the runs of a test.
#[derive(Clone, Default)]
struct Out(Arc<Mutex<Vec<String>>>);

impl Out {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    fn push(&self, line: String) -> u64 {
        let mut lines = self.0.lock().unwrap();
        lines.push(line);
        lines.len() as u64
    }

    /// As `FileSink::truncate`: refuses to lose lines the checkpoint covers.
    fn truncate(&self, len: u64) -> Result<(), BoxError> {
        let mut lines = self.0.lock().unwrap();
        if (lines.len() as u64) < len {
            return Err(format!("{} lines but the checkpoint covers {len}", lines.len()).into());
        }
        lines.truncate(len as usize);
        Ok(())
    }
}

/// What a step's state holds: its output's length and a running sum.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Tally {
    lines: u64,
    sum: u64,
}

/// Where a `Count` asks the run to stop (its chunk then finishes).
#[derive(Clone, Copy, PartialEq, Eq)]
enum StopAt {
    /// In the chunk that starts at this number.
    Chunk(u64),
    /// In `complete`, while the job moves to the next step.
    Complete,
}

/// A step: the numbers `0..n` in chunks of `chunk`, a line `"<name> <i>"`
/// each; `complete` writes `"<name> done: sum <s>"` (and the sum of the
/// step before, when `then_with` gave it).
struct Count {
    name: &'static str,
    n: u64,
    chunk: u64,
    out: Out,
    /// Every chunk processed (`"<name> <start>"`) and every `complete`
    /// (`"<name> complete"`), in order, across runs.
    audit: Out,
    before: Option<u64>,
    stop: Option<(StopAt, Arc<Notify>)>,
    fail_complete: bool,
    /// The chunk (by its start) that fails.
    fail_chunk: Option<u64>,
}

impl Count {
    async fn stop_if(&self, at: StopAt) {
        if let Some((when, stop)) = &self.stop {
            if *when == at {
                stop.notify_one();
                // Let the stop request land while the chunk still runs.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[async_trait]
impl Job for Count {
    type Cursor = u64;
    type State = Tally;

    async fn resume(&mut self, _: &u64, state: &Tally) -> Result<(), BoxError> {
        self.out.truncate(state.lines)
    }

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>, BoxError> {
        Ok((*at < self.n).then(|| Chunk::between(*at, (*at + self.chunk).min(self.n))))
    }

    async fn process(
        &mut self,
        chunk: &Chunk<u64>,
        state: &mut Tally,
        _: &ChunkContext,
    ) -> Result<(), BoxError> {
        if self.fail_chunk == Some(*chunk.start()) {
            return Err(format!("{} {} is bad", self.name, chunk.start()).into());
        }
        for i in chunk.range() {
            state.lines = self.out.push(format!("{} {i}", self.name));
            state.sum += i;
        }
        self.audit.push(format!("{} {}", self.name, chunk.start()));
        tracing::info!(start = chunk.start(), "counted");
        self.stop_if(StopAt::Chunk(*chunk.start())).await;
        Ok(())
    }

    async fn complete(&mut self, _: &u64, state: &mut Tally) -> Result<(), BoxError> {
        if self.fail_complete {
            return Err(format!("{} cannot end", self.name).into());
        }
        let before = self
            .before
            .map(|b| format!(", before {b}"))
            .unwrap_or_default();
        state.lines = self
            .out
            .push(format!("{} done: sum {}{before}", self.name, state.sum));
        self.audit.push(format!("{} complete", self.name));
        self.stop_if(StopAt::Complete).await;
        Ok(())
    }
}

/// The outputs of steps `a`, `b`, `c` and the audit, shared by a test's runs.
#[derive(Clone, Default)]
struct World {
    a: Out,
    b: Out,
    c: Out,
    audit: Out,
}

impl World {
    fn count(&self, name: &'static str) -> Count {
        let (n, chunk, out) = match name {
            "a" => (10, 3, &self.a),
            "b" => (7, 2, &self.b),
            _ => (5, 5, &self.c),
        };
        Count {
            name,
            n,
            chunk,
            out: out.clone(),
            audit: self.audit.clone(),
            before: None,
            stop: None,
            fail_complete: false,
            fail_chunk: None,
        }
    }

    fn outputs(&self) -> [Vec<String>; 3] {
        [self.a.lines(), self.b.lines(), self.c.lines()]
    }

    /// A world whose outputs hold `outputs` (the audit empty).
    fn holding(outputs: &[Vec<String>; 3]) -> Self {
        let world = Self::default();
        for (out, lines) in [&world.a, &world.b, &world.c].into_iter().zip(outputs) {
            *out.0.lock().unwrap() = lines.clone();
        }
        world
    }
}

type Two = Steps<Then<First<Count>, Count>>;
type Three = Steps<Then<Then<First<Count>, Count>, Count>>;
type Cursor = <Three as Job>::Cursor;

/// `a` (4 chunks), `b` (4 chunks), then `c` (1 chunk), which reads `b`'s sum:
/// 11 chunks with the two moves.
fn three(a: Count, b: Count, c: Count) -> Three {
    Steps::new("a", a)
        .then("b", b)
        .then_with("c", c, |c: &mut Count, (_, b): &(Tally, Tally)| {
            c.before = Some(b.sum);
            Ok(())
        })
}

fn three_of(world: &World) -> Three {
    three(world.count("a"), world.count("b"), world.count("c"))
}

/// A store that keeps a copy of every checkpoint saved.
#[derive(Debug, Clone, Default)]
struct Recording {
    inner: MemoryStore,
    saved: Arc<Mutex<Vec<Checkpoint>>>,
}

#[async_trait]
impl CheckpointStore for Recording {
    fn location(&self) -> String {
        "recording://".into()
    }

    async fn load(&self, key: &JobKey) -> Result<Option<Checkpoint>, StoreError> {
        self.inner.load(key).await
    }

    async fn save(&self, c: &Checkpoint, expected: Option<u64>) -> Result<(), StoreError> {
        self.inner.save(c, expected).await?;
        self.saved.lock().unwrap().push(c.clone());
        Ok(())
    }

    async fn list(&self) -> Result<Vec<spotbatch::Listing>, StoreError> {
        self.inner.list().await
    }

    async fn delete(&self, key: &JobKey, expected: u64) -> Result<(), StoreError> {
        self.inner.delete(key, expected).await
    }
}

async fn run<J: Job>(job: J, store: impl CheckpointStore + 'static, codec: Codec) -> Report {
    Runner::new(KEY, job)
        .store(store)
        .codec(codec)
        .checkpoint(Every::chunk())
        .signals(&[])
        .run()
        .await
}

/// The outputs and audit of an uninterrupted run.
async fn reference() -> ([Vec<String>; 3], Vec<String>) {
    let world = World::default();
    let report = run(three_of(&world), MemoryStore::new(), Codec::Bincode).await;
    assert_eq!(report.code(), 0, "{report:?}");
    (world.outputs(), world.audit.lines())
}

fn stored(store: &MemoryStore) -> Checkpoint {
    Checkpoint::decode(&store.raw(&key()).unwrap()).unwrap()
}

// ---------------------------------------------------------------------------
// Resume
// ---------------------------------------------------------------------------

/// Every checkpoint a run saves (one after each chunk) is one a killed run
/// may leave, its outputs written past it: a run resumed from it does
/// exactly the chunks after it, none of the finished steps' again, and
/// leaves the outputs of an uninterrupted run.
#[tokio::test(start_paused = true)]
async fn a_run_resumed_from_any_checkpoint_finishes_the_job_exactly() {
    let (outputs, audit) = reference().await;
    assert_eq!(
        audit,
        [
            "a 0",
            "a 3",
            "a 6",
            "a 9",
            "a complete",
            "b 0",
            "b 2",
            "b 4",
            "b 6",
            "b complete",
            "c 0",
            "c complete"
        ]
    );
    assert_eq!(outputs[0].last().unwrap(), "a done: sum 45");
    assert_eq!(outputs[2].last().unwrap(), "c done: sum 10, before 21");

    for codec in [Codec::Bincode, Codec::Json] {
        let world = World::default();
        let store = Recording::default();
        let report = run(three_of(&world), store.clone(), codec).await;
        assert_eq!(report.code(), 0, "{report:?}");
        assert_eq!(report.stats.step.as_deref(), Some("c"));
        assert_eq!(report.stats.chunks, 11);
        let states = report.state::<<Three as Job>::State>().unwrap().get();
        assert_eq!(
            (states.0 .0.sum, states.0 .1.sum, states.1.sum),
            (45, 21, 10)
        );

        let saved = store.saved.lock().unwrap().clone();
        assert_eq!(
            saved.len(),
            13,
            "the lease's first save, one per chunk, the final one"
        );
        let (mut at_end_of_a, mut at_start_of_b) = (false, false);
        for c in saved.iter().filter(|c| c.status == Status::Running) {
            let names: Vec<&str> = c.steps.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["a", "b", "c"]);
            let done = c.counters.chunks as usize;
            // The step of the next chunk (or of the move out of it).
            let next = audit[done].split(' ').next().unwrap();
            assert_eq!(c.step_name(), Some(next), "after {done} chunks");
            let cursor: Cursor = c.codec.decode(&c.cursor).unwrap();
            assert_eq!(cursor.step(), c.step as usize);
            at_end_of_a |= format!("{cursor:?}") == "step 0: 10";
            at_start_of_b |= format!("{cursor:?}") == "step 1: 0";

            // A run killed after this checkpoint, its outputs complete.
            let resumed = World::holding(&outputs);
            let memory = MemoryStore::new();
            memory.put_raw(&key(), c.encode());
            let report = run(three_of(&resumed), memory.clone(), codec).await;
            assert_eq!(report.code(), 0, "from {done} chunks: {report:?}");
            assert_eq!(resumed.outputs(), outputs, "from {done} chunks");
            assert_eq!(resumed.audit.lines(), audit[done..], "from {done} chunks");
            let last = stored(&memory);
            assert_eq!(last.status, Status::Completed);
            assert_eq!(last.counters.chunks, 11);
        }
        assert!(
            at_end_of_a && at_start_of_b,
            "both sides of the move were tried"
        );
    }
}

/// A stop in a step's chunk, at its last chunk and while the job moves to
/// the next step: the chunk finishes, the checkpoint names the step the
/// cursor is in, and the next run goes on from there.
#[tokio::test(start_paused = true)]
async fn a_stop_checkpoints_the_step_and_the_next_run_goes_on_in_it() {
    let (outputs, audit) = reference().await;
    let cases = [
        ("b", StopAt::Chunk(2), "b", "step 1: 4"),
        ("a", StopAt::Chunk(9), "a", "step 0: 10"),
        ("a", StopAt::Complete, "b", "step 1: 0"),
        ("b", StopAt::Complete, "c", "step 2: 0"),
    ];
    for (step, at, in_step, cursor) in cases {
        for codec in [Codec::Bincode, Codec::Json] {
            let world = World::default();
            let stop = Arc::new(Notify::new());
            let mut counts = [world.count("a"), world.count("b"), world.count("c")];
            let i = ["a", "b", "c"].iter().position(|s| *s == step).unwrap();
            counts[i].stop = Some((at, stop.clone()));
            let [a, b, c] = counts;
            let store = MemoryStore::new();
            let report = Runner::new(KEY, three(a, b, c))
                .store(store.clone())
                .codec(codec)
                .signals(&[])
                .stop_on("test", async move { stop.notified().await })
                .run()
                .await;
            assert!(
                matches!(report.outcome, Outcome::Interrupted(_)),
                "{report:?}"
            );
            assert_eq!(report.stats.step.as_deref(), Some(in_step));
            let c = stored(&store);
            assert!(
                matches!(c.status, Status::Interrupted { .. }),
                "{}",
                c.status
            );
            assert_eq!(c.step_name(), Some(in_step));
            let decoded: Cursor = c.codec.decode(&c.cursor).unwrap();
            assert_eq!(format!("{decoded:?}"), cursor);

            let report = run(three_of(&world), store.clone(), codec).await;
            assert_eq!(report.code(), 0, "{report:?}");
            assert_eq!(world.outputs(), outputs);
            assert_eq!(world.audit.lines(), audit, "every chunk once, in order");
        }
    }
}

// ---------------------------------------------------------------------------
// Changes between runs
// ---------------------------------------------------------------------------

/// Runs steps `a`, `b`, `c` until a stop in `b`'s chunk at 2; the store.
async fn stopped_in_b(world: &World, codec: Codec) -> MemoryStore {
    let stop = Arc::new(Notify::new());
    let mut b = world.count("b");
    b.stop = Some((StopAt::Chunk(2), stop.clone()));
    let store = MemoryStore::new();
    let report = Runner::new(KEY, three(world.count("a"), b, world.count("c")))
        .store(store.clone())
        .codec(codec)
        .signals(&[])
        .stop_on("test", async move { stop.notified().await })
        .run()
        .await;
    assert!(
        matches!(report.outcome, Outcome::Interrupted(_)),
        "{report:?}"
    );
    store
}

fn refusal(report: &Report) -> &CheckpointError {
    match report.error() {
        Some(Error::BadCheckpoint { reason, .. }) => reason,
        other => panic!("not a refused checkpoint: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_of_other_steps_is_refused_naming_them_unless_migrated() {
    let world = World::default();
    let store = stopped_in_b(&world, Codec::Bincode).await;
    let before = store.raw(&key()).unwrap();

    // A step renamed.
    let renamed = Steps::new("a", world.count("a"))
        .then("b2", world.count("b"))
        .then("c", world.count("c"));
    let report = run(renamed, store.clone(), Codec::Bincode).await;
    assert_eq!(report.code(), 65, "{report:?}");
    assert!(
        matches!(refusal(&report), CheckpointError::StepsChanged { .. }),
        "{report:?}"
    );
    let message = report.error().unwrap().to_string();
    assert!(message.contains("a, b, c then, a, b2, c now"), "{message}");
    assert_eq!(store.raw(&key()).unwrap(), before, "left untouched");

    // A step added at the end, and a step's schema version bumped.
    let added = three_of(&world).then("d", world.count("c"));
    let report = run(added, store.clone(), Codec::Bincode).await;
    assert_eq!(report.code(), 65, "{report:?}");
    assert!(
        report
            .error()
            .unwrap()
            .to_string()
            .contains("a, b, c then, a, b, c, d now"),
        "{report:?}"
    );
    let report = run(
        Steps::new("a", world.count("a")),
        store.clone(),
        Codec::Bincode,
    )
    .await;
    assert!(
        report
            .error()
            .unwrap()
            .to_string()
            .contains("a, b, c then, a now"),
        "{report:?}"
    );
    assert_eq!(store.raw(&key()).unwrap(), before, "left untouched");

    // The rename, migrated: the same types, read as they are.
    let migrated = Steps::new("a", world.count("a"))
        .then("b2", world.count("b"))
        .then("c", world.count("c"))
        .migrate_with(|stored| {
            let names: Vec<&str> = stored.steps.iter().map(|s| s.name.as_str()).collect();
            if names != ["a", "b", "c"] {
                return Ok(None);
            }
            let cursor = stored.codec.decode(&stored.cursor)?;
            let state = stored.codec.decode(&stored.state)?;
            Ok(Some((cursor, state)))
        });
    let report = run(migrated, store.clone(), Codec::Bincode).await;
    assert_eq!(report.code(), 0, "{report:?}");
    let (outputs, _) = reference().await;
    assert_eq!(world.outputs()[..2], outputs[..2]);
    let c = stored(&store);
    assert_eq!(c.steps[1].name, "b2");
    assert_eq!(c.step_name(), Some("c"));
}

/// What `b` counts in a later version: its sum signed, its lines renamed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct TallyV2 {
    written: u64,
    sum: i64,
    migrated: bool,
}

/// `Count` with `TallyV2` for a state, and a `migrate` from `Tally`.
struct CountV2(Count);

#[async_trait]
impl Job for CountV2 {
    type Cursor = u64;
    type State = TallyV2;

    const SCHEMA_VERSION: u32 = 2;

    fn migrate(&self, stored: &Checkpoint) -> Result<Option<(u64, TallyV2)>, BoxError> {
        // The checkpoint as this step alone would have had it.
        assert_eq!(stored.schema, 1);
        assert!(stored.steps.is_empty());
        let types = stored.types.as_ref().unwrap().to_string();
        assert!(
            types.contains("b::Tally = struct { lines: u64, sum: u64 }"),
            "{types}"
        );
        let cursor: u64 = stored.codec.decode(&stored.cursor)?;
        let old: Tally = stored.codec.decode(&stored.state)?;
        let state = TallyV2 {
            written: old.lines,
            sum: i64::try_from(old.sum)?,
            migrated: true,
        };
        Ok(Some((cursor, state)))
    }

    async fn resume(&mut self, cursor: &u64, state: &TallyV2) -> Result<(), BoxError> {
        assert!(state.migrated || *cursor == 0, "{state:?}");
        self.0.out.truncate(state.written)
    }

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>, BoxError> {
        self.0.next_chunk(at).await
    }

    async fn process(
        &mut self,
        chunk: &Chunk<u64>,
        state: &mut TallyV2,
        ctx: &ChunkContext,
    ) -> Result<(), BoxError> {
        let mut old = Tally {
            lines: state.written,
            sum: u64::try_from(state.sum)?,
        };
        self.0.process(chunk, &mut old, ctx).await?;
        state.written = old.lines;
        state.sum = i64::try_from(old.sum)?;
        Ok(())
    }
}

/// The types (and schema version) of the step the checkpoint is in changed:
/// its own `migrate` converts its part, the steps before keep theirs. A
/// step before that changed is refused.
#[tokio::test(start_paused = true)]
async fn a_changed_step_migrates_its_own_part_of_the_checkpoint() {
    for codec in [Codec::Bincode, Codec::Json] {
        let world = World::default();
        let store = stopped_in_b(&world, codec).await;
        let before = store.raw(&key()).unwrap();

        // `a` changed, and the checkpoint is past it: refused.
        let changed_a = Steps::new("a", CountV2(world.count("a")))
            .then("b", world.count("b"))
            .then("c", world.count("c"));
        let report = run(changed_a, store.clone(), codec).await;
        assert_eq!(report.code(), 65, "{report:?}");
        assert!(
            matches!(refusal(&report), CheckpointError::StepsChanged { .. }),
            "{report:?}"
        );

        // `b` changed (its schema version, its state's shape), without `c`.
        let v2 = Steps::new("a", world.count("a"))
            .then("b", CountV2(world.count("b")))
            .then("c", world.count("c"));
        let report = run(v2, store.clone(), codec).await;
        assert_eq!(report.code(), 0, "{codec:?}: {report:?}");
        let states = report
            .state::<<Steps<Then<Then<First<Count>, CountV2>, Count>> as Job>::State>()
            .unwrap()
            .get();
        assert_eq!(states.0 .0.sum, 45, "a's state kept");
        assert!(states.0 .1.migrated);
        assert_eq!(states.0 .1.sum, 21);
        let audit = world.audit.lines();
        let b: Vec<&String> = audit.iter().filter(|l| l.starts_with("b ")).collect();
        assert_eq!(
            b,
            ["b 0", "b 2", "b 4", "b 6"],
            "b resumed where it stopped"
        );
        let c = stored(&store);
        assert_eq!(c.steps[1].schema, 2);
        assert_ne!(store.raw(&key()).unwrap(), before);
    }
}

/// Only the types of a step not started yet changed: it starts from its
/// defaults.
#[tokio::test(start_paused = true)]
async fn a_step_not_started_yet_may_change_freely() {
    let world = World::default();
    let store = stopped_in_b(&world, Codec::Bincode).await;
    let job = Steps::new("a", world.count("a"))
        .then("b", world.count("b"))
        .then("c", CountV2(world.count("c")));
    let report = run(job, store.clone(), Codec::Bincode).await;
    assert_eq!(report.code(), 0, "{report:?}");
    assert_eq!(world.c.lines().len(), 5);
}

// ---------------------------------------------------------------------------
// The move from one step to the next
// ---------------------------------------------------------------------------

/// A step whose `complete` fails: the run fails there, whatever the skip
/// policy, and its checkpoint stays in the step.
#[tokio::test(start_paused = true)]
async fn the_move_to_the_next_step_is_never_skipped() {
    let world = World::default();
    let mut a = world.count("a");
    a.fail_complete = true;
    let two: Two = Steps::new("a", a).then("b", world.count("b"));
    let store = MemoryStore::new();
    let report = Runner::new(KEY, two)
        .store(store.clone())
        .skip(SkipPolicy::at_most(10))
        .checkpoint(Every::chunk())
        .signals(&[])
        .run()
        .await;
    assert_eq!(report.code(), 1, "{report:?}");
    let message = report.error().unwrap().to_string();
    assert!(
        message.contains("moving from step \"a\" to step \"b\": complete failed: a cannot end"),
        "{message}"
    );
    let c = stored(&store);
    assert_eq!(c.step_name(), Some("a"));
    assert!(c.skipped.is_empty());
    assert!(world.b.lines().is_empty());
}

/// Steps with empty or repeated names fail at the start.
#[tokio::test(start_paused = true)]
async fn steps_must_have_distinct_names() {
    let world = World::default();
    let twice: Two = Steps::new("a", world.count("a")).then("a", world.count("b"));
    let report = run(twice, MemoryStore::new(), Codec::Bincode).await;
    assert_eq!(report.code(), 1, "{report:?}");
    assert!(
        report
            .error()
            .unwrap()
            .to_string()
            .contains("two steps are named \"a\""),
        "{report:?}"
    );
}

// ---------------------------------------------------------------------------
// Other kinds of steps
// ---------------------------------------------------------------------------

/// `Count` with its chunks processed concurrently and committed in order.
struct Fetch {
    n: u64,
    out: Out,
}

#[async_trait]
impl ConcurrentJob for Fetch {
    type Cursor = u64;
    type State = Tally;
    type Output = Vec<u64>;

    async fn resume(&self, _: &u64, state: &Tally) -> Result<(), BoxError> {
        self.out.truncate(state.lines)
    }

    async fn next_chunk(&self, at: &u64) -> Result<Option<Chunk<u64>>, BoxError> {
        Ok((*at < self.n).then(|| Chunk::between(*at, (*at + 3).min(self.n))))
    }

    async fn process(&self, chunk: &Chunk<u64>, _: &ChunkContext) -> Result<Vec<u64>, BoxError> {
        // Later chunks finish first.
        tokio::time::sleep(Duration::from_millis(100 - chunk.start())).await;
        Ok(chunk.range().collect())
    }

    async fn commit(
        &self,
        _: &Chunk<u64>,
        numbers: Vec<u64>,
        state: &mut Tally,
    ) -> Result<(), BoxError> {
        for i in numbers {
            state.lines = self.out.push(format!("fetch {i}"));
            state.sum += i;
        }
        Ok(())
    }
}

/// A concurrent step, stopped while its chunks are in flight, then resumed:
/// its output is in order and whole, and the step after it runs.
#[tokio::test(start_paused = true)]
async fn a_concurrent_step_drains_and_resumes_like_a_job() {
    let world = World::default();
    let fetch = || {
        Concurrent::new(
            Fetch {
                n: 30,
                out: world.a.clone(),
            },
            4,
        )
    };
    let store = MemoryStore::new();
    let report = Runner::new(
        KEY,
        Steps::new("fetch", fetch()).then("b", world.count("b")),
    )
    .store(store.clone())
    .signals(&[])
    .max_runtime(Duration::from_millis(250))
    .run()
    .await;
    assert!(
        matches!(report.outcome, Outcome::Interrupted(_)),
        "{report:?}"
    );
    let c = stored(&store);
    assert_eq!(c.step_name(), Some("fetch"));
    let report = run(
        Steps::new("fetch", fetch()).then("b", world.count("b")),
        store.clone(),
        Codec::Bincode,
    )
    .await;
    assert_eq!(report.code(), 0, "{report:?}");
    let expected: Vec<String> = (0..30).map(|i| format!("fetch {i}")).collect();
    assert_eq!(world.a.lines(), expected);
    assert_eq!(
        world.b.lines().len(),
        8,
        "b ran after it: 7 lines and its total"
    );
}

/// A chunk of a step skipped, and redriven by a later run in another step:
/// the step is resumed for it, and the chunk done.
#[tokio::test(start_paused = true)]
async fn a_skipped_chunk_of_an_earlier_step_is_redriven() {
    let world = World::default();
    let mut b = world.count("b");
    b.fail_chunk = Some(2);
    let store = MemoryStore::new();
    let report = Runner::new(KEY, three(world.count("a"), b, world.count("c")))
        .store(store.clone())
        .skip(SkipPolicy::at_most(1))
        .signals(&[])
        .run()
        .await;
    assert_eq!(report.code(), 0, "{report:?}");
    assert_eq!(report.stats.skipped, 1);
    let mut c = stored(&store);
    assert_eq!(c.skipped[0].start_text, "step 1: 2");
    c.redrive = true;
    c.version += 1;
    store.put_raw(&key(), c.encode());

    let report = Runner::new(KEY, three_of(&world))
        .store(store.clone())
        .skip(SkipPolicy::at_most(1))
        .signals(&[])
        .run()
        .await;
    assert_eq!(report.code(), 0, "{report:?}");
    assert_eq!(report.stats.redriven, 1);
    assert_eq!(world.audit.lines().last().unwrap(), "c complete");
    assert!(world.audit.lines().contains(&"b 2".to_owned()));
    assert!(
        world.b.lines().contains(&"b 3".to_owned()),
        "{:?}",
        world.b.lines()
    );
    assert!(stored(&store).skipped.is_empty());
}

// ---------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------

/// The lines of the runs of job `key`.
fn lines_of(key: &str) -> Vec<String> {
    let tag = format!("job={key}");
    LogBuffer::global()
        .text()
        .lines()
        .filter(|l| l.contains(&tag))
        .map(str::to_owned)
        .collect()
}

/// The log lines name the step: a step's own lines (in its `step` span),
/// the move from one step to the next, the start of a resumed run, its
/// checkpoints and its summary.
#[tokio::test(start_paused = true)]
async fn the_log_lines_name_the_step() {
    LogBuffer::global();
    let world = World::default();
    let stop = Arc::new(Notify::new());
    let mut b = world.count("b");
    b.stop = Some((StopAt::Chunk(2), stop.clone()));
    let store = MemoryStore::new();
    let report = Runner::new("logs", three(world.count("a"), b, world.count("c")))
        .store(store.clone())
        .signals(&[])
        .stop_on("test", async move { stop.notified().await })
        .run()
        .await;
    assert!(
        matches!(report.outcome, Outcome::Interrupted(_)),
        "{report:?}"
    );
    let report = Runner::new("logs", three_of(&world))
        .store(store)
        .checkpoint(Every::chunk())
        .signals(&[])
        .run()
        .await;
    assert_eq!(report.code(), 0, "{report:?}");

    let lines = lines_of("logs");
    let find = |what: &str| {
        lines
            .iter()
            .find(|l| what.split('|').all(|part| l.contains(part)))
            .unwrap_or_else(|| panic!("no line with {what:?} in\n{}", lines.join("\n")))
    };
    find("step{name=b}|counted start=2");
    find("step{name=c}|counted start=0");
    find("step done; the next starts done=a next=b");
    find("run ended|interrupted|step=b ");
    find("resuming from checkpoint|step=b cursor=step 1: 4");
    find("checkpoint saved|step=c ");
    find("run ended|outcome=completed step=c ");
}
