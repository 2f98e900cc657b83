//! Sub-ranges of a range of numbers, dates or timestamps.

use std::fmt::Debug;
use std::ops::Range;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use time::{Date, Duration, OffsetDateTime, PrimitiveDateTime};

use super::{Batch, Limit, Source};
use crate::error::BoxError;

/// A range cut into batches of consecutive sub-ranges: numbers, dates
/// ([`time::Date`]) or timestamps ([`time::OffsetDateTime`],
/// [`time::PrimitiveDateTime`]), a step apart.
///
/// Each batch holds one record, the sub-range `start..next`, covering at
/// most [`Limit::max_records_or_default`] steps (and counting as that many
/// items); the cursor is the next start (`None`: the range's start). For
/// numbers with a step of 1 this is [`Chunk::between`](crate::Chunk::between)
/// as a source:
///
/// ```
/// use spotbatch::source::{Limit, Ranges, Source};
/// use time::macros::date;
/// use time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), spotbatch::BoxError> {
/// let mut numbers = Ranges::new(0..2500_u64, 1);
/// let batch = numbers.next_batch(&None, Limit::records(1000)).await?.ok_or("empty")?;
/// assert_eq!((batch.records(), batch.next(), batch.items()), (&[0..1000][..], &Some(1000), 1000));
///
/// // A week of days per batch.
/// let mut days = Ranges::new(date!(2024 - 01 - 01)..date!(2024 - 02 - 01), Duration::DAY);
/// let first = days.next_batch(&None, Limit::records(7)).await?.ok_or("empty")?;
/// assert_eq!(first.records(), &[date!(2024 - 01 - 01)..date!(2024 - 01 - 08)]);
/// assert_eq!(days.total_records(), Some(31));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Ranges<T: Step> {
    range: Range<T>,
    step: T::Width,
}

impl<T: Step> Ranges<T> {
    /// The sub-ranges of `range` (end excluded), `step` apart: 1 for every
    /// number, [`Duration::DAY`] for every day, [`Duration::HOUR`] for every
    /// hour. The last sub-range ends at `range.end`, a step or not.
    ///
    /// # Panics
    ///
    /// When `step` is not positive (for dates: less than a whole day), as
    /// [`Iterator::step_by`] does with 0.
    pub fn new(range: Range<T>, step: T::Width) -> Self {
        assert!(
            T::is_step(step),
            "Ranges::new: the step {step:?} is not positive (dates step by whole days)"
        );
        Self { range, step }
    }

    /// The whole range.
    pub fn range(&self) -> &Range<T> {
        &self.range
    }
}

#[async_trait]
impl<T: Step> Source for Ranges<T> {
    type Cursor = Option<T>;
    type Record = Range<T>;

    async fn next_batch(
        &mut self,
        from: &Option<T>,
        limit: Limit,
    ) -> Result<Option<Batch<Self>>, BoxError> {
        let start = from.clone().unwrap_or_else(|| self.range.start.clone());
        if start >= self.range.end {
            return Ok(None);
        }
        let next = start
            .forward(self.step, limit.max_records_or_default())
            .filter(|next| *next < self.range.end)
            .unwrap_or_else(|| self.range.end.clone());
        let items = T::steps_between(&start, &next, self.step);
        Ok(Some(
            Batch::new(vec![start..next.clone()], Some(next)).with_items(items),
        ))
    }

    fn total_records(&self) -> Option<u64> {
        Some(T::steps_between(
            &self.range.start,
            &self.range.end,
            self.step,
        ))
    }
}

/// A value a [`Ranges`] can step through: an integer, a date, a timestamp.
pub trait Step:
    Clone + PartialOrd + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The distance between two steps: `u64` for integers, [`Duration`] for
    /// dates and timestamps.
    type Width: Copy + Debug + Send + Sync + 'static;

    /// Whether `width` moves forward.
    fn is_step(width: Self::Width) -> bool;

    /// `self` plus `steps` times `width`; `None` past the type's range.
    fn forward(&self, width: Self::Width, steps: u64) -> Option<Self>;

    /// How many steps of `width` from `start` reach or pass `end` (0 when
    /// `end <= start`).
    fn steps_between(start: &Self, end: &Self, width: Self::Width) -> u64;
}

macro_rules! unsigned_step {
    ($($t:ty),*) => {$(
        impl Step for $t {
            type Width = u64;

            fn is_step(width: u64) -> bool {
                width > 0
            }

            fn forward(&self, width: u64, steps: u64) -> Option<Self> {
                let by = <$t>::try_from(width.checked_mul(steps)?).ok()?;
                self.checked_add(by)
            }

            fn steps_between(start: &Self, end: &Self, width: u64) -> u64 {
                let span = u64::try_from(end.saturating_sub(*start)).unwrap_or(u64::MAX);
                span.div_ceil(width)
            }
        }
    )*};
}

macro_rules! signed_step {
    ($($t:ty),*) => {$(
        impl Step for $t {
            type Width = u64;

            fn is_step(width: u64) -> bool {
                width > 0
            }

            fn forward(&self, width: u64, steps: u64) -> Option<Self> {
                let by = width.checked_mul(steps)?;
                i128::from(*self)
                    .checked_add(i128::from(by))
                    .and_then(|n| <$t>::try_from(n).ok())
            }

            fn steps_between(start: &Self, end: &Self, width: u64) -> u64 {
                let span = (i128::from(*end) - i128::from(*start)).max(0);
                u64::try_from(span.div_euclid(i128::from(width)) + i128::from(span.rem_euclid(i128::from(width)) != 0))
                    .unwrap_or(u64::MAX)
            }
        }
    )*};
}

unsigned_step!(u32, u64);
signed_step!(i32, i64);

/// `width * steps`, `None` past what a [`Duration`] holds.
fn times(width: Duration, steps: u64) -> Option<Duration> {
    let nanos = width.whole_nanoseconds().checked_mul(i128::from(steps))?;
    let secs = i64::try_from(nanos.div_euclid(1_000_000_000)).ok()?;
    let sub = i32::try_from(nanos.rem_euclid(1_000_000_000)).ok()?;
    Some(Duration::new(secs, sub))
}

/// Steps of `width` in `span`, rounded up.
fn steps_in(span: Duration, width: Duration) -> u64 {
    let (span, width) = (span.whole_nanoseconds(), width.whole_nanoseconds());
    if span <= 0 || width <= 0 {
        return 0;
    }
    u64::try_from(span.div_euclid(width) + i128::from(span.rem_euclid(width) != 0))
        .unwrap_or(u64::MAX)
}

impl Step for Date {
    type Width = Duration;

    fn is_step(width: Duration) -> bool {
        width.whole_days() > 0
    }

    fn forward(&self, width: Duration, steps: u64) -> Option<Self> {
        let days = Duration::days(width.whole_days());
        self.checked_add(times(days, steps)?)
    }

    fn steps_between(start: &Self, end: &Self, width: Duration) -> u64 {
        steps_in(*end - *start, Duration::days(width.whole_days()))
    }
}

impl Step for PrimitiveDateTime {
    type Width = Duration;

    fn is_step(width: Duration) -> bool {
        width.is_positive()
    }

    fn forward(&self, width: Duration, steps: u64) -> Option<Self> {
        self.checked_add(times(width, steps)?)
    }

    fn steps_between(start: &Self, end: &Self, width: Duration) -> u64 {
        steps_in(*end - *start, width)
    }
}

impl Step for OffsetDateTime {
    type Width = Duration;

    fn is_step(width: Duration) -> bool {
        width.is_positive()
    }

    fn forward(&self, width: Duration, steps: u64) -> Option<Self> {
        self.checked_add(times(width, steps)?)
    }

    fn steps_between(start: &Self, end: &Self, width: Duration) -> u64 {
        steps_in(*end - *start, width)
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // a batch of one range is meant
mod tests {
    use time::macros::{date, datetime};

    use super::*;

    async fn all<T: Step>(mut ranges: Ranges<T>, limit: Limit) -> Vec<(Range<T>, u64)> {
        let mut cursor = None;
        let mut out = Vec::new();
        while let Some(batch) = ranges.next_batch(&cursor, limit).await.unwrap() {
            let items = batch.items();
            let (records, next) = batch.into_parts();
            assert_eq!(records.len(), 1);
            out.push((records[0].clone(), items));
            cursor = next;
        }
        out
    }

    #[tokio::test]
    async fn numbers_cover_the_range_once_and_end_at_its_end() {
        let got = all(Ranges::new(5..2505_u64, 1), Limit::records(1000)).await;
        assert_eq!(
            got,
            vec![(5..1005, 1000), (1005..2005, 1000), (2005..2505, 500)]
        );
        let got = all(Ranges::new(-7..8_i64, 4), Limit::records(2)).await;
        assert_eq!(got, vec![(-7..1, 2), (1..8, 2)]);
        assert_eq!(Ranges::new(-7..8_i64, 4).total_records(), Some(4));
        assert!(all(Ranges::new(3..3_u64, 1), Limit::default())
            .await
            .is_empty());
        // Near the type's end: no overflow.
        let got = all(Ranges::new(u32::MAX - 3..u32::MAX, 1), Limit::records(10)).await;
        assert_eq!(got, vec![(u32::MAX - 3..u32::MAX, 3)]);
    }

    #[tokio::test]
    async fn dates_and_timestamps_step_by_a_duration() {
        let got = all(
            Ranges::new(date!(2024 - 02 - 26)..date!(2024 - 03 - 04), Duration::DAY),
            Limit::records(3),
        )
        .await;
        assert_eq!(
            got,
            vec![
                (date!(2024 - 02 - 26)..date!(2024 - 02 - 29), 3),
                (date!(2024 - 02 - 29)..date!(2024 - 03 - 03), 3),
                (date!(2024 - 03 - 03)..date!(2024 - 03 - 04), 1),
            ]
        );
        let start = datetime!(2024-01-01 00:00 UTC);
        let got = all(
            Ranges::new(start..datetime!(2024-01-01 05:30 UTC), Duration::HOUR),
            Limit::records(2),
        )
        .await;
        assert_eq!(
            got,
            vec![
                (start..datetime!(2024-01-01 02:00 UTC), 2),
                (
                    datetime!(2024-01-01 02:00 UTC)..datetime!(2024-01-01 04:00 UTC),
                    2
                ),
                (
                    datetime!(2024-01-01 04:00 UTC)..datetime!(2024-01-01 05:30 UTC),
                    2
                ),
            ]
        );
        let naive = Ranges::new(
            datetime!(2024-01-01 00:00)..datetime!(2024-01-02 00:00),
            Duration::minutes(90),
        );
        assert_eq!(naive.total_records(), Some(16));
    }

    #[tokio::test]
    async fn a_cursor_resumes_where_it_points() {
        let mut ranges = Ranges::new(0..100_u64, 1);
        let batch = ranges
            .next_batch(&Some(40), Limit::records(25))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(batch.records(), &[40..65]);
        assert!(ranges
            .next_batch(&Some(100), Limit::records(25))
            .await
            .unwrap()
            .is_none());
    }

    #[test]
    #[should_panic(expected = "not positive")]
    fn a_date_step_shorter_than_a_day_is_refused() {
        let _ = Ranges::new(date!(2024 - 01 - 01)..date!(2024 - 01 - 02), Duration::HOUR);
    }
}
