//! Chat history in SQLite (rusqlite, bundled, WAL): every verified envelope the node delivered,
//! keyed by message id, so duplicates are ignored, history survives restarts, and neighbors can
//! be served what they missed. Also the nickname claims and the peers to re-join through.
//!
//! A message is committed here before it is shown (or reported as sent).
//!
//! Timestamps are the author's claim: each is stored clamped to at most the local receive time
//! plus [`MAX_CLOCK_SKEW_MS`] ([`clamp_sent_ms`]), so a message dated in the far future neither
//! sorts after everything forever nor wins a "latest" comparison.
//!
//! Nicknames are trust-on-first-use, like ssh's `known_hosts`: every (nick, key) pair ever
//! claimed is kept with the time this node first saw it ([`Store::claim_nick`]), and a nick
//! claimed by several keys is reported as such ([`Store::claimants`]) instead of going to
//! whichever claimed it last. The claims are bounded: at most [`MAX_NICKS_PER_AUTHOR`] per key
//! (its most recent ones) and [`MAX_NICK_CLAIMS`] in all (when full, the claims heard from
//! least recently go first).

use std::net::SocketAddr;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::envelope::{Content, Verified};
use crate::identity::NodeId;
use crate::proto::node::TopicId;
use crate::proto::plumtree::MessageId;

/// A stored message as shown to a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Message id.
    pub id: MessageId,
    /// Author.
    pub author: NodeId,
    /// Author's timestamp.
    pub sent_ms: u64,
    /// The encoded envelope.
    pub raw: Vec<u8>,
}

/// Errors from the history database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (disk full, corrupt file, locked by another process).
    #[error("chat history database: {0} (is another swarmcast using the same --data directory?)")]
    Sqlite(#[from] rusqlite::Error),
}

/// The history database of one node.
pub struct Store {
    db: Connection,
    limits: Limits,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS messages (
    id BLOB PRIMARY KEY,
    topic BLOB NOT NULL,
    author BLOB NOT NULL,
    sent_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    raw BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_topic_time ON messages (topic, sent_ms);
DROP TABLE IF EXISTS nicks;
CREATE TABLE IF NOT EXISTS nick_claims (
    nick TEXT NOT NULL,
    author BLOB NOT NULL,
    first_ms INTEGER NOT NULL,
    sent_ms INTEGER NOT NULL,
    seen_ms INTEGER NOT NULL,
    PRIMARY KEY (nick, author)
);
CREATE INDEX IF NOT EXISTS nick_claims_author ON nick_claims (author, sent_ms);
CREATE INDEX IF NOT EXISTS nick_claims_seen ON nick_claims (seen_ms);
CREATE TABLE IF NOT EXISTS peers (
    id BLOB PRIMARY KEY,
    addr TEXT NOT NULL,
    seen_ms INTEGER NOT NULL
);
";

/// How far in the future (past the receive time) an author's timestamp is believed.
pub const MAX_CLOCK_SKEW_MS: u64 = 2 * 60 * 1000;
/// Most nicknames remembered per key (its latest claims).
pub const MAX_NICKS_PER_AUTHOR: usize = 8;
/// Most (nick, key) claims remembered in all.
pub const MAX_NICK_CLAIMS: usize = 10_000;

/// An author's timestamp as this node believes it: at most `received_ms` plus
/// [`MAX_CLOCK_SKEW_MS`], and within SQLite's signed 64-bit integers.
pub fn clamp_sent_ms(sent_ms: u64, received_ms: u64) -> u64 {
    sent_ms.min(received_ms.saturating_add(MAX_CLOCK_SKEW_MS)).min(i64::MAX as u64)
}

/// The bounds of what the store keeps from the network (the defaults are the constants).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most nicknames remembered per key.
    pub nicks_per_author: usize,
    /// Most (nick, key) claims in all.
    pub nick_claims: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { nicks_per_author: MAX_NICKS_PER_AUTHOR, nick_claims: MAX_NICK_CLAIMS }
    }
}

/// A key that claims a nickname, as [`Store::claimants`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimant {
    /// The key.
    pub author: NodeId,
    /// When this node first saw the key use the nick (local clock, ms).
    pub first_ms: u64,
}

fn blob32(v: Vec<u8>) -> rusqlite::Result<[u8; 32]> {
    v.as_slice().try_into().map_err(|_| rusqlite::Error::InvalidQuery)
}

impl Store {
    /// Opens (creating) `dir/chat.sqlite` with the default [`Limits`].
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, Limits::default())
    }

    /// Opens (creating) `dir/chat.sqlite`, keeping within `limits`.
    pub fn open_with(dir: &Path, limits: Limits) -> Result<Self, StoreError> {
        let db = Connection::open(dir.join("chat.sqlite"))?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(SCHEMA)?;
        Ok(Self { db, limits })
    }

    /// Commits a verified message (and the nickname it claims, see [`Store::claim_nick`]);
    /// returns false if it was already stored (a duplicate).
    pub fn insert(&self, v: &Verified, received_ms: u64) -> Result<bool, StoreError> {
        let c = &v.content;
        let sent_ms = clamp_sent_ms(c.sent_ms(), received_ms);
        let n = self.db.execute(
            "INSERT OR IGNORE INTO messages (id, topic, author, sent_ms, received_ms, raw)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                &v.id.0[..],
                &c.topic().0[..],
                &c.author().0[..],
                sent_ms as i64,
                received_ms as i64,
                &v.raw
            ],
        )?;
        if n == 1 {
            if let Content::Presence { author, nick, .. } | Content::Room { author, nick, .. } = c {
                self.claim_nick(author, nick, sent_ms, received_ms)?;
            }
        }
        Ok(n == 1)
    }

    /// Records that `author` calls itself `nick` (at its clamped time `sent_ms`, heard at
    /// `received_ms`); the first time this pair is seen is kept. Then trims the claims to the
    /// bounds in the module docs.
    pub fn claim_nick(
        &self,
        author: &NodeId,
        nick: &str,
        sent_ms: u64,
        received_ms: u64,
    ) -> Result<(), StoreError> {
        let sent_ms = clamp_sent_ms(sent_ms, received_ms);
        self.db.execute(
            "INSERT INTO nick_claims (nick, author, first_ms, sent_ms, seen_ms)
             VALUES (?1, ?2, ?3, ?4, ?3)
             ON CONFLICT(nick, author) DO UPDATE SET
                 sent_ms = max(nick_claims.sent_ms, excluded.sent_ms),
                 seen_ms = max(nick_claims.seen_ms, excluded.seen_ms)",
            params![nick, &author.0[..], received_ms as i64, sent_ms as i64],
        )?;
        self.db.execute(
            "DELETE FROM nick_claims WHERE author = ?1 AND nick NOT IN (
                 SELECT nick FROM nick_claims WHERE author = ?1
                 ORDER BY sent_ms DESC, seen_ms DESC LIMIT ?2)",
            params![&author.0[..], self.limits.nicks_per_author as i64],
        )?;
        self.db.execute(
            "DELETE FROM nick_claims WHERE rowid IN (
                 SELECT rowid FROM nick_claims ORDER BY seen_ms ASC
                 LIMIT max(0, (SELECT count(*) FROM nick_claims) - ?1))",
            params![self.limits.nick_claims as i64],
        )?;
        Ok(())
    }

    /// Whether a message is stored.
    pub fn contains(&self, id: &MessageId) -> Result<bool, StoreError> {
        let found: Option<i64> = self
            .db
            .query_row("SELECT 1 FROM messages WHERE id = ?1", [&id.0[..]], |r| r.get(0))
            .optional()?;
        Ok(found.is_some())
    }

    /// The last `limit` messages of `topic`, oldest first.
    pub fn recent(&self, topic: &TopicId, limit: usize) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.db.prepare(
            "SELECT id, author, sent_ms, raw FROM (
                 SELECT id, author, sent_ms, raw FROM messages WHERE topic = ?1
                 ORDER BY sent_ms DESC, id DESC LIMIT ?2)
             ORDER BY sent_ms ASC, id ASC",
        )?;
        let rows = stmt.query_map(params![&topic.0[..], limit as i64], |r| {
            Ok(Row {
                id: MessageId(blob32(r.get(0)?)?),
                author: NodeId(blob32(r.get(1)?)?),
                sent_ms: r.get::<_, i64>(2)? as u64,
                raw: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Messages of `topic` sent at or after `since_ms` (oldest first), at most `limit`, skipping
    /// ids in `have`.
    pub fn since(
        &self,
        topic: &TopicId,
        since_ms: u64,
        have: &std::collections::BTreeSet<MessageId>,
        limit: usize,
    ) -> Result<(Vec<Vec<u8>>, bool), StoreError> {
        let mut stmt = self.db.prepare(
            "SELECT id, raw FROM messages WHERE topic = ?1 AND sent_ms >= ?2
             ORDER BY sent_ms ASC, id ASC",
        )?;
        let mut rows = stmt.query(params![&topic.0[..], since_ms as i64])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let id = MessageId(blob32(r.get(0)?)?);
            if have.contains(&id) {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(r.get(1)?);
        }
        Ok((out, false))
    }

    /// The latest nickname of `author` (by its clamped timestamps), if known.
    pub fn nick(&self, author: &NodeId) -> Result<Option<String>, StoreError> {
        Ok(self
            .db
            .query_row(
                "SELECT nick FROM nick_claims WHERE author = ?1
                 ORDER BY sent_ms DESC, seen_ms DESC LIMIT 1",
                [&author.0[..]],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Every key that has claimed `nick`, the first seen first (that one is the key trusted on
    /// first use; more than one means someone else claims the name too).
    pub fn claimants(&self, nick: &str) -> Result<Vec<Claimant>, StoreError> {
        let mut stmt = self.db.prepare(
            "SELECT author, first_ms FROM nick_claims WHERE nick = ?1
             ORDER BY first_ms ASC, author ASC",
        )?;
        let rows = stmt.query_map([nick], |r| {
            Ok(Claimant {
                author: NodeId(blob32(r.get(0)?)?),
                first_ms: r.get::<_, i64>(1)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Keys with a nickname claim whose lowercase hex id starts with `prefix`.
    pub fn authors_with_prefix(&self, prefix: &str) -> Result<Vec<NodeId>, StoreError> {
        let mut stmt = self.db.prepare(
            "SELECT DISTINCT author FROM nick_claims WHERE substr(lower(hex(author)), 1, ?2) = ?1",
        )?;
        let prefix = prefix.to_ascii_lowercase();
        let rows = stmt
            .query_map(params![prefix, prefix.len() as i64], |r| Ok(NodeId(blob32(r.get(0)?)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Remembers a peer to re-join through after a restart.
    pub fn remember_peer(
        &self,
        id: &NodeId,
        addr: SocketAddr,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.db.execute(
            "INSERT INTO peers (id, addr, seen_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET addr = excluded.addr, seen_ms = excluded.seen_ms",
            params![&id.0[..], addr.to_string(), now_ms as i64],
        )?;
        self.db.execute(
            "DELETE FROM peers WHERE id NOT IN (SELECT id FROM peers ORDER BY seen_ms DESC LIMIT 64)",
            [],
        )?;
        Ok(())
    }

    /// Peers remembered from earlier runs, most recently seen first.
    pub fn peers(&self) -> Result<Vec<(NodeId, SocketAddr)>, StoreError> {
        let mut stmt = self.db.prepare("SELECT id, addr FROM peers ORDER BY seen_ms DESC")?;
        let rows = stmt.query_map([], |r| Ok((blob32(r.get(0)?)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, addr) = row?;
            // A row that does not parse is skipped, not fatal.
            if let Ok(addr) = addr.parse() {
                out.push((NodeId(id), addr));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use sha2::{Digest, Sha256};

    use super::*;
    use crate::chat::envelope::{room_topic, seal};
    use crate::identity::Identity;

    #[test]
    fn messages_persist_dedupe_and_are_served_since() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ann = Identity::generate(&mut ChaCha8Rng::seed_from_u64(1));
        let msgs: Vec<Verified> = (0..5u64)
            .map(|i| {
                let content = Content::Room {
                    author: ann.id(),
                    nick: "ann".into(),
                    room: "general".into(),
                    sent_ms: 100 + i,
                    nonce: i,
                    text: format!("m{i}"),
                };
                seal(&ann, content)
            })
            .collect();
        {
            let store = Store::open(dir.path()).expect("open");
            for m in &msgs {
                assert!(store.insert(m, 1).expect("insert"));
            }
            assert!(!store.insert(&msgs[0], 2).expect("insert"), "duplicate stored twice");
        }
        let store = Store::open(dir.path()).expect("reopen");
        let topic = room_topic("general");
        let recent = store.recent(&topic, 3).expect("recent");
        let ids: Vec<MessageId> = recent.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![msgs[2].id, msgs[3].id, msgs[4].id]);
        let have: BTreeSet<MessageId> = [msgs[2].id].into();
        let (raws, more) = store.since(&topic, 101, &have, 2).expect("since");
        assert_eq!(raws, vec![msgs[1].raw.clone(), msgs[3].raw.clone()]);
        assert!(more);
        assert_eq!(store.nick(&ann.id()).expect("nick"), Some("ann".into()));
        let claimants = store.claimants("ann").expect("claimants");
        assert_eq!(claimants, vec![Claimant { author: ann.id(), first_ms: 1 }]);
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        store.remember_peer(&ann.id(), addr, 5).expect("remember");
        assert_eq!(store.peers().expect("peers"), vec![(ann.id(), addr)]);
    }

    fn presence(who: &Identity, nick: &str, sent_ms: u64) -> Verified {
        seal(who, Content::Presence { author: who.id(), nick: nick.into(), sent_ms })
    }

    /// Issue 9 item 13: a later key with a far-future timestamp used to take over a nick.
    #[test]
    fn a_nick_stays_with_its_first_key_and_a_second_claim_is_visible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let bob = Identity::generate(&mut ChaCha8Rng::seed_from_u64(1));
        let eve = Identity::generate(&mut ChaCha8Rng::seed_from_u64(2));
        store.insert(&presence(&bob, "bob", 1_000), 1_000).expect("insert");
        store.insert(&presence(&eve, "bob", i64::MAX as u64), 2_000).expect("insert");
        store.insert(&presence(&eve, "bob", u64::MAX), 3_000).expect("insert");
        let claimants = store.claimants("bob").expect("claimants");
        let keys: Vec<NodeId> = claimants.iter().map(|c| c.author).collect();
        assert_eq!(keys, vec![bob.id(), eve.id()], "first seen first");
        // Eve's timestamps count for at most receive time + skew.
        let topic = crate::chat::envelope::directory_topic();
        let latest = store.recent(&topic, 1).expect("recent");
        assert_eq!(latest[0].sent_ms, 3_000 + MAX_CLOCK_SKEW_MS);
        // Bob renaming himself does not hand "bob" to eve.
        store.insert(&presence(&bob, "robert", 5_000), 5_000).expect("insert");
        assert_eq!(store.nick(&bob.id()).expect("nick"), Some("robert".into()));
        assert_eq!(store.claimants("bob").expect("claimants")[0].author, bob.id());
        let prefix = &bob.id().to_string()[..10];
        assert_eq!(store.authors_with_prefix(prefix).expect("prefix"), vec![bob.id()]);
    }

    #[test]
    fn nick_claims_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = Limits { nicks_per_author: 8, nick_claims: 100 };
        let store = Store::open_with(dir.path(), limits.clone()).expect("open");
        let eve = Identity::generate(&mut ChaCha8Rng::seed_from_u64(2));
        for i in 0..3 * limits.nicks_per_author as u64 {
            store.claim_nick(&eve.id(), &format!("n{i}"), i, i).expect("claim");
        }
        let count: i64 = store
            .db
            .query_row("SELECT count(*) FROM nick_claims", [], |r| r.get(0))
            .expect("count");
        assert_eq!(count as usize, limits.nicks_per_author);
        let latest = format!("n{}", 3 * limits.nicks_per_author - 1);
        assert_eq!(store.nick(&eve.id()).expect("nick"), Some(latest));
        for i in 0..limits.nick_claims as u64 + 10 {
            let id = NodeId(Sha256::digest(i.to_le_bytes()).into());
            store.claim_nick(&id, "x", i, 100 + i).expect("claim");
        }
        let count: i64 = store
            .db
            .query_row("SELECT count(*) FROM nick_claims", [], |r| r.get(0))
            .expect("count");
        assert_eq!(count as usize, limits.nick_claims);
        // The least recently heard went first: eve's claims (heard at 0..24).
        assert_eq!(store.nick(&eve.id()).expect("nick"), None);
    }
}
