//! weir-client against real local HTTP servers (started here, on 127.0.0.1:0).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Response, StatusCode};
use axum::routing::any;
use axum::Router;
use http::Method;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_client::{Call, Client, ClientConfig, ErrorKind};

type Reply = (u16, Vec<(&'static str, String)>, &'static str);

/// A scripted server: the n-th request gets the n-th response (the last one repeats), and
/// every arrival is recorded with its headers.
#[derive(Clone, Default)]
struct Script {
    replies: Arc<Vec<Reply>>,
    seen: Arc<Mutex<Vec<(Instant, HeaderMap)>>>,
}

async fn scripted(State(s): State<Script>, headers: HeaderMap) -> Response<Body> {
    let n = {
        let mut seen = s.seen.lock();
        seen.push((Instant::now(), headers));
        seen.len() - 1
    };
    let (status, hs, body) =
        s.replies
            .get(n)
            .or(s.replies.last())
            .cloned()
            .unwrap_or((200, vec![], "ok"));
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    for (k, v) in hs {
        if let Ok(v) = v.parse() {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

async fn serve(replies: Vec<Reply>) -> (String, Script) {
    let script = Script {
        replies: Arc::new(replies),
        seen: Arc::default(),
    };
    let app = Router::new()
        .route("/{*p}", any(scripted))
        .with_state(script.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (format!("http://{addr}/x"), script)
}

fn fast() -> ClientConfig {
    ClientConfig {
        backoff: weir_client::backoff::Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(50),
        },
        ..ClientConfig::default()
    }
}

fn gaps(s: &Script) -> Vec<Duration> {
    let seen = s.seen.lock();
    seen.windows(2).map(|w| w[1].0 - w[0].0).collect()
}

#[tokio::test]
async fn retry_after_is_honoured_exactly_never_early() {
    let (url, s) = serve(vec![
        (
            429,
            vec![("retry-after", "1".into())],
            "{\"detail\":{\"code\":\"SERVICE_RATE_LIMITED\",\"message\":\"slow down\"}}",
        ),
        (200, vec![], "ok"),
    ])
    .await;
    let c = Client::new(fast());
    let ok = c
        .execute(Call::new(Method::GET, &url))
        .await
        .expect("success");
    assert_eq!((ok.status, ok.attempts), (200, 2));
    assert!(
        gaps(&s)[0] >= Duration::from_secs(1),
        "re-sent after {:?}",
        gaps(&s)[0]
    );
    let seen = s.seen.lock();
    assert_eq!(
        seen[0].1["x-request-id"], seen[1].1["x-request-id"],
        "one correlation id per logical request"
    );
    let (t0, t1) = (
        seen[0].1["traceparent"].to_str().expect("a"),
        seen[1].1["traceparent"].to_str().expect("a"),
    );
    assert_eq!(t0[..35], t1[..35], "same trace id across retries");
}

#[tokio::test]
async fn http_date_retry_after_and_429_without_retry_after() {
    let date = httpdate(std::time::SystemTime::now() + Duration::from_secs(2));
    let (url, s) = serve(vec![
        (503, vec![("retry-after", date)], ""),
        (429, vec![], ""),
        (200, vec![], "ok"),
    ])
    .await;
    let ok = Client::new(fast())
        .execute(Call::new(Method::GET, &url))
        .await
        .expect("success");
    assert_eq!(ok.attempts, 3);
    let g = gaps(&s);
    assert!(
        g[0] >= Duration::from_millis(1000),
        "the date was at least 1 s away: {:?}",
        g[0]
    );
    assert!(
        g[1] <= Duration::from_millis(500),
        "no Retry-After: short jittered backoff, {:?}",
        g[1]
    );
}

fn httpdate(t: std::time::SystemTime) -> String {
    weir_contract::headers::RetryAfter::Date(t).to_header_value()
}

#[tokio::test]
async fn bursts_of_503_then_success_and_404_is_not_retried() {
    let (url, _) = serve(vec![
        (503, vec![], ""),
        (503, vec![], ""),
        (503, vec![], ""),
        (200, vec![], "ok"),
    ])
    .await;
    assert_eq!(
        Client::new(fast())
            .execute(Call::new(Method::GET, &url))
            .await
            .expect("ok")
            .attempts,
        4
    );
    let (url, s) = serve(vec![(
        404,
        vec![],
        r#"{"error":{"code":"NotFound","message":"gone","innerError":{"code":"itemNotFound"}}}"#,
    )])
    .await;
    let e = Client::new(fast())
        .execute(Call::new(Method::GET, &url))
        .await
        .expect_err("404");
    assert_eq!(
        (e.kind, e.status, e.attempts),
        (ErrorKind::Status, Some(404), 1)
    );
    assert_eq!(e.code.as_deref(), Some("NotFound"));
    assert_eq!(e.most_specific_code.as_deref(), Some("itemNotFound"));
    assert_eq!(s.seen.lock().len(), 1);
}

#[tokio::test]
async fn wait_longer_than_the_deadline_fails_fast_naming_the_wait() {
    let (url, s) = serve(vec![(429, vec![("retry-after", "120".into())], "")]).await;
    let cfg = ClientConfig {
        timeout: Duration::from_secs(3),
        ..fast()
    };
    let started = Instant::now();
    let e = Client::new(cfg)
        .execute(Call::new(Method::GET, &url))
        .await
        .expect_err("too long");
    assert_eq!(e.kind, ErrorKind::WaitExceedsDeadline);
    assert_eq!(e.server_asked, Some(Duration::from_secs(120)));
    assert!(started.elapsed() < Duration::from_secs(1), "failed fast");
    assert!(e.to_string().contains("120s"), "{e}");
    assert_eq!(s.seen.lock().len(), 1);
}

#[tokio::test]
async fn post_is_retried_only_with_an_idempotency_key_and_reuses_it() {
    let (url, s) = serve(vec![(503, vec![], ""), (201, vec![], "created")]).await;
    let mut call = Call::new(Method::POST, &url);
    call.body = Some(bytes::Bytes::from_static(b"{\"a\":1}"));
    let ok = Client::new(fast())
        .execute(call.clone())
        .await
        .expect("retried with a key");
    assert_eq!(ok.attempts, 2);
    {
        let seen = s.seen.lock();
        assert_eq!(seen[0].1["idempotency-key"], seen[1].1["idempotency-key"]);
    }
    let (url, s) = serve(vec![(503, vec![], ""), (201, vec![], "created")]).await;
    let cfg = ClientConfig {
        idempotency_keys: false,
        ..fast()
    };
    call.url = url;
    let e = Client::new(cfg)
        .execute(call)
        .await
        .expect_err("not retried");
    assert_eq!(e.kind, ErrorKind::NotRetriedUnsafe);
    assert_eq!(s.seen.lock().len(), 1);
}

#[tokio::test]
async fn unauthorized_refreshes_once_then_surfaces_an_auth_error() {
    let (url, s) = serve(vec![
        (401, vec![("www-authenticate", "Bearer".into())], ""),
        (200, vec![], "ok"),
    ])
    .await;
    let refreshes = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let r = refreshes.clone();
    let cfg = ClientConfig {
        token: Some("old".into()),
        refresh: Some(Arc::new(move || {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async { Ok("fresh".to_owned()) })
        })),
        ..fast()
    };
    let ok = Client::new(cfg.clone())
        .execute(Call::new(Method::GET, &url))
        .await
        .expect("ok after refresh");
    assert_eq!(ok.attempts, 2);
    assert_eq!(s.seen.lock()[1].1["authorization"], "Bearer fresh");
    let (url, _) = serve(vec![(401, vec![], "")]).await;
    let e = Client::new(cfg)
        .execute(Call::new(Method::GET, &url))
        .await
        .expect_err("twice 401");
    assert_eq!((e.kind, e.attempts), (ErrorKind::Auth, 2));
    assert!(e.to_string().contains("check"), "{e}");
    assert_eq!(
        refreshes.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one refresh per call"
    );
}

#[tokio::test]
async fn connection_resets_are_retried_for_idempotent_requests() {
    // The first two connections are accepted and dropped at once; then a real server answers.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..2 {
            if let Ok((s, _)) = l.accept() {
                drop(s);
            }
        }
        let _ = tx.send(l);
    });
    let handoff = tokio::task::spawn_blocking(move || rx.recv().expect("listener back"));
    let client = Client::new(fast());
    let url = format!("http://{addr}/x");
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.execute(Call::new(Method::GET, &url)).await }
    });
    let l = handoff.await.expect("join");
    l.set_nonblocking(true).expect("nonblocking");
    let l = tokio::net::TcpListener::from_std(l).expect("tokio");
    tokio::spawn(async move {
        let _ = axum::serve(l, Router::new().route("/x", any(|| async { "ok" }))).await;
    });
    let ok = pending.await.expect("join").expect("recovered");
    assert_eq!(ok.status, 200);
    assert!(ok.attempts >= 2);
}

#[tokio::test]
async fn slow_bodies_and_the_deadline() {
    let app = Router::new()
        .route(
            "/slow",
            any(|| async {
                let stream = futures_util::stream::unfold(0u8, |n| async move {
                    if n >= 3 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Some((
                        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"chunk ")),
                        n + 1,
                    ))
                });
                Body::from_stream(stream)
            }),
        )
        .route(
            "/stall",
            any(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    let ok = Client::new(fast())
        .execute(Call::new(Method::GET, format!("http://{addr}/slow")))
        .await
        .expect("slow body");
    assert_eq!(&ok.body[..], b"chunk chunk chunk ");
    let cfg = ClientConfig {
        timeout: Duration::from_millis(300),
        ..fast()
    };
    let started = Instant::now();
    let e = Client::new(cfg)
        .execute(Call::new(Method::GET, format!("http://{addr}/stall")))
        .await
        .expect_err("deadline");
    assert_eq!(e.kind, ErrorKind::Deadline);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn malformed_headers_are_ignored_without_panic() {
    let bad = vec![
        ("retry-after", "soon-ish".to_owned()),
        ("x-ratelimit-remaining", "-1".to_owned()),
        ("x-ratelimit-reset", "tomorrow".to_owned()),
        ("ratelimit", "default;r=abc".to_owned()),
        ("ratelimit-policy", "\"x\";q=-5".to_owned()),
    ];
    let (url, s) = serve(vec![
        (429, bad.clone(), "<html>busy</html>"),
        (200, bad, "ok"),
    ])
    .await;
    let ok = Client::new(fast())
        .execute(Call::new(Method::GET, &url))
        .await
        .expect("backoff, then ok");
    assert_eq!(ok.attempts, 2);
    assert!(
        gaps(&s)[0] < Duration::from_secs(1),
        "garbage Retry-After falls back to backoff"
    );
}

#[tokio::test]
async fn an_outage_is_not_amplified() {
    let (url, s) = serve(vec![(503, vec![], "")]).await;
    let cfg = ClientConfig {
        timeout: Duration::from_secs(2),
        max_attempts: 10,
        ..fast()
    };
    let c = Client::new(cfg);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            c.execute(Call::new(Method::GET, &url)).await
        }));
    }
    for t in tasks {
        assert!(t.await.expect("join").is_err());
    }
    let received = s.seen.lock().len();
    // 50 first attempts; the budget (20% + a small floor) and the breaker hold retries back.
    assert!(
        received <= 50 + 10 + 20 + 10,
        "the server saw {received} requests for 50 calls"
    );
}

#[tokio::test]
async fn pacing_from_rate_limit_headers_avoids_429s() {
    use weir_gateway::layer::{RateLimitLayer, Scopes};
    use weir_limit::{LimitDef, Limiter, Policy, Quota};
    let policy = Policy::new(vec![LimitDef::rate(
        "api",
        &[],
        Quota::per_second(20).expect("q"),
    )])
    .expect("p");
    let limiter = Arc::new(Limiter::in_memory(policy));
    let app = Router::new()
        .route("/x", any(|| async { "ok" }))
        .layer(RateLimitLayer::new(
            limiter,
            weir_contract::Dialect::Detail,
            |_req: &axum::http::Request<Body>| Scopes::default(),
        ));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    let c = Client::new(fast());
    let url = format!("http://{addr}/x");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                c.execute(Call::new(Method::GET, &url))
                    .await
                    .expect("every request succeeds");
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    let elapsed = started.elapsed();
    let limited = c
        .stats()
        .rate_limited
        .load(std::sync::atomic::Ordering::Relaxed);
    // 80 requests at 20/s with a burst of 20: ideal is 3 s.
    assert!(limited <= 2, "{limited} responses were 429");
    assert!(elapsed <= Duration::from_millis(3600), "took {elapsed:?}");
}

#[tokio::test]
async fn works_as_a_reqwest_middleware() {
    let (url, s) = serve(vec![
        (503, vec![("retry-after", "0".into())], ""),
        (200, vec![], "ok"),
    ])
    .await;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(weir_client::middleware::WeirMiddleware::new(fast()))
        .build();
    let resp = client.get(&url).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(s.seen.lock().len(), 2);
    let (url, _) = serve(vec![(404, vec![], "{\"detail\":\"nope\"}")]).await;
    let resp = client
        .get(&url)
        .send()
        .await
        .expect("a final error status is a response");
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn paces_from_x_ratelimit_headers_alone() {
    // 2 per window, both used, the window whole again in 2 s: one request per second.
    let reset = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 2)
    .to_string();
    let headers = vec![
        ("x-ratelimit-limit", "2".to_owned()),
        ("x-ratelimit-remaining", "0".to_owned()),
        ("x-ratelimit-reset", reset),
    ];
    let (url, s) = serve(vec![(200, headers, "ok")]).await;
    let c = Client::new(fast());
    c.execute(Call::new(Method::GET, &url))
        .await
        .expect("first");
    c.execute(Call::new(Method::GET, &url))
        .await
        .expect("second, paced");
    let gap = gaps(&s)[0];
    assert!(
        gap >= Duration::from_millis(900),
        "the second request waited for the window: {gap:?}"
    );
    assert_eq!(
        c.stats()
            .rate_limited
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn absurd_waits_from_a_server_are_clamped_not_panics() {
    // Numbers at the edge of what the grammars allow, on a 429 and on a 200.
    let huge = vec![
        ("retry-after", "99999999999999999999999".to_owned()),
        ("x-ratelimit-limit", "1".to_owned()),
        ("x-ratelimit-remaining", "0".to_owned()),
        ("x-ratelimit-reset", "999999999999".to_owned()),
        ("ratelimit-policy", "\"p\";q=1;w=999999999999999".to_owned()),
        ("ratelimit", "\"p\";r=0;t=999999999999999".to_owned()),
    ];
    let (url, _) = serve(vec![(200, huge.clone(), "ok"), (429, huge, "")]).await;
    let cfg = ClientConfig {
        timeout: Duration::from_secs(2),
        ..fast()
    };
    let c = Client::new(cfg);
    c.execute(Call::new(Method::GET, &url))
        .await
        .expect("the first answer is a 200");
    let started = Instant::now();
    let e = c
        .execute(Call::new(Method::GET, &url))
        .await
        .expect_err("paced past the deadline");
    assert_eq!(e.kind, ErrorKind::WaitExceedsDeadline);
    assert!(started.elapsed() < Duration::from_secs(1), "fails fast");
    let (url, _) = serve(vec![(
        429,
        vec![("retry-after", "99999999999999999999999".to_owned())],
        "",
    )])
    .await;
    let e = Client::new(fast())
        .execute(Call::new(Method::GET, &url))
        .await
        .expect_err("too long");
    assert_eq!(e.kind, ErrorKind::WaitExceedsDeadline);
}
