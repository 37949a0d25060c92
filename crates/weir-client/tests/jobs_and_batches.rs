//! Async jobs (polling, webhook-first) and batches, against real local servers.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_client::batch::{self, BatchConfig, ItemResult};
use weir_client::jobs::{self, JobError, JobState, PollConfig, Source};
use weir_client::{Client, ClientConfig};

async fn serve(app: Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    format!("http://{addr}")
}

/// A job that is pending for `n` polls (202 + Retry-After: 0), then done.
async fn job_server(pending_polls: u32) -> (String, Arc<AtomicU32>) {
    let polls = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route(
            "/jobs/1",
            get(move |State(p): State<Arc<AtomicU32>>| async move {
                let n = p.fetch_add(1, Ordering::SeqCst);
                if n < pending_polls {
                    let mut h = HeaderMap::new();
                    h.insert("retry-after", "0".parse().expect("v"));
                    (
                        StatusCode::ACCEPTED,
                        h,
                        Json(serde_json::json!({"status": "running"})),
                    )
                } else {
                    (
                        StatusCode::OK,
                        HeaderMap::new(),
                        Json(serde_json::json!({"status": "done", "result": 42})),
                    )
                }
            }),
        )
        .with_state(polls.clone());
    (serve(app).await, polls)
}

fn judge(s: &weir_client::Success) -> JobState<u64> {
    let v: serde_json::Value = serde_json::from_slice(&s.body).unwrap_or_default();
    match v["status"].as_str() {
        Some("done") => JobState::Done(v["result"].as_u64().unwrap_or(0)),
        Some("failed") => JobState::Failed("failed".into()),
        _ => JobState::Pending,
    }
}

fn quick() -> PollConfig {
    PollConfig {
        initial: Duration::from_millis(20),
        max_interval: Duration::from_millis(100),
        deadline: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn polls_until_done_honouring_retry_after() {
    let (base, polls) = job_server(3).await;
    let client = Client::new(ClientConfig::default());
    let v = jobs::poll(&client, &format!("{base}/jobs/1"), quick(), judge)
        .await
        .expect("done");
    assert_eq!(v, 42);
    assert_eq!(polls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn polling_is_bounded_by_its_deadline() {
    let (base, _) = job_server(u32::MAX).await;
    let client = Client::new(ClientConfig::default());
    let cfg = PollConfig {
        deadline: Duration::from_millis(300),
        ..quick()
    };
    let started = Instant::now();
    let e = jobs::poll(&client, &format!("{base}/jobs/1"), cfg, judge)
        .await
        .expect_err("pending forever");
    assert!(matches!(e, JobError::Timeout { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn webhook_first_then_fallback_polling() {
    let (base, polls) = job_server(1).await;
    let client = Client::new(ClientConfig::default());
    let url = format!("{base}/jobs/1");
    let (v, source) = jobs::webhook_or_poll(
        &client,
        &url,
        async { 7u64 },
        Duration::from_secs(1),
        quick(),
        judge,
    )
    .await
    .expect("webhook");
    assert_eq!((v, source), (7, Source::Webhook));
    assert_eq!(
        polls.load(Ordering::SeqCst),
        0,
        "no poll when the webhook arrives"
    );
    let never = std::future::pending::<u64>();
    let (v, source) = jobs::webhook_or_poll(
        &client,
        &url,
        never,
        Duration::from_millis(100),
        quick(),
        judge,
    )
    .await
    .expect("polled");
    assert_eq!((v, source), (42, Source::Polling));
}

#[tokio::test]
async fn batches_split_send_and_report_partial_failures() {
    let calls = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route(
            "/items",
            post(|State(c): State<Arc<AtomicU32>>, Json(body): Json<serde_json::Value>| async move {
                c.fetch_add(1, Ordering::SeqCst);
                let items = body["items"].as_array().cloned().unwrap_or_default();
                if items.iter().any(|i| i == "bad") {
                    return (StatusCode::UNPROCESSABLE_ENTITY, Json(serde_json::json!({"detail": {"code": "DATA_INVALID_PARAMETER", "message": "bad item"}})));
                }
                let results: Vec<_> = items.iter().map(|i| serde_json::json!({"echo": i})).collect();
                (StatusCode::OK, Json(serde_json::json!({ "results": results })))
            }),
        )
        .with_state(calls.clone());
    let base = serve(app).await;
    let mut items: Vec<String> = (0..25).map(|i| format!("i{i}")).collect();
    items[12] = "bad".into();
    items[20] = "x".repeat(2000);
    let cfg = BatchConfig {
        max_items: 10,
        max_bytes: 1000,
        concurrency: 3,
    };
    let client = Client::new(ClientConfig::default());
    let results = batch::send(&client, &format!("{base}/items"), &items, cfg).await;
    assert_eq!(results.len(), 25);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "24 sendable items in batches of at most 10"
    );
    assert!(matches!(results[20], ItemResult::TooLarge { bytes: 2002 }));
    match &results[0] {
        ItemResult::Ok { status, result } => {
            assert_eq!(*status, 200);
            assert_eq!(
                result.as_ref().map(|r| r["echo"].clone()),
                Some(serde_json::json!("i0"))
            );
        }
        other => panic!("{other:?}"),
    }
    // The batch holding "bad" failed as a whole; the others succeeded.
    let failed: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, ItemResult::Failed(_)))
        .map(|(i, _)| i)
        .collect();
    assert!(failed.contains(&12) && failed.len() == 10, "{failed:?}");
    if let ItemResult::Failed(e) = &results[12] {
        assert_eq!(e.code.as_deref(), Some("DATA_INVALID_PARAMETER"));
    }
}
