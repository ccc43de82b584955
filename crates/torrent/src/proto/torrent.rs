//! [`TorrentCore`]: everything one torrent decides, as a sans-IO state machine.
//!
//! The core holds the peers' protocol states, the [`PiecePicker`] and the [`Choker`] it owns,
//! request pipelining, endgame, the bookkeeping of piece verification and smart bans, the list
//! of addresses to dial, the tracker announce schedule, peer exchange (BEP 11, `ut_pex`) and the
//! serving side of metadata exchange (BEP 9; the fetching side, for a magnet link, is
//! [`super::metadata::MetadataCore`]). It
//! opens no socket, reads no clock, spawns no task and touches no file: what arrives comes in
//! through [`TorrentCore::handle`] with the time, what must be done comes out of
//! [`TorrentCore::poll`] as an [`Output`], and timers come back as
//! [`TorrentCore::next_deadline`]. The tokio session ([`crate::session`]) and the simulator
//! (`sim::swarm`) drive this very type.
//!
//! # Using it
//!
//! Methods fall into four groups, in the order quinn-proto documents its `Connection`:
//!
//! - *getters*: [`TorrentCore::have`], [`TorrentCore::is_complete`], [`TorrentCore::stats`],
//!   [`TorrentCore::peer_keys`], [`TorrentCore::is_unchoked`], …;
//! - *handlers*: [`TorrentCore::handle`] with an [`Input`]: a connection finished its
//!   handshake, a peer sent a message or went away, a block went out, a piece was hashed, the
//!   disk synced, a tracker answered, or a deadline passed ([`Input::Timeout`]);
//! - *mutators*: [`TorrentCore::stop`] (leave the swarm: announce `stopped`),
//!   [`TorrentCore::set_urgent`] (pieces wanted first, for a reader of a file still
//!   downloading);
//! - *polling*: [`TorrentCore::poll`], drained until `None` after every call above, and
//!   [`TorrentCore::next_deadline`], the instant at which to call `handle(now, Input::Timeout)`.
//!
//! # What the owner carries out
//!
//! [`Output::Send`] a message to a peer; [`Output::Serve`] read a block from storage and send it
//! when the upload limit allows ([`Output::CancelServe`] and [`Output::DropServes`] take queued
//! ones back); [`Output::Connect`] dial an address and report [`Input::Connected`] or
//! [`Input::ConnectFailed`]; [`Output::Disconnect`] close a connection; [`Output::Write`] a
//! block, then [`Output::Verify`] its piece once every block is written (in that order: the
//! owner writes and hashes in queue order) and report [`Input::Verified`]; [`Output::Sync`] and
//! report [`Input::Synced`]; [`Output::Announce`] to the trackers and report
//! [`Input::Announced`] or [`Input::AnnounceFailed`]; [`Output::Event`] is for people.
//!
//! # Invariants
//!
//! - a piece is announced (HAVE), served, or counted only after its SHA-1 verified on disk, and
//!   the torrent is complete only once every piece verified and the data synced;
//! - at most one connection per remote peer id (simultaneous dials: the connection opened by the
//!   peer with the lower id survives on both sides);
//! - a peer whose block was proven wrong (it differs from the piece's verified bytes) is banned
//!   by address; so is a peer that alone sent [`BAN_AFTER_FAILED_PIECES`] failed pieces;
//! - every table fed by peers is bounded: connected peers by `max_peers`, addresses to dial by
//!   [`MAX_CANDIDATES`] (peer exchange adds at most [`MAX_PEX_PEERS`] per message, one message
//!   per peer counted every [`PEX_MIN_GAP`]),
//!   requests we serve are checked against what we have and the piece size;
//!   a peer that breaks the protocol is disconnected ([`Output::Disconnect`]), never a panic.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tracing::{debug, info, warn};

use super::choker::{ChokeDecision, Choker, ChokerConfig};
use super::ext::{
    metadata_piece_range, ExtHandshake, MetadataMsg, PexMsg, MAX_PEX_PEERS, OUR_UT_METADATA,
    OUR_UT_PEX, PEX_REACHABLE, PEX_SEED,
};
use super::picker::{BlockOutcome, PickerConfig, PiecePicker};
use super::wire::Message;
use super::{BlockRef, PeerKey, BLOCK_SIZE};
use crate::tracker::Event as AnnounceEvent;
use crate::{Bitfield, PeerId};

/// A peer contributing to this many failed pieces is banned even without proof.
pub const BAN_AFTER_FAILED_PIECES: u32 = 3;
/// The largest block we serve; larger requests are rejected.
pub const MAX_SERVED_BLOCK: u32 = 128 * 1024;
/// Most addresses kept to dial (from trackers and `--peer`); more are ignored until some go.
pub const MAX_CANDIDATES: usize = 2_000;
/// Fewest seconds of a peer's download rate kept in requests in flight.
///
/// The depth of each peer's queue adapts to how the peer answers ([`PeerState::queue_secs`]):
/// twice the longest wait for a block while requests were outstanding, decaying by
/// [`REQUEST_QUEUE_DECAY`] a second, between this floor and [`REQUEST_QUEUE_MAX_SECS`]. A peer
/// that streams blocks as fast as its uplink allows shows no waits and keeps the floor, so the
/// last blocks of a download do not queue behind a long backlog; a queue too short for the
/// round trip shows as bursts separated by a round trip, and a peer that answers in batches
/// (Transmission: every 500 ms) as waits of a batch period: either doubles the queue, and the
/// rate can grow. Measured against transmission-cli 3.00 (16 MiB: 136 s with a fixed half
/// second, 18.4 s adaptive): see the README.
///
/// The floor was a quarter second while the seed's upload limit still sent cancelled blocks
/// (the lab's tails were shorter with fewer blocks queued). With that fixed, half a second is
/// as good on loopback (`lab swarm` N = 50, seeds 1-6: 1.025-1.029 against 1.027-1.035) and
/// much better over 20-80 ms links, where a quarter second of rate does not cover the round
/// trip and the waits that would deepen the queue are barely longer than it (`sim swarm` N =
/// 20, seeds 1-3: 1.084-1.097 against 1.115-1.140; tail gaps 0.16-0.25 s against 0.83-0.97 s).
const REQUEST_QUEUE_SECS: f64 = 0.5;
/// Most seconds of a peer's rate kept in flight (libtorrent's `request_queue_time`).
const REQUEST_QUEUE_MAX_SECS: f64 = 3.0;
/// Factor a peer's queue depth (in seconds) shrinks by each tick when no longer needed.
const REQUEST_QUEUE_DECAY: f64 = 0.8;
/// Fewest requests kept in flight to an unchoking peer.
const MIN_PIPELINE: usize = 4;
/// Most requests kept in flight to one peer.
const MAX_PIPELINE: usize = 500;
/// The period of rate estimates, keep-alives and snub checks.
const TICK: Duration = Duration::from_secs(1);
/// A peer that sent nothing for this long is disconnected.
const SILENCE_TIMEOUT: Duration = Duration::from_secs(180);
/// We send a keep-alive after this long without sending anything.
const KEEPALIVE: Duration = Duration::from_secs(90);
/// A peer that sends no block for this long while we wait for some is snubbed.
const SNUB_TIMEOUT: Duration = Duration::from_secs(30);
/// Smallest wait between two announces, whatever the tracker asks.
const MIN_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(5);
/// Wait after a failed announce.
const ANNOUNCE_RETRY: Duration = Duration::from_secs(15);
/// A candidate that failed this many dials is not dialled again.
const MAX_DIAL_FAILURES: u32 = 5;
/// Peer exchange: one message to each peer at most this often (BEP 11), and messages from a peer
/// closer together than [`PEX_MIN_GAP`] are ignored (libtorrent's ut_pex sends every 60 s).
pub const PEX_INTERVAL: Duration = Duration::from_secs(60);
const PEX_MIN_GAP: Duration = Duration::from_secs(45);

/// How a torrent behaves.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Cap on connected peers.
    pub max_peers: usize,
    /// Keep running and seeding once complete (a seed always does).
    pub seed_when_done: bool,
    pub choker: ChokerConfig,
    pub picker: PickerConfig,
    /// The torrent has trackers to announce to.
    pub announce: bool,
    /// The port we listen on (sent in the extension handshake; never dialled on loopback).
    pub our_port: u16,
    /// Our peer id (a connection to it is a connection to ourselves).
    pub our_id: PeerId,
    /// Initial seeding (BEP 16 super-seeding) when the torrent starts complete: see
    /// [`TorrentCore`]'s module documentation.
    pub super_seed: bool,
    /// Peer exchange (BEP 11): tell peers whom we are connected to and dial whom they tell us
    /// of. Off for a private torrent (BEP 27), whose peers come from its tracker alone.
    pub pex: bool,
    /// Our own IPv6 address, told to peers in the extension handshake (BEP 10's `ipv6`) so a
    /// peer that reached us over IPv4 can reach us over IPv6 too; `None` when unknown.
    pub our_ipv6: Option<std::net::Ipv6Addr>,
}

/// What ranks a peer at `position` on the timeline among those we serve, nearest behind us
/// first ([`Choker::set_nearest_first`]), when we are at `ours`: its position, or the lowest
/// rank for a peer that says it is ahead of us. A viewer ahead needs little of ours, and a
/// peer claiming every piece (a HAVE_ALL) while asking to be served is lying about one of
/// the two: it must not take a slot from the viewers behind.
fn served_rank(position: u32, ours: u32) -> u32 {
    if position > ours {
        0
    } else {
        position.saturating_add(1)
    }
}

/// How long a nearer viewer may go without sending a block we wait for before the viewers
/// further ahead are asked for what it has too ([`TorrentCore::chain_mask`]).
const CHAIN_PATIENCE: Duration = Duration::from_secs(2);

/// The torrent's shape: what the core needs of the metainfo.
#[derive(Clone, Debug)]
pub struct Geometry {
    pub piece_length: u32,
    pub total_length: u64,
    /// The bencoded info dictionary, served to peers that ask for it (BEP 9); may be empty.
    pub metadata: Bytes,
}

/// What arrives at the core.
#[derive(Debug)]
pub enum Input {
    /// A connection finished its handshake. `peer` is a key the owner never used before.
    Connected {
        peer: PeerKey,
        addr: SocketAddr,
        id: PeerId,
        fast: bool,
        extensions: bool,
        outgoing: bool,
    },
    /// A dial asked for by [`Output::Connect`] failed.
    ConnectFailed(SocketAddr),
    /// A peer sent a message.
    Message(PeerKey, Message),
    /// A connection closed (socket error, the peer left, its queue overflowed).
    Closed(PeerKey, String),
    /// Payload bytes of blocks written to the peer's socket since the last report.
    Uploaded(PeerKey, u64),
    /// A piece was hashed; `blocks` holds each block's SHA-1 when asked for or when it failed.
    Verified { piece: u32, ok: bool, blocks: Option<Vec<[u8; 20]>> },
    /// Everything written is on stable storage.
    Synced,
    /// Addresses to dial (from `--peer`, a tracker or, later, the DHT).
    Peers(Vec<SocketAddr>),
    /// An announce finished: the tracker's interval and peers.
    Announced { interval: Duration, peers: Vec<SocketAddr> },
    /// An announce failed.
    AnnounceFailed,
    /// A whole piece's bytes from elsewhere (a viewer's HTTP fallback to the CDN, libtorrent's
    /// `add_piece`): written and hashed like a peer's; once verified it is had and announced. A
    /// piece already had or complete, out of range, or of the wrong size is ignored.
    AddPiece { piece: u32, data: Bytes },
    /// [`TorrentCore::next_deadline`] passed.
    Timeout,
}

/// What the owner must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a message to a peer.
    Send(PeerKey, Message),
    /// Read this block from storage and send it (a PIECE message) when the upload limit allows.
    Serve(PeerKey, BlockRef),
    /// The peer cancelled this request: drop it if not yet sent.
    CancelServe(PeerKey, BlockRef),
    /// We choked the peer: drop every queued block; with `reject`, send REJECT for each (BEP 6).
    DropServes { peer: PeerKey, reject: bool },
    /// Close the connection (no more inputs for this key are needed).
    Disconnect(PeerKey, String),
    /// Dial this address.
    Connect(SocketAddr),
    /// Write a received block.
    Write { piece: u32, offset: u32, data: Bytes },
    /// Hash the piece once its blocks are written; with `blocks`, each block's SHA-1 too.
    Verify { piece: u32, blocks: bool },
    /// Flush everything written to stable storage.
    Sync,
    /// Announce to the trackers.
    Announce { event: AnnounceEvent, uploaded: u64, downloaded: u64, left: u64 },
    /// Something a person may want to see.
    Event(TorrentEvent),
}

/// Things that happened, for logs, progress bars and the UI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TorrentEvent {
    /// A piece verified.
    PieceVerified(u32),
    /// A piece failed its hash check and will be fetched again.
    HashFailed(u32),
    /// A peer was banned.
    Banned(SocketAddr),
    /// Every piece verified and synced.
    Complete,
}

/// Counters of a torrent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CoreStats {
    pub pieces_total: u32,
    pub pieces_have: u32,
    pub bytes_total: u64,
    /// Verified payload bytes.
    pub bytes_have: u64,
    /// Payload bytes received / sent (as reported by [`Input::Uploaded`]).
    pub downloaded: u64,
    pub uploaded: u64,
    pub peers: usize,
    pub hash_failures: u32,
    pub banned: u32,
    /// Addresses first heard of in peers' PEX messages (BEP 11).
    pub pex_learned: u64,
}

/// A byte-rate estimate over roughly the last few seconds (exponential moving average).
#[derive(Default, Clone, Copy)]
struct Rate {
    bytes_since: u64,
    per_sec: f64,
}

impl Rate {
    fn add(&mut self, n: u64) {
        self.bytes_since += n;
    }
    fn tick(&mut self, secs: f64) {
        let sample = self.bytes_since as f64 / secs.max(1e-3);
        self.per_sec = if self.per_sec == 0.0 { sample } else { 0.6 * self.per_sec + 0.4 * sample };
        self.bytes_since = 0;
    }
}

struct PeerState {
    addr: SocketAddr,
    id: PeerId,
    fast: bool,
    ext: Option<ExtHandshake>,
    has: Bitfield,
    /// True once the peer told us what it has (BITFIELD, HAVE, HAVE_ALL, HAVE_NONE): a
    /// HAVE_ALL/HAVE_NONE after that is a protocol violation. (aria2 sends ALLOWED_FAST before
    /// its BITFIELD, so "first message" is too strict a rule.)
    said_what_it_has: bool,
    am_choking: bool,
    am_interested: bool,
    peer_choking: bool,
    peer_interested: bool,
    /// It chose not to serve us: it choked us while we were interested, or kept us choked
    /// until we no longer were. Until it unchokes us (see [`TorrentCore::served`]).
    refused: bool,
    /// How far along the movie the peer is (see [`TorrentCore::set_timeline`]).
    position: u32,
    /// Target number of outstanding requests: `queue_secs` of the peer's rate.
    pipeline: usize,
    /// Seconds of the peer's rate kept in flight; see [`REQUEST_QUEUE_SECS`].
    queue_secs: f64,
    /// The longest wait for a block, in seconds, while requests were outstanding, since the
    /// last tick.
    max_wait: f64,
    down: Rate,
    up: Rate,
    last_msg: Instant,
    last_block: Instant,
    last_sent: Instant,
    snubbed: bool,
    failed_pieces: u32,
    /// While super-seeding: the pieces we told this peer we have, and the offers still
    /// pending with it (piece, block requests served so far).
    revealed: Option<Bitfield>,
    offers: Vec<(u32, u32)>,
    /// We dialled it (its address is where it listens).
    outgoing: bool,
    /// Peer exchange: the listening addresses we told it of and have not told it dropped
    /// since (at most our own peer count), when our next message to it is due (`None`: it does
    /// not speak `ut_pex`), and when its last message to us counted.
    pex_told: BTreeSet<SocketAddr>,
    pex_next: Option<Instant>,
    pex_heard: Option<Instant>,
}

impl PeerState {
    /// Where the peer accepts connections: the address we dialled, or for a peer that dialled
    /// us, its address with the port from its extension handshake (if it gave one).
    fn listen_addr(&self) -> Option<SocketAddr> {
        if self.outgoing {
            return Some(self.addr);
        }
        let port = self.ext.as_ref()?.port.filter(|&p| p != 0)?;
        Some(SocketAddr::new(self.addr.ip(), port))
    }
}

/// Initial seeding (BEP 16): each peer is told of a few pieces at a time, the ones offered least
/// so far, and of more as it reports having them, until every piece went out once.
struct SuperSeed {
    /// Times each piece was offered to some peer.
    offered: Vec<u32>,
    /// Block requests served for each piece (a piece has gone out once when this reaches its
    /// block count).
    served: Vec<u32>,
    /// Pieces that went out at least once.
    out: u32,
}

/// Pieces offered to one peer at a time while super-seeding.
const SUPER_SEED_OFFERS: usize = 2;

/// The announce schedule.
struct Announcer {
    /// The next event to send, and when.
    next: Option<(Instant, AnnounceEvent)>,
    /// The event of the announce under way.
    in_flight: Option<AnnounceEvent>,
    /// `completed` waits here while another announce is in flight.
    kick: Option<AnnounceEvent>,
    /// When the last announce was sent.
    last: Option<Instant>,
}

/// A download with fewer peers than this and no address left to dial asks the tracker again
/// early (but not sooner than [`EARLY_ANNOUNCE_AFTER`] after the last announce): peers that
/// left the swarm must not strand it until the next regular announce (an hour on many
/// trackers). Measured with `sim swarm --leave-after-complete 1`: see `scripts/sim-swarm.sh`.
const EARLY_ANNOUNCE_BELOW_PEERS: usize = 4;
const EARLY_ANNOUNCE_AFTER: Duration = Duration::from_secs(60);

/// One torrent's protocol state. See the [module documentation](self).
pub struct TorrentCore {
    geometry: Geometry,
    config: CoreConfig,
    picker: PiecePicker<ChaCha8Rng>,
    choker: Choker<ChaCha8Rng>,
    /// Streaming: each piece's place in playback order ([`TorrentCore::set_timeline`]); empty
    /// when unknown.
    timeline: Vec<u32>,
    /// The latest place on the timeline among our pieces.
    our_position: u32,
    peers: BTreeMap<PeerKey, PeerState>,
    /// Addresses we may dial, with the time of the last attempt and failures so far.
    candidates: BTreeMap<SocketAddr, (Option<Instant>, u32)>,
    connecting: BTreeSet<SocketAddr>,
    banned: BTreeSet<SocketAddr>,
    /// Who sent each block of pieces not yet verified (for smart banning).
    block_source: HashMap<(u32, u32), PeerKey>,
    /// Blocks of failed pieces: (offset, sender's address, SHA-1 of what it sent).
    suspects: HashMap<u32, Vec<(u32, SocketAddr, [u8; 20])>>,
    /// Every piece verified and the sync asked for; complete once it is done.
    syncing: bool,
    complete: bool,
    stopped: bool,
    announcer: Option<Announcer>,
    started: Instant,
    next_tick: Instant,
    last_tick: Instant,
    stats: CoreStats,
    out: VecDeque<Output>,
    super_seed: Option<SuperSeed>,
}

impl TorrentCore {
    /// A torrent that has the pieces in `have` (verified by the owner before), starting at
    /// `now`. A complete torrent asks for a [`Output::Sync`] first and is complete once synced.
    pub fn new(
        geometry: Geometry,
        have: Bitfield,
        config: CoreConfig,
        mut rng: ChaCha8Rng,
        now: Instant,
    ) -> Self {
        let picker_rng = ChaCha8Rng::seed_from_u64(rng.random());
        let choker_rng = ChaCha8Rng::seed_from_u64(rng.random());
        let picker = PiecePicker::new(
            config.picker.clone(),
            geometry.piece_length,
            geometry.total_length,
            have,
            picker_rng,
        );
        let mut choker = Choker::new(config.choker.clone(), choker_rng, now);
        choker.set_seeding(picker.have().is_full());
        let have = picker.have();
        let stats = CoreStats {
            pieces_total: picker.num_pieces(),
            pieces_have: have.count(),
            bytes_total: geometry.total_length,
            bytes_have: have.iter_set().map(|p| picker.piece_size(p) as u64).sum(),
            ..CoreStats::default()
        };
        let announcer = config.announce.then_some(Announcer {
            next: Some((now, AnnounceEvent::Started)),
            in_flight: None,
            kick: None,
            last: None,
        });
        let mut core = TorrentCore {
            geometry,
            config,
            picker,
            timeline: Vec::new(),
            our_position: 0,
            choker,
            peers: BTreeMap::new(),
            candidates: BTreeMap::new(),
            connecting: BTreeSet::new(),
            banned: BTreeSet::new(),
            block_source: HashMap::new(),
            suspects: HashMap::new(),
            syncing: false,
            complete: false,
            stopped: false,
            announcer,
            started: now,
            next_tick: now + TICK,
            last_tick: now,
            stats,
            out: VecDeque::new(),
            super_seed: None,
        };
        if core.config.super_seed && core.picker.is_complete() {
            let n = core.picker.num_pieces() as usize;
            core.super_seed = Some(SuperSeed { offered: vec![0; n], served: vec![0; n], out: 0 });
        }
        if core.picker.is_complete() {
            core.on_all_verified();
        }
        core.start_announce(now);
        core
    }

    // ---- getters ----

    /// The verified pieces.
    pub fn have(&self) -> &Bitfield {
        self.picker.have()
    }

    /// Every piece verified and synced.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Complete and not meant to seed: the owner may end the torrent.
    pub fn is_finished(&self) -> bool {
        self.complete && !self.config.seed_when_done
    }

    /// The torrent's counters.
    pub fn stats(&self) -> CoreStats {
        CoreStats { peers: self.peers.len(), ..self.stats }
    }

    /// The connected peers, in key order.
    pub fn peer_keys(&self) -> impl Iterator<Item = PeerKey> + '_ {
        self.peers.keys().copied()
    }

    /// The address of a connected peer.
    pub fn peer_addr(&self, peer: PeerKey) -> Option<SocketAddr> {
        self.peers.get(&peer).map(|p| p.addr)
    }

    /// Whether we upload to the peer (the choker's verdict as sent to it).
    pub fn is_unchoked(&self, peer: PeerKey) -> bool {
        self.peers.get(&peer).is_some_and(|p| !p.am_choking)
    }

    /// Whether the peer unchoked us.
    pub fn peer_unchoked_us(&self, peer: PeerKey) -> bool {
        self.peers.get(&peer).is_some_and(|p| !p.peer_choking)
    }

    /// Requests outstanding to the peer.
    pub fn outstanding(&self, peer: PeerKey) -> usize {
        self.picker.outstanding(peer)
    }

    /// Whether the picker is in endgame.
    pub fn in_endgame(&self) -> bool {
        self.picker.in_endgame()
    }

    /// Whether this address is banned.
    pub fn is_banned(&self, addr: &SocketAddr) -> bool {
        self.banned.contains(addr)
    }

    /// The torrent's shape.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    // ---- handlers ----

    /// Takes in what happened at `now`; drain [`TorrentCore::poll`] afterwards.
    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Connected { peer, addr, id, fast, extensions, outgoing } => {
                self.connecting.remove(&addr);
                self.on_connected(now, peer, addr, id, fast, extensions, outgoing);
            }
            Input::ConnectFailed(addr) => {
                self.connecting.remove(&addr);
                if let Some(c) = self.candidates.get_mut(&addr) {
                    c.1 += 1;
                }
            }
            Input::Message(peer, msg) => {
                if let Err(reason) = self.on_message(now, peer, msg) {
                    self.drop_peer(now, peer, &reason);
                }
            }
            Input::Closed(peer, reason) => self.drop_peer(now, peer, &reason),
            Input::Uploaded(peer, bytes) => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.up.add(bytes);
                    self.choker.record_uploaded(peer, bytes);
                }
                self.stats.uploaded += bytes;
            }
            Input::Verified { piece, ok, blocks } => self.on_verified(now, piece, ok, blocks),
            Input::AddPiece { piece, data } => self.on_add_piece(now, piece, data),
            Input::Synced => self.on_synced(now),
            Input::Peers(list) => self.add_candidates(now, list),
            Input::Announced { interval, peers } => {
                if let Some(a) = &mut self.announcer {
                    a.in_flight = None;
                    if a.next.is_none() {
                        let event = a.kick.take().unwrap_or(AnnounceEvent::None);
                        let at = if event == AnnounceEvent::None {
                            now + interval.max(MIN_ANNOUNCE_INTERVAL)
                        } else {
                            now
                        };
                        a.next = Some((at, event));
                    }
                }
                self.add_candidates(now, peers);
                self.start_announce(now);
            }
            Input::AnnounceFailed => {
                if let Some(a) = &mut self.announcer {
                    // The failed event is sent again (a `completed` that came meanwhile wins).
                    let failed = a.in_flight.take().unwrap_or_default();
                    if a.next.is_none() {
                        a.next = Some((now + ANNOUNCE_RETRY, a.kick.take().unwrap_or(failed)));
                    }
                }
            }
            Input::Timeout => self.on_timeout(now),
        }
    }

    // ---- mutators ----

    /// Leaves the swarm: announces `stopped` once (if there are trackers) and dials no more.
    /// The owner then closes the connections.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if let Some(a) = &mut self.announcer {
            a.next = None;
            a.kick = None;
            self.out.push_back(Output::Announce {
                event: AnnounceEvent::Stopped,
                uploaded: self.stats.uploaded,
                downloaded: self.stats.downloaded,
                left: self.stats.bytes_total - self.stats.bytes_have,
            });
        }
    }

    /// Pieces to fetch before any other, most urgent first (see
    /// [`PiecePicker::set_urgent`](super::picker::PiecePicker::set_urgent)); replaces the
    /// previous list, and requests go out at once to peers with room in their pipeline. For a
    /// reader of a file still downloading: the pieces under its read position and just after.
    /// When the most urgent piece is not under way yet (a reader that seeks), the requests
    /// queued at peers for pieces that are not urgent are cancelled (CANCEL; a block that
    /// arrives anyway is still used), so the urgent ones do not wait behind them.
    pub fn set_urgent(&mut self, now: Instant, pieces: &[u32]) {
        self.picker.set_urgent(pieces);
        let first = self.picker.urgent().next();
        if first.is_some_and(|p| !self.picker.started(p)) {
            let urgent: BTreeSet<u32> = self.picker.urgent().collect();
            let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
            for key in keys {
                for b in self.picker.outstanding_blocks(key) {
                    if !urgent.contains(&b.piece) {
                        self.picker.release(key, b);
                        let cancel =
                            Message::Cancel { piece: b.piece, offset: b.offset, length: b.length };
                        self.out.push_back(Output::Send(key, cancel));
                    }
                }
            }
        }
        if self.picker.urgent_only() {
            let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
            for k in keys {
                self.update_interest(now, k);
            }
        }
        self.fill_all(now);
    }

    // ---- polling ----

    /// The next thing to do, until `None`.
    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When to call `handle(now, Input::Timeout)` next.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        let mut at = self.next_tick.min(self.choker.next_deadline());
        if let Some((t, _)) = self.announcer.as_ref().and_then(|a| a.next) {
            at = at.min(t);
        }
        Some(at)
    }

    // ---- internals ----

    fn send(&mut self, now: Instant, peer: PeerKey, msg: Message) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.last_sent = now;
            self.out.push_back(Output::Send(peer, msg));
        }
    }

    fn add_candidates(&mut self, now: Instant, list: Vec<SocketAddr>) {
        for a in list {
            if self.candidates.len() >= MAX_CANDIDATES {
                // Forget addresses that never answered before refusing new ones.
                self.candidates.retain(|_, (_, fails)| *fails < MAX_DIAL_FAILURES);
                if self.candidates.len() >= MAX_CANDIDATES {
                    break;
                }
            }
            if a.port() != 0 && !self.banned.contains(&a) {
                self.candidates.entry(a).or_insert((None, 0));
            }
        }
        self.connect_more(now);
    }

    fn start_announce(&mut self, now: Instant) {
        let (uploaded, downloaded, left) = (
            self.stats.uploaded,
            self.stats.downloaded,
            self.stats.bytes_total - self.stats.bytes_have,
        );
        let Some(a) = &mut self.announcer else {
            return;
        };
        if a.in_flight.is_some() || self.stopped {
            return;
        }
        if let Some((at, event)) = a.next {
            if at <= now {
                a.next = None;
                a.in_flight = Some(event);
                a.last = Some(now);
                self.out.push_back(Output::Announce { event, uploaded, downloaded, left });
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_connected(
        &mut self,
        now: Instant,
        key: PeerKey,
        addr: SocketAddr,
        id: PeerId,
        fast: bool,
        extensions: bool,
        outgoing: bool,
    ) {
        let refuse = |core: &mut Self, why: &str| {
            core.out.push_back(Output::Disconnect(key, why.to_string()));
        };
        if self.stopped {
            return refuse(self, "stopping");
        }
        if id == self.config.our_id {
            return refuse(self, "connected to ourselves");
        }
        if self.banned.contains(&addr) {
            return refuse(self, "banned");
        }
        if self.peers.len() >= self.config.max_peers {
            return refuse(self, "too many peers");
        }
        let ours = self.config.our_id;
        if let Some((&dup, _)) = self.peers.iter().find(|(_, p)| p.id == id) {
            // Keep the connection dialed by the lower peer id; both ends decide alike.
            let new_dialer = if outgoing { ours } else { id };
            if new_dialer < std::cmp::max(ours, id) {
                self.drop_peer(now, dup, "duplicate connection");
            } else {
                return refuse(self, "duplicate connection");
            }
        }
        let n = self.picker.num_pieces();
        let st = PeerState {
            addr,
            id,
            fast,
            ext: None,
            has: Bitfield::new(n),
            said_what_it_has: false,
            am_choking: true,
            am_interested: false,
            peer_choking: true,
            position: 0,
            peer_interested: false,
            refused: false,
            pipeline: 16,
            queue_secs: REQUEST_QUEUE_SECS,
            max_wait: 0.0,
            down: Rate::default(),
            up: Rate::default(),
            last_msg: now,
            last_block: now,
            last_sent: now,
            snubbed: false,
            failed_pieces: 0,
            revealed: self.super_seed.as_ref().map(|_| Bitfield::new(n)),
            offers: Vec::new(),
            outgoing,
            pex_told: BTreeSet::new(),
            pex_next: None,
            pex_heard: None,
        };
        debug!(peer = %addr, ?key, outgoing, "connected");
        self.peers.insert(key, st);
        // First message: what we have (while super-seeding: nothing yet).
        let have = self.picker.have();
        let first = if self.super_seed.is_some() {
            fast.then_some(Message::HaveNone)
        } else if fast && have.is_full() {
            Some(Message::HaveAll)
        } else if fast && have.count() == 0 {
            Some(Message::HaveNone)
        } else if have.count() > 0 {
            Some(Message::Bitfield(Bytes::copy_from_slice(have.as_bytes())))
        } else {
            None
        };
        if let Some(m) = first {
            self.send(now, key, m);
        }
        if extensions {
            let hs = ExtHandshake {
                ut_metadata: Some(OUR_UT_METADATA),
                ut_pex: self.config.pex.then_some(OUR_UT_PEX),
                metadata_size: Some(self.geometry.metadata.len() as u32),
                client: Some("Swarmcast 0.1".into()),
                reqq: Some(MAX_PIPELINE as u32),
                port: Some(self.config.our_port),
                yourip: None,
                ipv6: self.config.our_ipv6,
            };
            self.send(now, key, Message::Extended { id: 0, payload: Bytes::from(hs.encode()) });
        }
        self.offer_pieces(now, key);
        self.choker.peer_connected(now, key);
        self.apply_choker();
    }

    /// While super-seeding: tells the peer of new pieces until [`SUPER_SEED_OFFERS`] are
    /// pending with it, each the piece offered least so far that it lacks (ties: the rarest
    /// among our peers, then a fixed spread over the torrent). An offer stops pending when the
    /// peer has the piece or we served every block of it to the peer (peers need not send HAVE
    /// to a peer that has the piece, so we do not wait for one).
    fn offer_pieces(&mut self, now: Instant, key: PeerKey) {
        let Some(ss) = &mut self.super_seed else {
            return;
        };
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        let Some(revealed) = &mut p.revealed else {
            return;
        };
        let n = self.picker.num_pieces();
        let picker = &self.picker;
        let has = &p.has;
        p.offers.retain(|&(i, served)| {
            !has.has(i) && served < picker.piece_size(i).div_ceil(BLOCK_SIZE)
        });
        let pending = p.offers.len();
        let mut offers = Vec::new();
        for _ in pending..SUPER_SEED_OFFERS {
            let spread = |i: u32| (i as u64).wrapping_mul(2_654_435_761) % n as u64;
            let best = (0..n)
                .filter(|&i| !p.has.has(i) && !revealed.has(i))
                .min_by_key(|&i| (ss.offered[i as usize], self.picker.availability(i), spread(i)));
            let Some(piece) = best else {
                break;
            };
            revealed.set(piece);
            ss.offered[piece as usize] += 1;
            p.offers.push((piece, 0));
            offers.push(piece);
        }
        for piece in offers {
            self.send(now, key, Message::Have(piece));
        }
    }

    /// Counts a served request while super-seeding; once every piece went out, tells every
    /// peer what it was not told yet and seeds normally.
    fn note_served(&mut self, now: Instant, key: PeerKey, piece: u32) {
        let Some(ss) = &mut self.super_seed else {
            return;
        };
        if let Some(p) = self.peers.get_mut(&key) {
            if let Some(o) = p.offers.iter_mut().find(|(i, _)| *i == piece) {
                o.1 += 1;
            }
        }
        let blocks = self.picker.piece_size(piece).div_ceil(BLOCK_SIZE);
        let served = &mut ss.served[piece as usize];
        *served += 1;
        if *served == blocks {
            ss.out += 1;
        }
        if ss.out < self.picker.num_pieces() {
            self.offer_pieces(now, key);
            return;
        }
        debug!("every piece went out once: super-seeding ends");
        self.super_seed = None;
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for k in keys {
            let Some(p) = self.peers.get_mut(&k) else {
                continue;
            };
            let Some(revealed) = p.revealed.take() else {
                continue;
            };
            p.offers.clear();
            let tell: Vec<u32> =
                (0..revealed.len()).filter(|&i| !revealed.has(i) && !p.has.has(i)).collect();
            for piece in tell {
                self.send(now, k, Message::Have(piece));
            }
        }
    }

    fn drop_peer(&mut self, now: Instant, key: PeerKey, reason: &str) {
        let Some(p) = self.peers.remove(&key) else {
            return;
        };
        debug!(peer = %p.addr, "disconnected: {reason}");
        self.out.push_back(Output::Disconnect(key, reason.to_string()));
        self.picker.peer_left(key, &p.has);
        self.choker.peer_disconnected(key);
        self.apply_choker();
        // Its released requests can go to others now.
        self.fill_all(now);
    }

    fn fill_all(&mut self, now: Instant) {
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for k in keys {
            self.fill_requests(now, k);
        }
    }

    /// Handles one message; an error disconnects the peer.
    fn on_message(&mut self, now: Instant, key: PeerKey, msg: Message) -> Result<(), String> {
        let n = self.picker.num_pieces();
        let Some(p) = self.peers.get_mut(&key) else {
            return Ok(());
        };
        p.last_msg = now;
        let first = !p.said_what_it_has;
        if matches!(
            msg,
            Message::Have(_) | Message::Bitfield(_) | Message::HaveAll | Message::HaveNone
        ) {
            p.said_what_it_has = true;
        }
        match msg {
            Message::KeepAlive => {}
            Message::Choke => {
                p.peer_choking = true;
                p.refused |= p.am_interested;
                self.picker.release_peer(key);
                if self.picker.urgent_only() {
                    // Its requests go to the other peers now, not at the next tick.
                    self.fill_all(now);
                }
            }
            Message::Unchoke => {
                p.peer_choking = false;
                p.refused = false;
                // Waiting while choked is not the peer answering slowly.
                p.last_block = now;
                self.fill_requests(now, key);
            }
            Message::Interested => {
                p.peer_interested = true;
                self.choker.set_interested(now, key, true);
                self.apply_choker();
            }
            Message::NotInterested => {
                p.peer_interested = false;
                self.choker.set_interested(now, key, false);
                self.apply_choker();
            }
            Message::Have(piece) => {
                if piece >= n {
                    return Err(format!("HAVE for piece {piece} of {n}"));
                }
                if p.has.set(piece) {
                    if let Some(&t) = self.timeline.get(piece as usize) {
                        p.position = p.position.max(t);
                        let rank = served_rank(p.position, self.our_position);
                        self.choker.record_position(key, rank);
                    }
                    self.picker.peer_have(key, piece);
                    self.update_interest(now, key);
                    self.offer_pieces(now, key);
                }
            }
            Message::Bitfield(raw) => {
                let bf = Bitfield::from_wire(&raw, n).map_err(|e| e.to_string())?;
                if first {
                    p.has = bf;
                    let has = p.has.clone();
                    self.picker.peer_bitfield(key, &has);
                } else {
                    // aria2 re-sends its whole BITFIELD instead of HAVE after HAVE_NONE: treat a
                    // later BITFIELD as HAVEs for the pieces it adds (peers never lose pieces).
                    for piece in bf.iter_set() {
                        if p.has.set(piece) {
                            self.picker.peer_have(key, piece);
                        }
                    }
                }
                self.note_position(key);
                self.update_interest(now, key);
            }
            Message::HaveAll | Message::HaveNone => {
                if !p.fast || !first {
                    return Err("HAVE_ALL/HAVE_NONE out of place".into());
                }
                if matches!(msg, Message::HaveAll) {
                    p.has = Bitfield::full(n);
                    let has = p.has.clone();
                    self.note_position(key);
                    self.picker.peer_bitfield(key, &has);
                    self.update_interest(now, key);
                }
            }
            Message::Request { piece, offset, length } => {
                let b = BlockRef { piece, offset, length };
                let valid = piece < n
                    && length > 0
                    && length <= MAX_SERVED_BLOCK
                    && offset
                        .checked_add(length)
                        .is_some_and(|end| end <= self.picker.piece_size(piece))
                    && self.picker.have().has(piece)
                    && p.revealed.as_ref().is_none_or(|r| r.has(piece));
                if valid && !p.am_choking {
                    self.out.push_back(Output::Serve(key, b));
                    self.note_served(now, key, piece);
                } else if p.fast {
                    self.send(now, key, Message::RejectRequest { piece, offset, length });
                }
            }
            Message::Cancel { piece, offset, length } => {
                self.out.push_back(Output::CancelServe(key, BlockRef { piece, offset, length }));
            }
            Message::RejectRequest { piece, offset, length } => {
                self.picker.release(key, BlockRef { piece, offset, length });
                self.fill_requests(now, key);
            }
            Message::Piece { piece, offset, data } => self.on_block(now, key, piece, offset, data),
            Message::Port(_) | Message::SuggestPiece(_) | Message::AllowedFast(_) => {}
            Message::Extended { id, payload } => self.on_extended(now, key, id, payload)?,
        }
        Ok(())
    }

    fn on_block(&mut self, now: Instant, key: PeerKey, piece: u32, offset: u32, data: Bytes) {
        let block = BlockRef { piece, offset, length: data.len() as u32 };
        let len = data.len() as u64;
        match self.picker.block_received(key, block) {
            BlockOutcome::Unexpected => {}
            BlockOutcome::Accepted { piece_complete, cancels } => {
                // The owner writes in order: the piece's verification asked for below comes
                // after every one of its writes.
                self.out.push_back(Output::Write { piece, offset, data });
                self.block_source.insert((piece, offset), key);
                for (other, b) in cancels {
                    self.send(
                        now,
                        other,
                        Message::Cancel { piece: b.piece, offset: b.offset, length: b.length },
                    );
                }
                self.stats.downloaded += len;
                self.choker.record_downloaded(key, len);
                if let Some(p) = self.peers.get_mut(&key) {
                    p.down.add(len);
                    let waited = now.saturating_duration_since(p.last_block).as_secs_f64();
                    p.max_wait = p.max_wait.max(waited);
                    p.last_block = now;
                    p.snubbed = false;
                }
                if piece_complete {
                    // Block digests are needed to find who lied when this piece failed before.
                    let blocks = self.suspects.contains_key(&piece);
                    self.out.push_back(Output::Verify { piece, blocks });
                }
            }
        }
        self.fill_requests(now, key);
    }

    fn on_add_piece(&mut self, now: Instant, piece: u32, data: Bytes) {
        if piece >= self.picker.num_pieces() || data.len() != self.picker.piece_size(piece) as usize
        {
            return;
        }
        // What peers still owe of this piece is not needed any more.
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            for b in self.picker.outstanding_blocks(key) {
                if b.piece == piece {
                    let cancel =
                        Message::Cancel { piece: b.piece, offset: b.offset, length: b.length };
                    self.out.push_back(Output::Send(key, cancel));
                }
            }
        }
        if !self.picker.piece_supplied(piece) {
            return;
        }
        self.out.push_back(Output::Write { piece, offset: 0, data });
        self.out.push_back(Output::Verify { piece, blocks: false });
        self.fill_all(now);
    }

    /// Streaming: `timeline[piece]` is the piece's place in playback order (the segment it
    /// holds), so a peer's position is the latest place among its pieces: how far along the
    /// movie it is. Ranks the peers to serve ([`Choker::set_nearest_first`]) and to ask
    /// ([`TorrentCore::chain_mask`]). A list of the wrong length is ignored.
    pub fn set_timeline(&mut self, timeline: Vec<u32>) {
        if timeline.len() != self.picker.num_pieces() as usize {
            return;
        }
        self.timeline = timeline;
        let ours =
            self.picker.have().iter_set().filter_map(|i| self.timeline.get(i as usize)).max();
        self.our_position = ours.copied().unwrap_or(0);
        self.choker.set_nearest_first(self.picker.urgent_only());
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            self.note_position(key);
        }
        self.choker.rerank();
        self.apply_choker();
    }

    /// Recomputes peer `key`'s position from all it has.
    fn note_position(&mut self, key: PeerKey) {
        let Some(p) = self.peers.get_mut(&key) else { return };
        let latest = p.has.iter_set().filter_map(|i| self.timeline.get(i as usize)).max();
        p.position = latest.copied().unwrap_or(0);
        self.choker.record_position(key, served_rank(p.position, self.our_position));
    }

    /// True when `piece` is had here or announced by a connected peer.
    pub fn available(&self, piece: u32) -> bool {
        self.picker.have().has(piece) || self.picker.availability(piece) > 0
    }

    /// True when `piece` is had here or announced by a peer that serves us: one not snubbed
    /// that unchokes us, or that we have not asked yet (a peer unchokes those who are
    /// interested in it, so one we want nothing from chokes us without refusing us; one that
    /// chokes us while we are interested, or kept us choked until we gave up, does refuse,
    /// until it unchokes us): what is worth asking for.
    pub fn served(&self, piece: u32) -> bool {
        let serves =
            |p: &PeerState| !p.snubbed && (!p.peer_choking || (!p.am_interested && !p.refused));
        self.picker.have().has(piece) || self.peers.values().any(|p| serves(p) && p.has.has(piece))
    }

    /// With `on`, only the urgent pieces are fetched (see [`TorrentCore::set_urgent`]), and a
    /// peer is interesting only while it has one of them: a viewer of a streamed movie fetches
    /// the segments it plays and serves what it has.
    ///
    /// Such a viewer uploads with no tit for tat, since a peer is interested in it only while
    /// it needs one of our pieces soon: those are the peers to serve, whether or not they have
    /// anything for us. With a timeline ([`TorrentCore::set_timeline`]) it serves the
    /// `stream_slots` viewers nearest behind it ([`Choker::set_nearest_first`]); without one,
    /// as a seed does (up to `seed_slots` peers, ranked by how fast they take our data).
    pub fn set_urgent_only(&mut self, now: Instant, on: bool) {
        self.picker.set_urgent_only(on);
        self.choker.set_seeding(on || self.picker.have().is_full());
        self.choker.set_nearest_first(on && !self.timeline.is_empty());
        self.apply_choker();
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for k in keys {
            self.update_interest(now, k);
        }
    }

    fn on_verified(&mut self, now: Instant, piece: u32, ok: bool, blocks: Option<Vec<[u8; 20]>>) {
        if piece >= self.picker.num_pieces() || self.picker.have().has(piece) {
            return;
        }
        let offsets: Vec<u32> = {
            let size = self.picker.piece_size(piece);
            (0..size.div_ceil(BLOCK_SIZE)).map(|i| i * BLOCK_SIZE).collect()
        };
        let digest_at = |off: u32| blocks.as_ref()?.get((off / BLOCK_SIZE) as usize).copied();
        if !ok {
            self.stats.hash_failures += 1;
            self.out.push_back(Output::Event(TorrentEvent::HashFailed(piece)));
            // Remember who sent what, to find the liar once the piece verifies.
            let mut record = Vec::new();
            for &off in &offsets {
                if let Some(src) = self.block_source.remove(&(piece, off)) {
                    if let (Some(p), Some(digest)) = (self.peers.get(&src), digest_at(off)) {
                        record.push((off, p.addr, digest));
                    }
                }
            }
            self.suspects.entry(piece).or_default().extend(record);
            let contributors = self.picker.piece_failed(piece);
            warn!(piece, ?contributors, "piece failed its hash check; fetching it again");
            // Without proof, only a peer that sent the whole piece is counted against: honest
            // peers that shared a piece with a liar are cleared when it verifies (smart ban).
            if let [only] = contributors[..] {
                let ban = self.peers.get_mut(&only).is_some_and(|p| {
                    p.failed_pieces += 1;
                    p.failed_pieces >= BAN_AFTER_FAILED_PIECES
                });
                if ban {
                    if let Some(addr) = self.peers.get(&only).map(|p| p.addr) {
                        warn!(peer = %addr, "peer took part in too many failed pieces: banned");
                        self.ban(now, addr, "banned");
                    }
                }
            }
            self.fill_all(now);
            return;
        }
        for off in &offsets {
            self.block_source.remove(&(piece, *off));
        }
        if let Some(bad) = self.suspects.remove(&piece) {
            let mut liars = BTreeSet::new();
            for (off, addr, digest) in bad {
                if digest_at(off).is_some_and(|good| good != digest) {
                    liars.insert(addr);
                }
            }
            for addr in liars {
                warn!(peer = %addr, "peer sent corrupt data: banned");
                self.ban(now, addr, "banned: sent corrupt data");
            }
        }
        self.picker.piece_verified(piece);
        if self.timeline.get(piece as usize).is_some_and(|&t| t > self.our_position) {
            // Peers we passed now rank last among those we serve.
            self.our_position = self.timeline[piece as usize];
            let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
            for key in keys {
                if let Some(p) = self.peers.get(&key) {
                    self.choker.record_position(key, served_rank(p.position, self.our_position));
                }
            }
            self.choker.rerank();
            self.apply_choker();
        }
        self.stats.pieces_have += 1;
        self.stats.bytes_have += self.picker.piece_size(piece) as u64;
        self.out.push_back(Output::Event(TorrentEvent::PieceVerified(piece)));
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for k in &keys {
            let has = self.peers.get(k).is_some_and(|p| p.has.has(piece));
            if !has {
                self.send(now, *k, Message::Have(piece));
            }
            self.update_interest(now, *k);
        }
        if self.picker.is_complete() {
            self.on_all_verified();
        }
    }

    /// Bans an address and drops its connection, if any.
    fn ban(&mut self, now: Instant, addr: SocketAddr, reason: &str) {
        if self.banned.insert(addr) {
            self.stats.banned += 1;
            self.out.push_back(Output::Event(TorrentEvent::Banned(addr)));
        }
        self.candidates.remove(&addr);
        let key = self.peers.iter().find(|(_, p)| p.addr == addr).map(|(k, _)| *k);
        if let Some(k) = key {
            self.drop_peer(now, k, reason);
        }
    }

    /// Every piece verified: complete once the data is synced.
    fn on_all_verified(&mut self) {
        if self.complete || self.syncing {
            return;
        }
        self.syncing = true;
        self.out.push_back(Output::Sync);
    }

    fn on_synced(&mut self, now: Instant) {
        if self.complete || !self.syncing {
            return;
        }
        info!(
            secs = now.duration_since(self.started).as_secs_f64(),
            "download complete: every piece verified"
        );
        self.complete = true;
        self.choker.set_seeding(true);
        self.apply_choker();
        self.out.push_back(Output::Event(TorrentEvent::Complete));
        if let Some(a) = &mut self.announcer {
            // A seed that started complete has nothing to report as completed.
            if self.stats.downloaded > 0 {
                if a.in_flight.is_some() || a.next.is_none() {
                    a.kick = Some(AnnounceEvent::Completed);
                } else {
                    a.next = Some((now, AnnounceEvent::Completed));
                }
            }
        }
        self.start_announce(now);
        // Seeds have nothing to trade with seeds.
        let seeds: Vec<PeerKey> =
            self.peers.iter().filter(|(_, p)| p.has.is_full()).map(|(k, _)| *k).collect();
        for k in seeds {
            self.drop_peer(now, k, "both complete");
        }
    }

    fn update_interest(&mut self, now: Instant, key: PeerKey) {
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        let want = if self.picker.urgent_only() {
            self.picker.urgent().any(|u| p.has.has(u))
        } else {
            self.picker.have().wants_any_of(&p.has)
        };
        if want != p.am_interested {
            // Interested in it all along, never unchoked: it did not serve us.
            p.refused |= !want && p.peer_choking;
            p.am_interested = want;
            let m = if want { Message::Interested } else { Message::NotInterested };
            self.send(now, key, m);
        }
        if want {
            self.fill_requests(now, key);
        }
    }

    /// Streaming (urgent pieces only, a timeline known): what we ask of peer `key`, which
    /// `has` these pieces, leaves out the urgent pieces that a peer less far along the movie
    /// also has and serves us (it unchokes us and is not snubbed). Viewers of a movie are
    /// spread along it: asking the nearest viewer ahead keeps the ones far ahead free for the
    /// viewers that only they can serve (the first viewer is the only source of the second),
    /// a chain in which each viewer's upload feeds the next. `None`: nothing left out.
    fn chain_mask(&self, now: Instant, key: PeerKey, has: &Bitfield) -> Option<Bitfield> {
        if !self.picker.urgent_only() || self.timeline.is_empty() {
            return None;
        }
        let position = self.peers.get(&key)?.position;
        // A nearer peer counts while it answers: idle, or a block from it lately (one that
        // claims pieces and then sends nothing must not keep us from the others).
        let answering = |k: &PeerKey, q: &PeerState| {
            self.picker.outstanding(*k) == 0
                || now.saturating_duration_since(q.last_block) < CHAIN_PATIENCE
        };
        let nearer: Vec<&Bitfield> = self
            .peers
            .iter()
            .filter(|(k, q)| {
                **k != key
                    && !q.peer_choking
                    && !q.snubbed
                    && q.position < position
                    && answering(k, q)
            })
            .map(|(_, q)| &q.has)
            .collect();
        if nearer.is_empty() {
            return None;
        }
        let mut mask = has.clone();
        let urgent: Vec<u32> = self.picker.urgent().collect();
        for p in urgent {
            if has.has(p) && nearer.iter().any(|q| q.has(p)) {
                mask.clear(p);
            }
        }
        Some(mask)
    }

    /// Tops up the peer's request pipeline.
    fn fill_requests(&mut self, now: Instant, key: PeerKey) {
        let Some(p) = self.peers.get(&key) else {
            return;
        };
        if p.peer_choking || !p.am_interested {
            return;
        }
        let depth = if p.snubbed { 1 } else { p.pipeline };
        let out = self.picker.outstanding(key);
        if out >= depth {
            return;
        }
        let blocks = match self.chain_mask(now, key, &p.has) {
            Some(mask) => self.picker.pick(key, &mask, depth - out),
            None => self.picker.pick(key, &p.has, depth - out),
        };
        if blocks.is_empty() {
            return;
        }
        if let Some(p) = self.peers.get_mut(&key) {
            p.last_sent = now;
            if out == 0 {
                // The clock for snub detection starts when we begin waiting.
                p.last_block = now;
            }
            for b in blocks {
                self.out.push_back(Output::Send(
                    key,
                    Message::Request { piece: b.piece, offset: b.offset, length: b.length },
                ));
            }
        }
    }

    fn on_extended(
        &mut self,
        now: Instant,
        key: PeerKey,
        id: u8,
        payload: Bytes,
    ) -> Result<(), String> {
        if id == 0 {
            let hs = ExtHandshake::decode(&payload).map_err(|e| e.to_string())?;
            if let Some(p) = self.peers.get_mut(&key) {
                if let Some(q) = hs.reqq {
                    p.pipeline = p.pipeline.min(q.max(1) as usize);
                }
                // Our first PEX message goes out at the next tick, as libtorrent's does.
                if self.config.pex && hs.ut_pex.is_some() && p.pex_next.is_none() {
                    p.pex_next = Some(now);
                }
                // BEP 10's `ipv6`: the peer listens there too, on its port. A claim, checked
                // as PEX addresses are (no loopback or LAN address from a stranger); a private
                // torrent takes peers from its tracker alone.
                // Only the first handshake's: a repeated one cannot feed us dial targets.
                let first = p.ext.is_none();
                let other = match (hs.ipv6, hs.port.filter(|&p| p != 0)) {
                    (Some(ip), Some(port)) if self.config.pex && first => {
                        let sender = p.addr.ip().to_canonical();
                        let a = SocketAddr::new(ip.into(), port);
                        (a.ip() != p.addr.ip() && peer_address_usable(sender, &a)).then_some(a)
                    }
                    _ => None,
                };
                p.ext = Some(hs);
                if let Some(a) = other {
                    self.add_candidates(now, vec![a]);
                }
            }
            return Ok(());
        }
        if id == OUR_UT_PEX && self.config.pex {
            let msg = PexMsg::decode(&payload).map_err(|e| e.to_string())?;
            self.on_pex(now, key, msg);
            return Ok(());
        }
        if id != OUR_UT_METADATA {
            return Ok(());
        }
        let msg = MetadataMsg::decode(&payload).map_err(|e| e.to_string())?;
        let Some(their_id) = self.peers.get(&key).and_then(|p| p.ext.as_ref()?.ut_metadata) else {
            return Ok(());
        };
        if let MetadataMsg::Request { piece } = msg {
            let info = &self.geometry.metadata;
            let reply = if let Some(range) = metadata_piece_range(info.len(), piece) {
                MetadataMsg::Data { piece, total_size: info.len() as u32, data: info.slice(range) }
            } else {
                MetadataMsg::Reject { piece }
            };
            self.send(
                now,
                key,
                Message::Extended { id: their_id, payload: Bytes::from(reply.encode()) },
            );
        }
        Ok(())
    }

    /// A peer's `ut_pex` message: the peers it added become dial candidates. Addresses that
    /// cannot be a peer (unspecified, multicast, port 0), loopback addresses from a peer that is
    /// not itself on loopback, private or link-local ones from a peer that is on neither (no
    /// probing our LAN for a stranger), and messages closer together than [`PEX_MIN_GAP`] are
    /// ignored.
    fn on_pex(&mut self, now: Instant, key: PeerKey, msg: PexMsg) {
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        if p.pex_heard.is_some_and(|t| now.duration_since(t) < PEX_MIN_GAP) {
            debug!(peer = %p.addr, "PEX message too soon after the last: ignored");
            return;
        }
        p.pex_heard = Some(now);
        let sender = p.addr.ip().to_canonical();
        let usable = |a: &SocketAddr| peer_address_usable(sender, a);
        let list: Vec<SocketAddr> =
            msg.added.iter().map(|&(a, _)| a).filter(usable).take(MAX_PEX_PEERS).collect();
        debug!(peer = %p.addr, added = list.len(), dropped = msg.dropped.len(), "PEX");
        self.stats.pex_learned +=
            list.iter().filter(|a| !self.candidates.contains_key(a)).count() as u64;
        self.add_candidates(now, list);
    }

    /// Sends a `ut_pex` message to each peer whose turn it is: the peers we are connected to
    /// (by their listening address) that we have not told it of yet, and those we told it of
    /// that are gone, at most [`MAX_PEX_PEERS`] of each.
    fn send_pex(&mut self, now: Instant) {
        let due: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, p)| p.pex_next.is_some_and(|t| t <= now))
            .map(|(&k, _)| k)
            .collect();
        if due.is_empty() {
            return;
        }
        let current: BTreeMap<SocketAddr, u8> = self
            .peers
            .values()
            .filter_map(|p| {
                let flags = if p.has.is_full() { PEX_SEED } else { 0 }
                    | if p.outgoing { PEX_REACHABLE } else { 0 };
                Some((p.listen_addr()?, flags))
            })
            .collect();
        for key in due {
            let Some(p) = self.peers.get_mut(&key) else {
                continue;
            };
            let Some(id) = p.ext.as_ref().and_then(|e| e.ut_pex) else {
                continue;
            };
            p.pex_next = Some(now + PEX_INTERVAL);
            let own = p.listen_addr();
            let added: Vec<(SocketAddr, u8)> = current
                .iter()
                .filter(|(a, _)| Some(**a) != own && !p.pex_told.contains(a))
                .map(|(&a, &f)| (a, f))
                .take(MAX_PEX_PEERS)
                .collect();
            let dropped: Vec<SocketAddr> = p
                .pex_told
                .iter()
                .filter(|a| !current.contains_key(a))
                .copied()
                .take(MAX_PEX_PEERS)
                .collect();
            if added.is_empty() && dropped.is_empty() {
                continue;
            }
            p.pex_told.extend(added.iter().map(|&(a, _)| a));
            for a in &dropped {
                p.pex_told.remove(a);
            }
            let payload = Bytes::from(PexMsg { added, dropped }.encode());
            self.send(now, key, Message::Extended { id, payload });
        }
    }

    fn apply_choker(&mut self) {
        while let Some(d) = self.choker.poll() {
            let (key, choke) = match d {
                ChokeDecision::Choke(k) => (k, true),
                ChokeDecision::Unchoke(k) => (k, false),
            };
            let Some(p) = self.peers.get_mut(&key) else {
                continue;
            };
            if p.am_choking == choke {
                continue;
            }
            p.am_choking = choke;
            if choke {
                let reject = p.fast;
                self.out.push_back(Output::Send(key, Message::Choke));
                self.out.push_back(Output::DropServes { peer: key, reject });
            } else {
                self.out.push_back(Output::Send(key, Message::Unchoke));
            }
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        if now >= self.choker.next_deadline() {
            self.choker.handle_timeout(now);
            self.apply_choker();
        }
        if now >= self.next_tick {
            let secs = now.duration_since(self.last_tick).as_secs_f64();
            self.last_tick = now;
            self.next_tick = now + TICK;
            self.on_tick(now, secs);
        }
        self.start_announce(now);
    }

    fn on_tick(&mut self, now: Instant, secs: f64) {
        let mut to_drop = vec![];
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            let Some(p) = self.peers.get_mut(&key) else {
                continue;
            };
            p.down.tick(secs);
            p.up.tick(secs);
            // Twice the longest wait, decaying slowly, within [REQUEST_QUEUE_SECS,
            // REQUEST_QUEUE_MAX_SECS]; see REQUEST_QUEUE_SECS.
            p.queue_secs = (2.0 * p.max_wait)
                .max(p.queue_secs * REQUEST_QUEUE_DECAY)
                .clamp(REQUEST_QUEUE_SECS, REQUEST_QUEUE_MAX_SECS);
            p.max_wait = 0.0;
            let by_rate = (p.down.per_sec * p.queue_secs / BLOCK_SIZE as f64).ceil() as usize;
            let cap = p.ext.as_ref().and_then(|e| e.reqq).unwrap_or(250).max(1) as usize;
            p.pipeline = by_rate.clamp(MIN_PIPELINE, MAX_PIPELINE).min(cap);
            if now.duration_since(p.last_msg) > SILENCE_TIMEOUT {
                to_drop.push((key, "silent for 3 minutes"));
                continue;
            }
            if now.duration_since(p.last_sent) > KEEPALIVE {
                p.last_sent = now;
                self.out.push_back(Output::Send(key, Message::KeepAlive));
            }
            let waiting = self.picker.outstanding(key) > 0;
            if waiting && !p.snubbed && now.duration_since(p.last_block) > SNUB_TIMEOUT {
                debug!(peer = %p.addr, "snubbed: no data for 30 s");
                p.snubbed = true;
                self.picker.release_peer(key);
            }
        }
        for (k, why) in to_drop {
            self.drop_peer(now, k, why);
        }
        self.fill_all(now);
        if self.config.pex {
            self.send_pex(now);
        }
        self.connect_more(now);
        self.announce_early_if_stranded(now);
    }

    /// See [`EARLY_ANNOUNCE_BELOW_PEERS`].
    fn announce_early_if_stranded(&mut self, now: Instant) {
        if self.complete || self.stopped || self.peers.len() >= EARLY_ANNOUNCE_BELOW_PEERS {
            return;
        }
        if !self.connecting.is_empty() {
            return;
        }
        let connected: BTreeSet<SocketAddr> = self.peers.values().map(|p| p.addr).collect();
        let untried = self.candidates.iter().any(|(a, &(last, fails))| {
            fails < MAX_DIAL_FAILURES && last.is_none() && !connected.contains(a)
        });
        if untried {
            return;
        }
        let Some(a) = &mut self.announcer else {
            return;
        };
        let Some((at, event)) = a.next else {
            return;
        };
        let earliest = a.last.map_or(now, |t| t + EARLY_ANNOUNCE_AFTER);
        if at > earliest.max(now) {
            a.next = Some((earliest.max(now), event));
        }
    }

    fn connect_more(&mut self, now: Instant) {
        if self.stopped || self.is_finished() {
            return;
        }
        // A peer that dialled us is known by the port it listens on (its extension handshake's)
        // too: dialling that would only make a duplicate connection, dropped after a handshake.
        let connected: BTreeSet<SocketAddr> =
            self.peers.values().flat_map(|p| [Some(p.addr), p.listen_addr()]).flatten().collect();
        let mut budget =
            self.config.max_peers.saturating_sub(self.peers.len() + self.connecting.len());
        let ours = self.config.our_port;
        let mut dial = vec![];
        for (addr, (last, fails)) in self.candidates.iter_mut() {
            if budget == 0 {
                break;
            }
            if connected.contains(addr)
                || self.connecting.contains(addr)
                || self.banned.contains(addr)
                || *fails >= MAX_DIAL_FAILURES
                || (addr.ip().is_loopback() && addr.port() == ours)
            {
                continue;
            }
            let backoff = Duration::from_secs(5 * (1 << *fails));
            if last.is_some_and(|t| now.duration_since(t) < backoff) {
                continue;
            }
            *last = Some(now);
            dial.push(*addr);
            budget -= 1;
        }
        for addr in dial {
            self.connecting.insert(addr);
            self.out.push_back(Output::Connect(addr));
        }
    }
}

/// Whether a peer at `sender` may make us dial `a` (PEX, BEP 10's `ipv6`): not unspecified,
/// multicast, broadcast or port 0; no loopback address from a peer that is not itself on
/// loopback, and no private or link-local one from a peer that is on neither (no probing our
/// LAN for a stranger).
fn peer_address_usable(sender: std::net::IpAddr, a: &SocketAddr) -> bool {
    let local = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(v4) => v4.is_private() || v4.is_link_local(),
        std::net::IpAddr::V6(v6) => v6.is_unique_local() || v6.is_unicast_link_local(),
    };
    let ip = a.ip().to_canonical();
    a.port() != 0
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && ip != std::net::Ipv4Addr::BROADCAST
        && (sender.is_loopback() || !ip.is_loopback())
        && (sender.is_loopback() || local(sender) || !local(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testnet::Net;

    /// Drains the core; the announces it asked for.
    fn announces(core: &mut TorrentCore) -> Vec<AnnounceEvent> {
        std::iter::from_fn(|| core.poll())
            .filter_map(|o| match o {
                Output::Announce { event, .. } => Some(event),
                _ => None,
            })
            .collect()
    }

    /// A leecher that announces to a tracker, alone on `net`.
    fn announcing_leecher(net: &mut Net) -> usize {
        let mut config = Net::config(0);
        config.announce = true;
        net.add(false, config)
    }

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn sent_to(
        net: &Net,
        from: usize,
        pred: impl Fn(&Message) -> bool,
    ) -> Vec<(Duration, PeerKey)> {
        net.nodes[from].sent.iter().filter(|(_, _, m)| pred(m)).map(|(t, k, _)| (*t, *k)).collect()
    }

    #[test]
    fn a_leecher_gets_every_byte_from_a_seed() {
        let mut net = Net::new(content(300_000), 32 * 1024);
        let s = net.add(true, Net::config(0));
        let l = net.add(false, Net::config(1));
        net.connect(l, s);
        net.drive(Duration::from_secs(5));
        assert!(net.nodes[l].core.is_complete());
        assert_eq!(net.nodes[l].data, net.content());
        assert_eq!(net.nodes[l].core.stats().bytes_have, 300_000);
        assert_eq!(net.nodes[s].core.stats().uploaded, 300_000);
        // Two seeds have nothing to trade: the connection is closed once both are complete.
        assert_eq!(net.nodes[l].core.peer_keys().count(), 0);
        assert!(net.nodes[l].outputs.contains(&Output::Event(TorrentEvent::Complete)));
    }

    #[test]
    fn urgent_pieces_arrive_first_in_the_order_asked() {
        // A reader of the last piece and then the middle one (a player seeking) gets them
        // before the rest, in that order.
        let mut net = Net::new(content(300_000), 32 * 1024);
        let s = net.add(true, Net::config(0));
        let l = net.add(false, Net::config(1));
        let now = net.now;
        net.nodes[l].core.set_urgent(now, &[9, 5]);
        net.connect(l, s);
        net.drive(Duration::from_secs(5));
        assert_eq!(net.nodes[l].data, net.content());
        let verified: Vec<u32> = net.nodes[l]
            .outputs
            .iter()
            .filter_map(|o| match o {
                Output::Event(TorrentEvent::PieceVerified(p)) => Some(*p),
                _ => None,
            })
            .collect();
        assert_eq!(verified.len(), 10);
        assert_eq!(verified[..2], [9, 5], "{verified:?}");
    }

    #[test]
    fn a_seek_cancels_what_waits_for_other_pieces_and_the_new_piece_comes_first() {
        // 40 one-block pieces from a seed answering every 500 ms: requests wait there.
        let mut net = Net::new(content(40 * 16384), 16 * 1024);
        let s = net.add(true, Net::config(0));
        let l = net.add(false, Net::config(1));
        net.nodes[s].batch_every = Some(Duration::from_millis(500));
        net.connect(l, s);
        net.drive(Duration::from_millis(200));
        let requested = requested(&net, l);
        assert!(!requested.is_empty());
        let target = (0..40).rev().find(|p| !requested.contains(p)).unwrap();
        let now = net.now;
        net.nodes[l].core.set_urgent(now, &[target]);
        net.drive(Duration::from_secs(10));
        assert_eq!(net.nodes[l].data, net.content());
        assert!(!sent_to(&net, l, |m| matches!(m, Message::Cancel { .. })).is_empty());
        let first = net.nodes[l].outputs.iter().find_map(|o| match o {
            Output::Event(TorrentEvent::PieceVerified(p)) => Some(*p),
            _ => None,
        });
        assert_eq!(first, Some(target), "requested first: {requested:?}");
    }

    /// The pieces `node` sent requests for.
    fn requested(net: &Net, node: usize) -> std::collections::BTreeSet<u32> {
        let sent = net.nodes[node].sent.iter();
        sent.filter_map(|(_, _, m)| match m {
            Message::Request { piece, .. } => Some(*piece),
            _ => None,
        })
        .collect()
    }

    /// The pieces `node` verified, in order.
    fn verified(net: &Net, node: usize) -> Vec<u32> {
        let outputs = net.nodes[node].outputs.iter();
        outputs
            .filter_map(|o| match o {
                Output::Event(TorrentEvent::PieceVerified(p)) => Some(*p),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn urgent_only_fetches_the_urgent_pieces_and_nothing_else() {
        let mut net = Net::new(content(20 * 16384), 16 * 1024);
        let s = net.add(true, Net::config(0));
        let l = net.add(false, Net::config(1));
        let now = net.now;
        net.nodes[l].core.set_urgent_only(now, true);
        net.connect(l, s);
        net.drive(Duration::from_secs(2));
        assert_eq!(verified(&net, l), [], "nothing is urgent yet");
        assert!(sent_to(&net, l, |m| matches!(m, Message::Interested)).is_empty());
        let now = net.now;
        net.nodes[l].core.set_urgent(now, &[7, 3]);
        net.drive(Duration::from_secs(4));
        assert_eq!(verified(&net, l), [7, 3]);
        assert_eq!(requested(&net, l), [3, 7].into());
        // Done with them: no longer interested, until something else is urgent.
        let last = net.nodes[l].sent.iter().rev().find_map(|(_, _, m)| match m {
            Message::Interested | Message::NotInterested => Some(m.clone()),
            _ => None,
        });
        assert_eq!(last, Some(Message::NotInterested));
        let now = net.now;
        net.nodes[l].core.set_urgent(now, &[12]);
        net.drive(Duration::from_secs(6));
        assert_eq!(verified(&net, l), [7, 3, 12]);
        assert!(!net.nodes[l].core.is_complete());
    }

    /// A streaming viewer's core: 20 pieces of 16 KiB, one per segment, urgent pieces only,
    /// pieces 0..=`upto` had.
    fn streaming_core(now: Instant, upto: Option<u32>) -> TorrentCore {
        let geometry =
            Geometry { piece_length: 16384, total_length: 20 * 16384, metadata: Bytes::new() };
        let mut have = Bitfield::new(20);
        if let Some(upto) = upto {
            for p in 0..=upto {
                have.set(p);
            }
        }
        let rng = ChaCha8Rng::seed_from_u64(1);
        let mut core = TorrentCore::new(geometry, have, Net::config(0), rng, now);
        core.set_urgent_only(now, true);
        core.set_timeline((0..20).collect());
        core
    }

    /// Peer `key` connects and says it has pieces 0..=`last` (`None`: all, HAVE_ALL).
    fn connect_viewer(core: &mut TorrentCore, now: Instant, key: PeerKey, last: Option<u32>) {
        let addr = SocketAddr::from(([10, 0, 0, key.0 as u8], 6881));
        let id = PeerId([key.0 as u8; 20]);
        let connected =
            Input::Connected { peer: key, addr, id, fast: true, extensions: true, outgoing: true };
        core.handle(now, connected);
        let said = match last {
            None => Message::HaveAll,
            Some(last) => {
                let mut has = Bitfield::new(20);
                for p in 0..=last {
                    has.set(p);
                }
                Message::Bitfield(has.as_bytes().to_vec().into())
            }
        };
        core.handle(now, Input::Message(key, said));
    }

    #[test]
    fn a_streaming_viewer_asks_the_nearest_viewer_ahead_and_the_far_one_only_for_the_rest() {
        // 20 pieces, one per segment. Peer `far` is at segment 15, `near` at segment 5.
        let now = Instant::now();
        let mut core = streaming_core(now, None);
        let (far, near) = (PeerKey(1), PeerKey(2));
        connect_viewer(&mut core, now, far, Some(15));
        connect_viewer(&mut core, now, near, Some(5));
        // Both serve us.
        core.handle(now, Input::Message(far, Message::Unchoke));
        core.handle(now, Input::Message(near, Message::Unchoke));
        core.set_urgent(now, &(0..10).collect::<Vec<u32>>());
        let mut asked: BTreeMap<PeerKey, BTreeSet<u32>> = BTreeMap::new();
        while let Some(o) = core.poll() {
            if let Output::Send(k, Message::Request { piece, .. }) = o {
                asked.entry(k).or_default().insert(piece);
            }
        }
        // What both have, from the near one; the rest (only the far one has it) from the far.
        assert_eq!(asked[&near], (0..=5).collect(), "{asked:?}");
        assert_eq!(asked[&far], (6..10).collect(), "{asked:?}");
        // Pieces only the far one has: from it.
        core.set_urgent(now, &[12, 13]);
        let asked_now: Vec<(PeerKey, u32)> = std::iter::from_fn(|| core.poll())
            .filter_map(|o| match o {
                Output::Send(k, Message::Request { piece, .. }) => Some((k, piece)),
                _ => None,
            })
            .collect();
        assert_eq!(asked_now, [(far, 12), (far, 13)]);
        // `served`: had by a peer that unchokes us.
        assert!(core.served(15) && !core.served(16));
        // Not by one that chokes us while we ask it for pieces.
        core.handle(now, Input::Message(far, Message::Choke));
        assert!(!core.served(15) && core.served(5));
        // One we ask nothing of (no one has what we want now) chokes us without refusing: it
        // serves whoever asks.
        core.set_urgent(now, &[19]);
        // (`far`, which choked us while we asked, still refuses us though we ask nothing now.)
        assert!(!core.served(15));
        // Until it unchokes us.
        core.handle(now, Input::Message(far, Message::Unchoke));
        assert!(core.served(15));
        let other = PeerKey(3);
        connect_viewer(&mut core, now, other, Some(18));
        assert!(core.served(18) && !core.served(19));
    }

    #[test]
    fn a_streaming_viewer_serves_the_two_nearest_behind_it_not_one_that_claims_it_all() {
        let now = Instant::now();
        let mut core = streaming_core(now, Some(10));
        let (liar, far, near, nearest) = (PeerKey(1), PeerKey(2), PeerKey(3), PeerKey(4));
        for (key, last) in [(liar, None), (far, Some(2)), (near, Some(6)), (nearest, Some(8))] {
            connect_viewer(&mut core, now, key, last);
        }
        for key in [liar, far, near, nearest] {
            core.handle(now, Input::Message(key, Message::Interested));
        }
        // Where the chokes and unchokes sent leave each peer.
        let mut unchoked = BTreeSet::new();
        while let Some(o) = core.poll() {
            match o {
                Output::Send(k, Message::Unchoke) => unchoked.insert(k),
                Output::Send(k, Message::Choke) => unchoked.remove(&k),
                _ => false,
            };
        }
        let expected: BTreeSet<PeerKey> = [near, nearest].into();
        assert_eq!(unchoked, expected, "the two nearest behind, not the one claiming it all");
    }

    #[test]
    fn a_piece_added_from_elsewhere_is_verified_then_served_and_a_bad_one_is_not() {
        let mut net = Net::new(content(20 * 16384), 16 * 1024);
        let a = net.add(false, Net::config(0));
        let b = net.add(false, Net::config(1));
        let now = net.now;
        for n in [a, b] {
            net.nodes[n].core.set_urgent_only(now, true);
        }
        net.connect(b, a);
        let good = Bytes::copy_from_slice(&net.content()[5 * 16384..6 * 16384]);
        let bad = Bytes::from(vec![7u8; 16384]);
        net.nodes[a].core.handle(now, Input::AddPiece { piece: 5, data: good });
        net.nodes[a].core.handle(now, Input::AddPiece { piece: 6, data: bad });
        // The wrong size for a piece: ignored.
        net.nodes[a].core.handle(now, Input::AddPiece { piece: 8, data: Bytes::from(vec![0; 9]) });
        net.drive(Duration::from_secs(1));
        assert_eq!(verified(&net, a), [5]);
        let failed =
            net.nodes[a].outputs.iter().any(|o| *o == Output::Event(TorrentEvent::HashFailed(6)));
        assert!(failed, "the bad piece failed its hash check");
        assert_eq!(sent_to(&net, a, |m| matches!(m, Message::Have(5))).len(), 1);
        let now = net.now;
        net.nodes[b].core.set_urgent(now, &[5]);
        net.drive(Duration::from_secs(3));
        assert_eq!(verified(&net, b), [5], "b got the added piece from a");
        assert_eq!(net.nodes[b].data[5 * 16384..6 * 16384], net.content()[5 * 16384..6 * 16384]);
    }

    #[test]
    fn a_peer_answering_in_batches_gets_a_deeper_queue_and_the_rate_grows() {
        // Transmission answers requests every 500 ms. A queue of a fixed half second of the
        // measured rate would hold the rate where it starts (16 blocks a batch: 16 MiB in 32 s);
        // the waits between batches deepen the queue, and each batch is larger than the last.
        let mut net = Net::new(content(16 << 20), 256 * 1024);
        let s = net.add(true, Net::config(0));
        let l = net.add(false, Net::config(1));
        net.nodes[s].batch_every = Some(Duration::from_millis(500));
        net.connect(l, s);
        net.drive(Duration::from_secs(12));
        assert!(net.nodes[l].core.is_complete(), "{:?}", net.nodes[s].batches);
        assert_eq!(net.nodes[l].data, net.content());
        let largest = net.nodes[s].batches.iter().max().copied().unwrap_or(0);
        assert!(largest > 100, "batches {:?}", net.nodes[s].batches);
    }

    #[test]
    fn leechers_trade_pieces_among_themselves() {
        // The seed connects to one leecher only; the other two get everything through it.
        let mut net = Net::new(content(200_000), 16 * 1024);
        let s = net.add(true, Net::config(0));
        let ls: Vec<usize> = (1..4).map(|i| net.add(false, Net::config(i))).collect();
        net.connect(ls[0], s);
        net.connect(ls[1], ls[0]);
        net.connect(ls[2], ls[1]);
        net.drive(Duration::from_secs(120));
        for &l in &ls {
            assert!(net.nodes[l].core.is_complete(), "leecher {l} incomplete");
            assert_eq!(net.nodes[l].data, net.content());
        }
        assert!(net.nodes[ls[1]].core.stats().uploaded > 0);
    }

    #[test]
    fn four_regular_unchokes_at_once_then_changes_only_at_rechoke_instants() {
        let mut net = Net::new(content(1 << 20), 64 * 1024);
        // A seed with the notes' choker: 4 regular slots and 1 optimistic, seeding or not.
        let mut config = Net::config(0);
        config.choker.seed_slots = 0;
        let s = net.add(true, config);
        net.nodes[s].stalled = true;
        let ls: Vec<usize> = (1..7).map(|i| net.add(false, Net::config(i))).collect();
        for &l in &ls {
            net.connect(l, s);
        }
        let unchoked = |net: &Net| {
            let core = &net.nodes[s].core;
            core.peer_keys().filter(|&k| core.is_unchoked(k)).count()
        };
        let changes = |net: &Net| -> Vec<Duration> {
            let m = |m: &Message| matches!(m, Message::Choke | Message::Unchoke);
            sent_to(net, s, m).into_iter().map(|(t, _)| t).collect()
        };
        net.drive(Duration::ZERO);
        // Fast start: the first four interested peers are unchoked as their INTERESTED arrives.
        assert_eq!(unchoked(&net), 4);
        assert_eq!(changes(&net), vec![Duration::ZERO; 4]);
        net.drive(Duration::from_millis(9_999));
        assert_eq!(changes(&net).len(), 4);
        // The optimistic slot is filled at the first regular rechoke, exactly 10 s in (with no
        // rates yet the regular slots may change hands too, ties broken at random).
        net.drive(Duration::from_secs(10));
        assert_eq!(unchoked(&net), 5);
        assert!(changes(&net).len() > 4);
        // Every choke and unchoke happens at 0 s or a rechoke instant (10 s, 20 s, 30 s).
        net.drive(Duration::from_secs(35));
        assert_eq!(unchoked(&net), 5);
        for t in changes(&net) {
            assert!(t.subsec_nanos() == 0 && t.as_secs() % 10 == 0, "change at {t:?}");
        }
        assert!(changes(&net).iter().any(|t| *t == Duration::from_secs(30)));
    }

    #[test]
    fn endgame_asks_twice_and_cancels_the_duplicate() {
        let mut net = Net::new(content(96 * 1024), 32 * 1024);
        let a = net.add(true, Net::config(0));
        let b = net.add(true, Net::config(1));
        let l = net.add(false, Net::config(2));
        // One seed is stuck: what is asked of it is asked again of the other in endgame.
        net.nodes[a].stalled = true;
        net.connect(l, a);
        net.connect(l, b);
        net.drive(Duration::from_secs(5));
        assert!(net.nodes[l].core.is_complete());
        assert_eq!(net.nodes[l].data, net.content());
        let cancels = sent_to(&net, l, |m| matches!(m, Message::Cancel { .. }));
        assert!(!cancels.is_empty(), "no CANCEL in endgame");
        // Every CANCEL went to the stuck seed, for a block that the other seed delivered.
        let (ka, _) = (PeerKey(0), PeerKey(1));
        assert!(cancels.iter().all(|(_, k)| *k == ka));
    }

    #[test]
    fn a_peer_sending_corrupt_blocks_is_banned_and_the_download_completes() {
        let mut net = Net::new(content(256 * 1024), 32 * 1024);
        let honest = net.add(true, Net::config(0));
        let liar = net.add(true, Net::config(1));
        net.nodes[liar].lies = true;
        let l = net.add(false, Net::config(2));
        // The liar alone: each piece it sends fails; after the third it is banned (the pieces
        // already on their way are verified and fail too).
        net.connect(l, liar);
        net.drive(Duration::from_secs(1));
        let core = &net.nodes[l].core;
        let failures = core.stats().hash_failures;
        assert!(failures >= BAN_AFTER_FAILED_PIECES);
        assert!(core.is_banned(&net.nodes[liar].addr));
        assert_eq!(core.stats().banned, 1);
        assert_eq!(core.stats().pieces_have, 0);
        assert_eq!(core.peer_keys().count(), 0);
        // It cannot come back; the honest seed completes the download.
        net.connect(liar, l);
        net.connect(l, honest);
        net.drive(Duration::from_secs(60));
        let core = &net.nodes[l].core;
        assert!(core.is_complete());
        assert_eq!(net.nodes[l].data, net.content());
        assert!(!core.is_banned(&net.nodes[honest].addr));
        assert_eq!(core.stats().hash_failures, failures);
    }

    #[test]
    fn a_have_beyond_the_last_piece_disconnects_the_peer() {
        let mut net = Net::new(content(64 * 1024), 16 * 1024);
        let s = net.add(true, Net::config(0));
        let l = net.add(false, Net::config(1));
        let (kl, _) = net.connect(l, s);
        net.nodes[s].stalled = true;
        net.drive(Duration::ZERO);
        let now = net.now;
        net.nodes[l].core.handle(now, Input::Message(kl, Message::Have(4)));
        let outs: Vec<Output> = std::iter::from_fn(|| net.nodes[l].core.poll()).collect();
        assert!(outs
            .iter()
            .any(|o| matches!(o, Output::Disconnect(k, why) if *k == kl && why.contains("HAVE"))));
        assert_eq!(net.nodes[l].core.peer_keys().count(), 0);
    }

    #[test]
    fn requests_for_missing_pieces_or_oversized_blocks_are_rejected_not_served() {
        let mut net = Net::new(content(64 * 1024), 16 * 1024);
        let s = net.add(true, Net::config(0));
        let l = net.add(false, Net::config(1));
        let (_, ks) = net.connect(l, s);
        net.nodes[s].stalled = true;
        net.drive(Duration::ZERO);
        let now = net.now;
        let core = &mut net.nodes[s].core;
        for (piece, offset, length) in [(4, 0, 16384), (0, 0, MAX_SERVED_BLOCK + 1), (3, 16384, 1)]
        {
            core.handle(now, Input::Message(ks, Message::Request { piece, offset, length }));
            let outs: Vec<Output> = std::iter::from_fn(|| core.poll()).collect();
            assert_eq!(
                outs,
                vec![Output::Send(ks, Message::RejectRequest { piece, offset, length })]
            );
        }
    }

    #[test]
    fn the_announce_schedule_follows_the_tracker() {
        let mut net = Net::new(content(64 * 1024), 16 * 1024);
        let l = announcing_leecher(&mut net);
        let core = &mut net.nodes[l].core;
        let t0 = net.now;
        assert_eq!(announces(core), vec![AnnounceEvent::Started]);
        // Failed: the same event again 15 s later, not before.
        core.handle(t0, Input::AnnounceFailed);
        core.handle(t0 + Duration::from_secs(14), Input::Timeout);
        assert_eq!(announces(core), vec![]);
        core.handle(t0 + Duration::from_secs(15), Input::Timeout);
        assert_eq!(announces(core), vec![AnnounceEvent::Started]);
        // Answered with a 100 s interval and a peer (being dialled, so not stranded): the next
        // regular announce then.
        let t1 = t0 + Duration::from_secs(15);
        let peers = vec![SocketAddr::from(([10, 9, 9, 9], 6881))];
        core.handle(t1, Input::Announced { interval: Duration::from_secs(100), peers });
        assert_eq!(core.next_deadline().map(|d| d <= t1 + Duration::from_secs(100)), Some(true));
        core.handle(t1 + Duration::from_secs(99), Input::Timeout);
        assert_eq!(announces(core), vec![]);
        core.handle(t1 + Duration::from_secs(100), Input::Timeout);
        assert_eq!(announces(core), vec![AnnounceEvent::None]);
        core.stop();
        assert_eq!(announces(core), vec![AnnounceEvent::Stopped]);
        assert_eq!(core.next_deadline(), None);
    }

    #[test]
    fn a_super_seed_sends_every_piece_once_and_the_leechers_trade_the_rest() {
        let mut net = Net::new(content(600_000), 32 * 1024);
        let mut config = Net::config(0);
        config.super_seed = true;
        let s = net.add(true, config);
        let ls: Vec<usize> = (1..5).map(|i| net.add(false, Net::config(i))).collect();
        for &l in &ls {
            net.connect(l, s);
        }
        net.connect(ls[0], ls[1]);
        net.connect(ls[1], ls[2]);
        net.connect(ls[2], ls[3]);
        net.drive(Duration::from_secs(60));
        for &l in &ls {
            assert!(net.nodes[l].core.is_complete(), "leecher {l} incomplete");
            assert_eq!(net.nodes[l].data, net.content());
        }
        // The seed began with HAVE_NONE and a few HAVEs, never HAVE_ALL or a BITFIELD.
        let first = |m: &Message| matches!(m, Message::HaveAll | Message::Bitfield(_));
        assert!(sent_to(&net, s, first).is_empty());
        // Its first offers named every piece once before any piece twice.
        let offers: Vec<u32> = net.nodes[s]
            .sent
            .iter()
            .filter_map(|(_, _, m)| if let Message::Have(p) = m { Some(*p) } else { None })
            .collect();
        let n = net.nodes[s].core.have().len() as usize;
        assert!(offers.len() >= n);
        let first: BTreeSet<u32> = offers[..n].iter().copied().collect();
        assert_eq!(first.len(), n, "a piece offered twice before every piece once: {offers:?}");
    }

    #[test]
    fn a_stranded_download_asks_the_tracker_again_after_a_minute_not_an_hour() {
        let mut net = Net::new(content(64 * 1024), 16 * 1024);
        let l = announcing_leecher(&mut net);
        let core = &mut net.nodes[l].core;
        let t0 = net.now;
        assert_eq!(announces(core).len(), 1);
        // The tracker knows no one and asks us back in an hour.
        core.handle(t0, Input::Announced { interval: Duration::from_secs(3600), peers: vec![] });
        for s in 1..=59 {
            core.handle(t0 + Duration::from_secs(s), Input::Timeout);
        }
        assert_eq!(announces(core).len(), 0);
        // No peer, nothing to dial: a minute after the last announce, it asks again.
        for s in 60..=62 {
            core.handle(t0 + Duration::from_secs(s), Input::Timeout);
        }
        assert_eq!(announces(core).len(), 1);
    }

    /// The `ut_pex` messages node `from` sent: (time, its key for the receiver, message).
    fn pex_sent(net: &Net, from: usize) -> Vec<(Duration, PeerKey, PexMsg)> {
        net.nodes[from]
            .sent
            .iter()
            .filter_map(|(t, k, m)| match m {
                Message::Extended { id, payload } if *id == OUR_UT_PEX => {
                    Some((*t, *k, PexMsg::decode(payload).unwrap()))
                }
                _ => None,
            })
            .collect()
    }

    /// A seed, a leecher connected to it that never uploads, and a second leecher that knows
    /// only the first: with peer exchange the second finds the seed and completes.
    fn pex_chain(pex: bool) -> (Net, [usize; 3]) {
        let mut net = Net::new(content(200_000), 16 * 1024);
        let config = |i| CoreConfig { pex, ..Net::config(i) };
        let s = net.add(true, config(0));
        let middle = net.add(false, config(1));
        let last = net.add(false, config(2));
        net.nodes[middle].stalled = true;
        // The seed answers every 2 s, so the middle is still its leecher (and connected to it)
        // when its first PEX message goes out, at its first tick.
        net.nodes[s].batch_every = Some(Duration::from_secs(2));
        net.connect(middle, s);
        net.connect(last, middle);
        net.drive(Duration::from_secs(30));
        (net, [s, middle, last])
    }

    #[test]
    fn a_peer_learns_of_the_seed_from_a_peer_through_pex_and_completes() {
        let (net, [s, middle, last]) = pex_chain(true);
        assert!(net.nodes[last].core.is_complete());
        assert_eq!(net.nodes[last].data, net.content());
        let seed_addr = net.nodes[s].addr;
        // What the middle told the last: the seed, flagged a seed it dialled.
        let told = pex_sent(&net, middle);
        assert!(told
            .iter()
            .any(|(_, _, m)| m.added == vec![(seed_addr, PEX_SEED | PEX_REACHABLE)]));
        assert!(told.iter().all(|(_, _, m)| m.added.len() <= MAX_PEX_PEERS));
        assert!(net.nodes[last].core.stats().pex_learned >= 1);
    }

    #[test]
    fn a_private_torrent_exchanges_no_peers() {
        let (net, [_, middle, last]) = pex_chain(false);
        assert!(pex_sent(&net, middle).is_empty());
        assert!(!net.nodes[last].core.is_complete(), "the middle never uploads");
        assert_eq!(net.nodes[last].core.peer_keys().count(), 1);
        // Nor does it announce the extension.
        let hs = net.nodes[middle].sent.iter().find_map(|(_, _, m)| match m {
            Message::Extended { id: 0, payload } => Some(ExtHandshake::decode(payload).unwrap()),
            _ => None,
        });
        assert_eq!(hs.unwrap().ut_pex, None);
    }

    #[test]
    fn pex_goes_to_each_peer_at_most_once_a_minute_with_what_changed() {
        let mut net = Net::new(content(4 << 20), 64 * 1024);
        let hub = net.add(false, Net::config(0));
        let a = net.add(false, Net::config(1));
        let b = net.add(false, Net::config(2));
        let (_, hub_key_a) = net.connect(a, hub);
        net.connect(b, hub);
        net.drive(Duration::from_secs(10));
        // A newcomer at 10 s: the hub tells `a` of it only at its next turn, a minute later.
        let c = net.add(false, Net::config(3));
        net.connect(c, hub);
        net.drive(Duration::from_secs(150));
        let to_a: Vec<_> =
            pex_sent(&net, hub).into_iter().filter(|(_, k, _)| *k == hub_key_a).collect();
        let (b_addr, c_addr) = (net.nodes[b].addr, net.nodes[c].addr);
        assert_eq!(to_a.len(), 2, "{to_a:?}");
        assert_eq!(
            to_a[0].2.added,
            vec![(b_addr, 0)],
            "incoming peers' ports from their handshakes"
        );
        assert_eq!(to_a[1].2.added, vec![(c_addr, 0)], "only what changed");
        assert!(to_a[1].0 - to_a[0].0 >= PEX_INTERVAL);
        // A peer is never told of itself.
        assert!(to_a.iter().all(|(_, _, m)| m.added.iter().all(|(x, _)| *x != net.nodes[a].addr)));
    }

    #[test]
    fn hostile_pex_claims_are_not_dialled_and_a_flood_of_messages_is_ignored() {
        let mut net = Net::new(content(64 * 1024), 16 * 1024);
        let l = net.add(false, Net::config(0));
        let core = &mut net.nodes[l].core;
        let t0 = net.now;
        let peer = PeerKey(7);
        let addr: SocketAddr = "10.9.9.9:6881".parse().unwrap();
        core.handle(
            t0,
            Input::Connected {
                peer,
                addr,
                id: PeerId([9; 20]),
                fast: true,
                extensions: true,
                outgoing: true,
            },
        );
        let hs = ExtHandshake { ut_pex: Some(5), ..Default::default() };
        core.handle(
            t0,
            Input::Message(peer, Message::Extended { id: 0, payload: hs.encode().into() }),
        );
        let pex = |list: &[&str]| {
            let added = list.iter().map(|a| (a.parse().unwrap(), 0)).collect();
            Message::Extended {
                id: OUR_UT_PEX,
                payload: PexMsg { added, dropped: vec![] }.encode().into(),
            }
        };
        let dials = |core: &mut TorrentCore| -> Vec<SocketAddr> {
            std::iter::from_fn(|| core.poll())
                .filter_map(|o| match o {
                    Output::Connect(a) => Some(a),
                    _ => None,
                })
                .collect()
        };
        dials(core);
        let bad =
            ["127.0.0.1:22", "0.0.0.0:6881", "224.0.0.1:6881", "10.1.1.1:0", "255.255.255.255:1"];
        let mut list = bad.to_vec();
        list.push("10.1.1.1:6881");
        core.handle(t0, Input::Message(peer, pex(&list)));
        assert_eq!(dials(core), vec!["10.1.1.1:6881".parse().unwrap()]);
        // A second message ten seconds later counts for nothing.
        core.handle(t0 + Duration::from_secs(10), Input::Message(peer, pex(&["10.2.2.2:6881"])));
        assert!(dials(core).is_empty());
        assert_eq!(core.stats().pex_learned, 1);
        // Garbage under the PEX id closes the connection.
        let junk =
            Message::Extended { id: OUR_UT_PEX, payload: Bytes::from_static(b"d5:added5:abcdee") };
        core.handle(t0 + Duration::from_secs(11), Input::Message(peer, junk));
        assert!(std::iter::from_fn(|| core.poll())
            .any(|o| matches!(o, Output::Disconnect(k, _) if k == peer)));
    }

    #[test]
    fn a_peer_that_dialled_us_is_not_dialled_back_at_the_port_it_listens_on() {
        let mut net = Net::new(content(64 * 1024), 16 * 1024);
        let l = net.add(false, Net::config(0));
        let core = &mut net.nodes[l].core;
        let (t0, peer) = (net.now, PeerKey(7));
        // It dialled us from an ephemeral port and listens on 6881.
        let from: SocketAddr = "10.9.9.9:51234".parse().unwrap();
        core.handle(
            t0,
            Input::Connected {
                peer,
                addr: from,
                id: PeerId([9; 20]),
                fast: true,
                extensions: true,
                outgoing: false,
            },
        );
        let hs = ExtHandshake { port: Some(6881), ..Default::default() };
        core.handle(t0, Input::Message(peer, handshake(hs)));
        std::iter::from_fn(|| core.poll()).for_each(drop);
        // Its listening address comes back (from PEX, a tracker, the DHT) with another one.
        core.handle(
            t0,
            Input::Peers(vec!["10.9.9.9:6881".parse().unwrap(), "10.1.1.1:6881".parse().unwrap()]),
        );
        let dials: Vec<SocketAddr> = std::iter::from_fn(|| core.poll())
            .filter_map(|o| match o {
                Output::Connect(a) => Some(a),
                _ => None,
            })
            .collect();
        assert_eq!(dials, vec!["10.1.1.1:6881".parse::<SocketAddr>().unwrap()]);
    }

    /// Connects a peer at `addr` to a fresh core, feeds it `messages` from that peer, and
    /// returns the addresses the core dials after the last one.
    fn dials_after(config: CoreConfig, addr: &str, messages: Vec<Message>) -> Vec<SocketAddr> {
        let mut net = Net::new(content(64 * 1024), 16 * 1024);
        let l = net.add(false, config);
        let core = &mut net.nodes[l].core;
        let (t0, peer) = (net.now, PeerKey(7));
        let connected = Input::Connected {
            peer,
            addr: addr.parse().unwrap(),
            id: PeerId([9; 20]),
            fast: true,
            extensions: true,
            outgoing: true,
        };
        core.handle(t0, connected);
        let mut dials = Vec::new();
        for m in messages {
            std::iter::from_fn(|| core.poll()).for_each(drop);
            core.handle(t0, Input::Message(peer, m));
            dials = std::iter::from_fn(|| core.poll())
                .filter_map(|o| match o {
                    Output::Connect(a) => Some(a),
                    _ => None,
                })
                .collect();
        }
        dials
    }

    /// An extension handshake as a message.
    fn handshake(hs: ExtHandshake) -> Message {
        Message::Extended { id: 0, payload: hs.encode().into() }
    }

    /// The addresses a core dials after a peer at `addr` that speaks `ut_pex` sends one PEX
    /// message naming `list`.
    fn dials_after_pex(config: CoreConfig, addr: &str, list: &[&str]) -> Vec<SocketAddr> {
        let hs = handshake(ExtHandshake { ut_pex: Some(5), ..Default::default() });
        let added = list.iter().map(|a| (a.parse().unwrap(), 0)).collect();
        let payload = PexMsg { added, dropped: vec![] }.encode().into();
        dials_after(config, addr, vec![hs, Message::Extended { id: OUR_UT_PEX, payload }])
    }

    /// The addresses a core dials after a peer at `addr` sends an extension handshake whose
    /// `ipv6` is `ipv6` and `p` is 6881.
    fn dials_after_ipv6(config: CoreConfig, addr: &str, ipv6: &str) -> Vec<SocketAddr> {
        let hs = ExtHandshake { ipv6: ipv6.parse().ok(), port: Some(6881), ..Default::default() };
        dials_after(config, addr, vec![handshake(hs)])
    }

    #[test]
    fn a_peers_ipv6_address_from_its_handshake_is_dialled_within_the_pex_rules() {
        // BEP 10's `ipv6`: the peer also listens there, on its `p`.
        let dials = dials_after_ipv6(Net::config(0), "203.0.113.5:7000", "2001:db8::5");
        assert_eq!(dials, vec!["[2001:db8::5]:6881".parse().unwrap()]);
        // A stranger cannot point us at loopback or our LAN; a private torrent ignores it.
        assert!(dials_after_ipv6(Net::config(0), "203.0.113.5:7000", "::1").is_empty());
        assert!(dials_after_ipv6(Net::config(0), "203.0.113.5:7000", "fd00::1").is_empty());
        let private = CoreConfig { pex: false, ..Net::config(0) };
        assert!(dials_after_ipv6(private, "203.0.113.5:7000", "2001:db8::5").is_empty());
        // We tell peers our own IPv6 address when we know it.
        let mut net = Net::new(content(64 * 1024), 16 * 1024);
        let ours: std::net::Ipv6Addr = "2001:db8::77".parse().unwrap();
        let l = net.add(false, CoreConfig { our_ipv6: Some(ours), ..Net::config(0) });
        let core = &mut net.nodes[l].core;
        core.handle(
            net.now,
            Input::Connected {
                peer: PeerKey(3),
                addr: "203.0.113.5:7000".parse().unwrap(),
                id: PeerId([9; 20]),
                fast: true,
                extensions: true,
                outgoing: true,
            },
        );
        let told = std::iter::from_fn(|| core.poll()).find_map(|o| match o {
            Output::Send(_, Message::Extended { id: 0, payload }) => {
                ExtHandshake::decode(&payload).ok()?.ipv6
            }
            _ => None,
        });
        assert_eq!(told, Some(ours));
    }

    #[test]
    fn a_stranger_cannot_make_us_probe_our_lan_and_a_private_torrent_ignores_pex() {
        let list = ["192.168.1.1:80", "[::ffff:127.0.0.1]:22", "198.51.100.7:6881"];
        // From a public address: neither the LAN nor loopback (even IPv4-mapped) is dialled.
        let dials = dials_after_pex(Net::config(0), "203.0.113.5:6881", &list);
        assert_eq!(dials, vec!["198.51.100.7:6881".parse().unwrap()]);
        // From a LAN peer, a LAN address is fair.
        let dials = dials_after_pex(Net::config(0), "192.168.1.9:6881", &list);
        assert_eq!(dials.len(), 2, "{dials:?}");
        // A private torrent reads no PEX message, even one sent under our id.
        let private = CoreConfig { pex: false, ..Net::config(0) };
        assert!(dials_after_pex(private, "203.0.113.5:6881", &list).is_empty());
    }
}
