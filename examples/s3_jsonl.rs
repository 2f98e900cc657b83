//! JSON Lines from S3 to one S3 object, exactly once across SIGTERM and SIGKILL.
//!
//! Every object under `--input` is listed in key order
//! ([`ListingSource`]: the cursor is the last key done, one object per chunk
//! by default), its JSON values read ([`JsonLinesSource`] over an
//! [`S3Object`]), and each value written to `--output`, wrapped with where it
//! came from (its object's key, and its number in the object from 0):
//!
//! ```text
//! {"record":7,"source":"in/2024-06-01.jsonl","value":{…the input value…}}
//! ```
//!
//! (blank lines are skipped; a line that is not JSON fails the job, naming
//! the object and the line). The output is a single object, written by a
//! [`MultipartSink`] whose upload rides in the checkpoints: however often the
//! job is stopped or killed, the object that appears when the job completes
//! holds each input value exactly once, in key and line order, byte for byte
//! what an uninterrupted run writes.
//!
//! ```text
//! # sample inputs, then the job; Ctrl-C it (or kill -9 it) and run it again
//! cargo run --features s3 --example s3_jsonl -- --input s3://my-bucket/in/ --output s3://my-bucket/out/all.jsonl --make-inputs 50
//! cargo run --features s3 --example s3_jsonl -- --input s3://my-bucket/in/ --output s3://my-bucket/out/all.jsonl --work-ms 200
//! ```
//!
//! For an S3-compatible server, set `AWS_ENDPOINT_URL_S3` and
//! `SPOTBATCH_S3_FORCE_PATH_STYLE=true` as for the store.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde::{Deserialize, Serialize};
use spotbatch::prelude::*;
use spotbatch::s3::aws_sdk_s3::primitives::ByteStream;
use spotbatch::s3::aws_sdk_s3::Client;
use spotbatch::s3::{ListedObject, ListingCursor, ListingSource, MultipartSink, MultipartState};
use spotbatch::source::{
    Batch, FilePosition, Handler, JsonLinesSource, Limit, S3Object, Source, SourceJob,
};

#[derive(Parser)]
#[command(about = "Copies every JSON Lines object under a prefix into one object, exactly once")]
struct Args {
    /// The inputs: every object under this prefix, `s3://bucket/prefix`.
    #[arg(long)]
    input: String,
    /// The output object, `s3://bucket/key`; it must not exist yet (see --overwrite).
    #[arg(long)]
    output: String,
    /// Checkpoint store URL.
    #[arg(long, env = "SPOTBATCH_STORE", default_value = "file://.spotbatch")]
    store: String,
    /// Job key in the store.
    #[arg(long, default_value = "s3-jsonl")]
    job: String,
    /// Input objects per chunk.
    #[arg(long, default_value_t = 1)]
    objects_per_chunk: u64,
    /// Output part size in MiB (S3: at least 5).
    #[arg(long, default_value_t = 8)]
    part_size_mib: u64,
    /// Checkpoint after this many chunks…
    #[arg(long, default_value_t = 10)]
    every_chunks: u64,
    /// …or this many seconds, whichever comes first.
    #[arg(long, default_value_t = 5)]
    every_secs: u64,
    /// Simulated work per input object, in milliseconds.
    #[arg(long, default_value_t = 0)]
    work_ms: u64,
    /// Grace period in seconds: time from SIGTERM to the platform's SIGKILL.
    #[arg(long, default_value_t = 30.0)]
    grace: f64,
    /// Exit code of an interrupted run (75 for AWS Batch / Kubernetes retries).
    #[arg(long, default_value_t = 0)]
    interrupted_exit_code: u8,
    /// Start over even if the job completed (with --overwrite, to replace its output).
    #[arg(long)]
    restart: bool,
    /// Replace the output object if it exists.
    #[arg(long)]
    overwrite: bool,
    /// Instead of running the job, write this many sample input objects and exit.
    #[arg(long)]
    make_inputs: Option<u32>,
    /// Lines per sample input object (with --make-inputs).
    #[arg(long, default_value_t = 1000)]
    lines: u32,
}

/// What rides in each checkpoint besides the listing's cursor.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Progress {
    /// The output's upload.
    out: MultipartState,
    /// Input values copied.
    records: u64,
}

/// The handler: reads each listed object and writes its values, wrapped.
struct Wrap {
    client: Client,
    bucket: String,
    out: MultipartSink,
    work: Duration,
}

#[async_trait]
impl Handler<ListingSource> for Wrap {
    type State = Progress;

    async fn resume(&mut self, _: &ListingCursor, progress: &Progress) -> Result<()> {
        Ok(self.out.resume(&progress.out).await?) // continue the checkpoint's upload
    }

    async fn handle(
        &mut self,
        batch: Batch<ListingSource>,
        progress: &mut Progress,
        ctx: &ChunkContext,
    ) -> Result<()> {
        for object in batch.records() {
            if !self.work.is_zero() {
                ctx.cancellable(tokio::time::sleep(self.work)).await?;
            }
            progress.records += self.copy(object).await?;
        }
        progress.out = self.out.mark(); // the output this chunk's checkpoint covers
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        Ok(self.out.flush().await?)
    }

    async fn complete(&mut self, _: &ListingCursor, _: &mut Progress) -> Result<()> {
        Ok(self.out.complete().await?) // the output object appears
    }
}

impl Wrap {
    /// Copies one object's values to the output; returns how many.
    async fn copy(&mut self, object: &ListedObject) -> Result<u64> {
        // The object's values, read by ranged GETs pinned to its listed ETag:
        // an object replaced since it was listed fails the job, naming it.
        let mut input = S3Object::new(self.client.clone(), &self.bucket, &object.key);
        if let Some(e_tag) = &object.e_tag {
            input = input.if_match(e_tag);
        }
        let mut values = JsonLinesSource::<serde_json::Value>::new(input);
        let mut at = FilePosition::default();
        while let Some(batch) = values.next_batch(&at, Limit::bytes(4 << 20)).await? {
            let first = at.record;
            let (records, next) = batch.into_parts();
            for (i, value) in (first..).zip(records) {
                let wrapped =
                    serde_json::json!({ "source": object.key, "record": i, "value": value });
                self.out.write_line(&wrapped.to_string()).await?;
            }
            at = next;
        }
        Ok(at.record)
    }
}

/// Writes `count` sample JSON Lines objects under the input prefix.
async fn make_inputs(source: &ListingSource, count: u32, lines: u32) -> anyhow::Result<()> {
    for n in 0..count {
        let mut body = String::new();
        for i in 0..lines {
            let value = serde_json::json!({ "object": n, "i": i, "text": format!("record {i} of object {n}") });
            body.push_str(&value.to_string());
            body.push('\n');
        }
        let key = format!("{}{n:05}.jsonl", source.prefix());
        source
            .client()
            .put_object()
            .bucket(source.bucket())
            .key(&key)
            .body(ByteStream::from(body.into_bytes()))
            .send()
            .await
            .with_context(|| format!("writing s3://{}/{key}", source.bucket()))?;
    }
    println!(
        "wrote {count} objects of {lines} lines under {}",
        source.url()
    );
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    // The exit code of a stop, before the run or during it.
    let shutdown = shutdown.interrupted_exit_code(args.interrupted_exit_code);
    let grace = Duration::try_from_secs_f64(args.grace)
        .map_err(|e| anyhow::anyhow!("bad --grace {}: {e}", args.grace))?;
    // Finding the credentials and region can take a while: a stop gives it up.
    let preparing = async {
        let source = ListingSource::from_url(&args.input).await?;
        let out = MultipartSink::from_url(&args.output).await?;
        anyhow::Ok((source, out))
    };
    let (source, out) = match shutdown.interruptible(preparing).await {
        Ok(ready) => ready?,
        Err(stopped) => return Ok(stopped.exit_code()),
    };
    if let Some(count) = args.make_inputs {
        make_inputs(&source, count, args.lines).await?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let handler = Wrap {
        client: source.client().clone(),
        bucket: source.bucket().to_owned(),
        out: out
            .part_size(args.part_size_mib << 20)
            .overwrite(args.overwrite)
            .content_type("application/jsonl"),
        work: Duration::from_millis(args.work_ms),
    };
    let job = SourceJob::new(source, handler).limit(Limit::records(args.objects_per_chunk));
    let mut runner = Runner::new(args.job, job)
        .store_url(&args.store)
        .checkpoint(Every::chunks(args.every_chunks).or_seconds(args.every_secs))
        .grace(grace);
    if args.restart {
        runner = runner.restart();
    }
    Ok(runner.run().await.exit_code())
}
