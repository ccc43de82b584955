//! The web player: the origin's `/player/MOVIE` page and the dash.js file it loads.
//!
//! - `GET /player/MOVIE` (MOVIE: a directory under the content directory that holds
//!   `manifest.mpd`) answers an HTML page ([`player_page`], from `assets/player.html`) that plays
//!   `/MOVIE/manifest.mpd` with dash.js and keeps a JSON status in `<pre id="status">`: `state`,
//!   `playing`, `ended`, `currentTime`, `duration`, `representations` (each
//!   QUALITY_CHANGE_RENDERED), `segments` (each media segment loaded, with its representation's
//!   bandwidth and bytes), `stalls` (BUFFER_EMPTY during playback) and `errors`.
//! - `GET /_player/dash.all.min.js` answers dash.js from the player-assets directory: by default
//!   the npm package installed into the repository's `web/` by `npm ci --prefix web`
//!   ([`default_assets_dir`]); never fetched from the internet. When it is missing both routes
//!   answer 503 with a page that says how to install it.
//!
//! [`respond`] is called by the origin for every path for which [`is_player_path`] is true.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};

use crate::files::{resolve_path, OriginBody};
use crate::request_path::RequestPath;

/// The page template; `/*SWARMCAST_MANIFEST*/` is replaced by the manifest URL as a JS string.
const PLAYER_HTML: &str = include_str!("../assets/player.html");
/// The placeholder in [`PLAYER_HTML`].
const MANIFEST_PLACEHOLDER: &str = "/*SWARMCAST_MANIFEST*/";
/// The only file served under `/_player/`.
pub const DASH_JS: &str = "dash.all.min.js";
/// Environment variable naming the player-assets directory (overridden by `--player-assets`).
pub const ASSETS_ENV: &str = "SWARMCAST_PLAYER_ASSETS";
/// Where `npm ci --prefix web` puts dash.js's browser build, relative to the repository.
pub const ASSETS_IN_REPO: &str = "web/node_modules/dashjs/dist/modern/umd";
/// What to tell someone whose assets directory lacks dash.js.
pub const INSTALL_HINT: &str = "run `npm ci --prefix web` in the Swarmcast repository (needs node and npm), or point --player-assets / SWARMCAST_PLAYER_ASSETS at a directory holding dash.all.min.js";

/// True for the (canonical) paths this module answers: `/player/...` and `/_player/...`.
pub fn is_player_path(path: &str) -> bool {
    path.starts_with("/player/") || path.starts_with("/_player/")
}

/// The player-assets directory: `explicit` (a CLI flag) if given, else `$SWARMCAST_PLAYER_ASSETS`,
/// else [`ASSETS_IN_REPO`] under the repository this binary was built from.
pub fn default_assets_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(dir) = explicit {
        return dir.to_path_buf();
    }
    if let Some(dir) = std::env::var_os(ASSETS_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(ASSETS_IN_REPO)
}

/// Checks that `assets` holds dash.js; the error names the path and how to install it.
pub fn check_assets(assets: &Path) -> Result<PathBuf, String> {
    let file = assets.join(DASH_JS);
    if file.is_file() {
        Ok(file)
    } else {
        Err(format!("the web player's {} is missing: {INSTALL_HINT}", file.display()))
    }
}

/// dash.js from `assets`; `None` when it is missing ([`check_assets`] says why), and an
/// `Err` with a message for a person when it cannot be read.
pub async fn read_dash_js(assets: &Path) -> Option<Result<Bytes, &'static str>> {
    let js = check_assets(assets).ok()?;
    Some(tokio::fs::read(&js).await.map(Bytes::from).map_err(|e| {
        tracing::warn!(path = %js.display(), error = %e, "cannot read dash.js");
        "read error\n"
    }))
}

/// The player page for the manifest at `manifest_url` (a same-origin absolute path).
pub fn player_page(manifest_url: &str) -> String {
    // A JSON string is a JS string literal; escaping `<` keeps `</script>` out of the page.
    let literal =
        serde_json::Value::String(manifest_url.to_owned()).to_string().replace('<', "\\u003c");
    PLAYER_HTML.replacen(MANIFEST_PLACEHOLDER, &literal, 1)
}

/// Answers a `/player/` or `/_player/` request (`path` already put through the shared rule,
/// [`RequestPath::parse`]); `root` is the canonical content directory and `assets` the
/// player-assets directory.
pub async fn respond(
    root: &Path,
    assets: &Path,
    method: &Method,
    path: &RequestPath,
) -> Response<OriginBody> {
    let path = path.as_str();
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n".into());
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let head = method == Method::HEAD;
    if let Some(file) = path.strip_prefix("/_player/") {
        if file != DASH_JS {
            return text(StatusCode::NOT_FOUND, "not found\n".into());
        }
        return match read_dash_js(assets).await {
            None => missing_assets(assets, head),
            Some(Ok(js)) => ok(JS_TYPE, js, head),
            Some(Err(message)) => text(StatusCode::INTERNAL_SERVER_ERROR, message.into()),
        };
    }
    let movie = path.strip_prefix("/player/").unwrap_or("");
    let Some(manifest_url) = manifest_url(root, movie).await else {
        return text(StatusCode::NOT_FOUND, format!("no movie {movie:?} with a manifest.mpd\n"));
    };
    if check_assets(assets).is_err() {
        return missing_assets(assets, head);
    }
    ok(HTML_TYPE, player_page(&manifest_url).into(), head)
}

/// The content types of dash.js and of the player page.
pub const JS_TYPE: &str = "text/javascript; charset=utf-8";
pub const HTML_TYPE: &str = "text/html; charset=utf-8";

/// `/MOVIE/manifest.mpd` with MOVIE (decoded segments) re-encoded, if that file exists
/// safely under `root`.
async fn manifest_url(root: &Path, movie: &str) -> Option<String> {
    if movie.is_empty() {
        return None;
    }
    let manifest = RequestPath::from_segments(movie.split('/').chain(["manifest.mpd"])).ok()?;
    resolve_path(root, &manifest).await?;
    Some(manifest.to_uri_path())
}

fn missing_assets(assets: &Path, head: bool) -> Response<OriginBody> {
    let message = check_assets(assets).err().unwrap_or_default();
    tracing::warn!("{message}");
    let html = format!(
        "<!doctype html><meta charset=\"utf-8\"><title>Swarmcast player: dash.js missing</title>\
         <h1>The web player cannot start</h1><p>{}</p>\n",
        message.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
    );
    let mut r = ok(HTML_TYPE, html.into(), head);
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r
}

fn ok(content_type: &'static str, body: Bytes, head: bool) -> Response<OriginBody> {
    let len = body.len();
    let mut r = Response::new(OriginBody::Bytes((!head).then_some(body)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    r
}

fn text(code: StatusCode, message: String) -> Response<OriginBody> {
    let mut r = ok("text/plain; charset=utf-8", message.into(), false);
    *r.status_mut() = code;
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// The web player's answer to a raw path, as the origin routes it (a path the shared rule
    /// refuses is the origin's 404).
    async fn respond(
        root: &Path,
        assets: &Path,
        method: &Method,
        raw: &str,
    ) -> Response<OriginBody> {
        match RequestPath::parse(raw) {
            Ok(path) => super::respond(root, assets, method, &path).await,
            Err(_) => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }

    async fn body(r: Response<OriginBody>) -> String {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap().join("content");
        std::fs::create_dir_all(root.join("movie 1")).unwrap();
        std::fs::write(root.join("movie 1/manifest.mpd"), b"<MPD/>").unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        let assets = dir.path().join("assets");
        std::fs::create_dir_all(&assets).unwrap();
        (dir, root, assets)
    }

    #[test]
    fn routes_and_page() {
        assert!(is_player_path("/player/m"));
        assert!(is_player_path("/_player/dash.all.min.js"));
        assert!(!is_player_path("/player"));
        assert!(!is_player_path("/m/manifest.mpd"));
        let page = player_page("/a</script>/manifest.mpd");
        assert!(page.contains(r#"const manifest = "/a\u003c/script>/manifest.mpd";"#), "{page}");
        assert!(!page.contains(MANIFEST_PLACEHOLDER));
        assert!(page.contains(r#"<script src="/_player/dash.all.min.js">"#));
        assert_eq!(default_assets_dir(Some(Path::new("/x"))), PathBuf::from("/x"));
    }

    #[tokio::test]
    async fn page_script_and_errors() {
        let (_dir, root, assets) = setup();
        let get = Method::GET;

        // dash.js missing: 503 pages that say what to run.
        let r = respond(&root, &assets, &get, "/player/movie%201").await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body(r).await.contains("npm ci --prefix web"));
        let r = respond(&root, &assets, &get, "/_player/dash.all.min.js").await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);

        std::fs::write(assets.join(DASH_JS), b"var dashjs = {};").unwrap();
        let r = respond(&root, &assets, &get, "/player/movie%201/").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(body(r).await.contains(r#"const manifest = "/movie%201/manifest.mpd";"#));

        let r = respond(&root, &assets, &get, "/_player/dash.all.min.js").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "16");
        assert_eq!(body(r).await, "var dashjs = {};");
        let r = respond(&root, &assets, &Method::HEAD, "/_player/dash.all.min.js").await;
        assert_eq!(
            (r.status(), r.headers()[header::CONTENT_LENGTH].clone()),
            (StatusCode::OK, HeaderValue::from(16))
        );
        assert_eq!(body(r).await, "");

        for bad in [
            "/player/",
            "/player/empty",
            "/player/nope",
            "/player/../content/movie%201",
            "/player/%2e%2e/etc",
            "/_player/../assets/dash.all.min.js",
            "/_player/other.js",
        ] {
            let r = respond(&root, &assets, &get, bad).await;
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{bad}");
        }
        let r = respond(&root, &assets, &Method::POST, "/player/movie%201").await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
