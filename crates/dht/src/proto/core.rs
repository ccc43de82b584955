//! `DhtCore`: one DHT node as a sans-IO state machine under the project's core contract
//! (`handle(now, input)`, `poll()`, `next_deadline()`; `docs/architecture.md`).
//!
//! - **Server side** (BEP 5): answers `ping`, `find_node`, `get_peers` (peers it stores, or the
//!   closest nodes, with a token) and `announce_peer` (token checked against the sender's
//!   address, `implied_port` honoured); every reply carries the requester's address (`ip`,
//!   BEP 42). Methods it does not serve are answered with error 204. A read-only node (BEP 43)
//!   answers nothing and says `ro` in its queries.
//! - **Client side**: iterative lookups (`find_node`, `get_peers`, `get_peers` then
//!   `announce_peer`) with at most [`Config::alpha`] queries in flight each, a timeout per
//!   query, and the stop rule: the lookup ends when the [`K`] closest nodes it heard of that did
//!   not fail have all answered. The result is those nodes (and, for `get_peers`, the peers
//!   they gave). A query unanswered after [`Config::slow_after`] is *slow*: it frees its slot
//!   for another and no longer holds the lookup up, though a late answer still counts (the
//!   change that took Mainline lookups from seconds to sub-second; Jimenez et al., 2011).
//! - **BEP 42 in lookups**: a node whose id its address does not allow is still asked (it may
//!   know closer nodes) but does not count among the [`K`] closest, nor receive our stores,
//!   unless too few allowed ids answered. So ids placed next to a target by an attacker
//!   without the addresses to match them cannot end a lookup or swallow a store.
//! - **Our own id (BEP 42)**: answers to our lookups tell us the address they saw us at
//!   (`ip`). Once [`IP_VOTES`] answering /24 networks agree on one (two thirds of the votes), that is
//!   our external address; if our id is not one it allows (and the address is not exempt), we
//!   take a new id derived from it and rebuild the routing table around it, keeping its nodes.
//! - **Keyword index** (Swarmcast's, no BEP): `index_put` stores a signed entry (a BEP 44
//!   mutable item, checked on arrival) under a keyword's target, many entries per target, one
//!   per key and salt (the newest `seq`); `index_get` returns some of them (see
//!   [`DhtCore::index_get`]). BEP 44 holds one value per target, and a keyword needs the
//!   entries of many publishers under one target. Entries live [`ITEM_TTL`] unless put again;
//!   at most [`MAX_INDEX_PER_TARGET`] per target, [`MAX_INDEX_PER_HOST`] of them from one
//!   network (an IPv4 /24, an IPv6 /48), [`MAX_INDEX_PER_NETWORK`] from one network over all
//!   targets (private and loopback addresses exempt from both), [`Config::max_index`] in all. Mainline nodes that do not know
//!   the methods answer error 204 and count as failed, so the index lives on Swarmcast nodes.
//! - **Upkeep**: tokens from a secret rotated every [`TOKEN_ROTATION`] (the previous one still
//!   accepted); stored peers expire after [`Config::peer_ttl`]; buckets untouched for 15
//!   minutes are refreshed by a lookup of an id inside them.
//!
//! # What the network says is a claim
//! A response counts only if its transaction id is one we sent, to the address it comes from,
//! and (when we knew the node's id) from that id. Tables are bounded: transactions in flight
//! ([`MAX_IN_FLIGHT`]), candidates per lookup ([`MAX_CANDIDATES`]), peers gathered per lookup
//! ([`MAX_LOOKUP_PEERS`]), info-hashes stored ([`Config::max_torrents`]), peers per
//! info-hash ([`Config::max_peers`]) and source addresses rate-limited ([`MAX_SOURCES`]). An
//! address that sends more than [`MAX_PACKETS_PER_WINDOW`] datagrams in [`RATE_WINDOW`] is not
//! heard for the rest of that window (loopback exempt, as in BEP 42, for test networks).
//!
//! # No amplification
//! A query's source address may be forged, to aim our reply at a victim. So a reply to an
//! address that has not answered a query of ours (nor shown a token of ours) is at most
//! [`AMPLIFICATION`] times the size of its query: peers, samples and nodes are left out until it
//! fits (for `get_peers` and `sample_infohashes`, nodes first, so what it asked for survives).
//! The exceptions cannot be cut: a BEP 44 value (a `get` reply with one is up to 1,000 bytes
//! larger than the query, about 10×), BEP 33's two 256-byte filters (about 6×), as in every
//! Mainline implementation, and one keyword index entry (up to about 1,200 bytes: a value,
//! a salt, a key and a signature; about 15× an `index_get`); such a reply to an unverified
//! address carries nodes only if they fit within 4× the query, so the exception is the
//! uncuttable part alone.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore};
use sha1::{Digest, Sha1};

use super::addr::NodeAddr;
use super::bloom::ScrapeFilter;
use super::id::NodeId;
pub use super::krpc::MutableItem;
use super::krpc::{Body, CompactNode, Message, Method, Put, Response, Value, Want, MAX_ITEMS};
use super::table::{Insert, RoutingTable, Seen, GOOD_FOR, K};

/// How often the token secret changes (BEP 5: every 5 minutes; the previous secret still
/// counts, so a token lives 5–10 minutes).
pub const TOKEN_ROTATION: Duration = Duration::from_secs(5 * 60);
/// Queries of ours awaiting an answer, at most.
pub const MAX_IN_FLIGHT: usize = 256;
/// Nodes a lookup remembers, the closest kept.
pub const MAX_CANDIDATES: usize = 64;
/// Peers a `get_peers` lookup gathers, at most.
pub const MAX_LOOKUP_PEERS: usize = 500;
/// A BEP 33 filter estimating more addresses than this is ignored (BEP 33: the filters saturate
/// around 6,000).
pub const MAX_SCRAPE_ESTIMATE: f64 = 6_000.0;
/// Info-hashes a [`DhtCore::sample_around`] lookup gathers, at most.
pub const MAX_LOOKUP_SAMPLES: usize = 1_000;
/// Peers one `get_peers` reply carries, at most (so the reply fits a datagram).
const MAX_REPLY_PEERS: usize = 50;
/// How long a BEP 44 item is kept unless put again (BEP 44: 2 hours).
pub const ITEM_TTL: Duration = Duration::from_secs(2 * 3600);
/// Keyword index entries stored under one target, at most.
pub const MAX_INDEX_PER_TARGET: usize = 64;
/// Keyword index entries under one target put from one network (an IPv4 /24, an IPv6 /48), at
/// most (private and loopback addresses exempt), so one network cannot fill a keyword.
pub const MAX_INDEX_PER_HOST: usize = 4;
/// Keyword index entries put from one network over all targets, at most (private and loopback
/// addresses exempt), so one network cannot push everyone else's entries out of a full node.
pub const MAX_INDEX_PER_NETWORK: usize = 64;
/// Keyword index entries one lookup gathers, at most.
pub const MAX_LOOKUP_ITEMS: usize = 256;
/// Bytes of entries an `index_get` reply carries to a verified address, at most (but always one
/// entry; one entry only to an unverified address, as a BEP 44 `get` carries one value). With
/// one family's nodes, a reply stays within an Ethernet frame; with both (BEP 32) or one
/// largest entry, within [`super::krpc::MAX_PACKET`].
const INDEX_REPLY_BYTES: usize = 1_000;
/// Info-hashes one `sample_infohashes` reply carries, at most (BEP 51; libtorrent: 20).
pub const MAX_SAMPLES: usize = 20;
/// The `interval` our BEP 51 replies give, in seconds (libtorrent's default: 6 hours).
const SAMPLE_INTERVAL_S: i64 = 6 * 3600;
/// Datagrams one IPv4 address may send per [`RATE_WINDOW`] before the rest are dropped
/// (libtorrent's default: 5 a second, blocking the address beyond ~50 in 10 s).
pub const MAX_PACKETS_PER_WINDOW: u32 = 50;
/// The window of [`MAX_PACKETS_PER_WINDOW`].
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Addresses whose rate is tracked at once. Past this, expired windows are forgotten; if none
/// has expired, datagrams from new addresses are dropped until some do (under a flood from
/// more addresses than this, new sources wait at most one window).
pub const MAX_SOURCES: usize = 10_000;

/// A reply to an unverified address is at most this many times its query's size (QUIC's
/// anti-amplification limit is 3; a `find_node` reply with 8 nodes is about 3× its query),
/// plus, over IPv6, the 12 extra bytes of 8 IPv6 nodes.
pub const AMPLIFICATION: usize = 4;
/// What a reply needs around a part that cannot be cut (a BEP 44 value, BEP 33's filters): id,
/// token, transaction, `ip` and the keys.
const UNCUT_OVERHEAD: usize = 120;
/// Addresses remembered as verified (they answered us or showed our token), the oldest
/// forgotten first.
pub const MAX_VERIFIED: usize = 8_192;

/// Distinct answering addresses that must agree on our external address (BEP 42) before we
/// believe it; votes are counted from at most [`MAX_IP_VOTERS`] addresses, then start over.
pub const IP_VOTES: u32 = 10;
pub const MAX_IP_VOTERS: usize = 64;

/// The other family's nodes a core keeps for BEP 32's `want`, at most.
pub const MAX_FOREIGN: usize = 2_048;

/// The shortest wait before a lookup query counts as slow.
pub const MIN_SLOW_AFTER: Duration = Duration::from_millis(100);

/// Tuning of a [`DhtCore`].
#[derive(Clone, Debug)]
pub struct Config {
    /// Queries in flight per lookup (Kademlia's α).
    pub alpha: usize,
    /// How long a query waits for its answer.
    pub query_timeout: Duration,
    /// The longest an unanswered lookup query holds its lookup up (see the module docs); it
    /// still waits `query_timeout` for a late answer. Below this, the wait is TCP's
    /// retransmission timeout (RFC 6298: smoothed RTT + 4 × its variation) over the answers we
    /// got, at least [`MIN_SLOW_AFTER`].
    pub slow_after: Duration,
    /// BEP 43: answer no queries, and say so.
    pub read_only: bool,
    /// Info-hashes whose peers we store, at most.
    pub max_torrents: usize,
    /// Peers stored per info-hash, at most.
    pub max_peers: usize,
    /// How long an announced peer is kept.
    pub peer_ttl: Duration,
    /// BEP 44 items stored, at most (each at most 1,000 bytes).
    pub max_items: usize,
    /// Keyword index entries stored, at most, over all targets (each at most 1,000 bytes of
    /// value).
    pub max_index: usize,
    /// BEP 42 in lookups (see the module docs). Off, every id counts alike: only for
    /// measuring what the rule is worth (`swarmcast sim dht --sybils`).
    pub verified_closest: bool,
    /// BEP 32: lookup queries ask for nodes of both families (`want` = `n4`, `n6`), and the
    /// other family's nodes in answers come out as [`Output::OtherFamily`]: set when a core
    /// of the other family runs beside this one, so it can join through this one's answers.
    pub want_both: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            alpha: 3,
            query_timeout: Duration::from_secs(2),
            slow_after: Duration::from_millis(500),
            read_only: false,
            max_torrents: 2_000,
            max_peers: 100,
            peer_ttl: Duration::from_secs(30 * 60),
            max_items: 1_000,
            max_index: 4_096,
            verified_closest: true,
            want_both: false,
        }
    }
}

/// What the core is fed.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a, A = SocketAddrV4> {
    /// A datagram arrived.
    Datagram { from: A, bytes: &'a [u8] },
    /// A deadline from [`DhtCore::next_deadline`] passed.
    Tick,
}

/// What the core asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<A: NodeAddr = SocketAddrV4> {
    /// Send this datagram.
    Send { to: A, bytes: Vec<u8> },
    /// A lookup finished (boxed: it is large beside a datagram).
    Done(Box<LookupResult<A>>),
    /// Peers a running `get_peers` or announce lookup just learned (only new ones, at most
    /// [`MAX_LOOKUP_PEERS`] in all), so a download can dial them before the lookup ends; its
    /// [`Output::Done`] repeats them all.
    Peers { lookup: LookupId, peers: Vec<A> },
    /// Nodes of the other family that an answer named (with [`Config::want_both`]): for the
    /// core of that family, which may ping them ([`DhtCore::ping_if_wanted`]). At most [`K`].
    OtherFamily(Vec<CompactNode<A::Other>>),
}

/// Identifies a lookup started by [`DhtCore::find_node`], [`DhtCore::get_peers`] or
/// [`DhtCore::announce`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(pub u64);

/// The end of a lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupResult<A = SocketAddrV4> {
    pub id: LookupId,
    pub target: NodeId,
    /// The closest nodes that answered, closest first (at most [`K`]; a result merged from
    /// both families holds up to [`K`] of each, see [`LookupResult::merge`]).
    pub nodes: Vec<CompactNode<A>>,
    /// Peers of the swarm (`get_peers` and `announce`), as the nodes gave them.
    pub peers: Vec<A>,
    /// Nodes an `announce_peer` went to (the closest that gave a token).
    pub announced_to: usize,
    /// Queries the lookup sent, stores included.
    pub queries: u32,
    /// Answers to its queries that arrived while it ran (stores' answers not counted).
    pub answers: u32,
    /// From the lookup's start to its end.
    pub elapsed: Duration,
    /// From the lookup's start to the first answer carrying what it looks for (peers, an item
    /// that checks out), if any came.
    pub first_value: Option<Duration>,
    /// Hops to that first answer: 1 when the node that gave it was in our routing table, one
    /// more for each referral that led to it (Kademlia's O(log N)).
    pub first_hops: Option<u8>,
    /// BEP 44 `get`: the item found, checked against its target (immutable: its SHA-1).
    pub value: Option<Value>,
    /// BEP 44 mutable `get`: the newest item whose signature verifies.
    pub mutable: Option<MutableItem>,
    /// Keyword index (`index_get`): the entries whose signatures verify, one per key and salt
    /// (the newest), at most [`MAX_LOOKUP_ITEMS`].
    pub items: Vec<MutableItem>,
    /// BEP 51 (`sample`): info-hashes the node stores (a sample), how many it stores in all
    /// (a claim), and how long it asks us to wait before asking again (seconds).
    pub samples: Vec<NodeId>,
    pub num: Option<i64>,
    pub interval: Option<i64>,
    /// BEP 33 (`scrape`): the union of the filters the nodes gave.
    pub scrape: Option<ScrapeResult>,
}

impl<A: NodeAddr> LookupResult<A> {
    /// The result with addresses of either family, to [`merge`](LookupResult::merge) with
    /// the same lookup run by the other family's core.
    pub fn widen(self) -> LookupResult<SocketAddr> {
        let nodes = self.nodes.iter().map(|n| CompactNode { id: n.id, addr: n.addr.into() });
        LookupResult {
            id: self.id,
            target: self.target,
            nodes: nodes.collect(),
            peers: self.peers.into_iter().map(Into::into).collect(),
            announced_to: self.announced_to,
            queries: self.queries,
            answers: self.answers,
            elapsed: self.elapsed,
            first_value: self.first_value,
            first_hops: self.first_hops,
            value: self.value,
            mutable: self.mutable,
            items: self.items,
            samples: self.samples,
            num: self.num,
            interval: self.interval,
            scrape: self.scrape,
        }
    }
}

impl LookupResult<SocketAddr> {
    /// Adds what the same lookup found over the other family: nodes of both, closest first
    /// to `self.target` (for a bootstrap, each family looks up its own id: the first result's
    /// counts); peers and samples without repeats; counts added; the newest mutable item;
    /// filters united.
    pub fn merge(&mut self, o: LookupResult<SocketAddr>) {
        self.nodes.extend(o.nodes);
        let target = self.target;
        self.nodes.sort_by_key(|n| n.id.distance(&target));
        for p in o.peers {
            if !self.peers.contains(&p) {
                self.peers.push(p);
            }
        }
        self.announced_to += o.announced_to;
        self.queries += o.queries;
        self.answers += o.answers;
        self.elapsed = self.elapsed.max(o.elapsed);
        (self.first_value, self.first_hops) = match (self.first_value, o.first_value) {
            (Some(a), Some(b)) if b < a => (Some(b), o.first_hops),
            (None, Some(b)) => (Some(b), o.first_hops),
            _ => (self.first_value, self.first_hops),
        };
        if self.value.is_none() {
            self.value = o.value;
        }
        if o.mutable.as_ref().is_some_and(|m| self.mutable.as_ref().is_none_or(|s| m.seq > s.seq)) {
            self.mutable = o.mutable;
        }
        for it in o.items {
            add_item(&mut self.items, it);
        }
        for s in o.samples {
            if self.samples.len() < MAX_LOOKUP_SAMPLES && !self.samples.contains(&s) {
                self.samples.push(s);
            }
        }
        self.num = match (self.num, o.num) {
            (Some(a), Some(b)) => Some(a.saturating_add(b)),
            (a, b) => a.or(b),
        };
        self.interval = self.interval.max(o.interval);
        self.scrape = match (self.scrape.take(), o.scrape) {
            (Some(mut a), Some(b)) => {
                a.seeds.union(&b.seeds);
                a.downloaders.union(&b.downloaders);
                a.nodes += b.nodes;
                Some(a)
            }
            (a, b) => a.or(b),
        };
    }
}

/// What a BEP 33 scrape lookup gathered: the union of the answering nodes' bloom filters of the
/// swarm's seeds and downloaders (see [`ScrapeFilter::estimate`]), and how many nodes gave them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrapeResult {
    pub seeds: ScrapeFilter,
    pub downloaders: ScrapeFilter,
    pub nodes: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    FindNode,
    GetPeers,
    Announce {
        port: u16,
        seed: bool,
    },
    /// BEP 33: a `get_peers` lookup with `scrape`, gathering bloom filters instead of peers.
    Scrape,
    /// A bucket refresh: like FindNode, with no result reported.
    Refresh,
    /// One BEP 51 `sample_infohashes` query to one node.
    Sample,
    /// A lookup toward a target that asks each node `sample_infohashes` (BEP 51 replies carry
    /// nodes, as `find_node`'s do) and gathers the samples of the nodes around it.
    SampleAround,
    /// BEP 44: find an immutable item.
    GetItem,
    /// BEP 44: collect tokens from the closest nodes, then put the lookup's `item` there.
    PutItem,
    /// BEP 44: find the newest mutable item of a key and salt.
    GetMutable,
    /// BEP 44: collect tokens, then put the lookup's signed `mutable` item.
    PutMutable,
    /// Keyword index: gather the entries under the target.
    GetIndex,
    /// Keyword index: collect tokens, then put the lookup's `mutable` item under the target.
    PutIndex,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    New,
    Asked,
    /// Asked, and unanswered for longer than `slow_after`.
    Slow,
    Answered,
    Failed,
}

#[derive(Clone, Debug)]
struct Candidate<A> {
    node: CompactNode<A>,
    state: State,
    token: Option<Vec<u8>>,
    /// BEP 42: its id is one its address allows (or the address is exempt).
    verified: bool,
    /// Queries sent to it (a slow one is sent once more).
    tries: u8,
    /// 1 for a node of our table, one more for each referral that led to it.
    hop: u8,
    /// Keyword index: asked again with its token for a full reply.
    reasked: bool,
}

impl<A: NodeAddr> Candidate<A> {
    fn new(node: CompactNode<A>, state: State) -> Self {
        let verified = node.addr.allows(&node.id);
        Candidate { node, state, token: None, verified, tries: 0, hop: 1, reasked: false }
    }
}

#[derive(Clone, Debug)]
struct Lookup<A> {
    target: NodeId,
    kind: Kind,
    /// By XOR distance to the target.
    candidates: BTreeMap<[u8; 20], Candidate<A>>,
    peers: Vec<A>,
    /// Queries awaiting an answer that are not slow.
    in_flight: usize,
    queries: u32,
    answers: u32,
    started: Instant,
    first_value: Option<Instant>,
    /// The hop of the node that gave the first value.
    first_hops: Option<u8>,
    /// BEP 51 answer: samples, num, interval.
    sampled: Option<(Vec<NodeId>, Option<i64>, Option<i64>)>,
    /// BEP 33: each answering node's filters (seeds, downloaders), by distance to the target.
    filters: BTreeMap<[u8; 20], (ScrapeFilter, ScrapeFilter)>,
    /// BEP 44: the item to put, or the item found.
    item: Option<Value>,
    /// BEP 44 mutable: the key and salt asked for (get), and the item to put or the newest
    /// valid one found.
    want: Option<([u8; 32], Vec<u8>)>,
    mutable: Option<MutableItem>,
    /// Keyword index entries found.
    found: Vec<MutableItem>,
}

impl<A> Lookup<A> {
    /// Notes the first answer that carried what the lookup looks for.
    fn found_at(&mut self, now: Instant, hop: u8) {
        if self.first_value.is_none() {
            (self.first_value, self.first_hops) = (Some(now), Some(hop));
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// A bootstrap or liveness ping, or a find_node to an address whose id we do not know.
    Ping,
    Lookup(LookupId),
    /// An `announce_peer` or `put` at the end of a lookup: its answer needs no processing.
    Store,
}

#[derive(Clone, Copy, Debug)]
struct Transaction<A> {
    to: A,
    node: Option<NodeId>,
    sent: Instant,
    purpose: Purpose,
    /// A lookup query past `slow_after`: no longer counted in its lookup's `in_flight`.
    slow: bool,
}

/// One DHT node's protocol state. See the module docs.
pub struct DhtCore<R: RngCore, A: NodeAddr = SocketAddrV4> {
    id: NodeId,
    config: Config,
    rng: R,
    table: RoutingTable<A>,
    next_tid: u16,
    in_flight: HashMap<u16, Transaction<A>>,
    lookups: BTreeMap<LookupId, Lookup<A>>,
    next_lookup: u64,
    secrets: [[u8; 16]; 2],
    rotated: Instant,
    next_refresh: Instant,
    /// Announced peers by info-hash: address, when, and whether a seed (BEP 33).
    stored: HashMap<NodeId, Vec<(A, Instant, bool)>>,
    /// BEP 44 immutable items by target, with the time they were put.
    items: HashMap<NodeId, (Value, Instant)>,
    /// BEP 44 mutable items by target (counted with `items` against `max_items`).
    mutables: HashMap<NodeId, (MutableItem, Instant)>,
    /// Keyword index entries by target: the entry, when it was put, and from which host.
    index: HashMap<NodeId, Vec<(MutableItem, Instant, A::Host)>>,
    /// Entries in `index`, over all targets.
    index_len: usize,
    /// Per source host: the start of its window and datagrams in it (loopback exempt).
    rates: HashMap<A::Host, (Instant, u32)>,
    /// RFC 6298's smoothed round-trip time and its variation, over every answer.
    srtt: Option<Duration>,
    rttvar: Duration,
    /// Datagrams dropped by the rate limit.
    rate_limited: u64,
    /// Addresses that proved they receive what we send them: see "No amplification" in the
    /// module docs. The queue holds them oldest first, for forgetting.
    verified: std::collections::HashSet<A>,
    verified_order: VecDeque<A>,
    /// Replies cut short to an unverified address.
    trimmed: u64,
    /// BEP 42 votes on our external address: who voted (once each), and the tally.
    ip_voters: std::collections::HashSet<A::Host>,
    ip_tally: HashMap<A::Ip, u32>,
    external: Option<A::Ip>,
    /// The other family's nodes (BEP 32), for queries whose `want` asks for them: a copy of
    /// the sibling core's table that the driver refreshes ([`DhtCore::set_foreign_nodes`]).
    foreign: Vec<CompactNode<A::Other>>,
    out: VecDeque<Output<A>>,
}

impl<R: RngCore, A: NodeAddr> DhtCore<R, A> {
    /// A node with id `id` (BEP 42 derives it from the external address; the driver chooses).
    pub fn new(now: Instant, id: NodeId, config: Config, mut rng: R) -> Self {
        let mut secrets = [[0u8; 16]; 2];
        rng.fill_bytes(&mut secrets[0]);
        rng.fill_bytes(&mut secrets[1]);
        DhtCore {
            id,
            config,
            rng,
            table: RoutingTable::new(id),
            next_tid: 0,
            in_flight: HashMap::new(),
            lookups: BTreeMap::new(),
            next_lookup: 0,
            secrets,
            rotated: now,
            next_refresh: now + GOOD_FOR,
            stored: HashMap::new(),
            items: HashMap::new(),
            mutables: HashMap::new(),
            index: HashMap::new(),
            index_len: 0,
            rates: HashMap::new(),
            srtt: None,
            rttvar: Duration::ZERO,
            rate_limited: 0,
            verified: std::collections::HashSet::new(),
            verified_order: VecDeque::new(),
            trimmed: 0,
            ip_voters: std::collections::HashSet::new(),
            ip_tally: HashMap::new(),
            external: None,
            foreign: Vec::new(),
            out: VecDeque::new(),
        }
    }

    // --- getters ----------------------------------------------------------------------------

    /// Our node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The configuration, to change at run time (the simulator's comparisons).
    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    /// The routing table.
    pub fn table(&self) -> &RoutingTable<A> {
        &self.table
    }

    /// Datagrams dropped because their address sent too many.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited
    }

    /// Replies cut short because their asker was unverified (see the module docs).
    pub fn trimmed_replies(&self) -> u64 {
        self.trimmed
    }

    /// Our external address, once the answers' votes agreed on one (BEP 42).
    pub fn external_ip(&self) -> Option<A::Ip> {
        self.external
    }

    /// Gives the core the other family's nodes (BEP 32): the driver's copy of the sibling
    /// core's table, from which replies to a `want` naming that family are drawn. At most
    /// [`MAX_FOREIGN`] are kept.
    pub fn set_foreign_nodes(&mut self, mut nodes: Vec<CompactNode<A::Other>>) {
        nodes.truncate(MAX_FOREIGN);
        self.foreign = nodes;
    }

    /// Pings `node` (heard of from the other family's core, [`Output::OtherFamily`]) if the
    /// table would give it a place and no query to it is waiting; it enters the table only if
    /// it answers.
    pub fn ping_if_wanted(&mut self, now: Instant, node: CompactNode<A>) {
        let asking = self.in_flight.values().any(|t| t.to == node.addr);
        if node.addr.port_of() != 0 && node.addr.usable() && self.table.wants(&node.id) && !asking {
            self.query(now, node.addr, Some(node.id), Purpose::Ping, Method::Ping);
        }
    }

    /// Queries awaiting an answer.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Peers stored for `info_hash` (announced to us).
    pub fn stored_peers(&self, info_hash: &NodeId) -> Vec<A> {
        self.stored.get(info_hash).map_or(Vec::new(), |v| v.iter().map(|(a, ..)| *a).collect())
    }

    // --- mutators ---------------------------------------------------------------------------

    /// Puts `node` in the table as if it had just answered a query of ours: for nodes the
    /// caller knows to be alive (the simulator builds its tables "as after a bootstrap" so).
    pub fn add_responded(&mut self, now: Instant, node: CompactNode<A>) -> Insert<A> {
        self.table.insert(now, node, Seen::Responded)
    }

    /// Joins the network through known addresses (routers): asks each for the nodes closest
    /// to our own id. Addresses beyond what may be in flight ([`MAX_IN_FLIGHT`]) are not asked.
    pub fn bootstrap(&mut self, now: Instant, routers: &[A]) -> LookupId {
        let id = self.start(now, self.id, Kind::FindNode);
        for &addr in routers {
            let target = self.id;
            if !addr.usable() || addr.port_of() == 0 {
                continue;
            }
            if self.query(now, addr, None, Purpose::Lookup(id), Method::FindNode { target }) {
                if let Some(l) = self.lookups.get_mut(&id) {
                    l.in_flight += 1;
                }
            }
        }
        self.step(now, id);
        id
    }

    /// Joins through nodes whose ids we know (a warm start from saved nodes, or nodes another
    /// family's answers named): a lookup of our own id that starts from them, the closest
    /// [`MAX_CANDIDATES`] kept, asked α at a time like any lookup's candidates.
    pub fn bootstrap_from(&mut self, now: Instant, nodes: &[CompactNode<A>]) -> LookupId {
        let id = self.start(now, self.id, Kind::FindNode);
        let own = self.id;
        if let Some(l) = self.lookups.get_mut(&id) {
            for n in
                nodes.iter().filter(|n| n.id != own && n.addr.usable() && n.addr.port_of() != 0)
            {
                l.candidates.entry(n.id.distance(&own)).or_insert(Candidate::new(*n, State::New));
            }
            while l.candidates.len() > MAX_CANDIDATES {
                l.candidates.pop_last();
            }
        }
        self.step(now, id);
        id
    }

    /// Looks up the nodes closest to `target`.
    pub fn find_node(&mut self, now: Instant, target: NodeId) -> LookupId {
        let id = self.start(now, target, Kind::FindNode);
        self.step(now, id);
        id
    }

    /// Looks up the peers of `info_hash`.
    pub fn get_peers(&mut self, now: Instant, info_hash: NodeId) -> LookupId {
        let id = self.start(now, info_hash, Kind::GetPeers);
        self.step(now, id);
        id
    }

    /// Asks the node at `to` which info-hashes it stores (BEP 51); the answer comes as a
    /// [`LookupResult`] with `samples`, `num` and `interval` (empty if it does not answer).
    pub fn sample(&mut self, now: Instant, to: A, target: NodeId) -> LookupId {
        let id = self.start(now, target, Kind::Sample);
        if self.query(now, to, None, Purpose::Lookup(id), Method::SampleInfohashes { target }) {
            if let Some(l) = self.lookups.get_mut(&id) {
                l.in_flight = 1;
                l.queries = 1;
            }
        }
        self.step(now, id);
        id
    }

    /// Samples the info-hashes stored around `target` (BEP 51): a lookup whose queries are
    /// `sample_infohashes`; the result's `samples` gathers every answer's (distinct, at most
    /// [`MAX_LOOKUP_SAMPLES`]) and `num` adds up what the nodes claim to store. Nodes without
    /// BEP 51 answer with an error and count as failed.
    pub fn sample_around(&mut self, now: Instant, target: NodeId) -> LookupId {
        let id = self.start(now, target, Kind::SampleAround);
        self.step(now, id);
        id
    }

    /// Looks up the immutable item whose target is `target` (BEP 44); the result's `value` is
    /// the item, checked against the target, or `None`.
    pub fn get_item(&mut self, now: Instant, target: NodeId) -> LookupId {
        let id = self.start(now, target, Kind::GetItem);
        self.step(now, id);
        id
    }

    /// Stores an immutable item (at most 1,000 bytes bencoded) at the nodes closest to its
    /// target, SHA-1 of its bencoding (returned). The result's `announced_to` counts the nodes
    /// it was put to.
    pub fn put_item(&mut self, now: Instant, value: Value) -> (NodeId, LookupId) {
        let target = item_target(&value);
        let id = self.start(now, target, Kind::PutItem);
        if let Some(l) = self.lookups.get_mut(&id) {
            l.item = Some(value);
        }
        self.step(now, id);
        (target, id)
    }

    /// Looks up the newest mutable item of `key` and `salt` (BEP 44); the result's `mutable` is
    /// the highest `seq` whose signature verifies.
    pub fn get_mutable(&mut self, now: Instant, key: [u8; 32], salt: Vec<u8>) -> LookupId {
        let target = MutableItem::target(&key, &salt);
        let id = self.start(now, target, Kind::GetMutable);
        if let Some(l) = self.lookups.get_mut(&id) {
            l.want = Some((key, salt));
        }
        self.step(now, id);
        id
    }

    /// Puts a signed mutable item at the nodes closest to its target.
    pub fn put_mutable(&mut self, now: Instant, item: MutableItem) -> LookupId {
        let target = MutableItem::target(&item.key, &item.salt);
        let id = self.start(now, target, Kind::PutMutable);
        if let Some(l) = self.lookups.get_mut(&id) {
            l.mutable = Some(item);
        }
        self.step(now, id);
        id
    }

    /// Gathers the keyword index entries under `target` (see [`index_target`]) from the nodes
    /// closest to it; the result's `items` are those whose signatures verify, one per key and
    /// salt (the newest). A node holding more entries than fit a reply gives a random choice
    /// of them, so a lookup that asks [`K`] nodes sees more than one reply holds.
    pub fn index_get(&mut self, now: Instant, target: NodeId) -> LookupId {
        let id = self.start(now, target, Kind::GetIndex);
        self.step(now, id);
        id
    }

    /// Puts a signed entry under `target` at the nodes closest to it (the result's
    /// `announced_to` counts them). Entries expire after [`ITEM_TTL`]: put again before.
    pub fn index_put(&mut self, now: Instant, target: NodeId, item: MutableItem) -> LookupId {
        let id = self.start(now, target, Kind::PutIndex);
        if let Some(l) = self.lookups.get_mut(&id) {
            l.mutable = Some(item);
        }
        self.step(now, id);
        id
    }

    /// Keyword index entries stored here, over all targets.
    pub fn index_len(&self) -> usize {
        self.index_len
    }

    /// Looks up the peers of `info_hash`, then announces us on `port` to the closest nodes.
    pub fn announce(&mut self, now: Instant, info_hash: NodeId, port: u16) -> LookupId {
        self.announce_as(now, info_hash, port, false)
    }

    /// [`DhtCore::announce`], saying whether we are a seed (BEP 33's `seed`).
    pub fn announce_as(
        &mut self,
        now: Instant,
        info_hash: NodeId,
        port: u16,
        seed: bool,
    ) -> LookupId {
        let id = self.start(now, info_hash, Kind::Announce { port, seed });
        self.step(now, id);
        id
    }

    /// Estimates the size of `info_hash`'s swarm (BEP 33): a `get_peers` lookup with `scrape`,
    /// whose result's `scrape` is the union of the bloom filters of the closest nodes that
    /// answered (those that store the swarm); filters estimating over
    /// [`MAX_SCRAPE_ESTIMATE`] are ignored.
    pub fn scrape(&mut self, now: Instant, info_hash: NodeId) -> LookupId {
        let id = self.start(now, info_hash, Kind::Scrape);
        self.step(now, id);
        id
    }

    // --- handlers ---------------------------------------------------------------------------

    /// Feeds one input.
    pub fn handle(&mut self, now: Instant, input: Input<'_, A>) {
        match input {
            Input::Tick => self.tick(now),
            Input::Datagram { from, bytes } => {
                if !self.admit(now, from) {
                    self.rate_limited += 1;
                    return;
                }
                // A malformed datagram is dropped (the driver counts it); an unknown method
                // still gets its answer.
                match Message::decode(bytes) {
                    Ok(m) => self.on_message(now, from, m, bytes.len()),
                    Err(super::krpc::KrpcError::UnknownMethod { tid }) => {
                        if !self.config.read_only {
                            self.error(from, tid, 204, "Method Unknown");
                        }
                    }
                    Err(_) => {}
                }
            }
        }
    }

    // --- polling ----------------------------------------------------------------------------

    /// The next thing to do, if any.
    pub fn poll(&mut self) -> Option<Output<A>> {
        self.out.pop_front()
    }

    /// When to call `handle(now, Input::Tick)` next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let (timeout, slow) = (self.config.query_timeout, self.slow_after());
        let timeouts = self
            .in_flight
            .values()
            .map(|t| match (t.purpose, t.slow, t.node.is_some()) {
                (Purpose::Lookup(_), false, true) => t.sent + slow.min(timeout),
                _ => t.sent + timeout,
            })
            .min();
        let upkeep = (self.rotated + TOKEN_ROTATION).min(self.next_refresh);
        Some(timeouts.map_or(upkeep, |t| t.min(upkeep)))
    }

    // --- inside -----------------------------------------------------------------------------

    /// How long a lookup query may go unanswered before it is slow (see
    /// [`Config::slow_after`]).
    fn slow_after(&self) -> Duration {
        match self.srtt {
            None => self.config.slow_after,
            Some(srtt) => (srtt + 4 * self.rttvar)
                .clamp(MIN_SLOW_AFTER, self.config.slow_after.max(MIN_SLOW_AFTER)),
        }
    }

    /// RFC 6298's update with one round-trip sample.
    fn sample_rtt(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    /// Counts a datagram from `ip` against its window; false when over the limit.
    fn admit(&mut self, now: Instant, from: A) -> bool {
        if from.ip().is_loopback() {
            return true;
        }
        let ip = from.host();
        if !self.rates.contains_key(&ip) && self.rates.len() >= MAX_SOURCES {
            self.rates.retain(|_, (start, _)| now.saturating_duration_since(*start) < RATE_WINDOW);
            if self.rates.len() >= MAX_SOURCES {
                return false;
            }
        }
        let (start, count) = self.rates.entry(ip).or_insert((now, 0));
        if now.saturating_duration_since(*start) >= RATE_WINDOW {
            (*start, *count) = (now, 0);
        }
        *count += 1;
        *count <= MAX_PACKETS_PER_WINDOW
    }

    fn start(&mut self, now: Instant, target: NodeId, kind: Kind) -> LookupId {
        let id = LookupId(self.next_lookup);
        self.next_lookup += 1;
        let mut l = Lookup {
            target,
            kind,
            candidates: BTreeMap::new(),
            peers: Vec::new(),
            in_flight: 0,
            queries: 0,
            answers: 0,
            started: now,
            first_value: None,
            first_hops: None,
            sampled: None,
            filters: BTreeMap::new(),
            item: None,
            want: None,
            mutable: None,
            found: Vec::new(),
        };
        if kind == Kind::Sample {
            // One query to one node, sent by `sample`.
            self.lookups.insert(id, l);
            return id;
        }
        for node in self.table.closest(&target, MAX_CANDIDATES) {
            l.candidates.insert(node.id.distance(&target), Candidate::new(node, State::New));
        }
        self.lookups.insert(id, l);
        id
    }

    /// Sends what the lookup may send now, or ends it.
    fn step(&mut self, now: Instant, id: LookupId) {
        let Some(l) = self.lookups.get_mut(&id) else {
            return;
        };
        let mut to_ask = Vec::new();
        let mut all_answered = true;
        // Kademlia's last phase: once the alpha closest have answered (the lookup stopped
        // getting closer), the rest of the K closest are asked at once, not alpha at a time.
        let alpha = self.config.alpha;
        let live = |c: &&Candidate<A>| !matches!(c.state, State::Failed | State::Slow);
        let closing =
            l.candidates.values().filter(live).take(alpha).all(|c| c.state == State::Answered);
        let width = if closing { alpha.max(K) } else { alpha };
        // The K closest verified candidates that neither failed nor are slow, and every
        // unverified one among them, must answer.
        let mut counted = 0;
        for c in l.candidates.values_mut() {
            if counted == K {
                break;
            }
            match c.state {
                State::Failed | State::Slow => continue,
                State::Answered => {}
                State::New if l.in_flight + to_ask.len() < width => {
                    c.state = State::Asked;
                    c.tries = 1;
                    to_ask.push(c.node);
                    all_answered = false;
                }
                _ => all_answered = false,
            }
            counted += usize::from(c.verified || !self.config.verified_closest);
        }
        let (target, kind) = (l.target, l.kind);
        // Done when the K closest nodes that did not fail have all answered, or when nothing
        // is left to ask and nothing is awaited.
        let settled = all_answered && l.candidates.values().any(|c| c.state == State::Answered);
        if settled || (to_ask.is_empty() && l.in_flight == 0) {
            self.finish(now, id);
            return;
        }
        for node in to_ask {
            let method = lookup_method(kind, target);
            if self.query(now, node.addr, Some(node.id), Purpose::Lookup(id), method) {
                if let Some(l) = self.lookups.get_mut(&id) {
                    l.in_flight += 1;
                    l.queries += 1;
                }
            } else if let Some(c) = self
                .lookups
                .get_mut(&id)
                .and_then(|l| l.candidates.get_mut(&node.id.distance(&target)))
            {
                c.state = State::Failed;
            }
        }
    }

    fn finish(&mut self, now: Instant, id: LookupId) {
        let Some(l) = self.lookups.remove(&id) else {
            return;
        };
        // The K closest verified nodes that answered; unverified ones only to make up K.
        let answered = || l.candidates.values().filter(|c| c.state == State::Answered);
        let counts = |c: &&Candidate<A>| c.verified || !self.config.verified_closest;
        let mut closest: Vec<&Candidate<A>> = answered().filter(counts).take(K).collect();
        if closest.len() < K {
            let more = K - closest.len();
            closest.extend(answered().filter(|c| !counts(c)).take(more));
            closest.sort_by_key(|c| c.node.id.distance(&l.target));
        }
        // Announce and put lookups end by storing at the closest nodes that gave a token.
        let store = |token: Vec<u8>| -> Option<Method> {
            let put = |value: Value, m: Option<&MutableItem>| Put {
                token: token.clone(),
                value,
                key: m.map(|m| m.key),
                sig: m.map(|m| m.sig),
                seq: m.map(|m| m.seq),
                salt: m.map_or(Vec::new(), |m| m.salt.clone()),
                cas: None,
            };
            match (l.kind, &l.item, &l.mutable) {
                (Kind::Announce { port, seed }, _, _) => Some(Method::AnnouncePeer {
                    seed,
                    info_hash: l.target,
                    port,
                    implied_port: false,
                    token: token.clone(),
                }),
                (Kind::PutItem, Some(v), _) => Some(Method::Put(put(v.clone(), None))),
                (Kind::PutMutable, _, Some(m)) => Some(Method::Put(put(m.value.clone(), Some(m)))),
                (Kind::PutIndex, _, Some(m)) => Some(Method::IndexPut {
                    target: l.target,
                    token: token.clone(),
                    item: m.clone(),
                }),
                _ => None,
            }
        };
        let mut announced_to = 0;
        for c in &closest {
            let Some(method) = c.token.clone().and_then(&store) else { continue };
            if self.query(now, c.node.addr, Some(c.node.id), Purpose::Store, method) {
                announced_to += 1;
            }
        }
        if l.kind == Kind::Refresh {
            return;
        }
        let (samples, num, interval) = l.sampled.unwrap_or_default();
        let scrape = (l.kind == Kind::Scrape).then(|| {
            let mut s = ScrapeResult {
                seeds: ScrapeFilter::default(),
                downloaders: ScrapeFilter::default(),
                nodes: 0,
            };
            for c in &closest {
                if let Some((sd, pe)) = l.filters.get(&c.node.id.distance(&l.target)) {
                    s.seeds.union(sd);
                    s.downloaders.union(pe);
                    s.nodes += 1;
                }
            }
            s
        });
        let mutable = if l.kind == Kind::GetMutable { l.mutable } else { None };
        let value = if l.kind == Kind::GetItem { l.item } else { None };
        self.out.push_back(Output::Done(Box::new(LookupResult {
            id,
            target: l.target,
            nodes: closest.iter().map(|c| c.node).collect(),
            peers: l.peers,
            announced_to,
            queries: l.queries + announced_to as u32,
            answers: l.answers,
            elapsed: now.saturating_duration_since(l.started),
            first_value: l.first_value.map(|t| t.saturating_duration_since(l.started)),
            first_hops: l.first_hops,
            value,
            mutable,
            items: l.found,
            samples,
            num,
            interval,
            scrape: scrape.filter(|s| s.nodes > 0),
        })));
    }

    /// Sends a query; false when too many are in flight.
    fn query(
        &mut self,
        now: Instant,
        to: A,
        node: Option<NodeId>,
        purpose: Purpose,
        method: Method,
    ) -> bool {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            return false;
        }
        let mut tid = self.next_tid;
        while self.in_flight.contains_key(&tid) {
            tid = tid.wrapping_add(1);
        }
        self.next_tid = tid.wrapping_add(1);
        self.in_flight.insert(tid, Transaction { to, node, sent: now, purpose, slow: false });
        let want = match purpose {
            Purpose::Lookup(_) if self.config.want_both => Want { n4: true, n6: true },
            _ => Want::default(),
        };
        let m = Message {
            tid: tid.to_be_bytes().to_vec(),
            body: Body::Query { id: self.id, method, want },
            version: None,
            ip: None,
            read_only: self.config.read_only,
        };
        self.out.push_back(Output::Send { to, bytes: m.encode() });
        true
    }

    /// `len`: the datagram's size.
    fn on_message(&mut self, now: Instant, from: A, m: Message, len: usize) {
        match m.body {
            Body::Query { id, method, want } => {
                if self.config.read_only {
                    return;
                }
                self.answer(now, from, m.tid, method, want, len);
                if !m.read_only {
                    // A node that queries us enters the table only once it answers us: ping it
                    // when it would get a place (once at a time per address, so its queries
                    // cannot make us ping at their rate).
                    let node = CompactNode { id, addr: from };
                    let asking = self.in_flight.values().any(|t| t.to == from);
                    if self.table.wants(&id) && !asking {
                        self.query(now, from, Some(id), Purpose::Ping, Method::Ping);
                    } else {
                        let _ = self.table.insert(now, node, Seen::Queried);
                    }
                }
            }
            Body::Response(r) => self.on_response(now, from, &m.tid, r, m.ip),
            Body::Error { .. } => self.on_error(now, from, &m.tid),
        }
    }

    fn take_transaction(&mut self, from: A, tid: &[u8]) -> Option<Transaction<A>> {
        let tid = u16::from_be_bytes(tid.try_into().ok()?);
        let t = self.in_flight.get(&tid)?;
        // An answer from another address than we asked is not an answer.
        if t.to != from {
            return None;
        }
        self.in_flight.remove(&tid)
    }

    /// `seen_as`: where the node says it saw us (BEP 42's `ip`).
    fn on_response(
        &mut self,
        now: Instant,
        from: A,
        tid: &[u8],
        r: Response,
        seen_as: Option<std::net::SocketAddr>,
    ) {
        let Some(t) = self.take_transaction(from, tid) else {
            return;
        };
        // The other try of a re-sent slow query is answered by this answer: forget it, so its
        // timeout does not count against a node that answered.
        if let Purpose::Lookup(lid) = t.purpose {
            let twins: Vec<u16> = self
                .in_flight
                .iter()
                .filter(|(_, x)| x.to == from && x.purpose == t.purpose)
                .map(|(&k, _)| k)
                .collect();
            for k in twins {
                if let Some(x) = self.in_flight.remove(&k) {
                    if let (false, Some(l)) = (x.slow, self.lookups.get_mut(&lid)) {
                        l.in_flight = l.in_flight.saturating_sub(1);
                    }
                }
            }
        }
        self.verify(from);
        let seen_as = seen_as.and_then(A::from_socket);
        if let (Some(ip), Purpose::Lookup(_)) = (seen_as, t.purpose) {
            self.vote(now, from, ip.host_ip());
        }
        self.sample_rtt(now.saturating_duration_since(t.sent));
        let Some(id) = r.id else {
            self.failed(now, t);
            return;
        };
        if t.node.is_some_and(|n| n != id) {
            // Not the node we asked: the answer does not count.
            self.failed(now, t);
            return;
        }
        let node = CompactNode { id, addr: from };
        if let Insert::PingFirst(stale, addr) = self.table.insert(now, node, Seen::Responded) {
            self.query(now, addr, Some(stale), Purpose::Ping, Method::Ping);
        }
        let Purpose::Lookup(lid) = t.purpose else {
            return;
        };
        let others = A::Other::nodes(&r);
        if self.config.want_both && !others.is_empty() {
            let fit = |n: &&CompactNode<A::Other>| n.addr.port_of() != 0 && n.addr.usable();
            let nodes: Vec<_> = others.iter().filter(fit).take(K).copied().collect();
            if !nodes.is_empty() {
                self.out.push_back(Output::OtherFamily(nodes));
            }
        }
        let own = self.id;
        let mut reask = None;
        if let Some(l) = self.lookups.get_mut(&lid) {
            if !t.slow {
                l.in_flight = l.in_flight.saturating_sub(1);
            }
            l.answers += 1;
            // How many referrals away the answering node was.
            let hop = l.candidates.get(&id.distance(&l.target)).map_or(1, |c| c.hop);
            if l.kind == Kind::Sample {
                let samples = r.samples.iter().take(MAX_SAMPLES * 5).copied().collect();
                l.sampled = Some((samples, r.num, r.interval));
                l.candidates.insert(id.distance(&l.target), Candidate::new(node, State::Answered));
                self.finish(now, lid);
                return;
            }
            if let (Kind::Scrape, Some(sd), Some(pe)) = (l.kind, &r.seeds_filter, &r.peers_filter) {
                // Kept per node; the result unites those of the closest (see `finish`). A
                // filter claiming more than BEP 33's limit is a lie or saturated: dropped.
                if sd.estimate() <= MAX_SCRAPE_ESTIMATE && pe.estimate() <= MAX_SCRAPE_ESTIMATE {
                    l.filters.insert(id.distance(&l.target), (**sd, **pe));
                    while l.filters.len() > MAX_CANDIDATES {
                        l.filters.pop_last();
                    }
                    l.found_at(now, hop);
                }
            }
            if l.kind == Kind::SampleAround {
                let (samples, num, _) = l.sampled.get_or_insert_with(Default::default);
                for s in &r.samples {
                    if samples.len() < MAX_LOOKUP_SAMPLES && !samples.contains(s) {
                        samples.push(*s);
                    }
                }
                if let Some(n) = r.num.filter(|&n| n > 0) {
                    *num = Some(num.unwrap_or(0).saturating_add(n));
                }
                if !r.samples.is_empty() {
                    l.found_at(now, hop);
                }
            }
            if let (Kind::GetMutable, Some((want_key, salt))) = (l.kind, &l.want) {
                if let (Some(k), Some(sig), Some(seq), Some(v)) = (r.key, r.sig, r.seq, &r.value) {
                    let item =
                        MutableItem { key: k, salt: salt.clone(), seq, value: v.clone(), sig };
                    let newer = l.mutable.as_ref().is_none_or(|m| seq > m.seq);
                    if k == *want_key && newer && item.verifies() {
                        l.mutable = Some(item);
                        l.found_at(now, hop);
                    }
                }
            }
            if l.kind == Kind::GetIndex {
                for it in r.items.iter().filter(|it| it.verifies()) {
                    add_item(&mut l.found, it.clone());
                    l.found_at(now, hop);
                }
            }
            if l.kind == Kind::GetItem {
                // An immutable item counts only if it hashes to the target.
                if let Some(v) = r.value.as_ref().filter(|v| item_target(v) == l.target) {
                    l.item = Some(v.clone());
                    l.found_at(now, hop);
                    self.finish(now, lid);
                    return;
                }
            }
            let key = id.distance(&l.target);
            let c = l.candidates.entry(key).or_insert(Candidate::new(node, State::New));
            c.state = State::Answered;
            c.token = r.token.clone();
            // A node that holds more entries than it gave a stranger is asked once more, with
            // its token: the proof that we receive at this address, for a full reply.
            // (One entry is what a stranger gets; a fuller reply was cut by size, not trust.)
            let more = r.items.len() <= 1 && r.num.is_some_and(|n| n > r.items.len() as i64);
            if let (Kind::GetIndex, true, false, Some(t)) = (l.kind, more, c.reasked, &r.token) {
                c.reasked = true;
                c.state = State::Asked;
                reask = Some((node, t.clone(), l.target));
            }
            for n in A::nodes(&r) {
                if n.id == own || n.addr.port_of() == 0 || !n.addr.usable() {
                    continue;
                }
                let key = n.id.distance(&l.target);
                let c = Candidate { hop: hop.saturating_add(1), ..Candidate::new(*n, State::New) };
                l.candidates.entry(key).or_insert(c);
            }
            while l.candidates.len() > MAX_CANDIDATES {
                l.candidates.pop_last();
            }
            let known = l.peers.len();
            for p in A::values(&r).iter().filter(|p| p.usable() && p.port_of() != 0) {
                if l.peers.len() < MAX_LOOKUP_PEERS && !l.peers.contains(p) {
                    l.peers.push(*p);
                    l.found_at(now, hop);
                }
            }
            if l.peers.len() > known {
                let peers = l.peers[known..].to_vec();
                self.out.push_back(Output::Peers { lookup: lid, peers });
            }
        }
        if let Some((node, token, target)) = reask {
            let method = Method::IndexGet { target, token: Some(token) };
            let sent = self.query(now, node.addr, Some(node.id), Purpose::Lookup(lid), method);
            if let Some(l) = self.lookups.get_mut(&lid) {
                if sent {
                    l.in_flight += 1;
                    l.queries += 1;
                } else if let Some(c) = l.candidates.get_mut(&node.id.distance(&target)) {
                    c.state = State::Answered;
                }
            }
        }
        self.step(now, lid);
    }

    fn on_error(&mut self, now: Instant, from: A, tid: &[u8]) {
        if let Some(t) = self.take_transaction(from, tid) {
            // An error is an answer: the node is alive, whatever it could not do for us (but a
            // ping answered with an error does not prove a stale entry good).
            let alive = t.purpose != Purpose::Ping;
            self.failed_as(now, t, alive);
        }
    }

    fn failed(&mut self, now: Instant, t: Transaction<A>) {
        self.failed_as(now, t, false);
    }

    /// A query that brought nothing. `alive`: the node answered (with an error), so the table
    /// does not count it against the node; nor does a timed-out try whose twin was answered.
    fn failed_as(&mut self, now: Instant, t: Transaction<A>, alive: bool) {
        let answered = match (t.purpose, t.node) {
            (Purpose::Lookup(lid), Some(n)) => self.lookups.get(&lid).is_some_and(|l| {
                l.candidates
                    .get(&n.distance(&l.target))
                    .is_some_and(|c| c.state == State::Answered || c.reasked)
            }),
            _ => false,
        };
        if let (Some(n), false, false) = (t.node, alive, answered) {
            self.table.failed(now, &n);
        }
        let Purpose::Lookup(lid) = t.purpose else {
            return;
        };
        if let Some(l) = self.lookups.get_mut(&lid) {
            if !t.slow {
                l.in_flight = l.in_flight.saturating_sub(1);
            }
            if let Some(n) = t.node {
                // Not while a second try of a slow query is awaited, nor once it answered.
                if let Some(c) = l.candidates.get_mut(&n.distance(&l.target)) {
                    if c.reasked {
                        // Its first answer stands.
                        c.state = State::Answered;
                    } else if (c.state == State::Asked && !t.slow) || c.state == State::Slow {
                        c.state = State::Failed;
                    }
                }
            }
        }
        self.step(now, lid);
    }

    fn tick(&mut self, now: Instant) {
        let timeout = self.config.query_timeout;
        let mut expired: Vec<u16> = self
            .in_flight
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(t.sent) >= timeout)
            .map(|(k, _)| *k)
            .collect();
        // In transaction order, not the hash map's, so a seeded run repeats exactly.
        expired.sort_unstable();
        for tid in expired {
            if let Some(t) = self.in_flight.remove(&tid) {
                self.failed(now, t);
            }
        }
        let slow_after = self.slow_after();
        let mut slowed = Vec::new();
        for (tid, t) in self.in_flight.iter_mut() {
            // Only queries to a known node (not a router's or a BEP 51 sample's) turn slow.
            if let (Purpose::Lookup(lid), false, true) = (t.purpose, t.slow, t.node.is_some()) {
                if now.saturating_duration_since(t.sent) >= slow_after {
                    t.slow = true;
                    slowed.push((*tid, lid, t.node));
                }
            }
        }
        slowed.sort_unstable_by_key(|(tid, _, _)| *tid);
        // A slow query is sent once more (the datagram may have been lost); a second slow
        // one leaves its node slow.
        for (_, lid, node) in slowed {
            let mut again = None;
            if let Some(l) = self.lookups.get_mut(&lid) {
                l.in_flight = l.in_flight.saturating_sub(1);
                let (target, kind) = (l.target, l.kind);
                let c = node.and_then(|n| l.candidates.get_mut(&n.distance(&target)));
                if let Some(c) = c.filter(|c| c.state == State::Asked) {
                    if c.reasked {
                        // A re-ask for more entries is not resent: the node answered already.
                        c.state = State::Answered;
                    } else if c.tries < 2 {
                        c.tries += 1;
                        again = Some((c.node, lookup_method(kind, target)));
                    } else {
                        c.state = State::Slow;
                    }
                }
            }
            if let Some((n, method)) = again {
                let sent = self.query(now, n.addr, Some(n.id), Purpose::Lookup(lid), method);
                if let Some(l) = self.lookups.get_mut(&lid) {
                    if sent {
                        l.in_flight += 1;
                        l.queries += 1;
                    } else if let Some(c) = l.candidates.get_mut(&n.id.distance(&l.target)) {
                        c.state = State::Slow;
                    }
                }
            }
            self.step(now, lid);
        }
        if now.saturating_duration_since(self.rotated) >= TOKEN_ROTATION {
            self.secrets[1] = self.secrets[0];
            self.rng.fill_bytes(&mut self.secrets[0]);
            self.rotated = now;
            let ttl = self.config.peer_ttl;
            for peers in self.stored.values_mut() {
                peers.retain(|(_, t, _)| now.saturating_duration_since(*t) < ttl);
            }
            self.stored.retain(|_, v| !v.is_empty());
            self.items.retain(|_, (_, t)| now.saturating_duration_since(*t) < ITEM_TTL);
            self.mutables.retain(|_, (_, t)| now.saturating_duration_since(*t) < ITEM_TTL);
            for entries in self.index.values_mut() {
                entries.retain(|(_, t, _)| now.saturating_duration_since(*t) < ITEM_TTL);
            }
            self.index.retain(|_, v| !v.is_empty());
            self.index_len = self.index.values().map(Vec::len).sum();
        }
        if now >= self.next_refresh {
            self.next_refresh = now + GOOD_FOR;
            let mut random = [0u8; 20];
            self.rng.fill(&mut random);
            for target in self.table.stale_buckets(now, GOOD_FOR, NodeId(random)) {
                let id = self.start(now, target, Kind::Refresh);
                self.step(now, id);
            }
        }
    }

    /// Whether `token` is one we gave `from` under the current or the previous secret.
    fn token_ok(&self, token: &[u8], from: &A) -> bool {
        token == self.token(0, from) || token == self.token(1, from)
    }

    fn token(&self, secret: usize, addr: &A) -> Vec<u8> {
        let mut h = Sha1::new();
        h.update(self.secrets[secret]);
        match addr.ip() {
            std::net::IpAddr::V4(ip) => h.update(ip.octets()),
            std::net::IpAddr::V6(ip) => h.update(ip.octets()),
        }
        h.finalize()[..8].to_vec()
    }

    /// Counts `voter`'s word that our address is `ip`; see "Our own id" in the module docs.
    fn vote(&mut self, now: Instant, voter: A, ip: A::Ip) {
        // One vote per network (IPv4 /24, IPv6 /48): an attacker needs addresses in many
        // networks, not many addresses.
        if !self.ip_voters.insert(voter.network()) {
            return;
        }
        let n = self.ip_tally.entry(ip).or_insert(0);
        *n += 1;
        let decided = *n >= IP_VOTES && 3 * *n as usize >= 2 * self.ip_voters.len();
        if decided || self.ip_voters.len() >= MAX_IP_VOTERS {
            self.ip_voters.clear();
            self.ip_tally.clear();
        }
        if !decided {
            return;
        }
        self.external = Some(ip);
        let ip: std::net::IpAddr = ip.into();
        if super::id::is_exempt_addr(ip) || self.id.is_valid_for_addr(ip) {
            return;
        }
        let id = NodeId::for_addr(ip, &mut self.rng);
        tracing::info!("external address {ip}: new BEP 42 node id {id}");
        let old = std::mem::replace(&mut self.table, RoutingTable::new(id));
        self.id = id;
        for node in old.nodes() {
            let _ = self.table.insert(now, node, Seen::Responded);
        }
    }

    /// Remembers that `addr` receives what we send it (see "No amplification").
    fn verify(&mut self, addr: A) {
        if self.verified.insert(addr) {
            self.verified_order.push_back(addr);
            if self.verified_order.len() > MAX_VERIFIED {
                if let Some(old) = self.verified_order.pop_front() {
                    self.verified.remove(&old);
                }
            }
        }
    }

    /// Answers a query of `len` bytes.
    fn answer(&mut self, now: Instant, from: A, tid: Vec<u8>, m: Method, want: Want, len: usize) {
        let mut r = Response { id: Some(self.id), ..Response::default() };
        // What the asker came for survives trimming longest (see "No amplification").
        let nodes_first = matches!(m, Method::GetPeers { .. } | Method::SampleInfohashes { .. });
        match m {
            Method::Ping => {}
            Method::FindNode { target } => self.give_nodes(&mut r, &target, want),
            Method::GetPeers { info_hash, scrape } => {
                r.token = Some(self.token(0, &from));
                // Peers if we have them (or, for a scrape, their bloom filters, as libtorrent
                // answers), and always the closest nodes (as libtorrent does), so the asker's
                // lookup goes on converging at a node that stores peers.
                // BEP 33: filters only from a node that stores the swarm.
                let stored = self.stored.get(&info_hash).filter(|v| !v.is_empty());
                if let (true, Some(peers)) = (scrape, stored) {
                    let (mut seeds, mut downloaders) =
                        (ScrapeFilter::default(), ScrapeFilter::default());
                    for (a, _, seed) in peers {
                        let f = if *seed { &mut seeds } else { &mut downloaders };
                        f.insert(a.ip());
                    }
                    r.seeds_filter = Some(Box::new(seeds));
                    r.peers_filter = Some(Box::new(downloaders));
                } else if !scrape {
                    *A::values_mut(&mut r) =
                        self.stored_peers(&info_hash).into_iter().take(MAX_REPLY_PEERS).collect();
                }
                self.give_nodes(&mut r, &info_hash, want);
            }
            Method::AnnouncePeer { info_hash, port, implied_port, token, seed } => {
                if !self.token_ok(&token, &from) {
                    self.error(from, tid, 203, "bad token");
                    return;
                }
                self.verify(from);
                let port = if implied_port { from.port_of() } else { port };
                if port == 0 {
                    self.error(from, tid, 203, "port 0");
                    return;
                }
                self.store(now, info_hash, A::new(from.host_ip(), port), seed);
            }
            Method::SampleInfohashes { target } => {
                let mut all: Vec<NodeId> = self.stored.keys().copied().collect();
                all.sort();
                let n = all.len();
                for i in 0..n.min(MAX_SAMPLES) {
                    let j = self.rng.random_range(i..n);
                    all.swap(i, j);
                }
                all.truncate(MAX_SAMPLES);
                r.samples = all;
                r.num = Some(n as i64);
                r.interval = Some(SAMPLE_INTERVAL_S);
                self.give_nodes(&mut r, &target, want);
            }
            Method::Get { target, seq } => {
                r.token = Some(self.token(0, &from));
                r.value = self.items.get(&target).map(|(v, _)| v.clone());
                if let Some((m, _)) = self.mutables.get(&target) {
                    r.seq = Some(m.seq);
                    // Only newer than what the asker has (BEP 44's `seq` in get).
                    if seq.is_none_or(|s| m.seq > s) {
                        (r.key, r.sig, r.value) = (Some(m.key), Some(m.sig), Some(m.value.clone()));
                    }
                }
                self.give_nodes(&mut r, &target, want);
            }
            Method::IndexGet { target, token } => {
                // Our token proves the asker receives at this address: a full reply.
                if token.is_some_and(|t| self.token_ok(&t, &from)) {
                    self.verify(from);
                }
                r.token = Some(self.token(0, &from));
                let stored = self.index.get(&target).map_or(&[][..], Vec::as_slice);
                r.num = Some(stored.len() as i64);
                let mut order: Vec<usize> = (0..stored.len()).collect();
                let n = order.len();
                for i in 0..n.min(MAX_ITEMS) {
                    let j = self.rng.random_range(i..n);
                    order.swap(i, j);
                }
                // One entry to an address that has not shown it receives what we send (as a
                // BEP 44 `get` carries one value), as many as fit otherwise.
                let max = if self.verified.contains(&from) { MAX_ITEMS } else { 1 };
                let mut size = 0;
                for &i in order.iter().take(max) {
                    let it = &stored[i].0;
                    if !r.items.is_empty() && size + it.wire_len() > INDEX_REPLY_BYTES {
                        break;
                    }
                    size += it.wire_len();
                    r.items.push(it.clone());
                }
                self.give_nodes(&mut r, &target, want);
            }
            Method::IndexPut { target, token, item } => {
                if !self.token_ok(&token, &from) {
                    self.error(from, tid, 203, "bad token");
                    return;
                }
                self.verify(from);
                if let Err((code, why)) = self.store_index(now, target, item, from) {
                    self.error(from, tid, code, why);
                    return;
                }
            }
            Method::Put(p) => {
                if !self.token_ok(&p.token, &from) {
                    self.error(from, tid, 203, "bad token");
                    return;
                }
                self.verify(from);
                match (p.key, p.sig, p.seq) {
                    (None, _, _) => self.store_item(now, p.value),
                    (Some(key), Some(sig), Some(seq)) => {
                        let item = MutableItem { key, salt: p.salt, seq, value: p.value, sig };
                        if let Err((code, why)) = self.store_mutable(now, item, p.cas) {
                            self.error(from, tid, code, why);
                            return;
                        }
                    }
                    _ => {
                        self.error(from, tid, 203, "a mutable put needs k, sig and seq");
                        return;
                    }
                }
            }
        }
        let encode = |r: &Response| {
            let body = Body::Response(r.clone());
            let ip = Some(from.into());
            Message { tid: tid.clone(), body, version: None, ip, read_only: false }.encode()
        };
        let mut bytes = encode(&r);
        // What cannot be cut (a BEP 44 value, BEP 33's filters) is not counted against the
        // cap, so it does not push the nodes out.
        let filters = [&r.seeds_filter, &r.peers_filter].iter().filter(|f| f.is_some()).count();
        let uncut = r.value.as_ref().map_or(0, |v| v.encode().len() + 4)
            + filters * 266
            + r.items.iter().map(MutableItem::wire_len).sum::<usize>();
        // IPv6 nodes are 12 bytes longer: the cap grows by that for K of them, so a reply
        // carries as many nodes over either family.
        let v6_extra = K * (A::COMPACT_NODE - SocketAddrV4::COMPACT_NODE);
        let cap = (AMPLIFICATION * len + v6_extra).max(uncut + UNCUT_OVERHEAD);
        if bytes.len() > cap && !self.verified.contains(&from) {
            self.trimmed += 1;
            while bytes.len() > cap {
                // Each entry's share of the excess, rounded up: nodes are 26 bytes (38 for
                // IPv6), samples 20, peers 6 or 18 (plus a length prefix each). The other
                // family's nodes (BEP 32's `want`) go first.
                let over = bytes.len() - cap;
                let cut = |n: usize, size: usize| n.saturating_sub(over.div_ceil(size));
                let (node, peer) = (A::COMPACT_NODE, A::COMPACT_ADDR + 2);
                let nodes = A::nodes(&r).len();
                if !A::Other::nodes(&r).is_empty() {
                    let n = A::Other::nodes(&r).len();
                    A::Other::nodes_mut(&mut r).truncate(cut(n, A::Other::COMPACT_NODE));
                } else if nodes_first && nodes > 0 {
                    A::nodes_mut(&mut r).truncate(cut(nodes, node));
                } else if !A::values(&r).is_empty() {
                    let n = A::values(&r).len();
                    A::values_mut(&mut r).truncate(cut(n, peer));
                } else if !r.samples.is_empty() {
                    r.samples.truncate(cut(r.samples.len(), 20));
                } else if nodes > 0 {
                    A::nodes_mut(&mut r).truncate(cut(nodes, node));
                } else {
                    break;
                }
                bytes = encode(&r);
            }
        }
        self.out.push_back(Output::Send { to: from, bytes });
    }

    /// Fills a reply's nodes closest to `target`: of the families `want` names (BEP 32), or of
    /// ours when it names none.
    fn give_nodes(&self, r: &mut Response, target: &NodeId, want: Want) {
        let ours = A::IPV4;
        let (mine, other) = match (want.n4, want.n6) {
            (false, false) => (true, false),
            (n4, n6) => (if ours { n4 } else { n6 }, if ours { n6 } else { n4 }),
        };
        if mine {
            *A::nodes_mut(r) = self.table.closest(target, K);
        }
        if other && !self.foreign.is_empty() {
            let mut all = self.foreign.clone();
            if all.len() > K {
                all.select_nth_unstable_by_key(K, |n| n.id.distance(target));
                all.truncate(K);
            }
            all.sort_by_key(|n| n.id.distance(target));
            *A::Other::nodes_mut(r) = all;
        }
    }

    /// Checks and stores a mutable put (BEP 44's errors: 206 bad signature, 301 CAS mismatch,
    /// 302 an older `seq`).
    fn store_mutable(
        &mut self,
        now: Instant,
        item: MutableItem,
        cas: Option<i64>,
    ) -> Result<(), (i64, &'static str)> {
        if !item.verifies() {
            return Err((206, "invalid signature"));
        }
        let target = MutableItem::target(&item.key, &item.salt);
        if let Some((old, _)) = self.mutables.get(&target) {
            if cas.is_some_and(|c| c != old.seq) {
                return Err((301, "CAS mismatch"));
            }
            if item.seq < old.seq || (item.seq == old.seq && item.value != old.value) {
                return Err((302, "sequence number less than current"));
            }
        } else if self.items.len() + self.mutables.len() >= self.config.max_items {
            let oldest = self.mutables.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k);
            match oldest {
                Some(k) => {
                    self.mutables.remove(&k);
                }
                None => return Err((201, "storage full")),
            }
        }
        self.mutables.insert(target, (item, now));
        Ok(())
    }

    /// Checks and stores a keyword index entry put from `from` (BEP 44's errors: 206 bad
    /// signature, 302 an older `seq`; 201 when the target's share for that host is used up).
    fn store_index(
        &mut self,
        now: Instant,
        target: NodeId,
        item: MutableItem,
        from: A,
    ) -> Result<(), (i64, &'static str)> {
        if !item.verifies() {
            return Err((206, "invalid signature"));
        }
        let host = from.network();
        // Private, link-local and loopback addresses (BEP 42's exemptions) are a LAN group's
        // own: the caps count public networks.
        let exempt = super::id::is_exempt_addr(from.ip());
        if !exempt {
            let all = self.index.values().flatten().filter(|e| e.2 == host).count();
            let replaces = self
                .index
                .get(&target)
                .is_some_and(|v| v.iter().any(|e| e.0.key == item.key && e.0.salt == item.salt));
            if all >= MAX_INDEX_PER_NETWORK && !replaces {
                return Err((201, "too many entries from one network"));
            }
        }
        let entries = self.index.entry(target).or_default();
        if let Some(e) = entries.iter_mut().find(|e| e.0.key == item.key && e.0.salt == item.salt) {
            if item.seq < e.0.seq || (item.seq == e.0.seq && item.value != e.0.value) {
                return Err((302, "sequence number less than current"));
            }
            *e = (item, now, host);
            return Ok(());
        }
        if !exempt && entries.iter().filter(|e| e.2 == host).count() >= MAX_INDEX_PER_HOST {
            return Err((201, "too many entries from one network"));
        }
        if entries.len() >= MAX_INDEX_PER_TARGET {
            // The oldest entry of the keyword makes room.
            let oldest = entries.iter().enumerate().min_by_key(|(_, e)| e.1).map(|(i, _)| i);
            if let Some(i) = oldest {
                entries.swap_remove(i);
                self.index_len -= 1;
            }
        } else if self.index_len >= self.config.max_index {
            // The oldest entry of all makes room.
            let oldest = self
                .index
                .iter()
                .flat_map(|(t, v)| v.iter().enumerate().map(move |(i, e)| (e.1, *t, i)))
                .min();
            if let Some((_, t, i)) = oldest {
                if let Some(v) = self.index.get_mut(&t) {
                    v.swap_remove(i);
                    self.index_len -= 1;
                    if v.is_empty() && t != target {
                        self.index.remove(&t);
                    }
                }
            }
        }
        self.index.entry(target).or_default().push((item, now, host));
        self.index_len += 1;
        Ok(())
    }

    fn store_item(&mut self, now: Instant, value: Value) {
        let target = item_target(&value);
        if !self.items.contains_key(&target)
            && self.items.len() + self.mutables.len() >= self.config.max_items
        {
            // The oldest item makes room.
            let oldest = self.items.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.items.remove(&k);
            }
        }
        self.items.insert(target, (value, now));
    }

    fn store(&mut self, now: Instant, info_hash: NodeId, peer: A, seed: bool) {
        if !self.stored.contains_key(&info_hash) && self.stored.len() >= self.config.max_torrents {
            return;
        }
        let max = self.config.max_peers;
        let peers = self.stored.entry(info_hash).or_default();
        if let Some(p) = peers.iter_mut().find(|(a, ..)| *a == peer) {
            (p.1, p.2) = (now, seed);
            return;
        }
        if peers.len() >= max {
            // The oldest announcement makes room.
            let oldest = peers.iter().enumerate().min_by_key(|(_, (_, t, _))| *t).map(|(i, _)| i);
            if let Some(i) = oldest {
                peers.swap_remove(i);
            }
        }
        peers.push((peer, now, seed));
    }

    fn error(&mut self, to: A, tid: Vec<u8>, code: i64, message: &str) {
        let m = Message {
            tid,
            body: Body::Error { code, message: message.to_string() },
            version: None,
            ip: None,
            read_only: false,
        };
        self.out.push_back(Output::Send { to, bytes: m.encode() });
    }
}

/// The query a lookup of `kind` sends.
fn lookup_method(kind: Kind, target: NodeId) -> Method {
    match kind {
        Kind::FindNode | Kind::Refresh => Method::FindNode { target },
        Kind::GetPeers | Kind::Announce { .. } => {
            Method::GetPeers { info_hash: target, scrape: false }
        }
        Kind::Scrape => Method::GetPeers { info_hash: target, scrape: true },
        Kind::Sample | Kind::SampleAround => Method::SampleInfohashes { target },
        Kind::GetItem | Kind::PutItem | Kind::GetMutable | Kind::PutMutable => {
            Method::Get { target, seq: None }
        }
        Kind::GetIndex | Kind::PutIndex => Method::IndexGet { target, token: None },
    }
}

/// Adds a keyword index entry to a lookup's gathered `items`: one per key and salt, the newest
/// `seq` kept, at most [`MAX_LOOKUP_ITEMS`].
fn add_item(items: &mut Vec<MutableItem>, it: MutableItem) {
    if let Some(x) = items.iter_mut().find(|x| x.key == it.key && x.salt == it.salt) {
        if it.seq > x.seq {
            *x = it;
        }
    } else if items.len() < MAX_LOOKUP_ITEMS {
        items.push(it);
    }
}

/// The keyword index target of a word: SHA-1 of `swarmcast-kw:` and the word (normalized by
/// the caller: the search core's rules).
pub fn index_target(word: &str) -> NodeId {
    let mut h = Sha1::new();
    h.update(b"swarmcast-kw:");
    h.update(word.as_bytes());
    NodeId(h.finalize().into())
}

/// The target of an immutable item: the SHA-1 of its bencoding (BEP 44).
pub fn item_target(value: &Value) -> NodeId {
    NodeId(Sha1::digest(value.encode()).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use std::net::Ipv4Addr;

    type Core = DhtCore<ChaCha8Rng>;

    fn addr(i: usize) -> SocketAddrV4 {
        at(i)
    }

    /// Node `i`'s address in a test network: loopback of the family, port 10000+i.
    fn at<A: NodeAddr>(i: usize) -> A {
        let ip: std::net::IpAddr =
            if A::IPV4 { Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() };
        A::from_socket((ip, 10_000 + i as u16).into()).expect("the family's loopback")
    }

    /// Cores on 127.0.0.1:10000+i (or [::1]), datagrams delivered in order, time virtual; an
    /// address with no core (`dead`) swallows what is sent to it.
    struct Net<A: NodeAddr = SocketAddrV4> {
        nodes: Vec<DhtCore<ChaCha8Rng, A>>,
        dead: Vec<bool>,
        now: Instant,
        done: Vec<(usize, LookupResult<A>)>,
        sent: usize,
    }

    impl<A: NodeAddr> Net<A> {
        fn new(n: usize, seed: u64) -> Self {
            let now = Instant::now();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let nodes = (0..n)
                .map(|i| {
                    let id = NodeId::random(&mut rng);
                    DhtCore::new(
                        now,
                        id,
                        Config::default(),
                        ChaCha8Rng::seed_from_u64(seed ^ i as u64),
                    )
                })
                .collect();
            Net { nodes, dead: vec![false; n], now, done: Vec::new(), sent: 0 }
        }

        /// Runs until no datagram moves and no query waits (timeouts included).
        fn settle(&mut self) {
            for _ in 0..10_000 {
                let mut moved = false;
                for i in 0..self.nodes.len() {
                    while let Some(o) = self.nodes[i].poll() {
                        match o {
                            Output::Send { to, bytes } => {
                                self.sent += 1;
                                moved = true;
                                let j = (to.port_of() - 10_000) as usize;
                                if j < self.nodes.len() && !self.dead[j] {
                                    let input = Input::Datagram { from: at(i), bytes: &bytes };
                                    self.nodes[j].handle(self.now, input);
                                }
                            }
                            Output::Done(r) => self.done.push((i, *r)),
                            Output::Peers { .. } | Output::OtherFamily(_) => {}
                        }
                    }
                }
                if moved {
                    continue;
                }
                if self.nodes.iter().all(|n| n.in_flight() == 0) {
                    return;
                }
                // Jump to the earliest query timeout.
                let next = self
                    .nodes
                    .iter()
                    .filter(|n| n.in_flight() > 0)
                    .filter_map(|n| n.next_deadline())
                    .min();
                self.now = next.expect("a deadline while queries wait").max(self.now);
                for n in &mut self.nodes {
                    n.handle(self.now, Input::Tick);
                }
            }
            panic!("the network did not settle");
        }

        fn result(&self, node: usize, id: LookupId) -> &LookupResult<A> {
            &self.done.iter().find(|(n, r)| *n == node && r.id == id).expect("lookup finished").1
        }

        /// Every live node bootstraps from node 0, one after another.
        fn join_all(&mut self) {
            for i in 1..self.nodes.len() {
                if !self.dead[i] {
                    let now = self.now;
                    self.nodes[i].bootstrap(now, &[at(0)]);
                    self.settle();
                }
            }
        }
    }

    #[test]
    fn a_peer_announced_at_one_node_is_found_from_another() {
        announced_peer_found::<SocketAddrV4>();
    }

    #[test]
    fn a_peer_announced_over_ipv6_is_found_over_ipv6() {
        announced_peer_found::<std::net::SocketAddrV6>();
    }

    /// The same lookups over IPv4 or IPv6 (BEP 32: `nodes6`, 18-byte `values`).
    fn announced_peer_found<A: NodeAddr>() {
        let mut net = Net::<A>::new(60, 1);
        net.join_all();
        assert!(net.nodes.iter().all(|n| n.table().len() >= 8), "every node knows some nodes");
        let info_hash = NodeId([0x5a; 20]);
        let now = net.now;
        let a = net.nodes[7].announce(now, info_hash, 7777);
        net.settle();
        assert!(net.result(7, a).announced_to >= 7, "{:?}", net.result(7, a));
        let now = net.now;
        let g = net.nodes[42].get_peers(now, info_hash);
        net.settle();
        let found = net.result(42, g);
        let mut peer = at::<A>(0).into();
        peer.set_port(7777);
        assert_eq!(found.peers, vec![A::from_socket(peer).unwrap()]);
        // The lookup found the true closest nodes (of all 60, node 42 excluded).
        let mut all: Vec<NodeId> =
            (0..60).filter(|&i| i != 42).map(|i| net.nodes[i].id()).collect();
        all.sort_by_key(|id| id.distance(&info_hash));
        let got: Vec<NodeId> = found.nodes.iter().map(|n| n.id).collect();
        let hits = all[..K].iter().filter(|id| got.contains(id)).count();
        assert!(hits >= 7, "found {hits} of the true {K} closest");
        // A get_peers for a swarm nobody announced finds no peer, and ends.
        let now = net.now;
        let none = net.nodes[3].get_peers(now, NodeId([0x11; 20]));
        net.settle();
        assert!(net.result(3, none).peers.is_empty());
    }

    #[test]
    fn dead_nodes_time_out_and_lookups_still_end() {
        let mut net: Net = Net::new(40, 2);
        net.join_all();
        // A quarter of the nodes crash.
        for i in (1..40).step_by(4) {
            net.dead[i] = true;
        }
        let target = NodeId([0xc3; 20]);
        let now = net.now;
        let l = net.nodes[2].find_node(now, target);
        let start = net.now;
        net.settle();
        let r = net.result(2, l);
        assert!(!r.nodes.is_empty());
        assert!(
            r.nodes.iter().all(|n| !net.dead[(n.addr.port() - 10_000) as usize]),
            "a dead node answered"
        );
        // Bounded by timeouts: each round of α queries waits at most one timeout.
        assert!(net.now.duration_since(start) <= Duration::from_secs(60));
    }

    fn query(from_id: NodeId, method: Method) -> Vec<u8> {
        Message {
            tid: b"xy".to_vec(),
            body: Body::Query { id: from_id, method, want: Default::default() },
            version: None,
            ip: None,
            read_only: false,
        }
        .encode()
    }

    fn replies(core: &mut Core) -> Vec<(SocketAddrV4, Message)> {
        let mut out = Vec::new();
        while let Some(o) = core.poll() {
            if let Output::Send { to, bytes } = o {
                out.push((to, Message::decode(&bytes).unwrap()));
            }
        }
        out
    }

    #[test]
    fn a_join_through_more_addresses_than_may_be_in_flight_still_ends() {
        let now = Instant::now();
        let mut core =
            Core::new(now, NodeId([1; 20]), Config::default(), ChaCha8Rng::seed_from_u64(5));
        let silent = |i: u32| SocketAddrV4::new(Ipv4Addr::from(0x0b00_0000 + i), 6881);
        let routers: Vec<SocketAddrV4> = (0..1_000).map(silent).collect();
        let join = core.bootstrap(now, &routers);
        let sent = std::iter::from_fn(|| core.poll()).count();
        assert_eq!(sent, MAX_IN_FLIGHT, "the rest are not asked");
        // Nobody answers: after the timeout the lookup ends (before, it waited forever).
        let later = now + Config::default().query_timeout;
        core.handle(later, Input::Tick);
        let done = std::iter::from_fn(|| core.poll())
            .any(|o| matches!(o, Output::Done(r) if r.id == join && r.nodes.is_empty()));
        assert!(done, "the join ended");
        // A warm start from 1,000 saved nodes asks the closest, α at a time.
        let saved: Vec<CompactNode> = (0..1_000u32)
            .map(|i| CompactNode { id: NodeId::random(&mut rand::rng()), addr: silent(i) })
            .collect();
        core.bootstrap_from(later, &saved);
        let asked = std::iter::from_fn(|| core.poll()).count();
        assert_eq!(asked, Config::default().alpha);
    }

    #[test]
    fn want_chooses_the_families_of_the_nodes_a_reply_carries() {
        use std::net::SocketAddrV6;
        let now = Instant::now();
        let rng = || ChaCha8Rng::seed_from_u64(4);
        let mut v4 = Core::new(now, NodeId([1; 20]), Config::default(), rng());
        let mut v6: DhtCore<ChaCha8Rng, SocketAddrV6> =
            DhtCore::new(now, NodeId([1; 20]), Config::default(), rng());
        for i in 0..20u8 {
            let id = NodeId([i + 10; 20]);
            v4.add_responded(now, CompactNode { id, addr: at(100 + i as usize) });
            v6.add_responded(now, CompactNode { id, addr: at(100 + i as usize) });
        }
        // The driver hands each core the other's nodes.
        v4.set_foreign_nodes(v6.table().nodes());
        v6.set_foreign_nodes(v4.table().nodes());
        let ask = |want: Want| {
            Message {
                tid: b"xy".to_vec(),
                body: Body::Query {
                    id: NodeId([2; 20]),
                    method: Method::FindNode { target: NodeId([12; 20]) },
                    want,
                },
                version: None,
                ip: None,
                read_only: false,
            }
            .encode()
        };
        let answer4 = |core: &mut Core, want: Want| {
            core.handle(now, Input::Datagram { from: at(1), bytes: &ask(want) });
            let Body::Response(r) = replies(core).remove(0).1.body else { panic!() };
            (r.nodes.len(), r.nodes6.len(), r.nodes6.first().map(|n| n.id))
        };
        // No `want`: the family the query came over.
        assert_eq!(answer4(&mut v4, Want::default()), (K, 0, None));
        // `n6` alone, and both; the closest of the other family first.
        let n6 = Want { n4: false, n6: true };
        assert_eq!(answer4(&mut v4, n6), (0, K, Some(NodeId([12; 20]))));
        // Both, to an unverified asker: the reply stays within 4x the query, the other
        // family's nodes cut first.
        let (n4, n6, first) = answer4(&mut v4, Want { n4: true, n6: true });
        assert_eq!((n4, first), (K, Some(NodeId([12; 20]))));
        assert!((1..K).contains(&n6), "{n6} IPv6 nodes");
        // An IPv6 core answers IPv6 nodes by default, IPv4 ones when asked.
        let from: SocketAddrV6 = at(1);
        let mut answer6 = |want: Want| {
            v6.handle(now, Input::Datagram { from, bytes: &ask(want) });
            let sent: Vec<_> = std::iter::from_fn(|| v6.poll()).collect();
            sent.into_iter()
                .find_map(|o| match o {
                    Output::Send { to, bytes } if to == from => {
                        let m = Message::decode(&bytes).unwrap();
                        matches!(m.body, Body::Response(_)).then_some(m)
                    }
                    _ => None,
                })
                .expect("a reply")
        };
        let m = answer6(Want::default());
        assert_eq!(m.ip, Some(from.into()), "BEP 42's ip, 18 bytes");
        let Body::Response(r) = m.body else { panic!() };
        assert_eq!((r.nodes.len(), r.nodes6.len()), (0, K));
        assert!(r.nodes6.iter().all(|n| n.addr.ip().is_loopback()));
        let Body::Response(r) = answer6(Want { n4: true, n6: false }).body else { panic!() };
        assert_eq!((r.nodes.len(), r.nodes6.len()), (K, 0));
    }

    #[test]
    fn tokens_bind_to_the_address_and_expire() {
        let now = Instant::now();
        let mut core =
            Core::new(now, NodeId([1; 20]), Config::default(), ChaCha8Rng::seed_from_u64(3));
        let ih = NodeId([9; 20]);
        let alice = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 5000);
        let mallory = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 5000);
        core.handle(
            now,
            Input::Datagram {
                from: alice,
                bytes: &query(NodeId([2; 20]), Method::GetPeers { info_hash: ih, scrape: false }),
            },
        );
        let r = replies(&mut core);
        let Body::Response(resp) = &r[0].1.body else { panic!("{r:?}") };
        assert_eq!(r[0].1.ip, Some(alice.into()), "BEP 42: the reply says where it saw us");
        let token = resp.token.clone().unwrap();
        let announce = |token: Vec<u8>| {
            query(
                NodeId([3; 20]),
                Method::AnnouncePeer {
                    info_hash: ih,
                    port: 6881,
                    implied_port: false,
                    token,
                    seed: false,
                },
            )
        };
        // Alice's token from Mallory's address: refused.
        core.handle(now, Input::Datagram { from: mallory, bytes: &announce(token.clone()) });
        assert!(matches!(replies(&mut core)[0].1.body, Body::Error { code: 203, .. }));
        assert!(core.stored_peers(&ih).is_empty());
        // From Alice: stored.
        core.handle(now, Input::Datagram { from: alice, bytes: &announce(token.clone()) });
        assert!(matches!(replies(&mut core)[0].1.body, Body::Response(_)));
        assert_eq!(core.stored_peers(&ih), vec![SocketAddrV4::new(*alice.ip(), 6881)]);
        // Two rotations later the token is dead.
        let later = now + TOKEN_ROTATION * 2 + Duration::from_secs(1);
        core.handle(now + TOKEN_ROTATION, Input::Tick);
        core.handle(later, Input::Tick);
        core.handle(later, Input::Datagram { from: alice, bytes: &announce(token) });
        assert!(matches!(replies(&mut core)[0].1.body, Body::Error { code: 203, .. }));
        // implied_port: the sender's own port counts.
        core.handle(
            later,
            Input::Datagram {
                from: alice,
                bytes: &query(NodeId([2; 20]), Method::GetPeers { info_hash: ih, scrape: false }),
            },
        );
        let Body::Response(resp) = &replies(&mut core)[0].1.body else { panic!() };
        let implied = query(
            NodeId([3; 20]),
            Method::AnnouncePeer {
                info_hash: ih,
                port: 1,
                implied_port: true,
                token: resp.token.clone().unwrap(),
                seed: false,
            },
        );
        core.handle(later, Input::Datagram { from: alice, bytes: &implied });
        replies(&mut core);
        assert!(core.stored_peers(&ih).contains(&alice));
        // An unknown method gets error 204; garbage gets nothing.
        core.handle(
            later,
            Input::Datagram {
                from: alice,
                bytes: b"d1:ad2:id20:abcdefghij0123456789e1:q4:vote1:t2:ab1:y1:qe",
            },
        );
        assert!(matches!(replies(&mut core)[0].1.body, Body::Error { code: 204, .. }));
        core.handle(later, Input::Datagram { from: alice, bytes: b"\xff\x00garbage" });
        assert!(replies(&mut core).is_empty());
    }

    #[test]
    fn an_immutable_item_put_at_one_node_is_got_from_another_and_checked() {
        let mut net: Net = Net::new(30, 8);
        net.join_all();
        let value = Value::Bytes(b"Hello World!".to_vec());
        let now = net.now;
        let (target, put) = net.nodes[4].put_item(now, value.clone());
        net.settle();
        // BEP 44's test vector: the SHA-1 of "12:Hello World!".
        assert_eq!(target.to_string(), "e5f96f6f38320f0f33959cb4d3d656452117aadb");
        assert!(net.result(4, put).announced_to >= 7);
        let now = net.now;
        let got = net.nodes[21].get_item(now, target);
        net.settle();
        assert_eq!(net.result(21, got).value, Some(value));
        // A node that returns another value under the target is not believed.
        let holder = (0..30).find(|&i| net.nodes[i].items.contains_key(&target)).unwrap();
        net.nodes[holder].items.insert(target, (Value::Bytes(b"forged".to_vec()), net.now));
        for i in 0..30 {
            if i != holder {
                net.nodes[i].items.clear();
            }
        }
        let now = net.now;
        let got = net.nodes[21].get_item(now, target);
        net.settle();
        assert_eq!(net.result(21, got).value, None);
    }

    fn signed(key: &ed25519_dalek::SigningKey, salt: &[u8], seq: i64, text: &str) -> MutableItem {
        use ed25519_dalek::Signer;
        let value = Value::Bytes(text.as_bytes().to_vec());
        let sig = key.sign(&MutableItem::signed_bytes(salt, seq, &value)).to_bytes();
        MutableItem { key: key.verifying_key().to_bytes(), salt: salt.to_vec(), seq, value, sig }
    }

    #[test]
    fn bep44_test_vector_1_verifies() {
        // BEP 44's test vector 1: mutable, no salt, seq 1, "Hello World!".
        let h = |s: &str| hex::decode(s).unwrap();
        let item = MutableItem {
            key: h("77ff84905a91936367c01360803104f92432fcd904a43511876df5cdf3e7e548")
                .try_into()
                .unwrap(),
            salt: vec![],
            seq: 1,
            value: Value::Bytes(b"Hello World!".to_vec()),
            sig: h("305ac8aeb6c9c151fa120f120ea2cfb923564e11552d06a5d856091e5e853cff\
                    1260d3f39e4999684aa92eb73ffd136e6f4f3ecbfda0ce53a1608ecd7ae21f01")
            .try_into()
            .unwrap(),
        };
        assert_eq!(MutableItem::signed_bytes(b"", 1, &item.value), b"3:seqi1e1:v12:Hello World!");
        assert_eq!(
            MutableItem::target(&item.key, b"").to_string(),
            "4a533d47ec9c7d95b1ad75f576cffc641853b750"
        );
        assert!(item.verifies());
        let mut tampered = item.clone();
        tampered.seq = 2;
        assert!(!tampered.verifies(), "the signature covers seq");
    }

    #[test]
    fn a_mutable_item_is_found_newest_first_and_stale_or_forged_puts_refused() {
        let mut net: Net = Net::new(30, 9);
        net.join_all();
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let pk = key.verifying_key().to_bytes();
        for (seq, text) in [(1, "first"), (2, "second")] {
            let now = net.now;
            let put = net.nodes[5].put_mutable(now, signed(&key, b"salty", seq, text));
            net.settle();
            assert!(net.result(5, put).announced_to >= 7);
        }
        let now = net.now;
        let got = net.nodes[17].get_mutable(now, pk, b"salty".to_vec());
        net.settle();
        let found = net.result(17, got).mutable.clone().expect("found");
        assert_eq!((found.seq, found.value), (2, Value::Bytes(b"second".to_vec())));
        // Another salt is another item: nothing there.
        let now = net.now;
        let other = net.nodes[17].get_mutable(now, pk, b"pepper".to_vec());
        net.settle();
        assert!(net.result(17, other).mutable.is_none());
        // A holder refuses an older seq, a bad signature and a failed CAS.
        let target = MutableItem::target(&pk, b"salty");
        let holder = (0..30).find(|&i| net.nodes[i].mutables.contains_key(&target)).unwrap();
        let n = &mut net.nodes[holder];
        assert_eq!(
            n.store_mutable(now, signed(&key, b"salty", 1, "old"), None),
            Err((302, "sequence number less than current"))
        );
        let mut forged = signed(&key, b"salty", 3, "third");
        forged.value = Value::Bytes(b"forged".to_vec());
        assert_eq!(n.store_mutable(now, forged, None).unwrap_err().0, 206);
        assert_eq!(
            n.store_mutable(now, signed(&key, b"salty", 3, "third"), Some(1)).unwrap_err().0,
            301
        );
        assert_eq!(n.store_mutable(now, signed(&key, b"salty", 3, "third"), Some(2)), Ok(()));
    }

    /// Publisher `n`'s entry under a keyword: its own key, salted with what it names.
    fn entry(n: u8, seq: i64) -> MutableItem {
        let key = ed25519_dalek::SigningKey::from_bytes(&[n; 32]);
        signed(&key, format!("file-{n}").as_bytes(), seq, &format!("record of file {n}"))
    }

    #[test]
    fn a_keyword_gathers_the_entries_of_its_publishers_and_nothing_forged() {
        let mut net: Net = Net::new(40, 11);
        net.join_all();
        let caravan = index_target("caravan");
        // Six publishers (a reply holds them all), each from its own node.
        for n in 1..=6u8 {
            let now = net.now;
            let put = net.nodes[usize::from(n)].index_put(now, caravan, entry(n, 1));
            net.settle();
            assert!(net.result(usize::from(n), put).announced_to >= 7);
        }
        // Publisher 3 puts again with a newer record: one entry, the newest.
        let now = net.now;
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let newer = signed(&key, b"file-3", 2, "record of file 3, renamed");
        net.nodes[3].index_put(now, caravan, newer.clone());
        net.settle();
        // A holder given a forged entry behind the checks: no asker counts it.
        let holder = (0..40).find(|&i| net.nodes[i].index.contains_key(&caravan)).unwrap();
        let mut forged = entry(9, 1);
        forged.value = Value::Bytes(b"forged".to_vec());
        net.nodes[holder].index.get_mut(&caravan).unwrap().push((forged, now, 0));
        let got = net.nodes[30].index_get(now, caravan);
        net.settle();
        let mut items = net.result(30, got).items.clone();
        items.sort_by_key(|i| i.salt.clone());
        let mut want: Vec<MutableItem> = (1..=6u8).map(|n| entry(n, 1)).collect();
        want[2] = newer;
        assert_eq!(items, want);
        // Another word is another target: nothing there.
        let now = net.now;
        let got = net.nodes[30].index_get(now, index_target("glacier"));
        net.settle();
        assert!(net.result(30, got).items.is_empty());
    }

    #[test]
    fn a_newcomer_sees_more_of_a_popular_keyword_than_one_reply_holds() {
        let mut net: Net = Net::new(41, 12);
        net.dead[40] = true;
        net.join_all();
        let word = index_target("mp4");
        for n in 1..=30u8 {
            let now = net.now;
            net.nodes[usize::from(n)].index_put(now, word, entry(n, 1));
            net.settle();
        }
        // A node that joins now: no holder has seen it answer, so first replies carry one
        // entry each; the holders are asked again with their tokens.
        net.dead[40] = false;
        let now = net.now;
        net.nodes[40].bootstrap(now, &[at(0)]);
        net.settle();
        let now = net.now;
        let got = net.nodes[40].index_get(now, word);
        net.settle();
        let r = net.result(40, got);
        assert!(r.items.len() > K && r.items.len() <= 30, "{}", r.items.len());
    }

    #[test]
    fn the_index_refuses_forged_stale_and_excess_entries_and_forgets_old_ones() {
        let now = Instant::now();
        let mut core =
            Core::new(now, NodeId([1; 20]), Config::default(), ChaCha8Rng::seed_from_u64(1));
        let word = index_target("caravan");
        let host = |h: u8, port: u16| SocketAddrV4::new(Ipv4Addr::new(20, 0, 0, h), port);
        let mut forged = entry(1, 1);
        forged.seq = 5;
        assert_eq!(core.store_index(now, word, forged, host(1, 1)).unwrap_err().0, 206);
        assert_eq!(core.store_index(now, word, entry(1, 2), host(1, 1)), Ok(()));
        assert_eq!(core.store_index(now, word, entry(1, 1), host(1, 1)).unwrap_err().0, 302);
        // One network has room for MAX_INDEX_PER_HOST entries under one word, from any port.
        for n in 2..=MAX_INDEX_PER_HOST as u8 {
            assert_eq!(core.store_index(now, word, entry(n, 1), host(1, u16::from(n))), Ok(()));
        }
        let excess = core.store_index(now, word, entry(50, 1), host(1, 9));
        assert_eq!(excess.unwrap_err().0, 201);
        let neighbour = core.store_index(now, word, entry(50, 1), host(77, 9));
        assert_eq!(neighbour.unwrap_err().0, 201, "another address of the same /24");
        // A LAN group (private addresses) is not one network to the caps.
        let lan = index_target("lan");
        for n in 1..=10u8 {
            let from = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, n), 9);
            assert_eq!(core.store_index(now, lan, entry(n, 1), from), Ok(()));
        }
        core.index.remove(&lan);
        core.index_len -= 10;
        // A word holds at most MAX_INDEX_PER_TARGET entries: the oldest make room.
        for n in 0..100u8 {
            let later = now + Duration::from_secs(u64::from(n) + 1);
            let other = SocketAddrV4::new(Ipv4Addr::new(20, 1, n, 1), 1);
            core.store_index(later, word, entry(100 + n, 1), other).unwrap();
        }
        assert_eq!(core.index[&word].len(), MAX_INDEX_PER_TARGET);
        assert_eq!(core.index_len(), MAX_INDEX_PER_TARGET);
        // All words together hold at most `max_index`.
        core.config.max_index = 80;
        for n in 0..40u8 {
            let w = index_target(&format!("word{n}"));
            let other = SocketAddrV4::new(Ipv4Addr::new(20, 2, n, 1), 2);
            core.store_index(now, w, entry(n, 1), other).unwrap();
        }
        assert_eq!(core.index_len(), 80);
        assert_eq!(core.index.values().map(Vec::len).sum::<usize>(), 80);
        assert!(core.index.values().all(|v| !v.is_empty()), "no empty word is kept");
        // One network has room for MAX_INDEX_PER_NETWORK entries over all words; an entry it
        // already has may still be put again.
        core.config.max_index = 4_096;
        let net = |n: u8| SocketAddrV4::new(Ipv4Addr::new(20, 9, 9, n), 3);
        for n in 0..MAX_INDEX_PER_NETWORK as u8 {
            let w = index_target(&format!("flood{n}"));
            core.store_index(now, w, entry(200, 1), net(n)).unwrap();
        }
        let w = index_target("flood999");
        assert_eq!(core.store_index(now, w, entry(200, 1), net(1)).unwrap_err().0, 201);
        let again = core.store_index(now, index_target("flood3"), entry(200, 2), net(1));
        assert_eq!(again, Ok(()));
        // Entries not put again within ITEM_TTL are gone.
        core.handle(now + ITEM_TTL + TOKEN_ROTATION + Duration::from_secs(200), Input::Tick);
        assert_eq!(core.index_len(), 0);
        assert!(core.index.is_empty());
    }

    #[test]
    fn sample_infohashes_lists_what_a_node_stores() {
        let mut net: Net = Net::new(20, 7);
        net.join_all();
        let hashes: Vec<NodeId> = (0..30u8).map(|b| NodeId([b; 20])).collect();
        for (i, ih) in hashes.iter().enumerate() {
            let now = net.now;
            net.nodes[1 + i % 5].announce(now, *ih, 7000 + i as u16);
            net.settle();
        }
        // The node that stores the most answers for what it stores: a sample of at most 20.
        let (holder, stored) =
            (0..20).map(|i| (i, net.nodes[i].stored.len())).max_by_key(|x| x.1).unwrap();
        assert!(stored > MAX_SAMPLES, "{stored} info-hashes at node {holder}");
        let asker = if holder == 9 { 10 } else { 9 };
        let now = net.now;
        let s = net.nodes[asker].sample(now, addr(holder), NodeId([0xee; 20]));
        net.settle();
        let r = net.result(asker, s);
        assert_eq!(r.num, Some(stored as i64));
        assert_eq!(r.samples.len(), MAX_SAMPLES);
        assert!(r.samples.iter().all(|ih| net.nodes[holder].stored.contains_key(ih)));
        assert_eq!(r.interval, Some(SAMPLE_INTERVAL_S));
        // A node that does not answer: an empty result, after the timeout.
        let dead = if holder == 3 || asker == 3 { 4 } else { 3 };
        net.dead[dead] = true;
        let now = net.now;
        let s = net.nodes[asker].sample(now, addr(dead), NodeId([0xee; 20]));
        net.settle();
        assert!(net.result(asker, s).samples.is_empty());
    }

    #[test]
    fn sampling_around_a_target_gathers_the_samples_of_the_nodes_there() {
        let mut net: Net = Net::new(30, 8);
        net.join_all();
        let hashes: Vec<NodeId> = (0..60u8).map(|b| NodeId([b; 20])).collect();
        for (i, ih) in hashes.iter().enumerate() {
            let now = net.now;
            net.nodes[1 + i % 7].announce(now, *ih, 7000 + i as u16);
            net.settle();
        }
        let now = net.now;
        let target = NodeId([0x20; 20]);
        let s = net.nodes[0].sample_around(now, target);
        net.settle();
        let r = net.result(0, s);
        assert!(!r.nodes.is_empty());
        // Every sample is an info-hash some answering node stores, and more came than one
        // node's reply holds.
        assert!(r.samples.len() > MAX_SAMPLES, "{} samples", r.samples.len());
        assert!(r.samples.iter().all(|ih| hashes.contains(ih)));
        let claimed: i64 = r
            .nodes
            .iter()
            .map(|n| {
                let i = (0..30).find(|&i| addr(i) == n.addr).unwrap();
                net.nodes[i].stored.len() as i64
            })
            .sum();
        assert!(r.num.unwrap() >= claimed, "{:?} < {claimed}", r.num);
    }

    /// A node with a random id bootstraps through `routers`, each answering that it saw the
    /// node at the address `says(i)` gives; returns the node.
    fn voted(routers: usize, says: impl Fn(usize) -> Ipv4Addr) -> Core {
        voted_from(routers, |i| Ipv4Addr::new(198, 18, i as u8, 1), says)
    }

    /// [`voted`] with the routers' addresses given by `at`.
    fn voted_from(
        routers: usize,
        at: impl Fn(usize) -> Ipv4Addr,
        says: impl Fn(usize) -> Ipv4Addr,
    ) -> Core {
        let now = Instant::now();
        let mut core =
            Core::new(now, NodeId([0x55; 20]), Config::default(), ChaCha8Rng::seed_from_u64(9));
        let addrs: Vec<SocketAddrV4> =
            (0..routers).map(|i| SocketAddrV4::new(at(i), 6881)).collect();
        core.bootstrap(now, &addrs);
        let sent: Vec<(SocketAddrV4, Vec<u8>)> = std::iter::from_fn(|| core.poll())
            .filter_map(|o| match o {
                Output::Send { to, bytes } => Some((to, Message::decode(&bytes).unwrap().tid)),
                _ => None,
            })
            .collect();
        for (to, tid) in sent {
            let i = addrs.iter().position(|a| *a == to).unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(i as u64);
            let reply = Message {
                tid,
                body: Body::Response(Response {
                    id: Some(NodeId::for_ip(*to.ip(), &mut rng)),
                    ..Response::default()
                }),
                version: None,
                ip: Some(SocketAddrV4::new(says(i), 40000).into()),
                read_only: false,
            };
            core.handle(now, Input::Datagram { from: to, bytes: &reply.encode() });
        }
        core
    }

    #[test]
    fn our_id_follows_the_external_address_the_answers_agree_on() {
        let ours = Ipv4Addr::new(203, 0, 113, 9);
        // Twelve answers, two of them lying: the id is now one BEP 42 allows for our address,
        // and the nodes that answered are still in the table.
        let core = voted(12, |i| if i < 2 { Ipv4Addr::new(1, 2, 3, 4) } else { ours });
        assert_eq!(core.external_ip(), Some(ours));
        assert!(core.id().is_valid_for(ours));
        assert_ne!(core.id(), NodeId([0x55; 20]));
        assert_eq!(core.table().own(), core.id());
        assert_eq!(core.table().len(), 12);
        // Too few votes, or votes split with no two-thirds majority: no decision.
        let core = voted(9, |_| ours);
        assert_eq!((core.external_ip(), core.id()), (None, NodeId([0x55; 20])));
        let liar = Ipv4Addr::new(1, 2, 3, 4);
        let core = voted(20, |i| if i % 2 == 0 { liar } else { ours });
        assert_eq!((core.external_ip(), core.id()), (None, NodeId([0x55; 20])));
        // Twelve answers from one /24 are one vote.
        let core = voted_from(12, |i| Ipv4Addr::new(198, 18, 7, 1 + i as u8), |_| ours);
        assert_eq!((core.external_ip(), core.id()), (None, NodeId([0x55; 20])));
        // A private address is exempt: it is noted, and the id stays.
        let core = voted(12, |_| Ipv4Addr::new(192, 168, 1, 20));
        assert_eq!(core.external_ip(), Some(Ipv4Addr::new(192, 168, 1, 20)));
        assert_eq!(core.id(), NodeId([0x55; 20]));
    }

    #[test]
    fn a_scrape_answers_with_bloom_filters_of_seeds_and_downloaders() {
        let now = Instant::now();
        let mut core =
            Core::new(now, NodeId([1; 20]), Config::default(), ChaCha8Rng::seed_from_u64(4));
        let ih = NodeId([9; 20]);
        // 30 seeds and 12 downloaders, each from its own address, announce with their tokens.
        for i in 0..42u32 {
            let from = SocketAddrV4::new(Ipv4Addr::from(0x0a00_0000 + i), 6881);
            let ask = query(NodeId([2; 20]), Method::GetPeers { info_hash: ih, scrape: false });
            core.handle(now, Input::Datagram { from, bytes: &ask });
            let token = replies(&mut core)
                .into_iter()
                .find_map(|(to, m)| match m.body {
                    Body::Response(r) if to == from => r.token,
                    _ => None,
                })
                .unwrap();
            let method = Method::AnnouncePeer {
                info_hash: ih,
                port: 6881,
                implied_port: false,
                token,
                seed: i < 30,
            };
            core.handle(now, Input::Datagram { from, bytes: &query(NodeId([2; 20]), method) });
            replies(&mut core);
        }
        let from = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 6881);
        // A swarm the node does not store: no filters (BEP 33), only nodes.
        let other = NodeId([8; 20]);
        let ask = query(NodeId([3; 20]), Method::GetPeers { info_hash: other, scrape: true });
        core.handle(now, Input::Datagram { from, bytes: &ask });
        assert!(replies(&mut core).iter().all(|(_, m)| match &m.body {
            Body::Response(r) => r.seeds_filter.is_none() && r.peers_filter.is_none(),
            _ => true,
        }));
        let ask = query(NodeId([3; 20]), Method::GetPeers { info_hash: ih, scrape: true });
        core.handle(now, Input::Datagram { from, bytes: &ask });
        let r = replies(&mut core)
            .into_iter()
            .find_map(|(_, m)| match m.body {
                Body::Response(r) if r.seeds_filter.is_some() => Some(r),
                _ => None,
            })
            .unwrap();
        let (seeds, downloaders) =
            (r.seeds_filter.unwrap().estimate(), r.peers_filter.unwrap().estimate());
        assert!((seeds - 30.0).abs() < 2.0, "{seeds}");
        assert!((downloaders - 12.0).abs() < 1.0, "{downloaders}");
        assert!(r.values.is_empty(), "a scrape gets filters, not the peers");
    }

    #[test]
    fn a_scrape_lookup_unites_the_filters_of_the_nodes_that_store_the_swarm() {
        let mut net: Net = Net::new(40, 3);
        net.join_all();
        let ih = NodeId([0x77; 20]);
        let now = net.now;
        net.nodes[5].announce_as(now, ih, 7000, true);
        net.settle();
        let now = net.now;
        let s = net.nodes[20].scrape(now, ih);
        net.settle();
        let r = net.result(20, s);
        let sc = r.scrape.as_ref().expect("filters from the nodes");
        assert!(sc.nodes >= 7, "{sc:?}");
        // Every node is on 127.0.0.1: one seed address, no downloader.
        assert!((sc.seeds.estimate() - 1.0).abs() < 0.1, "{sc:?}");
        assert_eq!(sc.downloaders.estimate(), 0.0);
    }

    #[test]
    fn a_read_only_node_looks_up_but_is_never_asked() {
        let mut net: Net = Net::new(20, 10);
        // Node 19 is read-only (BEP 43): it says `ro` in its queries and answers none.
        let id = net.nodes[19].id();
        let ro = Config { read_only: true, ..Config::default() };
        net.nodes[19] = Core::new(net.now, id, ro, ChaCha8Rng::seed_from_u64(99));
        net.join_all();
        assert!(net.nodes[19].table().len() >= 8, "it still learns the network");
        for i in 0..19 {
            assert!(net.nodes[i].table().get(&id).is_none(), "node {i} keeps a read-only node");
        }
        let now = net.now;
        let l = net.nodes[19].find_node(now, NodeId([0x33; 20]));
        net.settle();
        assert_eq!(net.result(19, l).nodes.len(), K);
        // Asked directly, it stays silent.
        net.nodes[19].handle(
            net.now,
            Input::Datagram { from: addr(3), bytes: &query(NodeId([2; 20]), Method::Ping) },
        );
        assert!(replies(&mut net.nodes[19]).is_empty());
    }

    #[test]
    fn a_flooding_address_is_cut_off_for_the_rest_of_its_window() {
        let now = Instant::now();
        let mut core =
            Core::new(now, NodeId([1; 20]), Config::default(), ChaCha8Rng::seed_from_u64(5));
        let flooder = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 66), 6881);
        let other = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 67), 6881);
        let ping = query(NodeId([2; 20]), Method::Ping);
        let answered = |core: &mut Core, to: SocketAddrV4| {
            replies(core)
                .iter()
                .filter(|(a, m)| *a == to && matches!(m.body, Body::Response(_)))
                .count()
        };
        let mut got = 0;
        for _ in 0..80 {
            core.handle(now, Input::Datagram { from: flooder, bytes: &ping });
            got += answered(&mut core, flooder);
        }
        assert_eq!(got, MAX_PACKETS_PER_WINDOW as usize);
        assert_eq!(core.rate_limited(), 80 - MAX_PACKETS_PER_WINDOW as u64);
        // Another address is not affected; the flooder is heard again in the next window.
        core.handle(now, Input::Datagram { from: other, bytes: &ping });
        assert_eq!(answered(&mut core, other), 1);
        let later = now + RATE_WINDOW;
        core.handle(later, Input::Datagram { from: flooder, bytes: &ping });
        assert_eq!(answered(&mut core, flooder), 1);
        // The table of sources is bounded.
        for i in 0..(MAX_SOURCES as u32 + 10) {
            let from = SocketAddrV4::new(Ipv4Addr::from(0x0b00_0000 + i), 1);
            core.handle(later, Input::Datagram { from, bytes: b"x" });
        }
        assert!(core.rates.len() <= MAX_SOURCES);
    }

    #[test]
    fn an_answer_counts_only_from_the_address_and_id_asked() {
        let now = Instant::now();
        let mut core =
            Core::new(now, NodeId([1; 20]), Config::default(), ChaCha8Rng::seed_from_u64(4));
        let router = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 6881);
        core.bootstrap(now, &[router]);
        let sent = replies(&mut core);
        let tid = sent[0].1.tid.clone();
        let answer = |id: NodeId| {
            Message {
                tid: tid.clone(),
                body: Body::Response(Response { id: Some(id), ..Response::default() }),
                version: None,
                ip: None,
                read_only: false,
            }
            .encode()
        };
        // The right transaction id from another address: ignored.
        let other = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 6881);
        core.handle(now, Input::Datagram { from: other, bytes: &answer(NodeId([7; 20])) });
        assert!(core.table().is_empty());
        assert_eq!(core.in_flight(), 1);
        // From the router: counted once, and the transaction is gone.
        core.handle(now, Input::Datagram { from: router, bytes: &answer(NodeId([7; 20])) });
        assert_eq!(core.table().len(), 1);
        assert_eq!(core.in_flight(), 0);
        core.handle(now, Input::Datagram { from: router, bytes: &answer(NodeId([8; 20])) });
        assert_eq!(core.table().len(), 1, "a replayed answer is not a new node");
    }

    #[test]
    fn replies_to_an_unverified_address_are_at_most_four_times_its_query() {
        let now = Instant::now();
        let mut core =
            Core::new(now, NodeId([1; 20]), Config::default(), ChaCha8Rng::seed_from_u64(5));
        // A full table and 50 stored peers: a full reply is about 7× the query.
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        for i in 0..200u32 {
            let a = SocketAddrV4::new(Ipv4Addr::from(0x0b00_0000 + (i << 8)), 6881);
            let _ = core
                .add_responded(now, CompactNode { id: NodeId::for_ip(*a.ip(), &mut rng), addr: a });
        }
        let ih = NodeId([9; 20]);
        for i in 0..50u32 {
            core.store(now, ih, SocketAddrV4::new(Ipv4Addr::from(0x0c00_0000 + i), 7000), false);
        }
        let victim = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 7), 5000);
        // Asks as the victim; returns the query's size, the sizes of the replies to it, the
        // last reply, and the transaction ids of queries the node sent the victim.
        let ask = |core: &mut Core, method: Method| {
            let q = query(NodeId([2; 20]), method);
            core.handle(now, Input::Datagram { from: victim, bytes: &q });
            let (mut sizes, mut reply, mut ours) = (vec![], None, vec![]);
            while let Some(o) = core.poll() {
                let Output::Send { to, bytes } = o else { continue };
                let m = Message::decode(&bytes).unwrap();
                if to != victim {
                    continue;
                }
                if m.tid == b"xy" {
                    sizes.push(bytes.len());
                    reply = Some(m);
                } else if matches!(m.body, Body::Query { .. }) {
                    ours.push(m.tid);
                }
            }
            (q.len(), sizes, reply.unwrap(), ours)
        };
        let (q, sizes, m, mut pings) =
            ask(&mut core, Method::GetPeers { info_hash: ih, scrape: false });
        assert!(sizes.iter().all(|&n| n <= AMPLIFICATION * q), "{sizes:?} for a {q}-byte query");
        let Body::Response(r) = m.body else { panic!() };
        assert!(r.values.len() >= 25, "the peers it asked for survive: {}", r.values.len());
        let (q, sizes, _, more) = ask(&mut core, Method::FindNode { target: ih });
        pings.extend(more);
        assert!(sizes.iter().all(|&n| n <= AMPLIFICATION * q), "{sizes:?}");
        assert!(core.trimmed_replies() >= 1);
        // Once the address answers a query of ours (the ping a querier gets), it gets everything.
        let tid = pings.into_iter().next().expect("the node pings its querier");
        let pong = Message {
            tid,
            body: Body::Response(Response { id: Some(NodeId([2; 20])), ..Response::default() }),
            version: None,
            ip: None,
            read_only: false,
        };
        core.handle(now, Input::Datagram { from: victim, bytes: &pong.encode() });
        let (q, sizes, m, _) = ask(&mut core, Method::GetPeers { info_hash: ih, scrape: false });
        let Body::Response(r) = m.body else { panic!() };
        assert_eq!((r.values.len(), r.nodes.len()), (50, K), "verified: the whole reply");
        assert!(sizes[0] > AMPLIFICATION * q);
    }
}
