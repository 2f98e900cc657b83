//! The database restarts (`pg_ctl restart -m immediate`: a crash, then
//! recovery) while a job runs: the run goes on and finishes, output complete.
//!
//! Alone in its test binary, because the restart cuts every connection to
//! the server; cargo runs test binaries one after another.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod pg_common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pg_common::{example_command, finish, fresh_name, pg_ctl, pg_url, with_schema};
use spotbatch::{Checkpoint, Status};

const RECORDS: u64 = 40_000;
const CHUNK: u64 = 100;

fn quickstart(schema: &str, dir: &std::path::Path, work_us: u64) -> Command {
    let mut cmd = example_command("quickstart");
    cmd.arg("--store")
        .arg(with_schema(&pg_url(), schema))
        .arg("--job")
        .arg("restart")
        .arg("--records")
        .arg(RECORDS.to_string())
        .arg("--chunk")
        .arg(CHUNK.to_string())
        .arg("--work-us")
        .arg(work_us.to_string())
        .arg("--every-chunks")
        .arg("5")
        .arg("--out")
        .arg(dir.join("out.txt"))
        .arg("--audit")
        .arg(dir.join("audit.txt"));
    cmd
}

fn restart_server() {
    let started = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{} restart -m immediate -w -t 60", pg_ctl()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run pg_ctl");
    assert!(status.success(), "pg_ctl restart failed: {status}");
    eprintln!("server restarted in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_during_a_run_is_survived() {
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = fresh_name("restart");
    // 40,000 records at 100 µs each: about 4 s of work, a checkpoint every 50 ms.
    let mut child = quickstart(&schema, dir.path(), 100)
        .spawn()
        .expect("spawn quickstart");
    std::thread::sleep(Duration::from_millis(900));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the job ended before the restart: make it longer"
    );
    restart_server();
    // A second one, if the job is still at it (on a slow machine the first
    // restart can take seconds).
    std::thread::sleep(Duration::from_millis(700));
    if child.try_wait().expect("try_wait").is_none() {
        restart_server();
    }
    let (status, _, stderr) = finish(child, Duration::from_secs(90));
    assert!(status.success(), "run failed ({status}):\n{stderr}");
    for line in stderr.lines().filter(|l| l.contains("WARN")) {
        eprintln!("run log: {line}");
    }

    // Same output as an uninterrupted run, every chunk done exactly once.
    let reference = tempfile::tempdir().expect("tempdir");
    let (status, _, err) = finish(
        quickstart(&fresh_name("reference"), reference.path(), 0)
            .spawn()
            .expect("spawn reference"),
        Duration::from_secs(60),
    );
    assert!(status.success(), "reference run failed:\n{err}");
    let out = std::fs::read(dir.path().join("out.txt")).expect("output");
    assert!(
        out == std::fs::read(reference.path().join("out.txt")).expect("reference output"),
        "the output differs from an uninterrupted run's"
    );
    let audit = std::fs::read_to_string(dir.path().join("audit.txt")).expect("audit");
    let mut starts: Vec<u64> = audit
        .lines()
        .map(|l| {
            l.split(' ')
                .next()
                .and_then(|s| s.parse().ok())
                .expect("audit line")
        })
        .collect();
    starts.sort_unstable();
    let expected: Vec<u64> = (0..RECORDS).step_by(CHUNK as usize).collect();
    assert_eq!(starts, expected, "a chunk was processed twice or never");

    let pool = pg_common::admin_pool().await;
    let bytes: Vec<u8> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT envelope FROM \"{schema}\".spotbatch_checkpoints WHERE key = 'restart'"
    )))
    .fetch_one(&pool)
    .await
    .expect("checkpoint row");
    let checkpoint = Checkpoint::decode(&bytes).expect("checkpoint");
    assert_eq!(checkpoint.status, Status::Completed);
    assert_eq!(
        (checkpoint.counters.chunks, checkpoint.counters.items),
        (RECORDS / CHUNK, RECORDS)
    );
}
