//! Helpers for the tests against a real PostgreSQL server (started by
//! scripts/services/postgres.sh, which `scripts/test` sources).

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// The server's URL; panics (never skips) when the service is not running.
pub fn pg_url() -> String {
    std::env::var("SPOTBATCH_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "SPOTBATCH_TEST_PG_URL is not set: these tests need a PostgreSQL server. \
             Run them with scripts/test (it starts one via scripts/services/postgres.sh), \
             or export SPOTBATCH_TEST_PG_URL=postgres://user:pass@127.0.0.1:PORT/db"
        )
    })
}

/// The pg_ctl command line of the test cluster, for restarts.
pub fn pg_ctl() -> String {
    std::env::var("SPOTBATCH_TEST_PG_CTL").unwrap_or_else(|_| {
        panic!(
            "SPOTBATCH_TEST_PG_CTL is not set: the restart test needs the test cluster's pg_ctl \
             command line. Run the tests with scripts/test."
        )
    })
}

/// A schema name no other test (or earlier run) uses.
pub fn fresh_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "t_{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// `url` with `?schema=…` (or `&schema=…`) appended.
pub fn with_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}schema={schema}")
}

/// `url` pointing at another database on the same server.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let cut = base.rfind('/').expect("a database path");
    let mut out = format!("{}/{db}", &base[..cut]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A small pool for the test's own queries.
pub async fn admin_pool() -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(&pg_url())
        .await
        .expect("connect to the test server")
}

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use spotbatch_test_support::{
    as_pid1, command_line, example_bin, example_command, finish, signal, signal_pid,
};
