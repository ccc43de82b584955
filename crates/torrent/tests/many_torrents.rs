//! One session, many torrents: one listening port, incoming handshakes routed by info-hash,
//! played with real sessions over loopback. Every wait is bounded.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use torrent::metainfo::{create, CreateOptions, InfoHash, Metainfo};
use torrent::proto::wire::Handshake;
use torrent::session::{Role, Session, SessionConfig, SessionError, SessionOptions};
use torrent::PeerId;

const LIMIT: Duration = Duration::from_secs(60);

fn make_torrent(dir: &Path, name: &str, size: usize, seed: u64) -> (Metainfo, Vec<u8>) {
    let mut data = vec![0u8; size];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    let opts = CreateOptions { piece_size: Some(64 * 1024), ..CreateOptions::default() };
    let raw = create(&path, &opts, &mut |_, _| {}).unwrap();
    (Metainfo::from_bytes(&raw).unwrap(), data)
}

fn config(peers: Vec<SocketAddr>) -> SessionConfig {
    SessionConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        peers,
        use_trackers: false,
        seed_when_done: true,
        ..SessionConfig::default()
    }
}

fn options() -> SessionOptions {
    SessionOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        upload_limit: None,
        download_limit: None,
        encryption: Default::default(),
        transport: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_torrents_on_one_port_reach_their_own_leechers() {
    let src = tempfile::tempdir().unwrap();
    let (a, a_bytes) = make_torrent(src.path(), "a.bin", 3 << 20, 1);
    let (b, b_bytes) = make_torrent(src.path(), "b.bin", 2 << 20, 2);
    // One seeding session for both torrents, one port.
    let seeds = Session::bind(options()).await.unwrap();
    let port = seeds.local_addr();
    let dir = src.path().to_path_buf();
    let sa = seeds.add(a.clone(), dir.clone(), Role::Seed, config(vec![])).await.unwrap();
    let sb = seeds.add(b.clone(), dir.clone(), Role::Seed, config(vec![])).await.unwrap();
    assert_eq!(sa.local_addr(), port);
    assert_eq!(sb.local_addr(), port);
    let mut running = seeds.torrents();
    running.sort();
    let mut want = vec![a.info_hash, b.info_hash];
    want.sort();
    assert_eq!(running, want);
    // The same torrent twice is refused.
    let again = seeds.add(a.clone(), dir.clone(), Role::Seed, config(vec![])).await;
    assert!(matches!(again, Err(SessionError::Duplicate)));

    // One leeching session fetches both, from that one address.
    let out = tempfile::tempdir().unwrap();
    let leech = Session::bind(options()).await.unwrap();
    let la =
        leech.add(a.clone(), out.path().into(), Role::Download, config(vec![port])).await.unwrap();
    let lb =
        leech.add(b.clone(), out.path().into(), Role::Download, config(vec![port])).await.unwrap();
    timeout(LIMIT, la.wait_complete()).await.expect("torrent a did not complete").unwrap();
    timeout(LIMIT, lb.wait_complete()).await.expect("torrent b did not complete").unwrap();
    assert_eq!(std::fs::read(out.path().join("a.bin")).unwrap(), a_bytes);
    assert_eq!(std::fs::read(out.path().join("b.bin")).unwrap(), b_bytes);

    // A torrent that stops leaves the session: its info-hash is no longer answered.
    sa.shutdown().await;
    assert_eq!(seeds.torrents(), vec![b.info_hash]);
    assert!(handshake(port, a.info_hash).await.is_none());
    assert_eq!(handshake(port, b.info_hash).await.map(|h| h.info_hash), Some(b.info_hash));
    for h in [la, lb, sb] {
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_for_an_unknown_torrent_is_closed_unanswered() {
    let src = tempfile::tempdir().unwrap();
    let (a, _) = make_torrent(src.path(), "a.bin", 256 * 1024, 3);
    let seeds = Session::bind(options()).await.unwrap();
    let h = seeds.add(a.clone(), src.path().into(), Role::Seed, config(vec![])).await.unwrap();
    let port = seeds.local_addr();
    assert!(handshake(port, InfoHash([7; 20])).await.is_none());
    assert!(handshake(port, a.info_hash).await.is_some());
    h.shutdown().await;
}

/// Sends a handshake for `ih`; returns the answer, or `None` if the connection closed first.
async fn handshake(addr: SocketAddr, ih: InfoHash) -> Option<Handshake> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let ours = Handshake::new(ih, PeerId([b'x'; 20]));
    s.write_all(&ours.encode()).await.unwrap();
    let mut buf = [0u8; 68];
    match timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("no answer, no close")
    {
        Ok(_) => Some(Handshake::decode(&buf).unwrap()),
        Err(_) => None,
    }
}
