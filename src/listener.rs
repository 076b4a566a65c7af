//! Accepting connections: caps on open connections, a deadline for every request head, and
//! the errors hyper answers by itself rendered as problem+json.
//!
//! - **Caps.** At most `HTTP_MAX_CONNECTIONS` open connections per replica and
//!   `HTTP_MAX_CONNECTIONS_PER_IP` per peer address (trusted proxies are exempt: a load
//!   balancer carries many clients). A connection over a cap is closed at accept.
//! - **Head deadline.** A client has `HTTP_HEADER_TIMEOUT_SECONDS` to send a complete request
//!   head, counted from accept, or from the first byte that arrives while no request is being
//!   served (the start of the next head on a keep-alive connection). The idle timeout alone
//!   does not stop a slow-header client: it resets on every byte. The deadline lives in the
//!   connection's I/O ([`GuardedIo`]), which hyper reads: when it passes, the read fails and the
//!   connection closes (after a 408 problem on HTTP/1 when part of a head was sent). A request
//!   reaching the application ([`TrackRequests`]) stops the clock; this works alike for
//!   HTTP/1 and HTTP/2.
//! - **hyper's own errors.** A head hyper cannot parse (too long a URI, too large headers,
//!   broken framing) is answered by hyper itself with an empty body. Every response of the
//!   application carries `x-request-id`; an HTTP/1 error response without one is hyper's, and
//!   is rewritten on its way out into the same problem+json the application sends.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use poem::listener::{Acceptor, TcpAcceptor};
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Endpoint, Middleware, Request};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::ratelimit::Cidr;
use crate::telemetry::Metrics;

/// Limits on connections, from the settings.
#[derive(Debug, Clone)]
pub struct ConnectionPolicy {
    /// Time to send a complete request head.
    pub header_timeout: Duration,
    /// Open connections per replica.
    pub max_total: usize,
    /// Open connections per peer address (0 = no cap).
    pub max_per_ip: usize,
    /// Peers exempt from the per-address cap.
    pub trusted: Arc<Vec<Cidr>>,
}

/// What one connection shares with the requests it carries.
#[derive(Debug, Default)]
struct ConnState {
    /// Requests being served right now.
    busy: AtomicUsize,
    /// Requests that reached the application so far.
    started: AtomicU64,
}

/// The open connections of one server.
pub struct Connections {
    policy: ConnectionPolicy,
    metrics: Arc<Metrics>,
    inner: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    by_peer: HashMap<SocketAddr, Arc<ConnState>>,
}

impl Connections {
    /// An empty registry enforcing `policy`.
    pub fn new(policy: ConnectionPolicy, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            policy,
            metrics,
            inner: Mutex::new(Open::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection from `peer`, or `None` when a cap refuses it.
    fn admit(&self, peer: SocketAddr) -> Option<Arc<ConnState>> {
        let ip = peer.ip().to_canonical();
        let exempt = self.policy.trusted.iter().any(|c| c.contains(ip));
        let mut open = self.lock();
        if open.total >= self.policy.max_total {
            drop(open);
            self.metrics.connection("refused_total_cap");
            return None;
        }
        let from_ip = open.per_ip.get(&ip).copied().unwrap_or(0);
        if !exempt && self.policy.max_per_ip > 0 && from_ip >= self.policy.max_per_ip {
            drop(open);
            self.metrics.connection("refused_ip_cap");
            return None;
        }
        let state = Arc::new(ConnState::default());
        open.total += 1;
        *open.per_ip.entry(ip).or_insert(0) += 1;
        open.by_peer.insert(peer, state.clone());
        self.metrics.open_connections.set(gauge(open.total));
        Some(state)
    }

    fn release(&self, peer: SocketAddr) {
        let ip = peer.ip().to_canonical();
        let mut open = self.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.per_ip.remove(&ip);
            }
        }
        open.by_peer.remove(&peer);
        self.metrics.open_connections.set(gauge(open.total));
    }

    fn state_of(&self, peer: SocketAddr) -> Option<Arc<ConnState>> {
        self.lock().by_peer.get(&peer).cloned()
    }

    /// Open connections right now.
    pub fn open(&self) -> usize {
        self.lock().total
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A TCP acceptor that sets `TCP_NODELAY` (a response goes out at once instead of waiting,
/// under Nagle's algorithm, for the peer's delayed ACK) and enforces [`ConnectionPolicy`].
pub struct GuardedAcceptor {
    inner: TcpAcceptor,
    connections: Arc<Connections>,
}

impl GuardedAcceptor {
    /// Wraps a bound acceptor.
    pub fn new(inner: TcpAcceptor, connections: Arc<Connections>) -> Self {
        Self { inner, connections }
    }
}

impl Acceptor for GuardedAcceptor {
    type Io = GuardedIo;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(
        &mut self,
    ) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, poem::http::uri::Scheme)> {
        loop {
            let (io, local, remote, scheme) = self.inner.accept().await?;
            let Some(peer) = remote.as_socket_addr().copied() else {
                continue;
            };
            let Some(state) = self.connections.admit(peer) else {
                // Over a cap: closed at once (dropping the socket).
                continue;
            };
            if let Err(err) = io.set_nodelay(true) {
                tracing::debug!(error = %err, "could not set TCP_NODELAY");
            }
            let io = GuardedIo::new(io, peer, state, self.connections.clone());
            return Ok((io, local, remote, scheme));
        }
    }
}

/// A connection's socket with the head deadline and the rewriting of hyper's own errors.
pub struct GuardedIo {
    inner: TcpStream,
    peer: SocketAddr,
    state: Arc<ConnState>,
    connections: Arc<Connections>,
    /// The running head deadline and the request count it was armed at.
    deadline: Option<(Pin<Box<Sleep>>, u64)>,
    /// Whether bytes of the current head arrived (a 408 is owed when the deadline passes).
    head_started: bool,
    /// The connection speaks HTTP/2 (its preface was seen): no HTTP/1 text is written.
    http2: bool,
    /// Whether anything was read yet (to spot the HTTP/2 preface).
    read_any: bool,
    /// Bytes owed to the socket before anything else: a rewritten error response.
    pending: Vec<u8>,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

impl GuardedIo {
    fn new(
        inner: TcpStream,
        peer: SocketAddr,
        state: Arc<ConnState>,
        connections: Arc<Connections>,
    ) -> Self {
        let timeout = connections.policy.header_timeout;
        Self {
            inner,
            peer,
            state,
            connections,
            deadline: Some((Box::pin(tokio::time::sleep(timeout)), 0)),
            head_started: false,
            http2: false,
            read_any: false,
            pending: Vec::new(),
        }
    }

    /// Writes what is owed; `Ready(Ok)` once nothing is.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.pending.drain(..n);
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for GuardedIo {
    fn drop(&mut self) {
        self.connections.release(self.peer);
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let started = this.state.started.load(Ordering::Acquire);
        let busy = this.state.busy.load(Ordering::Acquire) > 0;
        // A request reached the application since the clock started: its head is complete.
        if busy || this.deadline.as_ref().is_some_and(|(_, at)| *at != started) {
            this.deadline = None;
            this.head_started = false;
        }
        if let Some((sleep, _)) = &mut this.deadline
            && sleep.as_mut().poll(cx).is_ready()
        {
            this.connections.metrics.connection("header_timeout");
            if this.head_started && !this.http2 {
                // Best effort: the client may not be reading.
                let _ = Pin::new(&mut this.inner).poll_write(cx, &problem_bytes(408));
            }
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not received in time",
            )));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                if !this.read_any {
                    this.read_any = true;
                    this.http2 = read.starts_with(H2_PREFACE);
                }
                if !busy {
                    this.head_started = true;
                    if this.deadline.is_none() {
                        let mut sleep =
                            Box::pin(tokio::time::sleep(this.connections.policy.header_timeout));
                        // Registers the waker, so the deadline wakes this task.
                        let _ = sleep.as_mut().poll(cx);
                        this.deadline = Some((sleep, started));
                    }
                }
            }
        }
        result
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.poll_pending(cx)?.is_pending() {
            return Poll::Pending;
        }
        if !this.http2
            && let Some(status) = hypers_own_error(buf)
        {
            this.pending = problem_bytes(status);
            // The rewritten response is owed; hyper's is consumed whole.
            let _ = this.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.poll_pending(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.poll_pending(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// The status of `buf` when it is a whole HTTP/1 error response that hyper wrote itself: a
/// 4xx/5xx head with an empty body and no `x-request-id` (which every application response
/// carries).
fn hypers_own_error(buf: &[u8]) -> Option<u16> {
    let rest = buf
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| buf.strip_prefix(b"HTTP/1.0 "))?;
    let status: u16 = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
    if !(400..600).contains(&status) || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let head = String::from_utf8_lossy(buf).to_ascii_lowercase();
    if head.contains("\r\nx-request-id:") || !head.contains("\r\ncontent-length: 0\r\n") {
        return None;
    }
    // Exactly one head in the buffer.
    (head.find("\r\n\r\n")? + 4 == head.len()).then_some(status)
}

/// A complete HTTP/1.1 problem+json response for an error hyper or the head deadline produced;
/// the connection closes after it.
fn problem_bytes(status: u16) -> Vec<u8> {
    let (code, title, detail) = match status {
        408 => (
            "request_timeout",
            "Request Timeout",
            "The request head was not received in time.",
        ),
        413 => (
            "payload_too_large",
            "Payload Too Large",
            "The request is too large.",
        ),
        414 => (
            "uri_too_long",
            "URI Too Long",
            "The request URI is too long.",
        ),
        431 => (
            "headers_too_large",
            "Request Header Fields Too Large",
            "The request headers are too large.",
        ),
        505 => (
            "http_version_not_supported",
            "HTTP Version Not Supported",
            "Use HTTP/1.1 or HTTP/2.",
        ),
        s if s >= 500 => (
            "internal_error",
            "Internal Server Error",
            "Internal server error.",
        ),
        _ => (
            "invalid_request",
            "Bad Request",
            "The request could not be parsed as HTTP.",
        ),
    };
    let body = serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    })
    .to_string();
    format!(
        "HTTP/1.1 {status} {title}\r\ncontent-type: application/problem+json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Middleware: tells a request's connection that a request is being served, which stops its
/// head deadline until the response is done.
pub struct TrackRequests {
    /// The server's connections.
    pub connections: Arc<Connections>,
}

impl<E: Endpoint> Middleware<E> for TrackRequests {
    type Output = TrackRequestsEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        TrackRequestsEndpoint {
            inner: ep,
            connections: self.connections.clone(),
        }
    }
}

/// The endpoint [`TrackRequests`] wraps.
pub struct TrackRequestsEndpoint<E> {
    inner: E,
    connections: Arc<Connections>,
}

/// Marks a connection idle again when the request ends, however it ends.
struct Busy(Arc<ConnState>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<E: Endpoint> Endpoint for TrackRequestsEndpoint<E> {
    type Output = E::Output;

    fn call(&self, req: Request) -> impl Future<Output = poem::Result<Self::Output>> + Send {
        let busy = req
            .remote_addr()
            .as_socket_addr()
            .and_then(|peer| self.connections.state_of(*peer))
            .map(|state| {
                state.busy.fetch_add(1, Ordering::AcqRel);
                state.started.fetch_add(1, Ordering::AcqRel);
                Busy(state)
            });
        async move {
            let result = self.inner.call(req).await;
            drop(busy);
            result
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_errors_are_recognised() {
        let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Sun, 29 Nov 2026 05:00:00 GMT\r\n\r\n";
        assert_eq!(hypers_own_error(hyper_431), Some(431));
        let ours = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nx-request-id: abc\r\n\r\n";
        assert_eq!(hypers_own_error(ours), None);
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(hypers_own_error(ok), None);
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(hypers_own_error(with_body), None);
    }

    #[test]
    fn problem_bytes_are_a_complete_response() {
        let text = String::from_utf8(problem_bytes(414)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["code"], "uri_too_long");
        assert_eq!(body["status"], 414);
    }
}
