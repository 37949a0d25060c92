//! W3C Trace Context `traceparent` (Level 1/2): `00-<trace-id>-<parent-id>-<flags>`.
//!
//! Parsing follows the processing rules: lowercase hex only; all-zero ids and version
//! `ff` are invalid and the whole header is ignored; a higher version is accepted when it
//! is at least 55 characters and its first four fields parse, with a `-` after them if it
//! is longer. Output is always version `00`. Ids are supplied by the caller (this crate has
//! no randomness source), so generation is deterministic in tests.

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The 16-byte trace id.
    pub trace_id: [u8; 16],
    /// The 8-byte id of the caller's span.
    pub parent_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceParent {
    /// The header name.
    pub const NAME: &'static str = "traceparent";

    /// A new traceparent; `None` if either id is all zeroes (forbidden by the spec).
    pub fn new(trace_id: [u8; 16], parent_id: [u8; 8], flags: u8) -> Option<TraceParent> {
        (trace_id != [0; 16] && parent_id != [0; 8]).then_some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The same trace, continued by a new span `parent_id` (what a proxy or client sends
    /// onward). `None` if `parent_id` is all zeroes.
    pub fn child(&self, parent_id: [u8; 8]) -> Option<TraceParent> {
        TraceParent::new(self.trace_id, parent_id, self.flags)
    }

    /// Whether the sampled flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// Parses a header value; `None` means "ignore it and start a new trace".
    pub fn parse(value: &str) -> Option<TraceParent> {
        let v = value.trim().as_bytes();
        if v.len() < 55 {
            return None;
        }
        let version = hex_byte(v.get(0..2)?)?;
        if version == 0xff
            || v.get(2) != Some(&b'-')
            || v.get(35) != Some(&b'-')
            || v.get(52) != Some(&b'-')
        {
            return None;
        }
        match (version, v.len()) {
            (0, 55) => {}
            (0, _) => return None,
            (_, 55) => {}
            (_, _) if v.get(55) == Some(&b'-') => {}
            _ => return None,
        }
        let mut trace_id = [0u8; 16];
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = hex_byte(v.get(3 + 2 * i..5 + 2 * i)?)?;
        }
        let mut parent_id = [0u8; 8];
        for (i, b) in parent_id.iter_mut().enumerate() {
            *b = hex_byte(v.get(36 + 2 * i..38 + 2 * i)?)?;
        }
        let flags = hex_byte(v.get(53..55)?)?;
        TraceParent::new(trace_id, parent_id, flags)
    }

    /// The header value, version `00`.
    pub fn to_header_value(&self) -> String {
        let bytes = self.to_bytes();
        // Hex digits and dashes: always UTF-8.
        std::str::from_utf8(&bytes).unwrap_or_default().to_owned()
    }

    /// The header value, version `00`, as its 55 bytes: written on the stack, for a caller
    /// that copies them straight into a header (a gateway does, on every request).
    pub fn to_bytes(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[..2].copy_from_slice(b"00");
        write_hex(&mut out[3..35], &self.trace_id);
        write_hex(&mut out[36..52], &self.parent_id);
        write_hex(&mut out[53..55], &[self.flags]);
        out
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        let bytes = self.to_bytes();
        std::str::from_utf8(&bytes[3..35])
            .unwrap_or_default()
            .to_owned()
    }

    /// The parent (span) id as 16 lowercase hex digits.
    pub fn parent_id_hex(&self) -> String {
        let bytes = self.to_bytes();
        std::str::from_utf8(&bytes[36..52])
            .unwrap_or_default()
            .to_owned()
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    match pair {
        [hi, lo] => Some(hex_digit(*hi)? << 4 | hex_digit(*lo)?),
        _ => None,
    }
}

/// Writes `bytes` as lowercase hex into `out` (twice as long).
/// Each byte's two lowercase hex digits: a gateway writes a trace context per forwarded
/// request, and a byte then costs one load and one two-byte store instead of two of each
/// and the nibble arithmetic.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    pairs
};

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn spec_example_round_trips() {
        let t = TraceParent::parse(EXAMPLE).expect("valid");
        assert!(t.sampled());
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.to_header_value(), EXAMPLE);
    }

    #[test]
    fn invalid_headers_are_ignored() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        /// The value is the spec's layout in lowercase hex (as `format!` writes it) and
        /// parses back to the same fields.
        #[test]
        fn values_are_lowercase_hex_and_round_trip(
            trace_id in proptest::prelude::any::<[u8; 16]>(),
            parent_id in proptest::prelude::any::<[u8; 8]>(),
            flags in proptest::prelude::any::<u8>(),
        ) {
            let Some(t) = TraceParent::new(trace_id, parent_id, flags) else {
                return Ok(());
            };
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            let want = format!("00-{}-{}-{:02x}", hex(&trace_id), hex(&parent_id), flags);
            let value = t.to_header_value();
            proptest::prop_assert_eq!(&value, &want);
            proptest::prop_assert_eq!(&t.to_bytes()[..], want.as_bytes());
            proptest::prop_assert_eq!(t.trace_id_hex(), hex(&trace_id));
            proptest::prop_assert_eq!(TraceParent::parse(&value), Some(t));
        }
    }

    #[test]
    fn future_versions_keep_known_fields() {
        let v = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        assert!(TraceParent::parse(v).is_some());
        let v = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x";
        assert_eq!(TraceParent::parse(v), None);
    }
}
