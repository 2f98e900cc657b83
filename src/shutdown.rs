//! Stop requests: signals, a maximum runtime, a user future, platform
//! notices. The runner's bookkeeping of them (the grace period's budget,
//! first and second requests) lives in `runner::interrupts`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

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
/// of the run, and again after each request. Only a repeated signal skips
/// the drain: a source's later requests, and a SIGTERM after them, are the same stop.
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

/// The built-in stop sources of a run: a handler for each of `signals`,
/// installed now, and a timer for `max_runtime`.
///
/// # Errors
///
/// [`Error::Config`] naming the signal whose handler cannot be installed.
pub(crate) fn built_in(
    signals: &[Signal],
    max_runtime: Option<Duration>,
) -> Result<Vec<Box<dyn StopSource>>, Error> {
    let mut sources: Vec<Box<dyn StopSource>> = Vec::new();
    for &signal in signals {
        let stream = tokio::signal::unix::signal(signal.kind())
            .map_err(|e| Error::Config(format!("cannot install a handler for {signal}: {e}")))?;
        sources.push(Box::new(SignalSource { signal, stream }));
    }
    if max_runtime.is_some() {
        sources.push(Box::new(Deadline { limit: max_runtime }));
    }
    Ok(sources)
}
