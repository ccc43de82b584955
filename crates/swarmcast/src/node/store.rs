//! The node's state in SQLite (`DIR/node.sqlite`): the torrents it holds, how each was added,
//! its info dictionary once known, where its files go and whether it is paused. The database is
//! a file, so what it says is checked like anything read from outside: an info dictionary must
//! hash to the info-hash it is stored under, a magnet must parse, a name must be a plain name.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rusqlite::{params, Connection};
use torrent::metainfo::{Info, InfoHash, Metainfo};

/// One torrent as stored.
#[derive(Clone, Debug)]
pub struct Row {
    pub info_hash: InfoHash,
    pub name: String,
    /// The magnet it was added by (its trackers and `x.pe` peers), if any.
    pub magnet: Option<String>,
    /// The info dictionary, once known (a magnet's arrives from peers).
    pub info: Option<Vec<u8>>,
    /// Tracker tiers.
    pub trackers: Vec<Vec<String>>,
    /// The folder its files go under.
    pub save_dir: PathBuf,
    pub paused: bool,
    /// Seconds since the Unix epoch.
    pub added_at: i64,
}

impl Row {
    /// The metainfo, when the info dictionary is known and hashes to the stored info-hash.
    pub fn metainfo(&self) -> Result<Option<Metainfo>> {
        let Some(bytes) = &self.info else { return Ok(None) };
        anyhow::ensure!(
            InfoHash::of(bytes) == self.info_hash,
            "the stored info dictionary of {} does not hash to it (node.sqlite was changed)",
            self.info_hash
        );
        let info = Info::from_bytes(bytes).context("the stored info dictionary does not parse")?;
        Ok(Some(Metainfo {
            info,
            info_hash: self.info_hash,
            info_bytes: bytes.clone(),
            trackers: self.trackers.clone(),
            comment: None,
            created_by: None,
            creation_date: None,
        }))
    }
}

/// The open database.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) `DIR/node.sqlite`.
    pub fn open(dir: &Path) -> Result<Store> {
        let path = dir.join("node.sqlite");
        let conn = Connection::open(&path)
            .with_context(|| format!("cannot open the node's database {}", path.display()))?;
        // WAL: a write is one append and survives `kill -9`; NORMAL is durable at checkpoints,
        // which is what a crash may cost (the last changes of the last moment), never corruption.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS torrents (
                info_hash TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                magnet TEXT,
                info BLOB,
                trackers TEXT NOT NULL,
                save_dir TEXT NOT NULL,
                paused INTEGER NOT NULL DEFAULT 0,
                added_at INTEGER NOT NULL
            );",
        )
        .with_context(|| format!("{} is not a Swarmcast node database", path.display()))?;
        Ok(Store { conn })
    }

    /// Every stored torrent, oldest first. A row that does not read back is skipped with a
    /// warning (and kept in the file).
    pub fn torrents(&self) -> Result<Vec<Row>> {
        let mut stmt = self.conn.prepare(
            "SELECT info_hash, name, magnet, info, trackers, save_dir, paused, added_at
             FROM torrents ORDER BY added_at, info_hash",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<Vec<u8>>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, bool>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let Ok((ih, name, magnet, info, trackers, save_dir, paused, added_at)) = row else {
                tracing::warn!("node.sqlite: skipping a torrent that does not read back");
                continue;
            };
            // Stored lowercase, as written: any other spelling is not ours.
            let info_hash = InfoHash::from_hex(&ih).filter(|h| h.to_string() == ih);
            let Some(info_hash) = info_hash else {
                tracing::warn!("node.sqlite: skipping a torrent with the info-hash {ih:?}");
                continue;
            };
            let Ok(trackers) = serde_json::from_str(&trackers) else {
                tracing::warn!("node.sqlite: skipping {ih}: its trackers do not parse");
                continue;
            };
            if !Path::new(&save_dir).is_absolute() {
                tracing::warn!(
                    "node.sqlite: skipping {ih}: its folder {save_dir:?} is not absolute"
                );
                continue;
            }
            out.push(Row {
                info_hash,
                name,
                magnet,
                info,
                trackers,
                save_dir: PathBuf::from(save_dir),
                paused,
                added_at,
            });
        }
        Ok(out)
    }

    /// Stores a new torrent; false if one with its info-hash is stored already.
    pub fn insert(&self, row: &Row) -> Result<bool> {
        let trackers = serde_json::to_string(&row.trackers)?;
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO torrents
             (info_hash, name, magnet, info, trackers, save_dir, paused, added_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                row.info_hash.to_string(),
                row.name,
                row.magnet,
                row.info,
                trackers,
                row.save_dir.to_string_lossy(),
                row.paused,
                row.added_at
            ],
        )?;
        Ok(n == 1)
    }

    /// Records a magnet's info dictionary (and the name it gives) once fetched.
    pub fn set_info(&self, ih: InfoHash, name: &str, info: &[u8]) -> Result<()> {
        self.conn.execute(
            "UPDATE torrents SET info = ?2, name = ?3 WHERE info_hash = ?1",
            params![ih.to_string(), info, name],
        )?;
        Ok(())
    }

    pub fn set_paused(&self, ih: InfoHash, paused: bool) -> Result<()> {
        self.conn.execute(
            "UPDATE torrents SET paused = ?2 WHERE info_hash = ?1",
            params![ih.to_string(), paused],
        )?;
        Ok(())
    }

    pub fn remove(&self, ih: InfoHash) -> Result<()> {
        self.conn.execute("DELETE FROM torrents WHERE info_hash = ?1", params![ih.to_string()])?;
        Ok(())
    }

    /// Whether a torrent is stored (tests).
    #[cfg(test)]
    fn has(&self, ih: InfoHash) -> Result<bool> {
        use rusqlite::OptionalExtension;
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM torrents WHERE info_hash = ?1",
                params![ih.to_string()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(info: Option<Vec<u8>>, ih: InfoHash) -> Row {
        Row {
            info_hash: ih,
            name: "a".into(),
            magnet: None,
            info,
            trackers: vec![vec!["http://t/announce".into()]],
            save_dir: "/tmp/x".into(),
            paused: false,
            added_at: 1,
        }
    }

    #[test]
    fn torrents_survive_a_reopen_and_a_tampered_info_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let info = torrent::metainfo::single_file_info("a", 3, 16384, &[1; 20]).unwrap();
        let ih = InfoHash::of(&info);
        {
            let s = Store::open(dir.path()).unwrap();
            assert!(s.insert(&row(Some(info.clone()), ih)).unwrap());
            assert!(!s.insert(&row(Some(info.clone()), ih)).unwrap(), "a second insert is refused");
            s.set_paused(ih, true).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let rows = s.torrents().unwrap();
        assert_eq!(rows.len(), 1);
        assert!(rows[0].paused);
        let meta = rows[0].metainfo().unwrap().unwrap();
        assert_eq!(meta.info.name, "a");
        assert_eq!(meta.trackers, vec![vec!["http://t/announce".to_string()]]);
        // Bytes that do not hash to the key are not believed.
        let mut other = rows[0].clone();
        other.info.as_mut().unwrap().push(b' ');
        assert!(other.metainfo().is_err());
        s.remove(ih).unwrap();
        assert!(!s.has(ih).unwrap());
    }
}
