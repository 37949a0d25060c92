//! Time as an input.
//!
//! The limiter never reads the clock inside its maths: it asks a [`Clock`] once per decision
//! and passes `now` down. Time is nanoseconds since the Unix epoch in a `u64` (good until
//! 2554), so the same number feeds GCRA arithmetic and the Unix-seconds `X-RateLimit-Reset`.
//! [`SystemClock`] is monotonic (anchored to the wall clock once, then driven by
//! `Instant`), so a wall-clock step never makes a limit forget or double-count;
//! [`ManualClock`] is the test fake.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch.
pub type Nanos = u64;

/// Nanoseconds in a second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// Now, in nanoseconds since the Unix epoch.
    fn now(&self) -> Nanos;
}

/// The real clock: monotonic, anchored to the wall clock when created. It reads the CPU's
/// time-stamp counter through `quanta` (a few ns, against ~20 ns for `clock_gettime` on
/// this class of machine), falling back to the OS clock where the TSC is unusable.
#[derive(Debug, Clone)]
pub struct SystemClock {
    clock: quanta::Clock,
    anchor_raw: u64,
    anchor_unix: Nanos,
}

impl Default for SystemClock {
    fn default() -> Self {
        let clock = quanta::Clock::new();
        SystemClock {
            anchor_raw: clock.raw(),
            clock,
            anchor_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        }
    }
}

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Nanos {
        let elapsed = self.clock.delta_as_nanos(self.anchor_raw, self.clock.raw());
        self.anchor_unix.saturating_add(elapsed)
    }
}

/// A clock that moves only when told to. Clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading `start` nanoseconds since the epoch.
    pub fn new(start: Nanos) -> ManualClock {
        ManualClock(Arc::new(AtomicU64::new(start)))
    }

    /// A clock at a given Unix second.
    pub fn at_unix_secs(secs: u64) -> ManualClock {
        ManualClock::new(secs.saturating_mul(NANOS_PER_SEC))
    }

    /// Moves time forward.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(by, Ordering::SeqCst);
    }

    /// Sets the time.
    pub fn set(&self, now: Nanos) {
        self.0.store(now, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Nanos {
        self.0.load(Ordering::SeqCst)
    }
}

impl<C: Clock> Clock for Arc<C> {
    fn now(&self) -> Nanos {
        (**self).now()
    }
}

/// Whole seconds, rounded up: what a header may advertise without being early.
pub fn ceil_secs(nanos: u64) -> u64 {
    nanos.div_ceil(NANOS_PER_SEC)
}
