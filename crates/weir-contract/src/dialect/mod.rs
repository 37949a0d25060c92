//! Envelope dialects: the four JSON shapes an API error travels in, rendered and parsed.
//!
//! | dialect | shape | source |
//! |---|---|---|
//! | `detail` | `{"detail":{"code","message","hint"?}}` | reference 004 (REST) |
//! | `error` | `{"error":{"code","message","target"?,"innerError"?,"details"?}}` | reference 003, Microsoft guidelines |
//! | `mcp` | `{"code","message","retryable"}` | reference 004 (MCP tools) |
//! | `problem` | RFC 9457 `application/problem+json` | RFC 9457 |
//!
//! Rendering is strict: it always produces the documented shape, filling a missing code or
//! message from the status catalogue. Parsing is tolerant: it detects the dialect from any
//! body, accepts `innererror` as well as `innerError`, ignores members of the wrong type
//! (RFC 9457 §3.1) while keeping them in `extra`, and answers [`Unrecognised`] — never a
//! panic — for anything else. Input is bounded: bodies over [`MAX_ENVELOPE_BYTES`] are not
//! parsed at all, and JSON nesting is bounded by serde_json's recursion limit.

mod detail;
mod error;
mod mcp;
mod problem;

use crate::catalogue;
use crate::error::ApiError;
use serde_json::{Map, Value};

/// Bodies larger than this are not error envelopes worth parsing: they are reported as
/// [`Unrecognised`] without being read further. 1 MiB is far above any real envelope.
pub const MAX_ENVELOPE_BYTES: usize = 1 << 20;

/// How many bytes of an unrecognised body are kept for display.
pub const SNIPPET_BYTES: usize = 256;

/// One of the four envelope shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// `{"detail":{"code","message","hint"}}`
    Detail,
    /// `{"error":{"code","message","innerError","details"}}`
    Error,
    /// `{"code","message","retryable"}`
    Mcp,
    /// RFC 9457 problem details.
    Problem,
}

impl Dialect {
    /// All dialects.
    pub const ALL: [Dialect; 4] = [
        Dialect::Detail,
        Dialect::Error,
        Dialect::Mcp,
        Dialect::Problem,
    ];

    /// The name used in configuration and in `weir explain --json`.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Detail => "detail",
            Dialect::Error => "error",
            Dialect::Mcp => "mcp",
            Dialect::Problem => "problem",
        }
    }

    /// Parses a dialect name (`detail`, `error`, `mcp`, `problem`).
    pub fn from_name(name: &str) -> Option<Dialect> {
        Dialect::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The `Content-Type` a response in this dialect carries.
    pub fn content_type(self) -> &'static str {
        match self {
            Dialect::Problem => "application/problem+json",
            _ => "application/json",
        }
    }

    /// Renders `err` in this dialect.
    pub fn render(self, err: &ApiError) -> Value {
        match self {
            Dialect::Detail => detail::render(err),
            Dialect::Error => error::render(err),
            Dialect::Mcp => mcp::render(err),
            Dialect::Problem => problem::render(err),
        }
    }

    /// Renders `err` in this dialect as a JSON string.
    pub fn render_string(self, err: &ApiError) -> String {
        self.render(err).to_string()
    }

    /// Parses a JSON value that is known to be in this dialect; `None` if it is not.
    pub fn parse_value(self, value: Value, status: Option<u16>) -> Option<ApiError> {
        let Value::Object(map) = value else {
            return None;
        };
        match self {
            Dialect::Detail => detail::parse(map, status),
            Dialect::Error => error::parse(map, status),
            Dialect::Mcp => mcp::parse(map, status),
            Dialect::Problem => Some(problem::parse(map, status)),
        }
    }

    /// What survives a trip through this dialect: the fields it carries, with a missing
    /// code or message filled in exactly as [`Dialect::render`] fills them. For every
    /// error `e`, parsing `render(e)` gives back `project(e)`.
    pub fn project(self, err: &ApiError) -> ApiError {
        match self {
            Dialect::Detail => detail::project(err),
            Dialect::Error => error::project(err),
            Dialect::Mcp => mcp::project(err),
            Dialect::Problem => problem::project(err),
        }
    }
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A body recognised as an error envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The dialect it was in.
    pub dialect: Dialect,
    /// The error it carried.
    pub error: ApiError,
}

/// Why a body was not recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnrecognisedReason {
    /// No bytes at all.
    Empty,
    /// Larger than [`MAX_ENVELOPE_BYTES`].
    TooLarge,
    /// Not valid JSON (HTML error page, truncated JSON, garbage).
    NotJson,
    /// Valid JSON, but in none of the four shapes.
    UnknownShape,
}

impl UnrecognisedReason {
    /// A short human-readable description.
    pub fn describe(self) -> &'static str {
        match self {
            UnrecognisedReason::Empty => "empty body",
            UnrecognisedReason::TooLarge => "body too large to be an error envelope",
            UnrecognisedReason::NotJson => "body is not JSON",
            UnrecognisedReason::UnknownShape => "JSON in no known error envelope shape",
        }
    }
}

/// A body in none of the dialects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unrecognised {
    /// The HTTP status, when known.
    pub status: Option<u16>,
    /// Why it was not recognised.
    pub reason: UnrecognisedReason,
    /// At most [`SNIPPET_BYTES`] of the body, as printable text.
    pub snippet: String,
    /// The full length of the body in bytes.
    pub len: usize,
}

/// Detects the dialect of `body` and parses it. `status` is the HTTP status when known.
///
/// Never panics, and reads at most [`MAX_ENVELOPE_BYTES`] of the body.
pub fn parse_body(body: &[u8], status: Option<u16>) -> Result<Parsed, Unrecognised> {
    parse_response(status, None, body)
}

/// Like [`parse_body`], with the response's `Content-Type`: `application/problem+json`
/// selects the problem dialect for any JSON object.
pub fn parse_response(
    status: Option<u16>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Parsed, Unrecognised> {
    let unrecognised = |reason| Unrecognised {
        status,
        reason,
        snippet: snippet(body),
        len: body.len(),
    };
    let trimmed = trim_body(body);
    if trimmed.is_empty() {
        return Err(unrecognised(UnrecognisedReason::Empty));
    }
    if body.len() > MAX_ENVELOPE_BYTES {
        return Err(unrecognised(UnrecognisedReason::TooLarge));
    }
    // Cheap rejection before handing bytes to a JSON parser: every envelope is an object.
    if trimmed.first() != Some(&b'{') {
        return Err(unrecognised(UnrecognisedReason::NotJson));
    }
    let map = match serde_json::from_slice::<Value>(trimmed) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(unrecognised(UnrecognisedReason::UnknownShape)),
        Err(_) => return Err(unrecognised(UnrecognisedReason::NotJson)),
    };
    let is_problem_type = content_type.is_some_and(is_problem_media_type);
    match detect(&map, is_problem_type) {
        Some(dialect) => match dialect.parse_value(Value::Object(map), status) {
            Some(error) => Ok(Parsed { dialect, error }),
            None => Err(unrecognised(UnrecognisedReason::UnknownShape)),
        },
        None => mcp::unwrap_tool_result(&map, status)
            .map(|error| Parsed {
                dialect: Dialect::Mcp,
                error,
            })
            .ok_or_else(|| unrecognised(UnrecognisedReason::UnknownShape)),
    }
}

/// Whether a `Content-Type` value is `application/problem+json` (parameters ignored).
pub fn is_problem_media_type(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/problem+json"))
}

fn detect(map: &Map<String, Value>, problem_media_type: bool) -> Option<Dialect> {
    if problem_media_type {
        return Some(Dialect::Problem);
    }
    match map.get("error") {
        Some(Value::Object(_)) => return Some(Dialect::Error),
        Some(Value::String(_)) if !map.contains_key("type") => return Some(Dialect::Error),
        _ => {}
    }
    if matches!(map.get("detail"), Some(Value::Object(_))) {
        return Some(Dialect::Detail);
    }
    let problem_marker = matches!(map.get("type"), Some(Value::String(_)))
        || matches!(map.get("title"), Some(Value::String(_)))
        || matches!(map.get("instance"), Some(Value::String(_)));
    if problem_marker {
        return Some(Dialect::Problem);
    }
    if matches!(map.get("detail"), Some(Value::String(_))) {
        return Some(if map.get("status").is_some_and(Value::is_u64) {
            Dialect::Problem
        } else {
            Dialect::Detail
        });
    }
    let has_code = matches!(map.get("code"), Some(Value::String(_)));
    let has_body = matches!(map.get("message"), Some(Value::String(_)))
        || matches!(map.get("retryable"), Some(Value::Bool(_)));
    if has_code && has_body {
        return Some(Dialect::Mcp);
    }
    None
}

fn trim_body(body: &[u8]) -> &[u8] {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    let end = body
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    body.get(start..end).unwrap_or_default()
}

/// The first [`SNIPPET_BYTES`] of a body as printable text: invalid UTF-8 and control
/// characters are replaced, so the snippet is safe to print in a terminal or a log line.
pub fn snippet(body: &[u8]) -> String {
    let cut = body.get(..SNIPPET_BYTES).unwrap_or(body);
    let mut out: String = String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if body.len() > SNIPPET_BYTES {
        out.push('…');
    }
    out
}

// --- helpers shared by the dialect modules -------------------------------------------

/// Removes `key` from `map` when it is a string; a member of another type is left in place
/// (and so ends up in `extra`), as RFC 9457 §3.1 asks of wrongly typed members.
pub(crate) fn take_string(map: &mut Map<String, Value>, key: &str) -> Option<String> {
    match map.get(key) {
        Some(Value::String(_)) => match map.remove(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// Removes `key` from `map` when it is a boolean.
pub(crate) fn take_bool(map: &mut Map<String, Value>, key: &str) -> Option<bool> {
    let value = map.get(key).and_then(Value::as_bool)?;
    map.remove(key);
    Some(value)
}

/// Inserts `value` under `key` when present.
pub(crate) fn put(map: &mut Map<String, Value>, key: &str, value: Option<&str>) {
    if let Some(v) = value {
        map.insert(key.to_owned(), Value::String(v.to_owned()));
    }
}

/// Appends the extra members that do not collide with a member already written.
pub(crate) fn put_extra(map: &mut Map<String, Value>, extra: &Map<String, Value>) {
    for (k, v) in extra {
        if !map.contains_key(k) {
            map.insert(k.clone(), v.clone());
        }
    }
}

/// The code a dialect that requires one writes when the error has none: the canonical
/// status name (`TooManyRequests`), or `Error`.
pub(crate) fn fallback_code(err: &ApiError) -> String {
    err.code.clone().unwrap_or_else(|| {
        err.status
            .and_then(catalogue::status)
            .map_or("Error", |s| s.code)
            .to_owned()
    })
}

/// The message a dialect that requires one writes when the error has none: the catalogue
/// message for the code, the reason phrase for the status, or an empty string.
pub(crate) fn fallback_message(err: &ApiError) -> String {
    err.message.clone().unwrap_or_else(|| {
        err.code
            .as_deref()
            .and_then(catalogue::code)
            .map(|c| c.message)
            .or_else(|| err.status.and_then(catalogue::status).map(|s| s.reason))
            .unwrap_or_default()
            .to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_html_and_truncated_bodies_are_unrecognised() {
        for (body, reason) in [
            (&b""[..], UnrecognisedReason::Empty),
            (b"   \n", UnrecognisedReason::Empty),
            (
                b"<html><body>502 Bad Gateway</body></html>",
                UnrecognisedReason::NotJson,
            ),
            (b"{\"error\":{\"code\":\"X\"", UnrecognisedReason::NotJson),
            (b"[1,2,3]", UnrecognisedReason::NotJson),
            (b"{\"hello\":1}", UnrecognisedReason::UnknownShape),
        ] {
            let err = parse_body(body, Some(502)).expect_err("must not parse");
            assert_eq!(err.reason, reason, "{:?}", String::from_utf8_lossy(body));
            assert_eq!(err.status, Some(502));
        }
    }

    #[test]
    fn huge_bodies_are_rejected_without_parsing_and_snippet_is_bounded() {
        let body = vec![b'{'; MAX_ENVELOPE_BYTES + 1];
        let err = parse_body(&body, None).expect_err("too large");
        assert_eq!(err.reason, UnrecognisedReason::TooLarge);
        assert_eq!(err.len, MAX_ENVELOPE_BYTES + 1);
        assert!(err.snippet.len() <= SNIPPET_BYTES + '…'.len_utf8());
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut body = String::new();
        for _ in 0..10_000 {
            body.push_str("{\"error\":");
        }
        let err = parse_body(body.as_bytes(), None).expect_err("too deep");
        assert_eq!(err.reason, UnrecognisedReason::NotJson);
    }

    #[test]
    fn snippet_strips_control_characters() {
        assert_eq!(snippet(b"a\x1b[31mb\n"), "a [31mb ");
    }

    #[test]
    fn fastapi_plain_detail_is_detail_dialect() {
        let p = parse_body(br#"{"detail":"Not Found"}"#, Some(404)).expect("parses");
        assert_eq!(p.dialect, Dialect::Detail);
        assert_eq!(p.error.message.as_deref(), Some("Not Found"));
        assert_eq!(p.error.code, None);
    }

    #[test]
    fn problem_content_type_wins() {
        let p = parse_response(
            Some(429),
            Some("application/problem+json; charset=utf-8"),
            br#"{"code":"X","message":"m"}"#,
        )
        .expect("parses");
        assert_eq!(p.dialect, Dialect::Problem);
    }
}
