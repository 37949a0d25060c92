//! Property tests: every dialect round-trips, every header codec round-trips, and no
//! parser panics on arbitrary input.

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use serde_json::{Map, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use weir_contract::headers::{
    ratelimit, traceparent::TraceParent, x_ratelimit::Reset, Policy, QuotaUnit, RateLimitItem,
    RetryAfter, XRateLimit,
};
use weir_contract::{explain, parse_body, ApiError, Dialect, InnerError, ProblemFields};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 _.:/-]{0,24}",
        any::<String>().prop_map(|s| s.chars().take(24).collect()),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        text().prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        vec(text().prop_map(Value::String), 0..3).prop_map(Value::Array),
    ]
}

/// Extension members whose names no dialect reserves.
fn extra() -> impl Strategy<Value = Map<String, Value>> {
    btree_map("x_[a-z]{1,8}", scalar(), 0..3).prop_map(|m| m.into_iter().collect())
}

fn inner_level() -> impl Strategy<Value = InnerError> {
    (text(), extra()).prop_map(|(code, extra)| InnerError {
        code: Some(code),
        extra,
    })
}

fn leaf_error() -> impl Strategy<Value = ApiError> {
    (
        option::of(100u16..600),
        option::of(text()),
        option::of(text()),
        option::of(text()),
        option::of(any::<bool>()),
        option::of(text()),
        option::of(text()),
        option::of(text()),
        vec(inner_level(), 0..4),
        (option::of(text()), option::of(text()), option::of(text())),
        extra(),
    )
        .prop_map(
            |(
                status,
                code,
                message,
                hint,
                retryable,
                request_id,
                date,
                target,
                inner,
                (t, ti, inst),
                extra,
            )| ApiError {
                status,
                code,
                message,
                hint,
                retryable,
                request_id,
                date,
                target,
                inner,
                details: Vec::new(),
                problem: ProblemFields {
                    type_uri: t,
                    title: ti,
                    instance: inst,
                },
                extra,
            },
        )
}

fn api_error() -> impl Strategy<Value = ApiError> {
    (leaf_error(), vec(leaf_error(), 0..3)).prop_map(|(mut e, details)| {
        e.details = details
            .into_iter()
            .map(|d| ApiError { status: None, ..d })
            .collect();
        e
    })
}

fn dialect() -> impl Strategy<Value = Dialect> {
    prop_oneof![
        Just(Dialect::Detail),
        Just(Dialect::Error),
        Just(Dialect::Mcp),
        Just(Dialect::Problem)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// parse(render(e)) == project(e), with and without the status line, detected from the
    /// bytes alone (the problem dialect by its content type).
    #[test]
    fn every_dialect_round_trips(e in api_error(), d in dialect()) {
        let projected = d.project(&e);
        let body = d.render_string(&e);
        let ct = d.content_type();
        let parsed = weir_contract::parse_response(e.status, Some(ct), body.as_bytes())
            .map_err(|u| TestCaseError::fail(format!("{u:?} for {body}")))?;
        prop_assert_eq!(parsed.dialect, d);
        prop_assert_eq!(&parsed.error, &projected);
        // Projection is idempotent and rendering the projection renders the same body.
        prop_assert_eq!(d.project(&projected), projected.clone());
        prop_assert_eq!(d.render(&projected), d.render(&e));
    }

    /// Detection from bytes alone (no content type) also finds the dialect, for any error
    /// with a code and a message (a problem needs a problem marker: type or title).
    #[test]
    fn dialect_is_detected_from_the_body(e in api_error(), d in dialect()) {
        let body = d.render_string(&e);
        let parsed = parse_body(body.as_bytes(), e.status);
        if d != Dialect::Problem || d.project(&e).problem.type_uri.is_some() || d.project(&e).problem.title.is_some() {
            let parsed = parsed.map_err(|u| TestCaseError::fail(format!("{u:?} for {body}")))?;
            prop_assert_eq!(parsed.dialect, d);
        }
    }

    #[test]
    fn parse_body_never_panics_on_bytes(body in vec(any::<u8>(), 0..2048), status in option::of(any::<u16>())) {
        let _ = parse_body(&body, status);
    }

    #[test]
    fn parse_body_never_panics_on_json_like_text(body in r#"[{}\[\]":,a-zA-Z0-9 \\-]{0,512}"#) {
        let _ = parse_body(body.as_bytes(), Some(500));
    }

    #[test]
    fn parse_body_never_panics_on_arbitrary_json(v in arb_json()) {
        let body = v.to_string();
        let _ = parse_body(body.as_bytes(), None);
        let wrapped = serde_json::json!({"error": v.clone(), "detail": v}).to_string();
        let _ = parse_body(wrapped.as_bytes(), Some(400));
    }

    #[test]
    fn retry_after_delay_round_trips(secs in any::<u64>()) {
        let v = RetryAfter::Delay(secs).to_header_value();
        prop_assert_eq!(RetryAfter::parse(&v), Some(RetryAfter::Delay(secs)));
    }

    #[test]
    fn retry_after_date_round_trips(secs in 0u64..253_402_300_799) {
        let t = UNIX_EPOCH + Duration::from_secs(secs);
        let v = RetryAfter::Date(t).to_header_value();
        prop_assert_eq!(RetryAfter::parse(&v), Some(RetryAfter::Date(t)));
    }

    #[test]
    fn retry_after_never_panics(s in any::<String>(), now in any::<u32>()) {
        if let Some(r) = RetryAfter::parse(&s) {
            let _ = r.delay_from(UNIX_EPOCH + Duration::from_secs(u64::from(now)));
        }
    }

    #[test]
    fn x_ratelimit_round_trips(limit in any::<u64>(), remaining in any::<u64>(), reset in 1_000_000_000u64..999_999_999_999, now in 0u64..2_000_000_000) {
        let lines = XRateLimit::format(limit, remaining, reset);
        let parsed = XRateLimit::from_headers(&lines[..], now).expect("present");
        prop_assert_eq!(parsed.limit, Some(limit));
        prop_assert_eq!(parsed.remaining, Some(remaining));
        prop_assert_eq!(parsed.reset.map(|r| r.unix), Some(reset));
    }

    #[test]
    fn x_ratelimit_never_panics(a in any::<String>(), b in any::<String>(), c in any::<String>(), now in any::<u64>()) {
        let h = [("X-RateLimit-Limit", a), ("X-RateLimit-Remaining", b), ("X-RateLimit-Reset", c.clone())];
        let _ = XRateLimit::from_headers(&h[..], now);
        let _ = Reset::parse(&c, now);
    }

    #[test]
    fn ratelimit_policy_round_trips(ps in vec(policy(), 1..5)) {
        let v = ratelimit::format_policies(&ps).expect("valid names");
        prop_assert_eq!(ratelimit::parse_policies(&v), Some(ps));
    }

    /// The hot-path writers produce exactly what the serialiser does, for any printable
    /// name (quotes and backslashes included) and any value (clamped to 15 digits).
    #[test]
    fn field_writers_match_the_serialiser(
        items in vec(("[ -~]{1,16}", any::<u64>(), any::<u64>(), option::of(any::<u64>()), any::<bool>()), 1..5)
    ) {
        let mut policy_field = String::new();
        let mut limit_field = String::new();
        let mut policies = Vec::new();
        let mut limits = Vec::new();
        let unit = ratelimit::QuotedName::new("concurrent-requests").expect("valid");
        for (name, quota, remaining, window, concurrent) in &items {
            let quoted = ratelimit::QuotedName::new(name).expect("printable");
            let (u, w) = if *concurrent { (Some(&unit), None) } else { (None, *window) };
            ratelimit::write_policy_item(&mut policy_field, &quoted, *quota, u, w);
            ratelimit::write_limit_item(&mut limit_field, &quoted, *remaining, *window);
            policies.push(Policy {
                name: name.clone(),
                quota: *quota,
                unit: concurrent.then_some(QuotaUnit::ConcurrentRequests),
                window: w,
                partition_key: None,
            });
            limits.push(RateLimitItem { name: name.clone(), remaining: *remaining, reset: *window, partition_key: None });
        }
        prop_assert_eq!(policy_field, ratelimit::format_policies(&policies).expect("valid"));
        prop_assert_eq!(limit_field, ratelimit::format_limits(&limits).expect("valid"));
    }

    #[test]
    fn ratelimit_items_round_trip(ls in vec(limit_item(), 1..5)) {
        let v = ratelimit::format_limits(&ls).expect("valid names");
        prop_assert_eq!(ratelimit::parse_limits(&v), Some(ls));
    }

    /// The allocation-free reader agrees with the owned parsers: the first item with the
    /// least remaining, and its policy's quota and window.
    #[test]
    fn tightest_agrees_with_the_owned_parsers(ls in vec(limit_item(), 1..5), ps in vec(policy(), 1..5), garbage in any::<bool>()) {
        let limits = ratelimit::format_limits(&ls).expect("valid");
        let policies = if garbage { "\"x\";q=-1".to_owned() } else { ratelimit::format_policies(&ps).expect("valid") };
        let t = ratelimit::tightest(&limits, Some(&policies)).expect("valid field");
        let parsed = ratelimit::parse_limits(&limits).expect("valid");
        let best = parsed.iter().min_by_key(|i| i.remaining).expect("non-empty");
        prop_assert_eq!(t.name.as_ref(), best.name.as_str());
        prop_assert_eq!((t.remaining, t.reset), (best.remaining, best.reset));
        let policy = ratelimit::parse_policies(&policies).and_then(|p| p.into_iter().find(|p| p.name == best.name));
        prop_assert_eq!(t.quota, policy.as_ref().map(|p| p.quota));
        prop_assert_eq!(t.window, policy.and_then(|p| p.window));
    }

    #[test]
    fn tightest_rejects_exactly_what_parse_limits_rejects(s in r#"[a-z"=;,:0-9 ()?*-]{0,64}"#) {
        prop_assert_eq!(ratelimit::tightest(&s, None).is_some(), ratelimit::parse_limits(&s).is_some());
    }

    #[test]
    fn ratelimit_parsers_never_panic(s in any::<String>(), t in r#"[a-z"=;,:0-9 ()?*-]{0,128}"#) {
        let _ = ratelimit::parse_policies(&s);
        let _ = ratelimit::parse_limits(&s);
        let _ = ratelimit::parse_legacy_dictionary(&s);
        let _ = ratelimit::parse_policies(&t);
        let _ = ratelimit::parse_limits(&t);
    }

    #[test]
    fn traceparent_round_trips(trace in any::<[u8; 16]>(), parent in any::<[u8; 8]>(), flags in any::<u8>()) {
        if let Some(tp) = TraceParent::new(trace, parent, flags) {
            prop_assert_eq!(TraceParent::parse(&tp.to_header_value()), Some(tp));
        }
    }

    #[test]
    fn traceparent_never_panics(s in any::<String>(), t in "[0-9a-f-]{50,60}") {
        let _ = TraceParent::parse(&s);
        let _ = TraceParent::parse(&t);
    }

    #[test]
    fn explain_never_panics(status in option::of(any::<u16>()), name in "[A-Za-z-]{1,20}", value in any::<String>(), body in vec(any::<u8>(), 0..512)) {
        let headers = [(name.as_str(), value.as_str()), ("retry-after", value.as_str()), ("ratelimit", value.as_str())];
        let _ = explain(status, &headers[..], &body, SystemTime::UNIX_EPOCH, &|_| true);
    }
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        "[a-z][a-z0-9-]{0,15}",
        0u64..=ratelimit::SF_INTEGER_MAX,
        option::of(prop_oneof![
            Just(QuotaUnit::Requests),
            Just(QuotaUnit::ContentBytes),
            Just(QuotaUnit::ConcurrentRequests),
        ]),
        option::of(1u64..=31_536_000),
        option::of(vec(any::<u8>(), 0..12)),
    )
        .prop_map(|(name, quota, unit, window, partition_key)| Policy {
            name,
            quota,
            unit,
            window,
            partition_key,
        })
}

fn limit_item() -> impl Strategy<Value = RateLimitItem> {
    (
        "[ -!#-\\[\\]-~]{1,16}",
        0u64..=ratelimit::SF_INTEGER_MAX,
        option::of(0u64..=ratelimit::SF_INTEGER_MAX),
        option::of(vec(any::<u8>(), 0..12)),
    )
        .prop_map(|(name, remaining, reset, partition_key)| RateLimitItem {
            name,
            remaining,
            reset,
            partition_key,
        })
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<i64>().prop_map(Value::from),
        prop_oneof![
            Just("code".to_owned()),
            Just("message".to_owned()),
            Just("innerError".to_owned()),
            text()
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(
                prop_oneof![
                    Just("code".to_owned()),
                    Just("message".to_owned()),
                    Just("innerError".to_owned()),
                    Just("innererror".to_owned()),
                    Just("details".to_owned()),
                    Just("detail".to_owned()),
                    Just("error".to_owned()),
                    Just("status".to_owned()),
                    Just("type".to_owned()),
                    Just("retryable".to_owned()),
                    Just("request-id".to_owned()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
