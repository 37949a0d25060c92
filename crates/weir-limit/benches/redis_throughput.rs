//! Decisions per second through the Redis store with 64 concurrent callers, against
//! `redis-benchmark` running the same Lua script (EVALSHA, same keys shape, same
//! arguments) at the same concurrency against the same server, in the same run. That is
//! the physical limit of one Redis on this machine. Also counts round-trips per decision.
//!
//! Run: `cargo bench -p weir-limit --bench redis_throughput` (starts its own redis-server).

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_limit::store::redis::{RedisConfig, RedisStore};
use weir_limit::{Dimension, LimitDef, Limiter, Policy, Quota, Request, SystemClock};

const CONCURRENCY: usize = 64;
const KEYS: u64 = 10_000;
const SECONDS: u64 = 4;

fn policy(limits: usize) -> Policy {
    let q = Quota::per_day(1_000_000).expect("quota");
    let all = vec![
        LimitDef::rate("org", &[Dimension::Organisation], q),
        LimitDef::rate("ip", &[Dimension::ClientIp], q),
        LimitDef::rate("user", &[Dimension::User], q),
    ];
    Policy::new(all.into_iter().take(limits).collect()).expect("policy")
}

fn evalsha_calls(server: &redis_server::RedisServer) -> u64 {
    server
        .raw(&["INFO", "commandstats"])
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .and_then(|l| l.split("calls=").nth(1)?.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

async fn weir_run(limiter: Arc<Limiter<RedisStore, SystemClock>>) -> (f64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(SECONDS);
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY as u64)
        .map(|t| {
            let (limiter, done) = (limiter.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = t * 7919;
                while Instant::now() < until {
                    i = (i + 104_729) % KEYS;
                    let (a, b, c) = (
                        format!("o{}", i % 100),
                        format!("i{i}"),
                        format!("u{}", (i * 31) % KEYS),
                    );
                    let r = Request {
                        organisation: Some(&a),
                        client_ip: Some(&b),
                        user: Some(&c),
                        ..Request::default()
                    };
                    if limiter.check(&r).await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let n = done.load(Ordering::Relaxed);
    (n as f64 / start.elapsed().as_secs_f64(), n)
}

/// `redis-benchmark` calling the same script with the same shape of keys and arguments.
fn redis_benchmark(port: u16, sha: &str, limits: usize, pipeline: u32) -> f64 {
    let q = Quota::per_day(1_000_000).expect("quota");
    let names = ["org", "ip", "user"];
    let mut args: Vec<String> = vec!["EVALSHA".into(), sha.into(), limits.to_string()];
    for name in names.iter().take(limits) {
        args.push(format!("weir:{{weir}}:{name}:__rand_int__"));
    }
    args.extend(["server".into(), "1".into(), "60000".into()]);
    for _ in 0..limits {
        args.extend([
            "r".into(),
            q.emission_ns().to_string(),
            q.capacity_ns().to_string(),
            "1".into(),
        ]);
    }
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-c",
            &CONCURRENCY.to_string(),
            "-n",
            "400000",
            "-r",
            &KEYS.to_string(),
            "-q",
        ])
        .args(["-P", &pipeline.to_string()])
        .args(&args)
        .output()
        .expect("redis-benchmark (Debian package redis-tools / redis-server)");
    let text = String::from_utf8_lossy(&out.stdout);
    // "EVALSHA …: 123456.79 requests per second, p50=0.231 msec" (the last \r-separated part).
    let line = text.rsplit('\r').next().unwrap_or(&text).to_owned();
    line.split("requests per second")
        .next()
        .and_then(|head| head.rsplit(' ').find(|w| !w.is_empty()))
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("could not read redis-benchmark output: {text:?}"))
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` / `cargo bench -- --list`: nothing to list or test
    }
    let server = redis_server::RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    println!("| decision | weir (64 tasks, 1 runtime thread) | redis-benchmark -c 64 | weir / redis-benchmark | redis-benchmark -c 64 -P 16 (pipelined ceiling) | weir / ceiling | EVALSHA per decision |");
    println!("|---|---|---|---|---|---|---|");
    for limits in [1usize, 3] {
        let store = rt
            .block_on(RedisStore::connect(RedisConfig::single(server.url())))
            .expect("connect");
        let sha = store.script_sha().to_owned();
        let limiter = Arc::new(Limiter::new(policy(limits), store, SystemClock::default()));
        // Warm up: load the script, open the connection.
        let _ = rt.block_on(limiter.check(&Request {
            organisation: Some("w"),
            client_ip: Some("w"),
            user: Some("w"),
            ..Request::default()
        }));
        let before = evalsha_calls(&server);
        let (weir_rate, decisions) = rt.block_on(weir_run(limiter));
        let round_trips = (evalsha_calls(&server) - before) as f64 / decisions as f64;
        let peer = redis_benchmark(server.port, &sha, limits, 1);
        let ceiling = redis_benchmark(server.port, &sha, limits, 16);
        println!(
            "| {limits} limit{} | {weir_rate:.0}/s | {peer:.0}/s | {:.2}x | {ceiling:.0}/s | {:.2}x | {round_trips:.3} |",
            if limits == 1 { "" } else { "s" },
            weir_rate / peer,
            weir_rate / ceiling
        );
    }
}
