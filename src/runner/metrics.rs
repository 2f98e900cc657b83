//! A run's metrics, through the [`metrics`] facade: no cost beyond a branch
//! per update when no recorder is installed. The chunk and item counters are
//! added up in the run loop and handed to the recorder with each reading of
//! the chunk clock (at most about a millisecond apart), at each checkpoint
//! and at the run's end, not once per chunk.
//!
//! Names follow the Prometheus conventions
//! (<https://prometheus.io/docs/practices/naming/>): a `spotbatch_` prefix,
//! base units (seconds), `_total` for counters; every series has the label
//! `job` (the job key).

use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram, Unit,
};

/// Chunks finished (counter).
pub(crate) const CHUNKS: &str = "spotbatch_chunks_total";
/// Items in the chunks finished (counter).
pub(crate) const ITEMS: &str = "spotbatch_items_total";
/// Chunk attempts retried after a transient error (counter).
pub(crate) const RETRIES: &str = "spotbatch_chunk_retries_total";
/// Chunks that failed (after any retries) and were skipped (counter).
pub(crate) const SKIPPED: &str = "spotbatch_chunks_skipped_total";
/// Checkpoints saved, by `kind` (`periodic`, `final`) (counter).
pub(crate) const CHECKPOINTS: &str = "spotbatch_checkpoints_total";
/// Runs ended by a stop request, by `source` (counter).
pub(crate) const INTERRUPTIONS: &str = "spotbatch_interruptions_total";
/// Attempts at chunks, each from the previous one's end to its own: the
/// chunk's planning and processing, checkpoints and retry waits left out
/// (histogram, seconds). Chunks under a millisecond are timed in batches,
/// each recorded as its batch's mean.
pub(crate) const CHUNK_SECONDS: &str = "spotbatch_chunk_duration_seconds";
/// Checkpoint save latency, flush excluded (histogram, seconds).
pub(crate) const SAVE_SECONDS: &str = "spotbatch_checkpoint_save_duration_seconds";
/// Items done ÷ the job's total, 0 to 1, when the job knows its total (gauge).
pub(crate) const PROGRESS: &str = "spotbatch_progress_ratio";

/// The handles of one run's series.
#[derive(Debug)]
pub(crate) struct RunMetrics {
    chunks: Counter,
    items: Counter,
    retries: Counter,
    skipped: Counter,
    periodic: Counter,
    finals: Counter,
    chunk_seconds: Histogram,
    save_seconds: Histogram,
    progress: Gauge,
    total: Option<u64>,
    job: String,
    /// Chunks finished and not yet added to `chunks`.
    pending_chunks: u64,
    /// Items finished and not yet added to `items`.
    pending_items: u64,
}

impl RunMetrics {
    /// Registers the series of `job`, whose total is `total` items when
    /// known, with the installed recorder (none: no-ops).
    pub(crate) fn new(job: &str, total: Option<u64>) -> Self {
        describe();
        let job = job.to_owned();
        let label = || [("job", job.clone())];
        Self {
            chunks: counter!(CHUNKS, &label()),
            items: counter!(ITEMS, &label()),
            retries: counter!(RETRIES, &label()),
            skipped: counter!(SKIPPED, &label()),
            periodic: counter!(
                CHECKPOINTS,
                &[("job", job.clone()), ("kind", "periodic".to_owned())]
            ),
            finals: counter!(
                CHECKPOINTS,
                &[("job", job.clone()), ("kind", "final".to_owned())]
            ),
            chunk_seconds: metrics::histogram!(CHUNK_SECONDS, &label()),
            save_seconds: metrics::histogram!(SAVE_SECONDS, &label()),
            progress: metrics::gauge!(PROGRESS, &label()),
            total,
            job,
            pending_chunks: 0,
            pending_items: 0,
        }
    }

    /// A chunk of `items` finished: counted at the next [`flush`](Self::flush).
    #[inline]
    pub(crate) fn chunk(&mut self, items: u64) {
        self.pending_chunks += 1;
        self.pending_items += items;
    }

    /// Adds the chunks and items finished since the last flush to their
    /// counters.
    pub(crate) fn flush(&mut self) {
        if self.pending_chunks > 0 {
            self.chunks
                .increment(std::mem::take(&mut self.pending_chunks));
            self.items
                .increment(std::mem::take(&mut self.pending_items));
        }
    }

    /// `chunks` attempts at chunks took `took` together: each is recorded
    /// as their mean. Flushes the counters.
    pub(crate) fn chunks_took(&mut self, chunks: u32, took: Duration) {
        self.flush();
        if chunks > 0 {
            self.chunk_seconds
                .record_many(took.as_secs_f64() / f64::from(chunks), chunks as usize);
        }
    }

    pub(crate) fn retry(&self) {
        self.retries.increment(1);
    }

    pub(crate) fn skipped(&self) {
        self.skipped.increment(1);
    }

    /// A checkpoint saved in `took`; `last` for the final one. Flushes the
    /// counters.
    pub(crate) fn checkpoint(&mut self, took: Duration, last: bool) {
        self.flush();
        if last { &self.finals } else { &self.periodic }.increment(1);
        self.save_seconds.record(took.as_secs_f64());
    }

    /// `done` items of the job's total, when it is known.
    pub(crate) fn progress(&self, done: u64) {
        if let Some(total) = self.total.filter(|&total| total > 0) {
            #[allow(clippy::cast_precision_loss)] // a ratio
            self.progress.set(done as f64 / total as f64);
        }
    }

    /// The run ended on a stop request from `source`.
    pub(crate) fn interrupted(&self, source: &str) {
        counter!(
            INTERRUPTIONS,
            &[("job", self.job.clone()), ("source", source.to_owned())]
        )
        .increment(1);
    }
}

impl Drop for RunMetrics {
    /// A run that ends without a final checkpoint still counts its chunks.
    fn drop(&mut self) {
        self.flush();
    }
}

/// Describes the series (units and help) to the recorder, once per process.
fn describe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        describe_counter!(CHUNKS, "Chunks finished");
        describe_counter!(ITEMS, "Items in the chunks finished");
        describe_counter!(RETRIES, "Chunk attempts retried after a transient error");
        describe_counter!(
            SKIPPED,
            "Chunks that failed (after any retries) and were skipped"
        );
        describe_counter!(CHECKPOINTS, "Checkpoints saved, by kind (periodic, final)");
        describe_counter!(INTERRUPTIONS, "Runs ended by a stop request, by source");
        describe_histogram!(
            CHUNK_SECONDS,
            Unit::Seconds,
            "Time from one chunk's end to the next's"
        );
        describe_histogram!(SAVE_SECONDS, Unit::Seconds, "Checkpoint save latency");
        describe_gauge!(PROGRESS, "Items done / the job's total items");
    });
}
