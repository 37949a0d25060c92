//! What an upstream sends back, as the proxy reads it: response heads (interim ones skipped)
//! and the body in whatever framing the head chose, fed in pieces of the sizes the input
//! picks. It may not panic or loop; a chunked body never yields more than was fed; the
//! fields a head passes on hold no hop-by-hop field; a head parsed to be passed on as
//! received says what the typed parse says once its fields are typed.
#![no_main]
use bytes::BytesMut;
use http::Method;
use libfuzzer_sys::fuzz_target;
use weir_gateway::upstream::codec::{self, ChunkedDecoder, Decoded, Framing, Parsed};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let method = if first & 1 == 1 { Method::HEAD } else { Method::GET };
    let step = usize::from(first >> 1).max(1);
    let mut buf = BytesMut::new();
    let mut pieces = rest.chunks(step);
    let head = loop {
        let before = buf.clone();
        match codec::parse_head(&mut buf, &method) {
            Ok(Parsed::Final(head)) => {
                let mut again = before;
                let Ok(Parsed::Final(passing)) = codec::parse_head_passing(&mut again, &method)
                else {
                    panic!("the typed parse found a whole head");
                };
                assert_eq!(again, buf, "the same bytes consumed");
                assert_eq!(passing.framing, head.framing);
                assert_eq!(passing.keep_alive, head.keep_alive);
                assert_eq!(passing.response.status(), head.response.status());
                let mut typed = passing.response.headers().clone();
                if let Some(p) = &passing.passed {
                    p.type_into(&mut typed);
                }
                assert_eq!(&typed, head.response.headers());
                break head;
            }
            Ok(Parsed::Interim) => continue,
            Ok(Parsed::Partial) => match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None => return,
            },
            Err(_) => {
                // What the typed parse refuses, the passing one refuses too: nothing is
                // passed on that the typed map could not have held.
                let mut again = before;
                assert!(codec::parse_head_passing(&mut again, &method).is_err());
                return;
            }
        }
    };
    let mut stripped = head.response.headers().clone();
    weir_gateway::hop::strip(&mut stripped);
    assert_eq!(&stripped, head.response.headers());
    if let Framing::Chunked = head.framing {
        let mut decoder = ChunkedDecoder::default();
        let mut fed = buf.len();
        let mut out = 0usize;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Decoded::Data(d))) => {
                    assert!(!d.is_empty());
                    out += d.len();
                    assert!(out <= fed);
                }
                Ok(Some(Decoded::End)) | Err(_) => return,
                Ok(None) => match pieces.next() {
                    Some(p) => {
                        fed += p.len();
                        buf.extend_from_slice(p);
                    }
                    None => return,
                },
            }
        }
    }
});
