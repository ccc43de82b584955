//! uTP, the Micro Transport Protocol (BEP 29): BitTorrent's reliable, ordered byte stream over
//! UDP, whose congestion control (LEDBAT, RFC 6817) yields to TCP by keeping the queueing delay
//! it adds near a target.
//!
//! Layers, as in every crate of the project (`docs/architecture.md`):
//! - [`packet`]: the 20-byte header and its extension chain (selective ACKs), a strict,
//!   size-capped codec for every datagram a remote host sends (fuzzed: `fuzz/fuzz_targets/utp.rs`).
//!
//! The connection core (states, selective ACKs, retransmission, LEDBAT windows, timers as
//! outputs) and the driver that shares the DHT's UDP socket are the next steps (issue 13).

pub mod packet;

pub use packet::{Header, Kind, Packet, PacketError};
