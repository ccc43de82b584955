//! The UDP tracker protocol (BEP 15), both directions.
//!
//! Pure codecs: [`encode_connect_request`], [`encode_announce_request`] and [`parse_reply`] for
//! the client; [`parse_request`], [`encode_connect_reply`], [`encode_announce_reply`],
//! [`encode_scrape_reply`] and [`encode_error_reply`] for the server. All parsers check lengths
//! and never panic.
//!
//! [`announce`] is the client: connect (to get a connection id), then announce, each step
//! retransmitted after `first_retry · 2^n` (15 s · 2^n per the spec) until the caller's timeout.
//! A connection id older than a minute is refreshed with a new connect before retrying.
//! Replies from the tracker over IPv6 carry 18-byte peers (the BEP 15 IPv6 extension).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::TrackerError;
use super::{parse_compact_peers, push_compact_peer, AnnounceRequest, AnnounceResponse, Event};
use crate::{InfoHash, PeerId};

/// The magic `protocol_id` of a connect request.
pub const PROTOCOL_ID: u64 = 0x417_2710_1980;
/// The first retransmission wait the spec asks for; it doubles after each try.
pub const SPEC_FIRST_RETRY: Duration = Duration::from_secs(15);
/// How long a connection id stays usable (BEP 15).
pub const CONNECTION_ID_LIFETIME: Duration = Duration::from_secs(60);
/// The spec gives up after 8 retransmissions.
const MAX_TRIES: u32 = 9;
/// At most this many info-hashes in one scrape (what fits a 1500-byte packet).
pub const MAX_SCRAPE_HASHES: usize = 74;
/// Largest datagram we read.
pub const MAX_DATAGRAM: usize = 2048;

const ACTION_CONNECT: u32 = 0;
const ACTION_ANNOUNCE: u32 = 1;
const ACTION_SCRAPE: u32 = 2;
const ACTION_ERROR: u32 = 3;

/// Why a datagram could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UdpParseError {
    #[error("datagram of {0} bytes is too short")]
    TooShort(usize),
    #[error("unknown action {0}")]
    UnknownAction(u32),
    #[error("connect request without the BEP 15 protocol id")]
    BadProtocolId,
    #[error("peer list of {0} bytes is not a whole number of entries")]
    BadPeerList(usize),
}

/// A reply from a UDP tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpReply {
    /// Answer to a connect request.
    Connect { transaction_id: u32, connection_id: u64 },
    /// Answer to an announce.
    Announce {
        transaction_id: u32,
        interval: u32,
        leechers: u32,
        seeders: u32,
        peers: Vec<SocketAddr>,
    },
    /// Answer to a scrape: `(seeders, completed, leechers)` per requested hash.
    Scrape { transaction_id: u32, stats: Vec<(u32, u32, u32)> },
    /// The tracker refused; `message` is its text.
    Error { transaction_id: u32, message: String },
}

/// A request to a UDP tracker, as the server reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpRequest {
    /// Asks for a connection id.
    Connect { transaction_id: u32 },
    /// An announce.
    Announce {
        connection_id: u64,
        transaction_id: u32,
        info_hash: InfoHash,
        peer_id: PeerId,
        downloaded: u64,
        left: u64,
        uploaded: u64,
        event: Event,
        /// `None` for the "default" value −1.
        num_want: Option<u32>,
        port: u16,
    },
    /// A scrape of up to [`MAX_SCRAPE_HASHES`] torrents (extra hashes are dropped).
    Scrape { connection_id: u64, transaction_id: u32, info_hashes: Vec<InfoHash> },
}

/// A cursor over a datagram; every read is length-checked.
struct Reader<'a> {
    buf: &'a [u8],
    total: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, total: buf.len() }
    }
    fn take<const N: usize>(&mut self) -> Result<[u8; N], UdpParseError> {
        let (head, rest) =
            self.buf.split_first_chunk::<N>().ok_or(UdpParseError::TooShort(self.total))?;
        self.buf = rest;
        Ok(*head)
    }
    fn u16(&mut self) -> Result<u16, UdpParseError> {
        self.take().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Result<u32, UdpParseError> {
        self.take().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Result<u64, UdpParseError> {
        self.take().map(u64::from_be_bytes)
    }
}

fn event_code(event: Event) -> u32 {
    match event {
        Event::None => 0,
        Event::Completed => 1,
        Event::Started => 2,
        Event::Stopped => 3,
    }
}

fn event_from_code(code: u32) -> Event {
    match code {
        1 => Event::Completed,
        2 => Event::Started,
        3 => Event::Stopped,
        _ => Event::None,
    }
}

/// The 16-byte connect request.
pub fn encode_connect_request(transaction_id: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&PROTOCOL_ID.to_be_bytes());
    out[8..12].copy_from_slice(&ACTION_CONNECT.to_be_bytes());
    out[12..].copy_from_slice(&transaction_id.to_be_bytes());
    out
}

/// The 98-byte announce request (IP field 0: the tracker uses the datagram's source address).
pub fn encode_announce_request(
    connection_id: u64,
    transaction_id: u32,
    key: u32,
    req: &AnnounceRequest,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(98);
    out.extend_from_slice(&connection_id.to_be_bytes());
    out.extend_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
    out.extend_from_slice(&req.info_hash.0);
    out.extend_from_slice(&req.peer_id.0);
    out.extend_from_slice(&req.downloaded.to_be_bytes());
    out.extend_from_slice(&req.left.to_be_bytes());
    out.extend_from_slice(&req.uploaded.to_be_bytes());
    out.extend_from_slice(&event_code(req.event).to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&key.to_be_bytes());
    // num_want is an i32 on the wire; clamp so a huge wish does not read as −1 ("default").
    out.extend_from_slice(&req.num_want.min(i32::MAX as u32).to_be_bytes());
    out.extend_from_slice(&req.port.to_be_bytes());
    out
}

/// Reads a tracker's reply. `ipv6_peers` says whether announce replies carry 18-byte (IPv6) or
/// 6-byte (IPv4) peers, which depends on the address family the request went over.
pub fn parse_reply(buf: &[u8], ipv6_peers: bool) -> Result<UdpReply, UdpParseError> {
    let mut r = Reader::new(buf);
    let action = r.u32()?;
    let transaction_id = r.u32()?;
    match action {
        ACTION_CONNECT => Ok(UdpReply::Connect { transaction_id, connection_id: r.u64()? }),
        ACTION_ANNOUNCE => {
            let interval = r.u32()?;
            let leechers = r.u32()?;
            let seeders = r.u32()?;
            let peers = parse_compact_peers(r.buf, ipv6_peers)
                .ok_or(UdpParseError::BadPeerList(r.buf.len()))?;
            Ok(UdpReply::Announce { transaction_id, interval, leechers, seeders, peers })
        }
        ACTION_SCRAPE => {
            if !r.buf.len().is_multiple_of(12) {
                return Err(UdpParseError::BadPeerList(r.buf.len()));
            }
            let mut stats = Vec::with_capacity(r.buf.len() / 12);
            while !r.buf.is_empty() {
                stats.push((r.u32()?, r.u32()?, r.u32()?));
            }
            Ok(UdpReply::Scrape { transaction_id, stats })
        }
        ACTION_ERROR => Ok(UdpReply::Error {
            transaction_id,
            message: String::from_utf8_lossy(&r.buf[..r.buf.len().min(1024)]).into_owned(),
        }),
        other => Err(UdpParseError::UnknownAction(other)),
    }
}

/// Reads a client's request (server side).
pub fn parse_request(buf: &[u8]) -> Result<UdpRequest, UdpParseError> {
    let mut r = Reader::new(buf);
    let connection_id = r.u64()?;
    let action = r.u32()?;
    let transaction_id = r.u32()?;
    match action {
        ACTION_CONNECT if connection_id == PROTOCOL_ID => {
            Ok(UdpRequest::Connect { transaction_id })
        }
        ACTION_CONNECT => Err(UdpParseError::BadProtocolId),
        ACTION_ANNOUNCE => {
            let info_hash = InfoHash(r.take()?);
            let peer_id = PeerId(r.take()?);
            let downloaded = r.u64()?;
            let left = r.u64()?;
            let uploaded = r.u64()?;
            let event = event_from_code(r.u32()?);
            let _ip = r.u32()?;
            let _key = r.u32()?;
            let num_want = i32::from_be_bytes(r.take()?);
            let port = r.u16()?;
            Ok(UdpRequest::Announce {
                connection_id,
                transaction_id,
                info_hash,
                peer_id,
                downloaded,
                left,
                uploaded,
                event,
                num_want: u32::try_from(num_want).ok(),
                port,
            })
        }
        ACTION_SCRAPE => {
            let info_hashes = r
                .buf
                .chunks_exact(20)
                .take(MAX_SCRAPE_HASHES)
                .filter_map(|c| c.try_into().ok().map(InfoHash))
                .collect();
            Ok(UdpRequest::Scrape { connection_id, transaction_id, info_hashes })
        }
        other => Err(UdpParseError::UnknownAction(other)),
    }
}

/// The 16-byte connect reply.
pub fn encode_connect_reply(transaction_id: u32, connection_id: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&ACTION_CONNECT.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
    out.extend_from_slice(&connection_id.to_be_bytes());
    out
}

/// An announce reply; `peers` must all be of the family the request came over.
pub fn encode_announce_reply(
    transaction_id: u32,
    interval: u32,
    leechers: u32,
    seeders: u32,
    peers: &[SocketAddr],
) -> Vec<u8> {
    let mut compact = Vec::with_capacity(18 * peers.len());
    for &p in peers {
        push_compact_peer(&mut compact, p);
    }
    encode_announce_reply_compact(transaction_id, interval, leechers, seeders, &compact)
}

/// [`encode_announce_reply`] with the peers already in compact form (6 bytes each over IPv4,
/// 18 over IPv6; one family per reply).
pub fn encode_announce_reply_compact(
    transaction_id: u32,
    interval: u32,
    leechers: u32,
    seeders: u32,
    peers: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + peers.len());
    out.extend_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
    out.extend_from_slice(&interval.to_be_bytes());
    out.extend_from_slice(&leechers.to_be_bytes());
    out.extend_from_slice(&seeders.to_be_bytes());
    out.extend_from_slice(peers);
    out
}

/// A scrape reply: `(seeders, completed, leechers)` per requested hash, in request order.
pub fn encode_scrape_reply(transaction_id: u32, stats: &[(u32, u32, u32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 12 * stats.len());
    out.extend_from_slice(&ACTION_SCRAPE.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
    for (s, c, l) in stats {
        out.extend_from_slice(&s.to_be_bytes());
        out.extend_from_slice(&c.to_be_bytes());
        out.extend_from_slice(&l.to_be_bytes());
    }
    out
}

/// An error reply carrying `message`.
pub fn encode_error_reply(transaction_id: u32, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + message.len());
    out.extend_from_slice(&ACTION_ERROR.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
    out.extend_from_slice(message.as_bytes());
    out
}

/// Splits `udp://host:port[/path]` into host and port.
fn host_port(url: &str) -> Result<(String, u16), TrackerError> {
    let invalid = |reason| TrackerError::InvalidUrl { url: url.to_owned(), reason };
    let rest = url.split_once("://").map(|(_, r)| r).ok_or_else(|| invalid("no scheme"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) =
        authority.rsplit_once(':').ok_or_else(|| invalid("udp:// URL without a port"))?;
    let port: u16 = port.parse().map_err(|_| invalid("bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(invalid("no host or port 0"));
    }
    Ok((host.to_owned(), port))
}

/// Which step of the exchange we are in.
enum Step {
    Connect,
    Ask { connection_id: u64, since: Instant },
}

/// Announces over UDP. No overall timeout here: [`super::announce`] adds the caller's; the
/// retransmission schedule starts at `first_retry` and doubles, up to the spec's 8 retries.
pub(crate) async fn announce(
    url: &str,
    req: &AnnounceRequest,
    first_retry: Duration,
    local: Option<IpAddr>,
) -> Result<AnnounceResponse, TrackerError> {
    let key: u32 = rand::random();
    let ask = |connection_id, transaction_id| {
        encode_announce_request(connection_id, transaction_id, key, req)
    };
    match exchange(url, first_retry, local, ask).await? {
        UdpReply::Announce { interval, leechers, seeders, peers, .. } => Ok(AnnounceResponse {
            interval: Duration::from_secs(interval.max(1).into()),
            peers,
            seeders: Some(seeders),
            leechers: Some(leechers),
        }),
        _ => Err(TrackerError::Malformed("UDP tracker answered with the wrong action".into())),
    }
}

/// Scrapes over UDP (BEP 15): `(seeders, completed, leechers)` per info-hash, in order; at
/// most [`MAX_SCRAPE_HASHES`] are asked. Timeouts as in [`announce`].
pub(crate) async fn scrape(
    url: &str,
    info_hashes: &[InfoHash],
    first_retry: Duration,
) -> Result<Vec<(u32, u32, u32)>, TrackerError> {
    let hashes = &info_hashes[..info_hashes.len().min(MAX_SCRAPE_HASHES)];
    let ask = |connection_id, transaction_id| {
        encode_scrape_request(connection_id, transaction_id, hashes)
    };
    match exchange(url, first_retry, None, ask).await? {
        UdpReply::Scrape { stats, .. } if stats.len() == hashes.len() => Ok(stats),
        UdpReply::Scrape { stats, .. } => Err(TrackerError::Malformed(format!(
            "UDP scrape answered {} torrents of {}",
            stats.len(),
            hashes.len()
        ))),
        _ => Err(TrackerError::Malformed("UDP tracker answered with the wrong action".into())),
    }
}

/// A scrape request: connection id, action 2, transaction id, then the info-hashes.
pub fn encode_scrape_request(
    connection_id: u64,
    transaction_id: u32,
    info_hashes: &[InfoHash],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 20 * info_hashes.len());
    out.extend_from_slice(&connection_id.to_be_bytes());
    out.extend_from_slice(&ACTION_SCRAPE.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
    for h in info_hashes {
        out.extend_from_slice(&h.0);
    }
    out
}

/// BEP 15's exchange: connect, then the request `ask` makes from the connection id and a
/// transaction id, with retransmissions; the tracker's answer to it (an error reply is
/// [`TrackerError::Failure`]). From `local` when given (a tracker of the other family is then
/// out of reach, as it is over HTTP: nothing leaves from another address).
async fn exchange(
    url: &str,
    first_retry: Duration,
    local: Option<IpAddr>,
    ask: impl Fn(u64, u32) -> Vec<u8>,
) -> Result<UdpReply, TrackerError> {
    let (host, port) = host_port(url)?;
    let target = tokio::net::lookup_host((host.as_str(), port)).await?.next().ok_or_else(|| {
        TrackerError::InvalidUrl { url: url.to_owned(), reason: "host name resolves to no address" }
    })?;
    let local: SocketAddr = match (target.ip(), local) {
        (_, Some(ip)) if ip.is_ipv4() == target.is_ipv4() => (ip, 0).into(),
        (_, Some(ip)) => {
            let why = format!("the tracker is at {target}, and announces leave from {ip} only");
            return Err(TrackerError::Io(std::io::Error::other(why)));
        }
        (IpAddr::V4(_), None) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        (IpAddr::V6(_), None) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let ipv6 = target.is_ipv6();
    let socket = UdpSocket::bind(local).await?;
    // Connecting filters out datagrams from anyone else and surfaces ICMP "port unreachable"
    // as ConnectionRefused, so a dead tracker on a reachable host fails fast.
    socket.connect(target).await?;

    let mut step = Step::Connect;
    let mut tries = 0;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while tries < MAX_TRIES {
        if let Step::Ask { since, .. } = step {
            if since.elapsed() >= CONNECTION_ID_LIFETIME {
                step = Step::Connect;
            }
        }
        let transaction_id: u32 = rand::random();
        let datagram = match step {
            Step::Connect => encode_connect_request(transaction_id).to_vec(),
            Step::Ask { connection_id, .. } => ask(connection_id, transaction_id),
        };
        socket.send(&datagram).await?;
        let deadline = Instant::now() + first_retry.saturating_mul(1 << tries);
        let reply = loop {
            let n = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Err(_) => break None,
                Ok(n) => n?,
            };
            match parse_reply(&buf[..n], ipv6) {
                Ok(reply) if reply_transaction_id(&reply) == transaction_id => break Some(reply),
                Ok(_) => tracing::debug!(%url, "UDP tracker reply with a stale transaction id"),
                Err(e) => tracing::debug!(%url, error = %e, "unreadable UDP tracker reply"),
            }
        };
        let Some(reply) = reply else {
            tries += 1;
            continue;
        };
        match (reply, &step) {
            (UdpReply::Error { message, .. }, _) => return Err(TrackerError::Failure(message)),
            (UdpReply::Connect { connection_id, .. }, Step::Connect) => {
                step = Step::Ask { connection_id, since: Instant::now() };
                tries = 0;
            }
            (UdpReply::Connect { .. }, Step::Ask { .. }) | (_, Step::Connect) => {
                return Err(TrackerError::Malformed(
                    "UDP tracker answered with the wrong action".into(),
                ))
            }
            (reply, Step::Ask { .. }) => return Ok(reply),
        }
    }
    Err(TrackerError::Timeout(first_retry.saturating_mul((1 << MAX_TRIES) - 1)))
}

fn reply_transaction_id(reply: &UdpReply) -> u32 {
    match reply {
        UdpReply::Connect { transaction_id, .. }
        | UdpReply::Announce { transaction_id, .. }
        | UdpReply::Scrape { transaction_id, .. }
        | UdpReply::Error { transaction_id, .. } => *transaction_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::tests::request;

    #[test]
    fn request_round_trip() {
        let req = request(9, 6881, 1234, Event::Started);
        let bytes = encode_announce_request(42, 7, 99, &req);
        assert_eq!(bytes.len(), 98);
        assert_eq!(
            parse_request(&bytes),
            Ok(UdpRequest::Announce {
                connection_id: 42,
                transaction_id: 7,
                info_hash: req.info_hash,
                peer_id: req.peer_id,
                downloaded: 0,
                left: 1234,
                uploaded: 0,
                event: Event::Started,
                num_want: Some(50),
                port: 6881,
            })
        );
        assert_eq!(
            parse_request(&encode_connect_request(5)),
            Ok(UdpRequest::Connect { transaction_id: 5 })
        );
    }

    #[test]
    fn reply_round_trip() {
        let peers: Vec<SocketAddr> = vec!["1.2.3.4:5".parse().unwrap()];
        assert_eq!(
            parse_reply(&encode_announce_reply(3, 60, 1, 2, &peers), false),
            Ok(UdpReply::Announce {
                transaction_id: 3,
                interval: 60,
                leechers: 1,
                seeders: 2,
                peers
            })
        );
        assert_eq!(
            parse_reply(&encode_connect_reply(3, 77), false),
            Ok(UdpReply::Connect { transaction_id: 3, connection_id: 77 })
        );
        assert_eq!(
            parse_reply(&encode_error_reply(4, "go away"), false),
            Ok(UdpReply::Error { transaction_id: 4, message: "go away".into() })
        );
        assert_eq!(
            parse_reply(&encode_scrape_reply(4, &[(1, 2, 3)]), false),
            Ok(UdpReply::Scrape { transaction_id: 4, stats: vec![(1, 2, 3)] })
        );
    }

    #[test]
    fn rejects_truncated_and_garbage() {
        let req = request(9, 6881, 1234, Event::Started);
        let announce = encode_announce_request(42, 7, 99, &req);
        for n in 0..announce.len() {
            assert_eq!(parse_request(&announce[..n]), Err(UdpParseError::TooShort(n)));
        }
        let mut bad_magic = encode_connect_request(1);
        bad_magic[0] = 9;
        assert_eq!(parse_request(&bad_magic), Err(UdpParseError::BadProtocolId));
        assert_eq!(
            parse_request(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0]),
            Err(UdpParseError::UnknownAction(9))
        );
        let reply = encode_announce_reply(3, 60, 1, 2, &["1.2.3.4:5".parse().unwrap()]);
        assert_eq!(
            parse_reply(&reply[..reply.len() - 1], false),
            Err(UdpParseError::BadPeerList(5))
        );
        assert_eq!(parse_reply(&reply[..10], false), Err(UdpParseError::TooShort(10)));
        assert_eq!(parse_reply(&[], true), Err(UdpParseError::TooShort(0)));
        assert!(parse_reply(&encode_connect_reply(1, 2)[..15], false).is_err());
    }

    #[test]
    fn url_host_port() {
        assert_eq!(
            host_port("udp://tracker.example:6969/announce").unwrap(),
            ("tracker.example".to_string(), 6969)
        );
        assert_eq!(host_port("udp://[::1]:80").unwrap(), ("::1".to_string(), 80));
        assert!(host_port("udp://tracker.example/announce").is_err());
        assert!(host_port("udp://:80").is_err());
    }
}
