//! Building an [`S3Store`]: where the bucket is and how to talk to it.

use std::time::Duration;

use crate::Error;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use tracing::debug;

use crate::s3::url::{check_bucket, normalize_prefix, parse};
use crate::s3::S3Store;

/// `true`/`false` (also `1`/`0`, `yes`/`no`): address buckets as
/// `https://endpoint/bucket/key` instead of `https://bucket.endpoint/key`.
pub const ENV_FORCE_PATH_STYLE: &str = "SPOTBATCH_S3_FORCE_PATH_STYLE";
/// `AES256` (SSE-S3) or `aws:kms` (SSE-KMS): encryption requested on every save.
pub const ENV_SSE: &str = "SPOTBATCH_S3_SSE";
/// The KMS key (id, ARN or alias) for `aws:kms`; without it, the account's
/// default `aws/s3` key is used.
pub const ENV_SSE_KMS_KEY_ID: &str = "SPOTBATCH_S3_SSE_KMS_KEY_ID";

/// The region used when none is configured but an endpoint override is (an
/// S3-compatible server such as MinIO, Ceph or SeaweedFS usually ignores it).
const FALLBACK_REGION: &str = "us-east-1";

/// Server-side encryption requested on every checkpoint the store writes.
///
/// Buckets usually encrypt by default (SSE-S3 on AWS since January 2023);
/// set this to require a specific kind, e.g. when a bucket policy denies
/// `PutObject` without `x-amz-server-side-encryption: aws:kms`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSideEncryption {
    /// SSE-S3: keys managed by S3 (`AES256`).
    S3,
    /// SSE-KMS: keys in AWS KMS (`aws:kms`). The task also needs
    /// `kms:GenerateDataKey` (save) and `kms:Decrypt` (load) on the key.
    Kms {
        /// The key id, ARN or alias; `None` for the account's `aws/s3` key.
        key_id: Option<String>,
    },
}

/// Builds an [`S3Store`] with its own S3 client.
///
/// Region and credentials come from the AWS default provider chain
/// (environment, `~/.aws` profiles, web identity / IRSA, the ECS task role,
/// the EC2 instance profile), so a task on ECS needs no configuration. An
/// endpoint override comes from [`endpoint_url`](Self::endpoint_url) or, as
/// for every AWS SDK, from `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`.
/// Settings made in code win over the environment ([`ENV_FORCE_PATH_STYLE`],
/// [`ENV_SSE`], [`ENV_SSE_KMS_KEY_ID`]).
///
/// Defaults: connect timeout 3 s, 10 s per attempt, 30 s per operation
/// (retries included), 3 attempts with the SDK's standard exponential backoff
/// from 1 s. A hung request therefore never holds a periodic checkpoint for
/// more than 30 s; the final checkpoint is bounded by the runner's grace
/// period as well.
///
/// ```no_run
/// # async fn f() -> Result<(), spotbatch::Error> {
/// use std::time::Duration;
/// use spotbatch::s3::{S3StoreBuilder, ServerSideEncryption};
///
/// let store = S3StoreBuilder::from_url("s3://my-bucket/checkpoints")?
///     .endpoint_url("http://127.0.0.1:9000") // MinIO, Ceph, SeaweedFS…
///     .force_path_style(true)
///     .server_side_encryption(ServerSideEncryption::Kms { key_id: Some("alias/batch".into()) })
///     .operation_timeout(Duration::from_secs(20))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `.build().await`"]
pub struct S3StoreBuilder {
    bucket: String,
    prefix: String,
    url: Option<String>,
    endpoint_url: Option<String>,
    force_path_style: Option<bool>,
    region: Option<String>,
    sse: Option<ServerSideEncryption>,
    connect_timeout: Duration,
    attempt_timeout: Duration,
    operation_timeout: Duration,
    max_attempts: u32,
    initial_backoff: Duration,
}

impl S3StoreBuilder {
    /// A store in `bucket`, with checkpoints under `prefix` (may be empty; a
    /// trailing `/` is added). Checked by [`build`](Self::build).
    pub fn new(bucket: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            prefix: prefix.into(),
            url: None,
            endpoint_url: None,
            force_path_style: None,
            region: None,
            sse: None,
            connect_timeout: Duration::from_secs(3),
            attempt_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(30),
            max_attempts: 3,
            initial_backoff: Duration::from_secs(1),
        }
    }

    /// A store at `s3://bucket` or `s3://bucket/prefix`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the URL when it is not of that form, the
    /// bucket name is invalid, or the prefix has empty, `.` or `..` segments.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let parsed = parse(url)?;
        let mut builder = Self::new(parsed.bucket, parsed.prefix);
        builder.url = Some(url.to_owned());
        Ok(builder)
    }

    /// Sends requests to this endpoint instead of AWS's, e.g.
    /// `http://127.0.0.1:9000`. Overrides `AWS_ENDPOINT_URL_S3`.
    pub fn endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
        self
    }

    /// Path-style addressing (`endpoint/bucket/key`), which most
    /// S3-compatible servers need. Overrides [`ENV_FORCE_PATH_STYLE`].
    pub fn force_path_style(mut self, force: bool) -> Self {
        self.force_path_style = Some(force);
        self
    }

    /// The region, instead of the one from the provider chain (`AWS_REGION`,
    /// the profile, the ECS/EC2 metadata).
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Encryption requested on every save. Overrides [`ENV_SSE`].
    pub fn server_side_encryption(mut self, sse: ServerSideEncryption) -> Self {
        self.sse = Some(sse);
        self
    }

    /// Time allowed to open a connection (default 3 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time allowed for one attempt of a request (default 10 s).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Time allowed for a request, all its retries included (default 30 s).
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Attempts per request, the first included (default 3; 1 disables the
    /// SDK's retries). Throttling, 5xx and transport errors are retried.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The first retry's backoff, doubling (with jitter) for each later one (default 1 s).
    pub fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// Loads the AWS configuration (default provider chain) and builds the store.
    ///
    /// Nothing is sent to S3 yet: credentials are fetched on the first request.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the URL (or bucket) when the bucket or prefix
    /// is invalid, or naming the variable when one of the `SPOTBATCH_S3_*`
    /// variables has a bad value.
    pub async fn build(self) -> Result<S3Store, Error> {
        let place = self.place();
        let bad = |reason: String| Error::Config(format!("bad S3 store {place:?}: {reason}"));
        check_bucket(&self.bucket).map_err(bad)?;
        let prefix = normalize_prefix(&self.prefix).map_err(bad)?;
        let sse = match &self.sse {
            Some(sse) => Some(sse.clone()),
            None => env_sse()?,
        };
        let client = self.client().await?;
        let mut store = S3Store::new(client, self.bucket, prefix);
        if let Some(sse) = sse {
            store = store.with_server_side_encryption(sse);
        }
        debug!(store = %crate::CheckpointStore::location(&store), "S3 store ready");
        Ok(store)
    }

    /// Loads the AWS configuration (default provider chain) and builds only
    /// the S3 client, with this builder's endpoint, addressing, region,
    /// timeouts and retries: the client the [`MultipartSink`](crate::s3::MultipartSink)
    /// and [`ListingSource`](crate::s3::ListingSource) of this module take.
    /// The bucket and prefix are not used.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the variable when
    /// [`ENV_FORCE_PATH_STYLE`] has a bad value.
    pub async fn client(&self) -> Result<aws_sdk_s3::Client, Error> {
        let force_path_style = match self.force_path_style {
            Some(force) => Some(force),
            None => env_bool(ENV_FORCE_PATH_STYLE)?,
        };
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(self.connect_timeout)
                    .operation_attempt_timeout(self.attempt_timeout)
                    .operation_timeout(self.operation_timeout)
                    .build(),
            )
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(self.max_attempts)
                    .with_initial_backoff(self.initial_backoff),
            );
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let shared = loader.load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared);
        if let Some(url) = &self.endpoint_url {
            config = config.endpoint_url(url.clone());
        }
        if let Some(force) = force_path_style {
            config = config.force_path_style(force);
        }
        let endpoint_overridden = self.endpoint_url.is_some()
            || ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
                .iter()
                .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
        if shared.region().is_none() && endpoint_overridden {
            debug!(
                region = FALLBACK_REGION,
                "no AWS region configured; using the fallback for the endpoint override"
            );
            config = config.region(Region::new(FALLBACK_REGION));
        }
        debug!(place = %self.place(), ?force_path_style, "S3 client ready");
        Ok(aws_sdk_s3::Client::from_conf(config.build()))
    }

    /// The URL the builder was made from, or `s3://bucket/prefix`.
    fn place(&self) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| format!("s3://{}/{}", self.bucket, self.prefix))
    }
}

fn env_bool(name: &str) -> Result<Option<bool>, Error> {
    let Ok(value) = std::env::var(name) else {
        return Ok(None);
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "" => Ok(None),
        "true" | "1" | "yes" => Ok(Some(true)),
        "false" | "0" | "no" => Ok(Some(false)),
        _ => Err(Error::Config(format!(
            "bad {name}={value:?}: expected true or false"
        ))),
    }
}

fn env_sse() -> Result<Option<ServerSideEncryption>, Error> {
    let key_id = std::env::var(ENV_SSE_KMS_KEY_ID)
        .ok()
        .filter(|k| !k.trim().is_empty());
    let kind = std::env::var(ENV_SSE).unwrap_or_default();
    match kind.trim() {
        "" if key_id.is_some() => Ok(Some(ServerSideEncryption::Kms { key_id })),
        "" => Ok(None),
        k if k.eq_ignore_ascii_case("AES256") => {
            if key_id.is_some() {
                return Err(Error::Config(format!(
                    "{ENV_SSE_KMS_KEY_ID} is set but {ENV_SSE}=AES256 (SSE-S3) takes no key"
                )));
            }
            Ok(Some(ServerSideEncryption::S3))
        }
        k if k.eq_ignore_ascii_case("aws:kms") => Ok(Some(ServerSideEncryption::Kms { key_id })),
        _ => Err(Error::Config(format!(
            "bad {ENV_SSE}={kind:?}: expected AES256 (SSE-S3) or aws:kms (SSE-KMS)"
        ))),
    }
}
