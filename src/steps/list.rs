//! The list of a job's steps: [`First`], then each step added by
//! [`Steps::then`](super::Steps::then) ([`Then`]), as one type.
//!
//! Each level keeps its step's job and where it stands in the run: whether
//! the step was entered (resumed) in this run, and whether it has output to
//! flush. Calls go down the levels to the step the cursor is in.

use std::fmt::{self, Debug};
use std::future::Future;

use serde::de::{Error as _, SeqAccess, VariantAccess};
use serde::ser::SerializeTuple;
use serde::Serializer;
use tracing::info;

use super::encoding::{Framed, FramedRef, VARIANTS};
use super::parts::Rebuild;
use super::TransitionError;
use crate::checkpoint::StepInfo;
use crate::error::BoxError;
use crate::job::{Chunk, ChunkContext, Job};
use crate::types::{TraceError, TypeDescription, STEP_CURSOR};

/// What a step added by [`Steps::then_with`](super::Steps::then_with) is
/// given when it starts: the step, and the states of the steps before it.
pub(super) type Hook<J, Before> = Box<dyn FnMut(&mut J, &Before) -> Result<(), BoxError> + Send>;

mod sealed {
    // Reachable through `StepList`'s bound only: nothing outside the crate implements it.
    #[allow(unreachable_pub)]
    pub trait Sealed {}
}

/// The steps of a [`Steps`](super::Steps) job, in order: a [`First`] step,
/// then each step added by [`then`](super::Steps::then) ([`Then`]).
/// Built by [`Steps`](super::Steps) only; its methods are what `Steps`
/// calls on them.
pub trait StepList: Send + 'static + sealed::Sealed {
    /// Where the job stands: in which step, and where in it.
    type Cursor: Clone + Debug + Default + Send + Sync + 'static;

    /// Every step's state, as nested pairs: for steps `a`, `b`, `c`,
    /// `((A::State, B::State), C::State)`.
    type States: Clone + Default + Send + Sync + 'static;

    /// How many steps.
    const LEN: usize;

    #[doc(hidden)]
    fn info(&self, out: &mut Vec<StepInfo>);

    #[doc(hidden)]
    fn describe(&self, out: &mut Vec<Result<TypeDescription, TraceError>>);

    #[doc(hidden)]
    fn index(cursor: &Self::Cursor) -> usize;

    #[doc(hidden)]
    fn fmt_cursor(cursor: &Self::Cursor, f: &mut fmt::Formatter<'_>) -> fmt::Result;

    #[doc(hidden)]
    fn serialize_cursor<S: Serializer>(cursor: &Self::Cursor, s: S) -> Result<S::Ok, S::Error>;

    #[doc(hidden)]
    fn deserialize_cursor<'de, A: VariantAccess<'de>>(
        index: usize,
        variant: A,
    ) -> Result<Self::Cursor, A::Error>;

    #[doc(hidden)]
    fn serialize_states<T: SerializeTuple>(
        states: &Self::States,
        tuple: &mut T,
    ) -> Result<(), T::Error>;

    #[doc(hidden)]
    fn deserialize_states<'de, A: SeqAccess<'de>>(
        seq: &mut A,
        read: &mut usize,
    ) -> Result<Self::States, A::Error>;

    #[doc(hidden)]
    fn name_of(&self, index: usize) -> &str;

    /// Resumes the step `cursor` is in; the others are left (not entered).
    #[doc(hidden)]
    fn resume(
        &mut self,
        cursor: &Self::Cursor,
        states: &Self::States,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Marks every step not entered in this run.
    #[doc(hidden)]
    fn leave(&mut self);

    /// The chunk at `cursor`: a chunk of the step it is in, or, at the end
    /// of a step, the transition chunk to the next.
    #[doc(hidden)]
    fn next_chunk(
        &mut self,
        cursor: &Self::Cursor,
    ) -> impl Future<Output = Result<Option<Chunk<Self::Cursor>>, BoxError>> + Send;

    #[doc(hidden)]
    fn process(
        &mut self,
        span: (&Self::Cursor, &Self::Cursor, u64),
        states: &mut Self::States,
        ctx: &ChunkContext,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// The [`Job::complete`] of the step `cursor` is in.
    #[doc(hidden)]
    fn complete(
        &mut self,
        cursor: &Self::Cursor,
        states: &mut Self::States,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Flushes every step with output since its last flush.
    #[doc(hidden)]
    fn flush(&mut self) -> impl Future<Output = Result<(), BoxError>> + Send;

    #[doc(hidden)]
    fn total_items(&self) -> Option<u64>;

    #[doc(hidden)]
    fn chunks_in_flight(&self) -> usize;

    /// The cursor and states in step `step` from a stored checkpoint's
    /// parts, or `None` when they cannot be had.
    #[doc(hidden)]
    #[allow(clippy::type_complexity)] // a cursor and a state, as `Job::migrate` returns them
    fn rebuild(
        &self,
        step: usize,
        parts: &Rebuild<'_>,
    ) -> Result<Option<(Self::Cursor, Self::States)>, BoxError>;

    /// Every step's state from a stored checkpoint's parts, all of them
    /// finished, or `None` when one of them cannot be had.
    #[doc(hidden)]
    fn finished_states(parts: &Rebuild<'_>) -> Result<Option<Self::States>, BoxError>;
}

/// A step of a job of steps, with what the run knows of it.
pub(super) struct Step<J> {
    pub(super) name: String,
    pub(super) job: J,
    /// Whether its [`Job::resume`] was called in this run.
    entered: bool,
    /// Whether it may have output to flush.
    dirty: bool,
}

impl<J: Job> Step<J> {
    pub(super) fn new(name: String, job: J) -> Self {
        Self {
            name,
            job,
            entered: false,
            dirty: false,
        }
    }

    /// Resumes the step (at its start, when entered from the step before).
    async fn enter(&mut self, cursor: &J::Cursor, state: &J::State) -> Result<(), BoxError> {
        self.entered = true;
        self.dirty = true;
        self.job.resume(cursor, state).await
    }

    fn entered(&self) -> Result<(), BoxError> {
        if self.entered {
            Ok(())
        } else {
            Err(format!(
                "step {:?} was asked for a chunk before it was resumed",
                self.name
            )
            .into())
        }
    }

    async fn process(
        &mut self,
        (start, next, items): (&J::Cursor, &J::Cursor, u64),
        state: &mut J::State,
        ctx: &ChunkContext,
    ) -> Result<(), BoxError> {
        if !self.entered {
            // A redriven chunk of a step the run is past.
            self.enter(start, state).await?;
        }
        self.dirty = true;
        let chunk = Chunk::new(start.clone(), next.clone()).with_items(items);
        self.job.process(&chunk, state, ctx).await
    }

    async fn flush(&mut self) -> Result<(), BoxError> {
        if self.dirty {
            self.job.flush().await?;
            self.dirty = false;
        }
        Ok(())
    }
}

/// The first step of a job of steps.
pub struct First<J> {
    pub(super) step: Step<J>,
}

impl<J> sealed::Sealed for First<J> {}

impl<J: Job + 'static> StepList for First<J> {
    type Cursor = J::Cursor;
    type States = J::State;
    const LEN: usize = 1;

    fn info(&self, out: &mut Vec<StepInfo>) {
        out.push(StepInfo::new(&self.step.name, J::SCHEMA_VERSION));
    }

    fn describe(&self, out: &mut Vec<Result<TypeDescription, TraceError>>) {
        out.push(self.step.job.types());
    }

    fn index(_: &J::Cursor) -> usize {
        0
    }

    fn fmt_cursor(cursor: &J::Cursor, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step 0: {cursor:?}")
    }

    fn serialize_cursor<S: Serializer>(cursor: &J::Cursor, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_variant(STEP_CURSOR, 0, VARIANTS[0], cursor)
    }

    fn deserialize_cursor<'de, A: VariantAccess<'de>>(
        index: usize,
        variant: A,
    ) -> Result<J::Cursor, A::Error> {
        if index != 0 {
            return Err(A::Error::custom(format!("no step {index}")));
        }
        variant.newtype_variant()
    }

    fn serialize_states<T: SerializeTuple>(
        state: &J::State,
        tuple: &mut T,
    ) -> Result<(), T::Error> {
        tuple.serialize_element(&FramedRef(state))
    }

    fn deserialize_states<'de, A: SeqAccess<'de>>(
        seq: &mut A,
        read: &mut usize,
    ) -> Result<J::State, A::Error> {
        let state = seq
            .next_element::<Framed<J::State>>()?
            .ok_or_else(|| A::Error::invalid_length(*read, &"a state per step"))?;
        *read += 1;
        Ok(state.0)
    }

    fn name_of(&self, _: usize) -> &str {
        &self.step.name
    }

    async fn resume(&mut self, cursor: &J::Cursor, state: &J::State) -> Result<(), BoxError> {
        self.step.enter(cursor, state).await
    }

    fn leave(&mut self) {
        self.step.entered = false;
    }

    async fn next_chunk(
        &mut self,
        cursor: &J::Cursor,
    ) -> Result<Option<Chunk<J::Cursor>>, BoxError> {
        self.step.entered()?;
        self.step.job.next_chunk(cursor).await
    }

    async fn process(
        &mut self,
        span: (&J::Cursor, &J::Cursor, u64),
        state: &mut J::State,
        ctx: &ChunkContext,
    ) -> Result<(), BoxError> {
        self.step.process(span, state, ctx).await
    }

    async fn complete(&mut self, cursor: &J::Cursor, state: &mut J::State) -> Result<(), BoxError> {
        self.step.dirty = true;
        self.step.job.complete(cursor, state).await
    }

    async fn flush(&mut self) -> Result<(), BoxError> {
        self.step.flush().await
    }

    fn total_items(&self) -> Option<u64> {
        self.step.job.total_items()
    }

    fn chunks_in_flight(&self) -> usize {
        self.step.job.chunks_in_flight()
    }

    fn rebuild(
        &self,
        step: usize,
        parts: &Rebuild<'_>,
    ) -> Result<Option<(J::Cursor, J::State)>, BoxError> {
        if step != 0 {
            return Ok(None);
        }
        parts.current(&self.step.job, 0)
    }

    fn finished_states(parts: &Rebuild<'_>) -> Result<Option<J::State>, BoxError> {
        parts.unchanged(0)
    }
}

/// Where a job of steps stands: in one of the steps before the last one
/// added ([`Before`](Self::Before)), or in it ([`In`](Self::In)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThenCursor<B, C> {
    /// In one of the steps before, at this cursor of theirs.
    Before(B),
    /// In the step, at this cursor of its own.
    In(C),
}

/// In the first step, at its start.
impl<B: Default, C> Default for ThenCursor<B, C> {
    fn default() -> Self {
        ThenCursor::Before(B::default())
    }
}

/// The steps `B`, then the step `J`.
pub struct Then<B: StepList, J: Job> {
    pub(super) before: B,
    pub(super) step: Step<J>,
    pub(super) hook: Option<Hook<J, B::States>>,
}

impl<B: StepList, J: Job> sealed::Sealed for Then<B, J> {}

impl<B: StepList, J: Job + 'static> Then<B, J> {
    /// Enters the step at `cursor`, giving its hook the states before it.
    async fn enter(
        &mut self,
        cursor: &J::Cursor,
        states: &(B::States, J::State),
    ) -> Result<(), BoxError> {
        if let Some(hook) = &mut self.hook {
            hook(&mut self.step.job, &states.0)?;
        }
        self.step.enter(cursor, &states.1).await
    }

    /// The transition from the steps before (at `end`, where they are
    /// done) to this one: the last step's [`Job::complete`] and
    /// [`Job::flush`] (this step may read its output), then this step's
    /// hook and [`Job::resume`] at its start.
    async fn transition(
        &mut self,
        end: &B::Cursor,
        states: &mut (B::States, J::State),
    ) -> Result<(), BoxError> {
        let from = self.before.name_of(B::LEN - 1).to_owned();
        let failed = |during: &'static str, to: &str| {
            let (from, to) = (from.clone(), to.to_owned());
            move |source| -> BoxError {
                Box::new(TransitionError {
                    from,
                    to,
                    during,
                    source,
                })
            }
        };
        self.before
            .complete(end, &mut states.0)
            .await
            .map_err(failed("complete", &self.step.name))?;
        self.before
            .flush()
            .await
            .map_err(failed("flush", &self.step.name))?;
        let to = self.step.name.clone();
        self.enter(&J::Cursor::default(), states)
            .await
            .map_err(failed("resume", &to))?;
        info!(done = %from, next = %to, "step done; the next starts");
        Ok(())
    }
}

impl<B: StepList, J: Job + 'static> StepList for Then<B, J> {
    type Cursor = ThenCursor<B::Cursor, J::Cursor>;
    type States = (B::States, J::State);
    const LEN: usize = B::LEN + 1;

    fn info(&self, out: &mut Vec<StepInfo>) {
        self.before.info(out);
        out.push(StepInfo::new(&self.step.name, J::SCHEMA_VERSION));
    }

    fn describe(&self, out: &mut Vec<Result<TypeDescription, TraceError>>) {
        self.before.describe(out);
        out.push(self.step.job.types());
    }

    fn index(cursor: &Self::Cursor) -> usize {
        match cursor {
            ThenCursor::Before(b) => B::index(b),
            ThenCursor::In(_) => B::LEN,
        }
    }

    fn fmt_cursor(cursor: &Self::Cursor, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match cursor {
            ThenCursor::Before(b) => B::fmt_cursor(b, f),
            ThenCursor::In(c) => write!(f, "step {}: {c:?}", B::LEN),
        }
    }

    fn serialize_cursor<S: Serializer>(cursor: &Self::Cursor, s: S) -> Result<S::Ok, S::Error> {
        match cursor {
            ThenCursor::Before(b) => B::serialize_cursor(b, s),
            ThenCursor::In(c) => {
                let index = u32::try_from(B::LEN).map_err(serde::ser::Error::custom)?;
                s.serialize_newtype_variant(STEP_CURSOR, index, VARIANTS[B::LEN], c)
            }
        }
    }

    fn deserialize_cursor<'de, A: VariantAccess<'de>>(
        index: usize,
        variant: A,
    ) -> Result<Self::Cursor, A::Error> {
        if index == B::LEN {
            variant.newtype_variant().map(ThenCursor::In)
        } else {
            B::deserialize_cursor(index, variant).map(ThenCursor::Before)
        }
    }

    fn serialize_states<T: SerializeTuple>(
        states: &Self::States,
        tuple: &mut T,
    ) -> Result<(), T::Error> {
        B::serialize_states(&states.0, tuple)?;
        tuple.serialize_element(&FramedRef(&states.1))
    }

    fn deserialize_states<'de, A: SeqAccess<'de>>(
        seq: &mut A,
        read: &mut usize,
    ) -> Result<Self::States, A::Error> {
        let before = B::deserialize_states(seq, read)?;
        let state = seq
            .next_element::<Framed<J::State>>()?
            .ok_or_else(|| A::Error::invalid_length(*read, &"a state per step"))?;
        *read += 1;
        Ok((before, state.0))
    }

    fn name_of(&self, index: usize) -> &str {
        if index == B::LEN {
            &self.step.name
        } else {
            self.before.name_of(index)
        }
    }

    async fn resume(
        &mut self,
        cursor: &Self::Cursor,
        states: &Self::States,
    ) -> Result<(), BoxError> {
        match cursor {
            ThenCursor::Before(b) => {
                self.step.entered = false;
                self.before.resume(b, &states.0).await
            }
            ThenCursor::In(c) => {
                self.before.leave();
                self.enter(c, states).await
            }
        }
    }

    fn leave(&mut self) {
        self.step.entered = false;
        self.before.leave();
    }

    async fn next_chunk(
        &mut self,
        cursor: &Self::Cursor,
    ) -> Result<Option<Chunk<Self::Cursor>>, BoxError> {
        match cursor {
            ThenCursor::Before(b) => Ok(Some(match self.before.next_chunk(b).await? {
                Some(chunk) => chunk.map(ThenCursor::Before),
                // The steps before are done: the transition to this one.
                None => Chunk::new(
                    ThenCursor::Before(b.clone()),
                    ThenCursor::In(J::Cursor::default()),
                )
                .with_items(0),
            })),
            ThenCursor::In(c) => {
                self.step.entered()?;
                Ok(self
                    .step
                    .job
                    .next_chunk(c)
                    .await?
                    .map(|chunk| chunk.map(ThenCursor::In)))
            }
        }
    }

    async fn process(
        &mut self,
        (start, next, items): (&Self::Cursor, &Self::Cursor, u64),
        states: &mut Self::States,
        ctx: &ChunkContext,
    ) -> Result<(), BoxError> {
        match (start, next) {
            (ThenCursor::Before(start), ThenCursor::Before(next)) => {
                self.before
                    .process((start, next, items), &mut states.0, ctx)
                    .await
            }
            (ThenCursor::Before(end), ThenCursor::In(_)) => self.transition(end, states).await,
            (ThenCursor::In(start), ThenCursor::In(next)) => {
                if !self.step.entered {
                    // A redriven chunk of a step the run is past.
                    self.enter(start, states).await?;
                }
                self.step
                    .process((start, next, items), &mut states.1, ctx)
                    .await
            }
            (ThenCursor::In(_), ThenCursor::Before(_)) => Err(format!(
                "a chunk from step {:?} back to an earlier step",
                self.step.name
            )
            .into()),
        }
    }

    async fn complete(
        &mut self,
        cursor: &Self::Cursor,
        states: &mut Self::States,
    ) -> Result<(), BoxError> {
        match cursor {
            ThenCursor::Before(b) => self.before.complete(b, &mut states.0).await,
            ThenCursor::In(c) => {
                self.step.dirty = true;
                self.step.job.complete(c, &mut states.1).await
            }
        }
    }

    async fn flush(&mut self) -> Result<(), BoxError> {
        self.before.flush().await?;
        self.step.flush().await
    }

    fn total_items(&self) -> Option<u64> {
        Some(self.before.total_items()? + self.step.job.total_items()?)
    }

    fn chunks_in_flight(&self) -> usize {
        self.before.chunks_in_flight() + self.step.job.chunks_in_flight()
    }

    fn rebuild(
        &self,
        step: usize,
        parts: &Rebuild<'_>,
    ) -> Result<Option<(Self::Cursor, Self::States)>, BoxError> {
        if step == B::LEN {
            let Some(before) = B::finished_states(parts)? else {
                return Ok(None);
            };
            let Some((cursor, state)) = parts.current(&self.step.job, step)? else {
                return Ok(None);
            };
            return Ok(Some((ThenCursor::In(cursor), (before, state))));
        }
        // A step not started yet starts from its defaults.
        Ok(self
            .before
            .rebuild(step, parts)?
            .map(|(cursor, states)| (ThenCursor::Before(cursor), (states, J::State::default()))))
    }

    fn finished_states(parts: &Rebuild<'_>) -> Result<Option<Self::States>, BoxError> {
        let Some(before) = B::finished_states(parts)? else {
            return Ok(None);
        };
        Ok(parts.unchanged(B::LEN)?.map(|state| (before, state)))
    }
}
