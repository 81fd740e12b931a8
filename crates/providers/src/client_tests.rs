//! The upstream client against local servers: HTTP/2 over TLS where ALPN
//! offers it and HTTP/1.1 otherwise, certificates checked, how each failure
//! to connect is classified, redirects left alone, bodies capped.
//!
//! `testdata/tls` holds a test CA and a certificate it signed for
//! `localhost` and `127.0.0.1` (P-256, valid until 2126), made with
//! `openssl req -x509` and `openssl x509 -req`; the clients here trust the
//! CA beside the system's roots.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use switchboard_config::Timeouts;

use crate::transport::{Http, parse_json_error, read_capped, upstream_request};
use crate::{CallOptions, TimeoutPhase, UpstreamClients, UpstreamError};

const CA: &[u8] = include_bytes!("../testdata/tls/ca.pem");
const CERTIFICATE: &[u8] = include_bytes!("../testdata/tls/localhost.pem");
const KEY: &[u8] = include_bytes!("../testdata/tls/localhost.key");

type Body = BoxBody<Bytes, Infallible>;

fn full(text: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(text.into()).boxed()
}

fn trusting_clients() -> UpstreamClients {
    UpstreamClients::new();
    UpstreamClients::with_extra_roots(vec![CertificateDer::from_pem_slice(CA).unwrap()])
}

fn http(clients: &UpstreamClients, connect: Duration) -> Http {
    Http::new(
        clients,
        Timeouts {
            connect,
            request: Duration::from_secs(10),
            stream_idle: Duration::from_secs(10),
        },
        parse_json_error,
    )
    .unwrap()
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    tls_acceptor_offering(&[b"h2", b"http/1.1"])
}

/// A TLS acceptor whose ALPN offers `protocols` alone.
fn tls_acceptor_offering(protocols: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    let certificates = vec![CertificateDer::from_pem_slice(CERTIFICATE).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(KEY).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certificates, key)
    .unwrap();
    config.alpn_protocols = protocols.iter().map(|protocol| protocol.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Serves `handle` on a loopback port, over TLS when `tls` is given, with
/// HTTP/1.1 and HTTP/2 both offered; counts the requests it saw.
async fn serve<F>(
    tls: Option<tokio_rustls::TlsAcceptor>,
    handle: F,
) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static,
{
    let (address, seen, _) = serve_counting(tls, handle).await;
    (address, seen)
}

/// `serve`, also counting the connections it accepted.
async fn serve_counting<F>(
    tls: Option<tokio_rustls::TlsAcceptor>,
    handle: F,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>)
where
    F: Fn(Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            let handle = handle.clone();
            let counter = counter.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let response = handle(request);
                    async move { Ok::<_, Infallible>(response) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    Some(tls) => {
                        let Ok(stream) = tls.accept(socket).await else {
                            return;
                        };
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(socket), service)
                            .await;
                    }
                }
            });
        }
    });
    (address, seen, connections)
}

/// Answers with the HTTP version the request arrived in.
fn version(request: Request<Incoming>) -> Response<Body> {
    Response::new(full(format!("{:?}", request.version())))
}

/// A whole answer to a POST to `url`, through a client trusting the test
/// certificate.
async fn whole(url: String) -> Result<Bytes, UpstreamError> {
    http(&trusting_clients(), Duration::from_secs(5))
        .whole(post(&url), &CallOptions::default())
        .await
}

fn post(uri: &str) -> Request<crate::client::RequestBody> {
    upstream_request(
        Method::POST,
        &uri.parse::<Uri>().unwrap(),
        &HeaderMap::new(),
        Bytes::from_static(b"{}"),
    )
}

#[tokio::test]
async fn https_negotiates_http2_and_http_stays_on_http1() {
    let clients = trusting_clients();
    let http = http(&clients, Duration::from_secs(5));
    let (secure, _) = serve(Some(tls_acceptor()), version).await;
    let (plain, _) = serve(None, version).await;
    let over_tls = http
        .whole(
            post(&format!("https://localhost:{}/v1", secure.port())),
            &CallOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(over_tls, "HTTP/2.0");
    let over_tcp = http
        .whole(
            post(&format!("http://127.0.0.1:{}/v1", plain.port())),
            &CallOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(over_tcp, "HTTP/1.1");
}

#[tokio::test]
async fn https_without_http2_speaks_http1_over_tls_and_keeps_the_connection() {
    let client = crate::client::trusting_client(Duration::from_secs(30));
    // A streamed (chunked) answer in pieces, then a whole one, on one
    // TLS connection.
    let (secure, seen, connections) =
        serve_counting(Some(tls_acceptor_offering(&[b"http/1.1"])), |request| {
            if request.uri().path() == "/stream" {
                let events = futures_util::stream::iter(["data: 1\n\n", "data: 2\n\n"])
                    .map(|event| Ok::<_, Infallible>(Frame::data(Bytes::from(event))));
                return Response::new(BodyExt::boxed(http_body_util::StreamBody::new(events)));
            }
            version(request)
        })
        .await;
    let base = format!("https://localhost:{}", secure.port());
    let streamed = client
        .request(post(&format!("{base}/stream")))
        .await
        .unwrap();
    assert_eq!(streamed.headers()["transfer-encoding"], "chunked");
    assert_eq!(
        read_capped(streamed.into_body(), 1024).await.unwrap(),
        "data: 1\n\ndata: 2\n\n"
    );
    assert_eq!(read_url(&client, &format!("{base}/v1")).await, "HTTP/1.1");
    assert_eq!(read_url(&client, &format!("{base}/v1")).await, "HTTP/1.1");
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    assert_eq!(client.kept(), 1);
}

#[tokio::test]
async fn connections_are_kept_and_reused() {
    let clients = trusting_clients();
    let http = http(&clients, Duration::from_secs(5));
    let connections = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = connections.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                TokioIo::new(socket),
                hyper::service::service_fn(|request| async move {
                    Ok::<_, Infallible>(version(request))
                }),
            ));
        }
    });
    for _ in 0..5 {
        http.whole(
            post(&format!("http://{address}/v1")),
            &CallOptions::default(),
        )
        .await
        .unwrap();
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

/// A kept connection is watched by the runtime of the serving thread that
/// made it, so only a request on that thread takes it again.
#[tokio::test]
async fn a_kept_connection_goes_back_only_to_its_own_serving_thread() {
    let client = crate::client::plain_client(Duration::from_secs(30));
    let (address, opened, _) = counting_server(true).await;
    assert_eq!(read_through(&client, address).await, "HTTP/1.1");
    assert_eq!(read_through(&client, address).await, "HTTP/1.1");
    assert_eq!(opened.load(Ordering::SeqCst), 1);
    // Another thread's request makes a connection of its own, and keeps
    // reusing it.
    crate::shard::enter(1);
    assert_eq!(read_through(&client, address).await, "HTTP/1.1");
    assert_eq!(opened.load(Ordering::SeqCst), 2);
    assert_eq!(read_through(&client, address).await, "HTTP/1.1");
    assert_eq!(opened.load(Ordering::SeqCst), 2);
    // The first thread's connection is still kept for it.
    crate::shard::enter(0);
    assert_eq!(read_through(&client, address).await, "HTTP/1.1");
    assert_eq!(opened.load(Ordering::SeqCst), 2);
    assert_eq!(client.kept(), 2);
}

/// The same for HTTP/2: each serving thread shares a connection of its own
/// (whose task runs on its runtime) among its requests.
#[tokio::test]
async fn each_serving_thread_shares_an_http2_connection_of_its_own() {
    let client = crate::client::trusting_client(Duration::from_secs(30));
    let (secure, seen, connections) = serve_counting(Some(tls_acceptor()), version).await;
    let url = format!("https://localhost:{}/v1", secure.port());
    assert_eq!(read_url(&client, &url).await, "HTTP/2.0");
    assert_eq!(read_url(&client, &url).await, "HTTP/2.0");
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    // A burst on another thread makes that thread one connection, which
    // its requests share.
    crate::shard::enter(1);
    for answer in eight_at_once(&client, &url).await {
        assert_eq!(answer, "HTTP/2.0");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    crate::shard::enter(0);
    assert_eq!(read_url(&client, &url).await, "HTTP/2.0");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    assert_eq!(seen.load(Ordering::SeqCst), 11);
    assert_eq!(client.kept(), 2);
}

#[tokio::test]
async fn an_unknown_certificate_fails_the_connection_as_tls() {
    UpstreamClients::new();
    let untrusting = UpstreamClients::default();
    let http = http(&untrusting, Duration::from_secs(5));
    let (secure, seen) = serve(Some(tls_acceptor()), version).await;
    let error = http
        .whole(
            post(&format!("https://localhost:{}/v1", secure.port())),
            &CallOptions::default(),
        )
        .await
        .unwrap_err();
    match error {
        UpstreamError::Connect(message) => {
            assert!(message.starts_with("TLS handshake failed"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(seen.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let error = whole(format!("http://127.0.0.1:{port}/v1"))
        .await
        .unwrap_err();
    match error {
        UpstreamError::Connect(message) => {
            assert!(message.to_lowercase().contains("refused"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

/// A server that accepts connections and never says a word: a TLS
/// handshake with it never finishes.
async fn silent_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    address
}

/// Sends to a server that accepts connections but never says a word (the
/// TLS handshake never finishes), and checks that the connect timeout
/// fires, is classified as one, and fires well before `deployment`'s would
/// have when the request asked for less.
async fn assert_connect_timeout(deployment: Duration, options: CallOptions) {
    let address = silent_server().await;
    let http = http(&trusting_clients(), deployment);
    let started = Instant::now();
    let error = http
        .whole(
            post(&format!("https://localhost:{}/v1", address.port())),
            &options,
        )
        .await
        .unwrap_err();
    assert_eq!(
        error,
        UpstreamError::Timeout {
            phase: TimeoutPhase::Connect
        }
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn the_connect_timeout_covers_the_tls_handshake_and_is_classified() {
    assert_connect_timeout(Duration::from_millis(300), CallOptions::default()).await;
}

#[tokio::test]
async fn a_request_can_shorten_the_connect_timeout() {
    assert_connect_timeout(
        Duration::from_secs(30),
        CallOptions {
            connect: Some(Duration::from_millis(250)),
            ..CallOptions::default()
        },
    )
    .await;
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (address, seen) = serve(None, |request| {
        if request.uri().path() == "/elsewhere" {
            return Response::new(full("followed"));
        }
        let mut response = Response::new(full(r#"{"error":{"message":"moved"}}"#));
        *response.status_mut() = http::StatusCode::FOUND;
        response
            .headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/elsewhere"));
        response
    })
    .await;
    let error = whole(format!("http://{address}/v1")).await.unwrap_err();
    match error {
        UpstreamError::Status { status, body, .. } => {
            assert_eq!(status, 302);
            assert_eq!(body.message.as_deref(), Some("moved"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn exchange_keeps_every_header_and_a_deployments_call_those_read() {
    let (address, _) = serve(None, |_| {
        let mut response = Response::new(full(r#"{"ok":true}"#));
        let headers = response.headers_mut();
        headers.insert("x-request-id", HeaderValue::from_static("req_1"));
        headers.insert("x-ratelimit-limit-requests", HeaderValue::from_static("10"));
        response
    })
    .await;
    let clients = UpstreamClients::new();
    let request = http::Request::post(format!("http://{address}/v1"))
        .body(Bytes::from_static(b"{}"))
        .unwrap();
    let answer = clients
        .exchange(request, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-request-id"], "req_1");
    assert_eq!(answer.headers()["x-ratelimit-limit-requests"], "10");
    assert_eq!(&answer.body()[..], br#"{"ok":true}"#);

    let client = clients.get(Duration::from_secs(10)).unwrap();
    let answer = client
        .request(post(&format!("http://{address}/v1")))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.headers().get("x-request-id").is_none());
    assert_eq!(answer.headers()["x-ratelimit-limit-requests"], "10");
}

#[tokio::test]
async fn an_answer_with_a_large_head_is_read() {
    // Proxies and CDNs in front of a model add long headers (cookies,
    // security policies, tracing): 16 KiB of them must not fail the call.
    let (address, _) = serve(None, |_| {
        let mut response = Response::new(full(r#"{"ok":true}"#));
        for index in 0..16 {
            let value = HeaderValue::from_str(&"v".repeat(1000)).unwrap();
            response.headers_mut().append(
                http::HeaderName::from_bytes(format!("x-long-{index}").as_bytes()).unwrap(),
                value,
            );
        }
        response
    })
    .await;
    let body = whole(format!("http://{address}/v1")).await.unwrap();
    assert_eq!(&body[..], br#"{"ok":true}"#);
}

/// A body that never ends, 16 KiB at a time.
fn endless(_: Request<Incoming>) -> Response<Body> {
    let chunks = futures_util::stream::repeat_with(|| {
        Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; 16 * 1024])))
    });
    Response::new(BodyExt::boxed(http_body_util::StreamBody::new(chunks)))
}

#[tokio::test]
async fn a_capped_read_stops_at_the_cap() {
    let (address, _) = serve(None, endless).await;
    let client = trusting_clients().get(Duration::from_secs(5)).unwrap();
    let response = client
        .request(post(&format!("http://{address}/v1")))
        .await
        .unwrap();
    let body = tokio::time::timeout(
        Duration::from_secs(5),
        read_capped(response.into_body(), 100_000),
    )
    .await
    .expect("the read stops at the cap")
    .unwrap();
    assert_eq!(body.len(), 100_000);
}

#[tokio::test]
async fn error_bodies_are_capped() {
    // A 500 whose body never ends still gives a status error, quickly.
    let (address, _) = serve(None, |request| {
        let mut response = endless(request);
        *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        response
    })
    .await;
    let error = tokio::time::timeout(
        Duration::from_secs(5),
        whole(format!("http://{address}/v1")),
    )
    .await
    .expect("the error body is read only up to its cap")
    .unwrap_err();
    assert!(
        matches!(error, UpstreamError::Status { status: 500, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_stream_yields_the_body_and_a_broken_one_an_error() {
    let (address, _) = serve(None, |_| {
        let mut response = Response::new(full("data: one\n\ndata: two\n\n"));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        response
    })
    .await;
    let http = http(&trusting_clients(), Duration::from_secs(5));
    let stream = http
        .stream(
            post(&format!("http://{address}/v1")),
            &CallOptions::default(),
            "text/event-stream",
        )
        .await
        .unwrap();
    let pieces: Vec<Bytes> = stream.map(Result::unwrap).collect().await;
    assert_eq!(pieces.concat(), b"data: one\n\ndata: two\n\n");

    // A server that announces a length and hangs up early.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 4096];
        let _ = socket.read(&mut request).await;
        let _ = socket
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 1000\r\n\r\ndata: cut",
            )
            .await;
    });
    let mut stream = http
        .stream(
            post(&format!("http://{address}/v1")),
            &CallOptions::default(),
            "text/event-stream",
        )
        .await
        .unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), "data: cut");
    assert!(matches!(
        stream.next().await,
        Some(Err(UpstreamError::Transport(_)))
    ));
}

#[tokio::test]
async fn the_trace_context_rides_on_every_request() {
    let (address, _) = serve(None, |request| {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        Response::new(full(format!(
            "{} {}",
            header("traceparent"),
            header("tracestate")
        )))
    })
    .await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let body = crate::trace_context::with_traceparent(
        Some(HeaderValue::from_static(traceparent)),
        Some(HeaderValue::from_static("vendor=1")),
        whole(format!("http://{address}/v1")),
    )
    .await
    .unwrap();
    assert_eq!(body, format!("{traceparent} vendor=1"));
    let body = whole(format!("http://{address}/v1")).await.unwrap();
    assert_eq!(body, "- -");
}

#[test]
fn a_user_in_the_url_becomes_basic_authentication_and_leaves_the_uri() {
    let url = url::Url::parse("https://user:p%40ss@vllm.internal:8443/v1").unwrap();
    let uri = crate::transport::endpoint_uri(&url).unwrap();
    assert_eq!(uri.to_string(), "https://vllm.internal:8443/v1");
    let value = crate::transport::basic_auth(&url).unwrap();
    assert!(value.is_sensitive());
    // base64("user:p@ss")
    assert_eq!(value, "Basic dXNlcjpwQHNz");
    assert!(crate::transport::basic_auth(&url::Url::parse("https://host/v1").unwrap()).is_none());
}

/// An HTTP/1.1 server that counts the connections it accepted and those
/// that have ended; `keep_alive` false closes each after one answer.
async fn counting_server(keep_alive: bool) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (opened, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (accepted, ended) = (opened.clone(), closed.clone());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let ended = ended.clone();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(keep_alive)
                    .serve_connection(
                        TokioIo::new(socket),
                        hyper::service::service_fn(|request| async move {
                            Ok::<_, Infallible>(version(request))
                        }),
                    )
                    .await;
                ended.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (address, opened, closed)
}

/// Sends a POST to `url` through `client` and reads the answer whole.
async fn read_url(client: &crate::client::HttpClient, url: &str) -> Bytes {
    let response = client.request(post(url)).await.unwrap();
    read_capped(response.into_body(), 1 << 20).await.unwrap()
}

/// `read_url` for the plain HTTP server at `address`.
async fn read_through(client: &crate::client::HttpClient, address: SocketAddr) -> Bytes {
    read_url(client, &format!("http://{address}/v1")).await
}

/// Eight POSTs to `url` at once, and their answers.
async fn eight_at_once(client: &crate::client::HttpClient, url: &str) -> Vec<Bytes> {
    futures_util::future::join_all((0..8).map(|_| read_url(client, url))).await
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(5), "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_connection_the_upstream_closes_is_not_used_again() {
    let client = crate::client::plain_client(Duration::from_secs(30));
    let (address, opened, closed) = counting_server(false).await;
    for round in 1..=3 {
        assert_eq!(read_through(&client, address).await, "HTTP/1.1");
        eventually("the server closes", || {
            closed.load(Ordering::SeqCst) == round
        })
        .await;
    }
    assert_eq!(opened.load(Ordering::SeqCst), 3);
    eventually("the pool lets the closed connection go", || {
        client.kept() == 0
    })
    .await;
}

#[tokio::test]
async fn a_body_dropped_before_its_end_takes_its_connection_along() {
    let client = crate::client::plain_client(Duration::from_secs(30));
    let (address, opened, closed) = counting_server(true).await;
    let unread = client
        .request(post(&format!("http://{address}/v1")))
        .await
        .unwrap();
    drop(unread);
    eventually("the unread answer's connection closes", || {
        closed.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(client.kept(), 0);
    assert_eq!(read_through(&client, address).await, "HTTP/1.1");
    assert_eq!(read_through(&client, address).await, "HTTP/1.1");
    assert_eq!(opened.load(Ordering::SeqCst), 2);
    assert_eq!(client.kept(), 1);
}

#[tokio::test]
async fn concurrent_requests_leave_their_connections_for_the_next_ones() {
    let client = crate::client::plain_client(Duration::from_secs(30));
    let (address, opened, _) = counting_server(true).await;
    let together =
        futures_util::future::join_all((0..8).map(|_| read_through(&client, address))).await;
    assert!(together.iter().all(|answer| answer == "HTTP/1.1"));
    let made = opened.load(Ordering::SeqCst);
    assert!((1..=8).contains(&made), "{made}");
    assert_eq!(client.kept(), made);
    for _ in 0..20 {
        read_through(&client, address).await;
    }
    assert_eq!(opened.load(Ordering::SeqCst), made);
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let client = crate::client::plain_client(Duration::from_millis(100));
    let (address, opened, closed) = counting_server(true).await;
    read_through(&client, address).await;
    assert_eq!(client.kept(), 1);
    // Nothing else is sent: the pool's own timer closes it.
    eventually("the idle connection closes", || {
        closed.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(client.kept(), 0);
    read_through(&client, address).await;
    assert_eq!(opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn http2_requests_share_one_connection() {
    let clients = trusting_clients();
    let client = clients.get(Duration::from_secs(5)).unwrap();
    let (secure, seen, connections) = serve_counting(Some(tls_acceptor()), version).await;
    let url = format!("https://localhost:{}/v1", secure.port());
    assert_eq!(read_url(&client, &url).await, "HTTP/2.0");
    let answers = eight_at_once(&client, &url).await;
    assert!(answers.iter().all(|answer| answer == "HTTP/2.0"));
    assert_eq!(seen.load(Ordering::SeqCst), 9);
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    assert_eq!(client.kept(), 1);
}

#[tokio::test]
async fn requests_to_an_http2_origin_wait_for_one_connection_rather_than_each_making_one() {
    let client = crate::client::trusting_client(Duration::from_millis(100));
    let (secure, seen, connections) = serve_counting(Some(tls_acceptor()), version).await;
    let url = format!("https://localhost:{}/v1", secure.port());
    assert_eq!(read_url(&client, &url).await, "HTTP/2.0");
    // The shared connection expires unused; then a burst arrives.
    eventually("the idle connection is let go", || client.kept() == 0).await;
    let answers = eight_at_once(&client, &url).await;
    assert!(answers.iter().all(|answer| answer == "HTTP/2.0"));
    assert_eq!(seen.load(Ordering::SeqCst), 9);
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_first_burst_to_an_http2_origin_makes_one_connection() {
    let client = crate::client::trusting_client(Duration::from_secs(30));
    let (secure, seen, connections) = serve_counting(Some(tls_acceptor()), version).await;
    let url = format!("https://localhost:{}/v1", secure.port());
    // Nothing was sent to it before: the client learns it speaks HTTP/2
    // from the first connection, which the others wait for and share.
    let answers = eight_at_once(&client, &url).await;
    assert!(answers.iter().all(|answer| answer == "HTTP/2.0"));
    assert_eq!(seen.load(Ordering::SeqCst), 8);
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_first_burst_to_an_https_origin_without_http2_connects_side_by_side() {
    let client = crate::client::trusting_client(Duration::from_secs(30));
    let (secure, seen, connections) =
        serve_counting(Some(tls_acceptor_offering(&[b"http/1.1"])), version).await;
    let url = format!("https://localhost:{}/v1", secure.port());
    let answers = eight_at_once(&client, &url).await;
    assert!(answers.iter().all(|answer| answer == "HTTP/1.1"));
    assert_eq!(seen.load(Ordering::SeqCst), 8);
    let made = connections.load(Ordering::SeqCst);
    assert!((2..=8).contains(&made), "{made}");
    assert_eq!(client.kept(), made);
}

#[tokio::test]
async fn a_first_burst_to_an_origin_that_refuses_fails_every_request_at_once() {
    let client = crate::client::trusting_client(Duration::from_secs(30));
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("https://localhost:{port}/v1");
    let started = Instant::now();
    let failed = futures_util::future::join_all((0..8).map(|_| client.request(post(&url)))).await;
    assert!(
        failed
            .iter()
            .all(|result| matches!(result, Err(crate::client::ClientError::Connect(_))))
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn http1_requests_carry_the_host_and_their_path_alone() {
    let client = crate::client::plain_client(Duration::from_secs(30));
    let (address, _) = serve(None, |request| {
        let host = request.headers()[header::HOST].to_str().unwrap().to_owned();
        Response::new(full(format!("{host} {}", request.uri())))
    })
    .await;
    let response = client
        .request(post(&format!("http://{address}/v1/chat/completions?x=1")))
        .await
        .unwrap();
    assert_eq!(
        read_capped(response.into_body(), 1024).await.unwrap(),
        format!("{address} /v1/chat/completions?x=1")
    );
}

/// A raw HTTP/1.1 server: on each connection, answers `answered` requests
/// (200, kept alive), then reads one more and closes without a word.
/// Counts connections and requests read.
async fn answering_then_hanging_up(
    answered: usize,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (opened, read) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (accepted, requests) = (opened.clone(), read.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let requests = requests.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                for turn in 0..=answered {
                    // A head, and the body its `content-length` names.
                    loop {
                        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
                            let length = head
                                .lines()
                                .find_map(|line| line.strip_prefix("content-length: "))
                                .map_or(0, |length| length.trim().parse::<usize>().unwrap());
                            if buffer.len() >= end + 4 + length {
                                buffer.drain(..end + 4 + length);
                                break;
                            }
                        }
                        let mut chunk = [0u8; 4096];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    requests.fetch_add(1, Ordering::SeqCst);
                    if turn == answered {
                        return;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if socket.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (address, opened, read)
}

#[tokio::test]
async fn a_request_the_upstream_received_is_never_sent_again() {
    let client = crate::client::plain_client(Duration::from_secs(30));
    let (address, opened, read) = answering_then_hanging_up(1).await;
    assert_eq!(read_through(&client, address).await, "ok");
    // The kept connection takes the second POST; the upstream reads it and
    // hangs up. It may have acted on it: the client must not send it again.
    let error = client
        .request(post(&format!("http://{address}/v1")))
        .await
        .err()
        .expect("the request fails");
    assert!(
        matches!(error, crate::client::ClientError::Send(_)),
        "{error:?}"
    );
    assert_eq!(read.load(Ordering::SeqCst), 2);
    assert_eq!(opened.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_get_whose_kept_connection_ends_unanswered_is_sent_again_on_a_new_one() {
    let client = crate::client::plain_client(Duration::from_secs(30));
    let (address, opened, read) = answering_then_hanging_up(1).await;
    assert_eq!(read_through(&client, address).await, "ok");
    // The kept connection takes the GET; the upstream reads it and hangs
    // up without a word. A GET may be sent twice: it goes out again on a
    // new connection, which answers.
    let get = upstream_request(
        Method::GET,
        &format!("http://{address}/v1/models")
            .parse::<Uri>()
            .unwrap(),
        &HeaderMap::new(),
        Bytes::new(),
    );
    let response = client.request(get).await.unwrap();
    assert_eq!(read_capped(response.into_body(), 64).await.unwrap(), "ok");
    assert_eq!(opened.load(Ordering::SeqCst), 2);
    assert_eq!(read.load(Ordering::SeqCst), 3);
}

/// Whether the connection sees the close before or after the request is
/// written depends on the order the runtime runs things in; either way the
/// request fails at once and no other connection is made for it.
#[tokio::test]
async fn a_new_connection_the_upstream_closes_at_once_fails_the_request_without_another() {
    let client = crate::client::plain_client(Duration::from_secs(30));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let opened = Arc::new(AtomicUsize::new(0));
    let accepted = opened.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    let started = Instant::now();
    let failed = client.request(post(&format!("http://{address}/v1"))).await;
    assert!(failed.is_err());
    assert!(started.elapsed() < Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(opened.load(Ordering::SeqCst), 1);
}

/// A raw HTTP/1.1 server (over TLS when `tls` is given) that on each
/// connection reads a request's head and gives `answer`; then, when
/// `close` is set, closes the connection at once (as an upstream whose
/// keep-alive timeout is short does), or else holds it open without
/// reading more. Counts connections.
async fn answering_raw(
    tls: Option<tokio_rustls::TlsAcceptor>,
    answer: &'static [u8],
    close: bool,
) -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    async fn answer_on<S: AsyncRead + AsyncWrite + Unpin>(
        mut socket: S,
        answer: &[u8],
        close: bool,
    ) {
        let mut seen = Vec::new();
        while !seen.windows(4).any(|window| window == b"\r\n\r\n") {
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(count) => seen.extend_from_slice(&chunk[..count]),
            }
        }
        if socket.write_all(answer).await.is_err() || socket.flush().await.is_err() {
            return;
        }
        if !close {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let opened = Arc::new(AtomicUsize::new(0));
    let accepted = opened.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(socket).await {
                            answer_on(stream, answer, close).await;
                        }
                    }
                    None => answer_on(socket, answer, close).await,
                }
            });
        }
    });
    (address, opened)
}

#[tokio::test]
async fn a_kept_connection_the_upstream_closed_while_idle_is_not_sent_on() {
    let client = crate::client::plain_client(Duration::from_secs(30));
    let (address, opened) = answering_raw(
        None,
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        true,
    )
    .await;
    for round in 1..=3 {
        assert_eq!(read_through(&client, address).await, "ok");
        // The answer allowed keeping the connection, and it was kept; the
        // upstream's close arrives while it is idle.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(opened.load(Ordering::SeqCst), round);
    }
}

#[tokio::test]
async fn an_answer_over_tls_before_the_request_is_taken_is_read() {
    let client = crate::client::trusting_client(Duration::from_secs(30));
    let (address, _) = answering_raw(
        Some(tls_acceptor_offering(&[b"http/1.1"])),
        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo long",
        false,
    )
    .await;
    // Far more than the socket's and TLS's buffers hold, never read.
    let request = upstream_request(
        Method::POST,
        &format!("https://localhost:{}/v1", address.port())
            .parse::<Uri>()
            .unwrap(),
        &HeaderMap::new(),
        Bytes::from(vec![b'x'; 16 * 1024 * 1024]),
    );
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("the answer arrives while the request is being written")
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        read_capped(response.into_body(), 1024).await.unwrap(),
        "too long"
    );
    assert_eq!(client.kept(), 0);
}
