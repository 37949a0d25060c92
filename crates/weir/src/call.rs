//! `weir call`: curl by the contract.

use crate::args::CallArgs;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_client::{Call, CallError, Client, ClientConfig};

/// Exit code when the request failed (after any retries).
const EXIT_FAILED: u8 = 1;

pub fn run(args: CallArgs) -> Result<ExitCode> {
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|t| !t.is_zero() && *t <= Duration::from_secs(365 * 86_400))
        .ok_or_else(|| {
            anyhow::anyhow!("--timeout must be a positive number of seconds, at most a year")
        })?;
    let mut headers = http::HeaderMap::new();
    for h in &args.headers {
        let Some((name, value)) = weir_client::client::parse_header(h) else {
            bail!("invalid header {h:?}: expected 'Name: value'");
        };
        headers.append(name, value);
    }
    let body = match args.data.as_deref() {
        None => None,
        Some(d) if d.starts_with('@') => Some(bytes::Bytes::from(
            std::fs::read(&d[1..]).with_context(|| format!("cannot read body file {}", &d[1..]))?,
        )),
        Some(d) => Some(bytes::Bytes::from(d.to_owned())),
    };
    let method = match &args.method {
        Some(m) => http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| anyhow::anyhow!("invalid method {m:?}"))?,
        None if body.is_some() => http::Method::POST,
        None => http::Method::GET,
    };
    if reqwest::Url::parse(&args.url).is_err() {
        bail!("invalid URL {:?}", args.url);
    }
    let config = ClientConfig {
        max_attempts: args.max_attempts,
        timeout,
        ..ClientConfig::default()
    };
    let call = Call {
        method,
        url: args.url.clone(),
        headers,
        body,
        idempotency_key: None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let client = Client::new(config);
        match args.repeat {
            None => single(&client, call).await,
            Some(n) => repeat(&client, call, n, args.concurrency).await,
        }
    })
}

fn explain(e: &CallError) -> String {
    let mut s = format!("weir: {}", e.summary());
    if let Some(code) = &e.code {
        s.push_str(&format!("\n  code: {code}"));
        if let Some(m) = e.most_specific_code.as_ref().filter(|m| *m != code) {
            s.push_str(&format!(" (most specific: {m})"));
        }
    }
    if let Some(m) = &e.message {
        s.push_str(&format!("\n  message: {m}"));
    }
    if let Some(h) = &e.hint {
        s.push_str(&format!("\n  hint: {h}"));
    }
    if let Some(id) = &e.request_id {
        s.push_str(&format!("\n  request id: {id}"));
    }
    s.push_str(&format!(
        "\n  attempts: {}, waited {:.1} s",
        e.attempts,
        e.waited.as_secs_f64()
    ));
    s
}

async fn single(client: &Client, call: Call) -> Result<ExitCode> {
    match client.execute(call).await {
        Ok(ok) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&ok.body).context("writing the body")?;
            out.flush().ok();
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if let Some(body) = &e.body {
                print!("{body}");
            }
            eprintln!("{}", explain(&e));
            Ok(ExitCode::from(EXIT_FAILED))
        }
    }
}

async fn repeat(client: &Client, call: Call, n: u64, concurrency: u64) -> Result<ExitCode> {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let succeeded = Arc::new(AtomicU64::new(0));
    let errors: Arc<parking_lot_free::Counts> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.min(n) {
        let (client, call, next, succeeded, errors) = (
            client.clone(),
            call.clone(),
            next.clone(),
            succeeded.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < n {
                match client.execute(call.clone()).await {
                    Ok(_) => {
                        succeeded.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.add(e.code_or_kind()),
                }
            }
        }));
    }
    for t in tasks {
        t.await.context("a request task failed")?;
    }
    let ok = succeeded.load(Ordering::Relaxed);
    let summary = serde_json::json!({
        "requests": n,
        "succeeded": ok,
        "failed": n - ok,
        "attempts": client.stats().attempts.load(Ordering::Relaxed),
        "rate_limited": client.stats().rate_limited.load(Ordering::Relaxed),
        "elapsed_s": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        "errors": errors.snapshot(),
    });
    println!("{summary}");
    Ok(if ok == n {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

mod parking_lot_free {
    //! Error counts by code, shared by the request tasks.
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct Counts(Mutex<BTreeMap<String, u64>>);

    impl Counts {
        pub fn add(&self, code: String) {
            if let Ok(mut m) = self.0.lock() {
                *m.entry(code).or_default() += 1;
            }
        }

        pub fn snapshot(&self) -> super::BTreeMap<String, u64> {
            self.0.lock().map(|m| m.clone()).unwrap_or_default()
        }
    }
}
