//! Jobs made of named steps run in order (extract, transform, load), each
//! with its own cursor and state: one job, one key, one checkpoint, and the
//! checkpoint, the logs and `spotbatch show` name the step it is in.
//!
//! Each step is a [`Job`] as it would run alone: a hand-written one, a
//! [`SourceJob`](crate::source::SourceJob), a
//! [`Concurrent`](crate::concurrent::Concurrent) job. [`Steps`] runs them
//! one after the other as one job:
//!
//! ```no_run
//! use spotbatch::prelude::*;
//! use spotbatch::steps::Steps;
//! # struct Extract; struct Transform; struct Load;
//! # #[async_trait] impl Job for Extract { type Cursor = u64; type State = ();
//! #   async fn next_chunk(&mut self, _: &u64) -> Result<Option<Chunk<u64>>> { Ok(None) }
//! #   async fn process(&mut self, _: &Chunk<u64>, _: &mut (), _: &ChunkContext) -> Result<()> { Ok(()) } }
//! # #[async_trait] impl Job for Transform { type Cursor = u64; type State = u64;
//! #   async fn next_chunk(&mut self, _: &u64) -> Result<Option<Chunk<u64>>> { Ok(None) }
//! #   async fn process(&mut self, _: &Chunk<u64>, _: &mut u64, _: &ChunkContext) -> Result<()> { Ok(()) } }
//! # #[async_trait] impl Job for Load { type Cursor = u64; type State = ();
//! #   async fn next_chunk(&mut self, _: &u64) -> Result<Option<Chunk<u64>>> { Ok(None) }
//! #   async fn process(&mut self, _: &Chunk<u64>, _: &mut (), _: &ChunkContext) -> Result<()> { Ok(()) } }
//! # impl Load { fn expect(&mut self, _: u64) {} }
//!
//! #[tokio::main]
//! async fn main() -> Result<std::process::ExitCode> {
//!     spotbatch::shutdown::listen(); // first: from here on SIGTERM is a stop request
//!     let job = Steps::new("extract", Extract)
//!         .then("transform", Transform)
//!         // A step can read the states of the steps before it when it starts:
//!         // here `load` learns how many rows `transform` kept (its state).
//!         .then_with("load", Load, |load, (_, kept): &((), u64)| {
//!             load.expect(*kept);
//!             Ok(())
//!         });
//!     Ok(Runner::new("nightly-etl", job).run().await.exit_code())
//! }
//! ```
//!
//! When to use steps, how data passes between them and what they guarantee
//! after SIGTERM and SIGKILL: the guide's [steps][guide];
//! `examples/steps.rs` runs extract, transform and load on local files.
//!
//! # Contract
//!
//! - **Each step runs as it would alone**: its [`resume`](Job::resume)
//!   once before its first chunk in a run (at the checkpoint's cursor in
//!   the step the run resumes in; at its start, with its default state, in
//!   a step the job reaches later), its chunks in order, its
//!   [`flush`](Job::flush) before each checkpoint that covers output of its
//!   own. The steps before the checkpoint's are not called, except to
//!   process a redriven chunk of theirs (after their `resume`).
//! - **Between two steps, one chunk of no items**: the ending step's
//!   [`complete`](Job::complete) and `flush`, then the next step's hook
//!   ([`then_with`](Steps::then_with)) and `resume` at its start. It counts
//!   as a chunk; an error there is retried when it is
//!   [transient](crate::transient) and never skipped ([`TransitionError`]).
//!   The last step's `complete` is the job's.
//! - **Cursor and state**: [`StepCursor`], the step and its cursor,
//!   encoded as an enum of a variant per step (`{"step1": …}` in JSON);
//!   [`StepStates`], every step's state, a finished step's kept, encoded as
//!   a tuple (in bincode, each state after its length). The recorded type
//!   description ([`Job::types`]) names each step's types after the step
//!   (`transform::Totals`): steps may use types of the same name.
//! - **Recorded in each checkpoint**: the steps' names and schema versions
//!   ([`Job::steps`], [`Checkpoint::steps`]) and the step of the cursor
//!   ([`Job::step`], [`Checkpoint::step`]); `spotbatch show` prints both.
//!   `Steps`' own [`SCHEMA_VERSION`](Job::SCHEMA_VERSION) is that of this
//!   layout.
//! - **[`Job::migrate`]**, called for a checkpoint of other steps or types:
//!   [`migrate_with`](Steps::migrate_with)'s conversion when given; else
//!   `None` (refused, [`CheckpointError::StepsChanged`](crate::CheckpointError::StepsChanged))
//!   for other step names, and otherwise the position rebuilt step by step:
//!   the steps before the checkpoint's read as they are (a step of another
//!   schema version or shape there: refused), the checkpoint's step read as
//!   it is or converted by its own `migrate`, given the checkpoint as that
//!   step alone would have had it (its cursor and state bytes, schema
//!   version and part of the type description; no steps), and the steps
//!   after it from their defaults.
//! - **Limits**: at most [`MAX_STEPS`] steps. A step may itself be a
//!   `Steps`: the checkpoint and logs then name the outer step only.
//!
//! [guide]: https://github.com/spotbatch/spotbatch/blob/main/docs/sources.md#steps

mod encoding;
mod list;
mod parts;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;

use async_trait::async_trait;
use tracing::Instrument;

pub use list::{First, StepList, Then, ThenCursor};

use crate::checkpoint::{Checkpoint, StepInfo};
use crate::error::BoxError;
use crate::job::{Chunk, ChunkContext, Job};
use crate::types::{TraceError, TypeDescription};
use list::Step;

/// The most steps a [`Steps`] job may have.
pub const MAX_STEPS: usize = 64;

/// What [`Steps::migrate_with`] takes: a conversion of a stored checkpoint.
type Migrate<L> = Box<
    dyn Fn(&Checkpoint) -> Result<Option<(StepCursor<L>, StepStates<L>)>, BoxError> + Send + Sync,
>;

/// A [`Job`] made of named steps run in order, each a job of its own: see
/// the [module](self).
pub struct Steps<L: StepList> {
    list: L,
    info: Vec<StepInfo>,
    migrate: Option<Migrate<L>>,
}

impl<L: StepList> fmt::Debug for Steps<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Steps")
            .field("steps", &self.info)
            .finish_non_exhaustive()
    }
}

impl<J: Job + 'static> Steps<First<J>> {
    /// A job whose first step, `name`, is `job`.
    ///
    /// Step names are recorded in each checkpoint: keep them stable across
    /// deploys ([changing the steps](self#changing-the-steps)). A run of
    /// steps with an empty or a repeated name fails at its start.
    pub fn new(name: impl Into<String>, job: J) -> Self {
        let list = First {
            step: Step::new(name.into(), job),
        };
        Self::of(list)
    }
}

impl<L: StepList> Steps<L> {
    fn of(list: L) -> Self {
        let mut info = Vec::with_capacity(L::LEN);
        list.info(&mut info);
        Self {
            list,
            info,
            migrate: None,
        }
    }

    /// The job with the step `name`, `job`, after its steps. (At most
    /// [`MAX_STEPS`]: more do not compile.)
    pub fn then<J: Job + 'static>(self, name: impl Into<String>, job: J) -> Steps<Then<L, J>> {
        const {
            assert!(
                L::LEN < MAX_STEPS,
                "a Steps job has at most MAX_STEPS steps"
            )
        };
        Steps::of(Then {
            before: self.list,
            step: Step::new(name.into(), job),
            hook: None,
        })
    }

    /// As [`then`](Self::then), and `hook` is called with the step and the
    /// states of the steps before it (as nested pairs: `A::State` for one
    /// step `a` before it, `(A::State, B::State)` for `a` and `b`,
    /// `((A::State, B::State), C::State)` for three) each time the step is entered:
    /// when the job moves to it, and when a run resumes in it. That is how
    /// a step reads what the steps before it found (a count, a list of
    /// files), kept in their states across runs.
    ///
    /// An error from `hook` fails the chunk that enters the step (or the
    /// run's resume).
    pub fn then_with<J, F>(self, name: impl Into<String>, job: J, hook: F) -> Steps<Then<L, J>>
    where
        J: Job + 'static,
        F: FnMut(&mut J, &L::States) -> Result<(), BoxError> + Send + 'static,
    {
        let mut steps = self.then(name, job);
        steps.list.hook = Some(Box::new(hook));
        steps
    }

    /// Converts a checkpoint written with other steps (or other types),
    /// instead of the default: the checkpoint of other steps refused, the
    /// migrate of the step the checkpoint is in called for other types. See
    /// [`Job::migrate`]; `stored` is the whole checkpoint, its steps in
    /// [`Checkpoint::steps`].
    ///
    /// A step renamed, its types the same, reads the checkpoint as it is:
    ///
    /// ```
    /// # use spotbatch::prelude::*;
    /// # use spotbatch::steps::Steps;
    /// # fn f(extract: impl Job + 'static, clean: impl Job + 'static) {
    /// let job = Steps::new("extract", extract)
    ///     .then("clean", clean) // was "transform"
    ///     .migrate_with(|stored| {
    ///         let renamed = stored.steps.iter().map(|s| s.name.as_str()).eq(["extract", "transform"]);
    ///         if !renamed {
    ///             return Ok(None); // refused, as without migrate_with
    ///         }
    ///         Ok(Some((stored.codec.decode(&stored.cursor)?, stored.codec.decode(&stored.state)?)))
    ///     });
    /// # }
    /// ```
    #[must_use]
    pub fn migrate_with<F>(mut self, migrate: F) -> Self
    where
        F: Fn(&Checkpoint) -> Result<Option<(StepCursor<L>, StepStates<L>)>, BoxError>
            + Send
            + Sync
            + 'static,
    {
        self.migrate = Some(Box::new(migrate));
        self
    }

    /// The steps: names and schema versions, in order.
    pub fn info(&self) -> &[StepInfo] {
        &self.info
    }

    /// The steps, their jobs included.
    pub fn list(&self) -> &L {
        &self.list
    }

    /// The steps, to change.
    pub fn list_mut(&mut self) -> &mut L {
        &mut self.list
    }

    /// Refuses empty and repeated names.
    fn check_names(&self) -> Result<(), BoxError> {
        let mut seen = HashSet::new();
        for step in &self.info {
            if step.name.is_empty() {
                return Err("a step has an empty name".into());
            }
            if !seen.insert(step.name.as_str()) {
                return Err(format!("two steps are named {:?}", step.name).into());
            }
        }
        Ok(())
    }

    /// The `step` span of a call into the step `cursor` is in.
    fn span(&self, cursor: &L::Cursor) -> tracing::Span {
        let name = self.info.get(L::index(cursor)).map(|s| s.name.as_str());
        tracing::info_span!("step", name = name.map(tracing::field::display))
    }
}

impl<J: Job, B: StepList> Then<B, J> {
    /// The steps before.
    pub fn before(&self) -> &B {
        &self.before
    }

    /// The step's job.
    pub fn job(&self) -> &J {
        &self.step.job
    }

    /// The step's job, to change.
    pub fn job_mut(&mut self) -> &mut J {
        &mut self.step.job
    }
}

impl<J> First<J> {
    /// The step's job.
    pub fn job(&self) -> &J {
        &self.step.job
    }

    /// The step's job, to change.
    pub fn job_mut(&mut self) -> &mut J {
        &mut self.step.job
    }
}

/// Where a [`Steps`] job stands: the step it is in and that step's own
/// cursor. `Default` is the start of the first step.
///
/// Encoded as an enum with a variant per step, holding its cursor: in JSON
/// `{"step1": …}` for the second step. `Debug` gives `step 1: …`.
pub struct StepCursor<L: StepList>(L::Cursor);

impl<L: StepList> StepCursor<L> {
    /// The step the job is in, by index from 0.
    pub fn step(&self) -> usize {
        L::index(&self.0)
    }

    /// Where in its steps: nested [`ThenCursor`]s.
    pub fn get(&self) -> &L::Cursor {
        &self.0
    }

    /// A cursor of nested [`ThenCursor`]s.
    pub fn new(cursor: L::Cursor) -> Self {
        Self(cursor)
    }
}

impl<L: StepList> Clone for StepCursor<L> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<L: StepList> Default for StepCursor<L> {
    fn default() -> Self {
        Self(L::Cursor::default())
    }
}

impl<L: StepList> fmt::Debug for StepCursor<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        L::fmt_cursor(&self.0, f)
    }
}

/// Every step's state in a [`Steps`] job, as nested pairs: for steps `a`,
/// `b`, `c`, `((A::State, B::State), C::State)`.
///
/// Encoded as a tuple with an element per step (a JSON array); in bincode
/// each element is framed with its length, so that a step's state can be
/// read without the others' types.
pub struct StepStates<L: StepList>(L::States);

impl<L: StepList> StepStates<L> {
    /// The states, as nested pairs.
    pub fn get(&self) -> &L::States {
        &self.0
    }

    /// States of nested pairs.
    pub fn new(states: L::States) -> Self {
        Self(states)
    }
}

impl<L: StepList> Clone for StepStates<L> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<L: StepList> Default for StepStates<L> {
    fn default() -> Self {
        Self(L::States::default())
    }
}

/// A [`Steps`] job could not move from one step to the next: the
/// [`complete`](Job::complete) of the step that ended failed, or the next
/// step's hook or [`resume`](Job::resume). Retried as a chunk's error when
/// it is [transient](crate::transient), never skipped: the job stays in
/// the step that ended.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
#[error("moving from step {from:?} to step {to:?}: {during} failed: {source}")]
pub struct TransitionError {
    /// The step that ended.
    pub from: String,
    /// The step that was to start.
    pub to: String,
    /// `complete` or `flush` (of `from`), or `resume` (of `to`, its hook included).
    pub during: &'static str,
    /// The error.
    #[source]
    pub source: BoxError,
}

/// Whether `error`, or an error in its chain of sources, is a [`TransitionError`].
pub(crate) fn is_transition(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<TransitionError>() {
            return true;
        }
        next = e.source();
    }
    false
}

#[async_trait]
impl<L: StepList> Job for Steps<L> {
    type Cursor = StepCursor<L>;
    type State = StepStates<L>;

    /// The layout of the steps' cursor and state, not the steps' own
    /// versions: those are in [`steps`](Job::steps).
    const SCHEMA_VERSION: u32 = 1;

    fn types(&self) -> Result<TypeDescription, TraceError> {
        let mut parts = Vec::with_capacity(L::LEN);
        self.list.describe(&mut parts);
        let parts = parts.into_iter().collect::<Result<Vec<_>, _>>()?;
        let named: Vec<(&str, &TypeDescription)> = self
            .info
            .iter()
            .map(|s| s.name.as_str())
            .zip(&parts)
            .collect();
        TypeDescription::of_steps(&named, &encoding::VARIANTS)
    }

    fn steps(&self) -> &[StepInfo] {
        &self.info
    }

    fn step(&self, cursor: &StepCursor<L>) -> usize {
        cursor.step()
    }

    fn migrate(
        &self,
        stored: &Checkpoint,
    ) -> Result<Option<(StepCursor<L>, StepStates<L>)>, BoxError> {
        if let Some(migrate) = &self.migrate {
            return migrate(stored);
        }
        let types = self.types().ok();
        Ok(
            parts::migrate(&self.list, &self.info, types.as_ref(), stored)?
                .map(|(cursor, states)| (StepCursor(cursor), StepStates(states))),
        )
    }

    async fn resume(
        &mut self,
        cursor: &StepCursor<L>,
        state: &StepStates<L>,
    ) -> Result<(), BoxError> {
        self.check_names()?;
        let span = self.span(&cursor.0);
        self.list.resume(&cursor.0, &state.0).instrument(span).await
    }

    async fn next_chunk(
        &mut self,
        cursor: &StepCursor<L>,
    ) -> Result<Option<Chunk<StepCursor<L>>>, BoxError> {
        let span = self.span(&cursor.0);
        let chunk = self.list.next_chunk(&cursor.0).instrument(span).await?;
        Ok(chunk.map(|chunk| chunk.map(StepCursor)))
    }

    async fn process(
        &mut self,
        chunk: &Chunk<StepCursor<L>>,
        state: &mut StepStates<L>,
        ctx: &ChunkContext,
    ) -> Result<(), BoxError> {
        let span = self.span(&chunk.start().0);
        let at = (&chunk.start().0, &chunk.next().0, chunk.items());
        self.list
            .process(at, &mut state.0, ctx)
            .instrument(span)
            .await
    }

    async fn complete(
        &mut self,
        cursor: &StepCursor<L>,
        state: &mut StepStates<L>,
    ) -> Result<(), BoxError> {
        let span = self.span(&cursor.0);
        self.list
            .complete(&cursor.0, &mut state.0)
            .instrument(span)
            .await
    }

    async fn flush(&mut self) -> Result<(), BoxError> {
        self.list.flush().await
    }

    fn total_items(&self) -> Option<u64> {
        self.list.total_items()
    }

    fn chunks_in_flight(&self) -> usize {
        self.list.chunks_in_flight()
    }
}
