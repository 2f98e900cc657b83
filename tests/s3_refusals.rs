//! An S3 store that refuses for good (a bucket that does not exist, wrong
//! credentials) ends the run at once with exit 74 and a message naming the
//! bucket, the object and S3's answer; the last checkpoint stays. Against
//! the SeaweedFS server scripts/test starts, which checks signatures against
//! the identity it was started with (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`).

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod s3_common;

use std::process::{Command, ExitStatus};
use std::time::Duration;

use s3_common::{finish, Quickstart};
use spotbatch::{CheckpointStore, JobKey};

/// Far more than a refused run takes, far less than the 30 s of retries a
/// store that may come back gets.
const QUICK: Duration = Duration::from_secs(10);
/// Past the retries, so that a run that retries fails the test on its exit
/// code and time rather than being killed.
const LIMIT: Duration = Duration::from_secs(90);

/// The run exited 74 at once, its failure naming each of `names`.
fn assert_refused(status: ExitStatus, took: Duration, log: &str, names: &[&str]) {
    assert_eq!(status.code(), Some(74), "{status} after {took:?}:\n{log}");
    assert!(
        took < QUICK,
        "took {took:?}: retried an error that will not pass\n{log}"
    );
    let failed = log
        .lines()
        .find(|l| l.contains("run failed"))
        .unwrap_or_else(|| panic!("no 'run failed' line:\n{log}"));
    for name in names.iter().chain(&["retrying cannot help"]) {
        assert!(failed.contains(name), "{name:?} is not named in: {failed}");
    }
    assert!(!log.contains("yet; retrying"), "retried:\n{log}");
}

async fn run(cmd: Command) -> (ExitStatus, Duration, String) {
    let child = { cmd }.spawn().unwrap();
    tokio::task::spawn_blocking(move || finish(child, LIMIT))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_does_not_exist_is_refused_at_once() {
    let bucket = format!(
        "sbt-missing-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let q = Quickstart::new(&s3_common::endpoint(), &bucket, 1000, 10, 0);
    let (status, took, log) = run(q.command()).await;
    assert_refused(
        status,
        took,
        &log,
        &[&format!("s3://{bucket}/ckpt/e2e.ckpt"), "NoSuchBucket"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused_at_once_and_the_checkpoint_stays() {
    let endpoint = s3_common::endpoint();
    let bucket = s3_common::fresh_bucket_on(&endpoint).await;
    let mut q = Quickstart::new(&endpoint, &bucket, 100_000, 10, 1000);
    q.every_chunks = 1;
    let store = s3_common::store_on(&endpoint, &bucket, "ckpt/").await;
    let key = JobKey::new(&q.job).unwrap();
    let first = q.spawn();
    let started = std::time::Instant::now();
    while store
        .load(&key)
        .await
        .unwrap()
        .is_none_or(|c| c.counters.chunks == 0)
    {
        assert!(started.elapsed() < LIMIT, "no chunk was checkpointed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s3_common::signal(&first, libc::SIGTERM);
    let (status, _, log) = tokio::task::spawn_blocking(move || finish(first, LIMIT))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(75), "{log}");
    let before = store.load(&key).await.unwrap().unwrap();

    for (access_key, secret, answer) in [
        (None, "wrong-secret", "SignatureDoesNotMatch"),
        (Some("no-such-key"), "wrong-secret", "InvalidAccessKeyId"),
    ] {
        let mut cmd = q.command();
        cmd.env("AWS_SECRET_ACCESS_KEY", secret);
        if let Some(access_key) = access_key {
            cmd.env("AWS_ACCESS_KEY_ID", access_key);
        }
        let (status, took, log) = run(cmd).await;
        assert_refused(
            status,
            took,
            &log,
            &[
                &format!("s3://{bucket}/ckpt/e2e.ckpt"),
                answer,
                "access denied",
            ],
        );
        assert!(!log.contains(secret), "the secret shows:\n{log}");
        assert_eq!(store.load(&key).await.unwrap().unwrap(), before);
    }
}
