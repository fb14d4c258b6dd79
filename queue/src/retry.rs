//! When a failed task runs again.
//!
//! The schedule is asynq's default, the one the original service used: retry
//! n (n earlier retries) waits n^4 + 15 + rand(0..=30)*(n+1) units, one unit
//! being a second by default. Ten retries spread over about 4.5 hours, so an
//! outage of the mail server for an afternoon delays the emails sent during
//! it instead of archiving them. The unit can be made smaller to compress the
//! schedule (tests do), and every delay is capped.

use std::time::Duration;

use rand::Rng;

/// The backoff schedule of failed tasks: its unit and its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The schedule's second.
    pub unit: Duration,
    /// The longest single delay.
    pub max: Duration,
}

impl RetryPolicy {
    /// The delay before the next attempt of a task that was retried
    /// `retried` times before.
    pub fn delay(&self, retried: u32) -> Duration {
        self.delay_with(retried, rand::rng().random_range(0..=30))
    }

    /// The delay with the random term fixed (0..=30).
    fn delay_with(&self, retried: u32, jitter: u32) -> Duration {
        let n = u64::from(retried);
        let units = n
            .saturating_pow(4)
            .saturating_add(15)
            .saturating_add(u64::from(jitter).saturating_mul(n + 1));
        let units = u32::try_from(units).unwrap_or(u32::MAX);
        self.unit.saturating_mul(units).min(self.max)
    }

    /// The shortest and longest time from the first failure to the last of
    /// `retries` retries.
    pub fn horizon(&self, retries: u32) -> (Duration, Duration) {
        (0..retries).fold((Duration::ZERO, Duration::ZERO), |(lo, hi), n| {
            (lo + self.delay_with(n, 0), hi + self.delay_with(n, 30))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: RetryPolicy = RetryPolicy {
        unit: Duration::from_secs(1),
        max: Duration::from_secs(24 * 3600),
    };

    #[test]
    fn the_schedule_is_asynqs() {
        assert_eq!(DEFAULT.delay_with(0, 0), Duration::from_secs(15));
        assert_eq!(DEFAULT.delay_with(3, 10), Duration::from_secs(81 + 15 + 40));
        for n in 0..12 {
            let d = DEFAULT.delay(n);
            assert!(d >= DEFAULT.delay_with(n, 0) && d <= DEFAULT.delay_with(n, 30));
        }
    }

    #[test]
    fn ten_retries_take_about_four_and_a_half_hours() {
        let (lo, hi) = DEFAULT.horizon(10);
        assert!(lo >= Duration::from_secs(4 * 3600 + 15 * 60), "{lo:?}");
        assert!(hi <= Duration::from_secs(5 * 3600), "{hi:?}");
    }

    #[test]
    fn a_small_unit_compresses_and_the_cap_bounds() {
        let fast = RetryPolicy {
            unit: Duration::from_millis(1),
            max: Duration::from_millis(200),
        };
        assert_eq!(fast.delay_with(0, 0), Duration::from_millis(15));
        assert_eq!(fast.delay_with(9, 30), Duration::from_millis(200));
        assert_eq!(DEFAULT.delay_with(u32::MAX, 30), DEFAULT.max);
    }
}
