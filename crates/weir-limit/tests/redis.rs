//! The Redis store's own guarantees: one round-trip per decision, exactness across
//! independent instances, and bounded, policy-following behaviour when Redis dies.

#[path = "support/redis_server.rs"]
mod redis_server;

use redis_server::RedisServer;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_limit::store::redis::{FailurePolicy, RedisConfig, RedisStore, TimeSource};
use weir_limit::{Dimension, LimitDef, Limiter, ManualClock, Policy, Quota, Request, SystemClock};

fn evalsha_calls(server: &RedisServer) -> u64 {
    let info = server.raw(&["INFO", "commandstats"]);
    info.lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Calls per command name (commands a script runs inside count under their own names).
fn command_stats(server: &RedisServer) -> std::collections::BTreeMap<String, u64> {
    let info = server.raw(&["INFO", "commandstats"]);
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

fn three_limits() -> Policy {
    Policy::new(vec![
        LimitDef::rate(
            "org",
            &[Dimension::Organisation],
            Quota::per_minute(1000).expect("q"),
        ),
        LimitDef::rate(
            "ip",
            &[Dimension::ClientIp],
            Quota::new(50, Duration::from_secs(10)).expect("q"),
        ),
        LimitDef::rate(
            "user",
            &[Dimension::User],
            Quota::per_minute(6000).expect("q"),
        ),
    ])
    .expect("policy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_and_three_limit_decisions_take_exactly_one_round_trip() {
    let server = RedisServer::start();
    let store = RedisStore::connect(RedisConfig::single(server.url()))
        .await
        .expect("connect");
    let limiter = Limiter::new(three_limits(), store, SystemClock::default());
    let req = Request {
        organisation: Some("acme"),
        client_ip: Some("10.1.1.1"),
        user: Some("alice"),
        ..Request::default()
    };
    // The first call loads the script (EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA).
    assert!(limiter.check(&req).await.expect("redis").is_admitted());
    for (policy, name) in [
        (three_limits(), "three"),
        (
            Policy::new(vec![three_limits().limits[0].clone()]).expect("p"),
            "one",
        ),
    ] {
        limiter.set_policy(policy);
        let (evalsha, before) = (evalsha_calls(&server), command_stats(&server));
        let calls = limiter.store().calls();
        for _ in 0..10 {
            limiter.check(&req).await.expect("redis");
        }
        assert_eq!(
            limiter.store().calls() - calls,
            10,
            "{name}-limit decisions: one call each"
        );
        assert_eq!(
            evalsha_calls(&server) - evalsha,
            10,
            "{name}-limit decisions: one EVALSHA each"
        );
        // Besides EVALSHA (and this test's INFO), only what the script runs inside moved.
        for (cmd, n) in command_stats(&server) {
            let delta = n - before.get(&cmd).copied().unwrap_or(0);
            if delta > 0 {
                assert!(
                    ["evalsha", "info", "time", "get", "set"].contains(&cmd.as_str()),
                    "{name}-limit decisions also sent {cmd} x{delta}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_independent_instances_admit_exactly_the_organisation_limit() {
    let _heavy = HEAVY.lock().await;
    let server = RedisServer::start();
    let clock = ManualClock::at_unix_secs(1_700_000_000);
    let policy = Policy::new(vec![LimitDef::rate(
        "org-minute",
        &[Dimension::Organisation],
        Quota::per_minute(1000).expect("q"),
    )])
    .expect("p");
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        // Each instance: its own store, its own multiplexed connection, its own limiter.
        let mut cfg = RedisConfig::single(server.url());
        cfg.time = TimeSource::Caller; // frozen time: no refill, so the allowance is exact
        cfg.deadline = Duration::from_secs(2);
        let store = RedisStore::connect(cfg).await.expect("connect");
        let limiter = Arc::new(Limiter::new(policy.clone(), store, clock.clone()));
        for _ in 0..8 {
            let (limiter, admitted) = (limiter.clone(), admitted.clone());
            tasks.push(tokio::spawn(async move {
                let r = Request {
                    organisation: Some("big-org"),
                    ..Request::default()
                };
                for _ in 0..50 {
                    if limiter.check(&r).await.expect("redis").is_admitted() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(
        admitted.load(Ordering::Relaxed),
        1000,
        "1,600 concurrent requests from 4 instances"
    );
}

/// Runs decisions continuously until `stop`, recording the slowest one and outcomes.
struct Load {
    slowest: Arc<AtomicU64>,
    ok: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    degraded: Arc<AtomicU64>,
}

async fn run_load(limiter: Arc<Limiter<RedisStore, SystemClock>>, until: Instant, load: &Load) {
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let key = format!("k{}", n % 64);
        let r = Request {
            client_ip: Some(&key),
            ..Request::default()
        };
        let start = Instant::now();
        let d = limiter.check(&r).await;
        let took = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        load.slowest.fetch_max(took, Ordering::Relaxed);
        match d {
            Ok(d) if d.degraded => load.degraded.fetch_add(1, Ordering::Relaxed),
            Ok(_) => load.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => load.errors.fetch_add(1, Ordering::Relaxed),
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn new_load() -> Load {
    Load {
        slowest: Arc::new(AtomicU64::new(0)),
        ok: Arc::new(AtomicU64::new(0)),
        errors: Arc::new(AtomicU64::new(0)),
        degraded: Arc::new(AtomicU64::new(0)),
    }
}

fn reset(load: &Load) {
    for c in [&load.slowest, &load.ok, &load.errors, &load.degraded] {
        c.store(0, Ordering::Relaxed);
    }
}

/// The store's deadline in the fault tests, and the margin over it that a decision may take
/// while Redis is down (scheduling on a loaded 2-core machine). The healthy phase expects
/// every decision to reach Redis within the deadline, so the deadline is wider than the
/// 20 ms default: with 20 ms, a run on a fresh clone saw 11 healthy decisions fail while
/// its sibling tests loaded the two cores. Failing past the deadline is the store doing
/// what it should under overload, not a fault of it.
const DEADLINE: Duration = Duration::from_millis(100);
const MARGIN: Duration = Duration::from_millis(150);

/// Held by the tests that load the machine (the four-instance contention test) or time
/// their decisions (the fault tests), so they do not run beside one another.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn fault_test(policy: FailurePolicy) {
    let _heavy = HEAVY.lock().await;
    let mut server = RedisServer::start();
    let mut cfg = RedisConfig::single(server.url());
    cfg.deadline = DEADLINE;
    cfg.on_failure = policy;
    let store = RedisStore::connect(cfg).await.expect("connect");
    let quota = Policy::new(vec![LimitDef::rate(
        "ip",
        &[Dimension::ClientIp],
        Quota::per_second(1000).expect("q"),
    )])
    .expect("p");
    let limiter = Arc::new(Limiter::new(quota, store, SystemClock::default()));
    let load = new_load();

    // Healthy.
    run_load(
        limiter.clone(),
        Instant::now() + Duration::from_millis(300),
        &load,
    )
    .await;
    assert!(load.ok.load(Ordering::Relaxed) > 0);
    assert_eq!(
        load.errors.load(Ordering::Relaxed) + load.degraded.load(Ordering::Relaxed),
        0
    );

    // Redis dies mid-load.
    reset(&load);
    server.kill();
    run_load(
        limiter.clone(),
        Instant::now() + Duration::from_millis(700),
        &load,
    )
    .await;
    let slowest = Duration::from_micros(load.slowest.load(Ordering::Relaxed));
    assert!(
        slowest <= DEADLINE + MARGIN,
        "a decision took {slowest:?} while Redis was down"
    );
    match policy {
        FailurePolicy::FailClosed => {
            assert!(
                load.errors.load(Ordering::Relaxed) > 0,
                "fail closed: decisions fail"
            );
            assert_eq!(load.degraded.load(Ordering::Relaxed), 0);
        }
        FailurePolicy::FailOpen { .. } => {
            assert!(
                load.degraded.load(Ordering::Relaxed) > 0,
                "fail open: decisions served locally"
            );
            assert_eq!(load.errors.load(Ordering::Relaxed), 0);
        }
    }

    // Redis comes back on the same port (empty: it keeps nothing on disk). No restart of
    // the limiter: decisions reach Redis again by themselves.
    server.restart();
    let back = Instant::now();
    let mut recovered = false;
    while back.elapsed() < Duration::from_secs(10) {
        let r = Request {
            client_ip: Some("after"),
            ..Request::default()
        };
        if let Ok(d) = limiter.check(&r).await {
            if !d.degraded {
                recovered = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        recovered,
        "decisions did not reach Redis again within 10 s of its restart"
    );
    // Counting resumes: the counter lives in the restarted Redis and moves.
    let r = Request {
        client_ip: Some("resumed"),
        ..Request::default()
    };
    let first = limiter.check(&r).await.expect("redis is back");
    let second = limiter.check(&r).await.expect("redis is back");
    assert!(!first.degraded && !second.degraded);
    let remaining = |d: &weir_limit::Decision| d.limiting_status().map(|s| s.remaining);
    assert_eq!(
        remaining(&first),
        Some(999),
        "a fresh counter in the restarted Redis"
    );
    // 1000/s refills one unit per millisecond: on a loaded machine the second check may
    // already see it back, never more.
    assert!(
        matches!(remaining(&second), Some(998 | 999)),
        "{:?}",
        remaining(&second)
    );
    // The decisions ran in the restarted server (its command statistics start from zero;
    // the counter key itself expires milliseconds after its bucket is whole again).
    assert!(
        evalsha_calls(&server) >= 2,
        "the counter lives in the restarted Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_mid_load_fails_closed_within_the_deadline_and_recovers() {
    fault_test(FailurePolicy::FailClosed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_mid_load_fails_open_within_the_deadline_and_recovers() {
    fault_test(FailurePolicy::FailOpen {
        instances: NonZeroU64::new(4).expect("nz"),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_divides_each_quota_by_the_instance_count() {
    let mut server = RedisServer::start();
    let mut cfg = RedisConfig::single(server.url());
    cfg.deadline = DEADLINE;
    cfg.on_failure = FailurePolicy::FailOpen {
        instances: NonZeroU64::new(4).expect("nz"),
    };
    let store = RedisStore::connect(cfg).await.expect("connect");
    let policy = Policy::new(vec![LimitDef::rate(
        "org",
        &[Dimension::Organisation],
        Quota::per_minute(40).expect("q"),
    )])
    .expect("p");
    let limiter = Limiter::new(policy, store, SystemClock::default());
    server.kill();
    let r = Request {
        organisation: Some("o"),
        ..Request::default()
    };
    let mut admitted = 0;
    for _ in 0..20 {
        let d = limiter.check(&r).await.expect("fail open never errors");
        assert!(d.degraded);
        admitted += u32::from(d.is_admitted());
    }
    assert_eq!(
        admitted, 10,
        "40/min shared by 4 instances: 10/min here while Redis is away"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_holder_died_expires() {
    let server = RedisServer::start();
    let mut cfg = RedisConfig::single(server.url());
    cfg.lease_ttl = Duration::from_millis(300);
    let store = RedisStore::connect(cfg).await.expect("connect");
    let policy = Policy::new(vec![LimitDef::concurrency(
        "inflight",
        &[Dimension::Organisation],
        NonZeroU64::new(1).expect("nz"),
    )])
    .expect("p");
    let limiter = Limiter::new(policy, store, SystemClock::default());
    let r = Request {
        organisation: Some("o"),
        ..Request::default()
    };
    let held = limiter.check(&r).await.expect("redis");
    assert!(held.is_admitted());
    // The holder "dies": its permit is never released.
    std::mem::forget(held);
    assert!(
        !limiter.check(&r).await.expect("redis").is_admitted(),
        "the slot is taken"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        limiter.check(&r).await.expect("redis").is_admitted(),
        "the dead holder's lease expired"
    );
}
