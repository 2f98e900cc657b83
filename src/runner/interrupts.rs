//! A run's stop requests: the first starts the drain, a repeated signal
//! skips it, and each may bring a deadline (the earliest wins); the
//! deadlines the budget sets after the first.
//!
//! The record ([`Stops`]) is shared by the run, the sources' tasks, the
//! process's signal thread and the run's [watchdog](super::watchdog): it
//! is kept under a `std` mutex and timed on both clocks ([`Moment`]), so that
//! none of them needs the run's runtime to be free.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::budget::Budget;
use super::watchdog::{self, Watch};
use crate::checkpoint::Checkpoint;
use crate::error::Error;
use crate::exit::ExitCodes;
use crate::shutdown::{
    self, InterruptSource, MaxRuntime, Signal, SignalSink, StopRequest, StopSource,
};
use crate::store::CheckpointStore;

/// A moment on both clocks: tokio's, which the run's timers use (paused in
/// tests) and requests are compared on, and `std`'s, which the watchdog
/// uses. The two are the same clock outside tests.
#[derive(Debug, Clone, Copy)]
pub(super) struct Moment {
    pub(super) tokio: tokio::time::Instant,
    pub(super) std: std::time::Instant,
}

impl Moment {
    /// Now, on the clock of the runtime entered (if any) and on `std`'s.
    pub(super) fn now() -> Self {
        Self {
            tokio: tokio::time::Instant::now(),
            std: std::time::Instant::now(),
        }
    }

    /// `at`, a moment of `std`'s clock in the past, on both clocks.
    fn of(at: std::time::Instant) -> Self {
        let now = Self::now();
        let ago = now.std.saturating_duration_since(at);
        Self {
            tokio: now.tokio.checked_sub(ago).unwrap_or(now.tokio),
            std: at,
        }
    }

    pub(super) fn after(self, d: Duration) -> Self {
        Self {
            tokio: self.tokio + d,
            std: self.std + d,
        }
    }

    /// `d` before this moment, but not before `floor`.
    fn before(self, d: Duration, floor: Moment) -> Self {
        match (self.tokio.checked_sub(d), self.std.checked_sub(d)) {
            (Some(tokio), Some(std)) if tokio > floor.tokio => Self { tokio, std },
            _ => floor,
        }
    }
}

/// Who may write the run's end: the run, until the watchdog takes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Starting, or in the chunk loop.
    Running,
    /// The run is writing its end (the final checkpoint, or a release).
    Finishing,
    /// The watchdog wrote the run's end (the run's code did not give way in
    /// time); the run writes nothing more.
    TakenOver,
    /// `run` returned (or was dropped).
    Ended,
}

/// The first stop request.
#[derive(Debug, Clone)]
pub(super) struct First {
    pub(super) source: InterruptSource,
    pub(super) at: Moment,
}

/// What the run, its sources, the signal thread and the watchdog share.
#[derive(Debug)]
pub(super) struct State {
    pub(super) first: Option<First>,
    /// When the final checkpoint is due: the earliest deadline of the requests.
    pub(super) deadline: Option<Moment>,
    /// When a repeated signal came.
    pub(super) hard_at: Option<Moment>,
    /// The last of the process's signals this run was told of.
    signals_seen: u64,
    /// Whether a signal asked to stop: a second one skips the drain, and the
    /// process exits by the end of the grace period.
    pub(super) signalled: bool,
    pub(super) phase: Phase,
    /// The last checkpoint this run stored, and its store: what the watchdog
    /// records the run's end on.
    pub(super) last: Option<(Arc<dyn CheckpointStore>, Checkpoint)>,
    /// `run`'s exit code once it returned, and when.
    pub(super) ended: Option<(u8, std::time::Instant)>,
}

impl State {
    /// When the drain ends: a checkpoint reserve before the final deadline,
    /// but not before the stop request.
    pub(super) fn drain_deadline(&self, budget: &Budget) -> Option<Moment> {
        let first = self.first.as_ref()?;
        Some(self.deadline?.before(budget.reserve, first.at))
    }

    /// When the chunk in hand is cancelled: the drain deadline, or a second signal.
    pub(super) fn abandon_at(&self, budget: &Budget) -> Option<Moment> {
        let drain = self.drain_deadline(budget)?;
        Some(match self.hard_at {
            Some(hard) if hard.tokio < drain.tokio => hard,
            _ => drain,
        })
    }

    /// How long a cancelled chunk may take to return before it is dropped.
    pub(super) fn cooperate(&self, budget: &Budget) -> Duration {
        if self.hard_at.is_some() {
            budget.cooperate.min(Duration::from_millis(100))
        } else {
            budget.cooperate
        }
    }
}

/// A run's record of stop requests (see the module's docs).
#[derive(Debug)]
pub(super) struct Stops {
    stop: CancellationToken,
    /// Set just before `stop` is cancelled: read on every chunk, without
    /// the token's lock.
    stopped: AtomicBool,
    hard: CancellationToken,
    /// Wakes the run's timers when the drain deadline moves.
    changed: Notify,
    state: Mutex<State>,
    /// Wakes the watchdog on every change of `state`.
    pub(super) wake: Condvar,
    pub(super) budget: Budget,
    /// The run's runtime: requests heard on other threads are timed on its clock.
    pub(super) runtime: Handle,
}

/// What a request changed, for the log line that follows it.
enum Fired {
    First {
        drain: Duration,
        time_left: Duration,
    },
    Hard,
    Sooner {
        first: InterruptSource,
        time_left: Duration,
    },
    Same {
        first: InterruptSource,
    },
    Seen,
}

impl Stops {
    /// A record of no request yet, timed on the current runtime's clock.
    pub(super) fn new(budget: Budget) -> Self {
        Self {
            stop: CancellationToken::new(),
            stopped: AtomicBool::new(false),
            hard: CancellationToken::new(),
            changed: Notify::new(),
            state: Mutex::new(State {
                first: None,
                deadline: None,
                hard_at: None,
                signals_seen: 0,
                signalled: false,
                phase: Phase::Running,
                last: None,
                ended: None,
            }),
            wake: Condvar::new(),
            budget,
            runtime: Handle::current(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes whoever waits for a change of the state.
    pub(super) fn notify(&self) {
        self.changed.notify_waiters();
        self.wake.notify_all();
    }

    /// Records a stop request made at `at`. The first starts the drain. Only
    /// a repeated signal (a person pressing Ctrl-C twice, a second SIGTERM)
    /// skips it: the platform's SIGTERM after its own notice, after
    /// `max_runtime` or a `stop_on` future is the same stop, and the drain
    /// goes on, though it ends sooner if the request's deadline is earlier.
    /// `seq`: the process's number for a signal, told once.
    ///
    /// The request is recorded and the run told before anything is logged.
    pub(super) fn fire(&self, request: StopRequest, at: Moment, seq: Option<u64>) {
        let StopRequest { source, time_left } = request;
        let time_left = time_left.unwrap_or(self.budget.grace);
        let deadline = at.after(time_left);
        let is_signal = matches!(source, InterruptSource::Signal(_));
        let fired = {
            let mut s = self.lock();
            match seq {
                Some(seq) if seq <= s.signals_seen => Fired::Seen,
                _ => {
                    if let Some(seq) = seq {
                        s.signals_seen = seq;
                    }
                    let repeated_signal = is_signal && std::mem::replace(&mut s.signalled, true);
                    match &s.first {
                        None => {
                            s.first = Some(First {
                                source: source.clone(),
                                at,
                            });
                            s.deadline = Some(deadline);
                            let drain = s
                                .drain_deadline(&self.budget)
                                .map_or(Duration::ZERO, |d| d.tokio - at.tokio);
                            Fired::First { drain, time_left }
                        }
                        Some(_) if repeated_signal && s.hard_at.is_none() => {
                            s.hard_at = Some(Moment::now());
                            Fired::Hard
                        }
                        Some(first) => {
                            let first = first.source.clone();
                            match s.deadline {
                                Some(due) if deadline.tokio < due.tokio => {
                                    s.deadline = Some(deadline);
                                    Fired::Sooner { first, time_left }
                                }
                                _ => Fired::Same { first },
                            }
                        }
                    }
                }
            }
        };
        match fired {
            Fired::First { .. } => {
                self.stopped.store(true, Ordering::Release);
                self.stop.cancel();
            }
            Fired::Hard => self.hard.cancel(),
            Fired::Sooner { .. } | Fired::Same { .. } | Fired::Seen => {}
        }
        self.notify();
        let ago = at.std.elapsed();
        let ago = (ago > Duration::from_millis(100)).then_some(ago);
        match fired {
            Fired::First { drain, time_left } => info!(
                %source,
                ?drain,
                ?time_left,
                ago = ago.map(tracing::field::debug),
                "stop requested: finishing the chunk in hand, then writing the final checkpoint"
            ),
            Fired::Hard => {
                warn!(%source, "second stop request: abandoning the chunk in hand and checkpointing what is finished")
            }
            Fired::Sooner { first, time_left } => info!(
                %source,
                %first,
                ?time_left,
                "stop requested again, by another source with an earlier deadline: the drain ends sooner"
            ),
            Fired::Same { first } => info!(
                %source,
                %first,
                "stop requested again, by another source: the same stop; the drain goes on"
            ),
            Fired::Seen => {}
        }
    }
}

impl SignalSink for Stops {
    fn signal(&self, seq: u64, signal: Signal, at: std::time::Instant) {
        // On the signal thread: time it on the run's clock.
        let _runtime = self.runtime.enter();
        let at = Moment::of(at);
        self.fire(
            StopRequest::new(InterruptSource::Signal(signal)),
            at,
            Some(seq),
        );
    }
}

/// Listens for stop requests for the length of one run.
#[derive(Debug)]
pub(super) struct Interrupts {
    stops: Arc<Stops>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Interrupts {
    /// Installs the handlers of `signals` now (before any chunk runs) and
    /// hears the signals the process received before; starts listening to
    /// every source, and the run's watchdog, which ends the process with
    /// `codes` when the run's code does not give way in time.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when a signal handler cannot be installed, or the
    /// watchdog's thread cannot be started.
    pub(super) fn listen(
        signals: &[Signal],
        max_runtime: Option<Duration>,
        mut sources: Vec<Box<dyn StopSource>>,
        budget: Budget,
        codes: ExitCodes,
    ) -> Result<(Self, Watch), Error> {
        shutdown::install(signals)?;
        let started = Moment::now();
        let stops = Arc::new(Stops::new(budget));
        if let Some(limit) = max_runtime {
            sources.push(Box::new(MaxRuntime::new(limit)));
        }
        let tasks = sources
            .into_iter()
            .map(|mut source| {
                let stops = stops.clone();
                tokio::spawn(async move {
                    while let Some(request) = source.next().await {
                        stops.fire(request, Moment::now(), None);
                    }
                })
            })
            .collect();
        shutdown::attach(stops.clone());
        let backstop = max_runtime.map(|limit| started.after(limit));
        let watch = watchdog::start(stops.clone(), codes, max_runtime.zip(backstop))?;
        Ok((
            Self {
                stops,
                cancel: CancellationToken::new(),
                tasks,
            },
            watch,
        ))
    }

    pub(super) fn stops(&self) -> &Arc<Stops> {
        &self.stops
    }

    pub(super) fn stop_token(&self) -> CancellationToken {
        self.stops.stop.clone()
    }

    pub(super) fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    #[inline]
    pub(super) fn stop_requested(&self) -> bool {
        self.stops.stopped.load(Ordering::Acquire)
    }

    pub(super) fn chunk_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    pub(super) fn source(&self) -> Option<InterruptSource> {
        self.stops.lock().first.as_ref().map(|f| f.source.clone())
    }

    /// When the final checkpoint must be written by: the earliest deadline
    /// of the stop requests (by default the end of the grace period).
    pub(super) fn final_deadline(&self) -> Option<tokio::time::Instant> {
        self.stops.lock().deadline.map(|d| d.tokio)
    }

    /// Completes when the chunk in hand must be cancelled: at the drain
    /// deadline after a stop request (which a later request may bring
    /// forward), or at once on a second signal.
    pub(super) async fn abandon_point(&self) {
        self.stops.stop.cancelled().await;
        loop {
            let changed = self.stops.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (drain, hard) = {
                let s = self.stops.lock();
                (s.drain_deadline(&self.stops.budget), s.hard_at.is_some())
            };
            let Some(drain) = drain else { return };
            if hard {
                return;
            }
            tokio::select! {
                () = sleep_until(drain.tokio) => {
                    warn!(
                        reserve = ?self.stops.budget.reserve,
                        "drain deadline reached: cancelling the chunk in hand"
                    );
                    return;
                }
                () = &mut changed => {}
            }
        }
    }

    /// Cancels the chunk in hand; returns how long it may take to return.
    pub(super) fn cancel_chunk(&self) -> Duration {
        self.cancel.cancel();
        self.stops.lock().cooperate(&self.stops.budget)
    }

    /// Marks the start of the run's last writes (the final checkpoint, or
    /// recording its end on the last one): from now on the watchdog leaves
    /// them to the run. Never completes when the watchdog has taken over
    /// already: the process is about to exit, and the run must not write.
    pub(super) async fn finishing(&self) {
        let taken_over = {
            let mut s = self.stops.lock();
            match s.phase {
                Phase::Running => {
                    s.phase = Phase::Finishing;
                    false
                }
                Phase::Finishing | Phase::Ended => false,
                Phase::TakenOver => true,
            }
        };
        self.stops.notify();
        if taken_over {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::FutureSource;
    use tokio::time::Instant;

    fn listen(sources: Vec<Box<dyn StopSource>>, max_runtime: Option<Duration>) -> Interrupts {
        let budget = Budget::new(Duration::from_secs(10), None).unwrap();
        let (ints, watch) =
            Interrupts::listen(&[], max_runtime, sources, budget, ExitCodes::default()).unwrap();
        // The watchdog of a test's run: nothing for it to do.
        drop(watch);
        ints
    }

    #[tokio::test(start_paused = true)]
    async fn first_request_drains_second_abandons() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let queue = FutureSource::new("queue".into(), async move { rx.await.unwrap_or(()) });
        let ints = listen(vec![Box::new(queue)], Some(Duration::from_secs(60)));
        assert!(!ints.stop_requested());
        tx.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(ints.stop_requested());
        assert_eq!(
            ints.source(),
            Some(InterruptSource::Requested("queue".into()))
        );

        let started = Instant::now();
        ints.abandon_point().await;
        let waited = started.elapsed().as_millis();
        assert!(
            (7_498..=7_500).contains(&waited),
            "drain = grace - reserve, waited {waited} ms"
        );

        // The max-runtime timer is another kind of request: the same stop.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!ints.stops.hard.is_cancelled());
        assert_eq!(
            ints.source(),
            Some(InterruptSource::Requested("queue".into()))
        );
    }

    fn stops() -> Stops {
        Stops::new(Budget::new(Duration::from_secs(10), None).unwrap())
    }

    fn fire(stops: &Stops, source: InterruptSource) {
        stops.fire(source.into(), Moment::now(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_repeated_signal_skips_the_drain() {
        let notice = || InterruptSource::Notice {
            from: "EC2 spot".into(),
            detail: "terminate at 2026-11-30T05:00:00Z".into(),
        };
        let term = || InterruptSource::Signal(Signal::Term);

        // The platform's SIGTERM after its notice, after max_runtime, after a
        // stop_on future: one stop.
        for first in [
            notice(),
            InterruptSource::MaxRuntime(Duration::from_secs(1)),
            InterruptSource::Requested("queue".into()),
        ] {
            let t = stops();
            fire(&t, first.clone());
            fire(&t, term());
            assert!(
                t.stop.is_cancelled() && !t.hard.is_cancelled(),
                "{first} then SIGTERM"
            );
            assert_eq!(
                t.lock().first.as_ref().map(|f| f.source.clone()),
                Some(first)
            );
            // A second SIGTERM is a person insisting.
            fire(&t, term());
            assert!(t.hard.is_cancelled());
        }

        // Ctrl-C twice; SIGTERM then SIGINT.
        for second in [InterruptSource::Signal(Signal::Int), term()] {
            let t = stops();
            fire(&t, term());
            assert!(!t.hard.is_cancelled());
            fire(&t, second);
            assert!(t.hard.is_cancelled());
        }

        // A notice after a SIGTERM changes nothing either.
        let t = stops();
        fire(&t, term());
        fire(&t, notice());
        assert!(!t.hard.is_cancelled());

        // The same signal told twice (heard live and replayed) is one signal.
        let t = stops();
        let at = std::time::Instant::now();
        t.signal(1, Signal::Term, at);
        t.signal(1, Signal::Term, at);
        assert!(t.stop.is_cancelled() && !t.hard.is_cancelled());
        t.signal(2, Signal::Term, at);
        assert!(t.hard.is_cancelled());
    }

    /// A request is recorded before it is logged: a subscriber that panics
    /// (one writing to a closed pipe) loses no stop.
    #[tokio::test(start_paused = true)]
    async fn a_log_that_panics_loses_no_stop() {
        struct ClosedPipe;
        impl std::io::Write for ClosedPipe {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                panic!("failed printing to stderr: Broken pipe (os error 32)")
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let subscriber = tracing_subscriber::fmt()
            .with_writer(|| ClosedPipe)
            .finish();
        let t = stops();
        let logged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tracing::subscriber::with_default(subscriber, || {
                fire(&t, InterruptSource::Signal(Signal::Term));
            });
        }));
        assert!(logged.is_err(), "the subscriber did not panic");
        assert!(t.stop.is_cancelled(), "the stop was lost");
        assert!(t.lock().deadline.is_some());
    }

    /// Each request may bring a deadline; the drain ends a reserve before the
    /// earliest, however the requests come.
    #[tokio::test(start_paused = true)]
    async fn the_drain_ends_a_reserve_before_the_earliest_deadline() {
        // grace 10 s, reserve 2.5 s.
        let ints = listen(Vec::new(), None);
        let started = Instant::now();
        let sigterm = StopRequest::new(InterruptSource::Signal(Signal::Term));
        ints.stops.fire(sigterm, Moment::now(), None);
        let stops = ints.stops.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            // An EC2 Spot notice: terminate 3 s from now, at 4 s.
            let notice = StopRequest::new(InterruptSource::Notice {
                from: "EC2 spot".into(),
                detail: "terminate at …".into(),
            })
            .time_left(Duration::from_secs(3));
            stops.fire(notice, Moment::now(), None);
            tokio::time::sleep(Duration::from_secs(1)).await;
            // A later request with a later deadline changes nothing.
            stops.fire(
                StopRequest::new(InterruptSource::Requested("queue".into())),
                Moment::now(),
                None,
            );
        });
        ints.abandon_point().await;
        let waited = started.elapsed().as_millis();
        assert!(
            (1_498..=1_500).contains(&waited),
            "drain ends at 4 s - 2.5 s, waited {waited} ms"
        );
        let due = ints.final_deadline().unwrap() - started;
        assert!(due.as_millis().abs_diff(4_000) <= 2, "{due:?}");
        assert_eq!(
            ints.source(),
            Some(InterruptSource::Signal(Signal::Term)),
            "the first request is still the one named"
        );

        // A deadline that has passed already: the drain ends at once.
        let ints = listen(Vec::new(), None);
        let started = Instant::now();
        let late = StopRequest::new(InterruptSource::Notice {
            from: "EC2 spot".into(),
            detail: "terminate at …".into(),
        })
        .time_left(Duration::ZERO);
        ints.stops.fire(late, Moment::now(), None);
        ints.abandon_point().await;
        assert!(started.elapsed() < Duration::from_millis(2));
    }
}
