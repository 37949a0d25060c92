//! One quota on one counter: GCRA with no keys, no policy and no store.
//!
//! For a limit that is the same for every caller inside one process — an outbound client's
//! own pace towards an API, a worker pool's intake, a global safety valve. It is the
//! counterpart of governor's "direct" limiter, and the floor of what a weir decision costs:
//! a keyed [`Limiter`](crate::Limiter) decision is this plus finding the key's counter.
//! The arithmetic is the policy engine's ([`gcra::check_raw`]), so the answers are the
//! same to the nanosecond: a request retried exactly after [`DirectDecision::retry_after`]
//! is admitted, absent other traffic.
//!
//! The decision is small and `Copy`; what needs a division (remaining, the limit) is
//! computed only when asked for.

use crate::clock::{ceil_secs, Clock, Nanos, SystemClock};
use crate::gcra;
use crate::limiter::Outcome;
use crate::quota::Quota;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A limiter with one quota and one counter.
#[derive(Debug)]
pub struct DirectLimiter<C: Clock = SystemClock> {
    /// The theoretical arrival time: the instant the bucket is whole again.
    tat: AtomicU64,
    emission_ns: u64,
    capacity_ns: u64,
    count: u64,
    clock: C,
}

/// A [`DirectLimiter`]'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectDecision {
    /// Admitted, rejected for now, or never (the cost exceeds the quota).
    pub outcome: Outcome,
    /// When the decision was made (ns since the Unix epoch).
    pub now: Nanos,
    /// The counter after the decision (admitted) or as found (rejected).
    tat: Nanos,
    retry_after_ns: u64,
    emission_ns: u64,
    capacity_ns: u64,
}

impl DirectDecision {
    /// Whether the request may proceed.
    pub fn is_admitted(&self) -> bool {
        self.outcome == Outcome::Admitted
    }

    /// How long until this same request would be admitted (0 when admitted or never).
    pub fn retry_after(&self) -> Duration {
        Duration::from_nanos(self.retry_after_ns)
    }

    /// `Retry-After` in whole seconds, rounded up so a client is never early.
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after_ns)
    }

    /// The quota's count (requests per window).
    pub fn limit(&self) -> u64 {
        self.capacity_ns / self.emission_ns.max(1)
    }

    /// Requests left in the window after this decision.
    pub fn remaining(&self) -> u64 {
        gcra::remaining_raw(self.emission_ns, self.capacity_ns, self.tat, self.now)
    }

    /// Time until the quota is whole again.
    pub fn reset_after(&self) -> Duration {
        Duration::from_nanos(self.tat.saturating_sub(self.now))
    }

    /// When the quota is whole again, in Unix seconds (rounded up).
    pub fn reset_unix(&self) -> u64 {
        ceil_secs(self.tat.max(self.now))
    }
}

impl DirectLimiter<SystemClock> {
    /// A limiter on the system clock.
    pub fn new(quota: Quota) -> Self {
        DirectLimiter::with_clock(quota, SystemClock::default())
    }
}

impl<C: Clock> DirectLimiter<C> {
    /// A limiter on `clock` (a [`ManualClock`](crate::ManualClock) in tests).
    pub fn with_clock(quota: Quota, clock: C) -> Self {
        DirectLimiter {
            tat: AtomicU64::new(0),
            emission_ns: quota.emission_ns(),
            capacity_ns: quota.capacity_ns(),
            count: quota.count(),
            clock,
        }
    }

    /// Decides one request of cost 1.
    #[inline]
    pub fn check(&self) -> DirectDecision {
        self.check_n(1)
    }

    /// Decides one request of cost `cost` (0 counts as 1). A cost above the quota's count
    /// is [`Outcome::CostExceedsLimit`] and touches nothing.
    #[inline]
    pub fn check_n(&self, cost: u64) -> DirectDecision {
        let now = self.clock.now();
        let cost = cost.max(1);
        let mut decision = DirectDecision {
            outcome: Outcome::Admitted,
            now,
            tat: now,
            retry_after_ns: 0,
            emission_ns: self.emission_ns,
            capacity_ns: self.capacity_ns,
        };
        let mut current = self.tat.load(Ordering::Acquire);
        // (`cost > 1` first: for `check()` the whole test folds away.)
        if cost > 1 && cost > self.count {
            decision.outcome = Outcome::CostExceedsLimit;
            decision.tat = current;
            return decision;
        }
        loop {
            match gcra::check_raw(self.emission_ns, self.capacity_ns, current, now, cost) {
                Ok(next) => match self.tat.compare_exchange_weak(
                    current,
                    next,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        decision.tat = next;
                        return decision;
                    }
                    Err(actual) => current = actual,
                },
                Err(wait) => {
                    decision.outcome = Outcome::Rejected;
                    decision.tat = current;
                    decision.retry_after_ns = wait;
                    return decision;
                }
            }
        }
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, NANOS_PER_SEC as S};

    #[test]
    fn burst_then_exact_retry_after_then_never() {
        let clock = ManualClock::at_unix_secs(1_000);
        let l = DirectLimiter::with_clock(Quota::per_minute(3).expect("quota"), clock.clone());
        for left in [2, 1, 0] {
            let d = l.check();
            assert!(d.is_admitted());
            assert_eq!(d.remaining(), left);
            assert_eq!(d.limit(), 3);
        }
        let d = l.check();
        assert_eq!(d.outcome, Outcome::Rejected);
        assert_eq!(d.retry_after(), Duration::from_secs(20));
        assert_eq!(d.reset_unix(), 1_060);
        clock.advance(Duration::from_nanos(20 * S - 1));
        assert_eq!(l.check().outcome, Outcome::Rejected, "one ns early");
        clock.advance(Duration::from_nanos(1));
        assert!(l.check().is_admitted(), "exactly on time");
        let never = l.check_n(4);
        assert_eq!(never.outcome, Outcome::CostExceedsLimit);
        assert_eq!(never.retry_after(), Duration::ZERO);
    }
}
