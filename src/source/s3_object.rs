//! An S3 object as a file source's input, read by ranged GETs (feature `s3`).

use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;
use bytes::Bytes;
use tokio::sync::OnceCell;

use super::file::ReadAt;

/// Bytes per GetObject unless set: the reads of a file source (windows of
/// 1 MiB) are served from blocks this large, the next one read ahead.
const DEFAULT_BLOCK: u64 = 8 << 20;
/// The smallest block [`S3Object::block_size`] takes.
const MIN_BLOCK: u64 = 64 << 10;

/// An S3 object read by byte ranges: the input of a [`CsvSource`](super::CsvSource)
/// or [`JsonLinesSource`](super::JsonLinesSource) that lives in S3.
///
/// The object is read in blocks of 8 MiB (see [`block_size`](Self::block_size)),
/// each a `GetObject` with `Range: bytes=…`; while the source parses one
/// block, the next is read ahead (one request in flight at most), and the
/// source's reads are served from them. The first block's answer gives the
/// object's size and ETag, and every later block asks `If-Match: <ETag>`,
/// so an object replaced during the run fails the read instead of mixing two
/// versions ([conditional requests](https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-requests.html));
/// with [`if_match`](Self::if_match) the first block asks it too. An object
/// of up to one block is one request. It holds up to two blocks in memory.
/// Permissions: `s3:GetObject` on the object.
///
/// A run that starts in the middle of the object (resumed from a
/// checkpoint) reads the first block once for the size and ETag, then
/// goes on from the cursor's offset.
///
/// ```no_run
/// use spotbatch::s3::{aws_config, aws_sdk_s3};
/// use spotbatch::source::{CsvSource, S3Object};
///
/// # async fn f() {
/// let config = aws_config::load_from_env().await;
/// let client = aws_sdk_s3::Client::new(&config);
/// let orders = CsvSource::new(S3Object::new(client, "my-bucket", "exports/orders.csv"));
/// # }
/// ```
///
/// Clones share the blocks read and the version pinned: read one clone at
/// a time.
#[derive(Debug, Clone)]
pub struct S3Object {
    client: Client,
    bucket: String,
    key: String,
    name: String,
    block: u64,
    /// The ETag the first read must match, if given.
    expected: Option<String>,
    /// The size and ETag of the version read, from the first read on.
    version: Arc<OnceCell<(u64, Option<String>)>>,
    /// The block read last, and the next one, read ahead.
    blocks: Arc<tokio::sync::Mutex<Blocks>>,
}

/// Blocks of the object, as read.
#[derive(Debug, Default)]
struct Blocks {
    /// The block read last: its offset and bytes.
    current: Option<(u64, Bytes)>,
    /// The block after it, being read: its offset and the read.
    ahead: Option<(u64, ReadAhead)>,
}

/// A block read in a task of its own, aborted when dropped.
#[derive(Debug)]
struct ReadAhead(tokio::task::JoinHandle<io::Result<Bytes>>);

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl S3Object {
    /// The object `key` in `bucket`, read through `client`. Nothing is sent
    /// before the first read.
    pub fn new(client: Client, bucket: impl Into<String>, key: impl Into<String>) -> Self {
        let (bucket, key) = (bucket.into(), key.into());
        Self {
            name: format!("s3://{bucket}/{key}"),
            client,
            bucket,
            key,
            block: DEFAULT_BLOCK,
            expected: None,
            version: Arc::default(),
            blocks: Arc::default(),
        }
    }

    /// Bytes per GetObject (default 8 MiB; at least 64 KiB): larger blocks
    /// make fewer requests, and the object holds two of them in memory.
    /// Set it before the first read.
    #[must_use]
    pub fn block_size(mut self, bytes: u64) -> Self {
        self.block = bytes.max(MIN_BLOCK);
        self
    }

    /// Reads the version whose ETag is `e_tag` (as listed:
    /// [`ListedObject::e_tag`](crate::s3::ListedObject::e_tag), quotes
    /// included) or fails: the first read asks `If-Match` too, so an object
    /// replaced since it was listed is an error naming it, not other bytes.
    #[must_use]
    pub fn if_match(mut self, e_tag: impl Into<String>) -> Self {
        self.expected = Some(e_tag.into());
        self
    }

    /// The object, `s3://bucket/key`.
    pub fn url(&self) -> &str {
        &self.name
    }

    /// The size and ETag, from the first block's answer (which is kept, and
    /// the second block read ahead).
    async fn version(&self) -> io::Result<&(u64, Option<String>)> {
        self.version
            .get_or_try_init(|| async {
                let first = self
                    .client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .range(format!("bytes=0-{}", self.block - 1))
                    .set_if_match(self.expected.clone())
                    .send()
                    .await;
                let first = match first {
                    Ok(first) => first,
                    // 416: a range of an empty object.
                    Err(e) if status(&e) == Some(416) => {
                        return Ok((0, self.expected.clone()));
                    }
                    Err(e) => return Err(get_failed(e, self.expected.as_deref())),
                };
                let etag = first.e_tag().map(str::to_owned).or(self.expected.clone());
                // `bytes 0-N/TOTAL`; without it the server sent the whole object.
                let total = first
                    .content_range()
                    .and_then(|r| r.rsplit_once('/'))
                    .and_then(|(_, total)| total.parse::<u64>().ok());
                let length = first.content_length().and_then(|n| u64::try_from(n).ok());
                let bytes = collect(first.body).await?;
                let size = total.or(length).unwrap_or(bytes.len() as u64);
                let next = bytes.len() as u64;
                let mut blocks = self.blocks.lock().await;
                blocks.current = Some((0, bytes));
                if next > 0 && next < size {
                    blocks.ahead = Some((next, self.read_block(next, size, etag.clone())));
                }
                Ok((size, etag))
            })
            .await
    }

    /// Reads `start..` (a block, or less at the end) of the version `etag`.
    fn read_block(&self, start: u64, size: u64, etag: Option<String>) -> ReadAhead {
        let get = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .range(format!(
                "bytes={start}-{}",
                (start + self.block).min(size) - 1
            ))
            .set_if_match(etag.clone());
        ReadAhead(tokio::spawn(async move {
            let object = get
                .send()
                .await
                .map_err(|e| get_failed(e, etag.as_deref()))?;
            collect(object.body).await
        }))
    }
}

/// A failed GetObject as an I/O error; a 412 says the object is no longer
/// the version `etag`.
fn get_failed<E>(e: SdkError<E>, etag: Option<&str>) -> io::Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if status(&e) == Some(412) {
        return io::Error::other(format!(
            "the object was replaced during the run (its ETag is no longer {})",
            etag.unwrap_or("?")
        ));
    }
    failed("GetObject", e)
}

/// The HTTP status of an SDK error's answer, if there was one.
fn status<E>(e: &SdkError<E>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

async fn collect(body: aws_sdk_s3::primitives::ByteStream) -> io::Result<Bytes> {
    Ok(body
        .collect()
        .await
        .map_err(|e| io::Error::other(format!("GetObject body: {e}")))?
        .into_bytes())
}

/// An SDK error as an I/O error: its code and message, or its chain.
fn failed<E>(operation: &str, e: SdkError<E>) -> io::Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let kind = match status(&e) {
        Some(404) => io::ErrorKind::NotFound,
        Some(403) => io::ErrorKind::PermissionDenied,
        _ => io::ErrorKind::Other,
    };
    let detail = match (e.code(), e.message()) {
        (Some(code), message) => format!("{code}: {}", message.unwrap_or("(no message)")),
        _ => aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
    };
    io::Error::new(kind, format!("{operation} failed: {detail}"))
}

#[async_trait]
impl ReadAt for S3Object {
    fn name(&self) -> &str {
        &self.name
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.version().await?.0)
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let (size, etag) = self.version().await?;
        let end = (offset + len as u64).min(*size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(usize::try_from(end - offset).unwrap_or(0));
        let mut blocks = self.blocks.lock().await;
        let mut at = offset;
        while at < end {
            if let Some((start, bytes)) = &blocks.current {
                let block_end = start + bytes.len() as u64;
                if *start <= at && at < block_end {
                    let (from, to) = (at - start, end.min(block_end) - start);
                    out.extend_from_slice(&bytes[from as usize..to as usize]);
                    at = end.min(block_end);
                    continue;
                }
            }
            let mut read = match blocks.ahead.take() {
                Some((start, read)) if start == at => read,
                _ => self.read_block(at, *size, etag.clone()),
            };
            let bytes = (&mut read.0)
                .await
                .map_err(|e| io::Error::other(format!("GetObject: {e}")))??;
            if bytes.is_empty() {
                break; // shorter than its size said: the window reports it
            }
            let next = at + bytes.len() as u64;
            blocks.current = Some((at, bytes));
            if next < *size {
                blocks.ahead = Some((next, self.read_block(next, *size, etag.clone())));
            }
        }
        Ok(out)
    }
}
