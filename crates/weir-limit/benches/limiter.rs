//! weir-limit against governor, in the same run.
//!
//! (a) one limit, one key, ns per decision, vs governor's direct limiter: through the
//!     policy engine (a keyed limit, one hot key: the gateway's path) and through weir's
//!     own unkeyed `DirectLimiter`;
//! (b) 100k keys, one limit, vs governor's keyed limiter;
//! (c) a 3-limit policy (org + IP + user), weir only (goal: under 3x (a)): on one hot
//!     key per limit (like (a)), and over 100k keys (like (b));
//! (d) 2 threads, 100k keys, aggregate time per decision, vs governor keyed.
//!
//! Quotas are generous so every decision is an admit (the path real traffic takes);
//! both libraries read their real clocks.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use governor::{Quota as GQuota, RateLimiter};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_limit::{Dimension, LimitDef, Limiter, MemoryStore, Policy, Quota, Request, SystemClock};

const KEYS: usize = 100_000;

fn big() -> Quota {
    Quota::per_second(1_000_000_000).expect("quota")
}

fn gbig() -> GQuota {
    GQuota::per_second(NonZeroU32::MAX)
}

/// Keyed benches use 10^6 per day (burst 10^6) for both libraries: every decision admits,
/// and keys stay live between hits as they do in real traffic. (With a 1 ns interval every
/// key would be idle a nanosecond after use, and weir's store would sweep and re-insert
/// keys that governor merely keeps.)
fn keyed_quota() -> Quota {
    Quota::per_day(1_000_000).expect("quota")
}

fn gkeyed_quota() -> GQuota {
    GQuota::with_period(Duration::from_nanos(86_400_000))
        .expect("period")
        .allow_burst(NonZeroU32::new(1_000_000).expect("nz"))
}

fn limiter(limits: Vec<LimitDef>) -> Limiter<MemoryStore, SystemClock> {
    Limiter::new(
        Policy::new(limits).expect("policy"),
        MemoryStore::new(4 * KEYS),
        SystemClock::default(),
    )
}

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("key-{i:06}")).collect()
}

fn bench(c: &mut Criterion) {
    let keys = keys();

    let mut g = c.benchmark_group("a_one_limit_one_key");
    g.throughput(Throughput::Elements(1));
    let weir = limiter(vec![LimitDef::rate(
        "org",
        &[Dimension::Organisation],
        big(),
    )]);
    let policy = weir.policy();
    let req = Request {
        organisation: Some("acme"),
        ..Request::default()
    };
    // weir's own unkeyed limiter, the like-for-like peer of governor's direct one.
    let direct = weir_limit::DirectLimiter::new(big());
    g.bench_function("weir_direct", |b| {
        b.iter(|| black_box(&direct).check().is_admitted())
    });
    let gov = RateLimiter::direct(gbig());
    g.bench_function("governor_direct", |b| {
        b.iter(|| black_box(&gov).check().is_ok())
    });
    // The policy engine last, so that (c) below is measured right after it.
    g.bench_function("weir", |b| {
        b.iter(|| {
            weir.check_now(&policy, black_box(&req))
                .map(|d| d.is_admitted())
        })
    });
    g.finish();

    // (c) as (a) but with three limits: one organisation, one IP, one user, every decision
    // an admit — so (c) / (a) is the cost of the two extra limits and the all-or-nothing
    // claim, not of cache misses. Measured right after (a), so both sides of the ratio see
    // the machine in the same state.
    let mut g = c.benchmark_group("c_three_limits_org_ip_user");
    g.throughput(Throughput::Elements(1));
    let weir = limiter(vec![
        LimitDef::rate("org", &[Dimension::Organisation], big()),
        LimitDef::rate("ip", &[Dimension::ClientIp], big()),
        LimitDef::rate("user", &[Dimension::User], big()),
    ]);
    let policy = weir.policy();
    let req = Request {
        organisation: Some("acme"),
        client_ip: Some("203.0.113.7"),
        user: Some("user-1"),
        ..Request::default()
    };
    g.bench_function("weir_hot_keys", |b| {
        b.iter(|| {
            weir.check_now(&policy, black_box(&req))
                .map(|d| d.is_admitted())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("b_100k_keys_one_limit");
    g.throughput(Throughput::Elements(1));
    let weir = limiter(vec![LimitDef::rate(
        "ip",
        &[Dimension::ClientIp],
        keyed_quota(),
    )]);
    let policy = weir.policy();
    for k in &keys {
        let _ = weir.check_now(
            &policy,
            &Request {
                client_ip: Some(k),
                ..Request::default()
            },
        );
    }
    let mut i = 0usize;
    g.bench_function("weir", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            weir.check_now(
                &policy,
                &Request {
                    client_ip: Some(&keys[i]),
                    ..Request::default()
                },
            )
            .map(|d| d.is_admitted())
        })
    });
    let gov = RateLimiter::keyed(gkeyed_quota());
    for k in &keys {
        let _ = gov.check_key(k);
    }
    let mut i = 0usize;
    g.bench_function("governor_keyed", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            gov.check_key(&keys[i]).is_ok()
        })
    });
    g.finish();

    // (c) over 100k keys (compare with (b): the same key spread, one limit).
    let mut g = c.benchmark_group("c_three_limits_100k_keys");
    g.throughput(Throughput::Elements(1));
    let weir = limiter(vec![
        LimitDef::rate("org", &[Dimension::Organisation], keyed_quota()),
        LimitDef::rate("ip", &[Dimension::ClientIp], keyed_quota()),
        LimitDef::rate("user", &[Dimension::User], keyed_quota()),
    ]);
    let policy = weir.policy();
    let mut i = 0usize;
    g.bench_function("weir", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            let r = Request {
                organisation: Some(&keys[i % 1000]),
                client_ip: Some(&keys[i]),
                user: Some(&keys[(i * 31) % KEYS]),
                ..Request::default()
            };
            weir.check_now(&policy, &r).map(|d| d.is_admitted())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("d_two_threads_100k_keys");
    g.throughput(Throughput::Elements(1));
    let keys = Arc::new(keys);
    let weir = Arc::new(limiter(vec![LimitDef::rate(
        "ip",
        &[Dimension::ClientIp],
        keyed_quota(),
    )]));
    let gov = Arc::new(RateLimiter::keyed(gkeyed_quota()));
    let policy = weir.policy();
    for k in keys.iter() {
        let _ = weir.check_now(
            &policy,
            &Request {
                client_ip: Some(k),
                ..Request::default()
            },
        );
        let _ = gov.check_key(k);
    }
    g.bench_function("weir", |b| {
        b.iter_custom(|iters| {
            let policy = weir.policy();
            two_threads(iters, &keys, |k| {
                weir.check_now(
                    &policy,
                    &Request {
                        client_ip: Some(k),
                        ..Request::default()
                    },
                )
                .is_ok_and(|d| d.is_admitted())
            })
        })
    });
    g.bench_function("governor_keyed", |b| {
        b.iter_custom(|iters| two_threads(iters, &keys, |k| gov.check_key(k).is_ok()))
    });
    g.finish();
}

/// Runs `iters` decisions split over two threads; returns the wall time, so the reported
/// time per element is the *aggregate* time per decision (1 / decisions per second).
/// Keys are borrowed as `&String`, so neither library pays an allocation the other does not.
fn two_threads(
    iters: u64,
    keys: &Arc<Vec<String>>,
    f: impl Fn(&String) -> bool + Sync,
) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let f = &f;
            let keys = keys.clone();
            s.spawn(move || {
                let mut i = (t as usize) * 50_000;
                for _ in 0..iters / 2 {
                    i = (i + 7919) % KEYS;
                    black_box(f(&keys[i]));
                }
            });
        }
    });
    start.elapsed()
}

criterion_group!(benches, bench);
criterion_main!(benches);
