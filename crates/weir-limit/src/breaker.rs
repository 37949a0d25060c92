//! A circuit breaker: the gateway keeps one per upstream, the client one per host.
//!
//! *Closed*: requests pass; outcomes are counted in a sliding window of ten buckets. When
//! at least `min_requests` were seen in the window and the failure ratio reaches
//! `failure_ratio`, it *opens*: requests fail fast with 503 `SERVICE_CIRCUIT_OPEN` and a
//! Retry-After until `open_for` has passed. Then it is *half-open*: up to
//! `half_open_probes` requests go through; one success closes it, one failure opens it
//! again. Time is an argument (`now`), so tests are exact.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Breaker settings.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Opens at or above this failure ratio…
    pub failure_ratio: f64,
    /// …over this window…
    pub window: Duration,
    /// …once at least this many requests were seen in it.
    pub min_requests: u64,
    /// Stays open this long, then lets probes through.
    pub open_for: Duration,
    /// Probes allowed while half-open.
    pub half_open_probes: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_ratio: 0.5,
            window: Duration::from_secs(10),
            min_requests: 20,
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
        }
    }
}

/// The breaker's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead (`probe`: this request is a half-open probe).
    Allowed {
        /// Whether it is a probe.
        probe: bool,
    },
    /// Fail fast; the breaker may let requests through after this wait.
    Open {
        /// Until the next probe.
        retry_after: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probes: u64 },
}

#[derive(Debug)]
struct State {
    phase: Phase,
    buckets: VecDeque<(Instant, u64, u64)>,
}

/// One upstream's breaker.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
    /// Whether the phase is `Closed`, readable without the lock: every request asks
    /// [`Breaker::admit`], and while closed (nearly always) the answer needs nothing else,
    /// so the busy path takes the shared lock once per request (to record), not twice.
    /// Written only under the lock, together with the phase.
    closed: AtomicBool,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            state: Mutex::new(State {
                phase: Phase::Closed,
                buckets: VecDeque::new(),
            }),
            closed: AtomicBool::new(true),
        }
    }

    /// Moves to `phase` (the caller holds the lock on `s`).
    fn enter(&self, s: &mut State, phase: Phase) {
        s.phase = phase;
        self.closed
            .store(matches!(phase, Phase::Closed), Ordering::Release);
    }

    /// 0 closed, 1 open, 2 half-open (for the metrics gauge).
    pub fn state_code(&self) -> u8 {
        match self.state.lock().phase {
            Phase::Closed => 0,
            Phase::Open { .. } => 1,
            Phase::HalfOpen { .. } => 2,
        }
    }

    /// May a request go to the upstream now?
    pub fn admit(&self, now: Instant) -> Admission {
        // A request admitted while another thread is opening the breaker is one that
        // arrived a moment earlier: no different from taking the lock first.
        if self.closed.load(Ordering::Acquire) {
            return Admission::Allowed { probe: false };
        }
        self.admit_locked(now)
    }

    /// [`Breaker::admit`] under the lock.
    fn admit_locked(&self, now: Instant) -> Admission {
        let mut s = self.state.lock();
        match s.phase {
            Phase::Closed => Admission::Allowed { probe: false },
            Phase::Open { until } if now < until => Admission::Open {
                retry_after: until - now,
            },
            Phase::Open { .. } => {
                self.enter(&mut s, Phase::HalfOpen { probes: 1 });
                Admission::Allowed { probe: true }
            }
            Phase::HalfOpen { probes } if probes < self.config.half_open_probes => {
                self.enter(&mut s, Phase::HalfOpen { probes: probes + 1 });
                Admission::Allowed { probe: true }
            }
            Phase::HalfOpen { .. } => Admission::Open {
                retry_after: Duration::from_secs(1),
            },
        }
    }

    /// Records an outcome.
    pub fn record(&self, now: Instant, success: bool, probe: bool) {
        self.record_counts(now, u64::from(success), u64::from(!success), probe, false);
    }

    /// Records `n` successes of requests admitted while closed, at `now` at once, as `n`
    /// calls of `record(now, true, false)` would while the breaker is still closed: for a
    /// caller that counts the successes of a busy path on its own and hands them over in
    /// batches, so that path does not take the shared lock every time. Once the breaker has
    /// opened since, they are dropped: opening cleared the window they belonged to, and a
    /// late batch must not pass for a half-open probe's success.
    pub fn record_successes(&self, now: Instant, n: u64) {
        if n > 0 {
            self.record_counts(now, n, 0, false, true);
        }
    }

    /// Records `ok` successes and `fail` failures at `now` (exactly one of the two is 1
    /// when `probe`; `batch`: successes handed over by `record_successes`).
    fn record_counts(&self, now: Instant, ok: u64, fail: u64, probe: bool, batch: bool) {
        let success = fail == 0;
        let mut s = self.state.lock();
        if batch && !matches!(s.phase, Phase::Closed) {
            return;
        }
        if probe || matches!(s.phase, Phase::HalfOpen { .. }) {
            if success {
                self.enter(&mut s, Phase::Closed);
                s.buckets.clear();
            } else {
                let until = now + self.config.open_for;
                self.enter(&mut s, Phase::Open { until });
            }
            return;
        }
        if !matches!(s.phase, Phase::Closed) {
            return;
        }
        let width = (self.config.window / 10).max(Duration::from_millis(1));
        while s
            .buckets
            .front()
            .is_some_and(|(t, _, _)| now.saturating_duration_since(*t) >= self.config.window)
        {
            s.buckets.pop_front();
        }
        let (ok0, fail0) = s
            .buckets
            .iter()
            .fold((0, 0), |(a, b), (_, o, f)| (a + o, b + f));
        let opens = |ok_in: u64, fail_in: u64| {
            let total = ok0 + fail0 + ok_in + fail_in;
            total >= self.config.min_requests
                && (fail0 + fail_in) as f64 >= self.config.failure_ratio * total as f64
        };
        // Outcomes are judged one at a time, as they arrived: a batch of successes opens
        // the breaker if one of them would have on its own. Only the first that brings
        // the window to `min_requests` can (each later one only lowers the ratio).
        let first = self.config.min_requests.saturating_sub(ok0 + fail0).max(1);
        if opens(ok, fail) || (fail == 0 && first <= ok && opens(first, 0)) {
            let until = now + self.config.open_for;
            self.enter(&mut s, Phase::Open { until });
            s.buckets.clear();
            return;
        }
        match s.buckets.back_mut() {
            Some((t, oks, fails)) if now.saturating_duration_since(*t) < width => {
                *oks += ok;
                *fails += fail;
            }
            _ => s.buckets.push_back((now, ok, fail)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failure_ratio: 0.5,
            window: Duration::from_secs(10),
            min_requests: 4,
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
        })
    }

    #[test]
    fn opens_on_failure_ratio_then_probes_and_closes() {
        let b = breaker();
        let t0 = Instant::now();
        b.record(t0, true, false);
        b.record(t0, false, false);
        b.record(t0, false, false);
        assert_eq!(
            b.admit(t0),
            Admission::Allowed { probe: false },
            "3 < min_requests"
        );
        b.record(t0, false, false);
        assert_eq!(
            b.admit(t0 + Duration::from_secs(1)),
            Admission::Open {
                retry_after: Duration::from_secs(4)
            }
        );
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(b.admit(t1), Admission::Allowed { probe: true });
        assert!(
            matches!(b.admit(t1), Admission::Open { .. }),
            "one probe at a time"
        );
        b.record(t1, false, true);
        assert!(
            matches!(b.admit(t1), Admission::Open { .. }),
            "a failed probe reopens"
        );
        let t2 = t1 + Duration::from_secs(5);
        assert_eq!(b.admit(t2), Admission::Allowed { probe: true });
        b.record(t2, true, true);
        assert_eq!(b.admit(t2), Admission::Allowed { probe: false });
        assert_eq!(b.state_code(), 0);
    }

    proptest::proptest! {
        /// The lock-free answer while closed changes nothing: a breaker asked through
        /// `admit` answers every step of any sequence exactly as one asked only under the
        /// lock, and its `closed` flag always says whether the phase is `Closed`.
        #[test]
        fn the_closed_fast_path_answers_as_the_lock_does(
            steps in proptest::collection::vec((0u8..3, 0u64..3000, proptest::bool::ANY), 1..200),
        ) {
            let (fast, locked) = (breaker(), breaker());
            let mut now = Instant::now();
            let (mut probe_fast, mut probe_locked) = (false, false);
            for (op, advance_ms, success) in steps {
                now += Duration::from_millis(advance_ms);
                if op == 0 {
                    let (a, b) = (fast.admit(now), locked.admit_locked(now));
                    proptest::prop_assert_eq!(a, b);
                    probe_fast = matches!(a, Admission::Allowed { probe: true });
                    probe_locked = matches!(b, Admission::Allowed { probe: true });
                } else {
                    fast.record(now, success, probe_fast);
                    locked.record(now, success, probe_locked);
                }
                let phase = fast.state.lock().phase;
                proptest::prop_assert_eq!(
                    fast.closed.load(Ordering::Acquire),
                    matches!(phase, Phase::Closed)
                );
                proptest::prop_assert_eq!(fast.state_code(), locked.state_code());
            }
        }
    }

    proptest::proptest! {
        /// A batch of successes leaves the breaker exactly as that many single successes
        /// at the same moment do, in any phase and between any other outcomes.
        #[test]
        fn a_batch_of_successes_is_that_many_successes(
            steps in proptest::collection::vec((0u64..3000, 0u64..5, proptest::bool::ANY), 1..100),
        ) {
            let (batched, single) = (breaker(), breaker());
            let mut now = Instant::now();
            for (advance_ms, n, fail_after) in steps {
                now += Duration::from_millis(advance_ms);
                let (a, b) = (batched.admit(now), single.admit(now));
                proptest::prop_assert_eq!(a, b);
                let probe = matches!(a, Admission::Allowed { probe: true });
                if probe {
                    batched.record(now, !fail_after, true);
                    single.record(now, !fail_after, true);
                    continue;
                }
                if a == (Admission::Allowed { probe: false }) {
                    // Requests admitted while closed: their successes, batched or not.
                    batched.record_successes(now, n);
                    for _ in 0..n {
                        single.record(now, true, false);
                    }
                }
                if fail_after {
                    batched.record(now, false, false);
                    single.record(now, false, false);
                }
                let (x, y) = (batched.state.lock(), single.state.lock());
                proptest::prop_assert_eq!(x.phase, y.phase);
                proptest::prop_assert_eq!(&x.buckets, &y.buckets);
            }
        }
    }

    #[test]
    fn a_late_batch_does_not_pass_for_a_probe() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..4 {
            b.record(t0, false, false);
        }
        assert!(matches!(b.admit(t0), Admission::Open { .. }));
        let t1 = t0 + Duration::from_secs(6);
        assert_eq!(b.admit(t1), Admission::Allowed { probe: true });
        // Successes counted before the breaker opened, handed over only now.
        b.record_successes(t1, 3);
        assert_eq!(b.state_code(), 2, "still half-open");
        b.record(t1, false, true);
        assert!(matches!(b.admit(t1), Admission::Open { .. }));
    }

    #[test]
    fn old_failures_leave_the_window() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record(t0, false, false);
        }
        let later = t0 + Duration::from_secs(11);
        b.record(later, false, false);
        assert_eq!(
            b.admit(later),
            Admission::Allowed { probe: false },
            "only 1 failure in the window"
        );
    }
}
