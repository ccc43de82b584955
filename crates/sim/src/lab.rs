//! The distribution-time lab: real Swarmcast nodes (the `torrent` crate's sessions) talking TCP
//! on loopback, **all in this one process** on one tokio runtime, each node's upload capped by
//! the engine's own token bucket (the code behind `--upload-limit`). It measures the time until
//! every leecher holds every verified piece and compares it with the lecture's bound.
//!
//! - P2P: one seeder and N leechers; the in-process tracker hands each a random subset of
//!   `neighbors` peers; leechers upload to each other (rarest first, tit-for-tat).
//! - Client-server: the same seeder ("server") and N clients that dial only the server; the
//!   server unchokes every client at once, and clients never upload.
//!
//! Where the time goes: the swarm's upload capacity is C = u_s + Σu_i, so when the total-upload
//! term binds, `measured − bound = (capacity left unused + duplicate bytes) / C`. The lab samples
//! every node's upload counter every 100 ms and splits the unused capacity into three phases:
//! start-up (until the seeder has uploaded one copy's worth of bytes), the middle (choking and
//! scheduling), and the tail (after 90% of all bytes are verified: the last pieces, endgame).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use torrent::metainfo::{CreateOptions, Metainfo};
use torrent::proto::choker::ChokerConfig;
use torrent::session::{Role, Session, SessionConfig, TorrentHandle};
use torrent::tracker::server::{TrackerConfig, TrackerServer};

use crate::bound::{Bound, Problem, ProblemError};

/// Which architecture to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    P2p,
    ClientServer,
}

/// One lab run's parameters.
#[derive(Clone, Debug)]
pub struct LabConfig {
    pub architecture: Architecture,
    pub file_size: u64,
    pub server_upload: u64,
    /// Upload cap of each leecher (length N).
    pub peer_uploads: Vec<u64>,
    /// Download cap of every leecher.
    pub download_limit: Option<u64>,
    /// Piece size; `None` = the `create` default.
    pub piece_size: Option<u32>,
    /// Seeds the file contents and every node's random choices.
    pub seed: u64,
    /// How many peers the tracker returns to each node.
    pub neighbors: u32,
    /// Regular unchoke slots of every node (the notes: 4).
    pub upload_slots: usize,
    /// Regular unchoke slots of a node while it seeds (at least `upload_slots`).
    pub seed_slots: usize,
    /// Give up after this long.
    pub time_limit: Duration,
}

impl LabConfig {
    /// The bound problem these parameters describe.
    pub fn problem(&self) -> Problem {
        Problem {
            file_size: self.file_size as f64,
            server_upload: self.server_upload as f64,
            peer_uploads: self.peer_uploads.iter().map(|&u| u as f64).collect(),
            min_download: self.download_limit.map(|d| d as f64),
        }
    }
}

/// What went wrong in a lab run.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Parameters(#[from] ProblemError),
    #[error("the client-server and P2P labs need every rate to be at least 16 KiB/s")]
    RateTooLow,
    #[error(
        "the lab did not finish within its {limit_s:.0} s limit: {complete} of {n} leechers \
         complete, {progress:.1}% of all bytes delivered (stopped and cleaned up)"
    )]
    TimedOut { limit_s: f64, complete: usize, n: usize, progress: f64 },
    #[error("lab setup failed: {0}")]
    Setup(String),
}

fn setup<E: std::fmt::Display>(e: E) -> LabError {
    LabError::Setup(e.to_string())
}

/// One leecher's result.
#[derive(Clone, Debug, Serialize)]
pub struct PeerResult {
    pub index: usize,
    pub upload_limit: u64,
    pub completed_s: f64,
    pub uploaded_bytes: u64,
}

/// Unused upload capacity, in seconds of the whole swarm's capacity, by phase.
#[derive(Clone, Debug, Serialize)]
pub struct GapBreakdown {
    /// Until the seeder had uploaded F bytes.
    pub startup_s: f64,
    /// Between start-up and the tail: choking and scheduling.
    pub middle_s: f64,
    /// After 90% of all bytes were delivered: the last pieces (endgame) and idle capacity.
    pub tail_s: f64,
    /// Bytes uploaded beyond N·F (endgame duplicates), in seconds of capacity.
    pub duplicates_s: f64,
    pub startup_ends_s: f64,
    /// When the tail began (90% of N·F verified).
    pub tail_from_s: f64,
    pub first_complete_s: f64,
}

/// The result of one lab run (the JSON that `--json` writes).
#[derive(Clone, Debug, Serialize)]
pub struct LabReport {
    pub architecture: Architecture,
    pub n: usize,
    pub file_size: u64,
    pub piece_size: u32,
    pub pieces: u32,
    pub server_upload: u64,
    pub peer_uploads: Vec<u64>,
    pub download_limit: Option<u64>,
    pub seed: u64,
    pub measured_s: f64,
    pub bound_s: f64,
    pub bound_term: String,
    pub ratio: f64,
    /// Per-leecher completion.
    pub peers: Vec<PeerResult>,
    pub seeder_uploaded_bytes: u64,
    pub peers_uploaded_bytes: u64,
    /// Seeder upload / (u_s · measured).
    pub seeder_utilization: f64,
    /// Leechers' upload / (Σu_i · measured); 0 for client-server.
    pub peer_utilization: f64,
    /// Share of all uploaded bytes that leechers served.
    pub peer_upload_share: f64,
    pub gap: GapBreakdown,
    /// Every leecher's file was compared with the original, byte for byte.
    pub bytes_verified: bool,
}

/// Progress while a lab runs.
pub struct LabProgress {
    pub elapsed: Duration,
    pub complete: usize,
    pub n: usize,
    /// Fraction of all N·F bytes verified.
    pub delivered: f64,
}

/// Runs one lab. `on_progress` is called about every 500 ms.
pub async fn run(
    config: &LabConfig,
    mut on_progress: impl FnMut(&LabProgress),
) -> Result<LabReport, LabError> {
    let problem = config.problem();
    problem.validate()?;
    let min_rate = 16 * 1024;
    if config.server_upload < min_rate
        || config
            .peer_uploads
            .iter()
            .any(|&u| u < min_rate && config.architecture == Architecture::P2p)
        || config.download_limit.is_some_and(|d| d < min_rate)
    {
        return Err(LabError::RateTooLow);
    }
    let n = config.peer_uploads.len();
    let bound: Bound = match config.architecture {
        Architecture::P2p => problem.p2p(),
        Architecture::ClientServer => problem.client_server(),
    };

    // Everything on disk lives in this directory, removed when it drops (also on error).
    let work = tempfile::tempdir().map_err(setup)?;
    let seed_dir = work.path().join("seed");
    std::fs::create_dir_all(&seed_dir).map_err(setup)?;
    let file = seed_dir.join("lab.bin");
    {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut data = vec![0u8; config.file_size as usize];
        rng.fill_bytes(&mut data);
        std::fs::write(&file, &data).map_err(setup)?;
    }
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let tracker_config = TrackerConfig {
        interval: Duration::from_secs(3600),
        max_peers_returned: config.neighbors,
        ..TrackerConfig::default()
    };
    let tracker = TrackerServer::bind(loopback, tracker_config).await.map_err(setup)?;
    let announce = format!("http://{}/announce", tracker.local_addr());
    let tracker_task = tokio::spawn(tracker.run());

    let opts = CreateOptions {
        trackers: vec![announce],
        piece_size: config.piece_size,
        ..CreateOptions::default()
    };
    let bytes = torrent::metainfo::create(&file, &opts, &mut |_, _| {}).map_err(setup)?;
    let meta = Metainfo::from_bytes(&bytes).map_err(setup)?;

    let p2p = config.architecture == Architecture::P2p;
    let choker = |slots| ChokerConfig {
        upload_slots: slots,
        seed_slots: config.seed_slots,
        ..ChokerConfig::default()
    };
    let max_peers = (config.neighbors as usize * 2).max(n + 1);
    let seeder_config = SessionConfig {
        listen: loopback,
        upload_limit: Some(config.server_upload),
        seed_when_done: true,
        max_peers,
        choker: if p2p { choker(config.upload_slots) } else { choker(n) },
        rng_seed: Some(config.seed ^ 0x5eed),
        num_want: config.neighbors,
        use_trackers: p2p,
        // The lab measures distribution against the bound: its peers speak plain BitTorrent.
        // With the default (an encrypted handshake first) each connection's Diffie-Hellman
        // exchange costs CPU that 51 sessions on 2 cores feel: seeds 1-6 at N = 50 gave a
        // median ratio of 1.043 against 1.031 in plain (2026-11-30).
        encryption: torrent::session::Encryption::Disable,
        // Clients of a server must not find each other; and the lab's published P2P figures
        // were measured with the tracker's peers alone.
        pex: false,
        ..SessionConfig::default()
    };
    let seeder =
        Session::start(meta.clone(), seed_dir, Role::Seed, seeder_config).await.map_err(setup)?;
    let seeder_addr: SocketAddr = ([127, 0, 0, 1], seeder.local_addr().port()).into();

    // A flash crowd: every leecher starts at once, as the bound assumes (started one after
    // another, the 50th of N = 50 began 0.14 s after the first).
    let started = Instant::now();
    let mut starting = tokio::task::JoinSet::new();
    for (i, &up) in config.peer_uploads.iter().enumerate() {
        let c = SessionConfig {
            listen: loopback,
            upload_limit: if p2p { Some(up) } else { None },
            download_limit: config.download_limit,
            seed_when_done: true,
            max_peers,
            choker: choker(config.upload_slots),
            rng_seed: Some(config.seed.wrapping_add(1 + i as u64)),
            num_want: config.neighbors,
            use_trackers: p2p,
            peers: if p2p { vec![] } else { vec![seeder_addr] },
            encryption: torrent::session::Encryption::Disable,
            pex: false,
            ..SessionConfig::default()
        };
        let dir: PathBuf = work.path().join(format!("leecher{i}"));
        let meta = meta.clone();
        starting.spawn(async move { (i, Session::start(meta, dir, Role::Download, c).await) });
    }
    let mut slots: Vec<Option<TorrentHandle>> = (0..n).map(|_| None).collect();
    while let Some(joined) = starting.join_next().await {
        let (i, handle) = joined.map_err(setup)?;
        slots[i] = Some(handle.map_err(setup)?);
    }
    let leechers: Vec<TorrentHandle> = slots.into_iter().flatten().collect();

    // Watch: completion times and a 100 ms timeline of cumulative uploads.
    let mut done: Vec<Option<f64>> = vec![None; n];
    let mut timeline: Vec<(f64, u64, u64)> = vec![(0.0, 0, 0)];
    // When 90% of all N·F bytes were verified: the tail (last pieces, endgame) starts.
    let mut tail_from: Option<f64> = None;
    let mut last_sample = Instant::now();
    let mut last_progress = Instant::now();
    let total_bytes = config.file_size as f64 * n as f64;
    let outcome = loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let t = started.elapsed().as_secs_f64();
        for (i, l) in leechers.iter().enumerate() {
            if done[i].is_none() && l.stats().complete.load(Ordering::Acquire) {
                done[i] = Some(t);
            }
        }
        if last_sample.elapsed() >= Duration::from_millis(100) || done.iter().all(Option::is_some) {
            last_sample = Instant::now();
            let s = seeder.stats().uploaded.load(Ordering::Relaxed);
            let p: u64 = leechers.iter().map(|l| l.stats().uploaded.load(Ordering::Relaxed)).sum();
            timeline.push((t, s, p));
        }
        let complete = done.iter().filter(|d| d.is_some()).count();
        let delivered = leechers
            .iter()
            .map(|l| l.stats().bytes_have.load(Ordering::Relaxed) as f64)
            .sum::<f64>()
            / total_bytes;
        if tail_from.is_none() && delivered >= 0.9 {
            tail_from = Some(t);
        }
        if last_progress.elapsed() >= Duration::from_millis(500) {
            last_progress = Instant::now();
            on_progress(&LabProgress { elapsed: started.elapsed(), complete, n, delivered });
        }
        if complete == n {
            break Ok(());
        }
        if started.elapsed() > config.time_limit {
            break Err(LabError::TimedOut {
                limit_s: config.time_limit.as_secs_f64(),
                complete,
                n,
                progress: delivered * 100.0,
            });
        }
    };
    let seeder_up = seeder.stats().uploaded.load(Ordering::Relaxed);
    let uploads: Vec<u64> =
        leechers.iter().map(|l| l.stats().uploaded.load(Ordering::Relaxed)).collect();
    for l in leechers {
        l.shutdown().await;
    }
    seeder.shutdown().await;
    tracker_task.abort();
    outcome?;
    let identical_copies = verify_copies(&file, work.path(), n)?;

    let peers_up: u64 = uploads.iter().sum();
    Ok(report(
        config,
        bound,
        Measured {
            done: &done,
            uploads,
            seeder_up,
            peers_up,
            timeline: &timeline,
            tail_from,
            piece_size: meta.info.piece_length,
            pieces: meta.info.num_pieces(),
            identical_copies,
        },
    ))
}

/// What a finished lab run observed; [`report`] derives the rest. Shared by the in-process lab
/// and the `--netns` lab so both report the same way.
pub(crate) struct Measured<'a> {
    /// Completion time of each leecher (all `Some` for a finished run).
    pub done: &'a [Option<f64>],
    /// Bytes each leecher uploaded.
    pub uploads: Vec<u64>,
    pub seeder_up: u64,
    pub peers_up: u64,
    /// (t, seeder uploaded, leechers uploaded) samples.
    pub timeline: &'a [(f64, u64, u64)],
    /// When 90% of N·F bytes were verified.
    pub tail_from: Option<f64>,
    pub piece_size: u32,
    pub pieces: u32,
    /// Leechers whose copy equals the original byte for byte ([`verify_copies`]).
    pub identical_copies: usize,
}

/// Builds the report of a finished run.
pub(crate) fn report(config: &LabConfig, bound: Bound, m: Measured<'_>) -> LabReport {
    let n = config.peer_uploads.len();
    let p2p = config.architecture == Architecture::P2p;
    let measured = m.done.iter().flatten().fold(0.0f64, |a, &b| a.max(b));
    let sum_u: f64 = config.peer_uploads.iter().map(|&u| u as f64).sum();
    let capacity = config.server_upload as f64 + if p2p { sum_u } else { 0.0 };
    let first_complete = m.done.iter().flatten().fold(f64::INFINITY, |a, &b| a.min(b));
    let tail_from = m.tail_from.unwrap_or(measured);
    let mut gap = breakdown(m.timeline, capacity, config.file_size, tail_from, measured, n);
    gap.first_complete_s = first_complete;
    let peers = m
        .done
        .iter()
        .zip(&m.uploads)
        .enumerate()
        .map(|(i, (d, &up))| PeerResult {
            index: i,
            upload_limit: config.peer_uploads[i],
            completed_s: d.unwrap_or(measured),
            uploaded_bytes: up,
        })
        .collect();
    let (seeder_up, peers_up) = (m.seeder_up, m.peers_up);
    LabReport {
        architecture: config.architecture,
        n,
        file_size: config.file_size,
        piece_size: m.piece_size,
        pieces: m.pieces,
        server_upload: config.server_upload,
        peer_uploads: config.peer_uploads.clone(),
        download_limit: config.download_limit,
        seed: config.seed,
        measured_s: measured,
        bound_s: bound.seconds,
        bound_term: bound.binding.formula().to_string(),
        ratio: measured / bound.seconds,
        peers,
        seeder_uploaded_bytes: seeder_up,
        peers_uploaded_bytes: peers_up,
        seeder_utilization: seeder_up as f64 / (config.server_upload as f64 * measured),
        peer_utilization: if p2p && sum_u > 0.0 {
            peers_up as f64 / (sum_u * measured)
        } else {
            0.0
        },
        peer_upload_share: peers_up as f64 / (seeder_up + peers_up).max(1) as f64,
        gap,
        bytes_verified: m.identical_copies == n,
    }
}

/// Beyond the nodes' own SHA-1 checks: counts the leechers whose `lab.bin` under
/// `work/leecher{i}` equals the original, byte for byte (a missing copy counts as different).
pub(crate) fn verify_copies(original: &Path, work: &Path, n: usize) -> Result<usize, LabError> {
    let want = std::fs::read(original).map_err(setup)?;
    let mut identical = 0;
    for i in 0..n {
        let copy = work.join(format!("leecher{i}")).join("lab.bin");
        if std::fs::read(&copy).is_ok_and(|got| got == want) {
            identical += 1;
        } else {
            tracing::warn!("leecher {i}'s copy differs from the original");
        }
    }
    Ok(identical)
}

/// Splits unused capacity over the phases (see the module docs).
pub(crate) fn breakdown(
    timeline: &[(f64, u64, u64)],
    capacity: f64,
    file_size: u64,
    tail_from: f64,
    end: f64,
    n: usize,
) -> GapBreakdown {
    let startup_ends =
        timeline.iter().find(|s| s.1 >= file_size).map_or(end, |s| s.0).min(tail_from);
    let uploaded_by = |t: f64| -> f64 {
        // Linear interpolation of cumulative total upload at time t.
        let i = timeline.partition_point(|s| s.0 <= t);
        if i == 0 {
            return 0.0;
        }
        let a = timeline[i - 1];
        let Some(b) = timeline.get(i) else {
            return (a.1 + a.2) as f64;
        };
        let (ua, ub) = ((a.1 + a.2) as f64, (b.1 + b.2) as f64);
        ua + (ub - ua) * (t - a.0) / (b.0 - a.0).max(1e-9)
    };
    let lost = |t0: f64, t1: f64| -> f64 {
        if t1 <= t0 {
            return 0.0;
        }
        ((capacity * (t1 - t0)) - (uploaded_by(t1) - uploaded_by(t0))).max(0.0) / capacity
    };
    let total = uploaded_by(end);
    GapBreakdown {
        startup_s: lost(0.0, startup_ends),
        middle_s: lost(startup_ends, tail_from.min(end)),
        tail_s: lost(tail_from.min(end), end),
        duplicates_s: (total - file_size as f64 * n as f64).max(0.0) / capacity,
        startup_ends_s: startup_ends,
        tail_from_s: tail_from,
        first_complete_s: tail_from,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn copies_are_counted_by_their_bytes() {
        let work = tempfile::tempdir().unwrap();
        let original = work.path().join("lab.bin");
        std::fs::write(&original, b"the original bytes").unwrap();
        for (i, body) in [&b"the original bytes"[..], b"the original byteZ"].iter().enumerate() {
            let dir = work.path().join(format!("leecher{i}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("lab.bin"), body).unwrap();
        }
        // leecher2 has no copy at all.
        assert_eq!(super::verify_copies(&original, work.path(), 3).unwrap(), 1);
        assert_eq!(super::verify_copies(&original, work.path(), 1).unwrap(), 1);
    }

    use super::*;

    #[test]
    fn breakdown_of_a_perfect_swarm_is_zero() {
        // Capacity 10 B/s, F = 10, N = 3: 30 bytes at full rate take 3 s.
        let tl: Vec<(f64, u64, u64)> = (0..=30)
            .map(|i| (i as f64 * 0.1, (i as u64).min(10), (i as u64).saturating_sub(10)))
            .collect();
        let g = breakdown(&tl, 10.0, 10, 2.0, 3.0, 3);
        assert!(g.startup_s.abs() < 1e-9 && g.middle_s.abs() < 1e-9 && g.tail_s.abs() < 1e-9);
        assert!((g.startup_ends_s - 1.0).abs() < 1e-9);
    }

    #[test]
    fn idle_time_is_charged_to_its_phase() {
        // Nothing moves for the first second, then full rate.
        let mut tl = vec![(0.0, 0, 0), (1.0, 0, 0)];
        tl.extend(
            (1..=30)
                .map(|i| (1.0 + i as f64 * 0.1, (i as u64).min(10), (i as u64).saturating_sub(10))),
        );
        let g = breakdown(&tl, 10.0, 10, 3.0, 4.0, 3);
        assert!((g.startup_s - 1.0).abs() < 1e-9, "{g:?}");
        assert!(g.middle_s.abs() < 1e-9 && g.tail_s.abs() < 1e-9);
    }
}
