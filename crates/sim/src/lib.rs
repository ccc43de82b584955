//! Swarmcast's labs and simulations.
//!
//! - [`bound`]: the lecture's lower bounds on distribution time (client-server and P2P).
//! - [`plot`]: the lecture's figure, bounds over N with measured points, as SVG.
//! - [`lab`]: the distribution-time lab that runs real Swarmcast nodes on loopback and measures
//!   client-server and P2P against those bounds.
//! - [`netns`]: the same lab with every node a real process in its own network namespace and
//!   kernel (HTB) rate caps (root only).
#![forbid(unsafe_code)]

pub mod bound;
pub mod lab;
pub mod netns;
pub mod plot;
