//! IETF `RateLimit` / `RateLimit-Policy` structured fields; what parses must format and
//! parse back to the same values.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir_contract::headers::ratelimit;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(p) = ratelimit::parse_policies(s) {
            if let Ok(out) = ratelimit::format_policies(&p) {
                assert_eq!(ratelimit::parse_policies(&out).as_ref(), Some(&p));
            }
        }
        if let Some(l) = ratelimit::parse_limits(s) {
            if let Ok(out) = ratelimit::format_limits(&l) {
                assert_eq!(ratelimit::parse_limits(&out).as_ref(), Some(&l));
            }
        }
        let _ = ratelimit::parse_legacy_dictionary(s);
        // The allocation-free reader accepts exactly what the owned parser accepts.
        assert_eq!(ratelimit::tightest(s, Some(s)).is_some(), ratelimit::parse_limits(s).is_some());
    }
});
