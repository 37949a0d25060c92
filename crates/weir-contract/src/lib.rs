//! The errors-and-rate-limits contract of HTTP APIs, as code.
//!
//! Public APIs document the same contract over and over: a JSON error envelope, a table of
//! status codes with "retry or not" rules, `Retry-After` and `X-RateLimit-*` headers, the
//! IETF `RateLimit` fields, correlation ids. This crate is that contract written once, so
//! the server side (`weir-gateway`) and the client side (`weir-client`) agree by
//! construction rather than by convention.
//!
//! It is deliberately free of any runtime or HTTP stack (no tokio, no hyper): everything
//! here is pure functions over strings, bytes and an explicit `now`, which is what makes it
//! exact to test and cheap to fuzz.
//!
//! * [`ApiError`] is the one error model; [`Dialect`] renders and parses it in the four
//!   envelope shapes (`detail`, `error`, `mcp`, `problem`).
//! * [`parse_body`] detects the dialect of any body and never panics; bodies in no known
//!   shape come back as [`Unrecognised`] with a bounded snippet.
//! * [`classify`] turns status + headers + body into a [`Decision`]: retry after a delay,
//!   refresh credentials then retry once, or do not retry, with a reason.
//! * [`headers`] holds the header codecs: strict on output, tolerant on input.
//! * [`catalogue`] lists every status and error code the reference documents define.

pub mod catalogue;
pub mod classify;
pub mod dialect;
pub mod error;
pub mod explain;
pub mod headers;

pub use catalogue::{Category, CodeInfo, RetryClass, StatusInfo};
pub use classify::{classify, Action, Decision};
pub use dialect::{parse_body, parse_response, Dialect, Parsed, Unrecognised, MAX_ENVELOPE_BYTES};
pub use error::{ApiError, InnerError, ProblemFields};
pub use explain::{explain, Explanation, RateLimitSummary};
pub use headers::HeaderLookup;
