//! One job in one store: loading its checkpoint, and who holds it.

use std::sync::Arc;
use std::time::Duration;

use spotbatch::{Checkpoint, CheckpointStore, JobKey, Lease};

use crate::error::CliError;
use crate::stores::Open;
use crate::{fmt, stores};

/// A job key in a store opened by URL.
pub(crate) struct Target {
    pub(crate) store: Arc<dyn CheckpointStore>,
    pub(crate) key: JobKey,
}

impl Target {
    /// `job` in the store `url` names, opened as `how` says.
    pub(crate) async fn open(url: &str, job: &str, how: Open) -> Result<Self, CliError> {
        let key = stores::key(url, job)?;
        Ok(Self {
            store: stores::open(url, how).await?,
            key,
        })
    }

    /// The store's own name for itself (an absolute `file://` path, …).
    pub(crate) fn location(&self) -> String {
        self.store.location()
    }

    /// The checkpoint, or `None`. Corrupt ones are errors naming the reason.
    pub(crate) async fn load(&self) -> Result<Option<Checkpoint>, CliError> {
        Ok(self.store.load(&self.key).await?)
    }

    /// The checkpoint, which must exist.
    pub(crate) async fn load_existing(&self) -> Result<Checkpoint, CliError> {
        self.load().await?.ok_or_else(|| {
            CliError::Failed(format!(
                "{}: no checkpoint for job {:?}",
                self.location(),
                self.key.as_str()
            ))
        })
    }
}

/// Who holds a lease: the writer when the writer is the lease's owner (what
/// the runner always writes), else the owner's run id and who last wrote.
pub(crate) fn holder(c: &Checkpoint, lease: &Lease) -> String {
    if c.writer.run_id == lease.owner {
        c.writer.to_string()
    } else {
        format!("run {} (last written by {})", lease.owner, c.writer)
    }
}

/// The lease if it is still live at `now` (expires in the future).
pub(crate) fn live_lease(c: &Checkpoint, now: u64) -> Option<Lease> {
    c.lease.filter(|l| l.expires_ms > now)
}

/// Refuses to change a job a live runner holds, unless `force`.
pub(crate) fn check_not_held(
    target: &Target,
    c: &Checkpoint,
    force: bool,
    what: &str,
) -> Result<(), CliError> {
    let now = fmt::now_ms();
    let Some(lease) = live_lease(c, now) else {
        return Ok(());
    };
    let left = fmt::duration(Duration::from_millis(lease.expires_ms - now));
    let mut holder = holder(c, &lease);
    // The runner's own test for taking a job over before its lease expires.
    if c.writer.has_exited() {
        holder.push_str(
            "; that process is gone from this host, so the next run there takes the job over by itself",
        );
    }
    if force {
        eprintln!(
            "spotbatch: warning: {}: job {:?} is held by a live runner ({holder}, lease expires in {left}); \
             changing it anyway (--force): that runner is fenced off at its next save and exits 73",
            target.location(),
            target.key.as_str(),
        );
        return Ok(());
    }
    Err(CliError::Held(format!(
        "{}: job {:?} is held by a live runner ({holder}); its lease expires in {left}. \
         Refusing to {what}: stop that runner or wait for its lease to expire, \
         or pass --force (the runner is then fenced off at its next save and exits 73)",
        target.location(),
        target.key.as_str(),
    )))
}
