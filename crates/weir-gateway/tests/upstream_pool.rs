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
    // Bound but never listening, so nothing else can take the port while it refuses.
    let refusing = tokio::net::TcpSocket::new_v4().expect("socket");
    refusing
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let addr = refusing.local_addr().expect("addr").to_string();
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

/// Reads one request (head and body, framed by Content-Length or chunked) from `stream`;
/// `None` once the client closed.
async fn read_request(stream: &mut tokio::net::TcpStream, seen: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
            let body_start = end + 4;
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let total = if let Some(n) = length {
                (seen.len() >= body_start + n).then_some(body_start + n)
            } else if head.contains("transfer-encoding: chunked") {
                seen[body_start..]
                    .windows(5)
                    .position(|w| w == b"0\r\n\r\n")
                    .map(|p| body_start + p + 5)
            } else {
                Some(body_start)
            };
            if let Some(total) = total {
                return Some(seen.drain(..total).collect());
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => seen.extend_from_slice(&buf[..k]),
        }
    }
}

/// An upstream answering every request on a connection with `answer(request)` (raw bytes),
/// closing the connection after an answer that says so; returns its address, how many
/// connections it accepted, and every request it read.
async fn raw_upstream(
    answer: fn(&[u8]) -> Vec<u8>,
) -> (
    String,
    Arc<AtomicUsize>,
    Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (count, log) = (accepted.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let log = log.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Some(req) = read_request(&mut stream, &mut seen).await {
                    let out = answer(&req);
                    log.lock().expect("log").push(req);
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                    if out.windows(17).any(|w| w == b"connection: close") {
                        let _ = stream.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted, requests)
}

#[tokio::test]
async fn chunked_responses_are_decoded_and_their_connection_reused() {
    let (addr, accepted, _) = raw_upstream(|_| {
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 1\r\n\r\n"
            .to_vec()
    })
    .await;
    let pool = UpstreamPool::new();
    for _ in 0..3 {
        let resp = pool.send(get(&addr, "/")).await.expect("response");
        assert_eq!(text(resp).await, "abcde");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_delimited_by_close_is_read_whole_and_not_reused() {
    let (addr, accepted, _) =
        raw_upstream(|_| b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end".to_vec())
            .await;
    let pool = UpstreamPool::new();
    for n in 1..=2 {
        let resp = pool.send(get(&addr, "/")).await.expect("response");
        assert_eq!(text(resp).await, "until the end");
        assert_eq!(accepted.load(Ordering::SeqCst), n);
    }
}

#[tokio::test]
async fn interim_responses_are_skipped_and_head_has_no_body() {
    let (addr, accepted, requests) = raw_upstream(|req| {
        if req.starts_with(b"HEAD") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".to_vec()
        } else {
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"
                .to_vec()
        }
    })
    .await;
    let pool = UpstreamPool::new();
    let head = http::Request::head(format!("http://{addr}/h"))
        .body(Body::empty())
        .expect("request");
    let resp = pool.send(head).await.expect("response");
    assert_eq!(resp.headers()["content-length"], "5");
    assert_eq!(text(resp).await, "");
    let post = http::Request::post(format!("http://{addr}/p"))
        .header("expect", "100-continue")
        .body(Body::from("hello"))
        .expect("request");
    let resp = pool.send(post).await.expect("response");
    assert_eq!(resp.status(), 201);
    assert_eq!(text(resp).await, "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "both on one connection");
    let requests = requests.lock().expect("log");
    let post = String::from_utf8_lossy(&requests[1]);
    assert!(post.starts_with("POST /p HTTP/1.1\r\n"), "{post}");
    assert!(post.contains(&format!("host: {addr}\r\n")), "{post}");
    assert!(post.contains("content-length: 5\r\n"), "{post}");
    assert!(post.ends_with("\r\n\r\nhello"), "{post}");
}

#[tokio::test]
async fn a_body_of_unknown_length_is_sent_chunked() {
    let (addr, _, requests) =
        raw_upstream(|_| b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec()).await;
    let parts = futures_util::stream::iter(
        ["one ", "two ", "three"]
            .map(|s| Ok::<_, std::io::Error>(bytes::Bytes::from_static(s.as_bytes()))),
    );
    let post = http::Request::post(format!("http://{addr}/stream"))
        .header("content-length", "999")
        .body(Body::from_stream(parts))
        .expect("request");
    let resp = UpstreamPool::new().send(post).await.expect("response");
    assert_eq!(resp.status(), 200);
    let requests = requests.lock().expect("log");
    let sent = String::from_utf8_lossy(&requests[0]);
    assert!(sent.contains("transfer-encoding: chunked\r\n"), "{sent}");
    assert!(
        !sent.contains("content-length"),
        "the caller's length is not sent: {sent}"
    );
    assert!(
        sent.ends_with("\r\n\r\n4\r\none \r\n4\r\ntwo \r\n5\r\nthree\r\n0\r\n\r\n"),
        "{sent}"
    );
}

#[tokio::test]
async fn malformed_or_missing_answers_are_typed_errors() {
    let (addr, _, _) = raw_upstream(|_| {
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd".to_vec()
    })
    .await;
    let pool = UpstreamPool::new();
    let err = pool
        .send(get(&addr, "/"))
        .await
        .expect_err("conflicting lengths");
    assert!(err.to_string().contains("Content-Length"), "{err}");

    let (addr, _, _) = raw_upstream(|_| b"connection: close".to_vec()).await;
    let err = pool.send(get(&addr, "/")).await.expect_err("no answer");
    assert!(err.to_string().contains("malformed response head"), "{err}");

    let (addr, _, _) = raw_upstream(|_| {
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 10\r\n\r\nabc".to_vec()
    })
    .await;
    let resp = pool.send(get(&addr, "/")).await.expect("the head arrives");
    let err = resp.into_body().collect().await.expect_err("cut short");
    assert!(err.to_string().contains("part-way"), "{err}");
}

#[tokio::test]
async fn an_upstream_that_closes_without_answering_is_a_typed_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut seen = Vec::new();
            let _ = read_request(&mut stream, &mut seen).await;
            drop(stream);
        }
    });
    let err = UpstreamPool::new()
        .send(get(&addr, "/"))
        .await
        .expect_err("closed");
    assert!(err.to_string().contains("without answering"), "{err}");
}

#[tokio::test]
async fn a_connection_with_bytes_past_its_response_is_not_reused() {
    // Two bytes more than the response's length: whatever they are, the connection is
    // out of step and must not carry the next request.
    let (addr, accepted, _) =
        raw_upstream(|_| b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokXX".to_vec()).await;
    let pool = UpstreamPool::new();
    for n in 1..=2 {
        let resp = pool.send(get(&addr, "/")).await.expect("response");
        assert_eq!(text(resp).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), n);
    }
}

#[tokio::test]
async fn a_response_head_sent_a_byte_at_a_time_is_read() {
    // An interim response, then the final head, each byte its own write (and segment).
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let mut seen = Vec::new();
        if read_request(&mut stream, &mut seen).await.is_none() {
            return;
        }
        let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nx-slow: yes\r\ncontent-length: 4\r\n\r\nslow";
        for b in answer {
            if stream.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
    });
    let pool = UpstreamPool::new();
    // A bound, so that a head never parsed again fails the test instead of hanging it.
    let resp = tokio::time::timeout(Duration::from_secs(10), pool.send(get(&addr, "/")))
        .await
        .expect("answered")
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-slow"], "yes");
    assert_eq!(text(resp).await, "slow");
}
