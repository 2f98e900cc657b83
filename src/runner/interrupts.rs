//! A run's stop requests: the first starts the drain, a repeated signal
//! skips it; the deadlines the budget sets after the first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::budget::Budget;
use crate::error::Error;
use crate::shutdown::{self, InterruptSource, Signal, StopSource};

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
    /// Whether a signal has asked to stop: a second one skips the drain.
    signalled: Arc<AtomicBool>,
    budget: Budget,
}

impl Trigger {
    /// Records a stop request. The first starts the drain. Only a repeated
    /// signal (a person pressing Ctrl-C twice, a second SIGTERM) skips it:
    /// the platform's SIGTERM after its own notice, after `max_runtime` or a
    /// `stop_on` future is the same stop, and the drain goes on.
    fn fire(&self, source: InterruptSource) {
        let signal = matches!(source, InterruptSource::Signal(_));
        let repeated_signal = signal && self.signalled.swap(true, Ordering::SeqCst);
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
        } else if repeated_signal {
            if !self.hard.is_cancelled() {
                warn!(%source, "second stop request: abandoning the chunk in hand and checkpointing what is finished");
                self.hard.cancel();
            }
        } else if let Some(first) = self.first.get() {
            info!(
                %source,
                first = %first.source,
                "stop requested again, by another source: the same stop; the drain goes on"
            );
        }
    }
}

/// Listens for stop requests for the length of one run.
#[derive(Debug)]
pub(super) struct Interrupts {
    trigger: Trigger,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Interrupts {
    /// Installs the signal handlers now (before any chunk runs) and starts
    /// listening to every source.
    pub(super) fn listen(
        signals: &[Signal],
        max_runtime: Option<Duration>,
        sources: Vec<Box<dyn StopSource>>,
        budget: Budget,
    ) -> Result<Self, Error> {
        let trigger = Trigger {
            stop: CancellationToken::new(),
            hard: CancellationToken::new(),
            first: Arc::new(OnceLock::new()),
            signalled: Arc::new(AtomicBool::new(false)),
            budget,
        };
        let mut all = shutdown::built_in(signals, max_runtime)?;
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

    pub(super) fn stop_token(&self) -> CancellationToken {
        self.trigger.stop.clone()
    }

    pub(super) fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    pub(super) fn stop_requested(&self) -> bool {
        self.trigger.stop.is_cancelled()
    }

    pub(super) fn chunk_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    pub(super) fn source(&self) -> Option<InterruptSource> {
        self.trigger.first.get().map(|s| s.source.clone())
    }

    /// When the final checkpoint must be written by: the end of the grace period.
    pub(super) fn final_deadline(&self) -> Option<Instant> {
        self.trigger
            .first
            .get()
            .map(|s| s.at + self.trigger.budget.grace)
    }

    /// Completes when the chunk in hand must be cancelled: at the drain
    /// deadline after a stop request, or at once on a second request.
    pub(super) async fn abandon_point(&self) {
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
    pub(super) fn cancel_chunk(&self) -> Duration {
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
    use crate::shutdown::FutureSource;

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

        // The max-runtime timer is another kind of request: the same stop.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!ints.trigger.hard.is_cancelled());
        assert_eq!(
            ints.source(),
            Some(InterruptSource::Requested("queue".into()))
        );
    }

    fn trigger() -> Trigger {
        Trigger {
            stop: CancellationToken::new(),
            hard: CancellationToken::new(),
            first: Arc::new(OnceLock::new()),
            signalled: Arc::new(AtomicBool::new(false)),
            budget: Budget::new(Duration::from_secs(10), None).unwrap(),
        }
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
            let t = trigger();
            t.fire(first.clone());
            t.fire(term());
            assert!(
                t.stop.is_cancelled() && !t.hard.is_cancelled(),
                "{first} then SIGTERM"
            );
            assert_eq!(t.first.get().map(|s| s.source.clone()), Some(first));
            // A second SIGTERM is a person insisting.
            t.fire(term());
            assert!(t.hard.is_cancelled());
        }

        // Ctrl-C twice; SIGTERM then SIGINT.
        for second in [InterruptSource::Signal(Signal::Int), term()] {
            let t = trigger();
            t.fire(term());
            assert!(!t.hard.is_cancelled());
            t.fire(second);
            assert!(t.hard.is_cancelled());
        }

        // A notice after a SIGTERM changes nothing either.
        let t = trigger();
        t.fire(term());
        t.fire(notice());
        assert!(!t.hard.is_cancelled());
    }
}
