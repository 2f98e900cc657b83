//! End-to-end: child processes started by a chunk never outlive the job.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{example_bin, finish, signal};

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(marker) {
            found.push(pid);
        }
    }
    found
}

fn run_child_job(script: &str, grace: f64) -> (Option<i32>, Duration, String) {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(example_bin("child_process"))
        .args([
            "--chunks",
            "3",
            "--job",
            "children",
            "--interrupted-exit-code",
            "75",
        ])
        .arg("--grace")
        .arg(grace.to_string())
        .arg("--script")
        .arg(script)
        .arg("--store")
        .arg(format!("file://{}", dir.path().display()))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    signal(&child, libc::SIGTERM);
    let (status, took, err) = finish(child, Duration::from_secs(30));
    (status.code(), took, err)
}

#[test]
fn a_child_stops_with_the_drain_and_none_remains() {
    let marker = format!("1000.{}", std::process::id());
    let (code, took, err) = run_child_job(&format!("sleep {marker}"), 30.0);
    assert_eq!(code, Some(75), "{err}");
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}: the child was not signalled\n{err}"
    );
    assert!(err.contains("chunk abandoned"), "{err}");
    assert_eq!(
        processes_with(&marker),
        Vec::<u32>::new(),
        "a child outlived the job"
    );
}

#[test]
fn a_child_that_ignores_sigterm_is_killed_at_the_drain_deadline() {
    let marker = format!("1001.{}", std::process::id());
    // The shell and its sleep both ignore SIGTERM.
    let script = format!("trap '' TERM; sleep {marker}; echo never");
    let (code, took, err) = run_child_job(&script, 2.0);
    assert_eq!(code, Some(75), "{err}");
    assert!(
        took < Duration::from_secs(2),
        "took {took:?}, grace is 2 s\n{err}"
    );
    assert!(err.contains("drain deadline reached"), "{err}");
    assert_eq!(
        processes_with(&marker),
        Vec::<u32>::new(),
        "a child outlived the job"
    );
}
