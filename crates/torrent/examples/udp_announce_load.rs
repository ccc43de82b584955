//! A BEP 15 load generator for `scripts/bench-tracker.sh`: UDP announces against any tracker,
//! as fast as it answers, and the number of announce replies per second.
//!
//! Usage: `udp_announce_load ADDR INFO_HASH_HEX SECONDS [SOCKETS=64] [PEERS=10000]`
//!
//! Each of SOCKETS sockets gets a connection id once (and again after 50 s), then keeps one
//! announce in flight: 64 sockets are 64 concurrent clients, as `wrk -c64` is for HTTP. Every
//! announce names a peer on 127.0.0.1 whose port cycles over 1..=PEERS (so the swarm holds
//! PEERS peers once warm), a fresh peer id, `left` > 0 and numwant 50. A reply counts when it is
//! an announce reply to the transaction it answers; a socket that hears nothing for 1 s sends
//! again. Prints `announces/s N` and how many replies were errors or lost.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use torrent::metainfo::InfoHash;
use torrent::tracker::udp::{
    encode_announce_request, encode_connect_request, parse_reply, UdpReply, MAX_DATAGRAM,
};
use torrent::tracker::{AnnounceRequest, Event};
use torrent::PeerId;

struct Client {
    socket: UdpSocket,
    connection: Option<(u64, Instant)>,
    /// The transaction in flight and when it was sent.
    pending: Option<(u32, Instant, bool)>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: udp_announce_load ADDR INFO_HASH_HEX SECONDS [SOCKETS=64] [PEERS=10000]";
    let (Some(addr), Some(hash), Some(secs)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().expect("ADDR: host:port");
    let info_hash = InfoHash::from_hex(hash).expect("INFO_HASH_HEX: 40 hex digits");
    let secs: f64 = secs.parse().expect("SECONDS: a number");
    let sockets: usize = args.get(4).map_or(64, |s| s.parse().expect("SOCKETS"));
    let peers: u32 = args.get(5).map_or(10_000, |s| s.parse().expect("PEERS"));

    let mut clients: Vec<Client> = (0..sockets)
        .map(|_| {
            let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
            socket.connect(addr).expect("connect");
            socket.set_nonblocking(true).expect("nonblocking");
            Client { socket, connection: None, pending: None }
        })
        .collect();
    let mut next_tx: u32 = 1;
    let mut counter: u32 = 0;
    let (mut done, mut errors, mut resent) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut buf = [0u8; MAX_DATAGRAM];
    while Instant::now() < end {
        let mut idle = true;
        for c in &mut clients {
            let now = Instant::now();
            // Read what arrived.
            while let Ok(n) = c.socket.recv(&mut buf) {
                idle = false;
                let Some((tx, _, is_connect)) = c.pending else { continue };
                match parse_reply(&buf[..n], false) {
                    Ok(UdpReply::Connect { transaction_id, connection_id })
                        if is_connect && transaction_id == tx =>
                    {
                        c.connection = Some((connection_id, now));
                        c.pending = None;
                    }
                    Ok(UdpReply::Announce { transaction_id, peers, .. })
                        if !is_connect && transaction_id == tx =>
                    {
                        assert!(peers.len() <= 50, "asked for 50 peers, got {}", peers.len());
                        done += 1;
                        c.pending = None;
                    }
                    Ok(UdpReply::Error { transaction_id, .. }) if transaction_id == tx => {
                        errors += 1;
                        c.pending = None;
                        c.connection = None;
                    }
                    _ => {}
                }
            }
            if let Some((_, sent, _)) = c.pending {
                if now.duration_since(sent) < Duration::from_secs(1) {
                    continue;
                }
                resent += 1;
            }
            let tx = next_tx;
            next_tx = next_tx.wrapping_add(1);
            let fresh =
                c.connection.filter(|(_, at)| now.duration_since(*at) < Duration::from_secs(50));
            let sent = match fresh {
                None => {
                    c.pending = Some((tx, now, true));
                    c.socket.send(&encode_connect_request(tx))
                }
                Some((connection_id, _)) => {
                    counter = counter.wrapping_add(1);
                    let mut peer_id = [b'-'; 20];
                    peer_id[..8].copy_from_slice(b"-LOAD01-");
                    peer_id[8..12].copy_from_slice(&counter.to_be_bytes());
                    peer_id[12..16].copy_from_slice(&tx.to_be_bytes());
                    let req = AnnounceRequest {
                        info_hash,
                        peer_id: PeerId(peer_id),
                        port: (counter % peers + 1) as u16,
                        uploaded: 0,
                        downloaded: 0,
                        left: 1_000,
                        event: Event::None,
                        num_want: 50,
                    };
                    c.pending = Some((tx, now, false));
                    c.socket.send(&encode_announce_request(connection_id, tx, counter, &req))
                }
            };
            if sent.is_ok() {
                idle = false;
            }
        }
        if idle {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!("announces/s {:.0}", done as f64 / elapsed);
    println!(
        "announces {done} in {elapsed:.2} s, error replies {errors}, resent after 1 s {resent}"
    );
}
