//! Swarmcast's P2P overlay (issue 4, in progress): the sans-IO cores first.
//!
//! - [`proto::hyparview`]: membership. Anchors are contact nodes only; an active view bounded by
//!   the neighbor threshold, a larger passive view, JOIN / FORWARDJOIN random walks, NEIGHBOR
//!   requests with priority, SHUFFLE, healing from the passive view.
//! - [`proto::plumtree`]: broadcast along a spanning tree (eager push, lazy IHAVE, GRAFT, PRUNE).
//!
//! Both are generic over the peer id and take `now` and an RNG from the caller.
#![forbid(unsafe_code)]

pub mod proto;
