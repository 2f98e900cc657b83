//! When to checkpoint.

use std::time::Duration;

/// When the runner writes a periodic checkpoint: after a number of chunks,
/// after an interval, or whichever comes first. A checkpoint is always
/// written at completion, at interruption and at failure, whatever the policy.
///
/// Built from [`Every`]: `Every::chunks(100).or_seconds(5)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    chunks: Option<u64>,
    interval: Option<Duration>,
}

/// Constructors of [`CheckpointPolicy`].
#[derive(Debug)]
pub struct Every;

impl Every {
    /// After every chunk.
    pub fn chunk() -> CheckpointPolicy {
        Self::chunks(1)
    }

    /// After every `n` chunks (`0` means never by count).
    pub fn chunks(n: u64) -> CheckpointPolicy {
        CheckpointPolicy::at_exit_only().or_chunks(n)
    }

    /// After the first chunk that ends at least `secs` seconds after the last checkpoint.
    pub fn seconds(secs: u64) -> CheckpointPolicy {
        Self::interval(Duration::from_secs(secs))
    }

    /// After the first chunk that ends at least `interval` after the last checkpoint.
    pub fn interval(interval: Duration) -> CheckpointPolicy {
        CheckpointPolicy::at_exit_only().or_interval(interval)
    }
}

impl CheckpointPolicy {
    /// No periodic checkpoints: only at completion, interruption and failure.
    pub const fn at_exit_only() -> Self {
        Self {
            chunks: None,
            interval: None,
        }
    }

    /// Also checkpoint after every `n` chunks (`0` removes the count trigger).
    pub const fn or_chunks(mut self, n: u64) -> Self {
        self.chunks = if n == 0 { None } else { Some(n) };
        self
    }

    /// Also checkpoint once `secs` seconds have passed since the last one.
    pub const fn or_seconds(self, secs: u64) -> Self {
        self.or_interval(Duration::from_secs(secs))
    }

    /// Also checkpoint once `interval` has passed since the last one.
    pub const fn or_interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    /// The chunk count that triggers a checkpoint, if any.
    pub const fn chunks(&self) -> Option<u64> {
        self.chunks
    }

    /// The interval that triggers a checkpoint, if any.
    pub const fn interval(&self) -> Option<Duration> {
        self.interval
    }

    /// Whether a checkpoint is due, `chunks` chunks and `elapsed` time after the last one.
    pub fn is_due(&self, chunks: u64, elapsed: Duration) -> bool {
        chunks > 0
            && (self.chunks.is_some_and(|n| chunks >= n)
                || self.interval.is_some_and(|t| elapsed >= t))
    }
}

impl Default for CheckpointPolicy {
    /// Every 100 chunks or 5 seconds, whichever comes first.
    fn default() -> Self {
        Every::chunks(100).or_seconds(5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn by_count() {
        let p = Every::chunks(3);
        assert!(!p.is_due(2, 100 * S));
        assert!(p.is_due(3, Duration::ZERO));
        assert!(p.is_due(4, Duration::ZERO));
        assert!(Every::chunk().is_due(1, Duration::ZERO));
    }

    #[test]
    fn by_time() {
        let p = Every::seconds(5);
        assert!(!p.is_due(1_000_000, 4 * S));
        assert!(p.is_due(1, 5 * S));
    }

    #[test]
    fn whichever_comes_first() {
        let p = Every::chunks(100).or_seconds(5);
        assert!(!p.is_due(99, 4 * S));
        assert!(p.is_due(100, Duration::ZERO));
        assert!(p.is_due(1, 5 * S));
        assert_eq!(p, CheckpointPolicy::default());
    }

    #[test]
    fn never_without_a_finished_chunk_and_never_when_exit_only() {
        assert!(!Every::chunk().is_due(0, 100 * S));
        assert!(!Every::seconds(0).is_due(0, S));
        assert!(Every::seconds(0).is_due(1, Duration::ZERO));
        assert!(!CheckpointPolicy::at_exit_only().is_due(u64::MAX, Duration::MAX));
        assert!(!Every::chunks(0).is_due(u64::MAX, Duration::MAX));
    }
}

/// How the runner retries a chunk whose attempt failed with a
/// [`transient`](crate::transient) error: up to a number of attempts and
/// within a time limit, waiting between attempts with exponential backoff
/// and jitter. Errors not marked transient (and panics) are not retried.
///
/// A retry never starts after a stop request's drain deadline, and a stop
/// request during a wait ends it: the run stops with the checkpoint at the
/// last finished chunk. Each retry is counted in the run's
/// [`RunStats::retries`](crate::RunStats::retries) and logged.
///
/// The default: 3 attempts in all, waits from 100 ms up to 10 s, no time limit.
///
/// ```
/// use std::time::Duration;
/// use spotbatch::RetryPolicy;
///
/// let policy = RetryPolicy::attempts(5)
///     .backoff(Duration::from_millis(200), Duration::from_secs(30))
///     .within(Duration::from_secs(120));
/// assert_eq!(policy.max_attempts(), 5);
/// assert_eq!(RetryPolicy::never().max_attempts(), 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    attempts: u32,
    initial: Duration,
    max: Duration,
    within: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::attempts(3)
    }
}

impl RetryPolicy {
    /// Up to `attempts` attempts per chunk in all (the first included; 0 is taken as 1).
    pub const fn attempts(attempts: u32) -> Self {
        Self {
            attempts: if attempts == 0 { 1 } else { attempts },
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            within: None,
        }
    }

    /// No retries: a chunk's first error fails it.
    pub const fn never() -> Self {
        Self::attempts(1)
    }

    /// Waits from `initial` (the first) up to `max`, growing about 1.5× per
    /// retry with decorrelated jitter.
    #[must_use]
    pub const fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial = initial;
        self.max = max;
        self
    }

    /// No retry starts more than `limit` after the chunk's first attempt did.
    #[must_use]
    pub const fn within(mut self, limit: Duration) -> Self {
        self.within = Some(limit);
        self
    }

    /// The most attempts per chunk, the first included.
    pub const fn max_attempts(&self) -> u32 {
        self.attempts
    }

    /// The backoff of one chunk's retries.
    pub(crate) fn start(&self) -> crate::retry::Backoff {
        let backoff = crate::retry::Backoff::new(self.initial, self.max);
        match self.within {
            Some(limit) => backoff.within(limit),
            None => backoff,
        }
    }
}

/// How many chunks that still fail after their retries (errors and panics)
/// the runner may skip: it records each in the checkpoint
/// ([`Checkpoint::skipped`](crate::Checkpoint::skipped)) and goes on past
/// it, and `spotbatch redrive` has the next run process them again. A
/// failure past the limit fails the run, as every failure does without
/// skips: the final checkpoint (status `failed`) stays at the last chunk
/// that finished or was skipped.
///
/// The limit counts the chunks skipped and not yet redriven, over every run
/// of the job (the checkpoint's list), and never exceeds
/// [`Checkpoint::SKIPPED_LEN`](crate::Checkpoint::SKIPPED_LEN). A chunk
/// abandoned on a stop request is never skipped: the next run does it.
///
/// The default is [`SkipPolicy::none`]: the first failure fails the run.
///
/// ```
/// use spotbatch::SkipPolicy;
///
/// // Up to 5 skipped chunks.
/// assert!(SkipPolicy::at_most(5).allows(5, 10));
/// assert!(!SkipPolicy::at_most(5).allows(6, 1_000));
/// // Up to a quarter of the chunks (finished or skipped), rounded up.
/// assert!(SkipPolicy::fraction(0.25).allows(1, 1));
/// assert!(!SkipPolicy::fraction(0.25).allows(2, 4));
/// assert!(SkipPolicy::fraction(0.25).allows(2, 5));
/// assert!(!SkipPolicy::none().allows(1, 1_000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SkipPolicy {
    limit: SkipLimit,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
enum SkipLimit {
    #[default]
    None,
    AtMost(u64),
    Fraction(f64),
}

impl SkipPolicy {
    /// No chunk is skipped (the default).
    pub const fn none() -> Self {
        Self {
            limit: SkipLimit::None,
        }
    }

    /// Up to `n` chunks skipped and not yet redriven.
    pub const fn at_most(n: u64) -> Self {
        Self {
            limit: SkipLimit::AtMost(n),
        }
    }

    /// Up to `fraction` (0 to 1) of the job's chunks, finished or skipped,
    /// rounded up: the first failing chunk is always skippable (1 of 1
    /// rounds up from any fraction above zero), the second once the job has
    /// seen more than `1 / fraction` chunks. A fraction of zero or below, or not a
    /// number, skips nothing; above 1 is taken as 1.
    pub fn fraction(fraction: f64) -> Self {
        if fraction.is_nan() || fraction <= 0.0 {
            return Self::none();
        }
        Self {
            limit: SkipLimit::Fraction(fraction.min(1.0)),
        }
    }

    /// Whether `skipped` chunks skipped (the one about to be included) are
    /// within the limit, out of `chunks` seen (finished and skipped, the one
    /// about to be skipped included). Never more than
    /// [`Checkpoint::SKIPPED_LEN`](crate::Checkpoint::SKIPPED_LEN).
    pub fn allows(&self, skipped: u64, chunks: u64) -> bool {
        let cap = crate::Checkpoint::SKIPPED_LEN as u64;
        let limit = match self.limit {
            SkipLimit::None => 0,
            SkipLimit::AtMost(n) => n,
            #[allow(
                clippy::cast_precision_loss,
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss
            )] // a count of chunks, rounded up; positive and far below 2^52
            SkipLimit::Fraction(f) => (f * chunks as f64).ceil() as u64,
        };
        skipped <= limit.min(cap)
    }

    /// Whether any chunk may be skipped.
    pub(crate) fn skips_any(&self) -> bool {
        !matches!(self.limit, SkipLimit::None | SkipLimit::AtMost(0))
    }
}
