//! An S3 object as a file source's input, read by ranged GETs (feature `s3`).

use std::io;

use async_trait::async_trait;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::Client;

use super::file::ReadAt;

/// An S3 object read by byte ranges: the input of a [`CsvSource`](super::CsvSource)
/// or [`JsonLinesSource`](super::JsonLinesSource) that lives in S3.
///
/// The first read asks `HeadObject` for the object's size and ETag; each
/// read is then a `GetObject` with `Range: bytes=…` and `If-Match: <ETag>`,
/// so an object replaced during the run fails the read instead of mixing two
/// versions ([conditional requests](https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-requests.html)).
/// Permissions: `s3:GetObject` on the object (`HeadObject` needs no other).
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
#[derive(Debug, Clone)]
pub struct S3Object {
    client: Client,
    bucket: String,
    key: String,
    name: String,
    /// The size and ETag of the version read, from the first read on.
    version: std::sync::Arc<tokio::sync::OnceCell<(u64, Option<String>)>>,
}

impl S3Object {
    /// The object `key` in `bucket`, read through `client`.
    pub fn new(client: Client, bucket: impl Into<String>, key: impl Into<String>) -> Self {
        let (bucket, key) = (bucket.into(), key.into());
        Self {
            name: format!("s3://{bucket}/{key}"),
            client,
            bucket,
            key,
            version: std::sync::Arc::default(),
        }
    }

    async fn version(&self) -> io::Result<&(u64, Option<String>)> {
        self.version
            .get_or_try_init(|| async {
                let head = self
                    .client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .send()
                    .await
                    .map_err(|e| failed("HeadObject", e))?;
                let size = head
                    .content_length()
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(|| io::Error::other("HeadObject gave no Content-Length"))?;
                Ok((size, head.e_tag().map(str::to_owned)))
            })
            .await
    }
}

/// An SDK error as an I/O error: its code and message, or its chain.
fn failed<E>(operation: &str, e: aws_sdk_s3::error::SdkError<E>) -> io::Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let kind = match e.raw_response().map(|r| r.status().as_u16()) {
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
        if len == 0 || offset >= *size {
            return Ok(Vec::new());
        }
        let last = (offset + len as u64).min(*size) - 1;
        let mut get = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .range(format!("bytes={offset}-{last}"));
        if let Some(etag) = etag {
            get = get.if_match(etag);
        }
        let object = get.send().await.map_err(|e| {
            if e.raw_response().map(|r| r.status().as_u16()) == Some(412) {
                io::Error::other(format!(
                    "the object was replaced during the run (its ETag is no longer {})",
                    etag.as_deref().unwrap_or("?")
                ))
            } else {
                failed("GetObject", e)
            }
        })?;
        let bytes = object
            .body
            .collect()
            .await
            .map_err(|e| io::Error::other(format!("GetObject body: {e}")))?;
        Ok(bytes.into_bytes().to_vec())
    }
}
