//! Every command against the S3 store (SeaweedFS) and the Postgres store, on
//! the real servers `scripts/test` starts: a fresh bucket or schema per test.
//! A missing server fails these tests; they never skip.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_code, json_checkpoint, key, output_within, stderr, stdout, with_live_lease};
use serde_json::{json, Value};
use spotbatch::postgres::PostgresStore;
use spotbatch::s3::aws_sdk_s3::primitives::ByteStream;
use spotbatch::s3::aws_sdk_s3::Client;
use spotbatch::s3::{S3Store, S3StoreBuilder};
use spotbatch::{Checkpoint, CheckpointStore, RunRecord, Status};
use tokio::runtime::Runtime;

/// A variable scripts/test exports; panics (the test fails) when it is missing.
fn required(name: &str, what: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: these tests need {what}. Run them with scripts/test, which \
             starts SeaweedFS (scripts/services/s3.sh) and PostgreSQL (scripts/services/postgres.sh) \
             and exports it"
        ),
    }
}

fn s3_endpoint() -> String {
    // The CLI takes its credentials from the environment, as any AWS tool.
    required("AWS_ACCESS_KEY_ID", "the S3 test server's credentials");
    required("AWS_SECRET_ACCESS_KEY", "the S3 test server's credentials");
    required("SPOTBATCH_TEST_S3_ENDPOINT", "an S3 server")
}

fn pg_url() -> String {
    required("SPOTBATCH_TEST_PG_URL", "a PostgreSQL server")
}

/// `spotbatch ARGS`, configured for the test S3 server the way an operator
/// would for any S3-compatible server: endpoint and path style in the
/// environment. (Harmless for the other stores.)
fn cli(args: &[&str], stdin: Option<&Path>) -> Output {
    let mut cmd = common::spotbatch();
    cmd.args(args)
        .env("AWS_ENDPOINT_URL_S3", s3_endpoint())
        .env("SPOTBATCH_S3_FORCE_PATH_STYLE", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE")
        .env_remove("SPOTBATCH_S3_SSE")
        .env_remove("SPOTBATCH_S3_SSE_KMS_KEY_ID");
    if let Some(path) = stdin {
        cmd.stdin(Stdio::from(
            std::fs::File::open(path).expect("open stdin file"),
        ));
    }
    output_within(cmd, Duration::from_secs(30))
}

fn run(args: &[&str]) -> Output {
    cli(args, None)
}

/// A remote store for one test, with the runtime its client lives on.
struct Remote {
    rt: Runtime,
    store: Arc<dyn CheckpointStore>,
    url: String,
    /// The same store as an `S3Store`, for raw object access.
    s3: Option<S3Store>,
}

impl Remote {
    fn runtime() -> Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// A store at `s3://<fresh bucket>/ckpt` on the test server.
    fn s3() -> Self {
        let endpoint = s3_endpoint();
        let rt = Self::runtime();
        let bucket = format!("sbcli-{}", &uuid_ish()[..20]);
        let store = rt.block_on(async {
            let store = S3StoreBuilder::new(&bucket, "ckpt")
                .endpoint_url(&endpoint)
                .force_path_style(true)
                .region("us-east-1")
                .initial_backoff(Duration::from_millis(50))
                .build()
                .await
                .expect("build the test's S3 store");
            store
                .client()
                .create_bucket()
                .bucket(&bucket)
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "create bucket {bucket} on {endpoint}: {}",
                        spotbatch::s3::aws_sdk_s3::error::DisplayErrorContext(e)
                    )
                });
            store
        });
        Self {
            rt,
            store: Arc::new(store.clone()),
            url: format!("s3://{bucket}/ckpt"),
            s3: Some(store),
        }
    }

    /// A store in a fresh schema on the test server.
    fn postgres() -> Self {
        let base = pg_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}schema=t_cli_{}", &uuid_ish()[..16]);
        let rt = Self::runtime();
        let store = rt
            .block_on(PostgresStore::connect(&url))
            .unwrap_or_else(|e| panic!("connect to the test server: {e}"));
        Self {
            rt,
            store: Arc::new(store),
            url,
            s3: None,
        }
    }

    fn save(&self, c: &Checkpoint, expected: Option<u64>) {
        self.rt
            .block_on(self.store.save(c, expected))
            .expect("save");
    }

    fn load(&self, job: &str) -> Option<Checkpoint> {
        self.rt.block_on(self.store.load(&key(job))).expect("load")
    }

    fn s3_store(&self) -> &S3Store {
        self.s3.as_ref().expect("an S3 store")
    }

    fn client(&self) -> &Client {
        self.s3_store().client()
    }

    fn object_key(&self, job: &str) -> String {
        self.s3_store().object_key(&key(job))
    }

    /// The object's bytes and ETag.
    fn raw_get(&self, job: &str) -> (Vec<u8>, String) {
        let s3 = self.s3_store();
        self.rt.block_on(async {
            let out = s3
                .client()
                .get_object()
                .bucket(s3.bucket())
                .key(self.object_key(job))
                .send()
                .await
                .expect("get object");
            let etag = out.e_tag().expect("an ETag").to_owned();
            let bytes = out.body.collect().await.expect("body").into_bytes();
            (bytes.to_vec(), etag)
        })
    }

    fn raw_put(&self, job: &str, bytes: &[u8]) {
        let s3 = self.s3_store();
        self.rt
            .block_on(
                self.client()
                    .put_object()
                    .bucket(s3.bucket())
                    .key(self.object_key(job))
                    .body(ByteStream::from(bytes.to_vec()))
                    .send(),
            )
            .expect("put object");
    }
}

/// 32 lowercase hex digits, different each call (bucket and schema names).
fn uuid_ish() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("json")
}

/// `show`'s lines from `counters` to the end of `state`: the counters, the
/// codec, the cursor type and the decoded cursor and state.
fn payload_lines(show: &str) -> String {
    let from = show.find("\ncounters").expect(show);
    let to = show.find("\nhistory").expect(show);
    show[from..to].to_owned()
}

/// The checkpoint as the job wrote it: without what `import` stamps (writer,
/// update time, version, lease).
fn as_written(mut c: Checkpoint) -> Checkpoint {
    c.writer.host.clear();
    c.writer.pid = 0;
    c.writer.run_id = Default::default();
    c.writer.task.clear();
    c.writer.pid_namespace = 0;
    c.updated_ms = 0;
    c.version = 0;
    c.lease = None;
    c
}

/// list, show, mark, set-cursor, export, reset, import: each against `r`.
fn every_command(r: &Remote) {
    let url = r.url.as_str();
    let job = "etl/2026-11-24";
    r.save(&json_checkpoint(job, 1200, 5), None);

    let out = run(&["list", url]);
    assert_code(&out, 0);
    let text = stdout(&out);
    let row = text.lines().find(|l| l.starts_with(job)).expect(&text);
    assert!(
        row.contains("interrupted (SIGTERM)") && row.contains(" 7 ") && row.contains(" 12 "),
        "{row}"
    );
    let out = run(&["list", url, "--json"]);
    assert_code(&out, 0);
    let v: Value = serde_json::from_slice(&out.stdout).expect("list --json");
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(
        (v[0]["key"].as_str(), v[0]["version"].as_u64()),
        (Some(job), Some(7))
    );

    let out = run(&["show", url, job]);
    assert_code(&out, 0);
    let text = stdout(&out);
    for needle in [
        &format!("job          {job:?}"),
        &format!("store        {}", r.store.location()),
        "version      7",
        "status       interrupted (SIGTERM)",
        "codec        json",
        "\"next\": 1200",
        "\"out_len\": 5",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }

    let out = run(&["mark", url, job, "--status", "completed"]);
    assert_code(&out, 0);
    let c = r.load(job).expect("marked");
    assert_eq!((c.version, &c.status), (8, &Status::Completed));
    assert_eq!(c.writer.task, "spotbatch mark (CLI)");

    let out = run(&["set-cursor", url, job, r#"{"next": 1201}"#]);
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains(r#"cursor {"next":1200} → {"next":1201} (version 8 → 9)"#),
        "{}",
        stdout(&out)
    );
    let c = r.load(job).expect("set");
    assert_eq!(c.version, 9);
    assert_eq!(json_of(&c.cursor), json!({"next": 1201}));
    assert_eq!(json_of(&c.state), json!({"out_len": 5}));
    assert_eq!(c.status, Status::Completed);
    // Another shape is refused here too, and nothing is written.
    let out = run(&["set-cursor", url, job, "1202"]);
    assert_code(&out, 2);
    assert_eq!(r.load(job).expect("kept").version, 9);

    let out = run(&["export", url, job]);
    assert_code(&out, 0);
    let exported = out.stdout.clone();
    assert_eq!(Checkpoint::decode(&exported).expect("verifies"), c);
    if r.s3.is_some() {
        assert_eq!(exported, r.raw_get(job).0, "export is the object's bytes");
    }
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), &exported).expect("write export");

    let out = run(&["reset", url, job]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    assert!(r.load(job).is_some());
    let out = run(&["reset", url, job, "--yes"]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("version 9"), "{}", stdout(&out));
    assert!(r.load(job).is_none());
    let out = run(&["list", url]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("no checkpoints"), "{}", stdout(&out));
    let out = run(&["show", url, job]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains(&format!("no checkpoint for job {job:?}")),
        "{}",
        stderr(&out)
    );

    // Into the empty store: created as it is; again: replaced as version + 1.
    let out = cli(&["import", url, job], Some(file.path()));
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains("as version 9 (created"),
        "{}",
        stdout(&out)
    );
    let out = run(&[
        "import",
        url,
        job,
        "--input",
        &file.path().display().to_string(),
    ]);
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains("as version 10 (replaced version 9"),
        "{}",
        stdout(&out)
    );
    let imported = r.load(job).expect("imported");
    assert_eq!(imported.version, 10);
    assert_eq!(imported.writer.task, "spotbatch import (CLI)");
    assert_eq!(as_written(imported), as_written(c));
    // Another job's checkpoint: refused, nothing written.
    let out = cli(&["import", url, "other"], Some(file.path()));
    assert_code(&out, 65);
    assert!(r.load("other").is_none());
}

#[test]
fn every_command_works_against_an_s3_store() {
    every_command(&Remote::s3());
}

#[test]
fn every_command_works_against_a_postgres_store() {
    every_command(&Remote::postgres());
}

/// File → S3 → Postgres with export and import: the envelope arrives as the
/// job wrote it (only writer, update time and lease are the import's), and
/// `show` prints the same cursor, state and counters in every store.
#[test]
fn a_checkpoint_moves_from_a_file_to_s3_to_postgres() {
    let s3 = Remote::s3();
    let pg = Remote::postgres();
    let file_store = common::Store::new();
    let mut original = json_checkpoint("nightly-etl", 120_001, 4096);
    original.history = vec![RunRecord::started(&original.writer, original.created_ms)];
    file_store.save(&original, None);
    let dir = file_store.dir.path();
    let (from_file, from_s3, from_pg) = (
        dir.join("file.ckpt"),
        dir.join("s3.ckpt"),
        dir.join("pg.ckpt"),
    );
    let export = |url: &str, to: &Path| {
        let out = run(&[
            "export",
            url,
            "nightly-etl",
            "--output",
            to.to_str().expect("utf-8"),
        ]);
        assert_code(&out, 0);
        std::fs::read(to).expect("exported file")
    };
    let import = |url: &str, from: &Path| {
        let out = cli(&["import", url, "nightly-etl"], Some(from));
        assert_code(&out, 0);
        assert!(
            stdout(&out).contains("as version 7 (created"),
            "{}",
            stdout(&out)
        );
    };

    let file_bytes = export(&file_store.url(), &from_file);
    assert_eq!(file_bytes, file_store.bytes("nightly-etl"));
    import(&s3.url, &from_file);
    let s3_bytes = export(&s3.url, &from_s3);
    assert_eq!(
        s3_bytes,
        s3.raw_get("nightly-etl").0,
        "S3 holds the envelope byte for byte"
    );
    import(&pg.url, &from_s3);
    let pg_bytes = export(&pg.url, &from_pg);

    let decoded: Vec<Checkpoint> = [&file_bytes, &s3_bytes, &pg_bytes]
        .iter()
        .map(|b| Checkpoint::decode(b).expect("verifies"))
        .collect();
    for c in &decoded {
        assert_eq!(c.version, 7);
        assert_eq!((&c.cursor, &c.state), (&original.cursor, &original.state));
        assert_eq!(as_written(c.clone()), as_written(original.clone()));
    }
    assert_eq!(decoded[2].writer.task, "spotbatch import (CLI)");
    assert_eq!(pg.load("nightly-etl").as_ref(), Some(&decoded[2]));

    let shows: Vec<String> = [file_store.url(), s3.url.clone(), pg.url.clone()]
        .iter()
        .map(|url| {
            let out = run(&["show", url, "nightly-etl"]);
            assert_code(&out, 0);
            stdout(&out)
        })
        .collect();
    assert!(shows[0].contains("\"next\": 120001"), "{}", shows[0]);
    assert!(shows[0].contains("\"out_len\": 4096"), "{}", shows[0]);
    for show in &shows[1..] {
        assert_eq!(payload_lines(show), payload_lines(&shows[0]), "{show}");
        assert!(show.contains("history      1 recent run"), "{show}");
    }
    let json: Vec<Value> = [file_store.url(), s3.url.clone(), pg.url.clone()]
        .iter()
        .map(|url| {
            let out = run(&["show", url, "nightly-etl", "--json"]);
            assert_code(&out, 0);
            serde_json::from_slice(&out.stdout).expect("show --json")
        })
        .collect();
    for v in &json {
        assert_eq!(v["cursor"]["json"], json!({"next": 120001}), "{v}");
        assert_eq!(
            (&v["state"], &v["counters"], &v["status"]),
            (&json[0]["state"], &json[0]["counters"], &json[0]["status"]),
        );
    }
}

/// Edits and imports of a job whose lease is live are refused (73) naming
/// the holder, and change nothing; `--force` goes through and fences it off.
fn live_lease_refused_unless_forced(r: &Remote) {
    let url = r.url.as_str();
    let held = with_live_lease(
        json_checkpoint("etl", 1200, 5),
        "arn:aws:ecs:eu-west-1:1:task/c/42",
        60,
    );
    r.save(&held, None);
    let before = r.load("etl").expect("saved");
    let s3_before = r.s3.as_ref().map(|_| r.raw_get("etl"));

    // An export of the held checkpoint (export only reads: allowed).
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let out = run(&[
        "export",
        url,
        "etl",
        "--output",
        file.path().to_str().expect("utf-8"),
    ]);
    assert_code(&out, 0);

    let out = run(&["list", url]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("HELD by"), "{}", stdout(&out));

    let path = file.path().display().to_string();
    for args in [
        vec!["mark", url, "etl", "--status", "completed"],
        vec!["set-cursor", url, "etl", r#"{"next": 1201}"#],
        vec!["reset", url, "etl", "--yes"],
        vec!["import", url, "etl", "--input", &path],
    ] {
        let out = run(&args);
        assert_code(&out, 73);
        let err = stderr(&out);
        for needle in [
            &format!("pid {}", held.writer.pid),
            &held.writer.run_id.to_string(),
            "task arn:aws:ecs:eu-west-1:1:task/c/42",
            "--force",
        ] {
            assert!(
                err.contains(needle),
                "{args:?}: missing {needle:?} in {err}"
            );
        }
        assert_eq!(r.load("etl").as_ref(), Some(&before), "{args:?} changed it");
    }
    if let Some(s3_before) = s3_before {
        assert_eq!(r.raw_get("etl"), s3_before, "the object was rewritten");
    }

    let out = run(&["mark", url, "etl", "--status", "interrupted", "--force"]);
    assert_code(&out, 0);
    assert!(stderr(&out).contains("fenced off"), "{}", stderr(&out));
    let c = r.load("etl").expect("marked");
    assert_eq!((c.version, c.lease), (8, None));
    assert_eq!(c.writer.task, "spotbatch mark (CLI)");
    // The runner that held version 7 is fenced off: its next save conflicts.
    let mut late = held.clone();
    late.version = 8;
    let err =
        r.rt.block_on(r.store.save(&late, Some(7)))
            .expect_err("the fenced runner's save");
    assert!(
        matches!(err, spotbatch::StoreError::Conflict { .. }),
        "{err}"
    );
}

#[test]
fn a_live_lease_on_s3_is_refused_without_force() {
    live_lease_refused_unless_forced(&Remote::s3());
}

#[test]
fn a_live_lease_on_postgres_is_refused_without_force() {
    live_lease_refused_unless_forced(&Remote::postgres());
}

#[test]
fn a_corrupt_checkpoint_on_s3_is_reported_by_object_exits_65_and_is_left_alone() {
    let r = Remote::s3();
    let url = r.url.as_str();
    r.save(&json_checkpoint("etl", 1200, 5), None);
    let garbage = b"this is not a spotbatch checkpoint \x00\xff\xfe".to_vec();
    r.raw_put("etl", &garbage);
    let before = r.raw_get("etl");
    assert_eq!(before.0, garbage);
    let object = format!("s3://{}/{}", r.s3_store().bucket(), r.object_key("etl"));
    assert!(object.ends_with("/ckpt/etl.ckpt"), "{object}");

    for args in [vec!["show", url, "etl"], vec!["show", url, "etl", "--json"]] {
        let out = run(&args);
        assert_code(&out, 65);
        let err = stderr(&out);
        for needle in [&object, "\"etl\""] {
            assert!(
                err.contains(needle),
                "{args:?}: missing {needle:?} in {err}"
            );
        }
        assert!(out.stdout.is_empty(), "{}", stdout(&out));
    }
    // Edits are refused the same way; export too (it only hands out verified bytes).
    for (args, code) in [
        (vec!["mark", url, "etl", "--status", "completed"], 65),
        (vec!["set-cursor", url, "etl", r#"{"next": 1}"#], 65),
        (vec!["reset", url, "etl", "--yes"], 65),
        (vec!["export", url, "etl"], 65),
    ] {
        let out = run(&args);
        assert_code(&out, code);
        assert!(stderr(&out).contains(&object), "{args:?}: {}", stderr(&out));
    }
    // `list` goes on, and says which entry it cannot read.
    let out = run(&["list", url]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("UNREADABLE"), "{}", stdout(&out));

    assert_eq!(r.raw_get("etl"), before, "the object changed");
}

/// A bad `SPOTBATCH_S3_*` value is a configuration error naming the URL and
/// the variable, before anything is sent.
#[test]
fn a_bad_s3_setting_in_the_environment_names_the_url_and_the_variable() {
    let mut cmd = common::spotbatch();
    cmd.args(["show", "s3://some-bucket/ckpt", "etl"])
        .env("SPOTBATCH_S3_FORCE_PATH_STYLE", "sometimes");
    let out = output_within(cmd, Duration::from_secs(30));
    assert_code(&out, 78);
    let err = stderr(&out);
    assert!(
        err.contains("\"s3://some-bucket/ckpt\"") && err.contains("SPOTBATCH_S3_FORCE_PATH_STYLE"),
        "{err}"
    );
}

/// A misspelt schema or bucket is named as missing by the commands that
/// read (exit 74), never listed as an empty store, and nothing is created.
#[test]
fn a_schema_or_bucket_that_does_not_exist_is_named_and_not_created() {
    let base = pg_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let schema = format!("t_cli_missing_{}", &uuid_ish()[..16]);
    let url = format!("{base}{sep}schema={schema}");
    for args in [vec!["list", &url], vec!["show", &url, "etl"]] {
        let out = run(&args);
        assert_code(&out, 74);
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "there is no table \"{schema}\".spotbatch_checkpoints"
            )) && err.contains("check the store URL")
                && !err.contains("no checkpoint"),
            "{args:?}: {err}"
        );
    }
    let rt = Remote::runtime();
    let exists: bool = rt.block_on(async {
        let pool = spotbatch::postgres::sqlx::PgPool::connect(&base)
            .await
            .expect("connect");
        spotbatch::postgres::sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
        )
        .bind(&schema)
        .fetch_one(&pool)
        .await
        .expect("pg_namespace")
    });
    assert!(!exists, "the command created schema {schema}");

    let bucket = format!("sbcli-missing-{}", &uuid_ish()[..16]);
    let url = format!("s3://{bucket}/ckpt");
    for args in [vec!["list", &url], vec!["show", &url, "etl"]] {
        let out = run(&args);
        assert_code(&out, 74);
        let err = stderr(&out);
        assert!(
            err.contains(&url) && err.contains("NoSuchBucket") && !err.contains("no checkpoint"),
            "{args:?}: {err}"
        );
    }
}
