//! The node's HTTP API, `/api/v1`, on the project's one HTTP layer. JSON in and out; errors are
//! `{"error": "…"}` with the status that fits (400 malformed, 401 no token, 403 another
//! origin, 404 unknown id, 405 wrong method, 409 already there, 413 too large).
//!
//! Who may call: the server listens on loopback; a request must name the loopback in `Host`
//! (a page elsewhere cannot reach it by DNS rebinding), must not come from another origin (a
//! browser's `Origin` header naming anything but this server is refused, so a web page cannot
//! drive the node, even with a "simple" request that skips CORS preflight), and must carry the
//! token from `DIR/api` as `Authorization: Bearer TOKEN`. The token is checked before a body is
//! read, so no one without it can make the node buffer anything.
//!
//! Routes:
//! - `GET /api/v1/node`: version, peer port, folders, number of torrents.
//! - `GET /api/v1/torrents`: every torrent (id, name, state, progress, sizes, rates, peers).
//! - `POST /api/v1/torrents`: `{"magnet": URI}`, `{"url": "http(s)://….torrent"}` or
//!   `{"torrent": BASE64}`, with optional `"save_dir"` (absolute) and `"paused"`; 201 with the
//!   torrent.
//! - `GET /api/v1/torrents/ID`: the torrent with its files, pieces, trackers and magnet. ID is
//!   the info-hash in hex, or a prefix of at least 4 digits naming one torrent.
//! - `POST /api/v1/torrents/ID/pause`, `…/resume`.
//! - `DELETE /api/v1/torrents/ID` (`?delete_data=true`: also the files its download created).
//! - `GET /api/v1/events`: Server-Sent Events (`events.rs`); `Last-Event-ID` (or `?after=N`)
//!   resumes after an event.
//! - `GET /metrics`: Prometheus text (token needed, as for every call).
//! - `GET /`, `/app.js`, `/style.css`: the web UI (no token: it holds no data; it reads the token
//!   from the address `up` prints, `…/#token=…`, and keeps it in the browser's local storage).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{
    HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HOST, ORIGIN,
    X_CONTENT_TYPE_OPTIONS,
};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use torrent::magnet::Magnet;
use torrent::metainfo::{Metainfo, MAX_TORRENT_SIZE};

use super::{AddSource, Node, NodeError};

/// Connections open at once.
const MAX_CONNECTIONS: usize = 64;
/// Largest body of an add (a base64 `.torrent` of the largest size we parse, and the rest).
const MAX_ADD_BODY: usize = MAX_TORRENT_SIZE / 3 * 4 + 64 * 1024;

type Reply = Response<BoxBody<Bytes, std::convert::Infallible>>;

/// The web UI: plain HTML, CSS and an ES module, no framework and no build step (see
/// `ui/app.js`), compiled into the binary.
const UI: [(&str, &str, &str); 3] = [
    ("/", "text/html; charset=utf-8", include_str!("ui/index.html")),
    ("/app.js", "text/javascript; charset=utf-8", include_str!("ui/app.js")),
    ("/style.css", "text/css; charset=utf-8", include_str!("ui/style.css")),
];
/// The UI's pages load nothing from elsewhere and run no inline script.
const UI_CSP: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

/// Starts the API on `listen`; returns the address and the server's task.
pub async fn serve(
    node: Arc<Node>,
    listen: SocketAddr,
    token: String,
) -> Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let config =
        http_layer::ServerConfig { max_connections: MAX_CONNECTIONS, ..Default::default() };
    let server = http_layer::HttpServer::bind(listen, config).await.with_context(|| {
        format!("cannot listen on {listen} for the API (is another node running? pick another --listen)")
    })?;
    let addr = server.local_addr()?;
    let token = Arc::new(token);
    let task = tokio::spawn(server.serve(move |req, _peer| {
        let (node, token) = (node.clone(), token.clone());
        async move { answer(node, &token, req).await }
    }));
    Ok((addr, task))
}

async fn answer<B>(node: Arc<Node>, token: &str, req: Request<B>) -> Reply
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let host = req.headers().get(HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !crate::watch_http::names_loopback(host) {
        return error(StatusCode::MISDIRECTED_REQUEST, "this node answers loopback names only");
    }
    if let Some(origin) = req.headers().get(ORIGIN) {
        let own = format!("http://{host}");
        if origin.as_bytes() != own.as_bytes() {
            return error(StatusCode::FORBIDDEN, "cross-origin requests are refused");
        }
    }
    let path = req.uri().path().to_string();
    if let Some((_, mime, text)) = UI.iter().find(|(p, _, _)| *p == path) {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return error(StatusCode::METHOD_NOT_ALLOWED, "the UI's files are read with GET");
        }
        let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(mime));
        r.headers_mut().insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(UI_CSP));
        r.headers_mut().insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        return r;
    }
    let route = match path.strip_prefix("/api/v1/") {
        Some(route) => route,
        None if path == "/metrics" => "metrics",
        None => return error(StatusCode::NOT_FOUND, "no such page: the API is under /api/v1/"),
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same(given.as_bytes(), token.as_bytes()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "this call needs the node's token (Authorization: Bearer TOKEN, from the node's \
             `api` file)",
        );
    }
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or("").to_string();
    let parts: Vec<&str> = route.split('/').collect();
    let result = match (&method, parts.as_slice()) {
        (&Method::GET, ["node"]) => Ok(json(StatusCode::OK, &node.about())),
        (&Method::GET, ["metrics"]) => {
            let mut r = Response::new(Full::new(Bytes::from(node.metrics())).boxed());
            let mime = "text/plain; version=0.0.4; charset=utf-8";
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(mime));
            Ok(r)
        }
        (&Method::GET, ["events"]) => {
            let last = req.headers().get("last-event-id").and_then(|v| v.to_str().ok());
            let after = query.split('&').find_map(|p| p.strip_prefix("after="));
            let after = match last.or(after).map(str::parse::<u64>) {
                Some(Ok(n)) => Some(n),
                Some(Err(_)) => {
                    return error(StatusCode::BAD_REQUEST, "an event id is a whole number")
                }
                None => None,
            };
            match node.events.subscribe(after) {
                Some(body) => {
                    let mut r = Response::new(body.boxed());
                    let mime = HeaderValue::from_static("text/event-stream");
                    r.headers_mut().insert(CONTENT_TYPE, mime);
                    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    Ok(r)
                }
                None => {
                    return error(StatusCode::SERVICE_UNAVAILABLE, "too many event streams open")
                }
            }
        }
        (&Method::GET, ["torrents"]) => Ok(json(StatusCode::OK, &node.list())),
        (&Method::POST, ["torrents"]) => add(&node, req.into_body()).await,
        (&Method::GET, ["torrents", id]) => node.detail(id).map(|d| json(StatusCode::OK, &d)),
        (&Method::POST, ["torrents", id, "pause"]) => {
            node.pause(id).await.map(|t| json(StatusCode::OK, &t))
        }
        (&Method::POST, ["torrents", id, "resume"]) => {
            node.resume(id).await.map(|t| json(StatusCode::OK, &t))
        }
        (&Method::DELETE, ["torrents", id]) => {
            let delete_data = match query.split('&').find_map(|p| p.strip_prefix("delete_data=")) {
                None | Some("false") => false,
                Some("true") => true,
                Some(_) => return error(StatusCode::BAD_REQUEST, "delete_data is true or false"),
            };
            node.remove(id, delete_data).await.map(|removed| {
                let removed: Vec<String> =
                    removed.iter().map(|p| p.display().to_string()).collect();
                json(StatusCode::OK, &serde_json::json!({ "removed_files": removed }))
            })
        }
        (
            _,
            ["node"]
            | ["events"]
            | ["metrics"]
            | ["torrents"]
            | ["torrents", _]
            | ["torrents", _, "pause" | "resume"],
        ) => {
            let allow = match parts.as_slice() {
                ["torrents"] => "GET, POST",
                ["torrents", _] => "GET, DELETE",
                ["torrents", _, _] => "POST",
                _ => "GET",
            };
            let mut r =
                error(StatusCode::METHOD_NOT_ALLOWED, &format!("{method} is not allowed here"));
            r.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
            return r;
        }
        _ => return error(StatusCode::NOT_FOUND, &format!("no such API call: /api/v1/{route}")),
    };
    result.unwrap_or_else(|e| {
        let status = match &e {
            NodeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            NodeError::NotFound(_) => StatusCode::NOT_FOUND,
            NodeError::Conflict(_) => StatusCode::CONFLICT,
            NodeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error(status, &e.to_string())
    })
}

/// The body of an add.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRequest {
    magnet: Option<String>,
    url: Option<String>,
    /// A `.torrent` file, base64.
    torrent: Option<String>,
    save_dir: Option<std::path::PathBuf>,
    #[serde(default)]
    paused: bool,
}

async fn add<B>(node: &Arc<Node>, body: B) -> Result<Reply, NodeError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // A body announced too large is refused before a byte of it is read.
    let too_large = format!("the body is larger than {MAX_ADD_BODY} bytes");
    if body.size_hint().lower() > MAX_ADD_BODY as u64 {
        return Ok(error(StatusCode::PAYLOAD_TOO_LARGE, &too_large));
    }
    let bytes = match Limited::new(body, MAX_ADD_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Ok(error(StatusCode::PAYLOAD_TOO_LARGE, &too_large))
        }
        Err(e) => return Err(NodeError::BadRequest(format!("the body did not arrive: {e}"))),
    };
    let req: AddRequest = serde_json::from_slice(&bytes)
        .map_err(|e| NodeError::BadRequest(format!("the body is not an add request: {e}")))?;
    let given = [req.magnet.is_some(), req.url.is_some(), req.torrent.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(NodeError::BadRequest(
            "give exactly one of \"magnet\", \"url\" and \"torrent\"".into(),
        ));
    }
    let source = if let Some(m) = req.magnet {
        AddSource::Magnet(
            Magnet::parse(&m).map_err(|e| NodeError::BadRequest(format!("magnet: {e}")))?,
        )
    } else if let Some(url) = req.url {
        AddSource::Torrent(Box::new(fetch_torrent(&url).await?))
    } else {
        let text = req.torrent.unwrap_or_default();
        let raw = data_encoding::BASE64
            .decode(text.as_bytes())
            .map_err(|e| NodeError::BadRequest(format!("\"torrent\" is not base64: {e}")))?;
        AddSource::Torrent(Box::new(parse_torrent(&raw)?))
    };
    let view = node.add(source, req.save_dir, req.paused)?;
    Ok(json(StatusCode::CREATED, &view))
}

fn parse_torrent(raw: &[u8]) -> Result<Metainfo, NodeError> {
    Metainfo::from_bytes(raw)
        .map_err(|e| NodeError::BadRequest(format!("not a valid .torrent file: {e}")))
}

/// Fetches a `.torrent` file over HTTP(S), at most [`MAX_TORRENT_SIZE`] bytes.
async fn fetch_torrent(url: &str) -> Result<Metainfo, NodeError> {
    let bad = |e: String| NodeError::BadRequest(format!("{url}: {e}"));
    let config =
        http_layer::ClientConfig { max_response_bytes: MAX_TORRENT_SIZE, ..Default::default() };
    let client = http_layer::HttpClient::new(config).map_err(|e| bad(e.to_string()))?;
    let fetched = client.get(url).await.map_err(|e| bad(e.to_string()))?;
    if !fetched.status().is_success() {
        return Err(bad(format!("the server answered {}", fetched.status())));
    }
    let raw = fetched.bytes().await.map_err(|e| bad(e.to_string()))?;
    parse_torrent(&raw)
}

/// Constant-time equality (the token must not leak through timing).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Reply {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error(status: StatusCode, message: &str) -> Reply {
    json(status, &serde_json::json!({ "error": message }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert!(!same(b"", b"a"));
    }
}
