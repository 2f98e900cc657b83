//! The run history table (`spotbatch_runs`) of real processes on a
//! `PostgresStore`: a run SIGKILLed mid-job keeps, in its row, the last
//! checkpoint it saved itself, once the next run has marked it `killed`; so
//! the guide's query for redone work reads the time really lost.
//!
//! A trigger the test adds to the checkpoint table logs every write (its
//! envelope), so the test knows each checkpoint the killed run wrote, lease
//! renewals included.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod pg_common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use pg_common::{admin_pool, example_command, finish, fresh_name, pg_url, with_schema};
use spotbatch::postgres::PostgresStore;
use spotbatch::{Checkpoint, Status};
use sqlx::{PgPool, Row};
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(60);
const JOB: &str = "history";

/// The quickstart on the schema's store, its connections named `app`.
fn quickstart(schema: &str, app: &str, dir: &std::path::Path, args: &[&str]) -> Command {
    let url = format!("{}&application_name={app}", with_schema(&pg_url(), schema));
    let mut cmd = example_command("quickstart");
    cmd.args(["--store", &url, "--job", JOB])
        .arg("--out")
        .arg(dir.join("out.txt"))
        .args(args);
    cmd
}

/// A schema with the store's tables, and a trigger logging every write of a
/// checkpoint into `writes`.
async fn logged_schema(pool: &PgPool) -> String {
    let schema = fresh_name("history");
    PostgresStore::connect(&with_schema(&pg_url(), &schema))
        .await
        .expect("create the store's tables");
    let s = format!("\"{schema}\"");
    for ddl in [
        format!("CREATE TABLE {s}.writes (n bigserial PRIMARY KEY, envelope bytea NOT NULL)"),
        format!(
            "CREATE FUNCTION {s}.log_write() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN INSERT INTO {s}.writes (envelope) VALUES (NEW.envelope); RETURN NEW; END $$"
        ),
        format!(
            "CREATE TRIGGER log_write AFTER INSERT OR UPDATE ON {s}.spotbatch_checkpoints \
             FOR EACH ROW EXECUTE FUNCTION {s}.log_write()"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(ddl))
            .execute(pool)
            .await
            .expect("the write log");
    }
    schema
}

/// Every checkpoint written so far, in order.
async fn writes(pool: &PgPool, schema: &str) -> Vec<Checkpoint> {
    let rows: Vec<Vec<u8>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT envelope FROM \"{schema}\".writes ORDER BY n"
    )))
    .fetch_all(pool)
    .await
    .expect("the write log");
    rows.iter()
        .map(|b| Checkpoint::decode(b).expect("a whole checkpoint"))
        .collect()
}

/// The chunks `run` had recorded in `c`'s history.
fn chunks_of(c: &Checkpoint, run: Uuid) -> u64 {
    c.history
        .iter()
        .find(|r| r.run_id == run)
        .map_or(0, |r| r.chunks)
}

/// Waits until `done(writes)` holds, failing after [`LIMIT`].
async fn wait_for_writes(
    pool: &PgPool,
    schema: &str,
    child: &mut Child,
    what: &str,
    done: impl Fn(&[Checkpoint]) -> bool,
) {
    let started = Instant::now();
    loop {
        if done(&writes(pool, schema).await) {
            return;
        }
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the run ended before {what}"
        );
        assert!(started.elapsed() < LIMIT, "no {what} within {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SIGKILLs the child and waits until the server has no connection of it
/// left, so that no statement of it can still commit.
async fn kill(pool: &PgPool, mut child: Child, app: &str) {
    pg_common::signal(&child, libc::SIGKILL);
    let status = child.wait().expect("wait");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let started = Instant::now();
    loop {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(app)
                .fetch_one(pool)
                .await
                .expect("pg_stat_activity");
        if left == 0 {
            return;
        }
        assert!(
            started.elapsed() < LIMIT,
            "the killed run's connections stay"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The killed run's last checkpoint that changed its record: the earliest
/// of its writes whose record of it equals its last write's.
fn last_recorded(writes: &[Checkpoint], run: Uuid) -> &Checkpoint {
    let own: Vec<&Checkpoint> = writes.iter().filter(|c| c.writer.run_id == run).collect();
    let last = own.last().expect("the killed run wrote");
    let chunks = chunks_of(last, run);
    own.into_iter()
        .find(|c| chunks_of(c, run) == chunks)
        .expect("its last write")
}

/// Runs the job to completion after the killed run `killed`, then checks
/// the killed run's row and the guide's redone-work query.
async fn resume_and_check(pool: &PgPool, schema: &str, dir: &std::path::Path, killed: Uuid) {
    let log = writes(pool, schema).await;
    let expected = last_recorded(&log, killed);
    let (status, _, stderr) = finish(
        quickstart(schema, "history-next", dir, &["--records", "2000"])
            .spawn()
            .expect("spawn"),
        LIMIT,
    );
    assert!(status.success(), "the resumed run failed:\n{stderr}");
    assert!(stderr.contains("resuming from checkpoint"), "{stderr}");
    let log = writes(pool, schema).await;
    let done = log.last().expect("writes");
    assert_eq!(done.status, Status::Completed);

    let runs = format!("\"{schema}\".spotbatch_runs");
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT outcome, chunks, ended_at IS NULL AS open, last_version, \
                (extract(epoch from last_saved_at) * 1000)::bigint AS last_saved_ms \
         FROM {runs} WHERE run_id = $1"
    )))
    .bind(killed)
    .fetch_one(pool)
    .await
    .expect("the killed run's row");
    let recorded = (
        row.get::<String, _>("outcome"),
        row.get::<i64, _>("chunks"),
        row.get::<bool, _>("open"),
        row.get::<Option<i64>, _>("last_version"),
        row.get::<Option<i64>, _>("last_saved_ms"),
    );
    assert_eq!(
        recorded,
        (
            "killed".to_owned(),
            chunks_of(expected, killed) as i64,
            true,
            Some(expected.version as i64),
            Some(expected.updated_ms as i64),
        ),
        "the killed run's row keeps the last checkpoint it saved (version, time, chunks)"
    );

    // The resumed run's row: its own last save, the completion.
    let (last_version, last_saved_ms): (Option<i64>, Option<i64>) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT last_version, (extract(epoch from last_saved_at) * 1000)::bigint \
             FROM {runs} WHERE run_id = $1"
        )))
        .bind(done.writer.run_id)
        .fetch_one(pool)
        .await
        .expect("the resumed run's row");
    assert_eq!(
        (last_version, last_saved_ms),
        (Some(done.version as i64), Some(done.updated_ms as i64))
    );

    // The guide's query: the redone work runs from the killed run's last
    // checkpoint to the next run's start.
    let next_started = done
        .history
        .iter()
        .find(|r| r.run_id == done.writer.run_id)
        .expect("the resumed run's record")
        .started_ms;
    let query = include_str!("../docs/stores.md")
        .split("```sql")
        .nth(2)
        .and_then(|s| s.split("```").next())
        .expect("the second sql block of docs/stores.md");
    let query = format!(
        "SELECT job_key, runs, killed, \
                (extract(epoch from redo_at_most) * 1000)::bigint AS redo_ms \
         FROM ({}) AS q",
        query.trim().trim_end_matches(';')
    )
    .replace("spotbatch_runs", &runs);
    let row = sqlx::query(sqlx::AssertSqlSafe(query))
        .fetch_one(pool)
        .await
        .expect("the query of docs/stores.md");
    assert_eq!(row.get::<String, _>("job_key"), JOB);
    assert_eq!(row.get::<i64, _>("runs"), 2);
    assert_eq!(row.get::<i64, _>("killed"), 1);
    let redo = row.get::<Option<i64>, _>("redo_ms");
    assert_eq!(redo, Some(next_started as i64 - expected.updated_ms as i64));
    assert!(redo.unwrap() > 0, "redone work {redo:?} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_run_keeps_its_last_checkpoint_in_its_row() {
    let pool = admin_pool().await;
    let schema = logged_schema(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");

    // 2,000 records of 100 µs in chunks of 10: a checkpoint about every 5 ms.
    let mut child = quickstart(
        &schema,
        "history-killed",
        dir.path(),
        &[
            "--records",
            "2000",
            "--chunk",
            "10",
            "--work-us",
            "100",
            "--every-chunks",
            "5",
        ],
    )
    .spawn()
    .expect("spawn");
    wait_for_writes(&pool, &schema, &mut child, "four checkpoints", |w| {
        w.len() >= 4
    })
    .await;
    kill(&pool, child, "history-killed").await;
    let log = writes(&pool, &schema).await;
    let killed = log.last().expect("writes").writer.run_id;
    assert!(chunks_of(log.last().unwrap(), killed) > 0);
    resume_and_check(&pool, &schema, dir.path(), killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_after_lease_renewals_keeps_its_last_checkpoint() {
    let pool = admin_pool().await;
    let schema = logged_schema(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");

    // Chunks of 1.2 s (12 records of 100 ms), a checkpoint after each, and a
    // 0.9 s lease renewed every 0.3 s: each chunk sees lease renewals, which
    // carry the last checkpoint's cursor again.
    let mut child = quickstart(
        &schema,
        "history-renewed",
        dir.path(),
        &[
            "--records",
            "2000",
            "--chunk",
            "12",
            "--work-us",
            "100000",
            "--every-chunks",
            "1",
            "--lease",
            "0.9",
        ],
    )
    .spawn()
    .expect("spawn");
    // A chunk finished, then its checkpoint was renewed.
    let renewed = |w: &[Checkpoint]| {
        let [.., before, last] = w else { return false };
        let run = last.writer.run_id;
        before.writer.run_id == run
            && chunks_of(last, run) > 0
            && chunks_of(last, run) == chunks_of(before, run)
    };
    wait_for_writes(
        &pool,
        &schema,
        &mut child,
        "a renewal after a chunk",
        renewed,
    )
    .await;
    kill(&pool, child, "history-renewed").await;
    let log = writes(&pool, &schema).await;
    assert!(
        renewed(&log),
        "the killed run's last write is a renewal (the next one comes 0.3 s later)"
    );
    let killed = log.last().expect("writes").writer.run_id;
    resume_and_check(&pool, &schema, dir.path(), killed).await;
}
