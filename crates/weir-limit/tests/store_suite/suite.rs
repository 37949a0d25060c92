//! The behaviours every store must have.

use std::future::Future;
use std::num::NonZeroU64;
use std::time::Duration;
use weir_limit::{
    Dimension, LimitDef, LimitVerdict, Limiter, ManualClock, MethodClass, MethodFilter, Outcome,
    Policy, Quota, Request, Store,
};

/// Runs a store's decision to completion on this thread, parking between polls. Stores
/// that do I/O need a tokio runtime entered on this thread (its workers drive the I/O).
pub fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

const T0: u64 = 1_700_000_000;

fn plans() -> Policy {
    let per_min = |n| Quota::per_minute(n).expect("quota");
    Policy::new(vec![
        LimitDef::per_plan(
            "org-minute",
            &[Dimension::Organisation],
            vec![
                ("free".into(), per_min(10)),
                ("pro".into(), per_min(30)),
                ("max".into(), per_min(60)),
            ],
        ),
        LimitDef::rate(
            "ip-10s",
            &[Dimension::ClientIp],
            Quota::new(50, Duration::from_secs(10)).expect("q"),
        ),
        LimitDef::rate("user-minute", &[Dimension::User], per_min(6000)),
    ])
    .expect("policy")
}

fn req<'a>(org: &'a str, plan: &'a str, user: &'a str, ip: &'a str) -> Request<'a> {
    Request {
        organisation: Some(org),
        plan: Some(plan),
        user: Some(user),
        client_ip: Some(ip),
        ..Request::default()
    }
}

pub fn all<S: Store>(make: impl Fn() -> S) {
    plan_limit_is_shared_by_the_organisation(make());
    retry_after_is_truthful(make());
    rejection_consumes_nothing(make());
    cost_counts_and_oversized_cost_is_never(make());
    read_and_write_classes_are_separate(make());
    concurrency_limits_release_on_drop(make());
    quota_changes_carry_over(make());
    headers_describe_the_limiting_quota(make());
}

fn plan_limit_is_shared_by_the_organisation<S: Store>(store: S) {
    let clock = ManualClock::at_unix_secs(T0);
    let limiter = Limiter::new(plans(), store, clock.clone());
    // Two keys (users) of one free org share its 10/min.
    for i in 0..10 {
        let user = if i % 2 == 0 { "alice" } else { "bob" };
        let d = block_on(limiter.check(&req("acme", "free", user, "1.1.1.1"))).expect("store");
        assert!(d.is_admitted(), "request {i}");
    }
    let d = block_on(limiter.check(&req("acme", "free", "carol", "2.2.2.2"))).expect("store");
    assert_eq!(d.outcome, Outcome::Rejected);
    // Another organisation is unaffected.
    let d = block_on(limiter.check(&req("globex", "free", "dave", "3.3.3.3"))).expect("store");
    assert!(d.is_admitted());
}

fn retry_after_is_truthful<S: Store>(store: S) {
    let clock = ManualClock::at_unix_secs(T0);
    let limiter = Limiter::new(plans(), store, clock.clone());
    let r = req("initech", "free", "u", "4.4.4.4");
    for _ in 0..10 {
        assert!(block_on(limiter.check(&r)).expect("store").is_admitted());
    }
    clock.advance(Duration::from_millis(1234));
    let d = block_on(limiter.check(&r)).expect("store");
    assert_eq!(d.outcome, Outcome::Rejected);
    let wait = d.retry_after;
    assert_eq!(wait, Duration::from_secs(6) - Duration::from_millis(1234));
    // One nanosecond early: still rejected. Exactly on time: admitted.
    clock.advance(wait - Duration::from_nanos(1));
    assert_eq!(
        block_on(limiter.check(&r)).expect("store").outcome,
        Outcome::Rejected
    );
    clock.advance(Duration::from_nanos(1));
    assert!(block_on(limiter.check(&r)).expect("store").is_admitted());
}

fn rejection_consumes_nothing<S: Store>(store: S) {
    let clock = ManualClock::at_unix_secs(T0);
    let limiter = Limiter::new(plans(), store, clock.clone());
    for _ in 0..10 {
        assert!(
            block_on(limiter.check(&req("hooli", "free", "u1", "5.5.5.5")))
                .expect("s")
                .is_admitted()
        );
    }
    // 20 more from this IP are refused by the org limit: the IP limit (50/10s) must not move.
    for _ in 0..20 {
        assert!(
            !block_on(limiter.check(&req("hooli", "free", "u1", "5.5.5.5")))
                .expect("s")
                .is_admitted()
        );
    }
    let d = block_on(limiter.check(&req("other", "max", "u2", "5.5.5.5"))).expect("s");
    assert!(d.is_admitted());
    let ip = d
        .limits
        .iter()
        .find(|l| l.index == 1)
        .expect("ip limit applied");
    assert_eq!(
        ip.remaining,
        50 - 11,
        "only the 11 admitted requests count against the IP"
    );
}

fn cost_counts_and_oversized_cost_is_never<S: Store>(store: S) {
    let clock = ManualClock::at_unix_secs(T0);
    let limiter = Limiter::new(plans(), store, clock.clone());
    let mut r = req("batchco", "pro", "u", "6.6.6.6");
    r.cost = 20;
    let d = block_on(limiter.check(&r)).expect("s");
    assert!(d.is_admitted());
    assert_eq!(d.limiting_status().map(|s| s.remaining), Some(10));
    r.cost = 31;
    let d = block_on(limiter.check(&r)).expect("s");
    assert_eq!(d.outcome, Outcome::CostExceedsLimit);
    assert_eq!(
        d.limiting_status().map(|s| s.verdict),
        Some(LimitVerdict::Never)
    );
    r.cost = 10;
    assert!(
        block_on(limiter.check(&r)).expect("s").is_admitted(),
        "the refused batch consumed nothing"
    );
    r.cost = 1;
    assert_eq!(
        block_on(limiter.check(&r)).expect("s").outcome,
        Outcome::Rejected
    );
}

fn read_and_write_classes_are_separate<S: Store>(store: S) {
    let clock = ManualClock::at_unix_secs(T0);
    let policy = Policy::new(vec![
        LimitDef::rate(
            "writes",
            &[Dimension::ApiKey],
            Quota::per_second(2).expect("q"),
        )
        .for_methods(MethodFilter::Write),
        LimitDef::rate(
            "reads",
            &[Dimension::ApiKey],
            Quota::per_second(5).expect("q"),
        )
        .for_methods(MethodFilter::Read),
    ])
    .expect("p");
    let limiter = Limiter::new(policy, store, clock);
    let w = Request {
        api_key: Some("k1"),
        method: MethodClass::Write,
        ..Request::default()
    };
    let r = Request {
        method: MethodClass::Read,
        ..w
    };
    assert!(block_on(limiter.check(&w)).expect("s").is_admitted());
    assert!(block_on(limiter.check(&w)).expect("s").is_admitted());
    assert!(!block_on(limiter.check(&w)).expect("s").is_admitted());
    for _ in 0..5 {
        assert!(
            block_on(limiter.check(&r)).expect("s").is_admitted(),
            "writes exhausted, reads still pass"
        );
    }
}

fn concurrency_limits_release_on_drop<S: Store>(store: S) {
    let clock = ManualClock::at_unix_secs(T0);
    let policy = Policy::new(vec![
        LimitDef::concurrency(
            "org-inflight",
            &[Dimension::Organisation],
            NonZeroU64::new(2).expect("nz"),
        ),
        LimitDef::rate(
            "org-rate",
            &[Dimension::Organisation],
            Quota::per_minute(100).expect("q"),
        ),
    ])
    .expect("p");
    let limiter = Limiter::new(policy, store, clock);
    let r = Request {
        organisation: Some("o"),
        ..Request::default()
    };
    let a = block_on(limiter.check(&r)).expect("s");
    let b = block_on(limiter.check(&r)).expect("s");
    assert!(a.is_admitted() && b.is_admitted());
    assert!(a.permit.is_some());
    let c = block_on(limiter.check(&r)).expect("s");
    assert_eq!(c.outcome, Outcome::Rejected);
    assert_eq!(c.retry_after, Duration::from_secs(1));
    let rate = c.limits.iter().find(|l| l.index == 1).expect("rate");
    assert_eq!(rate.remaining, 98, "the refused request took no rate quota");
    drop(a);
    // A remote store sends the release in the background: allow it a moment (a refused
    // check consumes nothing, so polling is harmless).
    let start = std::time::Instant::now();
    let d = loop {
        let d = block_on(limiter.check(&r)).expect("s");
        if d.is_admitted() || start.elapsed() > Duration::from_secs(2) {
            break d;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(d.is_admitted(), "a finished request gives its slot back");
}

fn quota_changes_carry_over<S: Store>(store: S) {
    let clock = ManualClock::at_unix_secs(T0);
    let limiter = Limiter::new(plans(), store, clock.clone());
    let free = req("growco", "free", "u", "7.7.7.7");
    for _ in 0..10 {
        assert!(block_on(limiter.check(&free)).expect("s").is_admitted());
    }
    assert!(!block_on(limiter.check(&free)).expect("s").is_admitted());
    // Upgrade to pro: the bucket is still whole at the same instant (T0 + 60 s); pro
    // refills one request every 2 s instead of 6 s, so the next one passes 2 s later.
    let pro = req("growco", "pro", "u", "7.7.7.7");
    let d = block_on(limiter.check(&pro)).expect("s");
    assert_eq!(d.outcome, Outcome::Rejected);
    assert_eq!(d.retry_after, Duration::from_secs(2));
    let status = d.limiting_status().expect("limiting");
    assert_eq!(d.reset_unix(status), T0 + 60, "reset instant carried over");
    clock.advance(Duration::from_secs(2));
    assert!(block_on(limiter.check(&pro)).expect("s").is_admitted());
    // An operator tightens the IP limit from 50/10s to 5/10s. The IP's 11 requests left its
    // bucket whole again at T0 + 2.2 s; that instant is kept, and read through the new
    // quota (2 s per request) it is 0.2 s of backlog at T0 + 2 s: this request takes the
    // backlog to 2.2 s, leaving floor((10 - 2.2) / 2) = 3.
    let mut tighter = plans();
    tighter.limits[1] = LimitDef::rate(
        "ip-10s",
        &[Dimension::ClientIp],
        Quota::new(5, Duration::from_secs(10)).expect("q"),
    );
    limiter.set_policy(tighter);
    let d = block_on(limiter.check(&req("else", "max", "v", "7.7.7.7"))).expect("s");
    assert!(d.is_admitted());
    let ip = d.limits.iter().find(|l| l.index == 1).expect("ip");
    assert_eq!((ip.limit, ip.remaining), (5, 3));
    assert_eq!(
        ip.reset_after(),
        Duration::from_millis(2200),
        "whole again at T0 + 4.2 s"
    );
}

fn headers_describe_the_limiting_quota<S: Store>(store: S) {
    let clock = ManualClock::at_unix_secs(T0);
    let limiter = Limiter::new(plans(), store, clock);
    let d = block_on(limiter.check(&req("hdr", "free", "u", "8.8.8.8"))).expect("s");
    let s = d.limiting_status().expect("limiting");
    assert_eq!(
        (s.index, s.limit, s.remaining),
        (0, 10, 9),
        "org limit is the most restrictive"
    );
    assert_eq!(d.reset_unix(s), T0 + 6);
    assert_eq!(d.limits.len(), 3, "every applicable limit is reported");
    assert_eq!(d.retry_after_secs(), 0);
}
