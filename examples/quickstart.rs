//! Quickstart: a job that survives Ctrl-C, SIGTERM and SIGKILL.
//!
//! It makes its own input (record `i` for `i` in `0..records`), transforms
//! each record and appends one line per record to an output file. The cursor
//! is the next record; the state is the output's length, so a resumed run
//! truncates whatever a killed run wrote past its last checkpoint, and the
//! final file is byte-for-byte the same however often the run was stopped.
//!
//! ```text
//! cargo run --example quickstart -- --work-us 20     # Ctrl-C it, run it again: it resumes
//! ```
//!
//! `--concurrency K` keeps up to K chunks in flight (the same job as a
//! [`ConcurrentJob`]: chunks processed concurrently, with latencies that vary
//! per chunk so that they finish out of order, and committed in order);
//! `--flaky P` makes each chunk attempt fail with a transient error with
//! probability P, decided by a hash of the chunk and the attempt, so that
//! runs are reproducible. The output is the same byte for byte either way.
//! `--skip N` skips up to N chunks that still fail after their retries.
//!
//! `--store` (or `SPOTBATCH_STORE`) takes every store URL the build serves:
//!
//! ```text
//! cargo run --example quickstart --features s3,postgres -- --store s3://my-bucket/ckpt
//! cargo run --example quickstart --features s3,postgres -- --store 'postgres://app:secret@db/jobs?schema=batch'
//! ```
//!
//! `main` listens for stop signals on its first line, before the runtime
//! exists, and the set-up before the run (`--setup-secs`, standing for
//! connecting to inputs or reading configuration) is given up on a stop.
//! `--work-on` and `--current-thread` show that a stop ends in time however
//! the chunk's work runs, even when it holds the runtime's only thread.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use spotbatch::concurrent::{Concurrent, ConcurrentJob};
use spotbatch::prelude::*;
use spotbatch::shutdown::Shutdown;
use spotbatch::SkipPolicy;
use tokio::sync::Mutex;

struct Transform {
    records: u64,
    chunk: u64,
    work: Duration,
    flaky: f64,
    work_on: WorkOn,
    out: FileSink,
    audit: Option<FileSink>,
}

/// Where a chunk's simulated work runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkOn {
    /// A timer, as a network call would be: given up at the drain deadline.
    Async,
    /// `tokio::task::spawn_blocking`, as CPU work should run: the chunk gives
    /// it up at the drain deadline, but its thread runs on to the end.
    BlockingPool,
    /// The chunk's own thread, with no `.await` (CPU work or a synchronous
    /// client called in place): nothing can interrupt it.
    JobThread,
}

#[async_trait]
impl Job for Transform {
    type Cursor = u64; // the next record to do
    type State = u64; // bytes of output the cursor covers

    async fn resume(&mut self, _next: &u64, out_len: &u64) -> Result<()> {
        Ok(self.out.truncate(*out_len).await?)
    }

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < self.records).then(|| Chunk::between(*at, (*at + self.chunk).min(self.records))))
    }

    async fn process(
        &mut self,
        chunk: &Chunk<u64>,
        out_len: &mut u64,
        ctx: &ChunkContext,
    ) -> Result<()> {
        flaky(self.flaky, chunk, ctx)?;
        // Simulated work (e.g. a network call).
        if !self.work.is_zero() {
            let work = self.work * u32::try_from(chunk.items()).unwrap_or(u32::MAX);
            match self.work_on {
                WorkOn::Async => ctx.cancellable(tokio::time::sleep(work)).await?,
                WorkOn::BlockingPool => {
                    let thread = tokio::task::spawn_blocking(move || std::thread::sleep(work));
                    ctx.cancellable(thread).await??;
                }
                WorkOn::JobThread => std::thread::sleep(work),
            }
        }
        self.out.write(lines(chunk).as_bytes()).await?;
        *out_len = self.out.len();
        audit(self.audit.as_mut(), chunk).await
    }

    async fn flush(&mut self) -> Result<()> {
        Ok(self.out.flush().await?)
    }

    fn total_items(&self) -> Option<u64> {
        Some(self.records)
    }
}

/// The quickstart job with chunks in flight concurrently: `process` waits
/// (a latency that varies per chunk) and formats the lines, `commit` appends
/// them in order.
struct ConcurrentTransform {
    records: u64,
    chunk: u64,
    work: Duration,
    flaky: f64,
    out: Mutex<FileSink>,
    audit: Mutex<Option<FileSink>>,
}

#[async_trait]
impl ConcurrentJob for ConcurrentTransform {
    type Cursor = u64; // the next record to commit
    type State = u64; // bytes of output the cursor covers
    type Output = String; // a chunk's lines

    async fn resume(&self, _next: &u64, out_len: &u64) -> Result<()> {
        Ok(self.out.lock().await.truncate(*out_len).await?)
    }

    async fn next_chunk(&self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < self.records).then(|| Chunk::between(*at, (*at + self.chunk).min(self.records))))
    }

    async fn process(&self, chunk: &Chunk<u64>, ctx: &ChunkContext) -> Result<String> {
        flaky(self.flaky, chunk, ctx)?;
        if !self.work.is_zero() {
            // Between half and one and a half times the work: chunks finish out of order.
            let per_mille = 500 + transform(*chunk.start()) % 1000;
            let items = u32::try_from(chunk.items()).unwrap_or(u32::MAX);
            let work = self.work * items * u32::try_from(per_mille).unwrap_or(1000) / 1000;
            ctx.cancellable(tokio::time::sleep(work)).await?;
        }
        Ok(lines(chunk))
    }

    async fn commit(&self, chunk: &Chunk<u64>, lines: String, out_len: &mut u64) -> Result<()> {
        let mut out = self.out.lock().await;
        out.write(lines.as_bytes()).await?;
        *out_len = out.len();
        audit(self.audit.lock().await.as_mut(), chunk).await
    }

    async fn flush(&self) -> Result<()> {
        Ok(self.out.lock().await.flush().await?)
    }

    fn total_items(&self) -> Option<u64> {
        Some(self.records)
    }
}

/// The output lines of a chunk's records.
fn lines(chunk: &Chunk<u64>) -> String {
    chunk
        .range()
        .map(|i| format!("{i}\t{:016x}\n", transform(i)))
        .collect()
}

/// Appends "start end" to the audit file, if any, durably.
async fn audit(audit: Option<&mut FileSink>, chunk: &Chunk<u64>) -> Result<()> {
    if let Some(audit) = audit {
        audit
            .write_line(&format!("{} {}", chunk.range().start, chunk.range().end))
            .await?;
        audit.flush().await?;
    }
    Ok(())
}

/// Fails this attempt at `chunk` with a transient error with probability
/// `p`, decided by a hash of the chunk and the attempt (reproducible).
fn flaky(p: f64, chunk: &Chunk<u64>, ctx: &ChunkContext) -> Result<()> {
    let draw = transform(chunk.start() ^ (u64::from(ctx.attempt()) << 48)) >> 11;
    #[allow(clippy::cast_precision_loss)] // 53 bits: exact in an f64
    let draw = draw as f64 / (1u64 << 53) as f64;
    if draw < p {
        return Err(spotbatch::transient(format!(
            "flaky: attempt {} at chunk {} failed",
            ctx.attempt(),
            chunk.start()
        )));
    }
    Ok(())
}

/// A deterministic transformation of a record (SplitMix64).
fn transform(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The quickstart's flags.
#[derive(Parser)]
#[command(about = "A spotbatch job that survives interruption")]
pub struct Args {
    /// Records to process.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Records per chunk.
    #[arg(long, default_value_t = 1_000)]
    chunk: u64,
    /// Output file.
    #[arg(long, default_value = "quickstart.out")]
    out: PathBuf,
    /// Checkpoint store URL.
    #[arg(long, env = "SPOTBATCH_STORE", default_value = "file://.spotbatch")]
    pub store: String,
    /// Job key in the store.
    #[arg(long, default_value = "quickstart")]
    job: String,
    /// Simulated work per record, in microseconds.
    #[arg(long, default_value_t = 0)]
    work_us: u64,
    /// Where the simulated work runs.
    #[arg(long, value_enum, default_value_t = WorkOn::Async)]
    work_on: WorkOn,
    /// Run on tokio's current-thread runtime (one thread for everything).
    #[arg(long)]
    current_thread: bool,
    /// Simulated set-up before the run, in seconds (connecting to inputs,
    /// reading configuration): given up on a stop request.
    #[arg(long, default_value_t = 0.0)]
    setup_secs: f64,
    /// Do not give the set-up up on a stop request: the run then starts
    /// after it, and returns at once.
    #[arg(long)]
    setup_not_interruptible: bool,
    /// Checkpoint after this many chunks…
    #[arg(long, default_value_t = 100)]
    every_chunks: u64,
    /// …or this many seconds, whichever comes first.
    #[arg(long, default_value_t = 5)]
    every_secs: u64,
    /// Grace period in seconds: time from SIGTERM to the platform's SIGKILL.
    #[arg(long, default_value_t = 30.0)]
    grace: f64,
    /// The part of the grace period, in seconds, kept for the final
    /// checkpoint (default: a quarter of the grace period, at most 5 s).
    #[arg(long)]
    reserve: Option<f64>,
    /// Lease in seconds: another runner may take the job over this long
    /// after this one stops renewing it.
    #[arg(long, default_value_t = 60.0)]
    lease: f64,
    /// Exit code of an interrupted run (75 for AWS Batch / Kubernetes retries).
    #[arg(long, default_value_t = 0)]
    interrupted_exit_code: u8,
    /// Stop (as SIGTERM would) after running this many seconds.
    #[arg(long)]
    max_runtime: Option<f64>,
    /// Start over even if the job completed.
    #[arg(long)]
    restart: bool,
    /// Append "start end" per processed chunk to this file (the end-to-end
    /// tests use it to prove no chunk is processed twice).
    #[arg(long)]
    audit: Option<PathBuf>,
    /// Chunks in flight at once (1: the job one chunk at a time).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// The probability that a chunk attempt fails with a transient error
    /// (retried up to 10 attempts).
    #[arg(long, default_value_t = 0.0)]
    flaky: f64,
    /// Skip up to this many chunks that still fail after their retries
    /// (`spotbatch skipped` lists them, `spotbatch redrive` has the next run
    /// do them first: their lines then come at the end of the output).
    #[arg(long, default_value_t = 0)]
    skip: u64,
}

/// Logs to stderr, `info` unless `RUST_LOG` says otherwise.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Runs the quickstart job with its flags.
pub async fn run(shutdown: Shutdown, args: Args) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(args.chunk > 0, "--chunk must be at least 1");
    let grace = Duration::try_from_secs_f64(args.grace)
        .map_err(|e| anyhow::anyhow!("bad --grace {}: {e}", args.grace))?;
    let lease = Duration::try_from_secs_f64(args.lease)
        .map_err(|e| anyhow::anyhow!("bad --lease {}: {e}", args.lease))?;
    let setup = Duration::try_from_secs_f64(args.setup_secs)
        .map_err(|e| anyhow::anyhow!("bad --setup-secs {}: {e}", args.setup_secs))?;
    // The work before the run: given up on a stop request, which then ends
    // the process with the interrupted exit code, nothing done.
    let set_up = async {
        tokio::time::sleep(setup).await;
        let audit = match &args.audit {
            Some(path) => Some(FileSink::open(path).await?),
            None => None,
        };
        anyhow::Ok((FileSink::open(&args.out).await?, audit))
    };
    let (out, audit) = if args.setup_not_interruptible {
        set_up.await?
    } else {
        match shutdown.interruptible(set_up).await {
            Ok(opened) => opened?,
            Err(stopped) => return Ok(stopped.exit_code()),
        }
    };
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(
        (0.0..1.0).contains(&args.flaky),
        "--flaky must be at least 0 and less than 1"
    );
    let (records, chunk, work, flaky) = (
        args.records,
        args.chunk,
        Duration::from_micros(args.work_us),
        args.flaky,
    );
    let report = if args.concurrency == 1 {
        let job = Transform {
            records,
            chunk,
            work,
            flaky,
            work_on: args.work_on,
            out,
            audit,
        };
        configure(Runner::new(args.job.clone(), job), &args, grace, lease)?
            .run()
            .await
    } else {
        let job = ConcurrentTransform {
            records,
            chunk,
            work,
            flaky,
            out: Mutex::new(out),
            audit: Mutex::new(audit),
        };
        let job = Concurrent::new(job, args.concurrency);
        configure(Runner::new(args.job.clone(), job), &args, grace, lease)?
            .run()
            .await
    };
    Ok(report.exit_code())
}

/// The runner's settings from the flags.
fn configure<J: Job>(
    runner: Runner<J>,
    args: &Args,
    grace: Duration,
    lease: Duration,
) -> anyhow::Result<Runner<J>> {
    let mut runner = runner
        .store_url(&args.store)
        .checkpoint(Every::chunks(args.every_chunks).or_seconds(args.every_secs))
        .grace(grace)
        .lease(lease);
    if let Some(secs) = args.reserve {
        let reserve = Duration::try_from_secs_f64(secs)
            .map_err(|e| anyhow::anyhow!("bad --reserve {secs}: {e}"))?;
        runner = runner.checkpoint_reserve(reserve);
    }
    if args.restart {
        runner = runner.restart();
    }
    if let Some(secs) = args.max_runtime {
        let limit = Duration::try_from_secs_f64(secs)
            .map_err(|e| anyhow::anyhow!("bad --max-runtime {secs}: {e}"))?;
        runner = runner.max_runtime(limit);
    }
    if args.flaky > 0.0 {
        runner = runner.retry(
            RetryPolicy::attempts(10).backoff(Duration::from_millis(5), Duration::from_millis(100)),
        );
    }
    if args.skip > 0 {
        runner = runner.skip(SkipPolicy::at_most(args.skip));
    }
    Ok(runner)
}

#[allow(dead_code)] // unused where another example includes this file
fn main() -> anyhow::Result<std::process::ExitCode> {
    // First: from here on SIGTERM and SIGINT are stop requests, even before
    // the runtime exists.
    let shutdown = spotbatch::shutdown::listen();
    init_logging();
    let args = Args::parse();
    let shutdown = shutdown.interrupted_exit_code(args.interrupted_exit_code);
    let mut runtime = if args.current_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    runtime.enable_all().build()?.block_on(run(shutdown, args))
}
