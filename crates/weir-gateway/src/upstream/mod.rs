//! Keep-alive HTTP/1.1 connections to upstreams, one pool per worker thread.
//!
//! The client side of the proxy is weir's own small HTTP/1.1 client: [`codec`] frames the
//! messages (parsing with `httparse`, hyper's parser) and [`body`] streams response bodies.
//! hyper's connection-level client, used before, runs every upstream connection as a task
//! of its own and passes each request, response and body chunk through channels to it; in
//! profiles that hand-off cost about a sixth of the proxy's CPU per request. Here the
//! request's own task writes the request and reads the response, and a response whose body
//! arrived with its head (the common case for API calls) goes back to its caller as one
//! buffer, its connection already back in the pool.
//!
//! Each worker owns its pool (the lock is never contended) and checks out the most recently
//! used connection first (the one most likely still open and in cache). A connection goes
//! back only when its response was read to the end, allows reuse, and left no stray bytes;
//! a body dropped half-way leaves its connection unusable, so it is closed instead.
//!
//! A pooled connection the upstream has meanwhile closed is noticed before the request is
//! written (its socket turns readable) and skipped; a request that was written is never
//! sent twice.
//!
//! An upstream that stops sending its response body part-way would hold the client's
//! connection forever: [`UpstreamPool::send_bounded`] ends such a body with an error once
//! it pauses for longer than a bound. The timer is armed only while the body actually
//! waits, so a body that arrives with its head costs no timer at all.
//!
//! Not supported: `https://` upstreams, protocol upgrades (a 101 is a typed error), and
//! response trailers (read and discarded).

mod body;
pub mod codec;

use axum::body::Body;
use body::UpstreamBody;
use bytes::{Bytes, BytesMut};
pub use codec::{FieldLines, PassedFields, Rewrite};
use codec::{Framing, Parsed, ProtocolError, RequestFraming};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per upstream, per worker.
pub const MAX_IDLE: usize = 256;
/// How long a new connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Request body bytes gathered into one write before they are sent.
const WRITE_BATCH: usize = 64 * 1024;

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
    /// Writing the request failed.
    #[error("sending the request: {0}")]
    Write(std::io::Error),
    /// The request body (from the client) failed or did not match its length.
    #[error("the request body failed: {0}")]
    RequestBody(String),
    /// Reading the response failed.
    #[error("reading the response: {0}")]
    Read(std::io::Error),
    /// The upstream closed the connection without answering.
    #[error("the upstream closed the connection without answering")]
    Closed,
    /// The upstream's answer is not valid HTTP/1.1.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Why a response body from an upstream ended early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// Reading from the connection failed part-way.
    #[error("reading the response body: {0}")]
    Io(std::io::Error),
    /// The body is malformed or ended before its end.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The upstream paused longer than allowed between two parts of the body.
    #[error("the upstream paused its response body for more than {0:?}")]
    Stalled(Duration),
}

/// One open connection to an upstream, with what has been read from it but not used.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    read: BytesMut,
    write: Vec<u8>,
}

impl Conn {
    /// Whether the upstream has sent nothing (no close, no stray bytes) since the last
    /// response. tokio clears a socket's readiness when a read leaves it empty, so for a
    /// quiet connection this costs no system call.
    fn is_quiet(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(
                self.stream.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Reads what has arrived into the read buffer (0: the upstream closed).
    async fn fill(&mut self) -> std::io::Result<usize> {
        reserve(&mut self.read);
        self.stream.read_buf(&mut self.read).await
    }
}

/// Room for the next read: at least 8 KiB, growing to 64 KiB for large bodies.
fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(if buf.capacity() >= 32 * 1024 {
            64 * 1024
        } else {
            8192
        });
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Idle connections per upstream (few upstreams: a list beats hashing the authority):
/// used last-in first-out, expired from the front.
type Shelves = Mutex<Vec<(Authority, VecDeque<Idle>)>>;

/// Where a connection goes back once its response has been read.
#[derive(Debug, Clone)]
struct Home {
    shelves: Weak<Shelves>,
    authority: Authority,
    idle_timeout: Duration,
}

impl Home {
    /// Shelves `conn` (see [`shelve`]) if the pool still exists.
    fn put_back(&self, conn: Conn, now: Instant) {
        if let Some(shelves) = self.shelves.upgrade() {
            shelve(&shelves, &self.authority, self.idle_timeout, conn, now);
        }
    }
}

/// Shelves `conn` for the next request to `authority`, dropping expired connections from
/// the front; a connection holding bytes nobody asked for (the upstream sent more than its
/// response) is closed instead.
///
/// `now` may be any instant since the response began: an earlier one only makes the
/// connection expire sooner, never later than the upstream's own idle timeout, which starts
/// when the upstream answered.
fn shelve(
    shelves: &Shelves,
    authority: &Authority,
    idle_timeout: Duration,
    conn: Conn,
    now: Instant,
) {
    if !conn.read.is_empty() {
        return;
    }
    let mut shelves = shelves.lock();
    let i = match shelves.iter().position(|(a, _)| a == authority) {
        Some(i) => i,
        None => {
            shelves.push((authority.clone(), VecDeque::new()));
            shelves.len() - 1
        }
    };
    let shelf = &mut shelves[i].1;
    while shelf
        .front()
        .is_some_and(|i| now.duration_since(i.since) >= idle_timeout)
    {
        shelf.pop_front();
    }
    if shelf.len() < MAX_IDLE {
        shelf.push_back(Idle { conn, since: now });
    }
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle")
            .field("since", &self.since)
            .finish_non_exhaustive()
    }
}

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
    pub fn send(
        &self,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, UpstreamError>> + '_ {
        let now = Instant::now();
        async move {
            let (mut parts, body) = req.into_parts();
            let (response, _) = self
                .send_inner(&mut parts, None, body, &Rewrite::NONE, None, now, false)
                .await?;
            Ok(response)
        }
    }

    /// As [`send`](Self::send), and the body ends with [`BodyError::Stalled`] (closing the
    /// connection) once the upstream pauses longer than `body_stall` between two parts.
    pub fn send_bounded(
        &self,
        req: Request<Body>,
        body_stall: Duration,
    ) -> impl Future<Output = Result<Response<Body>, UpstreamError>> + '_ {
        let now = Instant::now();
        async move {
            let (mut parts, body) = req.into_parts();
            let (response, _) = self
                .send_inner(
                    &mut parts,
                    None,
                    body,
                    &Rewrite::NONE,
                    Some(body_stall),
                    now,
                    false,
                )
                .await?;
            Ok(response)
        }
    }

    /// As [`send_bounded`](Self::send_bounded), for the request `parts` with `body`, with
    /// `rewrite` applied to the request's fields as they are written. `now` is a clock
    /// reading the caller took as the exchange began: the pool judges idle connections by
    /// it instead of reading the clock again. The request's head is borrowed, not taken: a
    /// proxy's request head (224 bytes) is then not moved into another request and another
    /// future on its way out; its fields are taken (the map is reused for a later head).
    ///
    /// `to` names the upstream (an `http` one) when `parts.uri` is the client's own target
    /// (its path and query are sent as they are): a proxy then builds no URI per request.
    /// Without it, `parts.uri` is the upstream's absolute URI.
    ///
    /// The response's end-to-end fields come back as received, beside it (its map lacks
    /// them, see [`codec::parse_head_passing`]): a proxy that passes them on writes them as
    /// they are, and types them only if it reads them.
    // Not `async` itself: this returns `send_inner`'s future as it is, so a request does
    // not pay for copying one future into another (futures are moved by value).
    pub fn send_rewritten<'a>(
        &'a self,
        parts: &'a mut http::request::Parts,
        to: Option<&'a Authority>,
        body: Body,
        rewrite: &'a Rewrite<'a>,
        body_stall: Duration,
        now: Instant,
    ) -> impl Future<Output = Result<(Response<Body>, Option<PassedFields>), UpstreamError>> + 'a
    {
        self.send_inner(parts, to, body, rewrite, Some(body_stall), now, true)
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_inner(
        &self,
        parts: &mut http::request::Parts,
        to: Option<&Authority>,
        body: Body,
        rewrite: &Rewrite<'_>,
        stall: Option<Duration>,
        now: Instant,
        pass: bool,
    ) -> Result<(Response<Body>, Option<PassedFields>), UpstreamError> {
        // Borrowed: a pooled exchange whose response comes whole needs no copy of it.
        let authority = match (to, parts.uri.scheme(), parts.uri.authority()) {
            (Some(a), _, _) => a,
            (None, Some(s), Some(a)) if *s == Scheme::HTTP => a,
            _ => return Err(UpstreamError::Unsupported(parts.uri.to_string())),
        };
        // HTTP/1.1 to an origin: origin-form target and a Host field.
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let framing = if body.is_end_stream() {
            match parts.method {
                Method::POST | Method::PUT | Method::PATCH => RequestFraming::Length(0),
                _ => RequestFraming::None,
            }
        } else {
            body.size_hint()
                .exact()
                .map_or(RequestFraming::Chunked, RequestFraming::Length)
        };
        let mut conn = match self.checkout(authority, now) {
            Some(conn) => conn,
            // Boxed, as is a body to stream: neither is on the common path, and the
            // request's future stays small without them.
            None => Box::pin(connect(authority)).await?,
        };
        conn.write.clear();
        codec::write_request_head(
            &mut conn.write,
            &parts.method,
            target,
            authority.as_str(),
            &parts.headers,
            rewrite,
            framing,
        );
        // The head is written: the field map goes back for the next exchange of this thread.
        crate::wire::recycle(std::mem::take(&mut parts.headers));
        match framing {
            RequestFraming::None | RequestFraming::Length(0) => flush(&mut conn).await?,
            _ => Box::pin(write_body(&mut conn, body, framing)).await?,
        }
        // As on the server side: after a first attempt, the head is parsed again only once
        // the newly arrived bytes could end it (`wire::may_end`), so an upstream sending its
        // head a byte at a time costs linear work.
        let mut tried: Option<usize> = None;
        let head = loop {
            let worth_parsing = match tried {
                // The first attempt is made as soon as there are bytes, so a malformed
                // start is refused at once.
                None => !conn.read.is_empty(),
                Some(seen) => crate::wire::may_end(&conn.read, seen),
            };
            if worth_parsing {
                let parsed = if pass {
                    codec::parse_head_passing(&mut conn.read, &parts.method)?
                } else {
                    codec::parse_head(&mut conn.read, &parts.method)?
                };
                match parsed {
                    Parsed::Final(head) => break head,
                    // Consumed: what is left is the start of another head.
                    Parsed::Interim => {
                        tried = None;
                        continue;
                    }
                    Parsed::Partial => tried = Some(conn.read.len()),
                }
            }
            let nothing_yet = conn.read.is_empty();
            match conn.fill().await {
                Ok(0) if nothing_yet => return Err(UpstreamError::Closed),
                Ok(0) => return Err(ProtocolError::Incomplete.into()),
                Ok(_) => {}
                Err(e) => return Err(UpstreamError::Read(e)),
            }
        };
        let (response, ()) = head.response.into_parts();
        let shelve_now = |conn| shelve(&self.idle, authority, self.idle_timeout, conn, now);
        let body = match head.framing {
            Framing::Empty => {
                if head.keep_alive {
                    shelve_now(conn);
                }
                Body::empty()
            }
            Framing::Length(n) if conn.read.len() as u64 >= n => {
                // The whole body came with the head: one buffer, the connection free now.
                let whole: Bytes = conn.read.split_to(n as usize).freeze();
                if head.keep_alive {
                    shelve_now(conn);
                }
                Body::from(whole)
            }
            // The body is still to come: the connection goes home when it ends, if the pool
            // is still there then.
            framing => Body::new(UpstreamBody::new(
                conn,
                framing,
                head.keep_alive.then(|| Home {
                    shelves: Arc::downgrade(&self.idle),
                    authority: authority.clone(),
                    idle_timeout: self.idle_timeout,
                }),
                stall,
            )),
        };
        Ok((Response::from_parts(response, body), head.passed))
    }

    /// Idle connections to `authority` that are still open.
    pub fn idle_connections(&self, authority: &Authority) -> usize {
        let shelves = self.idle.lock();
        shelves
            .iter()
            .filter(|(a, _)| a == authority)
            .flat_map(|(_, s)| s.iter())
            .filter(|i| i.conn.is_quiet())
            .count()
    }

    /// The most recently returned live connection to `authority`, if any, judged idle at
    /// `now`.
    fn checkout(&self, authority: &Authority, now: Instant) -> Option<Conn> {
        let mut shelves = self.idle.lock();
        let shelf = &mut shelves.iter_mut().find(|(a, _)| a == authority)?.1;
        while let Some(idle) = shelf.pop_back() {
            if now.duration_since(idle.since) < self.idle_timeout && idle.conn.is_quiet() {
                return Some(idle.conn);
            }
        }
        None
    }
}

/// Writes the head already in `conn.write`, then the body: small bodies that are ready go
/// out with the head in one write; a body still arriving is sent as it comes.
async fn write_body(
    conn: &mut Conn,
    mut body: Body,
    framing: RequestFraming,
) -> Result<(), UpstreamError> {
    let chunked = framing == RequestFraming::Chunked;
    let mut sent: u64 = 0;
    {
        loop {
            // What is ready now is batched; before waiting for more, what is batched goes.
            let ready = std::future::poll_fn(|cx| {
                Poll::Ready(match std::pin::Pin::new(&mut body).poll_frame(cx) {
                    Poll::Pending => None,
                    Poll::Ready(frame) => Some(frame),
                })
            })
            .await;
            let frame = match ready {
                Some(frame) => frame,
                None => {
                    flush(conn).await?;
                    body.frame().await
                }
            };
            let data = match frame {
                None => break,
                Some(Err(e)) => return Err(UpstreamError::RequestBody(e.to_string())),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue, // trailers are not forwarded
                },
            };
            if data.is_empty() {
                continue;
            }
            sent += data.len() as u64;
            if let RequestFraming::Length(n) = framing {
                if sent > n {
                    return Err(UpstreamError::RequestBody(format!(
                        "the body is longer than its {n} bytes"
                    )));
                }
            }
            if chunked {
                crate::wire::chunk_start(&mut conn.write, data.len());
            }
            if conn.write.len() + data.len() <= WRITE_BATCH {
                conn.write.extend_from_slice(&data);
            } else {
                flush(conn).await?;
                conn.stream
                    .write_all(&data)
                    .await
                    .map_err(UpstreamError::Write)?;
            }
            if chunked {
                conn.write.extend_from_slice(crate::wire::CHUNK_END);
            }
            if conn.write.len() >= WRITE_BATCH {
                flush(conn).await?;
            }
        }
        if let RequestFraming::Length(n) = framing {
            if sent != n {
                return Err(UpstreamError::RequestBody(format!(
                    "the body ended after {sent} of its {n} bytes"
                )));
            }
        }
        if chunked {
            conn.write.extend_from_slice(crate::wire::LAST_CHUNK);
        }
    }
    flush(conn).await
}

async fn flush(conn: &mut Conn) -> Result<(), UpstreamError> {
    if !conn.write.is_empty() {
        conn.stream
            .write_all(&conn.write)
            .await
            .map_err(UpstreamError::Write)?;
        conn.write.clear();
    }
    Ok(())
}

async fn connect(authority: &Authority) -> Result<Conn, UpstreamError> {
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
    Ok(Conn {
        stream,
        read: BytesMut::with_capacity(8192),
        write: Vec::with_capacity(1024),
    })
}
