//! How a run ends: the outcome, its statistics and its process exit code.

use std::process::ExitCode;
use std::time::Duration;

use crate::error::{Error, FailureKind};
use crate::shutdown::InterruptSource;

/// Process exit codes for each way a run can end, one field per outcome.
///
/// The defaults are the conventional codes (`sysexits.h` where one fits).
/// Which outcome gets which code, and the retry rules AWS Batch and
/// Kubernetes need with `interrupted` set to [`ExitCodes::RETRY_ME`]:
/// [shutdown and exit codes][guide].
///
/// ```
/// use spotbatch::ExitCodes;
///
/// let mut codes = ExitCodes::default();
/// codes.interrupted = ExitCodes::RETRY_ME; // what Runner::interrupted_exit_code(75) sets
/// assert_eq!((codes.completed, codes.interrupted, codes.failed), (0, 75, 1));
/// ```
///
/// [guide]: https://github.com/spotbatch/spotbatch/blob/main/docs/shutdown.md#exit-codes
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitCodes {
    /// The job is complete, now or in an earlier run. Default 0.
    pub completed: u8,
    /// Stopped on request with the final checkpoint saved: resume me.
    /// Default 0; [`ExitCodes::RETRY_ME`] where the platform retries by exit code.
    pub interrupted: u8,
    /// The job's error, a store error that may pass but outlasted the
    /// retries, or a store that could not be opened. Default 1.
    pub failed: u8,
    /// Another runner holds the job's live lease, or advanced the job: this
    /// one wrote nothing more. Default 73.
    pub conflict: u8,
    /// The stored checkpoint is corrupt, truncated, another job's or of a
    /// changed type. Default 65.
    pub bad_checkpoint: u8,
    /// Bad configuration ([`Error::Config`], [`Error::StoreNotBuilt`]). Default 78.
    pub bad_config: u8,
    /// The final checkpoint could not be saved in time. Default 69.
    pub checkpoint_not_saved: u8,
    /// The store refused an operation for a reason that retrying cannot
    /// fix ([`StoreError::Refused`](crate::StoreError::Refused): its
    /// location, permissions, a read-only or full store, data it rejects):
    /// a person must fix the store first. Default 74 (`EX_IOERR`).
    pub store_refused: u8,
}

impl ExitCodes {
    /// The conventional "temporary failure, try again" code (`EX_TEMPFAIL`),
    /// for `interrupted` on platforms that only retry non-zero exits.
    pub const RETRY_ME: u8 = 75;

    /// The code of a failure of `kind`.
    pub(crate) fn of_failure(&self, kind: FailureKind) -> u8 {
        match kind {
            FailureKind::Conflict => self.conflict,
            FailureKind::BadCheckpoint => self.bad_checkpoint,
            FailureKind::BadConfig => self.bad_config,
            FailureKind::CheckpointNotSaved => self.checkpoint_not_saved,
            FailureKind::StoreRefused => self.store_refused,
            _ => self.failed,
        }
    }
}

impl Default for ExitCodes {
    fn default() -> Self {
        Self {
            completed: 0,
            interrupted: 0,
            failed: 1,
            conflict: 73,
            bad_checkpoint: 65,
            bad_config: 78,
            checkpoint_not_saved: 69,
            store_refused: 74,
        }
    }
}

/// How a run ended.
#[non_exhaustive]
#[derive(Debug)]
pub enum Outcome {
    /// The job ran out of chunks; a final checkpoint says so.
    Completed,
    /// The stored checkpoint already said completed: nothing was done.
    AlreadyCompleted,
    /// A stop request ended the run and its final checkpoint was saved.
    Interrupted(InterruptSource),
    /// The run failed.
    Failed(Error),
}

/// What one run did.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStats {
    /// The stored version the run started from (`None`: a fresh start).
    pub resumed_from: Option<u64>,
    /// Chunks finished in this run.
    pub chunks: u64,
    /// Items in those chunks.
    pub items: u64,
    /// Checkpoints saved in this run.
    pub checkpoints: u64,
    /// Chunk attempts that failed with a [transient](crate::transient) error
    /// and were retried.
    pub retries: u64,
    /// Chunks that failed after their retries and were skipped
    /// ([`SkipPolicy`](crate::SkipPolicy)), recorded in the checkpoint;
    /// redriven chunks that failed again included.
    pub skipped: u64,
    /// Skipped chunks a redrive processed again with success (counted in
    /// `chunks` too).
    pub redriven: u64,
    /// Whether a chunk was abandoned at the drain deadline.
    pub abandoned_chunk: bool,
    /// The longest attempt at a chunk in this run (zero when none ran), from
    /// the previous attempt's end to its own (planning and processing;
    /// checkpoints and retry waits left out): for a
    /// [`Concurrent`](crate::concurrent::Concurrent) job, a chunk's `process`
    /// on its task. While chunks take well under a millisecond the runner
    /// reads the clock once per batch of them and counts a batch as one
    /// attempt of its whole duration, so a figure under a millisecond may be
    /// a batch's.
    pub slowest_chunk: Duration,
    /// The mean duration of the run's attempts at chunks (zero when none ran).
    pub mean_chunk: Duration,
    /// Attempts at chunks that took longer than the drain budget (the grace
    /// period minus the checkpoint reserve): such a chunk cannot finish after
    /// a stop request, and is abandoned at the drain deadline.
    pub chunks_over_drain_budget: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// For a job of steps ([`Job::steps`](crate::Job::steps)), the name of
    /// the step the run ended in (the last one when the job completed);
    /// `None` for a job of one step, or a run that ended before its first chunk.
    pub step: Option<String>,
}

/// The result of [`Runner::run`](crate::Runner::run): outcome, statistics, exit code.
#[derive(Debug)]
pub struct Report {
    /// How the run ended.
    pub outcome: Outcome,
    /// What it did.
    pub stats: RunStats,
    codes: ExitCodes,
    /// The cursor and state of the run's final checkpoint.
    position: Option<Position>,
}

/// A run's final cursor and state, of the job's types.
pub(crate) struct Position {
    pub(crate) cursor: Box<dyn std::any::Any + Send + Sync>,
    pub(crate) state: Box<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Position { .. }")
    }
}

impl Report {
    pub(crate) fn new(outcome: Outcome, stats: RunStats, codes: ExitCodes) -> Self {
        Self {
            outcome,
            stats,
            codes,
            position: None,
        }
    }

    pub(crate) fn with_position(mut self, position: Option<Position>) -> Self {
        self.position = position;
        self
    }

    /// The cursor the run ended at: the final checkpoint's, of the job's
    /// cursor type `C`. `None` when no final checkpoint was saved (the run
    /// failed before it, or found the job already completed), or when `C` is
    /// not the job's cursor type.
    pub fn cursor<C: 'static>(&self) -> Option<&C> {
        self.position.as_ref()?.cursor.downcast_ref()
    }

    /// The state the run ended with: the final checkpoint's, of the job's
    /// state type `S` (e.g. the totals of a completed job). `None` as for
    /// [`cursor`](Self::cursor).
    pub fn state<S: 'static>(&self) -> Option<&S> {
        self.position.as_ref()?.state.downcast_ref()
    }

    /// The exit code for this outcome, from the runner's [`ExitCodes`].
    pub fn code(&self) -> u8 {
        let c = &self.codes;
        match &self.outcome {
            Outcome::Completed | Outcome::AlreadyCompleted => c.completed,
            Outcome::Interrupted(_) => c.interrupted,
            Outcome::Failed(e) => c.of_failure(e.kind()),
        }
    }

    /// The exit code, ready to return from `main`.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code())
    }

    /// Exits the process now with [`code`](Self::code), without returning
    /// from `main`: what `main` would drop is not dropped. The tokio runtime
    /// is then not shut down, so a `spawn_blocking` task the job left running
    /// (a chunk abandoned at the drain deadline) does not keep the process
    /// alive. Standard output is flushed first, as by [`std::process::exit`].
    ///
    /// Without it, after a signal, the runner's watchdog exits the process
    /// with this code at the end of the grace period should it still be alive.
    pub fn exit(&self) -> ! {
        std::process::exit(i32::from(self.code()))
    }

    /// The error, if the run failed.
    pub fn error(&self) -> Option<&Error> {
        match &self.outcome {
            Outcome::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the job is complete.
    pub fn is_complete(&self) -> bool {
        matches!(self.outcome, Outcome::Completed | Outcome::AlreadyCompleted)
    }
}
