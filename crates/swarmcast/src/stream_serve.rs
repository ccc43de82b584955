//! `stream package` and `stream origin`: packaging a DASH ladder with ffmpeg and serving a
//! content directory over HTTP (issue 5). The work is done by the `stream` crate.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use stream::origin::OriginServer;
use stream::package::{self, PackageOptions, RateControl, Source};

/// The packaging and origin subcommands of `swarmcast stream`.
#[derive(clap::Subcommand)]
pub enum StreamServeCommand {
    /// Encode a bitrate ladder as DASH with ffmpeg, then measure the real bitrates.
    Package(PackageArgs),
    /// Serve a content directory over HTTP/1.1 (Range, MIME types, CORS).
    Origin(OriginArgs),
    /// A CDN edge: an HTTP pull-through LRU cache in front of an origin.
    Edge(EdgeArgs),
    /// The CDN request router: manifests pointing at edges, redirects, DNS, health probes.
    Router(RouterArgs),
}

/// `stream edge`.
#[derive(clap::Args)]
pub struct EdgeArgs {
    /// The origin's base URL (http://HOST:PORT).
    #[arg(long)]
    origin: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Bytes the cache may hold (k/M/G suffixes, powers of 1024).
    #[arg(long, default_value = "256M")]
    cache_size: String,
    /// The edge's name in /health (default: edge-PORT).
    #[arg(long)]
    name: Option<String>,
    /// Most origin fetches running at once; further misses wait their turn.
    #[arg(long, default_value_t = stream::edge::DEFAULT_MAX_ORIGIN_FETCHES)]
    max_origin_fetches: usize,
}

/// `stream router`.
#[derive(clap::Args)]
pub struct RouterArgs {
    /// HTTP address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Also answer DNS for zone cdn.test on this UDP address.
    #[arg(long)]
    dns: Option<SocketAddr>,
    /// An edge as NAME=URL (repeat; the URL's host must be an IPv4 address with --dns). An
    /// origin's URL works too: it answers the health probes like an edge.
    #[arg(long = "edge", required = true)]
    edges: Vec<stream::router::EdgeSpec>,
    /// Time between health probes of every edge (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s")]
    probe_interval: String,
    /// How long a placed viewer counts toward its edge's load (e.g. 30s).
    #[arg(long, default_value = "30s")]
    viewer_ttl: String,
}

/// `stream package`.
#[derive(clap::Args)]
pub struct PackageArgs {
    /// The input media file (omit with --test-source).
    #[arg(required_unless_present = "test_source")]
    input: Option<PathBuf>,
    /// Output directory (manifest.mpd, segments, ladder.json).
    #[arg(long)]
    out: PathBuf,
    /// Rungs as HEIGHTp:BITRATE, lowest first.
    #[arg(long, default_value = "360p:400k,540p:1200k,720p:3000k")]
    ladder: String,
    /// Segment length (4s, 2.5s, 500ms).
    #[arg(long, default_value = "4s")]
    segment: String,
    /// Constant bitrate (maxrate = bufsize = the rung's rate); the default.
    #[arg(long, conflicts_with = "vbr")]
    cbr: bool,
    /// Variable bitrate (only the average target).
    #[arg(long)]
    vbr: bool,
    /// Encode ffmpeg's test pattern and a sine tone of this length instead of an input file.
    #[arg(long, conflicts_with = "input")]
    test_source: Option<String>,
    /// AAC bitrate (k/M suffixes).
    #[arg(long, default_value = "128k")]
    audio_bitrate: String,
    /// Tracker for the movie's torrent (repeat for several): where viewers of `play --p2p`
    /// find each other.
    #[arg(long = "tracker")]
    trackers: Vec<String>,
}

/// The movie's torrent, written into the package by `stream package`: every file of the
/// package, each segment starting a piece (BEP 47 pad files), so a viewer fetches and verifies
/// a segment alone (`play --p2p`).
pub const MOVIE_TORRENT: &str = "movie.torrent";
/// Its piece size: one block, so a segment wastes less than 16 KiB in padding.
pub const MOVIE_PIECE_SIZE: u32 = 16 * 1024;

/// Writes [`MOVIE_TORRENT`] into the package `dir` (replacing an older one, which is not
/// part of the torrent). Returns the torrent's bytes.
pub fn write_movie_torrent(dir: &std::path::Path, trackers: Vec<String>) -> Result<Vec<u8>> {
    let path = dir.join(MOVIE_TORRENT);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot replace {}", path.display()))
        }
        _ => {}
    }
    let opts = torrent::metainfo::CreateOptions {
        trackers,
        piece_size: Some(MOVIE_PIECE_SIZE),
        align: true,
        ..Default::default()
    };
    let bytes = torrent::metainfo::create(dir, &opts, &mut |_, _| {})
        .with_context(|| format!("cannot make the movie's torrent of {}", dir.display()))?;
    std::fs::write(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(bytes)
}

/// `stream origin`.
#[derive(clap::Args)]
pub struct OriginArgs {
    /// The content directory to serve.
    #[arg(long)]
    dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory holding dash.js for the web player at /player/MOVIE (default:
    /// $SWARMCAST_PLAYER_ASSETS, else web/node_modules/dashjs/dist/modern/umd in the repository).
    #[arg(long)]
    player_assets: Option<PathBuf>,
}

/// Runs one of the subcommands.
pub async fn run(cmd: StreamServeCommand) -> Result<()> {
    match cmd {
        StreamServeCommand::Package(a) => package_cmd(a).await,
        StreamServeCommand::Origin(a) => origin_cmd(a).await,
        StreamServeCommand::Edge(a) => edge_cmd(a).await,
        StreamServeCommand::Router(a) => router_cmd(a).await,
    }
}

async fn package_cmd(a: PackageArgs) -> Result<()> {
    let ladder = package::parse_ladder(&a.ladder)?;
    let source = match (&a.test_source, a.input) {
        (Some(d), _) => Source::Test(package::parse_duration(d)?),
        (None, Some(input)) => Source::File(input),
        (None, None) => anyhow::bail!("give an INPUT file or --test-source DURATION"),
    };
    let mut opts = PackageOptions::new(source, a.out.clone(), ladder);
    opts.segment = package::parse_duration(&a.segment)?;
    opts.rate_control = if a.vbr { RateControl::Vbr } else { RateControl::Cbr };
    opts.audio_bitrate = parse_bitrate(&a.audio_bitrate)?;
    eprintln!("packaging into {} with ffmpeg...", a.out.display());
    let report = tokio::task::spawn_blocking(move || package::package(&opts))
        .await
        .context("the packaging task panicked")??;
    println!(
        "{}: {:.1} s in {:.1} s segments",
        a.out.join(&report.manifest).display(),
        report.duration_s,
        report.segment_s
    );
    println!(
        "{:<4} {:<6} {:<10} {:>10} {:>10} {:>10}  segment bytes",
        "id", "kind", "rung", "label", "measured", "peak seg"
    );
    for r in &report.representations {
        let size = match (r.width, r.height) {
            (Some(w), Some(h)) => format!("{w}x{h}"),
            _ => r.rung.clone().unwrap_or_default(),
        };
        println!(
            "{:<4} {:<6} {:<10} {:>7} kb/s {:>5} kb/s {:>5} kb/s  {:?}",
            r.id,
            r.kind,
            size,
            r.label_bps / 1000,
            r.measured_bps / 1000,
            r.peak_segment_bps / 1000,
            r.segment_bytes
        );
    }
    println!("measurements written to {}", a.out.join(package::LADDER_JSON).display());
    let out = a.out.clone();
    let bytes = tokio::task::spawn_blocking(move || write_movie_torrent(&out, a.trackers))
        .await
        .context("the hashing task panicked")??;
    let hash = torrent::metainfo::Metainfo::from_bytes(&bytes)?.info_hash;
    println!(
        "torrent for viewers (play --p2p) written to {} (info-hash {hash})",
        a.out.join(MOVIE_TORRENT).display()
    );
    Ok(())
}

fn parse_bitrate(s: &str) -> Result<u64> {
    let t = s.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1_000.0),
        Some((i, 'm' | 'M')) => (&t[..i], 1_000_000.0),
        _ => (t, 1.0),
    };
    let v: f64 = digits.parse().with_context(|| format!("bad bitrate {s:?} (e.g. 128k)"))?;
    anyhow::ensure!(
        v.is_finite() && v > 0.0 && v * mult <= 10_000_000.0,
        "bad bitrate {s:?} (e.g. 128k)"
    );
    Ok((v * mult) as u64)
}

async fn origin_cmd(a: OriginArgs) -> Result<()> {
    let assets = stream::web::default_assets_dir(a.player_assets.as_deref());
    if let Err(e) = stream::web::check_assets(&assets) {
        eprintln!("origin: warning: {e}");
    }
    let server = OriginServer::bind(a.listen, &a.dir)
        .await
        .with_context(|| format!("cannot serve {} on {}", a.dir.display(), a.listen))?
        .with_player_assets(assets);
    eprintln!(
        "origin: serving {} on http://{} (web player: /player/MOVIE; Ctrl-C to stop)",
        server.root().display(),
        server.local_addr()
    );
    tokio::select! {
        r = server.run() => r.context("origin stopped")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let v: u64 = digits.parse().with_context(|| format!("bad size {s:?} (e.g. 256M)"))?;
    v.checked_mul(mult).with_context(|| format!("size {s:?} is too large"))
}

async fn edge_cmd(a: EdgeArgs) -> Result<()> {
    use stream::edge::{EdgeConfig, EdgeServer};
    let name = a.name.unwrap_or_else(|| format!("edge-{}", a.listen.port()));
    let mut config = EdgeConfig::new(a.origin.clone(), parse_size(&a.cache_size)?, name.clone());
    anyhow::ensure!(a.max_origin_fetches > 0, "--max-origin-fetches must be at least 1");
    config.max_origin_fetches = a.max_origin_fetches;
    let server = EdgeServer::bind(a.listen, config).await?;
    eprintln!(
        "edge {name}: caching {} on http://{} (Ctrl-C to stop)",
        a.origin,
        server.local_addr()
    );
    tokio::select! {
        r = server.run() => r.context("edge stopped")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

async fn router_cmd(a: RouterArgs) -> Result<()> {
    use stream::router::{RouterConfig, RouterServer};
    let mut config = RouterConfig::new(a.edges);
    config.probe_interval = package::parse_duration(&a.probe_interval)?;
    config.viewer_ttl = package::parse_duration(&a.viewer_ttl)?;
    let server = RouterServer::bind(a.listen, a.dns, config).await?;
    eprintln!("router: http://{} (Ctrl-C to stop)", server.local_addr());
    if let Some(dns) = server.dns_addr() {
        eprintln!("router: DNS for cdn.test on {dns}/udp");
    }
    tokio::select! {
        r = server.run() => r.context("router stopped")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
