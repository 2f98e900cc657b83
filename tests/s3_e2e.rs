//! End-to-end: the examples as real processes against a real S3 server,
//! stopped by real signals, with the server itself stopped and started.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod s3_common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use s3_common::{finish, signal, stderr, PrivateServer, Quickstart, Tail};
use spotbatch::{CheckpointStore, JobKey, Status};

const LIMIT: Duration = Duration::from_secs(60);

/// The output of an uninterrupted run with the same parameters.
fn reference_output(endpoint: &str, bucket: &str, records: u64, chunk: u64) -> Vec<u8> {
    let mut reference = Quickstart::new(endpoint, bucket, records, chunk, 0);
    reference.job = format!("reference-{}", uuid::Uuid::new_v4().simple());
    let out = reference.run();
    assert!(
        out.status.success(),
        "reference run failed: {}",
        stderr(&out)
    );
    std::fs::read(reference.out()).expect("reference output")
}

async fn stored(endpoint: &str, bucket: &str, job: &str) -> spotbatch::Checkpoint {
    let store = s3_common::store_on(endpoint, bucket, "ckpt").await;
    store
        .load(&JobKey::new(job).unwrap())
        .await
        .expect("load")
        .expect("a checkpoint")
}

/// Waits until the job's checkpoint can be read again: a restarted SeaweedFS
/// answers ListBuckets before its volumes are back (GETs give 500 meanwhile).
async fn wait_readable(endpoint: &str, bucket: &str, job: &str) {
    let store = s3_common::store_on(endpoint, bucket, "ckpt").await;
    let key = JobKey::new(job).unwrap();
    let started = Instant::now();
    while let Err(e) = store.load(&key).await {
        assert!(
            started.elapsed() < LIMIT,
            "checkpoint unreadable after restart: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The version of the last "checkpoint saved" line in a log.
fn last_saved_version(log: &str) -> Option<u64> {
    log.lines()
        .rev()
        .filter(|l| l.contains("checkpoint saved"))
        .find_map(|l| {
            let at = l.find("version=")? + "version=".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
}

/// Random SIGTERMs and SIGKILLs: the output equals an uninterrupted run's,
/// every chunk is done, and the stored checkpoint ends completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_with_s3_under_random_sigterm_and_sigkill_gives_identical_output() {
    let endpoint = s3_common::endpoint();
    let bucket = s3_common::fresh_bucket_on(&endpoint).await;
    let (records, chunk) = (40_000, 100);
    let mut job = Quickstart::new(&endpoint, &bucket, records, chunk, 20);
    job.every_chunks = 10;
    let mut rng = fastrand::Rng::with_seed(0x5eed_0053);
    let (mut terms, mut kills) = (0, 0);
    for run in 0.. {
        assert!(run < 200, "no completion after {run} runs");
        let child = job.spawn();
        std::thread::sleep(Duration::from_millis(rng.u64(60..300)));
        // Alternate, so that both kinds land whatever the timing.
        let sig = if run % 2 == 0 {
            libc::SIGTERM
        } else {
            libc::SIGKILL
        };
        signal(&child, sig);
        let (status, _, err) = finish(child, LIMIT);
        match (status.code(), status.signal()) {
            (Some(0), _) => break,
            (Some(75), _) => terms += 1,
            // SIGKILL, or a SIGTERM before the runner installed its handler.
            (None, Some(s)) if s == sig => kills += 1,
            other => panic!("run {run}: unexpected exit {other:?}\n{err}"),
        }
    }
    println!("{terms} graceful stops, {kills} kills before completion");
    assert!(
        terms >= 2 && kills >= 2,
        "{terms} SIGTERMs, {kills} SIGKILLs landed"
    );
    assert_eq!(
        std::fs::read(job.out()).unwrap(),
        reference_output(&endpoint, &bucket, records, chunk),
        "output differs from an uninterrupted run's"
    );
    let mut starts = job.audited_starts();
    starts.sort_unstable();
    starts.dedup();
    assert_eq!(
        starts,
        (0..records).step_by(chunk as usize).collect::<Vec<_>>()
    );
    let c = stored(&endpoint, &bucket, "e2e").await;
    assert_eq!(c.status, Status::Completed);
    assert_eq!(
        (c.counters.chunks, c.counters.items),
        (records / chunk, records)
    );
}

/// The server is killed mid-run and started again: the runner warns about the
/// periodic checkpoints it could not save, goes on, and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_mid_run_and_started_again_the_run_completes() {
    let mut server = PrivateServer::start().await;
    let endpoint = server.endpoint();
    let bucket = s3_common::fresh_bucket_on(&endpoint).await;
    let (records, chunk) = (4_000, 100);
    let mut job = Quickstart::new(&endpoint, &bucket, records, chunk, 1_000); // 0.1 s a chunk
    job.every_chunks = 2;
    let mut child = job.spawn();
    let tail = Tail::of(&mut child);
    s3_common::eventually("two checkpoints", LIMIT, || {
        tail.count("checkpoint saved") >= 2
    })
    .await;
    server.stop();
    let stopped = Instant::now();
    s3_common::eventually("a failed periodic checkpoint", LIMIT, || {
        tail.count("periodic checkpoint failed") >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.resume().await;
    let down = stopped.elapsed();
    let (status, _) = s3_common::wait_within(&mut child, LIMIT);
    let log = tail.into_text();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("periodic checkpoint failed"), "{log}");
    let after = log
        .split("periodic checkpoint failed")
        .last()
        .unwrap_or_default();
    assert!(
        after.contains("checkpoint saved"),
        "no checkpoint after the restart:\n{log}"
    );
    let c = stored(&endpoint, &bucket, "e2e").await;
    assert_eq!(c.status, Status::Completed);
    assert_eq!(c.counters.items, records);
    drop(server);
    assert_eq!(
        std::fs::read(job.out()).unwrap(),
        reference_output(
            &s3_common::endpoint(),
            &s3_common::fresh_bucket_on(&s3_common::endpoint()).await,
            records,
            chunk
        )
    );
    println!("server down for {down:?}; the run completed");
}

/// The server is down when SIGTERM comes: the runner retries the final
/// checkpoint within the grace period, then exits 69 saying it was not saved
/// and which version the next run resumes from; the next run does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_at_shutdown_exits_69_naming_the_version_to_resume_from() {
    let mut server = PrivateServer::start().await;
    let endpoint = server.endpoint();
    let bucket = s3_common::fresh_bucket_on(&endpoint).await;
    let (records, chunk) = (100_000, 100);
    let mut job = Quickstart::new(&endpoint, &bucket, records, chunk, 200); // 20 ms a chunk
    job.every_chunks = 5;
    job.grace_secs = 3.0;
    let mut child = job.spawn();
    let tail = Tail::of(&mut child);
    s3_common::eventually("three checkpoints", LIMIT, || {
        tail.count("checkpoint saved") >= 3
    })
    .await;
    server.stop();
    // Let a periodic checkpoint fail first, so the version to resume from is settled.
    s3_common::eventually("a failed periodic checkpoint", LIMIT, || {
        tail.count("periodic checkpoint failed") >= 1
    })
    .await;
    let resume_from = last_saved_version(&tail.text()).expect("a saved version");
    let sent = Instant::now();
    signal(&child, libc::SIGTERM);
    let (status, _) = s3_common::wait_within(&mut child, LIMIT);
    let took = sent.elapsed();
    let log = tail.into_text();
    assert_eq!(status.code(), Some(69), "{log}");
    assert!(
        took < Duration::from_secs(4),
        "exit took {took:?}, grace is 3 s\n{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("was not saved"))
        .unwrap_or_else(|| panic!("no 'was not saved' line:\n{log}"));
    // The final save was tried until the grace period ran out: retried by
    // the runner, or still inside the SDK's own retries (their backoff can
    // take the whole 2.25 s drain on a loaded machine).
    assert!(
        log.contains("final checkpoint failed; retrying")
            || line.contains("the grace period ran out"),
        "{log}"
    );
    assert!(
        line.contains(&format!("the next run resumes from version {resume_from}")),
        "{line}"
    );

    server.resume().await;
    wait_readable(&endpoint, &bucket, "e2e").await;
    job.work_us = 0;
    let out = job.run();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("resuming from checkpoint") && log.contains(&format!("version={resume_from}")),
        "{log}"
    );
    let c = stored(&endpoint, &bucket, "e2e").await;
    assert_eq!(c.status, Status::Completed);
    drop(server);
    let shared = s3_common::endpoint();
    let reference_bucket = s3_common::fresh_bucket_on(&shared).await;
    assert_eq!(
        std::fs::read(job.out()).unwrap(),
        reference_output(&shared, &reference_bucket, records, chunk)
    );
}

fn etl(endpoint: &str, bucket: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(s3_common::example_bin("s3_etl"));
    cmd.args([
        "--bucket",
        bucket,
        "--page-size",
        "5",
        "--interrupted-exit-code",
        "75",
    ])
    .args(extra)
    .env("RUST_LOG", "info")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    s3_common::s3_env(&mut cmd, endpoint);
    cmd
}

async fn objects_under(store: &spotbatch::s3::S3Store, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let client = store.client();
    let mut out = BTreeMap::new();
    let mut token = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(store.bucket())
            .prefix(prefix)
            .set_continuation_token(token.take())
            .send()
            .await
            .unwrap();
        for key in page.contents().iter().filter_map(|o| o.key()) {
            let body = client
                .get_object()
                .bucket(store.bucket())
                .key(key)
                .send()
                .await
                .unwrap()
                .body
                .collect()
                .await
                .unwrap()
                .into_bytes()
                .to_vec();
            out.insert(key[prefix.len()..].to_owned(), body);
        }
        match page.next_continuation_token() {
            Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
            _ => return out,
        }
    }
}

/// The ETL example, killed (SIGKILL) and stopped (SIGTERM) along the way,
/// ends with exactly one correct result per input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_etl_rerun_after_interruptions_has_every_output_once() {
    let endpoint = s3_common::endpoint();
    let bucket = s3_common::fresh_bucket_on(&endpoint).await;
    let inputs = 60;
    let made = etl(&endpoint, &bucket, &["--make-inputs", &inputs.to_string()])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));

    let work = ["--work-ms", "15"]; // 60 × 15 ms ≈ 0.9 s of work
    let child = etl(&endpoint, &bucket, &work).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    signal(&child, libc::SIGKILL);
    let (status, _, err) = finish(child, LIMIT);
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{err}");

    let child = etl(&endpoint, &bucket, &work).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    signal(&child, libc::SIGTERM);
    let (status, _, err) = finish(child, LIMIT);
    assert_eq!(status.code(), Some(75), "{err}");
    assert!(err.contains("resuming from checkpoint"), "{err}");

    let out = etl(&endpoint, &bucket, &work).output().unwrap();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("resuming from checkpoint"), "{log}");

    let store = s3_common::store_on(&endpoint, &bucket, "etl/checkpoints").await;
    let inputs_found = objects_under(&store, "etl/input/").await;
    let outputs = objects_under(&store, "etl/output/").await;
    assert_eq!(inputs_found.len(), inputs);
    assert_eq!(
        outputs.keys().collect::<Vec<_>>(),
        inputs_found.keys().collect::<Vec<_>>(),
        "not exactly one result per input"
    );
    for (name, input) in &inputs_found {
        let mut expected = format!("{name}\t{} bytes\n", input.len()).into_bytes();
        expected.extend(input.to_ascii_uppercase());
        assert_eq!(&outputs[name], &expected, "result for {name}");
    }
    let c = store
        .load(&JobKey::new("s3-etl").unwrap())
        .await
        .unwrap()
        .expect("checkpoint");
    assert_eq!(c.status, Status::Completed);
    assert_eq!(c.counters.items, inputs as u64, "items counted once each");
}
