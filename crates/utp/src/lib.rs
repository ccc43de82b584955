//! uTP, the Micro Transport Protocol (BEP 29): BitTorrent's reliable, ordered byte stream over
//! UDP, whose congestion control (LEDBAT, RFC 6817) yields to TCP by keeping the queueing delay
//! it adds near a target.
//!
//! Layers, as in every crate of the project (`docs/architecture.md`):
//! - [`packet`]: the 20-byte header and its extension chain (selective ACKs), a strict,
//!   size-capped codec for every datagram a remote host sends (fuzzed: `fuzz/fuzz_targets/utp.rs`).
//!
//! - [`conn`]: one connection as a sans-IO core: the handshake, sequence numbers, selective
//!   ACKs, fast retransmit and timeouts, and LEDBAT's congestion window, with timers as
//!   [`conn::Connection::next_deadline`] and a byte-stream face (`write`, `read`, `close`).
//!
//! The driver that runs connections on the UDP socket the DHT uses (demultiplexed by packet
//! shape, as libtorrent does) is the next step (issue 13).

pub mod conn;
pub mod packet;

pub use packet::{Header, Kind, Packet, PacketError};
