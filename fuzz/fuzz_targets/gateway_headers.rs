//! The gateway's own parsers of request headers: the client IP and scheme behind trusted
//! proxies (X-Forwarded-For, X-Forwarded-Proto), the presented API key (Authorization / X-API-Key) and the
//! Idempotency-Key value. None may panic; a parsed key is always 1-255 visible ASCII bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = http::HeaderMap::new();
    for (i, part) in data.split(|b| *b == b'\n').enumerate().take(10) {
        let name = [
            "x-forwarded-for",
            "authorization",
            "x-api-key",
            "x-forwarded-for",
            "x-forwarded-proto",
        ][i % 5];
        if let Ok(v) = http::HeaderValue::from_bytes(part) {
            headers.append(name, v);
        }
    }
    let trusted: Vec<ipnet::IpNet> = vec![
        "10.0.0.0/8".parse().expect("net"),
        "::1/128".parse().expect("net"),
    ];
    let peer = std::net::IpAddr::from([10, 1, 2, 3]);
    let _ = weir_gateway::client_ip::client_ip(peer, &headers, &trusted);
    let proto = weir_gateway::client_ip::forwarded_proto(peer, &headers, &trusted);
    assert!(proto == "http" || proto == "https");
    let _ = weir_gateway::identity::presented_key(&headers);
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(k) = weir_gateway::idempotency::parse_key(s) {
            assert!((1..=255).contains(&k.len()) && k.bytes().all(|b| (0x21..0x7f).contains(&b)));
        }
    }
});
