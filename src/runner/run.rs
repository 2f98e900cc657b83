//! One run of a job, in three phases: [`start`](Run::start) (open the
//! store, load and check the checkpoint, take the lease, resume the job),
//! [`run_chunks`](Run::run_chunks) (drive the chunks, checkpoint, renew the
//! lease) and [`finish`](Run::finish) (final flush and checkpoint, releasing
//! the lease).

use std::sync::Arc;

use super::budget::Budget;
use super::chunk_times::{ChunkTimes, Durations};
use super::clock::ChunkClock;
use super::interrupts::Interrupts;
use super::metrics::RunMetrics;
use super::progress::Progress;
use super::session::Session;
use super::start::Started;
use super::watchdog::Watch;
use super::Runner;
use crate::error::Error;
use crate::exit::{ExitCodes, Outcome, Position, RunStats};
use crate::job::Job;
use crate::policy::{CheckpointPolicy, RetryPolicy, SkipPolicy};

/// What the phases of one run share, from the end of its start to its finish.
pub(super) struct Run<'r, J: Job> {
    pub(super) job: J,
    /// Where the job stands: the start of the next chunk.
    pub(super) cursor: J::Cursor,
    /// The job's state as of `cursor`.
    pub(super) state: J::State,
    /// The stored checkpoint's side: versions, lease, history.
    pub(super) session: Session,
    /// Stop requests and the deadlines they set.
    pub(super) interrupts: Interrupts,
    pub(super) budget: Budget,
    pub(super) policy: CheckpointPolicy,
    /// How a chunk's transient failures are retried.
    pub(super) retry: RetryPolicy,
    /// Which chunks that fail after their retries may be skipped.
    pub(super) skip: SkipPolicy,
    pub(super) progress: Progress,
    /// The chunks' durations against the drain budget, and the drain
    /// deadline their contexts read.
    pub(super) times: Arc<ChunkTimes>,
    /// The durations of the chunks the runner timed.
    pub(super) durations: Durations,
    /// The loop's clock, read at chunk ends.
    pub(super) clock: ChunkClock,
    /// The run's metrics series.
    pub(super) metrics: RunMetrics,
    /// What this run did, for its report (kept when it fails).
    pub(super) stats: &'r mut RunStats,
}

impl<J: Job> Runner<J> {
    /// One run: [`Run::start`], [`Run::run_chunks`], [`Run::finish`].
    ///
    /// Sets `position` to the final checkpoint's cursor and state once it is
    /// saved; `watch` receives the run's watchdog once it is started.
    pub(super) async fn drive(
        self,
        stats: &mut RunStats,
        codes: ExitCodes,
        position: &mut Option<Position>,
        watch: &mut Option<Watch>,
    ) -> Result<Outcome, Error> {
        let mut run = match Run::start(self, stats, codes, watch).await? {
            Started::Ready(run) => *run,
            Started::Ended(outcome) => return Ok(outcome),
        };
        let end = run.run_chunks().await;
        run.close_batch();
        let step = run.job.step(&run.cursor);
        run.stats.step = run.session.step_name(step).map(str::to_owned);
        let times = run.times.summary(&run.durations);
        run.stats.slowest_chunk = times.slowest;
        run.stats.mean_chunk = times.mean;
        run.stats.chunks_over_drain_budget = times.over_budget;
        run.finish(end?, position).await
    }
}

impl<J: Job> Run<'_, J> {
    /// Logs a checkpoint just saved, with the run's rate and the job's progress.
    pub(super) fn log_checkpoint(&self) {
        self.metrics.progress(self.session.totals.items);
        self.progress
            .log_checkpoint(&self.session, self.stats.items);
    }
}
