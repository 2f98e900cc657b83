//! The store: one object per job, compare-and-swap by S3 conditional writes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{Checkpoint, CheckpointError, CheckpointStore, Error, JobKey, Listing, StoreError};
use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption as SdkSse;
use aws_sdk_s3::Client;
use tracing::{debug, warn};

use crate::retry::Backoff;
use crate::s3::builder::{S3StoreBuilder, ServerSideEncryption};
use crate::s3::error::{classify, Failure, S3Error};
use crate::s3::metadata;
use crate::s3::names::{object_name, SUFFIX};

/// Conditional requests per save or delete before giving up (each refusal is
/// followed by a re-read; only 409s and an object that keeps being rewritten
/// at the expected version use more than two).
const ROUNDS: u32 = 6;

/// Checkpoints as S3 objects: `s3://BUCKET/PREFIX<encoded key>.ckpt`.
///
/// Each object holds the same envelope bytes as the other stores
/// ([`Checkpoint::encode`]), so a checkpoint can be copied between stores
/// as it is, plus user metadata (`x-amz-meta-spotbatch-*`: job, version,
/// status, update time, chunks) that lets [`list`](CheckpointStore::list)
/// work without downloading every body.
///
/// # Compare-and-swap
///
/// A save that creates a job's checkpoint sends `If-None-Match: *`; one that
/// replaces version `v` sends `If-Match` with the ETag of version `v`. The
/// store remembers the ETag of the version it last loaded or saved for each
/// key, so a runner's periodic save is one `PutObject`; when it does not know
/// the ETag of `v` (another process saved it, or this store never saw it), it
/// first reads the object and checks that its version is `v`. S3 evaluates
/// the condition atomically with the write, so of many savers expecting the
/// same version exactly one succeeds; the others get
/// [`StoreError::Conflict`] naming the version they found and its writer.
///
/// - `412 Precondition Failed`: another writer won. The store re-reads the
///   object to name its version and writer in the conflict (and to tell
///   apart the two cases below).
/// - `If-Match` on a missing object: `404` on AWS, `412` on some servers; both
///   give a conflict with `found: None`.
/// - `409 ConditionalRequestConflict` (a concurrent request on the same key):
///   the store waits (from 50 ms up to 800 ms, with jitter), re-reads and
///   tries again (at most 6 requests).
/// - A request the SDK retried after it had in fact succeeded (the first
///   response was lost) finds its own bytes stored: that is a success, not a
///   conflict. Likewise, when a save of version `v + 1` failed with an error
///   but reached S3 anyway, the same run's next attempt at `v + 1` finds its
///   own earlier attempt (same writer run id, same version) and replaces it,
///   instead of fencing itself off.
/// - Deletes send `If-Match` too (`DeleteObject` honours it on AWS and on
///   SeaweedFS). A server that ignores `If-Match` on deletes leaves a race: a
///   save landing between the delete's version check and the delete is lost.
///
/// # Durability
///
/// A `PutObject` is atomic: readers see the old object or the new one, never
/// a part. When `save` returns `Ok`, S3 has stored the object durably (AWS:
/// across several availability zones); a crash of this process at any moment
/// leaves the previous checkpoint or the new one, whole. Every load verifies
/// the envelope's CRC-32 and refuses a corrupt object (or one holding another
/// job's checkpoint) with [`StoreError::Corrupt`] naming `s3://bucket/key`.
/// A save or delete over such an object reads it to compare versions, so it
/// fails the same way and leaves the object as it is.
///
/// # Key encoding
///
/// The job key's bytes are encoded as for the file store: ASCII letters,
/// digits, `-` and `_` are kept, `.` is kept except first, every other byte
/// becomes `%XX`. An encoded name longer than 200 bytes is cut and completed
/// with `~` and a UUIDv5 of the whole key. So a name never contains `/`, is
/// at most 205 bytes with its suffix (S3-compatible servers on file systems,
/// such as MinIO and SeaweedFS, allow 255 bytes per `/`-separated segment),
/// and with a prefix of at most 819 bytes every object key fits AWS's 1024.
/// The job key is always read back from inside the object.
///
/// # Errors
///
/// Transport failures, timeouts, throttling and 5xx are [`StoreError::Io`]
/// (after the SDK's retries), which the runner treats as transient: a failed
/// periodic checkpoint is logged and the run goes on; the final one is
/// retried until the grace period ends. Answers that retrying cannot change
/// are [`StoreError::Refused`], on which the runner stops at once: a bucket
/// that does not exist or is in another region
/// ([`Refusal::Location`](crate::Refusal::Location)), access denied, an
/// unknown access key or a bad signature
/// ([`Refusal::Permission`](crate::Refusal::Permission)), any other 4xx
/// ([`Refusal::Rejected`](crate::Refusal::Rejected)); the table is in
/// [the guide](https://github.com/spotbatch/spotbatch/blob/main/docs/stores.md#errors-that-retrying-cannot-fix).
///
/// # Permissions
///
/// `s3:GetObject`, `s3:PutObject`, `s3:DeleteObject` and `s3:ListBucket`
/// under the prefix: [the IAM policy](https://github.com/spotbatch/spotbatch/blob/main/docs/stores.md#iam-permissions).
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    sse: Option<ServerSideEncryption>,
    /// Per key, the version last loaded or saved through this store and its ETag.
    seen: Arc<Mutex<HashMap<JobKey, Seen>>>,
}

#[derive(Debug, Clone)]
struct Seen {
    version: u64,
    etag: String,
}

/// What a GET found: the decoded checkpoint, its bytes and its ETag.
struct Stored {
    checkpoint: Checkpoint,
    bytes: Vec<u8>,
    etag: Option<String>,
}

/// The condition of a conditional write.
#[derive(Debug)]
enum Condition {
    /// `If-None-Match: *`
    Absent,
    /// `If-Match: <etag>`
    Matches(String),
}

/// What a save does after reading the stored object.
enum Step {
    Write(Condition),
    /// The stored object already is this checkpoint.
    Done(Option<String>),
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("sse", &self.sse)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// A store in `bucket` under `prefix` (may be empty; a trailing `/` is
    /// added), using a client you configured.
    ///
    /// The bucket and prefix are not checked here (S3 refuses bad ones on
    /// the first request); [`S3StoreBuilder`] and [`from_url`](Self::from_url) check them.
    pub fn new(client: Client, bucket: impl Into<String>, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let trimmed = prefix.trim_end_matches('/');
        Self {
            client,
            bucket: bucket.into(),
            prefix: if trimmed.is_empty() {
                String::new()
            } else {
                format!("{trimmed}/")
            },
            sse: None,
            seen: Arc::default(),
        }
    }

    /// The store at `s3://bucket/prefix`, with a client configured from the
    /// default provider chain and the environment; see [`S3StoreBuilder`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the URL when it is malformed, or naming the
    /// variable when a `SPOTBATCH_S3_*` variable has a bad value.
    pub async fn from_url(url: &str) -> Result<Self, Error> {
        S3StoreBuilder::from_url(url)?.build().await
    }

    /// A builder for a store in `bucket` under `prefix`.
    pub fn builder(bucket: impl Into<String>, prefix: impl Into<String>) -> S3StoreBuilder {
        S3StoreBuilder::new(bucket, prefix)
    }

    /// Requests this server-side encryption on every save.
    #[must_use]
    pub fn with_server_side_encryption(mut self, sse: ServerSideEncryption) -> Self {
        self.sse = Some(sse);
        self
    }

    /// The S3 client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The prefix: empty, or ending with `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The object key that holds `key`'s checkpoint.
    pub fn object_key(&self, key: &JobKey) -> String {
        format!("{}{}{SUFFIX}", self.prefix, object_name(key))
    }

    pub(crate) fn url_of(&self, object: &str) -> String {
        format!("s3://{}/{object}", self.bucket)
    }

    fn seen(&self) -> MutexGuard<'_, HashMap<JobKey, Seen>> {
        // Inserts and removes are single operations: a poisoned map is still sound.
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember(&self, key: &JobKey, version: u64, etag: Option<String>) {
        match etag {
            Some(etag) => {
                self.seen().insert(key.clone(), Seen { version, etag });
            }
            None => self.forget(key),
        }
    }

    fn forget(&self, key: &JobKey) {
        self.seen().remove(key);
    }

    fn known_etag(&self, key: &JobKey, version: u64) -> Option<String> {
        self.seen()
            .get(key)
            .filter(|s| s.version == version)
            .map(|s| s.etag.clone())
    }

    fn io(&self, key: &JobKey, operation: &'static str, error: S3Error) -> StoreError {
        error.into_store_error(self.location(), key.to_string(), operation)
    }

    /// A conflict naming the stored checkpoint `found` (`None`: absent).
    fn conflict(
        &self,
        key: &JobKey,
        expected: Option<u64>,
        found: Option<&Checkpoint>,
    ) -> StoreError {
        let error = StoreError::conflict(self.location(), key, expected, found);
        debug!(%error, "compare-and-swap refused");
        error
    }

    fn corrupt(&self, key: &JobKey, object: &str, reason: CheckpointError) -> StoreError {
        StoreError::Corrupt {
            store: self.location(),
            key: key.to_string(),
            path: self.url_of(object),
            reason: Box::new(reason),
        }
    }

    fn no_etag(&self, key: &JobKey, operation: &'static str, request: &'static str) -> StoreError {
        self.io(
            key,
            operation,
            S3Error::NoEtag {
                request,
                bucket: self.bucket.clone(),
                object: self.object_key(key),
            },
        )
    }

    /// GETs an object's bytes and ETag; `None` when it does not exist.
    pub(crate) async fn fetch(
        &self,
        object: &str,
    ) -> Result<Option<(Vec<u8>, Option<String>)>, S3Error> {
        let sent = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(object)
            .send()
            .await;
        let output = match sent {
            Ok(output) => output,
            Err(e) => {
                return match classify(e, "GetObject", &self.bucket, object) {
                    Failure::NotFound => Ok(None),
                    Failure::Other(e) => Err(e),
                    other => Err(S3Error::Request {
                        request: "GetObject",
                        bucket: self.bucket.clone(),
                        object: object.to_owned(),
                        detail: format!("unexpected answer: {other:?}"),
                        refusal: None,
                    }),
                };
            }
        };
        let etag = output.e_tag().map(str::to_owned);
        let body = output.body.collect().await.map_err(|e| S3Error::Body {
            bucket: self.bucket.clone(),
            object: object.to_owned(),
            detail: e.to_string(),
        })?;
        Ok(Some((body.into_bytes().to_vec(), etag)))
    }

    /// Reads and verifies a job's checkpoint, remembering its version and ETag.
    async fn read(
        &self,
        key: &JobKey,
        operation: &'static str,
    ) -> Result<Option<Stored>, StoreError> {
        let object = self.object_key(key);
        let Some((bytes, etag)) = self
            .fetch(&object)
            .await
            .map_err(|e| self.io(key, operation, e))?
        else {
            self.forget(key);
            return Ok(None);
        };
        let checkpoint =
            Checkpoint::decode_for(key, &bytes).map_err(|e| self.corrupt(key, &object, e))?;
        self.remember(key, checkpoint.version, etag.clone());
        Ok(Some(Stored {
            checkpoint,
            bytes,
            etag,
        }))
    }

    async fn put(
        &self,
        object: &str,
        checkpoint: &Checkpoint,
        bytes: &[u8],
        condition: &Condition,
    ) -> Result<Option<String>, Failure> {
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(object)
            .content_type("application/octet-stream")
            .set_metadata(Some(metadata::of(checkpoint)))
            .body(ByteStream::from(bytes.to_vec()));
        request = match condition {
            Condition::Absent => request.if_none_match("*"),
            Condition::Matches(etag) => request.if_match(etag),
        };
        match &self.sse {
            None => {}
            Some(ServerSideEncryption::S3) => {
                request = request.server_side_encryption(SdkSse::Aes256);
            }
            Some(ServerSideEncryption::Kms { key_id }) => {
                request = request
                    .server_side_encryption(SdkSse::AwsKms)
                    .set_ssekms_key_id(key_id.clone());
            }
        }
        match request.send().await {
            Ok(output) => Ok(output.e_tag().map(str::to_owned)),
            Err(e) => Err(classify(e, "PutObject", &self.bucket, object)),
        }
    }

    /// Reads the stored object and decides what a save of `checkpoint`
    /// expecting `expected` does next: write (under which condition), stop
    /// because it is already stored, or fail with a conflict.
    async fn next_step(
        &self,
        checkpoint: &Checkpoint,
        bytes: &[u8],
        expected: Option<u64>,
    ) -> Result<Step, StoreError> {
        let key = &checkpoint.job;
        let Some(stored) = self.read(key, "save").await? else {
            return match expected {
                None => Ok(Step::Write(Condition::Absent)),
                Some(_) => Err(self.conflict(key, expected, None)),
            };
        };
        if stored.bytes == bytes {
            return Ok(Step::Done(stored.etag));
        }
        let found = stored.checkpoint.version;
        let own_earlier_attempt = stored.checkpoint.writer.run_id == checkpoint.writer.run_id
            && found == checkpoint.version
            && expected.map_or(1, |v| v.saturating_add(1)) == checkpoint.version;
        if Some(found) != expected && !own_earlier_attempt {
            return Err(self.conflict(key, expected, Some(&stored.checkpoint)));
        }
        if own_earlier_attempt {
            warn!(
                store = %self.location(),
                job = %key.short(),
                version = found,
                "an earlier attempt of this save reached S3 although it reported an error; replacing it"
            );
        }
        match stored.etag {
            Some(etag) => Ok(Step::Write(Condition::Matches(etag))),
            None => Err(self.no_etag(key, "save", "GetObject")),
        }
    }

    /// The ETag of `key`'s object if its version is `expected`.
    async fn etag_to_delete(&self, key: &JobKey, expected: u64) -> Result<String, StoreError> {
        match self.read(key, "delete").await? {
            None => Err(StoreError::NotFound {
                store: self.location(),
                key: key.to_string(),
            }),
            Some(stored) if stored.checkpoint.version != expected => {
                Err(self.conflict(key, Some(expected), Some(&stored.checkpoint)))
            }
            Some(stored) => stored
                .etag
                .ok_or_else(|| self.no_etag(key, "delete", "GetObject")),
        }
    }

    fn gave_up(&self, key: &JobKey, operation: &'static str, request: &'static str) -> StoreError {
        self.io(
            key,
            operation,
            S3Error::GaveUp {
                request,
                bucket: self.bucket.clone(),
                object: self.object_key(key),
                attempts: ROUNDS,
                why: "409 ConditionalRequestConflict, or the object kept changing",
            },
        )
    }
}

/// The pauses before retrying after a 409: from 50 ms up to 800 ms, with jitter.
fn conflict_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(50), Duration::from_millis(800))
}

/// Waits the next pause of `backoff`.
async fn pause(backoff: &mut Backoff) {
    if let Some(delay) = backoff.next_delay() {
        tokio::time::sleep(delay).await;
    }
}

#[async_trait]
impl CheckpointStore for S3Store {
    /// `s3://bucket/prefix/` (`s3://bucket/` without a prefix).
    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// GETs the object and verifies it. Remembers its version and ETag for the
    /// next save.
    async fn load(&self, key: &JobKey) -> Result<Option<Checkpoint>, StoreError> {
        Ok(self.read(key, "load").await?.map(|s| s.checkpoint))
    }

    /// One conditional `PutObject` when the ETag of `expected` is known;
    /// otherwise a GET first. See the type's docs for every answer S3 can give.
    async fn save(&self, checkpoint: &Checkpoint, expected: Option<u64>) -> Result<(), StoreError> {
        let started = Instant::now();
        let key = &checkpoint.job;
        let object = self.object_key(key);
        let bytes = checkpoint.encode();
        let first = match expected {
            None => Step::Write(Condition::Absent),
            Some(v) => match self.known_etag(key, v) {
                Some(etag) => Step::Write(Condition::Matches(etag)),
                None => self.next_step(checkpoint, &bytes, expected).await?,
            },
        };
        let mut condition = match first {
            Step::Write(condition) => condition,
            Step::Done(etag) => {
                self.remember(key, checkpoint.version, etag);
                return Ok(());
            }
        };
        let mut backoff = conflict_backoff();
        for _ in 0..ROUNDS {
            match self.put(&object, checkpoint, &bytes, &condition).await {
                Ok(etag) => {
                    self.remember(key, checkpoint.version, etag);
                    debug!(
                        store = %self.location(),
                        job = %key.short(),
                        version = checkpoint.version,
                        bytes = bytes.len(),
                        elapsed = ?started.elapsed(),
                        "checkpoint object written"
                    );
                    return Ok(());
                }
                Err(Failure::Other(e)) => return Err(self.io(key, "save", e)),
                Err(refused) => {
                    debug!(job = %key.short(), ?refused, ?condition, "conditional PutObject refused; re-reading");
                    if matches!(refused, Failure::Busy) {
                        pause(&mut backoff).await;
                    }
                    match self.next_step(checkpoint, &bytes, expected).await? {
                        Step::Write(next) => condition = next,
                        Step::Done(etag) => {
                            self.remember(key, checkpoint.version, etag);
                            return Ok(());
                        }
                    }
                }
            }
        }
        Err(self.gave_up(key, "save", "PutObject"))
    }

    /// ListObjectsV2 (every page) and a HeadObject per checkpoint, 16 at a
    /// time. Entries come from the objects' metadata; an object without
    /// complete spotbatch metadata (written by another tool, or whose job key
    /// or status detail was too long for metadata) is downloaded and decoded.
    /// Bodies listed from metadata are not verified: [`load`](Self::load) does that.
    async fn list(&self) -> Result<Vec<Listing>, StoreError> {
        self.list_all().await
    }

    /// A conditional `DeleteObject` (`If-Match` with the ETag of `expected`).
    async fn delete(&self, key: &JobKey, expected: u64) -> Result<(), StoreError> {
        let object = self.object_key(key);
        let mut etag = match self.known_etag(key, expected) {
            Some(etag) => etag,
            None => self.etag_to_delete(key, expected).await?,
        };
        let mut backoff = conflict_backoff();
        for _ in 0..ROUNDS {
            let sent = self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(&object)
                .if_match(&etag)
                .send()
                .await;
            match sent {
                Ok(_) => {
                    self.forget(key);
                    return Ok(());
                }
                Err(e) => match classify(e, "DeleteObject", &self.bucket, &object) {
                    Failure::Other(e) => return Err(self.io(key, "delete", e)),
                    refused => {
                        if matches!(refused, Failure::Busy) {
                            pause(&mut backoff).await;
                        }
                        etag = self.etag_to_delete(key, expected).await?;
                    }
                },
            }
        }
        Err(self.gave_up(key, "delete", "DeleteObject"))
    }
}
