//! One quickstart binary, built with `--features s3,postgres`, runs the same
//! job on a `file://`, an `s3://` and a `postgres://` store, chosen by URL
//! alone: stopped by SIGTERM mid-run, resumed and SIGKILLed mid-run, resumed
//! to completion, its output is byte-for-byte an uninterrupted run's.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod pg_common;
mod s3_common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use s3_common::{finish, signal, Tail};
use spotbatch_test_support::example_command;

const LIMIT: Duration = Duration::from_secs(60);
const RECORDS: u64 = 30_000;
const CHUNK: u64 = 100;

/// The quickstart on `store`, writing `dir/out.txt`.
fn quickstart(store: &str, dir: &std::path::Path, work_us: u64) -> Command {
    let mut cmd = example_command("quickstart");
    cmd.args(["--records", &RECORDS.to_string()])
        .args(["--chunk", &CHUNK.to_string()])
        .args(["--work-us", &work_us.to_string()])
        .args(["--every-chunks", "5"])
        .args(["--interrupted-exit-code", "75"])
        .arg("--out")
        .arg(dir.join("out.txt"))
        .args(["--store", store]);
    s3_common::s3_env(&mut cmd, &s3_common::endpoint());
    cmd
}

/// Waits until the child's log has `n` lines containing `needle`.
fn wait_for(tail: &Tail, needle: &str, n: usize) {
    let started = Instant::now();
    while tail.count(needle) < n {
        assert!(
            started.elapsed() < LIMIT,
            "no {n}× {needle:?} within {LIMIT:?}:\n{}",
            tail.text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGTERM after the first checkpoint, SIGKILL after the resumed run's second
/// one, then a run to completion; returns the output.
fn interrupted_twice(store: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");

    let mut child = quickstart(store, dir.path(), 20).spawn().expect("spawn");
    let tail = Tail::of(&mut child);
    wait_for(&tail, "checkpoint saved", 1);
    signal(&child, libc::SIGTERM);
    let status = child.wait().expect("wait");
    let log = tail.into_text();
    assert_eq!(status.code(), Some(75), "{store}: SIGTERM run:\n{log}");
    assert!(log.contains("interrupted by SIGTERM"), "{store}:\n{log}");

    let mut child = quickstart(store, dir.path(), 20).spawn().expect("spawn");
    let tail = Tail::of(&mut child);
    wait_for(&tail, "resuming from checkpoint", 1);
    wait_for(&tail, "checkpoint saved", 2);
    signal(&child, libc::SIGKILL);
    let status = child.wait().expect("wait");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "{store}:\n{}",
        tail.text()
    );

    let child = quickstart(store, dir.path(), 0).spawn().expect("spawn");
    let (status, _, log) = finish(child, LIMIT);
    assert_eq!(status.code(), Some(0), "{store}: last run:\n{log}");
    assert!(log.contains("resuming from checkpoint"), "{store}:\n{log}");
    assert!(log.contains("outcome=completed"), "{store}:\n{log}");
    std::fs::read(dir.path().join("out.txt")).expect("output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_binary_resumes_on_every_store_with_identical_output() {
    let reference = {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = format!("file://{}", dir.path().join("ckpt").display());
        let out = quickstart(&store, dir.path(), 0).output().expect("run");
        assert!(out.status.success(), "{}", s3_common::stderr(&out));
        std::fs::read(dir.path().join("out.txt")).expect("reference output")
    };
    assert_eq!(
        reference.iter().filter(|&&b| b == b'\n').count() as u64,
        RECORDS
    );

    let file_dir = tempfile::tempdir().expect("tempdir");
    let bucket = s3_common::fresh_bucket_on(&s3_common::endpoint()).await;
    let stores = [
        format!("file://{}", file_dir.path().join("ckpt").display()),
        format!("s3://{bucket}/ckpt"),
        pg_common::with_schema(&pg_common::pg_url(), &pg_common::fresh_name("e2e")),
    ];
    for store in stores {
        let url = store.clone();
        let out = tokio::task::spawn_blocking(move || interrupted_twice(&url))
            .await
            .expect("run");
        assert!(
            out == reference,
            "{store}: output differs from an uninterrupted run's"
        );
    }
}
