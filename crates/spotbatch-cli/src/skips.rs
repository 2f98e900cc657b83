//! Skipped chunks: `skipped` lists them, `redrive` asks the job's next run
//! to process them again before it goes on from its cursor.

use std::io::Write;

use serde::Serialize;
use spotbatch::{Checkpoint, SkippedChunk};

use crate::edit::{corrupt_hint, save, stamp};
use crate::error::CliError;
use crate::fmt;
use crate::stores::Open;
use crate::target::{check_not_held, Target};

/// One skipped chunk, as `skipped --json` prints it.
#[derive(Serialize)]
struct Row<'a> {
    start: &'a str,
    next: &'a str,
    items: u64,
    attempts: u32,
    skipped_at: String,
    run_id: String,
    error: &'a str,
}

impl<'a> From<&'a SkippedChunk> for Row<'a> {
    fn from(s: &'a SkippedChunk) -> Self {
        Self {
            start: &s.start_text,
            next: &s.next_text,
            items: s.items,
            attempts: s.attempts,
            skipped_at: fmt::rfc3339(s.skipped_ms),
            run_id: s.run_id.to_string(),
            error: &s.error,
        }
    }
}

/// `skipped --json`: the job's skipped chunks and whether a redrive is pending.
#[derive(Serialize)]
struct Listing<'a> {
    job: &'a str,
    redrive_requested: bool,
    skipped: Vec<Row<'a>>,
}

/// `spotbatch skipped URL JOB [--json]`.
pub(crate) async fn skipped(url: &str, job: &str, json: bool) -> Result<(), CliError> {
    let target = Target::open(url, job, Open::Existing).await?;
    let c = target.load_existing().await?;
    let mut out = std::io::stdout().lock();
    if json {
        let listing = Listing {
            job: c.job.as_str(),
            redrive_requested: c.redrive,
            skipped: c.skipped.iter().map(Row::from).collect(),
        };
        serde_json::to_writer_pretty(&mut out, &listing)
            .map_err(|e| CliError::Failed(format!("could not write to stdout: {e}")))?;
        writeln!(out)?;
        return Ok(());
    }
    if c.skipped.is_empty() {
        writeln!(
            out,
            "job {:?} in {}: no skipped chunks",
            c.job.as_str(),
            target.location()
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "job {:?} in {}: {} skipped chunk(s){}",
        c.job.as_str(),
        target.location(),
        c.skipped.len(),
        if c.redrive {
            "; redrive requested: the next run processes them first"
        } else {
            ""
        }
    )?;
    let rows: Vec<Vec<String>> = c
        .skipped
        .iter()
        .map(|s| {
            vec![
                s.start_text.clone(),
                s.next_text.clone(),
                s.items.to_string(),
                s.attempts.to_string(),
                fmt::utc(s.skipped_ms),
                s.error.replace('\n', " "),
            ]
        })
        .collect();
    write!(
        out,
        "{}",
        fmt::table(
            &["START", "NEXT", "ITEMS", "ATTEMPTS", "SKIPPED AT", "ERROR"],
            &rows
        )
    )?;
    Ok(())
}

/// `spotbatch redrive URL JOB [--force]`: sets the checkpoint's redrive
/// flag by compare-and-swap.
pub(crate) async fn redrive(url: &str, job: &str, force: bool) -> Result<(), CliError> {
    let target = Target::open(url, job, Open::Existing).await?;
    let mut c: Checkpoint = target.load_existing().await.map_err(corrupt_hint)?;
    if c.skipped.is_empty() {
        return Err(CliError::Failed(format!(
            "{}: job {:?} has no skipped chunks: nothing to redrive",
            target.location(),
            c.job.as_str()
        )));
    }
    check_not_held(&target, &c, force, "request a redrive")?;
    let old_version = c.version;
    c.redrive = true;
    stamp(&mut c, old_version + 1, "redrive");
    save(&target, &c, Some(old_version), "the redrive").await?;
    println!(
        "job {:?} in {}: redrive requested for {} skipped chunk(s) (version {old_version} → {}); \
         the next run processes them first, then goes on from its cursor",
        c.job.as_str(),
        target.location(),
        c.skipped.len(),
        c.version
    );
    Ok(())
}
