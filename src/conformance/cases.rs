//! The cases on sound entries: compare-and-swap, keys, list, delete, renew, races.

use std::collections::BTreeMap;
use std::sync::Arc;

use uuid::Uuid;

use super::{assert_conflict, assert_names, checkpoint, key, load_present};
use crate::checkpoint::{now_ms, Checkpoint, Counters, Lease, RunRecord, Status, Writer};
use crate::codec::Codec;
use crate::key::JobKey;
use crate::store::{CheckpointStore, Listing, StoreError, Summary};
use crate::types::TypeDescription;

/// Loading a key never saved gives `None`, not an error; listing a store
/// never written to (a directory not yet created) is not an error either.
pub async fn missing_key_loads_none(store: &dyn CheckpointStore) {
    assert!(
        !store.location().is_empty(),
        "location() must say where the store is"
    );
    let loaded = store.load(&key("never-saved")).await;
    assert!(
        matches!(loaded, Ok(None)),
        "load of a missing key: {loaded:?}"
    );
    let listed = store
        .list()
        .await
        .unwrap_or_else(|e| panic!("list of a store with no checkpoint of ours: {e}"));
    let ours: Vec<_> = listed
        .iter()
        .filter(
            |l| matches!(l, Listing::Checkpoint(s) if s.job.as_str().starts_with("conformance/")),
        )
        .collect();
    assert!(
        ours.is_empty(),
        "the suite needs a store without keys under conformance/: {ours:?}"
    );
}

/// A created checkpoint loads back equal, field for field: a binary cursor
/// with a large state, and one with everything a runner writes (JSON codec,
/// schema, counters, the writer's task, a lease, run history, a long status
/// detail).
pub async fn create_load_round_trip(store: &dyn CheckpointStore) {
    let k = key("round-trip");
    let mut c = checkpoint(&k, 1, &[0, 1, 2, 255]);
    c.status = Status::Interrupted {
        source: "SIGTERM".into(),
    };
    c.state = vec![7; 10_000];
    store.save(&c, None).await.expect("create");
    assert_eq!(
        load_present(store, &k).await,
        c,
        "loaded checkpoint differs from the saved one"
    );

    let k = key("round-trip-full");
    let writer = Writer {
        task: "arn:aws:ecs:eu-west-1:123456789012:task/batch/0abc".into(),
        ..Writer::this_process()
    };
    let mut c = Checkpoint::new(k.clone(), writer.clone());
    c.status = Status::Failed {
        message: format!("chunk 12 failed: {}", "é".repeat(200)),
    };
    c.codec = Codec::Json;
    c.cursor_type = "(etl::Cursor, etl::Totals)".into();
    c.schema = 3;
    c.types = TypeDescription::trace::<(String, u64), BTreeMap<String, u64>>().ok();
    assert!(c.types.is_some(), "the sample's shape traces");
    c.cursor = br#"{"day":"2026-11-24","row":1200}"#.to_vec();
    c.state = br#"{"rows":1200,"bytes":56000}"#.to_vec();
    c.counters = Counters {
        chunks: 12,
        items: 1200,
        checkpoints: 5,
        interruptions: 1,
        runs: 2,
    };
    c.created_ms = 1_700_000_000_123;
    c.updated_ms = 1_700_000_060_456;
    c.lease = Some(Lease::new(writer.run_id, 1_700_000_120_456));
    let mut earlier = RunRecord::started(&Writer::this_process(), 1_699_999_000_000);
    earlier.ended_ms = 1_699_999_500_000;
    earlier.outcome = "interrupted (SIGTERM)".into();
    earlier.chunks = 7;
    let mut this_run = RunRecord::started(&writer, 1_700_000_000_123);
    this_run.chunks = 5;
    c.history = vec![earlier, this_run];
    store.save(&c, None).await.expect("create");
    assert_eq!(
        load_present(store, &k).await,
        c,
        "loaded checkpoint differs from the saved one"
    );
}

/// Creating (expected `None`) over an existing checkpoint is a conflict and changes nothing.
pub async fn create_conflicts_when_present(store: &dyn CheckpointStore) {
    let k = key("create-twice");
    let first = checkpoint(&k, 1, b"first");
    store.save(&first, None).await.expect("create");
    let err = store
        .save(&checkpoint(&k, 1, b"second"), None)
        .await
        .expect_err("a second create must conflict");
    assert_conflict(&err, store, &k, None, Some(1)).await;
    assert_eq!(
        load_present(store, &k).await,
        first,
        "a failed create changed the checkpoint"
    );
}

/// An update must name the stored version; a stale or future one, or any
/// version of a missing key, is a conflict naming both versions.
pub async fn update_needs_the_stored_version(store: &dyn CheckpointStore) {
    let k = key("update");
    store
        .save(&checkpoint(&k, 1, b"v1"), None)
        .await
        .expect("create");
    let v2 = checkpoint(&k, 2, b"v2");
    store.save(&v2, Some(1)).await.expect("update 1 -> 2");
    for stale in [Some(1), Some(3)] {
        let err = store
            .save(&checkpoint(&k, 9, b"stale"), stale)
            .await
            .expect_err("a save with the wrong expected version must fail");
        assert_conflict(&err, store, &k, stale, Some(2)).await;
    }
    let missing = key("update-missing");
    let err = store
        .save(&checkpoint(&missing, 2, b"x"), Some(1))
        .await
        .expect_err("updating a missing key must fail");
    assert_conflict(&err, store, &missing, Some(1), None).await;
    assert_eq!(
        load_present(store, &k).await,
        v2,
        "a failed save changed it"
    );
    assert_eq!(
        store.load(&missing).await.expect("load"),
        None,
        "a failed save created it"
    );
}

/// The stored version is the checkpoint's own, even when it is not
/// `expected + 1`: the next save must name it.
pub async fn save_records_the_checkpoints_version(store: &dyn CheckpointStore) {
    let k = key("version-jump");
    store
        .save(&checkpoint(&k, 1, b"v1"), None)
        .await
        .expect("create");
    let v5 = checkpoint(&k, 5, b"v5");
    store
        .save(&v5, Some(1))
        .await
        .expect("save version 5 over 1");
    assert_eq!(load_present(store, &k).await, v5);
    let err = store
        .save(&checkpoint(&k, 6, b"v6"), Some(2))
        .await
        .expect_err("version 2 is not stored: 5 is");
    assert_conflict(&err, store, &k, Some(2), Some(5)).await;
    let v6 = checkpoint(&k, 6, b"v6");
    store.save(&v6, Some(5)).await.expect("save over version 5");
    assert_eq!(load_present(store, &k).await, v6);
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
        let loaded = load_present(store, &k).await;
        assert_eq!(
            loaded.cursor,
            [i as u8],
            "key {name:?} read another key's checkpoint"
        );
        assert_eq!(loaded.job, k);
    }
}

/// Panics unless the readable entries of `listed` are in strictly
/// increasing key order: sorted, and each job once.
pub(super) fn assert_each_once_in_key_order(listed: &[Listing]) {
    let jobs: Vec<&JobKey> = listed
        .iter()
        .filter_map(|l| match l {
            Listing::Checkpoint(s) => Some(&s.job),
            _ => None,
        })
        .collect();
    if let Some(pair) = jobs.windows(2).find(|w| w[0] >= w[1]) {
        panic!(
            "list must give each checkpoint once, in key order: {} then {} (among {} entries)",
            pair[0],
            pair[1],
            listed.len()
        );
    }
}

/// `list` shows every checkpoint once, in key order, each with its version,
/// status (with its detail), update time and chunks, as last saved; a
/// deleted checkpoint is not listed.
pub async fn list_shows_each_checkpoint_once_in_key_order(store: &dyn CheckpointStore) {
    let entries = [
        ("é", Status::Running),
        ("b/c", Status::Completed),
        (
            "b%2Fc",
            Status::Interrupted {
                source: "SIGTERM".into(),
            },
        ),
        (
            "a",
            Status::Failed {
                message: "boom ✗: 100% wrong".into(),
            },
        ),
        (
            "long-detail",
            Status::Failed {
                message: "x".repeat(300),
            },
        ),
    ];
    let mut saved = Vec::new();
    for (i, (name, status)) in entries.into_iter().enumerate() {
        let k = key(&format!("list/{name}"));
        let mut c = checkpoint(&k, 1, name.as_bytes());
        c.status = status;
        c.updated_ms = 1_700_000_000_000 + i as u64 * 1_001;
        c.counters.chunks = 10 * i as u64;
        store
            .save(&c, None)
            .await
            .unwrap_or_else(|e| panic!("create {k}: {e}"));
        saved.push(c);
    }
    let first = &mut saved[0];
    let mut next = first.clone();
    next.version = 2;
    next.status = Status::Completed;
    next.counters.chunks += 17;
    next.updated_ms += 5;
    store.save(&next, Some(1)).await.expect("update");
    *first = next;
    let gone = key("list/deleted");
    store
        .save(&checkpoint(&gone, 1, b"gone"), None)
        .await
        .expect("create");
    store.delete(&gone, 1).await.expect("delete");

    let listed = store.list().await.expect("list");
    assert_each_once_in_key_order(&listed);
    let ours: Vec<Summary> = listed
        .iter()
        .filter_map(|l| match l {
            Listing::Checkpoint(s) if s.job.as_str().starts_with("conformance/list/") => {
                Some(s.clone())
            }
            _ => None,
        })
        .collect();
    let mut expected: Vec<Summary> = saved.iter().map(Summary::from).collect();
    expected.sort_by(|a, b| a.job.cmp(&b.job));
    assert_eq!(ours, expected, "list does not show what was saved");
}

/// `delete` removes only the version named: an older or newer one is a
/// conflict that removes nothing, a missing key is `NotFound`, a key that
/// looks alike is left alone, and a deleted key can be created again.
pub async fn delete_is_compare_and_swap(store: &dyn CheckpointStore) {
    let never = key("deleted/never-saved");
    let err = store
        .delete(&never, 1)
        .await
        .expect_err("delete of a key never saved");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert_names(&err, store, &never);

    let k = key("deleted/a/b");
    let sibling = key("deleted/a%2Fb");
    let sibling_checkpoint = checkpoint(&sibling, 1, b"sibling");
    store
        .save(&sibling_checkpoint, None)
        .await
        .expect("create sibling");
    store
        .save(&checkpoint(&k, 1, b"v1"), None)
        .await
        .expect("create");
    let v2 = checkpoint(&k, 2, b"v2");
    store.save(&v2, Some(1)).await.expect("update");
    for stale in [1, 3] {
        let err = store
            .delete(&k, stale)
            .await
            .expect_err("delete naming a version not stored");
        assert_conflict(&err, store, &k, Some(stale), Some(2)).await;
    }
    assert_eq!(
        load_present(store, &k).await,
        v2,
        "a failed delete changed the checkpoint"
    );

    store.delete(&k, 2).await.expect("delete");
    assert_eq!(store.load(&k).await.expect("load"), None);
    let listed = store.list().await.expect("list");
    assert!(
        !listed
            .iter()
            .any(|l| matches!(l, Listing::Checkpoint(s) if s.job == k)),
        "{k} is still listed after its delete: {listed:?}"
    );
    let err = store.delete(&k, 2).await.expect_err("second delete");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert_names(&err, store, &k);
    assert_eq!(
        load_present(store, &sibling).await,
        sibling_checkpoint,
        "deleting {k} changed {sibling}"
    );

    let again = checkpoint(&k, 1, b"again");
    store
        .save(&again, None)
        .await
        .expect("re-create after delete");
    assert_eq!(load_present(store, &k).await, again);
}

/// A runner's checkpoint at version 1, holding a lease, for the renew cases.
fn leased(k: &JobKey, writer: &Writer, cursor: &[u8]) -> Checkpoint {
    let now = now_ms();
    let mut c = Checkpoint::new(k.clone(), writer.clone());
    c.cursor_type = "conformance".into();
    c.cursor = cursor.to_vec();
    c.state = b"state".to_vec();
    c.counters.runs = 1;
    c.counters.checkpoints = 1;
    c.updated_ms = now;
    c.lease = Some(Lease::new(writer.run_id, now + 60_000));
    c.history = vec![RunRecord::started(writer, now)];
    c
}

/// A renewal stores what it is given as the next version: the last save's
/// cursor, state and counters with a later lease (or, at the end of a run,
/// none). It takes a version like a save: the next write must name it.
pub async fn renew_extends_the_lease_and_nothing_else(store: &dyn CheckpointStore) {
    let k = key("renewed");
    let writer = Writer::this_process();
    let first = leased(&k, &writer, b"chunk-100");
    store.save(&first, None).await.expect("create");

    // A periodic checkpoint covering more work.
    let mut saved = first.clone();
    saved.version = 2;
    saved.cursor = b"chunk-200".to_vec();
    saved.state = b"state after 200".to_vec();
    saved.counters.chunks = 200;
    saved.counters.checkpoints = 2;
    saved.updated_ms += 1_000;
    saved.lease = Some(Lease::new(writer.run_id, saved.updated_ms + 60_000));
    store.save(&saved, Some(1)).await.expect("save");

    // A renewal while the next chunk runs: same work, later lease.
    let mut renewed = saved.clone();
    renewed.version = 3;
    renewed.counters.checkpoints = 3;
    renewed.updated_ms += 20_000;
    renewed.lease = Some(Lease::new(writer.run_id, renewed.updated_ms + 60_000));
    store.renew(&renewed, Some(2)).await.expect("renew");
    let loaded = load_present(store, &k).await;
    assert_eq!(loaded, renewed, "a renewal must store what it was given");
    assert_eq!(
        (&loaded.cursor, &loaded.state, loaded.counters.chunks),
        (&saved.cursor, &saved.state, saved.counters.chunks),
        "a renewal moved the cursor"
    );

    // The renewal took version 3: a save naming 2 conflicts, one naming 3 wins.
    let mut next = renewed.clone();
    next.version = 4;
    next.cursor = b"chunk-300".to_vec();
    next.counters.chunks = 300;
    let err = store
        .save(&next, Some(2))
        .await
        .expect_err("version 3 is stored, not 2");
    assert_conflict(&err, store, &k, Some(2), Some(3)).await;
    store.save(&next, Some(3)).await.expect("save after renew");
    assert_eq!(load_present(store, &k).await, next);

    // A run that cannot checkpoint where it stands records its end through
    // `renew`, releasing the lease.
    let mut released = next.clone();
    released.version = 5;
    released.status = Status::Failed {
        message: "flush failed".into(),
    };
    released.lease = None;
    store
        .renew(&released, Some(4))
        .await
        .expect("renew that releases the lease");
    assert_eq!(load_present(store, &k).await, released);
}

/// A renewal is compare-and-swap like a save: after another runner took the
/// job over, or naming no version or a wrong one, it is a conflict naming
/// both versions and changes nothing. Expecting no checkpoint, it creates one.
pub async fn renew_is_compare_and_swap(store: &dyn CheckpointStore) {
    let k = key("renew-takeover");
    let a = Writer::this_process();
    let mine = leased(&k, &a, b"chunk-100");
    store.save(&mine, None).await.expect("create");
    let mut mine = mine;
    mine.version = 2;
    store.save(&mine, Some(1)).await.expect("save");

    // Runner B takes the job over (A's lease ran out) and saves version 3.
    let b = Writer::this_process();
    let mut theirs = leased(&k, &b, &mine.cursor);
    theirs.version = 3;
    store.save(&theirs, Some(2)).await.expect("takeover");

    // A, unaware, renews.
    for expected in [Some(2), None, Some(1), Some(4)] {
        let mut renewal = mine.clone();
        renewal.version = expected.map_or(1, |v| v + 1);
        renewal.lease = Some(Lease::new(a.run_id, now_ms() + 60_000));
        let err = store
            .renew(&renewal, expected)
            .await
            .expect_err("a renewal after a takeover must fail");
        assert_conflict(&err, store, &k, expected, Some(3)).await;
    }
    assert_eq!(
        load_present(store, &k).await,
        theirs,
        "a renewal that lost changed the checkpoint"
    );

    let missing = key("renew-missing");
    let err = store
        .renew(&checkpoint(&missing, 2, b"x"), Some(1))
        .await
        .expect_err("renewing a missing key must fail");
    assert_conflict(&err, store, &missing, Some(1), None).await;
    assert_eq!(
        store.load(&missing).await.expect("load"),
        None,
        "a failed renewal created it"
    );
    let created = checkpoint(&missing, 1, b"x");
    store
        .renew(&created, None)
        .await
        .expect("a renewal expecting no checkpoint creates it, like a save");
    assert_eq!(load_present(store, &missing).await, created);
}

/// `creators` tasks, each a runner of its own (a writer with its own run
/// id), race to create one key, as runners that all found no checkpoint
/// take the job's lease with their first save: exactly one wins, and every
/// other gets a `Conflict` (expected none, found 1) naming the winner's
/// writer, so that a runner that lost can say who has the job.
pub async fn concurrent_creators_losers_name_the_winner(
    store: Arc<dyn CheckpointStore>,
    creators: usize,
) {
    let k = key("create-race");
    let start = Arc::new(tokio::sync::Barrier::new(creators));
    let mut tasks = Vec::new();
    for creator in 0..creators {
        let (store, k, start) = (store.clone(), k.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let mine = checkpoint(&k, 1, creator.to_string().as_bytes());
            start.wait().await;
            let created = store.save(&mine, None).await;
            (mine.writer, created)
        }));
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for task in tasks {
        match task.await.expect("creator task") {
            (writer, Ok(())) => winners.push(writer),
            (_, Err(e)) => losers.push(e),
        }
    }
    assert_eq!(winners.len(), 1, "creates that succeeded: {winners:?}");
    let stored = load_present(&*store, &k).await;
    assert_eq!(
        stored.writer, winners[0],
        "the stored checkpoint is not the winner's"
    );
    for err in &losers {
        assert_conflict(err, &*store, &k, None, Some(1)).await;
    }
}

/// `savers` tasks race to advance one key `rounds` times each, half of them
/// through `save` and half through `renew`; every version is won by exactly
/// one of them, the final version counts every win, and each conflict
/// names the writer of the version it found.
pub async fn concurrent_savers_one_winner_per_version(
    store: Arc<dyn CheckpointStore>,
    savers: usize,
    rounds: usize,
) {
    let k = key("race");
    let first = checkpoint(&k, 1, b"0");
    store.save(&first, None).await.expect("create");
    let mut tasks = Vec::new();
    for saver in 0..savers {
        let store = store.clone();
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            // The versions this saver wrote, and the conflicts it met: the
            // version found and the writer named.
            let mut won = Vec::new();
            let mut lost = Vec::new();
            while won.len() < rounds {
                let current = load_present(&*store, &k).await;
                let next = checkpoint(&k, current.version + 1, saver.to_string().as_bytes());
                let written = if saver % 2 == 0 {
                    store.save(&next, Some(current.version)).await
                } else {
                    store.renew(&next, Some(current.version)).await
                };
                match written {
                    Ok(()) => won.push((next.version, next.writer.run_id)),
                    Err(StoreError::Conflict {
                        found,
                        found_writer,
                        ..
                    }) => {
                        lost.push((found, found_writer.map(|w| w.run_id)));
                        tokio::task::yield_now().await;
                    }
                    Err(e) => panic!("saver {saver}: {e}"),
                }
            }
            (won, lost)
        }));
    }
    let mut winners: BTreeMap<u64, Vec<Uuid>> = BTreeMap::new();
    winners.insert(1, vec![first.writer.run_id]);
    let mut conflicts = Vec::new();
    for task in tasks {
        let (won, mut lost) = task.await.expect("saver task");
        for (version, run) in won {
            winners.entry(version).or_default().push(run);
        }
        conflicts.append(&mut lost);
    }
    let total = savers * rounds;
    let twice: Vec<_> = winners.iter().filter(|(_, w)| w.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "versions won by more than one saver: {twice:?}"
    );
    let expected: Vec<u64> = (1..=total as u64 + 1).collect();
    assert_eq!(winners.keys().copied().collect::<Vec<_>>(), expected);
    let last = load_present(&*store, &k).await;
    assert_eq!(last.version, total as u64 + 1);
    for (found, named) in conflicts {
        let writer = found.and_then(|v| winners.get(&v)).map(|w| w[0]);
        assert!(
            named.is_some() && named == writer,
            "a conflict that found version {found:?} names run {named:?}, but {writer:?} wrote it"
        );
    }
}
