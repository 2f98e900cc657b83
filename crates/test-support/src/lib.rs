//! Helpers shared by the workspace's end-to-end tests: find an example's
//! binary, send real signals to real processes, wait for them with a limit.
//! Not published.

pub mod logs;
pub mod table;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// An example's binary, which `cargo test` builds next to the test binaries
/// (`target/<profile>/examples/<name>`).
///
/// # Panics
///
/// When it is missing, saying how to build it.
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("examples").join(name);
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test` (or scripts/test), which builds the examples",
        bin.display()
    );
    bin
}

/// The example `name` as the end-to-end tests run it: `info` logs on a piped
/// stderr (for the test to read), no stdin or stdout, and no
/// `SPOTBATCH_STORE` inherited to change its store.
pub fn example_command(name: &str) -> Command {
    let mut cmd = Command::new(example_bin(name));
    cmd.env("RUST_LOG", "info")
        .env_remove("SPOTBATCH_STORE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// A finished process's stderr, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Sends `sig` to the child.
///
/// # Panics
///
/// When kill(2) fails (the child was already reaped).
pub fn signal(child: &Child, sig: i32) {
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) with a pid we spawned and have not reaped: it cannot
    // name another process.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// Sends `sig` to the process `pid`.
///
/// # Panics
///
/// When kill(2) fails.
pub fn signal_pid(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a pid the test started and whose parent (the test,
    // or `unshare`) has not reaped it: it cannot name another process.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// A command's program and arguments, as strings.
pub fn command_line(cmd: &Command) -> Vec<String> {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// Starts `cmd` (its program, arguments and environment) as PID 1 of a new
/// PID namespace, as in a container; returns the `unshare` process (whose
/// exit status is PID 1's; stdin and stdout null, stderr piped) and the host
/// pid of the namespace's PID 1, to signal. Killing the `unshare` process
/// kills PID 1 too (`--kill-child`), so a test that gives up on it leaves no
/// process behind holding its pipes.
///
/// # Panics
///
/// When `unshare --pid` (util-linux, and root) is not available.
// The child is returned to the caller, who waits for it.
#[allow(clippy::zombie_processes)]
pub fn as_pid1(cmd: &Command) -> (Child, i32) {
    let mut unshare = Command::new("unshare");
    unshare
        .args(["--pid", "--fork", "--kill-child", "--mount-proc", "--"])
        .args(command_line(cmd))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in cmd.get_envs() {
        match value {
            Some(value) => unshare.env(name, value),
            None => unshare.env_remove(name),
        };
    }
    let mut child = unshare
        .spawn()
        .expect("unshare (util-linux) is needed for the PID 1 tests");
    let children = format!("/proc/{0}/task/{0}/children", child.id());
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&children).unwrap_or_default();
        if let Some(pid) = text.split_whitespace().next() {
            return (child, pid.parse().expect("pid"));
        }
        if started.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("unshare started no child: are we root?");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for the child; returns its status and how long that took.
///
/// # Panics
///
/// When it outlives `limit` (it is killed first).
pub fn wait_within(child: &mut Child, limit: Duration) -> (ExitStatus, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return (status, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for a child spawned with `stderr(Stdio::piped())`; returns its
/// status, how long that took, and its stderr.
///
/// # Panics
///
/// When stderr was not piped, or the child outlives `limit` (it is killed
/// first; the panic shows its stderr).
pub fn finish(mut child: Child, limit: Duration) -> (ExitStatus, Duration, String) {
    let mut err = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return (
                status,
                started.elapsed(),
                reader.join().expect("stderr reader"),
            );
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "process did not exit within {limit:?}; stderr:\n{}",
                reader.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The writer part of a file store's temporary file name for process `pid`
/// (see `FileStore`'s docs): `pid<pid>-ns<n>-boot<b>-t<t>`, read from `/proc`.
///
/// # Panics
///
/// When `/proc` cannot tell (no such process, no `/proc`).
pub fn temp_writer_tag(pid: u32) -> String {
    let boot: String = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .expect("boot id")
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(16)
        .collect();
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).expect("pid namespace");
    let ns = ns
        .to_str()
        .and_then(|l| l.strip_prefix("pid:[")?.strip_suffix(']'))
        .expect("pid:[N]");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let (_, fields) = stat.rsplit_once(')').expect("stat fields");
    let start = fields.split_whitespace().nth(22 - 3).expect("start time");
    format!("pid{pid}-ns{ns}-boot{boot}-t{start}")
}
