//! The chunk loop: plan a chunk, process it (renewing the lease while it
//! runs, cancelling it at the abandon point), advance the cursor, and
//! checkpoint when the policy or the lease says so.

use std::future::Future;
use std::time::Duration;

use tokio::time::{timeout, Instant};
use tracing::{error, warn};

use super::finish::{failed, release};
use super::interrupts::Interrupts;
use super::run::Run;
use super::session::Session;
use crate::checkpoint::Status;
use crate::error::{BoxError, Error};
use crate::job::{Cancelled, ChunkContext, Job};
use crate::store::StoreError;

/// How the chunk loop ended, for [`Run::finish`] to record.
pub(super) enum End {
    /// [`Job::next_chunk`] found no more work.
    Completed,
    /// A stop request: no new chunk was started, or the chunk in hand was abandoned.
    Interrupted,
    /// The job failed; the state is rolled back to the last finished chunk.
    Failed(Error),
}

impl<J: Job> Run<'_, J> {
    /// Processes chunks until the job completes, a stop request comes, or the
    /// job fails; checkpoints per the policy, and whenever the lease is due
    /// for renewal.
    ///
    /// # Errors
    ///
    /// Ends the run at once, without a final checkpoint, when another runner
    /// took the job over ([`StoreError::Conflict`]: fenced), or when a
    /// periodic checkpoint fails for good (after recording the failure on
    /// the last checkpoint and releasing the lease).
    pub(super) async fn run_chunks(&mut self) -> Result<End, Error> {
        let stop = self.interrupts.stop_token();
        let mut ctx = ChunkContext::new(self.interrupts.cancel_token(), stop.clone());
        let mut since_chunks = 0u64;
        let mut since = Instant::now();
        loop {
            if self.interrupts.stop_requested() {
                return Ok(End::Interrupted);
            }
            // No chunk starts after a stop request: what it plans is of no use.
            let planned = tokio::select! {
                biased;
                planned = self.job.next_chunk(&self.cursor) => planned,
                () = stop.cancelled() => return Ok(End::Interrupted),
            };
            let chunk = match planned {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return Ok(End::Completed),
                Err(source) => {
                    return Ok(End::Failed(Error::Job {
                        during: format!("next_chunk at cursor {:?}", self.cursor),
                        source,
                    }))
                }
            };
            if self.interrupts.stop_requested() {
                return Ok(End::Interrupted);
            }
            ctx.set_seq(self.stats.chunks);
            let rollback = self.state.clone();
            let result = run_chunk(
                self.job.process(&chunk, &mut self.state, &ctx),
                &self.interrupts,
                &mut self.session,
            )
            .await;
            match result {
                ChunkResult::Done(Ok(())) => {}
                ChunkResult::Done(Err(source)) if !abandoned(&self.interrupts, &*source) => {
                    self.state = rollback;
                    return Ok(End::Failed(Error::Job {
                        during: format!("process (chunk from cursor {:?})", chunk.start()),
                        source,
                    }));
                }
                ChunkResult::Done(Err(_)) | ChunkResult::Dropped => {
                    self.state = rollback;
                    self.stats.abandoned_chunk = true;
                    warn!(job = %self.session.key.short(), cursor = ?chunk.start(), "chunk abandoned; the checkpoint stays at the last finished chunk");
                    return Ok(End::Interrupted);
                }
                ChunkResult::Fenced(e) => return Err(e),
            }
            self.stats.chunks += 1;
            self.stats.items += chunk.items();
            self.session.record_chunk(chunk.items());
            self.progress.set(self.session.totals.items);
            self.cursor = chunk.into_next();
            since_chunks += 1;

            // One clock read per chunk, and none when nothing is timed.
            let now = self.timed.then(Instant::now);
            let lease_due =
                matches!((self.session.renew_at(), now), (Some(at), Some(now)) if now >= at);
            let elapsed = now.map_or(Duration::ZERO, |now| now - since);
            if lease_due || self.policy.is_due(since_chunks, elapsed) {
                self.checkpoint().await?;
                since_chunks = 0;
                since = Instant::now();
            }
        }
    }

    /// A periodic checkpoint: flushes the job and saves the cursor and
    /// state, renewing the lease. A transient store error, or a store still
    /// busy at the drain deadline, is logged and left to the next one.
    ///
    /// # Errors
    ///
    /// Fenced ([`StoreError::Conflict`]): another runner has the job; nothing
    /// more is written. Any other lasting error (a failed flush, a cursor
    /// that cannot be encoded, a refused save) after recording it on the
    /// last checkpoint and releasing the lease.
    async fn checkpoint(&mut self) -> Result<(), Error> {
        let (job, session) = (&mut self.job, &mut self.session);
        let (cursor, state) = (&self.cursor, &self.state);
        let checkpoint = async {
            job.flush().await.map_err(|source| Error::Job {
                during: "flush".into(),
                source,
            })?;
            session
                .save::<J>(cursor, state, Status::Running, false)
                .await
        };
        // A store that hangs must not eat the grace period.
        let saved = tokio::select! {
            saved = checkpoint => Some(saved),
            () = self.interrupts.abandon_point() => None,
        };
        match saved {
            Some(Ok(())) => {
                self.stats.checkpoints += 1;
                self.log_checkpoint();
            }
            Some(Err(Error::Store(e))) if e.is_transient() => {
                warn!(job = %self.session.key.short(), error = %e, "periodic checkpoint failed; will retry at the next one");
            }
            // Fenced: another runner has the job; write nothing more.
            Some(Err(e @ Error::Store(StoreError::Conflict { .. }))) => return Err(e),
            Some(Err(e)) => {
                release(
                    &mut self.session,
                    failed(&e),
                    &self.interrupts,
                    self.budget.grace,
                )
                .await;
                return Err(e);
            }
            None => {
                warn!(job = %self.session.key.short(), "periodic checkpoint abandoned at the drain deadline")
            }
        }
        Ok(())
    }
}

enum ChunkResult {
    Done(Result<(), BoxError>),
    /// Cancelled and not returned in time: dropped.
    Dropped,
    /// A lease renewal found that another runner took the job over.
    Fenced(Error),
}

/// Whether a chunk's error means it gave up on a stop request, not that it failed.
fn abandoned(interrupts: &Interrupts, error: &(dyn std::error::Error + 'static)) -> bool {
    let cancelled = error.is::<Cancelled>()
        || error
            .downcast_ref::<std::io::Error>()
            .and_then(|e| e.get_ref())
            .is_some_and(|inner| inner.is::<Cancelled>());
    interrupts.chunk_cancelled() || (interrupts.stop_requested() && cancelled)
}

/// Runs one chunk: renews the lease while it runs, cancels it at the abandon
/// point and drops it if it does not return within the cooperative window.
///
/// A renewal runs concurrently with the chunk (which may hold what the
/// store's saves need, e.g. its transaction) and gives way to the abandon
/// point like the chunk.
async fn run_chunk(
    work: impl Future<Output = Result<(), BoxError>>,
    interrupts: &Interrupts,
    session: &mut Session,
) -> ChunkResult {
    tokio::pin!(work);
    let mut finished = None;
    loop {
        let renew_at = session.renew_at();
        tokio::select! {
            biased;
            result = &mut work => return ChunkResult::Done(result),
            () = interrupts.abandon_point() => break,
            () = sleep_until_some(renew_at) => {}
        }
        let renewed = {
            let renewal = session.renew();
            tokio::pin!(renewal);
            loop {
                tokio::select! {
                    biased;
                    renewed = &mut renewal => break Some(renewed),
                    result = &mut work, if finished.is_none() => finished = Some(result),
                    () = interrupts.abandon_point() => break None,
                }
            }
        };
        match renewed {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                interrupts.cancel_chunk();
                error!(job = %session.key.short(), error = %e, "lost the job's lease: stopping at once, without writing");
                return ChunkResult::Fenced(e);
            }
            None => {
                warn!(job = %session.key.short(), "lease renewal abandoned at the drain deadline")
            }
        }
        if let Some(result) = finished {
            return ChunkResult::Done(result);
        }
        if renewed.is_none() {
            break;
        }
    }
    let window = interrupts.cancel_chunk();
    match timeout(window, work).await {
        Ok(result) => ChunkResult::Done(result),
        Err(_) => {
            warn!(
                ?window,
                "cancelled chunk did not return in time: dropped it"
            );
            ChunkResult::Dropped
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
