//! Dynamic assignment: take any unfinished partition that no live runner
//! holds, run it to the end, take the next; wait while the only ones left
//! are held by other tasks; complete the job when none is left.

use std::time::Duration;

use tracing::{debug, info};

use crate::checkpoint::now_ms;
use crate::error::Error;
use crate::job::Job;

use super::progress::{Claim, PartitionState};
use super::report::TaskOutcome;
use super::run::{Ran, Task};
use super::PartitionedRunner;

impl<J: Job + 'static> PartitionedRunner<J> {
    /// The dynamic loop (see [`Assignment::Dynamic`](super::Assignment::Dynamic)).
    ///
    /// Each scan reads the partitions not yet seen completed, and tries the
    /// free ones in a random order, so that tasks starting together spread
    /// over the partitions instead of racing for the first; a partition is
    /// read again just before it is tried. Unreadable partitions are tried
    /// last, so that their error (with its exit code) ends the task only
    /// when nothing else is left to do.
    pub(super) async fn dynamic(&self, task: &mut Task) -> Result<TaskOutcome, Error> {
        let total = self.partitions;
        let mut done = vec![false; total as usize];
        let mut rng = fastrand::Rng::new();
        let mut waiting_said = false;
        'scan: loop {
            if let Some(source) = task.stops.first() {
                return Ok(TaskOutcome::Interrupted(source));
            }
            let open: Vec<u32> = (0..total).filter(|&i| !done[i as usize]).collect();
            let rows = self.read(task, &open).await;
            let (mut free, mut unreadable, mut lapses) = (Vec::new(), Vec::new(), None::<u64>);
            let mut held = 0usize;
            for row in &rows {
                match (row.state, row.claim) {
                    (PartitionState::Completed, _) => done[row.index as usize] = true,
                    (PartitionState::Unreadable, _) => unreadable.push(row.index),
                    (_, Claim::Live { expires_ms }) => {
                        held += 1;
                        lapses = Some(lapses.map_or(expires_ms, |at| at.min(expires_ms)));
                    }
                    _ => free.push(row.index),
                }
            }
            if done.iter().all(|&d| d) {
                // Check every partition once more, in one read: a partition
                // started over by hand since it was seen completed is redone.
                let all: Vec<u32> = (0..total).collect();
                let again = self.read(task, &all).await;
                let reopened: Vec<u32> = again
                    .iter()
                    .filter(|r| r.state != PartitionState::Completed)
                    .map(|r| r.index)
                    .collect();
                if reopened.is_empty() {
                    return self.complete(task).await;
                }
                for i in reopened {
                    done[i as usize] = false;
                }
                continue;
            }
            if free.is_empty() && (held > 0 || unreadable.is_empty()) {
                if !waiting_said {
                    info!(job = %task.key.short(), held, "no free partition: waiting for those other tasks hold (taken over if their lease lapses)");
                    waiting_said = true;
                }
                let left = lapses.map_or(self.poll, |at| {
                    Duration::from_millis(at.saturating_sub(now_ms()))
                });
                task.stops.sleep(self.wait_for(left)).await;
                continue;
            }
            waiting_said = false;
            rng.shuffle(&mut free);
            for index in free.into_iter().chain(unreadable) {
                if let Some(source) = task.stops.first() {
                    return Ok(TaskOutcome::Interrupted(source));
                }
                let row = self.read(task, &[index]).await.remove(0);
                match (row.state, row.claim) {
                    (PartitionState::Completed, _) => {
                        done[index as usize] = true;
                        continue;
                    }
                    (PartitionState::Unreadable, _) if row.transient => continue,
                    (_, Claim::Live { .. }) => continue,
                    _ => {}
                }
                debug!(job = %task.key.short(), partition = index, "taking the partition");
                match self.run_partition(task, index).await {
                    Ran::Done => {
                        done[index as usize] = true;
                        continue 'scan;
                    }
                    Ran::Held(_) | Ran::Taken => {}
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
}
