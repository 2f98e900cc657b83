//! CSV and JSON Lines writers over a [`FileSink`]: records out, exactly once.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use super::FileSink;

/// A JSON Lines output file: one JSON value per line, over a [`FileSink`],
/// so exactly once across kills in the same way: save [`len`](Self::len) in
/// the job's state, [`flush`](Self::flush) in `Job::flush`,
/// [`truncate`](Self::truncate) to the saved length in `Job::resume`.
///
/// ```
/// use spotbatch::sink::JsonLinesSink;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("out.jsonl");
/// let mut out = JsonLinesSink::open(&path).await?;
/// out.write(&serde_json::json!({"id": 1, "name": "Ada"})).await?;
/// out.flush().await?;
/// assert_eq!(std::fs::read_to_string(&path)?, "{\"id\":1,\"name\":\"Ada\"}\n");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct JsonLinesSink {
    file: FileSink,
    line: Vec<u8>,
}

impl JsonLinesSink {
    /// Opens (or creates) the file for appending, as [`FileSink::open`].
    ///
    /// # Errors
    ///
    /// The I/O error, with the path in its message.
    pub async fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(Self::new(FileSink::open(path).await?))
    }

    /// Writes JSON Lines to `file`.
    pub fn new(file: FileSink) -> Self {
        Self {
            file,
            line: Vec::with_capacity(256),
        }
    }

    /// Appends `value` as one line of JSON (buffered).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidData`] when `value` cannot be serialized as
    /// JSON (a map with keys that are not strings), with nothing written;
    /// the I/O error of writing out a full buffer.
    pub async fn write<T: Serialize + ?Sized>(&mut self, value: &T) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, value)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.line.push(b'\n');
        self.file.write(&self.line).await
    }

    /// The output's length in bytes, buffered lines included: what to save
    /// in the state.
    pub fn len(&self) -> u64 {
        self.file.len()
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.file.is_empty()
    }

    /// Writes out and `fsync`s, as [`FileSink::flush`].
    ///
    /// # Errors
    ///
    /// The I/O error, with the path in its message.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.file.flush().await
    }

    /// Cuts the file back to `len` bytes, as [`FileSink::truncate`].
    ///
    /// # Errors
    ///
    /// As [`FileSink::truncate`]: the file is shorter than `len`.
    pub async fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.truncate(len).await
    }

    /// The file written to.
    pub fn file(&self) -> &FileSink {
        &self.file
    }
}

/// A CSV output file over a [`FileSink`], exactly once across kills in the
/// same way (its [`len`](Self::len) in the state, [`flush`](Self::flush) in
/// `Job::flush`, [`truncate`](Self::truncate) in `Job::resume`).
///
/// Fields are quoted when they need it (a delimiter, a quote, a line break
/// inside), lines end with `\n`. A header set with
/// [`with_header`](Self::with_header) is written before the first record
/// of an empty file, so a file truncated back to 0 gets it again.
///
/// ```
/// use spotbatch::sink::CsvSink;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("out.csv");
/// let mut out = CsvSink::open(&path).await?.with_header(["name", "note"]);
/// out.write_record(["Ada", "says \"hi\",\nthen leaves"]).await?;
/// out.flush().await?;
/// assert_eq!(std::fs::read_to_string(&path)?, "name,note\nAda,\"says \"\"hi\"\",\nthen leaves\"\n");
/// # Ok(()) }
/// ```
pub struct CsvSink {
    file: FileSink,
    header: Option<Vec<Vec<u8>>>,
    writer: csv::Writer<Spool>,
    /// What `writer` wrote, not yet handed to `file`.
    spool: Arc<Mutex<Vec<u8>>>,
}

/// The buffer a `csv::Writer` writes into, shared with the [`CsvSink`].
struct Spool(Arc<Mutex<Vec<u8>>>);

impl io::Write for Spool {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A poisoned lock still holds bytes appended whole.
fn lock(m: &Mutex<Vec<u8>>) -> MutexGuard<'_, Vec<u8>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl std::fmt::Debug for CsvSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsvSink")
            .field("file", &self.file)
            .field("header", &self.header.is_some())
            .finish_non_exhaustive()
    }
}

impl CsvSink {
    /// Opens (or creates) the file for appending, as [`FileSink::open`];
    /// fields separated by `,`.
    ///
    /// # Errors
    ///
    /// The I/O error, with the path in its message.
    pub async fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(Self::new(FileSink::open(path).await?))
    }

    /// Writes CSV to `file`, fields separated by `,`.
    pub fn new(file: FileSink) -> Self {
        Self::with_writer(file, csv::WriterBuilder::new())
    }

    /// Writes CSV to `file` as `builder` says (delimiter, quoting, line
    /// ends); its `has_headers` is ignored: see [`with_header`](Self::with_header).
    pub fn with_writer(file: FileSink, mut builder: csv::WriterBuilder) -> Self {
        let spool = Arc::new(Mutex::new(Vec::with_capacity(256)));
        Self {
            file,
            header: None,
            writer: builder.has_headers(false).from_writer(Spool(spool.clone())),
            spool,
        }
    }

    /// The header to write before the first record when the file is empty.
    #[must_use]
    pub fn with_header<I, F>(mut self, fields: I) -> Self
    where
        I: IntoIterator<Item = F>,
        F: AsRef<[u8]>,
    {
        self.header = Some(fields.into_iter().map(|f| f.as_ref().to_vec()).collect());
        self
    }

    /// Appends one record of fields (buffered).
    ///
    /// # Errors
    ///
    /// The I/O error of writing out a full buffer.
    pub async fn write_record<I, F>(&mut self, fields: I) -> io::Result<()>
    where
        I: IntoIterator<Item = F>,
        F: AsRef<[u8]>,
    {
        self.header_if_empty()?;
        self.writer.write_record(fields).map_err(csv_error)?;
        self.write_out().await
    }

    /// Appends `record` serialized by the `csv` crate's serde support (a
    /// struct, a tuple, a sequence of fields; buffered). No header is
    /// derived from a struct's field names: set one with
    /// [`with_header`](Self::with_header).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidData`] when `record` cannot be a CSV record
    /// (a nested map), with nothing written; the I/O error of writing out a
    /// full buffer.
    pub async fn serialize<T: Serialize>(&mut self, record: &T) -> io::Result<()> {
        self.header_if_empty()?;
        if let Err(e) = self.writer.serialize(record) {
            // Drop the part of the record written before the error.
            let _ = self.writer.flush();
            lock(&self.spool).clear();
            return Err(csv_error(e));
        }
        self.write_out().await
    }

    fn header_if_empty(&mut self) -> io::Result<()> {
        if self.file.is_empty() && lock(&self.spool).is_empty() {
            if let Some(header) = &self.header {
                self.writer.write_record(header).map_err(csv_error)?;
            }
        }
        Ok(())
    }

    async fn write_out(&mut self) -> io::Result<()> {
        self.writer.flush()?;
        let bytes = std::mem::take(&mut *lock(&self.spool));
        let result = self.file.write(&bytes).await;
        let mut spool = lock(&self.spool);
        if spool.is_empty() {
            *spool = bytes; // keep the allocation
            spool.clear();
        }
        result
    }

    /// The output's length in bytes, buffered records included: what to
    /// save in the state.
    pub fn len(&self) -> u64 {
        self.file.len()
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.file.is_empty()
    }

    /// Writes out and `fsync`s, as [`FileSink::flush`].
    ///
    /// # Errors
    ///
    /// The I/O error, with the path in its message.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.file.flush().await
    }

    /// Cuts the file back to `len` bytes, as [`FileSink::truncate`].
    ///
    /// # Errors
    ///
    /// As [`FileSink::truncate`]: the file is shorter than `len`.
    pub async fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.truncate(len).await
    }

    /// The file written to.
    pub fn file(&self) -> &FileSink {
        &self.file
    }
}

fn csv_error(e: csv::Error) -> io::Error {
    let message = e.to_string();
    match e.into_kind() {
        csv::ErrorKind::Io(e) => e,
        _ => io::Error::new(io::ErrorKind::InvalidData, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_csv_header_is_written_again_after_truncating_to_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        let mut out = CsvSink::open(&path).await.unwrap().with_header(["a", "b"]);
        out.write_record(["1", "2"]).await.unwrap();
        let covered = out.len();
        out.serialize(&("3", 4)).await.unwrap();
        out.flush().await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a,b\n1,2\n3,4\n");

        let mut out = CsvSink::open(&path).await.unwrap().with_header(["a", "b"]);
        out.truncate(covered).await.unwrap();
        out.write_record(["3", "4"]).await.unwrap();
        out.flush().await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a,b\n1,2\n3,4\n");

        out.truncate(0).await.unwrap();
        out.write_record(["5", "6"]).await.unwrap();
        out.flush().await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a,b\n5,6\n");
    }

    #[tokio::test]
    async fn a_record_that_cannot_be_written_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut out = JsonLinesSink::open(&path).await.unwrap();
        let bad = std::collections::HashMap::from([((1, 2), "tuple keys are not JSON")]);
        let err = out.write(&bad).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(out.len(), 0);

        let path = dir.path().join("out.csv");
        let mut out = CsvSink::open(&path).await.unwrap();
        let nested = std::collections::BTreeMap::from([("k", vec![1, 2])]);
        assert!(out.serialize(&nested).await.is_err());
        out.write_record(["ok"]).await.unwrap();
        out.flush().await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "ok\n");
    }
}
