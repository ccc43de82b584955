//! The BitTorrent engine of Swarmcast.
//!
//! Layout, from the bytes up:
//! - [`metainfo`] and [`magnet`]: `.torrent` files (BEP 3, BEP 12) and magnet URIs (BEP 9), parsed
//!   strictly; [`metainfo::create`] makes new torrents.
//! - [`proto`]: the sans-IO cores. [`proto::wire`] is the peer wire codec (BEP 3, 6, 10),
//!   [`proto::picker`] the piece picker (random first, rarest first, endgame) and
//!   [`proto::choker`] the tit-for-tat choker, [`proto::torrent`] one torrent's state machine,
//!   [`proto::metadata`] the fetch of a magnet link's info dictionary (BEP 9). None of them
//!   touches a socket, a clock or tokio: `now` and randomness are passed in.
//! - [`storage`]: maps pieces onto the target files, verifies SHA-1, refuses unsafe paths.
//! - [`tracker`]: HTTP (BEP 3, 23) and UDP (BEP 15) tracker clients, and a tracker server.
//! - [`session`]: the tokio driver that runs one torrent: peer connections, the cores, storage.
//! - [`ratelimit`]: the token bucket shared by all of a node's connections.
#![forbid(unsafe_code)]

pub mod bitfield;
pub mod magnet;
pub mod metainfo;
pub mod proto;
pub mod ratelimit;
pub mod session;
pub mod storage;
#[cfg(test)]
pub mod testnet;
pub mod tracker;
pub mod units;

pub use bitfield::Bitfield;
pub use metainfo::{InfoHash, Metainfo};

/// A 20-byte peer id (BEP 3). Ours start with `-SC0100-` (Azureus style).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub [u8; 20]);

impl PeerId {
    /// A fresh random peer id with the Swarmcast client prefix.
    pub fn generate<R: rand::Rng>(rng: &mut R) -> Self {
        let mut id = [0u8; 20];
        id[..8].copy_from_slice(b"-SC0100-");
        for b in &mut id[8..] {
            *b = b"0123456789abcdefghijklmnopqrstuvwxyz"[rng.random_range(0..36)];
        }
        PeerId(id)
    }
}

impl std::fmt::Debug for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeerId({})", String::from_utf8_lossy(&self.0))
    }
}
