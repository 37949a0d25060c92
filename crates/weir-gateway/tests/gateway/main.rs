//! `weir serve` over real sockets: one test (or more) per numbered behaviour of the
//! gateway issue. Each test starts its own gateway on 127.0.0.1:0 in front of the built-in
//! demo upstream.

mod support;

use http::StatusCode;
use std::time::Duration;
use support::{client, config, json, start, temp_db, with_server};

const ECHO: &str = r#"
[[routes]]
name = "echo"
prefix = "/v1/echo"
upstream = "demo"
methods = ["GET", "HEAD", "POST"]
max_body = "1MiB"
"#;

/// A route to the demo upstream's streamed download (`GET /v1/bytes?n=N`), open to all.
const BYTES: &str =
    "\n[[routes]]\nname = \"bytes\"\nprefix = \"/v1/bytes\"\nupstream = \"demo\"\nauth = false\n";

const DOCS: &str = r#"
[[routes]]
name = "documents"
prefix = "/v1/documents"
upstream = "demo"
methods = ["POST"]
document = true
idempotency = true
require_length = true
max_body = "64KiB"
scopes = ["documents:write"]
media_types = ["application/pdf", "text/plain", "text/csv", "application/json", "text/markdown"]
"#;

const PLANS: &str = r#"
[[limits]]
name = "org-minute"
scope = ["organisation"]
window = "60s"
per_plan = { free = 10, pro = 30, max = 60 }
"#;

mod proxy {
    use super::*;

    /// An upstream that answers every request with 200 and reports each request head it
    /// got (lower-cased: its request line, then its field lines in order) on the channel.
    async fn recording_upstream() -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<Vec<String>>,
    ) {
        scripted_upstream(&["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]).await
    }

    #[tokio::test]
    async fn the_upstream_gets_the_callers_fields_rewritten() {
        let (up, mut heads) = recording_upstream().await;
        let route = format!(
            "[upstreams.raw]\nurl = \"http://{up}\"\n[[routes]]\nname = \"raw\"\nprefix = \"/v1/raw\"\nupstream = \"raw\"\n"
        );
        let gw = start(&config(&route, &temp_db("p0"))).await;
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let resp = client()
            .get(gw.url("/v1/raw/a?b=1"))
            .header("authorization", "Bearer free-secret")
            .header("x-weir-organisation", "org-pro")
            .header("x-weir-key-id", "k-pro")
            .header("x-request-id", "req-1")
            .header("traceparent", tp)
            .header("tracestate", "a=1")
            .header("tracestate", "b=2")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "https")
            .header("x-custom", "kept")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::OK);
        let fields = heads.recv().await.expect("a request");
        let named = |n: &str| values(&fields, n);
        assert_eq!(named("host"), [up.to_string().as_str()], "{fields:?}");
        assert!(
            named("authorization").is_empty(),
            "the key stays at the edge"
        );
        assert_eq!(
            named("x-weir-organisation"),
            ["org-free"],
            "not the client's claim"
        );
        assert_eq!(named("x-weir-key-id"), ["k-free"]);
        assert_eq!(named("x-weir-user"), ["u-free"]);
        assert_eq!(named("x-weir-plan"), ["free"]);
        assert_eq!(named("x-request-id"), ["req-1"]);
        let parent = named("traceparent");
        assert_eq!(parent.len(), 1);
        assert!(parent[0].starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert_ne!(parent[0], tp, "weir's own span");
        assert_eq!(
            named("tracestate"),
            ["a=1", "b=2"],
            "every tracestate field goes on"
        );
        assert_eq!(named("x-forwarded-for"), ["203.0.113.9, 127.0.0.1"]);
        assert_eq!(named("x-forwarded-proto"), ["http"]);
        assert_eq!(named("x-custom"), ["kept"]);

        // A caller without a valid trace gets a new one, and its tracestate is dropped.
        let resp = client()
            .get(gw.url("/v1/raw"))
            .header("x-api-key", "free-secret")
            .header("traceparent", "garbage")
            .header("tracestate", "a=1")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::OK);
        let fields = heads.recv().await.expect("a request");
        assert!(values(&fields, "tracestate").is_empty(), "{fields:?}");
        assert!(values(&fields, "x-api-key").is_empty(), "{fields:?}");
        let parent = values(&fields, "traceparent");
        assert!(
            parent.len() == 1 && parent[0].starts_with("00-"),
            "{fields:?}"
        );
    }

    /// An upstream that answers its requests with `answers` in turn, one connection after
    /// another or several on one (the last answer again after the list), and reports each
    /// request head it got (lower-cased: its request line, then its field lines in order)
    /// on the channel.
    async fn scripted_upstream(
        answers: &'static [&'static str],
    ) -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<Vec<String>>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (tx, served) = (tx.clone(), served.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                            buf.drain(..end + 4);
                            let _ = tx.send(head.split("\r\n").map(str::to_owned).collect());
                            let n = served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let answer = answers[n.min(answers.len() - 1)];
                            if s.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn the_client_gets_the_upstreams_fields_less_hop_by_hop_ones_and_weirs_own() {
        // As received (any case, repeated fields, the upstream's Date), and once with a
        // Connection that names a private field.
        const PASSED: &str = "HTTP/1.1 200 OK\r\nX-Custom: yes\r\nX-REQUEST-ID: upstream-id\r\n\
             x-ratelimit-remaining: 777777\r\nKeep-Alive: timeout=5\r\nSet-Cookie: a=1\r\n\
             Date: Sun, 22 Nov 2026 00:00:00 GMT\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok";
        let (up, _heads) = scripted_upstream(&[
            PASSED,
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nX-Private: secret\r\n\
             X-Custom: yes\r\nRateLimit: \"x\";r=1;t=1\r\nContent-Length: 2\r\n\r\nok",
            PASSED,
        ])
        .await;
        let route = format!(
            "[upstreams.raw]\nurl = \"http://{up}\"\n[[routes]]\nname = \"raw\"\nprefix = \"/v1/raw\"\nupstream = \"raw\"\n"
        );
        let gw = start(&with_server(
            &config(&format!("{route}{PLANS}"), &temp_db("p6")),
            "ratelimit_fields = true",
        ))
        .await;
        let c = client();
        for n in 0..2 {
            let resp = c
                .get(gw.url("/v1/raw"))
                .bearer_auth("free-secret")
                .header("x-request-id", "req-9")
                .send()
                .await
                .expect("send");
            assert_eq!(resp.status(), StatusCode::OK);
            let h = resp.headers().clone();
            let all = |name: &str| -> Vec<String> {
                h.get_all(name)
                    .iter()
                    .map(|v| v.to_str().unwrap_or("?").to_owned())
                    .collect()
            };
            assert_eq!(all("x-custom"), ["yes"], "{n}: {h:?}");
            assert_eq!(
                all("x-request-id"),
                ["req-9"],
                "{n}: weir's, not the upstream's"
            );
            assert_eq!(all("x-ratelimit-remaining").len(), 1, "{n}: {h:?}");
            assert_ne!(
                all("x-ratelimit-remaining"),
                ["777777"],
                "{n}: weir's count"
            );
            assert!(
                all("keep-alive").is_empty() && all("x-private").is_empty(),
                "{h:?}"
            );
            assert_eq!(all("date").len(), 1, "{n}: one Date: {h:?}");
            if n == 0 {
                assert_eq!(all("set-cookie"), ["a=1", "b=2"]);
                assert_eq!(
                    all("date"),
                    ["Sun, 22 Nov 2026 00:00:00 GMT"],
                    "the upstream's"
                );
                assert_eq!(resp.text().await.expect("body"), "ok");
            } else {
                assert!(
                    !all("ratelimit").contains(&"\"x\";r=1;t=1".to_owned()),
                    "{h:?}"
                );
            }
        }
        // The same through `Gateway::handle`, the service other servers embed: the fields
        // are all in the response's map.
        let req = http::Request::get("/v1/raw")
            .header("authorization", "Bearer free-secret")
            .header("x-request-id", "req-10")
            .body(axum::body::Body::empty())
            .expect("request");
        let resp = gw
            .gateway
            .handle(req, "127.0.0.1:9".parse().expect("peer"))
            .await;
        let h = resp.headers();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(h["x-custom"], "yes");
        assert_eq!(h.get_all("set-cookie").iter().count(), 2, "{h:?}");
        assert_eq!(
            h.get_all("x-request-id").iter().collect::<Vec<_>>(),
            ["req-10"]
        );
        assert_eq!(
            h.get_all("x-ratelimit-remaining").iter().count(),
            1,
            "{h:?}"
        );
        assert_ne!(h["x-ratelimit-remaining"], "777777");
        assert!(h.get("keep-alive").is_none(), "{h:?}");
    }

    #[tokio::test]
    async fn the_upstream_is_sent_the_callers_target_under_its_base_path() {
        let (up, mut heads) = recording_upstream().await;
        // One upstream given as a bare origin, one with a path every target goes under.
        let routes = format!(
            "[upstreams.raw]\nurl = \"http://{up}\"\n[upstreams.based]\nurl = \"http://{up}/base/\"\n\
             [[routes]]\nname = \"raw\"\nprefix = \"/v1/raw\"\nupstream = \"raw\"\n\
             [[routes]]\nname = \"based\"\nprefix = \"/v1/based\"\nupstream = \"based\"\n"
        );
        let gw = start(&config(&routes, &temp_db("p5"))).await;
        let c = client();
        for (path, line) in [
            ("/v1/raw/a%20b?q=1&r", "get /v1/raw/a%20b?q=1&r http/1.1"),
            ("/v1/raw", "get /v1/raw http/1.1"),
            ("/v1/based/x?y=2", "get /base/v1/based/x?y=2 http/1.1"),
        ] {
            let resp = c
                .get(gw.url(path))
                .bearer_auth("free-secret")
                .send()
                .await
                .expect("send");
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            let head = heads.recv().await.expect("a request");
            assert_eq!(head[0], line, "{head:?}");
            assert_eq!(values(&head, "host"), [up.to_string().as_str()], "{head:?}");
        }
    }

    #[tokio::test]
    async fn identity_fields_take_the_configured_names_and_cannot_be_spoofed() {
        let (up, mut heads) = recording_upstream().await;
        let route = format!(
            "[upstreams.raw]\nurl = \"http://{up}\"\n[[routes]]\nname = \"raw\"\nprefix = \"/v1/raw\"\nupstream = \"raw\"\n\
             [server.identity_headers]\nkey_id = \"\"\nuser = \"X-User-Id\"\norganisation = \"X-Org\"\nplan = \"\"\n"
        );
        let gw = start(&config(&route, &temp_db("p0-names"))).await;
        let resp = client()
            .get(gw.url("/v1/raw"))
            .header("authorization", "Bearer free-secret")
            // A caller posing as someone else, under the new names and the old ones.
            .header("x-user-id", "u-pro")
            .header("X-Org", "org-pro")
            .header("x-weir-plan", "max")
            .header("x-weir-user", "u-max")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::OK);
        let fields = heads.recv().await.expect("a request");
        let named = |n: &str| values(&fields, n);
        assert_eq!(named("x-user-id"), ["u-free"], "{fields:?}");
        assert_eq!(named("x-org"), ["org-free"], "{fields:?}");
        assert!(
            fields.iter().all(|f| !f.starts_with("x-weir-")),
            "parts left out are not sent, and no client x-weir-* field passes: {fields:?}"
        );
        assert_eq!(named("x-request-id").len(), 1, "the rest as usual");

        // Names weir manages, repeated names and non-names are refused before listening,
        // naming the key.
        for (table, path) in [
            ("user = \"X-Request-Id\"", "server.identity_headers.user"),
            ("plan = \"Idempotency-Key\"", "server.identity_headers.plan"),
            ("plan = \"Upgrade\"", "server.identity_headers.plan"),
            (
                "key_id = \"Content-Length\"",
                "server.identity_headers.key_id",
            ),
            (
                "user = \"X-Who\"\norganisation = \"x-who\"",
                "server.identity_headers.organisation",
            ),
            ("key_id = \"bad name\"", "server.identity_headers.key_id"),
        ] {
            let text = config(&format!("[server.identity_headers]\n{table}\n"), "unused");
            let e = weir_gateway::Config::parse(&text).expect_err(table);
            assert_eq!(e.path, path, "{e}");
        }
    }

    #[tokio::test]
    async fn the_scheme_comes_from_a_trusted_proxy_only() {
        let (up, mut heads) = recording_upstream().await;
        let route = format!(
            "[upstreams.raw]\nurl = \"http://{up}\"\n[[routes]]\nname = \"raw\"\nprefix = \"/v1/raw\"\nupstream = \"raw\"\n"
        );
        let text = config(&route, &temp_db("p0-proto"));
        let trusting = with_server(&text, "trusted_proxies = [\"127.0.0.1\"]");
        assert_ne!(text, trusting);
        // Behind a TLS-terminating proxy weir trusts, the upstream learns the client used
        // https; from anyone else the claim is replaced with weir's own scheme.
        for (toml, sent, want) in [
            (&trusting, "https", "https"),
            (&trusting, "HTTPS, http", "https"),
            (&trusting, "gopher", "http"),
            (&text, "https", "http"),
        ] {
            let gw = start(toml).await;
            let resp = client()
                .get(gw.url("/v1/raw"))
                .header("authorization", "Bearer free-secret")
                .header("x-forwarded-proto", sent)
                .send()
                .await
                .expect("send");
            assert_eq!(resp.status(), StatusCode::OK);
            let fields = heads.recv().await.expect("a request");
            assert_eq!(
                values(&fields, "x-forwarded-proto"),
                [want],
                "{sent}: {fields:?}"
            );
        }
    }

    /// The values of the field `name` among `fields` (`name: value` lines, lower case).
    fn values<'f>(fields: &'f [String], name: &str) -> Vec<&'f str> {
        fields
            .iter()
            .filter_map(|f| f.strip_prefix(name).and_then(|v| v.strip_prefix(": ")))
            .collect()
    }

    #[tokio::test]
    async fn routes_by_prefix_and_drops_hop_by_hop_headers() {
        let gw = start(&config(ECHO, &temp_db("p1"))).await;
        let resp = client()
            .get(gw.url("/v1/echo/deeper/path?x=1"))
            .header("authorization", "Bearer free-secret")
            .header("connection", "keep-alive, x-private")
            .header("x-private", "secret")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = json(resp).await;
        assert_eq!(body["path"], "/v1/echo/deeper/path");
        assert_eq!(body["query"], "x=1");
        assert_eq!(body["connection_header"], serde_json::Value::Null);
        assert_eq!(
            body["authorization_forwarded"], false,
            "the API key never reaches the upstream"
        );
        assert_eq!(body["key_id"], "k-free");
        assert_eq!(body["organisation"], "org-free");
        let resp = client()
            .get(gw.url("/v2/unknown"))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(json(resp).await["detail"]["code"], "REQUEST_NOT_FOUND");
    }

    #[tokio::test]
    async fn streams_large_bodies_both_ways() {
        let extra = format!("{ECHO}{BYTES}");
        let gw = start(&config(&extra, &temp_db("p2"))).await;
        // 256 MiB down, streamed chunk by chunk.
        let n: u64 = 256 << 20;
        let mut resp = client()
            .get(gw.url(&format!("/v1/bytes?n={n}")))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::OK);
        let mut got = 0u64;
        while let Some(chunk) = resp.chunk().await.expect("chunk") {
            got += chunk.len() as u64;
        }
        assert_eq!(got, n);
        // An upload with Content-Length is streamed to the upstream, not buffered.
        let body = vec![b'x'; 900 * 1024];
        let resp = client()
            .post(gw.url("/v1/echo"))
            .header("x-api-key", "free-secret")
            .body(body)
            .send()
            .await
            .expect("send");
        assert_eq!(json(resp).await["bytes"], 900 * 1024);
    }
}

mod identity {
    use super::*;

    #[tokio::test]
    async fn missing_unknown_expired_and_scope() {
        let gw = start(&config(&format!("{ECHO}{DOCS}"), &temp_db("i1"))).await;
        let c = client();
        let resp = c.get(gw.url("/v1/echo")).send().await.expect("send");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(resp
            .headers()
            .get("www-authenticate")
            .is_some_and(|v| v.to_str().is_ok_and(|s| s.starts_with("Bearer"))));
        assert_eq!(json(resp).await["detail"]["code"], "AUTH_HEADER_MISSING");
        let resp = c
            .get(gw.url("/v1/echo"))
            .bearer_auth("wrong")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(resp.headers().contains_key("www-authenticate"));
        assert_eq!(json(resp).await["detail"]["code"], "AUTH_TOKEN_INVALID");
        let resp = c
            .get(gw.url("/v1/echo"))
            .bearer_auth("old-secret")
            .send()
            .await
            .expect("send");
        assert_eq!(json(resp).await["detail"]["code"], "AUTH_TOKEN_EXPIRED");
        // k-free-2 lacks documents:write.
        let resp = c
            .post(gw.url("/v1/documents"))
            .header("x-api-key", "free-secret-2")
            .header("content-type", "text/plain")
            .body("hello")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(json(resp).await["detail"]["code"], "AUTH_SCOPE_MISSING");
        // A key stored only as a hash works.
        let resp = c
            .get(gw.url("/v1/echo"))
            .bearer_auth("pro-secret")
            .send()
            .await
            .expect("send");
        assert_eq!(json(resp).await["key_id"], "k-pro");
    }
}

mod limits {
    use super::*;

    #[tokio::test]
    async fn plan_limit_is_shared_across_an_organisations_keys() {
        let gw = start(&config(&format!("{ECHO}{PLANS}"), &temp_db("l1"))).await;
        let c = client();
        for i in 0..10 {
            let key = if i % 2 == 0 {
                "free-secret"
            } else {
                "free-secret-2"
            };
            let resp = c
                .get(gw.url("/v1/echo"))
                .bearer_auth(key)
                .send()
                .await
                .expect("send");
            assert_eq!(resp.status(), StatusCode::OK, "request {i}");
            assert_eq!(resp.headers()["x-ratelimit-limit"], "10");
            assert_eq!(
                resp.headers()["x-ratelimit-remaining"],
                (9 - i).to_string().as_str()
            );
        }
        let resp = c
            .get(gw.url("/v1/echo"))
            .bearer_auth("free-secret-2")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = resp.headers()["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("delta-seconds");
        assert!((1..=6).contains(&retry), "{retry}");
        assert_eq!(resp.headers()["cache-control"], "no-store");
        assert_eq!(resp.headers()["x-ratelimit-remaining"], "0");
        let body = json(resp).await;
        assert_eq!(body["detail"]["code"], "SERVICE_RATE_LIMITED");
        assert!(body["detail"]["hint"]
            .as_str()
            .is_some_and(|h| h.contains("Retry after")));
        // In problem+json, the refusal names the violated policy as RateLimit-Policy does.
        let resp = c
            .get(gw.url("/v1/echo"))
            .bearer_auth("free-secret")
            .header("accept", "application/problem+json")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let body = json(resp).await;
        assert_eq!(
            body["type"],
            "https://iana.org/assignments/http-problem-types#quota-exceeded"
        );
        assert_eq!(body["violated-policies"], serde_json::json!(["org-minute"]));
        assert_eq!(body["title"], "Too Many Requests");
        // The pro organisation is unaffected.
        let resp = c
            .get(gw.url("/v1/echo"))
            .bearer_auth("pro-secret")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-ratelimit-limit"], "30");
    }

    #[tokio::test]
    async fn ip_limit_read_write_classes_and_several_windows() {
        let limits = r#"
[[limits]]
name = "ip-burst"
scope = ["ip"]
window = "10s"
count = 6
[[limits]]
name = "writes"
scope = ["user"]
methods = "write"
window = "1s"
count = 2
[[limits]]
name = "user-day"
scope = ["user"]
window = "24h"
count = 1000
"#;
        let gw = start(&config(&format!("{ECHO}{limits}"), &temp_db("l2"))).await;
        let c = client();
        for _ in 0..2 {
            assert_eq!(
                c.post(gw.url("/v1/echo"))
                    .bearer_auth("free-secret")
                    .body("{}")
                    .send()
                    .await
                    .expect("send")
                    .status(),
                StatusCode::OK
            );
        }
        let resp = c
            .post(gw.url("/v1/echo"))
            .bearer_auth("free-secret")
            .body("{}")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "write limit");
        let resp = c
            .get(gw.url("/v1/echo"))
            .bearer_auth("free-secret")
            .send()
            .await
            .expect("send");
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "reads are not limited by the write class"
        );
        let policy = resp.headers()["ratelimit-policy"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(
            policy.contains(r#""ip-burst";q=6;w=10"#)
                && policy.contains(r#""user-day";q=1000;w=86400"#),
            "{policy}"
        );
        // 3 requests from this IP consumed its 6 so far: the refused write consumed nothing
        // from any limit (all-or-nothing). Three more pass, the fourth meets the IP limit.
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(
                c.get(gw.url("/v1/echo"))
                    .bearer_auth("pro-secret")
                    .send()
                    .await
                    .expect("send")
                    .status(),
            );
        }
        assert_eq!(
            statuses,
            [
                StatusCode::OK,
                StatusCode::OK,
                StatusCode::OK,
                StatusCode::TOO_MANY_REQUESTS
            ]
        );
    }

    #[tokio::test]
    async fn organisation_concurrency_limit_and_batch_cost() {
        let extra = r#"
[[routes]]
name = "slow"
prefix = "/v1/slow"
upstream = "demo"
methods = ["GET"]

[[routes]]
name = "batch"
prefix = "/v1/echo/batch"
upstream = "demo"
methods = ["POST"]
json = true
cost_from = "/items"

[[limits]]
name = "org-inflight"
scope = ["organisation"]
concurrency = 2
routes = ["slow"]

[[limits]]
name = "org-items"
scope = ["organisation"]
window = "60s"
count = 25
routes = ["batch"]
"#;
        let gw = start(&config(extra, &temp_db("l3"))).await;
        let c = client();
        let slow = |key: &'static str| {
            let (c, url) = (c.clone(), gw.url("/v1/slow?ms=600"));
            tokio::spawn(async move {
                c.get(url)
                    .bearer_auth(key)
                    .send()
                    .await
                    .expect("send")
                    .status()
            })
        };
        let a = slow("free-secret");
        let b = slow("free-secret-2");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let resp = c
            .get(gw.url("/v1/slow?ms=1"))
            .bearer_auth("free-secret")
            .send()
            .await
            .expect("send");
        assert_eq!(
            resp.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "third in flight for the org"
        );
        assert!(resp.headers().contains_key("retry-after"));
        assert!(resp.headers()["ratelimit-policy"]
            .to_str()
            .is_ok_and(|p| p.contains(r#"qu="concurrent-requests""#)));
        assert_eq!(a.await.expect("task"), StatusCode::OK);
        assert_eq!(b.await.expect("task"), StatusCode::OK);
        let resp = c
            .get(gw.url("/v1/slow?ms=1"))
            .bearer_auth("free-secret")
            .send()
            .await
            .expect("send");
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "slots come back when responses complete"
        );

        let items = |n: usize| serde_json::json!({ "items": vec![1; n] }).to_string();
        let resp = c
            .post(gw.url("/v1/echo/batch"))
            .bearer_auth("pro-secret")
            .body(items(20))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()["x-ratelimit-remaining"],
            "5",
            "a batch of 20 costs 20"
        );
        let resp = c
            .post(gw.url("/v1/echo/batch"))
            .bearer_auth("pro-secret")
            .body(items(6))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let resp = c
            .post(gw.url("/v1/echo/batch"))
            .bearer_auth("pro-secret")
            .body(items(26))
            .send()
            .await
            .expect("send");
        assert_eq!(
            resp.status(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than the quota: never, not later"
        );
        assert_eq!(
            json(resp).await["detail"]["code"],
            "REQUEST_COST_EXCEEDS_LIMIT"
        );
    }
}

mod headers_and_dialects {
    use super::*;

    #[tokio::test]
    async fn request_id_and_traceparent() {
        let ip = "[[limits]]\nname = \"ip\"\nscope = [\"ip\"]\ncount = 100\nwindow = \"10s\"\n";
        let gw = start(&config(&format!("{ECHO}{PLANS}{ip}"), &temp_db("h1"))).await;
        let c = client();
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let resp = c
            .get(gw.url("/v1/echo"))
            .bearer_auth("free-secret")
            .header("x-request-id", "my-req-123")
            .header("traceparent", tp)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.headers()["x-request-id"], "my-req-123");
        let body = json(resp).await;
        assert_eq!(body["request_id"], "my-req-123", "forwarded upstream");
        let forwarded = body["traceparent"].as_str().expect("traceparent forwarded");
        assert!(
            forwarded.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
                && forwarded.ends_with("-01")
        );
        assert_ne!(
            forwarded, tp,
            "weir continues the trace with its own span id"
        );
        // A malformed id is replaced, never reflected; errors carry headers and the id too.
        let resp = c
            .get(gw.url("/v1/echo"))
            .header("x-request-id", "bad id\twith spaces")
            .send()
            .await
            .expect("send");
        let id = resp.headers()["x-request-id"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_ne!(id, "bad id\twith spaces");
        assert!(
            resp.headers().contains_key("x-ratelimit-limit"),
            "errors carry rate-limit headers"
        );
        assert_eq!(json(resp).await["detail"]["request_id"], id.as_str());
    }

    #[tokio::test]
    async fn route_dialect_and_accept_problem_json() {
        let routes = r#"
[[routes]]
name = "graph"
prefix = "/graph"
upstream = "demo"
dialect = "error"
[[routes]]
name = "tools"
prefix = "/tools"
upstream = "demo"
dialect = "mcp"
"#;
        let gw = start(&config(routes, &temp_db("h2"))).await;
        let c = client();
        let body = json(c.get(gw.url("/graph/x")).send().await.expect("send")).await;
        assert_eq!(body["error"]["code"], "AUTH_HEADER_MISSING");
        assert!(body["error"]["innerError"]["request-id"].is_string());
        assert!(body["error"]["innerError"]["date"].is_string());
        let body = json(c.get(gw.url("/tools/x")).send().await.expect("send")).await;
        assert_eq!(
            (body["code"].as_str(), body["retryable"].as_bool()),
            (Some("AUTH_HEADER_MISSING"), Some(false))
        );
        let resp = c
            .get(gw.url("/graph/x"))
            .header("accept", "application/problem+json")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let body = json(resp).await;
        assert_eq!(body["status"], 401);
        assert_eq!(body["title"], "Unauthorized");
        assert_eq!(body["code"], "AUTH_HEADER_MISSING");
        assert!(body["request_id"].is_string());
        // Media types are case-insensitive (RFC 9110 §8.3.1), inside a list too.
        let resp = c
            .get(gw.url("/graph/x"))
            .header("accept", "text/html, Application/Problem+JSON;q=0.9")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }
}

mod validation {
    use super::*;

    #[tokio::test]
    async fn size_media_type_length_json_and_method() {
        let json_route = r#"
[[routes]]
name = "json"
prefix = "/v1/json"
upstream = "demo"
methods = ["POST"]
json = true
max_body = "1KiB"
"#;
        let gw = start(&config(&format!("{DOCS}{json_route}"), &temp_db("v1"))).await;
        let c = client();
        let post = |path: &str| c.post(gw.url(path)).bearer_auth("free-secret");
        let resp = post("/v1/documents")
            .header("content-type", "text/plain")
            .body(vec![b'a'; 70 * 1024])
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(json(resp).await["detail"]["code"], "DOCUMENT_SIZE_EXCEEDED");
        let resp = post("/v1/documents")
            .header("content-type", "image/gif")
            .body("GIF89a")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let body = json(resp).await;
        assert_eq!(body["detail"]["code"], "DOCUMENT_FORMAT_UNSUPPORTED");
        assert_eq!(
            body["detail"]["hint"],
            "Supported formats: PDF, TXT, CSV, JSON, MD"
        );
        // Media types are case-insensitive, and parameters do not matter.
        let resp = post("/v1/documents")
            .header("content-type", "Text/Plain; charset=UTF-8")
            .body("hello")
            .send()
            .await
            .expect("send");
        assert!(resp.status().is_success(), "{}", resp.status());
        // A chunked body (no Content-Length) where the route requires a length.
        let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(
            bytes::Bytes::from_static(b"hello"),
        )]);
        let resp = post("/v1/documents")
            .header("content-type", "text/plain")
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::LENGTH_REQUIRED);
        // A chunked body over the limit on a route without the requirement: 413 after reading
        // no more than the limit.
        let big = futures_util::stream::iter(
            (0..64).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 1024]))),
        );
        let resp = post("/v1/json")
            .body(reqwest::Body::wrap_stream(big))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(json(resp).await["detail"]["code"], "REQUEST_TOO_LARGE");
        let resp = post("/v1/json")
            .body("{\"a\": [1, 2,, 3]}")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body = json(resp).await;
        assert_eq!(body["detail"]["code"], "REQUEST_MALFORMED");
        assert!(
            body["detail"]["hint"]
                .as_str()
                .is_some_and(|h| h.contains("line 1, column 13")),
            "{body}"
        );
        let resp = c
            .get(gw.url("/v1/json"))
            .bearer_auth("free-secret")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()["allow"], "POST");
    }
}

mod idempotency {
    use super::*;

    async fn post_doc(
        c: &reqwest::Client,
        gw: &support::Running,
        key: &str,
        idem: &str,
        body: &'static str,
    ) -> reqwest::Response {
        c.post(gw.url("/v1/documents"))
            .bearer_auth(key)
            .header("content-type", "text/plain")
            .header("idempotency-key", idem)
            .body(body)
            .send()
            .await
            .expect("send")
    }

    #[tokio::test]
    async fn first_runs_duplicates_replay_mismatch_is_422_and_keys_are_per_api_key() {
        let gw = start(&config(DOCS, &temp_db("d1"))).await;
        let c = client();
        let first = post_doc(&c, &gw, "free-secret", "order-1", "hello").await;
        assert_eq!(first.status(), StatusCode::CREATED);
        assert_eq!(first.headers()["idempotent-replayed"], "false");
        let first_body = json(first).await;
        let again = post_doc(&c, &gw, "free-secret", "order-1", "hello").await;
        assert_eq!(again.status(), StatusCode::CREATED);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.headers()["idempotency-key"], "order-1");
        assert_eq!(
            json(again).await,
            first_body,
            "same body, no second document"
        );
        let other = post_doc(&c, &gw, "free-secret", "order-1", "different").await;
        assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            json(other).await["detail"]["code"],
            "IDEMPOTENCY_KEY_REUSED"
        );
        let pro = post_doc(&c, &gw, "pro-secret", "order-1", "hello").await;
        assert_eq!(
            pro.headers()["idempotent-replayed"],
            "false",
            "another API key's key space"
        );
        assert_ne!(json(pro).await["id"], first_body["id"]);
        let bad = post_doc(&c, &gw, "free-secret", "", "hello").await;
        assert_eq!(json(bad).await["detail"]["code"], "IDEMPOTENCY_KEY_INVALID");
    }

    #[tokio::test]
    async fn concurrent_duplicate_gets_409_and_exactly_one_execution() {
        let route = r#"
[[routes]]
name = "jobs"
prefix = "/v1/slow"
upstream = "demo"
methods = ["POST"]
idempotency = true
"#;
        let gw = start(&config(route, &temp_db("d2"))).await;
        let c = client();
        let url = gw.url("/v1/slow?ms=500");
        let send = |c: reqwest::Client, url: String| async move {
            c.post(url)
                .bearer_auth("free-secret")
                .header("idempotency-key", "job-1")
                .body("x")
                .send()
                .await
                .expect("send")
        };
        let first = tokio::spawn(send(c.clone(), url.clone()));
        tokio::time::sleep(Duration::from_millis(150)).await;
        let dup = send(c.clone(), url.clone()).await;
        assert_eq!(dup.status(), StatusCode::CONFLICT);
        assert_eq!(dup.headers()["retry-after"], "1");
        assert_eq!(json(dup).await["detail"]["code"], "IDEMPOTENCY_IN_PROGRESS");
        let first = json(first.await.expect("task")).await;
        let replay = json(send(c.clone(), url).await).await;
        assert_eq!(replay["call"], first["call"], "the slow job ran once");
    }

    #[tokio::test]
    async fn records_survive_a_restart_and_expire() {
        let db = temp_db("d3");
        let gw = start(&config(DOCS, &db)).await;
        let c = client();
        let first = json(post_doc(&c, &gw, "free-secret", "persist-1", "hello").await).await;
        gw.stop().await;
        let gw = start(&config(DOCS, &db)).await;
        let again = post_doc(&c, &gw, "free-secret", "persist-1", "hello").await;
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(json(again).await, first);
        gw.stop().await;
        let short = config(DOCS, &db).replace("ttl = \"24h\"", "ttl = \"300ms\"");
        let gw = start(&short).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let fresh = post_doc(&c, &gw, "free-secret", "persist-1", "hello").await;
        assert_eq!(
            fresh.headers()["idempotent-replayed"],
            "false",
            "expired keys run anew"
        );
    }
}

mod upstream {
    use super::*;

    #[tokio::test]
    async fn timeout_is_504_refused_is_502_and_the_breaker_opens() {
        let (_refusing, dead_port) = support::refusing_port();
        let extra = format!(
            r#"
[upstreams.sleepy]
url = "builtin:demo"
timeout = "200ms"

[upstreams.dead]
url = "http://127.0.0.1:{dead_port}"
timeout = "1s"
breaker = {{ failure_ratio = 0.5, window = "10s", min_requests = 3, open_for = "30s" }}

[[routes]]
name = "sleepy"
prefix = "/v1/slow"
upstream = "sleepy"
auth = false

[[routes]]
name = "dead"
prefix = "/dead"
upstream = "dead"
auth = false
"#
        );
        let gw = start(&config(&extra, &temp_db("u1"))).await;
        let c = client();
        let resp = c
            .get(gw.url("/v1/slow?ms=2000"))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(json(resp).await["detail"]["code"], "UPSTREAM_TIMEOUT");
        for _ in 0..3 {
            let resp = c.get(gw.url("/dead/x")).send().await.expect("send");
            assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
            assert_eq!(
                json(resp).await["detail"]["code"],
                "SERVICE_CONNECTION_LOST"
            );
        }
        let resp = c.get(gw.url("/dead/x")).send().await.expect("send");
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let retry: u64 = resp.headers()["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("secs");
        assert!((1..=30).contains(&retry));
        assert_eq!(json(resp).await["detail"]["code"], "SERVICE_CIRCUIT_OPEN");
        let metrics = gw.metrics().await;
        assert!(
            metrics.contains("weir_breaker_state{upstream=\"dead\"} 1"),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn upstream_error_bodies_are_normalised_into_the_route_dialect() {
        let route = "[[routes]]\nname = \"st\"\nprefix = \"/v1/status\"\nupstream = \"demo\"\nauth = false\n";
        let gw = start(&config(route, &temp_db("u2"))).await;
        let resp = client()
            .get(gw.url("/v1/status/404"))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let body = json(resp).await;
        assert_eq!(
            body["detail"]["code"], "UpstreamSaid",
            "the upstream's error dialect became detail"
        );
        assert!(body["detail"]["request_id"].is_string());
    }
}

mod operations {
    use super::*;

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let gw = start(&config(&format!("{ECHO}{PLANS}"), &temp_db("o1"))).await;
        let c = client();
        assert_eq!(
            c.get(gw.admin_url("/healthz"))
                .send()
                .await
                .expect("send")
                .status(),
            StatusCode::OK
        );
        assert_eq!(
            c.get(gw.admin_url("/readyz"))
                .send()
                .await
                .expect("send")
                .status(),
            StatusCode::OK
        );
        c.get(gw.url("/v1/echo"))
            .bearer_auth("free-secret")
            .send()
            .await
            .expect("send");
        c.get(gw.url("/v1/echo")).send().await.expect("send");
        let m = gw.metrics().await;
        assert!(
            m.contains(r#"weir_requests_total{route="echo",status="200",code=""}"#),
            "{m}"
        );
        assert!(
            m.contains(
                r#"weir_requests_total{route="echo",status="401",code="AUTH_HEADER_MISSING"}"#
            ),
            "{m}"
        );
        assert!(
            m.contains("weir_limiter_decisions_total{outcome=\"admitted\"}"),
            "{m}"
        );
        assert!(
            m.contains("weir_worker_connections{worker=\"0\"}"),
            "open connections per worker: {m}"
        );
        // Latencies are true histograms (aggregatable across instances), not summaries.
        assert!(
            m.contains("# TYPE weir_upstream_latency_seconds histogram"),
            "{m}"
        );
        assert!(
            m.contains(r#"weir_upstream_latency_seconds_bucket{upstream="demo",le="0.005"}"#),
            "{m}"
        );
        assert!(
            m.contains(r#"weir_request_duration_seconds_bucket{route="echo",le="60"}"#),
            "{m}"
        );
    }

    #[tokio::test]
    async fn graceful_shutdown_drains_in_flight_requests() {
        let route = "[[routes]]\nname = \"slow\"\nprefix = \"/v1/slow\"\nupstream = \"demo\"\nauth = false\n";
        let mut gw = start(&config(route, &temp_db("o2"))).await;
        let url = gw.url("/v1/slow?ms=700");
        let in_flight =
            tokio::spawn(async move { client().get(url).send().await.map(|r| r.status()) });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stopping = gw.begin_stop();
        let status = in_flight
            .await
            .expect("task")
            .expect("the in-flight request completed");
        assert_eq!(status, StatusCode::OK);
        stopping.await.expect("server stopped");
        assert!(
            client().get(gw.url("/v1/slow")).send().await.is_err(),
            "no longer accepting"
        );
    }

    #[tokio::test]
    async fn reload_swaps_limits_keeping_state_and_connections() {
        let gw = start(&config(&format!("{ECHO}{PLANS}"), &temp_db("o3"))).await;
        let c = client();
        for _ in 0..4 {
            c.get(gw.url("/v1/echo"))
                .bearer_auth("free-secret")
                .send()
                .await
                .expect("send");
        }
        let text =
            config(&format!("{ECHO}{PLANS}"), &temp_db("o3b")).replace("free = 10", "free = 5");
        let mut cfg = weir_gateway::Config::parse(&text).expect("config");
        cfg.listen = gw.addr;
        cfg.admin_listen = gw.admin;
        cfg.idempotency = gw.gateway.runtime().config.idempotency.clone();
        gw.gateway.reload(cfg).expect("reload");
        // Same client, same keep-alive connection. The org's bucket is whole again 24 s from
        // now (4 requests x 6 s at 10/min); read through 5/min (12 s each) that is 2
        // requests' worth, so 3 more pass where a fresh bucket would pass 5.
        let mut remaining = Vec::new();
        loop {
            let resp = c
                .get(gw.url("/v1/echo"))
                .bearer_auth("free-secret")
                .send()
                .await
                .expect("send");
            assert_eq!(resp.headers()["x-ratelimit-limit"], "5");
            if resp.status() == StatusCode::TOO_MANY_REQUESTS {
                break;
            }
            remaining.push(
                resp.headers()["x-ratelimit-remaining"]
                    .to_str()
                    .expect("ascii")
                    .to_owned(),
            );
        }
        assert_eq!(remaining, ["2", "1", "0"], "state carried over the reload");
    }

    #[tokio::test]
    async fn workers_setting_sizes_the_serving_threads_and_needs_a_restart() {
        let text = with_server(&config(ECHO, &temp_db("o4")), "workers = 1");
        let cfg = weir_gateway::Config::parse(&text).expect("config");
        assert_eq!(cfg.workers, 1);
        let server = weir_gateway::Server::bind(cfg.clone(), None, None)
            .await
            .expect("bind");
        assert_eq!(server.workers(), 1);
        drop(server);
        let gw = support::start_config(cfg).await;
        let resp = client()
            .get(gw.url("/v1/echo"))
            .bearer_auth("free-secret")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::OK, "one worker serves");
        // Each restart-only setting, changed alone, is refused by a reload that names it.
        for (setting, key) in [
            ("workers = 2", "server.workers"),
            (
                "workers = 1\nconnection_balance = \"none\"",
                "server.connection_balance",
            ),
            (
                "workers = 1\ncpu_affinity = \"auto\"",
                "server.cpu_affinity",
            ),
        ] {
            let mut changed =
                weir_gateway::Config::parse(&text.replace("workers = 1", setting)).expect("config");
            changed.listen = gw.addr;
            changed.admin_listen = gw.admin;
            changed.idempotency = gw.gateway.runtime().config.idempotency.clone();
            let e = gw
                .gateway
                .reload(changed)
                .expect_err("a restart-only setting");
            assert!(e.to_string().contains(key), "{key}: {e}");
        }

        let default = weir_gateway::Server::bind(
            weir_gateway::Config::parse(&config(ECHO, &temp_db("o5"))).expect("config"),
            None,
            None,
        )
        .await
        .expect("bind");
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert_eq!(default.workers(), cores, "0 means one per core");
    }

    #[tokio::test]
    async fn keep_alive_connections_are_spread_evenly_over_the_workers() {
        use tokio::io::AsyncWriteExt;
        // The default balance.
        let gw = start(&with_server(&config(ECHO, &temp_db("bal")), "workers = 2")).await;
        let mut open = Vec::new();
        for _ in 0..8 {
            let mut s = tokio::net::TcpStream::connect(gw.addr)
                .await
                .expect("connect");
            s.write_all(
                b"GET /v1/echo HTTP/1.1\r\nhost: x\r\nauthorization: Bearer free-secret\r\n\r\n",
            )
            .await
            .expect("write");
            let got = read_until(&mut s, |b| b.windows(4).any(|w| w == b"\r\n\r\n"))
                .await
                .expect("an answer");
            assert_200(&got);
            open.push(s);
        }
        // Every connection is served (those handed to the other worker included) and
        // each worker holds half, whichever of them accepted the connections.
        assert_eq!(gw.balancer.counts(), vec![4, 4]);
        drop(open);
        let freed = tokio::time::timeout(Duration::from_secs(5), async {
            while gw.balancer.counts() != vec![0, 0] {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            freed.is_ok(),
            "closed connections are uncounted: {:?}",
            gw.balancer.counts()
        );
    }

    /// Reads until `done` holds for what arrived, or the server closes the connection;
    /// `None` if neither happened within 5 s.
    async fn read_until(
        stream: &mut tokio::net::TcpStream,
        done: impl Fn(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = [0u8; 4096];
            while !done(&got) {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        read.ok().map(|()| got)
    }

    /// Asserts that a raw response is a 200, showing its start (a body may be megabytes)
    /// when it is not.
    fn assert_200(got: &[u8]) {
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got[..got.len().min(200)])
        );
    }

    /// Reads until the server closes the connection; `None` if it has not within 5 s.
    async fn read_to_close(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
        read_until(stream, |_| false).await
    }

    #[tokio::test]
    async fn connections_past_max_connections_wait_until_one_ends() {
        use tokio::io::AsyncWriteExt;
        // One worker, so the cap is exact (with several, each may take one more).
        let text = with_server(
            &config(ECHO, &temp_db("o5c")),
            "max_connections = 2\nworkers = 1",
        );
        let gw = start(&text).await;
        let get = b"GET /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer free-secret\r\n\r\n";
        let head_done = |got: &[u8]| got.windows(4).any(|w| w == b"\r\n\r\n");
        let mut open = Vec::new();
        for _ in 0..2 {
            let mut c = tokio::net::TcpStream::connect(gw.addr)
                .await
                .expect("connect");
            c.write_all(get).await.expect("write");
            let got = read_until(&mut c, head_done).await.expect("answered");
            assert_200(&got);
            open.push(c);
        }
        // A third client gets through the kernel's handshake but is not served while two
        // connections are open...
        let mut third = tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect");
        third.write_all(get).await.expect("write");
        let mut buf = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(400), async {
            use tokio::io::AsyncReadExt;
            third.read(&mut buf).await
        })
        .await;
        assert!(early.is_err(), "answered past the cap: {early:?}");
        assert_eq!(gw.balancer.counts().iter().sum::<usize>(), 2);
        // ...and is served as soon as one of them ends.
        drop(open.pop());
        let got = read_until(&mut third, head_done)
            .await
            .expect("served once a connection ended");
        assert_200(&got);
    }

    #[tokio::test]
    async fn slow_and_idle_clients_are_disconnected_after_the_header_timeout() {
        use tokio::io::AsyncWriteExt;
        let text = with_server(
            &config(ECHO, &temp_db("o6")),
            "header_read_timeout = \"300ms\"",
        );
        let gw = start(&text).await;
        // A head that never ends (slowloris).
        let mut slow = tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect");
        slow.write_all(b"GET /v1/echo HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .expect("write");
        assert!(
            read_to_close(&mut slow).await.is_some(),
            "a client that never finishes its head is disconnected"
        );
        // A kept-alive connection that goes quiet after its request.
        let mut idle = tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect");
        idle.write_all(
            b"GET /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer free-secret\r\n\r\n",
        )
        .await
        .expect("write");
        let got = read_to_close(&mut idle)
            .await
            .expect("an idle kept-alive connection is closed");
        assert_200(&got);
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_disconnected_after_the_write_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let extra = format!("{ECHO}{BYTES}");
        let text = with_server(
            &config(&extra, &temp_db("o6c")),
            "response_write_timeout = \"300ms\"",
        );
        let gw = start(&text).await;
        // 32 MiB, more than the sockets between here and the gateway hold: the gateway
        // must wait for this client to read.
        let get = b"GET /v1/bytes?n=33554432 HTTP/1.1\r\nHost: x\r\n\r\n";
        // Asks for the body, reads nothing for `pause`, then reads until the body is whole
        // or the connection ends.
        let fetch_after = |pause: Duration| async move {
            let mut conn = tokio::net::TcpStream::connect(gw.addr)
                .await
                .expect("connect");
            conn.write_all(get).await.expect("write");
            tokio::time::sleep(pause).await;
            let mut got = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            let ended = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                    if got.len() > 33_554_432 && got.ends_with(b"\r\n0\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            assert!(ended.is_ok(), "the connection neither ended nor finished");
            assert_200(&got);
            got
        };
        // A client that pauses for less than the timeout, once, gets the whole body, though
        // the response takes longer than the timeout: the timeout is per wait, not per
        // response.
        let got = fetch_after(Duration::from_millis(150)).await;
        assert!(got.ends_with(b"\r\n0\r\n\r\n"), "the whole body arrived");
        // A client that stops reading for longer is cut off: when it reads again, the
        // connection ends short of the body.
        let got = fetch_after(Duration::from_millis(1500)).await;
        assert!(
            got.len() < 33_554_432 && !got.ends_with(b"\r\n0\r\n\r\n"),
            "the connection was closed part-way ({} bytes arrived)",
            got.len()
        );
        // Counted for the operator (the registry is shared with the other tests here).
        let m = gw.metrics().await;
        assert!(m.contains("weir_client_write_timeouts_total"), "{m}");
    }

    #[tokio::test]
    async fn the_header_timeout_starts_once_a_slowly_read_response_is_sent() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let extra = format!("{ECHO}{BYTES}");
        let text = with_server(
            &config(&extra, &temp_db("o6b")),
            "header_read_timeout = \"300ms\"",
        );
        let gw = start(&text).await;
        let mut conn = tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect");
        // 32 MiB, more than the sockets between here and the gateway hold: the gateway
        // waits to write until this client reads, which it starts to do only after longer
        // than the header timeout.
        conn.write_all(b"GET /v1/bytes?n=33554432 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(700)).await;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            while !(got.len() > 33_554_432 && got.ends_with(b"\r\n0\r\n\r\n")) {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(read.is_ok(), "the response arrived");
        assert_200(&got);
        assert!(got.ends_with(b"\r\n0\r\n\r\n"), "the whole body arrived");
        // The next request comes at once: the connection is still open for it, since the
        // header timeout runs from when the response was sent, not from when it was ready.
        conn.write_all(
            b"GET /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer free-secret\r\n\r\n",
        )
        .await
        .expect("write");
        let next = read_until(&mut conn, |got| got.windows(4).any(|w| w == b"\r\n\r\n"))
            .await
            .expect("answered within 5 s");
        assert_200(&next);
    }

    #[tokio::test]
    async fn a_buffered_body_that_stalls_gets_408() {
        use tokio::io::AsyncWriteExt;
        let text = with_server(
            &config(ECHO, &temp_db("o7")),
            "body_read_timeout = \"300ms\"",
        );
        let gw = start(&text).await;
        // Without a length the body is buffered; the client sends one chunk and stops.
        let mut stalled = tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect");
        stalled
            .write_all(
                b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer free-secret\r\n\
                  Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            )
            .await
            .expect("write");
        // The answer comes while the connection is still open (the gateway drains what the
        // client may still send for a few seconds, then closes).
        let got = read_until(&mut stalled, |got| {
            got.windows(15).any(|w| w == b"REQUEST_TIMEOUT")
        })
        .await
        .expect("answered within 5 s");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("REQUEST_TIMEOUT"), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn config_errors_name_file_key_path_and_problem() {
        let dir = std::env::temp_dir().join(format!("weir-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("bad.toml");
        std::fs::write(
            &file,
            "[[routes]]\nname = \"a\"\nprefix = \"/a\"\nupstream = \"missing\"\n",
        )
        .expect("write");
        let e = weir_gateway::Config::load(&file).expect_err("invalid");
        let msg = e.to_string();
        assert!(
            msg.contains("bad.toml")
                && msg.contains("routes[0].upstream")
                && msg.contains("unknown upstream"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn the_example_configuration_serves() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/weir.toml");
        let mut cfg = weir_gateway::Config::load(std::path::Path::new(path))
            .expect("examples/weir.toml is valid");
        cfg.listen = "127.0.0.1:0".parse().expect("addr");
        cfg.admin_listen = "127.0.0.1:0".parse().expect("addr");
        cfg.idempotency.path = temp_db("example").into();
        let gw = support::start_config(cfg).await;
        let c = client();
        let resp = c
            .get(gw.url("/v1/echo"))
            .bearer_auth("demo-free")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-ratelimit-limit"], "10");
        assert!(resp.headers().contains_key("ratelimit-policy"));
        let resp = c
            .post(gw.url("/v1/documents"))
            .bearer_auth("demo-max")
            .header("content-type", "application/pdf")
            .header("idempotency-key", "readme-1")
            .body("%PDF-1.7")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::CREATED);
        let resp = c
            .post(gw.url("/v1/documents"))
            .bearer_auth("demo-pro")
            .header("content-type", "image/png")
            .body("x")
            .send()
            .await
            .expect("send");
        assert_eq!(
            json(resp).await["detail"]["hint"],
            "Supported formats: PDF, DOCX, XLSX, TXT, CSV, JSON, HTML, MD"
        );
    }
}

/// weir's own HTTP/1.1 server side (`weir_gateway::h1`), byte for byte on a raw socket.
mod http1 {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn connect(gw: &support::Running) -> TcpStream {
        TcpStream::connect(gw.addr).await.expect("connect")
    }

    /// Reads whole responses (head and `Content-Length` body) until `n` have arrived or the
    /// connection closes; returns them as text, and whether the connection closed.
    async fn responses(stream: &mut TcpStream, n: usize) -> (Vec<String>, bool) {
        let mut got: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        let mut closed = false;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = [0u8; 8192];
            loop {
                // Take every complete response at the front.
                while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&got[..end]).to_string();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_owned)
                        })
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    let informational = head.starts_with("HTTP/1.1 1");
                    let total = end + 4 + if informational { 0 } else { len };
                    if got.len() < total {
                        break;
                    }
                    out.push(String::from_utf8_lossy(&got[..total]).to_string());
                    got.drain(..total);
                }
                if out.len() >= n {
                    return;
                }
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        closed = true;
                        return;
                    }
                    Ok(k) => got.extend_from_slice(&buf[..k]),
                }
            }
        })
        .await;
        (out, closed)
    }

    /// Sends `request` (whole, or the next part of one) and reads as [`responses`] does.
    async fn exchange(stream: &mut TcpStream, request: &[u8], n: usize) -> (Vec<String>, bool) {
        stream.write_all(request).await.expect("write");
        responses(stream, n).await
    }

    fn field<'a>(response: &'a str, name: &str) -> Option<&'a str> {
        response.lines().find_map(|l| {
            let (n, v) = l.split_once(": ")?;
            n.eq_ignore_ascii_case(name).then_some(v)
        })
    }

    fn body(response: &str) -> serde_json::Value {
        let (_, b) = response.split_once("\r\n\r\n").expect("a head");
        serde_json::from_str(b).expect("a JSON body")
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_on_one_connection() {
        pipelined_in_order(&config(ECHO, &temp_db("h1"))).await;
    }

    /// The same with `batch_response_writes = false`: each response written the moment it
    /// is ready, not at the end of the worker's round.
    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_when_written_at_once() {
        let text = with_server(
            &config(ECHO, &temp_db("h1w")),
            "batch_response_writes = false",
        );
        pipelined_in_order(&text).await;
    }

    async fn pipelined_in_order(toml: &str) {
        let gw = start(toml).await;
        let mut s = connect(&gw).await;
        let one = "GET /v1/echo/first HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer free-secret\r\nX-Request-Id: req-1\r\n\r\n";
        let two = "GET /v1/echo/second HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer free-secret\r\nX-Request-Id: req-2\r\n\r\n";
        let (got, closed) = exchange(&mut s, format!("{one}{two}").as_bytes(), 2).await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(!closed);
        for (r, (path, id)) in got
            .iter()
            .zip([("/v1/echo/first", "req-1"), ("/v1/echo/second", "req-2")])
        {
            assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
            assert_eq!(field(r, "x-request-id"), Some(id));
            assert_eq!(body(r)["path"], path);
            let date = field(r, "date").expect("a Date field");
            assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        }
        // And the connection carries a third.
        let (got, _) = exchange(&mut s, one.as_bytes(), 1).await;
        assert_eq!(field(&got[0], "x-request-id"), Some("req-1"));
    }

    #[tokio::test]
    async fn a_head_sent_a_byte_at_a_time_is_answered() {
        let gw = start(&config(ECHO, &temp_db("h8"))).await;
        let mut s = connect(&gw).await;
        s.set_nodelay(true).expect("nodelay");
        let request = b"GET /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer free-secret\r\nX-Request-Id: trickle\r\n\r\n";
        for byte in request {
            s.write_all(std::slice::from_ref(byte))
                .await
                .expect("write");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (got, _) = responses(&mut s, 1).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("HTTP/1.1 200 OK\r\n"), "{}", got[0]);
        assert_eq!(field(&got[0], "x-request-id"), Some("trickle"));
    }

    #[tokio::test]
    async fn a_chunked_request_body_is_read_and_the_connection_reused() {
        let gw = start(&config(ECHO, &temp_db("h2"))).await;
        let mut s = connect(&gw).await;
        let post = "POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer free-secret\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: t\r\n\r\n";
        let get = "GET /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer free-secret\r\n\r\n";
        let (got, closed) = exchange(&mut s, format!("{post}{get}").as_bytes(), 2).await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(!closed);
        assert_eq!(body(&got[0])["body"], "hello world");
        assert_eq!(body(&got[0])["method"], "POST");
        assert_eq!(body(&got[1])["method"], "GET");
    }

    #[tokio::test]
    async fn expect_continue_is_answered_only_when_the_body_is_wanted() {
        let gw = start(&config(ECHO, &temp_db("h3"))).await;
        // Accepted: 100 Continue comes before the body is sent, then the answer.
        let mut s = connect(&gw).await;
        let (got, _) = exchange(&mut s, b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer free-secret\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n", 1).await;
        assert_eq!(got, vec!["HTTP/1.1 100 Continue\r\n\r\n".to_owned()]);
        let (got, _) = exchange(&mut s, b"ping", 1).await;
        assert!(got[0].starts_with("HTTP/1.1 200 OK\r\n"), "{got:?}");
        assert_eq!(body(&got[0])["body"], "ping");
        // Refused from its head: no 100, the refusal, and the connection closes (the body
        // the client may still send is never taken for a request).
        let mut s = connect(&gw).await;
        let (got, closed) = exchange(&mut s, b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n", 2).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("HTTP/1.1 401 Unauthorized\r\n"),
            "{}",
            got[0]
        );
        assert_eq!(field(&got[0], "connection"), Some("close"));
        assert!(closed);
    }

    #[tokio::test]
    async fn bad_heads_get_the_contract_envelope_and_a_closed_connection() {
        let gw = start(&config(ECHO, &temp_db("h4"))).await;
        let many: String = (0..120).map(|i| format!("X-F{i}: v\r\n")).collect();
        let cases = [
            ("GET /v1/echo HTTP/1.1\r\nHost: x\r\nBad Field: 1\r\n\r\n".to_owned(), 400),
            ("POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned(), 400),
            ("POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n".to_owned(), 400),
            ("POST /v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".to_owned(), 501),
            (format!("GET /v1/echo HTTP/1.1\r\nHost: x\r\n{many}\r\n"), 431),
        ];
        for (head, status) in cases {
            let mut s = connect(&gw).await;
            let (got, closed) = exchange(&mut s, head.as_bytes(), 2).await;
            assert_eq!(got.len(), 1, "{head:?}: {got:?}");
            let r = &got[0];
            assert!(
                r.starts_with(&format!("HTTP/1.1 {status} ")),
                "{head:?}: {r}"
            );
            assert_eq!(field(r, "connection"), Some("close"), "{r}");
            let id = field(r, "x-request-id").expect("a request id");
            let b = body(r);
            assert_eq!(b["detail"]["code"], "REQUEST_MALFORMED", "{r}");
            assert_eq!(b["detail"]["request_id"], id, "{r}");
            assert!(closed, "{head:?}");
        }
    }

    #[tokio::test]
    async fn bad_heads_count_against_the_peers_limits_and_carry_its_fields() {
        let limits =
            "[[limits]]\nname = \"per-ip\"\nscope = [\"ip\"]\nwindow = \"60s\"\ncount = 2\n";
        let gw = start(&config(&format!("{ECHO}{limits}"), &temp_db("h4b"))).await;
        let bad = b"GET /v1/echo HTTP/1.1\r\nHost: x\r\nBad Field: 1\r\n\r\n";
        for remaining in ["1", "0"] {
            let mut s = connect(&gw).await;
            let (got, _) = exchange(&mut s, bad, 1).await;
            let r = &got[0];
            assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
            assert_eq!(field(r, "x-ratelimit-limit"), Some("2"), "{r}");
            assert_eq!(field(r, "x-ratelimit-remaining"), Some(remaining), "{r}");
            assert!(field(r, "ratelimit").is_some(), "{r}");
            assert_eq!(
                body(r)["detail"]["request_id"],
                field(r, "x-request-id").expect("a request id")
            );
        }
        // Over the peer's limit: 429 with when to retry, and the connection still closes.
        let mut s = connect(&gw).await;
        let (got, closed) = exchange(&mut s, bad, 2).await;
        assert_eq!(got.len(), 1, "{got:?}");
        let r = &got[0];
        assert!(r.starts_with("HTTP/1.1 429 "), "{r}");
        assert!(
            field(r, "retry-after").is_some_and(|v| v.parse::<u64>().is_ok_and(|n| n >= 1)),
            "{r}"
        );
        assert_eq!(body(r)["detail"]["code"], "SERVICE_RATE_LIMITED", "{r}");
        assert!(closed);
        // Counted like every other answer (the registry is the process's, shared with the
        // other tests here, so only the series' presence is asserted).
        let m = gw.metrics().await;
        for series in [
            r#"weir_requests_total{route="(none)",status="400",code="REQUEST_MALFORMED"}"#,
            r#"weir_requests_total{route="(none)",status="429",code="SERVICE_RATE_LIMITED"}"#,
        ] {
            assert!(m.contains(series), "{series}: {m}");
        }
    }

    #[tokio::test]
    async fn http_1_0_clients_and_head_requests() {
        let gw = start(&config(ECHO, &temp_db("h5"))).await;
        // HTTP/1.0 without keep-alive: one answer, then the connection closes.
        let mut s = connect(&gw).await;
        let (got, closed) = exchange(
            &mut s,
            b"GET /v1/echo HTTP/1.0\r\nAuthorization: Bearer free-secret\r\n\r\n",
            2,
        )
        .await;
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("HTTP/1.1 200 OK\r\n"), "{}", got[0]);
        assert_eq!(field(&got[0], "connection"), Some("close"));
        assert!(closed);
        // HTTP/1.0 asking for keep-alive is kept alive, and told so.
        let mut s = connect(&gw).await;
        let req = "GET /v1/echo HTTP/1.0\r\nConnection: keep-alive\r\nAuthorization: Bearer free-secret\r\n\r\n";
        let (got, closed) = exchange(&mut s, format!("{req}{req}").as_bytes(), 2).await;
        assert_eq!(got.len(), 2);
        assert!(!closed);
        assert_eq!(field(&got[0], "connection"), Some("keep-alive"));
        // HEAD: the length a GET would have, and no body (the next answer follows at once).
        let mut s = connect(&gw).await;
        let head = "HEAD /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer free-secret\r\n\r\n";
        let get = "GET /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer free-secret\r\nX-Request-Id: after-head\r\n\r\n";
        s.write_all(format!("{head}{get}").as_bytes())
            .await
            .expect("write");
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = [0u8; 8192];
            while !String::from_utf8_lossy(&got).contains("\"after-head\"") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => got.extend_from_slice(&buf[..k]),
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&got);
        let (head_response, rest) = text.split_once("\r\n\r\n").expect("the HEAD answer");
        assert!(head_response.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(
            field(head_response, "content-length").is_some_and(|l| l != "0"),
            "{head_response}"
        );
        assert!(
            rest.starts_with("HTTP/1.1 200 OK\r\n"),
            "the GET answer follows the HEAD head directly: {rest}"
        );
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_is_chunked_for_1_1_and_close_delimited_for_1_0() {
        let extra = format!("{ECHO}{BYTES}");
        let gw = start(&config(&extra, &temp_db("h7"))).await;
        let n = 150_000usize;
        for (version, chunked) in [("1.1", true), ("1.0", false)] {
            let mut s = connect(&gw).await;
            s.write_all(
                format!(
                    "GET /v1/bytes?n={n} HTTP/{version}\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .expect("write");
            let mut got = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
            assert!(read.is_ok(), "the connection closes after the body");
            let end = got
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("a head")
                + 4;
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            let body = &got[end..];
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            assert_eq!(field(&head, "content-length"), None, "{head}");
            assert_eq!(field(&head, "connection"), Some("close"), "{head}");
            if chunked {
                assert_eq!(field(&head, "transfer-encoding"), Some("chunked"), "{head}");
                // Decode the chunks: sizes in hex, each chunk followed by CRLF, a last chunk.
                let mut rest = body;
                let mut data = 0usize;
                loop {
                    let line_end = rest
                        .windows(2)
                        .position(|w| w == b"\r\n")
                        .expect("a size line");
                    let size = usize::from_str_radix(
                        std::str::from_utf8(&rest[..line_end]).expect("hex"),
                        16,
                    )
                    .expect("a chunk size");
                    rest = &rest[line_end + 2..];
                    if size == 0 {
                        assert_eq!(rest, b"\r\n", "the body ends after the last chunk");
                        break;
                    }
                    assert!(rest[..size].iter().all(|&b| b == b'w'));
                    assert_eq!(&rest[size..size + 2], b"\r\n");
                    data += size;
                    rest = &rest[size + 2..];
                }
                assert_eq!(data, n);
            } else {
                assert_eq!(field(&head, "transfer-encoding"), None, "{head}");
                assert_eq!(
                    body.len(),
                    n,
                    "an HTTP/1.0 client reads the body until the close"
                );
                assert!(body.iter().all(|&b| b == b'w'));
            }
        }
    }

    #[tokio::test]
    async fn draining_closes_idle_connections_at_once() {
        let mut gw = start(&config(ECHO, &temp_db("h6"))).await;
        let mut idle = connect(&gw).await;
        let (got, _) = exchange(
            &mut idle,
            b"GET /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer free-secret\r\n\r\n",
            1,
        )
        .await;
        assert_eq!(got.len(), 1);
        let started = std::time::Instant::now();
        let stopping = gw.begin_stop();
        // The header timeout is 30 s: an idle connection that closes within 5 s was closed by
        // the drain.
        let (more, closed) = responses(&mut idle, 1).await;
        assert!(more.is_empty() && closed, "{more:?}");
        tokio::time::timeout(Duration::from_secs(5), stopping)
            .await
            .expect("the drain does not wait for idle connections")
            .expect("server stopped");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

#[path = "../../../weir-limit/tests/support/redis_server.rs"]
mod redis_server;

mod redis_backed {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_gateway_instances_share_limits_and_idempotency_keys_through_redis() {
        let mut server = redis_server::RedisServer::start();
        let shared = format!(
            "[store]\nkind = \"redis\"\nurl = \"{url}\"\ndeadline = \"500ms\"\n{ECHO}{DOCS}{PLANS}",
            url = server.url()
        );
        let text = |db: &str| {
            config(&shared, db).replace("ttl = \"24h\"", "ttl = \"24h\"\nstore = \"redis\"")
        };
        let a = start(&text(&temp_db("r1"))).await;
        let b = start(&text(&temp_db("r2"))).await;
        let c = client();
        let mut ok = 0;
        for i in 0..14 {
            let gw = if i % 2 == 0 { &a } else { &b };
            let resp = c
                .get(gw.url("/v1/echo"))
                .bearer_auth("free-secret")
                .send()
                .await
                .expect("send");
            if resp.status() == StatusCode::OK {
                ok += 1;
            } else {
                assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
            }
        }
        assert_eq!(ok, 10, "the free org's 10/min holds across both instances");
        let post = |gw: &support::Running| {
            c.post(gw.url("/v1/documents"))
                .bearer_auth("pro-secret")
                .header("content-type", "text/plain")
                .header("idempotency-key", "shared-1")
                .body("hello")
                .send()
        };
        let first = post(&a).await.expect("send");
        assert_eq!(first.status(), StatusCode::CREATED);
        let first = json(first).await;
        let again = post(&b).await.expect("send");
        assert_eq!(
            again.headers()["idempotent-replayed"],
            "true",
            "instance B replays A's response"
        );
        assert_eq!(json(again).await, first);
        // Redis goes away; the default policy fails closed: 503 with Retry-After.
        server.kill();
        let resp = c
            .get(a.url("/v1/echo"))
            .bearer_auth("pro-secret")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["retry-after"], "1");
        // Nothing was decided, so no limit is described: not even the one the previous
        // request on this kept-alive connection was decided by.
        for name in ["x-ratelimit-limit", "x-ratelimit-remaining", "ratelimit"] {
            assert!(
                resp.headers().get(name).is_none(),
                "{name} on an undecided request"
            );
        }
        assert_eq!(json(resp).await["detail"]["code"], "SERVICE_UNAVAILABLE");
    }
}
