//! One answer to "what does this error response mean and what should I do?": the data
//! behind `weir explain`, computed here so the client and the CLI give the same answer.

use crate::classify::{classify, Decision};
use crate::dialect::{parse_response, Parsed, Unrecognised};
use crate::headers::{ratelimit, request_id, HeaderLookup, XRateLimit};
use serde::Serialize;
use std::time::{SystemTime, UNIX_EPOCH};

/// The rate-limit state a response advertised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateLimitSummary {
    /// Requests allowed in the window.
    pub limit: Option<u64>,
    /// Requests left.
    pub remaining: Option<u64>,
    /// When the window resets, Unix seconds.
    pub reset_unix: Option<u64>,
}

/// Everything `weir explain --json` prints, with exactly its keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// `detail`, `error`, `mcp`, `problem` or `unrecognised`.
    pub dialect: &'static str,
    /// The HTTP status (given, or from a problem body's `status`).
    pub status: Option<u16>,
    /// The outermost code.
    pub code: Option<String>,
    /// The deepest code the caller understands.
    pub most_specific_code: Option<String>,
    /// The message.
    pub message: Option<String>,
    /// The hint.
    pub hint: Option<String>,
    /// `retry`, `refresh_auth_then_retry_once` or `do_not_retry`.
    pub action: &'static str,
    /// The advertised wait in whole seconds (rounded up), when retrying.
    pub retry_after_s: Option<u64>,
    /// The server's request id (body first, then headers).
    pub request_id: Option<String>,
    /// The advertised rate-limit state.
    pub rate_limit: Option<RateLimitSummary>,
    /// Why the action was chosen (and, for unrecognised bodies, what was seen).
    pub reason: String,
}

/// Explains a response. `understands` decides which codes count for `most_specific_code`
/// (by default every code does, so it is the deepest code of the chain).
pub fn explain(
    status: Option<u16>,
    headers: &(impl HeaderLookup + ?Sized),
    body: &[u8],
    now: SystemTime,
    understands: &dyn Fn(&str) -> bool,
) -> Explanation {
    let content_type = headers.first_value("content-type");
    let parsed: Result<Parsed, Unrecognised> = parse_response(status, content_type, body);
    let (dialect, error, unrecognised) = match &parsed {
        Ok(p) => (p.dialect.name(), Some(&p.error), None),
        Err(u) => ("unrecognised", None, Some(u)),
    };
    let status = status.or_else(|| error.and_then(|e| e.status));
    let decision: Decision = classify(status, headers, error, now);
    let mut reason = decision.reason.into_owned();
    if let Some(u) = unrecognised {
        if u.len > 0 {
            reason = format!(
                "{reason} (body: {}, {} bytes: {:?})",
                u.reason.describe(),
                u.len,
                u.snippet
            );
        }
    }
    let request_id = error
        .and_then(|e| e.request_id.clone())
        .or_else(|| request_id::from_headers(headers).map(str::to_owned));
    Explanation {
        dialect,
        status,
        code: error.and_then(|e| e.code.clone()),
        most_specific_code: error
            .and_then(|e| e.most_specific_code(understands))
            .map(str::to_owned),
        message: error.and_then(|e| e.message.clone()),
        hint: error.and_then(|e| e.hint.clone()),
        action: decision.action.as_str(),
        retry_after_s: decision
            .retry_after
            .map(crate::headers::retry_after::delay_seconds_ceil),
        request_id,
        rate_limit: rate_limit_summary(headers, now),
        reason,
    }
}

/// The advertised rate-limit state: the `X-RateLimit-*` trio, else the IETF fields (the
/// item with the least remaining, with its policy's quota), else the draft-07 dictionary.
pub fn rate_limit_summary(
    headers: &(impl HeaderLookup + ?Sized),
    now: SystemTime,
) -> Option<RateLimitSummary> {
    let now_unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if let Some(x) = XRateLimit::from_headers(headers, now_unix) {
        return Some(RateLimitSummary {
            limit: x.limit,
            remaining: x.remaining,
            reset_unix: x.reset.map(|r| r.unix),
        });
    }
    let (policies, limits) = ratelimit::from_headers(headers);
    if let Some(item) = limits
        .as_ref()
        .and_then(|l| l.iter().min_by_key(|i| i.remaining))
    {
        let quota = policies
            .as_ref()
            .and_then(|ps| ps.iter().find(|p| p.name == item.name))
            .map(|p| p.quota);
        return Some(RateLimitSummary {
            limit: quota,
            remaining: Some(item.remaining),
            reset_unix: item.reset.map(|t| now_unix.saturating_add(t)),
        });
    }
    let (limit, remaining, reset) = headers
        .joined(ratelimit::RATELIMIT)
        .and_then(|v| ratelimit::parse_legacy_dictionary(&v))?;
    Some(RateLimitSummary {
        limit,
        remaining: Some(remaining),
        reset_unix: reset.map(|t| now_unix.saturating_add(t)),
    })
}
