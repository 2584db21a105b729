//! A query's result as a stream: the endpoints of its FlightInfo fetched one after the
//! other with DoGet, each decoded as its messages arrive.

use std::pin::Pin;
use std::task::{Context, Poll};

use arrow_array::RecordBatch;
use arrow_flight::{
    Action, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus, FlightInfo,
};
use arrow_schema::{Schema, SchemaRef};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;

use crate::client::Client;
use crate::error::Result;

/// The result of a query, as record batches read from the server as they are polled.
///
/// Dropping it stops the fetch (and with Tessera, the statement). All batches have the
/// [`schema`](QueryStream::schema) the server announced. A result of several endpoints
/// is read endpoint after endpoint, each from this client's server (Tessera's results
/// have one endpoint and name no other location).
pub struct QueryStream {
    schema: SchemaRef,
    canceller: QueryCanceller,
    batches: BoxStream<'static, Result<RecordBatch>>,
}

impl std::fmt::Debug for QueryStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryStream")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl QueryStream {
    /// Starts fetching the result `info` describes: the first endpoint's DoGet now (so
    /// that dropping the stream ends it on the server), the others when they are reached.
    /// Every endpoint is fetched from this client's server.
    pub(crate) async fn start(client: Client, info: FlightInfo) -> Result<QueryStream> {
        let schema = if info.schema.is_empty() {
            Schema::empty()
        } else {
            info.clone().try_decode_schema()?
        };
        let mut endpoints = info.endpoint.clone().into_iter();
        let first = match endpoints.next() {
            Some(endpoint) => Some(client.fetch(endpoint).await?),
            None => None,
        };
        let fetcher = client.clone();
        let rest = futures::stream::iter(endpoints)
            .then(move |endpoint| {
                let client = fetcher.clone();
                async move { client.fetch(endpoint).await }
            })
            .try_flatten();
        let batches = futures::stream::iter(first).flatten().chain(rest).boxed();
        Ok(QueryStream {
            schema: std::sync::Arc::new(schema),
            canceller: QueryCanceller { client, info },
            batches,
        })
    }

    /// The result's schema.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The number of rows, when the server says (Tessera does not: results stream as
    /// they are computed).
    pub fn total_rows(&self) -> Option<u64> {
        u64::try_from(self.canceller.info.total_records).ok()
    }

    /// A handle that cancels this query from elsewhere (another task, a signal handler)
    /// while the stream is being read.
    pub fn canceller(&self) -> QueryCanceller {
        self.canceller.clone()
    }
}

impl Stream for QueryStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.batches.poll_next_unpin(cx)
    }
}

/// Cancels a running query (Flight's `CancelFlightInfo`): its stream then ends with a
/// `CANCELLED` error.
#[derive(Clone)]
pub struct QueryCanceller {
    client: Client,
    info: FlightInfo,
}

impl std::fmt::Debug for QueryCanceller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryCanceller").finish_non_exhaustive()
    }
}

impl QueryCanceller {
    /// Asks the server to cancel the query. True if it was cancelled (or is being
    /// cancelled), false if there was nothing left to cancel because it had finished.
    pub async fn cancel(&self) -> Result<bool> {
        let request = CancelFlightInfoRequest::new(self.info.clone());
        let body = self
            .client
            .action(Action::new("CancelFlightInfo", request.encode_to_vec()))
            .await?;
        let result = CancelFlightInfoResult::decode(&*body)?;
        Ok(matches!(
            CancelStatus::try_from(result.status),
            Ok(CancelStatus::Cancelled | CancelStatus::Cancelling)
        ))
    }
}
