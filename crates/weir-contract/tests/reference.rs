//! The reference documents, verbatim, as test inputs: the catalogue matches their tables,
//! their example bodies parse to what they say, and re-rendering gives the same JSON.

use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use weir_contract::catalogue::{self, Category, RetryClass};
use weir_contract::headers::{ratelimit, RetryAfter, XRateLimit};
use weir_contract::{classify, explain, parse_body, Action, Dialect};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("fixture is JSON")
}

#[test]
fn every_status_of_reference_003_is_catalogued_with_its_reason_phrase() {
    let table = fixture("ref003_status_table.txt");
    let mut seen = 0;
    for line in table.lines().skip(1) {
        let (code, rest) = line.split_once(' ').expect("code then text");
        let status: u16 = code.parse().expect("numeric status");
        let info = catalogue::status(status).unwrap_or_else(|| panic!("{status} missing"));
        assert!(
            rest.starts_with(info.reason),
            "{status}: table says {rest:?}, catalogue {:?}",
            info.reason
        );
        let expected_code: String = info.reason.split(' ').collect();
        assert_eq!(
            info.code, expected_code,
            "{status} canonical code is the reason phrase in PascalCase"
        );
        seen += 1;
    }
    assert_eq!(seen, 23);
}

#[test]
fn every_status_of_reference_004_is_catalogued() {
    let table = fixture("ref004_status_table.md");
    for line in table.lines().skip(2) {
        let status: u16 = line
            .split('|')
            .nth(1)
            .expect("cell")
            .trim()
            .parse()
            .expect("status");
        assert!(catalogue::status(status).is_some(), "{status} missing");
    }
}

#[test]
fn retry_rules_of_the_references() {
    // 003: 429 retry after Retry-After; 500/502/503/504 with backoff; 404 never. 509 "can be retried".
    for s in [429, 500, 502, 503, 504, 509] {
        assert_eq!(
            catalogue::status_retry_class(s),
            RetryClass::AfterDelay,
            "{s}"
        );
    }
    // 000: 401 refresh once.
    assert_eq!(catalogue::status_retry_class(401), RetryClass::RefreshAuth);
    for s in [
        400, 402, 403, 404, 405, 406, 409, 410, 411, 412, 413, 415, 416, 422, 423, 501, 507,
    ] {
        assert_eq!(catalogue::status_retry_class(s), RetryClass::Never, "{s}");
    }
}

#[test]
fn every_code_of_reference_004_is_catalogued_in_its_category() {
    let table = fixture("ref004_code_table.md");
    let mut listed = BTreeSet::new();
    for line in table.lines().skip(2) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let category = match cells[1] {
            "Authentication" => Category::Authentication,
            "Documents" => Category::Documents,
            "LLM" => Category::Llm,
            "Tools" => Category::Tools,
            "Data" => Category::Data,
            "Service" => Category::Service,
            other => panic!("unknown category {other}"),
        };
        for code in cells[2].split_whitespace() {
            let code = code.trim_matches('`');
            let info = catalogue::code(code).unwrap_or_else(|| panic!("{code} missing"));
            assert_eq!(info.category, category, "{code}");
            listed.insert(code.to_owned());
        }
    }
    assert_eq!(listed.len(), 26);
    let catalogued: BTreeSet<String> = catalogue::CODES
        .iter()
        .filter(|c| !matches!(c.category, Category::Request | Category::Upstream))
        .map(|c| c.code.to_owned())
        .collect();
    assert_eq!(
        catalogued, listed,
        "catalogue holds exactly reference 004's codes (plus weir's REQUEST_*, IDEMPOTENCY_*, UPSTREAM_*)"
    );
}

#[test]
fn transient_codes_are_exactly_the_retryable_ones() {
    for c in catalogue::CODES {
        let transient_status = catalogue::status_retry_class(c.status) == RetryClass::AfterDelay;
        // A 409 "still in progress" is the one retryable error on a non-transient status:
        // the duplicate may be retried once the first request completes (draft §2.7).
        if c.retryable && c.code != "IDEMPOTENCY_IN_PROGRESS" {
            assert!(
                transient_status,
                "{} is retryable but its status {} is not transient",
                c.code, c.status
            );
        }
    }
    assert!(catalogue::code("SERVICE_RATE_LIMITED").is_some_and(|c| c.retryable && c.status == 429));
    assert!(catalogue::code("SERVICE_CIRCUIT_OPEN").is_some_and(|c| c.retryable && c.status == 503));
}

fn assert_round_trip(file: &str, dialect: Dialect, status: Option<u16>) {
    let text = fixture(file);
    let parsed = parse_body(text.as_bytes(), status).unwrap_or_else(|u| panic!("{file}: {u:?}"));
    assert_eq!(parsed.dialect, dialect, "{file}");
    assert_eq!(
        dialect.render(&parsed.error),
        json(&text),
        "{file} re-renders to the same JSON"
    );
}

#[test]
fn reference_003_error_body() {
    assert_round_trip("ref003_error.json", Dialect::Error, Some(400));
    let p = parse_body(fixture("ref003_error.json").as_bytes(), Some(400)).expect("parses");
    assert_eq!(p.error.code.as_deref(), Some("BadRequest"));
    assert_eq!(p.error.message.as_deref(), Some("The request is invalid."));
    assert_eq!(
        p.error.request_id.as_deref(),
        Some("3a8c04bd-e29a-4c42-9bb1-a45474b459a9")
    );
    assert_eq!(p.error.date.as_deref(), Some("2024-06-16T00:00:00Z"));
}

#[test]
fn reference_004_bodies() {
    assert_round_trip(
        "ref004_detail_format_unsupported.json",
        Dialect::Detail,
        Some(415),
    );
    assert_round_trip(
        "ref004_detail_rate_limited.json",
        Dialect::Detail,
        Some(429),
    );
    assert_round_trip("ref004_mcp_rate_limited.json", Dialect::Mcp, None);
    let p = parse_body(
        fixture("ref004_detail_format_unsupported.json").as_bytes(),
        Some(415),
    )
    .expect("parses");
    assert_eq!(
        p.error.hint.as_deref(),
        Some("Supported formats: PDF, DOCX, XLSX, TXT, CSV, JSON, HTML, MD")
    );
    let mcp = parse_body(fixture("ref004_mcp_rate_limited.json").as_bytes(), None).expect("parses");
    assert_eq!(mcp.error.retryable, Some(true));
    let d = classify(None, &[("x", "y")][..], Some(&mcp.error), UNIX_EPOCH);
    assert_eq!(d.action, Action::Retry);
}

#[test]
fn standards_examples() {
    assert_round_trip("standards_graph_error.json", Dialect::Error, Some(400));
    assert_round_trip(
        "standards_problem_quota_exceeded.json",
        Dialect::Problem,
        None,
    );
    assert_round_trip("standards_problem_validation.json", Dialect::Problem, None);
    let p = parse_body(
        fixture("standards_problem_quota_exceeded.json").as_bytes(),
        None,
    )
    .expect("parses");
    assert_eq!(p.error.status, Some(429));
    assert_eq!(
        p.error.extra.get("violated-policies"),
        Some(&json(r#"["default"]"#))
    );
}

#[test]
fn reference_004_headers() {
    let text = fixture("ref004_headers.txt");
    let headers: Vec<(String, String)> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let now = UNIX_EPOCH + Duration::from_secs(1_711_540_740);
    let x = XRateLimit::from_headers(&headers, 1_711_540_740).expect("present");
    assert_eq!((x.limit, x.remaining), (Some(60), Some(58)));
    assert_eq!(x.reset.map(|r| r.unix), Some(1_711_540_800));
    let e = explain(Some(200), &headers, b"", now, &|_| true);
    assert_eq!(e.action, "do_not_retry");
    let rl = e.rate_limit.expect("rate limit");
    assert_eq!(
        (rl.limit, rl.remaining, rl.reset_unix),
        (Some(60), Some(58), Some(1_711_540_800))
    );
}

#[test]
fn reference_004_rate_limited_response_explained() {
    let body = fixture("ref004_detail_rate_limited.json");
    let headers = [
        ("Retry-After", "60"),
        ("X-RateLimit-Limit", "10"),
        ("X-RateLimit-Remaining", "0"),
        ("X-RateLimit-Reset", "1711540800"),
    ];
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_711_540_770);
    let e = explain(Some(429), &headers[..], body.as_bytes(), now, &|_| true);
    assert_eq!(e.dialect, "detail");
    assert_eq!(e.code.as_deref(), Some("SERVICE_RATE_LIMITED"));
    assert_eq!(e.action, "retry");
    assert_eq!(e.retry_after_s, Some(60), "Retry-After wins over the reset");
}

#[test]
fn retry_after_and_ratelimit_examples() {
    assert_eq!(RetryAfter::parse("120"), Some(RetryAfter::Delay(120)));
    let policies =
        ratelimit::parse_policies(r#""permin";q=50;w=60,"perhr";q=1000;w=3600"#).expect("valid");
    assert_eq!(
        ratelimit::format_policies(&policies).as_deref(),
        Ok(r#""permin";q=50;w=60, "perhr";q=1000;w=3600"#)
    );
    let limits = ratelimit::parse_limits(r#""default";r=0;t=5"#).expect("valid");
    assert_eq!(limits[0].reset, Some(5));
}

#[test]
fn nested_inner_errors_give_deepest_and_deepest_understood_code() {
    let body = r#"{"error":{"code":"A","message":"m","innerError":{"code":"B","innerError":{"code":"C"}}}}"#;
    let p = parse_body(body.as_bytes(), Some(400)).expect("parses");
    assert_eq!(p.error.deepest_code(), Some("C"));
    assert_eq!(
        p.error.most_specific_code(|c| c == "A" || c == "B"),
        Some("B")
    );
    let lower = body.replace("innerError", "innererror");
    let p2 = parse_body(lower.as_bytes(), Some(400)).expect("parses");
    assert_eq!(
        p2.error.deepest_code(),
        Some("C"),
        "innererror spelling accepted"
    );
}
