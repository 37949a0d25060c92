//! The limiter: a policy, a store and a clock, answering "may this request pass, and what
//! do I tell the caller?".

use crate::clock::{ceil_secs, Clock, Nanos, SystemClock};
use crate::gcra;
use crate::policy::{LimitKind, Policy, Request};
use crate::store::memory::MemoryStore;
use crate::store::{AsCheckItem, CheckItem, Op, Store, StoreError};
use arc_swap::ArcSwap;
use smallvec::SmallVec;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

/// The overall answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every limit admitted the request; its counters moved.
    Admitted,
    /// At least one limit refused; nothing moved. Retry after [`Decision::retry_after`].
    Rejected,
    /// The request costs more than some limit's whole quota: no wait will ever admit it.
    CostExceedsLimit,
}

/// What one limit said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitVerdict {
    /// This limit admits.
    Ok,
    /// This limit refuses for now; it would admit after this many nanoseconds.
    Wait(u64),
    /// This limit can never admit this cost.
    Never,
    /// This concurrency limit is full (no time-based wait is known).
    Full,
}

/// The state of one limit after the decision, for the response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitStatus {
    /// Index of the limit in the policy's `limits`.
    pub index: usize,
    /// The window in seconds of the quota applied; 0 for a concurrency limit.
    pub window_secs: u64,
    /// The limit: requests per window, or the concurrency cap.
    pub limit: u64,
    /// What is left after this decision.
    pub remaining: u64,
    /// Nanoseconds until the limit is whole again (0 for concurrency limits).
    pub reset_after_ns: u64,
    /// What this limit said.
    pub verdict: LimitVerdict,
}

impl LimitStatus {
    /// Whether this is a concurrency limit.
    pub fn is_concurrency(&self) -> bool {
        self.window_secs == 0
    }

    /// Time until the limit is whole again.
    pub fn reset_after(&self) -> Duration {
        Duration::from_nanos(self.reset_after_ns)
    }
}

/// A limiter's decision.
#[derive(Debug)]
pub struct Decision {
    /// The overall outcome.
    pub outcome: Outcome,
    /// How long until this same request would be admitted (0 when admitted). Exact for rate
    /// limits: a request retried exactly this much later is admitted, absent other traffic.
    pub retry_after: Duration,
    /// When the decision was made (ns since the Unix epoch, store's clock).
    pub now: Nanos,
    /// Every limit that applied, in policy order.
    pub limits: SmallVec<[LimitStatus; 4]>,
    /// Index into `limits` of the limit the `X-RateLimit-*` headers describe: on rejection
    /// the refusing limit with the longest wait, otherwise the one with the least remaining.
    pub limiting: Option<usize>,
    /// Concurrency slots held while the request runs; dropping it releases them.
    pub permit: Option<Permit>,
    /// Whether the store decided under its failure policy (e.g. Redis unreachable).
    pub degraded: bool,
}

impl Default for Decision {
    /// Admitted, with no limit applied: what a policy with no matching limit decides.
    fn default() -> Self {
        Decision {
            outcome: Outcome::Admitted,
            retry_after: Duration::ZERO,
            now: 0,
            limits: SmallVec::new(),
            limiting: None,
            permit: None,
            degraded: false,
        }
    }
}

impl Decision {
    /// Whether the request may proceed.
    pub fn is_admitted(&self) -> bool {
        self.outcome == Outcome::Admitted
    }

    /// The status the headers describe.
    pub fn limiting_status(&self) -> Option<&LimitStatus> {
        self.limiting.and_then(|i| self.limits.get(i))
    }

    /// `Retry-After` in whole seconds, rounded up so a client is never early.
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(u64::try_from(self.retry_after.as_nanos()).unwrap_or(u64::MAX))
    }

    /// When `status`'s limit is whole again, in Unix seconds (rounded up).
    pub fn reset_unix(&self, status: &LimitStatus) -> u64 {
        ceil_secs(self.now.saturating_add(status.reset_after_ns))
    }
}

/// What a limiter can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// The store failed.
    #[error("rate-limit store: {0}")]
    Store(#[from] StoreError),
}

/// Gives concurrency slots back when the request is done (or dropped).
///
/// One pointer wide: most decisions hold no permit, and a [`Decision`] is moved around on
/// every request, so the slots live behind a box.
pub struct Permit(Box<PermitInner>);

struct PermitInner {
    releaser: Arc<dyn Release>,
    lease: u64,
    first_scope: Box<str>,
    slots: SmallVec<[(Box<str>, Box<str>); 1]>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("slots", &self.0.slots.len())
            .finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let p = &self.0;
        for (limit, scope) in &p.slots {
            p.releaser.release(limit, scope, &p.first_scope, p.lease);
        }
    }
}

/// Object-safe release, so a [`Permit`] does not carry the store's type.
trait Release: Send + Sync {
    fn release(&self, limit: &str, scope: &str, first_scope: &str, lease: u64);
}

impl<S: Store> Release for S {
    fn release(&self, limit: &str, scope: &str, first_scope: &str, lease: u64) {
        Store::release(self, limit, scope, first_scope, lease);
    }
}

/// A limiter: policy + store + clock.
///
/// The policy can be replaced at runtime ([`Limiter::set_policy`]); counters are keyed by
/// limit *name* and scope, so state carries over to the new policy. A counter is the instant
/// its bucket is whole again, which does not depend on the quota. After a quota change
/// (plan upgrade, operator tightening) each key keeps that instant — so `X-RateLimit-Reset`
/// stays true across the change — and the backlog is read through the new quota's
/// emission interval from the next request on. Example: a free org (10/min) that used
/// all 10 is whole again in 60 s; upgraded to pro (30/min), it is still whole in 60 s, and
/// its next request passes 2 s later (pro's interval) instead of 6 s. The same rule makes a
/// limit tightened by an operator count recent use in *time*, not in requests.
pub struct Limiter<S: Store = MemoryStore, C: Clock = SystemClock> {
    store: Arc<S>,
    clock: C,
    policy: ArcSwap<Policy>,
    /// The `Retry-After` advertised when only a concurrency limit refused.
    concurrency_retry: Duration,
}

impl<S: Store, C: Clock> std::fmt::Debug for Limiter<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("store", &self.store.name())
            .field("limits", &self.policy.load().limits.len())
            .finish()
    }
}

impl Limiter<MemoryStore, SystemClock> {
    /// A limiter on the embedded in-memory store and the system clock.
    pub fn in_memory(policy: Policy) -> Self {
        Limiter::new(policy, MemoryStore::default(), SystemClock::default())
    }
}

/// A store's answer, borrowed (so the in-memory path builds no [`StoreDecision`]).
struct Decided<'v> {
    now: Nanos,
    admitted: bool,
    values: &'v [u64],
    lease: u64,
    degraded: bool,
}

/// Per-item plan resolved at check time (kept small: it lives across the store's await).
struct Planned<'r> {
    limit: &'r str,
    index: u32,
    /// The quota's window in seconds; 0 marks a concurrency limit.
    window_secs: u32,
    /// The quota's count (or the concurrency cap), so no decision divides to find it.
    count: u64,
    scope: Cow<'r, str>,
    op: Op,
}

impl<S: Store, C: Clock> Limiter<S, C> {
    /// A limiter.
    pub fn new(policy: Policy, store: S, clock: C) -> Self {
        Limiter {
            store: Arc::new(store),
            clock,
            policy: ArcSwap::from_pointee(policy),
            concurrency_retry: Duration::from_secs(1),
        }
    }

    /// Sets the `Retry-After` advertised when only concurrency limits refused (default 1 s).
    pub fn with_concurrency_retry(mut self, wait: Duration) -> Self {
        self.concurrency_retry = wait;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The current policy.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Replaces the policy; counters carry over by limit name (see the type's docs).
    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    /// Decides `request` against the current policy.
    pub async fn check(&self, request: &Request<'_>) -> Result<Decision, LimitError> {
        let policy = self.policy.load_full();
        self.check_with(&policy, request).await
    }

    /// Decides `request` against `policy` (which the caller holds, so limit indices in the
    /// decision refer to it).
    pub async fn check_with(
        &self,
        policy: &Policy,
        request: &Request<'_>,
    ) -> Result<Decision, LimitError> {
        let now = self.clock.now();
        let mut planned = SmallVec::new();
        let (cost, never) = plan(policy, request, &mut planned);
        if never {
            // Never touch the store for a request that can never pass.
            return Ok(self.never_decision(now, &planned, cost));
        }
        let items: SmallVec<[CheckItem<'_>; 4]> = planned.iter().map(AsCheckItem::item).collect();
        let d = self.store.decide(now, &items).await?;
        let decided = Decided {
            now: d.now,
            admitted: d.admitted,
            values: &d.values,
            lease: d.lease,
            degraded: d.degraded,
        };
        Ok(self.finish(policy, &planned, &decided))
    }

    fn finish(&self, policy: &Policy, planned: &[Planned<'_>], decided: &Decided<'_>) -> Decision {
        let mut decision = Decision::default();
        self.finish_into(policy, planned, decided, &mut decision);
        decision
    }

    /// [`Limiter::finish`] into a decision the caller holds, every field overwritten: the
    /// statuses are never moved into the decision, nor the decision (over 200 bytes) out
    /// of the limiter and through its callers.
    fn finish_into(
        &self,
        policy: &Policy,
        planned: &[Planned<'_>],
        decided: &Decided<'_>,
        decision: &mut Decision,
    ) {
        let now = decided.now;
        decision.outcome = if decided.admitted {
            Outcome::Admitted
        } else {
            Outcome::Rejected
        };
        decision.retry_after = Duration::ZERO;
        decision.now = now;
        decision.limits.clear();
        decision.limiting = None;
        decision.permit = None;
        decision.degraded = decided.degraded;
        let limits = &mut decision.limits;
        let mut retry_after = Duration::ZERO;
        let mut limiting: Option<usize> = None;
        for (i, p) in planned.iter().enumerate() {
            let value = decided.values.get(i).copied().unwrap_or(0);
            let status = match p.op {
                Op::Rate {
                    emission_ns,
                    capacity_ns,
                    cost,
                } => {
                    let verdict = if decided.admitted {
                        LimitVerdict::Ok
                    } else {
                        match gcra::check_raw(emission_ns, capacity_ns, value, now, cost) {
                            Ok(_) => LimitVerdict::Ok,
                            Err(wait) => LimitVerdict::Wait(wait),
                        }
                    };
                    LimitStatus {
                        index: p.index as usize,
                        window_secs: u64::from(p.window_secs),
                        limit: p.count,
                        remaining: gcra::remaining_raw(emission_ns, capacity_ns, value, now),
                        reset_after_ns: value.saturating_sub(now),
                        verdict,
                    }
                }
                Op::Acquire { max } => LimitStatus {
                    index: p.index as usize,
                    window_secs: 0,
                    limit: max,
                    remaining: max.saturating_sub(value),
                    reset_after_ns: 0,
                    verdict: if decided.admitted || value < max {
                        LimitVerdict::Ok
                    } else {
                        LimitVerdict::Full
                    },
                },
            };
            let wait = match status.verdict {
                LimitVerdict::Wait(ns) => Some(Duration::from_nanos(ns)),
                LimitVerdict::Full => Some(self.concurrency_retry),
                _ => None,
            };
            if let Some(w) = wait {
                if limiting.is_none_or(|l| w > retry_after || limits[l].verdict == LimitVerdict::Ok)
                {
                    limiting = Some(i);
                }
                retry_after = retry_after.max(w);
            } else if retry_after.is_zero() && !status.is_concurrency() {
                let better = limiting.is_none_or(|l| {
                    status.remaining < limits[l].remaining || limits[l].is_concurrency()
                });
                if better {
                    limiting = Some(i);
                }
            }
            limits.push(status);
        }
        let permit = if decided.admitted && planned.iter().any(|p| p.window_secs == 0) {
            let slots: SmallVec<[(Box<str>, Box<str>); 1]> = planned
                .iter()
                .filter(|p| p.window_secs == 0)
                .map(|p| {
                    (
                        policy.limits[p.index as usize].name.as_str().into(),
                        p.scope.as_ref().into(),
                    )
                })
                .collect();
            (!slots.is_empty()).then(|| {
                Permit(Box::new(PermitInner {
                    releaser: self.store.clone(),
                    lease: decided.lease,
                    first_scope: planned.first().map_or("", |p| p.scope.as_ref()).into(),
                    slots,
                }))
            })
        } else {
            None
        };
        if !decided.admitted {
            decision.retry_after = retry_after;
        }
        decision.limiting = limiting;
        decision.permit = permit;
    }

    fn never_decision(&self, now: Nanos, planned: &[Planned<'_>], cost: u64) -> Decision {
        let mut limiting = None;
        let limits = planned
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (limit, verdict) = match p.op {
                    Op::Rate {
                        emission_ns,
                        capacity_ns,
                        ..
                    } => {
                        let count = capacity_ns / emission_ns;
                        if cost > count {
                            limiting.get_or_insert(i);
                            (count, LimitVerdict::Never)
                        } else {
                            (count, LimitVerdict::Ok)
                        }
                    }
                    Op::Acquire { max } => (max, LimitVerdict::Ok),
                };
                LimitStatus {
                    index: p.index as usize,
                    window_secs: u64::from(p.window_secs),
                    limit,
                    remaining: limit,
                    reset_after_ns: 0,
                    verdict,
                }
            })
            .collect();
        Decision {
            outcome: Outcome::CostExceedsLimit,
            retry_after: Duration::ZERO,
            now,
            limits,
            limiting,
            permit: None,
            degraded: false,
        }
    }
}

/// Resolves which limits apply to `request` and with what quota: `(plan, cost, never)`.
fn plan<'r>(
    policy: &'r Policy,
    request: &Request<'r>,
    planned: &mut SmallVec<[Planned<'r>; 4]>,
) -> (u64, bool) {
    let cost = request.cost.max(1);
    let mut never = false;
    for (index, def) in policy.limits.iter().enumerate() {
        if !request.matches(def) {
            continue;
        }
        let Some(scope) = request.scope_key(def) else {
            continue;
        };
        match &def.kind {
            LimitKind::Rate(q) => {
                let Some(quota) = q.resolve(request.plan) else {
                    continue;
                };
                never |= cost > quota.count();
                planned.push(Planned {
                    limit: &def.name,
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    window_secs: u32::try_from(quota.window_secs()).unwrap_or(u32::MAX),
                    count: quota.count(),
                    scope,
                    op: Op::Rate {
                        emission_ns: quota.emission_ns(),
                        capacity_ns: quota.capacity_ns(),
                        cost,
                    },
                });
            }
            LimitKind::Concurrency(m) => {
                let Some(max) = m.resolve(request.plan) else {
                    continue;
                };
                planned.push(Planned {
                    limit: &def.name,
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    window_secs: 0,
                    count: max.get(),
                    scope,
                    op: Op::Acquire { max: max.get() },
                });
            }
        }
    }
    (cost, never)
}

impl AsCheckItem for Planned<'_> {
    #[inline]
    fn item(&self) -> CheckItem<'_> {
        CheckItem {
            limit: self.limit,
            scope: &self.scope,
            op: self.op,
        }
    }
}

impl<C: Clock> Limiter<MemoryStore, C> {
    /// [`Limiter::check_with`] without a future: the in-memory store decides synchronously,
    /// so the embedded default pays for no async machinery at all.
    pub fn check_now(
        &self,
        policy: &Policy,
        request: &Request<'_>,
    ) -> Result<Decision, LimitError> {
        let mut decision = Decision::default();
        self.check_now_into(policy, request, &mut decision)?;
        Ok(decision)
    }

    /// [`Limiter::check_now`] into a decision the caller holds (a server keeps one per
    /// connection and reuses it request after request). On success every field of
    /// `decision` is overwritten; on error it is left as it was.
    pub fn check_now_into(
        &self,
        policy: &Policy,
        request: &Request<'_>,
        decision: &mut Decision,
    ) -> Result<(), LimitError> {
        let now = self.clock.now();
        let mut planned = SmallVec::new();
        let (cost, never) = plan(policy, request, &mut planned);
        if never {
            *decision = self.never_decision(now, &planned, cost);
            return Ok(());
        }
        let mut values: SmallVec<[u64; 4]> = SmallVec::from_elem(0, planned.len());
        let admitted = self.store.decide_into(now, &planned, &mut values)?;
        let decided = Decided {
            now,
            admitted,
            values: &values,
            lease: 0,
            degraded: false,
        };
        self.finish_into(policy, &planned, &decided, decision);
        Ok(())
    }
}
