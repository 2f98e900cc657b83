//! The runner's side of the stored checkpoint: versions, encoding, lease, history.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::checkpoint::{
    now_ms, Checkpoint, CheckpointError, Counters, Lease, RunRecord, SkippedChunk, Status,
    StepInfo, Writer,
};
use crate::codec::Codec;
use crate::error::Error;
use crate::job::Job;
use crate::key::JobKey;
use crate::retry::Backoff;
use crate::types::{TraceError, TypeDescription};

use super::interrupts::{Interrupts, Stops};

mod lease;
use crate::store::{CheckpointStore, StoreError};
pub(crate) use lease::held_by_live_runner;

/// What a save writes besides the envelope's fixed fields.
#[derive(Clone)]
struct Payload {
    cursor: Vec<u8>,
    state: Vec<u8>,
    status: Status,
    /// The job's counters as of `cursor` (checkpoints aside).
    totals: Counters,
    /// Chunks this run finished as of `cursor`.
    run_chunks: u64,
    /// Chunks this run skipped as of `cursor`.
    run_skipped: u64,
    /// The chunks skipped as of `cursor`, not yet redriven.
    skipped: Vec<SkippedChunk>,
    /// Whether a redrive of `skipped` is still to be done.
    redrive: bool,
    /// Which of the job's steps `cursor` is in.
    step: u32,
}

/// How a write goes to the store.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    /// A checkpoint: takes or renews the lease.
    Save,
    /// A lease renewal during a chunk ([`CheckpointStore::renew`]).
    Renew,
    /// The run's last write: records its end and releases the lease.
    End,
    /// An end written on the last saved cursor ([`CheckpointStore::renew`]).
    Release,
}

/// Everything a save needs besides the cursor and state, and what the last save wrote.
pub(super) struct Session {
    store: Arc<dyn CheckpointStore>,
    pub(super) location: String,
    pub(super) key: JobKey,
    codec: Codec,
    cursor_type: &'static str,
    schema: u32,
    /// The shape of the job's cursor and state types (`None`: they cannot
    /// be traced, and are checked by name only).
    types: Option<TypeDescription>,
    /// The job's steps ([`Job::steps`]): empty for a job of one step.
    steps: Vec<StepInfo>,
    writer: Writer,
    lease_ttl: Option<Duration>,
    /// The version in the store (`None`: nothing stored).
    pub(super) stored: Option<u64>,
    created_ms: u64,
    pub(super) totals: Counters,
    run_chunks: u64,
    run_skipped: u64,
    /// The chunks skipped and not yet redriven, as the next save records them.
    pub(super) skipped: Vec<SkippedChunk>,
    /// Whether the skipped chunks are to be redriven, as the next save records it.
    pub(super) redrive: bool,
    history: Vec<RunRecord>,
    /// What the last save wrote, for lease renewals and releases.
    last: Option<Payload>,
    /// What the checkpoint the run resumed from holds: where a run without
    /// a lease records a failure before its first save.
    loaded: Option<Payload>,
    last_save: Instant,
    /// A write's outcome is unknown (it failed or was cut off, and may have
    /// landed): the store is asked before the next write.
    unsure: bool,
    /// This run, known to other runners of the same process.
    _live: lease::LiveRun,
    /// The run's stop record, which the watchdog reads: each save is kept
    /// there, and no save is made once the watchdog took over.
    stops: Arc<Stops>,
}

impl Session {
    pub(super) fn new<J: Job>(
        job: &J,
        store: Arc<dyn CheckpointStore>,
        key: JobKey,
        codec: Codec,
        lease_ttl: Option<Duration>,
        stops: Arc<Stops>,
    ) -> Self {
        let writer = Writer::this_process();
        let writer_run_id = writer.run_id;
        let types = described(job.types(), &key);
        Self {
            steps: job.steps().to_vec(),
            location: store.location(),
            store,
            key,
            codec,
            cursor_type: J::cursor_type(),
            schema: J::SCHEMA_VERSION,
            types,
            history: vec![RunRecord::started(&writer, now_ms())],
            writer,
            lease_ttl,
            stored: None,
            created_ms: now_ms(),
            totals: Counters::default(),
            run_chunks: 0,
            run_skipped: 0,
            skipped: Vec::new(),
            redrive: false,
            last: None,
            loaded: None,
            last_save: Instant::now(),
            unsure: false,
            _live: lease::LiveRun::register(writer_run_id),
            stops,
        }
    }

    /// The name of the job's step `step`, for a job of steps.
    pub(super) fn step_name(&self, step: usize) -> Option<&str> {
        self.steps.get(step).map(|s| s.name.as_str())
    }

    /// The name of the step the last saved checkpoint is in, for a job of steps.
    pub(super) fn saved_step(&self) -> Option<&str> {
        let step = self.last.as_ref()?.step;
        self.step_name(usize::try_from(step).ok()?)
    }

    /// How the run encodes cursors.
    pub(super) fn codec(&self) -> Codec {
        self.codec
    }

    /// This run's id.
    pub(super) fn run_id(&self) -> uuid::Uuid {
        self.writer.run_id
    }

    /// Records the platform's name for this task as the writer's.
    pub(super) fn set_task(&mut self, task: String) {
        for run in &mut self.history {
            if run.run_id == self.writer.run_id {
                run.task.clone_from(&task);
            }
        }
        self.writer.task = task;
    }

    pub(super) fn bad(&self, reason: CheckpointError) -> Error {
        Error::BadCheckpoint {
            store: self.location.clone(),
            key: self.key.to_string(),
            reason,
        }
    }

    pub(super) fn not_saved(&self, source: StoreError) -> Error {
        Error::CheckpointNotSaved {
            store: self.location.clone(),
            key: self.key.to_string(),
            resume_from: self.stored,
            source: Box::new(source),
        }
    }

    /// Refuses another job's checkpoint.
    pub(super) fn check_belongs(&self, stored: &Checkpoint) -> Result<(), Error> {
        if stored.job != self.key {
            return Err(self.bad(CheckpointError::WrongJob {
                expected: self.key.to_string(),
                found: stored.job.to_string(),
            }));
        }
        Ok(())
    }

    /// Whether the job reads `stored` as it was written: the same steps (for
    /// a job of steps), the same schema version, and the same shape of the
    /// cursor and state types (or only compatible changes), or the same
    /// type name where either shape is unknown (a checkpoint written before
    /// shapes were recorded, or types that cannot be traced).
    ///
    /// # Errors
    ///
    /// What changed: [`CheckpointError::StepsChanged`] for other steps,
    /// [`CheckpointError::TypesChanged`] with each change of shape, or
    /// [`CheckpointError::CursorTypeChanged`] for another name or schema
    /// version.
    pub(super) fn check_types(&self, stored: &Checkpoint) -> Result<(), CheckpointError> {
        if stored.steps != self.steps {
            return Err(CheckpointError::StepsChanged {
                expected: self.steps.clone(),
                found: stored.steps.clone(),
            });
        }
        let name_changed = || CheckpointError::CursorTypeChanged {
            expected: self.cursor_type.to_owned(),
            expected_schema: self.schema,
            found: stored.cursor_type.clone(),
            found_schema: stored.schema,
        };
        if stored.schema != self.schema {
            return Err(name_changed());
        }
        let compared = match (&stored.types, &self.types) {
            (Some(then), Some(now)) => then.changes_to(now),
            _ => None,
        };
        match compared {
            Some(Ok(())) => {
                if stored.cursor_type != self.cursor_type {
                    info!(job = %self.key.short(), then = %stored.cursor_type, now = %self.cursor_type, "the cursor and state types were renamed; their shape is the same");
                }
                Ok(())
            }
            Some(Err(changes)) => Err(CheckpointError::TypesChanged {
                expected: self.cursor_type.to_owned(),
                found: stored.cursor_type.clone(),
                changes,
            }),
            None if stored.cursor_type != self.cursor_type => Err(name_changed()),
            None => {
                if stored.types.is_some() && self.types.is_some() {
                    warn!(job = %self.key.short(), "the checkpoint's type description is of another format version: the types are checked by name only");
                } else if stored.types.is_none() && self.types.is_some() {
                    info!(job = %self.key.short(), "the checkpoint has no type description: the types are checked by name; the next save records it");
                }
                Ok(())
            }
        }
    }

    pub(super) fn decode<J: Job>(
        &self,
        stored: &Checkpoint,
    ) -> Result<(J::Cursor, J::State), Error> {
        let cursor = stored
            .codec
            .decode(&stored.cursor)
            .map_err(|e| self.bad(e.into()))?;
        let state = stored
            .codec
            .decode(&stored.state)
            .map_err(|e| self.bad(e.into()))?;
        Ok((cursor, state))
    }

    /// Continues from a stored checkpoint: its version, and unless starting
    /// over, its creation time and counters. Keeps its run history, marking
    /// runs that never recorded an end as killed.
    pub(super) fn adopt(&mut self, stored: &Checkpoint, start_over: bool) {
        self.stored = Some(stored.version);
        if !start_over {
            self.created_ms = stored.created_ms;
            self.totals = stored.counters;
            self.skipped.clone_from(&stored.skipped);
            self.redrive = stored.redrive;
            self.loaded = Some(Payload {
                cursor: stored.cursor.clone(),
                state: stored.state.clone(),
                status: stored.status.clone(),
                totals: stored.counters,
                run_chunks: 0,
                run_skipped: 0,
                skipped: stored.skipped.clone(),
                redrive: stored.redrive,
                step: stored.step,
            });
        }
        let mut history = stored.history.clone();
        for run in &mut history {
            if run.ended_ms == 0 && run.outcome == Status::Running.name() {
                run.outcome = "killed".into();
            }
        }
        let keep = Checkpoint::HISTORY_LEN - 1;
        if history.len() > keep {
            history.drain(..history.len() - keep);
        }
        history.append(&mut self.history);
        self.history = history;
    }

    /// Records a skipped chunk, for the next save.
    pub(super) fn record_skip(&mut self, skipped: SkippedChunk) {
        self.skipped.push(skipped);
        self.run_skipped += 1;
    }

    /// Counts a finished chunk.
    pub(super) fn record_chunk(&mut self, items: u64) {
        self.totals.chunks += 1;
        self.totals.items += items;
        self.run_chunks += 1;
    }

    /// Marks the start of a run (and takes the lease, if any) with a first
    /// save, retrying transient store errors with `backoff` unless a stop is
    /// requested first.
    pub(super) async fn begin<J: Job>(
        &mut self,
        (cursor, state, step): (&J::Cursor, &J::State, usize),
        interrupts: &Interrupts,
        mut backoff: Backoff,
    ) -> Result<(), Error> {
        self.totals.runs += 1;
        if self.lease_ttl.is_none() {
            return Ok(());
        }
        loop {
            let saved = self
                .save::<J>((cursor, state, step), Status::Running, false)
                .await;
            let e = match saved {
                Err(Error::Store(e)) if e.is_transient() && !interrupts.stop_requested() => e,
                other => return other,
            };
            let Some(delay) = backoff.next_delay() else {
                return Err(e.into());
            };
            warn!(job = %self.key.short(), error = %e, retry_in = ?delay, "cannot take the job's lease yet; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Saves a checkpoint of `cursor` and `state`, in the job's step `step`.
    /// `end` releases the lease and records the run's end.
    pub(super) async fn save<J: Job>(
        &mut self,
        (cursor, state, step): (&J::Cursor, &J::State, usize),
        status: Status,
        end: bool,
    ) -> Result<(), Error> {
        // Only bytes that read back are written: the store keeps the last
        // readable checkpoint otherwise.
        let encode_error = |what: &'static str| {
            move |e: crate::codec::CodecError| Error::Job {
                during: "encoding the cursor and state".into(),
                source: Box::new(e.of(what)),
            }
        };
        let payload = Payload {
            cursor: self
                .codec
                .encode_checked(cursor)
                .map_err(encode_error("cursor"))?,
            state: self
                .codec
                .encode_checked(state)
                .map_err(encode_error("state"))?,
            status,
            totals: self.totals,
            run_chunks: self.run_chunks,
            run_skipped: self.run_skipped,
            skipped: self.skipped.clone(),
            redrive: self.redrive,
            step: u32::try_from(step).unwrap_or(u32::MAX),
        };
        self.write(payload, if end { Write::End } else { Write::Save })
            .await
    }

    /// Ends a run that cannot save where it stands (its flush or encoding
    /// failed, or it failed before its first chunk): records `status` on the
    /// last saved cursor and state and releases the lease. When this run
    /// saved nothing yet it holds no lease: then a failure of a run without
    /// a lease is recorded on the checkpoint it resumed from, and anything
    /// else does nothing.
    pub(super) async fn release(&mut self, status: Status) -> Result<(), Error> {
        // Twice at most: the first attempt may find (and adopt) a write of
        // this run that landed late, whose cursor the release must carry.
        let mut attempts = 2;
        loop {
            self.reconcile().await;
            let fallback = match &status {
                Status::Failed { .. } if self.lease_ttl.is_none() => self.loaded.clone(),
                _ => None,
            };
            let Some(mut payload) = self.last.clone().or(fallback) else {
                return Ok(());
            };
            payload.status = status.clone();
            payload.totals.interruptions = self.totals.interruptions;
            payload.totals.runs = self.totals.runs;
            attempts -= 1;
            match self.write(payload, Write::Release).await {
                Err(Error::Store(e)) if e.is_transient() && attempts > 0 => {
                    warn!(job = %self.key.short(), error = %e, "recording the run's end failed; once more");
                }
                other => return other,
            }
        }
    }

    /// When the lease must be renewed by, if the run holds one.
    #[inline]
    pub(super) fn renew_at(&self) -> Option<Instant> {
        self.lease_ttl.map(|ttl| self.last_save + ttl / 3)
    }

    /// Renews the lease by saving again what the last save wrote (cursor,
    /// state and counters), through [`CheckpointStore::renew`].
    pub(super) async fn renew(&mut self) -> Result<(), Error> {
        self.reconcile().await;
        let Some(payload) = self.last.clone() else {
            return Ok(());
        };
        match self.write(payload, Write::Renew).await {
            Err(Error::Store(e)) if e.is_transient() => {
                warn!(job = %self.key.short(), error = %e, "lease renewal failed; retrying shortly");
                // Retry after a tenth of the lease rather than at once.
                let ttl = self.lease_ttl.unwrap_or_default();
                self.last_save = Instant::now() - ttl / 3 + ttl / 10;
                Ok(())
            }
            other => other,
        }
    }

    async fn write(&mut self, payload: Payload, how: Write) -> Result<(), Error> {
        // After the watchdog recorded the run's end, nothing more is written.
        self.stops.may_write().await;
        self.reconcile().await;
        if self.unsure {
            // Writing now could fence this run off with its own write, or
            // (renewals, releases) put an older cursor over it.
            return Err(self.unknown("cannot tell whether the previous save reached the store"));
        }
        let end = matches!(how, Write::End | Write::Release);
        let now = now_ms();
        let mut checkpoint = Checkpoint::new(self.key.clone(), self.writer.clone());
        checkpoint.version = self.stored.map_or(1, |v| v + 1);
        checkpoint.status = payload.status.clone();
        checkpoint.codec = self.codec;
        checkpoint.cursor_type = self.cursor_type.to_owned();
        checkpoint.schema = self.schema;
        checkpoint.types.clone_from(&self.types);
        checkpoint.cursor = payload.cursor.clone();
        checkpoint.state = payload.state.clone();
        checkpoint.counters = payload.totals;
        checkpoint.counters.checkpoints = self.totals.checkpoints + 1;
        checkpoint.created_ms = self.created_ms;
        checkpoint.updated_ms = now;
        checkpoint.lease = match self.lease_ttl {
            Some(ttl) if !end => Some(Lease::new(self.writer.run_id, now + ttl.as_millis() as u64)),
            _ => None,
        };
        if let Some(run) = self.history.last_mut() {
            run.chunks = payload.run_chunks;
            run.skipped = payload.run_skipped;
            if end {
                run.ended_ms = now;
                run.outcome = payload.status.to_string();
            }
        }
        checkpoint.history = self.history.clone();
        checkpoint.skipped.clone_from(&payload.skipped);
        checkpoint.redrive = payload.redrive;
        checkpoint.steps.clone_from(&self.steps);
        checkpoint.step = if self.steps.is_empty() {
            0
        } else {
            payload.step
        };
        self.unsure = true;
        match self.put(&checkpoint, how).await {
            Ok(()) => {}
            Err(conflict @ StoreError::Conflict { .. }) => {
                // Another runner's save, or one of ours: this very save (a
                // retry inside the store conflicting with its own first
                // attempt, whose answer was lost), or an earlier one that was
                // cut off and landed late.
                match self.store.load(&self.key).await {
                    Ok(Some(stored)) if stored == checkpoint => {}
                    Ok(Some(stored)) if self.adopt_own(&stored) => {
                        self.unsure = false;
                        return Err(self.unknown(
                            "an earlier save of this run landed late; the next attempt writes over it",
                        ));
                    }
                    Ok(_) => {
                        self.unsure = false;
                        return Err(conflict.into());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(corrupt @ StoreError::Corrupt { .. }) => {
                // Nothing was written.
                self.unsure = false;
                return Err(corrupt.into());
            }
            // It may have landed: the next write asks the store first.
            Err(e) => return Err(e.into()),
        }
        self.unsure = false;
        self.stored = Some(checkpoint.version);
        self.totals.checkpoints += 1;
        self.last_save = Instant::now();
        self.last = Some(payload);
        self.stops.stored(&self.store, checkpoint);
        Ok(())
    }

    fn unknown(&self, why: &str) -> Error {
        StoreError::Io {
            store: self.location.clone(),
            key: self.key.to_string(),
            operation: "save",
            source: why.into(),
        }
        .into()
    }

    async fn put(&self, checkpoint: &Checkpoint, how: Write) -> Result<(), StoreError> {
        match how {
            Write::Renew | Write::Release => self.store.renew(checkpoint, self.stored).await,
            Write::Save | Write::End => self.store.save(checkpoint, self.stored).await,
        }
    }
}

impl Session {
    /// Settles a write whose outcome is unknown by asking the store. Stays
    /// unknown when the store cannot be read.
    async fn reconcile(&mut self) {
        if !self.unsure {
            return;
        }
        if let Ok(stored) = self.store.load(&self.key).await {
            self.unsure = false;
            if let Some(stored) = stored {
                self.adopt_own(&stored);
            }
        }
    }

    /// Takes `stored` as the last save if this run wrote it after the last
    /// save it knows of (a save whose answer was lost, or that was cut off
    /// and landed anyway): later renewals and releases then carry its
    /// cursor, never an older one.
    fn adopt_own(&mut self, stored: &Checkpoint) -> bool {
        if stored.writer != self.writer || Some(stored.version) <= self.stored {
            return false;
        }
        info!(job = %self.key.short(), version = stored.version, "a save of this run reached the store although it was not confirmed");
        let (run_chunks, run_skipped) = stored
            .history
            .iter()
            .find(|run| run.run_id == self.writer.run_id)
            .map_or((0, 0), |run| (run.chunks, run.skipped));
        self.stored = Some(stored.version);
        self.stops.stored(&self.store, stored.clone());
        self.totals.checkpoints = self.totals.checkpoints.max(stored.counters.checkpoints);
        self.last_save = Instant::now();
        self.last = Some(Payload {
            cursor: stored.cursor.clone(),
            state: stored.state.clone(),
            status: stored.status.clone(),
            totals: stored.counters,
            run_chunks,
            run_skipped,
            skipped: stored.skipped.clone(),
            redrive: stored.redrive,
            step: stored.step,
        });
        true
    }
}

/// The shape of the job's cursor and state types, as [`Job::types`] gave
/// it; `None` (logged) for types that cannot be traced.
fn described(types: Result<TypeDescription, TraceError>, key: &JobKey) -> Option<TypeDescription> {
    match types {
        Ok(types) => Some(types),
        Err(e) => {
            warn!(job = %key.short(), error = %e, "a change of the cursor or state types is detected by their name only");
            None
        }
    }
}
