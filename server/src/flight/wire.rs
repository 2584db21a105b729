//! The Flight service as hyper drives it: every request body is read strictly.
//!
//! - A request stream its client reset (a dropped or cancelled call: hyper resets the
//!   HTTP/2 stream with `CANCEL`) fails. tonic's decoder reads a request body that
//!   fails with `CANCELLED` as one that ended, so an upload would be committed with
//!   the rows received so far; here the failure is `ABORTED` instead, which tonic
//!   passes on, and the upload writes nothing.
//! - A message over `max_message_size` is refused by its gRPC length prefix with
//!   `RESOURCE_EXHAUSTED` and SQLSTATE 54000, as pgwire refuses a long message (tonic's
//!   own check, still in place behind this one, says `OUT_OF_RANGE`).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::{Code, Status};

use super::coded_status;
use crate::errors;

/// A gRPC service whose request bodies are [`CheckedBody`]s.
#[derive(Debug, Clone)]
pub(crate) struct CheckedRequests<S> {
    inner: S,
    max_message_size: usize,
}

impl<S> CheckedRequests<S> {
    pub(crate) fn new(inner: S, max_message_size: usize) -> CheckedRequests<S> {
        CheckedRequests {
            inner,
            max_message_size,
        }
    }
}

impl<S: NamedService> NamedService for CheckedRequests<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<tonic::body::Body>> for CheckedRequests<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    B: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let limit = self.max_message_size;
        let answer = self.inner.call(request.map(|body| {
            tonic::body::Body::new(CheckedBody {
                inner: body,
                lengths: MessageLengths::default(),
                limit,
            })
        }));
        Box::pin(async move {
            let mut response = answer.await?;
            undecodable_is_invalid_argument(response.headers_mut());
            Ok(response)
        })
    }
}

/// tonic answers a unary request whose protobuf it cannot decode with `INTERNAL`
/// before any of Tessera's code runs (a trailers-only response: the status is in the
/// headers). Every status Tessera sends carries a SQLSTATE, so an `INTERNAL` without
/// one is that malformed request: `INVALID_ARGUMENT`, 08P01.
fn undecodable_is_invalid_argument(headers: &mut http::HeaderMap) {
    let internal = headers
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == b"13");
    if internal && !headers.contains_key(super::SQLSTATE_METADATA_KEY) {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from_static("3"), // INVALID_ARGUMENT
        );
        headers.insert(
            super::SQLSTATE_METADATA_KEY,
            http::HeaderValue::from_static(errors::PROTOCOL_VIOLATION),
        );
    }
}

/// A request body whose reset is an error and whose messages are at most `limit` bytes.
struct CheckedBody {
    inner: tonic::body::Body,
    lengths: MessageLengths,
    limit: usize,
}

impl Body for CheckedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            None => return Poll::Ready(None),
            Some(Err(status)) if status.code() == Code::Cancelled => {
                return Poll::Ready(Some(Err(Status::aborted(format!(
                    "the client cancelled the call before its request ended ({}); nothing of it is kept",
                    status.message()
                )))));
            }
            Some(Err(status)) => return Poll::Ready(Some(Err(status))),
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref() {
            let limit = self.limit;
            if let Err(length) = self.lengths.check(data, limit) {
                return Poll::Ready(Some(Err(coded_status(
                    Code::ResourceExhausted,
                    errors::PROGRAM_LIMIT_EXCEEDED,
                    format!(
                        "a request message of {length} bytes is longer than max_message_size ({limit} bytes)"
                    ),
                ))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where a body is in its gRPC messages, each a 5-byte prefix (a compression flag and a
/// big-endian u32 length) and then that many bytes; chunks split them anywhere.
#[derive(Debug, Default)]
struct MessageLengths {
    prefix: [u8; 5],
    prefix_filled: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
}

impl MessageLengths {
    /// Follows `data`; the length of the first message longer than `limit` is an error.
    fn check(&mut self, mut data: &[u8], limit: usize) -> Result<(), usize> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let skipped = self.remaining.min(data.len());
                self.remaining -= skipped;
                data = &data[skipped..];
                continue;
            }
            let taken = (self.prefix.len() - self.prefix_filled).min(data.len());
            self.prefix[self.prefix_filled..self.prefix_filled + taken]
                .copy_from_slice(&data[..taken]);
            self.prefix_filled += taken;
            data = &data[taken..];
            if self.prefix_filled == self.prefix.len() {
                self.prefix_filled = 0;
                let [_, a, b, c, d] = self.prefix;
                let length = u32::from_be_bytes([a, b, c, d]) as usize;
                if length > limit {
                    return Err(length);
                }
                self.remaining = length;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gRPC messages of these lengths, framed.
    fn framed(lengths: &[u32]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for &n in lengths {
            bytes.push(0);
            bytes.extend_from_slice(&n.to_be_bytes());
            bytes.extend(std::iter::repeat_n(0xab, n as usize));
        }
        bytes
    }

    #[test]
    fn message_lengths_are_read_across_any_split() {
        let bytes = framed(&[3, 0, 10, 7]);
        for chunk in 1..=bytes.len() {
            let mut lengths = MessageLengths::default();
            for piece in bytes.chunks(chunk) {
                assert_eq!(lengths.check(piece, 10), Ok(()), "chunks of {chunk}");
            }
            assert_eq!((lengths.prefix_filled, lengths.remaining), (0, 0));
        }
        // The 10-byte message is over a limit of 9, wherever the chunks split it.
        for chunk in 1..=bytes.len() {
            let mut lengths = MessageLengths::default();
            let refused = bytes
                .chunks(chunk)
                .map(|piece| lengths.check(piece, 9))
                .find(Result::is_err);
            assert_eq!(refused, Some(Err(10)), "chunks of {chunk}");
        }
    }
}
