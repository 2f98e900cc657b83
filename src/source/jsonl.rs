//! JSON Lines files as a source.

use std::marker::PhantomData;
use std::path::Path;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use super::file::{FilePosition, LocalFile, ReadAt, Window};
use super::{Batch, Limit, Source, SourceError};
use crate::error::BoxError;

/// The values of a [JSON Lines](https://jsonlines.org/) file, one per line,
/// as `T` (any [`DeserializeOwned`] type; [`serde_json::Value`] by default);
/// the cursor is a [`FilePosition`].
///
/// Lines end with `\n` or `\r\n`; the last may have no line end. Blank lines
/// (spaces only) are skipped, and a UTF-8 byte order mark at the start of
/// the file is dropped. A line that is not a `T` is an error naming its line
/// and record.
///
/// ```
/// use spotbatch::source::{FilePosition, JsonLinesSource, Limit, Source};
///
/// #[derive(serde::Deserialize, Debug, PartialEq)]
/// struct Event { id: u32, name: String }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), spotbatch::BoxError> {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("events.jsonl");
/// std::fs::write(&path, "{\"id\":1,\"name\":\"ünïcode\"}\r\n\n{\"id\":2,\"name\":\"b\"}")?;
/// let mut events = JsonLinesSource::<Event>::file(&path);
/// let batch = events.next_batch(&FilePosition::default(), Limit::records(10)).await?.ok_or("empty")?;
/// assert_eq!(batch.records()[1], Event { id: 2, name: "b".into() });
/// assert_eq!((batch.next().record, batch.next().line), (2, 2));
/// # Ok(()) }
/// ```
pub struct JsonLinesSource<T = serde_json::Value> {
    window: Window,
    records: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for JsonLinesSource<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLinesSource")
            .field("input", &self.window.name())
            .field("records", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned + Send + 'static> JsonLinesSource<T> {
    /// The JSON Lines file at `path`.
    pub fn file(path: impl AsRef<Path>) -> Self {
        Self::new(LocalFile::new(path))
    }

    /// The JSON Lines held by `input` (an S3 object, say).
    pub fn new(input: impl ReadAt + 'static) -> Self {
        Self {
            window: Window::new(Box::new(input)),
            records: PhantomData,
        }
    }

    /// The input's name: its path or URL.
    pub fn name(&self) -> &str {
        self.window.name()
    }

    #[cfg(test)]
    pub(super) fn set_read_size(&mut self, n: usize) {
        self.window.set_read_size(n);
    }
}

const BOM: &[u8] = b"\xef\xbb\xbf";

#[async_trait]
impl<T: DeserializeOwned + Send + 'static> Source for JsonLinesSource<T> {
    type Cursor = FilePosition;
    type Record = T;

    async fn next_batch(
        &mut self,
        from: &FilePosition,
        limit: Limit,
    ) -> Result<Option<Batch<Self>>, BoxError> {
        let mut pos = *from;
        let mut records = Vec::with_capacity(limit.capacity_hint());
        let mut bytes = 0u64;
        self.window.seek(pos.offset).await?;
        loop {
            let at_end = self.window.at_end();
            let data = self.window.bytes();
            let mut consumed = 0usize;
            let mut incomplete = false;
            while !limit.is_full(records.len() as u64, bytes) {
                let rest = &data[consumed..];
                if rest.is_empty() {
                    incomplete = !at_end;
                    break;
                }
                let end = match memchr::memchr(b'\n', rest) {
                    Some(i) => i + 1,
                    None if at_end => rest.len(),
                    None => {
                        incomplete = true;
                        break;
                    }
                };
                let mut line = &rest[..end];
                line = line.strip_suffix(b"\n").unwrap_or(line);
                line = line.strip_suffix(b"\r").unwrap_or(line);
                if pos.offset == 0 {
                    line = line.strip_prefix(BOM).unwrap_or(line);
                }
                let is_record = !line.trim_ascii().is_empty();
                if is_record {
                    let value =
                        serde_json::from_slice::<T>(line).map_err(|e| SourceError::Parse {
                            input: self.window.name().to_owned(),
                            at: pos.to_string(),
                            reason: e.to_string(),
                        })?;
                    records.push(value);
                    bytes += end as u64; // blank lines are free: a batch is never blank only
                }
                // One line: the bytes up to and with its line feed, if any.
                pos.offset += end as u64;
                pos.record += u64::from(is_record);
                pos.line += u64::from(rest[end - 1] == b'\n');
                consumed += end;
            }
            self.window.consume(consumed);
            if !incomplete || !self.window.fill(consumed == 0).await? {
                break;
            }
        }
        if records.is_empty() && (pos == *from || self.window.at_end()) {
            return Ok(None); // nothing left but blank lines
        }
        Ok(Some(Batch::new(records, pos)))
    }
}
