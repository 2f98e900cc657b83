//! File sources over S3 objects (ranged GETs) against SeaweedFS: the same
//! records as the local file, from the start and from a saved cursor,
//! across windows and blocks that cut records; an object replaced during the
//! run, or since it was listed, is an error, not a mix of two versions.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod s3_common;

use aws_sdk_s3::primitives::ByteStream;
use spotbatch::source::{CsvSource, FilePosition, JsonLinesSource, Limit, S3Object, Source};

/// About 3 MiB of CSV whose records hold quoted line breaks and unicode:
/// more than one ranged GET, with records cut at the windows' ends.
fn big_csv() -> Vec<u8> {
    let mut out = String::from("id,text\r\n");
    for i in 0..60_000 {
        out.push_str(&format!("{i},\"é {i}\r\n{}\"\r\n", "x".repeat(i % 97)));
    }
    out.into_bytes()
}

async fn put(bucket: &str, key: &str, body: Vec<u8>) -> aws_sdk_s3::Client {
    let store = s3_common::store_on(&s3_common::endpoint(), bucket, "").await;
    let client = store.client().clone();
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body))
        .send()
        .await
        .unwrap();
    client
}

/// The object's ETag, as a listing gives it.
async fn etag(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> String {
    let listed = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(key)
        .send()
        .await
        .unwrap();
    listed.contents()[0].e_tag().unwrap().to_owned()
}

async fn records<S: Source<Cursor = FilePosition>>(
    source: &mut S,
    from: FilePosition,
    limit: Limit,
) -> (Vec<S::Record>, Vec<FilePosition>) {
    let (mut out, mut cursors, mut at) = (Vec::new(), Vec::new(), from);
    while let Some(batch) = source.next_batch(&at, limit).await.unwrap() {
        let (mut got, next) = batch.into_parts();
        out.append(&mut got);
        at = next;
        cursors.push(next);
    }
    (out, cursors)
}

#[tokio::test]
async fn an_s3_object_reads_as_the_local_file_does() {
    let bucket = s3_common::fresh_bucket_on(&s3_common::endpoint()).await;
    let body = big_csv();
    assert!(body.len() > 3 << 20);
    let client = put(&bucket, "in/big.csv", body.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("big.csv");
    std::fs::write(&local, &body).unwrap();

    let limit = Limit::records(7000).or_bytes(700_000);
    let (expected, local_cursors) =
        records(&mut CsvSource::file(&local), FilePosition::default(), limit).await;
    assert_eq!(expected.len(), 60_000);
    // One block (the object is smaller than the default 8 MiB), then
    // blocks of an odd size that cut records and windows anywhere.
    for block in [None, Some(100_003)] {
        let object = |client: &aws_sdk_s3::Client| {
            let object = S3Object::new(client.clone(), &bucket, "in/big.csv");
            match block {
                Some(bytes) => object.block_size(bytes),
                None => object,
            }
        };
        let mut remote = CsvSource::new(object(&client));
        assert_eq!(remote.name(), format!("s3://{bucket}/in/big.csv"));
        let (got, cursors) = records(&mut remote, FilePosition::default(), limit).await;
        assert!(got == expected, "blocks of {block:?} bytes");
        assert_eq!(cursors, local_cursors, "blocks of {block:?} bytes");
        // A fresh source, from a cursor in the middle (as a resumed run).
        let middle = cursors[cursors.len() / 2];
        let mut resumed = CsvSource::new(object(&client));
        let (rest, _) = records(&mut resumed, middle, limit).await;
        assert!(
            rest == expected[usize::try_from(middle.record).unwrap()..],
            "blocks of {block:?} bytes, resumed at {middle}"
        );
    }

    // JSON Lines too, with a last line without a line end.
    put(
        &bucket,
        "in/events.jsonl",
        b"{\"a\":1}\r\n\n{\"a\":\"\xc3\xa9\"}".to_vec(),
    )
    .await;
    let mut events = JsonLinesSource::<serde_json::Value>::new(S3Object::new(
        client,
        &bucket,
        "in/events.jsonl",
    ));
    let (values, _) = records(&mut events, FilePosition::default(), Limit::default()).await;
    assert_eq!(
        values,
        vec![serde_json::json!({"a": 1}), serde_json::json!({"a": "é"})]
    );
}

#[tokio::test]
async fn an_object_replaced_during_the_run_is_an_error() {
    let bucket = s3_common::fresh_bucket_on(&s3_common::endpoint()).await;
    // Three blocks of 8 MiB: the third is read after the object is replaced.
    let client = put(&bucket, "in/big.csv", big_csv().repeat(6)).await;
    let first_etag = etag(&client, &bucket, "in/big.csv").await;
    let mut source = CsvSource::new(S3Object::new(client.clone(), &bucket, "in/big.csv"));
    let first = source
        .next_batch(&FilePosition::default(), Limit::records(10))
        .await
        .unwrap()
        .unwrap();
    put(&bucket, "in/big.csv", big_csv().repeat(2)).await;
    let far = FilePosition {
        offset: 17 << 20,
        ..*first.next()
    };
    let err = source
        .next_batch(&far, Limit::records(10))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the object was replaced during the run"),
        "{err}"
    );

    // Pinned to an ETag it no longer has (as listed before it was replaced).
    let stale = first_etag;
    let read =
        CsvSource::new(S3Object::new(client.clone(), &bucket, "in/big.csv").if_match(&stale))
            .next_batch(&FilePosition::default(), Limit::default())
            .await;
    let Err(err) = read else {
        panic!("a read pinned to a replaced version must fail");
    };
    let err = err.to_string();
    assert!(err.contains(&stale), "{err}");
    let now = etag(&client, &bucket, "in/big.csv").await;
    let pinned = CsvSource::new(S3Object::new(client.clone(), &bucket, "in/big.csv").if_match(now))
        .next_batch(&FilePosition::default(), Limit::records(3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pinned.items(), 3);

    let missing = CsvSource::new(S3Object::new(client, &bucket, "in/missing.csv"))
        .next_batch(&FilePosition::default(), Limit::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains(&format!("cannot read s3://{bucket}/in/missing.csv")),
        "{missing}"
    );
}
