//! The headless player against real HTTP servers on loopback: a fake DASH directory (the
//! two-rung ffmpeg MPD with segment files whose sizes follow the declared bandwidths), played
//! to the end, throttled by a trace, failing over from a dead replica and from a replica that
//! dies mid-play. Outcomes only: no timed assertions.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::TokioIo;
use stream::mpd::set_base_urls;
use stream::origin::{respond, ContentDir, OriginServer};
use stream::player::{
    parse_trace, play, play_with, PeerPart, Peers, PeersFuture, PlayEvent, PlayOptions,
};
use stream::proto::abr::RuleKind;
use stream::proto::player::{qoe, PlayReport, PlayerConfig};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;

const MPD: &str = include_str!("data/ffmpeg-2rung.mpd");

/// Writes `movie/manifest.mpd` (lasting `seconds`, with these MPD-level BaseURLs) and every
/// init and media segment it names: 4 s segments of `bandwidth × 4 / 8` bytes.
fn fake_dash(root: &Path, seconds: u32, bases: &[&str]) -> usize {
    let dir = root.join("movie");
    std::fs::create_dir_all(&dir).unwrap();
    let mut mpd = MPD.replace("PT12.0S", &format!("PT{seconds}.0S"));
    if !bases.is_empty() {
        mpd = set_base_urls(&mpd, bases).unwrap();
    }
    std::fs::write(dir.join("manifest.mpd"), mpd).unwrap();
    let segments = (seconds as usize).div_ceil(4);
    for (id, bandwidth) in [(0, 200_000usize), (1, 600_000), (2, 64_000)] {
        std::fs::write(dir.join(format!("init-{id}.mp4")), vec![b'i'; 700]).unwrap();
        for n in 1..=segments {
            let bytes = vec![b's'; bandwidth * 4 / 8];
            std::fs::write(dir.join(format!("chunk-{id}-{n:05}.m4s")), bytes).unwrap();
        }
    }
    segments
}

async fn origin(root: &Path) -> SocketAddr {
    let server = OriginServer::bind("127.0.0.1:0".parse().unwrap(), root).await.unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.run());
    addr
}

/// A port nothing listens on.
async fn dead_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// An origin that answers `serve` requests, then dies: its listener and every connection
/// close (the request that finds it dead gets its connection closed without an answer).
async fn dying_origin(root: &Path, serve: usize) -> SocketAddr {
    let root = Arc::new(ContentDir::new(std::fs::canonicalize(root).unwrap()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let dead = Arc::new(Notify::new());
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                Ok((stream, _)) = listener.accept() => {
                    let (root, count, dead) = (root.clone(), count.clone(), dead.clone());
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let (root, count, dead) = (root.clone(), count.clone(), dead.clone());
                            async move {
                                if count.fetch_add(1, Ordering::SeqCst) >= serve {
                                    dead.notify_one();
                                    return Err(std::io::Error::other("dead"));
                                }
                                let r = respond(&root, req.method(), req.uri().path(), req.headers()).await;
                                Ok::<_, std::io::Error>(r)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                _ = dead.notified() => break,
            }
        }
        // Dropping the listener and the JoinSet closes everything.
        drop(connections);
        Ok::<_, Infallible>(())
    });
    addr
}

fn options(url: String, speed: f64) -> PlayOptions {
    PlayOptions {
        url,
        rule: RuleKind::DEFAULT,
        config: PlayerConfig { speed, ..PlayerConfig::default() },
        trace: None,
        peer_wait_s: stream::player::DEFAULT_PEER_WAIT_S,
        stop_after_s: None,
    }
}

fn check_consistent(report: &PlayReport, segments: usize) {
    let indices: Vec<usize> = report.segments.iter().map(|s| s.index).collect();
    assert_eq!(indices, (0..segments).collect::<Vec<_>>());
    let bitrates: Vec<u64> = report.segments.iter().map(|s| s.bitrate_bps).collect();
    assert_eq!(report.qoe, qoe(&bitrates, report.stall_s));
    let switches = report.segments.windows(2).filter(|w| w[0].rep != w[1].rep).count();
    assert_eq!(report.switches as usize, switches);
    assert_eq!(report.stalls == 0, report.stall_s == 0.0);
    for s in &report.segments {
        assert_eq!(s.bitrate_bps, report.ladder_bps[s.rep]);
        assert_eq!(s.rep_id, report.ladder_ids[s.rep]);
        assert_eq!(s.bytes, s.bitrate_bps * 4 / 8);
        assert_eq!(s.audio_bytes, 64_000 * 4 / 8);
    }
}

#[tokio::test]
async fn plays_to_the_end_fetching_every_segment_once() {
    let dir = tempfile::tempdir().unwrap();
    let n = fake_dash(dir.path(), 12, &[]);
    let addr = origin(dir.path()).await;
    let url = format!("http://{addr}/movie/manifest.mpd");
    let mut events = Vec::new();
    let report = play(&options(url.clone(), 20.0), |e| events.push(e.clone())).await.unwrap();

    assert_eq!(n, 3);
    check_consistent(&report, n);
    assert_eq!(report.url, url);
    assert_eq!(report.ladder_bps, vec![200_000, 600_000]);
    assert_eq!(report.audio.as_deref(), Some("2"));
    assert!(report.startup_s > 0.0);
    assert_eq!((report.failovers, report.abandons), (0, 0));
    // Every segment exactly once: the bytes received are the segments' plus each init once.
    let inits: std::collections::BTreeSet<usize> = report.segments.iter().map(|s| s.rep).collect();
    let media: u64 = report.segments.iter().map(|s| s.bytes + s.audio_bytes).sum();
    assert_eq!(report.bytes_total, media + 700 * (inits.len() as u64 + 1));
    let dir = format!("http://{addr}/movie/");
    assert!(report.segments.iter().all(|s| s.base_url == dir));
    // The observer saw the manifest and every segment.
    assert!(matches!(&events[0], PlayEvent::Manifest { segments: 3, .. }));
    let seen = events.iter().filter(|e| matches!(e, PlayEvent::Segment { .. })).count();
    assert_eq!(seen, n);
    // The JSON holds the fields the issue asks for.
    let json = serde_json::to_value(&report).unwrap();
    for key in ["qoe", "stalls", "stall_s", "startup_s", "switches", "segments", "failovers"] {
        assert!(json.get(key).is_some(), "JSON lacks {key}");
    }
    assert_eq!(json["segments"].as_array().unwrap().len(), n);
    assert_eq!(json["segments"][0]["index"], 0);
}

#[tokio::test]
async fn a_viewer_that_leaves_early_reports_what_it_played() {
    let dir = tempfile::tempdir().unwrap();
    let n = fake_dash(dir.path(), 40, &[]);
    let addr = origin(dir.path()).await;
    let mut opts = options(format!("http://{addr}/movie/manifest.mpd"), 4.0);
    // 400 kb/s: a lowest-rate segment and its audio (132 kB) take 2.6 s of player time, so
    // in 9 s at most four of the ten arrive.
    opts.trace = Some(parse_trace("3600 400000\n").unwrap());
    opts.stop_after_s = Some(9.0);
    let report = play(&opts, |_| {}).await.unwrap();

    assert_eq!(n, 10);
    let got = report.segments.len();
    assert!((1..=4).contains(&got), "{got} segments in 9 s at 400 kb/s");
    check_consistent(&report, got);
    let media: u64 = report.segments.iter().map(|s| s.bytes + s.audio_bytes).sum();
    assert!(report.bytes_total >= media, "what was fetched is counted");
}

#[tokio::test]
async fn a_slow_trace_forces_the_lowest_rate_and_stalls() {
    let dir = tempfile::tempdir().unwrap();
    let n = fake_dash(dir.path(), 20, &[]);
    let addr = origin(dir.path()).await;
    let mut opts = options(format!("http://{addr}/movie/manifest.mpd"), 20.0);
    // 120 kbps: below even the lowest representation plus audio (264 kbps).
    opts.trace = Some(parse_trace("3600 120000\n").unwrap());
    let report = play(&opts, |_| {}).await.unwrap();

    check_consistent(&report, n);
    assert!(report.segments.iter().all(|s| s.rep == 0), "{:?}", report.segments);
    assert!(report.stalls >= 1);
    assert!(report.stall_s > 0.0);
    assert!(report.qoe < 0.0, "stalls cost more than the bitrate earns: {}", report.qoe);
}

#[tokio::test]
async fn a_dead_first_replica_fails_over_to_the_second() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dead_port().await;
    // The live server's port is only known once it listens: bind it on a directory first.
    let server = OriginServer::bind("127.0.0.1:0".parse().unwrap(), dir.path()).await.unwrap();
    let live = server.local_addr();
    tokio::spawn(server.run());
    let second = format!("http://{live}/movie/");
    let n = fake_dash(dir.path(), 12, &[&format!("http://{dead}/movie/"), &second]);
    let mut failover_events = 0;
    let report = play(&options(format!("http://{live}/movie/manifest.mpd"), 20.0), |e| {
        if matches!(e, PlayEvent::Failover { .. }) {
            failover_events += 1;
        }
    })
    .await
    .unwrap();

    check_consistent(&report, n);
    assert!(report.failovers >= 1);
    assert_eq!(failover_events, report.failovers);
    assert!(report.segments.iter().all(|s| s.base_url == second), "{:?}", report.segments);
}

#[tokio::test]
async fn a_replica_that_dies_mid_play_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let content: PathBuf = dir.path().to_path_buf();
    // Two servers over the same directory; the first dies after 6 requests.
    let dying = dying_origin(&content, 6).await;
    let live = origin(&content).await;
    let first = format!("http://{dying}/movie/");
    let second = format!("http://{live}/movie/");
    let n = fake_dash(&content, 40, &[&first, &second]);
    let report =
        play(&options(format!("http://{live}/movie/manifest.mpd"), 20.0), |_| {}).await.unwrap();

    assert_eq!(n, 10);
    check_consistent(&report, n);
    assert!(report.failovers >= 1);
    assert_eq!(report.segments[0].base_url, first);
    assert_eq!(report.segments[n - 1].base_url, second);
}

#[tokio::test]
async fn a_hostile_manifest_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("movie")).unwrap();
    std::fs::write(dir.path().join("movie/big.mpd"), vec![b' '; 2 << 20]).unwrap();
    std::fs::write(dir.path().join("movie/bad.mpd"), b"<html>not a manifest</html>").unwrap();
    let addr = origin(dir.path()).await;
    let err =
        play(&options(format!("http://{addr}/movie/big.mpd"), 1.0), |_| {}).await.unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
    let err =
        play(&options(format!("http://{addr}/movie/bad.mpd"), 1.0), |_| {}).await.unwrap_err();
    assert!(err.to_string().contains("not <MPD>"), "{err}");
    let err =
        play(&options(format!("http://{addr}/movie/none.mpd"), 1.0), |_| {}).await.unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
}

/// A bare HTTP/1.1 server (keep-alive, whole files, 404) whose `slow` paths trickle: 1 kB
/// every 50 ms, a download that cannot finish in time.
async fn trickling_server(root: &Path, slow: fn(&str) -> bool) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let root = root.to_path_buf();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let root = root.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end);
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let Ok(body) = std::fs::read(root.join(path.trim_start_matches('/'))) else {
                        let _ = stream
                            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                            .await;
                        continue;
                    };
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    if stream.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    if slow(&path) {
                        for piece in body.chunks(1000) {
                            if stream.write_all(piece).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    } else if stream.write_all(&body).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_download_that_cannot_finish_is_abandoned_for_a_lower_rate() {
    let dir = tempfile::tempdir().unwrap();
    let n = fake_dash(dir.path(), 40, &[]);
    // From segment number 4 on, the 600k representation trickles; the 200k one stays fast.
    let addr = trickling_server(dir.path(), |path| {
        path.strip_prefix("/movie/chunk-1-")
            .and_then(|rest| rest.strip_suffix(".m4s"))
            .and_then(|number| number.parse::<u32>().ok())
            .is_some_and(|number| number >= 4)
    })
    .await;
    let mut opts = options(format!("http://{addr}/movie/manifest.mpd"), 20.0);
    // The throughput rule climbs to 600k as soon as it has a (fast, loopback) sample.
    opts.rule = RuleKind::Throughput;
    let mut abandon_events = Vec::new();
    let report = play(&opts, |e| {
        if let PlayEvent::Abandon { segment, from_rep, to_rep } = e {
            abandon_events.push((*segment, *from_rep, *to_rep));
        }
    })
    .await
    .unwrap();

    check_consistent(&report, n);
    assert_eq!(report.segments[1].rep, 1, "{:#?}", report.segments);
    assert!(report.abandons >= 1, "{:#?}", report.segments);
    assert_eq!(abandon_events.len(), report.abandons as usize);
    assert!(abandon_events.iter().all(|&(segment, from, to)| segment >= 3 && (from, to) == (1, 0)));
    // From segment index 3 (number 4) on, 600k never completes: every segment is at 200k.
    assert!(report.segments[3..].iter().all(|s| s.rep == 0));
    assert!(report.segments[3].abandoned);
}

/// Peers that deliver the first half of every file (read from the movie's folder) and leave
/// the rest to the CDN; they keep what the player offers them and note what it asked for.
struct HalfPeers {
    dir: PathBuf,
    offered: std::sync::Mutex<Vec<(String, bytes::Bytes)>>,
    asked: std::sync::Mutex<Vec<String>>,
}

impl Peers for HalfPeers {
    fn fetch(&self, path: &str, _deadline: Instant) -> PeersFuture<'_, Option<PeerPart>> {
        self.asked.lock().unwrap().push(path.to_string());
        let file = std::fs::read(self.dir.join(path)).unwrap();
        Box::pin(async move {
            let half = file.len() / 2;
            let mut data = file;
            data[half..].fill(0);
            let len = data.len() as u64;
            Some(PeerPart { data, missing: half as u64..len })
        })
    }

    fn offer(&self, path: &str, data: bytes::Bytes) -> PeersFuture<'_, ()> {
        self.offered.lock().unwrap().push((path.to_string(), data));
        Box::pin(async {})
    }
}

#[tokio::test]
async fn what_peers_miss_of_a_segment_comes_from_the_cdn_by_range() {
    let dir = tempfile::tempdir().unwrap();
    let n = fake_dash(dir.path(), 12, &[]);
    // No period in the bytes (a hash of the offset), so a misplaced range shows.
    let movie = dir.path().join("movie");
    for entry in std::fs::read_dir(&movie).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "m4s" || e == "mp4") {
            let len = std::fs::metadata(&path).unwrap().len() as usize;
            let mix = |i: usize| {
                ((i as u64 ^ len as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
            };
            let bytes: Vec<u8> = (0..len).map(mix).collect();
            std::fs::write(&path, bytes).unwrap();
        }
    }
    let addr = origin(dir.path()).await;
    let url = format!("http://{addr}/movie/manifest.mpd");
    let peers =
        HalfPeers { dir: movie.clone(), offered: Default::default(), asked: Default::default() };
    let report = play_with(&options(url, 20.0), Some(&peers), |_| {}).await.unwrap();
    let offered = peers.offered.lock().unwrap();
    let asked = peers.asked.lock().unwrap();

    check_consistent(&report, n);
    // With nothing buffered the peers are not asked (the first segment comes from the CDN at
    // once); after that, every file is.
    let first = &offered.iter().find(|(p, _)| p.ends_with(".m4s")).unwrap().0;
    assert!(!asked.contains(first), "{first} was asked of the peers at startup");
    assert!(asked.len() + 4 >= offered.len(), "asked {asked:?}");
    // Every file the player took: half from the peers when they were asked, the rest from the
    // origin by Range, put together byte for byte and offered to the peers whole.
    let files: u64 = offered.iter().map(|(_, d)| d.len() as u64).sum();
    assert_eq!(report.bytes_total, files);
    let halves: u64 =
        offered.iter().filter(|(p, _)| asked.contains(p)).map(|(_, d)| d.len() as u64 / 2).sum();
    assert_eq!(report.peer_bytes, halves);
    for (path, data) in offered.iter() {
        assert_eq!(&std::fs::read(movie.join(path)).unwrap()[..], &data[..], "{path}");
    }
    let per_segment: u64 = report.segments.iter().map(|s| s.peer_bytes).sum();
    assert_eq!(per_segment, halves, "each segment's peer bytes add up to the total");
}

/// Peers that claim a part that does not fit the file.
struct LyingPeers;

impl Peers for LyingPeers {
    fn fetch(&self, _path: &str, _deadline: Instant) -> PeersFuture<'_, Option<PeerPart>> {
        Box::pin(async { Some(PeerPart { data: vec![7; 10], missing: 5..20 }) })
    }

    fn offer(&self, _path: &str, _data: bytes::Bytes) -> PeersFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[tokio::test]
async fn a_part_that_does_not_fit_the_file_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let n = fake_dash(dir.path(), 8, &[]);
    let addr = origin(dir.path()).await;
    let url = format!("http://{addr}/movie/manifest.mpd");
    let report = play_with(&options(url, 20.0), Some(&LyingPeers), |_| {}).await.unwrap();
    check_consistent(&report, n);
    assert_eq!(report.peer_bytes, 0);
}

/// An origin that ignores Range headers (answers 200 with the whole file), as some servers do;
/// and the count of requests it answered.
async fn origin_without_ranges(root: &Path) -> (SocketAddr, Arc<AtomicUsize>) {
    let root = Arc::new(ContentDir::new(std::fs::canonicalize(root).unwrap()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (root, count) = (root.clone(), count.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let root = root.clone();
                    count.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let no_range = hyper::HeaderMap::new();
                        let r = respond(&root, req.method(), req.uri().path(), &no_range).await;
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, requests)
}

/// A local node (`play --p2p --serve`: an edge whose origin is the peers first) serving one
/// segment of which the peers have half, in front of an origin that honours Range or not.
async fn through_a_local_node(origin: SocketAddr, movie: &Path, file: &str) -> (Vec<u8>, u64, u64) {
    use stream::edge::{EdgeConfig, EdgeServer, PeerSource};
    let peers = HalfPeers {
        dir: movie.to_path_buf(),
        offered: Default::default(),
        asked: Default::default(),
    };
    let source = PeerSource {
        peers: Arc::new(peers),
        prefix: "/movie/".into(),
        wait: std::time::Duration::from_millis(100),
        assets: movie.join("no-assets"),
        manifest: "manifest.mpd".into(),
    };
    let config = EdgeConfig::new(format!("http://{origin}"), 64 << 20, "local");
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let edge = EdgeServer::bind_with_peers(any, config, Some(source)).await.unwrap();
    let at = edge.local_addr();
    tokio::spawn(edge.run());
    let client = http_layer::HttpClient::new(http_layer::ClientConfig::default()).unwrap();
    let got = client.get(&format!("http://{at}/movie/{file}")).await.unwrap();
    assert_eq!(got.status(), 200);
    let body = got.bytes().await.unwrap().to_vec();
    let health = client.get(&format!("http://{at}/health")).await.unwrap();
    let health: serde_json::Value = serde_json::from_slice(&health.bytes().await.unwrap()).unwrap();
    (body, health["peer_bytes"].as_u64().unwrap(), health["origin_bytes"].as_u64().unwrap())
}

#[tokio::test]
async fn a_local_node_fills_in_by_range_and_takes_a_200_whole_without_fetching_twice() {
    let dir = tempfile::tempdir().unwrap();
    fake_dash(dir.path(), 8, &[]);
    let movie = dir.path().join("movie");
    let file = "chunk-1-00001.m4s";
    let expect = std::fs::read(movie.join(file)).unwrap();
    let len = expect.len() as u64;

    // Range honoured: half from the peers, the other half from the origin.
    let addr = origin(dir.path()).await;
    let (body, peer, origin_bytes) = through_a_local_node(addr, &movie, file).await;
    assert_eq!(body, expect);
    assert_eq!((peer, origin_bytes), (len / 2, len - len / 2));

    // Range ignored: the origin's 200 is the file, taken as it is, with one request.
    let (addr, requests) = origin_without_ranges(dir.path()).await;
    let (body, peer, origin_bytes) = through_a_local_node(addr, &movie, file).await;
    assert_eq!(body, expect);
    assert_eq!((peer, origin_bytes), (0, len));
    assert_eq!(requests.load(Ordering::SeqCst), 1, "the origin was asked once");
}

#[tokio::test]
async fn a_cdn_that_ignores_range_sends_it_all_and_the_peers_part_is_not_counted() {
    let dir = tempfile::tempdir().unwrap();
    let n = fake_dash(dir.path(), 12, &[]);
    let movie = dir.path().join("movie");
    let (addr, _) = origin_without_ranges(dir.path()).await;
    let url = format!("http://{addr}/movie/manifest.mpd");
    let peers =
        HalfPeers { dir: movie.clone(), offered: Default::default(), asked: Default::default() };
    let report = play_with(&options(url, 20.0), Some(&peers), |_| {}).await.unwrap();

    check_consistent(&report, n);
    assert_eq!(report.peer_bytes, 0, "the peers' halves were replaced by the CDN's whole files");
    let offered = peers.offered.lock().unwrap();
    let files: u64 = offered.iter().map(|(_, d)| d.len() as u64).sum();
    assert_eq!(report.bytes_total, files, "every byte counted once");
    for (path, data) in offered.iter() {
        assert_eq!(&std::fs::read(movie.join(path)).unwrap()[..], &data[..], "{path}");
    }
}
