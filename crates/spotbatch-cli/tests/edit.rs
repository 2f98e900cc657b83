//! `reset`, `mark`, `set-cursor`: compare-and-swap edits, and live leases.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    assert_code, bincode_checkpoint, json_checkpoint, output_within, quickstart_bin, run, stderr,
    stdout, with_live_lease, Store,
};
use serde_json::{json, Value};
use spotbatch::Status;

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("json")
}

#[test]
fn set_cursor_replaces_a_json_cursor_by_cas_as_the_cli() {
    let s = Store::new();
    s.save(&json_checkpoint("etl", 1200, 5), None);

    let out = run(&["set-cursor", &s.url(), "etl", r#"{"next": 1201}"#]);
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains(r#"cursor {"next":1200} → {"next":1201} (version 7 → 8)"#),
        "{}",
        stdout(&out)
    );
    let c = s.load("etl").unwrap();
    assert_eq!(c.version, 8);
    assert_eq!(json_of(&c.cursor), json!({"next": 1201}));
    assert_eq!(
        json_of(&c.state),
        json!({"out_len": 5}),
        "the state is kept"
    );
    assert_eq!(c.writer.task, "spotbatch set-cursor (CLI)");
    assert_ne!(
        c.writer.pid,
        std::process::id(),
        "written by the CLI's process"
    );
    assert_eq!(
        c.status,
        Status::Interrupted {
            source: "SIGTERM".into()
        }
    );
    assert_eq!(c.counters.chunks, 12, "counters are kept");

    // The state too.
    let out = run(&[
        "set-cursor",
        &s.url(),
        "etl",
        r#"{"next": 1300}"#,
        "--state",
        r#"{"out_len": 99}"#,
    ]);
    assert_code(&out, 0);
    let c = s.load("etl").unwrap();
    assert_eq!((c.version, json_of(&c.state)), (9, json!({"out_len": 99})));

    // Not JSON: a usage error, nothing written.
    let out = run(&["set-cursor", &s.url(), "etl", "{next: 1}"]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("not JSON"), "{}", stderr(&out));
    // Another shape: refused unless asked for.
    let out = run(&["set-cursor", &s.url(), "etl", "1201"]);
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("shape") && stderr(&out).contains("--allow-shape-change"),
        "{}",
        stderr(&out)
    );
    let out = run(&["set-cursor", &s.url(), "etl", r#"{"next": 1, "extra": 2}"#]);
    assert_code(&out, 2);
    assert_eq!(s.load("etl").unwrap().version, 9);
    let out = run(&[
        "set-cursor",
        &s.url(),
        "etl",
        "1201",
        "--allow-shape-change",
    ]);
    assert_code(&out, 0);
    assert_eq!(json_of(&s.load("etl").unwrap().cursor), json!(1201));

    // bincode cursors cannot be edited.
    s.save(&bincode_checkpoint("squares", 40), None);
    let before = s.bytes("squares");
    let out = run(&["set-cursor", &s.url(), "squares", "41"]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("bincode") && stderr(&out).contains("JSON"),
        "{}",
        stderr(&out)
    );
    assert_eq!(s.bytes("squares"), before);
}

#[test]
fn mark_sets_each_status_by_cas() {
    let s = Store::new();
    s.save(&json_checkpoint("etl", 1200, 5), None);
    let cases: [(&[&str], Status); 5] = [
        (&["--status", "completed"], Status::Completed),
        (&["--status", "running"], Status::Running),
        (
            &["--status", "failed", "--message", "poison record 1200"],
            Status::Failed {
                message: "poison record 1200".into(),
            },
        ),
        (
            &["--status", "interrupted"],
            Status::Interrupted {
                source: "spotbatch mark".into(),
            },
        ),
        (
            &["--status", "interrupted", "--message", "manual stop"],
            Status::Interrupted {
                source: "manual stop".into(),
            },
        ),
    ];
    for (i, (flags, status)) in cases.into_iter().enumerate() {
        let url = s.url();
        let mut args = vec!["mark", &url, "etl"];
        args.extend_from_slice(flags);
        let out = run(&args);
        assert_code(&out, 0);
        let c = s.load("etl").unwrap();
        assert_eq!(c.status, status);
        assert_eq!(c.version, 8 + i as u64);
        assert_eq!(c.writer.task, "spotbatch mark (CLI)");
        assert_eq!(json_of(&c.cursor), json!({"next": 1200}));
    }
    let out = run(&[
        "mark",
        &s.url(),
        "etl",
        "--status",
        "completed",
        "--message",
        "x",
    ]);
    assert_code(&out, 2);
    let out = run(&["mark", &s.url(), "etl", "--status", "paused"]);
    assert_code(&out, 2);
    let out = run(&["mark", &s.url(), "nope", "--status", "completed"]);
    assert_code(&out, 1);
}

#[test]
fn reset_asks_refuses_without_a_terminal_and_deletes_by_cas_with_yes() {
    let s = Store::new();
    s.save(&json_checkpoint("etl", 1200, 5), None);
    // stdin is not a terminal here: refused without --yes.
    let out = run(&["reset", &s.url(), "etl"]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("--yes") && stderr(&out).contains("not a terminal"),
        "{}",
        stderr(&out)
    );
    assert!(s.load("etl").is_some());

    let out = run(&["reset", &s.url(), "etl", "--yes"]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("version 7"), "{}", stdout(&out));
    assert!(s.load("etl").is_none());
    let out = run(&["reset", &s.url(), "etl", "--yes"]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("no checkpoint"), "{}", stderr(&out));
}

#[test]
fn edits_of_a_job_with_a_live_lease_are_refused_naming_the_holder_unless_forced() {
    let s = Store::new();
    let held = with_live_lease(
        json_checkpoint("etl", 1200, 5),
        "arn:aws:ecs:eu-west-1:1:task/c/42",
        60,
    );
    s.save(&held, None);
    let before = s.bytes("etl");
    let url = s.url();
    for args in [
        vec!["mark", &url, "etl", "--status", "completed"],
        vec!["set-cursor", &url, "etl", r#"{"next": 1201}"#],
        vec!["reset", &url, "etl", "--yes"],
    ] {
        let out = run(&args);
        assert_code(&out, 73);
        let err = stderr(&out);
        for needle in [
            &format!("host {}", held.writer.host),
            &format!("pid {}", held.writer.pid),
            &held.writer.run_id.to_string(),
            "task arn:aws:ecs:eu-west-1:1:task/c/42",
            "expires in",
            "--force",
            "\"etl\"",
        ] {
            assert!(
                err.contains(needle),
                "{args:?}: missing {needle:?} in {err}"
            );
        }
        assert_eq!(s.bytes("etl"), before, "{args:?} changed the checkpoint");
    }

    let out = run(&["mark", &url, "etl", "--status", "completed", "--force"]);
    assert_code(&out, 0);
    assert!(stderr(&out).contains("fenced off"), "{}", stderr(&out));
    let c = s.load("etl").unwrap();
    assert_eq!(
        (c.version, &c.status, c.lease),
        (8, &Status::Completed, None)
    );

    // An expired lease does not hold the job.
    let mut expired = with_live_lease(c, "t", 0);
    expired.version = 9;
    expired.lease = expired.lease.map(|mut l| {
        l.expires_ms -= 1;
        l
    });
    s.save(&expired, Some(8));
    let out = run(&["mark", &url, "etl", "--status", "interrupted"]);
    assert_code(&out, 0);
}

/// A forced edit fences off a real runner: its next save fails and it exits 73.
#[test]
fn a_forced_edit_fences_off_a_live_runner() {
    let s = Store::new();
    let dir = s.dir.path();
    let mut child = std::process::Command::new(quickstart_bin())
        .args([
            "--records",
            "400",
            "--chunk",
            "10",
            "--work-us",
            "20000",
            "--every-chunks",
            "1",
        ])
        .arg("--out")
        .arg(dir.join("out.txt"))
        .args(["--store", &s.url(), "--job", "live"])
        .env_remove("SPOTBATCH_STORE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Each chunk takes 200 ms and is checkpointed: wait for the first one.
    let started = Instant::now();
    while s.load("live").is_none_or(|c| c.counters.chunks == 0) {
        assert!(started.elapsed() < Duration::from_secs(20), "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }

    let out = run(&["mark", &s.url(), "live", "--status", "interrupted"]);
    assert_code(&out, 73);
    assert!(
        stderr(&out).contains(&format!("pid {}", child.id())),
        "{}",
        stderr(&out)
    );

    let out = run(&[
        "mark",
        &s.url(),
        "live",
        "--status",
        "interrupted",
        "--message",
        "operator",
        "--force",
    ]);
    assert_code(&out, 0);
    let marked = s.load("live").unwrap();

    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the runner was not fenced off");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(73), "the fenced runner's exit code");
    assert_eq!(
        s.load("live").unwrap(),
        marked,
        "the fenced runner wrote after the edit"
    );

    // And the job resumes from there, by itself.
    let mut cmd = std::process::Command::new(quickstart_bin());
    cmd.args(["--records", "400", "--chunk", "10", "--work-us", "0"])
        .arg("--out")
        .arg(dir.join("out.txt"))
        .args(["--store", &s.url(), "--job", "live"])
        .env_remove("SPOTBATCH_STORE");
    let out = output_within(cmd, Duration::from_secs(30));
    assert_code(&out, 0);
    assert_eq!(s.load("live").unwrap().status, Status::Completed);
}
