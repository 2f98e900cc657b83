//! Checkpoint latency of [`PostgresStore`] against raw SQL on a plain table
//! in the same database, through the same pool, in the same run.
//!
//! # Running
//!
//! ```text
//! scripts/bench                                    # starts PostgreSQL (and SeaweedFS), runs every benchmark
//! cargo bench --features postgres --bench postgres_latency              # with SPOTBATCH_TEST_PG_URL exported
//! cargo bench --features postgres --bench postgres_latency -- --quick   # a fifth of the work
//! ```
//!
//! The server is the one `scripts/services/postgres.sh` starts: the
//! benchmark reads `SPOTBATCH_TEST_PG_URL` and panics when it is missing (it
//! never skips). Run without `--bench` (as `cargo test --benches` does), it
//! only runs a tiny smoke pass against that server, whose figures mean nothing.
//!
//! # The figures
//!
//! Everything happens in a schema created for the run (and dropped at the
//! end), on the store's own pool (`PostgresStore::connect` with the default
//! options: 4 connections, `statement_timeout` 10 s), which the baselines use
//! too. The baselines' table is `plain (key text PRIMARY KEY, version bigint,
//! bytes bytea)`. The checkpoint is a realistic one as a runner saves it
//! mid-run: 16-byte cursor, 256-byte state, a lease and this run in the
//! history, whose chunk count each save advances (a save of progress: the
//! run's `spotbatch_runs` row is written at its start and end, not by these
//! saves).
//!
//! 1. **Save.** [`CheckpointStore::save`] of version `v + 1` over `v` (one
//!    statement: the compare-and-swap `UPDATE` of every column), against
//!    `UPDATE plain SET bytes = $1, version = version + 1 WHERE key = $2 AND
//!    version = $3` with the same envelope. Each is its own transaction
//!    (autocommit, `fsync` on).
//! 2. **Load.** [`CheckpointStore::load`] (SELECT, checksum, decode) against
//!    `SELECT bytes, version FROM plain WHERE key = $1`.
//! 3. **Transactional.** A chunk through a [`SharedTransaction`] writing
//!    100 rows (one `INSERT … SELECT FROM unnest($1, $2)`), then the save that
//!    commits them with the checkpoint; against `BEGIN`, the same `INSERT`
//!    into a twin table, the raw `UPDATE`, `COMMIT`.
//!
//! Median, p90 and p99 of each; the ratio is of each percentile. Store and
//! baseline alternate (their order swapped every other time) after a
//! warm-up. Everything runs on one current-thread tokio runtime.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use spotbatch::conformance::MidRun;
use spotbatch::postgres::{PostgresStore, SharedTransaction};
use spotbatch::{CheckpointStore, JobKey};
use spotbatch_test_support::table::{percentile_rows, print_table, Latencies, Mode, Row};
use sqlx::{AssertSqlSafe, PgPool, SqlSafeStr, SqlStr};

/// How much work each figure does.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// Saves (and as many raw UPDATEs) timed.
    saves: usize,
    /// Loads (and as many raw SELECTs) timed.
    loads: usize,
    /// Transactional rounds (chunk + save, and raw transactions) timed.
    tx_rounds: usize,
    /// Untimed rounds first: connections, prepared statements, caches.
    warm_up: usize,
}

impl Sizes {
    const FULL: Self = Self {
        saves: 1_000,
        loads: 1_000,
        tx_rounds: 500,
        warm_up: 20,
    };
    const QUICK: Self = Self {
        saves: 200,
        loads: 200,
        tx_rounds: 100,
        warm_up: 10,
    };
    const SMOKE: Self = Self {
        saves: 5,
        loads: 5,
        tx_rounds: 3,
        warm_up: 1,
    };
}

/// Rows each transactional chunk writes.
const ROWS: usize = 100;

/// The job of the save and load figures (the transactional one is `nightly-etl/tx`).
const JOB: &str = "nightly-etl/2026-11-24";

fn job(name: &str) -> JobKey {
    JobKey::new(name).expect("key")
}

fn main() {
    let mode = Mode::from_args();
    let sizes = mode.pick(Sizes::SMOKE, Sizes::QUICK, Sizes::FULL);
    let url = std::env::var("SPOTBATCH_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "SPOTBATCH_TEST_PG_URL is not set: this benchmark needs a PostgreSQL server and \
                 never skips. Run it with scripts/bench (it starts one via \
                 scripts/services/postgres.sh), or export \
                 SPOTBATCH_TEST_PG_URL=postgres://user:pass@127.0.0.1:PORT/db"
            )
        });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let bench = rt.block_on(Bench::new(&url));
    let mut rows = rt.block_on(bench.saves(sizes));
    rows.extend(rt.block_on(bench.loads(sizes)));
    rows.extend(rt.block_on(bench.transactional(sizes)));
    let server = rt.block_on(bench.finish());

    println!(
        "PostgresStore latency (feature postgres), {}: {} cores, {server}, schema {}, {}-byte envelope\n",
        mode.describe(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        bench.schema,
        MidRun::new(job(JOB)).checkpoint().encode().len(),
    );
    print_table(&rows);
    println!("\ntook {:.1} s", started.elapsed().as_secs_f64());
}

/// The store, its pool and the baseline's statements, in a fresh schema.
struct Bench {
    store: PostgresStore,
    schema: String,
    /// `UPDATE plain … WHERE key = $2 AND version = $3`
    update: SqlStr,
    /// `SELECT bytes, version FROM plain WHERE key = $1`
    select: SqlStr,
    /// The 100-row INSERT into the store's and the baseline's row tables.
    insert_ours: SqlStr,
    insert_raw: SqlStr,
}

fn sql(text: String) -> SqlStr {
    AssertSqlSafe(text).into_sql_str()
}

impl Bench {
    async fn new(url: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let schema = format!("sbbench_{}_{nanos}", std::process::id());
        let sep = if url.contains('?') { '&' } else { '?' };
        let store = PostgresStore::connect(&format!("{url}{sep}schema={schema}"))
            .await
            .unwrap_or_else(|e| panic!("connect the store to {url}: {e}"));
        let s = format!("\"{schema}\"");
        for ddl in [
            format!(
                "CREATE TABLE {s}.plain (key text PRIMARY KEY, version bigint NOT NULL, bytes bytea NOT NULL)"
            ),
            format!("CREATE TABLE {s}.rows_ours (id bigint PRIMARY KEY, v text NOT NULL)"),
            format!("CREATE TABLE {s}.rows_raw (id bigint PRIMARY KEY, v text NOT NULL)"),
        ] {
            sqlx::query(sql(ddl))
                .execute(store.pool())
                .await
                .expect("create the baseline's tables");
        }
        let insert = |table: &str| {
            sql(format!(
                "INSERT INTO {s}.{table} (id, v) SELECT * FROM unnest($1::bigint[], $2::text[])"
            ))
        };
        Self {
            update: sql(format!(
                "UPDATE {s}.plain SET bytes = $1, version = version + 1 WHERE key = $2 AND version = $3"
            )),
            select: sql(format!(
                "SELECT bytes, version FROM {s}.plain WHERE key = $1"
            )),
            insert_ours: insert("rows_ours"),
            insert_raw: insert("rows_raw"),
            store,
            schema,
        }
    }

    fn pool(&self) -> &PgPool {
        self.store.pool()
    }

    /// A row of `plain` at version 1, holding `bytes`.
    async fn plain_row(&self, key: &str, bytes: &[u8]) {
        sqlx::query(sql(format!(
            "INSERT INTO \"{}\".plain (key, version, bytes) VALUES ($1, 1, $2)",
            self.schema
        )))
        .bind(key)
        .bind(bytes)
        .execute(self.pool())
        .await
        .expect("insert the baseline's row");
    }

    /// The server's version and durability settings; drops the schema.
    async fn finish(&self) -> String {
        let (version, fsync, commit): (String, String, String) = sqlx::query_as(
            "SELECT current_setting('server_version'), current_setting('fsync'), \
             current_setting('synchronous_commit')",
        )
        .fetch_one(self.pool())
        .await
        .expect("server settings");
        sqlx::query(sql(format!("DROP SCHEMA \"{}\" CASCADE", self.schema)))
            .execute(self.pool())
            .await
            .expect("drop the schema");
        self.pool().close().await;
        format!("PostgreSQL {version} (fsync {fsync}, synchronous_commit {commit})")
    }

    async fn raw_update(
        &self,
        executor: impl sqlx::PgExecutor<'_>,
        key: &str,
        bytes: &[u8],
        v: u64,
    ) {
        let done = sqlx::query(self.update.clone())
            .bind(bytes)
            .bind(key)
            .bind(v as i64)
            .execute(executor)
            .await
            .expect("raw UPDATE");
        assert_eq!(done.rows_affected(), 1, "raw UPDATE at version {v}");
    }

    async fn saves(&self, sizes: Sizes) -> Vec<Row> {
        let mut progress = MidRun::new(job(JOB));
        self.store
            .save(progress.checkpoint(), None)
            .await
            .expect("create the checkpoint");
        self.plain_row("save", &progress.checkpoint().encode())
            .await;
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for i in 0..sizes.warm_up + sizes.saves {
            let checkpoint = progress.advance();
            let bytes = checkpoint.encode();
            let expected = checkpoint.version - 1;
            let save_ours = async {
                let started = Instant::now();
                self.store
                    .save(checkpoint, Some(expected))
                    .await
                    .expect("PostgresStore save");
                started.elapsed()
            };
            let update_raw = async {
                let started = Instant::now();
                self.raw_update(self.pool(), "save", &bytes, expected).await;
                started.elapsed()
            };
            let (o, b) = if i % 2 == 0 {
                let o = save_ours.await;
                (o, update_raw.await)
            } else {
                let b = update_raw.await;
                (save_ours.await, b)
            };
            if i >= sizes.warm_up {
                ours.push(o);
                base.push(b);
            }
        }
        let last = progress.checkpoint();
        let loaded = self
            .store
            .load(&last.job)
            .await
            .expect("load")
            .expect("saved");
        assert_eq!(
            loaded.encode(),
            last.encode(),
            "the store holds the last save"
        );
        let (bytes, version): (Vec<u8>, i64) = sqlx::query_as(self.select.clone())
            .bind("save")
            .fetch_one(self.pool())
            .await
            .expect("raw SELECT");
        assert_eq!((bytes, version as u64), (last.encode(), last.version));
        percentile_rows(
            format!(
                "1. save of version v+1 over v, {} each (baseline: UPDATE plain … WHERE key AND version)",
                sizes.saves
            ),
            "PostgresStore save",
            &Latencies::new(ours),
            &Latencies::new(base),
        )
    }

    async fn loads(&self, sizes: Sizes) -> Vec<Row> {
        let key = JobKey::new(JOB).expect("key");
        let current = self.store.load(&key).await.expect("load").expect("saved");
        let (version, len) = (current.version, current.encode().len());
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for i in 0..sizes.warm_up + sizes.loads {
            let load_ours = async {
                let started = Instant::now();
                let loaded = self.store.load(&key).await.expect("PostgresStore load");
                let took = started.elapsed();
                assert_eq!(loaded.map(|c| c.version), Some(version));
                took
            };
            let select_raw = async {
                let started = Instant::now();
                let (bytes, v): (Vec<u8>, i64) = sqlx::query_as(self.select.clone())
                    .bind("save")
                    .fetch_one(self.pool())
                    .await
                    .expect("raw SELECT");
                let took = started.elapsed();
                assert_eq!((bytes.len(), v as u64), (len, version));
                took
            };
            let (o, b) = if i % 2 == 0 {
                let o = load_ours.await;
                (o, select_raw.await)
            } else {
                let b = select_raw.await;
                (load_ours.await, b)
            };
            if i >= sizes.warm_up {
                ours.push(o);
                base.push(b);
            }
        }
        percentile_rows(
            format!(
                "2. load, {} each (baseline: SELECT bytes, version FROM plain WHERE key)",
                sizes.loads
            ),
            "PostgresStore load",
            &Latencies::new(ours),
            &Latencies::new(base),
        )
    }

    async fn transactional(&self, sizes: Sizes) -> Vec<Row> {
        let tx: SharedTransaction = self.store.transactional().expect("a pool of 2 or more");
        let tx_store = tx.store();
        let mut progress = MidRun::new(job("nightly-etl/tx"));
        tx_store
            .save(progress.checkpoint(), None)
            .await
            .expect("create the checkpoint");
        self.plain_row("tx", &progress.checkpoint().encode()).await;
        let rounds = sizes.warm_up + sizes.tx_rounds;
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for i in 0..rounds {
            let first = (i * ROWS) as i64;
            let ids: Vec<i64> = (first..first + ROWS as i64).collect();
            let values: Vec<String> = ids
                .iter()
                .map(|id| format!("row {id} of the nightly ETL"))
                .collect();
            let checkpoint = progress.advance();
            let bytes = checkpoint.encode();
            let expected = checkpoint.version - 1;
            let chunk_and_save = async {
                let started = Instant::now();
                let mut chunk = tx.chunk().await.expect("chunk transaction");
                sqlx::query(self.insert_ours.clone())
                    .bind(&ids)
                    .bind(&values)
                    .execute(&mut *chunk)
                    .await
                    .expect("chunk INSERT");
                chunk.done().await.expect("chunk done");
                tx_store
                    .save(checkpoint, Some(expected))
                    .await
                    .expect("transactional save");
                started.elapsed()
            };
            let raw_transaction = async {
                let started = Instant::now();
                let mut t = self.pool().begin().await.expect("BEGIN");
                sqlx::query(self.insert_raw.clone())
                    .bind(&ids)
                    .bind(&values)
                    .execute(&mut *t)
                    .await
                    .expect("raw INSERT");
                self.raw_update(&mut *t, "tx", &bytes, expected).await;
                t.commit().await.expect("COMMIT");
                started.elapsed()
            };
            let (o, b) = if i % 2 == 0 {
                let o = chunk_and_save.await;
                (o, raw_transaction.await)
            } else {
                let b = raw_transaction.await;
                (chunk_and_save.await, b)
            };
            if i >= sizes.warm_up {
                ours.push(o);
                base.push(b);
            }
        }
        assert!(!tx.is_open().await, "the last save committed");
        for table in ["rows_ours", "rows_raw"] {
            let n: i64 = sqlx::query_scalar(sql(format!(
                "SELECT count(*) FROM \"{}\".{table}",
                self.schema
            )))
            .fetch_one(self.pool())
            .await
            .expect("count rows");
            assert_eq!(n as usize, rounds * ROWS, "rows committed in {table}");
        }
        let last = progress.checkpoint();
        let loaded = self
            .store
            .load(&last.job)
            .await
            .expect("load")
            .expect("saved");
        assert_eq!(loaded.version, last.version, "the last transactional save");
        percentile_rows(
            format!(
                "3. transactional, {} each: chunk of {ROWS} rows + save commit (baseline: BEGIN, INSERT {ROWS} rows, UPDATE, COMMIT)",
                sizes.tx_rounds
            ),
            "SharedTransaction chunk + save",
            &Latencies::new(ours),
            &Latencies::new(base),
        )
    }
}

// ---------------------------------------------------------------------------
// Output and helpers
