//! A job's metrics in the Prometheus text format.
//!
//! spotbatch reports through the `metrics` facade; the application picks a
//! recorder. Here the Prometheus exporter's recorder, rendered to stdout at
//! the end (a service would serve it on `/metrics` with the exporter's
//! `http-listener` feature, or push it to a gateway).
//!
//! ```text
//! cargo run --example metrics
//! ```

use metrics_exporter_prometheus::PrometheusBuilder;
use spotbatch::prelude::*;

/// A thousand records, 50 per chunk, the sum in the state.
struct Sum;

#[async_trait]
impl Job for Sum {
    type Cursor = u64;
    type State = u64;

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < 1_000).then(|| Chunk::between(*at, (*at + 50).min(1_000))))
    }

    async fn process(&mut self, chunk: &Chunk<u64>, sum: &mut u64, _: &ChunkContext) -> Result<()> {
        *sum += chunk.range().sum::<u64>();
        Ok(())
    }

    fn total_items(&self) -> Option<u64> {
        Some(1_000)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let report = Runner::new("metrics-example", Sum)
        .store(spotbatch::MemoryStore::new())
        .checkpoint(Every::chunks(5))
        .run()
        .await;
    print!("{}", prometheus.render());
    Ok(report.exit_code())
}
