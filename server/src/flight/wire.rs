//! The Flight service as hyper drives it: every request body is read strictly.
//!
//! A request stream its client reset (a dropped or cancelled call: hyper resets the
//! HTTP/2 stream with `CANCEL`) fails. tonic's decoder reads a request body that fails
//! with `CANCELLED` as one that ended, so an upload would be committed with the rows
//! received so far; here the failure is `ABORTED` instead, which tonic passes on, and
//! the upload writes nothing.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::{Code, Status};

/// A gRPC service whose request bodies are [`CheckedBody`]s.
#[derive(Debug, Clone)]
pub(crate) struct CheckedRequests<S> {
    inner: S,
}

impl<S> CheckedRequests<S> {
    pub(crate) fn new(inner: S) -> CheckedRequests<S> {
        CheckedRequests { inner }
    }
}

impl<S: NamedService> NamedService for CheckedRequests<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<tonic::body::Body>> for CheckedRequests<S>
where
    S: Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        self.inner
            .call(request.map(|body| tonic::body::Body::new(CheckedBody { inner: body })))
    }
}

/// A request body whose reset is an error.
struct CheckedBody {
    inner: tonic::body::Body,
}

impl Body for CheckedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Poll::Ready(match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Err(status)) if status.code() == Code::Cancelled => {
                Some(Err(Status::aborted(format!(
                    "the client cancelled the call before its request ended ({}); nothing of it is kept",
                    status.message()
                ))))
            }
            other => other,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
