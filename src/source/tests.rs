//! The file sources against whole-file parses: every window size, every
//! limit, resumed from every batch boundary with a fresh source.

use std::path::Path;

use super::*;

/// CSV inputs: header, quoted line breaks, unicode, CRLF, blank lines, a
/// byte order mark, no final line end, empty and header-only files.
const CSV_FILES: &[&[u8]] = &[
    b"id,name,note\n1,Ada,plain\n2,\"Lovelace, A.\",\"two\nlines\"\n3,Ren\xc3\xa9e,\"\xe2\x9c\x93 \"\"quoted\"\"\"\n",
    b"id,name\r\n1,\"a\r\nb\"\r\n\r\n2,\xe6\x97\xa5\xe6\x9c\xac\r\n3,last",
    b"\xef\xbb\xbfk,v\n\n\nx,1\ny,\"\n\n\"\n\n",
    b"",
    b"only,a,header",
    b"only,a,header\n",
    b"a\n\"\"\n\"multi\nline\nvalue\"",
];

/// JSON Lines inputs: blank lines, CRLF, a byte order mark, no final line end.
const JSONL_FILES: &[&[u8]] = &[
    b"{\"a\":1}\n{\"a\":\"\xc3\xa9\\n\"}\n\n  \n[1,2]\n",
    b"\xef\xbb\xbf{\"a\":1}\r\n\r\n\"s\"\r\n3",
    b"",
    b"\n\n",
    b"{}",
];

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The records as the `csv` crate reads the whole file.
fn csv_reference(bytes: &[u8]) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(bytes)
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect()
}

fn jsonl_reference(bytes: &[u8]) -> Vec<serde_json::Value> {
    let text = std::str::from_utf8(bytes)
        .unwrap()
        .trim_start_matches('\u{feff}');
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const LIMITS: &[Limit] = &[
    Limit::records(1),
    Limit::records(2),
    Limit::records(1000),
    Limit::bytes(1),
    Limit::bytes(12),
    Limit::records(2).or_bytes(9),
];
const READ_SIZES: &[usize] = &[1, 2, 3, 5, 8, 64, 1 << 20];

/// Reads `source` to its end from `from`: the records and each batch's cursor.
async fn drain<S: Source<Cursor = FilePosition>>(
    source: &mut S,
    from: FilePosition,
    limit: Limit,
) -> (Vec<S::Record>, Vec<FilePosition>) {
    let mut cursor = from;
    let (mut records, mut cursors) = (Vec::new(), Vec::new());
    while let Some(batch) = source.next_batch(&cursor, limit).await.unwrap() {
        let (mut got, next) = batch.into_parts();
        if let Some(max) = limit.max_records() {
            assert!(
                got.len() as u64 <= max,
                "a batch of {} over {limit:?}",
                got.len()
            );
        }
        assert_ne!(next, cursor, "a batch that does not advance");
        records.append(&mut got);
        cursor = next;
        cursors.push(next);
    }
    (records, cursors)
}

/// What a cursor must say of the file: its record count and line.
fn check_cursor(bytes: &[u8], c: &FilePosition, records_before: usize) {
    let offset = usize::try_from(c.offset).unwrap();
    assert!(offset <= bytes.len());
    assert_eq!(c.record as usize, records_before, "{c:?}");
    let lines = bytes[..offset].iter().filter(|b| **b == b'\n').count();
    assert_eq!(c.line as usize, lines, "{c:?}");
}

/// A cursor through the checkpoint's JSON form, as a resumed run sees it.
fn reloaded(c: &FilePosition) -> FilePosition {
    serde_json::from_str(&serde_json::to_string(c).unwrap()).unwrap()
}

#[tokio::test]
async fn csv_records_are_read_once_from_every_boundary() {
    let dir = tempfile::tempdir().unwrap();
    for (i, bytes) in CSV_FILES.iter().enumerate() {
        let path = write(dir.path(), &format!("{i}.csv"), bytes);
        let reference = csv_reference(bytes);
        for limit in LIMITS {
            for &size in READ_SIZES {
                let mut source = CsvSource::file(&path).flexible(true);
                source.set_read_size(size);
                let (records, cursors) = drain(&mut source, FilePosition::default(), *limit).await;
                let got: Vec<Vec<String>> = records
                    .iter()
                    .map(|r| r.iter().map(str::to_owned).collect())
                    .collect();
                assert_eq!(got, reference, "file {i}, {limit:?}, reads of {size}");
                // Resume from every batch boundary with a fresh source.
                let mut before = 0;
                for (n, c) in cursors.iter().enumerate() {
                    before += usize::try_from(c.record).unwrap() - before;
                    check_cursor(bytes, c, before);
                    let mut resumed = CsvSource::file(&path).flexible(true);
                    resumed.set_read_size(size);
                    let (rest, _) = drain(&mut resumed, reloaded(c), *limit).await;
                    let rest: Vec<Vec<String>> = rest
                        .iter()
                        .map(|r| r.iter().map(str::to_owned).collect())
                        .collect();
                    assert_eq!(
                        rest,
                        reference[before..],
                        "file {i}, resumed after batch {n}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn json_lines_are_read_once_from_every_boundary() {
    let dir = tempfile::tempdir().unwrap();
    for (i, bytes) in JSONL_FILES.iter().enumerate() {
        let path = write(dir.path(), &format!("{i}.jsonl"), bytes);
        let reference = jsonl_reference(bytes);
        for limit in LIMITS {
            for &size in READ_SIZES {
                let mut source = JsonLinesSource::<serde_json::Value>::file(&path);
                source.set_read_size(size);
                let (records, cursors) = drain(&mut source, FilePosition::default(), *limit).await;
                assert_eq!(records, reference, "file {i}, {limit:?}, reads of {size}");
                for (n, c) in cursors.iter().enumerate() {
                    let before = usize::try_from(c.record).unwrap();
                    check_cursor(bytes, c, before);
                    let mut resumed = JsonLinesSource::<serde_json::Value>::file(&path);
                    resumed.set_read_size(size);
                    let (rest, _) = drain(&mut resumed, reloaded(c), *limit).await;
                    assert_eq!(
                        rest,
                        reference[before..],
                        "file {i}, resumed after batch {n}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn the_csv_header_is_read_and_not_handed_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "h.csv", CSV_FILES[0]);
    let mut source = CsvSource::file(&path);
    assert_eq!(source.headers().await.unwrap(), vec!["id", "name", "note"]);
    let (records, _) = drain(&mut source, FilePosition::default(), Limit::default()).await;
    assert_eq!(records.len(), 3);
    assert_eq!(&records[1][2], "two\nlines");

    let mut headless = CsvSource::file(&path).has_headers(false);
    assert!(headless.headers().await.unwrap().is_empty());
    let (records, _) = drain(&mut headless, FilePosition::default(), Limit::default()).await;
    assert_eq!(records.len(), 4);

    let path = write(dir.path(), "semi.csv", b"a;b\n1;\"x;y\"\n");
    let mut semi = CsvSource::file(&path).delimiter(b';');
    let (records, _) = drain(&mut semi, FilePosition::default(), Limit::default()).await;
    assert_eq!(records[0], vec!["1", "x;y"]);
}

#[tokio::test]
async fn bad_records_are_errors_that_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "short.csv", b"a,b\n1,2\n\n\"3\nx\",4\n5\n6,7\n");
    let mut source = CsvSource::file(&path);
    let err = source
        .next_batch(&FilePosition::default(), Limit::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("short.csv") && err.contains("line 6 (record 3, byte 17)"),
        "{err}"
    );
    assert!(err.contains("1 fields, but the header has 2"), "{err}");
    // flexible accepts it.
    let mut flexible = CsvSource::file(&path).flexible(true);
    let (records, _) = drain(&mut flexible, FilePosition::default(), Limit::default()).await;
    assert_eq!(records.len(), 4);

    let path = write(dir.path(), "latin1.csv", b"a,b\n1,caf\xe9\n");
    let err = CsvSource::file(&path)
        .next_batch(&FilePosition::default(), Limit::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 2 (record 1, byte 4)") && err.contains("field 2 is not UTF-8"),
        "{err}"
    );

    let path = write(dir.path(), "bad.jsonl", b"{\"a\":1}\n\n{\"a\":\n");
    let err = JsonLinesSource::<serde_json::Value>::file(&path)
        .next_batch(&FilePosition::default(), Limit::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.jsonl: line 3 (record 2, byte 9)"),
        "{err}"
    );

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Typed {
        a: u8,
    }
    let path = write(dir.path(), "typed.jsonl", b"{\"a\":1}\n{\"a\":300}\n");
    let err = JsonLinesSource::<Typed>::file(&path)
        .next_batch(&FilePosition::default(), Limit::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 2 (record 2, byte 8)") && err.contains("300"),
        "{err}"
    );
}

#[tokio::test]
async fn a_cursor_past_the_end_means_the_file_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "shrunk.jsonl", b"1\n2\n");
    let at = FilePosition {
        offset: 100,
        ..FilePosition::default()
    };
    let err = JsonLinesSource::<u8>::file(&path)
        .next_batch(&at, Limit::default())
        .await
        .unwrap_err();
    let err = err.downcast::<SourceError>().unwrap();
    assert!(matches!(*err, SourceError::Changed { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("4 bytes long, and the cursor is at byte 100"),
        "{err}"
    );

    let missing = CsvSource::file(dir.path().join("missing.csv"))
        .next_batch(&FilePosition::default(), Limit::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("cannot read") && missing.contains("missing.csv"),
        "{missing}"
    );
}
