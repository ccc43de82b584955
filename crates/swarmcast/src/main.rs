//! `swarmcast`: the command-line shell. It parses arguments, builds the services of the
//! `torrent` crate, and reports progress; no protocol logic lives here.
//!
//! - `main.rs`: the CLI definition and the subcommands; `size_arg.rs`: the k/M/G size parser its
//!   flags share with `lab_cmd.rs` and `sim_cmd.rs`.
//! - `progress.rs`: progress bars on a terminal, plain log lines otherwise.
//! - `demo.rs`, `chat_demo.rs`, `stream_demo.rs`: the local demo (a swarm, a chat overlay, a
//!   CDN with players).
//! - `lab_cmd.rs`: `bound` and `lab`, the distribution-time bounds and measurements.
//! - `chat_cmd.rs`, `tui.rs`, `chat_line.rs`: `chat`, `anchor` and `node` on the overlay
//!   (issue 4); `chat_line.rs` parses a typed line for both the UI and `--script`.
//! - `sim_cmd.rs`: `sim overlay`, the seeded overlay simulation.
//! - `stream_cmd.rs`, `stream_serve.rs`: `stream eval`, `stream package`, `stream origin` (issue 5).
//! - `play_cmd.rs`: `play`, the headless DASH player (issue 5).
//! - `search_cmd.rs`: `search`, distributed search over the overlay; `share.rs`: `--share DIR`
//!   of the overlay nodes, which seeds what it publishes; `dht_index.rs`: the DHT keyword
//!   index's entries, publishing and lookups (issue 14).
//! - `anchors.rs`: `--anchor HOST:PORT` resolved.

mod anchors;
mod chat_cmd;
mod chat_demo;
mod chat_line;
mod demo;
mod dht_cmd;
mod dht_index;
mod lab_cmd;
mod lab_stream;
mod node;
mod p2p_play;
mod play_cmd;
mod progress;
mod search_cmd;
mod share;
mod sim_cmd;
mod size_arg;
mod stream_cmd;
mod stream_demo;
mod stream_serve;
mod tui;
mod watch_http;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use torrent::magnet::Magnet;
use torrent::metainfo::{CreateOptions, Metainfo};
use torrent::session::{Role, Session, SessionConfig, SessionOptions};
use torrent::tracker::server::{TrackerConfig, TrackerServer};

use crate::size_arg::parse_size;

#[derive(Parser)]
#[command(
    name = "swarmcast",
    version,
    about = "Swarmcast: peer-to-peer distribution that speaks BitTorrent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything locally: a BitTorrent swarm (tracker, seed, leechers), an overlay of chat
    /// nodes, and a CDN streaming to players, all on loopback.
    Demo {
        /// Number of leechers.
        #[arg(long, default_value_t = 4)]
        leechers: usize,
        /// Size of the generated file (k/M/G suffixes).
        #[arg(long, default_value = "64M", value_parser = parse_size)]
        size: u64,
        /// Upload limit of every node (bytes per second, k/M/G suffixes).
        #[arg(long, value_parser = parse_size)]
        upload_limit: Option<u64>,
        /// Chat nodes in the overlay part of the demo (0 skips it).
        #[arg(long, default_value_t = 10)]
        chat_nodes: usize,
        /// Skip the streaming part (a CDN of origin, edges and router, and players; needs
        /// ffmpeg to package its clip).
        #[arg(long)]
        no_stream: bool,
    },
    /// Ask a torrent's trackers how many seeders and leechers it has (BEP 48 over HTTP, BEP
    /// 15's scrape over UDP).
    Scrape {
        /// A .torrent file or a magnet link.
        source: String,
        /// Another tracker to ask (repeatable).
        #[arg(long = "tracker")]
        trackers: Vec<String>,
    },
    /// Make a .torrent for a file or a directory.
    Create {
        path: PathBuf,
        /// Output file (default: NAME.torrent in the current directory).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Tracker announce URL (repeat for several; each becomes its own tier).
        #[arg(long = "tracker")]
        trackers: Vec<String>,
        /// Piece size in bytes (power of two, k/M suffixes); default: automatic.
        #[arg(long, value_parser = parse_size)]
        piece_size: Option<u64>,
        #[arg(long)]
        comment: Option<String>,
        /// Mark the torrent private (BEP 27).
        #[arg(long)]
        private: bool,
        /// Start every file of a folder on a piece boundary, with pad files of zeros between
        /// them (BEP 47), so each file can be fetched and verified on its own.
        #[arg(long)]
        align: bool,
    },
    /// Seed existing data.
    Seed {
        torrent: PathBuf,
        /// The file or directory the torrent was made from.
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Download a torrent (a .torrent file or a magnet link).
    Get {
        /// A .torrent file or a magnet: URI.
        source: String,
        /// Directory to download into.
        #[arg(short, long, default_value = ".")]
        output: PathBuf,
        /// Keep seeding after the download completes (until Ctrl-C).
        #[arg(long)]
        seed: bool,
        /// Take over files that already exist and that this download did not create: re-hash
        /// them, keep the pieces that verify and overwrite the rest (without it they are
        /// refused, never overwritten).
        #[arg(long)]
        check_existing: bool,
        /// Serve the torrent's files over HTTP while they download, on this address
        /// (127.0.0.1:0, any free port, without a value): a player reading any part of a file
        /// (Range requests) gets those pieces first. Keeps serving after completion, until
        /// Ctrl-C. A non-loopback address has no authentication: anyone who reaches it can
        /// read the files.
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:0")]
        stream: Option<SocketAddr>,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Print the lecture's lower bounds on distribution time (and plot them).
    Bound(lab_cmd::BoundArgs),
    /// Measure distribution time of real nodes on loopback against the bound.
    Lab {
        #[command(subcommand)]
        cmd: lab_cmd::LabCommand,
    },
    /// Chat over the P2P overlay: rooms and end-to-end encrypted direct messages.
    Chat(chat_cmd::ChatArgs),
    /// Run a well-known contact node of the overlay (otherwise an ordinary relaying node).
    Anchor(chat_cmd::RelayArgs),
    /// Run a headless overlay node that relays messages and keeps history for catch-up.
    Node(chat_cmd::RelayArgs),
    /// Find files that overlay nodes share (`--share DIR`), by words of their names: flooding,
    /// expanding rings or random walks; prints each file's sources and magnet.
    Search(search_cmd::SearchArgs),
    /// The Mainline DHT: run a node, find a torrent's peers, announce one.
    Dht {
        #[command(subcommand)]
        cmd: dht_cmd::DhtCommand,
    },
    /// Simulations in virtual time (`sim overlay`).
    Sim {
        #[command(subcommand)]
        cmd: sim_cmd::SimCommand,
    },
    /// Play a DASH stream headless: adaptive bitrate, trace throttling, replica failover; reports
    /// bitrates, startup, stalls, switches and QoE.
    Play(play_cmd::PlayArgs),
    /// Video streaming over DASH: packaging and serving.
    Stream {
        #[command(subcommand)]
        cmd: stream_cmd::StreamCommand,
    },
    /// Run the long-lived node: every torrent in one session, kept in SQLite, driven by its
    /// HTTP API (and `add`, `ls`, `info`, `pause`, `resume`, `rm`).
    Up(node::UpArgs),
    #[command(flatten)]
    Client(node::client::ClientCommand),
    /// Run a BitTorrent tracker (HTTP /announce and UDP on the same port).
    Tracker {
        #[arg(long, default_value = "127.0.0.1:6969")]
        listen: SocketAddr,
        /// Re-announce interval given to clients, in seconds.
        #[arg(long, default_value_t = 60)]
        interval: u64,
        /// Most peers returned in one announce reply.
        #[arg(long, default_value_t = 50)]
        max_peers_returned: u32,
    },
}

#[derive(clap::Args, Clone)]
struct NetArgs {
    /// TCP port to listen on for peers (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Address to listen on (TCP, and UDP for uTP and the DHT); outgoing peer connections and
    /// tracker announces leave from it too, unless it is 0.0.0.0 or ::.
    #[arg(long, default_value = "0.0.0.0")]
    bind: std::net::IpAddr,
    /// A peer to connect to (repeatable); needed for peers that do not dial out.
    #[arg(long = "peer")]
    peers: Vec<SocketAddr>,
    /// Extra tracker announce URL (repeatable).
    #[arg(long = "tracker")]
    trackers: Vec<String>,
    /// Upload cap for all connections together, bytes per second (k/M/G suffixes).
    #[arg(long, value_parser = parse_size)]
    upload_limit: Option<u64>,
    /// Download cap for all connections together, bytes per second (k/M/G suffixes).
    #[arg(long, value_parser = parse_size)]
    download_limit: Option<u64>,
    /// Most peers to be connected to at once.
    #[arg(long, default_value_t = 50)]
    max_peers: usize,
    /// Regular unchoke slots (the notes' tit-for-tat: 4), plus one optimistic slot.
    #[arg(long, default_value_t = 4)]
    upload_slots: usize,
    /// Regular unchoke slots while seeding (at least --upload-slots): a seed spreads its first
    /// copy over more peers at once.
    #[arg(long, default_value_t = 10)]
    seed_slots: usize,
    /// How many peers to ask trackers for.
    #[arg(long, default_value_t = 50)]
    num_want: u32,
    /// Protocol encryption (MSE/PE): `prefer` accepts both and dials encrypted first, falling
    /// back to plain (libtorrent's default); `require` talks only to peers that encrypt (RC4);
    /// `disable` speaks plain BitTorrent only.
    #[arg(long, value_enum, default_value_t = EncryptionArg::Prefer)]
    encryption: EncryptionArg,
    /// Which transports peers use: `both` dials TCP first and uTP when TCP fails, and accepts
    /// both (uTP shares the TCP port's number, UDP); `tcp` or `utp` alone refuse the other
    /// (qBittorrent's "peer connection protocol").
    #[arg(long, value_enum, default_value_t = TransportArg::Both)]
    transport: TransportArg,
    /// A Mainline DHT node to join through, HOST:PORT (repeatable). The DHT is used when this
    /// is given, or when the torrent names no tracker (nor a magnet an x.pe peer) and no --peer
    /// is given (then through the well-known public routers). Private torrents (BEP 27) never use it.
    #[arg(long = "dht-bootstrap")]
    dht_bootstrap: Vec<String>,
    /// Never use the DHT.
    #[arg(long)]
    no_dht: bool,
    /// An overlay node (`swarmcast anchor`, `node` or `chat`) to ask for DHT contacts,
    /// HOST:PORT (repeatable): the DHT is then joined through the DHT nodes the overlay's nodes
    /// name, as with --dht-bootstrap, so a private group needs no public router.
    #[arg(long = "anchor", conflicts_with = "no_dht")]
    anchors: Vec<String>,
    /// Where the DHT's id and nodes are kept between runs, so the next start is warm (written
    /// at most once a minute, and on exit; one process at a time, others start cold). Default:
    /// $XDG_STATE_HOME/swarmcast/dht-nodes, else ~/.local/state/swarmcast/dht-nodes.
    #[arg(long)]
    dht_state: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum EncryptionArg {
    Prefer,
    Require,
    Disable,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum TransportArg {
    Both,
    Tcp,
    Utp,
}

impl From<TransportArg> for torrent::session::Transport {
    fn from(t: TransportArg) -> Self {
        match t {
            TransportArg::Both => Self::Both,
            TransportArg::Tcp => Self::Tcp,
            TransportArg::Utp => Self::Utp,
        }
    }
}

impl From<EncryptionArg> for torrent::session::Encryption {
    fn from(e: EncryptionArg) -> Self {
        match e {
            EncryptionArg::Prefer => Self::Prefer,
            EncryptionArg::Require => Self::Require,
            EncryptionArg::Disable => Self::Disable,
        }
    }
}

impl NetArgs {
    /// Whether to find peers (and announce) through the DHT; see `--dht-bootstrap`.
    fn wants_dht(&self, torrent_has_trackers: bool, private: bool) -> bool {
        !self.no_dht
            && !private
            && (!self.dht_bootstrap.is_empty()
                || (!torrent_has_trackers && self.trackers.is_empty() && self.peers.is_empty()))
    }

    /// These arguments with the DHT nodes that the overlay's nodes (`--anchor`) name added to
    /// `--dht-bootstrap`.
    async fn with_overlay_contacts(&self) -> Result<NetArgs> {
        let mut with = self.clone();
        if !self.anchors.is_empty() && !self.no_dht {
            let listen = SocketAddr::new(self.bind, 0);
            let timeout = Duration::from_secs(30);
            // Trackers and --peer may still work: a failure here is said, not fatal.
            match dht_index::contacts_via_overlay(&self.anchors, listen, timeout).await {
                Ok(contacts) => with.dht_bootstrap.extend(contacts.iter().map(ToString::to_string)),
                Err(e) => eprintln!("--anchor: {e:#}; going on without its DHT contacts"),
            }
        }
        Ok(with)
    }

    /// A DHT node for this torrent, joined, if the DHT is wanted and reachable. It runs on
    /// the session's port (UDP, beside uTP), as libtorrent's does.
    async fn dht(
        &self,
        session: &Session,
        torrent_has_trackers: bool,
        private: bool,
    ) -> Option<std::sync::Arc<dht::Dht>> {
        if !self.wants_dht(torrent_has_trackers, private) {
            return None;
        }
        let state = self.dht_state.clone().or_else(dht_cmd::default_state_file);
        let shared =
            session.take_udp_others().map(|o| dht::SharedSocket::new(o.socket, o.incoming));
        dht_cmd::node_for_torrent(self.bind, &self.dht_bootstrap, state, shared)
            .await
            .map(std::sync::Arc::new)
    }

    /// The session (one listening port, TCP and uTP) a command's torrent runs in; the
    /// torrent's own limits are set when it is added.
    async fn session(&self) -> Result<Session> {
        let options = SessionOptions {
            listen: SocketAddr::new(self.bind, self.port),
            upload_limit: None,
            download_limit: None,
            encryption: self.encryption.into(),
            transport: self.transport.into(),
        };
        Ok(Session::bind(options).await?)
    }

    fn config(&self) -> SessionConfig {
        SessionConfig {
            listen: SocketAddr::new(self.bind, self.port),
            peers: self.peers.clone(),
            upload_limit: self.upload_limit,
            download_limit: self.download_limit,
            max_peers: self.max_peers,
            extra_trackers: self.trackers.clone(),
            num_want: self.num_want,
            encryption: self.encryption.into(),
            transport: self.transport.into(),
            choker: torrent::proto::choker::ChokerConfig {
                upload_slots: self.upload_slots,
                seed_slots: self.seed_slots,
                ..Default::default()
            },
            ..SessionConfig::default()
        }
    }
}

/// A closed stdout (`swarmcast create … | head -1`) ends the command quietly, as it does
/// `cat` or `ls`: `println!` panics on a broken pipe (Rust ignores SIGPIPE, so that writes to
/// sockets and to child processes fail with an error instead of killing us); this hook turns
/// that one panic into a quiet exit and leaves every other panic as it was.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if text.starts_with("failed printing to stdout") && text.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWARMCAST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo { leechers, size, upload_limit, chat_nodes, no_stream } => {
            demo::run(leechers, size, upload_limit).await?;
            if chat_nodes > 0 {
                chat_demo::run(chat_nodes).await?;
            }
            if !no_stream {
                stream_demo::run().await?;
            }
            Ok(())
        }
        Command::Scrape { source, trackers } => scrape(&source, trackers).await,
        Command::Create { path, output, trackers, piece_size, comment, private, align } => {
            let piece_size = piece_size
                .map(|p| u32::try_from(p).context("piece size is too large"))
                .transpose()?;
            create(&path, output, CreateOptions { trackers, piece_size, comment, private, align })
        }
        Command::Bound(a) => lab_cmd::bound(&a),
        Command::Chat(a) => chat_cmd::chat(a).await,
        Command::Anchor(a) => chat_cmd::relay(a, "anchor").await,
        Command::Node(a) => chat_cmd::relay(a, "node").await,
        Command::Lab { cmd } => lab_cmd::lab(cmd).await,
        Command::Sim { cmd } => sim_cmd::run(cmd),
        Command::Dht { cmd } => dht_cmd::run(cmd).await,
        Command::Search(a) => search_cmd::run(a).await,
        Command::Stream { cmd } => stream_cmd::run(cmd).await,
        Command::Play(a) => play_cmd::run(a).await,
        Command::Seed { torrent, data, net } => seed(&torrent, &data, &net).await,
        Command::Get { source, output, seed, check_existing, stream, net } => {
            get(&source, &output, seed, check_existing, stream, &net).await
        }
        Command::Up(a) => node::up(a).await,
        Command::Client(c) => node::client::run(c).await,
        Command::Tracker { listen, interval, max_peers_returned } => {
            let config = TrackerConfig {
                interval: Duration::from_secs(interval),
                max_peers_returned,
                ..Default::default()
            };
            let server = TrackerServer::bind(listen, config)
                .await
                .with_context(|| format!("cannot listen on {listen} (is the port taken?)"))?;
            eprintln!(
                "tracker on http://{0}/announce and udp://{0} (Ctrl-C to stop)",
                server.local_addr()
            );
            tokio::select! {
                r = server.run() => r.context("tracker stopped")?,
                _ = tokio::signal::ctrl_c() => {}
            }
            Ok(())
        }
    }
}

fn create(path: &Path, output: Option<PathBuf>, opts: CreateOptions) -> Result<()> {
    let bar = progress::bytes_bar("hashing");
    let bytes = torrent::metainfo::create(path, &opts, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .with_context(|| format!("cannot make a torrent of {}", path.display()))?;
    bar.finish_and_clear();
    let meta = Metainfo::from_bytes(&bytes).context("the torrent just made does not parse")?;
    let out = output.unwrap_or_else(|| PathBuf::from(format!("{}.torrent", meta.info.name)));
    std::fs::write(&out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "{}: {} pieces of {} bytes, info-hash {}",
        out.display(),
        meta.info.num_pieces(),
        meta.info.piece_length,
        meta.info_hash
    );
    println!("magnet:?xt=urn:btih:{}", meta.info_hash);
    Ok(())
}

/// `swarmcast scrape`: one line per tracker, the numbers or why there are none.
async fn scrape(source: &str, mut trackers: Vec<String>) -> Result<()> {
    let info_hash = if source.starts_with("magnet:") {
        let m = Magnet::parse(source).context("invalid magnet link")?;
        trackers.splice(0..0, m.trackers);
        m.info_hash
    } else {
        let t = load_torrent(Path::new(source))?;
        trackers.splice(0..0, t.trackers.into_iter().flatten());
        t.info_hash
    };
    // Each tracker once, in order (a --tracker may repeat one of the torrent's).
    let mut seen = std::collections::HashSet::new();
    trackers.retain(|t| seen.insert(t.clone()));
    if trackers.is_empty() {
        bail!("the torrent names no tracker: give one with --tracker URL");
    }
    let mut answered = 0;
    for url in &trackers {
        match torrent::tracker::scrape(url, &[info_hash], Duration::from_secs(15)).await {
            Ok(stats) => match stats.iter().find(|(h, _)| *h == info_hash) {
                Some((_, s)) => {
                    answered += 1;
                    println!(
                        "{url}: {} seeders, {} leechers, {} completed",
                        s.seeders, s.leechers, s.completed
                    );
                }
                None => println!("{url}: does not know this torrent"),
            },
            Err(e) => println!("{url}: no answer ({e})"),
        }
    }
    if answered == 0 {
        bail!("no tracker answered the scrape");
    }
    Ok(())
}

/// A magnet's `x.pe` peers as addresses (host names resolved; those that do not resolve are
/// skipped with a warning).
pub async fn magnet_peers(m: &Magnet) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for p in &m.peers {
        match tokio::net::lookup_host(p.as_str()).await.map(|mut a| a.next()) {
            Ok(Some(a)) => out.push(a),
            _ => tracing::warn!("skipping the magnet's peer {p:?}: it does not resolve"),
        }
    }
    out
}

/// Reads and parses a .torrent file, with errors that say what to do.
fn load_torrent(path: &Path) -> Result<Metainfo> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > torrent::metainfo::MAX_TORRENT_SIZE as u64 {
        bail!("{} is {} bytes: too large to be a .torrent file", path.display(), meta.len());
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Metainfo::from_bytes(&bytes)
        .with_context(|| format!("{} is not a valid .torrent file", path.display()))
}

/// The directory that holds the torrent's content, given what the user pointed `--data` at.
fn data_dir(meta: &Metainfo, data: &Path) -> PathBuf {
    let names_content = data.file_name().is_some_and(|n| n == meta.info.name.as_str());
    if names_content && !data.join(&meta.info.name).exists() {
        data.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
    } else {
        data.to_path_buf()
    }
}

async fn seed(torrent_path: &Path, data: &Path, net: &NetArgs) -> Result<()> {
    let meta = load_torrent(torrent_path)?;
    let dir = data_dir(&meta, data);
    let name = meta.info.name.clone();
    eprintln!("checking {} against the torrent...", data.display());
    let mut config = net.config();
    config.seed_when_done = true;
    let (ih, has_trackers, private) =
        (dht::NodeId(meta.info_hash.0), !meta.trackers.is_empty(), meta.info.private);
    let net = &net.with_overlay_contacts().await?;
    let listening = net.session().await?;
    let session = listening.add(meta, dir, Role::Seed, config).await?;
    let port = session.local_addr().port();
    eprintln!("seeding {name} on port {port} (Ctrl-C to stop)");
    let dht_node = net.dht(&listening, has_trackers, private).await;
    let announcer = match &dht_node {
        Some(node) => {
            eprintln!("DHT: joined; announcing on port {port} every 15 minutes");
            Some(dht_cmd::keep_announcing(node.clone(), ih, session.local_addr(), true))
        }
        None => None,
    };
    let reporter = progress::spawn_reporter(session.stats().clone(), name);
    tokio::signal::ctrl_c().await.ok();
    reporter.abort();
    if let Some(a) = announcer {
        a.abort();
    }
    dht_cmd::save_state(dht_node.as_deref()).await;
    session.shutdown().await;
    Ok(())
}

async fn get(
    source: &str,
    out: &Path,
    keep_seeding: bool,
    check_existing: bool,
    stream: Option<SocketAddr>,
    net: &NetArgs,
) -> Result<()> {
    enum Source {
        Magnet(Magnet),
        Torrent(Box<Metainfo>),
    }
    let source = if source.starts_with("magnet:") {
        Source::Magnet(Magnet::parse(source).context("invalid magnet link")?)
    } else {
        Source::Torrent(Box::new(load_torrent(Path::new(source))?))
    };
    // Trackerless: peers from the DHT join those given with --peer and a magnet's x.pe (a
    // magnet that names peers, as `swarmcast search` gives, needs no public DHT).
    let (ih, has_trackers, private) = match &source {
        Source::Magnet(m) => (m.info_hash, !m.trackers.is_empty() || !m.peers.is_empty(), false),
        Source::Torrent(t) => (t.info_hash, !t.trackers.is_empty(), t.info.private),
    };
    let net = &net.with_overlay_contacts().await?;
    let listening = net.session().await?;
    let dht_node = net.dht(&listening, has_trackers, private).await;
    let mut peers = net.peers.clone();
    if let Source::Magnet(m) = &source {
        peers.extend(magnet_peers(m).await);
    }
    // The lookup's later peers join the download as they come.
    let mut dht_batches = None;
    if let Some(node) = &dht_node {
        let (mut batches, _) = node.get_peers_streaming(dht::NodeId(ih.0)).await?;
        // A magnet's metadata fetch takes one list of peers: the lookup's whole harvest. A
        // torrent file's download starts with the first peers and takes the rest as they come.
        let (found, rest) = if matches!(source, Source::Magnet(_)) {
            let mut all = Vec::new();
            while let Some(b) = batches.recv().await {
                all.extend(b);
            }
            (all, None)
        } else {
            dht_cmd::first_peers(batches).await
        };
        eprintln!("DHT: {} peers found so far", found.len());
        peers.extend(found.iter().copied());
        dht_batches = rest;
    }
    // The DHT's nodes are saved however the run ends, these early failures included.
    let starting = async {
        let meta = match source {
            Source::Magnet(magnet) => {
                eprintln!("fetching the torrent's metadata from peers...");
                torrent::session::magnet::fetch_metadata(
                    &magnet,
                    &peers,
                    listening.local_addr(),
                    torrent::proto::metadata::MetadataConfig::default(),
                    net.encryption.into(),
                    listening.dialer(),
                    &|tried| {
                        eprintln!(
                            "none of the {tried} peers tried has the metadata yet (they may \
                             still be fetching it); asking again (up to 5 minutes, Ctrl-C to stop)"
                        )
                    },
                )
                .await?
            }
            Source::Torrent(t) => *t,
        };
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let name = meta.info.name.clone();
        let mut config = net.config();
        config.peers = peers;
        config.seed_when_done = keep_seeding;
        if check_existing {
            config.existing = torrent::storage::Existing::Check;
        }
        let started = std::time::Instant::now();
        let session = listening.add(meta, out.to_path_buf(), Role::Download, config).await?;
        anyhow::Ok((name, started, session))
    };
    let (name, started, session) = match starting.await {
        Ok(s) => s,
        Err(e) => {
            dht_cmd::save_state(dht_node.as_deref()).await;
            return Err(e);
        }
    };
    let have = session.stats().pieces_have.load(std::sync::atomic::Ordering::Relaxed);
    let total = session.stats().pieces_total.load(std::sync::atomic::Ordering::Relaxed);
    if have > 0 {
        eprintln!("resuming: {have} of {total} pieces already verified on disk");
    }
    let streaming = match stream {
        Some(addr) => match watch_http::serve(session.reader(), addr).await {
            Ok((addr, server)) => {
                eprintln!("streaming {name} on http://{addr}/ while it downloads");
                Some(server)
            }
            Err(e) => {
                dht_cmd::save_state(dht_node.as_deref()).await;
                session.shutdown().await;
                return Err(e);
            }
        },
        None => None,
    };
    let reporter = progress::spawn_reporter(session.stats().clone(), name.clone());
    let downloading = dht_node
        .clone()
        .map(|node| dht_cmd::keep_announcing(node, dht::NodeId(ih.0), session.local_addr(), false));
    // With the DHT, ask it again for peers every few minutes while the download runs.
    let every = dht_cmd::RELOOKUP;
    let mut relook = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let result = loop {
        tokio::select! {
            r = session.wait_complete() => break r.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => break Err(anyhow::anyhow!(
                "interrupted: verified pieces are kept; run the same command again to resume")),
            batch = dht_cmd::next_batch(&mut dht_batches) => match batch {
                Some(b) => session.add_peers(b).await,
                None => dht_batches = None,
            },
            _ = relook.tick(), if dht_node.is_some() => {
                if let Some(node) = &dht_node {
                    if let Ok(found) = node.get_peers(dht::NodeId(ih.0)).await {
                        let found = found.peers.clone();
                        session.add_peers(found).await;
                    }
                }
            }
        }
    };
    reporter.abort();
    if let Some(a) = downloading {
        a.abort();
    }
    if let Err(e) = result {
        if let Some(s) = &streaming {
            s.abort();
        }
        dht_cmd::save_state(dht_node.as_deref()).await;
        session.shutdown().await;
        return Err(e);
    }
    let secs = started.elapsed().as_secs_f64();
    let bytes = session.stats().bytes_total.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "{name}: complete, every piece verified ({:.1} MiB in {secs:.1} s, {:.1} MiB/s)",
        bytes as f64 / 1048576.0,
        bytes as f64 / 1048576.0 / secs.max(1e-9)
    );
    if keep_seeding || streaming.is_some() {
        let port = session.local_addr().port();
        match (keep_seeding, streaming.is_some()) {
            (true, true) => eprintln!("seeding on port {port} and streaming (Ctrl-C to stop)"),
            (true, false) => eprintln!("seeding on port {port} (Ctrl-C to stop)"),
            _ => eprintln!("still streaming (Ctrl-C to stop)"),
        }
        // Only a seeding torrent still runs: a streaming one reads what is on disk.
        let announcer = dht_node.clone().filter(|_| keep_seeding).map(|node| {
            dht_cmd::keep_announcing(node, dht::NodeId(ih.0), session.local_addr(), true)
        });
        let reporter =
            keep_seeding.then(|| progress::spawn_reporter(session.stats().clone(), name));
        tokio::signal::ctrl_c().await.ok();
        if let Some(r) = reporter {
            r.abort();
        }
        if let Some(a) = announcer {
            a.abort();
        }
    }
    dht_cmd::save_state(dht_node.as_deref()).await;
    session.shutdown().await;
    Ok(())
}
