//! The torrent crate's one test harness for its cores: [`Net`] connects [`TorrentCore`]s in
//! memory, in virtual time, as quinn-proto's tests connect a `Pair` of connections. Messages
//! arrive at once (zero latency); blocks carry real bytes read from each node's copy of the
//! content, pieces are verified against the real SHA-1s, so a test asserts what a user would:
//! the bytes are equal, the liar is banned. Time moves only in [`Net::drive`], straight to the
//! next deadline of any core. A harness, not a core: it lives beside `proto/`, and reads the
//! clock once, for an arbitrary start instant (virtual time counts from there).
//!
//! Besides the torrent nodes, the net holds *fetchers*: [`MetadataCore`]s resolving a magnet
//! link from the nodes (BEP 9), connected to them the same way.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha1::{Digest, Sha1};

use crate::metainfo::InfoHash;
use crate::proto::choker::ChokerConfig;
use crate::proto::metadata::{self, MetadataConfig, MetadataCore};
use crate::proto::picker::PickerConfig;
use crate::proto::torrent::{CoreConfig, Geometry, Input, Output, TorrentCore};
use crate::proto::wire::Message;
use crate::proto::{PeerKey, BLOCK_SIZE};
use crate::{Bitfield, PeerId};

/// One node of the net.
pub struct Node {
    pub core: TorrentCore,
    pub data: Vec<u8>,
    pub addr: SocketAddr,
    pub id: PeerId,
    /// Flip the bytes of every block it serves.
    pub lies: bool,
    /// Never send a block (its uplink is stuck): peers stay interested.
    pub stalled: bool,
    /// Offer metadata in the extension handshake but never answer a request for it.
    pub hoards_metadata: bool,
    /// Answer block requests in batches, every this long since the start (as Transmission
    /// does every 500 ms) instead of at once.
    pub batch_every: Option<Duration>,
    /// Blocks waiting for the next batch: (connection, block length, message).
    held: Vec<(PeerKey, u32, Message)>,
    /// When the held blocks go out.
    release_at: Option<Instant>,
    /// The sizes of the batches it sent, in blocks.
    pub batches: Vec<usize>,
    /// Every message it sent: (time since start, its key, the message).
    pub sent: Vec<(Duration, PeerKey, Message)>,
    /// Every output it produced.
    pub outputs: Vec<Output>,
}

/// A magnet client of the net: a [`MetadataCore`] fetching the info dictionary from nodes.
pub struct Fetcher {
    pub core: MetadataCore,
    pub addr: SocketAddr,
    pub id: PeerId,
    /// Every output it produced.
    pub outputs: Vec<metadata::Output>,
}

/// One end of a connection: a torrent node or a fetcher, by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Node(usize),
    Fetcher(usize),
}

/// Cores connected in memory.
pub struct Net {
    pub nodes: Vec<Node>,
    pub fetchers: Vec<Fetcher>,
    pub start: Instant,
    pub now: Instant,
    content: Vec<u8>,
    piece_length: u32,
    hashes: Vec<[u8; 20]>,
    /// Connection `c` joins `ends[c].0` (key 2c) and `ends[c].1` (key 2c+1).
    ends: Vec<(End, End, bool)>,
    inbox: VecDeque<(usize, Input)>,
    fetcher_inbox: VecDeque<(usize, metadata::Input)>,
}

impl Net {
    /// `content` cut into pieces of `piece_length`; no node yet.
    pub fn new(content: Vec<u8>, piece_length: u32) -> Net {
        let hashes =
            content.chunks(piece_length as usize).map(|c| Sha1::digest(c).into()).collect();
        let start = Instant::now();
        Net {
            nodes: Vec::new(),
            fetchers: Vec::new(),
            start,
            now: start,
            content,
            piece_length,
            hashes,
            ends: Vec::new(),
            inbox: VecDeque::new(),
            fetcher_inbox: VecDeque::new(),
        }
    }

    /// The default configuration for node `i` (4 slots, 10 s / 30 s).
    pub fn config(i: usize) -> CoreConfig {
        CoreConfig {
            max_peers: 50,
            seed_when_done: true,
            choker: ChokerConfig::default(),
            picker: PickerConfig::default(),
            announce: false,
            our_port: 6881,
            our_id: Self::id(i),
            super_seed: false,
            pex: true,
            our_ipv6: None,
        }
    }

    fn id(i: usize) -> PeerId {
        let mut id = [b'n'; 20];
        id[..8].copy_from_slice(&(i as u64).to_be_bytes());
        PeerId(id)
    }

    /// Adds a seed (`true`) or an empty leecher; returns its index.
    pub fn add(&mut self, seed: bool, config: CoreConfig) -> usize {
        self.add_node(seed, config, Bytes::new())
    }

    /// Adds a seed that serves `metadata` as the torrent's info dictionary (BEP 9); returns
    /// its index.
    pub fn add_metadata_seed(&mut self, metadata: Bytes, config: CoreConfig) -> usize {
        self.add_node(true, config, metadata)
    }

    fn add_node(&mut self, seed: bool, config: CoreConfig, metadata: Bytes) -> usize {
        let i = self.nodes.len();
        let pieces = self.hashes.len() as u32;
        let have = if seed { Bitfield::full(pieces) } else { Bitfield::new(pieces) };
        let geometry = Geometry {
            piece_length: self.piece_length,
            total_length: self.content.len() as u64,
            metadata,
        };
        let rng = ChaCha8Rng::seed_from_u64(i as u64 + 1);
        let core = TorrentCore::new(geometry, have, config, rng, self.now);
        let data = if seed { self.content.clone() } else { vec![0; self.content.len()] };
        let addr = SocketAddr::from(([10, 0, 0, i as u8 + 1], 6881));
        self.nodes.push(Node {
            core,
            data,
            addr,
            id: Self::id(i),
            lies: false,
            stalled: false,
            hoards_metadata: false,
            batch_every: None,
            held: Vec::new(),
            release_at: None,
            batches: Vec::new(),
            sent: Vec::new(),
            outputs: Vec::new(),
        });
        i
    }

    /// Adds a fetcher of the dictionary hashing to `info_hash` that knows the addresses of
    /// `nodes`; returns its index. It dials them as the net is driven.
    pub fn add_fetcher(
        &mut self,
        info_hash: InfoHash,
        nodes: &[usize],
        config: MetadataConfig,
    ) -> usize {
        let f = self.fetchers.len();
        let peers = nodes.iter().map(|&i| self.nodes[i].addr).collect();
        self.fetchers.push(Fetcher {
            core: MetadataCore::new(info_hash, peers, config, self.now),
            addr: SocketAddr::from(([10, 1, 0, f as u8 + 1], 6881)),
            id: Self::id(1000 + f),
            outputs: Vec::new(),
        });
        f
    }

    /// Connects `a` (dialer) and `b`; returns their keys for each other.
    pub fn connect(&mut self, a: usize, b: usize) -> (PeerKey, PeerKey) {
        self.link(End::Node(a), b)
    }

    /// Connects `a` (dialer) to node `b`; returns their keys for each other.
    fn link(&mut self, a: End, b: usize) -> (PeerKey, PeerKey) {
        let c = self.ends.len() as u64;
        self.ends.push((a, End::Node(b), true));
        let (ka, kb) = (PeerKey(2 * c), PeerKey(2 * c + 1));
        let (addr_a, id_a) = match a {
            End::Node(a) => (self.nodes[a].addr, self.nodes[a].id),
            End::Fetcher(f) => (self.fetchers[f].addr, self.fetchers[f].id),
        };
        let (addr_b, id_b) = (self.nodes[b].addr, self.nodes[b].id);
        let input = |peer, addr, id, outgoing| Input::Connected {
            peer,
            addr,
            id,
            fast: true,
            extensions: true,
            outgoing,
        };
        self.inbox.push_back((b, input(kb, addr_a, id_a, false)));
        match a {
            End::Node(a) => self.inbox.push_back((a, input(ka, addr_b, id_b, true))),
            End::Fetcher(f) => {
                let input = metadata::Input::Connected {
                    peer: ka,
                    addr: addr_b,
                    fast: true,
                    extensions: true,
                };
                self.fetcher_inbox.push_back((f, input));
            }
        }
        (ka, kb)
    }

    /// The key the other end of `key`'s connection knows it by (open or closed).
    pub fn other_end(key: PeerKey) -> PeerKey {
        if key.0.is_multiple_of(2) {
            PeerKey(key.0 + 1)
        } else {
            PeerKey(key.0 - 1)
        }
    }

    fn other(&self, key: PeerKey) -> Option<(End, PeerKey)> {
        let (a, b, open) = self.ends[(key.0 / 2) as usize];
        open.then(|| (if key.0.is_multiple_of(2) { b } else { a }, Self::other_end(key)))
    }

    /// Delivers a message over the connection `key` is one end of, if it is open.
    fn deliver(&mut self, key: PeerKey, msg: Message) -> bool {
        let Some((to, their)) = self.other(key) else {
            return false;
        };
        match to {
            End::Node(i) => self.inbox.push_back((i, Input::Message(their, msg))),
            End::Fetcher(f) => {
                self.fetcher_inbox.push_back((f, metadata::Input::Message(their, msg)))
            }
        }
        true
    }

    /// Closes the connection `key` is one end of; the other end hears of it.
    fn close(&mut self, key: PeerKey) {
        let Some((to, their)) = self.other(key) else {
            return;
        };
        self.ends[(key.0 / 2) as usize].2 = false;
        match to {
            End::Node(i) => self.inbox.push_back((i, Input::Closed(their, "closed".into()))),
            End::Fetcher(f) => {
                let input = metadata::Input::Closed(their, "closed".into());
                self.fetcher_inbox.push_back((f, input));
            }
        }
    }

    fn carry_out_fetch(&mut self, f: usize, out: metadata::Output) {
        self.fetchers[f].outputs.push(out.clone());
        match out {
            metadata::Output::Send(key, msg) => {
                self.deliver(key, msg);
            }
            metadata::Output::Connect(addr) => {
                if let Some(b) = self.nodes.iter().position(|n| n.addr == addr) {
                    self.link(End::Fetcher(f), b);
                } else {
                    let input = metadata::Input::ConnectFailed(addr, "no such node".into());
                    self.fetcher_inbox.push_back((f, input));
                }
            }
            metadata::Output::Disconnect(key, _) => self.close(key),
            // The test net has no tracker to ask again.
            metadata::Output::WantPeers
            | metadata::Output::Done(_)
            | metadata::Output::Failed { .. } => {}
        }
    }

    fn carry_out(&mut self, i: usize, out: Output) {
        self.nodes[i].outputs.push(out.clone());
        let elapsed = self.now - self.start;
        match out {
            Output::Send(_, Message::Extended { id, .. })
                if id != 0 && self.nodes[i].hoards_metadata => {}
            Output::Send(key, msg) => {
                self.nodes[i].sent.push((elapsed, key, msg.clone()));
                self.deliver(key, msg);
            }
            Output::Serve(_, _) if self.nodes[i].stalled => {}
            Output::Serve(key, b) => {
                let start = b.piece as usize * self.piece_length as usize + b.offset as usize;
                let mut bytes = self.nodes[i].data[start..start + b.length as usize].to_vec();
                if self.nodes[i].lies {
                    bytes.iter_mut().for_each(|x| *x ^= 0xff);
                }
                let msg = Message::Piece { piece: b.piece, offset: b.offset, data: bytes.into() };
                if let Some(every) = self.nodes[i].batch_every {
                    // The next multiple of the period after now.
                    let periods = elapsed.as_nanos() / every.as_nanos() + 1;
                    let at = self.start + every * periods as u32;
                    self.nodes[i].release_at.get_or_insert(at);
                    self.nodes[i].held.push((key, b.length, msg));
                } else {
                    self.send_block(i, key, b.length, msg);
                }
            }
            // A block held for the next batch is dropped when cancelled, as a real seed drops a
            // queued one.
            Output::CancelServe(key, b) => self.nodes[i].held.retain(|(k, _, m)| {
                *k != key
                    || !matches!(m, Message::Piece { piece, offset, .. }
                        if *piece == b.piece && *offset == b.offset)
            }),
            Output::DropServes { .. } => {}
            Output::Disconnect(key, _) => self.close(key),
            Output::Connect(addr) => {
                if let Some(b) = self.nodes.iter().position(|n| n.addr == addr) {
                    self.connect(i, b);
                } else {
                    self.inbox.push_back((i, Input::ConnectFailed(addr)));
                }
            }
            Output::Write { piece, offset, data } => {
                let start = piece as usize * self.piece_length as usize + offset as usize;
                self.nodes[i].data[start..start + data.len()].copy_from_slice(&data);
            }
            Output::Verify { piece, blocks } => {
                let pl = self.piece_length as usize;
                let start = piece as usize * pl;
                let end = (start + pl).min(self.content.len());
                let bytes = &self.nodes[i].data[start..end];
                let ok = <[u8; 20]>::from(Sha1::digest(bytes)) == self.hashes[piece as usize];
                let digests = (blocks || !ok).then(|| {
                    bytes.chunks(BLOCK_SIZE as usize).map(|b| Sha1::digest(b).into()).collect()
                });
                self.inbox.push_back((i, Input::Verified { piece, ok, blocks: digests }));
            }
            Output::Sync => self.inbox.push_back((i, Input::Synced)),
            Output::Announce { .. } | Output::Event(_) => {}
        }
    }

    fn send_block(&mut self, i: usize, key: PeerKey, length: u32, msg: Message) {
        let elapsed = self.now - self.start;
        self.nodes[i].sent.push((elapsed, key, msg.clone()));
        if self.deliver(key, msg) {
            self.inbox.push_back((i, Input::Uploaded(key, length as u64)));
        }
    }

    /// Runs until nothing is left to do before `until` (virtual time since the start); time
    /// jumps from deadline to deadline.
    pub fn drive(&mut self, until: Duration) {
        loop {
            let mut busy = false;
            for i in 0..self.nodes.len() {
                while let Some(out) = self.nodes[i].core.poll() {
                    busy = true;
                    self.carry_out(i, out);
                }
            }
            for f in 0..self.fetchers.len() {
                while let Some(out) = self.fetchers[f].core.poll() {
                    busy = true;
                    self.carry_out_fetch(f, out);
                }
            }
            while let Some((i, input)) = self.inbox.pop_front() {
                busy = true;
                let now = self.now;
                self.nodes[i].core.handle(now, input);
            }
            while let Some((f, input)) = self.fetcher_inbox.pop_front() {
                busy = true;
                let now = self.now;
                self.fetchers[f].core.handle(now, input);
            }
            if busy {
                continue;
            }
            let nodes = self.nodes.iter().map(|n| n.core.next_deadline());
            let fetchers = self.fetchers.iter().map(|f| f.core.next_deadline());
            let batches = self.nodes.iter().map(|n| n.release_at);
            let next = nodes.chain(fetchers).chain(batches).flatten().min();
            let Some(next) = next.filter(|t| *t - self.start <= until) else {
                self.now = self.start + until;
                return;
            };
            self.now = self.now.max(next);
            for i in 0..self.nodes.len() {
                if self.nodes[i].release_at.is_some_and(|t| t <= self.now) {
                    self.nodes[i].release_at = None;
                    let held = std::mem::take(&mut self.nodes[i].held);
                    self.nodes[i].batches.push(held.len());
                    for (key, length, msg) in held {
                        self.send_block(i, key, length, msg);
                    }
                }
                if self.nodes[i].core.next_deadline().is_some_and(|t| t <= self.now) {
                    let now = self.now;
                    self.nodes[i].core.handle(now, Input::Timeout);
                }
            }
            for f in 0..self.fetchers.len() {
                if self.fetchers[f].core.next_deadline().is_some_and(|t| t <= self.now) {
                    let now = self.now;
                    self.fetchers[f].core.handle(now, metadata::Input::Timeout);
                }
            }
        }
    }

    /// The content every node should end with.
    pub fn content(&self) -> &[u8] {
        &self.content
    }
}
