//! weir's own HTTP/1.1 server side for the public listener (RFC 9112): request heads in,
//! responses out, request bodies streamed to the gateway as it reads them.
//!
//! Why not hyper's server: on the proxy's hot path hyper's dispatcher, per-request timer
//! and body channel were about a third of weir's user CPU per request
//! (`docs/benchmarks-history.md`, session 6). This one does only what a gateway in front
//! of an API needs — keep-alive, pipelining (answered in order), `Content-Length` and
//! chunked bodies both ways, `Expect: 100-continue`, HTTP/1.0 clients, a head-read
//! timeout, graceful drain — and refuses the rest in the contract's envelope (protocol
//! upgrades are not forwarded).
//! The admin listener stays on hyper (through axum).

pub mod body;
pub mod conn;
pub mod head;
pub mod write;

pub use conn::{serve, Settings};
