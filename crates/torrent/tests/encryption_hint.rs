//! The hint a strict `--encryption` gives when a peer breaks off the handshake ("it may require
//! encryption … prefer tries both") is for a person whose setting shuts them out of a swarm:
//! it is given once, and not at all once a handshake of ours has worked (a peer closing while
//! it shuts down is no reason to suggest another setting; `lab swarm` printed it at every end).
//!
//! One test in this binary: it owns the process's log subscriber and reads what it wrote.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::net::TcpListener;

use torrent::metainfo::{create, CreateOptions, Metainfo};
use torrent::session::{Encryption, Role, Session, SessionConfig};

const HINT: &str = "closed the connection during the handshake";

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn take(&self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut *self.0.lock().unwrap())).into_owned()
    }
}

fn make_torrent(dir: &Path) -> Metainfo {
    let mut data = vec![0u8; 256 * 1024];
    ChaCha8Rng::seed_from_u64(1).fill_bytes(&mut data);
    let path = dir.join("hint.bin");
    std::fs::write(&path, &data).unwrap();
    let opts = CreateOptions { piece_size: Some(64 * 1024), ..CreateOptions::default() };
    Metainfo::from_bytes(&create(&path, &opts, &mut |_, _| {}).unwrap()).unwrap()
}

/// A listener that accepts every connection and closes it after `after`, unread.
async fn closer(after: Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = l.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                drop(conn);
            });
        }
    });
    addr
}

fn leecher(peers: Vec<SocketAddr>, seed: u64) -> SessionConfig {
    SessionConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        peers,
        use_trackers: false,
        rng_seed: Some(seed),
        encryption: Encryption::Disable,
        seed_when_done: false,
        ..SessionConfig::default()
    }
}

/// Waits (at most 10 s) until `log` holds `what`.
async fn wait_for(log: &Log, what: &str) -> bool {
    for _ in 0..100 {
        if String::from_utf8_lossy(&log.0.lock().unwrap()).contains(what) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_encryption_hint_comes_only_while_no_handshake_has_worked() {
    let log = Log::default();
    let writer = log.clone();
    tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).init();

    let src = tempfile::tempdir().unwrap();
    let meta = make_torrent(src.path());

    // Only a peer that closes on us: the hint, once.
    let dead = closer(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let alone =
        Session::start(meta.clone(), dir.path().into(), Role::Download, leecher(vec![dead], 2))
            .await
            .unwrap();
    assert!(wait_for(&log, HINT).await, "no hint when every handshake failed: {}", log.take());
    alone.shutdown().await;
    assert_eq!(log.take().matches(HINT).count(), 1, "the hint is said once per session");

    // A working seed first, then a peer that closes half a second later: no hint.
    let seed_cfg = SessionConfig { seed_when_done: true, ..leecher(vec![], 3) };
    let seed = Session::start(meta.clone(), src.path().into(), Role::Seed, seed_cfg).await.unwrap();
    let seed_addr: SocketAddr = ([127, 0, 0, 1], seed.local_addr().port()).into();
    let late = closer(Duration::from_millis(500)).await;
    let dir = tempfile::tempdir().unwrap();
    let both = Session::start(
        meta.clone(),
        dir.path().into(),
        Role::Download,
        leecher(vec![seed_addr, late], 4),
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), both.wait_finished())
        .await
        .expect("the download finishes")
        .expect("from the working seed");
    // The closing peer has had its half second and more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let said = log.take();
    assert!(!said.contains(HINT), "hinted although a handshake had worked:\n{said}");
    both.shutdown().await;
    seed.shutdown().await;
}
