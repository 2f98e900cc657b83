//! The waits between retries: one exponential backoff with jitter, for every
//! retry loop in the crate (the runner's load, first save and final save,
//! the Postgres store's connections and operations, the S3 store's
//! conditional-request conflicts).

use std::time::Duration;

use tokio::time::Instant;

/// The waits of one retry loop: exponential backoff with decorrelated
/// jitter, from `initial` up to `max`, within an optional deadline.
///
/// The first wait is `initial`; each later one is drawn uniformly between
/// `initial` and three times the previous wait, and capped at `max`
/// ("decorrelated jitter"). Tasks that failed together (a store that
/// restarted under many runners) so spread their retries out instead of
/// hitting it in step, while the waits still grow about one and a half
/// times per retry.
///
/// Time is tokio's: paused test time drives it.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    /// The wait [`next_delay`](Self::next_delay) returns next.
    next: Duration,
    deadline: Option<Instant>,
    started: Instant,
    retries: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// Waits from `initial` up to `max`, without a deadline.
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial.min(max),
            deadline: None,
            started: Instant::now(),
            retries: 0,
            rng: fastrand::Rng::new(),
        }
    }

    /// Gives up on a wait that would end after `deadline`.
    pub(crate) fn until(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Gives up on a wait that would end more than `budget` after now.
    pub(crate) fn within(self, budget: Duration) -> Self {
        let deadline = self.started + budget;
        self.until(deadline)
    }

    /// The jitter drawn from a fixed `seed`, for tests that need the same
    /// waits every time.
    #[cfg(test)]
    fn with_seed(mut self, seed: u64) -> Self {
        self.rng = fastrand::Rng::with_seed(seed);
        self
    }

    /// How long to wait before the next attempt, and counts it as a retry;
    /// `None` when the wait would end after the deadline (give up).
    pub(crate) fn next_delay(&mut self) -> Option<Duration> {
        let delay = self.next;
        if self
            .deadline
            .is_some_and(|deadline| Instant::now() + delay > deadline)
        {
            return None;
        }
        self.next = self.draw(delay);
        self.retries += 1;
        Some(delay)
    }

    /// The wait after `previous`: uniform between `initial` and three times
    /// `previous`, in whole milliseconds (the timer's resolution), at most `max`.
    fn draw(&mut self, previous: Duration) -> Duration {
        let low = nanos(self.initial);
        let high = nanos(previous.saturating_mul(3));
        let drawn = if high > low {
            self.rng.u64(low..high)
        } else {
            low
        };
        Duration::from_millis(drawn / 1_000_000)
            .max(self.initial)
            .min(self.max)
    }

    /// How many waits [`next_delay`](Self::next_delay) has handed out.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn retries(&self) -> u32 {
        self.retries
    }

    /// The time since the backoff was made: how long the loop has tried.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn waits(backoff: &mut Backoff, n: usize) -> Vec<Duration> {
        (0..n).map_while(|_| backoff.next_delay()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_wait_is_the_initial_one_and_later_ones_grow_with_jitter_up_to_the_cap() {
        let mut backoff = Backoff::new(100 * MS, 2000 * MS).with_seed(7);
        let waits = waits(&mut backoff, 40);
        assert_eq!(waits.len(), 40, "no deadline: never gives up");
        assert_eq!(waits[0], 100 * MS);
        for pair in waits.windows(2) {
            let (previous, wait) = (pair[0], pair[1]);
            assert!(wait >= 100 * MS && wait <= 2000 * MS, "{wait:?}");
            assert!(wait < previous * 3, "{previous:?} then {wait:?}");
        }
        assert!(waits.contains(&(2000 * MS)), "reaches the cap: {waits:?}");
        let distinct: std::collections::BTreeSet<_> = waits[1..6].iter().collect();
        assert_eq!(distinct.len(), 5, "jittered: {waits:?}");
        assert_eq!(backoff.retries(), 40);
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_seed_gives_the_same_waits_and_another_seed_others() {
        let seeded = |seed| waits(&mut Backoff::new(50 * MS, 2000 * MS).with_seed(seed), 12);
        assert_eq!(seeded(1), seeded(1));
        assert_ne!(seeded(1), seeded(2));
        assert!(
            seeded(1)
                .iter()
                .all(|wait| wait.subsec_nanos() % 1_000_000 == 0),
            "whole milliseconds: {:?}",
            seeded(1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_on_a_wait_that_would_end_past_the_deadline() {
        let mut backoff = Backoff::new(100 * MS, 2000 * MS)
            .with_seed(3)
            .within(Duration::from_secs(10));
        let mut slept = Duration::ZERO;
        while let Some(wait) = backoff.next_delay() {
            tokio::time::sleep(wait).await;
            slept += wait;
            assert!(slept <= Duration::from_secs(10), "slept {slept:?}");
        }
        assert_eq!(backoff.elapsed(), slept);
        assert!(
            slept > Duration::from_secs(8),
            "gave up early, after {slept:?}"
        );
        assert_eq!(backoff.next_delay(), None, "stays given up");

        // Time spent in the attempts counts too.
        let mut backoff = Backoff::new(100 * MS, 2000 * MS).within(Duration::from_secs(1));
        tokio::time::sleep(950 * MS).await;
        assert_eq!(backoff.next_delay(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_initial_wait_above_the_cap_is_capped() {
        let mut backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(waits(&mut backoff, 3), [Duration::from_secs(1); 3]);
    }
}
