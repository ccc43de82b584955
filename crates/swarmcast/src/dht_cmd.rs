//! `swarmcast dht`: a Mainline DHT node, and one-shot lookups (`get-peers`, `announce`,
//! `find-node`) that print what the network answered, as text or `--json`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use dht::driver::Found;
use dht::proto::core::{Config, MutableItem};
use dht::{Dht, DhtOptions, NodeId};

#[derive(clap::Args, Clone)]
pub struct DhtNet {
    /// Where our node listens, IPv4 or IPv6 (repeat for one of each; port 0 picks one).
    /// Default: every address of both families (IPv6 if the host has it).
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// A node to join through, HOST:PORT (repeat for several; names resolve to both
    /// families).
    #[arg(long = "bootstrap", required = true)]
    bootstrap: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand, Clone)]
pub enum DhtCommand {
    /// Run a DHT node that others can join through (until Ctrl-C).
    Node {
        /// Where to listen, IPv4 or IPv6 (repeat for one of each). Default: 0.0.0.0:6881 and
        /// [::]:6881 (IPv6 if the host has it).
        #[arg(long)]
        listen: Vec<SocketAddr>,
        /// Nodes to join through, HOST:PORT (none: wait to be joined).
        #[arg(long = "bootstrap")]
        bootstrap: Vec<String>,
        /// BEP 43: look things up but answer no queries (others keep us out of their tables).
        #[arg(long)]
        read_only: bool,
        /// Keep the node's id and routing table in DIR/dht-nodes (written at most once a
        /// minute), so a restart is warm.
        #[arg(long)]
        data: Option<std::path::PathBuf>,
    },
    /// Find the peers of a torrent (40 hex digits).
    GetPeers {
        info_hash: String,
        #[command(flatten)]
        net: DhtNet,
    },
    /// Announce that a torrent (40 hex digits) is served on TCP PORT of this host.
    Announce {
        info_hash: String,
        #[arg(long)]
        port: u16,
        /// Announce as a seed (BEP 33: counted among the seeds by `dht scrape`).
        #[arg(long)]
        seed: bool,
        #[command(flatten)]
        net: DhtNet,
    },
    /// Estimate how many seeds and downloaders a torrent (40 hex digits) has, from the bloom
    /// filters of the nodes that store its peers (BEP 33).
    Scrape {
        info_hash: String,
        #[command(flatten)]
        net: DhtNet,
    },
    /// Ask one node which info-hashes it stores (BEP 51 sample_infohashes), or with an
    /// info-hash, the nodes around it (a lookup through --bootstrap).
    Sample {
        /// The node, HOST:PORT, or an info-hash (40 hex digits).
        node: String,
        /// A node to join through, HOST:PORT (repeatable; needed with an info-hash).
        #[arg(long = "bootstrap")]
        bootstrap: Vec<String>,
        /// Where our node listens, IPv4 or IPv6 (repeatable; default: both families).
        #[arg(long)]
        listen: Vec<SocketAddr>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Store TEXT in the DHT as an immutable item (BEP 44); prints its target.
    Put {
        text: String,
        #[command(flatten)]
        net: DhtNet,
    },
    /// Fetch the immutable item stored under a target (40 hex digits; BEP 44).
    Get {
        target: String,
        #[command(flatten)]
        net: DhtNet,
    },
    /// Store TEXT as a mutable item signed by the ed25519 key in FILE (BEP 44), with the next
    /// `seq`; FILE holds the key's 32-byte seed as 64 hex digits, and is created if missing.
    PutMutable {
        text: String,
        #[arg(long)]
        key: std::path::PathBuf,
        /// Several items per key, one per salt (at most 64 bytes).
        #[arg(long, default_value = "")]
        salt: String,
        #[command(flatten)]
        net: DhtNet,
    },
    /// Fetch the newest mutable item of a public key (64 hex digits) and salt (BEP 44).
    GetMutable {
        public_key: String,
        #[arg(long, default_value = "")]
        salt: String,
        #[command(flatten)]
        net: DhtNet,
    },
    /// Find the nodes closest to an id (40 hex digits).
    FindNode {
        target: String,
        #[command(flatten)]
        net: DhtNet,
    },
}

fn parse_id(s: &str) -> Result<NodeId> {
    let bytes = hex::decode(s).ok().filter(|b| b.len() == 20);
    match bytes.and_then(|b| NodeId::from_slice(&b)) {
        Some(id) => Ok(id),
        None => bail!("'{s}' is not an info-hash or node id: give 40 hex digits"),
    }
}

/// The addresses (both families) of HOST:PORT entries. Names that do not resolve are skipped
/// (one dead public router must not stop the rest); none resolving at all is an error saying
/// so.
pub(crate) fn resolve(list: &[String]) -> Result<Vec<SocketAddr>> {
    let mut out: Vec<SocketAddr> =
        list.iter().filter_map(|s| s.to_socket_addrs().ok()).flatten().collect();
    out.dedup();
    if out.is_empty() && !list.is_empty() {
        bail!("none of {list:?} resolves to an address: give HOST:PORT of a DHT node");
    }
    Ok(out)
}

/// The node's options for `--listen` (at most one address per family); none given: both
/// families on every address, on `port`.
fn listen_options(listen: &[SocketAddr], port: u16) -> Result<DhtOptions> {
    let mut o = DhtOptions::dual(port);
    if listen.is_empty() {
        return Ok(o);
    }
    (o.listen, o.listen6, o.ipv6_optional) = (None, None, false);
    for a in listen {
        let taken = match a {
            SocketAddr::V4(a) => o.listen.replace(*a).is_some(),
            SocketAddr::V6(a) => o.listen6.replace(*a).is_some(),
        };
        if taken {
            bail!("give --listen at most once per family (one IPv4, one IPv6 address)");
        }
    }
    Ok(o)
}

/// `--listen` as a person reads it.
fn shown(listen: &[SocketAddr]) -> String {
    if listen.is_empty() {
        return "every address".into();
    }
    listen.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and ")
}

async fn join(net: &DhtNet) -> Result<Dht> {
    let routers = resolve(&net.bootstrap)?;
    let options = listen_options(&net.listen, 0)?;
    let node = Dht::spawn(options)
        .await
        .with_context(|| format!("cannot listen on {} (is the port taken?)", shown(&net.listen)))?;
    let joined = node.bootstrap(routers).await?;
    if joined.nodes.is_empty() {
        bail!(
            "no DHT node answered at {:?}: check the address and that the node runs",
            net.bootstrap
        );
    }
    Ok(node)
}

fn print(r: &Found, json: bool) -> Result<()> {
    if json {
        let v = serde_json::json!({
            "target": r.target.to_string(),
            "nodes": r.nodes.iter().map(|n| serde_json::json!({
                "id": n.id.to_string(), "addr": n.addr.to_string()
            })).collect::<Vec<_>>(),
            "peers": r.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "announced_to": r.announced_to,
            "value": r.value.as_ref().map(|v| String::from_utf8_lossy(&v.encode()).into_owned()),
            "samples": r.samples.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "num": r.num,
            "interval": r.interval,
            "queries": r.queries,
            "answers": r.answers,
            "elapsed_ms": r.elapsed.as_secs_f64() * 1e3,
            "first_value_ms": r.first_value.map(|d| d.as_secs_f64() * 1e3),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for p in &r.peers {
        println!("peer {p}");
    }
    for n in &r.nodes {
        println!("node {} {}", n.id, n.addr);
    }
    if r.announced_to > 0 {
        println!("announced to {} nodes", r.announced_to);
    }
    match &r.value {
        Some(dht::proto::krpc::Value::Bytes(b)) => println!("value {}", String::from_utf8_lossy(b)),
        Some(v) => println!("value (bencoded) {}", String::from_utf8_lossy(&v.encode())),
        None => {}
    }
    if let Some(m) = &r.mutable {
        let text = match &m.value {
            dht::proto::krpc::Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            v => String::from_utf8_lossy(&v.encode()).into_owned(),
        };
        println!("value {text}");
        println!("seq {}", m.seq);
    }
    for s in &r.samples {
        println!("infohash {s}");
    }
    if let (Some(num), Some(interval)) = (r.num, r.interval) {
        println!("stores {num} info-hashes; ask again in {interval} s");
    }
    let first = r.first_value.map_or(String::new(), |d| {
        format!(", first answer with what it sought after {:.1} ms", d.as_secs_f64() * 1e3)
    });
    println!(
        "lookup: {} queries, {} answers, {:.1} ms{first}",
        r.queries,
        r.answers,
        r.elapsed.as_secs_f64() * 1e3
    );
    Ok(())
}

pub async fn run(cmd: DhtCommand) -> Result<()> {
    match cmd {
        DhtCommand::Node { listen, bootstrap, read_only, data } => {
            let routers = resolve(&bootstrap)?;
            let config = Config { read_only, ..Config::default() };
            if let Some(dir) = &data {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let state = data.map(|d| d.join("dht-nodes"));
            let options = DhtOptions { config, state, ..listen_options(&listen, 6881)? };
            let node = Dht::spawn(options).await.with_context(|| {
                format!("cannot listen on {} (is the port taken?)", shown(&listen))
            })?;
            let on = node.local_addrs().iter().map(ToString::to_string).collect::<Vec<_>>();
            eprintln!("DHT node {} on {} (Ctrl-C to stop)", node.id(), on.join(" and "));
            if !routers.is_empty() {
                let joined = node.bootstrap(routers).await?;
                eprintln!("joined: {} nodes answered", joined.nodes.len());
            }
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        let (v4, v6) = node.nodes_by_family().await?;
                        eprintln!("routing tables: {v4} IPv4 nodes, {v6} IPv6 nodes");
                    }
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        }
        DhtCommand::GetPeers { info_hash, net } => {
            let ih = parse_id(&info_hash)?;
            let node = join(&net).await?;
            print(&node.get_peers(ih).await?, net.json)
        }
        DhtCommand::Scrape { info_hash, net } => {
            let ih = parse_id(&info_hash)?;
            let node = join(&net).await?;
            let r = node.scrape(ih).await?;
            let Some(s) = &r.scrape else {
                bail!("no node answered the scrape (BEP 33): none stores {info_hash}'s peers?");
            };
            if net.json {
                let v = serde_json::json!({
                    "seeds": s.seeds.estimate(),
                    "downloaders": s.downloaders.estimate(),
                    "nodes": s.nodes,
                    "queries": r.queries,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "about {:.0} seeds and {:.0} downloaders (BEP 33 estimates, counted by \
                     address, from {} nodes' filters)",
                    s.seeds.estimate(),
                    s.downloaders.estimate(),
                    s.nodes
                );
            }
            Ok(())
        }
        DhtCommand::Announce { info_hash, port, seed, net } => {
            let ih = parse_id(&info_hash)?;
            let node = join(&net).await?;
            let r = node.announce(ih, port, seed).await?;
            if r.announced_to == 0 {
                bail!("no node took the announcement (none gave a token)");
            }
            print(&r, net.json)
        }
        DhtCommand::Sample { node, bootstrap, listen, json } if parse_id(&node).is_ok() => {
            let target = parse_id(&node)?;
            if bootstrap.is_empty() {
                bail!("sampling around an info-hash is a lookup: give --bootstrap HOST:PORT");
            }
            let r = join(&DhtNet { listen, bootstrap, json }).await?.sample_around(target).await?;
            if r.nodes.is_empty() {
                bail!("no node around {node} answered sample_infohashes (none with BEP 51?)");
            }
            print(&r, json)
        }
        DhtCommand::Sample { node, listen, json, .. } => {
            let addrs = resolve(std::slice::from_ref(&node))?;
            let ours = Dht::spawn(listen_options(&listen, 0)?).await.with_context(|| {
                format!("cannot listen on {} (is the port taken?)", shown(&listen))
            })?;
            // An address of a family our node runs (a name may resolve to both).
            let runs =
                |a: &SocketAddr| ours.local_addrs().iter().any(|l| l.is_ipv4() == a.is_ipv4());
            let Some(&to) = addrs.iter().find(|a| runs(a)) else {
                bail!(
                    "{node} has no address of the family our node listens on ({})",
                    shown(&listen)
                );
            };
            let r = ours.sample(to).await?;
            if r.num.is_none() {
                bail!("{node} did not answer sample_infohashes (not running, or no BEP 51)");
            }
            print(&r, json)
        }
        DhtCommand::Put { text, net } => {
            let value = dht::proto::krpc::Value::Bytes(text.into_bytes());
            if value.encode().len() > dht::proto::krpc::MAX_VALUE {
                bail!("the item is over BEP 44's 1,000 bytes (bencoded): shorten it");
            }
            let node = join(&net).await?;
            let r = node.put_item(value).await?;
            if r.announced_to == 0 {
                bail!("no node took the item (none gave a token)");
            }
            println!("target {}", r.target);
            print(&r, net.json)
        }
        DhtCommand::Get { target, net } => {
            let t = parse_id(&target)?;
            let node = join(&net).await?;
            let r = node.get_item(t).await?;
            if r.value.is_none() {
                bail!("no node had an item for {target}");
            }
            print(&r, net.json)
        }
        DhtCommand::PutMutable { text, key, salt, net } => {
            use ed25519_dalek::Signer;
            if salt.len() > dht::proto::krpc::MAX_SALT {
                bail!("the salt is over BEP 44's 64 bytes");
            }
            let value = dht::proto::krpc::Value::Bytes(text.into_bytes());
            if value.encode().len() > dht::proto::krpc::MAX_VALUE {
                bail!("the item is over BEP 44's 1,000 bytes (bencoded): shorten it");
            }
            let signing = load_or_create_key(&key)?;
            let pk = signing.verifying_key().to_bytes();
            println!("public key {}", hex::encode(pk));
            let node = join(&net).await?;
            let current = node.get_mutable(pk, salt.as_bytes().to_vec()).await?;
            let seq = current.mutable.map_or(1, |m| m.seq + 1);
            let signed = MutableItem::signed_bytes(salt.as_bytes(), seq, &value);
            let sig = signing.sign(&signed).to_bytes();
            let item = MutableItem { key: pk, salt: salt.into_bytes(), seq, value, sig };
            let r = node.put_mutable(item).await?;
            if r.announced_to == 0 {
                bail!("no node took the item (none gave a token)");
            }
            println!("target {} seq {seq}", r.target);
            print(&r, net.json)
        }
        DhtCommand::GetMutable { public_key, salt, net } => {
            let pk: [u8; 32] = hex::decode(&public_key)
                .ok()
                .and_then(|b| b.try_into().ok())
                .context("give the public key as 64 hex digits")?;
            let node = join(&net).await?;
            let r = node.get_mutable(pk, salt.into_bytes()).await?;
            if r.mutable.is_none() {
                bail!("no node had a validly signed item for that key and salt");
            }
            print(&r, net.json)
        }
        DhtCommand::FindNode { target, net } => {
            let t = parse_id(&target)?;
            let node = join(&net).await?;
            print(&node.find_node(t).await?, net.json)
        }
    }
}

/// The routers a node joins through when no `--dht-bootstrap` is given (libtorrent's and
/// Transmission's defaults).
pub const PUBLIC_ROUTERS: &[&str] = &[
    "router.bittorrent.com:6881",
    "router.utorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "dht.libtorrent.org:25401",
];

/// How often a download asks the DHT for peers again.
pub const RELOOKUP: Duration = Duration::from_secs(5 * 60);

/// How long a download that got its first peers from a lookup waits for more before it starts.
const FIRST_PEERS_GRACE: Duration = Duration::from_millis(500);

/// The peers a streaming `get_peers` lookup gives first: its first batch and whatever follows
/// within [`FIRST_PEERS_GRACE`] (none if it ends with none), and the stream, unless it ended.
pub async fn first_peers(
    mut batches: tokio::sync::mpsc::Receiver<Vec<SocketAddr>>,
) -> (Vec<SocketAddr>, Option<tokio::sync::mpsc::Receiver<Vec<SocketAddr>>>) {
    let Some(mut found) = batches.recv().await else {
        return (vec![], None);
    };
    let grace = tokio::time::sleep(FIRST_PEERS_GRACE);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            b = batches.recv() => match b {
                Some(b) => found.extend(b),
                None => return (found, None),
            },
            _ = &mut grace => return (found, Some(batches)),
        }
    }
}

/// The next batch of a lookup's peers; never resolves without a stream (`None` when it ends).
pub async fn next_batch(
    batches: &mut Option<tokio::sync::mpsc::Receiver<Vec<SocketAddr>>>,
) -> Option<Vec<SocketAddr>> {
    match batches {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// How often a seed announces itself again (libtorrent: every 15 minutes).
pub const REANNOUNCE: Duration = Duration::from_secs(15 * 60);

/// Starts a DHT node for `get` or `seed` (the node of `shared`'s family on that socket: the
/// session's port) and joins through `bootstrap` (the public routers when empty). Never fails
/// the transfer: a DHT that cannot start or join says so and is `None`.
pub async fn node_for_torrent(
    bind: std::net::IpAddr,
    bootstrap: &[String],
    state: Option<std::path::PathBuf>,
    shared: Option<dht::SharedSocket>,
) -> Option<Dht> {
    let list: Vec<String> = if bootstrap.is_empty() {
        PUBLIC_ROUTERS.iter().map(|s| s.to_string()).collect()
    } else {
        bootstrap.to_vec()
    };
    let routers = match resolve(&list) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("DHT: {e}; or give --no-dht");
            return None;
        }
    };
    let mut options = DhtOptions { shared, ..DhtOptions::for_bind(bind) };
    if let Some(path) = state {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        options.state = Some(path);
    }
    let spawned = match Dht::spawn(options.clone()).await {
        Err(e) if options.state.is_some() => {
            // In use by another swarmcast, or not a state file: this run starts cold.
            eprintln!("DHT: {e}; starting without saved nodes");
            Dht::spawn(DhtOptions { state: None, ..options }).await
        }
        r => r,
    };
    let node = match spawned {
        Ok(n) => n,
        Err(e) => {
            eprintln!("DHT: cannot open a UDP socket ({e}); going on without it");
            return None;
        }
    };
    match node.bootstrap(routers).await {
        Ok(r) if !r.nodes.is_empty() => Some(node),
        _ => {
            eprintln!("DHT: no node answered at {list:?}; going on without it");
            None
        }
    }
}

/// Where `get` and `seed` keep the DHT's state by default: `$XDG_STATE_HOME/swarmcast/dht-nodes`,
/// else `~/.local/state/swarmcast/dht-nodes`; `None` without either variable.
pub fn default_state_file() -> Option<std::path::PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".local/state"),
    };
    Some(base.join("swarmcast").join("dht-nodes"))
}

/// Saves the DHT's state, if there is a node and it has a state file; a failure is reported,
/// not fatal.
pub async fn save_state(node: Option<&Dht>) {
    if let Some(node) = node {
        if let Ok(Err(e)) = node.save().await {
            eprintln!("DHT: cannot save the DHT state: {e}");
        }
    }
}

/// Announces `info_hash` on the port of `listen` (where the session accepts peers) now and
/// every [`REANNOUNCE`], as a seed or a downloader (BEP 33's `seed`), until the task is
/// aborted. A downloader announces too, as libtorrent's do, so the swarm's other downloaders
/// find it. Only the families `listen` serves are announced in (`0.0.0.0`: IPv4; `[::]`:
/// both, as a Linux socket on `[::]` takes IPv4 too unless `net.ipv6.bindv6only` is set), so
/// no peer is sent to an address where nothing listens.
pub fn keep_announcing(
    node: std::sync::Arc<Dht>,
    info_hash: NodeId,
    listen: SocketAddr,
    seed: bool,
) -> tokio::task::JoinHandle<()> {
    let (ipv4, ipv6) = match listen {
        SocketAddr::V4(_) => (true, false),
        SocketAddr::V6(a) if a.ip().is_unspecified() => (true, true),
        SocketAddr::V6(_) => (false, true),
    };
    let port = listen.port();
    tokio::spawn(async move {
        loop {
            match node.announce_over(info_hash, port, seed, ipv4, ipv6).await {
                Ok(r) if r.announced_to > 0 => {
                    tracing::info!("DHT: announced to {} nodes", r.announced_to);
                }
                // A downloader's announce is a courtesy; only a seed's failure is worth saying.
                Ok(_) if !seed => {}
                Ok(_) => eprintln!("DHT: no node took our announcement; trying again later"),
                Err(_) => return,
            }
            tokio::time::sleep(REANNOUNCE).await;
        }
    })
}

/// The ed25519 key whose 32-byte seed FILE holds as 64 hex digits; a missing FILE is created
/// with a new random key (readable by its owner only). An existing file is never overwritten.
fn load_or_create_key(path: &std::path::Path) -> Result<ed25519_dalek::SigningKey> {
    use std::io::Write;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let seed: [u8; 32] =
                hex::decode(text.trim()).ok().and_then(|b| b.try_into().ok()).with_context(
                    || format!("{} does not hold a key (64 hex digits)", path.display()),
                )?;
            Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options
                .open(path)
                .with_context(|| format!("cannot create the key file {}", path.display()))?;
            writeln!(f, "{}", hex::encode(seed))?;
            eprintln!("created a new key in {}", path.display());
            Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}
