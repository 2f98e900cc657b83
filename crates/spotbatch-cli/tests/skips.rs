//! `skipped` and `redrive`, against a file store written by real runs of
//! the quickstart example.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{assert_code, output_within, quickstart_bin, run, stdout, Store};
use serde_json::Value;
use spotbatch::Status;

/// Runs the quickstart job `job` over 200 records in chunks of 10, writing
/// to `out`, with the extra `args`.
fn quickstart(s: &Store, job: &str, out: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(quickstart_bin());
    cmd.args(["--records", "200", "--chunk", "10"])
        .arg("--out")
        .arg(out)
        .args(["--store", &s.url(), "--job", job])
        .args(args)
        .env_remove("SPOTBATCH_STORE");
    output_within(cmd, Duration::from_secs(60))
}

fn sorted_lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

#[test]
fn skipped_lists_what_a_run_skipped_and_redrive_has_the_next_run_do_it() {
    let s = Store::new();
    let dir = s.dir.path();
    // Nine attempts in ten fail: many chunks fail all ten attempts, and are skipped.
    let first = quickstart(
        &s,
        "etl",
        &dir.join("out.txt"),
        &["--flaky", "0.9", "--skip", "1000"],
    );
    assert_code(&first, 0);
    let c = s.load("etl").unwrap();
    assert_eq!(c.status, Status::Completed);
    let skipped = c.skipped.len();
    assert!(skipped > 0 && skipped < 20, "{skipped} skipped");
    assert_eq!(c.counters.chunks + skipped as u64, 20);

    let out = run(&["skipped", &s.url(), "etl"]);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains(&format!("{skipped} skipped chunk(s)")),
        "{text}"
    );
    assert!(
        text.contains("START") && text.contains("ATTEMPTS"),
        "{text}"
    );
    let first_skip = &c.skipped[0];
    let row = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first_skip.start_text.as_str()))
        .unwrap_or_else(|| panic!("no row for {}: {text}", first_skip.start_text));
    assert!(row.contains("flaky: attempt 10 at chunk"), "{row}");
    assert!(!text.contains("redrive requested"), "{text}");

    let out = run(&["skipped", &s.url(), "etl", "--json"]);
    assert_code(&out, 0);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["job"], "etl");
    assert_eq!(json["redrive_requested"], false);
    assert_eq!(json["skipped"].as_array().unwrap().len(), skipped);
    assert_eq!(json["skipped"][0]["start"], first_skip.start_text.as_str());
    assert_eq!(json["skipped"][0]["items"], 10);
    assert_eq!(json["skipped"][0]["attempts"], 10);

    // The redrive request: a compare-and-swap on the checkpoint.
    let out = run(&["redrive", &s.url(), "etl"]);
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains(&format!("redrive requested for {skipped} skipped chunk(s)")),
        "{}",
        stdout(&out)
    );
    let requested = s.load("etl").unwrap();
    assert!(requested.redrive);
    assert_eq!(requested.version, c.version + 1);
    assert_eq!(requested.writer.task, "spotbatch redrive (CLI)");
    let out = run(&["skipped", &s.url(), "etl"]);
    assert!(
        stdout(&out).contains("redrive requested"),
        "{}",
        stdout(&out)
    );
    let out = run(&["show", &s.url(), "etl"]);
    assert!(
        stdout(&out).contains("(spotbatch skipped); redrive requested"),
        "{}",
        stdout(&out)
    );
    let out = run(&["show", &s.url(), "etl", "--json"]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["skipped_chunks"], skipped);
    assert_eq!(json["redrive_requested"], true);

    // The next run (no longer flaky) does the skipped chunks, and the output
    // holds every record once: the redriven chunks' lines at the end.
    let second = quickstart(&s, "etl", &dir.join("out.txt"), &[]);
    assert_code(&second, 0);
    let c = s.load("etl").unwrap();
    assert_eq!(c.status, Status::Completed);
    assert!(c.skipped.is_empty() && !c.redrive);
    assert_eq!(c.counters.chunks, 20);
    let clean = quickstart(&s, "clean", &dir.join("clean.txt"), &[]);
    assert_code(&clean, 0);
    assert_eq!(
        sorted_lines(&dir.join("out.txt")),
        sorted_lines(&dir.join("clean.txt"))
    );

    // Nothing left to redrive: a clear refusal.
    let out = run(&["redrive", &s.url(), "etl"]);
    assert_code(&out, 1);
    let out = run(&["skipped", &s.url(), "etl"]);
    assert!(
        stdout(&out).contains("no skipped chunks"),
        "{}",
        stdout(&out)
    );
}
