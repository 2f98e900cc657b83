//! The runner's error type.

use crate::checkpoint::CheckpointError;
use crate::store::StoreError;

/// A boxed error, as jobs return them: any error type converts with `?`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a run failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job returned an error.
    #[error("job failed during {during}: {source}")]
    Job {
        /// What the runner was asking the job to do: `resume`,
        /// `next_chunk at cursor 1000`, `process (chunk from cursor 1000)`
        /// or `flush` (cursors as their `Debug` form).
        during: String,
        /// The job's error.
        source: BoxError,
    },
    /// A stored checkpoint cannot be used for this job: corrupt, truncated,
    /// another job's, or of a changed cursor type. It was left untouched.
    #[error("{store}: checkpoint {key:?} cannot be used: {reason}")]
    BadCheckpoint {
        /// The store.
        store: String,
        /// The job key.
        key: String,
        /// What is wrong.
        reason: CheckpointError,
    },
    /// The store refused or failed an operation (conflicts included).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The final checkpoint could not be written before the deadline.
    #[error(
        "{store}: the final checkpoint of {key:?} was not saved ({source}); \
         the next run resumes from {}",
        resume_from.map_or_else(|| "the beginning".to_owned(), |v| format!("version {v}"))
    )]
    CheckpointNotSaved {
        /// The store.
        store: String,
        /// The job key.
        key: String,
        /// The version left in the store.
        resume_from: Option<u64>,
        /// The last error.
        source: Box<StoreError>,
    },
    /// Another live runner holds the job's lease.
    #[error(
        "{store}: job {key:?} is held by another runner ({holder}) for {expires_in:?} more; \
         it is taken over automatically once that lease expires"
    )]
    Held {
        /// The store.
        store: String,
        /// The job key.
        key: String,
        /// Who holds it: host, pid, run id, task.
        holder: String,
        /// Until the lease expires, unless renewed.
        expires_in: std::time::Duration,
    },
    /// The runner was set up wrongly: a bad job key; a malformed store URL;
    /// a bad `SPOTBATCH_S3_*` value; bad durations; signal handlers that
    /// cannot be installed.
    #[error("bad configuration: {0}")]
    Config(String),
    /// A store URL names a store whose feature this build of spotbatch
    /// leaves out (`s3://` without the `s3` feature, `postgres://` without
    /// `postgres`). The same exit code as [`Error::Config`].
    #[error(
        "bad store URL {url:?}: the {store} store is not in this build: enable the `{feature}` \
         feature of spotbatch (spotbatch = {{ version = \"{}\", features = [\"{feature}\"] }})",
        env!("CARGO_PKG_VERSION")
    )]
    StoreNotBuilt {
        /// The store's URL, any password shown as `***`.
        url: String,
        /// The store's name: `S3`, `Postgres`.
        store: &'static str,
        /// The feature of spotbatch that builds it: `s3`, `postgres`.
        feature: &'static str,
    },
    /// The store a URL names could not be opened although the URL is well
    /// formed: its server cannot be reached, or its migrations failed. (A
    /// store that refuses for good, such as a failed login, is
    /// [`Error::Store`] with [`StoreError::Refused`].)
    #[error("cannot open the store {url}: {source}")]
    Open {
        /// The store's URL, any password shown as `***`.
        url: String,
        /// Why.
        source: BoxError,
    },
}

/// The classes of failure that map to distinct exit codes; see [`ExitCodes`](crate::ExitCodes).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The job's own error, or a store error other than the ones below.
    Failed,
    /// Another runner holds or advanced the job: this one was refused or fenced off.
    Conflict,
    /// The stored checkpoint is unusable.
    BadCheckpoint,
    /// Bad configuration.
    BadConfig,
    /// The final checkpoint was not saved.
    CheckpointNotSaved,
    /// The store refused for a reason that retrying cannot fix.
    StoreRefused,
}

impl Error {
    /// Which exit code class this error belongs to.
    pub fn kind(&self) -> FailureKind {
        match self {
            Error::Job { .. } => FailureKind::Failed,
            Error::BadCheckpoint { .. } | Error::Store(StoreError::Corrupt { .. }) => {
                FailureKind::BadCheckpoint
            }
            Error::Store(StoreError::Conflict { .. }) | Error::Held { .. } => FailureKind::Conflict,
            Error::Store(StoreError::Refused { .. }) => FailureKind::StoreRefused,
            Error::Store(_) | Error::Open { .. } => FailureKind::Failed,
            Error::CheckpointNotSaved { .. } => FailureKind::CheckpointNotSaved,
            Error::Config(_) | Error::StoreNotBuilt { .. } => FailureKind::BadConfig,
        }
    }
}
