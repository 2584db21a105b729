//! Progress as NOTICE messages: a statement that runs longer than the connection's
//! `tessera.progress_notice_after` gets a NoticeResponse (severity NOTICE, SQLSTATE
//! 00000) with its progress line ([`crate::activity::progress_line`]) at that delay,
//! and again after each further such interval while it runs.
//!
//! The notices are sent where the connection waits for the statement: while it plans
//! and runs ([`ProgressNotices::finish`]) and between the batches of its result
//! ([`ProgressNotices::next_batch`]); so a statement that streams its rows gets them
//! between its DataRows, as PostgreSQL's asynchronous messages may come.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use futures::{Sink, SinkExt, Stream, StreamExt};
use pgwire::error::ErrorInfo;
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::response::NoticeResponse;
use tessera_planner::progress::StatementProgress;

use crate::activity::progress_line;

/// The default `tessera.progress_notice_after`.
pub(crate) const DEFAULT_NOTICE_AFTER: Duration = Duration::from_secs(5);

/// SQLSTATE of a notice that reports no condition.
const SUCCESSFUL_COMPLETION: &str = "00000";

/// When the next progress notice of one statement is due.
#[derive(Debug)]
pub(crate) struct ProgressNotices {
    every: Duration,
    started: Instant,
    next: tokio::time::Instant,
    progress: Arc<StatementProgress>,
}

impl ProgressNotices {
    /// The notices of a statement starting now; `None` (no notices) when `every` is.
    pub(crate) fn start(
        every: Option<Duration>,
        progress: Arc<StatementProgress>,
    ) -> Option<ProgressNotices> {
        let every = every.filter(|d| !d.is_zero())?;
        Some(ProgressNotices {
            every,
            started: Instant::now(),
            next: tokio::time::Instant::now() + every,
            progress,
        })
    }

    /// The notice due now; the next is one interval later (never in the past, so a
    /// connection that was blocked does not send a burst).
    fn due(&mut self) -> NoticeResponse {
        let now = tokio::time::Instant::now();
        self.next = (self.next + self.every).max(now + self.every / 2);
        let line = progress_line(&self.progress.read(), self.started.elapsed());
        ErrorInfo::new("NOTICE".into(), SUCCESSFUL_COMPLETION.into(), line).into()
    }

    /// Awaits `work`, sending the notices that fall due meanwhile. A notice that
    /// cannot be sent stops the notices (the connection's next message reports it).
    pub(crate) async fn finish<C, F>(
        notices: &mut Option<ProgressNotices>,
        client: &mut C,
        work: F,
    ) -> F::Output
    where
        F: Future,
        C: Sink<PgWireBackendMessage> + Unpin + Send,
    {
        if notices.is_none() {
            return work.await;
        }
        tokio::pin!(work);
        loop {
            let Some(clock) = notices.as_mut() else {
                return work.await;
            };
            tokio::select! {
                done = &mut work => return done,
                () = tokio::time::sleep_until(clock.next) => {
                    let notice = clock.due();
                    if client.send(PgWireBackendMessage::NoticeResponse(notice)).await.is_err() {
                        *notices = None;
                    }
                }
            }
        }
    }

    /// The next batch of `stream`, sending the notices that fall due meanwhile.
    pub(crate) async fn next_batch<C, S>(
        notices: &mut Option<ProgressNotices>,
        client: &mut C,
        stream: &mut S,
    ) -> Option<Result<RecordBatch, DataFusionError>>
    where
        S: Stream<Item = Result<RecordBatch, DataFusionError>> + Unpin,
        C: Sink<PgWireBackendMessage> + Unpin + Send,
    {
        ProgressNotices::finish(notices, client, stream.next()).await
    }
}

/// `tessera.progress_notice_after` as written: a duration (`5s`, `100ms`; a bare number
/// is milliseconds, as PostgreSQL reads durations), or `0` / `off` for none.
pub(crate) fn parse_notice_after(value: &str) -> Result<Option<Duration>, String> {
    let v = value.trim().trim_matches('\'').trim();
    if v.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let d = crate::config::parse_duration(v)?;
    Ok((!d.is_zero()).then_some(d))
}

/// How `SHOW tessera.progress_notice_after` answers.
pub(crate) fn show_notice_after(value: Option<Duration>) -> String {
    match value {
        None => "off".into(),
        Some(d) if d.subsec_millis() == 0 && d.as_secs() > 0 => format!("{}s", d.as_secs()),
        Some(d) => format!("{}ms", d.as_millis()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn notice_settings_read_durations_and_off() {
        assert_eq!(
            parse_notice_after("100ms").unwrap(),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            parse_notice_after("'2s'").unwrap(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(parse_notice_after("off").unwrap(), None);
        assert_eq!(parse_notice_after("0").unwrap(), None);
        assert!(parse_notice_after("soon").is_err());
        assert_eq!(show_notice_after(Some(Duration::from_secs(5))), "5s");
        assert_eq!(show_notice_after(Some(Duration::from_millis(100))), "100ms");
        assert_eq!(show_notice_after(None), "off");
    }
}
