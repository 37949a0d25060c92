//! ns to parse + classify a reference-003-style nested error body, next to
//! `serde_json::from_str::<serde_json::Value>` of the same body (the floor any generic
//! JSON parser gives) in the same run.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::time::{Duration, UNIX_EPOCH};
use weir_contract::{classify, parse_body};

const BODY: &str = r#"{
  "error": {
    "code": "TooManyRequests",
    "message": "The client application has been throttled.",
    "innerError": {
      "code": "throttledRequest",
      "request-id": "3a8c04bd-e29a-4c42-9bb1-a45474b459a9",
      "date": "2024-06-16T00:00:00Z",
      "innerError": { "code": "activityLimitReached" }
    },
    "details": [
      { "code": "quotaLimitReached", "message": "Per-minute quota used up.", "target": "requests" }
    ]
  }
}"#;

fn bench(c: &mut Criterion) {
    let headers = [
        ("Retry-After", "30"),
        ("X-RateLimit-Remaining", "0"),
        ("X-RateLimit-Reset", "1711540800"),
    ];
    let now = UNIX_EPOCH + Duration::from_secs(1_711_540_770);
    let mut g = c.benchmark_group("ref003_nested_body");
    g.bench_function("serde_json_value_floor", |b| {
        b.iter(|| serde_json::from_str::<serde_json::Value>(black_box(BODY)))
    });
    g.bench_function("weir_parse_and_classify", |b| {
        b.iter(|| {
            let parsed = parse_body(black_box(BODY.as_bytes()), Some(429));
            let err = parsed.as_ref().ok().map(|p| &p.error);
            classify(Some(429), &headers[..], err, now)
        })
    });
    g.bench_function("weir_classify_only", |b| {
        let parsed = parse_body(BODY.as_bytes(), Some(429)).ok();
        let err = parsed.as_ref().map(|p| &p.error);
        b.iter(|| classify(Some(429), black_box(&headers[..]), err, now))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
