//! End-to-end: the temporary files that SIGKILLed saves leave in a file store
//! are removed by the next runs; a live writer's never are.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{example_command, finish, signal, stderr, Quickstart, JOB};
use spotbatch::{Checkpoint, FileStore, JobKey, Status};

const LIMIT: Duration = Duration::from_secs(120);

/// The pid a temporary file's name gives its writer (`…ckpt.pid<pid>-…`).
fn writer_pid(name: &str) -> Option<u32> {
    let (_, after) = name.split_once(".ckpt.pid")?;
    after.split('-').next()?.parse().ok()
}

/// The quickstart on a file store in `dir`, checkpointing every
/// `every_chunks` chunks of 10 records, without an audit file (whose fsync
/// per chunk would slow the run).
fn quickstart(dir: &Path, records: u64, every_chunks: u64) -> Command {
    let mut cmd = example_command("quickstart");
    cmd.args(["--records", &records.to_string()])
        .args(["--chunk", "10"])
        .args(["--every-chunks", &every_chunks.to_string()])
        .args(["--job", JOB])
        .arg("--out")
        .arg(dir.join("out.txt"))
        .arg("--store")
        .arg(format!("file://{}", dir.join("ckpt").display()));
    cmd
}

/// SIGKILLs at random moments while the job saves after every chunk leave
/// temporary files behind; the following runs remove them, and a completed
/// run leaves none, with the output of an uninterrupted run.
#[test]
fn temporaries_of_sigkilled_saves_are_removed_by_the_next_runs() {
    const KILLS: usize = 30;
    // More than 100 runs of at most 200 ms can do on a fast disk.
    let records = 1_000_000;
    // Under the target directory: on a disk, where an fsync takes time (the
    // system's temporary directory may be a tmpfs, where saves are too
    // quick for kills to land inside them).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = FileStore::new(dir.path().join("ckpt"));
    let temporaries = || -> Vec<String> {
        match std::fs::read_dir(store.dir()) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp"))
                .collect(),
            Err(_) => Vec::new(),
        }
    };
    let mut rng = fastrand::Rng::with_seed(0x5eed_0007);
    let mut killed = HashSet::new();
    let mut left_by_a_kill = 0;
    let mut most_at_once = 0;
    while killed.len() < KILLS || (left_by_a_kill == 0 && killed.len() < 100) {
        let child = quickstart(dir.path(), records, 1).spawn().unwrap();
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(rng.u64(20..200)));
        signal(&child, libc::SIGKILL);
        let (status, _, log) = finish(child, LIMIT);
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "the job ended before {} kills landed: {status:?}\n{log}",
            killed.len() + 1
        );
        killed.insert(pid);
        let left = temporaries();
        for name in &left {
            let writer = writer_pid(name);
            assert!(
                writer.is_some_and(|w| killed.contains(&w)),
                "{name}: not named after a killed writer ({killed:?})"
            );
            if writer == Some(pid) {
                left_by_a_kill += 1;
            }
        }
        most_at_once = most_at_once.max(left.len());
    }
    // A save's fsync takes much of each chunk's time: kills land inside saves.
    assert!(
        left_by_a_kill >= 1,
        "none of {} kills left a temporary file: the test proves nothing (is {} on a tmpfs?)",
        killed.len(),
        dir.path().display()
    );

    // The last run saves less often, to finish quickly; the output is the same.
    let out = quickstart(dir.path(), records, 10_000).output().unwrap();
    assert!(out.status.success(), "last run:\n{}", stderr(&out));
    assert_eq!(temporaries(), Vec::<String>::new(), "left after completion");
    let path = store.path_of(&JobKey::new(JOB).unwrap());
    let stored = Checkpoint::decode(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(stored.status, Status::Completed);
    let reference = tempfile::tempdir().unwrap();
    let out = quickstart(reference.path(), records, 10_000)
        .output()
        .unwrap();
    assert!(out.status.success(), "reference run:\n{}", stderr(&out));
    assert!(
        std::fs::read(dir.path().join("out.txt")).unwrap()
            == std::fs::read(reference.path().join("out.txt")).unwrap(),
        "the output differs from an uninterrupted run's"
    );
    eprintln!(
        "{} kills, {left_by_a_kill} left a temporary file, at most {most_at_once} at once",
        killed.len()
    );
}

fn writer_tag(pid: u32) -> String {
    spotbatch_test_support::temp_writer_tag(pid)
}

/// Creates a temporary file of `job`'s checkpoint named after process `pid`.
fn temporary_of(job: &Quickstart, pid: u32) -> PathBuf {
    let dir = job.store().dir().to_owned();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!(
        ".{JOB}.ckpt.{}.{:032x}.tmp",
        writer_tag(pid),
        fastrand::u128(..)
    ));
    std::fs::write(&path, b"partial").unwrap();
    path
}

fn exists(path: &Path) -> bool {
    path.try_exists().unwrap()
}

/// A temporary file named after a running process (this test, a `sleep`)
/// survives a run's start and saves; one named after a process that has
/// exited is removed by the next run's first save, or its first load when
/// the job is already complete and nothing is saved.
#[test]
fn a_running_writers_temporary_survives_and_a_gone_ones_is_removed() {
    let job = Quickstart::new(2_000, 100, 0);
    let ours = temporary_of(&job, std::process::id());
    let mut sleeper = Command::new("sleep").arg("600").spawn().unwrap();
    let sleepers = temporary_of(&job, sleeper.id());
    let gone = {
        let mut short = Command::new("sleep").arg("600").spawn().unwrap();
        let path = temporary_of(&job, short.id());
        short.kill().unwrap();
        short.wait().unwrap();
        path
    };

    let out = job.run();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!exists(&gone), "a gone writer's temporary file was kept");
    assert!(
        exists(&ours) && exists(&sleepers),
        "a running writer's temporary file was removed"
    );
    let log = stderr(&out);
    assert!(
        log.contains("removed the temporary file of a save that was cut off"),
        "{log}"
    );

    // Now the sleeper is gone; the job is complete: the next run only loads.
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    let version = job.checkpoint().unwrap().version;
    let out = job.run();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already completed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(job.checkpoint().unwrap().version, version, "it saved");
    assert!(
        !exists(&sleepers),
        "the first load kept a gone writer's file"
    );
    assert!(
        exists(&ours),
        "a running writer's temporary file was removed"
    );
}
