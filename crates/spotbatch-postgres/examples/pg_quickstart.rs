//! The root quickstart job (`examples/quickstart.rs`), checkpointed in Postgres.
//!
//! ```text
//! cargo run -p spotbatch-postgres --example pg_quickstart -- \
//!     --store 'postgres://postgres:secret@127.0.0.1:5432/postgres?schema=demo' --work-us 20
//! ```
//!
//! Ctrl-C it and run it again: it resumes from the row in
//! `demo.spotbatch_checkpoints`. Restart the database while it runs: it keeps
//! going (saves are retried; a missed periodic checkpoint is only a warning).

#[path = "../../../examples/quickstart.rs"]
mod quickstart;

use std::sync::Arc;

use clap::Parser;
use spotbatch_postgres::PostgresStore;

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    quickstart::init_logging();
    let args = quickstart::Args::parse();
    let store = PostgresStore::connect(&args.store).await?;
    quickstart::run(args, Arc::new(store)).await
}
