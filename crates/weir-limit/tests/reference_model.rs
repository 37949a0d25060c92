//! The limiter against a naive reference model, on a manual clock.
//!
//! The model keeps, per counter, a plain list of *departure times*: each admitted unit of
//! cost queues behind the previous one and leaves one emission interval after
//! `max(arrival, previous departure)`. A request of cost `c` is admitted iff the units
//! still queued at `now` plus `c` fit in `N`; if not, it would be admitted when enough
//! queued units have left, i.e. at the `(queued + c − N)`-th next departure. This is the
//! queueing definition of GCRA, written the slow, obvious way; the limiter must agree with
//! it exactly — same admit/reject sequence, same retry-after to the nanosecond, same
//! remaining — for random multi-limit policies and random request streams.

use proptest::prelude::*;
use std::collections::HashMap;
use std::time::Duration;
use weir_limit::{
    Dimension, DirectLimiter, LimitDef, Limiter, ManualClock, MemoryStore, Outcome, Policy, Quota,
    Request,
};

#[derive(Debug, Clone)]
struct LimitSpec {
    count: u64,
    window_s: u64,
    scope: Option<Dimension>,
}

#[derive(Debug, Clone)]
struct Step {
    advance_ms: u64,
    advance_by_last_wait: bool,
    ip: u8,
    user: u8,
    cost: u64,
}

struct Model {
    limits: Vec<(Quota, Option<Dimension>)>,
    departures: HashMap<(usize, String), Vec<u64>>,
}

impl Model {
    fn key(&self, i: usize, ip: &str, user: &str) -> (usize, String) {
        let scope = match self.limits[i].1 {
            None => String::new(),
            Some(Dimension::ClientIp) => ip.to_owned(),
            Some(Dimension::User) => user.to_owned(),
            Some(_) => unreachable!(),
        };
        (i, scope)
    }

    /// (outcome, retry_after_ns, remaining per limit)
    fn check(&mut self, now: u64, ip: &str, user: &str, cost: u64) -> (Outcome, u64, Vec<u64>) {
        if self.limits.iter().any(|(q, _)| cost > q.count()) {
            return (Outcome::CostExceedsLimit, 0, Vec::new());
        }
        let mut wait = 0u64;
        let mut admit = true;
        for i in 0..self.limits.len() {
            let (q, _) = self.limits[i];
            let key = self.key(i, ip, user);
            let mut queued: Vec<u64> = self
                .departures
                .get(&key)
                .into_iter()
                .flatten()
                .copied()
                .filter(|d| *d > now)
                .collect();
            queued.sort_unstable();
            let n = queued.len() as u64;
            if n + cost > q.count() {
                admit = false;
                let k = (n + cost - q.count()) as usize;
                wait = wait.max(queued[k - 1] - now);
            }
        }
        if admit {
            for i in 0..self.limits.len() {
                let (q, _) = self.limits[i];
                let key = self.key(i, ip, user);
                let list = self.departures.entry(key).or_default();
                let mut last = list.last().copied().unwrap_or(0);
                for _ in 0..cost {
                    last = last.max(now) + q.emission_ns();
                    list.push(last);
                }
            }
        }
        let remaining = (0..self.limits.len())
            .map(|i| {
                let key = self.key(i, ip, user);
                let queued = self
                    .departures
                    .get(&key)
                    .into_iter()
                    .flatten()
                    .filter(|d| **d > now)
                    .count() as u64;
                self.limits[i].0.count() - queued
            })
            .collect();
        (
            if admit {
                Outcome::Admitted
            } else {
                Outcome::Rejected
            },
            wait,
            remaining,
        )
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    weir_limit::poll_ready(f).expect("the memory store never waits")
}

fn limit_spec() -> impl Strategy<Value = LimitSpec> {
    (
        1u64..=8,
        1u64..=120,
        prop_oneof![
            Just(None),
            Just(Some(Dimension::ClientIp)),
            Just(Some(Dimension::User))
        ],
    )
        .prop_map(|(count, window_s, scope)| LimitSpec {
            count,
            window_s,
            scope,
        })
}

fn step() -> impl Strategy<Value = Step> {
    (
        0u64..4000,
        prop::bool::weighted(0.2),
        0u8..2,
        0u8..2,
        prop_oneof![4 => Just(1u64), 1 => 1u64..=9],
    )
        .prop_map(|(advance_ms, advance_by_last_wait, ip, user, cost)| Step {
            advance_ms,
            advance_by_last_wait,
            ip,
            user,
            cost,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn limiter_matches_the_reference_model(specs in prop::collection::vec(limit_spec(), 1..4), steps in prop::collection::vec(step(), 1..120)) {
        let limits: Vec<(Quota, Option<Dimension>)> = specs
            .iter()
            .map(|s| (Quota::new(s.count, Duration::from_secs(s.window_s)).expect("valid"), s.scope))
            .collect();
        let policy = Policy::new(
            limits
                .iter()
                .enumerate()
                .map(|(i, (q, scope))| LimitDef::rate(format!("l{i}"), scope.as_slice(), *q))
                .collect(),
        )
        .expect("policy");
        let clock = ManualClock::at_unix_secs(1_700_000_000);
        // The async path (any store) and the gateway's synchronous in-memory path.
        let limiter = Limiter::new(policy.clone(), MemoryStore::with_shards(10_000, 2), clock.clone());
        let sync = Limiter::new(policy.clone(), MemoryStore::with_shards(10_000, 2), clock.clone());
        // The same path filling one decision, reused from step to step as a connection
        // reuses its own: nothing of an earlier step may show in a later one.
        let reused = Limiter::new(policy.clone(), MemoryStore::with_shards(10_000, 2), clock.clone());
        let mut slot = weir_limit::Decision::default();
        let mut model = Model { limits, departures: HashMap::new() };
        let mut last_wait = 0u64;
        for (n, s) in steps.iter().enumerate() {
            if s.advance_by_last_wait && last_wait > 0 {
                clock.advance(Duration::from_nanos(last_wait));
            } else {
                clock.advance(Duration::from_millis(s.advance_ms));
            }
            let ip = format!("ip{}", s.ip);
            let user = format!("user{}", s.user);
            let request = Request { client_ip: Some(&ip), user: Some(&user), cost: s.cost, ..Request::default() };
            let d = block_on(limiter.check(&request)).expect("memory store");
            let ds = sync.check_now(&policy, &request).expect("memory store");
            prop_assert_eq!(d.outcome, ds.outcome, "step {}: check_now", n);
            prop_assert_eq!(d.retry_after, ds.retry_after, "step {}: check_now", n);
            prop_assert_eq!(&d.limits, &ds.limits, "step {}: check_now", n);
            prop_assert_eq!(d.limiting, ds.limiting, "step {}: check_now", n);
            reused.check_now_into(&policy, &request, &mut slot).expect("memory store");
            prop_assert_eq!(d.outcome, slot.outcome, "step {}: check_now_into", n);
            prop_assert_eq!(d.retry_after, slot.retry_after, "step {}: check_now_into", n);
            prop_assert_eq!(d.now, slot.now, "step {}: check_now_into", n);
            prop_assert_eq!(&d.limits, &slot.limits, "step {}: check_now_into", n);
            prop_assert_eq!(d.limiting, slot.limiting, "step {}: check_now_into", n);
            prop_assert_eq!(d.degraded, slot.degraded, "step {}: check_now_into", n);
            let (outcome, wait, remaining) = model.check(weir_limit::Clock::now(&clock), &ip, &user, s.cost);
            prop_assert_eq!(d.outcome, outcome, "step {}", n);
            prop_assert_eq!(d.retry_after, Duration::from_nanos(wait), "step {}", n);
            if outcome != Outcome::CostExceedsLimit {
                let got: Vec<u64> = d.limits.iter().map(|l| l.remaining).collect();
                prop_assert_eq!(got, remaining, "step {}", n);
            }
            last_wait = wait;
        }
    }

    #[test]
    fn direct_limiter_matches_the_reference_model(spec in limit_spec(), steps in prop::collection::vec(step(), 1..200)) {
        let quota = Quota::new(spec.count, Duration::from_secs(spec.window_s)).expect("valid");
        let clock = ManualClock::at_unix_secs(1_700_000_000);
        let direct = DirectLimiter::with_clock(quota, clock.clone());
        let mut model = Model { limits: vec![(quota, None)], departures: HashMap::new() };
        let mut last_wait = 0u64;
        for (n, s) in steps.iter().enumerate() {
            if s.advance_by_last_wait && last_wait > 0 {
                clock.advance(Duration::from_nanos(last_wait));
            } else {
                clock.advance(Duration::from_millis(s.advance_ms));
            }
            let d = direct.check_n(s.cost);
            let (outcome, wait, remaining) = model.check(weir_limit::Clock::now(&clock), "", "", s.cost);
            prop_assert_eq!(d.outcome, outcome, "step {}", n);
            prop_assert_eq!(d.retry_after(), Duration::from_nanos(wait), "step {}", n);
            if outcome != Outcome::CostExceedsLimit {
                prop_assert_eq!(vec![d.remaining()], remaining, "step {}", n);
            }
            last_wait = wait;
        }
    }
}
