//! The simulators' event queue: a calendar of ~1 ms buckets.
//!
//! Both simulators ([`crate::overlay`] and [`crate::swarm`]) pop events in (time, sequence)
//! order, so ties resolve in insertion order and a run is reproducible. A binary heap of 10^6+
//! events spent most of a run in cache misses (23% of the overlay simulator's CPU, 33% of the
//! swarm simulator's at 2,000 peers); the calendar pushes and pops in constant time and touches
//! little memory, and pops in exactly the order a binary heap would.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A queued event: ordered by (time, sequence) and able to say its time.
pub(crate) trait Timed: Ord {
    /// Virtual time in nanoseconds.
    fn at(&self) -> u64;
}

/// log2 of a calendar bucket's width in nanoseconds (~1 ms).
const BUCKET_SHIFT: u32 = 20;
/// Buckets in the calendar ring (~69 s ahead); later events wait in a heap.
const RING: usize = 1 << 16;

/// The event queue: a ring of ~1 ms buckets, each sorted when its turn comes; events more than
/// the ring's span ahead wait in a heap.
pub(crate) struct Calendar<E> {
    /// Bucket `b` (for times in `[b, b + 1) << BUCKET_SHIFT`) lives at `ring[b % RING]`.
    ring: Vec<Vec<E>>,
    /// Entries in `ring`.
    in_ring: usize,
    /// Entries that were `RING` or more buckets ahead when queued.
    far: BinaryHeap<Reverse<E>>,
    /// The bucket being popped; never ahead of the simulator's `now`, so every push lands in
    /// it or later.
    cursor: u64,
    /// The cursor bucket's entries, sorted latest first (popped from the back).
    current: Vec<E>,
}

impl<E: Timed> Calendar<E> {
    pub(crate) fn new() -> Self {
        Self {
            ring: (0..RING).map(|_| Vec::new()).collect(),
            in_ring: 0,
            far: BinaryHeap::new(),
            cursor: 0,
            current: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.current.len() + self.in_ring + self.far.len()
    }

    /// Queues `e`, which must not be earlier than the last entry popped.
    pub(crate) fn push(&mut self, e: E) {
        let bucket = e.at() >> BUCKET_SHIFT;
        debug_assert!(bucket >= self.cursor, "an event in the past");
        if bucket <= self.cursor {
            let i = self.current.partition_point(|x| *x > e);
            self.current.insert(i, e);
        } else if bucket - self.cursor < RING as u64 {
            self.ring[bucket as usize % RING].push(e);
            self.in_ring += 1;
        } else {
            self.far.push(Reverse(e));
        }
    }

    /// Removes and returns the earliest entry if it is due at or before `end`.
    pub(crate) fn pop_until(&mut self, end: u64) -> Option<E> {
        let last = end >> BUCKET_SHIFT;
        loop {
            if let Some(e) = self.current.last() {
                return if e.at() <= end { self.current.pop() } else { None };
            }
            // The cursor bucket is done: move to the next one that holds something, but not
            // past `end`'s bucket (the simulator's clock stops at `end`).
            if self.in_ring == 0 {
                let next = self.far.peek()?.0.at() >> BUCKET_SHIFT;
                if next > last {
                    return None;
                }
                self.cursor = self.cursor.max(next);
            } else {
                if self.cursor >= last {
                    return None;
                }
                self.cursor += 1;
            }
            // Frees the finished bucket's buffer: a ring of kept buffers would hold every
            // bucket's busiest size.
            self.current = std::mem::take(&mut self.ring[self.cursor as usize % RING]);
            self.in_ring -= self.current.len();
            while self.far.peek().is_some_and(|Reverse(e)| e.at() >> BUCKET_SHIFT <= self.cursor) {
                let Reverse(e) = self.far.pop().expect("peeked");
                self.current.push(e);
            }
            self.current.sort_unstable_by(|a, b| b.cmp(a));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    struct Entry {
        at: u64,
        seq: u64,
    }

    impl Timed for Entry {
        fn at(&self) -> u64 {
            self.at
        }
    }

    /// The calendar pops what a binary heap of (time, sequence) would, with pushes into the
    /// bucket being popped, the ring and beyond it, also while popping.
    #[test]
    fn the_calendar_pops_in_time_then_insertion_order() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (mut queue, mut heap) = (Calendar::new(), BinaryHeap::new());
        let (mut now, mut seq) = (0u64, 0u64);
        let mut push =
            |queue: &mut Calendar<Entry>, heap: &mut BinaryHeap<_>, rng: &mut ChaCha8Rng, now| {
                let ahead = match rng.random_range(0..5) {
                    0 => 0,
                    1 => rng.random_range(0..1u64 << BUCKET_SHIFT),
                    2 => rng.random_range(0..200_000_000),
                    3 => rng.random_range(0..10_000_000_000),
                    _ => rng.random_range(0..200_000_000_000),
                };
                seq += 1;
                let e = Entry { at: now + ahead, seq };
                queue.push(e);
                heap.push(Reverse(e));
            };
        let mut popped = 0;
        for _ in 0..3000 {
            for _ in 0..rng.random_range(0..6) {
                push(&mut queue, &mut heap, &mut rng, now);
            }
            let end = now + rng.random_range(0..300_000_000);
            while let Some(e) = queue.pop_until(end) {
                assert_eq!(Some(Reverse(e)), heap.pop());
                now = e.at;
                popped += 1;
                if rng.random_bool(0.3) {
                    push(&mut queue, &mut heap, &mut rng, now);
                }
            }
            assert!(heap.peek().is_none_or(|Reverse(e)| e.at > end));
            assert_eq!(queue.len(), heap.len());
            now = end;
        }
        while let Some(e) = queue.pop_until(u64::MAX) {
            assert_eq!(Some(Reverse(e)), heap.pop());
            popped += 1;
        }
        assert!(heap.is_empty());
        assert!(popped > 5000, "{popped}");
    }
}
