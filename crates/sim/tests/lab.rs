//! Small, fast lab runs: real nodes on loopback under the engine's rate limiter.

use std::time::Duration;

use sim::lab::{self, Architecture, LabConfig, LabError};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// The notes' shape at small scale: u_s = 10u, d_min = u_s; N = 5, F = 4 MiB.
fn config(architecture: Architecture) -> LabConfig {
    LabConfig {
        architecture,
        file_size: 4 * MIB,
        server_upload: 5 * MIB,
        peer_uploads: vec![512 * KIB; 5],
        download_limit: Some(5 * MIB),
        piece_size: None,
        seed: 7,
        neighbors: 30,
        upload_slots: 4,
        seed_slots: 10,
        time_limit: Duration::from_secs(120),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_swarm_completes_verified_and_not_faster_than_the_bound() {
    let r = lab::run(&config(Architecture::P2p), |_| {}).await.unwrap();
    assert!(r.bytes_verified);
    assert_eq!(r.peers.len(), 5);
    assert!(r.peers.iter().all(|p| p.completed_s > 0.0 && p.completed_s <= r.measured_s));
    // A time below the bound would mean a cap or the clock is wrong.
    assert!(r.measured_s >= r.bound_s, "measured {} < bound {}", r.measured_s, r.bound_s);
    assert!(r.peer_upload_share > 0.0, "leechers must serve each other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_server_is_slower_than_p2p_at_five_peers() {
    let cs = lab::run(&config(Architecture::ClientServer), |_| {}).await.unwrap();
    let p2p = lab::run(&config(Architecture::P2p), |_| {}).await.unwrap();
    assert!(cs.bytes_verified && p2p.bytes_verified);
    assert!(cs.measured_s >= cs.bound_s, "measured {} < bound {}", cs.measured_s, cs.bound_s);
    assert_eq!(cs.peers_uploaded_bytes, 0, "clients do not upload in client-server");
    assert!(
        cs.measured_s > p2p.measured_s,
        "client-server {} s should be slower than P2P {} s",
        cs.measured_s,
        p2p.measured_s
    );
}

#[tokio::test]
async fn impossible_parameters_give_clear_errors() {
    let mut c = config(Architecture::P2p);
    c.peer_uploads.clear();
    let e = lab::run(&c, |_| {}).await.unwrap_err();
    assert!(e.to_string().contains("at least one peer"), "{e}");
    let mut c = config(Architecture::P2p);
    c.server_upload = 0;
    let e = lab::run(&c, |_| {}).await.unwrap_err();
    assert!(e.to_string().contains("server upload"), "{e}");
    let mut c = config(Architecture::P2p);
    c.file_size = 0;
    let e = lab::run(&c, |_| {}).await.unwrap_err();
    assert!(e.to_string().contains("file size"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lab_past_its_time_limit_stops_and_says_how_far_it_got() {
    let mut c = config(Architecture::ClientServer);
    c.server_upload = 64 * KIB; // 5 × 4 MiB at 64 KiB/s would take 320 s
    c.time_limit = Duration::from_secs(2);
    match lab::run(&c, |_| {}).await {
        Err(LabError::TimedOut { complete, n, progress, .. }) => {
            assert_eq!(n, 5);
            assert_eq!(complete, 0);
            assert!(progress < 100.0);
        }
        other => panic!("expected a time-out, got {other:?}"),
    }
}
