//! One S3 object written by a multipart upload that survives the process:
//! the upload's id and finished parts ride in the job's state.

mod staging;
mod state;

use std::collections::HashSet;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use tracing::{debug, info};

use crate::s3::object_error::{failed, refusal, request_failed, ObjectError, Refusal};
use crate::s3::url::parse_location;
use crate::s3::S3StoreBuilder;
use crate::Error;

pub use state::{MultipartState, Part};
use state::{Piece, UploadState};

/// S3's smallest part (but the last): 5 MiB
/// ([limits](https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html)).
pub(crate) const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest part: 5 GiB.
pub(crate) const MAX_PART_SIZE: u64 = 5 << 30;
/// S3's most parts per upload.
const MAX_PARTS: usize = 10_000;
/// The part size unless set: 8 MiB, as the AWS CLI's; objects up to 78 GiB.
const DEFAULT_PART_SIZE: u64 = 8 << 20;
/// The user metadata (`x-amz-meta-…`) that marks the object an upload became.
const MARKER: &str = "spotbatch-upload";

/// An S3 object written by one multipart upload across any number of runs
/// of a job, each byte exactly once, however the runs end (SIGTERM,
/// SIGKILL, a crash).
///
/// The pattern, as for [`FileSink`](crate::FileSink):
///
/// 1. in [`Job::resume`](crate::Job::resume), call [`resume`](Self::resume)
///    with the [`MultipartState`] from the job's state (`Default` on a fresh
///    start);
/// 2. in [`Job::process`](crate::Job::process), [`write`](Self::write) the
///    chunk's output, then put [`mark`](Self::mark) in the state, as the
///    chunk's last step;
/// 3. in [`Job::flush`](crate::Job::flush), call [`flush`](Self::flush);
/// 4. in [`Job::complete`](crate::Job::complete) (or
///    [`Handler::complete`](crate::source::Handler::complete)), once the
///    input is exhausted, call [`complete`](Self::complete): the object
///    appears, whole.
///
/// ```no_run
/// use spotbatch::prelude::*;
/// use spotbatch::s3::{MultipartSink, MultipartState};
///
/// struct Squares { records: u64, out: MultipartSink }
///
/// #[async_trait]
/// impl Job for Squares {
///     type Cursor = u64;
///     type State = MultipartState; // the upload, carried in every checkpoint
///
///     async fn resume(&mut self, _: &u64, out: &MultipartState) -> Result<()> {
///         Ok(self.out.resume(out).await?) // continue the upload in the checkpoint
///     }
///     async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
///         if *at >= self.records {
///             return Ok(None);
///         }
///         Ok(Some(Chunk::between(*at, (*at + 1000).min(self.records))))
///     }
///     async fn process(&mut self, chunk: &Chunk<u64>, out: &mut MultipartState, _: &ChunkContext) -> Result<()> {
///         for i in chunk.range() {
///             self.out.write_line(&(i * i).to_string()).await?;
///         }
///         *out = self.out.mark();
///         Ok(())
///     }
///     async fn flush(&mut self) -> Result<()> {
///         Ok(self.out.flush().await?)
///     }
///     async fn complete(&mut self, _: &u64, _: &mut MultipartState) -> Result<()> {
///         Ok(self.out.complete().await?) // the object appears
///     }
/// }
///
/// #[tokio::main]
/// async fn main() -> Result<std::process::ExitCode> {
///     let shutdown = spotbatch::shutdown::listen(); // first: from here on SIGTERM is a stop request
///     tracing_subscriber::fmt().init(); // the runner's and the sink's log lines
///     let out = match shutdown.interruptible(MultipartSink::from_url("s3://my-bucket/squares.txt")).await {
///         Ok(out) => out?,
///         Err(stopped) => return Ok(stopped.exit_code()), // stopped before the run
///     };
///     let job = Squares { records: 10_000_000, out };
///     Ok(Runner::new("squares", job).run().await.exit_code())
/// }
/// ```
///
/// # How it survives a kill
///
/// Output is cut into parts of [`part_size`](Self::part_size) bytes (8 MiB
/// by default; S3 takes parts of 5 MiB to 5 GiB, but the last, and at most
/// 10,000 of them: [limits](https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html)).
/// A full part is uploaded (UploadPart) as soon as it is written, and its
/// number, ETag and size go into the next [`mark`](Self::mark). The part
/// being filled cannot be uploaded before it is full, so at each checkpoint
/// [`flush`](Self::flush) writes the bytes of it written since the last
/// checkpoint to a *staging object* (a small PutObject under
/// [`staging_prefix`](Self::staging_prefix)), and the state names it.
///
/// A resumed run continues the same upload from the checkpoint: its parts
/// stay, the part being filled is read back from its staging objects, and
/// parts uploaded after the checkpoint are uploaded again under the same
/// numbers (S3 keeps the last upload of a part number; the completion names
/// each part by its ETag). Output written after the checkpoint is dropped,
/// and the chunks that wrote it are done again, once.
///
/// # Completion
///
/// [`complete`](Self::complete) uploads the last part and completes the
/// upload (CompleteMultipartUpload) with `If-None-Match: *`, so the object
/// is created only where none is: two writers of the same key cannot both
/// win. AWS honours the header on completions since August 2024
/// ([conditional writes](https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html)),
/// and so does SeaweedFS; on a server that ignores it the completion
/// overwrites an object another writer created meanwhile (the sink's own
/// check at a fresh start still refuses an object already there). The
/// upload carries a random token in `x-amz-meta-spotbatch-upload`, so a run
/// that finds its upload gone and the object there with its token (the
/// previous run completed it, then was killed before its checkpoint) knows
/// the output is complete, and drops what it writes.
///
/// # What it cleans up
///
/// - On a fresh start (a state without an upload: the first run, or a job
///   restarted from scratch), every multipart upload in progress to the
///   same key is aborted, and the staging objects deleted: they are
///   abandoned runs' output that no checkpoint names. The sink therefore
///   assumes it is the key's only writer.
/// - On a resumed start, the other uploads to the key are aborted, and the
///   staging objects the checkpoint does not name deleted.
/// - On completion, the staging objects are deleted.
///
/// Staging objects accumulate during a run (at most the output's size: each
/// byte is staged at most once, and only bytes in a part still being filled
/// at a checkpoint are), because a run cannot tell which of its checkpoints
/// the store kept. A bucket lifecycle rule with `AbortIncompleteMultipartUpload`
/// and an expiry on the staging prefix reclaims what a job that is never
/// resumed leaves; its days must exceed the longest pause between a job's runs.
///
/// # Memory
///
/// The part being filled, plus whatever a single [`write`](Self::write)
/// brings beyond it, plus (rarely) one more part: about two parts.
///
/// # Permissions
///
/// `s3:PutObject` (CreateMultipartUpload, UploadPart, CompleteMultipartUpload
/// and the staging objects), `s3:GetObject`, `s3:AbortMultipartUpload`,
/// `s3:ListBucketMultipartUploads`, `s3:ListMultipartUploadParts`,
/// `s3:ListBucket` and `s3:DeleteObject` on the key and the staging prefix.
#[derive(Debug)]
pub struct MultipartSink {
    to: Target,
    part_size: u64,
    overwrite: bool,
    content_type: Option<String>,
    live: Option<Live>,
}

/// Where the output goes.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) client: Client,
    pub(crate) bucket: String,
    pub(crate) key: String,
    /// Ends with `/`.
    pub(crate) staging: String,
}

#[derive(Debug)]
enum Live {
    /// The upload is under way.
    Open(Box<Open>),
    /// The object exists: this run (or an earlier one) completed the upload.
    Completed(MultipartState),
}

/// An upload under way, and the part being filled.
#[derive(Debug)]
struct Open {
    id: String,
    token: String,
    part_size: u64,
    parts: Vec<Part>,
    /// The output's bytes before the part being filled.
    part_start: u64,
    /// The part being filled (less than `part_size` bytes between writes).
    buffer: Vec<u8>,
    /// The bytes of `buffer` in staging objects (`pieces`).
    staged: usize,
    pieces: Vec<Piece>,
    /// The last [`MultipartSink::mark`] whose piece is not staged yet.
    mark: Option<Mark>,
    /// The bytes that mark names, kept when their part was uploaded before
    /// the mark's flush (a chunk wrote past the mark, then failed).
    retained: Option<Vec<u8>>,
}

/// What a mark promised: the piece at `offset`, of `len` bytes, of part `part`.
#[derive(Debug, Clone, Copy)]
struct Mark {
    part: u16,
    offset: u64,
    len: usize,
}

impl Open {
    fn part_number(&self) -> u16 {
        // At most MAX_PARTS (checked before each upload), so it fits.
        u16::try_from(self.parts.len() + 1).unwrap_or(u16::MAX)
    }

    fn len(&self) -> u64 {
        self.part_start + self.buffer.len() as u64
    }

    fn state(&self) -> MultipartState {
        let mut tail = self.pieces.clone();
        if self.buffer.len() > self.staged {
            tail.push(Piece {
                offset: self.part_start + self.staged as u64,
                len: (self.buffer.len() - self.staged) as u64,
            });
        }
        MultipartState {
            upload: Some(UploadState {
                id: self.id.clone(),
                token: self.token.clone(),
                part_size: self.part_size,
                parts: self.parts.clone(),
                tail,
            }),
        }
    }
}

impl MultipartSink {
    /// The sink writing `s3://bucket/key` with `client` (for instance from
    /// [`S3StoreBuilder::client`]). Nothing is sent before [`resume`](Self::resume).
    pub fn new(client: Client, bucket: impl Into<String>, key: impl Into<String>) -> Self {
        let key = key.into();
        Self {
            to: Target {
                client,
                bucket: bucket.into(),
                staging: format!("{key}.spotbatch/"),
                key,
            },
            part_size: DEFAULT_PART_SIZE,
            overwrite: false,
            content_type: None,
            live: None,
        }
    }

    /// The sink writing `s3://bucket/key`, with a client configured as the
    /// S3 store's ([`S3StoreBuilder`]: the default provider chain, and
    /// `AWS_ENDPOINT_URL_S3` and `SPOTBATCH_S3_FORCE_PATH_STYLE` for an
    /// S3-compatible server), but 60 s per attempt and 180 s per request,
    /// for parts of megabytes.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the URL when it is not `s3://bucket/key`,
    /// or a variable with a bad value.
    pub async fn from_url(url: &str) -> Result<Self, Error> {
        let (bucket, key) = parse_location(url, "output", "s3://bucket/key", true)?;
        let client = transfer_client(&bucket).await?;
        Ok(Self::new(client, bucket, key))
    }

    /// Parts of `bytes` bytes (8 MiB by default), clamped to S3's 5 MiB to
    /// 5 GiB. It caps the object at 10,000 parts (78 GiB at 8 MiB) and sets
    /// the memory the sink holds (about two parts). An upload keeps the
    /// part size it started with: a resumed run takes it from the state.
    #[must_use]
    pub fn part_size(mut self, bytes: u64) -> Self {
        self.part_size = bytes.clamp(MIN_PART_SIZE, MAX_PART_SIZE);
        self
    }

    /// Where the staging objects go (default: the key followed by
    /// `.spotbatch/`). The sink deletes everything under it when it starts
    /// afresh and when it completes, so the prefix must be the sink's own;
    /// a `/` is added when missing.
    #[must_use]
    pub fn staging_prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        self.to.staging = if prefix.ends_with('/') {
            prefix
        } else {
            format!("{prefix}/")
        };
        self
    }

    /// Whether an existing object at the key may be replaced (default
    /// `false`: a fresh start finds it and fails with
    /// [`ObjectError::AlreadyExists`], and the completion is conditional).
    #[must_use]
    pub fn overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }

    /// The object's `Content-Type` (S3's default: `binary/octet-stream`).
    #[must_use]
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// The output, `s3://bucket/key`.
    pub fn url(&self) -> String {
        self.to.url(&self.to.key)
    }

    /// The bytes written so far, buffered ones included; 0 before
    /// [`resume`](Self::resume).
    pub fn len(&self) -> u64 {
        match &self.live {
            Some(Live::Open(open)) => open.len(),
            Some(Live::Completed(state)) => state.len(),
            None => 0,
        }
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the output object exists: [`complete`](Self::complete)
    /// succeeded, in this run or an earlier one. Writes are then dropped.
    pub fn is_completed(&self) -> bool {
        matches!(self.live, Some(Live::Completed(_)))
    }

    /// Continues the upload `state` names, or starts a new one when it
    /// names none. Call it in [`Job::resume`](crate::Job::resume), before
    /// anything is written.
    ///
    /// - A state without an upload (a fresh start): aborts the key's
    ///   uploads in progress, deletes the staging objects, checks that no
    ///   object is at the key (unless [`overwrite`](Self::overwrite)), and
    ///   starts an upload (CreateMultipartUpload).
    /// - A state with an upload: checks that it is still in progress, aborts
    ///   the key's other uploads, reads the part being filled back from its
    ///   staging objects and deletes the staging objects the state does not
    ///   name. When the upload is gone and the object at the key carries its
    ///   token, the output is already complete: writes are then dropped and
    ///   [`complete`](Self::complete) does nothing.
    ///
    /// # Errors
    ///
    /// - [`ObjectError::AlreadyExists`]: a fresh start found an object at
    ///   the key.
    /// - [`ObjectError::UploadGone`]: the state's upload was aborted, and
    ///   is not the object at the key.
    /// - [`ObjectError::StagingLost`]: a staging object the state names is
    ///   missing or short.
    /// - [`ObjectError::BadState`]: the state is not one this sink wrote.
    /// - [`ObjectError::Request`]: S3 could not be reached or refused.
    ///
    /// Cleaning up (aborting, deleting) is best effort: its failures are
    /// logged, not returned.
    pub async fn resume(&mut self, state: &MultipartState) -> Result<(), ObjectError> {
        self.live = None;
        let live = match &state.upload {
            None => Live::Open(Box::new(self.start().await?)),
            Some(upload) => self.continue_upload(upload, state).await?,
        };
        self.live = Some(live);
        Ok(())
    }

    /// Appends bytes. Each time a part is full, it is uploaded before this
    /// returns.
    ///
    /// # Errors
    ///
    /// [`ObjectError::NotResumed`] before [`resume`](Self::resume);
    /// [`ObjectError::TooLarge`] past 10,000 parts; [`ObjectError::Request`]
    /// when an UploadPart fails (the bytes stay buffered).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves `bytes` appended and the sink consistent;
    /// a part whose upload was cut off is uploaded again.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), ObjectError> {
        let to = &self.to;
        let open = match &mut self.live {
            None => return Err(ObjectError::NotResumed { url: self.url() }),
            Some(Live::Completed(_)) => return Ok(()),
            Some(Live::Open(open)) => open,
        };
        open.buffer.extend_from_slice(bytes);
        while open.buffer.len() as u64 >= open.part_size {
            upload_full_part(to, open).await?;
        }
        Ok(())
    }

    /// Appends a line and a `\n`.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    pub async fn write_line(&mut self, line: &str) -> Result<(), ObjectError> {
        if let Some(Live::Open(open)) = &mut self.live {
            if (open.buffer.len() + line.len() + 1) as u64 <= open.part_size {
                open.buffer.extend_from_slice(line.as_bytes());
                open.buffer.push(b'\n');
                if open.buffer.len() as u64 == open.part_size {
                    upload_full_part(&self.to, open).await?;
                }
                return Ok(());
            }
        }
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.write(&bytes).await
    }

    /// The state that covers everything written so far: put it in the job's
    /// state as the chunk's last step, once per chunk.
    ///
    /// The next [`flush`](Self::flush) makes durable what this state names
    /// (the sink keeps those bytes until then), so that a checkpoint saved
    /// with it can be resumed from. A state taken earlier in the chunk, or
    /// in an earlier chunk, is not kept: if a chunk fails after taking its
    /// mark, the run ends with the previous chunk's state, whose bytes may
    /// then be gone, and resuming fails with [`ObjectError::StagingLost`]
    /// instead of losing output silently.
    ///
    /// Before [`resume`](Self::resume), the default state.
    pub fn mark(&mut self) -> MultipartState {
        match &mut self.live {
            None => MultipartState::default(),
            Some(Live::Completed(state)) => state.clone(),
            Some(Live::Open(open)) => {
                open.retained = None;
                open.mark = (open.buffer.len() > open.staged).then(|| Mark {
                    part: open.part_number(),
                    offset: open.part_start + open.staged as u64,
                    len: open.buffer.len() - open.staged,
                });
                open.state()
            }
        }
    }

    /// Makes durable everything the last [`mark`](Self::mark) covers: its
    /// parts are uploaded already; the bytes of the part being filled it
    /// names are written to a staging object. Call it in
    /// [`Job::flush`](crate::Job::flush): the checkpoint is saved after it.
    ///
    /// # Errors
    ///
    /// [`ObjectError::Request`] when the staging object cannot be written.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the sink as it was; the next flush stages
    /// the same bytes.
    pub async fn flush(&mut self) -> Result<(), ObjectError> {
        let Some(Live::Open(open)) = &mut self.live else {
            return Ok(());
        };
        let Some(mark) = open.mark else {
            return Ok(());
        };
        if mark.part == open.part_number() {
            // The mark's piece starts at `staged`; stage from there to the
            // end of the buffer (what was written after the mark is harmless).
            let bytes = &open.buffer[open.staged..];
            staging::put(&self.to, &open.token, mark.offset, bytes.to_vec()).await?;
            open.pieces.push(Piece {
                offset: mark.offset,
                len: bytes.len() as u64,
            });
            open.staged = open.buffer.len();
        } else if let Some(bytes) = open.retained.clone() {
            staging::put(&self.to, &open.token, mark.offset, bytes).await?;
            open.retained = None;
        }
        open.mark = None;
        Ok(())
    }

    /// Uploads the last part and completes the upload: the object appears
    /// at the key, whole, with everything written. Call it once the input
    /// is exhausted, before the job's final checkpoint: in
    /// [`Job::complete`](crate::Job::complete), which a stop request does
    /// not interrupt (not in `next_chunk`, which a stop drops at its next
    /// `.await`). Calling it again, in this run or a later one, does nothing.
    ///
    /// No output at all gives an empty object (PutObject; S3 completes no
    /// upload without a part).
    ///
    /// # Errors
    ///
    /// - [`ObjectError::AlreadyExists`]: another writer created the object
    ///   meanwhile (the completion is conditional, unless [`overwrite`](Self::overwrite)).
    /// - [`ObjectError::UploadGone`]: the upload was aborted meanwhile.
    /// - [`ObjectError::NotResumed`], [`ObjectError::Request`].
    pub async fn complete(&mut self) -> Result<(), ObjectError> {
        let open = match &mut self.live {
            None => return Err(ObjectError::NotResumed { url: self.url() }),
            Some(Live::Completed(_)) => return Ok(()),
            Some(Live::Open(open)) => open,
        };
        if open.parts.is_empty() && open.buffer.is_empty() {
            put_empty(&self.to, open, self.overwrite, self.content_type.as_deref()).await?;
        } else {
            if !open.buffer.is_empty() {
                let size = open.buffer.len();
                upload_part(&self.to, open, size).await?;
            }
            complete_upload(&self.to, open, self.overwrite).await?;
        }
        let (len, parts) = (open.len(), open.parts.len());
        let state = open.state();
        info!(output = %self.url(), bytes = len, parts, "output complete");
        self.live = Some(Live::Completed(state));
        staging::clear(&self.to, &HashSet::new()).await;
        Ok(())
    }

    async fn start(&self) -> Result<Open, ObjectError> {
        abort_uploads(&self.to, None).await;
        staging::clear(&self.to, &HashSet::new()).await;
        if !self.overwrite && head_marker(&self.to).await?.is_some() {
            return Err(ObjectError::AlreadyExists { url: self.url() });
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        let created = self
            .to
            .client
            .create_multipart_upload()
            .bucket(&self.to.bucket)
            .key(&self.to.key)
            .metadata(MARKER, &token)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .set_content_type(self.content_type.clone())
            .send()
            .await
            .map_err(|e| failed(e, "CreateMultipartUpload", &self.to.bucket, &self.to.key))?;
        let id = created
            .upload_id()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| ObjectError::BadState {
                url: self.url(),
                reason: "CreateMultipartUpload returned no upload id".into(),
            })?
            .to_owned();
        info!(output = %self.url(), upload_id = %id, part_size = self.part_size, "started a multipart upload");
        Ok(Open {
            id,
            token,
            part_size: self.part_size,
            parts: Vec::new(),
            part_start: 0,
            buffer: Vec::new(),
            staged: 0,
            pieces: Vec::new(),
            mark: None,
            retained: None,
        })
    }

    async fn continue_upload(
        &self,
        upload: &UploadState,
        state: &MultipartState,
    ) -> Result<Live, ObjectError> {
        upload.check().map_err(|reason| ObjectError::BadState {
            url: self.url(),
            reason,
        })?;
        if !upload_exists(&self.to, &upload.id).await? {
            if head_marker(&self.to).await?.as_deref() == Some(upload.token.as_str()) {
                info!(output = %self.url(), upload_id = %upload.id, "the upload was completed by an earlier run: the output is complete");
                staging::clear(&self.to, &HashSet::new()).await;
                return Ok(Live::Completed(state.clone()));
            }
            return Err(ObjectError::UploadGone {
                url: self.url(),
                upload_id: upload.id.clone(),
            });
        }
        abort_uploads(&self.to, Some(&upload.id)).await;
        let part_start = upload.parts.len() as u64 * upload.part_size;
        let buffer = staging::read(&self.to, &upload.token, &upload.tail).await?;
        let keep = upload
            .tail
            .iter()
            .map(|piece| staging::name(&self.to, &upload.token, piece.offset))
            .collect();
        staging::clear(&self.to, &keep).await;
        if upload.part_size != self.part_size {
            debug!(output = %self.url(), part_size = upload.part_size, "continuing with the upload's part size");
        }
        info!(
            output = %self.url(),
            upload_id = %upload.id,
            parts = upload.parts.len(),
            bytes = part_start + buffer.len() as u64,
            "continuing the multipart upload from the checkpoint"
        );
        Ok(Live::Open(Box::new(Open {
            id: upload.id.clone(),
            token: upload.token.clone(),
            part_size: upload.part_size,
            parts: upload.parts.clone(),
            part_start,
            staged: buffer.len(),
            buffer,
            pieces: upload.tail.clone(),
            mark: None,
            retained: None,
        })))
    }
}

impl Target {
    pub(crate) fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

/// A client for moving data: the store's settings, with attempts of up to
/// 60 s and requests (retries included) of up to 180 s.
pub(crate) async fn transfer_client(bucket: &str) -> Result<Client, Error> {
    S3StoreBuilder::new(bucket, "")
        .attempt_timeout(std::time::Duration::from_secs(60))
        .operation_timeout(std::time::Duration::from_secs(180))
        .client()
        .await
}

/// Uploads the first `part_size` bytes of the buffer as the next part.
async fn upload_full_part(to: &Target, open: &mut Open) -> Result<(), ObjectError> {
    let size = usize::try_from(open.part_size).unwrap_or(usize::MAX);
    upload_part(to, open, size).await
}

/// Uploads the first `size` bytes of the buffer as the next part, then
/// drops them from the buffer. Keeps the bytes the last mark names when
/// they are in this part and not staged.
async fn upload_part(to: &Target, open: &mut Open, size: usize) -> Result<(), ObjectError> {
    if open.parts.len() >= MAX_PARTS {
        return Err(ObjectError::TooLarge {
            url: to.url(&to.key),
            part_size: open.part_size,
        });
    }
    let number = open.part_number();
    let body = open.buffer[..size].to_vec();
    let uploaded = to
        .client
        .upload_part()
        .bucket(&to.bucket)
        .key(&to.key)
        .upload_id(&open.id)
        .part_number(i32::from(number))
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .body(ByteStream::from(body))
        .send()
        .await;
    let uploaded = match uploaded {
        Ok(out) => out,
        Err(e) => {
            return Err(match refusal(e, "UploadPart", &to.bucket, &to.key) {
                Refusal::NotFound => ObjectError::UploadGone {
                    url: to.url(&to.key),
                    upload_id: open.id.clone(),
                },
                Refusal::Failed(e) => e,
                Refusal::Precondition => ObjectError::BadState {
                    url: to.url(&to.key),
                    reason: "UploadPart was refused with 412".into(),
                },
            })
        }
    };
    let e_tag = uploaded
        .e_tag()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ObjectError::BadState {
            url: to.url(&to.key),
            reason: format!("UploadPart of part {number} returned no ETag"),
        })?
        .to_owned();
    if let Some(mark) = open.mark.filter(|m| m.part == number) {
        let from = open.staged;
        open.retained = Some(open.buffer[from..from + mark.len].to_vec());
    }
    debug!(output = %to.url(&to.key), part = number, bytes = size, "part uploaded");
    open.parts.push(Part {
        number,
        e_tag,
        size: size as u64,
        crc32: uploaded.checksum_crc32().map(str::to_owned),
    });
    open.buffer.drain(..size);
    open.part_start += size as u64;
    open.staged = 0;
    open.pieces.clear();
    Ok(())
}

/// CompleteMultipartUpload, conditional unless `overwrite`.
async fn complete_upload(to: &Target, open: &Open, overwrite: bool) -> Result<(), ObjectError> {
    let parts = open
        .parts
        .iter()
        .map(|p| {
            CompletedPart::builder()
                .part_number(i32::from(p.number))
                .e_tag(&p.e_tag)
                .set_checksum_crc32(p.crc32.clone())
                .build()
        })
        .collect();
    let mut request = to
        .client
        .complete_multipart_upload()
        .bucket(&to.bucket)
        .key(&to.key)
        .upload_id(&open.id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        );
    if !overwrite {
        request = request.if_none_match("*");
    }
    match request.send().await {
        Ok(_) => Ok(()),
        Err(e) => match refusal(e, "CompleteMultipartUpload", &to.bucket, &to.key) {
            Refusal::Failed(e) => Err(e),
            // 412: an object is there; 404: the upload is gone. Either is
            // fine when the object is this upload's (an earlier attempt
            // completed it and its answer was lost).
            refused => {
                if head_marker(to).await?.as_deref() == Some(open.token.as_str()) {
                    return Ok(());
                }
                Err(match refused {
                    Refusal::Precondition => ObjectError::AlreadyExists {
                        url: to.url(&to.key),
                    },
                    _ => ObjectError::UploadGone {
                        url: to.url(&to.key),
                        upload_id: open.id.clone(),
                    },
                })
            }
        },
    }
}

/// An empty output: S3 completes no upload without a part, so PutObject.
async fn put_empty(
    to: &Target,
    open: &Open,
    overwrite: bool,
    content_type: Option<&str>,
) -> Result<(), ObjectError> {
    let mut request = to
        .client
        .put_object()
        .bucket(&to.bucket)
        .key(&to.key)
        .metadata(MARKER, &open.token)
        .set_content_type(content_type.map(str::to_owned))
        .body(ByteStream::from_static(b""));
    if !overwrite {
        request = request.if_none_match("*");
    }
    match request.send().await {
        Ok(_) => {}
        Err(e) => match refusal(e, "PutObject", &to.bucket, &to.key) {
            Refusal::Precondition
                if head_marker(to).await?.as_deref() != Some(open.token.as_str()) =>
            {
                return Err(ObjectError::AlreadyExists {
                    url: to.url(&to.key),
                })
            }
            Refusal::Precondition => {}
            Refusal::NotFound => {
                return Err(request_failed(
                    "PutObject",
                    &to.bucket,
                    &to.key,
                    "HTTP 404 on PutObject",
                ))
            }
            Refusal::Failed(e) => return Err(e),
        },
    }
    abort_uploads(to, None).await;
    Ok(())
}

/// Whether the upload is in progress (ListParts answers for it).
async fn upload_exists(to: &Target, upload_id: &str) -> Result<bool, ObjectError> {
    match to
        .client
        .list_parts()
        .bucket(&to.bucket)
        .key(&to.key)
        .upload_id(upload_id)
        .max_parts(1)
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(e) => match refusal(e, "ListParts", &to.bucket, &to.key) {
            Refusal::NotFound => Ok(false),
            Refusal::Failed(e) => Err(e),
            Refusal::Precondition => {
                Err(request_failed("ListParts", &to.bucket, &to.key, "HTTP 412"))
            }
        },
    }
}

/// The object's marker (`x-amz-meta-spotbatch-upload`): `None` when there
/// is no object, `Some("")` for an object without one.
async fn head_marker(to: &Target) -> Result<Option<String>, ObjectError> {
    match to
        .client
        .head_object()
        .bucket(&to.bucket)
        .key(&to.key)
        .send()
        .await
    {
        Ok(head) => Ok(Some(
            head.metadata()
                .and_then(|m| m.get(MARKER))
                .cloned()
                .unwrap_or_default(),
        )),
        Err(e) => match refusal(e, "HeadObject", &to.bucket, &to.key) {
            Refusal::NotFound => Ok(None),
            Refusal::Failed(e) => Err(e),
            Refusal::Precondition => Err(request_failed(
                "HeadObject",
                &to.bucket,
                &to.key,
                "HTTP 412",
            )),
        },
    }
}

/// Aborts every upload in progress to the key but `keep`. Best effort:
/// failures are logged.
async fn abort_uploads(to: &Target, keep: Option<&str>) {
    let mut key_marker = None;
    let mut id_marker = None;
    loop {
        let page = match to
            .client
            .list_multipart_uploads()
            .bucket(&to.bucket)
            .prefix(&to.key)
            .set_key_marker(key_marker.take())
            .set_upload_id_marker(id_marker.take())
            .send()
            .await
        {
            Ok(page) => page,
            Err(e) => {
                let e = failed(e, "ListMultipartUploads", &to.bucket, &to.key);
                tracing::warn!(output = %to.url(&to.key), error = %e, "cannot list the uploads in progress: abandoned ones are left");
                return;
            }
        };
        for upload in page.uploads() {
            let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else {
                continue;
            };
            if key != to.key || Some(id) == keep {
                continue;
            }
            match to
                .client
                .abort_multipart_upload()
                .bucket(&to.bucket)
                .key(&to.key)
                .upload_id(id)
                .send()
                .await
            {
                Ok(_) => {
                    info!(output = %to.url(&to.key), upload_id = %id, "aborted an abandoned multipart upload (no checkpoint names it)");
                }
                Err(e) => match refusal(e, "AbortMultipartUpload", &to.bucket, &to.key) {
                    Refusal::NotFound => {}
                    Refusal::Failed(e) => {
                        tracing::warn!(output = %to.url(&to.key), upload_id = %id, error = %e, "cannot abort an abandoned upload");
                    }
                    Refusal::Precondition => {}
                },
            }
        }
        if page.is_truncated() != Some(true) {
            return;
        }
        key_marker = page.next_key_marker().map(str::to_owned);
        id_marker = page.next_upload_id_marker().map(str::to_owned);
        if key_marker.is_none() && id_marker.is_none() {
            return;
        }
    }
}
