//! Issue 15's viewers helping each other, with real processes: `stream package` (ffmpeg) writes
//! the movie and its torrent, `stream origin` serves them, and two `play --p2p` viewers watch:
//! the first from the CDN (nobody else has the movie), the second from the first, found through
//! the tracker the movie's torrent names.

mod harness;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use harness::{assert_same_file, free_port, require, swarmcast, wait_for, Proc};

fn answers(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// Starts `swarmcast play URL --p2p` as viewer `name`: segments in `dir/NAME`, report in
/// `dir/NAME.json`, connecting to `peers`; `extra` arguments last. Returns it and its address.
fn viewer(
    url: &str,
    dir: &Path,
    name: &str,
    peers: &[SocketAddr],
    extra: &[&str],
) -> (Proc, SocketAddr) {
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut c = swarmcast();
    // "from peers" lines say when a whole file came from the swarm.
    c.env("SWARMCAST_LOG", "swarmcast::p2p_play=debug");
    c.args(["play", url, "--p2p", "--p2p-listen", &listen.to_string()])
        .arg("--p2p-dir")
        .arg(dir.join(name))
        .arg("--json")
        .arg(dir.join(format!("{name}.json")))
        .args(extra);
    for p in peers {
        c.args(["--p2p-peer", &p.to_string()]);
    }
    (Proc::spawn(name, c, dir), listen)
}

fn report(path: &Path) -> serde_json::Value {
    let json = std::fs::read_to_string(path).expect("player json");
    serde_json::from_str(&json).expect("player json parses")
}

#[test]
fn a_second_viewer_finds_the_first_through_the_movies_tracker_and_gets_the_movie_from_it() {
    require("ffmpeg");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The movie's torrent names a tracker: viewers find each other there, with no address given.
    let tracker: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut c = swarmcast();
    c.args(["tracker", "--listen", &tracker.to_string()]);
    let _tracker = Proc::spawn("tracker", c, dir);
    wait_for("the tracker", Duration::from_secs(30), || answers(tracker));
    let announce = format!("http://{tracker}/announce");
    let (_origin, origin) = movie_at_an_origin(dir, 12, "240p:300k", &["--tracker", &announce]);
    let url = format!("http://{origin}/movie/manifest.mpd");
    assert!(dir.join("movie/movie.torrent").is_file(), "package writes the movie's torrent");

    let (mut a, _) = viewer(&url, dir, "a", &[], &["--speed", "4", "--p2p-stay", "120s"]);
    a.wait_output("report written", Duration::from_secs(120));
    // The second viewer's CDN is a 400 kb/s link, as a real one would be slower than loopback:
    // it starts from the CDN while it joins the swarm (its first segment), then takes the
    // rest from the first viewer.
    let trace = dir.join("400k.trace");
    std::fs::write(&trace, "1 400000\n").unwrap();
    let trace = trace.to_string_lossy().into_owned();
    let (mut b, _) = viewer(&url, dir, "b", &[], &["--speed", "4", "--trace", &trace]);
    let st = b.wait_or(Duration::from_secs(120), &[&a]);
    assert!(st.success(), "the second viewer failed\n{}", b.output());
    a.kill();

    let (ra, rb) = (report(&dir.join("a.json")), report(&dir.join("b.json")));
    assert_eq!(ra["peer_bytes"], 0, "nobody had the movie before the first viewer");
    assert_eq!(rb["segments"].as_array().map(Vec::len), Some(6), "{rb}");
    let offload = rb["offload"].as_f64().unwrap();
    // Its first segment comes from the CDN while it finds the first viewer and joins.
    assert!(offload >= 0.5, "the second viewer took {offload} of its bytes from the first\n{rb}");
    assert_eq!(rb["stalls"], 0, "{rb}");
    // What the second viewer played is the movie's bytes, segment for segment.
    let checked = assert_played_the_movie(dir, "b");
    assert!(checked >= 14, "video and audio: 6 segments and an init each; checked {checked}");
}

#[test]
fn a_viewer_on_a_slow_link_plays_the_top_rung_the_viewer_ahead_played_from_it() {
    require("ffmpeg");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_origin, origin) = movie_at_an_origin(dir, 24, "240p:300k,480p:1200k", &[]);
    let url = format!("http://{origin}/movie/manifest.mpd");

    // The first viewer's link (loopback) carries the top rung.
    let (mut a, a_addr) = viewer(&url, dir, "a", &[], &["--speed", "4", "--p2p-stay", "120s"]);
    a.wait_output("report written", Duration::from_secs(120));
    // The second one's CDN link is 600 kb/s: its rule alone would play the 300k rung (1200k
    // and the audio do not fit). The first viewer has the top rung: it plays that, from it.
    let trace = dir.join("600k.trace");
    std::fs::write(&trace, "1 600000\n").unwrap();
    let trace = trace.to_string_lossy().into_owned();
    let (mut b, _) = viewer(&url, dir, "b", &[a_addr], &["--speed", "4", "--trace", &trace]);
    let st = b.wait_or(Duration::from_secs(120), &[&a]);
    assert!(st.success(), "the second viewer failed\n{}", b.output());
    a.kill();

    let (ra, rb) = (report(&dir.join("a.json")), report(&dir.join("b.json")));
    let top = |r: &serde_json::Value| -> Vec<serde_json::Value> {
        let segments = r["segments"].as_array().unwrap().iter();
        segments.filter(|s| s["rep"] == 1).cloned().collect()
    };
    assert!(top(&ra).len() >= 6, "the first viewer played the top rung\n{ra}");
    // Top-rung segments all of whose bytes (video and audio) came from the first viewer.
    let from_peers = top(&rb).into_iter().filter(|s| {
        let whole = s["bytes"].as_u64().unwrap() + s["audio_bytes"].as_u64().unwrap();
        s["peer_bytes"].as_u64() == Some(whole)
    });
    let n = from_peers.count();
    assert!(n >= 4, "the second viewer played {n} top-rung segments from the first\n{rb}");
    assert_eq!(rb["stalls"], 0, "{rb}");
    assert_played_the_movie(dir, "b");
}

/// Packages a clip of `secs` seconds (2 s segments, `ladder`; `extra` arguments to
/// `stream package`) with ffmpeg into `dir/movie` and starts an origin serving `dir`; returns it
/// and its address (the MPD is `/movie/manifest.mpd` there).
fn movie_at_an_origin(dir: &Path, secs: u32, ladder: &str, extra: &[&str]) -> (Proc, SocketAddr) {
    let mut c = swarmcast();
    c.args(["stream", "package", "--test-source", &format!("{secs}s"), "--segment", "2s"])
        .args(["--ladder", ladder])
        .args(extra)
        .arg("--out")
        .arg(dir.join("movie"));
    harness::run_ok(c);
    let origin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut c = swarmcast();
    c.args(["stream", "origin", "--dir"]).arg(dir).args(["--listen", &origin.to_string()]);
    let proc = Proc::spawn("origin", c, dir);
    wait_for("the origin", Duration::from_secs(30), || answers(origin));
    (proc, origin)
}

/// Packages a clip of `secs` seconds (2 s segments, one 300 kb/s rung) with ffmpeg into
/// `dir/movie`, and starts its origin and one edge in front of it; returns the MPD's URL at
/// the edge.
fn movie_behind_an_edge(dir: &Path, secs: u32) -> (Proc, Proc, String) {
    let (origin_proc, origin) = movie_at_an_origin(dir, secs, "240p:300k", &[]);
    let edge: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut c = swarmcast();
    c.args(["stream", "edge", "--origin", &format!("http://{origin}")]).args([
        "--listen",
        &edge.to_string(),
        "--cache-size",
        "64M",
        "--name",
        "e1",
    ]);
    let edge_proc = Proc::spawn("edge", c, dir);
    wait_for("the edge", Duration::from_secs(30), || answers(edge));
    (origin_proc, edge_proc, format!("http://{edge}/movie/manifest.mpd"))
}

/// Every segment a viewer played (video and audio, and their init segments) is stored in its
/// folder (which it serves from) as the movie's bytes, byte for byte.
fn assert_played_the_movie(dir: &Path, viewer: &str) -> usize {
    let r = report(&dir.join(format!("{viewer}.json")));
    let audio = r["audio"].as_str().map(str::to_string);
    let mut names = std::collections::BTreeSet::new();
    for s in r["segments"].as_array().unwrap() {
        let number = s["index"].as_u64().unwrap() + 1;
        let reps = [s["rep_id"].as_str().map(str::to_string), audio.clone()];
        for id in reps.into_iter().flatten() {
            names.insert(format!("chunk-{id}-{number:05}.m4s"));
            names.insert(format!("init-{id}.mp4"));
        }
    }
    for name in &names {
        assert_same_file(&dir.join("movie").join(name), &dir.join(viewer).join("movie").join(name));
    }
    names.len()
}

#[test]
fn four_viewers_of_one_edge_serve_each_other_and_a_viewer_whose_peers_vanish_finishes() {
    require("ffmpeg");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 12 segments: enough that peers vanishing mid-movie leave some it never asked them for.
    let (_origin, _edge, url) = movie_behind_an_edge(dir, 24);
    // A 1 Mb/s link to the CDN: each viewer's first segment comes from it while it joins.
    let trace = dir.join("1m.trace");
    std::fs::write(&trace, "1 1000000\n").unwrap();
    let trace = trace.to_string_lossy().into_owned();
    // Four viewers, each joining the ones before while those still play or serve.
    let mut viewers: Vec<(Proc, SocketAddr)> = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let peers: Vec<SocketAddr> = viewers.iter().map(|(_, addr)| *addr).collect();
        let extra = ["--speed", "4", "--p2p-stay", "300s", "--trace", &trace];
        let (mut p, addr) = viewer(&url, dir, name, &peers, &extra);
        p.wait_output("report written", Duration::from_secs(120));
        viewers.push((p, addr));
    }
    for name in ["a", "b", "c", "d"] {
        let r = report(&dir.join(format!("{name}.json")));
        assert_eq!(r["segments"].as_array().map(Vec::len), Some(12), "{name}: {r}");
        assert_eq!(r["stalls"], 0, "{name}: {r}");
        let offload = r["offload"].as_f64().unwrap();
        if name == "a" {
            assert_eq!(offload, 0.0, "nobody had the movie before the first viewer: {r}");
        } else {
            assert!(offload > 0.0, "{name} took nothing from the viewers before it: {r}");
        }
        // What each stored (and served) is the movie.
        assert!(assert_played_the_movie(dir, name) >= 8, "{name}: video, audio and inits");
    }

    // A fifth viewer joins all four; they vanish once a first file of its came from them: it
    // finishes from the edge alone.
    let peers: Vec<SocketAddr> = viewers.iter().map(|(_, addr)| *addr).collect();
    // 60 kB/s from peers: about two seconds a segment (video and audio, ~108 kB), so when the
    // peers vanish, what they prefetched cannot cover the segments left.
    let extra = ["--speed", "1", "--p2p-download-limit", "60k", "--trace", &trace];
    let (mut e, _) = viewer(&url, dir, "e", &peers, &extra);
    e.wait_output("from peers", Duration::from_secs(60));
    for (p, _) in &mut viewers {
        p.kill();
    }
    // Segments done once the peers are gone (counted after the kills: at most more than when
    // they began).
    let seen = e.output();
    let played_before = (1..=12).filter(|k| seen.contains(&format!("segment {k}/12 "))).count();
    assert!(played_before <= 7, "the peers should vanish mid-movie\n{seen}");
    let st = e.wait(Duration::from_secs(120));
    assert!(st.success(), "the viewer whose peers vanished failed\n{}", e.output());
    let r = report(&dir.join("e.json"));
    assert_eq!(r["segments"].as_array().map(Vec::len), Some(12), "{r}");
    assert_eq!(r["stalls"], 0, "{r}");
    assert!(r["peer_bytes"].as_u64().unwrap() > 0, "it had peers before they vanished: {r}");
    // Peers were only ever asked for the segment in flight and the three after it: those
    // after that came from the edge alone.
    let segments = r["segments"].as_array().unwrap();
    for s in &segments[played_before + 4..] {
        assert_eq!(s["peer_bytes"], 0, "after the peers vanished, the edge served it: {s}\n{r}");
    }
    assert!(assert_played_the_movie(dir, "e") >= 14, "video, audio and inits");
}

/// The page's JSON status line from `web/e2e.mjs`, or a panic saying what went wrong.
fn play_in_chromium(url: &str, dir: &Path) -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).is_file(),
        "{chromium} is missing: install the Debian package `chromium` (scripts/install-deps.sh)"
    );
    assert!(
        root.join("web/node_modules/playwright-core/package.json").is_file(),
        "web/node_modules/playwright-core is missing: run `npm ci --prefix web` (scripts/test.sh does)"
    );
    let mut node = std::process::Command::new("node");
    node.arg(root.join("web/e2e.mjs")).arg(url).arg("90").env("CHROMIUM", &chromium);
    let mut node = Proc::spawn("e2e-mjs", node, dir);
    // e2e.mjs bounds its own wait to 90 s; the browser's start is bounded here.
    let status = node.wait(Duration::from_secs(180));
    let out = node.stdout_text();
    eprintln!("e2e.mjs exit {status}: {out}{}", node.output());
    serde_json::from_str(out.trim()).unwrap_or_else(|e| {
        panic!("e2e.mjs printed no status JSON ({e}): {out}\n{}", node.output())
    })
}

fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

#[test]
fn chromium_plays_through_the_local_node_which_takes_segments_from_a_peer() {
    require("ffmpeg");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_origin, _edge, url) = movie_behind_an_edge(dir, 12);
    // A first viewer, headless, has the movie and stays to serve it.
    let (mut a, a_addr) = viewer(&url, dir, "a", &[], &["--speed", "4", "--p2p-stay", "300s"]);
    a.wait_output("report written", Duration::from_secs(120));

    // The second viewer's browser plays through its local node.
    let local: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut c = swarmcast();
    c.args(["play", &url, "--p2p", "--p2p-peer", &a_addr.to_string(), "--serve"])
        .arg(local.to_string());
    let mut node = Proc::spawn("local-node", c, dir);
    node.wait_output("/player in a browser", Duration::from_secs(60));
    let status = play_in_chromium(&format!("http://{local}/player"), dir);
    assert_eq!(status["errors"], serde_json::json!([]), "{status}");
    assert_eq!(status["ended"], true, "{status}");
    let current = status["currentTime"].as_f64().expect("currentTime");
    assert!(current >= 11.5, "stopped at {current} s of 12: {status}");
    let video = status["segments"].as_array().expect("segments").iter();
    assert!(video.filter(|s| s["mediaType"] == "video").count() >= 6, "{status}");

    let health = get_json(local, "/health");
    let peer = health["peer_bytes"].as_u64().unwrap();
    assert!(peer > 0, "the local node took nothing from the first viewer: {health}");
    eprintln!("local node: {health}");
    node.kill();
    a.kill();
}
