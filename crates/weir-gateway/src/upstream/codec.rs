//! HTTP/1.1 message framing for upstream exchanges (RFC 9112): the request head weir
//! writes, the response head it reads, and how the response body is delimited.
//!
//! Pure functions over byte buffers, so they are unit-, property- and fuzz-tested without a
//! socket. Parsing is `httparse` (hyper's own parser); this module adds what a proxy must
//! decide from the parsed head: which framing wins when an upstream sends conflicting
//! fields (the classic request-smuggling confusion), whether the connection may carry
//! another request, and which interim (1xx) responses to skip.

use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

/// The largest response head accepted (status line and fields).
pub const MAX_HEAD: usize = crate::wire::MAX_HEAD;
/// The most fields a response head may have.
pub const MAX_HEADERS: usize = 128;
/// The longest chunk-size line (size and extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;

/// What is wrong with what an upstream sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The response head does not parse.
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    /// The response head is larger than [`MAX_HEAD`].
    #[error("the response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// `Content-Length` is not one non-negative integer.
    #[error("the response has an invalid Content-Length")]
    ContentLength,
    /// A chunked body is malformed.
    #[error("malformed chunked response body: {0}")]
    Chunk(&'static str),
    /// The upstream answered with a status a proxy cannot pass on (101: weir does not
    /// forward protocol upgrades).
    #[error("the upstream answered {0}, which weir does not forward")]
    Status(u16),
    /// The connection ended before the message did.
    #[error("the upstream closed the connection part-way through the response")]
    Incomplete,
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A parsed final response head.
#[derive(Debug)]
pub struct Head {
    /// Status, version and the end-to-end fields as received. The hop-by-hop fields (RFC
    /// 9110 §7.6.1: `Connection`, `Transfer-Encoding` and the rest of [`crate::hop`]'s list,
    /// and whatever `Connection` names) describe this one connection: they decide
    /// [`Head::framing`] and [`Head::keep_alive`] and are left out, so a proxy passes the
    /// fields on as they are. `Content-Length` is here only when no body follows (a HEAD,
    /// a 304: it tells the size a GET would have had); otherwise the body's exact size is
    /// the length. Parsed by [`parse_head_passing`], the map holds only that length, and
    /// the other fields are in [`Head::passed`].
    pub response: http::Response<()>,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request once this body has been read.
    pub keep_alive: bool,
    /// Set by [`parse_head_passing`]: the end-to-end fields, still as received, that
    /// `response`'s map then lacks.
    pub passed: Option<PassedFields>,
}

/// A response head's end-to-end fields as the upstream sent them, to be written to the
/// client as they are (the same selection [`parse_head`] puts in its map, in the order
/// received, names in the case received).
///
/// A proxy that only passes a response on reads none of its fields, and typing each (a
/// name looked up among the standard ones, a value checked byte by byte and given a
/// reference to the head, a hashed insert) and writing it out again from the map was
/// about 5% of weir's instructions per proxied request. `httparse` has checked every name
/// and value against the same grammar `http` holds them to, so typing them later, for
/// whoever does read them ([`PassedFields::type_into`]), gives what the map would have held
/// (the `upstream_response` fuzz target checks both ways that the two parses agree).
#[derive(Clone)]
pub struct PassedFields {
    head: Bytes,
    /// Each field's name and value, as offsets into `head` (a head passed this way is
    /// shorter than 64 KiB).
    fields: smallvec::SmallVec<[[u16; 4]; 8]>,
}

impl PassedFields {
    /// The fields, name and value, in the order received.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.fields.iter().map(|&[ns, ne, vs, ve]| {
            let at = |a: u16, b: u16| self.head.get(usize::from(a)..usize::from(b));
            (
                at(ns, ne).unwrap_or_default(),
                at(vs, ve).unwrap_or_default(),
            )
        })
    }

    /// Appends the fields to `map`, typed; a field `http` would not hold (none that
    /// `httparse` accepted) is left out.
    pub fn type_into(&self, map: &mut HeaderMap) {
        for &[ns, ne, vs, ve] in &self.fields {
            let name = self
                .head
                .get(usize::from(ns)..usize::from(ne))
                .and_then(|n| HeaderName::from_bytes(n).ok());
            let value = (vs <= ve && usize::from(ve) <= self.head.len())
                .then(|| self.head.slice(usize::from(vs)..usize::from(ve)))
                .and_then(|v| HeaderValue::from_maybe_shared(v).ok());
            if let (Some(name), Some(value)) = (name, value) {
                map.append(name, value);
            }
        }
    }
}

impl std::fmt::Debug for PassedFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.iter()
                    .map(|(n, v)| (String::from_utf8_lossy(n), String::from_utf8_lossy(v))),
            )
            .finish()
    }
}

/// What [`parse_head`] found at the front of the buffer.
// Not boxed: one is returned per response head and matched at once, and a box would be an
// allocation per proxied response to save copying the two small variants.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet: read more.
    Partial,
    /// An interim (1xx) response, consumed: parse again for the final one.
    Interim,
    /// A final response head, consumed from the buffer.
    Final(Head),
}

/// Parses the response head at the front of `buf` to a request made with `method`, and
/// removes it from the buffer once complete. Field values share the buffer's memory.
pub fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Parsed, ProtocolError> {
    parse(buf, method, false)
}

/// As [`parse_head`], for a head to be passed on as it is: the end-to-end fields stay as
/// received, in [`Head::passed`], instead of being typed into the response's map (which
/// holds only a `Content-Length` put back, if any). A head whose `Connection` names other
/// fields, or of 64 KiB or more, is parsed as by [`parse_head`].
pub fn parse_head_passing(buf: &mut BytesMut, method: &Method) -> Result<Parsed, ProtocolError> {
    parse(buf, method, true)
}

fn parse(buf: &mut BytesMut, method: &Method, pass: bool) -> Result<Parsed, ProtocolError> {
    // Left uninitialised: filling 128 empty fields (4 KiB) on every parse cost more than
    // parsing a typical head.
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(ProtocolError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(ProtocolError::HeadTooLarge),
        Err(e) => return Err(ProtocolError::Head(e)),
    };
    if len > MAX_HEAD {
        return Err(ProtocolError::HeadTooLarge);
    }
    let code = parsed.code.unwrap_or(0);
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let status =
        StatusCode::from_u16(code).map_err(|_| ProtocolError::Head(httparse::Error::Status))?;
    if code == 101 {
        return Err(ProtocolError::Status(101));
    }
    let mut spans = crate::wire::Spans::new();
    spans.fill(buf.as_ptr(), parsed.headers);
    let head = buf.split_to(len).freeze();
    if status.is_informational() {
        return Ok(Parsed::Interim);
    }
    // Sized for the upstream's fields alone: the fields weir adds to every response are
    // written straight into the client's response head (`gateway::Stamp`), not put here.
    // One pass over the fields as received: the hop-by-hop ones are read, not stored (a
    // stored field a proxy then removes costs two hashed map operations).
    let mut headers = crate::wire::field_map(if pass { 1 } else { spans.len() });
    let mut controls = Controls::default();
    let mut passed = (pass && head.len() <= usize::from(u16::MAX)).then(|| PassedFields {
        head: head.clone(),
        fields: smallvec::SmallVec::new(),
    });
    for field in spans.raw(&head) {
        if let Some(i) = crate::hop::hop_index_raw(field.name) {
            controls.hop(i, field.value);
            continue;
        }
        if field.name.eq_ignore_ascii_case(b"content-length") {
            // Read, and put back below only where no body will carry the length.
            controls.content_length(field.value);
            continue;
        }
        if let Some(p) = passed.as_mut() {
            // Every offset fits: the head is shorter than 64 KiB.
            p.fields
                .push(field.at().map(|n| u16::try_from(n).unwrap_or(u16::MAX)));
            continue;
        }
        let (name, value) = field
            .typed(&head, crate::wire::Side::Response)
            .map_err(ProtocolError::Head)?;
        headers.append(name, value);
    }
    if controls.lists_fields {
        // Rare: typed after all, so the fields `Connection` names can be taken out.
        if let Some(p) = passed.take() {
            p.type_into(&mut headers);
        }
        // `Connection` named other fields (rare): they are hop-by-hop too.
        let connection = spans
            .raw(&head)
            .filter(|f| crate::hop::hop_index_raw(f.name) == Some(crate::hop::CONNECTION_AT))
            .map(|f| f.value);
        for name in crate::hop::listed_names(connection) {
            headers.remove(name);
        }
    }
    let (framing, mut keep_alive) = framing(method, status, &controls)?;
    if let (Framing::Empty, Length::Valid(n)) = (framing, controls.length) {
        // No body follows (a HEAD, a 304): the length describes the body a GET would have
        // had, and is passed on. Where a body follows, the body's exact size is the length
        // (written by whoever frames the response), and a length beside chunked framing
        // must not be passed on at all.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    keep_alive &= match version {
        Version::HTTP_11 => !controls.connection.close,
        _ => controls.connection.keep_alive,
    };
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Parsed::Final(Head {
        response,
        framing,
        keep_alive,
        passed,
    }))
}

/// What a response head's framing and connection fields say, read as the fields go by.
#[derive(Debug, Default)]
struct Controls {
    /// `Transfer-Encoding` was sent; `Some(true)` when its last coding (over every line)
    /// is `chunked`.
    transfer_encoding: Option<bool>,
    /// `Content-Length`: every value and list member seen so far.
    length: Length,
    /// What `Connection` says of this connection.
    connection: crate::hop::ConnectionOptions,
    /// `Connection` lists a field name other than `keep-alive`.
    lists_fields: bool,
}

/// The `Content-Length` a head declares.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Length {
    /// None sent.
    #[default]
    Absent,
    /// Every value agrees on this.
    Valid(u64),
    /// A value is not a number, or two disagree.
    Invalid,
}

impl Controls {
    /// Notes the hop-by-hop field `HOP_BY_HOP[index]` with `value`.
    fn hop(&mut self, index: usize, value: &[u8]) {
        match index {
            crate::hop::CONNECTION_AT => {
                self.connection.note(value);
                self.lists_fields |= crate::hop::lists_fields(value);
            }
            // A line with no coding leaves the last one as it was.
            crate::hop::TRANSFER_ENCODING_AT => {
                let last = value
                    .split(|b| *b == b',')
                    .map(<[u8]>::trim_ascii)
                    .rfind(|t| !t.is_empty());
                let chunked = match last {
                    Some(t) => t.eq_ignore_ascii_case(b"chunked"),
                    None => self.transfer_encoding.unwrap_or(false),
                };
                self.transfer_encoding = Some(chunked);
            }
            _ => {}
        }
    }

    /// Notes a `Content-Length` value (a list of equal numbers is allowed).
    fn content_length(&mut self, value: &[u8]) {
        let mut length = match self.length {
            Length::Absent => None,
            Length::Valid(n) => Some(n),
            Length::Invalid => return,
        };
        self.length = if crate::wire::add_content_length(&mut length, value) {
            length.map_or(Length::Absent, Length::Valid)
        } else {
            Length::Invalid
        };
    }
}

/// The body framing of a response (RFC 9112 §6.3), and whether it leaves the connection
/// reusable as far as framing goes.
fn framing(
    method: &Method,
    status: StatusCode,
    controls: &Controls,
) -> Result<(Framing, bool), ProtocolError> {
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, true));
    }
    if *method == Method::CONNECT && status.is_success() {
        // A tunnel: weir does not forward one, and the connection is no longer HTTP.
        return Ok((Framing::Empty, false));
    }
    if let Some(chunked_last) = controls.transfer_encoding {
        // Transfer-Encoding overrides Content-Length; a message with both is a smuggling
        // attempt or a broken upstream, so its connection is not reused.
        let both = controls.length != Length::Absent;
        return Ok(if chunked_last {
            (Framing::Chunked, !both)
        } else {
            (Framing::UntilClose, false)
        });
    }
    match controls.length {
        Length::Invalid => Err(ProtocolError::ContentLength),
        Length::Valid(0) => Ok((Framing::Empty, true)),
        Length::Valid(n) => Ok((Framing::Length(n), true)),
        Length::Absent => Ok((Framing::UntilClose, false)),
    }
}

/// How weir frames a request body it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body and no framing field (e.g. a GET).
    None,
    /// `Content-Length` (0 for an empty POST, PUT or PATCH).
    Length(u64),
    /// `Transfer-Encoding: chunked`, for a body of unknown length.
    Chunked,
}

/// Field lines ready to go into a request head (`name: value\r\n` each), so that writing
/// them is one copy. Fields weir sends on every request are kept this way: a key's
/// identity fields are written out once, when the configuration is loaded, instead of
/// once per request, and the fields made for one request (its id, trace context and
/// forwarding fields) need no field value of their own (no allocation, no reference
/// count).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct FieldLines(Vec<u8>);

impl FieldLines {
    /// No fields.
    pub const fn new() -> FieldLines {
        FieldLines(Vec::new())
    }

    /// No fields yet, with room for `bytes` bytes of them.
    pub fn with_capacity(bytes: usize) -> FieldLines {
        FieldLines(Vec::with_capacity(bytes))
    }

    /// Adds a field.
    pub fn push(&mut self, name: &HeaderName, value: &HeaderValue) {
        crate::wire::field(&mut self.0, name.as_str().as_bytes(), value.as_bytes());
    }

    /// Adds a field named `name` (a lowercase field name) whose value is `parts` one after
    /// the other (a list built in place, such as a forwarding chain). Each part is text weir
    /// wrote itself or took from a field value, so the value is one a field may hold
    /// (checked in debug builds). It writes the line itself rather than through
    /// [`crate::wire::field`]: routing `field` through a list of parts cost about 250
    /// instructions per proxied request (callgrind), as `field` writes some 26 lines each.
    pub(crate) fn push_parts(&mut self, name: &[u8], parts: &[&[u8]]) {
        debug_assert!(HeaderName::from_bytes(name).is_ok_and(|n| n.as_str().as_bytes() == name));
        debug_assert!(HeaderValue::from_bytes(&parts.concat()).is_ok());
        self.0
            .reserve(name.len() + 4 + parts.iter().map(|p| p.len()).sum::<usize>());
        self.0.extend_from_slice(name);
        self.0.extend_from_slice(b": ");
        for part in parts {
            self.0.extend_from_slice(part);
        }
        self.0.extend_from_slice(b"\r\n");
    }

    /// The lines, as they go on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for FieldLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// How a proxy changes a request's fields on their way to the upstream, applied while the
/// head is written: the client's field map is read, never edited (each edit of a map is a
/// hashed lookup, and a map that grows is rebuilt).
#[derive(Clone, Copy)]
pub struct Rewrite<'a> {
    /// The client's fields that are not forwarded (replaced below, or private).
    pub skip: fn(&HeaderName) -> bool,
    /// More client fields that are not forwarded, named by configuration (usually none).
    pub strip: &'a [HeaderName],
    /// Fields written after the client's, in order.
    pub add: [&'a FieldLines; 2],
}

/// No fields, for [`Rewrite::NONE`].
static NO_LINES: FieldLines = FieldLines::new();

impl Rewrite<'_> {
    /// Forward every field as it is.
    pub const NONE: Rewrite<'static> = Rewrite {
        skip: |_| false,
        strip: &[],
        add: [&NO_LINES, &NO_LINES],
    };
}

impl std::fmt::Debug for Rewrite<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewrite")
            .field("add", &self.add)
            .finish_non_exhaustive()
    }
}

/// Appends a request head to `out`. The framing fields come from `framing` alone — any
/// `Content-Length` or `Transfer-Encoding` in `headers` is left out, so the upstream can
/// never see framing that disagrees with the bytes that follow — and `host` is written
/// when `headers` has no `Host` (or `rewrite` skips it). `rewrite` drops and adds fields.
pub fn write_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    host: &str,
    headers: &HeaderMap,
    rewrite: &Rewrite<'_>,
    framing: RequestFraming,
) {
    fn field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
        crate::wire::field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if (rewrite.skip)(&header::HOST) || !headers.contains_key(header::HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || (rewrite.skip)(name)
            || rewrite.strip.contains(name)
        {
            continue;
        }
        field(out, name, value);
    }
    for lines in rewrite.add {
        out.extend_from_slice(lines.as_bytes());
    }
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// One step of a chunked body.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The body (and its trailer section, which is discarded) is complete.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers(usize),
    Done,
}

/// An incremental decoder of `Transfer-Encoding: chunked` (RFC 9112 §7.1): fed whatever
/// has arrived, it hands out data as soon as it is there and never needs the whole body.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
        }
    }
}

impl ChunkedDecoder {
    /// The next step from the front of `buf` (consumed), or `None` when more bytes are
    /// needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, ProtocolError> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(Some(Decoded::End)),
                ChunkState::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(None);
                    };
                    let size = parse_chunk_size(&line)?;
                    self.state = if size == 0 {
                        ChunkState::Trailers(0)
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(mut left) => {
                    let Some(data) = crate::wire::take(buf, &mut left) else {
                        return Ok(None);
                    };
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Some(Decoded::Data(data)));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|b| *b != b'\r') {
                            return Err(ProtocolError::Chunk("chunk data not followed by CRLF"));
                        }
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ProtocolError::Chunk("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers(seen) => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(None);
                    };
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                        return Ok(Some(Decoded::End));
                    }
                    let seen = seen + line.len();
                    if seen > MAX_HEAD {
                        return Err(ProtocolError::Chunk("trailer section too large"));
                    }
                    self.state = ChunkState::Trailers(seen);
                }
            }
        }
    }

    /// Whether the terminating chunk and trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// Takes one CRLF-terminated line (without the CRLF) from the front of `buf`.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, ProtocolError> {
    let Some(lf) = buf.iter().take(MAX_LINE + 2).position(|b| *b == b'\n') else {
        if buf.len() > MAX_LINE + 1 {
            return Err(ProtocolError::Chunk("line too long"));
        }
        return Ok(None);
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(ProtocolError::Chunk("line not terminated by CRLF"));
    }
    let mut line = buf.split_to(lf + 1);
    line.truncate(lf - 1);
    Ok(Some(line))
}

/// `chunk-size [ chunk-ext ]`: hex digits, then optionally whitespace and `;` extensions
/// (ignored).
fn parse_chunk_size(line: &[u8]) -> Result<u64, ProtocolError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(ProtocolError::Chunk("no chunk size"));
    }
    if digits > 15 {
        return Err(ProtocolError::Chunk("chunk size too large"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(ProtocolError::Chunk("invalid chunk size"));
    }
    Ok(line[..digits].iter().fold(0u64, |n, b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        (n << 4) | u64::from(d)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The framing rules read from a whole field map, as weir did before it read them
    /// while parsing: the reference model of the property test below.
    mod reference {
        use super::super::{Framing, ProtocolError};
        use crate::wire::decimal as parse_decimal;
        use http::{header, HeaderMap, HeaderName, Method, StatusCode};

        pub fn framing(
            method: &Method,
            status: StatusCode,
            headers: &HeaderMap,
        ) -> Result<(Framing, bool), ProtocolError> {
            if *method == Method::HEAD
                || status == StatusCode::NO_CONTENT
                || status == StatusCode::NOT_MODIFIED
            {
                return Ok((Framing::Empty, true));
            }
            if headers.contains_key(header::TRANSFER_ENCODING) {
                let chunked_last = headers
                    .get_all(header::TRANSFER_ENCODING)
                    .iter()
                    .flat_map(|v| v.as_bytes().split(|b| *b == b','))
                    .map(<[u8]>::trim_ascii)
                    .rfind(|t| !t.is_empty())
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
                let both = headers.contains_key(header::CONTENT_LENGTH);
                return Ok(if chunked_last {
                    (Framing::Chunked, !both)
                } else {
                    (Framing::UntilClose, false)
                });
            }
            let mut length: Option<u64> = None;
            for value in headers.get_all(header::CONTENT_LENGTH) {
                for part in value.as_bytes().split(|b| *b == b',') {
                    let n = parse_decimal(part.trim_ascii()).ok_or(ProtocolError::ContentLength)?;
                    if length.is_some_and(|l| l != n) {
                        return Err(ProtocolError::ContentLength);
                    }
                    length = Some(n);
                }
            }
            Ok(match length {
                Some(0) => (Framing::Empty, true),
                Some(n) => (Framing::Length(n), true),
                None => (Framing::UntilClose, false),
            })
        }

        /// The length every `Content-Length` value agrees on, if they do.
        pub fn length(headers: &HeaderMap) -> Option<u64> {
            let mut length = None;
            for value in headers.get_all(header::CONTENT_LENGTH) {
                for part in value.as_bytes().split(|b| *b == b',') {
                    let n = parse_decimal(part.trim_ascii())?;
                    if length.is_some_and(|l| l != n) {
                        return None;
                    }
                    length = Some(n);
                }
            }
            length
        }

        pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
            headers
                .get_all(name)
                .iter()
                .flat_map(|v| v.as_bytes().split(|b| *b == b','))
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        }
    }

    fn head(raw: &str, method: &Method) -> Result<Parsed, ProtocolError> {
        parse_head(&mut BytesMut::from(raw), method)
    }

    fn final_head(raw: &str, method: &Method) -> Head {
        match head(raw, method) {
            Ok(Parsed::Final(h)) => h,
            other => panic!("not a final head: {other:?}"),
        }
    }

    #[test]
    fn a_head_is_consumed_and_the_body_stays() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: b\r\n\r\nok");
        let Ok(Parsed::Final(h)) = parse_head(&mut buf, &Method::GET) else {
            panic!("final");
        };
        assert_eq!(h.framing, Framing::Length(2));
        assert!(h.keep_alive);
        assert_eq!(h.response.headers()["x-a"], "b");
        assert_eq!(&buf[..], b"ok");
    }

    #[test]
    fn a_partial_head_asks_for_more_and_consumes_nothing() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\ncontent-le");
        assert!(matches!(
            parse_head(&mut buf, &Method::GET),
            Ok(Parsed::Partial)
        ));
        assert_eq!(buf.len(), 27);
    }

    #[test]
    fn interim_responses_are_skipped() {
        let mut buf =
            BytesMut::from("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n");
        assert!(matches!(
            parse_head(&mut buf, &Method::POST),
            Ok(Parsed::Interim)
        ));
        let Ok(Parsed::Final(h)) = parse_head(&mut buf, &Method::POST) else {
            panic!("final");
        };
        assert_eq!(h.response.status(), 204);
        assert_eq!(h.framing, Framing::Empty);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let get = &Method::GET;
        // (response head, request method, framing, connection reusable)
        let cases = [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                &Method::HEAD,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
                get,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                get,
                Framing::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
                get,
                Framing::UntilClose,
                false,
            ),
            // Both: Transfer-Encoding wins and the connection is not reused.
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
                get,
                Framing::Chunked,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n",
                get,
                Framing::Length(7),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                get,
                Framing::Empty,
                true,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", get, Framing::UntilClose, false),
            (
                "HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 1\r\n\r\n",
                get,
                Framing::Length(1),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
                get,
                Framing::Length(1),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n",
                get,
                Framing::Length(1),
                true,
            ),
        ];
        for (raw, method, framing, keep_alive) in cases {
            let h = final_head(raw, method);
            assert_eq!((h.framing, h.keep_alive), (framing, keep_alive), "{raw:?}");
        }
    }

    #[test]
    fn conflicting_or_malformed_lengths_are_errors() {
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551616\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length:\r\n\r\n",
        ] {
            assert_eq!(
                head(raw, &Method::GET).err(),
                Some(ProtocolError::ContentLength),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn bad_heads_are_typed_errors() {
        assert!(matches!(
            head("HTTP/1.1 2000 OK\r\n\r\n", &Method::GET),
            Err(ProtocolError::Head(_))
        ));
        assert!(matches!(
            head("SMTP ready\r\n\r\n", &Method::GET),
            Err(ProtocolError::Head(_))
        ));
        assert_eq!(
            head("HTTP/1.1 101 Switching Protocols\r\n\r\n", &Method::GET).err(),
            Some(ProtocolError::Status(101))
        );
        let big = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD + 1));
        assert_eq!(
            head(&big, &Method::GET).err(),
            Some(ProtocolError::HeadTooLarge)
        );
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "x: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(
            head(&many, &Method::GET).err(),
            Some(ProtocolError::HeadTooLarge)
        );
    }

    #[test]
    fn the_request_head_owns_its_framing() {
        /// The head written for these arguments, as text.
        fn head(
            method: Method,
            target: &str,
            host: &str,
            headers: &HeaderMap,
            rewrite: &Rewrite<'_>,
            framing: RequestFraming,
        ) -> String {
            let mut out = Vec::new();
            write_request_head(&mut out, &method, target, host, headers, rewrite, framing);
            String::from_utf8_lossy(&out).into_owned()
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("x-request-id", HeaderValue::from_static("abc"));
        let none = Rewrite::NONE;
        assert_eq!(
            head(Method::POST, "/v1/x?q=1", "up:8080", &headers, &none, RequestFraming::Length(3)),
            "POST /v1/x?q=1 HTTP/1.1\r\nhost: up:8080\r\nx-request-id: abc\r\ncontent-length: 3\r\n\r\n"
        );
        headers.insert(header::HOST, HeaderValue::from_static("given"));
        assert_eq!(
            head(
                Method::GET,
                "/",
                "up",
                &headers,
                &none,
                RequestFraming::None
            ),
            "GET / HTTP/1.1\r\nx-request-id: abc\r\nhost: given\r\n\r\n"
        );
        // A rewrite drops fields (the client's Host among them) and adds its own, last.
        let mut first = FieldLines::new();
        first.push(
            &HeaderName::from_static("x-a"),
            &HeaderValue::from_static("1"),
        );
        let mut second = FieldLines::new();
        second.push_parts(b"x-b", &[b"2", b", ", b"3"]);
        let rewrite = Rewrite {
            skip: |n| n == header::HOST || n.as_str() == "x-request-id",
            strip: &[],
            add: [&first, &second],
        };
        assert_eq!(
            head(
                Method::GET,
                "/",
                "up",
                &headers,
                &rewrite,
                RequestFraming::None
            ),
            "GET / HTTP/1.1\r\nhost: up\r\nx-a: 1\r\nx-b: 2, 3\r\n\r\n"
        );
    }

    fn decode_all(wire: &[u8], splits: &[usize]) -> Result<Vec<u8>, ProtocolError> {
        let mut dec = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        let mut cuts: Vec<usize> = splits.iter().map(|s| s % (wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        for cut in cuts {
            buf.extend_from_slice(&wire[fed..cut.max(fed)]);
            fed = cut.max(fed);
            while let Some(step) = dec.decode(&mut buf)? {
                match step {
                    Decoded::Data(d) => out.extend_from_slice(&d),
                    Decoded::End => return Ok(out),
                }
            }
        }
        Err(ProtocolError::Incomplete)
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let wire = b"4;name=value\r\nWiki\r\n5 \r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nx-checksum: 1\r\n\r\n";
        assert_eq!(
            decode_all(wire, &[]).expect("decodes"),
            b"Wikipedia in\r\n\r\nchunks."
        );
        for cut in 0..wire.len() {
            assert_eq!(
                decode_all(wire, &[cut, cut + 3]).expect("decodes in parts"),
                b"Wikipedia in\r\n\r\nchunks."
            );
        }
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for wire in [
            &b"zz\r\n"[..],
            b"4\r\nWikiXX0\r\n\r\n",
            b"4\nWiki\r\n0\r\n\r\n",
            b"1000000000000000\r\n",
            b"4 x\r\nWiki\r\n0\r\n\r\n",
        ] {
            assert!(
                matches!(decode_all(wire, &[]), Err(ProtocolError::Chunk(_))),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let long = format!("1;{}\r\n", "e".repeat(MAX_LINE + 10));
        assert!(matches!(
            decode_all(long.as_bytes(), &[]),
            Err(ProtocolError::Chunk(_))
        ));
    }

    proptest::proptest! {
        /// Any data, cut into any chunk sizes and delivered in any pieces, decodes to itself
        /// (the reference model: the concatenation of the chunks).
        #[test]
        fn chunked_round_trip(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..2000),
            sizes in proptest::collection::vec(1usize..300, 1..20),
            splits in proptest::collection::vec(0usize..5000, 0..8),
            upper in proptest::bool::ANY,
        ) {
            let mut wire = Vec::new();
            let mut rest = &data[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = sizes[i % sizes.len()].min(rest.len());
                let size = if upper { format!("{n:X}") } else { format!("{n:x}") };
                wire.extend_from_slice(size.as_bytes());
                if i % 3 == 1 {
                    wire.extend_from_slice(b";ext=1");
                }
                wire.extend_from_slice(b"\r\n");
                wire.extend_from_slice(&rest[..n]);
                wire.extend_from_slice(b"\r\n");
                rest = &rest[n..];
                i += 1;
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            proptest::prop_assert_eq!(decode_all(&wire, &splits).expect("decodes"), data);
        }

        /// Whatever fields the client sent, the head written with a rewrite parses, carries
        /// exactly one `Host`, none of the skipped fields, each added field once and after
        /// the client's, every other client field unchanged, and only the framing asked for
        /// (the reference model: the list of fields filtered and extended by hand).
        #[test]
        fn rewritten_heads_hold_exactly_the_fields_meant(
            fields in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "host", "content-length", "transfer-encoding", "x-skip-a", "x-skip-b",
                        "x-keep", "accept", "x-added", "x-strip",
                    ]),
                    "[a-z0-9 ,=;]{0,12}",
                ),
                0..12,
            ),
            added in proptest::collection::vec("[a-z0-9]{1,8}", 0..3),
            length in proptest::option::of(0u64..100_000),
        ) {
            let mut headers = HeaderMap::new();
            for (n, v) in &fields {
                headers.append(*n, HeaderValue::from_str(v.trim()).expect("value"));
            }
            let mut adds = FieldLines::new();
            for v in &added {
                adds.push(&HeaderName::from_static("x-added"), &HeaderValue::from_str(v).expect("value"));
            }
            let rewrite = Rewrite {
                skip: |n| *n == header::HOST || n.as_str().starts_with("x-skip-") || n.as_str() == "x-added",
                strip: &[HeaderName::from_static("x-strip")],
                add: [&adds, Rewrite::NONE.add[1]],
            };
            let framing = length.map_or(RequestFraming::Chunked, RequestFraming::Length);
            let mut out = Vec::new();
            write_request_head(&mut out, &Method::POST, "/p", "up:1", &headers, &rewrite, framing);

            let mut parsed_fields = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut parsed_fields);
            let done = req.parse(&out).expect("the head parses");
            proptest::prop_assert_eq!(done, httparse::Status::Complete(out.len()));
            let got: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
                .collect();
            let mut want: Vec<(String, String)> = vec![("host".into(), "up:1".into())];
            for (n, v) in headers.iter() {
                let n = n.as_str();
                if n == "host" || n.starts_with("x-skip-") || n == "x-added" || n == "x-strip"
                    || n == "content-length" || n == "transfer-encoding"
                {
                    continue;
                }
                want.push((n.to_owned(), v.to_str().expect("ascii").to_owned()));
            }
            for v in &added {
                want.push(("x-added".to_owned(), v.trim().to_owned()));
            }
            match framing {
                RequestFraming::Length(n) => want.push(("content-length".into(), n.to_string())),
                RequestFraming::Chunked => want.push(("transfer-encoding".into(), "chunked".into())),
                RequestFraming::None => {}
            }
            proptest::prop_assert_eq!(got, want);
        }

        /// A parsed head's fields are the upstream's fields with the hop-by-hop ones
        /// stripped and `Content-Length` only where no body follows, and its framing and
        /// reuse are what the whole field map says (the reference model: every field in a
        /// map, read there with `get_all`, then `hop::strip`).
        #[test]
        fn heads_read_their_hop_by_hop_fields_as_the_full_map_does(
            fields in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "Connection", "connection", "Keep-Alive", "TE", "Transfer-Encoding",
                        "transfer-encoding", "Content-Length", "content-length", "Upgrade",
                        "Proxy-Connection", "Trailer", "X-Private", "x-kept", "close",
                        "Content-Type",
                    ]),
                    proptest::sample::select(vec![
                        "", "chunked", "gzip, chunked", "chunked, gzip", " , ", "Chunked",
                        "close", "keep-alive", "Keep-Alive, x-private", "close, te", "x-kept",
                        "0", "7", "7, 7", "3, 4", "-1", "text/plain",
                    ]),
                ),
                0..8,
            ),
            http10 in proptest::bool::ANY,
            head_method in proptest::bool::ANY,
        ) {
            let version = if http10 { "1.0" } else { "1.1" };
            let mut raw = format!("HTTP/{version} 200 OK\r\n");
            for (n, v) in &fields {
                raw.push_str(&format!("{n}: {v}\r\n"));
            }
            raw.push_str("\r\n");
            let method = if head_method { Method::HEAD } else { Method::GET };
            let mut all = HeaderMap::new();
            for (n, v) in &fields {
                all.append(
                    HeaderName::from_bytes(n.as_bytes()).expect("name"),
                    HeaderValue::from_str(v.trim()).expect("value"),
                );
            }
            let want = reference::framing(&method, StatusCode::OK, &all).map(|(f, reuse)| {
                let keep = if http10 {
                    reference::has_token(&all, header::CONNECTION, "keep-alive")
                } else {
                    !reference::has_token(&all, header::CONNECTION, "close")
                };
                (f, reuse && keep)
            });
            let mut stripped = all.clone();
            crate::hop::strip(&mut stripped);
            stripped.remove(header::CONTENT_LENGTH);
            if let (Ok((Framing::Empty, _)), Some(n)) = (&want, reference::length(&all)) {
                stripped.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            match head(&raw, &method) {
                Ok(Parsed::Final(h)) => {
                    proptest::prop_assert_eq!(Ok((h.framing, h.keep_alive)), want.clone());
                    proptest::prop_assert_eq!(h.response.headers(), &stripped);
                    proptest::prop_assert!(h.passed.is_none());
                }
                Ok(_) => proptest::prop_assert!(false, "a whole head"),
                Err(e) => proptest::prop_assert_eq!(Err(e), want.clone()),
            }
            // Passed on as received, the same fields once typed, and the same framing.
            match parse_head_passing(&mut BytesMut::from(raw.as_str()), &method) {
                Ok(Parsed::Final(h)) => {
                    proptest::prop_assert_eq!(Ok((h.framing, h.keep_alive)), want);
                    let mut typed = h.response.headers().clone();
                    if let Some(p) = &h.passed {
                        p.type_into(&mut typed);
                    }
                    proptest::prop_assert_eq!(&typed, &stripped);
                }
                Ok(_) => proptest::prop_assert!(false, "a whole head"),
                Err(e) => proptest::prop_assert_eq!(Err(e), want),
            }
        }

        /// Content-Length parses exactly the decimal numbers a u64 holds.
        #[test]
        fn content_length_matches_the_reference(n in proptest::num::u64::ANY, junk in "[ +-]?") {
            let raw = format!("HTTP/1.1 200 OK\r\ncontent-length: {junk}{n}\r\n\r\n");
            let got = head(&raw, &Method::GET).map(|p| match p {
                Parsed::Final(h) => h.framing,
                _ => Framing::Empty,
            });
            let want = if junk.trim().is_empty() {
                Ok(if n == 0 { Framing::Empty } else { Framing::Length(n) })
            } else {
                Err(ProtocolError::ContentLength)
            };
            proptest::prop_assert_eq!(got, want);
        }
    }
}
