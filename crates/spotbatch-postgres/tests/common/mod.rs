//! Helpers for the tests against a real PostgreSQL server (started by
//! scripts/services/postgres.sh, which `scripts/test` sources).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

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

/// An example binary that `cargo test` built next to the test binaries.
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("examples").join(name);
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test` (or scripts/test), which builds the examples",
        bin.display()
    );
    bin
}

pub fn signal(child: &Child, sig: i32) {
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) with a pid we spawned and have not reaped.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// Waits for the child and returns its status and stderr, failing the test
/// if it outlives `limit`.
pub fn finish(mut child: Child, limit: Duration) -> (ExitStatus, String) {
    let mut err = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "process did not exit within {limit:?}; stderr:\n{}",
                reader.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    (status, reader.join().expect("stderr reader"))
}
