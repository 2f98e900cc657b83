//! A task's stop requests, heard once for the whole task and relayed to
//! each run it starts (a partition's, the completion step's), so that a
//! request that comes between two runs is not lost, and a second signal
//! still skips the drain of the run in hand.
//!
//! Signals reach every run from the process's listener directly (a run
//! hears those received before it started too); the relay carries the
//! other sources ([`max_runtime`](super::PartitionedRunner::max_runtime),
//! stop sources), and the task hears both, to stop claiming partitions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::shutdown::{
    self, InterruptSource, MaxRuntime, Signal, SignalSink, StopRequest, StopSource,
};

/// Listens to the task's stop sources for as long as it lives.
pub(super) struct Stops {
    requests: watch::Sender<Vec<StopRequest>>,
    stopped: CancellationToken,
    /// Told of the process's signals (kept alive here: the listener holds
    /// it weakly).
    signals: Arc<TaskSignals>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Stops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stops")
            .field("requests", &self.requests.borrow().len())
            .field("stopped", &self.stopped.is_cancelled())
            .field("signals_seen", &self.signals.seen.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The process's stop signals, as the task's requests.
struct TaskSignals {
    requests: watch::Sender<Vec<StopRequest>>,
    stopped: CancellationToken,
    /// The last signal's sequence number seen (the listener tells a sink of
    /// the signals received before it attached, and may tell one twice).
    seen: AtomicU64,
}

impl SignalSink for TaskSignals {
    fn signal(&self, seq: u64, signal: Signal, _at: std::time::Instant) {
        if self.seen.fetch_max(seq, Ordering::SeqCst) >= seq {
            return;
        }
        self.requests
            .send_modify(|all| all.push(InterruptSource::Signal(signal).into()));
        self.stopped.cancel();
    }
}

impl Stops {
    /// Installs the signal handlers now and starts listening to every source.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming a signal whose handler cannot be installed.
    pub(super) fn listen(
        signals: &[Signal],
        max_runtime: Option<Duration>,
        mut sources: Vec<Box<dyn StopSource>>,
    ) -> Result<Self, Error> {
        shutdown::install(signals)?;
        let (requests, _) = watch::channel(Vec::new());
        let stopped = CancellationToken::new();
        if let Some(limit) = max_runtime {
            sources.push(Box::new(MaxRuntime::new(limit)));
        }
        let tasks = sources
            .into_iter()
            .map(|mut source| {
                let (requests, stopped) = (requests.clone(), stopped.clone());
                tokio::spawn(async move {
                    while let Some(request) = source.next().await {
                        requests.send_modify(|all| all.push(request));
                        stopped.cancel();
                    }
                })
            })
            .collect();
        let signals = Arc::new(TaskSignals {
            requests: requests.clone(),
            stopped: stopped.clone(),
            seen: AtomicU64::new(0),
        });
        shutdown::attach(signals.clone());
        Ok(Self {
            requests,
            stopped,
            signals,
            tasks,
        })
    }

    /// Whether a stop was requested.
    pub(super) fn requested(&self) -> bool {
        self.stopped.is_cancelled()
    }

    /// What asked first, if anything did.
    pub(super) fn first(&self) -> Option<InterruptSource> {
        self.requests.borrow().first().map(|r| r.source.clone())
    }

    /// Completes when a stop is requested.
    pub(super) async fn wait(&self) {
        self.stopped.cancelled().await;
    }

    /// Sleeps for `delay`; `false` when a stop request cut it short.
    pub(super) async fn sleep(&self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.wait() => false,
        }
    }

    /// A stop source for one run: every request but signals (which the run
    /// hears itself), past and future, in order.
    pub(super) fn relay(&self) -> Relay {
        Relay {
            requests: self.requests.subscribe(),
            next: 0,
        }
    }
}

impl Drop for Stops {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The task's stop requests, as one run's stop source.
pub(super) struct Relay {
    requests: watch::Receiver<Vec<StopRequest>>,
    next: usize,
}

#[async_trait::async_trait]
impl StopSource for Relay {
    async fn next(&mut self) -> Option<StopRequest> {
        loop {
            {
                let all = self.requests.borrow_and_update();
                while let Some(request) = all.get(self.next) {
                    self.next += 1;
                    if !matches!(request.source, InterruptSource::Signal(_)) {
                        return Some(request.clone());
                    }
                }
            }
            self.requests.changed().await.ok()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::FutureSource;

    #[tokio::test(start_paused = true)]
    async fn a_run_hears_requests_made_before_it_started() {
        let stops = Stops::listen(
            &[],
            Some(Duration::from_secs(5)),
            vec![Box::new(FutureSource::new("queue".into(), async {}))],
        )
        .unwrap();
        stops.wait().await;
        assert!(stops.requested());
        assert_eq!(
            stops.first(),
            Some(InterruptSource::Requested("queue".into()))
        );
        let mut relay = stops.relay();
        assert_eq!(
            relay.next().await.map(|r| r.source),
            Some(InterruptSource::Requested("queue".into()))
        );
        // The later one comes through too, in order.
        assert_eq!(
            relay.next().await.map(|r| r.source),
            Some(InterruptSource::MaxRuntime(Duration::from_secs(5)))
        );
        assert!(!stops.sleep(Duration::from_secs(1)).await);
    }
}
