//! The conformance suite every [`CheckpointStore`] passes.
//!
//! A store's test builds the store and calls [`run_all`]; the memory, file,
//! S3 and Postgres stores all do. Outside implementers get this module with
//! the `conformance` feature. Each case panics with a message on failure.
//! The suite expects a store with no keys under `conformance/` (a fresh
//! directory, bucket prefix or schema) and leaves its keys behind.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::checkpoint::{Checkpoint, Status, Writer};
use crate::key::JobKey;
use crate::store::{CheckpointStore, Listing, StoreError};

/// Runs every case against `store`, one after the other.
pub async fn run_all(store: Arc<dyn CheckpointStore>) {
    missing_key_loads_none(&*store).await;
    create_load_round_trip(&*store).await;
    create_conflicts_when_present(&*store).await;
    update_needs_the_stored_version(&*store).await;
    keys_are_isolated(&*store).await;
    list_shows_versions_and_status(&*store).await;
    delete_is_compare_and_swap(&*store).await;
    concurrent_savers_one_winner_per_version(store.clone(), 8, 6).await;
}

fn key(name: &str) -> JobKey {
    JobKey::new(format!("conformance/{name}")).expect("valid key")
}

fn checkpoint(key: &JobKey, version: u64, cursor: &[u8]) -> Checkpoint {
    let mut c = Checkpoint::new(key.clone(), Writer::this_process());
    c.version = version;
    c.cursor = cursor.to_vec();
    c.cursor_type = "conformance".into();
    c
}

/// Loading a key never saved gives `None`, not an error.
pub async fn missing_key_loads_none(store: &dyn CheckpointStore) {
    let loaded = store.load(&key("never-saved")).await;
    assert!(
        matches!(loaded, Ok(None)),
        "load of a missing key: {loaded:?}"
    );
}

/// A created checkpoint loads back equal, field for field.
pub async fn create_load_round_trip(store: &dyn CheckpointStore) {
    let k = key("round-trip");
    let mut c = checkpoint(&k, 1, &[0, 1, 2, 255]);
    c.status = Status::Interrupted {
        source: "SIGTERM".into(),
    };
    c.state = vec![7; 10_000];
    store.save(&c, None).await.expect("create");
    let loaded = store.load(&k).await.expect("load").expect("present");
    assert_eq!(loaded, c, "loaded checkpoint differs from the saved one");
}

/// Creating (expected `None`) over an existing checkpoint is a conflict and changes nothing.
pub async fn create_conflicts_when_present(store: &dyn CheckpointStore) {
    let k = key("create-twice");
    store
        .save(&checkpoint(&k, 1, b"first"), None)
        .await
        .expect("create");
    let err = store
        .save(&checkpoint(&k, 1, b"second"), None)
        .await
        .expect_err("a second create must conflict");
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: None,
                found: Some(1),
                ..
            }
        ),
        "{err}"
    );
    let loaded = store.load(&k).await.expect("load").expect("present");
    assert_eq!(
        loaded.cursor, b"first",
        "a failed create changed the checkpoint"
    );
}

/// An update must name the stored version; a stale or future one is a conflict.
pub async fn update_needs_the_stored_version(store: &dyn CheckpointStore) {
    let k = key("update");
    store
        .save(&checkpoint(&k, 1, b"v1"), None)
        .await
        .expect("create");
    store
        .save(&checkpoint(&k, 2, b"v2"), Some(1))
        .await
        .expect("update 1 -> 2");
    for stale in [Some(1), Some(3)] {
        let err = store
            .save(&checkpoint(&k, 9, b"stale"), stale)
            .await
            .expect_err("a save with the wrong expected version must fail");
        assert!(
            matches!(err, StoreError::Conflict { found: Some(2), .. }),
            "expected {stale:?}: {err}"
        );
    }
    let missing = key("update-missing");
    let err = store
        .save(&checkpoint(&missing, 2, b"x"), Some(1))
        .await
        .expect_err("updating a missing key must fail");
    assert!(
        matches!(err, StoreError::Conflict { found: None, .. }),
        "{err}"
    );
    let loaded = store.load(&k).await.expect("load").expect("present");
    assert_eq!((loaded.version, loaded.cursor.as_slice()), (2, &b"v2"[..]));
    assert_eq!(store.load(&missing).await.expect("load"), None);
}

/// Keys that look alike, or like paths, are distinct and stay in the store.
pub async fn keys_are_isolated(store: &dyn CheckpointStore) {
    let long = "ü".repeat(300);
    let names = [
        "a/b",
        "a%2Fb",
        "A/b",
        "../../etc/passwd",
        "..",
        "sp ace",
        long.as_str(),
    ];
    for (i, name) in names.iter().enumerate() {
        let k = key(&format!("iso/{name}"));
        store
            .save(&checkpoint(&k, 1, &[i as u8]), None)
            .await
            .unwrap_or_else(|e| panic!("create {name:?}: {e}"));
    }
    for (i, name) in names.iter().enumerate() {
        let k = key(&format!("iso/{name}"));
        let loaded = store.load(&k).await.expect("load").expect("present");
        assert_eq!(
            loaded.cursor,
            [i as u8],
            "key {name:?} read another key's checkpoint"
        );
        assert_eq!(loaded.job, k);
    }
}

/// `list` shows each checkpoint with its version and status.
pub async fn list_shows_versions_and_status(store: &dyn CheckpointStore) {
    let k = key("listed");
    let mut c = checkpoint(&k, 1, b"x");
    store.save(&c, None).await.expect("create");
    c.version = 2;
    c.status = Status::Completed;
    c.counters.chunks = 17;
    store.save(&c, Some(1)).await.expect("update");
    let listed = store.list().await.expect("list");
    let found = listed.iter().find_map(|l| match l {
        Listing::Checkpoint(s) if s.job == k => Some(s),
        _ => None,
    });
    let summary = found.unwrap_or_else(|| panic!("{k} not listed in {listed:?}"));
    assert_eq!(
        (summary.version, &summary.status, summary.chunks),
        (2, &Status::Completed, 17)
    );
}

/// `delete` removes only the version named; a missing key is `NotFound`.
pub async fn delete_is_compare_and_swap(store: &dyn CheckpointStore) {
    let k = key("deleted");
    store
        .save(&checkpoint(&k, 1, b"x"), None)
        .await
        .expect("create");
    let err = store
        .delete(&k, 5)
        .await
        .expect_err("delete of a stale version");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(
        store.load(&k).await.expect("load").is_some(),
        "a failed delete removed it"
    );
    store.delete(&k, 1).await.expect("delete");
    assert_eq!(store.load(&k).await.expect("load"), None);
    let err = store.delete(&k, 1).await.expect_err("second delete");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    store
        .save(&checkpoint(&k, 1, b"again"), None)
        .await
        .expect("re-create after delete");
}

/// `savers` tasks race to advance one key `rounds` times each; every version
/// is won by exactly one of them and the final version counts every win.
pub async fn concurrent_savers_one_winner_per_version(
    store: Arc<dyn CheckpointStore>,
    savers: usize,
    rounds: usize,
) {
    let k = key("race");
    store
        .save(&checkpoint(&k, 1, b"0"), None)
        .await
        .expect("create");
    let mut tasks = Vec::new();
    for saver in 0..savers {
        let store = store.clone();
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            while won.len() < rounds {
                let current = store.load(&k).await.expect("load").expect("present");
                let next = checkpoint(&k, current.version + 1, saver.to_string().as_bytes());
                match store.save(&next, Some(current.version)).await {
                    Ok(()) => won.push(next.version),
                    Err(StoreError::Conflict { .. }) => tokio::task::yield_now().await,
                    Err(e) => panic!("saver {saver}: {e}"),
                }
            }
            won
        }));
    }
    let mut winners: BTreeMap<u64, usize> = BTreeMap::new();
    for task in tasks {
        for version in task.await.expect("saver task") {
            *winners.entry(version).or_default() += 1;
        }
    }
    let total = savers * rounds;
    let twice: Vec<_> = winners.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "versions won by more than one saver: {twice:?}"
    );
    let expected: Vec<u64> = (2..=total as u64 + 1).collect();
    assert_eq!(winners.keys().copied().collect::<Vec<_>>(), expected);
    let last = store.load(&k).await.expect("load").expect("present");
    assert_eq!(last.version, total as u64 + 1);
}

/// A job's checkpoint as a runner with the default lease saves it mid-run
/// (16-byte cursor, 256-byte state, a lease, this run in its history), for
/// store benchmarks: [`advance`](Self::advance) gives the next save's.
#[derive(Debug, Clone)]
pub struct MidRun {
    checkpoint: Checkpoint,
}

impl MidRun {
    /// The job's checkpoint at version 1.
    pub fn new(job: JobKey) -> Self {
        let writer = Writer::this_process();
        let now = crate::checkpoint::now_ms();
        let mut c = Checkpoint::new(job, writer.clone());
        c.cursor_type = "(etl::Cursor, etl::Totals)".to_owned();
        c.schema = 1;
        c.cursor = (0u8..16).collect();
        c.state = (0..256u32).map(|i| (i * 7) as u8).collect();
        c.counters.chunks = 123_456;
        c.counters.items = 123_456_000;
        c.counters.checkpoints = 1_234;
        c.counters.runs = 3;
        c.lease = Some(crate::checkpoint::Lease::new(writer.run_id, now + 60_000));
        c.history
            .push(crate::checkpoint::RunRecord::started(&writer, now));
        Self { checkpoint: c }
    }

    /// The current checkpoint.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The next checkpoint: 100 more chunks, version + 1, lease renewed.
    pub fn advance(&mut self) -> &Checkpoint {
        let c = &mut self.checkpoint;
        let now = crate::checkpoint::now_ms();
        c.version += 1;
        c.counters.chunks += 100;
        c.counters.items += 100_000;
        c.counters.checkpoints += 1;
        c.cursor[..8].copy_from_slice(&c.counters.chunks.to_le_bytes());
        c.state[..8].copy_from_slice(&c.counters.items.to_le_bytes());
        c.updated_ms = now;
        c.lease = c
            .lease
            .map(|l| crate::checkpoint::Lease::new(l.owner, now + 60_000));
        if let Some(run) = c.history.last_mut() {
            run.chunks += 100;
        }
        c
    }
}
