//! The runner: drives a job's chunks, checkpoints, and owns shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout, timeout_at, Instant};
use tracing::{error, info, warn};

use crate::aws::EcsTask;
use crate::checkpoint::{Checkpoint, Status};
use crate::codec::Codec;
use crate::error::{BoxError, Error};
use crate::exit::{ExitCodes, Outcome, Report, RunStats};
use crate::job::{Cancelled, ChunkContext, Job};
use crate::key::JobKey;
use crate::policy::CheckpointPolicy;
use crate::session::Session;
use crate::shutdown::{Budget, FutureSource, Interrupts, Signal, StopSource};
use crate::store::{open_store, CheckpointStore, FileStore, StoreError};

/// Where checkpoints go when no store is set: `file://.spotbatch`.
pub const DEFAULT_STORE_DIR: &str = ".spotbatch";

/// Runs a [`Job`] to completion or interruption, checkpointing as it goes.
///
/// ```no_run
/// # use spotbatch::prelude::*;
/// # struct MyJob;
/// # #[async_trait]
/// # impl Job for MyJob {
/// #     type Cursor = u64;
/// #     type State = ();
/// #     async fn next_chunk(&mut self, _: &u64) -> Result<Option<Chunk<u64>>> { Ok(None) }
/// #     async fn process(&mut self, _: &Chunk<u64>, _: &mut (), _: &ChunkContext) -> Result<()> { Ok(()) }
/// # }
/// # async fn f() -> Result<std::process::ExitCode> {
/// let report = Runner::new("my-job", MyJob)
///     .store_url("file:///var/lib/ckpt")?
///     .checkpoint(Every::chunks(100).or_seconds(5))
///     .grace_secs(110) // ECS stopTimeout 120, minus a margin
///     .run()
///     .await;
/// Ok(report.exit_code())
/// # }
/// ```
///
/// # Shutdown
///
/// | event | what the runner does |
/// |---|---|
/// | first SIGTERM/SIGINT (or other stop request) | starts no new chunk; lets the chunk in hand finish until the drain deadline (grace − reserve); flushes; writes the final checkpoint; returns [`Outcome::Interrupted`] |
/// | chunk still running at the drain deadline | cancels it through [`ChunkContext`]; drops it if it has not returned shortly after; the checkpoint stays at the last finished chunk |
/// | second SIGTERM/SIGINT | skips the drain: cancels the chunk in hand at once, checkpoints what is finished, returns |
/// | final checkpoint cannot be saved by the end of the grace period | returns [`Error::CheckpointNotSaved`] (exit code `checkpoint_not_saved`), naming the version the next run resumes from |
/// | SIGKILL (grace exceeded, OOM, host loss) | nothing runs; the store keeps the last checkpoint, whole; the next run redoes the chunks since it |
///
/// Signal handlers are installed when [`run`](Self::run) starts, before the
/// first chunk, and stay installed after it returns (tokio cannot remove them).
#[must_use = "a runner does nothing until `.run().await`"]
pub struct Runner<J: Job> {
    key: String,
    job: J,
    store: Option<Arc<dyn CheckpointStore>>,
    policy: CheckpointPolicy,
    grace: Duration,
    reserve: Option<Duration>,
    codes: ExitCodes,
    signals: Vec<Signal>,
    codec: Codec,
    restart: bool,
    max_runtime: Option<Duration>,
    sources: Vec<Box<dyn StopSource>>,
    lease: Option<Duration>,
    ecs_identity: bool,
}

impl<J: Job> std::fmt::Debug for Runner<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("key", &self.key)
            .field("store", &self.store)
            .field("policy", &self.policy)
            .field("grace", &self.grace)
            .field("signals", &self.signals)
            .finish_non_exhaustive()
    }
}

impl<J: Job> Runner<J> {
    /// A runner for `job`, stored under `key`, with the defaults: the file
    /// store in `./.spotbatch`, [`CheckpointPolicy::default`], a 30 s grace
    /// period (the ECS default `stopTimeout`), SIGTERM and SIGINT, bincode,
    /// a 60 s lease, and [`ExitCodes::default`].
    pub fn new(key: impl Into<String>, job: J) -> Self {
        Self {
            key: key.into(),
            job,
            store: None,
            policy: CheckpointPolicy::default(),
            grace: Duration::from_secs(30),
            reserve: None,
            codes: ExitCodes::default(),
            signals: vec![Signal::Term, Signal::Int],
            codec: Codec::default(),
            restart: false,
            max_runtime: None,
            sources: Vec::new(),
            lease: Some(Duration::from_secs(60)),
            ecs_identity: true,
        }
    }

    /// Stores checkpoints in `store`.
    pub fn store(self, store: impl CheckpointStore + 'static) -> Self {
        self.shared_store(Arc::new(store))
    }

    /// Stores checkpoints in a store shared with other code.
    pub fn shared_store(mut self, store: Arc<dyn CheckpointStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Stores checkpoints in the store a URL names; see [`open_store`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the URL when it is malformed or its scheme unknown.
    pub fn store_url(self, url: &str) -> Result<Self, Error> {
        Ok(self.shared_store(open_store(url)?))
    }

    /// When to write periodic checkpoints (default: every 100 chunks or 5 s).
    pub fn checkpoint(mut self, policy: CheckpointPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Time from a stop request to the platform's SIGKILL. Set it to the
    /// container's `stopTimeout` (ECS: default 30 s, at most 120 s on
    /// Fargate) or `terminationGracePeriodSeconds` (Kubernetes), minus a
    /// second or two for process start-up and exit.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// [`grace`](Self::grace) in whole seconds.
    pub fn grace_secs(self, secs: u64) -> Self {
        self.grace(Duration::from_secs(secs))
    }

    /// The part of the grace period kept for flushing and writing the final
    /// checkpoint (default: a quarter of the grace period, at most 5 s).
    pub fn checkpoint_reserve(mut self, reserve: Duration) -> Self {
        self.reserve = Some(reserve);
        self
    }

    /// The exit codes of [`Report::exit_code`].
    pub fn exit_codes(mut self, codes: ExitCodes) -> Self {
        self.codes = codes;
        self
    }

    /// The exit code of an interrupted run (default 0; 75 for AWS Batch and
    /// Kubernetes retry rules, see [`ExitCodes`]).
    pub fn interrupted_exit_code(mut self, code: u8) -> Self {
        self.codes.interrupted = code;
        self
    }

    /// The signals that stop the run (default SIGTERM and SIGINT).
    pub fn signals(mut self, signals: &[Signal]) -> Self {
        self.signals = signals.to_vec();
        self
    }

    /// How new checkpoints encode the cursor and state (default bincode).
    /// Checkpoints already stored are read with the codec they record.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Starts the job over from the default cursor and state, even when its
    /// checkpoint says completed. The new checkpoints still replace the stored
    /// one by compare-and-swap; a corrupt checkpoint is still refused.
    pub fn restart(mut self) -> Self {
        self.restart = true;
        self
    }

    /// Stops the run (like SIGTERM) once it has run for `limit`, e.g. to hand
    /// over before a scheduled task's time slot ends.
    pub fn max_runtime(mut self, limit: Duration) -> Self {
        self.max_runtime = Some(limit);
        self
    }

    /// Stops the run (like SIGTERM) when `future` completes, e.g. on a message
    /// from a control queue. `name` appears in logs, the checkpoint and the outcome.
    pub fn stop_on(
        self,
        name: impl Into<String>,
        future: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.stop_source(FutureSource::new(name.into(), future))
    }

    /// Stops the run (like SIGTERM) when `source` says so, e.g. an EC2 Spot
    /// notice poller. Sources are listened to from the start of `run`.
    pub fn stop_source(mut self, source: impl StopSource) -> Self {
        self.sources.push(Box::new(source));
        self
    }

    /// How long the job's lease lasts without renewal (default 60 s).
    ///
    /// A run takes the lease with its first save and renews it with every
    /// checkpoint and, during long chunks, every third of `ttl`; the final
    /// checkpoint releases it. Another runner refuses to start while a live
    /// lease is held ([`Error::Held`], the `conflict` exit code) and takes the
    /// job over once it has expired, or at once when the holder ran on this
    /// host and its process is gone. A renewal that finds another version
    /// (someone took the job over) stops the run at once, without writing.
    ///
    /// Expiry compares the holder's clock with the newcomer's: keep `ttl` well
    /// above the clock skew between your hosts.
    pub fn lease(mut self, ttl: Duration) -> Self {
        self.lease = Some(ttl);
        self
    }

    /// No lease: runs start whoever else runs; compare-and-swap on every
    /// save still fences all but one writer, at its next save.
    pub fn no_lease(mut self) -> Self {
        self.lease = None;
        self
    }

    /// Whether to read the ECS task's identity at start (default on). When
    /// `ECS_CONTAINER_METADATA_URI_V4` is set, the runner reads `/task` once
    /// and records the task ARN as the writer of its checkpoints, in its run
    /// history and in its logs; when it is not set, nothing is asked.
    pub fn ecs_identity(mut self, on: bool) -> Self {
        self.ecs_identity = on;
        self
    }

    /// Runs the job until it completes, is stopped, or fails.
    ///
    /// Loads the job's checkpoint (or starts fresh), calls [`Job::resume`],
    /// then processes chunks, checkpointing per the policy and always at the
    /// end. Never panics on bad input: every failure is in the report.
    pub async fn run(self) -> Report {
        let started = Instant::now();
        let codes = self.codes;
        let key = self.key.clone();
        let mut stats = RunStats::default();
        let outcome = match self.drive(&mut stats).await {
            Ok(outcome) => outcome,
            Err(e) => {
                error!(job = %key, error = %e, "run failed");
                Outcome::Failed(e)
            }
        };
        stats.elapsed = started.elapsed();
        let report = Report::new(outcome, stats, codes);
        let outcome = match &report.outcome {
            Outcome::Completed => "completed".to_owned(),
            Outcome::AlreadyCompleted => "already completed".to_owned(),
            Outcome::Interrupted(source) => format!("interrupted by {source}"),
            Outcome::Failed(_) => "failed".to_owned(),
        };
        info!(
            job = %key,
            %outcome,
            chunks = report.stats.chunks,
            items = report.stats.items,
            checkpoints = report.stats.checkpoints,
            elapsed = ?report.stats.elapsed,
            exit_code = report.code(),
            "run ended"
        );
        report
    }

    async fn drive(self, stats: &mut RunStats) -> Result<Outcome, Error> {
        let Runner {
            key,
            mut job,
            store,
            policy,
            grace,
            reserve,
            signals,
            codec,
            restart,
            max_runtime,
            sources,
            lease,
            ecs_identity,
            ..
        } = self;
        let key = JobKey::new(key).map_err(|e| Error::Config(e.to_string()))?;
        let budget = Budget::new(grace, reserve)?;
        if lease.is_some_and(|ttl| ttl < Duration::from_millis(300)) {
            return Err(Error::Config("the lease must last at least 300 ms".into()));
        }
        let store = store.unwrap_or_else(|| Arc::new(FileStore::new(DEFAULT_STORE_DIR)));
        let interrupts = Interrupts::listen(&signals, max_runtime, sources, budget)?;
        // Let stop requests that are already due (a finished `stop_on` future) register.
        tokio::task::yield_now().await;

        let loaded = load(&*store, &key, &interrupts).await?;
        let mut session = Session::new::<J>(&*store, &key, codec, lease);
        if ecs_identity {
            match EcsTask::from_environment(Duration::from_secs(2)).await {
                Ok(Some(task)) => {
                    info!(
                        task = %task.task_arn,
                        cluster = %task.cluster,
                        family = %task.family,
                        revision = %task.revision,
                        zone = %task.availability_zone,
                        launch_type = %task.launch_type,
                        "running as an ECS task"
                    );
                    session.set_task(task.task_arn);
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, "ECS task metadata unreadable: continuing without the task's identity")
                }
            }
        }
        let (mut cursor, mut state) = match loaded {
            None => {
                info!(job = %key, store = %session.location, "no checkpoint: starting from the beginning");
                Default::default()
            }
            Some(stored) => {
                session.check_belongs(&stored, !restart)?;
                stats.resumed_from = Some(stored.version);
                if stored.status == Status::Completed && !restart {
                    info!(
                        job = %key,
                        store = %session.location,
                        version = stored.version,
                        chunks = stored.counters.chunks,
                        "job already completed: nothing to do (restart it explicitly to run it again)"
                    );
                    return Ok(Outcome::AlreadyCompleted);
                }
                session.check_lease(&stored)?;
                session.adopt(&stored, restart);
                if restart {
                    info!(job = %key, store = %session.location, version = stored.version, status = %stored.status, "restarting from the beginning as asked");
                    Default::default()
                } else {
                    let (cursor, state) = session.decode::<J>(&stored)?;
                    info!(
                        job = %key,
                        store = %session.location,
                        version = stored.version,
                        status = %stored.status,
                        ?cursor,
                        chunks = stored.counters.chunks,
                        "resuming from checkpoint"
                    );
                    (cursor, state)
                }
            }
        };
        session.begin::<J>(&cursor, &state).await?;
        job.resume(&cursor, &state)
            .await
            .map_err(|source| Error::Job {
                during: "resume".into(),
                source,
            })?;

        let mut ctx = ChunkContext::new(interrupts.cancel_token(), interrupts.stop_token());
        let total = job.total_items();
        let run_started = Instant::now();
        let mut since_chunks = 0u64;
        let mut since = Instant::now();
        let timed = lease.is_some() || policy.interval().is_some();
        let end = loop {
            if interrupts.stop_requested() {
                break End::Interrupted;
            }
            let chunk = match job.next_chunk(&cursor).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break End::Completed,
                Err(source) => {
                    break End::Failed(Error::Job {
                        during: format!("next_chunk at cursor {cursor:?}"),
                        source,
                    })
                }
            };
            if interrupts.stop_requested() {
                break End::Interrupted;
            }
            ctx.set_seq(stats.chunks);
            let rollback = state.clone();
            let result = run_chunk(
                job.process(&chunk, &mut state, &ctx),
                &interrupts,
                &mut session,
            )
            .await;
            match result {
                ChunkResult::Done(Ok(())) => {}
                ChunkResult::Done(Err(source)) if !abandoned(&interrupts, &*source) => {
                    state = rollback;
                    break End::Failed(Error::Job {
                        during: format!("process (chunk from cursor {:?})", chunk.start()),
                        source,
                    });
                }
                ChunkResult::Done(Err(_)) | ChunkResult::Dropped => {
                    state = rollback;
                    stats.abandoned_chunk = true;
                    warn!(job = %key, cursor = ?chunk.start(), "chunk abandoned; the checkpoint stays at the last finished chunk");
                    break End::Interrupted;
                }
                ChunkResult::Fenced(e) => return Err(e),
            }
            stats.chunks += 1;
            stats.items += chunk.items();
            session.record_chunk(chunk.items());
            cursor = chunk.into_next();
            since_chunks += 1;

            // One clock read per chunk, and none when nothing is timed.
            let now = timed.then(Instant::now);
            let lease_due = matches!((session.renew_at(), now), (Some(at), Some(now)) if now >= at);
            let elapsed = now.map_or(Duration::ZERO, |now| now - since);
            if lease_due || policy.is_due(since_chunks, elapsed) {
                let checkpoint = async {
                    job.flush().await.map_err(|source| Error::Job {
                        during: "flush".into(),
                        source,
                    })?;
                    session
                        .save::<J>(&cursor, &state, Status::Running, false)
                        .await
                };
                // A store that hangs must not eat the grace period.
                let saved = tokio::select! {
                    saved = checkpoint => Some(saved),
                    () = interrupts.abandon_point() => None,
                };
                match saved {
                    Some(Ok(())) => {
                        stats.checkpoints += 1;
                        log_checkpoint(&session, stats, run_started, total);
                    }
                    Some(Err(Error::Store(e))) if e.is_transient() => {
                        warn!(job = %key, error = %e, "periodic checkpoint failed; will retry at the next one");
                    }
                    Some(Err(e)) => return Err(e),
                    None => {
                        warn!(job = %key, "periodic checkpoint abandoned at the drain deadline")
                    }
                }
                since_chunks = 0;
                since = Instant::now();
            }
        };

        let (status, outcome) = match end {
            End::Completed => (Status::Completed, Ok(Outcome::Completed)),
            End::Interrupted => {
                let source = interrupts
                    .source()
                    .ok_or_else(|| Error::Config("interrupted without a source".into()))?;
                session.totals.interruptions += 1;
                (
                    Status::Interrupted {
                        source: source.to_string(),
                    },
                    Ok(Outcome::Interrupted(source)),
                )
            }
            End::Failed(e) => (
                Status::Failed {
                    message: e.to_string(),
                },
                Err(e),
            ),
        };
        let saved = finish(
            &mut job,
            &mut session,
            &cursor,
            &state,
            status,
            interrupts.final_deadline(),
            budget.grace,
        )
        .await;
        match (saved, outcome) {
            (Ok(()), outcome) => {
                stats.checkpoints += 1;
                log_checkpoint(&session, stats, run_started, total);
                outcome
            }
            (Err(save_error), Err(job_error)) => {
                error!(job = %key, error = %save_error, "the failed run's checkpoint was not saved either");
                Err(job_error)
            }
            (Err(save_error), Ok(_)) => Err(save_error),
        }
    }
}

/// Loads the job's checkpoint, retrying transient store errors for up to
/// 30 s (a store that restarts, throttles or is briefly unreachable) unless
/// a stop is requested first.
async fn load(
    store: &dyn CheckpointStore,
    key: &JobKey,
    interrupts: &Interrupts,
) -> Result<Option<Checkpoint>, Error> {
    let give_up = Instant::now() + Duration::from_secs(30);
    let mut delay = Duration::from_millis(100);
    loop {
        match store.load(key).await {
            Err(e)
                if e.is_transient()
                    && !interrupts.stop_requested()
                    && Instant::now() + delay < give_up =>
            {
                warn!(job = %key, error = %e, retry_in = ?delay, "cannot read the checkpoint yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            other => return Ok(other?),
        }
    }
}

enum End {
    Completed,
    Interrupted,
    Failed(Error),
}

enum ChunkResult {
    Done(Result<(), BoxError>),
    /// Cancelled and not returned in time: dropped.
    Dropped,
    /// A lease renewal found that another runner took the job over.
    Fenced(Error),
}

/// Whether a chunk's error means it gave up on a stop request, not that it failed.
fn abandoned(interrupts: &Interrupts, error: &(dyn std::error::Error + 'static)) -> bool {
    let cancelled = error.is::<Cancelled>()
        || error
            .downcast_ref::<std::io::Error>()
            .and_then(|e| e.get_ref())
            .is_some_and(|inner| inner.is::<Cancelled>());
    interrupts.chunk_cancelled() || (interrupts.stop_requested() && cancelled)
}

/// Runs one chunk: renews the lease while it runs, cancels it at the abandon
/// point and drops it if it does not return within the cooperative window.
async fn run_chunk(
    work: impl Future<Output = Result<(), BoxError>>,
    interrupts: &Interrupts,
    session: &mut Session<'_>,
) -> ChunkResult {
    tokio::pin!(work);
    loop {
        let renew_at = session.renew_at();
        tokio::select! {
            biased;
            result = &mut work => return ChunkResult::Done(result),
            () = interrupts.abandon_point() => break,
            () = sleep_until_some(renew_at) => {
                if let Err(e) = session.renew().await {
                    interrupts.cancel_chunk();
                    error!(job = %session.key, error = %e, "lost the job's lease: stopping at once, without writing");
                    return ChunkResult::Fenced(e);
                }
            }
        }
    }
    let window = interrupts.cancel_chunk();
    match timeout(window, work).await {
        Ok(result) => ChunkResult::Done(result),
        Err(_) => {
            warn!(
                ?window,
                "cancelled chunk did not return in time: dropped it"
            );
            ChunkResult::Dropped
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Flushes the job and saves the final checkpoint, releasing the lease.
///
/// After a stop request both must be done by `deadline` (the end of the grace
/// period). Otherwise the flush takes as long as it takes, and transient store
/// errors are retried for up to `retry_for`.
async fn finish<J: Job>(
    job: &mut J,
    session: &mut Session<'_>,
    cursor: &J::Cursor,
    state: &J::State,
    status: Status,
    deadline: Option<Instant>,
    retry_for: Duration,
) -> Result<(), Error> {
    let flushed = match deadline {
        Some(deadline) => timeout_at(deadline, job.flush()).await,
        None => Ok(job.flush().await),
    };
    match flushed {
        Ok(Ok(())) => {}
        Ok(Err(source)) => {
            return Err(Error::Job {
                during: "flush".into(),
                source,
            })
        }
        Err(_) => return Err(session.not_saved(timed_out(session, "flush"))),
    }
    let deadline = deadline.unwrap_or_else(|| Instant::now() + retry_for);
    let mut delay = Duration::from_millis(50);
    loop {
        match timeout_at(
            deadline,
            session.save::<J>(cursor, state, status.clone(), true),
        )
        .await
        {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(Error::Store(e))) if e.is_transient() => {
                if Instant::now() + delay >= deadline {
                    return Err(session.not_saved(e));
                }
                warn!(job = %session.key, error = %e, retry_in = ?delay, "final checkpoint failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(session.not_saved(timed_out(session, "save"))),
        }
    }
}

fn timed_out(session: &Session<'_>, operation: &'static str) -> StoreError {
    StoreError::Io {
        store: session.location.clone(),
        key: session.key.to_string(),
        operation,
        source: "the grace period ran out".into(),
    }
}

fn log_checkpoint(
    session: &Session<'_>,
    stats: &RunStats,
    run_started: Instant,
    total: Option<u64>,
) {
    let secs = run_started.elapsed().as_secs_f64();
    let rate = if secs > 0.0 {
        stats.items as f64 / secs
    } else {
        0.0
    };
    let done = session.totals.items;
    let progress = total.map(|t| {
        let pct = if t == 0 {
            100.0
        } else {
            100.0 * done as f64 / t as f64
        };
        match (rate > 0.0).then(|| t.saturating_sub(done) as f64 / rate) {
            Some(eta) => format!("{pct:.1}%, eta {eta:.0}s"),
            None => format!("{pct:.1}%"),
        }
    });
    info!(
        job = %session.key,
        version = session.stored.unwrap_or_default(),
        chunks = session.totals.chunks,
        items = done,
        rate = format!("{rate:.0}/s"),
        progress = progress.as_deref().unwrap_or("unknown size"),
        "checkpoint saved"
    );
}
