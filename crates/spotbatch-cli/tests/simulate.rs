//! `simulate`: real processes, real signals, against the quickstart example and bad jobs.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{assert_code, output_within, quickstart_bin, spotbatch, stderr, stdout, Store};
use serde_json::Value;
use spotbatch::Status;

const LIMIT: Duration = Duration::from_secs(60);

/// `spotbatch simulate ARGS -- COMMAND…`, bounded in time.
fn simulate(args: &[&str], command: &[&str]) -> Output {
    let mut cmd = spotbatch();
    cmd.arg("simulate").args(args).arg("--").args(command);
    output_within(cmd, LIMIT)
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the report is not JSON ({e}):\n{}\nstderr:\n{}",
            stdout(out),
            stderr(out)
        )
    })
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// The quickstart's flags for a job in `dir`, as the issue gives them.
fn quickstart_args(dir: &Path, store: &Store, work_us: u64) -> Vec<String> {
    let mut args: Vec<String> = [
        "--records",
        "20000",
        "--chunk",
        "100",
        "--every-chunks",
        "10",
        "--interrupted-exit-code",
        "75",
    ]
    .map(String::from)
    .to_vec();
    args.extend([
        "--work-us".into(),
        work_us.to_string(),
        "--store".into(),
        store.url(),
        "--job".into(),
        "sim".into(),
        "--out".into(),
        dir.join("out.txt").display().to_string(),
    ]);
    args
}

/// The output of an uninterrupted quickstart run.
fn reference_output() -> Vec<u8> {
    let s = Store::new();
    let mut cmd = std::process::Command::new(quickstart_bin());
    cmd.args(quickstart_args(s.dir.path(), &s, 0))
        .env_remove("SPOTBATCH_STORE");
    let out = output_within(cmd, LIMIT);
    assert_code(&out, 0);
    std::fs::read(s.dir.path().join("out.txt")).expect("reference output")
}

fn count(report: &Value, pred: impl Fn(&Value) -> bool) -> u64 {
    report["per_run"]
        .as_array()
        .expect("per_run")
        .iter()
        .filter(|r| pred(r))
        .count() as u64
}

#[test]
fn quickstart_converges_through_many_sigterms_and_hard_kills_with_a_consistent_report() {
    let s = Store::new();
    let job = quickstart_args(s.dir.path(), &s, 50);
    let mut command = vec![quickstart_bin().display().to_string()];
    command.extend(job);
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let started = Instant::now();
    let out = simulate(
        &[
            "--interrupt-after",
            "15ms..70ms",
            "--kill-ratio",
            "0.25",
            "--seed",
            "42",
            "--max-runs",
            "400",
            "--store",
            &s.url(),
            "--job",
            "sim",
            "--json",
            "--quiet",
        ],
        &command,
    );
    let took = started.elapsed();
    assert_code(&out, 0);
    let r = report(&out);
    let err = stderr(&out);
    assert_eq!(r["verdict"], "pass", "{r:#}");
    assert_eq!(r["completed"], true);
    assert!(r["failures"].as_array().unwrap().is_empty(), "{r:#}");

    // 20+ interruptions, some of them hard kills.
    let (runs, sigterms, kills, to_end) = (
        n(&r["runs"]),
        n(&r["sigterms"]),
        n(&r["hard_kills"]),
        n(&r["ran_to_end"]),
    );
    assert!(
        sigterms + kills >= 20,
        "only {sigterms} SIGTERMs and {kills} hard kills\n{err}"
    );
    assert!(kills >= 2, "only {kills} hard kills");
    assert!(sigterms >= 10, "only {sigterms} SIGTERMs");

    // The figures add up: every run was SIGTERMed, hard-killed, or ran to its end.
    assert_eq!(runs, sigterms + kills + to_end, "{r:#}");
    assert_eq!(r["per_run"].as_array().unwrap().len() as u64, runs);
    assert!(
        to_end <= 1,
        "{to_end} runs ended by themselves: only the last may"
    );
    assert_eq!(n(&r["grace_exceeded"]), 0);
    assert_eq!(count(&r, |x| x["signal"] == "SIGKILL"), kills);
    let odd: Vec<&Value> = r["per_run"]
        .as_array()
        .expect("per_run")
        .iter()
        .filter(|x| x["signal"] == "SIGKILL" && x["exit_signal"] != "SIGKILL")
        .collect();
    assert!(odd.is_empty(), "hard kills end in SIGKILL: {odd:#?}");
    let exits = &r["exit_codes"];
    assert_eq!(exits["SIGKILL"].as_u64().unwrap_or(0), kills);
    // A SIGTERM either drained (exit 75), arrived before the handler was
    // installed (died of it), or came as the job was completing (exit 0).
    let drained = exits["75"].as_u64().unwrap_or(0);
    let unhandled = n(&r["sigterm_unhandled"]);
    let completing = count(&r, |x| x["signal"] == "SIGTERM" && x["exit_code"] == 0);
    assert_eq!(sigterms, drained + unhandled + completing, "{exits}");
    assert!(drained >= 10, "{exits}");
    assert!(r["slowest_stop_ms"].as_u64().unwrap() < 5_000);

    // What the store says agrees: every drained SIGTERM was recorded by the
    // job, and the chunks add up to the job's.
    let st = &r["store"];
    assert_eq!(n(&st["chunks_at_start"]), 0);
    assert_eq!(n(&st["chunks_final"]), 200);
    // A SIGTERM before a run's first save (the set-up before the run,
    // opening the store, loading) is drained with nothing to record.
    let before_first_save = n(&st["stopped_before_first_save"]);
    assert_eq!(
        before_first_save,
        count(&r, |x| x["signal"] == "SIGTERM"
            && x["exit_code"] == 75
            && x["saved"] == false),
        "{st}"
    );
    assert_eq!(
        n(&st["interruptions_recorded"]),
        drained - before_first_save,
        "{st}"
    );
    assert!(
        n(&st["runs_recorded"]) <= runs && n(&st["runs_recorded"]) >= drained - before_first_save
    );
    assert_eq!(n(&st["no_final_checkpoint"]), 0);
    let progress: u64 = r["per_run"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| n(&x["chunks_after"]) - n(&x["chunks_before"]))
        .sum();
    assert_eq!(progress, 200);
    assert!(st["first_run_rate"].as_f64().unwrap() > 0.0);
    // Hard kills throw work away; SIGTERMs do not.
    let lost: u64 = r["per_run"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["lost_ms"].as_u64())
        .sum();
    assert_eq!(lost, n(&st["lost_ms"]));
    assert!(count(&r, |x| x["signal"] == "SIGTERM" && !x["lost_ms"].is_null()) <= unhandled);
    assert!(n(&r["total_ms"]) <= took.as_millis() as u64);

    // The job really completed, and its output is an uninterrupted run's.
    let c = s.load("sim").expect("checkpoint");
    assert_eq!(c.status, Status::Completed);
    assert_eq!((c.counters.chunks, c.counters.items), (200, 20_000));
    assert_eq!(c.counters.interruptions, drained - before_first_save);
    assert_eq!(
        std::fs::read(s.dir.path().join("out.txt")).unwrap(),
        reference_output()
    );
    assert!(!err.contains("[run "), "--quiet forwards nothing");
    assert!(err.contains("spotbatch simulate: run 1:"), "{err}");
}

#[test]
fn a_job_that_ignores_sigterm_needs_sigkill_and_fails() {
    let started = Instant::now();
    let out = simulate(
        &[
            "--interrupt-after",
            "200ms",
            "--grace",
            "1",
            "--max-runs",
            "3",
            "--json",
        ],
        &["sh", "-c", "trap '' TERM; sleep 100"],
    );
    assert_code(&out, 1);
    let r = report(&out);
    assert_eq!(r["verdict"], "fail");
    assert_eq!(r["completed"], false);
    assert_eq!(
        (n(&r["runs"]), n(&r["sigterms"]), n(&r["grace_exceeded"])),
        (1, 1, 1),
        "stops at the first failure"
    );
    let failure = r["failures"][0].as_str().unwrap();
    assert!(
        failure.contains("SIGKILL was needed") && failure.contains("grace period"),
        "{failure}"
    );
    let run = &r["per_run"][0];
    assert_eq!(run["exit_signal"], "SIGKILL");
    let still: Vec<&str> = run["still_running"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(still.iter().any(|p| p.starts_with("sleep")), "{still:?}");
    // SIGTERM at 0.2 s, SIGKILL at 1.2 s, not 100 s.
    assert!(started.elapsed() < Duration::from_secs(10));
    // The whole group was killed: no `sleep 100` left behind.
    for p in &still {
        let pid = p.rsplit("pid ").next().unwrap().trim_end_matches(')');
        assert!(gone(pid), "{p} is still running");
    }

    // The text report says so too.
    let out = simulate(
        &["--interrupt-after", "100ms", "--grace", "0.5"],
        &["sh", "-c", "trap '' TERM; sleep 100"],
    );
    assert_code(&out, 1);
    let text = stdout(&out);
    assert!(
        text.contains("FAIL")
            && text.contains("grace exceeded 1")
            && text.contains("SIGKILL was needed"),
        "{text}"
    );
}

/// Whether a process is gone (or a zombie waiting for its reaper), within 2 s.
fn gone(pid: &str) -> bool {
    let stat = Path::new("/proc").join(pid).join("stat");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        match std::fs::read_to_string(&stat) {
            Err(_) => return true,
            Ok(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                return true
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}

#[test]
fn a_shell_wrapper_without_exec_fails_with_sigkill_needed_and_with_exec_passes() {
    // Without exec: SIGTERM reaches the shell only; the quickstart never
    // hears of it and is SIGKILLed when the 2 s grace period runs out.
    let s = Store::new();
    let job = quickstart_args(s.dir.path(), &s, 500).join(" ");
    let script = format!("{} {job}; true", quickstart_bin().display());
    let out = simulate(
        &[
            "--interrupt-after",
            "300ms..600ms",
            "--grace",
            "2",
            "--store",
            &s.url(),
            "--job",
            "sim",
            "--json",
        ],
        &["sh", "-c", &script],
    );
    assert_code(&out, 1);
    let r = report(&out);
    assert_eq!(r["verdict"], "fail");
    assert_eq!(n(&r["grace_exceeded"]), 1, "{r:#}");
    let failure = r["failures"][0].as_str().unwrap();
    for needle in [
        "reached only sh",
        "quickstart",
        "SIGKILLed",
        "shell wrapper without `exec`",
    ] {
        assert!(failure.contains(needle), "missing {needle:?} in {failure}");
    }
    assert_eq!(
        n(&r["store"]["interruptions_recorded"]),
        0,
        "the job never saw SIGTERM"
    );
    assert!(n(&r["store"]["lost_ms"]) > 0);
    assert_eq!(
        s.load("sim").unwrap().status,
        Status::Running,
        "no final checkpoint"
    );

    // With exec the job is the main process: it gets SIGTERM and passes.
    // Its output is forwarded, prefixed with the run number.
    let s = Store::new();
    let job = quickstart_args(s.dir.path(), &s, 50).join(" ");
    let script = format!("exec {} {job}", quickstart_bin().display());
    let out = simulate(
        &[
            "--interrupt-after",
            "100ms..200ms",
            "--grace",
            "2",
            "--store",
            &s.url(),
            "--job",
            "sim",
            "--seed",
            "7",
            "--max-runs",
            "100",
        ],
        &["sh", "-c", &script],
    );
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains("PASS") && text.contains("grace exceeded 0"),
        "{text}"
    );
    let err = stderr(&out);
    assert!(
        err.contains("[run 1] ") && err.contains("checkpoint saved"),
        "{err}"
    );
    assert!(err.contains("[run 2] "), "{err}");
    assert_eq!(s.load("sim").unwrap().status, Status::Completed);
}

#[test]
fn signal_group_reaches_the_job_behind_a_wrapper() {
    let s = Store::new();
    let job = quickstart_args(s.dir.path(), &s, 50).join(" ");
    let script = format!("{} {job}; true", quickstart_bin().display());
    let out = simulate(
        &[
            "--signal-group",
            "--interrupt-after",
            "100ms..200ms",
            "--grace",
            "2",
            "--store",
            &s.url(),
            "--job",
            "sim",
            "--seed",
            "3",
            "--max-runs",
            "100",
            "--json",
            "--quiet",
        ],
        &["sh", "-c", &script],
    );
    assert_code(&out, 0);
    let r = report(&out);
    assert_eq!(r["verdict"], "pass", "{r:#}");
    assert_eq!(r["sigterm_to"], "process group");
    assert_eq!(n(&r["grace_exceeded"]), 0);
    let drained = n(&r["store"]["interruptions_recorded"]);
    assert!(drained >= 1 && drained <= n(&r["sigterms"]), "{r:#}");
    assert_eq!(
        std::fs::read(s.dir.path().join("out.txt")).unwrap(),
        reference_output()
    );
}

#[test]
fn completion_without_a_store_comes_from_exit_zero_and_a_failing_job_fails() {
    let out = simulate(&["--interrupt-after", "5s", "--json"], &["true"]);
    assert_code(&out, 0);
    let r = report(&out);
    assert_eq!(
        (r["verdict"].as_str(), n(&r["runs"]), n(&r["ran_to_end"])),
        (Some("pass"), 1, 1)
    );
    assert!(r["store"].is_null());

    let out = simulate(
        &["--interrupt-after", "5s"],
        &["sh", "-c", "echo boom >&2; exit 3"],
    );
    assert_code(&out, 1);
    assert!(
        stdout(&out).contains("exit 3 before any signal was sent: it failed"),
        "{}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("[run 1] boom"), "{}", stderr(&out));

    // A job that is already complete is not simulated.
    let s = Store::new();
    let mut c = common::json_checkpoint("done", 1, 1);
    c.status = Status::Completed;
    s.save(&c, None);
    let out = simulate(&["--store", &s.url(), "--job", "done"], &["true"]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("already completed") && stderr(&out).contains("spotbatch reset"),
        "{}",
        stderr(&out)
    );

    // A job command that does not exist; bad flags.
    let out = simulate(&["--interrupt-after", "1s"], &["/nonexistent/job"]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("/nonexistent/job"),
        "{}",
        stderr(&out)
    );
    for bad in [
        ["--interrupt-after", "10s..2s"],
        ["--kill-ratio", "2"],
        ["--grace", "soon"],
    ] {
        let out = simulate(&bad, &["true"]);
        assert_code(&out, 2);
    }
    let out = simulate(&["--store", &s.url()], &["true"]);
    assert_code(&out, 2);
}

/// The quickstart's command line for job `sim` in `s`: `records` records of
/// `work_us` each, in chunks of 100, interrupted exit code 75.
fn quickstart_command(s: &Store, records: u64, work_us: u64) -> Vec<String> {
    let mut command = vec![quickstart_bin().display().to_string()];
    let mut args = quickstart_args(s.dir.path(), s, work_us);
    args[1] = records.to_string();
    command.extend(args);
    command
}

/// A SIGTERM followed by the run failing on its own (here a job that exits
/// 1 on SIGTERM, having saved nothing) is a failure of the job, not a run
/// "stopped before its first save".
#[test]
fn a_run_that_fails_after_an_early_sigterm_is_a_failure_not_a_stop() {
    let s = Store::new();
    // A checkpoint of the quickstart's own, for the report to compare with.
    let mut first = std::process::Command::new(quickstart_bin());
    first
        .args(quickstart_args(s.dir.path(), &s, 100))
        .args(["--max-runtime", "0.3"])
        .env_remove("SPOTBATCH_STORE");
    let out = output_within(first, LIMIT);
    assert_code(&out, 75);
    let mut cmd = spotbatch();
    cmd.arg("simulate")
        .args([
            "--interrupt-after",
            "500ms",
            "--max-runs",
            "3",
            "--store",
            &s.url(),
            "--job",
            "sim",
            "--json",
        ])
        .args([
            "--",
            "sh",
            "-c",
            "trap 'echo refused after the stop >&2; exit 1' TERM; sleep 10 & wait",
        ]);
    let out = output_within(cmd, LIMIT);
    assert_code(&out, 1);
    let r = report(&out);
    let err = stderr(&out);
    let run = &r["per_run"][0];
    assert_eq!(
        (run["signal"].as_str(), run["exit_code"].as_u64()),
        (Some("SIGTERM"), Some(1)),
        "{err}"
    );
    assert_eq!(run["note"], "failed after SIGTERM", "{r:#}");
    assert_eq!(n(&r["runs"]), 1, "the simulation ends at a failure: {r:#}");
    assert_eq!(n(&r["store"]["stopped_before_first_save"]), 0, "{r:#}");
    let failure = r["failures"][0].as_str().unwrap();
    assert!(failure.contains("exit 1"), "{failure}");
}

/// A SIGTERM that comes during the final checkpoint of the run that
/// completes the job: the run completes, and the report says so instead of
/// counting an interruption the job never recorded. The test holds the
/// file store's lock of the job (as another save in progress would) from
/// just after the run took its lease until after the SIGTERM, so that the
/// run's final save waits for it.
#[test]
fn a_sigterm_during_the_final_checkpoint_completes_the_job_and_is_told() {
    let s = Store::new();
    let lock_path = s.path().join("sim.lock");
    let ckpt = s.file_of("sim");
    let started = Instant::now();
    let holder = std::thread::spawn(move || {
        while !ckpt.exists() {
            assert!(started.elapsed() < LIMIT, "the run never took its lease");
            std::thread::sleep(Duration::from_millis(1));
        }
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .open(&lock_path)
            .unwrap();
        lock.lock().unwrap();
        // The SIGTERM comes at 2 s: the run's one chunk (300 ms) is done.
        std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
        lock.unlock().unwrap();
    });
    let command = quickstart_command(&s, 100, 3_000);
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let out = simulate(
        &[
            "--interrupt-after",
            "2s",
            "--store",
            &s.url(),
            "--job",
            "sim",
            "--json",
            "--quiet",
        ],
        &command,
    );
    holder.join().unwrap();
    assert_code(&out, 0);
    let r = report(&out);
    let run = &r["per_run"][0];
    assert_eq!(
        (
            n(&r["runs"]),
            run["signal"].as_str(),
            run["exit_code"].as_u64()
        ),
        (1, Some("SIGTERM"), Some(0)),
        "{r:#}"
    );
    assert_eq!(
        run["note"],
        "completed: the SIGTERM came during its final checkpoint, with nothing left to interrupt",
        "{r:#}"
    );
    let st = &r["store"];
    assert_eq!(
        (
            n(&st["interruptions_recorded"]),
            n(&st["completed_after_sigterm"]),
            n(&st["stopped_before_first_save"])
        ),
        (0, 1, 0),
        "{st}"
    );
    assert_eq!(s.load("sim").unwrap().status, Status::Completed);
}

/// A run stopped by SIGTERM before it saved anything (here during the
/// job's set-up) lost no work, even though the job's status is still the
/// `running` a hard-killed run left: the work lost is the killed run's.
#[test]
fn a_run_stopped_before_its_first_save_loses_no_work_after_a_hard_kill() {
    let s = Store::new();
    // A run killed mid-job: the checkpoint says `running`.
    let mut first = std::process::Command::new(quickstart_bin());
    first
        .args(quickstart_args(s.dir.path(), &s, 100))
        .env_remove("SPOTBATCH_STORE")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = first.spawn().unwrap();
    let started = Instant::now();
    while s.load("sim").is_none_or(|c| c.counters.chunks < 10) {
        assert!(started.elapsed() < LIMIT, "no checkpoint");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(s.load("sim").unwrap().status, Status::Running);

    let command = quickstart_command(&s, 20_000, 100);
    let mut command: Vec<&str> = command.iter().map(String::as_str).collect();
    command.extend(["--setup-secs", "5"]);
    let out = simulate(
        &[
            "--interrupt-after",
            "1s",
            "--max-runs",
            "1",
            "--store",
            &s.url(),
            "--job",
            "sim",
            "--json",
            "--quiet",
        ],
        &command,
    );
    let r = report(&out);
    let run = &r["per_run"][0];
    assert_eq!(
        (run["signal"].as_str(), run["exit_code"].as_u64()),
        (Some("SIGTERM"), Some(75)),
        "{r:#}"
    );
    assert!(run["lost_ms"].is_null(), "{r:#}");
    assert_eq!(n(&r["store"]["lost_ms"]), 0, "{r:#}");
}
