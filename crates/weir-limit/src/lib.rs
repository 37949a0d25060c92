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
//!
//! ```
//! use weir_limit::{Dimension, LimitDef, Limiter, ManualClock, MemoryStore, Policy, Quota, Request};
//! # fn block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     let mut f = std::pin::pin!(f);
//! #     match f.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
//! #         std::task::Poll::Ready(v) => v,
//! #         std::task::Poll::Pending => unreachable!(),
//! #     }
//! # }
//! let policy = Policy::new(vec![
//!     LimitDef::rate("ip-10s", &[Dimension::ClientIp], Quota::new(50, std::time::Duration::from_secs(10))?),
//! ])?;
//! let clock = ManualClock::at_unix_secs(1_700_000_000);
//! let limiter = Limiter::new(policy, MemoryStore::default(), clock.clone());
//! let request = Request { client_ip: Some("203.0.113.7"), ..Request::default() };
//! let decision = block_on(limiter.check(&request))?;
//! assert!(decision.is_admitted());
//! assert_eq!(decision.limiting_status().map(|s| s.remaining), Some(49));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod clock;
pub mod gcra;
pub mod limiter;
pub mod policy;
pub mod quota;
pub mod store;

pub use clock::{Clock, ManualClock, Nanos, SystemClock};
pub use limiter::{Decision, LimitError, LimitStatus, LimitVerdict, Limiter, Outcome, Permit};
pub use policy::{
    Dimension, LimitDef, LimitKind, MethodClass, MethodFilter, PlanValue, Policy, PolicyError,
    Request,
};
pub use quota::{Quota, QuotaError};
pub use store::memory::MemoryStore;
pub use store::{CheckItem, Op, Store, StoreDecision, StoreError, StoreErrorKind};
