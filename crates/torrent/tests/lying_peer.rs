//! Hostile peers against a real downloader [`Session`], over loopback.
//!
//! - A *liar* claims (almost) every piece, unchokes at once and answers every REQUEST quickly
//!   with a block whose bytes are wrong. The honest seed is rate-limited, so the liar surely
//!   contributes blocks. The download must still complete with the right bytes, count hash
//!   failures, ban the liar and close its connection.
//! - *Garbage* peers complete the handshake and then send bytes that break the wire protocol or
//!   the session's rules. Each must be disconnected, and the download must complete from the seed.
//!
//! The fake peers are written with the crate's own wire codec; every wait is bounded.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use torrent::metainfo::{create, CreateOptions, Metainfo};
use torrent::proto::wire::{decode, Handshake, Message, DEFAULT_MAX_MESSAGE, HANDSHAKE_LEN};
use torrent::session::{Role, Session, SessionConfig, TorrentHandle};
use torrent::{InfoHash, PeerId};

/// 65 pieces: the last one short (5,000 bytes), and the BITFIELD has 7 spare bits.
const FILE_SIZE: usize = 2 * 1024 * 1024 + 5000;
const PIECE_SIZE: u32 = 32 * 1024;
const NAME: &str = "payload.bin";
/// Upper bound on any whole test scenario.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Random content in `dir/NAME` and its parsed torrent.
fn make_torrent(dir: &Path) -> (Vec<u8>, Metainfo) {
    let mut data = vec![0u8; FILE_SIZE];
    ChaCha8Rng::seed_from_u64(0x5eed).fill_bytes(&mut data);
    let path = dir.join(NAME);
    std::fs::write(&path, &data).unwrap();
    let opts = CreateOptions { piece_size: Some(PIECE_SIZE), ..CreateOptions::default() };
    let raw = create(&path, &opts, &mut |_, _| {}).unwrap();
    let meta = Metainfo::from_bytes(&raw).unwrap();
    assert_eq!(meta.info.piece_length, PIECE_SIZE);
    assert_eq!(meta.info.num_pieces(), (FILE_SIZE as u32).div_ceil(PIECE_SIZE));
    (data, meta)
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// An honest seed, capped at `upload_limit` bytes per second.
async fn start_seed(meta: &Metainfo, dir: &Path, upload_limit: Option<u64>) -> TorrentHandle {
    let config = SessionConfig {
        listen: loopback(),
        use_trackers: false,
        upload_limit,
        rng_seed: Some(1),
        seed_when_done: true,
        ..SessionConfig::default()
    };
    Session::start(meta.clone(), dir.to_path_buf(), Role::Seed, config).await.unwrap()
}

/// A downloader that dials `peers` and keeps running once complete, so that connections still
/// open after completion were not closed by the completion itself.
async fn start_downloader(meta: &Metainfo, dir: &Path, peers: Vec<SocketAddr>) -> TorrentHandle {
    let config = SessionConfig {
        listen: loopback(),
        peers,
        use_trackers: false,
        rng_seed: Some(2),
        seed_when_done: true,
        ..SessionConfig::default()
    };
    Session::start(meta.clone(), dir.to_path_buf(), Role::Download, config).await.unwrap()
}

/// What a fake peer does after the handshake.
#[derive(Clone)]
enum Behaviour {
    /// Sends `bitfield` and UNCHOKE, then answers every REQUEST with the real bytes of the block
    /// except one flipped byte.
    Liar { data: Arc<Vec<u8>>, piece_len: u32, bitfield: Bytes },
    /// Sends these bytes, then only reads (discarding) until the connection ends.
    Garbage(Vec<u8>),
}

/// Counters of a fake peer, shared with its connection tasks.
#[derive(Default)]
struct Counters {
    /// Connections whose handshake we answered.
    accepted: AtomicUsize,
    /// Of those, connections the other side ended (EOF, reset, or a failed write).
    closed: AtomicUsize,
    /// Corrupt blocks sent.
    blocks_sent: AtomicU64,
}

/// A fake peer listening on loopback; its accept loop stops when dropped.
struct FakePeer {
    addr: SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakePeer {
    async fn start(info_hash: InfoHash, tag: u8, behaviour: Behaviour) -> FakePeer {
        let listener = TcpListener::bind(loopback()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let mut id = *b"-FAKE00-000000000000";
        id[19] = b'a' + tag;
        let peer_id = PeerId(id);
        let c = counters.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (c, b) = (c.clone(), behaviour.clone());
                tokio::spawn(async move {
                    if let Some(stream) = handshake(stream, info_hash, peer_id).await {
                        c.accepted.fetch_add(1, Ordering::SeqCst);
                        serve(stream, &b, &c).await;
                        c.closed.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        FakePeer { addr, counters, task }
    }

    fn accepted(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.counters.closed.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until at least `n` of our connections were closed by the other side.
    async fn wait_closed(&self, n: usize, limit: Duration) -> bool {
        timeout(limit, async {
            while self.closed() < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .is_ok()
    }
}

/// Reads the dialer's handshake and answers for the same torrent with no extension bits.
async fn handshake(
    mut stream: TcpStream,
    info_hash: InfoHash,
    peer_id: PeerId,
) -> Option<TcpStream> {
    let mut buf = [0u8; HANDSHAKE_LEN];
    stream.read_exact(&mut buf).await.ok()?;
    let theirs = Handshake::decode(&buf).ok()?;
    if theirs.info_hash != info_hash {
        return None;
    }
    let ours = Handshake { reserved: [0; 8], info_hash, peer_id };
    stream.write_all(&ours.encode()).await.ok()?;
    Some(stream)
}

/// Plays `behaviour` until the other side ends the connection.
async fn serve(mut stream: TcpStream, behaviour: &Behaviour, counters: &Counters) {
    let mut out = BytesMut::new();
    match behaviour {
        Behaviour::Garbage(bytes) => {
            if stream.write_all(bytes).await.is_err() {
                return;
            }
            let mut sink = [0u8; 4096];
            // Ends on EOF (Ok(0)) or a reset.
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    return;
                }
            }
        }
        Behaviour::Liar { data, piece_len, bitfield } => {
            Message::Bitfield(bitfield.clone()).encode(&mut out);
            Message::Unchoke.encode(&mut out);
            if stream.write_all(&out).await.is_err() {
                return;
            }
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                // Answer everything already buffered, then read more.
                out.clear();
                loop {
                    match decode(&mut buf, DEFAULT_MAX_MESSAGE) {
                        Ok(Some(Message::Request { piece, offset, length })) => {
                            let start = piece as usize * *piece_len as usize + offset as usize;
                            let end = start + length as usize;
                            if length == 0 || end > data.len() {
                                continue;
                            }
                            let mut block = data[start..end].to_vec();
                            block[length as usize / 2] ^= 0x5a;
                            Message::Piece { piece, offset, data: Bytes::from(block) }
                                .encode(&mut out);
                            counters.blocks_sent.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        // The session never sends anything we cannot decode.
                        Err(e) => panic!("the session sent bytes the codec refuses: {e}"),
                    }
                }
                if !out.is_empty() && stream.write_all(&out).await.is_err() {
                    return;
                }
                match stream.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        }
    }
}

/// A wire BITFIELD of `n` pieces with every piece but the last set (spare bits clear).
fn all_but_last(n: u32) -> Bytes {
    let mut bytes = vec![0u8; n.div_ceil(8) as usize];
    for p in 0..n - 1 {
        bytes[(p / 8) as usize] |= 0x80 >> (p % 8);
    }
    Bytes::from(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liar_is_banned_and_download_completes_from_the_honest_seed() {
    init_tracing();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (data, meta) = make_torrent(src.path());
    let n = meta.info.num_pieces();

    // The liar does not claim the last piece, so it is not a seed in the downloader's eyes: a
    // downloader drops seeds once complete, and we want any close of the liar's connection to
    // come from the ban.
    let liar = FakePeer::start(
        meta.info_hash,
        0,
        Behaviour::Liar {
            data: Arc::new(data.clone()),
            piece_len: meta.info.piece_length,
            bitfield: all_but_last(n),
        },
    )
    .await;
    let seed = start_seed(&meta, src.path(), Some(512 * 1024)).await;
    let down = start_downloader(&meta, dst.path(), vec![liar.addr, seed.local_addr()]).await;

    timeout(TEST_TIMEOUT, down.wait_complete())
        .await
        .expect("the download did not complete in time")
        .expect("the download failed");

    let got = std::fs::read(dst.path().join(NAME)).unwrap();
    assert!(got == data, "downloaded bytes differ from the original");
    let stats = down.stats();
    let hash_failures = stats.hash_failures.load(Ordering::SeqCst);
    let banned = stats.banned.load(Ordering::SeqCst);
    let liar_blocks = liar.counters.blocks_sent.load(Ordering::SeqCst);
    eprintln!(
        "hash_failures={hash_failures} banned={banned} liar_blocks={liar_blocks} \
         liar_connections={}",
        liar.accepted()
    );
    assert!(liar_blocks >= 1, "the liar was never asked for a block");
    assert!(hash_failures >= 1, "no piece failed its hash check");
    assert!(banned >= 1, "the liar was not banned");
    assert_eq!(banned, 1, "exactly one peer (the liar) is banned");
    assert!(stats.complete.load(Ordering::SeqCst));
    assert_eq!(stats.pieces_have.load(Ordering::SeqCst), n);

    // The downloader keeps running (seed_when_done) and the liar is not a seed, so its
    // connection was closed by the ban, not by completion. Once banned it is never redialed.
    assert!(liar.accepted() >= 1);
    assert!(
        liar.wait_closed(liar.accepted(), Duration::from_secs(10)).await,
        "the liar's connection is still open ({} accepted, {} closed)",
        liar.accepted(),
        liar.closed()
    );
    let accepted = liar.accepted();
    tokio::time::sleep(Duration::from_secs(6)).await; // longer than the 5 s redial backoff
    assert_eq!(liar.accepted(), accepted, "a banned peer was dialed again");

    down.shutdown().await;
    seed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_handshake_disconnects_and_download_completes() {
    init_tracing();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (data, meta) = make_torrent(src.path());
    let n = meta.info.num_pieces();
    assert_eq!(n, 65, "the cases below assume 65 pieces");

    let cases: Vec<(&str, Vec<u8>)> = vec![
        // Over any cap: must be refused from the 4 length bytes, without allocating.
        ("length 0xFFFFFFFF", vec![0xff, 0xff, 0xff, 0xff, 7, 0, 0, 0]),
        ("unknown message id", vec![0, 0, 0, 1, 200]),
        ("HAVE with a 2-byte payload", vec![0, 0, 0, 3, 4, 0, 0]),
        ("HAVE for piece 256 of 65", vec![0, 0, 0, 5, 4, 0, 0, 1, 0]),
        ("1-byte BITFIELD for 65 pieces", vec![0, 0, 0, 2, 5, 0xff]),
        (
            "BITFIELD with a spare bit set",
            vec![0, 0, 0, 10, 5, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc0],
        ),
        (
            "BITFIELD after HAVE",
            vec![
                0, 0, 0, 5, 4, 0, 0, 0, 0, // HAVE 0
                0, 0, 0, 10, 5, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x80,
            ],
        ),
    ];
    let mut fakes = vec![];
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let peer =
            FakePeer::start(meta.info_hash, i as u8, Behaviour::Garbage(bytes.clone())).await;
        fakes.push((*what, peer));
    }
    let seed = start_seed(&meta, src.path(), Some(1024 * 1024)).await;
    let mut peers: Vec<SocketAddr> = fakes.iter().map(|(_, p)| p.addr).collect();
    peers.push(seed.local_addr());
    let down = start_downloader(&meta, dst.path(), peers).await;

    timeout(TEST_TIMEOUT, down.wait_complete())
        .await
        .expect("the download did not complete in time")
        .expect("the download failed");
    let got = std::fs::read(dst.path().join(NAME)).unwrap();
    assert!(got == data, "downloaded bytes differ from the original");
    assert_eq!(down.stats().hash_failures.load(Ordering::SeqCst), 0);

    // Every garbage peer was dialed and disconnected. None is a seed in the downloader's eyes,
    // and the downloader keeps running, so the close came from the protocol violation.
    for (what, peer) in &fakes {
        assert!(
            peer.wait_closed(1, Duration::from_secs(10)).await,
            "peer sending {what}: connection not closed ({} accepted)",
            peer.accepted()
        );
    }

    down.shutdown().await;
    seed.shutdown().await;
}
