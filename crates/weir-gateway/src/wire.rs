//! HTTP/1.1 wire pieces both directions share: weir's server side ([`crate::h1`]) and its
//! upstream client ([`crate::upstream`]) write fields and chunks, and read heads and
//! bodies, the same way.

use crate::upstream::codec::{ChunkedDecoder, Decoded, ProtocolError};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::SizeHint;

/// Appends one `name: value` field line (room for it made once, not by each part).
/// Inlined: most names are constants, and the copies of constant pieces then need no
/// call to `memcpy` each.
#[inline(always)]
pub(crate) fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `1*DIGIT` as a u64: no sign, no spaces, no overflow.
pub(crate) fn decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Adds what a `Content-Length` value says to `length` (what earlier values said): a list
/// of equal numbers is one length (RFC 9110 §8.6). False when a member is not a number or
/// disagrees with another: the message's length cannot be known.
pub(crate) fn add_content_length(length: &mut Option<u64>, value: &[u8]) -> bool {
    for part in value.split(|b| *b == b',') {
        match decimal(part.trim_ascii()) {
            Some(n) if length.is_none_or(|l| l == n) => *length = Some(n),
            _ => return false,
        }
    }
    true
}

/// Appends the line that opens a chunk of `len` (> 0) bytes: the size in hex, written
/// without the formatting machinery.
pub(crate) fn chunk_start(out: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// What closes a chunk.
pub(crate) const CHUNK_END: &[u8] = b"\r\n";
/// The last chunk and the end of a chunked body (no trailers).
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Takes up to `left` body bytes from the front of `buf` (`None`: nothing buffered), and
/// counts them off `left`.
pub(crate) fn take(buf: &mut BytesMut, left: &mut u64) -> Option<Bytes> {
    if buf.is_empty() || *left == 0 {
        return None;
    }
    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
    *left -= n as u64;
    Some(buf.split_to(n).freeze())
}

/// What is left of a body, as its framing says: the part of reading a body that is the same
/// on both sides of weir (a request body on the server side, a response body from an
/// upstream).
#[derive(Debug)]
pub(crate) enum Remaining {
    /// This many more bytes.
    Length(u64),
    /// Chunks, until the last one.
    Chunked(ChunkedDecoder),
    /// Everything until the peer closes (only an upstream's response body).
    UntilClose,
    /// Nothing.
    Done,
}

impl Remaining {
    /// The next piece of body from `buf`: `Ok(None)` when more must be read first,
    /// `Ok(Some(None))` at the end. After a piece, [`Remaining::is_over`] says whether it
    /// was the last (the reader can go back at once).
    pub(crate) fn next(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<Option<Bytes>>, ProtocolError> {
        let piece = match self {
            Remaining::Done | Remaining::Length(0) => Some(None),
            Remaining::Length(left) => take(buf, left).map(Some),
            Remaining::Chunked(decoder) => match decoder.decode(buf)? {
                None => None,
                Some(Decoded::Data(data)) => Some(Some(data)),
                Some(Decoded::End) => Some(None),
            },
            Remaining::UntilClose => (!buf.is_empty()).then(|| Some(buf.split().freeze())),
        };
        if piece == Some(None) {
            *self = Remaining::Done;
        }
        Ok(piece)
    }

    /// Whether nothing is left.
    pub(crate) fn is_over(&self) -> bool {
        matches!(self, Remaining::Done | Remaining::Length(0))
    }

    /// The size still to come, where the framing knows it.
    pub(crate) fn size_hint(&self) -> SizeHint {
        match self {
            Remaining::Length(n) => SizeHint::with_exact(*n),
            Remaining::Done => SizeHint::with_exact(0),
            Remaining::Chunked(_) | Remaining::UntilClose => SizeHint::default(),
        }
    }
}

/// Where each field of a head `httparse` parsed lies in its buffer, so that once the head
/// is split off and frozen the values can share its memory instead of being copied.
/// Offsets are `u32`: a head is at most [`MAX_HEAD`] bytes, and the spans of a typical head
/// stay on the stack in half the bytes `usize`s take (they are moved, and copied, whole).
pub(crate) struct Spans(smallvec::SmallVec<[[u32; 4]; 24]>);

impl Spans {
    /// No spans, yet: [`Spans::fill`] puts them in place (filled where they stay rather
    /// than returned, so their 392 bytes are not copied on the way out).
    pub(crate) fn new() -> Spans {
        Spans(smallvec::SmallVec::new())
    }

    /// The spans of `fields`, parsed from the buffer starting at `base` (a head no longer
    /// than [`MAX_HEAD`]; were an offset past `u32`, its field would read as an error).
    pub(crate) fn fill(&mut self, base: *const u8, fields: &[httparse::Header<'_>]) {
        let base = base as usize;
        let at = |p: usize| u32::try_from(p).unwrap_or(u32::MAX);
        self.0.clear();
        self.0.extend(fields.iter().map(|h| {
            let n = h.name.as_ptr() as usize - base;
            let v = h.value.as_ptr() as usize - base;
            [at(n), at(n + h.name.len()), at(v), at(v + h.value.len())]
        }));
    }

    /// How many fields.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The fields of a request head, read from `head` (the frozen head the spans were
    /// taken in); an error for a name or value `http` does not accept.
    pub(crate) fn fields<'a>(
        &'a self,
        head: &'a Bytes,
    ) -> impl Iterator<Item = Result<(HeaderName, HeaderValue), httparse::Error>> + 'a {
        self.raw(head).map(move |f| f.typed(head, Side::Request))
    }

    /// The fields as the bytes received, for a reader that looks at some before it builds
    /// any map.
    pub(crate) fn raw<'a>(&'a self, head: &'a Bytes) -> impl Iterator<Item = RawField<'a>> + 'a {
        self.0
            .iter()
            .enumerate()
            .map(move |(index, &[ns, ne, vs, ve])| {
                let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
                RawField {
                    name: head.get(ns..ne).unwrap_or_default(),
                    value: head.get(vs..ve).unwrap_or_default(),
                    name_at: (ns, ne),
                    value_at: (vs, ve),
                    index,
                }
            })
    }
}

/// One field of a parsed head, as received.
pub(crate) struct RawField<'a> {
    /// The name, in the case it was sent in.
    pub(crate) name: &'a [u8],
    /// The value.
    pub(crate) value: &'a [u8],
    /// Where the name lies in the head.
    name_at: (usize, usize),
    /// Where the value lies in the head, so a typed value can share the head's memory.
    value_at: (usize, usize),
    /// Its place among the head's fields (0 for the first).
    index: usize,
}

impl RawField<'_> {
    /// Where the name and the value lie in the head they were read from.
    pub(crate) fn at(&self) -> [usize; 4] {
        let ((ns, ne), (vs, ve)) = (self.name_at, self.value_at);
        [ns, ne, vs, ve]
    }

    /// The field as a typed name and a value sharing `head` (the head it was read from, a
    /// `side` head); an error for a name or value `http` does not accept.
    pub(crate) fn typed(
        &self,
        head: &Bytes,
        side: Side,
    ) -> Result<(HeaderName, HeaderValue), httparse::Error> {
        let name = header_name(side, self.index, self.name).ok_or(httparse::Error::HeaderName)?;
        let (start, end) = self.value_at;
        if start > end || end > head.len() {
            return Err(httparse::Error::HeaderValue);
        }
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| httparse::Error::HeaderValue)?;
        Ok((name, value))
    }
}

/// Which kind of head a field comes from: request heads and response heads each have their
/// own remembered names (see [`header_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// A client's request.
    Request,
    /// An upstream's response.
    Response,
}

/// The typed name of the field at `index` of a `side` head, sent as `raw`; `None` for a name
/// `http` does not accept.
///
/// The heads one thread reads are alike: a client sends the same fields in the same order
/// on every request of its connection, and an upstream answers with the same fields in the
/// same order. So each thread remembers, per side and per place in the head, the last name
/// it typed there, as received, and the typed name; a name sent exactly as last time at the
/// same place is the remembered one, and is not looked up among the standard names, or
/// lower-cased and copied, again. Anything else is typed as usual and remembered in its
/// place. What is remembered is bounded: the first [`NAME_SLOTS`] places, names up to
/// [`NAME_BYTES`] long, in fixed slots (no allocation when a slot changes hands).
fn header_name(side: Side, index: usize, raw: &[u8]) -> Option<HeaderName> {
    if index >= NAME_SLOTS || raw.len() > NAME_BYTES {
        return HeaderName::from_bytes(raw).ok();
    }
    let typed = NAMES.try_with(|names| {
        let mut names = names.borrow_mut();
        let Some(slot) = names
            .get_mut(side as usize)
            .and_then(|slots| slots.get_mut(index))
        else {
            return HeaderName::from_bytes(raw).ok();
        };
        if let Some(known) = slot {
            if known.raw.get(..known.len) == Some(raw) {
                return Some(known.name.clone());
            }
        }
        // `None` only for a name `http` refuses: a name that cannot be remembered is
        // still typed.
        let name = HeaderName::from_bytes(raw).ok()?;
        let mut copy = [0u8; NAME_BYTES];
        if let Some(to) = copy.get_mut(..raw.len()) {
            to.copy_from_slice(raw);
            *slot = Some(NameSlot {
                len: raw.len(),
                raw: copy,
                name: name.clone(),
            });
        }
        Some(name)
    });
    // At thread exit the slots may be gone: the name is then typed as usual.
    typed.unwrap_or_else(|_| HeaderName::from_bytes(raw).ok())
}

/// A name as received, and as typed.
struct NameSlot {
    len: usize,
    raw: [u8; NAME_BYTES],
    name: HeaderName,
}

/// How many places of a head have a remembered name, and how long a remembered name may be.
const NAME_SLOTS: usize = 16;
const NAME_BYTES: usize = 32;

thread_local! {
    static NAMES: std::cell::RefCell<[[Option<NameSlot>; NAME_SLOTS]; 2]> =
        std::cell::RefCell::new(std::array::from_fn(|_| std::array::from_fn(|_| None)));
}

/// A field map with room for `fields` fields, from this thread's spares when it has one.
///
/// Each proxied exchange builds two maps (the client's request, the upstream's response)
/// and drops them once their head is written: two allocations each. Maps given back with
/// [`recycle`] are emptied and reused instead, their memory kept.
pub(crate) fn field_map(fields: usize) -> HeaderMap {
    let spare = SPARE_MAPS.with_borrow_mut(Vec::pop);
    match spare {
        Some(mut map) => {
            map.reserve(fields);
            map
        }
        None => HeaderMap::with_capacity(fields),
    }
}

/// Gives a map whose fields are no longer needed back to this thread's spares (a small
/// one: a map grown by an unusually large head is dropped, not kept).
pub(crate) fn recycle(mut map: HeaderMap) {
    if map.capacity() > MAX_SPARE_CAPACITY {
        return;
    }
    map.clear();
    // At thread exit the spares may be gone: the map is then simply dropped.
    let _ = SPARE_MAPS.try_with(|spares| {
        let mut spares = spares.borrow_mut();
        if spares.len() < MAX_SPARE_MAPS {
            spares.push(map);
        }
    });
}

/// The most spare maps a thread keeps, and the largest capacity a kept one may have.
const MAX_SPARE_MAPS: usize = 16;
const MAX_SPARE_CAPACITY: usize = 64;

thread_local! {
    static SPARE_MAPS: std::cell::RefCell<Vec<HeaderMap>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The longest head (request or response) either side accepts.
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// Whether `buf`, in which no whole head was found among its first `seen` bytes, may now
/// hold one: a head ends with an empty line (`\n\n` or `\n\r\n`, `httparse` accepting bare
/// LF), and past [`MAX_HEAD`] it is refused. Only the bytes since `seen` (and the two
/// before, for an end split across reads) are looked at, so a head that arrives a byte at
/// a time costs linear work, not a parse per byte.
pub(crate) fn may_end(buf: &[u8], seen: usize) -> bool {
    if buf.len() > MAX_HEAD {
        return true;
    }
    let new = buf.get(seen.saturating_sub(2)..).unwrap_or(&[]);
    new.iter().enumerate().any(|(i, &b)| {
        b == b'\n'
            && match new.get(i + 1) {
                Some(b'\n') => true,
                Some(b'\r') => new.get(i + 2) == Some(&b'\n'),
                _ => false,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;
    use proptest::prelude::*;

    #[test]
    fn a_recycled_map_comes_back_empty_with_its_memory() {
        let mut map = field_map(4);
        map.insert("x-a", HeaderValue::from_static("1"));
        map.append("x-a", HeaderValue::from_static("2"));
        let capacity = map.capacity();
        recycle(map);
        let again = field_map(2);
        assert!(again.is_empty(), "no field survives");
        assert_eq!(again.capacity(), capacity, "the same memory");
        // A map grown past the limit is not kept.
        let mut big = HeaderMap::with_capacity(4);
        for i in 0..MAX_SPARE_CAPACITY + 1 {
            big.insert(
                HeaderName::from_bytes(format!("x-{i}").as_bytes()).expect("name"),
                HeaderValue::from_static("v"),
            );
        }
        recycle(big);
        assert!(
            field_map(1).capacity() < MAX_SPARE_CAPACITY,
            "a fresh map instead"
        );
    }

    #[test]
    fn take_counts_off_what_it_takes() {
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        let mut left = 4;
        assert_eq!(take(&mut buf, &mut left).as_deref(), Some(&b"abcd"[..]));
        assert_eq!((left, &buf[..]), (0, &b"ef"[..]));
        assert_eq!(take(&mut buf, &mut left), None);
        let mut left = 10;
        assert_eq!(take(&mut buf, &mut left).as_deref(), Some(&b"ef"[..]));
        assert_eq!((left, buf.is_empty()), (8, true));
        assert_eq!(take(&mut buf, &mut left), None);
    }

    #[test]
    fn what_remains_of_a_body_is_read_piece_by_piece() {
        // A length: pieces as they arrive, over once all arrived.
        let mut left = Remaining::Length(5);
        let mut buf = BytesMut::from(&b"abc"[..]);
        assert_eq!(
            left.next(&mut buf).expect("ok"),
            Some(Some(Bytes::from("abc")))
        );
        assert!(!left.is_over());
        assert_eq!(left.next(&mut buf).expect("ok"), None, "more must be read");
        buf.extend_from_slice(b"defg");
        assert_eq!(
            left.next(&mut buf).expect("ok"),
            Some(Some(Bytes::from("de")))
        );
        assert!(left.is_over());
        assert_eq!(left.next(&mut buf).expect("ok"), Some(None));
        assert_eq!(&buf[..], b"fg", "what follows the body stays");
        // Chunks, up to the last one.
        let mut left = Remaining::Chunked(ChunkedDecoder::default());
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\nnext"[..]);
        assert_eq!(
            left.next(&mut buf).expect("ok"),
            Some(Some(Bytes::from("abc")))
        );
        assert_eq!(left.next(&mut buf).expect("ok"), Some(None));
        assert!(left.is_over());
        assert_eq!(&buf[..], b"next");
        assert!(Remaining::Chunked(ChunkedDecoder::default())
            .next(&mut BytesMut::from(&b"zz\r\n"[..]))
            .is_err());
        // Until close: whatever is there; the end is the reader's to see.
        let mut left = Remaining::UntilClose;
        let mut buf = BytesMut::from(&b"xy"[..]);
        assert_eq!(
            left.next(&mut buf).expect("ok"),
            Some(Some(Bytes::from("xy")))
        );
        assert_eq!(left.next(&mut buf).expect("ok"), None);
        assert!(!left.is_over());
        assert_eq!(left.size_hint().exact(), None);
        assert_eq!(Remaining::Length(7).size_hint().exact(), Some(7));
    }

    #[test]
    fn a_remembered_name_is_the_name_sent_at_that_place() {
        // Names are remembered per side and per place: a different name at a remembered
        // place, a name in another case, or the same bytes on the other side are each
        // typed afresh, never confused with what was remembered.
        assert_eq!(header_name(Side::Request, 0, b"Host"), Some(header::HOST));
        assert_eq!(
            header_name(Side::Request, 0, b"Host"),
            Some(header::HOST),
            "remembered"
        );
        assert_eq!(
            header_name(Side::Request, 0, b"X-Custom"),
            HeaderName::from_bytes(b"x-custom").ok()
        );
        assert_eq!(header_name(Side::Response, 0, b"Host"), Some(header::HOST));
        assert_eq!(
            header_name(Side::Request, 0, b"X-Custom"),
            HeaderName::from_bytes(b"x-custom").ok()
        );
        // An invalid name is refused, at a remembered place or not, and leaves nothing
        // behind.
        assert_eq!(header_name(Side::Request, 0, b"bad name"), None);
        assert_eq!(header_name(Side::Request, 0, b"bad name"), None);
        assert_eq!(header_name(Side::Request, NAME_SLOTS, b"bad name"), None);
        // Past the remembered places, and past the longest remembered name: typed as usual.
        assert_eq!(
            header_name(Side::Response, NAME_SLOTS + 3, b"Content-Type"),
            Some(header::CONTENT_TYPE)
        );
        let long = [b'x'; NAME_BYTES + 1];
        assert_eq!(
            header_name(Side::Response, 1, &long),
            HeaderName::from_bytes(&long).ok()
        );
    }

    proptest! {
        /// However names follow one another at whatever places, a name is what
        /// `HeaderName::from_bytes` makes of it (the reference: no memory at all).
        #[test]
        fn remembered_names_match_the_reference(
            sent in proptest::collection::vec(
                (any::<bool>(), 0usize..NAME_SLOTS + 2,
                 prop_oneof![
                     Just("Host".to_owned()), Just("host".to_owned()),
                     Just("Content-Type".to_owned()), Just("X-Weir-Key-Id".to_owned()),
                     Just("bad name".to_owned()), Just(String::new()),
                     "[!-~]{1,40}",
                 ]),
                1..64,
            )
        ) {
            for (response, index, name) in sent {
                let side = if response { Side::Response } else { Side::Request };
                prop_assert_eq!(
                    header_name(side, index, name.as_bytes()),
                    HeaderName::from_bytes(name.as_bytes()).ok(),
                    "{:?} at {}", name, index
                );
            }
        }

        /// A chunk's size line is the length in hex, as any HTTP parser reads it back.
        #[test]
        fn chunk_sizes_are_hex(len in 1usize..usize::MAX) {
            let mut out = Vec::new();
            chunk_start(&mut out, len);
            let line = std::str::from_utf8(&out).expect("ascii");
            prop_assert!(line.ends_with("\r\n"));
            prop_assert_eq!(usize::from_str_radix(line.trim_end(), 16).ok(), Some(len));
        }
    }
}
