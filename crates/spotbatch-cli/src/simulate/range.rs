//! Durations on the command line: `30`, `2s`, `500ms`, `1.5m`, and ranges `2s..10s`.

use std::time::Duration;

/// A random delay between `min` and `max` (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DelayRange {
    pub(crate) min: Duration,
    pub(crate) max: Duration,
}

impl DelayRange {
    /// A delay drawn uniformly from the range.
    pub(crate) fn pick(&self, rng: &mut fastrand::Rng) -> Duration {
        let (lo, hi) = (nanos(self.min), nanos(self.max));
        Duration::from_nanos(rng.u64(lo..=hi))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `MIN..MAX` or a single fixed duration.
pub(crate) fn parse_range(s: &str) -> Result<DelayRange, String> {
    let (min, max) = match s.split_once("..") {
        Some((a, b)) => (parse_duration(a)?, parse_duration(b)?),
        None => {
            let d = parse_duration(s)?;
            (d, d)
        }
    };
    if min > max {
        return Err(format!("{s:?}: the minimum is above the maximum"));
    }
    if max.is_zero() {
        return Err(format!("{s:?}: the maximum must be above zero"));
    }
    Ok(DelayRange { min, max })
}

/// A number with an optional unit: `ms`, `s` (the default), `m`, `h`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30, 2s, 500ms, 1.5m, 1h)"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// A probability between 0 and 1.
pub(crate) fn parse_ratio(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number between 0 and 1"))?;
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(format!("{s:?} is not between 0 and 1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("0.25").unwrap(), Duration::from_millis(250));
        for bad in ["", "s", "-1s", "2 weeks", "1x", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges() {
        let r = parse_range("500ms..3s").unwrap();
        assert_eq!(
            (r.min, r.max),
            (Duration::from_millis(500), Duration::from_secs(3))
        );
        let fixed = parse_range("5s").unwrap();
        assert_eq!(
            (fixed.min, fixed.max),
            (Duration::from_secs(5), Duration::from_secs(5))
        );
        assert!(parse_range("10s..2s").is_err());
        assert!(parse_range("0..0").is_err());
        assert!(parse_range("2s..").is_err());

        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..1000 {
            let d = r.pick(&mut rng);
            assert!(d >= r.min && d <= r.max, "{d:?}");
        }
        assert_eq!(fixed.pick(&mut rng), Duration::from_secs(5));
    }

    #[test]
    fn ratios() {
        assert_eq!(parse_ratio("0.2").unwrap(), 0.2);
        assert_eq!(parse_ratio("1").unwrap(), 1.0);
        assert!(parse_ratio("1.5").is_err());
        assert!(parse_ratio("-0.1").is_err());
        assert!(parse_ratio("x").is_err());
    }
}
