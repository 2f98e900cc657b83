//! A chunk that runs an external program (ffmpeg, a Python script…) through
//! `ChunkContext::run_command`: the child gets SIGTERM when the drain starts,
//! SIGKILL at the drain deadline, and never outlives the job.
//!
//! ```text
//! cargo run --example child_process -- --script 'sleep 2; echo "done $1"'
//! ```

use std::time::Duration;

use clap::Parser;
use spotbatch::prelude::*;

struct External {
    chunks: u64,
    script: String,
}

#[async_trait]
impl Job for External {
    type Cursor = u64; // the next chunk
    type State = ();

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < self.chunks).then(|| Chunk::between(*at, *at + 1)))
    }

    async fn process(&mut self, chunk: &Chunk<u64>, _: &mut (), ctx: &ChunkContext) -> Result<()> {
        let mut command = tokio::process::Command::new("sh");
        // `$1` in the script is the chunk number.
        command
            .arg("-c")
            .arg(&self.script)
            .arg("chunk")
            .arg(chunk.start().to_string());
        let status = ctx.run_command(command).await?;
        if !status.success() {
            return Err(format!("chunk {}: the script failed: {status}", chunk.start()).into());
        }
        Ok(())
    }
}

#[derive(Parser)]
struct Args {
    /// Chunks to run.
    #[arg(long, default_value_t = 5)]
    chunks: u64,
    /// Shell script run once per chunk (`$1` is the chunk number).
    #[arg(long, default_value = "sleep 1; echo \"chunk $1 done\"")]
    script: String,
    /// Checkpoint store URL.
    #[arg(long, env = "SPOTBATCH_STORE", default_value = "file://.spotbatch")]
    store: String,
    /// Job key.
    #[arg(long, default_value = "child-process")]
    job: String,
    /// Grace period in seconds.
    #[arg(long, default_value_t = 30.0)]
    grace: f64,
    /// Exit code of an interrupted run.
    #[arg(long, default_value_t = 0)]
    interrupted_exit_code: u8,
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    // First: from here on SIGTERM and SIGINT are stop requests.
    let shutdown = spotbatch::shutdown::listen();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    // The exit code of a stop, before the run or during it.
    shutdown.interrupted_exit_code(args.interrupted_exit_code);
    let report = Runner::new(
        args.job,
        External {
            chunks: args.chunks,
            script: args.script,
        },
    )
    .store_url(&args.store)
    .grace(Duration::try_from_secs_f64(args.grace)?)
    .run()
    .await;
    Ok(report.exit_code())
}
