//! Configuration in two stages: [`RawConfig`] mirrors the TOML file (unknown keys are
//! errors), [`Config`] is checked and typed. Every error names the file, the key path and
//! what is wrong, and is reported before anything listens.
//!
//! `docs/configuration.md` documents every key with its default.

use crate::balance::BalanceMode;
use crate::identity::{ApiKey, IdentityHeaders, KeyHash};
use ipnet::IpNet;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;
use weir_contract::Dialect;
use weir_limit::{Dimension, LimitDef, LimitKind, MethodFilter, PlanValue, Policy, Quota};

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {path}: {message}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// The key path, e.g. `routes[1].upstream`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: String::new(),
        path: path.into(),
        message: message.into(),
    }
}

/// Whether an identity field may not be called `name`: weir writes or strips a field of
/// that name itself on the way upstream (the fields it replaces, `tracestate`, the
/// framing and hop-by-hop fields), or the upstream needs the client's (`Forwarded`,
/// `Idempotency-Key`). Renaming an identity field onto one of these would silently drop or
/// overwrite what the upstream relies on.
fn reserved_field(name: &http::HeaderName) -> bool {
    crate::gateway::REPLACED.contains(name)
        || crate::hop::hop_index_raw(name.as_str().as_bytes()).is_some()
        || matches!(
            name.as_str(),
            "tracestate" | "content-length" | "forwarded" | "idempotency-key"
        )
}

/// Checks `[server.identity_headers]`.
fn identity_headers(raw: &RawIdentityHeaders) -> Result<IdentityHeaders, ConfigError> {
    let mut seen: Vec<(http::HeaderName, &str)> = Vec::new();
    let mut name = |key: &'static str,
                    value: &str|
     -> Result<Option<http::HeaderName>, ConfigError> {
        let path = format!("server.identity_headers.{key}");
        if value.is_empty() {
            return Ok(None);
        }
        let n = http::HeaderName::from_bytes(value.as_bytes()).map_err(|_| {
            err(&path, format!("{value:?} is not a header field name (letters, digits and !#$%&'*+-.^_`|~ only)"))
        })?;
        if reserved_field(&n) {
            return Err(err(
                &path,
                format!("{value:?} is a field weir manages itself on the way upstream; choose another name, or \"\" to leave it out"),
            ));
        }
        if let Some((_, other)) = seen.iter().find(|(m, _)| *m == n) {
            return Err(err(
                &path,
                format!("{value:?} is also server.identity_headers.{other}; each part needs its own field"),
            ));
        }
        seen.push((n.clone(), key));
        Ok(Some(n))
    };
    Ok(IdentityHeaders::new(
        name("key_id", &raw.key_id)?,
        name("user", &raw.user)?,
        name("organisation", &raw.organisation)?,
        name("plan", &raw.plan)?,
    ))
}

// ---------------------------------------------------------------- raw (close to TOML)

/// The file as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    idempotency: RawIdempotency,
    #[serde(default)]
    upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    limits: Vec<RawLimit>,
    #[serde(default)]
    keys: Vec<RawKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_admin")]
    admin_listen: String,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default = "yes")]
    ratelimit_fields: bool,
    #[serde(default = "default_dialect")]
    dialect: String,
    #[serde(default = "default_grace")]
    shutdown_grace: String,
    #[serde(default = "default_error_doc")]
    error_type_base: String,
    #[serde(default)]
    workers: usize,
    #[serde(default = "default_balance")]
    connection_balance: String,
    #[serde(default = "default_cpu_affinity")]
    cpu_affinity: String,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_header_timeout")]
    header_read_timeout: String,
    #[serde(default = "default_body_timeout")]
    body_read_timeout: String,
    #[serde(default = "default_write_timeout")]
    response_write_timeout: String,
    #[serde(default = "yes")]
    batch_response_writes: bool,
    #[serde(default = "yes")]
    yield_before_sleep: bool,
    #[serde(default)]
    identity_headers: RawIdentityHeaders,
}

/// `[server.identity_headers]`: the field names that carry a caller's identity upstream;
/// `""` leaves one out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentityHeaders {
    #[serde(default = "default_key_id_header")]
    key_id: String,
    #[serde(default = "default_user_header")]
    user: String,
    #[serde(default = "default_organisation_header")]
    organisation: String,
    #[serde(default = "default_plan_header")]
    plan: String,
}

impl Default for RawIdentityHeaders {
    fn default() -> Self {
        RawIdentityHeaders {
            key_id: default_key_id_header(),
            user: default_user_header(),
            organisation: default_organisation_header(),
            plan: default_plan_header(),
        }
    }
}

fn default_key_id_header() -> String {
    "X-Weir-Key-Id".into()
}
fn default_user_header() -> String {
    "X-Weir-User".into()
}
fn default_organisation_header() -> String {
    "X-Weir-Organisation".into()
}
fn default_plan_header() -> String {
    "X-Weir-Plan".into()
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: default_listen(),
            admin_listen: default_admin(),
            trusted_proxies: Vec::new(),
            ratelimit_fields: true,
            dialect: default_dialect(),
            shutdown_grace: default_grace(),
            error_type_base: default_error_doc(),
            workers: 0,
            connection_balance: default_balance(),
            cpu_affinity: default_cpu_affinity(),
            max_connections: default_max_connections(),
            header_read_timeout: default_header_timeout(),
            body_read_timeout: default_body_timeout(),
            response_write_timeout: default_write_timeout(),
            batch_response_writes: true,
            yield_before_sleep: true,
            identity_headers: RawIdentityHeaders::default(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_admin() -> String {
    "127.0.0.1:9090".into()
}
fn default_balance() -> String {
    "least-connections".into()
}
fn default_cpu_affinity() -> String {
    "none".into()
}
fn default_max_connections() -> usize {
    10_000
}
fn yes() -> bool {
    true
}
fn default_dialect() -> String {
    "detail".into()
}
fn default_grace() -> String {
    "30s".into()
}
fn default_header_timeout() -> String {
    "30s".into()
}
fn default_body_timeout() -> String {
    "60s".into()
}
fn default_write_timeout() -> String {
    "60s".into()
}
fn default_error_doc() -> String {
    "https://weir.invalid/errors/".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default = "default_store_kind")]
    kind: String,
    #[serde(default = "default_max_keys")]
    max_keys: usize,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    cluster_urls: Vec<String>,
    #[serde(default = "default_deadline")]
    deadline: String,
    #[serde(default = "default_on_failure")]
    on_failure: String,
    #[serde(default = "one")]
    instances: u64,
    #[serde(default = "default_prefix")]
    prefix: String,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            kind: default_store_kind(),
            max_keys: default_max_keys(),
            url: None,
            cluster_urls: Vec::new(),
            deadline: default_deadline(),
            on_failure: default_on_failure(),
            instances: 1,
            prefix: default_prefix(),
        }
    }
}

fn default_store_kind() -> String {
    "memory".into()
}
fn default_max_keys() -> usize {
    1_000_000
}
fn default_deadline() -> String {
    "20ms".into()
}
fn default_on_failure() -> String {
    "fail_closed".into()
}
fn one() -> u64 {
    1
}
fn default_prefix() -> String {
    "weir".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdempotency {
    #[serde(default = "default_idem_path")]
    path: String,
    #[serde(default = "default_idem_ttl")]
    ttl: String,
    #[serde(default = "default_idem_lock")]
    lock_timeout: String,
    #[serde(default = "default_idem_max")]
    max_response_bytes: String,
    #[serde(default = "default_idem_store")]
    store: String,
    #[serde(default)]
    url: Option<String>,
}

fn default_idem_store() -> String {
    "embedded".into()
}

impl Default for RawIdempotency {
    fn default() -> Self {
        RawIdempotency {
            path: default_idem_path(),
            ttl: default_idem_ttl(),
            lock_timeout: default_idem_lock(),
            max_response_bytes: default_idem_max(),
            store: default_idem_store(),
            url: None,
        }
    }
}

fn default_idem_path() -> String {
    "weir-idempotency.redb".into()
}
fn default_idem_ttl() -> String {
    "24h".into()
}
fn default_idem_lock() -> String {
    "60s".into()
}
fn default_idem_max() -> String {
    "1MiB".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: String,
    #[serde(default = "default_timeout")]
    timeout: String,
    #[serde(default)]
    breaker: RawBreaker,
}

fn default_timeout() -> String {
    "30s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    #[serde(default = "default_ratio")]
    failure_ratio: f64,
    #[serde(default = "default_window")]
    window: String,
    #[serde(default = "default_min_requests")]
    min_requests: u64,
    #[serde(default = "default_open_for")]
    open_for: String,
    #[serde(default = "one")]
    half_open_probes: u64,
}

impl Default for RawBreaker {
    fn default() -> Self {
        RawBreaker {
            failure_ratio: default_ratio(),
            window: default_window(),
            min_requests: default_min_requests(),
            open_for: default_open_for(),
            half_open_probes: 1,
        }
    }
}

fn default_ratio() -> f64 {
    0.5
}
fn default_window() -> String {
    "10s".into()
}
fn default_min_requests() -> u64 {
    20
}
fn default_open_for() -> String {
    "5s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    prefix: String,
    upstream: String,
    #[serde(default = "default_methods")]
    methods: Vec<String>,
    #[serde(default)]
    dialect: Option<String>,
    #[serde(default = "yes")]
    auth: bool,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default = "default_max_body")]
    max_body: String,
    #[serde(default)]
    json: bool,
    #[serde(default)]
    media_types: Vec<String>,
    #[serde(default)]
    require_length: bool,
    #[serde(default)]
    idempotency: bool,
    #[serde(default)]
    document: bool,
    #[serde(default)]
    cost_from: Option<String>,
    #[serde(default = "yes")]
    normalize_errors: bool,
}

fn default_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into()]
}
fn default_max_body() -> String {
    "1MiB".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    name: String,
    #[serde(default)]
    scope: Vec<String>,
    #[serde(default)]
    window: Option<String>,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    per_plan: BTreeMap<String, u64>,
    #[serde(default)]
    concurrency: Option<u64>,
    #[serde(default = "default_limit_methods")]
    methods: String,
    #[serde(default)]
    routes: Vec<String>,
}

fn default_limit_methods() -> String {
    "any".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    id: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    hash: Option<String>,
    user: String,
    organisation: String,
    plan: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    expires: Option<String>,
}

// ---------------------------------------------------------------- checked

/// Where counters live.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    /// The embedded in-memory store.
    Memory {
        /// Cap on tracked keys.
        max_keys: usize,
    },
    /// Redis (single node or Cluster).
    Redis(weir_limit::store::redis::RedisConfig),
}

/// Circuit-breaker settings (shared with the client).
pub use weir_limit::breaker::BreakerConfig;

/// An upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Its name.
    pub name: String,
    /// `http://host:port[/base]`, or `builtin:demo`.
    pub url: String,
    /// Time allowed for the response headers.
    pub timeout: Duration,
    /// Breaker settings.
    pub breaker: BreakerConfig,
}

/// How a request's cost is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CostFrom {
    /// Every request costs 1.
    One,
    /// The length of the JSON array at this JSON pointer (`""` = the body itself).
    JsonArray(String),
}

/// A route.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Name (used as the limiter's route dimension and in metrics).
    pub name: String,
    /// Path prefix it serves.
    pub prefix: String,
    /// Upstream name.
    pub upstream: String,
    /// Allowed methods (uppercase).
    pub methods: Vec<String>,
    /// Error dialect.
    pub dialect: Dialect,
    /// Whether an API key is required.
    pub auth: bool,
    /// Scopes a key must hold.
    pub scopes: Vec<String>,
    /// Largest request body.
    pub max_body: u64,
    /// Whether bodies must be valid JSON.
    pub json: bool,
    /// Allowed body media types (empty: any).
    pub media_types: Vec<String>,
    /// Whether a body must come with Content-Length.
    pub require_length: bool,
    /// Whether POSTs honour Idempotency-Key.
    pub idempotency: bool,
    /// Whether this is a document route (DOCUMENT_* codes).
    pub document: bool,
    /// How the cost is known.
    pub cost: CostFrom,
    /// Whether upstream error bodies are re-rendered in the route's dialect.
    pub normalize_errors: bool,
}

/// Idempotency settings.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyConfig {
    /// The embedded database file.
    pub path: PathBuf,
    /// How long a key is remembered.
    pub ttl: Duration,
    /// How long an in-progress record blocks duplicates if its request never finishes.
    pub lock_timeout: Duration,
    /// Largest response stored for replay.
    pub max_response_bytes: u64,
    /// Redis URL when records live in Redis (`store = "redis"`); `None`: the embedded file.
    pub redis_url: Option<String>,
    /// Key prefix in Redis.
    pub redis_prefix: String,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Public listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Whether to send the IETF `RateLimit`/`RateLimit-Policy` fields.
    pub ratelimit_fields: bool,
    /// The dialect of errors outside any route.
    pub dialect: Dialect,
    /// Drain time on shutdown.
    pub shutdown_grace: Duration,
    /// Base URI of problem `type`s.
    pub error_type_base: String,
    /// Worker threads serving the public listener; 0 means one per available core.
    pub workers: usize,
    /// How accepted connections are spread over the workers.
    pub connection_balance: BalanceMode,
    /// Whether each worker thread is pinned to a CPU of its own.
    pub cpu_affinity: crate::affinity::CpuAffinity,
    /// The most client connections served at once; at the cap, new connections wait in
    /// the kernel's listen queue until one ends.
    pub max_connections: usize,
    /// How long a client may take to send a request's head, and how long a kept-alive
    /// connection may sit idle before the next one (slow or idle clients cannot pin
    /// connections forever).
    pub header_read_timeout: Duration,
    /// The longest pause between two reads of a request body the gateway buffers; then
    /// the request gets 408 `REQUEST_TIMEOUT`.
    pub body_read_timeout: Duration,
    /// The longest a client may take no bytes of its response while weir has some to send;
    /// then weir closes the connection, so a client that stops reading cannot hold the
    /// connection, its upstream exchange and its concurrency slot forever.
    pub response_write_timeout: Duration,
    /// Whether a worker writes a ready response only once the other work ready on its
    /// thread has run (see `h1::conn::after_round`): the client woken by the response then
    /// does not cut into the worker's round, for a wait of at most that round.
    pub batch_response_writes: bool,
    /// Whether a worker with nothing left to run gives its CPU once to the other tasks
    /// queued on it (`sched_yield`) before it sleeps in the kernel's event wait: on a machine
    /// it shares with its clients or its upstream, the task it lets run is often the one
    /// about to hand it more work, which it then finds without sleeping and being woken
    /// (see `server::worker_runtime`).
    pub yield_before_sleep: bool,
    /// The names of the fields that tell the upstream who is calling.
    pub identity_headers: IdentityHeaders,
    /// Store.
    pub store: StoreConfig,
    /// Idempotency.
    pub idempotency: IdempotencyConfig,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routes, longest prefix first.
    pub routes: Vec<RouteConfig>,
    /// The rate-limit policy.
    pub policy: Policy,
    /// API keys.
    pub keys: Vec<ApiKey>,
}

/// Parses a size such as `10MiB`, `512KiB`, `1000` (bytes).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// The longest duration any key accepts (longer values are mistakes, and would overflow
/// time arithmetic).
const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// The most worker threads `server.workers` accepts (more is a typo, not a machine).
const MAX_WORKERS: usize = 1024;

fn workers(path: &str, n: usize) -> Result<usize, ConfigError> {
    if n > MAX_WORKERS {
        return Err(err(
            path,
            format!(
                "{n} is more than the {MAX_WORKERS} worker threads allowed; 0 means one per core"
            ),
        ));
    }
    Ok(n)
}

/// A duration that must not be zero: a zero timeout would fail every request, a zero
/// window or TTL would silently turn its feature off.
fn nonzero(path: &str, s: &str) -> Result<Duration, ConfigError> {
    match duration(path, s)? {
        d if d.is_zero() => Err(err(
            path,
            format!("{s:?} would time out (or expire) at once; write e.g. \"30s\""),
        )),
        d => Ok(d),
    }
}

fn duration(path: &str, s: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(s).map_err(|e| {
        err(
            path,
            format!("{s:?} is not a duration ({e}); write e.g. \"30s\", \"20ms\", \"24h\""),
        )
    })?;
    if d > MAX_DURATION {
        return Err(err(
            path,
            format!("{s:?} is longer than the maximum of 365 days"),
        ));
    }
    Ok(d)
}

fn size(path: &str, s: &str) -> Result<u64, ConfigError> {
    parse_size(s).ok_or_else(|| {
        err(
            path,
            format!("{s:?} is not a size; write e.g. \"10MiB\", \"512KiB\", \"1000\""),
        )
    })
}

fn addr(path: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        err(
            path,
            format!("{s:?} is not an address such as \"127.0.0.1:8080\""),
        )
    })
}

fn dialect(path: &str, s: &str) -> Result<Dialect, ConfigError> {
    Dialect::from_name(s).ok_or_else(|| {
        err(
            path,
            format!("{s:?} is not a dialect: use detail, error, mcp or problem"),
        )
    })
}

impl Config {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            path: "(file)".into(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text).map_err(|mut e| {
            e.file = file;
            e
        })
    }

    /// Parses and checks TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = toml::de::Deserializer::parse(text)
            .map_err(|e| err("(syntax)", toml_message(text, e.message(), e.span())))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            err(
                if path.is_empty() || path == "." {
                    "(root)".to_owned()
                } else {
                    path
                },
                toml_message(text, inner.message(), inner.span()),
            )
        })?;
        Config::check(raw)
    }

    fn check(raw: RawConfig) -> Result<Config, ConfigError> {
        let s = &raw.server;
        let trusted_proxies = s
            .trusted_proxies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        err(
                            format!("server.trusted_proxies[{i}]"),
                            format!("{p:?} is not an IP address or CIDR"),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        let store = match raw.store.kind.as_str() {
            "memory" => StoreConfig::Memory {
                max_keys: raw.store.max_keys.max(1),
            },
            "redis" => {
                use weir_limit::store::redis::{FailurePolicy, RedisConfig};
                let mut cfg = match (&raw.store.url, raw.store.cluster_urls.is_empty()) {
                    (Some(u), true) => RedisConfig::single(u.clone()),
                    (None, false) => RedisConfig::cluster(raw.store.cluster_urls.clone()),
                    _ => return Err(err("store", "with kind = \"redis\", set exactly one of url (single node) or cluster_urls (Cluster)")),
                };
                cfg.deadline = nonzero("store.deadline", &raw.store.deadline)?;
                cfg.prefix = raw.store.prefix.clone();
                cfg.on_failure = match raw.store.on_failure.as_str() {
                    "fail_closed" => FailurePolicy::FailClosed,
                    "fail_open" => FailurePolicy::FailOpen {
                        instances: NonZeroU64::new(raw.store.instances)
                            .ok_or_else(|| err("store.instances", "must be at least 1"))?,
                    },
                    other => {
                        return Err(err(
                            "store.on_failure",
                            format!("{other:?}: use fail_closed or fail_open"),
                        ))
                    }
                };
                StoreConfig::Redis(cfg)
            }
            other => return Err(err("store.kind", format!("{other:?}: use memory or redis"))),
        };
        let idempotency = IdempotencyConfig {
            path: PathBuf::from(&raw.idempotency.path),
            ttl: nonzero("idempotency.ttl", &raw.idempotency.ttl)?,
            lock_timeout: nonzero("idempotency.lock_timeout", &raw.idempotency.lock_timeout)?,
            max_response_bytes: size(
                "idempotency.max_response_bytes",
                &raw.idempotency.max_response_bytes,
            )?,
            redis_url: match raw.idempotency.store.as_str() {
                "embedded" => None,
                "redis" => Some(
                    raw.idempotency
                        .url
                        .clone()
                        .or_else(|| raw.store.url.clone())
                        .ok_or_else(|| {
                            err(
                                "idempotency.url",
                                "with store = \"redis\", set idempotency.url (or store.url)",
                            )
                        })?,
                ),
                other => {
                    return Err(err(
                        "idempotency.store",
                        format!("{other:?}: use embedded or redis"),
                    ))
                }
            },
            redis_prefix: raw.store.prefix.clone(),
        };
        let mut upstreams = BTreeMap::new();
        for (name, u) in &raw.upstreams {
            let p = format!("upstreams.{name}");
            if !(u.url == "builtin:demo" || u.url.starts_with("http://")) {
                return Err(err(
                    format!("{p}.url"),
                    format!("{:?}: use http://host:port or builtin:demo", u.url),
                ));
            }
            if u.url.starts_with("http://") && u.url.parse::<http::Uri>().is_err() {
                return Err(err(
                    format!("{p}.url"),
                    format!("{:?} is not a valid URL", u.url),
                ));
            }
            let b = &u.breaker;
            if !(b.failure_ratio > 0.0 && b.failure_ratio <= 1.0) {
                return Err(err(
                    format!("{p}.breaker.failure_ratio"),
                    "must be in (0, 1]",
                ));
            }
            upstreams.insert(
                name.clone(),
                UpstreamConfig {
                    name: name.clone(),
                    url: u.url.trim_end_matches('/').to_owned(),
                    timeout: nonzero(&format!("{p}.timeout"), &u.timeout)?,
                    breaker: BreakerConfig {
                        failure_ratio: b.failure_ratio,
                        window: nonzero(&format!("{p}.breaker.window"), &b.window)?,
                        min_requests: b.min_requests.max(1),
                        open_for: nonzero(&format!("{p}.breaker.open_for"), &b.open_for)?,
                        half_open_probes: b.half_open_probes.max(1),
                    },
                },
            );
        }
        let default_dialect = dialect("server.dialect", &s.dialect)?;
        let mut routes = Vec::new();
        for (i, r) in raw.routes.iter().enumerate() {
            let p = format!("routes[{i}]");
            if !r.prefix.starts_with('/') {
                return Err(err(
                    format!("{p}.prefix"),
                    format!("{:?} must start with '/'", r.prefix),
                ));
            }
            if !upstreams.contains_key(&r.upstream) {
                return Err(err(
                    format!("{p}.upstream"),
                    format!(
                        "unknown upstream {:?} (define it under [upstreams.{}])",
                        r.upstream, r.upstream
                    ),
                ));
            }
            if raw.routes[..i].iter().any(|o| o.name == r.name) {
                return Err(err(
                    format!("{p}.name"),
                    format!("route name {:?} is used twice", r.name),
                ));
            }
            let methods: Vec<String> = r.methods.iter().map(|m| m.to_ascii_uppercase()).collect();
            if let Some(m) = methods
                .iter()
                .find(|m| http::Method::from_bytes(m.as_bytes()).is_err())
            {
                return Err(err(
                    format!("{p}.methods"),
                    format!("{m:?} is not an HTTP method"),
                ));
            }
            let cost = match r.cost_from.as_deref() {
                None => CostFrom::One,
                Some(ptr) if ptr.is_empty() || ptr.starts_with('/') => {
                    CostFrom::JsonArray(ptr.to_owned())
                }
                Some(ptr) => {
                    return Err(err(
                        format!("{p}.cost_from"),
                        format!("{ptr:?} is not a JSON pointer (\"\" or \"/items\")"),
                    ))
                }
            };
            if cost != CostFrom::One && !r.json {
                return Err(err(
                    format!("{p}.cost_from"),
                    "needs json = true: the cost is read from the JSON body",
                ));
            }
            routes.push(RouteConfig {
                name: r.name.clone(),
                prefix: r.prefix.trim_end_matches('/').to_owned(),
                upstream: r.upstream.clone(),
                methods,
                dialect: match &r.dialect {
                    Some(d) => dialect(&format!("{p}.dialect"), d)?,
                    None => default_dialect,
                },
                auth: r.auth,
                scopes: r.scopes.clone(),
                max_body: size(&format!("{p}.max_body"), &r.max_body)?,
                json: r.json,
                media_types: r
                    .media_types
                    .iter()
                    .map(|m| m.to_ascii_lowercase())
                    .collect(),
                require_length: r.require_length,
                idempotency: r.idempotency,
                document: r.document,
                cost,
                normalize_errors: r.normalize_errors,
            });
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let plans: Vec<&str> = raw.keys.iter().map(|k| k.plan.as_str()).collect();
        let mut limits = Vec::new();
        for (i, l) in raw.limits.iter().enumerate() {
            let p = format!("limits[{i}]");
            let scope = l
                .scope
                .iter()
                .map(|d| match d.as_str() {
                    "organisation" | "organization" | "org" => Ok(Dimension::Organisation),
                    "key" | "api_key" => Ok(Dimension::ApiKey),
                    "user" => Ok(Dimension::User),
                    "ip" | "client_ip" => Ok(Dimension::ClientIp),
                    "route" => Ok(Dimension::Route),
                    "method" | "method_class" => Ok(Dimension::MethodClass),
                    other => Err(err(
                        format!("{p}.scope"),
                        format!("{other:?}: use organisation, key, user, ip, route or method"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let methods = match l.methods.as_str() {
                "any" => MethodFilter::Any,
                "read" => MethodFilter::Read,
                "write" => MethodFilter::Write,
                other => {
                    return Err(err(
                        format!("{p}.methods"),
                        format!("{other:?}: use any, read or write"),
                    ))
                }
            };
            for r in &l.routes {
                if !routes.iter().any(|x| &x.name == r) {
                    return Err(err(format!("{p}.routes"), format!("unknown route {r:?}")));
                }
            }
            let kind = match (l.count, l.per_plan.is_empty(), l.concurrency) {
                (Some(n), true, None) => {
                    let w = duration(&format!("{p}.window"), l.window.as_deref().unwrap_or("60s"))?;
                    LimitKind::Rate(PlanValue::Fixed(
                        Quota::new(n, w).map_err(|e| err(&p, e.to_string()))?,
                    ))
                }
                (None, false, None) => {
                    let w = duration(&format!("{p}.window"), l.window.as_deref().unwrap_or("60s"))?;
                    let mut per = Vec::new();
                    for (plan, n) in &l.per_plan {
                        if !plans.is_empty() && !plans.contains(&plan.as_str()) {
                            tracing::debug!(limit = %l.name, plan = %plan, "plan has no keys yet");
                        }
                        per.push((
                            plan.clone(),
                            Quota::new(*n, w)
                                .map_err(|e| err(format!("{p}.per_plan.{plan}"), e.to_string()))?,
                        ));
                    }
                    LimitKind::Rate(PlanValue::PerPlan(per))
                }
                (None, true, Some(n)) => LimitKind::Concurrency(PlanValue::Fixed(
                    NonZeroU64::new(n)
                        .ok_or_else(|| err(format!("{p}.concurrency"), "must be at least 1"))?,
                )),
                _ => return Err(err(
                    &p,
                    "set exactly one of count (with window), per_plan (with window) or concurrency",
                )),
            };
            limits.push(LimitDef {
                name: l.name.clone(),
                scope,
                methods,
                routes: l.routes.clone(),
                kind,
            });
        }
        let policy = Policy::new(limits).map_err(|e| err("limits", e.to_string()))?;
        let mut keys: Vec<ApiKey> = Vec::new();
        let mut ids: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let mut secrets: std::collections::HashMap<KeyHash, usize> =
            std::collections::HashMap::new();
        let identity_names = identity_headers(&s.identity_headers)?;
        for (i, k) in raw.keys.iter().enumerate() {
            let p = format!("keys[{i}]");
            let hash = match (&k.key, &k.hash) {
                (Some(clear), None) => KeyHash::of(clear),
                (None, Some(h)) => KeyHash::parse(h).ok_or_else(|| {
                    err(
                        format!("{p}.hash"),
                        "expected \"sha256:<64 hex digits>\" as printed by `weir hash-key`",
                    )
                })?,
                _ => return Err(err(
                    &p,
                    "set exactly one of key (clear text, for demos) or hash (from `weir hash-key`)",
                )),
            };
            if !ids.insert(k.id.as_str()) {
                return Err(err(
                    format!("{p}.id"),
                    format!("key id {:?} is used twice", k.id),
                ));
            }
            // One secret, two identities: which one a caller is would be ambiguous.
            if let Some(first) = secrets.insert(hash, i) {
                return Err(err(
                    &p,
                    format!("this key's secret is also keys[{first}]'s; every key needs its own"),
                ));
            }
            let expires = match &k.expires {
                None => None,
                Some(t) => Some(humantime::parse_rfc3339(t).map_err(|_| {
                    err(
                        format!("{p}.expires"),
                        format!("{t:?} is not an RFC 3339 time such as 2030-01-01T00:00:00Z"),
                    )
                })?),
            };
            keys.push(ApiKey {
                id: k.id.clone(),
                hash,
                user: k.user.clone(),
                organisation: k.organisation.clone(),
                plan: k.plan.clone(),
                scopes: k.scopes.clone(),
                expires,
                upstream_headers: ApiKey::identity_headers(
                    &identity_names,
                    &k.id,
                    &k.user,
                    &k.organisation,
                    &k.plan,
                ),
            });
        }
        Ok(Config {
            listen: addr("server.listen", &s.listen)?,
            admin_listen: addr("server.admin_listen", &s.admin_listen)?,
            trusted_proxies,
            ratelimit_fields: s.ratelimit_fields,
            dialect: default_dialect,
            shutdown_grace: duration("server.shutdown_grace", &s.shutdown_grace)?,
            error_type_base: s.error_type_base.clone(),
            workers: workers("server.workers", s.workers)?,
            connection_balance: BalanceMode::parse(&s.connection_balance).ok_or_else(|| {
                err(
                    "server.connection_balance",
                    format!(
                        "unknown value {:?}; use \"least-connections\" or \"none\"",
                        s.connection_balance
                    ),
                )
            })?,
            cpu_affinity: crate::affinity::CpuAffinity::parse(&s.cpu_affinity).ok_or_else(
                || {
                    err(
                        "server.cpu_affinity",
                        format!(
                            "unknown value {:?}; use \"auto\" or \"none\"",
                            s.cpu_affinity
                        ),
                    )
                },
            )?,
            max_connections: if s.max_connections == 0 {
                return Err(err(
                    "server.max_connections",
                    "0 would accept no connection; it must be at least 1",
                ));
            } else {
                s.max_connections
            },
            header_read_timeout: nonzero("server.header_read_timeout", &s.header_read_timeout)?,
            body_read_timeout: nonzero("server.body_read_timeout", &s.body_read_timeout)?,
            response_write_timeout: nonzero(
                "server.response_write_timeout",
                &s.response_write_timeout,
            )?,
            batch_response_writes: s.batch_response_writes,
            yield_before_sleep: s.yield_before_sleep,
            identity_headers: identity_names,
            store,
            idempotency,
            upstreams,
            routes,
            policy,
            keys,
        })
    }
}

fn toml_message(text: &str, message: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or_default();
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, str::len) + 1;
            format!("{} (line {line}, column {col})", message.trim())
        }
        None => message.trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10MiB"), Some(10 << 20));
        assert_eq!(parse_size("512KiB"), Some(512 << 10));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_size("1XB"), None);
    }

    #[test]
    fn errors_name_the_key_path() {
        let e = Config::parse("[server]\nlisten = 5\n").expect_err("type error");
        assert_eq!(e.path, "server.listen");
        let e = Config::parse("[server]\nlisen = \"x\"\n").expect_err("unknown key");
        assert!(e.message.contains("lisen"), "{e}");
        let e = Config::parse("[[routes]]\nname=\"a\"\nprefix=\"/a\"\nupstream=\"nope\"\n")
            .expect_err("unknown upstream");
        assert_eq!(e.path, "routes[0].upstream");
        let e =
            Config::parse("[server]\nshutdown_grace = \"9999999999999s\"\n").expect_err("too long");
        assert_eq!(e.path, "server.shutdown_grace");
        let two = "[[keys]]\nid = \"a\"\nkey = \"s\"\nuser = \"u\"\norganisation = \"o\"\nplan = \"p\"\n[[keys]]\nid = \"b\"\nkey = \"s\"\nuser = \"u\"\norganisation = \"o\"\nplan = \"p\"\n";
        let e = Config::parse(two).expect_err("one secret, two keys");
        assert_eq!(e.path, "keys[1]");
        assert!(e.message.contains("keys[0]"), "{e}");
        let e = Config::parse("[server]\nconnection_balance = \"random\"\n")
            .expect_err("unknown balance");
        assert_eq!(e.path, "server.connection_balance");
        assert!(e.message.contains("least-connections"), "{e}");
        assert!(Config::parse("").expect("defaults").batch_response_writes);
        assert!(
            !Config::parse("[server]\nbatch_response_writes = false\n")
                .expect("off")
                .batch_response_writes
        );
        let e =
            Config::parse("[server]\nbatch_response_writes = \"yes\"\n").expect_err("not a bool");
        assert_eq!(e.path, "server.batch_response_writes");
        assert!(Config::parse("").expect("defaults").yield_before_sleep);
        assert!(
            !Config::parse("[server]\nyield_before_sleep = false\n")
                .expect("off")
                .yield_before_sleep
        );
        let e = Config::parse("[server]\nyield_before_sleep = 1\n").expect_err("not a bool");
        assert_eq!(e.path, "server.yield_before_sleep");
        let e = Config::parse("[server]\ncpu_affinity = \"all\"\n").expect_err("unknown affinity");
        assert_eq!(e.path, "server.cpu_affinity");
        assert!(e.to_string().contains("\"auto\" or \"none\""), "{e}");
        assert_eq!(
            Config::parse("").expect("defaults").cpu_affinity,
            crate::affinity::CpuAffinity::None
        );
        assert_eq!(
            Config::parse("[server]\ncpu_affinity = \"auto\"\n")
                .expect("auto")
                .cpu_affinity,
            crate::affinity::CpuAffinity::Auto
        );
        let ok = Config::parse("[server]\nconnection_balance = \"none\"\n").expect("none");
        assert_eq!(ok.connection_balance, BalanceMode::None);
        assert_eq!(
            Config::parse("").expect("defaults").connection_balance,
            BalanceMode::LeastConnections
        );
        let e = Config::parse("[server]\nworkers = 100000\n").expect_err("too many workers");
        assert_eq!(e.path, "server.workers");
        assert!(e.message.contains("1024"), "{e}");
        let e = Config::parse("[server]\nmax_connections = 0\n").expect_err("no connections");
        assert_eq!(e.path, "server.max_connections");
        assert_eq!(
            Config::parse("").map(|c| c.max_connections).ok(),
            Some(10_000)
        );
        let e = Config::parse("[server]\nworkers = -1\n").expect_err("negative workers");
        assert_eq!(e.path, "server.workers");
        assert_eq!(
            Config::parse("[server]\nworkers = 3\n")
                .map(|c| c.workers)
                .ok(),
            Some(3)
        );
        assert_eq!(Config::parse("").map(|c| c.workers).ok(), Some(0));
        let e = Config::parse("[server]\nheader_read_timeout = \"0s\"\n").expect_err("zero");
        assert_eq!(e.path, "server.header_read_timeout");
        let e = Config::parse("[server]\nbody_read_timeout = \"0ms\"\n").expect_err("zero");
        assert_eq!(e.path, "server.body_read_timeout");
        for (toml, path) in [
            (
                "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"\ndeadline = \"0s\"\n",
                "store.deadline",
            ),
            ("[idempotency]\nttl = \"0s\"\n", "idempotency.ttl"),
            ("[idempotency]\nlock_timeout = \"0s\"\n", "idempotency.lock_timeout"),
            ("[upstreams.u]\nurl = \"http://127.0.0.1:1\"\ntimeout = \"0s\"\n", "upstreams.u.timeout"),
            (
                "[upstreams.u]\nurl = \"http://127.0.0.1:1\"\n[upstreams.u.breaker]\nwindow = \"0s\"\n",
                "upstreams.u.breaker.window",
            ),
            (
                "[upstreams.u]\nurl = \"http://127.0.0.1:1\"\n[upstreams.u.breaker]\nopen_for = \"0s\"\n",
                "upstreams.u.breaker.open_for",
            ),
        ] {
            let e = Config::parse(toml).expect_err(path);
            assert_eq!(e.path, path, "{e}");
            assert!(e.message.contains("would time out"), "{e}");
        }
        assert_eq!(
            Config::parse("").map(|c| c.header_read_timeout).ok(),
            Some(std::time::Duration::from_secs(30))
        );
        let e = Config::parse("[store]\nkind = \"disk\"\n").expect_err("bad kind");
        assert_eq!(e.path, "store.kind");
        let e = Config::parse("[[limits]]\nname = \"x\"\ncount = 5\nwindow = \"forever\"\n")
            .expect_err("bad window");
        assert_eq!(e.path, "limits[0].window");
    }

    /// The rows of the tables in `docs/configuration.md` under the heading that contains
    /// `heading`: (the first cell's names in backticks, the default cell).
    fn doc_rows(heading: &str) -> Vec<(Vec<String>, String)> {
        let docs = include_str!("../../../docs/configuration.md");
        let start = docs
            .find(&format!("## `{heading}`"))
            .unwrap_or_else(|| panic!("docs/configuration.md has no section for {heading}"));
        let section = &docs[start..];
        let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
        section[..end]
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').collect();
                let names = cells[1]
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(String::from)
                    .collect();
                (names, cells[2].trim().to_string())
            })
            .collect()
    }

    /// The keys the parser accepts in a table, read off the error an unknown key gets.
    fn accepted_keys(toml_with_unknown_key: &str) -> Vec<String> {
        let e = Config::parse(toml_with_unknown_key).expect_err("unknown key");
        let expected = e
            .message
            .split("expected")
            .nth(1)
            .unwrap_or_else(|| panic!("{e}"));
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(String::from)
            .collect()
    }

    /// `docs/configuration.md` documents every key with its default (the brief's promise):
    /// every key the parser accepts has a row, every row names a key the parser accepts,
    /// and every default written as a TOML value is what the parser assumes when the key
    /// is left out.
    #[test]
    fn the_configuration_docs_document_every_key_and_its_default() {
        let docs = include_str!("../../../docs/configuration.md");
        let upstream = "[upstreams.u]\nurl = \"http://127.0.0.1:1\"\n";
        let route =
            format!("{upstream}[[routes]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"u\"\n");
        let key =
            "[[keys]]\nid = \"k\"\nkey = \"s\"\nuser = \"u\"\norganisation = \"o\"\nplan = \"p\"\n";
        // (docs heading, a valid document that ends inside the table, the rows' prefix)
        let tables = [
            ("[server]", "[server]\n".to_string(), ""),
            (
                "[server.identity_headers]",
                "[server.identity_headers]\n".to_string(),
                "",
            ),
            ("[store]", "[store]\n".to_string(), ""),
            ("[idempotency]", "[idempotency]\n".to_string(), ""),
            ("[upstreams.<name>]", upstream.to_string(), ""),
            (
                "[upstreams.<name>]",
                format!("{upstream}[upstreams.u.breaker]\n"),
                "breaker.",
            ),
            ("[[routes]]", route, ""),
            (
                "[[limits]]",
                "[[limits]]\nname = \"l\"\ncount = 5\n".to_string(),
                "",
            ),
            ("[[keys]]", key.to_string(), ""),
        ];
        for (heading, doc, prefix) in tables {
            let rows: Vec<_> = doc_rows(heading)
                .into_iter()
                .filter(|(names, _)| names.iter().all(|n| n.starts_with(prefix)))
                .filter(|(names, _)| !prefix.is_empty() || !names.iter().any(|n| n.contains('.')))
                .map(|(names, default)| {
                    let keys = names
                        .iter()
                        .map(|n| n[prefix.len()..].to_string())
                        .collect();
                    (keys, default)
                })
                .collect::<Vec<(Vec<String>, String)>>();
            let accepted = accepted_keys(&format!("{doc}zzz_not_a_key = 1\n"));
            for k in &accepted {
                // A sub-table is documented under its own heading or as prefixed rows.
                let sub_table = docs.contains(&format!("{}.{k}]`", heading.trim_end_matches(']')))
                    || docs.contains(&format!("| `{k}."));
                assert!(
                    sub_table || rows.iter().any(|(keys, _)| keys.contains(k)),
                    "docs/configuration.md, {heading}: no row for `{prefix}{k}`"
                );
            }
            let without = Config::parse(&doc).expect("the base document parses");
            for (keys, default) in &rows {
                for k in keys {
                    assert!(
                        accepted.contains(k),
                        "docs/configuration.md, {heading}: `{prefix}{k}` is not a key weir reads"
                    );
                }
                // Defaults written as prose ("— (required)", "server.dialect") are not checked.
                let Some(value) = default.strip_prefix('`').and_then(|d| d.strip_suffix('`'))
                else {
                    continue;
                };
                if value.contains('`') || format!("v = {value}").parse::<toml::Table>().is_err() {
                    continue;
                }
                for k in keys {
                    let with = Config::parse(&format!("{doc}{k} = {value}\n"))
                        .unwrap_or_else(|e| panic!("{heading} {prefix}{k} = {value}: {e}"));
                    assert_eq!(
                        format!("{with:?}"),
                        format!("{without:?}"),
                        "docs/configuration.md, {heading}: `{prefix}{k}` does not default to {value}"
                    );
                }
            }
        }
        for table in accepted_keys("zzz_not_a_key = 1\n") {
            assert!(
                docs.contains(&format!("## `[{table}"))
                    || docs.contains(&format!("## `[[{table}]]`")),
                "docs/configuration.md has no section for [{table}]"
            );
        }
    }
}
