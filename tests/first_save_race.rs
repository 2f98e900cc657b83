//! Two runners, as real processes, race to create a job's first checkpoint
//! on each store (file, S3 on SeaweedFS, Postgres): exactly one wins, and
//! the loser's error names the winner (its run id, host, pid and task).
//!
//! The race is made certain, not left to timing: each runner reads its ECS
//! task identity (`${ECS_CONTAINER_METADATA_URI_V4}/task`) after loading the
//! job's checkpoint and before its first save, and the local replica of that
//! endpoint answers neither until both have asked. Both have then found no
//! checkpoint, and both try to create it.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod pg_common;
mod s3_common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use s3_common::finish;
use spotbatch::postgres::PostgresStore;
use spotbatch::{CheckpointStore, FileStore, JobKey, Status};
use spotbatch_test_support::example_command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Barrier;

const LIMIT: Duration = Duration::from_secs(60);
const JOB: &str = "race";

/// The ECS task ARN the replica gives the runner that asks under `/v4/<name>`.
fn task_arn(name: &str) -> String {
    format!("arn:aws:ecs:eu-west-1:111122223333:task/race/{name}")
}

/// A replica of the ECS task metadata endpoint (the documented `/task`
/// response) that answers each runner only once `runners` have asked.
async fn gate(runners: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let all_asked = Arc::new(Barrier::new(runners));
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let all_asked = all_asked.clone();
            tokio::spawn(async move {
                let mut raw = Vec::new();
                let mut buf = [0u8; 1024];
                while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => raw.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&raw).into_owned();
                let path = text.split_whitespace().nth(1).unwrap_or("").to_owned();
                let name = path
                    .strip_prefix("/v4/")
                    .and_then(|p| p.strip_suffix("/task"))
                    .unwrap_or("unknown");
                let body = format!(
                    r#"{{"Cluster": "arn:aws:ecs:eu-west-1:111122223333:cluster/race",
                        "TaskARN": "{}", "Family": "race", "Revision": "1",
                        "DesiredStatus": "RUNNING", "KnownStatus": "RUNNING",
                        "AvailabilityZone": "eu-west-1a", "LaunchType": "FARGATE",
                        "Containers": []}}"#,
                    task_arn(name)
                );
                all_asked.wait().await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

/// The quickstart on `store`, as the ECS task `name` (its metadata under
/// `gate`), writing its output in `dir`.
fn runner(store: &str, dir: &std::path::Path, name: &str, gate: SocketAddr) -> Command {
    let mut cmd = example_command("quickstart");
    cmd.args(["--records", "2000", "--chunk", "100", "--work-us", "100"])
        .args(["--every-chunks", "5", "--lease", "60"])
        .args(["--store", store, "--job", JOB])
        .arg("--out")
        .arg(dir.join(format!("{name}.txt")))
        .env(
            "ECS_CONTAINER_METADATA_URI_V4",
            format!("http://{gate}/v4/{name}"),
        );
    s3_common::s3_env(&mut cmd, &s3_common::endpoint());
    cmd
}

/// Runs two runners at once on the store at `store` (`opened`, for the
/// test); checks that one completed, that the other lost the race to create
/// the first checkpoint (exit 73) and that its error names the winner as
/// the stored checkpoint records it.
async fn the_loser_names_the_winner(store: &str, opened: &dyn CheckpointStore) {
    let gate = gate(2).await;
    let dir = tempfile::tempdir().unwrap();
    let a = runner(store, dir.path(), "a", gate).spawn().unwrap();
    let b = runner(store, dir.path(), "b", gate).spawn().unwrap();
    let pids = [("a", a.id()), ("b", b.id())];
    let (a, b) = tokio::task::spawn_blocking(move || (finish(a, LIMIT), finish(b, LIMIT)))
        .await
        .unwrap();
    let mut codes = [a.0.code(), b.0.code()];
    codes.sort_unstable();
    assert_eq!(
        codes,
        [Some(0), Some(73)],
        "{store}: a:\n{}\nb:\n{}",
        a.2,
        b.2
    );
    let (winner, loser) = if a.0.code() == Some(0) {
        (pids[0], &b.2)
    } else {
        (pids[1], &a.2)
    };

    let stored = opened
        .load(&JobKey::new(JOB).unwrap())
        .await
        .unwrap()
        .expect("the winner's checkpoint");
    assert_eq!(stored.status, Status::Completed, "{store}");
    let writer = &stored.writer;
    assert_eq!(
        (writer.pid, writer.task.as_str()),
        (winner.1, task_arn(winner.0).as_str()),
        "{store}: the stored checkpoint is not the winner's"
    );
    // Found 1, or a later version when the winner saved again before the
    // loser's store re-read (S3 answers concurrent conditional writes with
    // 409, which the store retries after a pause).
    assert!(
        loser.contains("expected version none, found "),
        "{store}: the loser did not lose the race to create the first checkpoint:\n{loser}"
    );
    for (what, named) in [
        ("run id", writer.run_id.to_string()),
        ("host", format!("host {}", writer.host)),
        ("pid", format!("pid {}", writer.pid)),
        ("task", format!("task {}", writer.task)),
    ] {
        assert!(
            loser.contains(&named),
            "{store}: the loser's error does not name the winner's {what} ({named}):\n{loser}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loser_of_the_first_save_names_the_winner_on_every_store() {
    let file_dir = tempfile::tempdir().unwrap();
    let file = file_dir.path().join("ckpt");
    let bucket = s3_common::fresh_bucket_on(&s3_common::endpoint()).await;
    let pg = pg_common::with_schema(&pg_common::pg_url(), &pg_common::fresh_name("race"));
    // Applies the migrations before the runners start, so that neither waits on them.
    let pg_store = PostgresStore::connect(&pg).await.unwrap();
    let stores: [(String, Box<dyn CheckpointStore>); 3] = [
        (
            format!("file://{}", file.display()),
            Box::new(FileStore::new(&file)),
        ),
        (
            format!("s3://{bucket}/ckpt"),
            Box::new(s3_common::store_on(&s3_common::endpoint(), &bucket, "ckpt").await),
        ),
        (pg, Box::new(pg_store)),
    ];
    for (url, opened) in &stores {
        the_loser_names_the_winner(url, &**opened).await;
    }
}
