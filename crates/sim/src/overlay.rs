//! The overlay simulator: a seeded discrete-event simulation of many
//! [`overlay::proto::node::Node`]s (HyParView membership + a Plumtree tree per topic), the very
//! type the tokio driver runs, so what this measures is what the network runs.
//!
//! Model:
//! - **Virtual time**: one start `Instant` captured once; a queue of events ordered by
//!   (time, sequence number), so ties resolve in insertion order and a run is reproducible (a
//!   calendar of ~1 ms buckets, so a million nodes' events cost constant time each).
//! - **Links**: every ordered frame from `a` to `b` takes the pair's latency, drawn once per pair
//!   from the seed in `[latency_min, latency_max]`; a fixed latency per pair keeps each link FIFO,
//!   as a QUIC connection is. No loss, no bandwidth limit.
//! - **Failures** (QUIC-like): a frame or a dial to a crashed node is dropped and its sender gets
//!   `Input::PeerFailed` after [`Scenario::dial_timeout`]; every live node that holds a crashed node
//!   in its active view gets `PeerFailed` after [`Scenario::keepalive_timeout`] (keep-alive).
//! - **Randomness**: one seed. The simulator's own [`ChaCha8Rng`] picks senders and victims; each
//!   node gets a `ChaCha8Rng` derived from the seed and its id.
//!
//! Scenario ([`run`]): `nodes` nodes join one after another every [`Scenario::join_interval`]
//! through the anchors (ids `0..anchors`), then the overlay settles; graph metrics are taken;
//! `warmup` broadcasts from random senders let Plumtree prune the eager links into a tree, then
//! `broadcasts` measured broadcasts give delivery, RMR and last delivery hop (LDH). With a crash
//! fraction, that share of all nodes (anchors included, chosen at random, as iroh-gossip's
//! simulator does) crashes at once; one broadcast right after the crash measures delivery before
//! any failure is detected (`delivery_first`), then after [`Scenario::heal`] of virtual time
//! `heal_broadcasts` broadcasts measure `delivery_after_heal`. Last, with `newcomers > 0`, every
//! anchor crashes and newcomers join knowing the (dead) anchors and one live node each.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use overlay::proto::node::{Config, Input, Node, Output, TopicId, Wire};
use overlay::proto::{hyparview, plumtree};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::calendar::{Calendar, Timed};

/// Node id in the simulation.
pub type Id = u32;

/// What to simulate. [`Scenario::new`] gives the defaults used by `swarmcast sim overlay`.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    /// Number of nodes joining (anchors included).
    pub nodes: u32,
    /// Anchors: nodes `0..anchors`, the contacts every joiner is given.
    pub anchors: u32,
    /// Share of all nodes crashed at once after the broadcasts, if any.
    pub crash: Option<f64>,
    /// The one seed of the run.
    pub seed: u64,
    /// Membership tunables (the neighbor threshold is `membership.active_max`).
    #[serde(skip)]
    pub membership: hyparview::Config,
    /// Neighbor threshold, copied from `membership` for the report.
    pub active_max: usize,
    /// Broadcast tunables.
    #[serde(skip)]
    pub broadcast: plumtree::Config,
    /// Time between two joins.
    pub join_interval: Duration,
    /// Virtual time to settle after the last join.
    pub settle: Duration,
    /// Unmeasured broadcasts that let the tree form.
    pub warmup: usize,
    /// Measured broadcasts on the settled overlay.
    pub broadcasts: usize,
    /// Virtual time given to one broadcast.
    pub broadcast_window: Duration,
    /// Virtual time between the crash and the broadcasts that measure `delivery_after_heal`.
    pub heal: Duration,
    /// Broadcasts after healing.
    pub heal_broadcasts: usize,
    /// Newcomers that join after every anchor crashed (0: skip that scenario).
    pub newcomers: u32,
    /// BFS sources sampled for hop metrics.
    pub bfs_sources: usize,
    /// Smallest one-way latency of a link.
    pub latency_min: Duration,
    /// Largest one-way latency of a link.
    pub latency_max: Duration,
    /// A frame or dial to a crashed node fails after this long.
    pub dial_timeout: Duration,
    /// A crashed neighbor is noticed by keep-alive after this long.
    pub keepalive_timeout: Duration,
}

impl Scenario {
    /// The defaults: 2 ms between joins, 90 s settling (three shuffle rounds), 5 warm-up and
    /// 20 measured broadcasts of 4 s each, 60 s of healing then 10 broadcasts, 20 newcomers,
    /// 20 BFS sources, 20–80 ms links, 5 s dial timeout, 8 s keep-alive timeout.
    pub fn new(nodes: u32, anchors: u32, seed: u64) -> Self {
        let membership = hyparview::Config::default();
        Self {
            nodes,
            anchors: anchors.clamp(1, nodes.max(1)),
            crash: None,
            seed,
            active_max: membership.active_max,
            membership,
            broadcast: plumtree::Config::default(),
            join_interval: Duration::from_millis(2),
            settle: Duration::from_secs(90),
            warmup: 5,
            broadcasts: 20,
            broadcast_window: Duration::from_secs(4),
            heal: Duration::from_secs(60),
            heal_broadcasts: 10,
            newcomers: 20,
            bfs_sources: 20,
            latency_min: Duration::from_millis(20),
            latency_max: Duration::from_millis(80),
            dial_timeout: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(8),
        }
    }

    /// Sets the neighbor threshold.
    pub fn with_active_max(mut self, k: usize) -> Self {
        self.membership.active_max = k;
        self.active_max = k;
        self
    }
}

/// Distribution of active-view sizes over live nodes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Degree {
    /// Active-view size → number of nodes.
    pub histogram: BTreeMap<usize, usize>,
    /// Mean active-view size.
    pub mean: f64,
    /// Smallest active-view size.
    pub min: usize,
    /// Largest active-view size.
    pub max: usize,
}

/// Hops a broadcast flooding every link needs to reach 99.9% of the live nodes (BFS levels).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hops999 {
    /// Worst sampled source.
    pub max: u32,
    /// Mean over the sampled sources that reach 99.9%.
    pub mean: f64,
    /// Sampled sources that cannot reach 99.9% (a partitioned overlay).
    pub short_sources: usize,
}

/// Shape of the overlay graph (active views of live nodes, links to live nodes only).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphStats {
    /// Live nodes.
    pub live: usize,
    /// Connected components (treating links as undirected).
    pub components: usize,
    /// Size of the largest component.
    pub largest_component: usize,
    /// Live nodes with an empty active view.
    pub isolated: usize,
    /// Active-view sizes.
    pub degree: Degree,
    /// Links `a → b` where `b` does not hold `a` (views should be symmetric).
    pub asymmetric_links: usize,
    /// Mean passive-view size.
    pub passive_mean: f64,
    /// Hops to reach 99.9% of live nodes.
    pub hops_999: Hops999,
    /// Mean shortest-path hops over sampled (source, node) pairs.
    pub path_hops_mean: f64,
    /// Largest shortest-path hops seen from the sampled sources.
    pub path_hops_max: u32,
}

/// Outcome of a batch of broadcasts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BroadcastStats {
    /// Broadcasts measured.
    pub count: usize,
    /// Mean share of live nodes that delivered a broadcast.
    pub delivery: f64,
    /// Smallest share of any one broadcast.
    pub delivery_min: f64,
    /// Total (live node, broadcast) pairs not delivered.
    pub missed: u64,
    /// Relative message redundancy: payload frames received / (nodes reached − 1) − 1, mean.
    pub rmr: f64,
    /// Last delivery hop (largest round of a delivery), mean over broadcasts.
    pub ldh: f64,
    /// Largest last delivery hop.
    pub ldh_max: u16,
}

/// The crash scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CrashReport {
    /// Share of all nodes crashed.
    pub fraction: f64,
    /// Nodes crashed.
    pub crashed: usize,
    /// Anchors crashed.
    pub anchors_crashed: usize,
    /// Survivors.
    pub survivors: usize,
    /// The broadcast right after the crash, before failures are detected.
    pub first: BroadcastStats,
    /// Broadcasts after healing.
    pub after_heal: BroadcastStats,
    /// The overlay after healing.
    pub graph_after_heal: GraphStats,
}

/// The "every anchor down" scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnchorsDownReport {
    /// Newcomers that tried to join.
    pub newcomers: usize,
    /// Newcomers with at least one neighbor at the end.
    pub joined: usize,
    /// Live nodes reached by one broadcast from a newcomer (share).
    pub delivery: f64,
    /// The overlay at the end.
    pub components: usize,
}

/// Everything a run measured; the JSON of `swarmcast sim overlay --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Nodes that joined.
    pub nodes: u32,
    /// Anchors.
    pub anchors: u32,
    /// Seed.
    pub seed: u64,
    /// Neighbor threshold.
    pub active_max: usize,
    /// Components of the settled overlay.
    pub components: usize,
    /// Active-degree distribution of the settled overlay.
    pub degree: Degree,
    /// Hops to reach 99.9% of the settled overlay.
    pub hops_999: Hops999,
    /// Mean shortest-path hops of the settled overlay.
    pub path_hops_mean: f64,
    /// Largest shortest-path hops seen on the settled overlay.
    pub path_hops_max: u32,
    /// Relative message redundancy of the measured broadcasts on the settled overlay.
    pub rmr: f64,
    /// Mean last delivery hop of those broadcasts.
    pub ldh: f64,
    /// Share of survivors reached by the first broadcast after the crash (`None`: no crash).
    pub delivery_first: Option<f64>,
    /// Share of survivors reached by broadcasts after healing (`None`: no crash).
    pub delivery_after_heal: Option<f64>,
    /// Live nodes with an empty active view at the end of the crash scenario (or of joining).
    pub isolated: usize,
    /// Of those, nodes that know a live anchor.
    pub isolated_knowing_live_anchor: usize,
    /// Full graph metrics of the settled overlay.
    pub graph: GraphStats,
    /// Full broadcast metrics on the settled overlay.
    pub broadcast: BroadcastStats,
    /// The crash scenario, if asked.
    pub crash: Option<CrashReport>,
    /// The anchors-down scenario, if asked.
    pub anchors_down: Option<AnchorsDownReport>,
    /// Frames delivered during the whole run.
    pub frames: u64,
    /// Of those, membership `Neighbors` frames (2-hop list announcements).
    pub frames_neighbors: u64,
    /// Virtual time simulated, seconds.
    pub virtual_secs: f64,
}

/// Runs the whole scenario; `progress` gets a line per phase, per tenth of the joins and per
/// broadcast (the CLI prints them for big runs).
/// Each node's neighbours (its active view) on the overlay [`run`] builds before it measures
/// anything: the nodes join and settle as there. Other cores run on it (the search simulation).
pub fn settle(scenario: &Scenario, progress: &mut dyn FnMut(&str)) -> Vec<Vec<Id>> {
    let sim = build(scenario, progress);
    sim.nodes.iter().map(|n| n.membership().active().iter().copied().collect()).collect()
}

/// The one-way latency of the link between `a` and `b` in `scenario` (fixed per pair).
pub fn link_latency(scenario: &Scenario, a: Id, b: Id) -> Duration {
    let (lo, hi) = (a.min(b), a.max(b));
    let h = mix(scenario.seed ^ mix((u64::from(lo) << 32) | u64::from(hi)));
    let min = scenario.latency_min.as_micros() as u64;
    let span = (scenario.latency_max.as_micros() as u64).saturating_sub(min) + 1;
    Duration::from_micros(min + h % span)
}

/// Joins every node and lets the overlay settle.
fn build(scenario: &Scenario, progress: &mut dyn FnMut(&str)) -> Sim {
    let s = scenario;
    let mut sim = Sim::new(s);
    for _ in 0..s.nodes {
        sim.add_node(None);
    }
    // Staggered joins, in tenths so big runs can report progress.
    let tenth = (s.nodes / 10).max(1);
    for id in 0..s.nodes {
        sim.schedule(s.join_interval * id, Event::Start(id));
    }
    let mut joined = 0;
    while joined < s.nodes {
        joined = (joined + tenth).min(s.nodes);
        sim.run_until(s.join_interval * joined);
        progress(&format!("joined {joined}/{} nodes ({})", s.nodes, sim.status()));
    }
    // Settling, in steps of at most 30 s of virtual time (the same events as one step).
    let mut settled = Duration::ZERO;
    loop {
        let step = (s.settle - settled).min(Duration::from_secs(30));
        sim.run_for(step);
        settled += step;
        progress(&format!(
            "settling {:.0}/{:.0} s ({})",
            settled.as_secs_f64(),
            s.settle.as_secs_f64(),
            sim.status()
        ));
        if settled >= s.settle {
            break;
        }
    }
    sim
}

pub fn run(scenario: &Scenario, progress: &mut dyn FnMut(&str)) -> Report {
    let s = scenario;
    let mut sim = build(s, progress);
    let graph = sim.graph_stats();
    progress(&format!(
        "settled: {} component(s), {} isolated, hops to reach 99.9% max {} mean {:.2}",
        graph.components, graph.isolated, graph.hops_999.max, graph.hops_999.mean
    ));
    sim.broadcasts(s.warmup, "warm-up broadcast", progress);
    let broadcast = sim.broadcasts(s.broadcasts, "broadcast", progress);
    progress(&format!("broadcasts: delivery {:.4}, rmr {:.3}", broadcast.delivery, broadcast.rmr));
    let mut isolated = graph.isolated;
    let mut isolated_knowing_live_anchor = sim.isolated_knowing_live_anchor();
    let crash = s.crash.map(|fraction| {
        let report = sim.crash_scenario(fraction, progress);
        isolated = report.graph_after_heal.isolated;
        isolated_knowing_live_anchor = sim.isolated_knowing_live_anchor();
        progress(&format!(
            "crash {fraction}: first {:.4}, after heal {:.4}, isolated {isolated}",
            report.first.delivery, report.after_heal.delivery
        ));
        report
    });
    let anchors_down = (s.newcomers > 0).then(|| {
        let r = sim.anchors_down(s.newcomers);
        progress(&format!("anchors down: {}/{} newcomers joined", r.joined, r.newcomers));
        r
    });
    progress(&format!("done ({})", sim.status()));
    Report {
        nodes: s.nodes,
        anchors: s.anchors,
        seed: s.seed,
        active_max: s.active_max,
        components: graph.components,
        degree: graph.degree.clone(),
        hops_999: graph.hops_999.clone(),
        path_hops_mean: graph.path_hops_mean,
        path_hops_max: graph.path_hops_max,
        rmr: broadcast.rmr,
        ldh: broadcast.ldh,
        delivery_first: crash.as_ref().map(|c| c.first.delivery),
        delivery_after_heal: crash.as_ref().map(|c| c.after_heal.delivery),
        isolated,
        isolated_knowing_live_anchor,
        graph,
        broadcast,
        crash,
        anchors_down,
        frames: sim.frames,
        frames_neighbors: sim.frames_neighbors,
        virtual_secs: sim.now.as_secs_f64(),
    }
}

/// Something that happens at a point of virtual time.
#[derive(Debug)]
enum Event {
    /// The node starts and joins through its contacts.
    Start(Id),
    /// A frame arrives.
    Frame(Frame),
    /// The node's timer fires.
    Timer(Id),
    /// The transport reports `peer` dead to `at`.
    Failed { at: Id, peer: Id },
}

/// A frame on its way.
#[derive(Debug)]
struct Frame {
    from: Id,
    to: Id,
    msg: Wire<Id>,
}

/// Kinds of [`Entry`] (the two low bits of `Entry::key`).
const START: u64 = 0;
const FRAME: u64 = 1;
const TIMER: u64 = 2;
const FAILED: u64 = 3;

/// A queued event in 24 bytes (a frame's contents wait in [`Sim::in_flight`]). Ordered by
/// (time, sequence number): ties resolve in insertion order, so a run is reproducible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    /// Virtual time in nanoseconds.
    at: u64,
    /// Sequence number << 2 | kind; the sequence number is unique, so it alone breaks ties.
    key: u64,
    /// START, TIMER: the node; FRAME: the slot in `Sim::in_flight`; FAILED: the node told.
    a: u32,
    /// FAILED: the dead peer.
    b: u32,
}

impl Timed for Entry {
    fn at(&self) -> u64 {
        self.at
    }
}

/// Per-broadcast counters.
#[derive(Debug, Default)]
struct Tracked {
    /// Which nodes delivered it: bit `i % 64` of word `i / 64` for node `i`.
    delivered: Vec<u64>,
    /// `Gossip` frames carrying it that reached a live node.
    payload_frames: u64,
    /// Largest round of a delivery.
    max_round: u16,
}

impl Tracked {
    fn delivered(&self, node: Id) -> bool {
        let i = node as usize;
        self.delivered.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 == 1)
    }

    /// Marks `node` delivered; false if it was already.
    fn deliver(&mut self, node: Id) -> bool {
        let i = node as usize;
        if self.delivered.len() <= i / 64 {
            self.delivered.resize(i / 64 + 1, 0);
        }
        let (word, bit) = (&mut self.delivered[i / 64], 1u64 << (i % 64));
        let new = *word & bit == 0;
        *word |= bit;
        new
    }
}

/// Active views of live nodes (links to dead nodes left out) as compressed rows: the
/// neighbors of `i` are `targets[offsets[i]..offsets[i + 1]]`, in id order.
struct Adjacency {
    offsets: Vec<u32>,
    targets: Vec<Id>,
}

impl Adjacency {
    fn of(&self, i: Id) -> &[Id] {
        let i = i as usize;
        &self.targets[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

/// No timer queued for the node (see `Sim::timer_at`).
const NO_TIMER: u64 = u64::MAX;

/// The simulator state.
struct Sim {
    scenario: Scenario,
    start: Instant,
    now: Duration,
    seq: u64,
    queue: Calendar<Entry>,
    /// Frames on their way, indexed by their entry's `a`; `None`: a free slot (in `free`).
    in_flight: Vec<Option<Frame>>,
    free: Vec<u32>,
    nodes: Vec<Node<Id, ChaCha8Rng>>,
    alive: Vec<bool>,
    /// The anchors, every joiner's contacts.
    anchors: Vec<Id>,
    /// Contacts of the nodes that were given others than the anchors (the newcomers).
    other_contacts: BTreeMap<Id, Vec<Id>>,
    /// The time (ns) of the timer event that counts for each node (others in the queue are
    /// stale); `NO_TIMER` if none.
    timer_at: Vec<u64>,
    /// (node, dead peer) pairs with a `Failed` event on the way, so it is reported once.
    failing: BTreeSet<(Id, Id)>,
    rng: ChaCha8Rng,
    topic: TopicId,
    tracked: Vec<Tracked>,
    scratch: Vec<Output<Id>>,
    frames: u64,
    frames_neighbors: u64,
}

/// SplitMix64 finalizer: a well-mixed hash for per-pair latencies and per-node seeds.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

const GIB: f64 = (1u64 << 30) as f64;

/// This process's resident memory and its peak, in bytes, for progress lines (Linux only).
fn memory() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        let line = status.lines().find_map(|l| l.strip_prefix(name))?;
        let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// A span of virtual time in nanoseconds (saturating; 2^64 ns is 584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Sim {
    fn new(scenario: &Scenario) -> Self {
        let expected = (scenario.nodes + scenario.newcomers) as usize;
        Self {
            scenario: scenario.clone(),
            start: Instant::now(),
            now: Duration::ZERO,
            seq: 0,
            queue: Calendar::new(),
            in_flight: Vec::new(),
            free: Vec::new(),
            nodes: Vec::with_capacity(expected),
            alive: Vec::with_capacity(expected),
            anchors: (0..scenario.anchors).collect(),
            other_contacts: BTreeMap::new(),
            timer_at: Vec::with_capacity(expected),
            failing: BTreeSet::new(),
            rng: ChaCha8Rng::seed_from_u64(scenario.seed),
            topic: TopicId([7; 32]),
            tracked: Vec::new(),
            scratch: Vec::new(),
            frames: 0,
            frames_neighbors: 0,
        }
    }

    /// Creates a node (not started) that will join through `contacts` (`None`: the anchors).
    fn add_node(&mut self, contacts: Option<Vec<Id>>) -> Id {
        let id = Id::try_from(self.nodes.len()).expect("fewer than 2^32 nodes");
        let rng = ChaCha8Rng::seed_from_u64(mix(self.scenario.seed ^ mix(u64::from(id))));
        let config = Config {
            membership: self.scenario.membership.clone(),
            broadcast: self.scenario.broadcast.clone(),
        };
        self.nodes.push(Node::new(id, config, rng));
        self.alive.push(true);
        if let Some(contacts) = contacts {
            self.other_contacts.insert(id, contacts);
        }
        self.timer_at.push(NO_TIMER);
        id
    }

    fn contacts(&self, id: Id) -> &[Id] {
        self.other_contacts.get(&id).unwrap_or(&self.anchors)
    }

    /// One line on how far the run is: virtual time, frames, queued events, memory.
    fn status(&self) -> String {
        let memory = match memory() {
            Some((rss, peak)) => format!(
                "; rss {:.2} GiB, peak {:.2} GiB = {:.0} B/node",
                rss as f64 / GIB,
                peak as f64 / GIB,
                peak as f64 / self.nodes.len().max(1) as f64
            ),
            None => String::new(),
        };
        format!(
            "{:.0} s virtual, {:.1} M frames, {:.2} M events queued{memory}",
            self.now.as_secs_f64(),
            self.frames as f64 / 1e6,
            self.queue.len() as f64 / 1e6
        )
    }

    fn schedule(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        let (kind, a, b) = match event {
            Event::Start(id) => (START, id, 0),
            Event::Timer(id) => (TIMER, id, 0),
            Event::Failed { at, peer } => (FAILED, at, peer),
            Event::Frame(frame) => {
                let slot = match self.free.pop() {
                    Some(slot) => {
                        self.in_flight[slot as usize] = Some(frame);
                        slot
                    }
                    None => {
                        self.in_flight.push(Some(frame));
                        u32::try_from(self.in_flight.len() - 1).expect("fewer than 2^32 frames")
                    }
                };
                (FRAME, slot, 0)
            }
        };
        self.queue.push(Entry { at: nanos(at), key: self.seq << 2 | kind, a, b });
    }

    /// The event an entry stands for (taking a frame out of `in_flight`).
    fn event(&mut self, e: Entry) -> Event {
        match e.key & 3 {
            START => Event::Start(e.a),
            TIMER => Event::Timer(e.a),
            FAILED => Event::Failed { at: e.a, peer: e.b },
            _ => {
                let frame = self.in_flight[e.a as usize].take().expect("a queued frame");
                self.free.push(e.a);
                Event::Frame(frame)
            }
        }
    }

    fn latency(&self, a: Id, b: Id) -> Duration {
        link_latency(&self.scenario, a, b)
    }

    fn fail_later(&mut self, at: Id, peer: Id, after: Duration) {
        if self.failing.insert((at, peer)) {
            self.schedule(self.now + after, Event::Failed { at, peer });
        }
    }

    fn run_for(&mut self, span: Duration) {
        self.run_until(self.now + span);
    }

    fn run_until(&mut self, end: Duration) {
        while let Some(entry) = self.queue.pop_until(nanos(end)) {
            self.now = self.now.max(Duration::from_nanos(entry.at));
            let event = self.event(entry);
            self.step(event);
        }
        self.now = self.now.max(end);
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::Start(id) => {
                let now = self.start + self.now;
                let topic = self.topic;
                // Subscribing below MAX_TOPICS never fails.
                let _ = self.nodes[id as usize].subscribe(now, topic);
                let anchors = self.contacts(id).to_vec();
                self.input(id, Input::Join { anchors });
            }
            Event::Frame(Frame { from, to, msg }) => {
                if !self.alive[to as usize] {
                    let after = self.scenario.dial_timeout;
                    self.fail_later(from, to, after);
                    return;
                }
                self.frames += 1;
                if let Wire::Membership(hyparview::Message::Neighbors(_)) = &msg {
                    self.frames_neighbors += 1;
                }
                if let Wire::Gossip { msg: plumtree::Message::Gossip { id, .. }, .. } = &msg {
                    if let Some(t) = self.tracked.get_mut(tracked_index(id)) {
                        t.payload_frames += 1;
                    }
                }
                self.input(to, Input::Message { from, msg });
            }
            Event::Timer(id) => {
                if self.timer_at[id as usize] != nanos(self.now) {
                    return; // stale: an earlier deadline replaced it
                }
                self.timer_at[id as usize] = NO_TIMER;
                let due = self.nodes[id as usize]
                    .next_deadline()
                    .is_some_and(|d| d <= self.start + self.now);
                if due {
                    self.input(id, Input::Timeout);
                } else {
                    self.reschedule(id);
                }
            }
            Event::Failed { at, peer } => {
                self.failing.remove(&(at, peer));
                self.input(at, Input::PeerFailed(peer));
            }
        }
    }

    /// Feeds one input to a live node and carries out what it asks.
    fn input(&mut self, id: Id, input: Input<Id>) {
        if !self.alive[id as usize] {
            return;
        }
        let now = self.start + self.now;
        let node = &mut self.nodes[id as usize];
        // Only local broadcasts can error, and the simulator makes unique small ones.
        let _ = node.handle(now, input);
        let mut outs = std::mem::take(&mut self.scratch);
        outs.extend(std::iter::from_fn(|| node.poll()));
        for out in outs.drain(..) {
            match out {
                Output::Send { to, msg } => {
                    let at = self.now + self.latency(id, to);
                    self.schedule(at, Event::Frame(Frame { from: id, to, msg }));
                }
                Output::Connect(peer) if !self.alive[peer as usize] => {
                    let after = self.scenario.dial_timeout;
                    self.fail_later(id, peer, after);
                }
                Output::Deliver { id: mid, round, .. } => {
                    if let Some(t) = self.tracked.get_mut(tracked_index(&mid)) {
                        if t.deliver(id) {
                            t.max_round = t.max_round.max(round);
                        }
                    }
                }
                _ => {}
            }
        }
        self.scratch = outs;
        self.reschedule(id);
    }

    /// Makes sure a timer event is queued for the node's next deadline.
    fn reschedule(&mut self, id: Id) {
        let Some(deadline) = self.nodes[id as usize].next_deadline() else { return };
        let at = deadline.saturating_duration_since(self.start).max(self.now);
        let t = nanos(at);
        if t < self.timer_at[id as usize] {
            self.timer_at[id as usize] = t;
            self.schedule(at, Event::Timer(id));
        }
    }

    fn live(&self) -> Vec<Id> {
        (0..self.nodes.len() as Id).filter(|&i| self.alive[i as usize]).collect()
    }

    /// Broadcasts once from a random live node and runs one window; returns its index.
    fn broadcast_from(&mut self, sender: Id) -> usize {
        let index = self.tracked.len();
        self.tracked.push(Tracked::default());
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&(index as u64).to_le_bytes());
        id[8] = 0xb7; // marks ids made here
        let payload = (index as u64).to_le_bytes().to_vec();
        let topic = self.topic;
        self.input(sender, Input::Broadcast { topic, id: plumtree::MessageId(id), payload });
        let window = self.scenario.broadcast_window;
        self.run_for(window);
        index
    }

    fn random_live(&mut self) -> Id {
        let live = self.live();
        *live.choose(&mut self.rng).expect("the simulation keeps at least one live node")
    }

    /// `count` broadcasts from random live senders, one window each; a progress line each.
    fn broadcasts(
        &mut self,
        count: usize,
        label: &str,
        progress: &mut dyn FnMut(&str),
    ) -> BroadcastStats {
        let indices: Vec<usize> = (0..count)
            .map(|k| {
                let sender = self.random_live();
                let i = self.broadcast_from(sender);
                let one = self.broadcast_stats(&[i]);
                progress(&format!(
                    "{label} {}/{count}: delivery {:.4}, rmr {:.3}, ldh {} ({})",
                    k + 1,
                    one.delivery,
                    one.rmr,
                    one.ldh_max,
                    self.status()
                ));
                i
            })
            .collect();
        self.broadcast_stats(&indices)
    }

    fn broadcast_stats(&self, indices: &[usize]) -> BroadcastStats {
        let live = self.live();
        let mut stats = BroadcastStats {
            count: indices.len(),
            delivery: 0.0,
            delivery_min: 1.0,
            missed: 0,
            rmr: 0.0,
            ldh: 0.0,
            ldh_max: 0,
        };
        for &i in indices {
            let t = &self.tracked[i];
            let reached = live.iter().filter(|&&n| t.delivered(n)).count();
            let share = reached as f64 / live.len() as f64;
            stats.delivery += share;
            stats.delivery_min = stats.delivery_min.min(share);
            stats.missed += (live.len() - reached) as u64;
            if reached > 1 {
                stats.rmr += t.payload_frames as f64 / (reached - 1) as f64 - 1.0;
            }
            stats.ldh += f64::from(t.max_round);
            stats.ldh_max = stats.ldh_max.max(t.max_round);
        }
        if !indices.is_empty() {
            let n = indices.len() as f64;
            stats.delivery /= n;
            stats.rmr /= n;
            stats.ldh /= n;
        }
        stats
    }

    /// Crashes `victims` at once; their live neighbors notice by keep-alive later.
    fn crash(&mut self, victims: &[Id]) {
        for &v in victims {
            self.alive[v as usize] = false;
        }
        let keepalive = self.scenario.keepalive_timeout;
        for n in self.live() {
            let dead: Vec<Id> = self.nodes[n as usize]
                .membership()
                .active()
                .iter()
                .copied()
                .filter(|p| !self.alive[*p as usize])
                .collect();
            for peer in dead {
                self.fail_later(n, peer, keepalive);
            }
        }
    }

    fn crash_scenario(&mut self, fraction: f64, progress: &mut dyn FnMut(&str)) -> CrashReport {
        let all: Vec<Id> = self.live();
        let count = ((all.len() as f64 * fraction).round() as usize).min(all.len() - 1);
        let victims: Vec<Id> = all.choose_multiple(&mut self.rng, count).copied().collect();
        self.crash(&victims);
        let sender = self.random_live();
        // One window (shorter than the dial and keep-alive timeouts): nothing healed yet.
        let first = self.broadcast_from(sender);
        let first = self.broadcast_stats(&[first]);
        let heal = self.scenario.heal;
        self.run_for(heal);
        let after_heal =
            self.broadcasts(self.scenario.heal_broadcasts, "broadcast after healing", progress);
        let anchors_crashed = victims.iter().filter(|&&v| v < self.scenario.anchors).count();
        CrashReport {
            fraction,
            crashed: victims.len(),
            anchors_crashed,
            survivors: all.len() - victims.len(),
            first,
            after_heal,
            graph_after_heal: self.graph_stats(),
        }
    }

    fn anchors_down(&mut self, newcomers: u32) -> AnchorsDownReport {
        let anchors: Vec<Id> =
            (0..self.scenario.anchors).filter(|&a| self.alive[a as usize]).collect();
        self.crash(&anchors);
        self.run_for(self.scenario.keepalive_timeout * 2);
        let live = self.live();
        let mut joiners = Vec::new();
        for k in 0..newcomers {
            // Knows every anchor (all dead) and one node met earlier.
            let known = *live.choose(&mut self.rng).expect("some node survives");
            let mut contacts: Vec<Id> = (0..self.scenario.anchors).collect();
            contacts.push(known);
            contacts.shuffle(&mut self.rng);
            let id = self.add_node(Some(contacts));
            joiners.push(id);
            self.schedule(self.now + self.scenario.join_interval * k, Event::Start(id));
        }
        self.run_for(self.scenario.heal);
        let joined = joiners
            .iter()
            .filter(|&&j| !self.nodes[j as usize].membership().active().is_empty())
            .count();
        let sender = joiners.first().copied().unwrap_or_else(|| self.random_live());
        let b = self.broadcast_from(sender);
        let delivery = self.broadcast_stats(&[b]).delivery;
        AnchorsDownReport {
            newcomers: joiners.len(),
            joined,
            delivery,
            components: self.graph_stats().components,
        }
    }

    fn isolated_knowing_live_anchor(&self) -> usize {
        self.live()
            .into_iter()
            .filter(|&n| self.nodes[n as usize].membership().active().is_empty())
            .filter(|&n| self.contacts(n).iter().any(|&c| self.alive[c as usize]))
            .count()
    }

    /// Adjacency of live nodes over their active views (links to dead nodes left out).
    fn adjacency(&self) -> Adjacency {
        let mut offsets = Vec::with_capacity(self.nodes.len() + 1);
        let mut targets = Vec::new();
        offsets.push(0);
        for (i, node) in self.nodes.iter().enumerate() {
            if self.alive[i] {
                let active = node.membership().active();
                targets.extend(active.iter().copied().filter(|p| self.alive[*p as usize]));
            }
            offsets.push(u32::try_from(targets.len()).expect("fewer than 2^32 links"));
        }
        Adjacency { offsets, targets }
    }

    fn graph_stats(&mut self) -> GraphStats {
        let adj = self.adjacency();
        let live = self.live();
        let n = live.len();
        // Components over the undirected graph (union-find; links to dead nodes are gone).
        let mut parent: Vec<Id> = (0..self.nodes.len() as Id).collect();
        fn root(parent: &mut [Id], mut x: Id) -> Id {
            while parent[x as usize] != x {
                let up = parent[parent[x as usize] as usize];
                parent[x as usize] = up;
                x = up;
            }
            x
        }
        let mut asymmetric_links = 0;
        for &a in &live {
            for &b in adj.of(a) {
                if !adj.of(b).contains(&a) {
                    asymmetric_links += 1;
                }
                let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
                if ra != rb {
                    parent[ra.max(rb) as usize] = ra.min(rb);
                }
            }
        }
        let mut sizes: BTreeMap<Id, usize> = BTreeMap::new();
        for &a in &live {
            *sizes.entry(root(&mut parent, a)).or_insert(0) += 1;
        }
        drop(parent);
        let mut histogram = BTreeMap::new();
        for &i in &live {
            *histogram.entry(adj.of(i).len()).or_insert(0) += 1;
        }
        let total: usize = live.iter().map(|&i| adj.of(i).len()).sum();
        let degree = Degree {
            mean: total as f64 / n.max(1) as f64,
            min: histogram.keys().next().copied().unwrap_or(0),
            max: histogram.keys().next_back().copied().unwrap_or(0),
            histogram,
        };
        let passive: usize =
            live.iter().map(|&i| self.nodes[i as usize].membership().passive().len()).sum();
        // Sampled BFS over the directed active views (what a flood would use).
        let sources: Vec<Id> =
            live.choose_multiple(&mut self.rng, self.scenario.bfs_sources).copied().collect();
        let target = (n as f64 * 0.999).ceil() as usize;
        let (mut h_max, mut h_sum, mut h_ok, mut short) = (0u32, 0u64, 0u64, 0usize);
        let (mut d_sum, mut d_pairs, mut d_max) = (0u64, 0u64, 0u32);
        let mut dist = vec![u32::MAX; self.nodes.len()];
        let mut queue: Vec<Id> = Vec::with_capacity(n);
        for &s in &sources {
            dist.iter_mut().for_each(|d| *d = u32::MAX);
            dist[s as usize] = 0;
            queue.clear();
            queue.push(s);
            let mut head = 0;
            let mut hops_to_target = None;
            while let Some(&x) = queue.get(head) {
                head += 1;
                let reached = head;
                let dx = dist[x as usize];
                if reached >= target && hops_to_target.is_none() {
                    hops_to_target = Some(dx);
                }
                if dx > 0 {
                    d_sum += u64::from(dx);
                    d_pairs += 1;
                    d_max = d_max.max(dx);
                }
                for &y in adj.of(x) {
                    if dist[y as usize] == u32::MAX {
                        dist[y as usize] = dx + 1;
                        queue.push(y);
                    }
                }
            }
            match hops_to_target {
                Some(h) => {
                    h_max = h_max.max(h);
                    h_sum += u64::from(h);
                    h_ok += 1;
                }
                None => short += 1,
            }
        }
        GraphStats {
            live: n,
            components: sizes.len(),
            largest_component: sizes.values().copied().max().unwrap_or(0),
            isolated: live.iter().filter(|&&i| adj.of(i).is_empty()).count(),
            degree,
            asymmetric_links,
            passive_mean: passive as f64 / n.max(1) as f64,
            hops_999: Hops999 {
                max: h_max,
                mean: h_sum as f64 / h_ok.max(1) as f64,
                short_sources: short,
            },
            path_hops_mean: d_sum as f64 / d_pairs.max(1) as f64,
            path_hops_max: d_max,
        }
    }
}

/// The broadcast index encoded in an id made by [`Sim::broadcast_from`], or `usize::MAX`.
fn tracked_index(id: &plumtree::MessageId) -> usize {
    if id.0[8] != 0xb7 {
        return usize::MAX;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&id.0[..8]);
    usize::try_from(u64::from_le_bytes(b)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(nodes: u32, seed: u64) -> Scenario {
        Scenario {
            warmup: 3,
            broadcasts: 5,
            heal_broadcasts: 5,
            newcomers: 0,
            bfs_sources: 5,
            ..Scenario::new(nodes, 2, seed)
        }
    }

    #[test]
    fn two_hundred_nodes_form_one_overlay_and_broadcasts_reach_all() {
        let r = run(&small(200, 1), &mut |_| {});
        assert_eq!(r.components, 1);
        assert_eq!(r.isolated, 0);
        assert_eq!(r.graph.asymmetric_links, 0);
        assert_eq!(r.broadcast.missed, 0);
        assert_eq!(r.broadcast.delivery, 1.0);
        assert!(r.degree.max <= r.active_max);
    }

    #[test]
    fn survivors_of_half_crashing_are_all_reached_after_healing() {
        let s = Scenario { crash: Some(0.5), ..small(200, 2) };
        let r = run(&s, &mut |_| {});
        let crash = r.crash.as_ref().expect("crash asked");
        assert_eq!(crash.crashed, 100);
        assert_eq!(r.delivery_after_heal, Some(1.0));
        assert_eq!(crash.after_heal.missed, 0);
        assert_eq!(r.isolated, 0);
        assert_eq!(crash.graph_after_heal.components, 1);
    }

    #[test]
    fn same_seed_same_json() {
        let s = Scenario { crash: Some(0.3), newcomers: 5, ..small(100, 3) };
        let a = serde_json::to_string(&run(&s, &mut |_| {})).expect("serializable");
        let b = serde_json::to_string(&run(&s, &mut |_| {})).expect("serializable");
        assert_eq!(a, b);
        let other = Scenario { seed: 4, ..s };
        let c = serde_json::to_string(&run(&other, &mut |_| {})).expect("serializable");
        assert_ne!(a, c);
    }

    #[test]
    fn newcomers_join_when_every_anchor_is_down() {
        let s = Scenario { newcomers: 10, ..small(100, 5) };
        let r = run(&s, &mut |_| {});
        let down = r.anchors_down.expect("asked");
        assert_eq!(down.newcomers, 10);
        assert_eq!(down.joined, 10);
        assert_eq!(down.components, 1);
        assert_eq!(down.delivery, 1.0);
    }
}
