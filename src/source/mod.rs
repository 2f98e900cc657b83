//! Resumable sources: where records come from, with an exact cursor.
//!
//! A [`Source`] reads records in batches and says, with each batch, the
//! cursor after it. [`SourceJob`] turns a source and a [`Handler`] (what to
//! do with each batch) into a [`Job`](crate::Job): the source plans the chunks and
//! carries the cursor, the handler only handles records. A job built on a
//! source:
//!
//! ```no_run
//! use spotbatch::prelude::*;
//! use spotbatch::sink::JsonLinesSink;
//! use spotbatch::source::{Batch, CsvSource, FilePosition, Handler, Limit, SourceJob};
//!
//! /// Copies a CSV file's records to a JSON Lines file, exactly once.
//! struct ToJson { out: JsonLinesSink }
//!
//! #[async_trait]
//! impl Handler<CsvSource> for ToJson {
//!     type State = u64; // bytes of output the cursor covers
//!
//!     async fn resume(&mut self, _: &FilePosition, out_len: &u64) -> Result<()> {
//!         Ok(self.out.truncate(*out_len).await?) // cut what a killed run wrote past the checkpoint
//!     }
//!     async fn handle(&mut self, batch: Batch<CsvSource>, out_len: &mut u64, _: &ChunkContext) -> Result<()> {
//!         for record in batch.records() {
//!             self.out.write(&record.iter().collect::<Vec<_>>()).await?;
//!         }
//!         *out_len = self.out.len();
//!         Ok(())
//!     }
//!     async fn flush(&mut self) -> Result<()> {
//!         Ok(self.out.flush().await?) // before every checkpoint
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<std::process::ExitCode> {
//!     let shutdown = spotbatch::shutdown::listen(); // first: from here on SIGTERM is a stop request
//!     tracing_subscriber::fmt().init(); // the runner's log lines
//!     let out = match shutdown.interruptible(JsonLinesSink::open("orders.jsonl")).await {
//!         Ok(out) => out?,
//!         Err(stopped) => return Ok(stopped.exit_code()), // stopped before the run
//!     };
//!     let source = CsvSource::file("orders.csv"); // a header, then records
//!     let job = SourceJob::new(source, ToJson { out }).limit(Limit::records(1000).or_bytes(1 << 20));
//!     Ok(Runner::new("orders-to-json", job).run().await.exit_code())
//! }
//! ```
//!
//! The same job over [`Ranges`] or a Postgres scan changes the source and
//! the `Handler<…>` it names, nothing else.
//!
//! The sources here:
//!
//! | source | records | cursor |
//! |---|---|---|
//! | [`CsvSource`] | a CSV file's records ([`csv::StringRecord`]), local or (feature `s3`) an S3 object | [`FilePosition`]: byte offset, number and line of the next record |
//! | [`JsonLinesSource`] | a JSON Lines file's values, typed or [`serde_json::Value`] | [`FilePosition`] |
//! | [`Ranges`] | sub-ranges of numbers, dates or timestamps | the next start |
//! | [`KeysetScan`](crate::source#sources) (feature `postgres`) | rows of a table or query, in the order of a unique key | the last key done |
//! | `s3::ListingSource` (feature `s3`) | every object under an S3 prefix (key, size, ETag), in the listing's order | the last key done |
//!
//! Which to use when, and what each guarantees after SIGTERM and SIGKILL, is
//! in the guide's [sources, sinks and steps][guide].
//!
//! # Guarantees
//!
//! A source's batches are read again, from the checkpoint's cursor, after a
//! hard stop: records are handled **at least once**, and exactly once when
//! the handler's outputs are (a [`FileSink`](crate::FileSink) or a
//! [`CsvSink`](crate::sink::CsvSink) with its length in the state, a
//! `SharedTransaction`). After a graceful stop every handled batch is
//! covered by the final checkpoint, and the next run starts at the first
//! record not handled.
//!
//! # Writing a source
//!
//! A source reads from a cursor it is given, not from where it stopped:
//! [`next_batch`](Source::next_batch) may be called with a cursor from a
//! checkpoint of another process. It may keep a read-ahead buffer or a
//! connection between calls, as long as the batch depends on the cursor only.
//!
//! ```
//! use spotbatch::prelude::*;
//! use spotbatch::source::{Batch, Limit, Source};
//!
//! /// The lines of a text held in memory; the cursor is the next line's index.
//! struct Lines(Vec<String>);
//!
//! #[async_trait]
//! impl Source for Lines {
//!     type Cursor = usize;
//!     type Record = String;
//!
//!     async fn next_batch(&mut self, from: &usize, limit: Limit) -> Result<Option<Batch<Self>>> {
//!         if *from >= self.0.len() {
//!             return Ok(None); // the end: the job completes
//!         }
//!         let end = self.0.len().min(from + usize::try_from(limit.max_records_or_default())?);
//!         Ok(Some(Batch::new(self.0[*from..end].to_vec(), end)))
//!     }
//! }
//! ```
//!
//! [guide]: https://github.com/spotbatch/spotbatch/blob/main/docs/sources.md

mod delimited;
mod file;
mod job;
mod jsonl;
#[cfg(feature = "postgres")]
mod keyset;
mod ranges;
#[cfg(feature = "s3")]
mod s3_object;
#[cfg(test)]
mod tests;

use std::fmt::Debug;
use std::num::NonZeroU64;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::BoxError;

/// The `csv` crate this module parses with, for [`csv::StringRecord`] and
/// [`csv::WriterBuilder`].
pub use ::csv;
pub use delimited::CsvSource;
pub use file::{FilePosition, LocalFile, ReadAt};
pub use job::{Handler, SourceJob};
pub use jsonl::JsonLinesSource;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use keyset::{KeyValue, KeysetScan};
pub use ranges::{Ranges, Step};
#[cfg(feature = "s3")]
#[cfg_attr(docsrs, doc(cfg(feature = "s3")))]
pub use s3_object::S3Object;

/// Where records come from, read in batches from a cursor.
///
/// The batch at a cursor, and the cursor after it, depend on the cursor and
/// the input only: reading from a cursor saved by another run gives the same
/// records as this run would. That is what makes a checkpoint of the cursor
/// enough to resume.
#[async_trait]
pub trait Source: Send {
    /// Where the source stands: the position of the next record. `Default`
    /// is the very beginning of the input.
    type Cursor: Serialize + DeserializeOwned + Clone + Debug + Default + Send + Sync + 'static;

    /// One record.
    type Record: Send + 'static;

    /// The records from `from` on, at most as many as `limit` allows, and
    /// the cursor after them; `None` when no record is left at `from`.
    ///
    /// A batch holds at least one record, unless the source skipped input
    /// that held none (blank lines); its cursor is then past that input, so
    /// that calling again with it makes progress.
    ///
    /// # Errors
    ///
    /// The input cannot be read, a record cannot be parsed (the error names
    /// the input and the record's position), or the cursor does not fit the
    /// input (it changed since the cursor was saved). A [`SourceError`] for
    /// the sources of this module.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave a read-ahead buffer half-filled; the
    /// next call, with any cursor, still gives that cursor's batch.
    async fn next_batch(
        &mut self,
        from: &Self::Cursor,
        limit: Limit,
    ) -> Result<Option<Batch<Self>>, BoxError>;

    /// The number of records, when the source knows it without reading them
    /// all, for progress and ETA in the logs.
    fn total_records(&self) -> Option<u64> {
        None
    }
}

/// Some of a source's records, and the source's cursor after them.
pub struct Batch<S: Source + ?Sized> {
    records: Vec<S::Record>,
    next: S::Cursor,
    items: Option<u64>,
}

impl<S: Source + ?Sized> Debug for Batch<S>
where
    S::Record: Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("records", &self.records)
            .field("next", &self.next)
            .field("items", &self.items())
            .finish()
    }
}

impl<S: Source + ?Sized> Batch<S> {
    /// `records`, followed in the source by the record at `next`.
    pub fn new(records: Vec<S::Record>, next: S::Cursor) -> Self {
        Self {
            records,
            next,
            items: None,
        }
    }

    /// Counts the batch as `items` in the run's counters, progress and rate,
    /// instead of its number of records (e.g. a [`Ranges`] batch of one
    /// range of 1000 numbers counts 1000).
    #[must_use]
    pub fn with_items(mut self, items: u64) -> Self {
        self.items = Some(items);
        self
    }

    /// The records, in the source's order.
    pub fn records(&self) -> &[S::Record] {
        &self.records
    }

    /// The cursor after the batch: where the next batch starts.
    pub fn next(&self) -> &S::Cursor {
        &self.next
    }

    /// How many items the batch counts for: its records unless
    /// [`with_items`](Self::with_items) said otherwise.
    pub fn items(&self) -> u64 {
        self.items.unwrap_or(self.records.len() as u64)
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the batch holds no record (the source skipped blank input).
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records, taken out of the batch.
    pub fn into_records(self) -> Vec<S::Record> {
        self.records
    }

    /// The records and the cursor after them.
    pub fn into_parts(self) -> (Vec<S::Record>, S::Cursor) {
        (self.records, self.next)
    }
}

/// How large a batch may be: at most so many records, or so many bytes of
/// input, whichever comes first. A batch always holds at least one record,
/// however large.
///
/// Sources that cannot measure bytes ([`Ranges`], the Postgres scan) go by
/// the records only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    records: Option<NonZeroU64>,
    bytes: Option<NonZeroU64>,
}

impl Default for Limit {
    /// 1000 records.
    fn default() -> Self {
        Self::records(1000)
    }
}

impl Limit {
    /// At most `records` records per batch (0 counts as 1).
    pub const fn records(records: u64) -> Self {
        Self {
            records: Some(at_least_one(records)),
            bytes: None,
        }
    }

    /// At most `bytes` bytes of input per batch (0 counts as 1: one record
    /// per batch), for sources that read bytes; the others take 1000 records.
    pub const fn bytes(bytes: u64) -> Self {
        Self {
            records: None,
            bytes: Some(at_least_one(bytes)),
        }
    }

    /// Also at most `records` records per batch.
    #[must_use]
    pub const fn or_records(mut self, records: u64) -> Self {
        self.records = Some(at_least_one(records));
        self
    }

    /// Also at most `bytes` bytes of input per batch.
    #[must_use]
    pub const fn or_bytes(mut self, bytes: u64) -> Self {
        self.bytes = Some(at_least_one(bytes));
        self
    }

    /// The most records a batch may hold; `None` for a bytes-only limit.
    pub const fn max_records(&self) -> Option<u64> {
        match self.records {
            Some(n) => Some(n.get()),
            None => None,
        }
    }

    /// The most bytes of input a batch may cover (its last record may end
    /// past it only when it is the batch's only record); `None` when the
    /// limit is in records only.
    pub const fn max_bytes(&self) -> Option<u64> {
        match self.bytes {
            Some(n) => Some(n.get()),
            None => None,
        }
    }

    /// Records to make room for in a batch: the record limit, at most 4096.
    pub(crate) fn capacity_hint(&self) -> usize {
        self.max_records()
            .map_or(0, |n| usize::try_from(n.min(4096)).unwrap_or(0))
    }

    /// The most records a batch may hold, for a source that cannot measure
    /// bytes: the record limit, or 1000 when the limit is in bytes only.
    pub const fn max_records_or_default(&self) -> u64 {
        match self.records {
            Some(n) => n.get(),
            None => 1000,
        }
    }

    /// Whether a batch of `records` records covering `bytes` bytes is full:
    /// the next record must not be added.
    pub fn is_full(&self, records: u64, bytes: u64) -> bool {
        self.max_records().is_some_and(|max| records >= max)
            || self.max_bytes().is_some_and(|max| bytes >= max)
    }
}

const fn at_least_one(n: u64) -> NonZeroU64 {
    match NonZeroU64::new(n) {
        Some(n) => n,
        None => NonZeroU64::MIN,
    }
}

/// Why a source of this module failed. Each error names the input (a path,
/// an `s3://` URL, a table) and, for a record, its position.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The input cannot be read.
    #[error("cannot read {input}: {source}")]
    Io {
        /// The input.
        input: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A record cannot be parsed.
    #[error("{input}: {at}: {reason}")]
    Parse {
        /// The input.
        input: String,
        /// Where the record starts: its line, record number and byte offset.
        at: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The saved cursor does not fit the input: the input changed since.
    #[error("{input} changed since the checkpoint: {reason}")]
    Changed {
        /// The input.
        input: String,
        /// What was found.
        reason: String,
    },
    /// The scan cannot be set up as asked (feature `postgres`): a key
    /// column that can be NULL, no unique key, a key type not supported.
    #[error("{relation}: {reason}")]
    Scan {
        /// The table or query.
        relation: String,
        /// What is wrong.
        reason: String,
    },
    /// The database failed (feature `postgres`).
    #[cfg(feature = "postgres")]
    #[error("{relation}: {source}")]
    Database {
        /// The table or query.
        relation: String,
        /// The database's error.
        source: sqlx::Error,
    },
}
