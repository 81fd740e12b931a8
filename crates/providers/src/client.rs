//! The pooled HTTP client that every HTTP deployment sends through: hyper's
//! connection-level client, a pool of our own, our own connector, and
//! nothing else.
//!
//! One pool per distinct connect timeout, so deployments on the same host
//! share keep-alive connections. TLS is rustls with the ring provider and
//! the operating system's roots (rustls-platform-verifier); HTTP/2 is used
//! where the upstream offers it through ALPN, HTTP/1.1 otherwise and always
//! for `http://`. Idle connections are closed after 30 s, before the load
//! balancers in front of most APIs close them under our feet. Redirects are
//! never followed: a 3xx is an answer like any other failed status.
//!
//! This replaces reqwest on the request path, and then hyper-util's pooled
//! `legacy::Client`. reqwest's layers (URL re-parsing, the redirect policy,
//! its request builder and error boxing) cost about a sixth of the
//! gateway's CPU under load; hyper-util's client boxed its future, formatted
//! the `Host` header, raced a lazily built connect future against the
//! checkout, and spawned a task per HTTP/1.1 request to return its
//! connection to the pool, about 8% of a proxied request's instructions.
//! HTTP/1.1 is then spoken by our own code ([`crate::h1`]) rather than
//! hyper's client connection, whose task and channel per connection and
//! buffers per request cost about a seventh of a proxied request's
//! instructions. An HTTP/1.1 connection goes back to the pool from the
//! answer's body itself, the moment its last byte has been read
//! ([`UpstreamBody`]), and a request takes the most recently returned
//! connection (the warmest, and the one least likely to have been closed by
//! the upstream) once it has checked that nothing, not even its end, has
//! arrived on it while it was idle. HTTP/2 stays hyper's.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderValue;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http2;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use switchboard_core::mix::FnvBuild;
use tower_service::Service;

use crate::UpstreamError;
use crate::h1;
use crate::shard;

static INSTALL_CRYPTO: Once = Once::new();

/// How long an idle pooled connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The body of every upstream request: bytes already in memory, sent
/// without a copy, with a known length.
pub(crate) struct RequestBody {
    data: Bytes,
}

impl RequestBody {
    pub(crate) fn new(data: Bytes) -> RequestBody {
        RequestBody { data }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.data.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(std::mem::take(&mut self.data)))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.len() as u64)
    }
}

/// An upstream connection's socket: TCP, with TLS for `https://`.
type Io = TokioIo<MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>>;

/// Most idle HTTP/1.1 connections kept per origin and serving thread.
const MAX_IDLE_PER_ORIGIN: usize = 1024;

/// Most times a request is sent again because a kept connection turned out
/// to be closed before the request was written on it.
const MAX_STALE_RETRIES: usize = 3;

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

/// Marks a request whose answer keeps every header, even a successful
/// one (see `h1::READ_OF_SUCCESS`): `exchange`'s.
#[derive(Clone, Copy)]
struct EveryHeader;

/// Longest wait for a connection in `exchange`.
const EXCHANGE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer `exchange` reads.
const MAX_EXCHANGE_BODY: usize = 64 * 1024 * 1024;

impl UpstreamClients {
    /// Sends one request that belongs to no deployment (the OTLP exporter's
    /// posts, the admin commands of the CLI) and reads its answer whole,
    /// all within `timeout`. An answer longer than 64 MiB is cut there.
    /// Errors are classified as for deployments; their messages hold
    /// neither the URL nor a header. The answer keeps every header (a
    /// deployment's successful answer keeps only those read of it,
    /// `h1::READ_OF_SUCCESS`).
    pub async fn exchange(
        &self,
        request: http::Request<Bytes>,
        timeout: Duration,
    ) -> Result<http::Response<Bytes>, UpstreamError> {
        let client = self.get(EXCHANGE_CONNECT_TIMEOUT)?;
        let exchange = async {
            let mut request = request.map(RequestBody::new);
            request.extensions_mut().insert(EveryHeader);
            let response = client
                .request(request)
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
    build_client_idle(tls, connect_timeout, IDLE_TIMEOUT)
}

/// A client whose idle connections close after `idle_timeout` (tests).
#[cfg(test)]
pub(crate) fn plain_client(idle_timeout: Duration) -> HttpClient {
    let tls = tls_config(&[]).expect("the platform's verifier");
    build_client_idle(Arc::new(tls), Duration::from_secs(5), idle_timeout)
}

/// A client trusting the tests' own certificate authority, whose idle
/// connections close after `idle_timeout`.
#[cfg(test)]
pub(crate) fn trusting_client(idle_timeout: Duration) -> HttpClient {
    UpstreamClients::new();
    use rustls::pki_types::pem::PemObject;
    let roots = [
        CertificateDer::from_pem_slice(include_bytes!("../testdata/tls/ca.pem"))
            .expect("the test CA"),
    ];
    let tls = tls_config(&roots).expect("the platform's verifier");
    build_client_idle(Arc::new(tls), Duration::from_secs(5), idle_timeout)
}

fn build_client_idle(
    tls: Arc<ClientConfig>,
    connect_timeout: Duration,
    idle_timeout: Duration,
) -> HttpClient {
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
    HttpClient::new(
        Connector {
            inner: https,
            timeout: connect_timeout,
        },
        idle_timeout,
    )
}

/// TCP, then TLS for `https://`, within one connect timeout.
#[derive(Clone)]
pub(crate) struct Connector {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Uri> for Connector {
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

/// Why a request got no answer: its connection could not be made (the
/// connector's error: TCP, DNS, TLS, the connect timeout), or the request
/// failed on a connection that was made.
#[derive(Debug)]
pub(crate) enum ClientError {
    Connect(BoxError),
    Send(BoxError),
}

/// A pooled client with one connect timeout. Shared by clone.
#[derive(Clone)]
pub(crate) struct HttpClient {
    pool: Arc<Pool>,
}

struct Pool {
    connector: Connector,
    idle_timeout: Duration,
    origins: Mutex<Origins>,
    /// Whether a task is closing this pool's idle connections as they
    /// expire (started with the first connection kept, ended with the
    /// runtime it runs on or with the pool).
    reaping: AtomicBool,
}

/// Where connections go: a scheme and an authority (hashed and compared
/// without regard to case, as `http` does).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Origin {
    scheme: Scheme,
    authority: Authority,
}

/// Most origins looked up by their spelling (`Origins::spelled`).
const SPELLED_ORIGINS: usize = 16;

/// What the pool keeps, by origin.
#[derive(Default)]
struct Origins {
    /// Every origin's, by its scheme and authority without regard to case.
    by_origin: HashMap<Origin, Arc<Kept>, FnvBuild>,
    /// The first `SPELLED_ORIGINS` spellings of origins seen, found by
    /// comparing bytes: a request's URI is a clone of its deployment's,
    /// so it spells its origin as it was first seen. Hashing the authority
    /// without regard to case, after cloning it into an `Origin`, cost
    /// about 600 instructions a request; this finds it in a few dozen.
    spelled: Vec<(Scheme, Authority, Arc<Kept>)>,
}

impl Origin {
    /// The `Host` header an HTTP/1.1 request to this origin carries: the
    /// host, and the port unless it is the scheme's default (as hyper-util
    /// and the SigV4 signer write it).
    fn host(&self) -> Option<HeaderValue> {
        let default = match self.scheme.as_str() {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        };
        match self.authority.port_u16() {
            Some(port) if Some(port) != default => {
                HeaderValue::from_str(&format!("{}:{port}", self.authority.host())).ok()
            }
            _ => HeaderValue::from_str(self.authority.host()).ok(),
        }
    }
}

/// What the pool keeps for one origin. A request looks it up once (the
/// one hash of its origin per request) and its answer's body returns the
/// connection straight to it.
struct Kept {
    host: Option<HeaderValue>,
    conns: Mutex<Conns>,
    /// What the origin speaks (`UNKNOWN`, `HTTP1`, `HTTP2`): learnt from
    /// the first connection made to it, or known at once for `http://`. An
    /// HTTP/2 origin's requests share one connection, so only one of them
    /// connects at a time (the others wait for it rather than each opening
    /// a connection of its own); while it is unknown, the first request
    /// connects alone and the others wait to learn from it.
    protocol: AtomicU8,
    connecting: tokio::sync::Mutex<()>,
}

const UNKNOWN: u8 = 0;
const HTTP1: u8 = 1;
const HTTP2: u8 = 2;

/// What an origin keeps, apart by the serving thread whose runtime watches
/// each connection's socket (`crate::shard`): a request only takes what its
/// own thread made, so readiness never has to cross threads.
#[derive(Default)]
struct Conns {
    by_thread: Vec<ThreadConns>,
}

impl Conns {
    /// What serving thread `shard` keeps.
    fn of(&mut self, shard: usize) -> &mut ThreadConns {
        if self.by_thread.len() <= shard {
            self.by_thread.resize_with(shard + 1, ThreadConns::default);
        }
        &mut self.by_thread[shard]
    }
}

#[derive(Default)]
struct ThreadConns {
    /// Idle HTTP/1.1 connections, the most recently returned last.
    idle: Vec<(h1::Conn<Io>, Instant)>,
    /// The HTTP/2 connection requests share, and when it was last used.
    shared: Option<(http2::SendRequest<RequestBody>, Instant)>,
}

/// A connection a request may be sent on.
enum Sender {
    One(h1::Conn<Io>),
    Shared(http2::SendRequest<RequestBody>),
}

impl HttpClient {
    /// How many connections the pool keeps (idle HTTP/1.1 ones and shared
    /// HTTP/2 ones), after dropping those closed or expired.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.pool.prune(Instant::now())
    }

    fn new(connector: Connector, idle_timeout: Duration) -> HttpClient {
        HttpClient {
            pool: Arc::new(Pool {
                connector,
                idle_timeout,
                origins: Mutex::default(),
                reaping: AtomicBool::new(false),
            }),
        }
    }

    /// Sends `request` (its URI absolute) on a kept connection to its
    /// origin, or on a new one, and waits for the answer's head. A request
    /// that a kept connection closed before it was written is sent again on
    /// another; nothing else is retried here.
    pub(crate) async fn request(
        &self,
        mut request: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, ClientError> {
        let Some(kept) = self.pool.origin(request.uri()) else {
            return Err(ClientError::Connect(Box::new(NoOrigin)));
        };
        let every = request.extensions().get::<EveryHeader>().is_some();
        let mut stale = 0;
        // The HTTP/1.1 head, written once whatever connection takes it.
        let mut head: Option<Vec<u8>> = None;
        loop {
            let (sender, reused) = match kept.checkout(self.pool.idle_timeout) {
                Some(sender) => (sender, true),
                // Boxed: the TLS and HTTP/2 handshakes' state would otherwise
                // make every request's future (moved into a box per attempt)
                // several kilobytes larger.
                None => Box::pin(self.connect_or_share(request.uri(), &kept)).await?,
            };
            // A connection that cannot take the request: a kept one is
            // dropped and the next tried; a new one fails the request (its
            // upstream closed it at once), rather than being made again.
            match sender {
                Sender::One(conn) => {
                    let body = &request.body().data;
                    let head = head.get_or_insert_with(|| {
                        h1::write_head(&request, kept.host.as_ref(), body.len())
                    });
                    match conn.send(head, body, request.method(), every).await {
                        Ok(response) => {
                            let back = Return {
                                pool: self.pool.clone(),
                                kept,
                            };
                            return Ok(response.map(|body| UpstreamBody {
                                inner: Inner::One {
                                    body,
                                    back: Some(back),
                                },
                            }));
                        }
                        // The kept connection had been closed under it:
                        // nothing of the request was written, or the
                        // request is one that may be sent twice (a GET, a
                        // HEAD) and the connection ended before any answer.
                        Err(failed)
                            if reused
                                && stale < MAX_STALE_RETRIES
                                && (failed.unsent
                                    || (request.method().is_idempotent()
                                        && matches!(
                                            failed.error,
                                            h1::Error::ClosedBeforeAnswer
                                        ))) =>
                        {
                            stale += 1;
                        }
                        Err(failed) => return Err(ClientError::Send(Box::new(failed.error))),
                    }
                }
                Sender::Shared(mut sender) => {
                    if let Err(error) = sender.ready().await {
                        kept.forget_closed_shared();
                        if !reused {
                            return Err(ClientError::Send(Box::new(error)));
                        }
                        continue;
                    }
                    match sender.try_send_request(request).await {
                        Ok(response) => {
                            return Ok(response.map(|body| UpstreamBody {
                                inner: Inner::Shared(body),
                            }));
                        }
                        Err(mut error) => match error.take_message() {
                            Some(unsent) if reused && stale < MAX_STALE_RETRIES => {
                                stale += 1;
                                request = unsent;
                            }
                            _ => return Err(ClientError::Send(Box::new(error.into_error()))),
                        },
                    }
                }
            }
        }
    }

    /// A new connection, or, for an origin that speaks HTTP/2, the shared
    /// one another request on this serving thread made while this one
    /// waited its turn to connect (then reported as reused).
    async fn connect_or_share(
        &self,
        uri: &Uri,
        kept: &Arc<Kept>,
    ) -> Result<(Sender, bool), ClientError> {
        match kept.protocol.load(Ordering::Relaxed) {
            HTTP1 => Ok((self.connect(uri, kept).await?, false)),
            HTTP2 => self.share_or_connect(uri, kept).await,
            _ => {
                // The first request to an origin not yet known connects
                // alone; a burst behind it waits to learn whether it
                // speaks HTTP/2 (then shares the connection made, or, on
                // another serving thread, one of that thread's own), and
                // otherwise connects at once, all together, even when the
                // first connection failed.
                if let Ok(_turn) = kept.connecting.try_lock() {
                    return Ok((self.connect(uri, kept).await?, false));
                }
                drop(kept.connecting.lock().await);
                if kept.protocol.load(Ordering::Relaxed) == HTTP2 {
                    return self.share_or_connect(uri, kept).await;
                }
                Ok((self.connect(uri, kept).await?, false))
            }
        }
    }

    /// For an origin known to speak HTTP/2: this serving thread's shared
    /// connection, or, one request at a time, a new one.
    async fn share_or_connect(
        &self,
        uri: &Uri,
        kept: &Arc<Kept>,
    ) -> Result<(Sender, bool), ClientError> {
        let _turn = kept.connecting.lock().await;
        if let Some(shared) = kept.checkout(self.pool.idle_timeout) {
            return Ok((shared, true));
        }
        Ok((self.connect(uri, kept).await?, false))
    }

    /// A new connection to the origin of `uri`: HTTP/2 when TLS negotiated
    /// it, HTTP/1.1 otherwise. An HTTP/2 connection is kept at once, for
    /// other requests to share.
    async fn connect(&self, uri: &Uri, kept: &Arc<Kept>) -> Result<Sender, ClientError> {
        let mut connector = self.pool.connector.clone();
        let io = connector
            .call(uri.clone())
            .await
            .map_err(ClientError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let timeout = self.pool.connector.timeout;
            // Boxed apart: HTTP/2's handshake state is most of a connect's
            // future, which HTTP/1.1 connections would otherwise carry too.
            let handshake = Box::pin(
                http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .adaptive_window(true)
                    .handshake(io),
            );
            let (sender, connection) = match tokio::time::timeout(timeout, handshake).await {
                Ok(made) => made.map_err(|error| ClientError::Connect(Box::new(error)))?,
                Err(_) => return Err(ClientError::Connect(Box::new(ConnectTimedOut))),
            };
            tokio::spawn(connection);
            kept.protocol.store(HTTP2, Ordering::Relaxed);
            kept.keep_shared(sender.clone());
            self.pool.reap();
            Ok(Sender::Shared(sender))
        } else {
            // Only one of HTTP/1.1 and HTTP/2 is ever learnt for an
            // origin: HTTP/2 once negotiated stays (its shared connection
            // is what its requests look for first).
            let _ = kept.protocol.compare_exchange(
                UNKNOWN,
                HTTP1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            Ok(Sender::One(h1::Conn::new(TokioIo::new(io))))
        }
    }
}

impl Kept {
    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A kept connection still open and not idle too long: the shared
    /// HTTP/2 one, or the most recently returned HTTP/1.1 one (checked for
    /// an end that arrived while it was idle outside the lock; one found
    /// closed is dropped, which closes it, and the next one tried), of
    /// those the calling serving thread made.
    fn checkout(&self, idle_timeout: Duration) -> Option<Sender> {
        let now = Instant::now();
        let here = shard::current();
        loop {
            let (mut conn, since) = {
                let mut conns = self.lock();
                let conns = conns.of(here);
                if let Some((sender, used)) = &mut conns.shared {
                    if !sender.is_closed() && now.duration_since(*used) < idle_timeout {
                        *used = now;
                        return Some(Sender::Shared(sender.clone()));
                    }
                    conns.shared = None;
                }
                conns.idle.pop()?
            };
            if now.duration_since(since) < idle_timeout && conn.is_open() {
                return Some(Sender::One(conn));
            }
        }
    }

    /// Keeps an HTTP/1.1 connection whose answer has been read to its end,
    /// for the serving thread that made it.
    fn put(&self, conn: h1::Conn<Io>) {
        let home = conn.home();
        let mut conns = self.lock();
        let idle = &mut conns.of(home).idle;
        if idle.len() < MAX_IDLE_PER_ORIGIN {
            idle.push((conn, Instant::now()));
        }
    }

    /// Keeps an HTTP/2 connection just made (its task runs on the calling
    /// thread's runtime) for the calling thread's requests to share.
    fn keep_shared(&self, sender: http2::SendRequest<RequestBody>) {
        let mut conns = self.lock();
        let conns = conns.of(shard::current());
        // Requests that connected at the same time each made one; the first
        // stays shared, the others serve their own request alone.
        if conns
            .shared
            .as_ref()
            .is_some_and(|(shared, _)| !shared.is_closed())
        {
            return;
        }
        conns.shared = Some((sender, Instant::now()));
    }

    /// Lets the calling thread's shared HTTP/2 connection go if it has
    /// closed (a request's own extra connection closing leaves a healthy
    /// shared one alone).
    fn forget_closed_shared(&self) {
        let mut conns = self.lock();
        let conns = conns.of(shard::current());
        if conns
            .shared
            .as_ref()
            .is_some_and(|(shared, _)| shared.is_closed())
        {
            conns.shared = None;
        }
    }

    /// Drops the connections idle past `idle_timeout` (which closes them)
    /// and those already closed; how many stay.
    fn prune(&self, now: Instant, idle_timeout: Duration) -> usize {
        let mut conns = self.lock();
        let mut kept = 0;
        for conns in &mut conns.by_thread {
            conns.idle.retain_mut(|(conn, since)| {
                now.duration_since(*since) < idle_timeout && conn.is_open()
            });
            if conns.shared.as_ref().is_some_and(|(sender, used)| {
                sender.is_closed() || now.duration_since(*used) >= idle_timeout
            }) {
                conns.shared = None;
            }
            kept += conns.idle.len() + usize::from(conns.shared.is_some());
        }
        kept
    }
}

impl Pool {
    /// What is kept for the origin of `uri` (its scheme and authority),
    /// made on its first request; `None` for a URI without an origin.
    fn origin(&self, uri: &Uri) -> Option<Arc<Kept>> {
        let (scheme, authority) = (uri.scheme()?, uri.authority()?);
        let mut origins = self
            .origins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let spelled = origins.spelled.iter().find(|(known_scheme, known, _)| {
            known.as_str() == authority.as_str() && known_scheme == scheme
        });
        if let Some((_, _, kept)) = spelled {
            return Some(kept.clone());
        }
        let origin = Origin {
            scheme: scheme.clone(),
            authority: authority.clone(),
        };
        let kept = match origins.by_origin.get(&origin) {
            Some(kept) => kept.clone(),
            None => {
                // Plain HTTP has no ALPN to offer HTTP/2 through: HTTP/1.1.
                let protocol = if origin.scheme == Scheme::HTTP {
                    HTTP1
                } else {
                    UNKNOWN
                };
                let kept = Arc::new(Kept {
                    host: origin.host(),
                    conns: Mutex::default(),
                    protocol: AtomicU8::new(protocol),
                    connecting: tokio::sync::Mutex::new(()),
                });
                origins.by_origin.insert(origin, kept.clone());
                kept
            }
        };
        if origins.spelled.len() < SPELLED_ORIGINS {
            origins
                .spelled
                .push((scheme.clone(), authority.clone(), kept.clone()));
        }
        Some(kept)
    }

    /// Drops the connections idle past the timeout (which closes them) and
    /// those already closed; how many stay.
    fn prune(&self, now: Instant) -> usize {
        let origins: Vec<Arc<Kept>> = self
            .origins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_origin
            .values()
            .cloned()
            .collect();
        origins
            .iter()
            .map(|kept| kept.prune(now, self.idle_timeout))
            .sum()
    }

    /// Starts the task that prunes this pool, unless one runs.
    fn reap(self: &Arc<Self>) {
        if self.reaping.load(Ordering::Relaxed) || self.reaping.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.reaping.store(false, Ordering::Release);
            return;
        };
        let every = (self.idle_timeout / 4).max(Duration::from_millis(10));
        // Made before the task: a task dropped before its first poll (its
        // runtime shutting down) still clears the flag.
        let done = Reaping(Arc::downgrade(self));
        runtime.spawn(reap(done, every));
    }
}

/// Clears the pool's `reaping` flag when its task ends.
struct Reaping(Weak<Pool>);

impl Drop for Reaping {
    fn drop(&mut self) {
        if let Some(pool) = self.0.upgrade() {
            pool.reaping.store(false, Ordering::Release);
        }
    }
}

/// Prunes the pool every `every` while it exists; `done` clears its flag
/// when the task ends, whether the pool went or the runtime dropped it.
async fn reap(done: Reaping, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(pool) = done.0.upgrade() else {
            return;
        };
        pool.prune(Instant::now());
    }
}

/// The URI has no scheme or host (deployments' URLs are checked when they
/// are built, so only a bug reaches this).
#[derive(Debug)]
struct NoOrigin;

impl std::fmt::Display for NoOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request's URL has no scheme or host")
    }
}

impl std::error::Error for NoOrigin {}

/// Where an HTTP/1.1 connection goes back once its answer is read.
struct Return {
    pool: Arc<Pool>,
    kept: Arc<Kept>,
}

/// The error of an upstream answer's body.
pub(crate) type BodyError = BoxError;

/// An upstream answer's body. Over HTTP/1.1 it holds its connection, which
/// returns to the pool as soon as the body has been read to its end (or is
/// dropped after it); a body dropped before its end, or broken, takes its
/// connection with it, which closes it.
pub(crate) struct UpstreamBody {
    inner: Inner,
}

enum Inner {
    One {
        body: h1::Body<Io>,
        back: Option<Return>,
    },
    Shared(Incoming),
}

impl Inner {
    fn give_back(&mut self) {
        if let Inner::One { body, back } = self
            && let Some(Return { pool, kept }) = back.take()
            && let Some(conn) = body.take_reusable()
        {
            kept.put(conn);
            pool.reap();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let inner = &mut self.inner;
        match inner {
            Inner::One { body, back } => match std::task::ready!(body.poll_data(cx)) {
                Some(Ok(data)) => {
                    if body.is_end() {
                        inner.give_back();
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                None => {
                    inner.give_back();
                    Poll::Ready(None)
                }
                Some(Err(error)) => {
                    *back = None;
                    Poll::Ready(Some(Err(Box::new(error))))
                }
            },
            Inner::Shared(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|error| Box::new(error) as BodyError),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::One { body, .. } => body.is_end(),
            Inner::Shared(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::One { body, .. } => match body.exact_length() {
                Some(length) => SizeHint::with_exact(length),
                None => SizeHint::default(),
            },
            Inner::Shared(body) => body.size_hint(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Inner::One { body, .. } = &self.inner
            && body.is_end()
        {
            self.inner.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_header_names_the_port_only_when_it_is_not_the_default() {
        let client = plain_client(IDLE_TIMEOUT);
        let host = |url: &str| {
            client
                .pool
                .origin(&url.parse::<Uri>().unwrap())
                .unwrap()
                .host
                .clone()
                .unwrap()
        };
        assert_eq!(
            host("http://127.0.0.1:18000/v1/chat/completions"),
            "127.0.0.1:18000"
        );
        assert_eq!(host("http://[::1]:8080/v1"), "[::1]:8080");
        assert_eq!(host("http://gpu-box.local:11434"), "gpu-box.local:11434");
        assert_eq!(host("http://localhost/v1"), "localhost");
        assert_eq!(host("http://localhost:80/v1"), "localhost");
        assert_eq!(host("https://api.openai.com/v1"), "api.openai.com");
        assert_eq!(host("https://example.com:443/v1"), "example.com");
        assert_eq!(host("https://example.com:8443/v1"), "example.com:8443");
        assert!(
            client
                .pool
                .origin(&"/v1/chat".parse::<Uri>().unwrap())
                .is_none()
        );
    }

    #[test]
    fn an_origin_is_kept_once_whatever_its_spelling() {
        let client = plain_client(IDLE_TIMEOUT);
        let kept = |uri: &str| client.pool.origin(&uri.parse::<Uri>().unwrap()).unwrap();
        let first = kept("http://Upstream.example:8080/v1/chat/completions");
        // Found by its spelling, by another spelling, and by a clone.
        assert!(Arc::ptr_eq(
            &first,
            &kept("http://Upstream.example:8080/v1/embeddings")
        ));
        assert!(Arc::ptr_eq(&first, &kept("http://upstream.EXAMPLE:8080/")));
        assert!(Arc::ptr_eq(&first, &kept("HTTP://upstream.example:8080/")));
        // Another port, another scheme: another origin.
        assert!(!Arc::ptr_eq(&first, &kept("http://upstream.example:8081/")));
        assert!(!Arc::ptr_eq(
            &first,
            &kept("https://upstream.example:8080/")
        ));
        assert_eq!(first.host.as_ref().unwrap(), "Upstream.example:8080");
        // Past the spellings kept, origins are still found (by the map).
        for port in 0..2 * SPELLED_ORIGINS {
            let uri = format!("http://many.example:{}/", 9000 + port);
            assert!(Arc::ptr_eq(&kept(&uri), &kept(&uri)));
        }
        let origins = client.pool.origins.lock().unwrap();
        assert_eq!(origins.spelled.len(), SPELLED_ORIGINS);
        assert_eq!(origins.by_origin.len(), 3 + 2 * SPELLED_ORIGINS);
        drop(origins);
        assert!(
            client
                .pool
                .origin(&"/relative".parse::<Uri>().unwrap())
                .is_none()
        );
    }

    #[test]
    fn a_requests_future_stays_small() {
        fn size<F: std::future::Future>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        let client = plain_client(IDLE_TIMEOUT);
        let request = Request::new(RequestBody::new(Bytes::new()));
        let connect_bytes = size(
            &client.connect_or_share(
                &"http://127.0.0.1/".parse::<Uri>().unwrap(),
                &client
                    .pool
                    .origin(&"http://127.0.0.1/".parse::<Uri>().unwrap())
                    .unwrap(),
            ),
        );
        // A connect's future, boxed per new connection, is mostly the TLS
        // stream it holds (3,672 bytes when written); HTTP/2's handshake is
        // boxed apart (about 3.6 KiB more when it was not).
        assert!(
            connect_bytes < 4096,
            "a connect's future takes {connect_bytes} bytes"
        );
        let bytes = size(&client.request(request));
        // Under 1 KiB (968 bytes when written): the request, its origin, a
        // connection's sender and the send in flight. The connect path's
        // handshakes, boxed, are not in it (7,320 bytes when they were).
        assert!(bytes < 1280, "a request's future takes {bytes} bytes");
    }

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
