//! HyParView membership core (sans-IO), fitted to our lecture notes.
//!
//! Every node keeps a small **active view** (the overlay neighbors it holds open connections to;
//! at most [`Config::active_max`]) and a larger **passive view** (addresses it remembers as
//! healing candidates; at most [`Config::passive_max`]). Well-known **anchor** nodes are only the
//! contact points for joiners; otherwise they are ordinary nodes.
//!
//! Protocol, as implemented here:
//! - A joiner sends [`Message::Join`] to a contact (an anchor or any node it remembers). The
//!   contact accepts the joiner as a neighbor only while its active view is below the threshold,
//!   and in any case refers the joiner on: it starts one [`Message::ForwardJoin`] random walk of
//!   length [`Config::arwl`] through each other neighbor (at most `active_max` walks, one fewer
//!   if it accepted).
//! - A walk ends, and the node holding it accepts the joiner, when the TTL reaches 0 or the node
//!   has no other neighbor to forward to (then it evicts a random neighbor if full, as in the
//!   paper). Before that, a node **below** the threshold accepts early with probability
//!   `p = (active_max - |active|) / active_max`, compared with one `rng.random_bool(p)` draw: an
//!   empty node always takes the joiner, a node one short of full rarely does, so the joiner's
//!   links land where there is room without walks always running to the end. When the TTL equals
//!   [`Config::prwl`] the node also remembers the joiner in its passive view.
//! - Accepting a peer is announced with [`Message::NeighborReply`]` { accepted: true }`; whoever
//!   receives an acceptance adds the sender to its active view (evicting a random neighbor with
//!   [`Message::Disconnect`] if full), so views stay symmetric.
//! - [`Message::Neighbor`] asks a passive peer to become a neighbor. [`Priority::High`] (sent
//!   when the requester has no neighbor at all) cannot be refused; [`Priority::Low`] is accepted
//!   only while the receiver's active view is below the threshold. A peer that refuses is
//!   kept in the requester's passive view (it is alive).
//! - Every [`Config::shuffle_interval`] a node sends [`Message::Shuffle`] (itself, a sample of its
//!   active and passive views) on a random walk; the end node answers with a sample of its
//!   passive view and both merge what they got into their passive views. This spreads
//!   addresses through the passive views.
//! - **2-hop list** (the notes' "neighbors of neighbors"): a node keeps, per active neighbor,
//!   that neighbor's active view ([`State::two_hop`]). It learns it from [`Message::Neighbors`],
//!   which every node sends to each of its neighbors (its active view minus the receiver) when
//!   its active view has changed, debounced: the first change arms a timer of
//!   [`Config::neighbors_interval`] and every change until it fires goes out in one message per
//!   neighbor, so churn costs at most one `Neighbors` per link and interval. A new link is a
//!   change at both ends, so both learn each other's list; links are reliable and FIFO (the
//!   acceptance always travels before the list), so there is no periodic re-send, and the
//!   shuffle messages are unchanged. A received list is capped at `active_max` entries (the
//!   rest is ignored), drops the receiver itself, and is kept only from a current neighbor;
//!   it is dropped when that neighbor leaves the active view.
//! - Use of the 2-hop list: when a neighbor leaves the active view, its list (its other
//!   neighbors, the natural replacements for the lost link) becomes a bounded set of healing
//!   candidates (at most `active_max²`, oldest dropped first). Healing asks the passive view
//!   first; when that gives fewer candidates than free slots (exhausted, or all asked), it
//!   asks these neighbors of lost neighbors, then the neighbors of current neighbors. An
//!   isolated node tries them all before re-joining through a contact.
//! - Failure: the driver reports a dead peer with [`Input::PeerFailed`] (keep-alive or idle
//!   timeout, failed dial). The node drops it from both views (and from the 2-hop lists) and
//!   heals by sending `Neighbor` requests to random passive peers, then 2-hop candidates, until
//!   the active view is full again or the candidates are exhausted. A node left with no
//!   neighbor and no candidate re-joins through a random contact: the anchors it was given and
//!   any node it remembers.
//!
//! Sans-IO contract (in the spirit of quinn-proto): methods are
//! - getters: [`State::me`], [`State::active`], [`State::passive`], [`State::two_hop`],
//!   [`State::next_deadline`];
//! - one mutator, [`State::handle`], taking `now` and an [`Input`];
//! - [`State::poll`], to call until `None` after every `handle`.
//!
//! Call `handle(now, Input::Timeout)` when `now` reaches [`State::next_deadline`].
//! [`Output::Connect`] / [`Output::Disconnect`] tell the driver which long-lived connections (the
//! active view) to open and close; an [`Output::Send`] to a peer without an open connection is
//! sent over a short-lived one (dialing on demand), and a failed dial is reported back as
//! `PeerFailed`. `PeerFailed` itself produces no `Disconnect` output (the connection is gone).
//!
//! Invariants: `me` is in neither view; the views are disjoint; `|active| <= active_max`,
//! `|passive| <= passive_max`; every peer added to or removed from the active view produces
//! exactly one `NeighborUp` / `NeighborDown`; the keys of the 2-hop list are a subset of the
//! active view and each list holds at most `active_max` peers, none of them `me`; the healing
//! candidates hold at most `active_max²` peers. All collections are ordered (BTreeSet/BTreeMap/Vec)
//! so a seeded run is reproducible.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use rand::seq::IndexedRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Tunables of the membership protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Neighbor threshold: the largest active view. Default 8, chosen by simulation
    /// (`docs/overlay-sim.md`): at 10,000 nodes it reaches 99.9% of the nodes in 6 hops
    /// (degree 5: 9) with a lower broadcast redundancy, and every survivor of an 80% crash
    /// is reached after healing.
    pub active_max: usize,
    /// Largest passive view (default 30).
    pub passive_max: usize,
    /// Active random walk length: TTL of a `ForwardJoin` and of a `Shuffle` (default 6).
    pub arwl: u16,
    /// Passive random walk length: the `ForwardJoin` TTL at which the joiner enters the passive
    /// view (default 3).
    pub prwl: u16,
    /// Time between two shuffles (default 30 s).
    pub shuffle_interval: Duration,
    /// Active peers sampled into a shuffle (default 3).
    pub shuffle_active: usize,
    /// Passive peers sampled into a shuffle (default 4).
    pub shuffle_passive: usize,
    /// How long to wait for a `NeighborReply` (or a join acceptance) before giving up on that
    /// peer (default 5 s).
    pub neighbor_request_timeout: Duration,
    /// Debounce of [`Message::Neighbors`]: after the active view changes, the node waits this
    /// long (collecting further changes) before sending its view to its neighbors (default 2 s).
    pub neighbors_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            active_max: 8,
            passive_max: 30,
            arwl: 6,
            prwl: 3,
            shuffle_interval: Duration::from_secs(30),
            shuffle_active: 3,
            shuffle_passive: 4,
            neighbor_request_timeout: Duration::from_secs(5),
            neighbors_interval: Duration::from_secs(2),
        }
    }
}

/// Priority of a [`Message::Neighbor`] request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Priority {
    /// The requester has no neighbor: the receiver must accept (evicting if full).
    High,
    /// Accepted only while the receiver's active view is below the threshold.
    Low,
}

/// A membership protocol message between two nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<PI> {
    /// The sender wants to join the overlay through the receiver.
    Join,
    /// A random walk carrying a joiner's id; the node that ends it accepts `joiner`.
    ForwardJoin {
        /// The node that joins.
        joiner: PI,
        /// Hops left.
        ttl: u16,
    },
    /// The sender asks to become the receiver's neighbor.
    Neighbor {
        /// Whether the receiver may refuse.
        priority: Priority,
    },
    /// Answer to `Neighbor`, or (accepted) the announcement that the sender took the receiver
    /// as a neighbor at the end of a join walk.
    NeighborReply {
        /// True: the sender has the receiver in its active view now.
        accepted: bool,
    },
    /// The sender dropped the receiver from its active view (it keeps it as a passive peer).
    Disconnect,
    /// A shuffle random walk started by `origin`.
    Shuffle {
        /// The node that started the shuffle and waits for the reply.
        origin: PI,
        /// Hops left.
        ttl: u16,
        /// `origin` and a sample of its active and passive views.
        nodes: Vec<PI>,
    },
    /// Answer to a shuffle: a sample of the answering node's passive view.
    ShuffleReply {
        /// The sample.
        nodes: Vec<PI>,
    },
    /// The sender's active view, without the receiver (for the receiver's 2-hop list). Sent to
    /// every neighbor after the sender's active view changed (debounced).
    Neighbors(Vec<PI>),
}

/// Something that happened, fed to [`State::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<PI> {
    /// Join the overlay through one of these contacts (anchors, or any node known to be up).
    /// Also starts the node's timers; an anchor starting the overlay may pass an empty list.
    Join {
        /// Contacts tried in random order; kept for re-joining later.
        anchors: Vec<PI>,
    },
    /// A message arrived from a peer.
    Message {
        /// The sender.
        from: PI,
        /// What it sent.
        msg: Message<PI>,
    },
    /// The driver found this peer dead (keep-alive or idle timeout, failed dial).
    PeerFailed(PI),
    /// `now` reached [`State::next_deadline`].
    Timeout,
}

/// Something the driver must do or may want to know, drained with [`State::poll`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<PI> {
    /// Send `msg` to `to` (over the open connection, or a short-lived one).
    Send {
        /// The receiver.
        to: PI,
        /// The message.
        msg: Message<PI>,
    },
    /// Open (and keep alive) a connection to this new neighbor.
    Connect(PI),
    /// Close the connection to this former neighbor (after sending any queued message).
    Disconnect(PI),
    /// The peer entered the active view (for the broadcast layer).
    NeighborUp(PI),
    /// The peer left the active view (for the broadcast layer).
    NeighborDown(PI),
}

/// One node's HyParView membership state machine. See the module docs for the call contract.
#[derive(Debug)]
pub struct State<PI, R> {
    me: PI,
    config: Config,
    rng: R,
    active: BTreeSet<PI>,
    passive: BTreeSet<PI>,
    /// Contacts to (re-)join through: the anchors given at `Join`. Kept even when they fail,
    /// because an anchor that comes back is the best contact again.
    contacts: Vec<PI>,
    /// Contacts that failed since the last time this node had a neighbor, so a re-join tries
    /// the others first.
    failed_contacts: BTreeSet<PI>,
    /// The contact a `Join` is outstanding with, and when to give up on it.
    joining: Option<(PI, Instant)>,
    /// Outstanding `Neighbor` requests and their deadlines.
    pending: BTreeMap<PI, Instant>,
    /// Peers we sent `Neighbor` and that have not answered yet (unlike `pending`, kept when
    /// the peer becomes a neighbor another way), to recognise stale answers.
    asked: BTreeSet<PI>,
    /// Peers in `asked` that we evicted since asking: their acceptance was sent before our
    /// `Disconnect` reached them (links are FIFO), so taking it would make a one-sided link.
    stale: BTreeSet<PI>,
    /// When to shuffle next; `None` until the first `handle` call gives us a clock.
    next_shuffle: Option<Instant>,
    /// Each neighbor's active view (without us), as it last told us: the 2-hop list.
    two_hop: BTreeMap<PI, Vec<PI>>,
    /// Neighbors of lost neighbors, oldest first: healing candidates after the passive view.
    /// Bounded by `active_max²` because it is fed from (hostile) `Neighbors` lists.
    heal: VecDeque<PI>,
    /// The active view changed since the last `Neighbors` went out (set by add/remove).
    view_changed: bool,
    /// When to send `Neighbors` to every neighbor (armed by a change, see `neighbors_interval`).
    announce: Option<Instant>,
    outputs: VecDeque<Output<PI>>,
}

impl<PI: Ord + Copy + Debug, R: Rng> State<PI, R> {
    /// A node with id `me`, empty views and no timers yet.
    pub fn new(me: PI, config: Config, rng: R) -> Self {
        Self {
            me,
            config,
            rng,
            active: BTreeSet::new(),
            passive: BTreeSet::new(),
            contacts: Vec::new(),
            failed_contacts: BTreeSet::new(),
            joining: None,
            pending: BTreeMap::new(),
            asked: BTreeSet::new(),
            stale: BTreeSet::new(),
            next_shuffle: None,
            two_hop: BTreeMap::new(),
            heal: VecDeque::new(),
            view_changed: false,
            announce: None,
            outputs: VecDeque::new(),
        }
    }

    /// This node's id.
    pub fn me(&self) -> PI {
        self.me
    }

    /// The active view: current neighbors, in id order.
    pub fn active(&self) -> &BTreeSet<PI> {
        &self.active
    }

    /// The passive view: remembered healing candidates, in id order.
    pub fn passive(&self) -> &BTreeSet<PI> {
        &self.passive
    }

    /// The 2-hop list: for each current neighbor, its own neighbors (without this node) as it
    /// last announced them, at most `active_max` each.
    pub fn two_hop(&self) -> &BTreeMap<PI, Vec<PI>> {
        &self.two_hop
    }

    /// When to call `handle(now, Input::Timeout)` next (`None` before the first `handle`).
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut deadlines = self.next_shuffle.into_iter().chain(self.pending.values().copied());
        let first = deadlines.next()?;
        let first = deadlines.fold(first, Instant::min);
        Some(first.min(self.joining.map_or(first, |(_, d)| d)).min(self.announce.unwrap_or(first)))
    }

    /// Feeds one input; drain the consequences with [`State::poll`].
    pub fn handle(&mut self, now: Instant, input: Input<PI>) {
        if self.next_shuffle.is_none() {
            self.next_shuffle = Some(now + self.config.shuffle_interval);
        }
        match input {
            Input::Join { anchors } => {
                for a in anchors {
                    if a != self.me && !self.contacts.contains(&a) {
                        self.contacts.push(a);
                    }
                }
                if self.active.is_empty() {
                    self.rejoin(now);
                }
            }
            Input::Message { from, msg } => self.on_message(now, from, msg),
            Input::PeerFailed(peer) => self.on_peer_failed(now, peer),
            Input::Timeout => self.on_timeout(now),
        }
        if std::mem::take(&mut self.view_changed) && self.announce.is_none() {
            self.announce = Some(now + self.config.neighbors_interval);
        }
        if self.announce.is_some_and(|t| t <= now) {
            self.announce = None;
            self.announce_neighbors();
        }
    }

    /// The next thing for the driver to do, or `None` when there is nothing left.
    pub fn poll(&mut self) -> Option<Output<PI>> {
        let out = self.outputs.pop_front();
        if out.is_none() && self.outputs.capacity() > 0 {
            // Drained: give the buffer back rather than keep a burst's worth per node.
            self.outputs = VecDeque::new();
        }
        out
    }

    fn on_message(&mut self, now: Instant, from: PI, msg: Message<PI>) {
        if from == self.me {
            return;
        }
        match msg {
            Message::Join => self.on_join(from),
            Message::ForwardJoin { joiner, ttl } => self.on_forward_join(from, joiner, ttl),
            Message::Neighbor { priority } => {
                let accepted = self.active.contains(&from)
                    || priority == Priority::High
                    || self.active.len() < self.config.active_max;
                if accepted {
                    self.add_active(from);
                } else {
                    self.add_passive(from);
                }
                self.send(from, Message::NeighborReply { accepted });
            }
            Message::NeighborReply { accepted: true } => {
                self.asked.remove(&from);
                if self.stale.remove(&from) {
                    // We evicted `from` after asking; it drops us when our Disconnect arrives.
                    self.pending.remove(&from);
                    return;
                }
                self.pending.remove(&from);
                if self.joining.is_some_and(|(c, _)| c == from) {
                    self.joining = None;
                }
                self.add_active(from);
            }
            Message::NeighborReply { accepted: false } => {
                self.asked.remove(&from);
                self.stale.remove(&from);
                // Alive, so worth remembering (a no-op for a peer asked from the passive view).
                self.add_passive(from);
                // Retrying at once could ping-pong between full peers forever; a refused
                // node that still has neighbors waits for the next loss. Only an isolated one
                // asks again (with high priority, which cannot be refused).
                if self.pending.remove(&from).is_some() && self.active.is_empty() {
                    self.refill(now, Some(from));
                }
            }
            Message::Disconnect => {
                if self.remove_active(from) {
                    self.outputs.push_back(Output::Disconnect(from));
                    self.add_passive(from);
                    self.refill(now, Some(from));
                }
            }
            Message::Shuffle { origin, ttl, mut nodes } => {
                // Hostile input: never keep more than an honest shuffle carries.
                nodes.truncate(1 + self.config.shuffle_active + self.config.shuffle_passive);
                let ttl = ttl.min(self.config.arwl);
                let next = self.random_active_except(&[from, origin]);
                match next {
                    Some(next) if ttl > 0 => {
                        self.send(next, Message::Shuffle { origin, ttl: ttl - 1, nodes })
                    }
                    _ => {
                        if origin != self.me {
                            let reply = self.sample(&self.passive.clone(), nodes.len());
                            self.send(origin, Message::ShuffleReply { nodes: reply });
                        }
                        self.merge_passive(nodes);
                    }
                }
            }
            Message::ShuffleReply { mut nodes } => {
                nodes.truncate(1 + self.config.shuffle_active + self.config.shuffle_passive);
                self.merge_passive(nodes);
            }
            Message::Neighbors(nodes) => {
                if !self.active.contains(&from) {
                    return; // sent before it dropped us, or not a neighbor at all
                }
                // Hostile input: an honest list has at most active_max - 1 entries.
                let mut list: Vec<PI> = Vec::with_capacity(self.config.active_max);
                for node in nodes.into_iter().take(self.config.active_max) {
                    if node != self.me && node != from && !list.contains(&node) {
                        list.push(node);
                    }
                }
                self.two_hop.insert(from, list);
            }
        }
    }

    /// Sends every neighbor our active view without itself.
    fn announce_neighbors(&mut self) {
        let active: Vec<PI> = self.active.iter().copied().collect();
        for &to in &active {
            let list = active.iter().copied().filter(|p| *p != to).collect();
            self.send(to, Message::Neighbors(list));
        }
    }

    /// A contact takes the joiner while below the threshold, and refers it on in any case.
    fn on_join(&mut self, joiner: PI) {
        if self.active.contains(&joiner) {
            return;
        }
        let accepted = self.active.len() < self.config.active_max;
        if accepted {
            self.add_active(joiner);
            self.send(joiner, Message::NeighborReply { accepted: true });
        }
        let mut others: Vec<PI> = self.active.iter().copied().filter(|p| *p != joiner).collect();
        let walks = self.config.active_max - usize::from(accepted);
        if others.len() > walks {
            others = others.choose_multiple(&mut self.rng, walks).copied().collect();
        }
        for peer in others {
            self.send(peer, Message::ForwardJoin { joiner, ttl: self.config.arwl });
        }
    }

    fn on_forward_join(&mut self, from: PI, joiner: PI, ttl: u16) {
        if joiner == self.me || self.active.contains(&joiner) {
            return;
        }
        let ttl = ttl.min(self.config.arwl);
        let next = self.random_active_except(&[from, joiner]);
        let len = self.active.len();
        let max = self.config.active_max;
        // The p() rule: below the threshold, accept early with p = free slots / active_max.
        let early = len < max && self.rng.random_bool((max - len) as f64 / max as f64);
        match next {
            Some(next) if ttl > 0 && !early => {
                if ttl == self.config.prwl {
                    self.add_passive(joiner);
                }
                self.send(next, Message::ForwardJoin { joiner, ttl: ttl - 1 });
            }
            _ => {
                self.add_active(joiner);
                self.send(joiner, Message::NeighborReply { accepted: true });
            }
        }
    }

    fn on_peer_failed(&mut self, now: Instant, peer: PI) {
        self.passive.remove(&peer);
        self.heal.retain(|p| *p != peer);
        for list in self.two_hop.values_mut() {
            list.retain(|p| *p != peer);
        }
        self.asked.remove(&peer);
        self.stale.remove(&peer);
        let was_pending = self.pending.remove(&peer).is_some();
        let was_active = self.remove_active(peer);
        if self.joining.is_some_and(|(c, _)| c == peer) {
            self.joining = None;
            self.failed_contacts.insert(peer);
            self.rejoin(now);
        } else if self.contacts.contains(&peer) {
            self.failed_contacts.insert(peer);
        }
        if was_pending || was_active {
            self.refill(now, None);
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        let expired: Vec<PI> =
            self.pending.iter().filter(|(_, d)| **d <= now).map(|(p, _)| *p).collect();
        for peer in &expired {
            // No answer in time: treat it as gone.
            self.pending.remove(peer);
            self.passive.remove(peer);
            self.heal.retain(|p| p != peer);
            self.asked.remove(peer);
            self.stale.remove(peer);
        }
        if !expired.is_empty() {
            self.refill(now, None);
        }
        if let Some((contact, deadline)) = self.joining {
            if deadline <= now {
                self.joining = None;
                self.failed_contacts.insert(contact);
                self.rejoin(now);
            }
        }
        if self.next_shuffle.is_some_and(|d| d <= now) {
            self.next_shuffle = Some(now + self.config.shuffle_interval);
            self.shuffle();
            // An isolated node keeps trying on every tick, starting over with all contacts.
            if self.active.is_empty() && self.pending.is_empty() && self.joining.is_none() {
                self.failed_contacts.clear();
                self.refill(now, None);
            }
        }
    }

    fn shuffle(&mut self) {
        let Some(target) = self.random_active_except(&[]) else { return };
        let mut nodes = vec![self.me];
        let active: BTreeSet<PI> = self.active.iter().copied().filter(|p| *p != target).collect();
        nodes.extend(self.sample(&active, self.config.shuffle_active));
        nodes.extend(self.sample(&self.passive.clone(), self.config.shuffle_passive));
        self.send(target, Message::Shuffle { origin: self.me, ttl: self.config.arwl, nodes });
    }

    /// Heals after losing a neighbor: asks random passive peers (not `except`) until requests
    /// cover the free slots, then 2-hop candidates (neighbors of lost neighbors, then of
    /// current ones); with no neighbor left the requests cannot be refused. An isolated node
    /// with nothing to ask re-joins through a contact.
    fn refill(&mut self, now: Instant, except: Option<PI>) {
        let free = self.config.active_max.saturating_sub(self.active.len() + self.pending.len());
        let priority = if self.active.is_empty() { Priority::High } else { Priority::Low };
        let candidates: Vec<PI> = self
            .passive
            .iter()
            .copied()
            .filter(|p| Some(*p) != except && !self.pending.contains_key(p))
            .collect();
        let mut asked: Vec<PI> = candidates.choose_multiple(&mut self.rng, free).copied().collect();
        if asked.len() < free {
            let usable = |p: &PI| {
                Some(*p) != except
                    && *p != self.me
                    && !self.active.contains(p)
                    && !self.pending.contains_key(p)
                    && !self.passive.contains(p)
            };
            let lost: Vec<PI> = self.heal.iter().copied().filter(usable).collect();
            let mut near: Vec<PI> =
                self.two_hop.values().flatten().copied().filter(usable).collect();
            near.sort();
            near.dedup();
            near.retain(|p| !lost.contains(p));
            for pool in [lost, near] {
                let want = free - asked.len();
                asked.extend(pool.choose_multiple(&mut self.rng, want).copied());
            }
            self.heal.retain(|p| !asked.contains(p));
        }
        for peer in asked {
            self.pending.insert(peer, now + self.config.neighbor_request_timeout);
            self.asked.insert(peer);
            self.send(peer, Message::Neighbor { priority });
        }
        if self.active.is_empty() && self.pending.is_empty() {
            self.rejoin(now);
        }
    }

    /// Sends `Join` to a random contact that has not failed lately, unless one is outstanding.
    fn rejoin(&mut self, now: Instant) {
        if self.joining.is_some() || !self.active.is_empty() {
            return;
        }
        let fresh: Vec<PI> =
            self.contacts.iter().copied().filter(|c| !self.failed_contacts.contains(c)).collect();
        if let Some(&contact) = fresh.choose(&mut self.rng) {
            self.joining = Some((contact, now + self.config.neighbor_request_timeout));
            self.send(contact, Message::Join);
        }
    }

    /// Adds `peer` to the active view, evicting a random neighbor if full.
    fn add_active(&mut self, peer: PI) {
        if peer == self.me || self.active.contains(&peer) {
            return;
        }
        self.passive.remove(&peer);
        self.pending.remove(&peer);
        if self.active.len() >= self.config.active_max {
            if let Some(victim) = self.random_active_except(&[]) {
                if self.asked.contains(&victim) {
                    self.stale.insert(victim);
                }
                self.remove_active(victim);
                self.send(victim, Message::Disconnect);
                self.outputs.push_back(Output::Disconnect(victim));
                self.add_passive(victim);
            }
        }
        self.active.insert(peer);
        self.view_changed = true;
        self.heal.retain(|p| *p != peer);
        self.failed_contacts.clear();
        self.joining = None;
        self.outputs.push_back(Output::Connect(peer));
        self.outputs.push_back(Output::NeighborUp(peer));
    }

    /// Drops `peer` from the active view; its 2-hop list becomes healing candidates.
    fn remove_active(&mut self, peer: PI) -> bool {
        let removed = self.active.remove(&peer);
        if removed {
            self.view_changed = true;
            let cap = self.config.active_max * self.config.active_max;
            for node in self.two_hop.remove(&peer).unwrap_or_default() {
                if node != self.me && !self.active.contains(&node) && !self.heal.contains(&node) {
                    if self.heal.len() >= cap {
                        self.heal.pop_front();
                    }
                    if cap > 0 {
                        self.heal.push_back(node);
                    }
                }
            }
            self.outputs.push_back(Output::NeighborDown(peer));
        }
        removed
    }

    fn add_passive(&mut self, peer: PI) {
        if peer == self.me || self.active.contains(&peer) || self.passive.contains(&peer) {
            return;
        }
        if self.passive.len() >= self.config.passive_max {
            let all: Vec<PI> = self.passive.iter().copied().collect();
            if let Some(victim) = all.choose(&mut self.rng) {
                self.passive.remove(victim);
            }
        }
        if self.config.passive_max > 0 {
            self.passive.insert(peer);
        }
    }

    fn merge_passive(&mut self, nodes: Vec<PI>) {
        for node in nodes {
            self.add_passive(node);
        }
    }

    fn random_active_except(&mut self, except: &[PI]) -> Option<PI> {
        let candidates: Vec<PI> =
            self.active.iter().copied().filter(|p| !except.contains(p)).collect();
        candidates.choose(&mut self.rng).copied()
    }

    fn sample(&mut self, from: &BTreeSet<PI>, n: usize) -> Vec<PI> {
        let all: Vec<PI> = from.iter().copied().collect();
        all.choose_multiple(&mut self.rng, n).copied().collect()
    }

    fn send(&mut self, to: PI, msg: Message<PI>) {
        self.outputs.push_back(Output::Send { to, msg });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use crate::testnet::{connected, drain};

    type Net = crate::testnet::Net<State<u64, ChaCha8Rng>>;

    /// Adds node `id`, joins it through `anchors` and delivers what that sets off.
    fn join(net: &mut Net, id: u64, anchors: Vec<u64>) {
        let core = State::new(id, config(), net.rng(id));
        net.nodes.insert(id, core);
        net.input(id, Input::Join { anchors });
        net.settle();
    }

    fn views(net: &Net) -> Vec<(u64, BTreeSet<u64>, BTreeSet<u64>)> {
        let view = |id| (id, net.nodes[&id].active().clone(), net.nodes[&id].passive().clone());
        net.live().into_iter().map(view).collect()
    }

    /// Checks the bounds, symmetry and connectivity of the live overlay.
    fn assert_healthy(net: &Net) {
        let live = net.live();
        for &id in &live {
            let active = net.nodes[&id].active();
            assert!(
                (1..=config().active_max).contains(&active.len()),
                "node {id} has {} neighbors",
                active.len()
            );
            assert!(net.nodes[&id].passive().len() <= config().passive_max);
            for peer in active {
                assert!(live.contains(peer), "node {id} keeps dead {peer}");
                assert!(net.nodes[peer].active().contains(&id), "{id} -> {peer} asymmetric");
            }
        }
        let active = |id| net.nodes[&id].active().iter().copied().collect();
        assert!(connected(&live, active), "overlay is not connected");
    }

    fn config() -> Config {
        // The tests were written for a threshold of 5 (e.g. filling a node with 5 peers).
        Config { active_max: 5, shuffle_interval: Duration::from_secs(10), ..Config::default() }
    }

    fn fifty(seed: u64) -> Net {
        let mut net = Net::new(seed);
        join(&mut net, 0, vec![]);
        join(&mut net, 1, vec![0]);
        for id in 2..50 {
            join(&mut net, id, vec![0, 1]);
        }
        net.run_for(Duration::from_secs(60));
        net
    }

    #[test]
    fn fifty_nodes_join_through_two_anchors() {
        let net = fifty(7);
        assert_healthy(&net);
        // Shuffles taught the nodes about more than their neighbors.
        let passive: usize = views(&net).iter().map(|v| v.2.len()).sum();
        assert!(passive > 50 * 5, "passive views too small: {passive}");
    }

    #[test]
    fn fifty_nodes_join_through_one_anchor() {
        let mut net = Net::new(3);
        join(&mut net, 0, vec![]);
        for id in 1..50 {
            join(&mut net, id, vec![0]);
        }
        net.run_for(Duration::from_secs(30));
        assert_healthy(&net);
    }

    #[test]
    fn same_seed_same_overlay() {
        assert_eq!(views(&fifty(11)), views(&fifty(11)));
        assert_ne!(views(&fifty(11)), views(&fifty(12)));
    }

    fn node(id: u64) -> State<u64, ChaCha8Rng> {
        State::new(id, config(), ChaCha8Rng::seed_from_u64(id))
    }

    #[test]
    fn full_node_refuses_low_but_accepts_high_priority() {
        let now = Instant::now();
        let mut full = node(0);
        for peer in 1..=5 {
            let msg = Message::Neighbor { priority: Priority::High };
            full.handle(now, Input::Message { from: peer, msg });
        }
        drain(&mut full);
        assert_eq!(full.active().len(), 5);

        let msg = Message::Neighbor { priority: Priority::Low };
        full.handle(now, Input::Message { from: 10, msg });
        assert_eq!(
            drain(&mut full),
            vec![Output::Send { to: 10, msg: Message::NeighborReply { accepted: false } }]
        );
        assert!(!full.active().contains(&10));
        assert!(full.passive().contains(&10));

        let msg = Message::Neighbor { priority: Priority::High };
        full.handle(now, Input::Message { from: 11, msg });
        let out = drain(&mut full);
        assert!(full.active().contains(&11));
        assert_eq!(full.active().len(), 5);
        // One neighbor was evicted: told, disconnected, kept as passive.
        let Output::NeighborDown(victim) = out[0] else {
            panic!("expected an eviction first: {out:?}")
        };
        assert_eq!(
            out[1..],
            [
                Output::Send { to: victim, msg: Message::Disconnect },
                Output::Disconnect(victim),
                Output::Connect(11),
                Output::NeighborUp(11),
                Output::Send { to: 11, msg: Message::NeighborReply { accepted: true } },
            ]
        );
        assert!(full.passive().contains(&victim));
        assert!(!full.active().contains(&victim));
    }

    #[test]
    fn stale_acceptance_from_an_evicted_peer_is_ignored() {
        let now = Instant::now();
        let mut a =
            State::new(0, Config { active_max: 1, ..config() }, ChaCha8Rng::seed_from_u64(0));
        let high = Message::Neighbor { priority: Priority::High };
        a.handle(now, Input::Message { from: 5, msg: high.clone() });
        a.handle(now, Input::Message { from: 5, msg: Message::ShuffleReply { nodes: vec![70] } });
        a.handle(now, Input::PeerFailed(5));
        drain(&mut a);
        // Healing asked 70; before 70 answers, a join walk ends here with 70 as the joiner.
        assert_eq!(a.pending.keys().copied().collect::<Vec<_>>(), vec![70]);
        let walk = Message::ForwardJoin { joiner: 70, ttl: 0 };
        a.handle(now, Input::Message { from: 8, msg: walk });
        assert_eq!(a.active(), &BTreeSet::from([70]));
        // 9 must be taken: 70 is evicted and told so.
        a.handle(now, Input::Message { from: 9, msg: high });
        assert!(drain(&mut a).contains(&Output::Send { to: 70, msg: Message::Disconnect }));
        // 70's answer to the old request was sent before it got our Disconnect: stale.
        let reply = Message::NeighborReply { accepted: true };
        a.handle(now, Input::Message { from: 70, msg: reply.clone() });
        assert_eq!(drain(&mut a), vec![]);
        assert_eq!(a.active(), &BTreeSet::from([9]));
        // A later acceptance from 70 (a join walk ending there) is taken again.
        a.handle(now, Input::Message { from: 70, msg: reply });
        assert!(a.active().contains(&70));
    }

    fn high(node: &mut State<u64, ChaCha8Rng>, now: Instant, from: u64) {
        let msg = Message::Neighbor { priority: Priority::High };
        node.handle(now, Input::Message { from, msg });
    }

    fn neighbors(node: &mut State<u64, ChaCha8Rng>, now: Instant, from: u64, list: Vec<u64>) {
        node.handle(now, Input::Message { from, msg: Message::Neighbors(list) });
    }

    fn sent(out: &[Output<u64>]) -> Vec<(u64, Message<u64>)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send { to, msg } => Some((*to, msg.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn two_hop_list_is_kept_capped_and_announced_once_per_interval() {
        let now = Instant::now();
        let mut a = node(0);
        high(&mut a, now, 1);
        high(&mut a, now, 2);
        drain(&mut a);
        // Hostile list: longer than active_max (5), with us, the sender and a duplicate in
        // it. Only the first 5 entries count; we and the sender are left out.
        neighbors(&mut a, now, 1, vec![0, 5, 1, 5, 6, 7, 8, 9, 10]);
        assert_eq!(a.two_hop(), &BTreeMap::from([(1, vec![5, 6])]));
        // A newer list replaces the old one.
        neighbors(&mut a, now, 1, vec![7]);
        neighbors(&mut a, now, 2, vec![8, 9]);
        assert_eq!(a.two_hop(), &BTreeMap::from([(1, vec![7]), (2, vec![8, 9])]));
        // A list from a non-neighbor is ignored.
        neighbors(&mut a, now, 3, vec![4]);
        assert_eq!(a.two_hop().len(), 2);
        assert_eq!(drain(&mut a), vec![]);

        // Both additions went out together, one interval after the first.
        let due = now + config().neighbors_interval;
        assert_eq!(a.next_deadline(), Some(due));
        a.handle(due, Input::Timeout);
        assert_eq!(
            drain(&mut a),
            vec![
                Output::Send { to: 1, msg: Message::Neighbors(vec![2]) },
                Output::Send { to: 2, msg: Message::Neighbors(vec![1]) },
            ]
        );
        // Nothing changed since: no further announcement.
        assert!(a.next_deadline().is_some_and(|d| d > due));
        a.handle(due + config().neighbors_interval, Input::Timeout);
        assert!(sent(&drain(&mut a)).iter().all(|(_, m)| !matches!(m, Message::Neighbors(_))));
    }

    #[test]
    fn two_hop_list_is_dropped_when_the_neighbor_leaves() {
        let now = Instant::now();
        let mut a = node(0);
        for peer in 1..=3 {
            high(&mut a, now, peer);
        }
        neighbors(&mut a, now, 1, vec![10, 11]);
        neighbors(&mut a, now, 2, vec![11, 12]);
        neighbors(&mut a, now, 3, vec![13]);
        a.handle(now, Input::PeerFailed(1));
        assert_eq!(a.two_hop(), &BTreeMap::from([(2, vec![11, 12]), (3, vec![13])]));
        a.handle(now, Input::Message { from: 2, msg: Message::Disconnect });
        assert_eq!(a.two_hop(), &BTreeMap::from([(3, vec![13])]));
        // A dead node leaves every list it is in.
        a.handle(now, Input::PeerFailed(13));
        assert_eq!(a.two_hop(), &BTreeMap::from([(3, vec![])]));
        assert!(a.two_hop().keys().all(|p| a.active().contains(p)));
    }

    #[test]
    fn isolated_node_heals_through_two_hop_before_rejoining() {
        let now = Instant::now();
        let mut a = node(0);
        high(&mut a, now, 1);
        // The contact is remembered; with a neighbor there is no join yet.
        a.handle(now, Input::Join { anchors: vec![99] });
        neighbors(&mut a, now, 1, vec![20, 21, 22]);
        drain(&mut a);
        assert!(a.passive().is_empty());

        // The only neighbor dies and the passive view is empty: ask its neighbors, which
        // cannot refuse an isolated node; no join yet.
        a.handle(now, Input::PeerFailed(1));
        let mut asked = sent(&drain(&mut a));
        asked.sort_by_key(|(to, _)| *to);
        let high_ask = Message::Neighbor { priority: Priority::High };
        assert_eq!(
            asked,
            vec![(20, high_ask.clone()), (21, high_ask.clone()), (22, high_ask.clone())]
        );
        // All three are dead too: now the node re-joins through its contact.
        for peer in [20, 21] {
            a.handle(now, Input::PeerFailed(peer));
            assert_eq!(sent(&drain(&mut a)), vec![]);
        }
        a.handle(now, Input::PeerFailed(22));
        assert_eq!(sent(&drain(&mut a)), vec![(99, Message::Join)]);
    }

    #[test]
    fn passive_view_is_asked_before_two_hop() {
        let now = Instant::now();
        let cfg = Config { active_max: 2, ..config() };
        let mut a = State::new(0, cfg, ChaCha8Rng::seed_from_u64(0));
        high(&mut a, now, 1);
        high(&mut a, now, 2);
        a.handle(now, Input::Message { from: 2, msg: Message::ShuffleReply { nodes: vec![30] } });
        neighbors(&mut a, now, 1, vec![20, 21]);
        drain(&mut a);
        // One slot free, one passive peer: it is asked, not the lost neighbor's neighbors.
        a.handle(now, Input::PeerFailed(1));
        assert_eq!(sent(&drain(&mut a)), vec![(30, Message::Neighbor { priority: Priority::Low })]);
        // It refuses; then the last neighbor dies. Two slots are free: the passive peer
        // fills one, a neighbor of the lost neighbor 1 the other (with high priority).
        let refuse = Message::NeighborReply { accepted: false };
        a.handle(now, Input::Message { from: 30, msg: refuse });
        assert_eq!(sent(&drain(&mut a)), vec![]);
        a.handle(now, Input::PeerFailed(2));
        let asked = sent(&drain(&mut a));
        let high_ask = Message::Neighbor { priority: Priority::High };
        assert_eq!(asked.len(), 2, "{asked:?}");
        assert_eq!(asked[0], (30, high_ask.clone()));
        assert!([20, 21].contains(&asked[1].0) && asked[1].1 == high_ask, "{asked:?}");
    }

    #[test]
    fn two_hop_lists_match_the_neighbors_views() {
        let mut net = fifty(13);
        net.run_for(Duration::from_secs(5));
        for id in net.live() {
            let n = &net.nodes[&id];
            assert_eq!(
                n.two_hop().keys().collect::<Vec<_>>(),
                n.active().iter().collect::<Vec<_>>()
            );
            for (peer, list) in n.two_hop() {
                let mut want: Vec<u64> =
                    net.nodes[peer].active().iter().copied().filter(|p| *p != id).collect();
                let mut got = list.clone();
                want.sort();
                got.sort();
                assert_eq!(got, want, "node {id}'s list of {peer}");
            }
        }
    }

    #[test]
    fn survivors_heal_after_half_fail() {
        let mut net = fifty(5);
        for id in (0..50).filter(|id| id % 2 == 1) {
            net.crash(id);
        }
        net.settle();
        net.run_for(Duration::from_secs(120));
        assert_healthy(&net);
    }

    #[test]
    fn newcomer_joins_through_known_node_when_anchors_are_down() {
        let mut net = fifty(9);
        net.crash(0);
        net.crash(1);
        net.settle();
        join(&mut net, 100, vec![0, 1, 17]);
        net.run_for(Duration::from_secs(60));
        assert!(!net.nodes[&100].active().is_empty());
        assert_healthy(&net);
    }
}
