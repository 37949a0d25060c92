//! Spreading client connections evenly over the worker threads (the default:
//! `server.connection_balance = "least-connections"`).
//!
//! Every worker accepts on the same listening socket, and whichever the kernel wakes first
//! takes the connection. Long-lived keep-alive connections that arrive in a burst (a load
//! balancer filling its pool, a benchmark opening its connections) then often end up
//! mostly on one worker — a worker that is already running drains the accept queue before
//! a sleeping one wakes. A connection never moves once served, so such a skew lasts as
//! long as the connections do and leaves cores idle: on the 2-core benchmark, 6 runs of
//! 64 connections each spread them from 30/34 to 64/0 and throughput went from 95k down to
//! 69k requests/s with the spread.
//!
//! With balancing on, a worker that accepts a connection keeps it only while it serves no
//! more connections than any other worker; otherwise it hands the connection to the worker
//! with the fewest (the same rule as Envoy's "exact" connection balance). The counts are
//! kept under one lock, taken once when a connection is assigned and once when it ends,
//! never per request. A hand-off costs one cross-thread wake-up per connection: with
//! connections that carry one request each, `"none"` avoids that cost.
//!
//! The same counts cap the connections served at once (`server.max_connections`): at the
//! cap, the workers stop accepting until a connection ends, so new clients wait in the
//! kernel's listen queue (as with nginx's `worker_connections`) instead of being accepted
//! into a process that has run out of descriptors or memory. Two workers that find room at
//! the same moment may each take a connection, so the cap can be passed by fewer
//! connections than there are workers.

use metrics::Gauge;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// How accepted connections are spread over the workers (`server.connection_balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BalanceMode {
    /// A connection goes to a worker serving the fewest connections, preferring the one
    /// that accepted it.
    #[default]
    LeastConnections,
    /// The worker that accepted a connection serves it.
    None,
}

impl BalanceMode {
    /// The mode named by a configuration value.
    pub fn parse(s: &str) -> Option<BalanceMode> {
        match s {
            "least-connections" => Some(BalanceMode::LeastConnections),
            "none" => Some(BalanceMode::None),
            _ => None,
        }
    }
}

/// A connection handed from the worker that accepted it to the one that will serve it.
pub struct Handoff {
    /// The socket, detached from the accepting worker's event loop.
    pub stream: std::net::TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// The connection's place in the counts.
    pub slot: Slot,
}

/// The open-connection count of every worker, and each worker's inbox.
pub struct Balancer {
    mode: BalanceMode,
    /// The most connections served at once (`server.max_connections`).
    max: usize,
    /// Told whenever a connection ends, for workers waiting for room under the cap.
    room: Notify,
    open: Mutex<Vec<usize>>,
    gauges: Vec<Gauge>,
    inboxes: Vec<mpsc::UnboundedSender<Handoff>>,
}

/// One open connection, counted for the worker serving it until dropped.
pub struct Slot {
    balancer: Arc<Balancer>,
    worker: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.balancer.open.lock();
        if let Some(n) = open.get_mut(self.worker) {
            *n = n.saturating_sub(1);
            self.balancer.publish(self.worker, *n);
        }
        drop(open);
        self.balancer.room.notify_waiters();
    }
}

/// Where an accepted connection goes.
pub enum Assigned {
    /// The accepting worker serves it.
    Keep(Slot),
    /// Another worker serves it: send the connection there.
    Move(usize, Slot),
}

impl Balancer {
    /// A balancer for `workers` workers serving at most `max` connections at once, with
    /// each worker's inbox (index = worker).
    pub fn new(
        workers: usize,
        mode: BalanceMode,
        max: usize,
    ) -> (Arc<Balancer>, Vec<mpsc::UnboundedReceiver<Handoff>>) {
        let (inboxes, receivers) = (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let gauges = (0..workers)
            .map(|n| metrics::gauge!("weir_worker_connections", "worker" => n.to_string()))
            .collect();
        let balancer = Balancer {
            mode,
            max,
            room: Notify::new(),
            open: Mutex::new(vec![0; workers]),
            gauges,
            inboxes,
        };
        (Arc::new(balancer), receivers)
    }

    /// Counts a connection that worker `accepted_by` accepted, for the worker that will
    /// serve it.
    pub fn assign(self: &Arc<Self>, accepted_by: usize) -> Assigned {
        let mut open = self.open.lock();
        let target = match self.mode {
            BalanceMode::None => accepted_by,
            BalanceMode::LeastConnections => {
                let fewest = open
                    .iter()
                    .enumerate()
                    .min_by_key(|&(_, n)| *n)
                    .map_or(accepted_by, |(i, _)| i);
                match (open.get(accepted_by), open.get(fewest)) {
                    (Some(mine), Some(least)) if mine > least => fewest,
                    _ => accepted_by,
                }
            }
        };
        if let Some(n) = open.get_mut(target) {
            *n += 1;
            self.publish(target, *n);
        }
        let slot = Slot {
            balancer: self.clone(),
            worker: target,
        };
        if target == accepted_by {
            Assigned::Keep(slot)
        } else {
            Assigned::Move(target, slot)
        }
    }

    /// Sends a connection to the worker its slot names. `false` when that worker has
    /// stopped (the connection is then closed).
    pub fn hand_off(&self, handoff: Handoff) -> bool {
        match self.inboxes.get(handoff.slot.worker) {
            Some(inbox) => inbox.send(handoff).is_ok(),
            None => false,
        }
    }

    /// Whether as many connections are open as `server.max_connections` allows.
    pub fn full(&self) -> bool {
        self.open.lock().iter().sum::<usize>() >= self.max
    }

    /// Waits until a connection ends, or at most `at_most` (a worker that finds the
    /// balancer full checks again after either).
    pub async fn wait_for_room(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.room.notified()).await;
    }

    /// The open connections of every worker.
    pub fn counts(&self) -> Vec<usize> {
        self.open.lock().clone()
    }

    fn publish(&self, worker: usize, n: usize) {
        if let Some(g) = self.gauges.get(worker) {
            #[allow(clippy::cast_precision_loss)]
            g.set(n as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(a: Assigned) -> Slot {
        match a {
            Assigned::Keep(s) | Assigned::Move(_, s) => s,
        }
    }

    #[test]
    fn a_burst_on_one_worker_is_spread_evenly() {
        let (b, _rx) = Balancer::new(3, BalanceMode::LeastConnections, 100);
        let slots: Vec<Slot> = (0..10).map(|_| keep(b.assign(1))).collect();
        let counts = b.counts();
        assert_eq!(counts.iter().sum::<usize>(), 10);
        assert!(
            counts.iter().max().expect("workers") - counts.iter().min().expect("workers") <= 1,
            "{counts:?}"
        );
        // The accepting worker is preferred on a tie: it got the first one.
        assert_eq!(slots[0].worker, 1);
        drop(slots);
        assert_eq!(b.counts(), vec![0, 0, 0]);
    }

    #[test]
    fn connections_that_end_free_their_worker() {
        let (b, _rx) = Balancer::new(2, BalanceMode::LeastConnections, 100);
        let first = keep(b.assign(0));
        let second = keep(b.assign(0));
        assert_eq!((first.worker, second.worker), (0, 1));
        drop(first);
        // Worker 0 now has none, so it keeps the next one it accepts...
        assert!(matches!(b.assign(0), Assigned::Keep(_)));
        // ...and worker 1, holding one, sends its next to worker 0 (also holding none
        // once the kept one above was dropped).
        assert!(matches!(b.assign(1), Assigned::Move(0, _)));
        drop(second);
        assert_eq!(b.counts(), vec![0, 0]);
    }

    #[test]
    fn none_keeps_every_connection_where_it_was_accepted() {
        let (b, _rx) = Balancer::new(2, BalanceMode::None, 100);
        let slots: Vec<Slot> = (0..4).map(|_| keep(b.assign(1))).collect();
        assert_eq!(b.counts(), vec![0, 4]);
        drop(slots);
    }

    #[test]
    fn modes_parse_from_their_names() {
        assert_eq!(
            BalanceMode::parse("least-connections"),
            Some(BalanceMode::LeastConnections)
        );
        assert_eq!(BalanceMode::parse("none"), Some(BalanceMode::None));
        assert_eq!(BalanceMode::parse("round-robin"), None);
    }
}
