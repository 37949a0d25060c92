//! The proxy's hop-by-hop stripping, which reads the untrusted `Connection` field of both
//! requests and upstream responses. It may not panic; afterwards no hop-by-hop header and no
//! header that `Connection` named is left, and every other header is left as it was.
#![no_main]
use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
];

fuzz_target!(|data: &[u8]| {
    // Lines of "name:value"; a line without a colon is a Connection value.
    let mut h = HeaderMap::new();
    for line in data.split(|b| *b == b'\n').take(16) {
        let (name, value) = match line.iter().position(|b| *b == b':') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (&b"connection"[..], line),
        };
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            h.append(n, v);
        }
    }
    // Every name a Connection value lists, read as bytes: a value with bytes outside
    // visible ASCII still names its fields.
    let named: Vec<HeaderName> = h
        .get_all("connection")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect();
    let before = h.clone();
    weir_gateway::hop::strip(&mut h);
    for name in HOP {
        assert!(!h.contains_key(name), "{name} left");
    }
    for name in &named {
        assert!(!h.contains_key(name), "{name} named in Connection, left");
    }
    for (name, value) in &before {
        if !HOP.contains(&name.as_str()) && !named.contains(name) {
            assert!(
                h.get_all(name).iter().any(|v| v == value),
                "{name} was not hop-by-hop but went"
            );
        }
    }
    assert!(h.len() <= before.len());
});
