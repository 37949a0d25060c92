//! The one error callers see.

use std::time::Duration;

/// What kind of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The server answered an error that retrying will not fix (or retries ran out).
    Status,
    /// Credentials were rejected even after a refresh (or no refresh hook is set).
    Auth,
    /// The server asked to wait longer than the remaining deadline.
    WaitExceedsDeadline,
    /// The overall deadline passed.
    Deadline,
    /// The connection failed (refused, reset, timed out) and could not be retried.
    Transport,
    /// The circuit breaker for this host is open.
    CircuitOpen,
    /// The retry budget is spent: failing fast instead of amplifying an outage.
    BudgetExhausted,
    /// A non-idempotent request (POST/PATCH without Idempotency-Key) failed transiently;
    /// it was not retried because it may have been applied.
    NotRetriedUnsafe,
    /// The request could not be built.
    Invalid,
}

/// A failed call, with everything the server said and what the client did.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{summary}")]
pub struct CallError {
    /// What kind.
    pub kind: ErrorKind,
    /// The final HTTP status, if a response arrived.
    pub status: Option<u16>,
    /// The outermost error code.
    pub code: Option<String>,
    /// The most specific error code (deepest innerError).
    pub most_specific_code: Option<String>,
    /// The message.
    pub message: Option<String>,
    /// The hint.
    pub hint: Option<String>,
    /// Whether the server said retrying could work.
    pub retryable: bool,
    /// The server's request id (or ours, when it sent none).
    pub request_id: Option<String>,
    /// Attempts sent.
    pub attempts: u32,
    /// Time spent waiting (backoff, Retry-After, pacing).
    pub waited: Duration,
    /// How long the server asked to wait, when that is why the call failed.
    pub server_asked: Option<Duration>,
    /// The start of the response body (at most 64 KiB).
    pub body: Option<String>,
    /// The final response's headers, when a response arrived.
    pub response_headers: Option<http::HeaderMap>,
    summary: String,
}

impl CallError {
    pub(crate) fn new(kind: ErrorKind, summary: impl Into<String>) -> CallError {
        CallError {
            kind,
            status: None,
            code: None,
            most_specific_code: None,
            message: None,
            hint: None,
            retryable: false,
            request_id: None,
            attempts: 0,
            waited: Duration::ZERO,
            server_asked: None,
            body: None,
            response_headers: None,
            summary: summary.into(),
        }
    }

    /// The error code for counting (`code`, else the kind).
    pub fn code_or_kind(&self) -> String {
        self.code
            .clone()
            .unwrap_or_else(|| format!("{:?}", self.kind))
    }

    /// A short explanation (what `weir call` prints).
    pub fn summary(&self) -> &str {
        &self.summary
    }
}
