//! W3C `traceparent`; what parses formats back (as version 00) and parses again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir_contract::headers::TraceParent;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(t) = TraceParent::parse(s) {
            assert_eq!(TraceParent::parse(&t.to_header_value()), Some(t));
        }
    }
});
