//! Fuzzes the UDP tracker codecs (BEP 15): `parse_reply` for IPv4 and IPv6 peer lists (client
//! side) and `parse_request` (server side).
//!
//! Properties checked on success: a connect, scrape or (port-0-free) announce reply re-encodes
//! with the server's encoders to the bytes it was read from; a connect request re-encodes with
//! the client's encoder to its first 16 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use torrent::tracker::udp::{
    encode_announce_reply, encode_connect_reply, encode_connect_request, encode_scrape_reply,
    parse_reply, parse_request, UdpReply, UdpRequest,
};

fn check_reply(data: &[u8], ipv6: bool) {
    let Ok(reply) = parse_reply(data, ipv6) else {
        return;
    };
    match reply {
        UdpReply::Connect {
            transaction_id,
            connection_id,
        } => assert_eq!(
            encode_connect_reply(transaction_id, connection_id),
            data[..16]
        ),
        UdpReply::Announce {
            transaction_id,
            interval,
            leechers,
            seeders,
            peers,
        } => {
            let entry = if ipv6 { 18 } else { 6 };
            // Peers with port 0 are dropped, so only a list without them re-encodes exactly.
            if 20 + peers.len() * entry == data.len() {
                let out =
                    encode_announce_reply(transaction_id, interval, leechers, seeders, &peers);
                assert_eq!(out, data);
            }
        }
        UdpReply::Scrape {
            transaction_id,
            stats,
        } => assert_eq!(encode_scrape_reply(transaction_id, &stats), data),
        UdpReply::Error { message, .. } => assert!(message.chars().count() <= 1024),
    }
}

fuzz_target!(|data: &[u8]| {
    check_reply(data, false);
    check_reply(data, true);
    match parse_request(data) {
        Ok(UdpRequest::Connect { transaction_id }) => {
            assert_eq!(encode_connect_request(transaction_id), data[..16]);
        }
        Ok(UdpRequest::Scrape { info_hashes, .. }) => {
            assert!(info_hashes.len() <= torrent::tracker::udp::MAX_SCRAPE_HASHES);
        }
        _ => {}
    }
});
