//! The IETF `RateLimit-Policy` and `RateLimit` fields, draft-ietf-httpapi-ratelimit-headers-10.
//!
//! Both are RFC 9651 Lists of Items: `RateLimit-Policy: "burst";q=100;w=60` and
//! `RateLimit: "burst";r=50;t=30`. Parsing and serialisation go through the `sfv` crate.
//! On input, any failure fails the whole field ("Malformed RateLimit header fields MUST be
//! ignored"), a token is accepted where the draft wants a String (one of its own examples
//! does that), and the draft-07 Dictionary form `limit=100, remaining=50, reset=5` is
//! recognised as a fallback. On output names are always Strings and integers are clamped
//! to the 15 digits RFC 9651 allows.

use super::HeaderLookup;
use sfv::{BareItem, Item, KeyRef, List, ListEntry, ListSerializer, Parameters, Parser, StringRef};
use thiserror::Error;

/// The largest integer an sf-integer can carry (15 digits).
pub const SF_INTEGER_MAX: u64 = 999_999_999_999_999;

/// A field value weir was asked to emit that RFC 9651 cannot express.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("policy name {name:?} is not a valid structured-field string (printable ASCII only)")]
pub struct InvalidPolicyName {
    /// The offending name.
    pub name: String,
}

/// The quota unit (`qu`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaUnit {
    /// `"requests"`, the default.
    Requests,
    /// `"content-bytes"`.
    ContentBytes,
    /// `"concurrent-requests"`.
    ConcurrentRequests,
    /// Any other value, kept as sent.
    Other(String),
}

impl QuotaUnit {
    /// The wire value.
    pub fn as_str(&self) -> &str {
        match self {
            QuotaUnit::Requests => "requests",
            QuotaUnit::ContentBytes => "content-bytes",
            QuotaUnit::ConcurrentRequests => "concurrent-requests",
            QuotaUnit::Other(s) => s,
        }
    }

    fn from_wire(s: &str) -> QuotaUnit {
        match s {
            "requests" => QuotaUnit::Requests,
            "content-bytes" => QuotaUnit::ContentBytes,
            "concurrent-requests" => QuotaUnit::ConcurrentRequests,
            other => QuotaUnit::Other(other.to_owned()),
        }
    }
}

/// One member of `RateLimit-Policy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The policy name (the item's bare value).
    pub name: String,
    /// `q`: the quota, in quota units.
    pub quota: u64,
    /// `qu`: the unit, when sent.
    pub unit: Option<QuotaUnit>,
    /// `w`: the window in seconds, when sent.
    pub window: Option<u64>,
    /// `pk`: the partition key, when sent.
    pub partition_key: Option<Vec<u8>>,
}

/// One member of `RateLimit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitItem {
    /// The policy this item reports on.
    pub name: String,
    /// `r`: remaining quota units.
    pub remaining: u64,
    /// `t`: seconds until more quota is available, when sent.
    pub reset: Option<u64>,
    /// `pk`: the partition key, when sent.
    pub partition_key: Option<Vec<u8>>,
}

/// Header names.
pub const RATELIMIT: &str = "ratelimit";
/// See [`RATELIMIT`].
pub const RATELIMIT_POLICY: &str = "ratelimit-policy";

fn parse_list(value: &str) -> Option<List> {
    if value.len() > 8 * 1024 {
        return None;
    }
    Parser::new(value).parse_list().ok()
}

fn items(list: &List) -> Option<impl Iterator<Item = &Item>> {
    if list.iter().any(|e| matches!(e, ListEntry::InnerList(_))) {
        return None;
    }
    Some(list.iter().filter_map(|e| match e {
        ListEntry::Item(i) => Some(i),
        ListEntry::InnerList(_) => None,
    }))
}

fn name_of(item: &Item) -> Option<String> {
    match &item.bare_item {
        BareItem::String(s) => Some(s.as_str().to_owned()),
        BareItem::Token(t) => Some(t.as_str().to_owned()),
        _ => None,
    }
}

/// A non-negative integer parameter: `Ok(None)` when absent, `Err` when present but wrong.
fn uint_param(params: &Parameters, key: &str) -> Result<Option<u64>, ()> {
    match params.get(key) {
        None => Ok(None),
        Some(BareItem::Integer(i)) => u64::try_from(i64::from(*i)).map(Some).map_err(|_| ()),
        Some(_) => Err(()),
    }
}

fn bytes_param(params: &Parameters, key: &str) -> Result<Option<Vec<u8>>, ()> {
    match params.get(key) {
        None => Ok(None),
        Some(BareItem::ByteSequence(b)) => Ok(Some(b.clone())),
        Some(_) => Err(()),
    }
}

/// Parses a `RateLimit-Policy` value; `None` if any part is malformed.
pub fn parse_policies(value: &str) -> Option<Vec<Policy>> {
    let list = parse_list(value)?;
    let mut out = Vec::with_capacity(list.len());
    for item in items(&list)? {
        let p = &item.params;
        let unit = match p.get("qu") {
            None => None,
            Some(BareItem::String(s)) => Some(QuotaUnit::from_wire(s.as_str())),
            Some(BareItem::Token(t)) => Some(QuotaUnit::from_wire(t.as_str())),
            Some(_) => return None,
        };
        let window = uint_param(p, "w").ok()?;
        if window == Some(0) {
            return None;
        }
        out.push(Policy {
            name: name_of(item)?,
            quota: uint_param(p, "q").ok()??,
            unit,
            window,
            partition_key: bytes_param(p, "pk").ok()?,
        });
    }
    (!out.is_empty()).then_some(out)
}

/// Parses a `RateLimit` value; `None` if any part is malformed.
pub fn parse_limits(value: &str) -> Option<Vec<RateLimitItem>> {
    let list = parse_list(value)?;
    let mut out = Vec::with_capacity(list.len());
    for item in items(&list)? {
        let p = &item.params;
        out.push(RateLimitItem {
            name: name_of(item)?,
            remaining: uint_param(p, "r").ok()??,
            reset: uint_param(p, "t").ok()?,
            partition_key: bytes_param(p, "pk").ok()?,
        });
    }
    (!out.is_empty()).then_some(out)
}

/// The draft-07 form, `RateLimit: limit=100, remaining=50, reset=5`: `(limit, remaining, reset)`.
pub fn parse_legacy_dictionary(value: &str) -> Option<(Option<u64>, u64, Option<u64>)> {
    if value.len() > 8 * 1024 {
        return None;
    }
    let dict: sfv::Dictionary = Parser::new(value).parse_dictionary().ok()?;
    let get = |k: &str| match dict.get(k) {
        Some(ListEntry::Item(Item {
            bare_item: BareItem::Integer(i),
            ..
        })) => u64::try_from(i64::from(*i)).ok(),
        _ => None,
    };
    Some((get("limit"), get("remaining")?, get("reset")))
}

/// Reads both fields from headers (several field lines are joined first).
pub fn from_headers(
    headers: &(impl HeaderLookup + ?Sized),
) -> (Option<Vec<Policy>>, Option<Vec<RateLimitItem>>) {
    let policies = headers
        .joined(RATELIMIT_POLICY)
        .and_then(|v| parse_policies(&v));
    let limits = headers.joined(RATELIMIT).and_then(|v| parse_limits(&v));
    (policies, limits)
}

fn sf_int(v: u64) -> sfv::Integer {
    sfv::Integer::try_from(v.min(SF_INTEGER_MAX)).unwrap_or(sfv::Integer::MAX)
}

fn key(k: &'static str) -> &'static KeyRef {
    KeyRef::constant(k)
}

fn name_ref(name: &str) -> Result<&StringRef, InvalidPolicyName> {
    StringRef::from_str(name).map_err(|_| InvalidPolicyName {
        name: name.to_owned(),
    })
}

/// Serialises `RateLimit-Policy`.
pub fn format_policies(policies: &[Policy]) -> Result<String, InvalidPolicyName> {
    let mut ser = ListSerializer::new();
    for p in policies {
        let mut item = ser
            .bare_item(name_ref(&p.name)?)
            .parameter(key("q"), sf_int(p.quota));
        if let Some(unit) = &p.unit {
            item = item.parameter(key("qu"), name_ref(unit.as_str())?);
        }
        if let Some(w) = p.window {
            item = item.parameter(key("w"), sf_int(w));
        }
        if let Some(pk) = &p.partition_key {
            item.parameter(key("pk"), pk.as_slice());
        }
    }
    Ok(ser.finish().unwrap_or_default())
}

/// A structured-field String (a policy name or a quota unit), validated and quoted once,
/// for the hot-path writers [`write_policy_item`] and [`write_limit_item`]: a gateway
/// quotes each limit's name when it loads its configuration, not on every response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotedName(String);

impl QuotedName {
    /// Quotes `name` (escaping `"` and `\`); fails unless it is printable ASCII.
    pub fn new(name: &str) -> Result<QuotedName, InvalidPolicyName> {
        let mut ser = ListSerializer::new();
        ser.bare_item(name_ref(name)?);
        Ok(QuotedName(ser.finish().unwrap_or_default()))
    }

    /// The quoted form, e.g. `"burst"`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn push_int(out: &mut String, key: &str, v: u64) {
    out.push_str(key);
    out.push_str(itoa::Buffer::new().format(v.min(SF_INTEGER_MAX)));
}

fn push_member(out: &mut String, name: &QuotedName) {
    if !out.is_empty() {
        out.push_str(", ");
    }
    out.push_str(name.as_str());
}

/// Appends one `RateLimit-Policy` member to `out` (after `", "` unless `out` is empty):
/// byte for byte what [`format_policies`] writes for it, without a serialiser.
pub fn write_policy_item(
    out: &mut String,
    name: &QuotedName,
    quota: u64,
    unit: Option<&QuotedName>,
    window: Option<u64>,
) {
    push_member(out, name);
    push_int(out, ";q=", quota);
    if let Some(u) = unit {
        out.push_str(";qu=");
        out.push_str(u.as_str());
    }
    if let Some(w) = window {
        push_int(out, ";w=", w);
    }
}

/// Appends one `RateLimit` member to `out` (after `", "` unless `out` is empty): byte for
/// byte what [`format_limits`] writes for it.
pub fn write_limit_item(out: &mut String, name: &QuotedName, remaining: u64, reset: Option<u64>) {
    push_member(out, name);
    push_int(out, ";r=", remaining);
    if let Some(t) = reset {
        push_int(out, ";t=", t);
    }
}

/// Serialises `RateLimit`.
pub fn format_limits(limits: &[RateLimitItem]) -> Result<String, InvalidPolicyName> {
    let mut ser = ListSerializer::new();
    for l in limits {
        let mut item = ser
            .bare_item(name_ref(&l.name)?)
            .parameter(key("r"), sf_int(l.remaining));
        if let Some(t) = l.reset {
            item = item.parameter(key("t"), sf_int(t));
        }
        if let Some(pk) = &l.partition_key {
            item.parameter(key("pk"), pk.as_slice());
        }
    }
    Ok(ser.finish().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draft_examples_parse() {
        let p = parse_policies(r#""burst";q=100;w=60,"daily";q=1000;w=86400"#).expect("valid");
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[1].name.as_str(), p[1].quota, p[1].window),
            ("daily", 1000, Some(86400))
        );
        let p = parse_policies(r#""peruser";q=65535;qu="content-bytes";w=10;pk=:sdfjLJUOUH==:"#)
            .expect("valid");
        assert_eq!(p[0].unit, Some(QuotaUnit::ContentBytes));
        assert!(p[0].partition_key.is_some());
        let l = parse_limits(r#""default";r=50;t=30"#).expect("valid");
        assert_eq!((l[0].remaining, l[0].reset), (50, Some(30)));
        let l = parse_limits(r#""default";r=300000000;t=60;pk=:QXBwLTk5OQ==:"#).expect("valid");
        assert_eq!(l[0].partition_key.as_deref(), Some(&b"App-999"[..]));
        // A token where a String is expected: accepted on input.
        assert_eq!(
            parse_policies("quota;q=100;w=1")
                .map(|p| p[0].name.clone())
                .as_deref(),
            Some("quota")
        );
    }

    #[test]
    fn malformed_fields_are_ignored_whole() {
        for bad in [
            r#"default;r=abc"#,
            r#""x";r=-1"#,
            r#""x";t=5"#,
            r#""a";r=1, ("b");r=2"#,
            r#""a";r=1,"#,
            "",
        ] {
            assert_eq!(parse_limits(bad), None, "{bad}");
        }
        for bad in [
            r#""x";w=60"#,
            r#""x";q=1;w=0"#,
            r#""x";q=-5"#,
            r#""x";q=1;qu=5"#,
        ] {
            assert_eq!(parse_policies(bad), None, "{bad}");
        }
    }

    #[test]
    fn format_is_strict() {
        let policies = [Policy {
            name: "org-minute".into(),
            quota: 30,
            unit: None,
            window: Some(60),
            partition_key: None,
        }];
        assert_eq!(
            format_policies(&policies).as_deref(),
            Ok(r#""org-minute";q=30;w=60"#)
        );
        let limits = [RateLimitItem {
            name: "default".into(),
            remaining: 0,
            reset: Some(5),
            partition_key: Some(b"App-999".to_vec()),
        }];
        assert_eq!(
            format_limits(&limits).as_deref(),
            Ok(r#""default";r=0;t=5;pk=:QXBwLTk5OQ==:"#)
        );
        assert!(format_limits(&[RateLimitItem {
            name: "ünïcode".into(),
            remaining: 0,
            reset: None,
            partition_key: None
        }])
        .is_err());
    }

    #[test]
    fn regression_fuzz_duplicate_parameter_last_wins() {
        // Found by the `ratelimit_fields` fuzz target: a wrongly typed first `r` followed by
        // a valid one is valid (RFC 9651: the last duplicate wins).
        let v = r#""a";r=t21;r=12"#;
        assert_eq!(parse_limits(v).map(|l| l[0].remaining), Some(12));
        assert_eq!(tightest(v, None).map(|t| t.remaining), Some(12));
        let v = r#""a";r=12;r=t21"#;
        assert_eq!(parse_limits(v), None);
        assert_eq!(tightest(v, None), None);
    }

    #[test]
    fn legacy_dictionary() {
        assert_eq!(
            parse_legacy_dictionary("limit=100, remaining=50, reset=5"),
            Some((Some(100), 50, Some(5)))
        );
        assert_eq!(parse_legacy_dictionary(r#""x";r=1"#), None);
    }
}

// ---- allocation-free reading, for clients on their hot path -----------------------------

/// The most constrained item of a `RateLimit` field, with its policy's quota and window,
/// read without allocating (names borrow from the header value unless they contain
/// escapes). Same validation as [`parse_limits`] and [`parse_policies`]: any malformed
/// part makes the field count as absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tightest<'a> {
    /// The policy name.
    pub name: std::borrow::Cow<'a, str>,
    /// `r`.
    pub remaining: u64,
    /// `t`.
    pub reset: Option<u64>,
    /// `q` of the same-named policy, when `RateLimit-Policy` has it.
    pub quota: Option<u64>,
    /// `w` of the same-named policy.
    pub window: Option<u64>,
}

mod visit {
    use sfv::visitor::{
        EntryVisitor, Ignored, InnerListVisitor, ItemVisitor, ListVisitor, ParameterVisitor,
    };
    use sfv::{BareItemFromInput, GenericBareItem, KeyRef};
    use std::borrow::Cow;

    #[derive(Debug)]
    pub struct Invalid;

    impl std::fmt::Display for Invalid {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("malformed RateLimit field")
        }
    }

    impl std::error::Error for Invalid {}

    fn name<'de>(v: BareItemFromInput<'de>) -> Result<Cow<'de, str>, Invalid> {
        match v {
            GenericBareItem::String(Cow::Borrowed(s)) => Ok(Cow::Borrowed(s.as_str())),
            GenericBareItem::String(Cow::Owned(s)) => Ok(Cow::Owned(s.as_str().to_owned())),
            GenericBareItem::Token(t) => Ok(Cow::Borrowed(t.as_str())),
            _ => Err(Invalid),
        }
    }

    fn uint(v: &BareItemFromInput<'_>) -> Result<u64, Invalid> {
        match v {
            GenericBareItem::Integer(i) => u64::try_from(i64::from(*i)).map_err(|_| Invalid),
            _ => Err(Invalid),
        }
    }

    /// One item's name and its parameters of interest. Each slot keeps the *last* value
    /// seen (RFC 9651: of duplicate keys the last wins), validated only at the end.
    pub struct Params<'de, 'p, P> {
        parent: &'p mut P,
        name: Cow<'de, str>,
        a: Option<Result<u64, Invalid>>,
        b: Option<Result<u64, Invalid>>,
        other_ok: [Option<bool>; 2],
    }

    /// `RateLimit`: keeps the first item with the least `r`.
    #[derive(Default)]
    pub struct Limits<'de> {
        pub best: Option<(Cow<'de, str>, u64, Option<u64>)>,
    }

    /// `RateLimit-Policy`: finds `q` and `w` of the policy named `target`.
    pub struct Policies<'t> {
        pub target: &'t str,
        pub found: Option<(u64, Option<u64>)>,
    }

    pub struct Entry<'p, P>(&'p mut P);

    pub trait Collect<'de> {
        /// `(first param key, second param key)`: `r`/`t` or `q`/`w`.
        const KEYS: (&'static str, &'static str);
        fn collect(
            &mut self,
            name: Cow<'de, str>,
            a: Option<u64>,
            b: Option<u64>,
        ) -> Result<(), Invalid>;
    }

    impl<'de> Collect<'de> for Limits<'de> {
        const KEYS: (&'static str, &'static str) = ("r", "t");
        fn collect(
            &mut self,
            name: Cow<'de, str>,
            a: Option<u64>,
            b: Option<u64>,
        ) -> Result<(), Invalid> {
            let r = a.ok_or(Invalid)?;
            if self.best.as_ref().is_none_or(|(_, best, _)| r < *best) {
                self.best = Some((name, r, b));
            }
            Ok(())
        }
    }

    impl<'de> Collect<'de> for Policies<'_> {
        const KEYS: (&'static str, &'static str) = ("q", "w");
        fn collect(
            &mut self,
            name: Cow<'de, str>,
            a: Option<u64>,
            b: Option<u64>,
        ) -> Result<(), Invalid> {
            let q = a.ok_or(Invalid)?;
            if b == Some(0) {
                return Err(Invalid);
            }
            if self.found.is_none() && name == self.target {
                self.found = Some((q, b));
            }
            Ok(())
        }
    }

    /// The list-level visitor over a collector.
    pub struct List<'p, P>(pub &'p mut P);

    impl<'de, P: Collect<'de>> ListVisitor<'de> for List<'_, P> {
        type Out = ();
        type Error = Invalid;
        fn entry(&mut self) -> Result<impl EntryVisitor<'de>, Invalid> {
            Ok(Entry(&mut *self.0))
        }
        fn finish(self) -> Result<(), Invalid> {
            Ok(())
        }
    }

    impl<'de, P: Collect<'de>> EntryVisitor<'de> for Entry<'_, P> {
        type Error = Invalid;
        fn item(self) -> Result<impl ItemVisitor<'de>, Invalid> {
            Ok(self)
        }
        fn inner_list(self) -> Result<impl InnerListVisitor<'de>, Invalid> {
            Err::<Ignored, _>(Invalid)
        }
    }

    impl<'de, 'p, P: Collect<'de>> ItemVisitor<'de> for Entry<'p, P> {
        type Out = ();
        type Error = Invalid;
        fn bare_item(
            self,
            v: BareItemFromInput<'de>,
        ) -> Result<impl ParameterVisitor<'de, Out = ()>, Invalid> {
            Ok(Params {
                parent: self.0,
                name: name(v)?,
                a: None,
                b: None,
                other_ok: [None, None],
            })
        }
    }

    impl<'de, P: Collect<'de>> ParameterVisitor<'de> for Params<'de, '_, P> {
        type Out = ();
        type Error = Invalid;
        fn parameter(
            &mut self,
            key: &'de KeyRef,
            v: BareItemFromInput<'de>,
        ) -> Result<(), Invalid> {
            let (ka, kb) = P::KEYS;
            match key.as_str() {
                k if k == ka => self.a = Some(uint(&v)),
                k if k == kb => self.b = Some(uint(&v)),
                "pk" => self.other_ok[0] = Some(matches!(v, GenericBareItem::ByteSequence(_))),
                "qu" if ka == "q" => {
                    self.other_ok[1] = Some(matches!(
                        v,
                        GenericBareItem::String(_) | GenericBareItem::Token(_)
                    ));
                }
                _ => {}
            }
            Ok(())
        }
        fn finish(self) -> Result<(), Invalid> {
            if self.other_ok.contains(&Some(false)) {
                return Err(Invalid);
            }
            let a = self.a.transpose()?;
            let b = self.b.transpose()?;
            self.parent.collect(self.name, a, b)
        }
    }
}

/// Reads the tightest `RateLimit` item and its policy without allocating.
pub fn tightest<'a>(limits: &'a str, policies: Option<&'a str>) -> Option<Tightest<'a>> {
    if limits.len() > 8 * 1024 || policies.is_some_and(|p| p.len() > 8 * 1024) {
        return None;
    }
    let mut l = visit::Limits::default();
    Parser::new(limits)
        .parse_list_with_visitor(visit::List(&mut l))
        .ok()?;
    let (name, remaining, reset) = l.best?;
    let (quota, window) = match policies {
        Some(p) => {
            let mut v = visit::Policies {
                target: &name,
                found: None,
            };
            match Parser::new(p).parse_list_with_visitor(visit::List(&mut v)) {
                Ok(()) => v.found.map_or((None, None), |(q, w)| (Some(q), w)),
                Err(_) => (None, None),
            }
        }
        None => (None, None),
    };
    Some(Tightest {
        name,
        remaining,
        reset,
        quota,
        window,
    })
}
