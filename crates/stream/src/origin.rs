//! The origin server: static files of one content directory over HTTP/1.1 (hyper 1).
//!
//! - `GET` and `HEAD`; `OPTIONS` answers CORS preflights; any other method gets 405.
//! - One byte range per request (`Range: bytes=a-b`, `a-`, `-n`): 206 with `Content-Range`;
//!   a range that starts at or past the end gets 416 with `Content-Range: bytes */LEN`. A
//!   malformed or multi-range header is ignored (the whole file, 200), as RFC 9110 allows.
//! - MIME types by extension ([`mime_type`]); every response carries
//!   `Access-Control-Allow-Origin: *` and exposes `Content-Length`/`Content-Range`.
//! - Path safety: the request path goes through the stream servers' one rule
//!   ([`RequestPath::parse`]: decoded once, `//` collapsed, no `..`, `.`, `~`, backslash, colon
//!   or control character), then ([`crate::files::resolve_path`]) the file's canonical path (symlinks
//!   resolved) must lie under the canonical content directory; anything else is 404, decided
//!   before a byte of the file is read.
//! - `GET /health` answers `{"role":"origin"}` (200), so a router can probe an origin it is
//!   pointed at directly as it probes an edge; a file named `health` at the top of the content
//!   directory is therefore not served.
//!
//! Layout: [`OriginServer`] serves on the shared [`http_layer::HttpServer`] (its connection cap,
//! oldest-idle eviction, header, idle and body timeouts; every connection runs in a `JoinSet`
//! owned by [`OriginServer::run`], so dropping `run` stops them all); [`respond`] turns one
//! request into a response and is what the tests and other servers (edge, router) can reuse.

use std::io::{self, Read, Seek};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_layer::{HttpServer, RequestBody, ServerConfig};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::files::{resolve_path_blocking, OriginBody};
use crate::proto::cache::Lru;
use crate::request_path::RequestPath;

/// A static-file HTTP server over one content directory.
pub struct OriginServer {
    http: HttpServer,
    content: Arc<ContentDir>,
    /// Where the web player's dash.js is read from (see [`crate::web`]).
    player_assets: Arc<PathBuf>,
}

impl OriginServer {
    /// Binds `addr` (port 0: any free port) to serve the files under `dir`.
    pub async fn bind(addr: SocketAddr, dir: &Path) -> io::Result<OriginServer> {
        let root = tokio::fs::canonicalize(dir).await.map_err(|e| {
            io::Error::new(e.kind(), format!("content directory {}: {e}", dir.display()))
        })?;
        if !tokio::fs::metadata(&root).await?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", dir.display()),
            ));
        }
        let http = HttpServer::bind(addr, ServerConfig::default()).await?;
        let player_assets = Arc::new(crate::web::default_assets_dir(None));
        Ok(OriginServer { http, content: Arc::new(ContentDir::new(root)), player_assets })
    }

    /// Reads the web player's dash.js from `dir` instead of [`crate::web::default_assets_dir`].
    pub fn with_player_assets(mut self, dir: PathBuf) -> OriginServer {
        self.player_assets = Arc::new(dir);
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has a local address unless the socket is broken.
        self.http.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The canonical content directory.
    pub fn root(&self) -> &Path {
        self.content.root()
    }

    /// Serves until dropped.
    pub async fn run(self) -> io::Result<()> {
        let OriginServer { http, content, player_assets } = self;
        http.serve(move |req, peer| answer(req, peer, content.clone(), player_assets.clone())).await
    }
}

/// The origin's answer to one request: health, the web player's files, or a content file.
async fn answer(
    req: Request<RequestBody>,
    peer: SocketAddr,
    content: Arc<ContentDir>,
    assets: Arc<PathBuf>,
) -> Response<OriginBody> {
    let raw = req.uri().path();
    let response = match RequestPath::parse(raw) {
        Ok(path) if path.as_str() == HEALTH_PATH => health_response(req.method()),
        Ok(path) if crate::web::is_player_path(path.as_str()) => {
            crate::web::respond(content.root(), &assets, req.method(), &path).await
        }
        _ => respond(&content, req.method(), raw, req.headers()).await,
    };
    tracing::debug!(%peer, method = %req.method(), path = req.uri().path(),
        status = response.status().as_u16(), "request");
    response
}

/// What a `Range` header asks of a file of a known length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: send the whole file (200).
    Full,
    /// Bytes `start..=end` (206).
    Partial { start: u64, end: u64 },
    /// Nothing of the range exists (416).
    Unsatisfiable,
}

/// Interprets a `Range` header value for a file of `len` bytes. Only one `bytes=` range is
/// honoured; a malformed or multi-range value means [`RangeRequest::Full`].
pub fn parse_range(value: &str, len: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match number(suffix) {
            None => RangeRequest::Full,
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if len == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial { start: len - n.min(len), end: len - 1 },
        },
        (start, "") => match number(start) {
            None => RangeRequest::Full,
            Some(s) if s >= len => RangeRequest::Unsatisfiable,
            Some(s) => RangeRequest::Partial { start: s, end: len - 1 },
        },
        (start, end) => match (number(start), number(end)) {
            (Some(s), Some(e)) if s <= e => {
                if s >= len {
                    RangeRequest::Unsatisfiable
                } else {
                    RangeRequest::Partial { start: s, end: e.min(len - 1) }
                }
            }
            _ => RangeRequest::Full,
        },
    }
}

/// The `Content-Type` for a file name, by extension.
pub fn mime_type(path: &Path) -> &'static str {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "mpd" => "application/dash+xml",
        "m4s" => "video/iso.segment",
        "mp4" | "m4v" => "video/mp4",
        "m4a" => "audio/mp4",
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "m3u8" => "application/vnd.apple.mpegurl",
        "ts" => "video/mp2t",
        "webm" => "video/webm",
        _ => "application/octet-stream",
    }
}

/// The path the origin (and every edge) answers with its health instead of a file.
pub const HEALTH_PATH: &str = "/health";

/// Answers one request for the files of `content`; `path` is the raw request path, put through
/// [`RequestPath::parse`] here. A small file read less than [`FILE_CACHE_VALID`] ago is served
/// from memory.
pub async fn respond(
    content: &ContentDir,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Response<OriginBody> {
    if let Some(response) = method_response(method) {
        return with_cors(response, EXPOSE_HEADERS);
    }
    let Ok(path) = RequestPath::parse(path) else {
        return with_cors(status(StatusCode::NOT_FOUND, "not found\n"), EXPOSE_HEADERS);
    };
    let head_only = method == Method::HEAD;
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some((body, mime)) = content.cached(&path, Instant::now()) {
        return with_cors(from_memory(body, mime, range.as_deref(), head_only), EXPOSE_HEADERS);
    }
    match serve_file(content, &path, head_only, range).await {
        Ok(Some(response)) => with_cors(response, EXPOSE_HEADERS),
        Ok(None) => with_cors(status(StatusCode::NOT_FOUND, "not found\n"), EXPOSE_HEADERS),
        Err(e) => {
            tracing::warn!(path = ?path, error = %e, "cannot read file");
            with_cors(status(StatusCode::INTERNAL_SERVER_ERROR, "read error\n"), EXPOSE_HEADERS)
        }
    }
}

/// Files of at most this many bytes are read whole, in the trip to the blocking pool that opens
/// them, and kept in memory; longer ones stream in chunks.
const INLINE_MAX: u64 = 1 << 20;
/// Bytes of small files kept in memory.
const FILE_CACHE_BYTES: u64 = 64 << 20;
/// How long a file kept in memory is served before it is read again: a file changed on disk is
/// served changed within this long (nginx's `open_file_cache_valid` plays the same part).
pub const FILE_CACHE_VALID: Duration = Duration::from_secs(1);

/// A content directory (canonical) and its small files kept in memory, each with the instant it
/// was read and its MIME type.
///
/// Why keep them: under wrk the origin spent its time in round trips to tokio's blocking pool
/// (canonicalize, metadata, open, metadata, seek, one read per 64 KiB), not in reading; a file
/// read in the last second is served from memory with no system call, as the edge serves.
pub struct ContentDir {
    root: PathBuf,
    cache: Mutex<Lru<Option<(Instant, &'static str)>>>,
}

impl ContentDir {
    /// `root` must be canonical.
    pub fn new(root: PathBuf) -> ContentDir {
        ContentDir { root, cache: Mutex::new(Lru::new(FILE_CACHE_BYTES)) }
    }

    /// The canonical content directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self) -> MutexGuard<'_, Lru<Option<(Instant, &'static str)>>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file at `path` and its MIME type, if it was read less than [`FILE_CACHE_VALID`] ago.
    fn cached(&self, path: &RequestPath, now: Instant) -> Option<(Bytes, &'static str)> {
        let (body, meta) = self.lock().get_with(path.as_str())?;
        let (read_at, mime) = meta?;
        (now.saturating_duration_since(read_at) < FILE_CACHE_VALID).then_some((body, mime))
    }
}

/// What the blocking pool found: nothing, a small file read whole, or a large one opened
/// (positioned at the range's start).
enum Found {
    Missing,
    Read { body: Bytes, mime: &'static str },
    Opened { file: std::fs::File, len: u64, mime: &'static str, range: RangeRequest },
}

/// The file `path` names under the content directory, as a response; `None` if there is no such
/// file (404).
async fn serve_file(
    content: &ContentDir,
    path: &RequestPath,
    head_only: bool,
    range_header: Option<String>,
) -> io::Result<Option<Response<OriginBody>>> {
    let (root, owned) = (content.root.clone(), path.clone());
    let header = range_header.clone();
    // Resolve, open, stat and read (small files) or seek (large ones) in one trip.
    let find = move || -> io::Result<Found> {
        let Some(file_path) = resolve_path_blocking(&root, &owned) else {
            return Ok(Found::Missing);
        };
        let mime = mime_type(&file_path);
        let mut file = std::fs::File::open(&file_path)?;
        let len = file.metadata()?.len();
        if len <= INLINE_MAX {
            let mut body = Vec::with_capacity(len as usize);
            file.take(INLINE_MAX + 1).read_to_end(&mut body)?;
            if body.len() as u64 > INLINE_MAX {
                // It grew past the line since `metadata`: this request fails (500); the next
                // one finds it large and streams it.
                return Err(io::Error::other("file grew while being read"));
            }
            return Ok(Found::Read { body: body.into(), mime });
        }
        let range = header.map_or(RangeRequest::Full, |v| parse_range(&v, len));
        if let RangeRequest::Partial { start, .. } = range {
            file.seek(io::SeekFrom::Start(start))?;
        }
        Ok(Found::Opened { file, len, mime, range })
    };
    let (file, len, mime, range) =
        match tokio::task::spawn_blocking(find).await.map_err(io::Error::other)?? {
            Found::Missing => return Ok(None),
            Found::Read { body, mime } => {
                let key = path.as_str().to_owned();
                content.lock().insert_with(key, body.clone(), Some((Instant::now(), mime)));
                return Ok(Some(from_memory(body, mime, range_header.as_deref(), head_only)));
            }
            Found::Opened { file, len, mime, range } => (file, len, mime, range),
        };
    let (builder, count) = match headers_for(mime, len, range) {
        Ok(head) => head,
        Err(unsatisfiable) => return Ok(Some(*unsatisfiable)),
    };
    let body = if head_only || count == 0 {
        OriginBody::empty()
    } else {
        OriginBody::File {
            file: tokio::fs::File::from_std(file),
            remaining: count,
            buf: Vec::new(),
        }
    };
    builder.body(body).map(Some).map_err(io::Error::other)
}

/// A response for a file held in memory.
fn from_memory(
    body: Bytes,
    mime: &'static str,
    range: Option<&str>,
    head_only: bool,
) -> Response<OriginBody> {
    let len = body.len() as u64;
    let range = range.map_or(RangeRequest::Full, |v| parse_range(v, len));
    let (builder, count) = match headers_for(mime, len, range) {
        Ok(head) => head,
        Err(unsatisfiable) => return *unsatisfiable,
    };
    let body = match range {
        _ if head_only || count == 0 => OriginBody::empty(),
        RangeRequest::Partial { start, end } => {
            OriginBody::Bytes(Some(body.slice(start as usize..=end as usize)))
        }
        _ => OriginBody::Bytes(Some(body)),
    };
    builder.body(body).unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR, "error\n"))
}

/// The status and headers for `range` of a file of `len` bytes, and the body's length; or the
/// whole 416 response.
fn headers_for(
    mime: &'static str,
    len: u64,
    range: RangeRequest,
) -> Result<(hyper::http::response::Builder, u64), Box<Response<OriginBody>>> {
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, mime)
        .header(header::ACCEPT_RANGES, "bytes");
    let (code, count) = match range {
        RangeRequest::Full => (StatusCode::OK, len),
        RangeRequest::Partial { start, end } => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            (StatusCode::PARTIAL_CONTENT, end - start + 1)
        }
        RangeRequest::Unsatisfiable => {
            let response = builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .header(header::CONTENT_LENGTH, "0")
                .body(OriginBody::empty())
                .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR, "error\n"));
            return Err(Box::new(response));
        }
    };
    Ok((builder.status(code).header(header::CONTENT_LENGTH, count.to_string()), count))
}

/// The origin's `GET /health`: 200 with `{"role":"origin"}`, never cached.
fn health_response(method: &Method) -> Response<OriginBody> {
    if let Some(response) = method_response(method) {
        return with_cors(response, EXPOSE_HEADERS);
    }
    let mut response = status(StatusCode::OK, "{\"role\":\"origin\"}\n");
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if method == Method::HEAD {
        *response.body_mut() = OriginBody::empty();
    }
    with_cors(response, EXPOSE_HEADERS)
}

/// Response headers a browser's script may read (CORS), for the origin; the edge adds its own.
pub(crate) const EXPOSE_HEADERS: &str = "Content-Length, Content-Range, Accept-Ranges";

/// A plain-text response with status `code` (shared by the origin and the edge).
pub(crate) fn status<B: From<&'static str>>(code: StatusCode, text: &'static str) -> Response<B> {
    let mut response = Response::new(B::from(text));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Adds the CORS headers every response of ours carries, exposing `expose`.
pub(crate) fn with_cors<B>(mut response: Response<B>, expose: &'static str) -> Response<B> {
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(expose));
    response
}

/// The answer to a method other than GET and HEAD: the CORS preflight (204) for OPTIONS, 405
/// for the rest; `None` for GET and HEAD, which the caller serves.
pub(crate) fn method_response<B: From<&'static str>>(method: &Method) -> Option<Response<B>> {
    if method == Method::GET || method == Method::HEAD {
        return None;
    }
    if method == Method::OPTIONS {
        let mut response = status(StatusCode::NO_CONTENT, "");
        let h = response.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Range, Content-Type"),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
        return Some(response);
    }
    let mut response = status(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, OPTIONS"));
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range("bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(parse_range("bytes=90-", 100), Partial { start: 90, end: 99 });
        assert_eq!(parse_range("bytes=-10", 100), Partial { start: 90, end: 99 });
        assert_eq!(parse_range("bytes=-500", 100), Partial { start: 0, end: 99 });
        assert_eq!(parse_range("bytes=50-5000", 100), Partial { start: 50, end: 99 });
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=9-0", 100), Full);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range("items=0-1", 100), Full);
        assert_eq!(parse_range("bytes=a-b", 100), Full);
        assert_eq!(parse_range("bytes=+1-2", 100), Full);
        assert_eq!(parse_range("bytes=99999999999999999999999-", 100), Full);
    }

    #[test]
    fn mime_types() {
        assert_eq!(mime_type(Path::new("a/manifest.mpd")), "application/dash+xml");
        assert_eq!(mime_type(Path::new("chunk-0-00001.m4s")), "video/iso.segment");
        assert_eq!(mime_type(Path::new("init-0.MP4")), "video/mp4");
        assert_eq!(mime_type(Path::new("index.html")), "text/html; charset=utf-8");
        assert_eq!(mime_type(Path::new("dash.all.min.js")), "text/javascript; charset=utf-8");
        assert_eq!(mime_type(Path::new("noext")), "application/octet-stream");
    }
}
