//! Checkpoint stores: where checkpoints live, and the contract every store keeps.
//!
//! A job names its store by URL ([`open_store`],
//! [`Runner::store_url`](crate::Runner::store_url)) or hands the runner a
//! store it built. A [`MemoryStore`] keeps a test's checkpoints where the
//! test can read them:
//!
//! ```
//! use spotbatch::prelude::*;
//! use spotbatch::store::{CheckpointStore, MemoryStore};
//! use spotbatch::JobKey;
//!
//! struct Count;
//!
//! #[async_trait]
//! impl Job for Count {
//!     type Cursor = u64;
//!     type State = ();
//!
//!     async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
//!         Ok((*at < 10).then(|| Chunk::between(*at, *at + 1)))
//!     }
//!     async fn process(&mut self, _: &Chunk<u64>, _: &mut (), _: &ChunkContext) -> Result<()> {
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! let store = MemoryStore::new(); // clones share their contents
//! let report = Runner::new("count", Count).store(store.clone()).signals(&[]).run().await;
//! assert_eq!(report.code(), 0);
//!
//! let saved = store.load(&JobKey::new("count")?).await?.ok_or("no checkpoint")?;
//! assert_eq!((saved.status.name(), saved.counters.chunks), ("completed", 10));
//! # Ok(()) }
//! ```

mod file;
mod memory;
mod refusal;
mod url;

use async_trait::async_trait;

pub use file::FileStore;
pub use memory::MemoryStore;
pub use refusal::Refusal;
pub(crate) use url::check_store_url;
pub use url::{open_existing_store, open_store, redact_url};

use crate::checkpoint::{Checkpoint, CheckpointError, Status, Writer};
use crate::key::JobKey;
use crate::BoxError;

/// Where checkpoints are kept: one checkpoint per job key.
///
/// The runner is this trait's main user; operators' code can read a store
/// too (the `spotbatch` command does):
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use spotbatch::{open_store, JobKey};
///
/// // Where does the job "squares" stand?
/// let store = open_store("file://.spotbatch").await?;
/// if let Some(checkpoint) = store.load(&JobKey::new("squares")?).await? {
///     let next: u64 = checkpoint.codec.decode(&checkpoint.cursor)?;
///     println!("version {}, {}, next record {next}", checkpoint.version, checkpoint.status);
/// }
/// # Ok(()) }
/// ```
///
/// # Contract
///
/// Every implementation keeps these promises:
///
/// - **Whole or nothing.** A [`save`](Self::save) either stores the entire
///   checkpoint or leaves the previous one in place; a crash or kill at any
///   moment never leaves a torn checkpoint behind.
/// - **Compare-and-swap.** A save, renewal or delete names the version it
///   expects to replace (`None`: the key must be absent). When the stored
///   version differs, it changes nothing and fails with
///   [`StoreError::Conflict`] naming both versions and the stored
///   checkpoint's writer (the run that holds the job now), so that a runner
///   that lost a race can say who won. Of many concurrent saves and renewals
///   expecting the same version, exactly one succeeds.
/// - **Durable on success.** When `save` returns `Ok`, the checkpoint survives
///   a crash of this process and of the machine, to the extent the medium
///   allows (see each store's docs).
/// - **Loads verify.** [`load`](Self::load) returns a checkpoint whose
///   checksum verified and that belongs to the key asked for, or
///   [`StoreError::Corrupt`] naming the store, the key and the reason; it
///   never changes what is stored.
/// - **Damaged entries stay as they are.** An entry that fails verification
///   (damaged bytes, a format this build does not read, another job's
///   checkpoint) is listed, never skipped, and no operation changes it,
///   except where a store compares versions kept apart from the checkpoint
///   (Postgres's `version` column): there a save, renewal or delete naming
///   the stored version replaces or removes it. Every other store fails such
///   writes with [`StoreError::Corrupt`], since it cannot read the version
///   to compare.
/// - **Errors name the store and the key**: every [`StoreError`] carries the
///   store's [`location`](Self::location) and the job key (empty for `list`).
/// - **Errors say whether to retry**: [`StoreError::Io`] only for what may
///   pass (a network, a server, a busy or briefly failing disk), and
///   [`StoreError::Refused`], with its [`Refusal`], for what a person must
///   fix first. The runner retries the first and stops at once on the second.
///
/// The `conformance` module (feature `conformance`) checks every promise a
/// test can observe, against each store: compare-and-swap on saves,
/// renewals and deletes (and a race of concurrent writers), what loads and
/// lists return, and damaged entries of six kinds. It cannot crash a
/// machine in the middle of a save, so *whole or nothing* and *durable on
/// success* are each store's own construction (see its docs), exercised by
/// the end-to-end tests that SIGKILL runners at random moments.
#[async_trait]
pub trait CheckpointStore: Send + Sync + std::fmt::Debug {
    /// Where this store is, for messages and logs, e.g. `file:///var/lib/ckpt`.
    fn location(&self) -> String;

    /// The job's checkpoint, or `None` if the store has none for this key.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] when the stored bytes fail verification or
    /// hold another job's checkpoint (they are left untouched);
    /// [`StoreError::Io`] when the store cannot be read right now;
    /// [`StoreError::Refused`] when it refuses the read for good (a path that
    /// is not a directory, access denied, a bucket or table that does not
    /// exist).
    async fn load(&self, key: &JobKey) -> Result<Option<Checkpoint>, StoreError>;

    /// Stores `checkpoint` under `checkpoint.job` if the stored version is `expected`.
    ///
    /// `expected` is `None` to create the key, or `Some(v)` to replace version `v`.
    /// The store does not require `checkpoint.version` to be `expected + 1`
    /// (the runner always writes it so), but it records it as the new version.
    ///
    /// A store may take a stored checkpoint of the same run
    /// (`writer.run_id`) at exactly `checkpoint.version`, when that is
    /// `expected + 1`, for this save's own earlier attempt whose answer was
    /// lost, and replace it (the S3 store does; see its docs).
    ///
    /// # Errors
    ///
    /// [`StoreError::Conflict`] when the stored version is not `expected`
    /// (someone else saved first: nothing was written); [`StoreError::Corrupt`]
    /// when the stored checkpoint cannot be read to compare (nothing was
    /// written; see *Damaged entries* in the trait's contract);
    /// [`StoreError::Io`] when the store cannot be reached, in which case the
    /// old checkpoint is still whole; [`StoreError::Refused`] when it refuses
    /// the write for good (read-only, full, access denied, the data
    /// rejected), and the old checkpoint is still whole too.
    async fn save(&self, checkpoint: &Checkpoint, expected: Option<u64>) -> Result<(), StoreError>;

    /// Saves a checkpoint that covers no new work, with every promise of
    /// [`save`](Self::save): it carries the cursor, state and counters of
    /// the last save. The runner uses it to renew its lease *while a chunk
    /// runs*, concurrently with the chunk, and to record the end of a run
    /// that cannot checkpoint where it stands (a failed flush), releasing
    /// the lease.
    ///
    /// It stores `checkpoint` as given and records its version, like a save:
    /// the next save or renewal names that version.
    ///
    /// A store whose saves wait for or commit the chunks' own work (a save
    /// that commits the chunks' database transaction) must override it with
    /// a save that touches none of that work. The default calls `save`.
    ///
    /// # Errors
    ///
    /// As for [`save`](Self::save); [`StoreError::Conflict`] means another
    /// runner took the job over.
    async fn renew(
        &self,
        checkpoint: &Checkpoint,
        expected: Option<u64>,
    ) -> Result<(), StoreError> {
        self.save(checkpoint, expected).await
    }

    /// Every checkpoint in the store, once each, in key order, unreadable
    /// ones included.
    ///
    /// A damaged entry never fails the whole list. A store that reads each
    /// checkpoint to list it (file, memory) lists a damaged one as
    /// [`Listing::Unreadable`]; a store that lists from metadata kept beside
    /// the checkpoint (S3 object metadata, Postgres columns) may list it as
    /// that metadata describes, and [`load`](Self::load) then refuses it.
    ///
    /// A store whose saves can leave something behind when killed may clean
    /// it up here, and lists what it leaves as [`Listing::Leftover`], after
    /// the checkpoints (the file store removes the temporary files of
    /// writers that are gone; see its docs). Checkpoints are never changed.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] when the store cannot be listed;
    /// [`StoreError::Refused`] when it refuses for good.
    async fn list(&self) -> Result<Vec<Listing>, StoreError>;

    /// Removes the job's checkpoint if its version is `expected`.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] when there is none; [`StoreError::Conflict`]
    /// when the stored version differs (nothing was removed);
    /// [`StoreError::Corrupt`] when the stored checkpoint cannot be read to
    /// compare (nothing was removed; see *Damaged entries* in the trait's
    /// contract); [`StoreError::Io`] when the store cannot be reached;
    /// [`StoreError::Refused`] when it refuses for good.
    async fn delete(&self, key: &JobKey, expected: u64) -> Result<(), StoreError>;
}

/// One entry of [`CheckpointStore::list`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    /// A readable checkpoint.
    Checkpoint(Summary),
    /// A stored entry that fails verification, or holds another job's checkpoint.
    Unreadable {
        /// The job key, or the store's name for the entry when the key cannot be read.
        key: String,
        /// Why it cannot be read.
        reason: String,
    },
    /// Not a checkpoint: something a save cut off by a kill left behind,
    /// which `list` did not remove because its writer may still be using it
    /// (the file store's temporary files; see
    /// [`FileStore`](crate::FileStore#temporary-files)). Nothing reads it.
    Leftover {
        /// Where it is: the store's name for it (a file's path).
        name: String,
        /// Why it was left in place.
        reason: String,
    },
}

/// What [`CheckpointStore::list`] tells of a readable checkpoint.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The job.
    pub job: JobKey,
    /// The stored version.
    pub version: u64,
    /// The stored status.
    pub status: Status,
    /// When it was written (ms since the Unix epoch).
    pub updated_ms: u64,
    /// Chunks done.
    pub chunks: u64,
}

impl Summary {
    /// A summary, for stores that read it from their own metadata.
    pub fn new(job: JobKey, version: u64, status: Status, updated_ms: u64, chunks: u64) -> Self {
        Self {
            job,
            version,
            status,
            updated_ms,
            chunks,
        }
    }
}

impl From<&Checkpoint> for Summary {
    fn from(c: &Checkpoint) -> Self {
        Self {
            job: c.job.clone(),
            version: c.version,
            status: c.status.clone(),
            updated_ms: c.updated_ms,
            chunks: c.counters.chunks,
        }
    }
}

/// A store operation that failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The stored version is not the one the caller expected: another writer
    /// saved in between (or still runs). Nothing was written.
    #[error(
        "{store}: checkpoint {key:?} was changed by another writer: expected version {}, found {}{}",
        show_version(*expected),
        show_version(*found),
        found_writer.as_ref().map_or_else(String::new, |w| format!(", written by {w}"))
    )]
    Conflict {
        /// The store.
        store: String,
        /// The job key.
        key: String,
        /// The version the caller expected.
        expected: Option<u64>,
        /// The version found (`None`: absent).
        found: Option<u64>,
        /// Who wrote the version found: the run that holds the job now
        /// (its host, pid, run id and task). `None` when nothing was found,
        /// or when the store could not read the stored checkpoint's writer.
        found_writer: Option<Box<Writer>>,
    },
    /// The stored checkpoint fails verification. It was left untouched.
    ///
    /// When its bytes are damaged ([`CheckpointError::is_damaged`]: empty,
    /// cut short, a changed byte…) the message says what to do: keep a copy
    /// to investigate, then remove it by hand (the job starts over) or put back a
    /// good copy.
    #[error(
        "{store}: checkpoint {key:?} ({path}) is unreadable: {reason}{}",
        if reason.is_damaged() { DAMAGED_ADVICE } else { "" }
    )]
    Corrupt {
        /// The store.
        store: String,
        /// The job key.
        key: String,
        /// Where inside the store (file path, object key, row).
        path: String,
        /// What is wrong.
        reason: Box<CheckpointError>,
    },
    /// There is no checkpoint for this key.
    #[error("{store}: no checkpoint for job {key:?}")]
    NotFound {
        /// The store.
        store: String,
        /// The job key.
        key: String,
    },
    /// The store could not be read or written, for a reason that may pass
    /// (a network, server or disk error): the same operation may succeed if
    /// retried.
    #[error("{store}: could not {operation} checkpoint {key:?}: {source}")]
    Io {
        /// The store.
        store: String,
        /// The job key (empty for store-wide operations).
        key: String,
        /// What was being done: `load`, `save`, `list`, `delete`, `open the store`.
        operation: &'static str,
        /// The underlying error.
        source: BoxError,
    },
    /// The store refused the operation for a reason that retrying cannot
    /// fix: `cause` says what a person must change (the store's location,
    /// its permissions, a read-only or full store, data it rejects).
    /// Nothing was written, unless the store's docs say otherwise.
    #[error(
        "{store}: could not {operation}{}: {source} ({cause}; retrying cannot help)",
        of_checkpoint(key)
    )]
    Refused {
        /// The store.
        store: String,
        /// The job key (empty for store-wide operations).
        key: String,
        /// What was being done: `load`, `save`, `list`, `delete`, `open the store`.
        operation: &'static str,
        /// What must change.
        cause: Refusal,
        /// The store's own error, naming what it refused (a path, an
        /// object, a table) where the store knows it.
        source: BoxError,
    },
    /// What this run holds in the store for its saves is gone for good (a
    /// Postgres [`SharedTransaction`] whose connection or transaction was
    /// lost, with the chunks' writes it held): no save of this run through
    /// it can succeed, so it is not retried. The next run, with a store of
    /// its own, resumes from the last checkpoint and redoes those chunks.
    ///
    /// [`SharedTransaction`]: https://docs.rs/spotbatch/latest/spotbatch/postgres/struct.SharedTransaction.html
    #[error("{store}: could not {operation} checkpoint {key:?}: {source}")]
    Lost {
        /// The store.
        store: String,
        /// The job key.
        key: String,
        /// What was being done: `save`.
        operation: &'static str,
        /// What was lost, and why.
        source: BoxError,
    },
}

/// What to do about a damaged checkpoint, after [`StoreError::Corrupt`]'s reason.
const DAMAGED_ADVICE: &str = "; no run can resume from it: keep a copy of it to investigate, \
     then remove it by hand (the next run starts the job from the beginning) or put back a good copy";

/// ` checkpoint "key"`, or nothing for a store-wide operation.
fn of_checkpoint(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(" checkpoint {key:?}")
    }
}

fn show_version(v: Option<u64>) -> String {
    v.map_or_else(|| "none".to_owned(), |v| v.to_string())
}

impl StoreError {
    /// `Ok` when the version of the checkpoint `store` found for `key` is
    /// the one the caller expected; otherwise [`StoreError::Conflict`]
    /// naming both versions and the found checkpoint's writer.
    pub(crate) fn unless_version(
        store: &dyn CheckpointStore,
        key: &JobKey,
        expected: Option<u64>,
        found: Option<&Checkpoint>,
    ) -> Result<(), StoreError> {
        if expected == found.map(|c| c.version) {
            Ok(())
        } else {
            Err(StoreError::conflict(store.location(), key, expected, found))
        }
    }

    /// [`StoreError::Conflict`]: `found` is the stored checkpoint, whose
    /// version and writer it names (`None`: the key is absent).
    pub(crate) fn conflict(
        store: String,
        key: &JobKey,
        expected: Option<u64>,
        found: Option<&Checkpoint>,
    ) -> StoreError {
        StoreError::Conflict {
            store,
            key: key.to_string(),
            expected,
            found: found.map(|c| c.version),
            found_writer: found.map(|c| Box::new(c.writer.clone())),
        }
    }

    /// Whether retrying the same operation later may succeed
    /// ([`StoreError::Io`]), as opposed to a conflict, a corrupt checkpoint
    /// or a refusal ([`StoreError::Refused`]), which will not go away by
    /// themselves. The runner retries only transient errors.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Io { .. })
    }

    /// Why the store refused the operation for good, if it did
    /// ([`StoreError::Refused`]).
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            StoreError::Refused { cause, .. } => Some(*cause),
            _ => None,
        }
    }
}
