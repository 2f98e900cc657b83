//! Which partitions a task runs: a fixed share (static), or whatever is
//! left (dynamic); the platform's variables that say which task this is.

use std::fmt;

/// The variable naming this task's index for static assignment when the
/// platform sets none (from 0; with [`TASK_COUNT_VAR`]).
pub const TASK_INDEX_VAR: &str = "SPOTBATCH_TASK_INDEX";
/// The variable giving the number of tasks for static assignment: with
/// [`TASK_INDEX_VAR`], or with Kubernetes' `JOB_COMPLETION_INDEX` (the Job's
/// `spec.completions`, which Kubernetes does not pass to the pod).
pub const TASK_COUNT_VAR: &str = "SPOTBATCH_TASK_COUNT";

const BATCH_INDEX_VAR: &str = "AWS_BATCH_JOB_ARRAY_INDEX";
const BATCH_SIZE_VAR: &str = "AWS_BATCH_JOB_ARRAY_SIZE";
const K8S_INDEX_VAR: &str = "JOB_COMPLETION_INDEX";

/// Which partitions a task runs.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// Task `index` of `count` runs partitions `index`, `index + count`,
    /// `index + 2 * count`, … in that order, and nothing else: each partition
    /// belongs to exactly one task, and a replacement task with the same
    /// index resumes the same partitions. A task whose partition is held by
    /// a live runner (the task it replaces, not yet gone) waits for that
    /// lease to expire.
    Static {
        /// This task's index, from 0.
        index: u32,
        /// How many tasks share the job.
        count: u32,
    },
    /// The task takes any unfinished partition that no live runner holds,
    /// runs it to the end, and takes the next, until every partition is
    /// completed; while the only unfinished partitions are held by other
    /// tasks, it waits, taking over any whose lease lapses.
    Dynamic,
}

impl Assignment {
    /// Static assignment as task `index` of `count`.
    ///
    /// # Errors
    ///
    /// [`AssignmentError::OutOfRange`] unless `index < count`.
    pub fn fixed(index: u32, count: u32) -> Result<Self, AssignmentError> {
        if index >= count {
            return Err(AssignmentError::OutOfRange {
                index,
                count,
                from: "the configuration",
            });
        }
        Ok(Assignment::Static { index, count })
    }

    /// Static assignment from the platform's variables, first found first:
    ///
    /// 1. AWS Batch array jobs: `AWS_BATCH_JOB_ARRAY_INDEX` and
    ///    `AWS_BATCH_JOB_ARRAY_SIZE`, set in every child job
    ///    ([AWS Batch job environment variables](https://docs.aws.amazon.com/batch/latest/userguide/job_env_vars.html),
    ///    [array jobs](https://docs.aws.amazon.com/batch/latest/userguide/array_jobs.html));
    /// 2. Kubernetes Indexed Jobs: `JOB_COMPLETION_INDEX`
    ///    ([completion mode](https://kubernetes.io/docs/concepts/workloads/controllers/job/#completion-mode)),
    ///    with the Job's `spec.completions` in [`TASK_COUNT_VAR`];
    /// 3. [`TASK_INDEX_VAR`] and [`TASK_COUNT_VAR`].
    ///
    /// `None` when none of the index variables is set.
    ///
    /// # Errors
    ///
    /// [`AssignmentError`] naming the variable: a count missing for the
    /// index found, a value that is not a number, or an index not below the
    /// count.
    pub fn from_env() -> Result<Option<Self>, AssignmentError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) on variables read by `var`.
    pub(crate) fn from_vars(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, AssignmentError> {
        let pairs = [
            (BATCH_INDEX_VAR, BATCH_SIZE_VAR, "AWS Batch sets it in every child of an array job"),
            (
                K8S_INDEX_VAR,
                TASK_COUNT_VAR,
                "Kubernetes does not pass an Indexed Job's completions to its pods: set it to spec.completions",
            ),
            (TASK_INDEX_VAR, TASK_COUNT_VAR, "it goes with the index"),
        ];
        for (index_var, count_var, why) in pairs {
            let Some(index) = var(index_var) else {
                continue;
            };
            let index = number(index_var, &index)?;
            let count = var(count_var).ok_or(AssignmentError::MissingCount {
                index_var,
                count_var,
                why,
            })?;
            let count = number(count_var, &count)?;
            if index >= count {
                return Err(AssignmentError::OutOfRange {
                    index,
                    count,
                    from: index_var,
                });
            }
            return Ok(Some(Assignment::Static { index, count }));
        }
        Ok(None)
    }

    /// The partitions this task runs, of `partitions`, in the order it runs
    /// them (dynamic: all of them, to pick from).
    pub fn partitions(&self, partitions: u32) -> Vec<u32> {
        match *self {
            Assignment::Static { index, count } => {
                (index..partitions).step_by(count.max(1) as usize).collect()
            }
            Assignment::Dynamic => (0..partitions).collect(),
        }
    }
}

impl fmt::Display for Assignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Assignment::Static { index, count } => write!(f, "static, task {index} of {count}"),
            Assignment::Dynamic => f.write_str("dynamic"),
        }
    }
}

fn number(var: &'static str, value: &str) -> Result<u32, AssignmentError> {
    value
        .trim()
        .parse()
        .map_err(|e: std::num::ParseIntError| AssignmentError::NotANumber {
            var,
            value: value.to_owned(),
            reason: e.to_string(),
        })
}

/// Static assignment that cannot be read or makes no sense.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignmentError {
    /// An index variable is set, its count variable is not.
    #[error("{index_var} is set but {count_var} is not ({why})")]
    MissingCount {
        /// The index variable found.
        index_var: &'static str,
        /// The count variable missing.
        count_var: &'static str,
        /// Where the count should come from.
        why: &'static str,
    },
    /// A variable does not hold a number from 0 to 4294967295.
    #[error("{var}={value:?} is not a task index or count: {reason}")]
    NotANumber {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The index is not below the count.
    #[error("task index {index} (from {from}) is not below the number of tasks, {count}")]
    OutOfRange {
        /// The index.
        index: u32,
        /// The count.
        count: u32,
        /// Where the index came from: its variable, or `the configuration`.
        from: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Result<Option<Assignment>, AssignmentError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Assignment::from_vars(|name| map.get(name).cloned())
    }

    #[test]
    fn reads_batch_kubernetes_and_explicit_variables() {
        assert_eq!(vars(&[]), Ok(None));
        assert_eq!(
            vars(&[(BATCH_INDEX_VAR, "3"), (BATCH_SIZE_VAR, "8")]),
            Ok(Some(Assignment::Static { index: 3, count: 8 }))
        );
        assert_eq!(
            vars(&[(K8S_INDEX_VAR, "0"), (TASK_COUNT_VAR, "4")]),
            Ok(Some(Assignment::Static { index: 0, count: 4 }))
        );
        assert_eq!(
            vars(&[(TASK_INDEX_VAR, "1"), (TASK_COUNT_VAR, "2")]),
            Ok(Some(Assignment::Static { index: 1, count: 2 }))
        );
        // AWS Batch's variables win over the others.
        assert_eq!(
            vars(&[
                (BATCH_INDEX_VAR, "5"),
                (BATCH_SIZE_VAR, "6"),
                (TASK_INDEX_VAR, "0"),
                (TASK_COUNT_VAR, "2")
            ]),
            Ok(Some(Assignment::Static { index: 5, count: 6 }))
        );
    }

    #[test]
    fn refuses_what_makes_no_sense_naming_the_variable() {
        let missing = vars(&[(K8S_INDEX_VAR, "2")]).unwrap_err();
        assert!(missing.to_string().contains(TASK_COUNT_VAR), "{missing}");
        assert!(missing.to_string().contains("completions"), "{missing}");
        let nan = vars(&[(BATCH_INDEX_VAR, "x"), (BATCH_SIZE_VAR, "2")]).unwrap_err();
        assert!(nan.to_string().contains(BATCH_INDEX_VAR), "{nan}");
        let out = vars(&[(TASK_INDEX_VAR, "2"), (TASK_COUNT_VAR, "2")]).unwrap_err();
        assert!(out.to_string().contains("not below"), "{out}");
        assert!(Assignment::fixed(0, 0).is_err());
    }

    #[test]
    fn static_tasks_share_the_partitions_round_robin() {
        let a = Assignment::fixed(1, 4).unwrap();
        assert_eq!(a.partitions(10), vec![1, 5, 9]);
        assert_eq!(
            Assignment::fixed(9, 10).unwrap().partitions(4),
            Vec::<u32>::new()
        );
        let mut all: Vec<u32> = (0..4)
            .flat_map(|i| Assignment::fixed(i, 4).unwrap().partitions(10))
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(Assignment::Dynamic.partitions(3), vec![0, 1, 2]);
    }
}
