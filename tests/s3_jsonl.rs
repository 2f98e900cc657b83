//! The `s3_jsonl` example as real processes against a real S3 server
//! (SeaweedFS, started by scripts/test): JSON Lines objects under a prefix
//! (the listing source) copied into one object (the multipart sink), stopped
//! by SIGKILL between parts, by SIGTERM, killed before its first checkpoint
//! (an abandoned upload), and stopped at random by either: the object the
//! last run completes is byte for byte the uninterrupted run's, with every
//! input value exactly once; no upload or staging object is left.

#![allow(unreachable_pub, clippy::unwrap_used)]

mod s3_common;

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use s3_common::{example_command, finish, signal, Tail};
use spotbatch::s3::aws_sdk_s3;

const LIMIT: Duration = Duration::from_secs(120);
/// Input objects, and JSON lines in each: an output of about 16 MB, four
/// parts of 5 MiB.
const OBJECTS: usize = 40;
const LINES: usize = 2500;

/// Keys of the inputs: some need URL encoding in a listing.
fn input_key(n: usize) -> String {
    match n % 8 {
        0 => format!("in/{n:03} with spaces.jsonl"),
        1 => format!("in/{n:03}+plus.jsonl"),
        2 => format!("in/{n:03}-ünïcödé.jsonl"),
        3 => format!("in/sub/{n:03}.jsonl"),
        _ => format!("in/{n:03}.jsonl"),
    }
}

/// An input object's body: JSON lines, with a blank line, CRLF line ends
/// and no final line end in some.
fn input_body(n: usize) -> String {
    let mut body = String::new();
    for i in 0..LINES {
        let end = if n.is_multiple_of(5) { "\r\n" } else { "\n" };
        body.push_str(&format!(
            "{{\"n\":{n},\"i\":{i},\"text\":\"{}\"}}{end}",
            "lorem ipsum ".repeat(1 + (i * 7 + n) % 13)
        ));
        if i == 10 {
            body.push('\n');
        }
    }
    if n.is_multiple_of(3) {
        body.pop();
    }
    body
}

struct Setup {
    client: Client,
    endpoint: String,
    bucket: String,
}

impl Setup {
    async fn new() -> Self {
        let endpoint = s3_common::endpoint();
        let bucket = s3_common::fresh_bucket_on(&endpoint).await;
        let client = s3_common::builder(&endpoint, &bucket, "")
            .client()
            .await
            .unwrap();
        let setup = Self {
            client,
            endpoint,
            bucket,
        };
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..OBJECTS {
            let (client, bucket) = (setup.client.clone(), setup.bucket.clone());
            tasks.spawn(async move {
                client
                    .put_object()
                    .bucket(&bucket)
                    .key(input_key(n))
                    .body(ByteStream::from(input_body(n).into_bytes()))
                    .send()
                    .await
                    .unwrap();
            });
            if tasks.len() >= 8 {
                tasks.join_next().await.unwrap().unwrap();
            }
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        setup
    }

    /// The example copying `in/` to `out/<name>.jsonl`, job `name`, checkpoints in the bucket.
    fn command(&self, name: &str, work_ms: u64, every_chunks: u64) -> Command {
        let mut cmd = example_command("s3_jsonl");
        cmd.args(["--input", &format!("s3://{}/in/", self.bucket)])
            .args([
                "--output",
                &format!("s3://{}/out/{name}.jsonl", self.bucket),
            ])
            .args(["--store", &format!("s3://{}/ckpt", self.bucket)])
            .args(["--job", name])
            .args(["--part-size-mib", "5"])
            .args(["--work-ms", &work_ms.to_string()])
            .args(["--every-chunks", &every_chunks.to_string()])
            .args(["--every-secs", "1000"])
            .args(["--interrupted-exit-code", "75"])
            .env("RUST_LOG", "info,spotbatch::s3=debug");
        s3_common::s3_env(&mut cmd, &self.endpoint);
        cmd
    }

    async fn output(&self, name: &str) -> Vec<u8> {
        self.client
            .get_object()
            .bucket(&self.bucket)
            .key(format!("out/{name}.jsonl"))
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes()
            .to_vec()
    }

    /// Nothing left behind: no upload in progress, no staging object.
    async fn assert_clean(&self, name: &str) {
        let uploads = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(format!("out/{name}"))
            .send()
            .await
            .unwrap();
        assert!(
            uploads.uploads().is_empty(),
            "{name}: {:?}",
            uploads.uploads()
        );
        let staged = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("out/{name}.jsonl.spotbatch/"))
            .send()
            .await
            .unwrap();
        assert!(
            staged.contents().is_empty(),
            "{name}: {:?}",
            staged.contents()
        );
    }
}

/// Runs to completion; returns the log.
fn complete(cmd: &mut Command) -> String {
    let (status, _, log) = finish(cmd.spawn().unwrap(), LIMIT);
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("outcome=completed"), "{log}");
    log
}

/// Waits until the log has `n` lines with `needle`.
fn wait_for(tail: &Tail, needle: &str, n: usize) {
    let started = Instant::now();
    while tail.count(needle) < n {
        assert!(
            started.elapsed() < LIMIT,
            "no {n}× {needle:?} within {LIMIT:?}:\n{}",
            tail.text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn killed(mut child: Child, tail: Tail) -> String {
    signal(&child, libc::SIGKILL);
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    tail.into_text()
}

/// Checks the reference output: every input value once, in key and line order.
fn check_reference(out: &[u8]) {
    let text = std::str::from_utf8(out).unwrap();
    let mut seen = HashSet::new();
    for line in text.lines() {
        let wrapped: serde_json::Value = serde_json::from_str(line).unwrap();
        let value = &wrapped["value"];
        let id = (value["n"].as_u64().unwrap(), value["i"].as_u64().unwrap());
        assert!(seen.insert(id), "{id:?} twice");
        let n = usize::try_from(id.0).unwrap();
        assert_eq!(wrapped["source"], input_key(n));
        assert_eq!(wrapped["record"], id.1, "{line}");
    }
    assert_eq!(seen.len(), OBJECTS * LINES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_survives_sigkill_sigterm_and_abandoned_uploads() {
    let setup = Setup::new().await;
    let reference = {
        let log = tokio::task::block_in_place(|| complete(&mut setup.command("reference", 0, 5)));
        assert!(log.contains("output complete"), "{log}");
        setup.output("reference").await
    };
    check_reference(&reference);
    assert!(
        reference.len() > 3 * (5 << 20),
        "{} bytes: four parts",
        reference.len()
    );
    setup.assert_clean("reference").await;

    // SIGKILL between parts, twice, then to the end.
    let name = "sigkill";
    tokio::task::block_in_place(|| {
        let mut child = setup.command(name, 30, 2).spawn().unwrap();
        let tail = Tail::of(&mut child);
        wait_for(&tail, "checkpoint saved", 1);
        wait_for(&tail, "part uploaded", 2);
        killed(child, tail);

        let mut child = setup.command(name, 30, 2).spawn().unwrap();
        let tail = Tail::of(&mut child);
        wait_for(
            &tail,
            "continuing the multipart upload from the checkpoint",
            1,
        );
        wait_for(&tail, "part uploaded", 1);
        let log = killed(child, tail);
        assert!(log.contains("resuming from checkpoint"), "{log}");

        let log = complete(&mut setup.command(name, 0, 2));
        assert!(log.contains("continuing the multipart upload"), "{log}");
    });
    assert!(
        setup.output(name).await == reference,
        "{name}: output differs from the uninterrupted run's"
    );
    setup.assert_clean(name).await;

    // SIGTERM: the chunk in hand finishes, the final checkpoint covers it.
    let name = "sigterm";
    tokio::task::block_in_place(|| {
        let mut child = setup.command(name, 30, 1000).spawn().unwrap();
        let tail = Tail::of(&mut child);
        wait_for(&tail, "part uploaded", 2);
        signal(&child, libc::SIGTERM);
        let status = child.wait().unwrap();
        let log = tail.into_text();
        assert_eq!(status.code(), Some(75), "{log}");
        assert!(log.contains("interrupted by SIGTERM"), "{log}");
        let log = complete(&mut setup.command(name, 0, 1000));
        assert!(log.contains("continuing the multipart upload"), "{log}");
    });
    assert!(
        setup.output(name).await == reference,
        "{name}: output differs"
    );
    setup.assert_clean(name).await;

    // Killed before its first checkpoint with output: the next run finds no
    // upload in the checkpoint, aborts the abandoned one and starts over.
    let name = "abandoned";
    tokio::task::block_in_place(|| {
        let mut child = setup.command(name, 10, 1000).spawn().unwrap();
        let tail = Tail::of(&mut child);
        wait_for(&tail, "part uploaded", 2);
        killed(child, tail);
        let log = complete(&mut setup.command(name, 0, 1000));
        assert!(
            log.contains("aborted an abandoned multipart upload"),
            "{log}"
        );
    });
    assert!(
        setup.output(name).await == reference,
        "{name}: output differs"
    );
    setup.assert_clean(name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_at_random_by_sigterm_or_sigkill_the_output_is_exactly_once() {
    let setup = Setup::new().await;
    let reference = {
        tokio::task::block_in_place(|| complete(&mut setup.command("reference", 0, 3)));
        setup.output("reference").await
    };
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    let name = "random";
    let mut stops = Vec::new();
    tokio::task::block_in_place(|| {
        for _ in 0..5 {
            let mut child = setup.command(name, 20, 3).spawn().unwrap();
            let tail = Tail::of(&mut child);
            std::thread::sleep(Duration::from_millis(rng.u64(300..2500)));
            let sig = if rng.bool() {
                libc::SIGTERM
            } else {
                libc::SIGKILL
            };
            if child.try_wait().unwrap().is_some() {
                stops.push("finished first".to_owned());
                break;
            }
            signal(&child, sig);
            let status = child.wait().unwrap();
            let log = tail.into_text();
            match sig {
                libc::SIGTERM => assert!(
                    matches!(status.code(), Some(75 | 0)),
                    "seed {seed}: {status:?}\n{log}"
                ),
                _ => assert!(
                    status.signal() == Some(libc::SIGKILL) || status.code() == Some(0),
                    "seed {seed}: {status:?}\n{log}"
                ),
            }
            stops.push(format!("{sig} → {status:?}"));
        }
        let (status, _, log) = finish(setup.command(name, 0, 3).spawn().unwrap(), LIMIT);
        assert_eq!(status.code(), Some(0), "seed {seed}: {log}");
        assert!(
            log.contains("outcome=completed") || log.contains("job already completed"),
            "seed {seed}: {log}"
        );
    });
    assert!(
        setup.output(name).await == reference,
        "seed {seed}, stops {stops:?}: output differs from the uninterrupted run's"
    );
    setup.assert_clean(name).await;
}
