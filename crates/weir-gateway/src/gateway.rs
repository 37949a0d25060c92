//! The request pipeline.
//!
//! For every request, in order:
//! 1. request id and trace context;
//! 2. route, by longest path prefix (404 otherwise); method (405 with `Allow`);
//! 3. identity (401 with `WWW-Authenticate`, 403 for a missing scope);
//! 4. cheap validation from headers (411, 413 by `Content-Length`, 415);
//! 5. the body, when the route needs it whole (JSON, idempotency, batch cost), read up to
//!    the route's limit and no further (413, 400 naming the JSON error's position);
//! 6. every applicable rate and concurrency limit at once (429 with Retry-After; 503 if
//!    the limit store is down and fails closed). Every request is counted once, including
//!    ones refused above — so failed authentication counts against the client's IP;
//! 7. idempotency (409 while running, 422 for a reused key, replay with
//!    `Idempotent-Replayed: true`);
//! 8. the upstream's circuit breaker (503 `SERVICE_CIRCUIT_OPEN`), then the proxy call
//!    (504 on timeout, 502 on refused or reset connections).
//!
//! Every response, errors included, carries `X-Request-Id` and the rate-limit headers of
//! the decision; errors carry the request id in their body.

use crate::client_ip::client_ip;
use crate::config::{Config, CostFrom, RouteConfig, StoreConfig};
use crate::idempotency::{self, Begin, Idempotency, IdempotencyStore, StoredResponse};
use crate::identity::{self, ApiKey, AuthFailure};
use crate::present::{Field, Present};
use crate::respond::{self, names, Refusal};
use crate::telemetry;
use crate::upstream::{FieldLines, PassedFields, Rewrite, UpstreamPool};
use arc_swap::ArcSwap;
use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use weir_contract::headers::{request_id::is_valid_request_id, TraceParent};
use weir_contract::Dialect;
use weir_limit::breaker::{Admission, Breaker};
use weir_limit::store::redis::RedisStore;
use weir_limit::{
    Decision, LimitError, Limiter, MemoryStore, MethodClass, Outcome, Policy, SystemClock,
};

/// A gateway that cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The limit store could not be set up.
    #[error("rate-limit store: {0}")]
    Store(String),
    /// The idempotency database could not be opened.
    #[error("{0}")]
    Idempotency(#[from] idempotency::IdempotencyError),
    /// A listener or the demo upstream could not start.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A reload that changes what only a restart can change.
    #[error("{0}")]
    Reload(String),
}

/// The limiter on whichever store the configuration chose.
pub enum AnyLimiter {
    /// Embedded.
    Memory(Limiter<MemoryStore, SystemClock>),
    /// Redis.
    Redis(Limiter<RedisStore, SystemClock>),
}

impl AnyLimiter {
    /// Decides `req` into `out`, which is left as it was on error. The embedded store
    /// fills it in place (see [`Limiter::check_now_into`]).
    async fn check_into(
        &self,
        policy: &Policy,
        req: &weir_limit::Request<'_>,
        out: &mut Decision,
    ) -> Result<(), LimitError> {
        match self {
            AnyLimiter::Memory(l) => l.check_now_into(policy, req, out),
            // Boxed: the Redis round trip is a large future, and the embedded store
            // (the default) needs none, so every request's future stays small.
            AnyLimiter::Redis(l) => {
                *out = Box::pin(l.check_with(policy, req)).await?;
                Ok(())
            }
        }
    }

    fn set_policy(&self, policy: Policy) {
        match self {
            AnyLimiter::Memory(l) => l.set_policy(policy),
            AnyLimiter::Redis(l) => l.set_policy(policy),
        }
    }

    /// The store's name (`memory`, `redis`).
    pub fn store_name(&self) -> &'static str {
        match self {
            AnyLimiter::Memory(_) => "memory",
            AnyLimiter::Redis(_) => "redis",
        }
    }
}

/// What a reload can replace: everything but the listeners and the stores.
pub struct Runtime {
    /// The configuration.
    pub config: Config,
    policy: Arc<Policy>,
    field_names: respond::FieldNames,
    /// The keys by the hash of their secret.
    key_index: identity::KeyIndex,
    metrics: telemetry::Metrics,
    upstream_urls: BTreeMap<String, String>,
    breakers: BTreeMap<String, Arc<Breaker>>,
    /// The upstreams in the configuration's order (by name), with what each request needs
    /// of them, and each route's position in it: found once per configuration, not looked
    /// up by name on every request.
    upstreams: Vec<UpstreamRt>,
    route_upstreams: Vec<Option<usize>>,
    /// The upstreams' parsed bases, in the order of `upstreams`.
    targets: Vec<Option<Target>>,
}

/// What a request needs of its upstream.
struct UpstreamRt {
    name: String,
    url: String,
    breaker: Arc<Breaker>,
    timeout: Duration,
}

/// A thread's handle on the current [`Runtime`] (see [`Gateway::view`]); it dereferences
/// to the runtime.
pub(crate) struct View {
    rt: Arc<Runtime>,
    /// This thread's own copies of the upstream targets (in the order of
    /// `Runtime::upstreams`). Each request clones its target's authority, which bumps a
    /// reference count: one shared by every worker thread would be written by all of them
    /// on every request.
    targets: Vec<Option<Target>>,
    /// The upstream pool this thread uses: its worker's own, or the gateway's (held here so
    /// a request borrows it rather than cloning a handle).
    pool: UpstreamPool,
}

impl View {
    fn of(rt: Arc<Runtime>, pool: UpstreamPool) -> View {
        let targets = rt
            .targets
            .iter()
            .map(|t| t.as_ref().map(Target::copy))
            .collect();
        View { rt, targets, pool }
    }
}

impl std::ops::Deref for View {
    type Target = Runtime;
    fn deref(&self) -> &Runtime {
        &self.rt
    }
}

thread_local! {
    /// The view of the runtime this thread used last.
    static VIEW: std::cell::RefCell<Option<Arc<View>>> = const { std::cell::RefCell::new(None) };
}

/// The fields weir adds to a response it answers (see [`Gateway::answer`]): `X-Request-Id`
/// and the rate-limit fields. Each replaces a field of the same name the response has.
pub(crate) struct Stamp<'d> {
    request_id: HeaderValue,
    /// The request's limiter decision, in the slot its caller lent [`Gateway::answer`].
    decision: Option<&'d Decision>,
    /// The upstream's fields, as received, when the response passes them on: the response's
    /// map lacks them (see [`PassedFields`]).
    passed: Option<PassedFields>,
    view: Arc<View>,
    answered_at: Instant,
}

impl Stamp<'_> {
    /// The request id the response carries.
    pub(crate) fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    /// When the response was ready (the clock reading that ended its latency).
    pub(crate) fn answered_at(&self) -> Instant {
        self.answered_at
    }

    /// Puts the fields into `h`: the upstream's passed-on ones, then weir's (each replacing
    /// any of the same name).
    pub(crate) fn apply(&self, h: &mut HeaderMap) {
        if let Some(passed) = &self.passed {
            passed.type_into(h);
        }
        h.insert(names::X_REQUEST_ID, self.request_id.clone());
        if let Some(d) = self.decision {
            let (names, ietf) = (&self.view.field_names, self.view.config.ratelimit_fields);
            respond::apply_limit_headers(h, d, names, ietf);
        }
    }

    /// Whether the response's own field `name` gives way to one of these: exactly the
    /// names [`Stamp::write`] writes.
    pub(crate) fn replaces(&self, name: &HeaderName) -> bool {
        self.replaces_lower(name.as_str())
    }

    /// [`Stamp::replaces`] for a lower-case name.
    fn replaces_lower(&self, name: &str) -> bool {
        name == "x-request-id"
            || self.decision.is_some_and(|d| {
                respond::has_limit_field(name, d, self.view.config.ratelimit_fields)
            })
    }

    /// The upstream's fields, as received, that the response passes on (its map lacks them).
    pub(crate) fn passed(&self) -> Option<&PassedFields> {
        self.passed.as_ref()
    }

    /// [`Stamp::replaces`] for a name as received, in any case.
    pub(crate) fn replaces_raw(&self, name: &[u8]) -> bool {
        // Each name weir writes begins with `x-` or `ratelimit`: any other is a quick no.
        if !matches!(name.first(), Some(b'x' | b'X' | b'r' | b'R')) {
            return false;
        }
        // Longer than any field weir writes: not one of them.
        let mut lower = [0u8; 24];
        let Some(to) = lower.get_mut(..name.len()) else {
            return false;
        };
        to.copy_from_slice(name);
        to.make_ascii_lowercase();
        std::str::from_utf8(to).is_ok_and(|name| self.replaces_lower(name))
    }

    /// Writes the fields as lines of a response head.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        crate::wire::field(out, b"x-request-id", self.request_id.as_bytes());
        if let Some(d) = self.decision {
            let (names, ietf) = (&self.view.field_names, self.view.config.ratelimit_fields);
            respond::limit_fields(d, names, ietf, |name, value| {
                crate::wire::field(out, name.as_str().as_bytes(), value);
            });
        }
    }
}

/// The gateway.
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    limiter: AnyLimiter,
    idempotency: Option<Arc<Idempotency>>,
    /// The upstream pool used when not serving from a worker thread of its own.
    pool: UpstreamPool,
    demo_url: Option<String>,
}

/// A header value made from a string the gateway just built, without copying it (and,
/// for a string whose capacity is its length, without allocating).
fn owned_value(s: String) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from(s)).ok()
}

/// An IP address as text, as a header value (for `X-Forwarded-For`) that also serves as the
/// key of per-IP limits. The last address this thread wrote is kept: a client's requests
/// come in runs (a kept-alive connection carries many), and the text is then shared, not
/// written and allocated again.
fn ip_value(ip: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((at, value)) if *at == ip => value.clone(),
        _ => {
            // Digits, dots and colons are always a valid value.
            let value = owned_value(ip_string(ip)).unwrap_or(HeaderValue::from_static("-"));
            *last = Some((ip, value.clone()));
            value
        }
    })
}

/// An IP address as text, in one allocation of exactly its length (`to_string` grows its
/// string while formatting, and a string with spare capacity costs a second allocation
/// when it becomes a header value).
fn ip_string(ip: IpAddr) -> String {
    // IPv4 (nearly every client) is written octet by octet: `Display` through the
    // formatting machinery cost more than the rest of this function on every request. The
    // string is exactly as long as the text, like the one below.
    if let IpAddr::V4(v4) = ip {
        let mut buf = [0u8; 15];
        let mut len = 0;
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                buf[len] = b'.';
                len += 1;
            }
            let mut itoa = itoa::Buffer::new();
            let digits = itoa.format(octet).as_bytes();
            // At most 4 x 3 digits and 3 dots: always fits.
            buf[len..len + digits.len()].copy_from_slice(digits);
            len += digits.len();
        }
        return String::from_utf8_lossy(&buf[..len]).into_owned();
    }
    struct Stack {
        buf: [u8; 64],
        len: usize,
    }
    impl std::fmt::Write for Stack {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let end = self.len + s.len();
            self.buf
                .get_mut(self.len..end)
                .ok_or(std::fmt::Error)?
                .copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }
    let mut out = Stack {
        buf: [0; 64],
        len: 0,
    };
    match std::fmt::Write::write_fmt(&mut out, format_args!("{ip}")) {
        Ok(()) => String::from_utf8_lossy(&out.buf[..out.len]).into_owned(),
        Err(_) => ip.to_string(),
    }
}

thread_local! {
    /// On a thread-per-core worker: that worker's own upstream pool, so a request, its
    /// upstream connection and their wakeups all stay on one thread.
    pub(crate) static WORKER_POOL: std::cell::OnceCell<UpstreamPool> = const { std::cell::OnceCell::new() };
}

/// Per-request state that the response needs.
struct Ctx<'r> {
    /// Which of the fields the pipeline reads the request carries.
    present: Present,
    /// The request id as a header value: the caller's own (shared, not copied) or a new
    /// one; sent upstream and back, and read as text by [`Ctx::id`].
    request_id: HeaderValue,
    dialect: Dialect,
    /// Index of the matched route in the configuration.
    route: Option<usize>,
    /// The caller's key id, borrowed from the configuration the request runs under.
    key_id: Option<&'r str>,
    /// Where the limiter's decision is made: a slot the caller of [`Gateway::answer`]
    /// lends (weir's server keeps one per connection), so the decision is filled where the
    /// response's fields are later written from, never moved. It holds this request's
    /// decision only once `decided` is set.
    decision: &'r mut Option<Decision>,
    decided: bool,
    /// The key the connection presented last, where its caller keeps one (see
    /// [`identity::LastKey`]).
    last_key: &'r mut identity::LastKey,
    /// The upstream response's end-to-end fields, as received, when the response is passed
    /// on: they are written to the client as they are (see [`PassedFields`]), and typed into
    /// the response's map only by a step that reads them.
    passed: Option<PassedFields>,
    upstream_ms: Option<f64>,
    /// The trace context sent upstream: its parent id is weir's own span, which the
    /// access log records (a span id nobody records would leave the upstream's span with
    /// a parent no trace shows).
    trace: Option<TraceParent>,
    /// The request has a body that was neither read nor forwarded: the connection cannot
    /// be reused, and the response must say so.
    body_unread: bool,
}

impl Ctx<'_> {
    /// The request id as text (always valid: either checked or generated).
    fn id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    /// Puts the upstream's fields, if still as received, into `resp`'s map, for a step
    /// that reads or stores them.
    fn type_passed(&mut self, resp: &mut Response<Body>) {
        if let Some(passed) = self.passed.take() {
            passed.type_into(resp.headers_mut());
        }
    }
}

/// The body a request declares: its `Content-Length` (if a valid one), and whether it has a
/// `Transfer-Encoding`.
#[derive(Debug, Clone, Copy)]
struct Declared {
    length: Option<u64>,
    chunked: bool,
}

/// A response, or a refusal still to be rendered.
type Step<T> = Result<T, Refusal>;

/// A head weir's HTTP/1.1 server side cannot serve (malformed, too large, a framing it
/// refuses), carried to [`Gateway::answer`] on a stand-in request (method `-`, target `*`)
/// so that it is answered like every other refusal: counted against the peer's limits
/// (429 once over them), stamped with the rate-limit fields, counted in the metrics and
/// written to the access log.
#[derive(Debug, Clone)]
pub(crate) struct HeadRefused(pub(crate) Refusal);

impl HeadRefused {
    /// The stand-in request that carries the refusal.
    pub(crate) fn into_request(self) -> Request<Body> {
        let mut req = Request::new(Body::empty());
        // `-` is a valid method token no client sends (so it counts as a write), and `*`
        // a valid request target: the access log shows that no request was understood.
        *req.method_mut() = Method::from_bytes(b"-").unwrap_or(Method::POST);
        *req.uri_mut() = http::Uri::from_static("*");
        req.extensions_mut().insert(self);
        req
    }
}

fn media_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
}

/// Whether `hay` contains `needle`, ASCII case ignored (without a lower-cased copy).
fn contains_ignore_ascii_case(hay: &str, needle: &str) -> bool {
    let (hay, needle) = (hay.as_bytes(), needle.as_bytes());
    needle.is_empty()
        || hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Human names for the document formats of reference 004.
fn format_name(media: &str) -> String {
    match media {
        "application/pdf" => "PDF".into(),
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => "DOCX".into(),
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => "XLSX".into(),
        "text/plain" => "TXT".into(),
        "text/csv" => "CSV".into(),
        "application/json" => "JSON".into(),
        "text/html" => "HTML".into(),
        "text/markdown" => "MD".into(),
        other => other.to_owned(),
    }
}

/// A fresh request id: a random UUID, written without the formatting machinery.
fn new_request_id() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let id: &str = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    // Exactly as long as its capacity: the header value takes it without another allocation.
    owned_value(id.to_owned()).unwrap_or(HeaderValue::from_static("-"))
}

impl Gateway {
    /// Builds a gateway: connects the store, opens the idempotency database, starts the
    /// demo upstream when a route uses it.
    pub async fn new(config: Config) -> Result<Arc<Gateway>, GatewayError> {
        let limiter = match &config.store {
            StoreConfig::Memory { max_keys } => AnyLimiter::Memory(Limiter::new(
                config.policy.clone(),
                MemoryStore::new(*max_keys),
                SystemClock::default(),
            )),
            StoreConfig::Redis(rc) => {
                let store = RedisStore::connect(rc.clone())
                    .await
                    .map_err(|e| GatewayError::Store(e.to_string()))?;
                AnyLimiter::Redis(Limiter::new(
                    config.policy.clone(),
                    store,
                    SystemClock::default(),
                ))
            }
        };
        let idempotency = if config.routes.iter().any(|r| r.idempotency) {
            let c = &config.idempotency;
            let store = match &c.redis_url {
                Some(url) => {
                    Idempotency::redis(url, &c.redis_prefix, c.ttl, c.lock_timeout).await?
                }
                None => {
                    let (path, ttl, lock) = (c.path.clone(), c.ttl, c.lock_timeout);
                    let store = tokio::task::spawn_blocking(move || {
                        IdempotencyStore::open(&path, ttl, lock)
                    })
                    .await
                    .map_err(|e| GatewayError::Store(e.to_string()))??;
                    Idempotency::Embedded(Arc::new(store))
                }
            };
            Some(Arc::new(store))
        } else {
            None
        };
        let demo_url = if config.upstreams.values().any(|u| u.url == "builtin:demo") {
            Some(crate::demo::start().await?.0)
        } else {
            None
        };
        let gateway = Gateway {
            runtime: ArcSwap::from_pointee(Runtime::new(config, demo_url.as_deref(), None)),
            limiter,
            idempotency,
            pool: UpstreamPool::new(),
            demo_url,
        };
        Ok(Arc::new(gateway))
    }

    /// The current runtime, through this thread's view of it. Every request needs the
    /// runtime for its whole life; cloning the `Arc<Runtime>` itself would write its
    /// reference count, which every worker thread shares, twice per request. The view is
    /// this thread's own (only this thread writes its count) and is made again when the
    /// runtime changes: after a reload, or for another gateway on this thread. A thread
    /// keeps the runtime it used last alive until then.
    fn view(&self) -> Arc<View> {
        let current = self.runtime.load();
        let pool = || {
            WORKER_POOL
                .with(|c| c.get().cloned())
                .unwrap_or_else(|| self.pool.clone())
        };
        let cached = VIEW.try_with(|cell| {
            let mut cell = cell.try_borrow_mut().ok()?;
            match &*cell {
                Some(view) if Arc::ptr_eq(&view.rt, &current) => Some(view.clone()),
                _ => {
                    let view = Arc::new(View::of(Arc::clone(&current), pool()));
                    *cell = Some(view.clone());
                    Some(view)
                }
            }
        });
        match cached {
            Ok(Some(view)) => view,
            _ => Arc::new(View::of(arc_swap::Guard::into_inner(current), pool())),
        }
    }

    /// The current runtime configuration.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Brings the gauges that are read rather than counted (the breakers' states) up to
    /// date; `/metrics` calls it before rendering. The request path's series are in
    /// [`crate::tally`].
    pub fn publish_gauges(&self) {
        let rt = self.runtime.load();
        rt.metrics.show_breakers(&rt.breakers);
    }

    /// The limiter.
    pub fn limiter(&self) -> &AnyLimiter {
        &self.limiter
    }

    /// Replaces keys, routes, limits and upstreams without dropping connections or limiter
    /// state (counters carry over by limit name). Listeners and stores need a restart.
    pub fn reload(&self, config: Config) -> Result<(), GatewayError> {
        let old = self.runtime.load_full();
        let o = &old.config;
        if o.listen != config.listen || o.admin_listen != config.admin_listen {
            return Err(GatewayError::Reload(
                "server.listen and server.admin_listen change only on restart".into(),
            ));
        }
        if o.workers != config.workers
            || o.connection_balance != config.connection_balance
            || o.cpu_affinity != config.cpu_affinity
            || o.max_connections != config.max_connections
        {
            return Err(GatewayError::Reload(
                "server.workers, server.connection_balance, server.cpu_affinity and server.max_connections change only on restart".into(),
            ));
        }
        if o.store != config.store {
            return Err(GatewayError::Reload(
                "[store] changes only on restart".into(),
            ));
        }
        if config.upstreams.values().any(|u| u.url == "builtin:demo") && self.demo_url.is_none() {
            return Err(GatewayError::Reload(
                "the builtin demo upstream can only be added on restart".into(),
            ));
        }
        if config.routes.iter().any(|r| r.idempotency) && self.idempotency.is_none() {
            return Err(GatewayError::Reload(
                "enabling idempotency needs a restart".into(),
            ));
        }
        self.limiter.set_policy(config.policy.clone());
        self.runtime.store(Arc::new(Runtime::new(
            config,
            self.demo_url.as_deref(),
            Some(&old),
        )));
        Ok(())
    }

    /// Answers one request from `peer`.
    pub async fn handle(&self, req: Request<Body>, peer: SocketAddr) -> Response<Body> {
        let (mut decision, mut last_key) = (None, identity::LastKey::default());
        let (mut resp, stamp) = self.answer(req, peer, &mut decision, &mut last_key).await;
        stamp.apply(resp.headers_mut());
        resp
    }

    /// Answers one request from `peer`, the fields weir adds to every response (request id,
    /// rate-limit fields) apart: weir's HTTP/1.1 server writes them straight into the
    /// response head, with no field-map inserts and no values to allocate.
    ///
    /// The limiter's decision is made in `decision`, a slot the caller keeps (and may reuse
    /// for its next request): the returned [`Stamp`] borrows it. `last_key` is the key the
    /// caller's connection presented before, if any.
    pub(crate) async fn answer<'d>(
        &self,
        req: Request<Body>,
        peer: SocketAddr,
        decision: &'d mut Option<Decision>,
        last_key: &mut identity::LastKey,
    ) -> (Response<Body>, Stamp<'d>) {
        let started = Instant::now();
        let view = self.view();
        let rt: &Runtime = &view;
        let present = Present::of(req.headers());
        let request_id = present
            .get(req.headers(), Field::XRequestId)
            .filter(|v| v.to_str().is_ok_and(is_valid_request_id))
            .cloned()
            .unwrap_or_else(new_request_id);
        let accept_problem = present.has(Field::Accept)
            && req
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| contains_ignore_ascii_case(v, "application/problem+json"));
        let mut ctx = Ctx {
            present,
            request_id,
            dialect: rt.config.dialect,
            route: None,
            key_id: None,
            decision: &mut *decision,
            decided: false,
            last_key,
            passed: None,
            upstream_ms: None,
            trace: None,
            body_unread: false,
        };
        let method = req.method().clone();
        // Kept for the access log only, so copied only when that log is on.
        let path = tracing::enabled!(target: "weir::access", tracing::Level::INFO)
            .then(|| req.uri().path().to_owned());
        // The pipeline, with the body in a slot it takes the body from: a body left there
        // (a request refused before its body was read) is drained in the background.
        // The head is lent down the pipeline, not moved into each step's future.
        let (mut parts, body) = req.into_parts();
        let mut slot = Some(body);
        let result = self
            .pipeline(&view, &mut ctx, &mut parts, &mut slot, peer, accept_problem)
            .await;
        if let Some(unread) = slot.take().filter(|_| result.is_err()) {
            linger(unread);
        }
        let dialect = if accept_problem {
            Dialect::Problem
        } else {
            ctx.dialect
        };
        // Only the upstream's own answer carries its fields; a refusal is weir's.
        let upstream_answered = result.is_ok();
        let mut resp = match result {
            Ok(r) => r,
            Err(refusal) => {
                respond::render(&refusal, dialect, ctx.id(), &rt.config.error_type_base)
            }
        };
        if ctx.body_unread {
            // Refused before the body was read: close, so no client reuses a connection
            // with an unread body on it.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let status = resp.status().as_u16();
        let code = resp
            .extensions()
            .get::<respond::ErrorCode>()
            .map_or("", |c| c.0);
        let route = ctx
            .route
            .and_then(|i| rt.config.routes.get(i))
            .map_or(telemetry::NO_ROUTE, |r| r.name.as_str());
        let answered_at = Instant::now();
        let elapsed = answered_at.saturating_duration_since(started);
        rt.metrics
            .request(ctx.route, status, code, elapsed.as_secs_f64());
        tracing::info!(
            target: "weir::access",
            request_id = %ctx.id(),
            key_id = ctx.key_id.unwrap_or("-"),
            route = %route,
            method = %method,
            path = path.as_deref().unwrap_or("-"),
            status,
            code = %code,
            latency_ms = elapsed.as_secs_f64() * 1e3,
            upstream_ms = ctx.upstream_ms.unwrap_or(-1.0),
            trace_id = %ctx.trace.map_or_else(|| "-".to_owned(), |t| t.trace_id_hex()),
            span_id = %ctx.trace.map_or_else(|| "-".to_owned(), |t| t.parent_id_hex()),
            "request"
        );
        // Concurrency slots are held until the response body has been sent.
        if let Some(permit) = ctx.decision.as_mut().and_then(|d| d.permit.take()) {
            let (parts, body) = resp.into_parts();
            resp = Response::from_parts(parts, Body::new(crate::body::Holding::new(body, permit)));
        }
        let decided = ctx.decided;
        let request_id = ctx.request_id;
        let passed = ctx.passed.take().filter(|_| upstream_answered);
        let decision: &'d Option<Decision> = decision;
        let stamp = Stamp {
            request_id,
            decision: decision.as_ref().filter(|_| decided),
            passed,
            view,
            answered_at,
        };
        (resp, stamp)
    }

    #[allow(clippy::too_many_arguments)]
    async fn count(
        &self,
        rt: &Runtime,
        ctx: &mut Ctx<'_>,
        key: Option<&ApiKey>,
        route: Option<&RouteConfig>,
        method: &Method,
        ip: &str,
        cost: u64,
    ) -> Step<()> {
        let req = weir_limit::Request {
            organisation: key.map(|k| k.organisation.as_str()),
            api_key: key.map(|k| k.id.as_str()),
            user: key.map(|k| k.user.as_str()),
            client_ip: Some(ip),
            route: route.map(|r| r.name.as_str()),
            method: MethodClass::of(method.as_str()),
            plan: key.map(|k| k.plan.as_str()),
            cost,
        };
        // Filled in the slot the response's fields are written from (see `Ctx::decision`).
        let slot = ctx.decision.get_or_insert_with(Decision::default);
        if let Err(e) = self.limiter.check_into(&rt.policy, &req, slot).await {
            ctx.decided = false;
            rt.metrics.decision(telemetry::Decided::Error);
            tracing::warn!(request_id = %ctx.id(), error = %e, "rate-limit store unavailable");
            return Err(Refusal::code("SERVICE_UNAVAILABLE")
                .message("Rate limits cannot be checked right now.")
                .hint("Retry after the advertised delay.")
                .retry_after(1));
        }
        let decision: &Decision = slot;
        ctx.decided = true;
        rt.metrics.decision(match decision.outcome {
            Outcome::Admitted => telemetry::Decided::Admitted,
            Outcome::Rejected => telemetry::Decided::Rejected,
            Outcome::CostExceedsLimit => telemetry::Decided::CostExceedsLimit,
        });
        let refusal = match decision.outcome {
            Outcome::Admitted => None,
            Outcome::Rejected => Some(respond::rate_limited(decision, &rt.policy)),
            Outcome::CostExceedsLimit => {
                let limit = decision.limiting_status().map_or(0, |s| s.limit);
                Some(Refusal::code("REQUEST_COST_EXCEEDS_LIMIT").hint(format!(
                    "This request costs {cost}; the most any request may cost here is {limit}. Split it into batches of at most {limit}."
                )))
            }
        };
        refusal.map_or(Ok(()), Err)
    }

    async fn pipeline<'r>(
        &self,
        rt: &'r View,
        ctx: &mut Ctx<'r>,
        parts: &mut http::request::Parts,
        body: &mut Option<Body>,
        peer: SocketAddr,
        accept_problem: bool,
    ) -> Step<Response<Body>> {
        // 1. A head weir's server side could not serve: counted against the limits that
        // apply to every request from the peer (the socket's address: such a head has no
        // forwarding fields to believe), then refused.
        if let Some(HeadRefused(refusal)) = parts.extensions.remove::<HeadRefused>() {
            let ip = ip_value(peer.ip());
            self.count(
                rt,
                ctx,
                None,
                None,
                &parts.method,
                ip.to_str().unwrap_or("-"),
                1,
            )
            .await?;
            return Err(refusal);
        }
        let present = ctx.present;
        // The body the request declares, read once for the whole pipeline.
        let declared = Declared {
            length: present
                .get(&parts.headers, Field::ContentLength)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok()),
            chunked: present.has(Field::TransferEncoding),
        };
        ctx.body_unread = declared.chunked || declared.length.is_some_and(|n| n > 0);
        let ip: IpAddr = client_ip(peer.ip(), &parts.headers, &rt.config.trusted_proxies);
        let ip_value = ip_value(ip);
        // Always text: an address's digits, dots and colons.
        let ip_text = ip_value.to_str().unwrap_or("-");
        let method = parts.method.clone();

        // 2. Route and method.
        let path = parts.uri.path();
        let Some((route_index, route)) = rt.config.routes.iter().enumerate().find(|(_, r)| {
            path == r.prefix
                || path
                    .strip_prefix(r.prefix.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        }) else {
            self.count(rt, ctx, None, None, &method, ip_text, 1).await?;
            return Err(
                Refusal::code("REQUEST_NOT_FOUND").message(format!("No route serves {path}."))
            );
        };
        ctx.route = Some(route_index);
        ctx.dialect = route.dialect;
        if !route.methods.iter().any(|m| m == method.as_str()) {
            self.count(rt, ctx, None, Some(route), &method, ip_text, 1)
                .await?;
            let allow = route.methods.join(", ");
            let mut r = Refusal::code("REQUEST_METHOD_NOT_ALLOWED").message(format!(
                "{method} is not allowed on {}; use {allow}.",
                route.prefix
            ));
            r.allow = Some(allow);
            return Err(r);
        }

        // 3. Identity.
        let key = if route.auth {
            match identity::authenticate_remembering(
                &rt.config.keys,
                &rt.key_index,
                identity::presented_key(&parts.headers),
                ctx.last_key,
                SystemTime::now,
            ) {
                Ok(k) => Some(k),
                Err(failure) => {
                    self.count(rt, ctx, None, Some(route), &method, ip_text, 1)
                        .await?;
                    return Err(match failure {
                        AuthFailure::Missing => Refusal::code("AUTH_HEADER_MISSING")
                            .message("No API key was sent.")
                            .hint("Send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."),
                        AuthFailure::Invalid => Refusal::code("AUTH_TOKEN_INVALID")
                            .message("The API key is not valid.")
                            .hint("Check that the whole key was sent and that it has not been revoked."),
                        AuthFailure::Expired => Refusal::code("AUTH_TOKEN_EXPIRED")
                            .message("The API key has expired.")
                            .hint("Create a new key and retry with it."),
                    });
                }
            }
        } else {
            None
        };
        ctx.key_id = key.map(|k| k.id.as_str());
        if let Some(k) = key {
            if let Some(missing) = route.scopes.iter().find(|s| !k.scopes.contains(s)) {
                self.count(rt, ctx, Some(k), Some(route), &method, ip_text, 1)
                    .await?;
                return Err(Refusal::code("AUTH_SCOPE_MISSING")
                    .message(format!(
                        "This key lacks the scope {missing:?} that {} requires.",
                        route.prefix
                    ))
                    .hint(format!("Use a key granted {missing:?}.")));
            }
        }

        // 4. Cheap validation from headers, 5. the body.
        let validated = self.validate(rt, route, parts, declared, body).await;
        let (body, cost) = match validated {
            Ok(v) => {
                if matches!(v.0, ReqBody::Buffered(_)) {
                    ctx.body_unread = false;
                }
                v
            }
            Err(refusal) => {
                self.count(rt, ctx, key, Some(route), &method, ip_text, 1)
                    .await?;
                return Err(refusal);
            }
        };

        // 6. Limits.
        self.count(rt, ctx, key, Some(route), &method, ip_text, cost)
            .await?;

        // 7. Idempotency.
        let mut idem: Option<(String, String)> = None;
        if let (true, true, Some(store)) =
            (route.idempotency, method == Method::POST, &self.idempotency)
        {
            if let Some(raw) = present.get(&parts.headers, Field::IdempotencyKey) {
                let Some(k) = raw.to_str().ok().and_then(idempotency::parse_key) else {
                    return Err(Refusal::code("IDEMPOTENCY_KEY_INVALID")
                        .hint("Use 1-255 visible ASCII characters, e.g. a UUID."));
                };
                let scope = format!(
                    "{}\u{1f}{k}",
                    key.map_or_else(|| format!("ip:{ip_text}"), |k| k.id.clone())
                );
                let bytes = match &body {
                    ReqBody::Buffered(b) => b.clone(),
                    ReqBody::Streaming(_) => Bytes::new(),
                };
                let pq = parts
                    .uri
                    .path_and_query()
                    .map_or(path, |p| p.as_str())
                    .to_owned();
                let fp = idempotency::fingerprint(method.as_str(), &pq, &bytes);
                match Box::pin(store.begin(&scope, &fp)).await {
                    Ok(Begin::Proceed) => idem = Some((scope, fp)),
                    Ok(Begin::InProgress) => {
                        return Err(Refusal::code("IDEMPOTENCY_IN_PROGRESS")
                            .hint("Retry after a second with the same key.")
                            .retry_after(1))
                    }
                    Ok(Begin::Mismatch) => {
                        return Err(Refusal::code("IDEMPOTENCY_KEY_REUSED")
                            .hint("Use a new Idempotency-Key for a different request."))
                    }
                    Ok(Begin::Replay(stored)) => return Ok(replay(stored, k)),
                    Err(e) => {
                        tracing::warn!(error = %e, "idempotency store");
                        return Err(Refusal::code("SERVICE_UNAVAILABLE")
                            .hint("Idempotency keys cannot be checked right now.")
                            .retry_after(1));
                    }
                }
            }
        }

        // 8. Breaker and proxy.
        // The peer's address as text, for X-Forwarded-For: usually the client IP just
        // formatted.
        let peer_value = if ip == peer.ip() {
            ip_value.clone()
        } else {
            self::ip_value(peer.ip())
        };
        // Not boxed: measured, a box here (one allocation and a copy per request) cost
        // about what the smaller enclosing futures saved.
        let result = self
            .forward(rt, ctx, route, key, parts, body, peer_value, peer.ip())
            .await;
        let resp = match (result, &idem) {
            (Ok(mut resp), Some((scope, fp))) => {
                // Stored with every field: typed now.
                ctx.type_passed(&mut resp);
                Box::pin(self.remember(route, scope, fp, resp, rt)).await
            }
            (Ok(resp), None) => resp,
            (Err(refusal), Some((scope, _))) => {
                Box::pin(self.forget(scope)).await;
                return Err(refusal);
            }
            (Err(refusal), None) => return Err(refusal),
        };
        if route.normalize_errors && resp.status().as_u16() >= 400 {
            let dialect = if accept_problem {
                Dialect::Problem
            } else {
                route.dialect
            };
            let mut resp = resp;
            // Read (the media type) and rewritten: typed now.
            ctx.type_passed(&mut resp);
            return Ok(Box::pin(normalize(resp, dialect, ctx.id())).await);
        }
        Ok(resp)
    }

    /// Steps 4 and 5: header checks, then the body (buffered when the route needs it).
    async fn validate(
        &self,
        rt: &Runtime,
        route: &RouteConfig,
        parts: &http::request::Parts,
        declared: Declared,
        body: &mut Option<Body>,
    ) -> Step<(ReqBody, u64)> {
        let too_large = || {
            let code = if route.document {
                "DOCUMENT_SIZE_EXCEEDED"
            } else {
                "REQUEST_TOO_LARGE"
            };
            Refusal::code(code).hint(format!(
                "The largest body accepted here is {} bytes.",
                route.max_body
            ))
        };
        let Declared { length, chunked } = declared;
        let has_body = length.is_some_and(|n| n > 0) || chunked;
        if chunked && length.is_none() && route.require_length {
            return Err(Refusal::code("REQUEST_LENGTH_REQUIRED")
                .hint("Send the body with a Content-Length header."));
        }
        if length.is_some_and(|n| n > route.max_body) {
            return Err(too_large());
        }
        if has_body && !route.media_types.is_empty() {
            // The configured types are lower case; the client's may be in any case.
            let ok = media_type(&parts.headers)
                .is_some_and(|m| route.media_types.iter().any(|t| t.eq_ignore_ascii_case(m)));
            if !ok {
                let names: Vec<String> = route.media_types.iter().map(|m| format_name(m)).collect();
                let code = if route.document {
                    "DOCUMENT_FORMAT_UNSUPPORTED"
                } else {
                    "REQUEST_MEDIA_TYPE_UNSUPPORTED"
                };
                return Err(
                    Refusal::code(code).hint(format!("Supported formats: {}", names.join(", ")))
                );
            }
        }
        let must_buffer = has_body
            && (route.json || route.idempotency || route.cost != CostFrom::One || length.is_none());
        if !has_body {
            return Ok((ReqBody::Buffered(Bytes::new()), 1));
        }
        let limit = usize::try_from(route.max_body).unwrap_or(usize::MAX);
        if !must_buffer {
            let Some(b) = body.take() else {
                return Ok((ReqBody::Buffered(Bytes::new()), 1));
            };
            let limited = http_body_util::Limited::new(b, limit);
            return Ok((ReqBody::Streaming(Body::new(limited)), 1));
        }
        let Some(b) = body.as_mut() else {
            return Ok((ReqBody::Buffered(Bytes::new()), 1));
        };
        // Read at most the limit; on overflow the rest stays in `body`, to be drained.
        let gap = rt.config.body_read_timeout;
        let bytes = match Box::pin(read_up_to(b, limit, gap)).await {
            Ok(bytes) => {
                *body = None;
                bytes
            }
            Err(ReadError::TooLarge) => return Err(too_large()),
            Err(ReadError::Stalled) => {
                return Err(Refusal::code("REQUEST_TIMEOUT")
                    .message(format!(
                        "The request body stopped arriving for {}.",
                        humantime::format_duration(gap)
                    ))
                    .hint("Send the body without long pauses, then retry."))
            }
            Err(ReadError::Broken) => {
                return Err(Refusal::code("REQUEST_MALFORMED")
                    .message("The request body could not be read."))
            }
        };
        let mut cost = 1;
        if route.json && !bytes.is_empty() {
            let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                Refusal::code("REQUEST_MALFORMED")
                    .message(format!("The body is not valid JSON: {e}."))
                    .hint(format!(
                        "Fix the JSON at line {}, column {}.",
                        e.line(),
                        e.column()
                    ))
            })?;
            if let CostFrom::JsonArray(ptr) = &route.cost {
                cost = value
                    .pointer(ptr)
                    .and_then(serde_json::Value::as_array)
                    .map_or(0, Vec::len) as u64;
                if cost == 0 {
                    return Err(Refusal::code("REQUEST_MALFORMED")
                        .message(format!("The body has no items at {ptr:?}."))
                        .hint(format!("Send a non-empty JSON array at {ptr:?}.")));
                }
            }
        }
        Ok((ReqBody::Buffered(bytes), cost))
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        rt: &View,
        ctx: &mut Ctx<'_>,
        route: &RouteConfig,
        key: Option<&ApiKey>,
        parts: &mut http::request::Parts,
        body: ReqBody,
        peer: HeaderValue,
        peer_ip: IpAddr,
    ) -> Step<Response<Body>> {
        let index = ctx
            .route
            .and_then(|r| rt.route_upstreams.get(r).copied().flatten());
        let Some((index, upstream)) = index.and_then(|i| Some((i, rt.upstreams.get(i)?))) else {
            return Err(Refusal::code("SERVICE_UNAVAILABLE").retry_after(1));
        };
        let (base, breaker) = (&upstream.url, &upstream.breaker);
        // One clock reading serves the breaker, the upstream latency, the deadline and the
        // connection pool's idle times: the few microseconds of header work in between do
        // not matter at these scales.
        let started = Instant::now();
        let probe = match breaker.admit(started) {
            Admission::Allowed { probe } => probe,
            Admission::Open { retry_after } => {
                let secs = weir_limit::clock::ceil_secs(
                    u64::try_from(retry_after.as_nanos()).unwrap_or(u64::MAX),
                )
                .max(1);
                return Err(Refusal::code("SERVICE_CIRCUIT_OPEN")
                    .hint(format!("The upstream is failing; retry after {secs} s."))
                    .retry_after(secs));
            }
        };
        // An `http` upstream without a path prefix is sent the client's own target: the
        // request's URI stays as it is. Any other is given a URI of its own.
        let to = rt
            .targets
            .get(index)
            .and_then(Option::as_ref)
            .filter(|t| t.scheme == http::uri::Scheme::HTTP)
            .map(|t| &t.authority);
        let uri = match to {
            Some(_) => None,
            None => match upstream_uri(base, &parts.uri) {
                Some(uri) => Some(uri),
                None => {
                    return Err(Refusal::code("REQUEST_MALFORMED")
                        .message("The request path cannot be forwarded."))
                }
            },
        };
        // Hop-by-hop fields leave the map (usually a scan that finds none); the fields weir
        // replaces or keeps private are skipped, and its own added, as the head is written.
        crate::hop::strip(&mut parts.headers);
        let (h, present) = (&parts.headers, ctx.present);
        let incoming = present
            .get(h, Field::Traceparent)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        // The new span's id and, should this start the trace, the trace's id, in one draw
        // from the thread's generator.
        let mut ids = [0u8; 24];
        rand::fill(&mut ids[..]);
        let (span, trace_id) = ids.split_at(8);
        let span: [u8; 8] = span.try_into().unwrap_or_default();
        let trace = incoming
            .and_then(|t| t.child(span))
            .or_else(|| TraceParent::new(trace_id.try_into().unwrap_or_default(), span, 1));
        // The fields made for this request go into the head as written here: none needs a
        // field value of its own. Each value is weir's own text (the request id was
        // checked or generated, the trace context is hex, the address digits) or, for a
        // forwarding chain, a field value the client sent.
        let mut added = FieldLines::with_capacity(256);
        added.push(&names::X_REQUEST_ID, &ctx.request_id);
        ctx.trace = trace;
        if let Some(t) = trace {
            added.push_parts(b"traceparent", &[&t.to_bytes()]);
        }
        match present
            .get(h, Field::XForwardedFor)
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) => added.push_parts(
                b"x-forwarded-for",
                &[prev.as_bytes(), b", ", peer.as_bytes()],
            ),
            None => added.push(&names::X_FORWARDED_FOR, &peer),
        }
        added.push(
            &names::X_FORWARDED_PROTO,
            &crate::client_ip::forwarded_proto(peer_ip, h, &rt.config.trusted_proxies),
        );
        let rewrite = Rewrite {
            // `tracestate` belongs to the caller's trace: it goes on only with that trace.
            skip: if incoming.is_some() {
                replaced
            } else {
                replaced_or_tracestate
            },
            strip: rt.config.identity_headers.strip(),
            add: [
                key.map_or(Rewrite::NONE.add[0], |k| &k.upstream_headers),
                &added,
            ],
        };
        if let Some(uri) = uri {
            parts.uri = uri;
        }
        parts.version = http::Version::HTTP_11;
        let body = match body {
            // An empty body costs no allocation.
            ReqBody::Buffered(b) if b.is_empty() => Body::empty(),
            ReqBody::Buffered(b) => Body::from(b),
            ReqBody::Streaming(b) => b,
        };
        let pool = &rt.pool;
        // The upstream answers (the head) within its timeout, and then never pauses longer
        // than that between two parts of the body.
        let sent = crate::deadline::within(
            (started + upstream.timeout).into(),
            pool.send_rewritten(parts, to, body, &rewrite, upstream.timeout, started),
        )
        .await;
        let answered = Instant::now();
        let elapsed = answered.saturating_duration_since(started);
        ctx.upstream_ms = Some(elapsed.as_secs_f64() * 1e3);
        let result = match sent {
            Err(_) => Err(Refusal::code("UPSTREAM_TIMEOUT").message(format!(
                "The upstream did not answer within {:?}.",
                upstream.timeout
            ))),
            Ok(Err(e)) => {
                tracing::warn!(request_id = %ctx.id(), upstream = %route.upstream, error = %e, "upstream request failed");
                Err(Refusal::code("SERVICE_CONNECTION_LOST")
                    .message("The upstream service could not be reached or closed the connection."))
            }
            Ok(Ok((resp, passed))) => {
                // The streamed request body went to the upstream.
                ctx.body_unread = false;
                ctx.passed = passed;
                Ok(resp)
            }
        };
        let success = matches!(&result, Ok(r) if r.status().as_u16() < 500);
        crate::outcomes::record(breaker, answered, success, probe);
        rt.metrics
            .upstream(index, &upstream.name, elapsed.as_secs_f64());
        // The upstream client leaves the response's hop-by-hop fields out as it parses the
        // head (`upstream::codec::Head`): there is nothing to strip here.
        let (rparts, rbody) = result?.into_parts();
        Ok(Response::from_parts(rparts, Body::new(rbody)))
    }

    /// Stores an idempotent request's response (unless it is 5xx or 429) and returns it.
    async fn remember(
        &self,
        route: &RouteConfig,
        scope: &str,
        fp: &str,
        resp: Response<Body>,
        rt: &Runtime,
    ) -> Response<Body> {
        let Some(store) = self.idempotency.clone() else {
            return resp;
        };
        let status = resp.status().as_u16();
        if status >= 500 || status == 429 {
            self.forget(scope).await;
            return resp;
        }
        let (parts, body) = resp.into_parts();
        let limit = usize::try_from(rt.config.idempotency.max_response_bytes).unwrap_or(usize::MAX);
        let bytes = match http_body_util::Limited::new(body, limit).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                tracing::warn!(route = %route.name, error = %e, "response not stored for idempotent replay");
                self.forget(scope).await;
                return Response::from_parts(parts, Body::empty());
            }
        };
        let headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "date" | "content-length" | "x-request-id"))
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let stored = StoredResponse {
            status,
            headers,
            body: bytes.to_vec(),
        };
        if let Err(e) = store.complete(scope, fp, stored).await {
            tracing::warn!(error = %e, "idempotency store");
        }
        let mut resp = Response::from_parts(parts, Body::from(bytes));
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("false"));
        resp
    }

    async fn forget(&self, scope: &str) {
        if let Some(store) = &self.idempotency {
            if let Err(e) = store.abandon(scope).await {
                tracing::warn!(error = %e, "idempotency store");
            }
        }
    }
}

/// Client fields the upstream never gets as sent: the credentials and the `Host` (the
/// upstream's own is written), `x-weir-*` (only weir speaks for the caller's identity, so a
/// client cannot pose as another key), and the fields weir writes itself.
fn replaced(name: &HeaderName) -> bool {
    REPLACED.contains(name) || name.as_str().starts_with("x-weir-")
}

/// The client fields [`replaced`] names one by one: weir writes its own (or, for the
/// credentials, none) in their place. The configuration refuses them as identity field
/// names.
pub(crate) const REPLACED: [HeaderName; 7] = [
    header::HOST,
    header::AUTHORIZATION,
    names::X_API_KEY,
    names::X_REQUEST_ID,
    names::TRACEPARENT,
    names::X_FORWARDED_FOR,
    names::X_FORWARDED_PROTO,
];

/// [`replaced`], and `tracestate` (when the caller's `traceparent` is not valid, weir starts
/// a new trace and the caller's trace state does not belong to it).
fn replaced_or_tracestate(name: &HeaderName) -> bool {
    replaced(name) || *name == names::TRACESTATE
}

fn replay(stored: StoredResponse, key: &str) -> Response<Body> {
    let mut resp = Response::new(Body::from(stored.body));
    *resp.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    for (k, v) in stored.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    if let Ok(v) = HeaderValue::from_str(key) {
        resp.headers_mut().insert("idempotency-key", v);
    }
    resp
}

/// Re-renders an upstream error body in `dialect` when weir-contract recognises it;
/// anything else passes through untouched.
async fn normalize(resp: Response<Body>, dialect: Dialect, request_id: &str) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let bytes = match http_body_util::Limited::new(body, weir_contract::MAX_ENVELOPE_BYTES)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(_) => return Response::from_parts(parts, Body::empty()),
    };
    let ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let parsed = weir_contract::parse_response(Some(parts.status.as_u16()), ct, &bytes);
    let Ok(p) = parsed else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    if p.dialect == dialect && p.error.request_id.is_some() {
        return Response::from_parts(parts, Body::from(bytes));
    }
    let mut err = p.error;
    if err.request_id.is_none() {
        err.request_id = Some(request_id.to_owned());
    }
    let rendered = dialect.render_string(&err);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(dialect.content_type()),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(rendered))
}

enum ReadError {
    TooLarge,
    Broken,
    Stalled,
}

/// Reads a body whole, but never more than `limit` bytes, and gives up when the client
/// pauses longer than `gap` between two reads.
async fn read_up_to(body: &mut Body, limit: usize, gap: Duration) -> Result<Bytes, ReadError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = tokio::time::timeout(gap, body.frame())
        .await
        .map_err(|_| ReadError::Stalled)?
    {
        let frame = frame.map_err(|_| ReadError::Broken)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ReadError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Lingering close: after refusing a request whose body was not read, discard what the
/// client is still sending (at most 1 MiB, for at most 5 s) so it can finish writing and
/// read the refusal, instead of meeting a reset connection. Nothing is kept.
fn linger(mut body: Body) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let mut seen = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    seen += data.len();
                    if seen > 1 << 20 {
                        break;
                    }
                }
            }
        })
        .await;
    });
}

/// An upstream's base URL split once, so each request's URI is assembled from parts
/// instead of formatted and parsed again.
struct Target {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
}

impl Target {
    /// Only bases without a path (`http://host:port`, with or without `/`) qualify; a base
    /// with a path prefix is joined as text.
    fn parse(url: &str) -> Option<Target> {
        let uri: http::Uri = url.parse().ok()?;
        let path = uri.path_and_query().map_or("", |p| p.as_str());
        if !(path.is_empty() || path == "/") {
            return None;
        }
        Some(Target {
            scheme: uri.scheme()?.clone(),
            authority: uri.authority()?.clone(),
        })
    }

    /// A copy that shares no reference count with `self`.
    fn copy(&self) -> Target {
        let authority = Bytes::copy_from_slice(self.authority.as_str().as_bytes());
        Target {
            scheme: self.scheme.clone(),
            authority: http::uri::Authority::from_maybe_shared(authority)
                .unwrap_or_else(|_| self.authority.clone()),
        }
    }
}

/// The upstream URI for a request URI: `base` + the request's path and query (for a base
/// that is not a bare `http` [`Target`]).
fn upstream_uri(base: &str, request: &http::Uri) -> Option<http::Uri> {
    let pq = request.path_and_query().map_or("/", |p| p.as_str());
    format!("{}{pq}", base.trim_end_matches('/')).parse().ok()
}

/// The request body: buffered when some step needed it whole, else streamed.
enum ReqBody {
    Buffered(Bytes),
    Streaming(Body),
}

impl Runtime {
    fn new(config: Config, demo_url: Option<&str>, old: Option<&Runtime>) -> Runtime {
        let upstream_urls: BTreeMap<String, String> = config
            .upstreams
            .iter()
            .map(|(n, u)| {
                let url = if u.url == "builtin:demo" {
                    demo_url.unwrap_or("http://127.0.0.1:9").to_owned()
                } else {
                    u.url.clone()
                };
                (n.clone(), url)
            })
            .collect();
        let breakers: BTreeMap<String, Arc<Breaker>> = config
            .upstreams
            .iter()
            .map(|(n, u)| {
                let kept = old
                    .and_then(|o| {
                        o.breakers.get(n).filter(|_| {
                            o.config
                                .upstreams
                                .get(n)
                                .is_some_and(|ou| ou.breaker == u.breaker)
                        })
                    })
                    .cloned();
                (
                    n.clone(),
                    kept.unwrap_or_else(|| Arc::new(Breaker::new(u.breaker.clone()))),
                )
            })
            .collect();
        let upstreams: Vec<UpstreamRt> = config
            .upstreams
            .iter()
            .filter_map(|(n, u)| {
                Some(UpstreamRt {
                    name: n.clone(),
                    url: upstream_urls.get(n)?.clone(),
                    breaker: Arc::clone(breakers.get(n)?),
                    timeout: u.timeout,
                })
            })
            .collect();
        let route_upstreams = config
            .routes
            .iter()
            .map(|r| upstreams.iter().position(|u| u.name == r.upstream))
            .collect();
        let targets = upstreams.iter().map(|u| Target::parse(&u.url)).collect();
        Runtime {
            targets,
            upstreams,
            route_upstreams,
            field_names: respond::FieldNames::of(&config.policy),
            key_index: identity::KeyIndex::new(&config.keys),
            metrics: telemetry::Metrics::new(&config),
            policy: Arc::new(config.policy.clone()),
            config,
            upstream_urls,
            breakers,
        }
    }

    /// The base URL a named upstream resolves to (the demo upstream's real address).
    pub fn upstream_url(&self, name: &str) -> Option<&str> {
        self.upstream_urls.get(name).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn upstream_config(url: &str) -> Config {
        Config::parse(&format!(
            "[upstreams.up]\nurl = \"{url}\"\n[[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"up\"\nauth = false\n"
        ))
        .expect("config")
    }

    /// A thread's view is reused while the runtime stays, made again after a reload (so a
    /// reload is never missed), and its targets are copies that share no reference count.
    #[tokio::test]
    async fn a_thread_view_follows_reloads() {
        let gw = Gateway::new(upstream_config("http://127.0.0.1:1"))
            .await
            .expect("gateway");
        let (a, b) = (gw.view(), gw.view());
        assert!(Arc::ptr_eq(&a, &b), "the same view while the runtime stays");
        assert!(Arc::ptr_eq(&a.rt, &gw.runtime()));
        let rt = gw.runtime();
        let shared = &rt.targets[0].as_ref().expect("a target").authority;
        let own = &a.targets[0].as_ref().expect("a target").authority;
        assert_eq!(own, shared);
        assert_ne!(
            own.as_str().as_ptr(),
            shared.as_str().as_ptr(),
            "a copy, not a clone"
        );
        gw.reload(upstream_config("http://127.0.0.1:2"))
            .expect("reload");
        let c = gw.view();
        assert!(!Arc::ptr_eq(&a, &c), "a reload makes a new view");
        assert!(Arc::ptr_eq(&c.rt, &gw.runtime()));
        let target = c.targets[0].as_ref().expect("a target");
        assert_eq!(target.authority.as_str(), "127.0.0.1:2");
        assert_eq!(c.upstreams[0].name, "up");
        assert_eq!(
            c.route_upstreams,
            [Some(0)],
            "the route's upstream, by position"
        );
    }

    /// A gateway whose policy has limits `a`, `b` and `c`, with the IETF fields on or off.
    fn limits_gateway(ietf: bool) -> Arc<Gateway> {
        let mut text = format!("[server]\nratelimit_fields = {ietf}\n");
        for name in ["a", "b", "c"] {
            text.push_str(&format!(
                "[[limits]]\nname = \"{name}\"\nscope = [\"ip\"]\nwindow = \"10s\"\ncount = 5\n"
            ));
        }
        let config = Config::parse(&text).expect("config");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(Gateway::new(config))
            .expect("gateway")
    }

    /// The head lines of `headers` (and `stamp`), names in lower case, sorted: `Date` is in
    /// `headers` or passed on, so the clock plays no part.
    fn head_lines(headers: &HeaderMap, stamp: Option<&Stamp>) -> Vec<String> {
        let mut out = Vec::new();
        crate::h1::write::head(
            &mut out,
            http::Version::HTTP_11,
            StatusCode::OK,
            headers,
            stamp,
            crate::h1::write::Framing::Length(0),
            false,
        );
        let mut lines: Vec<String> = String::from_utf8(out)
            .expect("ascii")
            .lines()
            .map(|l| match l.split_once(':') {
                Some((n, v)) => format!("{}:{v}", n.to_ascii_lowercase()),
                None => l.to_owned(),
            })
            .collect();
        lines.sort();
        lines
    }

    proptest! {
        /// The fields the HTTP/1.1 server writes straight into the head are exactly those
        /// `Stamp::apply` puts in the field map, each replacing the upstream's own field of
        /// the same name, whatever the limits and whichever names the upstream sent, in a
        /// map or passed on as received (in any case).
        #[test]
        fn a_stamp_written_directly_matches_one_applied_to_the_map(
            ietf in any::<bool>(),
            limits in proptest::collection::vec((0usize..3, 1u64..100_000, 0u64..100_000, 0u64..3_600), 0..4),
            limiting in any::<proptest::sample::Index>(),
            upstream in proptest::collection::vec(0usize..8, 0..6),
            passing in any::<bool>(),
            upper in any::<bool>(),
        ) {
            static GATEWAYS: std::sync::OnceLock<[Arc<Gateway>; 2]> = std::sync::OnceLock::new();
            let gateways = GATEWAYS.get_or_init(|| [limits_gateway(false), limits_gateway(true)]);
            let gw = &gateways[usize::from(ietf)];
            let decision = (!limits.is_empty()).then(|| Decision {
                outcome: weir_limit::Outcome::Admitted,
                retry_after: Duration::ZERO,
                now: 1_000_000_000_000,
                limiting: Some(limiting.index(limits.len())),
                limits: limits
                    .iter()
                    .map(|&(index, limit, remaining, window)| weir_limit::LimitStatus {
                        index,
                        window_secs: window,
                        limit,
                        remaining,
                        reset_after_ns: window * 1_000_000_000,
                        verdict: weir_limit::LimitVerdict::Ok,
                    })
                    .collect(),
                permit: None,
                degraded: false,
            });
            const SENT: [&str; 8] = [
                "x-request-id", "x-ratelimit-limit", "x-ratelimit-remaining",
                "x-ratelimit-reset", "ratelimit", "ratelimit-policy", "x-other", "server",
            ];
            const DATE: &str = "Sun, 22 Nov 2026 00:00:00 GMT";
            let mut headers = HeaderMap::new();
            let mut passed = None;
            if passing {
                let mut raw = format!("HTTP/1.1 200 OK\r\nDate: {DATE}\r\n");
                for &i in &upstream {
                    let name = if upper { SENT[i].to_ascii_uppercase() } else { SENT[i].to_owned() };
                    raw.push_str(&format!("{name}: upstream\r\n"));
                }
                raw.push_str("Content-Length: 5\r\n\r\n");
                let parsed = crate::upstream::codec::parse_head_passing(
                    &mut bytes::BytesMut::from(raw.as_str()),
                    &http::Method::GET,
                );
                let Ok(crate::upstream::codec::Parsed::Final(h)) = parsed else {
                    panic!("a whole head: {parsed:?}");
                };
                prop_assert!(h.response.headers().is_empty());
                passed = h.passed;
                prop_assert!(passed.is_some());
            } else {
                headers.insert(header::DATE, HeaderValue::from_static(DATE));
                for &i in &upstream {
                    headers.append(HeaderName::from_static(SENT[i]), HeaderValue::from_static("upstream"));
                }
            }
            let stamp = Stamp {
                request_id: HeaderValue::from_static("req-1"),
                decision: decision.as_ref(),
                passed,
                view: gw.view(),
                answered_at: Instant::now(),
            };
            let mut applied = headers.clone();
            stamp.apply(&mut applied);
            prop_assert_eq!(head_lines(&headers, Some(&stamp)), head_lines(&applied, None));
        }
        /// The text of any address is its standard notation (the IPv4 fast path included).
        #[test]
        fn ip_text_is_the_standard_notation(v4 in any::<[u8; 4]>(), v6 in any::<[u16; 8]>()) {
            let a = IpAddr::from(v4);
            prop_assert_eq!(ip_string(a), a.to_string());
            let b = IpAddr::from(v6);
            prop_assert_eq!(ip_string(b), b.to_string());
            // The thread's last address is kept, and never answers for another one.
            for ip in [a, a, b, a, b, b] {
                let (got, want) = (ip_value(ip), ip.to_string());
                prop_assert_eq!(got.to_str().ok(), Some(want.as_str()));
            }
        }
    }
}
