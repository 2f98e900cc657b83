//! Whether a process on this machine, in this PID namespace, still runs:
//! what `kill(pid, 0)` and `/proc/<pid>/stat` tell. The lease (is its holder
//! gone?) and the file store (is a temporary file's writer gone?) ask here.

use std::io::{self, ErrorKind};

use crate::checkpoint::{pid_namespace, Writer};

/// What `/proc/<pid>/stat` tells of a process.
pub(crate) struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie: exited, not yet reaped by its
    /// parent), `X` (dead)…
    pub(crate) state: char,
    /// Field 22: start time in clock ticks since boot.
    pub(crate) start: u64,
}

/// Reads `/proc/<pid>/stat` (see `proc(5)`).
pub(crate) fn proc_stat(pid: u32) -> io::Result<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let bad = || {
        io::Error::new(
            ErrorKind::InvalidData,
            format!("/proc/{pid}/stat: {text:?}"),
        )
    };
    // The command name (field 2) is in parentheses and may hold anything.
    let (_, after) = text.rsplit_once(')').ok_or_else(bad)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let state = fields
        .first()
        .and_then(|f| f.chars().next())
        .ok_or_else(bad)?;
    let start = fields
        .get(22 - 3)
        .and_then(|f| f.parse().ok())
        .ok_or_else(bad)?;
    Ok(ProcStat { state, start })
}

/// Whether a process still runs.
pub(crate) enum Liveness {
    /// The process has exited; why we know.
    Gone(&'static str),
    /// A process with this pid runs (it may be another one, if the pid was
    /// reused and its start time is not known).
    Running,
    /// This machine does not tell (the error).
    Unknown(io::Error),
}

/// Whether process `pid` of this PID namespace still runs. `start` is its
/// start time in clock ticks since boot, when known (0: unknown): a process
/// with this pid that started at another time is another process, the pid
/// having been reused.
///
/// A zombie (state `Z`: exited, its parent has not reaped it yet) or a dead
/// process (`X`) is gone. A pid for which `/proc` has no entry is gone only
/// if `kill(pid, 0)` says no process has it (`ESRCH`): where `/proc` hides
/// other users' processes (`hidepid`), one that runs is never taken for gone.
pub(crate) fn liveness(pid: u32, start: u64) -> Liveness {
    match proc_stat(pid) {
        Ok(s) if matches!(s.state, 'Z' | 'X') => {
            Liveness::Gone("has exited (not yet reaped by its parent)")
        }
        Ok(s) if start != 0 && s.start != start => {
            Liveness::Gone("has exited (its pid now names another process)")
        }
        Ok(_) => Liveness::Running,
        Err(e) if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            match signal_zero(pid) {
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Liveness::Gone("has exited"),
                // EPERM: it runs, as another user, hidden from our /proc.
                Ok(()) | Err(_) => Liveness::Unknown(e),
            }
        }
        Err(e) => Liveness::Unknown(e),
    }
}

/// `kill(pid, 0)`: whether a process (a zombie included) has this pid.
fn signal_zero(pid: u32) -> io::Result<()> {
    // 0 and values beyond i32 would name a process group or every process.
    let pid = i32::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, format!("bad pid {pid}")))?;
    // SAFETY: kill(2) with signal 0 sends nothing and has no memory-safety
    // preconditions; the pid is positive, so it names one process.
    if unsafe { libc::kill(pid, 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Writer {
    /// Whether this writer's process has certainly exited, as this process
    /// can tell: the writer ran on this host (same host name) in this PID
    /// namespace, is not this process, and no process has its pid any more,
    /// or the one that has it is a zombie (exited, not yet reaped by its
    /// parent).
    ///
    /// `false` whenever that cannot be told: another host, another
    /// container (PID namespace), a writer that recorded no namespace, a
    /// platform without `/proc`, a process hidden from this user, or a pid
    /// that a new process took after the writer exited (the writer records
    /// no start time to tell them apart).
    pub fn has_exited(&self) -> bool {
        let host = gethostname::gethostname();
        let namespace = pid_namespace();
        cfg!(target_os = "linux")
            && self.host == host.to_string_lossy()
            && self.pid_namespace != 0
            && self.pid_namespace == namespace
            && self.pid != std::process::id()
            && matches!(liveness(self.pid, 0), Liveness::Gone(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reaped_child_is_gone_and_this_process_is_not() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        assert!(matches!(liveness(child.id(), 0), Liveness::Gone(_)));
        assert!(matches!(liveness(0, 0), Liveness::Unknown(_)));
        assert!(!Writer::this_process().has_exited());
    }

    #[test]
    fn a_zombie_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        // Not reaped: it stays a zombie until `wait`.
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while proc_stat(pid).map(|s| s.state).ok() != Some('Z') {
            assert!(
                std::time::Instant::now() < deadline,
                "never became a zombie"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(matches!(liveness(pid, 0), Liveness::Gone(_)));
        let mut writer = Writer::this_process();
        writer.pid = pid;
        assert!(writer.has_exited());
        writer.pid_namespace += 1;
        assert!(
            !writer.has_exited(),
            "another PID namespace's pid means nothing here"
        );
        child.wait().unwrap();
    }
}
