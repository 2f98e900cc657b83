//! How a task of a partitioned job ended, and its exit code.

use std::process::ExitCode;
use std::time::Duration;

use crate::error::Error;
use crate::exit::{ExitCodes, RunStats};
use crate::shutdown::InterruptSource;

/// How a task of a partitioned job ended.
#[non_exhaustive]
#[derive(Debug)]
pub enum TaskOutcome {
    /// This task ran the completion step: every partition is done and the
    /// job is now marked completed.
    JobCompleted,
    /// The job was already marked completed (by another task, or before
    /// this one started): nothing was done.
    AlreadyCompleted,
    /// This task's partitions are done (static assignment) while others,
    /// another task's, are not yet: the task that finishes the last one
    /// completes the job.
    PartitionsDone,
    /// A stop request ended the task; the partition in hand, if any, saved
    /// its final checkpoint and released its lease.
    Interrupted(InterruptSource),
    /// A partition, or the completion step, failed.
    Failed {
        /// The partition that failed; `None` for the completion step or
        /// before any partition ran (a bad configuration, a store that
        /// cannot be opened).
        partition: Option<u32>,
        /// Why.
        error: Error,
    },
}

/// One partition run of a task.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRun {
    /// The partition.
    pub index: u32,
    /// Whether the partition is complete after the run.
    pub completed: bool,
    /// What the run did.
    pub stats: RunStats,
}

/// What [`PartitionedRunner::run`](super::PartitionedRunner::run) returns:
/// the task's outcome, its partition runs, and its exit code.
#[derive(Debug)]
pub struct PartitionedReport {
    /// How the task ended.
    pub outcome: TaskOutcome,
    /// The partitions the task ran (a partition twice if it was taken back
    /// after losing it), in order.
    pub runs: Vec<PartitionRun>,
    /// Wall time of the task.
    pub elapsed: Duration,
    codes: ExitCodes,
}

impl PartitionedReport {
    pub(super) fn new(
        outcome: TaskOutcome,
        runs: Vec<PartitionRun>,
        elapsed: Duration,
        codes: ExitCodes,
    ) -> Self {
        Self {
            outcome,
            runs,
            elapsed,
            codes,
        }
    }

    /// The exit code for this outcome, from the runner's [`ExitCodes`]:
    /// `completed` for [`JobCompleted`](TaskOutcome::JobCompleted),
    /// [`AlreadyCompleted`](TaskOutcome::AlreadyCompleted) and
    /// [`PartitionsDone`](TaskOutcome::PartitionsDone) (the task's share is
    /// done: the platform must not run it again), `interrupted` when
    /// stopped, and the failure's code otherwise.
    pub fn code(&self) -> u8 {
        match &self.outcome {
            TaskOutcome::JobCompleted
            | TaskOutcome::AlreadyCompleted
            | TaskOutcome::PartitionsDone => self.codes.completed,
            TaskOutcome::Interrupted(_) => self.codes.interrupted,
            TaskOutcome::Failed { error, .. } => self.codes.of_failure(error.kind()),
        }
    }

    /// The exit code, ready to return from `main`.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code())
    }

    /// The error, if the task failed.
    pub fn error(&self) -> Option<&Error> {
        match &self.outcome {
            TaskOutcome::Failed { error, .. } => Some(error),
            _ => None,
        }
    }
}
