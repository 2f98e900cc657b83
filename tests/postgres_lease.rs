//! The lease against a real PostgreSQL server: two runners started at once,
//! and a takeover after the holder is SIGKILLed.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod pg_common;

use std::process::Command;
use std::time::{Duration, Instant};

use pg_common::{example_command, finish, fresh_name, pg_url, signal, with_schema};
use spotbatch::postgres::PostgresStore;
use spotbatch::{CheckpointStore, JobKey, Status};

const LIMIT: Duration = Duration::from_secs(90);

fn quickstart(url: &str, dir: &std::path::Path, name: &str, lease_secs: f64) -> Command {
    let mut cmd = example_command("quickstart");
    cmd.arg("--store")
        .arg(url)
        .arg("--job")
        .arg("leased")
        .args(["--records", "20000", "--chunk", "100", "--work-us", "100"])
        .args(["--every-chunks", "5", "--interrupted-exit-code", "75"])
        .arg("--lease")
        .arg(lease_secs.to_string())
        .arg("--out")
        .arg(dir.join(format!("{name}.txt")));
    cmd
}

async fn checkpoint(url: &str) -> Option<spotbatch::Checkpoint> {
    let store = PostgresStore::connect(url).await.expect("connect");
    store
        .load(&JobKey::new("leased").unwrap())
        .await
        .expect("load")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_runners_started_at_once_exactly_one_advances() {
    let url = with_schema(&pg_url(), &fresh_name("two"));
    // Create the schema first, so that neither runner waits on migrations.
    drop(PostgresStore::connect(&url).await.expect("connect"));
    let dir = tempfile::tempdir().unwrap();
    let a = quickstart(&url, dir.path(), "a", 60.0).spawn().unwrap();
    let b = quickstart(&url, dir.path(), "b", 60.0).spawn().unwrap();
    let (a, b) = tokio::task::spawn_blocking(move || (finish(a, LIMIT), finish(b, LIMIT)))
        .await
        .unwrap();
    let mut codes = [a.0.code(), b.0.code()];
    codes.sort();
    assert_eq!(codes, [Some(0), Some(73)], "a:\n{}\nb:\n{}", a.2, b.2);
    let loser = if a.0.code() == Some(73) { &a.2 } else { &b.2 };
    assert!(
        loser.contains("held by another runner") || loser.contains("changed by another writer"),
        "{loser}"
    );

    let ckpt = checkpoint(&url).await.expect("a checkpoint");
    assert_eq!(ckpt.status, Status::Completed);
    // Every version was written once, by one run: each save adds one to both.
    assert_eq!(
        ckpt.version, ckpt.counters.checkpoints,
        "a version was written twice"
    );
    let advanced: Vec<_> = ckpt.history.iter().filter(|r| r.chunks > 0).collect();
    assert_eq!(advanced.len(), 1, "{:?}", ckpt.history);
    assert_eq!(ckpt.counters.items, 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_holder_is_taken_over_without_manual_recovery() {
    let url = with_schema(&pg_url(), &fresh_name("takeover"));
    drop(PostgresStore::connect(&url).await.expect("connect"));
    let dir = tempfile::tempdir().unwrap();
    let holder = quickstart(&url, dir.path(), "out", 2.0).spawn().unwrap();
    // Wait until the holder has taken the lease and made some progress.
    let started = Instant::now();
    loop {
        if let Some(c) = checkpoint(&url).await {
            if c.lease.is_some() && c.counters.chunks > 0 {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the holder never checkpointed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&holder, libc::SIGKILL);
    let (status, _, _) = tokio::task::spawn_blocking(move || finish(holder, LIMIT))
        .await
        .unwrap();
    assert_eq!(status.code(), None, "the holder was not killed");
    let held = checkpoint(&url).await.unwrap();
    assert!(
        held.lease.is_some(),
        "a SIGKILLed holder cannot release its lease"
    );

    let next = quickstart(&url, dir.path(), "out", 2.0).spawn().unwrap();
    let (status, _, err) = tokio::task::spawn_blocking(move || finish(next, LIMIT))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("taking the job over"), "{err}");
    let done = checkpoint(&url).await.unwrap();
    assert_eq!(done.status, Status::Completed);
    assert_eq!(done.lease, None);
    let outcomes: Vec<_> = done.history.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(outcomes, ["killed", "completed"]);
}
