//! `weir explain`: what an error response means and what to do about it.

use crate::args::ExplainArgs;
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use weir_contract::{catalogue, explain, Explanation};

/// Bodies larger than this are not read whole: the contract parser would not look past
/// its own bound anyway, and `weir explain` must not be made to eat a disk.
const MAX_BODY_READ: u64 = (weir_contract::MAX_ENVELOPE_BYTES as u64) + 1;

pub fn run(args: ExplainArgs) -> Result<ExitCode> {
    let headers = parse_headers(&args.headers)?;
    let body = read_body(args.body.as_deref())?;
    let now = match args.now {
        Some(s) => UNIX_EPOCH
            .checked_add(Duration::from_secs(s))
            .ok_or_else(|| anyhow::anyhow!("--now {s} is beyond the representable time"))?,
        None => SystemTime::now(),
    };
    let known = args.known;
    let understands = |code: &str| known.is_empty() || known.iter().any(|k| k == code);
    let e = explain(args.status, &headers, &body, now, &understands);
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&e).context("serialising the explanation")?
        );
    } else {
        print_human(&e, now);
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_headers(raw: &[String]) -> Result<Vec<(String, String)>> {
    raw.iter()
        .map(|h| {
            let Some((name, value)) = h.split_once(':') else {
                bail!("invalid header {h:?}: expected 'Name: value'");
            };
            let name = name.trim();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                bail!("invalid header name in {h:?}");
            }
            Ok((name.to_owned(), value.trim().to_owned()))
        })
        .collect()
}

fn read_body(arg: Option<&str>) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    match arg {
        None => {}
        Some("@-") => {
            std::io::stdin()
                .take(MAX_BODY_READ)
                .read_to_end(&mut buf)
                .context("reading the body from standard input")?;
        }
        Some(a) if a.starts_with('@') => {
            let path = &a[1..];
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot read body file {path}"))?;
            file.take(MAX_BODY_READ)
                .read_to_end(&mut buf)
                .with_context(|| format!("cannot read body file {path}"))?;
        }
        Some(text) => buf.extend_from_slice(text.as_bytes()),
    }
    Ok(buf)
}

fn print_human(e: &Explanation, now: SystemTime) {
    let now_unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let row = |label: &str, value: &str| println!("{label:<12} {value}");
    row("dialect", e.dialect);
    if let Some(s) = e.status {
        let reason = catalogue::status(s).map_or("", |i| i.reason);
        row("status", format!("{s} {reason}").trim_end());
    }
    if let Some(code) = &e.code {
        match &e.most_specific_code {
            Some(m) if m != code => row("code", &format!("{code} (most specific: {m})")),
            _ => row("code", code),
        }
    }
    if let Some(m) = &e.message {
        row("message", m);
    }
    if let Some(h) = &e.hint {
        row("hint", h);
    }
    if let Some(id) = &e.request_id {
        row("request id", id);
    }
    if let Some(rl) = &e.rate_limit {
        let num = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
        let mut s = format!("{} of {} left", num(rl.remaining), num(rl.limit));
        if let Some(reset) = rl.reset_unix {
            s.push_str(&format!(
                ", resets at {reset} (in {} s)",
                reset.saturating_sub(now_unix)
            ));
        }
        row("rate limit", &s);
    }
    let action = match (e.action, e.retry_after_s) {
        ("retry", Some(s)) => format!("retry after {s} s"),
        ("retry", None) => "retry with exponential backoff and jitter".to_owned(),
        ("refresh_auth_then_retry_once", _) => "refresh credentials, then retry once".to_owned(),
        _ => "do not retry".to_owned(),
    };
    row("action", &action);
    row("why", &e.reason);
}
