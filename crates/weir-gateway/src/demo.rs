//! The built-in demo upstream (`url = "builtin:demo"`), so `examples/weir.toml` runs on a
//! fresh machine with no other service. It listens on an ephemeral port of 127.0.0.1.
//!
//! * `GET|POST /v1/echo…` — echoes the method, path, the correlation and identity headers
//!   weir forwarded, and the body size (and the body itself when it is short UTF-8).
//! * `POST /v1/documents` — "stores" a document: 201 with an id, its size and media type.
//! * `GET /v1/slow?ms=N` — answers after N ms (timeouts, in-flight limits, drain).
//! * `GET /v1/status/N` — answers status N with an error body in the `error` dialect.
//! * `GET /v1/bytes?n=N` — streams N bytes without buffering them (large downloads).

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

static DOCUMENTS: AtomicU64 = AtomicU64::new(0);

/// How many documents the demo upstream has created (tests count side effects with it).
pub fn documents_created() -> u64 {
    DOCUMENTS.load(Ordering::SeqCst)
}

async fn echo(
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Json<serde_json::Value> {
    let pick = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let text = (body.len() <= 65_536)
        .then(|| std::str::from_utf8(&body).ok().map(str::to_owned))
        .flatten();
    Json(serde_json::json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "request_id": pick("x-request-id"),
        "traceparent": pick("traceparent"),
        "key_id": pick("x-weir-key-id"),
        "user": pick("x-weir-user"),
        "organisation": pick("x-weir-organisation"),
        "plan": pick("x-weir-plan"),
        "authorization_forwarded": headers.contains_key("authorization") || headers.contains_key("x-api-key"),
        "connection_header": pick("connection"),
        "bytes": body.len(),
        "body": text,
    }))
}

async fn documents(headers: HeaderMap, body: Bytes) -> Response {
    let n = DOCUMENTS.fetch_add(1, Ordering::SeqCst) + 1;
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (
        StatusCode::CREATED,
        Json(
            serde_json::json!({ "id": format!("doc_{n}"), "bytes": body.len(), "media_type": ct }),
        ),
    )
        .into_response()
}

async fn slow(Query(q): Query<HashMap<String, u64>>) -> Json<serde_json::Value> {
    let ms = q.get("ms").copied().unwrap_or(100).min(60_000);
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    let n = SLOW_CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    Json(serde_json::json!({ "slept_ms": ms, "call": n }))
}

static SLOW_CALLS: AtomicU64 = AtomicU64::new(0);

/// How many times `/v1/slow` completed (tests count executions with it).
pub fn slow_calls() -> u64 {
    SLOW_CALLS.load(Ordering::SeqCst)
}

async fn status(Path(code): Path<u16>) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    let body = serde_json::json!({"error": {"code": "UpstreamSaid", "message": format!("the demo upstream answered {code}"), "innerError": {"code": "demoStatus"}}});
    (status, Json(body)).into_response()
}

async fn bytes(Query(q): Query<HashMap<String, u64>>) -> Response {
    let total = q.get("n").copied().unwrap_or(1024);
    let chunk = Bytes::from(vec![b'w'; 64 * 1024]);
    let stream = futures_util::stream::unfold(total, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let take = left.min(chunk.len() as u64);
            Some((
                Ok::<_, std::io::Error>(chunk.slice(..take as usize)),
                left - take,
            ))
        }
    });
    Response::new(Body::from_stream(stream))
}

/// The demo app.
pub fn router() -> Router {
    Router::new()
        .route("/v1/echo", any(echo))
        .route("/v1/echo/{*rest}", any(echo))
        .route("/v1/documents", post(documents))
        .route("/v1/slow", any(slow))
        .route("/v1/status/{code}", get(status))
        .route("/v1/bytes", get(bytes))
}

/// Starts the demo upstream on an ephemeral port; returns its base URL.
pub async fn start() -> std::io::Result<(String, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router()).await {
            tracing::error!(error = %e, "demo upstream stopped");
        }
    });
    Ok((format!("http://{addr}"), addr))
}
