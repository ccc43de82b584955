//! A magnet link resolved over loopback by the tokio driver of `MetadataCore`, from a real
//! seeding session (which serves `ut_metadata` from its `TorrentCore`). Every wait is bounded.

use std::net::SocketAddr;
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::timeout;

use torrent::magnet::Magnet;
use torrent::metainfo::{create, CreateOptions, Metainfo};
use torrent::session::magnet::{fetch_metadata, MetadataError};
use torrent::session::{Role, Session, SessionConfig};

const LIMIT: Duration = Duration::from_secs(60);

/// An address that refuses connections: a socket bound to it but not listening, kept (with the
/// port) for as long as the returned socket lives, so no other test can take the port meanwhile.
/// Our listen address in these tests: any address, any port.
fn any() -> SocketAddr {
    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
}

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
    let fetch = || {
        let (encryption, dialer) = (Default::default(), Default::default());
        timeout(
            LIMIT,
            fetch_metadata(&magnet, &peers, any(), Duration::from_secs(10), encryption, dialer),
        )
    };
    let got = fetch().await.expect("metadata fetch timed out").expect("metadata fetch failed");
    assert_eq!(got.info_bytes, meta.info_bytes);
    assert_eq!(got.info.name, "movie.bin");
    seed.shutdown().await;

    // With the seed gone, every address fails and the error says so.
    let err = fetch().await.expect("metadata fetch timed out").expect_err("metadata from nowhere");
    assert!(matches!(err, MetadataError::AllFailed { tried: 2, .. }), "{err}");
}
