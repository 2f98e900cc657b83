//! A run's start: check the configuration, listen for stop requests, open
//! the store, load the checkpoint and check it belongs to the job, take the
//! lease, and resume the job. A stop request before the first chunk ends the
//! run here, having written nothing (or released the lease it took).

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::budget::Budget;
use super::chunk_times::{ChunkTimes, Durations};
use super::clock::ChunkClock;
use super::finish::{failed, release};
use super::identity;
use super::interrupts::Interrupts;
use super::metrics::RunMetrics;
use super::progress::Progress;
use super::run::Run;
use super::session::Session;
use super::watchdog::Watch;
use super::{Runner, StoreSpec};
use crate::checkpoint::{Checkpoint, Status};
use crate::error::Error;
use crate::exit::{ExitCodes, Outcome, RunStats};
use crate::job::Job;
use crate::key::JobKey;
use crate::retry::Backoff;
use crate::store::{open_store, CheckpointStore};

/// How the start retries a store that fails with transient errors, when
/// loading the checkpoint and again when taking the lease: backoff from
/// 100 ms up to 2 s, for up to 30 s.
fn start_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(2)).within(Duration::from_secs(30))
}

/// How a start ended.
pub(super) enum Started<'r, J: Job> {
    /// Ready for the first chunk: the lease is taken and the job resumed.
    Ready(Box<Run<'r, J>>),
    /// Nothing to run: the job was already completed, or a stop request
    /// came first.
    Ended(Outcome),
}

impl<'r, J: Job> Run<'r, J> {
    /// Starts a run of `runner`'s job, recording in `stats` the version it
    /// resumes from.
    ///
    /// # Errors
    ///
    /// A bad configuration, a store that cannot be opened or read, a
    /// checkpoint of another job or type, a lease held by a live runner, a
    /// failed first save, or a failed [`Job::resume`] (after which the run's
    /// end is recorded and the lease released).
    pub(super) async fn start(
        runner: Runner<J>,
        stats: &'r mut RunStats,
        codes: ExitCodes,
        watch: &mut Option<Watch>,
    ) -> Result<Started<'r, J>, Error> {
        let Runner {
            key,
            mut job,
            store,
            policy,
            retry,
            skip,
            grace,
            reserve,
            signals,
            codec,
            restart,
            max_runtime,
            sources,
            lease,
            ecs_identity,
            progress: progress_every,
            ..
        } = runner;
        let key = JobKey::new(key).map_err(|e| Error::Config(e.to_string()))?;
        let budget = Budget::new(grace, reserve)?;
        if lease.is_some_and(|ttl| ttl < Duration::from_millis(300)) {
            return Err(Error::Config("the lease must last at least 300 ms".into()));
        }
        store.check()?;
        let (interrupts, watched) =
            Interrupts::listen(&signals, max_runtime, sources, budget, codes)?;
        *watch = Some(watched);
        // Let stop requests that are already due (a finished `stop_on` future) register.
        tokio::task::yield_now().await;
        // A stop before `run` (a signal heard since `shutdown::listen`).
        if interrupts.stop_requested() {
            return stopped_before_start(&interrupts, &key).map(Started::Ended);
        }

        let Step::Done(store) = open(store, &interrupts).await? else {
            return stopped_before_start(&interrupts, &key).map(Started::Ended);
        };
        let Step::Done(loaded) = load(&*store, &key, &interrupts).await? else {
            return stopped_before_start(&interrupts, &key).map(Started::Ended);
        };
        let mut session = Session::new(&job, store, key, codec, lease, interrupts.stops().clone());
        if ecs_identity {
            let stop = interrupts.stop_token();
            let task = tokio::select! {
                task = identity::task() => task,
                () = stop.cancelled() => {
                    return stopped_before_start(&interrupts, &session.key).map(Started::Ended);
                }
            };
            if let Some(task) = task {
                session.set_task(task);
            }
        }
        let Some((cursor, state)) = where_to_start(&job, &mut session, loaded, restart, stats)?
        else {
            return Ok(Started::Ended(Outcome::AlreadyCompleted));
        };
        let step = job.step(&cursor);
        if let Some(outcome) =
            take_lease::<J>(&mut session, (&cursor, &state, step), &interrupts, budget).await?
        {
            return Ok(Started::Ended(outcome));
        }
        // Nothing the job resumes is of use once a stop is requested: give it up.
        let stop = interrupts.stop_token();
        let resumed = tokio::select! {
            resumed = job.resume(&cursor, &state) => resumed,
            () = stop.cancelled() => {
                return stopped_after_lease(&mut session, &interrupts, budget)
                    .await
                    .map(Started::Ended);
            }
        };
        if let Err(source) = resumed {
            let e = Error::Job {
                during: "resume".into(),
                source,
            };
            release(&mut session, failed(&e), &interrupts, budget.grace).await;
            return Err(e);
        }

        let total = job.total_items();
        let metrics = RunMetrics::new(session.key.as_str(), total);
        let progress = Progress::start(
            session.key.to_string(),
            session.totals.items,
            total,
            progress_every,
        );
        let stops = interrupts.stops().clone();
        let times = Arc::new(ChunkTimes::new(
            session.key.short().to_string(),
            budget.grace - budget.reserve,
            move || {
                let s = stops.lock();
                s.drain_deadline(&stops.budget).map(|at| at.tokio)
            },
        ));
        Ok(Started::Ready(Box::new(Run {
            job,
            times,
            durations: Durations::default(),
            clock: ChunkClock::new(tokio::time::Instant::now()),
            cursor,
            state,
            session,
            interrupts,
            budget,
            policy,
            retry,
            skip,
            progress,
            metrics,
            stats,
        })))
    }
}

/// Whether the checkpoint asks for a redrive of skipped chunks.
fn redrives(stored: &Checkpoint) -> bool {
    stored.redrive && !stored.skipped.is_empty()
}

/// A cursor and the state as of it.
type Position<J> = (<J as Job>::Cursor, <J as Job>::State);

/// A start-up step that a stop request may cut short.
enum Step<T> {
    Done(T),
    Stopped,
}

/// Opens the store a URL names (connecting, migrating); a stop request
/// gives up at once: nothing was written yet.
async fn open(
    store: StoreSpec,
    interrupts: &Interrupts,
) -> Result<Step<Arc<dyn CheckpointStore>>, Error> {
    match store {
        StoreSpec::Open(store) => Ok(Step::Done(store)),
        StoreSpec::Url(url) => {
            let stop = interrupts.stop_token();
            tokio::select! {
                opened = open_store(&url) => Ok(Step::Done(opened?)),
                () = stop.cancelled() => Ok(Step::Stopped),
            }
        }
    }
}

/// Loads the job's checkpoint, retrying transient store errors (a store
/// that restarts, throttles or is briefly unreachable) with
/// [`start_backoff`]. A stop request gives up at once: nothing was written
/// yet.
async fn load(
    store: &dyn CheckpointStore,
    key: &JobKey,
    interrupts: &Interrupts,
) -> Result<Step<Option<Checkpoint>>, Error> {
    let mut backoff = start_backoff();
    let stop = interrupts.stop_token();
    loop {
        let loaded = tokio::select! {
            loaded = store.load(key) => loaded,
            () = stop.cancelled() => return Ok(Step::Stopped),
        };
        let e = match loaded {
            Ok(loaded) => return Ok(Step::Done(loaded)),
            Err(e) => e,
        };
        let Some(delay) = e.is_transient().then(|| backoff.next_delay()).flatten() else {
            return Err(e.into());
        };
        warn!(job = %key.short(), error = %e, retry_in = ?delay, "cannot read the checkpoint yet; retrying");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return Ok(Step::Stopped),
        }
    }
}

/// The cursor and state the run starts from: the defaults without a
/// checkpoint or when restarting, else the checkpoint's, once it is found to
/// belong to the job, to be of its types (or migrated by [`Job::migrate`])
/// and its lease free. `None`: the job is already completed and not
/// restarted.
fn where_to_start<J: Job>(
    job: &J,
    session: &mut Session,
    loaded: Option<Checkpoint>,
    restart: bool,
    stats: &mut RunStats,
) -> Result<Option<Position<J>>, Error> {
    let key = &session.key;
    let Some(stored) = loaded else {
        info!(job = %key.short(), store = %session.location, "no checkpoint: starting from the beginning");
        return Ok(Some(Default::default()));
    };
    session.check_belongs(&stored)?;
    let migrated = match session.check_types(&stored) {
        Ok(()) => None,
        Err(_) if restart => None,
        Err(reason) => match job.migrate(&stored) {
            Ok(Some(position)) => {
                info!(job = %session.key.short(), version = stored.version, schema = stored.schema, cursor_type = %stored.cursor_type, reason = %reason, "migrated the checkpoint");
                Some(position)
            }
            Ok(None) => return Err(session.bad(reason)),
            Err(source) => {
                return Err(Error::Job {
                    during: format!("migrate (checkpoint version {})", stored.version),
                    source,
                })
            }
        },
    };
    stats.resumed_from = Some(stored.version);
    // A redrive of a completed job's skipped chunks runs: the job then
    // completes again.
    if stored.status == Status::Completed && !restart && !redrives(&stored) {
        info!(
            job = %key.short(),
            store = %session.location,
            version = stored.version,
            chunks = stored.counters.chunks,
            "job already completed: nothing to do (restart it explicitly to run it again)"
        );
        return Ok(None);
    }
    session.check_lease(&stored)?;
    session.adopt(&stored, restart);
    let key = &session.key;
    if restart {
        info!(job = %key.short(), store = %session.location, version = stored.version, status = %stored.status, "restarting from the beginning as asked");
        return Ok(Some(Default::default()));
    }
    let (cursor, state) = match migrated {
        Some(position) => position,
        None => session.decode::<J>(&stored)?,
    };
    info!(
        job = %key.short(),
        store = %session.location,
        version = stored.version,
        status = %stored.status,
        step = session.step_name(job.step(&cursor)).map(tracing::field::display),
        ?cursor,
        chunks = stored.counters.chunks,
        "resuming from checkpoint"
    );
    Ok(Some((cursor, state)))
}

/// Marks the run's start and takes the job's lease with a first save.
/// `Some`: a stop request came first (and any lease the save may have taken
/// is released again).
async fn take_lease<J: Job>(
    session: &mut Session,
    position: (&J::Cursor, &J::State, usize),
    interrupts: &Interrupts,
    budget: Budget,
) -> Result<Option<Outcome>, Error> {
    // Taking the lease is a write: let it land unless the drain deadline passes.
    let began = tokio::select! {
        began = session.begin::<J>(position, interrupts, start_backoff()) => Some(began),
        () = interrupts.abandon_point() => None,
    };
    match began {
        Some(Ok(())) => Ok(None),
        Some(Err(Error::Store(e))) if e.is_transient() && interrupts.stop_requested() => {
            warn!(job = %session.key.short(), error = %e, "could not take the job's lease before the stop request");
            stopped_after_lease(session, interrupts, budget)
                .await
                .map(Some)
        }
        Some(Err(e)) => {
            // The last attempt may have landed (its answer lost): let go of the lease.
            release(session, failed(&e), interrupts, budget.grace).await;
            Err(e)
        }
        None => stopped_after_lease(session, interrupts, budget)
            .await
            .map(Some),
    }
}

/// The outcome of a run stopped before its first chunk: nothing to checkpoint.
fn stopped_before_start(interrupts: &Interrupts, key: &JobKey) -> Result<Outcome, Error> {
    let source = interrupts
        .source()
        .ok_or_else(|| Error::Config("interrupted without a source".into()))?;
    warn!(job = %key.short(), %source, "stop requested before the first chunk: nothing to checkpoint");
    Ok(Outcome::Interrupted(source))
}

/// Ends a run stopped while taking its lease, releasing the lease it may
/// have taken. A release that writes records the run as interrupted, and
/// counts the interruption like a final checkpoint does.
async fn stopped_after_lease(
    session: &mut Session,
    interrupts: &Interrupts,
    budget: Budget,
) -> Result<Outcome, Error> {
    let outcome = stopped_before_start(interrupts, &session.key)?;
    if let Outcome::Interrupted(source) = &outcome {
        let status = Status::Interrupted {
            source: source.to_string(),
        };
        session.totals.interruptions += 1;
        release(session, status, interrupts, budget.grace).await;
    }
    Ok(outcome)
}
