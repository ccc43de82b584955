//! The web player end to end in a real browser: package an 8 s test source as a 2-rung ladder
//! (320x180, 640x360) in 2 s segments with the real ffmpeg, serve it with our origin (in
//! process, dash.js from `web/node_modules`), and run `web/e2e.mjs`, which opens
//! `/player/movie1` in Debian's headless Chromium through playwright-core and prints the page's
//! final JSON status. The video must play to the end with a representation chosen and no error.
//!
//! Needs ffmpeg and chromium (`scripts/install-deps.sh`), node, and `npm ci --prefix web`; a
//! missing one FAILS the test with a message naming what to install (never a skip).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use stream::origin::OriginServer;
use stream::package::{self, PackageOptions, Source};
use stream::web;

/// How long the browser may take to play the 8 s clip to its end.
const PLAY_TIMEOUT_S: u32 = 60;
/// The clip's length.
const CLIP_S: f64 = 8.0;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

/// Fails with what to install when a tool or the npm modules are missing.
fn check_prerequisites(root: &Path) -> PathBuf {
    let chromium = std::env::var_os("CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        chromium.is_file(),
        "{} is missing: install the Debian package `chromium` (scripts/install-deps.sh)",
        chromium.display()
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "cannot run `node` ({node:?}): install the Debian packages `nodejs` and `npm`"
    );
    assert!(
        root.join("web/node_modules/playwright-core/package.json").is_file(),
        "web/node_modules/playwright-core is missing: run `npm ci --prefix web` (scripts/test.sh does)"
    );
    let assets = root.join(web::ASSETS_IN_REPO);
    if let Err(e) = web::check_assets(&assets) {
        panic!("{e}");
    }
    assets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dash_js_plays_the_packaged_stream_to_the_end() {
    let root = repo_root();
    let assets = check_prerequisites(&root);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("movie1");
    let ladder = package::parse_ladder("180p:200k,360p:600k").unwrap();
    let mut opts =
        PackageOptions::new(Source::Test(Duration::from_secs_f64(CLIP_S)), out.clone(), ladder);
    opts.segment = Duration::from_secs(2);
    opts.audio_bitrate = 64_000;
    let report = tokio::task::spawn_blocking(move || package::package(&opts))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("packaging failed (install `ffmpeg`?): {e}"));
    assert_eq!(report.duration_s, CLIP_S);
    let video_ids: Vec<String> =
        report.representations.iter().filter(|r| r.kind == "video").map(|r| r.id.clone()).collect();
    assert_eq!(video_ids.len(), 2);

    let server = OriginServer::bind("127.0.0.1:0".parse().unwrap(), dir.path())
        .await
        .unwrap()
        .with_player_assets(assets);
    let url = format!("http://{}/player/movie1", server.local_addr());
    tokio::spawn(server.run());

    let script = root.join("web/e2e.mjs");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(&script)
            .arg(&url)
            .arg(PLAY_TIMEOUT_S.to_string())
            .output()
            .unwrap_or_else(|e| panic!("cannot run node {}: {e}", script.display()))
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("e2e.mjs exit {}; stderr:\n{stderr}\nfinal status:\n{stdout}", output.status);
    assert_ne!(output.status.code(), Some(2), "the browser driver could not start: {stderr}");
    let status: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("e2e.mjs printed no status JSON ({e}): {stdout}\n{stderr}"));

    assert_eq!(status["errors"], serde_json::json!([]), "{status}");
    assert_eq!(status["ended"], true, "{status}");
    assert_eq!(status["state"], "ended", "{status}");
    let current = status["currentTime"].as_f64().expect("currentTime");
    assert!(current >= CLIP_S - 0.5, "stopped at {current} s of {CLIP_S}: {status}");
    let chosen: Vec<&serde_json::Value> = status["representations"]
        .as_array()
        .expect("representations")
        .iter()
        .filter(|r| r["mediaType"] == "video")
        .collect();
    assert!(!chosen.is_empty(), "no video representation rendered: {status}");
    for r in &chosen {
        let id = r["id"].as_str().expect("representation id");
        assert!(video_ids.iter().any(|v| v == id), "unknown representation {id}: {status}");
        assert!(r["bandwidth"].as_u64().is_some_and(|b| b > 0), "{r}");
    }
    // Every video segment of the clip was fetched, each at a rung of the ladder.
    let segments: Vec<&serde_json::Value> = status["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .filter(|s| s["mediaType"] == "video")
        .collect();
    assert!(segments.len() >= 4, "8 s in 2 s segments: {status}");
    assert!(
        segments.iter().all(|s| s["bytes"].as_u64().is_some_and(|b| b > 0)
            && s["error"].is_null()
            && video_ids.iter().any(|v| Some(v.as_str()) == s["representation"].as_str())),
        "{status}"
    );
}
