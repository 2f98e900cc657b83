//! A stored checkpoint of a job of steps, cut into its steps' parts: how
//! [`Steps`](super::Steps) forwards [`Job::migrate`] to the step the
//! checkpoint is in.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::encoding::variant_index;
use super::list::StepList;
use crate::checkpoint::{Checkpoint, StepInfo};
use crate::codec::Codec;
use crate::error::BoxError;
use crate::job::Job;
use crate::types::TypeDescription;

/// A stored checkpoint's cursor and states, each as its step alone would
/// have encoded it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Parts {
    /// The step the cursor is in.
    pub(super) step: usize,
    /// That step's cursor.
    pub(super) cursor: Vec<u8>,
    /// Every step's state.
    pub(super) states: Vec<Vec<u8>>,
}

/// Cuts `stored`, the checkpoint of a job of `steps` steps, into its parts.
///
/// # Errors
///
/// The bytes are not those of a job of that many steps, or the codec is one
/// this version cannot cut.
pub(super) fn split(stored: &Checkpoint, steps: usize) -> Result<Parts, BoxError> {
    let bad = |what: &str| -> BoxError {
        format!("the checkpoint's {what} is not that of a job of {steps} steps").into()
    };
    match stored.codec {
        Codec::Bincode => {
            let config = bincode::config::standard();
            let (step, used): (u32, usize) =
                bincode::serde::decode_from_slice(&stored.cursor, config)
                    .map_err(|_| bad("cursor"))?;
            let mut rest = stored.state.as_slice();
            let mut states = Vec::with_capacity(steps);
            for _ in 0..steps {
                let (len, used): (u64, usize) =
                    bincode::serde::decode_from_slice(rest, config).map_err(|_| bad("state"))?;
                let len = usize::try_from(len).map_err(|_| bad("state"))?;
                let part = rest
                    .get(used..used.saturating_add(len))
                    .ok_or_else(|| bad("state"))?;
                states.push(part.to_vec());
                rest = &rest[used + len..];
            }
            if !rest.is_empty() {
                return Err(bad("state"));
            }
            Ok(Parts {
                step: step as usize,
                cursor: stored.cursor[used..].to_vec(),
                states,
            })
        }
        Codec::Json => {
            let cursor: Value = serde_json::from_slice(&stored.cursor)?;
            let Some((name, cursor)) = cursor
                .as_object()
                .filter(|o| o.len() == 1)
                .and_then(|o| o.iter().next())
            else {
                return Err(bad("cursor"));
            };
            let step = variant_index(name).ok_or_else(|| bad("cursor"))?;
            let state: Value = serde_json::from_slice(&stored.state)?;
            let states = match state {
                Value::Array(states) if states.len() == steps => states
                    .iter()
                    .map(serde_json::to_vec)
                    .collect::<Result<_, _>>()?,
                _ => return Err(bad("state")),
            };
            Ok(Parts {
                step,
                cursor: serde_json::to_vec(cursor)?,
                states,
            })
        }
    }
}

/// What rebuilding a job of steps' position from a stored checkpoint needs:
/// the parts, and which steps changed since.
pub struct Rebuild<'a> {
    stored: &'a Checkpoint,
    parts: Parts,
    /// Per step: whether its types or schema version changed since the
    /// checkpoint was written (`None`: cannot be told).
    changed: Vec<Option<bool>>,
}

impl Rebuild<'_> {
    /// Step `step`'s stored state, when its step did not change: decoded as
    /// it is. `None` when it changed, or whether it did cannot be told.
    pub(super) fn unchanged<S: DeserializeOwned>(
        &self,
        step: usize,
    ) -> Result<Option<S>, BoxError> {
        if self.changed.get(step).copied().flatten() != Some(false) {
            return Ok(None);
        }
        let bytes = self.parts.states.get(step).ok_or("no such step")?;
        Ok(Some(self.stored.codec.decode(bytes)?))
    }

    /// The cursor and state of the step the checkpoint is in (`step`, of
    /// job `job`): decoded as they are when the step did not change, else
    /// converted by its [`Job::migrate`] from its own part of the checkpoint.
    #[allow(clippy::type_complexity)] // a cursor and a state, as `Job::migrate` returns them
    pub(super) fn current<J: Job>(
        &self,
        job: &J,
        step: usize,
    ) -> Result<Option<(J::Cursor, J::State)>, BoxError> {
        if self.changed.get(step).copied().flatten() == Some(false) {
            let state = self.unchanged(step)?;
            let cursor = self.stored.codec.decode(&self.parts.cursor)?;
            return Ok(state.map(|state| (cursor, state)));
        }
        job.migrate(&self.view(step))
    }

    /// The checkpoint as step `step` alone would have had it: its cursor and
    /// state, its schema version and its part of the type description.
    fn view(&self, step: usize) -> Checkpoint {
        let mut view = self.stored.clone();
        view.cursor.clone_from(&self.parts.cursor);
        view.state = self.parts.states.get(step).cloned().unwrap_or_default();
        view.schema = self.stored.steps.get(step).map_or(0, |s| s.schema);
        view.types = self.stored.types.as_ref().and_then(|t| t.step_part(step));
        view.steps = Vec::new();
        view.step = 0;
        view
    }
}

/// The position a job of steps `list` (of steps `now`, types `types`)
/// resumes from when `stored` was written with other types or schema
/// versions: the steps before the one the checkpoint is in must be
/// unchanged (their states are read as they are), the step it is in is
/// read as it is or converted by its own [`Job::migrate`], and the steps
/// after it start from their defaults. `None` when the steps' names
/// changed, or a step before changed.
///
/// # Errors
///
/// The checkpoint cannot be cut into its steps' parts, a part does not
/// decode, or the step's `migrate` fails.
#[allow(clippy::type_complexity)] // a cursor and a state, as `Job::migrate` returns them
pub(super) fn migrate<L: StepList>(
    list: &L,
    now: &[StepInfo],
    types: Option<&TypeDescription>,
    stored: &Checkpoint,
) -> Result<Option<(L::Cursor, L::States)>, BoxError> {
    let names = |steps: &[StepInfo]| steps.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    if names(&stored.steps) != names(now) {
        return Ok(None);
    }
    let parts = split(stored, now.len())?;
    if parts.step != stored.step as usize {
        return Err(format!(
            "the checkpoint's cursor is in step {}, but it records step {}",
            parts.step, stored.step
        )
        .into());
    }
    let changed = (0..now.len())
        .map(|i| {
            if stored.steps[i].schema != now[i].schema {
                return Some(true);
            }
            let then = stored.types.as_ref()?.step_part(i)?;
            let now = types?.step_part(i)?;
            Some(then.changes_to(&now)?.is_err())
        })
        .collect();
    let step = parts.step;
    list.rebuild(
        step,
        &Rebuild {
            stored,
            parts,
            changed,
        },
    )
}
