//! Stopping a running statement: cancel requests (a client's second connection naming
//! the backend pid and secret key) and `statement_timeout` both end the statement by
//! dropping its stream, which aborts DataFusion's tasks; the client gets SQLSTATE 57014
//! and the connection stays usable.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use futures::Stream;
use pgwire::api::cancel::CancelHandler;
use pgwire::messages::cancel::CancelRequest;
use tokio::sync::watch;

use crate::errors::Cancelled;

/// The connections that can be cancelled, by backend pid and secret key.
#[derive(Debug, Default)]
pub(crate) struct CancelRegistry {
    connections: Mutex<HashMap<(i32, Bytes), Arc<QueryControl>>>,
}

impl CancelRegistry {
    /// Registers a connection; it is unregistered when the guard drops.
    pub(crate) fn register(
        self: &Arc<Self>,
        pid: i32,
        secret: Bytes,
        control: Arc<QueryControl>,
    ) -> CancelGuard {
        if let Ok(mut map) = self.connections.lock() {
            map.insert((pid, secret.clone()), control);
        }
        CancelGuard {
            registry: self.clone(),
            key: (pid, secret),
        }
    }

    fn cancel(&self, pid: i32, secret: &Bytes) -> bool {
        let control = self
            .connections
            .lock()
            .ok()
            .and_then(|map| map.get(&(pid, secret.clone())).cloned());
        match control {
            Some(c) => {
                c.cancel();
                true
            }
            None => false,
        }
    }
}

/// Unregisters a connection from the [`CancelRegistry`] when dropped.
#[derive(Debug)]
pub(crate) struct CancelGuard {
    registry: Arc<CancelRegistry>,
    key: (i32, Bytes),
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.registry.connections.lock() {
            map.remove(&self.key);
        }
    }
}

/// The cancel handler pgwire calls for a CancelRequest.
#[derive(Debug)]
pub(crate) struct RegistryCancelHandler(pub(crate) Arc<CancelRegistry>);

#[async_trait]
impl CancelHandler for RegistryCancelHandler {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let found = self.0.cancel(request.pid, &request.secret_key.to_bytes());
        tracing::debug!(pid = request.pid, found, "cancel request");
    }
}

/// One connection's cancel signal: a counter that each cancel request bumps. A
/// statement watches for a change from the value it started with, so a cancel that
/// arrives between statements cancels nothing.
#[derive(Debug)]
pub(crate) struct QueryControl {
    generation: watch::Sender<u64>,
}

impl Default for QueryControl {
    fn default() -> Self {
        QueryControl {
            generation: watch::channel(0).0,
        }
    }
}

impl QueryControl {
    pub(crate) fn cancel(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// The interruption of a statement starting now, with an optional timeout.
    pub(crate) fn interrupt(&self, timeout: Option<Duration>) -> Interrupt {
        let mut receiver = self.generation.subscribe();
        receiver.mark_unchanged();
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        Interrupt { receiver, deadline }
    }
}

/// Resolves when the statement it was made for must stop.
#[derive(Debug, Clone)]
pub(crate) struct Interrupt {
    receiver: watch::Receiver<u64>,
    deadline: Option<tokio::time::Instant>,
}

impl Interrupt {
    /// Waits for a cancel request or the deadline.
    pub(crate) fn fired(&self) -> impl Future<Output = Cancelled> + Send + 'static {
        let mut receiver = self.receiver.clone();
        let deadline = self.deadline;
        async move {
            let until_deadline = || async move {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = receiver.changed() => match changed {
                    Ok(()) => Cancelled::UserRequest,
                    // The connection is gone: nothing will cancel; wait for the deadline.
                    Err(_) => {
                        until_deadline().await;
                        Cancelled::Timeout
                    }
                },
                _ = until_deadline() => Cancelled::Timeout,
            }
        }
    }

    /// Runs `future` unless the interrupt fires first.
    pub(crate) async fn run<T>(
        &self,
        future: impl Future<Output = Result<T, DataFusionError>>,
    ) -> Result<T, DataFusionError> {
        tokio::select! {
            result = future => result,
            reason = self.fired() => Err(DataFusionError::External(Box::new(reason))),
        }
    }

    /// Wraps a stream so that it ends with the interruption's error when it fires.
    pub(crate) fn stream<S>(&self, inner: S) -> Interruptible<S> {
        Interruptible {
            inner,
            stop: Box::pin(self.fired()),
            done: false,
        }
    }
}

/// A stream of record batches that stops with a [`Cancelled`] error.
pub(crate) struct Interruptible<S> {
    inner: S,
    stop: Pin<Box<dyn Future<Output = Cancelled> + Send>>,
    done: bool,
}

impl<S> Stream for Interruptible<S>
where
    S: Stream<Item = Result<RecordBatch, DataFusionError>> + Unpin,
{
    type Item = Result<RecordBatch, DataFusionError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(reason) = self.stop.as_mut().poll(cx) {
            self.done = true;
            return Poll::Ready(Some(Err(DataFusionError::External(Box::new(reason)))));
        }
        Pin::new(&mut self.inner).poll_next(cx)
    }
}
