//! Per-request overhead of weir-client on the success path, without the network: budget
//! deposit, breaker admit + record, pacer acquire, and learning from the response's
//! rate-limit headers (`X-RateLimit-*` and the IETF fields). Goal: under 1 µs.
//! `allocation-counter` reports the allocations per request.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::time::{Duration, Instant};
use weir_client::budget::{BudgetConfig, RetryBudget};
use weir_client::pacing::Pacer;
use weir_limit::breaker::{Breaker, BreakerConfig};

fn bench(c: &mut Criterion) {
    let budget = RetryBudget::new(BudgetConfig::default());
    let breaker = Breaker::new(BreakerConfig::default());
    let pacer = Pacer::default();
    let mut headers = http::HeaderMap::new();
    headers.insert("x-ratelimit-limit", "1000000".parse().expect("v"));
    headers.insert("x-ratelimit-remaining", "999999".parse().expect("v"));
    headers.insert("x-ratelimit-reset", "1795316284".parse().expect("v"));
    let mut ietf = headers.clone();
    ietf.insert(
        "ratelimit-policy",
        r#""org-minute";q=1000000;w=60"#.parse().expect("v"),
    );
    ietf.insert(
        "ratelimit",
        r#""org-minute";r=999999;t=1"#.parse().expect("v"),
    );
    let start = Instant::now();
    let mut now = start;
    let mut step = |headers: &http::HeaderMap| {
        now += Duration::from_micros(100);
        budget.deposit(now);
        let _ = black_box(breaker.admit(now));
        let seq = pacer.try_acquire(now).unwrap_or(0);
        pacer.observe(headers, 200, now, black_box(seq));
        breaker.record(now, true, false);
    };
    let mut g = c.benchmark_group("client_success_path");
    g.bench_function("x_ratelimit_headers", |b| {
        b.iter(|| step(black_box(&headers)))
    });
    g.bench_function("x_ratelimit_and_ietf_fields", |b| {
        b.iter(|| step(black_box(&ietf)))
    });
    g.finish();
    for (name, h) in [("X-RateLimit only", &headers), ("with IETF fields", &ietf)] {
        let info = allocation_counter::measure(|| {
            for _ in 0..10_000 {
                step(h);
            }
        });
        println!(
            "allocations per request ({name}): {:.2}",
            info.count_total as f64 / 10_000.0
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
