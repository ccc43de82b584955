//! The swarm simulator: a seeded discrete-event simulation of one torrent's swarm in which every
//! node is a [`TorrentCore`], the very type the tokio session runs, so what this measures is
//! what the network runs.
//!
//! Model:
//! - **Nodes**: node 0 is the seeder (upload `u_s`), nodes 1..=N the leechers (upload `u_i`,
//!   optional download cap). Each gets its own `ChaCha8Rng` derived from the seed and its index.
//!   A leecher arrives (all at t = 0 in a flash crowd, or by a Poisson process), announces to the
//!   simulated tracker, which returns up to `neighbors` random members (as the lab's tracker
//!   does), dials them, and stays as a seed after completing, unless it is one of the
//!   `leave_after_complete` share, which closes every connection and leaves at once.
//! - **Links: paced blocks, not fluid flows.** A node's upload is one link at its rate, served
//!   round robin over its connections with queued blocks, one block (a PIECE message) at a time;
//!   a block occupies the link for its bytes *on the wire* (16 KiB of payload plus the PIECE
//!   header and 66 bytes of Ethernet/IP/TCP headers per 1,448-byte segment, the overhead the
//!   lab's kernel shaper counts), then arrives after the pair's one-way latency. A download cap
//!   serializes arrivals the same way. Short control messages (requests, HAVEs, choke) do not
//!   wait behind blocks, as the lab's priority class for small packets lets them pass, and
//!   take only the latency. Blocks rather than fluid flows because the cores' decisions
//!   (pipelining, snubbing, endgame cancels, the choker's rates) are made block by block:
//!   a fluid model would have to invent when each block is complete.
//! - **Latency**: each pair of nodes has a one-way latency drawn from the seed in
//!   `[latency_min, latency_max]`, fixed for the run, so every link is FIFO like a TCP
//!   connection. A dial takes 1.5 round trips for the acceptor (TCP + handshake) and 2 for the
//!   dialer; a tracker answer one round trip.
//! - **Disk**: writes are free; a verification answers at once with the truth (the simulated
//!   data is never corrupt); the final sync is immediate.
//! - **Free riders** never unchoke anyone and never serve a block; what they get is what the
//!   others' chokers give them (optimistic unchokes, and the seeds' slots).
//! - **Magnet links** (`magnet`): a leecher starts with the info-hash alone, as `swarmcast get
//!   MAGNET` does: it announces (the tracker hands it out to others from then on), gives
//!   the answer to a [`MetadataCore`], the type `get` runs, and dials for the info dictionary
//!   (BEP 9), which every running [`TorrentCore`] serves; a dial to a node still fetching is
//!   refused, as a session with no torrent for that info-hash refuses it. When every address
//!   refused, the core asks for peers again and the leecher announces again, as `get` does. Once the dictionary's
//!   SHA-1 matches, the fetch's connections close and the leecher's `TorrentCore` starts and
//!   announces, as `get` does. A fetch that fails ends that leecher (as `get` exits).
//!
//! Measurements follow the lab's ([`crate::lab`]): completion of each leecher since its arrival,
//! the bound, utilization, and the start-up / middle / tail breakdown from a timeline of
//! cumulative uploads sampled every 200 ms of virtual time.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use torrent::metainfo::{auto_piece_size, single_file_info, Info, InfoHash};
use torrent::proto::choker::ChokerConfig;
use torrent::proto::ext::MAX_METADATA;
use torrent::proto::metadata::{
    Input as FetchInput, MetadataConfig, MetadataCore, Output as FetchOutput,
};
use torrent::proto::picker::PickerConfig;
use torrent::proto::torrent::{CoreConfig, Geometry, Input, Output, TorrentCore, TorrentEvent};
use torrent::proto::wire::Message;
use torrent::proto::{BlockRef, PeerKey};
use torrent::tracker::Event as AnnounceEvent;
use torrent::{Bitfield, PeerId};

use crate::bound::{Problem, ProblemError};
use crate::calendar::{Calendar, Timed};
use crate::lab::{report, Architecture, LabConfig, LabReport, Measured};

/// The port every simulated node listens on.
const PORT: u16 = 6881;
/// TCP payload per segment (1,500-byte MTU, timestamps on).
const SEGMENT_PAYLOAD: u64 = 1448;
/// Ethernet + IP + TCP headers per segment, as the lab's shaper counts them.
const SEGMENT_OVERHEAD: u64 = 66;
/// The tracker's announce interval (the lab's tracker runs with `--interval 3600`).
const TRACKER_INTERVAL: Duration = Duration::from_secs(3600);
/// Virtual time between two timeline samples.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// How leechers arrive.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrivals {
    /// All at t = 0.
    Flash,
    /// A Poisson process of this many arrivals per second.
    Poisson(f64),
}

/// One simulation's parameters.
#[derive(Clone, Debug, Serialize)]
pub struct SwarmConfig {
    pub file_size: u64,
    /// Piece size; `None`: what `swarmcast create` picks for the file size.
    pub piece_size: Option<u32>,
    pub server_upload: u64,
    /// Upload rate of each leecher (length N); 0 makes a free rider.
    pub peer_uploads: Vec<u64>,
    /// Download cap of every leecher.
    pub download_limit: Option<u64>,
    /// How many peers the tracker returns to each node.
    pub neighbors: u32,
    /// Regular unchoke slots of every node.
    pub upload_slots: usize,
    /// Regular unchoke slots of every node while it seeds (at least `upload_slots`).
    pub seed_slots: usize,
    /// Optimistic unchoke rotation.
    pub optimistic_interval: Duration,
    /// Regular rechoke interval.
    pub rechoke_interval: Duration,
    /// Share of leechers (chosen at random) that leave as soon as they complete.
    pub leave_after_complete: f64,
    pub arrivals: Arrivals,
    /// Rarest first (the default) or random piece choice throughout.
    pub rarest_first: bool,
    /// The seeder super-seeds (BEP 16) until every piece went out once.
    pub super_seed: bool,
    /// Leechers start from a magnet link: they fetch the info dictionary from peers first.
    pub magnet: bool,
    pub latency_min: Duration,
    pub latency_max: Duration,
    /// Caps count bytes on the wire, TCP/IP headers included (as the `--netns` lab's kernel
    /// shaper does); `false`: caps count block payload only (as the engine's own token bucket in
    /// the in-process lab does).
    pub wire_overhead: bool,
    pub seed: u64,
    /// Stop once this much virtual time has passed.
    pub time_limit: Duration,
    /// Stop once the simulation has run this long on the wall clock.
    pub wall_limit: Duration,
    /// Stop once the process's resident memory exceeds this many bytes (checked every 65,536
    /// events from `/proc/self/status`).
    pub memory_limit: Option<u64>,
}

impl SwarmConfig {
    /// N leechers of upload `u`, the lab's defaults for the rest.
    pub fn uniform(n: usize, file_size: u64, server_upload: u64, u: u64, seed: u64) -> Self {
        SwarmConfig {
            file_size,
            piece_size: None,
            server_upload,
            peer_uploads: vec![u; n],
            download_limit: None,
            neighbors: 30,
            upload_slots: 4,
            seed_slots: ChokerConfig::default().seed_slots,
            optimistic_interval: Duration::from_secs(30),
            rechoke_interval: Duration::from_secs(10),
            leave_after_complete: 0.0,
            arrivals: Arrivals::Flash,
            rarest_first: true,
            super_seed: false,
            magnet: false,
            latency_min: Duration::from_millis(20),
            latency_max: Duration::from_millis(80),
            wire_overhead: true,
            seed,
            time_limit: Duration::from_secs(24 * 3600),
            wall_limit: Duration::from_secs(3600),
            memory_limit: None,
        }
    }

    /// The bound problem these parameters describe.
    pub fn problem(&self) -> Problem {
        self.lab_config().problem()
    }

    /// The same swarm as the lab describes it (its report and bound are computed alike).
    fn lab_config(&self) -> LabConfig {
        LabConfig {
            architecture: Architecture::P2p,
            file_size: self.file_size,
            server_upload: self.server_upload,
            peer_uploads: self.peer_uploads.clone(),
            download_limit: self.download_limit,
            piece_size: Some(self.piece_length()),
            seed: self.seed,
            neighbors: self.neighbors,
            upload_slots: self.upload_slots,
            seed_slots: self.seed_slots,
            time_limit: self.time_limit,
        }
    }

    fn piece_length(&self) -> u32 {
        self.piece_size.unwrap_or_else(|| auto_piece_size(self.file_size))
    }
}

/// Why a simulation could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("{0}")]
    Parameters(String),
    #[error(transparent)]
    Problem(#[from] ProblemError),
    #[error(
        "the simulation stopped at its {what} limit ({limit}): {complete} of {n} leechers \
         complete, {progress:.1}% of all bytes delivered, {virtual_s:.1} s of virtual time, \
         {events} events"
    )]
    Limit {
        what: &'static str,
        limit: String,
        complete: usize,
        n: usize,
        progress: f64,
        virtual_s: f64,
        events: u64,
    },
    #[error(
        "{failed} of {n} leechers could not fetch the torrent's metadata (the last: {last}); \
         {complete} completed, {virtual_s:.1} s of virtual time"
    )]
    MetadataFailed { failed: usize, n: usize, complete: usize, last: String, virtual_s: f64 },
}

/// One class of leechers' completion times (seconds since arrival).
#[derive(Clone, Debug, Serialize)]
pub struct ClassStats {
    pub count: usize,
    pub mean_s: f64,
    pub median_s: f64,
    pub max_s: f64,
}

/// The result of one simulation (the JSON that `--json` writes): the lab's report (completion
/// times since the first arrival; `bytes_verified` is false, the simulated data has no bytes),
/// then what only the simulator measures.
#[derive(Clone, Debug, Serialize)]
pub struct SwarmReport {
    #[serde(flatten)]
    pub lab: LabReport,
    pub config: SwarmConfig,
    /// Leechers that upload (u > 0) and free riders (u = 0), completion since arrival.
    pub contributors: Option<ClassStats>,
    pub free_riders: Option<ClassStats>,
    /// Leechers that stayed after completing and those that left, completion since arrival.
    pub stayed: Option<ClassStats>,
    pub left: Option<ClassStats>,
    /// Magnet leechers: seconds from arrival until the info dictionary was fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_fetch: Option<ClassStats>,
    /// Magnet leechers whose first addresses all refused (every one still fetching), so that
    /// they asked the tracker again at least once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_asked_again: Option<usize>,
    /// Blocks that arrived for pieces already verified (endgame duplicates, late arrivals).
    pub wasted_blocks: u64,
    pub events: u64,
    /// Wall time of the run (not in the JSON, so the same seed gives the same file).
    #[serde(skip)]
    pub wall_s: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct At(u64);

impl At {
    fn from(d: Duration) -> At {
        At(d.as_nanos() as u64)
    }
    fn dur(self) -> Duration {
        Duration::from_nanos(self.0)
    }
    fn plus(self, d: Duration) -> At {
        At(self.0 + d.as_nanos() as u64)
    }
}

enum Ev {
    Arrive(u32),
    Timer(u32, u64),
    Deliver {
        to: u32,
        key: PeerKey,
        msg: Message,
    },
    TxDone(u32),
    Connected {
        node: u32,
        key: PeerKey,
        peer: u32,
        outgoing: bool,
    },
    /// A dial failed: the node, the address, whether its metadata fetch dialled it.
    ConnectFailed(u32, SocketAddr, bool),
    Closed(u32, PeerKey),
    Announced(u32, Vec<SocketAddr>),
    Core(u32, Input),
}

struct Queued {
    at: At,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    /// (time, sequence): ties pop in insertion order.
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}
impl Timed for Queued {
    fn at(&self) -> u64 {
        self.at.0
    }
}

/// One connection: `ends[s]` is (node, whether it is still open at that end).
struct Conn {
    ends: [u32; 2],
    open: bool,
    /// Blocks queued for sending at each end.
    queue: [VecDeque<BlockRef>; 2],
}

struct Node {
    core: Option<TorrentCore>,
    /// A magnet leecher's metadata fetch, until the dictionary arrives or the fetch fails.
    fetch: Option<MetadataCore>,
    /// Connections the fetch dialled (closed when it ends).
    fetch_conns: Vec<PeerKey>,
    /// A magnet leecher waits for a tracker answer: the first starts its fetch, later ones
    /// (asked for by the fetch) feed it.
    awaiting_peers: bool,
    /// When the fetch ended with the dictionary.
    fetched: Option<At>,
    /// How many times the fetch asked the tracker again.
    fetch_asks: u32,
    upload: u64,
    free_rider: bool,
    leaves: bool,
    arrived: Option<At>,
    completed: Option<At>,
    /// Armed timer: its time and generation.
    timer: Option<(At, u64)>,
    timer_gen: u64,
    /// Keys of connections with queued blocks, in round-robin order.
    ready: VecDeque<PeerKey>,
    /// The block on the uplink now.
    sending: Option<(PeerKey, BlockRef)>,
    /// When the downlink is free (download cap).
    down_free: At,
    uploaded_wire: u64,
    verified_bytes: u64,
}

/// Bytes a block of `len` payload bytes counts against a cap: on the wire (the PIECE header and
/// TCP/IP headers included), or its payload alone.
fn wire_bytes(len: u32, wire: bool) -> u64 {
    if !wire {
        return len as u64;
    }
    let payload = len as u64 + 13;
    payload + payload.div_ceil(SEGMENT_PAYLOAD) * SEGMENT_OVERHEAD
}

fn addr_of(node: u32) -> SocketAddr {
    let i = node + 1;
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8)), PORT)
}

fn node_of(addr: &SocketAddr) -> Option<u32> {
    match addr.ip() {
        IpAddr::V4(ip) if addr.port() == PORT => {
            let o = ip.octets();
            let i = ((o[1] as u32) << 16) | ((o[2] as u32) << 8) | o[3] as u32;
            (o[0] == 10 && i > 0).then(|| i - 1)
        }
        _ => None,
    }
}

/// splitmix64: a pair's latency from the seed, without storing N² numbers.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Sim {
    config: SwarmConfig,
    base: Instant,
    now: At,
    seq: u64,
    queue: Calendar<Queued>,
    nodes: Vec<Node>,
    conns: Vec<Conn>,
    /// Members the tracker knows, and each node's index in it.
    members: Vec<u32>,
    member_at: Vec<Option<usize>>,
    rng: ChaCha8Rng,
    zeros: Bytes,
    events: u64,
    wasted_blocks: u64,
    delivered: u64,
    timeline: Vec<(f64, u64, u64)>,
    next_sample: At,
    tail_from: Option<f64>,
    complete: usize,
    first_arrival: Option<At>,
    /// The info dictionary every `TorrentCore` serves, and its SHA-1.
    info: Bytes,
    info_hash: InfoHash,
    /// Magnet leechers whose fetch failed, and the last reason.
    fetch_failed: usize,
    fetch_error: String,
}

/// Runs one simulation; `on_progress(virtual seconds, leechers complete, fraction delivered)`
/// is called every 10 s of virtual time.
pub fn run(
    config: &SwarmConfig,
    mut on_progress: impl FnMut(f64, usize, f64),
) -> Result<SwarmReport, SwarmError> {
    let n = config.peer_uploads.len();
    validate(config)?;
    config.problem().validate()?;
    let bound = config.problem().p2p();
    let wall = Instant::now();
    let piece_length = config.piece_length();
    // The info dictionary: the piece hashes are never checked (verification answers the truth),
    // so they are zeros; what matters is its size and that its SHA-1 is the info-hash.
    let hashes = vec![0u8; config.file_size.div_ceil(piece_length as u64) as usize * 20];
    let info = single_file_info("swarm.bin", config.file_size, piece_length, &hashes)
        .map_err(|e| SwarmError::Parameters(e.to_string()))?;
    if config.magnet && info.len() > MAX_METADATA as usize {
        return Err(SwarmError::Parameters(format!(
            "the info dictionary would be {} bytes, over the {MAX_METADATA} bytes metadata \
             exchange allows: use a larger --piece-size",
            info.len()
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut sim = Sim {
        config: config.clone(),
        base: Instant::now(),
        now: At(0),
        seq: 0,
        queue: Calendar::new(),
        nodes: Vec::with_capacity(n + 1),
        conns: Vec::new(),
        members: Vec::new(),
        member_at: vec![None; n + 1],
        rng: ChaCha8Rng::seed_from_u64(rng.random()),
        zeros: Bytes::from(vec![0u8; 128 * 1024]),
        events: 0,
        wasted_blocks: 0,
        delivered: 0,
        timeline: vec![(0.0, 0, 0)],
        next_sample: At::from(SAMPLE_EVERY),
        tail_from: None,
        complete: 0,
        first_arrival: None,
        info_hash: InfoHash::of(&info),
        info: Bytes::from(info),
        fetch_failed: 0,
        fetch_error: String::new(),
    };
    // Who leaves: a random share of the leechers.
    let leaving = (config.leave_after_complete * n as f64).round() as usize;
    let mut order: Vec<usize> = (1..=n).collect();
    rand::seq::SliceRandom::shuffle(&mut order[..], &mut rng);
    let leavers: std::collections::BTreeSet<usize> = order.into_iter().take(leaving).collect();
    for i in 0..=n {
        let upload = if i == 0 { config.server_upload } else { config.peer_uploads[i - 1] };
        sim.nodes.push(Node {
            core: None,
            fetch: None,
            fetch_conns: Vec::new(),
            awaiting_peers: false,
            fetched: None,
            fetch_asks: 0,
            upload,
            free_rider: upload == 0,
            leaves: leavers.contains(&i),
            arrived: None,
            completed: None,
            timer: None,
            timer_gen: 0,
            ready: VecDeque::new(),
            sending: None,
            down_free: At(0),
            uploaded_wire: 0,
            verified_bytes: 0,
        });
    }
    // The seeder is there first; leechers arrive.
    sim.start_node(0, piece_length, true);
    let mut t = At(0);
    for i in 1..=n as u32 {
        if let Arrivals::Poisson(rate) = config.arrivals {
            let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            t = t.plus(Duration::from_secs_f64(-u.ln() / rate));
        }
        sim.push(t, Ev::Arrive(i));
    }
    let mut next_progress = At::from(Duration::from_secs(10));
    while let Some(q) = sim.queue.pop_until(u64::MAX) {
        sim.now = q.at;
        sim.events += 1;
        sim.sample();
        if sim.now >= next_progress {
            next_progress = sim.now.plus(Duration::from_secs(10));
            on_progress(sim.now.dur().as_secs_f64(), sim.complete, sim.progress());
        }
        match q.ev {
            Ev::Arrive(i) => {
                sim.first_arrival.get_or_insert(sim.now);
                if config.magnet {
                    // The one announce of `get MAGNET`; its answer starts the fetch.
                    let node = &mut sim.nodes[i as usize];
                    node.arrived = Some(sim.now);
                    node.awaiting_peers = true;
                    sim.announce(i, AnnounceEvent::None);
                } else {
                    sim.start_node(i, piece_length, false);
                }
            }
            Ev::Timer(i, gen) => {
                if sim.nodes[i as usize].timer.is_some_and(|(_, g)| g == gen) {
                    sim.nodes[i as usize].timer = None;
                    if sim.nodes[i as usize].fetch.is_some() {
                        sim.fetch_input(i, FetchInput::Timeout);
                    } else {
                        sim.input(i, Input::Timeout);
                    }
                }
            }
            Ev::Deliver { to, key, msg } => {
                if !sim.conn_open(key) {
                    continue;
                }
                if sim.nodes[to as usize].core.is_some() {
                    if let Message::Piece { .. } = &msg {
                        sim.note_block(to, &msg);
                    }
                    sim.input(to, Input::Message(key, msg));
                } else if sim.nodes[to as usize].fetch.is_some() {
                    sim.fetch_input(to, FetchInput::Message(key, msg));
                }
            }
            Ev::TxDone(i) => sim.tx_done(i),
            Ev::Connected { node, key, peer, outgoing } => {
                if !sim.conn_open(key) {
                    continue;
                }
                if sim.nodes[node as usize].fetch.is_some() {
                    let input = FetchInput::Connected {
                        peer: key,
                        addr: addr_of(peer),
                        fast: true,
                        extensions: true,
                    };
                    sim.fetch_input(node, input);
                    continue;
                }
                if sim.nodes[node as usize].core.is_none() {
                    continue;
                }
                let id = peer_id(config.seed, peer);
                let input = Input::Connected {
                    peer: key,
                    addr: addr_of(peer),
                    id,
                    fast: true,
                    extensions: true,
                    outgoing,
                };
                sim.input(node, input);
            }
            Ev::ConnectFailed(i, addr, by_fetch) => {
                if by_fetch {
                    let why = "connection refused".to_string();
                    sim.fetch_input(i, FetchInput::ConnectFailed(addr, why));
                } else {
                    sim.input(i, Input::ConnectFailed(addr));
                }
            }
            Ev::Closed(i, key) => {
                if sim.nodes[i as usize].fetch.is_some() {
                    sim.fetch_input(i, FetchInput::Closed(key, "closed by the peer".into()));
                } else if sim.nodes[i as usize].core.is_some() {
                    sim.input(i, Input::Closed(key, "closed by the peer".into()));
                }
            }
            Ev::Announced(i, peers) => {
                if sim.nodes[i as usize].core.is_some() {
                    sim.input(i, Input::Announced { interval: TRACKER_INTERVAL, peers });
                } else if std::mem::take(&mut sim.nodes[i as usize].awaiting_peers) {
                    if sim.nodes[i as usize].fetch.is_some() {
                        sim.fetch_input(i, FetchInput::Peers(peers));
                    } else {
                        sim.start_fetch(i, peers);
                    }
                }
            }
            Ev::Core(i, input) => {
                if sim.nodes[i as usize].core.is_some() {
                    sim.input(i, input);
                }
            }
        }
        if sim.complete + sim.fetch_failed == n {
            break;
        }
        let limit = |what: &'static str, limit: String, sim: &Sim| SwarmError::Limit {
            what,
            limit,
            complete: sim.complete,
            n,
            progress: sim.progress() * 100.0,
            virtual_s: sim.now.dur().as_secs_f64(),
            events: sim.events,
        };
        if sim.now.dur() > config.time_limit {
            let l = format!("{:.0} s of virtual time", config.time_limit.as_secs_f64());
            return Err(limit("virtual-time", l, &sim));
        }
        if sim.events.is_multiple_of(65_536) {
            if wall.elapsed() > config.wall_limit {
                let l = format!("{:.0} s of wall time", config.wall_limit.as_secs_f64());
                return Err(limit("wall-time", l, &sim));
            }
            if let (Some(max), Some(rss)) = (config.memory_limit, resident_bytes()) {
                if rss > max {
                    let l = format!("{} MiB of memory, {} MiB in use", max >> 20, rss >> 20);
                    return Err(limit("memory", l, &sim));
                }
            }
        }
    }
    if sim.fetch_failed > 0 {
        return Err(SwarmError::MetadataFailed {
            failed: sim.fetch_failed,
            n,
            complete: sim.complete,
            last: sim.fetch_error,
            virtual_s: sim.now.dur().as_secs_f64(),
        });
    }
    if sim.complete < n {
        return Err(SwarmError::Parameters(format!(
            "the swarm stalled: {} of {n} leechers complete and nothing left to happen",
            sim.complete
        )));
    }
    let end = sim.now.dur().as_secs_f64();
    let (seeder_up, peers_up) = sim.uploads();
    sim.timeline.push((end, seeder_up, peers_up));
    Ok(sim.report(bound, wall.elapsed().as_secs_f64()))
}

fn validate(config: &SwarmConfig) -> Result<(), SwarmError> {
    let bad = |m: String| Err(SwarmError::Parameters(m));
    let n = config.peer_uploads.len();
    if n == 0 {
        return bad("--peers must be at least 1".into());
    }
    if n > 1_000_000 {
        return bad(format!("--peers {n}: the simulator takes at most 1,000,000 peers"));
    }
    if config.file_size == 0 {
        return bad("--file-size must be more than 0".into());
    }
    if config.server_upload == 0 {
        return bad("--server-upload must be more than 0: no one could get the first copy".into());
    }
    if let Some(p) = config.piece_size {
        if p < 16 * 1024 || !p.is_power_of_two() {
            return bad(format!("--piece-size {p}: a power of two of at least 16 KiB"));
        }
    }
    let pieces = config.file_size.div_ceil(config.piece_length() as u64);
    if pieces > 1 << 20 {
        return bad(format!("{pieces} pieces: at most 1,048,576 (pick a larger --piece-size)"));
    }
    if config.neighbors == 0 {
        return bad("--neighbors must be at least 1".into());
    }
    if !(0.0..=1.0).contains(&config.leave_after_complete) {
        return bad("--leave-after-complete is a fraction in [0, 1]".into());
    }
    if let Arrivals::Poisson(r) = config.arrivals {
        if !(r.is_finite() && r > 0.0) {
            return bad("--arrivals poisson:RATE needs a rate above 0 (arrivals per second)".into());
        }
    }
    if config.latency_min > config.latency_max {
        return bad("the latency range is empty (min above max)".into());
    }
    if config.download_limit == Some(0) {
        return bad("--peer-download must be more than 0".into());
    }
    Ok(())
}

/// The process's resident memory (`VmRSS`), if `/proc` tells.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn peer_id(seed: u64, node: u32) -> PeerId {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed ^ mix(node as u64 + 1)));
    PeerId::generate(&mut rng)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn class(times: Vec<f64>) -> Option<ClassStats> {
    if times.is_empty() {
        return None;
    }
    let mut v = times;
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let max = v.iter().cloned().fold(0.0, f64::max);
    Some(ClassStats { count: v.len(), mean_s: mean, median_s: median(&mut v), max_s: max })
}

impl Sim {
    fn push(&mut self, at: At, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued { at, seq: self.seq, ev });
    }

    fn instant(&self) -> Instant {
        self.base + self.now.dur()
    }

    fn latency(&self, a: u32, b: u32) -> Duration {
        let (lo, hi) = (self.config.latency_min, self.config.latency_max);
        let span = (hi - lo).as_nanos() as u64;
        let (x, y) = (a.min(b) as u64, a.max(b) as u64);
        let r = mix(self.config.seed ^ mix((x << 32) | y));
        lo + Duration::from_nanos(if span == 0 { 0 } else { r % (span + 1) })
    }

    fn conn_open(&self, key: PeerKey) -> bool {
        self.conns[(key.0 / 2) as usize].open
    }

    /// The other end of a connection: (node, its key).
    fn other(&self, key: PeerKey) -> (u32, PeerKey) {
        let c = &self.conns[(key.0 / 2) as usize];
        let side = (key.0 % 2) as usize;
        (c.ends[1 - side], PeerKey(key.0 ^ 1))
    }

    fn progress(&self) -> f64 {
        let n = self.nodes.len() - 1;
        self.delivered as f64 / (n as f64 * self.config.file_size as f64)
    }

    fn uploads(&self) -> (u64, u64) {
        let seeder = self.nodes[0].uploaded_wire;
        let peers = self.nodes[1..].iter().map(|n| n.uploaded_wire).sum();
        (seeder, peers)
    }

    fn sample(&mut self) {
        while self.now >= self.next_sample {
            let t = self.next_sample.dur().as_secs_f64();
            let (s, p) = self.uploads();
            self.timeline.push((t, s, p));
            self.next_sample = self.next_sample.plus(SAMPLE_EVERY);
        }
    }

    fn start_node(&mut self, i: u32, piece_length: u32, seeder: bool) {
        let cfg = &self.config;
        let n = self.nodes.len() - 1;
        let pieces = cfg.file_size.div_ceil(piece_length as u64) as u32;
        let have = if seeder { Bitfield::full(pieces) } else { Bitfield::new(pieces) };
        let picker = PickerConfig {
            random_first: if cfg.rarest_first {
                PickerConfig::default().random_first
            } else {
                u32::MAX
            },
            ..PickerConfig::default()
        };
        let core_config = CoreConfig {
            // As the lab: room for every node in small swarms, twice the neighbors in large.
            max_peers: (cfg.neighbors as usize * 2).max((n + 1).min(200)),
            seed_when_done: true,
            choker: ChokerConfig {
                upload_slots: cfg.upload_slots,
                seed_slots: cfg.seed_slots,
                rechoke_interval: cfg.rechoke_interval,
                optimistic_interval: cfg.optimistic_interval,
                ..ChokerConfig::default()
            },
            picker,
            announce: true,
            our_port: PORT,
            our_id: peer_id(cfg.seed, i),
            super_seed: cfg.super_seed,
            // The published `sim swarm` figures were measured with peers from the tracker only.
            pex: false,
            our_ipv6: None,
        };
        let geometry =
            Geometry { piece_length, total_length: cfg.file_size, metadata: self.info.clone() };
        let rng = ChaCha8Rng::seed_from_u64(mix(cfg.seed.wrapping_add(1) ^ mix(i as u64)));
        let core = TorrentCore::new(geometry, have, core_config, rng, self.instant());
        let node = &mut self.nodes[i as usize];
        node.core = Some(core);
        node.arrived.get_or_insert(self.now);
        self.drain(i);
    }

    /// A magnet leecher's fetch starts with the tracker's answer.
    fn start_fetch(&mut self, i: u32, peers: Vec<SocketAddr>) {
        let core =
            MetadataCore::new(self.info_hash, peers, MetadataConfig::default(), self.instant());
        self.nodes[i as usize].fetch = Some(core);
        self.drain_fetch(i);
    }

    fn fetch_input(&mut self, i: u32, input: FetchInput) {
        let now = self.instant();
        let Some(fetch) = self.nodes[i as usize].fetch.as_mut() else {
            return;
        };
        fetch.handle(now, input);
        self.drain_fetch(i);
    }

    fn drain_fetch(&mut self, i: u32) {
        loop {
            let Some(out) = self.nodes[i as usize].fetch.as_mut().and_then(|f| f.poll()) else {
                break;
            };
            match out {
                FetchOutput::Send(key, msg) => self.send(i, key, msg),
                FetchOutput::Connect(addr) => self.dial(i, addr, true),
                FetchOutput::Disconnect(key, _) => self.close(key),
                FetchOutput::WantPeers => {
                    // `get` announces again.
                    self.nodes[i as usize].awaiting_peers = true;
                    self.nodes[i as usize].fetch_asks += 1;
                    self.announce(i, AnnounceEvent::None);
                }
                FetchOutput::Done(raw) => {
                    // What `get` does with the dictionary: parse it, then start the torrent.
                    self.end_fetch(i);
                    match Info::from_bytes(&raw) {
                        Ok(info) => {
                            self.nodes[i as usize].fetched = Some(self.now);
                            self.start_node(i, info.piece_length, false);
                        }
                        Err(e) => self.fail_fetch(i, format!("a bad dictionary: {e}")),
                    }
                    return;
                }
                FetchOutput::Failed { last, .. } => {
                    self.end_fetch(i);
                    self.fail_fetch(i, last);
                    return;
                }
            }
        }
        self.rearm(i);
    }

    /// Ends node `i`'s fetch: its connections close, its timer is off.
    fn end_fetch(&mut self, i: u32) {
        let node = &mut self.nodes[i as usize];
        node.fetch = None;
        node.timer = None;
        // A tracker answer still on its way finds nothing to start.
        node.awaiting_peers = false;
        for key in std::mem::take(&mut node.fetch_conns) {
            self.close(key);
        }
    }

    fn fail_fetch(&mut self, i: u32, why: String) {
        self.fetch_failed += 1;
        self.fetch_error = format!("leecher {i}: {why}");
        self.remove_member(i);
    }

    /// Hands `input` to node `i`'s core and carries out what it asks for.
    fn input(&mut self, i: u32, input: Input) {
        let now = self.instant();
        let Some(core) = self.nodes[i as usize].core.as_mut() else {
            return;
        };
        core.handle(now, input);
        self.drain(i);
    }

    fn drain(&mut self, i: u32) {
        loop {
            let Some(core) = self.nodes[i as usize].core.as_mut() else {
                return;
            };
            let Some(out) = core.poll() else {
                break;
            };
            self.carry_out(i, out);
        }
        self.rearm(i);
    }

    fn rearm(&mut self, i: u32) {
        let base = self.base;
        let node = &mut self.nodes[i as usize];
        let deadline = match (&node.core, &node.fetch) {
            (Some(core), _) => core.next_deadline(),
            (None, Some(fetch)) => fetch.next_deadline(),
            (None, None) => return,
        };
        let Some(deadline) = deadline else {
            node.timer = None;
            return;
        };
        let at = At::from(deadline.saturating_duration_since(base)).max(self.now);
        if node.timer.is_some_and(|(t, _)| t == at) {
            return;
        }
        node.timer_gen += 1;
        let gen = node.timer_gen;
        node.timer = Some((at, gen));
        self.push(at, Ev::Timer(i, gen));
    }

    fn send(&mut self, from: u32, key: PeerKey, msg: Message) {
        if !self.conn_open(key) {
            return;
        }
        let (to, their_key) = self.other(key);
        let at = self.now.plus(self.latency(from, to));
        self.push(at, Ev::Deliver { to, key: their_key, msg });
    }

    fn carry_out(&mut self, i: u32, out: Output) {
        match out {
            // A free rider never unchokes anyone (so no one waits for its blocks).
            Output::Send(_, Message::Unchoke) if self.nodes[i as usize].free_rider => {}
            Output::Send(key, msg) => self.send(i, key, msg),
            Output::Serve(key, b) => {
                if self.nodes[i as usize].free_rider || !self.conn_open(key) {
                    return;
                }
                let side = (key.0 % 2) as usize;
                let q = &mut self.conns[(key.0 / 2) as usize].queue[side];
                if q.contains(&b) {
                    return;
                }
                q.push_back(b);
                if q.len() == 1 {
                    self.nodes[i as usize].ready.push_back(key);
                }
                self.start_tx(i);
            }
            Output::CancelServe(key, b) => {
                let side = (key.0 % 2) as usize;
                self.conns[(key.0 / 2) as usize].queue[side].retain(|q| *q != b);
            }
            Output::DropServes { peer, reject } => {
                let side = (peer.0 % 2) as usize;
                let dropped: Vec<BlockRef> =
                    self.conns[(peer.0 / 2) as usize].queue[side].drain(..).collect();
                if reject {
                    for b in dropped {
                        let m = Message::RejectRequest {
                            piece: b.piece,
                            offset: b.offset,
                            length: b.length,
                        };
                        self.send(i, peer, m);
                    }
                }
            }
            Output::Disconnect(key, _) => self.close(key),
            Output::Connect(addr) => self.dial(i, addr, false),
            Output::Write { .. } => {}
            Output::Verify { piece, .. } => {
                let ok = Input::Verified { piece, ok: true, blocks: None };
                self.push(self.now, Ev::Core(i, ok));
            }
            Output::Sync => self.push(self.now, Ev::Core(i, Input::Synced)),
            Output::Announce { event, .. } => self.announce(i, event),
            Output::Event(TorrentEvent::PieceVerified(p)) => {
                let piece_length = self.config.piece_length() as u64;
                let size = (self.config.file_size - p as u64 * piece_length).min(piece_length);
                if i != 0 {
                    self.nodes[i as usize].verified_bytes += size;
                    self.delivered += size;
                    let n = self.nodes.len() - 1;
                    if self.tail_from.is_none()
                        && self.delivered as f64 >= 0.9 * n as f64 * self.config.file_size as f64
                    {
                        self.tail_from = Some(self.now.dur().as_secs_f64());
                    }
                }
            }
            Output::Event(TorrentEvent::Complete) => {
                if i == 0 || self.nodes[i as usize].completed.is_some() {
                    return;
                }
                self.nodes[i as usize].completed = Some(self.now);
                self.complete += 1;
                if self.nodes[i as usize].leaves {
                    self.leave(i);
                }
            }
            Output::Event(_) => {}
        }
    }

    /// Counts a block that is about to reach node `to` that its core will not use.
    fn note_block(&mut self, to: u32, msg: &Message) {
        if let (Message::Piece { piece, .. }, Some(core)) = (msg, &self.nodes[to as usize].core) {
            if core.have().has(*piece) {
                self.wasted_blocks += 1;
            }
        }
    }

    fn announce(&mut self, i: u32, event: AnnounceEvent) {
        if event == AnnounceEvent::Stopped {
            self.remove_member(i);
            return;
        }
        // The answer: up to `neighbors` random members other than the asker.
        let k = self.config.neighbors as usize;
        let others = self.members.len() - usize::from(self.member_at[i as usize].is_some());
        let mut peers = Vec::with_capacity(k.min(others));
        if others <= k {
            peers.extend(self.members.iter().filter(|&&m| m != i).map(|&m| addr_of(m)));
        } else {
            let picks = rand::seq::index::sample(&mut self.rng, self.members.len(), k + 1);
            for idx in picks {
                let m = self.members[idx];
                if m != i && peers.len() < k {
                    peers.push(addr_of(m));
                }
            }
        }
        if self.member_at[i as usize].is_none() {
            self.member_at[i as usize] = Some(self.members.len());
            self.members.push(i);
        }
        // The tracker sits beside the seeder.
        let rtt = self.latency(i, 0) * 2;
        self.push(self.now.plus(rtt), Ev::Announced(i, peers));
    }

    fn remove_member(&mut self, i: u32) {
        if let Some(at) = self.member_at[i as usize].take() {
            self.members.swap_remove(at);
            if let Some(&moved) = self.members.get(at) {
                self.member_at[moved as usize] = Some(at);
            }
        }
    }

    /// Node `from` dials `addr`, for its metadata fetch (`by_fetch`) or its torrent.
    fn dial(&mut self, from: u32, addr: SocketAddr, by_fetch: bool) {
        let rtt = |s: &Sim, to: u32| s.latency(from, to) * 2;
        let target = node_of(&addr).filter(|&t| {
            (t as usize) < self.nodes.len() && t != from && self.nodes[t as usize].core.is_some()
        });
        let Some(to) = target else {
            // Nobody there: the dial fails after a round trip (a reset) or so.
            let at = self.now.plus(Duration::from_millis(100));
            self.push(at, Ev::ConnectFailed(from, addr, by_fetch));
            return;
        };
        let id = self.conns.len() as u64;
        if by_fetch {
            self.nodes[from as usize].fetch_conns.push(PeerKey(id * 2));
        }
        self.conns.push(Conn {
            ends: [from, to],
            open: true,
            queue: [VecDeque::new(), VecDeque::new()],
        });
        let r = rtt(self, to);
        // The acceptor sees the handshake after 1.5 round trips, the dialer the answer after 2.
        let acceptor_at = self.now.plus(r + r / 2);
        self.push(
            acceptor_at,
            Ev::Connected { node: to, key: PeerKey(id * 2 + 1), peer: from, outgoing: false },
        );
        self.push(
            self.now.plus(r * 2),
            Ev::Connected { node: from, key: PeerKey(id * 2), peer: to, outgoing: true },
        );
    }

    /// Closes a connection at this end: the other end learns after the latency.
    fn close(&mut self, key: PeerKey) {
        let c = (key.0 / 2) as usize;
        if !self.conns[c].open {
            return;
        }
        self.conns[c].open = false;
        self.conns[c].queue = [VecDeque::new(), VecDeque::new()];
        let (to, their_key) = self.other(key);
        let from = self.conns[c].ends[(key.0 % 2) as usize];
        let at = self.now.plus(self.latency(from, to));
        self.push(at, Ev::Closed(to, their_key));
    }

    /// Node `i` leaves the swarm: every connection closes and the tracker forgets it.
    fn leave(&mut self, i: u32) {
        let Some(core) = self.nodes[i as usize].core.as_mut() else {
            return;
        };
        core.stop();
        let keys: Vec<PeerKey> = core.peer_keys().collect();
        for k in keys {
            self.close(k);
        }
        self.remove_member(i);
        let node = &mut self.nodes[i as usize];
        node.core = None;
        node.timer = None;
        node.ready.clear();
        node.sending = None;
    }

    /// Puts the next queued block on node `i`'s uplink, if the uplink is free.
    fn start_tx(&mut self, i: u32) {
        if self.nodes[i as usize].sending.is_some() || self.nodes[i as usize].upload == 0 {
            return;
        }
        while let Some(key) = self.nodes[i as usize].ready.pop_front() {
            let c = (key.0 / 2) as usize;
            let side = (key.0 % 2) as usize;
            if !self.conns[c].open {
                continue;
            }
            let Some(b) = self.conns[c].queue[side].pop_front() else {
                continue;
            };
            if !self.conns[c].queue[side].is_empty() {
                self.nodes[i as usize].ready.push_back(key);
            }
            let node = &mut self.nodes[i as usize];
            node.sending = Some((key, b));
            let secs = wire_bytes(b.length, self.config.wire_overhead) as f64 / node.upload as f64;
            let at = self.now.plus(Duration::from_secs_f64(secs));
            self.push(at, Ev::TxDone(i));
            return;
        }
    }

    fn tx_done(&mut self, i: u32) {
        let Some((key, b)) = self.nodes[i as usize].sending.take() else {
            return;
        };
        if self.conn_open(key) && self.nodes[i as usize].core.is_some() {
            self.nodes[i as usize].uploaded_wire += wire_bytes(b.length, self.config.wire_overhead);
            let (to, their_key) = self.other(key);
            let mut at = self.now.plus(self.latency(i, to));
            if let Some(d) = self.config.download_limit {
                let rx = &mut self.nodes[to as usize];
                let start = at.max(rx.down_free);
                at = start.plus(Duration::from_secs_f64(
                    wire_bytes(b.length, self.config.wire_overhead) as f64 / d as f64,
                ));
                rx.down_free = at;
            }
            let data = self.zeros.slice(0..b.length as usize);
            let msg = Message::Piece { piece: b.piece, offset: b.offset, data };
            self.push(at, Ev::Deliver { to, key: their_key, msg });
            self.input(i, Input::Uploaded(key, b.length as u64));
        }
        self.start_tx(i);
    }

    fn report(&self, bound: crate::bound::Bound, wall_s: f64) -> SwarmReport {
        let cfg = &self.config;
        let n = self.nodes.len() - 1;
        let first = self.first_arrival.unwrap_or(At(0));
        let secs = |from: At, to: At| (to.0 - from.0) as f64 / 1e9;
        // The lab's measurements: completion since the first arrival (all at 0 in a flash crowd).
        let done: Vec<Option<f64>> =
            self.nodes[1..].iter().map(|x| x.completed.map(|c| secs(first, c))).collect();
        let (seeder_up, peers_up) = self.uploads();
        let lab_config = cfg.lab_config();
        let measured = Measured {
            done: &done,
            uploads: self.nodes[1..].iter().map(|x| x.uploaded_wire).collect(),
            seeder_up,
            peers_up,
            timeline: &self.timeline,
            tail_from: self.tail_from,
            piece_size: cfg.piece_length(),
            pieces: cfg.file_size.div_ceil(cfg.piece_length() as u64) as u32,
            identical_copies: 0,
        };
        let lab = report(&lab_config, bound, measured);
        let end = lab.measured_s;
        // Per class: completion since each leecher's own arrival.
        let since_arrival = |x: &Node| match (x.arrived, x.completed) {
            (Some(a), Some(c)) => secs(a, c),
            _ => end,
        };
        let pick = |f: &dyn Fn(&Node) -> bool| -> Option<ClassStats> {
            class(self.nodes[1..].iter().filter(|x| f(x)).map(since_arrival).collect())
        };
        let free_riders = pick(&|x| x.free_rider);
        let churn = cfg.leave_after_complete > 0.0;
        let fetch_s = |x: &Node| Some(secs(x.arrived?, x.fetched?));
        let metadata_fetch = cfg
            .magnet
            .then(|| class(self.nodes[1..].iter().filter_map(fetch_s).collect()))
            .flatten();
        debug_assert_eq!(lab.n, n);
        SwarmReport {
            lab,
            config: cfg.clone(),
            contributors: if free_riders.is_some() { pick(&|x| !x.free_rider) } else { None },
            free_riders,
            stayed: if churn { pick(&|x| !x.leaves) } else { None },
            left: if churn { pick(&|x| x.leaves) } else { None },
            metadata_fetch,
            metadata_asked_again: cfg
                .magnet
                .then(|| self.nodes[1..].iter().filter(|x| x.fetch_asks > 0).count()),
            wasted_blocks: self.wasted_blocks,
            events: self.events,
            wall_s,
        }
    }
}
