//! Swarmcast's labs and simulations.
//!
//! - [`bound`]: the lecture's lower bounds on distribution time (client-server and P2P).
//! - [`plot`]: the lecture's figure, bounds over N with measured points, as SVG.
//! - [`lab`]: the distribution-time lab that runs real Swarmcast nodes on loopback and measures
//!   client-server and P2P against those bounds.
//! - [`netns`]: the same lab with every node a real process in its own network namespace and
//!   kernel (HTB) rate caps (root only).
//! - [`swarm`]: a seeded discrete-event simulator of one torrent's swarm, every peer the
//!   `TorrentCore` the session runs, at 10–10^4 peers (`swarmcast sim swarm`).
//! - [`dht`]: a seeded discrete-event simulator of the Mainline DHT, every node the `DhtCore`
//!   `swarmcast dht` runs, at 10^3–10^6 nodes, with sybil and churn scenarios.
//! - [`overlay`]: a seeded discrete-event simulator of the P2P overlay (membership + broadcast
//!   nodes of the `overlay` crate) at 10^2–10^5 nodes, with crash and anchors-down scenarios.
#![forbid(unsafe_code)]

pub mod bound;
mod calendar;
pub mod dht;
pub mod lab;
pub mod netns;
pub mod overlay;
pub mod plot;
pub mod search;
pub mod swarm;
