//! Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, so a proxy drops them
//! in both directions, together with every header the sender named in `Connection`.

use http::header::{self, HeaderMap, HeaderName};

/// The hop-by-hop names every proxy drops, `Connection` first.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

/// Where `Connection` and `Transfer-Encoding` are in [`HOP_BY_HOP`], for a reader that
/// looks at their values.
pub(crate) const CONNECTION_AT: usize = 0;
pub(crate) const TRANSFER_ENCODING_AT: usize = 5;

/// Where `name` is in [`HOP_BY_HOP`]: a match on the name's text, which compiles to a
/// switch on its length and one comparison, instead of comparing it with each of the eight.
fn hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "te" => Some(3),
        "trailer" => Some(4),
        "transfer-encoding" => Some(5),
        "upgrade" => Some(6),
        "proxy-authenticate" => Some(7),
        _ => None,
    }
}

/// Where the field name `name`, in any case (as received on the wire), is in
/// [`HOP_BY_HOP`]: for a parser that reads the hop-by-hop fields before any map is built.
pub(crate) fn hop_index_raw(name: &[u8]) -> Option<usize> {
    HOP_BY_HOP.iter().position(|h| {
        let h = h.as_str().as_bytes();
        h.len() == name.len() && h.eq_ignore_ascii_case(name)
    })
}

/// What `Connection` values say of the connection itself: whether they list `close` and
/// `keep-alive` (case-insensitive), for every reader of a head: requests, upstream
/// responses, and a handler's response.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionOptions {
    pub(crate) close: bool,
    pub(crate) keep_alive: bool,
}

impl ConnectionOptions {
    /// The options one value lists.
    pub(crate) fn of(value: &[u8]) -> ConnectionOptions {
        let mut options = ConnectionOptions::default();
        options.note(value);
        options
    }

    /// Adds the options another value lists.
    pub(crate) fn note(&mut self, value: &[u8]) {
        // The usual values, one option alone, are read whole rather than split (an
        // upstream's every response says `keep-alive`).
        if value.eq_ignore_ascii_case(b"keep-alive") {
            self.keep_alive = true;
            return;
        }
        if value.eq_ignore_ascii_case(b"close") {
            self.close = true;
            return;
        }
        for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
            self.close |= token.eq_ignore_ascii_case(b"close");
            self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
}

/// The names a `Connection` field value lists, trimmed, but for `keep-alive`: a sender's
/// `Connection` names fields that are hop-by-hop too (even `close`), and `keep-alive` is
/// one of [`HOP_BY_HOP`] anyway. The value is read as bytes, so one that also carries
/// bytes outside visible ASCII still names its fields (stripping errs towards removing).
pub(crate) fn listed(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case(b"keep-alive"))
}

/// Whether a `Connection` value lists a field name other than `keep-alive` (see
/// [`listed`]); a lone `keep-alive`, which an upstream sends on every response, is known
/// to list none without being split.
pub(crate) fn lists_fields(value: &[u8]) -> bool {
    !value.eq_ignore_ascii_case(b"keep-alive") && listed(value).next().is_some()
}

/// The field names the `Connection` values `values` list (see [`listed`]); no allocation
/// when they list none.
pub(crate) fn listed_names<'v>(values: impl Iterator<Item = &'v [u8]>) -> Vec<HeaderName> {
    values
        .flat_map(listed)
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect()
}

/// Removes the hop-by-hop headers from `h`, and the headers its `Connection` fields name.
pub fn strip(h: &mut HeaderMap) {
    // One pass over the (few) headers notes which hop-by-hop names are there; only those are
    // removed (each removal is a hashed lookup).
    let mut present = 0u16;
    for k in h.keys() {
        if let Some(i) = hop_index(k) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // `Connection` (HOP_BY_HOP[0]) is there.
        let names = listed_names(h.get_all(header::CONNECTION).iter().map(|v| v.as_bytes()));
        for name in names {
            h.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            h.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut h = headers(&[
            ("connection", "Keep-Alive, X-Private"),
            ("connection", "close,te"),
            ("close", "dropped: Connection names it"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-private", "secret"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("content-type", "application/json"),
            ("x-kept", "1"),
        ]);
        strip(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-kept"]);
    }

    #[test]
    fn the_named_positions_are_those_fields() {
        assert_eq!(HOP_BY_HOP[CONNECTION_AT], header::CONNECTION);
        assert_eq!(HOP_BY_HOP[TRANSFER_ENCODING_AT], header::TRANSFER_ENCODING);
    }

    #[test]
    fn the_name_switch_agrees_with_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(name), Some(i), "{name}");
        }
        for other in [
            "content-type",
            "connectionx",
            "t",
            "x-te",
            "trailers",
            "host",
        ] {
            let name = HeaderName::from_bytes(other.as_bytes()).expect("name");
            assert_eq!(hop_index(&name), None, "{other}");
            assert_eq!(hop_index_raw(other.as_bytes()), None, "{other}");
        }
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            let shouted = name.as_str().to_ascii_uppercase();
            assert_eq!(hop_index_raw(shouted.as_bytes()), Some(i), "{shouted}");
        }
    }

    #[test]
    fn a_connection_value_with_other_bytes_still_names_its_fields() {
        let mut h = headers(&[("x-private", "secret"), ("x-kept", "1")]);
        h.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-private, \x80caf\xe9").expect("obs-text is allowed"),
        );
        strip(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    proptest::proptest! {
        /// Whatever a list of options looks like, `note` reads what splitting it into
        /// trimmed tokens reads (the reference), the whole-value shortcuts included.
        #[test]
        fn options_are_read_as_the_token_list_says(
            values in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::prop_oneof![
                        proptest::strategy::Just("close"), proptest::strategy::Just("Close"),
                        proptest::strategy::Just("keep-alive"),
                        proptest::strategy::Just("KEEP-ALIVE"), proptest::strategy::Just("x-a"),
                        proptest::strategy::Just(" "), proptest::strategy::Just(","),
                        proptest::strategy::Just("closed"), proptest::strategy::Just(""),
                    ],
                    0..5,
                ),
                1..3,
            )
        ) {
            let mut options = ConnectionOptions::default();
            let mut reference = ConnectionOptions::default();
            for parts in &values {
                let value = parts.concat();
                options.note(value.as_bytes());
                for token in value.split(',').map(str::trim) {
                    reference.close |= token.eq_ignore_ascii_case("close");
                    reference.keep_alive |= token.eq_ignore_ascii_case("keep-alive");
                }
            }
            proptest::prop_assert_eq!(options, reference, "{:?}", values);
        }
    }

    #[test]
    fn a_lone_keep_alive_lists_no_field_and_anything_else_is_read_as_a_list() {
        for (value, lists) in [
            (&b"keep-alive"[..], false),
            (b"Keep-Alive", false),
            (b"keep-alive, keep-alive", false),
            (b"", false),
            (b"close", true),
            (b"keep-alive, x-private", true),
            (b"keep-alives", true),
        ] {
            assert_eq!(
                lists_fields(value),
                lists,
                "{:?}",
                String::from_utf8_lossy(value)
            );
            assert_eq!(lists_fields(value), listed(value).next().is_some());
        }
    }

    #[test]
    fn headers_without_hop_by_hop_names_are_untouched() {
        let mut h = headers(&[("content-type", "text/plain"), ("x-a", "1"), ("x-a", "2")]);
        let before = h.clone();
        strip(&mut h);
        assert_eq!(h, before);
    }
}
