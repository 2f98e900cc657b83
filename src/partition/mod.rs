//! Scaling out: one job cut into partitions, run by many tasks at once.
//!
//! spotbatch brings no scheduler: the platform runs the tasks (an AWS Batch
//! array job, a Kubernetes Indexed Job, N ECS tasks), and the checkpoint
//! store coordinates them. Each partition is an ordinary job under a key of
//! its own, `<job>/p-0007`, with its own cursor, state, checkpoint and lease,
//! run by an ordinary [`Runner`](crate::Runner); the job's own key holds
//! the job-level checkpoint, which records the number of partitions and,
//! once every partition is done, that the job is completed.
//!
//! ```no_run
//! use spotbatch::partition::{Assignment, Partition, PartitionedRunner};
//! use spotbatch::prelude::*;
//!
//! struct Range { next_end: u64, out: FileSink }
//! # #[async_trait]
//! # impl Job for Range {
//! #     type Cursor = u64;
//! #     type State = u64;
//! #     async fn next_chunk(&mut self, _: &u64) -> Result<Option<Chunk<u64>>> { Ok(None) }
//! #     async fn process(&mut self, _: &Chunk<u64>, _: &mut u64, _: &ChunkContext) -> Result<()> { Ok(()) }
//! # }
//!
//! #[tokio::main]
//! async fn main() -> Result<std::process::ExitCode> {
//!     // Static on AWS Batch or a Kubernetes Indexed Job, dynamic elsewhere.
//!     let assignment = Assignment::from_env()?.unwrap_or(Assignment::Dynamic);
//!     let report = PartitionedRunner::new("nightly", 64, |p: Partition| async move {
//!         let records = p.range(1_000_000); // this partition's share of the key space
//!         let out = FileSink::open(format!("out/part-{:04}.txt", p.index())).await?;
//!         Ok(Range { next_end: records.end, out })
//!     })
//!     .store_url("s3://my-bucket/ckpt")
//!     .assignment(assignment)
//!     .grace_secs(25)
//!     .interrupted_exit_code(ExitCodes::RETRY_ME)
//!     .configure(|runner| runner.checkpoint(Every::chunks(50).or_seconds(5)))
//!     .on_completed(|_ctx| async { Ok(std::fs::write("out/_SUCCESS", b"")?) })
//!     .run()
//!     .await;
//!     Ok(report.exit_code())
//! }
//! ```
//!
//! # Assignment
//!
//! - **Static** ([`Assignment::Static`]): task `i` of `n` runs partitions
//!   `i`, `i + n`, `i + 2n`, … (all of them when there are as many tasks as
//!   partitions). A replacement task with the same index resumes the same
//!   partitions from their checkpoints. [`Assignment::from_env`] reads the
//!   index and the count from AWS Batch, a Kubernetes Indexed Job, or
//!   `SPOTBATCH_TASK_INDEX`/`SPOTBATCH_TASK_COUNT`.
//! - **Dynamic** ([`Assignment::Dynamic`]): any number of identical tasks
//!   each pick an unfinished partition that no live runner holds, run it to
//!   completion, and pick the next. A partition whose holder stopped
//!   renewing its lease (a SIGKILLed task) is taken over once the lease
//!   expires, or at once when the holder ran on the same host and is gone.
//!
//! # Stopping
//!
//! The task's stop requests (SIGTERM, SIGINT, [`PartitionedRunner::max_runtime`],
//! its stop sources) reach the partition in hand as they reach a single
//! job's run: the chunk in hand finishes, the partition's final checkpoint is
//! saved and its lease released, so that another task can take it at once;
//! then the task exits with the interrupted exit code. No new partition is
//! started after a stop request.
//!
//! # Completion, exactly once
//!
//! A task that finds every partition completed runs the completion step: a
//! run, under the job's own key and its lease, whose one chunk is the
//! completion hook ([`PartitionedRunner::on_completed`]), and whose final
//! checkpoint marks the job completed. The job is marked completed by one
//! compare-and-swap, once; every task started after that exits 0 at once,
//! and a task that finds the step under way in another live task waits for
//! it. The hook's guarantee is that of a chunk: one run of it is recorded as
//! done, with the job's completion. A hook cut off (its task SIGKILLed, or
//! stopped past the drain deadline) before that record is run again by the
//! next task that finds every partition done, so it must be idempotent
//! (writing a `_SUCCESS` object is); a hook that returns an error leaves the
//! job not completed, and the next task tries again.

mod assign;
mod completion;
mod dynamic;
mod progress;
mod report;
mod run;
mod stops;

use std::fmt;
use std::ops::Range;

pub use assign::{Assignment, AssignmentError, TASK_COUNT_VAR, TASK_INDEX_VAR};
pub use completion::partitions_of;
pub use progress::{progress, Claim, JobProgress, PartitionProgress, PartitionState};
pub use report::{PartitionRun, PartitionedReport, TaskOutcome};
pub use run::PartitionedRunner;

use crate::key::{InvalidKey, JobKey};

/// The most partitions a job may have. Every scan of a dynamic task reads
/// the checkpoint of each unfinished partition, so keep to a few thousand.
pub const MAX_PARTITIONS: u32 = 100_000;

/// One partition of a partitioned job: its index, the number of partitions,
/// and the key its checkpoint is stored under.
///
/// What a partition covers is the job's to say, from the index: a share of
/// a key range ([`range`](Self::range)), a hash bucket ([`owns`](Self::owns)),
/// or the `index`-th entry of a list (dates, S3 prefixes) the job holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Partition {
    index: u32,
    count: u32,
    key: JobKey,
}

impl Partition {
    /// Partition `index` (below `count`) of `count` of the job `job`.
    pub(crate) fn new(job: &JobKey, index: u32, count: u32) -> Result<Self, InvalidKey> {
        debug_assert!(index < count, "partition {index} of {count}");
        Ok(Self {
            index,
            count,
            key: key_of(job, index, count)?,
        })
    }

    /// The partition's index, from 0.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// How many partitions the job has.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The key of the partition's checkpoint, e.g. `nightly/p-0007`.
    pub fn key(&self) -> &JobKey {
        &self.key
    }

    /// This partition's share of `0..total`: the ranges of all partitions
    /// are contiguous, in index order, cover `0..total` exactly once, and
    /// differ in length by at most one.
    pub fn range(&self, total: u64) -> Range<u64> {
        let at = |i: u32| (u128::from(total) * u128::from(i) / u128::from(self.count)) as u64;
        at(self.index)..at(self.index + 1)
    }

    /// Whether an item whose hash is `hash` belongs to this partition: hash
    /// buckets, `hash % count == index`. Use a hash that does not change
    /// between runs and builds (not `std`'s `RandomState`).
    pub fn owns(&self, hash: u64) -> bool {
        hash % u64::from(self.count) == u64::from(self.index)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "partition {} of {}", self.index, self.count)
    }
}

/// The key partition `index` of `count` of `job` is stored under:
/// `<job>/p-<index>`, the index zero-padded to at least 4 digits and to as
/// many as the largest index has (`nightly/p-0007`, `nightly/p-00123` of
/// 20,000), so that keys sort in index order.
///
/// # Errors
///
/// [`InvalidKey`] when the key would be longer than [`JobKey::MAX_LEN`].
pub fn key_of(job: &JobKey, index: u32, count: u32) -> Result<JobKey, InvalidKey> {
    let width = count.saturating_sub(1).to_string().len().max(4);
    JobKey::new(format!("{job}/p-{index:0width$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_in_index_order() {
        let job = JobKey::new("nightly").unwrap();
        assert_eq!(key_of(&job, 7, 64).unwrap().as_str(), "nightly/p-0007");
        assert_eq!(
            key_of(&job, 123, 20_000).unwrap().as_str(),
            "nightly/p-00123"
        );
        let keys: Vec<JobKey> = (0..12_000)
            .map(|i| key_of(&job, i, 12_000).unwrap())
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        let long = JobKey::new("k".repeat(JobKey::MAX_LEN - 2)).unwrap();
        assert!(key_of(&long, 0, 2).is_err());
    }

    #[test]
    fn ranges_cover_everything_once() {
        let job = JobKey::new("j").unwrap();
        for (total, count) in [(0, 3), (10, 3), (1_000_003, 64), (u64::MAX, 7), (5, 9)] {
            let mut next = 0;
            for i in 0..count {
                let r = Partition::new(&job, i, count).unwrap().range(total);
                assert_eq!(r.start, next, "{total} in {count}");
                next = r.end;
                assert!(r.end - r.start <= total / u64::from(count) + 1);
            }
            assert_eq!(next, total);
        }
        let p = Partition::new(&job, 3, 8).unwrap();
        assert!(p.owns(11) && p.owns(3) && !p.owns(4));
    }
}
