//! `PostgresStore`: start-up (connect, migrate) and the `CheckpointStore` operations.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::{
    Checkpoint, CheckpointError, CheckpointStore, JobKey, Listing, Refusal, Status, StoreError,
    Summary, Writer,
};
use async_trait::async_trait;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};
use tracing::{debug, info, warn};

use crate::postgres::error::{is_transient, refusal, ConnectError, Failure, PgError, TxError};
use crate::postgres::options::{describe, parse_url, redact, PostgresOptions};
use crate::postgres::sql::{Queries, SaveArgs, Write, Written};
use crate::postgres::startup::{
    acquire_retrying, check_exists, connect_retrying, migrate, retry_backoff,
};
use crate::postgres::transaction::{SharedTransaction, TxShared};

/// Checkpoints in PostgreSQL: one row per job in `spotbatch_checkpoints`,
/// one row per run in `spotbatch_runs` and one per chunk a run skipped in
/// `spotbatch_skipped_chunks`, in the schema of your choice.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use spotbatch::postgres::PostgresStore;
///
/// // Applies migrations/ at start-up, under sqlx's advisory lock.
/// let store = PostgresStore::connect("postgres://app:secret@db:5432/jobs?schema=batch").await?;
/// # Ok(()) }
/// ```
///
/// # Compare-and-swap
///
/// A save is one statement: `UPDATE … WHERE key = $1 AND version = $expected`
/// (or, to create, `INSERT … ON CONFLICT (key) DO NOTHING`), and the number
/// of rows it changed says whether it won. Postgres row locks make concurrent
/// saves of one key take turns, and each re-reads the row it waited for, so of
/// many saves expecting one version exactly one wins; the others get
/// [`StoreError::Conflict`] with the version they found and its writer (read
/// from the row's envelope). `delete` is the same compare-and-swap on
/// `version`.
///
/// # Durability
///
/// `save` returns `Ok` once the statement's transaction has committed, which
/// with the server's default `synchronous_commit = on` means its WAL is
/// flushed to disk (and, with synchronous replication, to a standby). The
/// envelope is written whole or not at all, like any row.
///
/// # What is stored
///
/// The `envelope` column holds exactly [`Checkpoint::encode`]: the same bytes
/// as the file and S3 stores, so a checkpoint can be exported from one store
/// and imported into another. Every other column mirrors a field of it for
/// SQL queries (status, counters, timestamps, writer, lease); `load` trusts
/// only the envelope and checks its checksum, its job key and that the
/// `version` column agrees with it.
///
/// The same statement writes the `spotbatch_runs` rows whose record changed
/// since this store's last committed save of the job (all of them the first
/// time, and after a save whose outcome it did not learn): a run's start and
/// end, the checkpoint a lease renewal ([`renew`](CheckpointStore::renew))
/// renews, a run found killed, whose row it completes from the checkpoint
/// row the killed run wrote. A save of a run's progress writes the
/// checkpoint row alone. A row's last checkpoint is always one its own run
/// saved (the guide's `docs/stores.md`, "Tables", has the columns).
///
/// The same statement also inserts a `spotbatch_skipped_chunks` row for
/// each [skipped chunk](Checkpoint::skipped) the checkpoint is the first to
/// hold (every one, on this store's first save of the job; a chunk already
/// recorded keeps its row): its run, job, start and next cursor as text,
/// items, attempts, error and time. Rows are never updated or deleted by
/// the store, so a chunk a redrive did stays in the history of the run that
/// skipped it. The chunks skipped in the last day, with their errors:
///
/// ```sql
/// SELECT job_key, skipped_at, start_cursor, next_cursor, attempts, error, run_id
/// FROM spotbatch_skipped_chunks
/// WHERE skipped_at > now() - interval '1 day'
/// ORDER BY skipped_at;
/// ```
///
/// Only `key` and `status` are indexed, so a save rewrites its row in place
/// (a heap-only update, with no new index entries).
///
/// `list` reads the columns, not the envelopes: a row whose envelope was
/// damaged (edited by hand, say) is listed as its columns describe, and
/// `load` refuses it with [`StoreError::Corrupt`]. Saves and deletes compare
/// on the `version` column without reading the envelope, so one naming the
/// row's version replaces or removes a damaged envelope; any other version is
/// a [`StoreError::Conflict`].
///
/// # Connection errors
///
/// An operation that fails because the connection or the server went away
/// (I/O errors, SQLSTATE class 08, `57P01`–`57P03`, pool timeouts, statement
/// timeouts, serialization failures) is retried with exponential backoff and
/// jitter for [`PostgresOptions::retry_for`]; a save retried after a lost reply that
/// finds its own bytes stored counts as done. What still fails is a
/// [`StoreError::Io`], which the runner treats as transient: it warns about a
/// missed periodic checkpoint and goes on, and retries the final one until the
/// grace period ends.
///
/// A database error that retrying cannot fix is not retried: a missing
/// database, schema or table, a failed login or a missing privilege, a
/// read-only database, a full disk, data or a statement the server rejects
/// (a constraint, a value out of range) is a [`StoreError::Refused`] (at
/// start-up, [`ConnectError::Refused`] or a refused migration), on which the
/// runner stops at once. The SQLSTATEs of each [`Refusal`] are in
/// [the guide](https://github.com/spotbatch/spotbatch/blob/main/docs/stores.md#errors-that-retrying-cannot-fix).
///
/// # Exactly-once writes
///
/// [`transactional`](Self::transactional) gives a job a transaction that the
/// store commits together with its checkpoint; see [`SharedTransaction`].
#[derive(Clone)]
pub struct PostgresStore {
    pub(crate) inner: Arc<Inner>,
    pub(crate) tx: Option<Arc<TxShared>>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    pub(crate) location: String,
    pub(crate) schema: String,
    pub(crate) sql: Queries,
    pub(crate) options: PostgresOptions,
    /// Per job key, the run records and skipped chunks the tables hold
    /// since this store's last save of the job committed, so that the next
    /// save writes only those that changed or are new. A save takes its
    /// key's entry and puts it back, updated, only once it knows it
    /// committed: after any other outcome (an error, a conflict, a save cut
    /// off) the next save writes every record again.
    written: Mutex<HashMap<String, Written>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("location", &self.inner.location)
            .field("transactional", &self.tx.is_some())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the server a URL names, with the default [`PostgresOptions`],
    /// and applies the migrations.
    ///
    /// `postgres://user:password@host:port/database?schema=name&sslmode=require`:
    /// `schema` (default `public`) is the store's own parameter; every other
    /// parameter is sqlx's (`sslmode`, `sslrootcert`, `application_name`,
    /// `options`…). The schema is created if it does not exist.
    ///
    /// # Errors
    ///
    /// [`ConnectError`] naming the URL with its password hidden: a malformed
    /// URL, a server that stays unreachable for [`PostgresOptions::retry_for`],
    /// a refused login, or a failed migration.
    pub async fn connect(url: &str) -> Result<Self, ConnectError> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// [`connect`](Self::connect) with options; a `schema` in the URL
    /// overrides [`PostgresOptions::schema`].
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect), [`ConnectError::BadOptions`], and
    /// [`ConnectError::Missing`] when [`PostgresOptions::create`] is off and
    /// the schema has no store.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, ConnectError> {
        let parsed = parse_url(url)?;
        let mut options = options;
        if let Some(schema) = parsed.schema {
            options.schema = schema;
        }
        let location = redact(&parsed.stripped, Some(&options.schema));
        options.check(&location)?;
        let mut connect = parsed.connect;
        if connect.get_application_name().is_none() {
            connect = connect.application_name("spotbatch");
        }

        // One connection first: it proves the server is there and the login
        // works, with an error that says so where a pool would only time out.
        let mut first = connect_retrying(&connect, &options, &location).await?;
        let exists = if options.create {
            Ok(())
        } else {
            check_exists(&mut first, &options.schema, &location).await
        };
        if let Err(e) = first.close().await {
            debug!(error = %e, "closing the first connection");
        }
        exists?;
        if options.migrate {
            migrate(connect.clone(), &options, &location).await?;
        }

        let mut pooled = connect;
        if let Some(timeout) = options.statement_timeout {
            pooled = pooled.options([("statement_timeout", format!("{}", timeout.as_millis()))]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .min_connections(options.min_connections)
            .acquire_timeout(options.connect_timeout)
            .connect_lazy_with(pooled);
        info!(store = %location, "Postgres checkpoint store ready");
        Ok(Self::assemble(pool, location, options))
    }

    /// A store on a pool you built (your own TLS, auth or pool settings).
    /// Applies the migrations unless `options.migrate` is off. The pool's
    /// connections keep their own `statement_timeout` (the option is not applied).
    ///
    /// # Errors
    ///
    /// [`ConnectError`]: bad options, no connection within
    /// [`PostgresOptions::retry_for`], a failed migration, or
    /// [`ConnectError::Missing`] when [`PostgresOptions::create`] is off and
    /// the schema has no store.
    pub async fn from_pool(pool: PgPool, options: PostgresOptions) -> Result<Self, ConnectError> {
        let location = describe(&pool.connect_options(), &options.schema);
        options.check(&location)?;
        if options.migrate || !options.create {
            // Proves the server is there, with a clear error if not.
            let mut conn = acquire_retrying(&pool, &options, &location).await?;
            if !options.create {
                check_exists(&mut conn, &options.schema, &location).await?;
            }
        }
        if options.migrate {
            migrate((*pool.connect_options()).clone(), &options, &location).await?;
        }
        Ok(Self::assemble(pool, location, options))
    }

    fn assemble(pool: PgPool, location: String, options: PostgresOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                sql: Queries::new(&options.schema),
                schema: options.schema.clone(),
                location,
                options,
                written: Mutex::default(),
            }),
            tx: None,
        }
    }

    /// The pool, for your own queries (it is the store's: do not close it
    /// while the store is in use).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The schema holding the store's tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// A transaction shared by a job and this store, for exactly-once writes:
    /// see [`SharedTransaction`]. Give the runner [`SharedTransaction::store`].
    ///
    /// # Errors
    ///
    /// [`TxError::PoolTooSmall`] when the pool has fewer than 2 connections:
    /// the open transaction keeps one while chunks run, and lease renewals
    /// need another.
    pub fn transactional(&self) -> Result<SharedTransaction, TxError> {
        let connections = self.inner.pool.options().get_max_connections();
        if connections < 2 {
            return Err(TxError::PoolTooSmall {
                store: self.inner.location.clone(),
                connections,
            });
        }
        Ok(SharedTransaction::new(self.without_transaction()))
    }

    pub(crate) fn without_transaction(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            tx: None,
        }
    }

    pub(crate) fn io_error(
        &self,
        key: &str,
        operation: &'static str,
        source: PgError,
    ) -> StoreError {
        StoreError::Io {
            store: self.inner.location.clone(),
            key: key.to_owned(),
            operation,
            source: Box::new(source),
        }
    }

    /// The error of `operation` on `key` that the store will not retry:
    /// [`StoreError::Refused`] for a database error that retrying cannot fix
    /// ([`refusal`]), [`StoreError::Io`] for the rest.
    fn failed(&self, key: &str, operation: &'static str, error: sqlx::Error) -> StoreError {
        match refusal(&error) {
            Some(cause) => self.refused(key, operation, cause, PgError::Sql(error)),
            None => self.io_error(key, operation, PgError::Sql(error)),
        }
    }

    /// [`StoreError::Refused`] for `operation` on `key`.
    pub(crate) fn refused(
        &self,
        key: &str,
        operation: &'static str,
        cause: Refusal,
        source: PgError,
    ) -> StoreError {
        StoreError::Refused {
            store: self.inner.location.clone(),
            key: key.to_owned(),
            operation,
            cause,
            source: Box::new(source),
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retry budget is spent.
    pub(crate) async fn retrying<T, F, Fut>(
        &self,
        key: &str,
        operation: &'static str,
        mut attempt: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut backoff = retry_backoff(&self.inner.options);
        loop {
            let error = match attempt(backoff.retries()).await {
                Ok(value) => {
                    if backoff.retries() > 0 {
                        info!(store = %self.inner.location, key, operation, retries = backoff.retries(), "store operation succeeded after retries");
                    }
                    return Ok(value);
                }
                Err(Failure::Store(e)) => return Err(e),
                Err(Failure::Sql(e)) => e,
            };
            match is_transient(&error).then(|| backoff.next_delay()).flatten() {
                Some(delay) => {
                    warn!(store = %self.inner.location, key, operation, %error, retry_in = ?delay, "Postgres unavailable; retrying");
                    tokio::time::sleep(delay).await;
                }
                None if backoff.retries() == 0 => return Err(self.failed(key, operation, error)),
                None => {
                    return Err(self.io_error(
                        key,
                        operation,
                        PgError::GaveUp(error, backoff.elapsed()),
                    ))
                }
            }
        }
    }

    fn corrupt(&self, key: &JobKey, reason: CheckpointError) -> StoreError {
        StoreError::Corrupt {
            store: self.inner.location.clone(),
            key: key.to_string(),
            path: format!(
                "table {}, row key = {:?}",
                self.inner.sql.checkpoints,
                key.as_str()
            ),
            reason: Box::new(reason),
        }
    }

    /// The values of a save of `checkpoint`, leaving out the run records
    /// the runs table holds as they are (see [`Inner::written`]).
    pub(crate) fn save_args(
        &self,
        checkpoint: &Checkpoint,
        expected: Option<u64>,
        mark: &str,
        write: Write,
    ) -> Result<SaveArgs, StoreError> {
        let key = checkpoint.job.as_str();
        let written = self.written().remove(key).unwrap_or_default();
        SaveArgs::new(checkpoint, expected, mark, write, written)
            .map_err(|e| self.refused(key, "save", Refusal::Rejected, PgError::Refused(e)))
    }

    fn written(&self) -> std::sync::MutexGuard<'_, HashMap<String, Written>> {
        // Each change is one insert or remove: a poisoned map is still sound.
        self.inner.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The save made of `args` committed: the tables hold its records.
    pub(crate) fn committed(&self, args: &mut SaveArgs) {
        let written = std::mem::take(&mut args.written);
        self.written().insert(args.key.clone(), written);
    }

    /// A save outside any shared transaction, retried on connection errors.
    pub(crate) async fn save_plain(
        &self,
        checkpoint: &Checkpoint,
        expected: Option<u64>,
        write: Write,
    ) -> Result<(), StoreError> {
        let key = checkpoint.job.as_str();
        let mut args = self.save_args(checkpoint, expected, "", write)?;
        self.save_with(key, expected, &args).await?;
        self.committed(&mut args);
        Ok(())
    }

    async fn save_with(
        &self,
        key: &str,
        expected: Option<u64>,
        args: &SaveArgs,
    ) -> Result<(), StoreError> {
        self.retrying(key, "save", |attempt| async move {
            let saved = args
                .query(&self.inner.sql)
                .execute(&self.inner.pool)
                .await?
                .rows_affected();
            if saved == 1 {
                return Ok(());
            }
            let found = self.found(key).await?;
            if attempt > 0 && found.as_ref() == Some(&(args.version, args.envelope.clone())) {
                // An earlier attempt committed but its reply was lost.
                debug!(
                    key,
                    version = args.version,
                    "save found its own earlier attempt committed"
                );
                return Ok(());
            }
            Err(self.conflict(key, expected, found.as_ref()).into())
        })
        .await
    }

    /// The stored version and envelope of `key`.
    pub(crate) async fn found(&self, key: &str) -> Result<Option<(i64, Vec<u8>)>, sqlx::Error> {
        sqlx::query_as(self.inner.sql.found.clone())
            .bind(key)
            .fetch_optional(&self.inner.pool)
            .await
    }

    /// A conflict naming the row found (`version`, `envelope`; `None`:
    /// absent), with the writer its envelope records when it can be read.
    pub(crate) fn conflict(
        &self,
        key: &str,
        expected: Option<u64>,
        found: Option<&(i64, Vec<u8>)>,
    ) -> StoreError {
        StoreError::Conflict {
            store: self.inner.location.clone(),
            key: key.to_owned(),
            expected,
            found: found.and_then(|(v, _)| u64::try_from(*v).ok()),
            found_writer: found
                .and_then(|(_, envelope)| Checkpoint::decode(envelope).ok())
                .map(|c| Box::new(c.writer)),
        }
    }

    fn summary(&self, row: ListRow, writer: &Writer) -> Listing {
        let (key, version, status, detail, updated_ms, chunks) = row;
        let unreadable = |reason: String| Listing::Unreadable {
            key: key.clone(),
            reason,
        };
        let Ok(job) = JobKey::new(key.clone()) else {
            return unreadable("the key column is not a valid job key".into());
        };
        let status = match status.as_str() {
            "running" => Status::Running,
            "completed" => Status::Completed,
            "interrupted" => Status::Interrupted { source: detail },
            "failed" => Status::Failed { message: detail },
            other => return unreadable(format!("unknown status {other:?}")),
        };
        // `Summary` has no public constructor: build it from a checkpoint
        // holding the listed columns.
        let mut c = Checkpoint::new(job, writer.clone());
        c.version = u64::try_from(version).unwrap_or_default();
        c.status = status;
        c.updated_ms = u64::try_from(updated_ms).unwrap_or_default();
        c.counters.chunks = u64::try_from(chunks).unwrap_or_default();
        Listing::Checkpoint(Summary::from(&c))
    }
}

type ListRow = (String, i64, String, String, i64, i64);

#[async_trait]
impl CheckpointStore for PostgresStore {
    fn location(&self) -> String {
        self.inner.location.clone()
    }

    async fn load(&self, key: &JobKey) -> Result<Option<Checkpoint>, StoreError> {
        let row: Option<(Vec<u8>, i64)> = self
            .retrying(key.as_str(), "load", |_| async {
                Ok(sqlx::query_as(self.inner.sql.load.clone())
                    .bind(key.as_str())
                    .fetch_optional(&self.inner.pool)
                    .await?)
            })
            .await?;
        let Some((bytes, version)) = row else {
            return Ok(None);
        };
        let checkpoint = Checkpoint::decode_for(key, &bytes).map_err(|e| self.corrupt(key, e))?;
        if i64::try_from(checkpoint.version).ok() != Some(version) {
            return Err(self.corrupt(
                key,
                CheckpointError::Malformed {
                    what: "version: the row's version column and the envelope disagree",
                },
            ));
        }
        Ok(Some(checkpoint))
    }

    async fn save(&self, checkpoint: &Checkpoint, expected: Option<u64>) -> Result<(), StoreError> {
        match &self.tx {
            Some(tx) => tx.save(self, checkpoint, expected).await,
            None => {
                self.save_plain(checkpoint, expected, Write::Checkpoint)
                    .await
            }
        }
    }

    /// A plain save on a pooled connection, outside the shared transaction
    /// (whose chunk may be running): the lease is renewed without committing,
    /// waiting for or touching the chunks' uncommitted writes. The run's
    /// `spotbatch_runs` row takes the checkpoint renewed, not the renewal.
    async fn renew(
        &self,
        checkpoint: &Checkpoint,
        expected: Option<u64>,
    ) -> Result<(), StoreError> {
        if let Some(tx) = &self.tx {
            tx.bind_key(&checkpoint.job).map_err(|e| {
                let key = checkpoint.job.as_str();
                self.refused(key, "save", Refusal::Rejected, PgError::Refused(e))
            })?;
        }
        self.save_plain(checkpoint, expected, Write::Renewal).await
    }

    async fn list(&self) -> Result<Vec<Listing>, StoreError> {
        let rows: Vec<ListRow> = self
            .retrying("", "list", |_| async {
                Ok(sqlx::query_as(self.inner.sql.list.clone())
                    .fetch_all(&self.inner.pool)
                    .await?)
            })
            .await?;
        let writer = Writer::this_process();
        Ok(rows
            .into_iter()
            .map(|row| self.summary(row, &writer))
            .collect())
    }

    async fn delete(&self, key: &JobKey, expected: u64) -> Result<(), StoreError> {
        let version = i64::try_from(expected).unwrap_or(i64::MAX);
        self.written().remove(key.as_str());
        self.retrying(key.as_str(), "delete", |attempt| async move {
            let deleted = sqlx::query(self.inner.sql.delete.clone())
                .bind(key.as_str())
                .bind(version)
                .execute(&self.inner.pool)
                .await?
                .rows_affected();
            if deleted == 1 {
                return Ok(());
            }
            match self.found(key.as_str()).await? {
                // An earlier attempt deleted it but its reply was lost.
                None if attempt > 0 => Ok(()),
                None => Err(StoreError::NotFound {
                    store: self.inner.location.clone(),
                    key: key.to_string(),
                }
                .into()),
                found @ Some(_) => Err(self
                    .conflict(key.as_str(), Some(expected), found.as_ref())
                    .into()),
            }
        })
        .await
    }
}
