//! Checkpoint latency of [`S3Store`] against raw S3 requests sent through
//! the same `aws_sdk_s3` client, in the same run.
//!
//! # Running
//!
//! ```text
//! scripts/bench                                    # starts SeaweedFS (and PostgreSQL), runs every benchmark
//! cargo bench --features s3 --bench s3_latency              # with SPOTBATCH_TEST_S3_ENDPOINT etc. exported
//! cargo bench --features s3 --bench s3_latency -- --quick   # a fifth of the work
//! ```
//!
//! The server is the one `scripts/services/s3.sh` starts: it reads
//! `SPOTBATCH_TEST_S3_ENDPOINT`, `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY`, and panics when they are missing (it never skips).
//! Run without `--bench` (as `cargo test --benches` does), it only runs a
//! tiny smoke pass against that server, whose figures mean nothing.
//!
//! # The figures
//!
//! Every figure is of a realistic checkpoint as a runner saves it mid-run
//! (16-byte cursor, 256-byte state, a lease and a one-run history), in a
//! bucket created for the run, with the store's default client settings.
//!
//! 1. **Save.** [`CheckpointStore::save`] of version `v + 1` over version `v`
//!    of the same key, the store holding the ETag of `v` from its previous
//!    save: one `PutObject` with `If-Match` and the store's metadata. The
//!    baseline is a plain `PutObject` of the same bytes to another key, with
//!    no condition and no metadata. Median, p90 and p99; the ratio is of
//!    each percentile.
//! 2. **Load.** [`CheckpointStore::load`] (GET, checksum, decode) against a
//!    raw `GetObject` of the same object, body collected.
//!
//! Store and baseline requests alternate (their order swapped every other
//! time) after a warm-up, so both see the same server and machine load.
//! Everything runs on one current-thread tokio runtime.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use spotbatch::conformance::MidRun;
use spotbatch::s3::{aws_sdk_s3, S3Store, S3StoreBuilder};
use spotbatch::{Checkpoint, CheckpointStore, JobKey};
use spotbatch_test_support::table::{percentile_rows, print_table, Latencies, Mode, Row};

/// How much work each figure does.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// Saves (and as many raw puts) timed.
    saves: usize,
    /// Loads (and as many raw gets) timed.
    loads: usize,
    /// Untimed rounds first: connections, credentials, server caches.
    warm_up: usize,
}

impl Sizes {
    const FULL: Self = Self {
        saves: 1_000,
        loads: 1_000,
        warm_up: 20,
    };
    const QUICK: Self = Self {
        saves: 200,
        loads: 200,
        warm_up: 10,
    };
    const SMOKE: Self = Self {
        saves: 5,
        loads: 5,
        warm_up: 1,
    };
}

fn main() {
    let mode = Mode::from_args();
    let sizes = mode.pick(Sizes::SMOKE, Sizes::QUICK, Sizes::FULL);
    let endpoint = required("SPOTBATCH_TEST_S3_ENDPOINT");
    required("AWS_ACCESS_KEY_ID");
    required("AWS_SECRET_ACCESS_KEY");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let (store, envelope) = rt.block_on(fresh_store(&endpoint));
    let mut rows = rt.block_on(saves(&store, sizes));
    rows.extend(rt.block_on(loads(&store, sizes)));
    rt.block_on(clean_up(&store));

    println!(
        "S3Store latency (feature s3), {}: {} cores, server {endpoint}, bucket {}, {envelope}-byte envelope\n",
        mode.describe(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        store.bucket(),
    );
    print_table(&rows);
    println!("\ntook {:.1} s", started.elapsed().as_secs_f64());
}

/// The value of `name`; panics, naming it, when it is unset or empty.
fn required(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{name} is not set: this benchmark needs an S3 server and never skips. Run it \
             with scripts/bench (it starts SeaweedFS via scripts/services/s3.sh), or export \
             SPOTBATCH_TEST_S3_ENDPOINT=http://127.0.0.1:PORT, AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY for a server of your own"
        ),
    }
}

/// A store under `bench/` in a bucket created for this run, with the
/// builder's default timeouts and retries; and the envelope's size.
async fn fresh_store(endpoint: &str) -> (S3Store, usize) {
    let bucket = format!(
        "sbbench-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..20]
    );
    let store = S3StoreBuilder::new(&bucket, "bench")
        .endpoint_url(endpoint)
        .force_path_style(true)
        .region("us-east-1")
        .build()
        .await
        .expect("build the S3 store");
    store
        .client()
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "create bucket {bucket} on {endpoint}: {}",
                DisplayErrorContext(e)
            )
        });
    let envelope = MidRun::new(job()).checkpoint().encode().len();
    (store, envelope)
}

/// Deletes the two objects and the bucket (best effort: the data directory
/// of a server scripts/bench started goes anyway).
async fn clean_up(store: &S3Store) {
    let client = store.client();
    for object in [store.object_key(&job()), raw_key(store)] {
        let _ = client
            .delete_object()
            .bucket(store.bucket())
            .key(object)
            .send()
            .await;
    }
    let _ = client.delete_bucket().bucket(store.bucket()).send().await;
}

fn job() -> JobKey {
    JobKey::new("nightly-etl/2026-11-24").expect("key")
}

/// The baseline's object: next to the store's, same length of name.
fn raw_key(store: &S3Store) -> String {
    store.object_key(&job()).replacen("bench/", "raw-b/", 1)
}

// ---------------------------------------------------------------------------
// The figures

async fn save_ours(store: &S3Store, checkpoint: &Checkpoint) -> Duration {
    let expected = Some(checkpoint.version - 1);
    let started = Instant::now();
    store
        .save(checkpoint, expected)
        .await
        .expect("S3Store save");
    started.elapsed()
}

async fn put_raw(client: &Client, bucket: &str, object: &str, bytes: &[u8]) -> Duration {
    let started = Instant::now();
    client
        .put_object()
        .bucket(bucket)
        .key(object)
        .body(ByteStream::from(bytes.to_vec()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("raw PutObject {object}: {}", DisplayErrorContext(e)));
    started.elapsed()
}

async fn load_ours(store: &S3Store, version: u64) -> Duration {
    let started = Instant::now();
    let loaded = store.load(&job()).await.expect("S3Store load");
    let took = started.elapsed();
    assert_eq!(loaded.map(|c| c.version), Some(version), "loaded version");
    took
}

async fn get_raw(client: &Client, bucket: &str, object: &str, len: usize) -> Duration {
    let started = Instant::now();
    let output = client
        .get_object()
        .bucket(bucket)
        .key(object)
        .send()
        .await
        .unwrap_or_else(|e| panic!("raw GetObject {object}: {}", DisplayErrorContext(e)));
    let body = output.body.collect().await.expect("GetObject body");
    let bytes = black_box(body.into_bytes());
    let took = started.elapsed();
    assert_eq!(bytes.len(), len, "raw GetObject length");
    took
}

async fn saves(store: &S3Store, sizes: Sizes) -> Vec<Row> {
    let client = store.client();
    let raw = raw_key(store);
    let mut progress = MidRun::new(job());
    store
        .save(progress.checkpoint(), None)
        .await
        .expect("create the checkpoint");
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for i in 0..sizes.warm_up + sizes.saves {
        let checkpoint = progress.advance();
        let bytes = checkpoint.encode();
        let (o, b) = if i % 2 == 0 {
            let o = save_ours(store, checkpoint).await;
            (o, put_raw(client, store.bucket(), &raw, &bytes).await)
        } else {
            let b = put_raw(client, store.bucket(), &raw, &bytes).await;
            (save_ours(store, checkpoint).await, b)
        };
        if i >= sizes.warm_up {
            ours.push(o);
            base.push(b);
        }
    }
    // Both objects hold the last checkpoint, byte for byte.
    let last = progress.checkpoint().encode();
    for object in [store.object_key(&job()), raw] {
        let got = client
            .get_object()
            .bucket(store.bucket())
            .key(&object)
            .send()
            .await
            .expect("read back");
        let got = got.body.collect().await.expect("body").into_bytes();
        assert_eq!(
            got.as_ref(),
            last.as_slice(),
            "{object} holds the last save"
        );
    }
    let n = sizes.saves;
    percentile_rows(
        format!(
            "1. save of version v+1 over v, {} bytes, {n} each (baseline: PutObject, no condition, no metadata)",
            last.len()
        ),
        "S3Store save (If-Match, ETag known)",
        &Latencies::new(ours),
        &Latencies::new(base),
    )
}

async fn loads(store: &S3Store, sizes: Sizes) -> Vec<Row> {
    let client = store.client();
    let object = store.object_key(&job());
    let current = store
        .load(&job())
        .await
        .expect("load")
        .expect("a checkpoint");
    let (version, len) = (current.version, current.encode().len());
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for i in 0..sizes.warm_up + sizes.loads {
        let (o, b) = if i % 2 == 0 {
            let o = load_ours(store, version).await;
            (o, get_raw(client, store.bucket(), &object, len).await)
        } else {
            let b = get_raw(client, store.bucket(), &object, len).await;
            (load_ours(store, version).await, b)
        };
        if i >= sizes.warm_up {
            ours.push(o);
            base.push(b);
        }
    }
    percentile_rows(
        format!(
            "2. load, {} each (baseline: GetObject of the same object, body collected)",
            sizes.loads
        ),
        "S3Store load (GET, checksum, decode)",
        &Latencies::new(ours),
        &Latencies::new(base),
    )
}

// ---------------------------------------------------------------------------
// Output and helpers
