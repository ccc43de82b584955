//! `swarmcast up` with real processes on loopback: the node downloads a magnet of a local seed,
//! survives `kill -9` (resuming with what it had verified), pauses, resumes and removes
//! torrents through the CLI; one node per folder; the API refuses callers without the token,
//! other origins and bad input, and keeps working.

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::*;

const SIZE: usize = 6 << 20;

/// Starts `swarmcast up` on `data` and waits for its API file; the process and the API's
/// address and token.
fn start_node(data: &Path, dir: &Path, name: &str) -> (Proc, String, String) {
    let _ = std::fs::remove_file(data.join("api"));
    let mut c = swarmcast();
    c.args(["up", "--listen", "127.0.0.1:0", "--bind", "127.0.0.1", "--data"]).arg(data);
    c.env("SWARMCAST_LOG", "info");
    let mut p = Proc::spawn(name, c, dir);
    wait_for("the node's api file", Duration::from_secs(60), || {
        assert!(p.running(), "the node exited:\n{}", p.output());
        data.join("api").exists()
    });
    let api: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("api")).unwrap()).unwrap();
    let url = api["url"].as_str().unwrap().trim_start_matches("http://").to_string();
    (p, url, api["token"].as_str().unwrap().to_string())
}

/// Runs a client command against the node on `data`; its stdout.
fn cli(data: &Path, args: &[&str]) -> String {
    let mut c = swarmcast();
    c.args(args).arg("--data").arg(data);
    run_ok(c)
}

fn torrents(data: &Path) -> Vec<serde_json::Value> {
    let out = cli(data, &["ls", "--json"]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap().as_array().unwrap().clone()
}

/// One raw HTTP/1.1 exchange; the status and the body.
fn http(addr: &str, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

fn request(addr: &str, method: &str, path: &str, headers: &[&str], body: &str) -> String {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    r
}

/// A file of SIZE random bytes under `dir/seed`, its torrent (64 KiB pieces) and info-hash.
fn seed_content(dir: &Path, name: &str, seed: u64) -> (PathBuf, PathBuf, String) {
    let content = dir.join("seed").join(name);
    random_file(&content, SIZE, seed);
    let torrent = dir.join(format!("{name}.torrent"));
    let made = run_ok({
        let mut c = swarmcast();
        c.arg("create").arg(&content).arg("-o").arg(&torrent).args(["--piece-size", "64k"]);
        c
    });
    let ih = made.split("info-hash ").nth(1).unwrap().split_whitespace().next().unwrap();
    (content, torrent, ih.to_string())
}

#[test]
fn a_node_downloads_a_magnet_resumes_after_kill_9_and_pauses_resumes_and_removes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (content, torrent, ih) = seed_content(dir, "movie.bin", 16);
    let ih = ih.as_str();
    // A seed at 1 MiB/s: the download takes about 6 s, long enough to kill the node mid-way.
    let (_seed, port) = start_seed(&torrent, &content, dir, &["--no-dht", "--upload-limit", "1M"]);
    let data = dir.join("node");
    let (mut node, _, _) = start_node(&data, dir, "node1");

    // One node per folder.
    let mut second = swarmcast();
    second.args(["up", "--listen", "127.0.0.1:0", "--data"]).arg(&data);
    let mut second = Proc::spawn("node-second", second, dir);
    assert!(!second.wait(Duration::from_secs(30)).success());
    assert!(second.output().contains("already running"), "{}", second.output());

    let magnet = format!("magnet:?xt=urn:btih:{ih}&dn=movie.bin&x.pe=127.0.0.1:{port}");
    let out = cli(&data, &["add", &magnet]);
    assert!(out.contains(ih), "{out}");
    let downloaded = data.join("downloads/movie.bin");

    wait_for("a third of the download", Duration::from_secs(60), || {
        let t = &torrents(&data)[0];
        t["progress"].as_f64().unwrap() > 0.3
    });
    node.kill();
    let (mut node, _, _) = start_node(&data, dir, "node2");
    wait_for("the download to complete after the restart", Duration::from_secs(90), || {
        let t = &torrents(&data)[0];
        assert_ne!(t["state"], "failed", "{t}");
        t["state"] == "seeding"
    });
    assert_same_file(&content, &downloaded);
    let t = &torrents(&data)[0];
    let again = t["downloaded"].as_u64().unwrap();
    assert!(
        again < SIZE as u64 * 3 / 4,
        "after the restart {again} of {SIZE} bytes were fetched again: the verified pieces were not kept"
    );
    assert_eq!(t["name"], "movie.bin");

    // Pause, survive a restart paused, resume.
    let short = &ih[..8];
    assert!(cli(&data, &["pause", short]).contains("paused"));
    node.kill();
    let (mut node, _, _) = start_node(&data, dir, "node3");
    assert_eq!(torrents(&data)[0]["state"], "paused");
    cli(&data, &["resume", short]);
    wait_for("seeding after resume", Duration::from_secs(60), || {
        torrents(&data)[0]["state"] == "seeding"
    });
    let info = cli(&data, &["info", short]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["files"][0]["have_bytes"].as_u64(), Some(SIZE as u64));

    // Remove without data keeps the file; add the .torrent again: complete at once.
    cli(&data, &["rm", short]);
    assert!(torrents(&data).is_empty());
    assert_same_file(&content, &downloaded);
    cli(&data, &["add", torrent.to_str().unwrap()]);
    wait_for("seeding the file already there", Duration::from_secs(60), || {
        torrents(&data)[0]["state"] == "seeding"
    });
    assert_eq!(torrents(&data)[0]["downloaded"], 0, "the file on disk was fetched again");
    // Someone's file beside it is never deleted.
    let mine = data.join("downloads/notes.txt");
    std::fs::write(&mine, b"mine").unwrap();
    let out = cli(&data, &["rm", short, "--delete-data"]);
    assert!(out.contains("1 of its files"), "{out}");
    assert!(!downloaded.exists(), "the downloaded file was deleted");
    assert!(!data.join("downloads/.movie.bin.swarmcast").exists(), "its state file too");
    assert_eq!(std::fs::read(&mine).unwrap(), b"mine");

    // With the node stopped, a client says how to start one.
    node.kill();
    let _ = std::fs::remove_file(data.join("api"));
    let mut c = swarmcast();
    c.args(["ls", "--data"]).arg(&data);
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("swarmcast up --data"), "{err}");
}

#[test]
fn the_api_refuses_strangers_other_origins_and_bad_input_and_keeps_working() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("node");
    let (_node, addr, token) = start_node(&data, dir, "node");
    let auth = format!("Authorization: Bearer {token}");
    let list = request(&addr, "GET", "/api/v1/torrents", &[], "");
    let (status, body) = http(&addr, &list);
    assert_eq!(status, 401, "{body}");
    let wrong = request(&addr, "GET", "/api/v1/torrents", &["Authorization: Bearer 00"], "");
    assert_eq!(http(&addr, &wrong).0, 401);
    // A page on another origin, even with the token (it cannot have it, but still).
    // A peer that is not there: the metadata fetch keeps trying.
    let magnet = r#"{"magnet":"magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&x.pe=127.0.0.1:9"}"#;
    let cross = request(
        &addr,
        "POST",
        "/api/v1/torrents",
        &[&auth, "Origin: http://evil.example", "Content-Type: text/plain"],
        magnet,
    );
    let (status, body) = http(&addr, &cross);
    assert_eq!(status, 403, "{body}");
    // DNS rebinding: a foreign name in Host.
    let rebound = format!(
        "GET /api/v1/torrents HTTP/1.1\r\nHost: evil.example\r\n{auth}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(http(&addr, &rebound).0, 421);
    // Bad input: clear errors.
    let cases: Vec<(&str, &str, String, u16)> = vec![
        ("POST", "/api/v1/torrents", "{not json".into(), 400),
        ("POST", "/api/v1/torrents", r#"{"magnet":"magnet:?xt=urn:btih:zz"}"#.into(), 400),
        ("POST", "/api/v1/torrents", r#"{"torrent":"%%%"}"#.into(), 400),
        ("POST", "/api/v1/torrents", r#"{"torrent":"ZGU="}"#.into(), 400),
        ("POST", "/api/v1/torrents", r#"{"magnet":"magnet:?x","url":"http://a/"}"#.into(), 400),
        ("POST", "/api/v1/torrents", r#"{"magnet":"m","extra":1}"#.into(), 400),
        ("GET", "/api/v1/torrents/ffffffffffffffffffffffffffffffffffffffff", String::new(), 404),
        ("GET", "/api/v1/torrents/..%2F..%2Fetc", String::new(), 404),
        ("POST", "/api/v1/torrents/abcd/pause", String::new(), 404),
        ("DELETE", "/api/v1/node", String::new(), 405),
        ("DELETE", "/api/v1/torrents/abcd?delete_data=1", String::new(), 400),
        ("GET", "/api/v1/nothing", String::new(), 404),
    ];
    for (method, path, body, want) in &cases {
        let r = request(&addr, method, path, &[&auth], body);
        let (status, text) = http(&addr, &r);
        assert_eq!(status, *want, "{method} {path} {body}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{text}");
    }
    // A body announced larger than any add is refused without being read.
    let huge = format!(
        "POST /api/v1/torrents HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\nConnection: close\r\n\
         Content-Length: 100000000\r\n\r\n{{"
    );
    assert_eq!(http(&addr, &huge).0, 413);
    // The same magnet twice: the second is a conflict; both calls leave one torrent.
    let add = request(&addr, "POST", "/api/v1/torrents", &[&auth], magnet);
    let (status, body) = http(&addr, &add);
    assert_eq!(status, 201, "{body}");
    assert_eq!(http(&addr, &add).0, 409);
    let list = request(&addr, "GET", "/api/v1/torrents", &[&auth], "");
    let (status, body) = http(&addr, &list);
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(v[0]["state"], "fetching metadata");
    // The event stream from the start has the add; resuming after its id does not repeat it.
    let events = |after: &str| {
        let mut s = TcpStream::connect(&addr).unwrap();
        let r = request(&addr, "GET", &format!("/api/v1/events?after={after}"), &[&auth], "");
        s.write_all(r.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&text).to_string()
    };
    let all = events("0");
    assert!(all.contains("text/event-stream"), "{all}");
    let add_event = all
        .split("\n\n")
        .find(|e| e.contains("\"type\":\"torrent\"") && e.contains("0123456789abcdef"))
        .unwrap_or_else(|| panic!("no event for the add: {all}"));
    let id = add_event.split("id: ").nth(1).unwrap().lines().next().unwrap();
    let later = events(id);
    assert!(!later.contains(&format!("id: {id}\n")), "{later}");
    // Metrics need the token too; the UI's page does not (it holds no data).
    let metrics = request(&addr, "GET", "/metrics", &[], "");
    assert_eq!(http(&addr, &metrics).0, 401);
    let metrics = request(&addr, "GET", "/metrics", &[&auth], "");
    let (status, body) = http(&addr, &metrics);
    assert_eq!(status, 200);
    assert!(body.contains("swarmcast_torrents{state=\"fetching metadata\"} 1"), "{body}");
    let page = request(&addr, "GET", "/", &[], "");
    let (status, body) = http(&addr, &page);
    assert_eq!(status, 200);
    assert!(body.contains("<script type=\"module\" src=\"/app.js\">"), "{body}");
    // Removing it stops the fetch; the node still answers.
    let rm = request(&addr, "DELETE", "/api/v1/torrents/0123", &[&auth], "");
    assert_eq!(http(&addr, &rm).0, 200);
    let (_, body) = http(&addr, &list);
    assert_eq!(body, "[]");
}

/// The web UI in headless Chromium (`web/node-ui.mjs`): a magnet of a local seed pasted into
/// the add form reaches 100% and "seeding" on the page through the event stream, and the file
/// on disk equals the seed's. The screenshot is kept in cargo's scratch space (`ui/`).
#[test]
fn the_web_ui_adds_a_magnet_and_shows_it_complete_from_the_event_stream() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).is_file(),
        "{chromium} is missing: install the Debian package `chromium` (scripts/test.sh does)"
    );
    assert!(
        root.join("web/node_modules/playwright-core/package.json").is_file(),
        "web/node_modules/playwright-core is missing: run `npm ci --prefix web` (scripts/test.sh does)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (content, torrent, ih) = seed_content(dir, "clip.bin", 17);
    // 2 MiB/s: the page has a few seconds of progress to show.
    let (_seed, port) = start_seed(&torrent, &content, dir, &["--no-dht", "--upload-limit", "2M"]);
    let data = dir.join("node");
    let (node, _, _) = start_node(&data, dir, "node");
    let url = node
        .stdout_text()
        .lines()
        .find_map(|l| l.strip_prefix("open ").map(str::to_string))
        .expect("the node prints the UI's address");
    assert!(url.contains("#token="), "{url}");
    let magnet = format!("magnet:?xt=urn:btih:{ih}&dn=clip.bin&x.pe=127.0.0.1:{port}");
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("torrents.png");
    let _ = std::fs::remove_file(&shot);
    let mut js = std::process::Command::new("node");
    js.arg(root.join("web/node-ui.mjs")).arg(&url).arg(&magnet).arg(&shot).arg("90");
    js.env("CHROMIUM", &chromium);
    let mut js = Proc::spawn("node-ui-mjs", js, dir);
    let status = js.wait(Duration::from_secs(180));
    let report = js.stdout_text();
    eprintln!("node-ui.mjs: {report}{}", js.output());
    assert!(status.success(), "the UI did not show the download complete: {report}");
    let r: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(r["name"], "clip.bin");
    assert_same_file(&content, &data.join("downloads/clip.bin"));
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000), "no screenshot");
}
