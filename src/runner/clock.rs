//! The chunk loop's clock: read at chunk ends for the lease, a time-based
//! checkpoint policy and the chunks' durations, but only once per batch of
//! chunks while they are short, so that a loop of sub-microsecond chunks does
//! not spend most of its time reading the clock.
//!
//! A batch ends after its number of chunks, or as soon as the kernel's coarse
//! clock (`CLOCK_MONOTONIC_COARSE`: one memory read, advanced at each timer
//! tick, every 1 to 4 ms) has moved since the last reading: chunks that turn
//! long after thousands of short ones are each read again, whether they
//! await or hold their thread. Off Linux the clock is read after every chunk.

use std::time::Duration;

use tokio::time::Instant;

/// Reads the clock at the end of every `every`-th chunk, or sooner when the
/// coarse clock has ticked: `every` doubles (up to
/// [`MAX_EVERY`](Self::MAX_EVERY)) while a batch takes under
/// [`SHORT`](Self::SHORT), and falls back to 1 as soon as one does not. So
/// chunks of a timer tick or more are each timed, and a deadline (a lease
/// renewal, a time-based checkpoint) is seen at most a tick (1 to 4 ms) and
/// one chunk late.
#[derive(Debug)]
pub(crate) struct ChunkClock {
    /// The last reading, or the last restart.
    last: Instant,
    /// Chunks ended since `last`.
    pending: u32,
    /// Chunks per reading.
    every: u32,
    /// The coarse clock at the last reading.
    tick: Tick,
}

/// One reading of a [`ChunkClock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reading {
    /// When it was taken.
    pub(crate) now: Instant,
    /// Since the previous reading or restart.
    pub(crate) took: Duration,
    /// Chunks (or attempts) ended in `took`; 0 when none did.
    pub(crate) chunks: u32,
}

impl ChunkClock {
    /// A batch shorter than this is followed by one twice as long.
    pub(crate) const SHORT: Duration = Duration::from_millis(1);
    /// The most chunks per reading.
    pub(crate) const MAX_EVERY: u32 = 1024;

    pub(crate) fn new(now: Instant) -> Self {
        Self {
            last: now,
            pending: 0,
            every: 1,
            tick: coarse_tick(),
        }
    }

    /// A chunk ended: the reading, when this chunk ends a batch.
    #[inline]
    pub(crate) fn chunk_ended(&mut self) -> Option<Reading> {
        self.pending += 1;
        (self.pending >= self.every || coarse_tick() != self.tick).then(|| self.read())
    }

    /// A chunk ended, and the clock is read now whatever the batch (a failed
    /// or abandoned attempt).
    pub(crate) fn chunk_ended_now(&mut self) -> Reading {
        self.pending += 1;
        self.read()
    }

    /// Whether chunks ended since the last reading.
    pub(crate) fn pending(&self) -> bool {
        self.pending > 0
    }

    /// Reads the clock now, ending the batch (before a checkpoint).
    pub(crate) fn read(&mut self) -> Reading {
        self.read_at(Instant::now())
    }

    fn read_at(&mut self, now: Instant) -> Reading {
        let reading = Reading {
            now,
            took: now.saturating_duration_since(self.last),
            chunks: self.pending,
        };
        self.every = if reading.took < Self::SHORT {
            (self.every * 2).min(Self::MAX_EVERY)
        } else {
            1
        };
        self.last = now;
        self.pending = 0;
        self.tick = coarse_tick();
        reading
    }

    /// Starts the next batch at `now`, leaving out the time since the last
    /// reading (a checkpoint's save, a retry's wait): call it after a
    /// reading, or chunks ended since are not counted.
    pub(crate) fn restart(&mut self, now: Instant) {
        self.last = now;
        self.pending = 0;
    }
}

/// A reading of the coarse clock, compared for equality only.
#[cfg(target_os = "linux")]
type Tick = (libc::time_t, libc::c_long);
#[cfg(not(target_os = "linux"))]
type Tick = (i64, i64);

/// `CLOCK_MONOTONIC_COARSE`: the time of the last timer tick, read from the
/// vDSO without a system call (a few ns, against some 20 to 50 ns for the
/// precise clock on a VM).
#[cfg(target_os = "linux")]
#[inline]
fn coarse_tick() -> Tick {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC_COARSE
    // exists on every Linux since 2.6.32. On an error `ts` stays zero, and
    // the count of chunks alone ends batches.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts);
    }
    (ts.tv_sec, ts.tv_nsec)
}

/// Off Linux, no coarse clock: a tick that always moves reads the clock
/// after every chunk.
#[cfg(not(target_os = "linux"))]
fn coarse_tick() -> Tick {
    use std::sync::atomic::{AtomicI64, Ordering};
    static TICKS: AtomicI64 = AtomicI64::new(0);
    (TICKS.fetch_add(1, Ordering::Relaxed), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_chunks_are_read_in_ever_longer_batches_and_a_long_one_ends_them() {
        let start = Instant::now();
        let mut clock = ChunkClock::new(start);
        let mut at = start;
        let mut readings = Vec::new();
        // 3000 chunks of 0.5 µs, read at the batches' ends.
        for _ in 0..3000 {
            at += Duration::from_nanos(500);
            clock.pending += 1;
            if clock.pending >= clock.every {
                readings.push(clock.read_at(at));
            }
        }
        let sizes: Vec<u32> = readings.iter().map(|r| r.chunks).collect();
        assert_eq!(sizes[..11], [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]);
        // Every chunk is in one batch, and the batches' times add up.
        assert_eq!(sizes.iter().sum::<u32>() + clock.pending, 3000);
        let timed: Duration = readings.iter().map(|r| r.took).sum();
        assert_eq!(
            timed,
            at - start - Duration::from_nanos(500 * u64::from(clock.pending))
        );

        // A batch of 1 ms or more: the next chunk is read on its own.
        let pending = Duration::from_nanos(500 * u64::from(clock.pending));
        let long = clock.read_at(at + ChunkClock::SHORT);
        assert_eq!(long.took, pending + ChunkClock::SHORT);
        assert_eq!(clock.every, 1);
        assert!(clock.chunk_ended().is_some());
    }

    #[test]
    fn a_restart_leaves_out_the_time_since_the_last_reading() {
        let start = Instant::now();
        let mut clock = ChunkClock::new(start);
        clock.restart(start + Duration::from_secs(5));
        let reading = clock.read_at(start + Duration::from_secs(6));
        assert_eq!(reading.took, Duration::from_secs(1));
        assert_eq!(reading.chunks, 0);
    }
}
