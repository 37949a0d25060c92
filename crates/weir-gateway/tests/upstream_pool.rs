//! The upstream connection pool against real upstreams on 127.0.0.1: reuse, connections
//! the upstream closed, and bodies abandoned half-way.

use axum::body::Body;
use http::uri::Authority;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use weir_gateway::upstream::UpstreamPool;

/// A keep-alive upstream answering `GET /small` with "ok" and `GET /big` with 4 MiB;
/// returns its address and how many connections it accepted.
async fn upstream() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let body = if req.uri().path() == "/big" {
                        Body::from(vec![b'x'; 4 << 20])
                    } else {
                        Body::from("ok")
                    };
                    Ok::<_, std::convert::Infallible>(http::Response::new(body))
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
            );
        }
    });
    (addr, accepted)
}

fn get(addr: &str, path: &str) -> http::Request<Body> {
    http::Request::get(format!("http://{addr}{path}"))
        .body(Body::empty())
        .expect("request")
}

async fn text(resp: http::Response<Body>) -> String {
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let (addr, accepted) = upstream().await;
    let pool = UpstreamPool::new();
    for _ in 0..5 {
        let resp = pool.send(get(&addr, "/small")).await.expect("response");
        assert_eq!(text(resp).await, "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    let authority: Authority = addr.parse().expect("authority");
    assert_eq!(pool.idle_connections(&authority), 1);
}

#[tokio::test]
async fn an_idle_connection_past_its_time_is_not_reused() {
    let (addr, accepted) = upstream().await;
    // Every connection is past its idle time as soon as it is returned.
    let pool = UpstreamPool::with_idle_timeout(Duration::ZERO);
    for n in 1..=3 {
        let resp = pool.send(get(&addr, "/small")).await.expect("response");
        assert_eq!(text(resp).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), n);
    }
}

#[tokio::test]
async fn a_body_abandoned_half_way_does_not_return_its_connection() {
    let (addr, accepted) = upstream().await;
    let pool = UpstreamPool::new();
    let resp = pool.send(get(&addr, "/big")).await.expect("response");
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert!(first.is_data());
    drop(body);
    let authority: Authority = addr.parse().expect("authority");
    assert_eq!(pool.idle_connections(&authority), 0);
    // The next request gets a fresh connection and a whole, correct answer.
    let resp = pool.send(get(&addr, "/small")).await.expect("response");
    assert_eq!(text(resp).await, "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_not_used_again() {
    // An upstream that answers one request per connection with a keep-alive response
    // and then closes the socket anyway.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => seen.extend_from_slice(&buf[..k]),
                    }
                }
                let body = format!("conn-{n}");
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    let pool = UpstreamPool::new();
    let authority: Authority = addr.parse().expect("authority");
    let first = pool.send(get(&addr, "/")).await.expect("response");
    assert_eq!(text(first).await, "conn-1");
    // Wait (bounded) until the client side has seen the upstream's close.
    for _ in 0..2000 {
        if pool.idle_connections(&authority) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        pool.idle_connections(&authority),
        0,
        "the close was noticed"
    );
    let second = pool.send(get(&addr, "/")).await.expect("a new connection");
    assert_eq!(text(second).await, "conn-2");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn refused_and_unsupported_upstreams_are_typed_errors() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let pool = UpstreamPool::new();
    let err = pool
        .send(get(&addr, "/"))
        .await
        .expect_err("nothing listens");
    assert!(err.to_string().contains("connecting to"), "{err}");
    let https = http::Request::get("https://127.0.0.1:1/")
        .body(Body::empty())
        .expect("request");
    let err = pool.send(https).await.expect_err("https");
    assert!(err.to_string().contains("only http://"), "{err}");
}

#[tokio::test]
async fn a_body_the_upstream_stops_sending_ends_with_an_error() {
    // An upstream that promises 10 bytes, sends 5 in two parts, then goes quiet (keeping the
    // socket open).
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nab")
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = stream.write_all(b"cde").await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let pool = UpstreamPool::new();
    let authority: Authority = addr.parse().expect("authority");
    let resp = pool
        .send_bounded(get(&addr, "/"), Duration::from_millis(300))
        .await
        .expect("the head arrives");
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match body.frame().await {
                Some(Ok(f)) => got.extend_from_slice(f.data_ref().map_or(&[][..], |d| &d[..])),
                Some(Err(e)) => return Some(e.to_string()),
                None => return None,
            }
        }
    })
    .await
    .expect("the stalled body ends within 5 s");
    assert_eq!(got, b"abcde", "a pause shorter than the bound is fine");
    let err = ended.expect("an error, not a clean end");
    assert!(err.contains("paused"), "{err}");
    drop(body);
    assert_eq!(
        pool.idle_connections(&authority),
        0,
        "not returned to the pool"
    );
}
