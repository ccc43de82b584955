//! The engine's own limits, played against a real [`Session`] over loopback:
//!
//! - a full disk (a 10 MiB tmpfs for a 32 MiB torrent) stops the download at once with the OS
//!   error, and no peer is blamed for it (no hash failure, no ban);
//! - a peer that floods REQUESTs and never reads is disconnected, and the seed's memory grows
//!   by at most [`FLOOD_RSS_BOUND`] meanwhile;
//! - under an upload limit, a block cancelled while it waits for the limit's tokens is never
//!   sent.
//!
//! The tmpfs test mounts a file system, so it needs root (CI runs as root); without root it
//! fails and says so, it does not skip. Every wait is bounded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use torrent::metainfo::{create, CreateOptions, Metainfo};
use torrent::proto::wire::{Handshake, Message, HANDSHAKE_LEN};
use torrent::session::{Role, Session, SessionConfig};
use torrent::PeerId;

/// How much the seed's resident memory may grow while one peer floods it with requests.
const FLOOD_RSS_BOUND: u64 = 8 << 20;

fn make_torrent(dir: &Path, name: &str, size: usize, piece: u32) -> Metainfo {
    let mut data = vec![0u8; size];
    ChaCha8Rng::seed_from_u64(size as u64).fill_bytes(&mut data);
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    let opts = CreateOptions { piece_size: Some(piece), ..CreateOptions::default() };
    let raw = create(&path, &opts, &mut |_, _| {}).unwrap();
    Metainfo::from_bytes(&raw).unwrap()
}

fn config(peers: Vec<SocketAddr>) -> SessionConfig {
    SessionConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        peers,
        use_trackers: false,
        rng_seed: Some(3),
        seed_when_done: true,
        ..SessionConfig::default()
    }
}

/// A tmpfs mounted for the test's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("cannot run mount");
        assert!(
            out.status.success(),
            "this test mounts a {size} tmpfs to fill a disk and needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_download_and_blames_no_peer() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let src = tempfile::tempdir().unwrap();
    let meta = make_torrent(src.path(), "big.bin", 32 << 20, 256 * 1024);
    let seed = Session::start(meta.clone(), src.path().to_path_buf(), Role::Seed, config(vec![]))
        .await
        .unwrap();
    let mount_point = tempfile::tempdir().unwrap();
    let _tmpfs = Tmpfs::mount(mount_point.path(), "10M");
    let mut cfg = config(vec![seed.local_addr()]);
    cfg.seed_when_done = false;
    cfg.rng_seed = Some(4); // another peer id than the seed's
    let leech =
        Session::start(meta, mount_point.path().to_path_buf(), Role::Download, cfg).await.unwrap();
    let result = timeout(Duration::from_secs(120), leech.wait_finished())
        .await
        .expect("the download neither failed nor finished: a full disk must stop it");
    let err = result.expect_err("32 MiB cannot fit in 10 MiB").to_string();
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("resume"), "the error says what to do next: {err}");
    let stats = leech.stats();
    assert_eq!(stats.hash_failures.load(Ordering::Relaxed), 0, "a failed write was hashed");
    assert_eq!(stats.banned.load(Ordering::Relaxed), 0, "the seed was blamed for our disk");
    assert!(!stats.complete.load(Ordering::Relaxed));
    leech.shutdown().await;
    seed.shutdown().await;
}

/// A raw peer of `meta` at `addr`: handshaken, and INTERESTED sent.
async fn interested_peer(addr: SocketAddr, meta: &Metainfo) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(&Handshake::new(meta.info_hash, PeerId([7; 20])).encode()).await.unwrap();
    let mut theirs = [0u8; HANDSHAKE_LEN];
    conn.read_exact(&mut theirs).await.unwrap();
    let mut out = bytes::BytesMut::new();
    Message::Interested.encode(&mut out);
    conn.write_all(&out).await.unwrap();
    conn
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_requests_and_never_reads_is_cut_off_with_bounded_memory() {
    let src = tempfile::tempdir().unwrap();
    let meta = make_torrent(src.path(), "small.bin", 4 << 20, 64 * 1024);
    let seed = Session::start(meta.clone(), src.path().to_path_buf(), Role::Seed, config(vec![]))
        .await
        .unwrap();
    let mut conn = interested_peer(seed.local_addr(), &meta).await;
    // Let the session settle before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_bytes();
    // One million valid requests (17 MB on the wire), never reading a byte of the answers.
    let pieces = meta.info.num_pieces();
    let mut sent = 0u32;
    let flood = async {
        let mut batch = bytes::BytesMut::new();
        while sent < 1_000_000 {
            batch.clear();
            for _ in 0..4096 {
                let piece = sent % pieces;
                let offset = (sent / pieces % 4) * 16384;
                Message::Request { piece, offset, length: 16384 }.encode(&mut batch);
                sent += 1;
            }
            if conn.write_all(&batch).await.is_err() {
                return true; // the seed closed the connection
            }
        }
        false
    };
    let closed_while_flooding =
        timeout(Duration::from_secs(60), flood).await.expect("the flood is bounded");
    let after_flood = rss_bytes();
    // Bounded wait for the seed to drop the peer if the flood itself went through.
    for _ in 0..100 {
        if seed.stats().peers.load(Ordering::Relaxed) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peers_left = seed.stats().peers.load(Ordering::Relaxed);
    let growth = after_flood.saturating_sub(before).max(rss_bytes().saturating_sub(before));
    eprintln!(
        "flood: {sent} requests sent, closed while flooding: {closed_while_flooding}, \
         RSS {} -> {} KiB (growth {} KiB), peers left {peers_left}",
        before / 1024,
        after_flood / 1024,
        growth / 1024
    );
    assert_eq!(peers_left, 0, "the seed still serves a peer that does not read");
    assert!(
        growth <= FLOOD_RSS_BOUND,
        "memory grew by {} KiB under a request flood (bound {} KiB)",
        growth / 1024,
        FLOOD_RSS_BOUND / 1024
    );
    drop(conn);
    seed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_handshake_hold_at_most_the_cap() {
    let src = tempfile::tempdir().unwrap();
    let meta = make_torrent(src.path(), "tiny.bin", 256 * 1024, 64 * 1024);
    let seed = Session::start(meta.clone(), src.path().to_path_buf(), Role::Seed, config(vec![]))
        .await
        .unwrap();
    // 200 connections that send nothing: the first MAX_PENDING_HANDSHAKES wait for their
    // handshake (10 s), the rest are closed as soon as they are accepted.
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(seed.local_addr()).await.unwrap());
    }
    // Well within the 10 s handshake timeout, count the connections the seed closed.
    let reads: Vec<_> = silent
        .drain(..)
        .map(|mut conn| {
            tokio::spawn(async move {
                let mut byte = [0u8; 1];
                let read = timeout(Duration::from_secs(3), conn.read(&mut byte)).await;
                matches!(read, Ok(Ok(0)) | Ok(Err(_)))
            })
        })
        .collect();
    let mut closed = 0;
    for r in reads {
        closed += r.await.unwrap() as usize;
    }
    let cap = torrent::session::MAX_PENDING_HANDSHAKES;
    let expected = 200usize.saturating_sub(cap).max(1);
    assert!(
        closed >= expected,
        "{closed} of 200 silent connections were closed, want ≥ {expected}"
    );
    drop(silent);
    seed.shutdown().await;
}

/// Reads messages from `conn` into `buf` until one matches `want` (within 10 s), returning it
/// and every PIECE seen on the way as (piece, offset).
async fn read_until(
    conn: &mut TcpStream,
    buf: &mut bytes::BytesMut,
    pieces: &mut Vec<(u32, u32)>,
    want: impl Fn(&Message) -> bool,
) -> Message {
    let read = async {
        loop {
            while let Some(m) = torrent::proto::wire::decode(buf, 1 << 20).unwrap() {
                if let Message::Piece { piece, offset, .. } = &m {
                    pieces.push((*piece, *offset));
                }
                if want(&m) {
                    return m;
                }
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = conn.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the seed closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    timeout(Duration::from_secs(10), read).await.expect("no such message within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_an_upload_limit_a_cancelled_block_is_never_sent() {
    let src = tempfile::tempdir().unwrap();
    let meta = make_torrent(src.path(), "limited.bin", 1 << 20, 64 * 1024);
    // 32 KiB/s: a 16 KiB block waits half a second for its tokens once the bucket is empty.
    let cfg = SessionConfig { upload_limit: Some(32 * 1024), ..config(vec![]) };
    let seed =
        Session::start(meta.clone(), src.path().to_path_buf(), Role::Seed, cfg).await.unwrap();
    let mut conn = interested_peer(seed.local_addr(), &meta).await;
    let mut out = bytes::BytesMut::new();
    let (mut buf, mut got) = (bytes::BytesMut::new(), Vec::new());
    read_until(&mut conn, &mut buf, &mut got, |m| matches!(m, Message::Unchoke)).await;
    // Empty the bucket: 64 KiB (its capacity) in four blocks of piece 0.
    out.clear();
    for i in 0..4 {
        Message::Request { piece: 0, offset: i * 16384, length: 16384 }.encode(&mut out);
    }
    conn.write_all(&out).await.unwrap();
    read_until(&mut conn, &mut buf, &mut got, |m| {
        matches!(m, Message::Piece { piece: 0, offset: 49152, .. })
    })
    .await;
    // Piece 1's first block, cancelled 100 ms later (its tokens take 500 ms to earn), then its
    // second block.
    out.clear();
    Message::Request { piece: 1, offset: 0, length: 16384 }.encode(&mut out);
    conn.write_all(&out).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    out.clear();
    Message::Cancel { piece: 1, offset: 0, length: 16384 }.encode(&mut out);
    Message::Request { piece: 1, offset: 16384, length: 16384 }.encode(&mut out);
    conn.write_all(&out).await.unwrap();
    read_until(&mut conn, &mut buf, &mut got, |m| {
        matches!(m, Message::Piece { piece: 1, offset: 16384, .. })
    })
    .await;
    assert!(!got.contains(&(1, 0)), "the cancelled block was sent: {got:?}");
    assert_eq!(got.len(), 5, "four blocks of piece 0 and the one not cancelled: {got:?}");
    drop(conn);
    seed.shutdown().await;
}
