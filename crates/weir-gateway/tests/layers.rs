//! The reusable layers in a plain axum app, over a real socket.

use axum::routing::get;
use axum::{Extension, Router};
use std::sync::Arc;
use weir_contract::Dialect;
use weir_gateway::layer::{RateLimitLayer, RequestId, RequestIdLayer, Scopes};
use weir_limit::{Dimension, LimitDef, Limiter, Policy, Quota};

#[tokio::test]
async fn request_id_and_rate_limit_layers_in_an_axum_app() {
    let policy = Policy::new(vec![LimitDef::rate(
        "org",
        &[Dimension::Organisation],
        Quota::per_minute(3).expect("q"),
    )])
    .expect("p");
    let limiter = Arc::new(Limiter::in_memory(policy));
    let limits = RateLimitLayer::new(
        limiter,
        Dialect::Problem,
        |req: &axum::http::Request<axum::body::Body>| Scopes {
            organisation: req
                .headers()
                .get("x-org")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            ..Scopes::default()
        },
    );
    let app = Router::new()
        .route(
            "/hello",
            get(|Extension(id): Extension<RequestId>| async move { id.0 }),
        )
        .layer(limits)
        .layer(RequestIdLayer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let c = reqwest::Client::new();
    let url = format!("http://{addr}/hello");
    for i in 0..3 {
        let resp = c
            .get(&url)
            .header("x-org", "acme")
            .header("x-request-id", format!("r-{i}"))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["x-ratelimit-remaining"],
            (2 - i).to_string().as_str()
        );
        assert_eq!(
            resp.text().await.expect("body"),
            format!("r-{i}"),
            "the handler sees the request id"
        );
    }
    let resp = c
        .get(&url)
        .header("x-org", "acme")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let id = resp.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "SERVICE_RATE_LIMITED");
    assert_eq!(body["request_id"], id.as_str());
    let other = c
        .get(&url)
        .header("x-org", "globex")
        .send()
        .await
        .expect("send");
    assert_eq!(other.status(), 200, "another org has its own limit");
}
