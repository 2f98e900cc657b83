//! The run history tables of a `PostgresStore`, against a real server.
//!
//! `spotbatch_runs` of real processes: a run SIGKILLed mid-job keeps, in
//! its row, the last checkpoint it saved itself, once the next run has
//! marked it `killed`; so the guide's query for redone work reads the time
//! really lost. A trigger the test adds to the checkpoint table logs every
//! write (its envelope), so the test knows each checkpoint the killed run
//! wrote, lease renewals included.
//!
//! `spotbatch_skipped_chunks`: each chunk a run skipped, with its error and
//! attempts, kept after a redrive does it; a redrive that fails again
//! records the redriving run's skip; a store upgraded from migration 0005
//! records the skips its checkpoints already held.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod pg_common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pg_common::{admin_pool, example_command, finish, fresh_name, pg_url, with_schema};
use spotbatch::postgres::PostgresStore;
use spotbatch::{
    async_trait, transient, BoxError, Checkpoint, CheckpointStore, Chunk, ChunkContext, Error,
    Every, Job, JobKey, Outcome, Report, RetryPolicy, Runner, SkipPolicy, SkippedChunk, Status,
    StoreError,
};
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

// Skipped chunks.

const SUMS: &str = "sums";

/// How a chunk fails.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// At the first attempt, not retried.
    Error,
    /// At every attempt, retried until the retries run out.
    Transient,
}

/// Sums `0..100` in chunks of ten; chunks whose start is in `faults` fail.
#[derive(Clone, Default)]
struct Sums {
    faults: Arc<Mutex<BTreeMap<u64, Fault>>>,
}

impl Sums {
    fn failing(faults: &[(u64, Fault)]) -> Self {
        let job = Self::default();
        job.faults.lock().unwrap().extend(faults.iter().copied());
        job
    }

    fn fix(&self, start: u64) {
        self.faults.lock().unwrap().remove(&start);
    }
}

#[async_trait]
impl Job for Sums {
    type Cursor = u64;
    type State = u64;

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>, BoxError> {
        Ok((*at < 100).then(|| Chunk::between(*at, at + 10)))
    }

    async fn process(
        &mut self,
        chunk: &Chunk<u64>,
        sum: &mut u64,
        _: &ChunkContext,
    ) -> Result<(), BoxError> {
        let fault = self.faults.lock().unwrap().get(chunk.start()).copied();
        match fault {
            Some(Fault::Error) => Err(format!("bad record at {}", chunk.start()).into()),
            Some(Fault::Transient) => Err(transient("throttled")),
            None => {
                *sum += chunk.range().sum::<u64>();
                Ok(())
            }
        }
    }
}

/// A run of `job` to its end, checkpointing after each chunk, skipping up
/// to 5 chunks, 3 attempts at each.
async fn run_sums(store: &PostgresStore, job: &Sums) -> Report {
    let report = Runner::new(SUMS, job.clone())
        .store(store.clone())
        .signals(&[])
        .checkpoint(Every::chunk())
        .retry(RetryPolicy::attempts(3).backoff(Duration::from_millis(1), Duration::from_millis(5)))
        .skip(SkipPolicy::at_most(5))
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    report
}

async fn sums_checkpoint(store: &PostgresStore) -> Checkpoint {
    store
        .load(&JobKey::new(SUMS).unwrap())
        .await
        .unwrap()
        .expect("the checkpoint")
}

/// What `spotbatch redrive` does: sets the flag by compare-and-swap.
async fn request_redrive(store: &PostgresStore) {
    let mut c = sums_checkpoint(store).await;
    let version = c.version;
    c.redrive = true;
    c.version += 1;
    store.save(&c, Some(version)).await.unwrap();
}

/// A row of `spotbatch_skipped_chunks`: run, job, start and next cursor,
/// items, attempts, error, time skipped (ms since the Unix epoch).
type SkipRow = (Uuid, String, String, String, i64, i32, String, i64);

/// The row a skipped chunk of the checkpoint is recorded as.
fn row_of(skip: &SkippedChunk) -> SkipRow {
    (
        skip.run_id,
        SUMS.to_owned(),
        skip.start_text.clone(),
        skip.next_text.clone(),
        skip.items as i64,
        skip.attempts as i32,
        skip.error.clone(),
        skip.skipped_ms as i64,
    )
}

/// Every row of the schema's `spotbatch_skipped_chunks`, oldest first.
async fn skip_rows(pool: &PgPool, schema: &str) -> Vec<SkipRow> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT run_id, job_key, start_cursor, next_cursor, items, attempts, error, \
                (extract(epoch from skipped_at) * 1000)::bigint \
         FROM \"{schema}\".spotbatch_skipped_chunks ORDER BY skipped_at, start_cursor"
    )))
    .fetch_all(pool)
    .await
    .expect("the skipped chunks table")
}

/// `spotbatch_runs.skipped` of `run`.
async fn run_skipped(pool: &PgPool, schema: &str, run: Uuid) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT skipped FROM \"{schema}\".spotbatch_runs WHERE run_id = $1"
    )))
    .bind(run)
    .fetch_one(pool)
    .await
    .expect("the run's row")
}

async fn fresh_store() -> (PostgresStore, String) {
    let schema = fresh_name("skips");
    let store = PostgresStore::connect(&with_schema(&pg_url(), &schema))
        .await
        .expect("connect");
    (store, schema)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_skipped_chunk_is_recorded_with_its_run_and_kept_after_redrives() {
    let (store, schema) = fresh_store().await;
    let pool = store.pool().clone();
    let job = Sums::failing(&[(20, Fault::Error), (50, Fault::Transient)]);

    // The first run skips two chunks: each is a row of that run, with
    // the cursors, items, attempts, error and time the checkpoint holds.
    let report = run_sums(&store, &job).await;
    assert_eq!(report.stats.skipped, 2);
    let first = sums_checkpoint(&store).await;
    let run1 = first.writer.run_id;
    let rows1: Vec<SkipRow> = first.skipped.iter().map(row_of).collect();
    assert_eq!(
        rows1
            .iter()
            .map(|r| (r.0, r.2.as_str(), r.3.as_str(), r.4, r.5, r.6.as_str()))
            .collect::<Vec<_>>(),
        [
            (run1, "20", "30", 10, 1, "bad record at 20"),
            (run1, "50", "60", 10, 3, "throttled (transient)"),
        ]
    );
    assert_eq!(skip_rows(&pool, &schema).await, rows1);
    assert_eq!(run_skipped(&pool, &schema, run1).await, 2);

    // 50 fixed, 20 not: the redrive does 50 and skips 20 again. The first
    // run's rows stay as they were; the second run has a row for 20, with
    // the error of its own attempt.
    job.fix(50);
    job.faults.lock().unwrap().insert(20, Fault::Transient);
    request_redrive(&store).await;
    let report = run_sums(&store, &job).await;
    assert_eq!((report.stats.redriven, report.stats.skipped), (1, 1));
    let second = sums_checkpoint(&store).await;
    let run2 = second.writer.run_id;
    assert_eq!(second.skipped.len(), 1);
    let again = row_of(&second.skipped[0]);
    assert_eq!(
        (again.0, again.2.as_str(), again.5, again.6.as_str()),
        (run2, "20", 3, "throttled (transient)")
    );
    assert!(again.7 >= rows1[1].7, "skipped after the first run's skips");
    let rows2: Vec<SkipRow> = rows1.iter().cloned().chain([again]).collect();
    assert_eq!(skip_rows(&pool, &schema).await, rows2);
    assert_eq!(run_skipped(&pool, &schema, run2).await, 1);

    // All fixed: the redrive does 20, the checkpoint holds no skipped chunk,
    // and the table still holds every skip.
    job.fix(20);
    request_redrive(&store).await;
    let report = run_sums(&store, &job).await;
    assert_eq!((report.stats.redriven, report.stats.skipped), (1, 0));
    let third = sums_checkpoint(&store).await;
    assert!(third.skipped.is_empty());
    assert_eq!(third.codec.decode::<u64>(&third.state).unwrap(), 4950);
    assert_eq!(skip_rows(&pool, &schema).await, rows2);
    assert_eq!(run_skipped(&pool, &schema, run1).await, 2);
    assert_eq!(run_skipped(&pool, &schema, third.writer.run_id).await, 0);

    // The guide's query: the chunks skipped in the last day, with their errors.
    let query = include_str!("../docs/stores.md")
        .split("```sql")
        .filter_map(|block| block.split("```").next())
        .find(|block| block.contains("FROM spotbatch_skipped_chunks"))
        .expect("the skipped chunks query of docs/stores.md")
        .replace(
            "spotbatch_skipped_chunks",
            &format!("\"{schema}\".spotbatch_skipped_chunks"),
        )
        .replace("spotbatch_runs", &format!("\"{schema}\".spotbatch_runs"));
    let rows = sqlx::query(sqlx::AssertSqlSafe(query))
        .fetch_all(&pool)
        .await
        .expect("the query of docs/stores.md");
    let found: Vec<(String, Uuid, String, String, String, i32)> = rows
        .iter()
        .map(|row| {
            (
                row.get("job_key"),
                row.get("run_id"),
                row.get("start_cursor"),
                row.get("next_cursor"),
                row.get("error"),
                row.get("attempts"),
            )
        })
        .collect();
    assert_eq!(
        found,
        rows2
            .iter()
            .map(|r| (r.1.clone(), r.0, r.2.clone(), r.3.clone(), r.6.clone(), r.5))
            .collect::<Vec<_>>()
    );
}

/// A save records the skipped chunks its checkpoint is the first to hold,
/// in its own statement: none when its compare-and-swap loses, each once,
/// and a row stays when a later checkpoint no longer holds its chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_records_new_skips_only_when_it_wins() {
    let (store, schema) = fresh_store().await;
    let pool = store.pool().clone();
    run_sums(&store, &Sums::failing(&[(20, Fault::Error)])).await;
    let saved = sums_checkpoint(&store).await;
    let first = saved.skipped[0].clone();
    assert_eq!(skip_rows(&pool, &schema).await, [row_of(&first)]);

    // A chunk skipped since, by the same run.
    let mut later = first.clone();
    later.start = b"70".to_vec();
    later.start_text = "70".into();
    later.next_text = "80".into();
    later.skipped_ms += 1;
    later.error = "bad record at 70".into();
    let mut next = saved.clone();
    next.version += 1;
    next.skipped.push(later.clone());

    // Over a version that is not the stored one: a conflict, and no row.
    let err = store
        .save(&next, Some(saved.version - 1))
        .await
        .expect_err("a stale version");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(skip_rows(&pool, &schema).await, [row_of(&first)]);

    store.save(&next, Some(saved.version)).await.expect("save");
    let both = vec![row_of(&first), row_of(&later)];
    assert_eq!(skip_rows(&pool, &schema).await, both);

    // The first one redriven: its row stays.
    let mut redriven = next.clone();
    redriven.version += 1;
    redriven.skipped.remove(0);
    store
        .save(&redriven, Some(next.version))
        .await
        .expect("save");
    assert_eq!(skip_rows(&pool, &schema).await, both);

    // Another process's first save sends every skipped chunk of its
    // checkpoint: the rows keep their first record.
    let other = PostgresStore::connect(&with_schema(&pg_url(), &schema))
        .await
        .expect("connect");
    let mut edited = redriven.clone();
    edited.version += 1;
    edited.skipped[0].error = "edited by hand".into();
    other
        .save(&edited, Some(redriven.version))
        .await
        .expect("save");
    assert_eq!(skip_rows(&pool, &schema).await, both);
}

/// A store at migration 0005 whose checkpoint holds skipped chunks takes
/// the new table at its next start, and the next save records those skips,
/// of the run that skipped them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_at_0005_records_the_skips_its_checkpoint_holds() {
    let (store, schema) = fresh_store().await;
    let pool = store.pool().clone();
    let job = Sums::failing(&[(20, Fault::Error), (50, Fault::Error)]);
    run_sums(&store, &job).await;
    let before = sums_checkpoint(&store).await;
    let run1 = before.writer.run_id;
    let s = format!("\"{schema}\"");
    for sql in [
        format!("DELETE FROM {s}._spotbatch_migrations WHERE version >= 6"),
        format!("DROP TABLE {s}.spotbatch_skipped_chunks"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .expect("back to 0005");
    }

    let upgraded = PostgresStore::connect(&with_schema(&pg_url(), &schema))
        .await
        .expect("start after an upgrade");
    assert!(skip_rows(&pool, &schema).await.is_empty());
    assert_eq!(run_skipped(&pool, &schema, run1).await, 2);
    assert_eq!(sums_checkpoint(&upgraded).await, before);

    // Fixed and redriven: the run's first save records the skips the
    // checkpoint held, as the first run's; the redrive leaves them.
    job.fix(20);
    job.fix(50);
    request_redrive(&upgraded).await;
    let report = run_sums(&upgraded, &job).await;
    assert_eq!(report.stats.redriven, 2);
    assert!(sums_checkpoint(&upgraded).await.skipped.is_empty());
    assert_eq!(
        skip_rows(&pool, &schema).await,
        before.skipped.iter().map(row_of).collect::<Vec<_>>()
    );
    assert!(skip_rows(&pool, &schema).await.iter().all(|r| r.0 == run1));
}

/// Two chunks, `""` to `next` and `next` to `"end"`: the second fails
/// with `error`.
#[derive(Clone)]
struct Odd {
    next: String,
    error: String,
}

#[async_trait]
impl Job for Odd {
    type Cursor = String;
    type State = ();

    async fn next_chunk(&mut self, at: &String) -> Result<Option<Chunk<String>>, BoxError> {
        Ok(match at.as_str() {
            "" => Some(Chunk::new(String::new(), self.next.clone())),
            "end" => None,
            _ => Some(Chunk::new(at.clone(), "end".into())),
        })
    }

    async fn process(
        &mut self,
        chunk: &Chunk<String>,
        _: &mut (),
        _: &ChunkContext,
    ) -> Result<(), BoxError> {
        if chunk.start().is_empty() {
            return Ok(());
        }
        Err(self.error.clone().into())
    }
}

/// Runs `job` on a fresh store, skipping its chunk; the rows recorded.
async fn run_odd(job: Odd) -> Vec<(String, String, String)> {
    let (store, schema) = fresh_store().await;
    let report = Runner::new("odd", job)
        .store(store.clone())
        .signals(&[])
        .checkpoint(Every::chunk())
        .skip(SkipPolicy::at_most(5))
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    assert_eq!(report.stats.skipped, 1);
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT start_cursor, next_cursor, error FROM \"{schema}\".spotbatch_skipped_chunks"
    )))
    .fetch_all(store.pool())
    .await
    .expect("the skipped chunks table")
}

/// A chunk's error may hold any text, a NUL included (a job quoting the
/// bad record it read): the skip is recorded all the same, and the save
/// that holds it does not fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skip_whose_error_holds_a_nul_is_recorded() {
    let rows = run_odd(Odd {
        next: "b".into(),
        error: "bad record \"a\0b\"".into(),
    })
    .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].2.contains("bad record \"a\u{FFFD}b\""), "{rows:?}");
}

/// A run that fails on such an error, skipping nothing, still saves its
/// final checkpoint, the error in its status and its run's row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_failed_by_an_error_holding_a_nul_saves_its_checkpoint() {
    let (store, schema) = fresh_store().await;
    let report = Runner::new(
        "odd",
        Odd {
            next: "b".into(),
            error: "bad record \"a\0b\"".into(),
        },
    )
    .store(store.clone())
    .signals(&[])
    .run()
    .await;
    assert!(
        matches!(&report.outcome, Outcome::Failed(Error::Job { .. })),
        "{:?}",
        report.outcome
    );
    let (status, detail): (String, String) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT status, status_detail FROM \"{schema}\".spotbatch_checkpoints"
    )))
    .fetch_one(store.pool())
    .await
    .expect("the checkpoint row");
    assert_eq!(status, "failed");
    assert!(detail.contains("bad record \"a\u{FFFD}b\""), "{detail}");
    let outcome: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT outcome_detail FROM \"{schema}\".spotbatch_runs"
    )))
    .fetch_one(store.pool())
    .await
    .expect("the run's row");
    assert!(outcome.contains('\u{FFFD}'), "{outcome}");
}

/// A cursor's text may be long and incompressible (a key, a token): the
/// skip is recorded all the same, and the save that holds it does not fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skip_of_a_long_cursor_is_recorded() {
    // 6000 hex digits of a xorshift: nothing for pglz to compress.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let next: String = (0..375)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{x:016x}")
        })
        .collect();
    let rows = run_odd(Odd {
        next: next.clone(),
        error: "bad".into(),
    })
    .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    // Whole, as `spotbatch skipped` prints it.
    assert_eq!(rows[0].0, format!("{next:?}"));
}
