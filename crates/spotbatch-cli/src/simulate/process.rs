//! One run of the job under the simulator: a child in its own process group,
//! signalled as a platform does, its output forwarded with a `[run N]` prefix.
//!
//! # What is signalled
//!
//! The job starts in a process group of its own (pgid = its pid), like the
//! processes of one container.
//!
//! - **SIGTERM** goes to the main process only by default, as `docker stop`
//!   and ECS do (they signal PID 1 of the container). That is what exposes a
//!   shell wrapper that does not `exec` the job: the shell gets the signal,
//!   the job never does. `--signal-group` sends it to the whole group instead
//!   (like `kill -TERM -PGID`, or systemd's `KillMode=control-group`).
//! - **SIGKILL** (a hard kill, or the grace period running out) goes to the
//!   whole group: everything in the container dies.
//! - When the main process exits, whatever is left of the group is SIGKILLed,
//!   as the kernel does to a container's processes when its PID 1 exits.
//!
//! The simulator cannot make the job PID 1 of a PID namespace, where a signal
//! without a handler is ignored rather than fatal. When the main process dies
//! *of* SIGTERM (it had no handler) while others of its group still run, the
//! simulator therefore does what a container would: the others keep running
//! until the grace period ends, and are then SIGKILLed.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, timeout_at, Instant};

use crate::error::CliError;
use crate::fmt::now_ms;

/// Who gets SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignalTarget {
    /// The main process only (ECS, `docker stop`): the default.
    MainProcess,
    /// Every process of the job's process group.
    Group,
}

/// What to do to one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// When to interrupt it, from its start.
    pub(crate) delay: Duration,
    /// SIGKILL with no warning instead of SIGTERM.
    pub(crate) hard_kill: bool,
}

/// How the main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    fn of(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(sig)) => Exit::Signal(sig),
            (None, None) => Exit::Code(-1),
        }
    }

    /// `exit 75`, `SIGKILL`.
    pub(crate) fn label(self) -> String {
        match self {
            Exit::Code(c) => format!("exit {c}"),
            Exit::Signal(s) => signal_name(s),
        }
    }
}

/// `SIGTERM`, `SIGKILL`, or `signal N`.
pub(crate) fn signal_name(sig: i32) -> String {
    Signal::try_from(sig).map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_owned())
}

/// A process of the job's group: `quickstart (pid 1234)`.
pub(crate) fn describe(p: &(i32, String)) -> String {
    format!("{} (pid {})", p.1, p.0)
}

/// What the simulator sent at the planned moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    Term,
    Kill,
}

/// What happened in one run.
#[derive(Debug)]
pub(crate) struct RunResult {
    pub(crate) pid: i32,
    pub(crate) started_wall_ms: u64,
    /// From start until the last process of the run was gone.
    pub(crate) duration: Duration,
    /// What was sent at the planned delay, and when (from start); `None`: the run ended first.
    pub(crate) sent: Option<(Sent, Duration)>,
    pub(crate) exit: Exit,
    /// SIGTERM → the job stopped (main process gone and, where waited for, its group).
    pub(crate) stopped_in: Option<Duration>,
    /// SIGTERM → the main process exited.
    pub(crate) main_exited_in: Option<Duration>,
    /// SIGKILL was needed after SIGTERM: the grace period ran out.
    pub(crate) grace_exceeded: bool,
    /// Processes still running when the grace period ran out.
    pub(crate) still_running: Vec<(i32, String)>,
    /// Processes left behind by a main process that exited, SIGKILLed then.
    pub(crate) left_behind: Vec<(i32, String)>,
    /// When the run's processes were SIGKILLed (ms since the Unix epoch).
    pub(crate) killed_wall_ms: Option<u64>,
}

/// Starts the job and plays `plan` on it.
///
/// `current` holds the running group's id, so the simulator can kill it if
/// it is interrupted itself.
pub(crate) async fn run_once(
    argv: &[OsString],
    label: &str,
    plan: Plan,
    grace: Duration,
    target: SignalTarget,
    quiet: bool,
    current: &AtomicI32,
) -> Result<RunResult, CliError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| CliError::Usage("no job command given after --".into()))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .process_group(0)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if quiet {
        command.stdout(Stdio::null()).stderr(Stdio::null());
    } else {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let started = Instant::now();
    let started_wall_ms = now_ms();
    let mut child = command.spawn().map_err(|e| {
        CliError::Failed(format!(
            "could not start the job command {:?}: {e}",
            program.to_string_lossy()
        ))
    })?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| CliError::Failed("the job exited before its pid was known".into()))?;
    current.store(pid, Ordering::SeqCst);
    let forwarders = [
        child.stdout.take().map(|o| forward(o, label)),
        child.stderr.take().map(|e| forward(e, label)),
    ];

    let mut r = RunResult {
        pid,
        started_wall_ms,
        duration: Duration::ZERO,
        sent: None,
        exit: Exit::Code(-1),
        stopped_in: None,
        main_exited_in: None,
        grace_exceeded: false,
        still_running: Vec::new(),
        left_behind: Vec::new(),
        killed_wall_ms: None,
    };
    match timeout_at(started + plan.delay, child.wait()).await {
        Ok(status) => r.exit = Exit::of(status.map_err(wait_error)?),
        Err(_) if plan.hard_kill => {
            r.sent = Some((Sent::Kill, started.elapsed()));
            r.killed_wall_ms = Some(now_ms());
            signal_group(pid, Signal::SIGKILL);
            r.exit = Exit::of(child.wait().await.map_err(wait_error)?);
        }
        Err(_) => stop(&mut child, &mut r, started, grace, target).await?,
    }

    // The main process is gone: so is the container, and everything in it.
    let left = group_members(pid);
    if !left.is_empty() {
        r.left_behind = left;
        signal_group(pid, Signal::SIGKILL);
        r.killed_wall_ms.get_or_insert_with(now_ms);
        wait_group_empty(pid, Instant::now() + Duration::from_secs(5)).await;
    }
    r.duration = started.elapsed();
    current.store(0, Ordering::SeqCst);
    for f in forwarders.into_iter().flatten() {
        // A process that left the group may still hold the pipe: don't wait
        // for it (on timeout the task is detached; it ends with the pipe).
        let _ = timeout(Duration::from_secs(1), f).await;
    }
    Ok(r)
}

/// SIGTERM, then wait for the job to stop within the grace period, else SIGKILL.
async fn stop(
    child: &mut Child,
    r: &mut RunResult,
    started: Instant,
    grace: Duration,
    target: SignalTarget,
) -> Result<(), CliError> {
    let sent_at = Instant::now();
    r.sent = Some((Sent::Term, sent_at - started));
    match target {
        // ESRCH: it exited at this very moment; the wait below sees it.
        SignalTarget::MainProcess => {
            let _ = kill(Pid::from_raw(r.pid), Signal::SIGTERM);
        }
        SignalTarget::Group => signal_group(r.pid, Signal::SIGTERM),
    }
    let deadline = sent_at + grace;
    match timeout_at(deadline, child.wait()).await {
        Ok(status) => {
            r.exit = Exit::of(status.map_err(wait_error)?);
            r.main_exited_in = Some(sent_at.elapsed());
            // The rest of the group gets the rest of the grace period when it
            // got the signal too, or when the main process died of it (as PID 1
            // of a container it would have ignored it and kept waiting).
            let wait_for_group =
                target == SignalTarget::Group || r.exit == Exit::Signal(Signal::SIGTERM as i32);
            if wait_for_group && !wait_group_empty(r.pid, deadline).await {
                r.still_running = group_members(r.pid);
                r.grace_exceeded = !r.still_running.is_empty();
                if r.grace_exceeded {
                    r.killed_wall_ms = Some(now_ms());
                    signal_group(r.pid, Signal::SIGKILL);
                }
            }
        }
        Err(_) => {
            r.still_running = group_members(r.pid);
            r.grace_exceeded = true;
            r.killed_wall_ms = Some(now_ms());
            signal_group(r.pid, Signal::SIGKILL);
            r.exit = Exit::of(child.wait().await.map_err(wait_error)?);
        }
    }
    if !r.grace_exceeded {
        r.stopped_in = Some(sent_at.elapsed());
    }
    Ok(())
}

fn wait_error(e: std::io::Error) -> CliError {
    CliError::Failed(format!("could not wait for the job: {e}"))
}

/// Signals every process of the group; a group already gone is fine.
fn signal_group(pgid: i32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pgid), sig);
}

/// Waits until no live process is left in the group, or `deadline`; whether it emptied.
async fn wait_group_empty(pgid: i32, deadline: Instant) -> bool {
    loop {
        if group_members(pgid).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// Live (not zombie) processes of a process group, with their names.
#[cfg(target_os = "linux")]
pub(crate) fn group_members(pgid: i32) -> Vec<(i32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return fallback_members(pgid);
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp …"; comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let mut rest = stat[close + 1..].split_whitespace();
        let (state, _ppid, pgrp) = (rest.next(), rest.next(), rest.next());
        let live = !matches!(state, Some("Z" | "X" | "x"));
        if live && pgrp.and_then(|g| g.parse::<i32>().ok()) == Some(pgid) {
            out.push((pid, stat[open + 1..close].to_owned()));
        }
    }
    out.sort_unstable();
    out
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn group_members(pgid: i32) -> Vec<(i32, String)> {
    fallback_members(pgid)
}

/// Without /proc: whether the group has any member (zombies included).
fn fallback_members(pgid: i32) -> Vec<(i32, String)> {
    match killpg(Pid::from_raw(pgid), None) {
        Ok(()) => vec![(pgid, "a process of the group".to_owned())],
        Err(_) => Vec::new(),
    }
}

/// Copies a pipe to our stderr line by line, each prefixed with `[LABEL] `
/// (`[run 3]`, `[w2 run 3]`).
fn forward(pipe: impl AsyncRead + Unpin + Send + 'static, label: &str) -> JoinHandle<()> {
    let prefix = format!("[{label}] ");
    tokio::spawn(async move {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    use std::io::Write;
                    if !line.ends_with(b"\n") {
                        line.push(b'\n');
                    }
                    let mut err = std::io::stderr().lock();
                    let _ = err
                        .write_all(prefix.as_bytes())
                        .and_then(|()| err.write_all(&line));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_group() {
        let me = std::process::id() as i32;
        let pgid = nix::unistd::getpgrp().as_raw();
        let members = group_members(pgid);
        assert!(members.iter().any(|(pid, _)| *pid == me), "{members:?}");
        assert!(group_members(i32::MAX - 7).is_empty());
    }

    #[test]
    fn names_signals() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(Exit::Code(75).label(), "exit 75");
        assert_eq!(Exit::Signal(9).label(), "SIGKILL");
    }
}
