//! The pooled HTTP client that every HTTP deployment sends through: hyper
//! with hyper-util's connection pool, our own connector, and nothing else.
//!
//! One pool per distinct connect timeout, so deployments on the same host
//! share keep-alive connections. TLS is rustls with the ring provider and
//! the operating system's roots (rustls-platform-verifier); HTTP/2 is used
//! where the upstream offers it through ALPN, HTTP/1.1 otherwise and always
//! for `http://`. Idle connections are closed after 30 s, before the load
//! balancers in front of most APIs close them under our feet. Redirects are
//! never followed: a 3xx is an answer like any other failed status.
//!
//! This replaces reqwest on the request path. reqwest's layers (URL
//! re-parsing, the redirect policy, its request builder and error boxing)
//! cost about a sixth of the gateway's CPU under load, and the gateway uses
//! none of what they add: its URLs are parsed once, when a deployment is
//! built, into `http::Uri`s.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;

use crate::UpstreamError;

static INSTALL_CRYPTO: Once = Once::new();

/// How long an idle pooled connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The body of every upstream request: bytes already in memory, sent
/// without a copy, with a known length.
pub(crate) type RequestBody = Full<Bytes>;

/// A pooled client with one connect timeout.
pub(crate) type HttpClient = Client<Connector, RequestBody>;

/// Shared by clone: every clone sees the same pools.
#[derive(Clone, Default)]
pub struct UpstreamClients {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Certificates trusted beside the operating system's (tests only).
    extra_roots: Vec<CertificateDer<'static>>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Built on first use: loading the platform's verifier reads the
    /// system's roots.
    tls: Option<Arc<ClientConfig>>,
    by_connect_timeout: HashMap<Duration, HttpClient>,
}

impl std::fmt::Debug for UpstreamClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pools = self.state().by_connect_timeout.len();
        f.debug_struct("UpstreamClients")
            .field("pools", &pools)
            .finish()
    }
}

/// A per-request connect timeout, rounded up to one of a few steps (tenths
/// of a second below one second, whole seconds up to a minute), so that
/// requests cannot make the gateway build clients without bound.
pub(crate) fn connect_step(requested: Duration) -> Duration {
    let millis = requested.as_millis().clamp(100, 60_000) as u64;
    if millis < 1000 {
        Duration::from_millis(millis.div_ceil(100) * 100)
    } else {
        Duration::from_secs(millis.div_ceil(1000))
    }
}

impl UpstreamClients {
    pub fn new() -> UpstreamClients {
        INSTALL_CRYPTO.call_once(|| {
            // Only one provider is compiled in; installing it explicitly keeps
            // rustls from guessing (it refuses to when it cannot).
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        UpstreamClients::default()
    }

    /// Clients that also trust `roots`, for tests against a local HTTPS
    /// server with a certificate of their own.
    #[cfg(test)]
    pub(crate) fn with_extra_roots(roots: Vec<CertificateDer<'static>>) -> UpstreamClients {
        UpstreamClients {
            shared: Arc::new(Shared {
                extra_roots: roots,
                state: Mutex::default(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The client for a connect timeout, built on first use.
    pub(crate) fn get(&self, connect_timeout: Duration) -> Result<HttpClient, UpstreamError> {
        let mut state = self.state();
        if let Some(client) = state.by_connect_timeout.get(&connect_timeout) {
            return Ok(client.clone());
        }
        let tls = match &state.tls {
            Some(tls) => tls.clone(),
            None => {
                let tls = Arc::new(tls_config(&self.shared.extra_roots).map_err(|error| {
                    UpstreamError::Misconfigured(format!("cannot set up TLS: {error}"))
                })?);
                state.tls = Some(tls.clone());
                tls
            }
        };
        let client = build_client(tls, connect_timeout);
        state
            .by_connect_timeout
            .insert(connect_timeout, client.clone());
        Ok(client)
    }
}

/// Longest wait for a connection in `exchange`.
const EXCHANGE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer `exchange` reads.
const MAX_EXCHANGE_BODY: usize = 64 * 1024 * 1024;

impl UpstreamClients {
    /// Sends one request that belongs to no deployment (the OTLP exporter's
    /// posts, the admin commands of the CLI) and reads its answer whole,
    /// all within `timeout`. An answer longer than 64 MiB is cut there.
    /// Errors are classified as for deployments; their messages hold
    /// neither the URL nor a header.
    pub async fn exchange(
        &self,
        request: http::Request<Bytes>,
        timeout: Duration,
    ) -> Result<http::Response<Bytes>, UpstreamError> {
        let client = self.get(EXCHANGE_CONNECT_TIMEOUT)?;
        let exchange = async {
            let response = client
                .request(request.map(Full::new))
                .await
                .map_err(|error| UpstreamError::from_client(&error))?;
            let (head, body) = response.into_parts();
            let body = crate::transport::read_capped(body, MAX_EXCHANGE_BODY).await?;
            Ok(http::Response::from_parts(head, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(UpstreamError::Timeout {
                phase: crate::TimeoutPhase::Request,
            }))
    }
}

/// rustls with the ring provider, the platform's verifier, and ALPN
/// offering HTTP/2 then HTTP/1.1 (set by the connector).
fn tls_config(extra_roots: &[CertificateDer<'static>]) -> Result<ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = if extra_roots.is_empty() {
        rustls_platform_verifier::Verifier::new(provider.clone())?
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(
            extra_roots.iter().cloned(),
            provider.clone(),
        )?
    };
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

fn build_client(tls: Arc<ClientConfig>, connect_timeout: Duration) -> HttpClient {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_keepalive(Some(Duration::from_secs(30)));
    // Also given to the TCP connector, which shares it among a host's
    // addresses (trying the next when one hangs); the outer timeout covers
    // the TLS handshake too.
    tcp.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(Arc::unwrap_or_clone(tls))
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(tcp);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_max_idle_per_host(1024)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_adaptive_window(true)
        .build(Connector {
            inner: https,
            timeout: connect_timeout,
        })
}

/// TCP, then TLS for `https://`, within one connect timeout.
#[derive(Clone)]
pub(crate) struct Connector {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        let connecting = self.inner.call(destination);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected,
                Err(_) => Err(Box::new(ConnectTimedOut) as BoxError),
            }
        })
    }
}

/// The connector's own timeout ran out (TCP or TLS still unfinished).
#[derive(Debug)]
pub(crate) struct ConnectTimedOut;

impl std::fmt::Display for ConnectTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the connection was not established in time")
    }
}

impl std::error::Error for ConnectTimedOut {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_request_connect_timeouts_fall_on_few_steps() {
        assert_eq!(
            connect_step(Duration::from_millis(1)),
            Duration::from_millis(100)
        );
        assert_eq!(
            connect_step(Duration::from_millis(250)),
            Duration::from_millis(300)
        );
        assert_eq!(
            connect_step(Duration::from_millis(1200)),
            Duration::from_secs(2)
        );
        assert_eq!(
            connect_step(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
        let steps: std::collections::HashSet<Duration> = (0..100_000)
            .map(|millis| connect_step(Duration::from_millis(millis)))
            .collect();
        assert!(steps.len() <= 70, "{}", steps.len());
    }
}
