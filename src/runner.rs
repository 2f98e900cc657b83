//! The runner: drives a job's chunks, checkpoints, and owns shutdown.

use std::any::type_name;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout, timeout_at, Instant};
use tracing::{error, info, warn};

use crate::checkpoint::{now_ms, Checkpoint, CheckpointError, Counters, Status, Writer};
use crate::codec::Codec;
use crate::error::{BoxError, Error};
use crate::exit::{ExitCodes, Outcome, Report, RunStats};
use crate::job::{ChunkContext, Job};
use crate::key::JobKey;
use crate::policy::CheckpointPolicy;
use crate::shutdown::{Budget, Interrupts, Signal, StopFuture};
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
    stop_on: Vec<(String, StopFuture)>,
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
    /// and [`ExitCodes::default`].
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
            stop_on: Vec::new(),
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
        mut self,
        name: impl Into<String>,
        future: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.stop_on.push((name.into(), Box::pin(future)));
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
            stop_on,
            ..
        } = self;
        let key = JobKey::new(key).map_err(|e| Error::Config(e.to_string()))?;
        let budget = Budget::new(grace, reserve)?;
        let store = store.unwrap_or_else(|| Arc::new(FileStore::new(DEFAULT_STORE_DIR)));
        let interrupts = Interrupts::listen(&signals, max_runtime, stop_on, budget)?;

        let loaded = store.load(&key).await?;
        let mut session = Session::new(
            &*store,
            &key,
            codec,
            type_name::<(J::Cursor, J::State)>(),
            J::SCHEMA_VERSION,
        );
        let (mut cursor, mut state) = match loaded {
            None => {
                info!(job = %key, store = %session.location, "no checkpoint: starting from the beginning");
                Default::default()
            }
            Some(stored) => {
                session.check_belongs(&stored)?;
                stats.resumed_from = Some(stored.version);
                session.stored = Some(stored.version);
                if restart {
                    info!(job = %key, store = %session.location, version = stored.version, status = %stored.status, "restarting from the beginning as asked");
                    session.created_ms = now_ms();
                    session.totals = Counters::default();
                    Default::default()
                } else if stored.status == Status::Completed {
                    info!(
                        job = %key,
                        store = %session.location,
                        version = stored.version,
                        chunks = stored.counters.chunks,
                        "job already completed: nothing to do (restart it explicitly to run it again)"
                    );
                    return Ok(Outcome::AlreadyCompleted);
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
                    session.created_ms = stored.created_ms;
                    session.totals = stored.counters;
                    (cursor, state)
                }
            }
        };
        session.totals.runs += 1;
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
            ctx.set_seq(stats.chunks);
            let rollback = state.clone();
            let result = run_chunk(job.process(&chunk, &mut state, &ctx), &interrupts).await;
            match result {
                ChunkResult::Done(Ok(())) => {}
                ChunkResult::Done(Err(source)) if !interrupts.chunk_cancelled() => {
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
            }
            stats.chunks += 1;
            stats.items += chunk.items();
            session.totals.chunks += 1;
            session.totals.items += chunk.items();
            cursor = chunk.into_next();
            since_chunks += 1;

            if policy.is_due(since_chunks, since.elapsed()) {
                job.flush().await.map_err(|source| Error::Job {
                    during: "flush".into(),
                    source,
                })?;
                match session.save::<J>(&cursor, &state, Status::Running).await {
                    Ok(()) => {
                        stats.checkpoints += 1;
                        log_checkpoint(&session, stats, run_started, total);
                    }
                    Err(Error::Store(e)) if e.is_transient() => {
                        warn!(job = %key, error = %e, "periodic checkpoint failed; will retry at the next one");
                    }
                    Err(e) => return Err(e),
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
        let deadline = interrupts
            .final_deadline()
            .unwrap_or_else(|| Instant::now() + budget.grace);
        let saved = finish(&mut job, &mut session, &cursor, &state, status, deadline).await;
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

enum End {
    Completed,
    Interrupted,
    Failed(Error),
}

enum ChunkResult {
    Done(Result<(), BoxError>),
    /// Cancelled and not returned in time: dropped.
    Dropped,
}

/// Runs one chunk, cancelling it at the abandon point and dropping it if it
/// does not return within the cooperative window.
async fn run_chunk(
    work: impl Future<Output = Result<(), BoxError>>,
    interrupts: &Interrupts,
) -> ChunkResult {
    tokio::pin!(work);
    tokio::select! {
        biased;
        result = &mut work => return ChunkResult::Done(result),
        () = interrupts.abandon_point() => {}
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

/// Flushes the job and saves the final checkpoint, retrying transient store
/// errors until `deadline`.
async fn finish<J: Job>(
    job: &mut J,
    session: &mut Session<'_>,
    cursor: &J::Cursor,
    state: &J::State,
    status: Status,
    deadline: Instant,
) -> Result<(), Error> {
    match timeout_at(deadline, job.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(source)) => {
            return Err(Error::Job {
                during: "flush".into(),
                source,
            })
        }
        Err(_) => return Err(session.not_saved(timed_out(session, "flush"))),
    }
    let mut delay = Duration::from_millis(50);
    loop {
        match timeout_at(deadline, session.save::<J>(cursor, state, status.clone())).await {
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

/// The runner's view of the stored checkpoint.
struct Session<'a> {
    store: &'a dyn CheckpointStore,
    location: String,
    key: &'a JobKey,
    codec: Codec,
    cursor_type: &'static str,
    schema: u32,
    writer: Writer,
    stored: Option<u64>,
    created_ms: u64,
    totals: Counters,
}

impl<'a> Session<'a> {
    fn new(
        store: &'a dyn CheckpointStore,
        key: &'a JobKey,
        codec: Codec,
        cursor_type: &'static str,
        schema: u32,
    ) -> Self {
        Self {
            location: store.location(),
            store,
            key,
            codec,
            cursor_type,
            schema,
            writer: Writer::this_process(),
            stored: None,
            created_ms: now_ms(),
            totals: Counters::default(),
        }
    }

    fn bad(&self, reason: CheckpointError) -> Error {
        Error::BadCheckpoint {
            store: self.location.clone(),
            key: self.key.to_string(),
            reason,
        }
    }

    fn not_saved(&self, source: StoreError) -> Error {
        Error::CheckpointNotSaved {
            store: self.location.clone(),
            key: self.key.to_string(),
            resume_from: self.stored,
            source: Box::new(source),
        }
    }

    /// Refuses another job's checkpoint, or one of a changed cursor type or schema.
    fn check_belongs(&self, stored: &Checkpoint) -> Result<(), Error> {
        if stored.job != *self.key {
            return Err(self.bad(CheckpointError::WrongJob {
                expected: self.key.to_string(),
                found: stored.job.to_string(),
            }));
        }
        if stored.cursor_type != self.cursor_type || stored.schema != self.schema {
            return Err(self.bad(CheckpointError::CursorTypeChanged {
                expected: self.cursor_type.to_owned(),
                expected_schema: self.schema,
                found: stored.cursor_type.clone(),
                found_schema: stored.schema,
            }));
        }
        Ok(())
    }

    fn decode<J: Job>(&self, stored: &Checkpoint) -> Result<(J::Cursor, J::State), Error> {
        let cursor = stored
            .codec
            .decode(&stored.cursor)
            .map_err(|e| self.bad(e.into()))?;
        let state = stored
            .codec
            .decode(&stored.state)
            .map_err(|e| self.bad(e.into()))?;
        Ok((cursor, state))
    }

    async fn save<J: Job>(
        &mut self,
        cursor: &J::Cursor,
        state: &J::State,
        status: Status,
    ) -> Result<(), Error> {
        let encode_error = |source| Error::Job {
            during: "encoding the cursor and state".into(),
            source: Box::new(source),
        };
        let mut checkpoint = Checkpoint::new(self.key.clone(), self.writer.clone());
        checkpoint.version = self.stored.map_or(1, |v| v + 1);
        checkpoint.status = status;
        checkpoint.codec = self.codec;
        checkpoint.cursor_type = self.cursor_type.to_owned();
        checkpoint.schema = self.schema;
        checkpoint.cursor = self.codec.encode(cursor).map_err(encode_error)?;
        checkpoint.state = self.codec.encode(state).map_err(encode_error)?;
        checkpoint.counters = self.totals;
        checkpoint.counters.checkpoints += 1;
        checkpoint.created_ms = self.created_ms;
        self.store.save(&checkpoint, self.stored).await?;
        self.stored = Some(checkpoint.version);
        self.totals.checkpoints += 1;
        Ok(())
    }
}
