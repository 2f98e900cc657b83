//! Partitioned: one job cut into partitions, run by many tasks at once.
//!
//! The job is the quickstart's (record `i` becomes one line of output) over
//! `--partitions × --records-per-partition` records; partition `p` does its
//! share and writes it to `--out-dir/part-<p>.txt` through a `FileSink`, so
//! every output file is byte-for-byte the same however often its tasks were
//! stopped. When every partition is done, the task that finished the last
//! one writes `--out-dir/_SUCCESS` (the completion hook, run once).
//!
//! Run four tasks that share the partitions as they go (dynamic), stop any
//! of them at any moment, start it again:
//!
//! ```text
//! cargo build --example partitioned
//! for i in 1 2 3 4; do target/debug/examples/partitioned --partitions 16 --work-us 200 & done; wait
//! ```
//!
//! Or as task 1 of 4 with a fixed share (partitions 1, 5, 9, 13), as an AWS
//! Batch array job or a Kubernetes Indexed Job runs it (they set the index
//! and the count in the environment; `--index`/`--count` set them here):
//!
//! ```text
//! target/debug/examples/partitioned --partitions 16 --assign static --index 1 --count 4
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use spotbatch::partition::{Assignment, Partition, PartitionedRunner};
use spotbatch::prelude::*;

/// One partition's share of the records, written to its own file.
struct Share {
    records: std::ops::Range<u64>,
    chunk: u64,
    work: Duration,
    out: FileSink,
    audit_path: Option<PathBuf>,
    audit: Option<FileSink>,
}

#[async_trait]
impl Job for Share {
    type Cursor = u64; // the next record to do
    type State = u64; // bytes of output the cursor covers

    // Runs once the partition's lease is taken: before that, another task
    // may still be writing these files.
    async fn resume(&mut self, _next: &u64, out_len: &u64) -> Result<()> {
        if let Some(path) = &self.audit_path {
            self.audit = Some(FileSink::open(path).await?);
        }
        Ok(self.out.truncate(*out_len).await?)
    }

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
        // The cursor starts at 0 (the default): the partition's first record.
        let start = (*at).max(self.records.start);
        Ok((start < self.records.end)
            .then(|| Chunk::between(start, (start + self.chunk).min(self.records.end))))
    }

    async fn process(
        &mut self,
        chunk: &Chunk<u64>,
        out_len: &mut u64,
        ctx: &ChunkContext,
    ) -> Result<()> {
        // Simulated I/O-bound work (a network call per record), given up at the drain deadline.
        if !self.work.is_zero() {
            let work = self.work * u32::try_from(chunk.items()).unwrap_or(u32::MAX);
            ctx.cancellable(tokio::time::sleep(work)).await?;
        }
        for i in chunk.range() {
            self.out
                .write_line(&format!("{i}\t{:016x}", transform(i)))
                .await?;
        }
        *out_len = self.out.len();
        if let Some(audit) = &mut self.audit {
            let range = chunk.range();
            audit
                .write_line(&format!(
                    "{} {} {}",
                    range.start,
                    range.end,
                    std::process::id()
                ))
                .await?;
            audit.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        Ok(self.out.flush().await?)
    }

    fn total_items(&self) -> Option<u64> {
        Some(self.records.end - self.records.start)
    }
}

/// A deterministic transformation of a record (SplitMix64), as the quickstart's.
fn transform(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How a task finds its partitions.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Assign {
    /// Task I of C runs partitions I, I+C, I+2C…: from --index and --count,
    /// else AWS_BATCH_JOB_ARRAY_INDEX/SIZE, JOB_COMPLETION_INDEX with
    /// SPOTBATCH_TASK_COUNT, or SPOTBATCH_TASK_INDEX/COUNT.
    Static,
    /// Any number of tasks take unfinished partitions as they go.
    Dynamic,
}

/// The partitioned example's flags.
#[derive(Parser)]
#[command(about = "A spotbatch job cut into partitions, run by many tasks")]
pub struct Args {
    /// Partitions of the job (every task of the job must say the same).
    #[arg(long, default_value_t = 16)]
    partitions: u32,
    /// Records per partition.
    #[arg(long, default_value_t = 10_000)]
    records_per_partition: u64,
    /// Records per chunk.
    #[arg(long, default_value_t = 100)]
    chunk: u64,
    /// Where each partition writes its output (part-0000.txt, …) and the
    /// completion step writes _SUCCESS.
    #[arg(long, default_value = "partitioned.out")]
    out_dir: PathBuf,
    /// Checkpoint store URL.
    #[arg(long, env = "SPOTBATCH_STORE", default_value = "file://.spotbatch")]
    pub store: String,
    /// Job key in the store; the partitions are <job>/p-0000, …
    #[arg(long, default_value = "partitioned")]
    job: String,
    /// How this task finds its partitions.
    #[arg(long, value_enum, default_value = "dynamic")]
    assign: Assign,
    /// With --assign static: this task's index, from 0.
    #[arg(long, requires = "count")]
    index: Option<u32>,
    /// With --assign static: how many tasks share the job.
    #[arg(long, requires = "index")]
    count: Option<u32>,
    /// Simulated work per record, in microseconds (a sleep: I/O-bound work).
    #[arg(long, default_value_t = 0)]
    work_us: u64,
    /// Checkpoint after this many chunks…
    #[arg(long, default_value_t = 100)]
    every_chunks: u64,
    /// …or this many seconds, whichever comes first.
    #[arg(long, default_value_t = 5)]
    every_secs: u64,
    /// Grace period in seconds: time from SIGTERM to the platform's SIGKILL.
    #[arg(long, default_value_t = 30.0)]
    grace: f64,
    /// Lease in seconds: a partition whose task stops renewing it is taken
    /// over this long after.
    #[arg(long, default_value_t = 60.0)]
    lease: f64,
    /// How often an idle task looks again at partitions other tasks hold, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    poll_ms: u64,
    /// Exit code of an interrupted task (75 for AWS Batch / Kubernetes retries).
    #[arg(long, default_value_t = 0)]
    interrupted_exit_code: u8,
    /// Append "start end pid" per processed chunk to DIR/p-<index>.txt, and
    /// "pid" per start of the completion hook to DIR/hook.txt (the
    /// end-to-end tests use them to count what was done twice).
    #[arg(long)]
    audit_dir: Option<PathBuf>,
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

fn seconds(flag: &str, secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs).map_err(|e| anyhow::anyhow!("bad --{flag} {secs}: {e}"))
}

/// Appends `line` to `path` and makes it durable.
async fn append(path: &Path, line: &str) -> std::io::Result<()> {
    let mut log = FileSink::open(path).await?;
    log.write_line(line).await?;
    log.flush().await
}

/// Runs one task of the partitioned job with its flags.
pub async fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(args.chunk > 0, "--chunk must be at least 1");
    let assignment = match (args.assign, args.index, args.count) {
        (Assign::Dynamic, None, None) => Assignment::Dynamic,
        (Assign::Dynamic, ..) => anyhow::bail!("--index and --count go with --assign static"),
        (Assign::Static, Some(index), Some(count)) => Assignment::fixed(index, count)?,
        (Assign::Static, ..) => Assignment::from_env()?.ok_or_else(|| {
            anyhow::anyhow!(
                "--assign static needs --index and --count, or the platform's variables \
                 (AWS_BATCH_JOB_ARRAY_INDEX, JOB_COMPLETION_INDEX with SPOTBATCH_TASK_COUNT)"
            )
        })?,
    };
    tokio::fs::create_dir_all(&args.out_dir).await?;
    if let Some(dir) = &args.audit_dir {
        tokio::fs::create_dir_all(dir).await?;
    }
    let total = u64::from(args.partitions) * args.records_per_partition;
    let (chunk, work) = (args.chunk, Duration::from_micros(args.work_us));
    let (out_dir, audit_dir) = (args.out_dir.clone(), args.audit_dir.clone());
    let factory = move |p: Partition| {
        let (out_dir, audit_dir) = (out_dir.clone(), audit_dir.clone());
        async move {
            // Opening writes nothing: `resume` sets where writing starts.
            let out = FileSink::open(out_dir.join(format!("part-{:04}.txt", p.index()))).await?;
            let audit_path = audit_dir.map(|dir| dir.join(format!("p-{:04}.txt", p.index())));
            Ok(Share {
                records: p.range(total),
                chunk,
                work,
                out,
                audit_path,
                audit: None,
            })
        }
    };
    let (out_dir, audit_dir) = (args.out_dir.clone(), args.audit_dir.clone());
    let every = Every::chunks(args.every_chunks).or_seconds(args.every_secs);
    let report = PartitionedRunner::new(args.job, args.partitions, factory)
        .store_url(&args.store)
        .assignment(assignment)
        .grace(seconds("grace", args.grace)?)
        .lease(seconds("lease", args.lease)?)
        .poll_interval(Duration::from_millis(args.poll_ms))
        .interrupted_exit_code(args.interrupted_exit_code)
        .configure(move |runner| runner.checkpoint(every))
        .on_completed(move |_ctx| {
            let (out_dir, audit_dir) = (out_dir.clone(), audit_dir.clone());
            async move {
                if let Some(dir) = &audit_dir {
                    append(&dir.join("hook.txt"), &std::process::id().to_string()).await?;
                }
                // Idempotent: a hook cut off and run again makes the same empty file.
                FileSink::open(out_dir.join("_SUCCESS")).await?;
                Ok(())
            }
        })
        .run()
        .await;
    Ok(report.exit_code())
}

#[allow(dead_code)] // unused where another file includes this one
#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    // First: from here on SIGTERM and SIGINT are stop requests.
    let shutdown = spotbatch::shutdown::listen();
    init_logging();
    let args = Args::parse();
    // The exit code of a stop that comes before the runner starts, too.
    shutdown.interrupted_exit_code(args.interrupted_exit_code);
    run(args).await
}
