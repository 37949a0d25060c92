//! Quotas: N requests per window, and concurrency caps.

use crate::clock::NANOS_PER_SEC;
use std::num::NonZeroU64;
use std::time::Duration;
use thiserror::Error;

/// The shortest window weir accepts.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
/// The longest window weir accepts.
pub const MAX_WINDOW: Duration = Duration::from_secs(86_400);

/// A quota that cannot be built.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuotaError {
    /// The window is outside 1 s ..= 1 day.
    #[error("window {0:?} is outside the supported range 1s..=1 day")]
    Window(Duration),
    /// The count is zero.
    #[error("a quota must allow at least one request")]
    Zero,
    /// More requests than nanoseconds in the window: the emission interval would be 0.
    #[error("{count} requests per {window:?} is finer than one per nanosecond")]
    TooFine {
        /// Requests.
        count: u64,
        /// Window.
        window: Duration,
    },
}

/// `count` requests per `window`, enforced by GCRA: a burst of up to `count` at once,
/// refilled smoothly at one request per `window / count`.
///
/// The emission interval is `window / count` rounded *up* to the nanosecond, so a quota is
/// never exceeded: the rounding can only make the effective window longer, by at most
/// `count` nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    count: NonZeroU64,
    window: Duration,
    emission: u64,
}

impl Quota {
    /// `count` per `window`; the window must be within 1 s ..= 1 day.
    pub fn new(count: u64, window: Duration) -> Result<Quota, QuotaError> {
        let count = NonZeroU64::new(count).ok_or(QuotaError::Zero)?;
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&window) {
            return Err(QuotaError::Window(window));
        }
        let window_ns = u64::try_from(window.as_nanos()).map_err(|_| QuotaError::Window(window))?;
        let emission = window_ns.div_ceil(count.get());
        if window_ns / count.get() == 0 {
            return Err(QuotaError::TooFine {
                count: count.get(),
                window,
            });
        }
        Ok(Quota {
            count,
            window,
            emission,
        })
    }

    /// `count` per second.
    pub fn per_second(count: u64) -> Result<Quota, QuotaError> {
        Quota::new(count, Duration::from_secs(1))
    }

    /// `count` per minute.
    pub fn per_minute(count: u64) -> Result<Quota, QuotaError> {
        Quota::new(count, Duration::from_secs(60))
    }

    /// `count` per hour.
    pub fn per_hour(count: u64) -> Result<Quota, QuotaError> {
        Quota::new(count, Duration::from_secs(3600))
    }

    /// `count` per day.
    pub fn per_day(count: u64) -> Result<Quota, QuotaError> {
        Quota::new(count, Duration::from_secs(86_400))
    }

    /// Requests per window (also the burst).
    pub fn count(&self) -> u64 {
        self.count.get()
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The window in whole seconds (for `RateLimit-Policy`'s `w`).
    pub fn window_secs(&self) -> u64 {
        self.window.as_secs().max(1)
    }

    /// Nanoseconds between two requests at the sustained rate (rounded up).
    pub fn emission_ns(&self) -> u64 {
        self.emission
    }

    /// The bucket's capacity in nanoseconds: `count * emission`.
    pub fn capacity_ns(&self) -> u64 {
        self.emission.saturating_mul(self.count.get())
    }
}

impl std::fmt::Display for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w = self.window.as_secs();
        match w {
            1 => write!(f, "{}/s", self.count),
            60 => write!(f, "{}/min", self.count),
            3600 => write!(f, "{}/h", self.count),
            86_400 => write!(f, "{}/day", self.count),
            _ => write!(f, "{} per {}s", self.count, self.window.as_secs_f64()),
        }
    }
}

/// Nanoseconds → whole seconds, for display.
pub fn secs(ns: u64) -> f64 {
    ns as f64 / NANOS_PER_SEC as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert_eq!(Quota::per_minute(0), Err(QuotaError::Zero));
        assert!(matches!(
            Quota::new(1, Duration::from_millis(999)),
            Err(QuotaError::Window(_))
        ));
        assert!(matches!(
            Quota::new(1, Duration::from_secs(86_401)),
            Err(QuotaError::Window(_))
        ));
        assert!(matches!(
            Quota::per_second(2_000_000_000),
            Err(QuotaError::TooFine { .. })
        ));
        let q = Quota::per_minute(7).expect("valid");
        assert_eq!(q.emission_ns(), 8_571_428_572, "rounded up");
        assert!(q.capacity_ns() >= 60 * NANOS_PER_SEC);
        assert_eq!(q.to_string(), "7/min");
    }
}
