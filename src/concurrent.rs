//! Jobs whose chunks are processed concurrently and committed in cursor order.
//!
//! A [`ConcurrentJob`] splits a chunk's work in two: [`process`] (the slow
//! part: S3 GETs, HTTP calls), which runs for up to `K` chunks at once, each
//! as a tokio task of its own, and [`commit`] (writing the result, updating
//! the state), which runs one chunk at a time, in cursor order. Wrapped in
//! [`Concurrent`], it is a [`Job`] like any other:
//!
//! ```no_run
//! use spotbatch::concurrent::{Concurrent, ConcurrentJob};
//! use spotbatch::prelude::*;
//!
//! struct Fetch;
//!
//! #[async_trait]
//! impl ConcurrentJob for Fetch {
//!     type Cursor = u64; // the next page
//!     type State = u64; // bytes fetched so far
//!     type Output = Vec<u8>; // one page's body
//!
//!     async fn next_chunk(&self, page: &u64) -> Result<Option<Chunk<u64>>> {
//!         Ok((*page < 10_000).then(|| Chunk::between(*page, page + 1)))
//!     }
//!
//!     async fn process(&self, chunk: &Chunk<u64>, ctx: &ChunkContext) -> Result<Vec<u8>> {
//!         // e.g. a GET of page `chunk.start()`, given up at the drain deadline
//!         ctx.cancellable(tokio::time::sleep(std::time::Duration::from_millis(10))).await?;
//!         Ok(chunk.start().to_le_bytes().to_vec())
//!     }
//!
//!     async fn commit(&self, _chunk: &Chunk<u64>, body: Vec<u8>, fetched: &mut u64) -> Result<()> {
//!         *fetched += body.len() as u64;
//!         Ok(())
//!     }
//! }
//!
//! # async fn f() {
//! let report = Runner::new("fetch", Concurrent::new(Fetch, 16)).run().await;
//! # }
//! ```
//!
//! # The watermark
//!
//! Chunks are planned in cursor order and may finish in any order; the
//! runner's cursor (and so every checkpoint) only moves past a chunk once it
//! and every chunk before it are committed: the *watermark*. A resume never
//! skips an unfinished chunk; a chunk processed but not yet committed when
//! the run stops is processed again by the next run. Memory is bounded by `K`:
//! at most `K` chunks are planned ahead of the watermark, finished or not.
//!
//! On a stop request no new chunk is planned; the chunks in flight may
//! finish, and are committed in order, until the drain deadline; then the
//! rest are cancelled ([`ChunkContext::is_cancelled`]) and aborted, and the
//! final checkpoint is the watermark.
//!
//! [`process`]: ConcurrentJob::process
//! [`commit`]: ConcurrentJob::commit

use std::collections::VecDeque;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::task::AbortOnDropHandle;

use crate::checkpoint::Checkpoint;
use crate::error::BoxError;
use crate::job::{Cancelled, Chunk, ChunkContext, ChunkPanicked, Job};

/// A job whose chunks are processed concurrently (up to the limit given to
/// [`Concurrent::new`]) and committed one at a time, in cursor order.
///
/// Every method takes `&self`: the job is shared (in an [`Arc`]) by the
/// tasks that process its chunks. What `commit` changes besides the state
/// (an output file, say) goes behind a lock, which is never contended:
/// commits run one at a time.
#[async_trait]
pub trait ConcurrentJob: Send + Sync + 'static {
    /// Where the job stands: the start of the next chunk to commit. See [`Job::Cursor`].
    type Cursor: Serialize + DeserializeOwned + Clone + Debug + Default + Send + Sync + 'static;

    /// What the job carries along with the cursor. See [`Job::State`].
    type State: Serialize + DeserializeOwned + Clone + Default + Send + Sync + 'static;

    /// What processing a chunk gives, handed to [`commit`](Self::commit).
    type Output: Send + 'static;

    /// See [`Job::SCHEMA_VERSION`].
    const SCHEMA_VERSION: u32 = 1;

    /// See [`Job::cursor_type`].
    fn cursor_type() -> &'static str {
        std::any::type_name::<(Self::Cursor, Self::State)>()
    }

    /// Converts a checkpoint written with other cursor or state types. See
    /// [`Job::migrate`].
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

    /// Called once before the first chunk of every run. See [`Job::resume`].
    async fn resume(&self, _cursor: &Self::Cursor, _state: &Self::State) -> Result<(), BoxError> {
        Ok(())
    }

    /// The chunk that starts at `cursor`, or `None` when there is no more
    /// work. Called in cursor order, one call at a time, up to the limit
    /// ahead of the last committed chunk: `cursor` is the previous planned
    /// chunk's [`next`](Chunk::next), not yet committed.
    async fn next_chunk(
        &self,
        cursor: &Self::Cursor,
    ) -> Result<Option<Chunk<Self::Cursor>>, BoxError>;

    /// Does one chunk's work, concurrently with other chunks' (each on a
    /// tokio task of its own). It must not have effects that a chunk
    /// processed twice would duplicate: a chunk processed but not committed
    /// when the run stops is processed again by the next run, and a chunk
    /// whose attempt failed with a [transient](crate::transient) error is
    /// processed again.
    ///
    /// Cancellation as for [`Job::process`]: when
    /// [`ChunkContext::is_cancelled`] turns true, give up; the task is
    /// aborted shortly after.
    async fn process(
        &self,
        chunk: &Chunk<Self::Cursor>,
        ctx: &ChunkContext,
    ) -> Result<Self::Output, BoxError>;

    /// Applies a processed chunk: called once per chunk, in cursor order,
    /// one at a time, and only after every earlier chunk was committed. The
    /// checkpoint that covers the chunk is saved after this returns (and
    /// after [`flush`](Self::flush)). An error fails the chunk as
    /// [`Job::process`]'s does: the state goes back to what it was before.
    async fn commit(
        &self,
        chunk: &Chunk<Self::Cursor>,
        output: Self::Output,
        state: &mut Self::State,
    ) -> Result<(), BoxError>;

    /// Called once at the end, after the last commit. See [`Job::complete`].
    async fn complete(
        &self,
        _cursor: &Self::Cursor,
        _state: &mut Self::State,
    ) -> Result<(), BoxError> {
        Ok(())
    }

    /// Makes every commit so far durable. See [`Job::flush`].
    async fn flush(&self) -> Result<(), BoxError> {
        Ok(())
    }

    /// The total number of items, when the job knows it. See [`Job::total_items`].
    fn total_items(&self) -> Option<u64> {
        None
    }
}

/// A planned chunk and the task processing it.
struct Planned<J: ConcurrentJob> {
    chunk: Chunk<J::Cursor>,
    /// The chunk's number in this run ([`ChunkContext::seq`]).
    seq: u64,
    /// `None` until the first context is known, for a chunk planned after
    /// a stop request (never started), and after an attempt was awaited (a
    /// retry starts a new task).
    task: Option<AbortOnDropHandle<Result<J::Output, BoxError>>>,
    /// Whether the runner has had the chunk processed at least once.
    attempted: bool,
}

impl<J: ConcurrentJob> Planned<J> {
    /// Whether the chunk's processing has started.
    fn started(&self) -> bool {
        self.task.is_some() || self.attempted
    }
}

/// Runs a [`ConcurrentJob`] as a [`Job`], with up to `limit` chunks in flight.
///
/// The runner sees the chunks one at a time, in cursor order; this adapter
/// plans and starts up to `limit` of them ahead, and hands the runner the
/// oldest, whose [`Job::process`] waits for its task and commits it.
/// Retries, skips and panics of a chunk are handled by the runner as for
/// any job; the tasks of later chunks run on meanwhile.
pub struct Concurrent<J: ConcurrentJob> {
    job: Arc<J>,
    limit: usize,
    /// Planned chunks, in cursor order: the front is the next to commit.
    planned: VecDeque<Planned<J>>,
    /// Whether the front was handed to the runner (by `next_chunk`).
    handed_out: bool,
    /// Where planning goes on: the `next` of the last planned chunk.
    plan_from: Option<J::Cursor>,
    /// The job said there is no more work (or planning failed).
    planned_all: bool,
    /// A planning error, raised once the chunks planned before it are done.
    plan_error: Option<BoxError>,
    /// The runner's context, known from the first `process` call; tasks
    /// start once it is.
    ctx: Option<ChunkContext>,
    /// The number of the next planned chunk, for [`ChunkContext::seq`].
    seq: u64,
}

impl<J: ConcurrentJob> Concurrent<J> {
    /// Runs `job` with up to `limit` chunks in flight (at least 1; 1 means
    /// one at a time, with `process` still on a task of its own).
    pub fn new(job: J, limit: usize) -> Self {
        Self {
            job: Arc::new(job),
            limit: limit.max(1),
            planned: VecDeque::new(),
            handed_out: false,
            plan_from: None,
            planned_all: false,
            plan_error: None,
            ctx: None,
            seq: 0,
        }
    }

    /// The job.
    pub fn job(&self) -> &J {
        &self.job
    }

    /// The most chunks in flight.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Starts the task processing `chunk` (the run's chunk number `seq`,
    /// attempt `attempt`), once the runner's context is known.
    fn spawn(
        &self,
        chunk: &Chunk<J::Cursor>,
        seq: u64,
        attempt: u32,
    ) -> Option<AbortOnDropHandle<Result<J::Output, BoxError>>> {
        let mut ctx = self.ctx.clone()?;
        ctx.set_seq(seq);
        ctx.set_attempt(attempt);
        ctx.set_redrive(false);
        Some(self.spawn_with(chunk, ctx))
    }

    /// Starts the task processing `chunk` with the context `ctx`.
    fn spawn_with(
        &self,
        chunk: &Chunk<J::Cursor>,
        ctx: ChunkContext,
    ) -> AbortOnDropHandle<Result<J::Output, BoxError>> {
        let job = Arc::clone(&self.job);
        let chunk = chunk.clone();
        AbortOnDropHandle::new(tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let output = job.process(&chunk, &ctx).await;
            if let Some(times) = ctx.times() {
                times.record(started.elapsed());
            }
            output
        }))
    }

    /// Plans chunks until `limit` are in flight or the job has no more.
    /// After a stop request, plans (without starting it) at most the one
    /// chunk the runner asks for, which it will then not process.
    async fn plan(&mut self) {
        let stopping = self.ctx.as_ref().is_some_and(ChunkContext::stop_requested);
        while self.planned.len() < self.limit && !self.planned_all {
            if stopping && !self.planned.is_empty() {
                return;
            }
            let Some(from) = self.plan_from.as_ref() else {
                return;
            };
            match self.job.next_chunk(from).await {
                Ok(Some(chunk)) => {
                    self.plan_from = Some(chunk.next().clone());
                    let seq = self.seq;
                    self.seq += 1;
                    let task = if stopping {
                        None
                    } else {
                        self.spawn(&chunk, seq, 1)
                    };
                    self.planned.push_back(Planned {
                        chunk,
                        seq,
                        task,
                        attempted: false,
                    });
                    if stopping {
                        return;
                    }
                }
                Ok(None) => self.planned_all = true,
                Err(e) => {
                    self.planned_all = true;
                    self.plan_error = Some(e);
                }
            }
        }
    }
}

/// A chunk task's output, its panic as [`ChunkPanicked`], or [`Cancelled`]
/// when it was aborted.
fn output_of<T>(
    joined: Result<Result<T, BoxError>, tokio::task::JoinError>,
) -> Result<T, BoxError> {
    match joined {
        Ok(output) => output,
        Err(e) if e.is_panic() => Err(Box::new(ChunkPanicked::from_payload(e.into_panic()))),
        Err(_) => Err(Box::new(Cancelled)),
    }
}

impl<J: ConcurrentJob> std::fmt::Debug for Concurrent<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Concurrent")
            .field("limit", &self.limit)
            .field("in_flight", &self.planned.len())
            .field("plan_from", &self.plan_from)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<J: ConcurrentJob> Job for Concurrent<J> {
    type Cursor = J::Cursor;
    type State = J::State;

    const SCHEMA_VERSION: u32 = J::SCHEMA_VERSION;

    fn cursor_type() -> &'static str {
        J::cursor_type()
    }

    fn migrate(&self, stored: &Checkpoint) -> Result<Option<(J::Cursor, J::State)>, BoxError> {
        self.job.migrate(stored)
    }

    async fn resume(&mut self, cursor: &J::Cursor, state: &J::State) -> Result<(), BoxError> {
        self.planned.clear();
        self.handed_out = false;
        self.plan_from = None;
        self.planned_all = false;
        self.plan_error = None;
        self.ctx = None;
        self.job.resume(cursor, state).await
    }

    async fn next_chunk(
        &mut self,
        cursor: &J::Cursor,
    ) -> Result<Option<Chunk<J::Cursor>>, BoxError> {
        if std::mem::take(&mut self.handed_out) {
            // The runner moved on from the front without committing it (skipped).
            self.planned.pop_front();
        }
        if self.planned.is_empty() {
            // Nothing ahead of the runner's cursor: plan from it.
            self.plan_from = Some(cursor.clone());
        }
        self.plan().await;
        match self.planned.front() {
            Some(front) => {
                self.handed_out = true;
                Ok(Some(front.chunk.clone()))
            }
            None => match self.plan_error.take() {
                Some(e) => Err(e),
                None => Ok(None),
            },
        }
    }

    async fn process(
        &mut self,
        chunk: &Chunk<J::Cursor>,
        state: &mut J::State,
        ctx: &ChunkContext,
    ) -> Result<(), BoxError> {
        if self.ctx.is_none() {
            // The first chunk of the run: start every planned chunk's task.
            // Each task records how long its chunk took.
            if let Some(times) = ctx.times() {
                times.set_timed_by_job();
            }
            self.ctx = Some(ctx.clone());
            for i in 0..self.planned.len() {
                let task = self.spawn(&self.planned[i].chunk, self.planned[i].seq, 1);
                self.planned[i].task = task;
            }
        }
        if ctx.is_redrive() {
            // A skipped chunk processed again, ahead of the planned ones.
            let output = output_of(self.spawn_with(chunk, ctx.clone()).await)?;
            return self.job.commit(chunk, output, state).await;
        }
        let front = self
            .planned
            .front_mut()
            .ok_or("process called for a chunk the concurrent job did not plan")?;
        front.attempted = true;
        let (seq, task) = (front.seq, front.task.take());
        let task = match task {
            Some(task) => task,
            // A retry of the front chunk: a new attempt.
            None => self
                .spawn(chunk, seq, ctx.attempt())
                .ok_or("the concurrent job's context is missing")?,
        };
        let output = output_of(task.await)?;
        self.job.commit(chunk, output, state).await?;
        self.planned.pop_front();
        self.handed_out = false;
        Ok(())
    }

    async fn complete(&mut self, cursor: &J::Cursor, state: &mut J::State) -> Result<(), BoxError> {
        self.job.complete(cursor, state).await
    }

    async fn flush(&mut self) -> Result<(), BoxError> {
        self.job.flush().await
    }

    fn total_items(&self) -> Option<u64> {
        self.job.total_items()
    }

    fn chunks_in_flight(&self) -> usize {
        self.planned
            .iter()
            .filter(|planned| planned.started())
            .count()
    }
}
