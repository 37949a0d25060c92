//! Reusable tower layers for any axum (or tower) app, without the proxy:
//!
//! * [`RequestIdLayer`] — accepts a well-formed `X-Request-Id` or generates one, makes it
//!   available to handlers as a request extension ([`RequestId`]) and echoes it.
//! * [`RateLimitLayer`] — checks every request against a [`weir_limit::Limiter`] on the
//!   embedded store, answers 429 in the chosen dialect with `Retry-After` when refused,
//!   and adds the rate-limit headers to every response. The limiter is shared (an `Arc`),
//!   so every clone of the service counts against the same limits — unlike a limiter kept
//!   inside each service clone.
//!
//! See `examples/axum_layers.rs` for both in an axum app.

use crate::respond;
use axum::body::Body;
use http::{HeaderValue, Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};
use weir_contract::headers::request_id::is_valid_request_id;
use weir_contract::Dialect;
use weir_limit::{Limiter, MemoryStore, Outcome, Policy, SystemClock};

/// The request id, as a request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

/// The service of [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S> RequestIdService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for RequestIdService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let id = req
            .headers()
            .get(respond::names::X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| is_valid_request_id(v))
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        req.extensions_mut().insert(RequestId(id.clone()));
        if let Ok(v) = HeaderValue::from_str(&id) {
            req.headers_mut().insert(respond::names::X_REQUEST_ID, v);
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            if let Ok(v) = HeaderValue::from_str(&id) {
                resp.headers_mut().insert(respond::names::X_REQUEST_ID, v);
            }
            Ok(resp)
        })
    }
}

/// What the rate-limit layer knows of a request: owned scope values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    /// Organisation.
    pub organisation: Option<String>,
    /// API key id.
    pub api_key: Option<String>,
    /// User.
    pub user: Option<String>,
    /// Client IP.
    pub client_ip: Option<String>,
    /// Route name.
    pub route: Option<String>,
    /// Plan.
    pub plan: Option<String>,
    /// Cost.
    pub cost: u64,
}

/// See the module docs. `F` extracts the scopes of a request.
pub struct RateLimitLayer<F> {
    limiter: Arc<Limiter<MemoryStore, SystemClock>>,
    scopes: Arc<F>,
    dialect: Dialect,
    /// The quoted limit names of the policy they were built for (rebuilt when the
    /// limiter's policy is replaced).
    names: Arc<arc_swap::ArcSwapOption<(Arc<Policy>, respond::FieldNames)>>,
}

impl<F> Clone for RateLimitLayer<F> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            limiter: self.limiter.clone(),
            scopes: self.scopes.clone(),
            dialect: self.dialect,
            names: self.names.clone(),
        }
    }
}

impl<F> RateLimitLayer<F> {
    fn field_names(&self, policy: &Arc<Policy>) -> Arc<(Arc<Policy>, respond::FieldNames)> {
        if let Some(cached) = self.names.load_full() {
            if Arc::ptr_eq(&cached.0, policy) {
                return cached;
            }
        }
        let fresh = Arc::new((policy.clone(), respond::FieldNames::of(policy)));
        self.names.store(Some(fresh.clone()));
        fresh
    }
}

impl<F> RateLimitLayer<F>
where
    F: Fn(&Request<Body>) -> Scopes + Send + Sync + 'static,
{
    /// A layer over a shared limiter; refusals are rendered in `dialect`.
    pub fn new(
        limiter: Arc<Limiter<MemoryStore, SystemClock>>,
        dialect: Dialect,
        scopes: F,
    ) -> Self {
        RateLimitLayer {
            limiter,
            scopes: Arc::new(scopes),
            dialect,
            names: Arc::default(),
        }
    }
}

impl<S, F> Layer<S> for RateLimitLayer<F> {
    type Service = RateLimit<S, F>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`RateLimitLayer`].
pub struct RateLimit<S, F> {
    inner: S,
    layer: RateLimitLayer<F>,
}

impl<S: Clone, F> Clone for RateLimit<S, F> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S, F> RateLimit<S, F> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, F> Service<Request<Body>> for RateLimit<S, F>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    F: Fn(&Request<Body>) -> Scopes + Send + Sync + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    /// Always ready: a refused request is answered fast with 429, never held back here.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let s = (self.layer.scopes)(&req);
        let r = weir_limit::Request {
            organisation: s.organisation.as_deref(),
            api_key: s.api_key.as_deref(),
            user: s.user.as_deref(),
            client_ip: s.client_ip.as_deref(),
            route: s.route.as_deref(),
            method: weir_limit::MethodClass::of(req.method().as_str()),
            plan: s.plan.as_deref(),
            cost: s.cost.max(1),
        };
        let policy = self.layer.limiter.policy();
        let names = self.layer.field_names(&policy);
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), |r| r.0.clone());
        let decision = match self.layer.limiter.check_now(&policy, &r) {
            Ok(d) => d,
            Err(_) => {
                let refusal = respond::Refusal::code("SERVICE_UNAVAILABLE").retry_after(1);
                let resp = respond::render(
                    &refusal,
                    self.layer.dialect,
                    &request_id,
                    "https://weir.invalid/errors/",
                );
                return Box::pin(async move { Ok(resp) });
            }
        };
        if decision.outcome != Outcome::Admitted {
            let refusal = if decision.outcome == Outcome::Rejected {
                respond::rate_limited(&decision, &policy)
            } else {
                respond::Refusal::code("REQUEST_COST_EXCEEDS_LIMIT")
            };
            let mut resp = respond::render(
                &refusal,
                self.layer.dialect,
                &request_id,
                "https://weir.invalid/errors/",
            );
            respond::apply_limit_headers(resp.headers_mut(), &decision, &names.1, true);
            return Box::pin(async move { Ok(resp) });
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            respond::apply_limit_headers(resp.headers_mut(), &decision, &names.1, true);
            if let Some(permit) = decision.permit {
                let (parts, body) = resp.into_parts();
                resp =
                    Response::from_parts(parts, Body::new(crate::body::Holding::new(body, permit)));
            }
            Ok(resp)
        })
    }
}
