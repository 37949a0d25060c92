//! The de-facto `X-RateLimit-Limit` / `-Remaining` / `-Reset` trio (reference 004).
//!
//! weir *emits* `Reset` as Unix epoch seconds, as reference 004 documents. On input the
//! meaning of Reset varies between APIs (epoch seconds at GitHub and reference 004,
//! delta-seconds in the IETF drafts up to -06, epoch milliseconds elsewhere), so the
//! parser decides by magnitude and *says which it assumed* in [`ResetKind`]:
//! `>= 10^12` is epoch milliseconds, `>= 10^9` is epoch seconds, anything smaller is
//! delta-seconds. The old draft names (`RateLimit-Limit`, …) are always delta-seconds,
//! and the `X-Rate-Limit-*` spelling is read like `X-RateLimit-*`.

use super::{parse_decimal, HeaderLookup};

/// How a Reset value was interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetKind {
    /// Unix epoch seconds (GitHub, reference 004).
    UnixSeconds,
    /// Unix epoch milliseconds.
    UnixMillis,
    /// Seconds from now (IETF drafts up to -06, several APIs).
    DeltaSeconds,
}

impl ResetKind {
    /// A short label for explanations.
    pub fn describe(self) -> &'static str {
        match self {
            ResetKind::UnixSeconds => "Unix epoch seconds",
            ResetKind::UnixMillis => "Unix epoch milliseconds",
            ResetKind::DeltaSeconds => "seconds from now",
        }
    }
}

/// A Reset value, as sent and as resolved to an absolute time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reset {
    /// The number as it was sent.
    pub raw: u64,
    /// How it was read.
    pub kind: ResetKind,
    /// When the window resets, in Unix seconds (rounded up for milliseconds).
    pub unix: u64,
}

impl Reset {
    /// Reads a Reset value by magnitude; `now_unix` resolves delta-seconds.
    pub fn parse(value: &str, now_unix: u64) -> Option<Reset> {
        let raw = first_number(value)?;
        Some(Reset::classify(raw, now_unix))
    }

    fn classify(raw: u64, now_unix: u64) -> Reset {
        let (kind, unix) = if raw >= 1_000_000_000_000 {
            (ResetKind::UnixMillis, raw.div_ceil(1000))
        } else if raw >= 1_000_000_000 {
            (ResetKind::UnixSeconds, raw)
        } else {
            (ResetKind::DeltaSeconds, now_unix.saturating_add(raw))
        };
        Reset { raw, kind, unix }
    }

    /// Seconds from `now_unix` until the reset; zero when it has passed.
    pub fn seconds_from(&self, now_unix: u64) -> u64 {
        self.unix.saturating_sub(now_unix)
    }
}

/// The three values, each optional because APIs send subsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct XRateLimit {
    /// Maximum requests in the window.
    pub limit: Option<u64>,
    /// Requests left in the window.
    pub remaining: Option<u64>,
    /// When the window resets.
    pub reset: Option<Reset>,
}

/// `[limit, remaining, reset]` header names per spelling: looked up without building
/// strings, so reading them allocates nothing.
const SPELLINGS: [[&str; 3]; 2] = [
    [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ],
    [
        "x-rate-limit-limit",
        "x-rate-limit-remaining",
        "x-rate-limit-reset",
    ],
];
const DRAFT_06: [&str; 3] = ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"];

impl XRateLimit {
    /// Header names weir emits.
    pub const LIMIT: &'static str = "x-ratelimit-limit";
    /// See [`XRateLimit::LIMIT`].
    pub const REMAINING: &'static str = "x-ratelimit-remaining";
    /// See [`XRateLimit::LIMIT`].
    pub const RESET: &'static str = "x-ratelimit-reset";

    /// Reads the trio from headers (either spelling, or the draft-06 `RateLimit-*` names);
    /// `None` when none of them is present and readable.
    pub fn from_headers(
        headers: &(impl HeaderLookup + ?Sized),
        now_unix: u64,
    ) -> Option<XRateLimit> {
        for [limit, remaining, reset] in SPELLINGS {
            let found = XRateLimit {
                limit: headers.first_value(limit).and_then(first_number),
                remaining: headers.first_value(remaining).and_then(first_number),
                reset: headers
                    .first_value(reset)
                    .and_then(|v| Reset::parse(v, now_unix)),
            };
            if !found.is_empty() {
                return Some(found);
            }
        }
        // draft-ietf-httpapi-ratelimit-headers up to -06: Reset is delta-seconds.
        let [limit, remaining, reset] = DRAFT_06;
        let found = XRateLimit {
            limit: headers.first_value(limit).and_then(first_number),
            remaining: headers.first_value(remaining).and_then(first_number),
            reset: headers
                .first_value(reset)
                .and_then(first_number)
                .map(|raw| Reset {
                    raw,
                    kind: ResetKind::DeltaSeconds,
                    unix: now_unix.saturating_add(raw),
                }),
        };
        (!found.is_empty()).then_some(found)
    }

    fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none() && self.reset.is_none()
    }

    /// Whether the server says the window is used up.
    pub fn exhausted(&self) -> bool {
        self.remaining == Some(0)
    }

    /// The three header lines weir emits: decimal integers, Reset in Unix seconds.
    pub fn format(limit: u64, remaining: u64, reset_unix: u64) -> [(&'static str, String); 3] {
        [
            (Self::LIMIT, limit.to_string()),
            (Self::REMAINING, remaining.to_string()),
            (Self::RESET, reset_unix.to_string()),
        ]
    }
}

/// The leading unsigned integer of a value, tolerating a list or parameters after it
/// (`"100, 100;w=60"` in early drafts' style).
fn first_number(value: &str) -> Option<u64> {
    let head = value.split([',', ';']).next()?;
    parse_decimal(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_004_headers() {
        let h = [
            ("X-RateLimit-Limit", "60"),
            ("X-RateLimit-Remaining", "58"),
            ("X-RateLimit-Reset", "1711540800"),
        ];
        let x = XRateLimit::from_headers(&h[..], 1_711_540_790).expect("present");
        assert_eq!(x.limit, Some(60));
        assert_eq!(x.remaining, Some(58));
        let reset = x.reset.expect("reset");
        assert_eq!(reset.kind, ResetKind::UnixSeconds);
        assert_eq!(reset.seconds_from(1_711_540_790), 10);
    }

    #[test]
    fn delta_millis_and_other_spellings() {
        let now = 1_700_000_000;
        let h = [("x-rate-limit-reset", "30")];
        let r = XRateLimit::from_headers(&h[..], now)
            .and_then(|x| x.reset)
            .expect("reset");
        assert_eq!((r.kind, r.unix), (ResetKind::DeltaSeconds, now + 30));
        let r = Reset::parse("1700000000500", now).expect("ms");
        assert_eq!((r.kind, r.unix), (ResetKind::UnixMillis, now + 1));
        let h = [
            ("RateLimit-Limit", "100"),
            ("RateLimit-Reset", "1700000000"),
        ];
        let x = XRateLimit::from_headers(&h[..], 5).expect("draft-06");
        assert_eq!(x.reset.map(|r| r.kind), Some(ResetKind::DeltaSeconds));
    }

    #[test]
    fn malformed_values_are_absent() {
        let h = [
            ("X-RateLimit-Remaining", "-1"),
            ("X-RateLimit-Limit", "lots"),
        ];
        assert_eq!(XRateLimit::from_headers(&h[..], 0), None);
    }
}
