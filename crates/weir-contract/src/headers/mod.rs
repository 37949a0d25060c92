//! Header codecs: strict on output, tolerant on input.
//!
//! Every parser here takes untrusted text from the network and answers `None` (or an
//! empty result) for anything it cannot read — a malformed header is treated as absent,
//! which is what RFC 9110 and the RateLimit draft ask of recipients. None of them panics,
//! allocates without bound, or reads the clock: `now` is always an argument.

pub mod ratelimit;
pub mod request_id;
pub mod retry_after;
pub mod traceparent;
pub mod x_ratelimit;

pub use ratelimit::{Policy, QuotaUnit, RateLimitItem};
pub use request_id::is_valid_request_id;
pub use retry_after::RetryAfter;
pub use traceparent::TraceParent;
pub use x_ratelimit::{Reset, ResetKind, XRateLimit};

/// Read access to a set of response (or request) headers, whatever HTTP stack holds them.
///
/// Names are matched ASCII case-insensitively. Implemented for slices and vectors of
/// `(name, value)` pairs, and for `http::HeaderMap` with the `http` feature.
pub trait HeaderLookup {
    /// Calls `f` with every value of header `name`, in order.
    fn for_each_value(&self, name: &str, f: &mut dyn FnMut(&str));

    /// The first value of header `name`.
    fn first_value(&self, name: &str) -> Option<&str>;

    /// All values of a list-valued header joined with `", "`, as RFC 9110 §5.3 allows
    /// a recipient to combine field lines; `None` when the header is absent.
    fn joined(&self, name: &str) -> Option<String> {
        self.joined_cow(name).map(std::borrow::Cow::into_owned)
    }

    /// Like [`HeaderLookup::joined`], but borrowed (no allocation) when the header has a
    /// single field line, which is the common case.
    fn joined_cow(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        let mut lines = 0usize;
        self.for_each_value(name, &mut |_| lines += 1);
        match lines {
            0 => None,
            1 => self.first_value(name).map(std::borrow::Cow::Borrowed),
            _ => self.joined_all(name).map(std::borrow::Cow::Owned),
        }
    }

    #[doc(hidden)]
    fn joined_all(&self, name: &str) -> Option<String> {
        let mut out: Option<String> = None;
        self.for_each_value(name, &mut |v| match &mut out {
            Some(s) => {
                s.push_str(", ");
                s.push_str(v);
            }
            None => out = Some(v.to_owned()),
        });
        out
    }
}

impl<K: AsRef<str>, V: AsRef<str>> HeaderLookup for [(K, V)] {
    fn for_each_value(&self, name: &str, f: &mut dyn FnMut(&str)) {
        for (k, v) in self {
            if k.as_ref().eq_ignore_ascii_case(name) {
                f(v.as_ref());
            }
        }
    }

    fn first_value(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.as_ref().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }
}

impl<K: AsRef<str>, V: AsRef<str>> HeaderLookup for Vec<(K, V)> {
    fn for_each_value(&self, name: &str, f: &mut dyn FnMut(&str)) {
        self.as_slice().for_each_value(name, f);
    }

    fn first_value(&self, name: &str) -> Option<&str> {
        self.as_slice().first_value(name)
    }
}

#[cfg(feature = "http")]
impl HeaderLookup for http::HeaderMap {
    fn for_each_value(&self, name: &str, f: &mut dyn FnMut(&str)) {
        for v in self.get_all(name) {
            if let Ok(s) = v.to_str() {
                f(s);
            }
        }
    }

    fn first_value(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Parses an unsigned decimal integer with optional surrounding whitespace. Digits only:
/// no sign, no fraction. Values beyond `u64` saturate rather than fail, because the
/// grammars allow any number of digits and the caller clamps.
pub(crate) fn parse_decimal(value: &str) -> Option<u64> {
    let v = value.trim_matches(|c| c == ' ' || c == '\t');
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse::<u64>().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_case_insensitive_and_joins() {
        let h = vec![("RateLimit", "a"), ("ratelimit", "b"), ("Other", "c")];
        assert_eq!(h.first_value("RATELIMIT"), Some("a"));
        assert_eq!(h.joined("ratelimit").as_deref(), Some("a, b"));
        assert_eq!(h.joined("missing"), None);
    }

    #[test]
    fn decimal_is_strict_but_saturating() {
        assert_eq!(parse_decimal(" 120 "), Some(120));
        assert_eq!(parse_decimal("99999999999999999999999"), Some(u64::MAX));
        for bad in ["", "-1", "+1", "1.5", "1e3", "12a", "½"] {
            assert_eq!(parse_decimal(bad), None, "{bad}");
        }
    }
}
