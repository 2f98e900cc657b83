//! Dynamic assignment: take any unfinished partition that no live runner
//! holds, run it to the end, take the next; wait while the only ones left
//! are held by other tasks; complete the job when none is left.

use std::time::Duration;

use tracing::{debug, info};

use crate::checkpoint::now_ms;
use crate::error::Error;
use crate::job::Job;

use super::progress::{Claim, PartitionProgress, PartitionState};
use super::report::TaskOutcome;
use super::run::{Ran, Task};
use super::PartitionedRunner;

/// What a task knows of a partition, from its last read of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// Not read yet, or free when last read: worth trying.
    Open,
    /// A live runner held it until this time (ms since the Unix epoch).
    Held(u64),
    /// Completed: never read again (until the final check).
    Done,
    /// Its checkpoint cannot be read: tried last, for its error.
    Unreadable,
}

impl Known {
    fn of(row: &PartitionProgress) -> Self {
        match (row.state, row.claim) {
            (PartitionState::Completed, _) => Known::Done,
            (PartitionState::Unreadable, _) if row.transient => Known::Open,
            (PartitionState::Unreadable, _) => Known::Unreadable,
            (_, Claim::Live { expires_ms }) => Known::Held(expires_ms),
            _ => Known::Open,
        }
    }
}

impl<J: Job + 'static> PartitionedRunner<J> {
    /// The dynamic loop (see [`Assignment::Dynamic`](super::Assignment::Dynamic)).
    ///
    /// A task reads a partition just before it tries it, one checkpoint at a
    /// time, and picks the next one to try at random among those it does
    /// not know to be done or held, so that tasks starting together spread
    /// over the partitions instead of racing for the first, and a task reads
    /// little more than what it runs. When none is left to try, it reads
    /// again those that other tasks held, once their lease lapses or after
    /// the poll interval, whichever comes first. When it knows every
    /// partition done, it reads them all once more and runs the completion
    /// step. Unreadable partitions are tried last, so that their error (with
    /// its exit code) ends the task only when nothing else is left.
    pub(super) async fn dynamic(&self, task: &mut Task) -> Result<TaskOutcome, Error> {
        let total = self.partitions as usize;
        let mut known = vec![Known::Open; total];
        let mut rng = fastrand::Rng::new();
        let mut waiting_said = false;
        loop {
            if let Some(source) = task.stops.first() {
                return Ok(TaskOutcome::Interrupted(source));
            }
            let now = now_ms();
            let open: Vec<u32> = (0..self.partitions)
                .filter(|&i| match known[i as usize] {
                    Known::Open => true,
                    Known::Held(until) => until <= now,
                    _ => false,
                })
                .collect();
            let index = if !open.is_empty() {
                open[rng.usize(..open.len())]
            } else if known.iter().all(|k| *k == Known::Done) {
                // Read every partition once more, in one go: a partition
                // started over by hand since it was seen completed is redone.
                let all: Vec<u32> = (0..self.partitions).collect();
                let rows = self.read(task, &all).await;
                if rows.iter().all(|r| r.state == PartitionState::Completed) {
                    return self.complete(task).await;
                }
                for row in &rows {
                    known[row.index as usize] = Known::of(row);
                }
                continue;
            } else if let Some(until) = known
                .iter()
                .filter_map(|k| match k {
                    Known::Held(until) => Some(*until),
                    _ => None,
                })
                .min()
            {
                if !waiting_said {
                    let held = known.iter().filter(|k| matches!(k, Known::Held(_))).count();
                    info!(job = %task.key.short(), held, "no free partition: waiting for those other tasks hold (taken over if their lease lapses)");
                    waiting_said = true;
                }
                let left = Duration::from_millis(until.saturating_sub(now_ms()));
                if !task.stops.sleep(self.wait_for(left)).await {
                    continue;
                }
                // Look again at every held partition: one may have been released.
                for k in &mut known {
                    if let Known::Held(_) = k {
                        *k = Known::Open;
                    }
                }
                continue;
            } else {
                // Only unreadable partitions are left: run one, for its error.
                let Some(i) = known.iter().position(|k| *k == Known::Unreadable) else {
                    continue;
                };
                i as u32
            };

            let row = self.read(task, &[index]).await.remove(0);
            let now_known = Known::of(&row);
            known[index as usize] = now_known;
            if !matches!(now_known, Known::Open | Known::Unreadable) {
                continue;
            }
            if row.state == PartitionState::Unreadable && row.transient {
                continue; // the stop request cut the retries short
            }
            waiting_said = false;
            debug!(job = %task.key.short(), partition = index, "taking the partition");
            match self.run_partition(task, index).await {
                Ran::Done => known[index as usize] = Known::Done,
                // Another task has it: read it again later.
                Ran::Held(left) => {
                    known[index as usize] = Known::Held(now_ms() + left.as_millis() as u64);
                }
                Ran::Taken => known[index as usize] = Known::Held(now_ms()),
                Ran::Interrupted(source) => return Ok(TaskOutcome::Interrupted(source)),
                Ran::Failed(error) => {
                    return Ok(TaskOutcome::Failed {
                        partition: Some(index),
                        error,
                    })
                }
            }
        }
    }
}
