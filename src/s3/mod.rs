//! The S3 checkpoint store (feature `s3`): checkpoints as S3
//! objects, compare-and-swap by conditional writes (`If-None-Match: *` to
//! create, `If-Match: <ETag>` to replace).
//!
//! ```no_run
//! use spotbatch::prelude::*;
//! use spotbatch::s3::S3Store;
//! # struct MyJob;
//! # #[async_trait]
//! # impl Job for MyJob {
//! #     type Cursor = u64;
//! #     type State = ();
//! #     async fn next_chunk(&mut self, _: &u64) -> Result<Option<Chunk<u64>>> { Ok(None) }
//! #     async fn process(&mut self, _: &Chunk<u64>, _: &mut (), _: &ChunkContext) -> Result<()> { Ok(()) }
//! # }
//!
//! #[tokio::main]
//! async fn main() -> Result<std::process::ExitCode> {
//!     // Region and credentials from the default chain: on ECS, the task role.
//!     let store = S3Store::from_url("s3://my-bucket/checkpoints").await?;
//!     let report = Runner::new("nightly-etl", MyJob)
//!         .store(store)
//!         .grace_secs(115)
//!         .run()
//!         .await;
//!     Ok(report.exit_code())
//! }
//! ```
//!
//! For an S3-compatible server (MinIO, Ceph, SeaweedFS), set the endpoint and
//! path-style addressing in code ([`S3StoreBuilder`]) or in the environment
//! ([the variables][guide]). [`S3Store`] states the compare-and-swap
//! protocol, key encoding and error mapping; the guide has the IAM policy
//! the store needs.
//!
//! [guide]: https://github.com/spotbatch/spotbatch/blob/main/docs/stores.md#s3-feature-s3
//!
//! # Sources and sinks
//!
//! - [`ListingSource`]: every object under a prefix, as a
//!   [`Source`](crate::source::Source) whose cursor is the last key done.
//! - [`MultipartSink`]: one object written by a multipart upload that
//!   survives the process, its state ([`MultipartState`]) in the job's.
//! - [`S3Object`](crate::source::S3Object): one object as the input of a
//!   CSV or JSON Lines source.
//!
//! They take an [`aws_sdk_s3::Client`]; [`S3StoreBuilder::client`] builds
//! one as the store's. The guide's [S3 section][s3-guide] says what each
//! guarantees across SIGTERM and SIGKILL.
//!
//! [s3-guide]: https://github.com/spotbatch/spotbatch/blob/main/docs/sources.md#s3-listings-and-multipart-output
//!
//! # Features
//!
//! - `sso`: credentials from AWS IAM Identity Center (SSO) profiles, for
//!   running jobs from a developer's machine. Off by default (it adds `ring`);
//!   tasks on AWS get credentials from their role without it.

mod builder;
mod error;
mod list;
mod listing;
mod metadata;
mod names;
mod object_error;
mod sink;
mod store;
mod url;

pub use builder::{
    S3StoreBuilder, ServerSideEncryption, ENV_FORCE_PATH_STYLE, ENV_SSE, ENV_SSE_KMS_KEY_ID,
};
pub use listing::{ListedObject, ListingCursor, ListingSource};
pub use object_error::ObjectError;
pub use sink::{MultipartSink, MultipartState, Part};
pub use store::S3Store;

/// The AWS SDK crates this store is built on, so callers can build a client
/// for [`S3Store::new`] with matching versions.
pub use aws_config;
pub use aws_sdk_s3;
