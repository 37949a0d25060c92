//! Correlation ids: `X-Request-Id` and its relatives.
//!
//! An incoming id is accepted only when it matches `^[A-Za-z0-9._@+/=-]{1,255}$` — the
//! union of the Rails and Heroku rules — so a caller can never inject header or log
//! syntax through it. Anything else is replaced, never reflected.

use super::HeaderLookup;

/// The header weir reads and writes.
pub const X_REQUEST_ID: &str = "x-request-id";

/// Response headers that carry a server's request id, in the order they are consulted.
pub const RESPONSE_ID_HEADERS: [&str; 4] = [
    "x-request-id",
    "request-id",
    "x-ms-request-id",
    "x-amzn-requestid",
];

/// Whether `id` is safe to accept and echo.
pub fn is_valid_request_id(id: &str) -> bool {
    (1..=255).contains(&id.len())
        && id.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'+' | b'/' | b'=' | b'-')
        })
}

/// The first well-formed request id among the usual response headers.
pub fn from_headers(headers: &(impl HeaderLookup + ?Sized)) -> Option<&str> {
    RESPONSE_ID_HEADERS
        .iter()
        .filter_map(|n| headers.first_value(n))
        .map(str::trim)
        .find(|v| is_valid_request_id(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(is_valid_request_id("3a8c04bd-e29a-4c42-9bb1-a45474b459a9"));
        assert!(is_valid_request_id("abc+/=@._-"));
        for bad in ["", "a b", "a\r\nSet-Cookie: x", "ü", &"a".repeat(256)] {
            assert!(!is_valid_request_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn first_valid_header_wins() {
        let h = [("X-Request-Id", "bad id"), ("request-id", "good-1")];
        assert_eq!(from_headers(&h[..]), Some("good-1"));
    }
}
