//! Reading a torrent's content while it downloads ([`TorrentReader::read_at`]), against a real
//! seeding [`Session`] over loopback: the bytes a reader asks for are made urgent, arrive
//! before the rest, and equal the original. The seed's upload limit (1 MiB/s for 8 MiB) keeps
//! the whole download at 8 s or more, so a read that returns while the download is incomplete
//! shows the urgency at work. Every wait is bounded.

use std::net::SocketAddr;
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::timeout;

use torrent::metainfo::{create, CreateOptions, Metainfo};
use torrent::session::{Role, Session, SessionConfig};

const LIMIT: Duration = Duration::from_secs(60);

fn config(peers: Vec<SocketAddr>) -> SessionConfig {
    SessionConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        peers,
        use_trackers: false,
        ..SessionConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_gets_the_bytes_it_asks_for_before_the_download_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (seed_dir, get_dir) = (dir.path().join("seed"), dir.path().join("get"));
    std::fs::create_dir_all(&seed_dir).unwrap();
    let mut data = vec![0u8; 8 << 20];
    ChaCha8Rng::seed_from_u64(9).fill_bytes(&mut data);
    let path = seed_dir.join("movie.bin");
    std::fs::write(&path, &data).unwrap();
    let opts = CreateOptions { piece_size: Some(64 * 1024), ..CreateOptions::default() };
    let meta = Metainfo::from_bytes(&create(&path, &opts, &mut |_, _| {}).unwrap()).unwrap();
    let seed_config = SessionConfig { upload_limit: Some(1 << 20), ..config(vec![]) };
    let seed = Session::start(meta.clone(), seed_dir, Role::Seed, seed_config).await.unwrap();
    let get = Session::start(meta, get_dir, Role::Download, config(vec![seed.local_addr()]))
        .await
        .unwrap();

    let reader = get.reader();
    // The last 300 KB (a player reading a file's index at its end), crossing pieces and
    // ending at the file's last byte.
    let (offset, len) = (data.len() - 300_000, 300_000);
    let tail = timeout(LIMIT, reader.read_at(offset as u64, len, 4)).await.unwrap().unwrap();
    assert_eq!(&tail[..], &data[offset..]);
    // Without the urgency the 5 tail pieces come in random order among the 128: all of them
    // within the first 32 by chance once in a thousand runs.
    let have = reader.have().borrow().count();
    eprintln!("{have} of 128 pieces verified when the tail was read");
    assert!(have <= 32, "{have} of 128 pieces came before the tail: it was not urgent");

    // Then the middle (a seek), unaligned.
    let mid = 3_000_001;
    let part = timeout(LIMIT, reader.read_at(mid as u64, 100_000, 4)).await.unwrap().unwrap();
    assert_eq!(&part[..], &data[mid..mid + 100_000]);

    // A range outside the torrent is an error, not a wait.
    assert!(reader.read_at(data.len() as u64 - 10, 11, 0).await.is_err());
    assert!(reader.read_at(0, 0, 0).await.is_err());

    timeout(LIMIT, get.wait_complete()).await.unwrap().unwrap();
    let all = timeout(LIMIT, reader.read_at(0, data.len(), 0)).await.unwrap().unwrap();
    assert_eq!(&all[..], &data[..]);
    get.shutdown().await;
    seed.shutdown().await;
}
