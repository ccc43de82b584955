//! [`MetadataCore`]: fetching a magnet link's info dictionary from peers (BEP 9, `ut_metadata`),
//! as a sans-IO state machine.
//!
//! A magnet link names a torrent by the SHA-1 of its info dictionary and nothing more; before a
//! [`TorrentCore`](super::torrent::TorrentCore) can be built, the dictionary must be fetched from
//! peers in 16 KiB pieces. This core dials the addresses it is given, exchanges extension
//! handshakes, asks several peers in parallel for different pieces, and finishes with the
//! dictionary once its SHA-1 equals the info-hash ([`Output::Done`]). Once every address was
//! tried with no success it asks its owner for more ([`Output::WantPeers`], answered with
//! [`Input::Peers`]), paced, and fails ([`Output::Failed`]) when
//! [`MetadataConfig::patience`] runs out. The tokio driver ([`crate::session::magnet`]) and the test
//! harness (`testnet`) drive this very type; the serving side lives in `TorrentCore`.
//!
//! # Using it
//!
//! Methods fall into the four groups of every core:
//!
//! - *getters*: [`MetadataCore::is_finished`], [`MetadataCore::metadata_size`],
//!   [`MetadataCore::pieces_have`], [`MetadataCore::peer_keys`], [`MetadataCore::tried`];
//! - *handlers*: [`MetadataCore::handle`] with an [`Input`]: a connection finished its
//!   BitTorrent handshake or failed, a peer sent a message (its extension handshake, with
//!   `metadata_size` and its `ut_metadata` id, arrives as one) or went away, more addresses
//!   came ([`Input::Peers`]), or a deadline passed ([`Input::Timeout`]);
//! - *mutators*: none (the owner gives up by dropping the core);
//! - *polling*: [`MetadataCore::poll`], drained until `None` after every call above, and
//!   [`MetadataCore::next_deadline`], the instant at which to call `handle(now, Input::Timeout)`.
//!
//! ```no_run
//! # use std::time::Instant;
//! # use torrent::proto::metadata::{Input, MetadataConfig, MetadataCore, Output};
//! # fn wait_for_input_until(_: Option<Instant>) -> Option<Input> { None }
//! # let (info_hash, peers) = (torrent::InfoHash([0; 20]), vec![]);
//! let mut core = MetadataCore::new(info_hash, peers, MetadataConfig::default(), Instant::now());
//! let info_bytes = loop {
//!     match core.poll() {
//!         Some(Output::Done(bytes)) => break Some(bytes),
//!         Some(Output::Failed { .. }) => break None,
//!         Some(_send_connect_or_disconnect) => continue, // carry it out
//!         None => {}
//!     }
//!     let input = wait_for_input_until(core.next_deadline()).unwrap_or(Input::Timeout);
//!     core.handle(Instant::now(), input);
//! };
//! ```
//!
//! # Invariants (every byte from a peer is hostile)
//!
//! - the result is the concatenation of the pieces, and only once its SHA-1 equals the
//!   info-hash: no piece is trusted on its own (BEP 9 has no per-piece hashes);
//! - a claimed `metadata_size` of 0 or over [`MAX_METADATA`] disconnects the peer before anything
//!   is allocated for it; so does a piece we did not ask that peer for, one whose `total_size`
//!   or length is not what the size implies, a reject, or silence for
//!   [`MetadataConfig::timeout`] while we wait for its handshake or a piece, or reaching
//!   [`SERVE_BUDGET`] timeouts after it was first asked for a piece (owing pieces or not: it
//!   is asked for no more);
//! - blame: when the assembled dictionary does not hash to the info-hash, a single peer that
//!   sent every piece is disconnected; if several sent pieces, the liar cannot be told apart,
//!   so from then on every piece comes from one peer at a time (the *single-source* mode), and
//!   the next mismatch names its sender. Each mismatch thus costs at most one address, and an
//!   address that broke a rule (a lie, a bad size, a piece not asked for, no extension
//!   protocol) is never dialled again. Others (refused, closed, silent, no dictionary yet, a
//!   reject) may be dialled again when more peers are asked for; the fetch fails at the latest
//!   [`MetadataConfig::patience`] after it first ran out of addresses, so it ends;
//! - bounded: at most [`MetadataConfig::max_peers`] connections, [`MAX_CANDIDATES`] addresses,
//!   [`PIPELINE`] requests per peer, and the pieces of one size at or under [`MAX_METADATA`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sha1::{Digest, Sha1};
use tracing::debug;

use super::ext::{
    metadata_piece_range, ExtHandshake, MetadataMsg, MAX_METADATA, METADATA_PIECE, OUR_UT_METADATA,
};
use super::torrent::MAX_CANDIDATES;
use super::wire::Message;
use super::PeerKey;
use crate::metainfo::InfoHash;

/// Most metadata requests in flight to one peer. libtorrent rejects requests beyond a small
/// queue of its own, and a reject drops the peer, so we stay well under it.
pub const PIPELINE: usize = 2;
/// A peer is disconnected this many [`MetadataConfig::timeout`]s after it was first asked for
/// a piece (2 minutes by default: a 4 MiB dictionary is 256 pieces).
pub const SERVE_BUDGET: u32 = 4;

/// How a metadata fetch behaves.
#[derive(Clone, Debug)]
pub struct MetadataConfig {
    /// Most connections open or being dialled at once (each may be asked for pieces).
    pub max_peers: usize,
    /// A peer that sends no extension handshake, or no piece we wait for, for this long is
    /// disconnected and its pieces asked of others.
    pub timeout: Duration,
    /// How long the fetch goes on once every address was tried with no peer offering the
    /// dictionary, asking its owner for peers again ([`Output::WantPeers`]) and dialling again
    /// every address that broke no rule, before it fails. Zero: fail as soon as every address
    /// was tried.
    ///
    /// Why: in a flash crowd of magnet links most addresses a tracker hands out are peers that
    /// are themselves still fetching; they refuse us now and have the dictionary a second
    /// later. `swarmcast sim swarm --peers 200 --magnet` measured it: with no patience, 5 of
    /// 200 leechers failed (their 30 addresses were all still fetching).
    pub patience: Duration,
}

impl Default for MetadataConfig {
    /// 8 connections, 30 s per peer (libtorrent's peer timeout is 120 s, its handshake timeout
    /// 10 s), and 5 minutes of patience (libtorrent and qBittorrent wait for metadata until the
    /// user gives up; a one-shot `get` should end by itself).
    fn default() -> Self {
        MetadataConfig {
            max_peers: 8,
            timeout: Duration::from_secs(30),
            patience: Duration::from_secs(300),
        }
    }
}

/// The first wait before [`Output::WantPeers`] once every address was tried; each later wait
/// doubles, up to [`WANT_PEERS_MAX`].
pub const WANT_PEERS_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two [`Output::WantPeers`].
pub const WANT_PEERS_MAX: Duration = Duration::from_secs(30);

/// What arrives at the core.
#[derive(Debug)]
pub enum Input {
    /// A connection asked for by [`Output::Connect`] finished its BitTorrent handshake. `peer`
    /// is a key the owner never used before; `fast` and `extensions` are the reserved bits of
    /// the peer's handshake (BEP 6, BEP 10).
    Connected { peer: PeerKey, addr: SocketAddr, fast: bool, extensions: bool },
    /// A dial asked for by [`Output::Connect`] failed, and why.
    ConnectFailed(SocketAddr, String),
    /// A peer sent a message (its extension handshake is `Extended { id: 0, .. }`).
    Message(PeerKey, Message),
    /// A connection closed.
    Closed(PeerKey, String),
    /// More addresses, the answer to [`Output::WantPeers`] (or news at any time): new ones are
    /// dialled, and known ones again unless they broke a rule.
    Peers(Vec<SocketAddr>),
    /// [`MetadataCore::next_deadline`] passed.
    Timeout,
}

/// What the owner must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a message to a peer.
    Send(PeerKey, Message),
    /// Dial this address and report [`Input::Connected`] or [`Input::ConnectFailed`].
    Connect(SocketAddr),
    /// Close the connection (no more inputs for this key are needed).
    Disconnect(PeerKey, String),
    /// Every address was tried and none gave the dictionary yet: ask the trackers (or whatever
    /// gave the first addresses) again and report [`Input::Peers`]. Paced by the core (1 s,
    /// doubling to 30 s), and only within [`MetadataConfig::patience`].
    WantPeers,
    /// The info dictionary, its SHA-1 checked against the info-hash. The last output.
    Done(Bytes),
    /// Every address was tried and none gave the dictionary. The last output.
    Failed { tried: usize, last: String },
}

/// One piece of the dictionary.
#[derive(Clone)]
enum Slot {
    Missing,
    Asked(PeerKey),
    /// Received, and from whom (kept for blame if the whole does not hash right).
    Have(Bytes, PeerKey),
}

/// Whom pieces may be asked of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sources {
    /// Every peer that claims the current size, in parallel.
    Many,
    /// After a mismatch with several senders: one peer at a time, so that the next mismatch
    /// names its sender (`None` until one is chosen).
    One(Option<PeerKey>),
}

struct Peer {
    addr: SocketAddr,
    /// The id the peer wants `ut_metadata` messages under, from its extension handshake.
    their_id: Option<u8>,
    /// The dictionary's size as the peer claims it (checked against [`MAX_METADATA`]); `None`
    /// until its extension handshake offered metadata.
    size: Option<u32>,
    /// Pieces asked of this peer and not yet answered (at most [`PIPELINE`]).
    asked: Vec<u32>,
    /// While we wait for its handshake or a piece: when it must have answered (never later
    /// than `give_up`).
    deadline: Instant,
    /// When it was first asked for a piece plus [`SERVE_BUDGET`] timeouts: a peer that answers
    /// just inside the timeout, piece after piece, is cut off then, so it cannot hold the
    /// fetch (and a connection slot) for hours.
    give_up: Option<Instant>,
}

/// Why a peer is dropped.
enum Refused {
    /// It broke a rule: its address is never dialled again.
    Broke(String),
    /// It has nothing for us now (no dictionary yet, or a reject): its address may be dialled
    /// again when more peers are asked for.
    NotYet(String),
}

impl From<String> for Refused {
    fn from(why: String) -> Self {
        Refused::Broke(why)
    }
}

impl From<&str> for Refused {
    fn from(why: &str) -> Self {
        Refused::Broke(why.into())
    }
}

impl Peer {
    fn waited_for(&self) -> bool {
        self.size.is_none() || !self.asked.is_empty()
    }
}

/// One metadata fetch. See the [module documentation](self).
pub struct MetadataCore {
    info_hash: InfoHash,
    config: MetadataConfig,
    /// Addresses to dial, in the order given (each at most once in the queue); `seen` holds
    /// every address ever given (at most [`MAX_CANDIDATES`]): a known one is queued again only
    /// by [`Input::Peers`].
    untried: VecDeque<SocketAddr>,
    seen: BTreeSet<SocketAddr>,
    connecting: BTreeSet<SocketAddr>,
    peers: BTreeMap<PeerKey, Peer>,
    /// The size the pieces are cut for: the claim of a connected peer (see `settle_size`).
    size: Option<u32>,
    pieces: Vec<Slot>,
    sources: Sources,
    /// Addresses that broke a rule: never dialled again.
    banned: BTreeSet<SocketAddr>,
    /// Since when every address was tried with no peer offering the dictionary (reset when
    /// one offers it), and when to ask for peers next.
    stuck_since: Option<Instant>,
    want_at: Option<Instant>,
    want_wait: Duration,
    /// The last reason a peer or a dial failed, for [`Output::Failed`].
    last_error: String,
    finished: bool,
    out: VecDeque<Output>,
}

impl MetadataCore {
    /// A fetch of the dictionary whose SHA-1 is `info_hash`, from `peers` (at most
    /// [`MAX_CANDIDATES`] are kept), starting at `now`. With no address at all it is out of
    /// addresses at once: it asks for peers ([`Output::WantPeers`]) or, with no patience,
    /// fails.
    pub fn new(
        info_hash: InfoHash,
        peers: Vec<SocketAddr>,
        config: MetadataConfig,
        now: Instant,
    ) -> Self {
        let mut core = MetadataCore {
            info_hash,
            config,
            untried: VecDeque::new(),
            seen: BTreeSet::new(),
            connecting: BTreeSet::new(),
            peers: BTreeMap::new(),
            size: None,
            pieces: Vec::new(),
            sources: Sources::Many,
            banned: BTreeSet::new(),
            stuck_since: None,
            want_at: None,
            want_wait: WANT_PEERS_FIRST,
            last_error: "no peer answered".into(),
            finished: false,
            out: VecDeque::new(),
        };
        for addr in peers {
            if core.seen.len() >= MAX_CANDIDATES {
                break;
            }
            if core.seen.insert(addr) {
                core.untried.push_back(addr);
            }
        }
        core.progress(now);
        core
    }

    // ---- getters ----

    /// True once [`Output::Done`] or [`Output::Failed`] was queued.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The size the pieces are being fetched for, once a peer offered one.
    pub fn metadata_size(&self) -> Option<u32> {
        self.size
    }

    /// Pieces received so far (of the current size).
    pub fn pieces_have(&self) -> usize {
        self.pieces.iter().filter(|s| matches!(s, Slot::Have(..))).count()
    }

    /// Keys of the connected peers, in order.
    pub fn peer_keys(&self) -> impl Iterator<Item = PeerKey> + '_ {
        self.peers.keys().copied()
    }

    /// Distinct addresses dialled so far (one queued to be dialled again is not counted while
    /// it waits).
    pub fn tried(&self) -> usize {
        self.seen.len() - self.untried.len()
    }

    // ---- handlers ----

    /// Feeds what arrived at `now`.
    pub fn handle(&mut self, now: Instant, input: Input) {
        if self.finished {
            // Late connections are closed; nothing else needs an answer.
            if let Input::Connected { peer, .. } = input {
                self.out.push_back(Output::Disconnect(peer, "metadata fetch is over".into()));
            }
            return;
        }
        match input {
            Input::Connected { peer, addr, fast, extensions } => {
                self.on_connected(now, peer, addr, fast, extensions)
            }
            Input::ConnectFailed(addr, why) => {
                self.connecting.remove(&addr);
                self.last_error = format!("{addr}: {why}");
                debug!(%addr, "metadata dial failed: {why}");
            }
            Input::Message(peer, msg) => match self.on_message(now, peer, msg) {
                Ok(()) => {}
                Err(Refused::Broke(why)) => {
                    if let Some(p) = self.peers.get(&peer) {
                        self.banned.insert(p.addr);
                    }
                    self.drop_peer(peer, &why);
                }
                Err(Refused::NotYet(why)) => self.drop_peer(peer, &why),
            },
            Input::Peers(addrs) => self.add_peers(addrs),
            Input::Closed(peer, why) => {
                if self.peers.contains_key(&peer) {
                    self.forget(peer, &why);
                }
            }
            Input::Timeout => {
                let patience_over =
                    self.stuck_since.is_some_and(|t| now >= t + self.config.patience);
                if self.want_at.is_some_and(|t| t <= now) && !patience_over {
                    self.want_at = None;
                    self.want_wait = (self.want_wait * 2).min(WANT_PEERS_MAX);
                    self.out.push_back(Output::WantPeers);
                }
                let timeout = self.config.timeout;
                let silent: Vec<PeerKey> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| p.waited_for() && p.deadline <= now)
                    .map(|(k, _)| *k)
                    .collect();
                for k in silent {
                    let why =
                        if self.peers.get(&k).and_then(|p| p.give_up).is_some_and(|t| t <= now) {
                            self.over_budget()
                        } else {
                            format!("answered nothing for {timeout:?}")
                        };
                    self.drop_peer(k, &why);
                }
            }
        }
        self.progress(now);
    }

    // ---- polling ----

    /// The next thing to do, until `None`.
    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When to call `handle(now, Input::Timeout)` next.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        let peers = self.peers.values().filter(|p| p.waited_for()).map(|p| p.deadline);
        // Out of addresses (`want_at` is armed only then): patience ends then at the latest.
        let patience = self.want_at.and(self.stuck_since).map(|t| t + self.config.patience);
        peers.chain(self.want_at).chain(patience).min()
    }

    // ---- internals ----

    fn on_connected(
        &mut self,
        now: Instant,
        key: PeerKey,
        addr: SocketAddr,
        fast: bool,
        extensions: bool,
    ) {
        self.connecting.remove(&addr);
        if !extensions {
            self.banned.insert(addr);
            self.last_error = format!("{addr}: peer does not support the extension protocol");
            self.out.push_back(Output::Disconnect(key, "no extension protocol".into()));
            return;
        }
        if self.peers.len() >= self.config.max_peers {
            self.out.push_back(Output::Disconnect(key, "too many peers".into()));
            return;
        }
        let deadline = now + self.config.timeout;
        let peer =
            Peer { addr, their_id: None, size: None, asked: Vec::new(), deadline, give_up: None };
        self.peers.insert(key, peer);
        // BEP 6: with the fast extension the first message says what we have: nothing.
        if fast {
            self.out.push_back(Output::Send(key, Message::HaveNone));
        }
        let hs = ExtHandshake { ut_metadata: Some(OUR_UT_METADATA), ..Default::default() };
        let payload = Bytes::from(hs.encode());
        self.out.push_back(Output::Send(key, Message::Extended { id: 0, payload }));
    }

    fn on_message(&mut self, now: Instant, key: PeerKey, msg: Message) -> Result<(), Refused> {
        let Message::Extended { id, payload } = msg else {
            // What it has and its choke state do not matter for metadata.
            return Ok(());
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            return Ok(());
        };
        if id == 0 {
            if peer.their_id.is_some() {
                // Only the first handshake counts: a size must not change under our requests.
                return Ok(());
            }
            let hs = ExtHandshake::decode(&payload).map_err(|e| e.to_string())?;
            let their_id = hs.ut_metadata.ok_or("peer does not offer metadata (ut_metadata)")?;
            // A peer still fetching the dictionary itself offers none yet.
            let no_size = || Refused::NotYet("peer has no metadata to offer yet".into());
            let size = hs.metadata_size.ok_or_else(no_size)?;
            if size == 0 || size > MAX_METADATA {
                let why = format!("peer claims metadata of {size} bytes (cap {MAX_METADATA})");
                return Err(why.into());
            }
            // Patience is not restored here: a peer that offers the dictionary and then
            // rejects or stalls is dialled again, and must not keep the fetch alive forever.
            peer.their_id = Some(their_id);
            peer.size = Some(size);
            return Ok(());
        }
        if id != OUR_UT_METADATA {
            return Ok(());
        }
        match MetadataMsg::decode(&payload).map_err(|e| e.to_string())? {
            MetadataMsg::Request { piece } => {
                // We have nothing to serve yet.
                if let Some(their_id) = peer.their_id {
                    let payload = Bytes::from(MetadataMsg::Reject { piece }.encode());
                    let msg = Message::Extended { id: their_id, payload };
                    self.out.push_back(Output::Send(key, msg));
                }
                Ok(())
            }
            MetadataMsg::Reject { piece } => {
                Err(Refused::NotYet(format!("peer rejected metadata piece {piece}")))
            }
            MetadataMsg::Data { piece, total_size, data } => {
                let Some(at) = peer.asked.iter().position(|&p| p == piece) else {
                    let why = format!("peer sent metadata piece {piece} we did not ask it for");
                    return Err(why.into());
                };
                // A piece is only asked for while its peer claims the current size.
                let size = self.size.ok_or("metadata piece without a size")?;
                let want = metadata_piece_range(size as usize, piece).map_or(0, |r| r.len());
                if total_size != size || data.len() != want {
                    let why = format!("peer sent metadata piece {piece} of the wrong size");
                    return Err(why.into());
                }
                peer.asked.swap_remove(at);
                let next = now + self.config.timeout;
                peer.deadline = peer.give_up.map_or(next, |t| next.min(t));
                // In range: a peer is asked only for pieces of the current size, and the size
                // does not change while a peer claiming it is connected.
                let slot =
                    self.pieces.get_mut(piece as usize).ok_or("metadata piece out of range")?;
                *slot = Slot::Have(data, key);
                self.verify_if_complete();
                Ok(())
            }
        }
    }

    /// Checks the assembled dictionary once every piece is in.
    fn verify_if_complete(&mut self) {
        // Nothing is copied until every piece is in (this runs on every piece).
        let have = |s: &Slot| match s {
            Slot::Have(data, from) => Some((data.clone(), *from)),
            _ => None,
        };
        let Some(parts) = self.pieces.iter().map(have).collect::<Option<Vec<_>>>() else {
            return;
        };
        let mut raw = BytesMut::new();
        let mut senders = BTreeSet::new();
        for (data, from) in parts {
            raw.extend_from_slice(&data);
            senders.insert(from);
        }
        if Sha1::digest(&raw).as_slice() == self.info_hash.0 {
            debug!(bytes = raw.len(), peers = senders.len(), "metadata verified");
            for key in std::mem::take(&mut self.peers).into_keys() {
                self.out.push_back(Output::Disconnect(key, "metadata fetched".into()));
            }
            self.out.push_back(Output::Done(raw.freeze()));
            self.finished = true;
            return;
        }
        self.pieces.fill(Slot::Missing);
        let mut senders = senders.into_iter();
        match (senders.next(), senders.next()) {
            (Some(liar), None) => {
                if let Some(p) = self.peers.get(&liar) {
                    self.banned.insert(p.addr);
                }
                self.drop_peer(liar, "sent metadata that does not match the info-hash")
            }
            _ => {
                debug!("metadata from several peers does not match: one source at a time now");
                self.sources = Sources::One(None);
            }
        }
    }

    fn over_budget(&self) -> String {
        format!("took longer than {:?} to send the metadata", self.config.timeout * SERVE_BUDGET)
    }

    /// Disconnects a peer that broke a rule or answered nothing.
    fn drop_peer(&mut self, key: PeerKey, why: &str) {
        if self.peers.contains_key(&key) {
            self.out.push_back(Output::Disconnect(key, why.to_string()));
            self.forget(key, why);
        }
    }

    /// Removes a peer; what was asked of it goes back to be asked of others.
    fn forget(&mut self, key: PeerKey, why: &str) {
        let Some(p) = self.peers.remove(&key) else {
            return;
        };
        debug!(peer = %p.addr, "metadata peer gone: {why}");
        self.last_error = format!("{}: {why}", p.addr);
        for slot in &mut self.pieces {
            if matches!(slot, Slot::Asked(k) if *k == key) {
                *slot = Slot::Missing;
            }
        }
        if self.sources == Sources::One(Some(key)) {
            // Pieces from two sources could not be blamed: the next source starts afresh.
            self.sources = Sources::One(None);
            self.pieces.fill(Slot::Missing);
        }
    }

    /// Queues addresses to dial: new ones (while fewer than [`MAX_CANDIDATES`] were ever
    /// given) and known ones again, unless they broke a rule or are dialled or connected now.
    fn add_peers(&mut self, addrs: Vec<SocketAddr>) {
        for addr in addrs {
            let busy = self.connecting.contains(&addr)
                || self.untried.contains(&addr)
                || self.peers.values().any(|p| p.addr == addr);
            if busy || self.banned.contains(&addr) {
                continue;
            }
            if self.seen.contains(&addr) || self.seen.len() < MAX_CANDIDATES {
                self.seen.insert(addr);
                self.untried.push_back(addr);
            }
        }
    }

    /// After every input: drop peers past their budget, dial, ask, ask for more peers, or give
    /// up.
    fn progress(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        // A peer past its budget is never asked again (asking would set a deadline already
        // passed); it may be dialled again later.
        let spent: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, p)| p.give_up.is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for k in spent {
            self.drop_peer(k, &self.over_budget());
        }
        self.connect_more();
        self.settle_size();
        self.request_more(now);
        if !(self.untried.is_empty() && self.connecting.is_empty() && self.peers.is_empty()) {
            self.want_at = None;
            return;
        }
        let since = *self.stuck_since.get_or_insert(now);
        if now >= since + self.config.patience {
            self.finished = true;
            let last = std::mem::take(&mut self.last_error);
            self.out.push_back(Output::Failed { tried: self.tried(), last });
        } else if self.want_at.is_none() {
            self.want_at = Some(now + self.want_wait);
        }
    }

    fn connect_more(&mut self) {
        while self.peers.len() + self.connecting.len() < self.config.max_peers {
            let Some(addr) = self.untried.pop_front() else {
                return;
            };
            self.connecting.insert(addr);
            self.out.push_back(Output::Connect(addr));
        }
    }

    /// Keeps the pieces cut for a size some connected peer claims: when none claims the
    /// current one any more, the first peer with an offer sets it (and what was received for
    /// another size is dropped).
    fn settle_size(&mut self) {
        let claims = |size| self.peers.values().any(|p| p.size == Some(size));
        if self.size.is_some_and(claims) {
            return;
        }
        self.size = self.peers.values().find_map(|p| p.size);
        let count = self.size.map_or(0, |n| n.div_ceil(METADATA_PIECE) as usize);
        self.pieces = vec![Slot::Missing; count];
    }

    /// Asks peers that claim the current size for missing pieces, [`PIPELINE`] each, in key
    /// order (one peer only in single-source mode).
    fn request_more(&mut self, now: Instant) {
        let Some(size) = self.size else {
            return;
        };
        if self.sources == Sources::One(None) {
            let first = self.peers.iter().find(|(_, p)| p.size == Some(size)).map(|(k, _)| *k);
            self.sources = Sources::One(first);
        }
        let keys: Vec<PeerKey> = match self.sources {
            Sources::One(source) => source.into_iter().collect(),
            Sources::Many => self.peers.keys().copied().collect(),
        };
        for key in keys {
            let Some(p) = self.peers.get_mut(&key) else {
                continue;
            };
            let Some(their_id) = p.their_id.filter(|_| p.size == Some(size)) else {
                continue;
            };
            while p.asked.len() < PIPELINE {
                let Some(piece) = self.pieces.iter().position(|s| matches!(s, Slot::Missing))
                else {
                    return;
                };
                if p.asked.is_empty() {
                    let give_up =
                        *p.give_up.get_or_insert(now + self.config.timeout * SERVE_BUDGET);
                    p.deadline = (now + self.config.timeout).min(give_up);
                }
                self.pieces[piece] = Slot::Asked(key);
                p.asked.push(piece as u32);
                let payload = Bytes::from(MetadataMsg::Request { piece: piece as u32 }.encode());
                self.out.push_back(Output::Send(key, Message::Extended { id: their_id, payload }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testnet::Net;

    /// A stand-in info dictionary of three metadata pieces (the last one short); only its
    /// SHA-1 matters to the fetcher.
    fn info() -> Bytes {
        (0..40_000u32).map(|i| (i * 13 % 251) as u8).collect::<Vec<u8>>().into()
    }

    fn hash(info: &[u8]) -> InfoHash {
        InfoHash(Sha1::digest(info).into())
    }

    /// A net with one torrent (its content does not matter here).
    fn net() -> Net {
        Net::new(vec![7; 64 * 1024], 16 * 1024)
    }

    fn done(net: &Net, f: usize) -> Option<&Bytes> {
        net.fetchers[f].outputs.iter().find_map(|o| match o {
            Output::Done(b) => Some(b),
            _ => None,
        })
    }

    /// Why the fetcher disconnected the peer at `addr`, if it did.
    fn dropped(net: &Net, f: usize, addr: SocketAddr) -> Option<String> {
        // The fetcher's keys for the node: the other ends of the connections on which the node
        // sent its extension handshake.
        let node = net.nodes.iter().position(|n| n.addr == addr)?;
        let keys: Vec<PeerKey> = net.nodes[node]
            .sent
            .iter()
            .filter(|(_, _, m)| matches!(m, Message::Extended { id: 0, .. }))
            .map(|(_, k, _)| Net::other_end(*k))
            .collect();
        net.fetchers[f].outputs.iter().find_map(|o| match o {
            Output::Disconnect(k, why) if keys.contains(k) => Some(why.clone()),
            _ => None,
        })
    }

    #[test]
    fn metadata_is_fetched_from_seeds_in_parallel_byte_for_byte() {
        let mut net = net();
        let a = net.add_metadata_seed(info(), Net::config(0));
        let b = net.add_metadata_seed(info(), Net::config(1));
        let f = net.add_fetcher(hash(&info()), &[a, b], MetadataConfig::default());
        net.drive(Duration::from_secs(1));
        assert_eq!(done(&net, f), Some(&info()));
        let fetcher = &net.fetchers[f];
        assert!(fetcher.core.is_finished());
        assert_eq!(fetcher.core.next_deadline(), None);
        // Both seeds were asked, for different pieces, and both connections are closed.
        let asked: Vec<(PeerKey, u32)> = fetcher
            .outputs
            .iter()
            .filter_map(|o| match o {
                Output::Send(k, Message::Extended { id, payload }) if *id != 0 => {
                    match MetadataMsg::decode(payload) {
                        Ok(MetadataMsg::Request { piece }) => Some((*k, piece)),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect();
        assert_eq!(asked.len(), 3);
        assert!(asked.iter().any(|(k, _)| *k != asked[0].0));
        let mut pieces: Vec<u32> = asked.iter().map(|(_, p)| *p).collect();
        pieces.sort_unstable();
        assert_eq!(pieces, vec![0, 1, 2]);
        assert_eq!(fetcher.core.peer_keys().count(), 0);
        assert_eq!(net.nodes[a].core.peer_keys().count(), 0);
        assert_eq!(net.nodes[b].core.peer_keys().count(), 0);
    }

    #[test]
    fn a_peer_sending_a_wrong_piece_is_dropped_and_another_completes_the_metadata() {
        let mut net = net();
        // The liar serves a dictionary of the right size with one byte changed in piece 1.
        let mut forged = info().to_vec();
        forged[20_000] ^= 1;
        let liar = net.add_metadata_seed(forged.into(), Net::config(0));
        let honest = net.add_metadata_seed(info(), Net::config(1));
        let f = net.add_fetcher(hash(&info()), &[liar, honest], MetadataConfig::default());
        net.drive(Duration::from_secs(1));
        assert_eq!(done(&net, f), Some(&info()));
        let why = dropped(&net, f, net.nodes[liar].addr).expect("the liar was not dropped");
        assert!(why.contains("does not match the info-hash"), "{why}");
        assert_eq!(dropped(&net, f, net.nodes[honest].addr).as_deref(), Some("metadata fetched"));
    }

    #[test]
    fn a_metadata_size_over_the_cap_is_refused_before_any_request() {
        let t0 = Instant::now();
        let addr = SocketAddr::from(([10, 0, 0, 1], 6881));
        let config = MetadataConfig { patience: Duration::ZERO, ..MetadataConfig::default() };
        let mut core = MetadataCore::new(hash(&info()), vec![addr], config, t0);
        assert_eq!(core.poll(), Some(Output::Connect(addr)));
        let peer = PeerKey(0);
        core.handle(t0, Input::Connected { peer, addr, fast: true, extensions: true });
        let ours: Vec<Output> = std::iter::from_fn(|| core.poll()).collect();
        assert_eq!(ours.len(), 2, "HAVE_NONE and our extension handshake: {ours:?}");
        let hs = ExtHandshake {
            ut_metadata: Some(2),
            metadata_size: Some(MAX_METADATA + 1),
            ..Default::default()
        };
        let msg = Message::Extended { id: 0, payload: Bytes::from(hs.encode()) };
        core.handle(t0, Input::Message(peer, msg));
        let outs: Vec<Output> = std::iter::from_fn(|| core.poll()).collect();
        let [Output::Disconnect(k, why), Output::Failed { tried: 1, last }] = &outs[..] else {
            panic!("unexpected outputs {outs:?}");
        };
        assert_eq!(*k, peer);
        assert!(why.contains("claims metadata of 4194305 bytes"), "{why}");
        assert!(last.contains(&addr.to_string()));
        assert_eq!(core.metadata_size(), None);
        assert!(core.is_finished());
    }

    #[test]
    fn a_peer_trickling_pieces_just_inside_the_timeout_is_cut_off_after_its_budget() {
        // 8 pieces, one answered every 9 s with a 10 s timeout: never silent for a timeout,
        // but 72 s for the lot. After 4 timeouts (40 s) since its first request it is dropped.
        let metadata = Bytes::from(vec![7u8; 8 * METADATA_PIECE as usize]);
        let (t0, timeout) = (Instant::now(), Duration::from_secs(10));
        let addr = SocketAddr::from(([10, 0, 0, 1], 6881));
        let config = MetadataConfig { max_peers: 1, timeout, ..MetadataConfig::default() };
        let mut core = MetadataCore::new(hash(&metadata), vec![addr], config, t0);
        let peer = PeerKey(0);
        core.handle(t0, Input::Connected { peer, addr, fast: false, extensions: true });
        let hs = ExtHandshake {
            ut_metadata: Some(2),
            metadata_size: Some(metadata.len() as u32),
            ..Default::default()
        };
        core.handle(
            t0,
            Input::Message(peer, Message::Extended { id: 0, payload: hs.encode().into() }),
        );
        let mut asked = VecDeque::new();
        let mut dropped = None;
        for k in 1..=8u32 {
            for out in std::iter::from_fn(|| core.poll()) {
                match out {
                    Output::Send(_, Message::Extended { id: 2, payload }) => {
                        if let Ok(MetadataMsg::Request { piece }) = MetadataMsg::decode(&payload) {
                            asked.push_back(piece);
                        }
                    }
                    Output::Disconnect(_, why) => dropped = Some(why),
                    _ => {}
                }
            }
            if dropped.is_some() {
                break;
            }
            let now = t0 + Duration::from_secs(9 * k as u64);
            // Timers first, as a driver sleeping to `next_deadline` would fire them.
            if core.next_deadline().is_some_and(|d| d <= now) {
                let at = core.next_deadline().unwrap();
                core.handle(at, Input::Timeout);
                continue;
            }
            let piece = asked.pop_front().expect("a request is outstanding");
            let start = (piece * METADATA_PIECE) as usize;
            let data = metadata.slice(start..start + METADATA_PIECE as usize);
            let msg = MetadataMsg::Data { piece, total_size: metadata.len() as u32, data };
            core.handle(
                now,
                Input::Message(
                    peer,
                    Message::Extended { id: OUR_UT_METADATA, payload: msg.encode().into() },
                ),
            );
        }
        let why = dropped.expect("the trickling peer was never dropped");
        assert!(why.contains("took longer than 40s"), "{why}");
        assert!(core.pieces_have() < 8);
    }

    #[test]
    fn an_unasked_piece_or_a_wrong_total_size_disconnects_the_peer() {
        let metadata = Bytes::from(vec![7u8; 4 * METADATA_PIECE as usize]);
        let size = metadata.len() as u32;
        let piece = |piece: u32, total_size: u32| {
            let start = (piece * METADATA_PIECE) as usize;
            let data = metadata.slice(start..start + METADATA_PIECE as usize);
            let payload = MetadataMsg::Data { piece, total_size, data }.encode().into();
            Message::Extended { id: OUR_UT_METADATA, payload }
        };
        for (msg, expect) in [
            // Pieces 0 and 1 are asked first (two per peer); 3 was not.
            (piece(3, size), "did not ask it for"),
            (piece(0, size + 1), "of the wrong size"),
        ] {
            let t0 = Instant::now();
            let addr = SocketAddr::from(([10, 0, 0, 1], 6881));
            let mut core =
                MetadataCore::new(hash(&metadata), vec![addr], MetadataConfig::default(), t0);
            let peer = PeerKey(0);
            core.handle(t0, Input::Connected { peer, addr, fast: false, extensions: true });
            let hs = ExtHandshake {
                ut_metadata: Some(2),
                metadata_size: Some(size),
                ..Default::default()
            };
            let hs = Message::Extended { id: 0, payload: hs.encode().into() };
            core.handle(t0, Input::Message(peer, hs));
            std::iter::from_fn(|| core.poll()).for_each(drop);
            core.handle(t0, Input::Message(peer, msg));
            let outs: Vec<Output> = std::iter::from_fn(|| core.poll()).collect();
            let why = outs.iter().find_map(|o| match o {
                Output::Disconnect(k, why) if *k == peer => Some(why.clone()),
                _ => None,
            });
            assert!(why.as_deref().is_some_and(|w| w.contains(expect)), "{why:?} for {expect}");
            assert_eq!(core.pieces_have(), 0);
        }
    }

    #[test]
    fn a_silent_peer_times_out_and_another_is_asked() {
        let mut net = net();
        let silent = net.add_metadata_seed(info(), Net::config(0));
        net.nodes[silent].hoards_metadata = true;
        let honest = net.add_metadata_seed(info(), Net::config(1));
        // One connection at a time: the honest seed is dialled only once the silent one is
        // given up on.
        let config = MetadataConfig {
            max_peers: 1,
            timeout: Duration::from_secs(10),
            ..MetadataConfig::default()
        };
        let f = net.add_fetcher(hash(&info()), &[silent, honest], config);
        net.drive(Duration::from_millis(9_999));
        assert_eq!(done(&net, f), None);
        assert_eq!(net.fetchers[f].core.tried(), 1);
        assert_eq!(net.fetchers[f].core.pieces_have(), 0);
        net.drive(Duration::from_secs(10));
        assert_eq!(done(&net, f), Some(&info()));
        let why = dropped(&net, f, net.nodes[silent].addr).expect("the silent peer was kept");
        assert!(why.contains("answered nothing for 10s"), "{why}");
    }

    #[test]
    fn a_reject_moves_on_to_the_next_peer_and_running_out_of_peers_fails() {
        let t0 = Instant::now();
        let addrs: Vec<SocketAddr> =
            (1..=2).map(|i| SocketAddr::from(([10, 0, 0, i], 6881))).collect();
        let config =
            MetadataConfig { max_peers: 1, patience: Duration::ZERO, ..Default::default() };
        let mut core = MetadataCore::new(hash(&info()), addrs.clone(), config, t0);
        for (i, &addr) in addrs.iter().enumerate() {
            assert_eq!(core.poll(), Some(Output::Connect(addr)));
            let peer = PeerKey(i as u64);
            core.handle(t0, Input::Connected { peer, addr, fast: false, extensions: true });
            let hs = ExtHandshake {
                ut_metadata: Some(5),
                metadata_size: Some(info().len() as u32),
                ..Default::default()
            };
            let msg = Message::Extended { id: 0, payload: Bytes::from(hs.encode()) };
            core.handle(t0, Input::Message(peer, msg));
            let asked = std::iter::from_fn(|| core.poll())
                .filter(|o| matches!(o, Output::Send(_, Message::Extended { id: 5, .. })))
                .count();
            assert_eq!(asked, PIPELINE);
            let reject = Bytes::from(MetadataMsg::Reject { piece: 0 }.encode());
            let msg = Message::Extended { id: OUR_UT_METADATA, payload: reject };
            core.handle(t0, Input::Message(peer, msg));
            assert!(matches!(core.poll(), Some(Output::Disconnect(k, _)) if k == peer));
        }
        let Some(Output::Failed { tried: 2, last }) = core.poll() else {
            panic!("no failure after every peer rejected");
        };
        assert!(last.contains("rejected metadata piece 0"), "{last}");
        assert_eq!(core.poll(), None);
    }

    /// Feeds `core` a connection to `addr` under `peer` and that peer's extension handshake
    /// (offering `size`, or no dictionary yet), and returns what the core did after the
    /// handshake.
    fn meet(
        core: &mut MetadataCore,
        t: Instant,
        peer: PeerKey,
        addr: SocketAddr,
        size: Option<u32>,
    ) -> Vec<Output> {
        core.handle(t, Input::Connected { peer, addr, fast: false, extensions: true });
        std::iter::from_fn(|| core.poll()).for_each(drop);
        let hs = ExtHandshake { ut_metadata: Some(5), metadata_size: size, ..Default::default() };
        let msg = Message::Extended { id: 0, payload: Bytes::from(hs.encode()) };
        core.handle(t, Input::Message(peer, msg));
        std::iter::from_fn(|| core.poll()).collect()
    }

    /// Moves to the core's next deadline and hands it the timeout.
    fn tick(core: &mut MetadataCore) -> (Instant, Vec<Output>) {
        let t = core.next_deadline().expect("a deadline");
        core.handle(t, Input::Timeout);
        (t, std::iter::from_fn(|| core.poll()).collect())
    }

    #[test]
    fn a_peer_without_the_dictionary_yet_is_dialled_again_and_gives_it_later() {
        // The flash crowd of magnet links: the only address is a peer still fetching itself.
        let t0 = Instant::now();
        let a = SocketAddr::from(([10, 0, 0, 1], 6881));
        let mut core = MetadataCore::new(hash(&info()), vec![a], MetadataConfig::default(), t0);
        assert_eq!(core.poll(), Some(Output::Connect(a)));
        let outs = meet(&mut core, t0, PeerKey(0), a, None);
        assert!(
            matches!(&outs[..], [Output::Disconnect(PeerKey(0), why)] if why.contains("no metadata")),
            "{outs:?}"
        );
        // Out of addresses: no failure, a wait of 1 s, then a request for peers.
        assert_eq!(core.next_deadline(), Some(t0 + WANT_PEERS_FIRST));
        let (t1, outs) = tick(&mut core);
        assert_eq!(outs, vec![Output::WantPeers]);
        // The same address again: dialled again, and this time it has the dictionary.
        core.handle(t1, Input::Peers(vec![a]));
        assert_eq!(core.poll(), Some(Output::Connect(a)));
        let size = info().len() as u32;
        let outs = meet(&mut core, t1, PeerKey(1), a, Some(size));
        let asked: Vec<u32> = outs
            .iter()
            .filter_map(|o| match o {
                Output::Send(_, Message::Extended { id: 5, payload }) => {
                    match MetadataMsg::decode(payload) {
                        Ok(MetadataMsg::Request { piece }) => Some(piece),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect();
        assert_eq!(asked, vec![0, 1]);
        for piece in 0..3u32 {
            let range = metadata_piece_range(size as usize, piece).unwrap();
            let data = info().slice(range);
            let payload = Bytes::from(MetadataMsg::Data { piece, total_size: size, data }.encode());
            core.handle(
                t1,
                Input::Message(PeerKey(1), Message::Extended { id: OUR_UT_METADATA, payload }),
            );
        }
        let outs: Vec<Output> = std::iter::from_fn(|| core.poll()).collect();
        assert!(outs.contains(&Output::Done(info())), "{outs:?}");
    }

    #[test]
    fn out_of_addresses_a_fetch_asks_for_more_paced_and_fails_when_its_patience_ends() {
        let t0 = Instant::now();
        let refuses = SocketAddr::from(([10, 0, 0, 1], 6881));
        let liar = SocketAddr::from(([10, 0, 0, 2], 6881));
        let fresh = SocketAddr::from(([10, 0, 0, 3], 6881));
        let patience = Duration::from_secs(60);
        let config = MetadataConfig { patience, ..MetadataConfig::default() };
        let mut core = MetadataCore::new(hash(&info()), vec![refuses, liar], config, t0);
        let dials: Vec<Output> = std::iter::from_fn(|| core.poll()).collect();
        assert_eq!(dials, vec![Output::Connect(refuses), Output::Connect(liar)]);
        core.handle(t0, Input::ConnectFailed(refuses, "connection refused".into()));
        let outs = meet(&mut core, t0, PeerKey(0), liar, Some(MAX_METADATA + 1));
        assert!(matches!(&outs[..], [Output::Disconnect(..)]), "{outs:?}");
        assert!(!core.is_finished());
        let (t1, outs) = tick(&mut core);
        assert_eq!((t1, outs), (t0 + WANT_PEERS_FIRST, vec![Output::WantPeers]));
        // The refused address is dialled again and a new one too; the liar never again.
        core.handle(t1, Input::Peers(vec![refuses, liar, fresh, fresh]));
        let dials: Vec<Output> = std::iter::from_fn(|| core.poll()).collect();
        assert_eq!(dials, vec![Output::Connect(refuses), Output::Connect(fresh)]);
        core.handle(t1, Input::ConnectFailed(refuses, "connection refused".into()));
        core.handle(t1, Input::ConnectFailed(fresh, "connection refused".into()));
        // Nobody answers the next requests: they come 2, 4, 8, 16 s apart (30 s at most),
        // and the fetch fails when its patience ends, 60 s after it first ran out.
        let mut asked_at = Vec::new();
        let failed_at = loop {
            let (t, outs) = tick(&mut core);
            match &outs[..] {
                [Output::WantPeers] => asked_at.push(t - t0),
                [Output::Failed { tried: 3, last }] => {
                    assert!(last.contains("refused"), "{last}");
                    break t - t0;
                }
                other => panic!("unexpected outputs {other:?}"),
            }
        };
        let secs = |s: &[u64]| s.iter().map(|&s| Duration::from_secs(s)).collect::<Vec<_>>();
        assert_eq!(asked_at, secs(&[3, 7, 15, 31]));
        assert_eq!(failed_at, patience);
        assert_eq!(core.next_deadline(), None);
    }

    #[test]
    fn a_peer_that_offers_the_dictionary_then_rejects_cannot_keep_the_fetch_alive() {
        // Dialled again after every reject (a reject is no lie), it offers the size each time;
        // the fetch still fails once its patience, counted from the first time it ran out of
        // addresses, is over.
        let t0 = Instant::now();
        let a = SocketAddr::from(([10, 0, 0, 1], 6881));
        let patience = Duration::from_secs(20);
        let config = MetadataConfig { patience, ..MetadataConfig::default() };
        let mut core = MetadataCore::new(hash(&info()), vec![a], config, t0);
        let (mut now, mut key, mut dials) = (t0, 0, 0);
        let failed_at = 'fetch: loop {
            assert!(dials < 1000, "still fetching after {:?}", now - t0);
            let mut outs: Vec<Output> = std::iter::from_fn(|| core.poll()).collect();
            while let Some(out) = outs.pop() {
                match out {
                    Output::Connect(addr) => {
                        dials += 1;
                        let size = Some(info().len() as u32);
                        meet(&mut core, now, PeerKey(key), addr, size);
                        let reject = Bytes::from(MetadataMsg::Reject { piece: 0 }.encode());
                        let msg = Message::Extended { id: OUR_UT_METADATA, payload: reject };
                        core.handle(now, Input::Message(PeerKey(key), msg));
                        key += 1;
                    }
                    Output::WantPeers => core.handle(now, Input::Peers(vec![a])),
                    Output::Failed { .. } => break 'fetch now,
                    _ => {}
                }
                outs.extend(std::iter::from_fn(|| core.poll()));
            }
            now = core.next_deadline().expect("a deadline while the fetch runs");
            core.handle(now, Input::Timeout);
        };
        assert!(dials >= 3, "dialled {dials} times");
        assert!(failed_at - t0 <= patience, "failed {:?} after the start", failed_at - t0);
    }
}
