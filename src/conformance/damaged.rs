//! The cases on damaged entries: refused with a reason, still listed, and
//! left as they are.

use super::cases::assert_each_once_in_key_order;
use super::{assert_names, checkpoint, key, load_present, Capabilities, Corrupter};
use crate::checkpoint::{Checkpoint, CheckpointError, FORMAT};
use crate::key::JobKey;
use crate::store::{CheckpointStore, Listing, StoreError};

/// A way a stored entry gets damaged, and the reason a load must give.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// One byte in the middle flipped (bit rot, a bad hand edit):
    /// [`CheckpointError::ChecksumMismatch`].
    FlippedByte,
    /// Cut to half its length (a torn copy): [`CheckpointError::Truncated`].
    Truncated,
    /// No bytes at all: [`CheckpointError::Empty`].
    Emptied,
    /// Text that was never a checkpoint (another tool's output):
    /// [`CheckpointError::NotACheckpoint`].
    Garbage,
    /// The envelope of a format this build does not read:
    /// [`CheckpointError::UnsupportedFormat`].
    NewerFormat,
    /// Another job's checkpoint, whole and at the same version (copied or
    /// renamed by hand): [`CheckpointError::WrongJob`].
    AnotherJob,
}

impl Damage {
    /// Every kind of damage, in the order the cases apply them.
    pub const ALL: [Damage; 6] = [
        Damage::FlippedByte,
        Damage::Truncated,
        Damage::Emptied,
        Damage::Garbage,
        Damage::NewerFormat,
        Damage::AnotherJob,
    ];

    fn name(self) -> &'static str {
        match self {
            Damage::FlippedByte => "flipped-byte",
            Damage::Truncated => "truncated",
            Damage::Emptied => "emptied",
            Damage::Garbage => "garbage",
            Damage::NewerFormat => "newer-format",
            Damage::AnotherJob => "another-job",
        }
    }

    /// The damaged bytes of `envelope`; `other` is another job's envelope.
    fn apply(self, envelope: &[u8], other: &[u8]) -> Vec<u8> {
        let mut out = envelope.to_vec();
        match self {
            Damage::FlippedByte => {
                let middle = out.len() / 2;
                if let Some(b) = out.get_mut(middle) {
                    *b ^= 0x20;
                }
            }
            Damage::Truncated => out.truncate(out.len() / 2),
            Damage::Emptied => out.clear(),
            Damage::Garbage => {
                out = b"{\"cursor\": 1200, \"note\": \"not a checkpoint\"}\n".to_vec()
            }
            // Bytes 8 and 9 hold the format number (little-endian).
            Damage::NewerFormat => {
                if let Some(format) = out.get_mut(8..10) {
                    format.copy_from_slice(&(FORMAT + 1).to_le_bytes());
                }
            }
            Damage::AnotherJob => out = other.to_vec(),
        }
        out
    }

    /// Whether `reason` is the one a load of the damaged entry must give.
    fn explains(self, reason: &CheckpointError, key: &JobKey, other: &JobKey) -> bool {
        match (self, reason) {
            (Damage::FlippedByte, CheckpointError::ChecksumMismatch { .. })
            | (Damage::Truncated, CheckpointError::Truncated { .. })
            | (Damage::Emptied, CheckpointError::Empty)
            | (Damage::Garbage, CheckpointError::NotACheckpoint) => true,
            (Damage::NewerFormat, CheckpointError::UnsupportedFormat { found, .. }) => {
                *found == FORMAT + 1
            }
            (Damage::AnotherJob, CheckpointError::WrongJob { expected, found }) => {
                expected == key.as_str() && found == other.as_str()
            }
            _ => false,
        }
    }
}

/// A damaged entry, as [`damage_entry`] left it.
struct Damaged {
    damage: Damage,
    key: JobKey,
    /// The checkpoint stored before the damage (version 2).
    stored: Checkpoint,
    /// Another job's key, whose checkpoint is also stored at version 2.
    other: JobKey,
    /// That checkpoint's envelope.
    other_envelope: Vec<u8>,
    /// The bytes the entry holds now.
    bytes: Vec<u8>,
    /// `list` before the damage.
    listed_before: Vec<Listing>,
}

/// Stores a checkpoint at version 2 under `conformance/damaged/<case>/<damage>`
/// (and another job's, also at version 2), then damages it.
async fn damage_entry(
    store: &dyn CheckpointStore,
    corrupter: &dyn Corrupter,
    case: &str,
    damage: Damage,
) -> Damaged {
    let k = key(&format!("damaged/{case}/{}", damage.name()));
    let other = key(&format!("damaged/{case}/{}-other", damage.name()));
    let mut sibling = checkpoint(&other, 1, b"other");
    store.save(&sibling, None).await.expect("create the other");
    sibling.version = 2;
    store
        .save(&sibling, Some(1))
        .await
        .expect("update the other");
    let mut stored = checkpoint(&k, 1, b"cursor");
    // The middle byte of the envelope falls in the state.
    stored.state = (0..1000u32).map(|i| i as u8).collect();
    store.save(&stored, None).await.expect("create");
    stored.version = 2;
    store.save(&stored, Some(1)).await.expect("update");
    let listed_before = store.list().await.expect("list before the damage");

    let envelope = stored_bytes(corrupter, &k).await.unwrap_or_else(|| {
        panic!("the Corrupter finds nothing stored for {k}, which was just saved")
    });
    let other_envelope = sibling.encode();
    let bytes = damage.apply(&envelope, &other_envelope);
    overwrite(corrupter, &k, &bytes).await;
    assert_eq!(
        stored_bytes(corrupter, &k).await.as_deref(),
        Some(bytes.as_slice()),
        "the Corrupter did not store the damaged bytes of {k}"
    );
    Damaged {
        damage,
        key: k,
        stored,
        other,
        other_envelope,
        bytes,
        listed_before,
    }
}

async fn stored_bytes(corrupter: &dyn Corrupter, k: &JobKey) -> Option<Vec<u8>> {
    corrupter
        .stored(k)
        .await
        .unwrap_or_else(|e| panic!("the Corrupter cannot read {k}: {e}"))
}

async fn overwrite(corrupter: &dyn Corrupter, k: &JobKey, bytes: &[u8]) {
    corrupter
        .overwrite(k, bytes)
        .await
        .unwrap_or_else(|e| panic!("the Corrupter cannot write {k}: {e}"));
}

impl Damaged {
    /// Panics unless the entry still holds the damaged bytes.
    async fn assert_unchanged(&self, corrupter: &dyn Corrupter, after: &str) {
        assert!(
            stored_bytes(corrupter, &self.key).await.as_deref() == Some(self.bytes.as_slice()),
            "{after} changed the damaged entry {} ({:?})",
            self.key,
            self.damage
        );
    }

    /// Panics unless `err` is `Corrupt` naming the store, the key, where the
    /// entry is, and the damage.
    fn assert_corrupt(&self, err: &StoreError, store: &dyn CheckpointStore, op: &str) {
        let StoreError::Corrupt { path, reason, .. } = err else {
            panic!(
                "{op} of damaged {} ({:?}) must fail with Corrupt, not: {err}",
                self.key, self.damage
            );
        };
        assert!(
            !path.is_empty(),
            "Corrupt must say where the entry is: {err}"
        );
        assert!(
            self.damage.explains(reason, &self.key, &self.other),
            "{op} of damaged {} ({:?}) gives the wrong reason: {err}",
            self.key,
            self.damage
        );
        assert_names(err, store, &self.key);
    }

    /// Panics unless `err` refuses a write naming version `expected`, which
    /// is not the version stored before the damage: a conflict naming
    /// `expected`, or `Corrupt`.
    fn assert_refused(
        &self,
        err: &StoreError,
        store: &dyn CheckpointStore,
        op: &str,
        expected: Option<u64>,
    ) {
        match err {
            StoreError::Conflict { expected: e, .. } => {
                assert_eq!(*e, expected, "the conflict names another version: {err}");
                assert_names(err, store, &self.key);
            }
            _ => self.assert_corrupt(err, store, op),
        }
    }
}

/// A damaged entry ([`Damage::ALL`]: a flipped byte, truncated, emptied,
/// garbage, a newer format, another job's checkpoint):
///
/// - `load` fails with [`StoreError::Corrupt`] naming the store, the key,
///   where the entry is, and the reason, every time;
/// - `list` does not fail, and lists the entry once: as
///   [`Listing::Unreadable`], or, for a store that
///   [lists from metadata](Capabilities::lists_from_metadata), possibly as
///   the checkpoint its metadata describes;
/// - a save or renewal expecting no checkpoint, or a version other than the
///   one stored before the damage, and a delete naming another version, fail
///   with a conflict or `Corrupt`;
/// - none of these changes the stored bytes.
pub async fn damaged_entry_is_refused_and_kept(
    store: &dyn CheckpointStore,
    corrupter: &dyn Corrupter,
    capabilities: Capabilities<'_>,
) {
    for damage in Damage::ALL {
        let d = damage_entry(store, corrupter, "refused", damage).await;
        for _ in 0..2 {
            let err = store.load(&d.key).await.err().unwrap_or_else(|| {
                panic!(
                    "a load of a damaged entry must fail: {} ({:?})",
                    d.key, d.damage
                )
            });
            d.assert_corrupt(&err, store, "load");
        }
        d.assert_unchanged(corrupter, "load").await;

        let listed = store
            .list()
            .await
            .unwrap_or_else(|e| panic!("list must not fail for a damaged entry ({damage:?}): {e}"));
        assert_each_once_in_key_order(&listed);
        assert_eq!(
            listed.len(),
            d.listed_before.len(),
            "list must show the damaged entry ({damage:?}) once, not drop or add entries: \
             before {:?}, after {listed:?}",
            d.listed_before
        );
        let still_readable = listed
            .iter()
            .any(|l| matches!(l, Listing::Checkpoint(s) if s.job == d.key));
        let unreadable: Vec<&Listing> = listed
            .iter()
            .filter(|l| matches!(l, Listing::Unreadable { .. }) && !d.listed_before.contains(l))
            .collect();
        if still_readable {
            assert!(
                capabilities.lists_from_metadata,
                "list shows damaged {} ({damage:?}) as a readable checkpoint: {listed:?}",
                d.key
            );
            assert!(unreadable.is_empty(), "{unreadable:?}");
        } else {
            assert!(
                matches!(&unreadable[..], [Listing::Unreadable { key, reason }] if !key.is_empty() && !reason.is_empty()),
                "list must show damaged {} ({damage:?}) as one unreadable entry with a reason: \
                 new unreadable entries {unreadable:?}",
                d.key
            );
        }
        d.assert_unchanged(corrupter, "list").await;

        for expected in [None, Some(1), Some(3)] {
            let mut c = d.stored.clone();
            c.version = expected.map_or(1, |v| v + 1);
            c.cursor = b"written over the damage".to_vec();
            let err = store.save(&c, expected).await.err().unwrap_or_else(|| {
                panic!(
                    "a save naming another version must fail: {} ({:?})",
                    d.key, d.damage
                )
            });
            d.assert_refused(&err, store, "save", expected);
            d.assert_unchanged(corrupter, "a refused save").await;
            let err = store.renew(&c, expected).await.err().unwrap_or_else(|| {
                panic!(
                    "a renewal naming another version must fail: {} ({:?})",
                    d.key, d.damage
                )
            });
            d.assert_refused(&err, store, "renew", expected);
            d.assert_unchanged(corrupter, "a refused renewal").await;
        }
        for expected in [1, 3] {
            let err = store
                .delete(&d.key, expected)
                .await
                .err()
                .unwrap_or_else(|| {
                    panic!(
                        "a delete naming another version must fail: {} ({:?})",
                        d.key, d.damage
                    )
                });
            d.assert_refused(&err, store, "delete", Some(expected));
            d.assert_unchanged(corrupter, "a refused delete").await;
        }
    }
}

/// A save, renewal or delete naming the version stored before the damage:
/// a store that reads the checkpoint to compare fails with
/// [`StoreError::Corrupt`] (reason and all) and changes nothing; a store
/// that [keeps versions apart](Capabilities::versions_kept_apart) replaces
/// (save, renew) or removes (delete) the damaged entry.
pub async fn damaged_entry_at_the_stored_version(
    store: &dyn CheckpointStore,
    corrupter: &dyn Corrupter,
    capabilities: Capabilities<'_>,
) {
    for damage in Damage::ALL {
        let d = damage_entry(store, corrupter, "stored-version", damage).await;
        let mut v3 = d.stored.clone();
        v3.version = 3;
        v3.cursor = b"after the damage".to_vec();
        if !capabilities.versions_kept_apart {
            let err = store.save(&v3, Some(2)).await.err().unwrap_or_else(|| {
                panic!(
                    "a save over a damaged entry must fail: {} ({:?})",
                    d.key, d.damage
                )
            });
            d.assert_corrupt(&err, store, "save");
            d.assert_unchanged(corrupter, "a refused save").await;
            let err = store.renew(&v3, Some(2)).await.err().unwrap_or_else(|| {
                panic!(
                    "a renewal over a damaged entry must fail: {} ({:?})",
                    d.key, d.damage
                )
            });
            d.assert_corrupt(&err, store, "renew");
            d.assert_unchanged(corrupter, "a refused renewal").await;
            let err = store.delete(&d.key, 2).await.err().unwrap_or_else(|| {
                panic!(
                    "a delete of a damaged entry must fail: {} ({:?})",
                    d.key, d.damage
                )
            });
            d.assert_corrupt(&err, store, "delete");
            d.assert_unchanged(corrupter, "a refused delete").await;
            continue;
        }

        let redamage = |c: &Checkpoint| damage.apply(&c.encode(), &d.other_envelope);
        store
            .save(&v3, Some(2))
            .await
            .unwrap_or_else(|e| panic!("save over damaged {} ({damage:?}): {e}", d.key));
        assert_eq!(load_present(store, &d.key).await, v3);
        overwrite(corrupter, &d.key, &redamage(&v3)).await;
        let mut v4 = v3.clone();
        v4.version = 4;
        store
            .renew(&v4, Some(3))
            .await
            .unwrap_or_else(|e| panic!("renew over damaged {} ({damage:?}): {e}", d.key));
        assert_eq!(load_present(store, &d.key).await, v4);
        overwrite(corrupter, &d.key, &redamage(&v4)).await;
        store
            .delete(&d.key, 4)
            .await
            .unwrap_or_else(|e| panic!("delete of damaged {} ({damage:?}): {e}", d.key));
        assert_eq!(store.load(&d.key).await.expect("load after delete"), None);
    }
}
