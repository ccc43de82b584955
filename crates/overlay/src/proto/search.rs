//! Unstructured search over the overlay (the notes' "brute force": one → all others), as a
//! sans-IO core under the project's contract. Three ways to ask:
//! - **Flooding** with a TTL (at most [`MAX_TTL`], Gnutella's 7): each node forwards a query it
//!   has not seen (duplicates are dropped by query id) to its other neighbours, at most
//!   [`Config::max_fanout`] of them, and answers along the reverse path.
//! - **Expanding ring**: floods with TTL 1, 2, 4, … up to [`MAX_TTL`], each after the previous
//!   one's wait, until [`Config::enough`] results came.
//! - **Random walks** (Lv, Cao, Cohen, Li & Shenker, 2002): [`Config::walkers`] walkers, each
//!   forwarded to one random neighbour per hop; every [`Config::check_every`] hops the node
//!   holding a walker asks the origin whether to go on, and the walker stops when the origin
//!   has enough (or does not answer). Hits go straight to the origin.
//!
//! What a node shares is a list of [`Record`]s with their keywords ([`keywords`]); a query
//! matches a record when every one of its words is among the record's keywords.
//!
//! # What the peer says is a claim
//! A query's TTL above [`MAX_TTL`] is lowered to it; its words are normalized and capped
//! ([`keywords`]); each neighbour may send [`Config::queries_per_second`] queries a second
//! (a flooded message counts as one, a walk as one on its first walker from that neighbour,
//! which may then pass on twice [`Config::walkers`] of that walk; more are dropped and
//! counted); the table of queries seen, which routes hits back, holds at
//! most [`Config::max_seen`] entries, each for [`Config::seen_for`]; a query collects at most
//! [`Config::max_results`] results, and a hit message carries at most [`MAX_HITS_PER_MESSAGE`].
//! Hits for a query we did not forward or ask are dropped.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand::seq::IteratorRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::identity::{verify, Identity, NodeId};

/// The largest TTL a flood may have (Gnutella's).
pub const MAX_TTL: u8 = 7;
/// Records in one hit message, at most.
pub const MAX_HITS_PER_MESSAGE: usize = 32;
/// Words in a query, and keywords of a record, at most.
pub const MAX_WORDS: usize = 8;
/// Bytes of one keyword, at most (longer words are cut at a character boundary).
pub const MAX_WORD_BYTES: usize = 32;

/// The longest a walk lives, however often its walkers check back.
pub const MAX_WALK_TIME: Duration = Duration::from_secs(120);
/// Hit messages relayed back for one query, at most.
pub const MAX_RELAYED_HITS: u16 = 16;

/// A query's id: random, so a node cannot guess another's.
pub type QueryId = u64;

/// Bytes of a record's name, at most.
pub const MAX_NAME_BYTES: usize = 255;
/// Peer addresses in a record, at most.
pub const MAX_RECORD_PEERS: usize = 4;
/// How far ahead a record's expiry may lie, at most (a publisher re-signs before it passes).
pub const MAX_RECORD_LIFETIME: u64 = 2 * 3600;
/// What a record's signature covers, first.
const RECORD_CONTEXT: &[u8] = b"swarmcast search record v1\0";

/// Something a node shares: a torrent's name, size and info-hash, where its publisher serves
/// it, signed by the publisher's key, with an expiry. Everything in it is the publisher's
/// claim: the info-hash is checked by the download itself, the rest by [`Record::check`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The torrent's name (its keywords are what queries match).
    pub name: String,
    /// Bytes of content.
    pub size: u64,
    /// The torrent's info-hash (v1).
    pub info_hash: [u8; 20],
    /// BitTorrent addresses the publisher serves it on (at most [`MAX_RECORD_PEERS`]).
    pub peers: Vec<std::net::SocketAddr>,
    /// The publisher's key.
    pub publisher: NodeId,
    /// Unix time, seconds, after which the record no longer counts.
    pub expires: u64,
    /// ed25519 signature by `publisher` over [`RECORD_CONTEXT`] and the fields above.
    pub sig: Vec<u8>,
}

/// Why a record from a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Its name is empty or longer than [`MAX_NAME_BYTES`].
    #[error("record name of {0} bytes (1-{MAX_NAME_BYTES} allowed)")]
    Name(usize),
    /// More than [`MAX_RECORD_PEERS`] addresses.
    #[error("record with {0} peer addresses (at most {MAX_RECORD_PEERS})")]
    Peers(usize),
    /// Past its expiry.
    #[error("record expired")]
    Expired,
    /// An expiry further ahead than [`MAX_RECORD_LIFETIME`].
    #[error("record expiry too far ahead")]
    TooLong,
    /// The signature does not match the publisher.
    #[error("bad record signature: forged or altered")]
    BadSignature,
}

impl Record {
    /// An unsigned record published by `publisher` (for simulations: [`Record::check`] refuses
    /// it).
    pub fn unsigned(name: String, size: u64, info_hash: [u8; 20], publisher: NodeId) -> Record {
        Record { name, size, info_hash, peers: Vec::new(), publisher, expires: 0, sig: Vec::new() }
    }

    /// A record signed by `identity`, valid until `expires` (Unix seconds).
    pub fn signed(
        identity: &Identity,
        name: String,
        size: u64,
        info_hash: [u8; 20],
        peers: Vec<std::net::SocketAddr>,
        expires: u64,
    ) -> Record {
        let mut r = Record::unsigned(name, size, info_hash, identity.id());
        r.peers = peers;
        r.expires = expires;
        r.sig = identity.sign(&r.signed_bytes()).to_vec();
        r
    }

    /// The bytes the signature covers: the context, then the fields but the signature, in
    /// postcard (one encoding for given values, so a re-encoded record verifies the same).
    fn signed_bytes(&self) -> Vec<u8> {
        let fields =
            (&self.name, self.size, &self.info_hash, &self.peers, &self.publisher, self.expires);
        let mut bytes = RECORD_CONTEXT.to_vec();
        bytes.extend(postcard::to_allocvec(&fields).expect("postcard encodes a tuple to a Vec"));
        bytes
    }

    /// Whether the record counts at Unix time `now` (seconds): sizes within the caps, not
    /// expired, not valid for longer than [`MAX_RECORD_LIFETIME`], signed by its publisher.
    pub fn check(&self, now: u64) -> Result<(), RecordError> {
        if self.name.is_empty() || self.name.len() > MAX_NAME_BYTES {
            return Err(RecordError::Name(self.name.len()));
        }
        if self.peers.len() > MAX_RECORD_PEERS {
            return Err(RecordError::Peers(self.peers.len()));
        }
        if self.expires <= now {
            return Err(RecordError::Expired);
        }
        if self.expires > now.saturating_add(MAX_RECORD_LIFETIME) {
            return Err(RecordError::TooLong);
        }
        let sig: [u8; 64] =
            self.sig.as_slice().try_into().map_err(|_| RecordError::BadSignature)?;
        if !verify(&self.publisher, &self.signed_bytes(), &sig) {
            return Err(RecordError::BadSignature);
        }
        Ok(())
    }
}

/// How a search goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One flood with this TTL (capped at [`MAX_TTL`]).
    Flood(u8),
    /// Floods of TTL 1, 2, 4, … until enough results.
    Ring,
    /// Random walkers.
    Walk,
}

/// What search nodes send each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg<PI> {
    /// A flooded query, or a walker (`walk`: it goes to one neighbour a hop).
    Query { id: QueryId, ttl: u8, hops: u8, words: Vec<String>, origin: PI, walk: bool },
    /// Records that match query `id`, found `hops` from its origin, on their way there.
    Hits { id: QueryId, hops: u8, records: Vec<Record> },
    /// A walker's holder asks the origin whether the walk goes on.
    Check { id: QueryId },
    /// The origin's answer to a [`Msg::Check`].
    Verdict { id: QueryId, go_on: bool },
}

/// Tunables.
#[derive(Debug, Clone)]
pub struct Config {
    /// Neighbours a flood is forwarded to from one node, at most.
    pub max_fanout: usize,
    /// Results a search wants; walks and rings stop once they have as many.
    pub enough: usize,
    /// Results a search keeps, at most.
    pub max_results: usize,
    /// How long a ring waits for results before the next, larger ring; also how long a search
    /// stays open after its last step.
    pub ring_wait: Duration,
    /// Random walkers a walk starts.
    pub walkers: usize,
    /// Hops a walker takes at most.
    pub max_walk_hops: u8,
    /// Every this many hops a walker checks back with the origin.
    pub check_every: u8,
    /// How long a walker waits for the origin's verdict before it stops.
    pub check_wait: Duration,
    /// Queries a neighbour may send a second, on average (a flooded message is one, a walk is
    /// one, charged on its first walker from that neighbour).
    pub queries_per_second: f64,
    /// Queries remembered (to drop duplicates and route hits back), at most.
    pub max_seen: usize,
    /// How long a query is remembered.
    pub seen_for: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_fanout: 16,
            enough: 1,
            max_results: 100,
            ring_wait: Duration::from_secs(2),
            walkers: 16,
            max_walk_hops: 255,
            check_every: 4,
            check_wait: Duration::from_secs(2),
            queries_per_second: 20.0,
            max_seen: 16_384,
            seen_for: Duration::from_secs(60),
        }
    }
}

/// What the owner feeds the core.
#[derive(Debug, Clone)]
pub enum Input<PI> {
    /// `msg` arrived from `from` (a neighbour, or for hits and checks any node).
    Message { from: PI, msg: Msg<PI> },
    /// `now` reached [`Search::next_deadline`].
    Timeout,
}

/// What the core asks of its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<PI> {
    /// Send `msg` to `to` (a neighbour, or for hits and checks the origin directly).
    Send { to: PI, msg: Msg<PI> },
    /// A result for one of our searches (each info-hash and publisher once per search), found
    /// at `hops`.
    Result { id: QueryId, record: Record, hops: u8 },
    /// One of our searches ended (enough results, or nothing more to wait for).
    Done { id: QueryId, results: usize },
}

/// A query seen: where it came from (hits go back there; us, for our own).
#[derive(Debug)]
struct Seen<PI> {
    from: PI,
    /// Hit messages relayed back for it so far (at most [`MAX_RELAYED_HITS`]).
    relayed: u16,
}

/// One of our searches.
#[derive(Debug)]
struct Mine {
    words: Vec<String>,
    mode: Mode,
    /// Info-hashes found, and who published them.
    found: BTreeSet<([u8; 20], NodeId)>,
    /// The current ring's TTL (rings only).
    ttl: u8,
    /// When the search takes its next step or ends.
    deadline: Instant,
    /// When it started (a walk lives at most [`MAX_WALK_TIME`]).
    started: Instant,
}

/// A walker held here while its origin is asked.
#[derive(Debug)]
struct Held<PI> {
    msg: Msg<PI>,
    from: PI,
    until: Instant,
}

/// Per-neighbour query budget (a token bucket).
#[derive(Debug)]
struct Budget {
    tokens: f64,
    at: Instant,
}

/// The search core of one node.
///
/// Getters; [`Search::handle`]; mutators ([`Search::start`], [`Search::share`],
/// [`Search::set_neighbours`]); [`Search::poll`] and [`Search::next_deadline`].
#[derive(Debug)]
pub struct Search<PI, R> {
    me: PI,
    config: Config,
    rng: R,
    neighbours: Vec<PI>,
    shared: Vec<(Record, Vec<String>)>,
    seen: BTreeMap<QueryId, Seen<PI>>,
    /// `seen` in order of arrival, for expiry and the size cap.
    seen_order: VecDeque<(Instant, QueryId)>,
    mine: BTreeMap<QueryId, Mine>,
    /// Flood and walk ids of our running searches, to the search they belong to (each is in
    /// `seen` too, from us, so its echoes are dropped).
    ours: BTreeMap<QueryId, QueryId>,
    held: BTreeMap<QueryId, Vec<Held<PI>>>,
    budgets: BTreeMap<PI, Budget>,
    /// Walkers taken per (neighbour, walk), and that table in order of arrival (at most
    /// [`Config::max_seen`] entries): a walk costs its neighbour's budget once.
    walkers_from: BTreeMap<(PI, QueryId), u16>,
    walkers_order: VecDeque<(PI, QueryId)>,
    dropped: u64,
    out: VecDeque<Output<PI>>,
}

/// Whether every word of `words` (a query's, normalized by [`keywords`]) is a keyword of
/// `name`: how a record matches a query, here and in the DHT's keyword index.
pub fn matches_words(name: &str, words: &[String]) -> bool {
    let kw = keywords(name);
    !words.is_empty() && words.iter().all(|w| kw.contains(w))
}

/// A name's keywords, or a query's words: Unicode lower case, split at anything not
/// alphanumeric, words of one character dropped, each cut to [`MAX_WORD_BYTES`], duplicates
/// removed, at most [`MAX_WORDS`] (the first ones).
pub fn keywords(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    // Lower case first: lower-casing can make characters that split a word (İ → i + a
    // combining dot), so normalizing twice gives the same words.
    let lower = text.to_lowercase();
    for word in lower.split(|c: char| !c.is_alphanumeric()) {
        let mut w = word.to_string();
        if w.chars().count() < 2 {
            continue;
        }
        if w.len() > MAX_WORD_BYTES {
            let mut cut = MAX_WORD_BYTES;
            while !w.is_char_boundary(cut) {
                cut -= 1;
            }
            w.truncate(cut);
        }
        if !out.contains(&w) {
            out.push(w);
        }
        if out.len() == MAX_WORDS {
            break;
        }
    }
    out
}

impl<PI: Clone + Ord + std::fmt::Debug, R: Rng> Search<PI, R> {
    pub fn new(me: PI, config: Config, rng: R) -> Self {
        Search {
            me,
            config,
            rng,
            neighbours: Vec::new(),
            shared: Vec::new(),
            seen: BTreeMap::new(),
            seen_order: VecDeque::new(),
            mine: BTreeMap::new(),
            ours: BTreeMap::new(),
            held: BTreeMap::new(),
            budgets: BTreeMap::new(),
            walkers_from: BTreeMap::new(),
            walkers_order: VecDeque::new(),
            dropped: 0,
            out: VecDeque::new(),
        }
    }

    // --- getters ---------------------------------------------------------------------------

    /// Queries dropped: over a neighbour's budget, duplicates, or hits nobody asked for.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Queries remembered now (bounded by [`Config::max_seen`]).
    pub fn seen_len(&self) -> usize {
        self.seen.len()
    }

    // --- what arrives ----------------------------------------------------------------------

    pub fn handle(&mut self, now: Instant, input: Input<PI>) {
        match input {
            Input::Timeout => self.tick(now),
            Input::Message { from, msg } => match msg {
                Msg::Query { id, ttl, hops, words, origin, walk } => {
                    let cap = if walk { self.config.max_walk_hops } else { MAX_TTL };
                    let words = keywords(&words.join(" "));
                    // Queries come from neighbours only, and must ask for something.
                    if words.is_empty() || !self.neighbours.contains(&from) {
                        tracing::debug!(id, walk, "query dropped: empty, or not from a neighbour");
                        self.dropped += 1;
                        return;
                    }
                    let q = Query { id, ttl: ttl.min(cap), hops, words, origin };
                    if walk {
                        self.on_walker(now, from, q);
                    } else {
                        self.on_flood(now, from, q);
                    }
                }
                Msg::Hits { id, hops, records } => self.on_hits(id, hops, records),
                Msg::Check { id } => {
                    let go_on = self.verdict(now, id);
                    self.send(from, Msg::Verdict { id, go_on });
                }
                Msg::Verdict { id, go_on } => self.on_verdict(id, &from, go_on),
            },
        }
    }

    // --- what the owner decides ------------------------------------------------------------

    /// The neighbours queries go to (the overlay's active view).
    pub fn set_neighbours(&mut self, neighbours: Vec<PI>) {
        self.neighbours = neighbours;
        self.budgets.retain(|p, _| self.neighbours.contains(p));
    }

    /// Shares `record` (its keywords come from its name).
    pub fn share(&mut self, record: Record) {
        let words = keywords(&record.name);
        self.shared.retain(|(r, _)| r.info_hash != record.info_hash);
        self.shared.push((record, words));
    }

    /// Ends search `id` now (its [`Output::Done`] comes), if it runs.
    pub fn cancel(&mut self, id: QueryId) {
        self.finish(id);
    }

    /// Stops sharing the record of `info_hash`.
    pub fn unshare(&mut self, info_hash: &[u8; 20]) {
        self.shared.retain(|(r, _)| &r.info_hash != info_hash);
    }

    /// Starts a search for `text`'s words; its results come as [`Output::Result`], its end as
    /// [`Output::Done`].
    pub fn start(&mut self, now: Instant, text: &str, mode: Mode) -> QueryId {
        let words = keywords(text);
        let id: QueryId = self.rng.random();
        let mut mine = Mine {
            words: words.clone(),
            mode,
            found: BTreeSet::new(),
            ttl: 1,
            deadline: now + self.config.ring_wait,
            started: now,
        };
        let me = self.me.clone();
        self.remember(now, id, &me);
        // What we share ourselves counts (hops 0).
        let local = self.matches(&words);
        for record in local {
            if mine.found.insert((record.info_hash, record.publisher)) {
                self.out.push_back(Output::Result { id, record, hops: 0 });
            }
        }
        self.ours.insert(id, id);
        match mode {
            Mode::Flood(ttl) => {
                mine.ttl = ttl.clamp(1, MAX_TTL);
                self.flood(id, mine.ttl, &words, None);
            }
            Mode::Ring => self.flood(id, 1, &words, None),
            Mode::Walk => {
                let k = self.config.walkers;
                let first: Vec<PI> =
                    self.neighbours.iter().cloned().choose_multiple(&mut self.rng, k);
                for to in first.iter().cycle().take(k) {
                    let msg = Msg::Query {
                        id,
                        ttl: self.config.max_walk_hops,
                        hops: 1,
                        words: words.clone(),
                        origin: self.me.clone(),
                        walk: true,
                    };
                    self.send(to.clone(), msg);
                }
                // A walk ends when its walkers stopped checking back for a while (each check
                // moves this).
                mine.deadline = now + self.config.check_wait * 2;
            }
        }
        let enough = mine.found.len() >= self.config.enough && !matches!(mode, Mode::Flood(_));
        self.mine.insert(id, mine);
        if enough {
            self.finish(id);
        }
        id
    }

    // --- what the core asks ----------------------------------------------------------------

    pub fn poll(&mut self) -> Option<Output<PI>> {
        self.out.pop_front()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let mine = self.mine.values().map(|m| m.deadline).min();
        let held = self.held.values().flatten().map(|h| h.until).min();
        let seen = self.seen_order.front().map(|(t, _)| *t + self.config.seen_for);
        [mine, held, seen].into_iter().flatten().min()
    }

    // --- inside ----------------------------------------------------------------------------

    fn send(&mut self, to: PI, msg: Msg<PI>) {
        self.out.push_back(Output::Send { to, msg });
    }

    /// Records every word of `words` is a keyword of.
    fn matches(&self, words: &[String]) -> Vec<Record> {
        if words.is_empty() {
            return Vec::new();
        }
        self.shared
            .iter()
            .filter(|(_, kw)| words.iter().all(|w| kw.contains(w)))
            .map(|(r, _)| r.clone())
            .take(self.config.max_results)
            .collect()
    }

    /// Sends a flood of `ttl` to the neighbours (but `except`).
    fn flood(&mut self, id: QueryId, ttl: u8, words: &[String], except: Option<&PI>) {
        let origin = self.me.clone();
        self.forward_flood(Query { id, ttl, hops: 1, words: words.to_vec(), origin }, except);
    }

    fn forward_flood(&mut self, q: Query<PI>, except: Option<&PI>) {
        let targets: Vec<PI> = self
            .neighbours
            .iter()
            .filter(|n| Some(*n) != except && **n != q.origin)
            .cloned()
            .choose_multiple(&mut self.rng, self.config.max_fanout);
        for to in targets {
            let msg = Msg::Query {
                id: q.id,
                ttl: q.ttl,
                hops: q.hops,
                words: q.words.clone(),
                origin: q.origin.clone(),
                walk: false,
            };
            self.send(to, msg);
        }
    }

    /// Whether `from` may send another query now (its token bucket), one that costs `cost`
    /// tokens (a flood's message and a walk's first walker cost 1).
    fn allowed(&mut self, now: Instant, from: &PI, cost: f64) -> bool {
        let rate = self.config.queries_per_second;
        let burst = rate.max(1.0);
        let b = self.budgets.entry(from.clone()).or_insert(Budget { tokens: burst, at: now });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        if b.tokens >= cost {
            b.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Remembers query `id` from `from`; false if it was seen already.
    fn remember(&mut self, now: Instant, id: QueryId, from: &PI) -> bool {
        if self.seen.contains_key(&id) {
            return false;
        }
        while self.seen.len() >= self.config.max_seen {
            match self.seen_order.pop_front() {
                Some((_, old)) => {
                    self.seen.remove(&old);
                }
                None => break,
            }
        }
        self.seen.insert(id, Seen { from: from.clone(), relayed: 0 });
        self.seen_order.push_back((now, id));
        true
    }

    fn on_flood(&mut self, now: Instant, from: PI, q: Query<PI>) {
        if !self.allowed(now, &from, 1.0) {
            tracing::debug!(id = q.id, "flooded query dropped: over its neighbour's budget");
            self.dropped += 1;
            return;
        }
        if !self.remember(now, q.id, &from) {
            // A duplicate: the flood reached us by another path.
            self.dropped += 1;
            return;
        }
        let found = self.matches(&q.words);
        for chunk in found.chunks(MAX_HITS_PER_MESSAGE) {
            let msg = Msg::Hits { id: q.id, hops: q.hops, records: chunk.to_vec() };
            self.send(from.clone(), msg);
        }
        if q.ttl > 1 {
            let next = Query { ttl: q.ttl - 1, hops: q.hops.saturating_add(1), ..q };
            self.forward_flood(next, Some(&from));
        }
    }

    fn on_walker(&mut self, now: Instant, from: PI, q: Query<PI>) {
        // Hops and TTL move in step: a walker that claims more of both than a walk has is
        // forged (it would skip its check-backs).
        let steps = u16::from(q.hops) + u16::from(q.ttl);
        // A walk costs a neighbour's query budget once, on its first walker; it may pass the
        // same link again, so twice its walkers are taken from one neighbour, no more.
        let key = (from.clone(), q.id);
        let taken = self.walkers_from.get(&key).copied();
        let most = u16::try_from(self.config.walkers.saturating_mul(2)).unwrap_or(u16::MAX);
        if q.hops == 0
            || steps > u16::from(self.config.max_walk_hops) + 1
            || taken.is_some_and(|n| n >= most)
            || (taken.is_none() && !self.allowed(now, &from, 1.0))
        {
            tracing::debug!(id = q.id, hops = q.hops, ttl = q.ttl, ?taken, "walker dropped");
            self.dropped += 1;
            return;
        }
        if taken.is_none() {
            while self.walkers_order.len() >= self.config.max_seen {
                match self.walkers_order.pop_front() {
                    Some(old) => {
                        self.walkers_from.remove(&old);
                    }
                    None => break,
                }
            }
            self.walkers_order.push_back(key.clone());
        }
        *self.walkers_from.entry(key).or_insert(0) += 1;
        // A walker may pass a node twice; its hits go straight to the origin (handled here when
        // the walker came back to it).
        let found = self.matches(&q.words);
        for chunk in found.chunks(MAX_HITS_PER_MESSAGE) {
            if q.origin == self.me {
                self.on_hits(q.id, q.hops, chunk.to_vec());
            } else {
                let msg = Msg::Hits { id: q.id, hops: q.hops, records: chunk.to_vec() };
                self.send(q.origin.clone(), msg);
            }
        }
        if q.ttl <= 1 {
            return;
        }
        let msg = Msg::Query {
            id: q.id,
            ttl: q.ttl - 1,
            hops: q.hops.saturating_add(1),
            words: q.words,
            origin: q.origin.clone(),
            walk: true,
        };
        // The first holder asks the origin too, so a walker for a search nobody runs dies at
        // once.
        if q.hops == 1 || q.hops.is_multiple_of(self.config.check_every.max(1)) {
            if q.origin == self.me {
                if self.verdict(now, q.id) {
                    self.step_walker(msg, &from);
                }
                return;
            }
            // Hold it and ask the origin (a bounded number held per query).
            let list = self.held.entry(q.id).or_default();
            if list.len() < self.config.walkers {
                list.push(Held { msg, from, until: now + self.config.check_wait });
                self.send(q.origin, Msg::Check { id: q.id });
            } else {
                tracing::debug!(id = q.id, "walker dropped: too many held for this walk");
                self.dropped += 1;
            }
            return;
        }
        self.step_walker(msg, &from);
    }

    /// Whether the walk `id` goes on (we are its origin): it runs and has not enough. A check
    /// keeps a walk alive, up to [`MAX_WALK_TIME`].
    fn verdict(&mut self, now: Instant, id: QueryId) -> bool {
        let (enough, wait) = (self.config.enough, self.config.check_wait);
        let search = self.ours.get(&id).and_then(|s| self.mine.get_mut(s));
        search.is_some_and(|m| {
            if m.mode == Mode::Walk {
                m.deadline = m.deadline.max(now + wait * 2).min(m.started + MAX_WALK_TIME);
            }
            m.found.len() < enough
        })
    }

    /// Sends a walker on to a random neighbour (not back where it came from, if there is
    /// another).
    fn step_walker(&mut self, msg: Msg<PI>, from: &PI) {
        let others = self.neighbours.iter().filter(|n| *n != from);
        let to = others.choose(&mut self.rng).or_else(|| self.neighbours.first()).cloned();
        if let Some(to) = to {
            self.send(to, msg);
        }
    }

    fn on_verdict(&mut self, id: QueryId, from: &PI, go_on: bool) {
        let Some(list) = self.held.get_mut(&id) else {
            tracing::debug!(id, go_on, "verdict for no walker held here");
            self.dropped += 1;
            return;
        };
        // One walker per verdict, and only the origin's.
        let from_origin =
            |h: &Held<PI>| matches!(&h.msg, Msg::Query { origin, .. } if origin == from);
        let Some(i) = list.iter().position(from_origin) else {
            self.dropped += 1;
            return;
        };
        let h = list.remove(i);
        if list.is_empty() {
            self.held.remove(&id);
        }
        if go_on {
            self.step_walker(h.msg, &h.from);
        }
    }

    fn on_hits(&mut self, id: QueryId, hops: u8, records: Vec<Record>) {
        let records: Vec<Record> = records.into_iter().take(MAX_HITS_PER_MESSAGE).collect();
        if let Some(&search) = self.ours.get(&id) {
            let max = self.config.max_results;
            let Some(mine) = self.mine.get_mut(&search) else { return };
            let mut new = Vec::new();
            for r in records {
                // A record must carry what was asked for.
                let kw = keywords(&r.name);
                let asked = mine.words.iter().all(|w| kw.contains(w));
                if mine.found.len() < max && asked && mine.found.insert((r.info_hash, r.publisher))
                {
                    new.push(r);
                }
            }
            for record in new {
                self.out.push_back(Output::Result { id: search, record, hops });
            }
            let done =
                mine.found.len() >= self.config.enough && !matches!(mine.mode, Mode::Flood(_));
            if done {
                self.finish(search);
            }
            return;
        }
        // A hit on its way back: along the reverse path (not for a search of ours that ended).
        let me = self.me.clone();
        match self.seen.get_mut(&id) {
            Some(s) if s.from != me && s.relayed < MAX_RELAYED_HITS => {
                s.relayed += 1;
                let to = s.from.clone();
                self.send(to, Msg::Hits { id, hops, records });
            }
            _ => self.dropped += 1,
        }
    }

    fn finish(&mut self, id: QueryId) {
        if let Some(m) = self.mine.remove(&id) {
            tracing::debug!(id, mode = ?m.mode, found = m.found.len(), "search done");
            self.out.push_back(Output::Done { id, results: m.found.len() });
        }
        self.ours.retain(|_, search| *search != id);
    }

    fn tick(&mut self, now: Instant) {
        // Forget old queries.
        while let Some(&(at, id)) = self.seen_order.front() {
            if at + self.config.seen_for > now {
                break;
            }
            self.seen_order.pop_front();
            self.seen.remove(&id);
        }
        // Walkers whose origin did not answer stop.
        for (id, list) in &mut self.held {
            let before = list.len();
            list.retain(|h| h.until > now);
            if list.len() < before {
                tracing::debug!(id, stopped = before - list.len(), "origin did not answer a check");
            }
        }
        self.held.retain(|_, l| !l.is_empty());
        // Searches whose step is due.
        let due: Vec<QueryId> =
            self.mine.iter().filter(|(_, m)| m.deadline <= now).map(|(id, _)| *id).collect();
        for id in due {
            let Some(m) = self.mine.get_mut(&id) else { continue };
            if m.mode == Mode::Ring && m.found.len() < self.config.enough && m.ttl < MAX_TTL {
                m.ttl = (m.ttl * 2).min(MAX_TTL);
                m.deadline = now + self.config.ring_wait;
                let ring: QueryId = self.rng.random();
                let (ttl, words) = (m.ttl, m.words.clone());
                self.ours.insert(ring, id);
                let me = self.me.clone();
                self.remember(now, ring, &me);
                self.flood(ring, ttl, &words, None);
            } else {
                self.finish(id);
            }
        }
    }
}

/// A query as it travels (the fields of [`Msg::Query`] but `walk`).
struct Query<PI> {
    id: QueryId,
    ttl: u8,
    hops: u8,
    words: Vec<String>,
    origin: PI,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Search cores on a fixed graph in virtual time: every message takes 10 ms.
    struct Net {
        nodes: Vec<Search<u32, ChaCha8Rng>>,
        now: Instant,
        /// (arrival, to, from, msg), in arrival order (equal latencies keep FIFO).
        wire: VecDeque<(Instant, u32, u32, Msg<u32>)>,
        sent: usize,
        results: Vec<(QueryId, Record, u8)>,
        done: Vec<(QueryId, usize)>,
    }

    impl Net {
        fn new(edges: &[(u32, u32)], n: u32, config: Config) -> Net {
            let mut nodes: Vec<_> = (0..n)
                .map(|i| Search::new(i, config.clone(), ChaCha8Rng::seed_from_u64(u64::from(i))))
                .collect();
            let mut adj = vec![Vec::new(); n as usize];
            for &(a, b) in edges {
                adj[a as usize].push(b);
                adj[b as usize].push(a);
            }
            for (node, a) in nodes.iter_mut().zip(adj) {
                node.set_neighbours(a);
            }
            Net {
                nodes,
                now: Instant::now(),
                wire: VecDeque::new(),
                sent: 0,
                results: vec![],
                done: vec![],
            }
        }

        fn line(n: u32, config: Config) -> Net {
            let edges: Vec<_> = (1..n).map(|i| (i - 1, i)).collect();
            Net::new(&edges, n, config)
        }

        /// A random graph of `n` nodes, each linked to `d` others chosen at random (a stand-in
        /// for the overlay's active views; the simulator uses the real ones).
        fn random(n: u32, d: usize, seed: u64, config: Config) -> Net {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut edges = BTreeSet::new();
            for a in 0..n {
                // A ring keeps it connected.
                edges.insert((a.min((a + 1) % n), a.max((a + 1) % n)));
                for _ in 0..d.saturating_sub(2) / 2 {
                    let b = rng.random_range(0..n);
                    if b != a {
                        edges.insert((a.min(b), a.max(b)));
                    }
                }
            }
            let edges: Vec<_> = edges.into_iter().collect();
            Net::new(&edges, n, config)
        }

        fn record(name: &str, byte: u8) -> Record {
            Record::unsigned(name.into(), 1000, [byte; 20], NodeId([byte; 32]))
        }

        fn collect(&mut self, i: u32) {
            while let Some(o) = self.nodes[i as usize].poll() {
                match o {
                    Output::Send { to, msg } => {
                        self.sent += 1;
                        self.wire.push_back((self.now + Duration::from_millis(10), to, i, msg));
                    }
                    Output::Result { id, record, hops } => self.results.push((id, record, hops)),
                    Output::Done { id, results } => self.done.push((id, results)),
                }
            }
        }

        /// Runs until nothing is in flight and no deadline is before `until`.
        fn run(&mut self, until: Duration) {
            let end = self.now + until;
            for i in 0..self.nodes.len() as u32 {
                self.collect(i);
            }
            loop {
                let deadline = self.nodes.iter().filter_map(|n| n.next_deadline()).min();
                let arrival = self.wire.front().map(|w| w.0);
                let Some(next) = [deadline, arrival].into_iter().flatten().min() else { break };
                if next > end {
                    break;
                }
                self.now = self.now.max(next);
                while self.wire.front().is_some_and(|w| w.0 <= self.now) {
                    let (_, to, from, msg) = self.wire.pop_front().unwrap();
                    self.nodes[to as usize].handle(self.now, Input::Message { from, msg });
                    self.collect(to);
                }
                for i in 0..self.nodes.len() as u32 {
                    if self.nodes[i as usize].next_deadline().is_some_and(|d| d <= self.now) {
                        self.nodes[i as usize].handle(self.now, Input::Timeout);
                        self.collect(i);
                    }
                }
            }
        }

        /// Hands node `to` a query from `from` as if it had crossed the wire.
        fn inject(&mut self, to: u32, from: u32, msg: Msg<u32>) {
            let now = self.now;
            self.nodes[to as usize].handle(now, Input::Message { from, msg });
            self.collect(to);
        }

        fn start(&mut self, i: u32, text: &str, mode: Mode) -> QueryId {
            let now = self.now;
            let id = self.nodes[i as usize].start(now, text, mode);
            self.collect(i);
            id
        }
    }

    /// A query from node 0 for `word`, at its first hop.
    fn query(id: QueryId, ttl: u8, word: &str, walk: bool) -> Msg<u32> {
        Msg::Query { id, ttl, hops: 1, words: vec![word.into()], origin: 0, walk }
    }

    #[test]
    fn keywords_are_normalized_and_capped() {
        assert_eq!(keywords("Big_Buck BUNNY.1080p.mkv"), ["big", "buck", "bunny", "1080p", "mkv"]);
        assert_eq!(keywords("ÉCOLE école a"), ["école"]);
        let long = "x".repeat(100) + " " + &"é".repeat(40);
        assert!(keywords(&long).iter().all(|w| w.len() <= MAX_WORD_BYTES));
        assert_eq!(keywords("a1 b2 c3 d4 e5 f6 g7 h8 i9 j10").len(), MAX_WORDS);
    }

    #[test]
    fn a_flood_reaches_as_far_as_its_ttl_and_answers_along_the_reverse_path() {
        let mut net = Net::line(10, Config::default());
        net.nodes[5].share(Net::record("Night of the Living Dead.avi", 5));
        net.start(0, "living dead", Mode::Flood(4));
        net.run(Duration::from_secs(5));
        assert!(net.results.is_empty(), "found 5 hops away with TTL 4");
        assert_eq!(net.done.len(), 1);
        net.start(0, "living dead", Mode::Flood(5));
        net.run(Duration::from_secs(5));
        assert_eq!(net.results.len(), 1);
        assert_eq!((net.results[0].1.info_hash, net.results[0].2), ([5; 20], 5));
        // Every node passed the query on once: 5 hops out, 5 back with the hit.
        assert_eq!(net.sent, 4 + 5 + 5);
        // A word the name lacks finds nothing.
        net.start(0, "living zombies", Mode::Flood(7));
        net.run(Duration::from_secs(5));
        assert_eq!(net.results.len(), 1);
    }

    #[test]
    fn duplicates_are_dropped_so_a_flood_costs_each_link_at_most_twice() {
        let n = 12;
        let edges: Vec<_> = (0..n).flat_map(|a| (a + 1..n).map(move |b| (a, b))).collect();
        let mut net = Net::new(&edges, n, Config::default());
        net.start(0, "anything", Mode::Flood(7));
        net.run(Duration::from_secs(5));
        let links = edges.len();
        assert!(net.sent <= 2 * links, "{} messages on {links} links", net.sent);
        let dropped: u64 = net.nodes.iter().map(|n| n.dropped()).sum();
        assert!(dropped > 0, "a complete graph sends duplicates, which are dropped");
    }

    #[test]
    fn an_expanding_ring_stops_once_it_has_enough() {
        let mut ring = Net::line(20, Config::default());
        ring.nodes[2].share(Net::record("free software song.ogg", 2));
        ring.start(0, "software song", Mode::Ring);
        ring.run(Duration::from_secs(30));
        assert_eq!(ring.results.len(), 1);
        assert_eq!(ring.done, vec![(ring.done[0].0, 1)]);
        let mut flood = Net::line(20, Config::default());
        flood.nodes[2].share(Net::record("free software song.ogg", 2));
        flood.start(0, "software song", Mode::Flood(7));
        flood.run(Duration::from_secs(30));
        assert_eq!(flood.results.len(), 1);
        // Rings of TTL 1 and 2 cost 1 + 2 queries and 2 hit hops; the flood goes 7 deep.
        assert!(ring.sent < flood.sent, "ring {} vs flood {}", ring.sent, flood.sent);
    }

    #[test]
    fn random_walkers_find_a_replicated_item_with_far_fewer_messages_than_a_flood() {
        // 2,000 nodes of degree about 6; the item on 1% of them (Lv et al.'s setting).
        let config = Config { walkers: 16, ..Config::default() };
        let build = || {
            let mut net = Net::random(2000, 6, 7, config.clone());
            for i in (0..2000).step_by(100) {
                net.nodes[i as usize].share(Net::record("popular item", 9));
            }
            net
        };
        let (mut walk_found, mut walk_sent, mut flood_found, mut flood_sent) = (0, 0, 0, 0);
        for q in 0..10 {
            let origin = 37 + 113 * q;
            let mut walk = build();
            walk.start(origin, "popular item", Mode::Walk);
            walk.run(Duration::from_secs(60));
            walk_found += usize::from(!walk.results.is_empty());
            walk_sent += walk.sent;
            let mut flood = build();
            flood.start(origin, "popular item", Mode::Flood(7));
            flood.run(Duration::from_secs(60));
            flood_found += usize::from(!flood.results.is_empty());
            flood_sent += flood.sent;
        }
        println!("10 queries: walks {walk_sent} messages, TTL-7 floods {flood_sent}");
        assert_eq!((walk_found, flood_found), (10, 10));
        assert!(walk_sent * 10 < flood_sent, "walks {walk_sent} messages, floods {flood_sent}");
    }

    #[test]
    fn ten_walks_at_once_all_find_their_single_copy() {
        // 20 nodes of degree about 5, five of them sharing one file each; two nodes walk for
        // all five files at once (160 walkers): a neighbour's query budget counts a walk once,
        // not once per walker, so none is dropped for it.
        let words = ["river", "boreal", "lighthouse", "caravan", "glacier"];
        for seed in 0..5 {
            let mut net = Net::random(20, 5, seed, Config::default());
            for (f, word) in words.iter().enumerate() {
                net.nodes[4 * f + 3].share(Net::record(word, f as u8 + 1));
            }
            let mut ids = Vec::new();
            for origin in [0, 1] {
                for word in words {
                    ids.push((net.start(origin, word, Mode::Walk), word));
                }
            }
            net.run(Duration::from_secs(60));
            for (id, word) in ids {
                let found = net.results.iter().any(|(q, r, _)| *q == id && r.name == word);
                assert!(found, "seed {seed}: a walk for {word} found nothing");
            }
            let dropped: u64 = net.nodes.iter().map(|n| n.dropped()).sum();
            println!("seed {seed}: {} messages, {dropped} dropped", net.sent);
        }
    }

    #[test]
    fn a_walker_for_a_search_nobody_runs_stops_at_its_first_check() {
        let mut net = Net::line(10, Config::default());
        net.nodes[5].share(Net::record("bait file", 5));
        // Node 1 gets a walker whose origin (node 0) never started that search.
        net.inject(1, 0, query(77, 200, "bait", true));
        net.run(Duration::from_secs(10));
        // It asked the origin, was told no, and went no further: node 5 never saw it.
        assert_eq!(net.sent, 2, "a check and a verdict");
        assert!(net.results.is_empty());
    }

    #[test]
    fn hostile_queries_are_capped() {
        // A TTL far above the cap is lowered to 7.
        let mut net = Net::line(12, Config::default());
        net.nodes[9].share(Net::record("deep file", 9));
        net.inject(1, 0, query(1, 200, "deep", false));
        net.run(Duration::from_secs(5));
        // Node 1 took it with TTL 7: nodes 1 to 7 saw it, node 8 did not.
        assert!(net.nodes[7].seen_len() == 1 && net.nodes[8].seen_len() == 0, "went past TTL 7");
        // One neighbour's query flood: at most its budget per second goes through.
        let config = Config { queries_per_second: 5.0, max_seen: 50, ..Config::default() };
        let mut node = Search::new(1u32, config, ChaCha8Rng::seed_from_u64(1));
        node.set_neighbours(vec![0, 2]);
        let now = Instant::now();
        for id in 0..1000 {
            node.handle(now, Input::Message { from: 0, msg: query(id, 3, "xy", false) });
        }
        assert_eq!(node.seen_len(), 5);
        assert_eq!(node.dropped(), 995);
        // Over time the budget refills, and the table of queries seen stays bounded.
        for (k, id) in (1000..2000).enumerate() {
            let at = now + Duration::from_millis(200 * k as u64);
            node.handle(at, Input::Message { from: 0, msg: query(id, 3, "xy", false) });
        }
        assert!(node.seen_len() <= 50);
        // Queries from a node that is not a neighbour, or that ask for nothing, are dropped.
        let later = now + Duration::from_secs(3600);
        let before = node.dropped();
        for (from, words) in [(7u32, "xy"), (0, "x !")] {
            let msg = query(5000, 3, words, false);
            node.handle(later, Input::Message { from, msg });
        }
        assert_eq!(node.dropped(), before + 2);
        // Walks: one token each, charged on the first walker from a neighbour; that walk's
        // later walkers pass, up to twice its walkers.
        let config = Config { queries_per_second: 5.0, walkers: 4, ..Config::default() };
        let mut walks = Search::new(1u32, config, ChaCha8Rng::seed_from_u64(2));
        walks.set_neighbours(vec![0, 2]);
        for id in 0..100 {
            walks.handle(now, Input::Message { from: 0, msg: query(id, 5, "xy", true) });
        }
        assert_eq!(walks.dropped(), 95, "100 walks from one neighbour at once: its budget takes 5");
        // (Two hops in, so none waits on a check-back.)
        let words = vec!["xy".to_string()];
        let walker = Msg::Query { id: 3, ttl: 5, hops: 2, words, origin: 0, walk: true };
        for _ in 0..20 {
            walks.handle(now, Input::Message { from: 0, msg: walker.clone() });
        }
        assert_eq!(walks.dropped(), 95 + 13, "walk 3 had taken one walker: 7 more pass of 20");
        // A forged walker that claims more hops and TTL than a walk has (to skip its
        // check-backs) is dropped.
        let forged = Msg::Query {
            id: 6000,
            ttl: 255,
            hops: 253,
            words: vec!["xy".into()],
            origin: 9,
            walk: true,
        };
        node.handle(later, Input::Message { from: 0, msg: forged });
        assert_eq!(node.dropped(), before + 3);
        // Hits for a query nobody forwarded are dropped, not passed on.
        let before = node.dropped();
        let hits = Msg::Hits { id: 424242, hops: 1, records: vec![Net::record("x y", 1)] };
        node.handle(now, Input::Message { from: 2, msg: hits });
        assert_eq!(node.dropped(), before + 1);
        assert!(std::iter::from_fn(|| node.poll())
            .all(|o| !matches!(o, Output::Send { msg: Msg::Hits { .. }, .. })));
    }

    #[test]
    fn a_record_counts_only_signed_unaltered_in_time_and_within_caps() {
        let id = Identity::from_seed([7; 32]);
        let peers = vec!["127.0.0.1:6881".parse().unwrap()];
        let now = 1_800_000_000;
        let good = Record::signed(&id, "Big Buck Bunny.mp4".into(), 5, [1; 20], peers, now + 60);
        assert_eq!(good.check(now), Ok(()));
        // Through the wire and back it still verifies.
        let bytes = postcard::to_allocvec(&good).unwrap();
        let back: Record = crate::wire::from_canonical(&bytes).unwrap();
        assert_eq!(back.check(now), Ok(()));
        // Altered fields, another key, a cut signature.
        let mut bigger = good.clone();
        bigger.size = 6;
        let mut renamed = good.clone();
        renamed.name = "Big Buck Bunny 2.mp4".into();
        let mut moved = good.clone();
        moved.peers = vec!["10.0.0.1:6881".parse().unwrap()];
        let mut later = good.clone();
        later.expires += 1;
        let mut stolen = good.clone();
        stolen.publisher = Identity::from_seed([8; 32]).id();
        let mut cut = good.clone();
        cut.sig.pop();
        for r in [bigger, renamed, moved, later, stolen, cut] {
            assert_eq!(r.check(now), Err(RecordError::BadSignature), "{r:?}");
        }
        // Expired, too long-lived, oversized, unsigned.
        assert_eq!(good.check(now + 60), Err(RecordError::Expired));
        let far = Record::signed(&id, "x".into(), 1, [1; 20], vec![], now + 3 * 3600);
        assert_eq!(far.check(now), Err(RecordError::TooLong));
        let long = Record::signed(&id, "x".repeat(256), 1, [1; 20], vec![], now + 60);
        assert_eq!(long.check(now), Err(RecordError::Name(256)));
        let many = vec!["127.0.0.1:1".parse().unwrap(); 5];
        let crowded = Record::signed(&id, "x".into(), 1, [1; 20], many, now + 60);
        assert_eq!(crowded.check(now), Err(RecordError::Peers(5)));
        let bare = Record::unsigned("x".into(), 1, [1; 20], id.id());
        assert!(bare.check(0).is_err());
    }
}
