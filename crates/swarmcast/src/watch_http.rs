//! `get --stream`: a torrent's files over HTTP while it downloads (rqbit's and Transmission's
//! "stream while downloading"). A request may ask for any bytes (one `Range`, as players seek):
//! the pieces under them, and a few megabytes after, become urgent
//! ([`torrent::session::TorrentReader::read_at`]), and each chunk is sent once its pieces
//! verified. Served on the project's one HTTP layer; the Range parser, the MIME table and the
//! body type are the origin's.
//!
//! Exposure: with a loopback address (the default) only requests whose `Host` names the loopback
//! are answered (a web page elsewhere cannot reach it by DNS rebinding); another address has no
//! authentication, so anyone who reaches it can read the files and steer which pieces come
//! first. Files are served with `nosniff` and a sandboxing CSP: a torrent's `.html` file cannot
//! run script on this origin. At most [`MAX_CONNECTIONS`] connections.
//!
//! Routes: `GET /` lists the files; `GET /files/N` (or `/files/N/anything`, so a player sees a
//! file name) serves file N; `HEAD` answers the same headers; `GET /watch/N` is a page that
//! plays file N in the browser's own `<video>` element (which asks for ranges as it seeks).

use std::io;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use hyper::header::{
    HeaderValue, ACCEPT_RANGES, ALLOW, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_SECURITY_POLICY,
    CONTENT_TYPE, HOST, RANGE, X_CONTENT_TYPE_OPTIONS,
};
use hyper::{Method, Request, Response, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use stream::files::OriginBody;
use stream::origin::{mime_type, parse_range, RangeRequest};
use torrent::session::TorrentReader;

/// Bytes per read from the torrent (and per body chunk).
const CHUNK: u64 = 256 * 1024;
/// Bytes after each chunk asked for ahead of the reader.
const AHEAD_BYTES: u64 = 4 << 20;
/// Chunks read ahead of what the client took.
const DEPTH: usize = 4;
/// Connections open at once (a player needs a few).
pub const MAX_CONNECTIONS: usize = 64;
/// What a file name keeps unencoded in a link: RFC 3986's unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Starts serving `reader`'s files on `listen`; returns the address it listens on. The server
/// runs until the returned task is dropped or aborted.
pub async fn serve(
    reader: TorrentReader,
    listen: SocketAddr,
) -> Result<(SocketAddr, tokio::task::JoinHandle<io::Result<()>>)> {
    let config =
        http_layer::ServerConfig { max_connections: MAX_CONNECTIONS, ..Default::default() };
    let server = http_layer::HttpServer::bind(listen, config)
        .await
        .with_context(|| format!("cannot listen on {listen} for --stream (is the port taken?)"))?;
    let addr = server.local_addr()?;
    let local_only = addr.ip().is_loopback();
    // A player starts at the beginning: until one asks for something else, the first
    // AHEAD_BYTES of the largest file come before the random first pieces.
    let info = reader.info();
    if let Some(f) = info.files.iter().filter(|f| f.length > 0 && !f.pad).max_by_key(|f| f.length) {
        let piece = u64::from(info.piece_length);
        let (first, last) = (f.offset / piece, (f.offset + f.length.min(AHEAD_BYTES) - 1) / piece);
        reader.set_urgent((first..=last).map(|p| p as u32).collect()).await;
    }
    let task =
        tokio::spawn(server.serve(move |req, _peer| answer(reader.clone(), req, local_only)));
    Ok((addr, task))
}

/// Whether a `Host` header names the loopback (with or without a port).
pub fn names_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn answer<B>(
    reader: TorrentReader,
    req: Request<B>,
    local_only: bool,
) -> Response<OriginBody> {
    let host = req.headers().get(HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if local_only && !names_loopback(host) {
        return text(StatusCode::MISDIRECTED_REQUEST, "this server answers loopback names only\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        header(&mut r, ALLOW, "GET, HEAD");
        return r;
    }
    let head = req.method() == Method::HEAD;
    let path = req.uri().path();
    if path == "/" {
        return index(&reader);
    }
    if let Some(n) = path.strip_prefix("/watch/") {
        return watch_page(&reader, n);
    }
    let Some(rest) = path.strip_prefix("/files/") else {
        return text(StatusCode::NOT_FOUND, "no such page: try /\n");
    };
    let number = rest.split('/').next().unwrap_or("");
    let info = reader.info();
    let file = number.parse::<usize>().ok().and_then(|i| info.files.get(i));
    let Some(file) = file.filter(|f| !f.pad) else {
        return text(StatusCode::NOT_FOUND, "no such file: the list is at /\n");
    };
    let (offset, len) = (file.offset, file.length);
    let name = file.path.last().cloned().unwrap_or_default();
    let range = req.headers().get(RANGE).and_then(|v| v.to_str().ok());
    let (status, start, end) = match range.map_or(RangeRequest::Full, |r| parse_range(r, len)) {
        RangeRequest::Full => (StatusCode::OK, 0, len.saturating_sub(1)),
        RangeRequest::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        RangeRequest::Unsatisfiable => {
            let mut r = text(StatusCode::RANGE_NOT_SATISFIABLE, "");
            header(&mut r, CONTENT_RANGE, &format!("bytes */{len}"));
            return r;
        }
    };
    let body_len = if len == 0 { 0 } else { end - start + 1 };
    let body = if head || body_len == 0 {
        OriginBody::from("")
    } else {
        let (tx, body) = OriginBody::channel(body_len, DEPTH);
        let piece = u64::from(info.piece_length);
        let file_end = offset + len;
        tokio::spawn(async move {
            let mut at = offset + start;
            let stop = offset + end + 1;
            while at < stop {
                // Never past the piece's end: each chunk goes out as soon as its piece verified.
                let n = (stop - at).min(CHUNK).min(piece - at % piece);
                // Read-ahead within this file only.
                let ahead = ((file_end.min(at + n + AHEAD_BYTES) - (at + n)) / piece) as u32;
                // A client that went away (a seek) stops its reader at once, so the pieces it
                // waited for stop being urgent over the new position's.
                let chunk = tokio::select! {
                    c = reader.read_at(at, n as usize, ahead) => c.map_err(io::Error::other),
                    _ = tx.closed() => return,
                };
                let failed = chunk.is_err();
                // The client went away, or the torrent stopped: nothing more to send.
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
                at += n;
            }
        });
        body
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    header(&mut r, CONTENT_TYPE, mime_type(Path::new(&name)));
    // The bytes and the name come from the torrent: never a page with script on this origin.
    header(&mut r, X_CONTENT_TYPE_OPTIONS, "nosniff");
    header(&mut r, CONTENT_SECURITY_POLICY, "sandbox");
    header(&mut r, ACCEPT_RANGES, "bytes");
    header(&mut r, CONTENT_LENGTH, &body_len.to_string());
    if status == StatusCode::PARTIAL_CONTENT {
        header(&mut r, CONTENT_RANGE, &format!("bytes {start}-{end}/{len}"));
    }
    r
}

/// A page that plays file `n` in a `<video>` element.
fn watch_page(reader: &TorrentReader, n: &str) -> Response<OriginBody> {
    let info = reader.info();
    let file = n.parse::<usize>().ok().and_then(|i| Some((i, info.files.get(i)?)));
    let Some((i, file)) = file.filter(|(_, f)| !f.pad) else {
        return text(StatusCode::NOT_FOUND, "no such file: the list is at /\n");
    };
    let name = file.path.last().map_or("", |s| s.as_str());
    let (title, link) = (stream::mpd::escape(name), link_segment(name));
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>{title}</title>\
         <video id=video src=\"/files/{i}/{link}\" controls autoplay muted \
         style=\"max-width:100%\"></video><p><a href=\"/\">all files</a>\n"
    );
    let mut r = Response::new(OriginBody::Bytes(Some(html.into())));
    header(&mut r, CONTENT_TYPE, "text/html; charset=utf-8");
    r
}

/// The file list, with links.
fn index(reader: &TorrentReader) -> Response<OriginBody> {
    let info = reader.info();
    let mut html = format!(
        "<!doctype html><meta charset=utf-8><title>{0}</title><h1>{0}</h1><ul>",
        stream::mpd::escape(&info.name)
    );
    for (i, f) in info.files.iter().enumerate().filter(|(_, f)| !f.pad) {
        let name = stream::mpd::escape(&f.path.join("/"));
        let last = f.path.last().map_or(String::new(), |s| link_segment(s));
        html.push_str(&format!(
            "<li><a href=\"/files/{i}/{last}\">{name}</a> ({} bytes) \
             <a href=\"/watch/{i}\">watch</a></li>",
            f.length
        ));
    }
    html.push_str("</ul>\n");
    let mut r = Response::new(OriginBody::Bytes(Some(html.into())));
    header(&mut r, CONTENT_TYPE, "text/html; charset=utf-8");
    r
}

/// A file name as one path segment of a link: percent-encoded, so `?`, `#` or `%` cannot change
/// what the link points at; a name a browser would take for a dot segment (`.`, `..`, and
/// their encodings) becomes `file` (the server reads only the number anyway).
fn link_segment(name: &str) -> String {
    if name.bytes().all(|b| b == b'.') {
        return "file".into();
    }
    utf8_percent_encode(name, SEGMENT).to_string()
}

fn text(status: StatusCode, body: &'static str) -> Response<OriginBody> {
    let mut r = Response::new(OriginBody::from(body));
    *r.status_mut() = status;
    header(&mut r, CONTENT_TYPE, "text/plain; charset=utf-8");
    r
}

fn header<B>(r: &mut Response<B>, name: hyper::header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_host_names_pass() {
        for ok in ["127.0.0.1:8080", "localhost", "LOCALHOST:1", "[::1]:80", "[::1]", "127.0.0.2"] {
            assert!(names_loopback(ok), "{ok}");
        }
        for bad in
            ["evil.example", "evil.example:80", "10.0.0.1:80", "", "[::2]:1", "localhost.evil"]
        {
            assert!(!names_loopback(bad), "{bad}");
        }
    }

    #[test]
    fn file_names_become_one_harmless_path_segment() {
        assert_eq!(link_segment("movie 1.mp4"), "movie%201.mp4");
        assert_eq!(link_segment("a?b#c%d\"e'<"), "a%3Fb%23c%25d%22e%27%3C");
        assert_eq!(link_segment(".."), "file");
        assert_eq!(link_segment("."), "file");
        // An encoded dot segment in a name is encoded again, so it stays a name.
        assert_eq!(link_segment("%2e%2e"), "%252e%252e");
        assert_eq!(link_segment("é"), "%C3%A9");
    }
}
