//! A run's finish: the final flush and checkpoint, which records how the
//! run ended and releases the lease; and the release of a run that cannot
//! checkpoint where it stands.

use std::time::Duration;

use tokio::time::{timeout_at, Instant};
use tracing::{error, warn};

use super::chunks::End;
use super::interrupts::Interrupts;
use super::run::Run;
use super::session::Session;
use crate::checkpoint::Status;
use crate::error::Error;
use crate::exit::{Outcome, Position};
use crate::job::Job;
use crate::retry::Backoff;
use crate::store::StoreError;

impl<J: Job> Run<'_, J> {
    /// Records how the chunk loop ended in the final checkpoint and
    /// releases the lease; returns the run's outcome.
    ///
    /// # Errors
    ///
    /// The job's error when it failed (even if its checkpoint was not saved
    /// either: that is logged); [`Error::CheckpointNotSaved`] when the final
    /// checkpoint could not be saved by the end of the grace period; a
    /// failed final flush.
    pub(super) async fn finish(
        mut self,
        end: End,
        position: &mut Option<Position>,
    ) -> Result<Outcome, Error> {
        // From here the run writes its own end; the watchdog waits for it.
        self.interrupts.finishing().await;
        let (status, outcome) = match end {
            End::Completed => (Status::Completed, Ok(Outcome::Completed)),
            End::Interrupted => {
                let source = self
                    .interrupts
                    .source()
                    .ok_or_else(|| Error::Config("interrupted without a source".into()))?;
                self.session.totals.interruptions += 1;
                self.metrics.interrupted(&source.to_string());
                (
                    Status::Interrupted {
                        source: source.to_string(),
                    },
                    Ok(Outcome::Interrupted(source)),
                )
            }
            End::Failed(e) => (failed(&e), Err(e)),
        };
        let started = Instant::now();
        match (self.save_final(status).await, outcome) {
            (Ok(()), outcome) => {
                self.stats.checkpoints += 1;
                self.metrics.checkpoint(started.elapsed(), true);
                self.log_checkpoint();
                *position = Some(Position {
                    cursor: Box::new(self.cursor),
                    state: Box::new(self.state),
                });
                outcome
            }
            (Err(save_error), Err(job_error)) => {
                error!(job = %self.session.key.short(), error = %save_error, "the failed run's checkpoint was not saved either");
                Err(job_error)
            }
            (Err(save_error), Ok(_)) => Err(save_error),
        }
    }

    /// Flushes the job and saves the final checkpoint, releasing the lease.
    ///
    /// After a stop request both must be done by the end of the grace
    /// period. Otherwise the flush takes as long as it takes. Transient store
    /// errors are retried with backoff from 50 ms up to 2 s until the end of
    /// the grace period (without a stop request: for as long as one); a
    /// refusal or a loss ([`StoreError::Refused`], [`StoreError::Lost`]) is
    /// not retried: it is recorded on the last checkpoint if the store takes
    /// that.
    async fn save_final(&mut self, status: Status) -> Result<(), Error> {
        let retry_for = self.budget.grace;
        let deadline = self.interrupts.final_deadline();
        let flushed = match deadline {
            Some(deadline) => timeout_at(deadline, self.job.flush()).await,
            None => Ok(self.job.flush().await),
        };
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                // The output since the last checkpoint is not durable: record
                // the failure on the last checkpoint, which it does not cover.
                let e = Error::Job {
                    during: "flush".into(),
                    source,
                };
                let recorded = failed_after(&status, "the final flush failed too", &e);
                release(&mut self.session, recorded, &self.interrupts, retry_for).await;
                return Err(e);
            }
            Err(_) => return Err(self.session.not_saved(timed_out(&self.session, "flush"))),
        }
        let deadline = deadline.unwrap_or_else(|| Instant::now() + retry_for);
        let step = self.job.step(&self.cursor);
        let mut backoff =
            Backoff::new(Duration::from_millis(50), Duration::from_secs(2)).until(deadline);
        loop {
            match timeout_at(
                deadline,
                self.session
                    .save::<J>((&self.cursor, &self.state, step), status.clone(), true),
            )
            .await
            {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(Error::Store(e))) if e.is_transient() => {
                    let Some(delay) = backoff.next_delay() else {
                        return Err(self.session.not_saved(e));
                    };
                    warn!(job = %self.session.key.short(), error = %e, retry_in = ?delay, "final checkpoint failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Ok(Err(e @ Error::Job { .. })) => {
                    release(&mut self.session, failed(&e), &self.interrupts, retry_for).await;
                    return Err(e);
                }
                Ok(Err(e @ Error::Store(StoreError::Refused { .. } | StoreError::Lost { .. }))) => {
                    // Retrying cannot help; the last checkpoint may still take
                    // the failure (a store that refuses only this save's data,
                    // a lost transaction beside which plain writes still work).
                    let recorded =
                        failed_after(&status, "the final checkpoint could not be saved", &e);
                    release(&mut self.session, recorded, &self.interrupts, retry_for).await;
                    return Err(e);
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(self.session.not_saved(timed_out(&self.session, "save"))),
            }
        }
    }
}

/// The status a failed run records.
pub(super) fn failed(error: &Error) -> Status {
    Status::Failed {
        message: error.to_string(),
    }
}

/// The status recording `error` as the end of a run that was to end as
/// `status`: a failed run's own message comes first, then `what` happened.
fn failed_after(status: &Status, what: &str, error: &Error) -> Status {
    match status {
        Status::Failed { message } => Status::Failed {
            message: format!("{message}; then {what}: {error}"),
        },
        _ => failed(error),
    }
}

/// Records `status` as the run's end on the last saved checkpoint and
/// releases the lease, for a run that cannot checkpoint where it stands;
/// gives up at the end of the grace period, or after `retry_for` without a
/// stop request. Logs if even that fails: the lease then expires by itself.
pub(super) async fn release(
    session: &mut Session,
    status: Status,
    interrupts: &Interrupts,
    retry_for: Duration,
) {
    interrupts.finishing().await;
    let deadline = interrupts
        .final_deadline()
        .unwrap_or_else(|| Instant::now() + retry_for);
    match timeout_at(deadline, session.release(status)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            error!(job = %session.key.short(), error = %e, "could not record the run's end in the checkpoint")
        }
        Err(_) => {
            error!(job = %session.key.short(), "could not record the run's end in the checkpoint before the grace period ran out")
        }
    }
}

fn timed_out(session: &Session, operation: &'static str) -> StoreError {
    StoreError::Io {
        store: session.location.clone(),
        key: session.key.to_string(),
        operation,
        source: "the grace period ran out".into(),
    }
}
