//! One client connection: read a request head, hand the request to the gateway, write
//! its response, and again while the connection may carry another request.
//!
//! Requests on a connection are answered in order, one at a time (pipelined requests
//! wait in the read buffer). The connection closes when the client asks for it, when a
//! request body was not read to its end, when a response cannot be framed for reuse,
//! after a malformed head (answered first, in the contract's envelope), when no complete
//! head arrives within `server.header_read_timeout` (which also ends idle kept-alive
//! connections), and, once the worker drains, after the request in flight.

use super::body::{Reader, RequestBody, READ_CHUNK};
use super::head::{self, HeadError, RequestHead};
use super::write::{self, Framing};
use crate::gateway::{Gateway, HeadRefused, Stamp};
use crate::respond::Refusal;
use axum::body::Body;
use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Response, Version};
use http_body::Body as _;
use std::future::poll_fn;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

/// Body pieces up to this size are copied behind the head (or the previous piece) so they
/// leave in one write; larger ones are written from where they are.
const COPY_MAX: usize = 16 * 1024;
/// Buffered output is written out once it reaches this size.
const FLUSH_AT: usize = 64 * 1024;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The write side of a connection, shared with a request body that may owe the client a
/// `100 Continue`.
#[derive(Debug)]
pub(super) struct Sender {
    half: OwnedWriteHalf,
    /// Set once the final response has begun: a `100 Continue` is never sent after it.
    responding: AtomicBool,
    /// How much of `100 Continue` has been written.
    continued: AtomicUsize,
    /// The longest wait for the client to take more of a response
    /// (`server.response_write_timeout`).
    write_timeout: Duration,
    /// Whether a response waits for the end of the worker's round before it is written
    /// (`server.batch_response_writes`, see [`after_round`]).
    batch: bool,
}

impl Sender {
    /// Writes `100 Continue` unless the final response has begun.
    pub(super) fn poll_continue(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            let done = self.continued.load(Ordering::Acquire);
            if done >= CONTINUE.len() || self.responding.load(Ordering::Acquire) {
                return Poll::Ready(Ok(()));
            }
            match self.half.try_write(&CONTINUE[done..]) {
                Ok(n) => {
                    self.continued.fetch_add(n, Ordering::AcqRel);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::task::ready!(self.half.as_ref().poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes all of `first` then all of `second`; `Ok(true)` if it had to wait for room.
    ///
    /// One slice (the common case: a whole small response in one buffer) goes out with
    /// `send`, two with `writev`: the kernel's `writev` first copies in and checks the
    /// vector, about 60-90 ns more per call on loopback (`docs/benchmarks-history.md`,
    /// session 22).
    async fn write_all(&self, mut first: &[u8], mut second: &[u8]) -> std::io::Result<bool> {
        let mut waited = false;
        while !first.is_empty() || !second.is_empty() {
            let written = if second.is_empty() {
                self.half.try_write(first)
            } else if first.is_empty() {
                self.half.try_write(second)
            } else {
                self.half
                    .try_write_vectored(&[IoSlice::new(first), IoSlice::new(second)])
            };
            match written {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(mut n) => {
                    let a = n.min(first.len());
                    first = &first[a..];
                    n -= a;
                    second = &second[n..];
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    waited = true;
                    // Only a full socket arms the timer: a response that leaves at once
                    // costs no timer.
                    match tokio::time::timeout(self.write_timeout, self.half.writable()).await {
                        Ok(ready) => ready?,
                        Err(_) => {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                format!(
                                    "the client took no bytes of its response for {:?} \
                                     (server.response_write_timeout)",
                                    self.write_timeout
                                ),
                            ))
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(waited)
    }
}

/// What a connection needs besides its socket.
#[derive(Clone)]
pub struct Settings {
    /// The gateway that answers requests.
    pub gateway: Arc<Gateway>,
    /// The longest wait for a complete request head (`server.header_read_timeout`).
    pub header_timeout: Duration,
    /// The longest the client may take no bytes of a response weir is sending
    /// (`server.response_write_timeout`).
    pub write_timeout: Duration,
    /// Whether responses are written at the end of the worker's round of ready work
    /// (`server.batch_response_writes`, see [`after_round`]).
    pub batch_writes: bool,
    /// Becomes `true` when the worker drains; the worker waits for every clone to drop.
    pub drain: watch::Receiver<bool>,
    /// Notified (`notify_waiters`) when the worker drains, to end idle connections at once.
    pub wake: Arc<Notify>,
}

/// Serves one client connection until it closes (see the module docs).
pub async fn serve(stream: TcpStream, peer: SocketAddr, settings: Settings) {
    let Settings {
        gateway,
        header_timeout,
        write_timeout,
        batch_writes,
        drain,
        wake,
    } = settings;
    // Registered once for the connection's life (not once per request), so that waiting for
    // a head costs no registration.
    let mut woken = pin!(wake.notified());
    woken.as_mut().enable();
    let (read, write) = stream.into_split();
    let sender = Arc::new(Sender {
        half: write,
        responding: AtomicBool::new(false),
        continued: AtomicUsize::new(0),
        write_timeout,
        batch: batch_writes,
    });
    // Lent to a request body while it is read; `None` after a body that was not read to
    // its end, and then the connection closes after the response.
    let mut reader = Some(Reader {
        half: read,
        buf: BytesMut::with_capacity(READ_CHUNK),
    });
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    // One timer for the connection's life, moved only when it fires early (see
    // `read_head`), instead of re-armed for every request.
    let mut timer = pin!(tokio::time::sleep(header_timeout));
    // When the connection became free for its next request: the head must be complete
    // within `header_timeout` of it.
    let mut free_since = Instant::now();
    // The slot each request's limiter decision is made in, reused request after request:
    // the decision is filled where the response's fields are written from.
    let mut decision = None;
    // The key this connection presented last: not looked up again while it is the same.
    let mut last_key = crate::identity::LastKey::default();
    loop {
        let Some(r) = reader.as_mut() else {
            return;
        };
        let deadline = free_since + header_timeout;
        let head = match read_head(r, timer.as_mut(), deadline, &drain, woken.as_mut()).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(Failed::Io(e)) => {
                tracing::debug!(error = %e, "connection ended with an error");
                return;
            }
            Err(Failed::Head(e)) => {
                tracing::debug!(error = %e, "malformed request head");
                let _ = refuse(&sender, &mut out, &gateway, e, peer).await;
                return;
            }
        };
        sender.responding.store(false, Ordering::Release);
        sender.continued.store(0, Ordering::Release);
        let Some(Incoming {
            request,
            method,
            version,
            keep_alive,
            back,
        }) = incoming(head, &mut reader, &sender)
        else {
            return;
        };
        let (response, stamp) = gateway
            .answer(request, peer, &mut decision, &mut last_key)
            .await;
        sender.responding.store(true, Ordering::Release);
        // The reader comes back only if the body was read to its end.
        let mut reusable = keep_alive;
        if let Some(mut rx) = back {
            match rx.try_recv() {
                Ok(r) => reader = Some(r),
                Err(_) => reusable = false,
            }
        }
        let draining = drain.has_changed().unwrap_or(true);
        match respond_with(
            &sender,
            &mut out,
            response,
            &stamp,
            &method,
            version,
            !reusable || draining,
        )
        .await
        {
            Ok(Sent {
                reusable: true,
                at_once,
            }) => {
                // Sent without waiting, the response left within the CPU time of writing
                // it after it was answered: that moment serves, with no clock reading.
                free_since = if at_once {
                    Instant::from_std(stamp.answered_at())
                } else {
                    Instant::now()
                };
            }
            Ok(_) => return,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                // The access log already has the request's line: this says why the
                // response it records did not reach the client whole.
                tracing::info!(request_id = %stamp.request_id(), error = %e, "client stopped reading; connection closed");
                metrics::counter!("weir_client_write_timeouts_total").increment(1);
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "writing a response failed");
                return;
            }
        }
    }
}

/// A request ready for the gateway, and what the connection keeps of its head.
struct Incoming {
    request: http::Request<Body>,
    method: Method,
    version: Version,
    keep_alive: bool,
    /// Where the reader comes back once a request body has been read to its end.
    back: Option<oneshot::Receiver<Reader>>,
}

/// Makes `head` a request, lending it the reader if a body follows (`None`: no reader, a
/// body before it was not read to its end). Not part of `serve`'s future: the head's
/// parts, borrowed here, would otherwise keep their room in every connection's state
/// while the request is answered.
fn incoming(
    head: RequestHead,
    reader: &mut Option<Reader>,
    sender: &Arc<Sender>,
) -> Option<Incoming> {
    let RequestHead {
        parts,
        framing,
        keep_alive,
        expect_continue,
    } = head;
    let (method, version) = (parts.method.clone(), parts.version);
    let (body, back) = if framing == head::Framing::Empty {
        (Body::empty(), None)
    } else {
        let (tx, rx) = oneshot::channel();
        let lent = reader.take()?;
        let continue_to = expect_continue.then(|| sender.clone());
        (
            Body::new(RequestBody::new(lent, framing, tx, continue_to)),
            Some(rx),
        )
    };
    Some(Incoming {
        request: http::Request::from_parts(parts, body),
        method,
        version,
        keep_alive,
        back,
    })
}

enum Failed {
    Io(std::io::Error),
    Head(HeadError),
}

/// Reads until a whole request head is in the buffer (`Ok(None)`: the connection is over —
/// the client closed it, it timed out, or the worker drains while it is idle).
async fn read_head(
    reader: &mut Reader,
    mut timer: std::pin::Pin<&mut tokio::time::Sleep>,
    deadline: Instant,
    drain: &watch::Receiver<bool>,
    mut woken: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
) -> Result<Option<RequestHead>, Failed> {
    // How much of the buffer an earlier attempt found no whole head in: after the first
    // attempt, the head is parsed again only once the bytes since could end it, so a client
    // that sends its head a byte at a time costs linear work, not a parse per byte.
    let mut tried: Option<usize> = None;
    loop {
        let worth_parsing = match tried {
            None => !reader.buf.is_empty(),
            Some(seen) => head::may_end(&reader.buf, seen),
        };
        if worth_parsing {
            if let Some(head) = head::parse(&mut reader.buf).map_err(Failed::Head)? {
                return Ok(Some(head));
            }
            tried = Some(reader.buf.len());
        }
        let idle = reader.buf.is_empty();
        if idle && drain.has_changed().unwrap_or(true) {
            return Ok(None);
        }
        let step = tokio::select! {
            biased;
            read = poll_fn(|cx| reader.poll_fill(cx)) => Some(read),
            () = timer.as_mut() => None,
            () = woken.as_mut(), if idle => return Ok(None),
        };
        match step {
            Some(Ok(0)) => return Ok(None),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(Failed::Io(e)),
            None if Instant::now() >= deadline => {
                tracing::debug!("no complete request head in time; connection closed");
                return Ok(None);
            }
            // The timer was set for an earlier wait that ended in time: move it to this one.
            None => timer.as_mut().reset(deadline),
        }
    }
}

/// Answers a head that cannot be served, in the contract's envelope, counted and stamped
/// like any other answer (see [`HeadRefused`]).
async fn refuse(
    sender: &Sender,
    out: &mut Vec<u8>,
    gateway: &Gateway,
    e: HeadError,
    peer: SocketAddr,
) -> std::io::Result<Sent> {
    let refusal = Refusal::code("REQUEST_MALFORMED")
        .status(e.status())
        .message(e.to_string());
    let (mut decision, mut last_key) = (None, crate::identity::LastKey::default());
    let (response, stamp) = gateway
        .answer(
            HeadRefused(refusal).into_request(),
            peer,
            &mut decision,
            &mut last_key,
        )
        .await;
    respond_with(
        sender,
        out,
        response,
        &stamp,
        &Method::GET,
        Version::HTTP_11,
        true,
    )
    .await
}

/// How a response went out.
struct Sent {
    /// The connection may carry another request.
    reusable: bool,
    /// Nothing waited: no body part was awaited and the socket always had room.
    at_once: bool,
}

/// Writes a response.
async fn respond_with(
    sender: &Sender,
    out: &mut Vec<u8>,
    response: Response<Body>,
    stamp: &Stamp<'_>,
    method: &Method,
    version: Version,
    mut close: bool,
) -> std::io::Result<Sent> {
    after_round(sender.batch).await;
    let (parts, body) = response.into_parts();
    let framing = Framing::decide(
        method,
        version,
        parts.status,
        &parts.headers,
        body.size_hint().exact(),
    );
    out.clear();
    close = write::head(
        out,
        version,
        parts.status,
        &parts.headers,
        Some(stamp),
        framing,
        close,
    );
    // The head is written: the field map goes back for the next exchange of this thread.
    crate::wire::recycle(parts.headers);
    if let Framing::Bodiless(_) = framing {
        // Nothing to send: the body is not even polled.
        let waited = sender.write_all(out, &[]).await?;
        return Ok(Sent {
            reusable: !close,
            at_once: !waited,
        });
    }
    let limit = framing.limit();
    let mut body = pin!(body);
    let mut sent: u64 = 0;
    let mut waited = false;
    let complete = loop {
        let step = poll_fn(|cx| match body.as_mut().poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
            // Nothing more yet: what is buffered goes out first.
            Poll::Pending if !out.is_empty() => Poll::Ready(None),
            Poll::Pending => {
                waited = true;
                Poll::Pending
            }
        })
        .await;
        let frame = match step {
            None => {
                sender.write_all(out, &[]).await?;
                out.clear();
                waited = true;
                continue;
            }
            Some(None) => break true,
            Some(Some(Err(e))) => {
                tracing::debug!(error = %e, "response body failed; connection closed");
                break false;
            }
            Some(Some(Ok(frame))) => frame,
        };
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if let Some(limit) = limit {
            let room = limit - sent;
            if data.len() as u64 > room {
                // More than the framing announced: what fits is sent, then the connection
                // closes.
                data.truncate(usize::try_from(room).unwrap_or(usize::MAX));
                sent = limit;
                waited |= push(sender, out, framing, data).await?;
                break false;
            }
        }
        sent += data.len() as u64;
        waited |= push(sender, out, framing, data).await?;
    };
    if complete && framing == Framing::Chunked {
        out.extend_from_slice(crate::wire::LAST_CHUNK);
    }
    // A body that ended short of its announced length cannot be completed: the client
    // learns it from the closed connection.
    let whole = complete && framing.limit().is_none_or(|l| l == sent);
    waited |= sender.write_all(out, &[]).await?;
    out.clear();
    Ok(Sent {
        reusable: whole && !close && framing != Framing::UntilClose,
        at_once: !waited,
    })
}

/// With `batch`, waits until every other task ready on this worker's thread has run and its
/// I/O driver has been polled (tokio's `yield_now` defers the task's wake-up to then);
/// otherwise returns at once.
///
/// Why: writing a response wakes the client's process, and on a busy machine the woken
/// process often takes the worker's CPU at once (the kernel's wake-up preemption), before
/// the worker has served the other connections that are ready. Writing at the end of the
/// round lets the worker finish what it can do first and the client wake to a batch of
/// responses: on the 2-core benchmark, fewer involuntary context switches per request
/// (about 0.40 against 0.46) and 1–3.9% more requests per second in A/B runs
/// (`docs/benchmarks-history.md`, sessions 19 and 20). The cost is a response's wait for
/// the rest of the round, which tokio bounds at 61 task polls between two polls of the
/// driver; when the worker has nothing else to do, one extra non-blocking poll of the
/// driver.
async fn after_round(batch: bool) {
    if batch {
        tokio::task::yield_now().await;
    }
}

/// Queues (or, if large, writes) one piece of body in the response's framing; `Ok(true)`
/// if a write had to wait for room.
async fn push(
    sender: &Sender,
    out: &mut Vec<u8>,
    framing: Framing,
    data: Bytes,
) -> std::io::Result<bool> {
    let mut waited = false;
    if framing == Framing::Chunked {
        crate::wire::chunk_start(out, data.len());
    }
    if data.len() <= COPY_MAX {
        out.extend_from_slice(&data);
    } else {
        waited |= sender.write_all(out, data.chunk()).await?;
        out.clear();
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(crate::wire::CHUNK_END);
    }
    if out.len() >= FLUSH_AT {
        waited |= sender.write_all(out, &[]).await?;
        out.clear();
    }
    Ok(waited)
}

#[cfg(test)]
mod tests {
    use super::after_round;
    use std::sync::{Arc, Mutex};

    /// The order in which two tasks, spawned one after the other on one worker thread,
    /// reach their marks when the first waits with `after_round(batch)`.
    fn order(batch: bool) -> Vec<&'static str> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        let seen = Arc::new(Mutex::new(Vec::new()));
        rt.block_on(async {
            let (a, b) = (seen.clone(), seen.clone());
            let first = tokio::spawn(async move {
                after_round(batch).await;
                a.lock().expect("not poisoned").push("response written");
            });
            let second = tokio::spawn(async move {
                b.lock().expect("not poisoned").push("other ready work");
            });
            let _ = (first.await, second.await);
        });
        let v = seen.lock().expect("not poisoned").clone();
        v
    }

    #[test]
    fn a_batched_response_waits_for_the_rest_of_the_round() {
        assert_eq!(order(true), ["other ready work", "response written"]);
    }

    #[test]
    fn an_unbatched_response_is_written_at_once() {
        assert_eq!(order(false), ["response written", "other ready work"]);
    }
}
