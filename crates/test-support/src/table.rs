//! The benchmarks' output (latencies with percentiles, and a Markdown table
//! of figure, spotbatch, baseline, difference and ratio) and their modes.

use std::time::Duration;

/// Sorted latencies, with nearest-rank percentiles.
pub struct Latencies(Vec<Duration>);

impl Latencies {
    /// Sorts the samples.
    pub fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Self(samples)
    }

    /// The nearest-rank `p`th percentile, in ns.
    pub fn percentile(&self, p: f64) -> f64 {
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1].as_nanos() as f64
    }
}

/// One line of the table: figure, spotbatch, baseline, diff, ratio.
pub struct Row {
    cells: [String; 5],
}

impl Row {
    /// A section heading: the title in bold, the other cells empty.
    pub fn section(title: impl Into<String>) -> Self {
        let mut cells: [String; 5] = Default::default();
        cells[0] = format!("**{}**", title.into());
        Self { cells }
    }

    /// A row of five cells as given.
    pub fn text(
        figure: impl Into<String>,
        ours: impl Into<String>,
        baseline: impl Into<String>,
        diff: impl Into<String>,
        ratio: impl Into<String>,
    ) -> Self {
        Self {
            cells: [
                figure.into(),
                ours.into(),
                baseline.into(),
                diff.into(),
                ratio.into(),
            ],
        }
    }

    /// A row of two times in ns, with their difference and ratio.
    pub fn ns(figure: impl Into<String>, ours: f64, baseline: f64) -> Self {
        Self::text(
            figure,
            time(ours),
            time(baseline),
            format!("+{}", time(ours - baseline)).replace("+-", "−"),
            format!("{:.2}×", ours / baseline),
        )
    }
}

/// A time given in ns, in a readable unit.
pub fn time(ns: f64) -> String {
    let abs = ns.abs();
    if abs < 10.0 {
        format!("{ns:.2} ns")
    } else if abs < 1_000.0 {
        format!("{ns:.1} ns")
    } else if abs < 1_000_000.0 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

/// Prints `rows` under the header as a Markdown table, columns padded to fit.
pub fn print_table(rows: &[Row]) {
    let header = ["figure", "spotbatch", "baseline", "diff", "ratio"];
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(&row.cells) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                let pad = " ".repeat(w - c.chars().count());
                if i == 0 {
                    format!("{c}{pad}")
                } else {
                    format!("{pad}{c}")
                }
            })
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    line(&header);
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                "-".repeat(*w)
            } else {
                format!("{}:", "-".repeat(w - 1))
            }
        })
        .collect();
    println!("| {} |", rule.join(" | "));
    for row in rows {
        let cells: Vec<&str> = row.cells.iter().map(String::as_str).collect();
        line(&cells);
    }
}

/// A section title and its median, p90 and p99 rows.
pub fn percentile_rows(title: String, what: &str, ours: &Latencies, base: &Latencies) -> Vec<Row> {
    let mut rows = vec![Row::section(title)];
    for (name, p) in [("median", 50.0), ("p90", 90.0), ("p99", 99.0)] {
        rows.push(Row::ns(
            format!("{what}, {name}"),
            ours.percentile(p),
            base.percentile(p),
        ));
    }
    rows
}

/// How much work a benchmark binary does, from its arguments: `cargo bench`
/// passes `--bench` (full figures; `-- --quick` for a fraction), while a run
/// without it (`cargo test --benches`) is a smoke pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A few rounds, to check that the benchmark runs.
    Smoke,
    /// A fraction of the full work.
    Quick,
    /// The published figures.
    Full,
}

impl Mode {
    /// The mode this process's arguments ask for.
    pub fn from_args() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if !args.iter().any(|a| a == "--bench") {
            Self::Smoke
        } else if args.iter().any(|a| a == "--quick") {
            Self::Quick
        } else {
            Self::Full
        }
    }

    /// The one of three values for this mode.
    pub fn pick<T>(self, smoke: T, quick: T, full: T) -> T {
        match self {
            Self::Smoke => smoke,
            Self::Quick => quick,
            Self::Full => full,
        }
    }

    /// How the mode is named in a benchmark's heading.
    pub fn describe(self) -> &'static str {
        self.pick(
            "smoke test (run with `cargo bench` for figures)",
            "quick",
            "full",
        )
    }
}
