//! `chat`, `anchor` and `node`: front ends of the overlay chat service
//! (`overlay::chat::run`). The terminal UI lives in `tui.rs` and the line parser both use in
//! `chat_line.rs`; this file has the arguments and the headless runners.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use overlay::chat::{self, ChatConfig, ChatEvent};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::chat_line::{parse_line, Sink};
use crate::share::{self, Sharing};

/// Arguments of `swarmcast chat`.
#[derive(clap::Args)]
pub struct ChatArgs {
    /// Anchor node to join through, HOST:PORT (repeatable). Without one, this node starts a
    /// new overlay (others may join through it).
    #[arg(long = "anchor")]
    pub anchors: Vec<String>,
    /// Your nickname (1-32 characters, no spaces).
    #[arg(long)]
    pub nick: String,
    /// Room to start in.
    #[arg(long, default_value = "general")]
    pub room: String,
    /// Data directory for the key and the history [default: ~/.local/share/swarmcast/NICK].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Address other nodes should dial, if not the listening one (e.g. behind port forwarding).
    #[arg(long)]
    pub advertise: Option<SocketAddr>,
    /// Line mode for scripts and tests: stdin lines are sent (or run as /commands), events are
    /// printed one JSON object per line.
    #[arg(long)]
    pub script: bool,
    /// Share every file in this directory: each is seeded over BitTorrent and published as a
    /// signed search record (`swarmcast search` finds it by words of its name).
    #[arg(long)]
    pub share: Option<PathBuf>,
    /// A DHT node to join through, HOST:PORT (repeatable). The node runs a DHT node beside
    /// the overlay (UDP, a free port on the listening address) and also joins it through the
    /// DHT nodes its overlay neighbours name, so a group needs no public router. Shared files
    /// are published in the DHT's keyword index and announced there.
    #[arg(long = "dht-bootstrap")]
    pub dht_bootstrap: Vec<String>,
    /// Run no DHT node (shared files are then found through the overlay only).
    #[arg(long)]
    pub no_dht: bool,
}

/// Arguments of `swarmcast anchor` and `swarmcast node`.
#[derive(clap::Args)]
pub struct RelayArgs {
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:4500")]
    pub listen: SocketAddr,
    /// Anchor node to join through, HOST:PORT (repeatable).
    #[arg(long = "anchor")]
    pub anchors: Vec<String>,
    /// Data directory for the key and the relayed history
    /// [default: ~/.local/share/swarmcast/anchor or /node].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Address other nodes should dial, if not the listening one.
    #[arg(long)]
    pub advertise: Option<SocketAddr>,
    /// Share every file in this directory: each is seeded over BitTorrent and published as a
    /// signed search record (`swarmcast search` finds it by words of its name).
    #[arg(long)]
    pub share: Option<PathBuf>,
    /// A DHT node to join through, HOST:PORT (repeatable). The node runs a DHT node beside
    /// the overlay (UDP, a free port on the listening address) and also joins it through the
    /// DHT nodes its overlay neighbours name, so a group needs no public router. Shared files
    /// are published in the DHT's keyword index and announced there.
    #[arg(long = "dht-bootstrap")]
    pub dht_bootstrap: Vec<String>,
    /// Run no DHT node (shared files are then found through the overlay only).
    #[arg(long)]
    pub no_dht: bool,
}

fn default_data(name: &str) -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map_or_else(|| PathBuf::from("."), PathBuf::from)
            .join(".local/share")
    });
    base.join("swarmcast").join(name)
}

/// Starts sharing `dir` (if given) on the address the node advertises; with a DHT node, also
/// publishes the files in the DHT's keyword index, signed by the node's key (in `data`, as the
/// chat service loads it).
async fn start_sharing(
    dir: Option<&Path>,
    listen: SocketAddr,
    advertise: Option<SocketAddr>,
    data: &Path,
    dht: Option<&NodeDht>,
) -> Result<Option<Sharing>> {
    let Some(dir) = dir else { return Ok(None) };
    let ip = advertise.unwrap_or(listen).ip();
    if ip.is_unspecified() {
        bail!("--share needs an address peers can reach: give --advertise IP:PORT");
    }
    let publish = match dht {
        Some(d) => Some((overlay::identity::Identity::load_or_create(data)?, d.node.clone())),
        None => None,
    };
    Ok(Some(share::share_dir(dir, ip, publish).await?))
}

/// The DHT node an overlay node runs, and the task that joins it through the DHT nodes the
/// overlay's neighbours name.
pub struct NodeDht {
    pub node: std::sync::Arc<dht::Dht>,
    pub hook: overlay::chat::DhtHook,
    joiner: tokio::task::JoinHandle<()>,
}

impl Drop for NodeDht {
    fn drop(&mut self) {
        self.joiner.abort();
    }
}

/// Starts the node's DHT on its listening address (a free UDP port), joining through
/// `bootstrap` now and through every DHT address a neighbour names; `None` with `--no-dht`.
async fn start_dht(
    listen: SocketAddr,
    advertise: Option<SocketAddr>,
    bootstrap: &[String],
    no_dht: bool,
) -> Result<Option<NodeDht>> {
    if no_dht {
        return Ok(None);
    }
    let routers =
        if bootstrap.is_empty() { Vec::new() } else { crate::dht_cmd::resolve(bootstrap)? };
    let node = dht::Dht::spawn(dht::DhtOptions::for_bind(listen.ip()))
        .await
        .with_context(|| format!("cannot open a UDP port for the DHT on {}", listen.ip()))?;
    let node = std::sync::Arc::new(node);
    // What neighbours are told: our DHT's port, on the address the overlay advertises (a
    // socket on every address takes the advertised one of its family; neighbours keep only
    // addresses on the IP our overlay connection comes from).
    let ip = advertise.unwrap_or(listen).ip();
    let addrs: Vec<SocketAddr> = node
        .local_addrs()
        .into_iter()
        .map(|a| match a.ip().is_unspecified() && a.is_ipv4() == ip.is_ipv4() {
            true => SocketAddr::new(ip, a.port()),
            false => a,
        })
        .filter(|a| !a.ip().is_unspecified())
        .collect();
    if addrs.is_empty() {
        eprintln!(
            "DHT: listening on every address, neighbours cannot be told where; give --advertise \
             IP:PORT so they can join the DHT through this node"
        );
    }
    let (contacts, mut learned) = mpsc::channel::<SocketAddr>(64);
    let joining = node.clone();
    let joiner = tokio::spawn(async move {
        if !routers.is_empty() && joining.bootstrap(routers).await.is_err() {
            return;
        }
        let mut tried = std::collections::HashSet::new();
        while let Some(addr) = learned.recv().await {
            // Joined already (a full first bucket's worth of nodes): nothing to do.
            match joining.nodes().await {
                Ok(n) if n >= 16 => continue,
                Ok(_) => {}
                Err(_) => return,
            }
            // Each address once while the table is small; the set is forgotten when it fills.
            if tried.len() >= 1024 {
                tried.clear();
            }
            if tried.insert(addr) && joining.bootstrap(vec![addr]).await.is_err() {
                return;
            }
        }
    });
    let hook = overlay::chat::DhtHook { addrs, contacts };
    Ok(Some(NodeDht { node, hook, joiner }))
}

/// `swarmcast chat`.
pub async fn chat(args: ChatArgs) -> Result<()> {
    let data = args.data.clone().unwrap_or_else(|| default_data(&args.nick));
    let dht = start_dht(args.listen, args.advertise, &args.dht_bootstrap, args.no_dht).await?;
    let sharing =
        start_sharing(args.share.as_deref(), args.listen, args.advertise, &data, dht.as_ref())
            .await?;
    let config = ChatConfig {
        data,
        listen: args.listen,
        advertise: args.advertise,
        anchors: crate::anchors::resolve(&args.anchors).await?,
        nick: args.nick.clone(),
        rooms: vec![args.room.clone()],
        node: Default::default(),
        share: sharing.as_ref().map(|s| s.files.clone()).unwrap_or_default(),
        dht: dht.as_ref().map(|d| d.hook.clone()),
    };
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (ev_tx, ev_rx) = mpsc::channel(1024);
    let service = tokio::spawn(chat::run(config, cmd_rx, ev_tx));
    let (sink, dht_rx) = Sink::new(cmd_tx, dht.as_ref().map(|d| d.node.clone()));
    if args.script {
        script(args.room, sink, dht_rx, ev_rx).await?;
    } else {
        crate::tui::run(args.room, args.nick, sink, dht_rx, ev_rx).await?;
    }
    service.await.context("chat service panicked")??;
    if let Some(s) = sharing {
        s.shutdown().await;
    }
    Ok(())
}

async fn script(
    mut room: String,
    sink: Sink,
    mut dht_rx: mpsc::Receiver<ChatEvent>,
    mut ev_rx: mpsc::Receiver<ChatEvent>,
) -> Result<()> {
    let mut stdout = tokio::io::stdout();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            line = lines.next_line(), if stdin_open => match line? {
                Some(line) if line.trim().is_empty() => {}
                Some(line) => match parse_line(&line, &mut room) {
                    Ok(Some(line)) => match sink.run(line).await {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(text) => print_json(&mut stdout, &ChatEvent::Error { text }).await?,
                    },
                    Ok(None) => stdin_open = false,
                    Err(text) => print_json(&mut stdout, &ChatEvent::Error { text }).await?,
                },
                None => stdin_open = false,
            },
            ev = ev_rx.recv() => match ev {
                Some(ev) => print_json(&mut stdout, &ev).await?,
                None => break,
            },
            Some(ev) = dht_rx.recv() => print_json(&mut stdout, &ev).await?,
        }
        if !stdin_open {
            break;
        }
    }
    drop(sink);
    // Print what is still reported while the service shuts down, and the DHT searches still
    // running (each ends within `dht_index::SEARCH_TIMEOUT`).
    while let Some(ev) = ev_rx.recv().await {
        print_json(&mut stdout, &ev).await?;
    }
    while let Some(ev) = dht_rx.recv().await {
        print_json(&mut stdout, &ev).await?;
    }
    Ok(())
}

async fn print_json(out: &mut tokio::io::Stdout, ev: &ChatEvent) -> Result<()> {
    let mut line = serde_json::to_vec(ev).context("encoding an event")?;
    line.push(b'\n');
    out.write_all(&line).await?;
    out.flush().await?;
    Ok(())
}

/// `swarmcast anchor` and `swarmcast node`: a headless node that relays and keeps history,
/// until Ctrl-C.
pub async fn relay(args: RelayArgs, role: &str) -> Result<()> {
    let data = args.data.clone().unwrap_or_else(|| default_data(role));
    let dht = start_dht(args.listen, args.advertise, &args.dht_bootstrap, args.no_dht).await?;
    let sharing =
        start_sharing(args.share.as_deref(), args.listen, args.advertise, &data, dht.as_ref())
            .await?;
    let config = ChatConfig {
        data,
        listen: args.listen,
        advertise: args.advertise,
        anchors: crate::anchors::resolve(&args.anchors).await?,
        nick: role.to_string(),
        rooms: vec!["general".to_string()],
        node: Default::default(),
        share: sharing.as_ref().map(|s| s.files.clone()).unwrap_or_default(),
        dht: dht.as_ref().map(|d| d.hook.clone()),
    };
    let (cmd_tx, cmd_rx) = mpsc::channel(8);
    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    let service = tokio::spawn(chat::run(config, cmd_rx, ev_tx));
    let role = role.to_string();
    let printer = tokio::spawn(async move {
        while let Some(ev) = ev_rx.recv().await {
            match ev {
                ChatEvent::Ready { id, addr, .. } => {
                    println!("{role} {id} listening on {addr} (udp)");
                }
                ChatEvent::Neighbor { up, peer } => {
                    tracing::info!("neighbor {} {peer}", if up { "up" } else { "down" });
                }
                _ => {}
            }
        }
    });
    let mut service = service;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        r = &mut service => {
            r.context("node panicked")??;
            return Ok(());
        }
    }
    drop(cmd_tx);
    service.await.context("node panicked")??;
    let _ = printer.await;
    if let Some(s) = sharing {
        s.shutdown().await;
    }
    Ok(())
}
