//! The message loop of one connection: TLS negotiation, the startup timeout, the
//! message size limit, and a clean close on shutdown. A malformed message ends only
//! its own connection; a query's error never ends one.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use futures::{FutureExt, SinkExt, StreamExt};
use pgwire::api::{ClientInfo, PgWireConnectionState};
use pgwire::error::PgWireError;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::TlsAcceptor;
use pgwire::tokio::server::{negotiate_tls, process_error, process_message};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
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
/// `evicted` fires when the server needs this connection's startup slot for a newer
/// one (see [`crate::server`]); it only matters before authentication completes.
pub(crate) async fn serve_connection(
    tcp: TcpStream,
    tls: Option<TlsAcceptor>,
    connection: Arc<PgConnection>,
    cancels: Arc<CancelRegistry>,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
    mut evicted: oneshot::Receiver<()>,
) {
    let deadline = tokio::time::sleep(limits.startup_timeout);
    tokio::pin!(deadline);
    let negotiated = tokio::select! {
        _ = &mut deadline => return,
        _ = &mut evicted => return,
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
            // After authentication the startup slot is given back (see `PgConnection`)
            // and this branch is off.
            _ = &mut evicted, if in_startup => {
                // Newer connections need the startup slot; this one has had its turn.
                tracing::debug!("closing a connection still authenticating to admit a newer one");
                let error = user_error(
                    "FATAL",
                    errors::TOO_MANY_CONNECTIONS,
                    "too many connections are authenticating at once; this one waited longest",
                );
                send_fatal(&mut socket, error).await;
                break;
            }
            _ = shutdown.changed(), if !mid_sequence && !copying => {
                let error = user_error(
                    "FATAL",
                    errors::ADMIN_SHUTDOWN,
                    "terminating connection due to administrator command",
                );
                send_fatal(&mut socket, error).await;
                break;
            }
            // pgwire's decoder trusts the lengths inside a message; the scanner checks
            // the ones it knows, and a panic in any other is caught here.
            message = AssertUnwindSafe(socket.next()).catch_unwind() => message,
        };
        let message = match message {
            Err(payload) => {
                tracing::warn!(panic = %panic_message(payload.as_ref()), "decoding a message panicked");
                let error = user_error(
                    "FATAL",
                    errors::PROTOCOL_VIOLATION,
                    "invalid message: its fields do not fit its length",
                );
                send_fatal(&mut socket, error).await;
                break;
            }
            Ok(None) => break,
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(e))) => {
                // A malformed or oversized message: report it and close this connection.
                let (code, text) = match too_large(&e) {
                    Some(text) => (errors::PROGRAM_LIMIT_EXCEEDED, text),
                    None => (errors::PROTOCOL_VIOLATION, format!("invalid message: {e}")),
                };
                tracing::debug!(error = %e, "closing a connection after a bad message");
                send_fatal(&mut socket, user_error("FATAL", code, text)).await;
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
        let has_text = matches!(
            message,
            PgWireFrontendMessage::Query(_) | PgWireFrontendMessage::Parse(_)
        );
        let result = if has_text && !socket.get_mut().next_text_valid() {
            // pgwire replaced the bad bytes; PostgreSQL refuses the statement instead.
            Err(user_error(
                "ERROR",
                errors::CHARACTER_NOT_IN_REPERTOIRE,
                "invalid byte sequence for encoding \"UTF8\" in the statement text",
            ))
        } else {
            let processed = AssertUnwindSafe(process_message(
                message,
                &mut socket,
                connection.clone(),
                connection.clone(),
                connection.clone(),
                connection.clone(),
                cancel_handler.clone(),
            ))
            .catch_unwind()
            .await;
            match processed {
                Ok(result) => result,
                Err(payload) if in_startup => {
                    // pgwire reads the authentication messages' fields unchecked.
                    let message = panic_message(payload.as_ref());
                    tracing::warn!(panic = %message, "an authentication message panicked");
                    Err(user_error(
                        "FATAL",
                        errors::PROTOCOL_VIOLATION,
                        "invalid authentication message: its fields do not fit its length",
                    ))
                }
                Err(payload) => {
                    // A bug: this statement fails with XX000; the connection goes on.
                    let message = panic_message(payload.as_ref());
                    tracing::error!(panic = %message, "a statement panicked");
                    Err(user_error(
                        "ERROR",
                        errors::INTERNAL_ERROR,
                        format!("internal error: {message}"),
                    ))
                }
            }
        };
        if let Err(e) = result {
            // Any error before authentication completes ends the connection:
            // `process_error` would mark a non-fatal one ReadyForQuery, as if the
            // client had logged in.
            if e.is_fatal() || in_startup {
                // A FATAL error ends the connection: no ReadyForQuery after it.
                send_fatal(&mut socket, e).await;
                break;
            }
            if process_error(&mut socket, e, is_extended).await.is_err() {
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
    // The socket is closed: its slots go back now, whoever still holds the handler.
    connection.release_slots();
}

/// Sends a FATAL error (and whatever replies wait in the buffer before it); the
/// caller then closes the connection.
async fn send_fatal<S, C>(socket: &mut Framed<MessageSizeLimit<S>, C>, error: PgWireError)
where
    Framed<MessageSizeLimit<S>, C>: futures::Sink<PgWireBackendMessage> + Unpin,
{
    socket.get_mut().hold = false;
    let mut info = pgwire::error::ErrorInfo::from(error);
    info.severity = "FATAL".to_string();
    let _ = socket
        .send(PgWireBackendMessage::ErrorResponse(info.into()))
        .await;
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
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
    /// The type byte of the current message (0 for the untyped first one).
    kind: u8,
    /// The body of the current message, gathered when it is one [`check_body`] reads.
    body: Option<Vec<u8>>,
    /// For every Query and Parse message scanned and not yet taken by the message
    /// loop, in order: whether its SQL text is valid UTF-8. pgwire decodes the text
    /// lossily, so the loop asks here before running one.
    text_valid: std::collections::VecDeque<bool>,
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
            kind: 0,
            body: None,
            text_valid: std::collections::VecDeque::new(),
        };
        // Bytes pgwire read during TLS negotiation are checked like the rest; the
        // startup message has its own, smaller limit in pgwire.
        let _ = limit.scan(already_read);
        limit
    }

    fn scan(&mut self, mut data: &[u8]) -> Result<(), ScanError> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                if let Some(body) = self.body.as_mut() {
                    body.extend_from_slice(&data[..n]);
                }
                self.skip -= n;
                data = &data[n..];
                if self.skip == 0 {
                    self.end_body()?;
                }
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
            self.kind = if self.typed { self.header[0] } else { 0 };
            self.have = 0;
            self.typed = true;
            // A negative or too-short length is pgwire's to reject as malformed.
            let length = usize::try_from(length).unwrap_or(usize::MAX);
            if length > self.max {
                return Err(ScanError::TooLarge(MessageTooLarge {
                    length,
                    max: self.max,
                }));
            }
            self.skip = length.saturating_sub(4);
            self.body = CHECKED_KINDS
                .contains(&self.kind)
                .then(|| Vec::with_capacity(self.skip.min(64 * 1024)));
            if self.skip == 0 {
                self.end_body()?;
            }
        }
        Ok(())
    }

    /// A message's body is complete: check it if it is one pgwire would trust.
    fn end_body(&mut self) -> Result<(), ScanError> {
        if let Some(body) = self.body.take() {
            let text_valid = check_body(self.kind, &body).map_err(ScanError::Malformed)?;
            if let Some(valid) = text_valid {
                self.text_valid.push_back(valid);
            }
        }
        Ok(())
    }

    /// Whether the SQL text of the next Query or Parse message is valid UTF-8.
    fn next_text_valid(&mut self) -> bool {
        self.text_valid.pop_front().unwrap_or(true)
    }
}

/// The frontend messages whose bodies are checked before pgwire decodes them: Query,
/// Parse, Bind, Execute, Describe and Close. pgwire reads their fields with `bytes`'
/// panicking getters, so a length that lies would panic inside its decoder.
const CHECKED_KINDS: [u8; 6] = [b'Q', b'P', b'B', b'E', b'D', b'C'];

/// Why the scanner refused the bytes a client sent.
#[derive(Debug)]
enum ScanError {
    TooLarge(MessageTooLarge),
    Malformed(MalformedMessage),
}

impl From<ScanError> for io::Error {
    fn from(e: ScanError) -> io::Error {
        match e {
            ScanError::TooLarge(e) => io::Error::new(io::ErrorKind::InvalidData, e),
            ScanError::Malformed(e) => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

/// A message whose fields do not add up to its length.
#[derive(Debug)]
struct MalformedMessage {
    kind: u8,
    reason: &'static str,
}

impl std::fmt::Display for MalformedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.kind {
            b'Q' => "Query",
            b'P' => "Parse",
            b'B' => "Bind",
            b'E' => "Execute",
            b'D' => "Describe",
            b'C' => "Close",
            _ => "protocol",
        };
        write!(f, "invalid {name} message: {}", self.reason)
    }
}

impl std::error::Error for MalformedMessage {}

/// Reads a message body field by field, never past its end.
struct BodyReader<'a> {
    rest: &'a [u8],
    kind: u8,
}

impl<'a> BodyReader<'a> {
    fn fail<T>(&self, reason: &'static str) -> Result<T, MalformedMessage> {
        Err(MalformedMessage {
            kind: self.kind,
            reason,
        })
    }

    fn bytes(&mut self, n: usize, reason: &'static str) -> Result<&'a [u8], MalformedMessage> {
        if n > self.rest.len() {
            return self.fail(reason);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn cstring(&mut self) -> Result<&'a [u8], MalformedMessage> {
        match self.rest.iter().position(|b| *b == 0) {
            Some(end) => {
                let text = &self.rest[..end];
                self.rest = &self.rest[end + 1..];
                Ok(text)
            }
            None => self.fail("a string is not terminated"),
        }
    }

    fn i16(&mut self) -> Result<i16, MalformedMessage> {
        let b = self.bytes(2, "the message ends inside a field")?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, MalformedMessage> {
        let b = self.bytes(4, "the message ends inside a field")?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A non-negative count of `width`-byte items, and the items.
    fn array(&mut self, width: usize) -> Result<(), MalformedMessage> {
        let count = usize::try_from(self.i16()?).or_else(|_| self.fail("a negative count"))?;
        self.bytes(count * width, "a count exceeds the message length")?;
        Ok(())
    }

    fn end(&self) -> Result<(), MalformedMessage> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            self.fail("bytes left over after its last field")
        }
    }
}

/// Checks that the fields of a Query, Parse, Bind, Execute, Describe or Close body fit
/// its length exactly. For Query and Parse, returns whether the SQL text is UTF-8.
fn check_body(kind: u8, body: &[u8]) -> Result<Option<bool>, MalformedMessage> {
    let mut r = BodyReader { rest: body, kind };
    match kind {
        b'Q' => {
            let text = r.cstring()?;
            r.end()?;
            Ok(Some(std::str::from_utf8(text).is_ok()))
        }
        b'P' => {
            r.cstring()?;
            let text = r.cstring()?;
            r.array(4)?;
            r.end()?;
            Ok(Some(std::str::from_utf8(text).is_ok()))
        }
        b'B' => {
            r.cstring()?;
            r.cstring()?;
            r.array(2)?;
            let parameters =
                usize::try_from(r.i16()?).or_else(|_| r.fail("a negative parameter count"))?;
            for _ in 0..parameters {
                let length = r.i32()?;
                if length >= 0 {
                    r.bytes(
                        length as usize,
                        "a parameter's length exceeds the message length",
                    )?;
                } else if length != -1 {
                    return r.fail("a parameter length below -1");
                }
            }
            r.array(2)?;
            r.end()?;
            Ok(None)
        }
        b'E' => {
            r.cstring()?;
            r.i32()?;
            r.end()?;
            Ok(None)
        }
        b'D' | b'C' => {
            match r.bytes(1, "the message is empty")? {
                [b'S'] | [b'P'] => {}
                _ => return r.fail("the target is neither 'S' nor 'P'"),
            }
            r.cstring()?;
            r.end()?;
            Ok(None)
        }
        _ => Ok(None),
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
                    Err(e) => Poll::Ready(Err(e.into())),
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
        assert!(
            limit
                .scan(&[0, 10, b'S', b'E', b'L', b' ', b'1', 0])
                .is_ok()
        );
        // A message of 1000 bytes is refused at its header.
        match limit.scan(&[b'Q', 0, 0, 3, 232]).unwrap_err() {
            ScanError::TooLarge(e) => assert_eq!((e.length, e.max), (1000, 100)),
            other => panic!("{other:?}"),
        }
    }

    /// A Bind message with the given parameters (as length, bytes) and nothing else.
    fn bind(parameters: &[(i32, &[u8])]) -> Vec<u8> {
        let mut body = vec![0, 0, 0, 0]; // portal "", statement "", no format codes
        body.extend_from_slice(&(parameters.len() as i16).to_be_bytes());
        for (length, bytes) in parameters {
            body.extend_from_slice(&length.to_be_bytes());
            body.extend_from_slice(bytes);
        }
        body.extend_from_slice(&0i16.to_be_bytes());
        body
    }

    #[test]
    fn bodies_whose_fields_lie_are_refused() {
        assert!(check_body(b'B', &bind(&[(3, b"abc"), (-1, b"")])).is_ok());
        // A parameter that claims more bytes than the message has.
        let e = check_body(b'B', &bind(&[(1000, b"abc")])).unwrap_err();
        assert!(e.to_string().contains("Bind"), "{e}");
        assert!(check_body(b'B', &bind(&[(-7, b"")])).is_err());
        // Cut short anywhere, a Bind is refused.
        let full = bind(&[(3, b"abc")]);
        for cut in 0..full.len() {
            assert!(check_body(b'B', &full[..cut]).is_err(), "cut at {cut}");
        }
        assert!(check_body(b'E', b"\0\0\0\0\0").is_ok());
        assert!(check_body(b'E', b"\0\0\0").is_err());
        assert!(check_body(b'D', b"Sname\0").is_ok());
        assert!(check_body(b'D', b"Xname\0").is_err());
        assert!(check_body(b'P', b"\0SELECT 1\0\0\x05").is_err());
        assert_eq!(check_body(b'Q', b"SELECT 1\0").unwrap(), Some(true));
        assert_eq!(check_body(b'Q', b"SELECT '\xff'\0").unwrap(), Some(false));
        assert_eq!(
            check_body(b'P', b"\0SELECT '\xc3'\0\0\0").unwrap(),
            Some(false)
        );
    }

    #[test]
    fn the_scanner_remembers_which_texts_are_not_utf8() {
        let mut limit = MessageSizeLimit::new((), 100, &[]);
        limit.scan(&[0, 0, 0, 8, 0, 3, 0, 0]).unwrap();
        let mut bytes = Vec::new();
        for text in [&b"SELECT 1"[..], b"SELECT '\xff'", b"SELECT 2"] {
            bytes.push(b'Q');
            bytes.extend_from_slice(&(text.len() as i32 + 5).to_be_bytes());
            bytes.extend_from_slice(text);
            bytes.push(0);
        }
        // Byte by byte, as a slow client sends them.
        for b in &bytes {
            limit.scan(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(
            (0..3).map(|_| limit.next_text_valid()).collect::<Vec<_>>(),
            [true, false, true]
        );
    }
}
