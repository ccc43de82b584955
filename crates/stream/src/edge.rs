//! The CDN edge: an HTTP/1.1 pull-through cache in front of one origin, served on the shared
//! [`http_layer::HttpServer`].
//!
//! - `GET`/`HEAD` of a path: answered from the byte-bounded [`Lru`] when present, else the
//!   whole object is fetched from the origin (`http://` or `https://`, on the shared
//!   [`http_layer::HttpClient`]; one fresh connection per fetch), stored and served. Range requests are answered over the cached bytes with the origin's semantics
//!   ([`parse_range`]: 206 with `Content-Range`, 416 with `bytes */LEN`). MIME types and CORS
//!   headers are the origin's; `X-Cache: HIT|MISS` tells which way a response went.
//! - Paths: the stream servers' one rule ([`RequestPath::parse`]) is applied before anything
//!   else; the canonical path is the cache key and the in-flight key, and is re-encoded for the
//!   origin, so `/m/a.m4s`, `//m/a.m4s` and `/m/%61.m4s` are one entry and one origin fetch.
//!   A path the rule refuses is 404 and costs no fetch.
//! - Single flight: the first miss of a path starts one fetch task and records its `watch`
//!   sender in the in-flight map; every later request for that path subscribes to it, so
//!   concurrent misses cost exactly one origin fetch. The fetch runs in its own task, so one
//!   client hanging up does not cancel it for the others; when the last waiting client has
//!   hung up the fetch is abandoned (the origin connection closed, its buffered bytes freed)
//!   and counted in `abandoned_fetches`.
//! - Bounds: at most [`EdgeConfig::max_origin_fetches`] origin fetches run at once (default
//!   [`DEFAULT_MAX_ORIGIN_FETCHES`]); more wait their turn, first come first served, and leave
//!   the queue when their clients do. Each fetch buffers at most [`EdgeConfig::max_object`]
//!   bytes, so fetch buffers hold at most `max_origin_fetches × max_object` bytes (16 × 64 MiB
//!   by default) on top of the cache's `cache_size`; the in-flight map has at most one entry per
//!   waiting request, so at most [`MAX_CONNECTIONS`] entries.
//! - Failures: an origin 404 passes through as 404 (not cached); any other origin status, a
//!   connection error, a timeout or an object over [`EdgeConfig::max_object`] is 502.
//! - `GET /health` answers a small JSON ([`Health`]) for the router's probes: the edge's
//!   name, cache counters, requests in progress and origin fetches made and abandoned.
//!
//! Lock order (both `std` mutexes, never held across an `.await`): `inflight` before `cache`.
//! The fetch task inserts into the cache and removes its in-flight entry under both locks, so
//! a request always finds the object either cached or in flight, never neither while a fetch
//! for it is finishing; it also decides to abandon under the `inflight` lock, so a request
//! that subscribes at that moment is either counted (the fetch goes on) or finds no entry (and
//! starts a new fetch).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use http_layer::{ClientConfig, HttpClient, HttpServer, RequestBody, ServerConfig};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::{watch, Semaphore};

use crate::origin::{
    self, method_response, mime_type, parse_range, status, RangeRequest, HEALTH_PATH,
};
use crate::player::{PeerPart, Peers};
use crate::proto::cache::{CacheStats, Lru};
use crate::request_path::RequestPath;
use crate::web;

/// Largest object fetched from the origin by default (larger: 502).
pub const DEFAULT_MAX_OBJECT: u64 = 64 * 1024 * 1024;
/// Origin fetches running at once by default.
pub const DEFAULT_MAX_ORIGIN_FETCHES: usize = 16;
/// Time an origin fetch may take, connect to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Most connections served at once (the shared HTTP layer's cap: when full, the oldest idle
/// connection is closed to make room, and accepting waits while every one is busy).
pub const MAX_CONNECTIONS: usize = 1024;

/// How an edge is set up.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// The origin's base URL, `http://HOST:PORT` (a path prefix is allowed).
    pub origin: String,
    /// Bytes of objects the cache may hold.
    pub cache_size: u64,
    /// The edge's name, reported in `/health`.
    pub name: String,
    /// Largest object fetched from the origin.
    pub max_object: u64,
    /// Most origin fetches running at once (at least 1); more wait.
    pub max_origin_fetches: usize,
}

impl EdgeConfig {
    /// A configuration with the default object cap and fetch concurrency.
    pub fn new(origin: impl Into<String>, cache_size: u64, name: impl Into<String>) -> Self {
        Self {
            origin: origin.into(),
            cache_size,
            name: name.into(),
            max_object: DEFAULT_MAX_OBJECT,
            max_origin_fetches: DEFAULT_MAX_ORIGIN_FETCHES,
        }
    }
}

/// Errors setting up an edge.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The origin URL is not `http(s)://HOST[:PORT][/PREFIX]`.
    #[error("origin URL {url:?} is not usable: {reason} (expected http(s)://HOST:PORT[/PREFIX])")]
    BadOrigin {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The HTTP client could not be set up (no usable TLS trust store).
    #[error("HTTP client: {0}")]
    Client(String),
    /// Binding the listening socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
}

/// What `GET /health` answers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Health {
    /// The edge's name.
    pub name: String,
    /// Requests being answered now (excluding this probe).
    pub active_requests: u64,
    /// Whole-object fetches started from the origin so far.
    pub origin_fetches: u64,
    /// Fetches dropped (started or still waiting to start) because every client waiting for
    /// them hung up.
    pub abandoned_fetches: u64,
    /// Cache hits (lookups that found the object).
    pub hits: u64,
    /// Cache misses.
    pub misses: u64,
    /// Objects evicted to make room.
    pub evictions: u64,
    /// Bytes held in the cache.
    pub bytes: u64,
    /// Objects held in the cache.
    pub entries: usize,
    /// The cache's capacity in bytes.
    pub capacity: u64,
    /// Object bytes other viewers served (a viewer's local node, [`PeerSource`]).
    #[serde(default)]
    pub peer_bytes: u64,
    /// Object bytes fetched from the origin.
    #[serde(default)]
    pub origin_bytes: u64,
}

/// Other viewers of one movie in front of the origin: a viewer's local node (`swarmcast play
/// URL --p2p --serve ADDR`, issue 15), which a browser's dash.js plays from as from an edge.
/// A path under `prefix` is asked of the peers first (by the rest of the path, as the
/// manifest names it); what they have not delivered after `wait` comes from the origin with
/// one Range request, and what came from the origin is offered to the peers. Manifests always
/// come from the origin, their BaseURLs removed so the browser stays on this node.
pub struct PeerSource {
    /// The other viewers.
    pub peers: Arc<dyn Peers>,
    /// The movie's folder as a request path, with its trailing slash (`/movie/`).
    pub prefix: String,
    /// How long a file waits for the peers before the origin is asked for the rest.
    pub wait: Duration,
    /// The web player's assets (dash.js), for `GET /player`.
    pub assets: PathBuf,
    /// The manifest's file name in `prefix` (`manifest.mpd`), which `/player` plays.
    pub manifest: String,
}

/// A fetched object, or why there is none.
#[derive(Debug, Clone)]
enum Fetched {
    Object(Bytes),
    NotFound,
    Failed(String),
}

/// The origin, checked once at start-up.
#[derive(Debug)]
struct Origin {
    /// `SCHEME://HOST:PORT` plus the path prefix, without a trailing slash: an object's URL
    /// is this followed by its request path.
    base: String,
}

struct EdgeState {
    config: EdgeConfig,
    origin: Origin,
    /// The origin client: its total timeout is [`FETCH_TIMEOUT`], its size cap `max_object`.
    client: HttpClient,
    cache: Mutex<Lru>,
    /// Path → the sender of the fetch in progress for it (its value is `None` until it ends);
    /// a request joins by subscribing. The fetch task owns a clone and removes the entry.
    inflight: Mutex<HashMap<RequestPath, watch::Sender<Option<Fetched>>>>,
    /// One permit per origin fetch allowed to run ([`EdgeConfig::max_origin_fetches`]).
    fetch_permits: Semaphore,
    origin_fetches: AtomicU64,
    abandoned_fetches: AtomicU64,
    active: AtomicU64,
    peers: Option<PeerSource>,
    peer_bytes: AtomicU64,
    origin_bytes: AtomicU64,
}

/// Locks a mutex, going on with the data if another thread panicked while holding it (the
/// cache and in-flight map stay consistent at every unlock point).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A pull-through caching HTTP server in front of one origin.
pub struct EdgeServer {
    http: HttpServer,
    state: Arc<EdgeState>,
}

impl EdgeServer {
    /// Binds `addr` (port 0: any free port) to serve `config.origin` through a cache.
    pub async fn bind(addr: SocketAddr, config: EdgeConfig) -> Result<EdgeServer, EdgeError> {
        EdgeServer::bind_with_peers(addr, config, None).await
    }

    /// [`EdgeServer::bind`] with other viewers in front of the origin ([`PeerSource`]).
    pub async fn bind_with_peers(
        addr: SocketAddr,
        config: EdgeConfig,
        peers: Option<PeerSource>,
    ) -> Result<EdgeServer, EdgeError> {
        let origin = parse_origin(&config.origin)?;
        let client = HttpClient::new(ClientConfig {
            total_timeout: FETCH_TIMEOUT,
            max_response_bytes: usize::try_from(config.max_object).unwrap_or(usize::MAX),
            user_agent: "Swarmcast-edge/0.1".to_owned(),
            ..ClientConfig::default()
        })
        .map_err(|e| EdgeError::Client(e.to_string()))?;
        let http_config =
            ServerConfig { max_connections: MAX_CONNECTIONS, ..ServerConfig::default() };
        let http = HttpServer::bind(addr, http_config)
            .await
            .map_err(|source| EdgeError::Bind { addr, source })?;
        let state = Arc::new(EdgeState {
            cache: Mutex::new(Lru::new(config.cache_size)),
            fetch_permits: Semaphore::new(config.max_origin_fetches.max(1)),
            config,
            origin,
            client,
            inflight: Mutex::new(HashMap::new()),
            origin_fetches: AtomicU64::new(0),
            abandoned_fetches: AtomicU64::new(0),
            active: AtomicU64::new(0),
            peers,
            peer_bytes: AtomicU64::new(0),
            origin_bytes: AtomicU64::new(0),
        });
        Ok(EdgeServer { http, state })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has a local address unless the socket is broken.
        self.http.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until dropped; dropping the future closes every connection.
    pub async fn run(self) -> io::Result<()> {
        let EdgeServer { http, state } = self;
        http.serve(move |req, peer| answer(req, peer, state.clone())).await
    }
}

fn parse_origin(url: &str) -> Result<Origin, EdgeError> {
    let bad = |reason| EdgeError::BadOrigin { url: url.to_string(), reason };
    let parsed = http_layer::parse_url(url).map_err(|_| bad("not an http:// or https:// URL"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("user info is not supported"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("a query is not allowed"));
    }
    // The parser has already put the port, an IPv6 host's brackets and the path in canonical
    // form; only the trailing slashes go, since every request path starts with one.
    let base = parsed.as_str().trim_end_matches('/').to_string();
    Ok(Origin { base })
}

async fn answer(
    req: Request<RequestBody>,
    peer: SocketAddr,
    state: Arc<EdgeState>,
) -> Response<Full<Bytes>> {
    let response = respond(&state, req.method(), req.uri().path(), req.headers()).await;
    tracing::debug!(%peer, method = %req.method(), path = req.uri().path(),
        status = response.status().as_u16(), "request");
    response
}

/// Decrements the active-request count when a request ends, however it ends.
struct ActiveGuard<'a>(&'a AtomicU64);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn respond(
    state: &Arc<EdgeState>,
    method: &Method,
    raw_path: &str,
    headers: &HeaderMap,
) -> Response<Full<Bytes>> {
    if let Some(response) = method_response(method) {
        return with_cors(response);
    }
    let Ok(path) = RequestPath::parse(raw_path) else {
        return with_cors(status(StatusCode::NOT_FOUND, "not found\n"));
    };
    if path.as_str() == HEALTH_PATH {
        return with_cors(health_response(state));
    }
    let player = web::is_player_path(path.as_str()) || path.as_str() == "/player";
    if let Some(source) = state.peers.as_ref().filter(|_| player) {
        return player_response(source, &path, method == Method::HEAD).await;
    }
    state.active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(&state.active);
    let (fetched, hit) = object(state, &path).await;
    let body = match fetched {
        Fetched::Object(b) => b,
        Fetched::NotFound => return with_cors(status(StatusCode::NOT_FOUND, "not found\n")),
        Fetched::Failed(reason) => {
            tracing::warn!(path = path.as_str(), %reason, "origin fetch failed");
            return with_cors(status(StatusCode::BAD_GATEWAY, "origin fetch failed\n"));
        }
    };
    with_cors(serve_bytes(&path, body, hit, method == Method::HEAD, headers))
}

/// The object at `path` from the cache, a fetch in flight, or a new fetch; and whether it
/// was a cache hit.
async fn object(state: &Arc<EdgeState>, path: &RequestPath) -> (Fetched, bool) {
    let mut rx = {
        let mut inflight = lock(&state.inflight);
        if let Some(body) = lock(&state.cache).get(path.as_str()) {
            return (Fetched::Object(body), true);
        }
        match inflight.get(path) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(None);
                inflight.insert(path.clone(), tx.clone());
                tokio::spawn(fetch_task(state.clone(), path.clone(), tx));
                rx
            }
        }
    };
    let fetched = match rx.wait_for(Option::is_some).await {
        Ok(v) => v.clone().unwrap_or(Fetched::Failed("no result".into())),
        // Every sender is gone without a result: the fetch task panicked.
        Err(_) => Fetched::Failed("fetch task ended".into()),
    };
    (fetched, false)
}

/// Removes a fetch's in-flight entry if its task ends without doing so itself (a panic), so
/// its waiters get an error instead of waiting forever and the path can be fetched again.
struct InflightEntry {
    state: Arc<EdgeState>,
    path: RequestPath,
    open: bool,
}

impl Drop for InflightEntry {
    fn drop(&mut self) {
        if self.open {
            lock(&self.state.inflight).remove(&self.path);
        }
    }
}

async fn fetch_task(state: Arc<EdgeState>, path: RequestPath, tx: watch::Sender<Option<Fetched>>) {
    let mut entry = InflightEntry { state: state.clone(), path: path.clone(), open: true };
    let work = async {
        // Waits its turn; the semaphore is never closed, so an error cannot happen.
        let _permit = state.fetch_permits.acquire().await;
        state.origin_fetches.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(FETCH_TIMEOUT, fetch(&state, &path)).await {
            Ok(r) => r,
            Err(_) => Fetched::Failed(format!("timed out after {FETCH_TIMEOUT:?}")),
        }
    };
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            () = tx.closed() => {
                let mut inflight = lock(&state.inflight);
                // Under the lock no request can subscribe: if still nobody waits, nobody will.
                if tx.receiver_count() == 0 {
                    inflight.remove(&path);
                    entry.open = false;
                    state.abandoned_fetches.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(path = path.as_str(), "every client left, fetch abandoned");
                    // Returning drops `work`: its origin connection and buffered bytes go.
                    return;
                }
            }
        }
    };
    {
        let mut inflight = lock(&state.inflight);
        if let Fetched::Object(body) = &result {
            lock(&state.cache).insert(path.as_str().to_string(), body.clone());
        }
        inflight.remove(&path);
        entry.open = false;
    }
    // No receiver left (every client hung up just now) is fine: the object is cached anyway.
    let _ = tx.send(Some(result));
}

/// Fetches the whole object at `path` from the origin (dropping this future closes its
/// connection: a half-read response is never returned to the pool); with a [`PeerSource`],
/// from the peers first.
async fn fetch(state: &EdgeState, path: &RequestPath) -> Fetched {
    let url = format!("{}{}", state.origin.base, path.to_uri_path());
    let Some(source) = &state.peers else {
        return fetch_whole(state, &url).await;
    };
    let rel = path.as_str().strip_prefix(source.prefix.as_str());
    let Some(rel) = rel.filter(|r| !r.ends_with(".mpd")) else {
        return match fetch_whole(state, &url).await {
            // The manifest's BaseURLs would send the browser around this node.
            Fetched::Object(body) if path.as_str().ends_with(".mpd") => {
                let text = String::from_utf8_lossy(&body);
                match crate::mpd::set_base_urls(&text, &[]) {
                    Ok(mpd) => Fetched::Object(mpd.into()),
                    Err(e) => Fetched::Failed(format!("the manifest: {e}")),
                }
            }
            other => other,
        };
    };
    let deadline = std::time::Instant::now() + source.wait;
    let part = source.peers.fetch(rel, deadline).await.filter(PeerPart::is_valid);
    let fetched = match part {
        Some(p) if p.missing.is_empty() => {
            state.peer_bytes.fetch_add(p.data.len() as u64, Ordering::Relaxed);
            return Fetched::Object(p.data.into());
        }
        Some(p) => fetch_rest(state, &url, p).await,
        None => fetch_whole(state, &url).await,
    };
    match fetched {
        Fetched::Object(body) => {
            source.peers.offer(rel, body.clone()).await;
            Fetched::Object(body)
        }
        other => other,
    }
}

/// The bytes peers did not deliver (`part.missing`), from the origin by Range, put in place.
async fn fetch_rest(state: &EdgeState, url: &str, part: PeerPart) -> Fetched {
    let missing = part.missing.clone();
    let result = async {
        let response =
            state.client.get_range(url, missing.clone()).await.map_err(|e| e.to_string())?;
        match response.status() {
            StatusCode::PARTIAL_CONTENT
                if response.carries_range(&missing, part.data.len() as u64) => {}
            // A server that ignores Range sends it all: the peers' part is not needed, and
            // the body is the object (not fetched a second time).
            StatusCode::OK => return whole_body(state, response).await,
            StatusCode::NOT_FOUND => return Ok(Fetched::NotFound),
            s => return Err(format!("origin answered {s} to bytes {missing:?}")),
        }
        let len = (missing.end - missing.start) as usize;
        let body =
            response.bytes_capped(len).await.map_err(|e| format!("reading the body: {e}"))?;
        if body.len() != len {
            return Err(format!("{} bytes of {missing:?}", body.len()));
        }
        let from_peers = part.from_peers();
        let mut data = part.data;
        data[missing.start as usize..missing.end as usize].copy_from_slice(&body);
        state.peer_bytes.fetch_add(from_peers, Ordering::Relaxed);
        state.origin_bytes.fetch_add(len as u64, Ordering::Relaxed);
        Ok(Fetched::Object(data.into()))
    }
    .await;
    result.unwrap_or_else(Fetched::Failed)
}

/// `GET /player` (the web player on this node's manifest) and its dash.js.
async fn player_response(
    source: &PeerSource,
    path: &RequestPath,
    head: bool,
) -> Response<Full<Bytes>> {
    let missing = || {
        if let Err(e) = web::check_assets(&source.assets) {
            tracing::warn!("{e}");
        }
        status(StatusCode::SERVICE_UNAVAILABLE, "dash.js is missing\n")
    };
    let (content_type, body) = if path.as_str() == format!("/_player/{}", web::DASH_JS) {
        match web::read_dash_js(&source.assets).await {
            None => return missing(),
            Some(Ok(js)) => (web::JS_TYPE, js),
            Some(Err(message)) => return status(StatusCode::INTERNAL_SERVER_ERROR, message),
        }
    } else if path.as_str() == "/player/" || path.as_str() == "/player" {
        if web::check_assets(&source.assets).is_err() {
            return missing();
        }
        let manifest = format!("{}{}", source.prefix, source.manifest);
        (web::HTML_TYPE, Bytes::from(web::player_page(&manifest)))
    } else {
        return status(StatusCode::NOT_FOUND, "not found\n");
    };
    let len = body.len();
    let mut r = Response::new(Full::new(if head { Bytes::new() } else { body }));
    let headers = r.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Fetches the whole object at `url` from the origin.
async fn fetch_whole(state: &EdgeState, url: &str) -> Fetched {
    let result = async {
        let response = state.client.get(url).await.map_err(|e| e.to_string())?;
        match response.status() {
            StatusCode::OK => whole_body(state, response).await,
            StatusCode::NOT_FOUND => Ok(Fetched::NotFound),
            s => Err(format!("origin answered {s}")),
        }
    }
    .await;
    result.unwrap_or_else(Fetched::Failed)
}

/// The body of the origin's 200 answer: the whole object (within the object cap), counted
/// as the origin's bytes.
async fn whole_body(state: &EdgeState, response: http_layer::Fetched) -> Result<Fetched, String> {
    match response.bytes().await {
        Ok(body) => {
            state.origin_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            Ok(Fetched::Object(body))
        }
        Err(http_layer::ClientError::TooLarge { .. }) => {
            Err(format!("object over the {} byte cap", state.config.max_object))
        }
        Err(e) => Err(format!("reading the body: {e}")),
    }
}

fn serve_bytes(
    path: &RequestPath,
    body: Bytes,
    hit: bool,
    head_only: bool,
    headers: &HeaderMap,
) -> Response<Full<Bytes>> {
    let len = body.len() as u64;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map_or(RangeRequest::Full, |v| parse_range(v, len));
    let mut response = Response::new(Full::new(Bytes::new()));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime_type(Path::new(path.as_str()))));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert("x-cache", HeaderValue::from_static(if hit { "HIT" } else { "MISS" }));
    let (code, slice) = match range {
        RangeRequest::Full => (StatusCode::OK, body),
        RangeRequest::Partial { start, end } => {
            h.insert(header::CONTENT_RANGE, header_value(format!("bytes {start}-{end}/{len}")));
            // parse_range keeps start ≤ end < len.
            (StatusCode::PARTIAL_CONTENT, body.slice(start as usize..=end as usize))
        }
        RangeRequest::Unsatisfiable => {
            h.insert(header::CONTENT_RANGE, header_value(format!("bytes */{len}")));
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            return response;
        }
    };
    h.insert(header::CONTENT_LENGTH, header_value(slice.len().to_string()));
    *response.status_mut() = code;
    if !head_only {
        *response.body_mut() = Full::new(slice);
    }
    response
}

fn health_response(state: &EdgeState) -> Response<Full<Bytes>> {
    let health = health(state);
    let json = serde_json::to_vec(&health).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(json)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn health(state: &EdgeState) -> Health {
    let stats: CacheStats = lock(&state.cache).stats();
    Health {
        name: state.config.name.clone(),
        active_requests: state.active.load(Ordering::Relaxed),
        origin_fetches: state.origin_fetches.load(Ordering::Relaxed),
        abandoned_fetches: state.abandoned_fetches.load(Ordering::Relaxed),
        hits: stats.hits,
        misses: stats.misses,
        evictions: stats.evictions,
        bytes: stats.bytes,
        entries: stats.entries,
        capacity: state.config.cache_size,
        peer_bytes: state.peer_bytes.load(Ordering::Relaxed),
        origin_bytes: state.origin_bytes.load(Ordering::Relaxed),
    }
}

/// A header value from text we formatted ourselves (digits, spaces, `-`, `/`, `*`).
fn header_value(s: String) -> HeaderValue {
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The origin's exposed headers plus `X-Cache`.
const EXPOSE_HEADERS: &str = "Content-Length, Content-Range, Accept-Ranges, X-Cache";

fn with_cors(response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    origin::with_cors(response, EXPOSE_HEADERS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_urls() {
        let o = parse_origin("http://127.0.0.1:8080").unwrap();
        assert_eq!(o.base, "http://127.0.0.1:8080");
        let o = parse_origin("http://example.test/content/").unwrap();
        assert_eq!(o.base, "http://example.test/content");
        let o = parse_origin("https://[::1]:8443/a//").unwrap();
        assert_eq!(o.base, "https://[::1]:8443/a");
        assert!(parse_origin("ftp://x:1").is_err());
        assert!(parse_origin("http://u@x:1").is_err());
        assert!(parse_origin("http://x:1/?q").is_err());
        assert!(parse_origin("not a url").is_err());
    }

    #[test]
    fn ranges_over_cached_bytes() {
        let body = Bytes::from_static(b"0123456789");
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=2-4"));
        let path = RequestPath::parse("/m/a.m4s").unwrap();
        let r = serve_bytes(&path, body.clone(), true, false, &h);
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes 2-4/10");
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "3");
        h.insert(header::RANGE, HeaderValue::from_static("bytes=10-"));
        let r = serve_bytes(&path, body, true, false, &h);
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes */10");
    }
}
