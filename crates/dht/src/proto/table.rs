//! The routing table (BEP 5): buckets of at most [`K`] nodes over the 160-bit id space, split
//! only where our own id falls, so the table knows many nodes near us and a few far away. As in
//! libtorrent's extended routing table, the four farthest buckets, which cover 15/16 of the id
//! space, hold 128, 64, 32 and 16 nodes: a lookup's first hop starts about 4 bits closer.
//!
//! # Liveness (BEP 5)
//! A node is **good** if it answered one of our queries in the last [`GOOD_FOR`] (15 minutes),
//! or answered us once and queried us within that time; **questionable** after 15 minutes
//! without either; **bad** after [`MAX_FAILURES`] queries in a row went unanswered. A full
//! bucket takes a new node only in place of a bad one; when it holds a questionable node, the
//! caller is told to ping it ([`Insert::PingFirst`]) and the newcomer waits in the bucket's
//! replacement cache (at most [`K`], newest kept) for a slot that [`RoutingTable::failed`]
//! frees.
//!
//! # What a node claims is not trusted
//! - Only nodes that answered a query of ours enter the table ([`Seen::Responded`]); a node
//!   that only queried us, or that another node named in `nodes`, is at most a replacement.
//! - One entry per host among public addresses (libtorrent's `restrict_routing_ips`): per
//!   IPv4 address, per IPv6 /64 (see [`NodeAddr::Host`]), so one host cannot fill a bucket
//!   with made-up ids. Loopback, private and unique-local addresses are exempt, as BEP 42
//!   exempts them, so a test network on 127.0.0.1 or ::1 works.
//! - BEP 42: in a full bucket, a node whose id its address allows (`NodeId::is_valid_for`)
//!   replaces the stalest node whose id its address does not allow.
//! - Every structure is bounded: at most 160 buckets of at most 128 nodes (see
//!   [`bucket_capacity`]) and [`K`] replacements each.
//!
//! A sans-IO part of the DHT core: no clock (every call takes `now`), no sockets. One table
//! serves one address family ([`NodeAddr`]): BEP 32 keeps IPv4 and IPv6 tables apart.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use super::addr::NodeAddr;
use super::id::NodeId;
use super::krpc::CompactNode;

/// Nodes per bucket (Kademlia's k; BEP 5: 8).
pub const K: usize = 8;
/// How long an answer keeps a node good (BEP 5: 15 minutes).
pub const GOOD_FOR: Duration = Duration::from_secs(15 * 60);
/// Unanswered queries in a row that make a node bad.
pub const MAX_FAILURES: u32 = 2;

/// Nodes a bucket of ids sharing exactly `depth` leading bits with ours holds at most (see
/// [`RoutingTable`]'s extended far buckets).
pub fn bucket_capacity(depth: usize) -> usize {
    [128, 64, 32, 16].get(depth).copied().unwrap_or(K)
}

/// How we came to hear of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// It answered a query of ours.
    Responded,
    /// It sent us a query.
    Queried,
}

/// What [`RoutingTable::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert<A = SocketAddrV4> {
    /// A new entry.
    Added,
    /// The node was already in the table; its times were refreshed.
    Updated,
    /// The bucket is full of nodes that may be stale: ping this one; the newcomer waits as a
    /// replacement.
    PingFirst(NodeId, A),
    /// Kept as a replacement only (the bucket is full of good nodes, or the node never answered
    /// us).
    Replacement,
    /// Refused: our own id, an unusable address, or a second id on one public address.
    Refused,
}

/// One routing-table entry: 36 bytes for IPv4, so that a million tables of a few hundred
/// entries fit in the simulator's memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<A = SocketAddrV4> {
    pub id: NodeId,
    pub addr: A,
    /// Its last answer to us and its last query to us, as [`RoutingTable`] stamps (seconds
    /// since the table's first insert, plus one; 0 for never).
    last_response: u32,
    last_query: u32,
    /// Queries in a row it did not answer.
    failures: u8,
}

impl<A: NodeAddr> Entry<A> {
    fn new(node: CompactNode<A>) -> Self {
        Entry { id: node.id, addr: node.addr, last_response: 0, last_query: 0, failures: 0 }
    }

    /// Good by BEP 5's rule (see the module docs), at stamp `now`.
    fn is_good(&self, now: u32) -> bool {
        let recent = |t: u32| t != 0 && u64::from(now.saturating_sub(t)) < GOOD_FOR.as_secs();
        u32::from(self.failures) < MAX_FAILURES
            && (recent(self.last_response) || (self.last_response != 0 && recent(self.last_query)))
    }

    /// Bad: too many unanswered queries in a row.
    pub fn is_bad(&self) -> bool {
        u32::from(self.failures) >= MAX_FAILURES
    }

    /// The later of its last answer and its last query (a stamp).
    fn last_heard(&self) -> u32 {
        self.last_response.max(self.last_query)
    }

    fn saw(&mut self, now: u32, how: Seen) {
        match how {
            Seen::Responded => {
                self.last_response = now;
                self.failures = 0;
            }
            Seen::Queried => self.last_query = now,
        }
    }
}

#[derive(Clone, Debug)]
struct Bucket<A> {
    nodes: Vec<Entry<A>>,
    replacements: Vec<Entry<A>>,
    last_changed: Option<Instant>,
}

impl<A> Default for Bucket<A> {
    fn default() -> Self {
        Bucket { nodes: Vec::new(), replacements: Vec::new(), last_changed: None }
    }
}

/// The routing table of the node whose id is [`own`](RoutingTable::own).
#[derive(Clone, Debug)]
pub struct RoutingTable<A = SocketAddrV4> {
    own: NodeId,
    /// The time of the first insert: entries' stamps count seconds from it.
    epoch: Option<Instant>,
    /// Bucket `i < len - 1` holds ids sharing exactly `i` leading bits with `own`; the last one
    /// holds every id sharing at least `len - 1` (it contains `own`, and only it splits).
    buckets: Vec<Bucket<A>>,
}

impl<A: NodeAddr> RoutingTable<A> {
    pub fn new(own: NodeId) -> Self {
        RoutingTable { own, epoch: None, buckets: vec![Bucket::default()] }
    }

    /// Our id.
    pub fn own(&self) -> NodeId {
        self.own
    }

    /// Nodes in the table (replacements not counted).
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.nodes.len()).sum()
    }

    /// Whether the table holds no node.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of buckets (1 to 160).
    pub fn num_buckets(&self) -> usize {
        self.buckets.len()
    }

    /// The entry for `id`, if it is in the table.
    pub fn get(&self, id: &NodeId) -> Option<&Entry<A>> {
        self.buckets[self.index(id)].nodes.iter().find(|e| e.id == *id)
    }

    fn index(&self, id: &NodeId) -> usize {
        (self.own.common_prefix_len(id) as usize).min(self.buckets.len() - 1)
    }

    /// Whether a node with `id` that answered us would get a place (its bucket has room, can
    /// split, or holds a bad node): worth a ping when such a node queries us.
    pub fn wants(&self, id: &NodeId) -> bool {
        if *id == self.own || self.get(id).is_some() {
            return false;
        }
        let i = self.index(id);
        let b = &self.buckets[i];
        b.nodes.len() < self.capacity(i)
            || (i == self.buckets.len() - 1 && self.buckets.len() < 160)
            || b.nodes.iter().any(Entry::is_bad)
    }

    /// Records that `node` answered us or queried us (see [`Seen`]).
    pub fn insert(&mut self, now: Instant, node: CompactNode<A>, how: Seen) -> Insert<A> {
        if node.id == self.own || node.addr.port_of() == 0 || !node.addr.usable() {
            return Insert::Refused;
        }
        let stamp = self.stamp(now);
        let i = self.index(&node.id);
        if let Some(e) = self.buckets[i].nodes.iter_mut().find(|e| e.id == node.id) {
            if e.addr != node.addr {
                // A known id from another address: not believed (the old one may be alive).
                return Insert::Refused;
            }
            e.saw(stamp, how);
            return Insert::Updated;
        }
        if !node.addr.exempt() && self.has_host(node.addr.host()) {
            return Insert::Refused;
        }
        let mut entry = Entry::new(node);
        entry.saw(stamp, how);
        if how == Seen::Queried {
            self.add_replacement(i, entry);
            return Insert::Replacement;
        }
        loop {
            let i = self.index(&node.id);
            let splittable = i == self.buckets.len() - 1 && self.buckets.len() < 160;
            let cap = self.capacity(i);
            let bucket = &mut self.buckets[i];
            if bucket.nodes.len() < cap {
                bucket.nodes.push(entry);
                bucket.last_changed = Some(now);
                return Insert::Added;
            }
            if let Some(bad) = bucket.nodes.iter().position(Entry::is_bad) {
                bucket.nodes[bad] = entry;
                bucket.last_changed = Some(now);
                return Insert::Added;
            }
            // Only the bucket holding our own id splits, and not past 160 bits.
            if splittable {
                self.split();
                continue;
            }
            // BEP 42: a node whose id its address allows takes the place of the stalest one
            // whose id it does not.
            if node.addr.allows(&node.id) {
                let unverified = bucket
                    .nodes
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| !e.addr.allows(&e.id))
                    .min_by_key(|(_, e)| e.last_heard())
                    .map(|(i, _)| i);
                if let Some(i) = unverified {
                    bucket.nodes[i] = entry;
                    bucket.last_changed = Some(now);
                    return Insert::Added;
                }
            }
            let stale =
                bucket.nodes.iter().filter(|e| !e.is_good(stamp)).min_by_key(|e| e.last_heard());
            let ping = stale.map(|e| (e.id, e.addr));
            self.add_replacement(i, entry);
            return match ping {
                Some((id, addr)) => Insert::PingFirst(id, addr),
                None => Insert::Replacement,
            };
        }
    }

    /// A query to `id` went unanswered. A node that turns bad gives its slot to the newest
    /// replacement that answered us, if any.
    pub fn failed(&mut self, now: Instant, id: &NodeId) {
        let i = self.index(id);
        let bucket = &mut self.buckets[i];
        let Some(at) = bucket.nodes.iter().position(|e| e.id == *id) else {
            return;
        };
        bucket.nodes[at].failures = bucket.nodes[at].failures.saturating_add(1);
        if !bucket.nodes[at].is_bad() {
            return;
        }
        if let Some(r) = bucket.replacements.iter().rposition(|e| e.last_response != 0) {
            bucket.nodes[at] = bucket.replacements.remove(r);
            bucket.last_changed = Some(now);
        }
    }

    /// Every node that is not bad (to save the table for a warm restart).
    pub fn nodes(&self) -> Vec<CompactNode<A>> {
        let all = self.buckets.iter().flat_map(|b| &b.nodes).filter(|e| !e.is_bad());
        all.map(|e| CompactNode { id: e.id, addr: e.addr }).collect()
    }

    /// Up to `count` non-bad nodes closest to `target`, closest first.
    pub fn closest(&self, target: &NodeId, count: usize) -> Vec<CompactNode<A>> {
        // Each distance computed once; only the `count` closest sorted (ids are unique, so the
        // order is the same as a full sort's).
        let mut all: Vec<([u8; 20], &Entry<A>)> = self
            .buckets
            .iter()
            .flat_map(|b| &b.nodes)
            .filter(|e| !e.is_bad())
            .map(|e| (e.id.distance(target), e))
            .collect();
        if all.len() > count {
            all.select_nth_unstable_by(count, |a, b| a.0.cmp(&b.0));
            all.truncate(count);
        }
        all.sort_unstable_by_key(|a| a.0);
        all.into_iter().map(|(_, e)| CompactNode { id: e.id, addr: e.addr }).collect()
    }

    /// Buckets not changed for `period` (BEP 5: 15 minutes), each as an id in its range to
    /// look up (`random` supplies the low bits).
    pub fn stale_buckets(&self, now: Instant, period: Duration, random: NodeId) -> Vec<NodeId> {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, b)| {
                b.last_changed.is_none_or(|t| now.saturating_duration_since(t) >= period)
            })
            .map(|(i, _)| self.id_in_bucket(i, random))
            .collect()
    }

    /// An id that falls in bucket `i`: our first `i` bits, then (except in the last bucket,
    /// which holds every longer prefix) bit `i` unlike ours, the rest from `random`.
    fn id_in_bucket(&self, i: usize, random: NodeId) -> NodeId {
        let mut id = random.0;
        let set = |id: &mut [u8; 20], bit: usize, on: bool| {
            let (byte, mask) = (bit / 8, 0x80u8 >> (bit % 8));
            id[byte] = if on { id[byte] | mask } else { id[byte] & !mask };
        };
        let ours = |bit: usize| self.own.0[bit / 8] & (0x80u8 >> (bit % 8)) != 0;
        for bit in 0..i.min(160) {
            set(&mut id, bit, ours(bit));
        }
        if i < self.buckets.len() - 1 && i < 160 {
            set(&mut id, i, !ours(i));
        }
        NodeId(id)
    }

    /// `now` as an entry stamp (see [`Entry`]); the first call sets the epoch.
    fn stamp(&mut self, now: Instant) -> u32 {
        let epoch = *self.epoch.get_or_insert(now);
        let secs = now.saturating_duration_since(epoch).as_secs();
        u32::try_from(secs).unwrap_or(u32::MAX - 1) + 1
    }

    /// Nodes bucket `i` holds at most: libtorrent's extended routing table gives the far
    /// buckets, which cover most of the id space, more room (128, 64, 32, 16, then [`K`]); the
    /// last bucket, the one that splits, holds [`K`].
    fn capacity(&self, i: usize) -> usize {
        if i + 1 == self.buckets.len() {
            K
        } else {
            bucket_capacity(i)
        }
    }

    fn has_host(&self, host: A::Host) -> bool {
        self.buckets.iter().flat_map(|b| &b.nodes).any(|e| e.addr.host() == host)
    }

    fn add_replacement(&mut self, i: usize, entry: Entry<A>) {
        let r = &mut self.buckets[i].replacements;
        r.retain(|e| e.id != entry.id);
        if r.len() == K {
            r.remove(0);
        }
        r.push(entry);
    }

    /// Splits the last bucket: nodes sharing one more bit with us move to a new last bucket.
    fn split(&mut self) {
        let depth = self.buckets.len() - 1;
        let last = self.buckets.last_mut().expect("at least one bucket");
        let own = self.own;
        let deeper = |e: &Entry<A>| own.common_prefix_len(&e.id) as usize > depth;
        let (moved, kept): (Vec<_>, Vec<_>) = last.nodes.drain(..).partition(deeper);
        let (moved_r, kept_r): (Vec<_>, Vec<_>) = last.replacements.drain(..).partition(deeper);
        last.nodes = kept;
        last.replacements = kept_r;
        let changed = last.last_changed;
        self.buckets.push(Bucket { nodes: moved, replacements: moved_r, last_changed: changed });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::net::{Ipv4Addr, SocketAddrV6};

    fn node(id: NodeId, a: u8, port: u16) -> CompactNode {
        CompactNode { id, addr: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, a), port) }
    }

    fn public(id: NodeId, a: u8) -> CompactNode {
        CompactNode { id, addr: SocketAddrV4::new(Ipv4Addr::new(80, 1, 2, a), 6881) }
    }

    /// An id sharing exactly `bits` leading bits with `own`.
    fn at_prefix(own: NodeId, bits: usize, rng: &mut ChaCha8Rng) -> NodeId {
        let t: RoutingTable =
            RoutingTable { own, epoch: None, buckets: vec![Bucket::default(); bits + 2] };
        t.id_in_bucket(bits, NodeId::random(rng))
    }

    #[test]
    fn ids_made_for_a_bucket_fall_in_it() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let own = NodeId::random(&mut rng);
        for bits in [0, 1, 7, 8, 9, 100, 158] {
            let id = at_prefix(own, bits, &mut rng);
            assert_eq!(own.common_prefix_len(&id) as usize, bits);
        }
    }

    #[test]
    fn buckets_split_near_us_and_stay_full_far_away() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let own = NodeId::random(&mut rng);
        let mut t = RoutingTable::new(own);
        let now = Instant::now();
        // 200 nodes in the far half (bucket 0): 128 get in (libtorrent's extended table).
        let mut port = 1000;
        for _ in 0..200 {
            port += 1;
            t.insert(now, node(at_prefix(own, 0, &mut rng), 1, port), Seen::Responded);
        }
        // 8 nodes at each of prefix lengths 1..=5: the last bucket splits to hold them.
        for bits in 1..=5 {
            for _ in 0..K {
                port += 1;
                let got =
                    t.insert(now, node(at_prefix(own, bits, &mut rng), 2, port), Seen::Responded);
                assert_eq!(got, Insert::Added);
            }
        }
        assert_eq!(t.len(), bucket_capacity(0) + 5 * K);
        assert!(t.num_buckets() >= 6);
        // Every node sits in the bucket its prefix names.
        for (i, b) in t.buckets.iter().enumerate() {
            assert!(b.nodes.len() <= t.capacity(i));
            for e in &b.nodes {
                let cpl = own.common_prefix_len(&e.id) as usize;
                assert!(cpl == i || (i == t.num_buckets() - 1 && cpl >= i), "{cpl} in {i}");
            }
        }
        // closest() returns the nearest first.
        let target = at_prefix(own, 5, &mut rng);
        let c = t.closest(&target, K);
        assert_eq!(c.len(), K);
        assert!(c.windows(2).all(|w| w[0].id.distance(&target) <= w[1].id.distance(&target)));
    }

    #[test]
    fn a_full_bucket_pings_its_stalest_node_and_a_bad_one_is_replaced() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let own = NodeId::random(&mut rng);
        let mut t = RoutingTable::new(own);
        let t0 = Instant::now();
        // Fill bucket D, the first of K nodes (after splits, so it cannot split again).
        const D: usize = 4;
        let far: Vec<NodeId> = (0..K).map(|_| at_prefix(own, D, &mut rng)).collect();
        for (i, id) in far.iter().enumerate() {
            t.insert(t0, node(*id, 1, 100 + i as u16), Seen::Responded);
        }
        while t.num_buckets() < D + 2 {
            let id = at_prefix(own, D + 1, &mut rng);
            t.insert(t0, node(id, 1, rng.random_range(2000..3000)), Seen::Responded);
        }
        assert_eq!(t.capacity(D), K);
        let newcomer = node(at_prefix(own, D, &mut rng), 3, 7);
        // All good: the newcomer is only a replacement.
        assert_eq!(t.insert(t0, newcomer, Seen::Responded), Insert::Replacement);
        // 16 minutes later, all are questionable: ping the stalest (the first one seen).
        let later = t0 + GOOD_FOR + Duration::from_secs(60);
        t.insert(later, node(far[1], 1, 101), Seen::Responded); // far[1] answered again
        match t.insert(later, newcomer, Seen::Responded) {
            Insert::PingFirst(id, _) => assert!(id != far[1]),
            other => panic!("{other:?}"),
        }
        // The pinged node fails twice: it is bad and the newcomer takes its place.
        for _ in 0..MAX_FAILURES {
            t.failed(later, &far[0]);
        }
        assert!(t.get(&far[0]).is_none());
        assert!(t.get(&newcomer.id).is_some());
    }

    #[test]
    fn claims_are_not_trusted() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let own = NodeId::random(&mut rng);
        let mut t = RoutingTable::new(own);
        let now = Instant::now();
        // A node that only queried us is no table entry.
        let q = public(NodeId::random(&mut rng), 1);
        assert_eq!(t.insert(now, q, Seen::Queried), Insert::Replacement);
        assert!(t.get(&q.id).is_none());
        // One public address, many ids: one entry.
        assert_eq!(
            t.insert(now, public(NodeId::random(&mut rng), 9), Seen::Responded),
            Insert::Added
        );
        for _ in 0..10 {
            let sybil = public(NodeId::random(&mut rng), 9);
            assert_eq!(t.insert(now, sybil, Seen::Responded), Insert::Refused);
        }
        // Loopback is exempt (test networks), private too.
        for p in 1..=3 {
            let n = CompactNode {
                id: NodeId::random(&mut rng),
                addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7000 + p),
            };
            assert_eq!(t.insert(now, n, Seen::Responded), Insert::Added);
        }
        // Our own id, port 0, a multicast address, and a known id from a new address.
        assert_eq!(t.insert(now, public(own, 20), Seen::Responded), Insert::Refused);
        let mut zero = public(NodeId::random(&mut rng), 21);
        zero.addr.set_port(0);
        assert_eq!(t.insert(now, zero, Seen::Responded), Insert::Refused);
        let multi = CompactNode {
            id: NodeId::random(&mut rng),
            addr: SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 1), 1),
        };
        assert_eq!(t.insert(now, multi, Seen::Responded), Insert::Refused);
        let known = t.closest(&own, 1)[0];
        let moved =
            CompactNode { id: known.id, addr: SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 1) };
        assert_eq!(t.insert(now, moved, Seen::Responded), Insert::Refused);
        assert_eq!(t.get(&known.id).unwrap().addr, known.addr);
    }

    #[test]
    fn a_verified_id_replaces_an_unverified_one_in_a_full_bucket() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let own = NodeId::random(&mut rng);
        let mut t = RoutingTable::new(own);
        let now = Instant::now();
        // Fill bucket D, the first of K nodes, with public nodes whose ids their addresses do
        // not allow, and split past it so that it cannot split again.
        const D: usize = 4;
        let mut unverified = Vec::new();
        for i in 0..K as u8 {
            let n = public(at_prefix(own, D, &mut rng), 10 + i);
            assert!(!n.id.is_valid_for(*n.addr.ip()));
            t.insert(now, n, Seen::Responded);
            unverified.push(n.id);
        }
        while t.num_buckets() < D + 2 {
            let id = at_prefix(own, D + 1, &mut rng);
            t.insert(now, node(id, 1, rng.random_range(2000..3000)), Seen::Responded);
        }
        // A public node with a BEP 42 id in bucket D's range gets in.
        // (An address allows 8 id prefixes: addresses are tried until one fits bucket D.)
        let (ip, verified) = loop {
            let ip = Ipv4Addr::new(80, 9, rng.random(), rng.random());
            let id = NodeId::for_ip(ip, &mut rng);
            if own.common_prefix_len(&id) as usize == D {
                break (ip, id);
            }
        };
        let n = CompactNode { id: verified, addr: SocketAddrV4::new(ip, 6881) };
        assert_eq!(t.insert(now, n, Seen::Responded), Insert::Added);
        assert!(t.get(&verified).is_some());
        assert_eq!(unverified.iter().filter(|id| t.get(id).is_some()).count(), K - 1);
    }

    #[test]
    fn stays_bounded_under_a_flood_of_ids() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let own = NodeId::random(&mut rng);
        let mut t = RoutingTable::new(own);
        let now = Instant::now();
        for i in 0..100_000u32 {
            let id = NodeId::random(&mut rng);
            let addr =
                SocketAddrV4::new(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8), 1);
            t.insert(
                now,
                CompactNode { id, addr },
                if i % 2 == 0 { Seen::Responded } else { Seen::Queried },
            );
        }
        assert!(t.num_buckets() <= 160);
        for (i, b) in t.buckets.iter().enumerate() {
            assert!(b.nodes.len() <= t.capacity(i) && b.replacements.len() <= K);
        }
        // 50,000 random ids that answered: about log2(50,000 / 8) ≈ 13 buckets, all full.
        assert!((10..=20).contains(&t.num_buckets()), "{} buckets", t.num_buckets());
        assert!(t.len() >= (t.num_buckets() - 2) * K, "{} nodes", t.len());
    }

    #[test]
    fn stale_buckets_name_ids_inside_them() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let own = NodeId::random(&mut rng);
        let mut t = RoutingTable::new(own);
        let t0 = Instant::now();
        for i in 0..40u16 {
            t.insert(t0, node(NodeId::random(&mut rng), 1, 100 + i), Seen::Responded);
        }
        assert!(t.stale_buckets(t0, GOOD_FOR, NodeId::random(&mut rng)).is_empty());
        let later = t0 + GOOD_FOR;
        let ids = t.stale_buckets(later, GOOD_FOR, NodeId::random(&mut rng));
        assert_eq!(ids.len(), t.num_buckets());
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(t.index(id), i, "a refresh target outside its bucket");
        }
    }

    #[test]
    fn an_ipv6_table_keeps_one_entry_per_public_64_and_ipv4_entries_stay_small() {
        // The simulator's memory depends on it (a million tables).
        assert_eq!(std::mem::size_of::<Entry>(), 36);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let own = NodeId::random(&mut rng);
        let mut t: RoutingTable<SocketAddrV6> = RoutingTable::new(own);
        let now = Instant::now();
        let at = |s: &str| CompactNode {
            id: NodeId::random(&mut ChaCha8Rng::from_os_rng()),
            addr: s.parse::<SocketAddrV6>().unwrap(),
        };
        assert_eq!(t.insert(now, at("[2001:db8:1:2::1]:6881"), Seen::Responded), Insert::Added);
        // Another address of the same /64, with another id: one host, refused.
        assert_eq!(t.insert(now, at("[2001:db8:1:2::99]:6881"), Seen::Responded), Insert::Refused);
        assert_eq!(t.insert(now, at("[2001:db8:1:3::1]:6881"), Seen::Responded), Insert::Added);
        // Loopback and unique-local addresses are exempt (test networks), multicast unusable.
        for i in 0..4 {
            assert_eq!(
                t.insert(now, at(&format!("[::1]:{}", 7000 + i)), Seen::Responded),
                Insert::Added
            );
            assert_eq!(
                t.insert(now, at(&format!("[fd00::{}]:1", i + 1)), Seen::Responded),
                Insert::Added
            );
        }
        assert_eq!(t.insert(now, at("[ff02::1]:6881"), Seen::Responded), Insert::Refused);
        assert_eq!(t.len(), 10);
        assert!(t.closest(&own, 100).iter().all(|n| n.addr.port() != 0));
    }
}
