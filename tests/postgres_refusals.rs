//! A PostgreSQL store that refuses for good (a database that does not
//! exist, a failed login, a role without privileges, a read-only database,
//! a constraint that rejects a save) ends the run at once with exit 74 and a
//! message naming the store, what it refused and why; the last checkpoint
//! stays, and takes the failure where the server still accepts that. A
//! lost `SharedTransaction` ends its run at once too (exit 1: the next run
//! redoes its chunks). Against the real server scripts/test starts.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod pg_common;

use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use pg_common::{
    admin_pool, example_command, finish, fresh_name, pg_url, signal, with_database, with_schema,
};
use spotbatch::postgres::{PostgresOptions, PostgresStore};
use spotbatch::prelude::*;
use spotbatch::{Checkpoint, CheckpointStore, Error, JobKey, Refusal, StoreError};
use sqlx::AssertSqlSafe;

/// Far more than a refused run takes, far less than the 30 s of retries a
/// store that may come back gets.
const QUICK: Duration = Duration::from_secs(10);
/// Past the retries, so that a run that retries fails the test on its exit
/// code and time rather than being killed.
const LIMIT: Duration = Duration::from_secs(90);
const JOB: &str = "refused";

fn quickstart(url: &str, dir: &std::path::Path) -> Command {
    let mut cmd = example_command("quickstart");
    cmd.args(["--store", url, "--job", JOB])
        .args(["--records", "100000", "--chunk", "10", "--work-us", "1000"])
        .args(["--every-chunks", "5", "--interrupted-exit-code", "75"])
        .arg("--out")
        .arg(dir.join("out.txt"));
    cmd
}

/// `url` with another user and password.
fn as_user(url: &str, user: &str, password: &str) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.set_username(user).unwrap();
    url.set_password(Some(password)).unwrap();
    url.to_string()
}

async fn sql(statement: String) {
    sqlx::query(AssertSqlSafe(statement))
        .execute(&admin_pool().await)
        .await
        .unwrap();
}

/// A login role of its own, with `setup` run on it (`{role}` replaced).
async fn role(setup: &str) -> String {
    let role = fresh_name("role");
    sql(format!("CREATE ROLE {role} LOGIN PASSWORD 'pw'")).await;
    for statement in setup.split(';').filter(|s| !s.trim().is_empty()) {
        sql(statement.replace("{role}", &role)).await;
    }
    role
}

/// The run exited 74 at once, its failure naming each of `names`.
fn assert_refused(status: ExitStatus, took: Duration, log: &str, names: &[&str]) {
    assert_eq!(status.code(), Some(74), "{status} after {took:?}:\n{log}");
    assert!(
        took < QUICK,
        "took {took:?}: retried an error that will not pass\n{log}"
    );
    let failed = log
        .lines()
        .find(|l| l.contains("run failed"))
        .unwrap_or_else(|| panic!("no 'run failed' line:\n{log}"));
    for name in names.iter().chain(&["retrying cannot help"]) {
        assert!(failed.contains(name), "{name:?} is not named in: {failed}");
    }
    assert!(!log.contains("yet; retrying"), "retried:\n{log}");
}

async fn run(cmd: Command) -> (ExitStatus, Duration, String) {
    let child = { cmd }.spawn().unwrap();
    tokio::task::spawn_blocking(move || finish(child, LIMIT))
        .await
        .unwrap()
}

/// The job's checkpoint in `schema`, read as the test server's superuser.
async fn stored(schema: &str) -> Option<Checkpoint> {
    PostgresStore::connect(&with_schema(&pg_url(), schema))
        .await
        .unwrap()
        .load(&JobKey::new(JOB).unwrap())
        .await
        .unwrap()
}

/// A schema holding the checkpoint of a run stopped (SIGTERM) after some chunks.
async fn interrupted_job(dir: &std::path::Path) -> (String, Checkpoint) {
    let schema = fresh_name("refused");
    let url = with_schema(&pg_url(), &schema);
    let store = PostgresStore::connect(&url).await.unwrap();
    let key = JobKey::new(JOB).unwrap();
    let child = quickstart(&url, dir).spawn().unwrap();
    let started = Instant::now();
    while store
        .load(&key)
        .await
        .unwrap()
        .is_none_or(|c| c.counters.chunks == 0)
    {
        assert!(started.elapsed() < LIMIT, "no chunk was checkpointed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&child, libc::SIGTERM);
    let (status, _, log) = tokio::task::spawn_blocking(move || finish(child, LIMIT))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(75), "{log}");
    (schema, store.load(&key).await.unwrap().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_does_not_exist_and_a_failed_login_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_name("nosuchdb");
    let (status, took, log) = run(quickstart(&with_database(&pg_url(), &db), dir.path())).await;
    assert_refused(
        status,
        took,
        &log,
        &[
            &format!("/{db}"),
            &format!("database \"{db}\" does not exist"),
        ],
    );

    let wrong = as_user(&pg_url(), "postgres", "wrong-password");
    let (status, took, log) = run(quickstart(&wrong, dir.path())).await;
    assert_refused(status, took, &log, &["password authentication failed"]);
    assert!(!log.contains("wrong-password"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_privileges_is_refused_at_once_and_the_checkpoint_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (schema, before) = interrupted_job(dir.path()).await;
    // No CREATE on the database: the migrations' CREATE SCHEMA is refused.
    let weak = role("").await;
    let url = with_schema(&as_user(&pg_url(), &weak, "pw"), &schema);
    let (status, took, log) = run(quickstart(&url, dir.path())).await;
    assert_refused(
        status,
        took,
        &log,
        &[&format!("postgres://{weak}:***@"), "permission denied"],
    );
    assert_eq!(stored(&schema).await.unwrap(), before);

    // Migrations applied by someone else, and a role that may read the
    // checkpoints but not write them: refused at the first save (taking
    // the lease).
    let reader = role(&format!(
        "GRANT USAGE ON SCHEMA {schema} TO {{role}}; \
         GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {{role}}"
    ))
    .await;
    let store = PostgresStore::connect_with(
        &with_schema(&as_user(&pg_url(), &reader, "pw"), &schema),
        PostgresOptions::default().migrate(false),
    )
    .await
    .unwrap();
    let (report, took) = run_in_process(store).await;
    let err = report.error().unwrap();
    assert!(
        matches!(
            err,
            Error::Store(StoreError::Refused {
                cause: Refusal::Permission,
                ..
            })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("permission denied for table"),
        "{err}"
    );
    assert_eq!(report.code(), 74, "{err}");
    assert!(took < QUICK, "took {took:?}");
    assert_eq!(stored(&schema).await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_is_refused_at_once_and_the_checkpoint_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (schema, before) = interrupted_job(dir.path()).await;
    let read_only = role(&format!(
        "GRANT CREATE ON DATABASE postgres TO {{role}}; \
         GRANT ALL ON SCHEMA {schema} TO {{role}}; \
         GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO {{role}}; \
         ALTER ROLE {{role}} SET default_transaction_read_only = on"
    ))
    .await;
    let url = with_schema(&as_user(&pg_url(), &read_only, "pw"), &schema);
    // The migrations (CREATE SCHEMA IF NOT EXISTS) are refused at start-up…
    let (status, took, log) = run(quickstart(&url, dir.path())).await;
    assert_refused(
        status,
        took,
        &log,
        &["read-only transaction", "the store is read-only"],
    );
    // …and without migrations, the first save is.
    let store = PostgresStore::connect_with(&url, PostgresOptions::default().migrate(false))
        .await
        .unwrap();
    let (report, took) = run_in_process(store).await;
    let err = report.error().unwrap();
    assert!(
        matches!(
            err,
            Error::Store(StoreError::Refused {
                cause: Refusal::ReadOnly,
                ..
            })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&read_only),
        "the store is not named: {err}"
    );
    assert_eq!(report.code(), 74, "{err}");
    assert!(took < QUICK, "took {took:?}");
    assert_eq!(stored(&schema).await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_the_database_rejects_ends_the_run_and_the_last_checkpoint_records_why() {
    let dir = tempfile::tempdir().unwrap();
    let (schema, before) = interrupted_job(dir.path()).await;
    // A constraint (an operator's, a trigger's) that the third save breaks.
    let cap = before.counters.chunks + 10;
    sql(format!(
        "ALTER TABLE {schema}.spotbatch_checkpoints \
         ADD CONSTRAINT at_most_{cap}_chunks CHECK (chunks <= {cap})"
    ))
    .await;
    let (status, took, log) = run(quickstart(&with_schema(&pg_url(), &schema), dir.path())).await;
    assert_refused(
        status,
        took,
        &log,
        &[
            &format!("schema={schema}"),
            &format!("\"{JOB}\""),
            &format!("at_most_{cap}_chunks"),
            "rejected",
        ],
    );
    // The failure is recorded on the last checkpoint the database took.
    let after = stored(&schema).await.unwrap();
    assert_eq!(after.counters.chunks, cap, "{after:?}");
    assert_eq!(after.status.name(), "failed", "{after:?}");
    assert!(
        after
            .status
            .to_string()
            .contains(&format!("at_most_{cap}_chunks")),
        "{}",
        after.status
    );
    assert_eq!(after.lease, None, "the lease was not released");
}

/// Counts to a thousand, a chunk a number.
struct Count;

#[async_trait]
impl Job for Count {
    type Cursor = u64;
    type State = u64;

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < 1000).then(|| Chunk::between(*at, *at + 1)))
    }

    async fn process(&mut self, _: &Chunk<u64>, _: &mut u64, _: &ChunkContext) -> Result<()> {
        Ok(())
    }
}

/// A run of the quickstart's job key on `store`, in this process, and how long it took.
async fn run_in_process(store: PostgresStore) -> (spotbatch::Report, Duration) {
    let started = Instant::now();
    let report = Runner::new(JOB, Count)
        .store(store)
        .signals(&[])
        .run()
        .await;
    (report, started.elapsed())
}

/// Writes one row per chunk through a shared transaction, recording the
/// backend pid of its connection; no `check` in `flush`, so that the save
/// meets the loss.
struct Rows {
    tx: spotbatch::postgres::SharedTransaction,
    table: String,
    pid: std::sync::Arc<std::sync::atomic::AtomicI32>,
}

#[async_trait]
impl Job for Rows {
    type Cursor = u64;
    type State = u64;

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < 1000).then(|| Chunk::between(*at, *at + 1)))
    }

    async fn process(&mut self, chunk: &Chunk<u64>, _: &mut u64, _: &ChunkContext) -> Result<()> {
        let mut tx = self.tx.chunk().await?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *tx)
            .await?;
        self.pid.store(pid, std::sync::atomic::Ordering::SeqCst);
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} VALUES ($1)",
            self.table
        )))
        .bind(i64::try_from(*chunk.start())?)
        .execute(&mut *tx)
        .await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.done().await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_shared_transaction_ends_the_run_at_once_and_the_last_checkpoint_records_why() {
    let schema = fresh_name("lost");
    let store = PostgresStore::connect(&with_schema(&pg_url(), &schema))
        .await
        .unwrap();
    let table = format!("\"{schema}\".rows");
    sql(format!("CREATE TABLE {table} (id bigint PRIMARY KEY)")).await;
    let tx = store.transactional().unwrap();
    let pid = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
    let job = Rows {
        tx: tx.clone(),
        table,
        pid: std::sync::Arc::clone(&pid),
    };
    let run = tokio::spawn(
        Runner::new(JOB, job)
            .store(tx.store())
            .signals(&[])
            .checkpoint(Every::chunks(3))
            .run(),
    );
    // Once a checkpoint covers some chunks, the transaction's connection goes.
    let key = JobKey::new(JOB).unwrap();
    let started = Instant::now();
    while store
        .load(&key)
        .await
        .unwrap()
        .is_none_or(|c| c.counters.chunks == 0)
    {
        assert!(started.elapsed() < LIMIT, "no chunk was checkpointed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Killed while it holds a chunk's writes (idle in transaction: the
    // chunk sleeps), so that the transaction, not an idle connection, goes.
    let admin = admin_pool().await;
    let kill = "SELECT coalesce(bool_or(pg_terminate_backend(pid)), false) \
                FROM pg_stat_activity WHERE pid = $1 AND state = 'idle in transaction'";
    while !sqlx::query_scalar::<_, bool>(kill)
        .bind(pid.load(std::sync::atomic::Ordering::SeqCst))
        .fetch_one(&admin)
        .await
        .unwrap()
    {
        assert!(
            started.elapsed() < LIMIT,
            "never found the transaction open"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let terminated = Instant::now();
    let report = run.await.unwrap();
    let took = terminated.elapsed();

    let err = report
        .error()
        .unwrap_or_else(|| panic!("{:?}", report.outcome));
    // The next chunk meets the loss (the job's error), or the next save does.
    assert!(
        matches!(
            err,
            Error::Job { .. } | Error::Store(StoreError::Lost { .. })
        ),
        "{err:?}"
    );
    assert_eq!(report.code(), 1, "{err}");
    assert!(
        took < QUICK,
        "took {took:?}: retried a save through a lost transaction"
    );
    let after = store.load(&key).await.unwrap().unwrap();
    assert_eq!(after.status.name(), "failed", "{after:?}");
    assert!(
        after.status.to_string().contains("was lost"),
        "{}",
        after.status
    );
    assert_eq!(after.lease, None, "the lease was not released");
}
