//! `sim::swarm`: a small swarm of TorrentCores in virtual time.

use std::time::Duration;

use sim::swarm::{run, Arrivals, SwarmConfig, SwarmError};

const MIB: u64 = 1 << 20;

fn small(seed: u64) -> SwarmConfig {
    SwarmConfig::uniform(20, 4 * MIB, MIB, 256 * 1024, seed)
}

#[test]
fn every_peer_completes_no_faster_than_the_bound_and_the_seed_replays() {
    let a = run(&small(7), |_, _, _| {}).unwrap().lab;
    assert_eq!(a.peers.len(), 20);
    assert!(a.peers.iter().all(|p| p.completed_s > 0.0 && p.completed_s <= a.measured_s + 1e-9));
    assert!(a.measured_s >= a.bound_s, "measured {} below the bound {}", a.measured_s, a.bound_s);
    assert!(a.ratio >= 1.0);
    // Everything delivered was uploaded by someone: at least N·F on the wire.
    assert!(a.seeder_uploaded_bytes + a.peers_uploaded_bytes >= 20 * 4 * MIB);
    // Same seed, same run, byte for byte; another seed, another run.
    let again = run(&small(7), |_, _, _| {}).unwrap();
    let json = |r: &sim::swarm::SwarmReport| serde_json::to_string(r).unwrap();
    assert_eq!(json(&run(&small(7), |_, _, _| {}).unwrap()), json(&again));
    let other = run(&small(8), |_, _, _| {}).unwrap();
    assert_ne!(json(&again), json(&other));
    // The lab's fields are at the top level of the JSON (plots and tables read them alike).
    let v: serde_json::Value = serde_json::from_str(&json(&again)).unwrap();
    assert_eq!(v["architecture"], "p2p");
    assert_eq!(v["n"], 20);
    assert!(v["measured_s"].as_f64().unwrap() >= v["bound_s"].as_f64().unwrap());
}

#[test]
fn free_riders_finish_after_contributors() {
    let mut c = SwarmConfig::uniform(20, 4 * MIB, MIB, 256 * 1024, 3);
    for u in c.peer_uploads.iter_mut().step_by(4) {
        *u = 0;
    }
    let r = run(&c, |_, _, _| {}).unwrap();
    let (riders, contributors) = (r.free_riders.unwrap(), r.contributors.unwrap());
    assert_eq!(riders.count, 5);
    assert!(riders.mean_s > contributors.mean_s, "{riders:?} vs {contributors:?}");
}

#[test]
fn peers_that_leave_and_poisson_arrivals_still_complete() {
    let mut c = small(5);
    c.leave_after_complete = 0.5;
    c.arrivals = Arrivals::Poisson(2.0);
    let r = run(&c, |_, _, _| {}).unwrap();
    assert_eq!(r.left.unwrap().count, 10);
    assert!(r.lab.peers.iter().all(|p| p.completed_s > 0.0));
}

#[test]
fn a_flash_crowd_of_magnet_links_fetches_the_dictionary_and_completes() {
    // Three addresses per tracker answer: most leechers first hear only of leechers that are
    // still fetching themselves (they refuse), and must ask the tracker again.
    let mut c = small(4);
    c.magnet = true;
    c.neighbors = 3;
    let r = run(&c, |_, _, _| {}).unwrap();
    let fetch = r.metadata_fetch.expect("magnet leechers report their fetch");
    assert_eq!(fetch.count, 20);
    // Someone waited for a second tracker answer (the first comes after 1 s).
    assert!(fetch.max_s > 1.0, "{fetch:?}");
    assert!(r.metadata_asked_again.is_some_and(|n| n > 0));
    assert!(r.lab.peers.iter().all(|p| p.completed_s > 0.0));
    assert!(r.lab.measured_s >= r.lab.bound_s);
    // Without --magnet the report has no fetch.
    assert!(run(&small(4), |_, _, _| {}).unwrap().metadata_fetch.is_none());
}

#[test]
fn impossible_parameters_and_limits_say_what_happened() {
    let mut c = small(1);
    c.server_upload = 0;
    let e = run(&c, |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("--server-upload"), "{e}");
    let mut c = small(1);
    c.piece_size = Some(1000);
    assert!(run(&c, |_, _, _| {}).unwrap_err().to_string().contains("--piece-size"));
    // Past its virtual-time limit the run stops and reports how far it got.
    let mut c = small(1);
    c.time_limit = Duration::from_secs(3);
    match run(&c, |_, _, _| {}) {
        Err(SwarmError::Limit { what, complete, progress, .. }) => {
            assert_eq!(what, "virtual-time");
            assert_eq!(complete, 0);
            assert!(progress > 0.0 && progress < 100.0);
        }
        other => panic!("expected the time limit, got {other:?}"),
    }
    // Past its memory limit too (any process uses more than 1 KiB).
    let mut c = SwarmConfig::uniform(200, 16 * MIB, MIB, 256 * 1024, 1);
    c.memory_limit = Some(1024);
    match run(&c, |_, _, _| {}) {
        Err(SwarmError::Limit { what, .. }) => assert_eq!(what, "memory"),
        other => panic!("expected the memory limit, got {other:?}"),
    }
}
