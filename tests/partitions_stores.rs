//! The partitioned fleet of `tests/partitions.rs` on the S3 and Postgres
//! stores: 8 dynamic tasks (real processes) on one job of 64 partitions,
//! stopped at random by SIGTERM and SIGKILL and started again, coordinated
//! by the store's compare-and-swap and leases alone; the job comes out
//! whole ([`fleet::Fleet::check`]).

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod fleet;
mod pg_common;
mod s3_common;

use std::sync::Arc;

use fleet::Fleet;

async fn run(fleet: Fleet) {
    let seed = fastrand::u64(..);
    eprintln!("{}: seed {seed}", fleet.url);
    let chaos = fleet.chaos(8, seed, 0.3).await;
    eprintln!(
        "{}: {} runs, {} SIGTERM, {} SIGKILL",
        fleet.url,
        chaos.runs,
        chaos.sigterms,
        chaos.killed.len()
    );
    assert!(
        chaos.sigterms + chaos.killed.len() > 0,
        "no task was stopped"
    );
    fleet.check(&chaos).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_dynamic_tasks_on_64_partitions_on_postgres() {
    let url = pg_common::with_schema(&pg_common::pg_url(), &pg_common::fresh_name("fleet"));
    let store = spotbatch::open_store(&url).await.unwrap();
    run(Fleet::new(url, store, 64)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_dynamic_tasks_on_64_partitions_on_s3() {
    let endpoint = s3_common::endpoint();
    let bucket = s3_common::fresh_bucket_on(&endpoint).await;
    let store = s3_common::store_on(&endpoint, &bucket, "ckpt").await;
    let mut fleet = Fleet::new(format!("s3://{bucket}/ckpt"), Arc::new(store), 64);
    let mut cmd = std::process::Command::new("true");
    s3_common::s3_env(&mut cmd, &endpoint);
    fleet.env = cmd
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_str()?.to_owned(), v?.to_str()?.to_owned())))
        .collect();
    run(fleet).await;
}
