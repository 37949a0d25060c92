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
        // Headers the sender named in `Connection` are hop-by-hop too (even `close`). The
        // usual token, `keep-alive`, is removed below anyway: skipping it here keeps the
        // common case free of allocation.
        let listed: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in listed {
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
