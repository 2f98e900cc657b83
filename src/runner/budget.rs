//! The drain budget: how the grace period is spent after a stop request.
//! The drain ends `reserve` before the stop's final deadline (the end of
//! the grace period, or an earlier deadline a request brings).

use std::time::Duration;

use crate::error::Error;

/// How the grace period is spent after a stop request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budget {
    /// From the stop request to the platform's SIGKILL.
    pub(super) grace: Duration,
    /// Kept back at the end of the grace period for the final checkpoint.
    pub(super) reserve: Duration,
    /// How long a cancelled chunk may take to return before it is dropped.
    pub(super) cooperate: Duration,
}

impl Budget {
    /// A budget for `grace`, keeping `reserve` (default: a quarter of the
    /// grace period, at most 5 s) for the final checkpoint; a cancelled chunk
    /// gets a quarter of the reserve, at most 1 s, to return.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `grace` is zero or `reserve` is not shorter than it.
    pub(super) fn new(grace: Duration, reserve: Option<Duration>) -> Result<Self, Error> {
        if grace.is_zero() {
            return Err(Error::Config(
                "the grace period must be longer than zero".into(),
            ));
        }
        let reserve = reserve.unwrap_or_else(|| (grace / 4).min(Duration::from_secs(5)));
        if reserve >= grace {
            return Err(Error::Config(format!(
                "the checkpoint reserve ({reserve:?}) must be shorter than the grace period ({grace:?})"
            )));
        }
        Ok(Self {
            grace,
            reserve,
            cooperate: (reserve / 4).min(Duration::from_secs(1)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_defaults_and_validation() {
        let b = Budget::new(Duration::from_secs(30), None).unwrap();
        assert_eq!(
            (b.reserve, b.grace - b.reserve),
            (Duration::from_secs(5), Duration::from_secs(25))
        );
        assert_eq!(b.cooperate, Duration::from_secs(1));
        let short = Budget::new(Duration::from_secs(2), None).unwrap();
        assert_eq!(short.reserve, Duration::from_millis(500));
        assert_eq!(short.cooperate, Duration::from_millis(125));
        assert!(Budget::new(Duration::ZERO, None).is_err());
        let err = Budget::new(Duration::from_secs(5), Some(Duration::from_secs(5))).unwrap_err();
        assert!(err.to_string().contains("reserve"), "{err}");
    }
}
