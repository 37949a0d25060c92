//! The gateway's request-path metrics, with their cells resolved ahead of the request path.
//!
//! `weir_requests_total{route, status, code}`, `weir_limiter_decisions_total{outcome}`,
//! `weir_request_duration_seconds{route}` and `weir_upstream_latency_seconds{upstream}` are
//! counted every request, so they live in [`crate::tally`]: one cell per thread, summed when
//! `/metrics` is scraped. Each thread keeps its cells in a cache under integer keys
//! (configuration generation, route or upstream index, status, the address of the
//! catalogue's `&'static` code), so counting compares no strings and takes no lock; the
//! registry's lock is taken once per thread and series. `weir_breaker_state{upstream}`
//! stays a `metrics` gauge, set from the breakers when `/metrics` is scraped
//! ([`Metrics::show_breakers`]), not by every request.

use crate::config::Config;
use crate::tally::{self, Count, Latency};
use metrics::Gauge;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use weir_limit::breaker::Breaker;

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

/// The series of one configuration (rebuilt on reload).
pub struct Metrics {
    generation: u64,
    /// Route names by index, then [`NO_ROUTE`] last.
    route_names: Vec<String>,
    /// How many upstreams the configuration has (their latency cells are in
    /// [`Local::upstreams`], in name order).
    upstreams: usize,
    /// `weir_breaker_state{upstream}` by upstream name.
    breakers: BTreeMap<String, Gauge>,
}

static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Past this many `(route, status, code)` series a thread stops caching (only reachable
/// through a huge configuration; the count is still kept, through the registry).
const MAX_CACHED: usize = 4096;

/// `(route index, status, code address, code length)`.
type Key = (usize, u16, usize, usize);

/// One thread's cells for the current configuration.
#[derive(Default)]
struct Local {
    generation: u64,
    requests: hashbrown::HashMap<Key, Arc<Count>>,
    durations: Vec<Option<Arc<Latency>>>,
    upstreams: Vec<Option<Arc<Latency>>>,
    decisions: [Option<Arc<Count>>; 4],
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

impl Metrics {
    /// The series of `config` (the breaker gauges are registered here; the per-thread cells
    /// on each thread's first use).
    pub fn new(config: &Config) -> Metrics {
        let mut route_names: Vec<String> = config.routes.iter().map(|r| r.name.clone()).collect();
        route_names.push(NO_ROUTE.to_owned());
        let upstreams = config.upstreams.len();
        let breakers = config
            .upstreams
            .keys()
            .map(|u| {
                let gauge = metrics::gauge!("weir_breaker_state", "upstream" => u.clone());
                (u.clone(), gauge)
            })
            .collect();
        Metrics {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed) + 1,
            route_names,
            upstreams,
            breakers,
        }
    }

    fn route_index(&self, route: Option<usize>) -> usize {
        let none = self.route_names.len() - 1;
        route.filter(|&i| i < none).unwrap_or(none)
    }

    fn route_name(&self, r: usize) -> String {
        self.route_names
            .get(r)
            .map_or(NO_ROUTE, String::as_str)
            .to_owned()
    }

    /// Runs `f` on this thread's cells for this configuration; `false` when the thread's
    /// cache cannot be used (the thread is ending, or `f` is re-entered).
    fn local(&self, f: impl FnOnce(&mut Local)) -> bool {
        LOCAL
            .try_with(|cell| {
                let Ok(mut local) = cell.try_borrow_mut() else {
                    return false;
                };
                if local.generation != self.generation {
                    // A reload: the old configuration's keys will not be seen again (the
                    // cells stay registered, and counted).
                    *local = Local {
                        generation: self.generation,
                        ..Local::default()
                    };
                }
                f(&mut local);
                true
            })
            .unwrap_or(false)
    }

    /// One request answered: `weir_requests_total` and `weir_request_duration_seconds`.
    pub fn request(&self, route: Option<usize>, status: u16, code: &'static str, seconds: f64) {
        let r = self.route_index(route);
        let duration = || {
            tally::histogram(
                "weir_request_duration_seconds",
                vec![("route", self.route_name(r))],
            )
        };
        let requests = || {
            let status = itoa::Buffer::new().format(status).to_owned();
            tally::counter(
                "weir_requests_total",
                vec![
                    ("route", self.route_name(r)),
                    ("status", status),
                    ("code", code.to_owned()),
                ],
            )
        };
        let key = (r, status, code.as_ptr() as usize, code.len());
        let counted = self.local(|local| {
            if local.durations.len() <= r {
                local.durations.resize(r + 1, None);
            }
            if let Some(slot) = local.durations.get_mut(r) {
                slot.get_or_insert_with(duration).record(seconds);
            }
            if let Some(c) = local.requests.get(&key) {
                c.add(1);
            } else if local.requests.len() < MAX_CACHED {
                let c = requests();
                c.add(1);
                local.requests.insert(key, c);
            } else {
                requests().add(1);
            }
        });
        if !counted {
            duration().record(seconds);
            requests().add(1);
        }
    }

    /// One limiter decision.
    pub fn decision(&self, outcome: Decided) {
        let i = outcome as usize;
        let cell = || {
            let label = OUTCOMES.get(i).copied().unwrap_or("error");
            tally::counter(
                "weir_limiter_decisions_total",
                vec![("outcome", label.to_owned())],
            )
        };
        let counted = self.local(|local| {
            if let Some(slot) = local.decisions.get_mut(i) {
                slot.get_or_insert_with(cell).add(1);
            }
        });
        if !counted {
            cell().add(1);
        }
    }

    /// One upstream call's latency: `upstream` is the upstream's name and `u` its position
    /// among the configuration's upstreams (in name order).
    pub fn upstream(&self, u: usize, upstream: &str, seconds: f64) {
        if u >= self.upstreams {
            return;
        }
        let cell = || {
            tally::histogram(
                "weir_upstream_latency_seconds",
                vec![("upstream", upstream.to_owned())],
            )
        };
        let counted = self.local(|local| {
            if local.upstreams.len() <= u {
                local.upstreams.resize(u + 1, None);
            }
            if let Some(slot) = local.upstreams.get_mut(u) {
                slot.get_or_insert_with(cell).record(seconds);
            }
        });
        if !counted {
            cell().record(seconds);
        }
    }

    /// Sets `weir_breaker_state{upstream}` (0 closed, 1 open, 2 half-open) from the
    /// breakers themselves, so a scrape sees their state at that moment.
    pub fn show_breakers(&self, breakers: &BTreeMap<String, Arc<Breaker>>) {
        for (name, breaker) in breakers {
            if let Some(g) = self.breakers.get(name) {
                g.set(f64::from(breaker.state_code()));
            }
        }
    }
}
