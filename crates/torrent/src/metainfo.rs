//! `.torrent` files: strict parsing (BEP 3, announce-list BEP 12) and creation.
//!
//! The info-hash is the SHA-1 of the info dictionary's exact original bytes, as they appear in
//! the file; the parser keeps those bytes in [`Metainfo::info_bytes`] (they are also what BEP 9
//! metadata exchange serves).

use std::fmt;

/// SHA-1 of a torrent's bencoded info dictionary.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfoHash(pub [u8; 20]);

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({self})")
    }
}

/// One file of the torrent, in torrent order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Path components below the torrent's directory (multi-file), or `[name]` for a single
    /// file torrent. Every component has been checked to be a safe, plain name.
    pub path: Vec<String>,
    pub length: u64,
    /// Byte offset of the file's start in the torrent's concatenated byte stream.
    pub offset: u64,
}

/// The parsed info dictionary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub piece_length: u32,
    pub pieces: Vec<[u8; 20]>,
    pub files: Vec<FileEntry>,
    /// True when the info dictionary has a `files` list (files live under directory `name`).
    pub multi_file: bool,
    pub private: bool,
    pub total_length: u64,
}

impl Info {
    /// Number of pieces.
    pub fn num_pieces(&self) -> u32 {
        self.pieces.len() as u32
    }

    /// Size of piece `piece` in bytes (the last one may be short).
    pub fn piece_size(&self, piece: u32) -> u32 {
        let start = piece as u64 * self.piece_length as u64;
        (self.total_length.saturating_sub(start)).min(self.piece_length as u64) as u32
    }
}

/// A parsed `.torrent` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metainfo {
    pub info: Info,
    pub info_hash: InfoHash,
    /// The info dictionary's exact bytes as found in the file.
    pub info_bytes: Vec<u8>,
    /// Tracker tiers: `announce-list` if present (BEP 12), else `[[announce]]`; may be empty.
    pub trackers: Vec<Vec<String>>,
    pub comment: Option<String>,
    pub created_by: Option<String>,
    pub creation_date: Option<i64>,
}
