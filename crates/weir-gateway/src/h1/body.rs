//! A request body read from the client's connection as the handler asks for it.
//!
//! The connection lends the body its read half and its read buffer; once the body has
//! been read to the end, both go back (with whatever follows the body, such as a
//! pipelined request), and the connection can carry another request. A body dropped
//! before its end never gives them back, so the connection closes after its response:
//! what is left of the body is never mistaken for a request.

use super::conn::Sender;
use crate::upstream::codec::ChunkedDecoder;
use crate::wire::Remaining;
use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::oneshot;

/// What went wrong reading a request body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestBodyError {
    /// The socket failed.
    #[error("reading the request body failed: {0}")]
    Io(#[from] std::io::Error),
    /// The chunked framing is malformed.
    #[error("malformed chunked request body: {0}")]
    Chunk(String),
    /// The client closed the connection before the body ended.
    #[error("the client closed the connection part-way through the request body")]
    Incomplete,
}

/// The read side of a connection: the socket half and what has been read from it but not
/// yet consumed.
#[derive(Debug)]
pub(super) struct Reader {
    pub(super) half: OwnedReadHalf,
    pub(super) buf: BytesMut,
}

impl Reader {
    /// Reads more into the buffer (`Ok(0)`: the client closed its side).
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 8 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.half), cx, &mut self.buf)
    }
}

/// How much room is made in the read buffer when it runs short.
pub(super) const READ_CHUNK: usize = 16 * 1024;

/// A streaming request body (see the module docs).
#[derive(Debug)]
pub struct RequestBody {
    /// `None` once the body is over (the reader went back, or the body failed).
    reader: Option<Reader>,
    left: Remaining,
    /// Where the reader goes once the body has been read to the end.
    back: Option<oneshot::Sender<Reader>>,
    /// Set while `100 Continue` is still owed to a client that waits for it before sending
    /// the body: written when the body is first asked for.
    continue_to: Option<Arc<Sender>>,
}

impl RequestBody {
    /// A body delimited by `framing` (never [`super::head::Framing::Empty`]), read through
    /// `reader`, which is sent to `back` once the body is over.
    pub(super) fn new(
        reader: Reader,
        framing: super::head::Framing,
        back: oneshot::Sender<Reader>,
        continue_to: Option<Arc<Sender>>,
    ) -> RequestBody {
        let left = match framing {
            super::head::Framing::Empty => Remaining::Done,
            super::head::Framing::Length(n) => Remaining::Length(n),
            super::head::Framing::Chunked => Remaining::Chunked(ChunkedDecoder::default()),
        };
        let mut body = RequestBody {
            reader: Some(reader),
            left,
            back: Some(back),
            continue_to,
        };
        if body.left.is_over() {
            body.finish();
        }
        body
    }

    /// The body is over: the reader goes back to the connection.
    fn finish(&mut self) {
        self.left = Remaining::Done;
        self.continue_to = None;
        if let (Some(reader), Some(back)) = (self.reader.take(), self.back.take()) {
            let _ = back.send(reader);
        }
    }

    fn fail(
        &mut self,
        e: RequestBodyError,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        self.left = Remaining::Done;
        self.reader = None;
        self.back = None;
        self.continue_to = None;
        Poll::Ready(Some(Err(e)))
    }

    /// The next piece of body from what has been read: `Ok(None)` when more must be read,
    /// `Ok(Some(None))` at the end.
    fn next_buffered(&mut self) -> Result<Option<Option<Bytes>>, RequestBodyError> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(Some(None));
        };
        let Some(data) = self
            .left
            .next(&mut reader.buf)
            .map_err(|e| RequestBodyError::Chunk(e.to_string()))?
        else {
            return Ok(None);
        };
        if data.is_none() || self.left.is_over() {
            self.finish();
        }
        Ok(Some(data))
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = &mut *self;
        if let Some(to) = &this.continue_to {
            match ready!(to.poll_continue(cx)) {
                Ok(()) => this.continue_to = None,
                Err(e) => return this.fail(e.into()),
            }
        }
        loop {
            match this.next_buffered() {
                Err(e) => return this.fail(e),
                Ok(Some(Some(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Some(None)) => return Poll::Ready(None),
                Ok(None) => {}
            }
            let Some(reader) = this.reader.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(reader.poll_fill(cx)) {
                Err(e) => return this.fail(e.into()),
                Ok(0) => return this.fail(RequestBodyError::Incomplete),
                Ok(_) => {}
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
