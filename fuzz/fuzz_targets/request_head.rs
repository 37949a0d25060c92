//! What a client sends, as weir's HTTP/1.1 server reads it: request heads, fed in pieces of
//! the sizes the input picks, one after another as on a kept-alive connection. It may not
//! panic or loop; a complete head is always removed from the buffer, a head never grows
//! past the limit, the framing agrees with the fields, and the server's check of whether
//! new bytes may complete a head (`may_end`) never hides one that is whole.
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
    // How much of the buffer the last attempt found no whole head in.
    let mut seen: Option<usize> = None;
    loop {
        let before = buf.len();
        let gate = seen.map(|s| head::may_end(&buf, s));
        match head::parse(&mut buf) {
            Ok(Some(h)) => {
                assert_ne!(gate, Some(false), "may_end hid a whole head");
                seen = None;
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
            Ok(None) => {
                seen = Some(buf.len());
                match pieces.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => return,
                }
            }
            Err(_) => return,
        }
    }
});
