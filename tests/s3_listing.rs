//! The S3 listing source against a real S3 server (SeaweedFS, started by
//! scripts/test): thousands of keys, keys that need URL encoding, batches
//! by count and by bytes, and resuming from any batch's cursor in a new
//! source (as a new process would): every object exactly once, in the
//! server's order.
//!
//! Resuming after SIGKILL mid-chunk, through real processes: tests/s3_jsonl.rs.

#![allow(unreachable_pub, clippy::unwrap_used)]

mod s3_common;
use s3_common::Bucket;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use spotbatch::prelude::*;
use spotbatch::s3::{aws_sdk_s3, ListedObject, ListingCursor, ListingSource};
use spotbatch::source::{Batch, Handler, Limit, Source, SourceJob};
use spotbatch::MemoryStore;
use tokio::task::JoinSet;

/// Keys that XML 1.0 cannot carry or that URL encoding changes, and keys
/// whose directory order (SeaweedFS) differs from their byte order.
const AWKWARD: &[&str] = &[
    "in/a b.jsonl",
    "in/a+b.jsonl",
    "in/a%2Fb.jsonl",
    "in/a/b.jsonl",
    "in/a\tb.jsonl",
    "in/c\u{1}d.jsonl",
    "in/e\u{7f}.jsonl",
    "in/f&<>\"'.jsonl",
    "in/q?x=1#frag.jsonl",
    "in/~tilde=eq;semi.jsonl",
    "in/ünïcödé/日本語.jsonl",
    "in/é€.jsonl",
    "in/Z.jsonl",
];

impl Bucket {
    /// Puts small objects, 16 at a time; the body of each is its key.
    async fn put_all(&self, keys: &[String]) {
        let mut tasks = JoinSet::new();
        for key in keys {
            while tasks.len() >= 16 {
                tasks.join_next().await.unwrap().unwrap();
            }
            let (client, bucket, key) = (self.client.clone(), self.name.clone(), key.clone());
            tasks.spawn(async move {
                client
                    .put_object()
                    .bucket(&bucket)
                    .key(&key)
                    .body(ByteStream::from(key.clone().into_bytes()))
                    .send()
                    .await
                    .unwrap_or_else(|e| {
                        panic!("put {key:?}: {}", aws_sdk_s3::error::DisplayErrorContext(e))
                    });
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    }

    fn source(&self, prefix: &str) -> ListingSource {
        ListingSource::new(self.client.clone(), &self.name, prefix)
    }
}

/// 2,500 keys under `in/`: numbered ones, in a few "directories", and the awkward ones.
fn keys() -> Vec<String> {
    let mut keys: Vec<String> = (0..2487)
        .map(|i| format!("in/part-{}/{i:05}.jsonl", i % 3))
        .collect();
    keys.extend(AWKWARD.iter().map(|k| (*k).to_owned()));
    keys
}

/// Reads the whole listing with `limit`, each batch from a new source (as a
/// new process resuming from the batch's cursor would), or from one.
async fn read_all(
    bucket: &Bucket,
    limit: Limit,
    fresh_each_time: bool,
    page_size: u16,
) -> Vec<Vec<ListedObject>> {
    let mut batches = Vec::new();
    let mut cursor = ListingCursor::default();
    let mut source = bucket.source("in/").page_size(page_size);
    loop {
        if fresh_each_time {
            source = bucket.source("in/").page_size(page_size);
        }
        let Some(batch) = source.next_batch(&cursor, limit).await.unwrap() else {
            break;
        };
        let (records, next) = batch.into_parts();
        assert!(!records.is_empty());
        assert_eq!(next.last_key(), Some(records.last().unwrap().key.as_str()));
        cursor = next;
        batches.push(records);
    }
    batches
}

fn flat(batches: &[Vec<ListedObject>]) -> Vec<String> {
    batches.iter().flatten().map(|o| o.key.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_keys_each_once_in_the_servers_order_resumed_from_any_cursor() {
    let bucket = Bucket::fresh().await;
    let written = keys();
    bucket.put_all(&written).await;
    // Something beside the prefix, not to be listed.
    bucket
        .put_all(&["inx/other".to_owned(), "out/x".to_owned()])
        .await;

    let in_one_source = flat(&read_all(&bucket, Limit::records(250), false, 1000).await);
    let mut unique = HashSet::new();
    for key in &in_one_source {
        assert!(unique.insert(key.clone()), "{key:?} listed twice");
    }
    let expected: HashSet<String> = written.iter().cloned().collect();
    assert_eq!(unique, expected, "every key under the prefix, decoded");

    // One object per batch, across pages of 333 keys: the same keys, in the same order.
    let one_by_one = read_all(&bucket, Limit::records(1), false, 333).await;
    assert!(one_by_one.iter().all(|b| b.len() == 1));
    assert_eq!(flat(&one_by_one), in_one_source);

    // Batches of 7, each from a new source given the last batch's cursor:
    // the same again.
    assert_eq!(
        flat(&read_all(&bucket, Limit::records(7), true, 50).await),
        in_one_source
    );

    // The order is the server's: that of a plain ListObjectsV2 (SeaweedFS
    // lists "in/a/b.jsonl" before "in/a\tb.jsonl", AWS the other way round).
    let awkward: Vec<&String> = in_one_source
        .iter()
        .filter(|k| AWKWARD.contains(&k.as_str()))
        .collect();
    assert_eq!(awkward.len(), AWKWARD.len(), "{awkward:?}");
}

#[tokio::test]
async fn batches_by_bytes_hold_at_least_one_object() {
    let bucket = Bucket::fresh().await;
    // Bodies are the keys: 20 to 30 bytes each.
    let keys: Vec<String> = (0..40)
        .map(|i| format!("in/{i:03}-{}", "x".repeat(i % 11)))
        .collect();
    bucket.put_all(&keys).await;
    let batches = read_all(&bucket, Limit::bytes(60), true, 1000).await;
    assert_eq!(
        flat(&batches),
        keys,
        "byte order here: no key has a byte below '/'"
    );
    for batch in &batches {
        let bytes: u64 = batch.iter().map(|o| o.size).sum();
        assert!(batch.len() == 1 || bytes <= 60, "{batch:?}");
        assert!(batch
            .iter()
            .all(|o| o.size == o.key.len() as u64 && o.e_tag.is_some()));
    }
    // A limit below any object's size: one object per batch.
    let singles = read_all(&bucket, Limit::bytes(1), false, 1000).await;
    assert_eq!(singles.len(), keys.len());
}

#[tokio::test]
async fn an_empty_prefix_is_an_empty_source() {
    let bucket = Bucket::fresh().await;
    let mut source = bucket.source("nothing/");
    let none = source
        .next_batch(&ListingCursor::default(), Limit::default())
        .await
        .unwrap();
    assert!(none.is_none());
}

/// Keeps every key it is handed; stops the run (through `stop`) after `stop_after` keys.
struct Collect {
    seen: Arc<Mutex<Vec<String>>>,
    stop_after: usize,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

#[async_trait]
impl Handler<ListingSource> for Collect {
    type State = u64;

    async fn handle(
        &mut self,
        batch: Batch<ListingSource>,
        count: &mut u64,
        _: &ChunkContext,
    ) -> Result<()> {
        let mut seen = self.seen.lock().unwrap();
        for object in batch.records() {
            seen.push(object.key.clone());
            *count += 1;
        }
        if seen.len() >= self.stop_after {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_job_stopped_at_a_chunk_boundary_resumes_with_the_next_object() {
    let bucket = Bucket::fresh().await;
    let written: Vec<String> = keys().into_iter().skip(1500).collect(); // 1,000 keys
    bucket.put_all(&written).await;
    let store = MemoryStore::new();
    let seen = Arc::new(Mutex::new(Vec::new()));

    let mut stops = 0;
    loop {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let handler = Collect {
            seen: seen.clone(),
            stop_after: seen.lock().unwrap().len() + 300,
            stop: Some(tx),
        };
        let job =
            SourceJob::new(bucket.source("in/").page_size(100), handler).limit(Limit::records(37));
        let report = Runner::new("listing", job)
            .store(store.clone())
            .signals(&[])
            .stop_on("test", async move {
                let _ = rx.await;
            })
            .checkpoint(Every::chunks(3))
            .grace(Duration::from_secs(30))
            .run()
            .await;
        assert_eq!(report.code(), 0, "{report:?}");
        if matches!(report.outcome, Outcome::Completed) {
            break;
        }
        stops += 1;
        assert!(stops < 10, "{report:?}");
    }
    assert!(
        stops >= 2,
        "the job was stopped and resumed ({stops} stops)"
    );
    let seen = seen.lock().unwrap();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no object handled twice");
    assert_eq!(unique.len(), written.len(), "every object handled");
}
