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
    /// Churn: every PERIOD of player time a quarter of the viewers watching leave (closing the
    /// player and leaving the swarm) and as many new ones join from the start of the movie.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "PERIOD")]
    churn: Option<Duration>,
    /// This many viewers (from the second to join, at most all but the first) upload at only
    /// `--slow-upload` × the top bitrate.
    #[arg(long, default_value_t = 0)]
    slow_peers: usize,
    /// What a slow peer uploads, as a share of the top bitrate.
    #[arg(long, default_value_t = 0.1)]
    slow_upload: f64,
    /// The CDN link of every viewer follows this trace (lines `SECONDS BPS`, player time, as in
    /// `play --trace`) instead of a constant `--download-factor` × the top bitrate.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Write every run's summary and every viewer's report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One run: N viewers, CDN-only or P2P.
#[derive(Serialize)]
struct Run {
    viewers: usize,
    /// Viewers that joined through churn (beyond the first `viewers`), and that left early.
    churn_joined: usize,
    churn_left: usize,
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
    /// How late the process's timers ran (see [`Lag`]).
    lag: Lag,
    reports: Vec<PlayReport>,
}

/// Runs `lab stream`.
pub async fn run(a: LabStreamArgs) -> Result<()> {
    anyhow::ensure!(
        a.viewers.iter().all(|&n| (1..=MAX_VIEWERS).contains(&n)),
        "--viewers: each count from 1 to {MAX_VIEWERS}"
    );
    anyhow::ensure!(a.speed.is_finite() && a.speed > 0.0, "--speed must be positive");
    anyhow::ensure!(
        a.slow_upload.is_finite() && a.slow_upload > 0.0,
        "--slow-upload must be positive"
    );
    anyhow::ensure!(
        a.churn.is_none_or(|p| p >= Duration::from_secs(1)),
        "--churn: a period of at least 1 s"
    );
    let trace = a.trace.as_deref().map(crate::play_cmd::load_trace).transpose()?;
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
        let schedule = schedule(&a, n, measured.duration_s);
        for p2p in [false, true] {
            let run = one_run(&a, &url, top, trace.clone(), &schedule, n, p2p).await?;
            eprintln!(
                "N = {n:>2}{} {:<8} offload {:>5.1}%  CDN {:>8.0} kB/viewer  stalls {}  startup mean {:.2} s  timers late p99 {:.1} ms, max {:.0} ms",
                churn_label(&run),
                if p2p { "P2P" } else { "CDN only" },
                run.offload * 100.0,
                run.cdn_bytes_per_viewer / 1000.0,
                run.stalls,
                run.startup_mean_s,
                run.lag.p99_ms,
                run.lag.max_ms
            );
            runs.push(run);
        }
    }
    origin_task.abort();
    println!("| viewers | mode | offload | CDN kB per viewer | stalls | stall s | startup mean / max (s) | continuity (worst) | video kb/s |");
    println!("|---:|---|---:|---:|---:|---:|---|---:|---:|");
    for r in &runs {
        println!(
            "| {}{} | {} | {:.1}% | {:.0} | {} | {:.2} | {:.3} / {:.3} | {:.3} | {:.0} |",
            r.viewers,
            churn_label(r),
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

/// " (+J joined, L left)" after the viewer count of a run with churn.
fn churn_label(r: &Run) -> String {
    if r.churn_joined + r.churn_left == 0 {
        return String::new();
    }
    format!(" (+{} joined, {} left)", r.churn_joined, r.churn_left)
}

/// One viewer of a run: when it joins, how long it watches, how fast it uploads.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Slot {
    /// Player time from the run's start.
    start_s: f64,
    /// Leaves after this much player time (`None`: watches to the end).
    stop_after_s: Option<f64>,
    slow: bool,
}

/// The viewers of a run with `n` viewers: they join evenly over `--arrivals`; the `--slow-peers`
/// are the second, third, ...; with `--churn P`, at P, 2P, ... (before the movie's `duration_s`
/// has passed) a quarter of those watching leave (a different quarter each time, in join
/// order) and as many join. The same schedule serves the CDN-only and the P2P run.
fn schedule(a: &LabStreamArgs, n: usize, duration_s: f64) -> Vec<Slot> {
    let arrivals_s = a.arrivals.as_secs_f64();
    let mut slots: Vec<Slot> = (0..n)
        .map(|i| Slot {
            start_s: arrivals_s * i as f64 / n as f64,
            stop_after_s: None,
            slow: i >= 1 && i <= a.slow_peers,
        })
        .collect();
    let Some(period) = a.churn.map(|p| p.as_secs_f64()) else { return slots };
    let quarter = (n / 4).max(1);
    let mut epoch = 1;
    while period * (epoch as f64) < duration_s {
        let t = period * epoch as f64;
        let watching: Vec<usize> = (0..slots.len())
            .filter(|&i| {
                let s = &slots[i];
                // One arriving at t has not watched yet: it does not leave at once.
                s.start_s < t && s.stop_after_s.is_none() && s.start_s + duration_s > t
            })
            .collect();
        let leave = quarter.min(watching.len());
        for k in 0..leave {
            // Spread over those watching, shifted each epoch.
            let i = watching[(k * watching.len() / leave.max(1) + epoch) % watching.len()];
            slots[i].stop_after_s = Some(t - slots[i].start_s);
        }
        for _ in 0..leave {
            slots.push(Slot { start_s: t, stop_after_s: None, slow: false });
        }
        epoch += 1;
    }
    slots
}

/// The viewers of `schedule`; with `p2p`, each joins the swarm of those before.
async fn one_run(
    a: &LabStreamArgs,
    url: &str,
    top: u64,
    trace: Option<Trace>,
    schedule: &[Slot],
    n: usize,
    p2p: bool,
) -> Result<Run> {
    let speed = a.speed;
    // Link limits in wall time: player time runs `speed`× faster.
    let down_bps = top as f64 * a.download_factor;
    let trace = match trace {
        Some(t) => t,
        None => Trace::constant(down_bps).map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    let opts = PlayOptions {
        url: url.to_string(),
        rule: RuleKind::DEFAULT,
        config: PlayerConfig { speed, ..PlayerConfig::default() },
        trace: Some(trace),
        peer_wait_s: a.peer_wait.as_secs_f64(),
        stop_after_s: None,
    };
    let joined: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
    let lag = LagProbe::start(speed);
    // Viewers done playing or gone: a P2P viewer that watched to the end serves the others
    // until all are.
    let finished = Arc::new(tokio::sync::watch::Sender::new(0usize));
    let all = schedule.len();
    let mut tasks = Vec::new();
    for slot in schedule.iter().copied() {
        let start = Duration::from_secs_f64(slot.start_s / speed);
        let (mut opts, joined, finished) = (opts.clone(), joined.clone(), finished.clone());
        opts.stop_after_s = slot.stop_after_s;
        // At least 1 B/s: 0 would mean no limit.
        let limit = |factor: f64| Some(((top as f64 * factor * speed / 8.0) as u64).max(1));
        let p2p_opts = P2pOptions {
            listen: ([127, 0, 0, 1], 0).into(),
            peers: Vec::new(),
            dir: None,
            upload_limit: limit(if slot.slow { a.slow_upload } else { a.upload_factor }),
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
            // Serve the others until every viewer of the run is done (one that left, at once).
            let mut report = report.map_err(anyhow::Error::from);
            if let Some(p) = peers {
                if slot.stop_after_s.is_none() {
                    let _ = finished.subscribe().wait_for(|c| *c >= all).await;
                }
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
    let lag = lag.stop().await;
    if let Some(e) = first_error {
        return Err(e.context(format!("a viewer failed (N = {n}, p2p {p2p})")));
    }
    let left = schedule.iter().filter(|s| s.stop_after_s.is_some()).count();
    let mut run = summarize(n, (schedule.len() - n, left), p2p, reports);
    run.lag = lag;
    Ok(run)
}

/// How late the process's timers fire while a run plays: every viewer, its swarm and the
/// origin share this runtime (2 threads on a 2-core machine), so work that holds a thread
/// delays every viewer's download at once; a lab artifact a viewer in a process of its own
/// would not see.
#[derive(Clone, Debug, Default, Serialize)]
struct Lag {
    /// Largest lateness of a [`LAG_TICK`] timer (wall ms).
    max_ms: f64,
    /// Its 99th percentile (wall ms).
    p99_ms: f64,
    /// Player times (s from the run's start) of the ticks later than [`LAG_REPORTED`], with
    /// their lateness (ms); at most [`MAX_LAG_EVENTS`].
    late: Vec<(f64, f64)>,
}

const LAG_TICK: Duration = Duration::from_millis(5);
const LAG_REPORTED: Duration = Duration::from_millis(40);
const MAX_LAG_EVENTS: usize = 200;

/// A task sampling [`Lag`] until stopped.
struct LagProbe {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Lag>,
}

impl LagProbe {
    fn start(speed: f64) -> LagProbe {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let start = std::time::Instant::now();
            let mut lateness: Vec<f64> = Vec::new();
            let mut late = Vec::new();
            loop {
                let before = std::time::Instant::now();
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(LAG_TICK) => {}
                }
                let over = before.elapsed().saturating_sub(LAG_TICK);
                let ms = over.as_secs_f64() * 1000.0;
                lateness.push(ms);
                if over >= LAG_REPORTED && late.len() < MAX_LAG_EVENTS {
                    late.push(((before - start).as_secs_f64() * speed, ms));
                }
            }
            lateness.sort_by(f64::total_cmp);
            let p99 = lateness.get(lateness.len() * 99 / 100).copied().unwrap_or(0.0);
            Lag { max_ms: lateness.last().copied().unwrap_or(0.0), p99_ms: p99, late }
        });
        LagProbe { stop, task }
    }

    async fn stop(self) -> Lag {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// The run's figures; `churn` is (viewers that joined beyond the first `n`, viewers that left).
fn summarize(n: usize, churn: (usize, usize), p2p: bool, reports: Vec<PlayReport>) -> Run {
    let total: u64 = reports.iter().map(|r| r.bytes_total).sum();
    let peer: u64 = reports.iter().map(|r| r.peer_bytes).sum();
    // A viewer that left before its first segment never started.
    let started = reports.iter().filter(|r| !r.segments.is_empty());
    let startups: Vec<f64> = started.map(|r| r.startup_s).collect();
    let continuity = |r: &PlayReport| {
        // Each stall ends with the arrival of the segment it waited for: one late segment.
        let segments = r.segments.len().max(1) as f64;
        1.0 - f64::from(r.stalls) / segments
    };
    Run {
        viewers: n,
        churn_joined: churn.0,
        churn_left: churn.1,
        p2p,
        offload: if total > 0 { peer as f64 / total as f64 } else { 0.0 },
        // Divided by N: with churn the joiners' bytes are in (they watch longer than the run's
        // first N did), so it is the CDN's load for a run of N, not per person.
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
        lag: Lag::default(),
        reports,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        lab: LabStreamArgs,
    }

    fn args(extra: &[&str]) -> LabStreamArgs {
        Cli::parse_from(std::iter::once("lab").chain(extra.iter().copied())).lab
    }

    /// Viewers watching at player time `t` (joined, not left, not past the end).
    fn watching(slots: &[Slot], t: f64, duration_s: f64) -> usize {
        let end = |s: &Slot| s.start_s + s.stop_after_s.unwrap_or(duration_s);
        slots.iter().filter(|s| s.start_s <= t && t < end(s)).count()
    }

    #[test]
    fn churn_replaces_a_quarter_of_the_viewers_every_period() {
        let slots = schedule(&args(&["--churn", "30s", "--slow-peers", "1"]), 16, 120.0);
        // Epochs at 30, 60 and 90 s: four leave and four join each time.
        assert_eq!(slots.len(), 16 + 12);
        assert_eq!(slots.iter().filter(|s| s.stop_after_s.is_some()).count(), 12);
        for t in [30.0, 60.0, 90.0] {
            let joined = slots[16..].iter().filter(|s| s.start_s == t).count();
            let left = slots
                .iter()
                .filter(|s| s.stop_after_s.is_some_and(|d| (s.start_s + d - t).abs() < 1e-9))
                .count();
            assert_eq!((joined, left), (4, 4), "at {t} s");
            // As many watch just after t as before (and the first viewers' arrival at t).
            let arriving = slots[..16].iter().filter(|s| s.start_s == t).count();
            assert_eq!(
                watching(&slots, t + 1e-6, 120.0),
                watching(&slots, t - 1e-6, 120.0) + arriving,
                "at {t} s"
            );
        }
        // Nobody leaves twice, nobody leaves before joining.
        assert!(slots.iter().all(|s| s.stop_after_s.is_none_or(|d| d > 0.0)));
        // The slow peer is the second to join, and only it.
        let slow: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].slow).collect();
        assert_eq!(slow, vec![1]);
    }

    #[test]
    fn a_viewer_arriving_at_a_churn_time_watches_before_it_may_leave() {
        // Arrivals at 0, 15, 30 and 45 s; churn at 15, 30, 45, ... s.
        let slots = schedule(&args(&["--churn", "15s"]), 4, 120.0);
        assert!(slots.iter().all(|s| s.stop_after_s.is_none_or(|d| d > 0.0)), "{slots:?}");
        assert!(slots.iter().any(|s| s.stop_after_s.is_some()));
    }

    #[test]
    fn without_churn_every_viewer_watches_to_the_end() {
        let slots = schedule(&args(&[]), 8, 120.0);
        assert_eq!(slots.len(), 8);
        assert!(slots.iter().all(|s| s.stop_after_s.is_none() && !s.slow));
        assert_eq!(slots[4].start_s, 30.0);
    }
}
