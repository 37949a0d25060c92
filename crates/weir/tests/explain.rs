//! `weir explain` end to end: the real binary, its JSON contract and its exit codes.

use serde_json::Value;
use std::process::{Command, Output};

fn weir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .output()
        .expect("run weir")
}

fn fixture(name: &str) -> String {
    format!(
        "@{}/../weir-contract/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn json_output_has_exactly_the_documented_keys() {
    let out = weir(&[
        "explain",
        "--status",
        "400",
        "--body",
        &fixture("ref003_error.json"),
        "--json",
    ]);
    let v = json_of(&out);
    let mut keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "action",
            "code",
            "dialect",
            "hint",
            "message",
            "most_specific_code",
            "rate_limit",
            "reason",
            "request_id",
            "retry_after_s",
            "status"
        ]
    );
    assert_eq!(v["dialect"], "error");
    assert_eq!(v["request_id"], "3a8c04bd-e29a-4c42-9bb1-a45474b459a9");
    assert_eq!(v["action"], "do_not_retry");
    assert_eq!(v["retry_after_s"], Value::Null);
}

#[test]
fn rate_limited_detail_body_with_headers() {
    let out = weir(&[
        "explain",
        "--status",
        "429",
        "-H",
        "Retry-After: 30",
        "-H",
        "X-RateLimit-Limit: 10",
        "-H",
        "X-RateLimit-Remaining: 0",
        "-H",
        "X-RateLimit-Reset: 1711540800",
        "--body",
        &fixture("ref004_detail_rate_limited.json"),
        "--now",
        "1711540770",
        "--json",
    ]);
    let v = json_of(&out);
    assert_eq!(v["dialect"], "detail");
    assert_eq!(v["code"], "SERVICE_RATE_LIMITED");
    assert_eq!(v["action"], "retry");
    assert_eq!(v["retry_after_s"], 30);
    assert_eq!(
        v["rate_limit"],
        serde_json::json!({"limit": 10, "remaining": 0, "reset_unix": 1711540800u64})
    );
}

#[test]
fn mcp_body_needs_no_status_and_problem_body_supplies_one() {
    let v = json_of(&weir(&[
        "explain",
        "--body",
        &fixture("ref004_mcp_rate_limited.json"),
        "--json",
    ]));
    assert_eq!(
        (
            v["dialect"].as_str(),
            v["status"].clone(),
            v["action"].as_str()
        ),
        (Some("mcp"), Value::Null, Some("retry"))
    );
    let v = json_of(&weir(&[
        "explain",
        "--body",
        &fixture("standards_problem_quota_exceeded.json"),
        "--json",
    ]));
    assert_eq!(v["dialect"], "problem");
    assert_eq!(v["status"], 429);
    assert_eq!(v["action"], "retry");
}

#[test]
fn known_codes_pick_the_deepest_understood() {
    let body = r#"{"error":{"code":"A","message":"m","innerError":{"code":"B","innerError":{"code":"C"}}}}"#;
    let v = json_of(&weir(&[
        "explain", "--status", "400", "--body", body, "--json",
    ]));
    assert_eq!(v["most_specific_code"], "C");
    let v = json_of(&weir(&[
        "explain", "--status", "400", "--body", body, "--known", "A", "--known", "B", "--json",
    ]));
    assert_eq!(v["most_specific_code"], "B");
}

#[test]
fn github_secondary_limit_403_is_retried_and_401_refreshes() {
    let v = json_of(&weir(&[
        "explain",
        "--status",
        "403",
        "-H",
        "retry-after: 60",
        "--json",
    ]));
    assert_eq!(
        (v["action"].as_str(), v["retry_after_s"].as_u64()),
        (Some("retry"), Some(60))
    );
    let v = json_of(&weir(&["explain", "--status", "401", "--json"]));
    assert_eq!(v["action"], "refresh_auth_then_retry_once");
    let v = json_of(&weir(&["explain", "--status", "404", "--json"]));
    assert_eq!(v["action"], "do_not_retry");
}

#[test]
fn unrecognised_bodies_are_reported_with_a_snippet() {
    let v = json_of(&weir(&[
        "explain",
        "--status",
        "502",
        "--body",
        "<html>oops</html>",
        "--json",
    ]));
    assert_eq!(v["dialect"], "unrecognised");
    assert_eq!(v["action"], "retry");
    assert!(v["reason"]
        .as_str()
        .is_some_and(|r| r.contains("<html>oops</html>")));
}

#[test]
fn human_output_names_the_action() {
    let out = weir(&["explain", "--status", "503", "-H", "Retry-After: 5"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("retry after 5 s"), "{text}");
}

#[test]
fn bad_input_exits_2_with_one_line() {
    for args in [
        &["explain", "--bogus"][..],
        &["explain", "--status", "abc"],
        &["explain", "--status", "99"],
        &["explain", "-H", "no colon here"],
        &["explain", "--body", "@/definitely/not/here"],
        &["frobnicate"],
        &[
            "explain",
            "--status",
            "429",
            "--now",
            "18446744073709551615",
        ],
        &["call", "http://127.0.0.1:9/x", "--timeout", "1e300"],
        &["call", "http://127.0.0.1:9/x", "--timeout", "-1"],
    ] {
        let out = weir(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("weir: "), "{err}");
    }
}
