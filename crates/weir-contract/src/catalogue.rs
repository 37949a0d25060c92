//! The catalogue: every HTTP status and every error code the reference documents define.
//!
//! Statuses come from the "Handling errors" status table (reference 003) plus 502, which
//! the same page names in its 5xx guidance, and the success codes reference 004 lists.
//! Error codes come from reference 004's "Error Codes by Category" table. Each entry says
//! whether a client may retry, so that retry decisions are data, not scattered `match`es.

/// How a status or code should be treated by a client that receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetryClass {
    /// Transient: retry after a delay (Retry-After or backoff).
    AfterDelay,
    /// Credentials failed: refresh them, retry once.
    RefreshAuth,
    /// Retrying the same request will fail the same way.
    Never,
    /// Not an error at all (2xx/3xx).
    NotAnError,
}

/// One HTTP status with its canonical error-code name and reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusInfo {
    /// Numeric status.
    pub status: u16,
    /// PascalCase canonical code, as Microsoft Graph-style APIs put in `error.code`.
    pub code: &'static str,
    /// Reason phrase, as used for problem+json `title` with `about:blank`.
    pub reason: &'static str,
    /// Whether a client retries it.
    pub retry: RetryClass,
}

macro_rules! statuses {
    ($($status:literal $code:literal $reason:literal $retry:ident;)*) => {
        /// Every status weir knows by name, sorted by number.
        pub const STATUSES: &[StatusInfo] = &[
            $(StatusInfo { status: $status, code: $code, reason: $reason, retry: RetryClass::$retry },)*
        ];
    };
}

statuses! {
    200 "OK" "OK" NotAnError;
    201 "Created" "Created" NotAnError;
    204 "NoContent" "No Content" NotAnError;
    400 "BadRequest" "Bad Request" Never;
    401 "Unauthorized" "Unauthorized" RefreshAuth;
    402 "PaymentRequired" "Payment Required" Never;
    403 "Forbidden" "Forbidden" Never;
    404 "NotFound" "Not Found" Never;
    405 "MethodNotAllowed" "Method Not Allowed" Never;
    406 "NotAcceptable" "Not Acceptable" Never;
    // Not in the reference table; RFC 9110 §15.5.9: the server gave up waiting for the
    // request, so it was not processed and may be repeated.
    408 "RequestTimeout" "Request Timeout" AfterDelay;
    409 "Conflict" "Conflict" Never;
    410 "Gone" "Gone" Never;
    411 "LengthRequired" "Length Required" Never;
    412 "PreconditionFailed" "Precondition Failed" Never;
    413 "RequestEntityTooLarge" "Request Entity Too Large" Never;
    415 "UnsupportedMediaType" "Unsupported Media Type" Never;
    416 "RequestedRangeNotSatisfiable" "Requested Range Not Satisfiable" Never;
    422 "UnprocessableEntity" "Unprocessable Entity" Never;
    423 "Locked" "Locked" Never;
    429 "TooManyRequests" "Too Many Requests" AfterDelay;
    500 "InternalServerError" "Internal Server Error" AfterDelay;
    501 "NotImplemented" "Not Implemented" Never;
    502 "BadGateway" "Bad Gateway" AfterDelay;
    503 "ServiceUnavailable" "Service Unavailable" AfterDelay;
    504 "GatewayTimeout" "Gateway Timeout" AfterDelay;
    507 "InsufficientStorage" "Insufficient Storage" Never;
    509 "BandwidthLimitExceeded" "Bandwidth Limit Exceeded" AfterDelay;
}

/// Looks a status up; `None` for statuses the catalogue does not name.
pub fn status(status: u16) -> Option<&'static StatusInfo> {
    STATUSES
        .binary_search_by_key(&status, |s| s.status)
        .ok()
        .and_then(|i| STATUSES.get(i))
}

/// The retry class of any status, including ones the catalogue does not name: other 2xx/3xx
/// are not errors, other 4xx and 5xx are not retried (only the documented transient ones are).
pub fn status_retry_class(code: u16) -> RetryClass {
    match status(code) {
        Some(info) => info.retry,
        None if code < 400 => RetryClass::NotAnError,
        None => RetryClass::Never,
    }
}

/// The group an error code belongs to; the prefix of its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Category {
    /// `AUTH_*`
    Authentication,
    /// `DOCUMENT_*`
    Documents,
    /// `LLM_*`
    Llm,
    /// `TOOL_*`
    Tools,
    /// `DATA_*`
    Data,
    /// `SERVICE_*`
    Service,
    /// `REQUEST_*` and `IDEMPOTENCY_*`: weir's own codes for edge validation, which the
    /// reference documents leave to each API.
    Request,
    /// `UPSTREAM_*`: weir's own codes for what a gateway sees of its upstream.
    Upstream,
}

/// One machine-readable error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeInfo {
    /// UPPER_SNAKE code, e.g. `SERVICE_RATE_LIMITED`.
    pub code: &'static str,
    /// Its category.
    pub category: Category,
    /// The HTTP status a server sends with it by default.
    pub status: u16,
    /// Whether the same call may succeed if retried later (the MCP `retryable` flag).
    pub retryable: bool,
    /// A default human-readable message.
    pub message: &'static str,
}

macro_rules! codes {
    ($($code:literal $cat:ident $status:literal $retry:literal $msg:literal;)*) => {
        /// Every error code weir knows.
        pub const CODES: &[CodeInfo] = &[
            $(CodeInfo { code: $code, category: Category::$cat, status: $status, retryable: $retry, message: $msg },)*
        ];
    };
}

codes! {
    "AUTH_TOKEN_EXPIRED" Authentication 401 false "The access token has expired.";
    "AUTH_TOKEN_INVALID" Authentication 401 false "The access token is invalid.";
    "AUTH_HEADER_MISSING" Authentication 401 false "No credentials were supplied.";
    "AUTH_PERMISSION_DENIED" Authentication 403 false "The credentials do not grant access to this resource.";
    "AUTH_SCOPE_MISSING" Authentication 403 false "The token lacks the scope this route requires.";
    "DOCUMENT_FORMAT_UNSUPPORTED" Documents 415 false "The uploaded file format is not supported.";
    "DOCUMENT_SIZE_EXCEEDED" Documents 413 false "The uploaded document is larger than allowed.";
    "DOCUMENT_PASSWORD_PROTECTED" Documents 422 false "The document is password protected.";
    "DOCUMENT_OCR_FAILED" Documents 422 false "Text could not be extracted from the document.";
    "DOCUMENT_NOT_FOUND" Documents 404 false "The document does not exist.";
    "LLM_PROVIDER_UNAVAILABLE" Llm 503 true "The model provider is unavailable.";
    "LLM_REQUEST_TIMEOUT" Llm 504 true "The model provider did not answer in time.";
    "LLM_PROVIDER_ERROR" Llm 502 true "The model provider returned an error.";
    "LLM_RATE_LIMITED" Llm 429 true "The model provider is rate limiting requests.";
    "TOOL_VALIDATION_FAILED" Tools 422 false "The tool arguments are invalid.";
    "TOOL_NOT_FOUND" Tools 404 false "The tool does not exist.";
    "TOOL_TIMEOUT" Tools 504 true "The tool did not finish in time.";
    "TOOL_EXECUTION_FAILED" Tools 500 false "The tool failed while executing.";
    "DATA_NOT_FOUND" Data 404 false "The requested data does not exist.";
    "DATA_CONFLICT" Data 409 false "The data conflicts with its current state.";
    "DATA_INVALID_PARAMETER" Data 400 false "A parameter is invalid.";
    "DATA_QUOTA_EXCEEDED" Data 507 false "The data quota has been reached.";
    "SERVICE_UNAVAILABLE" Service 503 true "The service is temporarily unavailable.";
    "SERVICE_RATE_LIMITED" Service 429 true "Rate limit exceeded.";
    "SERVICE_CONNECTION_LOST" Service 502 true "The connection to the upstream service was lost.";
    "SERVICE_CIRCUIT_OPEN" Service 503 true "The upstream service is failing; requests are short-circuited.";
    "REQUEST_MALFORMED" Request 400 false "The request is malformed.";
    "REQUEST_METHOD_NOT_ALLOWED" Request 405 false "The method is not allowed for this resource.";
    "REQUEST_LENGTH_REQUIRED" Request 411 false "The request requires a Content-Length.";
    "REQUEST_TOO_LARGE" Request 413 false "The request body is larger than allowed.";
    "REQUEST_MEDIA_TYPE_UNSUPPORTED" Request 415 false "The request media type is not supported.";
    "REQUEST_TIMEOUT" Request 408 true "The request body did not arrive in time.";
    "REQUEST_NOT_FOUND" Request 404 false "No route matches this path.";
    "REQUEST_COST_EXCEEDS_LIMIT" Request 413 false "The request costs more than the limit can ever allow; split it into smaller batches.";
    "IDEMPOTENCY_KEY_INVALID" Request 400 false "The Idempotency-Key header is invalid.";
    "IDEMPOTENCY_KEY_MISSING" Request 400 false "This endpoint requires an Idempotency-Key header.";
    "IDEMPOTENCY_IN_PROGRESS" Request 409 true "A request with this Idempotency-Key is still being processed.";
    "IDEMPOTENCY_KEY_REUSED" Request 422 false "This Idempotency-Key was used with a different request.";
    "UPSTREAM_TIMEOUT" Upstream 504 true "The upstream service did not answer in time.";
}

/// Looks an error code up (exact, case-sensitive: codes are identifiers).
pub fn code(code: &str) -> Option<&'static CodeInfo> {
    CODES.iter().find(|c| c.code == code)
}

/// Whether weir understands `code`: one of its error codes or a canonical status code name.
pub fn is_known_code(code: &str) -> bool {
    self::code(code).is_some() || STATUSES.iter().any(|s| s.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_sorted_and_unique() {
        assert!(STATUSES.windows(2).all(|w| w[0].status < w[1].status));
    }

    #[test]
    fn code_prefix_matches_category() {
        for c in CODES {
            let prefix = c.code.split('_').next().unwrap_or_default();
            let expected = match c.category {
                Category::Authentication => "AUTH",
                Category::Documents => "DOCUMENT",
                Category::Llm => "LLM",
                Category::Tools => "TOOL",
                Category::Data => "DATA",
                Category::Service => "SERVICE",
                Category::Request => {
                    assert!(prefix == "REQUEST" || prefix == "IDEMPOTENCY", "{}", c.code);
                    continue;
                }
                Category::Upstream => "UPSTREAM",
            };
            assert_eq!(prefix, expected, "{}", c.code);
        }
    }

    #[test]
    fn unknown_statuses_fall_back_by_class() {
        assert_eq!(status_retry_class(418), RetryClass::Never);
        assert_eq!(status_retry_class(599), RetryClass::Never);
        assert_eq!(status_retry_class(302), RetryClass::NotAnError);
        assert_eq!(status_retry_class(509), RetryClass::AfterDelay);
    }
}
