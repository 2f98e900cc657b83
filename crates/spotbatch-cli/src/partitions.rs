//! Partitioned jobs in `list` and `show`: how many partitions are done,
//! who holds each, and the claims left by tasks that were killed.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use spotbatch::partition::{progress, Claim, JobProgress, PartitionState};
use spotbatch::{CheckpointStore, JobKey};

use crate::error::CliError;
use crate::fmt;

/// A partitioned job's partitions, summed up (`list --json`).
#[derive(Serialize)]
pub(crate) struct PartitionsSummary {
    pub(crate) count: u32,
    pub(crate) completed: usize,
    pub(crate) running: usize,
    pub(crate) interrupted: usize,
    pub(crate) failed: usize,
    pub(crate) not_started: usize,
    pub(crate) unreadable: usize,
    /// Held by a live runner.
    pub(crate) held: usize,
    /// Claims whose holder stopped renewing them (killed): taken over by the next task.
    pub(crate) stale: usize,
    pub(crate) chunks: u64,
    pub(crate) items: u64,
    /// One line, as the table shows it.
    pub(crate) summary: String,
}

impl PartitionsSummary {
    pub(crate) fn of(p: &JobProgress) -> Self {
        let (chunks, items) = p.totals();
        Self {
            count: p.partitions,
            completed: p.count(PartitionState::Completed),
            running: p.count(PartitionState::Running),
            interrupted: p.count(PartitionState::Interrupted),
            failed: p.count(PartitionState::Failed),
            not_started: p.count(PartitionState::NotStarted),
            unreadable: p.count(PartitionState::Unreadable),
            held: p.held(),
            stale: p.stale(),
            chunks,
            items,
            summary: p.summary(),
        }
    }
}

/// One partition (`show --json`).
#[derive(Serialize)]
pub(crate) struct PartitionView {
    pub(crate) index: u32,
    pub(crate) key: String,
    /// `not started`, `running`, `interrupted`, `failed`, `completed`, `unreadable`.
    pub(crate) state: &'static str,
    /// `free`, `held` (a live runner) or `stale` (its holder was killed).
    pub(crate) claim: &'static str,
    pub(crate) version: Option<u64>,
    pub(crate) chunks: Option<u64>,
    pub(crate) items: Option<u64>,
    pub(crate) updated_ms: Option<u64>,
    /// The last writer, or the holder when held: `host pid N`.
    pub(crate) owner: Option<String>,
    /// When the claim lapses (held) or lapsed (stale), ms since the Unix epoch.
    pub(crate) lease_expires_ms: Option<u64>,
    /// Why it cannot be read.
    pub(crate) error: Option<String>,
}

/// A partitioned job's partitions in full (`show --json`).
#[derive(Serialize)]
pub(crate) struct PartitionsDetail {
    #[serde(flatten)]
    pub(crate) summary: PartitionsSummary,
    pub(crate) partitions: Vec<PartitionView>,
}

/// The progress of `key` when it is a partitioned job's job-level checkpoint.
pub(crate) async fn of(
    store: &Arc<dyn CheckpointStore>,
    key: &JobKey,
) -> Result<Option<JobProgress>, CliError> {
    Ok(progress(Arc::clone(store), key).await?)
}

fn claim(c: Claim) -> (&'static str, Option<u64>) {
    match c {
        Claim::Live { expires_ms } => ("held", Some(expires_ms)),
        Claim::Stale { expires_ms } => ("stale", Some(expires_ms)),
        _ => ("free", None),
    }
}

pub(crate) fn detail(p: &JobProgress) -> PartitionsDetail {
    PartitionsDetail {
        summary: PartitionsSummary::of(p),
        partitions: p
            .rows
            .iter()
            .map(|r| {
                let c = r.checkpoint.as_ref();
                let (claim, lease_expires_ms) = claim(r.claim);
                PartitionView {
                    index: r.index,
                    key: r.key.to_string(),
                    state: r.state.name(),
                    claim,
                    version: c.map(|c| c.version),
                    chunks: c.map(|c| c.counters.chunks),
                    items: c.map(|c| c.counters.items),
                    updated_ms: c.map(|c| c.updated_ms),
                    owner: c.map(|c| format!("{} pid {}", c.writer.host, c.writer.pid)),
                    lease_expires_ms,
                    error: r.error.clone(),
                }
            })
            .collect(),
    }
}

/// The partitions as `show` prints them: a summary line and a table.
pub(crate) fn render(p: &JobProgress, now: u64) -> String {
    let mut s = format!("partitions   {}\n", p.summary());
    let (chunks, items) = p.totals();
    s.push_str(&format!(
        "progress     chunks {chunks}, items {items} (over every partition)\n"
    ));
    let rows: Vec<Vec<String>> = p
        .rows
        .iter()
        .map(|r| {
            let c = r.checkpoint.as_ref();
            let owner =
                |c: &spotbatch::Checkpoint| format!("{} pid {}", c.writer.host, c.writer.pid);
            let claim = match (r.claim, c) {
                (Claim::Live { expires_ms }, Some(c)) => format!(
                    "HELD by {} (lease expires in {})",
                    owner(c),
                    fmt::duration(Duration::from_millis(expires_ms.saturating_sub(now)))
                ),
                (Claim::Stale { expires_ms }, Some(c)) => {
                    let why = if expires_ms <= now {
                        format!("lease expired {}", fmt::relative(expires_ms, now))
                    } else if c.writer.has_exited() {
                        "its process is gone from this host".to_owned()
                    } else {
                        "its holder is gone".to_owned()
                    };
                    format!(
                        "STALE claim by {} ({why}): the next task takes it over",
                        owner(c)
                    )
                }
                (_, Some(c)) => owner(c),
                (_, None) => r.error.clone().unwrap_or_else(|| "-".into()),
            };
            vec![
                r.key.to_string(),
                r.state.name().to_owned(),
                c.map_or_else(|| "-".into(), |c| c.counters.chunks.to_string()),
                c.map_or_else(|| "-".into(), |c| c.counters.items.to_string()),
                c.map_or_else(
                    || "-".into(),
                    |c| {
                        format!(
                            "{} ({})",
                            fmt::utc(c.updated_ms),
                            fmt::relative(c.updated_ms, now)
                        )
                    },
                ),
                claim,
            ]
        })
        .collect();
    for line in fmt::table(
        &[
            "PARTITION",
            "STATUS",
            "CHUNKS",
            "ITEMS",
            "UPDATED",
            "OWNER / CLAIM",
        ],
        &rows,
    )
    .lines()
    {
        s.push_str("  ");
        s.push_str(line);
        s.push('\n');
    }
    s
}
