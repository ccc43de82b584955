//! The origin over real loopback TCP with raw HTTP/1.1 requests: Range, 416, MIME types, CORS,
//! HEAD, methods, and path traversal (a secret file next to the content directory must never
//! be served).

mod raw_http;

use std::net::SocketAddr;
use std::time::Duration;

use raw_http::raw;
use stream::origin::OriginServer;

async fn start() -> (SocketAddr, tempfile::TempDir) {
    let top = tempfile::tempdir().unwrap();
    let content = top.path().join("content");
    std::fs::create_dir_all(content.join("movie1")).unwrap();
    std::fs::write(top.path().join("secret.txt"), b"TOP SECRET").unwrap();
    std::fs::write(content.join("movie1/manifest.mpd"), b"<MPD/>").unwrap();
    let segment: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    std::fs::write(content.join("movie1/chunk-0-00001.m4s"), &segment).unwrap();
    std::fs::write(content.join("movie1/init-0.mp4"), b"init").unwrap();
    std::fs::write(content.join("movie1/big.m4s"), big()).unwrap();
    std::fs::write(content.join("index.html"), b"<html></html>").unwrap();
    std::fs::write(content.join("app.js"), b"1").unwrap();
    // A symlink that points outside the content directory.
    std::os::unix::fs::symlink(top.path().join("secret.txt"), content.join("link.txt")).unwrap();
    let server = OriginServer::bind("127.0.0.1:0".parse().unwrap(), &content).await.unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.run());
    (addr, top)
}

#[tokio::test]
async fn get_head_and_mime_types() {
    let (addr, _dir) = start().await;
    let r = raw(addr, "GET /movie1/manifest.mpd HTTP/1.1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"<MPD/>");
    assert_eq!(r.header("content-type"), Some("application/dash+xml"));
    assert_eq!(r.header("content-length"), Some("6"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    for (path, mime) in [
        ("/movie1/chunk-0-00001.m4s", "video/iso.segment"),
        ("/movie1/init-0.mp4", "video/mp4"),
        ("/index.html", "text/html; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
    ] {
        let r = raw(addr, &format!("GET {path} HTTP/1.1")).await;
        assert_eq!((r.status, r.header("content-type")), (200, Some(mime)), "{path}");
    }
    let r = raw(addr, "HEAD /movie1/chunk-0-00001.m4s HTTP/1.1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1000"));
    assert!(r.body.is_empty());
    let r = raw(addr, "POST /movie1/manifest.mpd HTTP/1.1\r\nContent-Length: 0").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"));
}

/// Larger than what the origin reads whole (1 MiB): served streamed, in chunks.
fn big() -> Vec<u8> {
    (0..3 * 1024 * 1024 + 17).map(|i: u32| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn small_bodies_read_whole_and_large_ones_streamed_carry_the_same_bytes() {
    let (addr, _dir) = start().await;
    let want = big();
    let r = raw(addr, "GET /movie1/big.m4s HTTP/1.1").await;
    assert_eq!((r.status, r.body.len()), (200, want.len()));
    assert!(r.body == want, "the streamed body differs from the file");
    // Ranges on both sides of the 1 MiB line.
    for (a, b) in [(1_000_000u32, 2_100_000u32), (5, 1_048_580), (3_000_000, 3_145_744)] {
        let r = raw(addr, &format!("GET /movie1/big.m4s HTTP/1.1\r\nRange: bytes={a}-{b}")).await;
        assert_eq!(r.status, 206, "{a}-{b}");
        assert!(r.body == want[a as usize..=b as usize], "range {a}-{b} differs");
    }
    let r = raw(addr, "HEAD /movie1/big.m4s HTTP/1.1").await;
    assert_eq!(r.header("content-length"), Some(want.len().to_string().as_str()));
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn a_file_changed_on_disk_is_served_changed_once_its_copy_in_memory_expires() {
    let (addr, dir) = start().await;
    let manifest = dir.path().join("content/movie1/manifest.mpd");
    assert_eq!(raw(addr, "GET /movie1/manifest.mpd HTTP/1.1").await.body, b"<MPD/>");
    std::fs::write(&manifest, b"<MPD>v2</MPD>").unwrap();
    tokio::time::sleep(stream::origin::FILE_CACHE_VALID + Duration::from_millis(100)).await;
    let r = raw(addr, "GET /movie1/manifest.mpd HTTP/1.1").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"<MPD>v2</MPD>"[..]));
    // A file removed from disk is gone too.
    std::fs::remove_file(&manifest).unwrap();
    tokio::time::sleep(stream::origin::FILE_CACHE_VALID + Duration::from_millis(100)).await;
    assert_eq!(raw(addr, "GET /movie1/manifest.mpd HTTP/1.1").await.status, 404);
}

#[tokio::test]
async fn ranges_and_416() {
    let (addr, _dir) = start().await;
    let get = |range: &'static str| async move {
        raw(addr, &format!("GET /movie1/chunk-0-00001.m4s HTTP/1.1\r\nRange: {range}")).await
    };
    let r = get("bytes=10-19").await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 10-19/1000"));
    assert_eq!(r.header("content-length"), Some("10"));
    assert_eq!(r.body, (10..20u8).collect::<Vec<_>>());
    let r = get("bytes=990-").await;
    assert_eq!((r.status, r.header("content-range")), (206, Some("bytes 990-999/1000")));
    assert_eq!(r.body.len(), 10);
    let r = get("bytes=-4").await;
    assert_eq!((r.status, r.header("content-range")), (206, Some("bytes 996-999/1000")));
    assert_eq!(r.body, [228, 229, 230, 231]);
    let r = get("bytes=500-5000").await;
    assert_eq!((r.status, r.header("content-range")), (206, Some("bytes 500-999/1000")));
    assert_eq!(r.body.len(), 500);
    let r = get("bytes=1000-").await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */1000"));
    assert!(r.body.is_empty());
    let r = get("bytes=5000-6000").await;
    assert_eq!(r.status, 416);
    // A multi-range or malformed header is ignored: the whole file.
    let r = get("bytes=0-1,5-6").await;
    assert_eq!((r.status, r.body.len()), (200, 1000));
    let r = get("bytes=x-y").await;
    assert_eq!((r.status, r.body.len()), (200, 1000));
}

#[tokio::test]
async fn cors_headers_and_preflight() {
    let (addr, _dir) = start().await;
    let r = raw(addr, "GET /movie1/manifest.mpd HTTP/1.1\r\nOrigin: http://other.test").await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let exposed = r.header("access-control-expose-headers").unwrap();
    assert!(exposed.contains("Content-Length") && exposed.contains("Content-Range"), "{exposed}");
    let r = raw(
        addr,
        "OPTIONS /movie1/chunk-0-00001.m4s HTTP/1.1\r\nOrigin: http://other.test\r\n\
         Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: range",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, HEAD, OPTIONS"));
    assert!(r.header("access-control-allow-headers").unwrap().contains("Range"));
    // Errors carry CORS too, so a browser page can see the status.
    let r = raw(addr, "GET /nope HTTP/1.1").await;
    assert_eq!((r.status, r.header("access-control-allow-origin")), (404, Some("*")));
}

#[tokio::test]
async fn traversal_is_404_and_reads_nothing_outside() {
    let (addr, _dir) = start().await;
    for path in [
        "/../secret.txt",
        "/movie1/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/movie1/%2e%2e/%2e%2e/secret.txt",
        "/..%5csecret.txt",
        "/movie1\\..\\..\\secret.txt",
        "//etc/passwd",
        "/etc/passwd",
        "/link.txt",
        "/movie1",
        "/",
        "http://test/../secret.txt",
    ] {
        let r = raw(addr, &format!("GET {path} HTTP/1.1")).await;
        // hyper itself refuses some of these request lines (400); either way nothing leaks.
        assert!(r.status == 404 || r.status == 400, "{path}: {}", r.status);
        assert!(!String::from_utf8_lossy(&r.body).contains("SECRET"), "{path}");
        assert!(!String::from_utf8_lossy(&r.body).contains("root:"), "{path}");
    }
    // The plain request forms that hyper accepts are all ours to refuse: exactly 404.
    for path in ["/%2e%2e/secret.txt", "/movie1/../../secret.txt", "/link.txt", "//etc/passwd"] {
        let r = raw(addr, &format!("GET {path} HTTP/1.1")).await;
        assert_eq!(r.status, 404, "{path}");
    }
}
