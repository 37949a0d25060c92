//! The request head a client sends (RFC 9112 §2–§6): parsed from the connection's buffer
//! into [`http::request::Parts`], with what the server must decide from it — how the body
//! is delimited, whether the connection may carry another request, and whether the client
//! waits for `100 Continue`.
//!
//! A pure function over a byte buffer, so it is unit-, property- and fuzz-tested without a
//! socket. Parsing is `httparse`; this module refuses what a proxy must not guess about:
//! `Content-Length` together with `Transfer-Encoding`, several different lengths, and
//! transfer codings other than a final `chunked` (the request-smuggling confusions).

use bytes::BytesMut;
use http::{header, Method, Uri, Version};

/// The largest request head accepted (request line and fields); larger gets 431.
pub const MAX_HEAD: usize = crate::wire::MAX_HEAD;
/// The most fields a request head may have; more gets 431.
pub const MAX_FIELDS: usize = 100;

/// What is wrong with a request head. Each maps to a status the client is answered with
/// ([`HeadError::status`]) before the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    /// The head does not parse.
    #[error("malformed request head: {0}")]
    Malformed(httparse::Error),
    /// The head is larger than [`MAX_HEAD`] or has more than [`MAX_FIELDS`] fields.
    #[error(
        "the request head is larger than {MAX_HEAD} bytes or has more than {MAX_FIELDS} fields"
    )]
    TooLarge,
    /// The request target is not a valid URI.
    #[error("the request target is not a valid URI")]
    Target,
    /// A field name or value is not valid.
    #[error("a request field is invalid")]
    Field,
    /// `Content-Length` is not one non-negative integer (or several that differ).
    #[error("the request has an invalid Content-Length")]
    ContentLength,
    /// Both `Content-Length` and `Transfer-Encoding`: which one frames the body is exactly
    /// what a smuggling attack relies on two parties deciding differently.
    #[error("the request has both Content-Length and Transfer-Encoding")]
    Ambiguous,
    /// A transfer coding other than a final `chunked`.
    #[error("the request uses a transfer coding weir does not implement")]
    TransferCoding,
    /// `Transfer-Encoding` in an HTTP/1.0 request, which cannot have it (RFC 9112 §6.1).
    #[error("an HTTP/1.0 request cannot use Transfer-Encoding")]
    TransferEncoding10,
}

impl HeadError {
    /// The status the client is answered with.
    pub fn status(self) -> http::StatusCode {
        match self {
            HeadError::TooLarge => http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::TransferCoding => http::StatusCode::NOT_IMPLEMENTED,
            _ => http::StatusCode::BAD_REQUEST,
        }
    }
}

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes (more than zero).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, target, version and fields (as received, framing fields included).
    pub parts: http::request::Parts,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the client lets the connection carry another request after this one.
    pub keep_alive: bool,
    /// Whether the client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
}

/// Parses the request head at the front of `buf` and removes it from the buffer once it
/// is complete (`Ok(None)`: not a whole head yet, read more). Empty lines before the
/// request line are skipped (RFC 9112 §2.2). Field values share the buffer's memory.
pub fn parse(buf: &mut BytesMut) -> Result<Option<RequestHead>, HeadError> {
    // Left uninitialised: filling 100 empty fields on every parse would cost more than
    // parsing a typical head.
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(e)),
    };
    if len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let version = match req.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Malformed(httparse::Error::Token))?;
    // Where the target and each field lie in the head, so they can share the frozen
    // buffer instead of being copied.
    let path = req.path.unwrap_or("");
    let target = (path.as_ptr() as usize - buf.as_ptr() as usize, path.len());
    let mut spans = crate::wire::Spans::new();
    spans.fill(buf.as_ptr(), req.headers);
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .map_err(|_| HeadError::Target)?;
    // Sized to what arrived: the fields weir adds when forwarding are written with the
    // upstream head, never inserted into this map.
    let mut headers = crate::wire::field_map(spans.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut coded = false;
    let mut connection = crate::hop::ConnectionOptions::default();
    let mut expect_continue = false;
    for field in spans.fields(&head) {
        let (name, value) = field.map_err(|_| HeadError::Field)?;
        if name == header::CONTENT_LENGTH {
            // A list of identical lengths is one length; anything else is refused.
            if !crate::wire::add_content_length(&mut length, value.as_bytes()) {
                return Err(HeadError::ContentLength);
            }
        } else if name == header::TRANSFER_ENCODING {
            coded = true;
            // Only the last coding decides whether the body is chunked; any coding after
            // `chunked` (or other than it) is one weir cannot decode.
            for coding in value.as_bytes().split(|&b| b == b',') {
                let coding = coding.trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                if chunked || !coding.eq_ignore_ascii_case(b"chunked") {
                    return Err(HeadError::TransferCoding);
                }
                chunked = true;
            }
        } else if name == header::CONNECTION {
            connection.note(value.as_bytes());
        } else if name == header::EXPECT {
            expect_continue |= value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        }
        headers.append(name, value);
    }
    if coded && version == Version::HTTP_10 {
        return Err(HeadError::TransferEncoding10);
    }
    if coded && length.is_some() {
        return Err(HeadError::Ambiguous);
    }
    if coded && !chunked {
        return Err(HeadError::TransferCoding);
    }
    let framing = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(n)) if n > 0 => Framing::Length(n),
        _ => Framing::Empty,
    };
    let keep_alive = !connection.close && (version == Version::HTTP_11 || connection.keep_alive);
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(RequestHead {
        parts,
        framing,
        keep_alive,
        // A client that sent no body has nothing to wait for.
        expect_continue: expect_continue
            && framing != Framing::Empty
            && version == Version::HTTP_11,
    }))
}

/// Whether `buf`, in which no whole head was found among its first `seen` bytes, may now
/// hold one (shared with the upstream client's response heads).
pub fn may_end(buf: &[u8], seen: usize) -> bool {
    crate::wire::may_end(buf, seen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(text: &str) -> Result<Option<RequestHead>, HeadError> {
        parse(&mut BytesMut::from(text))
    }

    fn done(text: &str) -> RequestHead {
        match head(text) {
            Ok(Some(h)) => h,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn a_simple_get_and_what_is_left_after_it() {
        let mut buf = BytesMut::from(
            "\r\nGET /v1/x?q=1 HTTP/1.1\r\nHost: a\r\nX-Api-Key: k\r\n\r\nGET /next",
        );
        let h = parse(&mut buf).expect("parses").expect("complete");
        assert_eq!(h.parts.method, Method::GET);
        assert_eq!(h.parts.uri.path(), "/v1/x");
        assert_eq!(h.parts.uri.query(), Some("q=1"));
        assert_eq!(h.parts.version, Version::HTTP_11);
        assert_eq!(h.parts.headers["x-api-key"], "k");
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.keep_alive);
        assert!(!h.expect_continue);
        assert_eq!(&buf[..], b"GET /next");
        assert!(matches!(parse(&mut buf), Ok(None)));
    }

    #[test]
    fn framing_and_connection_rules() {
        // (head fields, version, expected framing or error, keep-alive)
        let cases: [(&str, &str, Result<Framing, HeadError>, bool); 14] = [
            ("", "1.1", Ok(Framing::Empty), true),
            ("Content-Length: 0\r\n", "1.1", Ok(Framing::Empty), true),
            (
                "Content-Length: 12\r\n",
                "1.1",
                Ok(Framing::Length(12)),
                true,
            ),
            (
                "Content-Length: 12, 12\r\n",
                "1.1",
                Ok(Framing::Length(12)),
                true,
            ),
            (
                "Content-Length: 12\r\nContent-Length: 13\r\n",
                "1.1",
                Err(HeadError::ContentLength),
                true,
            ),
            (
                "Content-Length: +12\r\n",
                "1.1",
                Err(HeadError::ContentLength),
                true,
            ),
            (
                "Content-Length: 99999999999999999999\r\n",
                "1.1",
                Err(HeadError::ContentLength),
                true,
            ),
            (
                "Transfer-Encoding: Chunked\r\n",
                "1.1",
                Ok(Framing::Chunked),
                true,
            ),
            (
                "Transfer-Encoding: gzip\r\n",
                "1.1",
                Err(HeadError::TransferCoding),
                true,
            ),
            (
                "Transfer-Encoding: chunked, gzip\r\n",
                "1.1",
                Err(HeadError::TransferCoding),
                true,
            ),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                "1.1",
                Err(HeadError::Ambiguous),
                true,
            ),
            (
                "Transfer-Encoding: chunked\r\n",
                "1.0",
                Err(HeadError::TransferEncoding10),
                false,
            ),
            (
                "Connection: keep-alive\r\n",
                "1.0",
                Ok(Framing::Empty),
                true,
            ),
            (
                "Connection: upgrade, Close\r\n",
                "1.1",
                Ok(Framing::Empty),
                false,
            ),
        ];
        for (fields, version, want, keep_alive) in cases {
            let text = format!("POST / HTTP/{version}\r\n{fields}\r\n");
            match (head(&text), want) {
                (Ok(Some(h)), Ok(f)) => {
                    assert_eq!(h.framing, f, "{text:?}");
                    assert_eq!(h.keep_alive, keep_alive, "{text:?}");
                }
                (Err(e), Err(w)) => assert_eq!(e, w, "{text:?}"),
                (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
        assert!(!done("GET / HTTP/1.0\r\n\r\n").keep_alive);
    }

    #[test]
    fn expect_continue_only_with_a_body() {
        assert!(
            done("POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n")
                .expect_continue
        );
        assert!(!done("POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").expect_continue);
    }

    #[test]
    fn limits_and_malformed_heads() {
        let many: String = (0..=MAX_FIELDS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(
            head(&format!("GET / HTTP/1.1\r\n{many}\r\n")).err(),
            Some(HeadError::TooLarge)
        );
        let big = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(MAX_HEAD));
        assert_eq!(head(&big).err(), Some(HeadError::TooLarge));
        assert!(matches!(head("GET / HTTP/1.1\r\nx: a"), Ok(None)));
        assert!(matches!(
            head("GET / HTTP/1.1\r\nbad field: a\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            head("GET / HTTP/2.0\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert_eq!(HeadError::TooLarge.status(), 431);
        assert_eq!(HeadError::TransferCoding.status(), 501);
        assert_eq!(HeadError::Ambiguous.status(), 400);
    }

    proptest! {
        /// Whatever the bytes, parsing answers (never panics), and a complete head is
        /// removed from the buffer exactly.
        #[test]
        fn any_bytes_parse_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let before = buf.len();
            if let Ok(Some(_)) = parse(&mut buf) {
                prop_assert!(buf.len() < before);
            }
        }

        /// Parsing again only when [`may_end`] says so never misses a head: wherever the
        /// bytes were split, a head that is whole after the split is seen as possibly whole.
        #[test]
        fn may_end_never_hides_a_whole_head(
            fields in proptest::collection::vec(("[a-z]{1,8}", "[ -~]{0,12}"), 0..6),
            bare_lf in any::<bool>(),
            split in 0usize..200,
        ) {
            let eol = if bare_lf { "\n" } else { "\r\n" };
            let mut text = format!("GET /x HTTP/1.1{eol}");
            for (n, v) in &fields {
                text.push_str(&format!("{n}: {v}{eol}"));
            }
            text.push_str(eol);
            text.push_str("NEXT");
            let split = split.min(text.len());
            let before = parse(&mut BytesMut::from(&text.as_bytes()[..split]));
            let after = parse(&mut BytesMut::from(text.as_bytes()));
            if matches!(before, Ok(None)) && !matches!(after, Ok(None)) {
                prop_assert!(may_end(text.as_bytes(), split));
            }
        }

        /// A head split anywhere parses to the same request once the rest arrives.
        #[test]
        fn a_head_split_anywhere_parses_the_same(split in 0usize..60, len in 0u64..100_000) {
            let text = format!("PUT /a/b HTTP/1.1\r\nHost: h\r\nContent-Length: {len}\r\n\r\nrest");
            let split = split.min(text.len());
            let mut buf = BytesMut::from(&text.as_bytes()[..split]);
            let first = parse(&mut buf);
            if split < text.len() - 4 {
                prop_assert!(matches!(first, Ok(None)));
                buf.extend_from_slice(&text.as_bytes()[split..]);
                let h = parse(&mut buf).expect("parses").expect("complete");
                prop_assert_eq!(h.framing, if len == 0 { Framing::Empty } else { Framing::Length(len) });
                prop_assert_eq!(&buf[..], b"rest");
            }
        }
    }
}
