//! Sans-IO protocol cores. Nothing here opens a socket, reads a clock or spawns a task: time comes
//! in as an argument and randomness from an injected, seedable RNG, so the tokio driver
//! ([`crate::session`]) and a simulator drive exactly the same code.

pub mod choker;
pub mod ext;
pub mod metadata;
pub mod mse;
pub mod picker;
pub mod torrent;
pub mod wire;

/// The standard block size (BEP 3 practice): requests are for 16 KiB.
pub const BLOCK_SIZE: u32 = 16 * 1024;

/// A local handle for a connected peer. Cores are keyed by it so that simulations can use plain
/// integers; the driver hands them out and never reuses one within a torrent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(pub u64);

/// One block request: `length` bytes at `offset` in piece `piece`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRef {
    pub piece: u32,
    pub offset: u32,
    pub length: u32,
}
