//! pg_etl (examples/pg_etl.rs) killed again and again: the chunks' rows and
//! the checkpoint commit together, so the destination ends identical to an
//! uninterrupted run's, without duplicates.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod pg_common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use pg_common::{admin_pool, example_command, finish, fresh_name, pg_url, signal, with_schema};
use spotbatch::{Checkpoint, Status};
use sqlx::PgPool;

const ROWS: u64 = 10_000;
const LIMIT: Duration = Duration::from_secs(60);

fn etl(schema: &str, work_us: u64) -> Command {
    let mut cmd = example_command("pg_etl");
    cmd.arg("--store")
        .arg(with_schema(&pg_url(), schema))
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
