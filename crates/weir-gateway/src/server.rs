//! Listeners: the public proxy and the admin endpoints (`/healthz`, `/readyz`,
//! `/metrics`), with graceful shutdown that drains in-flight requests.

use crate::balance::{Assigned, Balancer, Handoff, Slot};
use crate::config::Config;
use crate::gateway::{Gateway, GatewayError};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub use crate::tally::LATENCY_BUCKETS;

/// How often histogram samples recorded through the `metrics` facade are folded into their
/// buckets. The exporter buffers every sample until then (or until a scrape), so without
/// this an instance nobody scrapes would grow by every sample. (The request path's
/// histograms are in [`crate::tally`], already bucketed; this is for any other.)
pub const METRICS_UPKEEP: Duration = Duration::from_secs(5);

fn prometheus() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS)
        .unwrap_or_else(|_| PrometheusBuilder::new())
}

/// The process-wide Prometheus recorder (installed once, shared by every server).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            prometheus()
                .install_recorder()
                .unwrap_or_else(|_| prometheus().build_recorder().handle())
        })
        .clone()
}

/// A bound, not yet running, gateway.
pub struct Server {
    gateway: Arc<Gateway>,
    public: TcpListener,
    admin: TcpListener,
    grace: Duration,
    workers: usize,
    /// The CPU each worker thread is pinned to (`None`: the OS places them).
    cpus: Option<Vec<usize>>,
    /// `server.yield_before_sleep`, read at start (the runtimes are built once).
    yield_before_sleep: bool,
    balancer: Arc<Balancer>,
    inboxes: Vec<mpsc::UnboundedReceiver<Handoff>>,
    draining: Arc<AtomicBool>,
}

impl Server {
    /// Builds the gateway and binds both listeners (the overrides replace the configured
    /// addresses, e.g. `--listen`).
    pub async fn bind(
        config: Config,
        listen: Option<SocketAddr>,
        admin: Option<SocketAddr>,
    ) -> Result<Server, GatewayError> {
        let public_addr = listen.unwrap_or(config.listen);
        let admin_addr = admin.unwrap_or(config.admin_listen);
        let grace = config.shutdown_grace;
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        };
        let cpus = placement(config.cpu_affinity, workers);
        let yield_before_sleep = config.yield_before_sleep;
        // The recorder first: the balancer registers its gauges.
        let _ = metrics_handle();
        let (balancer, inboxes) =
            Balancer::new(workers, config.connection_balance, config.max_connections);
        let public = TcpListener::bind(public_addr).await?;
        let admin = TcpListener::bind(admin_addr).await?;
        let mut config = config;
        config.listen = public.local_addr()?;
        config.admin_listen = admin.local_addr()?;
        let gateway = Gateway::new(config).await?;
        Ok(Server {
            gateway,
            public,
            admin,
            grace,
            workers,
            cpus,
            yield_before_sleep,
            balancer,
            inboxes,
            draining: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The public address.
    pub fn local_addr(&self) -> SocketAddr {
        self.public
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// How many worker threads will serve the public listener (`server.workers`, with 0
    /// resolved to the available cores).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The CPU each worker thread is pinned to, by worker (`server.cpu_affinity`); `None`
    /// when the operating system places them.
    pub fn cpus(&self) -> Option<&[usize]> {
        self.cpus.as_deref()
    }

    /// The connection counts of the worker threads (see [`crate::balance`]).
    pub fn balancer(&self) -> Arc<Balancer> {
        self.balancer.clone()
    }

    /// The gateway (for reloads).
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests
    /// finish (up to the grace period) and returns.
    ///
    /// Public connections are served thread-per-core (see the body); the admin endpoints
    /// run on the caller's runtime.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), GatewayError> {
        let workers = self.workers();
        let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
        let draining = self.draining.clone();
        let handle = metrics_handle();
        let gw = self.gateway.clone();
        let scraped = self.gateway.clone();
        let admin_app = axum::Router::new()
            .route(
                "/healthz",
                get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
            )
            .route(
                "/readyz",
                get(move || {
                    let draining = draining.clone();
                    let store = gw.limiter().store_name();
                    async move {
                        if draining.load(Ordering::SeqCst) {
                            (
                                http::StatusCode::SERVICE_UNAVAILABLE,
                                axum::Json(serde_json::json!({"status": "draining"})),
                            )
                        } else {
                            (
                                http::StatusCode::OK,
                                axum::Json(serde_json::json!({"status": "ready", "store": store})),
                            )
                        }
                    }
                }),
            )
            .route(
                "/metrics",
                // The exporter's series, then the request path's per-thread ones.
                get(move || {
                    scraped.publish_gauges();
                    std::future::ready(handle.render() + &crate::tally::render())
                }),
            );
        let upkeep = {
            let handle = metrics_handle();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(METRICS_UPKEEP);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    handle.run_upkeep();
                }
            })
        };
        let mut admin_rx = admin_stopped.clone();
        let admin_task = tokio::spawn(async move {
            let _ = axum::serve(self.admin, admin_app)
                .with_graceful_shutdown(async move {
                    let _ = admin_rx.wait_for(|s| *s).await;
                })
                .await;
        });

        // Thread-per-core (`server.workers` threads): each worker thread runs its own
        // single-threaded runtime with its own accept loop on a clone of the listening socket
        // and its own upstream client, so a request never crosses threads. The balancer
        // counts each worker's connections and, when `server.connection_balance` asks for
        // it, moves a freshly accepted connection to a less busy worker (see `balance`).
        let listener = self.public.into_std()?;
        let (balancer, inboxes) = (self.balancer, self.inboxes);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut threads = Vec::with_capacity(workers);
        if let Some(cpus) = &self.cpus {
            tracing::info!(?cpus, "worker threads pinned, one per CPU");
        }
        for (n, inbox) in inboxes.into_iter().enumerate() {
            let cpu = self.cpus.as_ref().and_then(|c| c.get(n).copied());
            let l = listener.try_clone()?;
            let worker = Worker {
                index: n,
                gateway: self.gateway.clone(),
                balancer: balancer.clone(),
                drain: tokio::sync::watch::channel(false).0,
                wake: Arc::new(tokio::sync::Notify::new()),
            };
            let mut stop = stop_rx.clone();
            let grace = self.grace;
            let yield_before_sleep = self.yield_before_sleep;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("weir-worker-{n}"))
                    .spawn(move || {
                        if let Some(cpu) = cpu {
                            if let Err(e) = crate::affinity::pin_current(cpu) {
                                tracing::warn!(worker = n, cpu, error = %e, "could not pin the worker thread; the operating system places it");
                            }
                        }
                        let Ok(rt) = worker_runtime(yield_before_sleep) else {
                            tracing::error!("could not start a worker runtime");
                            return;
                        };
                        // Every task of this thread runs on it: upstream deadlines can be
                        // kept in the thread's own table.
                        crate::deadline::use_on_this_thread();
                        rt.block_on(async move {
                            crate::gateway::WORKER_POOL.with(|c| {
                                let _ = c.set(crate::upstream::UpstreamPool::new());
                            });
                            let Ok(listener) = TcpListener::from_std(l) else {
                                tracing::error!("could not register the listener");
                                return;
                            };
                            worker
                                .run(
                                    listener,
                                    inbox,
                                    async move {
                                        let _ = stop.wait_for(|s| *s).await;
                                    },
                                    grace,
                                )
                                .await;
                        });
                    })
                    .map_err(GatewayError::Io)?,
            );
        }
        drop(balancer);
        drop(listener);
        shutdown.await;
        self.draining.store(true, Ordering::SeqCst);
        tracing::info!(
            grace_s = self.grace.as_secs_f64(),
            "shutting down: draining in-flight requests"
        );
        let _ = stop_tx.send(true);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        let _ = stop_admin.send(true);
        let _ = admin_task.await;
        upkeep.abort();
        Ok(())
    }
}

/// A worker thread's single-threaded runtime. With `yield_before_sleep`, the worker gives
/// its CPU once (`sched_yield`) to whatever else is queued on it each time it has nothing
/// left to run, before its I/O driver sleeps in `epoll_wait`.
///
/// Why: on a machine weir shares with its clients or its upstream, a worker that runs out
/// of work usually does so because its connections wait on exactly those processes, and one
/// of them is often queued on the worker's own CPU. Sleeping hands it the CPU too, but the
/// worker must then be woken by the bytes it produces, and a woken task is placed where the
/// kernel sees fit, which on a small machine leaves one CPU idle while tasks queue on the
/// other (`docs/benchmarks-history.md`, session 20; `docs/BENCHMARKS.md`, session 24).
/// Yielding lets that process run first; the worker stays runnable, and when it next asks
/// the kernel for events, the work that process made for it is already there, so the wait
/// returns at once instead of sleeping.
/// On the 2-core benchmark machine this cut the workers' sleeps tenfold (0.07 to 0.007 per
/// request) and the machine's idle time from about 4% to 2–3%, for about 1% more requests
/// served: small, but 90 of 148 alternating pairs went its way. Where nothing else is queued
/// on the CPU, the yield returns at once: one system call per sleep, about 0.2 µs, and the
/// worker then sleeps as before. It is one yield, never a spin.
pub(crate) fn worker_runtime(yield_before_sleep: bool) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    if yield_before_sleep {
        builder.on_thread_park(yield_before_park);
    }
    builder.build()
}

#[cfg(test)]
thread_local! {
    /// How many times this thread's runtime has yielded before parking (tests only).
    static YIELDS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn yield_before_park() {
    #[cfg(test)]
    YIELDS.with(|y| y.set(y.get() + 1));
    std::thread::yield_now();
}

/// The CPUs the worker threads are pinned to under `affinity` (see [`crate::affinity`]),
/// or `None`, saying why in the log when pinning was asked for.
fn placement(affinity: crate::affinity::CpuAffinity, workers: usize) -> Option<Vec<usize>> {
    if affinity == crate::affinity::CpuAffinity::None {
        return None;
    }
    match crate::affinity::allowed() {
        Ok(cpus) => {
            let placed = crate::affinity::assign(&cpus, workers);
            if placed.is_none() {
                tracing::info!(
                    workers,
                    cpus = cpus.len(),
                    "more worker threads than CPUs: the operating system places them"
                );
            }
            placed
        }
        Err(e) => {
            tracing::info!(error = %e, "CPU affinity unavailable: the operating system places the worker threads");
            None
        }
    }
}

/// One worker thread's share of the public listener.
struct Worker {
    index: usize,
    gateway: Arc<Gateway>,
    balancer: Arc<Balancer>,
    /// Set to `true` to drain; every connection holds a receiver, so the worker knows when
    /// the last one has ended.
    drain: tokio::sync::watch::Sender<bool>,
    /// Wakes idle connections when the worker drains.
    wake: Arc<tokio::sync::Notify>,
}

impl Worker {
    /// Accepts connections (and takes those other workers hand over) until `stop`, then
    /// drains them (at most `grace`) and returns.
    async fn run(
        self,
        listener: TcpListener,
        mut inbox: mpsc::UnboundedReceiver<Handoff>,
        stop: impl Future<Output = ()>,
        grace: Duration,
    ) {
        let mut stop = std::pin::pin!(stop);
        // Said once per stretch at the cap, not once per check.
        let mut at_cap = false;
        loop {
            if self.balancer.full() {
                if !at_cap {
                    tracing::warn!(
                        "server.max_connections reached: new connections wait in the listen queue until one ends"
                    );
                    at_cap = true;
                }
                tokio::select! {
                    // A missed wake-up costs at most this long.
                    () = self.balancer.wait_for_room(Duration::from_millis(50)) => {}
                    Some(h) = inbox.recv() => self.adopt(h),
                    () = &mut stop => break,
                }
                continue;
            }
            at_cap = false;
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    match self.balancer.assign(self.index) {
                        Assigned::Keep(slot) => self.serve(stream, peer, slot),
                        Assigned::Move(to, slot) => match stream.into_std() {
                            Ok(stream) => {
                                if !self.balancer.hand_off(Handoff { stream, peer, slot }) {
                                    tracing::debug!(worker = to, "worker stopped; connection closed");
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "could not hand a connection over"),
                        },
                    }
                }
                Some(h) = inbox.recv() => self.adopt(h),
                () = &mut stop => break,
            }
        }
        drop(listener);
        // Connections handed over just before the stop are still served.
        while let Ok(h) = inbox.try_recv() {
            self.adopt(h);
        }
        let _ = self.drain.send(true);
        self.wake.notify_waiters();
        tokio::select! {
            () = self.drain.closed() => tracing::info!("all connections drained"),
            () = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing remaining connections"),
        }
    }

    /// Serves a connection another worker accepted.
    fn adopt(&self, h: Handoff) {
        match TcpStream::from_std(h.stream) {
            Ok(stream) => self.serve(stream, h.peer, h.slot),
            Err(e) => tracing::warn!(error = %e, "could not take over a connection"),
        }
    }

    /// Serves one connection on this worker; `slot` counts it until it ends.
    fn serve(&self, stream: TcpStream, peer: SocketAddr, slot: Slot) {
        let _ = stream.set_nodelay(true);
        // Read per connection, so a reload applies to new connections.
        let config = &self.gateway.runtime().config;
        let settings = crate::h1::Settings {
            gateway: self.gateway.clone(),
            header_timeout: config.header_read_timeout,
            write_timeout: config.response_write_timeout,
            batch_writes: config.batch_response_writes,
            drain: self.drain.subscribe(),
            wake: self.wake.clone(),
        };
        tokio::spawn(async move {
            crate::h1::serve(stream, peer, settings).await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yields() -> u64 {
        YIELDS.with(std::cell::Cell::get)
    }

    /// Waiting on a timer parks the runtime: the yield runs before each park only when asked.
    #[test]
    fn a_worker_runtime_yields_before_it_sleeps_only_when_asked() {
        let before = yields();
        let rt = worker_runtime(false).expect("runtime");
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(2)).await });
        assert_eq!(yields(), before, "no yield when switched off");
        let rt = worker_runtime(true).expect("runtime");
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(2)).await });
        assert!(yields() > before, "a park without a yield before it");
    }
}
