//! The migrations of `migrations/`: applied to an empty database at start-up,
//! idempotent on later starts, serialised between tasks starting at once.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod pg_common;

use pg_common::{admin_pool, fresh_name, pg_url, with_database, with_schema};
use spotbatch::postgres::{ConnectError, PostgresOptions, PostgresStore};
use spotbatch::{Checkpoint, CheckpointStore, JobKey, Refusal, Writer};
use sqlx::PgPool;

/// The number of migration files in the crate's `migrations/`.
fn migration_files() -> i64 {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let n = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    i64::try_from(n).expect("count")
}

/// A new, empty database on the test server, dropped by `drop_database`.
async fn create_database(admin: &PgPool) -> String {
    let name = fresh_name("db");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(admin)
        .await
        .expect("create database");
    name
}

async fn drop_database(admin: &PgPool, name: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{name}\" WITH (FORCE)"
    )))
    .execute(admin)
    .await
    .expect("drop database");
}

async fn tables(url: &str, schema: &str) -> Vec<String> {
    let pool = PgPool::connect(url).await.expect("connect");
    let names = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = $1 ORDER BY table_name",
    )
    .bind(schema)
    .fetch_all(&pool)
    .await
    .expect("tables");
    pool.close().await;
    names
}

async fn applied(url: &str, schema: &str) -> Vec<(i64, bool)> {
    let pool = PgPool::connect(url).await.expect("connect");
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT version, success FROM \"{}\"._spotbatch_migrations ORDER BY version",
        schema.replace('"', "\"\"")
    )))
    .fetch_all(&pool)
    .await
    .expect("applied migrations");
    pool.close().await;
    rows
}

#[tokio::test]
async fn apply_to_an_empty_database_and_are_idempotent() {
    let admin = admin_pool().await;
    let db = create_database(&admin).await;
    let url = with_database(&pg_url(), &db);
    assert!(tables(&url, "public").await.is_empty());

    let store = PostgresStore::connect(&url).await.expect("first start");
    assert_eq!(
        tables(&url, "public").await,
        [
            "_spotbatch_migrations",
            "spotbatch_checkpoints",
            "spotbatch_runs",
            "spotbatch_skipped_chunks"
        ]
    );
    let first = applied(&url, "public").await;
    assert_eq!(first.len() as i64, migration_files());
    assert!(first.iter().all(|(_, ok)| *ok), "{first:?}");
    let key = JobKey::new("survives-restarts").expect("key");
    store
        .save(&Checkpoint::new(key.clone(), Writer::this_process()), None)
        .await
        .expect("save");

    // A second start changes nothing and keeps the data.
    let again = PostgresStore::connect(&url).await.expect("second start");
    assert_eq!(applied(&url, "public").await, first);
    assert!(again.load(&key).await.expect("load").is_some());

    // A named schema is created, with its own tables and migration record.
    let schema = "Batch \"jobs\"";
    let named = with_schema(&url, "Batch%20%22jobs%22");
    let store = PostgresStore::connect(&named).await.expect("named schema");
    assert_eq!(store.schema(), schema);
    assert_eq!(applied(&url, schema).await, first);
    assert_eq!(store.load(&key).await.expect("load"), None);
    drop_database(&admin, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_starting_at_once_take_turns() {
    let admin = admin_pool().await;
    let db = create_database(&admin).await;
    let url = with_database(&pg_url(), &db);
    let starts: Vec<_> = (0..6)
        .map(|_| {
            let url = with_schema(&url, "racing");
            tokio::spawn(async move { PostgresStore::connect(&url).await.map(|_| ()) })
        })
        .collect();
    for start in starts {
        start
            .await
            .expect("task")
            .expect("a concurrent start failed");
    }
    assert_eq!(
        applied(&url, "racing").await.len() as i64,
        migration_files()
    );
    drop_database(&admin, &db).await;
}

#[tokio::test]
async fn opting_out_leaves_the_schema_alone() {
    let schema = fresh_name("nomigrate");
    let store = PostgresStore::connect_with(
        &with_schema(&pg_url(), &schema),
        PostgresOptions::default().migrate(false),
    )
    .await
    .expect("connect without migrating");
    assert!(tables(&pg_url(), &schema).await.is_empty());
    let err = store
        .load(&JobKey::new("x").expect("key"))
        .await
        .expect_err("no tables");
    // Retrying cannot create the tables: a refusal, not retried.
    assert_eq!(err.refusal(), Some(Refusal::Location), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

async fn schema_exists(url: &str, schema: &str) -> bool {
    let pool = PgPool::connect(url).await.expect("connect");
    let found = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(&pool)
        .await
        .expect("pg_namespace");
    pool.close().await;
    found
}

/// With `create` off (the `spotbatch` command's reading commands), a
/// schema without the store is refused naming the table, and nothing is
/// created; a store that exists opens as usual.
#[tokio::test]
async fn a_store_that_must_exist_is_refused_when_missing_and_nothing_is_created() {
    let schema = fresh_name("missing");
    let url = with_schema(&pg_url(), &schema);
    let must_exist = PostgresOptions::default().create(false);
    let table = format!("\"{schema}\".spotbatch_checkpoints");

    let err = PostgresStore::connect_with(&url, must_exist.clone())
        .await
        .expect_err("no such schema");
    assert!(matches!(err, ConnectError::Missing { .. }), "{err}");
    assert_eq!(err.refusal(), Some(Refusal::Location), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("there is no table {table}")),
        "{err}"
    );
    let pool = PgPool::connect(&pg_url()).await.expect("connect");
    let err = PostgresStore::from_pool(pool.clone(), must_exist.clone().schema(&schema))
        .await
        .expect_err("no such schema");
    assert!(matches!(err, ConnectError::Missing { .. }), "{err}");

    let err = spotbatch::open_existing_store(&url)
        .await
        .expect_err("no such schema");
    let text = err.to_string();
    assert!(
        matches!(&err, spotbatch::Error::Store(e) if e.refusal() == Some(Refusal::Location)),
        "{err:?}"
    );
    assert!(
        text.contains(&format!("there is no table {table}")),
        "{text}"
    );
    assert!(
        !schema_exists(&pg_url(), &schema).await,
        "the schema was created"
    );

    // An existing schema without the store's table: the same.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
        .execute(&pool)
        .await
        .expect("create schema");
    let err = PostgresStore::connect_with(&url, must_exist.clone())
        .await
        .expect_err("no table");
    assert!(matches!(err, ConnectError::Missing { .. }), "{err}");
    assert!(tables(&pg_url(), &schema).await.is_empty());

    // Once a run created it, it opens.
    PostgresStore::connect(&url).await.expect("create it");
    let store = PostgresStore::connect_with(&url, must_exist.clone())
        .await
        .expect("it exists");
    assert_eq!(
        store
            .load(&JobKey::new("x").expect("key"))
            .await
            .expect("load"),
        None
    );
    PostgresStore::from_pool(pool.clone(), must_exist.schema(&schema))
        .await
        .expect("it exists");
    assert!(spotbatch::open_existing_store(&url).await.is_ok());
    pool.close().await;
}

/// Every save changes `updated_at`, the counters, the envelope and the
/// lease: an index on any of them would keep saves from being heap-only
/// (HOT) updates, each adding index entries. Only `key` (never changes) and
/// `status` (changes when a run ends) may be indexed.
#[tokio::test]
async fn saves_change_no_indexed_column() {
    let schema = fresh_name("hot");
    let store = PostgresStore::connect(&with_schema(&pg_url(), &schema))
        .await
        .expect("connect");
    let indexed: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT a.attname::text FROM pg_index i \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
         WHERE i.indrelid = format('%I.spotbatch_checkpoints', $1::text)::regclass \
         ORDER BY 1",
    )
    .bind(&schema)
    .fetch_all(store.pool())
    .await
    .expect("indexed columns");
    assert_eq!(indexed, ["key", "status"]);
    let expressions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_index \
         WHERE indrelid = format('%I.spotbatch_checkpoints', $1::text)::regclass \
           AND (indexprs IS NOT NULL OR indpred IS NOT NULL)",
    )
    .bind(&schema)
    .fetch_one(store.pool())
    .await
    .expect("expression indexes");
    assert_eq!(
        expressions, 0,
        "an expression or partial index may cover any column"
    );
}

/// A store at migration 0003 with rows in it (0004 to 0006 undone by hand)
/// takes them at its next start: the rows stay as they are, a run's last
/// checkpoint may be unknown (NULL) from then on, the checkpoint row's
/// `status` and `version` are still checked, and runs recorded before count
/// no skipped chunks.
#[tokio::test]
async fn a_store_at_0003_upgrades_with_its_rows() {
    let schema = fresh_name("upgrade");
    let url = with_schema(&pg_url(), &schema);
    let store = PostgresStore::connect(&url).await.expect("first start");
    let key = JobKey::new("old-job").expect("key");
    store
        .save(&Checkpoint::new(key.clone(), Writer::this_process()), None)
        .await
        .expect("save");
    let s = format!("\"{schema}\"");
    let pool = store.pool().clone();
    for sql in [
        format!("DELETE FROM {s}._spotbatch_migrations WHERE version >= 4"),
        format!("DROP TABLE {s}.spotbatch_skipped_chunks"),
        format!("ALTER TABLE {s}.spotbatch_runs DROP COLUMN skipped"),
        format!(
            "ALTER TABLE {s}.spotbatch_runs ALTER COLUMN last_saved_at SET NOT NULL, \
             ALTER COLUMN last_version SET NOT NULL"
        ),
        format!(
            "ALTER TABLE {s}.spotbatch_checkpoints ALTER COLUMN status TYPE text, \
             ALTER COLUMN version TYPE bigint, \
             ADD CONSTRAINT spotbatch_checkpoints_version_check CHECK (version >= 1), \
             ADD CONSTRAINT spotbatch_checkpoints_status_check \
                 CHECK (status IN ('running', 'interrupted', 'completed', 'failed')), \
             ADD CONSTRAINT spotbatch_checkpoints_lease_whole \
                 CHECK ((lease_owner IS NULL) = (lease_expires_at IS NULL))"
        ),
        format!("DROP DOMAIN {s}.spotbatch_status"),
        format!("DROP DOMAIN {s}.spotbatch_version"),
        format!(
            "INSERT INTO {s}.spotbatch_runs VALUES ('00000000-0000-4000-8000-000000000001', \
             'old-job', '2026-01-01Z', NULL, 'running', 'running', NULL, 7, 'host', NULL, \
             '2026-01-01 00:01Z', 3)"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .expect("back to 0003");
    }
    assert_eq!(applied(&pg_url(), &schema).await.len(), 3);

    let store = PostgresStore::connect(&url)
        .await
        .expect("start after an upgrade");
    assert_eq!(
        applied(&pg_url(), &schema).await.len() as i64,
        migration_files()
    );
    let row: (String, i64, Option<i64>, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT job_key, chunks, last_version, skipped FROM {s}.spotbatch_runs"
    )))
    .fetch_one(&pool)
    .await
    .expect("the row");
    assert_eq!(row, ("old-job".into(), 7, Some(3), 0));
    let nullable: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = $1 AND table_name = 'spotbatch_runs' AND is_nullable = 'YES' \
         ORDER BY 1",
    )
    .bind(&schema)
    .fetch_all(&pool)
    .await
    .expect("columns");
    assert_eq!(
        nullable,
        [
            "ended_at",
            "interruption_source",
            "last_saved_at",
            "last_version",
            "writer_task"
        ]
    );
    let loaded = store
        .load(&key)
        .await
        .expect("load")
        .expect("the checkpoint");
    assert_eq!(loaded.version, 1);
    checks_hold(&pool, &schema).await;
}

/// Hand edits of the checkpoint row that break its `status` or `version`
/// are refused.
async fn checks_hold(pool: &PgPool, schema: &str) {
    for (set, check) in [
        ("status = 'paused'", "spotbatch_status_check"),
        ("version = 0", "spotbatch_version_check"),
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE \"{schema}\".spotbatch_checkpoints SET {set}"
        )))
        .execute(pool)
        .await
        .expect_err(set);
        assert!(err.to_string().contains(check), "{set}: {err}");
    }
}

#[tokio::test]
async fn the_checkpoint_row_is_checked() {
    let schema = fresh_name("checks");
    let store = PostgresStore::connect(&with_schema(&pg_url(), &schema))
        .await
        .expect("connect");
    store
        .save(
            &Checkpoint::new(JobKey::new("checked").expect("key"), Writer::this_process()),
            None,
        )
        .await
        .expect("save");
    checks_hold(store.pool(), &schema).await;
}
