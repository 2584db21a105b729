//! Sending record batches with DoPut: bulk loads (`CommandStatementIngest`) and
//! parameter rows, encoded as they are sent.
//!
//! If the batches fail half-way, the upload must not look complete to the server. A
//! dropped call is no good: hyper resets its HTTP/2 stream with `CANCEL`, and tonic's
//! server reads a request stream cancelled by its client as one that ended, so the
//! server would commit what it got. Instead the request body itself fails
//! ([`FailableUploads`]), hyper resets the stream with `INTERNAL_ERROR`, and the server
//! sees a failed read and writes nothing.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use arrow_array::RecordBatch;
use arrow_flight::encode::{FlightDataEncoder, FlightDataEncoderBuilder};
use arrow_flight::error::FlightError;
use arrow_flight::sql::{
    CommandStatementIngest, ProstMessageExt, TableDefinitionOptions, TableExistsOption,
    TableNotExistOption,
};
use arrow_flight::{FlightData, FlightDescriptor, PutResult};
use arrow_schema::ArrowError;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use http_body::{Body, Frame, SizeHint};
use prost::Message;
use tonic::codegen::{Service, http};

use crate::client::Flight;
use crate::error::{Error, Result};

/// What a load does with its target, as ADBC's ingest modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoadMode {
    /// Creates a table with the data's columns; fails if the target exists.
    Create,
    /// Appends to an existing table or array; fails if there is none.
    Append,
    /// Replaces a table whole, or creates it (not for arrays).
    Replace,
    /// Appends to the target, creating a table if there is none.
    CreateOrAppend,
}

impl LoadMode {
    fn options(self) -> TableDefinitionOptions {
        let (if_not_exist, if_exists) = match self {
            LoadMode::Create => (TableNotExistOption::Create, TableExistsOption::Fail),
            LoadMode::Append => (TableNotExistOption::Fail, TableExistsOption::Append),
            LoadMode::Replace => (TableNotExistOption::Create, TableExistsOption::Replace),
            LoadMode::CreateOrAppend => (TableNotExistOption::Create, TableExistsOption::Append),
        };
        TableDefinitionOptions {
            if_not_exist: if_not_exist as i32,
            if_exists: if_exists as i32,
        }
    }
}

/// A bulk load of `batches` into `target`; returns the server's answer.
pub(crate) async fn upload<S>(
    flight: Flight,
    target: &str,
    mode: LoadMode,
    batches: S,
) -> Result<PutResult>
where
    S: Stream<Item = Result<RecordBatch, ArrowError>> + Send + 'static,
{
    let command = CommandStatementIngest {
        table_definition_options: Some(mode.options()),
        table: target.to_string(),
        schema: None,
        catalog: None,
        temporary: false,
        transaction_id: None,
        options: Default::default(),
    };
    let descriptor = FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
    put(flight, descriptor, batches)
        .await?
        .ok_or_else(|| Error::protocol("the load ended without an answer"))
}

/// DoPut of `batches` under `descriptor`: the server's first answer, if any. A failure
/// of `batches` (or of encoding them) fails the upload and is returned.
pub(crate) async fn put<S>(
    mut flight: Flight,
    descriptor: FlightDescriptor,
    batches: S,
) -> Result<Option<PutResult>>
where
    S: Stream<Item = Result<RecordBatch, ArrowError>> + Send + 'static,
{
    let failure = UploadFailure::default();
    let data = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(descriptor))
        .build(batches.map_err(FlightError::Arrow));
    let mut request = tonic::Request::new(StopOnError {
        data,
        failure: failure.clone(),
        ended: false,
    });
    request.extensions_mut().insert(failure.clone());
    let answer = async move {
        let mut answers = flight.do_put(request).await?.into_inner();
        answers.message().await.map_err(Error::from)
    }
    .await;
    // The call fails with the reset stream; the data's own error says why.
    match failure.take() {
        Some(error) => Err(error),
        None => answer,
    }
}

/// The error that stopped an upload's data, shared by the data stream (which sets it)
/// and the request body (which then fails). A request extension of DoPuts.
#[derive(Clone, Default)]
pub(crate) struct UploadFailure(Arc<Mutex<Option<Error>>>);

impl UploadFailure {
    fn set(&self, error: Error) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    fn is_set(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    fn take(&self) -> Option<Error> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The Flight data of a DoPut. On an error it records the error and sends nothing
/// more, never ending: the request body fails instead (see [`FailedBody`]).
struct StopOnError {
    data: FlightDataEncoder,
    failure: UploadFailure,
    ended: bool,
}

impl Stream for StopOnError {
    type Item = FlightData;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FlightData>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.failure.is_set() {
            return Poll::Pending;
        }
        match self.data.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(data))) => Poll::Ready(Some(data)),
            Poll::Ready(Some(Err(error))) => {
                self.failure.set(Error::from(error));
                Poll::Pending
            }
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A tower layer under the Flight client: requests that carry an [`UploadFailure`] get a
/// body that fails once it is set.
#[derive(Debug, Clone)]
pub(crate) struct FailableUploads<S>(pub(crate) S);

impl<S> Service<http::Request<tonic::body::Body>> for FailableUploads<S>
where
    S: Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let Some(failure) = request.extensions().get::<UploadFailure>().cloned() else {
            return self.0.call(request);
        };
        let request = request.map(|inner| tonic::body::Body::new(FailedBody { inner, failure }));
        self.0.call(request)
    }
}

/// A request body that fails when its upload's data has failed.
struct FailedBody {
    inner: tonic::body::Body,
    failure: UploadFailure,
}

/// What the request body fails with (the caller gets the data's own error).
#[derive(Debug, thiserror::Error)]
#[error("the data of the upload failed; the upload is abandoned")]
struct UploadAbandoned;

impl Body for FailedBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending if self.failure.is_set() => {
                Poll::Ready(Some(Err(UploadAbandoned.into())))
            }
            other => other.map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
