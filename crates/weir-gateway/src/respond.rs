//! One path to the client: every error the gateway produces becomes a [`Refusal`], and
//! every refusal is rendered the same way — the route's dialect (or problem+json when the
//! client asks for it), the request id in the body, and the headers the contract requires
//! (`WWW-Authenticate` on 401, `Allow` on 405, `Retry-After` on 429/503, `Cache-Control:
//! no-store` on 429).

use axum::body::Body;
use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use weir_contract::catalogue;
use weir_contract::headers::ratelimit::{self, QuotedName};
use weir_contract::{ApiError, Dialect};
use weir_limit::{Decision, Policy};

/// The error code of a response weir rendered, as a response extension (read by the
/// gateway for its metrics and access log; never sent on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

/// A request the gateway answers itself.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Status.
    pub status: StatusCode,
    /// Catalogue code.
    pub code: &'static str,
    /// Message (defaults to the catalogue's).
    pub message: Option<String>,
    /// Hint.
    pub hint: Option<String>,
    /// `Retry-After` seconds.
    pub retry_after: Option<u64>,
    /// `Allow` for 405.
    pub allow: Option<String>,
    /// Names of the limits that refused (problem+json `violated-policies`, as the
    /// RateLimit draft's `quota-exceeded` problem type defines).
    pub violated: Vec<String>,
}

impl Refusal {
    /// A refusal with the catalogue's status and message for `code`.
    pub fn code(code: &'static str) -> Refusal {
        let status = catalogue::code(code)
            .and_then(|c| StatusCode::from_u16(c.status).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Refusal {
            status,
            code,
            message: None,
            hint: None,
            retry_after: None,
            allow: None,
            violated: Vec::new(),
        }
    }

    /// Sets the message.
    pub fn message(mut self, m: impl Into<String>) -> Refusal {
        self.message = Some(m.into());
        self
    }

    /// Sets the hint.
    pub fn hint(mut self, h: impl Into<String>) -> Refusal {
        self.hint = Some(h.into());
        self
    }

    /// Sets Retry-After.
    pub fn retry_after(mut self, secs: u64) -> Refusal {
        self.retry_after = Some(secs);
        self
    }

    /// Overrides the status.
    pub fn status(mut self, s: StatusCode) -> Refusal {
        self.status = s;
        self
    }
}

/// Renders a refusal.
pub fn render(
    refusal: &Refusal,
    dialect: Dialect,
    request_id: &str,
    type_base: &str,
) -> Response<Body> {
    let info = catalogue::code(refusal.code);
    let mut err = ApiError::new(
        refusal.status.as_u16(),
        refusal.code,
        refusal
            .message
            .clone()
            .unwrap_or_else(|| info.map_or("", |i| i.message).to_owned()),
    )
    .with_request_id(request_id);
    err.hint = refusal.hint.clone();
    err.retryable = info.map(|i| i.retryable);
    if dialect == Dialect::Error {
        err.date =
            Some(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string());
        err.code = Some(refusal.code.to_owned());
    }
    if dialect == Dialect::Problem {
        err.problem.type_uri = Some(if refusal.violated.is_empty() {
            format!(
                "{type_base}{}",
                refusal.code.to_ascii_lowercase().replace('_', "-")
            )
        } else {
            // The RateLimit draft's problem type, with the limits that refused.
            err.extra.insert(
                "violated-policies".to_owned(),
                serde_json::Value::from(refusal.violated.clone()),
            );
            "https://iana.org/assignments/http-problem-types#quota-exceeded".to_owned()
        });
        err.problem.title = catalogue::status(refusal.status.as_u16()).map(|s| s.reason.to_owned());
        err.problem.instance = Some(format!("urn:uuid:{request_id}"));
    }
    let body = dialect.render_string(&err);
    let mut resp = Response::new(Body::from(body));
    resp.extensions_mut().insert(ErrorCode(refusal.code));
    *resp.status_mut() = refusal.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(dialect.content_type()),
    );
    if refusal.status == StatusCode::UNAUTHORIZED {
        let challenge = format!(
            "Bearer realm=\"weir\", error=\"invalid_token\", error_description=\"{}\"",
            refusal.code
        );
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            h.insert(header::WWW_AUTHENTICATE, v);
        }
    }
    if let Some(allow) = refusal
        .allow
        .as_deref()
        .and_then(|a| HeaderValue::from_str(a).ok())
    {
        h.insert(header::ALLOW, allow);
    }
    if let Some(secs) = refusal.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if refusal.status == StatusCode::TOO_MANY_REQUESTS {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// The refusal for a rate-limited decision.
pub fn rate_limited(decision: &Decision, policy: &Policy) -> Refusal {
    let secs = decision.retry_after_secs().max(1);
    let name = decision
        .limiting_status()
        .and_then(|s| policy.limits.get(s.index))
        .map_or("a rate limit", |l| l.name.as_str());
    let at = std::time::SystemTime::now() + std::time::Duration::from_secs(secs);
    let violated = decision
        .limits
        .iter()
        .filter(|s| !matches!(s.verdict, weir_limit::LimitVerdict::Ok))
        .filter_map(|s| policy.limits.get(s.index).map(|l| l.name.clone()))
        .collect();
    let mut refusal = Refusal::code("SERVICE_RATE_LIMITED")
        .message(format!("Rate limit exceeded ({name})."))
        .hint(format!(
            "Retry after {secs} s (at {}); X-RateLimit-Reset gives when the quota is whole again.",
            humantime::format_rfc3339_seconds(at)
        ))
        .retry_after(secs);
    refusal.violated = violated;
    refusal
}

/// Response header names, built once.
pub mod names {
    use http::HeaderName;
    /// `X-RateLimit-Limit`.
    pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
    /// `X-RateLimit-Remaining`.
    pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
    /// `X-RateLimit-Reset`.
    pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
    /// `RateLimit-Policy`.
    pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
    /// `RateLimit`.
    pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
    /// `X-Request-Id`.
    pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    /// `traceparent`.
    pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    /// `tracestate`.
    pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
    /// `X-Forwarded-For`.
    pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    /// `X-Forwarded-Proto`.
    pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    /// `X-API-Key`.
    pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
    /// `Idempotency-Key`.
    pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
}

/// Every limit's name quoted for the IETF fields, once per policy (not per response).
#[derive(Debug, Clone)]
pub struct FieldNames {
    /// By limit index; `None` for a name RFC 9651 cannot carry (its fields are skipped).
    names: Vec<Option<QuotedName>>,
    concurrent: Option<QuotedName>,
    /// Distinct for every set of names built (clones share it), so a value remembered
    /// from one policy is never taken for another's.
    generation: u64,
}

static NAMES_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl FieldNames {
    /// The names of `policy`'s limits.
    pub fn of(policy: &Policy) -> FieldNames {
        FieldNames {
            names: policy
                .limits
                .iter()
                .map(|l| QuotedName::new(&l.name).ok())
                .collect(),
            concurrent: QuotedName::new("concurrent-requests").ok(),
            generation: NAMES_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// Adds the rate-limit headers of `decision` to a response: the `X-RateLimit-*` trio for
/// the most restrictive limit and, when `ietf` is on, `RateLimit` and `RateLimit-Policy`
/// for every limit checked (written by `limit_fields`); each replaces a field of the same
/// name.
pub fn apply_limit_headers(h: &mut HeaderMap, decision: &Decision, names: &FieldNames, ietf: bool) {
    limit_fields(decision, names, ietf, |name, value| {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            h.insert(name.clone(), v);
        }
    });
}

/// Whether [`limit_fields`] hands over a field called `name` for `decision`.
pub(crate) fn has_limit_field(name: &str, decision: &Decision, ietf: bool) -> bool {
    match name {
        "x-ratelimit-limit" | "x-ratelimit-remaining" | "x-ratelimit-reset" => {
            decision.limiting_status().is_some()
        }
        "ratelimit" | "ratelimit-policy" => ietf && !decision.limits.is_empty(),
        _ => false,
    }
}

/// Hands the rate-limit fields of `decision` to `put`, in order: the `X-RateLimit-*` trio
/// for the most restrictive limit and, when `ietf` is on, `RateLimit-Policy` and
/// `RateLimit` for every limit checked. One function for both destinations (a field map,
/// or a response head written directly by the HTTP/1.1 server), so they cannot differ.
/// Values are written without a serialiser into per-thread scratch space: this runs on
/// every response.
pub(crate) fn limit_fields(
    decision: &Decision,
    names: &FieldNames,
    ietf: bool,
    mut put: impl FnMut(&HeaderName, &[u8]),
) {
    if let Some(s) = decision.limiting_status() {
        let mut n = itoa::Buffer::new();
        put(&names::X_RATELIMIT_LIMIT, n.format(s.limit).as_bytes());
        put(
            &names::X_RATELIMIT_REMAINING,
            n.format(s.remaining).as_bytes(),
        );
        let reset = decision.reset_unix(s);
        put(&names::X_RATELIMIT_RESET, n.format(reset).as_bytes());
    }
    if !ietf || decision.limits.is_empty() {
        return;
    }
    MEMO.with_borrow_mut(|memo| {
        // The policy is usually the one the previous response of this thread sent (same
        // names, same limits and windows): it is then not written again.
        let Memo {
            policies,
            items,
            policy_key,
        } = memo;
        let key = PolicyKey::of(decision, names);
        if policy_key.as_ref() != Some(&key) {
            policies.clear();
            write_policies(policies, decision, names);
            *policy_key = Some(key);
        }
        items.clear();
        write_items(items, decision, names);
        put(&names::RATELIMIT_POLICY, policies.as_bytes());
        put(&names::RATELIMIT, items.as_bytes());
    });
}

/// Per-thread scratch space: the last `RateLimit-Policy` value and what it was written
/// from, and the `RateLimit` value being written.
#[derive(Default)]
struct Memo {
    policies: String,
    items: String,
    policy_key: Option<PolicyKey>,
}

thread_local! {
    static MEMO: std::cell::RefCell<Memo> = std::cell::RefCell::new(Memo::default());
}

/// What a `RateLimit-Policy` value is written from: the names' generation and, per limit
/// checked, its index, size and window (`u64::MAX` for a concurrency limit).
#[derive(PartialEq, Eq)]
struct PolicyKey(u64, smallvec::SmallVec<[(usize, u64, u64); 4]>);

impl PolicyKey {
    fn of(decision: &Decision, names: &FieldNames) -> PolicyKey {
        PolicyKey(
            names.generation,
            decision
                .limits
                .iter()
                .map(|s| {
                    let window = if s.is_concurrency() {
                        u64::MAX
                    } else {
                        s.window_secs
                    };
                    (s.index, s.limit, window)
                })
                .collect(),
        )
    }
}

/// The `RateLimit-Policy` field value of `decision`.
fn write_policies(policies: &mut String, decision: &Decision, names: &FieldNames) {
    for s in &decision.limits {
        let Some(Some(name)) = names.names.get(s.index) else {
            continue;
        };
        if s.is_concurrency() {
            ratelimit::write_policy_item(policies, name, s.limit, names.concurrent.as_ref(), None);
        } else {
            ratelimit::write_policy_item(policies, name, s.limit, None, Some(s.window_secs));
        }
    }
}

/// The `RateLimit` field value of `decision`.
fn write_items(items: &mut String, decision: &Decision, names: &FieldNames) {
    for s in &decision.limits {
        let Some(Some(name)) = names.names.get(s.index) else {
            continue;
        };
        if s.is_concurrency() {
            ratelimit::write_limit_item(items, name, s.remaining, None);
        } else {
            let reset = weir_limit::clock::ceil_secs(s.reset_after_ns);
            ratelimit::write_limit_item(items, name, s.remaining, Some(reset));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_limit::{LimitStatus, LimitVerdict, Outcome};

    /// A decision over `(limit index, window s, limit, remaining)`, the first limiting.
    fn decision(now_s: u64, limits: &[(usize, u64, u64, u64)]) -> Decision {
        Decision {
            outcome: Outcome::Admitted,
            retry_after: std::time::Duration::ZERO,
            now: now_s * 1_000_000_000,
            limits: limits
                .iter()
                .map(|&(index, window_secs, limit, remaining)| LimitStatus {
                    index,
                    window_secs,
                    limit,
                    remaining,
                    reset_after_ns: window_secs * 1_000_000_000,
                    verdict: LimitVerdict::Ok,
                })
                .collect(),
            limiting: Some(0),
            permit: None,
            degraded: false,
        }
    }

    #[test]
    fn values_kept_from_earlier_responses_never_go_stale() {
        let names = FieldNames {
            names: vec![QuotedName::new("a").ok(), QuotedName::new("b").ok()],
            concurrent: QuotedName::new("concurrent-requests").ok(),
            generation: u64::MAX,
        };
        // Other names for the same limits: a policy remembered for one set of names is
        // never sent for another.
        let renamed = FieldNames {
            names: vec![QuotedName::new("c").ok(), QuotedName::new("d").ok()],
            concurrent: QuotedName::new("concurrent-requests").ok(),
            generation: u64::MAX - 1,
        };
        let one = decision(100, &[(0, 60, 10, 9)]);
        let two = decision(100, &[(0, 60, 10, 8), (1, 10, 5, 4)]);
        let bigger = decision(101, &[(0, 60, 20, 3)]);
        let later = decision(102, &[(0, 60, 20, 2)]);
        let cases = [
            (&one, &names),
            (&two, &names),
            (&one, &names),
            (&one, &renamed),
            (&bigger, &names),
            (&bigger, &names),
            (&later, &renamed),
            (&later, &names),
            (&one, &names),
        ];
        for (d, names) in cases {
            let mut h = HeaderMap::new();
            apply_limit_headers(&mut h, d, names, true);
            let (mut policies, mut items) = (String::new(), String::new());
            write_policies(&mut policies, d, names);
            write_items(&mut items, d, names);
            let s = &d.limits[0];
            assert_eq!(h["ratelimit-policy"], policies.as_str());
            assert_eq!(h["ratelimit"], items.as_str());
            assert_eq!(h["x-ratelimit-limit"], s.limit.to_string().as_str());
            assert_eq!(h["x-ratelimit-remaining"], s.remaining.to_string().as_str());
            assert_eq!(
                h["x-ratelimit-reset"],
                (d.now / 1_000_000_000 + s.window_secs).to_string().as_str()
            );
        }
    }
}
