//! Listeners: the public proxy and the admin endpoints (`/healthz`, `/readyz`,
//! `/metrics`), with graceful shutdown that drains in-flight requests.

use crate::config::Config;
use crate::gateway::{Gateway, GatewayError};
use axum::body::Body;
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;

/// The process-wide Prometheus recorder (installed once, shared by every server).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle())
        })
        .clone()
}

/// A bound, not yet running, gateway.
pub struct Server {
    gateway: Arc<Gateway>,
    public: TcpListener,
    admin: TcpListener,
    grace: Duration,
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
        let _ = metrics_handle();
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

    /// The gateway (for reloads).
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests
    /// finish (up to the grace period) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), GatewayError> {
        let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
        let draining = self.draining.clone();
        let handle = metrics_handle();
        let gw = self.gateway.clone();
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
            .route("/metrics", get(move || std::future::ready(handle.render())));
        let mut admin_rx = admin_stopped.clone();
        let admin_task = tokio::spawn(async move {
            let _ = axum::serve(self.admin, admin_app)
                .with_graceful_shutdown(async move {
                    let _ = admin_rx.wait_for(|s| *s).await;
                })
                .await;
        });

        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.public.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let gateway = self.gateway.clone();
                    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                        let gateway = gateway.clone();
                        async move { Ok::<_, Infallible>(gateway.handle(req.map(Body::new), peer).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service);
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                () = &mut shutdown => break,
            }
        }
        self.draining.store(true, Ordering::SeqCst);
        tracing::info!(
            grace_s = self.grace.as_secs_f64(),
            "shutting down: draining in-flight requests"
        );
        drop(self.public);
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all connections drained"),
            () = tokio::time::sleep(self.grace) => tracing::warn!("grace period over; closing remaining connections"),
        }
        let _ = stop_admin.send(true);
        let _ = admin_task.await;
        Ok(())
    }
}
