//! `swarmcast bound` and `swarmcast lab ...`: the lecture's distribution-time bounds, and the lab
//! that measures real swarms against them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use sim::bound::Problem;
use sim::lab::{Architecture, LabConfig, LabReport};
use sim::plot::{Axes, MeasuredPoint};

use crate::size_arg::parse_size;

/// Arguments of `swarmcast bound`.
#[derive(Args)]
pub struct BoundArgs {
    /// File size F (k/M/G suffixes).
    #[arg(long, value_parser = parse_size)]
    file_size: u64,
    /// Server upload u_s, bytes per second.
    #[arg(long, value_parser = parse_size)]
    server_upload: u64,
    /// Every peer's upload u, bytes per second.
    #[arg(long, value_parser = parse_size, required_unless_present = "peer_uploads")]
    peer_upload: Option<u64>,
    /// Peer uploads as a comma-separated list, cycled over the N peers (e.g. 2M,512k).
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    peer_uploads: Vec<u64>,
    /// N, the number of peers.
    #[arg(long)]
    peers: usize,
    /// Slowest peer download d_min, bytes per second (default: unlimited).
    #[arg(long, value_parser = parse_size)]
    min_download: Option<u64>,
    /// Draw both bounds for N = 1..N into this .svg file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Lab JSON files whose measured points go on the plot.
    #[arg(long, num_args = 1..)]
    measured: Vec<PathBuf>,
    /// Logarithmic axes (N and seconds), for N from 10 to 10,000 on one figure.
    #[arg(long)]
    log: bool,
}

/// N upload rates: `list` cycled over the N peers, or `single` for all.
pub(crate) fn uploads(single: Option<u64>, list: &[u64], n: usize) -> Vec<u64> {
    if list.is_empty() {
        vec![single.unwrap_or(0); n]
    } else {
        (0..n).map(|i| list[i % list.len()]).collect()
    }
}

/// `swarmcast bound`.
pub fn bound(a: &BoundArgs) -> Result<()> {
    let ups = uploads(a.peer_upload, &a.peer_uploads, a.peers);
    let problem = Problem {
        file_size: a.file_size as f64,
        server_upload: a.server_upload as f64,
        peer_uploads: ups.iter().map(|&u| u as f64).collect(),
        min_download: a.min_download.map(|d| d as f64),
    };
    problem.validate()?;
    let cs = problem.client_server();
    let p2p = problem.p2p();
    println!("N = {}, F = {} bytes", a.peers, a.file_size);
    println!(
        "client-server: D_cs  >= {:.3} s   (binding term: {})",
        cs.seconds,
        cs.binding.formula()
    );
    println!(
        "P2P:           D_p2p >= {:.3} s   (binding term: {})",
        p2p.seconds,
        p2p.binding.formula()
    );
    if let Some(path) = &a.plot {
        let mut points = Vec::new();
        for m in &a.measured {
            points.extend(read_measured(m)?);
        }
        let axes = if a.log { Axes::LogLog } else { Axes::Linear };
        sim::plot::bounds_svg(path, &problem, a.peers, &points, axes)?;
        println!("plot written to {}", path.display());
    }
    Ok(())
}

/// Measured points from a lab JSON: one report, or `{"runs": [...]}` from `lab compare`.
fn read_measured(path: &Path) -> Result<Vec<MeasuredPoint>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON from `swarmcast lab`", path.display()))?;
    let runs = match v.get("runs").and_then(|r| r.as_array()) {
        Some(r) => r.clone(),
        None => vec![v],
    };
    runs.iter()
        .map(|r| {
            let arch = r.get("architecture").and_then(|x| x.as_str());
            let n = r.get("n").and_then(|x| x.as_u64());
            let s = r.get("measured_s").and_then(|x| x.as_f64());
            match (arch, n, s) {
                (Some(arch), Some(n), Some(seconds)) => {
                    Ok(MeasuredPoint { architecture: arch.to_string(), n: n as usize, seconds })
                }
                _ => bail!("{}: a run lacks architecture, n or measured_s", path.display()),
            }
        })
        .collect()
}

/// `swarmcast lab ...`.
#[derive(Subcommand)]
pub enum LabCommand {
    /// 1 seeder and N leechers as real nodes on loopback; measures time to full distribution.
    Swarm(LabArgs),
    /// One server uploads a full copy to each of N clients (no peer uploads), same caps.
    ClientServer(LabArgs),
    /// N viewers of one movie, CDN-only against helping each other (play --p2p): offload,
    /// CDN bytes per viewer, stalls, startup, continuity.
    Stream(crate::lab_stream::LabStreamArgs),
    /// Runs both architectures for a list of N and writes one JSON and one plot.
    Compare {
        #[command(flatten)]
        lab: LabArgs,
        /// The N values (comma-separated); overrides --peers.
        #[arg(long = "ns", value_delimiter = ',', default_value = "5,10,20,50")]
        ns: Vec<usize>,
        /// Plot of bounds and measured points (.svg).
        #[arg(long)]
        plot: Option<PathBuf>,
    },
}

/// Parameters shared by the lab commands.
#[derive(Args, Clone)]
pub struct LabArgs {
    /// N, the number of leechers.
    #[arg(long, default_value_t = 5)]
    peers: usize,
    /// File size F (k/M/G suffixes).
    #[arg(long, value_parser = parse_size, default_value = "4M")]
    file_size: u64,
    /// Seeder upload cap u_s, bytes per second.
    #[arg(long, value_parser = parse_size, default_value = "5M")]
    server_upload: u64,
    /// Every leecher's upload cap u, bytes per second.
    #[arg(long, value_parser = parse_size, default_value = "512k")]
    peer_upload: u64,
    /// Leecher upload caps as a list cycled over the N leechers (e.g. 2M,512k for half at u and
    /// half at u/4); overrides --peer-upload.
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    peer_uploads: Vec<u64>,
    /// Every leecher's download cap d (default: unlimited).
    #[arg(long, value_parser = parse_size)]
    download_limit: Option<u64>,
    /// Piece size (power of two, k/M suffixes; default: automatic, 64 KiB up to 128 MiB).
    #[arg(long, value_parser = parse_size)]
    piece_size: Option<u64>,
    /// Seed for the file contents and every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Peers the tracker gives each node.
    #[arg(long, default_value_t = 30)]
    neighbors: u32,
    /// Regular unchoke slots per node.
    #[arg(long, default_value_t = 4)]
    upload_slots: usize,
    /// Regular unchoke slots of a node while it seeds (at least --upload-slots).
    #[arg(long, default_value_t = 10)]
    seed_slots: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 900)]
    time_limit: u64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run each node as its own `swarmcast` process in its own network namespace, with kernel
    /// (HTB) rate caps instead of the engine's limiter (root only).
    #[arg(long)]
    netns: bool,
}

impl LabArgs {
    fn config(&self, architecture: Architecture, n: usize) -> Result<LabConfig> {
        if n == 0 {
            bail!("--peers must be at least 1");
        }
        let piece_size = self
            .piece_size
            .map(|p| u32::try_from(p).context("--piece-size is too large"))
            .transpose()?;
        Ok(LabConfig {
            architecture,
            file_size: self.file_size,
            server_upload: self.server_upload,
            peer_uploads: uploads(Some(self.peer_upload), &self.peer_uploads, n),
            download_limit: self.download_limit,
            piece_size,
            seed: self.seed,
            neighbors: self.neighbors,
            upload_slots: self.upload_slots,
            seed_slots: self.seed_slots,
            time_limit: Duration::from_secs(self.time_limit),
        })
    }
}

async fn run_one(config: &LabConfig, netns: bool) -> Result<LabReport> {
    let label = match config.architecture {
        Architecture::P2p => "p2p",
        Architecture::ClientServer => "client-server",
    };
    let progress = |p: &sim::lab::LabProgress| {
        eprintln!(
            "  {label} N={}: {:.1}s, {} of {} complete, {:.1}% delivered",
            p.n,
            p.elapsed.as_secs_f64(),
            p.complete,
            p.n,
            p.delivered * 100.0
        )
    };
    if netns {
        let exe = std::env::current_exe()
            .context("cannot find this program's own path to run it in the namespaces")?;
        // The handlers (Ctrl-C, SIGTERM as `timeout` sends, SIGHUP when the terminal goes) are
        // installed before the lab makes its first namespace, so a signal drops the lab's
        // future (whose guard deletes the namespaces) instead of killing this process.
        let stop = stop_signal()?;
        let report = tokio::select! {
            biased;
            name = stop => bail!(
                "interrupted by {name}: the lab's processes were stopped, its namespaces and files removed"),
            r = sim::netns::run_netns(config, &exe, progress) => r?,
        };
        return checked(report);
    }
    let stop = stop_signal()?;
    let report = tokio::select! {
        r = sim::lab::run(config, progress) => r?,
        name = stop => bail!("interrupted by {name}: the lab's nodes were stopped and its files removed"),
    };
    checked(report)
}

/// Installs handlers for SIGINT, SIGTERM and SIGHUP now; the future resolves, with the signal's
/// name, at the first of them.
fn stop_signal() -> Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot install a SIGHUP handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
            _ = hup.recv() => "SIGHUP",
        }
    })
}

/// A run whose copies are not all identical to the original is a failure, not a measurement.
fn checked(report: LabReport) -> Result<LabReport> {
    if !report.bytes_verified {
        bail!("a leecher's copy differs from the original: the lab's numbers are void");
    }
    Ok(report)
}

fn print_report(r: &LabReport, netns: bool) {
    println!(
        "{:?} N={} F={:.1} MiB ({} pieces of {} KiB): measured {:.2} s, bound {:.2} s ({}), ratio {:.3}",
        r.architecture,
        r.n,
        r.file_size as f64 / 1048576.0,
        r.pieces,
        r.piece_size / 1024,
        r.measured_s,
        r.bound_s,
        r.bound_term,
        r.ratio
    );
    println!(
        "  upload utilization: seeder {:.1}%, peers {:.1}%; bytes served by peers: {:.1}%",
        r.seeder_utilization * 100.0,
        r.peer_utilization * 100.0,
        r.peer_upload_share * 100.0
    );
    if netns {
        println!(
            "  (--netns: caps and uploads are bytes on the wire, with TCP/IP headers, ACKs and \
             BitTorrent messages; payload moves at about 95% of a cap)"
        );
    }
    let g = &r.gap;
    println!(
        "  unused capacity: start-up {:.2} s (until {:.2} s), middle {:.2} s, tail {:.2} s (from {:.2} s, 90% delivered), duplicates {:.2} s",
        g.startup_s, g.startup_ends_s, g.middle_s, g.tail_s, g.tail_from_s, g.duplicates_s
    );
    let mut times: Vec<f64> = r.peers.iter().map(|p| p.completed_s).collect();
    times.sort_by(f64::total_cmp);
    if let (Some(first), Some(last)) = (times.first(), times.last()) {
        println!(
            "  completion: first {first:.2} s, median {:.2} s, last {last:.2} s",
            times[times.len() / 2]
        );
    }
}

/// Writes `value` as pretty JSON to `path` (the `--json FILE` of `lab` and `sim`).
pub(crate) fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// `swarmcast lab ...`.
pub async fn lab(cmd: LabCommand) -> Result<()> {
    match cmd {
        LabCommand::Swarm(a) => single(&a, Architecture::P2p).await,
        LabCommand::ClientServer(a) => single(&a, Architecture::ClientServer).await,
        LabCommand::Stream(a) => crate::lab_stream::run(a).await,
        LabCommand::Compare { lab, ns, plot } => {
            let mut runs = Vec::new();
            for &n in &ns {
                for arch in [Architecture::ClientServer, Architecture::P2p] {
                    let r = run_one(&lab.config(arch, n)?, lab.netns).await?;
                    print_report(&r, lab.netns);
                    runs.push(r);
                }
            }
            println!();
            println!("| N | client-server measured (s) | bound (s) | ratio | P2P measured (s) | bound (s) | ratio |");
            println!("|---:|---:|---:|---:|---:|---:|---:|");
            for pair in runs.chunks(2) {
                let (cs, p) = (&pair[0], &pair[1]);
                println!(
                    "| {} | {:.2} | {:.2} | {:.3} | {:.2} | {:.2} | {:.3} |",
                    cs.n, cs.measured_s, cs.bound_s, cs.ratio, p.measured_s, p.bound_s, p.ratio
                );
            }
            let json = serde_json::json!({ "runs": runs });
            if let Some(path) = &lab.json {
                write_json(path, &json)?;
                println!("JSON written to {}", path.display());
            }
            if let Some(path) = &plot {
                let n_max = ns.iter().copied().max().unwrap_or(1);
                let problem = lab.config(Architecture::P2p, n_max)?.problem();
                let points: Vec<MeasuredPoint> = runs
                    .iter()
                    .map(|r| MeasuredPoint {
                        architecture: match r.architecture {
                            Architecture::P2p => "p2p".into(),
                            Architecture::ClientServer => "client-server".into(),
                        },
                        n: r.n,
                        seconds: r.measured_s,
                    })
                    .collect();
                sim::plot::bounds_svg(path, &problem, n_max, &points, Axes::Linear)?;
                println!("plot written to {}", path.display());
            }
            Ok(())
        }
    }
}

async fn single(a: &LabArgs, arch: Architecture) -> Result<()> {
    let r = run_one(&a.config(arch, a.peers)?, a.netns).await?;
    print_report(&r, a.netns);
    if let Some(path) = &a.json {
        write_json(path, &r)?;
        println!("JSON written to {}", path.display());
    }
    Ok(())
}
