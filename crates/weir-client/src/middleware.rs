//! weir-client as a `reqwest-middleware` middleware: a project that stacks
//! `RetryTransientMiddleware` today swaps it for [`WeirMiddleware`] in one line:
//!
//! ```no_run
//! # use reqwest_middleware::ClientBuilder;
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     // .with(RetryTransientMiddleware::new_with_policy(ExponentialBackoff::builder().build_with_max_retries(3)))
//!     .with(weir_client::middleware::WeirMiddleware::default())
//!     .build();
//! ```
//!
//! The middleware runs the same attempt loop as [`crate::Client`] (classification,
//! Retry-After, pacing, budget, breaker, idempotency keys). Like reqwest-retry, it returns
//! the final response even when it is an error status; only failures without a response
//! (connection errors, deadline, open circuit, budget) become middleware errors. Requests
//! with a streaming body cannot be retried and pass through unchanged.

use crate::client::{Call, Client, ClientConfig};
use http::Extensions;
use reqwest_middleware::{Middleware, Next, Result};

/// See the module docs.
#[derive(Debug, Clone)]
pub struct WeirMiddleware {
    client: Client,
}

impl Default for WeirMiddleware {
    fn default() -> Self {
        WeirMiddleware::new(ClientConfig::default())
    }
}

impl WeirMiddleware {
    /// A middleware with its own pacing, breakers and budget.
    pub fn new(config: ClientConfig) -> WeirMiddleware {
        WeirMiddleware {
            client: Client::new(config),
        }
    }
}

fn to_response(status: u16, headers: http::HeaderMap, body: bytes::Bytes) -> reqwest::Response {
    let mut r = http::Response::new(body);
    *r.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    *r.headers_mut() = headers;
    reqwest::Response::from(r)
}

#[async_trait::async_trait]
impl Middleware for WeirMiddleware {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<reqwest::Response> {
        let Some(body) = req
            .body()
            .map(|b| b.as_bytes().map(bytes::Bytes::copy_from_slice))
            .unwrap_or(Some(bytes::Bytes::new()))
        else {
            return next.run(req, extensions).await;
        };
        let call = Call {
            method: req.method().clone(),
            url: req.url().to_string(),
            headers: req.headers().clone(),
            body: (!body.is_empty()).then_some(body),
            idempotency_key: req
                .headers()
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        let outcome = self
            .client
            .run(call, |attempt| {
                let next = next.clone();
                async move {
                    let mut ext = Extensions::new();
                    next.run(attempt, &mut ext).await.map_err(|e| e.to_string())
                }
            })
            .await;
        match outcome {
            Ok(s) => Ok(to_response(s.status, s.headers, s.body)),
            Err(e) => match (e.status, e.response_headers.clone()) {
                (Some(status), Some(headers)) => Ok(to_response(
                    status,
                    headers,
                    bytes::Bytes::from(e.body.clone().unwrap_or_default()),
                )),
                _ => Err(reqwest_middleware::Error::Middleware(anyhow::Error::new(e))),
            },
        }
    }
}
