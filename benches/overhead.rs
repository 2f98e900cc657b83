//! What spotbatch costs on top of the work it drives, each figure measured
//! against a plain baseline in the same run.
//!
//! # Running
//!
//! ```text
//! cargo bench --bench overhead              # full run, well under a minute on 2 cores
//! cargo bench --bench overhead -- --quick   # about a tenth of the work, for a quick look
//! SPOTBATCH_BENCH_DIR=/mnt/efs cargo bench --bench overhead   # FileStore on another disk
//! ```
//!
//! Run without `--bench` (as `cargo test --benches` does), the binary only
//! runs a tiny smoke pass whose figures mean nothing.
//!
//! The output is a Markdown table: `spotbatch` is the library's figure,
//! `baseline` the plain equivalent, `diff` their difference and `ratio`
//! spotbatch ÷ baseline. Everything runs on one explicitly built
//! current-thread tokio runtime, with no signal handlers (`.signals(&[])`)
//! and no tracing subscriber; each per-chunk figure is the median of several
//! repetitions, runner and baseline interleaved.
//!
//! # The figures
//!
//! 1. **Per chunk.** A [`Runner`] drives a trivial job: a million chunks,
//!    each adding one `u64` to the state. The baseline is a hand-written loop
//!    doing the same additions (`black_box` keeps them from being optimised
//!    away). Reported in ns per chunk; `diff` is the runner's overhead per
//!    chunk. Rows: no periodic checkpoint
//!    ([`CheckpointPolicy::at_exit_only`]), without a lease (`no_lease()`) and
//!    with the default one; the default policy (every 100 chunks or 5 s) to a
//!    [`MemoryStore`]; the same policy to a [`FileStore`]
//!    (fewer chunks, since each checkpoint is two `fsync`s), whose baseline is
//!    the loop plus the raw durable write below every 100 chunks, so the row
//!    shows the amortised cost of durable checkpoints. An extra row runs the
//!    loop through two `#[async_trait]` calls per chunk, as the runner calls
//!    `next_chunk` and `process`: the part of the overhead that comes from the
//!    trait's boxed futures rather than from the runner's bookkeeping.
//!    Section 1b gives the MemoryStore rows again in CPU time of the whole
//!    process (`CLOCK_PROCESS_CPUTIME_ID`, every thread) per chunk: on a
//!    machine busy with other work the wall clock counts the time the
//!    benchmark waited for a core, the CPU time does not. A last row in
//!    each runs the same job as the second of two [`Steps`] (the first has
//!    no chunks), against the same job alone: what a job of steps adds per
//!    chunk (no tracing subscriber: the `step` spans are disabled).
//! 2. **Checkpoint latency.** Median and p99 of [`CheckpointStore::save`] of
//!    a realistic checkpoint (16-byte cursor, 256-byte state) on a
//!    [`FileStore`], against a raw `std::fs` baseline writing the same bytes
//!    the same durable way: temporary file, `fsync`, rename, `fsync` of the
//!    directory. Saves alternate between the two. The ratio is of medians.
//!    [`MemoryStore`] saves are shown for reference, against encoding the
//!    envelope alone (which every save does).
//! 3. **Envelope.** Encoding and decoding that checkpoint's envelope, in ns,
//!    against copying the same bytes and computing their CRC-32 (the least
//!    a checksummed envelope can cost).
//! 4. **Memory.** Two million chunks with the default policy to a
//!    [`MemoryStore`] (20,000 periodic checkpoints). Peak RSS (`VmHWM` from
//!    `/proc/self/status`, reset just before) before the run, after 200,000
//!    chunks and after 2,000,000: the ratio of the last two is ≈ 1.00 when
//!    memory does not grow with the number of chunks or checkpoints.
//! 5. **Start and stop.** Start-up: a run of a job with no chunks, with the
//!    ECS identity check on (`ECS_CONTAINER_METADATA_URI_V4` unset) and, with
//!    the feature `aws`, the EC2 Spot notice poller pointed at a port where
//!    nothing listens (as off EC2), against the same run without either. Stop: from a stop request
//!    (a `stop_on` future, the in-process twin of SIGTERM) during 100 µs
//!    chunks to `run()` returning with the final checkpoint saved, on a
//!    MemoryStore and on a FileStore (the FileStore row is dominated by its
//!    two `fsync`s); the baseline is the raw durable write of section 2.

use std::fs::{self, File, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use spotbatch::steps::{First, StepStates, Steps, Then};
use spotbatch::{
    async_trait, BoxError, Checkpoint, CheckpointPolicy, CheckpointStore, Chunk, ChunkContext,
    Codec, FileStore, Job, JobKey, MemoryStore, Outcome, Runner, TypeDescription, Writer,
};
use spotbatch_test_support::table::{print_table, Latencies, Mode, Row};

/// How much work each figure does.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// Chunks per run in the per-chunk figures (MemoryStore).
    chunks: u64,
    /// Chunks per run in the FileStore per-chunk figure.
    file_chunks: u64,
    /// Repetitions of each per-chunk figure (the median is reported).
    reps: usize,
    /// FileStore saves (and as many raw writes) timed one by one.
    file_saves: usize,
    /// MemoryStore saves timed one by one.
    memory_saves: usize,
    /// Envelope encodings/decodings timed together.
    envelope_iters: u32,
    /// Chunks of the long run, and the chunk after which memory is sampled.
    long_chunks: u64,
    long_sample: u64,
}

impl Sizes {
    const FULL: Self = Self {
        chunks: 1_000_000,
        file_chunks: 20_000,
        reps: 5,
        file_saves: 200,
        memory_saves: 20_000,
        envelope_iters: 200_000,
        long_chunks: 2_000_000,
        long_sample: 200_000,
    };
    const QUICK: Self = Self {
        chunks: 100_000,
        file_chunks: 2_000,
        reps: 3,
        file_saves: 50,
        memory_saves: 2_000,
        envelope_iters: 20_000,
        long_chunks: 200_000,
        long_sample: 20_000,
    };
    const SMOKE: Self = Self {
        chunks: 1_000,
        file_chunks: 200,
        reps: 1,
        file_saves: 5,
        memory_saves: 100,
        envelope_iters: 100,
        long_chunks: 2_000,
        long_sample: 200,
    };
}

/// Checkpoint every this many chunks (the default policy's count).
const EVERY: u64 = 100;

fn main() {
    if let Some((what, chunks)) = one_loop_from_args() {
        one_loop(what, chunks);
        return;
    }
    let mode = Mode::from_args();
    let sizes = mode.pick(Sizes::SMOKE, Sizes::QUICK, Sizes::FULL);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (_tmp, dir) = bench_dir();
    let started = Instant::now();

    // Memory first, so that nothing else has touched the heap yet.
    let memory = rt.block_on(long_run(sizes));
    let mut rows = Vec::new();
    rows.extend(rt.block_on(per_chunk(sizes, &dir)));
    rows.extend(rt.block_on(save_latency(sizes, &dir)));
    rows.extend(envelope(sizes));
    rows.extend(memory);
    rows.extend(rt.block_on(start_and_stop(sizes, &dir)));

    println!(
        "spotbatch overhead, {}: {} cores, FileStore in {} ({})\n",
        mode.describe(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        dir.display(),
        fs_type(&dir),
    );
    print_table(&rows);
    println!("\ntook {:.1} s", started.elapsed().as_secs_f64());
}

/// `--one-loop WHAT CHUNKS`: the loop to run alone (`plain`, `no-lease` or
/// `lease`) and its number of chunks, for `scripts/bench-instructions`.
fn one_loop_from_args() -> Option<(String, u64)> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == "--one-loop")?;
    let what = args.get(at + 1).cloned();
    let chunks = args.get(at + 2).and_then(|n| n.parse().ok());
    match (what, chunks) {
        (Some(what), Some(chunks)) => Some((what, chunks)),
        _ => panic!("usage: overhead --one-loop plain|no-lease|lease CHUNKS"),
    }
}

/// Runs one per-chunk loop of section 1 alone, with nothing else in the
/// process, so that an instruction count of two runs of different lengths
/// (`scripts/bench-instructions`, under callgrind) gives its instructions
/// per chunk.
fn one_loop(what: String, chunks: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let policy = CheckpointPolicy::at_exit_only();
    match what.as_str() {
        "plain" => {
            black_box(plain_loop(chunks));
        }
        "no-lease" => {
            rt.block_on(run_sum(Arc::new(MemoryStore::new()), chunks, policy, true));
        }
        "lease" => {
            rt.block_on(run_sum(Arc::new(MemoryStore::new()), chunks, policy, false));
        }
        other => panic!("--one-loop {other}: expected plain, no-lease or lease"),
    }
}

// ---------------------------------------------------------------------------
// 1. Per-chunk overhead

/// The cheapest job there is: one `u64` per chunk, added to the state.
struct Sum {
    chunks: u64,
}

#[async_trait]
impl Job for Sum {
    type Cursor = u64;
    type State = u64;

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>, BoxError> {
        Ok((*at < self.chunks).then(|| Chunk::between(*at, *at + 1)))
    }

    async fn process(
        &mut self,
        chunk: &Chunk<u64>,
        sum: &mut u64,
        _: &ChunkContext,
    ) -> Result<(), BoxError> {
        *sum = sum.wrapping_add(black_box(*chunk.start()));
        Ok(())
    }
}

/// The baseline: the same additions in a plain loop.
fn plain_loop(chunks: u64) -> u64 {
    let mut sum = 0u64;
    let mut cursor = 0u64;
    while cursor < chunks {
        sum = sum.wrapping_add(black_box(cursor));
        cursor += 1;
    }
    black_box(sum)
}

/// The plain loop, plus the raw durable write of `bytes` every [`EVERY`] chunks.
fn plain_loop_writing(chunks: u64, dir: &Path, bytes: &[u8]) -> u64 {
    let path = dir.join("loop.ckpt");
    let mut sum = 0u64;
    let mut cursor = 0u64;
    while cursor < chunks {
        sum = sum.wrapping_add(black_box(cursor));
        cursor += 1;
        if cursor.is_multiple_of(EVERY) {
            raw_durable_write(dir, &path, bytes).expect("raw write");
        }
    }
    raw_durable_write(dir, &path, bytes).expect("raw write");
    black_box(sum)
}

/// The two calls per chunk the runner makes, through `#[async_trait]` boxed
/// futures but without the runner: the floor the trait itself sets.
#[async_trait]
trait Direct {
    async fn next(&mut self, at: &u64) -> Option<Chunk<u64>>;
    async fn work(&mut self, chunk: &Chunk<u64>, sum: &mut u64);
}

#[async_trait]
impl Direct for Sum {
    async fn next(&mut self, at: &u64) -> Option<Chunk<u64>> {
        (*at < self.chunks).then(|| Chunk::between(*at, *at + 1))
    }

    async fn work(&mut self, chunk: &Chunk<u64>, sum: &mut u64) {
        *sum = sum.wrapping_add(black_box(*chunk.start()));
    }
}

async fn direct_loop(chunks: u64) -> u64 {
    let mut job = Sum { chunks };
    let (mut cursor, mut sum) = (0u64, 0u64);
    while let Some(chunk) = job.next(&cursor).await {
        job.work(&chunk, &mut sum).await;
        cursor = *chunk.next();
    }
    black_box(sum)
}

/// Runs [`Sum`] to completion (with the default lease unless `no_lease`)
/// and checks the sum in its final checkpoint.
async fn run_sum(
    store: Arc<dyn CheckpointStore>,
    chunks: u64,
    policy: CheckpointPolicy,
    no_lease: bool,
) -> Took {
    let started = Took::start();
    let mut runner = Runner::new("bench", Sum { chunks })
        .shared_store(store.clone())
        .checkpoint(policy)
        .signals(&[]);
    if no_lease {
        runner = runner.no_lease();
    }
    let report = runner.run().await;
    let took = started.end();
    assert!(
        matches!(report.outcome, Outcome::Completed),
        "{:?}",
        report.outcome
    );
    assert_eq!(report.stats.chunks, chunks);
    let key = JobKey::new("bench").expect("key");
    let last = store.load(&key).await.expect("load").expect("checkpoint");
    let sum: u64 = last.codec.decode(&last.state).expect("state");
    assert_eq!(sum, chunks * chunks.saturating_sub(1) / 2);
    took
}

/// Runs [`Sum`] as the second of two steps (the first has no chunks), at
/// exit only and without a lease, and checks its sum.
async fn run_steps(chunks: u64) -> Took {
    let job = Steps::new("empty", Sum { chunks: 0 }).then("sum", Sum { chunks });
    let started = Took::start();
    let report = Runner::new("bench", job)
        .store(MemoryStore::new())
        .checkpoint(CheckpointPolicy::at_exit_only())
        .no_lease()
        .signals(&[])
        .run()
        .await;
    let took = started.end();
    assert_eq!(report.stats.chunks, chunks + 1, "{:?}", report.outcome);
    let states = report
        .state::<StepStates<Then<First<Sum>, Sum>>>()
        .map(|s| *s.get());
    assert_eq!(states, Some((0, chunks * chunks.saturating_sub(1) / 2)));
    took
}

/// Wall-clock and CPU time of one measured run.
#[derive(Debug, Clone, Copy)]
struct Took {
    wall: Duration,
    /// CPU time of the whole process (every thread), which other processes
    /// on a busy machine do not inflate as they do the wall clock.
    cpu: Duration,
}

impl Took {
    fn start() -> Started {
        Started {
            wall: Instant::now(),
            cpu: cpu_time(),
        }
    }
}

/// When a measured run started, on both clocks.
struct Started {
    wall: Instant,
    cpu: Duration,
}

impl Started {
    fn end(self) -> Took {
        Took {
            wall: self.wall.elapsed(),
            cpu: cpu_time().saturating_sub(self.cpu),
        }
    }
}

/// The CPU time this process has used so far, every thread
/// (`CLOCK_PROCESS_CPUTIME_ID`).
fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec, and the clock is one
    // Linux always has.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Times `run` `reps` times and returns the median in ns per chunk, of the
/// wall clock and of the CPU time.
struct PerChunk {
    wall: Vec<f64>,
    cpu: Vec<f64>,
    chunks: u64,
}

impl PerChunk {
    fn new(chunks: u64) -> Self {
        Self {
            wall: Vec::new(),
            cpu: Vec::new(),
            chunks,
        }
    }

    fn add(&mut self, took: Took) {
        self.wall
            .push(took.wall.as_nanos() as f64 / self.chunks as f64);
        self.cpu
            .push(took.cpu.as_nanos() as f64 / self.chunks as f64);
    }

    fn median(&mut self) -> f64 {
        median(&mut self.wall)
    }

    fn median_cpu(&mut self) -> f64 {
        median(&mut self.cpu)
    }
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn timed<T>(f: impl FnOnce() -> T) -> Duration {
    let started = Instant::now();
    black_box(f());
    started.elapsed()
}

fn timed_both<T>(f: impl FnOnce() -> T) -> Took {
    let started = Took::start();
    black_box(f());
    started.end()
}

async fn per_chunk(sizes: Sizes, dir: &Path) -> Vec<Row> {
    let n = sizes.chunks;
    let mut plain = PerChunk::new(n);
    let mut direct = PerChunk::new(n);
    let mut exit_only = PerChunk::new(n);
    let mut exit_only_no_lease = PerChunk::new(n);
    let mut default = PerChunk::new(n);
    let mut steps = PerChunk::new(n);
    for _ in 0..sizes.reps {
        plain.add(timed_both(|| plain_loop(n)));
        let started = Took::start();
        black_box(direct_loop(n).await);
        direct.add(started.end());
        let policy = CheckpointPolicy::at_exit_only();
        exit_only_no_lease.add(run_sum(Arc::new(MemoryStore::new()), n, policy, true).await);
        exit_only.add(run_sum(Arc::new(MemoryStore::new()), n, policy, false).await);
        let policy = CheckpointPolicy::default();
        default.add(run_sum(Arc::new(MemoryStore::new()), n, policy, false).await);
        steps.add(run_steps(n).await);
    }

    let n = sizes.file_chunks;
    let bytes = realistic_checkpoint().encode();
    let mut file_plain = PerChunk::new(n);
    let mut file = PerChunk::new(n);
    for rep in 0..sizes.reps.min(3) {
        let loop_dir = fresh_dir(dir, &format!("loop-{rep}"));
        file_plain.add(timed_both(|| plain_loop_writing(n, &loop_dir, &bytes)));
        let store = Arc::new(FileStore::new(fresh_dir(dir, &format!("runner-{rep}"))));
        file.add(run_sum(store, n, CheckpointPolicy::default(), false).await);
    }

    let base = plain.median();
    let base_cpu = plain.median_cpu();
    let m = sizes.chunks;
    let cpu_rows = vec![
        Row::section(format!(
            "1b. per chunk, CPU ns/chunk of the whole process, steadier than the wall clock on a busy machine ({m} chunks)"
        )),
        Row::ns(
            "Runner, at_exit_only, no_lease(), MemoryStore",
            exit_only_no_lease.median_cpu(),
            base_cpu,
        ),
        Row::ns(
            "Runner, at_exit_only, MemoryStore (default 60 s lease)",
            exit_only.median_cpu(),
            base_cpu,
        ),
        Row::ns(
            format!("Runner, every {EVERY} chunks or 5 s, MemoryStore"),
            default.median_cpu(),
            base_cpu,
        ),
        Row::ns(
            "Steps: the job as the 2nd of 2 steps, at_exit_only, no_lease() (baseline: the job alone)",
            steps.median_cpu(),
            exit_only_no_lease.median_cpu(),
        ),
    ];
    let mut rows = vec![
        Row::section(format!(
            "1. per chunk, ns/chunk ({m} chunks; FileStore {n}), baseline: plain loop"
        )),
        Row::ns("two #[async_trait] calls, no runner", direct.median(), base),
        Row::ns(
            "Runner, at_exit_only, no_lease(), MemoryStore",
            exit_only_no_lease.median(),
            base,
        ),
        Row::ns(
            "Runner, at_exit_only, MemoryStore (default 60 s lease)",
            exit_only.median(),
            base,
        ),
        Row::ns(
            format!("Runner, every {EVERY} chunks or 5 s, MemoryStore"),
            default.median(),
            base,
        ),
        Row::ns(
            format!(
                "Runner, every {EVERY} chunks or 5 s, FileStore (baseline: + raw durable write every {EVERY})"
            ),
            file.median(),
            file_plain.median(),
        ),
        Row::ns(
            "Steps: the job as the 2nd of 2 steps, at_exit_only, no_lease() (baseline: the job alone)",
            steps.median(),
            exit_only_no_lease.median(),
        ),
    ];
    rows.extend(cpu_rows);
    rows
}

// ---------------------------------------------------------------------------
// 2. Checkpoint latency

/// The cursor and state types whose shape the realistic checkpoint records.
mod etl {
    #![allow(dead_code)] // only traced

    #[derive(serde::Deserialize)]
    pub(super) struct Cursor {
        page: Option<String>,
        offset: u64,
    }

    #[derive(serde::Deserialize)]
    pub(super) struct Totals {
        rows: u64,
        bytes: u64,
        errors: u32,
        by_kind: std::collections::BTreeMap<String, u64>,
        last_key: String,
    }
}

/// A checkpoint as a real job writes it: 16-byte cursor, 256-byte state,
/// and the shape of their types.
fn realistic_checkpoint() -> Checkpoint {
    let mut c = Checkpoint::new(
        JobKey::new("nightly-etl/2026-11-24").expect("key"),
        Writer::this_process(),
    );
    c.cursor_type = "(etl::Cursor, etl::Totals)".to_owned();
    c.schema = 1;
    c.types = Some(TypeDescription::trace::<etl::Cursor, etl::Totals>().expect("trace"));
    c.cursor = (0u8..16).collect();
    c.state = (0..256u32).map(|i| (i * 7) as u8).collect();
    c.counters.chunks = 123_456;
    c.counters.items = 123_456_000;
    c.counters.checkpoints = 1_234;
    c.counters.runs = 3;
    c
}

/// Writes `bytes` to `path` the way a durable store must: a temporary file,
/// `fsync`, rename over `path`, `fsync` of the directory.
fn raw_durable_write(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

async fn save_latency(sizes: Sizes, dir: &Path) -> Vec<Row> {
    let mut checkpoint = realistic_checkpoint();
    let bytes = checkpoint.encode();

    // FileStore and the raw write, alternating, after a short warm-up.
    let store = FileStore::new(fresh_dir(dir, "latency-store"));
    let raw_dir = fresh_dir(dir, "latency-raw");
    let raw_path = raw_dir.join("raw.ckpt");
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    let warm_up = 5.min(sizes.file_saves);
    for i in 0..warm_up + sizes.file_saves {
        checkpoint.version = i as u64 + 1;
        let expected = (i > 0).then_some(i as u64);
        let started = Instant::now();
        store.save(&checkpoint, expected).await.expect("save");
        let took_ours = started.elapsed();
        let took_raw = timed(|| raw_durable_write(&raw_dir, &raw_path, &bytes).expect("raw write"));
        if i >= warm_up {
            ours.push(took_ours);
            raw.push(took_raw);
        }
    }
    let (ours, raw) = (Latencies::new(ours), Latencies::new(raw));

    // MemoryStore, against encoding the envelope alone.
    let store = MemoryStore::new();
    let (mut mem, mut encode) = (Vec::new(), Vec::new());
    for i in 0..sizes.memory_saves {
        checkpoint.version = i as u64 + 1;
        let expected = (i > 0).then_some(i as u64);
        let started = Instant::now();
        store.save(&checkpoint, expected).await.expect("save");
        mem.push(started.elapsed());
        encode.push(timed(|| checkpoint.encode()));
    }
    let (mem, encode) = (Latencies::new(mem), Latencies::new(encode));

    let n = sizes.file_saves;
    vec![
        Row::section(format!(
            "2. checkpoint save, {}-byte envelope (baseline: tmp file, fsync, rename, fsync dir)",
            bytes.len()
        )),
        Row::ns(
            format!("FileStore save, median of {n}"),
            ours.percentile(50.0),
            raw.percentile(50.0),
        ),
        Row::ns(
            format!("FileStore save, p99 of {n}"),
            ours.percentile(99.0),
            raw.percentile(99.0),
        ),
        Row::ns(
            format!(
                "MemoryStore save, median of {} (baseline: encode only)",
                sizes.memory_saves
            ),
            mem.percentile(50.0),
            encode.percentile(50.0),
        ),
        Row::ns(
            format!(
                "MemoryStore save, p99 of {} (baseline: encode only)",
                sizes.memory_saves
            ),
            mem.percentile(99.0),
            encode.percentile(99.0),
        ),
    ]
}

// ---------------------------------------------------------------------------
// 3. Envelope encode and decode

fn envelope(sizes: Sizes) -> Vec<Row> {
    let checkpoint = realistic_checkpoint();
    let bytes = checkpoint.encode();
    let iters = sizes.envelope_iters;
    let per = |d: Duration| d.as_nanos() as f64 / f64::from(iters);

    let encode = per(timed(|| {
        for _ in 0..iters {
            black_box(black_box(&checkpoint).encode());
        }
    }));
    let decode = per(timed(|| {
        for _ in 0..iters {
            black_box(Checkpoint::decode(black_box(&bytes)).expect("decode"));
        }
    }));
    let copy_crc = per(timed(|| {
        for _ in 0..iters {
            let copy = black_box(&bytes).to_vec();
            black_box(crc32fast::hash(&copy));
        }
    }));
    // The runner also encodes the cursor and state with the job's codec.
    let cursor = [7u64, 9];
    let state = vec![3u8; 256];
    let codec = per(timed(|| {
        for _ in 0..iters {
            black_box(Codec::Bincode.encode(black_box(&cursor)).expect("encode"));
            black_box(Codec::Bincode.encode(black_box(&state)).expect("encode"));
        }
    }));
    // What each save adds to check that the bytes read back (decode and
    // encode again), for both codecs; and tracing the types' shape, once
    // per run.
    let checked = |codec: Codec| {
        per(timed(|| {
            for _ in 0..iters {
                black_box(codec.encode_checked(black_box(&cursor)).expect("encode"));
                black_box(codec.encode_checked(black_box(&state)).expect("encode"));
            }
        }))
    };
    let json = per(timed(|| {
        for _ in 0..iters {
            black_box(Codec::Json.encode(black_box(&cursor)).expect("encode"));
            black_box(Codec::Json.encode(black_box(&state)).expect("encode"));
        }
    }));
    let (bincode_checked, json_checked) = (checked(Codec::Bincode), checked(Codec::Json));
    let trace_iters = (iters / 100).max(1);
    let trace = timed(|| {
        for _ in 0..trace_iters {
            black_box(TypeDescription::trace::<etl::Cursor, etl::Totals>().expect("trace"));
        }
    })
    .as_nanos() as f64
        / f64::from(trace_iters);
    vec![
        Row::section("3. envelope (ns; baseline: copy the bytes + CRC-32)"),
        Row::ns("encode", encode, copy_crc),
        Row::ns("decode", decode, copy_crc),
        Row::ns("encode + decode", encode + decode, 2.0 * copy_crc),
        Row::ns(
            "bincode of cursor + state, as the runner does per save",
            codec,
            copy_crc,
        ),
        Row::ns(
            "bincode of cursor + state with the read-back check (baseline: without)",
            bincode_checked,
            codec,
        ),
        Row::ns(
            "JSON of cursor + state with the read-back check (baseline: without)",
            json_checked,
            json,
        ),
        Row::ns(
            "tracing the cursor and state types' shape, once per run (baseline: copy + CRC-32)",
            trace,
            copy_crc,
        ),
    ]
}

// ---------------------------------------------------------------------------
// 4. Memory over a long run

/// [`Sum`], noting peak and current RSS when it reaches chunk `sample_at`.
struct Sampled {
    chunks: u64,
    sample_at: u64,
    sample: Arc<OnceLock<Rss>>,
}

#[async_trait]
impl Job for Sampled {
    type Cursor = u64;
    type State = u64;

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>, BoxError> {
        if *at == self.sample_at {
            let _ = self.sample.set(Rss::now());
        }
        Ok((*at < self.chunks).then(|| Chunk::between(*at, *at + 1)))
    }

    async fn process(
        &mut self,
        chunk: &Chunk<u64>,
        sum: &mut u64,
        _: &ChunkContext,
    ) -> Result<(), BoxError> {
        *sum = sum.wrapping_add(black_box(*chunk.start()));
        Ok(())
    }
}

/// Peak (`VmHWM`) and current (`VmRSS`) resident set size, in KiB.
#[derive(Debug, Clone, Copy)]
struct Rss {
    peak: u64,
    now: u64,
}

impl Rss {
    fn now() -> Self {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        Self {
            peak: field("VmHWM:"),
            now: field("VmRSS:"),
        }
    }

    /// Resets the peak to the current RSS (Linux ≥ 4.0); false if refused.
    fn reset_peak() -> bool {
        fs::write("/proc/self/clear_refs", "5").is_ok()
    }
}

async fn long_run(sizes: Sizes) -> Vec<Row> {
    let reset = Rss::reset_peak();
    let before = Rss::now();
    let sample = Arc::new(OnceLock::new());
    let job = Sampled {
        chunks: sizes.long_chunks,
        sample_at: sizes.long_sample,
        sample: sample.clone(),
    };
    let store = MemoryStore::new();
    let report = Runner::new("long", job)
        .store(store)
        .checkpoint(CheckpointPolicy::default())
        .signals(&[])
        .run()
        .await;
    let after = Rss::now();
    assert!(matches!(report.outcome, Outcome::Completed));
    let at_sample = *sample.get().expect("sampled");
    let kib = |k: u64| format!("{k} KiB");
    let sampled = sizes.long_sample;
    let total = sizes.long_chunks;
    vec![
        Row::section(format!(
            "4. memory: {total} chunks, {} checkpoints to a MemoryStore (peak RSS{})",
            report.stats.checkpoints,
            if reset {
                ", reset before the run"
            } else {
                "; reset refused, includes start-up"
            }
        )),
        Row::text("peak RSS before the run", kib(before.peak), "", "", ""),
        Row::text(
            format!("peak RSS after {total} chunks (baseline: after {sampled})"),
            kib(after.peak),
            kib(at_sample.peak),
            format!("{:+} KiB", after.peak as i64 - at_sample.peak as i64),
            format!("{:.2}", after.peak as f64 / at_sample.peak as f64),
        ),
        Row::text(
            format!("current RSS after {total} chunks (baseline: after {sampled})"),
            kib(after.now),
            kib(at_sample.now),
            format!("{:+} KiB", after.now as i64 - at_sample.now as i64),
            format!("{:.2}", after.now as f64 / at_sample.now as f64),
        ),
    ]
}

// ---------------------------------------------------------------------------
// Output and helpers

/// The directory the FileStore figures write in: `$SPOTBATCH_BENCH_DIR`, or
/// a temporary directory (kept alive by the returned guard).
fn bench_dir() -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("SPOTBATCH_BENCH_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir).join(format!("spotbatch-bench-{}", std::process::id()));
            fs::create_dir_all(&dir).expect("bench dir");
            (None, dir)
        }
        None => {
            let tmp = tempfile::tempdir().expect("temporary directory");
            let dir = tmp.path().to_path_buf();
            (Some(tmp), dir)
        }
    }
}

/// An empty directory `name` under `dir`.
fn fresh_dir(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let _ = fs::remove_dir_all(&path);
    fs::create_dir_all(&path).expect("create dir");
    path
}

/// The type of the file system holding `dir`, from `/proc/mounts` (longest
/// matching mount point).
fn fs_type(dir: &Path) -> String {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
            dir.starts_with(at).then(|| (at.len(), kind.to_owned()))
        })
        .max()
        .map_or_else(|| "unknown fs".to_owned(), |(_, kind)| kind)
}

// ---------------------------------------------------------------------------
// 5. Start and stop

/// Chunks of 100 µs of (async) work, forever.
struct Ticking;

#[async_trait]
impl Job for Ticking {
    type Cursor = u64;
    type State = ();

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>, BoxError> {
        Ok(Some(Chunk::between(*at, *at + 1)))
    }

    async fn process(
        &mut self,
        _: &Chunk<u64>,
        _: &mut (),
        _: &ChunkContext,
    ) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_micros(100)).await;
        Ok(())
    }
}

/// No chunks at all.
struct Nothing;

#[async_trait]
impl Job for Nothing {
    type Cursor = u64;
    type State = ();

    async fn next_chunk(&mut self, _: &u64) -> Result<Option<Chunk<u64>>, BoxError> {
        Ok(None)
    }

    async fn process(
        &mut self,
        _: &Chunk<u64>,
        _: &mut (),
        _: &ChunkContext,
    ) -> Result<(), BoxError> {
        Ok(())
    }
}

#[cfg(feature = "aws")]
const START_UP_ROW: &str =
    "start-up with the EC2 notice poller (no IMDS) + ECS check (baseline: without)";
#[cfg(not(feature = "aws"))]
const START_UP_ROW: &str =
    "start-up with the ECS check (no `aws` feature: asks nothing; baseline: without)";

async fn start_and_stop(sizes: Sizes, dir: &Path) -> Vec<Row> {
    let runs = (sizes.file_saves / 4).max(5);
    #[cfg(feature = "aws")]
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut plain = Vec::new();
    let mut with_sources = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let report = Runner::new("start", Nothing)
            .store(MemoryStore::new())
            .signals(&[])
            .no_lease()
            .ecs_identity(false)
            .run()
            .await;
        plain.push(t.elapsed());
        assert!(report.is_complete());
        let t = Instant::now();
        let runner = Runner::new("start", Nothing)
            .store(MemoryStore::new())
            .signals(&[])
            .no_lease();
        #[cfg(feature = "aws")]
        let runner = runner.stop_source(
            spotbatch::aws::Ec2SpotNotices::new().endpoint(format!("http://{closed}")),
        );
        let report = runner.run().await;
        with_sources.push(t.elapsed());
        assert!(report.is_complete());
    }
    let plain = Latencies::new(plain).percentile(50.0);
    let with_sources = Latencies::new(with_sources).percentile(50.0);

    let mut stop_memory = Vec::new();
    let mut stop_file = Vec::new();
    let mut raw = Vec::new();
    let bytes = realistic_checkpoint().encode();
    let raw_dir = fresh_dir(dir, "stop-raw");
    for i in 0..runs {
        for (store, out) in [
            (
                Arc::new(MemoryStore::new()) as Arc<dyn CheckpointStore>,
                &mut stop_memory,
            ),
            (
                Arc::new(FileStore::new(fresh_dir(dir, &format!("stop-{i}"))))
                    as Arc<dyn CheckpointStore>,
                &mut stop_file,
            ),
        ] {
            let fired = Arc::new(OnceLock::<Instant>::new());
            let mark = fired.clone();
            let report = Runner::new("stop", Ticking)
                .shared_store(store)
                .signals(&[])
                .no_lease()
                .stop_on("bench", async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let _ = mark.set(Instant::now());
                })
                .run()
                .await;
            let returned = Instant::now();
            assert!(
                matches!(report.outcome, Outcome::Interrupted(_)),
                "{:?}",
                report.outcome
            );
            out.push(returned - *fired.get().expect("stop fired"));
        }
        raw.push(timed(|| {
            raw_durable_write(&raw_dir, &raw_dir.join("ckpt"), &bytes).expect("raw write")
        }));
    }
    let raw = Latencies::new(raw).percentile(50.0);
    vec![
        Row::section(format!("5. start and stop (medians of {runs} runs)")),
        Row::ns(START_UP_ROW, with_sources, plain),
        Row::ns(
            "stop request → run() returned, MemoryStore (baseline: raw durable write)",
            Latencies::new(stop_memory).percentile(50.0),
            raw,
        ),
        Row::ns(
            "stop request → run() returned, FileStore (baseline: raw durable write)",
            Latencies::new(stop_file).percentile(50.0),
            raw,
        ),
    ]
}
