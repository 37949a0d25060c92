//! `weir serve` and `weir hash-key`.

use crate::args::{HashKeyArgs, ServeArgs};
use anyhow::{Context, Result};
use std::io::Read;
use std::process::ExitCode;
use weir_gateway::identity::KeyHash;
use weir_gateway::{Config, Server};

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    // Configuration errors are reported before anything listens.
    let config = Config::load(&args.config).map_err(|e| anyhow::anyhow!("config error: {e}"))?;
    if args.check {
        println!(
            "{}: ok ({} routes, {} limits, {} keys)",
            args.config.display(),
            config.routes.len(),
            config.policy.limits.len(),
            config.keys.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    init_logging();
    raise_open_files_limit(config.max_connections);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let server = Server::bind(config, args.listen, args.admin_listen).await.context("starting the gateway")?;
        tracing::info!(listen = %server.local_addr(), admin = %server.admin_addr(), store = server.gateway().limiter().store_name(), "weir is serving");
        spawn_reloader(args.config.clone(), server.gateway());
        server.run(shutdown_signal()).await.context("serving")?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Raises the soft limit on open files to the hard limit, as Go's runtime does for every
/// server: each client connection and each pooled upstream connection is a descriptor, and
/// the usual soft limit of 1024 would stop weir at about 500 clients, far below
/// `server.max_connections`. Says so when even the hard limit is too low.
fn raise_open_files_limit(max_connections: usize) {
    // Two descriptors per connection (the client's and a pooled upstream one), plus room
    // for the listeners, the idempotency database and the Redis connections.
    let needed = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
        .saturating_add(64);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < needed => tracing::warn!(
            limit,
            needed,
            "the open-files limit is below what server.max_connections needs; raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower max_connections"
        ),
        Ok(limit) => tracing::info!(limit, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .try_init();
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// SIGHUP: re-read the file; apply it if valid, keep the running configuration if not.
fn spawn_reloader(path: std::path::PathBuf, gateway: std::sync::Arc<weir_gateway::Gateway>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            match Config::load(&path) {
                Err(e) => {
                    tracing::error!(error = %e, "reload refused: configuration invalid; still serving the previous one")
                }
                Ok(mut c) => {
                    let current = gateway.runtime();
                    c.listen = current.config.listen;
                    c.admin_listen = current.config.admin_listen;
                    match gateway.reload(c) {
                        Ok(()) => tracing::info!("configuration reloaded"),
                        Err(e) => {
                            tracing::error!(error = %e, "reload refused; still serving the previous configuration")
                        }
                    }
                }
            }
        }
    });
}

pub fn hash_key(args: HashKeyArgs) -> Result<ExitCode> {
    let key = match args.key {
        Some(k) => k,
        None => {
            let mut s = String::new();
            std::io::stdin()
                .take(4096)
                .read_to_string(&mut s)
                .context("reading the key from standard input")?;
            s.trim().to_owned()
        }
    };
    if key.is_empty() {
        anyhow::bail!("no key given");
    }
    println!("{}", KeyHash::of(&key).to_config_string());
    Ok(ExitCode::SUCCESS)
}
