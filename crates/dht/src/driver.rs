//! The tokio driver of a [`DhtCore`]: one UDP socket (IPv4), one task. It feeds the core every
//! datagram and deadline and carries out what the core asks (`Send`), and answers the
//! [`Dht`] handle's lookups when the core reports them done. All protocol logic is in the core.
//!
//! With [`DhtOptions::state`], the node keeps its id and routing table in a file, written at
//! most once per [`DhtOptions::save_every`] (a minute by default: rqbit's users complained of
//! constant writes), so a restart is warm: the saved nodes are asked first.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::proto::core::{Config, DhtCore, Input, LookupId, LookupResult, MutableItem, Output};
use crate::proto::id::NodeId;
use crate::proto::krpc::Value;

/// A datagram buffer larger than any message we accept, so an oversized one is seen whole and
/// refused by the codec rather than cut.
const RECV_BUF: usize = 4096;

/// Nodes saved in a state file, at most.
pub const MAX_SAVED_NODES: usize = 1_000;

/// How a DHT node starts.
#[derive(Clone, Debug)]
pub struct DhtOptions {
    /// Where to listen (port 0 picks one).
    pub listen: SocketAddrV4,
    /// Our node id; random if `None` (or the saved one, with `state`).
    pub id: Option<NodeId>,
    pub config: Config,
    /// A file for our id and routing table (see the module docs).
    pub state: Option<PathBuf>,
    /// How often the state file is written, at most.
    pub save_every: Duration,
}

impl DhtOptions {
    /// A node on `listen` with a random id, default settings and no state file.
    pub fn new(listen: SocketAddrV4) -> DhtOptions {
        DhtOptions {
            listen,
            id: None,
            config: Config::default(),
            state: None,
            save_every: Duration::from_secs(60),
        }
    }
}

/// Reads a state file: our id (20 bytes), then nodes (26 bytes each, IPv4). A missing file is
/// `None`; one that is not a state file is an error, and is left alone.
fn load_state(path: &Path) -> io::Result<Option<(NodeId, Vec<SocketAddrV4>)>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if bytes.len() < 20 || (bytes.len() - 20) % 26 != 0 || bytes.len() > 20 + 26 * MAX_SAVED_NODES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a DHT state file (it is left as it is): give another path",
                path.display()
            ),
        ));
    }
    let id = NodeId(bytes[..20].try_into().expect("20 bytes"));
    let nodes = bytes[20..]
        .chunks_exact(26)
        .map(|c| {
            let ip = Ipv4Addr::new(c[20], c[21], c[22], c[23]);
            SocketAddrV4::new(ip, u16::from_be_bytes([c[24], c[25]]))
        })
        .filter(|a| a.port() != 0)
        .collect();
    Ok(Some((id, nodes)))
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
fn save_state(path: &Path, core: &DhtCore<StdRng>) -> io::Result<()> {
    let mut bytes = core.id().0.to_vec();
    for n in core.table().nodes().into_iter().take(MAX_SAVED_NODES) {
        bytes.extend_from_slice(&n.id.0);
        bytes.extend_from_slice(&n.addr.ip().octets());
        bytes.extend_from_slice(&n.addr.port().to_be_bytes());
    }
    // A temporary name of our own beside it (the lock keeps other nodes off this path), on
    // disk before the rename, so a crash or power loss leaves the old file or the new one.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Batches of peers a streaming `get_peers` buffers for its caller.
const PEER_BATCHES: usize = 64;

enum Command {
    Bootstrap(Vec<SocketAddrV4>, oneshot::Sender<LookupResult>),
    FindNode(NodeId, oneshot::Sender<LookupResult>),
    GetPeers(NodeId, oneshot::Sender<LookupResult>),
    GetPeersStreaming(NodeId, mpsc::Sender<Vec<SocketAddrV4>>, oneshot::Sender<LookupResult>),
    Announce(NodeId, u16, bool, oneshot::Sender<LookupResult>),
    Scrape(NodeId, oneshot::Sender<LookupResult>),
    Sample(SocketAddrV4, NodeId, oneshot::Sender<LookupResult>),
    SampleAround(NodeId, oneshot::Sender<LookupResult>),
    GetItem(NodeId, oneshot::Sender<LookupResult>),
    PutItem(Value, oneshot::Sender<LookupResult>),
    GetMutable([u8; 32], Vec<u8>, oneshot::Sender<LookupResult>),
    PutMutable(MutableItem, oneshot::Sender<LookupResult>),
    Nodes(oneshot::Sender<usize>),
    Save(oneshot::Sender<io::Result<()>>),
}

/// A running DHT node. Dropping it stops the node.
pub struct Dht {
    commands: mpsc::Sender<Command>,
    local_addr: SocketAddrV4,
    id: NodeId,
    task: tokio::task::JoinHandle<()>,
}

/// The node stopped (its task ended).
#[derive(Debug, thiserror::Error)]
#[error("the DHT node has stopped")]
pub struct Stopped;

impl Dht {
    /// Binds the socket and starts the node's task.
    pub async fn spawn(options: DhtOptions) -> io::Result<Dht> {
        let socket = UdpSocket::bind(options.listen).await?;
        let SocketAddr::V4(local_addr) = socket.local_addr()? else {
            return Err(io::Error::other("the DHT socket is not IPv4"));
        };
        // One process per state file: a second finds the lock taken (`WouldBlock`).
        let lock = match &options.state {
            Some(path) => Some(lock_state(path)?),
            None => None,
        };
        let saved = match &options.state {
            Some(path) => load_state(path)?,
            None => None,
        };
        let mut rng = StdRng::from_os_rng();
        let id = options
            .id
            .or(saved.as_ref().map(|(id, _)| *id))
            .unwrap_or_else(|| NodeId::random(&mut rng));
        let mut core = DhtCore::new(Instant::now(), id, options.config, rng);
        if let Some((_, nodes)) = &saved {
            // A warm start: the saved nodes are asked for the nodes near us.
            core.bootstrap(Instant::now(), nodes);
        }
        let (commands, rx) = mpsc::channel(64);
        let state = options.state.map(|path| (path, options.save_every));
        let task = tokio::spawn(async move {
            run(socket, core, rx, state).await;
            drop(lock);
        });
        Ok(Dht { commands, local_addr, id, task })
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local_addr
    }

    /// Our node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Joins through `routers` (asks them for the nodes closest to us); returns when that
    /// lookup ends.
    pub async fn bootstrap(&self, routers: Vec<SocketAddrV4>) -> Result<LookupResult, Stopped> {
        self.ask(|tx| Command::Bootstrap(routers, tx)).await
    }

    /// The nodes closest to `target`.
    pub async fn find_node(&self, target: NodeId) -> Result<LookupResult, Stopped> {
        self.ask(|tx| Command::FindNode(target, tx)).await
    }

    /// The peers of `info_hash`.
    pub async fn get_peers(&self, info_hash: NodeId) -> Result<LookupResult, Stopped> {
        self.ask(|tx| Command::GetPeers(info_hash, tx)).await
    }

    /// The peers of `info_hash` as the lookup finds them: batches of new peers on the first
    /// receiver (which closes when the lookup ends; a batch the caller is too slow to take is
    /// dropped, and is in the result), and the whole result on the second.
    pub async fn get_peers_streaming(
        &self,
        info_hash: NodeId,
    ) -> Result<(mpsc::Receiver<Vec<SocketAddrV4>>, oneshot::Receiver<LookupResult>), Stopped> {
        let (batches_tx, batches) = mpsc::channel(PEER_BATCHES);
        let (tx, done) = oneshot::channel();
        let cmd = Command::GetPeersStreaming(info_hash, batches_tx, tx);
        self.commands.send(cmd).await.map_err(|_| Stopped)?;
        Ok((batches, done))
    }

    /// Announces that we serve `info_hash` on TCP `port`, as a seed or not (BEP 33).
    pub async fn announce(
        &self,
        info_hash: NodeId,
        port: u16,
        seed: bool,
    ) -> Result<LookupResult, Stopped> {
        self.ask(|tx| Command::Announce(info_hash, port, seed, tx)).await
    }

    /// Estimates the size of `info_hash`'s swarm from the nodes' bloom filters (BEP 33).
    pub async fn scrape(&self, info_hash: NodeId) -> Result<LookupResult, Stopped> {
        self.ask(|tx| Command::Scrape(info_hash, tx)).await
    }

    /// Asks the node at `node` which info-hashes it stores (BEP 51).
    pub async fn sample(&self, node: SocketAddrV4) -> Result<LookupResult, Stopped> {
        self.ask(|tx| Command::Sample(node, self.id, tx)).await
    }

    /// The info-hashes the nodes around `target` store, sampled (BEP 51).
    pub async fn sample_around(&self, target: NodeId) -> Result<LookupResult, Stopped> {
        self.ask(|tx| Command::SampleAround(target, tx)).await
    }

    /// The immutable item stored under `target` (BEP 44), checked against it.
    pub async fn get_item(&self, target: NodeId) -> Result<LookupResult, Stopped> {
        self.ask(|tx| Command::GetItem(target, tx)).await
    }

    /// Puts an immutable item (BEP 44) at the nodes closest to its target; the result's target
    /// is the item's, `announced_to` the nodes that took it.
    pub async fn put_item(&self, value: Value) -> Result<LookupResult, Stopped> {
        self.ask(|tx| Command::PutItem(value, tx)).await
    }

    /// The newest mutable item of `key` and `salt` whose signature verifies (BEP 44).
    pub async fn get_mutable(&self, key: [u8; 32], salt: Vec<u8>) -> Result<LookupResult, Stopped> {
        self.ask(|tx| Command::GetMutable(key, salt, tx)).await
    }

    /// Puts a signed mutable item (BEP 44) at the nodes closest to its target.
    pub async fn put_mutable(&self, item: MutableItem) -> Result<LookupResult, Stopped> {
        self.ask(|tx| Command::PutMutable(item, tx)).await
    }

    /// Writes the state file now (a one-shot command's last act, so its next run is warm even
    /// if it ran for less than `save_every`); without a state file, does nothing.
    pub async fn save(&self) -> Result<io::Result<()>, Stopped> {
        self.ask(Command::Save).await
    }

    /// Nodes in the routing table.
    pub async fn nodes(&self) -> Result<usize, Stopped> {
        self.ask(Command::Nodes).await
    }
}

impl Drop for Dht {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    socket: UdpSocket,
    mut core: DhtCore<StdRng>,
    mut rx: mpsc::Receiver<Command>,
    state: Option<(PathBuf, Duration)>,
) {
    let mut waiting: Vec<(LookupId, oneshot::Sender<LookupResult>)> = Vec::new();
    let mut streams: Vec<(LookupId, mpsc::Sender<Vec<SocketAddrV4>>)> = Vec::new();
    let mut buf = vec![0u8; RECV_BUF];
    let mut saved_at = Instant::now();
    loop {
        if let Some((path, every)) = &state {
            // The save's turn comes every `every` even with nothing to save, so its deadline
            // never stays in the past (that would wake this loop without pause).
            if saved_at.elapsed() >= *every {
                saved_at = Instant::now();
                if !core.table().is_empty() {
                    if let Err(e) = save_state(path, &core) {
                        tracing::warn!("cannot save the DHT state to {}: {e}", path.display());
                    }
                }
            }
        }
        while let Some(out) = core.poll() {
            match out {
                Output::Send { to, bytes } => {
                    // A datagram that cannot be sent is a lost packet; the core's timeout
                    // handles it.
                    let _ = socket.send_to(&bytes, to).await;
                }
                Output::Peers { lookup, peers } => {
                    if let Some((_, tx)) = streams.iter().find(|(id, _)| *id == lookup) {
                        let _ = tx.try_send(peers);
                    }
                }
                Output::Done(result) => {
                    // Dropping the sender closes the caller's stream of batches.
                    streams.retain(|(id, _)| *id != result.id);
                    if let Some(i) = waiting.iter().position(|(id, _)| *id == result.id) {
                        let (_, reply) = waiting.swap_remove(i);
                        let _ = reply.send(*result);
                    }
                }
            }
        }
        let mut deadline = core.next_deadline();
        if let Some((_, every)) = &state {
            let save = saved_at + *every;
            deadline = Some(deadline.map_or(save, |d| d.min(save)));
        }
        let deadline = deadline.map(tokio::time::Instant::from_std);
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            got = socket.recv_from(&mut buf) => {
                // Only IPv4 senders (BEP 32's IPv6 is not spoken yet); errors such as ICMP
                // port-unreachable reports are not datagrams.
                if let Ok((n, SocketAddr::V4(from))) = got {
                    core.handle(Instant::now(), Input::Datagram { from, bytes: &buf[..n] });
                }
            }
            cmd = rx.recv() => {
                let now = Instant::now();
                match cmd {
                    None => return,
                    Some(Command::Bootstrap(routers, reply)) => {
                        waiting.push((core.bootstrap(now, &routers), reply));
                    }
                    Some(Command::FindNode(t, reply)) => waiting.push((core.find_node(now, t), reply)),
                    Some(Command::GetPeers(t, reply)) => waiting.push((core.get_peers(now, t), reply)),
                    Some(Command::GetPeersStreaming(t, batches, reply)) => {
                        let id = core.get_peers(now, t);
                        streams.push((id, batches));
                        waiting.push((id, reply));
                    }
                    Some(Command::Announce(t, port, seed, reply)) => {
                        waiting.push((core.announce_as(now, t, port, seed), reply));
                    }
                    Some(Command::Scrape(t, reply)) => waiting.push((core.scrape(now, t), reply)),
                    Some(Command::Sample(to, target, reply)) => {
                        waiting.push((core.sample(now, to, target), reply));
                    }
                    Some(Command::SampleAround(t, reply)) => {
                        waiting.push((core.sample_around(now, t), reply));
                    }
                    Some(Command::GetItem(t, reply)) => waiting.push((core.get_item(now, t), reply)),
                    Some(Command::PutItem(v, reply)) => waiting.push((core.put_item(now, v).1, reply)),
                    Some(Command::GetMutable(k, salt, reply)) => {
                        waiting.push((core.get_mutable(now, k, salt), reply));
                    }
                    Some(Command::PutMutable(item, reply)) => {
                        waiting.push((core.put_mutable(now, item), reply));
                    }
                    Some(Command::Save(reply)) => {
                        let r = match &state {
                            Some((path, _)) if !core.table().is_empty() => {
                                saved_at = Instant::now();
                                save_state(path, &core)
                            }
                            _ => Ok(()),
                        };
                        let _ = reply.send(r);
                    }
                    Some(Command::Nodes(reply)) => {
                        let _ = reply.send(core.table().len());
                    }
                }
            }
            _ = sleep => core.handle(Instant::now(), Input::Tick),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn options() -> DhtOptions {
        DhtOptions::new(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
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
        assert!(std::fs::metadata(&state).unwrap().len() > 20);
        // Bounded wait for a save (every 50 ms here).
        for _ in 0..100 {
            if std::fs::metadata(&state).is_ok_and(|m| m.len() > 20 + 26 * 4) {
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
        assert_eq!(found.peers, vec![SocketAddrV4::new(Ipv4Addr::LOCALHOST, 6881)]);
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
}
