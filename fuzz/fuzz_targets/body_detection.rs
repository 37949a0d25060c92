//! Body detection and parsing of every dialect, then classification and re-rendering.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::time::UNIX_EPOCH;

fuzz_target!(|data: &[u8]| {
    let status = data.first().map(|b| 400 + u16::from(*b % 200));
    for ct in [None, Some("application/problem+json")] {
        if let Ok(p) = weir_contract::parse_response(status, ct, data) {
            let _ = weir_contract::classify(status, &[("a", "b")][..], Some(&p.error), UNIX_EPOCH);
            // Whatever parsed must render again in its own dialect and parse back.
            let again = p.dialect.render_string(&p.error);
            assert!(weir_contract::parse_response(
                status,
                Some(p.dialect.content_type()),
                again.as_bytes()
            )
            .is_ok());
        }
    }
});
