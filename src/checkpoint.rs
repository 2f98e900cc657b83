//! The checkpoint envelope: what a store holds for one job, and its binary form.
//!
//! # Format (version 4)
//!
//! All integers little-endian; `str` and `bytes` are a `u32` length then the bytes.
//!
//! ```text
//! magic        8 bytes  "SPOTBKPT"
//! format       u16      4
//! body length  u32      bytes between this field and the checksum
//! body:
//!   job key str, version u64,
//!   status u8 (0 running, 1 interrupted, 2 completed, 3 failed), status detail str,
//!   codec u8, cursor type str, schema u32,
//!   type description str (JSON; empty when none),
//!   cursor bytes, state bytes,
//!   chunks u64, items u64, checkpoints u64, interruptions u64, runs u64,
//!   created ms u64, updated ms u64 (Unix epoch),
//!   writer host str, writer pid u32, writer run id 16 bytes, writer task str,
//!   writer pid namespace u64,
//!   lease u8 (0 none, 1 held) [owner run id 16 bytes, expires ms u64],
//!   history count u32, then per run: run id 16 bytes, started ms u64,
//!     ended ms u64 (0 while running), outcome str, chunks u64, host str, task str,
//!     skipped u64,
//!   skipped count u32, then per skipped chunk: codec u8, start bytes, next bytes,
//!     start text str, next text str, items u64, attempts u32, skipped ms u64,
//!     run id 16 bytes, error str,
//!   redrive requested u8 (0 no, 1 yes),
//!   steps count u32, then per step: name str, schema u32,
//!   current step u32
//! checksum     u32      CRC-32 (IEEE) of every byte before it
//! ```
//!
//! The envelope layout is written by hand, not by the cursor codec, so the
//! codec can change without making stored checkpoints unreadable. Format 1
//! (written before the type description was added) is the same without
//! that field; it is still read, as a checkpoint without a description.
//! Format 2 (written before skipped chunks were recorded) is format 3
//! without the runs' skipped counts, the skipped chunks and the redrive
//! flag; it is read as a checkpoint with none skipped. Format 3 (written
//! before jobs of steps) is format 4 without the steps; it is read as the
//! checkpoint of a job of one step.
//!
//! ```
//! use spotbatch::checkpoint::{Checkpoint, Writer};
//! use spotbatch::JobKey;
//!
//! let checkpoint = Checkpoint::new(JobKey::new("nightly")?, Writer::this_process());
//! let mut bytes = checkpoint.encode();
//! assert_eq!(&bytes[..8], b"SPOTBKPT");
//! assert_eq!(Checkpoint::decode(&bytes)?, checkpoint);
//!
//! bytes[20] ^= 1; // one flipped bit in the body
//! assert!(Checkpoint::decode(&bytes).is_err()); // refused: the CRC-32 does not match
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::codec::{Codec, CodecError};
use crate::key::JobKey;
use crate::types::TypeDescription;

const MAGIC: &[u8; 8] = b"SPOTBKPT";
/// The envelope format this build writes; it reads this one and formats 1 to 3.
pub(crate) const FORMAT: u16 = 4;
/// The format before the type description.
const FORMAT_1: u16 = 1;
/// The format before the skipped chunks.
const FORMAT_2: u16 = 2;
/// The format before the steps.
const FORMAT_3: u16 = 3;
const HEADER_LEN: usize = 8 + 2 + 4;
const CHECKSUM_LEN: usize = 4;

/// Where a job stood when its checkpoint was written.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// A periodic checkpoint of a run in progress (or of a run that was killed
    /// before it could write another one).
    Running,
    /// The run stopped on request (signal, deadline, notice) and can resume.
    Interrupted {
        /// What asked it to stop, e.g. `"SIGTERM"`.
        source: String,
    },
    /// The job has no more chunks; a new run exits at once.
    Completed,
    /// A chunk failed; the cursor is at the last chunk that finished.
    Failed {
        /// The error, as text.
        message: String,
    },
}

impl Status {
    /// A one-word name: `running`, `interrupted`, `completed` or `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Interrupted { .. } => "interrupted",
            Status::Completed => "completed",
            Status::Failed { .. } => "failed",
        }
    }

    fn tag_and_detail(&self) -> (u8, &str) {
        match self {
            Status::Running => (0, ""),
            Status::Interrupted { source } => (1, source),
            Status::Completed => (2, ""),
            Status::Failed { message } => (3, message),
        }
    }

    fn from_tag(tag: u8, detail: String) -> Option<Self> {
        Some(match tag {
            0 => Status::Running,
            1 => Status::Interrupted { source: detail },
            2 => Status::Completed,
            3 => Status::Failed { message: detail },
            _ => return None,
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Interrupted { source } => write!(f, "interrupted ({source})"),
            Status::Failed { message } => write!(f, "failed: {message}"),
            other => f.write_str(other.name()),
        }
    }
}

/// Totals over every run of a job.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Chunks finished and covered by this checkpoint.
    pub chunks: u64,
    /// Items in those chunks (as the job counts them).
    pub items: u64,
    /// Checkpoints written, this one included.
    pub checkpoints: u64,
    /// Runs that ended interrupted.
    pub interruptions: u64,
    /// Runs started.
    pub runs: u64,
}

/// Which process wrote a checkpoint.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Unique id of the run (one per [`Runner::run`](crate::Runner::run)).
    pub run_id: Uuid,
    /// The platform's name for the task (e.g. an ECS task ARN), empty when unknown.
    pub task: String,
    /// The inode of the writer's PID namespace (`/proc/self/ns/pid`), 0 when
    /// unknown: two processes are on the same machine and see each other's
    /// pids only when host and namespace both match.
    pub pid_namespace: u64,
}

impl Writer {
    /// This process, with a new run id.
    pub fn this_process() -> Self {
        Self {
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            pid: std::process::id(),
            run_id: Uuid::new_v4(),
            task: String::new(),
            pid_namespace: pid_namespace(),
        }
    }
}

/// `host h, pid p, run r, task t` (the task only when known): who a
/// message names as a checkpoint's writer or a lease's holder.
impl fmt::Display for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "host {}, pid {}, run {}",
            self.host, self.pid, self.run_id
        )?;
        if !self.task.is_empty() {
            write!(f, ", task {}", self.task)?;
        }
        Ok(())
    }
}

/// This process's PID namespace inode, from the `/proc/self/ns/pid` link
/// (`pid:[4026531836]`); 0 where there is no such link.
pub(crate) fn pid_namespace() -> u64 {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .and_then(|target| {
            let text = target.to_string_lossy().into_owned();
            text.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
        })
        .unwrap_or(0)
}

/// A runner's claim on a job: no other runner starts the job before `expires_ms`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The run id of the holder.
    pub owner: Uuid,
    /// When the claim lapses unless renewed (ms since the Unix epoch, holder's clock).
    pub expires_ms: u64,
}

impl Lease {
    /// A lease held by `owner` until `expires_ms`.
    pub fn new(owner: Uuid, expires_ms: u64) -> Self {
        Self { owner, expires_ms }
    }
}

/// One run of a job, as kept in the checkpoint's recent history.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    /// The run's id.
    pub run_id: Uuid,
    /// When it started (ms since the Unix epoch).
    pub started_ms: u64,
    /// When it ended (0 while it runs, or if it was killed).
    pub ended_ms: u64,
    /// `running`, `completed`, `interrupted (SIGTERM)`, `failed: …`.
    pub outcome: String,
    /// Chunks it finished.
    pub chunks: u64,
    /// Chunks it skipped ([`SkipPolicy`](crate::SkipPolicy)).
    pub skipped: u64,
    /// Its host.
    pub host: String,
    /// Its task (e.g. ECS task ARN), empty when unknown.
    pub task: String,
}

impl RunRecord {
    /// A run that has just started.
    pub fn started(writer: &Writer, started_ms: u64) -> Self {
        Self {
            run_id: writer.run_id,
            started_ms,
            ended_ms: 0,
            outcome: Status::Running.to_string(),
            chunks: 0,
            skipped: 0,
            host: writer.host.clone(),
            task: writer.task.clone(),
        }
    }
}

/// A chunk that failed after its retries and was skipped
/// ([`SkipPolicy`](crate::SkipPolicy)): the run went on past it, and a
/// redrive (`spotbatch redrive`) processes it again.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedChunk {
    /// How `start` and `next` are encoded (the codec of the run that skipped it).
    pub codec: Codec,
    /// The chunk's start cursor ([`Chunk::start`](crate::Chunk::start)), encoded.
    pub start: Vec<u8>,
    /// The cursor after it ([`Chunk::next`](crate::Chunk::next)), encoded.
    pub next: Vec<u8>,
    /// `start` as text (its `Debug` form), for people.
    pub start_text: String,
    /// `next` as text (its `Debug` form), for people.
    pub next_text: String,
    /// The chunk's items ([`Chunk::items`](crate::Chunk::items)).
    pub items: u64,
    /// Attempts made at it before it was skipped (retries included).
    pub attempts: u32,
    /// When it was skipped (ms since the Unix epoch).
    pub skipped_ms: u64,
    /// The run that skipped it: a redrive that fails at it again skips it
    /// again, and it becomes the redriving run's, with that attempt's
    /// error, attempts and time.
    pub run_id: Uuid,
    /// The last attempt's error, as text (at most
    /// [`SkippedChunk::ERROR_LEN`] bytes, cut at a character boundary).
    pub error: String,
}

impl SkippedChunk {
    /// The longest error message kept, in bytes.
    pub const ERROR_LEN: usize = 1024;

    /// Cuts `message` to [`ERROR_LEN`](Self::ERROR_LEN) bytes.
    pub(crate) fn cut(mut message: String) -> String {
        if message.len() > Self::ERROR_LEN {
            let mut at = Self::ERROR_LEN - 3;
            while !message.is_char_boundary(at) {
                at -= 1;
            }
            message.truncate(at);
            message.push_str("...");
        }
        message
    }
}

/// One step of a job made of several ([`Steps`](crate::steps::Steps)), as
/// recorded in its checkpoints: its name and its
/// [`SCHEMA_VERSION`](crate::Job::SCHEMA_VERSION).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StepInfo {
    /// The step's name, unique in its job (`extract`, `load`).
    pub name: String,
    /// The step's own schema version.
    pub schema: u32,
}

impl StepInfo {
    /// The step `name` of schema version `schema`.
    pub fn new(name: impl Into<String>, schema: u32) -> Self {
        Self {
            name: name.into(),
            schema,
        }
    }

    /// `extract, transform, load (schema 2)`: the steps' names, each with its
    /// schema version when not 1; `none (a job of one step)` for no steps.
    pub fn list(steps: &[StepInfo]) -> String {
        if steps.is_empty() {
            return "none (a job of one step)".to_owned();
        }
        steps
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The name, and `(schema N)` when N is not 1.
impl fmt::Display for StepInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if self.schema != 1 {
            write!(f, " (schema {})", self.schema)?;
        }
        Ok(())
    }
}

/// One job's checkpoint: its cursor and state, and everything needed to trust them.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The job this checkpoint belongs to.
    pub job: JobKey,
    /// Starts at 1 and grows by one with each save; stores compare-and-swap on it.
    pub version: u64,
    /// Where the job stood.
    pub status: Status,
    /// How `cursor` and `state` are encoded.
    pub codec: Codec,
    /// The Rust type of the cursor and state, checked on load.
    pub cursor_type: String,
    /// The job's declared schema version ([`Job::SCHEMA_VERSION`](crate::Job::SCHEMA_VERSION)), checked on load.
    pub schema: u32,
    /// The serde shape of the cursor and state types, compared on load;
    /// `None` in checkpoints written before it was recorded, or for types
    /// that cannot be traced (then only `cursor_type` is compared).
    pub types: Option<TypeDescription>,
    /// The encoded cursor: where the next chunk starts.
    pub cursor: Vec<u8>,
    /// The encoded state carried with the cursor.
    pub state: Vec<u8>,
    /// Totals over every run.
    pub counters: Counters,
    /// When the first checkpoint of this job was written (ms since the Unix epoch).
    pub created_ms: u64,
    /// When this checkpoint was written (ms since the Unix epoch).
    pub updated_ms: u64,
    /// The process that wrote it.
    pub writer: Writer,
    /// The runner that holds the job, if any.
    pub lease: Option<Lease>,
    /// The most recent runs, oldest first (at most [`Checkpoint::HISTORY_LEN`]).
    pub history: Vec<RunRecord>,
    /// The chunks skipped and not yet redriven, in the order they were
    /// skipped (at most [`Checkpoint::SKIPPED_LEN`]).
    pub skipped: Vec<SkippedChunk>,
    /// Whether the next run processes the skipped chunks again before it
    /// goes on from the cursor (set by `spotbatch redrive`).
    pub redrive: bool,
    /// The steps of a job made of several ([`Job::steps`](crate::Job::steps)),
    /// in the order they run; empty for a job of one step. Compared on load.
    pub steps: Vec<StepInfo>,
    /// Which of `steps` the cursor is in, by index ([`Job::step`](crate::Job::step));
    /// 0 for a job of one step.
    pub step: u32,
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Checkpoint {
    /// How many recent runs a checkpoint remembers.
    pub const HISTORY_LEN: usize = 20;

    /// How many skipped chunks a checkpoint holds: a run never skips more
    /// (past it, a chunk that fails fails the run, whatever the
    /// [`SkipPolicy`](crate::SkipPolicy)), so no skipped chunk is forgotten.
    pub const SKIPPED_LEN: usize = 1000;

    /// A first checkpoint (version 1, status running) with empty cursor and state.
    pub fn new(job: JobKey, writer: Writer) -> Self {
        let now = now_ms();
        Self {
            job,
            version: 1,
            status: Status::Running,
            codec: Codec::default(),
            cursor_type: String::new(),
            schema: 0,
            types: None,
            cursor: Vec::new(),
            state: Vec::new(),
            counters: Counters::default(),
            created_ms: now,
            updated_ms: now,
            writer,
            lease: None,
            history: Vec::new(),
            skipped: Vec::new(),
            redrive: false,
            steps: Vec::new(),
            step: 0,
        }
    }

    /// The name of the step the cursor is in, for a job made of steps
    /// (`None` for a job of one step).
    pub fn step_name(&self) -> Option<&str> {
        let index = usize::try_from(self.step).ok()?;
        self.steps.get(index).map(|s| s.name.as_str())
    }

    /// The envelope's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let (tag, detail) = self.status.tag_and_detail();
        let types = self.types.as_ref().map_or("", TypeDescription::as_json);
        let mut body = Vec::with_capacity(128 + types.len() + self.cursor.len() + self.state.len());
        put_bytes(&mut body, self.job.as_str().as_bytes());
        body.extend_from_slice(&self.version.to_le_bytes());
        body.push(tag);
        put_bytes(&mut body, detail.as_bytes());
        body.push(self.codec.id());
        put_bytes(&mut body, self.cursor_type.as_bytes());
        body.extend_from_slice(&self.schema.to_le_bytes());
        put_bytes(&mut body, types.as_bytes());
        put_bytes(&mut body, &self.cursor);
        put_bytes(&mut body, &self.state);
        let c = &self.counters;
        for n in [c.chunks, c.items, c.checkpoints, c.interruptions, c.runs] {
            body.extend_from_slice(&n.to_le_bytes());
        }
        body.extend_from_slice(&self.created_ms.to_le_bytes());
        body.extend_from_slice(&self.updated_ms.to_le_bytes());
        put_bytes(&mut body, self.writer.host.as_bytes());
        body.extend_from_slice(&self.writer.pid.to_le_bytes());
        body.extend_from_slice(self.writer.run_id.as_bytes());
        put_bytes(&mut body, self.writer.task.as_bytes());
        body.extend_from_slice(&self.writer.pid_namespace.to_le_bytes());
        match &self.lease {
            None => body.push(0),
            Some(lease) => {
                body.push(1);
                body.extend_from_slice(lease.owner.as_bytes());
                body.extend_from_slice(&lease.expires_ms.to_le_bytes());
            }
        }
        let count = u32::try_from(self.history.len()).unwrap_or(u32::MAX);
        body.extend_from_slice(&count.to_le_bytes());
        for run in self.history.iter().take(count as usize) {
            body.extend_from_slice(run.run_id.as_bytes());
            body.extend_from_slice(&run.started_ms.to_le_bytes());
            body.extend_from_slice(&run.ended_ms.to_le_bytes());
            put_bytes(&mut body, run.outcome.as_bytes());
            body.extend_from_slice(&run.chunks.to_le_bytes());
            put_bytes(&mut body, run.host.as_bytes());
            put_bytes(&mut body, run.task.as_bytes());
            body.extend_from_slice(&run.skipped.to_le_bytes());
        }
        let count = u32::try_from(self.skipped.len()).unwrap_or(u32::MAX);
        body.extend_from_slice(&count.to_le_bytes());
        for skip in self.skipped.iter().take(count as usize) {
            body.push(skip.codec.id());
            put_bytes(&mut body, &skip.start);
            put_bytes(&mut body, &skip.next);
            put_bytes(&mut body, skip.start_text.as_bytes());
            put_bytes(&mut body, skip.next_text.as_bytes());
            body.extend_from_slice(&skip.items.to_le_bytes());
            body.extend_from_slice(&skip.attempts.to_le_bytes());
            body.extend_from_slice(&skip.skipped_ms.to_le_bytes());
            body.extend_from_slice(skip.run_id.as_bytes());
            put_bytes(&mut body, skip.error.as_bytes());
        }
        body.push(u8::from(self.redrive));
        let count = u32::try_from(self.steps.len()).unwrap_or(u32::MAX);
        body.extend_from_slice(&count.to_le_bytes());
        for step in self.steps.iter().take(count as usize) {
            put_bytes(&mut body, step.name.as_bytes());
            body.extend_from_slice(&step.schema.to_le_bytes());
        }
        body.extend_from_slice(&self.step.to_le_bytes());

        let mut out = Vec::with_capacity(HEADER_LEN + body.len() + CHECKSUM_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        let body_len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&body_len.to_le_bytes());
        out.extend_from_slice(&body);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads an envelope, verifying magic, format, length and checksum.
    ///
    /// # Errors
    ///
    /// A [`CheckpointError`] saying what is wrong: no bytes at all
    /// ([`Empty`](CheckpointError::Empty)), only zero bytes
    /// ([`Zeroed`](CheckpointError::Zeroed)), not a checkpoint at all, cut
    /// short inside the header ([`TruncatedHeader`](CheckpointError::TruncatedHeader))
    /// or after it ([`Truncated`](CheckpointError::Truncated)), longer than
    /// its header says ([`TrailingBytes`](CheckpointError::TrailingBytes)),
    /// a newer format, a checksum mismatch (a flipped byte) or a malformed
    /// field.
    pub fn decode(bytes: &[u8]) -> Result<Self, CheckpointError> {
        if bytes.is_empty() {
            return Err(CheckpointError::Empty);
        }
        if bytes.iter().all(|b| *b == 0) {
            return Err(CheckpointError::Zeroed { len: bytes.len() });
        }
        let magic = &bytes[..bytes.len().min(MAGIC.len())];
        if magic != &MAGIC[..magic.len()] {
            return Err(CheckpointError::NotACheckpoint);
        }
        if bytes.len() < HEADER_LEN {
            return Err(CheckpointError::TruncatedHeader {
                found: bytes.len(),
                header: HEADER_LEN,
            });
        }
        let format = u16::from_le_bytes([bytes[8], bytes[9]]);
        if ![FORMAT, FORMAT_3, FORMAT_2, FORMAT_1].contains(&format) {
            return Err(CheckpointError::UnsupportedFormat {
                found: format,
                supported: FORMAT,
            });
        }
        let body_len = u32::from_le_bytes([bytes[10], bytes[11], bytes[12], bytes[13]]) as usize;
        let expected = HEADER_LEN
            .saturating_add(body_len)
            .saturating_add(CHECKSUM_LEN);
        if bytes.len() < expected {
            return Err(CheckpointError::Truncated {
                expected,
                found: bytes.len(),
            });
        }
        if bytes.len() > expected {
            return Err(CheckpointError::TrailingBytes {
                expected,
                found: bytes.len(),
            });
        }
        let (signed, tail) = bytes.split_at(expected - CHECKSUM_LEN);
        let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        let computed = crc32fast::hash(signed);
        if stored != computed {
            return Err(CheckpointError::ChecksumMismatch { stored, computed });
        }

        let mut r = Reader(&signed[HEADER_LEN..]);
        let job = JobKey::new(r.string("job key")?)
            .map_err(|_| CheckpointError::Malformed { what: "job key" })?;
        let version = r.u64("version")?;
        let tag = r.u8("status")?;
        let detail = r.string("status detail")?;
        let status =
            Status::from_tag(tag, detail).ok_or(CheckpointError::Malformed { what: "status" })?;
        let codec_id = r.u8("codec")?;
        let codec =
            Codec::from_id(codec_id).ok_or(CheckpointError::UnknownCodec { id: codec_id })?;
        let cursor_type = r.string("cursor type")?;
        let schema = r.u32("schema")?;
        let types = if format == FORMAT_1 {
            None
        } else {
            let json = r.string("type description")?;
            (!json.is_empty()).then(|| TypeDescription::from_json(json))
        };
        let cursor = r.bytes("cursor")?.to_vec();
        let state = r.bytes("state")?.to_vec();
        let counters = Counters {
            chunks: r.u64("chunks")?,
            items: r.u64("items")?,
            checkpoints: r.u64("checkpoints")?,
            interruptions: r.u64("interruptions")?,
            runs: r.u64("runs")?,
        };
        let created_ms = r.u64("created")?;
        let updated_ms = r.u64("updated")?;
        let host = r.string("writer host")?;
        let pid = r.u32("writer pid")?;
        let run_id = Uuid::from_bytes(r.array("writer run id")?);
        let task = r.string("writer task")?;
        let pid_namespace = r.u64("writer pid namespace")?;
        let lease = match r.u8("lease")? {
            0 => None,
            1 => Some(Lease {
                owner: Uuid::from_bytes(r.array("lease owner")?),
                expires_ms: r.u64("lease expiry")?,
            }),
            _ => return Err(CheckpointError::Malformed { what: "lease" }),
        };
        let count = r.u32("history")? as usize;
        let mut history = Vec::with_capacity(count.min(Self::HISTORY_LEN));
        for _ in 0..count {
            history.push(RunRecord {
                run_id: Uuid::from_bytes(r.array("history run id")?),
                started_ms: r.u64("history start")?,
                ended_ms: r.u64("history end")?,
                outcome: r.string("history outcome")?,
                chunks: r.u64("history chunks")?,
                host: r.string("history host")?,
                task: r.string("history task")?,
                skipped: if format >= 3 {
                    r.u64("history skipped")?
                } else {
                    0
                },
            });
        }
        let mut skipped = Vec::new();
        let mut redrive = false;
        if format >= 3 {
            let count = r.u32("skipped")? as usize;
            skipped.reserve(count.min(Self::SKIPPED_LEN));
            for _ in 0..count {
                let id = r.u8("skipped codec")?;
                skipped.push(SkippedChunk {
                    codec: Codec::from_id(id).ok_or(CheckpointError::UnknownCodec { id })?,
                    start: r.bytes("skipped start")?.to_vec(),
                    next: r.bytes("skipped next")?.to_vec(),
                    start_text: r.string("skipped start text")?,
                    next_text: r.string("skipped next text")?,
                    items: r.u64("skipped items")?,
                    attempts: r.u32("skipped attempts")?,
                    skipped_ms: r.u64("skipped time")?,
                    run_id: Uuid::from_bytes(r.array("skipped run id")?),
                    error: r.string("skipped error")?,
                });
            }
            redrive = match r.u8("redrive")? {
                0 => false,
                1 => true,
                _ => return Err(CheckpointError::Malformed { what: "redrive" }),
            };
        }
        let mut steps = Vec::new();
        let mut step = 0;
        if format >= 4 {
            let count = r.u32("steps")? as usize;
            steps.reserve(count.min(256));
            for _ in 0..count {
                steps.push(StepInfo {
                    name: r.string("step name")?,
                    schema: r.u32("step schema")?,
                });
            }
            step = r.u32("current step")?;
            if !steps.is_empty() && step as usize >= steps.len() {
                return Err(CheckpointError::Malformed {
                    what: "current step",
                });
            }
        }
        if !r.0.is_empty() {
            return Err(CheckpointError::Malformed {
                what: "trailing bytes in the body",
            });
        }
        Ok(Self {
            job,
            version,
            status,
            codec,
            cursor_type,
            schema,
            types,
            cursor,
            state,
            counters,
            created_ms,
            updated_ms,
            writer: Writer {
                host,
                pid,
                run_id,
                task,
                pid_namespace,
            },
            lease,
            history,
            skipped,
            redrive,
            steps,
            step,
        })
    }

    /// Reads an envelope a store keeps under `job`'s key: as
    /// [`decode`](Self::decode), and refusing another job's checkpoint.
    ///
    /// # Errors
    ///
    /// As [`decode`](Self::decode), and [`CheckpointError::WrongJob`] when the
    /// envelope belongs to another job (copied or renamed by hand).
    pub fn decode_for(job: &JobKey, bytes: &[u8]) -> Result<Self, CheckpointError> {
        let checkpoint = Self::decode(bytes)?;
        if checkpoint.job != *job {
            return Err(CheckpointError::WrongJob {
                expected: job.to_string(),
                found: checkpoint.job.to_string(),
            });
        }
        Ok(checkpoint)
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CheckpointError> {
        if self.0.len() < n {
            return Err(CheckpointError::Malformed { what });
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], CheckpointError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, CheckpointError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, CheckpointError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, CheckpointError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], CheckpointError> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }

    fn string(&mut self, what: &'static str) -> Result<String, CheckpointError> {
        String::from_utf8(self.bytes(what)?.to_vec())
            .map_err(|_| CheckpointError::Malformed { what })
    }
}

/// Why a stored checkpoint cannot be used: damaged bytes
/// ([`is_damaged`](Self::is_damaged)), or a whole checkpoint that this
/// build or this job cannot use.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// No bytes at all: an empty file or object, which no save of
    /// spotbatch leaves (a `touch`, a copy cut short by a full disk).
    #[error("checkpoint is empty (0 bytes)")]
    Empty,
    /// Nothing but zero bytes: space allocated whose contents never reached
    /// the disk (a machine that crashed under a copy).
    #[error("checkpoint holds nothing but zero bytes ({len} bytes)")]
    Zeroed {
        /// How many.
        len: usize,
    },
    /// The bytes do not start with the checkpoint magic.
    #[error("not a spotbatch checkpoint (its first bytes are not the checkpoint magic)")]
    NotACheckpoint,
    /// The start of a checkpoint, cut short inside its header: not even the
    /// length of its body can be read.
    #[error("checkpoint is truncated: {found} bytes, shorter than its {header}-byte header")]
    TruncatedHeader {
        /// Bytes present.
        found: usize,
        /// The header's length.
        header: usize,
    },
    /// Written by a newer (or unknown) version of the format.
    #[error("checkpoint format {found} is not supported (this build reads format {supported})")]
    UnsupportedFormat {
        /// Format found.
        found: u16,
        /// Format this build reads.
        supported: u16,
    },
    /// A whole header, but fewer bytes than it declares.
    #[error(
        "checkpoint is truncated: {found} bytes of the {expected} its header declares \
         ({} missing)",
        expected.saturating_sub(*found)
    )]
    Truncated {
        /// Bytes the header declares: header, body and checksum.
        expected: usize,
        /// Bytes present.
        found: usize,
    },
    /// More bytes than the header declares: something was appended.
    #[error(
        "checkpoint is {found} bytes, {} more than the {expected} its header declares",
        found.saturating_sub(*expected)
    )]
    TrailingBytes {
        /// Bytes the header declares: header, body and checksum.
        expected: usize,
        /// Bytes present.
        found: usize,
    },
    /// The checksum does not match: some byte changed.
    #[error("checkpoint is corrupt: checksum {stored:08x} stored, {computed:08x} computed")]
    ChecksumMismatch {
        /// Checksum stored in the envelope.
        stored: u32,
        /// Checksum of the bytes read.
        computed: u32,
    },
    /// A field does not parse.
    #[error("checkpoint is malformed: bad {what}")]
    Malformed {
        /// The field.
        what: &'static str,
    },
    /// The cursor codec is not known to this build.
    #[error("checkpoint uses codec id {id}, unknown to this build")]
    UnknownCodec {
        /// The codec id found.
        id: u8,
    },
    /// The checkpoint belongs to another job.
    #[error("checkpoint belongs to job {found:?}, not {expected:?}")]
    WrongJob {
        /// The job loading it.
        expected: String,
        /// The job named inside.
        found: String,
    },
    /// The name of the job's cursor and state types, or its declared schema
    /// version, changed (the name is compared when the shapes cannot be:
    /// see [`TypesChanged`](Self::TypesChanged)).
    #[error(
        "checkpoint holds a cursor of type {found} (schema {found_schema}), \
         but the job now uses {expected} (schema {expected_schema}); if only the \
         types' names or paths changed, return the stored name from Job::cursor_type; \
         otherwise start the job over (`spotbatch reset`, or Runner::restart) or \
         convert the checkpoint in Job::migrate"
    )]
    CursorTypeChanged {
        /// The type the job uses now.
        expected: String,
        /// The job's schema version now.
        expected_schema: u32,
        /// The type stored.
        found: String,
        /// The schema version stored.
        found_schema: u32,
    },
    /// The shape of the job's cursor or state types changed since the
    /// checkpoint was written (a field's type, the fields' order, a field
    /// added or removed, an enum's variants): its bytes would be misread.
    #[error(
        "the cursor and state types changed since the checkpoint was written \
         ({found} then, {expected} now): {}; start the job over (`spotbatch reset`, \
         or Runner::restart), keep the old types, or convert the checkpoint in Job::migrate",
        changes.join("; ")
    )]
    TypesChanged {
        /// The types' name now.
        expected: String,
        /// The types' name stored.
        found: String,
        /// Each change, at a path from the top of the type: `Totals.count:
        /// was u64, now i64`, `Totals.limit: added (u32)`.
        changes: Vec<String>,
    },
    /// The job's steps changed since the checkpoint was written: a step
    /// added, removed, renamed or moved, or a step's schema version changed
    /// ([`Job::steps`](crate::Job::steps)).
    #[error(
        "the job's steps changed since the checkpoint was written: {} then, {} now; \
         start the job over (`spotbatch reset`, or Runner::restart), keep the old steps, \
         or convert the checkpoint in Job::migrate (Steps::migrate_with)",
        StepInfo::list(found),
        StepInfo::list(expected)
    )]
    StepsChanged {
        /// The job's steps now.
        expected: Vec<StepInfo>,
        /// The steps stored.
        found: Vec<StepInfo>,
    },
    /// The cursor or state bytes do not decode as the job's types.
    #[error("checkpoint cursor or state does not decode: {0}")]
    Codec(#[from] CodecError),
}

impl CheckpointError {
    /// Whether the stored bytes are damaged (empty, zeroed, cut short,
    /// appended to, a changed byte, not a checkpoint at all), as opposed to
    /// a whole checkpoint that this build or this job cannot use (a newer
    /// format, another job's, changed types or steps). Nothing can resume
    /// from damaged bytes: the job must start over, or a good copy be put
    /// back.
    pub fn is_damaged(&self) -> bool {
        matches!(
            self,
            CheckpointError::Empty
                | CheckpointError::Zeroed { .. }
                | CheckpointError::NotACheckpoint
                | CheckpointError::TruncatedHeader { .. }
                | CheckpointError::Truncated { .. }
                | CheckpointError::TrailingBytes { .. }
                | CheckpointError::ChecksumMismatch { .. }
                | CheckpointError::Malformed { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let mut ckpt = Checkpoint::new(JobKey::new("squares/été").unwrap(), Writer::this_process());
        ckpt.version = 42;
        ckpt.status = Status::Interrupted {
            source: "SIGTERM".into(),
        };
        ckpt.codec = Codec::Json;
        ckpt.cursor_type = "(u64, ())".into();
        ckpt.schema = 3;
        ckpt.types = Some(TypeDescription::trace::<u64, ()>().unwrap());
        ckpt.cursor = b"12000".to_vec();
        ckpt.state = b"null".to_vec();
        ckpt.counters = Counters {
            chunks: 12,
            items: 12000,
            checkpoints: 5,
            interruptions: 1,
            runs: 2,
        };
        ckpt.writer.task = "arn:aws:ecs:eu-west-1:123456789012:task/c/0123".into();
        ckpt.lease = Some(Lease::new(Uuid::new_v4(), 1_700_000_000_000));
        ckpt.history = vec![RunRecord::started(&ckpt.writer, 1_699_999_000_000), {
            let mut ended = RunRecord::started(&Writer::this_process(), 1);
            ended.ended_ms = 2;
            ended.outcome = "interrupted (SIGTERM)".into();
            ended.chunks = 7;
            ended.skipped = 2;
            ended
        }];
        ckpt.skipped = vec![SkippedChunk {
            codec: Codec::Bincode,
            start: vec![1, 2],
            next: vec![3],
            start_text: "100".into(),
            next_text: "200".into(),
            items: 100,
            attempts: 3,
            skipped_ms: 1_699_999_500_000,
            run_id: Uuid::new_v4(),
            error: "row 117: bad date ✗".into(),
        }];
        ckpt.redrive = true;
        ckpt.steps = vec![
            StepInfo::new("extract", 1),
            StepInfo::new("transform ✓", 2),
            StepInfo::new("load", 1),
        ];
        ckpt.step = 1;
        ckpt
    }

    #[test]
    fn round_trips_every_field() {
        for status in [
            Status::Running,
            Status::Completed,
            Status::Interrupted {
                source: "SIGINT".into(),
            },
            Status::Failed {
                message: "boom ✗".into(),
            },
        ] {
            let mut ckpt = sample();
            ckpt.status = status;
            assert_eq!(Checkpoint::decode(&ckpt.encode()).unwrap(), ckpt);
        }
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            for bit in [0x01, 0x80] {
                let mut flipped = bytes.clone();
                flipped[i] ^= bit;
                assert!(
                    Checkpoint::decode(&flipped).is_err(),
                    "flip of bit {bit:#x} in byte {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn every_truncation_says_what_is_left() {
        let bytes = sample().encode();
        let expected = bytes.len();
        for len in 0..expected {
            let err = Checkpoint::decode(&bytes[..len]).unwrap_err();
            let text = err.to_string();
            match len {
                0 => assert_eq!(err, CheckpointError::Empty),
                1..HEADER_LEN => assert_eq!(
                    err,
                    CheckpointError::TruncatedHeader {
                        found: len,
                        header: HEADER_LEN
                    },
                    "{len}: {text}"
                ),
                _ => {
                    assert_eq!(
                        err,
                        CheckpointError::Truncated {
                            expected,
                            found: len
                        },
                        "{len}: {text}"
                    );
                    assert!(
                        text.contains(&format!(
                            "{len} bytes of the {expected} its header declares ({} missing)",
                            expected - len
                        )),
                        "{text}"
                    );
                }
            }
            assert!(err.is_damaged(), "{text}");
        }
    }

    /// What a machine that died under a copy, a `touch` or a full disk
    /// leaves is named for what it is, not as a foreign file.
    #[test]
    fn empty_zeroed_short_and_long_envelopes_say_which() {
        let bytes = sample().encode();
        for (input, says) in [
            (vec![], "checkpoint is empty (0 bytes)".to_owned()),
            (
                vec![0; bytes.len()],
                format!(
                    "checkpoint holds nothing but zero bytes ({} bytes)",
                    bytes.len()
                ),
            ),
            (
                bytes[..5].to_vec(),
                "checkpoint is truncated: 5 bytes, shorter than its 14-byte header".to_owned(),
            ),
            (
                [&bytes[..], b"\n"].concat(),
                format!(
                    "checkpoint is {} bytes, 1 more than the {} its header declares",
                    bytes.len() + 1,
                    bytes.len()
                ),
            ),
            (
                b"SPOT".to_vec(),
                "checkpoint is truncated: 4 bytes, shorter than its 14-byte header".to_owned(),
            ),
            (
                b"SPOTX".to_vec(),
                "not a spotbatch checkpoint (its first bytes are not the checkpoint magic)"
                    .to_owned(),
            ),
        ] {
            let err = Checkpoint::decode(&input).unwrap_err();
            assert_eq!(err.to_string(), says, "{input:?}");
            assert!(err.is_damaged(), "{err}");
        }
        let wrong_job = Checkpoint::decode_for(&JobKey::new("other").unwrap(), &bytes).unwrap_err();
        assert!(!wrong_job.is_damaged(), "{wrong_job}");
    }

    #[test]
    fn names_what_is_wrong() {
        assert_eq!(
            Checkpoint::decode(b"{\"json\": true}").unwrap_err(),
            CheckpointError::NotACheckpoint
        );
        let mut bytes = sample().encode();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        let err = Checkpoint::decode(&bytes).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");

        let mut newer = sample().encode();
        newer[8] = 5;
        let err = Checkpoint::decode(&newer).unwrap_err();
        assert_eq!(
            err,
            CheckpointError::UnsupportedFormat {
                found: 5,
                supported: 4
            }
        );
        assert!(!err.is_damaged());
    }

    /// An envelope's `bytes` with `cut` bytes taken off before the
    /// checksum (which must be zeros: empty lists and unset flags), as
    /// format `format`, length and checksum made again.
    fn older(bytes: &[u8], cut: usize, format: u16) -> Vec<u8> {
        let tail = bytes.len() - CHECKSUM_LEN - cut;
        assert!(bytes[tail..tail + cut].iter().all(|b| *b == 0));
        let mut old = bytes[..tail].to_vec();
        old[8..10].copy_from_slice(&format.to_le_bytes());
        let body_len = u32::try_from(old.len() - HEADER_LEN).unwrap();
        old[10..14].copy_from_slice(&body_len.to_le_bytes());
        let crc = crc32fast::hash(&old);
        old.extend_from_slice(&crc.to_le_bytes());
        old
    }

    /// `checkpoint` (of a job of one step) in format 3, as builds before
    /// format 4 wrote it: no steps.
    fn format_3(checkpoint: &Checkpoint) -> Vec<u8> {
        assert!(checkpoint.steps.is_empty() && checkpoint.step == 0);
        // The empty list's count and the current step.
        older(&checkpoint.encode(), 8, FORMAT_3)
    }

    /// `checkpoint` (without skipped chunks) in format 2, as builds before
    /// format 3 wrote it: no skipped chunks, no redrive flag.
    fn format_2(checkpoint: &Checkpoint) -> Vec<u8> {
        assert!(checkpoint.skipped.is_empty() && !checkpoint.redrive);
        assert!(
            checkpoint.history.is_empty(),
            "runs carry a skipped count since format 3"
        );
        // The empty list's count and the flag.
        older(&format_3(checkpoint), 5, FORMAT_2)
    }

    #[test]
    fn format_3_is_read_as_the_checkpoint_of_a_job_of_one_step() {
        let mut old = sample();
        old.steps.clear();
        old.step = 0;
        let bytes = format_3(&old);
        assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 3);
        let read = Checkpoint::decode(&bytes).unwrap();
        assert_eq!(read, old);
        assert_eq!(read.step_name(), None);
    }

    #[test]
    fn a_current_step_past_the_steps_is_malformed() {
        let mut c = sample();
        c.step = 3;
        assert_eq!(
            Checkpoint::decode(&c.encode()).unwrap_err(),
            CheckpointError::Malformed {
                what: "current step"
            }
        );
        c.step = 2;
        assert_eq!(
            Checkpoint::decode(&c.encode()).unwrap().step_name(),
            Some("load")
        );
    }

    #[test]
    fn format_2_is_read_as_a_checkpoint_with_nothing_skipped() {
        let mut old = sample();
        old.skipped.clear();
        old.redrive = false;
        old.history.clear();
        old.steps.clear();
        old.step = 0;
        let bytes = format_2(&old);
        assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 2);
        assert_eq!(Checkpoint::decode(&bytes).unwrap(), old);
        assert_eq!(
            u16::from_le_bytes([old.encode()[8], old.encode()[9]]),
            FORMAT
        );
    }

    #[test]
    fn long_errors_are_cut_at_a_character_boundary() {
        let cut = SkippedChunk::cut("é".repeat(SkippedChunk::ERROR_LEN));
        assert!(
            cut.len() <= SkippedChunk::ERROR_LEN && cut.ends_with("..."),
            "{cut}"
        );
        assert_eq!(SkippedChunk::cut("short".into()), "short");
    }

    /// `checkpoint` (without a type description or skipped chunks) in
    /// format 1, as builds before format 2 wrote it: no description field.
    fn format_1(checkpoint: &Checkpoint) -> Vec<u8> {
        assert!(checkpoint.types.is_none());
        let v2 = format_2(checkpoint);
        let (_, detail) = checkpoint.status.tag_and_detail();
        let at = HEADER_LEN
            + 4
            + checkpoint.job.as_str().len()
            + 8
            + 1
            + 4
            + detail.len()
            + 1
            + 4
            + checkpoint.cursor_type.len()
            + 4;
        assert_eq!(v2[at..at + 4], [0; 4], "the empty description's length");
        let mut v1 = [&v2[..at], &v2[at + 4..v2.len() - CHECKSUM_LEN]].concat();
        v1[8..10].copy_from_slice(&FORMAT_1.to_le_bytes());
        let body_len = u32::try_from(v1.len() - HEADER_LEN).unwrap();
        v1[10..14].copy_from_slice(&body_len.to_le_bytes());
        let crc = crc32fast::hash(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        v1
    }

    #[test]
    fn format_1_is_read_as_a_checkpoint_without_a_description() {
        let mut old = sample();
        old.types = None;
        old.skipped.clear();
        old.redrive = false;
        old.history.clear();
        old.steps.clear();
        old.step = 0;
        let bytes = format_1(&old);
        assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 1);
        assert_eq!(Checkpoint::decode(&bytes).unwrap(), old);
        // Written again, it is the current format.
        assert_eq!(
            u16::from_le_bytes([old.encode()[8], old.encode()[9]]),
            FORMAT
        );
    }
}
