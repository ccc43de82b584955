//! The search simulation (issue 14): the unstructured search core
//! ([`overlay::proto::search::Search`]) on every node of an overlay that the membership core
//! built ([`crate::overlay::settle`]: HyParView's active views after the joins settled), in
//! virtual time with the overlay simulation's link latencies (20–80 ms one way, fixed per link;
//! no loss).
//!
//! Each query asks from a random origin for an item shared by a share of the nodes
//! ([`Popularity`]): popular (1% of them, Lv et al.'s setting) or rare (one copy). Measured per
//! mode and popularity: success (at least one result), messages per query, hops and time to
//! the first result, and the load on the busiest node (messages it received for one query).
//! Queries run one after another; each ends when its origin reports it done and nothing is in
//! flight (or after [`QUERY_LIMIT`] of virtual time). With churn ([`Net::churn`]), a share of
//! the nodes, other than the item's holders and the asker, is offline while each query runs:
//! what is sent to them is lost, and the overlay has no time to repair around them (the worst
//! case: HyParView replaces a dead neighbour once its connection fails).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use overlay::proto::search::{Config, Input, Mode, Msg, Output, Record, Search};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::overlay::{self as ov, Id};

/// A query's virtual time, at most.
pub const QUERY_LIMIT: Duration = Duration::from_secs(120);

/// How many nodes share the item a query looks for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Popularity {
    /// This share of the nodes (at least one).
    Replicated(f64),
    /// One node.
    Rare,
}

impl Popularity {
    /// Copies of an item on `n` nodes (at least one, and someone left to ask).
    pub fn copies(self, n: usize) -> usize {
        match self {
            Popularity::Replicated(share) => {
                ((n as f64 * share).round() as usize).clamp(1, n.saturating_sub(1).max(1))
            }
            Popularity::Rare => 1,
        }
    }
}

/// One measured cell: a mode on items of one popularity.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub mode: String,
    pub popularity: String,
    pub queries: usize,
    /// Share of queries with at least one result.
    pub success: f64,
    /// Messages sent per query (queries, hits, checks and verdicts), mean.
    pub messages: f64,
    /// Hops to the first result, median over successful queries.
    pub hops_first: f64,
    /// Milliseconds to the first result, median and 90th percentile.
    pub ms_first_median: f64,
    pub ms_first_p90: f64,
    /// Messages the busiest node received for one query, mean over queries.
    pub busiest: f64,
}

/// What one query did.
struct Outcome {
    found: bool,
    messages: usize,
    first: Option<(u8, Duration)>,
    busiest: usize,
}

/// Search cores on a settled overlay.
pub struct Net {
    scenario: ov::Scenario,
    nodes: Vec<Search<Id, ChaCha8Rng>>,
    start: Instant,
    /// Virtual time used so far (queries run one after another).
    clock: Duration,
    rng: ChaCha8Rng,
    /// Share of the nodes offline during each query.
    pub churn: f64,
    /// Nodes offline during the current query.
    down: Vec<bool>,
}

/// An event: a message arriving or a node's timer.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    at: Duration,
    seq: u64,
    to: Id,
    /// `None`: a timer.
    frame: Option<(Id, usize)>,
}

impl Net {
    /// Builds the overlay of `scenario` and a search core on each node.
    pub fn new(scenario: &ov::Scenario, config: Config, progress: &mut dyn FnMut(&str)) -> Net {
        let views = ov::settle(scenario, progress);
        let nodes: Vec<Search<Id, ChaCha8Rng>> = views
            .into_iter()
            .enumerate()
            .map(|(i, view)| {
                let rng = ChaCha8Rng::seed_from_u64(scenario.seed ^ (i as u64) << 20);
                let mut s = Search::new(i as Id, config.clone(), rng);
                s.set_neighbours(view);
                s
            })
            .collect();
        let n = nodes.len();
        Net {
            churn: 0.0,
            down: vec![false; n],
            scenario: scenario.clone(),
            nodes,
            start: Instant::now(),
            clock: Duration::ZERO,
            rng: ChaCha8Rng::seed_from_u64(scenario.seed ^ 0x5ea2c4),
        }
    }

    /// Runs `queries` searches in `mode` for items of `popularity`.
    pub fn measure(&mut self, mode: Mode, popularity: Popularity, queries: usize) -> Cell {
        let n = self.nodes.len();
        let mut outcomes = Vec::new();
        for q in 0..queries {
            let copies = popularity.copies(n);
            let all: Vec<Id> = (0..n as Id).collect();
            let holders: Vec<Id> = all.choose_multiple(&mut self.rng, copies).copied().collect();
            let mut hash = [0u8; 20];
            hash[..8].copy_from_slice(&(q as u64).to_be_bytes());
            // One publisher for all its copies: a search counts the item once, wherever found.
            let publisher = overlay::identity::NodeId([0; 32]);
            let record = Record::unsigned(format!("item{q} film"), 1, hash, publisher);
            for &h in &holders {
                self.nodes[h as usize].share(record.clone());
            }
            let origin = loop {
                let o = self.rng.random_range(0..n as Id);
                if !holders.contains(&o) {
                    break o;
                }
            };
            let offline =
                ((n as f64 * self.churn) as usize).min(n.saturating_sub(holders.len() + 1));
            let mut down = 0;
            while down < offline {
                let d = self.rng.random_range(0..n as Id);
                if d != origin && !holders.contains(&d) && !self.down[d as usize] {
                    self.down[d as usize] = true;
                    down += 1;
                }
            }
            outcomes.push(self.query(origin, &format!("item{q}"), mode));
            self.down.fill(false);
            for &h in &holders {
                self.nodes[h as usize].unshare(&hash);
            }
        }
        summarize(mode, popularity, &outcomes)
    }

    fn query(&mut self, origin: Id, text: &str, mode: Mode) -> Outcome {
        let n = self.nodes.len();
        let mut heap: BinaryHeap<Reverse<Event>> = BinaryHeap::new();
        let mut frames: Vec<Option<Msg<Id>>> = Vec::new();
        let mut received = vec![0usize; n];
        let (mut seq, mut messages, mut in_flight) = (0u64, 0usize, 0usize);
        let mut first = None;
        let mut done = false;
        let t0 = self.clock;
        let mut now = t0;
        let id = self.nodes[origin as usize].start(self.start + now, text, mode);
        let mut touched = vec![origin];
        loop {
            // Carry out what the touched nodes ask.
            for node in touched.drain(..) {
                while let Some(out) = self.nodes[node as usize].poll() {
                    match out {
                        Output::Send { to, msg } => {
                            messages += 1;
                            in_flight += 1;
                            frames.push(Some(msg));
                            let at = now + ov::link_latency(&self.scenario, node, to);
                            seq += 1;
                            let frame = Some((node, frames.len() - 1));
                            heap.push(Reverse(Event { at, seq, to, frame }));
                        }
                        Output::Result { id: q, hops, .. } if q == id && first.is_none() => {
                            first = Some((hops, now - t0));
                        }
                        Output::Done { id: q, .. } if q == id => done = true,
                        _ => {}
                    }
                }
                if let Some(d) = self.nodes[node as usize].next_deadline() {
                    let at = d.saturating_duration_since(self.start);
                    seq += 1;
                    heap.push(Reverse(Event { at, seq, to: node, frame: None }));
                }
            }
            if (done && in_flight == 0) || now > t0 + QUERY_LIMIT {
                break;
            }
            let Some(Reverse(e)) = heap.pop() else { break };
            now = now.max(e.at);
            let at = self.start + now;
            match e.frame {
                Some((from, slot)) => {
                    in_flight -= 1;
                    let msg = frames[slot].take().expect("a frame is delivered once");
                    if self.down[e.to as usize] {
                        continue;
                    }
                    received[e.to as usize] += 1;
                    self.nodes[e.to as usize].handle(at, Input::Message { from, msg });
                }
                None => {
                    if self.nodes[e.to as usize].next_deadline().is_none_or(|d| d > at) {
                        continue;
                    }
                    self.nodes[e.to as usize].handle(at, Input::Timeout);
                }
            }
            touched.push(e.to);
        }
        // A search cut off by the limit ends here, so nothing of it runs into the next query.
        if !done {
            self.nodes[origin as usize].cancel(id);
            while self.nodes[origin as usize].poll().is_some() {}
        }
        // The next query starts after this one's events.
        self.clock = now + Duration::from_secs(1);
        let busiest = received.into_iter().max().unwrap_or(0);
        Outcome { found: first.is_some(), messages, first, busiest }
    }
}

fn median(v: &mut [f64]) -> f64 {
    percentile(v, 0.5)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn mode_name(mode: Mode) -> String {
    match mode {
        Mode::Flood(ttl) => format!("flood (TTL {ttl})"),
        Mode::Ring => "expanding ring".into(),
        Mode::Walk => "random walks".into(),
    }
}

/// How a popularity reads in the tables.
pub fn popularity_name(p: Popularity) -> String {
    match p {
        Popularity::Replicated(share) => format!("{}% of nodes", share * 100.0),
        Popularity::Rare => "one copy".into(),
    }
}

fn summarize(mode: Mode, popularity: Popularity, outcomes: &[Outcome]) -> Cell {
    let q = outcomes.len().max(1) as f64;
    let mut hops: Vec<f64> =
        outcomes.iter().filter_map(|o| o.first.map(|(h, _)| f64::from(h))).collect();
    let mut ms: Vec<f64> =
        outcomes.iter().filter_map(|o| o.first.map(|(_, t)| t.as_secs_f64() * 1e3)).collect();
    Cell {
        mode: mode_name(mode),
        popularity: popularity_name(popularity),
        queries: outcomes.len(),
        success: outcomes.iter().filter(|o| o.found).count() as f64 / q,
        messages: outcomes.iter().map(|o| o.messages).sum::<usize>() as f64 / q,
        hops_first: median(&mut hops),
        ms_first_median: median(&mut ms.clone()),
        ms_first_p90: percentile(&mut ms, 0.9),
        busiest: outcomes.iter().map(|o| o.busiest).sum::<usize>() as f64 / q,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_the_settled_overlay_walks_find_popular_items_for_a_fraction_of_a_floods_messages() {
        let scenario = ov::Scenario::new(600, 3, 5);
        let mut net = Net::new(&scenario, Config::default(), &mut |_| {});
        let popular = Popularity::Replicated(0.02);
        let flood = net.measure(Mode::Flood(7), popular, 20);
        let walk = net.measure(Mode::Walk, popular, 20);
        let rare = net.measure(Mode::Flood(7), Popularity::Rare, 20);
        assert!(flood.success >= 0.95 && walk.success >= 0.95, "{flood:?} {walk:?}");
        assert!(walk.messages * 5.0 < flood.messages, "{walk:?} {flood:?}");
        // A TTL-7 flood reaches every node of a 600-node overlay: it finds a single copy.
        assert!(rare.success >= 0.95, "{rare:?}");
        assert!(flood.hops_first <= walk.hops_first, "{flood:?} {walk:?}");
    }
}
