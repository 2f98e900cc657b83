//! Who may run the job: the stored checkpoint's lease, and when its holder
//! is known to be gone.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use uuid::Uuid;

use tracing::info;

use super::Session;
use crate::checkpoint::{now_ms, Checkpoint, Writer};
use crate::error::Error;

impl Session {
    /// Refuses to start while another live runner holds the job's lease.
    pub(in crate::runner) fn check_lease(&self, stored: &Checkpoint) -> Result<(), Error> {
        let Some(lease) = stored.lease else {
            return Ok(());
        };
        let now = now_ms();
        let holder = &stored.writer;
        if lease.expires_ms <= now {
            info!(
                job = %self.key.short(),
                %holder,
                expired_ms_ago = now - lease.expires_ms,
                "taking the job over: the previous holder's lease expired"
            );
            return Ok(());
        }
        if holder.run_id == lease.owner && holder_is_gone(holder, &self.writer) {
            info!(job = %self.key.short(), %holder, "taking the job over: the previous holder's process is gone");
            return Ok(());
        }
        Err(Error::Held {
            store: self.location.clone(),
            key: self.key.to_string(),
            holder: holder.to_string(),
            expires_in: Duration::from_millis(lease.expires_ms - now),
        })
    }
}

/// Whether a live runner holds `stored`'s lease, as `me` sees it: exactly
/// when a run of that job started by `me` now would be refused with
/// [`Error::Held`]. A lease that expired by `now_ms` (ms since the Unix
/// epoch), or whose holder ran on this host and is known to be gone, is not
/// held: the next run takes the job over.
pub(crate) fn held_by_live_runner(stored: &Checkpoint, me: &Writer, now_ms: u64) -> bool {
    let Some(lease) = stored.lease else {
        return false;
    };
    let holder = &stored.writer;
    lease.expires_ms > now_ms && !(holder.run_id == lease.owner && holder_is_gone(holder, me))
}

/// The runs under way in this process, by run id: a holder with our pid is a
/// previous incarnation of this process only if its run is not among them.
static LIVE_RUNS: Mutex<Option<HashSet<Uuid>>> = Mutex::new(None);

/// Marks a run of this process as under way until the guard is dropped.
#[derive(Debug)]
pub(in crate::runner) struct LiveRun(Uuid);

impl LiveRun {
    pub(in crate::runner) fn register(run_id: Uuid) -> Self {
        LIVE_RUNS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(HashSet::new)
            .insert(run_id);
        Self(run_id)
    }
}

impl Drop for LiveRun {
    fn drop(&mut self) {
        if let Some(runs) = LIVE_RUNS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            runs.remove(&self.0);
        }
    }
}

fn live_here(run_id: Uuid) -> bool {
    LIVE_RUNS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .is_some_and(|runs| runs.contains(&run_id))
}

/// Whether the lease holder is certainly dead: its process has exited
/// ([`Writer::has_exited`]: it ran on this host in our PID namespace, and no
/// process has its pid any more, or the one that has it is a zombie), or
/// its pid is ours but its run is not one of this process's (a previous
/// incarnation, e.g. PID 1 of a restarted container with the same name).
/// Containers that share a host name but not a PID namespace (host
/// networking) cannot see each other's processes: they wait for the lease.
fn holder_is_gone(holder: &Writer, me: &Writer) -> bool {
    if holder.run_id == me.run_id {
        return false;
    }
    let same_namespace = holder.pid_namespace != 0 && holder.pid_namespace == me.pid_namespace;
    if holder.host == me.host && same_namespace && holder.pid == me.pid {
        return !live_here(holder.run_id);
    }
    holder.has_exited()
}
