//! How long a run's chunks take, against the drain budget: a chunk longer
//! than the time from a stop request to the drain deadline cannot finish
//! after a SIGTERM. A summary in constant memory (count, total, longest),
//! shared with the tasks of a [`Concurrent`](crate::concurrent::Concurrent)
//! job, and the drain deadline a chunk reads from its
//! [`ChunkContext`](crate::ChunkContext).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

/// When the drain ends, once a stop was requested.
type DrainDeadline = Box<dyn Fn() -> Option<Instant> + Send + Sync>;

/// The run's chunk durations and its drain deadline.
pub(crate) struct ChunkTimes {
    /// The job's key, for the warning.
    job: String,
    /// From a stop request to the drain deadline (grace period minus the
    /// checkpoint reserve).
    drain_budget: Duration,
    deadline: DrainDeadline,
    count: AtomicU64,
    total_ns: AtomicU64,
    max_ns: AtomicU64,
    over_budget: AtomicU64,
    /// The job times its own chunks (a concurrent job's tasks): the runner's
    /// wait for one is not a chunk's duration.
    timed_by_job: AtomicBool,
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
            count: AtomicU64::new(0),
            total_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
            over_budget: AtomicU64::new(0),
            timed_by_job: AtomicBool::new(false),
        }
    }

    /// The drain deadline, once a stop was requested.
    pub(crate) fn drain_deadline(&self) -> Option<Instant> {
        (self.deadline)()
    }

    /// Records one attempt at a chunk that took `took`; warns, the first
    /// time in the run, when it is longer than the drain budget.
    pub(crate) fn record(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.total_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
        if took > self.drain_budget && self.over_budget.fetch_add(1, Ordering::Relaxed) == 0 {
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

    /// The job records its chunks' durations itself.
    pub(crate) fn set_timed_by_job(&self) {
        self.timed_by_job.store(true, Ordering::Relaxed);
    }

    pub(crate) fn timed_by_job(&self) -> bool {
        self.timed_by_job.load(Ordering::Relaxed)
    }

    pub(crate) fn summary(&self) -> Summary {
        let count = self.count.load(Ordering::Relaxed);
        let total = self.total_ns.load(Ordering::Relaxed);
        Summary {
            slowest: Duration::from_nanos(self.max_ns.load(Ordering::Relaxed)),
            mean: Duration::from_nanos(total.checked_div(count).unwrap_or(0)),
            over_budget: self.over_budget.load(Ordering::Relaxed),
        }
    }
}

impl std::fmt::Debug for ChunkTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkTimes")
            .field("drain_budget", &self.drain_budget)
            .field("summary", &self.summary())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_longest_the_mean_and_the_chunks_over_budget() {
        let times = ChunkTimes::new("job".into(), Duration::from_secs(10), || None);
        assert_eq!(times.summary(), Summary::default());
        for secs in [1, 12, 2, 11] {
            times.record(Duration::from_secs(secs));
        }
        let summary = times.summary();
        assert_eq!(summary.slowest, Duration::from_secs(12));
        assert_eq!(summary.mean, Duration::from_millis(6500));
        assert_eq!(summary.over_budget, 2);
    }
}
