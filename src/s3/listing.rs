//! Every object under a prefix, as a [`Source`]: ListObjectsV2 from the
//! last key done.

use std::collections::VecDeque;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_s3::types::EncodingType;
use aws_sdk_s3::Client;
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::error::BoxError;
use crate::s3::object_error::{failed, ObjectError};
use crate::s3::sink::transfer_client;
use crate::s3::url::parse_location;
use crate::source::{Batch, Limit, Source};
use crate::Error;

/// Keys per ListObjectsV2 request (S3's most).
const PAGE: i32 = 1000;

/// Every object under a prefix, in the listing's key order, as a
/// [`Source`]: each record is a [`ListedObject`] (key, size, ETag), and the
/// cursor is the last key done ([`ListingCursor`]). A batch holds at most
/// [`Limit`]'s records, or objects of at most its bytes in all (always at
/// least one object): `Limit::records(1)` makes one object per chunk.
///
/// Reading is done by the handler (GetObject on each key, as it likes); the
/// source lists ahead, a page of up to 1,000 keys per request.
///
/// ```no_run
/// use spotbatch::prelude::*;
/// use spotbatch::s3::{ListedObject, ListingCursor, ListingSource};
/// use spotbatch::source::{Batch, Handler, Limit, SourceJob};
///
/// /// Counts the bytes under a prefix.
/// struct Sizes;
///
/// #[async_trait]
/// impl Handler<ListingSource> for Sizes {
///     type State = u64; // bytes so far
///
///     async fn handle(&mut self, batch: Batch<ListingSource>, total: &mut u64, _: &ChunkContext) -> Result<()> {
///         *total += batch.records().iter().map(|o: &ListedObject| o.size).sum::<u64>();
///         Ok(())
///     }
/// }
///
/// #[tokio::main]
/// async fn main() -> Result<std::process::ExitCode> {
///     let shutdown = spotbatch::shutdown::listen(); // first: from here on SIGTERM is a stop request
///     tracing_subscriber::fmt().init(); // the runner's log lines
///     let source = match shutdown.interruptible(ListingSource::from_url("s3://my-bucket/logs/2024/")).await {
///         Ok(source) => source?,
///         Err(stopped) => return Ok(stopped.exit_code()), // stopped before the run
///     };
///     let job = SourceJob::new(source, Sizes).limit(Limit::records(100));
///     Ok(Runner::new("log-sizes", job).run().await.exit_code())
/// }
/// ```
///
/// # Order and resuming
///
/// ListObjectsV2 lists a general purpose bucket's keys in UTF-8 binary
/// order ([ListObjectsV2](https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListObjectsV2.html)),
/// and `StartAfter` (the cursor's key) starts the listing after a key in
/// that order, so a resumed run lists exactly the keys after the last one
/// done. Servers that store keys as directories (SeaweedFS) list in their
/// directory order (`a/b` before `a b`), and start after a key in the same
/// order: resuming works the same. Directory buckets (S3 Express One Zone)
/// neither list in order nor take `StartAfter`: they are not supported.
///
/// # Objects that change during the run
///
/// The listing is read as the job goes, not taken once at the start:
///
/// - an object added **behind the cursor** (its key sorts before the last
///   key done) during the run, or between runs, is **not seen**;
/// - an object added ahead of the cursor is seen, when the listing gets there;
/// - an object deleted before the listing gets there is not seen; one
///   deleted after it was listed is still handed to the handler, whose
///   GetObject then finds it missing (404);
/// - an object replaced after it was listed is handed with the old ETag
///   and size: a handler that reads it with `If-Match` on
///   [`e_tag`](ListedObject::e_tag) (an [`S3Object`](crate::source::S3Object)
///   with [`if_match`](crate::source::S3Object::if_match)) gets an error
///   naming it instead of the new bytes.
///
/// For a fixed set of inputs, write them under a prefix of their own before
/// the job starts.
///
/// # Keys
///
/// Keys are asked for URL-encoded (`encoding-type=url`, which S3 needs to
/// send keys with characters XML 1.0 cannot carry) and decoded: any UTF-8
/// key comes back as it was written.
pub struct ListingSource {
    client: Client,
    bucket: String,
    prefix: String,
    /// Objects listed after `ahead_after`, in order.
    ahead: VecDeque<ListedObject>,
    /// The key the read-ahead starts after; `None` for the listing's start.
    ahead_after: Option<String>,
    /// Whether `ahead` was ever filled from `ahead_after` (else it is empty
    /// because nothing was read yet).
    primed: bool,
    /// Whether the listing ends after `ahead`.
    ahead_is_last: bool,
    page_size: i32,
}

impl std::fmt::Debug for ListingSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListingSource")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// One listed object: a [`ListingSource`]'s record.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    /// The object's key, whole (the prefix included), decoded.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its ETag as listed, quotes included; for `If-Match` on a GetObject.
    pub e_tag: Option<String>,
    /// When it was last written.
    pub last_modified: Option<SystemTime>,
}

/// Where a [`ListingSource`] stands: the last key done. `Default` is the
/// start of the listing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListingCursor {
    after: Option<String>,
}

impl ListingCursor {
    /// The cursor after `key`: the listing goes on with the key after it.
    pub fn after(key: impl Into<String>) -> Self {
        Self {
            after: Some(key.into()),
        }
    }

    /// The last key done; `None` at the start.
    pub fn last_key(&self) -> Option<&str> {
        self.after.as_deref()
    }
}

impl ListingSource {
    /// Every object under `prefix` in `bucket` (the prefix as it is: `logs/`
    /// lists the "folder", `logs/2024-` every key that starts so; empty for
    /// the whole bucket), with `client` (for instance from
    /// [`S3StoreBuilder::client`](crate::s3::S3StoreBuilder::client)).
    pub fn new(client: Client, bucket: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            prefix: prefix.into(),
            ahead: VecDeque::new(),
            ahead_after: None,
            primed: false,
            ahead_is_last: false,
            page_size: PAGE,
        }
    }

    /// Every object under `s3://bucket/prefix`, with a client configured as
    /// [`MultipartSink::from_url`](crate::s3::MultipartSink::from_url)'s.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the URL when it is not `s3://bucket[/prefix]`,
    /// or a variable with a bad value.
    pub async fn from_url(url: &str) -> Result<Self, Error> {
        let (bucket, prefix) =
            parse_location(url, "input", "s3://bucket or s3://bucket/prefix", false)?;
        let client = transfer_client(&bucket).await?;
        Ok(Self::new(client, bucket, prefix))
    }

    /// Keys per ListObjectsV2 request (1 to 1000; default 1000).
    #[must_use]
    pub fn page_size(mut self, keys: u16) -> Self {
        self.page_size = i32::from(keys.clamp(1, 1000));
        self
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The client, for reading the listed objects.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// Lists the page after `ahead_after` into `ahead`.
    async fn list_page(&mut self) -> Result<(), ObjectError> {
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .set_start_after(self.ahead_after.clone())
            .max_keys(self.page_size)
            .encoding_type(EncodingType::Url)
            .send()
            .await
            .map_err(|e| failed(e, "ListObjectsV2", &self.bucket, &self.prefix))?;
        let encoded = page.encoding_type() == Some(&EncodingType::Url);
        for object in page.contents() {
            let Some(raw) = object.key() else { continue };
            let key = if encoded {
                decode_key(raw).map_err(|reason| ObjectError::BadKey {
                    url: self.url(),
                    encoded: raw.to_owned(),
                    reason,
                })?
            } else {
                raw.to_owned()
            };
            if Some(&key) == self.ahead_after.as_ref() {
                continue; // a server that includes StartAfter itself
            }
            self.ahead.push_back(ListedObject {
                key,
                size: object
                    .size()
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(0),
                e_tag: object.e_tag().map(str::to_owned),
                last_modified: object
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok()),
            });
        }
        // An empty page ends the listing, whatever it says: it cannot move on.
        self.ahead_is_last = page.is_truncated() != Some(true) || self.ahead.is_empty();
        self.primed = true;
        debug!(listing = %self.url(), after = ?self.ahead_after, keys = self.ahead.len(), last = self.ahead_is_last, "listed a page");
        Ok(())
    }
}

#[async_trait]
impl Source for ListingSource {
    type Cursor = ListingCursor;
    type Record = ListedObject;

    /// The objects after `from`'s key: at most `limit`'s records, and
    /// (past the first) at most its bytes of objects in all.
    ///
    /// # Errors
    ///
    /// [`ObjectError::Request`] when ListObjectsV2 fails;
    /// [`ObjectError::BadKey`] when a key as sent cannot be decoded.
    async fn next_batch(
        &mut self,
        from: &ListingCursor,
        limit: Limit,
    ) -> Result<Option<Batch<Self>>, BoxError> {
        if self.ahead_after != from.after || !self.primed {
            self.ahead.clear();
            self.ahead_after.clone_from(&from.after);
            self.list_page().await?;
        }
        let mut records: Vec<ListedObject> = Vec::new();
        let mut bytes = 0u64;
        loop {
            if self.ahead.is_empty() {
                if self.ahead_is_last {
                    break;
                }
                self.list_page().await?;
                continue;
            }
            let size = self.ahead.front().map_or(0, |o| o.size);
            let over = limit
                .max_bytes()
                .is_some_and(|max| bytes.saturating_add(size) > max);
            if over && !records.is_empty() {
                break;
            }
            let Some(object) = self.ahead.pop_front() else {
                break;
            };
            self.ahead_after = Some(object.key.clone());
            bytes = bytes.saturating_add(object.size);
            records.push(object);
            if limit.is_full(records.len() as u64, bytes) {
                break;
            }
        }
        let Some(last) = records.last() else {
            return Ok(None);
        };
        let next = ListingCursor::after(last.key.clone());
        Ok(Some(Batch::new(records, next)))
    }
}

/// Decodes a key S3 sent URL-encoded: `%XX` is a byte, `+` a space (S3
/// encodes a literal `+` as `%2B`).
fn decode_key(encoded: &str) -> Result<String, String> {
    let spaced = encoded.replace('+', " ");
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(&spaced).collect();
    if let Some(i) = spaced.match_indices('%').map(|(i, _)| i).find(|&i| {
        !spaced
            .get(i + 1..i + 3)
            .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
    }) {
        return Err(format!(
            "a '%' at byte {i} is not followed by two hex digits"
        ));
    }
    String::from_utf8(bytes).map_err(|e| format!("it decodes to bytes that are not UTF-8 ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_decode_as_s3_encodes_them() {
        for (encoded, key) in [
            ("in/a+b", "in/a b"),
            ("in/a%2Bb", "in/a+b"),
            ("in/a%252F", "in/a%2F"),
            ("in/a%09b", "in/a\tb"),
            ("in/c%01d", "in/c\u{1}d"),
            ("in/f%26%3C%3E%22%27", "in/f&<>\"'"),
            ("in/%C3%A9%E2%82%AC", "in/é€"),
            ("plain/key.jsonl", "plain/key.jsonl"),
        ] {
            assert_eq!(decode_key(encoded).unwrap(), key, "{encoded}");
        }
    }

    #[test]
    fn malformed_encodings_are_refused() {
        for (encoded, says) in [
            ("in/%zz", "not followed by two hex digits"),
            ("in/%4", "not followed by two hex digits"),
            ("in/%FF%FE", "not UTF-8"),
        ] {
            let err = decode_key(encoded).unwrap_err();
            assert!(err.contains(says), "{encoded}: {err}");
        }
    }
}
