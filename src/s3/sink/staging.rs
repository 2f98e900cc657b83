//! Staging objects: the pieces of the part being filled, written at each
//! checkpoint, named `<staging prefix><upload token>/<offset>`.
//!
//! A name is written with different bytes only past the offset a saved
//! checkpoint covers: a resumed run stages from the checkpoint's end on, so
//! no object a checkpoint names is ever overwritten.

use std::collections::HashSet;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use tracing::{debug, warn};

use super::state::Piece;
use super::Target;
use crate::s3::object_error::{body_failed, failed, refusal, request_failed, ObjectError, Refusal};

/// The staging object of the piece at `offset` (20 digits: names sort by offset).
pub(super) fn name(to: &Target, token: &str, offset: u64) -> String {
    format!("{}{token}/{offset:020}", to.staging)
}

/// Writes a piece.
pub(super) async fn put(
    to: &Target,
    token: &str,
    offset: u64,
    bytes: Vec<u8>,
) -> Result<(), ObjectError> {
    let object = name(to, token, offset);
    let len = bytes.len();
    to.client
        .put_object()
        .bucket(&to.bucket)
        .key(&object)
        .body(ByteStream::from(bytes))
        .send()
        .await
        .map_err(|e| failed(e, "PutObject", &to.bucket, &object))?;
    debug!(staged = %to.url(&object), bytes = len, "staged the part being filled");
    Ok(())
}

/// Reads the pieces back, in order: the part being filled.
pub(super) async fn read(
    to: &Target,
    token: &str,
    pieces: &[Piece],
) -> Result<Vec<u8>, ObjectError> {
    let mut buffer = Vec::with_capacity(pieces.iter().map(|p| p.len as usize).sum());
    for piece in pieces {
        let object = name(to, token, piece.offset);
        let lost = |reason: String| ObjectError::StagingLost {
            url: to.url(&object),
            reason,
        };
        let got = to
            .client
            .get_object()
            .bucket(&to.bucket)
            .key(&object)
            .range(format!("bytes=0-{}", piece.len - 1))
            .send()
            .await;
        let body = match got {
            Ok(out) => out.body,
            Err(e) => {
                return Err(match refusal(e, "GetObject", &to.bucket, &object) {
                    Refusal::NotFound => lost("the staging object is missing".into()),
                    Refusal::Failed(e) => e,
                    // 416: the object is empty.
                    Refusal::Precondition => lost("the staging object is empty".into()),
                });
            }
        };
        let bytes = body
            .collect()
            .await
            .map_err(|e| body_failed(e, &to.bucket, &object))?
            .into_bytes();
        if bytes.len() as u64 != piece.len {
            return Err(lost(format!(
                "the staging object holds {} bytes, the checkpoint covers {}",
                bytes.len(),
                piece.len
            )));
        }
        buffer.extend_from_slice(&bytes);
    }
    Ok(buffer)
}

/// Deletes every staging object but those in `keep`. Best effort: failures
/// are logged.
pub(super) async fn clear(to: &Target, keep: &HashSet<String>) {
    if let Err(e) = try_clear(to, keep).await {
        warn!(staging = %to.url(&to.staging), error = %e, "cannot delete staging objects: they are left until the next start or completion");
    }
}

async fn try_clear(to: &Target, keep: &HashSet<String>) -> Result<(), ObjectError> {
    let mut token = None;
    loop {
        let page = to
            .client
            .list_objects_v2()
            .bucket(&to.bucket)
            .prefix(&to.staging)
            .set_continuation_token(token.take())
            .send()
            .await
            .map_err(|e| failed(e, "ListObjectsV2", &to.bucket, &to.staging))?;
        let doomed: Vec<ObjectIdentifier> = page
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .filter(|key| !keep.contains(*key))
            .filter_map(|key| ObjectIdentifier::builder().key(key).build().ok())
            .collect();
        if !doomed.is_empty() {
            let count = doomed.len();
            let delete = Delete::builder()
                .set_objects(Some(doomed))
                .quiet(true)
                .build()
                .map_err(|e| ObjectError::Request(Box::new(e)))?;
            let out = to
                .client
                .delete_objects()
                .bucket(&to.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| failed(e, "DeleteObjects", &to.bucket, &to.staging))?;
            if let Some(error) = out.errors().first() {
                return Err(request_failed(
                    "DeleteObjects",
                    &to.bucket,
                    error.key().unwrap_or(&to.staging),
                    format!(
                        "{} {}",
                        error.code().unwrap_or_default(),
                        error.message().unwrap_or_default()
                    ),
                ));
            }
            debug!(staging = %to.url(&to.staging), count, "deleted staging objects");
        }
        match page.next_continuation_token() {
            Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
            _ => return Ok(()),
        }
    }
}
