//! `Retry-After` (RFC 9110 §10.2.3): `delay-seconds` or an HTTP-date.
//!
//! Input accepts all three HTTP-date forms (IMF-fixdate, RFC 850, asctime), as §5.6.7
//! requires of recipients; a date in the past means "now"; anything else is absent.
//! Output is delta-seconds (no clock synchronisation needed) or, on request, IMF-fixdate.

use super::{parse_decimal, HeaderLookup};
use std::time::{Duration, SystemTime};

/// A parsed `Retry-After` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// `Retry-After: 120`.
    Delay(u64),
    /// `Retry-After: Fri, 31 Dec 1999 23:59:59 GMT`.
    Date(SystemTime),
}

impl RetryAfter {
    /// The header name.
    pub const NAME: &'static str = "retry-after";

    /// Parses a header value; `None` for anything that is neither form.
    pub fn parse(value: &str) -> Option<RetryAfter> {
        if let Some(secs) = parse_decimal(value) {
            return Some(RetryAfter::Delay(secs));
        }
        let v = value.trim();
        // The longest HTTP-date form (RFC 850 with "Wednesday") is 37 bytes.
        if v.len() > 40 || !v.is_ascii() {
            return None;
        }
        httpdate::parse_http_date(v).ok().map(RetryAfter::Date)
    }

    /// Reads the header from a response.
    pub fn from_headers(headers: &(impl HeaderLookup + ?Sized)) -> Option<RetryAfter> {
        headers.first_value(Self::NAME).and_then(RetryAfter::parse)
    }

    /// How long to wait from `now`: the delay, or the time until the date (zero when the
    /// date has passed).
    pub fn delay_from(self, now: SystemTime) -> Duration {
        match self {
            RetryAfter::Delay(s) => Duration::from_secs(s),
            RetryAfter::Date(t) => t.duration_since(now).unwrap_or(Duration::ZERO),
        }
    }

    /// The header value: digits for a delay, IMF-fixdate for a date.
    pub fn to_header_value(self) -> String {
        match self {
            RetryAfter::Delay(s) => s.to_string(),
            RetryAfter::Date(t) => httpdate::fmt_http_date(t),
        }
    }
}

/// The delta-seconds a server should advertise for a wait: rounded *up* to whole seconds,
/// so that a client that waits exactly the advertised time is never early.
pub fn delay_seconds_ceil(wait: Duration) -> u64 {
    let secs = wait.as_secs();
    if wait.subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(unix: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix)
    }

    #[test]
    fn all_three_date_forms_parse_to_the_same_instant() {
        // RFC 9110 §5.6.7's three examples.
        let expected = Some(RetryAfter::Date(at(784_111_777)));
        assert_eq!(RetryAfter::parse("Sun, 06 Nov 1994 08:49:37 GMT"), expected);
        assert_eq!(
            RetryAfter::parse("Sunday, 06-Nov-94 08:49:37 GMT"),
            expected
        );
        assert_eq!(RetryAfter::parse("Sun Nov  6 08:49:37 1994"), expected);
    }

    #[test]
    fn rfc_examples() {
        assert_eq!(RetryAfter::parse("120"), Some(RetryAfter::Delay(120)));
        let d = RetryAfter::parse("Fri, 31 Dec 1999 23:59:59 GMT").expect("date");
        assert_eq!(d.delay_from(at(946_684_799 - 10)), Duration::from_secs(10));
    }

    #[test]
    fn past_dates_mean_zero_and_garbage_is_absent() {
        let d = RetryAfter::parse("Fri, 31 Dec 1999 23:59:59 GMT").expect("date");
        assert_eq!(d.delay_from(at(2_000_000_000)), Duration::ZERO);
        for bad in [
            "",
            "soon",
            "-5",
            "1.5",
            "Fri, 31 Dec 1999",
            "Fri, 31 Dec 1999 25:00:00 GMT",
        ] {
            assert_eq!(RetryAfter::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn output_is_strict() {
        assert_eq!(RetryAfter::Delay(5).to_header_value(), "5");
        assert_eq!(
            RetryAfter::Date(at(784_111_777)).to_header_value(),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(delay_seconds_ceil(Duration::from_millis(4_001)), 5);
        assert_eq!(delay_seconds_ceil(Duration::from_secs(4)), 4);
        assert_eq!(delay_seconds_ceil(Duration::ZERO), 0);
    }
}
