//! csv_to_postgres (examples/csv_to_postgres.rs) stopped again and again by
//! SIGKILL and SIGTERM: after every stop the table holds exactly the records
//! before the checkpoint's cursor, and at the end every record of the file
//! once, its values as in the file. The file has a header, quoted fields
//! with line breaks, quotes and delimiters inside, unicode, CRLF and LF line
//! ends, blank lines and no line end after its last record.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod pg_common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pg_common::{admin_pool, example_command, finish, fresh_name, pg_url, signal, with_schema};
use spotbatch::source::FilePosition;
use spotbatch::{Checkpoint, Status};
use sqlx::{AssertSqlSafe, PgPool};

const RECORDS: usize = 3000;
const LIMIT: Duration = Duration::from_secs(60);

type Row = (String, String, String);

fn quoted(field: &str) -> String {
    format!("\"{}\"", field.replace('"', "\"\""))
}

/// The test file: `RECORDS` records of (id, name, note).
fn fixture() -> Vec<u8> {
    let mut out = String::from("id,name,note\r\n");
    for i in 0..RECORDS {
        let name = format!("Ünïcödé 名前 {i} \"q\"");
        let note = match i % 7 {
            0 => "two\r\nlines".to_owned(),
            1 => String::new(),
            2 => "a, b; c".to_owned(),
            3 => "tab\there".to_owned(),
            _ => format!("n{i}"),
        };
        let name = if i % 3 == 0 {
            quoted(&name)
        } else {
            name.replace('"', "")
        };
        out.push_str(&format!("{i},{name},{}", quoted(&note)));
        if i + 1 < RECORDS {
            out.push_str(if i % 2 == 0 { "\r\n" } else { "\n" });
        }
        if i == 500 {
            out.push_str("\n\r\n");
        }
    }
    out.into_bytes()
}

/// The file's records, as the `csv` crate reads the whole file.
fn reference(path: &Path) -> Vec<Row> {
    let mut reader = spotbatch::source::csv::Reader::from_path(path).unwrap();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[0].to_owned(), r[1].to_owned(), r[2].to_owned())
        })
        .collect()
}

fn load(csv: &Path, schema: &str, work_us: u64) -> Command {
    load_with_store(csv, schema, work_us, &with_schema(&pg_url(), schema))
}

fn load_with_store(csv: &Path, schema: &str, work_us: u64, store: &str) -> Command {
    let mut cmd = example_command("csv_to_postgres");
    cmd.arg("--csv")
        .arg(csv)
        .arg("--database")
        .arg(pg_url())
        .arg("--table")
        .arg(format!("{schema}.people"))
        .arg("--store")
        .arg(store)
        .arg("--chunk")
        .arg("50")
        .arg("--every-chunks")
        .arg("3")
        .arg("--work-us")
        .arg(work_us.to_string())
        .arg("--interrupted-exit-code")
        .arg("75");
    cmd
}

/// The table's rows, sorted; empty before the table exists.
async fn table(pool: &PgPool, schema: &str) -> Vec<Row> {
    let mut rows: Vec<Row> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT id, name, note FROM \"{schema}\".people"
    )))
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    rows.sort();
    rows
}

async fn checkpoint(pool: &PgPool, schema: &str) -> Option<Checkpoint> {
    let bytes: Option<Vec<u8>> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT envelope FROM \"{schema}\".spotbatch_checkpoints WHERE key = 'csv-to-postgres'"
    )))
    .fetch_optional(pool)
    .await
    .unwrap_or(None);
    bytes.map(|b| Checkpoint::decode(&b).expect("checkpoint is whole"))
}

async fn stored_cursor(pool: &PgPool, schema: &str) -> Option<FilePosition> {
    let c = checkpoint(pool, schema).await?;
    Some(c.codec.decode(&c.cursor).expect("cursor"))
}

/// The first `n` records of the file, sorted as the table's rows are.
fn first(records: &[Row], n: u64) -> Vec<Row> {
    let mut rows = records[..usize::try_from(n).unwrap()].to_vec();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_sigterm_at_any_moment_load_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("people.csv");
    std::fs::write(&csv, fixture()).unwrap();
    let records = reference(&csv);
    assert_eq!(records.len(), RECORDS);
    let schema = fresh_name("csv_load");
    let pool = admin_pool().await;
    let mut rng = fastrand::Rng::with_seed(0xc5_7000);
    let (mut kills, mut terms) = (0, 0);
    for run in 0.. {
        assert!(run < 100, "no completion after {run} runs");
        let before = stored_cursor(&pool, &schema).await;
        let mut child = load(&csv, &schema, 100)
            .spawn()
            .expect("spawn csv_to_postgres");
        // Let each run commit at least one checkpoint, then stop it at a random moment.
        let deadline = Instant::now() + Duration::from_secs(20);
        while stored_cursor(&pool, &schema).await == before
            && Instant::now() < deadline
            && child.try_wait().expect("try_wait").is_none()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(0..60))).await;
        let sig = if rng.u8(0..4) == 0 {
            libc::SIGTERM
        } else {
            libc::SIGKILL
        };
        if child.try_wait().expect("try_wait").is_none() {
            signal(&child, sig);
        }
        let (status, _, err) = finish(child, LIMIT);
        match (status.code(), status.signal()) {
            (Some(0), _) => break,
            (Some(75), _) => terms += 1,
            (None, Some(s)) if s == libc::SIGKILL => kills += 1,
            (None, Some(s)) if s == libc::SIGTERM => terms += 1,
            other => panic!("run {run}: unexpected exit {other:?}\n{err}"),
        }
        // The table holds exactly the records before the committed cursor.
        let cursor = stored_cursor(&pool, &schema).await.unwrap_or_default();
        assert_eq!(
            table(&pool, &schema).await,
            first(&records, cursor.record),
            "run {run}: the table and the checkpoint ({cursor}) disagree"
        );
    }
    eprintln!("{kills} SIGKILLs and {terms} SIGTERMs before completion");
    assert!(
        kills >= 3,
        "only {kills} SIGKILLs landed: the job is too short"
    );
    assert!(terms >= 1, "no SIGTERM landed");

    assert_eq!(table(&pool, &schema).await, first(&records, RECORDS as u64));
    let c = checkpoint(&pool, &schema).await.expect("a checkpoint");
    assert_eq!(c.status, Status::Completed);
    assert_eq!(c.counters.items, RECORDS as u64);
    let end: FilePosition = c.codec.decode(&c.cursor).unwrap();
    assert_eq!(end.offset, std::fs::metadata(&csv).unwrap().len());

    // A completed load does nothing more.
    let (status, _, err) = finish(load(&csv, &schema, 0).spawn().unwrap(), LIMIT);
    assert!(status.success(), "{err}");
    assert_eq!(table(&pool, &schema).await.len(), RECORDS);
}

#[tokio::test]
async fn an_empty_file_loads_nothing_and_a_header_alone_creates_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let pool = admin_pool().await;

    let empty = dir.path().join("empty.csv");
    std::fs::write(&empty, "").unwrap();
    let schema = fresh_name("csv_empty");
    let (status, _, err) = finish(load(&empty, &schema, 0).spawn().unwrap(), LIMIT);
    assert!(status.success(), "{err}");
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(format!("{schema}.people"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(exists, None, "a table without columns was created");

    let header = dir.path().join("header.csv");
    std::fs::write(&header, "id,name,\"the note\"").unwrap();
    let schema = fresh_name("csv_header");
    let (status, _, err) = finish(load(&header, &schema, 0).spawn().unwrap(), LIMIT);
    assert!(status.success(), "{err}");
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns
         WHERE table_schema = $1 AND table_name = 'people' ORDER BY ordinal_position",
    )
    .bind(&schema)
    .fetch_all(&pool)
    .await
    .unwrap();
    let text = |c: &str| (c.to_owned(), "text".to_owned());
    assert_eq!(columns, vec![text("id"), text("name"), text("the note")]);
    let count: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{schema}\".people"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn a_store_in_another_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("one.csv");
    std::fs::write(&csv, "a\n1\n").unwrap();
    let pool = admin_pool().await;
    let db = fresh_name("csv_otherdb");
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&pool)
        .await
        .unwrap();
    let schema = fresh_name("csv_other");
    let other = pg_common::with_database(&pg_url(), &db);
    let cmd = load_with_store(&csv, &schema, 0, &other);
    let (status, _, err) = finish({ cmd }.spawn().unwrap(), LIMIT);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("--store must be in the database of --database"),
        "{err}"
    );
}
