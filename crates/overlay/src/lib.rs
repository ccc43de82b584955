//! Swarmcast's P2P overlay (issue 4): membership and broadcast cores, identity, QUIC transport,
//! and the chat service on top.
//!
//! - [`proto::hyparview`]: membership. Anchors are contact nodes only; an active view bounded by
//!   the neighbor threshold, a larger passive view, JOIN / FORWARDJOIN random walks, NEIGHBOR
//!   requests with priority, SHUFFLE, healing from the passive view.
//! - [`proto::plumtree`]: broadcast along a spanning tree (eager push, lazy IHAVE, GRAFT, PRUNE).
//! - [`proto::node`]: one node = membership + a tree per topic; the simulator and the driver
//!   both drive this type.
//! - [`identity`]: ed25519 node keys; [`transport`]: QUIC (quinn) with certificates bound to
//!   them; [`wire`]: the versioned, size-capped postcard frame codec.
//! - [`driver`]: the tokio driver of a node; [`chat`]: rooms, direct messages, SQLite history
//!   and catch-up.
//! - `testnet` (tests only): the one test harness, cores connected in memory in virtual time.
//!
//! The cores are generic over the peer id and take `now` and an RNG from the caller.
#![forbid(unsafe_code)]

pub mod chat;
pub mod driver;
pub mod identity;
pub mod proto;
#[cfg(test)]
mod testnet;
pub mod transport;
pub mod wire;
