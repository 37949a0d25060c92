//! Retry classification: status + headers + parsed body → what a client should do.
//!
//! The rules, in order:
//! 1. A body that carries an explicit `retryable` flag (the MCP envelope, or the extension
//!    member in other dialects) wins over the status: the server knows best. Except on
//!    401: `retryable: false` there means "not with these credentials", and refreshing
//!    them is exactly the remedy, so 401 always means refresh-then-retry-once.
//! 2. 2xx/3xx are not errors.
//! 3. 401: refresh credentials, then retry once.
//! 4. 403 with `Retry-After`, `X-RateLimit-Remaining: 0` or an exhausted `RateLimit` item is
//!    a rate limit in disguise (GitHub's secondary limits) and is retried after the wait.
//! 5. 429, 500, 502, 503, 504 and 509 are transient: retry after a delay.
//! 6. Every other status (404, 402, 507, other 4xx, 501, unknown 5xx) is not retried.
//! 7. With no status (an MCP tool error over a non-HTTP transport) the code catalogue decides.
//!
//! The wait the server advertises comes from, in order of precedence: `Retry-After` (the
//! RateLimit draft §7 says it MUST take precedence), then `X-RateLimit-Reset` when
//! `X-RateLimit-Remaining` is 0, then the largest `t` of an exhausted `RateLimit` item.
//! A `None` wait means "use your own backoff".

use crate::catalogue::{self, RetryClass};
use crate::error::ApiError;
use crate::headers::{ratelimit, HeaderLookup, RetryAfter, XRateLimit};
use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What to do about a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Transient: retry, after `Decision::retry_after` when the server gave one.
    Retry,
    /// Credentials were rejected: refresh them and retry exactly once.
    RefreshAuthThenRetryOnce,
    /// Retrying the same request will not help.
    DoNotRetry,
}

impl Action {
    /// The wire name used by `weir explain --json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::RefreshAuthThenRetryOnce => "refresh_auth_then_retry_once",
            Action::DoNotRetry => "do_not_retry",
        }
    }
}

/// Where an advertised wait came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitSource {
    /// The `Retry-After` header.
    RetryAfter,
    /// `X-RateLimit-Reset` with `X-RateLimit-Remaining: 0`.
    XRateLimitReset,
    /// The `t` parameter of an exhausted IETF `RateLimit` item.
    RateLimitField,
}

impl WaitSource {
    fn describe(self) -> &'static str {
        match self {
            WaitSource::RetryAfter => "Retry-After",
            WaitSource::XRateLimitReset => "X-RateLimit-Reset (remaining is 0)",
            WaitSource::RateLimitField => "the RateLimit field (r=0)",
        }
    }
}

/// The classifier's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What to do.
    pub action: Action,
    /// The wait the server advertised, when it did (and the action is a retry).
    pub retry_after: Option<Duration>,
    /// Where that wait came from.
    pub wait_source: Option<WaitSource>,
    /// Why, in one human-readable sentence.
    pub reason: Cow<'static, str>,
}

impl Decision {
    fn new(action: Action, reason: impl Into<Cow<'static, str>>) -> Decision {
        Decision {
            action,
            retry_after: None,
            wait_source: None,
            reason: reason.into(),
        }
    }

    fn retry(wait: Option<(Duration, WaitSource)>, reason: String) -> Decision {
        let reason = match wait {
            Some((d, source)) => format!(
                "{reason}; wait {} s as {} says",
                ceil_secs(d),
                source.describe()
            ),
            None => format!("{reason}; no wait advertised, back off exponentially with jitter"),
        };
        Decision {
            action: Action::Retry,
            retry_after: wait.map(|w| w.0),
            wait_source: wait.map(|w| w.1),
            reason: reason.into(),
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    crate::headers::retry_after::delay_seconds_ceil(d)
}

fn unix(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The wait the server advertised, by the precedence in the module docs.
pub fn advertised_wait(
    headers: &(impl HeaderLookup + ?Sized),
    now: SystemTime,
) -> Option<(Duration, WaitSource)> {
    if let Some(ra) = RetryAfter::from_headers(headers) {
        return Some((ra.delay_from(now), WaitSource::RetryAfter));
    }
    let now_unix = unix(now);
    if let Some(x) = XRateLimit::from_headers(headers, now_unix) {
        if let (true, Some(reset)) = (x.exhausted(), x.reset) {
            return Some((
                Duration::from_secs(reset.seconds_from(now_unix)),
                WaitSource::XRateLimitReset,
            ));
        }
    }
    if let Some(limits) = headers
        .joined(ratelimit::RATELIMIT)
        .and_then(|v| ratelimit::parse_limits(&v))
    {
        let wait = limits
            .iter()
            .filter(|l| l.remaining == 0)
            .filter_map(|l| l.reset)
            .max();
        if let Some(t) = wait {
            return Some((Duration::from_secs(t), WaitSource::RateLimitField));
        }
    }
    None
}

/// Whether the headers say a rate limit is exhausted (used to spot 403-as-rate-limit).
fn rate_limit_signalled(headers: &(impl HeaderLookup + ?Sized), now: SystemTime) -> bool {
    headers
        .first_value(RetryAfter::NAME)
        .is_some_and(|v| RetryAfter::parse(v).is_some())
        || XRateLimit::from_headers(headers, unix(now)).is_some_and(|x| x.exhausted())
        || headers
            .joined(ratelimit::RATELIMIT)
            .and_then(|v| ratelimit::parse_limits(&v))
            .is_some_and(|l| l.iter().any(|i| i.remaining == 0))
}

fn status_name(status: u16) -> String {
    match catalogue::status(status) {
        Some(info) => format!("{status} {}", info.reason),
        None => status.to_string(),
    }
}

/// Classifies a response. `error` is the parsed body, when there was one.
pub fn classify(
    status: Option<u16>,
    headers: &(impl HeaderLookup + ?Sized),
    error: Option<&ApiError>,
    now: SystemTime,
) -> Decision {
    if let Some(flag) = error
        .and_then(|e| e.retryable)
        .filter(|_| status != Some(401))
    {
        return if flag {
            Decision::retry(
                advertised_wait(headers, now),
                "the body says retryable: true, which wins over the status".to_owned(),
            )
        } else {
            Decision::new(
                Action::DoNotRetry,
                "the body says retryable: false: retrying with the same arguments will fail again",
            )
        };
    }
    let Some(status) = status else {
        let code = error.and_then(|e| e.deepest_code());
        return match code.and_then(catalogue::code) {
            Some(info) if info.retryable => Decision::retry(
                advertised_wait(headers, now),
                format!("no status; code {} is transient", info.code),
            ),
            Some(info) => Decision::new(
                Action::DoNotRetry,
                format!("no status; code {} is not transient", info.code),
            ),
            None => Decision::new(
                Action::DoNotRetry,
                "no status and no known code: not known to be transient",
            ),
        };
    };
    match catalogue::status_retry_class(status) {
        RetryClass::NotAnError => Decision::new(Action::DoNotRetry, "not an error: nothing to retry"),
        RetryClass::RefreshAuth => Decision::new(
            Action::RefreshAuthThenRetryOnce,
            "401 Unauthorized: the credentials were rejected; refresh them and retry once, then check the key or token",
        ),
        RetryClass::AfterDelay => Decision::retry(
            advertised_wait(headers, now),
            format!("{} is transient", status_name(status)),
        ),
        _ if status == 403 && rate_limit_signalled(headers, now) => Decision::retry(
            advertised_wait(headers, now),
            "403 Forbidden with a rate-limit signal is a rate limit (as GitHub's secondary limits send)".to_owned(),
        ),
        _ if status == 404 => Decision::new(
            Action::DoNotRetry,
            "404 Not Found: the resource does not exist or is not visible to these credentials; do not retry",
        ),
        _ => Decision::new(
            Action::DoNotRetry,
            format!("{} is not transient: fix the request instead of retrying", status_name(status)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_HEADERS: [(&str, &str); 0] = [];

    fn at(unix: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix)
    }

    #[test]
    fn status_table() {
        for s in [408, 429, 500, 502, 503, 504, 509] {
            assert_eq!(
                classify(Some(s), &NO_HEADERS[..], None, at(0)).action,
                Action::Retry,
                "{s}"
            );
        }
        for s in [400, 402, 403, 404, 405, 409, 410, 422, 501, 507, 418, 599] {
            assert_eq!(
                classify(Some(s), &NO_HEADERS[..], None, at(0)).action,
                Action::DoNotRetry,
                "{s}"
            );
        }
        assert_eq!(
            classify(Some(401), &NO_HEADERS[..], None, at(0)).action,
            Action::RefreshAuthThenRetryOnce
        );
    }

    #[test]
    fn retry_after_wins_over_rate_limit_fields() {
        let h = [
            ("Retry-After", "7"),
            ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset", "1000000100"),
            ("RateLimit", r#""a";r=0;t=30"#),
        ];
        let d = classify(Some(429), &h[..], None, at(1_000_000_000));
        assert_eq!(d.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(d.wait_source, Some(WaitSource::RetryAfter));
        let d = classify(Some(429), &h[1..], None, at(1_000_000_000));
        assert_eq!(d.retry_after, Some(Duration::from_secs(100)));
        let d = classify(Some(429), &h[3..], None, at(1_000_000_000));
        assert_eq!(d.retry_after, Some(Duration::from_secs(30)));
    }

    #[test]
    fn forbidden_with_rate_limit_signal_is_retried() {
        let h = [
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1000000060"),
        ];
        let d = classify(Some(403), &h[..], None, at(1_000_000_000));
        assert_eq!(
            (d.action, d.retry_after),
            (Action::Retry, Some(Duration::from_secs(60)))
        );
        let d = classify(Some(403), &[("Retry-After", "30")][..], None, at(0));
        assert_eq!(
            (d.action, d.retry_after),
            (Action::Retry, Some(Duration::from_secs(30)))
        );
        let d = classify(
            Some(403),
            &[("x-ratelimit-remaining", "12")][..],
            None,
            at(0),
        );
        assert_eq!(d.action, Action::DoNotRetry);
    }

    #[test]
    fn retryable_flag_wins_over_status() {
        let e = ApiError {
            retryable: Some(false),
            ..ApiError::default()
        };
        assert_eq!(
            classify(Some(503), &NO_HEADERS[..], Some(&e), at(0)).action,
            Action::DoNotRetry
        );
        let e = ApiError {
            retryable: Some(true),
            ..ApiError::default()
        };
        assert_eq!(
            classify(Some(400), &NO_HEADERS[..], Some(&e), at(0)).action,
            Action::Retry
        );
    }

    #[test]
    fn unauthorized_refreshes_even_when_the_body_says_not_retryable() {
        let e = ApiError {
            retryable: Some(false),
            ..ApiError::default()
        };
        assert_eq!(
            classify(Some(401), &NO_HEADERS[..], Some(&e), at(0)).action,
            Action::RefreshAuthThenRetryOnce
        );
    }

    #[test]
    fn no_status_uses_code_catalogue() {
        let e = ApiError {
            code: Some("SERVICE_RATE_LIMITED".into()),
            ..ApiError::default()
        };
        assert_eq!(
            classify(None, &NO_HEADERS[..], Some(&e), at(0)).action,
            Action::Retry
        );
        let e = ApiError {
            code: Some("TOOL_NOT_FOUND".into()),
            ..ApiError::default()
        };
        assert_eq!(
            classify(None, &NO_HEADERS[..], Some(&e), at(0)).action,
            Action::DoNotRetry
        );
    }

    #[test]
    fn past_retry_after_date_means_now() {
        let h = [("Retry-After", "Fri, 31 Dec 1999 23:59:59 GMT")];
        let d = classify(Some(503), &h[..], None, at(2_000_000_000));
        assert_eq!(d.retry_after, Some(Duration::ZERO));
    }
}
