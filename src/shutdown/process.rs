//! The process's signal listener: one thread that receives the stop signals
//! (through `signal-hook`'s self-pipe, not through a tokio runtime, so a job
//! that blocks the runtime's thread does not keep a signal from being
//! heard), records them, and passes them on to the runs in progress.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Instant;

use signal_hook::iterator::{Handle, Signals};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{InterruptSource, Signal};
use crate::error::Error;
use crate::exit::ExitCodes;

/// Something told of every stop signal the process receives: a run in progress.
pub(crate) trait SignalSink: Send + Sync {
    /// The `seq`-th signal of the process (from 1), received at `at`.
    /// Called again for the same signal when the sink attaches after it;
    /// a sink ignores a `seq` it has seen.
    fn signal(&self, seq: u64, signal: Signal, at: Instant);
}

/// The signals received so far, and who is told of the next ones.
#[derive(Default)]
struct Received {
    /// Every stop signal received, in order (`seq` is the index + 1).
    signals: Vec<(Signal, Instant)>,
    /// The runs in progress.
    sinks: Vec<Weak<dyn SignalSink>>,
    /// The signals whose handlers are installed.
    installed: Vec<Signal>,
}

struct Listener {
    received: Mutex<Received>,
    /// Cancelled by the first stop signal.
    stopped: CancellationToken,
    /// The signal thread's handle to add signals; why there is none otherwise.
    handle: Result<Handle, String>,
    /// [`Shutdown::interrupted_exit_code`].
    interrupted: AtomicU8,
}

static LISTENER: OnceLock<Listener> = OnceLock::new();

fn listener() -> &'static Listener {
    LISTENER.get_or_init(|| {
        let handle = Signals::new(Vec::<i32>::new())
            .map_err(|e| format!("cannot create the signal pipe: {e}"))
            .and_then(|signals| {
                let handle = signals.handle();
                std::thread::Builder::new()
                    .name("spotbatch-signals".into())
                    .spawn(move || receive(signals))
                    .map_err(|e| format!("cannot start the signal thread: {e}"))?;
                Ok(handle)
            });
        Listener {
            received: Mutex::default(),
            stopped: CancellationToken::new(),
            handle,
            interrupted: AtomicU8::new(ExitCodes::default().interrupted),
        }
    })
}

fn lock(received: &Mutex<Received>) -> MutexGuard<'_, Received> {
    received.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The signal thread: records each signal, then tells the runs in progress.
fn receive(mut signals: Signals) {
    for number in signals.forever() {
        let Some(signal) = Signal::from_number(number) else {
            continue;
        };
        let at = Instant::now();
        let listener = listener();
        let (seq, sinks) = {
            let mut received = lock(&listener.received);
            received.signals.push((signal, at));
            received.sinks.retain(|s| s.strong_count() > 0);
            let sinks: Vec<_> = received.sinks.iter().filter_map(Weak::upgrade).collect();
            (received.signals.len() as u64, sinks)
        };
        // Recorded first: whatever the logging below does, the stop stands.
        listener.stopped.cancel();
        for sink in sinks {
            // A sink logs; a subscriber that panics (a closed pipe) must not
            // end this thread, or the next signal would be lost.
            let _ = catch_unwind(AssertUnwindSafe(|| sink.signal(seq, signal, at)));
        }
    }
}

/// Installs handlers for `signals` (those not installed yet) on the
/// process's signal thread.
///
/// # Errors
///
/// [`Error::Config`] naming the signal whose handler cannot be installed,
/// or saying why there is no signal thread.
pub(crate) fn install(signals: &[Signal]) -> Result<(), Error> {
    let listener = listener();
    let mut received = lock(&listener.received);
    for &signal in signals {
        if received.installed.contains(&signal) {
            continue;
        }
        let handle = listener
            .handle
            .as_ref()
            .map_err(|e| Error::Config(format!("cannot install a handler for {signal}: {e}")))?;
        handle
            .add_signal(signal.number())
            .map_err(|e| Error::Config(format!("cannot install a handler for {signal}: {e}")))?;
        received.installed.push(signal);
    }
    Ok(())
}

/// Tells `sink` of every signal from now on, and at once of those received
/// before; it is told no more once dropped.
pub(crate) fn attach(sink: Arc<dyn SignalSink>) {
    let listener = listener();
    let mut received = lock(&listener.received);
    received.sinks.push(Arc::downgrade(&sink));
    // Under the lock: the signal thread tells of the next signal after these.
    for (i, &(signal, at)) in received.signals.iter().enumerate() {
        let _ = catch_unwind(AssertUnwindSafe(|| sink.signal(i as u64 + 1, signal, at)));
    }
}

/// The exit code of a run stopped on request, for runners given none:
/// [`Shutdown::interrupted_exit_code`], else [`ExitCodes::default`]'s.
pub(crate) fn interrupted_code() -> u8 {
    listener().interrupted.load(Ordering::Relaxed)
}

/// Starts listening for stop signals now: SIGTERM and SIGINT, on a thread of
/// the process's own. Call it first in `main`.
///
/// Until a handler is installed a signal kills the process (exit 143 for
/// SIGTERM), and a process that runs as PID 1 (in a container, with an
/// exec-form `ENTRYPOINT`) does not even hear it: the kernel drops a signal
/// that PID 1 has no handler for. From this call on, a signal is a stop
/// request, wherever the program is: [`Shutdown::interruptible`] gives up
/// the work it runs, and a [`Runner::run`](crate::Runner::run) that starts
/// later returns [`Outcome::Interrupted`](crate::Outcome::Interrupted) at
/// once, having run no chunk; a run in progress drains as its
/// [shutdown][guide] says. The grace period counts from the signal.
///
/// Idempotent: every call returns a handle to the same listener, and the
/// runner calls it too (adding its own [`signals`](crate::Runner::signals)).
/// Handlers stay installed for the life of the process. A handler that
/// cannot be installed (no file descriptor left for the signal pipe) is
/// reported by the next `run`, as [`Error::Config`].
///
/// [guide]: https://github.com/spotbatch/spotbatch/blob/main/docs/shutdown.md
pub fn listen() -> Shutdown {
    // An error here is kept for `run` to report: `main`'s first line stays short.
    let _ = install(&[Signal::Term, Signal::Int]);
    Shutdown { _private: () }
}

/// The process's stop listener, from [`listen`]. Cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct Shutdown {
    _private: (),
}

impl Shutdown {
    /// Sets the exit code of a stop before the run ([`Interrupted::exit_code`])
    /// and of every run whose runner is not given one
    /// ([`Runner::interrupted_exit_code`](crate::Runner::interrupted_exit_code)):
    /// 0 by default, [`ExitCodes::RETRY_ME`] (75) where the platform retries
    /// by exit code ([AWS Batch and Kubernetes][guide]).
    ///
    /// [guide]: https://github.com/spotbatch/spotbatch/blob/main/docs/shutdown.md#platforms-that-retry-by-exit-code
    pub fn interrupted_exit_code(self, code: u8) -> Self {
        listener().interrupted.store(code, Ordering::Relaxed);
        self
    }

    /// Whether a stop signal has come.
    pub fn stop_requested(&self) -> bool {
        listener().stopped.is_cancelled()
    }

    /// Runs `work` (connecting to inputs, reading configuration: anything
    /// before [`Runner::run`](crate::Runner::run) that can take a while)
    /// unless a stop signal comes first: then `work` is dropped at its next
    /// `.await` and the error says which signal it was and the exit code to
    /// return. When a stop has already come, `work` is not polled at all.
    ///
    /// # Errors
    ///
    /// [`Interrupted`] when a stop signal came first.
    ///
    /// # Cancel safety
    ///
    /// As cancel safe as `work`.
    pub async fn interruptible<F: Future>(&self, work: F) -> Result<F::Output, Interrupted> {
        let listener = listener();
        if let Some(output) = listener.stopped.run_until_cancelled(work).await {
            return Ok(output);
        }
        let first = lock(&listener.received).signals.first().copied();
        let (signal, at) = first.unwrap_or((Signal::Term, Instant::now()));
        let stopped = Interrupted {
            by: InterruptSource::Signal(signal),
            code: interrupted_code(),
        };
        info!(
            source = %stopped.by,
            ago = ?at.elapsed(),
            exit_code = stopped.code,
            "stop requested before the first chunk: gave up the work before the run"
        );
        Err(stopped)
    }
}

/// A stop request came before the run: the work given to
/// [`Shutdown::interruptible`] was given up, and nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stopped by {by} before the run")]
pub struct Interrupted {
    by: InterruptSource,
    code: u8,
}

impl Interrupted {
    /// What asked to stop.
    pub fn source(&self) -> &InterruptSource {
        &self.by
    }

    /// The interrupted exit code ([`Shutdown::interrupted_exit_code`]).
    pub fn code(&self) -> u8 {
        self.code
    }

    /// [`code`](Self::code), ready to return from `main`.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }
}
