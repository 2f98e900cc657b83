//! Steps: extract → transform → load, one job whose steps each resume
//! where they stopped.
//!
//! - **extract** "fetches" records `0..records` (made up here, as an API
//!   would page them) and writes them to `OUT/extracted.csv`;
//! - **transform** reads that file (a `CsvSource`), keeps the orders of
//!   at least 10.00 and writes them, amounts in euros, to
//!   `OUT/transformed.jsonl`; its state counts what it kept;
//! - **load** reads that file (a `JsonLinesSource`) into `OUT/loaded.tsv`
//!   and, at the end, checks it loaded as many rows as `transform` kept
//!   (read from `transform`'s state when `load` starts) and writes a total.
//!
//! Every output goes through a sink whose length rides in its step's state,
//! so the files are the same byte for byte however often the job is
//! stopped (SIGTERM, Ctrl-C) or killed (SIGKILL) and run again. A finished
//! step is not run again; `spotbatch show` names the step a stopped job is
//! in.
//!
//! ```text
//! cargo run --example steps -- --out /tmp/etl --work-us 50   # Ctrl-C it, run it again
//! spotbatch show file://.spotbatch steps                     # step  transform (2 of 3: …)
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use spotbatch::prelude::*;
use spotbatch::sink::{CsvSink, JsonLinesSink};
use spotbatch::source::{Batch, CsvSource, Handler, JsonLinesSource, Limit, SourceJob};
use spotbatch::steps::Steps;

/// Writes records `0..records` to a CSV file, `chunk` at a time.
struct Extract {
    records: u64,
    chunk: u64,
    work: Duration,
    out: CsvSink,
}

#[async_trait]
impl Job for Extract {
    type Cursor = u64; // the next record to fetch
    type State = u64; // bytes of extracted.csv the cursor covers

    async fn resume(&mut self, _: &u64, out_len: &u64) -> Result<()> {
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
        work(self.work, chunk.items(), ctx).await?;
        for id in chunk.range() {
            let (customer, cents) = (format!("c{:02}", mix(id) % 37), mix(id ^ 0xa5a5) % 5000);
            self.out
                .write_record([id.to_string(), customer, cents.to_string()])
                .await?;
        }
        *out_len = self.out.len();
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        Ok(self.out.flush().await?)
    }

    fn total_items(&self) -> Option<u64> {
        Some(self.records)
    }
}

/// An order as `transform` writes it and `load` reads it.
#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    euros: String,
}

/// What `transform` found: its output's length, and the orders it kept.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Kept {
    out_len: u64,
    orders: u64,
    cents: u64,
}

/// Keeps the orders of at least 10.00, amounts in euros.
struct Transform {
    work: Duration,
    out: JsonLinesSink,
}

#[async_trait]
impl Handler<CsvSource> for Transform {
    type State = Kept;

    async fn resume(&mut self, _: &spotbatch::source::FilePosition, kept: &Kept) -> Result<()> {
        Ok(self.out.truncate(kept.out_len).await?)
    }

    async fn handle(
        &mut self,
        batch: Batch<CsvSource>,
        kept: &mut Kept,
        ctx: &ChunkContext,
    ) -> Result<()> {
        work(self.work, batch.items(), ctx).await?;
        for record in batch.records() {
            let (id, customer, cents) = (&record[0], &record[1], record[2].parse::<u64>()?);
            if cents < 1000 {
                continue;
            }
            let order = Order {
                id: id.parse()?,
                customer: customer.to_owned(),
                euros: euros(cents),
            };
            self.out.write(&order).await?;
            kept.orders += 1;
            kept.cents += cents;
        }
        kept.out_len = self.out.len();
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        Ok(self.out.flush().await?)
    }
}

/// What `load` loaded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Loaded {
    out_len: u64,
    rows: u64,
}

/// Loads the orders into a tab-separated file; at the end, checks the count
/// against `transform`'s and writes the total (written again by a run that
/// resumes before the job's completion is saved: `resume` cut it first).
struct Load {
    work: Duration,
    out: FileSink,
    /// What `transform` kept, from its state (`Steps::then_with`).
    expected: Kept,
}

#[async_trait]
impl Handler<JsonLinesSource<Order>> for Load {
    type State = Loaded;

    async fn resume(&mut self, _: &spotbatch::source::FilePosition, loaded: &Loaded) -> Result<()> {
        Ok(self.out.truncate(loaded.out_len).await?)
    }

    async fn handle(
        &mut self,
        batch: Batch<JsonLinesSource<Order>>,
        loaded: &mut Loaded,
        ctx: &ChunkContext,
    ) -> Result<()> {
        work(self.work, batch.items(), ctx).await?;
        for order in batch.records() {
            self.out
                .write_line(&format!(
                    "{}\t{}\t{}",
                    order.customer, order.id, order.euros
                ))
                .await?;
            loaded.rows += 1;
        }
        loaded.out_len = self.out.len();
        Ok(())
    }

    async fn complete(
        &mut self,
        _: &spotbatch::source::FilePosition,
        loaded: &mut Loaded,
    ) -> Result<()> {
        if loaded.rows != self.expected.orders {
            return Err(format!(
                "loaded {} rows, transform kept {}",
                loaded.rows, self.expected.orders
            )
            .into());
        }
        let total = format!("total\t{}\t{}", loaded.rows, euros(self.expected.cents));
        self.out.write_line(&total).await?;
        loaded.out_len = self.out.len();
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        Ok(self.out.flush().await?)
    }
}

/// Simulated work per item (a network call), given up at the drain deadline.
async fn work(per_item: Duration, items: u64, ctx: &ChunkContext) -> Result<()> {
    if !per_item.is_zero() {
        let work = per_item * u32::try_from(items).unwrap_or(u32::MAX);
        ctx.cancellable(tokio::time::sleep(work)).await?;
    }
    Ok(())
}

fn euros(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// A deterministic mix of a number (SplitMix64).
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How checkpoints encode cursors and states.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum CodecArg {
    Bincode,
    Json,
}

#[derive(Parser)]
#[command(about = "A spotbatch job of three steps: extract, transform, load")]
struct Args {
    /// Records to extract.
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Records per chunk, in every step.
    #[arg(long, default_value_t = 1_000)]
    chunk: u64,
    /// The directory of the three output files (created if missing).
    #[arg(long, default_value = "steps.out")]
    out: PathBuf,
    /// Checkpoint store URL.
    #[arg(long, env = "SPOTBATCH_STORE", default_value = "file://.spotbatch")]
    store: String,
    /// Job key in the store.
    #[arg(long, default_value = "steps")]
    job: String,
    /// Simulated work per record, in microseconds, in every step.
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
    /// Exit code of an interrupted run (75 for AWS Batch / Kubernetes retries).
    #[arg(long, default_value_t = 0)]
    interrupted_exit_code: u8,
    /// Stop (as SIGTERM would) after running this many seconds.
    #[arg(long)]
    max_runtime: Option<f64>,
    /// How checkpoints encode cursors and states.
    #[arg(long, value_enum, default_value_t = CodecArg::Bincode)]
    codec: CodecArg,
}

async fn run(
    shutdown: spotbatch::shutdown::Shutdown,
    args: Args,
) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(args.chunk > 0, "--chunk must be at least 1");
    let grace = Duration::try_from_secs_f64(args.grace)
        .map_err(|e| anyhow::anyhow!("bad --grace {}: {e}", args.grace))?;
    let (dir, work) = (args.out.clone(), Duration::from_micros(args.work_us));
    let open = async {
        tokio::fs::create_dir_all(&dir).await?;
        let extracted = CsvSink::open(dir.join("extracted.csv"))
            .await?
            .with_header(["id", "customer", "cents"]);
        let transformed = JsonLinesSink::open(dir.join("transformed.jsonl")).await?;
        let loaded = FileSink::open(dir.join("loaded.tsv")).await?;
        anyhow::Ok((extracted, transformed, loaded))
    };
    let (extracted, transformed, loaded) = match shutdown.interruptible(open).await {
        Ok(opened) => opened?,
        Err(stopped) => return Ok(stopped.exit_code()),
    };

    let limit = Limit::records(args.chunk);
    let extract = Extract {
        records: args.records,
        chunk: args.chunk,
        work,
        out: extracted,
    };
    let transform = SourceJob::new(
        CsvSource::file(dir.join("extracted.csv")),
        Transform {
            work,
            out: transformed,
        },
    )
    .limit(limit);
    let load = SourceJob::new(
        JsonLinesSource::<Order>::file(dir.join("transformed.jsonl")),
        Load {
            work,
            out: loaded,
            expected: Kept::default(),
        },
    )
    .limit(limit);
    let job = Steps::new("extract", extract)
        .then("transform", transform)
        // `load` learns what `transform` kept when it starts, from its state.
        .then_with("load", load, |load, (_, kept): &(u64, Kept)| {
            load.handler_mut().expected = kept.clone();
            Ok(())
        });

    let mut runner = Runner::new(args.job, job)
        .store_url(&args.store)
        .checkpoint(Every::chunks(args.every_chunks).or_seconds(args.every_secs))
        .grace(grace)
        .codec(match args.codec {
            CodecArg::Bincode => Codec::Bincode,
            CodecArg::Json => Codec::Json,
        });
    if let Some(secs) = args.max_runtime {
        let limit = Duration::try_from_secs_f64(secs)
            .map_err(|e| anyhow::anyhow!("bad --max-runtime {secs}: {e}"))?;
        runner = runner.max_runtime(limit);
    }
    Ok(runner.run().await.exit_code())
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    // First: from here on SIGTERM and SIGINT are stop requests.
    let shutdown = spotbatch::shutdown::listen();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let shutdown = shutdown.interrupted_exit_code(args.interrupted_exit_code);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(shutdown, args))
}
