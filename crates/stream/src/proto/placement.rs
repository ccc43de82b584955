//! Request routing for the CDN (sans-IO): which edge serves a movie, by consistent hashing with
//! bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018; HAProxy's `hash-balance-factor`).
//!
//! Every edge owns [`VNODES`] points on a 64-bit hash ring. A movie hashes to a point; walking the
//! ring clockwise from there gives the edges in order of preference, the same order every time,
//! so a movie's segments stay cached on few edges. With bounded loads, an edge is skipped while
//! its load is at its capacity, `max(⌊c · (L + 1) / n⌋, ⌈(L + 1) / n⌉)` for `L` current
//! viewers on `n` healthy edges and balance factor `c` (1.25 by default, as HAProxy's 125):
//! no edge carries more than `c` times the average (rounded down, unless that leaves no room).
//! Unhealthy edges are skipped entirely and their viewers re-placed when they come back for a
//! new manifest. The order after the chosen edge is the failover order a player should use.
//!
//! The table "movie → edges holding it" of the notes is this function of the movie name; the
//! router keeps only each edge's health and load.

use std::collections::BTreeMap;

/// Ring points per edge (more points, smoother shares).
pub const VNODES: u32 = 160;

/// Default balance factor `c`.
pub const BALANCE: f64 = 1.25;

/// FNV-1a, 64-bit: a stable hash (the ring must not change between runs or builds).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // A final avalanche (splitmix64's), so nearby names land far apart.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// State of one edge as the router sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    /// The edge's name (also its ring identity).
    pub name: String,
    /// Whether its last health probe passed.
    pub healthy: bool,
    /// Viewers currently placed on it.
    pub load: u32,
}

/// The placement table: edges, their ring points, health and load.
#[derive(Debug, Clone)]
pub struct Placement {
    edges: Vec<Edge>,
    ring: BTreeMap<u64, usize>,
    balance: f64,
}

impl Placement {
    /// A table over `names` (all healthy, no load) with balance factor `balance` (≥ 1).
    pub fn new(names: &[String], balance: f64) -> Self {
        let mut ring = BTreeMap::new();
        for (i, name) in names.iter().enumerate() {
            for v in 0..VNODES {
                let point = fnv1a(format!("{name}#{v}").as_bytes());
                // A collision keeps the first owner; with 64-bit points it does not happen.
                ring.entry(point).or_insert(i);
            }
        }
        let edges =
            names.iter().map(|n| Edge { name: n.clone(), healthy: true, load: 0 }).collect();
        Self { edges, ring, balance: balance.max(1.0) }
    }

    /// The edges, in the order given at creation.
    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    /// Marks edge `i` healthy or not (from a health probe).
    pub fn set_healthy(&mut self, i: usize, healthy: bool) {
        if let Some(e) = self.edges.get_mut(i) {
            e.healthy = healthy;
        }
    }

    /// Sets edge `i`'s load (e.g. from its own report).
    pub fn set_load(&mut self, i: usize, load: u32) {
        if let Some(e) = self.edges.get_mut(i) {
            e.load = load;
        }
    }

    /// Healthy edges in ring order from `movie`'s point: the consistent-hashing preference.
    pub fn preference(&self, movie: &str) -> Vec<usize> {
        let start = fnv1a(movie.as_bytes());
        let mut order = Vec::new();
        for (_, &i) in self.ring.range(start..).chain(self.ring.range(..start)) {
            if self.edges[i].healthy && !order.contains(&i) {
                order.push(i);
                if order.len() == self.edges.len() {
                    break;
                }
            }
        }
        order
    }

    /// Most viewers an edge may hold when one more is placed.
    pub fn capacity(&self) -> u32 {
        let healthy = self.edges.iter().filter(|e| e.healthy).count().max(1) as f64;
        let total: u32 = self.edges.iter().filter(|e| e.healthy).map(|e| e.load).sum();
        let next = f64::from(total) + 1.0;
        let bounded = (self.balance * next / healthy).floor();
        let fair = (next / healthy).ceil();
        bounded.max(fair) as u32
    }

    /// Places one viewer of `movie`: returns the edges in order of preference, the chosen one
    /// first (its load is incremented) and the others as failover, or `None` if no edge is
    /// healthy.
    pub fn place(&mut self, movie: &str) -> Option<Vec<usize>> {
        let order = self.choose(movie)?;
        self.edges[order[0]].load += 1;
        Some(order)
    }

    /// The order [`Placement::place`] would return for `movie` now, without placing anyone
    /// (what a DNS answer hands out: a lookup is not a viewer).
    pub fn choose(&self, movie: &str) -> Option<Vec<usize>> {
        let pref = self.preference(movie);
        let cap = self.capacity();
        let chosen = *pref.iter().find(|&&i| self.edges[i].load < cap).or(pref.first())?;
        let mut order = vec![chosen];
        order.extend(pref.into_iter().filter(|&i| i != chosen));
        Some(order)
    }

    /// A viewer placed on edge `i` left.
    pub fn release(&mut self, i: usize) {
        if let Some(e) = self.edges.get_mut(i) {
            e.load = e.load.saturating_sub(1);
        }
    }

    /// Largest load over the mean load of healthy edges (1.0 = perfectly even).
    pub fn imbalance(&self) -> f64 {
        let loads: Vec<u32> = self.edges.iter().filter(|e| e.healthy).map(|e| e.load).collect();
        let total: u32 = loads.iter().sum();
        if total == 0 {
            return 1.0;
        }
        let max = loads.iter().copied().max().unwrap_or(0);
        f64::from(max) * loads.len() as f64 / f64::from(total)
    }
}

/// Movie names `movie1..=movieN` drawn by Zipf(`s`) popularity (movie1 the most popular).
pub fn zipf_movies<R: rand::Rng>(
    rng: &mut R,
    movies: usize,
    s: f64,
    viewers: usize,
) -> Vec<String> {
    let weights: Vec<f64> = (1..=movies).map(|k| 1.0 / (k as f64).powf(s)).collect();
    let total: f64 = weights.iter().sum();
    (0..viewers)
        .map(|_| {
            let mut x = rng.random_range(0.0..total);
            let mut k = 0;
            while k + 1 < movies && x >= weights[k] {
                x -= weights[k];
                k += 1;
            }
            format!("movie{}", k + 1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("edge{i}")).collect()
    }

    #[test]
    fn preference_is_stable_and_skips_unhealthy_edges() {
        let mut p = Placement::new(&names(3), BALANCE);
        let pref = p.preference("movie1");
        assert_eq!(pref.len(), 3);
        assert_eq!(p.preference("movie1"), pref, "same movie, same order");
        p.set_healthy(pref[0], false);
        let without = p.preference("movie1");
        assert_eq!(without, pref[1..].to_vec(), "the next replica takes over, order kept");
        p.set_healthy(pref[0], true);
        assert_eq!(p.preference("movie1"), pref, "back in rotation when healthy again");
        for e in 0..3 {
            p.set_healthy(e, false);
        }
        assert_eq!(p.place("movie1"), None);
    }

    #[test]
    fn choosing_is_placing_without_the_load() {
        let mut p = Placement::new(&names(3), BALANCE);
        for _ in 0..10 {
            let chosen = p.choose("movie1");
            assert_eq!(p.place("movie1"), chosen, "place takes what choose shows");
        }
        let loads: Vec<u32> = p.edges().iter().map(|e| e.load).collect();
        for _ in 0..100 {
            p.choose("movie1");
        }
        assert_eq!(p.edges().iter().map(|e| e.load).collect::<Vec<_>>(), loads);
    }

    #[test]
    fn one_popular_movie_is_spread_within_the_bound() {
        // Everyone watches the same movie: plain consistent hashing would put all 50 on one
        // edge; with bounded loads no edge exceeds 1.25 × the mean.
        let mut p = Placement::new(&names(3), BALANCE);
        for _ in 0..50 {
            p.place("movie1").expect("healthy edges");
        }
        let loads: Vec<u32> = p.edges().iter().map(|e| e.load).collect();
        assert_eq!(loads.iter().sum::<u32>(), 50);
        assert!(loads.iter().all(|&l| l <= 20), "{loads:?}: ⌊1.25 · 50 / 3⌋ = 20");
        assert!(p.imbalance() <= 1.25, "{}", p.imbalance());
    }

    #[test]
    fn zipf_viewers_stay_balanced_and_release_frees_room() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let viewers = zipf_movies(&mut rng, 100, 0.8, 50);
        assert!(
            viewers.iter().filter(|m| *m == "movie1").count() > 3,
            "movie1 is the most popular"
        );
        let mut p = Placement::new(&names(3), BALANCE);
        let placed: Vec<usize> = viewers.iter().map(|m| p.place(m).expect("healthy")[0]).collect();
        assert!(p.imbalance() <= 1.25, "{}", p.imbalance());
        for i in placed {
            p.release(i);
        }
        assert!(p.edges().iter().all(|e| e.load == 0));
    }

    #[test]
    fn capacity_rounds_down_but_always_leaves_room() {
        let mut p = Placement::new(&names(3), BALANCE);
        assert_eq!(p.capacity(), 1, "first viewer: ⌈1/3⌉");
        p.set_load(0, 7);
        p.set_load(1, 7);
        p.set_load(2, 6);
        // 21 viewers next: ⌊1.25 · 21 / 3⌋ = 8.
        assert_eq!(p.capacity(), 8);
    }
}
