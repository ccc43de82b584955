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
//! - [`driver`]: a tokio UDP socket running connections, each a [`driver::UtpStream`]
//!   (`AsyncRead` + `AsyncWrite`): [`driver::UtpSocket::connect`] and `accept`.
//!
//! The torrent session carries peer connections over it (`torrent::session::stream`). Still
//! to come (issue 13): sharing the socket with the DHT (demultiplexed by packet shape, as
//! libtorrent does).

pub mod conn;
pub mod driver;
pub mod packet;

pub use packet::{Header, Kind, Packet, PacketError};
