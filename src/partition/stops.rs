//! A task's stop requests, heard once for the whole task and relayed to
//! each run it starts (a partition's, the completion step's), so that a
//! request that comes between two runs is not lost, and a second signal
//! still skips the drain of the run in hand.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::shutdown::{self, InterruptSource, Signal, StopSource};

/// Listens to the task's stop sources for as long as it lives.
#[derive(Debug)]
pub(super) struct Stops {
    requests: watch::Sender<Vec<InterruptSource>>,
    stopped: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
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
        sources: Vec<Box<dyn StopSource>>,
    ) -> Result<Self, Error> {
        let (requests, _) = watch::channel(Vec::new());
        let stopped = CancellationToken::new();
        let mut all = shutdown::built_in(signals, max_runtime)?;
        all.extend(sources);
        let tasks = all
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
        Ok(Self {
            requests,
            stopped,
            tasks,
        })
    }

    /// Whether a stop was requested.
    pub(super) fn requested(&self) -> bool {
        self.stopped.is_cancelled()
    }

    /// The first request, if any.
    pub(super) fn first(&self) -> Option<InterruptSource> {
        self.requests.borrow().first().cloned()
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

    /// A stop source for one run: every request, past and future, in order.
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
    requests: watch::Receiver<Vec<InterruptSource>>,
    next: usize,
}

#[async_trait::async_trait]
impl StopSource for Relay {
    async fn next(&mut self) -> Option<InterruptSource> {
        loop {
            {
                let all = self.requests.borrow_and_update();
                if let Some(request) = all.get(self.next) {
                    self.next += 1;
                    return Some(request.clone());
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
            relay.next().await,
            Some(InterruptSource::Requested("queue".into()))
        );
        // The later one comes through too, in order.
        assert_eq!(
            relay.next().await,
            Some(InterruptSource::MaxRuntime(Duration::from_secs(5)))
        );
        assert!(!stops.sleep(Duration::from_secs(1)).await);
    }
}
