//! Sans-IO cores. Nothing here opens a socket or a file, reads a clock or uses tokio: time
//! comes in as an argument (an `Instant` or player seconds), randomness from a seed, and every
//! decision goes out as a return value, so the servers and the player beside this module (and
//! the virtual-time evaluation) drive exactly the same code. Modules here use each other
//! (`player` → `abr`) but nothing outside `proto/`; the drivers use them, never the reverse.
//!
//! - [`abr`]: the adaptive-bitrate rules: the `Abr` trait, the ladder, and the throughput,
//!   BOLA, dynamic (dash.js's default) and hybrid rules.
//! - [`placement`]: request routing by consistent hashing with bounded loads.
//! - [`cache`]: the edge's byte-bounded LRU segment cache.
//! - [`player`]: the player core (`PlayerCore`: buffer, stalls, when to request, abandonment)
//!   and Pensieve's linear QoE.
//! - [`trace`]: bandwidth traces, their seeded generators and the pacer that throttles reads to
//!   one.

pub mod abr;
pub mod cache;
pub mod placement;
pub mod player;
pub mod trace;
