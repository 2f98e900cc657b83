//! The runner: its builder here; one run ([`run::Run`]) in three phases,
//! each in a file of its own: `start`, `chunks` (the loop) and `finish`.
//! Beside them, what a run keeps track of: the stored checkpoint's side
//! (`session`: versions, lease, history), stop requests (`interrupts`) and
//! the grace period's `budget`, the `watchdog` that keeps that budget when
//! the job's code holds its thread, `progress` lines, and the platform's
//! `identity` of the task.

mod budget;
pub(crate) mod chunk_times;
mod chunks;
mod clock;
mod finish;
mod identity;
mod interrupts;
mod metrics;
mod progress;
mod run;
mod session;
mod start;
mod watchdog;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use session::held_by_live_runner;
use tokio::time::Instant;
use tracing::{error, info};

use crate::codec::Codec;
use crate::error::Error;
use crate::exit::{ExitCodes, Outcome, Report, RunStats};
use crate::job::Job;
use crate::policy::{CheckpointPolicy, RetryPolicy, SkipPolicy};
use crate::shutdown::{FutureSource, Signal, StopSource};
use crate::store::{check_store_url, CheckpointStore};

/// Where checkpoints go when no store is set: `file://.spotbatch`.
pub const DEFAULT_STORE_DIR: &str = ".spotbatch";

/// Which store a run uses: one already open, or one to open inside `run`.
enum StoreSpec {
    Open(Arc<dyn CheckpointStore>),
    Url(String),
}

impl std::fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreSpec::Open(store) => f.write_str(&store.location()),
            StoreSpec::Url(url) => f.write_str(&crate::store::redact_url(url)),
        }
    }
}

impl StoreSpec {
    /// Checks what can be checked before the run: the URL's form.
    fn check(&self) -> Result<(), Error> {
        match self {
            StoreSpec::Open(_) => Ok(()),
            StoreSpec::Url(url) => check_store_url(url),
        }
    }
}

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
///     .store_url("file:///var/lib/ckpt")
///     .checkpoint(Every::chunks(100).or_seconds(5))
///     .grace_secs(115) // ECS stopTimeout 120, minus 5 s
///     .run()
///     .await;
/// Ok(report.exit_code())
/// # }
/// ```
///
/// # Shutdown
///
/// On the first stop request (SIGTERM, SIGINT, or another [`StopSource`])
/// the runner starts no new chunk, lets the chunk in hand finish until the
/// drain deadline, flushes, saves the final checkpoint and returns
/// [`Outcome::Interrupted`]; a second signal skips the drain (a SIGTERM after
/// another source's request is the same stop). What happens in
/// every other case (a chunk past the deadline, a checkpoint that cannot be
/// saved, SIGKILL), and the exit codes: [shutdown and exit codes][guide].
///
/// Signals are heard from [`shutdown::listen`](crate::shutdown::listen) on,
/// which `main` calls first; else from the start of [`run`](Self::run). A
/// stop requested before `run` makes it return at once, having run no
/// chunk. The budget holds whatever the job's code does: a watchdog thread
/// records the stop on the last checkpoint and exits the process when the
/// job's code holds its thread past the drain deadline.
///
/// [guide]: https://github.com/spotbatch/spotbatch/blob/main/docs/shutdown.md
#[must_use = "a runner does nothing until `.run().await`"]
pub struct Runner<J: Job> {
    key: String,
    job: J,
    store: StoreSpec,
    policy: CheckpointPolicy,
    retry: RetryPolicy,
    skip: SkipPolicy,
    grace: Duration,
    reserve: Option<Duration>,
    codes: ExitCodes,
    /// Whether `codes.interrupted` was given, rather than the listener's.
    interrupted_set: bool,
    signals: Vec<Signal>,
    codec: Codec,
    restart: bool,
    max_runtime: Option<Duration>,
    sources: Vec<Box<dyn StopSource>>,
    lease: Option<Duration>,
    ecs_identity: bool,
    progress: Option<Duration>,
}

impl<J: Job> std::fmt::Debug for Runner<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("key", &self.key)
            .field("store", &self.store)
            .field("policy", &self.policy)
            .field("retry", &self.retry)
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
            store: StoreSpec::Url(format!("file://{DEFAULT_STORE_DIR}")),
            policy: CheckpointPolicy::default(),
            retry: RetryPolicy::default(),
            skip: SkipPolicy::none(),
            grace: Duration::from_secs(30),
            reserve: None,
            codes: ExitCodes::default(),
            interrupted_set: false,
            signals: vec![Signal::Term, Signal::Int],
            codec: Codec::default(),
            restart: false,
            max_runtime: None,
            sources: Vec::new(),
            lease: Some(Duration::from_secs(60)),
            ecs_identity: true,
            progress: Some(Duration::from_secs(30)),
        }
    }

    /// Stores checkpoints in `store`.
    pub fn store(self, store: impl CheckpointStore + 'static) -> Self {
        self.shared_store(Arc::new(store))
    }

    /// Stores checkpoints in a store shared with other code.
    pub fn shared_store(mut self, store: Arc<dyn CheckpointStore>) -> Self {
        self.store = StoreSpec::Open(store);
        self
    }

    /// Stores checkpoints in the store `url` names (`file://`, `memory://`,
    /// and `s3://` or `postgres://` with their features); see
    /// [`open_store`](crate::open_store) for the forms.
    ///
    /// The store is opened inside [`run`](Self::run), after the signal
    /// handlers are installed: connecting to a remote store and applying its
    /// migrations are cut short by a stop request like the rest of the run.
    /// A malformed URL, or one whose feature is off, makes `run` return
    /// [`Error::Config`] (the `bad_config` exit code) before anything is
    /// opened; a store that cannot be opened, [`Error::Open`].
    pub fn store_url(mut self, url: impl Into<String>) -> Self {
        self.store = StoreSpec::Url(url.into());
        self
    }

    /// When to write periodic checkpoints (default: every 100 chunks or 5 s).
    pub fn checkpoint(mut self, policy: CheckpointPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How a chunk whose attempt failed with a [`transient`](crate::transient)
    /// error is retried (default: [`RetryPolicy::default`], 3 attempts in all).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Which chunks that still fail after their retries are skipped
    /// (default [`SkipPolicy::none`]: none, the first failure fails the
    /// run). A skipped chunk is recorded in the checkpoint
    /// ([`Checkpoint::skipped`](crate::Checkpoint::skipped)), counted in
    /// [`RunStats::skipped`](crate::RunStats::skipped) and logged; the run
    /// goes on past it. `spotbatch redrive` asks the next run to process
    /// the skipped chunks again first: [skips and redrive][guide].
    ///
    /// [guide]: https://github.com/spotbatch/spotbatch/blob/main/docs/jobs.md#skips-and-redrive
    pub fn skip(mut self, policy: SkipPolicy) -> Self {
        self.skip = policy;
        self
    }

    /// Time from a stop request to the platform's SIGKILL. Set it to the
    /// container's `stopTimeout` (ECS: default 30 s, at most 120 s on
    /// Fargate) or `terminationGracePeriodSeconds` (Kubernetes), minus about
    /// 5 s for process start-up and exit (`.grace_secs(stop_timeout - 5)`).
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
        self.interrupted_set = true;
        self
    }

    /// The exit code of an interrupted run: by default the one given to
    /// [`Shutdown::interrupted_exit_code`](crate::shutdown::Shutdown::interrupted_exit_code),
    /// else 0; 75 for AWS Batch and Kubernetes retry rules, see [`ExitCodes`].
    pub fn interrupted_exit_code(mut self, code: u8) -> Self {
        self.codes.interrupted = code;
        self.interrupted_set = true;
        self
    }

    /// Signals that stop the run (default SIGTERM and SIGINT), installed when
    /// [`run`](Self::run) starts on the process's signal thread. Signals the
    /// process listens to already (those of
    /// [`shutdown::listen`](crate::shutdown::listen), SIGTERM and SIGINT, and
    /// of earlier runs) stop the run too: a handler stays installed for the
    /// life of the process. `&[]` adds none.
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
    /// job over once it has expired, or at once when the holder's process has
    /// exited ([`Writer::has_exited`](crate::Writer::has_exited) says when this
    /// can be told) or is a previous incarnation of this process (PID 1 of a
    /// restarted container). A renewal that finds another version
    /// (someone took the job over) stops the run at once, without writing.
    ///
    /// Renewals during a chunk run concurrently with it (through
    /// [`CheckpointStore::renew`], which never waits for the chunk's work) and
    /// give up at the drain deadline like the chunk; a chunk that blocks its
    /// thread without `.await` for longer than `ttl / 3` delays them.
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

    /// Whether to read the ECS task's identity at start (default on; needs
    /// the feature `aws`). When `ECS_CONTAINER_METADATA_URI_V4` is set, the
    /// runner reads `/task` once (at most 2 s; an endpoint that does not
    /// answer as documented is a warning, not a failure) and records the task
    /// ARN as the writer of its checkpoints, in its run history and in its
    /// logs; when it is not set, nothing is asked.
    ///
    /// Without the feature `aws` nothing is ever asked and this setting only
    /// silences the one line logged on ECS saying so.
    pub fn ecs_identity(mut self, on: bool) -> Self {
        self.ecs_identity = on;
        self
    }

    /// How often to log a progress line (items, rate, and percentage and ETA
    /// when [`Job::total_items`] is known) between checkpoints; default every
    /// 30 s, `None` for none. Checkpoint lines carry the same figures.
    pub fn progress_every(mut self, every: Option<Duration>) -> Self {
        self.progress = every;
        self
    }

    /// Runs the job until it completes, is stopped, or fails.
    ///
    /// Loads the job's checkpoint (or starts fresh), calls [`Job::resume`],
    /// then processes chunks, checkpointing per the policy and always at the
    /// end. Never panics on bad input: every failure is in the report.
    ///
    /// Transient store errors are retried with exponential backoff and
    /// jitter: loading the checkpoint and taking the lease from 100 ms up to
    /// 2 s for up to 30 s each (a stop request ends the wait at once), the
    /// final checkpoint from 50 ms up to 2 s until the grace period ends (for
    /// the length of a grace period when no stop was requested). A failed
    /// periodic checkpoint is not retried: the next one covers it.
    pub async fn run(self) -> Report {
        let started = Instant::now();
        let mut codes = self.codes;
        if !self.interrupted_set {
            codes.interrupted = crate::shutdown::interrupted_code();
        }
        let key = self.key.clone();
        let mut stats = RunStats::default();
        let mut position = None;
        let mut watch = None;
        let span = tracing::info_span!("run", job = %crate::key::short(&key));
        let outcome = match tracing::Instrument::instrument(
            self.drive(&mut stats, codes, &mut position, &mut watch),
            span,
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(e) => {
                error!(job = %crate::key::short(&key), error = %e, "run failed");
                Outcome::Failed(e)
            }
        };
        stats.elapsed = started.elapsed();
        let report = Report::new(outcome, stats, codes).with_position(position);
        let outcome = match &report.outcome {
            Outcome::Completed => "completed".to_owned(),
            Outcome::AlreadyCompleted => "already completed".to_owned(),
            Outcome::Interrupted(source) => format!("interrupted by {source}"),
            Outcome::Failed(_) => "failed".to_owned(),
        };
        info!(
            job = %crate::key::short(&key),
            %outcome,
            step = report.stats.step.as_deref().map(tracing::field::display),
            chunks = report.stats.chunks,
            items = report.stats.items,
            checkpoints = report.stats.checkpoints,
            retries = report.stats.retries,
            skipped = report.stats.skipped,
            redriven = report.stats.redriven,
            slowest_chunk = ?report.stats.slowest_chunk,
            chunks_over_drain_budget = report.stats.chunks_over_drain_budget,
            elapsed = ?report.stats.elapsed,
            exit_code = report.code(),
            "run ended"
        );
        if let Some(watch) = watch {
            watch.ended(report.code());
        }
        report
    }
}
