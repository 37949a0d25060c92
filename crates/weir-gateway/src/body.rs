//! A response body that holds something (a concurrency permit) until it is finished or
//! dropped, so an in-flight slot is released exactly when the response is done.

use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// `inner`, holding `guard` until the body ends or is dropped.
pub struct Holding<G> {
    inner: Body,
    guard: Option<G>,
}

impl<G> Holding<G> {
    /// Wraps a body.
    pub fn new(inner: Body, guard: G) -> Self {
        Holding {
            inner,
            guard: Some(guard),
        }
    }
}

impl<G: Send + Unpin + 'static> HttpBody for Holding<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
