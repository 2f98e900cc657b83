//! One run: load, resume, drive the chunks, checkpoint, and finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout, timeout_at, Instant};
use tracing::{error, info, warn};

use super::{identity, progress, Runner, StoreSpec};
use crate::checkpoint::{Checkpoint, Status};
use crate::error::{BoxError, Error};
use crate::exit::{Outcome, RunStats};
use crate::job::{Cancelled, ChunkContext, Job};
use crate::key::JobKey;
use crate::session::Session;
use crate::shutdown::{Budget, Interrupts};
use crate::store::{open_store, CheckpointStore, StoreError};

impl<J: Job> Runner<J> {
    pub(super) async fn drive(self, stats: &mut RunStats) -> Result<Outcome, Error> {
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
            progress: progress_every,
            ..
        } = self;
        let key = JobKey::new(key).map_err(|e| Error::Config(e.to_string()))?;
        let budget = Budget::new(grace, reserve)?;
        if lease.is_some_and(|ttl| ttl < Duration::from_millis(300)) {
            return Err(Error::Config("the lease must last at least 300 ms".into()));
        }
        store.check()?;
        let interrupts = Interrupts::listen(&signals, max_runtime, sources, budget)?;
        // Let stop requests that are already due (a finished `stop_on` future) register.
        tokio::task::yield_now().await;

        let Step::Done(store) = open(store, &interrupts).await? else {
            return stopped_before_start(&interrupts, &key);
        };

        let Step::Done(loaded) = load(&*store, &key, &interrupts).await? else {
            return stopped_before_start(&interrupts, &key);
        };
        let mut session = Session::new::<J>(&*store, &key, codec, lease);
        if ecs_identity {
            if let Some(task) = identity::task().await {
                session.set_task(task);
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
        // Taking the lease is a write: let it land unless the drain deadline passes.
        let began = tokio::select! {
            began = session.begin::<J>(&cursor, &state, &interrupts) => Some(began),
            () = interrupts.abandon_point() => None,
        };
        match began {
            Some(Ok(())) => {}
            Some(Err(Error::Store(e))) if e.is_transient() && interrupts.stop_requested() => {
                warn!(job = %key, error = %e, "could not take the job's lease before the stop request");
                let outcome = stopped_before_start(&interrupts, &key)?;
                release_lease(&mut session, &outcome, &interrupts, budget.grace).await;
                return Ok(outcome);
            }
            Some(Err(e)) => {
                // The last attempt may have landed (its answer lost): let go of the lease.
                release(&mut session, failed(&e), &interrupts, budget.grace).await;
                return Err(e);
            }
            None => {
                let outcome = stopped_before_start(&interrupts, &key)?;
                release_lease(&mut session, &outcome, &interrupts, budget.grace).await;
                return Ok(outcome);
            }
        }
        if let Err(source) = job.resume(&cursor, &state).await {
            let e = Error::Job {
                during: "resume".into(),
                source,
            };
            release(&mut session, failed(&e), &interrupts, budget.grace).await;
            return Err(e);
        }

        let mut ctx = ChunkContext::new(interrupts.cancel_token(), interrupts.stop_token());
        let total = job.total_items();
        let run_started = Instant::now();
        let done = Arc::new(progress::Counter::default());
        done.set(session.totals.items);
        let _progress =
            progress::Reporter::start(key.to_string(), done.clone(), total, progress_every);
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
            done.set(session.totals.items);
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
                    // Fenced: another runner has the job; write nothing more.
                    Some(Err(e @ Error::Store(StoreError::Conflict { .. }))) => return Err(e),
                    Some(Err(e)) => {
                        release(&mut session, failed(&e), &interrupts, budget.grace).await;
                        return Err(e);
                    }
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
            &interrupts,
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

/// Loads the job's checkpoint, retrying transient store errors for up to
/// 30 s (a store that restarts, throttles or is briefly unreachable). A stop
/// request gives up at once: nothing was written yet.
async fn load(
    store: &dyn CheckpointStore,
    key: &JobKey,
    interrupts: &Interrupts,
) -> Result<Step<Option<Checkpoint>>, Error> {
    let give_up = Instant::now() + Duration::from_secs(30);
    let mut delay = Duration::from_millis(100);
    let stop = interrupts.stop_token();
    loop {
        let loaded = tokio::select! {
            loaded = store.load(key) => loaded,
            () = stop.cancelled() => return Ok(Step::Stopped),
        };
        match loaded {
            Err(e) if e.is_transient() && Instant::now() + delay < give_up => {
                warn!(job = %key, error = %e, retry_in = ?delay, "cannot read the checkpoint yet; retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => return Ok(Step::Stopped),
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            other => return Ok(Step::Done(other?)),
        }
    }
}

/// The outcome of a run stopped before its first chunk: nothing to checkpoint.
fn stopped_before_start(interrupts: &Interrupts, key: &JobKey) -> Result<Outcome, Error> {
    let source = interrupts
        .source()
        .ok_or_else(|| Error::Config("interrupted without a source".into()))?;
    warn!(job = %key, %source, "stopped before the first chunk: nothing to checkpoint");
    Ok(Outcome::Interrupted(source))
}

fn failed(error: &Error) -> Status {
    Status::Failed {
        message: error.to_string(),
    }
}

/// Releases a lease that a start cut short by a stop request may have taken.
async fn release_lease(
    session: &mut Session<'_>,
    outcome: &Outcome,
    interrupts: &Interrupts,
    retry_for: Duration,
) {
    if let Outcome::Interrupted(source) = outcome {
        let status = Status::Interrupted {
            source: source.to_string(),
        };
        release(session, status, interrupts, retry_for).await;
    }
}

/// Records `status` as the run's end on the last saved checkpoint and
/// releases the lease, for a run that cannot checkpoint where it stands.
/// Logs if even that fails: the lease then expires by itself.
async fn release(
    session: &mut Session<'_>,
    status: Status,
    interrupts: &Interrupts,
    retry_for: Duration,
) {
    let deadline = interrupts
        .final_deadline()
        .unwrap_or_else(|| Instant::now() + retry_for);
    match timeout_at(deadline, session.release(status)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            error!(job = %session.key, error = %e, "could not record the run's end in the checkpoint")
        }
        Err(_) => {
            error!(job = %session.key, "could not record the run's end in the checkpoint before the grace period ran out")
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
///
/// A renewal runs concurrently with the chunk (which may hold what the
/// store's saves need, e.g. its transaction) and gives way to the abandon
/// point like the chunk.
async fn run_chunk(
    work: impl Future<Output = Result<(), BoxError>>,
    interrupts: &Interrupts,
    session: &mut Session<'_>,
) -> ChunkResult {
    tokio::pin!(work);
    let mut finished = None;
    loop {
        let renew_at = session.renew_at();
        tokio::select! {
            biased;
            result = &mut work => return ChunkResult::Done(result),
            () = interrupts.abandon_point() => break,
            () = sleep_until_some(renew_at) => {}
        }
        let renewed = {
            let renewal = session.renew();
            tokio::pin!(renewal);
            loop {
                tokio::select! {
                    biased;
                    renewed = &mut renewal => break Some(renewed),
                    result = &mut work, if finished.is_none() => finished = Some(result),
                    () = interrupts.abandon_point() => break None,
                }
            }
        };
        match renewed {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                interrupts.cancel_chunk();
                error!(job = %session.key, error = %e, "lost the job's lease: stopping at once, without writing");
                return ChunkResult::Fenced(e);
            }
            None => warn!(job = %session.key, "lease renewal abandoned at the drain deadline"),
        }
        if let Some(result) = finished {
            return ChunkResult::Done(result);
        }
        if renewed.is_none() {
            break;
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
    interrupts: &Interrupts,
    retry_for: Duration,
) -> Result<(), Error> {
    let deadline = interrupts.final_deadline();
    let flushed = match deadline {
        Some(deadline) => timeout_at(deadline, job.flush()).await,
        None => Ok(job.flush().await),
    };
    match flushed {
        Ok(Ok(())) => {}
        Ok(Err(source)) => {
            // The output since the last checkpoint is not durable: record
            // the failure on the last checkpoint, which it does not cover.
            let e = Error::Job {
                during: "flush".into(),
                source,
            };
            let recorded = match &status {
                Status::Failed { message } => Status::Failed {
                    message: format!("{message}; then the final flush failed too: {e}"),
                },
                _ => failed(&e),
            };
            release(session, recorded, interrupts, retry_for).await;
            return Err(e);
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
            Ok(Err(e @ Error::Job { .. })) => {
                release(session, failed(&e), interrupts, retry_for).await;
                return Err(e);
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
    let progress = progress::describe(done, total, rate);
    info!(
        job = %session.key,
        version = session.stored.unwrap_or_default(),
        chunks = session.totals.chunks,
        items = done,
        rate = format!("{rate:.0}/s"),
        progress = progress.as_str(),
        "checkpoint saved"
    );
}
