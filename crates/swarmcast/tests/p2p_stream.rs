//! Issue 15's viewers helping each other, with real processes: `stream package` (ffmpeg) writes
//! the movie and its torrent, `stream origin` serves them, and two `play --p2p` viewers watch:
//! the first from the CDN (nobody else has the movie), the second from the first.

mod harness;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use harness::{assert_same_file, free_port, require, swarmcast, wait_for, Proc};

fn answers(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

fn report(path: &Path) -> serde_json::Value {
    let json = std::fs::read_to_string(path).expect("player json");
    serde_json::from_str(&json).expect("player json parses")
}

#[test]
fn a_second_viewer_gets_the_movie_from_the_first_not_from_the_cdn() {
    require("ffmpeg");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut c = swarmcast();
    c.args(["stream", "package", "--test-source", "12s", "--segment", "2s"])
        .args(["--ladder", "240p:300k", "--out"])
        .arg(dir.join("movie"));
    harness::run_ok(c);
    assert!(dir.join("movie/movie.torrent").is_file(), "package writes the movie's torrent");

    let origin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut c = swarmcast();
    c.args(["stream", "origin", "--dir"]).arg(dir).args(["--listen", &origin.to_string()]);
    let _origin = Proc::spawn("origin", c, dir);
    wait_for("the origin", Duration::from_secs(30), || answers(origin));
    let url = format!("http://{origin}/movie/manifest.mpd");

    let viewer = |name: &str, listen: SocketAddr, extra: &[&str]| {
        let mut c = swarmcast();
        c.args(["play", &url, "--speed", "4", "--p2p", "--p2p-listen", &listen.to_string()])
            .arg("--p2p-dir")
            .arg(dir.join(name))
            .arg("--json")
            .arg(dir.join(format!("{name}.json")))
            .args(extra);
        Proc::spawn(name, c, dir)
    };
    let a_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut a = viewer("a", a_addr, &["--p2p-stay", "120s"]);
    a.wait_output("report written", Duration::from_secs(120));
    let b_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut b = viewer("b", b_addr, &["--p2p-peer", &a_addr.to_string()]);
    let st = b.wait_or(Duration::from_secs(120), &[&a]);
    assert!(st.success(), "the second viewer failed\n{}", b.output());
    a.kill();

    let (ra, rb) = (report(&dir.join("a.json")), report(&dir.join("b.json")));
    assert_eq!(ra["peer_bytes"], 0, "nobody had the movie before the first viewer");
    assert_eq!(rb["segments"].as_array().map(Vec::len), Some(6), "{rb}");
    let offload = rb["offload"].as_f64().unwrap();
    assert!(offload >= 0.9, "the second viewer took {offload} of its bytes from the first\n{rb}");
    assert_eq!(rb["stalls"], 0, "{rb}");
    // What the second viewer played is the movie's bytes, segment for segment.
    let mut checked = 0;
    for entry in std::fs::read_dir(dir.join("movie")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        // Segments past the sixth (the audio runs a little longer) are not played.
        let number = name.strip_suffix(".m4s").and_then(|n| n.rsplit('-').next());
        let played = number.and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n <= 6);
        if played || name.starts_with("init-") {
            assert_same_file(&dir.join("movie").join(&name), &dir.join("b/movie").join(&name));
            checked += 1;
        }
    }
    assert!(checked >= 14, "video and audio: 6 segments and an init each; checked {checked}");
}
