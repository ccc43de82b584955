//! The overlay crate's one test harness for its cores: [`Net`] connects cores of one kind
//! (hyparview's, plumtree's or the node's, through [`Core`]) in memory, in virtual time, as
//! quinn-proto's tests connect a `Pair`. Frames are ordered by (arrival, send order), so a run
//! replays exactly; a link's latency is fixed (zero unless the test gives a latency function),
//! so every link is FIFO, as a QUIC connection is. A crashed node drops everything; a frame or
//! a dial to it comes back to its sender as `PeerFailed` (for cores that have that input). Time
//! moves only in [`Net::run_for`], from event to event. A harness, not a core: it lives beside
//! `proto/`, and reads the clock once, for an arbitrary start instant.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::proto::{hyparview, node, plumtree};

/// What [`Net`] needs of a core: the core contract, and what its inputs and outputs mean.
pub trait Core {
    type Input;
    type Output;
    type Frame: Clone;
    /// `handle`; the harness feeds valid local input, so an error fails the test.
    fn handle(&mut self, now: Instant, input: Self::Input);
    fn poll(&mut self) -> Option<Self::Output>;
    fn next_deadline(&self) -> Option<Instant>;
    /// `frame` arrived from `from`.
    fn frame(from: u64, frame: Self::Frame) -> Self::Input;
    fn timeout() -> Self::Input;
    /// What the harness carries out: a frame to send, a peer to dial, or neither (kept).
    fn route(out: Self::Output) -> Route<Self::Frame, Self::Output>;
    /// `peer` is dead (`None`: the core has no such input; frames to the dead are lost).
    fn peer_failed(_peer: u64) -> Option<Self::Input> {
        None
    }
    /// Whether a keep-alive to `peer` would notice it crash.
    fn holds(&self, _peer: u64) -> bool {
        false
    }
}

/// An output as [`Net`] carries it out.
pub enum Route<F, O> {
    Send(u64, F),
    /// A dial: fails (at once) if the peer is dead.
    Connect(u64),
    /// Nothing to carry out: kept in [`Net::outputs`].
    Keep(O),
}

/// A frame, or a dial (`None`), on its way: (from, to, frame).
type Flight<F> = (u64, u64, Option<F>);

/// Cores connected in memory.
pub struct Net<C: Core> {
    /// The cores by id, crashed ones included.
    pub nodes: BTreeMap<u64, C>,
    pub now: Instant,
    seed: u64,
    dead: BTreeSet<u64>,
    /// The latency of the link between two nodes (instant unless a test sets it).
    pub latency: fn(u64, u64) -> Duration,
    /// By (arrival, sequence number).
    in_flight: BTreeMap<(Instant, u64), Flight<C::Frame>>,
    seq: u64,
    /// Every frame sent, in order: (from, to, frame).
    pub sent: Vec<(u64, u64, C::Frame)>,
    /// Every output not carried out, per node, in order.
    pub outputs: BTreeMap<u64, Vec<C::Output>>,
}

impl<C: Core> Net<C> {
    /// An empty net; `seed` seeds the cores' RNGs ([`Net::rng`]).
    pub fn new(seed: u64) -> Self {
        Net {
            nodes: BTreeMap::new(),
            now: Instant::now(),
            seed,
            dead: BTreeSet::new(),
            latency: |_, _| Duration::ZERO,
            in_flight: BTreeMap::new(),
            seq: 0,
            sent: Vec::new(),
            outputs: BTreeMap::new(),
        }
    }

    /// The RNG of node `id`, derived from the seed.
    pub fn rng(&self, id: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.seed.wrapping_mul(1000).wrapping_add(id))
    }

    /// Live nodes, in id order.
    pub fn live(&self) -> Vec<u64> {
        self.nodes.keys().copied().filter(|&id| self.is_live(id)).collect()
    }

    fn is_live(&self, id: u64) -> bool {
        self.nodes.contains_key(&id) && !self.dead.contains(&id)
    }

    /// The outputs node `id` kept, in order.
    pub fn kept(&self, id: u64) -> &[C::Output] {
        self.outputs.get(&id).map_or(&[], Vec::as_slice)
    }

    /// Feeds `input` to node `id` now (nothing if it crashed) and carries out its outputs.
    pub fn input(&mut self, id: u64, input: C::Input) {
        let now = self.now;
        let Some(node) = self.nodes.get_mut(&id).filter(|_| !self.dead.contains(&id)) else {
            return;
        };
        node.handle(now, input);
        for out in drain(node) {
            match C::route(out) {
                Route::Send(to, frame) => {
                    self.sent.push((id, to, frame.clone()));
                    self.push(now + (self.latency)(id, to), (id, to, Some(frame)));
                }
                Route::Connect(peer) => self.push(now, (id, peer, None)),
                Route::Keep(out) => self.outputs.entry(id).or_default().push(out),
            }
        }
    }

    fn push(&mut self, at: Instant, event: Flight<C::Frame>) {
        self.seq += 1;
        self.in_flight.insert((at, self.seq), event);
    }

    /// Crashes `id`: every live node that holds it hears `PeerFailed` (keep-alive).
    pub fn crash(&mut self, id: u64) {
        self.dead.insert(id);
        for other in self.live() {
            if let Some(failed) = C::peer_failed(id).filter(|_| self.nodes[&other].holds(id)) {
                self.input(other, failed);
            }
        }
    }

    /// Delivers every frame due by now (time does not move).
    pub fn settle(&mut self) {
        while let Some(entry) = self.in_flight.first_entry().filter(|e| e.key().0 <= self.now) {
            let (from, to, frame) = entry.remove();
            let input = match frame {
                _ if self.dead.contains(&from) => None,
                _ if !self.is_live(to) => C::peer_failed(to).map(|failed| (from, failed)),
                Some(frame) => Some((to, C::frame(from, frame))),
                None => None,
            };
            if let Some((at, input)) = input {
                self.input(at, input);
            }
        }
    }

    /// Runs `span` of virtual time: frames at their arrival, timers at their deadlines (frames
    /// first when both fall on one instant; due nodes in id order).
    pub fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        loop {
            self.settle();
            let frame = self.in_flight.keys().next().map(|k| k.0);
            let timer = self.live().into_iter().filter_map(|id| self.nodes[&id].next_deadline());
            match frame.into_iter().chain(timer).min() {
                Some(t) if t <= end => self.now = self.now.max(t),
                _ => break,
            }
            if frame.is_some_and(|t| t <= self.now) {
                continue;
            }
            for id in self.live() {
                if self.nodes[&id].next_deadline().is_some_and(|d| d <= self.now) {
                    self.input(id, C::timeout());
                }
            }
        }
        self.now = end;
    }
}

/// Every output `core` has, in order.
pub fn drain<C: Core>(core: &mut C) -> Vec<C::Output> {
    std::iter::from_fn(|| core.poll()).collect()
}

/// Whether all of `nodes` are reached from the first through `neighbors`.
pub fn connected(nodes: &[u64], neighbors: impl Fn(u64) -> Vec<u64>) -> bool {
    let mut seen = BTreeSet::from([nodes[0]]);
    let mut todo = vec![nodes[0]];
    while let Some(v) = todo.pop() {
        todo.extend(neighbors(v).into_iter().filter(|w| seen.insert(*w)));
    }
    seen.len() == nodes.len()
}

/// The cores name their types alike (`Input::Message { from, msg }`, `Input::Timeout`,
/// `Output::Send { to, msg }`, `Output::Connect`); given: the core, its module, its frame, the
/// dial output if it has one, then `handle` and any further methods.
macro_rules! core {
    ($core:ty, $m:ident, $frame:ty $(, $dial:ident)?; $($more:item)*) => {
        impl Core for $core {
            type Input = $m::Input<u64>;
            type Output = $m::Output<u64>;
            type Frame = $frame;
            fn poll(&mut self) -> Option<Self::Output> {
                self.poll()
            }
            fn next_deadline(&self) -> Option<Instant> {
                self.next_deadline()
            }
            fn frame(from: u64, msg: $frame) -> Self::Input {
                $m::Input::Message { from, msg }
            }
            fn timeout() -> Self::Input {
                $m::Input::Timeout
            }
            fn route(out: Self::Output) -> Route<$frame, Self::Output> {
                match out {
                    $m::Output::Send { to, msg } => Route::Send(to, msg),
                    $($m::Output::$dial(peer) => Route::Connect(peer),)?
                    out => Route::Keep(out),
                }
            }
            $($more)*
        }
    };
}

core!(plumtree::State<u64>, plumtree, plumtree::Message;
    fn handle(&mut self, now: Instant, i: Self::Input) { self.handle(now, i).unwrap() }
);
// Frames to an unknown node are lost (the node tests crash nobody).
core!(node::Node<u64, ChaCha8Rng>, node, node::Wire<u64>, Connect;
    fn handle(&mut self, now: Instant, i: Self::Input) { self.handle(now, i).unwrap() }
);
core!(hyparview::State<u64, ChaCha8Rng>, hyparview, hyparview::Message<u64>, Connect;
    fn handle(&mut self, now: Instant, i: Self::Input) { self.handle(now, i) }
    fn peer_failed(peer: u64) -> Option<Self::Input> { Some(hyparview::Input::PeerFailed(peer)) }
    fn holds(&self, peer: u64) -> bool { self.active().contains(&peer) }
);
