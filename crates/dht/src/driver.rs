//! The tokio driver of the DHT: one task running one [`DhtCore`] per address family, each on
//! its own UDP socket (BEP 32: an IPv4 node and an IPv6 node, as libtorrent runs one node per
//! socket, each with its own id and routing table). It feeds the cores every datagram and
//! deadline, carries out what they ask (`Send`), and answers the [`Dht`] handle: a lookup runs
//! in both families at once and its result merges both (nodes of both, peers of both). All
//! protocol logic is in the cores.
//!
//! The cores help each other join: lookup queries ask for both families' nodes (BEP 32's
//! `want`), and the nodes of the other family that answers name are pinged by that family's
//! core; each core answers a `want` for the other family from a copy of the other's table,
//! refreshed when a table's size changes (at most once per [`FOREIGN_EVERY`]) and at least
//! every [`FOREIGN_MAX_AGE`].
//!
//! With [`DhtOptions::state`], the node keeps its ids and routing tables in a file
//! ([`crate::state`]), written at most once per [`DhtOptions::save_every`] (a minute by
//! default: rqbit's users complained of constant writes), so a restart is warm: the saved
//! nodes are asked first.
//!
//! With [`DhtOptions::shared`], the node of one family runs on a socket it shares with another
//! protocol ([`SharedSocket`]: uTP on the port peers connect to, as libtorrent runs its DHT on
//! its listen port), reading the datagrams the socket's owner passes on.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::proto::addr::NodeAddr;
use crate::proto::core::{Config, DhtCore, Input, LookupId, LookupResult, MutableItem, Output};
use crate::proto::id::NodeId;
use crate::proto::krpc::{CompactNode, Value};
use crate::state::State;

pub use crate::state::MAX_SAVED_NODES;

/// A datagram buffer larger than any message we accept, so an oversized one is seen whole and
/// refused by the codec rather than cut.
const RECV_BUF: usize = 4096;

/// How often, at most, each core's copy of the other family's nodes is refreshed (for BEP
/// 32's `want`): when a table's size changed, at most once per this.
pub const FOREIGN_EVERY: Duration = Duration::from_millis(100);
/// The oldest a copy of the other family's nodes gets (a full table changes its nodes, not
/// its size).
pub const FOREIGN_MAX_AGE: Duration = Duration::from_secs(60);

/// A lookup's result, with nodes and peers of both families.
pub type Found = LookupResult<SocketAddr>;

/// How a DHT node starts.
#[derive(Clone, Debug)]
pub struct DhtOptions {
    /// Where the IPv4 node listens (port 0 picks one); `None`: no IPv4 node.
    pub listen: Option<SocketAddrV4>,
    /// Where the IPv6 node listens (BEP 32); `None`: no IPv6 node.
    pub listen6: Option<SocketAddrV6>,
    /// Start without the IPv6 node when its socket cannot be bound (a host without IPv6), and
    /// say so, rather than fail.
    pub ipv6_optional: bool,
    /// Our node id (both families'); random if `None` (or the saved ones, with `state`).
    pub id: Option<NodeId>,
    pub config: Config,
    /// A file for our ids and routing tables (see the module docs).
    pub state: Option<PathBuf>,
    /// How often the state file is written, at most.
    pub save_every: Duration,
    /// A socket shared with another protocol: the node of its family runs on it (in place of
    /// `listen` or `listen6`).
    pub shared: Option<SharedSocket>,
}

/// Datagrams a node receives from whoever owns its socket, with their senders.
pub type Datagrams = mpsc::Receiver<(Vec<u8>, SocketAddr)>;

/// A UDP socket the node shares with another protocol: it sends on `socket` and reads the
/// datagrams the socket's owner passes on (the bencoded ones). One node takes it; a copy of
/// an options value that holds one refers to the same socket.
#[derive(Clone, Debug)]
pub struct SharedSocket {
    socket: Arc<UdpSocket>,
    incoming: Arc<Mutex<Option<Datagrams>>>,
}

impl SharedSocket {
    pub fn new(socket: Arc<UdpSocket>, incoming: Datagrams) -> SharedSocket {
        SharedSocket { socket, incoming: Arc::new(Mutex::new(Some(incoming))) }
    }

    /// The datagrams, for the node that starts on this socket (`None` if one already did).
    fn take(&self) -> Option<Datagrams> {
        self.incoming.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl DhtOptions {
    /// A node of one family on `listen`, with a random id, default settings and no state
    /// file.
    pub fn new(listen: impl Into<SocketAddr>) -> DhtOptions {
        let (listen, listen6) = match listen.into() {
            SocketAddr::V4(a) => (Some(a), None),
            SocketAddr::V6(a) => (None, Some(a)),
        };
        DhtOptions {
            listen,
            listen6,
            ipv6_optional: false,
            id: None,
            config: Config::default(),
            state: None,
            save_every: Duration::from_secs(60),
            shared: None,
        }
    }

    /// Nodes of both families on every address, `0.0.0.0:port` and `[::]:port` (the IPv6
    /// one only if the host has IPv6).
    pub fn dual(port: u16) -> DhtOptions {
        DhtOptions {
            listen6: Some(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0)),
            ipv6_optional: true,
            ..DhtOptions::new(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
        }
    }

    /// The node a torrent client bound to `bind` runs: both families when `bind` is
    /// unspecified (`0.0.0.0` or `::`), else that address's family alone.
    pub fn for_bind(bind: IpAddr) -> DhtOptions {
        if bind.is_unspecified() {
            DhtOptions::dual(0)
        } else {
            DhtOptions::new((bind, 0))
        }
    }
}

/// Takes the exclusive lock of a state file (`PATH.lock`, created if missing), held while the
/// node runs; `WouldBlock` when another node holds it.
fn lock_state(path: &Path) -> io::Result<std::fs::File> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&name)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("{} is in use by another DHT node", path.display()),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Writes the state file through a temporary file and a rename, so a crash leaves the old one.
fn save_state(path: &Path, state: &State) -> io::Result<()> {
    // A temporary name of our own beside it (the lock keeps other nodes off this path), on
    // disk before the rename, so a crash or power loss leaves the old file or the new one.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&state.encode())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Batches of peers a streaming `get_peers` buffers for its caller.
const PEER_BATCHES: usize = 64;

enum Command {
    Bootstrap(Vec<SocketAddr>, oneshot::Sender<Found>),
    FindNode(NodeId, oneshot::Sender<Found>),
    GetPeers(NodeId, Option<mpsc::Sender<Vec<SocketAddr>>>, oneshot::Sender<Found>),
    Announce(NodeId, u16, bool, [bool; 2], oneshot::Sender<Found>),
    Scrape(NodeId, oneshot::Sender<Found>),
    Sample(SocketAddr, NodeId, oneshot::Sender<Found>),
    SampleAround(NodeId, oneshot::Sender<Found>),
    GetItem(NodeId, oneshot::Sender<Found>),
    PutItem(Value, oneshot::Sender<Found>),
    GetMutable([u8; 32], Vec<u8>, oneshot::Sender<Found>),
    PutMutable(MutableItem, oneshot::Sender<Found>),
    IndexGet(NodeId, oneshot::Sender<Found>),
    IndexPut(NodeId, MutableItem, oneshot::Sender<Found>),
    Nodes(oneshot::Sender<(usize, usize)>),
    Save(oneshot::Sender<io::Result<()>>),
}

/// A running DHT node (one per family, see the module docs). Dropping it stops the node.
pub struct Dht {
    commands: mpsc::Sender<Command>,
    local_addr: Option<SocketAddrV4>,
    local_addr6: Option<SocketAddrV6>,
    id: NodeId,
    id6: Option<NodeId>,
    task: tokio::task::JoinHandle<()>,
}

/// The node stopped (its task ended).
#[derive(Debug, thiserror::Error)]
#[error("the DHT node has stopped")]
pub struct Stopped;

/// One family's node: its socket and its core.
struct Family<A: NodeAddr> {
    socket: Arc<UdpSocket>,
    /// On a shared socket, the datagrams its owner passes on (else the node reads the socket).
    incoming: Option<Datagrams>,
    core: DhtCore<StdRng, A>,
    buf: Vec<u8>,
}

impl<A: NodeAddr> Family<A> {
    async fn bind(listen: A) -> io::Result<(Arc<UdpSocket>, A)> {
        let listen: SocketAddr = listen.into();
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(listen),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        if listen.is_ipv6() {
            // The IPv4 node has its own socket: this one takes IPv6 alone, so both can have
            // the same port.
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&listen.into())?;
        Family::on(Arc::new(UdpSocket::from_std(socket.into())?))
    }

    /// A socket bound by someone else, if it is of this family.
    fn on(socket: Arc<UdpSocket>) -> io::Result<(Arc<UdpSocket>, A)> {
        let local = A::from_socket(socket.local_addr()?)
            .ok_or_else(|| io::Error::other(format!("the DHT socket is not {}", A::NAME)))?;
        Ok((socket, local))
    }

    fn new(
        (socket, incoming): (Arc<UdpSocket>, Option<Datagrams>),
        id: NodeId,
        config: Config,
        saved: &[CompactNode<A>],
    ) -> Self {
        let mut core = DhtCore::new(Instant::now(), id, config, StdRng::from_os_rng());
        if !saved.is_empty() {
            // A warm start: the saved nodes closest to us are asked for the nodes near us.
            core.bootstrap_from(Instant::now(), saved);
        }
        Family { socket, incoming, core, buf: vec![0u8; RECV_BUF] }
    }
}

impl Dht {
    /// Binds the sockets and starts the node's task.
    pub async fn spawn(options: DhtOptions) -> io::Result<Dht> {
        let shared = options.shared.as_ref().map(|s| s.socket.clone());
        let shared_v4 = shared.as_ref().map(|s| s.local_addr()).transpose()?.map(|a| a.is_ipv4());
        let v4 = match (options.listen, shared_v4) {
            (_, Some(true)) => shared.clone().map(Family::on).transpose()?,
            (Some(a), _) => Some(Family::bind(a).await?),
            (None, _) => None,
        };
        let v6 = match (options.listen6, shared_v4) {
            (_, Some(false)) => shared.map(Family::on).transpose()?,
            (None, _) => None,
            (Some(a), _) => match Family::bind(a).await {
                Ok(f) => Some(f),
                Err(e) if options.ipv6_optional && v4.is_some() => {
                    tracing::warn!("DHT: no IPv6 node ({e}); running over IPv4 only");
                    None
                }
                Err(e) => return Err(e),
            },
        };
        if v4.is_none() && v6.is_none() {
            return Err(io::Error::other("a DHT node needs an IPv4 or an IPv6 address"));
        }
        // One process per state file: a second finds the lock taken (`WouldBlock`).
        let lock = match &options.state {
            Some(path) => Some(lock_state(path)?),
            None => None,
        };
        let saved = match &options.state {
            Some(path) => crate::state::load(path)?.unwrap_or_default(),
            None => State::default(),
        };
        let mut rng = StdRng::from_os_rng();
        let id = options.id.or(saved.id).unwrap_or_else(|| NodeId::random(&mut rng));
        let id6 = options.id.or(saved.id6).unwrap_or_else(|| NodeId::random(&mut rng));
        let both = v4.is_some() && v6.is_some();
        let config = Config { want_both: both, ..options.config };
        let (local_addr, local_addr6) = (v4.as_ref().map(|f| f.1), v6.as_ref().map(|f| f.1));
        // Taken last, so a node that fails to start leaves the shared socket to the next try.
        let mut incoming = match &options.shared {
            Some(s) => Some(s.take().ok_or_else(|| {
                io::Error::other("another DHT node already runs on the shared socket")
            })?),
            None => None,
        };
        let mut sharing = |socket: Arc<UdpSocket>| {
            let on_shared =
                options.shared.as_ref().is_some_and(|s| Arc::ptr_eq(&s.socket, &socket));
            (socket, if on_shared { incoming.take() } else { None })
        };
        let v4 = v4.map(|(s, _)| Family::new(sharing(s), id, config.clone(), &saved.nodes));
        let v6 = v6.map(|(s, _)| Family::new(sharing(s), id6, config, &saved.nodes6));
        let (commands, rx) = mpsc::channel(64);
        let state = options.state.map(|path| (path, options.save_every));
        let task = tokio::spawn(async move {
            run(v4, v6, rx, state).await;
            drop(lock);
        });
        let id = if local_addr.is_some() { id } else { id6 };
        let id6 = local_addr6.map(|_| id6);
        Ok(Dht { commands, local_addr, local_addr6, id, id6, task })
    }

    /// The address the IPv4 node listens on, or else the IPv6 node's.
    pub fn local_addr(&self) -> SocketAddr {
        match (self.local_addr, self.local_addr6) {
            (Some(a), _) => a.into(),
            (None, Some(a)) => a.into(),
            (None, None) => unreachable!("spawn refuses a node without an address"),
        }
    }

    /// The addresses the node listens on: IPv4 first, then IPv6 (if it runs).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let v4 = self.local_addr.map(SocketAddr::V4);
        v4.into_iter().chain(self.local_addr6.map(SocketAddr::V6)).collect()
    }

    /// Our node id (the IPv4 node's, if it runs).
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The IPv6 node's id, if it runs.
    pub fn id6(&self) -> Option<NodeId> {
        self.id6
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Joins through `routers` (asks them for the nodes closest to us; each family's node
    /// asks the routers of its family); returns when those lookups end.
    pub async fn bootstrap(&self, routers: Vec<SocketAddr>) -> Result<Found, Stopped> {
        self.ask(|tx| Command::Bootstrap(routers, tx)).await
    }

    /// The nodes closest to `target`.
    pub async fn find_node(&self, target: NodeId) -> Result<Found, Stopped> {
        self.ask(|tx| Command::FindNode(target, tx)).await
    }

    /// The peers of `info_hash`.
    pub async fn get_peers(&self, info_hash: NodeId) -> Result<Found, Stopped> {
        self.ask(|tx| Command::GetPeers(info_hash, None, tx)).await
    }

    /// The peers of `info_hash` as the lookups find them: batches of new peers on the first
    /// receiver (which closes when the lookups end; a batch the caller is too slow to take is
    /// dropped, and is in the result), and the whole result on the second.
    pub async fn get_peers_streaming(
        &self,
        info_hash: NodeId,
    ) -> Result<(mpsc::Receiver<Vec<SocketAddr>>, oneshot::Receiver<Found>), Stopped> {
        let (batches_tx, batches) = mpsc::channel(PEER_BATCHES);
        let (tx, done) = oneshot::channel();
        let cmd = Command::GetPeers(info_hash, Some(batches_tx), tx);
        self.commands.send(cmd).await.map_err(|_| Stopped)?;
        Ok((batches, done))
    }

    /// Announces that we serve `info_hash` on TCP `port`, as a seed or not (BEP 33), in each
    /// family (a peer is stored with the address its announce came from).
    pub async fn announce(
        &self,
        info_hash: NodeId,
        port: u16,
        seed: bool,
    ) -> Result<Found, Stopped> {
        self.announce_over(info_hash, port, seed, true, true).await
    }

    /// [`Dht::announce`] over the families named (those whose addresses serve `port`); the
    /// others run no lookup (look peers up with [`Dht::get_peers`]).
    pub async fn announce_over(
        &self,
        info_hash: NodeId,
        port: u16,
        seed: bool,
        ipv4: bool,
        ipv6: bool,
    ) -> Result<Found, Stopped> {
        self.ask(|tx| Command::Announce(info_hash, port, seed, [ipv4, ipv6], tx)).await
    }

    /// Estimates the size of `info_hash`'s swarm from the nodes' bloom filters (BEP 33).
    pub async fn scrape(&self, info_hash: NodeId) -> Result<Found, Stopped> {
        self.ask(|tx| Command::Scrape(info_hash, tx)).await
    }

    /// Asks the node at `node` which info-hashes it stores (BEP 51).
    pub async fn sample(&self, node: SocketAddr) -> Result<Found, Stopped> {
        self.ask(|tx| Command::Sample(node, self.id, tx)).await
    }

    /// The info-hashes the nodes around `target` store, sampled (BEP 51).
    pub async fn sample_around(&self, target: NodeId) -> Result<Found, Stopped> {
        self.ask(|tx| Command::SampleAround(target, tx)).await
    }

    /// The immutable item stored under `target` (BEP 44), checked against it.
    pub async fn get_item(&self, target: NodeId) -> Result<Found, Stopped> {
        self.ask(|tx| Command::GetItem(target, tx)).await
    }

    /// Puts an immutable item (BEP 44) at the nodes closest to its target; the result's target
    /// is the item's, `announced_to` the nodes that took it.
    pub async fn put_item(&self, value: Value) -> Result<Found, Stopped> {
        self.ask(|tx| Command::PutItem(value, tx)).await
    }

    /// The newest mutable item of `key` and `salt` whose signature verifies (BEP 44).
    pub async fn get_mutable(&self, key: [u8; 32], salt: Vec<u8>) -> Result<Found, Stopped> {
        self.ask(|tx| Command::GetMutable(key, salt, tx)).await
    }

    /// Puts a signed mutable item (BEP 44) at the nodes closest to its target.
    pub async fn put_mutable(&self, item: MutableItem) -> Result<Found, Stopped> {
        self.ask(|tx| Command::PutMutable(item, tx)).await
    }

    /// The keyword index entries under `target` (see [`crate::proto::core::index_target`])
    /// whose signatures verify: the result's `items`.
    pub async fn index_get(&self, target: NodeId) -> Result<Found, Stopped> {
        self.ask(|tx| Command::IndexGet(target, tx)).await
    }

    /// Puts a signed entry under `target` in the keyword index at the nodes closest to it.
    pub async fn index_put(&self, target: NodeId, item: MutableItem) -> Result<Found, Stopped> {
        self.ask(|tx| Command::IndexPut(target, item, tx)).await
    }

    /// Writes the state file now (a one-shot command's last act, so its next run is warm even
    /// if it ran for less than `save_every`); without a state file, does nothing.
    pub async fn save(&self) -> Result<io::Result<()>, Stopped> {
        self.ask(Command::Save).await
    }

    /// Nodes in the routing tables (both families).
    pub async fn nodes(&self) -> Result<usize, Stopped> {
        self.ask(Command::Nodes).await.map(|(a, b)| a + b)
    }

    /// Nodes in the IPv4 and in the IPv6 routing table.
    pub async fn nodes_by_family(&self) -> Result<(usize, usize), Stopped> {
        self.ask(Command::Nodes).await
    }
}

impl Drop for Dht {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request being answered: the lookup of each family's core (IPv4, IPv6) still running,
/// what the finished ones found, and where the answer goes.
struct Pending {
    target: NodeId,
    lookups: [Option<LookupId>; 2],
    found: Option<Found>,
    reply: Option<oneshot::Sender<Found>>,
    stream: Option<mpsc::Sender<Vec<SocketAddr>>>,
}

impl Pending {
    /// Sends the answer once no lookup runs; true when done.
    fn finish_if_done(&mut self) -> bool {
        if self.lookups.iter().any(Option::is_some) {
            return false;
        }
        let found = self.found.take().unwrap_or_else(|| nothing(self.target));
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(found);
        }
        // Dropping the stream's sender closes the caller's stream of batches.
        self.stream = None;
        true
    }
}

/// The result of a lookup that no family could run.
fn nothing(target: NodeId) -> Found {
    LookupResult {
        id: LookupId(u64::MAX),
        target,
        nodes: Vec::new(),
        peers: Vec::new(),
        announced_to: 0,
        queries: 0,
        answers: 0,
        elapsed: Duration::ZERO,
        first_value: None,
        first_hops: None,
        value: None,
        mutable: None,
        items: Vec::new(),
        samples: Vec::new(),
        num: None,
        interval: None,
        scrape: None,
    }
}

/// Carries out what `family`'s core asks (family 0: IPv4, 1: IPv6); the other family's nodes
/// it heard of go to `others`. False when it asked nothing.
async fn drain<A: NodeAddr>(
    family: &mut Family<A>,
    slot: usize,
    pending: &mut Vec<Pending>,
    others: &mut Vec<CompactNode<A::Other>>,
) -> bool {
    let mut any = false;
    while let Some(out) = family.core.poll() {
        any = true;
        match out {
            Output::Send { to, bytes } => {
                // A datagram that cannot be sent is a lost packet; the core's timeout handles
                // it.
                let _ = family.socket.send_to(&bytes, to.into()).await;
            }
            Output::Peers { lookup, peers } => {
                let p = pending.iter().find(|p| p.lookups[slot] == Some(lookup));
                if let Some(tx) = p.and_then(|p| p.stream.as_ref()) {
                    let _ = tx.try_send(peers.into_iter().map(Into::into).collect());
                }
            }
            Output::OtherFamily(nodes) => {
                if others.len() < 4 * crate::proto::table::K * 8 {
                    others.extend(nodes);
                }
            }
            Output::Done(result) => {
                let Some(i) = pending.iter().position(|p| p.lookups[slot] == Some(result.id))
                else {
                    continue;
                };
                let p = &mut pending[i];
                p.lookups[slot] = None;
                let found = result.widen();
                match &mut p.found {
                    Some(f) => f.merge(found),
                    None => p.found = Some(found),
                }
                if p.finish_if_done() {
                    pending.swap_remove(i);
                }
            }
        }
    }
    any
}

/// Takes the nodes of `family` that the other family's answers named: while its table is
/// smaller than a bucket, it joins through them (a lookup of its own id, one at a time);
/// after that it pings those its table would take. True when it asked something.
fn meet<A: NodeAddr>(
    family: &mut Family<A>,
    slot: usize,
    heard: &mut Vec<CompactNode<A>>,
    pending: &mut Vec<Pending>,
) -> bool {
    if heard.is_empty() {
        return false;
    }
    let now = Instant::now();
    let joining = pending.iter().any(|p| p.reply.is_none() && p.lookups[slot].is_some());
    if family.core.table().len() < crate::proto::table::K {
        if !joining {
            let id = family.core.bootstrap_from(now, heard);
            let mut lookups = [None, None];
            lookups[slot] = Some(id);
            let target = family.core.id();
            pending.push(Pending { target, lookups, found: None, reply: None, stream: None });
        }
    } else {
        for n in heard.drain(..) {
            family.core.ping_if_wanted(now, n);
        }
    }
    heard.clear();
    true
}

/// Waits for a datagram on `family`'s socket; never resolves without one.
async fn recv<A: NodeAddr>(family: &mut Option<Family<A>>) -> io::Result<(usize, SocketAddr)> {
    let Some(f) = family else { return std::future::pending().await };
    let Some(incoming) = &mut f.incoming else { return f.socket.recv_from(&mut f.buf).await };
    loop {
        match incoming.recv().await {
            // Larger than any message we accept: refused here as the codec would.
            Some((bytes, from)) if bytes.len() <= f.buf.len() => {
                f.buf[..bytes.len()].copy_from_slice(&bytes);
                return Ok((bytes.len(), from));
            }
            Some(_) => {}
            // The socket's owner stopped: nothing more arrives.
            None => return std::future::pending().await,
        }
    }
}

fn handle<A: NodeAddr>(family: &mut Option<Family<A>>, got: io::Result<(usize, SocketAddr)>) {
    // Errors such as ICMP port-unreachable reports are not datagrams; an IPv4-mapped sender
    // on the IPv6 socket cannot happen (it is IPv6-only) and is dropped.
    let (Some(f), Ok((n, from))) = (family, got) else { return };
    if let Some(from) = A::from_socket(from) {
        f.core.handle(Instant::now(), Input::Datagram { from, bytes: &f.buf[..n] });
    }
}

fn state_of(v4: &Option<Family<SocketAddrV4>>, v6: &Option<Family<SocketAddrV6>>) -> State {
    State {
        id: v4.as_ref().map(|f| f.core.id()),
        id6: v6.as_ref().map(|f| f.core.id()),
        nodes: v4.as_ref().map_or(Vec::new(), |f| f.core.table().nodes()),
        nodes6: v6.as_ref().map_or(Vec::new(), |f| f.core.table().nodes()),
    }
}

async fn run(
    mut v4: Option<Family<SocketAddrV4>>,
    mut v6: Option<Family<SocketAddrV6>>,
    mut rx: mpsc::Receiver<Command>,
    state: Option<(PathBuf, Duration)>,
) {
    let mut pending: Vec<Pending> = Vec::new();
    let mut saved_at = Instant::now();
    // In the past, so the first change of a table is copied at once.
    let mut foreign_at = Instant::now().checked_sub(FOREIGN_EVERY).unwrap_or_else(Instant::now);
    // The tables' sizes when the copies were made.
    let mut copied = (0, 0);
    let (mut to6, mut to4) = (Vec::new(), Vec::new());
    // Starts a request in each family's core (`$core` is bound to it), or in those `$which`
    // allows.
    macro_rules! start {
        ($target:expr, $reply:expr, $stream:expr, |$core:ident| $e:expr) => {{
            let now = Instant::now();
            let a = v4.as_mut().map(|f| {
                let $core = &mut f.core;
                $e(now)
            });
            let b = v6.as_mut().map(|f| {
                let $core = &mut f.core;
                $e(now)
            });
            let (reply, stream) = (Some($reply), $stream);
            pending.push(Pending { target: $target, lookups: [a, b], found: None, reply, stream });
        }};
    }
    loop {
        if let Some((path, every)) = &state {
            // The save's turn comes every `every` even with nothing to save, so its deadline
            // never stays in the past (that would wake this loop without pause).
            if saved_at.elapsed() >= *every {
                saved_at = Instant::now();
                let s = state_of(&v4, &v6);
                if !s.nodes.is_empty() || !s.nodes6.is_empty() {
                    if let Err(e) = save_state(path, &s) {
                        tracing::warn!("cannot save the DHT state to {}: {e}", path.display());
                    }
                }
            }
        }
        let sizes = (
            v4.as_ref().map_or(0, |f| f.core.table().len()),
            v6.as_ref().map_or(0, |f| f.core.table().len()),
        );
        let due = if sizes != copied { FOREIGN_EVERY } else { FOREIGN_MAX_AGE };
        let both = v4.is_some() && v6.is_some();
        if both && foreign_at.elapsed() >= due {
            foreign_at = Instant::now();
            copied = sizes;
            if let (Some(a), Some(b)) = (&mut v4, &mut v6) {
                a.core.set_foreign_nodes(b.core.table().nodes());
                b.core.set_foreign_nodes(a.core.table().nodes());
            }
        }
        // Until neither core has anything to say (the nodes one hears of, the other pings).
        loop {
            let mut moved = false;
            if let Some(f) = &mut v4 {
                moved |= drain(f, 0, &mut pending, &mut to6).await;
            }
            if let Some(f) = &mut v6 {
                moved |= drain(f, 1, &mut pending, &mut to4).await;
            }
            if let Some(f) = &mut v6 {
                moved |= meet(f, 1, &mut to6, &mut pending);
            }
            if let Some(f) = &mut v4 {
                moved |= meet(f, 0, &mut to4, &mut pending);
            }
            // A request whose families all finished at once (or none could run it).
            pending.retain_mut(|p| !p.finish_if_done());
            if !moved {
                break;
            }
        }
        let mut deadline = [
            v4.as_ref().and_then(|f| f.core.next_deadline()),
            v6.as_ref().and_then(|f| f.core.next_deadline()),
        ]
        .into_iter()
        .flatten()
        .min();
        let sizes = (
            v4.as_ref().map_or(0, |f| f.core.table().len()),
            v6.as_ref().map_or(0, |f| f.core.table().len()),
        );
        let due = if sizes != copied { FOREIGN_EVERY } else { FOREIGN_MAX_AGE };
        let mut upkeep = [
            (v4.is_some() && v6.is_some()).then(|| foreign_at + due),
            state.as_ref().map(|(_, every)| saved_at + *every),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(u) = upkeep.take() {
            deadline = Some(deadline.map_or(u, |d| d.min(u)));
        }
        let deadline = deadline.map(tokio::time::Instant::from_std);
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            got = recv(&mut v4) => handle(&mut v4, got),
            got = recv(&mut v6) => handle(&mut v6, got),
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return };
                match cmd {
                    Command::Bootstrap(routers, reply) => {
                        let r4: Vec<SocketAddrV4> =
                            routers.iter().filter_map(|a| NodeAddr::from_socket(*a)).collect();
                        let r6: Vec<SocketAddrV6> =
                            routers.iter().filter_map(|a| NodeAddr::from_socket(*a)).collect();
                        let which = [!r4.is_empty(), !r6.is_empty()];
                        let now = Instant::now();
                        let a = v4.as_mut().filter(|_| which[0]).map(|f| f.core.bootstrap(now, &r4));
                        let b = v6.as_mut().filter(|_| which[1]).map(|f| f.core.bootstrap(now, &r6));
                        let target = v4.as_ref().map_or(NodeId([0; 20]), |f| f.core.id());
                        let reply = Some(reply);
                        pending.push(Pending { target, lookups: [a, b], found: None, reply, stream: None });
                    }
                    Command::FindNode(t, reply) => start!(t, reply, None, |c| |now| c.find_node(now, t)),
                    Command::GetPeers(t, stream, reply) => start!(t, reply, stream, |c| |now| c.get_peers(now, t)),
                    Command::Announce(t, port, seed, which, reply) => {
                        let now = Instant::now();
                        let a = v4.as_mut().filter(|_| which[0]).map(|f| f.core.announce_as(now, t, port, seed));
                        let b = v6.as_mut().filter(|_| which[1]).map(|f| f.core.announce_as(now, t, port, seed));
                        let reply = Some(reply);
                        pending.push(Pending { target: t, lookups: [a, b], found: None, reply, stream: None });
                    }
                    Command::Scrape(t, reply) => start!(t, reply, None, |c| |now| c.scrape(now, t)),
                    Command::Sample(to, target, reply) => {
                        let now = Instant::now();
                        let a = v4.as_mut().zip(NodeAddr::from_socket(to)).map(|(f, to)| f.core.sample(now, to, target));
                        let b = v6.as_mut().zip(NodeAddr::from_socket(to)).map(|(f, to)| f.core.sample(now, to, target));
                        let reply = Some(reply);
                        pending.push(Pending { target, lookups: [a, b], found: None, reply, stream: None });
                    }
                    Command::SampleAround(t, reply) => start!(t, reply, None, |c| |now| c.sample_around(now, t)),
                    Command::GetItem(t, reply) => start!(t, reply, None, |c| |now| c.get_item(now, t)),
                    Command::PutItem(v, reply) => {
                        start!(crate::proto::core::item_target(&v), reply, None, |c| |now| c.put_item(now, v.clone()).1);
                    }
                    Command::GetMutable(k, salt, reply) => {
                        start!(MutableItem::target(&k, &salt), reply, None, |c| |now| c.get_mutable(now, k, salt.clone()));
                    }
                    Command::PutMutable(item, reply) => {
                        start!(MutableItem::target(&item.key, &item.salt), reply, None, |c| |now| c.put_mutable(now, item.clone()));
                    }
                    Command::IndexGet(t, reply) => start!(t, reply, None, |c| |now| c.index_get(now, t)),
                    Command::IndexPut(t, item, reply) => {
                        start!(t, reply, None, |c| |now| c.index_put(now, t, item.clone()));
                    }
                    Command::Save(reply) => {
                        let s = state_of(&v4, &v6);
                        let r = match &state {
                            Some((path, _)) if !s.nodes.is_empty() || !s.nodes6.is_empty() => {
                                saved_at = Instant::now();
                                save_state(path, &s)
                            }
                            _ => Ok(()),
                        };
                        let _ = reply.send(r);
                    }
                    Command::Nodes(reply) => {
                        let a = v4.as_ref().map_or(0, |f| f.core.table().len());
                        let b = v6.as_ref().map_or(0, |f| f.core.table().len());
                        let _ = reply.send((a, b));
                    }
                }
            }
            _ = sleep => {
                let now = Instant::now();
                if let Some(f) = &mut v4 {
                    f.core.handle(now, Input::Tick);
                }
                if let Some(f) = &mut v6 {
                    f.core.handle(now, Input::Tick);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> DhtOptions {
        DhtOptions::new(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
    }

    /// Nodes of both families on loopback (127.0.0.1 and ::1).
    fn dual() -> DhtOptions {
        DhtOptions { listen6: Some(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 0, 0, 0)), ..options() }
    }

    fn saved_nodes(path: &Path) -> usize {
        std::fs::read(path).ok().and_then(|b| State::parse(&b)).map_or(0, |s| s.nodes.len())
    }

    #[tokio::test]
    async fn a_restart_with_the_state_file_is_warm_and_keeps_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("dht-nodes");
        let router = Dht::spawn(options()).await.unwrap();
        let mut others = Vec::new();
        for _ in 0..6 {
            let n = Dht::spawn(options()).await.unwrap();
            n.bootstrap(vec![router.local_addr()]).await.unwrap();
            others.push(n);
        }
        let saving = DhtOptions {
            state: Some(state.clone()),
            save_every: Duration::from_millis(50),
            ..options()
        };
        let first = Dht::spawn(saving.clone()).await.unwrap();
        first.bootstrap(vec![router.local_addr()]).await.unwrap();
        let id = first.id();
        // One node per state file: a second is refused while the first runs.
        let second = Dht::spawn(saving.clone()).await;
        assert_eq!(second.err().map(|e| e.kind()), Some(io::ErrorKind::WouldBlock));
        // An explicit save writes at once.
        first.save().await.unwrap().unwrap();
        assert!(saved_nodes(&state) > 0);
        // Bounded wait for a save (every 50 ms here).
        for _ in 0..100 {
            if saved_nodes(&state) >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(first);
        // Restarted with no router given: the saved nodes answer. (The stopped node's task
        // lets go of the lock when the runtime drops it: bounded retries.)
        let mut again = Dht::spawn(saving.clone()).await;
        for _ in 0..100 {
            if again.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            again = Dht::spawn(saving.clone()).await;
        }
        let again = again.unwrap();
        assert_eq!(again.id(), id, "the saved id is kept");
        let mut known = 0;
        for _ in 0..100 {
            known = again.nodes().await.unwrap();
            if known >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(known >= 4, "only {known} nodes after a warm start");
        // A file that is not ours is neither read nor overwritten.
        let foreign = dir.path().join("notes.txt");
        std::fs::write(&foreign, b"my notes").unwrap();
        let err = Dht::spawn(DhtOptions { state: Some(foreign.clone()), ..options() }).await;
        assert!(err.is_err());
        assert_eq!(std::fs::read(&foreign).unwrap(), b"my notes");
    }

    #[tokio::test]
    async fn nodes_on_loopback_find_an_announced_peer() {
        let router = Dht::spawn(options()).await.unwrap();
        let mut nodes = Vec::new();
        for _ in 0..12 {
            let n = Dht::spawn(options()).await.unwrap();
            n.bootstrap(vec![router.local_addr()]).await.unwrap();
            nodes.push(n);
        }
        assert!(nodes[11].nodes().await.unwrap() >= 8);
        let info_hash = NodeId([0x42; 20]);
        let announced = nodes[3].announce(info_hash, 6881, false).await.unwrap();
        assert!(announced.announced_to > 0, "{announced:?}");
        let found = nodes[9].get_peers(info_hash).await.unwrap();
        assert_eq!(found.peers, vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 6881))]);
        // Streaming: the peer comes in a batch before the lookup's end, then the stream closes
        // and the result repeats it.
        nodes[5].announce(info_hash, 7000, true).await.unwrap();
        let (mut batches, done) = nodes[10].get_peers_streaming(info_hash).await.unwrap();
        let mut streamed = Vec::new();
        while let Some(b) = batches.recv().await {
            streamed.extend(b);
        }
        streamed.sort();
        let mut all = done.await.unwrap().peers;
        all.sort();
        assert_eq!(streamed, all);
        assert_eq!(all.len(), 2, "{all:?}");
    }

    #[tokio::test]
    async fn dual_stack_nodes_find_peers_of_both_families_and_ipv6_joins_through_ipv4() {
        let router = Dht::spawn(dual()).await.unwrap();
        assert_eq!(router.local_addrs().len(), 2, "IPv4 and IPv6 sockets on one node");
        let mut nodes = Vec::new();
        for i in 0..12 {
            let n = Dht::spawn(dual()).await.unwrap();
            // Half join through both of the router's addresses; the others know only its
            // IPv4 address and learn IPv6 nodes from BEP 32's `want` (nodes6 in answers).
            let routers = if i % 2 == 0 { router.local_addrs() } else { vec![router.local_addr()] };
            n.bootstrap(routers).await.unwrap();
            nodes.push(n);
        }
        // A lookup after joining (once the router's copy of its IPv6 table is fresh) brings
        // IPv6 nodes in answers; the IPv6 node joins through them. Bounded wait.
        tokio::time::sleep(FOREIGN_EVERY * 2).await;
        for (i, n) in nodes.iter().enumerate() {
            n.find_node(NodeId([i as u8; 20])).await.unwrap();
        }
        for (i, n) in nodes.iter().enumerate() {
            let mut tables = (0, 0);
            for _ in 0..100 {
                tables = n.nodes_by_family().await.unwrap();
                if tables.0 >= 8 && tables.1 >= 8 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(tables.0 >= 8 && tables.1 >= 8, "node {i}'s tables (IPv4, IPv6): {tables:?}");
        }
        // An announce goes out over both families: the peer is stored at the address each
        // announce came from, and a lookup returns both.
        let info_hash = NodeId([0x66; 20]);
        let announced = nodes[3].announce(info_hash, 6881, true).await.unwrap();
        assert!(announced.announced_to >= 2, "{announced:?}");
        let mut found = nodes[8].get_peers(info_hash).await.unwrap().peers;
        found.sort();
        let want: Vec<SocketAddr> =
            vec![(Ipv4Addr::LOCALHOST, 6881).into(), (Ipv6Addr::LOCALHOST, 6881).into()];
        assert_eq!(found, want);
        // The nodes a lookup reports are of both families.
        let closest = nodes[5].find_node(NodeId([0x10; 20])).await.unwrap();
        assert!(closest.nodes.iter().any(|n| n.addr.is_ipv4()));
        assert!(closest.nodes.iter().any(|n| n.addr.is_ipv6()));
        // An IPv6-only node joins the IPv6 side alone, and its own peer is stored as IPv6.
        let only6 = Dht::spawn(DhtOptions::new(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 0, 0, 0)))
            .await
            .unwrap();
        assert!(only6.local_addr().is_ipv6());
        let joined = only6.bootstrap(router.local_addrs()).await.unwrap();
        assert!(joined.nodes.iter().all(|n| n.addr.is_ipv6()) && !joined.nodes.is_empty());
        let got = only6.get_peers(info_hash).await.unwrap();
        assert_eq!(got.peers, vec![SocketAddr::from((Ipv6Addr::LOCALHOST, 6881))]);
        // Both tables are saved and read back.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dht-nodes");
        let saving = Dht::spawn(DhtOptions { state: Some(path.clone()), ..dual() }).await.unwrap();
        saving.bootstrap(router.local_addrs()).await.unwrap();
        saving.save().await.unwrap().unwrap();
        let s = State::parse(&std::fs::read(&path).unwrap()).unwrap();
        assert!(!s.nodes.is_empty() && !s.nodes6.is_empty(), "{s:?}");
        assert_eq!((s.id, s.id6), (Some(saving.id()), saving.id6()));
    }
}
