//! The gateway's metrics, with their handles resolved ahead of the request path.
//!
//! `metrics::counter!("…", "route" => route.clone(), …)` looks the series up in the global
//! registry on every call: it allocates each label value and hashes and compares the whole
//! label set. On the request path that was paid several times per request. Instead:
//!
//! * series whose labels come from the configuration alone (per route, per upstream, per
//!   limiter outcome) are registered once per configuration, in [`Metrics::new`];
//! * `weir_requests_total{route, status, code}`, whose status and code vary, is cached per
//!   worker thread under an integer key (configuration generation, route index, status,
//!   the address of the catalogue's `&'static` code), so a hit compares no strings.
//!
//! Handles are the registry's own atomics, so what `/metrics` reports is unchanged.

use crate::config::Config;
use metrics::{Counter, Gauge, Histogram};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// The label of requests no route matched.
pub const NO_ROUTE: &str = "(none)";

/// A limiter decision's outcome, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    /// Admitted.
    Admitted = 0,
    /// Rejected for now.
    Rejected = 1,
    /// The cost exceeds a quota.
    CostExceedsLimit = 2,
    /// The store failed.
    Error = 3,
}

const OUTCOMES: [&str; 4] = ["admitted", "rejected", "cost_exceeds_limit", "error"];

/// Per-upstream series.
struct UpstreamSeries {
    latency: Histogram,
    breaker: Gauge,
}

/// The series of one configuration (rebuilt on reload).
pub struct Metrics {
    generation: u64,
    /// Route names by index, then [`NO_ROUTE`] last.
    route_names: Vec<String>,
    /// `weir_request_duration_seconds{route}`, indexed like `route_names`.
    durations: Vec<Histogram>,
    upstreams: BTreeMap<String, UpstreamSeries>,
    decisions: [Counter; 4],
}

static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Past this many `(route, status, code)` series a thread stops caching (only reachable
/// through a huge configuration; the registry still counts correctly).
const MAX_CACHED: usize = 4096;

type Key = (u64, usize, u16, usize, usize);

thread_local! {
    static REQUESTS: RefCell<(u64, hashbrown::HashMap<Key, Counter>)> =
        RefCell::new((0, hashbrown::HashMap::new()));
}

impl Metrics {
    /// Registers the series of `config`.
    pub fn new(config: &Config) -> Metrics {
        let mut route_names: Vec<String> = config.routes.iter().map(|r| r.name.clone()).collect();
        route_names.push(NO_ROUTE.to_owned());
        let durations = route_names
            .iter()
            .map(|r| metrics::histogram!("weir_request_duration_seconds", "route" => r.clone()))
            .collect();
        let upstreams = config
            .upstreams
            .keys()
            .map(|u| {
                (
                    u.clone(),
                    UpstreamSeries {
                        latency: metrics::histogram!("weir_upstream_latency_seconds", "upstream" => u.clone()),
                        breaker: metrics::gauge!("weir_breaker_state", "upstream" => u.clone()),
                    },
                )
            })
            .collect();
        let decisions =
            OUTCOMES.map(|o| metrics::counter!("weir_limiter_decisions_total", "outcome" => o));
        Metrics {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed) + 1,
            route_names,
            durations,
            upstreams,
            decisions,
        }
    }

    fn route_index(&self, route: Option<usize>) -> usize {
        let none = self.route_names.len() - 1;
        route.filter(|&i| i < none).unwrap_or(none)
    }

    /// One request answered: `weir_requests_total` and `weir_request_duration_seconds`.
    pub fn request(&self, route: Option<usize>, status: u16, code: &'static str, seconds: f64) {
        let r = self.route_index(route);
        if let Some(h) = self.durations.get(r) {
            h.record(seconds);
        }
        let key = (
            self.generation,
            r,
            status,
            code.as_ptr() as usize,
            code.len(),
        );
        let register = || {
            let route = self.route_names.get(r).map_or(NO_ROUTE, String::as_str);
            let status = itoa::Buffer::new().format(status).to_owned();
            metrics::counter!("weir_requests_total", "route" => route.to_owned(), "status" => status, "code" => code)
        };
        let counted = REQUESTS.try_with(|cell| {
            let Ok(mut cache) = cell.try_borrow_mut() else {
                return false;
            };
            let (generation, map) = &mut *cache;
            if *generation != self.generation {
                // A reload: the old configuration's keys will not be seen again.
                *generation = self.generation;
                map.clear();
            }
            if let Some(c) = map.get(&key) {
                c.increment(1);
                return true;
            }
            if map.len() >= MAX_CACHED {
                return false;
            }
            let c = register();
            c.increment(1);
            map.insert(key, c);
            true
        });
        if !matches!(counted, Ok(true)) {
            register().increment(1);
        }
    }

    /// One limiter decision.
    pub fn decision(&self, outcome: Decided) {
        if let Some(c) = self.decisions.get(outcome as usize) {
            c.increment(1);
        }
    }

    /// One upstream call: its latency and the breaker's state after it (0 closed,
    /// 1 half-open, 2 open).
    pub fn upstream(&self, upstream: &str, seconds: f64, breaker_state: f64) {
        if let Some(u) = self.upstreams.get(upstream) {
            u.latency.record(seconds);
            u.breaker.set(breaker_state);
        }
    }
}
