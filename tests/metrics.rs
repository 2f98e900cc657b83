//! The run's metrics, through the real Prometheus exporter's recorder.

// Test code: a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use spotbatch::prelude::*;
use spotbatch::{transient, MemoryStore};

/// 20 chunks of 5 records, 1 ms each; chunk 10's first attempt fails transiently.
struct Twenty;

#[async_trait]
impl Job for Twenty {
    type Cursor = u64;
    type State = ();

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < 100).then(|| Chunk::between(*at, at + 5)))
    }

    async fn process(&mut self, chunk: &Chunk<u64>, _: &mut (), ctx: &ChunkContext) -> Result<()> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        if *chunk.start() == 50 && ctx.attempt() == 1 {
            return Err(transient("throttled"));
        }
        Ok(())
    }

    fn total_items(&self) -> Option<u64> {
        Some(100)
    }
}

/// 10 chunks of 2 ms, each reading the chunk counter as a scrape would.
struct Scraped {
    prometheus: PrometheusHandle,
    seen: Arc<Mutex<Vec<f64>>>,
}

#[async_trait]
impl Job for Scraped {
    type Cursor = u64;
    type State = ();

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < 10).then(|| Chunk::between(*at, at + 1)))
    }

    async fn process(&mut self, _: &Chunk<u64>, _: &mut (), _: &ChunkContext) -> Result<()> {
        let text = self.prometheus.render();
        let series = r#"spotbatch_chunks_total{job="scraped"}"#;
        let done = text
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0);
        self.seen.lock().unwrap().push(done);
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(())
    }
}

/// The value of the series `name{labels}` in the Prometheus text `text`.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

#[tokio::test(start_paused = true)]
async fn a_run_reports_chunks_items_retries_checkpoints_interruptions_and_progress() {
    let prometheus = PrometheusBuilder::new().install_recorder().unwrap();
    let report = Runner::new("metered", Twenty)
        .store(MemoryStore::new())
        .checkpoint(Every::chunks(4))
        .retry(
            RetryPolicy::attempts(2).backoff(Duration::from_millis(10), Duration::from_millis(10)),
        )
        .signals(&[])
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);

    let text = prometheus.render();
    let job = r#"{job="metered"}"#;
    assert_eq!(value(&text, &format!("spotbatch_chunks_total{job}")), 20.0);
    assert_eq!(value(&text, &format!("spotbatch_items_total{job}")), 100.0);
    assert_eq!(
        value(&text, &format!("spotbatch_chunk_retries_total{job}")),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"spotbatch_checkpoints_total{job="metered",kind="periodic"}"#
        ),
        5.0
    );
    assert_eq!(
        value(
            &text,
            r#"spotbatch_checkpoints_total{job="metered",kind="final"}"#
        ),
        1.0
    );
    assert_eq!(value(&text, &format!("spotbatch_progress_ratio{job}")), 1.0);
    assert_eq!(
        value(
            &text,
            &format!("spotbatch_checkpoint_save_duration_seconds_count{job}")
        ),
        6.0
    );
    assert!(
        text.contains("# TYPE spotbatch_chunk_duration_seconds summary"),
        "{text}"
    );

    // An interrupted run counts its interruption by source.
    let report = Runner::new("stopped", Twenty)
        .store(MemoryStore::new())
        .signals(&[])
        .stop_on("deploy", tokio::time::sleep(Duration::from_millis(5)))
        .run()
        .await;
    assert!(
        matches!(report.outcome, Outcome::Interrupted(_)),
        "{:?}",
        report.outcome
    );
    let text = prometheus.render();
    assert!(
        text.lines().any(
            |l| l.starts_with("spotbatch_interruptions_total{job=\"stopped\"") && l.ends_with(" 1")
        ),
        "{text}"
    );

    // A chunk skipped after its attempts is counted as skipped, not finished.
    let report = Runner::new("skipping", Twenty)
        .store(MemoryStore::new())
        .signals(&[])
        .retry(RetryPolicy::never())
        .skip(spotbatch::SkipPolicy::at_most(1))
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    let text = prometheus.render();
    let job = r#"{job="skipping"}"#;
    assert_eq!(
        value(&text, &format!("spotbatch_chunks_skipped_total{job}")),
        1.0
    );
    assert_eq!(value(&text, &format!("spotbatch_chunks_total{job}")), 19.0);

    // The chunk counter is added to in batches, but chunks of a millisecond
    // or more are each counted before the next one starts.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let report = Runner::new(
        "scraped",
        Scraped {
            prometheus: prometheus.clone(),
            seen: seen.clone(),
        },
    )
    .store(MemoryStore::new())
    .signals(&[])
    .run()
    .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    let expected: Vec<f64> = (0..10).map(f64::from).collect();
    assert_eq!(*seen.lock().unwrap(), expected);
    let text = prometheus.render();
    assert_eq!(
        value(&text, r#"spotbatch_chunks_total{job="scraped"}"#),
        10.0
    );
}
