//! The outer layer of the Flight service: every call is authenticated here (the
//! Handshake hands out bearer tokens), runs with its caller in the request's
//! extensions, and never leaves as a panic or as arrow-flight's `INTERNAL` for a
//! request it could not decode.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::{FutureExt, Stream, StreamExt};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status, Streaming};

use super::SQLSTATE_METADATA_KEY;
use super::clients::{Caller, Clients};
use super::poll::Polls;
use super::service::{TesseraFlightSql, caller};
use crate::errors;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Authentication and the last line of defence around [`TesseraFlightSql`].
pub(crate) struct Gate {
    inner: Arc<TesseraFlightSql>,
    clients: Arc<Clients>,
    /// Statements PollFlightInfo runs (arrow-flight's `FlightSqlService` has no hook
    /// for it; see `poll.rs`).
    polls: Polls,
}

impl Gate {
    pub(crate) fn new(inner: TesseraFlightSql, clients: Arc<Clients>) -> Gate {
        Gate {
            inner: Arc::new(inner),
            clients,
            polls: Polls::default(),
        }
    }

    /// Resolves the caller and puts it into the request's extensions.
    fn admit<T>(&self, mut request: Request<T>) -> Result<Request<T>, Status> {
        let client = self
            .clients
            .authenticate(request.metadata(), request.remote_addr())?;
        request.extensions_mut().insert(Caller(client));
        Ok(request)
    }
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// A bug: `INTERNAL` with SQLSTATE XX000, and the server goes on.
fn panic_status(payload: &(dyn Any + Send)) -> Status {
    let message = panic_message(payload);
    tracing::error!(panic = %message, "a Flight SQL call panicked");
    let mut status = Status::internal(format!("internal error: {message}"));
    status.metadata_mut().insert(
        SQLSTATE_METADATA_KEY,
        MetadataValue::from_static(errors::INTERNAL_ERROR),
    );
    status
}

/// arrow-flight reports a request it cannot decode (a bad protobuf in a command or
/// ticket, an unreadable IPC message) as `INTERNAL`; Tessera's own statuses carry a
/// SQLSTATE. An `INTERNAL` without one is the client's malformed request.
fn classify(status: Status) -> Status {
    if status.code() == Code::Internal && status.metadata().get(SQLSTATE_METADATA_KEY).is_none() {
        let mut fixed =
            Status::invalid_argument(format!("malformed request: {}", status.message()));
        fixed.metadata_mut().insert(
            SQLSTATE_METADATA_KEY,
            MetadataValue::from_static(errors::PROTOCOL_VIOLATION),
        );
        return fixed;
    }
    status
}

/// Runs a call: panics become `INTERNAL`, undecodable requests `INVALID_ARGUMENT`.
async fn guard<T>(
    call: impl std::future::Future<Output = Result<Response<T>, Status>>,
) -> Result<Response<T>, Status> {
    match AssertUnwindSafe(call).catch_unwind().await {
        Ok(result) => result.map_err(classify),
        Err(payload) => Err(panic_status(payload.as_ref())),
    }
}

/// The same for each item of a response stream; a panic ends the stream.
fn guard_stream<T: Send + 'static>(
    stream: impl Stream<Item = Result<T, Status>> + Send + 'static,
) -> BoxStream<T> {
    let mut done = false;
    Box::pin(
        AssertUnwindSafe(stream)
            .catch_unwind()
            .map(|item| match item {
                Ok(result) => result.map_err(classify),
                Err(payload) => Err(panic_status(payload.as_ref())),
            })
            .take_while(move |item| {
                let go = !done;
                done = done
                    || item
                        .as_ref()
                        .err()
                        .is_some_and(|s| s.code() == Code::Internal);
                futures::future::ready(go)
            }),
    )
}

fn boxed<T: Send + 'static>(
    response: Response<impl Stream<Item = Result<T, Status>> + Send + 'static>,
) -> Response<BoxStream<T>> {
    let (metadata, stream, extensions) = response.into_parts();
    Response::from_parts(metadata, guard_stream(stream), extensions)
}

#[tonic::async_trait]
impl FlightService for Gate {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    /// Basic credentials in the `authorization` header (trust: none needed) get a
    /// bearer token, in the response's `authorization` header and as the payload.
    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let token = self
            .clients
            .handshake(request.metadata(), request.remote_addr())?;
        let header = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|e| Status::internal(format!("bearer token header: {e}")))?;
        let payload = HandshakeResponse {
            protocol_version: 0,
            payload: token.into_bytes().into(),
        };
        let mut response: Response<Self::HandshakeStream> =
            Response::new(Box::pin(futures::stream::iter([Ok(payload)])));
        response.metadata_mut().insert("authorization", header);
        Ok(response)
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let request = self.admit(request)?;
        guard(async { self.inner.list_flights(request).await.map(boxed) }).await
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let request = self.admit(request)?;
        guard(self.inner.get_flight_info(request)).await
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        let request = self.admit(request)?;
        let client = caller(&request)?;
        guard(self.polls.poll(&self.inner, client, request)).await
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let request = self.admit(request)?;
        guard(self.inner.get_schema(request)).await
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let request = self.admit(request)?;
        guard(async { self.inner.do_get(request).await.map(boxed) }).await
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let request = self.admit(request)?;
        guard(async { self.inner.do_put(request).await.map(boxed) }).await
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        let request = self.admit(request)?;
        guard(async { self.inner.do_exchange(request).await.map(boxed) }).await
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let request = self.admit(request)?;
        guard(async { self.inner.do_action(request).await.map(boxed) }).await
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let request = self.admit(request)?;
        guard(async { self.inner.list_actions(request).await.map(boxed) }).await
    }
}
