//! PollFlightInfo: a statement that runs while its client polls for it.
//!
//! The first poll of a command starts it in the background, as GetFlightInfo would run
//! it, and then reads the first batch of its result, which is when a query that
//! aggregates (a matmul, a count) has done its work; the rest streams at DoGet as
//! usual, so a result is never held whole. Until then each poll answers with a retry
//! descriptor (a path `tessera-poll/<handle>`) and `progress`: the fraction of the
//! statement's stored input its scans have read (`tessera_progress`), kept below 1. The
//! poll that finds the statement done answers its FlightInfo, progress 1 and no retry
//! descriptor; one that finds it failed answers its error. A poll waits up to
//! [`POLL_WAIT`] for the statement to finish before it answers.
//!
//! Commands that are not statements (metadata) finish within the first poll. A poll
//! handle belongs to the client that started it, and is forgotten once its final answer
//! is given, or [`UNCOLLECTED_POLL_TIMEOUT`] after it started.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::{Any, TicketStatementQuery};
use arrow_flight::{FlightDescriptor, FlightInfo, PollInfo};
use futures::FutureExt;
use prost::Message;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::clients::{FlightClient, random_bytes};
use super::service::TesseraFlightSql;
use super::status;
use crate::activity::fraction_read;

/// The first path element of a retry descriptor.
const POLL_PATH: &str = "tessera-poll";

/// How long a poll waits for its statement before answering that it still runs.
const POLL_WAIT: Duration = Duration::from_millis(100);

/// A poll whose final answer nobody collected is forgotten after this long (its result,
/// if any, expires with the unfetched results).
const UNCOLLECTED_POLL_TIMEOUT: Duration = Duration::from_secs(600);

/// The largest progress reported while the statement runs: 1 means done.
const MAX_RUNNING_PROGRESS: f64 = 0.99;

/// One statement started by PollFlightInfo.
struct Poll {
    owner: u64,
    client: Arc<FlightClient>,
    started: Instant,
    /// The outcome once the statement has finished.
    outcome: Mutex<Option<Result<FlightInfo, Status>>>,
    done: watch::Receiver<bool>,
}

/// The statements PollFlightInfo runs, by handle.
#[derive(Default)]
pub(crate) struct Polls {
    running: Mutex<HashMap<String, Arc<Poll>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent, so a poisoned lock is usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The handle of a retry descriptor, if `descriptor` is one.
fn retry_handle(descriptor: &FlightDescriptor) -> Option<&str> {
    if descriptor.r#type != DescriptorType::Path as i32 {
        return None;
    }
    match descriptor.path.as_slice() {
        [first, handle] if first == POLL_PATH => Some(handle),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Polls {
    /// Answers one PollFlightInfo; `request` has been admitted (its caller is known).
    pub(crate) async fn poll(
        &self,
        service: &Arc<TesseraFlightSql>,
        client: Arc<FlightClient>,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        let poll = match retry_handle(request.get_ref()) {
            Some(handle) => {
                let handle = handle.to_string();
                let poll = lock(&self.running)
                    .get(&handle)
                    .filter(|p| p.owner == client.id)
                    .cloned()
                    .ok_or_else(|| {
                        Status::not_found(
                            "no running statement for this poll descriptor: it finished and \
                             was collected, or expired",
                        )
                    })?;
                (handle, poll)
            }
            None => self.start(service, client, request)?,
        };
        self.answer(poll).await
    }

    /// Starts the command of `request` in the background.
    fn start(
        &self,
        service: &Arc<TesseraFlightSql>,
        client: Arc<FlightClient>,
        request: Request<FlightDescriptor>,
    ) -> Result<(String, Arc<Poll>), Status> {
        let handle = hex(&random_bytes::<16>().map_err(|e| status(&e))?);
        let (done_tx, done) = watch::channel(false);
        let poll = Arc::new(Poll {
            owner: client.id,
            client,
            started: Instant::now(),
            outcome: Mutex::new(None),
            done,
        });
        {
            let mut running = lock(&self.running);
            running.retain(|_, p| p.started.elapsed() < UNCOLLECTED_POLL_TIMEOUT);
            running.insert(handle.clone(), Arc::clone(&poll));
        }
        let service = Arc::clone(service);
        let finished = Arc::clone(&poll);
        tokio::spawn(async move {
            let outcome = AssertUnwindSafe(run(&service, request))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    Err(Status::internal(
                        "internal error: the statement of a poll panicked",
                    ))
                });
            *lock(&finished.outcome) = Some(outcome);
            let _ = done_tx.send(true);
        });
        Ok((handle, poll))
    }

    /// The answer for `poll` now, after waiting a little for it to finish.
    async fn answer(
        &self,
        (handle, poll): (String, Arc<Poll>),
    ) -> Result<Response<PollInfo>, Status> {
        let mut done = poll.done.clone();
        let _ = tokio::time::timeout(POLL_WAIT, done.wait_for(|d| *d)).await;
        let outcome = lock(&poll.outcome).take();
        match outcome {
            Some(outcome) => {
                lock(&self.running).remove(&handle);
                let info = outcome?;
                let answer = PollInfo::new()
                    .with_info(info)
                    .try_with_progress(1.0)
                    .map_err(|e| status(&e.into()))?;
                Ok(Response::new(answer))
            }
            None => {
                let progress =
                    fraction_read(&poll.client.session.progress().read()).min(MAX_RUNNING_PROGRESS);
                let retry = FlightDescriptor::new_path(vec![POLL_PATH.to_string(), handle]);
                let answer = PollInfo::new()
                    .with_descriptor(retry)
                    .try_with_progress(progress)
                    .map_err(|e| status(&e.into()))?;
                Ok(Response::new(answer))
            }
        }
    }
}

/// Runs the command as GetFlightInfo does, then reads the first batch of each of its
/// statement results.
async fn run(
    service: &Arc<TesseraFlightSql>,
    request: Request<FlightDescriptor>,
) -> Result<FlightInfo, Status> {
    let info = service.get_flight_info(request).await?.into_inner();
    for endpoint in &info.endpoint {
        let handle = endpoint
            .ticket
            .as_ref()
            .and_then(|t| Any::decode(&*t.ticket).ok())
            .and_then(|any| any.unpack::<TicketStatementQuery>().ok().flatten());
        if let Some(handle) = handle {
            service
                .results()
                .prefetch(&handle.statement_handle)
                .await
                .map_err(|e| status(&e))?;
        }
    }
    Ok(info)
}
