//! Where limiter state lives: one async trait, several backends.
//!
//! The policy layer ([`crate::Limiter`]) turns a request into a list of [`CheckItem`]s and
//! hands them to a [`Store`], which decides all of them *atomically and all-or-nothing*:
//! either every item is admitted and every counter moves, or nothing moves. The store only
//! runs the raw GCRA step ([`crate::gcra::check_raw`]) and the concurrency counter; all
//! header maths happens above it, so a new backend (Redis) plugs in without touching the
//! policy code, and the same test suite runs against every store.

pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

use crate::clock::Nanos;
use smallvec::SmallVec;
use std::future::Future;

/// One counter to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckItem<'a> {
    /// The limit's name.
    pub limit: &'a str,
    /// The scope key ("" for a global limit).
    pub scope: &'a str,
    /// What to do with it.
    pub op: Op,
}

/// Anything that reads as a [`CheckItem`]: lets the limiter hand its own per-request plan
/// to the in-memory store without copying it into a list of items first.
pub trait AsCheckItem {
    /// The item.
    fn item(&self) -> CheckItem<'_>;
}

impl AsCheckItem for CheckItem<'_> {
    #[inline]
    fn item(&self) -> CheckItem<'_> {
        *self
    }
}

/// The operation on one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A GCRA step: the counter is a TAT.
    Rate {
        /// Emission interval.
        emission_ns: u64,
        /// Capacity (`count × emission`).
        capacity_ns: u64,
        /// Cost in units.
        cost: u64,
    },
    /// Take one concurrency slot: the counter is the number in flight.
    Acquire {
        /// The cap.
        max: u64,
    },
}

impl Op {
    /// The new counter value if this item admits at `now`, given its current `value`.
    #[inline]
    pub fn apply(&self, value: u64, now: Nanos) -> Option<u64> {
        match *self {
            Op::Rate {
                emission_ns,
                capacity_ns,
                cost,
            } => crate::gcra::check_raw(emission_ns, capacity_ns, value, now, cost).ok(),
            Op::Acquire { max } => (value < max).then_some(value + 1),
        }
    }

    /// Whether a counter holding `value` is idle at `now` (indistinguishable from absent).
    #[inline]
    pub fn is_idle(is_rate: bool, value: u64, now: Nanos) -> bool {
        if is_rate {
            value <= now
        } else {
            value == 0
        }
    }
}

/// A store's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreDecision {
    /// The time the store decided at (the Redis store uses the server's clock).
    pub now: Nanos,
    /// Whether every item admitted.
    pub admitted: bool,
    /// Per item: the counter after the decision (when admitted) or as it stands (when not).
    pub values: SmallVec<[u64; 4]>,
    /// The lease id concurrency slots were taken under (0 when none); give it back to
    /// [`Store::release`].
    pub lease: u64,
    /// Whether the store fell back to its local failure policy (e.g. Redis unreachable).
    pub degraded: bool,
}

/// What went wrong in a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store tracks as many keys as it may; no new key can be added.
    Capacity,
    /// The backend could not be reached or answered an error.
    Unavailable,
    /// The backend was slower than the deadline.
    Timeout,
}

/// A store error. Says whether trying again later may work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
}

impl StoreError {
    /// A new error.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            message: message.into(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// Whether a later attempt may succeed (every store error is, today).
    pub fn is_transient(&self) -> bool {
        true
    }
}

/// A limiter backend.
pub trait Store: Send + Sync + 'static {
    /// Decides `items` atomically and all-or-nothing at `now` (a store with its own
    /// clock may use that instead, and says so in [`StoreDecision::now`]).
    fn decide<'a>(
        &'a self,
        now: Nanos,
        items: &'a [CheckItem<'a>],
    ) -> impl Future<Output = Result<StoreDecision, StoreError>> + Send + 'a;

    /// Gives back one concurrency slot taken by an admitted [`Op::Acquire`] under `lease`.
    /// `first_scope` is the scope of the decision's first item (what a partitioned store
    /// keys its slot by). Synchronous so it can run from `Drop`; a remote store sends the
    /// release in the background.
    fn release(&self, limit: &str, scope: &str, first_scope: &str, lease: u64);

    /// A short name for logs and metrics (`memory`, `redis`).
    fn name(&self) -> &'static str;
}
