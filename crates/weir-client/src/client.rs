//! The client: one logical request = one [`Call`], however many attempts it takes.

use crate::backoff::Backoff;
use crate::budget::{BudgetConfig, RetryBudget};
use crate::error::{CallError, ErrorKind};
use crate::pacing::Pacer;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use weir_contract::headers::{request_id, TraceParent};
use weir_contract::{classify, parse_response, Action};
use weir_limit::breaker::{Admission, Breaker, BreakerConfig};

/// Bodies of error responses are read up to this many bytes.
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// A credential refresh hook: returns the new bearer token.
pub type RefreshHook = Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// Client settings.
#[derive(Clone)]
pub struct ClientConfig {
    /// Most attempts per call (first try included).
    pub max_attempts: u32,
    /// Deadline for a whole call, waits included.
    pub timeout: Duration,
    /// Backoff when the server gives no wait.
    pub backoff: Backoff,
    /// The retry budget.
    pub budget: BudgetConfig,
    /// The per-host circuit breaker.
    pub breaker: BreakerConfig,
    /// Pace requests from rate-limit headers.
    pub pacing: bool,
    /// Generate an Idempotency-Key for POST/PATCH (so they can be retried).
    pub idempotency_keys: bool,
    /// The bearer token sent as `Authorization`.
    pub token: Option<String>,
    /// Called once on a 401, to get a fresh token.
    pub refresh: Option<RefreshHook>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            max_attempts: 5,
            timeout: Duration::from_secs(60),
            backoff: Backoff::default(),
            budget: BudgetConfig::default(),
            breaker: BreakerConfig {
                open_for: Duration::from_secs(1),
                ..BreakerConfig::default()
            },
            pacing: true,
            idempotency_keys: true,
            token: None,
            refresh: None,
        }
    }
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("max_attempts", &self.max_attempts)
            .field("timeout", &self.timeout)
            .field("pacing", &self.pacing)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// One logical request.
#[derive(Debug, Clone)]
pub struct Call {
    /// Method.
    pub method: Method,
    /// URL.
    pub url: String,
    /// Extra headers.
    pub headers: HeaderMap,
    /// Body (kept, so retries send the same bytes).
    pub body: Option<Bytes>,
    /// An explicit Idempotency-Key (else one is generated for POST/PATCH when enabled).
    pub idempotency_key: Option<String>,
}

impl Call {
    /// A call with no headers or body.
    pub fn new(method: Method, url: impl Into<String>) -> Call {
        Call {
            method,
            url: url.into(),
            headers: HeaderMap::new(),
            body: None,
            idempotency_key: None,
        }
    }
}

/// A successful call.
#[derive(Debug, Clone)]
pub struct Success {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// Attempts sent.
    pub attempts: u32,
    /// Time spent waiting (backoff, Retry-After, pacing).
    pub waited: Duration,
    /// The server's request id.
    pub request_id: Option<String>,
}

/// Counters across all calls of a client.
#[derive(Debug, Default)]
pub struct Stats {
    /// Attempts sent.
    pub attempts: AtomicU64,
    /// 429 responses received.
    pub rate_limited: AtomicU64,
}

struct Shared {
    /// Keyed by a hash of (host, credential): no per-request string building.
    pacers: Mutex<HashMap<u64, Arc<Pacer>>>,
    /// Keyed by a hash of the host.
    breakers: Mutex<HashMap<u64, Arc<Breaker>>>,
    budget: RetryBudget,
    token: Mutex<Option<String>>,
    rng: Mutex<fastrand::Rng>,
    stats: Stats,
}

/// The resilient client. Cheap to clone; clones share pacing, breakers and the budget.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    config: Arc<ClientConfig>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .finish()
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    fastrand::fill(&mut out);
    out
}

impl Client {
    /// A client over a fresh `reqwest::Client`.
    pub fn new(config: ClientConfig) -> Client {
        Client::with_http(reqwest::Client::new(), config)
    }

    /// A client over an existing `reqwest::Client`.
    pub fn with_http(http: reqwest::Client, config: ClientConfig) -> Client {
        let shared = Shared {
            pacers: Mutex::new(HashMap::new()),
            breakers: Mutex::new(HashMap::new()),
            budget: RetryBudget::new(config.budget),
            token: Mutex::new(config.token.clone()),
            rng: Mutex::new(fastrand::Rng::new()),
            stats: Stats::default(),
        };
        Client {
            http,
            config: Arc::new(config),
            shared: Arc::new(shared),
        }
    }

    /// Counters across all calls.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    fn host_key(url: &reqwest::Url) -> u64 {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        BuildHasherDefault::<DefaultHasher>::default().hash_one((
            url.scheme(),
            url.host_str(),
            url.port_or_known_default(),
        ))
    }

    fn pacer(&self, host: u64, token: Option<&str>) -> Arc<Pacer> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        // Keyed by host and a hash of the credential (never the credential itself).
        let key = BuildHasherDefault::<DefaultHasher>::default().hash_one((host, token));
        self.shared.pacers.lock().entry(key).or_default().clone()
    }

    fn breaker(&self, host: u64) -> Arc<Breaker> {
        self.shared
            .breakers
            .lock()
            .entry(host)
            .or_insert_with(|| Arc::new(Breaker::new(self.config.breaker.clone())))
            .clone()
    }

    /// Runs one logical request to completion or to a [`CallError`].
    pub async fn execute(&self, call: Call) -> Result<Success, CallError> {
        let http = self.http.clone();
        self.run(call, move |req| {
            let http = http.clone();
            async move { http.execute(req).await.map_err(|e| e.to_string()) }
        })
        .await
    }

    /// The attempt loop, over any way of sending one attempt (the `reqwest::Client`, or the
    /// rest of a `reqwest-middleware` chain).
    pub(crate) async fn run<F, Fut>(&self, call: Call, send: F) -> Result<Success, CallError>
    where
        F: Fn(reqwest::Request) -> Fut,
        Fut: std::future::Future<Output = Result<reqwest::Response, String>>,
    {
        let started = Instant::now();
        let deadline = started + self.config.timeout;
        let url = reqwest::Url::parse(&call.url).map_err(|e| {
            CallError::new(
                ErrorKind::Invalid,
                format!("invalid URL {:?}: {e}", call.url),
            )
        })?;
        let host_id = Client::host_key(&url);
        let host = url.host_str().unwrap_or("the host");
        let breaker = self.breaker(host_id);
        let correlation = uuid::Uuid::new_v4().to_string();
        let trace_id: [u8; 16] = random();
        let idem = call.idempotency_key.clone().or_else(|| {
            (self.config.idempotency_keys && matches!(call.method, Method::POST | Method::PATCH))
                .then(|| uuid::Uuid::new_v4().to_string())
        });
        let retry_safe = is_idempotent(&call.method) || idem.is_some();
        let mut attempts = 0u32;
        let mut waited = Duration::ZERO;
        let mut refreshed = false;
        self.shared.budget.deposit(started);
        loop {
            // The breaker: wait for its next probe if the deadline allows, else fail fast.
            match breaker.admit(Instant::now()) {
                Admission::Allowed { .. } => {}
                Admission::Open { retry_after } => {
                    if Instant::now() + retry_after > deadline {
                        let mut e = CallError::new(ErrorKind::CircuitOpen, format!("the circuit for {host} is open; it probes again in {retry_after:?}, after the deadline"));
                        e.attempts = attempts;
                        e.waited = waited;
                        e.retryable = true;
                        return Err(e);
                    }
                    tokio::time::sleep(retry_after).await;
                    waited += retry_after;
                    continue;
                }
            }
            let token = self.shared.token.lock().clone();
            let pacer = self.pacer(host_id, token.as_deref());
            let mut seq = 0;
            if self.config.pacing {
                match pacer.acquire(deadline).await {
                    Ok((w, s)) => {
                        waited += w;
                        seq = s;
                    }
                    Err(w) => {
                        let mut e = CallError::new(
                            ErrorKind::WaitExceedsDeadline,
                            format!("the rate limit allows the next request in {:?}, after the deadline", w.wait),
                        );
                        e.attempts = attempts;
                        e.waited = waited;
                        e.server_asked = Some(w.wait);
                        e.retryable = true;
                        return Err(e);
                    }
                }
            }
            attempts += 1;
            self.shared.stats.attempts.fetch_add(1, Ordering::Relaxed);
            let mut req = self
                .http
                .request(call.method.clone(), url.clone())
                .headers(call.headers.clone());
            req = req.header("x-request-id", &correlation);
            if let Some(tp) = TraceParent::new(trace_id, random(), 1) {
                req = req.header("traceparent", tp.to_header_value());
            }
            if let Some(k) = &idem {
                req = req.header("idempotency-key", k);
            }
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = &call.body {
                req = req.body(b.clone());
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let built = req
                .build()
                .map_err(|e| CallError::new(ErrorKind::Invalid, format!("invalid request: {e}")))?;
            let sent = tokio::time::timeout(remaining, send(built)).await;
            let resp = match sent {
                Err(_) => {
                    breaker.record(Instant::now(), false, false);
                    let mut e = CallError::new(
                        ErrorKind::Deadline,
                        format!("no answer before the deadline of {:?}", self.config.timeout),
                    );
                    e.attempts = attempts;
                    e.waited = waited;
                    return Err(e);
                }
                Ok(Err(err)) => {
                    breaker.record(Instant::now(), false, false);
                    if seq > 0 {
                        pacer.forget_send();
                    }
                    let summary = format!("connection to {host} failed: {err}");
                    match self.plan_retry(retry_safe, attempts, deadline, None).await {
                        Ok(w) => {
                            waited += w;
                            continue;
                        }
                        Err(kind) => {
                            let mut e = CallError::new(kind, summary);
                            e.attempts = attempts;
                            e.waited = waited;
                            e.retryable = true;
                            return Err(e);
                        }
                    }
                }
                Ok(Ok(r)) => r,
            };
            let received = Instant::now();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            if self.config.pacing {
                pacer.observe(&headers, status, received, seq);
            }
            if status == 429 {
                self.shared
                    .stats
                    .rate_limited
                    .fetch_add(1, Ordering::Relaxed);
            }
            breaker.record(received, status < 500, false);
            let server_id = request_id::from_headers(&headers).map(str::to_owned);
            if status < 400 {
                let body = resp.bytes().await.map_err(|e| {
                    let mut ce = CallError::new(
                        ErrorKind::Transport,
                        format!("reading the response body failed: {e}"),
                    );
                    ce.status = Some(status);
                    ce.attempts = attempts;
                    ce
                })?;
                return Ok(Success {
                    status,
                    headers,
                    body,
                    attempts,
                    waited,
                    request_id: server_id.or(Some(correlation)),
                });
            }
            let body = read_bounded(resp, MAX_ERROR_BODY).await;
            let ct = headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let parsed = parse_response(Some(status), ct, &body).ok();
            let decision = classify(
                Some(status),
                &headers,
                parsed.as_ref().map(|p| &p.error),
                SystemTime::now(),
            );
            let fail =
                |kind: ErrorKind, summary: String, waited: Duration, asked: Option<Duration>| {
                    let mut e = CallError::new(kind, summary);
                    e.status = Some(status);
                    if let Some(p) = &parsed {
                        e.code = p.error.code.clone();
                        e.most_specific_code = p.error.deepest_code().map(str::to_owned);
                        e.message = p.error.message.clone();
                        e.hint = p.error.hint.clone();
                        e.request_id = p.error.request_id.clone();
                    }
                    e.request_id = e
                        .request_id
                        .clone()
                        .or_else(|| server_id.clone())
                        .or_else(|| Some(correlation.clone()));
                    e.retryable = decision.action == Action::Retry;
                    e.attempts = attempts;
                    e.waited = waited;
                    e.server_asked = asked;
                    e.body = Some(String::from_utf8_lossy(&body).into_owned());
                    e.response_headers = Some(headers.clone());
                    e
                };
            match decision.action {
                Action::DoNotRetry => {
                    return Err(fail(
                        ErrorKind::Status,
                        format!("{status}: {}", decision.reason),
                        waited,
                        None,
                    ));
                }
                Action::RefreshAuthThenRetryOnce => {
                    let Some(hook) = self.config.refresh.clone().filter(|_| !refreshed) else {
                        let why = if refreshed {
                            "401 again after refreshing the credentials: check that the key is valid, not expired, and granted this API"
                        } else {
                            "401: the credentials were rejected and no refresh hook is configured: check the key or token"
                        };
                        return Err(fail(ErrorKind::Auth, why.to_owned(), waited, None));
                    };
                    refreshed = true;
                    match hook().await {
                        Ok(t) => *self.shared.token.lock() = Some(t),
                        Err(msg) => {
                            return Err(fail(
                                ErrorKind::Auth,
                                format!("401, and refreshing the credentials failed: {msg}"),
                                waited,
                                None,
                            ))
                        }
                    }
                    continue;
                }
                Action::Retry => {
                    if !retry_safe {
                        return Err(fail(
                            ErrorKind::NotRetriedUnsafe,
                            format!("{status} on a {} without Idempotency-Key: not retried, it may have been applied", call.method),
                            waited,
                            None,
                        ));
                    }
                    let asked = decision.retry_after;
                    match self
                        .plan_retry(
                            true,
                            attempts,
                            deadline,
                            asked.map(|a| received + a.min(crate::MAX_SERVER_WAIT)),
                        )
                        .await
                    {
                        Ok(w) => {
                            waited += w;
                            continue;
                        }
                        Err(ErrorKind::WaitExceedsDeadline) => {
                            let a = asked.unwrap_or_default();
                            return Err(fail(
                                ErrorKind::WaitExceedsDeadline,
                                format!("{status}: the server asked to wait {a:?}, longer than the {:?} left before the deadline", deadline.saturating_duration_since(Instant::now())),
                                waited,
                                asked,
                            ));
                        }
                        Err(kind) => {
                            return Err(fail(
                                kind,
                                format!(
                                    "{status}: {} (gave up after {attempts} attempts)",
                                    decision.reason
                                ),
                                waited,
                                asked,
                            ))
                        }
                    }
                }
            }
        }
    }

    /// Decides whether and how long to wait before the next attempt, and waits.
    async fn plan_retry(
        &self,
        retry_safe: bool,
        attempts: u32,
        deadline: Instant,
        until: Option<Instant>,
    ) -> Result<Duration, ErrorKind> {
        if !retry_safe {
            return Err(ErrorKind::NotRetriedUnsafe);
        }
        if attempts >= self.config.max_attempts {
            return Err(ErrorKind::Status);
        }
        let now = Instant::now();
        let at = match until {
            // Retry-After: exactly then, never earlier (the pacer holds sends until then too).
            Some(at) => at.max(now),
            None => {
                let d = {
                    let mut rng = self.shared.rng.lock();
                    self.config
                        .backoff
                        .delay(attempts.saturating_sub(1), &mut rng)
                };
                now + d
            }
        };
        if at > deadline {
            return Err(ErrorKind::WaitExceedsDeadline);
        }
        if !self.shared.budget.withdraw(now) {
            return Err(ErrorKind::BudgetExhausted);
        }
        tokio::time::sleep_until(at.into()).await;
        Ok(at - now)
    }
}

async fn read_bounded(mut resp: reqwest::Response, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let take = chunk.len().min(max - out.len());
        out.extend_from_slice(&chunk[..take]);
        if out.len() >= max {
            break;
        }
    }
    out
}

/// Adds `name: value` to a header map, for `-H 'Name: value'` style input.
pub fn parse_header(line: &str) -> Option<(HeaderName, HeaderValue)> {
    let (n, v) = line.split_once(':')?;
    Some((
        HeaderName::from_bytes(n.trim().as_bytes()).ok()?,
        HeaderValue::from_str(v.trim()).ok()?,
    ))
}
