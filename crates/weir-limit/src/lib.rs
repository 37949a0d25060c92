//! weir's rate-limit engine: exact quotas and concurrency limits, checked all-or-nothing
//! across every limit that applies to a request, on a pluggable store.
//!
//! * [`Quota`]: N requests per window (1 s to 1 day), enforced by GCRA ([`gcra`]): a burst
//!   of N, refilled smoothly. Costs above 1 for batches.
//! * [`Policy`]: the limits that apply to a request by its scopes (organisation, key, user,
//!   client IP, route, method class) and plan.
//! * [`Limiter`]: checks a [`Request`] against every applicable limit at once. A request
//!   refused by one limit consumes nothing from the others. The [`Decision`] carries what
//!   the response headers need: the limiting quota's limit, remaining and reset, an exact
//!   retry-after, and the state of every limit checked.
//! * [`Store`]: where counters live. [`MemoryStore`] is the embedded default; other stores
//!   (Redis) implement the same trait and pass the same test suite.
//! * [`Clock`]: time is an input; [`ManualClock`] makes tests exact.
//! * [`DirectLimiter`]: one quota on one counter, no keys — the same GCRA for a limit
//!   that is the same for every caller in a process.
//!
//! ```
//! use weir_limit::{Dimension, LimitDef, Limiter, ManualClock, MemoryStore, Policy, Quota, Request};
//! let policy = Policy::new(vec![
//!     LimitDef::rate("ip-10s", &[Dimension::ClientIp], Quota::new(50, std::time::Duration::from_secs(10))?),
//! ])?;
//! let clock = ManualClock::at_unix_secs(1_700_000_000);
//! let limiter = Limiter::new(policy, MemoryStore::default(), clock.clone());
//! let request = Request { client_ip: Some("203.0.113.7"), ..Request::default() };
//! // The memory store never waits, so its decisions are ready on the first poll.
//! let decision = weir_limit::poll_ready(limiter.check(&request)).expect("ready")?;
//! assert!(decision.is_admitted());
//! assert_eq!(decision.limiting_status().map(|s| s.remaining), Some(49));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod breaker;
pub mod clock;
pub mod direct;
pub mod gcra;
pub mod limiter;
pub mod policy;
pub mod quota;
pub mod store;

pub use clock::{Clock, ManualClock, Nanos, SystemClock};
pub use direct::{DirectDecision, DirectLimiter};
pub use limiter::{Decision, LimitError, LimitStatus, LimitVerdict, Limiter, Outcome, Permit};
pub use policy::{
    Dimension, LimitDef, LimitKind, MethodClass, MethodFilter, PlanValue, Policy, PolicyError,
    Request,
};
pub use quota::{Quota, QuotaError};
pub use store::memory::{MemoryStats, MemoryStore};
pub use store::{CheckItem, Op, Store, StoreDecision, StoreError, StoreErrorKind};

/// Polls a future once and returns its output if it is ready.
///
/// Decisions on the [`MemoryStore`] never wait, so synchronous callers (benchmarks, tests,
/// a synchronous embedding) can take them without an async runtime. `None` means the
/// future is not ready (a store that does I/O needs a real executor).
pub fn poll_ready<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}
