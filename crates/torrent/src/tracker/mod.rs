//! Tracker clients and server.
//!
//! These are tokio drivers, not sans-IO cores, but every piece that touches outside bytes is a pure
//! function so it can be fuzzed:
//! - [`http`]: the HTTP(S) tracker client (BEP 3, compact peers BEP 23, `peers6` BEP 7);
//!   [`http::announce_url`] builds the request, [`http::parse_announce_response`] reads the answer.
//! - [`udp`]: the UDP tracker protocol (BEP 15), both directions: request/reply encoders and
//!   parsers ([`udp::parse_reply`], [`udp::parse_request`]) plus the retransmitting client.
//! - [`server`]: [`server::TrackerServer`], an HTTP + UDP tracker on one port number, with its
//!   peer table ([`server::Swarms`]) and query parser ([`server::parse_announce_query`]).
//!
//! This file holds the shared types, [`announce`] (one URL, any scheme we speak) and
//! [`TrackerList`] (BEP 12 tiers).

pub mod http;
pub mod server;
pub mod udp;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::{InfoHash, PeerId};

pub use server::{TrackerConfig, TrackerServer};

/// The interval used when a tracker does not say how often to announce.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1800);

/// The `event` of an announce (BEP 3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Event {
    /// A regular, periodic announce.
    #[default]
    None,
    /// The first announce of a download.
    Started,
    /// The download just finished (sent once).
    Completed,
    /// The client is leaving the swarm.
    Stopped,
}

impl Event {
    /// The value of the HTTP `event` parameter, `None` for a regular announce.
    pub fn as_query_value(self) -> Option<&'static str> {
        match self {
            Event::None => None,
            Event::Started => Some("started"),
            Event::Completed => Some("completed"),
            Event::Stopped => Some("stopped"),
        }
    }
}

/// What a client tells a tracker in one announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceRequest {
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    /// The port our peer listener accepts connections on.
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    /// Bytes still missing; 0 makes us a seeder.
    pub left: u64,
    pub event: Event,
    /// How many peers we would like back.
    pub num_want: u32,
}

/// What a tracker answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceResponse {
    /// How long to wait before the next regular announce; at least one second.
    pub interval: Duration,
    /// Peers to connect to, IPv4 and IPv6 mixed, in the tracker's order.
    pub peers: Vec<SocketAddr>,
    /// Peers with the whole torrent, if the tracker said.
    pub seeders: Option<u32>,
    /// Peers still downloading, if the tracker said.
    pub leechers: Option<u32>,
}

/// Why an announce failed.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    /// The tracker refused the announce and said why (`failure reason`, or a BEP 15 error).
    #[error("tracker refused the announce: {0}")]
    Failure(String),
    /// The URL could not be understood.
    #[error("invalid tracker URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    /// The URL uses a scheme we do not speak (for example `wss`).
    #[error(
        "unsupported tracker URL scheme in {0:?} (only http://, https:// and udp:// are supported)"
    )]
    Unsupported(String),
    /// The tracker did not answer within the caller's time limit.
    #[error("tracker did not answer within {0:?}")]
    Timeout(Duration),
    /// A network error: name resolution, connection refused, reset, ...
    #[error("network error talking to the tracker: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP exchange failed below the level of the tracker protocol.
    #[error("HTTP error talking to the tracker: {0}")]
    Http(String),
    /// The tracker answered with an HTTP status other than 200 and no readable failure reason.
    #[error("tracker answered HTTP status {0}")]
    HttpStatus(u16),
    /// The tracker's answer was larger than we accept.
    #[error("tracker response exceeds {limit} bytes")]
    ResponseTooLarge { limit: usize },
    /// The tracker's answer could not be parsed.
    #[error("malformed tracker response: {0}")]
    Malformed(String),
    /// A [`TrackerList`] with no URLs in it.
    #[error("the torrent lists no trackers")]
    NoTrackers,
    /// Every tracker of a [`TrackerList`] failed; `last` is the error of the last one tried.
    #[error("all {tried} trackers failed; last error: {last}")]
    AllFailed { tried: usize, last: Box<TrackerError> },
}

/// Announces to one tracker URL: `http://` and `https://` speak HTTP (BEP 3), `udp://` speaks
/// BEP 15. Anything else returns [`TrackerError::Unsupported`]. The whole exchange,
/// name resolution and retransmissions included, is bounded by `timeout`.
pub async fn announce(
    url: &str,
    req: &AnnounceRequest,
    timeout: Duration,
) -> Result<AnnounceResponse, TrackerError> {
    announce_from(url, req, timeout, None).await
}

/// [`announce`] from the address `local`, if given: the address the node listens on, so the
/// tracker hands out the one its peers can reach (a tracker of the other family is then out
/// of reach: nothing leaves from another address).
pub async fn announce_from(
    url: &str,
    req: &AnnounceRequest,
    timeout: Duration,
    local: Option<IpAddr>,
) -> Result<AnnounceResponse, TrackerError> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    let fut = async {
        match scheme.as_deref() {
            Some("http" | "https") => http::announce(url, req, local).await,
            Some("udp") => udp::announce(url, req, udp::SPEC_FIRST_RETRY, local).await,
            Some(_) => Err(TrackerError::Unsupported(url.to_owned())),
            None => Err(TrackerError::InvalidUrl { url: url.to_owned(), reason: "no scheme" }),
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err(TrackerError::Timeout(timeout)),
    }
}

/// Scrapes one tracker URL for `info_hashes` (BEP 48 over HTTP, BEP 15's scrape over UDP):
/// each torrent's seeders, completions and leechers, as the tracker gave them (a torrent it
/// does not know may be missing, or all zeros). Bounded by `timeout` like [`announce`].
pub async fn scrape(
    url: &str,
    info_hashes: &[InfoHash],
    timeout: Duration,
) -> Result<Vec<(InfoHash, http::ScrapeStats)>, TrackerError> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    let fut = async {
        match scheme.as_deref() {
            Some("http" | "https") => Ok(http::scrape(url, info_hashes)
                .await?
                .into_iter()
                .map(|(h, s)| (InfoHash(h), s))
                .collect()),
            Some("udp") => {
                let stats = udp::scrape(url, info_hashes, udp::SPEC_FIRST_RETRY).await?;
                let each = |(s, c, l)| http::ScrapeStats { seeders: s, completed: c, leechers: l };
                Ok(info_hashes.iter().copied().zip(stats.into_iter().map(each)).collect())
            }
            Some(_) => Err(TrackerError::Unsupported(url.to_owned())),
            None => Err(TrackerError::InvalidUrl { url: url.to_owned(), reason: "no scheme" }),
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err(TrackerError::Timeout(timeout)),
    }
}

/// The trackers of one torrent, in BEP 12 tiers.
///
/// Each tier is shuffled once at construction. [`TrackerList::announce`] tries the tiers in
/// order and the trackers of a tier in order; the first tracker that answers is moved to the
/// front of its tier, so later announces go to it first.
#[derive(Clone, Debug)]
pub struct TrackerList {
    /// Never holds an empty tier.
    tiers: Vec<Vec<String>>,
    /// The address announces leave from (see [`announce_from`]).
    local: Option<IpAddr>,
}

impl TrackerList {
    /// Builds the list, dropping empty tiers and shuffling each tier with `rng`.
    pub fn new<R: rand::Rng>(tiers: Vec<Vec<String>>, rng: &mut R) -> Self {
        use rand::seq::SliceRandom;
        let tiers = tiers
            .into_iter()
            .filter(|t| !t.is_empty())
            .map(|mut t| {
                t.shuffle(rng);
                t
            })
            .collect();
        TrackerList { tiers, local: None }
    }

    /// Announces leave from `ip` (ignored when unspecified: the system chooses).
    pub fn from_address(mut self, ip: IpAddr) -> Self {
        self.local = Some(ip).filter(|ip| !ip.is_unspecified());
        self
    }

    /// True if there is no tracker to announce to.
    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    /// The tiers in their current order (after shuffling and promotions).
    pub fn tiers(&self) -> &[Vec<String>] {
        &self.tiers
    }

    /// Announces to the first tracker that answers, trying tier by tier, tracker by tracker,
    /// each with `timeout_per_tracker`. Returns the URL that answered and its response.
    pub async fn announce(
        &mut self,
        req: &AnnounceRequest,
        timeout_per_tracker: Duration,
    ) -> Result<(String, AnnounceResponse), TrackerError> {
        let mut tried = 0;
        let mut last = None;
        for tier in &mut self.tiers {
            for i in 0..tier.len() {
                tried += 1;
                match announce_from(&tier[i], req, timeout_per_tracker, self.local).await {
                    Ok(resp) => {
                        let url = tier.remove(i);
                        tier.insert(0, url.clone());
                        return Ok((url, resp));
                    }
                    Err(e) => {
                        tracing::debug!(url = %tier[i], error = %e, "tracker announce failed");
                        last = Some(e);
                    }
                }
            }
        }
        match last {
            None => Err(TrackerError::NoTrackers),
            Some(last) => Err(TrackerError::AllFailed { tried, last: Box::new(last) }),
        }
    }
}

/// Reads 6-byte compact IPv4 peers (BEP 23) or 18-byte compact IPv6 peers (BEP 7).
/// Peers with port 0 are skipped. `None` if the length is not a multiple of the entry size.
pub(crate) fn parse_compact_peers(bytes: &[u8], ipv6: bool) -> Option<Vec<SocketAddr>> {
    let entry = if ipv6 { 18 } else { 6 };
    if !bytes.len().is_multiple_of(entry) {
        return None;
    }
    let peers = bytes
        .chunks_exact(entry)
        .filter_map(|c| {
            let (ip, port) = c.split_at(entry - 2);
            let port = u16::from_be_bytes([port[0], port[1]]);
            let ip: std::net::IpAddr = if ipv6 {
                let octets: [u8; 16] = ip.try_into().ok()?;
                octets.into()
            } else {
                let octets: [u8; 4] = ip.try_into().ok()?;
                octets.into()
            };
            (port != 0).then_some(SocketAddr::new(ip, port))
        })
        .collect();
    Some(peers)
}

/// Appends the compact form of `addr` (6 bytes for IPv4, 18 for IPv6) to `out`.
pub(crate) fn push_compact_peer(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => out.extend_from_slice(&a.ip().octets()),
        SocketAddr::V6(a) => out.extend_from_slice(&a.ip().octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    pub(crate) fn request(id: u8, port: u16, left: u64, event: Event) -> AnnounceRequest {
        AnnounceRequest {
            info_hash: InfoHash([7; 20]),
            peer_id: PeerId([id; 20]),
            port,
            uploaded: 0,
            downloaded: 0,
            left,
            event,
            num_want: 50,
        }
    }

    #[test]
    fn compact_peers_round_trip_and_reject_bad_lengths() {
        let a: SocketAddr = "1.2.3.4:6881".parse().unwrap();
        let b: SocketAddr = "[::1]:80".parse().unwrap();
        let mut v4 = Vec::new();
        push_compact_peer(&mut v4, a);
        assert_eq!(v4, [1, 2, 3, 4, 0x1a, 0xe1]);
        assert_eq!(parse_compact_peers(&v4, false), Some(vec![a]));
        let mut v6 = Vec::new();
        push_compact_peer(&mut v6, b);
        assert_eq!(parse_compact_peers(&v6, true), Some(vec![b]));
        assert_eq!(parse_compact_peers(&v4[..5], false), None);
        assert_eq!(parse_compact_peers(&[1, 2, 3, 4, 0, 0], false), Some(vec![]));
    }

    #[test]
    fn tracker_list_drops_empty_tiers() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let list = TrackerList::new(vec![vec![], vec!["http://a/".into()]], &mut rng);
        assert!(!list.is_empty());
        assert_eq!(list.tiers(), &[vec!["http://a/".to_string()]]);
        assert!(TrackerList::new(vec![vec![]], &mut rng).is_empty());
    }

    #[tokio::test]
    async fn unsupported_and_invalid_urls() {
        let req = request(1, 1, 0, Event::None);
        let t = Duration::from_secs(5);
        assert!(matches!(
            announce("wss://example.invalid/announce", &req, t).await,
            Err(TrackerError::Unsupported(_))
        ));
        assert!(matches!(
            announce("example/announce", &req, t).await,
            Err(TrackerError::InvalidUrl { .. })
        ));
    }

    #[tokio::test]
    async fn empty_list_reports_no_trackers() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut list = TrackerList::new(vec![], &mut rng);
        let req = request(1, 1, 0, Event::None);
        assert!(matches!(
            list.announce(&req, Duration::from_secs(1)).await,
            Err(TrackerError::NoTrackers)
        ));
    }

    // ---- loopback: our clients against our server ----

    use std::net::{Ipv4Addr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Every loopback test is bounded by this.
    const TEST_LIMIT: Duration = Duration::from_secs(20);
    const PER_ANNOUNCE: Duration = Duration::from_secs(5);

    async fn start_server() -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
        let server = TrackerServer::bind((Ipv4Addr::LOCALHOST, 0).into(), TrackerConfig::default())
            .await
            .unwrap();
        let addr = server.local_addr();
        (addr, tokio::spawn(server.run()))
    }

    fn local(port: u16) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, port).into()
    }

    /// A port nobody listens on (TCP or UDP) right now.
    fn dead_port() -> u16 {
        let l = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        port
    }

    /// A raw HTTP/1.0 GET, so the server's non-compact form can be requested.
    async fn raw_get(addr: SocketAddr, path: &str) -> (String, Vec<u8>) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&all[..split]).into_owned();
        (head, all[split + 4..].to_vec())
    }

    /// Runs the two-peer scenario through `announce_fn`.
    async fn two_peer_scenario<F, Fut>(announce_fn: F)
    where
        F: Fn(AnnounceRequest) -> Fut,
        Fut: std::future::Future<Output = Result<AnnounceResponse, TrackerError>>,
    {
        let a = request(1, 1001, 100, Event::Started);
        let b = request(2, 1002, 0, Event::Started);
        let r = announce_fn(a.clone()).await.unwrap();
        assert_eq!(r.peers, vec![]);
        assert_eq!((r.seeders, r.leechers), (Some(0), Some(1)));
        assert_eq!(r.interval, Duration::from_secs(60));
        let r = announce_fn(b.clone()).await.unwrap();
        assert_eq!(r.peers, vec![local(1001)]);
        assert_eq!((r.seeders, r.leechers), (Some(1), Some(1)));
        let r = announce_fn(AnnounceRequest { event: Event::None, ..a.clone() }).await.unwrap();
        assert_eq!(r.peers, vec![local(1002)]);
        // B leaves; A no longer sees it.
        let r = announce_fn(AnnounceRequest { event: Event::Stopped, ..b }).await.unwrap();
        assert_eq!(r.peers, vec![]);
        let r = announce_fn(AnnounceRequest { event: Event::None, ..a }).await.unwrap();
        assert_eq!(r.peers, vec![]);
        assert_eq!((r.seeders, r.leechers), (Some(0), Some(1)));
    }

    #[tokio::test]
    async fn http_client_and_server() {
        tokio::time::timeout(TEST_LIMIT, async {
            let (addr, server) = start_server().await;
            let url = format!("http://{addr}/announce");
            two_peer_scenario(|req| {
                let url = url.clone();
                async move { announce(&url, &req, PER_ANNOUNCE).await }
            })
            .await;

            // BEP 48's scrape: the leecher A, and a torrent nobody announced (all zeros).
            let asked = [InfoHash([7; 20]), InfoHash([9; 20])];
            let got = scrape(&url, &asked, PER_ANNOUNCE).await.unwrap();
            let a_leecher = http::ScrapeStats { seeders: 0, completed: 0, leechers: 1 };
            assert_eq!(got, vec![(asked[0], a_leecher), (asked[1], Default::default())]);
            // A scrape of everything is refused, in bencode.
            let (head, body) = raw_get(addr, "/scrape").await;
            assert!(head.starts_with("HTTP/1.0 200"), "{head}");
            assert!(matches!(http::parse_scrape_response(&body), Err(TrackerError::Failure(_))));
            // Another path is a 404 that says what this server is; a bad query is a bencoded
            // failure with status 200.
            let (head, body) = raw_get(addr, "/favicon.ico").await;
            assert!(head.starts_with("HTTP/1.0 404"), "{head}");
            assert!(String::from_utf8_lossy(&body).contains("BitTorrent tracker"));
            let (head, body) = raw_get(addr, "/announce?port=1").await;
            assert!(head.starts_with("HTTP/1.0 200"), "{head}");
            match http::parse_announce_response(&body) {
                Err(TrackerError::Failure(reason)) => {
                    assert_eq!(reason, "missing parameter info_hash")
                }
                other => panic!("unexpected {other:?}"),
            }
            server.abort();
        })
        .await
        .expect("test timed out");
    }

    #[tokio::test]
    async fn http_non_compact_reply() {
        tokio::time::timeout(TEST_LIMIT, async {
            let (addr, server) = start_server().await;
            let url = format!("http://{addr}/announce");
            announce(&url, &request(1, 1001, 5, Event::Started), PER_ANNOUNCE)
                .await
                .unwrap();
            let b = request(2, 1002, 5, Event::Started);
            let query = http::announce_url("/announce", &b).replace("compact=1", "compact=0");
            let (_, body) = raw_get(addr, &query).await;
            // Dictionary form, with the peer id.
            let needle = b"d2:ip9:127.0.0.17:peer id20:\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x014:porti1001ee";
            assert!(
                body.windows(needle.len()).any(|w| w == needle),
                "{}",
                String::from_utf8_lossy(&body)
            );
            let r = http::parse_announce_response(&body).unwrap();
            assert_eq!(r.peers, vec![local(1001)]);
            assert_eq!((r.seeders, r.leechers), (Some(0), Some(2)));
            server.abort();
        })
        .await
        .expect("test timed out");
    }

    #[tokio::test]
    async fn udp_client_and_server() {
        tokio::time::timeout(TEST_LIMIT, async {
            let (addr, server) = start_server().await;
            let url = format!("udp://{addr}/announce");
            two_peer_scenario(|req| {
                let url = url.clone();
                async move {
                    // A short first retry keeps a lost loopback datagram cheap.
                    udp::announce(&url, &req, Duration::from_secs(1), None).await
                }
            })
            .await;
            // BEP 15's scrape: the leecher A, and a torrent nobody announced.
            let asked = [InfoHash([7; 20]), InfoHash([9; 20])];
            let got = scrape(&url, &asked, PER_ANNOUNCE).await.unwrap();
            let a_leecher = http::ScrapeStats { seeders: 0, completed: 0, leechers: 1 };
            assert_eq!(got, vec![(asked[0], a_leecher), (asked[1], Default::default())]);
            // A forged connection id is refused with an error reply.
            let sock = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let bytes =
                udp::encode_announce_request(12345, 9, 0, &request(3, 1003, 1, Event::None));
            sock.send_to(&bytes, addr).await.unwrap();
            let mut buf = [0u8; 256];
            let n = sock.recv(&mut buf).await.unwrap();
            assert_eq!(
                udp::parse_reply(&buf[..n], false),
                Ok(udp::UdpReply::Error {
                    transaction_id: 9,
                    message: "invalid or expired connection id".into()
                })
            );
            server.abort();
        })
        .await
        .expect("test timed out");
    }

    #[tokio::test]
    async fn http_and_udp_share_the_port() {
        tokio::time::timeout(TEST_LIMIT, async {
            let (addr, server) = start_server().await;
            // Both protocols are taken on that port number, and both answer (one swarm).
            assert!(StdTcpListener::bind(addr).is_err());
            assert!(StdUdpSocket::bind(addr).is_err());
            let http = format!("http://{addr}/announce");
            let udp = format!("udp://{addr}");
            announce(&http, &request(1, 1001, 5, Event::Started), PER_ANNOUNCE).await.unwrap();
            let r = udp::announce(
                &udp,
                &request(2, 1002, 5, Event::Started),
                Duration::from_secs(1),
                None,
            )
            .await
            .unwrap();
            assert_eq!(r.peers, vec![local(1001)]);
            server.abort();
        })
        .await
        .expect("test timed out");
    }

    #[tokio::test]
    async fn tracker_list_falls_back_and_promotes() {
        tokio::time::timeout(TEST_LIMIT, async {
            let (addr, server) = start_server().await;
            let live = format!("http://{addr}/announce");
            let dead_http = format!("http://127.0.0.1:{}/announce", dead_port());
            let dead_udp = format!("udp://127.0.0.1:{}", dead_port());
            let tiers = vec![vec![dead_udp.clone()], vec![dead_http.clone(), live.clone()]];
            // Pick a seed whose shuffle puts the dead tracker first in the second tier.
            let mut list = (0..)
                .map(|seed| {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                    TrackerList::new(tiers.clone(), &mut rng)
                })
                .find(|l| l.tiers()[1][0] == dead_http)
                .unwrap();
            let req = request(1, 1001, 5, Event::Started);
            let (url, resp) = list.announce(&req, PER_ANNOUNCE).await.unwrap();
            assert_eq!(url, live);
            assert_eq!(resp.peers, vec![]);
            assert_eq!(
                list.tiers(),
                &[vec![dead_udp.clone()], vec![live.clone(), dead_http.clone()]]
            );

            server.abort();
            let _ = server.await;
            match list.announce(&req, PER_ANNOUNCE).await {
                Err(TrackerError::AllFailed { tried: 3, last }) => {
                    assert!(matches!(*last, TrackerError::Io(_)), "{last:?}")
                }
                other => panic!("unexpected {other:?}"),
            }
        })
        .await
        .expect("test timed out");
    }
}
