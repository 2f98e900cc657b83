//! CSV files as a source, parsed by the `csv` crate.

use std::path::Path;

use async_trait::async_trait;
use csv::{ByteRecord, StringRecord};

use super::file::{FilePosition, LocalFile, ReadAt, Window};
use super::{Batch, Limit, Source, SourceError};
use crate::error::BoxError;

/// The records of a CSV file, with a header or without, as
/// [`csv::StringRecord`]s; the cursor is a [`FilePosition`].
///
/// Parsing is the `csv` crate's (RFC 4180 and the usual variants): quoted
/// fields with delimiters, quotes (`""`) and line breaks inside, `\n`,
/// `\r\n` or `\r` line ends, a last record without a line end, blank lines
/// skipped, a UTF-8 byte order mark dropped. Fields must be UTF-8.
///
/// # The header
///
/// With a header (the default), the first record names the fields: it is
/// not handed to the handler, and every record must have as many fields
/// (unless [`flexible`](Self::flexible)). The header is read from the start
/// of the file at the first batch of each run, so a resumed run reads one
/// window more and the cursor stays small; the file must not change between
/// runs anyway. [`headers`](Self::headers) gives it. An empty file, or one
/// that holds only a header, has no records.
///
/// ```
/// use spotbatch::source::{CsvSource, FilePosition, Limit, Source};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), spotbatch::BoxError> {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("people.csv");
/// std::fs::write(&path, "name,city\r\nAda,\"London\r\nUK\"\r\nRenée,Paris")?;
/// let mut people = CsvSource::file(&path);
/// let batch = people.next_batch(&FilePosition::default(), Limit::records(1)).await?.ok_or("empty")?;
/// assert_eq!(batch.records()[0], vec!["Ada", "London\r\nUK"]);
/// assert_eq!((batch.next().record, batch.next().line), (1, 2));
///
/// let rest = people.next_batch(batch.next(), Limit::records(100)).await?.ok_or("empty")?;
/// assert_eq!(rest.records()[0], vec!["Renée", "Paris"]);
/// assert!(people.next_batch(rest.next(), Limit::records(100)).await?.is_none());
/// assert_eq!(people.headers().await?, vec!["name", "city"]);
/// # Ok(()) }
/// ```
pub struct CsvSource {
    window: Window,
    options: Options,
    /// The header and the position after it, once read.
    header: Option<(StringRecord, FilePosition)>,
}

#[derive(Debug, Clone, Copy)]
struct Options {
    has_headers: bool,
    flexible: bool,
    delimiter: u8,
    quote: u8,
}

impl std::fmt::Debug for CsvSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsvSource")
            .field("input", &self.window.name())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl CsvSource {
    /// The CSV file at `path`, with a header, fields separated by `,`.
    pub fn file(path: impl AsRef<Path>) -> Self {
        Self::new(LocalFile::new(path))
    }

    /// The CSV held by `input` (an S3 object, say), with a header, fields
    /// separated by `,`.
    pub fn new(input: impl ReadAt + 'static) -> Self {
        Self {
            window: Window::new(Box::new(input)),
            options: Options {
                has_headers: true,
                flexible: false,
                delimiter: b',',
                quote: b'"',
            },
            header: None,
        }
    }

    /// Whether the first record is a header (default `true`). Without one,
    /// every record is handed to the handler, and [`headers`](Self::headers)
    /// is empty.
    #[must_use]
    pub fn has_headers(mut self, yes: bool) -> Self {
        self.options.has_headers = yes;
        self
    }

    /// Whether records may have another number of fields than the header
    /// (default `false`: such a record is an error). Without a header,
    /// records of any length are accepted.
    #[must_use]
    pub fn flexible(mut self, yes: bool) -> Self {
        self.options.flexible = yes;
        self
    }

    /// The field delimiter (default `,`; `b'\t'` for TSV, `b';'`).
    #[must_use]
    pub fn delimiter(mut self, delimiter: u8) -> Self {
        self.options.delimiter = delimiter;
        self
    }

    /// The quote character (default `"`).
    #[must_use]
    pub fn quote(mut self, quote: u8) -> Self {
        self.options.quote = quote;
        self
    }

    /// The input's name: its path or URL.
    pub fn name(&self) -> &str {
        self.window.name()
    }

    #[cfg(test)]
    pub(super) fn set_read_size(&mut self, n: usize) {
        self.window.set_read_size(n);
    }

    /// The header's fields, read from the start of the file if not yet
    /// read; empty without a header or for an empty file.
    ///
    /// # Errors
    ///
    /// The file cannot be read, or its header is not UTF-8.
    pub async fn headers(&mut self) -> Result<&StringRecord, SourceError> {
        let (headers, _) = self.header().await?;
        Ok(headers)
    }

    async fn header(&mut self) -> Result<&(StringRecord, FilePosition), SourceError> {
        if self.header.is_none() {
            let start = FilePosition::default();
            let header = if self.options.has_headers {
                let mut first = Vec::new();
                let mut end = self
                    .read(start, Limit::records(1), &mut first, None)
                    .await?;
                end.record = 0; // the header is not a record
                (first.pop().unwrap_or_default(), end)
            } else {
                (StringRecord::new(), start)
            };
            self.header = Some(header);
        }
        Ok(self.header.get_or_insert_default())
    }

    fn reader<'a>(&self, data: &'a [u8]) -> csv::Reader<&'a [u8]> {
        csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(self.options.delimiter)
            .quote(self.options.quote)
            .from_reader(data)
    }

    /// Reads records from `from` into `out` until `limit`; the position
    /// after them. Checks their field count against `fields`.
    async fn read(
        &mut self,
        from: FilePosition,
        limit: Limit,
        out: &mut Vec<StringRecord>,
        fields: Option<usize>,
    ) -> Result<FilePosition, SourceError> {
        let mut pos = from;
        let mut bytes = 0u64;
        self.window.seek(pos.offset).await?;
        let mut record = ByteRecord::new();
        loop {
            let at_end = self.window.at_end();
            let data = self.window.bytes();
            let mut reader = self.reader(data);
            let mut consumed = 0usize;
            let mut incomplete = false;
            while !limit.is_full(out.len() as u64, bytes) {
                let more = reader
                    .read_byte_record(&mut record)
                    .map_err(|e| self.parse_error(&pos, &data[consumed..], format!("{e}")))?;
                let end = usize::try_from(reader.position().byte()).unwrap_or(data.len());
                if !more {
                    // Only blank lines left in the window.
                    if at_end {
                        pos.advance(&data[consumed..end], 0);
                        consumed = end;
                    } else {
                        incomplete = true;
                    }
                    break;
                }
                if end >= data.len() && !at_end {
                    // The record may go on past the window.
                    incomplete = true;
                    break;
                }
                let text =
                    StringRecord::from_byte_record(std::mem::take(&mut record)).map_err(|e| {
                        self.parse_error(
                            &pos,
                            &data[consumed..],
                            format!("field {} is not UTF-8: {}", field_of(&e), e.utf8_error()),
                        )
                    })?;
                if let Some(fields) = fields.filter(|_| !self.options.flexible) {
                    if text.len() != fields {
                        return Err(self.parse_error(
                            &pos,
                            &data[consumed..],
                            format!(
                                "{} fields, but the header has {fields} (CsvSource::flexible accepts it)",
                                text.len()
                            ),
                        ));
                    }
                }
                out.push(text);
                bytes += (end - consumed) as u64;
                pos.advance(&data[consumed..end], 1);
                consumed = end;
            }
            drop(reader);
            self.window.consume(consumed);
            if !incomplete || !self.window.fill(consumed == 0).await? {
                return Ok(pos);
            }
        }
    }

    /// The error of the record at `pos`, whose bytes (blank lines first) are `rest`.
    fn parse_error(&self, pos: &FilePosition, rest: &[u8], reason: String) -> SourceError {
        let blank = rest
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        SourceError::Parse {
            input: self.window.name().to_owned(),
            at: pos.describe(&rest[..blank]),
            reason,
        }
    }
}

/// The 1-based number of the field a UTF-8 error is in.
fn field_of(e: &csv::FromUtf8Error) -> usize {
    e.utf8_error().field() + 1
}

#[async_trait]
impl Source for CsvSource {
    type Cursor = FilePosition;
    type Record = StringRecord;

    async fn next_batch(
        &mut self,
        from: &FilePosition,
        limit: Limit,
    ) -> Result<Option<Batch<Self>>, BoxError> {
        let has_headers = self.options.has_headers;
        let (headers, data_start) = self.header().await?;
        let fields = (has_headers && !headers.is_empty()).then_some(headers.len());
        let from = if from.offset < data_start.offset {
            *data_start
        } else {
            *from
        };
        let mut records = Vec::with_capacity(limit.capacity_hint());
        let next = self.read(from, limit, &mut records, fields).await?;
        if records.is_empty() && (next == from || self.window.at_end()) {
            return Ok(None); // nothing left but blank lines
        }
        Ok(Some(Batch::new(records, next)))
    }
}
