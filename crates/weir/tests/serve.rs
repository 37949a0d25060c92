//! `weir serve` as a process: it starts from a file, logs one JSON line per request with
//! no secret in it, reloads on SIGHUP without dropping limiter state, refuses a bad
//! config before listening, and drains on SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn config(port: u16, admin: u16, free_per_minute: u32, dir: &std::path::Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
[idempotency]
path = "{db}"
[upstreams.demo]
url = "builtin:demo"
[[routes]]
name = "echo"
prefix = "/v1/echo"
upstream = "demo"
[[limits]]
name = "org-minute"
scope = ["organisation"]
window = "60s"
per_plan = {{ free = {free_per_minute} }}
[[keys]]
id = "key-id-1"
key = "super-secret-key-value"
user = "u1"
organisation = "o1"
plan = "free"
"#,
        db = dir.join("idem.redb").display()
    )
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "weir serve did not start listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn get(port: u16) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(b"GET /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer super-secret-key-value\r\nConnection: close\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let limit = out
        .lines()
        .find_map(|l| l.strip_prefix("x-ratelimit-limit: "))
        .unwrap_or("")
        .trim()
        .to_owned();
    (status, limit)
}

/// Starts `weir serve` on free ports with the free plan at `per_minute`, waits until it
/// listens; returns the process, its directory, config file and ports.
fn start_serve(
    name: &str,
    per_minute: u32,
    out: Stdio,
) -> (Proc, std::path::PathBuf, std::path::PathBuf, u16, u16) {
    let dir = std::env::temp_dir().join(format!("weir-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (port, admin) = (free_port(), free_port());
    let file = dir.join("weir.toml");
    std::fs::write(&file, config(port, admin, per_minute, &dir)).expect("write");
    let child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--config"])
        .arg(&file)
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let proc = Proc(child);
    wait_listening(port);
    (proc, dir, file, port, admin)
}

#[test]
fn serve_logs_reloads_on_sighup_and_drains_on_sigterm() {
    let (mut proc, dir, file, port, admin) = start_serve("serve", 10, Stdio::piped());
    for _ in 0..3 {
        assert_eq!(get(port), (200, "10".to_owned()));
    }
    // Tighten the plan and send SIGHUP: the running process applies it, keeping state.
    std::fs::write(&file, config(port, admin, 4, &dir)).expect("write");
    let pid = proc.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill")
        .success());
    let start = Instant::now();
    let mut seen = get(port);
    while seen.1 != "4" && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        seen = get(port);
    }
    assert_eq!(seen.1, "4", "reloaded");
    // An invalid file on SIGHUP is refused; the previous configuration keeps serving.
    std::fs::write(&file, "[server]\nlisten = 5\n").expect("write");
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill")
        .success());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(port).1, "4");
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let status = proc.0.wait().expect("wait");
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    let mut logs = String::new();
    if let Some(out) = proc.0.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            logs.push_str(&line);
            logs.push('\n');
        }
    }
    let access: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"weir::access\""))
        .collect();
    assert!(access.len() >= 5, "{logs}");
    // Each proxied request's line names the span weir sent upstream in `traceparent`.
    let hex = |v: &serde_json::Value, n: usize| {
        v.as_str()
            .is_some_and(|s| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    assert!(
        access.iter().any(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            hex(&v["fields"]["trace_id"], 32) && hex(&v["fields"]["span_id"], 16)
        }),
        "{logs}"
    );
    for line in &access {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
        let f = &v["fields"];
        assert!(
            f["request_id"].is_string() && f["status"].is_number() && f["latency_ms"].is_number(),
            "{line}"
        );
        assert_eq!(f["key_id"], "key-id-1");
        assert!(
            f["path"].as_str().is_some_and(|p| p.starts_with("/v1/")) && f["method"].is_string(),
            "{line}"
        );
    }
    assert!(
        !logs.contains("super-secret-key-value"),
        "no secret reaches a log"
    );
    assert!(logs.contains("reload refused"), "{logs}");
}

/// The soft and hard open-files limits of a running process, from `/proc`.
fn open_files_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut values = line.trim_start_matches("Max open files").split_whitespace();
    (
        values.next().unwrap_or_default().to_owned(),
        values.next().unwrap_or_default().to_owned(),
    )
}

#[test]
fn serve_raises_its_open_files_soft_limit_to_the_hard_limit() {
    let dir = std::env::temp_dir().join(format!("weir-nofile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (port, admin) = (free_port(), free_port());
    let file = dir.join("weir.toml");
    std::fs::write(&file, config(port, admin, 10, &dir)).expect("write");
    // Started with a soft limit of 256 (the shell execs weir, so the pid is weir's).
    let child = Command::new("sh")
        .args(["-c", "ulimit -Sn 256 && exec \"$0\" serve --config \"$1\""])
        .arg(env!("CARGO_BIN_EXE_weir"))
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let proc = Proc(child);
    wait_listening(port);
    let (soft, hard) = open_files_limits(proc.0.id());
    assert_eq!(soft, hard, "soft {soft}, hard {hard}");
    assert_ne!(soft, "256");
}

#[test]
fn bad_config_is_reported_before_listening() {
    let dir = std::env::temp_dir().join(format!("weir-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "[[routes]]\nname = \"a\"\nprefix = \"/a\"\nupstream = \"ghost\"\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("routes[0].upstream") && err.contains("ghost"),
        "{err}"
    );
}

#[test]
fn hash_key_prints_a_config_hash() {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["hash-key", "demo-free"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.trim().starts_with("sha256:") && text.trim().len() == 71,
        "{text}"
    );
    assert!(!text.contains("demo-free"));
}

#[test]
fn call_prints_the_body_and_repeat_prints_one_json_summary() {
    let (_proc, _dir, _file, port, _admin) = start_serve("call", 5, Stdio::null());
    let url = format!("http://127.0.0.1:{port}/v1/echo");
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "call",
            &url,
            "-H",
            "Authorization: Bearer super-secret-key-value",
        ])
        .output()
        .expect("run");
    assert!(out.status.success());
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the upstream's JSON");
    assert_eq!(body["key_id"], "key-id-1");
    // No key: the error body on stdout, an explanation on stderr, exit 1.
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["call", &url])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("AUTH_HEADER_MISSING") && err.contains("check the key"),
        "{err}"
    );
    // 4 left of 5/min: 6 requests (one at a time) with a 3 s deadline each: 4 pass, 2 fail
    // fast without a single 429 (the client paces itself from the headers).
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "call",
            &url,
            "-H",
            "Authorization: Bearer super-secret-key-value",
            "--repeat",
            "6",
            "--concurrency",
            "1",
            "--timeout",
            "3",
        ])
        .output()
        .expect("run");
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
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
            "attempts",
            "elapsed_s",
            "errors",
            "failed",
            "rate_limited",
            "requests",
            "succeeded"
        ]
    );
    assert_eq!(
        (
            v["requests"].as_u64(),
            v["succeeded"].as_u64(),
            v["failed"].as_u64()
        ),
        (Some(6), Some(4), Some(2)),
        "{v}"
    );
    assert_eq!(v["rate_limited"], 0);
    assert_eq!(out.status.code(), Some(1));
    let bad = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["call", "not a url"])
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2));
}
