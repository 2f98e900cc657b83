//! `list`, `show`, `export` and `import` against the file store.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod common;

use common::{
    assert_code, bincode_checkpoint, json_checkpoint, run, spotbatch, stderr, stdout,
    with_live_lease, Store,
};
use serde_json::Value;
use spotbatch::{Checkpoint, Status};

#[test]
fn list_shows_each_job_with_status_version_chunks_and_writer_and_unreadable_entries_with_why() {
    let s = Store::new();
    s.save(&json_checkpoint("etl/2026-11-24", 1200, 5), None);
    s.save(
        &with_live_lease(
            bincode_checkpoint("squares", 40),
            "arn:aws:ecs:task/abc",
            60,
        ),
        None,
    );
    // A third checkpoint, then one byte flipped in it.
    s.save(&bincode_checkpoint("broken", 1), None);
    let path = s.file_of("broken");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();

    let out = run(&["list", &s.url()]);
    assert_code(&out, 0);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[0].starts_with("KEY") && lines[0].contains("WRITER / LEASE"),
        "{text}"
    );
    let etl = lines
        .iter()
        .find(|l| l.starts_with("etl/2026-11-24"))
        .expect(&text);
    assert!(
        etl.contains("interrupted (SIGTERM)") && etl.contains(" 7 ") && etl.contains(" 12 "),
        "{etl}"
    );
    assert!(etl.contains("UTC"), "{etl}");
    let squares = lines
        .iter()
        .find(|l| l.starts_with("squares"))
        .expect(&text);
    assert!(
        squares.contains("HELD by") && squares.contains(&format!("pid {}", std::process::id())),
        "{squares}"
    );
    let broken = lines
        .iter()
        .find(|l| l.contains("UNREADABLE"))
        .expect(&text);
    assert!(broken.contains("checksum"), "{broken}");

    let out = run(&["list", &s.url(), "--json"]);
    assert_code(&out, 0);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = v.as_array().unwrap();
    assert_eq!(entries.len(), 3);
    let etl = entries
        .iter()
        .find(|e| e["key"] == "etl/2026-11-24")
        .unwrap();
    assert_eq!(etl["status"], "interrupted");
    assert_eq!(etl["status_detail"], "SIGTERM");
    assert_eq!(etl["version"], 7);
    assert_eq!(etl["chunks"], 12);
    assert_eq!(etl["writer"]["pid"], std::process::id());
    assert!(etl["updated"].as_str().unwrap().ends_with('Z'));
    let squares = entries.iter().find(|e| e["key"] == "squares").unwrap();
    assert_eq!(squares["lease"]["live"], true);
    assert_eq!(squares["writer"]["task"], "arn:aws:ecs:task/abc");
    let broken = entries.iter().find(|e| e["readable"] == false).unwrap();
    assert!(
        broken["reason"].as_str().unwrap().contains("checksum"),
        "{broken}"
    );

    let empty = Store::new();
    std::fs::create_dir(empty.path()).unwrap();
    let out = run(&["list", &empty.url()]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("no checkpoints"), "{}", stdout(&out));
}

fn writer_tag(pid: u32) -> String {
    spotbatch_test_support::temp_writer_tag(pid)
}

/// A temporary file of `job`'s checkpoint, as a save by `writer` (a tag)
/// that was cut off leaves it.
fn temporary(s: &Store, job: &str, writer: &str) -> std::path::PathBuf {
    let path = s
        .path()
        .join(format!(".{job}.ckpt.{writer}.{}.tmp", "ab".repeat(16)));
    std::fs::write(&path, b"partial").unwrap();
    path
}

#[test]
fn list_removes_temporaries_of_gone_writers_and_shows_the_others_with_why() {
    let s = Store::new();
    s.save(&json_checkpoint("etl", 1200, 5), None);
    let live = temporary(&s, "etl", &writer_tag(std::process::id()));
    let remote = temporary(&s, "etl", "pid77-ns4026531836-boot0123456789abcdef-t5");
    let gone = {
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let path = temporary(&s, "etl", &writer_tag(child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        path
    };

    let out = run(&["list", &s.url()]);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(!gone.exists(), "a gone writer's temporary file was kept");
    assert!(live.exists() && remote.exists());
    assert!(
        text.contains("2 temporary files of saves cut off by a kill could not be removed yet:"),
        "{text}"
    );
    let why = |path: &std::path::Path| {
        let mut lines = text.lines();
        lines
            .find(|l| l.trim() == path.display().to_string())
            .unwrap_or_else(|| panic!("{} not listed:\n{text}", path.display()));
        lines.next().unwrap().trim().to_owned()
    };
    assert!(
        why(&live).contains(&format!(
            "pid {}, is running on this host",
            std::process::id()
        )),
        "{text}"
    );
    let remote_why = why(&remote);
    assert!(
        remote_why.contains("pid 77 on another host")
            && remote_why
                .contains("may still be saving; a save or list removes it once it is 1 h old"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("etl ")),
        "the checkpoint is not listed:\n{text}"
    );

    let out = run(&["list", &s.url(), "--json"]);
    assert_code(&out, 0);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = v.as_array().unwrap();
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["checkpoint", "leftover", "leftover"], "{v:#}");
    let leftover = entries
        .iter()
        .find(|e| e["key"] == live.display().to_string())
        .unwrap();
    assert_eq!(leftover["readable"], false);
    assert!(
        leftover["reason"]
            .as_str()
            .unwrap()
            .contains("is running on this host"),
        "{leftover}"
    );

    // Nothing but leftovers.
    let empty = Store::new();
    std::fs::create_dir_all(empty.path()).unwrap();
    let remote = temporary(
        &empty,
        "gone-job",
        "pid77-ns4026531836-boot0123456789abcdef-t5",
    );
    let out = run(&["list", &empty.url()]);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains("no checkpoints")
            && text.contains("1 temporary file of saves")
            && text.contains(&remote.display().to_string()),
        "{text}"
    );
}

#[test]
fn show_prints_the_whole_envelope_and_decodes_json_cursors() {
    let s = Store::new();
    let mut c = with_live_lease(
        json_checkpoint("etl", 1200, 5_000),
        "arn:aws:ecs:task/abc",
        60,
    );
    c.history = vec![spotbatch::RunRecord::started(&c.writer, c.created_ms)];
    let types = spotbatch::TypeDescription::trace::<u64, (u64, String)>().unwrap();
    c.types = Some(types.clone());
    s.save(&c, None);

    let out = run(&["show", &s.url(), "etl"]);
    assert_code(&out, 0);
    let text = stdout(&out);
    for needle in [
        "job          \"etl\"",
        &format!("store        {}", s.url()),
        "version      7",
        "status       interrupted (SIGTERM)",
        "counters     chunks 12, items 1200, checkpoints 7, interruptions 1, runs 2",
        "codec        json",
        "\"next\": 1200",
        "\"out_len\": 5000",
        "LIVE: held by host",
        &format!("pid {}", std::process::id()),
        &c.writer.run_id.to_string(),
        "task arn:aws:ecs:task/abc",
        "expires in",
        "history      1 recent run",
        "UTC",
        &format!("types        fingerprint {}", types.fingerprint()),
        "             cursor: u64\n             state: (u64, string)\n",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }

    let out = run(&["show", &s.url(), "etl", "--json"]);
    assert_code(&out, 0);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cursor"]["json"]["next"], 1200);
    assert_eq!(v["state"]["json"]["out_len"], 5000);
    assert_eq!(v["lease"]["live"], true);
    assert_eq!(v["history"].as_array().unwrap().len(), 1);
    assert_eq!(v["counters"]["runs"], 2);
    assert_eq!(v["types"]["fingerprint"], types.fingerprint());
    assert_eq!(v["types"]["text"], types.to_string());
    assert_eq!(v["types"]["stored"]["cursor"], "u64");

    // bincode is not self-describing: size and hex.
    s.save(&bincode_checkpoint("squares", 300), None);
    let out = run(&["show", &s.url(), "squares"]);
    assert_code(&out, 0);
    let text = stdout(&out);
    let hex: String = spotbatch::Codec::Bincode
        .encode(&300u64)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        text.contains(&format!("3 bytes (bincode, not self-describing): {hex}")),
        "{text}"
    );
    assert!(text.contains("lease        none"), "{text}");
    assert!(text.contains("types        not recorded"), "{text}");
}

/// `list` has a STEP column when a job of steps is listed: the step its
/// cursor is in, and its place; `-` for a job of one step.
#[test]
fn list_names_the_step_of_each_job_of_steps() {
    let s = Store::new();
    s.save(&bincode_checkpoint("squares", 300), None);
    let out = run(&["list", &s.url()]);
    assert_code(&out, 0);
    assert!(!stdout(&out).contains("STEP"), "{}", stdout(&out));

    let mut c = json_checkpoint("etl", 1200, 5_000);
    c.steps = vec![
        spotbatch::StepInfo::new("extract", 1),
        spotbatch::StepInfo::new("transform", 2),
        spotbatch::StepInfo::new("load", 1),
    ];
    c.step = 1;
    s.save(&c, None);
    let out = run(&["list", &s.url()]);
    assert_code(&out, 0);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("KEY")
            && lines[0].contains("  STATUS  ")
            && lines[0].contains("  STEP  "),
        "{text}"
    );
    let column = lines[0].find("STEP").unwrap();
    let etl = lines.iter().find(|l| l.starts_with("etl")).expect(&text);
    assert_eq!(
        &etl[column..column + "transform (2/3)".len()],
        "transform (2/3)",
        "{text}"
    );
    let squares = lines
        .iter()
        .find(|l| l.starts_with("squares"))
        .expect(&text);
    assert_eq!(&squares[column..column + 2], "- ", "{text}");

    let out = run(&["list", &s.url(), "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let etl = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "etl")
        .unwrap();
    assert_eq!(
        (&etl["step"], &etl["step_number"], &etl["step_count"]),
        (&Value::from("transform"), &Value::from(2), &Value::from(3))
    );
    let squares = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "squares")
        .unwrap();
    assert_eq!(squares["step"], Value::Null);
}

#[test]
fn show_names_the_step_of_a_job_of_steps() {
    let s = Store::new();
    let mut c = json_checkpoint("etl", 1200, 5_000);
    c.steps = vec![
        spotbatch::StepInfo::new("extract", 1),
        spotbatch::StepInfo::new("transform", 2),
        spotbatch::StepInfo::new("load", 1),
    ];
    c.step = 1;
    s.save(&c, None);
    let out = run(&["show", &s.url(), "etl"]);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains("status       interrupted (SIGTERM)\nstep         transform (2 of 3: extract, transform (schema 2), load)\n"),
        "{text}"
    );
    let out = run(&["show", &s.url(), "etl", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["step"], "transform");
    assert_eq!(v["steps"][1]["name"], "transform");
    assert_eq!(v["steps"][1]["schema"], 2);

    // A job of one step: no step.
    s.save(&bincode_checkpoint("squares", 300), None);
    let out = run(&["show", &s.url(), "squares"]);
    assert!(!stdout(&out).contains("\nstep "), "{}", stdout(&out));
    let out = run(&["show", &s.url(), "squares", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["step"], Value::Null);
    assert_eq!(v["steps"], serde_json::json!([]));

    // The steps example, stopped on its way: `show` names the step its
    // checkpoint is in, and its JSON cursor is that step's.
    let out = std::process::Command::new(spotbatch_test_support::example_bin("steps"))
        .args(["--records", "4000", "--chunk", "100", "--work-us", "100"])
        .args([
            "--max-runtime",
            "0.7",
            "--codec",
            "json",
            "--job",
            "nightly",
        ])
        .arg("--out")
        .arg(s.path().with_file_name("out"))
        .args(["--store", &s.url()])
        .output()
        .unwrap();
    assert_code(&out, 0);
    let c = s.load("nightly").unwrap();
    assert!(
        matches!(c.status, Status::Interrupted { .. }),
        "{}",
        c.status
    );
    let step = c.step_name().unwrap();
    let out = run(&["show", &s.url(), "nightly"]);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "step         {step} ({} of 3: extract, transform, load)",
            c.step + 1
        )),
        "{text}"
    );
    let out = run(&["show", &s.url(), "nightly", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["step"], step);
    let cursor = v["cursor"]["json"].as_object().unwrap();
    assert_eq!(
        cursor.keys().collect::<Vec<_>>(),
        [&format!("step{}", c.step)],
        "{cursor:?}"
    );
}

#[test]
fn show_of_a_corrupt_checkpoint_prints_the_reason_exits_65_and_changes_nothing() {
    let s = Store::new();
    s.save(&json_checkpoint("etl", 1200, 5), None);
    let path = s.file_of("etl");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let before = std::fs::metadata(&path).unwrap().modified().unwrap();

    for args in [
        vec!["show", &s.url(), "etl"],
        vec!["show", &s.url(), "etl", "--json"],
    ] {
        let out = run(&args);
        assert_code(&out, 65);
        let err = stderr(&out);
        for needle in ["checksum", "\"etl\"", &path.display().to_string(), &s.url()] {
            assert!(err.contains(needle), "missing {needle:?} in {err}");
        }
        assert!(out.stdout.is_empty(), "{}", stdout(&out));
    }
    // Editing it is refused the same way, with what to do instead.
    let out = run(&["mark", &s.url(), "etl", "--status", "completed"]);
    assert_code(&out, 65);
    assert!(
        stderr(&out).contains("remove it by hand"),
        "{}",
        stderr(&out)
    );
    let out = run(&["reset", &s.url(), "etl", "--yes"]);
    assert_code(&out, 65);

    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the checkpoint changed"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        before
    );
}

#[test]
fn show_of_a_missing_job_and_bad_urls_and_keys_have_distinct_exit_codes() {
    let s = Store::new();
    std::fs::create_dir(s.path()).unwrap();
    let out = run(&["show", &s.url(), "nope"]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("no checkpoint for job \"nope\""),
        "{}",
        stderr(&out)
    );

    for (url, says) in [
        ("/var/lib/ckpt", "expected scheme"),
        ("ftp://host/x", "unknown scheme"),
        ("s3://Bad_Bucket/prefix", "not a valid bucket name"),
        ("postgres://localhost/db?schema=", "schema name is empty"),
    ] {
        let out = run(&["show", url, "job"]);
        assert_code(&out, 78);
        assert!(
            stderr(&out).contains(url) && stderr(&out).contains(says),
            "{}",
            stderr(&out)
        );
    }
    let out = run(&["show", &s.url(), ""]);
    assert_code(&out, 78);
    assert!(stderr(&out).contains("empty"), "{}", stderr(&out));
}

#[test]
fn export_then_import_moves_a_checkpoint_and_import_replaces_by_cas_as_version_plus_one() {
    let from = Store::new();
    let original = json_checkpoint("etl", 1200, 5);
    from.save(&original, None);
    let file = from.dir.path().join("etl.export");

    // export > file: the stored bytes, verified.
    let out = {
        let mut cmd = spotbatch();
        cmd.args(["export", &from.url(), "etl"]);
        cmd.stdout(std::fs::File::create(&file).unwrap());
        cmd.output().unwrap()
    };
    assert_code(&out, 0);
    assert_eq!(std::fs::read(&file).unwrap(), from.bytes("etl"));

    // import < file into an empty store: created as it is, version included.
    let to = Store::new();
    let import = |store: &Store, job: &str, extra: &[&str]| {
        let mut cmd = spotbatch();
        cmd.args(["import", &store.url(), job]).args(extra);
        cmd.stdin(std::fs::File::open(&file).unwrap());
        cmd.output().unwrap()
    };
    let out = import(&to, "etl", &[]);
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains("as version 7 (created"),
        "{}",
        stdout(&out)
    );
    let imported = to.load("etl").unwrap();
    assert_eq!(imported.version, 7);
    assert_eq!(
        (&imported.cursor, &imported.state),
        (&original.cursor, &original.state)
    );
    assert_eq!(imported.status, original.status);
    assert_eq!(imported.counters, original.counters);
    assert_eq!(imported.writer.task, "spotbatch import (CLI)");
    assert_eq!(imported.lease, None);

    // Again: replaces the stored version 7 with version 8.
    let out = import(&to, "etl", &[]);
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains("as version 8 (replaced version 7"),
        "{}",
        stdout(&out)
    );
    assert_eq!(to.load("etl").unwrap().version, 8);

    // Another job's checkpoint, or bytes that do not verify: refused, nothing written.
    let out = import(&to, "other", &[]);
    assert_code(&out, 65);
    assert!(
        stderr(&out).contains("holds the checkpoint of job \"etl\", not \"other\""),
        "{}",
        stderr(&out)
    );
    assert!(to.load("other").is_none());
    let mut bad = std::fs::read(&file).unwrap();
    bad.truncate(bad.len() - 3);
    let bad_file = from.dir.path().join("bad.export");
    std::fs::write(&bad_file, &bad).unwrap();
    let out = run(&[
        "import",
        &to.url(),
        "etl",
        "--input",
        bad_file.to_str().unwrap(),
    ]);
    assert_code(&out, 65);
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));
    assert_eq!(to.load("etl").unwrap().version, 8);

    // A target held by a live runner: refused unless --force.
    let held = with_live_lease(to.load("etl").unwrap(), "task-1", 60);
    let mut held_next = held.clone();
    held_next.version = 9;
    to.save(&held_next, Some(8));
    let out = import(&to, "etl", &[]);
    assert_code(&out, 73);
    assert!(stderr(&out).contains("task-1"), "{}", stderr(&out));
    let out = import(&to, "etl", &["--force"]);
    assert_code(&out, 0);
    let now: Checkpoint = to.load("etl").unwrap();
    assert_eq!((now.version, now.lease), (10, None));

    // export refuses a terminal; writes a file with --output.
    let out_file = from.dir.path().join("out.ckpt");
    let out = run(&[
        "export",
        &from.url(),
        "etl",
        "--output",
        out_file.to_str().unwrap(),
    ]);
    assert_code(&out, 0);
    assert_eq!(
        Checkpoint::decode(&std::fs::read(&out_file).unwrap())
            .unwrap()
            .status,
        Status::Interrupted {
            source: "SIGTERM".into()
        }
    );
}
