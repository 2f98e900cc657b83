//! The `Job` trait a user implements, and the chunks it is cut into.

use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::process::ExitStatus;
use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{Checkpoint, StepInfo};
use crate::error::BoxError;
use crate::runner::chunk_times::ChunkTimes;
use crate::types::{TraceError, TypeDescription};

/// A batch job cut into chunks.
///
/// The runner asks [`next_chunk`](Job::next_chunk) where to go from the
/// cursor, has the chunk [`process`](Job::process)ed, moves the cursor to
/// [`Chunk::next`], and every so often calls [`flush`](Job::flush) and saves
/// the cursor and [`State`](Job::State) in a checkpoint. A new run starts from
/// the last checkpoint, so everything a chunk does must be either idempotent
/// or rolled back by [`resume`](Job::resume) (e.g. truncating an output file
/// to the length saved in the state, as [`FileSink`](crate::FileSink) does).
///
/// # Order and concurrency
///
/// Chunks are processed one at a time, in cursor order, with `&mut self`.
/// For chunks processed concurrently and committed in cursor order, see
/// [`ConcurrentJob`](crate::concurrent::ConcurrentJob).
///
/// # Errors, retries, panics
///
/// An error returned by `process` fails the chunk; one marked
/// [`transient`](crate::transient) is retried first, as the runner's
/// [`RetryPolicy`](crate::RetryPolicy) says. A panic in `process` is caught
/// and fails the chunk like an error ([`ChunkPanicked`]). Either way the
/// state goes back to what it was before the chunk.
#[async_trait]
pub trait Job: Send {
    /// Where the job stands: the start of the next chunk. `Default` is the very beginning.
    type Cursor: Serialize + DeserializeOwned + Clone + Debug + Default + Send + Sync + 'static;

    /// What the job carries along with the cursor (running totals, output
    /// length…); `()` for none. Cloned before each chunk so that an abandoned
    /// or failed chunk leaves no trace in it: keep it small.
    type State: Serialize + DeserializeOwned + Clone + Default + Send + Sync + 'static;

    /// Bump this when the meaning of the cursor or state changes while its
    /// shape does not: a checkpoint of another schema version is refused
    /// on load instead of being misread. (A change of shape is detected by
    /// itself: see the [jobs guide][guide].)
    ///
    /// [guide]: https://github.com/spotbatch/spotbatch/blob/main/docs/jobs.md#changing-the-cursor-or-state-types
    const SCHEMA_VERSION: u32 = 1;

    /// The name recorded in each checkpoint for the cursor and state types.
    ///
    /// On load it is compared only where the types' shapes cannot be (a
    /// checkpoint written before shapes were recorded, or types that cannot
    /// be traced); where they can, the shapes decide and a renamed type of
    /// the same shape is accepted.
    ///
    /// The default is the Rust type name of `(Cursor, State)`, module paths
    /// included: where the name is compared, renaming or moving the types
    /// makes stored checkpoints refused until restarted, and Rust does not
    /// promise that [`type_name`](std::any::type_name) stays the same across
    /// compiler versions. Return a fixed name (e.g.
    /// `"nightly-etl/page-cursor"`) to make renames and toolchain upgrades
    /// safe there; for a job already in production, return the name its
    /// checkpoints hold (`spotbatch show` prints it).
    fn cursor_type() -> &'static str {
        std::any::type_name::<(Self::Cursor, Self::State)>()
    }

    /// Converts a checkpoint written with other cursor or state types, or
    /// another [`SCHEMA_VERSION`](Self::SCHEMA_VERSION) (or, for a job of
    /// steps, other [`steps`](Self::steps)), into this job's cursor and
    /// state. Called on load, in place of refusing the checkpoint, when its
    /// types, schema version or steps differ from the job's (not when
    /// restarting).
    ///
    /// `stored` tells what it was written with: [`Checkpoint::schema`],
    /// [`Checkpoint::cursor_type`], [`Checkpoint::types`] (the old types'
    /// shape, `None` in checkpoints written before shapes were recorded),
    /// and the bytes [`Checkpoint::cursor`] and [`Checkpoint::state`] in
    /// [`Checkpoint::codec`] (decode them with old types kept for the
    /// purpose, e.g. `stored.codec.decode::<OldState>(&stored.state)`).
    /// The run then resumes from what it returns, and its next save
    /// records the new types.
    ///
    /// The default returns `Ok(None)`: the checkpoint is refused (exit 65)
    /// with what changed.
    ///
    /// # Errors
    ///
    /// Any error ends the run as the job's error (exit 1), leaving the
    /// checkpoint as it is.
    #[allow(clippy::type_complexity)] // spelled out for the implementer
    fn migrate(
        &self,
        _stored: &Checkpoint,
    ) -> Result<Option<(Self::Cursor, Self::State)>, BoxError> {
        Ok(None)
    }

    /// The serde shape of the cursor and state types, recorded in each
    /// checkpoint and compared on load (see the [jobs guide][guide]).
    ///
    /// The default traces them ([`TypeDescription::trace`], once per process
    /// and pair of types); [`Steps`](crate::steps::Steps) puts its steps'
    /// shapes together. A job of one step keeps the default.
    ///
    /// # Errors
    ///
    /// [`TraceError`] for types that cannot be traced: the runner then warns
    /// and compares [`cursor_type`](Self::cursor_type) only.
    ///
    /// [guide]: https://github.com/spotbatch/spotbatch/blob/main/docs/jobs.md#changing-the-cursor-or-state-types
    fn types(&self) -> Result<TypeDescription, TraceError> {
        crate::types::traced::<Self::Cursor, Self::State>()
    }

    /// The steps of a job made of several, in the order they run: each
    /// one's name and schema version. [`Steps`](crate::steps::Steps)
    /// implements it; a job of one step keeps the default, none.
    ///
    /// The runner records them in each checkpoint, and refuses on load a
    /// checkpoint recorded with other steps
    /// ([`CheckpointError::StepsChanged`](crate::CheckpointError::StepsChanged),
    /// exit 65) unless [`migrate`](Self::migrate) converts it.
    fn steps(&self) -> &[StepInfo] {
        &[]
    }

    /// Which of [`steps`](Self::steps) `cursor` is in, by index: recorded
    /// in each checkpoint (`spotbatch show` names the step) and named in
    /// the run's log lines. Default 0.
    fn step(&self, _cursor: &Self::Cursor) -> usize {
        0
    }

    /// Called once before the first chunk of every run, with the cursor and
    /// state the run starts from (the defaults on a fresh start). Undo here
    /// whatever a killed run may have done past the checkpoint.
    ///
    /// A stop request drops it at its next `.await` (no chunk runs after a
    /// stop, and a killed run's excess is undone by the next run's `resume`).
    async fn resume(
        &mut self,
        _cursor: &Self::Cursor,
        _state: &Self::State,
    ) -> Result<(), BoxError> {
        Ok(())
    }

    /// The chunk that starts at `cursor`, or `None` when the job is complete.
    ///
    /// A stop request drops it at its next `.await`: no chunk starts after a
    /// stop. Keep it free of writes the checkpoint does not cover.
    async fn next_chunk(
        &mut self,
        cursor: &Self::Cursor,
    ) -> Result<Option<Chunk<Self::Cursor>>, BoxError>;

    /// Does one chunk's work, updating `state` as it goes.
    ///
    /// When the platform asks to stop, the chunk in hand is allowed to finish
    /// until the drain deadline; then [`ChunkContext::is_cancelled`] turns true
    /// and, shortly after, the future is dropped. A chunk that returns an error
    /// after cancellation is counted as abandoned, not as a failure; either
    /// way the cursor and state stay at the last finished chunk.
    async fn process(
        &mut self,
        chunk: &Chunk<Self::Cursor>,
        state: &mut Self::State,
        ctx: &ChunkContext,
    ) -> Result<(), BoxError>;

    /// Called once the job has no more chunks ([`next_chunk`](Self::next_chunk)
    /// returned `None`), with the final cursor and state, before the final
    /// [`flush`](Self::flush) and the checkpoint that marks the job
    /// completed: the place for what is done once at the end (aggregates
    /// written in the same Postgres `SharedTransaction` as the completion
    /// checkpoint, a `_SUCCESS` marker). Changes to `state`
    /// are saved in that checkpoint.
    ///
    /// It runs in every run that reaches the end until the completion
    /// checkpoint is saved: if it fails (the run then fails, its state
    /// changes dropped) or the process dies before that checkpoint, the next
    /// run calls it again. Make it idempotent, or transactional with the
    /// checkpoint. A stop request does not interrupt it.
    async fn complete(
        &mut self,
        _cursor: &Self::Cursor,
        _state: &mut Self::State,
    ) -> Result<(), BoxError> {
        Ok(())
    }

    /// Makes every output of the chunks processed so far durable. Called
    /// before each checkpoint: the checkpoint that covers a chunk is saved
    /// only after `flush` returns `Ok`.
    async fn flush(&mut self) -> Result<(), BoxError> {
        Ok(())
    }

    /// The total number of items, when the job knows it, for progress and ETA.
    fn total_items(&self) -> Option<u64> {
        None
    }

    /// How many chunks the job has started and not yet finished: a job that
    /// starts chunks ahead of the cursor, as
    /// [`Concurrent`](crate::concurrent::Concurrent) does. After a stop
    /// request the runner goes on asking for chunks and processing them
    /// while this is not zero (until the drain deadline): a chunk already
    /// started may finish. Default 0: chunks start in `process`.
    fn chunks_in_flight(&self) -> usize {
        0
    }
}

/// A piece of work: where it ends (the cursor after it) and how many items it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk<C> {
    start: C,
    next: C,
    items: u64,
}

impl<C> Chunk<C> {
    /// A chunk from cursor `start` to cursor `next` (where the following chunk
    /// starts), counting as one item.
    pub fn new(start: C, next: C) -> Self {
        Self {
            start,
            next,
            items: 1,
        }
    }

    /// Sets how many items the chunk holds (for counters, rate and progress).
    #[must_use]
    pub fn with_items(mut self, items: u64) -> Self {
        self.items = items;
        self
    }

    /// Where the chunk starts.
    pub fn start(&self) -> &C {
        &self.start
    }

    /// Where the next chunk starts: the cursor once this chunk is done.
    pub fn next(&self) -> &C {
        &self.next
    }

    /// How many items the chunk holds.
    pub fn items(&self) -> u64 {
        self.items
    }

    pub(crate) fn into_next(self) -> C {
        self.next
    }

    /// The same chunk over cursors mapped by `f`.
    pub(crate) fn map<D>(self, mut f: impl FnMut(C) -> D) -> Chunk<D> {
        Chunk {
            start: f(self.start),
            next: f(self.next),
            items: self.items,
        }
    }
}

impl Chunk<u64> {
    /// The records `start..end` of a job whose cursor is the next record number.
    pub fn between(start: u64, end: u64) -> Self {
        Self::new(start, end).with_items(end.saturating_sub(start))
    }

    /// The records of a chunk made by [`Chunk::between`].
    pub fn range(&self) -> Range<u64> {
        self.start..self.next
    }
}

/// What a chunk can ask of the runner while it works.
#[derive(Debug, Clone)]
pub struct ChunkContext {
    cancel: CancellationToken,
    stop: CancellationToken,
    seq: u64,
    attempt: u32,
    /// The run's chunk durations and drain deadline (`None` outside a run).
    times: Option<Arc<ChunkTimes>>,
    redrive: bool,
}

impl ChunkContext {
    pub(crate) fn new(cancel: CancellationToken, stop: CancellationToken) -> Self {
        Self {
            cancel,
            stop,
            seq: 0,
            attempt: 1,
            times: None,
            redrive: false,
        }
    }

    pub(crate) fn set_redrive(&mut self, redrive: bool) {
        self.redrive = redrive;
    }

    /// Whether the chunk is a skipped chunk processed again by a redrive
    /// ([`SkipPolicy`](crate::SkipPolicy)): it runs before the chunks from
    /// the cursor on, with the state as of the cursor, not as of the chunk.
    pub fn is_redrive(&self) -> bool {
        self.redrive
    }

    pub(crate) fn with_times(mut self, times: Arc<ChunkTimes>) -> Self {
        self.times = Some(times);
        self
    }

    pub(crate) fn times(&self) -> Option<&ChunkTimes> {
        self.times.as_deref()
    }

    pub(crate) fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
        self.attempt = 1;
    }

    pub(crate) fn set_attempt(&mut self, attempt: u32) {
        self.attempt = attempt;
    }

    /// The chunk's number in this run, from 0.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Which attempt at the chunk this is: 1 for the first, 2 for the first
    /// retry (see [`RetryPolicy`](crate::RetryPolicy)).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether a stop was requested (a signal, a deadline). The chunk may still
    /// finish: the runner waits for it until the drain deadline.
    pub fn stop_requested(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// When the drain ends, once a stop was requested (`None` before): the
    /// chunk is cancelled then ([`is_cancelled`](Self::is_cancelled)), or
    /// sooner on a second signal. A later request with an earlier deadline
    /// (an EC2 Spot notice) moves it forward: read it again rather than keep
    /// it. A chunk of many steps can check, before each, that the step fits
    /// before the deadline, and give up at once ([`Cancelled`]) when it does
    /// not, instead of holding resources until the deadline.
    ///
    /// Outside a run (a context made by a test) always `None`.
    pub fn drain_deadline(&self) -> Option<tokio::time::Instant> {
        if !self.stop.is_cancelled() {
            return None;
        }
        self.times.as_ref()?.drain_deadline()
    }

    /// Whether the chunk must give up now: the drain deadline passed or a
    /// second signal came. Return (any error will do, [`Cancelled`] says it
    /// best) and the chunk counts as not done.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the chunk must give up (see [`is_cancelled`](Self::is_cancelled)).
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Runs `work` unless the chunk is cancelled first (through
    /// [`CancellationToken::run_until_cancelled`](tokio_util::sync::CancellationToken::run_until_cancelled)): when the chunk is already
    /// cancelled, `work` is not polled at all; when `work` finishes in the
    /// same poll as the cancellation comes, its output wins.
    ///
    /// # Errors
    ///
    /// [`Cancelled`] when cancellation came first; `work` is then dropped.
    ///
    /// # Cancel safety
    ///
    /// As cancel safe as `work`.
    pub async fn cancellable<F: Future>(&self, work: F) -> Result<F::Output, Cancelled> {
        self.cancel.run_until_cancelled(work).await.ok_or(Cancelled)
    }
}

impl ChunkContext {
    /// Runs an external program (ffmpeg, a Python script…) as part of the chunk.
    ///
    /// The child runs in a process group of its own, so that it and anything
    /// it starts can be signalled together:
    ///
    /// - when a stop is requested (the drain starts), the group gets SIGTERM;
    /// - when the chunk is cancelled (drain deadline, second signal), the
    ///   group gets SIGKILL;
    /// - when this future is dropped, or the child exits, whatever is left of
    ///   the group gets SIGKILL: nothing outlives the chunk.
    ///
    /// (A SIGKILL of the job itself cannot be acted on; in a container the
    /// platform's teardown ends the group, elsewhere it is orphaned.)
    ///
    /// # Errors
    ///
    /// The spawn error; or, when the child was stopped by one of the signals
    /// above, an [`io::ErrorKind::Interrupted`] error wrapping [`Cancelled`],
    /// which the runner counts as an abandoned chunk, not a failure.
    pub async fn run_command(
        &self,
        mut command: tokio::process::Command,
    ) -> io::Result<ExitStatus> {
        command.process_group(0).kill_on_drop(true);
        let mut child = command.spawn()?;
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .ok_or_else(|| io::Error::other("the child exited before it could be tracked"))?;
        let _group = KillGroupOnDrop(pgid);
        let mut terminated = false;
        loop {
            tokio::select! {
                status = child.wait() => {
                    let status = status?;
                    return if terminated {
                        Err(io::Error::new(io::ErrorKind::Interrupted, Cancelled))
                    } else {
                        Ok(status)
                    };
                }
                () = self.stop.cancelled(), if !terminated => {
                    signal_group(pgid, libc::SIGTERM);
                    terminated = true;
                }
                () = self.cancel.cancelled() => {
                    signal_group(pgid, libc::SIGKILL);
                    child.wait().await?;
                    return Err(io::Error::new(io::ErrorKind::Interrupted, Cancelled));
                }
            }
        }
    }
}

/// SIGKILLs a process group when dropped.
struct KillGroupOnDrop(i32);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        signal_group(self.0, libc::SIGKILL);
    }
}

fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: killpg has no memory-safety preconditions. The group was created
    // for our child (process_group(0)); a group already gone gives ESRCH,
    // which is what we want to ignore.
    unsafe {
        libc::killpg(pgid, signal);
    }
}

/// A chunk's `process` panicked: the runner caught the panic and counts it
/// as the chunk's failure. A panic is never retried: the chunk is skipped
/// if the [`SkipPolicy`](crate::SkipPolicy) allows, and otherwise fails the
/// run, whose final checkpoint is saved all the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the chunk panicked: {message}")]
pub struct ChunkPanicked {
    /// The panic's message (its payload when a string; otherwise a placeholder).
    pub message: String,
}

impl ChunkPanicked {
    /// From the payload of a caught panic.
    pub(crate) fn from_payload(payload: Box<dyn std::any::Any + Send>) -> Self {
        let message = match payload.downcast::<String>() {
            Ok(message) => *message,
            Err(payload) => match payload.downcast::<&'static str>() {
                Ok(message) => (*message).to_owned(),
                Err(_) => "(a panic payload that is not a string)".to_owned(),
            },
        };
        Self { message }
    }
}

/// An error a chunk marks as transient (a timeout, a throttled request, a
/// connection reset): the runner retries the chunk as its
/// [`RetryPolicy`](crate::RetryPolicy) says, instead of failing it at once.
/// Made by [`transient`](crate::transient).
#[derive(Debug, thiserror::Error)]
#[error("{0} (transient)")]
pub struct Transient(#[source] pub BoxError);

/// Marks `error` as [`Transient`]: return `Err(transient(e))` from
/// [`Job::process`] (or `.map_err(transient)?`) for an error worth retrying.
pub fn transient(error: impl Into<BoxError>) -> BoxError {
    Box::new(Transient(error.into()))
}

/// Whether `error`, or an error in its chain of sources, is [`Transient`].
pub(crate) fn is_transient(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<Transient>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// A chunk gave up because the runner cancelled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("chunk cancelled at the drain deadline")]
pub struct Cancelled;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn context() -> (ChunkContext, CancellationToken) {
        let cancel = CancellationToken::new();
        (
            ChunkContext::new(cancel.clone(), CancellationToken::new()),
            cancel,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn cancellable_runs_the_work_until_the_chunk_is_cancelled() {
        let (ctx, cancel) = context();
        assert_eq!(ctx.cancellable(async { 7 }).await, Ok(7));

        let started = tokio::time::Instant::now();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            cancel.cancel();
        });
        let slow = tokio::time::sleep(Duration::from_secs(60));
        assert_eq!(ctx.cancellable(slow).await, Err(Cancelled));
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        canceller.await.unwrap();

        let mut polled = false;
        let work = std::future::poll_fn(|_| {
            polled = true;
            std::task::Poll::Ready(())
        });
        assert_eq!(ctx.cancellable(work).await, Err(Cancelled));
        assert!(!polled, "work started after the chunk was cancelled");
    }
}
