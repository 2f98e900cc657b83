//! `spotbatch simulate --workers N`: N copies of a job at once, as a fleet of
//! tasks on one partitioned job (dynamic assignment), each interrupted at
//! random and started again, as a platform restarts a task, until the job
//! is completed.
//!
//! Each worker loops: start the command, after a random delay SIGTERM it
//! (SIGKILL after the grace period) or, with probability `--kill-ratio`,
//! SIGKILL it; start it again. A worker that exits by itself with 0 is done
//! (nothing is left for it) and is not started again; a worker that exits by
//! itself with anything else is a failure. Once the job is completed (the
//! store says so, with `--store` and `--job`), no worker is interrupted any
//! more, and the rest must exit 0 by themselves. The verdict fails when a
//! SIGTERMed run needed SIGKILL, a worker failed by itself, the job did not
//! complete within `--max-runs` runs in all, or (with the store) a
//! partition is left unfinished or with a stale claim.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use spotbatch::partition::{progress, JobProgress, PartitionState};
use tokio::time::Instant;

use super::process::{self, Exit, Plan, Sent, SignalTarget};
use super::SimulateArgs;
use crate::error::CliError;
use crate::fmt;
use crate::stores;
use crate::stores::Open;
use crate::target::Target;

/// The report of a fleet simulation (`--json` prints it as it is).
#[derive(Debug, Default, Serialize)]
struct FleetReport {
    verdict: &'static str,
    completed: bool,
    failures: Vec<String>,
    command: Vec<String>,
    seed: u64,
    workers: u32,
    runs: u32,
    sigterms: u32,
    hard_kills: u32,
    /// Runs that ended by themselves, with the exit code 0 (the worker was done).
    done: u32,
    grace_exceeded: u32,
    slowest_stop_ms: Option<u64>,
    /// How the runs' main processes ended: `"75": 19`, `"SIGKILL": 7`, …
    exit_codes: BTreeMap<String, u32>,
    total_ms: u64,
    /// What the store says at the end (with `--store` and `--job`).
    partitions: Option<Partitions>,
}

#[derive(Debug, Serialize)]
struct Partitions {
    url: String,
    job: String,
    count: u32,
    completed: usize,
    stale_claims: usize,
    job_completed: bool,
    summary: String,
}

/// What the workers share.
struct Shared {
    report: Mutex<FleetReport>,
    /// The job is completed: interrupt no more.
    completed: AtomicBool,
    /// Runs started so far, against `--max-runs`.
    runs: AtomicU32,
    rng: Mutex<fastrand::Rng>,
}

/// Runs the fleet simulation and prints its report; `Ok(true)` when it passed.
pub(super) async fn simulate(
    args: &SimulateArgs,
    workers: u32,
    groups: Arc<[AtomicI32]>,
) -> Result<bool, CliError> {
    let probe = match (&args.store, &args.job) {
        (Some(url), Some(job)) => {
            Some((url.clone(), Target::open(url, job, Open::OrCreate).await?))
        }
        _ => None,
    };
    if let Some((url, t)) = &probe {
        if let Some(p) = progress(Arc::clone(&t.store), &t.key).await? {
            if p.is_completed() {
                return Err(CliError::Failed(format!(
                    "{}: job {:?} is already completed: its tasks would exit at once. Start it \
                     over under a new job key, or reset its checkpoints (spotbatch reset {} …)",
                    t.location(),
                    t.key.as_str(),
                    stores::redacted(url)
                )));
            }
        }
    }
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let shared = Arc::new(Shared {
        report: Mutex::new(FleetReport {
            command: args
                .command
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            seed,
            workers,
            ..FleetReport::default()
        }),
        completed: AtomicBool::new(false),
        runs: AtomicU32::new(0),
        rng: Mutex::new(fastrand::Rng::with_seed(seed)),
    });
    let target = if args.signal_group {
        SignalTarget::Group
    } else {
        SignalTarget::MainProcess
    };
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (shared, groups) = (Arc::clone(&shared), Arc::clone(&groups));
        let argv = args.command.clone();
        let (range, grace, kill_ratio, max_runs, quiet) = (
            args.interrupt_after,
            args.grace,
            args.kill_ratio,
            args.max_runs,
            args.quiet,
        );
        tasks.spawn(async move {
            for n in 1.. {
                if shared.runs.fetch_add(1, Ordering::SeqCst) >= max_runs {
                    return Ok::<(), CliError>(());
                }
                let plan = {
                    let mut rng = shared.rng.lock().unwrap_or_else(|e| e.into_inner());
                    Plan {
                        delay: if shared.completed.load(Ordering::SeqCst) {
                            Duration::from_secs(3600)
                        } else {
                            range.pick(&mut rng)
                        },
                        hard_kill: rng.f64() < kill_ratio,
                    }
                };
                let label = format!("w{w} run {n}");
                let slot = &groups[w as usize];
                let r = process::run_once(&argv, &label, plan, grace, target, quiet, slot).await?;
                let mut report = shared.report.lock().unwrap_or_else(|e| e.into_inner());
                report.runs += 1;
                let key = match r.exit {
                    Exit::Code(c) => c.to_string(),
                    Exit::Signal(s) => process::signal_name(s),
                };
                *report.exit_codes.entry(key).or_default() += 1;
                if let Some(stopped) = r.stopped_in {
                    let ms = u64::try_from(stopped.as_millis()).unwrap_or(u64::MAX);
                    report.slowest_stop_ms = Some(report.slowest_stop_ms.map_or(ms, |s| s.max(ms)));
                }
                match (r.sent, r.exit) {
                    (Some((Sent::Term, at)), _) => {
                        report.sigterms += 1;
                        if r.grace_exceeded {
                            report.grace_exceeded += 1;
                            report.failures.push(format!(
                                "{label}: SIGTERM at {}: still running when the {} grace period ran out; SIGKILL was needed",
                                fmt::duration(at),
                                fmt::duration(grace)
                            ));
                        }
                    }
                    // A SIGKILL as the run was exiting by itself did not kill it.
                    (Some((Sent::Kill, _)), Exit::Signal(_)) => report.hard_kills += 1,
                    (_, Exit::Code(0)) => {
                        report.done += 1;
                        return Ok(());
                    }
                    (_, exit) => {
                        report.failures.push(format!(
                            "{label}: the worker ended by itself with {} before any signal: it failed",
                            exit.label()
                        ));
                        return Ok(());
                    }
                }
            }
            Ok(())
        });
    }

    // Watch the store until every worker is done.
    let mut last = None;
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(Ok(Ok(()))) => continue,
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(CliError::Failed(format!("a worker panicked: {e}"))),
                None => break,
            },
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        if let Some((_, t)) = &probe {
            if let Ok(Some(p)) = progress(Arc::clone(&t.store), &t.key).await {
                if p.is_completed() {
                    shared.completed.store(true, Ordering::SeqCst);
                }
                last = Some(p);
            }
        }
    }
    if let Some((_, t)) = &probe {
        last = progress(Arc::clone(&t.store), &t.key).await?;
    }

    let mut report = std::mem::take(&mut *shared.report.lock().unwrap_or_else(|e| e.into_inner()));
    report.total_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    judge(
        &mut report,
        probe.as_ref().map(|(url, t)| (url, t)),
        last.as_ref(),
        args.max_runs,
    );
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| CliError::Failed(format!("could not write the report: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", render(&report));
    }
    Ok(report.verdict == "pass")
}

fn judge(
    report: &mut FleetReport,
    probe: Option<(&String, &Target)>,
    last: Option<&JobProgress>,
    max_runs: u32,
) {
    report.completed = match (probe, last) {
        (Some((url, t)), Some(p)) => {
            let stale = p.stale();
            let done = p.count(PartitionState::Completed);
            if stale > 0 {
                report.failures.push(format!(
                    "{stale} partition(s) left with a stale claim: a killed worker's lease was never taken over"
                ));
            }
            if p.is_completed() && done < p.rows.len() {
                report.failures.push(format!(
                    "the job is marked completed with only {done} of {} partitions completed",
                    p.rows.len()
                ));
            }
            report.partitions = Some(Partitions {
                url: stores::redacted(url),
                job: t.key.to_string(),
                count: p.partitions,
                completed: done,
                stale_claims: stale,
                job_completed: p.is_completed(),
                summary: p.summary(),
            });
            p.is_completed()
        }
        (Some((_, t)), None) => {
            report.failures.push(format!(
                "{}: job {:?} has no partitioned job-level checkpoint: are --store and --job the job's own?",
                t.location(),
                t.key.as_str()
            ));
            false
        }
        (None, _) => report.done == report.workers,
    };
    if !report.completed && report.failures.is_empty() {
        report.failures.push(format!(
            "the job did not complete within {max_runs} runs in all (--max-runs)"
        ));
    }
    report.verdict = if report.completed && report.failures.is_empty() {
        "pass"
    } else {
        "fail"
    };
}

fn render(r: &FleetReport) -> String {
    let mut s = String::new();
    let ms = |v: u64| fmt::duration(Duration::from_millis(v));
    let verdict = if r.verdict == "pass" { "PASS" } else { "FAIL" };
    let how = if r.completed {
        "the job completed"
    } else {
        "the job did not complete"
    };
    let _ = writeln!(
        s,
        "spotbatch simulate: {verdict}: {how} with {} workers, {} runs in {}",
        r.workers,
        r.runs,
        ms(r.total_ms)
    );
    let mut line = |label: &str, value: String| {
        let _ = writeln!(s, "  {label:<15}{value}");
    };
    line("command", r.command.join(" "));
    line(
        "runs",
        format!(
            "{} = {} SIGTERM + {} hard kills + {} done by themselves; seed {}",
            r.runs, r.sigterms, r.hard_kills, r.done, r.seed
        ),
    );
    line(
        "grace exceeded",
        format!(
            "{} (runs that needed SIGKILL after SIGTERM)",
            r.grace_exceeded
        ),
    );
    if let Some(slowest) = r.slowest_stop_ms {
        line(
            "slowest stop",
            format!("{} from SIGTERM to exit", ms(slowest)),
        );
    }
    line(
        "exit codes",
        r.exit_codes
            .iter()
            .map(|(k, n)| format!("{k} ×{n}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    if let Some(p) = &r.partitions {
        line("store", format!("{} job {:?}: {}", p.url, p.job, p.summary));
    }
    if !r.failures.is_empty() {
        let _ = writeln!(s, "\nfailures:");
        for f in &r.failures {
            let _ = writeln!(s, "  - {f}");
        }
    }
    s
}
