//! The gateway's metrics, through per-thread handle caches.
//!
//! `metrics::counter!("…", "route" => route.clone(), …)` looks the series up in the global
//! registry on every call: it allocates each label value and hashes the whole label set.
//! On the request path that is paid several times per request, so each worker thread keeps
//! the handles it has used, keyed by metric and label values; the registry is asked once
//! per thread and series. Handles are cheap clones of the registry's own atomics, so what
//! `/metrics` reports is unchanged.

use hashbrown::hash_table::HashTable;
use hashbrown::DefaultHashBuilder;
use metrics::{Counter, Gauge, Histogram, Label};
use std::cell::RefCell;
use std::hash::BuildHasher;

enum Handle {
    Counter(Counter),
    Histogram(Histogram),
    Gauge(Gauge),
}

struct Cached {
    hash: u64,
    metric: &'static str,
    values: [Box<str>; 3],
    handle: Handle,
}

/// Past this many series a thread stops caching (label values come from configuration, so
/// this is only reached by a misconfiguration; the registry still counts correctly).
const MAX_CACHED: usize = 4096;

thread_local! {
    static CACHE: RefCell<(DefaultHashBuilder, HashTable<Cached>)> =
        RefCell::new((DefaultHashBuilder::default(), HashTable::new()));
}

/// What to do to a series.
#[derive(Clone, Copy)]
enum Op {
    Increment(u64),
    Record(f64),
    Set(f64),
}

impl Handle {
    fn apply(&self, op: Op) {
        match (self, op) {
            (Handle::Counter(c), Op::Increment(n)) => c.increment(n),
            (Handle::Histogram(h), Op::Record(v)) => h.record(v),
            (Handle::Gauge(g), Op::Set(v)) => g.set(v),
            _ => {}
        }
    }
}

/// Applies `op` to a series through this thread's cached handle (created on first use).
fn apply(
    metric: &'static str,
    keys: [&'static str; 3],
    values: [&str; 3],
    make: fn(&'static str, Vec<Label>) -> Handle,
    op: Op,
) {
    let build = || {
        let labels = keys
            .iter()
            .zip(values)
            .filter(|(k, _)| !k.is_empty())
            .map(|(k, v)| Label::new(*k, v.to_owned()))
            .collect();
        make(metric, labels)
    };
    let done = CACHE.try_with(|cell| {
        let Ok(mut guard) = cell.try_borrow_mut() else {
            return false;
        };
        let (hasher, table) = &mut *guard;
        let hash = hasher.hash_one((metric, values));
        let eq = |c: &Cached| {
            c.hash == hash
                && c.metric == metric
                && c.values.iter().zip(values).all(|(a, b)| &**a == b)
        };
        if let Some(c) = table.find(hash, eq) {
            c.handle.apply(op);
            return true;
        }
        if table.len() >= MAX_CACHED {
            return false;
        }
        let handle = build();
        handle.apply(op);
        table.insert_unique(
            hash,
            Cached {
                hash,
                metric,
                values: values.map(Box::from),
                handle,
            },
            |c| c.hash,
        );
        true
    });
    if !matches!(done, Ok(true)) {
        build().apply(op);
    }
}

fn counter(metric: &'static str, labels: Vec<Label>) -> Handle {
    Handle::Counter(metrics::counter!(metric, labels))
}

fn histogram(metric: &'static str, labels: Vec<Label>) -> Handle {
    Handle::Histogram(metrics::histogram!(metric, labels))
}

fn gauge(metric: &'static str, labels: Vec<Label>) -> Handle {
    Handle::Gauge(metrics::gauge!(metric, labels))
}

/// `weir_requests_total{route, status, code}` += 1.
pub fn count_request(route: &str, status: u16, code: &str) {
    let mut buf = itoa::Buffer::new();
    let status = buf.format(status);
    apply(
        "weir_requests_total",
        ["route", "status", "code"],
        [route, status, code],
        counter,
        Op::Increment(1),
    );
}

/// `weir_request_duration_seconds{route}`.
pub fn record_request_duration(route: &str, seconds: f64) {
    apply(
        "weir_request_duration_seconds",
        ["route", "", ""],
        [route, "", ""],
        histogram,
        Op::Record(seconds),
    );
}

/// `weir_limiter_decisions_total{outcome}` += 1.
pub fn count_limiter_decision(outcome: &str) {
    apply(
        "weir_limiter_decisions_total",
        ["outcome", "", ""],
        [outcome, "", ""],
        counter,
        Op::Increment(1),
    );
}

/// `weir_upstream_latency_seconds{upstream}`.
pub fn record_upstream_latency(upstream: &str, seconds: f64) {
    apply(
        "weir_upstream_latency_seconds",
        ["upstream", "", ""],
        [upstream, "", ""],
        histogram,
        Op::Record(seconds),
    );
}

/// `weir_breaker_state{upstream}` (0 closed, 1 half-open, 2 open).
pub fn set_breaker_state(upstream: &str, state: f64) {
    apply(
        "weir_breaker_state",
        ["upstream", "", ""],
        [upstream, "", ""],
        gauge,
        Op::Set(state),
    );
}
