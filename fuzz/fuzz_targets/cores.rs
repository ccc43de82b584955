//! Fuzzes the torrent crate's protocol cores as a peer would: `TorrentCore` (a half-complete
//! download of 37 pieces, serving metadata) and `MetadataCore` (a magnet fetch) each get a
//! sequence of inputs read from the fuzz bytes: peers connecting with any reserved bits, any
//! message the wire codec decodes from the bytes, closes, dial failures, virtual time passing,
//! and, for the torrent, the owner's verdicts on the pieces it asks to verify.
//!
//! Properties checked after every input: no panic; `poll()` runs dry within a bound (a core never
//! emits unboundedly many actions for one input); and after a `Timeout` the next deadline is
//! later than now (a driver never spins on a deadline that has passed).
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use torrent::metainfo::InfoHash;
use torrent::proto::metadata::{self, MetadataConfig, MetadataCore};
use torrent::proto::torrent::{CoreConfig, Geometry, Input, Output, TorrentCore};
use torrent::proto::wire::{self, DEFAULT_MAX_MESSAGE};
use torrent::proto::PeerKey;
use torrent::{Bitfield, PeerId};

/// Most actions one input may produce.
const MAX_OUTPUTS: usize = 100_000;

struct Bytes_<'a>(&'a [u8]);

impl Bytes_<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    /// A length-prefixed (one byte) slice.
    fn chunk(&mut self) -> Option<&[u8]> {
        let n = (self.byte()? as usize).min(self.0.len());
        let (c, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(c)
    }
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 6881))
}

/// Decodes one message from `raw` (without the length prefix, which is added here).
fn message(raw: &[u8]) -> Option<wire::Message> {
    let mut buf = BytesMut::with_capacity(raw.len() + 4);
    buf.extend_from_slice(&(raw.len() as u32).to_be_bytes());
    buf.extend_from_slice(raw);
    wire::decode(&mut buf, DEFAULT_MAX_MESSAGE).ok().flatten()
}

fn drain_torrent(core: &mut TorrentCore, verdicts: &mut Vec<u32>) {
    let mut n = 0;
    while let Some(out) = core.poll() {
        n += 1;
        assert!(n <= MAX_OUTPUTS, "TorrentCore produced over {MAX_OUTPUTS} actions for one input");
        if let Output::Verify { piece, .. } = out {
            verdicts.push(piece);
        }
    }
}

fn drain_metadata(core: &mut MetadataCore) {
    let mut n = 0;
    while core.poll().is_some() {
        n += 1;
        assert!(n <= MAX_OUTPUTS, "MetadataCore produced over {MAX_OUTPUTS} actions for one input");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes_(data);
    let start = Instant::now();
    let mut now = start;
    let pieces = 37;
    let piece_length = 32 * 1024;
    let mut have = Bitfield::new(pieces);
    for p in (0..pieces).step_by(2) {
        have.set(p);
    }
    let geometry = Geometry {
        piece_length,
        total_length: u64::from(pieces - 1) * u64::from(piece_length) + 1_000,
        metadata: Bytes::from_static(b"d4:name1:xe"),
    };
    let config = CoreConfig {
        max_peers: 8,
        seed_when_done: true,
        choker: Default::default(),
        picker: Default::default(),
        announce: true,
        our_port: 6881,
        our_id: PeerId([b'u'; 20]),
        super_seed: data.first().is_some_and(|b| b & 0x80 != 0),
        pex: true,
        our_ipv6: None,
    };
    let mut tc = TorrentCore::new(geometry, have, config, ChaCha8Rng::seed_from_u64(1), now);
    let peers = (1..=4).map(addr).collect();
    let mut mc =
        MetadataCore::new(InfoHash([7; 20]), peers, MetadataConfig::default(), now);
    let mut verdicts = Vec::new();
    let mut next_key = 0u64;
    drain_torrent(&mut tc, &mut verdicts);
    drain_metadata(&mut mc);
    while let Some(op) = input.byte() {
        let to_metadata = op & 0x80 != 0;
        let arg = input.byte().unwrap_or(0);
        let key = PeerKey(u64::from(arg) % (next_key + 1));
        match op & 0x07 {
            0 => {
                let peer = PeerKey(next_key);
                next_key += 1;
                let (fast, extensions) = (arg & 1 != 0, arg & 2 != 0);
                if to_metadata {
                    let addr = addr(arg >> 2);
                    mc.handle(now, metadata::Input::Connected { peer, addr, fast, extensions });
                } else {
                    let id = PeerId([arg; 20]);
                    let outgoing = arg & 4 != 0;
                    let input = Input::Connected {
                        peer,
                        addr: addr(arg >> 3),
                        id,
                        fast,
                        extensions,
                        outgoing,
                    };
                    tc.handle(now, input);
                }
            }
            1 | 2 => {
                let Some(msg) = input.chunk().and_then(message) else { continue };
                if to_metadata {
                    mc.handle(now, metadata::Input::Message(key, msg));
                } else {
                    tc.handle(now, Input::Message(key, msg));
                }
            }
            3 => {
                if to_metadata {
                    mc.handle(now, metadata::Input::Closed(key, "fuzz".into()));
                } else {
                    tc.handle(now, Input::Closed(key, "fuzz".into()));
                }
            }
            4 => {
                now += Duration::from_millis(u64::from(arg) * 250);
                if to_metadata {
                    if mc.next_deadline().is_some_and(|t| t <= now) {
                        mc.handle(now, metadata::Input::Timeout);
                        drain_metadata(&mut mc);
                        assert!(mc.next_deadline().is_none_or(|t| t > now), "metadata deadline passed");
                    }
                } else if tc.next_deadline().is_some_and(|t| t <= now) {
                    tc.handle(now, Input::Timeout);
                    drain_torrent(&mut tc, &mut verdicts);
                    assert!(tc.next_deadline().is_none_or(|t| t > now), "torrent deadline passed");
                }
            }
            5 => {
                if to_metadata {
                    mc.handle(now, metadata::Input::ConnectFailed(addr(arg), "fuzz".into()));
                } else {
                    tc.handle(now, Input::ConnectFailed(addr(arg)));
                }
            }
            6 if to_metadata => {
                // More addresses, known and new (the answer to WantPeers).
                let addrs = (0..arg % 8).map(|i| addr(arg.wrapping_add(i))).collect();
                mc.handle(now, metadata::Input::Peers(addrs));
            }
            6 => {
                // The owner's verdict on the oldest piece it was asked to verify.
                if !verdicts.is_empty() {
                    let piece = verdicts.remove(0);
                    let blocks = (arg & 2 != 0).then(|| vec![[arg; 20]; usize::from(arg >> 2)]);
                    tc.handle(now, Input::Verified { piece, ok: arg & 1 != 0, blocks });
                }
            }
            7 if to_metadata => {
                // The owner's urgent pieces (a reader of the content), some out of range.
                tc.set_urgent(now, &[u32::from(arg) % 40, u32::from(arg >> 3), u32::from(arg)]);
            }
            7 if arg & 1 == 0 => {
                // Streaming: urgent pieces only, on or off.
                tc.set_urgent_only(now, arg & 2 != 0);
            }
            7 => {
                // A piece from elsewhere, of the right size or not, in range or not.
                let piece = u32::from(arg >> 1) % 48;
                let len = if arg & 2 != 0 { 32 * 1024 } else { usize::from(arg) };
                tc.handle(now, Input::AddPiece { piece, data: vec![arg; len].into() });
            }
            _ => {
                tc.handle(now, Input::Uploaded(key, u64::from(arg) * 1024));
            }
        }
        drain_torrent(&mut tc, &mut verdicts);
        drain_metadata(&mut mc);
    }
});
