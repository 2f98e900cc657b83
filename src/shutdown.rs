//! Stop requests: signals, a maximum runtime, a user future; and the drain budget.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::Error;

/// A Unix signal the runner can treat as a stop request.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// `SIGTERM`: what ECS, Fargate, AWS Batch, Kubernetes and `docker stop` send.
    Term,
    /// `SIGINT`: Ctrl-C in a terminal.
    Int,
    /// `SIGHUP`.
    Hup,
    /// `SIGQUIT`.
    Quit,
    /// `SIGUSR1`.
    Usr1,
    /// `SIGUSR2`.
    Usr2,
}

impl Signal {
    /// The signal's name, e.g. `"SIGTERM"`.
    pub const fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Int => "SIGINT",
            Signal::Hup => "SIGHUP",
            Signal::Quit => "SIGQUIT",
            Signal::Usr1 => "SIGUSR1",
            Signal::Usr2 => "SIGUSR2",
        }
    }

    fn kind(self) -> tokio::signal::unix::SignalKind {
        use tokio::signal::unix::SignalKind;
        match self {
            Signal::Term => SignalKind::terminate(),
            Signal::Int => SignalKind::interrupt(),
            Signal::Hup => SignalKind::hangup(),
            Signal::Quit => SignalKind::quit(),
            Signal::Usr1 => SignalKind::user_defined1(),
            Signal::Usr2 => SignalKind::user_defined2(),
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What asked a run to stop.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterruptSource {
    /// A Unix signal.
    Signal(Signal),
    /// The run reached [`Runner::max_runtime`](crate::Runner::max_runtime).
    MaxRuntime(Duration),
    /// A future given to [`Runner::stop_on`](crate::Runner::stop_on) completed.
    Requested(String),
    /// A platform notice, e.g. an EC2 Spot interruption notice.
    Notice {
        /// Who gave notice, e.g. `"EC2 spot"`.
        from: String,
        /// What it said, e.g. `"terminate at 2026-11-24T15:32:45Z"`.
        detail: String,
    },
}

impl fmt::Display for InterruptSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InterruptSource::Signal(s) => f.write_str(s.name()),
            InterruptSource::MaxRuntime(d) => write!(f, "max runtime {d:?}"),
            InterruptSource::Requested(name) => write!(f, "stop request: {name}"),
            InterruptSource::Notice { from, detail } => write!(f, "{from} notice: {detail}"),
        }
    }
}

/// Something that can ask a run to stop: a signal, a deadline, a platform
/// notice, a message on a control queue. Every source starts the same drain
/// as SIGTERM, and is named in the logs, the checkpoint and the outcome.
///
/// The runner calls [`next`](Self::next) on a task of its own for the length
/// of the run, and again after each request: a second request skips the drain.
#[async_trait::async_trait]
pub trait StopSource: Send + 'static {
    /// Completes when the run should stop, saying why; `None` when the source
    /// has nothing more to say (e.g. not on EC2), which ends its task quietly.
    async fn next(&mut self) -> Option<InterruptSource>;
}

struct SignalSource {
    signal: Signal,
    stream: tokio::signal::unix::Signal,
}

#[async_trait::async_trait]
impl StopSource for SignalSource {
    async fn next(&mut self) -> Option<InterruptSource> {
        self.stream
            .recv()
            .await
            .map(|()| InterruptSource::Signal(self.signal))
    }
}

/// Fires once, after `limit` of run time.
struct Deadline {
    limit: Option<Duration>,
}

#[async_trait::async_trait]
impl StopSource for Deadline {
    async fn next(&mut self) -> Option<InterruptSource> {
        let limit = self.limit.take()?;
        tokio::time::sleep(limit).await;
        Some(InterruptSource::MaxRuntime(limit))
    }
}

/// Fires once, when a future completes.
pub(crate) struct FutureSource {
    name: String,
    future: Option<Pin<Box<dyn Future<Output = ()> + Send + 'static>>>,
}

impl FutureSource {
    pub(crate) fn new(name: String, future: impl Future<Output = ()> + Send + 'static) -> Self {
        Self {
            name,
            future: Some(Box::pin(future)),
        }
    }
}

#[async_trait::async_trait]
impl StopSource for FutureSource {
    async fn next(&mut self) -> Option<InterruptSource> {
        self.future.take()?.await;
        Some(InterruptSource::Requested(self.name.clone()))
    }
}

/// How the grace period is spent after a stop request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// From the stop request to the platform's SIGKILL.
    pub(crate) grace: Duration,
    /// Kept back at the end of the grace period for the final checkpoint.
    pub(crate) reserve: Duration,
    /// How long a cancelled chunk may take to return before it is dropped.
    pub(crate) cooperate: Duration,
}

impl Budget {
    pub(crate) fn new(grace: Duration, reserve: Option<Duration>) -> Result<Self, Error> {
        if grace.is_zero() {
            return Err(Error::Config(
                "the grace period must be longer than zero".into(),
            ));
        }
        let reserve = reserve.unwrap_or_else(|| (grace / 4).min(Duration::from_secs(5)));
        if reserve >= grace {
            return Err(Error::Config(format!(
                "the checkpoint reserve ({reserve:?}) must be shorter than the grace period ({grace:?})"
            )));
        }
        Ok(Self {
            grace,
            reserve,
            cooperate: (reserve / 4).min(Duration::from_secs(1)),
        })
    }

    fn drain(&self) -> Duration {
        self.grace - self.reserve
    }
}

#[derive(Debug)]
struct Stop {
    source: InterruptSource,
    at: Instant,
}

#[derive(Debug, Clone)]
struct Trigger {
    stop: CancellationToken,
    hard: CancellationToken,
    first: Arc<OnceLock<Stop>>,
    budget: Budget,
}

impl Trigger {
    fn fire(&self, source: InterruptSource) {
        let stop = Stop {
            source: source.clone(),
            at: Instant::now(),
        };
        if self.first.set(stop).is_ok() {
            info!(
                %source,
                drain = ?self.budget.drain(),
                time_left = ?self.budget.grace,
                "stop requested: finishing the chunk in hand, then writing the final checkpoint"
            );
            self.stop.cancel();
        } else if !self.hard.is_cancelled() {
            warn!(%source, "second stop request: abandoning the chunk in hand and checkpointing what is finished");
            self.hard.cancel();
        }
    }
}

/// Listens for stop requests for the length of one run.
#[derive(Debug)]
pub(crate) struct Interrupts {
    trigger: Trigger,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Interrupts {
    /// Installs the signal handlers now (before any chunk runs) and starts
    /// listening to every source.
    pub(crate) fn listen(
        signals: &[Signal],
        max_runtime: Option<Duration>,
        sources: Vec<Box<dyn StopSource>>,
        budget: Budget,
    ) -> Result<Self, Error> {
        let trigger = Trigger {
            stop: CancellationToken::new(),
            hard: CancellationToken::new(),
            first: Arc::new(OnceLock::new()),
            budget,
        };
        let mut all: Vec<Box<dyn StopSource>> = Vec::new();
        for &signal in signals {
            let stream = tokio::signal::unix::signal(signal.kind()).map_err(|e| {
                Error::Config(format!("cannot install a handler for {signal}: {e}"))
            })?;
            all.push(Box::new(SignalSource { signal, stream }));
        }
        if max_runtime.is_some() {
            all.push(Box::new(Deadline { limit: max_runtime }));
        }
        all.extend(sources);
        let tasks = all
            .into_iter()
            .map(|mut source| {
                let trigger = trigger.clone();
                tokio::spawn(async move {
                    while let Some(reason) = source.next().await {
                        trigger.fire(reason);
                    }
                })
            })
            .collect();
        Ok(Self {
            trigger,
            cancel: CancellationToken::new(),
            tasks,
        })
    }

    pub(crate) fn stop_token(&self) -> CancellationToken {
        self.trigger.stop.clone()
    }

    pub(crate) fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    pub(crate) fn stop_requested(&self) -> bool {
        self.trigger.stop.is_cancelled()
    }

    pub(crate) fn chunk_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    pub(crate) fn source(&self) -> Option<InterruptSource> {
        self.trigger.first.get().map(|s| s.source.clone())
    }

    /// When the final checkpoint must be written by: the end of the grace period.
    pub(crate) fn final_deadline(&self) -> Option<Instant> {
        self.trigger
            .first
            .get()
            .map(|s| s.at + self.trigger.budget.grace)
    }

    /// Completes when the chunk in hand must be cancelled: at the drain
    /// deadline after a stop request, or at once on a second request.
    pub(crate) async fn abandon_point(&self) {
        self.trigger.stop.cancelled().await;
        let Some(stop) = self.trigger.first.get() else {
            return;
        };
        tokio::select! {
            () = sleep_until(stop.at + self.trigger.budget.drain()) => {
                warn!(
                    reserve = ?self.trigger.budget.reserve,
                    "drain deadline reached: cancelling the chunk in hand"
                );
            }
            () = self.trigger.hard.cancelled() => {}
        }
    }

    /// Cancels the chunk in hand; returns how long it may take to return.
    pub(crate) fn cancel_chunk(&self) -> Duration {
        self.cancel.cancel();
        if self.trigger.hard.is_cancelled() {
            self.trigger
                .budget
                .cooperate
                .min(Duration::from_millis(100))
        } else {
            self.trigger.budget.cooperate
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

    #[test]
    fn budget_defaults_and_validation() {
        let b = Budget::new(Duration::from_secs(30), None).unwrap();
        assert_eq!(
            (b.reserve, b.drain()),
            (Duration::from_secs(5), Duration::from_secs(25))
        );
        assert_eq!(b.cooperate, Duration::from_secs(1));
        let short = Budget::new(Duration::from_secs(2), None).unwrap();
        assert_eq!(short.reserve, Duration::from_millis(500));
        assert_eq!(short.cooperate, Duration::from_millis(125));
        assert!(Budget::new(Duration::ZERO, None).is_err());
        let err = Budget::new(Duration::from_secs(5), Some(Duration::from_secs(5))).unwrap_err();
        assert!(err.to_string().contains("reserve"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn first_request_drains_second_abandons() {
        let budget = Budget::new(Duration::from_secs(10), None).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let queue = FutureSource::new("queue".into(), async move { rx.await.unwrap_or(()) });
        let ints = Interrupts::listen(
            &[],
            Some(Duration::from_secs(60)),
            vec![Box::new(queue)],
            budget,
        )
        .unwrap();
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

        // The max-runtime timer is a second request: it makes the abandon point immediate.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let started = Instant::now();
        ints.abandon_point().await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(ints.cancel_chunk(), Duration::from_millis(100));
        assert_eq!(
            ints.source(),
            Some(InterruptSource::Requested("queue".into()))
        );
    }
}
