//! Chat history in SQLite (rusqlite, bundled, WAL): the verified envelopes the node keeps,
//! keyed by message id, so duplicates are ignored, history survives restarts, and neighbors can
//! be served what they missed. Also the nickname claims and the peers to re-join through.
//!
//! A message is committed here before it is shown (or reported as sent). The node's own
//! messages are committed with `synchronous = FULL` (the WAL is synced before the insert
//! returns), so a power cut cannot lose one that was reported as sent; everything else with
//! `NORMAL` (a power cut may lose the last received ones, which neighbors serve again).
//!
//! What is kept, and the bounds (see [`Limits`]; the service only hands over the rooms it
//! follows and the directory topic):
//! - The node's own messages (rooms, direct messages): always, never evicted.
//! - Room messages of others: per room the newest [`Limits::room_messages`], and per author
//!   and room the newest [`Limits::author_messages`]; beyond either the oldest received go.
//! - Presence: the latest per author, at most [`Limits::presences`] (least recently received
//!   go first).
//! - Direct messages to this node: an inbox bounded like one room.
//! - Sealed direct messages between others, kept only to pass on to a recipient who was
//!   offline (store and forward): per recipient the newest [`Limits::relay_per_recipient`], in
//!   all [`Limits::relay_messages`], each for [`Limits::relay_ttl_ms`] after it arrived.
//!
//! A database from before these bounds (no `kind` column) is migrated on open: every stored
//! envelope is verified again and re-filed, trimmed to the bounds.
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

use super::envelope::{self, Content, Verified};
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
    /// This node: its messages are kept for good, direct messages to it are its inbox.
    me: NodeId,
    limits: Limits,
}

/// `messages.kind`: what a stored envelope is.
const KIND_ROOM: i64 = 0;
const KIND_PRESENCE: i64 = 1;
const KIND_DIRECT: i64 = 2;

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS messages (
    id BLOB PRIMARY KEY,
    topic BLOB NOT NULL,
    author BLOB NOT NULL,
    sent_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    raw BLOB NOT NULL,
    kind INTEGER NOT NULL,
    mine INTEGER NOT NULL,
    recipient BLOB
);
CREATE INDEX IF NOT EXISTS messages2_topic_time ON messages (topic, sent_ms);
CREATE INDEX IF NOT EXISTS messages2_kind_topic ON messages (kind, mine, topic);
CREATE INDEX IF NOT EXISTS messages2_kind_author ON messages (kind, mine, topic, author);
CREATE INDEX IF NOT EXISTS messages2_recipient ON messages (kind, mine, recipient);
CREATE INDEX IF NOT EXISTS messages2_received ON messages (kind, mine, received_ms);
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

/// The bounds of what the store keeps from the network (see the module docs for the policy).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most nicknames remembered per key (default [`MAX_NICKS_PER_AUTHOR`]).
    pub nicks_per_author: usize,
    /// Most (nick, key) claims in all (default [`MAX_NICK_CLAIMS`]).
    pub nick_claims: usize,
    /// Most messages of others kept per room, and in the inbox of direct messages to this node
    /// (default 5,000: at most about 20 MB per room at the envelope cap).
    pub room_messages: usize,
    /// Most messages kept per author and room, and per author in the inbox (default 1,000).
    pub author_messages: usize,
    /// Most presence announcements of others (one per author; default 10,000).
    pub presences: usize,
    /// Most sealed direct messages kept for one other recipient (default 64).
    pub relay_per_recipient: usize,
    /// Most sealed direct messages kept for other recipients in all (default 4,096: about
    /// 16 MB at the envelope cap).
    pub relay_messages: usize,
    /// How long a sealed direct message for another recipient is kept (default 7 days).
    pub relay_ttl_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            nicks_per_author: MAX_NICKS_PER_AUTHOR,
            nick_claims: MAX_NICK_CLAIMS,
            room_messages: 5_000,
            author_messages: 1_000,
            presences: 10_000,
            relay_per_recipient: 64,
            relay_messages: 4_096,
            relay_ttl_ms: 7 * 24 * 3600 * 1000,
        }
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
    /// Opens (creating) `dir/chat.sqlite` for node `me` with the default [`Limits`].
    pub fn open(dir: &Path, me: NodeId) -> Result<Self, StoreError> {
        Self::open_with(dir, me, Limits::default())
    }

    /// Opens (creating) `dir/chat.sqlite` for node `me`, keeping within `limits`.
    pub fn open_with(dir: &Path, me: NodeId, limits: Limits) -> Result<Self, StoreError> {
        let db = Connection::open(dir.join("chat.sqlite"))?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        // A database from before the bounds: set its table aside, re-file it below.
        let old = db.prepare("SELECT raw FROM messages LIMIT 0").is_ok()
            && db.prepare("SELECT kind FROM messages LIMIT 0").is_err();
        if old {
            db.execute_batch(
                "DROP TABLE IF EXISTS messages_v1;
                 ALTER TABLE messages RENAME TO messages_v1;
                 DROP INDEX IF EXISTS messages_topic_time;",
            )?;
        }
        db.execute_batch(SCHEMA)?;
        let store = Self { db, me, limits };
        if old {
            store.migrate()?;
        }
        Ok(store)
    }

    /// Re-files every envelope of the old table through [`Store::insert`], then drops it.
    fn migrate(&self) -> Result<(), StoreError> {
        let rows: Vec<([u8; 32], Vec<u8>, u64)> = {
            let mut stmt = self
                .db
                .prepare("SELECT topic, raw, received_ms FROM messages_v1 ORDER BY rowid")?;
            let rows = stmt.query_map([], |r| {
                Ok((blob32(r.get(0)?)?, r.get(1)?, r.get::<_, i64>(2)?.max(0) as u64))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        for (topic, raw, received_ms) in rows {
            // Whatever no longer verifies (or is not canonical) is left behind.
            if let Ok(v) = envelope::open(TopicId(topic), &raw) {
                self.insert(&v, received_ms)?;
            }
        }
        self.db.execute_batch("DROP TABLE messages_v1;")?;
        Ok(())
    }

    /// Commits a verified message (and the nickname it claims, see [`Store::claim_nick`]), then
    /// trims its class to the bounds; returns false if it was already stored (a duplicate).
    /// The node's own messages are synced to disk before this returns.
    pub fn insert(&self, v: &Verified, received_ms: u64) -> Result<bool, StoreError> {
        let c = &v.content;
        let mine = c.author() == self.me;
        if !mine {
            return self.insert_row(v, received_ms);
        }
        self.db.pragma_update(None, "synchronous", "FULL")?;
        let inserted = self.insert_row(v, received_ms);
        self.db.pragma_update(None, "synchronous", "NORMAL")?;
        inserted
    }

    fn insert_row(&self, v: &Verified, received_ms: u64) -> Result<bool, StoreError> {
        let c = &v.content;
        let mine = c.author() == self.me;
        let sent_ms = clamp_sent_ms(c.sent_ms(), received_ms);
        let (kind, recipient) = match c {
            Content::Room { .. } => (KIND_ROOM, None),
            Content::Presence { .. } => (KIND_PRESENCE, None),
            Content::Direct { to, .. } => (KIND_DIRECT, Some(&to.0[..])),
        };
        let n = self.db.execute(
            "INSERT OR IGNORE INTO messages
                 (id, topic, author, sent_ms, received_ms, raw, kind, mine, recipient)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                &v.id.0[..],
                &c.topic().0[..],
                &c.author().0[..],
                sent_ms as i64,
                received_ms as i64,
                &v.raw,
                kind,
                mine,
                recipient
            ],
        )?;
        if n == 1 {
            if let Content::Presence { author, nick, .. } | Content::Room { author, nick, .. } = c {
                self.claim_nick(author, nick, sent_ms, received_ms)?;
            }
            self.trim(c, received_ms)?;
        }
        Ok(n == 1)
    }

    /// Deletes, among the rows matching `filter` (with `?1`..`?3` bound to `args`), all but the
    /// newest `keep` (by `order`, newest first).
    fn keep_newest(
        &self,
        filter: &str,
        order: &str,
        args: &[&dyn rusqlite::ToSql],
        keep: usize,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "DELETE FROM messages WHERE rowid IN (
                 SELECT rowid FROM messages WHERE {filter} ORDER BY {order} LIMIT -1 OFFSET {keep})"
        );
        self.db.execute(&sql, args)?;
        Ok(())
    }

    /// Applies the bounds of the class of `c` after it was inserted (see the module docs).
    fn trim(&self, c: &Content, now_ms: u64) -> Result<(), StoreError> {
        let l = &self.limits;
        let (topic, author) = (&c.topic().0[..], &c.author().0[..]);
        match c {
            Content::Room { .. } if c.author() != self.me => {
                let mut filter = format!("kind = {KIND_ROOM} AND mine = 0 AND topic = ?1");
                self.keep_newest(&filter, "rowid DESC", &[&topic], l.room_messages)?;
                filter.push_str(" AND author = ?2");
                self.keep_newest(&filter, "rowid DESC", &[&topic, &author], l.author_messages)?;
            }
            Content::Room { .. } => {}
            Content::Presence { .. } => {
                let filter = format!("kind = {KIND_PRESENCE} AND author = ?1");
                self.keep_newest(&filter, "sent_ms DESC, rowid DESC", &[&author], 1)?;
                let filter = format!("kind = {KIND_PRESENCE} AND mine = 0");
                self.keep_newest(&filter, "received_ms DESC, rowid DESC", &[], l.presences)?;
            }
            Content::Direct { to, .. } if *to == self.me && c.author() != self.me => {
                let me = &self.me.0[..];
                let mut filter = format!("kind = {KIND_DIRECT} AND mine = 0 AND recipient = ?1");
                self.keep_newest(&filter, "rowid DESC", &[&me], l.room_messages)?;
                filter.push_str(" AND author = ?2");
                self.keep_newest(&filter, "rowid DESC", &[&me, &author], l.author_messages)?;
            }
            Content::Direct { .. } if c.author() == self.me => {}
            Content::Direct { to, .. } => {
                self.expire_relayed(now_ms)?;
                let relay = format!("kind = {KIND_DIRECT} AND mine = 0 AND recipient != ?1");
                let me = &self.me.0[..];
                self.keep_newest(&relay, "rowid DESC", &[&me], l.relay_messages)?;
                let filter = format!("kind = {KIND_DIRECT} AND mine = 0 AND recipient = ?1");
                let to = &to.0[..];
                self.keep_newest(&filter, "rowid DESC", &[&to], l.relay_per_recipient)?;
            }
        }
        Ok(())
    }

    /// Forgets sealed direct messages for other recipients received more than
    /// [`Limits::relay_ttl_ms`] before `now_ms`.
    pub fn expire_relayed(&self, now_ms: u64) -> Result<(), StoreError> {
        let cutoff = now_ms.saturating_sub(self.limits.relay_ttl_ms).min(i64::MAX as u64);
        self.db.execute(
            "DELETE FROM messages WHERE kind = ?1 AND mine = 0 AND recipient != ?2
             AND received_ms < ?3",
            params![KIND_DIRECT, &self.me.0[..], cutoff as i64],
        )?;
        Ok(())
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
            let store = Store::open(dir.path(), me()).expect("open");
            for m in &msgs {
                assert!(store.insert(m, 1).expect("insert"));
            }
            assert!(!store.insert(&msgs[0], 2).expect("insert"), "duplicate stored twice");
        }
        let store = Store::open(dir.path(), me()).expect("reopen");
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

    /// The id of the node that owns the store in these tests (no message is its own).
    fn me() -> NodeId {
        NodeId([0x99; 32])
    }

    fn presence(who: &Identity, nick: &str, sent_ms: u64) -> Verified {
        seal(who, Content::Presence { author: who.id(), nick: nick.into(), sent_ms })
    }

    /// Issue 9 item 13: a later key with a far-future timestamp used to take over a nick.
    #[test]
    fn a_nick_stays_with_its_first_key_and_a_second_claim_is_visible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), me()).expect("open");
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
        let limits = Limits { nicks_per_author: 8, nick_claims: 100, ..Limits::default() };
        let store = Store::open_with(dir.path(), me(), limits.clone()).expect("open");
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

    fn count(store: &Store, filter: &str) -> usize {
        let sql = format!("SELECT count(*) FROM messages WHERE {filter}");
        store.db.query_row(&sql, [], |r| r.get::<_, i64>(0)).expect("count") as usize
    }

    fn said(who: &Identity, room: &str, i: u64) -> Verified {
        let content = Content::Room {
            author: who.id(),
            nick: "x".into(),
            room: room.into(),
            sent_ms: i,
            nonce: i,
            text: format!("m{i}"),
        };
        seal(who, content)
    }

    fn ident(seed: u64) -> Identity {
        Identity::generate(&mut ChaCha8Rng::seed_from_u64(seed))
    }

    /// Issue 9 item 15: every envelope used to be kept forever. Room messages of others are
    /// now capped per room and per author (oldest go first); the node's own stay.
    #[test]
    fn rooms_keep_a_capped_history_and_own_messages_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let own = ident(1);
        let limits = Limits { room_messages: 20, author_messages: 5, ..Limits::default() };
        let store = Store::open_with(dir.path(), own.id(), limits).expect("open");
        let eve = ident(2);
        let flood: Vec<Verified> = (0..50).map(|i| said(&eve, "general", i)).collect();
        for v in &flood {
            store.insert(v, 1).expect("insert");
        }
        let kept: Vec<MessageId> = store
            .recent(&room_topic("general"), 100)
            .expect("recent")
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(kept, flood[45..].iter().map(|v| v.id).collect::<Vec<_>>(), "eve's newest 5");
        for seed in 10..40 {
            store.insert(&said(&ident(seed), "general", 1), 2).expect("insert");
        }
        assert_eq!(store.recent(&room_topic("general"), 100).expect("recent").len(), 20);
        for i in 0..30 {
            store.insert(&said(&own, "general", 100 + i), 3).expect("insert");
        }
        assert_eq!(count(&store, "mine = 1"), 30, "own messages are never evicted");
        assert_eq!(count(&store, "mine = 0"), 20);
        // Another room has a cap of its own.
        store.insert(&said(&eve, "other", 1), 4).expect("insert");
        assert_eq!(store.recent(&room_topic("other"), 100).expect("recent").len(), 1);
        // Presence: the latest per author only.
        for t in [5, 9, 7] {
            store.insert(&presence(&eve, "eve", t), 10).expect("insert");
        }
        let rows = store.recent(&crate::chat::envelope::directory_topic(), 10).expect("recent");
        assert_eq!(rows.iter().map(|r| r.sent_ms).collect::<Vec<_>>(), vec![9]);
    }

    /// Issue 9 item 15: sealed direct messages between others are a store-and-forward cache,
    /// capped per recipient and in all, and expire; those to and from this node are kept.
    #[test]
    fn direct_messages_for_others_are_a_bounded_expiring_cache() {
        use crate::chat::envelope::{directory_topic, seal_direct, DirectPlain};
        let dir = tempfile::tempdir().expect("tempdir");
        let own = ident(1);
        let limits = Limits {
            relay_per_recipient: 3,
            relay_messages: 5,
            relay_ttl_ms: 1_000,
            ..Limits::default()
        };
        let store = Store::open_with(dir.path(), own.id(), limits).expect("open");
        let (eve, bob) = (ident(2), ident(3));
        let plain = DirectPlain { nick: "eve".into(), text: "hi".into() };
        let dm = |to: NodeId, i: u8| seal_direct(&eve, to, &plain, 1, [i; 32]).expect("valid key");
        for i in 0..10 {
            store.insert(&dm(bob.id(), i), 100).expect("insert");
        }
        assert_eq!(count(&store, "kind = 2"), 3, "per recipient");
        let dm_to_bob_newest = dm(bob.id(), 9).id;
        let rows = store.recent(&directory_topic(), 100).expect("recent");
        assert!(rows.iter().any(|r| r.id == dm_to_bob_newest), "the newest are kept");
        for seed in 10..20 {
            store.insert(&dm(ident(seed).id(), 1), 200).expect("insert");
        }
        assert_eq!(count(&store, "kind = 2"), 5, "in all");
        // To and from this node: not part of the cache.
        for i in 0..10 {
            store.insert(&dm(own.id(), i), 300).expect("insert");
            let mine = seal_direct(&own, bob.id(), &plain, 1, [i; 32]).expect("valid key");
            store.insert(&mine, 300).expect("insert");
        }
        assert_eq!(count(&store, "kind = 2"), 25);
        store.expire_relayed(200 + 1_000).expect("expire");
        assert_eq!(count(&store, "kind = 2"), 25, "not yet");
        store.expire_relayed(201 + 1_000).expect("expire");
        assert_eq!(count(&store, "kind = 2"), 20, "the relayed ones expired");
    }

    /// A database written before the bounds (no `kind` column) is re-filed on open.
    #[test]
    fn an_unbounded_database_is_migrated_and_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let eve = ident(2);
        {
            let db = Connection::open(dir.path().join("chat.sqlite")).expect("open");
            db.execute_batch(
                "CREATE TABLE messages (id BLOB PRIMARY KEY, topic BLOB NOT NULL,
                     author BLOB NOT NULL, sent_ms INTEGER NOT NULL,
                     received_ms INTEGER NOT NULL, raw BLOB NOT NULL);
                 CREATE INDEX messages_topic_time ON messages (topic, sent_ms);",
            )
            .expect("old schema");
            for i in 0..10 {
                let v = said(&eve, "general", i);
                db.execute(
                    "INSERT INTO messages VALUES (?1, ?2, ?3, ?4, 1, ?5)",
                    params![
                        &v.id.0[..],
                        &room_topic("general").0[..],
                        &eve.id().0[..],
                        i as i64,
                        v.raw
                    ],
                )
                .expect("old row");
            }
        }
        let limits = Limits { author_messages: 4, ..Limits::default() };
        let store = Store::open_with(dir.path(), me(), limits).expect("migrates");
        let rows = store.recent(&room_topic("general"), 100).expect("recent");
        assert_eq!(rows.iter().map(|r| r.sent_ms).collect::<Vec<_>>(), vec![6, 7, 8, 9]);
        drop(store);
        Store::open(dir.path(), me()).expect("opens again");
    }
}
