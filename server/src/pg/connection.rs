//! The message loop of one connection: TLS negotiation, the startup timeout, the
//! message size limit, and a clean close on shutdown. A malformed message ends only
//! its own connection; a query's error never ends one.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pgwire::api::{ClientInfo, PgWireConnectionState};
use pgwire::error::PgWireError;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::TlsAcceptor;
use pgwire::tokio::server::{negotiate_tls, process_error, process_message};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::codec::{Framed, FramedParts};

use super::cancel::{CancelRegistry, RegistryCancelHandler};
use super::handler::{PgConnection, user_error};
use crate::errors;

/// The limits every connection is held to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    pub(crate) startup_timeout: Duration,
    pub(crate) max_message_size: usize,
}

/// Serves one client until it leaves, breaks the protocol, or the server shuts down.
pub(crate) async fn serve_connection(
    tcp: TcpStream,
    tls: Option<TlsAcceptor>,
    connection: Arc<PgConnection>,
    cancels: Arc<CancelRegistry>,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let deadline = tokio::time::sleep(limits.startup_timeout);
    tokio::pin!(deadline);
    let negotiated = tokio::select! {
        _ = &mut deadline => return,
        socket = negotiate_tls::<super::handler::PgStatement>(tcp, tls) => socket,
    };
    let socket = match negotiated {
        Ok(Some(socket)) => socket,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(error = %e, "TLS negotiation failed");
            return;
        }
    };
    // Put the size limit between the (decrypted) stream and pgwire's codec.
    let parts = socket.into_parts();
    let io = MessageSizeLimit::new(parts.io, limits.max_message_size, &parts.read_buf);
    let mut limited = FramedParts::new(io, parts.codec);
    limited.read_buf = parts.read_buf;
    limited.write_buf = parts.write_buf;
    let mut socket = Framed::from_parts(limited);

    let cancel_handler = Arc::new(RegistryCancelHandler(cancels));
    // Inside an extended-query sequence (Parse ... Sync) or a COPY, a shutdown waits for
    // the sequence to end, so a statement that runs when it starts still completes.
    let mut mid_sequence = false;
    loop {
        let in_startup = matches!(
            socket.state(),
            PgWireConnectionState::AwaitingStartup
                | PgWireConnectionState::AuthenticationInProgress
        );
        let copying = matches!(socket.state(), PgWireConnectionState::CopyInProgress(_));
        let message = tokio::select! {
            biased;
            _ = &mut deadline, if in_startup => {
                tracing::debug!("a client did not finish its startup in time");
                break;
            }
            _ = shutdown.changed(), if !mid_sequence && !copying => {
                let error = user_error(
                    "FATAL",
                    errors::ADMIN_SHUTDOWN,
                    "terminating connection due to administrator command",
                );
                let _ = socket.send(PgWireBackendMessage::ErrorResponse(
                    pgwire::error::ErrorInfo::from(error).into(),
                )).await;
                break;
            }
            message = socket.next() => message,
        };
        let message = match message {
            None => break,
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                // A malformed or oversized message: report it and close this connection.
                let (code, text) = match too_large(&e) {
                    Some(text) => (errors::PROGRAM_LIMIT_EXCEEDED, text),
                    None => (errors::PROTOCOL_VIOLATION, format!("invalid message: {e}")),
                };
                tracing::debug!(error = %e, "closing a connection after a bad message");
                let error = user_error("FATAL", code, text);
                socket.get_mut().hold = false;
                let _ = socket
                    .send(PgWireBackendMessage::ErrorResponse(
                        pgwire::error::ErrorInfo::from(error).into(),
                    ))
                    .await;
                break;
            }
        };
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            break;
        }
        let is_extended = match socket.state() {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => message.is_extended_query(),
        };
        let is_cancel = matches!(message, PgWireFrontendMessage::CancelRequest(_));
        mid_sequence =
            message.is_extended_query() && !matches!(message, PgWireFrontendMessage::Sync(_));
        // As PostgreSQL does, the replies to Parse, Bind, Describe, Execute and Close
        // wait in the buffer for the Sync (or Flush) that ends the sequence: one write
        // per round trip instead of one per message.
        socket.get_mut().hold = mid_sequence && !matches!(message, PgWireFrontendMessage::Flush(_));
        let result = process_message(
            message,
            &mut socket,
            connection.clone(),
            connection.clone(),
            connection.clone(),
            connection.clone(),
            cancel_handler.clone(),
        )
        .await;
        if let Err(e) = result {
            let fatal = e.is_fatal();
            if fatal {
                socket.get_mut().hold = false;
            }
            if process_error(&mut socket, e, is_extended).await.is_err() || fatal {
                break;
            }
        }
        // A COPY's start must reach the client, which sends its data only after it.
        if matches!(socket.state(), PgWireConnectionState::CopyInProgress(_))
            && socket.get_ref().holding()
        {
            socket.get_mut().hold = false;
            if socket.flush().await.is_err() {
                break;
            }
        }
        if is_cancel {
            break;
        }
    }
}

/// The message of an oversized-message error, if `e` is one.
fn too_large(e: &PgWireError) -> Option<String> {
    match e {
        PgWireError::IoError(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<MessageTooLarge>())
            .map(|m| m.to_string()),
        PgWireError::MessageTooLarge(max, len) => Some(format!(
            "message of {len} bytes is longer than the {max} bytes allowed"
        )),
        _ => None,
    }
}

/// A client message longer than `max_message_size`.
#[derive(Debug)]
struct MessageTooLarge {
    length: usize,
    max: usize,
}

impl std::fmt::Display for MessageTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "message of {} bytes exceeds max_message_size ({} bytes)",
            self.length, self.max
        )
    }
}

impl std::error::Error for MessageTooLarge {}

/// Reads the frontend message headers as bytes arrive and fails the read as soon as a
/// header announces a message longer than the limit, before its body is buffered.
///
/// It also holds back writes while `hold` is set (see the message loop), up to
/// [`HOLD_LIMIT`] bytes; a flush with `hold` unset writes them.
struct MessageSizeLimit<S> {
    inner: S,
    /// Keep written bytes in `pending` and make flushes wait.
    hold: bool,
    pending: Vec<u8>,
    /// Bytes of `pending` already written to `inner`.
    sent: usize,
    max: usize,
    /// The first message (startup or cancel request) has no type byte.
    typed: bool,
    header: [u8; 5],
    have: usize,
    /// Body bytes of the current message still to pass.
    skip: usize,
}

impl<S> MessageSizeLimit<S> {
    fn new(inner: S, max: usize, already_read: &[u8]) -> Self {
        let mut limit = MessageSizeLimit {
            inner,
            hold: false,
            pending: Vec::new(),
            sent: 0,
            max,
            typed: false,
            header: [0; 5],
            have: 0,
            skip: 0,
        };
        // Bytes pgwire read during TLS negotiation are checked like the rest; the
        // startup message has its own, smaller limit in pgwire.
        let _ = limit.scan(already_read);
        limit
    }

    fn scan(&mut self, mut data: &[u8]) -> Result<(), MessageTooLarge> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let header_len = if self.typed { 5 } else { 4 };
            let n = (header_len - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have < header_len {
                break;
            }
            let len_bytes = [
                self.header[header_len - 4],
                self.header[header_len - 3],
                self.header[header_len - 2],
                self.header[header_len - 1],
            ];
            let length = i32::from_be_bytes(len_bytes);
            self.have = 0;
            self.typed = true;
            // A negative or too-short length is pgwire's to reject as malformed.
            let length = usize::try_from(length).unwrap_or(usize::MAX);
            if length > self.max {
                return Err(MessageTooLarge {
                    length,
                    max: self.max,
                });
            }
            self.skip = length.saturating_sub(4);
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MessageSizeLimit<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                match this.scan(fresh) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(e) => Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e))),
                }
            }
            other => other,
        }
    }
}

/// Bytes held back at most before they are written anyway (a large result in an
/// extended-query sequence).
const HOLD_LIMIT: usize = 64 * 1024;

impl<S> MessageSizeLimit<S> {
    /// True while written bytes wait for a flush.
    fn holding(&self) -> bool {
        self.hold || self.sent < self.pending.len()
    }
}

impl<S: AsyncWrite + Unpin> MessageSizeLimit<S> {
    /// Writes out the held-back bytes.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MessageSizeLimit<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // Held bytes and these go out in one write when the hold has ended.
        let appendable = this.hold || (this.sent == 0 && !this.pending.is_empty());
        if appendable && this.pending.len() + buf.len() <= HOLD_LIMIT {
            this.pending.extend_from_slice(buf);
            if !this.hold
                && let Poll::Ready(Err(e)) = this.poll_drain(cx)
            {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.hold {
            return Poll::Ready(Ok(()));
        }
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_read_across_reads() {
        let mut limit = MessageSizeLimit::new((), 100, &[]);
        // Startup: length 8, then 4 body bytes.
        assert!(limit.scan(&[0, 0, 0, 8, 1, 2]).is_ok());
        assert!(limit.scan(&[3, 4]).is_ok());
        // Query 'Q' of length 10, header split across reads.
        assert!(limit.scan(&[b'Q', 0, 0]).is_ok());
        assert!(limit.scan(&[0, 10, 1, 2, 3, 4, 5, 6]).is_ok());
        // A message of 1000 bytes is refused at its header.
        let e = limit.scan(&[b'Q', 0, 0, 3, 232]).unwrap_err();
        assert_eq!((e.length, e.max), (1000, 100));
    }
}
