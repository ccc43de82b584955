//! The tokio driver of a [`DhtCore`]: one UDP socket (IPv4), one task. It feeds the core every
//! datagram and deadline and carries out what the core asks (`Send`), and answers the
//! [`Dht`] handle's lookups when the core reports them done. All protocol logic is in the core.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

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

/// How a DHT node starts.
#[derive(Clone, Debug)]
pub struct DhtOptions {
    /// Where to listen (port 0 picks one).
    pub listen: SocketAddrV4,
    /// Our node id; random if `None`.
    pub id: Option<NodeId>,
    pub config: Config,
}

enum Command {
    Bootstrap(Vec<SocketAddrV4>, oneshot::Sender<LookupResult>),
    FindNode(NodeId, oneshot::Sender<LookupResult>),
    GetPeers(NodeId, oneshot::Sender<LookupResult>),
    Announce(NodeId, u16, oneshot::Sender<LookupResult>),
    Sample(SocketAddrV4, NodeId, oneshot::Sender<LookupResult>),
    GetItem(NodeId, oneshot::Sender<LookupResult>),
    PutItem(Value, oneshot::Sender<LookupResult>),
    GetMutable([u8; 32], Vec<u8>, oneshot::Sender<LookupResult>),
    PutMutable(MutableItem, oneshot::Sender<LookupResult>),
    Nodes(oneshot::Sender<usize>),
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
        let mut rng = StdRng::from_os_rng();
        let id = options.id.unwrap_or_else(|| NodeId::random(&mut rng));
        let core = DhtCore::new(Instant::now(), id, options.config, rng);
        let (commands, rx) = mpsc::channel(64);
        let task = tokio::spawn(run(socket, core, rx));
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

    /// Announces that we serve `info_hash` on TCP `port`.
    pub async fn announce(&self, info_hash: NodeId, port: u16) -> Result<LookupResult, Stopped> {
        self.ask(|tx| Command::Announce(info_hash, port, tx)).await
    }

    /// Asks the node at `node` which info-hashes it stores (BEP 51).
    pub async fn sample(&self, node: SocketAddrV4) -> Result<LookupResult, Stopped> {
        self.ask(|tx| Command::Sample(node, self.id, tx)).await
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

async fn run(socket: UdpSocket, mut core: DhtCore<StdRng>, mut rx: mpsc::Receiver<Command>) {
    let mut waiting: Vec<(LookupId, oneshot::Sender<LookupResult>)> = Vec::new();
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        while let Some(out) = core.poll() {
            match out {
                Output::Send { to, bytes } => {
                    // A datagram that cannot be sent is a lost packet; the core's timeout
                    // handles it.
                    let _ = socket.send_to(&bytes, to).await;
                }
                Output::Done(result) => {
                    if let Some(i) = waiting.iter().position(|(id, _)| *id == result.id) {
                        let (_, reply) = waiting.swap_remove(i);
                        let _ = reply.send(*result);
                    }
                }
            }
        }
        let deadline = core.next_deadline().map(tokio::time::Instant::from_std);
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
                    Some(Command::Announce(t, port, reply)) => {
                        waiting.push((core.announce(now, t, port), reply));
                    }
                    Some(Command::Sample(to, target, reply)) => {
                        waiting.push((core.sample(now, to, target), reply));
                    }
                    Some(Command::GetItem(t, reply)) => waiting.push((core.get_item(now, t), reply)),
                    Some(Command::PutItem(v, reply)) => waiting.push((core.put_item(now, v).1, reply)),
                    Some(Command::GetMutable(k, salt, reply)) => {
                        waiting.push((core.get_mutable(now, k, salt), reply));
                    }
                    Some(Command::PutMutable(item, reply)) => {
                        waiting.push((core.put_mutable(now, item), reply));
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
        DhtOptions {
            listen: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
            id: None,
            config: Config::default(),
        }
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
        let announced = nodes[3].announce(info_hash, 6881).await.unwrap();
        assert!(announced.announced_to > 0, "{announced:?}");
        let found = nodes[9].get_peers(info_hash).await.unwrap();
        assert_eq!(found.peers, vec![SocketAddrV4::new(Ipv4Addr::LOCALHOST, 6881)]);
    }
}
