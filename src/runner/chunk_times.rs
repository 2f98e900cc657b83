//! How long a run's chunks take, against the drain budget: a chunk longer
//! than the time from a stop request to the drain deadline cannot finish
//! after a SIGTERM. A summary in constant memory (count, total, longest),
//! kept by the runner, and by the tasks of a
//! [`Concurrent`](crate::concurrent::Concurrent) job; and the drain deadline
//! a chunk reads from its [`ChunkContext`](crate::ChunkContext).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

/// When the drain ends, once a stop was requested.
type DrainDeadline = Box<dyn Fn() -> Option<Instant> + Send + Sync>;

/// The run's drain budget and deadline, and the durations of the chunks
/// timed on other tasks (a concurrent job's).
pub(crate) struct ChunkTimes {
    /// The job's key, for the warning.
    job: String,
    /// From a stop request to the drain deadline (grace period minus the
    /// checkpoint reserve).
    drain_budget: Duration,
    deadline: DrainDeadline,
    /// What the job's own tasks recorded.
    shared: Mutex<Durations>,
    /// The job times its own chunks (a concurrent job's tasks): the runner's
    /// wait for one is not a chunk's duration.
    timed_by_job: AtomicBool,
}

/// A running summary of chunk durations, in constant memory. The runner
/// keeps its own, without synchronisation (one write per chunk on the hot
/// path); a concurrent job's tasks write to the one in [`ChunkTimes`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Durations {
    count: u64,
    total: Duration,
    slowest: Duration,
    over_budget: u64,
}

/// A summary of the chunk durations of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) slowest: Duration,
    pub(crate) mean: Duration,
    pub(crate) over_budget: u64,
}

impl ChunkTimes {
    pub(crate) fn new(
        job: String,
        drain_budget: Duration,
        deadline: impl Fn() -> Option<Instant> + Send + Sync + 'static,
    ) -> Self {
        Self {
            job,
            drain_budget,
            deadline: Box::new(deadline),
            shared: Mutex::new(Durations::default()),
            timed_by_job: AtomicBool::new(false),
        }
    }

    /// The drain deadline, once a stop was requested.
    pub(crate) fn drain_deadline(&self) -> Option<Instant> {
        (self.deadline)()
    }

    /// Adds an attempt at a chunk that took `took` to `durations`; warns,
    /// the first time in the run, when it is longer than the drain budget.
    pub(crate) fn note(&self, durations: &mut Durations, took: Duration) {
        self.note_batch(durations, 1, took);
    }

    /// Adds `chunks` attempts that took `took` together: counted as if the
    /// longest took it all (the runner times short chunks in batches, which
    /// take under a millisecond unless one of their chunks is long).
    pub(crate) fn note_batch(&self, durations: &mut Durations, chunks: u32, took: Duration) {
        if chunks == 0 {
            return;
        }
        durations.count += u64::from(chunks);
        durations.total = durations.total.saturating_add(took);
        durations.slowest = durations.slowest.max(took);
        if took > self.drain_budget {
            durations.over_budget += 1;
            if durations.over_budget == 1 {
                warn!(
                    job = %self.job,
                    chunk_took = ?took,
                    drain_budget = ?self.drain_budget,
                    "a chunk took longer than the drain budget: after a stop request such a chunk \
                     cannot finish and is abandoned at the drain deadline; make chunks shorter, \
                     raise the grace period, or have them watch ChunkContext::drain_deadline"
                );
            }
        }
    }

    /// Records an attempt at a chunk timed on the job's own task.
    pub(crate) fn record(&self, took: Duration) {
        let mut shared = self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.note(&mut shared, took);
    }

    /// The job records its chunks' durations itself.
    pub(crate) fn set_timed_by_job(&self) {
        self.timed_by_job.store(true, Ordering::Relaxed);
    }

    pub(crate) fn timed_by_job(&self) -> bool {
        self.timed_by_job.load(Ordering::Relaxed)
    }

    /// The summary of `runner`'s durations and the job's tasks'.
    pub(crate) fn summary(&self, runner: &Durations) -> Summary {
        let shared = *self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = runner.count + shared.count;
        let total = runner.total.saturating_add(shared.total);
        Summary {
            slowest: runner.slowest.max(shared.slowest),
            mean: Duration::from_nanos(
                u64::try_from(total.as_nanos() / u128::from(count.max(1))).unwrap_or(u64::MAX),
            ),
            over_budget: runner.over_budget + shared.over_budget,
        }
    }
}

impl std::fmt::Debug for ChunkTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkTimes")
            .field("drain_budget", &self.drain_budget)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_longest_the_mean_and_the_chunks_over_budget() {
        let times = ChunkTimes::new("job".into(), Duration::from_secs(10), || None);
        let mut runner = Durations::default();
        assert_eq!(times.summary(&runner), Summary::default());
        for secs in [1, 12, 2] {
            times.note(&mut runner, Duration::from_secs(secs));
        }
        times.record(Duration::from_secs(11));
        // A batch of 1000 short chunks, and an empty one.
        times.note_batch(&mut runner, 1000, Duration::from_millis(1));
        times.note_batch(&mut runner, 0, Duration::from_secs(60));
        let summary = times.summary(&runner);
        assert_eq!(summary.slowest, Duration::from_secs(12));
        assert_eq!(summary.mean, Duration::from_nanos(26_001_000_000 / 1004));
        assert_eq!(summary.over_budget, 2);
    }
}
