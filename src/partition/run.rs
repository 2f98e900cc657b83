//! The partitioned runner: its builder, one partition's run, static
//! assignment, and the completion step.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::codec::Codec;
use crate::error::{BoxError, Error};
use crate::exit::{ExitCodes, Outcome};
use crate::job::{ChunkContext, Job};
use crate::key::JobKey;
use crate::runner::Runner;
use crate::shutdown::{FutureSource, InterruptSource, Signal, StopSource};
use crate::store::{check_store_url, open_store, CheckpointStore, StoreError};

use super::assign::Assignment;
use super::completion::{open_job, Completion, Hook, JobState};
use super::progress::{read_partitions, Claim, PartitionState};
use super::report::{PartitionRun, PartitionedReport, TaskOutcome};
use super::stops::Stops;
use super::{key_of, Partition, MAX_PARTITIONS};

type Factory<J> = Box<
    dyn Fn(Partition) -> std::pin::Pin<Box<dyn Future<Output = Result<J, BoxError>> + Send>>
        + Send
        + Sync,
>;
type Configure<J> = Box<dyn Fn(Runner<J>) -> Runner<J> + Send + Sync>;

/// Which store the task uses: one already open, or one to open in `run`.
enum StoreSpec {
    Open(Arc<dyn CheckpointStore>),
    Url(String),
}

/// Runs a task's share of a partitioned job: each partition is an ordinary
/// [`Job`] made by a factory and run by a [`Runner`] under the partition's
/// key ([module docs](super)).
///
/// The settings of the task as a whole are set here: the store, the
/// assignment, the grace period, the lease, the exit codes, and what stops
/// the task (signals, [`max_runtime`](Self::max_runtime), stop sources).
/// The rest of each partition's runner (checkpoint policy, codec, progress
/// lines) is set by [`configure`](Self::configure).
#[must_use = "a partitioned runner does nothing until `.run().await`"]
pub struct PartitionedRunner<J: Job> {
    job: String,
    pub(super) partitions: u32,
    factory: Factory<J>,
    configure: Option<Configure<J>>,
    store: StoreSpec,
    assignment: Assignment,
    grace: Duration,
    reserve: Option<Duration>,
    lease: Duration,
    codes: ExitCodes,
    signals: Vec<Signal>,
    max_runtime: Option<Duration>,
    /// A mutex only to make the runner `Sync` (stop sources are `Send` only).
    sources: std::sync::Mutex<Vec<Box<dyn StopSource>>>,
    hook: Option<Hook>,
    pub(super) poll: Duration,
}

impl<J: Job> std::fmt::Debug for PartitionedRunner<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionedRunner")
            .field("job", &self.job)
            .field("partitions", &self.partitions)
            .field("assignment", &self.assignment)
            .field("grace", &self.grace)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// How one partition's run ended, for the loops.
pub(super) enum Ran {
    /// The partition is complete.
    Done,
    /// A live runner holds it, for this long unless renewed.
    Held(Duration),
    /// Another runner saved it first (at the start), or took it over.
    Taken,
    /// A stop request ended the run.
    Interrupted(InterruptSource),
    /// It failed.
    Failed(Error),
}

/// What a task holds while it runs.
pub(super) struct Task {
    pub(super) key: JobKey,
    pub(super) store: Arc<dyn CheckpointStore>,
    pub(super) stops: Stops,
    pub(super) runs: Vec<PartitionRun>,
}

impl<J: Job + 'static> PartitionedRunner<J> {
    /// A runner for task's share of the job `job`, cut into `partitions`
    /// partitions; `factory` makes the job of one partition (opening its
    /// inputs and outputs) when the task is about to run it.
    ///
    /// The factory runs before the partition's lease is taken, and the
    /// partition may turn out to be held by another task (its job is then
    /// dropped unrun): open inputs and outputs without writing to them, and
    /// set where writing starts in [`Job::resume`], which runs once the
    /// lease is taken ([`FileSink::truncate`](crate::FileSink::truncate)
    /// does both).
    ///
    /// The defaults: the file store in `./.spotbatch`, dynamic assignment, a
    /// 30 s grace period, a 60 s lease, [`ExitCodes::default`], SIGTERM and
    /// SIGINT, a 1 s poll while waiting for partitions held by others.
    pub fn new<F, Fut>(job: impl Into<String>, partitions: u32, factory: F) -> Self
    where
        F: Fn(Partition) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<J, BoxError>> + Send + 'static,
    {
        Self {
            job: job.into(),
            partitions,
            factory: Box::new(move |p| Box::pin(factory(p))),
            configure: None,
            store: StoreSpec::Url(format!("file://{}", crate::DEFAULT_STORE_DIR)),
            assignment: Assignment::Dynamic,
            grace: Duration::from_secs(30),
            reserve: None,
            lease: Duration::from_secs(60),
            codes: ExitCodes::default(),
            signals: vec![Signal::Term, Signal::Int],
            max_runtime: None,
            sources: std::sync::Mutex::new(Vec::new()),
            hook: None,
            poll: Duration::from_secs(1),
        }
    }

    /// Stores checkpoints in the store `url` names, opened once for the
    /// whole task ([`Runner::store_url`]).
    pub fn store_url(mut self, url: impl Into<String>) -> Self {
        self.store = StoreSpec::Url(url.into());
        self
    }

    /// Stores checkpoints in a store shared with other code.
    pub fn shared_store(mut self, store: Arc<dyn CheckpointStore>) -> Self {
        self.store = StoreSpec::Open(store);
        self
    }

    /// Which partitions this task runs (default [`Assignment::Dynamic`]).
    pub fn assignment(mut self, assignment: Assignment) -> Self {
        self.assignment = assignment;
        self
    }

    /// Sets each partition's runner further: checkpoint policy, codec,
    /// progress lines ([`Runner`]'s builder). The settings this builder has
    /// (store, grace, lease, exit codes, signals) are applied after
    /// `configure` and win; a [`Runner::max_runtime`] or stop source set here
    /// applies to each partition's run on its own, not to the task.
    /// [`Runner::restart`] has no place here: a partition completed is not
    /// run again.
    pub fn configure(
        mut self,
        configure: impl Fn(Runner<J>) -> Runner<J> + Send + Sync + 'static,
    ) -> Self {
        self.configure = Some(Box::new(configure));
        self
    }

    /// Time from a stop request to the platform's SIGKILL, for the
    /// partition in hand ([`Runner::grace`]).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// [`grace`](Self::grace) in whole seconds.
    pub fn grace_secs(self, secs: u64) -> Self {
        self.grace(Duration::from_secs(secs))
    }

    /// The part of the grace period kept for the final checkpoint
    /// ([`Runner::checkpoint_reserve`]).
    pub fn checkpoint_reserve(mut self, reserve: Duration) -> Self {
        self.reserve = Some(reserve);
        self
    }

    /// How long a partition's lease lasts without renewal (default 60 s):
    /// how long a partition whose task was SIGKILLed on another host waits
    /// before another task takes it over ([`Runner::lease`]). Partitions
    /// always run with a lease: it is what keeps two tasks off one partition.
    pub fn lease(mut self, ttl: Duration) -> Self {
        self.lease = ttl;
        self
    }

    /// The exit codes of [`PartitionedReport::code`].
    pub fn exit_codes(mut self, codes: ExitCodes) -> Self {
        self.codes = codes;
        self
    }

    /// The exit code of an interrupted task (default 0; 75 for AWS Batch and
    /// Kubernetes retry rules, see [`ExitCodes`]).
    pub fn interrupted_exit_code(mut self, code: u8) -> Self {
        self.codes.interrupted = code;
        self
    }

    /// The signals that stop the task (default SIGTERM and SIGINT).
    pub fn signals(mut self, signals: &[Signal]) -> Self {
        self.signals = signals.to_vec();
        self
    }

    /// Stops the task (like SIGTERM) once it has run for `limit`.
    pub fn max_runtime(mut self, limit: Duration) -> Self {
        self.max_runtime = Some(limit);
        self
    }

    /// Stops the task (like SIGTERM) when `future` completes.
    pub fn stop_on(
        self,
        name: impl Into<String>,
        future: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.stop_source(FutureSource::new(name.into(), future))
    }

    /// Stops the task (like SIGTERM) when `source` says so, e.g. an EC2 Spot
    /// notice poller.
    pub fn stop_source(mut self, source: impl StopSource) -> Self {
        sources(&mut self.sources).push(Box::new(source));
        self
    }

    /// What to do once, when every partition is done, before the job is
    /// marked completed: e.g. write a `_SUCCESS` object. It runs as the one
    /// chunk of the completion step: a stop request lets it finish until the
    /// drain deadline, then [`ChunkContext::is_cancelled`] turns true. It
    /// may run again if its task dies before the job is marked completed,
    /// so make it idempotent ([module docs](super#completion-exactly-once)).
    pub fn on_completed<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(ChunkContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.hook = Some(Arc::new(move |ctx| Box::pin(hook(ctx))));
        self
    }

    /// How often a task waiting for partitions that other tasks hold (or
    /// for another task's completion step) looks again (default 1 s). It
    /// reads only the partitions it waits for; a lease that lapses sooner
    /// is looked at when it lapses.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    /// Runs the task's share of the job: until the job is completed (or
    /// this task's partitions are, with static assignment), a stop request,
    /// or a failure. Never panics on bad input: every failure is in the
    /// report.
    ///
    /// A task first checks the job-level checkpoint: when it says completed,
    /// the task returns at once ([`TaskOutcome::AlreadyCompleted`]); when
    /// there is none, it creates it with the number of partitions; when it
    /// records another number, the task fails with [`Error::Config`].
    pub async fn run(mut self) -> PartitionedReport {
        let started = Instant::now();
        let mut runs = Vec::new();
        let sources = std::mem::take(sources(&mut self.sources));
        let outcome = match self.drive(sources, &mut runs).await {
            Ok(outcome) => outcome,
            Err(error) => {
                error!(job = %crate::key::short(&self.job), %error, "task failed");
                TaskOutcome::Failed {
                    partition: None,
                    error,
                }
            }
        };
        let report = PartitionedReport::new(outcome, runs, started.elapsed(), self.codes);
        let outcome = match &report.outcome {
            TaskOutcome::JobCompleted => "job completed".to_owned(),
            TaskOutcome::AlreadyCompleted => "job already completed".to_owned(),
            TaskOutcome::PartitionsDone => "this task's partitions are done".to_owned(),
            TaskOutcome::Interrupted(source) => format!("interrupted by {source}"),
            TaskOutcome::Failed {
                partition: Some(p), ..
            } => format!("partition {p} failed"),
            TaskOutcome::Failed { .. } => "failed".to_owned(),
        };
        info!(
            job = %crate::key::short(&self.job),
            assignment = %self.assignment,
            %outcome,
            partition_runs = report.runs.len(),
            elapsed = ?report.elapsed,
            exit_code = report.code(),
            "task ended"
        );
        report
    }

    async fn drive(
        &self,
        sources: Vec<Box<dyn StopSource>>,
        runs: &mut Vec<PartitionRun>,
    ) -> Result<TaskOutcome, Error> {
        let key = JobKey::new(self.job.clone()).map_err(|e| Error::Config(e.to_string()))?;
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            return Err(Error::Config(format!(
                "a partitioned job has 1 to {MAX_PARTITIONS} partitions, not {}",
                self.partitions
            )));
        }
        key_of(&key, self.partitions - 1, self.partitions)
            .map_err(|e| Error::Config(format!("the partitions' keys: {e}")))?;
        if let StoreSpec::Url(url) = &self.store {
            check_store_url(url)?;
        }
        let stops = Stops::listen(&self.signals, self.max_runtime, sources)?;
        tokio::task::yield_now().await;
        let store = match &self.store {
            StoreSpec::Open(store) => Arc::clone(store),
            StoreSpec::Url(url) => tokio::select! {
                opened = open_store(url) => opened?,
                () = stops.wait() => return Ok(interrupted(&stops)),
            },
        };
        info!(
            job = %key.short(),
            partitions = self.partitions,
            assignment = %self.assignment,
            store = %store.location(),
            "task started"
        );
        match open_job(&*store, &key, self.partitions, &stops).await? {
            None => return Ok(interrupted(&stops)),
            Some(JobState::Completed) => {
                info!(job = %key.short(), "job already completed: nothing to do");
                return Ok(TaskOutcome::AlreadyCompleted);
            }
            Some(JobState::Open) => {}
        }
        let mut task = Task {
            key,
            store,
            stops,
            runs: Vec::new(),
        };
        let outcome = match self.assignment {
            Assignment::Static { .. } => self.static_share(&mut task).await,
            Assignment::Dynamic => self.dynamic(&mut task).await,
        };
        runs.append(&mut task.runs);
        outcome
    }
}

impl<J: Job + 'static> PartitionedRunner<J> {
    /// Static assignment: this task's partitions, in order, each to the
    /// end; then the completion step if every partition is done.
    async fn static_share(&self, task: &mut Task) -> Result<TaskOutcome, Error> {
        let mine = self.assignment.partitions(self.partitions);
        if mine.is_empty() {
            info!(job = %task.key.short(), assignment = %self.assignment, partitions = self.partitions, "no partition falls to this task");
        }
        for index in mine {
            let mut said_held = false;
            loop {
                if task.stops.requested() {
                    return Ok(interrupted(&task.stops));
                }
                let row = self.read(task, &[index]).await.remove(0);
                if row.state == PartitionState::Completed {
                    break;
                }
                let wait = match row.claim {
                    Claim::Live { expires_ms } => Some(Duration::from_millis(
                        expires_ms.saturating_sub(crate::checkpoint::now_ms()),
                    )),
                    _ => match self.run_partition(task, index).await {
                        Ran::Done => break,
                        Ran::Held(left) => Some(left),
                        Ran::Taken => None,
                        Ran::Interrupted(source) => return Ok(TaskOutcome::Interrupted(source)),
                        Ran::Failed(error) => {
                            return Ok(TaskOutcome::Failed {
                                partition: Some(index),
                                error,
                            })
                        }
                    },
                };
                if let Some(left) = wait {
                    if !said_held {
                        info!(job = %task.key.short(), partition = index, lease_left = ?left, "the partition is held by a live runner (the task this one replaces?): waiting for it to release it or for its lease to expire");
                        said_held = true;
                    }
                    task.stops.sleep(self.wait_for(left)).await;
                }
            }
        }
        let rows = self
            .read(task, &(0..self.partitions).collect::<Vec<_>>())
            .await;
        let done = rows
            .iter()
            .filter(|r| r.state == PartitionState::Completed)
            .count();
        if done < rows.len() {
            info!(job = %task.key.short(), done, partitions = self.partitions, "this task's partitions are done; the task that finishes the last one completes the job");
            return Ok(TaskOutcome::PartitionsDone);
        }
        self.complete(task).await
    }

    /// How long to wait for a lease that lapses in `left`: until just after
    /// it lapses, at most the poll interval.
    pub(super) fn wait_for(&self, left: Duration) -> Duration {
        (left + Duration::from_millis(20)).min(self.poll)
    }

    /// Reads partitions `indices`, retrying transient store errors (a stop
    /// request ends the wait; what is unread then stays unreadable).
    pub(super) async fn read(
        &self,
        task: &Task,
        indices: &[u32],
    ) -> Vec<super::progress::PartitionProgress> {
        let mut delay = Duration::from_millis(100);
        loop {
            let rows = read_partitions(&task.store, &task.key, self.partitions, indices).await;
            let Some(failed) = rows.iter().find(|r| r.transient) else {
                return rows;
            };
            warn!(job = %task.key.short(), partition = failed.index, error = failed.error.as_deref().unwrap_or(""), retry_in = ?delay, "cannot read a partition's checkpoint; retrying");
            if !task.stops.sleep(delay).await {
                return rows;
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// The completion step: runs the hook under the job's own key and lease
    /// and marks the job completed; waits while another live task runs it.
    pub(super) async fn complete(&self, task: &mut Task) -> Result<TaskOutcome, Error> {
        info!(job = %task.key.short(), partitions = self.partitions, "every partition is completed: running the completion step");
        let mut said_held = false;
        loop {
            if task.stops.requested() {
                return Ok(interrupted(&task.stops));
            }
            let completion = Completion {
                hook: self.hook.clone(),
            };
            let runner = Runner::new(task.key.as_str(), completion).codec(Codec::Json);
            let report = self.settle(runner, task).run().await;
            match report.outcome {
                Outcome::Completed => {
                    info!(job = %task.key.short(), "job completed");
                    return Ok(TaskOutcome::JobCompleted);
                }
                Outcome::AlreadyCompleted => return Ok(TaskOutcome::AlreadyCompleted),
                Outcome::Interrupted(source) => return Ok(TaskOutcome::Interrupted(source)),
                Outcome::Failed(Error::Held { expires_in, .. }) => {
                    if !said_held {
                        info!(job = %task.key.short(), "another task is running the completion step: waiting for it");
                        said_held = true;
                    }
                    task.stops.sleep(self.wait_for(expires_in)).await;
                }
                Outcome::Failed(Error::Store(StoreError::Conflict { .. })) => {}
                Outcome::Failed(error) => return Err(error),
            }
        }
    }

    /// Runs partition `index` to its end (or a stop, or a failure).
    pub(super) async fn run_partition(&self, task: &mut Task, index: u32) -> Ran {
        let partition = match Partition::new(&task.key, index, self.partitions) {
            Ok(p) => p,
            Err(e) => return Ran::Failed(Error::Config(e.to_string())),
        };
        let job = match (self.factory)(partition.clone()).await {
            Ok(job) => job,
            Err(source) => {
                return Ran::Failed(Error::Job {
                    during: format!("making the job of {partition}"),
                    source,
                })
            }
        };
        let mut runner = Runner::new(partition.key().as_str(), job);
        if let Some(configure) = &self.configure {
            runner = configure(runner);
        }
        let report = self.settle(runner, task).run().await;
        let completed = report.is_complete();
        let run = PartitionRun {
            index,
            completed,
            stats: report.stats.clone(),
        };
        let ran = match report.outcome {
            Outcome::Completed | Outcome::AlreadyCompleted => Ran::Done,
            Outcome::Interrupted(source) => Ran::Interrupted(source),
            Outcome::Failed(Error::Held { expires_in, .. }) => return Ran::Held(expires_in),
            Outcome::Failed(Error::Store(e @ StoreError::Conflict { .. })) => {
                warn!(job = %partition.key().short(), error = %e, "another task took the partition");
                Ran::Taken
            }
            Outcome::Failed(error) => Ran::Failed(error),
        };
        task.runs.push(run);
        ran
    }

    /// The task-wide settings, applied to one run's runner.
    fn settle<K: Job>(&self, runner: Runner<K>, task: &Task) -> Runner<K> {
        let runner = runner
            .shared_store(Arc::clone(&task.store))
            .signals(&[])
            .stop_source(task.stops.relay())
            .grace(self.grace)
            .lease(self.lease)
            .exit_codes(self.codes);
        match self.reserve {
            Some(reserve) => runner.checkpoint_reserve(reserve),
            None => runner,
        }
    }
}

fn sources(
    sources: &mut std::sync::Mutex<Vec<Box<dyn StopSource>>>,
) -> &mut Vec<Box<dyn StopSource>> {
    sources
        .get_mut()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The outcome of a task stopped between runs.
fn interrupted(stops: &Stops) -> TaskOutcome {
    match stops.first() {
        Some(source) => TaskOutcome::Interrupted(source),
        None => TaskOutcome::Failed {
            partition: None,
            error: Error::Config("interrupted without a source".into()),
        },
    }
}
