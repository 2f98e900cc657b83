//! Where a partitioned job stands, from its partitions' checkpoints: what
//! the tasks read to pick a partition, and what `spotbatch list` and `show`
//! print.

use std::sync::Arc;

use tokio::task::JoinSet;

use crate::checkpoint::{now_ms, Checkpoint, Status, Writer};
use crate::key::JobKey;
use crate::runner::held_by_live_runner;
use crate::store::{CheckpointStore, StoreError};

use super::completion::partitions_of;
use super::key_of;

/// Loads in flight at once when reading many partitions.
const LOADS_IN_FLIGHT: usize = 16;

/// What a partition's checkpoint says.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PartitionState {
    /// No checkpoint: no task has started it.
    NotStarted,
    /// A run is under way (or was killed before its final checkpoint).
    Running,
    /// The last run stopped on request; the next one resumes it.
    Interrupted,
    /// The last run failed; the next one resumes it.
    Failed,
    /// Done.
    Completed,
    /// The checkpoint cannot be read (see [`PartitionProgress::error`]).
    Unreadable,
}

impl PartitionState {
    /// A one-word name: `not started`, `running`, `interrupted`, `failed`,
    /// `completed`, `unreadable`.
    pub fn name(self) -> &'static str {
        match self {
            PartitionState::NotStarted => "not started",
            PartitionState::Running => "running",
            PartitionState::Interrupted => "interrupted",
            PartitionState::Failed => "failed",
            PartitionState::Completed => "completed",
            PartitionState::Unreadable => "unreadable",
        }
    }

    fn of(status: &Status) -> Self {
        match status {
            Status::Completed => PartitionState::Completed,
            Status::Interrupted { .. } => PartitionState::Interrupted,
            Status::Failed { .. } => PartitionState::Failed,
            _ => PartitionState::Running,
        }
    }
}

/// Who holds a partition.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Nobody: the lease was released (or never taken).
    Free,
    /// A live runner holds the lease until `expires_ms` (ms since the Unix
    /// epoch), unless it renews it; no other task may take the partition.
    Live {
        /// When the lease lapses unless renewed.
        expires_ms: u64,
    },
    /// A stale claim: the lease is still recorded but its holder stopped
    /// renewing it (it expired at `expires_ms`) or is known to be gone from
    /// this host: its holder was killed before it could release it. The next
    /// task that wants the partition takes it over.
    Stale {
        /// When the lease lapsed (or lapses: a holder gone from this host is
        /// stale before then).
        expires_ms: u64,
    },
}

impl Claim {
    pub(super) fn of(c: &Checkpoint, me: &Writer, now: u64) -> Self {
        match c.lease {
            None => Claim::Free,
            Some(lease) if held_by_live_runner(c, me, now) => Claim::Live {
                expires_ms: lease.expires_ms,
            },
            Some(lease) => Claim::Stale {
                expires_ms: lease.expires_ms,
            },
        }
    }
}

/// One partition of [`JobProgress`].
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct PartitionProgress {
    /// The partition's index.
    pub index: u32,
    /// Its checkpoint's key.
    pub key: JobKey,
    /// What its checkpoint says.
    pub state: PartitionState,
    /// Who holds it.
    pub claim: Claim,
    /// Its checkpoint (`None` when not started or unreadable).
    pub checkpoint: Option<Checkpoint>,
    /// Why the checkpoint cannot be read ([`PartitionState::Unreadable`]).
    pub error: Option<String>,
    /// Whether that was a transient store error (worth reading again).
    pub(super) transient: bool,
}

/// Where a partitioned job stands: its job-level checkpoint and each
/// partition's, read now (not one snapshot: each checkpoint as of its load).
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct JobProgress {
    /// The job.
    pub job: JobKey,
    /// The job-level checkpoint.
    pub checkpoint: Checkpoint,
    /// How many partitions the job has.
    pub partitions: u32,
    /// Each partition, in index order.
    pub rows: Vec<PartitionProgress>,
}

impl JobProgress {
    /// Whether the job is marked completed (every partition done and the
    /// completion step run).
    pub fn is_completed(&self) -> bool {
        self.checkpoint.status == Status::Completed
    }

    /// How many partitions are in `state`.
    pub fn count(&self, state: PartitionState) -> usize {
        self.rows.iter().filter(|r| r.state == state).count()
    }

    /// Partitions held by a live runner.
    pub fn held(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| matches!(r.claim, Claim::Live { .. }))
            .count()
    }

    /// Partitions with a stale claim.
    pub fn stale(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| matches!(r.claim, Claim::Stale { .. }))
            .count()
    }

    /// Chunks and items done over every partition, as their checkpoints record.
    pub fn totals(&self) -> (u64, u64) {
        self.rows
            .iter()
            .filter_map(|r| r.checkpoint.as_ref())
            .fold((0, 0), |(chunks, items), c| {
                (chunks + c.counters.chunks, items + c.counters.items)
            })
    }

    /// One line: `running: 40/64 partitions completed, 8 held, 1 stale claim`.
    pub fn summary(&self) -> String {
        let status = if self.is_completed() {
            "completed".to_owned()
        } else if self.count(PartitionState::Completed) == self.rows.len() {
            "completing".to_owned()
        } else {
            self.checkpoint.status.name().to_owned()
        };
        let mut s = format!(
            "{status}: {}/{} partitions completed",
            self.count(PartitionState::Completed),
            self.partitions
        );
        for (n, what) in [
            (self.held(), "held"),
            (self.count(PartitionState::Failed), "failed"),
            (self.count(PartitionState::Unreadable), "unreadable"),
        ] {
            if n > 0 {
                s.push_str(&format!(", {n} {what}"));
            }
        }
        match self.stale() {
            0 => {}
            1 => s.push_str(", 1 stale claim"),
            n => s.push_str(&format!(", {n} stale claims")),
        }
        s
    }
}

/// Reads where the partitioned job `job` stands: its job-level checkpoint,
/// then each partition's (up to 16 loads at once). `None` when the store has
/// no checkpoint under `job`, or one that is not a partitioned job's.
///
/// A partition whose checkpoint cannot be read is listed as
/// [`PartitionState::Unreadable`] with the reason, never skipped.
///
/// # Errors
///
/// The store's error loading the job-level checkpoint (a partition's
/// transient error makes that partition unreadable instead).
pub async fn progress(
    store: Arc<dyn CheckpointStore>,
    job: &JobKey,
) -> Result<Option<JobProgress>, StoreError> {
    let Some(checkpoint) = store.load(job).await? else {
        return Ok(None);
    };
    let Some(partitions) = partitions_of(&checkpoint) else {
        return Ok(None);
    };
    let indices: Vec<u32> = (0..partitions).collect();
    let rows = read_partitions(&store, job, partitions, &indices).await;
    Ok(Some(JobProgress {
        job: job.clone(),
        checkpoint,
        partitions,
        rows,
    }))
}

/// Loads the checkpoints of partitions `indices` of `job` (of `count`), up
/// to [`LOADS_IN_FLIGHT`] at once; in the order of `indices`.
pub(super) async fn read_partitions(
    store: &Arc<dyn CheckpointStore>,
    job: &JobKey,
    count: u32,
    indices: &[u32],
) -> Vec<PartitionProgress> {
    let me = Writer::this_process();
    let mut rows: Vec<Option<PartitionProgress>> = vec![None; indices.len()];
    let mut pending = indices.iter().copied().enumerate();
    let mut tasks = JoinSet::new();
    loop {
        while tasks.len() < LOADS_IN_FLIGHT {
            let Some((slot, index)) = pending.next() else {
                break;
            };
            let key = match key_of(job, index, count) {
                Ok(key) => key,
                Err(e) => {
                    // Cannot happen for a job whose tasks started (they check the keys).
                    rows[slot] = Some(unreadable(index, job.clone(), e.to_string()));
                    continue;
                }
            };
            let store = Arc::clone(store);
            tasks.spawn(async move {
                let loaded = store.load(&key).await;
                (slot, index, key, loaded)
            });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let Ok((slot, index, key, loaded)) = joined else {
            continue;
        };
        let now = now_ms();
        rows[slot] = Some(match loaded {
            Ok(None) => PartitionProgress {
                index,
                key,
                state: PartitionState::NotStarted,
                claim: Claim::Free,
                checkpoint: None,
                error: None,
                transient: false,
            },
            Ok(Some(c)) => PartitionProgress {
                index,
                key,
                state: PartitionState::of(&c.status),
                claim: Claim::of(&c, &me, now),
                checkpoint: Some(c),
                error: None,
                transient: false,
            },
            Err(e) => PartitionProgress {
                transient: e.is_transient(),
                ..unreadable(index, key, e.to_string())
            },
        });
    }
    rows.into_iter()
        .zip(indices)
        .map(|(row, &index)| {
            row.unwrap_or_else(|| unreadable(index, job.clone(), "the load did not finish".into()))
        })
        .collect()
}

fn unreadable(index: u32, key: JobKey, error: String) -> PartitionProgress {
    PartitionProgress {
        index,
        key,
        state: PartitionState::Unreadable,
        claim: Claim::Free,
        checkpoint: None,
        error: Some(error),
        transient: false,
    }
}
