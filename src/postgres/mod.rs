//! The PostgreSQL [`CheckpointStore`](crate::CheckpointStore) (feature
//! `postgres`): compare-and-swap rows, a run history table, and
//! exactly-once writes for jobs whose output is in the same database.
//!
//! ```no_run
//! use spotbatch::prelude::*;
//! use spotbatch::postgres::PostgresStore;
//! # struct MyJob;
//! # #[async_trait]
//! # impl Job for MyJob {
//! #     type Cursor = u64;
//! #     type State = ();
//! #     async fn next_chunk(&mut self, _: &u64) -> Result<Option<Chunk<u64>>> { Ok(None) }
//! #     async fn process(&mut self, _: &Chunk<u64>, _: &mut (), _: &ChunkContext) -> Result<()> { Ok(()) }
//! # }
//!
//! # async fn f() -> Result<std::process::ExitCode> {
//! // Creates the schema and applies migrations/ if needed.
//! let store = PostgresStore::connect(&std::env::var("SPOTBATCH_STORE")?).await?;
//! let report = Runner::new("nightly-etl", MyJob)
//!     .store(store)
//!     .grace_secs(115)
//!     .run()
//!     .await;
//! # Ok(report.exit_code()) }
//! ```
//!
//! - [`PostgresStore`]: one row per job in `spotbatch_checkpoints` (the
//!   checkpoint envelope plus columns to query), one row per run in
//!   `spotbatch_runs`, one per chunk a run skipped in
//!   `spotbatch_skipped_chunks`; saves are compare-and-swap on the
//!   `version` column.
//! - [`SharedTransaction`]: the chunks' writes and the checkpoint commit in
//!   one transaction, so a SIGKILL never makes a resumed run write twice.
//! - [`TableSink`]: rows into a table, one statement per chunk, in a shared transaction.
//! - [`PostgresOptions`]: schema, migrations on/off, pool size, timeouts,
//!   retries.
//!
//! The SQL lives in the crate's top-level `migrations/` folder and is
//! embedded at compile time; to apply it yourself, turn
//! [`PostgresOptions::migrate`] off and run those files (in order) in the
//! store's schema.

mod error;
mod options;
mod sql;
mod startup;
mod store;
mod table_sink;
mod transaction;

pub use error::{ConnectError, TxError};
pub use options::{PostgresOptions, DEFAULT_SCHEMA};
pub use store::PostgresStore;
pub use table_sink::{TableSink, TableSinkError};
pub use transaction::{ChunkTx, SharedTransaction};

/// The sqlx this crate is built on, for the types [`ChunkTx`] hands out.
pub use sqlx;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every future a job or a `main` awaits must be `Send` (for
    /// `tokio::spawn` and `#[async_trait]`): this fails to compile if one is not.
    #[allow(dead_code, clippy::unwrap_used)]
    fn futures_are_send(store: PostgresStore, pool: sqlx::PgPool) {
        fn send<T: Send>(_: T) {}
        send(PostgresStore::connect(""));
        send(PostgresStore::connect_with("", PostgresOptions::default()));
        send(PostgresStore::from_pool(pool, PostgresOptions::default()));
        let tx = store.transactional().unwrap();
        send(tx.chunk());
        send(tx.check());
        send(tx.is_open());
        send(async move {
            let mut chunk = tx.chunk().await.unwrap();
            sqlx::query("SELECT 1").execute(&mut *chunk).await.unwrap();
            chunk.done().await.unwrap();
        });
    }
}
