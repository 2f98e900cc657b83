//! Exactly-once writes: a transaction shared by a job and the store, which
//! commits the chunks' writes together with the checkpoint that covers them.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as SyncMutex, MutexGuard as SyncGuard};

use crate::{Checkpoint, CheckpointStore, JobKey, Refusal, StoreError};
use sqlx::{AssertSqlSafe, Executor, PgConnection, Postgres, Transaction};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tracing::{debug, error, info};

use crate::postgres::error::{is_connection_lost, refusal, Failure, PgError, TxError};
use crate::postgres::sql::{Write, TX_MARK};
use crate::postgres::store::PostgresStore;

const SAVEPOINT: &str = "SAVEPOINT spotbatch_chunk";
/// Keeps the previous chunk's writes and opens the next chunk's, in one round trip.
const RELEASE_AND_SAVEPOINT: &str = "RELEASE SAVEPOINT spotbatch_chunk; SAVEPOINT spotbatch_chunk";
const ROLLBACK_CHUNK: &str = "ROLLBACK TO SAVEPOINT spotbatch_chunk";
const ENDED_BY_JOB: &str =
    "the job ended the transaction itself (COMMIT, ROLLBACK or END in its SQL): \
                            its writes may be committed without the checkpoint, or gone";
const FAILED_AFTER_DONE: &str =
    "a statement of a chunk failed and the chunk still called done (its error was ignored): \
     the transaction is aborted, so none of its chunks' writes can be committed";

/// The SQLSTATE of a database error.
fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|db| db.code())
        .map(|c| c.into_owned())
}

/// SQLSTATE 25P01 `no_active_sql_transaction`: our transaction is no more.
fn no_transaction(e: &sqlx::Error) -> bool {
    sqlstate(e).is_some_and(|c| c == "25P01")
}

/// SQLSTATE 25P02 `in_failed_sql_transaction`: a statement failed earlier in
/// the transaction, which now refuses everything but a rollback.
fn aborted(e: &sqlx::Error) -> bool {
    sqlstate(e).is_some_and(|c| c == "25P02")
}

/// Why a statement of ours on the open transaction failed.
fn failure(sql: &str, e: &sqlx::Error) -> String {
    if no_transaction(e) {
        ENDED_BY_JOB.to_owned()
    } else if aborted(e) {
        FAILED_AFTER_DONE.to_owned()
    } else {
        format!("{sql} failed: {e}")
    }
}

/// A database transaction shared by a job and its [`PostgresStore`]: the job
/// writes through it, and the store's next save commits those writes together
/// with the checkpoint that covers them. After a SIGKILL either both are in
/// the database or neither is, so a resumed run never writes a row twice.
///
/// ```no_run
/// # use spotbatch::prelude::*;
/// # use spotbatch::postgres::{PostgresStore, SharedTransaction};
/// struct CopyRows { tx: SharedTransaction, total: i64 }
///
/// #[async_trait]
/// impl Job for CopyRows {
///     type Cursor = i64; // the next source id
///     type State = ();
///
///     async fn next_chunk(&mut self, at: &i64) -> Result<Option<Chunk<i64>>> {
///         Ok((*at < self.total).then(|| Chunk::new(*at, (*at + 500).min(self.total))))
///     }
///
///     async fn process(&mut self, chunk: &Chunk<i64>, _: &mut (), _: &ChunkContext) -> Result<()> {
///         let mut tx = self.tx.chunk().await?; // BEGIN (first chunk) or SAVEPOINT
///         sqlx::query("INSERT INTO dst (id, v) SELECT id, upper(v) FROM src WHERE id >= $1 AND id < $2")
///             .bind(*chunk.start())
///             .bind(*chunk.next())
///             .execute(&mut *tx)
///             .await?;
///         tx.done().await?; // every statement succeeded: keep the chunk's writes
///         Ok(())
///     }
///
///     async fn flush(&mut self) -> Result<()> {
///         Ok(self.tx.check().await?) // stops the run at once if the transaction was lost
///     }
/// }
///
/// # async fn f() -> Result<std::process::ExitCode> {
/// let store = PostgresStore::connect("postgres://app@db/jobs").await?;
/// let tx = store.transactional()?;
/// let report = Runner::new("copy-rows", CopyRows { tx: tx.clone(), total: 1_000_000 })
///     .store(tx.store()) // this store's saves commit the transaction
///     .run()
///     .await;
/// # Ok(report.exit_code()) }
/// ```
///
/// # How it works
///
/// - [`chunk`](Self::chunk) begins a transaction on a pooled connection for
///   the first chunk after a checkpoint (lazily), and sets a savepoint for
///   each later chunk, then hands the connection to the chunk as a
///   [`ChunkTx`]. [`ChunkTx::done`] marks the chunk's writes as kept.
/// - Round trips: a chunk costs one of its own (the `BEGIN`, or the
///   `SAVEPOINT` together with the release of the previous chunk's) besides
///   its statements; `done` costs none; the save costs two (the checkpoint's
///   statement and the `COMMIT`). A job that checkpoints after every chunk
///   therefore makes as many round trips as `BEGIN`, its statements,
///   `UPDATE`, `COMMIT` by hand.
/// - The runner saves a checkpoint every few chunks. That save, through
///   [`store`](Self::store), runs the checkpoint's compare-and-swap `UPDATE`
///   inside the same transaction and `COMMIT`s: the writes of every chunk
///   since the last checkpoint and the cursor after them become durable at
///   the same instant. Between checkpoints the transaction stays open (and
///   holds its row locks).
/// - A chunk that failed or was abandoned (its `ChunkTx` dropped without
///   `done`) is rolled back to its savepoint before the next chunk or save
///   (the transaction's first chunk, which has none, by rolling back the
///   transaction, which holds nothing else), so the checkpoint, which stays
///   at the last finished chunk, commits only the finished chunks' writes.
/// - A failed compare-and-swap (another runner advanced the job) rolls back
///   everything and the save fails with [`StoreError::Conflict`].
/// - Lease renewals during a chunk ([`CheckpointStore::renew`](spotbatch::CheckpointStore::renew))
///   are plain saves on another pooled connection: they carry the last
///   committed cursor and touch none of the chunks' writes. The transaction
///   runs at `READ COMMITTED` so that its compare-and-swap sees them.
///   [`PostgresStore::transactional`] refuses a pool of fewer than two
///   connections.
/// - A save cut off before its commit is known (the runner gave up on it at
///   the end of the grace period) counts the transaction as lost.
/// - If the transaction is lost (the connection dropped, the server
///   restarted, the commit failed, a chunk ignored a failed statement and
///   called `done`), its writes are gone together with the
///   cursor advance they belonged to: every later `chunk`, `check` and save
///   fails (a save with [`StoreError::Lost`], which the runner does not
///   retry: it records the failure on the last checkpoint with a plain save
///   and ends the run), and the run must stop. The next run resumes from the last
///   committed checkpoint and redoes those chunks. A commit whose reply was
///   lost is checked: if the checkpoint it wrote is there, it counts as done.
///
/// # Rules for the job
///
/// - **Never commit or roll back yourself** (no `COMMIT`, `ROLLBACK` or `END`
///   in your SQL): the store commits. A save that finds the transaction ended
///   refuses to save and reports the transaction lost, because it cannot tell
///   whether your writes were committed (they would be written twice) or
///   rolled back (they would be missing). Nested `sqlx` transactions
///   (`(&mut *tx).begin()`) are fine: they are savepoints.
/// - Do all of a chunk's writes through the `ChunkTx`, and call
///   [`done`](ChunkTx::done) as the chunk's last step, just before `process`
///   returns `Ok`, and only when every statement succeeded: propagate their
///   errors (`?`), so that the chunk fails and is rolled back alone. A failed
///   statement aborts the transaction (Postgres refuses everything after it
///   but a rollback); a chunk that ignores the error and calls `done` makes
///   the transaction lost, detected by the next chunk, `check` or save. To
///   tolerate a failing statement, run it in a nested transaction
///   (`(&mut *tx).begin()`), whose rollback leaves the chunk usable.
/// - Call [`check`](Self::check) in [`Job::flush`](spotbatch::Job::flush):
///   a lost transaction then fails the flush, a job error that names it,
///   before any save is tried (outcome failed).
/// - Reads may use the transaction (they see its uncommitted writes) or the
///   pool ([`PostgresStore::pool`]).
/// - The transaction stays open between checkpoints: choose a checkpoint
///   policy whose interval your database tolerates for an open transaction
///   (row locks, `idle_in_transaction_session_timeout`, vacuum).
/// - One `SharedTransaction` serves one job key: the first save binds it,
///   and saves of another key through its store fail.
#[derive(Clone)]
pub struct SharedTransaction {
    shared: Arc<TxShared>,
}

impl std::fmt::Debug for SharedTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTransaction")
            .field("store", &self.shared.store.inner.location)
            .field("key", &*lock(&self.shared.key))
            .field("lost", &*lock(&self.shared.lost))
            .finish_non_exhaustive()
    }
}

pub(crate) struct TxShared {
    /// The store without a transaction: its pool, names and retry policy.
    store: PostgresStore,
    state: Mutex<TxState>,
    /// A `ChunkTx` was handed out and has not called `done` yet.
    chunk_open: AtomicBool,
    /// Why the transaction was lost; set once, for good.
    lost: SyncMutex<Option<String>>,
    /// The job whose saves commit the transaction.
    key: SyncMutex<Option<JobKey>>,
}

#[derive(Default)]
struct TxState {
    tx: Option<Transaction<'static, Postgres>>,
    /// The value of `spotbatch.tx` inside the open transaction.
    mark: String,
    /// Chunks whose writes the open transaction holds.
    chunks: u64,
    /// Our savepoint `spotbatch_chunk` is set in the open transaction (the
    /// last chunk's, kept until the next chunk releases it or the commit).
    savepoint: bool,
    /// The open chunk began at its own savepoint. When it did not, it is the
    /// transaction's first chunk, and undoing it rolls back the transaction.
    chunk_savepoint: bool,
}

/// A poisoned std mutex still holds consistent data here (plain values, set in one step).
fn lock<T>(m: &SyncMutex<T>) -> SyncGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for TxShared {
    fn drop(&mut self) {
        let state = self.state.get_mut();
        if state.tx.is_some() && state.chunks > 0 {
            error!(
                store = %self.store.inner.location,
                chunks = state.chunks,
                "a SharedTransaction was dropped with the uncommitted writes of {} chunk(s): they are rolled back. \
                 Was the runner given SharedTransaction::store()?",
                state.chunks
            );
        }
    }
}

impl SharedTransaction {
    pub(crate) fn new(store: PostgresStore) -> Self {
        Self {
            shared: Arc::new(TxShared {
                store,
                state: Mutex::new(TxState::default()),
                chunk_open: AtomicBool::new(false),
                lost: SyncMutex::new(None),
                key: SyncMutex::new(None),
            }),
        }
    }

    /// The store to give the runner: its saves commit this transaction.
    pub fn store(&self) -> PostgresStore {
        PostgresStore {
            inner: self.shared.store.inner.clone(),
            tx: Some(self.shared.clone()),
        }
    }

    /// Opens this chunk's writes. The first chunk after a checkpoint begins
    /// the transaction (one round trip, no savepoint: undoing that chunk rolls
    /// back the transaction, which holds nothing else); each later chunk sets
    /// a savepoint, releasing the previous chunk's in the same round trip.
    /// Write through the returned [`ChunkTx`] and call [`ChunkTx::done`] when
    /// the chunk's writes are complete.
    ///
    /// # Errors
    ///
    /// [`TxError::Lost`] once the transaction was lost, or when it breaks
    /// now (the run must stop), for instance because a statement of an
    /// earlier chunk failed although that chunk called `done`;
    /// [`TxError::Begin`] when no transaction can be begun (nothing is lost:
    /// none was open).
    pub async fn chunk(&self) -> Result<ChunkTx<'_>, TxError> {
        let shared = &*self.shared;
        let mut state = shared.state.lock().await;
        shared.ensure_not_lost(&mut state)?;
        if shared.chunk_open.load(Ordering::SeqCst) {
            shared.rollback_chunk(&mut state).await?;
        }
        if state.tx.is_none() {
            shared.begin(&mut state).await?;
            state.chunk_savepoint = false;
        } else {
            let sql = if state.savepoint {
                RELEASE_AND_SAVEPOINT
            } else {
                SAVEPOINT
            };
            shared.run(&mut state, sql).await?;
            state.savepoint = true;
            state.chunk_savepoint = true;
        }
        shared.chunk_open.store(true, Ordering::SeqCst);
        state.chunks += 1;
        let conn = MutexGuard::try_map(state, |s| s.tx.as_deref_mut())
            .map_err(|_| shared.lose("internal error: no open transaction after BEGIN".into()))?;
        Ok(ChunkTx { conn, shared })
    }

    /// Fails if the transaction was lost; else makes sure it is still usable:
    /// rolls back a chunk left without [`done`](ChunkTx::done), then asks the
    /// server whether the transaction is still ours and not aborted (one
    /// round trip when a transaction is open). Call it from
    /// [`Job::flush`](spotbatch::Job::flush).
    ///
    /// # Errors
    ///
    /// [`TxError::Lost`] when the transaction is gone: the connection
    /// failed, the job ended the transaction, or a statement of a chunk that
    /// called `done` had failed.
    pub async fn check(&self) -> Result<(), TxError> {
        let shared = &*self.shared;
        let mut state = shared.state.lock().await;
        shared.ensure_not_lost(&mut state)?;
        if shared.chunk_open.load(Ordering::SeqCst) {
            shared.rollback_chunk(&mut state).await?;
        }
        if state.tx.is_some() {
            return match shared.inspect(&mut state).await {
                Inside::Ours => Ok(()),
                Inside::Aborted => {
                    state.tx = None;
                    Err(shared.lose(FAILED_AFTER_DONE.into()))
                }
                Inside::Ended => {
                    state.tx = None;
                    Err(shared.lose(ENDED_BY_JOB.into()))
                }
                Inside::Broken(e) => {
                    state.tx = None;
                    Err(shared.lose(format!("the transaction cannot be used: {e}")))
                }
            };
        }
        Ok(())
    }

    /// Whether a transaction is open (some chunk wrote since the last checkpoint).
    pub async fn is_open(&self) -> bool {
        self.shared.state.lock().await.tx.is_some()
    }
}

impl TxShared {
    fn location(&self) -> String {
        self.store.inner.location.clone()
    }

    fn key_name(&self) -> String {
        lock(&self.key)
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    /// Marks the transaction lost (for good) and returns the error to report.
    fn lose(&self, reason: String) -> TxError {
        let mut lost = lock(&self.lost);
        if lost.is_none() {
            error!(store = %self.location(), key = %self.key_name(), %reason, "chunk transaction lost; its writes were rolled back");
            *lost = Some(reason);
        }
        TxError::Lost {
            store: self.location(),
            key: self.key_name(),
            reason: lost.clone().unwrap_or_default(),
        }
    }

    /// Fails once lost, dropping (rolling back) what is left of the transaction.
    fn ensure_not_lost(&self, state: &mut TxState) -> Result<(), TxError> {
        let reason = lock(&self.lost).clone();
        match reason {
            Some(reason) => {
                state.tx = None;
                Err(TxError::Lost {
                    store: self.location(),
                    key: self.key_name(),
                    reason,
                })
            }
            None => Ok(()),
        }
    }

    async fn begin(&self, state: &mut TxState) -> Result<(), TxError> {
        let mark = uuid::Uuid::new_v4().simple().to_string();
        // READ COMMITTED whatever the server's default: the checkpoint's
        // compare-and-swap must see renewals committed on other connections
        // since the transaction began. `SET LOCAL` (a utility statement, with
        // no plan and no row to send back) rather than `set_config()`, which
        // costs a SELECT; `mark` is hex digits, safe to quote.
        let begin = format!("BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL {TX_MARK} = '{mark}'");
        let pool = &self.store.inner.pool;
        // Nothing is lost before the transaction exists: retry like any store operation.
        let tx = self
            .store
            .retrying("", "begin", |_| async {
                Ok::<_, Failure>(pool.begin_with(AssertSqlSafe(begin.clone())).await?)
            })
            .await
            .map_err(|e| TxError::Begin {
                source: Box::new(e),
            })?;
        debug!(store = %self.location(), "chunk transaction begun");
        state.tx = Some(tx);
        state.mark = mark;
        state.chunks = 0;
        state.savepoint = false;
        Ok(())
    }

    /// Runs one of our statements on the open transaction; any failure loses it.
    async fn run(&self, state: &mut TxState, sql: &'static str) -> Result<(), TxError> {
        let Some(tx) = state.tx.as_mut() else {
            return Err(self.lose(format!("internal error: no open transaction for {sql}")));
        };
        match (&mut **tx).execute(sql).await {
            Ok(_) => Ok(()),
            Err(e) => {
                state.tx = None;
                Err(self.lose(failure(sql, &e)))
            }
        }
    }

    /// What the open transaction's connection says about it.
    async fn inspect(&self, state: &mut TxState) -> Inside {
        let Some(tx) = state.tx.as_mut() else {
            return Inside::Ended;
        };
        match mark_of(tx).await {
            Ok(mark) if mark == state.mark => Inside::Ours,
            Ok(_) => Inside::Ended,
            Err(e) if aborted(&e) => Inside::Aborted,
            Err(e) => Inside::Broken(e),
        }
    }

    /// Undoes the writes of a chunk that did not call `done`: back to its
    /// savepoint, or, for the transaction's first chunk, the whole
    /// transaction (it holds nothing else, so nothing is lost).
    async fn rollback_chunk(&self, state: &mut TxState) -> Result<(), TxError> {
        if state.chunk_savepoint {
            self.run(state, ROLLBACK_CHUNK).await?;
        } else {
            match self.inspect(state).await {
                // Aborted: the chunk's statement failed, as expected here.
                Inside::Ours | Inside::Aborted | Inside::Broken(_) => {}
                Inside::Ended => {
                    state.tx = None;
                    return Err(self.lose(ENDED_BY_JOB.into()));
                }
            }
            if let Some(tx) = state.tx.take() {
                if let Err(e) = tx.rollback().await {
                    debug!(store = %self.location(), error = %e, "rolling back a transaction that held one unfinished chunk");
                }
            }
            state.savepoint = false;
        }
        self.chunk_open.store(false, Ordering::SeqCst);
        state.chunks = state.chunks.saturating_sub(1);
        debug!(store = %self.location(), "rolled back the writes of an unfinished chunk");
        Ok(())
    }

    pub(crate) fn bind_key(&self, key: &JobKey) -> Result<(), String> {
        let mut bound = lock(&self.key);
        match &*bound {
            Some(k) if k != key => Err(format!(
                "this store commits the SharedTransaction of job {k:?}; job {key:?} needs its own \
                 (PostgresStore::transactional)"
            )),
            Some(_) => Ok(()),
            None => {
                *bound = Some(key.clone());
                Ok(())
            }
        }
    }

    /// The save of the store returned by [`SharedTransaction::store`].
    pub(crate) async fn save(
        &self,
        store: &PostgresStore,
        checkpoint: &Checkpoint,
        expected: Option<u64>,
    ) -> Result<(), StoreError> {
        let key = checkpoint.job.as_str();
        self.bind_key(&checkpoint.job)
            .map_err(|e| store.refused(key, "save", Refusal::Rejected, PgError::Refused(e)))?;
        let mut state = self.state.lock().await;
        // No save through this transaction can succeed again.
        let lost = |e: TxError| StoreError::Lost {
            store: store.location(),
            key: key.to_owned(),
            operation: "save",
            source: Box::new(e),
        };
        self.ensure_not_lost(&mut state).map_err(lost)?;
        if self.chunk_open.load(Ordering::SeqCst) {
            self.rollback_chunk(&mut state).await.map_err(lost)?;
        }
        if state.tx.is_none() {
            // No chunk finished since the last checkpoint.
            return store
                .save_plain(checkpoint, expected, Write::Checkpoint)
                .await;
        }
        let mut args = store.save_args(checkpoint, expected, &state.mark, Write::Checkpoint)?;
        let chunks = state.chunks;
        let Some(mut tx) = state.tx.take() else {
            return Err(lost(
                self.lose("internal error: transaction vanished".into()),
            ));
        };
        // From here until the outcome is known, a save dropped half-way (the
        // runner gave up on it at the end of the grace period) leaves the
        // chunks' writes committed or rolled back, nobody knows which: the
        // transaction counts as lost, so no later save can commit a cursor
        // past writes that may be gone.
        let mut guard = LoseOnDrop {
            shared: self,
            armed: true,
        };
        let saved = args.query(&store.inner.sql).execute(&mut *tx).await;
        match saved.map(|done| done.rows_affected()) {
            Ok(1) => {}
            Ok(_) => {
                // Not saved: a compare-and-swap conflict, unless the mark
                // is gone (the job ended the transaction itself).
                let mark = mark_of(&mut tx).await;
                drop(tx); // rolls back every chunk's writes
                return Err(match mark {
                    Ok(mark) if mark == state.mark => {
                        self.lose(
                            "another runner saved this job first (compare-and-swap conflict)"
                                .into(),
                        );
                        let found = store.found(key).await.ok().flatten();
                        store.conflict(key, expected, found.as_ref())
                    }
                    Ok(_) => lost(self.lose(ENDED_BY_JOB.into())),
                    Err(e) => lost(self.lose(format!(
                        "the checkpoint update changed no row, and the transaction cannot be \
                         inspected: {e}"
                    ))),
                });
            }
            Err(e) => {
                drop(tx);
                let lost_tx = self.lose(if aborted(&e) {
                    FAILED_AFTER_DONE.to_owned()
                } else {
                    format!("the checkpoint update failed: {e}")
                });
                // A refusal (a constraint, a read-only database) would refuse
                // any retry too: say so, and the runner stops at once.
                return Err(match refusal(&e) {
                    Some(cause) => {
                        store.refused(key, "save", cause, PgError::Refused(lost_tx.to_string()))
                    }
                    None => lost(lost_tx),
                });
            }
        }
        let committed = tx.commit().await;
        if committed.is_ok() {
            guard.disarm();
        }
        match committed {
            Ok(()) => {
                store.committed(&mut args);
                debug!(
                    key,
                    version = args.version,
                    chunks,
                    "chunk writes committed with the checkpoint"
                );
                Ok(())
            }
            Err(e) if is_connection_lost(&e) => {
                // The commit may have happened before the connection broke:
                // look for the checkpoint it was committing.
                let landed = store
                    .retrying(key, "save", |_| async {
                        Ok::<_, Failure>(store.found(key).await?)
                    })
                    .await;
                match landed {
                    Ok(Some((version, bytes)))
                        if version == args.version && bytes == args.envelope =>
                    {
                        guard.disarm();
                        store.committed(&mut args);
                        info!(
                            key,
                            version, "the commit's reply was lost, but it committed"
                        );
                        Ok(())
                    }
                    _ => Err(lost(self.lose(format!("the commit failed: {e}")))),
                }
            }
            Err(e) => Err(lost(self.lose(format!("the commit failed: {e}")))),
        }
    }
}

/// The transaction mark on `conn` ('' outside a [`SharedTransaction`]'s transaction).
async fn mark_of(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT coalesce(current_setting('{TX_MARK}', true), '')"
    )))
    .fetch_one(conn)
    .await
}

/// What [`TxShared::inspect`] found on the open transaction's connection.
enum Inside {
    /// Our transaction, usable.
    Ours,
    /// Our transaction, aborted by a failed statement.
    Aborted,
    /// Not our transaction: the job ended it.
    Ended,
    /// The question failed (the connection, mostly).
    Broken(sqlx::Error),
}

/// Marks the transaction lost when dropped armed: a save cut off between
/// taking the transaction and learning whether it committed.
struct LoseOnDrop<'a> {
    shared: &'a TxShared,
    armed: bool,
}

impl LoseOnDrop<'_> {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for LoseOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.lose(
                "a save was cut off before its commit was known to succeed (the grace period ran \
                 out): the chunks' writes may be committed or gone"
                    .into(),
            );
        }
    }
}

/// One chunk's access to the [`SharedTransaction`]: a `&mut PgConnection`
/// (through `Deref`) inside the transaction, after the chunk's savepoint.
///
/// Run the chunk's statements on `&mut *tx` and call [`done`](Self::done)
/// at the end. Dropped without `done` (the chunk failed, or the runner
/// abandoned it), its writes are rolled back to the savepoint before the
/// next save or chunk. While it lives, the store cannot save: do not keep it
/// past `process`.
pub struct ChunkTx<'a> {
    conn: MappedMutexGuard<'a, PgConnection>,
    shared: &'a TxShared,
}

impl std::fmt::Debug for ChunkTx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkTx").finish_non_exhaustive()
    }
}

impl Deref for ChunkTx<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for ChunkTx<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

impl ChunkTx<'_> {
    /// The chunk's writes are complete: they are kept, and committed by the
    /// next checkpoint save with the cursor after this chunk.
    ///
    /// This takes no round trip: the chunk's savepoint (if it has one) is
    /// released together with the next chunk's `SAVEPOINT`, or by the commit.
    /// So `done` cannot see whether a statement of the chunk failed: call it
    /// only when every statement succeeded (propagate their errors with `?`).
    /// A chunk that ignored a failed statement and called `done` leaves the
    /// transaction aborted; the next [`chunk`](SharedTransaction::chunk),
    /// [`check`](SharedTransaction::check) or save finds it and reports the
    /// transaction lost, so nothing of it is committed.
    ///
    /// # Errors
    ///
    /// None today; the `Result` leaves room for a check that needs the server.
    pub async fn done(self) -> Result<(), TxError> {
        self.shared.chunk_open.store(false, Ordering::SeqCst);
        Ok(())
    }
}
