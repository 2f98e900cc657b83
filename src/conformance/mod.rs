//! The conformance suite every [`CheckpointStore`] passes.
//!
//! In the shape of `object_store`'s integration suite: each case is a public
//! `async fn` taking the store, and a store's test builds the store and calls
//! [`run_all`] with its [`Capabilities`]: how to damage its entries from
//! outside (a [`Corrupter`]), and which of the latitudes the trait's contract
//! leaves the store takes. The memory, file, S3 and Postgres stores each have
//! one test that runs the whole suite. Outside implementers get this module
//! with the `conformance` feature.
//!
//! Each case panics with a message on failure. The suite expects a store with
//! no keys under `conformance/` (a fresh directory, bucket prefix or schema)
//! and leaves its keys behind, damaged ones included.
//!
//! ```
//! use std::sync::Arc;
//! use spotbatch::conformance::{run_all, Capabilities, Corrupter};
//! use spotbatch::{BoxError, JobKey, MemoryStore};
//!
//! /// Damages the store's entries from outside it.
//! struct Raw(MemoryStore);
//!
//! #[spotbatch::async_trait]
//! impl Corrupter for Raw {
//!     async fn stored(&self, key: &JobKey) -> Result<Option<Vec<u8>>, BoxError> {
//!         Ok(self.0.raw(key))
//!     }
//!     async fn overwrite(&self, key: &JobKey, bytes: &[u8]) -> Result<(), BoxError> {
//!         self.0.put_raw(key, bytes.to_vec());
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // The body of a store's `#[tokio::test]`: a fresh store, then every case.
//! let store = MemoryStore::new(); // clones share their contents
//! let raw = Raw(store.clone());
//! let skipped = run_all(Arc::new(store), Capabilities::new().corrupter(&raw)).await;
//! assert!(skipped.is_empty(), "{skipped:?}");
//! # }
//! ```
//!
//! # What it checks
//!
//! | promise of [`CheckpointStore`] | case |
//! |---|---|
//! | a key never saved loads as `None`; a store never written lists without error | [`missing_key_loads_none`] |
//! | a save stores every field (lease, history, codec, counters…) and a load gives it back | [`create_load_round_trip`] |
//! | a create over a stored checkpoint, or a save naming a stale, future or missing version, is a `Conflict` naming both versions and the stored checkpoint's writer, and changes nothing | [`create_conflicts_when_present`], [`update_needs_the_stored_version`] |
//! | the version stored is the checkpoint's own, not `expected + 1` | [`save_records_the_checkpoints_version`] |
//! | keys that look alike or like paths are distinct | [`keys_are_isolated`] |
//! | `list`: every checkpoint once, in key order, with its version, status (and its detail), update time and chunks; deleted ones gone | [`list_shows_each_checkpoint_once_in_key_order`] |
//! | `delete` removes only the version named (`Conflict` for an older or newer one), leaves other keys, `NotFound` when absent; the key can be created again | [`delete_is_compare_and_swap`] |
//! | `renew` stores what it is given (the last cursor, state and counters with a later lease) as the next version | [`renew_extends_the_lease_and_nothing_else`] |
//! | `renew` is compare-and-swap like `save`: after a takeover it is a `Conflict` and changes nothing | [`renew_is_compare_and_swap`] |
//! | of concurrent creates of one key, exactly one wins, and each loser's `Conflict` names the winner | [`concurrent_creators_losers_name_the_winner`] |
//! | of concurrent saves and renewals expecting one version, exactly one wins; each loser's `Conflict` names the writer of the version it found | [`concurrent_savers_one_winner_per_version`] |
//! | a damaged entry (see [`Damage`]) is refused by `load` with `Corrupt` naming the store, the key and the reason; `list` still lists it, once; writes that name another version fail; nothing stored changes | [`damaged_entry_is_refused_and_kept`] (needs a [`Corrupter`]) |
//! | a save, renewal or delete naming the version stored before the damage fails with `Corrupt`, or, for a store that keeps versions apart from checkpoints, replaces or removes the entry | [`damaged_entry_at_the_stored_version`] (needs a [`Corrupter`]) |
//!
//! Every error a case provokes must name the store (its
//! [`location`](CheckpointStore::location)) and the key.
//!
//! # What it cannot check
//!
//! *Whole or nothing* across a crash and *durable on success* need a crash
//! (of the process, of the machine) in the middle of a save, which an
//! in-process suite cannot cause. Each store's docs say how it keeps them
//! (fsync and rename, a single S3 `PutObject`, a Postgres commit); the
//! end-to-end tests SIGKILL runners at random moments and check that the
//! stored checkpoint is whole.

mod cases;
mod damaged;
mod mid_run;

use std::sync::Arc;

use async_trait::async_trait;
use tracing::warn;

use crate::checkpoint::{Checkpoint, Writer};
use crate::key::JobKey;
use crate::store::{CheckpointStore, StoreError};
use crate::BoxError;

pub use cases::{
    concurrent_creators_losers_name_the_winner, concurrent_savers_one_winner_per_version,
    create_conflicts_when_present, create_load_round_trip, delete_is_compare_and_swap,
    keys_are_isolated, list_shows_each_checkpoint_once_in_key_order, missing_key_loads_none,
    renew_extends_the_lease_and_nothing_else, renew_is_compare_and_swap,
    save_records_the_checkpoints_version, update_needs_the_stored_version,
};
pub use damaged::{damaged_entry_at_the_stored_version, damaged_entry_is_refused_and_kept, Damage};
pub use mid_run::MidRun;

/// Reads and overwrites a store's entries from outside the store, so that
/// the suite can damage them as a disk fault, another tool or a person
/// editing by hand would.
///
/// Each store's test supplies its own: the file store's writes the file, the
/// memory store's uses [`MemoryStore::put_raw`](crate::MemoryStore::put_raw),
/// the S3 store's sends an unconditional `PutObject`, the Postgres store's an
/// `UPDATE … SET envelope = …`.
#[async_trait]
pub trait Corrupter: Send + Sync {
    /// The envelope stored for `key` (the bytes of [`Checkpoint::encode`], as
    /// the store keeps them), or `None` when the store holds nothing for it.
    ///
    /// # Errors
    ///
    /// Any error reaching the store; the suite panics with it.
    async fn stored(&self, key: &JobKey) -> Result<Option<Vec<u8>>, BoxError>;

    /// Replaces the envelope stored for `key`, which holds a checkpoint, with
    /// `bytes`, bypassing every check of the store. What the store keeps
    /// beside the envelope (object metadata, mirror columns) may be kept or
    /// dropped.
    ///
    /// # Errors
    ///
    /// Any error reaching the store; the suite panics with it.
    async fn overwrite(&self, key: &JobKey, bytes: &[u8]) -> Result<(), BoxError>;
}

/// What a store's test tells the suite: how to damage the store's entries,
/// and which latitudes of the [`CheckpointStore`] contract the store takes.
///
/// [`Capabilities::new`] gives no [`Corrupter`] (the cases that need one are
/// skipped, and [`run_all`] names them) and claims the strictest behaviour:
/// `list` verifies every entry, and saves and deletes read the stored
/// checkpoint to compare versions.
#[derive(Clone, Copy, Default)]
pub struct Capabilities<'a> {
    corrupter: Option<&'a dyn Corrupter>,
    lists_from_metadata: bool,
    versions_kept_apart: bool,
}

impl std::fmt::Debug for Capabilities<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capabilities")
            .field("corrupter", &self.corrupter.is_some())
            .field("lists_from_metadata", &self.lists_from_metadata)
            .field("versions_kept_apart", &self.versions_kept_apart)
            .finish()
    }
}

impl<'a> Capabilities<'a> {
    /// No corrupter; the strictest behaviour.
    pub fn new() -> Self {
        Self::default()
    }

    /// Damages entries with `corrupter`, which runs the damaged-entry cases.
    #[must_use]
    pub fn corrupter(mut self, corrupter: &'a dyn Corrupter) -> Self {
        self.corrupter = Some(corrupter);
        self
    }

    /// The store's `list` describes entries from metadata kept beside them
    /// (S3 object metadata, Postgres columns) without reading them, so a
    /// damaged entry may be listed as the checkpoint its metadata describes
    /// rather than as [`Listing::Unreadable`](crate::Listing::Unreadable).
    #[must_use]
    pub fn lists_from_metadata(mut self) -> Self {
        self.lists_from_metadata = true;
        self
    }

    /// The store keeps each entry's version apart from its checkpoint
    /// (Postgres's `version` column) and compares on it without reading the
    /// checkpoint, so a save, renewal or delete naming the stored version
    /// replaces or removes a damaged entry instead of failing with
    /// [`StoreError::Corrupt`].
    #[must_use]
    pub fn versions_kept_apart(mut self) -> Self {
        self.versions_kept_apart = true;
        self
    }
}

/// A case [`run_all`] did not run, and why.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The case's function name.
    pub case: &'static str,
    /// Why it did not run.
    pub reason: &'static str,
}

/// Runs every case against `store`, one after the other, and returns the
/// cases it skipped for want of a capability (each also logged as a warning).
pub async fn run_all(
    store: Arc<dyn CheckpointStore>,
    capabilities: Capabilities<'_>,
) -> Vec<Skipped> {
    let s = &*store;
    missing_key_loads_none(s).await;
    create_load_round_trip(s).await;
    create_conflicts_when_present(s).await;
    update_needs_the_stored_version(s).await;
    save_records_the_checkpoints_version(s).await;
    keys_are_isolated(s).await;
    list_shows_each_checkpoint_once_in_key_order(s).await;
    delete_is_compare_and_swap(s).await;
    renew_extends_the_lease_and_nothing_else(s).await;
    renew_is_compare_and_swap(s).await;
    concurrent_creators_losers_name_the_winner(store.clone(), 8).await;
    concurrent_savers_one_winner_per_version(store.clone(), 8, 6).await;

    let mut skipped = Vec::new();
    match capabilities.corrupter {
        Some(corrupter) => {
            damaged_entry_is_refused_and_kept(s, corrupter, capabilities).await;
            damaged_entry_at_the_stored_version(s, corrupter, capabilities).await;
        }
        None => {
            for case in [
                "damaged_entry_is_refused_and_kept",
                "damaged_entry_at_the_stored_version",
            ] {
                let reason = "no Corrupter: the store's test gave no way to damage an entry";
                warn!(store = %s.location(), case, reason, "conformance case skipped");
                skipped.push(Skipped { case, reason });
            }
        }
    }
    skipped
}

/// `conformance/<name>`.
fn key(name: &str) -> JobKey {
    JobKey::new(format!("conformance/{name}")).expect("valid key")
}

/// A checkpoint of `key` at `version`, by a new writer (run id) each time.
fn checkpoint(key: &JobKey, version: u64, cursor: &[u8]) -> Checkpoint {
    let mut c = Checkpoint::new(key.clone(), Writer::this_process());
    c.version = version;
    c.cursor = cursor.to_vec();
    c.cursor_type = "conformance".into();
    c
}

/// Panics unless `err` names `store`'s location and `key`.
fn assert_names(err: &StoreError, store: &dyn CheckpointStore, key: &JobKey) {
    let (named_store, named_key) = match err {
        StoreError::Conflict { store, key, .. }
        | StoreError::Corrupt { store, key, .. }
        | StoreError::NotFound { store, key }
        | StoreError::Io { store, key, .. }
        | StoreError::Refused { store, key, .. }
        | StoreError::Lost { store, key, .. } => (store, key),
    };
    assert_eq!(
        (named_store.as_str(), named_key.as_str()),
        (store.location().as_str(), key.as_str()),
        "the error does not name the store's location and the key: {err}"
    );
}

/// Panics unless `err` is a conflict naming `store`, `key`, `expected` and
/// `found`, and the writer of the checkpoint stored now (the conflict
/// happened before: the operation that failed changed nothing), or no
/// writer when nothing is stored.
async fn assert_conflict(
    err: &StoreError,
    store: &dyn CheckpointStore,
    key: &JobKey,
    expected: Option<u64>,
    found: Option<u64>,
) {
    let StoreError::Conflict {
        expected: e,
        found: f,
        found_writer,
        ..
    } = err
    else {
        panic!("expected a conflict (expected version {expected:?}, found {found:?}), got: {err}");
    };
    assert_eq!(
        (*e, *f),
        (expected, found),
        "the conflict names other versions: {err}"
    );
    assert_names(err, store, key);
    let stored = match found {
        Some(_) => Some(load_present(store, key).await.writer),
        None => None,
    };
    assert_eq!(
        found_writer.as_deref(),
        stored.as_ref(),
        "the conflict must name the writer of the version found (the run that holds the job now): {err}"
    );
    if let Some(writer) = &stored {
        assert!(
            err.to_string().contains(&writer.run_id.to_string()),
            "the conflict's message does not name the run that holds the job: {err}"
        );
    }
}

/// The stored checkpoint, which must be there.
async fn load_present(store: &dyn CheckpointStore, key: &JobKey) -> Checkpoint {
    store
        .load(key)
        .await
        .unwrap_or_else(|e| panic!("load {key}: {e}"))
        .unwrap_or_else(|| panic!("{key} is missing"))
}
