//! The CDN request router: an HTTP/1.1 server (and optionally an authoritative DNS server)
//! that sends each viewer to an edge by consistent hashing with bounded loads ([`Placement`]).
//!
//! HTTP (on the shared [`http_layer::HttpServer`]; paths go through the stream servers' one rule, [`RequestPath::parse`]):
//! - `GET /play/MOVIE/manifest.mpd`: places one viewer of `MOVIE` and answers the movie's
//!   manifest (see "Manifests" below) with its `BaseURL`s rewritten ([`mpd::set_base_urls`]) to
//!   `EDGE_URL/MOVIE/` for every healthy edge in order of preference, the chosen one first, and
//!   an `X-Swarmcast-Edge: NAME` header. An unknown movie (the edge answers 404) is 404.
//! - `GET /route/MOVIE`: the same placement, answered as a 302 to the chosen edge's
//!   `EDGE_URL/MOVIE/manifest.mpd`.
//! - `GET /status`: JSON ([`Status`]) with every edge's health and load.
//!
//! DNS (UDP, messages parsed and built with hickory-proto): authoritative for zone
//! [`ZONE`]. An `A` query for `MOVIE.cdn.test` answers, with TTL [`DNS_TTL`], the IPv4 address
//! of the edge the movie's next viewer would be placed on ([`Placement::choose`]); a lookup
//! places nobody, since resolvers, retries and prefetches are not viewers (a flood of queries
//! moves no load). An unknown movie is NXDOMAIN; names outside the zone are REFUSED. Other
//! query types for a known movie get an empty NOERROR answer. Edge URLs must then have IPv4
//! literal hosts.
//!
//! Manifests: a movie's manifest (or the fact that there is none) is fetched through its first
//! healthy preferred edge and kept for [`MANIFEST_TTL`], so viewers and lookups cost one fetch
//! per movie per TTL, not one each; concurrent misses of a movie wait for the same fetch. The cache holds at most [`MAX_CACHED_MANIFESTS`] movies and
//! [`MAX_CACHED_MANIFEST_BYTES`] bytes of manifests; when full, the oldest entries go first.
//!
//! Health: every probe interval each edge's `/health` is fetched with the shared
//! [`http_layer::HttpClient`] (all in parallel, each with the interval as its timeout); an edge
//! that fails leaves the rotation, one that answers 200 comes back. An origin answers `/health`
//! too, so an edge URL may point straight at an origin. When an edge cannot be reached while
//! fetching a manifest, it is marked unhealthy at once and the next one is tried.
//!
//! Load: each placement is a lease that expires after [`RouterConfig::viewer_ttl`] (30 s by
//! default, the time a player needs to come back for its manifest and to be counted again).
//! A viewer's load is therefore "recent placements", known to the router without any report
//! from the edges; the bound `c` holds over the leases alive at each placement. At most
//! [`MAX_LEASES`] leases are kept; past that the oldest lease ends early. One source address
//! holds at most [`MAX_LEASES_PER_SOURCE`] live leases: past that its viewers are still served
//! (on the edge the next viewer would get) but not counted, so one client fetching manifests
//! in a loop cannot push everyone else off their edges.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use http_body_util::Full;
use http_layer::{ClientConfig, HttpClient, HttpServer, RequestBody, ServerConfig};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::mpd;
use crate::origin::HEALTH_PATH;
use crate::proto::placement::{Placement, BALANCE};
use crate::request_path::RequestPath;

/// The DNS zone the router is authoritative for.
pub const ZONE: &str = "cdn.test.";
/// TTL of DNS answers, seconds: short, so a dead edge stops being handed out quickly.
pub const DNS_TTL: u32 = 5;
/// Largest manifest fetched from an edge.
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest health answer read.
const MAX_HEALTH_BYTES: usize = 64 * 1024;
/// Time a manifest fetch through an edge may take.
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most HTTP connections (the shared HTTP layer's cap) and DNS queries handled at once.
const MAX_CONCURRENT: usize = 1024;
/// Longest movie name (a DNS label).
const MAX_MOVIE_BYTES: usize = 63;
/// How long a fetched manifest (or an edge's 404 for it) is reused.
pub const MANIFEST_TTL: Duration = Duration::from_secs(10);
/// Most movies whose manifest (or absence) is cached.
pub const MAX_CACHED_MANIFESTS: usize = 1024;
/// Most bytes of cached manifests.
pub const MAX_CACHED_MANIFEST_BYTES: usize = 64 * 1024 * 1024;
/// Most viewer leases kept (40 bytes each, plus one per-source counter per source); past it
/// the oldest ends early.
pub const MAX_LEASES: usize = 100_000;
/// Most live leases of one source address; past it its viewers are served but not counted.
pub const MAX_LEASES_PER_SOURCE: u32 = 64;

/// One edge given on the command line as `NAME=URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeSpec {
    /// The edge's name (its identity on the hash ring).
    pub name: String,
    /// Its base URL, `http://HOST:PORT`.
    pub url: String,
}

impl std::str::FromStr for EdgeSpec {
    type Err = RouterError;

    /// Parses `NAME=URL`.
    fn from_str(s: &str) -> Result<Self, RouterError> {
        let (name, url) = s
            .split_once('=')
            .filter(|(n, u)| !n.is_empty() && !u.is_empty())
            .ok_or_else(|| RouterError::BadEdge { spec: s.to_string(), reason: "not NAME=URL" })?;
        Ok(EdgeSpec { name: name.to_string(), url: url.trim_end_matches('/').to_string() })
    }
}

/// How a router is set up.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The edges, in a fixed order (the order of `/status`).
    pub edges: Vec<EdgeSpec>,
    /// Time between health probes of every edge.
    pub probe_interval: Duration,
    /// How long a placed viewer counts toward its edge's load.
    pub viewer_ttl: Duration,
    /// Balance factor `c` of bounded loads.
    pub balance: f64,
}

impl RouterConfig {
    /// A configuration with 1 s probes, 30 s viewer leases and c = 1.25.
    pub fn new(edges: Vec<EdgeSpec>) -> Self {
        Self {
            edges,
            probe_interval: Duration::from_secs(1),
            viewer_ttl: Duration::from_secs(30),
            balance: BALANCE,
        }
    }
}

/// Errors setting up a router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// An `--edge` value is unusable.
    #[error("edge {spec:?}: {reason}")]
    BadEdge {
        /// What was given.
        spec: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No edge was given.
    #[error("give at least one --edge NAME=URL")]
    NoEdges,
    /// The HTTP client could not be set up (no usable TLS trust store).
    #[error("HTTP client: {0}")]
    Client(String),
    /// Binding a socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
}

/// What `GET /status` answers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// Every edge, in configuration order.
    pub edges: Vec<EdgeStatus>,
    /// Health-probe rounds completed (every edge probed once per round).
    pub probe_rounds: u64,
    /// Manifest fetches made through the edges (cache misses).
    pub manifest_fetches: u64,
    /// Largest load over the mean load of healthy edges (1.0 when nobody is placed).
    pub imbalance: f64,
}

/// One edge in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EdgeStatus {
    /// Its name.
    pub name: String,
    /// Its base URL.
    pub url: String,
    /// Whether it is in rotation.
    pub healthy: bool,
    /// Viewers placed on it whose lease has not expired.
    pub load: u32,
}

/// An edge, parsed once.
#[derive(Debug)]
struct EdgeTarget {
    name: String,
    /// `http://HOST:PORT`, the base of every URL the router fetches from it or hands out.
    url: String,
    ipv4: Option<Ipv4Addr>,
}

struct RouterState {
    edges: Vec<EdgeTarget>,
    /// Probes and manifest fetches; each call adds its own time limit.
    client: HttpClient,
    placement: Mutex<Placement>,
    /// Every live placement, oldest first (all leases have the same TTL), and the live leases
    /// of each source address (entries only for addresses with some).
    leases: Mutex<Leases>,
    manifests: Mutex<ManifestCache>,
    /// Movie → the result of the manifest fetch in progress for it (`None` until it ends):
    /// concurrent misses of one movie wait for one fetch. At most one entry per request being
    /// answered.
    fetching: Mutex<HashMap<String, watch::Receiver<Option<ManifestResult>>>>,
    /// Health-probe rounds completed, for `/status`.
    probe_rounds: AtomicU64,
    /// Manifest requests sent to edges, for `/status`.
    manifest_fetches: AtomicU64,
    config: RouterConfig,
}

/// Movie → its manifest (`None`: the edge said 404) until an expiry, bounded by entries and
/// bytes; the oldest insertions are evicted first (all entries live equally long).
#[derive(Debug, Default)]
struct ManifestCache {
    entries: HashMap<String, CachedManifest>,
    /// Insertion sequence → movie, oldest first.
    by_age: BTreeMap<u64, String>,
    bytes: usize,
    next_seq: u64,
}

#[derive(Debug)]
struct CachedManifest {
    body: Option<Bytes>,
    expires: Instant,
    seq: u64,
}

impl ManifestCache {
    /// The live entry for `movie`: `Some(None)` for a cached "no such movie".
    fn get(&self, now: Instant, movie: &str) -> Option<Option<Bytes>> {
        self.entries.get(movie).filter(|e| now < e.expires).map(|e| e.body.clone())
    }

    fn insert(&mut self, now: Instant, movie: &str, body: Option<Bytes>) {
        self.remove(movie);
        let len = body.as_ref().map_or(0, Bytes::len);
        if len > MAX_CACHED_MANIFEST_BYTES {
            return;
        }
        while self.entries.len() >= MAX_CACHED_MANIFESTS
            || self.bytes + len > MAX_CACHED_MANIFEST_BYTES
        {
            let Some((_, oldest)) = self.by_age.first_key_value() else { break };
            let oldest = oldest.clone();
            self.remove(&oldest);
        }
        self.next_seq += 1;
        let seq = self.next_seq;
        self.by_age.insert(seq, movie.to_string());
        self.bytes += len;
        self.entries
            .insert(movie.to_string(), CachedManifest { body, expires: now + MANIFEST_TTL, seq });
    }

    fn remove(&mut self, movie: &str) {
        if let Some(e) = self.entries.remove(movie) {
            self.by_age.remove(&e.seq);
            self.bytes -= e.body.as_ref().map_or(0, Bytes::len);
        }
    }
}

/// Viewer leases: (expiry, edge, source) oldest first, and live leases per source.
#[derive(Debug, Default)]
struct Leases {
    queue: VecDeque<(Instant, usize, IpAddr)>,
    per_source: HashMap<IpAddr, u32>,
}

impl Leases {
    /// Ends the oldest lease, releasing its edge in `placement`.
    fn pop(&mut self, placement: &mut Placement) {
        let Some((_, edge, source)) = self.queue.pop_front() else { return };
        placement.release(edge);
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }
}

/// A movie's manifest, or why there is none.
type ManifestResult = Result<Bytes, RouteError>;

/// Why a movie could not be routed.
#[derive(Debug, Clone)]
enum RouteError {
    BadName,
    UnknownMovie,
    NoEdge,
    Upstream(String),
}

/// A movie placed on an edge.
struct Routed {
    /// Edge indices, chosen first.
    order: Vec<usize>,
    manifest: Bytes,
}

/// Locks a mutex, going on with the data if a thread panicked while holding it (the
/// placement and leases are consistent at every unlock point).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The request router: HTTP, optional DNS, and the health prober.
pub struct RouterServer {
    http: HttpServer,
    dns: Option<UdpSocket>,
    state: Arc<RouterState>,
}

impl RouterServer {
    /// Binds the HTTP listener on `http` and, if given, the DNS socket on `dns` (UDP).
    pub async fn bind(
        http: SocketAddr,
        dns: Option<SocketAddr>,
        config: RouterConfig,
    ) -> Result<RouterServer, RouterError> {
        if config.edges.is_empty() {
            return Err(RouterError::NoEdges);
        }
        let mut edges = Vec::new();
        for spec in &config.edges {
            let edge = parse_edge(spec)?;
            if dns.is_some() && edge.ipv4.is_none() {
                return Err(RouterError::BadEdge {
                    spec: format!("{}={}", spec.name, spec.url),
                    reason: "with --dns the edge URL's host must be an IPv4 address",
                });
            }
            if edges.iter().any(|e: &EdgeTarget| e.name == edge.name) {
                return Err(RouterError::BadEdge {
                    spec: spec.name.clone(),
                    reason: "duplicate edge name",
                });
            }
            edges.push(edge);
        }
        let http_config =
            ServerConfig { max_connections: MAX_CONCURRENT, ..ServerConfig::default() };
        let http_server = HttpServer::bind(http, http_config)
            .await
            .map_err(|source| RouterError::Bind { addr: http, source })?;
        let dns = match dns {
            Some(addr) => Some(
                UdpSocket::bind(addr).await.map_err(|source| RouterError::Bind { addr, source })?,
            ),
            None => None,
        };
        let names: Vec<String> = edges.iter().map(|e| e.name.clone()).collect();
        let client = HttpClient::new(ClientConfig {
            total_timeout: MANIFEST_TIMEOUT,
            max_response_bytes: MAX_MANIFEST_BYTES,
            user_agent: "Swarmcast-router/0.1".to_owned(),
            ..ClientConfig::default()
        })
        .map_err(|e| RouterError::Client(e.to_string()))?;
        let state = Arc::new(RouterState {
            placement: Mutex::new(Placement::new(&names, config.balance)),
            edges,
            client,
            leases: Mutex::new(Leases::default()),
            manifests: Mutex::new(ManifestCache::default()),
            fetching: Mutex::new(HashMap::new()),
            probe_rounds: AtomicU64::new(0),
            manifest_fetches: AtomicU64::new(0),
            config,
        });
        Ok(RouterServer { http: http_server, dns, state })
    }

    /// The HTTP address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has a local address unless the socket is broken.
        self.http.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The DNS address actually bound, if serving DNS.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// Serves HTTP and DNS and probes the edges until dropped.
    pub async fn run(self) -> io::Result<()> {
        let RouterServer { http, dns, state } = self;
        let dns_loop = async {
            match dns {
                Some(socket) => dns_loop(Arc::new(socket), state.clone()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = http_loop(http, state.clone()) => r,
            r = dns_loop => r,
            () = probe_loop(state.clone()) => Ok(()),
        }
    }
}

fn parse_edge(spec: &EdgeSpec) -> Result<EdgeTarget, RouterError> {
    let bad = |reason| RouterError::BadEdge { spec: format!("{}={}", spec.name, spec.url), reason };
    let uri: Uri = spec.url.parse().map_err(|_| bad("the URL does not parse"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("only http:// edges are supported"));
    }
    let authority = uri.authority().ok_or_else(|| bad("the URL has no host"))?;
    if authority.as_str().contains('@') || !matches!(uri.path(), "" | "/") || uri.query().is_some()
    {
        return Err(bad("the URL must be http://HOST:PORT without a path"));
    }
    let host = authority.host();
    let port = uri.port_u16().unwrap_or(80);
    Ok(EdgeTarget {
        name: spec.name.clone(),
        url: format!("http://{host}:{port}"),
        ipv4: host.parse().ok(),
    })
}

/// A movie name usable as a path segment and a DNS label.
fn valid_movie(movie: &str) -> bool {
    !movie.is_empty()
        && movie.len() <= MAX_MOVIE_BYTES
        && movie.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !movie.starts_with('-')
}

impl RouterState {
    /// Places a viewer of `movie` from `source` (expiring old leases first; past
    /// [`MAX_LEASES`], the oldest lease ends early). A source at [`MAX_LEASES_PER_SOURCE`] gets
    /// the edge the next viewer would get, uncounted.
    fn place(&self, movie: &str, source: IpAddr) -> Option<Vec<usize>> {
        let now = Instant::now();
        let mut placement = lock(&self.placement);
        let mut leases = lock(&self.leases);
        while leases
            .queue
            .front()
            .is_some_and(|&(expiry, _, _)| expiry <= now || leases.queue.len() >= MAX_LEASES)
        {
            leases.pop(&mut placement);
        }
        let held = leases.per_source.get(&source).copied().unwrap_or(0);
        if held >= MAX_LEASES_PER_SOURCE {
            return placement.choose(movie);
        }
        let order = placement.place(movie)?;
        leases.queue.push_back((now + self.config.viewer_ttl, order[0], source));
        *leases.per_source.entry(source).or_default() += 1;
        Some(order)
    }

    /// Places a viewer of `movie` from `source` and hands it the movie's manifest.
    async fn route(self: &Arc<Self>, movie: &str, source: IpAddr) -> Result<Routed, RouteError> {
        let manifest = self.manifest(movie).await?;
        let order = self.place(movie, source).ok_or(RouteError::NoEdge)?;
        Ok(Routed { order, manifest })
    }

    /// `movie`'s manifest: cached, or from the fetch in progress for it, or from a new fetch
    /// (run in its own task, so a client that hangs up does not fail the others). A 404 is
    /// cached like a manifest; other failures are not.
    ///
    /// Lock order (`std` mutexes, never held across an `.await`): `fetching` before
    /// `manifests`; the fetch task caches its result and removes its entry under both, so a
    /// request finds a movie cached or being fetched, never neither while a fetch ends.
    async fn manifest(self: &Arc<Self>, movie: &str) -> Result<Bytes, RouteError> {
        if !valid_movie(movie) {
            return Err(RouteError::BadName);
        }
        let mut rx = {
            let mut fetching = lock(&self.fetching);
            if let Some(cached) = lock(&self.manifests).get(Instant::now(), movie) {
                return cached.ok_or(RouteError::UnknownMovie);
            }
            match fetching.get(movie) {
                // A sender that is gone (its task panicked) is replaced by a new fetch.
                Some(rx) if rx.has_changed().is_ok() => rx.clone(),
                _ => {
                    let (tx, rx) = watch::channel(None);
                    fetching.insert(movie.to_string(), rx.clone());
                    tokio::spawn(manifest_task(self.clone(), movie.to_string(), tx));
                    rx
                }
            }
        };
        let result = match rx.wait_for(Option::is_some).await {
            Ok(result) => result.clone().unwrap_or(Err(RouteError::Upstream("no result".into()))),
            Err(_) => Err(RouteError::Upstream("the manifest fetch ended".into())),
        };
        result
    }

    /// Fetches `movie`'s manifest through the edge its next viewer would get. An edge that
    /// cannot be reached is taken out of rotation and the next one tried.
    async fn fetch_manifest(&self, movie: &str) -> Result<Bytes, RouteError> {
        let mut last_error = String::new();
        for _ in 0..self.edges.len() {
            let chosen = lock(&self.placement).choose(movie).ok_or(RouteError::NoEdge)?[0];
            let edge = &self.edges[chosen];
            let path = format!("/{movie}/manifest.mpd");
            self.manifest_fetches.fetch_add(1, Ordering::Relaxed);
            let got = tokio::time::timeout(
                MANIFEST_TIMEOUT,
                http_get(&self.client, &format!("{}{path}", edge.url), MAX_MANIFEST_BYTES),
            )
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
            match got {
                Ok((StatusCode::OK, manifest)) => return Ok(manifest),
                Ok((StatusCode::NOT_FOUND, _)) => return Err(RouteError::UnknownMovie),
                Ok((status, _)) => {
                    // The edge is up but its origin is not: another edge will not do better.
                    return Err(RouteError::Upstream(format!(
                        "edge {} answered {status}",
                        edge.name
                    )));
                }
                Err(e) => {
                    tracing::warn!(edge = %edge.name, error = %e, "edge unreachable, out of rotation");
                    lock(&self.placement).set_healthy(chosen, false);
                    last_error = format!("edge {}: {e}", edge.name);
                }
            }
        }
        Err(RouteError::Upstream(last_error))
    }

    fn status(&self) -> Status {
        let placement = lock(&self.placement);
        Status {
            probe_rounds: self.probe_rounds.load(Ordering::Relaxed),
            manifest_fetches: self.manifest_fetches.load(Ordering::Relaxed),
            edges: placement
                .edges()
                .iter()
                .zip(&self.edges)
                .map(|(p, e)| EdgeStatus {
                    name: e.name.clone(),
                    url: e.url.clone(),
                    healthy: p.healthy,
                    load: p.load,
                })
                .collect(),
            imbalance: placement.imbalance(),
        }
    }
}

/// Runs one manifest fetch for [`RouterState::manifest`] and hands its result to the waiters.
async fn manifest_task(
    state: Arc<RouterState>,
    movie: String,
    tx: watch::Sender<Option<ManifestResult>>,
) {
    let result = state.fetch_manifest(&movie).await;
    {
        let mut fetching = lock(&state.fetching);
        let cached = match &result {
            Ok(manifest) => Some(Some(manifest.clone())),
            Err(RouteError::UnknownMovie) => Some(None),
            Err(_) => None,
        };
        if let Some(entry) = cached {
            lock(&state.manifests).insert(Instant::now(), &movie, entry);
        }
        fetching.remove(&movie);
    }
    // No receiver left (every client hung up) is fine: the result is cached anyway.
    let _ = tx.send(Some(result));
}

/// GETs `url` with the shared client: the status and the body (at most `limit` bytes).
async fn http_get(
    client: &HttpClient,
    url: &str,
    limit: usize,
) -> Result<(StatusCode, Bytes), String> {
    let response = client.get(url).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.bytes_capped(limit).await.map_err(|e| format!("reading the body: {e}"))?;
    Ok((status, body))
}

async fn probe_loop(state: Arc<RouterState>) {
    let interval = state.config.probe_interval.max(Duration::from_millis(10));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut probes = JoinSet::new();
        for (i, edge) in state.edges.iter().enumerate() {
            let url = format!("{}{HEALTH_PATH}", edge.url);
            let client = state.client.clone();
            probes.spawn(async move {
                let got =
                    tokio::time::timeout(interval, http_get(&client, &url, MAX_HEALTH_BYTES)).await;
                (i, matches!(got, Ok(Ok((StatusCode::OK, _)))))
            });
        }
        while let Some(joined) = probes.join_next().await {
            if let Ok((i, healthy)) = joined {
                let mut placement = lock(&state.placement);
                if placement.edges()[i].healthy != healthy {
                    tracing::info!(edge = %state.edges[i].name, healthy, "edge health changed");
                }
                placement.set_healthy(i, healthy);
            }
        }
        state.probe_rounds.fetch_add(1, Ordering::Relaxed);
    }
}

async fn http_loop(http: HttpServer, state: Arc<RouterState>) -> io::Result<()> {
    http.serve(move |req: Request<RequestBody>, peer: SocketAddr| {
        let state = state.clone();
        async move {
            let source = peer.ip().to_canonical();
            let response = respond(&state, req.method(), req.uri().path(), source).await;
            tracing::debug!(%peer, path = req.uri().path(), status = response.status().as_u16(),
                "request");
            response
        }
    })
    .await
}

async fn respond(
    state: &Arc<RouterState>,
    method: &Method,
    path: &str,
    source: IpAddr,
) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n".into());
    }
    let Ok(path) = RequestPath::parse(path) else {
        return text(StatusCode::NOT_FOUND, "not found\n".into());
    };
    let segments: Vec<&str> = path.segments().collect();
    match segments.as_slice() {
        ["status"] => {
            let json = serde_json::to_vec(&state.status()).unwrap_or_default();
            let mut r = Response::new(Full::new(Bytes::from(json)));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            cors(r)
        }
        ["play", movie, "manifest.mpd"] => match state.route(movie, source).await {
            Ok(routed) => play_response(state, movie, routed),
            Err(e) => route_error(e),
        },
        ["route", movie] => match state.route(movie, source).await {
            Ok(routed) => {
                let edge = &state.edges[routed.order[0]];
                let location = format!("{}/{movie}/manifest.mpd", edge.url);
                let mut r = text(StatusCode::FOUND, format!("{location}\n"));
                if let Ok(v) = HeaderValue::from_str(&location) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                insert_edge_header(&mut r, &edge.name);
                r
            }
            Err(e) => route_error(e),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn play_response(state: &RouterState, movie: &str, routed: Routed) -> Response<Full<Bytes>> {
    let Ok(manifest) = std::str::from_utf8(&routed.manifest) else {
        return text(StatusCode::BAD_GATEWAY, "the manifest is not UTF-8\n".into());
    };
    let bases: Vec<String> =
        routed.order.iter().map(|&i| format!("{}/{movie}/", state.edges[i].url)).collect();
    let refs: Vec<&str> = bases.iter().map(String::as_str).collect();
    match mpd::set_base_urls(manifest, &refs) {
        Ok(rewritten) => {
            let mut r = Response::new(Full::new(Bytes::from(rewritten)));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/dash+xml"));
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            insert_edge_header(&mut r, &state.edges[routed.order[0]].name);
            cors(r)
        }
        Err(e) => {
            text(StatusCode::BAD_GATEWAY, format!("the origin's manifest is unusable: {e}\n"))
        }
    }
}

fn insert_edge_header(r: &mut Response<Full<Bytes>>, name: &str) {
    if let Ok(v) = HeaderValue::from_str(name) {
        r.headers_mut().insert("x-swarmcast-edge", v);
    }
}

fn route_error(e: RouteError) -> Response<Full<Bytes>> {
    match e {
        RouteError::BadName | RouteError::UnknownMovie => {
            text(StatusCode::NOT_FOUND, "unknown movie\n".into())
        }
        RouteError::NoEdge => text(StatusCode::SERVICE_UNAVAILABLE, "no healthy edge\n".into()),
        RouteError::Upstream(reason) => {
            tracing::warn!(%reason, "routing failed");
            text(StatusCode::BAD_GATEWAY, format!("{reason}\n"))
        }
    }
}

fn text(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    cors(r)
}

fn cors(mut r: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    r.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    r.headers_mut().insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("X-Swarmcast-Edge, Location"),
    );
    r
}

async fn dns_loop(socket: Arc<UdpSocket>, state: Arc<RouterState>) -> io::Result<()> {
    let mut queries = JoinSet::new();
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (n, peer) = match received {
                    Ok(x) => x,
                    // ICMP port unreachable from an earlier answer and the like: not fatal.
                    Err(e) => {
                        tracing::debug!(error = %e, "DNS receive failed");
                        continue;
                    }
                };
                if queries.len() >= MAX_CONCURRENT {
                    continue;
                }
                let packet = buf[..n].to_vec();
                let (socket, state) = (socket.clone(), state.clone());
                queries.spawn(async move {
                    if let Some(answer) = dns_answer(&state, &packet).await {
                        if let Err(e) = socket.send_to(&answer, peer).await {
                            tracing::debug!(%peer, error = %e, "DNS send failed");
                        }
                    }
                });
            }
            Some(_) = queries.join_next(), if !queries.is_empty() => {}
        }
    }
}

/// The answer to one DNS packet, or `None` to drop it (unparseable without an id, or a
/// response).
async fn dns_answer(state: &Arc<RouterState>, packet: &[u8]) -> Option<Vec<u8>> {
    let request = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) if packet.len() >= 2 => {
            let id = u16::from_be_bytes([packet[0], packet[1]]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr).to_vec().ok();
        }
        Err(_) => return None,
    };
    if request.message_type() != MessageType::Query {
        return None;
    }
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired());
    if request.op_code() != OpCode::Query {
        response.set_response_code(ResponseCode::NotImp);
        return response.to_vec().ok();
    }
    let [query] = request.queries() else {
        response.set_response_code(ResponseCode::FormErr);
        return response.to_vec().ok();
    };
    response.add_query(query.clone());
    let name = query.name().to_lowercase();
    // The constant is a valid name.
    let zone = Name::from_ascii(ZONE).unwrap_or_default();
    if !zone.zone_of(&name) {
        response.set_response_code(ResponseCode::Refused);
        return response.to_vec().ok();
    }
    response.set_authoritative(true);
    let code = match name.num_labels() {
        // The apex itself: it exists, holds no A record of ours.
        n if n == zone.num_labels() => ResponseCode::NoError,
        n if n == zone.num_labels() + 1 => {
            let label = name.iter().next().unwrap_or_default();
            let movie = std::str::from_utf8(label).unwrap_or("");
            // A lookup places nobody: the answer is where the next viewer would go.
            match state.manifest(movie).await {
                Ok(_) => {
                    let chosen = lock(&state.placement).choose(movie).map(|order| order[0]);
                    match chosen {
                        Some(i) if query.query_type() == RecordType::A => {
                            if let Some(ip) = state.edges[i].ipv4 {
                                let record =
                                    Record::from_rdata(name.clone(), DNS_TTL, RData::A(A(ip)));
                                response.add_answer(record);
                            }
                            ResponseCode::NoError
                        }
                        Some(_) => ResponseCode::NoError,
                        None => ResponseCode::ServFail,
                    }
                }
                Err(RouteError::BadName | RouteError::UnknownMovie) => ResponseCode::NXDomain,
                Err(_) => ResponseCode::ServFail,
            }
        }
        _ => ResponseCode::NXDomain,
    };
    response.set_response_code(code);
    response.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_specs() {
        let s: EdgeSpec = "e1=http://127.0.0.1:9001/".parse().unwrap();
        assert_eq!(s, EdgeSpec { name: "e1".into(), url: "http://127.0.0.1:9001".into() });
        assert!("e1".parse::<EdgeSpec>().is_err());
        assert!("=http://x".parse::<EdgeSpec>().is_err());
        let t = parse_edge(&s).unwrap();
        assert_eq!(t.ipv4, Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(t.url, "http://127.0.0.1:9001");
        let named = parse_edge(&"e=http://edge.test".parse().unwrap()).unwrap();
        assert_eq!((named.ipv4, named.url.as_str()), (None, "http://edge.test:80"));
        assert!(parse_edge(&"e=https://1.2.3.4".parse().unwrap()).is_err());
        assert!(parse_edge(&"e=http://1.2.3.4/x".parse().unwrap()).is_err());
    }

    #[test]
    fn the_manifest_cache_is_bounded_and_expires() {
        let t = Instant::now();
        let mut c = ManifestCache::default();
        for i in 0..=MAX_CACHED_MANIFESTS {
            c.insert(t, &format!("m{i}"), Some(Bytes::from_static(b"<MPD/>")));
        }
        assert_eq!(c.entries.len(), MAX_CACHED_MANIFESTS);
        assert_eq!(c.get(t, "m0"), None, "the oldest went first");
        assert!(c.get(t, "m1").is_some());
        c.insert(t, "gone", None);
        assert_eq!(c.get(t, "gone"), Some(None), "a 404 is remembered");
        assert_eq!(c.get(t + MANIFEST_TTL, "m1"), None, "and everything expires");
        let big = Bytes::from(vec![0u8; MAX_CACHED_MANIFEST_BYTES / 2 + 1]);
        c.insert(t, "big1", Some(big.clone()));
        c.insert(t, "big2", Some(big));
        assert!(c.get(t, "big1").is_none() && c.get(t, "big2").is_some());
        assert!(c.bytes <= MAX_CACHED_MANIFEST_BYTES);
        assert_eq!(c.entries.len(), c.by_age.len());
    }

    #[test]
    fn movie_names() {
        assert!(valid_movie("movie1"));
        assert!(valid_movie("big_buck-bunny"));
        for bad in ["", "-x", "a.b", "a/b", "..", "%2e", &"m".repeat(64)] {
            assert!(!valid_movie(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn dns_outside_the_zone_is_refused_and_garbage_is_formerr() {
        let config = RouterConfig::new(vec!["e=http://127.0.0.1:1".parse().unwrap()]);
        let router =
            RouterServer::bind("127.0.0.1:0".parse().unwrap(), None, config).await.unwrap();
        let mut q = Message::new();
        q.set_id(7).add_query(hickory_proto::op::Query::query(
            Name::from_ascii("movie1.example.org.").unwrap(),
            RecordType::A,
        ));
        let answer = dns_answer(&router.state, &q.to_vec().unwrap()).await.unwrap();
        let answer = Message::from_vec(&answer).unwrap();
        assert_eq!((answer.id(), answer.response_code()), (7, ResponseCode::Refused));
        let answer = dns_answer(&router.state, &[0, 9, 0xff]).await.unwrap();
        let answer = Message::from_vec(&answer).unwrap();
        assert_eq!((answer.id(), answer.response_code()), (9, ResponseCode::FormErr));
        assert!(dns_answer(&router.state, &[1]).await.is_none());
    }
}
