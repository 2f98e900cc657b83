//! SharedTransaction's rules, one by one, against a real server: what is
//! committed with a checkpoint, what is rolled back, and when the run must stop.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod pg_common;

use pg_common::{admin_pool, fresh_name, pg_url, with_schema};
use spotbatch::postgres::{PostgresStore, SharedTransaction, TxError};
use spotbatch::{Checkpoint, CheckpointStore, JobKey, StoreError, Writer};
use sqlx::{AssertSqlSafe, PgPool};

struct Fixture {
    store: PostgresStore,
    tx: SharedTransaction,
    admin: PgPool,
    table: String,
    key: JobKey,
    version: u64,
}

impl Fixture {
    async fn new() -> Self {
        let schema = fresh_name("tx");
        let store = PostgresStore::connect(&with_schema(&pg_url(), &schema))
            .await
            .expect("connect");
        let admin = admin_pool().await;
        let table = format!("\"{schema}\".rows");
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY)"
        )))
        .execute(&admin)
        .await
        .expect("create table");
        let tx = store.transactional().expect("transactional");
        Self {
            store,
            tx,
            admin,
            table,
            key: JobKey::new("tx-job").expect("key"),
            version: 0,
        }
    }

    /// Writes `ids` in one chunk; `done` or not.
    async fn chunk(&self, ids: &[i64], done: bool) -> Result<(), TxError> {
        let mut chunk = self.tx.chunk().await?;
        for id in ids {
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {} VALUES ($1)",
                self.table
            )))
            .bind(id)
            .execute(&mut *chunk)
            .await
            .map_err(|source| TxError::Sql {
                store: String::new(),
                source,
            })?;
        }
        if done {
            chunk.done().await?;
        }
        Ok(())
    }

    /// Saves the next checkpoint through the transaction's store.
    async fn save(&mut self) -> Result<(), StoreError> {
        let mut c = Checkpoint::new(self.key.clone(), Writer::this_process());
        c.version = self.version + 1;
        let expected = (self.version > 0).then_some(self.version);
        self.tx.store().save(&c, expected).await?;
        self.version += 1;
        Ok(())
    }

    /// The committed ids, as another session sees them.
    async fn committed(&self) -> Vec<i64> {
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT id FROM {} ORDER BY id",
            self.table
        )))
        .fetch_all(&self.admin)
        .await
        .expect("committed rows")
    }
}

#[tokio::test]
async fn writes_commit_with_the_checkpoint_and_not_before() {
    let mut f = Fixture::new().await;
    f.chunk(&[1, 2], true).await.expect("chunk 1");
    f.chunk(&[3], true).await.expect("chunk 2");
    assert!(f.tx.is_open().await);
    assert_eq!(
        f.committed().await,
        Vec::<i64>::new(),
        "visible before the checkpoint"
    );
    f.save().await.expect("save");
    assert_eq!(f.committed().await, [1, 2, 3]);
    assert!(!f.tx.is_open().await);
    // A save with nothing open is a plain save.
    f.save().await.expect("save without writes");
    assert_eq!(
        f.store.load(&f.key).await.expect("load").map(|c| c.version),
        Some(2)
    );
}

#[tokio::test]
async fn an_unfinished_chunk_is_rolled_back_before_the_save() {
    let mut f = Fixture::new().await;
    f.chunk(&[1], true).await.expect("finished chunk");
    f.chunk(&[2], false).await.expect("chunk left without done");
    f.save().await.expect("save");
    assert_eq!(f.committed().await, [1]);

    // A chunk whose statement failed (duplicate key) is rolled back too, and
    // the transaction goes on.
    f.chunk(&[3], true).await.expect("chunk");
    let err = f.chunk(&[4, 1], true).await.expect_err("duplicate");
    assert!(matches!(err, TxError::Sql { .. }), "{err}");
    f.check().await;
    f.save().await.expect("save after a failed chunk");
    assert_eq!(f.committed().await, [1, 3]);
}

#[tokio::test]
async fn a_failed_first_chunk_rolls_back_only_itself() {
    let mut f = Fixture::new().await;
    // The first chunk after a checkpoint has no savepoint: failing, it takes
    // the transaction (which holds nothing else) with it.
    let err = f.chunk(&[1, 1], true).await.expect_err("duplicate");
    assert!(matches!(err, TxError::Sql { .. }), "{err}");
    f.chunk(&[2], true)
        .await
        .expect("chunk after the failed one");
    // A middle chunk fails at its savepoint; the chunks around it stay.
    f.chunk(&[3], false).await.expect("chunk left without done");
    f.chunk(&[4], true)
        .await
        .expect("chunk after the abandoned one");
    f.save().await.expect("save");
    assert_eq!(f.committed().await, [2, 4]);
    // And again, the failed first chunk followed by the save alone.
    f.chunk(&[5], false).await.expect("chunk left without done");
    assert!(f.tx.is_open().await);
    f.save().await.expect("save after the only chunk failed");
    assert!(!f.tx.is_open().await);
    assert_eq!(f.committed().await, [2, 4]);
    assert_eq!(
        f.store.load(&f.key).await.expect("load").map(|c| c.version),
        Some(2)
    );
}

#[tokio::test]
async fn a_chunk_that_ignores_a_failed_statement_loses_the_transaction() {
    for next in ["chunk", "check", "save"] {
        let mut f = Fixture::new().await;
        f.save().await.expect("first save");
        f.chunk(&[1], true).await.expect("chunk");
        {
            let mut chunk = f.tx.chunk().await.expect("chunk");
            sqlx::query(AssertSqlSafe(format!("INSERT INTO {} VALUES (2)", f.table)))
                .execute(&mut *chunk)
                .await
                .expect("insert");
            // Fails (duplicate key); the job ignores it and calls done.
            let ignored = sqlx::query(AssertSqlSafe(format!("INSERT INTO {} VALUES (1)", f.table)))
                .execute(&mut *chunk)
                .await;
            assert!(ignored.is_err());
            chunk.done().await.expect("done takes no round trip");
        }
        let err = match next {
            "chunk" => f.tx.chunk().await.map(drop).expect_err("chunk").to_string(),
            "check" => f.tx.check().await.expect_err("check").to_string(),
            _ => f.save().await.expect_err("save").to_string(),
        };
        assert!(
            err.contains("its error was ignored") && err.contains("next run redoes them"),
            "{next}: {err}"
        );
        assert!(
            matches!(f.tx.chunk().await, Err(TxError::Lost { .. })),
            "{next}"
        );
        assert!(f.save().await.is_err(), "{next}: a save after the loss");
        assert!(f.committed().await.is_empty(), "{next}");
        assert_eq!(
            f.store.load(&f.key).await.expect("load").map(|c| c.version),
            Some(1),
            "{next}: the checkpoint moved without its writes"
        );
    }
}

#[tokio::test]
async fn a_lost_conflict_rolls_everything_back() {
    let mut f = Fixture::new().await;
    f.save().await.expect("first save");
    // Another runner advances the job.
    let mut theirs = Checkpoint::new(f.key.clone(), Writer::this_process());
    theirs.version = 2;
    f.store.save(&theirs, Some(1)).await.expect("their save");

    f.chunk(&[1, 2], true).await.expect("chunk");
    let err = f.save().await.expect_err("fenced");
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: Some(1),
                found: Some(2),
                ..
            }
        ),
        "{err}"
    );
    assert!(f.committed().await.is_empty());
    assert!(matches!(f.tx.chunk().await, Err(TxError::Lost { .. })));
}

#[tokio::test]
async fn a_dropped_connection_loses_the_transaction_for_good() {
    let mut f = Fixture::new().await;
    f.save().await.expect("first save");
    let pid: i32 = {
        let mut chunk = f.tx.chunk().await.expect("chunk");
        sqlx::query(AssertSqlSafe(format!("INSERT INTO {} VALUES (1)", f.table)))
            .execute(&mut *chunk)
            .await
            .expect("insert");
        let pid = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *chunk)
            .await
            .expect("pid");
        chunk.done().await.expect("done");
        pid
    };
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&f.admin)
        .await
        .expect("terminate");

    let err = f.tx.check().await.expect_err("lost");
    assert!(
        matches!(err, TxError::Lost { .. }) && err.to_string().contains("next run redoes them"),
        "{err}"
    );
    let err = f.save().await.expect_err("save after loss");
    // Not retried: no save through this transaction can succeed again.
    assert!(matches!(err, StoreError::Lost { .. }), "{err}");
    assert!(!err.is_transient(), "{err}");
    assert!(matches!(f.tx.chunk().await, Err(TxError::Lost { .. })));
    assert!(f.committed().await.is_empty());
    assert_eq!(
        f.store.load(&f.key).await.expect("load").map(|c| c.version),
        Some(1),
        "the checkpoint moved without its writes"
    );
}

#[tokio::test]
async fn a_job_that_commits_itself_is_refused() {
    let mut f = Fixture::new().await;
    {
        let mut chunk = f.tx.chunk().await.expect("chunk");
        sqlx::query(AssertSqlSafe(format!("INSERT INTO {} VALUES (1)", f.table)))
            .execute(&mut *chunk)
            .await
            .expect("insert");
        sqlx::query("COMMIT")
            .execute(&mut *chunk)
            .await
            .expect("commit");
    }
    let err = f.save().await.expect_err("refused");
    assert!(
        err.to_string().contains("ended the transaction itself"),
        "{err}"
    );
    assert_eq!(f.store.load(&f.key).await.expect("load"), None);
}

#[tokio::test]
async fn one_transaction_serves_one_job() {
    let mut f = Fixture::new().await;
    f.save().await.expect("binds tx-job");
    let other = Checkpoint::new(JobKey::new("other").expect("key"), Writer::this_process());
    let err =
        f.tx.store()
            .save(&other, None)
            .await
            .expect_err("other job");
    assert!(err.to_string().contains("needs its own"), "{err}");
}

impl Fixture {
    async fn check(&self) {
        self.tx.check().await.expect("check");
    }
}

impl Fixture {
    /// The checkpoints table of the fixture's schema.
    fn checkpoints(&self) -> String {
        self.table.replace(".rows", ".spotbatch_checkpoints")
    }
}

#[tokio::test]
async fn a_save_cut_off_half_way_loses_the_transaction() {
    let mut f = Fixture::new().await;
    f.save().await.expect("first save");
    f.chunk(&[1], true).await.expect("chunk");
    // Another session holds the checkpoint row, so the save's UPDATE waits
    // inside the transaction until the caller gives up on it (as the runner
    // does at the end of the grace period).
    let mut blocker = f.admin.begin().await.expect("begin");
    sqlx::query(AssertSqlSafe(format!(
        "SELECT 1 FROM {} WHERE key = $1 FOR UPDATE",
        f.checkpoints()
    )))
    .bind(f.key.as_str())
    .execute(&mut *blocker)
    .await
    .expect("lock the row");
    let cut = tokio::time::timeout(std::time::Duration::from_millis(500), f.save()).await;
    assert!(cut.is_err(), "the save was not held up: {cut:?}");
    blocker.rollback().await.expect("rollback");

    // Whether the chunk's rows committed is unknown to the store: no later
    // save may move the cursor past them.
    let err = f.save().await.expect_err("a save after a cut-off save");
    assert!(err.to_string().contains("cut off"), "{err}");
    assert!(f.committed().await.is_empty());
    assert_eq!(
        f.store.load(&f.key).await.expect("load").map(|c| c.version),
        Some(1),
        "the checkpoint moved without its writes"
    );
}

/// Chunks that hold their `ChunkTx` for longer than a third of the lease,
/// and check that the committed rows are exactly those the stored
/// checkpoint covers.
struct LongChunks {
    tx: SharedTransaction,
    store: PostgresStore,
    admin: PgPool,
    key: JobKey,
    table: String,
    chunks: u64,
}

#[spotbatch::async_trait]
impl spotbatch::Job for LongChunks {
    type Cursor = u64;
    type State = ();

    async fn next_chunk(
        &mut self,
        at: &u64,
    ) -> spotbatch::prelude::Result<Option<spotbatch::Chunk<u64>>> {
        Ok((*at < self.chunks).then(|| spotbatch::Chunk::between(*at, *at + 1)))
    }

    async fn process(
        &mut self,
        chunk: &spotbatch::Chunk<u64>,
        _: &mut (),
        _: &spotbatch::ChunkContext,
    ) -> spotbatch::prelude::Result<()> {
        let committed: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {}",
            self.table
        )))
        .fetch_one(&self.admin)
        .await?;
        let covered = match self.store.load(&self.key).await? {
            Some(c) => spotbatch::Codec::Bincode.decode::<u64>(&c.cursor)?,
            None => 0,
        };
        if u64::try_from(committed)? != covered {
            return Err(format!(
                "{committed} rows committed, the checkpoint covers {covered}: a renewal committed the chunks' writes"
            )
            .into());
        }
        let mut tx = self.tx.chunk().await?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} VALUES ($1)",
            self.table
        )))
        .bind(i64::try_from(*chunk.start())?)
        .execute(&mut *tx)
        .await?;
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        tx.done().await?;
        Ok(())
    }

    async fn flush(&mut self) -> spotbatch::prelude::Result<()> {
        Ok(self.tx.check().await?)
    }
}

#[tokio::test]
async fn the_lease_is_renewed_while_a_chunk_holds_the_transaction() {
    let f = Fixture::new().await;
    let job = LongChunks {
        tx: f.tx.clone(),
        store: f.store.clone(),
        admin: f.admin.clone(),
        key: f.key.clone(),
        table: f.table.clone(),
        chunks: 3,
    };
    // A 900 ms lease is renewed every 300 ms: twice during each chunk.
    let run = spotbatch::Runner::new(f.key.as_str(), job)
        .store(f.tx.store())
        .signals(&[])
        .checkpoint(spotbatch::Every::chunks(2))
        .lease(std::time::Duration::from_millis(900))
        .run();
    let report = tokio::time::timeout(std::time::Duration::from_secs(30), run)
        .await
        .expect("the renewal waited for the chunk's transaction: deadlock");
    assert!(report.is_complete(), "{:?}", report.outcome);
    assert_eq!(f.committed().await, [0, 1, 2]);
    let last = f
        .store
        .load(&f.key)
        .await
        .expect("load")
        .expect("a checkpoint");
    assert_eq!((last.counters.chunks, last.lease), (3, None));
    assert!(
        last.version >= 6,
        "version {}: no renewals during the chunks",
        last.version
    );
}

#[tokio::test]
async fn a_pool_of_one_connection_is_refused() {
    let schema = fresh_name("tx_pool");
    let options = spotbatch::postgres::PostgresOptions::default().max_connections(1);
    let store = PostgresStore::connect_with(&with_schema(&pg_url(), &schema), options)
        .await
        .expect("connect");
    let err = store.transactional().expect_err("a pool of one");
    assert!(
        matches!(err, TxError::PoolTooSmall { connections: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("at least 2 connections"), "{err}");
}
