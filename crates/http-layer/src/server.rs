//! The one HTTP/1.1 server loop.
//!
//! [`HttpServer::serve`] accepts connections and hands each to hyper with the limits of a
//! [`ServerConfig`]. What bounds what:
//!
//! - Connections: at most `max_connections` at once (a semaphore). When full, the oldest
//!   connection with no request in flight (a client still sending its headers, or an idle
//!   keep-alive one) is closed to make room; if every connection is busy serving a request,
//!   accepting pauses until one finishes (the kernel's backlog holds the rest).
//! - One source address (an IPv4 address or an IPv6 /64): at most
//!   `max_connections_per_address`; a new connection beyond it closes that address's own oldest
//!   idle connection, or is refused if all of them are busy. Loopback is exempt unless
//!   `cap_loopback` (labs and tests run many clients on 127.0.0.1).
//! - A request head: `header_read_timeout` (hyper's timer; hyper restarts it whenever a
//!   connection waits for its next request) and `max_header_bytes`.
//! - An idle connection: `idle_timeout` without a byte from the client while no request is in
//!   flight.
//! - A client that stops reading a response: `send_stall_timeout` with a write blocked.
//! - A request body: `body_timeout` from the end of the head ([`RequestBody`]).
//! - Optionally a whole connection: `connection_lifetime`.
//!
//! A handler is an async function of the request and the peer's address that always answers
//! (errors are responses); its response body may be any `http_body::Body`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The limits every connection is served under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one IPv4 address or IPv6 /64.
    pub max_connections_per_address: usize,
    /// Whether loopback sources count against `max_connections_per_address`.
    pub cap_loopback: bool,
    /// Time a client gets to send a whole request head, counted from the connection's start or
    /// from the end of its previous response.
    pub header_read_timeout: Duration,
    /// Longest a connection with no request in flight may go without a byte from its client.
    pub idle_timeout: Duration,
    /// Longest a response write may stay blocked because the client does not read.
    pub send_stall_timeout: Duration,
    /// Time a client gets to send a request body, counted from the end of its head.
    pub body_timeout: Duration,
    /// Largest request head, in bytes (hyper's floor is 8 KiB of read buffer).
    pub max_header_bytes: usize,
    /// If set, a connection is closed this long after it was accepted, whatever it is doing.
    pub connection_lifetime: Option<Duration>,
    /// On shutdown, how long connections get to finish the requests they are serving.
    pub drain_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            max_connections: 1024,
            max_connections_per_address: 256,
            cap_loopback: false,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(5),
            send_stall_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            connection_lifetime: None,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// An HTTP/1.1 server: a bound listener and the limits it serves under.
pub struct HttpServer {
    listener: TcpListener,
    config: ServerConfig,
    open: OpenConnections,
}

/// How many connections a server has open right now (a handle that outlives `serve`'s
/// borrow of the server, for status pages and tests).
#[derive(Clone, Debug, Default)]
pub struct OpenConnections(Arc<AtomicUsize>);

impl OpenConnections {
    /// The number of connections open now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

impl HttpServer {
    /// Binds `addr` (port 0: any free port).
    pub async fn bind(addr: SocketAddr, config: ServerConfig) -> io::Result<HttpServer> {
        Ok(HttpServer::from_listener(TcpListener::bind(addr).await?, config))
    }

    /// Serves on a listener bound elsewhere.
    pub fn from_listener(listener: TcpListener, config: ServerConfig) -> HttpServer {
        HttpServer { listener, config, open: OpenConnections::default() }
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A live count of this server's open connections.
    pub fn open_connections(&self) -> OpenConnections {
        self.open.clone()
    }

    /// The limits this server serves under.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Serves until the future is dropped; dropping it closes every connection at once (they
    /// live in a `JoinSet` owned here).
    pub async fn serve<H, F, B>(self, handler: H) -> io::Result<()>
    where
        H: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.serve_with_shutdown(handler, std::future::pending()).await
    }

    /// Serves until `shutdown` completes, then stops accepting, lets each connection finish the
    /// request it is serving (for at most `drain_timeout`), and returns.
    pub async fn serve_with_shutdown<H, F, B, S>(self, handler: H, shutdown: S) -> io::Result<()>
    where
        H: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        S: Future<Output = ()>,
    {
        let HttpServer { listener, config, open } = self;
        let config = Arc::new(config);
        let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let registry = Arc::new(Registry::default());
        // Why a watch channel: every connection task holds a receiver and learns of shutdown
        // without the accept loop knowing who is alive (mini-redis uses broadcast the same way).
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        let mut backoff = ACCEPT_BACKOFF_START;
        let mut next_id = 0u64;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Typically out of file descriptors: back off instead of spinning.
                            tracing::warn!(error = %e, ?backoff, "accept failed");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                            continue;
                        }
                    };
                    backoff = ACCEPT_BACKOFF_START;
                    // A response goes out as headers then body, in two writes: with Nagle's
                    // algorithm the body waits for the client's delayed ACK of the headers,
                    // 40 ms a request on a keep-alive connection (measured: 25-33 requests a
                    // second for a 4 KB file, 1,000+ without).
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, error = %e, "TCP_NODELAY failed");
                    }
                    let address = AddressKey::of(peer.ip(), config.cap_loopback);
                    if let Some(address) = address {
                        if registry.count(address) >= config.max_connections_per_address
                            && !registry.evict_oldest_idle_of(address)
                        {
                            tracing::debug!(%peer, "too many busy connections from one address");
                            continue;
                        }
                    }
                    let permit = match permits.clone().try_acquire_owned() {
                        Ok(permit) => permit,
                        Err(_) => {
                            if !registry.evict_oldest_idle() {
                                tracing::debug!(%peer, "every connection busy, waiting for one");
                            }
                            tokio::select! {
                                // The semaphore is never closed.
                                permit = permits.clone().acquire_owned() => match permit {
                                    Ok(permit) => permit,
                                    Err(_) => break,
                                },
                                () = &mut shutdown => break,
                            }
                        }
                    };
                    next_id += 1;
                    let state = Arc::new(ConnState::new(next_id, address));
                    registry.insert(state.clone());
                    let task = serve_connection(
                        stream,
                        peer,
                        handler.clone(),
                        config.clone(),
                        state,
                        shutdown_rx.clone(),
                    );
                    let registry = registry.clone();
                    let open = open.clone();
                    open.0.fetch_add(1, Ordering::AcqRel);
                    let span = tracing::debug_span!("http", %peer);
                    connections.spawn(tracing::Instrument::instrument(async move {
                        let id = task.await;
                        registry.remove(id);
                        open.0.fetch_sub(1, Ordering::AcqRel);
                        drop(permit);
                    }, span));
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        let _ = shutdown_tx.send(true);
        let drained = tokio::time::timeout(config.drain_timeout, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::debug!(left = connections.len(), "shutdown: closing unfinished connections");
        }
        Ok(())
    }
}

const ACCEPT_BACKOFF_START: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A source address as the per-address cap counts it: an IPv4 address, or an IPv6 /64 (one
/// host holds a whole /64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum AddressKey {
    V4(u32),
    V6(u64),
}

impl AddressKey {
    /// The key `ip` counts under; `None` if it is exempt (loopback, unless `cap_loopback`).
    fn of(ip: std::net::IpAddr, cap_loopback: bool) -> Option<AddressKey> {
        let ip = ip.to_canonical();
        if ip.is_loopback() && !cap_loopback {
            return None;
        }
        Some(match ip {
            std::net::IpAddr::V4(v4) => AddressKey::V4(u32::from(v4)),
            std::net::IpAddr::V6(v6) => AddressKey::V6((u128::from(v6) >> 64) as u64),
        })
    }
}

/// The open connections in accept order (so the oldest idle one can be found when full) and
/// how many each capped address holds. A connection leaves both when evicted or closed.
#[derive(Default)]
struct Registry {
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    by_id: BTreeMap<u64, Arc<ConnState>>,
    per_address: std::collections::HashMap<AddressKey, usize>,
}

impl Open {
    fn take(&mut self, id: u64) -> Option<Arc<ConnState>> {
        let state = self.by_id.remove(&id)?;
        if let Some(address) = state.address {
            if let std::collections::hash_map::Entry::Occupied(mut n) =
                self.per_address.entry(address)
            {
                *n.get_mut() -= 1;
                if *n.get() == 0 {
                    n.remove();
                }
            }
        }
        Some(state)
    }

    /// Closes the oldest idle connection that `pick` accepts; false if there is none.
    fn evict_oldest_idle(&mut self, pick: impl Fn(&ConnState) -> bool) -> bool {
        let Some(id) = self
            .by_id
            .values()
            .find(|c| c.in_flight.load(Ordering::Acquire) == 0 && pick(c))
            .map(|c| c.id)
        else {
            return false;
        };
        if let Some(state) = self.take(id) {
            // notify_one keeps the wake-up even if the task is not waiting yet.
            state.evict.notify_one();
        }
        true
    }
}

impl Registry {
    fn insert(&self, state: Arc<ConnState>) {
        let mut open = self.lock();
        if let Some(address) = state.address {
            *open.per_address.entry(address).or_default() += 1;
        }
        open.by_id.insert(state.id, state);
    }

    fn remove(&self, id: u64) {
        self.lock().take(id);
    }

    /// Connections open from `address`.
    fn count(&self, address: AddressKey) -> usize {
        self.lock().per_address.get(&address).copied().unwrap_or(0)
    }

    /// Closes the oldest connection with no request in flight; false if every one is busy.
    fn evict_oldest_idle(&self) -> bool {
        self.lock().evict_oldest_idle(|_| true)
    }

    /// Closes `address`'s oldest connection with no request in flight; false if none.
    fn evict_oldest_idle_of(&self, address: AddressKey) -> bool {
        self.lock().evict_oldest_idle(|c| c.address == Some(address))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // A panic while holding this lock leaves maps that are still consistent.
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What the accept loop, the connection task, its socket and its requests share.
struct ConnState {
    id: u64,
    /// The source address it counts against, if capped.
    address: Option<AddressKey>,
    started: Instant,
    /// Requests whose response has not been fully sent; 0 means the connection is waiting on
    /// its client, and may be evicted or time out as idle.
    in_flight: AtomicUsize,
    /// Milliseconds after `started` of the last byte read or the last response finished.
    last_activity_ms: AtomicU64,
    /// Milliseconds after `started` since which a write has been blocked, or `NOT_BLOCKED`.
    write_blocked_since_ms: AtomicU64,
    evict: Notify,
    /// Wakes the watchdog when `in_flight` or the write state changes.
    changed: Notify,
}

const NOT_BLOCKED: u64 = u64::MAX;

impl ConnState {
    fn new(id: u64, address: Option<AddressKey>) -> ConnState {
        ConnState {
            id,
            address,
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_activity_ms: AtomicU64::new(0),
            write_blocked_since_ms: AtomicU64::new(NOT_BLOCKED),
            evict: Notify::new(),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn touch(&self) {
        self.last_activity_ms.store(self.now_ms(), Ordering::Release);
    }

    fn at(&self, ms: u64) -> Instant {
        self.started + Duration::from_millis(ms)
    }

    /// Resolves when the connection has been idle or stalled too long.
    async fn watchdog(&self, config: &ServerConfig) {
        loop {
            let changed = self.changed.notified();
            let blocked = self.write_blocked_since_ms.load(Ordering::Acquire);
            let deadline = if blocked != NOT_BLOCKED {
                Some(self.at(blocked) + config.send_stall_timeout)
            } else if self.in_flight.load(Ordering::Acquire) == 0 {
                Some(self.at(self.last_activity_ms.load(Ordering::Acquire)) + config.idle_timeout)
            } else {
                None
            };
            match deadline {
                Some(deadline) if deadline <= Instant::now() => return,
                Some(deadline) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => {}
                        () = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// Serves one connection; returns its id once it is closed.
async fn serve_connection<H, F, B>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: H,
    config: Arc<ServerConfig>,
    state: Arc<ConnState>,
    mut shutdown: watch::Receiver<bool>,
) -> u64
where
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = TokioIo::new(WatchedIo { inner: stream, state: state.clone() });
    let service_state = state.clone();
    let body_timeout = config.body_timeout;
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let guard = InFlight::start(service_state.clone());
        let response = handler(req.map(|body| RequestBody::new(body, body_timeout)), peer);
        async move {
            let response = response.await;
            Ok::<_, Infallible>(response.map(|body| ResponseBody { inner: body, _guard: guard }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_header_size(config.max_header_bytes)
        .max_buf_size(config.max_header_bytes.max(MIN_BUF_SIZE));
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let lifetime = async {
        match config.connection_lifetime {
            Some(lifetime) => tokio::time::sleep(lifetime).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(lifetime);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "HTTP connection error");
                }
                break;
            }
            () = state.evict.notified() => {
                tracing::debug!(%peer, "server full: closing the oldest idle connection");
                break;
            }
            () = state.watchdog(&config) => {
                tracing::debug!(%peer, "closing an idle or stalled connection");
                break;
            }
            () = &mut lifetime => {
                tracing::debug!(%peer, "HTTP connection closed after its lifetime");
                break;
            }
            _ = shutdown.changed(), if !draining => {
                // Finish the request in flight, if any, then close.
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    state.id
}

/// hyper's smallest accepted read buffer.
const MIN_BUF_SIZE: usize = 8192;

/// Counts a request as in flight from its head until its response body is dropped.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn start(state: Arc<ConnState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        state.changed.notify_one();
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

pin_project_lite::pin_project! {
    /// A handler's response body, carrying the request's [`InFlight`] mark until sent.
    struct ResponseBody<B> {
        #[pin]
        inner: B,
        _guard: InFlight,
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that must arrive within the server's `body_timeout`.
pub struct RequestBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl RequestBody {
    fn new(inner: Incoming, timeout: Duration) -> RequestBody {
        RequestBody { inner, deadline: Box::pin(tokio::time::sleep(timeout)) }
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyTimedOut {
    /// The client did not send the whole body within the server's `body_timeout`.
    #[error("request body not received in time")]
    Timeout,
    /// The connection failed or the body was malformed.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyTimedOut;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyTimedOut>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(BodyTimedOut::from)));
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimedOut::Timeout))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting each read and each blocked write for the watchdog.
struct WatchedIo {
    inner: TcpStream,
    state: Arc<ConnState>,
}

impl WatchedIo {
    fn note_write<T>(&self, poll: &Poll<T>) {
        let since = &self.state.write_blocked_since_ms;
        if poll.is_pending() {
            if since.load(Ordering::Acquire) == NOT_BLOCKED {
                since.store(self.state.now_ms(), Ordering::Release);
                self.state.changed.notify_one();
            }
        } else if since.load(Ordering::Acquire) != NOT_BLOCKED {
            since.store(NOT_BLOCKED, Ordering::Release);
            self.state.changed.notify_one();
        }
    }
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.state.touch();
        }
        poll
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.note_write(&poll);
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.note_write(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.note_write(&poll);
        poll
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
