//! pg_etl (examples/pg_etl.rs) killed again and again: the chunks' rows and
//! the checkpoint commit together, so the destination ends identical to an
//! uninterrupted run's, without duplicates.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod pg_common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use pg_common::{
    admin_pool, as_pid1, example_command, finish, fresh_name, pg_url, signal, signal_pid,
    with_database, with_schema,
};
use spotbatch::{Checkpoint, Status};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

const ROWS: u64 = 10_000;
const LIMIT: Duration = Duration::from_secs(60);

fn etl(schema: &str, work_us: u64) -> Command {
    etl_at(&pg_url(), schema, work_us)
}

/// pg_etl on the database of `url`.
fn etl_at(url: &str, schema: &str, work_us: u64) -> Command {
    let mut cmd = example_command("pg_etl");
    cmd.arg("--store")
        .arg(with_schema(url, schema))
        .arg("--rows")
        .arg(ROWS.to_string())
        .arg("--chunk")
        .arg("100")
        .arg("--work-us")
        .arg(work_us.to_string())
        .arg("--every-chunks")
        .arg("4")
        .arg("--interrupted-exit-code")
        .arg("75");
    cmd
}

/// The destination, summarised: row count, distinct source ids, and a digest of its content.
async fn destination(pool: &PgPool, schema: &str) -> (i64, i64, String) {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*), count(DISTINCT source_id),
                coalesce(md5(string_agg(source_id || ':' || label || ':' || gross_cents, ','
                                        ORDER BY source_id)), '')
         FROM \"{schema}\".etl_dest"
    )))
    .fetch_one(pool)
    .await
    // Before the first run created the table.
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sigkill_leaves_no_duplicate_and_no_gap() {
    let schema = fresh_name("etl");
    let pool = admin_pool().await;
    let mut rng = fastrand::Rng::with_seed(0x5eed_0e71);
    let (mut kills, mut terms) = (0, 0);
    for run in 0.. {
        assert!(run < 100, "no completion after {run} runs");
        let before = stored_cursor(&pool, &schema).await;
        let mut child = etl(&schema, 40).spawn().expect("spawn pg_etl");
        tokio::time::sleep(Duration::from_millis(rng.u64(20..200))).await;
        // However slow the machine, let each run commit at least one
        // checkpoint, then kill it at a random moment after.
        let deadline = Instant::now() + Duration::from_secs(20);
        while stored_cursor(&pool, &schema).await == before
            && Instant::now() < deadline
            && child.try_wait().expect("try_wait").is_none()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(0..80))).await;
        // Mostly SIGKILL (mid-transaction, uncommitted chunks); now and then SIGTERM.
        let sig = if rng.u8(0..5) == 0 {
            libc::SIGTERM
        } else {
            libc::SIGKILL
        };
        // A child that already exited was reaped by try_wait: nothing to signal.
        if child.try_wait().expect("try_wait").is_none() {
            signal(&child, sig);
        }
        let (status, _, err) = finish(child, LIMIT);
        match (status.code(), status.signal()) {
            (Some(0), _) => break,
            (Some(75), _) => terms += 1,
            (None, Some(s)) if s == libc::SIGKILL => kills += 1,
            // SIGTERM before the runner installed its handler: killed by it.
            (None, Some(s)) if s == libc::SIGTERM => terms += 1,
            other => panic!("run {run}: unexpected exit {other:?}\n{err}"),
        }
        // Whatever moment the kill came, every committed row is covered by the
        // committed checkpoint, and no row beyond it is.
        let (count, distinct, _) = destination(&pool, &schema).await;
        assert_eq!(count, distinct, "run {run}: duplicate rows");
        if let Some(cursor) = stored_cursor(&pool, &schema).await {
            assert_eq!(
                u64::try_from(count).expect("count"),
                cursor,
                "run {run}: the destination and the checkpoint disagree"
            );
        }
    }
    eprintln!("{kills} SIGKILLs and {terms} SIGTERMs before completion");
    assert!(
        kills >= 3,
        "only {kills} SIGKILLs landed: the job is too short"
    );

    let reference = fresh_name("etl_ref");
    let (status, _, err) = finish(etl(&reference, 0).spawn().expect("spawn"), LIMIT);
    assert!(status.success(), "reference run failed:\n{err}");
    let killed = destination(&pool, &schema).await;
    assert_eq!(killed.0, i64::try_from(ROWS).expect("rows"));
    assert_eq!(killed.0, killed.1, "duplicate rows");
    assert_eq!(
        killed,
        destination(&pool, &reference).await,
        "destination differs from an uninterrupted run's"
    );
    let c = checkpoint(&pool, &schema).await.expect("a checkpoint");
    assert_eq!(c.status, Status::Completed);
    assert_eq!(c.counters.items, ROWS);
}

async fn checkpoint(pool: &PgPool, schema: &str) -> Option<Checkpoint> {
    let bytes: Option<Vec<u8>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT envelope FROM \"{schema}\".spotbatch_checkpoints WHERE key = 'pg-etl'"
    )))
    .fetch_optional(pool)
    .await
    .unwrap_or(None);
    bytes.map(|b| Checkpoint::decode(&b).expect("checkpoint is whole"))
}

async fn stored_cursor(pool: &PgPool, schema: &str) -> Option<u64> {
    let c = checkpoint(pool, schema).await?;
    Some(c.codec.decode(&c.cursor).expect("cursor"))
}

/// A stop while start-up waits for another task's migrations (sqlx holds
/// an advisory lock while it migrates, and a second task waits for it, with
/// no time limit) ends pg_etl at once, with the interrupted exit code: as a
/// child, and as PID 1 of a PID namespace, where a signal without a handler
/// would be dropped and the job would start after the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_waiting_for_another_tasks_migrations_ends_the_process_at_once() {
    // A database of its own: the migration lock is one per database, and
    // this test holds it for as long as it runs (the other tests' tasks
    // would wait for it, and their waits be taken for pg_etl's).
    let db = fresh_name("etl_lock_db");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{db}\"")))
        .execute(&admin_pool().await)
        .await
        .expect("create database");
    let url = with_database(&pg_url(), &db);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .expect("connect to the test database");
    let mut holder = pool.acquire().await.expect("a connection");
    // sqlx's migration lock: one per database (sqlx-postgres, `generate_lock_id`).
    let lock = 0x3d32_ad9e * i64::from(crc32fast::hash(db.as_bytes()));
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lock)
        .execute(&mut *holder)
        .await
        .expect("take the migration lock");
    for pid1 in [false, true] {
        // The last task's wait, if any, stays: a backend waiting for a lock
        // does not notice that its client has gone.
        let waiting_before = lock_waiters(&pool).await;
        let schema = fresh_name("etl_lock");
        let cmd = etl_at(&url, &schema, 0);
        let (child, pid) = if pid1 {
            as_pid1(&cmd)
        } else {
            let mut cmd = cmd;
            let child = cmd.spawn().expect("spawn pg_etl");
            let pid = i32::try_from(child.id()).expect("pid");
            (child, pid)
        };
        // Until it waits for the lock.
        let deadline = Instant::now() + Duration::from_secs(20);
        while lock_waiters(&pool).await == waiting_before {
            assert!(
                Instant::now() < deadline,
                "pg_etl never waited for the lock"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        signal_pid(pid, libc::SIGTERM);
        let (status, took, err) = tokio::task::spawn_blocking(move || finish(child, LIMIT))
            .await
            .expect("wait");
        assert_eq!(status.code(), Some(75), "PID 1: {pid1}\n{err}");
        // At once: the wait has no end of its own (the bound leaves room
        // for a loaded machine).
        assert!(
            took < Duration::from_secs(5),
            "PID 1: {pid1}: took {took:?}\n{err}"
        );
        assert!(
            err.contains("stop requested before the first chunk"),
            "{err}"
        );
        assert_eq!(checkpoint(&pool, &schema).await, None);
    }
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(lock)
        .execute(&mut *holder)
        .await
        .expect("unlock");
    drop(holder);
    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{db}\" WITH (FORCE)"
    )))
    .execute(&admin_pool().await)
    .await
    .expect("drop database");
}

/// Sessions of the test database waiting for an advisory lock.
async fn lock_waiters(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .expect("pg_locks")
}
