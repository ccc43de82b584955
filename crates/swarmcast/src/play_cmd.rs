//! `swarmcast play URL`: the headless DASH player of `stream::player`. This file parses the
//! arguments, draws the live status line (a line updated in place on a terminal, plain lines
//! otherwise), prints the per-segment table and the summary, and writes the JSON report.

use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use std::net::SocketAddr;

use stream::player::{parse_trace, play, play_with, Peers, PlayEvent, PlayOptions};

use crate::p2p_play::{JoiningPeers, P2pOptions, ServeOptions, TorrentPeers};
use stream::proto::abr::RuleKind;
use stream::proto::player::{PlayReport, PlayerConfig};

/// Arguments of `swarmcast play`.
#[derive(Args)]
pub struct PlayArgs {
    /// The MPD's URL (http://).
    url: String,
    /// ABR rule: throughput, bola, dynamic or hybrid (ours).
    #[arg(long, default_value_t = RuleKind::DEFAULT)]
    abr: RuleKind,
    /// Throttle downloads to a bandwidth trace: lines `SECONDS BPS` (hold BPS bits per second
    /// for SECONDS; `#` comments; it loops), or the JSON of a trace
    /// (`{"points":[{"duration_s":1,"bps":1e6},...]}`).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Play N× faster: the buffer drains N× faster, waits and the trace shrink N×; downloads
    /// are real. Reported times are player time (wall × N).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Write the report (qoe, stalls, stall_s, startup_s, switches, segments, ...) as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Watch with other viewers: join the movie's swarm (its `movie.torrent` beside the MPD),
    /// ask peers for each segment first and the CDN when they are too slow, and serve what we
    /// have (the report's peer_bytes and offload).
    #[arg(long)]
    p2p: bool,
    /// Where other viewers reach us (with --p2p; port 0 picks one).
    #[arg(long, default_value = "0.0.0.0:0", requires = "p2p")]
    p2p_listen: SocketAddr,
    /// A viewer to connect to (repeat; with --p2p; others come from the torrent's trackers).
    #[arg(long = "p2p-peer", requires = "p2p")]
    p2p_peers: Vec<SocketAddr>,
    /// Keep serving other viewers this long after playback ends (e.g. 30s; with --p2p).
    #[arg(long, value_parser = humantime::parse_duration, requires = "p2p")]
    p2p_stay: Option<std::time::Duration>,
    /// Upload cap to other viewers, bytes per second (k/M/G suffixes; with --p2p).
    #[arg(long, value_parser = crate::size_arg::parse_size, requires = "p2p")]
    p2p_upload_limit: Option<u64>,
    /// Download cap from other viewers, bytes per second (k/M/G suffixes; with --p2p; the
    /// CDN's bytes follow --trace).
    #[arg(long, value_parser = crate::size_arg::parse_size, requires = "p2p")]
    p2p_download_limit: Option<u64>,
    /// Keep the segments in this folder (with --p2p; default: a temporary one).
    #[arg(long, requires = "p2p")]
    p2p_dir: Option<PathBuf>,
    /// Instead of playing here, serve the movie to a browser on this address (with --p2p):
    /// open http://ADDR/player; dash.js plays from this node, which asks the peers first and
    /// the CDN for what they do not deliver in time (its /health counts the bytes of each).
    #[arg(long, requires = "p2p")]
    serve: Option<SocketAddr>,
    /// How long a segment waits for peers before the CDN is asked for the rest (with --p2p;
    /// player time, and at most a third of the buffer; default 8s, with --serve 1s).
    #[arg(long, value_parser = humantime::parse_duration, requires = "p2p")]
    p2p_wait: Option<std::time::Duration>,
    /// With --serve: the folder holding dash.all.min.js (default: the repository's
    /// web/node_modules, as `stream origin`).
    #[arg(long, requires = "serve")]
    player_assets: Option<PathBuf>,
}

/// The bandwidth trace in the file at `path` (`--trace` of `play` and `lab stream`).
pub fn load_trace(path: &std::path::Path) -> Result<stream::proto::trace::Trace> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the trace {}", path.display()))?;
    parse_trace(&text).with_context(|| format!("trace {}", path.display()))
}

/// Runs `swarmcast play`.
pub async fn run(a: PlayArgs) -> Result<()> {
    let trace = a.trace.as_deref().map(load_trace).transpose()?;
    let opts = PlayOptions {
        url: a.url.clone(),
        rule: a.abr,
        config: PlayerConfig { speed: a.speed, ..PlayerConfig::default() },
        trace,
        peer_wait_s: a.p2p_wait.map_or(stream::player::DEFAULT_PEER_WAIT_S, |w| w.as_secs_f64()),
        stop_after_s: None,
    };
    let tty = std::io::stderr().is_terminal();
    let mut status_shown = false;
    let mut peers = None;
    if a.p2p {
        let options = P2pOptions {
            listen: a.p2p_listen,
            peers: a.p2p_peers.clone(),
            dir: a.p2p_dir.clone(),
            upload_limit: a.p2p_upload_limit,
            download_limit: a.p2p_download_limit,
        };
        if let Some(listen) = a.serve {
            let joined = TorrentPeers::join(&a.url, options).await?;
            eprintln!("p2p: serving this movie to other viewers on {}", joined.local_addr());
            let assets = stream::web::default_assets_dir(a.player_assets.as_deref());
            let wait = a.p2p_wait.unwrap_or(std::time::Duration::from_secs(1));
            let serve = ServeOptions { listen, wait, assets };
            return crate::p2p_play::serve_browser(&a.url, joined, serve).await;
        }
        // Playback starts at once; the swarm is joined meanwhile.
        peers = Some(JoiningPeers::start(&a.url, options, |t| {
            eprintln!("p2p: serving this movie to other viewers on {}", t.local_addr());
        }));
    }
    let observe = |event: &PlayEvent| show(event, tty, &mut status_shown);
    let report = match &peers {
        Some(p) => play_with(&opts, Some(p as &dyn Peers), observe).await,
        None => play(&opts, observe).await,
    };
    if status_shown {
        eprintln!();
    }
    let report = report?;
    print!("{}", table(&report));
    if let Some(path) = &a.json {
        let json = serde_json::to_vec_pretty(&report).context("cannot encode the report")?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    if let Some(peers) = peers {
        let peers = peers.finish().await.context("p2p: cannot join the movie's swarm")?;
        if let Some(stay) = a.p2p_stay {
            eprintln!("p2p: serving other viewers for {stay:?} more (Ctrl-C to stop)");
            tokio::select! {
                _ = tokio::time::sleep(stay) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        TorrentPeers::shutdown_shared(peers).await;
    }
    Ok(())
}

/// Shows one event: the status line in place on a terminal, a plain line otherwise.
fn show(event: &PlayEvent, tty: bool, status_shown: &mut bool) {
    let mut err = std::io::stderr().lock();
    let mut line = |text: String| {
        if *status_shown {
            let _ = writeln!(err);
            *status_shown = false;
        }
        let _ = writeln!(err, "{text}");
    };
    match event {
        PlayEvent::Manifest { segments, ladder_bps, audio, base_urls } => {
            let ladder: Vec<String> = ladder_bps.iter().map(|b| format!("{}k", b / 1000)).collect();
            line(format!(
                "{segments} segments; video ladder {}; {}; replicas: {}",
                ladder.join(" "),
                match audio {
                    Some(id) => format!("audio: representation {id} alongside"),
                    None => "no audio in the manifest (video only)".to_string(),
                },
                base_urls.join(", ")
            ));
        }
        PlayEvent::Failover { segment, from, to, error } => {
            line(format!("segment {segment}: {from} failed ({error}); moving to {to}"));
        }
        PlayEvent::Abandon { segment, from_rep, to_rep } => {
            line(format!(
                "segment {segment}: abandoned at representation {from_rep}, fetching {to_rep}"
            ));
        }
        PlayEvent::Segment { segment: s, total, stalls } => {
            let rate_kbps =
                if s.download_s > 0.0 { s.bytes as f64 * 8.0 / s.download_s / 1000.0 } else { 0.0 };
            // A segment peers had fetched before it was asked for arrives at once: no rate.
            let media = s.bytes + s.audio_bytes;
            let source = match s.peer_bytes {
                0 => format!("measured {rate_kbps:.0} kbps"),
                p if p >= media => "from peers".to_string(),
                p => format!(
                    "measured {rate_kbps:.0} kbps, {:.0}% from peers",
                    p as f64 * 100.0 / media.max(1) as f64
                ),
            };
            let text = format!(
                "segment {}/{total}  rep {} ({} kbps)  {source}  buffer {:.1} s  stalls {stalls}",
                s.index + 1,
                s.rep_id,
                s.bitrate_bps / 1000,
                s.buffer_s,
            );
            if tty {
                let _ = write!(err, "\r\x1b[2K{text}");
                let _ = err.flush();
                *status_shown = true;
            } else {
                let _ = writeln!(err, "{text}");
            }
        }
    }
}

/// The per-segment table and the summary.
fn table(r: &PlayReport) -> String {
    let mut out = format!(
        "{:>5} {:>5} {:>9} {:>10} {:>10} {:>9}  base URL\n",
        "seg", "rep", "kbps", "bytes", "download_s", "buffer_s"
    );
    for s in &r.segments {
        out.push_str(&format!(
            "{:>5} {:>5} {:>9} {:>10} {:>10.2} {:>9.1}  {}{}\n",
            s.index,
            s.rep_id,
            s.bitrate_bps / 1000,
            s.bytes,
            s.download_s,
            s.buffer_s,
            s.base_url,
            if s.abandoned { "  (abandoned a higher rate first)" } else { "" },
        ));
    }
    out.push_str(&format!(
        "abr {}  speed {}×  startup {:.2} s  stalls {} ({:.2} s)  switches {}  abandons {}  failovers {}\n\
         mean bitrate {:.0} kbps  QoE (Pensieve linear) {:.2}  bytes {}\n",
        r.abr,
        r.speed,
        r.startup_s,
        r.stalls,
        r.stall_s,
        r.switches,
        r.abandons,
        r.failovers,
        r.mean_bitrate_kbps,
        r.qoe,
        r.bytes_total,
    ));
    out
}
