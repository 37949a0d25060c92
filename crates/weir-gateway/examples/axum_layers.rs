//! weir's layers in your own axum app, without the proxy: a request id on every request,
//! and the org's plan limit checked (shared by every clone of the service) with the
//! contract's 429 and headers.
//!
//! ```sh
//! cargo run -p weir-gateway --example axum_layers
//! for i in $(seq 12); do curl -s -o /dev/null -w '%{http_code} ' -H 'X-Org: acme' http://127.0.0.1:3000/hello; done
//! ```

use axum::routing::get;
use axum::{Extension, Router};
use std::sync::Arc;
use weir_contract::Dialect;
use weir_gateway::layer::{RateLimitLayer, RequestId, RequestIdLayer, Scopes};
use weir_limit::{Dimension, LimitDef, Limiter, Policy, Quota};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let policy = Policy::new(vec![LimitDef::rate(
        "org-minute",
        &[Dimension::Organisation],
        Quota::per_minute(10)?,
    )])?;
    let limiter = Arc::new(Limiter::in_memory(policy));
    let limits = RateLimitLayer::new(
        limiter,
        Dialect::Detail,
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
            get(|Extension(id): Extension<RequestId>| async move {
                format!("hello, request {}\n", id.0)
            }),
        )
        // Layers run outside-in: the request id first, so refusals carry it too.
        .layer(limits)
        .layer(RequestIdLayer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
