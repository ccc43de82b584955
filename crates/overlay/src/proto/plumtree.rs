//! Plumtree broadcast core (Leitão, Pereira, Rodrigues: "Epidemic Broadcast Trees", 2007), sans-IO.
//!
//! One [`State`] per topic. Neighbors come from the membership layer as [`Input::NeighborUp`] /
//! [`Input::NeighborDown`]; every new neighbor starts in the *eager* set. A message is pushed in
//! full ([`Message::Gossip`]) to eager peers and announced by id ([`Message::IHave`], batched per
//! `ihave_interval`) to lazy peers. A duplicate `Gossip` moves its sender to lazy and answers
//! [`Message::Prune`], so the eager links settle into a spanning tree. An id announced by IHAVE
//! but not received within `graft_timeout_1` is requested with [`Message::Graft`] from the first
//! announcer, which moves back to eager (repairing the tree); further announcers are tried every
//! `graft_timeout_2`.
//!
//! Optimization step of the paper (it shortens the tree's paths, so the last delivery hop): when
//! an IHAVE announces a message already received, with a round at least
//! [`Config::optimization_threshold`] lower than the round of the path it came by, the node
//! swaps the links: it sends [`Message::Graft`] without an id to the announcer (which becomes
//! eager) and [`Message::Prune`] to the neighbor it received the message from.
//!
//! Invariants:
//! - `eager` and `lazy` are disjoint; their union is the set of current neighbors.
//! - An id is in `cache` from its first receipt (or local broadcast) until retention expires;
//!   while it is there it is never delivered again and never appears in `missing`.
//! - `missing` only holds ids not in `cache`, each with at least one announcer left or a pending
//!   timer; it is bounded by [`MAX_MISSING`].
//!
//! Method order (as in quinn's `Connection`): getters ([`State::eager`], [`State::lazy`],
//! [`State::next_deadline`]); one mutation ([`State::handle`]); then drain [`State::poll`] until it
//! returns `None`, and call `handle(now, Input::Timeout)` once `now >= next_deadline()`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Hop count of a message from its origin (the origin sends round 0).
pub type Round = u16;

/// Most ids this node tracks as announced-but-missing; further unknown IHAVE entries are
/// ignored until some are received or given up, so hostile announcements cannot grow memory.
pub const MAX_MISSING: usize = 4096;

/// Most announcers remembered per missing id (the first ones are the ones grafted first).
pub const MAX_ANNOUNCERS: usize = 16;

/// Most entries sent in one IHAVE message; a longer queue is split over several messages.
pub const MAX_IHAVE_ENTRIES: usize = 1024;

/// Identifier of a broadcast message, computed by the caller (e.g. a hash of the payload).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 32]);

impl Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageId(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

/// Tunables of the broadcast.
#[derive(Debug, Clone)]
pub struct Config {
    /// Wait after the first IHAVE of an unknown id before sending the first GRAFT (default
    /// 250 ms). Shorter values graft while the message is still on its way down the tree, which
    /// adds eager links that later duplicates prune again; longer ones leave a message whose
    /// tree path broke waiting that long. In the simulator (1,000 nodes, 20–80 ms links) 80 ms
    /// gave RMR 0.71–0.74, 250 ms 0.05–0.19 and 500 ms 0.00; on loopback, concurrent broadcasts
    /// can prune the tree apart and the next messages then wait for this timeout (measured: 500
    /// ms made them 0.55 s late). See docs/overlay-sim.md.
    pub graft_timeout_1: Duration,
    /// Wait between further GRAFTs for the same id (to the next announcer).
    pub graft_timeout_2: Duration,
    /// IHAVE announcements are batched and flushed at most this long after they are queued.
    pub ihave_interval: Duration,
    /// How long a received message is kept to answer GRAFTs and to suppress duplicates.
    /// After it expires the same id would be delivered again.
    pub message_cache_retention: Duration,
    /// Largest payload accepted, in bytes; larger `Gossip` from peers is ignored.
    pub max_payload: usize,
    /// Rounds an IHAVE must save over the path a message came by to swap the tree links
    /// (the paper's optimization; default 3; `Round::MAX` turns it off).
    pub optimization_threshold: Round,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            graft_timeout_1: Duration::from_millis(250),
            graft_timeout_2: Duration::from_millis(40),
            ihave_interval: Duration::from_millis(50),
            message_cache_retention: Duration::from_secs(30),
            max_payload: 4096,
            optimization_threshold: 3,
        }
    }
}

/// A message of the broadcast protocol, exchanged between neighbors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A full message, pushed eagerly (or in answer to a GRAFT).
    Gossip {
        /// Id of the message.
        id: MessageId,
        /// Application payload.
        payload: Vec<u8>,
        /// Hops from the origin.
        round: Round,
    },
    /// Announcement of received messages, sent lazily: `(id, round)` pairs.
    IHave(Vec<(MessageId, Round)>),
    /// "Make me eager again", and if `id` is set, "send me that message".
    Graft {
        /// The message asked for, if any.
        id: Option<MessageId>,
        /// Round of the announcement that prompted the graft.
        round: Round,
    },
    /// "Stop pushing full messages to me" (the receiver moves the sender to lazy).
    Prune,
}

/// What the caller feeds the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<PI> {
    /// Broadcast a message originated by this node.
    Broadcast {
        /// Id of the message (must be unique, e.g. a hash).
        id: MessageId,
        /// Application payload.
        payload: Vec<u8>,
    },
    /// A protocol message received from a neighbor.
    Message {
        /// The sender.
        from: PI,
        /// The message.
        msg: Message,
    },
    /// The membership layer connected a neighbor.
    NeighborUp(PI),
    /// The membership layer lost a neighbor.
    NeighborDown(PI),
    /// `now` reached [`State::next_deadline`].
    Timeout,
}

/// What the state machine asks of the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<PI> {
    /// Send `msg` to neighbor `to`.
    Send {
        /// The neighbor.
        to: PI,
        /// The message.
        msg: Message,
    },
    /// Hand a message to the application (exactly once per id while it is cached).
    Deliver {
        /// Id of the message.
        id: MessageId,
        /// Application payload.
        payload: Vec<u8>,
        /// The neighbor it came from, `None` for a local broadcast.
        from: Option<PI>,
        /// Hops from the origin.
        round: Round,
    },
}

/// Local mistakes in [`State::handle`]; input from peers never errors (bad input is ignored).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The local broadcast is larger than `Config::max_payload`.
    #[error("broadcast payload of {len} bytes exceeds max_payload of {max} bytes; split it")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The id was already broadcast or received (and is still cached).
    #[error("message id {0:?} was already seen; compute ids so that they are unique")]
    DuplicateId(MessageId),
}

/// A message kept to answer GRAFTs and to recognise duplicates.
#[derive(Debug)]
struct Cached<PI> {
    payload: Vec<u8>,
    round: Round,
    /// The tree parent it came from and the round of that path (`None`: broadcast here);
    /// moved to the announcer when the optimization step swaps links.
    via: Option<(PI, Round)>,
}

/// An id announced by IHAVE that has not arrived yet.
#[derive(Debug)]
struct Missing<PI> {
    /// Announcers not yet grafted, in announcement order.
    announcers: VecDeque<(PI, Round)>,
    /// When to graft the next announcer.
    deadline: Instant,
}

/// Plumtree state of one topic. See the module docs for the call order.
#[derive(Debug)]
pub struct State<PI> {
    config: Config,
    eager: BTreeSet<PI>,
    lazy: BTreeSet<PI>,
    cache: BTreeMap<MessageId, Cached<PI>>,
    /// Expiry times of `cache` entries in insertion order (so non-decreasing if `now` is).
    expiry: VecDeque<(Instant, MessageId)>,
    missing: BTreeMap<MessageId, Missing<PI>>,
    /// IHAVE entries waiting for the next flush, per lazy peer.
    lazy_queue: BTreeMap<PI, Vec<(MessageId, Round)>>,
    /// When `lazy_queue` is flushed; `Some` iff it is non-empty.
    flush_at: Option<Instant>,
    outputs: VecDeque<Output<PI>>,
}

impl<PI: Ord + Copy + Debug> State<PI> {
    /// A state with no neighbors and no messages.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            eager: BTreeSet::new(),
            lazy: BTreeSet::new(),
            cache: BTreeMap::new(),
            expiry: VecDeque::new(),
            missing: BTreeMap::new(),
            lazy_queue: BTreeMap::new(),
            flush_at: None,
            outputs: VecDeque::new(),
        }
    }

    /// Neighbors that receive full messages (the tree links).
    pub fn eager(&self) -> &BTreeSet<PI> {
        &self.eager
    }

    /// Neighbors that receive IHAVE announcements only.
    pub fn lazy(&self) -> &BTreeSet<PI> {
        &self.lazy
    }

    /// Whether `id` was received or broadcast and is still cached.
    pub fn has_message(&self, id: &MessageId) -> bool {
        self.cache.contains_key(id)
    }

    /// The earliest time at which `handle(now, Input::Timeout)` has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let graft = self.missing.values().map(|m| m.deadline).min();
        let expire = self.expiry.front().map(|(t, _)| *t);
        [graft, expire, self.flush_at].into_iter().flatten().min()
    }

    /// The next output, if any; drain it after every [`State::handle`].
    pub fn poll(&mut self) -> Option<Output<PI>> {
        let out = self.outputs.pop_front();
        if out.is_none() && self.outputs.capacity() > 0 {
            // Drained: give the buffer back rather than keep a burst's worth per node.
            self.outputs = VecDeque::new();
        }
        out
    }

    /// Apply one input at time `now`. Errors only for local mistakes in `Input::Broadcast`.
    pub fn handle(&mut self, now: Instant, input: Input<PI>) -> Result<(), Error> {
        match input {
            Input::Broadcast { id, payload } => self.broadcast(now, id, payload)?,
            Input::Message { from, msg } => self.on_message(now, from, msg),
            Input::NeighborUp(peer) => self.add_eager(peer),
            Input::NeighborDown(peer) => self.neighbor_down(peer),
            Input::Timeout => self.on_timeout(now),
        }
        Ok(())
    }

    fn broadcast(&mut self, now: Instant, id: MessageId, payload: Vec<u8>) -> Result<(), Error> {
        if payload.len() > self.config.max_payload {
            return Err(Error::PayloadTooLarge {
                len: payload.len(),
                max: self.config.max_payload,
            });
        }
        if self.cache.contains_key(&id) {
            return Err(Error::DuplicateId(id));
        }
        self.accept(now, id, payload, 0, None);
        Ok(())
    }

    fn on_message(&mut self, now: Instant, from: PI, msg: Message) {
        // Messages from non-neighbors (a race with NeighborDown, or a hostile peer) are ignored
        // so they cannot add links behind the membership layer's back.
        if !self.is_neighbor(&from) {
            return;
        }
        match msg {
            Message::Gossip { id, payload, round } => self.on_gossip(now, from, id, payload, round),
            Message::IHave(entries) => self.on_ihave(now, from, entries),
            Message::Graft { id, round: _ } => self.on_graft(from, id),
            Message::Prune => self.add_lazy(from),
        }
    }

    fn on_gossip(&mut self, now: Instant, from: PI, id: MessageId, payload: Vec<u8>, round: Round) {
        if payload.len() > self.config.max_payload {
            return;
        }
        if self.cache.contains_key(&id) {
            // A duplicate: this link is redundant for the tree.
            self.add_lazy(from);
            self.send(from, Message::Prune);
            return;
        }
        self.add_eager(from);
        self.accept(now, id, payload, round, Some(from));
    }

    /// Cache, deliver and forward a message seen for the first time.
    fn accept(
        &mut self,
        now: Instant,
        id: MessageId,
        payload: Vec<u8>,
        round: Round,
        from: Option<PI>,
    ) {
        self.forget_missing(&id);
        let next = round.saturating_add(1);
        let eager: Vec<PI> = self.eager.iter().copied().filter(|p| Some(*p) != from).collect();
        for peer in eager {
            self.send(peer, Message::Gossip { id, payload: payload.clone(), round: next });
        }
        let lazy: Vec<PI> = self.lazy.iter().copied().filter(|p| Some(*p) != from).collect();
        for peer in lazy {
            self.lazy_queue.entry(peer).or_default().push((id, next));
        }
        if !self.lazy_queue.is_empty() && self.flush_at.is_none() {
            self.flush_at = Some(now + self.config.ihave_interval);
        }
        self.outputs.push_back(Output::Deliver { id, payload: payload.clone(), from, round });
        let via = from.map(|p| (p, round));
        self.cache.insert(id, Cached { payload, round, via });
        self.expiry.push_back((now + self.config.message_cache_retention, id));
    }

    fn on_ihave(&mut self, now: Instant, from: PI, entries: Vec<(MessageId, Round)>) {
        for (id, round) in entries {
            if let Some(cached) = self.cache.get_mut(&id) {
                let Some((parent, path_round)) = cached.via else { continue };
                let threshold = self.config.optimization_threshold;
                if parent != from && path_round.saturating_sub(round) >= threshold {
                    // A much shorter path exists through `from`: make it the tree link.
                    cached.via = Some((from, round));
                    self.add_eager(from);
                    self.send(from, Message::Graft { id: None, round });
                    if self.eager.contains(&parent) {
                        self.add_lazy(parent);
                        self.send(parent, Message::Prune);
                    }
                }
                continue;
            }
            if !self.missing.contains_key(&id) && self.missing.len() >= MAX_MISSING {
                continue;
            }
            let missing = self.missing.entry(id).or_insert_with(|| Missing {
                announcers: VecDeque::new(),
                deadline: now + self.config.graft_timeout_1,
            });
            if missing.announcers.len() < MAX_ANNOUNCERS
                && !missing.announcers.iter().any(|(p, _)| *p == from)
            {
                missing.announcers.push_back((from, round));
            }
        }
    }

    fn on_graft(&mut self, from: PI, id: Option<MessageId>) {
        self.add_eager(from);
        if let Some(id) = id {
            if let Some(cached) = self.cache.get(&id) {
                let msg =
                    Message::Gossip { id, payload: cached.payload.clone(), round: cached.round };
                self.send(from, msg);
            }
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        // Graft missing messages whose timer fired.
        let due: Vec<MessageId> =
            self.missing.iter().filter(|(_, m)| m.deadline <= now).map(|(id, _)| *id).collect();
        for id in due {
            let Some(missing) = self.missing.get_mut(&id) else { continue };
            match missing.announcers.pop_front() {
                Some((peer, round)) => {
                    missing.deadline = now + self.config.graft_timeout_2;
                    self.add_eager(peer);
                    self.send(peer, Message::Graft { id: Some(id), round });
                }
                None => {
                    // Every announcer was tried and the last one had its chance: give up.
                    self.forget_missing(&id);
                }
            }
        }
        if self.flush_at.is_some_and(|t| t <= now) {
            self.flush_at = None;
            for (peer, entries) in std::mem::take(&mut self.lazy_queue) {
                for chunk in entries.chunks(MAX_IHAVE_ENTRIES) {
                    self.send(peer, Message::IHave(chunk.to_vec()));
                }
            }
        }
        while let Some(&(t, id)) = self.expiry.front() {
            if t > now {
                break;
            }
            self.expiry.pop_front();
            self.cache.remove(&id);
        }
    }

    fn neighbor_down(&mut self, peer: PI) {
        let was_eager = self.eager.remove(&peer);
        self.lazy.remove(&peer);
        if was_eager {
            // A tree link is gone, and we cannot tell for which senders it carried messages to
            // us: ask every lazy neighbor to push to us again (GRAFT without id). The next
            // message arrives over several links and the duplicates prune them back to a tree,
            // instead of every message waiting `graft_timeout_1` for its own GRAFT until then.
            let lazy: Vec<PI> = self.lazy.iter().copied().collect();
            for p in lazy {
                self.add_eager(p);
                self.send(p, Message::Graft { id: None, round: 0 });
            }
        }
        self.lazy_queue.remove(&peer);
        if self.lazy_queue.is_empty() {
            self.flush_at = None;
        }
        for missing in self.missing.values_mut() {
            missing.announcers.retain(|(p, _)| *p != peer);
        }
    }

    /// Drops `id` from `missing`; an emptied map gives its memory back (a B-tree keeps its
    /// root leaf, ~900 bytes, when its last entry goes, and most nodes miss nothing most of
    /// the time).
    fn forget_missing(&mut self, id: &MessageId) {
        self.missing.remove(id);
        if self.missing.is_empty() {
            self.missing = BTreeMap::new();
        }
    }

    fn is_neighbor(&self, peer: &PI) -> bool {
        self.eager.contains(peer) || self.lazy.contains(peer)
    }

    fn add_eager(&mut self, peer: PI) {
        self.lazy.remove(&peer);
        self.eager.insert(peer);
    }

    fn add_lazy(&mut self, peer: PI) {
        self.eager.remove(&peer);
        self.lazy.insert(peer);
    }

    fn send(&mut self, to: PI, msg: Message) {
        self.outputs.push_back(Output::Send { to, msg });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testnet::{connected, drain};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn mid(n: u8) -> MessageId {
        MessageId([n; 32])
    }

    fn gossip(from: u64, id: MessageId, round: Round) -> Input<u64> {
        Input::Message { from, msg: Message::Gossip { id, payload: b"hi".to_vec(), round } }
    }

    #[test]
    fn losing_an_eager_link_grafts_every_lazy_neighbor() {
        let mut st = State::new(Config::default());
        let now = Instant::now();
        for p in [1u64, 2, 3] {
            st.handle(now, Input::NeighborUp(p)).expect("neighbor up");
        }
        st.handle(now, Input::Message { from: 2, msg: Message::Prune }).expect("peer input");
        st.handle(now, Input::Message { from: 3, msg: Message::Prune }).expect("peer input");
        assert_eq!(st.eager(), &BTreeSet::from([1]));
        st.handle(now, Input::NeighborDown(1)).expect("neighbor down");
        let out: Vec<Output<u64>> = drain(&mut st);
        let graft = Message::Graft { id: None, round: 0 };
        assert_eq!(
            out,
            vec![Output::Send { to: 2, msg: graft.clone() }, Output::Send { to: 3, msg: graft },]
        );
        assert_eq!(st.eager(), &BTreeSet::from([2, 3]));
        // Losing a lazy link changes nothing.
        st.handle(now, Input::Message { from: 3, msg: Message::Prune }).expect("peer input");
        st.handle(now, Input::NeighborDown(3)).expect("neighbor down");
        assert_eq!(st.poll(), None);
    }

    #[test]
    fn duplicate_gossip_prunes_and_is_not_delivered_again() {
        let t0 = Instant::now();
        let mut s = State::new(Config::default());
        s.handle(t0, Input::NeighborUp(1)).unwrap();
        s.handle(t0, Input::NeighborUp(2)).unwrap();
        assert_eq!(s.eager(), &BTreeSet::from([1, 2]));

        s.handle(t0, gossip(1, mid(7), 3)).unwrap();
        assert_eq!(
            drain(&mut s),
            vec![
                Output::Send {
                    to: 2,
                    msg: Message::Gossip { id: mid(7), payload: b"hi".to_vec(), round: 4 }
                },
                Output::Deliver { id: mid(7), payload: b"hi".to_vec(), from: Some(1), round: 3 },
            ]
        );

        s.handle(t0, gossip(2, mid(7), 5)).unwrap();
        assert_eq!(drain(&mut s), vec![Output::Send { to: 2, msg: Message::Prune }]);
        assert_eq!(s.eager(), &BTreeSet::from([1]));
        assert_eq!(s.lazy(), &BTreeSet::from([2]));

        // The same id from the tree parent again: still not delivered.
        s.handle(t0, gossip(1, mid(7), 3)).unwrap();
        assert_eq!(drain(&mut s), vec![Output::Send { to: 1, msg: Message::Prune }]);
        assert_eq!(s.eager(), &BTreeSet::new());
    }

    #[test]
    fn lazy_peers_get_batched_ihave_and_prune_moves_to_lazy() {
        let t0 = Instant::now();
        let cfg = Config::default();
        let mut s = State::new(cfg.clone());
        s.handle(t0, Input::NeighborUp(1)).unwrap();
        s.handle(t0, Input::NeighborUp(2)).unwrap();
        s.handle(t0, Input::Message { from: 2, msg: Message::Prune }).unwrap();
        assert_eq!(s.lazy(), &BTreeSet::from([2]));
        s.handle(t0, Input::Broadcast { id: mid(1), payload: vec![1] }).unwrap();
        s.handle(t0, Input::Broadcast { id: mid(2), payload: vec![2] }).unwrap();
        assert_eq!(
            s.handle(t0, Input::Broadcast { id: mid(2), payload: vec![2] }),
            Err(Error::DuplicateId(mid(2)))
        );
        let out = drain(&mut s);
        assert_eq!(out.len(), 4);
        assert!(out.contains(&Output::Deliver {
            id: mid(1),
            payload: vec![1],
            from: None,
            round: 0
        }));
        assert_eq!(s.next_deadline(), Some(t0 + cfg.ihave_interval));
        s.handle(t0 + cfg.ihave_interval, Input::Timeout).unwrap();
        assert_eq!(
            drain(&mut s),
            vec![Output::Send { to: 2, msg: Message::IHave(vec![(mid(1), 1), (mid(2), 1)]) }]
        );
        assert_eq!(s.next_deadline(), Some(t0 + cfg.message_cache_retention));
    }

    #[test]
    fn ihave_of_missing_message_grafts_after_timeout_then_next_announcer() {
        let t0 = Instant::now();
        let cfg = Config::default();
        let mut s = State::new(cfg.clone());
        for p in [1, 2, 3] {
            s.handle(t0, Input::NeighborUp(p)).unwrap();
        }
        s.handle(t0, Input::Message { from: 1, msg: Message::Prune }).unwrap();
        s.handle(t0, Input::Message { from: 2, msg: Message::Prune }).unwrap();
        s.handle(t0, Input::Message { from: 1, msg: Message::IHave(vec![(mid(9), 2)]) }).unwrap();
        s.handle(t0, Input::Message { from: 2, msg: Message::IHave(vec![(mid(9), 4)]) }).unwrap();
        assert!(drain(&mut s).is_empty());
        let t1 = t0 + cfg.graft_timeout_1;
        assert_eq!(s.next_deadline(), Some(t1));
        s.handle(t1, Input::Timeout).unwrap();
        assert_eq!(
            drain(&mut s),
            vec![Output::Send { to: 1, msg: Message::Graft { id: Some(mid(9)), round: 2 } }]
        );
        assert_eq!(s.eager(), &BTreeSet::from([1, 3]));
        let t2 = t1 + cfg.graft_timeout_2;
        assert_eq!(s.next_deadline(), Some(t2));
        s.handle(t2, Input::Timeout).unwrap();
        assert_eq!(
            drain(&mut s),
            vec![Output::Send { to: 2, msg: Message::Graft { id: Some(mid(9)), round: 4 } }]
        );
        // The message arrives from 2: delivered, forwarded to the other eager peers, no more timers.
        s.handle(t2, gossip(2, mid(9), 4)).unwrap();
        let out = drain(&mut s);
        assert_eq!(out.len(), 3);
        assert_eq!(s.next_deadline(), Some(t2 + cfg.message_cache_retention));
    }

    #[test]
    fn ihave_with_a_much_shorter_path_swaps_tree_links() {
        let t0 = Instant::now();
        let mut s = State::new(Config::default());
        for p in [1, 2, 3] {
            s.handle(t0, Input::NeighborUp(p)).unwrap();
        }
        s.handle(t0, Input::Message { from: 2, msg: Message::Prune }).unwrap();
        s.handle(t0, Input::Message { from: 3, msg: Message::Prune }).unwrap();
        s.handle(t0, gossip(1, mid(5), 8)).unwrap();
        drain(&mut s);
        // Saving 2 rounds is below the threshold (3): nothing changes.
        s.handle(t0, Input::Message { from: 2, msg: Message::IHave(vec![(mid(5), 6)]) }).unwrap();
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.eager(), &BTreeSet::from([1]));
        // Saving 3: graft the announcer without asking for the message, prune the old parent.
        s.handle(t0, Input::Message { from: 3, msg: Message::IHave(vec![(mid(5), 5)]) }).unwrap();
        assert_eq!(
            drain(&mut s),
            vec![
                Output::Send { to: 3, msg: Message::Graft { id: None, round: 5 } },
                Output::Send { to: 1, msg: Message::Prune },
            ]
        );
        assert_eq!(s.eager(), &BTreeSet::from([3]));
        assert_eq!(s.lazy(), &BTreeSet::from([1, 2]));
        // The new path (round 5) is the one compared now: round 3 saves only 2 more.
        s.handle(t0, Input::Message { from: 2, msg: Message::IHave(vec![(mid(5), 3)]) }).unwrap();
        assert!(drain(&mut s).is_empty());
        // A message broadcast here has no path to improve.
        s.handle(t0, Input::Broadcast { id: mid(6), payload: vec![6] }).unwrap();
        drain(&mut s);
        s.handle(t0, Input::Message { from: 2, msg: Message::IHave(vec![(mid(6), 0)]) }).unwrap();
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn graft_answers_with_cached_message_and_bad_input_is_ignored() {
        let t0 = Instant::now();
        let cfg = Config { max_payload: 4, ..Config::default() };
        let mut s = State::new(cfg);
        s.handle(t0, Input::NeighborUp(1)).unwrap();
        assert_eq!(
            s.handle(t0, Input::Broadcast { id: mid(1), payload: vec![0; 5] }),
            Err(Error::PayloadTooLarge { len: 5, max: 4 })
        );
        // Oversized gossip from a peer and anything from a non-neighbor: ignored.
        let big = Message::Gossip { id: mid(2), payload: vec![0; 5], round: 0 };
        s.handle(t0, Input::Message { from: 1, msg: big }).unwrap();
        s.handle(t0, gossip(9, mid(3), 0)).unwrap();
        assert!(drain(&mut s).is_empty());
        assert!(!s.has_message(&mid(2)) && !s.has_message(&mid(3)));

        s.handle(t0, Input::Broadcast { id: mid(1), payload: vec![1] }).unwrap();
        drain(&mut s);
        s.handle(t0, Input::Message { from: 1, msg: Message::Prune }).unwrap();
        let graft = Message::Graft { id: Some(mid(1)), round: 1 };
        s.handle(t0, Input::Message { from: 1, msg: graft }).unwrap();
        assert_eq!(
            drain(&mut s),
            vec![Output::Send {
                to: 1,
                msg: Message::Gossip { id: mid(1), payload: vec![1], round: 0 }
            }]
        );
        assert_eq!(s.eager(), &BTreeSet::from([1]));
    }

    type Net = crate::testnet::Net<State<u64>>;

    /// `n` nodes over a random graph of `seed` (a random tree, then random edges until every
    /// degree is >= 3), neighbors along its edges, with per-link delays; and its edges.
    fn mesh(n: u64, seed: u64) -> (Net, BTreeSet<(u64, u64)>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut edges = BTreeSet::new();
        for i in 1..n {
            let j = rng.random_range(0..i);
            edges.insert((j, i));
        }
        let degree = |edges: &BTreeSet<(u64, u64)>, v: u64| {
            edges.iter().filter(|(a, b)| *a == v || *b == v).count()
        };
        for v in 0..n {
            while degree(&edges, v) < 3 {
                let w = rng.random_range(0..n);
                if w != v {
                    edges.insert((v.min(w), v.max(w)));
                }
            }
        }
        let mut net = Net::new(seed);
        net.latency = |a, b| Duration::from_millis(5 + (a.min(b) * 7 + a.max(b) * 13) % 23);
        for i in 0..n {
            net.nodes.insert(i, State::new(Config::default()));
        }
        for &(a, b) in &edges {
            net.input(a, Input::NeighborUp(b));
            net.input(b, Input::NeighborUp(a));
        }
        (net, edges)
    }

    /// Broadcasts from `from` and runs long enough for every graft and flush timer, far
    /// shorter than cache retention.
    fn broadcast(net: &mut Net, from: u64, id: MessageId) {
        net.input(from, Input::Broadcast { id, payload: vec![id.0[0]] });
        net.run_for(Duration::from_secs(2));
    }

    fn everyone_has_exactly_once(net: &Net, id: MessageId) -> bool {
        let has = |o: &&Output<u64>| matches!(o, Output::Deliver { id: d, .. } if *d == id);
        net.nodes.keys().all(|&i| net.kept(i).iter().filter(has).count() == 1)
    }

    /// Frames sent so far that `is` picks.
    fn count(net: &Net, is: fn(&Message) -> bool) -> usize {
        net.sent.iter().filter(|(_, _, m)| is(m)).count()
    }

    #[test]
    fn broadcast_reaches_all_exactly_once_and_tree_settles() {
        let n = 30;
        let (mut net, edges) = mesh(n, 42);
        assert!((0..n).all(|v| edges.iter().filter(|(a, b)| *a == v || *b == v).count() >= 3));
        broadcast(&mut net, 0, mid(0));
        assert!(everyone_has_exactly_once(&net, mid(0)));
        let prunes = count(&net, |m| matches!(m, Message::Prune));
        assert!(prunes > 0, "duplicates on the initial full mesh must prune");

        for k in 1..6u8 {
            broadcast(&mut net, u64::from(k) * 5 % n, mid(k));
            assert!(everyone_has_exactly_once(&net, mid(k)));
        }
        let gossip = |m: &Message| matches!(m, Message::Gossip { .. });
        let before = count(&net, gossip);
        broadcast(&mut net, 7, mid(100));
        assert!(everyone_has_exactly_once(&net, mid(100)));
        let gossips = count(&net, gossip) - before;
        let rmr = gossips as f64 / (n - 1) as f64 - 1.0;
        assert!(rmr < 0.5, "rmr {rmr} ({gossips} gossips)");
        // Eager links are symmetric after settling.
        for (a, b) in edges {
            let ab = net.nodes[&a].eager().contains(&b);
            let ba = net.nodes[&b].eager().contains(&a);
            assert_eq!(ab, ba, "link {a}-{b}");
        }
    }

    #[test]
    fn removed_eager_link_is_repaired_by_graft() {
        let n = 30;
        let (mut net, edges) = mesh(n, 7);
        for k in 0..4u8 {
            broadcast(&mut net, u64::from(k), mid(k));
        }
        // Remove an eager link whose removal keeps the graph connected.
        let (a, b) = edges
            .iter()
            .copied()
            .find(|&(a, b)| {
                net.nodes[&a].eager().contains(&b) && {
                    let mut rest = edges.clone();
                    rest.remove(&(a, b));
                    let ends = |v| rest.iter().filter(move |e| e.0 == v || e.1 == v);
                    connected(&Vec::from_iter(0..n), |v| ends(v).map(|e| e.0 + e.1 - v).collect())
                }
            })
            .unwrap();
        let graft = |m: &Message| matches!(m, Message::Graft { .. });
        let grafts = count(&net, graft);
        // Frames still in flight on it arrive, and are ignored: the ends are no neighbors now.
        let before = net.sent.len();
        net.input(a, Input::NeighborDown(b));
        net.input(b, Input::NeighborDown(a));
        broadcast(&mut net, a, mid(50));
        assert!(everyone_has_exactly_once(&net, mid(50)));
        let across =
            |&&(from, to, _): &&(u64, u64, _)| (from, to) == (a, b) || (from, to) == (b, a);
        assert_eq!(
            net.sent[before..].iter().filter(across).count(),
            0,
            "a frame over the cut link"
        );
        assert!(count(&net, graft) > grafts, "the cut-off sides must graft");
        assert!(!net.nodes[&a].eager().contains(&b));
    }
}
