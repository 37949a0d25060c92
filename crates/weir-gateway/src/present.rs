//! Which of the request fields the gateway reads a request carries, found in one pass over
//! the field names. A request usually sends few of them (a typical API call: `Host` and
//! `Authorization`), and asking the map for a field that is not there is a hashed lookup
//! each time; with this, it is a bit test.

use crate::respond::names;
use http::{header, HeaderMap, HeaderName, HeaderValue};

/// A request field the gateway reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Accept,
    ContentLength,
    ContentType,
    TransferEncoding,
    XRequestId,
    Traceparent,
    XForwardedFor,
    XApiKey,
    IdempotencyKey,
}

impl Field {
    /// Every field, each at the position of its bit.
    #[cfg(test)]
    const ALL: [Field; 9] = [
        Field::Accept,
        Field::ContentLength,
        Field::ContentType,
        Field::TransferEncoding,
        Field::XRequestId,
        Field::Traceparent,
        Field::XForwardedFor,
        Field::XApiKey,
        Field::IdempotencyKey,
    ];

    /// The field's name.
    pub(crate) fn name(self) -> HeaderName {
        match self {
            Field::Accept => header::ACCEPT,
            Field::ContentLength => header::CONTENT_LENGTH,
            Field::ContentType => header::CONTENT_TYPE,
            Field::TransferEncoding => header::TRANSFER_ENCODING,
            Field::XRequestId => names::X_REQUEST_ID,
            Field::Traceparent => names::TRACEPARENT,
            Field::XForwardedFor => names::X_FORWARDED_FOR,
            Field::XApiKey => names::X_API_KEY,
            Field::IdempotencyKey => names::IDEMPOTENCY_KEY,
        }
    }

    /// The field `name` is, if it is one of these: a match on the (lower-case) text, which
    /// compiles to a switch on its length and a comparison.
    fn of(name: &HeaderName) -> Option<Field> {
        Some(match name.as_str() {
            "accept" => Field::Accept,
            "content-length" => Field::ContentLength,
            "content-type" => Field::ContentType,
            "transfer-encoding" => Field::TransferEncoding,
            "x-request-id" => Field::XRequestId,
            "traceparent" => Field::Traceparent,
            "x-forwarded-for" => Field::XForwardedFor,
            "x-api-key" => Field::XApiKey,
            "idempotency-key" => Field::IdempotencyKey,
            _ => return None,
        })
    }
}

/// The set of [`Field`]s a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Present(u16);

impl Present {
    /// The fields among `headers`.
    pub(crate) fn of(headers: &HeaderMap) -> Present {
        let mut bits = 0u16;
        for name in headers.keys() {
            if let Some(f) = Field::of(name) {
                bits |= 1 << f as u16;
            }
        }
        Present(bits)
    }

    /// Whether the request carries `field`.
    pub(crate) fn has(self, field: Field) -> bool {
        self.0 & (1 << field as u16) != 0
    }

    /// The first value of `field` in `headers` (the map this set was taken of).
    pub(crate) fn get(self, headers: &HeaderMap, field: Field) -> Option<&HeaderValue> {
        if self.has(field) {
            headers.get(field.name())
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The one pass finds exactly the fields a hashed lookup finds (the reference).
        #[test]
        fn presence_agrees_with_lookups(
            names in proptest::collection::vec(
                proptest::sample::select(vec![
                    "accept", "content-length", "content-type", "transfer-encoding",
                    "x-request-id", "traceparent", "x-forwarded-for", "x-api-key",
                    "idempotency-key", "host", "authorization", "x-other", "tracestate",
                ]),
                0..10,
            ),
        ) {
            let mut h = HeaderMap::new();
            for n in &names {
                h.append(HeaderName::from_static(n), HeaderValue::from_static("v"));
            }
            let present = Present::of(&h);
            for f in Field::ALL {
                proptest::prop_assert_eq!(present.has(f), h.contains_key(f.name()), "{:?}", f);
            }
        }
    }

    #[test]
    fn each_field_has_its_own_bit_and_its_own_name() {
        for (i, f) in Field::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i);
            assert_eq!(Field::of(&f.name()), Some(*f));
        }
    }
}
