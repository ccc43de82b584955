//! `swarmcast lab stream`: N viewers of one movie joining over the first seconds, once from the
//! CDN alone and once helping each other (`play --p2p`), on the same clip, trace and arrivals,
//! in one run; prints the offload, the CDN's bytes per viewer, stalls, startup and continuity
//! for each N (issue 15). Everything runs in this process on loopback: the origin
//! (`stream::origin`), and per viewer the player (`stream::player::play_with`) and, with P2P,
//! its torrent (`p2p_play::TorrentPeers`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use stream::origin::OriginServer;
use stream::package::{self, PackageOptions, Source};
use stream::player::{play_with, Peers, PlayOptions};
use stream::proto::abr::RuleKind;
use stream::proto::player::{PlayReport, PlayerConfig};
use stream::proto::trace::Trace;

use crate::p2p_play::{JoiningPeers, P2pOptions, TorrentPeers};

/// Most viewers in one run.
const MAX_VIEWERS: usize = 64;

/// Arguments of `swarmcast lab stream`.
#[derive(Args)]
pub struct LabStreamArgs {
    /// Viewer counts to run (comma-separated); each runs CDN-only, then P2P.
    #[arg(long, value_delimiter = ',', default_value = "2,4,8,16")]
    viewers: Vec<usize>,
    /// Length of the test clip to package (ffmpeg's test pattern and a tone).
    #[arg(long, default_value = "120s")]
    clip: String,
    /// Segment length.
    #[arg(long, default_value = "2s")]
    segment: String,
    /// The ladder, lowest first.
    #[arg(long, default_value = "360p:400k,720p:1200k")]
    ladder: String,
    /// Play an already packaged movie (a folder with manifest.mpd and movie.torrent) instead.
    #[arg(long)]
    movie: Option<PathBuf>,
    /// Viewers join evenly over this much player time from the first one.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    arrivals: Duration,
    /// Play N× faster (player time = wall × N; the link limits scale with it).
    #[arg(long, default_value_t = 4.0)]
    speed: f64,
    /// Each viewer downloads at most this many times the top bitrate (video + audio)...
    #[arg(long, default_value_t = 2.0)]
    download_factor: f64,
    /// ... and uploads to other viewers at most this many times it.
    #[arg(long, default_value_t = 1.0)]
    upload_factor: f64,
    /// Longest a segment waits for peers before the CDN is asked for the rest (player time; see
    /// `play --p2p-wait`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "8s")]
    peer_wait: Duration,
    /// Write every run's summary and every viewer's report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One run: N viewers, CDN-only or P2P.
#[derive(Serialize)]
struct Run {
    viewers: usize,
    p2p: bool,
    /// Peer bytes / all bytes, over every viewer.
    offload: f64,
    /// Bytes the CDN served per viewer (media and init segments).
    cdn_bytes_per_viewer: f64,
    stalls: u32,
    stall_s: f64,
    startup_mean_s: f64,
    startup_max_s: f64,
    /// Mean video bitrate played, over every viewer's segments (kb/s).
    bitrate_kbps: f64,
    /// Share of segments in before their deadline (CoolStreaming's continuity index), worst
    /// viewer.
    continuity_min: f64,
    reports: Vec<PlayReport>,
}

/// Runs `lab stream`.
pub async fn run(a: LabStreamArgs) -> Result<()> {
    anyhow::ensure!(
        a.viewers.iter().all(|&n| (1..=MAX_VIEWERS).contains(&n)),
        "--viewers: each count from 1 to {MAX_VIEWERS}"
    );
    anyhow::ensure!(a.speed.is_finite() && a.speed > 0.0, "--speed must be positive");
    let tmp = tempfile::Builder::new().prefix("swarmcast-lab-stream-").tempdir()?;
    let movie = match &a.movie {
        Some(m) => m.clone(),
        None => {
            let dir = tmp.path().join("movie");
            let ladder = package::parse_ladder(&a.ladder)?;
            let mut opts = PackageOptions::new(
                Source::Test(package::parse_duration(&a.clip)?),
                dir.clone(),
                ladder,
            );
            opts.segment = package::parse_duration(&a.segment)?;
            eprintln!("packaging a {} test clip with ffmpeg...", a.clip);
            tokio::task::spawn_blocking(move || package::package(&opts))
                .await
                .context("the packaging task panicked")??;
            let d = dir.clone();
            tokio::task::spawn_blocking(move || {
                crate::stream_serve::write_movie_torrent(&d, vec![])
            })
            .await
            .context("the hashing task panicked")??;
            dir
        }
    };
    let measured = package::measure(&movie, None)?;
    let top_video = measured.representations.iter().filter(|r| r.kind == "video");
    let top = top_video.map(|r| r.label_bps).max().unwrap_or(0)
        + measured
            .representations
            .iter()
            .filter(|r| r.kind == "audio")
            .map(|r| r.label_bps)
            .max()
            .unwrap_or(0);
    anyhow::ensure!(top > 0, "{}: no representation with a bitrate", movie.display());
    let root = movie.parent().context("the movie folder has no parent")?.to_path_buf();
    let name =
        movie.file_name().context("the movie folder has no name")?.to_string_lossy().into_owned();
    let origin = OriginServer::bind(([127, 0, 0, 1], 0).into(), &root)
        .await
        .context("cannot start the origin")?;
    let url = format!("http://{}/{name}/manifest.mpd", origin.local_addr());
    let origin_task = tokio::spawn(origin.run());
    eprintln!(
        "movie {url}: {:.0} s, top {} kb/s; viewers download at most {} kb/s, upload at most {} kb/s (player time), speed {}x",
        measured.duration_s,
        top / 1000,
        (top as f64 * a.download_factor / 1000.0) as u64,
        (top as f64 * a.upload_factor / 1000.0) as u64,
        a.speed
    );

    let mut runs = Vec::new();
    for &n in &a.viewers {
        for p2p in [false, true] {
            let run = one_run(&a, &url, top, n, p2p).await?;
            eprintln!(
                "N = {n:>2} {:<8} offload {:>5.1}%  CDN {:>8.0} kB/viewer  stalls {}  startup mean {:.2} s",
                if p2p { "P2P" } else { "CDN only" },
                run.offload * 100.0,
                run.cdn_bytes_per_viewer / 1000.0,
                run.stalls,
                run.startup_mean_s
            );
            runs.push(run);
        }
    }
    origin_task.abort();
    println!("| viewers | mode | offload | CDN kB per viewer | stalls | stall s | startup mean / max (s) | continuity (worst) | video kb/s |");
    println!("|---:|---|---:|---:|---:|---:|---|---:|---:|");
    for r in &runs {
        println!(
            "| {} | {} | {:.1}% | {:.0} | {} | {:.2} | {:.3} / {:.3} | {:.3} | {:.0} |",
            r.viewers,
            if r.p2p { "P2P" } else { "CDN only" },
            r.offload * 100.0,
            r.cdn_bytes_per_viewer / 1000.0,
            r.stalls,
            r.stall_s,
            r.startup_mean_s,
            r.startup_max_s,
            r.continuity_min,
            r.bitrate_kbps
        );
    }
    if let Some(path) = &a.json {
        let json = serde_json::to_vec_pretty(&runs).context("cannot encode the runs")?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("runs written to {}", path.display());
    }
    Ok(())
}

/// N viewers joining evenly over `--arrivals`; with `p2p`, each joins the swarm of those before.
async fn one_run(a: &LabStreamArgs, url: &str, top: u64, n: usize, p2p: bool) -> Result<Run> {
    let speed = a.speed;
    // Link limits in wall time: player time runs `speed`× faster.
    let down_bps = top as f64 * a.download_factor;
    let trace = Trace::constant(down_bps).map_err(|e| anyhow::anyhow!("{e}"))?;
    let opts = PlayOptions {
        url: url.to_string(),
        rule: RuleKind::DEFAULT,
        config: PlayerConfig { speed, ..PlayerConfig::default() },
        trace: Some(trace),
        peer_wait_s: a.peer_wait.as_secs_f64(),
    };
    let joined: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
    // Viewers done playing: a P2P viewer serves the others until all are.
    let finished = Arc::new(tokio::sync::watch::Sender::new(0usize));
    let mut tasks = Vec::new();
    for i in 0..n {
        let start = a.arrivals.mul_f64(i as f64 / n as f64).div_f64(speed);
        let (opts, joined, finished) = (opts.clone(), joined.clone(), finished.clone());
        let limit = |factor: f64| Some((top as f64 * factor * speed / 8.0) as u64);
        let p2p_opts = P2pOptions {
            listen: ([127, 0, 0, 1], 0).into(),
            peers: Vec::new(),
            dir: None,
            upload_limit: limit(a.upload_factor),
            download_limit: limit(a.download_factor),
        };
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(start).await;
            // The viewer joins the swarm while it starts playing (as `play --p2p` does).
            let peers = p2p.then(|| {
                let others = joined.lock().map(|j| j.clone()).unwrap_or_default();
                let options = P2pOptions { peers: others, ..p2p_opts };
                let joined = joined.clone();
                JoiningPeers::start(&opts.url, options, move |t| {
                    if let Ok(mut j) = joined.lock() {
                        j.push(t.local_addr());
                    }
                })
            });
            let report = match &peers {
                Some(p) => play_with(&opts, Some(p as &dyn Peers), |_| {}).await,
                None => play_with(&opts, None, |_| {}).await,
            };
            finished.send_modify(|c| *c += 1);
            // Serve the others until every viewer of the run is done.
            let mut report = report.map_err(anyhow::Error::from);
            if let Some(p) = peers {
                let _ = finished.subscribe().wait_for(|c| *c >= n).await;
                match p.finish().await {
                    Ok(t) => TorrentPeers::shutdown_shared(t).await,
                    Err(e) => report = Err(e.context("joining the swarm")),
                }
            }
            report
        }));
    }
    let mut reports = Vec::new();
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => reports.push(r),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(anyhow::anyhow!("a viewer panicked: {e}"));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e.context(format!("a viewer failed (N = {n}, p2p {p2p})")));
    }
    Ok(summarize(n, p2p, reports))
}

fn summarize(n: usize, p2p: bool, reports: Vec<PlayReport>) -> Run {
    let total: u64 = reports.iter().map(|r| r.bytes_total).sum();
    let peer: u64 = reports.iter().map(|r| r.peer_bytes).sum();
    let startups: Vec<f64> = reports.iter().map(|r| r.startup_s).collect();
    let continuity = |r: &PlayReport| {
        // Each stall ends with the arrival of the segment it waited for: one late segment.
        let segments = r.segments.len().max(1) as f64;
        1.0 - f64::from(r.stalls) / segments
    };
    Run {
        viewers: n,
        p2p,
        offload: if total > 0 { peer as f64 / total as f64 } else { 0.0 },
        cdn_bytes_per_viewer: (total - peer) as f64 / n as f64,
        stalls: reports.iter().map(|r| r.stalls).sum(),
        stall_s: reports.iter().map(|r| r.stall_s).sum(),
        startup_mean_s: startups.iter().sum::<f64>() / startups.len().max(1) as f64,
        startup_max_s: startups.iter().copied().fold(0.0, f64::max),
        bitrate_kbps: {
            let played = reports.iter().flat_map(|r| r.segments.iter());
            let (sum, count) = played.fold((0u64, 0u64), |(s, c), g| (s + g.bitrate_bps, c + 1));
            sum as f64 / count.max(1) as f64 / 1000.0
        },
        continuity_min: reports.iter().map(continuity).fold(1.0, f64::min),
        reports,
    }
}
