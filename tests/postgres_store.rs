//! PostgresStore against a real server: the shared conformance suite, and
//! what is particular to rows (columns, corrupt envelopes, errors, history).

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod pg_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_common::{admin_pool, fresh_name, pg_url, with_schema};
use spotbatch::conformance::{Capabilities, Corrupter};
use spotbatch::postgres::{ConnectError, PostgresOptions, PostgresStore};
use spotbatch::{
    BoxError, Checkpoint, CheckpointStore, Codec, JobKey, Lease, Listing, RunRecord, Status,
    StoreError, Writer,
};
use sqlx::Row;

async fn fresh_store(prefix: &str) -> (PostgresStore, String) {
    let schema = fresh_name(prefix);
    let store = PostgresStore::connect(&with_schema(&pg_url(), &schema))
        .await
        .expect("connect");
    (store, schema)
}

fn key(s: &str) -> JobKey {
    JobKey::new(s).expect("key")
}

/// Damages envelopes with `UPDATE … SET envelope = …`, leaving the mirror
/// columns (the version among them) as they are.
struct RawEnvelopes {
    pool: sqlx::PgPool,
    table: String,
}

#[spotbatch::async_trait]
impl Corrupter for RawEnvelopes {
    async fn stored(&self, key: &JobKey) -> Result<Option<Vec<u8>>, BoxError> {
        let sql = format!("SELECT envelope FROM {} WHERE key = $1", self.table);
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(key.as_str())
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn overwrite(&self, key: &JobKey, bytes: &[u8]) -> Result<(), BoxError> {
        let sql = format!("UPDATE {} SET envelope = $2 WHERE key = $1", self.table);
        let updated = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(key.as_str())
            .bind(bytes)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if updated != 1 {
            return Err(format!("{updated} rows for key {key:?}").into());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite() {
    let (store, schema) = fresh_store("conformance").await;
    let raw = RawEnvelopes {
        pool: admin_pool().await,
        table: format!("\"{schema}\".spotbatch_checkpoints"),
    };
    // list reads the mirror columns; saves and deletes compare on the
    // version column (see PostgresStore).
    let capabilities = Capabilities::new()
        .corrupter(&raw)
        .lists_from_metadata()
        .versions_kept_apart();
    let skipped = spotbatch::conformance::run_all(Arc::new(store), capabilities).await;
    assert!(skipped.is_empty(), "{skipped:?}");
}

#[tokio::test]
async fn columns_mirror_the_envelope_for_operators() {
    let (store, schema) = fresh_store("columns").await;
    let mut c = Checkpoint::new(key("nightly/2026-11-24"), Writer::this_process());
    c.codec = Codec::Json;
    c.cursor = br#"{"day":"2026-11-24","row":1200}"#.to_vec();
    c.cursor_type = "(Cursor, ())".into();
    c.schema = 3;
    c.status = Status::Interrupted {
        source: "SIGTERM".into(),
    };
    c.counters.chunks = 12;
    c.counters.items = 1200;
    c.created_ms = 1_700_000_000_123;
    c.updated_ms = 1_700_000_060_456;
    c.writer.task = "arn:aws:ecs:eu-west-1:123456789012:task/batch/0abc".into();
    c.lease = Some(Lease::new(c.writer.run_id, 1_700_000_090_000));
    store.save(&c, None).await.expect("save");

    let pool = admin_pool().await;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT status, status_detail, version, chunks, items, cursor_codec, job_schema, \
                cursor_json->>'day' AS day, (extract(epoch from created_at) * 1000)::bigint AS created, \
                (extract(epoch from updated_at) * 1000)::bigint AS updated, writer_run_id, writer_task, \
                lease_owner, (extract(epoch from lease_expires_at) * 1000)::bigint AS lease_ms, \
                envelope \
         FROM \"{schema}\".spotbatch_checkpoints WHERE key = $1"
    )))
    .bind("nightly/2026-11-24")
    .fetch_one(&pool)
    .await
    .expect("row");
    assert_eq!(row.get::<String, _>("status"), "interrupted");
    assert_eq!(row.get::<String, _>("status_detail"), "SIGTERM");
    assert_eq!(row.get::<i64, _>("version"), 1);
    assert_eq!(
        (row.get::<i64, _>("chunks"), row.get::<i64, _>("items")),
        (12, 1200)
    );
    assert_eq!(row.get::<String, _>("cursor_codec"), "json");
    assert_eq!(row.get::<i64, _>("job_schema"), 3);
    assert_eq!(row.get::<String, _>("day"), "2026-11-24");
    assert_eq!(row.get::<i64, _>("created"), 1_700_000_000_123);
    assert_eq!(row.get::<i64, _>("updated"), 1_700_000_060_456);
    assert_eq!(row.get::<uuid::Uuid, _>("writer_run_id"), c.writer.run_id);
    assert_eq!(
        row.get::<Option<String>, _>("writer_task").as_deref(),
        Some(c.writer.task.as_str())
    );
    assert_eq!(
        row.get::<Option<uuid::Uuid>, _>("lease_owner"),
        Some(c.writer.run_id)
    );
    assert_eq!(
        row.get::<Option<i64>, _>("lease_ms"),
        Some(1_700_000_090_000)
    );
    // The envelope is exactly Checkpoint::encode(): it moves to any other store as is.
    assert_eq!(row.get::<Vec<u8>, _>("envelope"), c.encode());

    // The store's connections carry the statement timeout (default 10 s).
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(store.pool())
        .await
        .expect("statement_timeout");
    assert_eq!(timeout, "10s");

    let listed = store.list().await.expect("list");
    let Some(Listing::Checkpoint(summary)) = listed.first() else {
        panic!("{listed:?}")
    };
    assert_eq!(summary.updated_ms, 1_700_000_060_456);
    assert_eq!(summary.status, c.status);
}

#[tokio::test]
async fn a_corrupt_envelope_is_named_and_left_untouched() {
    let (store, schema) = fresh_store("corrupt").await;
    let c = Checkpoint::new(key("job"), Writer::this_process());
    store.save(&c, None).await.expect("save");
    let pool = admin_pool().await;
    let table = format!("\"{schema}\".spotbatch_checkpoints");
    // Flip one byte in the middle of the envelope.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET envelope = set_byte(envelope, length(envelope) / 2, \
         get_byte(envelope, length(envelope) / 2) # 32) WHERE key = 'job'"
    )))
    .execute(&pool)
    .await
    .expect("corrupt it");
    let before: Vec<u8> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT envelope FROM {table} WHERE key = 'job'"
    )))
    .fetch_one(&pool)
    .await
    .expect("bytes");

    let err = store.load(&key("job")).await.expect_err("corrupt load");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{text}");
    assert!(
        text.contains(&format!("{schema}\".spotbatch_checkpoints"))
            && text.contains("\"job\"")
            && text.contains("checksum"),
        "{text}"
    );
    assert!(!text.contains("spotbatch-test"), "password in {text}");
    let after: Vec<u8> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT envelope FROM {table} WHERE key = 'job'"
    )))
    .fetch_one(&pool)
    .await
    .expect("bytes");
    assert_eq!(before, after, "a load changed the stored bytes");

    // A row whose version column disagrees with its envelope is refused too.
    let other = Checkpoint::new(key("edited"), Writer::this_process());
    store.save(&other, None).await.expect("save");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET version = 7 WHERE key = 'edited'"
    )))
    .execute(&pool)
    .await
    .expect("edit");
    let err = store.load(&key("edited")).await.expect_err("edited load");
    assert!(err.to_string().contains("disagree"), "{err}");
}

/// A run's row as the test reads it: id, outcome, source, chunks, chunks
/// skipped, still open (no end), last checkpoint's version and time (ms).
type RunRow = (
    uuid::Uuid,
    String,
    Option<String>,
    i64,
    i64,
    bool,
    Option<i64>,
    Option<i64>,
);

async fn run_rows(pool: &sqlx::PgPool, schema: &str, job: &JobKey) -> Vec<RunRow> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT run_id, outcome, interruption_source, chunks, skipped, ended_at IS NULL, last_version, \
                (extract(epoch from last_saved_at) * 1000)::bigint \
         FROM \"{schema}\".spotbatch_runs WHERE job_key = $1 ORDER BY started_at"
    )))
    .bind(job.as_str())
    .fetch_all(pool)
    .await
    .expect("runs")
}

/// A run's row: `outcome`, `chunks`, and its last checkpoint `(version, ms)`.
fn run_row(run: &RunRecord, outcome: &str, last: Option<(i64, i64)>) -> RunRow {
    let source = run
        .outcome
        .strip_prefix("interrupted (")
        .and_then(|s| s.strip_suffix(')'))
        .map(str::to_owned);
    (
        run.run_id,
        outcome.to_owned(),
        source,
        run.chunks as i64,
        run.skipped as i64,
        run.ended_ms == 0,
        last.map(|l| l.0),
        last.map(|l| l.1),
    )
}

#[tokio::test]
async fn run_history_rows_keep_what_their_run_recorded() {
    let (store, schema) = fresh_store("history").await;
    let pool = admin_pool().await;
    let job = key("history-job");
    const T0: u64 = 1_700_000_000_000;

    // The first run starts (its first save takes the lease), saves its
    // progress, renews its lease during a long chunk, saves again, and is
    // killed.
    let first = Writer::this_process();
    let mut run1 = RunRecord::started(&first, T0);
    let mut c = Checkpoint::new(job.clone(), first.clone());
    c.updated_ms = T0;
    c.history = vec![run1.clone()];
    store.save(&c, None).await.expect("create");
    run1.chunks = 40;
    run1.skipped = 1;
    c.version = 2;
    c.updated_ms = T0 + 10_000;
    c.history = vec![run1.clone()];
    store.save(&c, Some(1)).await.expect("progress");
    // Progress is on the checkpoint row; the run's row keeps its start.
    let mut at_start = run1.clone();
    at_start.chunks = 0;
    at_start.skipped = 0;
    let started = run_row(&at_start, "running", Some((1, T0 as i64)));
    assert_eq!(run_rows(&pool, &schema, &job).await, [started]);
    c.version = 3;
    c.updated_ms = T0 + 20_000;
    store.renew(&c, Some(2)).await.expect("renewal");
    // A renewal records the checkpoint it renews (version 2), not itself.
    let renewed = run_row(&run1, "running", Some((2, T0 as i64 + 10_000)));
    assert_eq!(
        run_rows(&pool, &schema, &job).await,
        std::slice::from_ref(&renewed)
    );
    run1.chunks = 55;
    c.version = 4;
    c.updated_ms = T0 + 30_000;
    c.history = vec![run1.clone()];
    store.save(&c, Some(3)).await.expect("progress");
    assert_eq!(run_rows(&pool, &schema, &job).await, [renewed]);

    // The next run, in another process, finds it killed: the killed run's
    // row takes its own last checkpoint (version 4) from the checkpoint row
    // the next run replaces.
    let again = PostgresStore::connect(&with_schema(&pg_url(), &schema))
        .await
        .expect("a second store");
    let second = Writer::this_process();
    let mut run2 = RunRecord::started(&second, T0 + 100_000);
    let mut killed = run1.clone();
    killed.outcome = "killed".into();
    let mut next = Checkpoint::new(job.clone(), second.clone());
    next.version = 5;
    next.updated_ms = T0 + 100_000;
    next.history = vec![killed.clone(), run2.clone()];
    again.save(&next, Some(4)).await.expect("resume");
    let killed_row = run_row(&killed, "killed", Some((4, T0 as i64 + 30_000)));
    assert_eq!(
        run_rows(&pool, &schema, &job).await,
        [
            killed_row.clone(),
            run_row(&run2, "running", Some((5, T0 as i64 + 100_000)))
        ]
    );

    // A losing save writes no history either: same transaction.
    let mut loser = next.clone();
    loser.version = 6;
    loser
        .history
        .push(RunRecord::started(&Writer::this_process(), T0 + 200_000));
    assert!(matches!(
        again.save(&loser, Some(4)).await,
        Err(StoreError::Conflict { .. })
    ));

    // The run ends, interrupted: its row takes its last save.
    run2.ended_ms = T0 + 160_000;
    run2.outcome = "interrupted (SIGTERM)".into();
    run2.chunks = 30;
    run2.skipped = 2;
    next.version = 6;
    next.updated_ms = T0 + 160_000;
    next.status = Status::Interrupted {
        source: "SIGTERM".into(),
    };
    next.history = vec![killed.clone(), run2.clone()];
    again.save(&next, Some(5)).await.expect("end");
    let run2_row = run_row(&run2, "interrupted", Some((6, T0 as i64 + 160_000)));
    assert_eq!(
        run_rows(&pool, &schema, &job).await,
        [killed_row.clone(), run2_row.clone()]
    );

    // A run id already recorded for another job is left alone.
    let mut foreign = Checkpoint::new(key("other-job"), Writer::this_process());
    let mut claimed = killed.clone();
    claimed.chunks = 99;
    foreign.history = vec![claimed];
    store
        .save(&foreign, None)
        .await
        .expect("another job's save");
    let owner: (String, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT job_key, chunks FROM \"{schema}\".spotbatch_runs WHERE run_id = $1"
    )))
    .bind(killed.run_id)
    .fetch_one(&pool)
    .await
    .expect("the killed run's row");
    assert_eq!(owner, ("history-job".into(), 55));

    // A store that has not saved this job yet writes the whole history (as
    // arrays): rows as recorded stay as they are, and a run the store never
    // saw a checkpoint of (its record came with a checkpoint written
    // elsewhere) has no last checkpoint.
    let third_store = PostgresStore::connect(&with_schema(&pg_url(), &schema))
        .await
        .expect("a third store");
    let third = Writer::this_process();
    let run3 = RunRecord::started(&third, T0 + 300_000);
    let mut imported = RunRecord::started(&Writer::this_process(), T0 - 100_000);
    imported.ended_ms = T0 - 50_000;
    imported.outcome = "completed".into();
    let mut latest = Checkpoint::new(job.clone(), third);
    latest.version = 7;
    latest.updated_ms = T0 + 300_000;
    latest.history = vec![imported.clone(), killed.clone(), run2.clone(), run3.clone()];
    third_store
        .save(&latest, Some(6))
        .await
        .expect("save with four runs");
    assert_eq!(
        run_rows(&pool, &schema, &job).await,
        [
            run_row(&imported, "completed", None),
            killed_row,
            run2_row,
            run_row(&run3, "running", Some((7, T0 as i64 + 300_000))),
        ]
    );

    // The guide's query: interruptions and work lost per job, in one
    // statement. The killed run lost the 70 s from its last checkpoint to
    // the next run's start.
    let query = include_str!("../docs/stores.md")
        .split("```sql")
        .nth(2)
        .and_then(|s| s.split("```").next())
        .expect("the second sql block of docs/stores.md");
    let query = format!(
        "SELECT *, (extract(epoch from redo_at_most) * 1000)::bigint AS redo_ms FROM ({}) AS q",
        query.trim().trim_end_matches(';')
    )
    .replace("spotbatch_runs", &format!("\"{schema}\".spotbatch_runs"));
    let row = sqlx::query(sqlx::AssertSqlSafe(query))
        .fetch_one(&pool)
        .await
        .expect("the query of docs/stores.md");
    assert_eq!(row.get::<String, _>("job_key"), "history-job");
    assert_eq!(row.get::<i64, _>("runs"), 4);
    assert_eq!(row.get::<i64, _>("interrupted"), 1);
    assert_eq!(row.get::<i64, _>("killed"), 1);
    assert_eq!(row.get::<Option<i64>, _>("redo_ms"), Some(70_000));
}

#[tokio::test]
async fn bad_urls_and_unreachable_servers_name_the_url_not_the_password() {
    let err = PostgresStore::connect("postgres://u:hunter2@127.0.0.1:5432/db?schema=")
        .await
        .expect_err("empty schema");
    assert!(matches!(err, ConnectError::BadUrl { .. }), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");

    // Port 1 on loopback: connection refused, retried for a short budget.
    let options = PostgresOptions::default()
        .retry_for(Duration::from_millis(300))
        .connect_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let err = PostgresStore::connect_with("postgres://u:hunter2@127.0.0.1:1/db", options)
        .await
        .expect_err("unreachable");
    let text = err.to_string();
    assert!(matches!(err, ConnectError::Unreachable { .. }), "{text}");
    assert!(
        text.contains("postgres://u:***@127.0.0.1:1/db") && !text.contains("hunter2"),
        "{text}"
    );
    assert!(text.to_lowercase().contains("refused"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A wrong password is refused at once, not retried.
    let mut url = url::Url::parse(&pg_url()).expect("url");
    url.set_password(Some("wrong-password")).expect("password");
    let err = PostgresStore::connect(url.as_str())
        .await
        .expect_err("bad login");
    let text = err.to_string();
    assert!(
        text.contains("password authentication failed") && !text.contains("wrong-password"),
        "{text}"
    );
}

#[tokio::test]
async fn from_pool_works_on_your_own_pool() {
    let schema = fresh_name("frompool");
    let pool = admin_pool().await;
    let store = PostgresStore::from_pool(pool.clone(), PostgresOptions::default().schema(&schema))
        .await
        .expect("from_pool");
    assert!(
        store.location().contains(&format!("schema={schema}")),
        "{}",
        store.location()
    );
    let c = Checkpoint::new(key("pooled"), Writer::this_process());
    store.save(&c, None).await.expect("save");
    assert_eq!(store.load(&key("pooled")).await.expect("load"), Some(c));
    // The migration did not leave its search_path on a pooled connection.
    let path: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(&pool)
        .await
        .expect("search_path");
    assert!(!path.contains(&schema), "{path}");
}
