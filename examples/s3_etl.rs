//! An ETL job over S3: one result object per input object, checkpointed to S3.
//!
//! Every object under `--input` is read, transformed (here: upper-cased, with
//! a header line giving its size) and written under `--output` with the same
//! name. A chunk is one ListObjectsV2 page, and the cursor is the page's
//! continuation token, so a resumed run lists from where the last checkpoint
//! stood. Results are written with `If-None-Match: *`: when a chunk is redone
//! after a hard kill, the results its first attempt wrote are found in place
//! (412) and skipped, so every result is written exactly once.
//!
//! ```text
//! # a bucket with 200 sample inputs, then the job; Ctrl-C it and run it again
//! cargo run --features s3 --example s3_etl -- --bucket my-bucket --make-inputs 200
//! cargo run --features s3 --example s3_etl -- --bucket my-bucket --work-ms 50
//! ```
//!
//! For an S3-compatible server, set `AWS_ENDPOINT_URL_S3` and
//! `SPOTBATCH_S3_FORCE_PATH_STYLE=true` as for the store.

use std::time::Duration;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use clap::Parser;
use serde::{Deserialize, Serialize};
use spotbatch::prelude::*;
use spotbatch::s3::S3Store;
use tracing::{debug, info};

#[derive(Parser)]
#[command(about = "Transforms every object under a prefix, checkpointing to S3")]
struct Args {
    /// The bucket holding inputs, results and (by default) checkpoints.
    #[arg(long)]
    bucket: String,
    /// Prefix of the input objects.
    #[arg(long, default_value = "etl/input/")]
    input: String,
    /// Prefix of the result objects.
    #[arg(long, default_value = "etl/output/")]
    output: String,
    /// Checkpoint store URL (default: s3://BUCKET/etl/checkpoints).
    #[arg(long, env = "SPOTBATCH_STORE")]
    store: Option<String>,
    /// Job key in the store.
    #[arg(long, default_value = "s3-etl")]
    job: String,
    /// Objects per chunk (one ListObjectsV2 page).
    #[arg(long, default_value_t = 10)]
    page_size: i32,
    /// Simulated work per object, in milliseconds.
    #[arg(long, default_value_t = 0)]
    work_ms: u64,
    /// Grace period in seconds: time from SIGTERM to the platform's SIGKILL.
    #[arg(long, default_value_t = 30.0)]
    grace: f64,
    /// Exit code of an interrupted run (75 for AWS Batch / Kubernetes retries).
    #[arg(long, default_value_t = 0)]
    interrupted_exit_code: u8,
    /// Instead of running the job, write this many sample input objects and exit.
    #[arg(long)]
    make_inputs: Option<u32>,
}

/// Where the job stands: a ListObjectsV2 continuation token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
enum Cursor {
    /// The first page.
    #[default]
    Start,
    /// The page this continuation token opens.
    After(String),
    /// Every page is done.
    Done,
}

/// Totals carried in the checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Totals {
    written: u64,
    already_there: u64,
}

struct Etl {
    client: Client,
    bucket: String,
    input: String,
    output: String,
    page_size: i32,
    work: Duration,
    /// The input keys of the chunk `next_chunk` planned last.
    page: Vec<String>,
}

#[async_trait]
impl Job for Etl {
    type Cursor = Cursor;
    type State = Totals;

    async fn next_chunk(&mut self, at: &Cursor) -> Result<Option<Chunk<Cursor>>> {
        let token = match at {
            Cursor::Start => None,
            Cursor::After(token) => Some(token.clone()),
            Cursor::Done => return Ok(None),
        };
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.input)
            .max_keys(self.page_size)
            .set_continuation_token(token)
            .send()
            .await?;
        self.page = page
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect();
        let next = match page.next_continuation_token() {
            Some(token) if page.is_truncated() == Some(true) => Cursor::After(token.to_owned()),
            _ => Cursor::Done,
        };
        if self.page.is_empty() && next == Cursor::Done {
            return Ok(None);
        }
        let items = self.page.len() as u64;
        Ok(Some(Chunk::new(at.clone(), next).with_items(items)))
    }

    async fn process(
        &mut self,
        _chunk: &Chunk<Cursor>,
        totals: &mut Totals,
        ctx: &ChunkContext,
    ) -> Result<()> {
        for input in &self.page {
            if !self.work.is_zero() {
                ctx.cancellable(tokio::time::sleep(self.work)).await?;
            }
            let name = input.strip_prefix(&self.input).unwrap_or(input);
            let output = format!("{}{name}", self.output);
            let body = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(input)
                .send()
                .await?
                .body
                .collect()
                .await?
                .into_bytes();
            let result = transform(name, &body);
            let put = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&output)
                .if_none_match("*")
                .body(ByteStream::from(result))
                .send()
                .await;
            match put {
                Ok(_) => totals.written += 1,
                // Written by a run that was killed before its checkpoint.
                Err(e) if e.code() == Some("PreconditionFailed") => {
                    debug!(%output, "result already there");
                    totals.already_there += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// The result for one input: a header line, then the input upper-cased.
fn transform(name: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{name}\t{} bytes\n", body.len()).into_bytes();
    out.extend(body.to_ascii_uppercase());
    out
}

async fn make_inputs(client: &Client, args: &Args, count: u32) -> anyhow::Result<()> {
    for i in 0..count {
        client
            .put_object()
            .bucket(&args.bucket)
            .key(format!("{}{i:05}.txt", args.input))
            .body(ByteStream::from(
                format!("record {i}\nhello from input {i}\n").into_bytes(),
            ))
            .send()
            .await?;
    }
    info!(count, bucket = %args.bucket, prefix = %args.input, "sample inputs written");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    // First: from here on SIGTERM and SIGINT are stop requests.
    let shutdown = spotbatch::shutdown::listen();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    // The exit code of a stop, before the run or during it.
    let shutdown = shutdown.interrupted_exit_code(args.interrupted_exit_code);
    anyhow::ensure!(args.page_size > 0, "--page-size must be at least 1");
    let url = args
        .store
        .clone()
        .unwrap_or_else(|| format!("s3://{}/etl/checkpoints", args.bucket));
    // The job's own requests use the store's client: same region, endpoint
    // and credentials. Finding them can take a while: a stop gives it up.
    let store = match shutdown.interruptible(S3Store::from_url(&url)).await {
        Ok(store) => store?,
        Err(stopped) => return Ok(stopped.exit_code()),
    };
    let client = store.client().clone();
    if let Some(count) = args.make_inputs {
        make_inputs(&client, &args, count).await?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let grace = Duration::try_from_secs_f64(args.grace)
        .map_err(|e| anyhow::anyhow!("bad --grace {}: {e}", args.grace))?;
    let job = Etl {
        client,
        bucket: args.bucket,
        input: args.input,
        output: args.output,
        page_size: args.page_size,
        work: Duration::from_millis(args.work_ms),
        page: Vec::new(),
    };
    let report = Runner::new(args.job, job)
        .store(store)
        .checkpoint(Every::chunk())
        .grace(grace)
        .run()
        .await;
    Ok(report.exit_code())
}
