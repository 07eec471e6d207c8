//! The node's own HTTP/1 server loop: every connection is bounded in time
//! and number, so idle sockets, slow clients and floods of connections
//! cannot hold the node's descriptors or memory.
//!
//! - a connection cap: past it, new connections are accepted and closed at
//!   once (a log line says so, at most once per [`CAP_LOG_EVERY`]);
//! - a header-read timeout and header size / count caps (hyper's own);
//! - an idle timeout: a connection with no request running that moves no
//!   byte for that long is closed (this also ends clients that stop reading
//!   their answer);
//! - a body progress timeout: a request body that sends nothing for that
//!   long fails with [`BodyStalled`], which the invoke route answers 408.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::{Instant, Sleep};
use tower_service::Service as _;

/// hyper refuses a read buffer smaller than this (its own minimum).
pub const MIN_HEADER_BYTES: usize = 8192;

/// How often the "connection cap reached" and accept-error lines may be logged.
pub const CAP_LOG_EVERY: Duration = Duration::from_secs(10);

/// The server's limits. The defaults suit a 1 GiB board serving a few
/// hundred clients; `sedge serve` exposes each as a flag.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// A request's headers must arrive whole within this.
    pub header_read_timeout: Duration,
    /// A connection with no request running that moves no byte for this long is closed.
    pub idle_timeout: Duration,
    /// A request body that sends nothing for this long is cut off.
    pub body_timeout: Duration,
    /// Open connections at most; more are closed as they arrive.
    pub max_connections: usize,
    /// Bytes of a request's line and headers at most (at least [`MIN_HEADER_BYTES`]).
    pub max_header_bytes: usize,
    /// Headers per request at most.
    pub max_headers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_connections: 1000,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
        }
    }
}

/// The error a request body gives when its client sent nothing for too long.
#[derive(Debug, thiserror::Error)]
#[error("the request body sent nothing for {}", humantime::format_duration(*.after))]
pub struct BodyStalled {
    pub after: Duration,
}

/// Serves `router` on `listener` until `shutdown` completes; then stops
/// accepting, lets requests in flight finish and closes idle connections.
pub async fn run(
    listener: TcpListener,
    router: Router,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(MIN_HEADER_BYTES))
        .max_headers(config.max_headers);
    let http = Arc::new(http);
    let slots = Arc::new(Semaphore::new(config.max_connections.min(Semaphore::MAX_PERMITS)));
    let refusals = Every::default();
    let accept_errors = Every::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e, &accept_errors).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Dropping the stream closes it: the client learns at once
            // instead of waiting in the kernel's backlog.
            drop(stream);
            if let Some(n) = refusals.tick() {
                tracing::warn!(
                    "connection cap reached ({} open): closed {n} new connection(s)",
                    config.max_connections
                );
            }
            continue;
        };
        let conn = Connection { http: http.clone(), router: router.clone(), config: config.clone() };
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            conn.serve(stream, stop).await;
            drop(slot);
        });
    }
    let _ = stop_tx.send(true);
    drop(listener);
    // Every connection holds a slot until it ends: all back means all closed.
    let all = u32::try_from(config.max_connections.min(Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
    Ok(())
}

/// A client that reset its connection before it was taken is no error of
/// the node's. Others are mostly a full descriptor table, which passes as
/// connections close: wait a little rather than spin.
async fn accept_failed(e: io::Error, log: &Every) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    if let Some(n) = log.tick() {
        tracing::warn!("accepting connections failed {n} time(s): {e}");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Rate-limits a log line: says when it may be logged (at most once per
/// [`CAP_LOG_EVERY`]) and how many times it happened since it last was.
#[derive(Default)]
struct Every {
    state: Mutex<(Option<Instant>, u64)>,
}

impl Every {
    fn tick(&self) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.1 += 1;
        let now = Instant::now();
        if st.0.is_some_and(|last| now.duration_since(last) < CAP_LOG_EVERY) {
            return None;
        }
        let n = st.1;
        *st = (Some(now), 0);
        Some(n)
    }
}

struct Connection {
    http: Arc<hyper::server::conn::http1::Builder>,
    router: Router,
    config: ServerConfig,
}

impl Connection {
    async fn serve(self, stream: TcpStream, mut stop: watch::Receiver<bool>) {
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Tracked { inner: stream, activity: activity.clone() });
        let service = {
            let activity = activity.clone();
            let body_timeout = self.config.body_timeout;
            let router = self.router;
            hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let busy = activity.busy();
                let mut router = router.clone();
                let req = req.map(|b| axum::body::Body::new(Watched::new(b, body_timeout)));
                let activity = activity.clone();
                // Boxed, so the connection can be polled without being
                // pinned and its socket taken back at the end (see `linger`).
                let answer: AnswerFuture = Box::pin(async move {
                    let resp = router.call(req).await.unwrap_or_else(|never| match never {});
                    drop(busy);
                    Ok(resp.map(|b| axum::body::Body::new(Answer::new(b, activity))))
                });
                answer
            })
        };
        let mut conn = self.http.serve_connection(io, service);
        let mut stopping = false;
        loop {
            let event = tokio::select! {
                r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => Event::Ended(r),
                _ = stop.wait_for(|s| *s), if !stopping => Event::Stop,
                () = activity.idle_for(self.config.idle_timeout) => Event::Idle,
            };
            match event {
                Event::Ended(Ok(())) => break,
                Event::Ended(Err(e)) => {
                    tracing::debug!("connection ended: {e}");
                    return;
                }
                Event::Stop => {
                    // Finishes the request in flight, then closes.
                    Pin::new(&mut conn).graceful_shutdown();
                    stopping = true;
                }
                Event::Idle => {
                    tracing::debug!("closing a connection idle for {:?}", self.config.idle_timeout);
                    return;
                }
            }
        }
        linger(conn.into_parts().io.into_inner().inner).await;
    }
}

type AnswerFuture = Pin<Box<dyn Future<Output = Result<hyper::Response<axum::body::Body>, Infallible>> + Send>>;

enum Event {
    Ended(hyper::Result<()>),
    Stop,
    Idle,
}

/// How long a closing connection's unread bytes are drained.
pub const LINGER: Duration = Duration::from_secs(2);

/// Closes a connection whose answer is written: the write side first, so
/// the client sees the answer end; then what the client still sends (the
/// rest of a refused body) is read and dropped for up to [`LINGER`].
/// Closing with bytes unread would reset the connection, and a client
/// still sending its body would fail on the reset instead of reading the
/// answer (a 413 or 429).
async fn linger(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 16 * 1024];
    let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// When a connection last moved a byte, and how many of its requests are
/// being handled (a running invocation moves no byte but is not idle).
struct Activity {
    origin: Instant,
    last_ms: AtomicU64,
    busy: AtomicUsize,
}

/// A request being handled; its end counts as activity.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    fn new() -> Self {
        Self { origin: Instant::now(), last_ms: AtomicU64::new(0), busy: AtomicUsize::new(0) }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Completes once the connection has been idle for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let due = last + limit;
            if Instant::now() >= due {
                if self.busy.load(Ordering::Acquire) == 0 {
                    return;
                }
                // A request is being handled; its end restarts the clock.
                tokio::time::sleep(limit).await;
            } else {
                tokio::time::sleep_until(due).await;
            }
        }
    }
}

/// The connection's socket, noting each byte that moves.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl Tracked {
    fn note<T>(&self, r: &Poll<io::Result<T>>) {
        if matches!(r, Poll::Ready(Ok(_))) {
            self.activity.touch();
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.note(&r);
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.note(&r);
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.note(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// An answer's body that counts as busy while it waits on its source (a
/// followed log), but not while the client is slow to take it: a client
/// that stops reading its answer is idle.
struct Answer {
    inner: axum::body::Body,
    activity: Arc<Activity>,
    waiting: Option<Busy>,
}

impl Answer {
    fn new(inner: axum::body::Body, activity: Arc<Activity>) -> Self {
        Self { inner, activity, waiting: None }
    }
}

impl hyper::body::Body for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match r {
            Poll::Pending => {
                if this.waiting.is_none() {
                    this.waiting = Some(this.activity.busy());
                }
            }
            Poll::Ready(_) => this.waiting = None,
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails with [`BodyStalled`] when its client sends
/// nothing for `timeout`. The clock starts when the body is first read,
/// so a request refused before its body is read never waits on it.
struct Watched {
    inner: Incoming,
    timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Watched {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        Self { inner, timeout, deadline: None }
    }
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let timeout = this.timeout;
        let deadline = this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                deadline.as_mut().reset(Instant::now() + timeout);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled { after: timeout })))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(60);

    /// Whether `idle_for(LIMIT)` completes once `after` has passed.
    async fn idle_after(activity: &Activity, after: Duration) -> bool {
        tokio::time::timeout(after, activity.idle_for(LIMIT)).await.is_ok()
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_quiet_connection_is_idle_once_the_limit_passes() {
        let activity = Activity::new();
        assert!(!idle_after(&activity, LIMIT - Duration::from_secs(1)).await);
        activity.touch();
        assert!(!idle_after(&activity, LIMIT - Duration::from_secs(1)).await, "a byte restarts the clock");
        assert!(idle_after(&activity, Duration::from_secs(2)).await);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_request_being_handled_is_never_idle() {
        let activity = Arc::new(Activity::new());
        let busy = activity.busy();
        assert!(!idle_after(&activity, LIMIT * 10).await);
        drop(busy);
        assert!(!idle_after(&activity, LIMIT - Duration::from_secs(1)).await, "its end restarts the clock");
        assert!(idle_after(&activity, Duration::from_secs(2)).await);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_rate_limited_line_says_how_many_times_since_it_was_last_logged() {
        let log = Every::default();
        assert_eq!(log.tick(), Some(1));
        assert_eq!(log.tick(), None);
        assert_eq!(log.tick(), None);
        tokio::time::advance(CAP_LOG_EVERY).await;
        assert_eq!(log.tick(), Some(3));
        assert_eq!(log.tick(), None);
    }
}
