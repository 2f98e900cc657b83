//! S3Store against a real S3 server (SeaweedFS, started by scripts/test).

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod s3_common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use s3_common::{fresh_store, PrivateServer};
use spotbatch::conformance::{Capabilities, Corrupter};
use spotbatch::s3::{S3Store, S3StoreBuilder};
use spotbatch::{
    BoxError, Checkpoint, CheckpointStore, Error, JobKey, Lease, Listing, RunRecord, Status,
    StoreError, Summary, Writer,
};

fn key(s: &str) -> JobKey {
    JobKey::new(s).unwrap()
}

fn checkpoint(job: &str, version: u64) -> Checkpoint {
    let mut c = Checkpoint::new(key(job), Writer::this_process());
    c.version = version;
    c.cursor = version.to_le_bytes().to_vec();
    c
}

async fn raw_put(store: &S3Store, object: &str, bytes: Vec<u8>) {
    store
        .client()
        .put_object()
        .bucket(store.bucket())
        .key(object)
        .body(ByteStream::from(bytes))
        .send()
        .await
        .unwrap();
}

async fn raw_get(store: &S3Store, object: &str) -> Vec<u8> {
    let out = store
        .client()
        .get_object()
        .bucket(store.bucket())
        .key(object)
        .send()
        .await
        .unwrap();
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

/// Damages objects with unconditional `PutObject`s (without the store's
/// metadata) through the store's own client.
struct RawObjects(S3Store);

#[spotbatch::async_trait]
impl Corrupter for RawObjects {
    async fn stored(&self, key: &JobKey) -> Result<Option<Vec<u8>>, BoxError> {
        let store = &self.0;
        let got = store
            .client()
            .get_object()
            .bucket(store.bucket())
            .key(store.object_key(key))
            .send()
            .await;
        match got {
            Ok(out) => Ok(Some(out.body.collect().await?.into_bytes().to_vec())),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
            Err(e) => Err(DisplayErrorContext(e).to_string().into()),
        }
    }

    async fn overwrite(&self, key: &JobKey, bytes: &[u8]) -> Result<(), BoxError> {
        let store = &self.0;
        store
            .client()
            .put_object()
            .bucket(store.bucket())
            .key(store.object_key(key))
            .body(ByteStream::from(bytes.to_vec()))
            .send()
            .await
            .map_err(|e| DisplayErrorContext(e).to_string())?;
        Ok(())
    }
}

async fn run_conformance(store: S3Store) {
    let raw = RawObjects(store.clone());
    // list reads object metadata, not bodies (see S3Store::list).
    let capabilities = Capabilities::new().corrupter(&raw).lists_from_metadata();
    let skipped = spotbatch::conformance::run_all(Arc::new(store), capabilities).await;
    assert!(skipped.is_empty(), "{skipped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passes_the_conformance_suite() {
    run_conformance(fresh_store("conformance-run").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passes_the_conformance_suite_without_a_prefix() {
    let store = fresh_store("").await;
    assert_eq!(store.location(), format!("s3://{}/", store.bucket()));
    run_conformance(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_savers_one_winner_per_version() {
    let store = fresh_store("race16").await;
    spotbatch::conformance::concurrent_savers_one_winner_per_version(Arc::new(store), 16, 4).await;
}

/// Savers in separate stores (no shared ETag memory, as in separate tasks)
/// race too: each must read the ETag before its conditional write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn savers_in_separate_processes_one_winner_per_version() {
    let first = fresh_store("separate").await;
    let k = key("separate/race");
    first.save(&checkpoint(k.as_str(), 1), None).await.unwrap();
    let mut tasks = Vec::new();
    for saver in 0..8u8 {
        let store =
            s3_common::store_on(&s3_common::endpoint(), first.bucket(), first.prefix()).await;
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            while won.len() < 3 {
                // No load: the store must find the ETag of the version it is told.
                let current = first_version(&store, &k).await;
                let mut next = checkpoint(k.as_str(), current + 1);
                next.cursor = vec![saver];
                match store.save(&next, Some(current)).await {
                    Ok(()) => won.push(next.version),
                    Err(StoreError::Conflict { .. }) => {}
                    Err(e) => panic!("saver {saver}: {e}"),
                }
            }
            won
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (2..=25).collect::<Vec<u64>>());
}

/// The version through a separate store, so `store` learns no ETag from it.
async fn first_version(store: &S3Store, k: &JobKey) -> u64 {
    let bytes = raw_get(store, &store.object_key(k)).await;
    Checkpoint::decode(&bytes).unwrap().version
}

#[tokio::test]
async fn objects_hold_the_envelope_and_metadata() {
    let store = fresh_store("layout/ckpt/").await;
    assert_eq!(store.prefix(), "layout/ckpt/");
    let mut c = checkpoint("etl/2026-11-24", 1);
    c.status = Status::Interrupted {
        source: "SIGTERM".into(),
    };
    c.counters.chunks = 12;
    store.save(&c, None).await.unwrap();
    let object = store.object_key(&c.job);
    assert_eq!(object, "layout/ckpt/etl%2F2026-11-24.ckpt");
    assert_eq!(raw_get(&store, &object).await, c.encode());
    let head = store
        .client()
        .head_object()
        .bucket(store.bucket())
        .key(&object)
        .send()
        .await
        .unwrap();
    // One header: format, version, status, update time, chunks, job, detail.
    let meta = head.metadata().unwrap();
    assert_eq!(meta.len(), 1, "{meta:?}");
    assert_eq!(
        meta.get("spotbatch").map(String::as_str),
        Some(
            format!(
                "2 1 interrupted {} 12 etl%2F2026-11-24 SIGTERM",
                c.updated_ms
            )
            .as_str()
        )
    );
}

#[tokio::test]
async fn lease_and_run_history_round_trip() {
    let store = fresh_store("lease").await;
    let mut c = checkpoint("leased", 1);
    c.lease = Some(Lease::new(c.writer.run_id, 1_900_000_000_000));
    c.history = vec![RunRecord::started(&c.writer, 1_800_000_000_000)];
    store.save(&c, None).await.unwrap();
    assert_eq!(store.load(&c.job).await.unwrap(), Some(c.clone()));
    let mut next = c.clone();
    next.version = 2;
    next.lease = None;
    store.save(&next, Some(1)).await.unwrap();
    assert_eq!(store.load(&c.job).await.unwrap(), Some(next));
}

#[tokio::test]
async fn corrupt_object_is_named_and_left_untouched() {
    let store = fresh_store("corrupt").await;
    let c = checkpoint("job", 1);
    store.save(&c, None).await.unwrap();
    let object = store.object_key(&c.job);
    let mut bytes = c.encode();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    raw_put(&store, &object, bytes.clone()).await;

    // A fresh store, as a new task would have.
    let fresh = s3_common::store_on(&s3_common::endpoint(), store.bucket(), store.prefix()).await;
    let err = fresh.load(&c.job).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{text}");
    let url = format!("s3://{}/{object}", store.bucket());
    assert!(
        text.contains(&url) && text.contains("\"job\"") && text.contains("checksum"),
        "{text}"
    );
    let mut next = c.clone();
    next.version = 2;
    let err = fresh.save(&next, Some(1)).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert_eq!(
        raw_get(&store, &object).await,
        bytes,
        "the corrupt object changed"
    );
    // Its metadata (written by raw_put: none) does not tell: listed from the body.
    let listed = fresh.list().await.unwrap();
    assert!(
        matches!(&listed[..], [Listing::Unreadable { key, reason }] if key == &url && reason.contains("checksum")),
        "{listed:?}"
    );
}

#[tokio::test]
async fn another_jobs_object_is_refused() {
    let store = fresh_store("wrong-job").await;
    let other = checkpoint("other", 1);
    raw_put(&store, &store.object_key(&key("mine")), other.encode()).await;
    let err = store.load(&key("mine")).await.unwrap_err();
    assert!(
        err.to_string().contains("belongs to job \"other\""),
        "{err}"
    );
}

/// A save whose request reached S3 but whose answer was lost (an error was
/// returned) must not fence the same run off on its next attempt.
#[tokio::test]
async fn the_runs_own_earlier_attempt_is_not_a_conflict() {
    let store = fresh_store("own-attempt").await;
    let v1 = checkpoint("job", 1);
    store.save(&v1, None).await.unwrap();
    // Version 2 lands through another path (as if its answer was lost)...
    let mut landed = v1.clone();
    landed.version = 2;
    landed.cursor = b"first attempt".to_vec();
    raw_put(&store, &store.object_key(&v1.job), landed.encode()).await;
    // ...so this run, still believing version 1 is stored, writes version 2 again.
    let mut retry = landed.clone();
    retry.cursor = b"second attempt".to_vec();
    store.save(&retry, Some(1)).await.unwrap();
    assert_eq!(store.load(&v1.job).await.unwrap(), Some(retry.clone()));

    // Another run's version 3 is a conflict, as ever.
    let mut theirs = checkpoint("job", 3);
    theirs.writer = Writer::this_process();
    raw_put(&store, &store.object_key(&v1.job), theirs.encode()).await;
    let mut mine = retry.clone();
    mine.version = 3;
    let err = store.save(&mine, Some(2)).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: Some(2),
                found: Some(3),
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn list_reads_long_keys_and_long_messages_from_the_body() {
    let store = fresh_store("list-long").await;
    let long_key = "ü".repeat(400);
    let mut a = checkpoint(&long_key, 1);
    a.status = Status::Failed {
        message: "e".repeat(1000),
    };
    store.save(&a, None).await.unwrap();
    let mut b = checkpoint("short", 1);
    b.status = Status::Interrupted {
        source: "SIGTERM".into(),
    };
    store.save(&b, None).await.unwrap();
    let listed = store.list().await.unwrap();
    let summaries: Vec<_> = listed
        .iter()
        .map(|l| match l {
            Listing::Checkpoint(s) => (s.job.to_string(), s.status.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        summaries,
        vec![
            ("short".into(), b.status.clone()),
            (long_key, a.status.clone())
        ]
    );
}

#[tokio::test]
async fn list_heads_many_objects_in_key_order() {
    let store = fresh_store("many").await;
    // More objects than HeadObject requests in flight (16).
    for i in 0..40 {
        store
            .save(&checkpoint(&format!("job-{i:02}"), 1), None)
            .await
            .unwrap();
    }
    let listed = store.list().await.unwrap();
    let jobs: Vec<String> = listed
        .iter()
        .map(|l| match l {
            Listing::Checkpoint(s) => s.job.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    let expected: Vec<String> = (0..40).map(|i| format!("job-{i:02}")).collect();
    assert_eq!(jobs, expected);
}

/// `list` takes what it can from the metadata alone, in today's format and
/// in the one objects written by earlier versions carry: these objects'
/// bodies are not checkpoints, so a listing that read them would say so.
#[tokio::test]
async fn list_reads_both_metadata_formats_without_the_body() {
    let store = fresh_store("formats").await;
    let v1: HashMap<String, String> = [
        ("spotbatch-format", "1"),
        ("spotbatch-job", "old%2Fjob"),
        ("spotbatch-version", "3"),
        ("spotbatch-status", "failed"),
        ("spotbatch-detail", "disk%20full"),
        ("spotbatch-updated-ms", "1700000000000"),
        ("spotbatch-chunks", "9"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let v2 = HashMap::from([(
        "spotbatch".to_owned(),
        "2 7 interrupted 1700000000001 4 new%2Fjob SIGTERM".to_owned(),
    )]);
    for (job, meta) in [("old/job", v1), ("new/job", v2)] {
        store
            .client()
            .put_object()
            .bucket(store.bucket())
            .key(store.object_key(&key(job)))
            .set_metadata(Some(meta))
            .body(ByteStream::from_static(b"not a checkpoint"))
            .send()
            .await
            .unwrap();
    }
    let listed = store.list().await.unwrap();
    let summaries: Vec<Summary> = listed
        .into_iter()
        .map(|l| match l {
            Listing::Checkpoint(s) => s,
            other => panic!("read from the body: {other:?}"),
        })
        .collect();
    assert_eq!(
        summaries,
        [
            Summary::new(
                key("new/job"),
                7,
                Status::Interrupted {
                    source: "SIGTERM".into()
                },
                1_700_000_000_001,
                4
            ),
            Summary::new(
                key("old/job"),
                3,
                Status::Failed {
                    message: "disk full".into()
                },
                1_700_000_000_000,
                9
            ),
        ]
    );
}

#[tokio::test]
async fn bad_urls_and_settings_are_config_errors_naming_them() {
    for (url, says) in [
        ("s3:/bucket", "expected s3://bucket"),
        ("s3://Bad_Bucket/x", "not a valid bucket name"),
        ("s3://bucket/a//b", "segment"),
    ] {
        let err = S3Store::from_url(url).await.unwrap_err();
        assert!(
            matches!(err, Error::Config(_)) && err.to_string().contains(url),
            "{url}: {err}"
        );
        assert!(err.to_string().contains(says), "{url}: {err}");
    }
    let err = S3StoreBuilder::new("b", "x").build().await.unwrap_err();
    assert!(err.to_string().contains("s3://b/x"), "{err}");
}

/// An unreachable server is an I/O error (transient for the runner), quickly.
#[tokio::test]
async fn an_unreachable_server_is_a_transient_error() {
    let mut server = PrivateServer::start().await;
    let endpoint = server.endpoint();
    let bucket = s3_common::fresh_bucket_on(&endpoint).await;
    let store = s3_common::store_on(&endpoint, &bucket, "down").await;
    store.save(&checkpoint("job", 1), None).await.unwrap();
    server.stop();
    let started = Instant::now();
    let err = store
        .save(&checkpoint("job", 2), Some(1))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let text = err.to_string();
    assert!(text.contains(&format!("s3://{bucket}/down/")), "{text}");
    assert!(
        text.contains("PutObject") && !text.contains("Response {"),
        "an error for people, not a dump: {text}"
    );
    println!("unreachable server: {text}");
    server.resume().await;
    // A restarted SeaweedFS may answer 500 for a moment while its volumes come back.
    let started = Instant::now();
    loop {
        match store.save(&checkpoint("job", 2), Some(1)).await {
            Ok(()) => break,
            Err(e) if e.is_transient() && started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("save after the restart: {e}"),
        }
    }
}

/// Save latency against the local SeaweedFS, printed for the record
/// (`cargo test -- --nocapture`); asserts only a generous bound.
#[tokio::test]
async fn save_latency() {
    let store = fresh_store("latency").await;
    let k = "latency";
    let mut c = checkpoint(k, 1);
    c.state = vec![7; 1024];
    let started = Instant::now();
    store.save(&c, None).await.unwrap();
    let create = started.elapsed();
    let mut times = Vec::new();
    for v in 2..=51 {
        let mut next = c.clone();
        next.version = v;
        let t = Instant::now();
        store.save(&next, Some(v - 1)).await.unwrap();
        times.push(t.elapsed());
    }
    times.sort_unstable();
    let fresh = s3_common::store_on(&s3_common::endpoint(), store.bucket(), store.prefix()).await;
    let mut next = c.clone();
    next.version = 52;
    let t = Instant::now();
    fresh.save(&next, Some(51)).await.unwrap();
    let unknown_etag = t.elapsed();
    println!(
        "save latency (1 KiB state): create {create:?}; update p50 {:?}, p90 {:?}, max {:?}; \
         update without a known ETag (GET + PUT) {unknown_etag:?}",
        times[times.len() / 2],
        times[times.len() * 9 / 10],
        times[times.len() - 1]
    );
    assert!(times[times.len() / 2] < Duration::from_secs(1));
}

/// SSE-S3 requested on every save (SeaweedFS implements it).
#[tokio::test]
async fn sse_s3_is_requested_and_round_trips() {
    let plain = fresh_store("sse").await;
    let store = plain
        .clone()
        .with_server_side_encryption(spotbatch::s3::ServerSideEncryption::S3);
    let c = checkpoint("encrypted", 1);
    store.save(&c, None).await.unwrap();
    let head = store
        .client()
        .head_object()
        .bucket(store.bucket())
        .key(store.object_key(&c.job))
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.server_side_encryption(),
        Some(&aws_sdk_s3::types::ServerSideEncryption::Aes256)
    );
    assert_eq!(store.load(&c.job).await.unwrap(), Some(c.clone()));
    let mut next = c.clone();
    next.version = 2;
    store.save(&next, Some(1)).await.unwrap();
    assert_eq!(plain.load(&c.job).await.unwrap(), Some(next));
}
