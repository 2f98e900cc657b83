//! Batch jobs that survive interruption.
//!
//! You write a [`Job`] that cuts its work into chunks; a [`Runner`] drives
//! the chunks, saves the job's cursor and state to a [`CheckpointStore`] as it
//! goes, and on SIGTERM finishes the chunk in hand, writes a final checkpoint
//! and returns, so the next run resumes where this one stopped.
//!
//! ```no_run
//! use spotbatch::prelude::*;
//!
//! struct Squares { records: u64, out: FileSink }
//!
//! #[async_trait]
//! impl Job for Squares {
//!     type Cursor = u64; // the next record to do
//!     type State = u64;  // bytes of output the cursor covers
//!
//!     async fn resume(&mut self, _next: &u64, out_len: &u64) -> Result<()> {
//!         Ok(self.out.truncate(*out_len).await?) // cut what a killed run wrote past the checkpoint
//!     }
//!     async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
//!         Ok((*at < self.records).then(|| Chunk::between(*at, (*at + 1000).min(self.records))))
//!     }
//!     async fn process(&mut self, chunk: &Chunk<u64>, out_len: &mut u64, _: &ChunkContext) -> Result<()> {
//!         for i in chunk.range() {
//!             self.out.write_line(&(i * i).to_string()).await?;
//!         }
//!         *out_len = self.out.len();
//!         Ok(())
//!     }
//!     async fn flush(&mut self) -> Result<()> {
//!         Ok(self.out.flush().await?) // runs before every checkpoint
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<std::process::ExitCode> {
//!     let shutdown = spotbatch::shutdown::listen(); // first: from here on SIGTERM is a stop request
//!     tracing_subscriber::fmt().init(); // the runner's log lines, info and above
//!     let out = match shutdown.interruptible(FileSink::open("squares.txt")).await {
//!         Ok(out) => out?,
//!         Err(stopped) => return Ok(stopped.exit_code()), // stopped before the run: nothing done
//!     };
//!     let report = Runner::new("squares", Squares { records: 1_000_000, out })
//!         .store_url(std::env::var("SPOTBATCH_STORE").unwrap_or_else(|_| "file://.spotbatch".into()))
//!         .checkpoint(Every::chunks(100).or_seconds(5))
//!         .grace_secs(115) // ECS stopTimeout 120, minus 5 s
//!         .run()
//!         .await;
//!     Ok(report.exit_code())
//! }
//! ```
//!
//! It logs through `tracing` (here to stdout, with `tracing-subscriber`) and
//! takes its store from `SPOTBATCH_STORE` ([stores][stores]).
//!
//! # Modules
//!
//! What a first job needs is at the crate root and in the [`prelude`]. The
//! rest is grouped by module: [`shutdown`] (stop signals heard from the
//! first line of `main`, stop sources), [`store`] (the [`CheckpointStore`]
//! contract, the file and memory stores, [`open_store`]), [`checkpoint`] (the
//! envelope a store holds), [`sink`] (exactly-once file output), [`source`]
//! (resumable sources and [`SourceJob`](source::SourceJob)), [`steps`]
//! (a job of named steps run in order), [`partition`]
//! (one job cut into partitions, run by many tasks), and, behind their
//! features, [`s3`](crate#features) and [`postgres`](crate#features) stores
//! and [`aws`](crate#features) platform integration.
//! The items used most are also re-exported at the root.
//!
//! # Features
//!
//! None is on by default: a default build compiles neither the AWS SDK, hyper nor sqlx.
//!
//! | feature | adds |
//! |---|---|
//! | `s3` | `spotbatch::s3`: the S3 store (aws-sdk-s3, aws-config); `s3://` URLs; the listing source and the multipart sink |
//! | `sso` | with `s3`: AWS IAM Identity Center profiles, for jobs run from a laptop |
//! | `postgres` | `spotbatch::postgres`: the PostgreSQL store and shared transactions (sqlx); `postgres://` URLs |
//! | `aws` | `spotbatch::aws`: EC2 Spot notices through the AWS SDK's IMDS client, the ECS task ARN recorded as the checkpoints' writer (aws-config, hyper) |
//! | `conformance` | `spotbatch::conformance`: the suite every store passes, for stores written elsewhere |
//!
//! # The guide
//!
//! The [README][readme] states the guarantees; the guide, in reading order:
//! [writing a job][jobs], [shutdown and exit codes][shutdown],
//! [stores][stores], [deploying][deploying], [sources, sinks and steps][sources],
//! [scaling out][scaling-out], [the `spotbatch` command][cli],
//! [benchmarks][benchmarks].
//!
//! [readme]: https://github.com/spotbatch/spotbatch/blob/main/README.md
//! [jobs]: https://github.com/spotbatch/spotbatch/blob/main/docs/jobs.md
//! [shutdown]: https://github.com/spotbatch/spotbatch/blob/main/docs/shutdown.md
//! [stores]: https://github.com/spotbatch/spotbatch/blob/main/docs/stores.md
//! [deploying]: https://github.com/spotbatch/spotbatch/blob/main/docs/deploying.md
//! [sources]: https://github.com/spotbatch/spotbatch/blob/main/docs/sources.md
//! [scaling-out]: https://github.com/spotbatch/spotbatch/blob/main/docs/scaling-out.md
//! [cli]: https://github.com/spotbatch/spotbatch/blob/main/docs/cli.md
//! [benchmarks]: https://github.com/spotbatch/spotbatch/blob/main/docs/benchmarks.md

pub mod checkpoint;
mod codec;
pub mod concurrent;
mod error;
mod exit;
mod job;
mod key;
pub mod partition;
mod policy;
mod process;
mod retry;
mod runner;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod steps;
pub mod store;
mod types;

#[cfg(feature = "aws")]
#[cfg_attr(docsrs, doc(cfg(feature = "aws")))]
pub mod aws;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "s3")]
#[cfg_attr(docsrs, doc(cfg(feature = "s3")))]
pub mod s3;

// Lets doc links and the stores' code name the crate by its name.
extern crate self as spotbatch;

pub use async_trait::async_trait;
#[cfg(feature = "aws")]
#[cfg_attr(docsrs, doc(cfg(feature = "aws")))]
pub use aws::{Ec2SpotNotices, EcsTask, ECS_METADATA_VAR};
pub use checkpoint::{
    Checkpoint, CheckpointError, Counters, Lease, RunRecord, SkippedChunk, Status, StepInfo, Writer,
};
pub use codec::{Codec, CodecError};
pub use error::{BoxError, Error, FailureKind};
pub use exit::{ExitCodes, Outcome, Report, RunStats};
pub use job::{transient, Cancelled, Chunk, ChunkContext, ChunkPanicked, Job, Transient};
pub use key::{InvalidKey, JobKey};
pub use policy::{CheckpointPolicy, Every, RetryPolicy, SkipPolicy};
pub use runner::{Runner, DEFAULT_STORE_DIR};
pub use shutdown::{InterruptSource, Signal, StopRequest, StopSource};
pub use sink::FileSink;
pub use store::{
    open_existing_store, open_store, redact_url, CheckpointStore, FileStore, Listing, MemoryStore,
    Refusal, StoreError, Summary,
};
pub use types::{TraceError, TypeDescription};

/// Everything a first job needs, in one import.
pub mod prelude {
    pub use crate::{
        async_trait, transient, BoxError, Chunk, ChunkContext, Codec, Every, ExitCodes, FileSink,
        Job, Outcome, RetryPolicy, Runner, Signal, SkipPolicy,
    };

    /// `Result` with [`BoxError`] as the default error: any error converts with `?`.
    pub type Result<T, E = crate::BoxError> = std::result::Result<T, E>;
}
