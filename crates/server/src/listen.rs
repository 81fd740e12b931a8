//! The listener: accepts connections and serves each with the front, over
//! the gateway's own HTTP/1.1 (`h1.rs`), or over hyper's HTTP/2 for a
//! client that opens with HTTP/2's preface (prior knowledge, as `h2c`
//! clients do). A stop closes the listener, closes idle connections, lets
//! busy ones finish their answer, and returns once every connection has
//! closed. A connection idle for `server.idle_timeout_secs` is closed: an
//! HTTP/1.1 one between requests (`h1.rs`), an HTTP/2 one once it has had
//! no open stream for that long (`GOAWAY`, then closed).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::front::Front;
use crate::h1;
use crate::head_lines::HeadLines;
use crate::metrics::Metrics;

/// Serves connections until `stop` is cancelled, then waits for those
/// still open to close. A connection idle for `idle_timeout` between
/// requests is closed. Each accepted connection is served here or handed
/// to one of `shards` (the serving threads with runtimes of their own),
/// whichever has the fewest open.
pub(crate) async fn serve(
    listener: TcpListener,
    front: Front,
    idle_timeout: Duration,
    stop: CancellationToken,
    shards: Shards,
) {
    let Shards {
        others,
        connections,
        open,
    } = shards;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // The connection failed before it was taken: the next one may not.
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                // Out of file descriptors, say: wait for some to close
                // rather than spin.
                tracing::error!(%error, "could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Nagle's algorithm meeting delayed ACKs adds ~40 ms to small
        // responses on kept-alive connections: disable it on every socket.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        // Counted at once, on the thread with the fewest (this one on a
        // tie), so that a burst of connections spreads.
        let thread = open.least();
        let stream = match thread.checked_sub(1).and_then(|other| others.get(other)) {
            None => stream,
            Some(shard) => match shard.hand(stream, OnThread::count(&open, thread)) {
                Ok(()) | Err(None) => continue,
                // The thread has ended (it cannot, but for a panic of its
                // runtime): this one serves the connection.
                Err(Some(stream)) => {
                    tracing::error!(thread, "a serving thread has ended; serving here");
                    match TcpStream::from_std(stream) {
                        Ok(stream) => stream,
                        Err(error) => {
                            tracing::error!(%error, "could not serve a connection");
                            continue;
                        }
                    }
                }
            },
        };
        let counted = OnThread::count(&open, 0);
        let serving = connection(stream, front.clone(), idle_timeout, stop.clone());
        connections.spawn(async move {
            let _counted = counted;
            serving.await;
        });
    }
    drop(listener);
    // The other threads' loops end once their hand-off closes.
    drop(others);
    connections.close();
    connections.wait().await;
}

/// The serving threads besides the acceptor's, the tracker of every
/// connection open on any of them, and how many each has open.
pub(crate) struct Shards {
    others: Vec<Shard>,
    connections: TaskTracker,
    open: Arc<Metrics>,
}

/// A serving thread with a current-thread runtime of its own, which serves
/// the connections the acceptor hands it until the acceptor stops.
struct Shard {
    handoff: tokio::sync::mpsc::UnboundedSender<(std::net::TcpStream, OnThread)>,
}

impl Shard {
    /// Hands `stream` over; gives it back (as a std socket, counted
    /// nowhere) if the thread has ended.
    fn hand(
        &self,
        stream: TcpStream,
        counted: OnThread,
    ) -> Result<(), Option<std::net::TcpStream>> {
        let stream = stream.into_std().map_err(|error| {
            tracing::error!(%error, "could not hand a connection to a serving thread");
            None
        })?;
        self.handoff
            .send((stream, counted))
            .map_err(|unsent| Some(unsent.0.0))
    }
}

impl Shards {
    /// As many serving threads as `metrics` counts connections for: the
    /// caller's and the others, started here, each on a current-thread
    /// runtime of its own. A thread keeps its runtime running, its
    /// connections included, until `release` is cancelled: a socket a task
    /// elsewhere uses (a pooled database connection an admin request
    /// opened, a Redis connection made again) may be watched by its
    /// runtime, and must keep working until the last records are written.
    pub(crate) fn start(
        front: &Front,
        metrics: &Arc<Metrics>,
        idle_timeout: Duration,
        stop: &CancellationToken,
        release: &CancellationToken,
    ) -> io::Result<Shards> {
        let threads = metrics.serving_threads();
        let connections = TaskTracker::new();
        let mut others = Vec::with_capacity(threads.saturating_sub(1));
        for index in 1..threads {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (handoff, mut handed) =
                tokio::sync::mpsc::unbounded_channel::<(std::net::TcpStream, OnThread)>();
            let front = front.clone();
            let stop = stop.clone();
            let connections = connections.clone();
            let release = release.clone();
            // Counted as a connection until the hand-off closes, so that
            // the acceptor's wait also covers a connection still queued.
            let handing = connections.token();
            let serving = async move {
                while let Some((stream, counted)) = handed.recv().await {
                    match TcpStream::from_std(stream) {
                        Ok(stream) => {
                            let serving =
                                connection(stream, front.clone(), idle_timeout, stop.clone());
                            connections.spawn(async move {
                                let _counted = counted;
                                serving.await;
                            });
                        }
                        Err(error) => {
                            tracing::error!(%error, "could not serve a handed connection");
                        }
                    }
                }
                drop(handing);
                release.cancelled().await;
            };
            std::thread::Builder::new()
                .name(format!("sb-serve-{index}"))
                .spawn(move || {
                    switchboard_providers::shard::enter(index);
                    runtime.block_on(serving);
                })?;
            others.push(Shard { handoff });
        }
        Ok(Shards {
            others,
            connections,
            open: metrics.clone(),
        })
    }
}

/// One of a serving thread's open connections, counted until dropped.
struct OnThread {
    metrics: Arc<Metrics>,
    thread: usize,
}

impl OnThread {
    fn count(metrics: &Arc<Metrics>, thread: usize) -> OnThread {
        metrics.connection_opened(thread);
        OnThread {
            metrics: metrics.clone(),
            thread,
        }
    }
}

impl Drop for OnThread {
    fn drop(&mut self) {
        self.metrics.connection_closed(self.thread);
    }
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn connection(
    stream: TcpStream,
    front: Front,
    idle_timeout: Duration,
    stop: CancellationToken,
) {
    let mut service = front.clone();
    let served = h1::serve(
        stream,
        |request| {
            service.call(request).map(|answered| match answered {
                Ok(response) => response,
                Err(never) => match never {},
            })
        },
        idle_timeout,
        &stop,
    )
    .await;
    if let h1::Ended::Http2(stream, read) = served {
        http2(Rewind { read, io: stream }, front, idle_timeout, stop).await;
    }
}

/// Serves an HTTP/2 connection with hyper's server until it closes. A stop,
/// or `idle_timeout` without an open stream, sends it `GOAWAY` and lets the
/// streams open finish.
async fn http2(
    io: Rewind<TcpStream>,
    front: Front,
    idle_timeout: Duration,
    stop: CancellationToken,
) {
    let streams = Arc::new(Streams::new());
    let service = hyper::service::service_fn({
        let streams = streams.clone();
        move |request: hyper::Request<_>| {
            let open = Open::new(&streams);
            let mut front = front.clone();
            front.call(request.map(Body::new)).map(move |answered| {
                answered.map(|mut response| {
                    // hyper writes only the header map.
                    HeadLines::into_headers(&mut response);
                    response.map(|body| Tracked { body, _open: open })
                })
            })
        }
    });
    let connection = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let mut idle = std::pin::pin!(tokio::time::sleep(idle_timeout));
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%error, "HTTP/2 connection ended");
                }
                return;
            }
            () = stop.cancelled() => break,
            () = idle.as_mut() => match streams.idle_until(idle_timeout) {
                Some(deadline) => idle.as_mut().reset(deadline),
                None => break,
            },
        }
    }
    connection.as_mut().graceful_shutdown();
    if let Err(error) = connection.await {
        tracing::debug!(%error, "HTTP/2 connection ended");
    }
}

/// An HTTP/2 connection's streams, for its idle timeout: how many are open
/// (from the request until the answer's body has ended or was dropped),
/// and when the last one closed.
struct Streams {
    open: AtomicUsize,
    /// When the last stream closed, in milliseconds since `since`.
    closed_at: AtomicU64,
    since: tokio::time::Instant,
}

impl Streams {
    fn new() -> Streams {
        Streams {
            open: AtomicUsize::new(0),
            closed_at: AtomicU64::new(0),
            since: tokio::time::Instant::now(),
        }
    }

    /// `None` once the connection has had no open stream for
    /// `idle_timeout`; otherwise when to look again.
    fn idle_until(&self, idle_timeout: Duration) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        if self.open.load(Ordering::Acquire) > 0 {
            return Some(now + idle_timeout);
        }
        let closed = self.since + Duration::from_millis(self.closed_at.load(Ordering::Acquire));
        let deadline = closed + idle_timeout;
        (deadline > now).then_some(deadline)
    }
}

/// One open stream of a `Streams`.
struct Open(Arc<Streams>);

impl Open {
    fn new(streams: &Arc<Streams>) -> Open {
        streams.open.fetch_add(1, Ordering::AcqRel);
        Open(streams.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let streams = &self.0;
        let millis = u64::try_from(streams.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Written before the count falls, so that a count of none is never
        // read with an older time.
        streams.closed_at.fetch_max(millis, Ordering::AcqRel);
        streams.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body that holds its stream open until it ends or is
/// dropped.
struct Tracked {
    body: Body,
    _open: Open,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A socket whose first bytes were already read: they are read again
/// first.
struct Rewind<T> {
    read: Bytes,
    io: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let count = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..count]);
            self.read.advance(count);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
