//! The job-level checkpoint, under the job's own key: created by the first
//! task with the number of partitions, checked by every later one, and
//! marked completed, once, by the completion step, a run whose one chunk is
//! the completion hook.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::checkpoint::{Checkpoint, CheckpointError, Status, Writer};
use crate::codec::Codec;
use crate::error::{BoxError, Error};
use crate::job::{Chunk, ChunkContext, Job};
use crate::key::JobKey;
use crate::retry::Backoff;
use crate::store::{CheckpointStore, StoreError};

use super::stops::Stops;

/// The cursor type the job-level checkpoint records ([`Job::cursor_type`]).
const MANIFEST_TYPE: &str = "spotbatch/partitioned-job";

/// The job-level checkpoint's cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Manifest {
    /// How many partitions the job has.
    pub(super) partitions: u32,
    /// Whether the completion hook has run (the chunk of the completion step is done).
    pub(super) finished: bool,
}

/// How many partitions the job whose job-level checkpoint is `checkpoint`
/// has; `None` when it is not a partitioned job's (or does not decode).
pub fn partitions_of(checkpoint: &Checkpoint) -> Option<u32> {
    if checkpoint.cursor_type != MANIFEST_TYPE {
        return None;
    }
    checkpoint
        .codec
        .decode::<Manifest>(&checkpoint.cursor)
        .ok()
        .map(|m| m.partitions)
}

/// The completion hook, as the completion step calls it.
pub(super) type Hook = Arc<
    dyn Fn(ChunkContext) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>
        + Send
        + Sync,
>;

/// The completion step, as a job: one chunk, the hook.
pub(super) struct Completion {
    pub(super) hook: Option<Hook>,
}

#[async_trait::async_trait]
impl Job for Completion {
    type Cursor = Manifest;
    type State = ();

    fn cursor_type() -> &'static str {
        MANIFEST_TYPE
    }

    async fn next_chunk(&mut self, at: &Manifest) -> Result<Option<Chunk<Manifest>>, BoxError> {
        if at.finished {
            return Ok(None);
        }
        let done = Manifest {
            finished: true,
            ..at.clone()
        };
        Ok(Some(Chunk::new(at.clone(), done).with_items(0)))
    }

    async fn process(
        &mut self,
        _: &Chunk<Manifest>,
        _: &mut (),
        ctx: &ChunkContext,
    ) -> Result<(), BoxError> {
        match &self.hook {
            Some(hook) => hook(ctx.clone()).await,
            None => Ok(()),
        }
    }
}

/// What the job-level checkpoint says at a task's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JobState {
    /// Not completed: there is work, or the completion step, to do.
    Open,
    /// Marked completed.
    Completed,
}

/// Loads the job-level checkpoint, creating it (expecting no version) when
/// there is none, and checks that it is a partitioned job's with
/// `partitions` partitions. Transient store errors are retried for up to
/// 30 s; `None`: a stop request came first.
///
/// # Errors
///
/// [`Error::BadCheckpoint`] when the job's key holds something else (a
/// single job's checkpoint); [`Error::Config`] when the job has another
/// number of partitions; store errors.
pub(super) async fn open_job(
    store: &dyn CheckpointStore,
    job: &JobKey,
    partitions: u32,
    stops: &Stops,
) -> Result<Option<JobState>, Error> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
        .within(Duration::from_secs(30));
    loop {
        if stops.requested() {
            return Ok(None);
        }
        let result = match store.load(job).await {
            Ok(Some(stored)) => check(store, job, &stored, partitions).map(Some),
            Ok(None) => match store.save(&manifest(job, partitions)?, None).await {
                Ok(()) => {
                    info!(job = %job.short(), partitions, "created the job-level checkpoint");
                    Ok(Some(JobState::Open))
                }
                // Another task created it first: read theirs.
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        };
        match result {
            Err(Error::Store(e)) if e.is_transient() => {
                let Some(delay) = backoff.next_delay() else {
                    return Err(e.into());
                };
                warn!(job = %job.short(), error = %e, retry_in = ?delay, "cannot read the job-level checkpoint yet; retrying");
                if !stops.sleep(delay).await {
                    return Ok(None);
                }
            }
            other => return other,
        }
    }
}

fn check(
    store: &dyn CheckpointStore,
    job: &JobKey,
    stored: &Checkpoint,
    partitions: u32,
) -> Result<JobState, Error> {
    let bad = |reason| Error::BadCheckpoint {
        store: store.location(),
        key: job.to_string(),
        reason,
    };
    if stored.cursor_type != MANIFEST_TYPE {
        return Err(bad(CheckpointError::CursorTypeChanged {
            expected: MANIFEST_TYPE.to_owned(),
            expected_schema: Completion::SCHEMA_VERSION,
            found: stored.cursor_type.clone(),
            found_schema: stored.schema,
        }));
    }
    let manifest: Manifest = stored
        .codec
        .decode(&stored.cursor)
        .map_err(|e| bad(e.into()))?;
    if manifest.partitions != partitions {
        return Err(Error::Config(format!(
            "{}: job {:?} has {} partitions, this task was given {partitions}: \
             every task of a job must have the same number (to change it, start the job \
             under a new key)",
            store.location(),
            job.as_str(),
            manifest.partitions
        )));
    }
    Ok(if stored.status == Status::Completed {
        JobState::Completed
    } else {
        JobState::Open
    })
}

/// The first job-level checkpoint: the manifest, no lease, status running.
fn manifest(job: &JobKey, partitions: u32) -> Result<Checkpoint, Error> {
    let mut c = Checkpoint::new(job.clone(), Writer::this_process());
    c.codec = Codec::Json;
    c.cursor_type = MANIFEST_TYPE.to_owned();
    c.schema = Completion::SCHEMA_VERSION;
    let encode = |e| Error::Job {
        during: "encoding the job-level checkpoint".into(),
        source: Box::new(e),
    };
    c.cursor = Codec::Json
        .encode(&Manifest {
            partitions,
            finished: false,
        })
        .map_err(encode)?;
    c.state = Codec::Json.encode(&()).map_err(encode)?;
    Ok(c)
}
