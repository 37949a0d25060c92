//! Upstream outcomes reach the upstream's circuit breaker with the successes in batches.
//!
//! A breaker is shared by every worker thread, and recording an outcome takes its lock: on
//! every request, that lock's cache line moved between the cores. A success while the
//! breaker is closed (nearly every exchange) only adds to a count, so each thread counts
//! its own and hands them over ([`Breaker::record_successes`]) every [`BATCH`] successes,
//! or on the first success [`MAX_DELAY`] or more after the first one counted — and always
//! before a failure or a probe's outcome, so a failure is judged with this thread's
//! successes counted. All a breaker can miss when it judges is another thread's last few
//! successes (fewer than [`BATCH`], younger than [`MAX_DELAY`] unless that thread has gone
//! quiet): the failure ratio it sees is at most that much too high.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_limit::breaker::Breaker;

/// Successes a thread counts before it hands them over.
const BATCH: u64 = 32;
/// How long a thread keeps successes before it hands them over with the next one.
const MAX_DELAY: Duration = Duration::from_millis(50);

/// Successes not yet handed to `breaker`.
struct Pending {
    breaker: Arc<Breaker>,
    count: u64,
    /// When the first of them was counted.
    since: Instant,
}

thread_local! {
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
}

/// Records the outcome of an exchange `breaker` admitted (`probe`: as a half-open probe).
pub(crate) fn record(breaker: &Arc<Breaker>, now: Instant, success: bool, probe: bool) {
    PENDING.with_borrow_mut(|pending| {
        let i = match pending
            .iter()
            .position(|p| Arc::ptr_eq(&p.breaker, breaker))
        {
            Some(i) => i,
            None => {
                // Breakers a reload replaced are held by nothing but this table now.
                pending.retain(|p| Arc::strong_count(&p.breaker) > 1);
                pending.push(Pending {
                    breaker: Arc::clone(breaker),
                    count: 0,
                    since: now,
                });
                pending.len() - 1
            }
        };
        let p = &mut pending[i];
        if success && !probe {
            if p.count == 0 {
                p.since = now;
            }
            p.count += 1;
            if p.count < BATCH && now.saturating_duration_since(p.since) < MAX_DELAY {
                return;
            }
        }
        breaker.record_successes(now, std::mem::take(&mut p.count));
        if !success || probe {
            breaker.record(now, success, probe);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_limit::breaker::{Admission, BreakerConfig};

    fn breaker(min_requests: u64) -> Arc<Breaker> {
        Arc::new(Breaker::new(BreakerConfig {
            failure_ratio: 0.5,
            window: Duration::from_secs(10),
            min_requests,
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
        }))
    }

    fn is_open(b: &Breaker, now: Instant) -> bool {
        matches!(b.admit(now), Admission::Open { .. })
    }

    #[test]
    fn a_failure_is_judged_with_this_threads_successes_counted() {
        // 3 successes and 3 failures: half failed, so the breaker opens at the third
        // failure; had the successes not been handed over, 3 outcomes would be under its
        // minimum of 4.
        let b = breaker(4);
        let now = Instant::now();
        for _ in 0..3 {
            record(&b, now, true, false);
        }
        for _ in 0..3 {
            assert!(!is_open(&b, now));
            record(&b, now, false, false);
        }
        assert!(is_open(&b, now));
    }

    #[test]
    fn batched_successes_all_count() {
        // Many batches' worth of successes, then failures up to just under half: closed;
        // one more failure reaches half: open. Every success was counted, none twice.
        let b = breaker(10);
        let now = Instant::now();
        let successes = BATCH * 3 + 5;
        for _ in 0..successes {
            record(&b, now, true, false);
        }
        for _ in 0..successes - 1 {
            record(&b, now, false, false);
        }
        assert!(!is_open(&b, now));
        record(&b, now, false, false);
        assert!(is_open(&b, now));
    }

    #[test]
    fn successes_from_before_an_opening_do_not_close_it() {
        // This thread holds successes from before the breaker opened. While half-open, an
        // exchange it started before the opening fails late: the successes handed over
        // first must not pass for a probe's success and close the breaker.
        let b = breaker(4);
        let t0 = Instant::now();
        for _ in 0..3 {
            record(&b, t0, true, false);
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..8 {
                    record(&b, t0, false, false);
                }
            });
        });
        assert!(is_open(&b, t0));
        let t1 = t0 + Duration::from_secs(6);
        assert_eq!(b.admit(t1), Admission::Allowed { probe: true });
        record(&b, t1, false, false);
        assert!(is_open(&b, t1), "a failure while half-open opens it again");
    }

    #[test]
    fn successes_are_handed_over_once_they_wait_too_long() {
        // A thread that counted a few successes and then went on to a later one hands them
        // all over: another breaker's failures are then judged with them.
        let b = breaker(4);
        let t0 = Instant::now();
        record(&b, t0, true, false);
        record(&b, t0, true, false);
        record(&b, t0 + MAX_DELAY, true, false);
        // Another thread's failures (this thread's table left as it is).
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..3 {
                    record(&b, t0 + MAX_DELAY, false, false);
                }
            });
        });
        // 3 successes and 3 failures: half failed, so it opens; without the hand-over
        // the other thread would have seen 3 failures alone, under the minimum of 4.
        assert!(is_open(&b, t0 + MAX_DELAY));
    }
}
