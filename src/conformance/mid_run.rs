//! A realistic mid-run checkpoint, for the stores' benchmarks.

use crate::checkpoint::{Checkpoint, Writer};
use crate::key::JobKey;

/// A job's checkpoint as a runner with the default lease saves it mid-run
/// (16-byte cursor, 256-byte state, a lease, this run in its history), for
/// store benchmarks: [`advance`](Self::advance) gives the next save's.
#[derive(Debug, Clone)]
pub struct MidRun {
    checkpoint: Checkpoint,
}

impl MidRun {
    /// The job's checkpoint at version 1.
    pub fn new(job: JobKey) -> Self {
        let writer = Writer::this_process();
        let now = crate::checkpoint::now_ms();
        let mut c = Checkpoint::new(job, writer.clone());
        c.cursor_type = "(etl::Cursor, etl::Totals)".to_owned();
        c.schema = 1;
        c.cursor = (0u8..16).collect();
        c.state = (0..256u32).map(|i| (i * 7) as u8).collect();
        c.counters.chunks = 123_456;
        c.counters.items = 123_456_000;
        c.counters.checkpoints = 1_234;
        c.counters.runs = 3;
        c.lease = Some(crate::checkpoint::Lease::new(writer.run_id, now + 60_000));
        c.history
            .push(crate::checkpoint::RunRecord::started(&writer, now));
        Self { checkpoint: c }
    }

    /// The current checkpoint.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The next checkpoint: 100 more chunks, version + 1, lease renewed.
    pub fn advance(&mut self) -> &Checkpoint {
        let c = &mut self.checkpoint;
        let now = crate::checkpoint::now_ms();
        c.version += 1;
        c.counters.chunks += 100;
        c.counters.items += 100_000;
        c.counters.checkpoints += 1;
        c.cursor[..8].copy_from_slice(&c.counters.chunks.to_le_bytes());
        c.state[..8].copy_from_slice(&c.counters.items.to_le_bytes());
        c.updated_ms = now;
        c.lease = c
            .lease
            .map(|l| crate::checkpoint::Lease::new(l.owner, now + 60_000));
        if let Some(run) = c.history.last_mut() {
            run.chunks += 100;
        }
        c
    }
}
