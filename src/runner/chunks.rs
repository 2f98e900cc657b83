//! The chunk loop: plan a chunk, process it (renewing the lease while it
//! runs, cancelling it at the abandon point), advance the cursor, and
//! checkpoint when the policy or the lease says so.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{timeout, Instant};
use tracing::{error, info, warn, Instrument};

use super::clock::Reading;
use super::finish::{failed, release};
use super::interrupts::Interrupts;
use super::run::Run;
use super::session::Session;
use crate::checkpoint::{now_ms, SkippedChunk, Status};
use crate::codec::CodecError;
use crate::error::{BoxError, Error};
use crate::job::{is_transient, Cancelled, Chunk, ChunkContext, ChunkPanicked, Job};
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
    /// periodic checkpoint or a lease renewal fails for good (a refusal:
    /// after recording the failure on the last checkpoint, if the store
    /// takes that, and releasing the lease).
    pub(super) async fn run_chunks(&mut self) -> Result<End, Error> {
        let stop = self.interrupts.stop_token();
        let mut ctx = ChunkContext::new(self.interrupts.cancel_token(), stop.clone())
            .with_times(self.times.clone());
        let mut since_chunks = 0u64;
        let mut since = Instant::now();
        self.clock.restart(since);
        if self.session.redrive {
            if let Some(end) = self.redrive(&mut ctx).await? {
                return Ok(end);
            }
        }
        loop {
            // After a stop request, only chunks the job already started
            // (a concurrent job's in-flight chunks) are still handed out.
            if self.interrupts.stop_requested() && self.job.chunks_in_flight() == 0 {
                return Ok(End::Interrupted);
            }
            // No chunk starts after a stop request: what it plans is of no use.
            let planned = {
                let mut plan = self.job.next_chunk(&self.cursor);
                match ready_now(&mut plan).await {
                    Some(planned) => planned,
                    None => tokio::select! {
                        biased;
                        planned = plan => planned,
                        () = stop.cancelled() => return Ok(End::Interrupted),
                    },
                }
            };
            let chunk = match planned {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return Ok(self.complete().await),
                Err(source) => {
                    return Ok(End::Failed(Error::Job {
                        during: format!("next_chunk at cursor {:?}", self.cursor),
                        source,
                    }))
                }
            };
            if self.interrupts.stop_requested() && self.job.chunks_in_flight() == 0 {
                return Ok(End::Interrupted);
            }
            ctx.set_seq(self.stats.chunks);
            let span = tracing::debug_span!(
                "chunk",
                seq = self.stats.chunks,
                step = self
                    .session
                    .step_name(self.job.step(chunk.start()))
                    .map(tracing::field::display)
            );
            let items = chunk.items();
            let now = match self
                .process_chunk(&chunk, &mut ctx)
                .instrument(span)
                .await?
            {
                Processed::Done => {
                    self.stats.chunks += 1;
                    self.stats.items += items;
                    self.session.record_chunk(items);
                    self.progress.set(self.session.totals.items);
                    self.metrics.chunk(items);
                    self.attempt_ended(false)
                }
                Processed::Failed { error, attempts } => {
                    if let Err(e) = self.skip(&chunk, error, attempts) {
                        return Ok(End::Failed(e));
                    }
                    None
                }
                Processed::Interrupted => return Ok(End::Interrupted),
            };
            self.cursor = chunk.into_next();
            since_chunks += 1;

            // The lease and a time-based policy are checked when the clock
            // is read: at most about a millisecond late (`ChunkClock`).
            let lease_due =
                matches!((self.session.renew_at(), now), (Some(at), Some(now)) if now >= at);
            let elapsed = now.map_or(Duration::ZERO, |now| now - since);
            if lease_due || self.policy.is_due(since_chunks, elapsed) {
                self.close_batch();
                self.checkpoint().await?;
                since_chunks = 0;
                since = Instant::now();
                self.clock.restart(since);
            }
        }
    }

    /// An attempt at a chunk ended: times it, at once when `now` (a failed
    /// or abandoned attempt), else with the batch it ends, if it ends one.
    /// Returns when the clock was read, if it was.
    #[inline]
    fn attempt_ended(&mut self, now: bool) -> Option<Instant> {
        let reading = if now {
            Some(self.clock.chunk_ended_now())
        } else {
            self.clock.chunk_ended()
        }?;
        self.note(reading);
        Some(reading.now)
    }

    /// Times the chunks ended since the clock was last read (at the loop's
    /// end: a batch of short chunks may hold a long one).
    pub(super) fn close_batch(&mut self) {
        if self.clock.pending() {
            let reading = self.clock.read();
            self.note(reading);
        }
    }

    /// Adds a reading of the clock to the chunks' durations and metrics.
    fn note(&mut self, reading: Reading) {
        if !self.times.timed_by_job() {
            self.times
                .note_batch(&mut self.durations, reading.chunks, reading.took);
        }
        self.metrics.chunks_took(reading.chunks, reading.took);
    }

    /// Processes the skipped chunks again, in the list's order, before the
    /// loop goes on from the cursor; a chunk that succeeds leaves the list
    /// (and counts as finished), one that fails again goes to the list's
    /// back with its new error. Then checkpoints, with the redrive done.
    ///
    /// Returns the loop's end when a stop request or a failure to decode a
    /// skipped chunk's cursors ends the run first.
    ///
    /// # Errors
    ///
    /// As [`run_chunks`](Self::run_chunks).
    async fn redrive(&mut self, ctx: &mut ChunkContext) -> Result<Option<End>, Error> {
        let skipped = self.session.skipped.clone();
        info!(job = %self.session.key.short(), chunks = skipped.len(), "redriving the skipped chunks, then going on from the cursor");
        ctx.set_redrive(true);
        for skip in skipped {
            if self.interrupts.stop_requested() {
                return Ok(Some(End::Interrupted));
            }
            let chunk = match decode_skipped::<J>(&skip) {
                Ok(chunk) => chunk,
                Err(e) => {
                    return Ok(Some(End::Failed(Error::BadCheckpoint {
                        store: self.session.location.clone(),
                        key: self.session.key.to_string(),
                        reason: e.into(),
                    })))
                }
            };
            ctx.set_seq(self.stats.chunks);
            let span = tracing::debug_span!(
                "redrive",
                seq = self.stats.chunks,
                step = self
                    .session
                    .step_name(self.job.step(chunk.start()))
                    .map(tracing::field::display)
            );
            let processed = self.process_chunk(&chunk, ctx).instrument(span).await?;
            let at = self.session.skipped.iter().position(|s| *s == skip);
            match processed {
                Processed::Done => {
                    if let Some(at) = at {
                        self.session.skipped.remove(at);
                    }
                    let items = chunk.items();
                    self.stats.chunks += 1;
                    self.stats.items += items;
                    self.stats.redriven += 1;
                    self.session.record_chunk(items);
                    self.progress.set(self.session.totals.items);
                    self.metrics.chunk(items);
                    self.attempt_ended(false);
                    info!(job = %self.session.key.short(), start = %skip.start_text, next = %skip.next_text, "redriven skipped chunk done");
                }
                Processed::Failed { error, attempts } => {
                    warn!(job = %self.session.key.short(), start = %skip.start_text, next = %skip.next_text, attempts, error = %error, "redriven skipped chunk failed again: this run skips it again");
                    // Skipped again, by this run, and to the back of the
                    // list: a redrive stopped before its end is taken up by
                    // the next run at the chunks it has not tried yet, not
                    // at this one again.
                    if let Some(at) = at {
                        let mut entry = self.session.skipped.remove(at);
                        entry.error = SkippedChunk::cut(job_error_text(&error));
                        entry.attempts = attempts;
                        entry.skipped_ms = now_ms();
                        entry.run_id = self.session.run_id();
                        self.skipped(entry);
                    }
                }
                Processed::Interrupted => return Ok(Some(End::Interrupted)),
            }
        }
        ctx.set_redrive(false);
        self.session.redrive = false;
        self.checkpoint().await?;
        Ok(None)
    }

    /// Skips `chunk`, which failed with `error` after `attempts` attempts,
    /// if the skip policy allows: records it for the next checkpoint.
    ///
    /// # Errors
    ///
    /// `error` when the policy does not allow the skip (past its limit, it
    /// says so), or the chunk's cursors cannot be encoded.
    fn skip(&mut self, chunk: &Chunk<J::Cursor>, error: Error, attempts: u32) -> Result<(), Error> {
        let skipped = self.session.skipped.len() as u64 + 1;
        let seen = self.session.totals.chunks + skipped;
        // A job of steps never skips its move from one step to the next.
        let transition =
            matches!(&error, Error::Job { source, .. } if crate::steps::is_transition(&**source));
        if transition || !self.skip.allows(skipped, seen) {
            if transition || !self.skip.skips_any() {
                return Err(error);
            }
            return Err(match error {
                Error::Job { during, source } => Error::Job {
                    during: format!(
                        "{during}, past the skip limit ({} chunks skipped and not redriven)",
                        skipped - 1
                    ),
                    source,
                },
                other => other,
            });
        }
        let codec = self.session.codec();
        let encode = |cursor: &J::Cursor| {
            codec.encode_checked(cursor).map_err(|e| Error::Job {
                during: "encoding a skipped chunk's cursor".into(),
                source: Box::new(e),
            })
        };
        let record = SkippedChunk {
            codec,
            start: encode(chunk.start())?,
            next: encode(chunk.next())?,
            start_text: format!("{:?}", chunk.start()),
            next_text: format!("{:?}", chunk.next()),
            items: chunk.items(),
            attempts,
            skipped_ms: now_ms(),
            run_id: self.session.run_id(),
            error: SkippedChunk::cut(job_error_text(&error)),
        };
        warn!(
            job = %self.session.key.short(),
            step = self.session.step_name(self.job.step(chunk.start())).map(tracing::field::display),
            start = %record.start_text,
            next = %record.next_text,
            attempts,
            error = %record.error,
            skipped,
            "chunk failed: skipped it (recorded in the checkpoint; `spotbatch redrive` processes it again)"
        );
        self.skipped(record);
        Ok(())
    }

    /// Counts a chunk this run skipped, recorded in the checkpoint as `record`.
    fn skipped(&mut self, record: SkippedChunk) {
        self.session.record_skip(record);
        self.stats.skipped += 1;
        self.metrics.skipped();
    }

    /// Records `e` as the run's end on the last saved checkpoint and
    /// releases the lease (within the grace period); returns `e`.
    async fn record_failure(&mut self, e: Error) -> Error {
        release(
            &mut self.session,
            failed(&e),
            &self.interrupts,
            self.budget.grace,
        )
        .await;
        e
    }

    /// The job's [`Job::complete`] hook, at the end of the chunks.
    async fn complete(&mut self) -> End {
        let rollback = self.state.clone();
        match self.job.complete(&self.cursor, &mut self.state).await {
            Ok(()) => End::Completed,
            Err(source) => {
                self.state = rollback;
                End::Failed(Error::Job {
                    during: "complete".into(),
                    source,
                })
            }
        }
    }

    /// Processes one chunk, retrying its transient failures per the retry
    /// policy; on failure or abandonment the state is what it was before.
    ///
    /// # Errors
    ///
    /// Fenced: a lease renewal found another runner had taken the job.
    async fn process_chunk(
        &mut self,
        chunk: &Chunk<J::Cursor>,
        ctx: &mut ChunkContext,
    ) -> Result<Processed, Error> {
        let rollback = self.state.clone();
        let mut backoff = None;
        loop {
            let result = {
                let mut work = CatchUnwind(self.job.process(chunk, &mut self.state, &*ctx));
                // Most chunks are done at their first poll, which then costs
                // no `select!` (biased: it would poll the chunk first too).
                // Polled here, not through `ready_now`: that future's type,
                // borrowing the job's, made `Runner::run` not provably `Send`.
                let first = std::future::poll_fn(|cx| {
                    Poll::Ready(match Pin::new(&mut work).poll(cx) {
                        Poll::Ready(output) => Some(output),
                        Poll::Pending => None,
                    })
                })
                .await;
                match first {
                    Some(result) => ChunkResult::Done(result),
                    None => run_chunk(work, &self.interrupts, &mut self.session).await,
                }
            };
            let source = match result {
                ChunkResult::Done(Ok(())) => return Ok(Processed::Done),
                ChunkResult::Done(Err(source)) if !abandoned(&self.interrupts, &*source) => {
                    self.attempt_ended(true);
                    source
                }
                ChunkResult::Done(Err(_)) | ChunkResult::Dropped => {
                    self.attempt_ended(true);
                    self.state = rollback;
                    self.stats.abandoned_chunk = true;
                    warn!(job = %self.session.key.short(), cursor = ?chunk.start(), "chunk abandoned; the checkpoint stays at the last finished chunk");
                    return Ok(Processed::Interrupted);
                }
                ChunkResult::Fenced(e) => return Err(e),
                ChunkResult::Refused(e) => {
                    self.state = rollback;
                    return Err(self.record_failure(e).await);
                }
            };
            self.state = rollback.clone();
            let backoff = backoff.get_or_insert_with(|| self.retry.start());
            let attempt = backoff.retries() + 1;
            let delay = (is_transient(&*source) && attempt < self.retry.max_attempts())
                .then(|| backoff.next_delay())
                .flatten();
            let failed = |source| Processed::Failed {
                error: Error::Job {
                    during: format!(
                        "process (chunk from cursor {:?}, attempt {attempt})",
                        chunk.start()
                    ),
                    source,
                },
                attempts: attempt,
            };
            let Some(delay) = delay else {
                return Ok(failed(source));
            };
            warn!(
                job = %self.session.key.short(),
                cursor = ?chunk.start(),
                attempt,
                error = %source,
                retry_in = ?delay,
                "chunk failed with a transient error; retrying"
            );
            self.stats.retries += 1;
            self.metrics.retry();
            ctx.set_attempt(attempt + 1);
            // A stop request ends the wait: no retry starts after one.
            let stop = self.interrupts.stop_token();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return Ok(Processed::Interrupted),
            }
            // The wait is no chunk's time.
            self.clock.restart(Instant::now());
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
        let step = job.step(cursor);
        let checkpoint = async {
            job.flush().await.map_err(|source| Error::Job {
                during: "flush".into(),
                source,
            })?;
            session
                .save::<J>((cursor, state, step), Status::Running, false)
                .await
        };
        // A store that hangs must not eat the grace period.
        let started = Instant::now();
        let saved = tokio::select! {
            saved = checkpoint => Some(saved),
            () = self.interrupts.abandon_point() => None,
        };
        match saved {
            Some(Ok(())) => {
                self.stats.checkpoints += 1;
                self.metrics.checkpoint(started.elapsed(), false);
                self.log_checkpoint();
            }
            Some(Err(Error::Store(e))) if e.is_transient() => {
                warn!(job = %self.session.key.short(), error = %e, "periodic checkpoint failed; will retry at the next one");
            }
            // Fenced: another runner has the job; write nothing more.
            Some(Err(e @ Error::Store(StoreError::Conflict { .. }))) => return Err(e),
            Some(Err(e)) => return Err(self.record_failure(e).await),
            None => {
                warn!(job = %self.session.key.short(), "periodic checkpoint abandoned at the drain deadline")
            }
        }
        Ok(())
    }
}

/// How [`Run::process_chunk`] ended.
enum Processed {
    Done,
    /// The chunk failed after `attempts` attempts; the state is rolled back.
    Failed {
        error: Error,
        attempts: u32,
    },
    /// Abandoned at the drain deadline, or stopped while waiting to retry.
    Interrupted,
}

/// The chunk a skipped chunk's record describes.
fn decode_skipped<J: Job>(skip: &SkippedChunk) -> Result<Chunk<J::Cursor>, CodecError> {
    let start = skip
        .codec
        .decode(&skip.start)
        .map_err(|e| e.of("skipped chunk's start"))?;
    let next = skip
        .codec
        .decode(&skip.next)
        .map_err(|e| e.of("skipped chunk's next"))?;
    Ok(Chunk::new(start, next).with_items(skip.items))
}

/// What a chunk's error says, without the runner's context.
fn job_error_text(error: &Error) -> String {
    match error {
        Error::Job { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// A future that turns a panic while it is polled into the chunk's error.
struct CatchUnwind<F>(F);

impl<F: Future<Output = Result<(), BoxError>> + Unpin> Future for CatchUnwind<F> {
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => Poll::Ready(Err(Box::new(ChunkPanicked::from_payload(payload)))),
        }
    }
}

enum ChunkResult {
    Done(Result<(), BoxError>),
    /// Cancelled and not returned in time: dropped.
    Dropped,
    /// A lease renewal found that another runner took the job over.
    Fenced(Error),
    /// The store refused a lease renewal for good ([`StoreError::Refused`]):
    /// the chunk was dropped.
    Refused(Error),
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
            Some(Err(e @ Error::Store(StoreError::Refused { .. }))) => {
                interrupts.cancel_chunk();
                error!(job = %session.key.short(), error = %e, "the store refused the lease renewal: stopping at once");
                return ChunkResult::Refused(e);
            }
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

/// `future`'s output if it is ready at its first poll: a job that plans its
/// chunks without waiting costs no `select!` against the stop.
async fn ready_now<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut *future).poll(cx) {
            Poll::Ready(output) => Some(output),
            Poll::Pending => None,
        })
    })
    .await
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
