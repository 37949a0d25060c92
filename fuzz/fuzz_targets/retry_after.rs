//! `Retry-After` values; a parsed value must format and parse back to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::time::UNIX_EPOCH;
use weir_contract::headers::RetryAfter;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(r) = RetryAfter::parse(s) {
            let _ = r.delay_from(UNIX_EPOCH);
            assert_eq!(RetryAfter::parse(&r.to_header_value()), Some(r));
        }
    }
});
