//! Stopping a running statement, for both wires: a cancel (PostgreSQL's CancelRequest,
//! Flight's CancelFlightInfo) and `statement_timeout` both end the statement by
//! dropping its stream, which aborts DataFusion's tasks; the client gets SQLSTATE 57014
//! and the connection stays usable. Each wire finds the [`QueryControl`] to cancel its
//! own way (pg: backend pid and secret key; Flight: the result's ticket).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use futures::Stream;
use tokio::sync::watch;

use crate::errors::Cancelled;

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
    /// Cancels the statement running now, if any.
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
