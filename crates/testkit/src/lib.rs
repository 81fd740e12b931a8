//! Test support, never linked into the binary: a mock upstream that speaks
//! OpenAI's wire format (and Azure's deployment-style paths) on a loopback
//! port chosen by the OS, answers as each test scripts it, and records every
//! request it receives so tests can assert what crossed the wire.
//!
//! Requests on other vendors' paths get those vendors' answers (see
//! `vendors`). By default it answers like OpenAI: a `chat.completion` object, or an SSE
//! stream of `chat.completion.chunk` events ending in `data: [DONE]`, with a
//! usage chunk only when the request asked for one. Tests push `Script`s to
//! replace the default for the next requests, in order.
//!
//! `skip` is how tests that need PostgreSQL, Redis, python3 or node say
//! they could not run.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

pub mod skip;
pub mod vendors;

pub use skip::skip_or_fail;

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the gateway sent JSON upstream")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// How the mock answers one request.
#[derive(Debug, Clone)]
pub enum Script {
    /// A status and a JSON (or any) body, with extra headers.
    Respond {
        status: u16,
        body: String,
        headers: Vec<(String, String)>,
    },
    /// An event stream: each piece is sent after its delay. When `close`
    /// is false the connection stays open after the last piece.
    Stream {
        pieces: Vec<(Duration, String)>,
        close: bool,
    },
    /// Sends these pieces of a 200 event stream, then drops the
    /// connection without ending the response (a reset mid-stream).
    Reset { pieces: Vec<(Duration, String)> },
    /// Wait this long before giving the default answer.
    Delay(Duration),
    /// Never answer (until the gateway gives up, which counts as an
    /// abandoned request).
    Hang,
}

/// Stream pieces sent one right after another.
pub fn at_once(events: &[String]) -> Vec<(Duration, String)> {
    events
        .iter()
        .map(|event| (Duration::ZERO, event.clone()))
        .collect()
}

impl Script {
    pub fn json(status: u16, body: Value) -> Script {
        Script::Respond {
            status,
            body: body.to_string(),
            headers: Vec::new(),
        }
    }

    pub fn raw(status: u16, body: &str) -> Script {
        Script::Respond {
            status,
            body: body.to_owned(),
            headers: Vec::new(),
        }
    }

    /// An SSE stream of `data:` events sent one after another with `gap`.
    pub fn events(payloads: &[&str], gap: Duration) -> Script {
        Script::Stream {
            pieces: payloads
                .iter()
                .map(|payload| (gap, format!("data: {payload}\n\n")))
                .collect(),
            close: true,
        }
    }
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    scripts: Mutex<VecDeque<Script>>,
    /// Streams (and hanging requests) whose client, the gateway, went away
    /// before the end.
    abandoned_streams: AtomicUsize,
    open_connections: AtomicUsize,
    notify: tokio::sync::Notify,
}

/// A running mock upstream. Stops when dropped.
pub struct MockUpstream {
    pub address: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    pub async fn start() -> MockUpstream {
        let shared = Arc::new(Shared::default());
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let address = listener.local_addr().expect("local address");
        let listener = CountingListener {
            inner: listener,
            shared: shared.clone(),
        };
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("mock upstream serves");
        });
        MockUpstream {
            address,
            shared,
            task,
        }
    }

    /// `http://127.0.0.1:PORT/v1`, the base URL an OpenAI-style deployment uses.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// `http://127.0.0.1:PORT`, the base URL an Azure deployment uses.
    pub fn root_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Scripts the answer to the next unscripted request.
    pub fn push(&self, script: Script) {
        self.shared.scripts.lock().unwrap().push_back(script);
    }

    /// Drops every script not yet used: the upstream behaves by default again.
    pub fn clear_scripts(&self) {
        self.shared.scripts.lock().unwrap().clear();
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    pub fn last(&self) -> Received {
        self.received().pop().expect("the mock received a request")
    }

    /// TCP connections from the gateway that are open right now.
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections.load(Ordering::SeqCst)
    }

    pub fn abandoned_streams(&self) -> usize {
        self.shared.abandoned_streams.load(Ordering::SeqCst)
    }

    /// Waits until `condition` holds, checking after every request and
    /// every abandoned stream; panics after `limit`.
    pub async fn wait_for(&self, limit: Duration, condition: impl Fn(&MockUpstream) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        while !condition(self) {
            let notified = self.shared.notify.notified();
            if tokio::time::timeout_at(deadline, notified).await.is_err() && !condition(self) {
                panic!("condition not reached within {limit:?}");
            }
        }
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let received = Received {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body: body.clone(),
    };
    shared.received.lock().unwrap().push(received);
    shared.notify.notify_waiters();

    // Scripts answer model calls (POST); listing models always works.
    let mut script = if parts.method == axum::http::Method::POST {
        shared.scripts.lock().unwrap().pop_front()
    } else {
        None
    };
    if let Some(Script::Delay(delay)) = script {
        tokio::time::sleep(delay).await;
        script = None;
    }
    match script {
        Some(Script::Respond {
            status,
            body,
            headers,
        }) => {
            let mut response = Response::builder()
                .status(status)
                .header("content-type", "application/json");
            for (name, value) in headers {
                response = response.header(name, value);
            }
            response.body(Body::from(body)).expect("valid response")
        }
        Some(Script::Stream { pieces, close }) => stream_response(
            shared,
            pieces,
            if close {
                StreamEnd::Close
            } else {
                StreamEnd::Hold
            },
        ),
        Some(Script::Reset { pieces }) => stream_response(shared, pieces, StreamEnd::Reset),
        Some(Script::Hang) => {
            // Counted as abandoned when the gateway gives up on the request
            // and the connection closes, which drops this future.
            let _watch = StreamWatch {
                shared: shared.clone(),
                completed: false,
            };
            std::future::pending::<()>().await;
            unreachable!()
        }
        Some(Script::Delay(_)) | None => default_answer(&shared, parts.uri.path(), &body),
    }
}

fn default_answer(shared: &Arc<Shared>, path: &str, body: &[u8]) -> Response {
    if path.ends_with("/models") && body.is_empty() {
        return axum::Json(json!({
            "object": "list",
            "data": [{"id": "mock-model", "object": "model", "created": 1_700_000_000, "owned_by": "mock"}],
        }))
        .into_response();
    }
    if let Some(answer) = vendors::answer(path, body) {
        return answer;
    }
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return (StatusCode::BAD_REQUEST, "{\"error\":{\"message\":\"bad json\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}").into_response();
    };
    let model = request["model"].as_str().unwrap_or("unknown").to_owned();
    if let Some(answer) = vendors::openai_special(&vendors::openai_ask(&request, body), &model) {
        return answer;
    }
    if path.ends_with("/embeddings") {
        return axum::Json(json!({
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 0.125]}],
            "model": model,
            "usage": {"prompt_tokens": 4, "total_tokens": 4},
        }))
        .into_response();
    }
    if request["stream"] == json!(true) {
        let include_usage = request["stream_options"]["include_usage"] == json!(true);
        let pieces = openai_stream(&model, &["Hello", " from", " the", " mock"], include_usage)
            .into_iter()
            .map(|event| (Duration::ZERO, event))
            .collect();
        return stream_response(shared.clone(), pieces, StreamEnd::Close);
    }
    axum::Json(json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the mock", "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13,
                  "prompt_tokens_details": {"cached_tokens": 2}, "completion_tokens_details": {"reasoning_tokens": 1}},
        "system_fingerprint": "fp_mock",
    }))
    .into_response()
}

/// The SSE events OpenAI sends for a reply made of `tokens`, framed.
pub fn openai_stream(model: &str, tokens: &[&str], include_usage: bool) -> Vec<String> {
    let usage_member = if include_usage { ",\"usage\":null" } else { "" };
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"{model}\",\"system_fingerprint\":\"fp_mock\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]{usage_member}}}\n\n"
        )
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    events.extend(
        tokens
            .iter()
            .map(|token| chunk(json!({"content": token}), Value::Null)),
    );
    events.push(chunk(json!({}), json!("stop")));
    if include_usage {
        events.push(format!(
            "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"{model}\",\"system_fingerprint\":\"fp_mock\",\"choices\":[],\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":{},\"total_tokens\":{}}}}}\n\n",
            tokens.len(),
            9 + tokens.len()
        ));
    }
    events.push("data: [DONE]\n\n".to_owned());
    events
}

/// Counts the stream as abandoned if it is dropped before its end.
struct StreamWatch {
    shared: Arc<Shared>,
    completed: bool,
}

impl Drop for StreamWatch {
    fn drop(&mut self) {
        if !self.completed {
            self.shared.abandoned_streams.fetch_add(1, Ordering::SeqCst);
            self.shared.notify.notify_waiters();
        }
    }
}

/// How a scripted stream ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    Close,
    Hold,
    Reset,
}

fn stream_response(
    shared: Arc<Shared>,
    pieces: Vec<(Duration, String)>,
    end: StreamEnd,
) -> Response {
    let watch = StreamWatch {
        shared,
        completed: false,
    };
    let stream = futures_util::stream::unfold(
        (pieces.into_iter(), watch),
        move |(mut pieces, mut watch)| async move {
            match pieces.next() {
                Some((delay, piece)) => {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Some((
                        Ok::<Bytes, std::io::Error>(Bytes::from(piece)),
                        (pieces, watch),
                    ))
                }
                None => match end {
                    StreamEnd::Close => {
                        watch.completed = true;
                        drop(watch);
                        None
                    }
                    StreamEnd::Hold => {
                        std::future::pending::<()>().await;
                        None
                    }
                    // An error from the body makes the server abort the
                    // connection mid-response.
                    StreamEnd::Reset => {
                        watch.completed = true;
                        Some((
                            Err(std::io::Error::other("scripted reset")),
                            (pieces, watch),
                        ))
                    }
                },
            }
        },
    );
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .expect("valid response")
}

/// Installs the one TLS crypto provider the workspace compiles in, so that
/// test code may build HTTP clients before (or without) a gateway, which
/// installs it otherwise.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Accepts connections and counts those still open, so tests can tell
/// whether the gateway leaks upstream sockets.
struct CountingListener {
    inner: tokio::net::TcpListener,
    shared: Arc<Shared>,
}

/// A connection that counts itself open until dropped.
struct CountedStream {
    inner: tokio::net::TcpStream,
    shared: Arc<Shared>,
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.shared.open_connections.fetch_sub(1, Ordering::SeqCst);
        self.shared.notify.notify_waiters();
    }
}

impl axum::serve::Listener for CountingListener {
    type Io = CountedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CountedStream, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, address)) => {
                    let _ = stream.set_nodelay(true);
                    self.shared.open_connections.fetch_add(1, Ordering::SeqCst);
                    return (
                        CountedStream {
                            inner: stream,
                            shared: self.shared.clone(),
                        },
                        address,
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl tokio::io::AsyncRead for CountedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(context, buffer)
    }
}

impl tokio::io::AsyncWrite for CountedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(context, buffer)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(context)
    }
}
