//! Chat history in SQLite (rusqlite, bundled, WAL): every verified envelope the node delivered,
//! keyed by message id, so duplicates are ignored, history survives restarts, and neighbors can
//! be served what they missed. Also the nickname directory and the peers to re-join through.
//!
//! A message is committed here before it is shown (or reported as sent).

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
CREATE TABLE IF NOT EXISTS nicks (
    author BLOB PRIMARY KEY,
    nick TEXT NOT NULL,
    sent_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS peers (
    id BLOB PRIMARY KEY,
    addr TEXT NOT NULL,
    seen_ms INTEGER NOT NULL
);
";

fn blob32(v: Vec<u8>) -> rusqlite::Result<[u8; 32]> {
    v.as_slice().try_into().map_err(|_| rusqlite::Error::InvalidQuery)
}

impl Store {
    /// Opens (creating) `dir/chat.sqlite`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = Connection::open(dir.join("chat.sqlite"))?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(SCHEMA)?;
        Ok(Self { db })
    }

    /// Commits a verified message; returns false if it was already stored (a duplicate).
    pub fn insert(&self, v: &Verified, received_ms: u64) -> Result<bool, StoreError> {
        let c = &v.content;
        let n = self.db.execute(
            "INSERT OR IGNORE INTO messages (id, topic, author, sent_ms, received_ms, raw)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                &v.id.0[..],
                &c.topic().0[..],
                &c.author().0[..],
                c.sent_ms() as i64,
                received_ms as i64,
                &v.raw
            ],
        )?;
        if let Content::Presence { author, nick, sent_ms }
        | Content::Room { author, nick, sent_ms, .. } = c
        {
            self.db.execute(
                "INSERT INTO nicks (author, nick, sent_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(author) DO UPDATE SET nick = excluded.nick, sent_ms = excluded.sent_ms
                 WHERE excluded.sent_ms >= nicks.sent_ms",
                params![&author.0[..], nick, *sent_ms as i64],
            )?;
        }
        Ok(n == 1)
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

    /// The latest nickname of `author`, if known.
    pub fn nick(&self, author: &NodeId) -> Result<Option<String>, StoreError> {
        Ok(self
            .db
            .query_row("SELECT nick FROM nicks WHERE author = ?1", [&author.0[..]], |r| r.get(0))
            .optional()?)
    }

    /// Authors currently using `nick` (most recent first).
    pub fn ids_for_nick(&self, nick: &str) -> Result<Vec<NodeId>, StoreError> {
        let mut stmt =
            self.db.prepare("SELECT author FROM nicks WHERE nick = ?1 ORDER BY sent_ms DESC")?;
        let rows = stmt.query_map([nick], |r| Ok(NodeId(blob32(r.get(0)?)?)))?;
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
        assert_eq!(store.ids_for_nick("ann").expect("ids"), vec![ann.id()]);
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        store.remember_peer(&ann.id(), addr, 5).expect("remember");
        assert_eq!(store.peers().expect("peers"), vec![(ann.id(), addr)]);
    }
}
