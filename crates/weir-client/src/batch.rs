//! Batches: split a large submission into batches by item count *and* serialized size,
//! send them concurrently (and paced: every batch goes through the client), and report a
//! result for every item, partial failures included.
//!
//! An item that alone exceeds the byte limit is reported as failed without being sent
//! (fail fast with actionable feedback, as reference 000 asks). When a batch's response
//! carries a `results` array as long as the batch, each item gets its own entry.

use crate::client::{Call, Client};
use crate::error::CallError;
use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use serde_json::Value;

/// Batch settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most items per batch.
    pub max_items: usize,
    /// Most bytes of serialized items per batch.
    pub max_bytes: usize,
    /// Batches in flight at once.
    pub concurrency: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_items: 100,
            max_bytes: 1 << 20,
            concurrency: 4,
        }
    }
}

/// One item's outcome.
#[derive(Debug, Clone)]
pub enum ItemResult {
    /// Its batch succeeded; the server's per-item result when it sent one.
    Ok {
        /// HTTP status of the batch.
        status: u16,
        /// This item's entry of the response's `results`, if any.
        result: Option<Value>,
    },
    /// Its batch failed.
    Failed(Box<CallError>),
    /// It was never sent: larger than a whole batch may be.
    TooLarge {
        /// Its serialized size.
        bytes: usize,
    },
}

/// A batch's item indices and its outcome: status and per-item results, or the error.
type BatchOutcome = (Vec<usize>, Result<(u16, Option<Vec<Value>>), CallError>);

/// Groups of item indices: consecutive items, at most `max_items` and `max_bytes` each;
/// oversize items are returned apart.
pub fn split<T: Serialize>(
    items: &[T],
    config: &BatchConfig,
) -> (Vec<Vec<usize>>, Vec<(usize, usize)>) {
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut oversize = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut bytes = 0usize;
    for (i, item) in items.iter().enumerate() {
        let size = serde_json::to_vec(item).map_or(usize::MAX, |v| v.len());
        if size > config.max_bytes {
            oversize.push((i, size));
            continue;
        }
        if !current.is_empty()
            && (current.len() >= config.max_items.max(1) || bytes + size > config.max_bytes)
        {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(i);
        bytes += size;
    }
    if !current.is_empty() {
        batches.push(current);
    }
    (batches, oversize)
}

/// Sends `items` to `url` as `POST {"items": [...]}` batches; one result per item, in order.
pub async fn send<T: Serialize>(
    client: &Client,
    url: &str,
    items: &[T],
    config: BatchConfig,
) -> Vec<ItemResult> {
    let (batches, oversize) = split(items, &config);
    let mut results: Vec<Option<ItemResult>> = vec![None; items.len()];
    for (i, bytes) in oversize {
        results[i] = Some(ItemResult::TooLarge { bytes });
    }
    let outcomes: Vec<BatchOutcome> = stream::iter(
        batches,
    )
    .map(|batch| {
        let body =
            serde_json::json!({ "items": batch.iter().map(|i| &items[*i]).collect::<Vec<_>>() });
        let mut call = Call::new(http::Method::POST, url);
        call.headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        call.body = Some(bytes::Bytes::from(body.to_string()));
        async move {
            let out = client.execute(call).await.map(|ok| {
                let per_item = serde_json::from_slice::<Value>(&ok.body)
                    .ok()
                    .and_then(|v| v.get("results").and_then(Value::as_array).cloned())
                    .filter(|r| r.len() == batch.len());
                (ok.status, per_item)
            });
            (batch, out)
        }
    })
    .buffer_unordered(config.concurrency.max(1))
    .collect()
    .await;
    for (batch, outcome) in outcomes {
        match outcome {
            Ok((status, per_item)) => {
                for (k, i) in batch.iter().enumerate() {
                    results[*i] = Some(ItemResult::Ok {
                        status,
                        result: per_item.as_ref().and_then(|r| r.get(k).cloned()),
                    });
                }
            }
            Err(e) => {
                for i in &batch {
                    results[*i] = Some(ItemResult::Failed(Box::new(e.clone())));
                }
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or(ItemResult::TooLarge { bytes: 0 }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_by_count_and_bytes_and_sets_oversize_apart() {
        let items: Vec<String> = (0..25)
            .map(|i| {
                if i == 7 {
                    "x".repeat(500)
                } else {
                    format!("item-{i}")
                }
            })
            .collect();
        let cfg = BatchConfig {
            max_items: 10,
            max_bytes: 40,
            concurrency: 2,
        };
        let (batches, oversize) = split(&items, &cfg);
        assert_eq!(oversize, vec![(7, 502)]);
        assert!(batches.iter().all(|b| b.len() <= 10));
        for b in &batches {
            let bytes: usize = b
                .iter()
                .map(|i| serde_json::to_vec(&items[*i]).map_or(0, |v| v.len()))
                .sum();
            assert!(bytes <= 40, "{b:?}");
        }
        let sent: usize = batches.iter().map(Vec::len).sum();
        assert_eq!(sent, 24, "every item but the oversize one, once");
    }
}
