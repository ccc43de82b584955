//! A BitTorrent tracker: HTTP (BEP 3, 23) and UDP (BEP 15) on the same port number.
//!
//! Layout:
//! - [`parse_announce_query`]: the pure parser of an HTTP announce's raw query string.
//! - [`Swarms`]: the peer table. It reads no clock (`now` is an argument) and draws peer
//!   subsets from the RNG it is given, so it is testable on its own.
//! - [`TrackerServer`]: the tokio driver; one task serves UDP datagrams and runs the HTTP side
//!   on the shared [`http_layer::HttpServer`] (its connection cap and timeouts, plus a 60 s
//!   connection lifetime); every connection lives in a `JoinSet` owned by
//!   [`TrackerServer::run`], so dropping or aborting `run` stops everything.
//!
//! Peer-table invariants:
//! - A peer is keyed by the address others should dial: the request's source IP (the `ip`
//!   parameter is ignored, so nobody can point a swarm at a third party) and the announced port.
//! - A peer not seen for `peer_ttl` is never handed out or counted: every call first deletes
//!   the expired peers, oldest first, from one queue ordered by last announce (each peer's
//!   deletion is paid once, by the announce that stored it), and a swarm goes with its last peer.
//! - Caps, each with its policy when full (a peer not remembered still gets its answer):
//!   `max_peers` peers in all (new peers are not remembered until others expire or stop);
//!   `max_peers_per_ip` peers per source address in all (same); `max_peers_per_ip_per_torrent`
//!   per address in one swarm (the address's least recently seen peer in that swarm is replaced,
//!   so a client that changed port is remembered at once); `max_peers_per_torrent` per swarm
//!   (not remembered); `max_torrents` swarms (the announce is refused). "Address" is the IPv4
//!   address or the IPv6 /64, since one host holds a whole /64. Loopback sources are exempt
//!   from the per-address caps unless `cap_loopback` is set: labs, demos and tests run many
//!   clients on 127.0.0.1, and no remote host can send from a loopback address.
//! - Cost: an announce is O(numwant + log P) for P stored peers, plus the deletions it pays
//!   for: seeders and leechers are counted as peers come and go, and the peers returned are a
//!   uniform sample of the swarm's (family's) slots, never a scan of the swarm.
//! - Memory: at most about [`BYTES_PER_PEER`] per stored peer and [`BYTES_PER_SWARM`] per swarm
//!   ([`Swarms::memory_estimate`] adds up the actual capacities). One address alone can hold at
//!   most `max_peers_per_ip` peers in as many swarms: with the defaults 1,024 × (600 B + 1 KiB)
//!   ≈ 1.6 MiB, however many announces it sends. Everyone together: at most 250,000 peers
//!   (≈ 150 MB) in at most 100,000 swarms (≈ 100 MB).

use std::collections::{BTreeMap, HashMap};
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bendy::encoding::{Encoder, SingleItemEncoder};
use bytes::Bytes;
use http_body_util::Full;
use http_layer::{HttpServer, RequestBody, ServerConfig};
use hyper::{header, Request, Response, StatusCode};
use percent_encoding::percent_decode;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use sha1::{Digest, Sha1};
use tokio::net::UdpSocket;

use super::udp::{self, UdpRequest};
use super::Event;
use crate::{InfoHash, PeerId};

/// Longest an HTTP connection (keep-alive included) stays open.
const HTTP_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// How long a UDP connection id is accepted: its minute and the next one.
const CONNECTION_ID_BUCKET: Duration = Duration::from_secs(60);

/// How the tracker behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackerConfig {
    /// The announce interval told to clients.
    pub interval: Duration,
    /// A peer not seen for this long is forgotten.
    pub peer_ttl: Duration,
    /// Most peers returned by one announce, whatever `numwant` asks.
    pub max_peers_returned: u32,
    /// Most torrents tracked at once; announces for new torrents beyond it are refused.
    pub max_torrents: usize,
    /// Most peers remembered per torrent.
    pub max_peers_per_torrent: usize,
    /// Most peers remembered in all.
    pub max_peers: usize,
    /// Most peers remembered from one address (IPv4 address or IPv6 /64) in all.
    pub max_peers_per_ip: usize,
    /// Most peers remembered from one address in one torrent (ports, i.e. clients behind one
    /// NAT); past it the address's least recently seen peer in that torrent is replaced.
    pub max_peers_per_ip_per_torrent: usize,
    /// Apply the per-address caps to loopback sources too.
    pub cap_loopback: bool,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        let interval = Duration::from_secs(60);
        TrackerConfig {
            interval,
            peer_ttl: 3 * interval,
            max_peers_returned: 50,
            max_torrents: 100_000,
            max_peers_per_torrent: 10_000,
            max_peers: 250_000,
            max_peers_per_ip: 1024,
            max_peers_per_ip_per_torrent: 8,
            cap_loopback: false,
        }
    }
}

/// An HTTP announce, as read from the query string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceQuery {
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    /// `None` if the client did not say (it then counts as a leecher).
    pub left: Option<u64>,
    pub event: Event,
    /// `None` if absent or negative: the tracker's default applies.
    pub num_want: Option<u32>,
    /// `compact=1` was given.
    pub compact: bool,
    /// `no_peer_id=1` was given (dictionary peers then omit `peer id`).
    pub no_peer_id: bool,
}

/// Why an announce query was refused; the text is sent back as the `failure reason`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("missing parameter {0}")]
    Missing(&'static str),
    #[error("invalid parameter {0}")]
    Invalid(&'static str),
}

/// Info-hashes one HTTP scrape may ask about (as many as a UDP scrape).
pub const MAX_HTTP_SCRAPE: usize = super::udp::MAX_SCRAPE_HASHES;

/// Parses the query of an HTTP scrape (BEP 48): one or more `info_hash` parameters, each 20
/// bytes percent-decoded, returned sorted without repeats; at most [`MAX_HTTP_SCRAPE`]. A
/// scrape of every torrent (no `info_hash`) is refused, as most public trackers do.
pub fn parse_scrape_query(query: &[u8]) -> Result<Vec<InfoHash>, QueryError> {
    let mut hashes = Vec::new();
    for pair in query.split(|&b| b == b'&') {
        let Some(value) = pair.strip_prefix(b"info_hash=") else { continue };
        let bytes: Vec<u8> = percent_decode(value).collect();
        let hash: [u8; 20] = bytes.try_into().map_err(|_| QueryError::Invalid("info_hash"))?;
        if hashes.len() == MAX_HTTP_SCRAPE {
            return Err(QueryError::Invalid("info_hash (too many)"));
        }
        hashes.push(InfoHash(hash));
    }
    if hashes.is_empty() {
        return Err(QueryError::Missing("info_hash"));
    }
    hashes.sort_by_key(|h| h.0);
    hashes.dedup();
    Ok(hashes)
}

/// The bencoded reply to an HTTP scrape (BEP 48): `files`, by info-hash, `complete`,
/// `downloaded` and `incomplete` (sorted by info-hash on the way out: canonical bencode).
pub fn encode_scrape_reply(stats: &[(InfoHash, SwarmStats)]) -> Vec<u8> {
    let mut e = Encoder::new();
    let result = e.emit_dict(|mut d| {
        d.emit_pair_with(b"files", |e| {
            e.emit_unsorted_dict(|d| {
                for (h, s) in stats {
                    d.emit_pair_with(&h.0, |e| {
                        e.emit_dict(|mut f| {
                            f.emit_pair(b"complete", s.complete)?;
                            f.emit_pair(b"downloaded", s.downloaded)?;
                            f.emit_pair(b"incomplete", s.incomplete)
                        })
                    })?;
                }
                Ok(())
            })
        })
    });
    result.and_then(|()| e.get_output()).expect("sorted keys always encode")
}

/// Parses the raw query string of an HTTP announce (`info_hash=%12%34...&port=6881&...`).
///
/// `info_hash` and `peer_id` are percent-decoded bytes and must be exactly 20 long; `port`
/// is required and non-zero; `uploaded`, `downloaded` default to 0. For a repeated parameter the
/// first occurrence counts. Unknown parameters (including `ip`) are ignored.
pub fn parse_announce_query(query: &[u8]) -> Result<AnnounceQuery, QueryError> {
    let mut info_hash = None;
    let mut peer_id = None;
    let mut port = None;
    let mut uploaded = None;
    let mut downloaded = None;
    let mut left = None;
    let mut event = None;
    let mut num_want = None;
    let mut compact = None;
    let mut no_peer_id = None;

    fn id20(value: &[u8], name: &'static str) -> Result<[u8; 20], QueryError> {
        let bytes: Vec<u8> = percent_decode(value).collect();
        bytes.try_into().map_err(|_| QueryError::Invalid(name))
    }
    fn number<T: std::str::FromStr>(value: &[u8], name: &'static str) -> Result<T, QueryError> {
        let text: Vec<u8> = percent_decode(value).collect();
        std::str::from_utf8(&text)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(QueryError::Invalid(name))
    }

    for pair in query.split(|&b| b == b'&') {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        match key {
            b"info_hash" if info_hash.is_none() => {
                info_hash = Some(InfoHash(id20(value, "info_hash")?))
            }
            b"peer_id" if peer_id.is_none() => peer_id = Some(PeerId(id20(value, "peer_id")?)),
            b"port" if port.is_none() => port = Some(number::<u16>(value, "port")?),
            b"uploaded" if uploaded.is_none() => uploaded = Some(number(value, "uploaded")?),
            b"downloaded" if downloaded.is_none() => {
                downloaded = Some(number(value, "downloaded")?)
            }
            b"left" if left.is_none() => left = Some(number(value, "left")?),
            b"event" if event.is_none() => {
                event = Some(match value {
                    b"started" => Event::Started,
                    b"completed" => Event::Completed,
                    b"stopped" => Event::Stopped,
                    b"" | b"empty" | b"paused" => Event::None,
                    _ => return Err(QueryError::Invalid("event")),
                })
            }
            b"numwant" | b"num_want" if num_want.is_none() => {
                let n: i64 = number(value, "numwant")?;
                num_want = Some(u32::try_from(n).ok());
            }
            b"compact" if compact.is_none() => compact = Some(value == b"1"),
            b"no_peer_id" if no_peer_id.is_none() => no_peer_id = Some(value == b"1"),
            _ => {}
        }
    }
    let port = port.ok_or(QueryError::Missing("port"))?;
    if port == 0 {
        return Err(QueryError::Invalid("port"));
    }
    Ok(AnnounceQuery {
        info_hash: info_hash.ok_or(QueryError::Missing("info_hash"))?,
        peer_id: peer_id.ok_or(QueryError::Missing("peer_id"))?,
        port,
        uploaded: uploaded.unwrap_or(0),
        downloaded: downloaded.unwrap_or(0),
        left,
        event: event.unwrap_or_default(),
        num_want: num_want.flatten(),
        compact: compact.unwrap_or(false),
        no_peer_id: no_peer_id.unwrap_or(false),
    })
}

/// One announce, as the peer table sees it (HTTP and UDP alike).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAnnounce {
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    /// Source IP of the request and the announced port.
    pub addr: SocketAddr,
    pub left: Option<u64>,
    pub event: Event,
    /// Already capped by the caller.
    pub num_want: u32,
}

/// The table's answer to an announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmReply {
    /// Other peers, a random subset in random order.
    pub peers: Vec<(SocketAddr, PeerId)>,
    /// Seeders in the swarm (the requester included).
    pub complete: u32,
    /// Leechers in the swarm (the requester included).
    pub incomplete: u32,
}

/// What [`Swarms::announce_compact`] answers: the peers as compact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactReply {
    /// IPv4 peers, 6 bytes each (address, port), a random subset in random order.
    pub v4: Vec<u8>,
    /// IPv6 peers, 18 bytes each.
    pub v6: Vec<u8>,
    pub complete: u32,
    pub incomplete: u32,
}

/// Scrape numbers of one torrent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwarmStats {
    pub complete: u32,
    /// Times a peer reported `completed`.
    pub downloaded: u32,
    pub incomplete: u32,
}

/// An announce the table refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("tracker is full: it tracks no more torrents")]
    TooManyTorrents,
}

/// Upper bound on the bytes one stored peer takes in [`Swarms`] (its slot, its index entry, its
/// place in the expiry queue and the per-address lists, with hash-map and B-tree slack).
pub const BYTES_PER_PEER: usize = 600;
/// Upper bound on the bytes one swarm takes beyond its peers (its map entry and the smallest
/// allocations of its tables).
pub const BYTES_PER_SWARM: usize = 1024;

/// Which peers an announce may be given: UDP answers in the request's address family only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerFamily {
    /// IPv4 and IPv6 peers (HTTP: `peers` and `peers6`).
    Any,
    /// IPv4 peers only.
    V4,
    /// IPv6 peers only.
    V6,
}

/// When a peer was last seen, unique (the sequence number breaks ties): its key in the
/// expiry queue.
type Seen = (Instant, u64);

#[derive(Debug)]
struct Slot {
    addr: SocketAddr,
    peer_id: PeerId,
    seeder: bool,
    seen: Seen,
}

/// One torrent's peers. Peers live in dense per-family vectors so that a uniform sample costs
/// O(numwant); `index` finds a peer's slot. Each family's addresses are also kept in compact
/// form (BEP 23 / BEP 15 bytes) in a vector parallel to its slots: a compact reply (every UDP
/// announce, most HTTP ones) samples those 6 or 18 bytes instead of 80-byte slots, so its
/// random reads stay in a table small enough for the CPU's cache (60 KB for 10,000 IPv4 peers
/// against 800 KB). Profile finding (perf, 64 UDP clients, a swarm of 10,000): collecting the
/// sampled slots was the tracker's largest user-space cost (10% of its CPU).
#[derive(Debug, Default)]
struct Swarm {
    v4: Vec<Slot>,
    v6: Vec<Slot>,
    v4_wire: Vec<[u8; 6]>,
    v6_wire: Vec<[u8; 18]>,
    index: HashMap<SocketAddr, usize>,
    /// Address bucket → its peers here (at most `max_peers_per_ip_per_torrent`).
    by_ip: HashMap<IpAddr, Vec<SocketAddr>>,
    seeders: u32,
    leechers: u32,
    downloaded: u32,
}

impl Swarm {
    fn len(&self) -> usize {
        self.index.len()
    }

    fn family(&mut self, addr: &SocketAddr) -> &mut Vec<Slot> {
        if addr.is_ipv4() {
            &mut self.v4
        } else {
            &mut self.v6
        }
    }

    fn slot(&self, addr: &SocketAddr) -> Option<&Slot> {
        let &i = self.index.get(addr)?;
        if addr.is_ipv4() {
            self.v4.get(i)
        } else {
            self.v6.get(i)
        }
    }

    fn slot_mut(&mut self, addr: &SocketAddr) -> Option<&mut Slot> {
        let i = *self.index.get(addr)?;
        self.family(addr).get_mut(i)
    }

    fn count(&mut self, seeder: bool, add: bool) {
        let n = if seeder { &mut self.seeders } else { &mut self.leechers };
        *n = if add { n.saturating_add(1) } else { n.saturating_sub(1) };
    }

    fn insert(&mut self, slot: Slot) {
        let addr = slot.addr;
        self.count(slot.seeder, true);
        self.by_ip.entry(ip_bucket(addr.ip())).or_default().push(addr);
        match addr {
            SocketAddr::V4(a) => self.v4_wire.push(wire_v4(&a)),
            SocketAddr::V6(a) => self.v6_wire.push(wire_v6(&a)),
        }
        let vec = self.family(&addr);
        vec.push(slot);
        let i = vec.len() - 1;
        self.index.insert(addr, i);
    }

    fn remove(&mut self, addr: &SocketAddr) -> Option<Slot> {
        let i = self.index.remove(addr)?;
        if addr.is_ipv4() {
            self.v4_wire.swap_remove(i);
            shrink_vec(&mut self.v4_wire);
        } else {
            self.v6_wire.swap_remove(i);
            shrink_vec(&mut self.v6_wire);
        }
        let vec = self.family(addr);
        let slot = vec.swap_remove(i);
        let moved = vec.get(i).map(|s| s.addr);
        // A swarm a flood left keeps no flood-sized tables (amortized O(1) per removal).
        if vec.capacity() > 4 * vec.len() + 16 {
            vec.shrink_to(2 * vec.len());
        }
        if let Some(moved) = moved {
            self.index.insert(moved, i);
        }
        shrink_map(&mut self.index);
        self.count(slot.seeder, false);
        let bucket = ip_bucket(addr.ip());
        if let Some(list) = self.by_ip.get_mut(&bucket) {
            list.retain(|a| a != addr);
            if list.is_empty() {
                self.by_ip.remove(&bucket);
            }
        }
        Some(slot)
    }

    /// Up to `n` peers of `family` other than `me`, drawn uniformly without replacement;
    /// `slots_read` is set to the number of slots looked at.
    fn sample(
        &self,
        rng: &mut StdRng,
        family: PeerFamily,
        me: &SocketAddr,
        n: usize,
        slots_read: &mut usize,
    ) -> Vec<(SocketAddr, PeerId)> {
        let (first, second): (&[Slot], &[Slot]) = match family {
            PeerFamily::Any => (&self.v4, &self.v6),
            PeerFamily::V4 => (&self.v4, &[]),
            PeerFamily::V6 => (&self.v6, &[]),
        };
        let len = first.len() + second.len();
        // One more than asked, in case the requester itself is drawn.
        let draws = (n + 1).min(len);
        *slots_read = draws;
        let mut peers: Vec<(SocketAddr, PeerId)> = distinct_indices(rng, len, draws)
            .into_iter()
            .map(|i| if i < first.len() { &first[i] } else { &second[i - first.len()] })
            .filter(|slot| slot.addr != *me)
            .map(|slot| (slot.addr, slot.peer_id))
            .take(n)
            .collect();
        peers.shuffle(rng);
        peers
    }

    /// Like [`Swarm::sample`], as compact bytes: IPv4 peers into `v4` (6 bytes each), IPv6
    /// peers into `v6` (18 bytes each), in random order.
    fn sample_compact(
        &self,
        rng: &mut StdRng,
        family: PeerFamily,
        me: &SocketAddr,
        n: usize,
        slots_read: &mut usize,
        (v4, v6): (&mut Vec<u8>, &mut Vec<u8>),
    ) {
        let (n4, n6) = match family {
            PeerFamily::Any => (self.v4_wire.len(), self.v6_wire.len()),
            PeerFamily::V4 => (self.v4_wire.len(), 0),
            PeerFamily::V6 => (0, self.v6_wire.len()),
        };
        let len = n4 + n6;
        let draws = (n + 1).min(len);
        *slots_read = draws;
        let mut picked = distinct_indices(rng, len, draws);
        picked.shuffle(rng);
        let (me4, me6) = match me {
            SocketAddr::V4(a) => (Some(wire_v4(a)), None),
            SocketAddr::V6(a) => (None, Some(wire_v6(a))),
        };
        let mut taken = 0;
        for i in picked {
            if taken == n {
                break;
            }
            // Indices below n4 are IPv4 peers (n4 is 0 when only IPv6 is asked for).
            if i < n4 {
                let w = &self.v4_wire[i];
                if me4.as_ref() != Some(w) {
                    v4.extend_from_slice(w);
                    taken += 1;
                }
            } else {
                let w = &self.v6_wire[i - n4];
                if me6.as_ref() != Some(w) {
                    v6.extend_from_slice(w);
                    taken += 1;
                }
            }
        }
    }

    /// Bytes allocated for this swarm's tables (capacities, not lengths).
    fn memory_estimate(&self) -> usize {
        let slots = (self.v4.capacity() + self.v6.capacity()) * size_of::<Slot>()
            + self.v4_wire.capacity() * 6
            + self.v6_wire.capacity() * 18;
        let index = hash_map_bytes(self.index.capacity(), size_of::<(SocketAddr, usize)>());
        let by_ip = hash_map_bytes(self.by_ip.capacity(), size_of::<(IpAddr, Vec<SocketAddr>)>())
            + self.by_ip.values().map(|v| v.capacity() * size_of::<SocketAddr>()).sum::<usize>();
        slots + index + by_ip
    }
}

/// `k` distinct indices below `len`, a uniformly random subset (in sorted order). For a few
/// out of many (an announce's 50 of a big swarm): draw with replacement, sort, drop repeats and
/// draw again for those, O(k log k); every subset of k is equally likely because the draws are
/// exchangeable. Profiled under 64 UDP clients, `rand::seq::index::sample` (Floyd's algorithm,
/// O(k^2) for small k) took 7% of the tracker's CPU. When k is over half of `len`, repeats would
/// be frequent, so `index::sample` it is.
fn distinct_indices(rng: &mut StdRng, len: usize, k: usize) -> Vec<usize> {
    if 2 * k > len {
        return rand::seq::index::sample(rng, len, k).into_vec();
    }
    let mut picked = Vec::with_capacity(k + k / 4 + 1);
    while picked.len() < k {
        while picked.len() < k {
            picked.push(rng.random_range(0..len));
        }
        picked.sort_unstable();
        picked.dedup();
    }
    picked
}

/// A peer's BEP 23 compact bytes: IPv4 address and port.
fn wire_v4(a: &std::net::SocketAddrV4) -> [u8; 6] {
    let mut w = [0u8; 6];
    w[..4].copy_from_slice(&a.ip().octets());
    w[4..].copy_from_slice(&a.port().to_be_bytes());
    w
}

/// A peer's BEP 7 compact bytes: IPv6 address and port.
fn wire_v6(a: &std::net::SocketAddrV6) -> [u8; 18] {
    let mut w = [0u8; 18];
    w[..16].copy_from_slice(&a.ip().octets());
    w[16..].copy_from_slice(&a.port().to_be_bytes());
    w
}

/// Gives back most of a vector's room once it is under a quarter full (as the slots do).
fn shrink_vec<T>(v: &mut Vec<T>) {
    if v.capacity() > 4 * v.len() + 16 {
        v.shrink_to(2 * v.len());
    }
}

/// Gives back most of a hash map's room once it is under a quarter full.
fn shrink_map<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 4 * map.len() + 16 {
        map.shrink_to(2 * map.len());
    }
}

/// Bytes a hash map with room for `capacity` entries of `entry` bytes allocates: buckets are
/// at most 8/7 of the capacity, each with one control byte.
fn hash_map_bytes(capacity: usize, entry: usize) -> usize {
    (capacity * 8).div_ceil(7) * (entry + 1)
}

/// The address a per-address cap counts: the IPv4 address, or the /64 of an IPv6 address.
fn ip_bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::from(octets)
        }
    }
}

/// The tracker's peer table. See the module docs for its invariants, caps and costs.
///
/// Getters: [`Swarms::torrent_count`], [`Swarms::peer_count`], [`Swarms::memory_estimate`],
/// [`Swarms::last_slots_read`];
/// mutators (each first deletes expired peers): [`Swarms::announce`], [`Swarms::stats`].
#[derive(Debug)]
pub struct Swarms {
    config: TrackerConfig,
    torrents: HashMap<InfoHash, Swarm>,
    /// Every stored peer by when it was last seen, oldest first.
    expiry: BTreeMap<Seen, (InfoHash, SocketAddr)>,
    /// Address bucket → peers stored from it, over all swarms.
    per_ip: HashMap<IpAddr, u32>,
    next_seq: u64,
    /// Peer slots the last announce read (its cost beyond the O(log P) index updates).
    last_slots_read: usize,
    rng: StdRng,
}

impl Swarms {
    /// An empty table drawing its random subsets from `rng`.
    pub fn new(config: TrackerConfig, rng: StdRng) -> Self {
        Swarms {
            config,
            torrents: HashMap::new(),
            expiry: BTreeMap::new(),
            per_ip: HashMap::new(),
            next_seq: 0,
            last_slots_read: 0,
            rng,
        }
    }

    /// How many torrents have at least one live peer (as of the last mutation).
    pub fn torrent_count(&self) -> usize {
        self.torrents.len()
    }

    /// How many peers are stored, over all torrents.
    pub fn peer_count(&self) -> usize {
        self.expiry.len()
    }

    /// Peer slots the last announce read to pick its peers (at most `num_want + 1`).
    pub fn last_slots_read(&self) -> usize {
        self.last_slots_read
    }

    /// Bytes the table has allocated, from its actual capacities (B-tree nodes counted at half
    /// occupancy, their worst case).
    pub fn memory_estimate(&self) -> usize {
        let torrents = hash_map_bytes(self.torrents.capacity(), size_of::<(InfoHash, Swarm)>())
            + self.torrents.values().map(Swarm::memory_estimate).sum::<usize>();
        let expiry = self.expiry.len() * 2 * size_of::<(Seen, (InfoHash, SocketAddr))>();
        let per_ip = hash_map_bytes(self.per_ip.capacity(), size_of::<(IpAddr, u32)>());
        size_of::<Swarms>() + torrents + expiry + per_ip
    }

    /// Records an announce and picks up to `a.num_want` other live peers of `family` (UDP
    /// answers in the request's address family).
    pub fn announce(
        &mut self,
        now: Instant,
        a: &PeerAnnounce,
        family: PeerFamily,
    ) -> Result<SwarmReply, Refusal> {
        let sample = self.record(now, a)?;
        let (complete, incomplete) = self.counts(&a.info_hash);
        let peers = match self.torrents.get(&a.info_hash) {
            Some(swarm) if sample => {
                let n = a.num_want as usize;
                swarm.sample(&mut self.rng, family, &a.addr, n, &mut self.last_slots_read)
            }
            _ => Vec::new(),
        };
        Ok(SwarmReply { peers, complete, incomplete })
    }

    /// [`Swarms::announce`] for a compact reply (BEP 23, BEP 7, BEP 15): the peers come as
    /// their compact bytes, sampled from the swarm's compact tables.
    pub fn announce_compact(
        &mut self,
        now: Instant,
        a: &PeerAnnounce,
        family: PeerFamily,
    ) -> Result<CompactReply, Refusal> {
        let sample = self.record(now, a)?;
        let (complete, incomplete) = self.counts(&a.info_hash);
        let mut reply = CompactReply { v4: Vec::new(), v6: Vec::new(), complete, incomplete };
        if let Some(swarm) = self.torrents.get(&a.info_hash).filter(|_| sample) {
            let n = a.num_want as usize;
            let out = (&mut reply.v4, &mut reply.v6);
            swarm.sample_compact(&mut self.rng, family, &a.addr, n, &mut self.last_slots_read, out);
        }
        Ok(reply)
    }

    /// Seeders and leechers of a torrent (0, 0 if unknown).
    fn counts(&self, info_hash: &InfoHash) -> (u32, u32) {
        self.torrents.get(info_hash).map_or((0, 0), |s| (s.seeders, s.leechers))
    }

    /// Applies an announce to the tables; true if it should be answered with peers (not a
    /// `stopped`).
    fn record(&mut self, now: Instant, a: &PeerAnnounce) -> Result<bool, Refusal> {
        self.expire(now);
        if a.event == Event::Stopped {
            self.remove_peer(&a.info_hash, &a.addr);
            return Ok(false);
        }
        if !self.torrents.contains_key(&a.info_hash)
            && self.torrents.len() >= self.config.max_torrents
        {
            tracing::warn!(info_hash = %a.info_hash, "torrent table full, refusing announce");
            return Err(Refusal::TooManyTorrents);
        }
        let seeder = a.left == Some(0) || a.event == Event::Completed;
        let stored = self.torrents.get(&a.info_hash).and_then(|s| s.slot(&a.addr));
        match stored {
            Some(slot) => {
                let was_seeder = slot.seeder;
                self.refresh(now, a, seeder, was_seeder);
            }
            None => self.store(now, a, seeder),
        }
        Ok(true)
    }

    /// Scrape numbers of one torrent (all zero if unknown).
    pub fn stats(&mut self, now: Instant, info_hash: &InfoHash) -> SwarmStats {
        self.expire(now);
        self.torrents.get(info_hash).map_or(SwarmStats::default(), |swarm| SwarmStats {
            complete: swarm.seeders,
            downloaded: swarm.downloaded,
            incomplete: swarm.leechers,
        })
    }

    /// A stored peer announced again: new id, role and last-seen time.
    fn refresh(&mut self, now: Instant, a: &PeerAnnounce, seeder: bool, was_seeder: bool) {
        let seen = self.next_seen(now);
        let Some(swarm) = self.torrents.get_mut(&a.info_hash) else { return };
        if seeder && !was_seeder && a.event == Event::Completed {
            swarm.downloaded = swarm.downloaded.saturating_add(1);
        }
        swarm.count(was_seeder, false);
        swarm.count(seeder, true);
        let Some(slot) = swarm.slot_mut(&a.addr) else { return };
        let old = std::mem::replace(&mut slot.seen, seen);
        slot.peer_id = a.peer_id;
        slot.seeder = seeder;
        self.expiry.remove(&old);
        self.expiry.insert(seen, (a.info_hash, a.addr));
    }

    /// A new peer: stored if the caps allow (see the module docs for each cap's policy).
    fn store(&mut self, now: Instant, a: &PeerAnnounce, seeder: bool) {
        let bucket = ip_bucket(a.addr.ip());
        let per_ip_caps = self.config.cap_loopback || !a.addr.ip().is_loopback();
        // At its cap in this swarm, an address replaces its own least recently seen peer.
        let own_oldest =
            self.torrents.get(&a.info_hash).filter(|_| per_ip_caps).and_then(|swarm| {
                let mine = swarm.by_ip.get(&bucket)?;
                if mine.len() < self.config.max_peers_per_ip_per_torrent {
                    return None;
                }
                mine.iter().copied().min_by_key(|addr| swarm.slot(addr).map(|s| s.seen))
            });
        if let Some(oldest) = own_oldest {
            self.remove_peer(&a.info_hash, &oldest);
        } else if per_ip_caps && self.config.max_peers_per_ip_per_torrent == 0 {
            return;
        }
        let swarm_len = self.torrents.get(&a.info_hash).map_or(0, Swarm::len);
        let from_ip = self.per_ip.get(&bucket).copied().unwrap_or(0) as usize;
        if self.expiry.len() >= self.config.max_peers
            || (per_ip_caps && from_ip >= self.config.max_peers_per_ip)
            || swarm_len >= self.config.max_peers_per_torrent
        {
            tracing::debug!(info_hash = %a.info_hash, addr = %a.addr, "peer caps full, not remembering peer");
            return;
        }
        let seen = self.next_seen(now);
        let swarm = self.torrents.entry(a.info_hash).or_default();
        if a.event == Event::Completed {
            swarm.downloaded = swarm.downloaded.saturating_add(1);
        }
        swarm.insert(Slot { addr: a.addr, peer_id: a.peer_id, seeder, seen });
        self.expiry.insert(seen, (a.info_hash, a.addr));
        *self.per_ip.entry(bucket).or_default() += 1;
    }

    /// Deletes one peer from its swarm and every index, and the swarm if it was the last.
    fn remove_peer(&mut self, info_hash: &InfoHash, addr: &SocketAddr) {
        let Some(swarm) = self.torrents.get_mut(info_hash) else { return };
        let Some(slot) = swarm.remove(addr) else { return };
        if swarm.len() == 0 {
            self.torrents.remove(info_hash);
            shrink_map(&mut self.torrents);
        }
        self.expiry.remove(&slot.seen);
        let bucket = ip_bucket(addr.ip());
        if let Some(n) = self.per_ip.get_mut(&bucket) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&bucket);
                shrink_map(&mut self.per_ip);
            }
        }
    }

    /// Deletes every peer not seen for `peer_ttl`, oldest first.
    fn expire(&mut self, now: Instant) {
        let ttl = self.config.peer_ttl;
        while let Some(oldest) = self.expiry.first_entry() {
            if now.saturating_duration_since(oldest.key().0) < ttl {
                break;
            }
            // Popped here, so the loop ends even if the peer were missing from its swarm.
            let (info_hash, addr) = oldest.remove();
            self.remove_peer(&info_hash, &addr);
        }
    }

    fn next_seen(&mut self, now: Instant) -> Seen {
        self.next_seq += 1;
        (now, self.next_seq)
    }
}

/// What the HTTP and UDP sides share.
struct Shared {
    config: TrackerConfig,
    swarms: Mutex<Swarms>,
    /// Keys the UDP connection ids, so only the address that asked can use one.
    secret: [u8; 16],
    /// Start of the connection-id time buckets.
    epoch: Instant,
}

impl Shared {
    fn announce(&self, a: &PeerAnnounce, family: PeerFamily) -> Result<SwarmReply, Refusal> {
        // A poisoned lock means another request panicked mid-update; the table is still
        // memory-safe and at worst slightly stale, so keep serving.
        let mut swarms = self.swarms.lock().unwrap_or_else(|e| e.into_inner());
        swarms.announce(Instant::now(), a, family)
    }

    fn announce_compact(
        &self,
        a: &PeerAnnounce,
        family: PeerFamily,
    ) -> Result<CompactReply, Refusal> {
        let mut swarms = self.swarms.lock().unwrap_or_else(|e| e.into_inner());
        swarms.announce_compact(Instant::now(), a, family)
    }

    fn num_want(&self, asked: Option<u32>) -> u32 {
        let max = self.config.max_peers_returned;
        asked.unwrap_or(max).min(max)
    }

    fn connection_id(&self, addr: SocketAddr, bucket: u64) -> u64 {
        let mut h = Sha1::new();
        h.update(self.secret);
        h.update(bucket.to_be_bytes());
        match addr.ip() {
            IpAddr::V4(ip) => h.update(ip.octets()),
            IpAddr::V6(ip) => h.update(ip.octets()),
        }
        h.update(addr.port().to_be_bytes());
        let digest = h.finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(id)
    }

    fn bucket(&self) -> u64 {
        self.epoch.elapsed().as_secs() / CONNECTION_ID_BUCKET.as_secs()
    }

    fn connection_id_valid(&self, addr: SocketAddr, id: u64) -> bool {
        let now = self.bucket();
        self.connection_id(addr, now) == id || (now > 0 && self.connection_id(addr, now - 1) == id)
    }

    fn interval_secs(&self) -> u32 {
        u32::try_from(self.config.interval.as_secs()).unwrap_or(u32::MAX).max(1)
    }
}

/// An HTTP and UDP tracker listening on one port number.
pub struct TrackerServer {
    http: HttpServer,
    udp: UdpSocket,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

impl TrackerServer {
    /// Binds TCP on `addr`, then UDP on the same IP and port (if `addr`'s port is 0, the port
    /// the TCP listener got).
    pub async fn bind(addr: SocketAddr, config: TrackerConfig) -> std::io::Result<TrackerServer> {
        use rand::{Rng, SeedableRng};
        // The shared HTTP layer's limits (connection cap, header, idle and body timeouts), and
        // a bounded lifetime: an announce needs one request, not a long keep-alive.
        let http_config = ServerConfig {
            connection_lifetime: Some(HTTP_CONNECTION_LIFETIME),
            ..ServerConfig::default()
        };
        let http = HttpServer::bind(addr, http_config).await?;
        let local_addr = http.local_addr()?;
        let udp = UdpSocket::bind(local_addr).await?;
        let mut rng = StdRng::from_os_rng();
        let secret = rng.random();
        tracing::info!(%local_addr, "tracker listening on TCP and UDP");
        Ok(TrackerServer {
            http,
            udp,
            local_addr,
            shared: Arc::new(Shared {
                swarms: Mutex::new(Swarms::new(config.clone(), rng)),
                config,
                secret,
                epoch: Instant::now(),
            }),
        })
    }

    /// The address both sockets are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until the future is dropped or its task aborted (which also stops every HTTP
    /// connection: they live in the HTTP layer's `JoinSet`, owned by this future).
    pub async fn run(self) -> std::io::Result<()> {
        let TrackerServer { http, udp, shared, .. } = self;
        let udp = Arc::new(udp);
        let mut udp_loops = tokio::task::JoinSet::new();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        for _ in 0..cores {
            let (udp, shared) = (udp.clone(), shared.clone());
            udp_loops.spawn(async move { serve_udp(&udp, &shared).await });
        }
        let handler = {
            let shared = shared.clone();
            move |req: Request<RequestBody>, peer: SocketAddr| {
                let response = handle_http(&shared, &req, peer);
                async move { response }
            }
        };
        tokio::select! {
            _ = udp_loops.join_next() => unreachable!("serve_udp never returns"),
            served = http.serve(handler) => served,
        }
    }
}

/// What an unknown path gets: what this server is and where to ask.
const NOT_FOUND: &[u8] =
    b"404 not found: this is a BitTorrent tracker; announce at /announce, scrape at /scrape\n";

fn handle_http<B>(shared: &Shared, req: &Request<B>, peer: SocketAddr) -> Response<Full<Bytes>> {
    if req.uri().path() == "/scrape" {
        let query = req.uri().query().unwrap_or("");
        let body = match parse_scrape_query(query.as_bytes()) {
            Err(e) => encode_failure(&e.to_string()),
            Ok(hashes) => {
                let mut swarms = shared.swarms.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let stats: Vec<_> = hashes.iter().map(|h| (*h, swarms.stats(now, h))).collect();
                encode_scrape_reply(&stats)
            }
        };
        return Response::builder()
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default();
    }
    if req.uri().path() != "/announce" {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from_static(NOT_FOUND)))
            .unwrap_or_default();
    }
    let query = req.uri().query().unwrap_or("");
    let body = match parse_announce_query(query.as_bytes()) {
        Err(e) => {
            tracing::debug!(%peer, error = %e, "bad announce");
            encode_failure(&e.to_string())
        }
        Ok(q) => {
            let announce = PeerAnnounce {
                info_hash: q.info_hash,
                peer_id: q.peer_id,
                addr: SocketAddr::new(peer.ip().to_canonical(), q.port),
                left: q.left,
                event: q.event,
                num_want: shared.num_want(q.num_want),
            };
            tracing::debug!(addr = %announce.addr, info_hash = %q.info_hash, event = ?q.event, "HTTP announce");
            let interval = shared.interval_secs();
            if q.compact {
                match shared.announce_compact(&announce, PeerFamily::Any) {
                    Ok(reply) => encode_http_compact_reply(&reply, interval),
                    Err(e) => encode_failure(&e.to_string()),
                }
            } else {
                match shared.announce(&announce, PeerFamily::Any) {
                    Ok(reply) => encode_http_reply(&reply, interval, q.no_peer_id),
                    Err(e) => encode_failure(&e.to_string()),
                }
            }
        }
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

/// The bencoded compact reply to an HTTP announce: `complete`, `incomplete`, `interval`,
/// `peers` (BEP 23) and, if any, `peers6` (BEP 7).
pub fn encode_http_compact_reply(reply: &CompactReply, interval: u32) -> Vec<u8> {
    let mut e = Encoder::new();
    let result = e.emit_dict(|mut d| {
        d.emit_pair(b"complete", reply.complete)?;
        d.emit_pair(b"incomplete", reply.incomplete)?;
        d.emit_pair(b"interval", interval)?;
        d.emit_pair_with(b"peers", |e| e.emit_bytes(&reply.v4))?;
        if !reply.v6.is_empty() {
            d.emit_pair_with(b"peers6", |e| e.emit_bytes(&reply.v6))?;
        }
        Ok(())
    });
    // Cannot fail: keys are emitted in sorted order and nothing is nested.
    result.and_then(|()| e.get_output()).expect("sorted keys always encode")
}

/// `d14:failure reason<len>:<reason>e`.
pub fn encode_failure(reason: &str) -> Vec<u8> {
    let mut e = Encoder::new();
    // Cannot fail: one key, emitted in order, nothing nested.
    e.emit_dict(|mut d| d.emit_pair(b"failure reason", reason))
        .and_then(|()| e.get_output())
        .expect("a one-key dictionary always encodes")
}

/// The bencoded non-compact reply to an HTTP announce: `complete`, `incomplete`, `interval` and
/// `peers` as a list of dictionaries (compact replies: [`encode_http_compact_reply`]).
pub fn encode_http_reply(reply: &SwarmReply, interval: u32, no_peer_id: bool) -> Vec<u8> {
    let mut e = Encoder::new();
    let result = e.emit_dict(|mut d| {
        d.emit_pair(b"complete", reply.complete)?;
        d.emit_pair(b"incomplete", reply.incomplete)?;
        d.emit_pair(b"interval", interval)?;
        d.emit_pair_with(b"peers", |e: SingleItemEncoder| {
            e.emit_list(|e| {
                for (addr, id) in &reply.peers {
                    e.emit_dict(|mut p| {
                        p.emit_pair(b"ip", addr.ip().to_string())?;
                        if !no_peer_id {
                            p.emit_pair_with(b"peer id", |e| e.emit_bytes(&id.0))?;
                        }
                        p.emit_pair(b"port", addr.port())
                    })?;
                }
                Ok(())
            })
        })?;
        Ok(())
    });
    // Cannot fail: keys are emitted in sorted order and nesting is three levels deep.
    result.and_then(|()| e.get_output()).expect("sorted keys and shallow nesting always encode")
}

/// Serves UDP datagrams forever; errors are logged, never fatal. Several of these loops share
/// the socket (one per core, see [`TrackerServer::run`]); each drains every datagram that is
/// ready before it waits again.
///
/// Profile finding (perf, 64 clients of `udp_announce_load`): with one loop awaiting each
/// datagram and each send, 17% of the CPU went to context switches and the tracker answered
/// 0.65x opentracker's announces.
async fn serve_udp(socket: &UdpSocket, shared: &Shared) {
    let mut buf = vec![0u8; udp::MAX_DATAGRAM];
    loop {
        if let Err(e) = socket.readable().await {
            tracing::debug!(error = %e, "UDP socket error");
            continue;
        }
        loop {
            let (n, from) = match socket.try_recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive error");
                    continue;
                }
            };
            let Some(reply) = handle_udp(shared, &buf[..n], from) else { continue };
            let sent = match socket.try_send_to(&reply, from) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    socket.send_to(&reply, from).await
                }
                other => other,
            };
            if let Err(e) = sent {
                tracing::debug!(%from, error = %e, "UDP send error");
            }
        }
    }
}

fn handle_udp(shared: &Shared, datagram: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
    let request = match udp::parse_request(datagram) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%from, error = %e, "unreadable UDP request");
            return None;
        }
    };
    match request {
        UdpRequest::Connect { transaction_id } => Some(udp::encode_connect_reply(
            transaction_id,
            shared.connection_id(from, shared.bucket()),
        )),
        UdpRequest::Announce { connection_id, transaction_id, .. }
        | UdpRequest::Scrape { connection_id, transaction_id, .. }
            if !shared.connection_id_valid(from, connection_id) =>
        {
            Some(udp::encode_error_reply(transaction_id, "invalid or expired connection id"))
        }
        UdpRequest::Announce {
            transaction_id,
            info_hash,
            peer_id,
            left,
            event,
            num_want,
            port,
            ..
        } => {
            if port == 0 {
                return Some(udp::encode_error_reply(transaction_id, "invalid port 0"));
            }
            let ip = from.ip().to_canonical();
            let announce = PeerAnnounce {
                info_hash,
                peer_id,
                addr: SocketAddr::new(ip, port),
                left: Some(left),
                event,
                num_want: shared.num_want(num_want),
            };
            tracing::debug!(addr = %announce.addr, %info_hash, ?event, "UDP announce");
            // The reply's peer format follows the family the request came over.
            let family = if ip.is_ipv6() { PeerFamily::V6 } else { PeerFamily::V4 };
            match shared.announce_compact(&announce, family) {
                Ok(reply) => Some(udp::encode_announce_reply_compact(
                    transaction_id,
                    shared.interval_secs(),
                    reply.incomplete,
                    reply.complete,
                    if family == PeerFamily::V6 { &reply.v6 } else { &reply.v4 },
                )),
                Err(e) => Some(udp::encode_error_reply(transaction_id, &e.to_string())),
            }
        }
        UdpRequest::Scrape { transaction_id, info_hashes, .. } => {
            let mut swarms = shared.swarms.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let stats: Vec<_> = info_hashes
                .iter()
                .map(|h| {
                    let s = swarms.stats(now, h);
                    (s.complete, s.downloaded, s.incomplete)
                })
                .collect();
            Some(udp::encode_scrape_reply(transaction_id, &stats))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn scrape_queries_are_checked_and_bounded() {
        let one = "%41".repeat(20);
        let q = format!("info_hash={one}&x=1&info_hash={}&info_hash={one}", "B".repeat(20));
        let got = parse_scrape_query(q.as_bytes()).unwrap();
        assert_eq!(got, vec![InfoHash([b'A'; 20]), InfoHash([b'B'; 20])], "sorted, no repeats");
        assert_eq!(parse_scrape_query(b"x=1"), Err(QueryError::Missing("info_hash")));
        assert_eq!(parse_scrape_query(b"info_hash=short"), Err(QueryError::Invalid("info_hash")));
        let many = vec![format!("info_hash={one}"); MAX_HTTP_SCRAPE + 1].join("&");
        assert!(parse_scrape_query(many.as_bytes()).is_err());
    }

    fn ann(id: u8, port: u16, left: Option<u64>, event: Event) -> PeerAnnounce {
        PeerAnnounce {
            info_hash: InfoHash([1; 20]),
            peer_id: PeerId([id; 20]),
            addr: SocketAddr::from(([10, 0, 0, id], port)),
            left,
            event,
            num_want: 50,
        }
    }

    fn swarms(config: TrackerConfig) -> Swarms {
        Swarms::new(config, StdRng::seed_from_u64(7))
    }

    #[test]
    fn distinct_indices_are_distinct_in_range_and_evenly_spread() {
        let mut rng = StdRng::seed_from_u64(3);
        for (len, k) in [(0, 0), (1, 1), (10, 0), (10, 4), (10, 6), (10, 10), (10_000, 51)] {
            let got = distinct_indices(&mut rng, len, k);
            assert_eq!(got.len(), k, "{len} {k}");
            let mut sorted = got.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), k, "repeats in {got:?}");
            assert!(got.iter().all(|&i| i < len));
        }
        // 4 of 40, 20,000 times: each index is expected 2,000 times.
        let mut seen = [0u32; 40];
        for _ in 0..20_000 {
            for i in distinct_indices(&mut rng, 40, 4) {
                seen[i] += 1;
            }
        }
        assert!(seen.iter().all(|&n| (1_800..=2_200).contains(&n)), "{seen:?}");
    }

    #[test]
    fn query_parses_binary_ids_and_defaults() {
        let q = parse_announce_query(
            b"info_hash=%00%01%02%03%04%05%06%07%08%09%0a%0B%0c%0d%0e%0f%10%11%12%13\
              &peer_id=-SC0100-abcdefghijkl&port=6881&left=5&event=started&compact=1\
              &ip=6.6.6.6&numwant=-1&port=9",
        )
        .unwrap();
        let mut hash = [0u8; 20];
        for (i, b) in hash.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(
            q,
            AnnounceQuery {
                info_hash: InfoHash(hash),
                peer_id: PeerId(*b"-SC0100-abcdefghijkl"),
                port: 6881,
                uploaded: 0,
                downloaded: 0,
                left: Some(5),
                event: Event::Started,
                num_want: None,
                compact: true,
                no_peer_id: false,
            }
        );
    }

    #[test]
    fn query_rejects_bad_input() {
        let ok_ids = "info_hash=aaaaaaaaaaaaaaaaaaaa&peer_id=bbbbbbbbbbbbbbbbbbbb";
        let cases: &[(&str, QueryError)] = &[
            ("", QueryError::Missing("port")),
            (ok_ids, QueryError::Missing("port")),
            (&format!("{ok_ids}&port=0"), QueryError::Invalid("port")),
            (&format!("{ok_ids}&port=70000"), QueryError::Invalid("port")),
            (&format!("{ok_ids}&port=1&left=-1"), QueryError::Invalid("left")),
            (&format!("{ok_ids}&port=1&event=bogus"), QueryError::Invalid("event")),
            ("info_hash=%00&peer_id=bbbbbbbbbbbbbbbbbbbb&port=1", QueryError::Invalid("info_hash")),
            ("peer_id=bbbbbbbbbbbbbbbbbbbb&port=1", QueryError::Missing("info_hash")),
            ("info_hash=aaaaaaaaaaaaaaaaaaaa&port=1&peer_id=%zz", QueryError::Invalid("peer_id")),
        ];
        for (query, expected) in cases {
            assert_eq!(parse_announce_query(query.as_bytes()).as_ref(), Err(expected), "{query}");
        }
        // Garbage bytes, stray separators: an error, not a panic.
        assert!(parse_announce_query(b"&&==&\xff\xfe=%%%&port=%").is_err());
    }

    #[test]
    fn announce_returns_others_and_counts() {
        let mut s = swarms(TrackerConfig::default());
        let t = Instant::now();
        let a = ann(1, 1000, Some(10), Event::Started);
        let b = ann(2, 2000, Some(0), Event::Started);
        let r = s.announce(t, &a, PeerFamily::Any).unwrap();
        assert_eq!((r.peers.len(), r.complete, r.incomplete), (0, 0, 1));
        let r = s.announce(t, &b, PeerFamily::Any).unwrap();
        assert_eq!(r.peers, vec![(a.addr, a.peer_id)]);
        assert_eq!((r.complete, r.incomplete), (1, 1));
        let r = s.announce(t, &ann(1, 1000, Some(0), Event::Completed), PeerFamily::Any).unwrap();
        assert_eq!(r.peers, vec![(b.addr, b.peer_id)]);
        assert_eq!((r.complete, r.incomplete), (2, 0));
        assert_eq!(
            s.stats(t, &a.info_hash),
            SwarmStats { complete: 2, downloaded: 1, incomplete: 0 }
        );
        let r = s.announce(t, &ann(2, 2000, Some(0), Event::Stopped), PeerFamily::Any).unwrap();
        assert_eq!((r.peers.len(), r.complete, r.incomplete), (0, 1, 0));
        let r = s.announce(t, &ann(1, 1000, Some(0), Event::Stopped), PeerFamily::Any).unwrap();
        assert_eq!((r.complete, r.incomplete), (0, 0));
        assert_eq!(s.torrent_count(), 0);
    }

    #[test]
    fn num_want_limits_and_filters() {
        let mut s = swarms(TrackerConfig::default());
        let t = Instant::now();
        for id in 1..=10 {
            s.announce(t, &ann(id, 1000, Some(1), Event::None), PeerFamily::Any).unwrap();
        }
        let mut q = ann(1, 1000, Some(1), Event::None);
        q.num_want = 3;
        let r = s.announce(t, &q, PeerFamily::Any).unwrap();
        assert_eq!(r.peers.len(), 3);
        assert!(r.peers.iter().all(|(a, _)| *a != q.addr));
        let mut v6 = ann(99, 1000, Some(1), Event::None);
        v6.addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 7000));
        s.announce(t, &v6, PeerFamily::Any).unwrap();
        let r = s.announce(t, &q, PeerFamily::V6).unwrap();
        assert_eq!(r.peers, vec![(v6.addr, v6.peer_id)], "UDP over IPv6 gets IPv6 peers only");
        let r = s.announce(t, &v6, PeerFamily::V4).unwrap();
        assert_eq!(r.peers.len(), 10, "and over IPv4, IPv4 peers only");
        assert!(r.peers.iter().all(|(a, _)| a.is_ipv4()));
        let r = s.announce(t, &v6, PeerFamily::Any).unwrap();
        assert_eq!(r.peers.len(), 10, "HTTP gets both (but never the requester)");
        // The same from the compact tables.
        let c = s.announce_compact(t, &q, PeerFamily::V6).unwrap();
        assert_eq!((compact_peers(&c), c.v4.len()), (vec![v6.addr], 0));
        let c = s.announce_compact(t, &v6, PeerFamily::V4).unwrap();
        assert_eq!((c.v4.len(), c.v6.len()), (60, 0));
        let c = s.announce_compact(t, &q, PeerFamily::Any).unwrap();
        let got = compact_peers(&c);
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|a| *a != q.addr));
        let c = s.announce_compact(t, &v6, PeerFamily::Any).unwrap();
        assert_eq!((c.v4.len(), c.v6.len()), (60, 0), "10 IPv4 peers, never the requester");
    }

    /// The peers of a compact reply, IPv4 then IPv6.
    fn compact_peers(c: &CompactReply) -> Vec<SocketAddr> {
        let mut all = super::super::parse_compact_peers(&c.v4, false).unwrap();
        all.extend(super::super::parse_compact_peers(&c.v6, true).unwrap());
        all
    }

    #[test]
    fn peers_expire_and_tables_are_capped() {
        let config = TrackerConfig {
            interval: Duration::from_secs(1000),
            peer_ttl: Duration::from_secs(10),
            max_peers_returned: 50,
            max_torrents: 1,
            max_peers_per_torrent: 2,
            ..TrackerConfig::default()
        };
        let mut s = swarms(config);
        let t = Instant::now();
        s.announce(t, &ann(1, 1, Some(1), Event::None), PeerFamily::Any).unwrap();
        s.announce(t, &ann(2, 1, Some(1), Event::None), PeerFamily::Any).unwrap();
        // A third peer is answered but not remembered.
        let r = s.announce(t, &ann(3, 1, Some(1), Event::None), PeerFamily::Any).unwrap();
        assert_eq!((r.peers.len(), r.incomplete), (2, 2));
        let mut other = ann(4, 1, Some(1), Event::None);
        other.info_hash = InfoHash([2; 20]);
        assert_eq!(s.announce(t, &other, PeerFamily::Any), Err(Refusal::TooManyTorrents));

        // Peer 2 fell silent: expired, so neither returned nor counted, though not yet swept.
        let later = t + Duration::from_secs(10);
        let r = s.announce(later, &ann(1, 1, Some(1), Event::None), PeerFamily::Any).unwrap();
        assert_eq!((r.peers.len(), r.complete, r.incomplete), (0, 0, 1));
        assert_eq!(s.torrent_count(), 1);

        // By the next sweep peer 1 has expired too: its swarm is dropped and a new torrent fits.
        let r = s.announce(t + Duration::from_secs(1000), &other, PeerFamily::Any).unwrap();
        assert_eq!((r.peers.len(), r.incomplete), (0, 1));
        assert_eq!(s.torrent_count(), 1);
    }

    /// `n` announces from 6.6.6.6 (or from the IPv6 /64 2001:db8::/64 when `v6`), each from a
    /// new port of that address, spread over `torrents` torrents.
    fn flood(s: &mut Swarms, t: Instant, n: u32, torrents: u32, v6: bool) {
        for i in 0..n {
            let mut hash = [0u8; 20];
            hash[..4].copy_from_slice(&(i % torrents).to_be_bytes());
            let ip: IpAddr = if v6 {
                std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, (i >> 16) as u16, i as u16)
                    .into()
            } else {
                [6, 6, 6, 6].into()
            };
            let a = PeerAnnounce {
                info_hash: InfoHash(hash),
                peer_id: PeerId([6; 20]),
                addr: SocketAddr::new(ip, 1 + (i % 65_000) as u16),
                left: Some(1),
                event: Event::Started,
                num_want: 50,
            };
            let _ = s.announce(t, &a, PeerFamily::Any);
        }
    }

    #[test]
    fn one_address_with_ten_thousand_ports_holds_eight_slots_of_a_swarm() {
        let mut s = swarms(TrackerConfig::default());
        let t = Instant::now();
        for id in 1..=10 {
            s.announce(t, &ann(id, 1000, Some(1), Event::Started), PeerFamily::Any).unwrap();
        }
        let mut attacker = ann(200, 1, Some(1), Event::Started);
        attacker.addr = SocketAddr::from(([6, 6, 6, 6], 1));
        for port in 1..=10_000 {
            attacker.addr.set_port(port);
            s.announce(t, &attacker, PeerFamily::Any).unwrap();
        }
        assert_eq!(s.peer_count(), 18, "10 peers and the attacker's 8 newest ports");
        let r = s.announce(t, &ann(1, 1000, Some(1), Event::None), PeerFamily::Any).unwrap();
        assert_eq!((r.incomplete, r.peers.len()), (18, 17));
        let theirs = r.peers.iter().filter(|(a, _)| a.ip() == attacker.addr.ip()).count();
        assert_eq!(theirs, 8);
        let ports: Vec<u16> = r
            .peers
            .iter()
            .filter(|(a, _)| a.ip() == attacker.addr.ip())
            .map(|(a, _)| a.port())
            .collect();
        assert!(ports.iter().all(|&p| p > 9_992), "the newest ports replaced the older: {ports:?}");
    }

    #[test]
    fn a_flood_from_one_address_stays_under_its_memory_bound() {
        let config = TrackerConfig::default();
        let per_ip = config.max_peers_per_ip;
        let bound = size_of::<Swarms>() + per_ip * (BYTES_PER_PEER + BYTES_PER_SWARM);
        let t = Instant::now();
        for v6 in [false, true] {
            // 50,000 announces: 40,000 ports on 8 torrents, then one new torrent each.
            let mut s = swarms(config.clone());
            flood(&mut s, t, 40_000, 8, v6);
            assert_eq!(s.peer_count(), 8 * config.max_peers_per_ip_per_torrent);
            flood(&mut s, t, 10_000, 10_000, v6);
            assert_eq!(s.peer_count(), per_ip, "one address holds at most {per_ip} peers");
            assert!(s.torrent_count() <= per_ip);
            let used = s.memory_estimate();
            eprintln!(
                "v6 {v6}: {} peers, {} torrents, {used} bytes (bound {bound})",
                s.peer_count(),
                s.torrent_count()
            );
            assert!(used <= bound, "{used} bytes > {bound}");
            // Everyone else still gets in.
            s.announce(t, &ann(1, 1000, Some(1), Event::Started), PeerFamily::Any).unwrap();
            assert_eq!(s.peer_count(), per_ip + 1);
            // Once the flood's peers expire, its room is given back.
            let after = t + config.peer_ttl;
            s.announce(after, &ann(1, 1000, Some(1), Event::None), PeerFamily::Any).unwrap();
            assert_eq!((s.peer_count(), s.torrent_count()), (1, 1));
            assert!(s.memory_estimate() < 8 * 1024, "{} bytes left", s.memory_estimate());
        }
    }

    #[test]
    fn the_global_cap_keeps_known_peers_and_frees_room_as_peers_expire() {
        let config = TrackerConfig { max_peers: 100, ..TrackerConfig::default() };
        let mut s = swarms(config.clone());
        let t = Instant::now();
        for id in 1..=150u8 {
            s.announce(t, &ann(id, 1000, Some(1), Event::Started), PeerFamily::Any).unwrap();
        }
        assert_eq!(s.peer_count(), 100);
        let r = s.announce(t, &ann(120, 1000, Some(1), Event::None), PeerFamily::Any).unwrap();
        assert_eq!((r.incomplete, r.peers.len()), (100, 50), "peer 120 is answered, not stored");
        // Peers 1..=99 fall silent; peer 100 keeps announcing, and newcomers fit again.
        let later = t + config.peer_ttl - Duration::from_secs(1);
        s.announce(later, &ann(100, 1000, Some(1), Event::None), PeerFamily::Any).unwrap();
        let after = t + config.peer_ttl;
        let r = s.announce(after, &ann(120, 1000, Some(1), Event::None), PeerFamily::Any).unwrap();
        assert_eq!((s.peer_count(), r.incomplete), (2, 2));
        assert_eq!(r.peers, vec![(SocketAddr::from(([10, 0, 0, 100], 1000)), PeerId([100; 20]))]);
    }

    #[test]
    fn an_announce_reads_num_want_slots_not_the_swarm() {
        let config = TrackerConfig {
            max_peers_per_ip: usize::MAX,
            max_peers_per_ip_per_torrent: usize::MAX,
            max_peers_per_torrent: 20_000,
            ..TrackerConfig::default()
        };
        let mut s = swarms(config);
        let t = Instant::now();
        for i in 0..10_000u32 {
            let mut a = ann(1, 1, Some(u64::from(i % 2)), Event::Started);
            let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 1, 0, 0)) + i);
            a.addr = SocketAddr::from((ip, 6881));
            s.announce(t, &a, PeerFamily::Any).unwrap();
        }
        let r = s.announce(t, &ann(1, 1000, Some(1), Event::None), PeerFamily::Any).unwrap();
        assert_eq!((r.complete, r.incomplete, r.peers.len()), (5_000, 5_001, 50));
        let distinct: std::collections::HashSet<_> = r.peers.iter().map(|p| p.0).collect();
        assert_eq!(distinct.len(), 50);
        assert!(s.last_slots_read() <= 51, "read {} of 10,001 slots", s.last_slots_read());
        assert_eq!(
            s.stats(t, &InfoHash([1; 20])),
            SwarmStats { complete: 5_000, downloaded: 0, incomplete: 5_001 }
        );
    }

    #[test]
    fn peers_come_and_go_and_the_counts_stay_exact() {
        let config = TrackerConfig { max_peers_per_ip_per_torrent: 2, ..TrackerConfig::default() };
        let mut s = swarms(config);
        let t = Instant::now();
        let mut rng = StdRng::seed_from_u64(3);
        let mut model: BTreeMap<SocketAddr, bool> = BTreeMap::new();
        for step in 0..5_000u32 {
            use rand::Rng;
            let ip = rng.random_range(1..=20u8);
            let port = rng.random_range(1..=3u16);
            let mut a = ann(ip, port, Some(rng.random_range(0..2)), Event::None);
            a.event = match rng.random_range(0..4) {
                0 => Event::Stopped,
                1 => Event::Completed,
                _ => Event::None,
            };
            let now = t + Duration::from_millis(u64::from(step));
            // Every other announce asks for a compact reply (sampled from the compact tables).
            let r = if step % 2 == 0 {
                s.announce(now, &a, PeerFamily::Any).unwrap()
            } else {
                let c = s.announce_compact(now, &a, PeerFamily::Any).unwrap();
                SwarmReply {
                    peers: compact_peers(&c).into_iter().map(|p| (p, PeerId([0; 20]))).collect(),
                    complete: c.complete,
                    incomplete: c.incomplete,
                }
            };
            let mut distinct: Vec<SocketAddr> = r.peers.iter().map(|p| p.0).collect();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), r.peers.len(), "step {step}: a peer given twice");
            if a.event == Event::Stopped {
                model.remove(&a.addr);
            } else {
                let seeder = a.left == Some(0) || a.event == Event::Completed;
                let same_ip: Vec<SocketAddr> =
                    model.keys().filter(|k| k.ip() == a.addr.ip()).copied().collect();
                if !model.contains_key(&a.addr) && same_ip.len() >= 2 {
                    // The table replaced this address's least recently seen peer.
                    let gone = same_ip
                        .iter()
                        .find(|k| s.torrents[&a.info_hash].slot(k).is_none())
                        .copied();
                    model.remove(&gone.expect("one of the address's peers was replaced"));
                }
                model.insert(a.addr, seeder);
            }
            let seeders = model.values().filter(|&&x| x).count() as u32;
            assert_eq!(
                (r.complete, r.incomplete),
                (seeders, model.len() as u32 - seeders),
                "step {step}"
            );
            assert_eq!(s.peer_count(), model.len());
            assert!(r.peers.iter().all(|(p, _)| *p != a.addr && model.contains_key(p)));
        }
    }

    /// One HTTP announce from 127.0.0.1 with `port`, over a fresh connection: the parsed reply.
    async fn http_announce(tracker: SocketAddr, port: u16) -> super::super::AnnounceResponse {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(tracker).await.unwrap();
        let query = format!(
            "info_hash=aaaaaaaaaaaaaaaaaaaa&peer_id=bbbbbbbbbbbbbbbbbbbb&port={port}&left=1&compact=1"
        );
        let request = format!("GET /announce?{query} HTTP/1.0\r\nHost: x\r\n\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        super::super::http::parse_announce_response(&all[split + 4..]).unwrap()
    }

    #[tokio::test]
    async fn over_http_one_address_with_a_thousand_ports_fills_eight_slots() {
        // Loopback is exempt by default (local labs); this tracker counts it like anyone.
        let config = TrackerConfig { cap_loopback: true, ..TrackerConfig::default() };
        let server = TrackerServer::bind("127.0.0.1:0".parse().unwrap(), config).await.unwrap();
        let tracker = server.local_addr();
        let _task = tokio::spawn(server.run());
        for port in 1..=1000 {
            http_announce(tracker, port).await;
        }
        let last = http_announce(tracker, 1001).await;
        assert_eq!(last.leechers, Some(8), "the swarm holds 8 of 127.0.0.1's ports");
        let mut ports: Vec<u16> = last.peers.iter().map(SocketAddr::port).collect();
        ports.sort_unstable();
        assert_eq!(ports, (994..=1000).collect::<Vec<u16>>(), "the newest, the asker excluded");
    }

    #[test]
    fn loopback_sources_are_exempt_from_the_per_address_caps_by_default() {
        let t = Instant::now();
        for (cap_loopback, stored) in [(false, 50), (true, 8)] {
            let mut s = swarms(TrackerConfig { cap_loopback, ..TrackerConfig::default() });
            for port in 1..=50 {
                let mut a = ann(1, port, Some(1), Event::Started);
                a.addr = SocketAddr::from(([127, 0, 0, 1], port));
                s.announce(t, &a, PeerFamily::Any).unwrap();
            }
            assert_eq!(s.peer_count(), stored, "cap_loopback {cap_loopback}");
        }
    }
}
