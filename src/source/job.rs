//! A [`Job`] made of a [`Source`] and a [`Handler`].

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Batch, Limit, Source};
use crate::error::BoxError;
use crate::job::{Chunk, ChunkContext, Job};

/// What a job does with a source's records: the part of a [`SourceJob`]
/// the user writes. Its methods mirror [`Job`]'s, without the cursor, which
/// the source carries.
///
/// The runner hands the handler one [`Batch`] per chunk, in the source's
/// order, one at a time. After a hard stop the batches since the last
/// checkpoint are handed again; [`resume`](Self::resume) is where to undo
/// what a killed run did with them (see [`Job::resume`]).
#[async_trait]
pub trait Handler<S: Source + ?Sized>: Send {
    /// What the handler carries along with the source's cursor (running
    /// totals, an output's length); `()` for none. As [`Job::State`]: cloned
    /// before each batch, so that a failed or abandoned batch leaves no trace.
    type State: Serialize + DeserializeOwned + Clone + Default + Send + Sync + 'static;

    /// As [`Job::SCHEMA_VERSION`]: bump it when the meaning of the cursor or
    /// state changes while their types do not.
    const SCHEMA_VERSION: u32 = 1;

    /// As [`Job::cursor_type`]: the name of the cursor and state types kept
    /// in each checkpoint; by default the Rust type name of `(S::Cursor, State)`.
    fn cursor_type() -> &'static str {
        std::any::type_name::<(S::Cursor, Self::State)>()
    }

    /// Called once before the first batch of every run, with the cursor and
    /// state the run starts from. Undo here whatever a killed run did past
    /// the checkpoint (truncate an output to the length in `state`).
    async fn resume(&mut self, _cursor: &S::Cursor, _state: &Self::State) -> Result<(), BoxError> {
        Ok(())
    }

    /// Handles one batch of records, updating `state`. As [`Job::process`]:
    /// when a stop is requested it may finish until the drain deadline, then
    /// [`ChunkContext::is_cancelled`] turns true; an error or a cancelled
    /// batch leaves the cursor and state at the last handled batch.
    async fn handle(
        &mut self,
        batch: Batch<S>,
        state: &mut Self::State,
        ctx: &ChunkContext,
    ) -> Result<(), BoxError>;

    /// Makes the outputs of every batch handled so far durable; called
    /// before each checkpoint (see [`Job::flush`]).
    async fn flush(&mut self) -> Result<(), BoxError> {
        Ok(())
    }

    /// Called once the source has no record left, with the final cursor
    /// and state, before the final [`flush`](Self::flush) and the checkpoint
    /// that marks the job (or, in a job of [steps](crate::steps), the step)
    /// completed: finish the outputs that need it (complete
    /// an S3 multipart upload: `MultipartSink::complete`, feature `s3`).
    /// As [`Job::complete`]: changes to `state` are saved in that checkpoint;
    /// a stop request does not interrupt it; a run that fails in it or dies
    /// before the completion checkpoint is saved leaves it to be called
    /// again by the next run, so it must be idempotent.
    ///
    /// An error fails the job, as one from [`handle`](Self::handle) does.
    async fn complete(
        &mut self,
        _cursor: &S::Cursor,
        _state: &mut Self::State,
    ) -> Result<(), BoxError> {
        Ok(())
    }
}

/// A [`Job`] whose chunks are a [`Source`]'s batches, handled by a
/// [`Handler`]: the job's cursor is the source's, its state the handler's.
///
/// `next_chunk` reads the batch at the cursor (at most [`limit`](Self::limit)
/// records or bytes) and keeps it for `process`, which hands it to the
/// handler; the chunk's items are the batch's
/// [`items`](Batch::items), its `next` the batch's cursor.
pub struct SourceJob<S: Source, H> {
    source: S,
    handler: H,
    limit: Limit,
    /// The batch `next_chunk` read, for the `process` that follows.
    pending: Option<Batch<S>>,
}

impl<S: Source, H> std::fmt::Debug for SourceJob<S, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceJob")
            .field("source", &std::any::type_name::<S>())
            .field("handler", &std::any::type_name::<H>())
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<S: Source, H: Handler<S>> SourceJob<S, H> {
    /// The job that hands `source`'s records to `handler`, in batches of at
    /// most 1000 records (see [`limit`](Self::limit)).
    pub fn new(source: S, handler: H) -> Self {
        Self {
            source,
            handler,
            limit: Limit::default(),
            pending: None,
        }
    }

    /// How large a batch (one chunk, handled in one call) may be.
    #[must_use]
    pub fn limit(mut self, limit: Limit) -> Self {
        self.limit = limit;
        self
    }

    /// The source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The handler, to change.
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    /// The source and the handler, taken back.
    pub fn into_parts(self) -> (S, H) {
        (self.source, self.handler)
    }
}

#[async_trait]
impl<S: Source, H: Handler<S>> Job for SourceJob<S, H> {
    type Cursor = S::Cursor;
    type State = H::State;

    const SCHEMA_VERSION: u32 = H::SCHEMA_VERSION;

    fn cursor_type() -> &'static str {
        H::cursor_type()
    }

    async fn resume(&mut self, cursor: &S::Cursor, state: &H::State) -> Result<(), BoxError> {
        self.pending = None;
        self.handler.resume(cursor, state).await
    }

    async fn next_chunk(
        &mut self,
        cursor: &S::Cursor,
    ) -> Result<Option<Chunk<S::Cursor>>, BoxError> {
        self.pending = None;
        let Some(batch) = self.source.next_batch(cursor, self.limit).await? else {
            return Ok(None);
        };
        let chunk = Chunk::new(cursor.clone(), batch.next().clone()).with_items(batch.items());
        self.pending = Some(batch);
        Ok(Some(chunk))
    }

    async fn process(
        &mut self,
        _chunk: &Chunk<S::Cursor>,
        state: &mut H::State,
        ctx: &ChunkContext,
    ) -> Result<(), BoxError> {
        let batch = self
            .pending
            .take()
            .ok_or("SourceJob::process was called without next_chunk before it")?;
        self.handler.handle(batch, state, ctx).await
    }

    async fn complete(&mut self, cursor: &S::Cursor, state: &mut H::State) -> Result<(), BoxError> {
        self.handler.complete(cursor, state).await
    }

    async fn flush(&mut self) -> Result<(), BoxError> {
        self.handler.flush().await
    }

    fn total_items(&self) -> Option<u64> {
        self.source.total_records()
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Range;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::source::Ranges;
    use crate::{MemoryStore, Runner};

    /// Keeps every number it is handed, and a running count in its state.
    struct Collect(Arc<Mutex<Vec<u64>>>);

    #[async_trait]
    impl Handler<Ranges<u64>> for Collect {
        type State = u64;

        async fn handle(
            &mut self,
            batch: Batch<Ranges<u64>>,
            count: &mut u64,
            _: &ChunkContext,
        ) -> Result<(), BoxError> {
            let records: Vec<Range<u64>> = batch.into_records();
            for n in records.into_iter().flatten() {
                self.0.lock().unwrap().push(n);
                *count += 1;
            }
            Ok(())
        }

        async fn complete(&mut self, _: &Option<u64>, count: &mut u64) -> Result<(), BoxError> {
            // The end, marked after the last record, and in the final state.
            self.0.lock().unwrap().push(u64::MAX);
            *count += 1_000_000;
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_source_job_hands_every_record_once_in_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let job = SourceJob::new(Ranges::new(0..2500_u64, 1), Collect(seen.clone()))
            .limit(Limit::records(300));
        let store = MemoryStore::new();
        let report = Runner::new("ranges", job)
            .store(store.clone())
            .signals(&[])
            .run()
            .await;
        assert_eq!(report.code(), 0, "{report:?}");
        let expected: Vec<u64> = (0..2500).chain([u64::MAX]).collect();
        assert_eq!(
            *seen.lock().unwrap(),
            expected,
            "every record, then complete"
        );
        assert_eq!(
            report.state::<u64>(),
            Some(&1_002_500),
            "complete's state is saved"
        );
        assert_eq!(report.stats.items, 2500);
        assert_eq!(report.stats.chunks, 9);
    }
}
