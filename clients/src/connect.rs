//! Connecting: the URL, TLS, limits, and the Handshake that trades a user name and
//! password (Basic) for a bearer token sent on every later call.

use std::sync::Arc;
use std::time::Duration;

use arrow_flight::HandshakeRequest;
use arrow_flight::flight_service_client::FlightServiceClient;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::load::FailableUploads;

/// Default for [`ClientBuilder::max_message_size`]: 256 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 256 << 20;

/// Default for [`ClientBuilder::connect_timeout`]: 10 seconds.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Puts the caller's credentials (a bearer token, or Basic credentials for servers that
/// hand out no token) into every request.
#[derive(Clone)]
pub(crate) struct Credentials(Option<MetadataValue<Ascii>>);

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Options for a [`Client`]; made by [`Client::builder`], finished by
/// [`connect`](ClientBuilder::connect).
///
/// ```no_run
/// # async fn run() -> tessera_client::Result<()> {
/// use std::time::Duration;
/// use tessera_client::Client;
///
/// let pem = std::fs::read("server.crt").expect("the server's certificate");
/// let client = Client::builder("https://db.example.com:50051")
///     .credentials("alice", "secret")
///     .tls_ca_certificate(pem)
///     .connect_timeout(Duration::from_secs(5))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientBuilder {
    url: String,
    credentials: Option<(String, String)>,
    ca_certificate: Option<Vec<u8>>,
    domain: Option<String>,
    max_message_size: usize,
    connect_timeout: Duration,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .field("ca_certificate", &self.ca_certificate.is_some())
            .field("domain", &self.domain)
            .field("max_message_size", &self.max_message_size)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl ClientBuilder {
    pub(crate) fn new(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            credentials: None,
            ca_certificate: None,
            domain: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// A user name and password, sent once as Basic credentials in the Handshake; the
    /// bearer token the server answers with goes with every later call. Without
    /// credentials the client still calls Handshake, for a session of its own, where
    /// the server trusts the caller (Tessera's `auth.method = "trust"`).
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// The PEM certificate (or certificates) that the server's TLS certificate must
    /// chain to: the server's own self-signed certificate, or its issuer's. Needed for
    /// `https://`, which trusts no built-in roots.
    pub fn tls_ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_certificate = Some(pem.into());
        self
    }

    /// The name the server's certificate must carry, when it is not the URL's host
    /// (for example `localhost` for a server dialled by IP address).
    pub fn tls_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// The largest gRPC message accepted from the server and sent to it (default
    /// [`DEFAULT_MAX_MESSAGE_SIZE`]). Results arrive in messages of a few MiB, so this
    /// bounds one message, not a result. The server has a limit of its own.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// How long to wait for the connection (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Connects and authenticates. Fails with `UNAUTHENTICATED` for wrong credentials,
    /// or none where the server requires them.
    pub async fn connect(self) -> Result<Client> {
        let (uri, tls) = endpoint_uri(&self.url)?;
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| Error::InvalidArgument(format!("URL '{}': {e}", self.url)))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        match (tls, &self.ca_certificate) {
            (true, Some(pem)) => {
                let mut config =
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem.clone()));
                if let Some(domain) = &self.domain {
                    config = config.domain_name(domain.clone());
                }
                endpoint = endpoint
                    .tls_config(config)
                    .map_err(|e| Error::InvalidArgument(format!("TLS settings: {e}")))?;
            }
            (true, None) => {
                return Err(Error::InvalidArgument(format!(
                    "'{}' asks for TLS: give the certificate to trust with tls_ca_certificate",
                    self.url
                )));
            }
            (false, Some(_)) => {
                return Err(Error::InvalidArgument(format!(
                    "a TLS certificate was given but '{}' is not a TLS URL (https:// or grpc+tls://)",
                    self.url
                )));
            }
            (false, None) => {}
        }
        let channel = endpoint.connect().await.map_err(|source| Error::Connect {
            endpoint: uri.clone(),
            source,
        })?;
        let credentials = handshake(
            channel.clone(),
            self.credentials.as_ref(),
            self.max_message_size,
        )
        .await?;
        let flight = FlightServiceClient::with_interceptor(
            FailableUploads(channel),
            Credentials(credentials),
        )
        .max_decoding_message_size(self.max_message_size)
        .max_encoding_message_size(self.max_message_size);
        Ok(Client::new(flight, Arc::from(uri)))
    }
}

/// The URL tonic dials, and whether it is TLS. Flight's own schemes (`grpc://`,
/// `grpc+tcp://`, `grpc+tls://`) stand for `http://` and `https://`; a bare
/// `host:port` is `http://`.
fn endpoint_uri(url: &str) -> Result<(String, bool)> {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("http".to_string(), url),
    };
    let tls = match scheme.as_str() {
        "http" | "grpc" | "grpc+tcp" => false,
        "https" | "grpc+tls" => true,
        other => {
            return Err(Error::InvalidArgument(format!(
                "URL '{url}': unknown scheme '{other}' (http, https, grpc, grpc+tcp, grpc+tls)"
            )));
        }
    };
    if rest.is_empty() {
        return Err(Error::InvalidArgument(format!("URL '{url}' has no host")));
    }
    let scheme = if tls { "https" } else { "http" };
    Ok((format!("{scheme}://{rest}"), tls))
}

/// The Handshake: Basic credentials (if any) for a bearer token. Returns the
/// `authorization` value for later calls: the token, or the Basic credentials again if
/// the server hands out no token, or nothing.
async fn handshake(
    channel: Channel,
    credentials: Option<&(String, String)>,
    max_message_size: usize,
) -> Result<Option<MetadataValue<Ascii>>> {
    let basic = credentials
        .map(|(user, password)| {
            let encoded = STANDARD.encode(format!("{user}:{password}"));
            MetadataValue::try_from(format!("Basic {encoded}"))
                .map_err(|e| Error::InvalidArgument(format!("credentials: {e}")))
        })
        .transpose()?;
    let mut flight = FlightServiceClient::new(channel).max_decoding_message_size(max_message_size);
    let mut request = tonic::Request::new(futures::stream::iter([HandshakeRequest::default()]));
    if let Some(basic) = &basic {
        request
            .metadata_mut()
            .insert("authorization", basic.clone());
    }
    let response = match flight.handshake(request).await {
        Ok(response) => response,
        // A server without a Handshake takes credentials (if any) on every call.
        Err(status) if status.code() == Code::Unimplemented => return Ok(basic),
        Err(status) => return Err(status.into()),
    };
    let bearer = response
        .metadata()
        .get("authorization")
        .filter(|v| v.to_str().is_ok_and(|s| s.starts_with("Bearer ")))
        .cloned();
    // Read the answer to its end: a failure may come as the stream's status.
    let mut answers = response.into_inner();
    while answers.message().await?.is_some() {}
    Ok(bearer.or(basic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_map_to_http_or_https() {
        let ok = |url: &str| endpoint_uri(url).unwrap();
        assert_eq!(ok("http://h:1"), ("http://h:1".into(), false));
        assert_eq!(ok("grpc://h:1"), ("http://h:1".into(), false));
        assert_eq!(ok("grpc+tcp://h:1"), ("http://h:1".into(), false));
        assert_eq!(ok("h:1"), ("http://h:1".into(), false));
        assert_eq!(ok("HTTPS://h:1"), ("https://h:1".into(), true));
        assert_eq!(ok("grpc+tls://h:1"), ("https://h:1".into(), true));
        let bad = endpoint_uri("ftp://h:1").unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert!(endpoint_uri("http://").is_err());
    }
}
