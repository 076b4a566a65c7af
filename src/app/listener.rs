//! Accepting connections: caps on open connections, a deadline for every request head, and
//! the errors hyper answers by itself rendered as problem+json.
//!
//! Why this file is long: the acceptor, the connection I/O wrapper and its deadlines share one
//! state per connection and are only correct together.
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
//!   reaching the application ([`TrackRequests`]) stops the clock. On HTTP/2 the head deadline
//!   runs until the first request only (later bytes may be control frames of an idle
//!   connection).
//! - **Idle and stalled connections, closed hard.** No byte while no request is served for
//!   `HTTP_IDLE_TIMEOUT_SECONDS` fails the connection's read (poem's own idle close only asks
//!   hyper to finish, which can wait forever on a half-sent head); a response write that makes no
//!   progress for as long (a client that stopped reading) fails the write.
//! - **Draining.** When shutdown starts ([`Connections::start_draining`]) the acceptor drops the
//!   listening socket at once (new connections are refused, which a proxy retries elsewhere for
//!   any method: nothing was sent), while open connections keep being served for a short while,
//!   each HTTP/1 response then carrying `Connection: close`. A proxy reusing a kept-alive
//!   connection thus learns from the answer that it is the last one, instead of writing a POST
//!   into a socket the server is closing (which nginx answers 502 and must not retry). See
//!   `run_until_stopped` for the timing.
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

use poem::http::{HeaderValue, Version, header};
use poem::listener::{Acceptor, TcpAcceptor};
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Sleep;

use super::raw_problem::{hypers_own_error, problem_bytes};
use crate::domain::net::{Cidr, ip_bucket};
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
    /// Bits of an IPv6 peer that count as one address (as the rate limits count them).
    pub v6_prefix: u8,
    /// No byte in or out for this long while no request is served, or a write stalled this
    /// long: the connection is closed.
    pub idle_timeout: Duration,
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
    /// Whether this server's count is `otpgate_open_connections` (the main port's).
    report_open: bool,
    inner: Mutex<Open>,
    /// Set once shutdown starts: no more accepts, `Connection: close` on every response.
    draining: watch::Sender<bool>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    by_peer: HashMap<SocketAddr, Arc<ConnState>>,
}

impl Connections {
    /// An empty registry enforcing `policy`; `report_open` makes its count the
    /// `otpgate_open_connections` gauge.
    pub fn new(policy: ConnectionPolicy, metrics: Arc<Metrics>, report_open: bool) -> Arc<Self> {
        Arc::new(Self {
            policy,
            metrics,
            report_open,
            inner: Mutex::new(Open::default()),
            draining: watch::Sender::new(false),
        })
    }

    /// Starts draining: the acceptor closes the listening socket, and responses ask HTTP/1
    /// clients to close their connection.
    pub fn start_draining(&self) {
        self.draining.send_replace(true);
    }

    /// Whether draining has started.
    pub fn draining(&self) -> bool {
        *self.draining.borrow()
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection from `peer`, or `None` when a cap refuses it.
    fn admit(&self, peer: SocketAddr) -> Option<Arc<ConnState>> {
        let exempt = self
            .policy
            .trusted
            .iter()
            .any(|c| c.contains(peer.ip().to_canonical()));
        let ip = ip_bucket(peer.ip(), self.policy.v6_prefix);
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
        if self.report_open {
            self.metrics.open_connections.set(gauge(open.total));
        }
        Some(state)
    }

    fn release(&self, peer: SocketAddr) {
        let ip = ip_bucket(peer.ip(), self.policy.v6_prefix);
        let mut open = self.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.per_ip.remove(&ip);
            }
        }
        open.by_peer.remove(&peer);
        if self.report_open {
            self.metrics.open_connections.set(gauge(open.total));
        }
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
/// Once `connections` drain, it drops the listening socket and accepts nothing more.
pub struct GuardedAcceptor {
    /// `None` once draining started (the socket is closed).
    inner: Option<TcpAcceptor>,
    local: Vec<LocalAddr>,
    draining: watch::Receiver<bool>,
    connections: Arc<Connections>,
}

impl GuardedAcceptor {
    /// Wraps a bound acceptor.
    pub fn new(inner: TcpAcceptor, connections: Arc<Connections>) -> Self {
        Self {
            local: inner.local_addr(),
            inner: Some(inner),
            draining: connections.draining.subscribe(),
            connections,
        }
    }
}

impl Acceptor for GuardedAcceptor {
    type Io = GuardedIo;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.local.clone()
    }

    async fn accept(
        &mut self,
    ) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, poem::http::uri::Scheme)> {
        loop {
            let Some(inner) = self.inner.as_mut() else {
                // Draining: the server stops polling us when its own shutdown starts.
                return std::future::pending().await;
            };
            let accepted = tokio::select! {
                biased;
                Ok(_) = self.draining.wait_for(|draining| *draining) => None,
                accepted = inner.accept() => Some(accepted),
            };
            let Some(accepted) = accepted else {
                // Closing the listening socket: connection attempts are refused from now on.
                self.inner = None;
                tracing::info!("draining: no longer accepting connections");
                continue;
            };
            let (io, local, remote, scheme) = accepted?;
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
    /// The running read deadline, the request count it was armed at, and whether it is the
    /// head deadline (else the idle one).
    deadline: Option<(Pin<Box<Sleep>>, u64, bool)>,
    /// Running while a write cannot make progress.
    write_stall: Option<Pin<Box<Sleep>>>,
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
            deadline: Some((Box::pin(tokio::time::sleep(timeout)), 0, true)),
            write_stall: None,
            head_started: false,
            http2: false,
            read_any: false,
            pending: Vec::new(),
        }
    }

    /// Arms a read deadline of `timeout` for request count `started`.
    fn arm(&mut self, cx: &mut Context<'_>, timeout: Duration, started: u64, head: bool) {
        let mut sleep = Box::pin(tokio::time::sleep(timeout));
        // Registers the waker, so the deadline wakes this task.
        let _ = sleep.as_mut().poll(cx);
        self.deadline = Some((sleep, started, head));
    }

    /// Tracks a write's progress: `Err` once it has been stalled for the idle timeout.
    fn check_stall(&mut self, cx: &mut Context<'_>, progressed: bool) -> io::Result<()> {
        if progressed {
            self.write_stall = None;
            return Ok(());
        }
        let timeout = self.connections.policy.idle_timeout;
        let stall = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stall.as_mut().poll(cx).is_ready() {
            self.connections.metrics.connection("write_stalled");
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ));
        }
        Ok(())
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
                Poll::Pending => {
                    self.check_stall(cx, false)?;
                    return Poll::Pending;
                }
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
        if busy
            || this
                .deadline
                .as_ref()
                .is_some_and(|(_, at, _)| *at != started)
        {
            this.deadline = None;
            this.head_started = false;
        }
        if !busy && this.deadline.is_none() {
            // Waiting for the next request: at most the idle timeout without a byte.
            let idle = this.connections.policy.idle_timeout;
            this.arm(cx, idle, started, false);
        }
        if let Some((sleep, _, head)) = &mut this.deadline
            && sleep.as_mut().poll(cx).is_ready()
        {
            let head = *head;
            this.connections.metrics.connection(if head {
                "header_timeout"
            } else {
                "idle_timeout"
            });
            if head && this.head_started && !this.http2 {
                // Best effort: the client may not be reading.
                let _ = Pin::new(&mut this.inner).poll_write(cx, &problem_bytes(408));
            }
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                if head {
                    "request head not received in time"
                } else {
                    "connection idle"
                },
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
                    let head_armed = this.deadline.as_ref().is_some_and(|(_, _, head)| *head);
                    if this.http2 && started > 0 {
                        // Control frames of a live HTTP/2 connection: activity, not a head.
                        let idle = this.connections.policy.idle_timeout;
                        this.arm(cx, idle, started, false);
                    } else if !head_armed {
                        this.head_started = true;
                        let timeout = this.connections.policy.header_timeout;
                        this.arm(cx, timeout, started, true);
                    } else {
                        this.head_started = true;
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
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.check_stall(cx, result.is_ready())?;
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.poll_pending(cx)?.is_pending() {
            return Poll::Pending;
        }
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.check_stall(cx, result.is_ready())?;
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.poll_pending(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Middleware: tells a request's connection that a request is being served, which stops its
/// head deadline until the response is done; while draining, asks HTTP/1 clients to close the
/// connection after the response.
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
    type Output = Response;

    fn call(&self, req: Request) -> impl Future<Output = poem::Result<Self::Output>> + Send {
        // HTTP/2 has no `Connection` header (its connections close with GOAWAY).
        let http1 = req.version() <= Version::HTTP_11;
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
            let mut resp = result?.into_response();
            if http1 && self.connections.draining() {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(resp)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_peers_share_the_cap_of_their_prefix() {
        let policy = ConnectionPolicy {
            header_timeout: Duration::from_secs(10),
            max_total: 100,
            max_per_ip: 1,
            trusted: Arc::new(vec!["2001:db8:ffff::/48".parse().unwrap()]),
            v6_prefix: 64,
            idle_timeout: Duration::from_secs(30),
        };
        let connections = Connections::new(policy, Metrics::new().unwrap(), true);
        let peer = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(connections.admit(peer("[2001:db8:1:2::1]:40000")).is_some());
        // Another address of the same /64: the same client.
        assert!(
            connections
                .admit(peer("[2001:db8:1:2::99]:40001"))
                .is_none()
        );
        // Another /64, and a trusted proxy's range, are apart.
        assert!(connections.admit(peer("[2001:db8:1:3::1]:40002")).is_some());
        assert!(connections.admit(peer("[2001:db8:ffff::1]:1")).is_some());
        assert!(connections.admit(peer("[2001:db8:ffff::1]:2")).is_some());
        connections.release(peer("[2001:db8:1:2::1]:40000"));
        assert!(
            connections
                .admit(peer("[2001:db8:1:2::99]:40001"))
                .is_some()
        );
        assert_eq!(connections.open(), 4);
    }
}
