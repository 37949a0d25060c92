//! Pacing: hold back requests that would surely be rejected.
//!
//! Per host and credential, the client keeps a *mirror* of the server's limiter: a GCRA
//! with the server's limit `L` and emission interval `T` (`w / q` from `RateLimit-Policy`
//! when present, else `(reset − now) / (L − remaining)`). Every send is charged locally the
//! moment it leaves, so concurrent tasks never overshoot together. Every response resyncs
//! the mirror to at least the server's view (`L − remaining` units outstanding), which also
//! accounts for other clients using the same credential. A 429 with `Retry-After` pushes
//! the next send to exactly then.
//!
//! Without any rate-limit headers, a 429 halves the pace (the send interval doubles) and
//! each success shortens it by 10% — additive-increase/multiplicative-decrease on the rate.

use crate::MAX_SERVER_WAIT;
use parking_lot::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use weir_contract::headers::{ratelimit, HeaderLookup, RetryAfter, XRateLimit};

/// `now + n × emission`, clamped so no header value can overflow time arithmetic.
fn ahead(now: Instant, emission: Duration, n: u64) -> Instant {
    now + emission
        .saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
        .min(MAX_SERVER_WAIT)
}

#[derive(Debug)]
struct State {
    /// Learned limit and interval.
    limit: Option<u64>,
    emission: Duration,
    /// The mirror's theoretical arrival time.
    tat: Instant,
    /// AIMD spacing when no headers are sent, and the earliest next send it allows.
    interval: Duration,
    next_free: Instant,
    /// Sends so far (each send's sequence number is the count after it).
    sent: u64,
    /// Sends whose responses have not arrived.
    unanswered: u64,
}

/// One host+credential's pacer.
#[derive(Debug)]
pub struct Pacer {
    state: Mutex<State>,
}

/// Pacing would wait past the caller's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WouldExceedDeadline {
    /// How long it would have waited.
    pub wait: Duration,
}

impl Default for Pacer {
    fn default() -> Self {
        let now = Instant::now();
        Pacer {
            state: Mutex::new(State {
                limit: None,
                emission: Duration::ZERO,
                tat: now,
                interval: Duration::ZERO,
                next_free: now,
                sent: 0,
                unanswered: 0,
            }),
        }
    }
}

impl Pacer {
    /// The earliest instant the next send may leave, and charges it when that is now.
    /// Charges a send at `now` if one may leave (returning its sequence number), else says
    /// when one may (no waiting).
    pub fn try_acquire(&self, now: Instant) -> Result<u64, Instant> {
        let mut s = self.state.lock();
        let mut earliest = s.next_free;
        if let Some(l) = s.limit {
            let capacity = s
                .emission
                .saturating_mul(u32::try_from(l).unwrap_or(u32::MAX));
            let base = s.tat.max(now);
            let new_tat = base + s.emission;
            if new_tat.saturating_duration_since(now) > capacity {
                earliest = earliest.max(new_tat - capacity);
            }
        }
        if earliest > now {
            return Err(earliest);
        }
        if s.limit.is_some() {
            s.tat = s.tat.max(now) + s.emission;
        }
        s.next_free = now + s.interval;
        s.sent += 1;
        s.unanswered += 1;
        Ok(s.sent)
    }

    /// Waits until a send may leave (never past `deadline`). Returns how long it waited and
    /// the send's sequence number (give it back to [`Pacer::observe`]).
    pub async fn acquire(&self, deadline: Instant) -> Result<(Duration, u64), WouldExceedDeadline> {
        let start = Instant::now();
        loop {
            let now = Instant::now();
            match self.try_acquire(now) {
                Ok(seq) => return Ok((now - start, seq)),
                Err(at) if at > deadline => return Err(WouldExceedDeadline { wait: at - now }),
                Err(at) => tokio::time::sleep_until(at.into()).await,
            }
        }
    }

    /// A send that will never be answered (the connection failed).
    pub fn forget_send(&self) {
        let mut s = self.state.lock();
        s.unanswered = s.unanswered.saturating_sub(1);
    }

    /// Learns from the response to send number `seq` (its headers and status).
    pub fn observe(
        &self,
        headers: &(impl HeaderLookup + ?Sized),
        status: u16,
        now: Instant,
        seq: u64,
    ) {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut s = self.state.lock();
        // What the server's count cannot include yet: sends after this one that are still
        // unanswered. (Concurrent requests may reach the server out of order; of the two
        // bounds, the smaller errs least.)
        s.unanswered = s.unanswered.saturating_sub(1);
        let pending = s.sent.saturating_sub(seq).min(s.unanswered);
        let mut learned = false;
        // Allocation-free: the header values are borrowed when they are single lines.
        let limits = headers.joined_cow(ratelimit::RATELIMIT);
        let policies = headers.joined_cow(ratelimit::RATELIMIT_POLICY);
        let tightest = limits
            .as_deref()
            .and_then(|l| ratelimit::tightest(l, policies.as_deref()));
        if let Some(t) = tightest {
            if let (Some(q), Some(w)) = (t.quota.filter(|q| *q > 0), t.window) {
                s.limit = Some(q);
                s.emission = (Duration::from_secs(w) / u32::try_from(q).unwrap_or(u32::MAX))
                    .min(MAX_SERVER_WAIT);
                let used = q.saturating_sub(t.remaining).saturating_add(pending);
                s.tat = s.tat.max(ahead(now, s.emission, used));
                learned = true;
            }
        }
        if !learned {
            if let Some(x) = XRateLimit::from_headers(headers, unix) {
                if let (Some(l), Some(r)) = (x.limit, x.remaining) {
                    if l > 0 {
                        let used = l.saturating_sub(r);
                        if used > 0 {
                            if let Some(reset) = x.reset {
                                let until = Duration::from_secs(reset.seconds_from(unix));
                                if !until.is_zero() {
                                    s.emission = (until / u32::try_from(used).unwrap_or(u32::MAX))
                                        .min(MAX_SERVER_WAIT);
                                }
                            }
                        }
                        if !s.emission.is_zero() {
                            s.limit = Some(l);
                            s.tat = s
                                .tat
                                .max(ahead(now, s.emission, used.saturating_add(pending)));
                            learned = true;
                        }
                    }
                }
            }
        }
        if status == 429 {
            if let Some(ra) = RetryAfter::from_headers(headers) {
                let at = now + ra.delay_from(SystemTime::now()).min(MAX_SERVER_WAIT);
                s.next_free = s.next_free.max(at);
                if let Some(l) = s.limit {
                    s.tat = s.tat.max(ahead(at, s.emission, l.saturating_sub(1)));
                }
            } else if !learned {
                s.interval = (s.interval * 2).clamp(Duration::from_millis(10), MAX_SERVER_WAIT);
                s.next_free = now + s.interval;
            }
        } else if status < 400 && !learned && !s.interval.is_zero() {
            s.interval = s.interval.mul_f64(0.9);
            if s.interval < Duration::from_millis(1) {
                s.interval = Duration::ZERO;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_the_server_limit_from_ietf_fields() {
        let p = Pacer::default();
        let now = Instant::now();
        let h = [
            ("RateLimit-Policy", r#""r";q=20;w=1"#),
            ("RateLimit", r#""r";r=0;t=1"#),
        ];
        p.observe(&h[..], 200, now, 0);
        // All 20 used: the next send may leave one interval (50 ms) later, not before.
        let at = p.try_acquire(now).expect_err("must wait");
        assert_eq!(at - now, Duration::from_millis(50));
        assert!(p.try_acquire(now + Duration::from_millis(50)).is_ok());
        assert!(
            p.try_acquire(now + Duration::from_millis(50)).is_err(),
            "charged on send"
        );
    }

    #[test]
    fn responses_out_of_order_neither_double_count_nor_undercount() {
        // Another client already used 1 of 5/min; we send 3 at once, processed in order
        // (remaining 3, 2, 1) but answered in reverse.
        let p = Pacer::default();
        let now = Instant::now();
        let seqs: Vec<u64> = (0..3)
            .map(|_| p.try_acquire(now).expect("unknown limit"))
            .collect();
        for (seq, r) in [(seqs[2], 1), (seqs[1], 2), (seqs[0], 3)] {
            let rl = format!("\"m\";r={r};t=12");
            let h = [
                ("RateLimit-Policy", "\"m\";q=5;w=60".to_owned()),
                ("RateLimit", rl),
            ];
            p.observe(&h[..], 200, now, seq);
        }
        assert!(p.try_acquire(now).is_ok(), "the 5th unit is free");
        assert!(p.try_acquire(now).is_err(), "the 6th would be refused");
    }

    #[test]
    fn retry_after_on_429_defers_the_next_send() {
        let p = Pacer::default();
        let now = Instant::now();
        p.observe(&[("Retry-After", "2")][..], 429, now, 0);
        let at = p.try_acquire(now).expect_err("must wait");
        assert!(at >= now + Duration::from_secs(2) - Duration::from_millis(5));
    }

    #[test]
    fn aimd_without_headers() {
        let p = Pacer::default();
        let now = Instant::now();
        assert!(p.try_acquire(now).is_ok());
        p.observe(&[("x", "y")][..], 429, now, 1);
        p.observe(&[("x", "y")][..], 429, now, 1);
        assert_eq!(p.state.lock().interval, Duration::from_millis(20));
        for _ in 0..100 {
            p.observe(&[("x", "y")][..], 200, now, 1);
        }
        assert_eq!(
            p.state.lock().interval,
            Duration::ZERO,
            "recovers on success"
        );
    }
}
