//! The BitTorrent Mainline DHT (BEP 5), the hash table of the lecture notes' "distributed
//! search": a Kademlia network of nodes that maps an info-hash to the peers of its swarm.
//!
//! Layers, as in every crate of the project (`docs/architecture.md`):
//! - [`proto::id`]: node ids and the XOR metric;
//! - [`proto::krpc`]: the KRPC messages (bencoded dictionaries over UDP), a strict, size-capped
//!   codec for every byte a remote node sends;
//! - [`proto::table`]: the routing table (k = 8 buckets, split where our id falls, BEP 5
//!   liveness, replacement caches, one entry per public address);
//! - [`proto::core`]: [`DhtCore`], one node under the project's core contract: it answers
//!   `ping`, `find_node`, `get_peers` and `announce_peer` (tokens bound to the sender's
//!   address), and runs iterative lookups (`find_node`, `get_peers`, announce).
//!
//! [`driver`] runs a core on a UDP socket under tokio ([`Dht`]). BEP 44 items and BEP 51
//! sampling are to come.

pub mod driver;
pub mod proto;
pub mod state;

pub use driver::{Dht, DhtOptions, SharedSocket};
pub use proto::core::DhtCore;
pub use proto::id::NodeId;
pub use proto::krpc::{KrpcError, Message};
