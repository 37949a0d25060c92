//! The response weir writes to a client (RFC 9112 §4, §6, §7): how its body is framed,
//! its head, and chunked encoding.
//!
//! Pure functions over a byte buffer, unit- and property-tested without a socket. The
//! framing fields (`Content-Length`, `Transfer-Encoding`, `Connection`) are always weir's
//! own: whatever a handler or an upstream put there is replaced by what this connection
//! actually does, so a client can never be told one framing and sent another.

use crate::gateway::Stamp;
use crate::wire::field;
use http::{header, HeaderMap, HeaderName, Method, StatusCode, Version};
use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

/// How a response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body is sent (HEAD, 1xx, 204, 304): `Content-Length`, if any, describes what a
    /// GET would have returned.
    Bodiless(Option<u64>),
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked` (HTTP/1.1 clients, length unknown in advance).
    Chunked,
    /// Until weir closes the connection (HTTP/1.0 clients, length unknown in advance).
    UntilClose,
}

impl Framing {
    /// Decides the framing of a response to a `method` request from an HTTP `version`
    /// client, from the `Content-Length` the response carries (if valid) or else the
    /// body's exact size, if known.
    pub fn decide(
        method: &Method,
        version: Version,
        status: StatusCode,
        headers: &HeaderMap,
        exact_size: Option<u64>,
    ) -> Framing {
        // Read only when needed: a proxied body's size is usually known exactly.
        let declared = || {
            headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || *method == Method::HEAD
        {
            let length = if status.is_informational() || status == StatusCode::NO_CONTENT {
                None
            } else {
                declared().or(exact_size)
            };
            return Framing::Bodiless(length);
        }
        match exact_size.or_else(declared) {
            Some(n) => Framing::Length(n),
            None if version == Version::HTTP_11 => Framing::Chunked,
            None => Framing::UntilClose,
        }
    }

    /// The most body bytes this framing allows (`None`: unlimited).
    pub fn limit(self) -> Option<u64> {
        match self {
            Framing::Bodiless(_) => Some(0),
            Framing::Length(n) => Some(n),
            Framing::Chunked | Framing::UntilClose => None,
        }
    }
}

/// Fields weir writes itself (or, for the hop-by-hop ones, never passes on).
fn framing_field(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::CONNECTION
        || name.as_str() == "keep-alive"
}

/// Appends a response head to `out`: the status line, the handler's fields (less the
/// framing ones and those `stamp` replaces), the upstream's fields `stamp` passes on as
/// received (less those it replaces), `stamp`'s fields, `Date` unless present, the
/// framing fields and, if `close` or the handler's `Connection` lists `close`,
/// `Connection: close` (an HTTP/1.0 client kept alive is told `Connection: keep-alive`).
/// Returns whether the connection closes after this response: `close`, or the handler
/// asked for it (read in the same pass, not by a lookup of its own).
pub(crate) fn head(
    out: &mut Vec<u8>,
    version: Version,
    status: StatusCode,
    headers: &HeaderMap,
    stamp: Option<&Stamp>,
    framing: Framing,
    mut close: bool,
) -> bool {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut dated = false;
    for (name, value) in headers {
        if framing_field(name) {
            close |= name == header::CONNECTION
                && crate::hop::ConnectionOptions::of(value.as_bytes()).close;
            continue;
        }
        if stamp.is_some_and(|s| s.replaces(name)) {
            continue;
        }
        dated |= name == header::DATE;
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(s) = stamp {
        // The upstream's fields, as received (none of them framing or hop-by-hop: the
        // upstream client left those out).
        for (name, value) in s.passed().into_iter().flat_map(|p| p.iter()) {
            if s.replaces_raw(name) {
                continue;
            }
            dated |= name.eq_ignore_ascii_case(b"date");
            field(out, name, value);
        }
        s.write(out);
    }
    if !dated {
        DATE.with_borrow_mut(|d| field(out, b"date", d.now()));
    }
    match framing {
        Framing::Bodiless(Some(n)) | Framing::Length(n) => {
            field(
                out,
                b"content-length",
                itoa::Buffer::new().format(n).as_bytes(),
            );
        }
        Framing::Chunked => field(out, b"transfer-encoding", b"chunked"),
        Framing::Bodiless(None) | Framing::UntilClose => {}
    }
    if close || framing == Framing::UntilClose {
        field(out, b"connection", b"close");
    } else if version == Version::HTTP_10 {
        field(out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    close
}

/// The `Date` value, formatted once per second per thread.
struct DateCache {
    second: u64,
    text: [u8; 29],
}

impl DateCache {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == self.text.len() {
                self.text.copy_from_slice(text.as_bytes());
                self.second = second;
            }
        }
        &self.text
    }
}

thread_local! {
    static DATE: RefCell<DateCache> = const {
        RefCell::new(DateCache { second: 0, text: *b"Thu, 01 Jan 1970 00:00:00 GMT" })
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn text(
        version: Version,
        status: u16,
        headers: &HeaderMap,
        framing: Framing,
        close: bool,
    ) -> String {
        let mut out = Vec::new();
        let status = StatusCode::from_u16(status).expect("status");
        head(&mut out, version, status, headers, None, framing, close);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn a_handler_asking_to_close_closes_the_connection() {
        for (value, closes) in [
            ("Close", true),
            ("foo, close ", true),
            ("keep-alive", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static(value));
            let mut out = Vec::new();
            let status = StatusCode::OK;
            let closed = head(
                &mut out,
                Version::HTTP_11,
                status,
                &h,
                None,
                Framing::Length(0),
                false,
            );
            assert_eq!(closed, closes, "{value}");
            let said = String::from_utf8(out)
                .expect("utf-8")
                .contains("connection: close\r\n");
            assert_eq!(said, closes, "{value}");
        }
    }

    #[test]
    fn the_head_carries_weirs_framing_not_the_handlers() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("r1"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert(
            header::DATE,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        let t = text(Version::HTTP_11, 200, &h, Framing::Length(5), false);
        assert_eq!(
            t,
            "HTTP/1.1 200 OK\r\nx-request-id: r1\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\ncontent-length: 5\r\n\r\n"
        );
        let t = text(
            Version::HTTP_11,
            429,
            &HeaderMap::new(),
            Framing::Chunked,
            true,
        );
        assert!(
            t.starts_with("HTTP/1.1 429 Too Many Requests\r\ndate: "),
            "{t}"
        );
        assert!(
            t.ends_with(" GMT\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"),
            "{t}"
        );
        let t = text(Version::HTTP_10, 200, &h, Framing::Length(0), false);
        assert!(
            t.ends_with("content-length: 0\r\nconnection: keep-alive\r\n\r\n"),
            "{t}"
        );
        let t = text(Version::HTTP_10, 200, &h, Framing::UntilClose, false);
        assert!(t.ends_with("GMT\r\nconnection: close\r\n\r\n"), "{t}");
    }

    #[test]
    fn framing_decisions() {
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, HeaderValue::from_static("42"));
        let none = HeaderMap::new();
        let (get, head) = (Method::GET, Method::HEAD);
        let v11 = Version::HTTP_11;
        let cases = [
            (&get, v11, 200, &none, Some(3), Framing::Length(3)),
            (&get, v11, 200, &declared, None, Framing::Length(42)),
            (&get, v11, 200, &declared, Some(3), Framing::Length(3)),
            (&get, v11, 200, &none, None, Framing::Chunked),
            (
                &get,
                Version::HTTP_10,
                200,
                &none,
                None,
                Framing::UntilClose,
            ),
            (
                &head,
                v11,
                200,
                &declared,
                Some(0),
                Framing::Bodiless(Some(42)),
            ),
            (&get, v11, 204, &declared, Some(0), Framing::Bodiless(None)),
            (
                &get,
                v11,
                304,
                &declared,
                Some(0),
                Framing::Bodiless(Some(42)),
            ),
        ];
        for (m, v, s, h, size, want) in cases {
            let s = StatusCode::from_u16(s).expect("status");
            assert_eq!(Framing::decide(m, v, s, h, size), want, "{m} {s} {size:?}");
        }
        assert_eq!(Framing::Bodiless(Some(4)).limit(), Some(0));
        assert_eq!(Framing::Chunked.limit(), None);
    }

    #[test]
    fn the_date_is_an_imf_fixdate_of_now() {
        let mut out = Vec::new();
        head(
            &mut out,
            Version::HTTP_11,
            StatusCode::OK,
            &HeaderMap::new(),
            None,
            Framing::Length(0),
            false,
        );
        let t = String::from_utf8(out).expect("utf-8");
        let date = t
            .lines()
            .find_map(|l| l.strip_prefix("date: "))
            .expect("date");
        let parsed = httpdate::parse_http_date(date).expect("IMF-fixdate");
        let age = SystemTime::now()
            .duration_since(parsed)
            .expect("not in the future");
        assert!(age.as_secs() < 5, "{date}");
    }
}
