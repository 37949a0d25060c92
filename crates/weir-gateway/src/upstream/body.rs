//! A response body read from an upstream connection as the caller asks for it, which puts
//! the connection back in its pool once the body has been read to the end.

use super::codec::{ChunkedDecoder, Framing, ProtocolError};
use super::{reserve, BodyError, Conn, Home};
use crate::wire::Remaining;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

/// A streaming response body (see the module docs).
#[derive(Debug)]
pub(super) struct UpstreamBody {
    /// `None` once the body is over (the connection went home or was closed).
    conn: Option<Conn>,
    left: Remaining,
    /// Where the connection goes when the body is over, if it may be reused.
    home: Option<Home>,
    /// The longest pause allowed between two parts of the body.
    stall: Option<Duration>,
    /// Armed while the body waits for the upstream (allocated on the first wait only).
    waiting: Option<(Pin<Box<tokio::time::Sleep>>, bool)>,
}

impl UpstreamBody {
    pub(super) fn new(
        conn: Conn,
        framing: Framing,
        home: Option<Home>,
        stall: Option<Duration>,
    ) -> UpstreamBody {
        let left = match framing {
            Framing::Empty => Remaining::Done,
            Framing::Length(n) => Remaining::Length(n),
            Framing::Chunked => Remaining::Chunked(ChunkedDecoder::default()),
            Framing::UntilClose => Remaining::UntilClose,
        };
        UpstreamBody {
            conn: Some(conn),
            left,
            home,
            stall,
            waiting: None,
        }
    }

    /// The body is over: the connection goes home if it may be reused.
    fn finish(&mut self) {
        self.left = Remaining::Done;
        if let (Some(conn), Some(home)) = (self.conn.take(), self.home.take()) {
            home.put_back(conn, std::time::Instant::now());
        }
    }

    /// The body failed: the connection is closed.
    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.left = Remaining::Done;
        self.conn = None;
        self.home = None;
        Poll::Ready(Some(Err(e)))
    }

    /// The next piece of body from what has been read, if there is one.
    fn next_buffered(&mut self) -> Result<Option<Option<Bytes>>, ProtocolError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Some(None));
        };
        let Some(data) = self.left.next(&mut conn.read)? else {
            return Ok(None);
        };
        if data.is_none() || self.left.is_over() {
            self.finish();
        }
        Ok(Some(data))
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        loop {
            match this.next_buffered() {
                Err(e) => return this.fail(e.into()),
                Ok(Some(Some(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Some(None)) => return Poll::Ready(None),
                Ok(None) => {}
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            reserve(&mut conn.read);
            let read =
                tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.read);
            let n = match read {
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
                    ready!(std::future::Future::poll(sleep.as_mut(), cx));
                    return this.fail(BodyError::Stalled(stall));
                }
                Poll::Ready(Err(e)) => return this.fail(BodyError::Io(e)),
                Poll::Ready(Ok(n)) => n,
            };
            if let Some((_, armed)) = &mut this.waiting {
                *armed = false;
            }
            if n == 0 {
                // The upstream closed: the end of a close-delimited body, else too early.
                if matches!(this.left, Remaining::UntilClose) {
                    this.home = None;
                    this.finish();
                    return Poll::Ready(None);
                }
                return this.fail(ProtocolError::Incomplete.into());
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left.is_over()
    }

    fn size_hint(&self) -> SizeHint {
        self.left.size_hint()
    }
}
