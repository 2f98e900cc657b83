//! `KeysetScan` against a real PostgreSQL server: every row once, in key
//! order, from every batch boundary; composite keys of common types; rows
//! changing during the scan; NULL-able, duplicate and unsupported keys
//! refused with errors that say why.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod pg_common;

use pg_common::{admin_pool, fresh_name};
use spotbatch::source::{KeyValue, KeysetScan, Limit, Source, SourceError};
use sqlx::{AssertSqlSafe, PgPool, Row};

/// A fresh schema, first on the pool's search path.
async fn schema_pool(prefix: &str) -> (PgPool, String) {
    let admin = admin_pool().await;
    let schema = fresh_name(prefix);
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .unwrap();
    let search_path = schema.clone();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .after_connect(move |conn, _| {
            let sql = format!("SET search_path = {search_path}");
            Box::pin(async move {
                sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await?;
                Ok(())
            })
        })
        .connect(&pg_common::pg_url())
        .await
        .unwrap();
    (pool, schema)
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Every row's `label` from `from` to the end, and the cursor after each batch.
async fn drain(
    scan: &mut KeysetScan,
    from: Vec<KeyValue>,
    limit: Limit,
) -> (Vec<String>, Vec<Vec<KeyValue>>) {
    let mut cursor = from;
    let (mut labels, mut cursors) = (Vec::new(), Vec::new());
    while let Some(batch) = scan.next_batch(&cursor, limit).await.unwrap() {
        assert!(batch.len() as u64 <= limit.max_records_or_default());
        for row in batch.records() {
            labels.push(row.try_get::<String, _>("label").unwrap());
        }
        cursor = batch.next().clone();
        cursors.push(cursor.clone());
    }
    (labels, cursors)
}

/// The cursor through JSON, as a resumed run reads it from a checkpoint.
fn reloaded(cursor: &[KeyValue]) -> Vec<KeyValue> {
    serde_json::from_str(&serde_json::to_string(cursor).unwrap()).unwrap()
}

#[tokio::test]
async fn a_composite_key_reads_every_row_once_from_every_boundary() {
    let (pool, _schema) = schema_pool("keyset_composite").await;
    exec(
        &pool,
        "CREATE TABLE orders (region text NOT NULL, id bigint NOT NULL, label text NOT NULL,
                              PRIMARY KEY (region, id));
         INSERT INTO orders
         SELECT (ARRAY['north', 'Süd', 'east', '東', 'west b'])[1 + i % 5], i / 5, 'order ' || i
         FROM generate_series(0, 236) AS i;",
    )
    .await;
    let expected: Vec<String> = sqlx::query_scalar("SELECT label FROM orders ORDER BY region, id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(expected.len(), 237);
    for limit in [
        Limit::records(1),
        Limit::records(7),
        Limit::records(100),
        Limit::bytes(10),
    ] {
        let mut scan = KeysetScan::table(&pool, "orders", &["region", "id"])
            .await
            .unwrap();
        let (labels, cursors) = drain(&mut scan, Vec::new(), limit).await;
        assert_eq!(labels, expected, "{limit:?}");
        let mut done = 0;
        let every = if limit.max_records() == Some(1) {
            17
        } else {
            1
        };
        for (i, cursor) in cursors.iter().enumerate() {
            if i % every != 0 && i + 1 != cursors.len() {
                continue;
            }
            let mut resumed = KeysetScan::table(&pool, "orders", &["region", "id"])
                .await
                .unwrap();
            let (rest, _) = drain(&mut resumed, reloaded(cursor), limit).await;
            done = expected.len() - rest.len();
            assert_eq!(rest, expected[done..], "{limit:?} from {cursor:?}");
        }
        assert_eq!(done, expected.len());
    }
}

#[tokio::test]
async fn keys_of_common_types_scan_in_the_databases_order() {
    let (pool, _schema) = schema_pool("keyset_types").await;
    exec(
        &pool,
        "CREATE TABLE typed (
             i2 smallint NOT NULL, i4 integer NOT NULL, t varchar(20) NOT NULL, c char(3) NOT NULL,
             u uuid NOT NULL, d date NOT NULL, ts timestamp NOT NULL, tz timestamptz NOT NULL,
             label text NOT NULL);
         INSERT INTO typed
         SELECT i - 50, i * 1000 - 50000, 'k' || i, lpad(i::text, 3),
                md5(i::text)::uuid, date '2024-02-27' + i, timestamp '2024-01-01 00:00:00.123456' + i * interval '37 minutes',
                timestamptz '2024-03-31 01:30+02' + i * interval '1 hour 0.5 second', 'row ' || i
         FROM generate_series(0, 99) AS i;",
    )
    .await;
    for key in ["i2", "i4", "t", "c", "u", "d", "ts", "tz"] {
        let expected: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT label FROM typed ORDER BY {key}"
        )))
        .fetch_all(&pool)
        .await
        .unwrap();
        let mut scan = KeysetScan::table(&pool, "typed", &[key]).await.unwrap();
        let (labels, cursors) = drain(&mut scan, Vec::new(), Limit::records(9)).await;
        assert_eq!(labels, expected, "key {key}");
        let middle = reloaded(&cursors[5]);
        let (rest, _) = drain(&mut scan, middle, Limit::records(9)).await;
        assert_eq!(rest, expected[54..], "key {key} resumed");
    }
}

#[tokio::test]
async fn a_query_is_scanned_by_its_output_columns() {
    let (pool, _schema) = schema_pool("keyset_query").await;
    exec(
        &pool,
        "CREATE TABLE items (id integer PRIMARY KEY, kind text, label text NOT NULL);
         INSERT INTO items SELECT i, CASE WHEN i % 3 = 0 THEN NULL ELSE 'k' END, 'item ' || i
         FROM generate_series(1, 50) AS i;",
    )
    .await;
    let query =
        "SELECT id, upper(label) AS label, coalesce(kind, '-') AS kind FROM items WHERE id % 2 = 0";
    let mut scan = KeysetScan::query(&pool, query, &["kind", "id"])
        .await
        .unwrap();
    let (labels, _) = drain(&mut scan, Vec::new(), Limit::records(4)).await;
    let expected: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT label FROM ({query}) AS q ORDER BY kind, id"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(labels, expected);
    assert_eq!(labels.len(), 25);
}

#[tokio::test]
async fn rows_changing_during_the_scan_are_never_read_twice_nor_skipped_in_place() {
    let (pool, _schema) = schema_pool("keyset_changes").await;
    exec(
        &pool,
        "CREATE TABLE t (id integer PRIMARY KEY, label text NOT NULL);
         INSERT INTO t SELECT i * 10, 'r' || i * 10 FROM generate_series(1, 30) AS i;",
    )
    .await;
    let mut scan = KeysetScan::table(&pool, "t", &["id"]).await.unwrap();
    let first = scan
        .next_batch(&Vec::new(), Limit::records(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.next(), &vec![KeyValue::Int(100)]);
    // Behind the cursor: a new row and a deleted one; ahead: both too.
    exec(
        &pool,
        "INSERT INTO t VALUES (5, 'r5'), (155, 'r155');
         DELETE FROM t WHERE id IN (20, 200);",
    )
    .await;
    let (rest, _) = drain(&mut scan, first.next().clone(), Limit::records(10)).await;
    let expected: Vec<String> = (11..=30)
        .map(|i| i * 10)
        .filter(|id| *id != 200)
        .flat_map(|id| if id == 160 { vec![155, 160] } else { vec![id] })
        .map(|id| format!("r{id}"))
        .collect();
    assert_eq!(rest, expected);
}

async fn scan_error(
    pool: &PgPool,
    build: impl std::future::Future<Output = Result<KeysetScan, SourceError>>,
) -> String {
    let _ = pool;
    match build.await {
        Ok(scan) => panic!("{scan:?} was built"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn keys_that_cannot_order_every_row_once_are_refused() {
    let (pool, _schema) = schema_pool("keyset_refused").await;
    exec(
        &pool,
        "CREATE TABLE loose (id integer PRIMARY KEY, maybe integer, amount numeric NOT NULL,
                             dup integer NOT NULL, label text NOT NULL);
         INSERT INTO loose SELECT i, nullif(i % 4, 0), i, (i + 1) / 2, 'l' || i FROM generate_series(1, 20) AS i;",
    )
    .await;
    // A NULL-able column, from the catalog: as a table's key and a query's.
    let err = scan_error(&pool, KeysetScan::table(&pool, "loose", &["id", "maybe"])).await;
    assert!(
        err.contains("loose: key column \"maybe\" can be NULL"),
        "{err}"
    );
    let err = scan_error(
        &pool,
        KeysetScan::query(&pool, "SELECT maybe, label FROM loose", &["maybe"]),
    )
    .await;
    assert!(
        err.contains("key column \"maybe\" can be NULL")
            && err.contains("SELECT maybe, label FROM loose"),
        "{err}"
    );
    // A computed key with NULLs: refused at the first NULL read.
    let mut scan = KeysetScan::query(
        &pool,
        "SELECT CASE WHEN id % 4 = 0 THEN NULL ELSE id END AS m, label FROM loose",
        &["m"],
    )
    .await
    .unwrap();
    let err = scan
        .next_batch(&Vec::new(), Limit::records(100))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("key column \"m\" is NULL"), "{err}");
    // A key that is not unique: refused at the first repeat, even across a batch's end.
    let mut scan = KeysetScan::table(&pool, "loose", &["dup"]).await.unwrap();
    let err = scan
        .next_batch(&Vec::new(), Limit::records(1))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("two rows have the key [Int(1)] (dup): the key must be unique"),
        "{err}"
    );
    // Types, names, tables.
    let err = scan_error(&pool, KeysetScan::table(&pool, "loose", &["amount"])).await;
    assert!(
        err.contains("key column \"amount\" is of type NUMERIC"),
        "{err}"
    );
    let err = scan_error(&pool, KeysetScan::table(&pool, "loose", &["nope"])).await;
    assert!(
        err.contains(
            "no column \"nope\" for the key (the columns are id, maybe, amount, dup, label)"
        ),
        "{err}"
    );
    let err = scan_error(&pool, KeysetScan::table(&pool, "missing_table", &["id"])).await;
    assert!(err.contains("missing_table: no such table"), "{err}");
    let err = scan_error(&pool, KeysetScan::table(&pool, "loose", &[])).await;
    assert!(err.contains("at least one key column"), "{err}");
}
