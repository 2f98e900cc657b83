//! The quickstart job (`examples/quickstart.rs` at the workspace root, the
//! same file) with its checkpoints in S3.
//!
//! ```text
//! cargo run -p spotbatch-s3 --example s3_quickstart -- --store s3://my-bucket/ckpt --work-us 20
//! # an S3-compatible server:
//! AWS_ENDPOINT_URL_S3=http://127.0.0.1:9000 SPOTBATCH_S3_FORCE_PATH_STYLE=true \
//!   cargo run -p spotbatch-s3 --example s3_quickstart -- --store s3://my-bucket/ckpt
//! ```
//!
//! Ctrl-C it (or `kill -TERM`, or `kill -KILL`) and run it again: it resumes
//! from the checkpoint in the bucket, and the output file ends up the same.

#[path = "../../../examples/quickstart.rs"]
mod quickstart;

use clap::Parser;
use spotbatch_s3::S3Store;

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    quickstart::init_logging();
    let args = quickstart::Args::parse();
    let store = S3Store::from_url(&args.store).await?;
    quickstart::run(args, std::sync::Arc::new(store)).await
}
