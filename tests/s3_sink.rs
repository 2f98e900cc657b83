//! The S3 multipart sink against a real S3 server (SeaweedFS, started by
//! scripts/test): a sink dropped at any point (as a killed process leaves
//! it: nothing cleaned up, nothing flushed) and resumed from the last state
//! a checkpoint would hold gives the same object, byte for byte, as a run
//! that was never interrupted; abandoned uploads are aborted; lost output is
//! an error, never a silent gap.
//!
//! The same under real SIGKILL and SIGTERM of real processes: tests/s3_jsonl.rs.

#![allow(unreachable_pub, clippy::unwrap_used)]

mod s3_common;
use s3_common::Bucket;

use aws_sdk_s3::primitives::ByteStream;
use spotbatch::s3::{aws_sdk_s3, MultipartSink, MultipartState, ObjectError};

const MIB: usize = 1 << 20;
const PART: u64 = 5 << 20;

impl Bucket {
    fn sink(&self, key: &str) -> MultipartSink {
        MultipartSink::new(self.client.clone(), &self.name, key).part_size(PART)
    }

    async fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self
            .client
            .get_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Some(out.body.collect().await.unwrap().into_bytes().to_vec()),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => None,
            Err(e) => panic!("{}", aws_sdk_s3::error::DisplayErrorContext(e)),
        }
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.name)
            .prefix(prefix)
            .send()
            .await
            .unwrap();
        out.contents()
            .iter()
            .map(|o| o.key().unwrap().to_owned())
            .collect()
    }

    async fn uploads(&self, key: &str) -> Vec<String> {
        let out = self
            .client
            .list_multipart_uploads()
            .bucket(&self.name)
            .prefix(key)
            .send()
            .await
            .unwrap();
        out.uploads()
            .iter()
            .filter(|u| u.key() == Some(key))
            .map(|u| u.upload_id().unwrap().to_owned())
            .collect()
    }
}

/// Deterministic output of `len` bytes, in lines of varied lengths.
fn data(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 200);
    let mut i = 0u64;
    while out.len() < len {
        let line = format!("{i:09} {}\n", "abcdefghij".repeat((i % 17) as usize));
        out.extend_from_slice(line.as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// Writes `bytes` in writes of `step` bytes.
async fn write_all(sink: &mut MultipartSink, bytes: &[u8], step: usize) {
    for piece in bytes.chunks(step) {
        sink.write(piece).await.unwrap();
    }
}

#[tokio::test]
async fn an_uninterrupted_output_is_the_bytes_written() {
    let bucket = Bucket::fresh().await;
    let expected = data(12 * MIB + 12345);
    let mut sink = bucket.sink("out/all.txt");
    sink.resume(&MultipartState::default()).await.unwrap();
    write_all(&mut sink, &expected, 64 * 1024 + 7).await;
    let state = sink.mark();
    assert_eq!(state.parts().len(), 2, "two full parts of 5 MiB uploaded");
    assert_eq!(state.len(), expected.len() as u64);
    sink.flush().await.unwrap();
    sink.complete().await.unwrap();
    assert!(sink.is_completed());
    assert_eq!(bucket.get("out/all.txt").await.unwrap(), expected);
    assert!(bucket.keys("out/all.txt.spotbatch/").await.is_empty());
    assert!(bucket.uploads("out/all.txt").await.is_empty());
    // Completing again does nothing.
    sink.complete().await.unwrap();
}

/// A chunk at a time, with a checkpoint (mark + flush) after some: then
/// "killed" (dropped) `extra` bytes past the checkpoint, resumed from the
/// checkpoint's state, and finished.
async fn killed_and_resumed(checkpoint_at: &[usize], killed_at: usize, total: usize) {
    let bucket = Bucket::fresh().await;
    let key = "out/resumed.jsonl";
    let expected = data(total);

    let mut sink = bucket.sink(key);
    sink.resume(&MultipartState::default()).await.unwrap();
    let mut saved = MultipartState::default();
    let mut at = 0;
    for &end in checkpoint_at {
        write_all(&mut sink, &expected[at..end], 100_000).await;
        saved = sink.mark();
        sink.flush().await.unwrap();
        at = end;
    }
    write_all(&mut sink, &expected[at..killed_at], 100_000).await;
    // Written past the checkpoint, then killed: no mark, no flush.
    drop(sink);
    assert_eq!(saved.len(), at as u64);

    let mut sink = bucket.sink(key);
    sink.resume(&saved).await.unwrap();
    assert_eq!(sink.len(), at as u64);
    write_all(&mut sink, &expected[at..], 77_777).await;
    sink.mark();
    sink.flush().await.unwrap();
    sink.complete().await.unwrap();
    let got = bucket.get(key).await.unwrap();
    assert!(
        got == expected,
        "output differs: {} bytes, expected {}",
        got.len(),
        expected.len()
    );
    assert!(bucket.keys(&format!("{key}.spotbatch/")).await.is_empty());
    assert!(bucket.uploads(key).await.is_empty());
}

#[tokio::test]
async fn killed_between_parts_resumes_from_the_checkpointed_part() {
    // Checkpoint in part 2; killed in part 4 (parts 2 and 3 uploaded after
    // the checkpoint, and uploaded again by the resumed run).
    killed_and_resumed(&[3 * MIB, 7 * MIB], 17 * MIB + 3, 23 * MIB + 99).await;
}

#[tokio::test]
async fn killed_in_the_part_of_the_checkpoint_resumes_from_its_staged_pieces() {
    // Three checkpoints in part 1: its pieces are three staging objects.
    killed_and_resumed(&[MIB, 2 * MIB, 3 * MIB + 5], 4 * MIB, 11 * MIB).await;
}

#[tokio::test]
async fn killed_before_any_checkpoint_starts_over_and_aborts_the_abandoned_upload() {
    let bucket = Bucket::fresh().await;
    let key = "out/abandoned.txt";
    let expected = data(11 * MIB);

    let mut sink = bucket.sink(key);
    sink.resume(&MultipartState::default()).await.unwrap();
    write_all(&mut sink, &expected[..7 * MIB], MIB).await;
    let abandoned = sink.mark().upload_id().unwrap().to_owned();
    sink.flush().await.unwrap();
    drop(sink); // killed before the checkpoint was saved
    assert_eq!(bucket.uploads(key).await, vec![abandoned.clone()]);
    assert!(!bucket.keys(&format!("{key}.spotbatch/")).await.is_empty());

    // The store has no checkpoint: the next run starts with the default state.
    let mut sink = bucket.sink(key);
    sink.resume(&MultipartState::default()).await.unwrap();
    let uploads = bucket.uploads(key).await;
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert_ne!(uploads[0], abandoned, "the abandoned upload was aborted");
    assert!(
        bucket.keys(&format!("{key}.spotbatch/")).await.is_empty(),
        "its staging objects were deleted"
    );
    write_all(&mut sink, &expected, 3 * MIB).await;
    sink.complete().await.unwrap();
    assert_eq!(bucket.get(key).await.unwrap(), expected);
}

#[tokio::test]
async fn a_chunk_that_fills_a_part_then_fails_leaves_the_last_mark_resumable() {
    // The mark names 1 MiB of part 1; the next chunk fills part 1 (uploaded)
    // and fails before its mark. The flush before the final checkpoint must
    // still stage what the mark names, though part 1 has left the buffer.
    let bucket = Bucket::fresh().await;
    let key = "out/failed-chunk.txt";
    let expected = data(9 * MIB);

    let mut sink = bucket.sink(key);
    sink.resume(&MultipartState::default()).await.unwrap();
    write_all(&mut sink, &expected[..MIB], 4096).await;
    let saved = sink.mark();
    write_all(&mut sink, &expected[MIB..6 * MIB], 4096).await; // part 1 uploaded
    sink.flush().await.unwrap(); // the final checkpoint's flush, with `saved`
    drop(sink);

    let mut sink = bucket.sink(key);
    sink.resume(&saved).await.unwrap();
    write_all(&mut sink, &expected[MIB..], 4096).await;
    sink.complete().await.unwrap();
    assert_eq!(bucket.get(key).await.unwrap(), expected);
}

#[tokio::test]
async fn completed_then_killed_before_the_checkpoint_keeps_the_object() {
    let bucket = Bucket::fresh().await;
    let key = "out/done.txt";
    let expected = data(6 * MIB);

    let mut sink = bucket.sink(key);
    sink.resume(&MultipartState::default()).await.unwrap();
    write_all(&mut sink, &expected[..2 * MIB], MIB).await;
    let saved = sink.mark();
    sink.flush().await.unwrap();
    write_all(&mut sink, &expected[2 * MIB..], MIB).await;
    sink.mark();
    sink.complete().await.unwrap();
    drop(sink); // killed before the final checkpoint

    // The resumed run finds its upload completed: what it writes is dropped.
    let mut sink = bucket.sink(key);
    sink.resume(&saved).await.unwrap();
    assert!(sink.is_completed());
    write_all(&mut sink, b"never written", 4).await;
    sink.flush().await.unwrap();
    sink.complete().await.unwrap();
    assert_eq!(bucket.get(key).await.unwrap(), expected);
}

#[tokio::test]
async fn an_existing_object_is_refused_unless_overwriting_is_allowed() {
    let bucket = Bucket::fresh().await;
    let key = "out/exists.txt";
    bucket
        .client
        .put_object()
        .bucket(&bucket.name)
        .key(key)
        .body(ByteStream::from_static(b"someone else's"))
        .send()
        .await
        .unwrap();
    let mut sink = bucket.sink(key);
    let err = sink.resume(&MultipartState::default()).await.unwrap_err();
    assert!(matches!(err, ObjectError::AlreadyExists { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("s3://{}/{key}", bucket.name)),
        "{err}"
    );

    let mut sink = bucket.sink(key).overwrite(true);
    sink.resume(&MultipartState::default()).await.unwrap();
    sink.write(b"ours\n").await.unwrap();
    sink.complete().await.unwrap();
    assert_eq!(bucket.get(key).await.unwrap(), b"ours\n");
}

#[tokio::test]
async fn an_object_created_during_the_upload_wins_the_conditional_completion() {
    let bucket = Bucket::fresh().await;
    let key = "out/raced.txt";
    let mut sink = bucket.sink(key);
    sink.resume(&MultipartState::default()).await.unwrap();
    sink.write(&data(MIB)).await.unwrap();
    bucket
        .client
        .put_object()
        .bucket(&bucket.name)
        .key(key)
        .body(ByteStream::from_static(b"the other writer's"))
        .send()
        .await
        .unwrap();
    let err = sink.complete().await.unwrap_err();
    assert!(matches!(err, ObjectError::AlreadyExists { .. }), "{err}");
    assert_eq!(bucket.get(key).await.unwrap(), b"the other writer's");
}

#[tokio::test]
async fn no_output_gives_an_empty_object() {
    let bucket = Bucket::fresh().await;
    let mut sink = bucket.sink("out/empty.txt");
    sink.resume(&MultipartState::default()).await.unwrap();
    sink.mark();
    sink.flush().await.unwrap();
    sink.complete().await.unwrap();
    assert_eq!(bucket.get("out/empty.txt").await.unwrap(), b"");
    assert!(bucket.uploads("out/empty.txt").await.is_empty());
}

#[tokio::test]
async fn an_aborted_upload_or_a_lost_staging_object_is_an_error_naming_it() {
    let bucket = Bucket::fresh().await;
    let key = "out/lost.txt";
    let mut sink = bucket.sink(key);
    sink.resume(&MultipartState::default()).await.unwrap();
    sink.write(&data(MIB)).await.unwrap();
    let saved = sink.mark();
    sink.flush().await.unwrap();
    drop(sink);

    // A staging object deleted behind the sink's back.
    let staged = bucket.keys(&format!("{key}.spotbatch/")).await;
    assert_eq!(staged.len(), 1, "{staged:?}");
    bucket
        .client
        .delete_object()
        .bucket(&bucket.name)
        .key(&staged[0])
        .send()
        .await
        .unwrap();
    let err = bucket.sink(key).resume(&saved).await.unwrap_err();
    assert!(matches!(err, ObjectError::StagingLost { .. }), "{err}");
    assert!(err.to_string().contains(&staged[0]), "{err}");

    // The upload aborted behind its back (a lifecycle rule).
    bucket
        .client
        .abort_multipart_upload()
        .bucket(&bucket.name)
        .key(key)
        .upload_id(saved.upload_id().unwrap())
        .send()
        .await
        .unwrap();
    let err = bucket.sink(key).resume(&saved).await.unwrap_err();
    assert!(matches!(err, ObjectError::UploadGone { .. }), "{err}");
    assert!(
        err.to_string().contains(saved.upload_id().unwrap()),
        "{err}"
    );
}

#[tokio::test]
async fn writing_before_resume_is_an_error() {
    let bucket = Bucket::fresh().await;
    let mut sink = bucket.sink("out/early.txt");
    let err = sink.write(b"x").await.unwrap_err();
    assert!(matches!(err, ObjectError::NotResumed { .. }), "{err}");
    assert!(bucket.uploads("out/early.txt").await.is_empty());
}
