//! Many threads, one key: the exact allowance and nothing more; all-or-nothing under
//! contention. Time is frozen (manual clock), so the allowance is exactly the burst.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use weir_limit::{Dimension, LimitDef, Limiter, ManualClock, MemoryStore, Policy, Quota, Request};

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    weir_limit::poll_ready(f).expect("the memory store never waits")
}

const THREADS: usize = 4;
const PER_THREAD: usize = 100_000;

#[test]
fn one_key_never_admits_more_than_the_allowance() {
    let policy = Policy::new(vec![LimitDef::rate(
        "org",
        &[Dimension::Organisation],
        Quota::per_day(1000).expect("q"),
    )])
    .expect("p");
    let limiter = Arc::new(Limiter::new(
        policy,
        MemoryStore::default(),
        ManualClock::at_unix_secs(1_700_000_000),
    ));
    let admitted = Arc::new(AtomicU64::new(0));
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            let (limiter, admitted) = (limiter.clone(), admitted.clone());
            s.spawn(move || {
                let r = Request {
                    organisation: Some("acme"),
                    ..Request::default()
                };
                for _ in 0..PER_THREAD {
                    if block_on(limiter.check(&r)).expect("store").is_admitted() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.load(Ordering::Relaxed), 1000);
}

#[test]
fn all_or_nothing_holds_under_contention() {
    // Each thread has its own user limit (600) and all share a global limit (1000). If a
    // request refused by one limit ever consumed the other, the per-user counters would
    // show more use than the requests actually admitted.
    let policy = Policy::new(vec![
        LimitDef::rate("user", &[Dimension::User], Quota::per_day(600).expect("q")),
        LimitDef::rate("global", &[], Quota::per_day(1000).expect("q")),
    ])
    .expect("p");
    let limiter = Arc::new(Limiter::new(
        policy,
        MemoryStore::with_shards(1000, 2),
        ManualClock::at_unix_secs(1_700_000_000),
    ));
    let users: Vec<String> = (0..THREADS).map(|i| format!("user{i}")).collect();
    let counts: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = users
            .iter()
            .map(|u| {
                let limiter = limiter.clone();
                s.spawn(move || {
                    let r = Request {
                        user: Some(u),
                        ..Request::default()
                    };
                    (0..PER_THREAD)
                        .filter(|_| block_on(limiter.check(&r)).expect("store").is_admitted())
                        .count() as u64
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(counts.iter().sum::<u64>(), 1000, "{counts:?}");
    for (u, admitted) in users.iter().zip(&counts) {
        assert!(*admitted <= 600);
        // A probe is refused by the global limit; it reports this user's remaining.
        let d = block_on(limiter.check(&Request {
            user: Some(u),
            ..Request::default()
        }))
        .expect("store");
        assert!(!d.is_admitted());
        assert_eq!(
            d.limits[0].remaining,
            600 - admitted,
            "{u}: user counter moved only for admitted requests"
        );
        assert_eq!(d.limits[1].remaining, 0);
    }
}
