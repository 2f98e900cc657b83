//! Listing a store: ListObjectsV2 (every page), then each object's metadata.

use crate::{Checkpoint, CheckpointStore, Listing, StoreError};
use tokio::task::JoinSet;

use crate::s3::error::{classify, Failure, S3Error};
use crate::s3::metadata;
use crate::s3::names::SUFFIX;
use crate::s3::S3Store;

/// HeadObject requests in flight during [`CheckpointStore::list`].
const LIST_CONCURRENCY: usize = 16;

impl S3Store {
    /// Every checkpoint directly under the prefix, in key order.
    pub(crate) async fn list_all(&self) -> Result<Vec<Listing>, StoreError> {
        let list_error = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Io {
            store: self.location(),
            key: String::new(),
            operation: "list",
            source,
        };
        let objects = self
            .list_objects()
            .await
            .map_err(|e| e.into_store_error(self.location(), String::new(), "list"))?;
        let mut out = Vec::with_capacity(objects.len());
        let mut pending = objects.into_iter();
        let mut tasks = JoinSet::new();
        loop {
            while tasks.len() < LIST_CONCURRENCY {
                let Some(object) = pending.next() else { break };
                let store = self.clone();
                tasks.spawn(async move { store.describe(object).await });
            }
            match tasks.join_next().await {
                Some(Ok(Some(listing))) => out.push(listing),
                Some(Ok(None)) => {}
                Some(Err(e)) => return Err(list_error(Box::new(e))),
                None => break,
            }
        }
        out.sort_by(|a, b| listing_key(a).cmp(listing_key(b)));
        Ok(out)
    }

    /// Every checkpoint object directly under the prefix.
    async fn list_objects(&self) -> Result<Vec<String>, S3Error> {
        let mut objects = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client()
                .list_objects_v2()
                .bucket(self.bucket())
                .prefix(self.prefix())
                .delimiter("/")
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(
                    |e| match classify(e, "ListObjectsV2", self.bucket(), self.prefix()) {
                        Failure::Other(e) => e,
                        other => S3Error::Request {
                            request: "ListObjectsV2",
                            bucket: self.bucket().to_owned(),
                            object: self.prefix().to_owned(),
                            detail: format!("unexpected answer: {other:?}"),
                            refusal: None,
                        },
                    },
                )?;
            objects.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .filter(|k| k.ends_with(SUFFIX))
                    .map(str::to_owned),
            );
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => return Ok(objects),
            }
        }
    }

    /// One entry of `list`: from the object's metadata, or from its body when
    /// the metadata does not tell everything. `None` when it vanished.
    async fn describe(&self, object: String) -> Option<Listing> {
        let unreadable = |reason: String| Listing::Unreadable {
            key: self.url_of(&object),
            reason,
        };
        let head = self
            .client()
            .head_object()
            .bucket(self.bucket())
            .key(&object)
            .send()
            .await;
        match head {
            Ok(head) => {
                // Metadata naming another job's object is not trusted: the body decides.
                let summary = head
                    .metadata()
                    .and_then(metadata::summary)
                    .filter(|s| self.object_key(&s.job) == object);
                if let Some(summary) = summary {
                    return Some(Listing::Checkpoint(summary));
                }
            }
            Err(e) => match classify(e, "HeadObject", self.bucket(), &object) {
                Failure::NotFound => return None,
                Failure::Other(e) => return Some(unreadable(e.to_string())),
                _ => {}
            },
        }
        match self.fetch(&object).await {
            Ok(None) => None,
            Ok(Some((bytes, _))) => Some(match Checkpoint::decode(&bytes) {
                // Another job's checkpoint, copied here by hand.
                Ok(c) if self.object_key(&c.job) != object => unreadable(format!(
                    "holds the checkpoint of job {:?}, whose object is {}",
                    c.job.as_str(),
                    self.url_of(&self.object_key(&c.job))
                )),
                Ok(c) => Listing::Checkpoint((&c).into()),
                Err(e) => unreadable(e.to_string()),
            }),
            Err(e) => Some(unreadable(e.to_string())),
        }
    }
}

fn listing_key(l: &Listing) -> &str {
    match l {
        Listing::Checkpoint(s) => s.job.as_str(),
        Listing::Unreadable { key, .. } => key,
        Listing::Leftover { name, .. } => name,
    }
}
