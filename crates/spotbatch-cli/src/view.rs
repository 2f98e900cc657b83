//! Checkpoints as JSON for scripts (`--json`): stable field names, times both
//! as ms since the Unix epoch and as RFC 3339 UTC.

use serde::Serialize;
use spotbatch::{Checkpoint, Codec, Lease, RunRecord, Writer};

use crate::fmt;
use crate::target::live_lease;

#[derive(Serialize)]
pub(crate) struct CheckpointView {
    pub(crate) key: String,
    pub(crate) store: String,
    pub(crate) version: u64,
    pub(crate) status: &'static str,
    /// The interruption source or the failure message; empty otherwise.
    pub(crate) status_detail: String,
    /// For a job of steps, the step the cursor is in; `null` for a job of one step.
    pub(crate) step: Option<String>,
    /// The job's steps, in order: empty for a job of one step.
    pub(crate) steps: Vec<StepView>,
    pub(crate) codec: &'static str,
    pub(crate) cursor_type: String,
    pub(crate) schema: u32,
    /// The recorded shape of the cursor and state types; `null` when none is.
    pub(crate) types: Option<TypesView>,
    pub(crate) cursor: Payload,
    pub(crate) state: Payload,
    pub(crate) counters: CountersView,
    pub(crate) created_ms: u64,
    pub(crate) created: String,
    pub(crate) updated_ms: u64,
    pub(crate) updated: String,
    pub(crate) writer: WriterView,
    pub(crate) lease: Option<LeaseView>,
    pub(crate) history: Vec<RunView>,
    /// How many chunks are skipped and not yet redriven (`spotbatch skipped` lists them).
    pub(crate) skipped_chunks: usize,
    /// Whether the next run redrives them.
    pub(crate) redrive_requested: bool,
}

/// One step of a job of steps.
#[derive(Serialize)]
pub(crate) struct StepView {
    pub(crate) name: String,
    pub(crate) schema: u32,
}

/// The shape of the cursor and state types: as text, as stored (JSON), and
/// its fingerprint.
#[derive(Serialize)]
pub(crate) struct TypesView {
    pub(crate) fingerprint: String,
    pub(crate) text: String,
    pub(crate) stored: serde_json::Value,
}

impl TypesView {
    fn of(types: &spotbatch::TypeDescription) -> Self {
        Self {
            fingerprint: types.fingerprint(),
            text: types.to_string(),
            stored: serde_json::from_str(types.as_json())
                .unwrap_or_else(|_| serde_json::Value::String(types.as_json().to_owned())),
        }
    }
}

/// A cursor or state: decoded when the codec is self-describing, else raw.
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum Payload {
    Json { json: serde_json::Value },
    Raw { bytes: usize, hex: String },
}

impl Payload {
    pub(crate) fn of(codec: Codec, bytes: &[u8]) -> Self {
        if codec.is_self_describing() {
            if let Ok(json) = serde_json::from_slice(bytes) {
                return Payload::Json { json };
            }
        }
        Payload::Raw {
            bytes: bytes.len(),
            hex: fmt::hex(bytes, usize::MAX),
        }
    }
}

#[derive(Serialize)]
pub(crate) struct CountersView {
    pub(crate) chunks: u64,
    pub(crate) items: u64,
    pub(crate) checkpoints: u64,
    pub(crate) interruptions: u64,
    pub(crate) runs: u64,
}

#[derive(Serialize)]
pub(crate) struct WriterView {
    pub(crate) host: String,
    pub(crate) pid: u32,
    pub(crate) run_id: String,
    pub(crate) task: String,
}

impl From<&Writer> for WriterView {
    fn from(w: &Writer) -> Self {
        Self {
            host: w.host.clone(),
            pid: w.pid,
            run_id: w.run_id.to_string(),
            task: w.task.clone(),
        }
    }
}

#[derive(Serialize)]
pub(crate) struct LeaseView {
    pub(crate) owner: String,
    pub(crate) expires_ms: u64,
    pub(crate) expires: String,
    /// Whether it is still live now (expires in the future).
    pub(crate) live: bool,
    /// Negative once expired.
    pub(crate) expires_in_ms: i64,
}

impl LeaseView {
    pub(crate) fn of(c: &Checkpoint, lease: &Lease, now: u64) -> Self {
        let diff = i128::from(lease.expires_ms) - i128::from(now);
        Self {
            owner: lease.owner.to_string(),
            expires_ms: lease.expires_ms,
            expires: fmt::rfc3339(lease.expires_ms),
            live: live_lease(c, now).is_some(),
            expires_in_ms: i64::try_from(diff).unwrap_or(i64::MAX),
        }
    }
}

#[derive(Serialize)]
pub(crate) struct RunView {
    pub(crate) run_id: String,
    pub(crate) started_ms: u64,
    pub(crate) ended_ms: u64,
    pub(crate) outcome: String,
    pub(crate) chunks: u64,
    pub(crate) skipped: u64,
    pub(crate) host: String,
    pub(crate) task: String,
}

impl From<&RunRecord> for RunView {
    fn from(r: &RunRecord) -> Self {
        Self {
            run_id: r.run_id.to_string(),
            started_ms: r.started_ms,
            ended_ms: r.ended_ms,
            outcome: r.outcome.clone(),
            chunks: r.chunks,
            skipped: r.skipped,
            host: r.host.clone(),
            task: r.task.clone(),
        }
    }
}

/// The status's detail: the interruption source or the failure message.
pub(crate) fn status_detail(s: &spotbatch::Status) -> String {
    match s {
        spotbatch::Status::Interrupted { source } => source.clone(),
        spotbatch::Status::Failed { message } => message.clone(),
        _ => String::new(),
    }
}

impl CheckpointView {
    pub(crate) fn of(c: &Checkpoint, store: String, now: u64) -> Self {
        let k = &c.counters;
        Self {
            key: c.job.to_string(),
            store,
            version: c.version,
            status: c.status.name(),
            status_detail: status_detail(&c.status),
            step: c.step_name().map(str::to_owned),
            steps: c
                .steps
                .iter()
                .map(|s| StepView {
                    name: s.name.clone(),
                    schema: s.schema,
                })
                .collect(),
            codec: c.codec.name(),
            cursor_type: c.cursor_type.clone(),
            schema: c.schema,
            types: c.types.as_ref().map(TypesView::of),
            cursor: Payload::of(c.codec, &c.cursor),
            state: Payload::of(c.codec, &c.state),
            counters: CountersView {
                chunks: k.chunks,
                items: k.items,
                checkpoints: k.checkpoints,
                interruptions: k.interruptions,
                runs: k.runs,
            },
            created_ms: c.created_ms,
            created: fmt::rfc3339(c.created_ms),
            updated_ms: c.updated_ms,
            updated: fmt::rfc3339(c.updated_ms),
            writer: (&c.writer).into(),
            lease: c.lease.as_ref().map(|l| LeaseView::of(c, l, now)),
            history: c.history.iter().map(RunView::from).collect(),
            skipped_chunks: c.skipped.len(),
            redrive_requested: c.redrive,
        }
    }
}
