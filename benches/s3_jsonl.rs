//! Reading JSON Lines from S3 through the sources ([`ListingSource`] for
//! the objects under a prefix, [`JsonLinesSource`] over an [`S3Object`] for
//! each object's values) against plain requests through the same
//! `aws_sdk_s3` client, in the same run.
//!
//! # Running
//!
//! ```text
//! scripts/bench                                           # starts SeaweedFS (and PostgreSQL), runs every benchmark
//! cargo bench --features s3 --bench s3_jsonl              # with SPOTBATCH_TEST_S3_ENDPOINT etc. exported
//! cargo bench --features s3 --bench s3_jsonl -- --quick   # a fraction of the work
//! ```
//!
//! It reads `SPOTBATCH_TEST_S3_ENDPOINT`, `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY` (as `scripts/services/s3.sh` exports them) and
//! panics when they are missing. Run without `--bench` (as `cargo test
//! --benches` does), it only runs a tiny smoke pass, whose figures mean
//! nothing.
//!
//! # The figures
//!
//! The input is objects of JSON Lines (110-byte events) under a prefix of
//! a bucket created for the run. Each way of reading it parses every line,
//! into a `serde_json::Value` or into a struct of the event's six fields,
//! and counts the records:
//!
//! - **plain**: ListObjectsV2 (pages of 1,000), then for each object one
//!   `GetObject`, the body collected, split at `\n` (memchr), each line
//!   parsed and dropped;
//! - **batched**: the same, the records kept in batches of 1,000, each
//!   batch's `Vec` handed over and dropped as a source's is;
//! - **sources**: [`ListingSource`] one object per batch, and for each
//!   object a [`JsonLinesSource`] over an [`S3Object`] (8 MiB ranged GETs
//!   pinned to the listed ETag), batches of 1,000 records;
//! - **job**: the same sources as a [`SourceJob`] run by a [`Runner`] with a
//!   memory store, a checkpoint every 10 objects.
//!
//! Each row compares two ways by the names in bold above (**plain**,
//! **batched**, **sources**, **job**). Throughput is input megabytes per
//! second of wall-clock time, and per second of CPU time of the client's
//! thread (the client's work alone, which other processes on a loaded
//! machine do not change), the median of the rounds; the ways alternate in each round
//! (their order rotating) after a warm-up round, on one current-thread
//! tokio runtime, so they see the same server and machine load.

use std::time::Instant;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use serde::de::DeserializeOwned;
use spotbatch::prelude::*;
use spotbatch::s3::{aws_sdk_s3, ListedObject, ListingCursor, ListingSource, S3StoreBuilder};
use spotbatch::source::{
    Batch, FilePosition, Handler, JsonLinesSource, Limit, S3Object, Source, SourceJob,
};
use spotbatch::MemoryStore;
use spotbatch_test_support::table::{print_table, Mode, Row};

/// How much work the benchmark does.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    objects: usize,
    object_bytes: usize,
    rounds: usize,
}

impl Sizes {
    const FULL: Self = Self {
        objects: 32,
        object_bytes: 4 << 20,
        rounds: 7,
    };
    const QUICK: Self = Self {
        objects: 8,
        object_bytes: 2 << 20,
        rounds: 3,
    };
    const SMOKE: Self = Self {
        objects: 2,
        object_bytes: 64 << 10,
        rounds: 1,
    };
}

fn main() {
    let mode = Mode::from_args();
    let sizes = mode.pick(Sizes::SMOKE, Sizes::QUICK, Sizes::FULL);
    let endpoint = std::env::var("SPOTBATCH_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!("SPOTBATCH_TEST_S3_ENDPOINT is not set: run scripts/bench, which starts SeaweedFS")
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench(&endpoint, sizes, mode));
}

async fn bench(endpoint: &str, sizes: Sizes, mode: Mode) {
    let bucket = format!(
        "bench-jsonl-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let client = S3StoreBuilder::new(&bucket, "")
        .endpoint_url(endpoint)
        .force_path_style(true)
        .region("us-east-1")
        .client()
        .await
        .expect("client");
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    let (bytes, values) = write_inputs(&client, &bucket, sizes).await;

    let ways = Way::ALL;
    let mut wall: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
    for round in 0..=sizes.rounds {
        for i in 0..ways.len() {
            let which = (round + i) % ways.len();
            let (started, cpu_started) = (Instant::now(), thread_cpu_ns());
            let read = ways[which].run(&client, &bucket).await;
            let took = started.elapsed();
            let cpu_ns = thread_cpu_ns().saturating_sub(cpu_started).max(1);
            assert_eq!(read, values, "{:?}: every record read", ways[which]);
            if round > 0 {
                let mb = bytes as f64 / 1e6;
                wall[which].push(mb / took.as_secs_f64());
                cpu[which].push(mb / (cpu_ns as f64 / 1e9));
            }
        }
    }
    let wall: Vec<f64> = wall.into_iter().map(median).collect();
    let cpu: Vec<f64> = cpu.into_iter().map(median).collect();
    println!(
        "\nJSON Lines from S3 ({}): {} objects of {} KiB, {values} records, {:.1} MB; median of {} rounds\n",
        mode.describe(),
        sizes.objects,
        sizes.object_bytes >> 10,
        bytes as f64 / 1e6,
        sizes.rounds
    );
    let row = |figures: &[f64], way: Way, against: Way| {
        let (ours, base) = (figures[way as usize], figures[against as usize]);
        Row::text(
            format!("{} vs {}", way.describe(), against.describe()),
            format!("{ours:.1}"),
            format!("{base:.1}"),
            format!("{:+.1}", ours - base),
            format!("{:.2}×", ours / base),
        )
    };
    let rows = |figures: &[f64], typed: bool| {
        if typed {
            vec![
                row(figures, Way::TypedSources, Way::TypedPlain),
                row(figures, Way::TypedBatched, Way::TypedPlain),
                row(figures, Way::TypedSources, Way::TypedBatched),
            ]
        } else {
            vec![
                row(figures, Way::ValueSources, Way::ValuePlain),
                row(figures, Way::ValueJob, Way::ValuePlain),
                row(figures, Way::ValueBatched, Way::ValuePlain),
                row(figures, Way::ValueSources, Way::ValueBatched),
            ]
        }
    };
    let mut table = vec![Row::section(
        "serde_json::Value records: input MB/s, wall clock (higher is better)",
    )];
    table.extend(rows(&wall, false));
    table.push(Row::section(
        "serde_json::Value records: input MB per CPU second of the client's thread",
    ));
    table.extend(rows(&cpu, false));
    table.push(Row::section(
        "typed records (a struct of 6 fields): input MB/s, wall clock",
    ));
    table.extend(rows(&wall, true));
    table.push(Row::section(
        "typed records: input MB per CPU second of the client's thread",
    ));
    table.extend(rows(&cpu, true));
    print_table(&table);
}

/// The CPU time of this thread so far, in nanoseconds (the first field of
/// `/proc/thread-self/schedstat`): the runtime is current-thread, so this
/// is the client's whole work, its read-ahead tasks included, without the
/// server's.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One way of reading the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    ValuePlain,
    ValueBatched,
    ValueSources,
    ValueJob,
    TypedPlain,
    TypedBatched,
    TypedSources,
}

impl Way {
    const ALL: [Way; 7] = [
        Way::ValuePlain,
        Way::ValueBatched,
        Way::ValueSources,
        Way::ValueJob,
        Way::TypedPlain,
        Way::TypedBatched,
        Way::TypedSources,
    ];

    fn describe(self) -> &'static str {
        match self {
            Way::ValuePlain | Way::TypedPlain => "plain",
            Way::ValueBatched | Way::TypedBatched => "batched",
            Way::ValueSources | Way::TypedSources => "sources",
            Way::ValueJob => "job",
        }
    }

    /// Reads everything; returns the records read.
    async fn run(self, client: &Client, bucket: &str) -> u64 {
        match self {
            Way::ValuePlain => plain::<serde_json::Value>(client, bucket, 1).await,
            Way::ValueBatched => plain::<serde_json::Value>(client, bucket, BATCH).await,
            Way::ValueSources => through_sources::<serde_json::Value>(client, bucket).await,
            Way::ValueJob => through_job(client, bucket).await,
            Way::TypedPlain => plain::<Event>(client, bucket, 1).await,
            Way::TypedBatched => plain::<Event>(client, bucket, BATCH).await,
            Way::TypedSources => through_sources::<Event>(client, bucket).await,
        }
    }
}

/// Records per batch, for the sources and the batched baseline.
const BATCH: usize = 1000;

/// An input record, typed.
#[derive(serde::Deserialize)]
#[allow(dead_code)] // parsed, not read
struct Event {
    id: u64,
    user: String,
    event: String,
    ts: String,
    amount: f64,
    tags: Vec<String>,
}

/// Writes the objects; returns their total bytes and values.
async fn write_inputs(client: &Client, bucket: &str, sizes: Sizes) -> (usize, u64) {
    let (mut bytes, mut values) = (0, 0u64);
    for n in 0..sizes.objects {
        let mut body = String::with_capacity(sizes.object_bytes + 200);
        let mut i = 0u64;
        while body.len() < sizes.object_bytes {
            body.push_str(&format!(
                "{{\"id\":{i},\"user\":\"user-{}\",\"event\":\"click\",\"ts\":\"2024-06-01T12:{:02}:{:02}Z\",\"amount\":{}.{:02},\"tags\":[\"a\",\"b\"]}}\n",
                (i * 7919) % 100_000,
                i % 60,
                (i * 13) % 60,
                i % 1000,
                i % 100
            ));
            i += 1;
        }
        bytes += body.len();
        values += i;
        client
            .put_object()
            .bucket(bucket)
            .key(format!("in/{n:05}.jsonl"))
            .body(ByteStream::from(body.into_bytes()))
            .send()
            .await
            .expect("put input");
    }
    (bytes, values)
}

fn median(mut figures: Vec<f64>) -> f64 {
    figures.sort_by(f64::total_cmp);
    figures[figures.len() / 2]
}

/// The baseline: list, get, split, parse; records kept by `batch` before
/// they are dropped.
async fn plain<T: DeserializeOwned>(client: &Client, bucket: &str, batch: usize) -> u64 {
    let mut values = 0;
    let mut kept: Vec<T> = Vec::with_capacity(batch);
    let mut token = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix("in/")
            .set_continuation_token(token.take())
            .send()
            .await
            .expect("list");
        for object in page.contents() {
            let body = client
                .get_object()
                .bucket(bucket)
                .key(object.key().expect("key"))
                .send()
                .await
                .expect("get")
                .body
                .collect()
                .await
                .expect("body")
                .into_bytes();
            let mut start = 0;
            for end in memchr::memchr_iter(b'\n', &body).chain([body.len()]) {
                let line = &body[start..end];
                start = end + 1;
                if line.trim_ascii().is_empty() {
                    continue;
                }
                kept.push(serde_json::from_slice(line).expect("JSON"));
                values += 1;
                if kept.len() >= batch {
                    if batch == 1 {
                        // A line at a time: the one buffer is reused.
                        std::hint::black_box(&kept);
                        kept.clear();
                    } else {
                        // Handed over and dropped, as a source's batch is.
                        let handed = std::mem::replace(&mut kept, Vec::with_capacity(batch));
                        drop(std::hint::black_box(handed));
                    }
                }
            }
        }
        match page.next_continuation_token() {
            Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
            _ => return values,
        }
    }
}

/// Counts one object's values through a JSON Lines source over it, pinned
/// to its listed ETag (as `examples/s3_jsonl.rs` reads).
async fn count_values<T: DeserializeOwned + Send + 'static>(
    client: &Client,
    bucket: &str,
    object: &ListedObject,
) -> u64 {
    let mut input = S3Object::new(client.clone(), bucket, &object.key);
    if let Some(e_tag) = &object.e_tag {
        input = input.if_match(e_tag);
    }
    let mut source = JsonLinesSource::<T>::new(input);
    let mut at = FilePosition::default();
    while let Some(batch) = source
        .next_batch(&at, Limit::records(BATCH as u64))
        .await
        .expect("batch")
    {
        let (records, next) = batch.into_parts();
        std::hint::black_box(records);
        at = next;
    }
    at.record
}

/// The sources, driven by hand.
async fn through_sources<T: DeserializeOwned + Send + 'static>(
    client: &Client,
    bucket: &str,
) -> u64 {
    let mut listing = ListingSource::new(client.clone(), bucket, "in/");
    let mut cursor = ListingCursor::default();
    let mut values = 0;
    while let Some(batch) = listing
        .next_batch(&cursor, Limit::records(1))
        .await
        .expect("listing")
    {
        let (objects, next) = batch.into_parts();
        for object in objects {
            values += count_values::<T>(client, bucket, &object).await;
        }
        cursor = next;
    }
    values
}

/// The handler of the job: counts values.
struct Count {
    client: Client,
    bucket: String,
}

#[async_trait]
impl Handler<ListingSource> for Count {
    type State = u64;

    async fn handle(
        &mut self,
        batch: Batch<ListingSource>,
        values: &mut u64,
        _: &ChunkContext,
    ) -> Result<()> {
        for object in batch.records() {
            *values += count_values::<serde_json::Value>(&self.client, &self.bucket, object).await;
        }
        Ok(())
    }
}

/// The sources as a job under a runner.
async fn through_job(client: &Client, bucket: &str) -> u64 {
    let source = ListingSource::new(client.clone(), bucket, "in/");
    let handler = Count {
        client: client.clone(),
        bucket: bucket.to_owned(),
    };
    let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let job = SourceJob::new(source, Tally(handler, counted.clone())).limit(Limit::records(1));
    let report = Runner::new("bench", job)
        .store(MemoryStore::new())
        .signals(&[])
        .checkpoint(Every::chunks(10))
        .progress_every(None)
        .run()
        .await;
    assert_eq!(report.code(), 0, "{report:?}");
    counted.load(std::sync::atomic::Ordering::Relaxed)
}

/// A handler that also publishes its count, for the benchmark to check.
struct Tally(Count, std::sync::Arc<std::sync::atomic::AtomicU64>);

#[async_trait]
impl Handler<ListingSource> for Tally {
    type State = u64;

    async fn handle(
        &mut self,
        batch: Batch<ListingSource>,
        values: &mut u64,
        ctx: &ChunkContext,
    ) -> Result<()> {
        self.0.handle(batch, values, ctx).await?;
        self.1.store(*values, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}
