//! Loads a CSV file into a PostgreSQL table exactly once: a `CsvSource`
//! reads the file in chunks, a `TableSink` inserts each chunk's records into
//! the table inside a shared transaction, and the rows commit together with
//! the checkpoint that covers them.
//!
//! ```text
//! cargo run --features postgres --example csv_to_postgres -- \
//!     --csv people.csv --database 'postgres://app:secret@127.0.0.1:5432/app' --table people
//! ```
//!
//! Stop it at any moment (SIGTERM, Ctrl-C, SIGKILL) and run it again: the
//! table ends with each record of the file once, its values as in the file.
//! A missing table is created from the header, one `text` column per CSV
//! column. The checkpoints live in the same database (`--store`, by default
//! `--database`), as the shared transaction needs.

use std::time::Duration;

use clap::Parser;
use spotbatch::postgres::{PostgresStore, TableSink};
use spotbatch::prelude::*;
use spotbatch::source::{Batch, CsvSource, Handler, Limit, SourceJob};
use sqlx::{AssertSqlSafe, PgPool};

/// Copies each batch of records into the table.
struct Load {
    sink: TableSink,
    work: Duration,
}

#[async_trait]
impl Handler<CsvSource> for Load {
    type State = (); // the rows are in the database, committed with the cursor

    async fn handle(
        &mut self,
        batch: Batch<CsvSource>,
        _: &mut (),
        ctx: &ChunkContext,
    ) -> Result<()> {
        if !self.work.is_zero() {
            // Simulated per-record work (for tests), given up at the drain deadline.
            let work = self.work * u32::try_from(batch.len()).unwrap_or(u32::MAX);
            ctx.cancellable(tokio::time::sleep(work)).await?;
        }
        self.sink.write_chunk(batch.records()).await?;
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        Ok(self.sink.check().await?) // stops the run at once if the transaction was lost
    }
}

#[derive(Parser)]
#[command(about = "Load a CSV file into a PostgreSQL table, exactly once")]
struct Args {
    /// The CSV file (with a header).
    #[arg(long)]
    csv: std::path::PathBuf,
    /// The database holding the table.
    #[arg(long)]
    database: String,
    /// The table (`name` or `schema.name`), created from the header when missing.
    #[arg(long)]
    table: String,
    /// The checkpoint store: a postgres:// URL of the same database (`?schema=` allowed).
    #[arg(long, env = "SPOTBATCH_STORE")]
    store: Option<String>,
    /// Records per chunk.
    #[arg(long, default_value_t = 1000)]
    chunk: u64,
    /// Exit code of an interrupted run.
    #[arg(long, default_value_t = 0)]
    interrupted_exit_code: u8,
    /// Job key.
    #[arg(long, default_value = "csv-to-postgres")]
    job: String,
    /// Checkpoint (and commit) after this many chunks…
    #[arg(long, default_value_t = 10)]
    every_chunks: u64,
    /// …or this many seconds.
    #[arg(long, default_value_t = 2)]
    every_secs: u64,
    /// Grace period in seconds.
    #[arg(long, default_value_t = 30.0)]
    grace: f64,
    /// Simulated work per record, in microseconds.
    #[arg(long, default_value_t = 0)]
    work_us: u64,
}

/// `name` or `schema.name` as SQL, each part quoted.
fn table_sql(name: &str) -> String {
    name.splitn(2, '.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// Creates the table from the header when it is missing.
async fn create_table(
    pool: &PgPool,
    table: &str,
    header: &spotbatch::source::csv::StringRecord,
) -> anyhow::Result<()> {
    let columns = header
        .iter()
        .map(|c| format!("\"{}\" text", c.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(", ");
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {table} ({columns})"
    )))
    .execute(pool)
    .await?;
    Ok(())
}

/// The database and server a pool is connected to: the rows and the
/// checkpoints can commit in one transaction only if they are the same.
async fn identity(pool: &PgPool) -> anyhow::Result<(String, Option<String>, Option<i32>)> {
    Ok(sqlx::query_as(
        "SELECT current_database()::text, host(inet_server_addr()), inet_server_port()",
    )
    .fetch_one(pool)
    .await?)
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
    let grace = Duration::try_from_secs_f64(args.grace)?;
    let table = table_sql(&args.table);

    // Reading the header, connecting (and migrating) and creating the table
    // wait on the file and the database: a stop gives them up.
    let preparing = async {
        let mut source = CsvSource::file(&args.csv);
        let header = source.headers().await?.clone();
        // The store first: it creates its schema, which may be the table's.
        let store = PostgresStore::connect(args.store.as_deref().unwrap_or(&args.database)).await?;
        let database = PgPool::connect(&args.database).await?;
        anyhow::ensure!(
            identity(&database).await? == identity(store.pool()).await?,
            "--store must be in the database of --database, so that the rows commit with the checkpoint"
        );
        if !header.is_empty() {
            create_table(&database, &table, &header).await?;
        }
        anyhow::Ok((source, header, store))
    };
    let (source, header, store) = match shutdown.interruptible(preparing).await {
        Ok(ready) => ready?,
        Err(stopped) => return Ok(stopped.exit_code()),
    };
    let tx = store.transactional()?;
    let load = Load {
        sink: TableSink::new(tx.clone(), &table, header.iter()),
        work: Duration::from_micros(args.work_us),
    };
    let job = SourceJob::new(source, load).limit(Limit::records(args.chunk));
    let report = Runner::new(args.job, job)
        .store(tx.store()) // its saves commit the chunks' rows
        .checkpoint(Every::chunks(args.every_chunks).or_seconds(args.every_secs))
        .grace(grace)
        .run()
        .await;
    Ok(report.exit_code())
}
