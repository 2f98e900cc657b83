//! Progress lines between checkpoints: rate, and percentage and ETA when the
//! job knows its size.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::info;

use super::session::Session;

/// A run's progress: items done over every run, the task that logs them,
/// and the figures checkpoint lines carry.
pub(super) struct Progress {
    done: Arc<Counter>,
    _reporter: Reporter,
    /// When the run's chunks started: rates are measured from here.
    started: Instant,
    /// The job's size in items, if known.
    total: Option<u64>,
}

impl Progress {
    /// Starts counting from `done` items and logging every `every` (`None`: never).
    pub(super) fn start(
        job: String,
        done: u64,
        total: Option<u64>,
        every: Option<Duration>,
    ) -> Self {
        let started = Instant::now();
        let counter = Arc::new(Counter::default());
        counter.set(done);
        let reporter = Reporter::start(job, counter.clone(), total, every);
        Self {
            done: counter,
            _reporter: reporter,
            started,
            total,
        }
    }

    /// Sets the items done over every run.
    pub(super) fn set(&self, done: u64) {
        self.done.set(done);
    }

    /// Logs the checkpoint `session` just saved, with the rate of this
    /// run's `items` and the job's progress.
    pub(super) fn log_checkpoint(&self, session: &Session, items: u64) {
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { items as f64 / secs } else { 0.0 };
        let done = session.totals.items;
        let progress = describe(done, self.total, rate);
        info!(
            job = %session.key.short(),
            step = session.saved_step().map(tracing::field::display),
            version = session.stored.unwrap_or_default(),
            chunks = session.totals.chunks,
            items = done,
            rate = format!("{rate:.0}/s"),
            progress = progress.as_str(),
            "checkpoint saved"
        );
    }
}

/// Items done, shared by the run loop (one relaxed store per chunk) and the
/// task that logs.
#[derive(Debug, Default)]
struct Counter(AtomicU64);

impl Counter {
    fn set(&self, items: u64) {
        self.0.store(items, Ordering::Relaxed);
    }
}

/// Logs progress every `every` until dropped.
struct Reporter {
    task: Option<JoinHandle<()>>,
}

impl Reporter {
    /// `done` counts items over every run; `total` is the job's size, if known.
    fn start(job: String, done: Arc<Counter>, total: Option<u64>, every: Option<Duration>) -> Self {
        let task = every.map(|every| {
            tokio::spawn(async move {
                let mut last = (Instant::now(), done.0.load(Ordering::Relaxed));
                let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
                loop {
                    ticks.tick().await;
                    let now = (Instant::now(), done.0.load(Ordering::Relaxed));
                    let secs = (now.0 - last.0).as_secs_f64();
                    let rate = if secs > 0.0 {
                        (now.1 - last.1) as f64 / secs
                    } else {
                        0.0
                    };
                    last = now;
                    info!(
                        job = %crate::key::short(&job),
                        items = now.1,
                        rate = format!("{rate:.0}/s"),
                        progress = describe(now.1, total, rate).as_str(),
                        "progress"
                    );
                }
            })
        });
        Self { task }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// `"45.2%, eta 310s"`, `"45.2%"` at a standstill, or `"unknown size"`.
fn describe(done: u64, total: Option<u64>, rate: f64) -> String {
    let Some(total) = total else {
        return "unknown size".to_owned();
    };
    let pct = if total == 0 {
        100.0
    } else {
        100.0 * done as f64 / total as f64
    };
    if rate > 0.0 {
        let eta = total.saturating_sub(done) as f64 / rate;
        format!("{pct:.1}%, eta {eta:.0}s")
    } else {
        format!("{pct:.1}%")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_progress() {
        assert_eq!(describe(5, None, 1.0), "unknown size");
        assert_eq!(describe(250, Some(1000), 50.0), "25.0%, eta 15s");
        assert_eq!(describe(250, Some(1000), 0.0), "25.0%");
        assert_eq!(describe(0, Some(0), 0.0), "100.0%");
    }
}
