//! One overlay node as a single sans-IO state machine: HyParView membership plus one Plumtree
//! broadcast tree per topic (a chat room is a topic), plus point-to-point frames between
//! neighbors for the application (catch-up requests).
//!
//! This is the code that interprets the two cores' outputs — membership `NeighborUp` becomes a
//! new eager link in every topic's tree, a `NeighborDown` removes it — and both the tokio driver
//! and the seeded simulator drive this type, so what the simulator proves is what the network
//! runs.
//!
//! Topics: a node keeps broadcast state only for the topics it follows ([`Node::subscribe`], at
//! most [`MAX_TOPICS`]; the application subscribes its rooms and, for chat, the directory), so
//! a peer cannot fill the table by inventing topics. A full message (`Gossip`) for a topic the
//! node does not follow is answered with `Prune` (so the sender only announces that topic to
//! us from then on) and otherwise dropped; other broadcast messages for it are dropped. A room's
//! tree therefore runs over the links between nodes that follow it.
//!
//! Search ([`super::search`]) runs here too once [`Node::enable_search`] turned it on: it
//! queries the active view, and its state is boxed so that nodes without it stay small.
//!
//! Contract as in the cores: `handle(now, input)`, then drain [`Node::poll`] until `None`, and
//! call `handle(now, Input::Timeout)` once `now >= next_deadline()`.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::time::Instant;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{hyparview, plumtree, search};

/// Most topics (broadcast trees) a node keeps.
pub const MAX_TOPICS: usize = 64;

/// Largest application frame sent directly to a neighbor ([`Wire::Direct`]).
pub const MAX_DIRECT: usize = 48 * 1024;

/// Identifier of a topic (for chat: a hash of the room name).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicId(pub [u8; 32]);

impl Debug for TopicId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TopicId({:02x}{:02x}{:02x}{:02x}..)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

/// Everything one node sends another over their connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wire<PI> {
    /// Membership protocol.
    Membership(hyparview::Message<PI>),
    /// Broadcast protocol of one topic.
    Gossip {
        /// The topic.
        topic: TopicId,
        /// The Plumtree message.
        msg: plumtree::Message,
    },
    /// An application frame for this neighbor only (not relayed).
    Direct(Vec<u8>),
    /// Search (queries from neighbours; hits and check-backs from any node).
    Search(search::Msg<PI>),
}

/// Configuration of a node.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Membership tunables.
    pub membership: hyparview::Config,
    /// Broadcast tunables (the same for every topic).
    pub broadcast: plumtree::Config,
}

/// What the driver feeds a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<PI> {
    /// Join the overlay through these contacts (see [`hyparview::Input::Join`]).
    Join {
        /// Anchors or other known nodes.
        anchors: Vec<PI>,
    },
    /// A frame arrived from `from`.
    Message {
        /// The sender (authenticated by the transport).
        from: PI,
        /// What it sent.
        msg: Wire<PI>,
    },
    /// The driver found `peer` dead or unreachable.
    PeerFailed(PI),
    /// Broadcast `payload` on `topic` with the caller-computed unique `id`.
    Broadcast {
        /// The topic.
        topic: TopicId,
        /// Unique id (e.g. the hash of the signed payload).
        id: plumtree::MessageId,
        /// The bytes to deliver everywhere.
        payload: Vec<u8>,
    },
    /// Send an application frame to a current neighbor.
    Direct {
        /// The neighbor.
        to: PI,
        /// The frame.
        payload: Vec<u8>,
    },
    /// `now` reached [`Node::next_deadline`].
    Timeout,
}

/// What a node asks of its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<PI> {
    /// Send `msg` to `to` (over the open connection, or dial for it).
    Send {
        /// The receiver.
        to: PI,
        /// The frame.
        msg: Wire<PI>,
    },
    /// Open and keep a connection to this new neighbor.
    Connect(PI),
    /// Close the connection to this former neighbor after sending what is queued.
    Disconnect(PI),
    /// `peer` became a neighbor (the application may start a catch-up with it).
    NeighborUp(PI),
    /// `peer` stopped being a neighbor.
    NeighborDown(PI),
    /// A broadcast message reached this node for the first time (or was broadcast here).
    Deliver {
        /// Its topic.
        topic: TopicId,
        /// Its id.
        id: plumtree::MessageId,
        /// The bytes.
        payload: Vec<u8>,
        /// The neighbor it came from; `None` for a local broadcast.
        from: Option<PI>,
        /// Hops from its origin.
        round: plumtree::Round,
    },
    /// A neighbor sent an application frame.
    Direct {
        /// The neighbor.
        from: PI,
        /// The frame.
        payload: Vec<u8>,
    },
    /// A result or the end of one of our searches ([`Node::start_search`]).
    Search(search::Output<PI>),
}

/// Local mistakes reported by [`Node::handle`]; peer input never errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The broadcast was refused by the topic's tree.
    #[error(transparent)]
    Broadcast(#[from] plumtree::Error),
    /// The node already follows [`MAX_TOPICS`] topics.
    #[error("too many topics ({MAX_TOPICS}); leave a room before joining another")]
    TooManyTopics,
    /// A broadcast on a topic the node does not follow ([`Node::subscribe`] it first).
    #[error("not subscribed to the topic")]
    NotSubscribed,
    /// A direct frame was larger than [`MAX_DIRECT`].
    #[error("direct frame of {0} bytes exceeds {MAX_DIRECT} bytes")]
    DirectTooLarge(usize),
    /// A search was asked of a node that has search turned off.
    #[error("search is not enabled on this node")]
    SearchOff,
}

/// One overlay node. See the module docs.
#[derive(Debug)]
pub struct Node<PI, R> {
    config: Config,
    membership: hyparview::State<PI, R>,
    /// The followed topics' trees, sorted by topic. A sorted `Vec` rather than a `BTreeMap`:
    /// a B-tree leaf has room for 11 trees, ~3.4 KB for the one topic most nodes follow,
    /// which was the largest share of a simulated node's memory.
    topics: Vec<(TopicId, plumtree::State<PI>)>,
    /// Search, once enabled.
    search: Option<Box<search::Search<PI, rand::rngs::StdRng>>>,
    outputs: VecDeque<Output<PI>>,
}

impl<PI: Ord + Copy + Debug, R: Rng> Node<PI, R> {
    /// A node with id `me` that has joined nothing yet.
    pub fn new(me: PI, config: Config, rng: R) -> Self {
        let membership = hyparview::State::new(me, config.membership.clone(), rng);
        Self { config, membership, topics: Vec::new(), search: None, outputs: VecDeque::new() }
    }

    /// Turns search on: the node answers queries for what it shares and can search.
    pub fn enable_search(&mut self, config: search::Config, rng: rand::rngs::StdRng) {
        let mut s = search::Search::new(self.me(), config, rng);
        s.set_neighbours(self.membership.active().iter().copied().collect());
        self.search = Some(Box::new(s));
    }

    /// Shares `record` (search must be on).
    pub fn share(&mut self, record: search::Record) -> Result<(), Error> {
        self.search.as_mut().ok_or(Error::SearchOff)?.share(record);
        Ok(())
    }

    /// Stops sharing the record of `info_hash`.
    pub fn unshare(&mut self, info_hash: &[u8; 20]) {
        if let Some(s) = &mut self.search {
            s.unshare(info_hash);
        }
    }

    /// Starts a search for `text`; its results and end come as [`Output::Search`].
    pub fn start_search(
        &mut self,
        now: Instant,
        text: &str,
        mode: search::Mode,
    ) -> Result<search::QueryId, Error> {
        let id = self.search.as_mut().ok_or(Error::SearchOff)?.start(now, text, mode);
        self.pump(now);
        Ok(id)
    }

    /// Ends our search `id` now (its end comes as [`Output::Search`]), if it runs.
    pub fn cancel_search(&mut self, now: Instant, id: search::QueryId) {
        if let Some(s) = &mut self.search {
            s.cancel(id);
            self.pump(now);
        }
    }

    /// Where `topic` is (or would be inserted) in `topics`.
    fn find(&self, topic: &TopicId) -> Result<usize, usize> {
        self.topics.binary_search_by(|(t, _)| t.cmp(topic))
    }

    fn tree_mut(&mut self, topic: &TopicId) -> Option<&mut plumtree::State<PI>> {
        let i = self.find(topic).ok()?;
        Some(&mut self.topics[i].1)
    }

    /// This node's id.
    pub fn me(&self) -> PI {
        self.membership.me()
    }

    /// The membership state (active and passive views).
    pub fn membership(&self) -> &hyparview::State<PI, R> {
        &self.membership
    }

    /// The broadcast state of `topic`, if the node follows it.
    pub fn topic(&self, topic: &TopicId) -> Option<&plumtree::State<PI>> {
        self.find(topic).ok().map(|i| &self.topics[i].1)
    }

    /// Starts following `topic`: receiving, relaying and broadcasting on it; idempotent. Fails
    /// with [`Error::TooManyTopics`] when [`MAX_TOPICS`] are followed already.
    pub fn subscribe(&mut self, now: Instant, topic: TopicId) -> Result<(), Error> {
        let Err(at) = self.find(&topic) else { return Ok(()) };
        if self.topics.len() >= MAX_TOPICS {
            return Err(Error::TooManyTopics);
        }
        let mut tree = plumtree::State::new(self.config.broadcast.clone());
        for &peer in self.membership.active() {
            // NeighborUp never errors.
            let _ = tree.handle(now, plumtree::Input::NeighborUp(peer));
        }
        // Exact: growing an empty Vec would make room for four trees.
        self.topics.reserve_exact(1);
        self.topics.insert(at, (topic, tree));
        Ok(())
    }

    /// The earliest time at which `handle(now, Input::Timeout)` has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let topics = self.topics.iter().filter_map(|(_, tree)| tree.next_deadline());
        let search = self.search.as_ref().and_then(|s| s.next_deadline());
        self.membership.next_deadline().into_iter().chain(topics).chain(search).min()
    }

    /// The next output, if any; drain after every [`Node::handle`].
    pub fn poll(&mut self) -> Option<Output<PI>> {
        let out = self.outputs.pop_front();
        if out.is_none() && self.outputs.capacity() > 0 {
            // Drained: give the buffer back rather than keep a burst's worth per node.
            self.outputs = VecDeque::new();
        }
        out
    }

    /// Applies one input at `now`.
    pub fn handle(&mut self, now: Instant, input: Input<PI>) -> Result<(), Error> {
        match input {
            Input::Join { anchors } => {
                self.membership.handle(now, hyparview::Input::Join { anchors });
            }
            Input::Message { from, msg } => match msg {
                Wire::Membership(msg) => {
                    self.membership.handle(now, hyparview::Input::Message { from, msg });
                }
                Wire::Gossip { topic, msg } => match self.tree_mut(&topic) {
                    Some(tree) => {
                        // Peer input never errors in Plumtree.
                        let _ = tree.handle(now, plumtree::Input::Message { from, msg });
                    }
                    None => {
                        if matches!(msg, plumtree::Message::Gossip { .. }) {
                            let msg = Wire::Gossip { topic, msg: plumtree::Message::Prune };
                            self.outputs.push_back(Output::Send { to: from, msg });
                        }
                    }
                },
                Wire::Direct(payload) => {
                    if payload.len() <= MAX_DIRECT && self.membership.active().contains(&from) {
                        self.outputs.push_back(Output::Direct { from, payload });
                    }
                }
                // Dropped when search is off.
                Wire::Search(msg) => {
                    if let Some(s) = &mut self.search {
                        s.handle(now, search::Input::Message { from, msg });
                    }
                }
            },
            Input::PeerFailed(peer) => {
                self.membership.handle(now, hyparview::Input::PeerFailed(peer));
            }
            Input::Broadcast { topic, id, payload } => {
                let tree = self.tree_mut(&topic).ok_or(Error::NotSubscribed)?;
                tree.handle(now, plumtree::Input::Broadcast { id, payload })?;
            }
            Input::Direct { to, payload } => {
                if payload.len() > MAX_DIRECT {
                    return Err(Error::DirectTooLarge(payload.len()));
                }
                self.outputs.push_back(Output::Send { to, msg: Wire::Direct(payload) });
            }
            Input::Timeout => {
                self.membership.handle(now, hyparview::Input::Timeout);
                for (_, tree) in &mut self.topics {
                    if tree.next_deadline().is_some_and(|d| d <= now) {
                        let _ = tree.handle(now, plumtree::Input::Timeout);
                    }
                }
                if let Some(s) = &mut self.search {
                    if s.next_deadline().is_some_and(|d| d <= now) {
                        s.handle(now, search::Input::Timeout);
                    }
                }
            }
        }
        self.pump(now);
        Ok(())
    }

    /// Moves the cores' outputs into ours, feeding membership changes to every tree.
    fn pump(&mut self, now: Instant) {
        let mut view_changed = false;
        while let Some(out) = self.membership.poll() {
            view_changed |= matches!(
                out,
                hyparview::Output::NeighborUp(_) | hyparview::Output::NeighborDown(_)
            );
            match out {
                hyparview::Output::Send { to, msg } => {
                    self.outputs.push_back(Output::Send { to, msg: Wire::Membership(msg) });
                }
                hyparview::Output::Connect(p) => self.outputs.push_back(Output::Connect(p)),
                hyparview::Output::Disconnect(p) => self.outputs.push_back(Output::Disconnect(p)),
                hyparview::Output::NeighborUp(p) => {
                    for (_, tree) in &mut self.topics {
                        let _ = tree.handle(now, plumtree::Input::NeighborUp(p));
                    }
                    self.outputs.push_back(Output::NeighborUp(p));
                }
                hyparview::Output::NeighborDown(p) => {
                    for (_, tree) in &mut self.topics {
                        let _ = tree.handle(now, plumtree::Input::NeighborDown(p));
                    }
                    self.outputs.push_back(Output::NeighborDown(p));
                }
            }
        }
        if let Some(s) = &mut self.search {
            if view_changed {
                s.set_neighbours(self.membership.active().iter().copied().collect());
            }
            while let Some(out) = s.poll() {
                self.outputs.push_back(match out {
                    search::Output::Send { to, msg } => Output::Send { to, msg: Wire::Search(msg) },
                    other => Output::Search(other),
                });
            }
        }
        for (topic, tree) in &mut self.topics {
            let topic = *topic;
            while let Some(out) = tree.poll() {
                self.outputs.push_back(match out {
                    plumtree::Output::Send { to, msg } => {
                        Output::Send { to, msg: Wire::Gossip { topic, msg } }
                    }
                    plumtree::Output::Deliver { id, payload, from, round } => {
                        Output::Deliver { topic, id, payload, from, round }
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    type Net = crate::testnet::Net<Node<u64, ChaCha8Rng>>;

    /// `n` nodes with instant links that have joined nothing yet.
    fn net(n: u64, seed: u64) -> Net {
        let mut net = Net::new(seed);
        for i in 0..n {
            let node = Node::new(i, Config::default(), net.rng(i));
            net.nodes.insert(i, node);
        }
        net
    }

    /// What node `id` delivered, in order.
    fn delivered(net: &Net, id: u64) -> Vec<(TopicId, Vec<u8>)> {
        (net.kept(id).iter())
            .filter_map(|o| match o {
                Output::Deliver { topic, payload, .. } => Some((*topic, payload.clone())),
                _ => None,
            })
            .collect()
    }

    fn topic(b: u8) -> TopicId {
        TopicId([b; 32])
    }

    #[test]
    fn every_node_gets_every_topic_message_once() {
        let mut net = net(30, 7);
        let now = net.now;
        for node in net.nodes.values_mut() {
            for t in [topic(0), topic(1)] {
                node.subscribe(now, t).expect("two topics");
            }
        }
        for i in 1..30 {
            net.input(i, Input::Join { anchors: vec![0] });
            net.run_for(Duration::from_millis(50));
        }
        net.run_for(Duration::from_millis(1000));
        for (k, sender) in [(1u8, 3u64), (2, 17), (3, 29)] {
            let id = plumtree::MessageId([k; 32]);
            let payload = vec![k; 10];
            net.input(sender, Input::Broadcast { topic: topic(k % 2), id, payload });
            net.run_for(Duration::from_millis(500));
        }
        for i in 0..30 {
            let got = delivered(&net, i);
            let want: Vec<(TopicId, Vec<u8>)> =
                [1u8, 2, 3].iter().map(|&k| (topic(k % 2), vec![k; 10])).collect();
            assert_eq!(got, want, "node {i}");
        }
    }

    #[test]
    fn direct_frames_reach_neighbors_only() {
        let mut net = net(3, 1);
        net.input(1, Input::Join { anchors: vec![0] });
        net.run_for(Duration::from_millis(200));
        let neighbors: BTreeSet<u64> = net.nodes[&1].membership().active().clone();
        assert_eq!(neighbors, BTreeSet::from([0]));
        net.input(1, Input::Direct { to: 0, payload: b"hi".to_vec() });
        // Node 2 is no neighbor of 0: its direct frame is dropped by the receiver.
        net.input(0, Input::Message { from: 2, msg: Wire::Direct(b"sneak".to_vec()) });
        net.run_for(Duration::from_millis(20));
        let directs = |to| -> Vec<Output<u64>> {
            net.kept(to).iter().filter(|o| matches!(o, Output::Direct { .. })).cloned().collect()
        };
        assert_eq!(directs(0), vec![Output::Direct { from: 1, payload: b"hi".to_vec() }]);
        assert!(directs(1).is_empty() && directs(2).is_empty());
    }

    #[test]
    fn a_node_with_search_on_finds_what_another_shares() {
        let mut net = net(12, 3);
        let now = net.now;
        for (i, node) in net.nodes.values_mut().enumerate() {
            node.enable_search(
                search::Config::default(),
                rand::rngs::StdRng::seed_from_u64(i as u64),
            );
        }
        for i in 1..12 {
            net.input(i, Input::Join { anchors: vec![0] });
            net.run_for(Duration::from_millis(50));
        }
        net.run_for(Duration::from_millis(1000));
        let publisher = crate::identity::NodeId([9; 32]);
        let record = search::Record::unsigned("Sintel 4K.mkv".into(), 7, [4; 20], publisher);
        net.nodes.get_mut(&9).unwrap().share(record.clone()).unwrap();
        let id = net
            .nodes
            .get_mut(&2)
            .unwrap()
            .start_search(now, "sintel", search::Mode::Flood(7))
            .unwrap();
        // The test net drains a node's outputs after an input: an empty timeout carries the
        // query out (a driver drains after every call).
        net.input(2, Input::Timeout);
        net.run_for(Duration::from_secs(5));
        let got: Vec<_> = net
            .kept(2)
            .iter()
            .filter_map(|o| match o {
                Output::Search(search::Output::Result { id: q, record, .. }) if *q == id => {
                    Some(record.clone())
                }
                _ => None,
            })
            .collect();
        assert_eq!(got, vec![record]);
        // A node with search off ignores search frames and refuses to search.
        let mut off = Node::new(99u64, Config::default(), ChaCha8Rng::seed_from_u64(9));
        assert_eq!(off.start_search(now, "x", search::Mode::Walk), Err(Error::SearchOff));
        let q = search::Msg::Check { id: 1 };
        off.handle(now, Input::Message { from: 1, msg: Wire::Search(q) }).unwrap();
        assert!(off.poll().is_none());
    }

    #[test]
    fn topics_are_capped() {
        let mut node = Node::new(0u64, Config::default(), ChaCha8Rng::seed_from_u64(0));
        let now = Instant::now();
        for i in 0..MAX_TOPICS {
            node.subscribe(now, TopicId([i as u8; 32])).expect("below cap");
        }
        node.subscribe(now, TopicId([0; 32])).expect("already followed: idempotent");
        assert_eq!(node.subscribe(now, TopicId([255; 32])), Err(Error::TooManyTopics));
    }

    /// Issue 9 item 12: a neighbor's frames for made-up topics used to create a tree each, and
    /// after 64 of them the node could not follow the room its user joined.
    #[test]
    fn made_up_topics_from_a_peer_take_no_room() {
        let mut net = net(2, 3);
        let now = net.now;
        net.nodes.get_mut(&1).expect("node 1").subscribe(now, topic(1)).expect("first topic");
        net.input(1, Input::Join { anchors: vec![0] });
        net.run_for(Duration::from_millis(200));
        assert!(net.nodes[&1].membership().active().contains(&0), "0 and 1 are neighbors");
        let before = net.sent.len();
        for i in 0..2 * MAX_TOPICS {
            let mut made_up = [0xee; 32];
            made_up[0] = i as u8;
            let (topic, id) = (TopicId(made_up), plumtree::MessageId([i as u8; 32]));
            let msg = plumtree::Message::Gossip { id, payload: vec![0], round: 0 };
            net.input(1, Input::Message { from: 0, msg: Wire::Gossip { topic, msg } });
            let msg = plumtree::Message::IHave(vec![(id, 0)]);
            net.input(1, Input::Message { from: 0, msg: Wire::Gossip { topic, msg } });
        }
        // Each full message of an unfollowed topic is answered with PRUNE, nothing else.
        let answers: Vec<_> = net.sent.iter().skip(before).collect();
        assert_eq!(answers.len(), 2 * MAX_TOPICS);
        assert!(answers.iter().all(|(from, to, m)| (*from, *to) == (1, 0)
            && matches!(m, Wire::Gossip { msg: plumtree::Message::Prune, .. })));
        net.run_for(Duration::from_millis(500));
        assert!(delivered(&net, 1).is_empty(), "delivered a message of an unfollowed topic");
        // The user can still follow rooms, up to the cap.
        let node = net.nodes.get_mut(&1).expect("node 1");
        assert_eq!(node.topics.iter().map(|(t, _)| *t).collect::<Vec<_>>(), vec![topic(1)]);
        for i in 0..MAX_TOPICS - 1 {
            node.subscribe(now, TopicId([i as u8; 32])).expect("room for the user's rooms");
        }
    }
}
