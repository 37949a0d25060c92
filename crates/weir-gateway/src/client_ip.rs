//! What the forwarding headers are believed to say. The client's IP: the socket peer, or —
//! only when the peer is a configured trusted proxy — the rightmost `X-Forwarded-For`
//! address that is not itself a trusted proxy. The scheme the client used: `http` (weir's
//! own), or what a trusted proxy's `X-Forwarded-Proto` says. An untrusted peer's
//! forwarding headers are ignored, so nobody can choose their own IP (and their own
//! rate-limit bucket), or pose as having come over TLS, by sending a header.

use ipnet::IpNet;
use std::net::IpAddr;

/// The client address for rate limiting and logs.
pub fn client_ip(peer: IpAddr, headers: &http::HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let Ok(v) = v.to_str() else {
            return peer;
        };
        for part in v.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip),
                Err(_) => return peer,
            }
        }
    }
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

/// The `X-Forwarded-Proto` for the upstream: the scheme a trusted proxy in front says the
/// client used (a TLS-terminating load balancer says `https`, and the upstream builds its
/// links with it), otherwise weir's own, `http`. Of a list, the first (the client-facing
/// hop) counts; anything but `http` or `https` is not believed.
pub fn forwarded_proto(
    peer: IpAddr,
    headers: &http::HeaderMap,
    trusted: &[IpNet],
) -> http::HeaderValue {
    const HTTP: http::HeaderValue = http::HeaderValue::from_static("http");
    const HTTPS: http::HeaderValue = http::HeaderValue::from_static("https");
    if trusted.is_empty() || !trusted.iter().any(|n| n.contains(&peer)) {
        return HTTP;
    }
    let first = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.as_bytes().split(|b| *b == b',').next())
        .map(<[u8]>::trim_ascii);
    match first {
        Some(p) if p.eq_ignore_ascii_case(b"https") => HTTPS,
        _ => HTTP,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().expect("v"));
        h
    }

    #[test]
    fn the_scheme_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let proxy: IpAddr = "10.1.2.3".parse().expect("ip");
        let stranger: IpAddr = "203.0.113.9".parse().expect("ip");
        let proto = |peer, v: &str, trusted: &[IpNet]| {
            let mut h = http::HeaderMap::new();
            h.insert("x-forwarded-proto", v.parse().expect("v"));
            forwarded_proto(peer, &h, trusted)
        };
        assert_eq!(proto(proxy, "https", &trusted), "https");
        assert_eq!(proto(proxy, " HTTPS , http", &trusted), "https");
        assert_eq!(proto(proxy, "http, https", &trusted), "http");
        assert_eq!(proto(proxy, "ftp", &trusted), "http");
        assert_eq!(proto(stranger, "https", &trusted), "http");
        assert_eq!(proto(proxy, "https", &[]), "http");
        assert_eq!(
            forwarded_proto(proxy, &http::HeaderMap::new(), &trusted),
            "http"
        );
    }

    #[test]
    fn forwarding_headers_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let proxy: IpAddr = "10.1.2.3".parse().expect("ip");
        let stranger: IpAddr = "203.0.113.9".parse().expect("ip");
        assert_eq!(client_ip(stranger, &headers("1.2.3.4"), &trusted), stranger);
        assert_eq!(
            client_ip(proxy, &headers("1.2.3.4"), &trusted),
            "1.2.3.4".parse::<IpAddr>().expect("ip")
        );
        // A client-supplied entry to the left of the real client is ignored.
        assert_eq!(
            client_ip(proxy, &headers("9.9.9.9, 1.2.3.4, 10.0.0.7"), &trusted),
            "1.2.3.4".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(client_ip(proxy, &headers("garbage"), &trusted), proxy);
        assert_eq!(client_ip(proxy, &http::HeaderMap::new(), &trusted), proxy);
    }
}
