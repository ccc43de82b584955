//! The stream servers' body cache (sans-IO): least recently used entries are evicted once the
//! bytes held exceed the capacity. Deterministic (ordered maps). The edge wraps it with the
//! single-flight logic that makes concurrent misses of one segment cost one origin fetch; the
//! origin keeps small files in it, each with the instant it was read (the entry's metadata `M`).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

/// A byte-bounded LRU map from URL paths to bodies, each with metadata `M` of the owner's.
#[derive(Debug, Default)]
pub struct Lru<M = ()> {
    capacity: u64,
    size: u64,
    tick: u64,
    entries: HashMap<String, (Bytes, u64, M)>,
    by_age: BTreeMap<u64, String>,
    hits: u64,
    misses: u64,
    evictions: u64,
}

/// Counters of a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct CacheStats {
    /// Lookups that found the entry.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Entries evicted to make room.
    pub evictions: u64,
    /// Bytes held now.
    pub bytes: u64,
    /// Entries held now.
    pub entries: usize,
}

impl<M: Clone + Default> Lru<M> {
    /// An empty cache holding at most `capacity` bytes of bodies.
    pub fn new(capacity: u64) -> Self {
        Self { capacity, ..Default::default() }
    }

    /// The body for `key`, marking it most recently used.
    pub fn get(&mut self, key: &str) -> Option<Bytes> {
        self.get_with(key).map(|(body, _)| body)
    }

    /// The body for `key` and its metadata, marking it most recently used.
    pub fn get_with(&mut self, key: &str) -> Option<(Bytes, M)> {
        let tick = self.next_tick();
        match self.entries.get_mut(key) {
            Some((body, age, meta)) => {
                self.by_age.remove(age);
                *age = tick;
                self.by_age.insert(tick, key.to_string());
                self.hits += 1;
                Some((body.clone(), meta.clone()))
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Stores `body` under `key` and evicts the least recently used entries beyond capacity.
    /// A body larger than the whole capacity is not stored.
    pub fn insert(&mut self, key: String, body: Bytes) {
        self.insert_with(key, body, M::default());
    }

    /// [`insert`](Self::insert) with metadata.
    pub fn insert_with(&mut self, key: String, body: Bytes, meta: M) {
        let len = body.len() as u64;
        if len > self.capacity {
            return;
        }
        self.remove(&key);
        let tick = self.next_tick();
        self.by_age.insert(tick, key.clone());
        self.entries.insert(key, (body, tick, meta));
        self.size += len;
        while self.size > self.capacity {
            let Some((_, oldest)) = self.by_age.pop_first() else { break };
            if let Some((b, ..)) = self.entries.remove(&oldest) {
                self.size -= b.len() as u64;
                self.evictions += 1;
            }
        }
    }

    /// Drops `key` if present.
    pub fn remove(&mut self, key: &str) {
        if let Some((b, age, _)) = self.entries.remove(key) {
            self.by_age.remove(&age);
            self.size -= b.len() as u64;
        }
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits,
            misses: self.misses,
            evictions: self.evictions,
            bytes: self.size,
            entries: self.entries.len(),
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(n: usize) -> Bytes {
        Bytes::from(vec![7u8; n])
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let mut c: Lru = Lru::new(300);
        c.insert("a".into(), body(100));
        c.insert("b".into(), body(100));
        c.insert("c".into(), body(100));
        assert!(c.get("a").is_some(), "a is now the most recent");
        c.insert("d".into(), body(100));
        assert!(c.get("b").is_none(), "b was the least recently used");
        assert!(c.get("a").is_some() && c.get("c").is_some() && c.get("d").is_some());
        let s = c.stats();
        assert_eq!((s.bytes, s.entries, s.evictions), (300, 3, 1));
        assert_eq!((s.hits, s.misses), (4, 1));
    }

    #[test]
    fn replacing_and_oversized_bodies_keep_the_byte_count_exact() {
        let mut c: Lru = Lru::new(250);
        c.insert("a".into(), body(100));
        c.insert("a".into(), body(200));
        assert_eq!(c.stats().bytes, 200);
        c.insert("huge".into(), body(251));
        assert!(c.get("huge").is_none());
        c.insert("b".into(), body(100));
        assert_eq!((c.stats().bytes, c.stats().entries), (100, 1), "a (200) made room for b");
        c.remove("b");
        assert_eq!(c.stats().bytes, 0);
    }
}
