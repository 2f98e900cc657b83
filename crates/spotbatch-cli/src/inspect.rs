//! Commands that change no checkpoint: `list`, `show`, `export`. (`list`
//! lets the store remove what killed saves left behind, e.g. the file
//! store's temporary files whose writer is gone.)

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use spotbatch::{Checkpoint, CheckpointStore, JobKey, Listing};

use crate::error::CliError;
use crate::partitions::{self, PartitionsDetail, PartitionsSummary};
use crate::stores::Open;
use crate::target::{holder, live_lease, Target};
use crate::view::{status_detail, CheckpointView, LeaseView, Payload, WriterView};
use crate::{fmt, stores};

/// How many checkpoints `list` loads at once for their writer and lease.
const LOADS_IN_FLIGHT: usize = 16;

/// One row of `list --json`.
#[derive(Serialize)]
struct ListEntry {
    /// `checkpoint`, or `leftover`: something a killed save left behind that
    /// the store could not remove yet (`key` is where it is, `reason` why).
    kind: &'static str,
    key: String,
    readable: bool,
    /// Why the entry cannot be read (`readable` false).
    reason: Option<String>,
    status: Option<&'static str>,
    status_detail: Option<String>,
    /// For a job of steps, the step its cursor is in; `null` otherwise.
    step: Option<String>,
    /// That step's place: 1 for the first.
    #[serde(skip_serializing_if = "Option::is_none")]
    step_number: Option<usize>,
    /// How many steps the job has.
    #[serde(skip_serializing_if = "Option::is_none")]
    step_count: Option<usize>,
    version: Option<u64>,
    updated_ms: Option<u64>,
    updated: Option<String>,
    chunks: Option<u64>,
    items: Option<u64>,
    writer: Option<WriterView>,
    lease: Option<LeaseView>,
    /// A lease whose holder stopped renewing it (expired) or is gone from
    /// this host: a claim left by a killed runner, which the next run takes over.
    stale_claim: bool,
    /// For a partitioned job's job-level checkpoint: its partitions, summed up.
    #[serde(skip_serializing_if = "Option::is_none")]
    partitions: Option<PartitionsSummary>,
}

/// `spotbatch list URL`.
pub(crate) async fn list(url: &str, json: bool) -> Result<(), CliError> {
    let store = stores::open(url, Open::Existing).await?;
    let listing = store.list().await?;
    let now = fmt::now_ms();

    // `list` says little about each job: load each for its writer and lease.
    let keys: Vec<JobKey> = listing
        .iter()
        .filter_map(|l| match l {
            Listing::Checkpoint(s) => Some(s.job.clone()),
            _ => None,
        })
        .collect();
    let loaded = load_all(&store, keys).await;
    // Partitioned jobs: their partitions summed up on the job's row.
    let mut partitioned = Vec::new();
    for (key, c) in &loaded {
        if let Ok(Some(c)) = c {
            if spotbatch::partition::partitions_of(c).is_some() {
                if let Some(p) = partitions::of(&store, key).await? {
                    partitioned.push((key.clone(), PartitionsSummary::of(&p)));
                }
            }
        }
    }

    let mut entries = Vec::with_capacity(listing.len());
    let mut leftovers = Vec::new();
    for l in listing {
        let entry = match l {
            Listing::Checkpoint(summary) => {
                match loaded.iter().find(|(k, _)| *k == summary.job) {
                    Some((_, Ok(Some(c)))) => {
                        let mut entry = entry_of(c, now);
                        if let Some(i) = partitioned.iter().position(|(k, _)| *k == summary.job) {
                            entry.partitions = Some(partitioned.swap_remove(i).1);
                        }
                        entry
                    }
                    // Changed since the listing (deleted, or now unreadable): say so.
                    Some((_, Err(e))) => unreadable(summary.job.to_string(), e.to_string()),
                    _ => ListEntry {
                        kind: "checkpoint",
                        key: summary.job.to_string(),
                        readable: true,
                        reason: None,
                        status: Some(summary.status.name()),
                        status_detail: Some(status_detail(&summary.status)),
                        step: None,
                        step_number: None,
                        step_count: None,
                        version: Some(summary.version),
                        updated_ms: Some(summary.updated_ms),
                        updated: Some(fmt::rfc3339(summary.updated_ms)),
                        chunks: Some(summary.chunks),
                        items: None,
                        writer: None,
                        lease: None,
                        stale_claim: false,
                        partitions: None,
                    },
                }
            }
            Listing::Unreadable { key, reason } => unreadable(key, reason),
            Listing::Leftover { name, reason } => {
                leftovers.push(ListEntry {
                    kind: "leftover",
                    ..unreadable(name, reason)
                });
                continue;
            }
            other => unreadable(format!("{other:?}"), "unknown kind of entry".into()),
        };
        entries.push(entry);
    }

    let mut out = std::io::stdout().lock();
    if json {
        entries.append(&mut leftovers);
        serde_json::to_writer_pretty(&mut out, &entries).map_err(|e| io_error("stdout", e))?;
        writeln!(out)?;
        return Ok(());
    }
    if entries.is_empty() {
        writeln!(out, "{}: no checkpoints", store.location())?;
    } else {
        write_table(&mut out, &entries, now)?;
    }
    if !leftovers.is_empty() {
        let files = if leftovers.len() == 1 {
            "file"
        } else {
            "files"
        };
        writeln!(
            out,
            "\n{} temporary {files} of saves cut off by a kill could not be removed yet:",
            leftovers.len()
        )?;
        for l in &leftovers {
            writeln!(
                out,
                "  {}\n    {}",
                l.key,
                l.reason.as_deref().unwrap_or("")
            )?;
        }
    }
    Ok(())
}

/// The table of `list`: a STEP column after STATUS when any job listed is
/// a job of steps.
fn write_table(out: &mut impl Write, entries: &[ListEntry], now: u64) -> Result<(), CliError> {
    let with_steps = entries.iter().any(|e| e.step.is_some());
    let mut header = vec![
        "KEY",
        "STATUS",
        "VERSION",
        "UPDATED",
        "CHUNKS",
        "WRITER / LEASE",
    ];
    let mut rows: Vec<Vec<String>> = entries.iter().map(|e| row_of(e, now)).collect();
    if with_steps {
        header.insert(2, "STEP");
        for (row, e) in rows.iter_mut().zip(entries) {
            row.insert(2, step_cell(e));
        }
    }
    out.write_all(fmt::table(&header, &rows).as_bytes())?;
    Ok(())
}

/// `transform (2/3)`, or `-` for a job of one step.
fn step_cell(e: &ListEntry) -> String {
    match (&e.step, e.step_number, e.step_count) {
        (Some(name), Some(n), Some(of)) => format!("{} ({n}/{of})", shorten(name, 30)),
        (Some(name), _, _) => shorten(name, 30),
        _ => "-".into(),
    }
}

type Loaded = (JobKey, Result<Option<Checkpoint>, spotbatch::StoreError>);

async fn load_all(store: &Arc<dyn CheckpointStore>, keys: Vec<JobKey>) -> Vec<Loaded> {
    let mut out = Vec::with_capacity(keys.len());
    for batch in keys.chunks(LOADS_IN_FLIGHT) {
        let mut set = tokio::task::JoinSet::new();
        for key in batch {
            let (store, key) = (Arc::clone(store), key.clone());
            set.spawn(async move {
                let loaded = store.load(&key).await;
                (key, loaded)
            });
        }
        while let Some(joined) = set.join_next().await {
            if let Ok(loaded) = joined {
                out.push(loaded);
            }
        }
    }
    out
}

fn entry_of(c: &Checkpoint, now: u64) -> ListEntry {
    ListEntry {
        kind: "checkpoint",
        key: c.job.to_string(),
        readable: true,
        reason: None,
        status: Some(c.status.name()),
        status_detail: Some(status_detail(&c.status)),
        step: c.step_name().map(str::to_owned),
        step_number: c.step_name().map(|_| c.step as usize + 1),
        step_count: c.step_name().map(|_| c.steps.len()),
        version: Some(c.version),
        updated_ms: Some(c.updated_ms),
        updated: Some(fmt::rfc3339(c.updated_ms)),
        chunks: Some(c.counters.chunks),
        items: Some(c.counters.items),
        writer: Some((&c.writer).into()),
        lease: c.lease.as_ref().map(|l| LeaseView::of(c, l, now)),
        stale_claim: c.lease.is_some() && (live_lease(c, now).is_none() || c.writer.has_exited()),
        partitions: None,
    }
}

fn unreadable(key: String, reason: String) -> ListEntry {
    ListEntry {
        kind: "checkpoint",
        key,
        readable: false,
        reason: Some(reason),
        status: None,
        status_detail: None,
        step: None,
        step_number: None,
        step_count: None,
        version: None,
        updated_ms: None,
        updated: None,
        chunks: None,
        items: None,
        writer: None,
        lease: None,
        stale_claim: false,
        partitions: None,
    }
}

fn row_of(e: &ListEntry, now: u64) -> Vec<String> {
    if !e.readable {
        return vec![
            e.key.clone(),
            "UNREADABLE".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            e.reason.clone().unwrap_or_default(),
        ];
    }
    let status = match (e.status, e.status_detail.as_deref()) {
        _ if e.partitions.is_some() => {
            format!(
                "partitioned, {}",
                e.partitions.as_ref().map_or("", |p| p.summary.as_str())
            )
        }
        (Some(s), Some(d)) if !d.is_empty() => shorten(&format!("{s} ({d})"), 40),
        (Some(s), _) => s.to_owned(),
        _ => "-".into(),
    };
    let updated = e.updated_ms.map_or_else(
        || "-".into(),
        |ms| format!("{} ({})", fmt::utc(ms), fmt::relative(ms, now)),
    );
    let who = match (&e.lease, &e.writer) {
        (Some(l), Some(w)) if e.stale_claim => format!(
            "STALE claim by {} pid {} ({}): the next run takes it over",
            w.host,
            w.pid,
            if l.live {
                "its process is gone from this host".to_owned()
            } else {
                format!(
                    "lease expired {} ago",
                    fmt::duration(Duration::from_millis(l.expires_in_ms.unsigned_abs()))
                )
            }
        ),
        (Some(l), Some(w)) if l.live => format!(
            "HELD by {} pid {} (lease expires in {})",
            w.host,
            w.pid,
            fmt::duration(Duration::from_millis(
                u64::try_from(l.expires_in_ms).unwrap_or(0)
            ))
        ),
        (_, Some(w)) if w.task.is_empty() => format!("{} pid {}", w.host, w.pid),
        (_, Some(w)) => format!("{} pid {} task {}", w.host, w.pid, w.task),
        _ => "-".into(),
    };
    vec![
        e.key.clone(),
        status,
        e.version.map_or_else(|| "-".into(), |v| v.to_string()),
        updated,
        e.chunks.map_or_else(|| "-".into(), |v| v.to_string()),
        who,
    ]
}

fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

fn io_error(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Failed(format!("could not write to {what}: {e}"))
}

/// `spotbatch show URL JOB`.
pub(crate) async fn show(url: &str, job: &str, json: bool) -> Result<(), CliError> {
    let target = Target::open(url, job, Open::Existing).await?;
    let c = target.load_existing().await?;
    let progress = match spotbatch::partition::partitions_of(&c) {
        Some(_) => partitions::of(&target.store, &target.key).await?,
        None => None,
    };
    let now = fmt::now_ms();
    let mut out = std::io::stdout().lock();
    if json {
        #[derive(Serialize)]
        struct ShowView {
            #[serde(flatten)]
            checkpoint: CheckpointView,
            #[serde(skip_serializing_if = "Option::is_none")]
            partitions: Option<PartitionsDetail>,
        }
        let view = ShowView {
            checkpoint: CheckpointView::of(&c, target.location(), now),
            partitions: progress.as_ref().map(partitions::detail),
        };
        serde_json::to_writer_pretty(&mut out, &view).map_err(|e| io_error("stdout", e))?;
        writeln!(out)?;
        return Ok(());
    }
    out.write_all(render(&c, &target.location(), now).as_bytes())?;
    if let Some(p) = &progress {
        out.write_all(partitions::render(p, now).as_bytes())?;
    }
    Ok(())
}

/// The recorded shape of the cursor and state types: its fingerprint, then
/// its text, indented under the label.
fn types(c: &Checkpoint) -> String {
    match &c.types {
        Some(types) => {
            let mut text = format!("fingerprint {}", types.fingerprint());
            for line in types.to_string().lines() {
                text.push_str("\n             ");
                text.push_str(line);
            }
            text
        }
        None => "not recorded (written before shapes were, or types that cannot be traced): \
                 a run compares the cursor type's name"
            .to_owned(),
    }
}

/// The human form of a whole checkpoint.
pub(crate) fn render(c: &Checkpoint, location: &str, now: u64) -> String {
    let mut s = String::new();
    let mut field = |label: &str, value: String| {
        s.push_str(&format!("{label:<13}{value}\n"));
    };
    field("job", format!("{:?}", c.job.as_str()));
    field("store", location.to_owned());
    field("version", c.version.to_string());
    field("status", c.status.to_string());
    if let Some(step) = c.step_name() {
        field(
            "step",
            format!(
                "{step} ({} of {}: {})",
                c.step + 1,
                c.steps.len(),
                spotbatch::StepInfo::list(&c.steps)
            ),
        );
    }
    field(
        "created",
        format!(
            "{} ({})",
            fmt::utc(c.created_ms),
            fmt::relative(c.created_ms, now)
        ),
    );
    field(
        "updated",
        format!(
            "{} ({})",
            fmt::utc(c.updated_ms),
            fmt::relative(c.updated_ms, now)
        ),
    );
    field("writer", c.writer.to_string());
    let lease = match &c.lease {
        None => "none (released, or never taken)".to_owned(),
        Some(l) if live_lease(c, now).is_some() => format!(
            "LIVE: held by {} — expires in {} ({}){}",
            holder(c, l),
            fmt::duration(Duration::from_millis(l.expires_ms - now)),
            fmt::utc(l.expires_ms),
            if c.writer.has_exited() {
                "; that process is gone from this host: the next run there takes the job over"
            } else {
                ""
            }
        ),
        Some(l) => format!(
            "expired {} (run {}): the next run takes the job over",
            fmt::relative(l.expires_ms, now),
            l.owner
        ),
    };
    field("lease", lease);
    let k = &c.counters;
    field(
        "counters",
        format!(
            "chunks {}, items {}, checkpoints {}, interruptions {}, runs {}",
            k.chunks, k.items, k.checkpoints, k.interruptions, k.runs
        ),
    );
    field("codec", c.codec.name().to_owned());
    field(
        "cursor type",
        format!("{} (schema {})", c.cursor_type, c.schema),
    );
    field("types", types(c));
    field("cursor", payload(c, &c.cursor));
    field("state", payload(c, &c.state));
    if !c.skipped.is_empty() {
        field(
            "skipped",
            format!(
                "{} chunk{} (spotbatch skipped){}",
                c.skipped.len(),
                if c.skipped.len() == 1 { "" } else { "s" },
                if c.redrive { "; redrive requested" } else { "" }
            ),
        );
    }

    s.push_str(&format!(
        "history      {} recent run{}, oldest first\n",
        c.history.len(),
        if c.history.len() == 1 { "" } else { "s" }
    ));
    if !c.history.is_empty() {
        let rows: Vec<Vec<String>> = c
            .history
            .iter()
            .map(|r| {
                let took = if r.ended_ms >= r.started_ms && r.ended_ms > 0 {
                    fmt::duration(Duration::from_millis(r.ended_ms - r.started_ms))
                } else {
                    "-".into()
                };
                vec![
                    r.run_id.to_string(),
                    fmt::utc(r.started_ms),
                    took,
                    r.outcome.clone(),
                    r.chunks.to_string(),
                    if r.task.is_empty() {
                        r.host.clone()
                    } else {
                        format!("{} task {}", r.host, r.task)
                    },
                ]
            })
            .collect();
        for line in fmt::table(
            &["RUN", "STARTED", "TOOK", "OUTCOME", "CHUNKS", "HOST"],
            &rows,
        )
        .lines()
        {
            s.push_str("  ");
            s.push_str(line);
            s.push('\n');
        }
    }
    s
}

fn payload(c: &Checkpoint, bytes: &[u8]) -> String {
    match Payload::of(c.codec, bytes) {
        Payload::Json { json } => {
            let text = serde_json::to_string_pretty(&json).unwrap_or_default();
            text.replace('\n', &format!("\n{:13}", ""))
        }
        Payload::Raw { bytes: n, .. } => format!(
            "{n} bytes ({}, not self-describing): {}",
            c.codec.name(),
            fmt::hex(bytes, 64)
        ),
    }
}

/// `spotbatch export URL JOB`: the envelope's bytes, verified, to stdout or a file.
pub(crate) async fn export(url: &str, job: &str, output: Option<&Path>) -> Result<(), CliError> {
    let target = Target::open(url, job, Open::Existing).await?;
    let c = target.load_existing().await?;
    let bytes = c.encode();
    match output {
        Some(path) => std::fs::write(path, &bytes)
            .map_err(|e| CliError::Failed(format!("could not write {}: {e}", path.display())))?,
        None => {
            let mut out = std::io::stdout().lock();
            if out.is_terminal() {
                return Err(CliError::Usage(
                    "refusing to write a binary checkpoint to a terminal: redirect stdout (> file) or pass --output FILE"
                        .into(),
                ));
            }
            out.write_all(&bytes)
                .and_then(|()| out.flush())
                .map_err(|e| io_error("stdout", e))?;
        }
    }
    eprintln!(
        "spotbatch: exported {}: job {:?} version {} ({}, {} bytes)",
        target.location(),
        c.job.as_str(),
        c.version,
        c.status,
        bytes.len()
    );
    Ok(())
}
