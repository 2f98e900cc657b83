//! A run's watchdog: a thread of its own that keeps the run's budget when
//! the run's code cannot, because the job's code holds the thread it runs on
//! (CPU work or a synchronous client with no `.await`, or `spawn_blocking`
//! work that keeps the runtime from shutting down).
//!
//! It sleeps on a condition variable until something is due:
//!
//! - the run's `max_runtime`, should the runtime be too busy to fire it;
//! - the take-over point, twice the cooperative window after the chunk in
//!   hand was cancelled: if the run has not begun its final writes by then,
//!   its code has not given way. The watchdog records the stop on the last
//!   checkpoint the run stored (whose outputs the job flushed; the job's
//!   later outputs cannot be flushed while its code holds its thread),
//!   releasing the lease, and exits the process with the interrupted code
//!   (the `checkpoint_not_saved` code if that write fails or is not done by
//!   the final deadline);
//! - the final deadline, while the run is writing its end: the run's code
//!   (a flush) holds its thread past it; exit with `checkpoint_not_saved`;
//! - half the checkpoint reserve before the final deadline (or a moment
//!   after `run` returned, if later, but not after the final deadline), after
//!   `run` returned, when a signal asked to stop: the process is still alive
//!   (the runtime waits for a blocking thread to end), so it exits with the
//!   run's code before the platform's SIGKILL comes.
//!
//! The watchdog's write runs on the run's runtime when that is a
//! multi-thread runtime that still runs tasks, else on a current-thread
//! runtime of its own, limited by the final deadline either way.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, RuntimeFlavor};
use tracing::{error, info, warn};

use super::interrupts::{Moment, Phase, State, Stops};
use crate::checkpoint::{now_ms, Checkpoint, Status};
use crate::error::Error;
use crate::exit::ExitCodes;
use crate::retry::Backoff;
use crate::shutdown::{InterruptSource, StopRequest};
use crate::store::{CheckpointStore, StoreError};

/// How long after a deadline of its own the run gets before the watchdog
/// acts: its timers fire at the deadline, then the run needs a moment.
const LATE: Duration = Duration::from_millis(250);

/// The run's hold on its watchdog: [`ended`](Self::ended) when `run`
/// returns; dropped without it (`run`'s future dropped), the watchdog ends.
#[derive(Debug)]
pub(super) struct Watch {
    stops: Arc<Stops>,
}

impl Watch {
    /// `run` returned, with `code`. When a signal asked to stop, the
    /// process exits with `code` shortly before the final deadline should it
    /// still be alive then (dropping the runtime waits for blocking threads).
    pub(super) fn ended(self, code: u8) {
        self.stops.lock().ended = Some((code, Instant::now()));
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stops.lock().phase = Phase::Ended;
        self.stops.notify();
    }
}

impl Stops {
    /// Keeps `checkpoint`, just stored in `store` by the run, as the one
    /// the watchdog records the run's end on.
    pub(super) fn stored(&self, store: &Arc<dyn CheckpointStore>, checkpoint: Checkpoint) {
        self.lock().last = Some((store.clone(), checkpoint));
    }

    /// Completes at once, unless the watchdog has taken the run's end over:
    /// then never (the process is about to exit; the run must not write).
    pub(super) async fn may_write(&self) {
        if self.lock().phase == Phase::TakenOver {
            std::future::pending::<()>().await;
        }
    }
}

/// What the watchdog does next.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Sleep until then, or until the state changes.
    Wait(Option<Instant>),
    /// Fire the run's `max_runtime`.
    MaxRuntime,
    /// Record the stop on the last checkpoint, then exit.
    TakeOver,
    /// Exit the process now.
    Exit { code: u8, why: &'static str },
    /// Nothing more to watch.
    Quit,
}

const RETURNED: &str =
    "the run returned, but the process is still alive at the end of the grace period \
     (a blocking thread keeps the runtime from shutting down): exiting with the run's code";
const FINAL_LATE: &str = "the final checkpoint is not saved at the final deadline (the job's \
     code holds the run's thread): exiting; the next run resumes from the last checkpoint";

fn next(
    s: &State,
    stops: &Stops,
    codes: &ExitCodes,
    max_runtime_at: Option<Instant>,
    now: Instant,
) -> Next {
    let due = |at: Instant, then: Next| {
        if now >= at {
            then
        } else {
            Next::Wait(Some(at))
        }
    };
    let (Some(deadline), Some(abandon)) = (s.deadline, s.abandon_at(&stops.budget)) else {
        return match (s.phase, max_runtime_at) {
            (Phase::Running, Some(at)) => due(at, Next::MaxRuntime),
            (Phase::Ended | Phase::TakenOver, _) => Next::Quit,
            _ => Next::Wait(None),
        };
    };
    match (s.phase, s.ended) {
        (Phase::Running, _) => due(abandon.std + 2 * s.cooperate(&stops.budget), Next::TakeOver),
        (Phase::Finishing, _) => due(
            deadline.std + LATE,
            Next::Exit {
                code: codes.checkpoint_not_saved,
                why: FINAL_LATE,
            },
        ),
        (Phase::Ended, Some((code, returned))) if s.signalled => due(
            (returned + LATE).min(deadline.std).max(
                deadline
                    .std
                    .checked_sub(stops.budget.reserve / 2)
                    .unwrap_or(deadline.std),
            ),
            Next::Exit {
                code,
                why: RETURNED,
            },
        ),
        (Phase::Ended | Phase::TakenOver, _) => Next::Quit,
    }
}

/// Starts the run's watchdog (see the module's docs) on a thread of its own.
///
/// # Errors
///
/// [`Error::Config`] when the thread cannot be started.
pub(super) fn start(
    stops: Arc<Stops>,
    codes: ExitCodes,
    max_runtime: Option<(Duration, Moment)>,
) -> Result<Watch, Error> {
    let watched = stops.clone();
    std::thread::Builder::new()
        .name("spotbatch-watchdog".into())
        .spawn(move || watch(&watched, codes, max_runtime))
        .map_err(|e| Error::Config(format!("cannot start the shutdown watchdog thread: {e}")))?;
    Ok(Watch { stops })
}

fn watch(stops: &Stops, codes: ExitCodes, max_runtime: Option<(Duration, Moment)>) {
    let mut s = stops.lock();
    loop {
        match next(
            &s,
            stops,
            &codes,
            max_runtime.map(|(_, at)| at.std),
            Instant::now(),
        ) {
            Next::Quit => return,
            Next::Wait(None) => {
                s = stops.wake.wait(s).unwrap_or_else(PoisonError::into_inner);
            }
            Next::Wait(Some(at)) => {
                let left = at.saturating_duration_since(Instant::now());
                s = match stops.wake.wait_timeout(s, left) {
                    Ok((s, _)) => s,
                    Err(poisoned) => poisoned.into_inner().0,
                };
            }
            Next::MaxRuntime => {
                drop(s);
                if let Some((limit, _)) = max_runtime {
                    let at = {
                        let _runtime = stops.runtime.enter();
                        Moment::now()
                    };
                    stops.fire(
                        StopRequest::new(InterruptSource::MaxRuntime(limit)),
                        at,
                        None,
                    );
                }
                s = stops.lock();
            }
            Next::TakeOver => {
                s.phase = Phase::TakenOver;
                let last = s.last.clone();
                let source = s.first.as_ref().map(|f| f.source.clone());
                let deadline = s.deadline.map_or_else(Instant::now, |d| d.std);
                drop(s);
                take_over(stops, last, source, deadline, codes);
            }
            Next::Exit { code, why } => {
                drop(s);
                quietly(|| error!(exit_code = code, "{why}"));
                exit(code);
            }
        }
    }
}

/// Records the stop on the last checkpoint the run stored, then exits.
fn take_over(
    stops: &Stops,
    last: Option<(Arc<dyn CheckpointStore>, Checkpoint)>,
    source: Option<InterruptSource>,
    deadline: Instant,
    codes: ExitCodes,
) -> ! {
    let source = source.map_or_else(|| "a stop request".to_owned(), |s| s.to_string());
    quietly(|| {
        warn!(
            %source,
            reserve = ?stops.budget.reserve,
            "the job's code has not given way since the drain deadline (it holds its thread: \
             CPU work or a synchronous call with no .await): the watchdog records the stop on \
             the last checkpoint, then exits"
        );
    });
    let Some((store, base)) = last else {
        quietly(|| warn!("this run stored no checkpoint: nothing to record"));
        exit(codes.interrupted);
    };
    let status = Status::Interrupted { source };
    let key = base.job.to_string();
    let location = store.location();
    let written = on_a_runtime(&stops.runtime, deadline, move || {
        write_end(store.clone(), base.clone(), status.clone())
    });
    let code = match written {
        Some(Ok(version)) => {
            quietly(
                || info!(store = %location, key, version, "the stop is recorded on the last checkpoint"),
            );
            codes.interrupted
        }
        Some(Err(e)) => {
            quietly(
                || error!(store = %location, key, error = %e, "could not record the stop on the last checkpoint"),
            );
            codes.checkpoint_not_saved
        }
        None => {
            quietly(
                || error!(store = %location, key, "could not record the stop on the last checkpoint before the final deadline"),
            );
            codes.checkpoint_not_saved
        }
    };
    exit(code)
}

/// The run's end, recorded on `base` (a checkpoint the run stored): the
/// next version, with `status`, no lease, and the run's end in its history.
fn end_of(base: &Checkpoint, status: &Status) -> Checkpoint {
    let now = now_ms();
    let mut end = base.clone();
    end.version += 1;
    end.status = status.clone();
    end.lease = None;
    end.updated_ms = now;
    end.counters.checkpoints += 1;
    if matches!(status, Status::Interrupted { .. }) {
        end.counters.interruptions += 1;
    }
    let run_id = base.writer.run_id;
    if let Some(run) = end.history.iter_mut().rev().find(|r| r.run_id == run_id) {
        run.ended_ms = now;
        run.outcome = status.to_string();
    }
    end
}

/// Writes the run's end over `base` through [`CheckpointStore::renew`]
/// (which never waits for the chunk's work), retrying transient errors; a
/// write of the run that landed unknown to it (a renewal in flight) is
/// written over. Returns the version written.
async fn write_end(
    store: Arc<dyn CheckpointStore>,
    mut base: Checkpoint,
    status: Status,
) -> Result<u64, StoreError> {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        let end = end_of(&base, &status);
        let error = match store.renew(&end, Some(base.version)).await {
            Ok(()) => return Ok(end.version),
            Err(e) => e,
        };
        match error {
            StoreError::Conflict { .. } => match store.load(&base.job).await? {
                Some(stored) if stored.writer == base.writer && stored.version > base.version => {
                    if stored.status != Status::Running {
                        // The run recorded its end itself.
                        return Ok(stored.version);
                    }
                    base = stored;
                }
                _ => return Err(error),
            },
            e if e.is_transient() => match backoff.next_delay() {
                Some(delay) => tokio::time::sleep(delay).await,
                None => return Err(e),
            },
            e => return Err(e),
        }
    }
}

/// Runs `make()`'s future to completion by `deadline`: on `runtime` when it
/// is a multi-thread runtime still running tasks (its other threads run it,
/// with the connections the store holds there), else on a current-thread
/// runtime of its own (enough for the file and memory stores; a remote
/// store's pooled connections belong to the run's runtime, and may not
/// answer there). `None` when it is not done by `deadline`.
fn on_a_runtime<F, Fut, T>(runtime: &Handle, deadline: Instant, make: F) -> Option<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    if runtime.runtime_flavor() == RuntimeFlavor::MultiThread {
        let (tx, rx) = sync_channel(1);
        let work = make();
        runtime.spawn(async move {
            let _ = tx.send(work.await);
        });
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(out) => return Some(out),
            Err(RecvTimeoutError::Timeout) => return None,
            // The runtime is shutting down and dropped the task.
            Err(RecvTimeoutError::Disconnected) => {}
        }
    }
    let own = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let left = deadline.saturating_duration_since(Instant::now());
    let out = own.block_on(async { tokio::time::timeout(left, make()).await.ok() });
    own.shutdown_background();
    out
}

/// Logs through `log`, which a subscriber that panics (writing to a closed
/// pipe) must not stop from going on to exit.
fn quietly(log: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(log));
}

/// Exits the process with `code`, running no destructors (the job's code
/// still holds a thread, or the runtime waits for one).
fn exit(code: u8) -> ! {
    std::process::exit(i32::from(code))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::budget::Budget;
    use crate::shutdown::Signal;

    fn request(source: InterruptSource) -> StopRequest {
        StopRequest::new(source)
    }

    /// The watchdog's decisions, one state at a time (grace 10 s: reserve
    /// 2.5 s, cooperative window 625 ms).
    #[tokio::test]
    async fn acts_only_when_the_run_does_not() {
        let stops = Stops::new(Budget::new(Duration::from_secs(10), None).unwrap());
        let codes = ExitCodes {
            interrupted: 75,
            ..ExitCodes::default()
        };
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let decide =
            |max: Option<Instant>, now: Instant| next(&stops.lock(), &stops, &codes, max, now);

        // No stop: sleep until told, or until max_runtime.
        assert_eq!(decide(None, at(0)), Next::Wait(None));
        assert_eq!(decide(Some(at(500)), at(0)), Next::Wait(Some(at(500))));
        assert_eq!(decide(Some(at(500)), at(500)), Next::MaxRuntime);

        // A stop: the take-over point is the drain deadline (7.5 s) plus
        // twice the window; the run begun its end before it: wait for the
        // final deadline.
        let stop = Moment {
            tokio: tokio::time::Instant::from_std(t0),
            std: t0,
        };
        stops.fire(request(InterruptSource::Signal(Signal::Term)), stop, None);
        assert_eq!(decide(None, at(1_000)), Next::Wait(Some(at(8_750))));
        assert_eq!(decide(None, at(8_750)), Next::TakeOver);
        stops.lock().phase = Phase::Finishing;
        assert_eq!(decide(None, at(8_750)), Next::Wait(Some(at(10_250))));
        assert!(matches!(
            decide(None, at(10_250)),
            Next::Exit { code: 69, .. }
        ));

        // `run` returned after a signal: exit with its code half the reserve
        // before the final deadline, or shortly after it returned.
        stops.lock().phase = Phase::Ended;
        assert_eq!(decide(None, at(8_000)), Next::Quit, "not told the code yet");
        stops.lock().ended = Some((75, at(8_000)));
        assert_eq!(decide(None, at(8_000)), Next::Wait(Some(at(8_750))));
        assert!(matches!(
            decide(None, at(8_750)),
            Next::Exit { code: 75, .. }
        ));
        stops.lock().ended = Some((75, at(9_000)));
        assert_eq!(decide(None, at(9_000)), Next::Wait(Some(at(9_250))));
        // …but not after the final deadline.
        stops.lock().ended = Some((75, at(9_900)));
        assert_eq!(decide(None, at(9_900)), Next::Wait(Some(at(10_000))));
        // After any other request, the process is the program's: quit.
        stops.lock().signalled = false;
        assert_eq!(decide(None, at(10_000)), Next::Quit);
    }

    #[test]
    fn the_end_is_the_next_version_without_a_lease() {
        let writer = crate::checkpoint::Writer::this_process();
        let mut base = Checkpoint::new(crate::key::JobKey::new("job").unwrap(), writer.clone());
        base.version = 7;
        base.lease = Some(crate::checkpoint::Lease::new(writer.run_id, 1));
        base.history = vec![crate::checkpoint::RunRecord::started(&writer, 1)];
        base.counters.checkpoints = 3;
        let status = Status::Interrupted {
            source: "SIGTERM".into(),
        };
        let end = end_of(&base, &status);
        assert_eq!((end.version, end.lease), (8, None));
        assert_eq!(end.status, status);
        assert_eq!(
            (end.counters.checkpoints, end.counters.interruptions),
            (4, 1)
        );
        assert_eq!(end.history[0].outcome, "interrupted (SIGTERM)");
        assert!(end.history[0].ended_ms > 0);
        assert_eq!((end.cursor, end.state), (base.cursor, base.state));
    }
}
