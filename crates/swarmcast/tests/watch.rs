//! `swarmcast get --stream`: a torrent's file served over HTTP while it downloads, with real
//! processes on loopback. The seed is limited to 1 MiB/s, so the 8 MiB download takes 8 s or
//! more; a Range request in the file's second half is answered, with the right bytes, before
//! the download completes. Every wait is bounded.

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use harness::{create_torrent, free_port, random_file, start_seed, swarmcast, Proc};

/// One HTTP/1.1 request on a fresh connection: (status, headers lower-cased, body).
fn http(port: u16, method: &str, path: &str, range: Option<&str>) -> (u16, String, Vec<u8>) {
    http_to(port, &format!("127.0.0.1:{port}"), method, path, range)
}

/// [`http`] with a chosen `Host` header.
fn http_to(
    port: u16,
    host: &str,
    method: &str,
    path: &str,
    range: Option<&str>,
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the stream server");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let range = range.map_or(String::new(), |r| format!("Range: {r}\r\n"));
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{range}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head, raw[split + 4..].to_vec())
}

/// Makes a torrent of `file` (64 KiB pieces), seeds it at `limit` bytes per second, and starts
/// `get --stream` from that seed; returns the seed, the getter and the stream server's port.
fn stream_from_a_slow_seed(
    d: &std::path::Path,
    file: &std::path::Path,
    limit: &str,
) -> (Proc, Proc, u16) {
    let torrent = create_torrent(file, &d.join("m.torrent"), &["--piece-size", "64k"]);
    let (seed, seed_port) = start_seed(&torrent, file, d, &["--upload-limit", limit, "--no-dht"]);
    let port = free_port();
    let mut get = swarmcast();
    get.arg("get")
        .arg(&torrent)
        .arg("-o")
        .arg(d.join("out"))
        .args(["--peer", &format!("127.0.0.1:{seed_port}"), "--no-dht"])
        .args(["--stream", &format!("127.0.0.1:{port}")]);
    let mut get = Proc::spawn("get", get, d);
    get.wait_output("while it downloads", Duration::from_secs(60));
    (seed, get, port)
}

#[test]
fn a_file_streams_over_http_with_ranges_while_it_downloads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("data")).unwrap();
    let data = random_file(&d.join("data/movie.mp4"), 8 << 20, 11);
    let (_seed, mut get, port) = stream_from_a_slow_seed(d, &d.join("data/movie.mp4"), "1M");

    let (status, _, index) = http(port, "GET", "/", None);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&index).contains("/files/0/movie.mp4"));

    // A seek into the second half.
    let (status, head, body) =
        http(port, "GET", "/files/0/movie.mp4", Some("bytes=7000000-7299999"));
    let done = get.output().contains("complete, every piece verified");
    assert_eq!(status, 206, "{head}");
    assert!(head.contains("content-range: bytes 7000000-7299999/8388608"), "{head}");
    assert!(head.contains("content-type: video/mp4"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(body == data[7_000_000..7_300_000], "the range's bytes differ");
    assert!(!done, "the download completed before the range was served:\n{}", get.output());

    // An open-ended range, a range past the end, a HEAD, a file that does not exist.
    let (status, _, body) = http(port, "GET", "/files/0", Some("bytes=8388600-"));
    assert_eq!((status, &body[..]), (206, &data[8_388_600..]));
    let (status, head, _) = http(port, "GET", "/files/0", Some("bytes=9000000-"));
    assert_eq!(status, 416);
    assert!(head.contains("content-range: bytes */8388608"), "{head}");
    let (status, head, body) = http(port, "HEAD", "/files/0", None);
    assert_eq!(status, 200);
    assert!(head.contains("content-length: 8388608") && head.contains("accept-ranges: bytes"));
    assert!(body.is_empty());
    assert_eq!(http(port, "GET", "/files/1", None).0, 404);
    // A page from elsewhere that reached the port by DNS rebinding names its own host.
    assert_eq!(http_to(port, "evil.example", "GET", "/", None).0, 421);
    assert_eq!(http_to(port, "localhost", "GET", "/", None).0, 200);

    // The whole file, from the start, equals the original.
    let (status, _, body) = http(port, "GET", "/files/0", None);
    assert_eq!(status, 200);
    assert!(body == data, "the whole file differs");
    get.wait_output("still streaming", Duration::from_secs(60));
}

/// A real video (ffmpeg: 60 s, H.264, moov first; about 1.35 MB) from a seed limited to
/// 64 KiB/s, so the download takes 20 s or more: headless Chromium plays `/watch/0` from the start, then seeks
/// to the middle and plays on (`web/watch.mjs`), both before the download completes.
#[test]
fn a_video_plays_in_chromium_while_it_downloads_and_a_seek_to_the_middle_plays() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).is_file(),
        "{chromium} is missing: install the Debian package `chromium` (scripts/install-deps.sh)"
    );
    assert!(
        root.join("web/node_modules/playwright-core/package.json").is_file(),
        "web/node_modules/playwright-core is missing: run `npm ci --prefix web` (scripts/test.sh does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("data")).unwrap();
    let movie = d.join("data/movie.mp4");
    let ffmpeg = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "60"])
        .args(["-c:v", "libx264", "-b:v", "400k", "-pix_fmt", "yuv420p", "-g", "50"])
        .args(["-movflags", "+faststart"])
        .arg(&movie)
        .output()
        .expect("cannot run ffmpeg: install the Debian package `ffmpeg`");
    assert!(ffmpeg.status.success(), "ffmpeg failed: {}", String::from_utf8_lossy(&ffmpeg.stderr));
    let (_seed, get, port) = stream_from_a_slow_seed(d, &movie, "64k");

    let mut node = std::process::Command::new("node");
    node.arg(root.join("web/watch.mjs"))
        .arg(format!("http://127.0.0.1:{port}/watch/0"))
        .arg("60")
        .env("CHROMIUM", &chromium);
    let mut node = Proc::spawn("watch-mjs", node, d);
    // watch.mjs bounds its own waits to 60 s; the browser's start is bounded here.
    let status = node.wait(Duration::from_secs(150));
    let done = get.output().contains("complete, every piece verified");
    let report = node.stdout_text();
    eprintln!("watch.mjs: {report}{}", node.output());
    assert!(status.success(), "the video did not play and seek: {report}\n{}", get.output());
    assert!(!done, "the download completed before the seek played:\n{}", get.output());
}
