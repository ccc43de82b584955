//! The CDN over real loopback servers: an origin, edges (pull-through LRU caches with single
//! flight) and the router (manifests with BaseURLs in order of preference, redirects, health
//! probes, bounded loads, DNS answered to the real `dig`). No ffmpeg: the movies are fake
//! directories holding the 2-rung test manifest and a few byte files as segments.

mod raw_http;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use stream::edge::{EdgeConfig, EdgeServer, Health};
use stream::mpd::Mpd;
use stream::origin::OriginServer;
use stream::proto::placement::{zipf_movies, Placement, BALANCE};
use stream::router::{EdgeSpec, RouterConfig, RouterServer, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use raw_http::{raw, Reply};

const MANIFEST: &str = include_str!("data/ffmpeg-2rung.mpd");

/// One HTTP/1.1 request with `Connection: close`; `extra` are more header lines.
async fn request(addr: SocketAddr, method: &str, path: &str, extra: &[&str]) -> Reply {
    let mut head = format!("{method} {path} HTTP/1.1");
    for h in extra {
        head.push_str("\r\n");
        head.push_str(h);
    }
    raw(addr, &head).await
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[]).await
}

/// Distinct bytes for one segment file.
fn segment_bytes(movie: usize, n: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + movie * 7 + n * 13) % 251) as u8).collect()
}

/// `movie1..=movieN` under `dir`: the test manifest, init files and 3 segments of `seg_len`.
fn write_movies(dir: &Path, movies: usize, seg_len: usize) {
    for m in 1..=movies {
        let d = dir.join(format!("movie{m}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("manifest.mpd"), MANIFEST).unwrap();
        for rep in 0..3 {
            std::fs::write(d.join(format!("init-{rep}.mp4")), format!("init {m} {rep}")).unwrap();
            for n in 1..=3 {
                let name = format!("chunk-{rep}-{n:05}.m4s");
                std::fs::write(d.join(name), segment_bytes(m, rep * 10 + n, seg_len)).unwrap();
            }
        }
    }
}

async fn start_origin(movies: usize, seg_len: usize) -> (SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    write_movies(dir.path(), movies, seg_len);
    let server = OriginServer::bind("127.0.0.1:0".parse().unwrap(), dir.path()).await.unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.run());
    (addr, dir)
}

async fn start_edge(
    listen: SocketAddr,
    origin: SocketAddr,
    cache: u64,
    name: &str,
) -> (SocketAddr, JoinHandle<std::io::Result<()>>) {
    start_edge_with(listen, EdgeConfig::new(format!("http://{origin}"), cache, name)).await
}

async fn start_edge_with(
    listen: SocketAddr,
    config: EdgeConfig,
) -> (SocketAddr, JoinHandle<std::io::Result<()>>) {
    let server = EdgeServer::bind(listen, config).await.unwrap();
    let addr = server.local_addr();
    (addr, tokio::spawn(server.run()))
}

async fn health(edge: SocketAddr) -> Health {
    let r = get(edge, "/health").await;
    assert_eq!(r.status, 200);
    serde_json::from_slice(&r.body).unwrap()
}

async fn status(router: SocketAddr) -> Status {
    let r = get(router, "/status").await;
    assert_eq!(r.status, 200);
    serde_json::from_slice(&r.body).unwrap()
}

/// Three edges on 127.0.0.1, .2 and .3 (distinct addresses, so DNS answers tell them apart).
async fn start_edges(
    origin: SocketAddr,
) -> Vec<(String, SocketAddr, JoinHandle<std::io::Result<()>>)> {
    let mut edges = Vec::new();
    for i in 1..=3u8 {
        let listen = SocketAddr::from(([127, 0, 0, i], 0));
        let name = format!("edge{i}");
        let (addr, task) = start_edge(listen, origin, 1 << 20, &name).await;
        edges.push((name, addr, task));
    }
    edges
}

fn specs(edges: &[(String, SocketAddr, JoinHandle<std::io::Result<()>>)]) -> Vec<EdgeSpec> {
    edges
        .iter()
        .map(|(name, addr, _)| EdgeSpec { name: name.clone(), url: format!("http://{addr}") })
        .collect()
}

async fn start_router(
    edges: Vec<EdgeSpec>,
    probe: Duration,
    dns: bool,
) -> (SocketAddr, Option<SocketAddr>) {
    let mut config = RouterConfig::new(edges);
    config.probe_interval = probe;
    let dns = dns.then(|| "127.0.0.1:0".parse().unwrap());
    let server = RouterServer::bind("127.0.0.1:0".parse().unwrap(), dns, config).await.unwrap();
    let (http, dns) = (server.local_addr(), server.dns_addr());
    tokio::spawn(server.run());
    (http, dns)
}

/// Polls `/status` until `pred` holds (a safety deadline of 20 s, never a timing claim);
/// returns how long it took.
async fn wait_status(router: SocketAddr, pred: impl Fn(&Status) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if pred(&status(router).await) {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(20), "router state never reached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The BaseURLs of a routed manifest.
fn base_urls(body: &[u8]) -> Vec<String> {
    Mpd::parse_bytes(body).unwrap().base_urls
}

#[tokio::test]
async fn edge_serves_the_origins_bytes_then_hits_its_cache() {
    let (origin, dir) = start_origin(1, 5000).await;
    let (edge, _task) = start_edge("127.0.0.1:0".parse().unwrap(), origin, 1 << 20, "e1").await;
    let path = "/movie1/chunk-1-00002.m4s";
    let want = std::fs::read(dir.path().join("movie1/chunk-1-00002.m4s")).unwrap();

    let first = get(edge, path).await;
    assert_eq!((first.status, first.header("x-cache")), (200, Some("MISS")));
    assert_eq!(first.body, want);
    assert_eq!(first.body, get(origin, path).await.body, "same bytes as the origin");
    assert_eq!(first.header("content-type"), Some("video/iso.segment"));
    assert_eq!(first.header("access-control-allow-origin"), Some("*"));
    let second = get(edge, path).await;
    assert_eq!((second.status, second.header("x-cache")), (200, Some("HIT")));
    assert_eq!(second.body, want);
    let h = health(edge).await;
    assert_eq!((h.name.as_str(), h.origin_fetches, h.hits, h.entries), ("e1", 1, 1, 1));

    // Ranges over the cached bytes, with the origin's semantics.
    let part = request(edge, "GET", path, &["Range: bytes=100-199"]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), Some("bytes 100-199/5000"));
    assert_eq!(part.body, want[100..200]);
    let past = request(edge, "GET", path, &["Range: bytes=5000-"]).await;
    assert_eq!((past.status, past.header("content-range")), (416, Some("bytes */5000")));
    let head = request(edge, "HEAD", path, &[]).await;
    assert_eq!((head.status, head.header("content-length")), (200, Some("5000")));
    assert!(head.body.is_empty());
    assert_eq!(health(edge).await.origin_fetches, 1, "all of these were hits");

    // 404 passes through (and is not cached); traversal never reaches the origin.
    assert_eq!(get(edge, "/movie1/nope.m4s").await.status, 404);
    assert_eq!(get(edge, "/movie1/nope.m4s").await.status, 404);
    assert_eq!(get(edge, "/movie1/../../etc/passwd").await.status, 404);
    assert_eq!(health(edge).await.origin_fetches, 3);

    // An origin that is down: 502.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let (orphan, _t) = start_edge("127.0.0.1:0".parse().unwrap(), dead, 1 << 20, "e2").await;
    assert_eq!(get(orphan, path).await.status, 502);
}

/// An origin that waits before answering, so concurrent misses overlap the fetch; it counts
/// the requests it gets.
async fn slow_origin(body: Vec<u8>, delay: Duration) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                tokio::time::sleep(delay).await;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                s.write_all(head.as_bytes()).await.unwrap();
                s.write_all(&body).await.unwrap();
            });
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_misses_cost_one_origin_fetch() {
    let want = segment_bytes(1, 1, 100_000);
    let (origin, origin_requests) = slow_origin(want.clone(), Duration::from_millis(300)).await;
    let (edge, _task) = start_edge("127.0.0.1:0".parse().unwrap(), origin, 1 << 20, "e").await;
    let clients: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { get(edge, "/movie1/chunk-0-00001.m4s").await }))
        .collect();
    let mut misses = 0;
    for c in clients {
        let r = c.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, want);
        misses += usize::from(r.header("x-cache") == Some("MISS"));
    }
    assert_eq!(origin_requests.load(Ordering::SeqCst), 1, "one origin connection");
    assert_eq!(health(edge).await.origin_fetches, 1);
    assert!(misses >= 2, "requests joined the fetch in flight ({misses} misses)");
}

#[tokio::test]
async fn lru_evicts_under_a_small_cache() {
    let (origin, _dir) = start_origin(1, 1000).await;
    // Room for two 1000-byte segments.
    let (edge, _task) = start_edge("127.0.0.1:0".parse().unwrap(), origin, 2500, "e").await;
    for n in 1..=3 {
        assert_eq!(get(edge, &format!("/movie1/chunk-0-{n:05}.m4s")).await.status, 200);
    }
    let h = health(edge).await;
    assert_eq!((h.origin_fetches, h.entries, h.bytes, h.evictions), (3, 2, 2000, 1));
    let again = get(edge, "/movie1/chunk-0-00003.m4s").await;
    assert_eq!(again.header("x-cache"), Some("HIT"), "the newest stays");
    let evicted = get(edge, "/movie1/chunk-0-00001.m4s").await;
    assert_eq!(evicted.header("x-cache"), Some("MISS"), "the oldest was evicted");
    assert_eq!(evicted.body, segment_bytes(1, 1, 1000));
    let h = health(edge).await;
    assert_eq!((h.origin_fetches, h.evictions, h.capacity), (4, 2, 2500));
}

#[tokio::test]
async fn router_answers_manifests_in_preference_order_and_redirects() {
    let (origin, _dir) = start_origin(2, 100).await;
    let edges = start_edges(origin).await;
    let names: Vec<String> = edges.iter().map(|e| e.0.clone()).collect();
    let (router, _) = start_router(specs(&edges), Duration::from_secs(1), false).await;
    let ring = Placement::new(&names, BALANCE);

    let r = get(router, "/play/movie1/manifest.mpd").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/dash+xml"));
    let chosen = r.header("x-swarmcast-edge").unwrap().to_string();
    let url_of = |name: &str| {
        let e = edges.iter().find(|e| e.0 == name).unwrap();
        format!("http://{}/movie1/", e.1)
    };
    let pref: Vec<&str> = ring.preference("movie1").iter().map(|&i| names[i].as_str()).collect();
    assert_eq!(chosen, pref[0], "the first viewer goes to the movie's first edge");
    let want: Vec<String> = pref.iter().map(|n| url_of(n)).collect();
    assert_eq!(base_urls(&r.body), want, "chosen first, then the ring's order");
    // The rest of the manifest is the origin's.
    let mpd = Mpd::parse_bytes(&r.body).unwrap();
    assert_eq!(mpd.representations().count(), 3);

    // A second viewer of the same movie: capacity ⌊1.25·2/3⌋ = 0 → ⌈2/3⌉ = 1, so the next edge.
    let r2 = get(router, "/play/movie1/manifest.mpd").await;
    let second = r2.header("x-swarmcast-edge").unwrap();
    assert_eq!(second, pref[1]);
    let urls = base_urls(&r2.body);
    assert_eq!(urls[0], url_of(second), "the chosen edge first");
    assert_eq!(urls.len(), 3);

    let redirect = get(router, "/route/movie1").await;
    assert_eq!(redirect.status, 302);
    let to = redirect.header("x-swarmcast-edge").unwrap();
    let location = redirect.header("location").unwrap();
    let edge_addr = edges.iter().find(|e| e.0 == to).unwrap().1;
    assert_eq!(location, format!("http://{edge_addr}/movie1/manifest.mpd"));
    assert_eq!(get(edge_addr, "/movie1/manifest.mpd").await.body, MANIFEST.as_bytes());

    for unknown in ["/play/nosuchmovie/manifest.mpd", "/route/nosuchmovie", "/play/../manifest.mpd"]
    {
        assert_eq!(get(router, unknown).await.status, 404, "{unknown}");
    }
    let s = status(router).await;
    assert_eq!(s.edges.iter().map(|e| e.load).sum::<u32>(), 3, "404s are not counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_edge_leaves_rotation_and_returns() {
    let (origin, _dir) = start_origin(1, 100).await;
    let mut edges = start_edges(origin).await;
    let names: Vec<String> = edges.iter().map(|e| e.0.clone()).collect();
    let probe = Duration::from_millis(200);
    let (router, _) = start_router(specs(&edges), probe, false).await;
    let first = Placement::new(&names, BALANCE).preference("movie1")[0];
    let (victim, victim_addr) = (names[first].clone(), edges[first].1);
    wait_status(router, |s| s.edges.iter().all(|e| e.healthy)).await;

    // Kill it: its listener and connections are dropped with the task.
    let task = &mut edges[first].2;
    task.abort();
    let _ = task.await;
    let gone = wait_status(router, |s| !s.edges[first].healthy).await;
    eprintln!("dead edge out of rotation after {gone:?} (probe interval {probe:?})");
    for _ in 0..6 {
        let r = get(router, "/play/movie1/manifest.mpd").await;
        assert_eq!(r.status, 200);
        assert_ne!(r.header("x-swarmcast-edge"), Some(victim.as_str()));
        let urls = base_urls(&r.body);
        assert_eq!(urls.len(), 2);
        assert!(urls.iter().all(|u| !u.contains(&victim_addr.to_string())), "{urls:?}");
    }

    // Restart it on the same address: it comes back.
    let (again, task) = start_edge(victim_addr, origin, 1 << 20, &victim).await;
    assert_eq!(again, victim_addr);
    edges[first].2 = task;
    let back = wait_status(router, |s| s.edges[first].healthy).await;
    eprintln!("restarted edge back in rotation after {back:?}");
    let r = get(router, "/play/movie1/manifest.mpd").await;
    assert_eq!(base_urls(&r.body).len(), 3);
    assert!(base_urls(&r.body).iter().any(|u| u.contains(&victim_addr.to_string())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_zipf_viewers_stay_within_the_load_bound() {
    let (origin, _dir) = start_origin(10, 100).await;
    let edges = start_edges(origin).await;
    let (router, _) = start_router(specs(&edges), Duration::from_secs(1), false).await;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let viewers = zipf_movies(&mut rng, 10, 0.8, 50);
    for movie in &viewers {
        let r = get(router, &format!("/play/{movie}/manifest.mpd")).await;
        assert_eq!(r.status, 200, "{movie}");
    }
    let s = status(router).await;
    let loads: Vec<u32> = s.edges.iter().map(|e| e.load).collect();
    let total: u32 = loads.iter().sum();
    assert_eq!(total, 50);
    let max = *loads.iter().max().unwrap();
    let ratio = f64::from(max) * 3.0 / f64::from(total);
    eprintln!("loads {loads:?}, max/avg {ratio:.3}");
    assert!(ratio <= 1.25, "{loads:?}: max/avg {ratio}");
    assert!((s.imbalance - ratio).abs() < 1e-9);
}

/// Runs the real `dig` (Debian package dnsutils; scripts/install-deps.sh installs it).
fn dig(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+time=5", "+tries=1"])
        .args(args)
        .output()
        .expect("the `dig` command is missing: install Debian package dnsutils (scripts/install-deps.sh)");
    assert!(out.status.success(), "dig failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_gets_the_chosen_edges_address() {
    let (origin, _dir) = start_origin(1, 100).await;
    let edges = start_edges(origin).await;
    let names: Vec<String> = edges.iter().map(|e| e.0.clone()).collect();
    let (router, dns) = start_router(specs(&edges), Duration::from_secs(1), true).await;
    let port = dns.unwrap().port();
    let pref = Placement::new(&names, BALANCE).preference("movie1");

    let answer =
        tokio::task::spawn_blocking(move || dig(port, &["movie1.cdn.test", "A", "+short"]))
            .await
            .unwrap();
    assert_eq!(answer.trim(), edges[pref[0]].1.ip().to_string(), "the movie's first edge");
    let s = status(router).await;
    assert_eq!(s.edges.iter().map(|e| e.load).sum::<u32>(), 0, "a lookup is not a viewer");

    let full =
        tokio::task::spawn_blocking(move || dig(port, &["MOVIE1.cdn.test", "A"])).await.unwrap();
    assert!(full.contains("status: NOERROR") && full.contains(" aa"), "{full}");
    assert!(full.contains("IN\tA\t127.0.0."), "{full}");

    let unknown = tokio::task::spawn_blocking(move || dig(port, &["nosuchmovie.cdn.test", "A"]))
        .await
        .unwrap();
    assert!(unknown.contains("status: NXDOMAIN"), "{unknown}");
    let other =
        tokio::task::spawn_blocking(move || dig(port, &["movie1.example.org", "A"])).await.unwrap();
    assert!(other.contains("status: REFUSED"), "{other}");
    let aaaa =
        tokio::task::spawn_blocking(move || dig(port, &["movie1.cdn.test", "AAAA"])).await.unwrap();
    assert!(aaaa.contains("status: NOERROR") && aaaa.contains("ANSWER: 0"), "{aaaa}");
}

#[tokio::test]
async fn three_spellings_of_one_segment_are_one_cache_entry_and_one_origin_fetch() {
    let (origin, dir) = start_origin(1, 5000).await;
    let (edge, _task) = start_edge("127.0.0.1:0".parse().unwrap(), origin, 1 << 20, "e").await;
    let want = std::fs::read(dir.path().join("movie1/chunk-0-00001.m4s")).unwrap();
    for path in
        ["/movie1/chunk-0-00001.m4s", "//movie1/chunk-0-00001.m4s", "/movie1/%63hunk-0-00001.m4s"]
    {
        let r = get(edge, path).await;
        assert_eq!((r.status, &r.body), (200, &want), "{path}");
        assert_eq!(get(origin, path).await.body, want, "the origin reads {path} the same way");
    }
    let h = health(edge).await;
    assert_eq!((h.origin_fetches, h.entries, h.hits), (1, 1, 2), "{h:?}");
    // Paths the shared rule refuses cost neither a fetch nor an entry, on either server.
    for bad in ["/movie1/%2e%2e/movie1/chunk-0-00001.m4s", "/movie1/..%5cx", "/%ff", "/~x/a"] {
        assert_eq!(get(edge, bad).await.status, 404, "{bad}");
        assert_eq!(get(origin, bad).await.status, 404, "{bad}");
    }
    assert_eq!(health(edge).await.origin_fetches, 1);
}

/// An origin that answers each request after `delay` and records the most requests it had in
/// progress at once.
async fn counting_origin(delay: Duration) -> (SocketAddr, Arc<AtomicU64>, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (now, max) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (now2, max2) = (now.clone(), max.clone());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let (now, max) = (now2.clone(), max2.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let in_progress = now.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(in_progress, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                let line = String::from_utf8_lossy(&got).lines().next().unwrap_or("").to_string();
                let body = line.as_bytes().to_vec();
                // Out of progress before the edge can have the whole answer and start another.
                now.fetch_sub(1, Ordering::SeqCst);
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    (addr, now, max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_distinct_misses_run_at_most_the_cap_of_origin_fetches_at_once() {
    let (origin, _, max_in_progress) = counting_origin(Duration::from_millis(100)).await;
    let mut config = EdgeConfig::new(format!("http://{origin}"), 1 << 20, "e");
    config.max_origin_fetches = 4;
    let (edge, _task) = start_edge_with("127.0.0.1:0".parse().unwrap(), config).await;
    let clients: Vec<_> = (0..30)
        .map(|i| tokio::spawn(async move { get(edge, &format!("/m/seg-{i}.m4s")).await }))
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        let r = c.await.unwrap();
        assert_eq!(r.status, 200, "every request is answered, the later ones after waiting");
        assert_eq!(r.body, format!("GET /m/seg-{i}.m4s HTTP/1.1").as_bytes());
    }
    assert_eq!(health(edge).await.origin_fetches, 30);
    let max = max_in_progress.load(Ordering::SeqCst);
    assert!(max <= 4, "the origin had {max} fetches in progress at once (cap 4)");
}

/// Declares a `len`-byte body, sends `first` bytes of it, signals `sent`, then writes the rest
/// once `go` fires; reports through `done` whether the edge hung up before the last byte.
async fn stalling_origin(
    len: usize,
    first: usize,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Receiver<()>,
    Arc<tokio::sync::Notify>,
    tokio::sync::oneshot::Receiver<bool>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (sent_tx, sent_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let go = Arc::new(tokio::sync::Notify::new());
    let go2 = go.clone();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let mut written = 0;
        while written < first {
            s.write_all(&chunk).await.unwrap();
            written += chunk.len();
        }
        let _ = sent_tx.send(());
        go2.notified().await;
        let mut hung_up = false;
        while written < len {
            if s.write_all(&chunk).await.is_err() {
                hung_up = true;
                break;
            }
            written += chunk.len();
        }
        let _ = done_tx.send(hung_up);
    });
    (addr, sent_rx, go, done_rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_whose_only_client_left_is_abandoned_not_buffered_to_the_end() {
    const LEN: usize = 60 << 20;
    let (origin, sent, go, done) = stalling_origin(LEN, 1 << 20).await;
    let (edge, _task) = start_edge("127.0.0.1:0".parse().unwrap(), origin, 256 << 20, "e").await;
    let mut client = tokio::net::TcpStream::connect(edge).await.unwrap();
    client
        .write_all(b"GET /m/big.m4s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    sent.await.unwrap();
    drop(client);
    // Once the edge has noticed, it drops the fetch; then let the origin try to send the rest.
    let start = Instant::now();
    while health(edge).await.abandoned_fetches == 0 {
        assert!(start.elapsed() < Duration::from_secs(20), "the fetch was never abandoned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    go.notify_one();
    assert!(done.await.unwrap(), "the edge hung up on the origin before the last byte");
    let h = health(edge).await;
    assert_eq!((h.origin_fetches, h.abandoned_fetches, h.entries, h.bytes), (1, 1, 0, 0));
}

/// One DNS query over UDP; the parsed answer.
async fn dns_query(server: SocketAddr, name: &str, kind: RecordType) -> Message {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut q = Message::new();
    q.set_id(99).add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    socket.send_to(&q.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(20), socket.recv_from(&mut buf))
        .await
        .expect("a DNS answer")
        .unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_flood_places_nobody_and_manifests_are_fetched_once_per_movie() {
    let (origin, _dir) = start_origin(1, 100).await;
    let edges = start_edges(origin).await;
    let (router, dns) = start_router(specs(&edges), Duration::from_secs(60), true).await;
    let dns = dns.unwrap();
    for _ in 0..100 {
        let a = dns_query(dns, "movie1.cdn.test.", RecordType::A).await;
        assert_eq!((a.response_code(), a.answers().len()), (ResponseCode::NoError, 1));
    }
    for _ in 0..3 {
        let a = dns_query(dns, "nosuchmovie.cdn.test.", RecordType::A).await;
        assert_eq!(a.response_code(), ResponseCode::NXDomain);
    }
    let s = status(router).await;
    assert_eq!(s.edges.iter().map(|e| e.load).sum::<u32>(), 0, "lookups are not viewers");
    for _ in 0..20 {
        assert_eq!(get(router, "/play/movie1/manifest.mpd").await.status, 200);
    }
    let s = status(router).await;
    assert_eq!(s.edges.iter().map(|e| e.load).sum::<u32>(), 20, "each manifest is a viewer");
    // 123 lookups and viewers of two movies: one manifest request reached an edge per movie.
    let mut edge_lookups = 0;
    for (_, addr, _) in &edges {
        let h = health(*addr).await;
        edge_lookups += h.hits + h.misses;
    }
    assert_eq!(edge_lookups, 2, "one fetch for movie1, one 404 for nosuchmovie");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_pointed_straight_at_an_origin_routes_viewers_and_lookups() {
    let (origin, _dir) = start_origin(1, 100).await;
    let spec = EdgeSpec { name: "origin".into(), url: format!("http://{origin}") };
    let (router, dns) = start_router(vec![spec], Duration::from_millis(50), true).await;
    wait_status(router, |s| s.probe_rounds >= 2).await;
    assert!(status(router).await.edges[0].healthy, "the origin answers the health probe");
    let r = get(router, "/play/movie1/manifest.mpd").await;
    assert_eq!(r.status, 200);
    assert_eq!(base_urls(&r.body), [format!("http://{origin}/movie1/")]);
    let a = dns_query(dns.unwrap(), "movie1.cdn.test.", RecordType::A).await;
    assert_eq!(a.response_code(), ResponseCode::NoError);
    let ips: Vec<String> = a.answers().iter().map(|r| r.data().to_string()).collect();
    assert_eq!(ips, ["127.0.0.1"]);
}

/// A stand-in edge that answers `/health` at once and any other path with the test manifest
/// after `delay`, counting those manifest requests.
async fn slow_manifest_edge(delay: Duration) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let body = if got.starts_with(b"GET /health ") {
                    "{}"
                } else {
                    counter.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    MANIFEST
                };
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_first_viewers_cost_one_manifest_fetch() {
    let (edge, manifest_requests) = slow_manifest_edge(Duration::from_millis(300)).await;
    let spec = EdgeSpec { name: "e".into(), url: format!("http://{edge}") };
    let (router, _) = start_router(vec![spec], Duration::from_secs(60), false).await;
    let viewers: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { get(router, "/play/movie1/manifest.mpd").await }))
        .collect();
    for v in viewers {
        let r = v.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(base_urls(&r.body), [format!("http://{edge}/movie1/")]);
    }
    assert_eq!(manifest_requests.load(Ordering::SeqCst), 1, "one fetch for 20 viewers");
    let s = status(router).await;
    assert_eq!((s.edges[0].load, s.manifest_fetches), (20, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_fetching_manifests_in_a_loop_counts_as_at_most_64_viewers() {
    let (origin, _dir) = start_origin(1, 100).await;
    let edges = start_edges(origin).await;
    let (router, _) = start_router(specs(&edges), Duration::from_secs(60), false).await;
    for _ in 0..200 {
        let r = get(router, "/play/movie1/manifest.mpd").await;
        assert_eq!(r.status, 200, "every request is still answered");
        assert_eq!(base_urls(&r.body).len(), 3);
    }
    let s = status(router).await;
    assert_eq!(s.edges.iter().map(|e| e.load).sum::<u32>(), 64, "{:?}", s.edges);
}
