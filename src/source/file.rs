//! Line-delimited inputs read by byte ranges: where a file source's bytes
//! come from ([`ReadAt`]), its cursor ([`FilePosition`]), and the read-ahead
//! window both file sources parse from.

use std::fmt;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::SourceError;

/// Bytes read per request at first; doubled while one record does not fit.
const READ_SIZE: usize = 1 << 20;
/// The largest record a file source accepts.
pub(super) const MAX_RECORD: usize = 256 << 20;

/// An input read by byte ranges: a local file ([`LocalFile`]) or, with the
/// feature `s3`, an S3 object (`S3Object`, by ranged GETs). The file
/// sources read it in windows of 1 MiB and more.
///
/// The input must not change while a job reads it, nor between its runs:
/// a cursor is a byte offset into it.
#[async_trait]
pub trait ReadAt: Send + Sync {
    /// The input's name in messages: a path, an `s3://bucket/key` URL.
    fn name(&self) -> &str;

    /// The input's length in bytes.
    ///
    /// # Errors
    ///
    /// The input cannot be found or read.
    async fn size(&self) -> io::Result<u64>;

    /// The bytes from `offset` on, `len` of them or fewer at the end of the
    /// input (none at or past it).
    ///
    /// # Errors
    ///
    /// The input cannot be read, or changed since it was first read (where
    /// the input can tell, as S3 can by the object's ETag).
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;
}

/// A local file, read with `pread(2)` on tokio's blocking threads.
#[derive(Debug, Clone)]
pub struct LocalFile {
    path: PathBuf,
    name: String,
    file: Arc<tokio::sync::OnceCell<Arc<std::fs::File>>>,
}

impl LocalFile {
    /// The file at `path`, opened at its first read.
    pub fn new(path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().to_path_buf();
        Self {
            name: path.display().to_string(),
            path,
            file: Arc::default(),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn file(&self) -> io::Result<Arc<std::fs::File>> {
        self.file
            .get_or_try_init(|| async {
                let path = self.path.clone();
                let file = tokio::task::spawn_blocking(move || std::fs::File::open(path))
                    .await
                    .map_err(io::Error::other)??;
                Ok(Arc::new(file))
            })
            .await
            .cloned()
    }
}

#[async_trait]
impl ReadAt for LocalFile {
    fn name(&self) -> &str {
        &self.name
    }

    async fn size(&self) -> io::Result<u64> {
        let file = self.file().await?;
        tokio::task::spawn_blocking(move || Ok(file.metadata()?.len()))
            .await
            .map_err(io::Error::other)?
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let file = self.file().await?;
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0; len];
            let mut filled = 0;
            while filled < len {
                match file.read_at(&mut buf[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(filled);
            Ok(buf)
        })
        .await
        .map_err(io::Error::other)?
    }
}

/// The cursor of a file source: where the next record starts.
///
/// `Default` is the start of the file. The offset is exact (resuming reads
/// from it, no record is skipped or read twice); `record` and `line` count
/// what lies before it, for messages and for the handler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FilePosition {
    /// The byte offset of the next record (for a CSV file with a header, 0
    /// until the first record is read: the header is read again).
    pub offset: u64,
    /// The records before it (the header not counted): the next record's
    /// number, from 0.
    pub record: u64,
    /// The line feeds before it: the line it starts on, from 0. Line feeds
    /// inside quoted CSV fields count.
    pub line: u64,
}

impl FilePosition {
    /// The position `consumed` bytes further, past `records` records and the
    /// line feeds in `bytes` (the bytes consumed).
    pub(super) fn advance(&mut self, bytes: &[u8], records: u64) {
        self.offset += bytes.len() as u64;
        self.record += records;
        self.line += memchr::memchr_iter(b'\n', bytes).count() as u64;
    }

    /// Where a record starting `skipped` bytes (blank lines) past this
    /// position is, for messages.
    pub(super) fn describe(&self, skipped: &[u8]) -> String {
        let lines = memchr::memchr_iter(b'\n', skipped).count() as u64;
        format!(
            "line {} (record {}, byte {})",
            self.line + lines + 1,
            self.record + 1,
            self.offset + skipped.len() as u64
        )
    }
}

impl fmt::Display for FilePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(&[]))
    }
}

/// A read-ahead window over an input: the bytes from `start` on.
pub(super) struct Window {
    input: Box<dyn ReadAt>,
    /// The input's size, learnt at the first read.
    size: Option<u64>,
    start: u64,
    /// The bytes read, from `bytes[head]` (at `start`) on; those before
    /// `head` are consumed, dropped at the next read (one move of what is
    /// left, not one per batch).
    bytes: Vec<u8>,
    head: usize,
    /// How much the next read asks for.
    read_size: usize,
    /// How much the first read after a seek asks for.
    first_read: usize,
}

impl Window {
    pub(super) fn new(input: Box<dyn ReadAt>) -> Self {
        Self {
            input,
            size: None,
            start: 0,
            bytes: Vec::new(),
            head: 0,
            read_size: READ_SIZE,
            first_read: READ_SIZE,
        }
    }

    pub(super) fn name(&self) -> &str {
        self.input.name()
    }

    /// Reads `n` bytes at a time (tests: windows that cut records anywhere).
    #[cfg(test)]
    pub(super) fn set_read_size(&mut self, n: usize) {
        self.read_size = n;
        self.first_read = n;
    }

    pub(super) fn io(&self, source: io::Error) -> SourceError {
        SourceError::Io {
            input: self.name().to_owned(),
            source,
        }
    }

    async fn size(&mut self) -> Result<u64, SourceError> {
        if let Some(size) = self.size {
            return Ok(size);
        }
        let size = self.input.size().await.map_err(|e| self.io(e))?;
        self.size = Some(size);
        Ok(size)
    }

    /// Makes the window start at `offset`, keeping the bytes already read
    /// past it.
    ///
    /// # Errors
    ///
    /// [`SourceError::Changed`] when `offset` is past the end of the input.
    pub(super) async fn seek(&mut self, offset: u64) -> Result<(), SourceError> {
        let size = self.size().await?;
        if offset > size {
            return Err(SourceError::Changed {
                input: self.name().to_owned(),
                reason: format!("it is {size} bytes long, and the cursor is at byte {offset}"),
            });
        }
        let end = self.start + self.held() as u64;
        if offset >= self.start && offset <= end {
            let skip = usize::try_from(offset - self.start).unwrap_or(self.held());
            self.head += skip;
        } else {
            self.bytes.clear();
            self.head = 0;
        }
        self.start = offset;
        self.read_size = self.first_read;
        Ok(())
    }

    /// The bytes read from the window's start on.
    pub(super) fn bytes(&self) -> &[u8] {
        &self.bytes[self.head..]
    }

    /// How many bytes the window holds, from its start on.
    fn held(&self) -> usize {
        self.bytes.len() - self.head
    }

    /// Whether the window holds every byte up to the end of the input.
    pub(super) fn at_end(&self) -> bool {
        self.size
            .is_some_and(|size| self.start + self.held() as u64 >= size)
    }

    /// Drops the first `n` bytes: the window starts `n` bytes further.
    pub(super) fn consume(&mut self, n: usize) {
        let n = n.min(self.held());
        self.head += n;
        self.start += n as u64;
    }

    /// Reads more of the input into the window: more than the window holds
    /// when `grow` (a record does not fit). `false` at the end of the input.
    ///
    /// # Errors
    ///
    /// The input cannot be read; [`SourceError::Parse`] when one record
    /// would exceed 256 MiB.
    pub(super) async fn fill(&mut self, grow: bool) -> Result<bool, SourceError> {
        let size = self.size().await?;
        let end = self.start + self.held() as u64;
        if end >= size {
            return Ok(false);
        }
        if grow && self.held() >= self.read_size {
            self.read_size = self.held().saturating_mul(2);
        }
        if self.held() >= MAX_RECORD {
            return Err(SourceError::Parse {
                input: self.name().to_owned(),
                at: format!("byte {}", self.start),
                reason: format!("a record longer than {} MiB", MAX_RECORD >> 20),
            });
        }
        let want = usize::try_from(size - end)
            .unwrap_or(usize::MAX)
            .min(self.read_size);
        let more = self
            .input
            .read_at(end, want)
            .await
            .map_err(|e| self.io(e))?;
        if more.is_empty() {
            // Shorter than its size said: it shrank under us.
            return Err(SourceError::Changed {
                input: self.name().to_owned(),
                reason: format!("it ended at byte {end}, not at {size}"),
            });
        }
        if self.held() == 0 {
            self.bytes = more; // at a record's end, as usual: no copy
        } else {
            self.bytes.drain(..self.head);
            self.bytes.extend_from_slice(&more);
        }
        self.head = 0;
        Ok(true)
    }
}
