//! The simulation report: what happened to each run, totals, and the verdict.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::fmt;

/// The whole report (`--json` prints it as it is).
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// `pass` or `fail`.
    pub(crate) verdict: &'static str,
    /// Whether the job completed.
    pub(crate) completed: bool,
    /// Why the verdict is `fail`, one line each.
    pub(crate) failures: Vec<String>,
    /// What is worth a look but did not fail the job (each with the runs it happened in).
    pub(crate) warnings: Vec<String>,
    /// Warnings as they come: text and runs, merged into `warnings` by [`Report::finish_warnings`].
    #[serde(skip)]
    pub(crate) pending_warnings: Vec<(String, Vec<u32>)>,
    pub(crate) command: Vec<String>,
    pub(crate) seed: u64,
    pub(crate) interrupt_after_ms: [u64; 2],
    pub(crate) grace_ms: u64,
    pub(crate) kill_ratio: f64,
    /// Whether the simulation went on after a failure (`--keep-going`).
    pub(crate) keep_going: bool,
    /// `main process` (ECS, docker stop) or `process group`.
    pub(crate) sigterm_to: &'static str,
    /// runs = sigterms + hard_kills + ran_to_end.
    pub(crate) runs: u32,
    /// Runs sent SIGTERM.
    pub(crate) sigterms: u32,
    /// Runs SIGKILLed with no warning.
    pub(crate) hard_kills: u32,
    /// Runs that ended before any signal (normally one: the last).
    pub(crate) ran_to_end: u32,
    /// SIGTERMed runs that were still running when the grace period ran out: SIGKILL was needed.
    pub(crate) grace_exceeded: u32,
    /// SIGTERMed runs whose main process was killed by the signal itself (no handler).
    pub(crate) sigterm_unhandled: u32,
    /// The longest time from SIGTERM to a stopped job, over runs that stopped in time.
    pub(crate) slowest_stop_ms: Option<u64>,
    /// How the runs' main processes ended: `"75": 19`, `"SIGKILL": 7`, …
    pub(crate) exit_codes: BTreeMap<String, u32>,
    pub(crate) total_ms: u64,
    /// What the store says (with `--store` and `--job`).
    pub(crate) store: Option<StoreReport>,
    pub(crate) per_run: Vec<RunReport>,
}

/// What the job's checkpoints tell.
#[derive(Debug, Serialize)]
pub(crate) struct StoreReport {
    pub(crate) url: String,
    pub(crate) job: String,
    pub(crate) chunks_at_start: u64,
    pub(crate) chunks_final: u64,
    /// Interruptions the job itself recorded (its counter's growth): one per
    /// SIGTERM it handled, with a final checkpoint.
    pub(crate) interruptions_recorded: u64,
    /// Runs the job itself recorded (its counter's growth): runs that got as
    /// far as their first save.
    pub(crate) runs_recorded: u64,
    /// SIGTERMed runs that had saved checkpoints but wrote no final one.
    pub(crate) no_final_checkpoint: u32,
    /// SIGTERMed runs that stopped cleanly before their first save (while
    /// opening the store, loading or taking the lease): the job recorded
    /// neither the run nor the interruption, rightly.
    pub(crate) stopped_before_first_save: u32,
    /// SIGTERMed runs that completed the job all the same (the signal came
    /// during their final checkpoint): no interruption to record.
    pub(crate) completed_after_sigterm: u32,
    /// Wall time of work thrown away: for each run that ended without a final
    /// checkpoint, from its last checkpoint (or its start) to its end. The
    /// next run redid that work.
    pub(crate) lost_ms: u64,
    /// Chunks per second of the first run that made progress.
    pub(crate) first_run_rate: Option<f64>,
    /// `lost_ms` at the first run's rate: chunks done twice (an estimate).
    pub(crate) redone_chunks_estimate: Option<u64>,
    /// The chunks done, at the first run's rate: the time the job would have
    /// taken uninterrupted (an estimate; compare with `total_ms`).
    pub(crate) uninterrupted_estimate_ms: Option<u64>,
}

/// One run.
#[derive(Debug, Default, Serialize)]
pub(crate) struct RunReport {
    pub(crate) run: u32,
    pub(crate) pid: i32,
    /// From the start of the simulation.
    pub(crate) started_ms: u64,
    pub(crate) duration_ms: u64,
    /// `SIGTERM`, `SIGKILL` (a hard kill), or none: the run ended first.
    pub(crate) signal: Option<&'static str>,
    pub(crate) signal_after_ms: Option<u64>,
    pub(crate) exit_code: Option<i32>,
    pub(crate) exit_signal: Option<String>,
    /// From SIGTERM until the job had stopped.
    pub(crate) stopped_in_ms: Option<u64>,
    pub(crate) grace_exceeded: bool,
    pub(crate) sigterm_unhandled: bool,
    /// Processes still running when the grace period ran out, SIGKILLed.
    pub(crate) still_running: Vec<String>,
    /// Processes left when the main process exited, SIGKILLed.
    pub(crate) left_behind: Vec<String>,
    pub(crate) version_after: Option<u64>,
    pub(crate) status_after: Option<String>,
    pub(crate) chunks_before: Option<u64>,
    pub(crate) chunks_after: Option<u64>,
    /// Whether the run saved any checkpoint.
    pub(crate) saved: Option<bool>,
    /// Work thrown away by this run's end (see [`StoreReport::lost_ms`]).
    pub(crate) lost_ms: Option<u64>,
    /// What went wrong in this run, if anything.
    pub(crate) note: Option<String>,
}

impl Report {
    /// Notes a warning about run `run`; the same text for several runs is said once.
    pub(crate) fn warn(&mut self, run: u32, text: String) {
        match self.pending_warnings.iter_mut().find(|(t, _)| *t == text) {
            Some((_, runs)) => runs.push(run),
            None => self.pending_warnings.push((text, vec![run])),
        }
    }

    /// Turns the pending warnings into `warnings`: `runs 1, 2, 3: text`.
    pub(crate) fn finish_warnings(&mut self) {
        for (text, runs) in self.pending_warnings.drain(..) {
            let shown: Vec<String> = runs.iter().take(8).map(ToString::to_string).collect();
            let which = match runs.len() {
                1 => format!("run {}", shown[0]),
                n if n <= 8 => format!("runs {}", shown.join(", ")),
                n => format!("runs {}, … ({n} runs)", shown.join(", ")),
            };
            self.warnings.push(format!("{which}: {text}"));
        }
    }

    /// The report for people.
    pub(crate) fn render(&self) -> String {
        let mut s = String::new();
        let ms = |v: u64| fmt::duration(Duration::from_millis(v));
        let verdict = if self.verdict == "pass" {
            "PASS"
        } else {
            "FAIL"
        };
        let runs = format!("{} run{}", self.runs, if self.runs == 1 { "" } else { "s" });
        let how = if self.completed {
            format!("the job completed after {runs}")
        } else {
            format!("the job did not complete ({runs})")
        };
        let _ = writeln!(
            s,
            "spotbatch simulate: {verdict}: {how} in {}",
            ms(self.total_ms)
        );
        let mut line = |label: &str, value: String| {
            let _ = writeln!(s, "  {label:<15}{value}");
        };
        line("command", self.command.join(" "));
        let [lo, hi] = self.interrupt_after_ms;
        line(
            "schedule",
            format!(
                "interrupt {}–{} after start, {:.0}% hard kills, grace {}, SIGTERM to the {}, seed {}",
                ms(lo),
                ms(hi),
                self.kill_ratio * 100.0,
                ms(self.grace_ms),
                self.sigterm_to,
                self.seed
            ),
        );
        line(
            "runs",
            format!(
                "{} = {} SIGTERM + {} hard kill{} + {} ran to the end",
                self.runs,
                self.sigterms,
                self.hard_kills,
                if self.hard_kills == 1 { "" } else { "s" },
                self.ran_to_end
            ),
        );
        line(
            "grace exceeded",
            format!(
                "{} (runs that needed SIGKILL after SIGTERM){}",
                self.grace_exceeded,
                if self.sigterm_unhandled > 0 {
                    format!(
                        "; {} died of SIGTERM itself (no handler)",
                        self.sigterm_unhandled
                    )
                } else {
                    String::new()
                }
            ),
        );
        if let Some(slowest) = self.slowest_stop_ms {
            line(
                "slowest stop",
                format!("{} from SIGTERM to exit", ms(slowest)),
            );
        }
        line(
            "exit codes",
            self.exit_codes
                .iter()
                .map(|(k, n)| format!("{k} ×{n}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        if let Some(st) = &self.store {
            line(
                "store",
                format!(
                    "{} job {:?}: chunks {} → {}; the job recorded {} interruption{} and {} run{}{}{}",
                    st.url,
                    st.job,
                    st.chunks_at_start,
                    st.chunks_final,
                    st.interruptions_recorded,
                    if st.interruptions_recorded == 1 {
                        ""
                    } else {
                        "s"
                    },
                    st.runs_recorded,
                    if st.runs_recorded == 1 { "" } else { "s" },
                    match st.stopped_before_first_save {
                        0 => String::new(),
                        n => format!(
                            "; {n} run{} stopped before saving anything (nothing to record)",
                            if n == 1 { "" } else { "s" }
                        ),
                    },
                    match st.completed_after_sigterm {
                        0 => String::new(),
                        n => format!(
                            "; {n} SIGTERMed run{} completed all the same (no interruption to record)",
                            if n == 1 { "" } else { "s" }
                        ),
                    },
                ),
            );
            let redone = match (st.redone_chunks_estimate, st.first_run_rate) {
                (Some(n), Some(rate)) => {
                    format!(" (≈ {n} chunks redone at the first run's {rate:.0} chunks/s)")
                }
                _ => String::new(),
            };
            line(
                "work lost",
                format!(
                    "{} thrown away by runs without a final checkpoint{redone}",
                    ms(st.lost_ms)
                ),
            );
            if let Some(est) = st.uninterrupted_estimate_ms.filter(|_| self.completed) {
                line(
                    "total time",
                    format!(
                        "{} vs ≈ {} uninterrupted at the first run's rate",
                        ms(self.total_ms),
                        ms(est)
                    ),
                );
            }
        }

        let rows: Vec<Vec<String>> = self.per_run.iter().map(row).collect();
        let _ = writeln!(s);
        let table = fmt::table(
            &[
                "RUN",
                "SIGNAL",
                "AT",
                "ENDED",
                "STOPPED IN",
                "CHUNKS",
                "NOTE",
            ],
            &rows,
        );
        for l in table.lines() {
            let _ = writeln!(s, "  {l}");
        }
        if !self.failures.is_empty() {
            let _ = writeln!(s, "\nfailures:");
            for f in &self.failures {
                let _ = writeln!(s, "  - {f}");
            }
            if !self.completed && !self.keep_going {
                let _ = writeln!(
                    s,
                    "  (the simulation stops at the first failure; --keep-going runs on to see whether the job still completes)"
                );
            }
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(s, "\nwarnings:");
            for w in &self.warnings {
                let _ = writeln!(s, "  - {w}");
            }
        }
        s
    }
}

fn row(r: &RunReport) -> Vec<String> {
    let ms = |v: u64| fmt::duration(Duration::from_millis(v));
    let ended = match (r.exit_code, &r.exit_signal) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(sig)) => sig.clone(),
        _ => "-".into(),
    };
    let chunks = match (r.chunks_before, r.chunks_after) {
        (Some(a), Some(b)) => format!("{a} → {b}"),
        _ => "-".into(),
    };
    let stopped = match (r.stopped_in_ms, r.grace_exceeded) {
        (_, true) => "SIGKILLed".into(),
        (Some(v), _) => ms(v),
        _ => "-".into(),
    };
    vec![
        r.run.to_string(),
        r.signal.unwrap_or("-").to_owned(),
        r.signal_after_ms.map_or_else(|| "-".into(), ms),
        ended,
        stopped,
        chunks,
        r.note.clone().unwrap_or_default(),
    ]
}
