//! The Generic Cell Rate Algorithm, as pure functions of `(state, now)`.
//!
//! State per key is one number, the *theoretical arrival time* (TAT): the instant at
//! which the bucket is whole again. A request of cost `c` at `now` is admitted iff
//! `max(TAT, now) + c·T − now ≤ N·T` (T the emission interval, N the count), and then
//! `TAT' = max(TAT, now) + c·T`. Consequences weir relies on:
//!
//! * **Truthful retry-after.** A rejected request is admitted exactly
//!   `TAT + c·T − N·T − now` later (absent other traffic): that is the advertised wait.
//! * **Reset is the TAT.** `X-RateLimit-Reset` is when the quota is whole again, exactly.
//! * **Idle keys are free.** A key whose TAT is in the past behaves exactly like a key
//!   never seen, so the store may forget it without changing any decision.
//! * **Quota changes carry over by time.** The TAT does not depend on the quota, so when a
//!   quota changes (plan upgrade, operator tightening) the key keeps its "whole again at"
//!   instant and the backlog is read through the new quota's emission interval.
//! * **Never, not "not yet".** A cost above N can never pass: [`Verdict::Never`].

use crate::clock::Nanos;
use crate::quota::Quota;

/// The result of checking one quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted; the new TAT to store.
    Admit {
        /// TAT after this request.
        tat: Nanos,
    },
    /// Not now; admitted after `retry_after_ns` if nothing else arrives.
    Wait {
        /// Nanoseconds until this request would be admitted.
        retry_after_ns: u64,
    },
    /// The cost exceeds the quota: no wait will ever admit it.
    Never,
}

/// Checks a request of `cost` against `quota` given the stored `tat`.
#[inline]
pub fn check(quota: &Quota, tat: Nanos, now: Nanos, cost: u64) -> Verdict {
    if cost > quota.count() {
        return Verdict::Never;
    }
    match check_raw(quota.emission_ns(), quota.capacity_ns(), tat, now, cost) {
        Ok(tat) => Verdict::Admit { tat },
        Err(retry_after_ns) => Verdict::Wait { retry_after_ns },
    }
}

/// The GCRA step on raw numbers, as every store runs it (the Redis script mirrors this
/// line by line): `Ok(new TAT)` or `Err(nanoseconds to wait)`.
#[inline]
pub fn check_raw(
    emission_ns: u64,
    capacity_ns: u64,
    tat: Nanos,
    now: Nanos,
    cost: u64,
) -> Result<Nanos, u64> {
    let base = tat.max(now);
    let new_tat = base.saturating_add(cost.saturating_mul(emission_ns));
    let horizon = new_tat - now;
    if horizon <= capacity_ns {
        Ok(new_tat)
    } else {
        Err(horizon - capacity_ns)
    }
}

/// Requests left at `now` given `tat`: `floor((N·T − (max(TAT,now) − now)) / T)`.
#[inline]
pub fn remaining(quota: &Quota, tat: Nanos, now: Nanos) -> u64 {
    remaining_raw(quota.emission_ns(), quota.capacity_ns(), tat, now)
}

/// [`remaining`] on raw numbers.
#[inline]
pub fn remaining_raw(emission_ns: u64, capacity_ns: u64, tat: Nanos, now: Nanos) -> u64 {
    capacity_ns.saturating_sub(tat.saturating_sub(now)) / emission_ns.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::NANOS_PER_SEC as S;

    #[test]
    fn burst_then_smooth_refill() {
        let q = Quota::per_minute(3).expect("valid"); // T = 20 s
        let mut tat = 0;
        let now = 100 * S;
        for i in 0..3 {
            match check(&q, tat, now, 1) {
                Verdict::Admit { tat: t } => tat = t,
                v => panic!("request {i}: {v:?}"),
            }
        }
        assert_eq!(remaining(&q, tat, now), 0);
        assert_eq!(
            check(&q, tat, now, 1),
            Verdict::Wait {
                retry_after_ns: 20 * S
            }
        );
        // Exactly at the advertised time it passes; one nanosecond before, it does not.
        assert!(matches!(
            check(&q, tat, now + 20 * S - 1, 1),
            Verdict::Wait { retry_after_ns: 1 }
        ));
        assert!(matches!(
            check(&q, tat, now + 20 * S, 1),
            Verdict::Admit { .. }
        ));
        assert_eq!(check(&q, tat, now, 4), Verdict::Never);
    }

    #[test]
    fn cost_counts_as_many_requests() {
        let q = Quota::per_second(20).expect("valid");
        let Verdict::Admit { tat } = check(&q, 0, S, 20) else {
            panic!("a full batch fits an idle bucket");
        };
        assert_eq!(remaining(&q, tat, S), 0);
        assert!(matches!(check(&q, tat, S, 1), Verdict::Wait { .. }));
    }
}
