//! A magnet link resolved over loopback by the tokio driver of `MetadataCore`, from a real
//! seeding session (which serves `ut_metadata` from its `TorrentCore`). Every wait is bounded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::timeout;

use torrent::magnet::Magnet;
use torrent::metainfo::{create, CreateOptions, Metainfo};
use torrent::proto::metadata::MetadataConfig;
use torrent::session::magnet::{fetch_metadata, MetadataError};
use torrent::session::{Role, Session, SessionConfig};

const LIMIT: Duration = Duration::from_secs(60);

/// Our listen address in these tests: any address, any port.
fn any() -> SocketAddr {
    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
}

/// An address that refuses connections: a socket bound to it but not listening, kept (with the
/// port) for as long as the returned socket lives, so no other test can take the port meanwhile.
fn dead_address() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_magnet_link_resolves_from_a_seeding_session_past_a_dead_address() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("movie.bin");
    // Small pieces, so the info dictionary spans several 16 KiB metadata pieces.
    let mut data = vec![0u8; 32 << 20];
    ChaCha8Rng::seed_from_u64(5).fill_bytes(&mut data);
    std::fs::write(&path, &data).unwrap();
    let opts = CreateOptions { piece_size: Some(16 * 1024), ..CreateOptions::default() };
    let meta = Metainfo::from_bytes(&create(&path, &opts, &mut |_, _| {}).unwrap()).unwrap();
    assert!(meta.info_bytes.len() > 2 * 16 * 1024);
    let config = SessionConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        use_trackers: false,
        ..SessionConfig::default()
    };
    let seed =
        Session::start(meta.clone(), dir.path().to_path_buf(), Role::Seed, config).await.unwrap();
    let magnet = Magnet::parse(&format!("magnet:?xt=urn:btih:{}", meta.info_hash)).unwrap();
    let (_dead, dead) = dead_address();
    let peers = [dead, seed.local_addr()];
    // No patience: with every address tried, the fetch fails at once.
    let config = MetadataConfig {
        timeout: Duration::from_secs(10),
        patience: Duration::ZERO,
        ..MetadataConfig::default()
    };
    let fetch = || {
        let (encryption, dialer) = (Default::default(), Default::default());
        let fetching =
            fetch_metadata(&magnet, &peers, any(), config.clone(), encryption, dialer, &|_| {});
        timeout(LIMIT, fetching)
    };
    let got = fetch().await.expect("metadata fetch timed out").expect("metadata fetch failed");
    assert_eq!(got.info_bytes, meta.info_bytes);
    assert_eq!(got.info.name, "movie.bin");
    seed.shutdown().await;

    // With the seed gone, every address fails and the error says so.
    let err = fetch().await.expect("metadata fetch timed out").expect_err("metadata from nowhere");
    assert!(matches!(err, MetadataError::AllFailed { tried: 2, .. }), "{err}");
}

/// The flash crowd of magnet links: the only address a fetch has refuses at first (a peer
/// still fetching the dictionary itself, or not up yet) and seeds a moment later. The fetch
/// asks for peers again, dials the address again, and gets the dictionary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_magnet_fetch_waits_for_a_peer_that_has_the_torrent_only_later() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.bin");
    let mut data = vec![0u8; 1 << 20];
    ChaCha8Rng::seed_from_u64(6).fill_bytes(&mut data);
    std::fs::write(&path, &data).unwrap();
    let opts = CreateOptions { piece_size: Some(16 * 1024), ..CreateOptions::default() };
    let meta = Metainfo::from_bytes(&create(&path, &opts, &mut |_, _| {}).unwrap()).unwrap();
    // A free port: nobody listens there until the seed starts.
    let later = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let magnet = Magnet::parse(&format!("magnet:?xt=urn:btih:{}", meta.info_hash)).unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let counted = asked.clone();
    let fetch = tokio::spawn(async move {
        let (encryption, dialer) = (Default::default(), Default::default());
        let config = MetadataConfig::default();
        let waiting = move |_tried: usize| {
            counted.fetch_add(1, Ordering::Relaxed);
        };
        let peers = [later];
        let fetching = fetch_metadata(&magnet, &peers, any(), config, encryption, dialer, &waiting);
        timeout(LIMIT, fetching).await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!fetch.is_finished(), "the fetch gave up while its peer was not up yet");
    let config = SessionConfig { listen: later, use_trackers: false, ..SessionConfig::default() };
    let seed =
        Session::start(meta.clone(), dir.path().to_path_buf(), Role::Seed, config).await.unwrap();
    let got = fetch.await.unwrap().expect("metadata fetch timed out").expect("fetch failed");
    assert_eq!(got.info_bytes, meta.info_bytes);
    assert!(asked.load(Ordering::Relaxed) >= 1, "the fetch never said it was waiting");
    seed.shutdown().await;
}
