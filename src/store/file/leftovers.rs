//! Temporary files that saves cut off by a kill leave behind: which process
//! wrote each, and whether it may go. The rules are documented on
//! [`FileStore`](super::FileStore), under *Temporary files*.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use tracing::info;

use super::EXTENSION;
use crate::process::{liveness, proc_stat, Liveness};

/// How old a temporary file must be to be removed when its writer cannot be
/// checked from here (another host, another PID namespace, a name that does
/// not record its writer). A save holds its temporary file for the time it
/// takes to write and `fsync` one checkpoint: milliseconds, seconds on a
/// struggling network file system.
pub(super) const STALE_AFTER: Duration = Duration::from_secs(60 * 60);

/// The process that writes a temporary file, as the file's name records it.
/// A field is 0 where the platform does not tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Origin {
    pid: u32,
    /// The inode of the writer's PID namespace (`/proc/self/ns/pid`).
    pid_ns: u64,
    /// The first 64 bits of the kernel's boot id
    /// (`/proc/sys/kernel/random/boot_id`): one per boot of one machine,
    /// shared by every container on it.
    boot: u64,
    /// When the process started, in clock ticks since boot (field 22 of
    /// `/proc/<pid>/stat`): with `pid`, it names one process even after its
    /// pid is reused.
    start: u64,
}

impl Origin {
    /// This process.
    pub(super) fn this_process() -> Self {
        static CACHED: OnceLock<Origin> = OnceLock::new();
        let cached = *CACHED.get_or_init(Self::read_this_process);
        // A forked child is another process.
        if cached.pid == std::process::id() {
            cached
        } else {
            Self::read_this_process()
        }
    }

    fn read_this_process() -> Self {
        let pid = std::process::id();
        Self {
            pid,
            pid_ns: crate::checkpoint::pid_namespace(),
            boot: boot_id(),
            start: proc_stat(pid).map_or(0, |s| s.start),
        }
    }

    /// The form in file names: `pid<pid>-ns<namespace>-boot<16 hex>-t<start>`.
    fn tag(&self) -> String {
        format!(
            "pid{}-ns{}-boot{:016x}-t{}",
            self.pid, self.pid_ns, self.boot, self.start
        )
    }

    fn parse(tag: &str) -> Option<Self> {
        let mut parts = tag.split('-');
        let origin = Self {
            pid: parts.next()?.strip_prefix("pid")?.parse().ok()?,
            pid_ns: parts.next()?.strip_prefix("ns")?.parse().ok()?,
            boot: u64::from_str_radix(parts.next()?.strip_prefix("boot")?, 16).ok()?,
            start: parts.next()?.strip_prefix('t')?.parse().ok()?,
        };
        parts.next().is_none().then_some(origin)
    }

    /// Whether this process can see the writer's process: same boot of the
    /// same machine, same PID namespace.
    fn visible_from(&self, me: &Origin) -> bool {
        self.boot != 0 && self.pid_ns != 0 && self.boot == me.boot && self.pid_ns == me.pid_ns
    }

    /// Who the writer is, for messages, when it cannot be checked from here.
    fn describe_remote(&self, me: &Origin) -> String {
        if self.boot == 0 || self.pid_ns == 0 {
            format!(
                "pid {} on a host that does not record its boot id and PID namespace",
                self.pid
            )
        } else if self.boot != me.boot {
            format!(
                "pid {} on another host or boot (boot id {:016x}…)",
                self.pid, self.boot
            )
        } else {
            format!(
                "pid {} in another PID namespace (container) on this host",
                self.pid
            )
        }
    }
}

/// The name of the temporary file a save of `file_name` (a checkpoint's file
/// name) writes: `.<file_name>.<writer>.<32 hex random>.tmp`.
pub(super) fn temp_name(file_name: &str) -> String {
    format!(
        ".{file_name}.{}.{}.tmp",
        Origin::this_process().tag(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A temporary file's name, read back.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct TempName<'a> {
    /// The stem of the checkpoint it was to replace.
    pub(super) stem: &'a str,
    /// Its writer; `None` for a name without one.
    origin: Option<Origin>,
}

/// Reads a directory entry's name as a temporary file of a save; `None` when
/// it is something else. Names without a writer
/// (`.<stem>.ckpt.<hex>.tmp`) are read too: they are removed by age.
pub(super) fn parse(name: &str) -> Option<TempName<'_>> {
    let inner = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (rest, random) = inner.rsplit_once('.')?;
    if random.is_empty() || !random.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let (stem, origin) = match checkpoint_stem(rest) {
        Some(stem) => (stem, None),
        None => {
            let (rest, tag) = rest.rsplit_once('.')?;
            (checkpoint_stem(rest)?, Some(Origin::parse(tag)?))
        }
    };
    (!stem.is_empty()).then_some(TempName { stem, origin })
}

/// `<stem>` of `<stem>.ckpt`.
fn checkpoint_stem(file_name: &str) -> Option<&str> {
    file_name.strip_suffix(EXTENSION)?.strip_suffix('.')
}

/// A temporary file that a sweep left in place.
#[derive(Debug)]
pub(super) struct Kept {
    /// Where it is.
    pub(super) path: PathBuf,
    /// Why it stays.
    pub(super) reason: String,
}

/// Removes the temporary files of `stem`'s checkpoint among `names` (entries
/// of `dir`) whose writer is gone, or that are older than [`STALE_AFTER`]
/// when their writer cannot be checked; returns the others, with why.
///
/// The caller holds `stem`'s lock: no writer that takes it is between
/// creating its temporary file and renaming it. The removals are not
/// `fsync`ed: one undone by a crash is done again by the next sweep.
pub(super) fn sweep<'n>(
    dir: &Path,
    stem: &str,
    names: impl IntoIterator<Item = &'n str>,
) -> Vec<Kept> {
    let me = Origin::this_process();
    let mut kept = Vec::new();
    for name in names {
        let Some(temp) = parse(name).filter(|t| t.stem == stem) else {
            continue;
        };
        let path = dir.join(name);
        let verdict = match temp.origin {
            Some(origin) if origin.visible_from(&me) => match liveness(origin.pid, origin.start) {
                Liveness::Gone(why) => Ok(format!("its writer, pid {}, {why}", origin.pid)),
                Liveness::Running => Err(format!(
                    "its writer, pid {}, is running on this host; a save or list removes it once that process is gone",
                    origin.pid
                )
                .into()),
                Liveness::Unknown(e) => by_age(
                    &path,
                    &format!("pid {} on this host, which cannot be checked ({e})", origin.pid),
                ),
            },
            Some(origin) => by_age(&path, &origin.describe_remote(&me)),
            None => by_age(&path, "a process its name does not record"),
        };
        match verdict {
            Ok(why) => match fs::remove_file(&path) {
                Ok(()) => info!(
                    path = %path.display(),
                    why,
                    "removed the temporary file of a save that was cut off"
                ),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => kept.push(Kept {
                    path,
                    reason: format!("{why}, but it could not be removed: {e}"),
                }),
            },
            Err(Verdict::Gone) => {}
            Err(Verdict::Keep(reason)) => kept.push(Kept { path, reason }),
        }
    }
    kept
}

enum Verdict {
    /// The file vanished meanwhile.
    Gone,
    /// It stays, for this reason.
    Keep(String),
}

impl From<String> for Verdict {
    fn from(reason: String) -> Self {
        Verdict::Keep(reason)
    }
}

/// Removable (`Ok`, why) when the file is older than [`STALE_AFTER`].
fn by_age(path: &Path, writer: &str) -> Result<String, Verdict> {
    let modified = match fs::symlink_metadata(path).and_then(|m| m.modified()) {
        Ok(modified) => modified,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(Verdict::Gone),
        Err(e) => {
            return Err(format!("written by {writer}; its age cannot be read: {e}").into());
        }
    };
    // A time in the future (clocks of NFS clients and server apart) counts as now.
    let age = SystemTime::now()
        .duration_since(modified)
        .unwrap_or_default();
    if age >= STALE_AFTER {
        Ok(format!(
            "written {} ago by {writer}: older than any save",
            human(age)
        ))
    } else {
        Err(format!(
            "written {} ago by {writer}, whose process cannot be checked from here: it may still be saving; a save or list removes it once it is {} old",
            human(age),
            human(STALE_AFTER)
        )
        .into())
    }
}

fn human(d: Duration) -> String {
    match d.as_secs() {
        s if s >= 3600 && s % 3600 == 0 => format!("{} h", s / 3600),
        s if s < 120 => format!("{s} s"),
        s if s < 2 * 3600 => format!("{} min", s / 60),
        s => format!("{} h", s / 3600),
    }
}

/// The first 64 bits of this boot's id; 0 where there is none.
fn boot_id() -> u64 {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .and_then(|text| {
            let hex: String = text
                .chars()
                .filter(char::is_ascii_hexdigit)
                .take(16)
                .collect();
            (hex.len() == 16).then(|| u64::from_str_radix(&hex, 16).ok())?
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back() {
        let name = temp_name("job.ckpt");
        let parsed = parse(&name).unwrap();
        assert_eq!(parsed.stem, "job");
        assert_eq!(parsed.origin, Some(Origin::this_process()));
        assert!(
            name.contains(&format!(".pid{}-", std::process::id())),
            "{name}"
        );

        // Names without a writer.
        let old = ".job.ckpt.0123456789abcdef0123456789abcdef.tmp";
        assert_eq!(
            parse(old),
            Some(TempName {
                stem: "job",
                origin: None
            })
        );
        // Stems that look like the rest of a name.
        for stem in ["x.ckpt", "a.ckpt.deadbeef", "pid1-ns2-boot3-t4"] {
            let name = temp_name(&format!("{stem}.{EXTENSION}"));
            assert_eq!(parse(&name).unwrap().stem, stem, "{name}");
            let old = format!(".{stem}.{EXTENSION}.abc.tmp");
            assert_eq!(parse(&old).unwrap().stem, stem, "{old}");
        }
        for other in [
            "job.ckpt",
            "job.lock",
            ".job.ckpt.tmp",
            ".job.ckpt.xyz.tmp",
            "..ckpt.abc.tmp",
            ".job.ckpt.pid1-ns2.abc.tmp",
            ".job.lock.pid1-ns2-boot3-t4.abc.tmp",
        ] {
            assert_eq!(parse(other), None, "{other}");
        }
    }

    /// A temporary file of `stem` by `origin` (`None`: a name without a
    /// writer), last modified `age` ago.
    fn temp(dir: &Path, stem: &str, origin: Option<Origin>, age: Duration) -> PathBuf {
        let random = uuid::Uuid::new_v4().simple();
        let name = match origin {
            Some(o) => format!(".{stem}.{EXTENSION}.{}.{random}.tmp", o.tag()),
            None => format!(".{stem}.{EXTENSION}.{random}.tmp"),
        };
        let path = dir.join(name);
        let file = fs::File::create(&path).unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
        path
    }

    fn swept(dir: &Path, stem: &str) -> Vec<Kept> {
        let names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        sweep(dir, stem, names.iter().map(String::as_str))
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_sweep_removes_what_is_stale_and_keeps_what_may_be_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let me = Origin::this_process();
        let young = Duration::ZERO;
        let old = STALE_AFTER + Duration::from_secs(60);

        // A real process, gone: killed and reaped. Another, killed but not
        // reaped (a zombie).
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let dead = Origin {
            pid: child.id(),
            start: proc_stat(child.id()).unwrap().start,
            ..me
        };
        child.kill().unwrap();
        child.wait().unwrap();
        let mut zombie = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let undead = Origin {
            pid: zombie.id(),
            start: proc_stat(zombie.id()).unwrap().start,
            ..me
        };
        zombie.kill().unwrap();
        while proc_stat(undead.pid).unwrap().state != 'Z' {
            std::thread::sleep(Duration::from_millis(1));
        }

        let other_host = Origin {
            boot: me.boot ^ 1,
            ..me
        };
        let other_namespace = Origin {
            pid_ns: me.pid_ns + 1,
            ..me
        };
        let reused_pid = Origin {
            start: me.start + 1,
            ..me
        };
        let removed = [
            temp(dir, "job", Some(dead), young),
            temp(dir, "job", Some(undead), young),
            temp(dir, "job", Some(reused_pid), young),
            temp(dir, "job", Some(other_host), old),
            temp(dir, "job", Some(other_namespace), old),
            temp(dir, "job", None, old),
        ];
        let live = temp(dir, "job", Some(me), old);
        let young_remote = [
            temp(dir, "job", Some(other_host), young),
            temp(dir, "job", Some(other_namespace), young),
            temp(dir, "job", None, young),
        ];
        let other_job = temp(dir, "job2", Some(dead), young);

        let kept = swept(dir, "job");
        zombie.wait().unwrap();
        for path in &removed {
            assert!(!path.exists(), "{} was kept: {kept:?}", path.display());
        }
        assert!(other_job.exists(), "another job's file was swept");
        let mut paths: Vec<&PathBuf> = kept.iter().map(|k| &k.path).collect();
        paths.sort();
        let mut expected: Vec<&PathBuf> = young_remote.iter().chain([&live]).collect();
        expected.sort();
        assert_eq!(paths, expected, "{kept:?}");
        let reason = |p: &PathBuf| &kept.iter().find(|k| &k.path == p).unwrap().reason;
        assert!(
            reason(&live).contains(&format!("pid {}, is running on this host", me.pid)),
            "{}",
            reason(&live)
        );
        assert!(
            reason(&young_remote[0]).contains("another host")
                && reason(&young_remote[0]).contains("removes it once it is 1 h old"),
            "{}",
            reason(&young_remote[0])
        );
        assert!(
            reason(&young_remote[1]).contains("another PID namespace"),
            "{}",
            reason(&young_remote[1])
        );
        assert!(
            reason(&young_remote[2]).contains("its name does not record"),
            "{}",
            reason(&young_remote[2])
        );
    }

    #[test]
    fn this_process_is_running_and_fully_known_on_linux() {
        let me = Origin::this_process();
        if cfg!(target_os = "linux") {
            assert!(me.boot != 0 && me.pid_ns != 0 && me.start != 0, "{me:?}");
            assert!(me.visible_from(&me));
            assert!(matches!(liveness(me.pid, me.start), Liveness::Running));
            let reused = Origin {
                start: me.start + 1,
                ..me
            };
            assert!(matches!(
                liveness(reused.pid, reused.start),
                Liveness::Gone(_)
            ));
        }
    }
}
