//! Exactly-once ETL inside PostgreSQL: copy and transform rows from a source
//! table to a destination table, with each chunk's rows committed in the same
//! transaction as the checkpoint that covers them.
//!
//! ```text
//! cargo run --features postgres --example pg_etl -- \
//!     --store 'postgres://postgres:secret@127.0.0.1:5432/postgres?schema=etl_demo' --rows 100000
//! ```
//!
//! SIGKILL it at any moment and run it again: the destination ends identical
//! to an uninterrupted run's, without a duplicate row (its `source_id` is
//! unique, so a duplicate would fail the run rather than hide). The tables
//! live in the store's schema; the source is filled on the first run.

use std::time::Duration;

use clap::Parser;
use spotbatch::postgres::{PostgresStore, SharedTransaction};
use spotbatch::prelude::*;
use sqlx::{AssertSqlSafe, PgPool};

/// Copies `source` rows `[cursor, cursor + chunk)` into `dest`, transformed.
struct Etl {
    tx: SharedTransaction,
    pool: PgPool,
    rows: u64,
    chunk: u64,
    work: Duration,
    sql: Statements,
}

struct Statements {
    read: String,
    write: String,
}

#[async_trait]
impl Job for Etl {
    type Cursor = u64; // the next source id
    type State = (); // everything else is in the database

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < self.rows).then(|| Chunk::between(*at, (*at + self.chunk).min(self.rows))))
    }

    async fn process(&mut self, chunk: &Chunk<u64>, _: &mut (), ctx: &ChunkContext) -> Result<()> {
        let range = chunk.range();
        let (start, end) = (i64::try_from(range.start)?, i64::try_from(range.end)?);
        // Extract: reading through the pool is fine (the source does not change).
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(AssertSqlSafe(self.sql.read.clone()))
            .bind(start)
            .bind(end)
            .fetch_all(&self.pool)
            .await?;
        // Transform (with simulated per-row work, given up at the drain deadline).
        if !self.work.is_zero() {
            let work = self.work * u32::try_from(rows.len()).unwrap_or(u32::MAX);
            ctx.cancellable(tokio::time::sleep(work)).await?;
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut labels = Vec::with_capacity(rows.len());
        let mut gross = Vec::with_capacity(rows.len());
        for (id, name, cents) in rows {
            ids.push(id);
            labels.push(transform_name(&name));
            gross.push(with_tax(cents));
        }
        // Load: in the shared transaction, committed with the next checkpoint.
        let mut tx = self.tx.chunk().await?;
        sqlx::query(AssertSqlSafe(self.sql.write.clone()))
            .bind(&ids)
            .bind(&labels)
            .bind(&gross)
            .execute(&mut *tx)
            .await?;
        tx.done().await?; // every statement succeeded (their errors returned with `?`)
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        Ok(self.tx.check().await?)
    }

    fn total_items(&self) -> Option<u64> {
        Some(self.rows)
    }
}

/// `item-42` → `42-METI`.
fn transform_name(name: &str) -> String {
    name.chars().rev().collect::<String>().to_uppercase()
}

/// Cents plus 20 % tax, rounded half up.
fn with_tax(cents: i64) -> i64 {
    (cents * 12 + 5) / 10
}

#[derive(Parser)]
#[command(about = "Exactly-once ETL between two Postgres tables")]
struct Args {
    /// Checkpoint store URL (`?schema=` also holds the source and destination tables).
    #[arg(long, env = "SPOTBATCH_STORE")]
    store: String,
    /// Job key.
    #[arg(long, default_value = "pg-etl")]
    job: String,
    /// Source rows (created on the first run).
    #[arg(long, default_value_t = 100_000)]
    rows: u64,
    /// Rows per chunk.
    #[arg(long, default_value_t = 500)]
    chunk: u64,
    /// Simulated work per row, in microseconds.
    #[arg(long, default_value_t = 0)]
    work_us: u64,
    /// Checkpoint (and commit) after this many chunks…
    #[arg(long, default_value_t = 10)]
    every_chunks: u64,
    /// …or this many seconds.
    #[arg(long, default_value_t = 2)]
    every_secs: u64,
    /// Grace period in seconds.
    #[arg(long, default_value_t = 30.0)]
    grace: f64,
    /// Exit code of an interrupted run.
    #[arg(long, default_value_t = 0)]
    interrupted_exit_code: u8,
}

/// Creates the tables if needed and fills the source on the first run.
async fn set_up(pool: &PgPool, schema: &str, rows: u64) -> anyhow::Result<Statements> {
    let s = format!("\"{}\"", schema.replace('"', "\"\""));
    let mut tx = pool.begin().await?;
    // Two first runs at once would race on CREATE TABLE: take turns.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('spotbatch pg_etl set-up'))")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {s}.etl_source (
             id bigint PRIMARY KEY, name text NOT NULL, amount_cents bigint NOT NULL);
         CREATE TABLE IF NOT EXISTS {s}.etl_dest (
             source_id bigint NOT NULL UNIQUE, label text NOT NULL, gross_cents bigint NOT NULL);"
    )))
    .execute(&mut *tx)
    .await?;
    let count: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {s}.etl_source"
    )))
    .fetch_one(&mut *tx)
    .await?;
    if count == 0 {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {s}.etl_source (id, name, amount_cents)
             SELECT i, 'item-' || i, (i * 7919) % 100000 FROM generate_series(0, $1 - 1) AS i"
        )))
        .bind(i64::try_from(rows)?)
        .execute(&mut *tx)
        .await?;
    } else {
        anyhow::ensure!(
            u64::try_from(count)? == rows,
            "{s}.etl_source has {count} rows, not --rows {rows}"
        );
    }
    tx.commit().await?;
    Ok(Statements {
        read: format!(
            "SELECT id, name, amount_cents FROM {s}.etl_source WHERE id >= $1 AND id < $2 ORDER BY id"
        ),
        write: format!(
            "INSERT INTO {s}.etl_dest (source_id, label, gross_cents)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[])"
        ),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    // First: from here on SIGTERM and SIGINT are stop requests.
    let shutdown = spotbatch::shutdown::listen();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    // The exit code of a stop, before the run or during it.
    let shutdown = shutdown.interrupted_exit_code(args.interrupted_exit_code);
    anyhow::ensure!(args.chunk > 0, "--chunk must be at least 1");
    let grace = Duration::try_from_secs_f64(args.grace)?;

    // Connecting (and migrating, which waits for another task's migration)
    // and preparing the tables wait on the database: a stop gives them up.
    let preparing = async {
        let store = PostgresStore::connect(&args.store).await?;
        let sql = set_up(store.pool(), store.schema(), args.rows).await?;
        anyhow::Ok((store, sql))
    };
    let (store, sql) = match shutdown.interruptible(preparing).await {
        Ok(ready) => ready?,
        Err(stopped) => return Ok(stopped.exit_code()),
    };
    let tx = store.transactional()?;
    let job = Etl {
        tx: tx.clone(),
        pool: store.pool().clone(),
        rows: args.rows,
        chunk: args.chunk,
        work: Duration::from_micros(args.work_us),
        sql,
    };
    let report = Runner::new(args.job, job)
        .store(tx.store()) // its saves commit the chunks' writes
        .checkpoint(Every::chunks(args.every_chunks).or_seconds(args.every_secs))
        .grace(grace)
        .run()
        .await;
    Ok(report.exit_code())
}
