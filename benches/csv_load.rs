//! Loading a CSV file into PostgreSQL: `CsvSource` + `SourceJob` +
//! `TableSink` under a `Runner` (checkpoints committed with the rows), against
//! the same file loaded by hand in the same run, into the same server.
//!
//! # Running
//!
//! ```text
//! scripts/bench                                          # starts PostgreSQL (and SeaweedFS), runs every benchmark
//! cargo bench --features postgres --bench csv_load       # with SPOTBATCH_TEST_PG_URL exported
//! cargo bench --features postgres --bench csv_load -- --quick   # a fifth of the rows
//! ```
//!
//! It reads `SPOTBATCH_TEST_PG_URL` and panics when it is missing (it never
//! skips). Without `--bench` (as under `cargo test --benches`) it runs a tiny
//! smoke pass whose figures mean nothing.
//!
//! # The figures
//!
//! The file: a header and 5 columns (an id, a name with a quote, a note with
//! a comma, in every seventh record a quoted line break, unicode), about 80
//! bytes a record, in a temporary directory. Each load goes into a fresh
//! table of 5 `text` columns (`UNLOGGED` off: `fsync` on, as in production):
//!
//! 1. **spotbatch**: `examples/csv_to_postgres.rs`'s job (chunks of 1000
//!    records, one `COPY` each in a `SharedTransaction` through `TableSink`,
//!    a checkpoint committing the rows every 10 chunks or 2 s), run by a
//!    `Runner` on a `PostgresStore` in the same database.
//! 2. **COPY by hand**: the whole file in one `COPY … FROM STDIN (FORMAT
//!    csv, HEADER)`: the fastest load Postgres has, with no resumption.
//! 3. **INSERT by hand**: the file parsed by the `csv` crate, 1000 records a
//!    statement (`INSERT … SELECT * FROM unnest($1::text[], …)`), committed
//!    every 10 statements: the batched load people write themselves.
//!
//! The three alternate, 3 rounds (the order rotated each round); each
//! figure is the median round's rows per second.

use std::path::Path;
use std::time::{Duration, Instant};

use spotbatch::postgres::{PostgresStore, TableSink};
use spotbatch::prelude::*;
use spotbatch::source::{Batch, CsvSource, Handler, Limit, SourceJob};
use spotbatch_test_support::table::{print_table, Mode, Row};
use sqlx::{AssertSqlSafe, PgPool};

const CHUNK: u64 = 1000;

struct Load {
    sink: TableSink,
}

#[async_trait]
impl Handler<CsvSource> for Load {
    type State = ();

    async fn handle(
        &mut self,
        batch: Batch<CsvSource>,
        _: &mut (),
        _: &ChunkContext,
    ) -> Result<()> {
        self.sink.write_chunk(batch.records()).await?;
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        Ok(self.sink.check().await?)
    }
}

fn write_file(path: &Path, records: usize) -> u64 {
    let mut out = String::from("id,name,city,note,amount\n");
    for i in 0..records {
        let note = if i % 7 == 0 {
            "\"first line\nsecond, line\"".to_owned()
        } else {
            format!("\"note, {i}\"")
        };
        out.push_str(&format!(
            "{i},\"Renée \"\"{i}\"\"\",Zürich,{note},{}.{:02}\n",
            i * 7 % 10_000,
            i % 100
        ));
    }
    std::fs::write(path, &out).expect("write the CSV file");
    out.len() as u64
}

const COLUMNS: [&str; 5] = ["id", "name", "city", "note", "amount"];

async fn fresh_table(pool: &PgPool, schema: &str, name: &str) -> String {
    let table = format!("{schema}.{name}");
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id text, name text, city text, note text, amount text)"
    )))
    .execute(pool)
    .await
    .expect("create table");
    table
}

async fn count(pool: &PgPool, table: &str) -> u64 {
    let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(pool)
        .await
        .expect("count");
    u64::try_from(n).expect("count")
}

/// The load through spotbatch; its time.
async fn spotbatch_load(store: &PostgresStore, csv: &Path, table: &str, round: usize) -> Duration {
    let tx = store.transactional().expect("transactional");
    let sink = TableSink::new(tx.clone(), table, COLUMNS);
    let job = SourceJob::new(CsvSource::file(csv), Load { sink }).limit(Limit::records(CHUNK));
    let started = Instant::now();
    let report = Runner::new(format!("csv-load-{round}"), job)
        .store(tx.store())
        .checkpoint(Every::chunks(10).or_seconds(2))
        .signals(&[])
        .restart()
        .run()
        .await;
    let took = started.elapsed();
    assert_eq!(report.code(), 0, "{report:?}");
    took
}

/// One COPY of the whole file; its time.
async fn copy_load(pool: &PgPool, csv: &Path, table: &str) -> Duration {
    let started = Instant::now();
    let bytes = tokio::fs::read(csv).await.expect("read the file");
    let mut conn = pool.acquire().await.expect("connection");
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {table} FROM STDIN WITH (FORMAT csv, HEADER true)"
        ))
        .await
        .expect("COPY");
    copy.send(bytes).await.expect("COPY data");
    copy.finish().await.expect("COPY end");
    started.elapsed()
}

/// Batched INSERTs, committed every 10; their time.
async fn insert_load(pool: &PgPool, csv: &Path, table: &str) -> Duration {
    let started = Instant::now();
    let sql = format!(
        "INSERT INTO {table} SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])"
    );
    let bytes = tokio::fs::read(csv).await.expect("read the file");
    let mut reader = csv::Reader::from_reader(&bytes[..]);
    let mut columns: [Vec<String>; 5] = Default::default();
    let mut tx = pool.begin().await.expect("begin");
    let mut statements = 0;
    let mut records = reader.records().peekable();
    while records.peek().is_some() {
        for c in &mut columns {
            c.clear();
        }
        for record in records.by_ref().take(CHUNK as usize) {
            let record = record.expect("a CSV record");
            for (c, field) in columns.iter_mut().zip(record.iter()) {
                c.push(field.to_owned());
            }
        }
        let mut insert = sqlx::query(AssertSqlSafe(sql.as_str()));
        for c in &columns {
            insert = insert.bind(c);
        }
        insert.execute(&mut *tx).await.expect("INSERT");
        statements += 1;
        if statements % 10 == 0 {
            tx.commit().await.expect("commit");
            tx = pool.begin().await.expect("begin");
        }
    }
    tx.commit().await.expect("commit");
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mode = Mode::from_args();
    let records = mode.pick(2_000, 40_000, 200_000);
    let rounds = mode.pick(1, 3, 3);
    let url = std::env::var("SPOTBATCH_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "SPOTBATCH_TEST_PG_URL is not set: this benchmark needs a PostgreSQL server and \
                 never skips. Run it with scripts/bench, or export \
                 SPOTBATCH_TEST_PG_URL=postgres://user:pass@127.0.0.1:PORT/db"
            )
        });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let csv = dir.path().join("load.csv");
    let size = write_file(&csv, records);
    let schema = format!("bench_csv_{}", std::process::id());
    let started = Instant::now();
    let (ours, copy, insert) = rt.block_on(async {
        let store = PostgresStore::connect(&format!("{url}?schema={schema}"))
            .await
            .expect("store");
        let pool = store.pool().clone();
        let (mut ours, mut copy, mut insert) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            for step in 0..3 {
                match (round + step) % 3 {
                    0 => {
                        let table = fresh_table(&pool, &schema, "ours").await;
                        ours.push(spotbatch_load(&store, &csv, &table, round).await);
                        assert_eq!(count(&pool, &table).await, records as u64);
                    }
                    1 => {
                        let table = fresh_table(&pool, &schema, "copy").await;
                        copy.push(copy_load(&pool, &csv, &table).await);
                        assert_eq!(count(&pool, &table).await, records as u64);
                    }
                    _ => {
                        let table = fresh_table(&pool, &schema, "insert").await;
                        insert.push(insert_load(&pool, &csv, &table).await);
                        assert_eq!(count(&pool, &table).await, records as u64);
                    }
                }
            }
        }
        sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&pool)
            .await
            .expect("drop schema");
        (median(ours), median(copy), median(insert))
    });

    let rate = |d: Duration| records as f64 / d.as_secs_f64();
    let rows_s = |d: Duration| format!("{:.0} rows/s", rate(d));
    println!(
        "CSV into PostgreSQL (feature postgres), {}: {} cores, {records} records ({:.1} MiB), median of {rounds}\n",
        mode.describe(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        size as f64 / f64::from(1 << 20),
    );
    let row = |figure: &str, baseline: Duration| {
        Row::text(
            figure,
            rows_s(ours),
            rows_s(baseline),
            format!(
                "{:+.0} ms",
                (ours.as_secs_f64() - baseline.as_secs_f64()) * 1e3
            ),
            format!("{:.2}× the rate", rate(ours) / rate(baseline)),
        )
    };
    print_table(&[
        row("spotbatch vs one COPY by hand", copy),
        row("spotbatch vs batched INSERT by hand", insert),
    ]);
    println!("\ntook {:.1} s", started.elapsed().as_secs_f64());
}
