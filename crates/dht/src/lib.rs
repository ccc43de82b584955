//! The BitTorrent Mainline DHT (BEP 5), the hash table of the lecture notes' "distributed
//! search": a Kademlia network of nodes that maps an info-hash to the peers of its swarm.
//!
//! Layers, as in every crate of the project (`docs/architecture.md`):
//! - [`proto::id`]: node ids and the XOR metric;
//! - [`proto::krpc`]: the KRPC messages (bencoded dictionaries over UDP), a strict, size-capped
//!   codec for every byte a remote node sends;
//! - [`proto::table`]: the routing table (k = 8 buckets, split where our id falls, BEP 5
//!   liveness, replacement caches, one entry per public address).
//!
//! The Kademlia core (lookups, tokens, storage) and its UDP driver build on these.

pub mod proto;

pub use proto::id::NodeId;
pub use proto::krpc::{KrpcError, Message};
