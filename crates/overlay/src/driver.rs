//! The tokio driver of one overlay node: it owns a [`Node`] core and carries out what it asks
//! over QUIC connections, feeding back what arrives stamped with `Instant::now()`.
//!
//! It is a plain struct, not a task: the service that owns it (chat) runs one loop that calls
//! [`Driver::next_event`] and the `broadcast` / `direct` / `subscribe` methods, so there is
//! exactly one place that mutates the node. Connection readers and writers are small tasks
//! that talk to the loop through channels.
//!
//! Choices (where HyParView leaves it to the implementation):
//! - One connection per neighbor; a `Send` to a peer with no connection dials it (requiring the
//!   id it claims), queueing at most [`MAX_QUEUED`] frames meanwhile. A failed dial is reported
//!   to the core as `PeerFailed`.
//! - Connections to peers outside the active view are closed after [`IDLE_CLOSE`] unused, and
//!   at most [`MAX_PEERS`] peers are connected or being dialed at once: further inbound
//!   connections are refused, and a dial beyond it is not started but reported to the core as
//!   a failed one (a peer's SHUFFLE names the node to answer, so dials are network-fed too).
//! - A connection's loss is `PeerFailed` only if the peer is an active neighbor and it was the
//!   peer's last connection (simultaneous dials create two; either may close).
//! - A broadcast payload and the id it comes under are checked by the service's validator (for
//!   chat: the author's signature, and that the id is the hash of the envelope) before the node
//!   core sees them, so a forged or altered message, or a valid one under another message's id
//!   (which would make the tree take the real one for a duplicate and prune it), is dropped at
//!   the first honest node instead of being relayed. Honest nodes never relay such a frame, so
//!   a connection that sends [`MAX_INVALID_BROADCASTS`] of them is closed.
//! - Each connection may deliver at most [`FRAMES_PER_SEC`] frames a second on average (burst
//!   [`FRAME_BURST`]); beyond that frames are dropped and logged, so a peer flooding joins or
//!   messages costs us little. Frames that do not decode close the connection.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::identity::NodeId;
use crate::proto::node::{self, Input, Node, Output, TopicId, Wire};
use crate::proto::plumtree::{self, MessageId, Round};
use crate::proto::search::{self, QueryId, Record};
use crate::transport::{Conn, ConnHandle, Endpoint, FrameReceiver, FrameSender};
use crate::wire;

/// A node as the overlay knows it: its key and where it listens.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Peer {
    /// The node's public key (authenticated on every connection).
    pub id: NodeId,
    /// Its QUIC address.
    pub addr: SocketAddr,
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id.short(), self.addr)
    }
}

/// Most peers with open connections or dials at once; further inbound connections are refused.
pub const MAX_PEERS: usize = 256;
/// Most frames queued for a peer being dialed.
pub const MAX_QUEUED: usize = 256;
/// Frames buffered per connection writer; a peer that does not read loses frames beyond it.
pub const WRITE_BUFFER: usize = 1024;
/// Non-neighbor connections unused this long are closed.
pub const IDLE_CLOSE: Duration = Duration::from_secs(15);
/// Average frames a second accepted from one connection.
pub const FRAMES_PER_SEC: f64 = 500.0;
/// Burst of frames accepted from one connection.
pub const FRAME_BURST: f64 = 2000.0;
/// Invalid broadcasts (refused by the validator) after which a peer's connections are closed.
pub const MAX_INVALID_BROADCASTS: u32 = 4;

/// Checks a broadcast payload of a topic, and the id it arrived under, before it is delivered
/// and relayed.
pub type Validator = Box<dyn Fn(&TopicId, &MessageId, &[u8]) -> bool + Send + Sync>;

/// What the driver reports to its service.
#[derive(Debug)]
pub enum Event {
    /// A broadcast message reached this node for the first time.
    Deliver {
        /// Its topic.
        topic: TopicId,
        /// Its id.
        id: MessageId,
        /// The bytes.
        payload: Vec<u8>,
        /// Neighbor it came from (`None`: broadcast here).
        from: Option<Peer>,
        /// Hops from its origin.
        round: Round,
    },
    /// A neighbor sent an application frame.
    Direct {
        /// The neighbor.
        from: Peer,
        /// The frame.
        payload: Vec<u8>,
    },
    /// A neighbor joined the active view.
    NeighborUp(Peer),
    /// A neighbor left the active view.
    NeighborDown(Peer),
    /// A result or the end of one of our searches (search enabled on the node).
    Search(crate::proto::search::Output<Peer>),
}

enum NetEvent {
    Accepted(Conn),
    Dialed {
        peer: Peer,
        result: Result<Conn, String>,
    },
    /// A dial not started for [`MAX_PEERS`].
    DialRefused(Peer),
    AnchorResolved {
        addr: SocketAddr,
        result: Result<Conn, String>,
    },
    Frame {
        peer: Peer,
        msg: Wire<Peer>,
    },
    Closed {
        peer: Peer,
        conn_id: u64,
    },
}

struct Link {
    conn_id: u64,
    tx: mpsc::Sender<Vec<u8>>,
    handle: ConnHandle,
}

#[derive(Default)]
struct PeerConns {
    links: Vec<Link>,
    /// Frames waiting for a dial to finish; `Some` while dialing.
    dialing: Option<Vec<Vec<u8>>>,
    last_used: Option<Instant>,
    /// Broadcasts from this peer the validator refused (reset when its connections go).
    invalid: u32,
}

/// The driver of one node. See the module docs.
pub struct Driver {
    endpoint: Arc<Endpoint>,
    me: Peer,
    node: Node<Peer, StdRng>,
    peers: BTreeMap<Peer, PeerConns>,
    anchors: Vec<SocketAddr>,
    events_tx: mpsc::Sender<NetEvent>,
    events_rx: mpsc::Receiver<NetEvent>,
    pending: std::collections::VecDeque<Event>,
    next_conn_id: u64,
    next_housekeeping: Instant,
    last_neighbor: Instant,
    validator: Option<Validator>,
    refused_records: u64,
}

/// This machine's clock, Unix seconds (what record expiries are checked against).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Driver {
    /// Starts a driver on `endpoint`, advertised to others as `advertise`, joining through the
    /// anchor addresses (resolved by dialing them) and the `known` peers (e.g. remembered).
    pub fn start(
        endpoint: Endpoint,
        advertise: SocketAddr,
        config: node::Config,
        anchors: Vec<SocketAddr>,
        known: Vec<Peer>,
    ) -> Self {
        let me = Peer { id: endpoint.id(), addr: advertise };
        let rng: StdRng = rand::SeedableRng::from_os_rng();
        let (events_tx, events_rx) = mpsc::channel(4096);
        let now = Instant::now();
        let mut driver = Self {
            endpoint: Arc::new(endpoint),
            me,
            node: Node::new(me, config, rng),
            peers: BTreeMap::new(),
            anchors,
            events_tx,
            events_rx,
            pending: Default::default(),
            next_conn_id: 0,
            next_housekeeping: now,
            last_neighbor: now,
            validator: None,
            refused_records: 0,
        };
        driver.spawn_accept();
        driver.resolve_anchors();
        // Join even with no contact at all: an anchor starting the overlay, or timers.
        let known: Vec<Peer> = known.into_iter().filter(|p| p.id != me.id).collect();
        driver.input(Input::Join { anchors: known });
        driver
    }

    /// Sets the check every broadcast from a peer (topic, id, payload) must pass to be delivered
    /// or relayed.
    pub fn set_validator(&mut self, validator: Validator) {
        self.validator = Some(validator);
    }

    /// This node as others see it.
    pub fn me(&self) -> Peer {
        self.me
    }

    /// The current neighbors (active view).
    pub fn neighbors(&self) -> Vec<Peer> {
        self.node.membership().active().iter().copied().collect()
    }

    /// The passive view (healing candidates).
    pub fn passive(&self) -> Vec<Peer> {
        self.node.membership().passive().iter().copied().collect()
    }

    /// Starts following `topic`: delivering, relaying and broadcasting on it.
    pub fn subscribe(&mut self, topic: TopicId) -> Result<(), node::Error> {
        self.node.subscribe(Instant::now(), topic)
    }

    /// Broadcasts on `topic`; delivery to ourselves comes back as an [`Event::Deliver`].
    pub fn broadcast(
        &mut self,
        topic: TopicId,
        id: MessageId,
        payload: Vec<u8>,
    ) -> Result<(), node::Error> {
        self.try_input(Input::Broadcast { topic, id, payload })
    }

    /// Turns search on ([`crate::proto::search`]): the node answers queries for what it shares
    /// and can search. Records in hits from peers are checked ([`Record::check`]: signature,
    /// caps, expiry against this machine's clock) before the core sees them; those that fail
    /// are dropped and counted.
    pub fn enable_search(&mut self, config: search::Config) {
        self.node.enable_search(config, rand::SeedableRng::from_os_rng());
    }

    /// Shares `record` (replacing an earlier one of the same info-hash).
    pub fn share(&mut self, record: Record) -> Result<(), node::Error> {
        self.node.share(record)
    }

    /// Stops sharing the record of `info_hash`.
    pub fn unshare(&mut self, info_hash: &[u8; 20]) {
        self.node.unshare(info_hash);
    }

    /// Starts a search for `text`; results and its end come as [`Event::Search`].
    pub fn search(&mut self, text: &str, mode: search::Mode) -> Result<QueryId, node::Error> {
        let id = self.node.start_search(Instant::now(), text, mode)?;
        self.flush();
        Ok(id)
    }

    /// Ends search `id` now.
    pub fn cancel_search(&mut self, id: QueryId) {
        self.node.cancel_search(Instant::now(), id);
        self.flush();
    }

    /// Records in peers' hits refused by [`Record::check`] so far.
    pub fn refused_records(&self) -> u64 {
        self.refused_records
    }

    /// Sends an application frame to a neighbor.
    pub fn direct(&mut self, to: Peer, payload: Vec<u8>) -> Result<(), node::Error> {
        self.try_input(Input::Direct { to, payload })
    }

    /// Waits for the next event for the service, running timers and connections meanwhile.
    /// Cancel-safe: it may be used in `tokio::select!`.
    pub async fn next_event(&mut self) -> Event {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return ev;
            }
            let now = Instant::now();
            if now >= self.next_housekeeping {
                self.housekeeping(now);
            }
            let deadline = self
                .node
                .next_deadline()
                .unwrap_or(self.next_housekeeping)
                .min(self.next_housekeeping);
            tokio::select! {
                ev = self.events_rx.recv() => {
                    // The driver holds a sender itself, so the channel never closes.
                    if let Some(ev) = ev {
                        self.on_net(ev);
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if self.node.next_deadline().is_some_and(|d| d <= Instant::now()) {
                        self.input(Input::Timeout);
                    }
                }
            }
        }
    }

    /// Closes every connection and the endpoint.
    pub async fn shutdown(self) {
        for conns in self.peers.values() {
            for link in &conns.links {
                link.handle.close("shutdown");
            }
        }
        self.endpoint.close();
        self.endpoint.wait_idle().await;
    }

    fn input(&mut self, input: Input<Peer>) {
        if let Err(e) = self.try_input(input) {
            tracing::debug!("node input refused: {e}");
        }
    }

    fn try_input(&mut self, input: Input<Peer>) -> Result<(), node::Error> {
        let r = self.node.handle(Instant::now(), input);
        self.flush();
        r
    }

    /// Carries out what the core asks.
    fn flush(&mut self) {
        while let Some(out) = self.node.poll() {
            self.on_output(out);
        }
    }

    fn on_output(&mut self, out: Output<Peer>) {
        match out {
            Output::Send { to, msg } => self.send(to, &msg),
            Output::Connect(peer) => self.ensure_conn(peer),
            // Closed by housekeeping once idle, so a final Disconnect message still goes out.
            Output::Disconnect(_) => {}
            Output::NeighborUp(p) => {
                self.last_neighbor = Instant::now();
                self.pending.push_back(Event::NeighborUp(p));
            }
            Output::NeighborDown(p) => self.pending.push_back(Event::NeighborDown(p)),
            Output::Deliver { topic, id, payload, from, round } => {
                self.pending.push_back(Event::Deliver { topic, id, payload, from, round });
            }
            Output::Direct { from, payload } => {
                self.pending.push_back(Event::Direct { from, payload });
            }
            Output::Search(out) => self.pending.push_back(Event::Search(out)),
        }
    }

    fn send(&mut self, to: Peer, msg: &Wire<Peer>) {
        let frame = match wire::encode(msg) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("not sending an oversized frame to {to:?}: {e}");
                return;
            }
        };
        if self.at_peer_limit(to) {
            return;
        }
        let entry = self.peers.entry(to).or_default();
        entry.last_used = Some(Instant::now());
        if let Some(link) = entry.links.last() {
            if link.tx.try_send(frame).is_err() {
                tracing::debug!("write buffer to {to:?} full; frame dropped");
            }
            return;
        }
        match &mut entry.dialing {
            Some(queue) => {
                if queue.len() < MAX_QUEUED {
                    queue.push(frame);
                }
            }
            None => {
                entry.dialing = Some(vec![frame]);
                self.spawn_dial(to);
            }
        }
    }

    fn ensure_conn(&mut self, peer: Peer) {
        if self.at_peer_limit(peer) {
            return;
        }
        let entry = self.peers.entry(peer).or_default();
        entry.last_used = Some(Instant::now());
        if entry.links.is_empty() && entry.dialing.is_none() {
            entry.dialing = Some(Vec::new());
            self.spawn_dial(peer);
        }
    }

    /// Whether reaching `peer` would need a new dial beyond [`MAX_PEERS`]; if so the dial is
    /// reported failed through the event loop (after this round of outputs, as a real failure
    /// would be), so the core picks another peer.
    fn at_peer_limit(&self, peer: Peer) -> bool {
        if self.peers.contains_key(&peer) || self.peers.len() < MAX_PEERS {
            return false;
        }
        tracing::debug!("not dialing {peer:?}: already {MAX_PEERS} peers connected");
        // A full event channel drops the report; the core's own timers retry or give up.
        let _ = self.events_tx.try_send(NetEvent::DialRefused(peer));
        true
    }

    fn spawn_dial(&self, peer: Peer) {
        let (endpoint, tx) = (self.endpoint.clone(), self.events_tx.clone());
        tokio::spawn(async move {
            let result =
                endpoint.connect(peer.addr, Some(peer.id)).await.map_err(|e| e.to_string());
            let _ = tx.send(NetEvent::Dialed { peer, result }).await;
        });
    }

    fn resolve_anchors(&self) {
        for &addr in &self.anchors {
            let (endpoint, tx) = (self.endpoint.clone(), self.events_tx.clone());
            tokio::spawn(async move {
                let result = endpoint.connect(addr, None).await.map_err(|e| e.to_string());
                let _ = tx.send(NetEvent::AnchorResolved { addr, result }).await;
            });
        }
    }

    fn spawn_accept(&self) {
        let (endpoint, tx) = (self.endpoint.clone(), self.events_tx.clone());
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                match incoming {
                    Ok(conn) => {
                        if tx.send(NetEvent::Accepted(conn)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::debug!("incoming connection failed: {e}"),
                }
            }
        });
    }

    fn on_net(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Accepted(conn) => {
                let peer = Peer { id: conn.remote_id(), addr: conn.remote_addr() };
                if peer.id == self.me.id {
                    conn.close("self");
                } else if self.peers.len() >= MAX_PEERS && !self.peers.contains_key(&peer) {
                    tracing::warn!("refusing {peer:?}: already {MAX_PEERS} peers connected");
                    conn.close("busy");
                } else {
                    self.add_link(peer, conn);
                }
            }
            NetEvent::Dialed { peer, result } => match result {
                Ok(conn) => self.add_link(peer, conn),
                Err(e) => {
                    tracing::debug!("dial {peer:?} failed: {e}");
                    if let Some(entry) = self.peers.get_mut(&peer) {
                        entry.dialing = None;
                        if entry.links.is_empty() {
                            self.peers.remove(&peer);
                        }
                    }
                    self.input(Input::PeerFailed(peer));
                }
            },
            NetEvent::DialRefused(peer) => {
                // Unless a connection to it came about meanwhile, it failed.
                if !self.peers.contains_key(&peer) {
                    self.input(Input::PeerFailed(peer));
                }
            }
            NetEvent::AnchorResolved { addr, result } => match result {
                Ok(conn) => {
                    let peer = Peer { id: conn.remote_id(), addr };
                    if peer.id == self.me.id {
                        conn.close("self");
                        return;
                    }
                    self.add_link(peer, conn);
                    self.input(Input::Join { anchors: vec![peer] });
                }
                Err(e) => tracing::info!("anchor {addr} unreachable: {e}"),
            },
            NetEvent::Frame { peer, mut msg } => {
                if let Wire::Search(search::Msg::Hits { records, .. }) = &mut msg {
                    let now = unix_now();
                    let before = records.len();
                    records.retain(|r| match r.check(now) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::debug!("record from {peer:?} dropped: {e}");
                            false
                        }
                    });
                    self.refused_records += (before - records.len()) as u64;
                    if records.is_empty() {
                        return;
                    }
                }
                if let (
                    Some(valid),
                    Wire::Gossip { topic, msg: plumtree::Message::Gossip { id, payload, .. } },
                ) = (&self.validator, &msg)
                {
                    if !valid(topic, id, payload) {
                        self.refused_broadcast(peer);
                        return;
                    }
                }
                self.input(Input::Message { from: peer, msg });
            }
            NetEvent::Closed { peer, conn_id } => {
                let Some(entry) = self.peers.get_mut(&peer) else { return };
                entry.links.retain(|l| l.conn_id != conn_id);
                if entry.links.is_empty() && entry.dialing.is_none() {
                    self.peers.remove(&peer);
                    if self.node.membership().active().contains(&peer) {
                        self.input(Input::PeerFailed(peer));
                    }
                }
            }
        }
    }

    /// Counts a broadcast the validator refused against `peer`, closing its connections (which
    /// reports it failed) once it has sent [`MAX_INVALID_BROADCASTS`].
    fn refused_broadcast(&mut self, peer: Peer) {
        let Some(entry) = self.peers.get_mut(&peer) else { return };
        entry.invalid += 1;
        tracing::warn!("dropped an invalid broadcast from {peer:?} ({} so far)", entry.invalid);
        if entry.invalid >= MAX_INVALID_BROADCASTS {
            tracing::warn!("closing the connection to {peer:?}: it relays invalid broadcasts");
            for link in &entry.links {
                link.handle.close("invalid broadcasts");
            }
        }
    }

    fn add_link(&mut self, peer: Peer, conn: Conn) {
        let conn_id = self.next_conn_id;
        self.next_conn_id += 1;
        let (handle, sender, receiver) = conn.split();
        let (tx, rx) = mpsc::channel(WRITE_BUFFER);
        tokio::spawn(write_loop(sender, rx));
        tokio::spawn(read_loop(peer, conn_id, receiver, handle.clone(), self.events_tx.clone()));
        let entry = self.peers.entry(peer).or_default();
        let queued = entry.dialing.take().unwrap_or_default();
        for frame in queued {
            let _ = tx.try_send(frame);
        }
        entry.links.push(Link { conn_id, tx, handle });
        entry.last_used = Some(Instant::now());
    }

    fn housekeeping(&mut self, now: Instant) {
        self.next_housekeeping = now + Duration::from_secs(1);
        let active = self.node.membership().active().clone();
        for (peer, conns) in &mut self.peers {
            let idle = conns.last_used.is_none_or(|t| now.duration_since(t) > IDLE_CLOSE);
            if !active.contains(peer) && idle {
                for link in conns.links.drain(..) {
                    link.handle.close("idle");
                }
            }
        }
        self.peers.retain(|_, c| !c.links.is_empty() || c.dialing.is_some());
        if active.is_empty() {
            // Alone: ask the anchors again now and then (they may have come back).
            if now.duration_since(self.last_neighbor) > Duration::from_secs(10) {
                self.last_neighbor = now;
                self.resolve_anchors();
            }
        } else {
            self.last_neighbor = now;
        }
    }
}

async fn write_loop(mut sender: FrameSender, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(frame) = rx.recv().await {
        if sender.send(&frame).await.is_err() {
            return;
        }
    }
}

async fn read_loop(
    peer: Peer,
    conn_id: u64,
    mut receiver: FrameReceiver,
    conn: ConnHandle,
    tx: mpsc::Sender<NetEvent>,
) {
    let mut tokens = FRAME_BURST;
    let mut last = Instant::now();
    let mut dropped = 0u64;
    loop {
        let frame = match receiver.recv().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!("connection to {peer:?} ended: {e}");
                break;
            }
        };
        let now = Instant::now();
        tokens =
            (tokens + now.duration_since(last).as_secs_f64() * FRAMES_PER_SEC).min(FRAME_BURST);
        last = now;
        if tokens < 1.0 {
            dropped += 1;
            if dropped.is_power_of_two() {
                tracing::warn!("{peer:?} floods us: {dropped} frames dropped so far");
            }
            continue;
        }
        tokens -= 1.0;
        match wire::decode::<Wire<Peer>>(&frame) {
            Ok(msg) => {
                if tx.send(NetEvent::Frame { peer, msg }).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!("closing connection to {peer:?}: bad frame: {e}");
                conn.close("bad frame");
                break;
            }
        }
    }
    let _ = tx.send(NetEvent::Closed { peer, conn_id }).await;
}
