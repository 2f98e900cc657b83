//! `spotbatch`: inspect and edit checkpoints in any store, and test a job
//! against Spot-style interruptions.
//!
//! See `spotbatch --help` and the guide, `docs/cli.md`.

mod edit;
mod error;
mod fmt;
mod inspect;
mod partitions;
mod simulate;
mod skips;
mod stores;
mod target;
mod view;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::edit::MarkStatus;
use crate::error::CliError;

const AFTER_HELP: &str = "\
Store URLs: file:///var/lib/ckpt, file://.spotbatch (relative), memory://,
s3://bucket/prefix (AWS environment; SPOTBATCH_S3_FORCE_PATH_STYLE=true and
AWS_ENDPOINT_URL_S3 for S3-compatible servers),
postgres://user:pass@host:port/db?schema=name.

Exit codes: 0 ok; 1 error (no such checkpoint, I/O, a store that does not
answer; simulate: the job failed); 2 bad command line; 65 the checkpoint is
corrupt, truncated or another job's; 73 a live runner holds the job, or it
changed during the edit; 74 the store refused for good (no such directory,
schema, bucket or database, access denied, a failed login, read-only, full);
78 bad store URL or job key, a store this build leaves out, a bad
SPOTBATCH_S3_* setting, a Postgres server that cannot be reached.";

/// Inspect and edit spotbatch checkpoints; test a job against Spot interruptions.
#[derive(Debug, Parser)]
#[command(name = "spotbatch", bin_name = "spotbatch", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the checkpoints in a store: key, status, step (jobs of steps), version, last update, chunks, writer or lease holder.
    List {
        /// Store URL, e.g. file:///var/lib/ckpt.
        url: String,
        /// One JSON array, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show a job's whole checkpoint: status, counters, writer, lease, cursor and state, run history.
    Show {
        /// Store URL.
        url: String,
        /// Job key.
        job: String,
        /// JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Delete a job's checkpoint, so that its next run starts from the beginning.
    Reset {
        /// Store URL.
        url: String,
        /// Job key.
        job: String,
        /// Do not ask (required when stdin is not a terminal).
        #[arg(long, short)]
        yes: bool,
        /// Reset even while a live runner holds the job (it is fenced off at its next save).
        #[arg(long)]
        force: bool,
    },
    /// Set a job's status, e.g. `--status completed` to skip it, `--status interrupted` to resume it.
    Mark {
        /// Store URL.
        url: String,
        /// Job key.
        job: String,
        /// The new status.
        #[arg(long, value_enum)]
        status: MarkStatus,
        /// The interruption source (interrupted) or the error text (failed).
        #[arg(long)]
        message: Option<String>,
        /// Change it even while a live runner holds the job (it is fenced off at its next save).
        #[arg(long)]
        force: bool,
    },
    /// Replace the cursor of a job whose codec is JSON, e.g. to skip a poison record.
    SetCursor {
        /// Store URL.
        url: String,
        /// Job key.
        job: String,
        /// The new cursor, as JSON (e.g. 12001, or '{"page":"abc"}').
        cursor: String,
        /// The new state too, as JSON.
        #[arg(long)]
        state: Option<String>,
        /// Accept a value of another JSON shape than the stored one (another kind, other keys).
        #[arg(long)]
        allow_shape_change: bool,
        /// Change it even while a live runner holds the job (it is fenced off at its next save).
        #[arg(long)]
        force: bool,
    },
    /// List a job's skipped chunks: start and next cursor, items, attempts, when, the error.
    Skipped {
        /// Store URL.
        url: String,
        /// Job key.
        job: String,
        /// JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Ask a job's next run to process its skipped chunks again first, then go on from its cursor.
    ///
    /// Sets the checkpoint's redrive flag (compare-and-swap, like every change). The
    /// next run of the job processes each skipped chunk in the list's order: one
    /// that succeeds leaves the list, one that fails again goes to its back with
    /// its new error. A completed job runs again for its redrive, and completes.
    Redrive {
        /// Store URL.
        url: String,
        /// Job key.
        job: String,
        /// Change it even while a live runner holds the job (it is fenced off at its next save).
        #[arg(long)]
        force: bool,
    },
    /// Write a job's checkpoint, verified, as raw envelope bytes (to stdout, or --output).
    Export {
        /// Store URL.
        url: String,
        /// Job key.
        job: String,
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Store an exported checkpoint (from stdin, or --input) under its job key.
    ///
    /// The envelope must verify and hold JOB. If the store has no checkpoint
    /// for JOB, it is created with the file's version; otherwise it replaces
    /// the stored one by compare-and-swap as version = stored + 1 (versions
    /// only grow, and a runner that held the old one is fenced off). The
    /// writer becomes this command and the lease is released.
    Import {
        /// Store URL.
        url: String,
        /// Job key.
        job: String,
        /// Read from this file instead of stdin.
        #[arg(long, short)]
        input: Option<PathBuf>,
        /// Import even while a runner holds the job here, or held it in the exported checkpoint.
        #[arg(long)]
        force: bool,
    },
    /// Run a job the way a Spot platform does, until it completes: SIGTERM after a random
    /// delay, SIGKILL after the grace period, hard kills, restarts. Reports what happened.
    ///
    /// SIGTERM goes to the job's main process only, as ECS and `docker stop` send it to
    /// PID 1 of the container (this is what exposes a shell wrapper that does not `exec`
    /// the job); --signal-group sends it to the job's whole process group. SIGKILL always
    /// goes to the whole group. The job's stdout and stderr are forwarded to stderr,
    /// prefixed `[run N]`; stdout carries only the report.
    ///
    /// Exits 0 when the job completed and never needed SIGKILL after SIGTERM, 1 otherwise.
    Simulate(simulate::SimulateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spotbatch: error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("spotbatch: error: {e}");
            e.exit_code()
        }
    }
}

async fn run(command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::List { url, json } => inspect::list(&url, json).await?,
        Command::Show { url, job, json } => inspect::show(&url, &job, json).await?,
        Command::Reset {
            url,
            job,
            yes,
            force,
        } => edit::reset(&url, &job, yes, force).await?,
        Command::Mark {
            url,
            job,
            status,
            message,
            force,
        } => edit::mark(&url, &job, status, message, force).await?,
        Command::SetCursor {
            url,
            job,
            cursor,
            state,
            allow_shape_change,
            force,
        } => {
            edit::set_cursor(
                &url,
                &job,
                &cursor,
                state.as_deref(),
                allow_shape_change,
                force,
            )
            .await?
        }
        Command::Skipped { url, job, json } => skips::skipped(&url, &job, json).await?,
        Command::Redrive { url, job, force } => skips::redrive(&url, &job, force).await?,
        Command::Export { url, job, output } => {
            inspect::export(&url, &job, output.as_deref()).await?
        }
        Command::Import {
            url,
            job,
            input,
            force,
        } => edit::import(&url, &job, input.as_deref(), force).await?,
        Command::Simulate(args) => {
            return Ok(if simulate::simulate(args).await? {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// `--help` lists the exit codes of docs/cli.md's table, and every code a
    /// command error can have is in that table.
    #[test]
    fn the_help_and_the_guide_give_the_same_exit_codes() {
        let guide =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/cli.md"))
                .expect("docs/cli.md");
        let table = &guide[guide.find("## Exit codes").expect("an Exit codes section")..];
        let documented: Vec<u8> = table
            .lines()
            .filter_map(|l| l.strip_prefix("| ")?.split(' ').next()?.parse().ok())
            .collect();
        let help = Cli::command().render_long_help().to_string();
        let listed = &help[help.find("Exit codes:").expect("exit codes in --help")..];
        let in_help: Vec<u8> = listed
            .split(['(', ')', ';', ':'])
            .filter_map(|part| part.split_whitespace().next()?.parse().ok())
            .collect();
        assert_eq!(in_help, documented, "--help: {listed}");
        let errors = [
            CliError::Config(String::new()),
            CliError::Usage(String::new()),
            CliError::BadCheckpoint(String::new()),
            CliError::Held(String::new()),
            CliError::Failed(String::new()),
            CliError::Store(spotbatch::StoreError::Refused {
                store: String::new(),
                key: String::new(),
                operation: "connect",
                cause: spotbatch::Refusal::Permission,
                source: "denied".into(),
            }),
        ];
        for e in errors {
            assert!(documented.contains(&e.code()), "{e:?}: {}", e.code());
        }
    }
}
