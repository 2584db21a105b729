//! Results between GetFlightInfo and DoGet. GetFlightInfo runs a statement (so that
//! DDL and DML happen exactly once, when the client asks) and keeps its result stream
//! under a random ticket; DoGet takes the stream and sends it as it is computed.
//! Until its stream ends, a result can be cancelled by its ticket (CancelFlightInfo).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{Stream, StreamExt};

use super::clients::random_bytes;
use crate::edge::QueryControl;

/// A result nobody fetched is dropped after this long (its statement is stopped).
const UNFETCHED_RESULT_TIMEOUT: Duration = Duration::from_secs(600);

/// A result waiting for DoGet.
struct Pending {
    /// The client that ran the statement.
    owner: u64,
    stream: SendableRecordBatchStream,
    created: Instant,
}

/// Results waiting for DoGet, and the cancel signals of results not yet finished.
#[derive(Default)]
pub(crate) struct ResultStore {
    pending: Mutex<HashMap<Bytes, Pending>>,
    running: Mutex<HashMap<Bytes, Arc<QueryControl>>>,
}

impl std::fmt::Debug for ResultStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultStore").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent, so a poisoned lock is usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ResultStore {
    /// A new ticket and the cancel signal of the statement it will stand for.
    pub(crate) fn start(&self) -> Result<(Bytes, Arc<QueryControl>)> {
        let ticket = Bytes::from(random_bytes::<16>()?.to_vec());
        let control = Arc::new(QueryControl::default());
        lock(&self.running).insert(ticket.clone(), control.clone());
        Ok((ticket, control))
    }

    /// Keeps the result of `ticket` for DoGet.
    pub(crate) fn stash(&self, ticket: Bytes, owner: u64, stream: SendableRecordBatchStream) {
        let now = Instant::now();
        let mut pending = lock(&self.pending);
        let expired: Vec<Bytes> = pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.created) > UNFETCHED_RESULT_TIMEOUT)
            .map(|(t, _)| t.clone())
            .collect();
        for t in expired {
            pending.remove(&t);
            self.finish(&t);
        }
        pending.insert(
            ticket,
            Pending {
                owner,
                stream,
                created: now,
            },
        );
    }

    /// Reads the first batch of `ticket`'s result now (PollFlightInfo: a query that
    /// aggregates has then done its work); DoGet gets it before the rest. An error
    /// instead of a first batch is returned, and the result forgotten.
    pub(crate) async fn prefetch(&self, ticket: &[u8]) -> Result<()> {
        let Some((ticket, mut pending)) = lock(&self.pending).remove_entry(ticket) else {
            return Ok(());
        };
        let first = match pending.stream.next().await {
            Some(Err(e)) => {
                self.finish(&ticket);
                return Err(e);
            }
            first => first,
        };
        let schema = pending.stream.schema();
        let rest = std::mem::replace(
            &mut pending.stream,
            Box::pin(RecordBatchStreamAdapter::new(
                schema.clone(),
                futures::stream::empty(),
            )),
        );
        pending.stream = Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::iter(first).chain(rest),
        ));
        pending.created = Instant::now();
        lock(&self.pending).insert(ticket, pending);
        Ok(())
    }

    /// Forgets a ticket whose statement failed before its result was stashed.
    pub(crate) fn finish(&self, ticket: &[u8]) {
        lock(&self.running).remove(ticket);
    }

    /// Takes the result of `ticket` (a ticket is read once). The stream unregisters
    /// the ticket's cancel signal when it is dropped.
    pub(crate) fn take(
        self: &Arc<Self>,
        ticket: &[u8],
        owner: u64,
    ) -> Option<(SchemaRef, TicketStream)> {
        let mut pending = lock(&self.pending);
        if pending.get(ticket).is_none_or(|p| p.owner != owner) {
            return None;
        }
        let (ticket, result) = pending.remove_entry(ticket)?;
        let schema = result.stream.schema();
        Some((
            schema,
            TicketStream {
                inner: result.stream,
                _guard: Finished {
                    store: self.clone(),
                    ticket,
                },
            },
        ))
    }

    /// Cancels the statement of `ticket`; false if it is unknown or already finished.
    pub(crate) fn cancel(&self, ticket: &[u8]) -> bool {
        let control = lock(&self.running).get(ticket).cloned();
        match control {
            Some(c) => {
                c.cancel();
                true
            }
            None => false,
        }
    }
}

/// Unregisters a ticket when its stream is dropped.
struct Finished {
    store: Arc<ResultStore>,
    ticket: Bytes,
}

impl Drop for Finished {
    fn drop(&mut self) {
        self.store.finish(&self.ticket);
    }
}

/// The stream of a fetched result.
pub(crate) struct TicketStream {
    inner: SendableRecordBatchStream,
    _guard: Finished,
}

impl Stream for TicketStream {
    type Item = Result<RecordBatch, DataFusionError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}
