//! Stop requests: signals, a maximum runtime, a user future, platform
//! notices; and the process's signal listener, which hears them from the
//! first line of `main`.
//!
//! A job's `main` starts with [`listen`]: from then on SIGTERM and SIGINT are
//! stop requests, not the end of the process, even before the runner
//! exists. Work done before [`Runner::run`](crate::Runner::run) (connecting
//! to inputs, reading configuration) is given up on a stop request through
//! [`Shutdown::interruptible`], and a request that came before `run` makes
//! `run` return the interrupted outcome at once:
//!
//! ```no_run
//! # use spotbatch::prelude::*;
//! # struct Nothing;
//! # #[async_trait]
//! # impl Job for Nothing {
//! #     type Cursor = u64;
//! #     type State = ();
//! #     async fn next_chunk(&mut self, _: &u64) -> Result<Option<Chunk<u64>>> { Ok(None) }
//! #     async fn process(&mut self, _: &Chunk<u64>, _: &mut (), _: &ChunkContext) -> Result<()> { Ok(()) }
//! # }
//! # async fn connect() -> Result<Nothing> { Ok(Nothing) }
//! #[tokio::main]
//! async fn main() -> Result<std::process::ExitCode> {
//!     let shutdown = spotbatch::shutdown::listen(); // first: a SIGTERM from here on is a stop request
//!     let job = match shutdown.interruptible(connect()).await {
//!         Ok(job) => job?,
//!         Err(stopped) => return Ok(stopped.exit_code()), // stopped before the run: nothing done
//!     };
//!     Ok(Runner::new("my-job", job).run().await.exit_code())
//! }
//! ```
//!
//! The runner's bookkeeping of requests (the grace period's budget, first
//! and second requests, the watchdog) lives in `runner::interrupts`.

mod process;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub(crate) use process::{attach, install, interrupted_code, SignalSink};
pub use process::{listen, Interrupted, Shutdown};

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
    const ALL: [Signal; 6] = [
        Signal::Term,
        Signal::Int,
        Signal::Hup,
        Signal::Quit,
        Signal::Usr1,
        Signal::Usr2,
    ];

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

    /// The signal's number.
    const fn number(self) -> i32 {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Int => libc::SIGINT,
            Signal::Hup => libc::SIGHUP,
            Signal::Quit => libc::SIGQUIT,
            Signal::Usr1 => libc::SIGUSR1,
            Signal::Usr2 => libc::SIGUSR2,
        }
    }

    fn from_number(number: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.number() == number)
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

/// One stop request: what asked, and how long the platform gives from now
/// on, when it says.
///
/// A request without [`time_left`](Self::time_left) gets the runner's
/// [grace period](crate::Runner::grace) (SIGTERM, `max_runtime`, `stop_on`).
/// The run's final checkpoint is due at the earliest time any of its
/// requests allows, and the drain ends a checkpoint reserve before that: a
/// later request can make the drain shorter, never longer.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopRequest {
    /// What asked.
    pub source: InterruptSource,
    /// How long from the request until the platform stops the process
    /// (e.g. an EC2 Spot notice's `time`, less the time now); `None`: the
    /// runner's grace period.
    pub time_left: Option<Duration>,
}

impl StopRequest {
    /// A request from `source`, with the runner's grace period.
    pub fn new(source: InterruptSource) -> Self {
        Self {
            source,
            time_left: None,
        }
    }

    /// The same request, with `time_left` from now until the platform stops
    /// the process (zero when that time has passed).
    #[must_use]
    pub fn time_left(mut self, time_left: Duration) -> Self {
        self.time_left = Some(time_left);
        self
    }
}

impl From<InterruptSource> for StopRequest {
    fn from(source: InterruptSource) -> Self {
        Self::new(source)
    }
}

/// Something that can ask a run to stop: a deadline, a platform notice, a
/// message on a control queue. Every source starts the same drain as
/// SIGTERM, and is named in the logs, the checkpoint and the outcome.
///
/// The runner calls [`next`](Self::next) on a task of its own for the length
/// of the run, and again after each request. Only a repeated signal skips
/// the drain: a source's later requests, and a SIGTERM after them, are the
/// same stop, though one that brings an earlier deadline shortens the drain.
///
/// The task runs on the run's tokio runtime: a job that blocks the
/// runtime's only thread (a current-thread runtime) delays it. Signals and
/// [`Runner::max_runtime`](crate::Runner::max_runtime) are heard without the
/// runtime.
#[async_trait::async_trait]
pub trait StopSource: Send + 'static {
    /// Completes when the run should stop, saying why and, if the source
    /// knows, how long the platform gives; `None` when the source has
    /// nothing more to say (e.g. not on EC2), which ends its task quietly.
    async fn next(&mut self) -> Option<StopRequest>;
}

/// Fires once, after `limit` of run time.
pub(crate) struct MaxRuntime {
    limit: Option<Duration>,
}

impl MaxRuntime {
    pub(crate) fn new(limit: Duration) -> Self {
        Self { limit: Some(limit) }
    }
}

#[async_trait::async_trait]
impl StopSource for MaxRuntime {
    async fn next(&mut self) -> Option<StopRequest> {
        let limit = self.limit.take()?;
        tokio::time::sleep(limit).await;
        Some(InterruptSource::MaxRuntime(limit).into())
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
    async fn next(&mut self) -> Option<StopRequest> {
        self.future.take()?.await;
        Some(InterruptSource::Requested(self.name.clone()).into())
    }
}
