//! Keep-alive HTTP/1.1 connections to upstreams, one pool per worker thread.
//!
//! Built on hyper's connection-level client rather than hyper-util's pooled `Client`:
//! that one shares its pool behind a lock, wraps every checkout in several futures and
//! channels, and cost about a fifth of the proxy's own CPU in profiles. Here each worker
//! owns its pool (the lock is never contended), checks out the most recently used
//! connection first (the one most likely still open and in cache), and a connection goes
//! back only when its response body has been read to the end — a body dropped half-way
//! leaves the connection unusable, so it is closed instead.
//!
//! A pooled connection the upstream has meanwhile closed is detected before the request
//! is written (hyper hands the unsent request back) and the request moves to the next
//! connection, or a new one; a request that was written is never sent twice.
//!
//! An upstream that stops sending its response body part-way would hold the client's
//! connection forever: [`UpstreamPool::send_bounded`] ends such a body with an error once
//! it pauses for longer than a bound. The timer is armed only while the body actually
//! waits, so a body that arrives with its head (the common case) costs no timer at all.

use axum::body::Body;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, Uri};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per upstream, per worker.
pub const MAX_IDLE: usize = 256;
/// How long a new connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request did not get a response from its upstream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The URI is not an `http://` URI with a host.
    #[error("cannot forward to {0}: only http:// upstreams are supported")]
    Unsupported(String),
    /// No connection could be made.
    #[error("connecting to {authority}: {source}")]
    Connect {
        /// The upstream.
        authority: String,
        /// Why.
        source: std::io::Error,
    },
    /// The connection failed before a response arrived.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// Why a response body from an upstream ended early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The connection failed part-way.
    #[error("{0}")]
    Http(#[from] hyper::Error),
    /// The upstream paused longer than allowed between two parts of the body.
    #[error("the upstream paused its response body for more than {0:?}")]
    Stalled(Duration),
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// Idle connections per upstream: used last-in first-out, expired from the front.
type Shelves = Mutex<HashMap<Authority, VecDeque<Idle>>>;

/// A pool of upstream connections (cheap to clone: clones share the pool).
#[derive(Clone)]
pub struct UpstreamPool {
    idle: Arc<Shelves>,
    idle_timeout: Duration,
}

impl Default for UpstreamPool {
    fn default() -> Self {
        UpstreamPool::with_idle_timeout(IDLE_TIMEOUT)
    }
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool").finish_non_exhaustive()
    }
}

impl UpstreamPool {
    /// An empty pool.
    pub fn new() -> UpstreamPool {
        UpstreamPool::default()
    }

    /// An empty pool keeping idle connections for `idle_timeout` (default
    /// [`IDLE_TIMEOUT`]).
    pub fn with_idle_timeout(idle_timeout: Duration) -> UpstreamPool {
        UpstreamPool {
            idle: Arc::default(),
            idle_timeout,
        }
    }

    /// Sends `req` (an absolute `http://` URI) and returns the response head with a
    /// streaming body.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Body>, UpstreamError> {
        self.send_inner(req, None).await
    }

    /// As [`send`](Self::send), and the body ends with [`BodyError::Stalled`] (closing the
    /// connection) once the upstream pauses longer than `body_stall` between two parts.
    pub async fn send_bounded(
        &self,
        req: Request<Body>,
        body_stall: Duration,
    ) -> Result<Response<Body>, UpstreamError> {
        self.send_inner(req, Some(body_stall)).await
    }

    async fn send_inner(
        &self,
        mut req: Request<Body>,
        stall: Option<Duration>,
    ) -> Result<Response<Body>, UpstreamError> {
        let uri = req.uri().clone();
        let authority = match (uri.scheme(), uri.authority()) {
            (Some(s), Some(a)) if *s == Scheme::HTTP => a.clone(),
            _ => return Err(UpstreamError::Unsupported(uri.to_string())),
        };
        // HTTP/1.1 to an origin: origin-form target and a Host header.
        let target = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(target);
        if !req.headers().contains_key(header::HOST) {
            let host = HeaderValue::from_maybe_shared(Bytes::copy_from_slice(
                authority.as_str().as_bytes(),
            ));
            if let Ok(host) = host {
                req.headers_mut().insert(header::HOST, host);
            }
        }
        while let Some(mut sender) = self.checkout(&authority) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(resp, sender, authority, stall)),
                Err(mut e) => match e.take_message() {
                    // Not written: the connection was already gone; try the next one.
                    Some(unsent) => req = unsent,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        let mut sender = connect(&authority).await?;
        let resp = sender.send_request(req).await?;
        Ok(self.wrap(resp, sender, authority, stall))
    }

    /// Idle connections to `authority` that are still open.
    pub fn idle_connections(&self, authority: &Authority) -> usize {
        let shelves = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        shelves
            .get(authority)
            .map_or(0, |s| s.iter().filter(|i| !i.sender.is_closed()).count())
    }

    /// The most recently returned live connection to `authority`, if any.
    fn checkout(&self, authority: &Authority) -> Option<SendRequest<Body>> {
        let mut shelves = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let shelf = shelves.get_mut(authority)?;
        let now = Instant::now();
        while let Some(idle) = shelf.pop_back() {
            if !idle.sender.is_closed() && now.duration_since(idle.since) < self.idle_timeout {
                return Some(idle.sender);
            }
        }
        None
    }

    fn wrap(
        &self,
        resp: Response<Incoming>,
        sender: SendRequest<Body>,
        authority: Authority,
        stall: Option<Duration>,
    ) -> Response<Body> {
        let (parts, body) = resp.into_parts();
        let body = PooledBody {
            ended: body.is_end_stream(),
            body,
            back: Some((sender, Arc::downgrade(&self.idle), authority)),
            idle_timeout: self.idle_timeout,
            stall,
            waiting: None,
        };
        Response::from_parts(parts, Body::new(body))
    }
}

async fn connect(authority: &Authority) -> Result<SendRequest<Body>, UpstreamError> {
    let failed = |source| UpstreamError::Connect {
        authority: authority.to_string(),
        source,
    };
    let addr = (authority.host(), authority.port_u16().unwrap_or(80));
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| failed(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
        .map_err(failed)?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// A response body that puts its connection back in the pool once read to the end.
struct PooledBody {
    body: Incoming,
    ended: bool,
    back: Option<(SendRequest<Body>, Weak<Shelves>, Authority)>,
    idle_timeout: Duration,
    /// The longest pause allowed between two parts of the body.
    stall: Option<Duration>,
    /// Armed while the body waits for the upstream (allocated on the first wait only).
    waiting: Option<(Pin<Box<tokio::time::Sleep>>, bool)>,
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => {
                let Some(stall) = this.stall else {
                    return Poll::Pending;
                };
                let (sleep, armed) = this
                    .waiting
                    .get_or_insert_with(|| (Box::pin(tokio::time::sleep(stall)), true));
                if !*armed {
                    sleep.as_mut().reset(tokio::time::Instant::now() + stall);
                    *armed = true;
                }
                if std::future::Future::poll(sleep.as_mut(), cx).is_pending() {
                    return Poll::Pending;
                }
                this.back = None;
                Poll::Ready(Some(Err(BodyError::Stalled(stall))))
            }
            ready => {
                if let Some((_, armed)) = &mut this.waiting {
                    *armed = false;
                }
                match &ready {
                    Poll::Ready(None) => this.ended = true,
                    Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.ended = true,
                    Poll::Ready(Some(Err(_))) => this.back = None,
                    _ => {}
                }
                ready.map(|f| f.map(|r| r.map_err(BodyError::Http)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        let Some((sender, shelves, authority)) = self.back.take() else {
            return;
        };
        if !(self.ended || self.body.is_end_stream()) || sender.is_closed() {
            return;
        }
        let Some(shelves) = shelves.upgrade() else {
            return;
        };
        let mut shelves = shelves.lock().unwrap_or_else(PoisonError::into_inner);
        let shelf = shelves.entry(authority).or_default();
        // The oldest connections are at the front: drop those past their time or closed.
        let now = Instant::now();
        while shelf.front().is_some_and(|i| {
            i.sender.is_closed() || now.duration_since(i.since) >= self.idle_timeout
        }) {
            shelf.pop_front();
        }
        if shelf.len() < MAX_IDLE {
            shelf.push_back(Idle { sender, since: now });
        }
    }
}
