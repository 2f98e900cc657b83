//! `spotbatch simulate`: run a job the way a Spot platform does, until it completes.
//!
//! Each run starts the job, and after a random delay either sends SIGTERM and
//! allows the grace period before SIGKILL (a Spot interruption, a deploy, a
//! scale-in) or, with probability `--kill-ratio`, SIGKILLs it with no warning
//! (OOM, host loss). Then it starts the job again, until the job completes.
//! See [`process`] for who gets which signal.
//!
//! Completion comes from the store when `--store` and `--job` are given (the
//! checkpoint says completed), else from the job exiting 0 before any signal.
//! The verdict fails when SIGKILL was needed after SIGTERM (grace exceeded),
//! when a SIGTERMed run that had started writing checkpoints wrote no final
//! one, when the job fails by itself, or when it does not complete within
//! `--max-runs`.

mod fleet;
mod process;
mod range;
mod report;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use spotbatch::{Checkpoint, ExitCodes, Status};
use tokio::time::Instant;

use crate::error::CliError;
use crate::stores::Open;
use crate::target::Target;
use crate::{fmt, stores};
use process::{Exit, Plan, RunResult, Sent, SignalTarget};
use range::DelayRange;
use report::{Report, RunReport, StoreReport};

/// Flags of `spotbatch simulate`.
#[derive(Debug, clap::Args)]
pub(crate) struct SimulateArgs {
    /// Random delay from a run's start to its interruption: `MIN..MAX` (e.g.
    /// `2s..10s`, `500ms..3s`) or one fixed duration.
    #[arg(long, value_name = "MIN..MAX", default_value = "5s..60s", value_parser = range::parse_range)]
    interrupt_after: DelayRange,
    /// Time from SIGTERM to SIGKILL (ECS `stopTimeout`: 30 s by default, at most 120 s on Fargate).
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = range::parse_duration)]
    grace: Duration,
    /// Share of interruptions that are hard kills: SIGKILL with no warning (0 to 1).
    #[arg(long, value_name = "R", default_value = "0", value_parser = range::parse_ratio)]
    kill_ratio: f64,
    /// Give up (and fail) after this many runs.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    max_runs: u32,
    /// Seed of the random schedule (printed in the report), to replay it.
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// The job's store URL: completion, progress and lost work are read from it.
    #[arg(long, value_name = "URL", requires = "job")]
    store: Option<String>,
    /// The job's key in --store.
    #[arg(long, value_name = "KEY", requires = "store")]
    job: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Send SIGTERM to the job's whole process group instead of its main process only.
    #[arg(long, conflicts_with = "signal_pid_only")]
    signal_group: bool,
    /// Send SIGTERM to the main process only, as ECS and `docker stop` do (the default).
    #[arg(long)]
    signal_pid_only: bool,
    /// Keep going after a failure (SIGKILL needed, no final checkpoint) to see whether the job still converges.
    #[arg(long)]
    keep_going: bool,
    /// Do not forward the job's output.
    #[arg(long, short)]
    quiet: bool,
    /// Run N copies of the job at once, as N tasks of a partitioned job
    /// (dynamic assignment): each interrupted and started again on its own,
    /// until the job is completed (with --store and --job: the job-level
    /// checkpoint says so; else every worker exited 0 by itself).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    workers: u32,
    /// The job's command line, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// What the store says at one moment.
#[derive(Debug, Clone, Default)]
struct Snap {
    version: Option<u64>,
    status: Option<Status>,
    chunks: u64,
    interruptions: u64,
    runs: u64,
    updated_ms: u64,
}

impl Snap {
    fn of(c: Option<&Checkpoint>) -> Self {
        c.map_or_else(Self::default, |c| Self {
            version: Some(c.version),
            status: Some(c.status.clone()),
            chunks: c.counters.chunks,
            interruptions: c.counters.interruptions,
            runs: c.counters.runs,
            updated_ms: c.updated_ms,
        })
    }

    fn status_text(&self) -> String {
        self.status
            .as_ref()
            .map_or_else(|| "no checkpoint".to_owned(), ToString::to_string)
    }
}

/// Runs the simulation and prints its report; `Ok(true)` when the job passed.
pub(crate) async fn simulate(args: SimulateArgs) -> Result<bool, CliError> {
    let groups: Arc<[AtomicI32]> = (0..args.workers).map(|_| AtomicI32::new(0)).collect();
    guard_against_our_own_interruption(Arc::clone(&groups))?;
    if args.workers > 1 {
        return fleet::simulate(&args, args.workers, groups).await;
    }
    let probe = match (&args.store, &args.job) {
        (Some(url), Some(job)) => {
            Some((url.clone(), Target::open(url, job, Open::OrCreate).await?))
        }
        _ => None,
    };
    let mut before = match &probe {
        Some((url, target)) => {
            let c = target.load().await?;
            if let Some(c) = c.as_ref().filter(|c| c.status == Status::Completed) {
                return Err(CliError::Failed(format!(
                    "{}: job {:?} is already completed (version {}): its runs would exit at once. \
                     Start it over first: spotbatch reset {} {}",
                    target.location(),
                    c.job.as_str(),
                    c.version,
                    stores::redacted(url),
                    c.job.as_str()
                )));
            }
            Some(Snap::of(c.as_ref()))
        }
        None => None,
    };
    let at_start = before.clone();
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let target = if args.signal_group {
        SignalTarget::Group
    } else {
        SignalTarget::MainProcess
    };
    let main_name = Path::new(&args.command[0])
        .file_name()
        .map_or_else(|| "the job".into(), |n| n.to_string_lossy().into_owned());
    let current = &groups[0];

    let started = Instant::now();
    let mut report = Report {
        verdict: "fail",
        completed: false,
        failures: Vec::new(),
        warnings: Vec::new(),
        pending_warnings: Vec::new(),
        command: args
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        seed,
        interrupt_after_ms: [
            millis(args.interrupt_after.min),
            millis(args.interrupt_after.max),
        ],
        grace_ms: millis(args.grace),
        kill_ratio: args.kill_ratio,
        keep_going: args.keep_going,
        sigterm_to: match target {
            SignalTarget::MainProcess => "main process",
            SignalTarget::Group => "process group",
        },
        runs: 0,
        sigterms: 0,
        hard_kills: 0,
        ran_to_end: 0,
        grace_exceeded: 0,
        sigterm_unhandled: 0,
        slowest_stop_ms: None,
        exit_codes: BTreeMap::new(),
        total_ms: 0,
        store: None,
        per_run: Vec::new(),
    };
    let mut lost_ms = 0u64;
    let mut no_final = 0u32;
    let mut before_first_save = 0u32;
    let mut completed_anyway = 0u32;
    let mut first_rate: Option<f64> = None;

    for n in 1..=args.max_runs {
        let plan = Plan {
            delay: args.interrupt_after.pick(&mut rng),
            hard_kill: rng.f64() < args.kill_ratio,
        };
        let run_started = started.elapsed();
        let mut r = process::run_once(
            &args.command,
            &format!("run {n}"),
            plan,
            args.grace,
            target,
            args.quiet,
            current,
        )
        .await?;
        // A SIGKILL sent as the process was exiting by itself (a zombie
        // still accepts kill(2)) did not kill it: the run ended first.
        if matches!(r.sent, Some((Sent::Kill, _))) && matches!(r.exit, Exit::Code(_)) {
            r.sent = None;
        }
        let mut run = tally(&mut report, &r, n, run_started);

        // What the store says now.
        let after = match &probe {
            Some((_, t)) => match t.load().await {
                Ok(c) => Some(Snap::of(c.as_ref())),
                Err(e) => {
                    let why = format!("the checkpoint cannot be read after this run: {e}");
                    report.failures.push(format!("run {n}: {why}"));
                    run.note = Some(why);
                    report.per_run.push(run);
                    break;
                }
            },
            None => None,
        };
        let verdict = judge(
            &args,
            &main_name,
            &r,
            &mut run,
            before.as_ref(),
            after.as_ref(),
            &mut report,
        );
        if let (Some(b), Some(a)) = (&before, &after) {
            let progress = a.chunks.saturating_sub(b.chunks);
            if first_rate.is_none() && progress > 0 && !r.duration.is_zero() {
                first_rate = Some(progress as f64 / r.duration.as_secs_f64());
            }
            let lost = lost_work(&r, b, a);
            if let Some(l) = lost {
                lost_ms += l;
            }
            run.lost_ms = lost;
            if let (Some(l), Some("hard kill")) = (lost, run.note.as_deref()) {
                run.note = Some(format!(
                    "hard kill; {} of work lost",
                    fmt::duration(Duration::from_millis(l))
                ));
            }
            if verdict == Judged::NoFinalCheckpoint {
                no_final += 1;
            }
            if stopped_before_first_save(&r, &run) {
                before_first_save += 1;
                run.note = Some(
                    "stopped by SIGTERM before its first save (set-up before the run, opening the store, \
                     loading, taking the lease): nothing to record"
                        .into(),
                );
            }
            if completed_after_sigterm(&r, &run, a) {
                completed_anyway += 1;
                run.note = Some(
                    "completed: the SIGTERM came during its final checkpoint, with nothing left to interrupt"
                        .into(),
                );
            }
        }
        eprintln!("spotbatch simulate: {}", progress_line(&run));
        report.per_run.push(run);
        if let Some(a) = after {
            before = Some(a);
        }
        match verdict {
            Judged::Completed => {
                report.completed = true;
                break;
            }
            Judged::Stop => break,
            Judged::Failed | Judged::NoFinalCheckpoint if !args.keep_going => break,
            _ => {}
        }
    }

    if !report.completed && report.failures.is_empty() {
        report.failures.push(format!(
            "the job did not complete within {} runs (--max-runs)",
            args.max_runs
        ));
    }
    report.finish_warnings();
    report.total_ms = millis(started.elapsed());
    if let (Some((url, t)), Some(start), Some(end)) = (&probe, &at_start, &before) {
        let done = end.chunks.saturating_sub(start.chunks);
        report.store = Some(StoreReport {
            url: stores::redacted(url),
            job: t.key.to_string(),
            chunks_at_start: start.chunks,
            chunks_final: end.chunks,
            interruptions_recorded: end.interruptions.saturating_sub(start.interruptions),
            runs_recorded: end.runs.saturating_sub(start.runs),
            no_final_checkpoint: no_final,
            stopped_before_first_save: before_first_save,
            completed_after_sigterm: completed_anyway,
            lost_ms,
            first_run_rate: first_rate,
            redone_chunks_estimate: first_rate
                .map(|r| (r * lost_ms as f64 / 1000.0).round() as u64),
            uninterrupted_estimate_ms: first_rate
                .filter(|r| *r > 0.0)
                .map(|r| (done as f64 / r * 1000.0).round() as u64),
        });
    }
    let passed = report.completed && report.failures.is_empty();
    report.verdict = if passed { "pass" } else { "fail" };

    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| CliError::Failed(format!("could not write the report: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", report.render());
    }
    Ok(passed)
}

/// How a run leaves the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judged {
    /// Start another run.
    Continue,
    /// The job is complete.
    Completed,
    /// SIGKILL was needed: a failure (the simulation stops unless --keep-going).
    Failed,
    /// SIGTERM did not lead to a final checkpoint: a failure (likewise).
    NoFinalCheckpoint,
    /// The job failed by itself, or the store disagrees with it: stop.
    Stop,
}

/// Counts what happened and fills the run's report from the process alone.
fn tally(report: &mut Report, r: &RunResult, n: u32, run_started: Duration) -> RunReport {
    report.runs += 1;
    match r.sent {
        Some((Sent::Term, _)) => report.sigterms += 1,
        Some((Sent::Kill, _)) => report.hard_kills += 1,
        None => report.ran_to_end += 1,
    }
    if r.grace_exceeded {
        report.grace_exceeded += 1;
    }
    let unhandled = matches!(r.sent, Some((Sent::Term, _)))
        && r.exit == Exit::Signal(nix::sys::signal::Signal::SIGTERM as i32);
    if unhandled {
        report.sigterm_unhandled += 1;
    }
    if let Some(stopped) = r.stopped_in {
        let ms = millis(stopped);
        report.slowest_stop_ms = Some(report.slowest_stop_ms.map_or(ms, |s| s.max(ms)));
    }
    let key = match r.exit {
        Exit::Code(c) => c.to_string(),
        Exit::Signal(s) => process::signal_name(s),
    };
    *report.exit_codes.entry(key).or_default() += 1;
    RunReport {
        run: n,
        pid: r.pid,
        started_ms: millis(run_started),
        duration_ms: millis(r.duration),
        signal: r.sent.map(|(s, _)| match s {
            Sent::Term => "SIGTERM",
            Sent::Kill => "SIGKILL",
        }),
        signal_after_ms: r.sent.map(|(_, at)| millis(at)),
        exit_code: match r.exit {
            Exit::Code(c) => Some(c),
            Exit::Signal(_) => None,
        },
        exit_signal: match r.exit {
            Exit::Signal(s) => Some(process::signal_name(s)),
            Exit::Code(_) => None,
        },
        stopped_in_ms: r.stopped_in.map(millis),
        grace_exceeded: r.grace_exceeded,
        sigterm_unhandled: unhandled,
        still_running: r.still_running.iter().map(process::describe).collect(),
        left_behind: r.left_behind.iter().map(process::describe).collect(),
        ..RunReport::default()
    }
}

/// Whether a run stopped cleanly on SIGTERM before it had saved anything: its
/// runner gave up while opening the store, loading or taking the lease, so
/// the job recorded neither the run nor an interruption. A run that ended
/// with one of the runner's failure codes did not stop: it failed (see
/// [`failure`]).
fn stopped_before_first_save(r: &RunResult, run: &RunReport) -> bool {
    matches!(r.sent, Some((Sent::Term, _)))
        && matches!(r.exit, Exit::Code(code) if failure(code).is_none())
        && !r.grace_exceeded
        && run.saved == Some(false)
}

/// Whether a SIGTERMed run completed the job all the same: the signal came
/// during its final checkpoint (the chunk loop checks for a stop before each
/// chunk), so it recorded no interruption.
fn completed_after_sigterm(r: &RunResult, run: &RunReport, after: &Snap) -> bool {
    matches!(r.sent, Some((Sent::Term, _)))
        && matches!(r.exit, Exit::Code(_))
        && !r.grace_exceeded
        && run.saved == Some(true)
        && after.status == Some(Status::Completed)
}

/// [`failure`] of an exit code; `None` for a death by signal.
fn failure_of(exit: Exit) -> Option<&'static str> {
    match exit {
        Exit::Code(code) => failure(code),
        Exit::Signal(_) => None,
    }
}

/// What a runner's exit code means when it is one of the failure codes
/// (their defaults, [`ExitCodes::default`]); `None` for any other code: the
/// interrupted code (0 or 75), or one the job chose.
fn failure(code: i32) -> Option<&'static str> {
    let codes = ExitCodes::default();
    let is = |c: u8| code == i32::from(c);
    if is(codes.conflict) {
        Some("another runner holds the job's lease, or advanced the job")
    } else if is(codes.bad_checkpoint) {
        Some("the stored checkpoint cannot be used")
    } else if is(codes.bad_config) {
        Some("bad configuration")
    } else if is(codes.checkpoint_not_saved) {
        Some("its final checkpoint was not saved")
    } else if is(codes.failed) {
        Some("the job or its store failed")
    } else {
        None
    }
}

/// Decides what a run means, noting failures and warnings in the report.
fn judge(
    args: &SimulateArgs,
    main_name: &str,
    r: &RunResult,
    run: &mut RunReport,
    before: Option<&Snap>,
    after: Option<&Snap>,
    report: &mut Report,
) -> Judged {
    let n = run.run;
    let grace = fmt::duration(args.grace);
    if let (Some(b), Some(a)) = (before, after) {
        run.chunks_before = Some(b.chunks);
        run.chunks_after = Some(a.chunks);
        run.version_after = a.version;
        run.status_after = Some(a.status_text());
        run.saved = Some(a.version != b.version);
    }
    let saved = run.saved.unwrap_or(false);
    let completed_in_store = after.is_some_and(|a| a.status == Some(Status::Completed));
    let still = |list: &[(i32, String)]| {
        list.iter()
            .map(process::describe)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut fail = |run: &mut RunReport, short: &str, why: String| {
        report.failures.push(format!("run {n}: {why}"));
        run.note = Some(short.to_owned());
    };

    let mut judged = Judged::Continue;
    match r.sent {
        Some((Sent::Term, at)) => {
            let at = fmt::duration(at);
            if r.grace_exceeded {
                let why = if run.sigterm_unhandled {
                    format!(
                        "SIGTERM at {at} reached only {main_name} (pid {}), which died of it without handling it; \
                         {} never got it and had to be SIGKILLed when the {grace} grace period ran out. \
                         A shell wrapper without `exec`? In a container that shell is PID 1 and ignores SIGTERM: \
                         `exec` the job from the script, or use an exec-form ENTRYPOINT [\"/app/job\"]",
                        r.pid,
                        still(&r.still_running)
                    )
                } else if r.main_exited_in.is_some() {
                    format!(
                        "SIGTERM at {at}: the main process ended ({}) but {} still ran when the {grace} grace \
                         period ran out and had to be SIGKILLed",
                        r.exit.label(),
                        still(&r.still_running)
                    )
                } else {
                    format!(
                        "SIGTERM at {at}: still running when the {grace} grace period ran out, so SIGKILL was \
                         needed ({}). The job ignores SIGTERM, or its drain and final checkpoint take longer than \
                         the grace period: handle SIGTERM, and give the runner a grace below the platform's \
                         (Runner::grace_secs(stop_timeout - 5))",
                        still(&r.still_running)
                    )
                };
                fail(run, "SIGKILL needed: grace exceeded", why);
                judged = Judged::Failed;
            } else if let (Exit::Code(code), Some(meaning), false) =
                (r.exit, failure_of(r.exit), saved)
            {
                let store = match after {
                    Some(_) => "having saved nothing",
                    None => "(give --store and --job to see what it saved)",
                };
                fail(
                    run,
                    "failed after SIGTERM",
                    format!(
                        "SIGTERM at {at} came while the job was starting, but it ended with exit {code}, a \
                         failure, not the interrupted code, {store}: {meaning}. The signal did not stop it; \
                         run the job alone to see why it fails"
                    ),
                );
                judged = Judged::Stop;
            } else if after.is_some_and(|a| a.status == Some(Status::Running)) && saved {
                fail(
                    run,
                    "no final checkpoint",
                    format!(
                        "SIGTERM at {at}: the job ended ({}) without a final checkpoint (the stored status is \
                         still running): the work since its last checkpoint is lost{}",
                        r.exit.label(),
                        if run.sigterm_unhandled {
                            "; it died of SIGTERM itself: no handler"
                        } else {
                            ""
                        }
                    ),
                );
                judged = Judged::NoFinalCheckpoint;
            } else if run.sigterm_unhandled {
                let why = match after {
                    Some(_) if saved => format!(
                        "the main process ({main_name}) died of SIGTERM itself (it has no handler), while the \
                         job behind it stopped cleanly with a final checkpoint. Under ECS or docker stop only the \
                         main process gets SIGTERM: `exec` the job from the wrapper"
                    ),
                    Some(_) => "the main process died of SIGTERM before the job had saved anything (no handler \
                         installed yet): harmless here, though in a container PID 1 ignores a signal it has no \
                         handler for and is SIGKILLed after the grace period. Call \
                         `spotbatch::shutdown::listen()` on the first line of `main`"
                        .to_owned(),
                    None => "the main process died of SIGTERM itself: no handler, or none installed yet \
                         (give --store and --job to tell which); a job killed by SIGTERM writes no final \
                         checkpoint, and in a container PID 1 ignores a signal it has no handler for and is \
                         SIGKILLed after the grace period"
                        .to_owned(),
                };
                report.warn(n, why);
                run.note = Some("died of SIGTERM (no handler)".into());
            }
            if let Some(Status::Failed { message }) = after.and_then(|a| a.status.as_ref()) {
                if saved {
                    report.warn(n, format!("the job failed after SIGTERM: {message}"));
                }
            }
        }
        Some((Sent::Kill, _)) => {
            run.note = Some("hard kill".into());
        }
        None => match r.exit {
            Exit::Code(0) if after.is_none() || completed_in_store => judged = Judged::Completed,
            Exit::Code(0) => {
                fail(
                    run,
                    "exit 0, but not completed",
                    format!(
                        "the job exited 0 by itself, but the store holds {} for job {:?}, not completed: \
                         are --store and --job the job's own?",
                        after.map_or_else(String::new, Snap::status_text),
                        args.job.as_deref().unwrap_or_default()
                    ),
                );
                judged = Judged::Stop;
            }
            exit if matches!(
                after.and_then(|a| a.status.as_ref()),
                Some(Status::Interrupted { .. })
            ) && saved =>
            {
                run.note = Some(format!("stopped by itself ({})", exit.label()));
            }
            exit => {
                let status = after.map_or_else(String::new, |a| {
                    format!("; the stored status is {}", a.status_text())
                });
                fail(
                    run,
                    "failed by itself",
                    format!(
                        "the job ended by itself with {} before any signal was sent: it failed{status}",
                        exit.label()
                    ),
                );
                judged = Judged::Stop;
            }
        },
    }
    if !r.left_behind.is_empty() && !r.grace_exceeded {
        let names: Vec<&str> = r
            .left_behind
            .iter()
            .map(|(_, name)| name.as_str())
            .collect();
        report.warn(
            n,
            format!(
                "processes of the job ({}) still ran after its main process ended, and were SIGKILLed \
                 as when a container stops",
                names.join(", ")
            ),
        );
    }
    // Done, whatever else happened in this run.
    if completed_in_store && judged == Judged::Continue {
        judged = Judged::Completed;
    }
    if completed_in_store && matches!(judged, Judged::Failed | Judged::NoFinalCheckpoint) {
        report.completed = true;
    }
    judged
}

/// Work thrown away by a run that ended by a signal without a final
/// checkpoint: from its last checkpoint (or its start) to its end.
///
/// A run that exited by itself having saved nothing (stopped before it took
/// the job's lease) ran no chunk and lost nothing, though the status it
/// leaves is the `running` of an earlier hard-killed run.
fn lost_work(r: &RunResult, before: &Snap, after: &Snap) -> Option<u64> {
    if r.sent.is_none() || after.status != Some(Status::Running) {
        return None;
    }
    if matches!(r.exit, Exit::Code(_)) && after.version == before.version {
        return None;
    }
    let end = r
        .killed_wall_ms
        .unwrap_or(r.started_wall_ms + millis(r.duration));
    let since = if after.version != before.version {
        after.updated_ms.max(r.started_wall_ms)
    } else {
        r.started_wall_ms
    };
    Some(end.saturating_sub(since))
}

fn progress_line(run: &RunReport) -> String {
    let what = match (run.signal, run.signal_after_ms) {
        (Some(sig), Some(at)) => format!("{sig} at {}", fmt::duration(Duration::from_millis(at))),
        _ => "no signal".into(),
    };
    let ended = match (run.exit_code, &run.exit_signal) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => s.clone(),
        _ => "?".into(),
    };
    let stopped = match (run.grace_exceeded, run.stopped_in_ms) {
        (true, _) => " — grace exceeded, SIGKILLed".to_owned(),
        (false, Some(ms)) => format!(
            " {} after SIGTERM",
            fmt::duration(Duration::from_millis(ms))
        ),
        _ => String::new(),
    };
    let chunks = match (run.chunks_before, run.chunks_after) {
        (Some(a), Some(b)) => format!("; chunks {a} → {b}"),
        _ => String::new(),
    };
    format!("run {}: {what} → {ended}{stopped}{chunks}", run.run)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// If the simulator itself is stopped (Ctrl-C, SIGTERM), the jobs' process
/// groups (one per worker), which are not in our terminal's foreground
/// group, die with it.
fn guard_against_our_own_interruption(groups: Arc<[AtomicI32]>) -> Result<(), CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |kind| {
        signal(kind)
            .map_err(|e| CliError::Failed(format!("could not install signal handlers: {e}")))
    };
    let (mut int, mut term) = (
        listen(SignalKind::interrupt())?,
        listen(SignalKind::terminate())?,
    );
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let mut killed = Vec::new();
        for group in groups.iter() {
            let pgid = group.load(Ordering::SeqCst);
            if pgid > 0 {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pgid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                killed.push(pgid.to_string());
            }
        }
        eprintln!(
            "spotbatch simulate: interrupted; killed the job's process groups {}",
            killed.join(", ")
        );
        std::process::exit(130);
    });
    Ok(())
}
