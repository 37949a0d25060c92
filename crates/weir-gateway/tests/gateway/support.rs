//! A real gateway on 127.0.0.1:0 in front of the built-in demo upstream, and a client.

use std::net::SocketAddr;
use std::sync::Arc;
use weir_gateway::{Config, Gateway, Server};

pub struct Running {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub balancer: Arc<weir_gateway::balance::Balancer>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("send /metrics")
            .text()
            .await
            .expect("/metrics text")
    }

    /// Asks the server to shut down (drain) and waits until it has.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Triggers shutdown without waiting.
    pub fn begin_stop(&mut self) -> tokio::task::JoinHandle<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.take().unwrap_or_else(|| tokio::spawn(async {}))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn temp_db(name: &str) -> String {
    let p = std::env::temp_dir().join(format!(
        "weir-gw-{}-{name}-{}.redb",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    p.to_string_lossy().into_owned()
}

/// Keys, plans and the demo upstream; `extra` adds routes/limits/keys/upstreams.
pub fn config(extra: &str, idem_db: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
dialect = "detail"
shutdown_grace = "5s"

[idempotency]
path = "{idem_db}"
ttl = "24h"

[upstreams.demo]
url = "builtin:demo"
timeout = "5s"

[[keys]]
id = "k-free"
key = "free-secret"
user = "u-free"
organisation = "org-free"
plan = "free"
scopes = ["documents:write"]

[[keys]]
id = "k-free-2"
key = "free-secret-2"
user = "u-free-2"
organisation = "org-free"
plan = "free"

[[keys]]
id = "k-pro"
hash = "{pro_hash}"
user = "u-pro"
organisation = "org-pro"
plan = "pro"
scopes = ["documents:write"]

[[keys]]
id = "k-old"
key = "old-secret"
user = "u-old"
organisation = "org-old"
plan = "free"
expires = "2020-01-01T00:00:00Z"

{extra}
"#,
        pro_hash = weir_gateway::identity::KeyHash::of("pro-secret").to_config_string()
    )
}

/// `toml` with `line` added to its `[server]` section.
pub fn with_server(toml: &str, line: &str) -> String {
    toml.replacen("[server]\n", &format!("[server]\n{line}\n"), 1)
}

pub async fn start(toml: &str) -> Running {
    let config = Config::parse(toml).unwrap_or_else(|e| panic!("test config: {e}"));
    start_config(config).await
}

pub async fn start_config(config: Config) -> Running {
    let server = Server::bind(config, None, None).await.expect("bind");
    let (addr, admin, gateway) = (server.local_addr(), server.admin_addr(), server.gateway());
    let balancer = server.balancer();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = server
            .run(async move {
                let _ = rx.await;
            })
            .await;
    });
    Running {
        addr,
        admin,
        gateway,
        balancer,
        stop: Some(tx),
        task: Some(task),
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(4)
        .build()
        .expect("client")
}

pub async fn json(resp: reqwest::Response) -> serde_json::Value {
    let text = resp.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

/// A port on 127.0.0.1 that refuses connections for as long as the socket lives: bound but
/// never listening. (A listener bound and dropped frees its port, which another test of this
/// process may then take, turning "refused" into "accepted and silent".)
pub fn refusing_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let port = socket.local_addr().expect("addr").port();
    (socket, port)
}
