//! A store in memory, for tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{CheckpointStore, Listing, StoreError};
use crate::checkpoint::Checkpoint;
use crate::key::JobKey;

/// Checkpoints in memory, for tests. Clones share the same contents.
///
/// Saves are atomic (one lock around compare and write) and keep the encoded
/// bytes, so a test can corrupt them with [`MemoryStore::put_raw`] and see
/// what a run does. Nothing survives the process.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    entries: Arc<Mutex<BTreeMap<JobKey, Vec<u8>>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stored bytes of a key, as a save wrote them.
    pub fn raw(&self, key: &JobKey) -> Option<Vec<u8>> {
        self.lock().get(key).cloned()
    }

    /// Replaces the stored bytes of a key with anything, bypassing every check.
    pub fn put_raw(&self, key: &JobKey, bytes: Vec<u8>) {
        self.lock().insert(key.clone(), bytes);
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<JobKey, Vec<u8>>> {
        // A panic while holding the lock cannot leave a half-written entry
        // (inserts are single operations), so a poisoned lock is still sound.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn decode(&self, key: &JobKey, bytes: &[u8]) -> Result<Checkpoint, StoreError> {
        Checkpoint::decode_for(key, bytes).map_err(|reason| StoreError::Corrupt {
            store: self.location(),
            key: key.to_string(),
            path: key.to_string(),
            reason: Box::new(reason),
        })
    }

    fn check(
        &self,
        key: &JobKey,
        expected: Option<u64>,
        found: Option<&Checkpoint>,
    ) -> Result<(), StoreError> {
        StoreError::unless_version(self, key, expected, found)
    }
}

#[async_trait]
impl CheckpointStore for MemoryStore {
    fn location(&self) -> String {
        "memory://".to_owned()
    }

    async fn load(&self, key: &JobKey) -> Result<Option<Checkpoint>, StoreError> {
        let bytes = self.lock().get(key).cloned();
        bytes.map(|b| self.decode(key, &b)).transpose()
    }

    async fn save(&self, checkpoint: &Checkpoint, expected: Option<u64>) -> Result<(), StoreError> {
        let bytes = checkpoint.encode();
        let key = &checkpoint.job;
        let mut entries = self.lock();
        let found = entries.get(key).map(|b| self.decode(key, b)).transpose()?;
        self.check(key, expected, found.as_ref())?;
        entries.insert(key.clone(), bytes);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Listing>, StoreError> {
        Ok(self
            .lock()
            .iter()
            .map(|(key, bytes)| match Checkpoint::decode_for(key, bytes) {
                Ok(c) => Listing::Checkpoint((&c).into()),
                Err(e) => Listing::Unreadable {
                    key: key.to_string(),
                    reason: e.to_string(),
                },
            })
            .collect())
    }

    async fn delete(&self, key: &JobKey, expected: u64) -> Result<(), StoreError> {
        let mut entries = self.lock();
        let Some(bytes) = entries.get(key) else {
            return Err(StoreError::NotFound {
                store: self.location(),
                key: key.to_string(),
            });
        };
        let found = self.decode(key, bytes)?;
        self.check(key, Some(expected), Some(&found))?;
        entries.remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::conformance::{Capabilities, Corrupter};
    use crate::BoxError;

    /// Damages entries through [`MemoryStore::put_raw`].
    struct Raw(MemoryStore);

    #[async_trait]
    impl Corrupter for Raw {
        async fn stored(&self, key: &JobKey) -> Result<Option<Vec<u8>>, BoxError> {
            Ok(self.0.raw(key))
        }

        async fn overwrite(&self, key: &JobKey, bytes: &[u8]) -> Result<(), BoxError> {
            self.0.put_raw(key, bytes.to_vec());
            Ok(())
        }
    }

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        let store = MemoryStore::new();
        let raw = Raw(store.clone());
        let skipped =
            crate::conformance::run_all(Arc::new(store), Capabilities::new().corrupter(&raw)).await;
        assert!(skipped.is_empty(), "{skipped:?}");
    }
}
