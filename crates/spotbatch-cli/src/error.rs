//! The CLI's error type and its exit codes.

use std::process::ExitCode;

use spotbatch::{ExitCodes, StoreError};

/// Why a command failed. Every message names the store, the job key and the reason.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// A store operation failed (conflicts, corrupt checkpoints and I/O included).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bad store URL or job key.
    #[error("{0}")]
    Config(String),
    /// A bad argument value that clap could not check (e.g. JSON that does not parse).
    #[error("{0}")]
    Usage(String),
    /// A checkpoint that cannot be used (an import file that does not verify, another job's).
    #[error("{0}")]
    BadCheckpoint(String),
    /// A live runner holds the job, or someone changed it while we edited it.
    #[error("{0}")]
    Held(String),
    /// Anything else: not found, refused, I/O outside the store.
    #[error("{0}")]
    Failed(String),
}

/// Command-line usage errors, as clap reports them.
pub(crate) const USAGE: u8 = 2;

impl CliError {
    /// The exit code: the runner's codes where they apply ([`ExitCodes`] defaults).
    pub(crate) fn code(&self) -> u8 {
        let codes = ExitCodes::default();
        match self {
            CliError::Store(StoreError::Corrupt { .. }) | CliError::BadCheckpoint(_) => {
                codes.bad_checkpoint
            }
            CliError::Store(StoreError::Conflict { .. }) | CliError::Held(_) => codes.conflict,
            CliError::Config(_) => codes.bad_config,
            CliError::Store(StoreError::Refused { .. }) => codes.store_refused,
            CliError::Usage(_) => USAGE,
            CliError::Store(_) | CliError::Failed(_) => codes.failed,
        }
    }

    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code())
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Failed(e.to_string())
    }
}
