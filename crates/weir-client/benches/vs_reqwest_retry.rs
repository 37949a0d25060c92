//! weir-client vs reqwest + reqwest-retry (its default exponential policy, 3 retries), in
//! the same run, against local servers:
//!
//! 1. **Rate limit**: a server enforcing 20 req/s (burst 20) that sends `X-RateLimit-*`,
//!    the IETF `RateLimit` fields, and `Retry-After` on 429. 400 requests at concurrency
//!    16. Goal for weir: 429s ≤ 2% of requests sent, completion ≤ 1.1x ideal (N / rate),
//!    none lost.
//! 2. **Outage**: the server answers 503 for 5 s, then 200. 400 requests at concurrency 16.
//!    Goal: requests received / logical requests ≤ 1.2, done within 2 s of the outage's end.
//!
//! Run: `cargo bench -p weir-client --bench vs_reqwest_retry`

use axum::body::Body;
use axum::routing::any;
use axum::Router;
use reqwest_retry::policies::ExponentialBackoff;
use reqwest_retry::RetryTransientMiddleware;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_client::{Call, Client, ClientConfig};
use weir_gateway::layer::{RateLimitLayer, Scopes};
use weir_limit::{LimitDef, Limiter, Policy, Quota};

const N: u64 = 400;
const CONCURRENCY: u64 = 16;
const RATE: f64 = 20.0;

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    rejected: AtomicU64,
}

async fn rate_limited_server(counters: Arc<Counters>) -> String {
    let policy = Policy::new(vec![LimitDef::rate(
        "api",
        &[],
        Quota::per_second(20).expect("q"),
    )])
    .expect("p");
    let limiter = Arc::new(Limiter::in_memory(policy));
    let c = counters.clone();
    let app = Router::new()
        .route("/x", any(|| async { "ok" }))
        .layer(RateLimitLayer::new(
            limiter,
            weir_contract::Dialect::Detail,
            |_r: &axum::http::Request<Body>| Scopes::default(),
        ))
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let c = c.clone();
                async move {
                    c.received.fetch_add(1, Ordering::Relaxed);
                    let resp = next.run(req).await;
                    if resp.status() == 429 {
                        c.rejected.fetch_add(1, Ordering::Relaxed);
                    }
                    resp
                }
            },
        ));
    serve(app).await
}

async fn outage_server(counters: Arc<Counters>, until: Instant) -> String {
    let app = Router::new().route(
        "/x",
        any(move || {
            let c = counters.clone();
            async move {
                c.received.fetch_add(1, Ordering::Relaxed);
                if Instant::now() < until {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down")
                } else {
                    (axum::http::StatusCode::OK, "ok")
                }
            }
        }),
    );
    serve(app).await
}

async fn serve(app: Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    format!("http://{addr}/x")
}

/// Runs N requests at the concurrency through `send`; returns (ok, failed, elapsed).
async fn drive<F, Fut>(send: F) -> (u64, u64, Duration)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (send, next, ok) = (send.clone(), next.clone(), ok.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::SeqCst) < N {
                    if send().await {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let ok = ok.load(Ordering::Relaxed);
    (ok, N - ok, started.elapsed())
}

/// Drives the N requests with the named client against `url`.
async fn run_client(name: &str, url: String) -> (u64, u64, Duration) {
    if name == "weir-client" {
        let c = weir_client();
        drive(move || {
            let (c, url) = (c.clone(), url.clone());
            async move { c.execute(Call::new(http::Method::GET, url)).await.is_ok() }
        })
        .await
    } else {
        let c = peer();
        drive(move || {
            let (c, url) = (c.clone(), url.clone());
            async move {
                c.get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await
    }
}

fn weir_client() -> Client {
    Client::new(ClientConfig::default())
}

fn peer() -> reqwest_middleware::ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(RetryTransientMiddleware::new_with_policy(
            ExponentialBackoff::builder().build_with_max_retries(3),
        ))
        .build()
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let ideal = N as f64 / RATE;
    println!("### 1. Rate limit: 20 req/s server, {N} requests at concurrency {CONCURRENCY} (ideal {ideal:.1} s)\n");
    println!("| client | sent | 429s | 429s / sent | elapsed | elapsed / ideal | lost |");
    println!("|---|---|---|---|---|---|---|");
    for name in ["weir-client", "reqwest-retry"] {
        let counters = Arc::new(Counters::default());
        let url = rate_limited_server(counters.clone()).await;
        let (_, lost, elapsed) = run_client(name, url).await;
        let sent = counters.received.load(Ordering::Relaxed);
        let rejected = counters.rejected.load(Ordering::Relaxed);
        println!(
            "| {name} | {sent} | {rejected} | {:.1}% | {:.2} s | {:.2}x | {lost} |",
            100.0 * rejected as f64 / sent.max(1) as f64,
            elapsed.as_secs_f64(),
            elapsed.as_secs_f64() / ideal
        );
    }
    println!("\n### 2. Outage: 503 for 5 s, then 200; {N} requests at concurrency {CONCURRENCY}\n");
    println!("| client | received / logical | done after the outage's end | lost |");
    println!("|---|---|---|---|");
    for name in ["weir-client", "reqwest-retry"] {
        let counters = Arc::new(Counters::default());
        let start = Instant::now();
        let until = start + Duration::from_secs(5);
        let url = outage_server(counters.clone(), until).await;
        let (_, lost, elapsed) = run_client(name, url).await;
        let received = counters.received.load(Ordering::Relaxed);
        let after = elapsed.as_secs_f64() - 5.0;
        println!(
            "| {name} | {:.2} | {after:+.2} s | {lost} |",
            received as f64 / N as f64
        );
    }
}
