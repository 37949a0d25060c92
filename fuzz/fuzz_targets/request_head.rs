//! What a client sends, as weir's HTTP/1.1 server reads it: request heads, fed in pieces of
//! the sizes the input picks, one after another as on a kept-alive connection. It may not
//! panic or loop; a complete head is always removed from the buffer, a head never grows
//! past the limit, and the framing agrees with the fields.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use weir_gateway::h1::head::{self, Framing, MAX_HEAD};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(first).max(1);
    let mut buf = BytesMut::new();
    let mut pieces = rest.chunks(step);
    loop {
        let before = buf.len();
        match head::parse(&mut buf) {
            Ok(Some(h)) => {
                assert!(buf.len() < before);
                assert!(before - buf.len() <= MAX_HEAD);
                let fields = &h.parts.headers;
                match h.framing {
                    Framing::Chunked => assert!(fields.contains_key(http::header::TRANSFER_ENCODING)),
                    Framing::Length(n) => {
                        assert!(n > 0);
                        assert!(!fields.contains_key(http::header::TRANSFER_ENCODING));
                    }
                    Framing::Empty => assert!(!h.expect_continue),
                }
            }
            Ok(None) => match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None => return,
            },
            Err(_) => return,
        }
    }
});
