//! `X-RateLimit-*` (and `X-Rate-Limit-*`, draft-06 `RateLimit-*`) header values.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir_contract::headers::{x_ratelimit::Reset, XRateLimit};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let (a, b, c) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    for prefix in ["x-ratelimit-", "x-rate-limit-", "ratelimit-"] {
        let h = [
            (format!("{prefix}limit"), a),
            (format!("{prefix}remaining"), b),
            (format!("{prefix}reset"), c),
        ];
        let _ = XRateLimit::from_headers(&h[..], u64::from(data.len() as u32));
    }
    let _ = Reset::parse(&text, u64::MAX);
});
