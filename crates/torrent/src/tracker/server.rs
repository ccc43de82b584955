//! A BitTorrent tracker: HTTP (BEP 3, 23) and UDP (BEP 15) on the same port number.
//!
//! Layout:
//! - [`parse_announce_query`]: the pure parser of an HTTP announce's raw query string.
//! - [`Swarms`]: the peer table. It reads no clock (`now` is an argument) and draws peer
//!   subsets from the RNG it is given, so it is testable on its own.
//! - [`TrackerServer`]: the tokio driver; one task serves UDP datagrams and accepts TCP
//!   connections, each HTTP connection runs in a [`JoinSet`] owned by [`TrackerServer::run`],
//!   so dropping or aborting `run` stops everything.
//!
//! Peer-table invariants:
//! - A peer is keyed by the address others should dial: the request's source IP (the `ip`
//!   parameter is ignored, so nobody can point a swarm at a third party) and the announced port.
//! - A peer not seen for `peer_ttl` is never handed out or counted; it is deleted by the sweep
//!   that runs at most once per `interval`, which also drops empty swarms.
//! - At most `max_torrents` swarms and `max_peers_per_torrent` peers per swarm exist, so a
//!   flood of announces cannot exhaust memory. A peer beyond the cap still gets an answer.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bendy::encoding::{Encoder, SingleItemEncoder};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{header, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use percent_encoding::percent_decode;
use rand::rngs::StdRng;
use rand::seq::{IteratorRandom, SliceRandom};
use sha1::{Digest, Sha1};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use super::udp::{self, UdpRequest};
use super::{push_compact_peer, Event};
use crate::{InfoHash, PeerId};

/// Most HTTP connections served at once; more are closed on accept.
const MAX_HTTP_CONNECTIONS: usize = 1024;
/// Time a client gets to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest an HTTP connection (keep-alive included) stays open.
const HTTP_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// How long a UDP connection id is accepted: its minute and the next one.
const CONNECTION_ID_BUCKET: Duration = Duration::from_secs(60);

/// How the tracker behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackerConfig {
    /// The announce interval told to clients.
    pub interval: Duration,
    /// A peer not seen for this long is forgotten.
    pub peer_ttl: Duration,
    /// Most peers returned by one announce, whatever `numwant` asks.
    pub max_peers_returned: u32,
    /// Most torrents tracked at once; announces for new torrents beyond it are refused.
    pub max_torrents: usize,
    /// Most peers remembered per torrent.
    pub max_peers_per_torrent: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        let interval = Duration::from_secs(60);
        TrackerConfig {
            interval,
            peer_ttl: 3 * interval,
            max_peers_returned: 50,
            max_torrents: 100_000,
            max_peers_per_torrent: 10_000,
        }
    }
}

/// An HTTP announce, as read from the query string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceQuery {
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    /// `None` if the client did not say (it then counts as a leecher).
    pub left: Option<u64>,
    pub event: Event,
    /// `None` if absent or negative: the tracker's default applies.
    pub num_want: Option<u32>,
    /// `compact=1` was given.
    pub compact: bool,
    /// `no_peer_id=1` was given (dictionary peers then omit `peer id`).
    pub no_peer_id: bool,
}

/// Why an announce query was refused; the text is sent back as the `failure reason`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("missing parameter {0}")]
    Missing(&'static str),
    #[error("invalid parameter {0}")]
    Invalid(&'static str),
}

/// Parses the raw query string of an HTTP announce (`info_hash=%12%34...&port=6881&...`).
///
/// `info_hash` and `peer_id` are percent-decoded bytes and must be exactly 20 long; `port`
/// is required and non-zero; `uploaded`, `downloaded` default to 0. For a repeated parameter the
/// first occurrence counts. Unknown parameters (including `ip`) are ignored.
pub fn parse_announce_query(query: &[u8]) -> Result<AnnounceQuery, QueryError> {
    let mut info_hash = None;
    let mut peer_id = None;
    let mut port = None;
    let mut uploaded = None;
    let mut downloaded = None;
    let mut left = None;
    let mut event = None;
    let mut num_want = None;
    let mut compact = None;
    let mut no_peer_id = None;

    fn id20(value: &[u8], name: &'static str) -> Result<[u8; 20], QueryError> {
        let bytes: Vec<u8> = percent_decode(value).collect();
        bytes.try_into().map_err(|_| QueryError::Invalid(name))
    }
    fn number<T: std::str::FromStr>(value: &[u8], name: &'static str) -> Result<T, QueryError> {
        let text: Vec<u8> = percent_decode(value).collect();
        std::str::from_utf8(&text)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(QueryError::Invalid(name))
    }

    for pair in query.split(|&b| b == b'&') {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        match key {
            b"info_hash" if info_hash.is_none() => {
                info_hash = Some(InfoHash(id20(value, "info_hash")?))
            }
            b"peer_id" if peer_id.is_none() => peer_id = Some(PeerId(id20(value, "peer_id")?)),
            b"port" if port.is_none() => port = Some(number::<u16>(value, "port")?),
            b"uploaded" if uploaded.is_none() => uploaded = Some(number(value, "uploaded")?),
            b"downloaded" if downloaded.is_none() => {
                downloaded = Some(number(value, "downloaded")?)
            }
            b"left" if left.is_none() => left = Some(number(value, "left")?),
            b"event" if event.is_none() => {
                event = Some(match value {
                    b"started" => Event::Started,
                    b"completed" => Event::Completed,
                    b"stopped" => Event::Stopped,
                    b"" | b"empty" | b"paused" => Event::None,
                    _ => return Err(QueryError::Invalid("event")),
                })
            }
            b"numwant" | b"num_want" if num_want.is_none() => {
                let n: i64 = number(value, "numwant")?;
                num_want = Some(u32::try_from(n).ok());
            }
            b"compact" if compact.is_none() => compact = Some(value == b"1"),
            b"no_peer_id" if no_peer_id.is_none() => no_peer_id = Some(value == b"1"),
            _ => {}
        }
    }
    let port = port.ok_or(QueryError::Missing("port"))?;
    if port == 0 {
        return Err(QueryError::Invalid("port"));
    }
    Ok(AnnounceQuery {
        info_hash: info_hash.ok_or(QueryError::Missing("info_hash"))?,
        peer_id: peer_id.ok_or(QueryError::Missing("peer_id"))?,
        port,
        uploaded: uploaded.unwrap_or(0),
        downloaded: downloaded.unwrap_or(0),
        left,
        event: event.unwrap_or_default(),
        num_want: num_want.flatten(),
        compact: compact.unwrap_or(false),
        no_peer_id: no_peer_id.unwrap_or(false),
    })
}

/// One announce, as the peer table sees it (HTTP and UDP alike).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAnnounce {
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    /// Source IP of the request and the announced port.
    pub addr: SocketAddr,
    pub left: Option<u64>,
    pub event: Event,
    /// Already capped by the caller.
    pub num_want: u32,
}

/// The table's answer to an announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmReply {
    /// Other peers, a random subset in random order.
    pub peers: Vec<(SocketAddr, PeerId)>,
    /// Seeders in the swarm (the requester included).
    pub complete: u32,
    /// Leechers in the swarm (the requester included).
    pub incomplete: u32,
}

/// Scrape numbers of one torrent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwarmStats {
    pub complete: u32,
    /// Times a peer reported `completed`.
    pub downloaded: u32,
    pub incomplete: u32,
}

/// An announce the table refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("tracker is full: it tracks no more torrents")]
    TooManyTorrents,
}

#[derive(Debug)]
struct PeerEntry {
    peer_id: PeerId,
    seeder: bool,
    last_seen: Instant,
}

#[derive(Debug, Default)]
struct Swarm {
    /// A BTreeMap so that a seeded RNG picks the same subsets in every run.
    peers: BTreeMap<SocketAddr, PeerEntry>,
    downloaded: u32,
}

/// The tracker's peer table. See the module docs for its invariants.
///
/// Mutators: [`Swarms::announce`]; getters: [`Swarms::stats`], [`Swarms::torrent_count`].
#[derive(Debug)]
pub struct Swarms {
    config: TrackerConfig,
    torrents: HashMap<InfoHash, Swarm>,
    rng: StdRng,
    next_sweep: Option<Instant>,
}

impl Swarms {
    /// An empty table drawing its random subsets from `rng`.
    pub fn new(config: TrackerConfig, rng: StdRng) -> Self {
        Swarms { config, torrents: HashMap::new(), rng, next_sweep: None }
    }

    /// How many torrents have at least one remembered peer (expired ones included until swept).
    pub fn torrent_count(&self) -> usize {
        self.torrents.len()
    }

    /// Records an announce and picks up to `a.num_want` other live peers for which `wanted`
    /// holds (UDP uses it to return only peers of the request's address family).
    pub fn announce(
        &mut self,
        now: Instant,
        a: &PeerAnnounce,
        wanted: impl Fn(&SocketAddr) -> bool,
    ) -> Result<SwarmReply, Refusal> {
        self.sweep(now);
        let ttl = self.config.peer_ttl;
        let live = |p: &PeerEntry| now.saturating_duration_since(p.last_seen) < ttl;

        if a.event == Event::Stopped {
            let Some(swarm) = self.torrents.get_mut(&a.info_hash) else {
                return Ok(SwarmReply { peers: Vec::new(), complete: 0, incomplete: 0 });
            };
            swarm.peers.remove(&a.addr);
            let (complete, incomplete) = counts(swarm, &live);
            if swarm.peers.is_empty() {
                self.torrents.remove(&a.info_hash);
            }
            return Ok(SwarmReply { peers: Vec::new(), complete, incomplete });
        }

        if !self.torrents.contains_key(&a.info_hash)
            && self.torrents.len() >= self.config.max_torrents
        {
            tracing::warn!(info_hash = %a.info_hash, "torrent table full, refusing announce");
            return Err(Refusal::TooManyTorrents);
        }
        let swarm = self.torrents.entry(a.info_hash).or_default();
        let seeder = a.left == Some(0) || a.event == Event::Completed;
        let has_room = swarm.peers.len() < self.config.max_peers_per_torrent;
        match swarm.peers.get_mut(&a.addr) {
            Some(entry) => {
                if seeder && !entry.seeder && a.event == Event::Completed {
                    swarm.downloaded = swarm.downloaded.saturating_add(1);
                }
                entry.peer_id = a.peer_id;
                entry.seeder = seeder;
                entry.last_seen = now;
            }
            None if has_room => {
                if a.event == Event::Completed {
                    swarm.downloaded = swarm.downloaded.saturating_add(1);
                }
                swarm
                    .peers
                    .insert(a.addr, PeerEntry { peer_id: a.peer_id, seeder, last_seen: now });
            }
            None => tracing::debug!(info_hash = %a.info_hash, "swarm full, not remembering peer"),
        }

        let (complete, incomplete) = counts(swarm, &live);
        let mut peers = swarm
            .peers
            .iter()
            .filter(|(addr, p)| **addr != a.addr && live(p) && wanted(addr))
            .map(|(addr, p)| (*addr, p.peer_id))
            .choose_multiple(&mut self.rng, a.num_want as usize);
        peers.shuffle(&mut self.rng);
        if swarm.peers.is_empty() {
            self.torrents.remove(&a.info_hash);
        }
        Ok(SwarmReply { peers, complete, incomplete })
    }

    /// Scrape numbers of one torrent (all zero if unknown).
    pub fn stats(&self, now: Instant, info_hash: &InfoHash) -> SwarmStats {
        let ttl = self.config.peer_ttl;
        let live = |p: &PeerEntry| now.saturating_duration_since(p.last_seen) < ttl;
        self.torrents.get(info_hash).map_or(SwarmStats::default(), |swarm| {
            let (complete, incomplete) = counts(swarm, &live);
            SwarmStats { complete, downloaded: swarm.downloaded, incomplete }
        })
    }

    /// Deletes expired peers and empty swarms, at most once per interval.
    fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|t| now < t) {
            return;
        }
        self.next_sweep = Some(now + self.config.interval);
        let ttl = self.config.peer_ttl;
        let before = self.torrents.len();
        self.torrents.retain(|_, swarm| {
            swarm.peers.retain(|_, p| now.saturating_duration_since(p.last_seen) < ttl);
            !swarm.peers.is_empty()
        });
        if before != self.torrents.len() {
            tracing::debug!(dropped = before - self.torrents.len(), "swept empty torrents");
        }
    }
}

/// (seeders, leechers) among the live peers of `swarm`.
fn counts(swarm: &Swarm, live: &impl Fn(&PeerEntry) -> bool) -> (u32, u32) {
    let (mut complete, mut incomplete) = (0u32, 0u32);
    for p in swarm.peers.values().filter(|p| live(p)) {
        if p.seeder {
            complete += 1;
        } else {
            incomplete += 1;
        }
    }
    (complete, incomplete)
}

/// What the HTTP and UDP sides share.
struct Shared {
    config: TrackerConfig,
    swarms: Mutex<Swarms>,
    /// Keys the UDP connection ids, so only the address that asked can use one.
    secret: [u8; 16],
    /// Start of the connection-id time buckets.
    epoch: Instant,
}

impl Shared {
    fn announce(
        &self,
        a: &PeerAnnounce,
        wanted: impl Fn(&SocketAddr) -> bool,
    ) -> Result<SwarmReply, Refusal> {
        // A poisoned lock means another request panicked mid-update; the table is still
        // memory-safe and at worst slightly stale, so keep serving.
        let mut swarms = self.swarms.lock().unwrap_or_else(|e| e.into_inner());
        swarms.announce(Instant::now(), a, wanted)
    }

    fn num_want(&self, asked: Option<u32>) -> u32 {
        let max = self.config.max_peers_returned;
        asked.unwrap_or(max).min(max)
    }

    fn connection_id(&self, addr: SocketAddr, bucket: u64) -> u64 {
        let mut h = Sha1::new();
        h.update(self.secret);
        h.update(bucket.to_be_bytes());
        match addr.ip() {
            IpAddr::V4(ip) => h.update(ip.octets()),
            IpAddr::V6(ip) => h.update(ip.octets()),
        }
        h.update(addr.port().to_be_bytes());
        let digest = h.finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(id)
    }

    fn bucket(&self) -> u64 {
        self.epoch.elapsed().as_secs() / CONNECTION_ID_BUCKET.as_secs()
    }

    fn connection_id_valid(&self, addr: SocketAddr, id: u64) -> bool {
        let now = self.bucket();
        self.connection_id(addr, now) == id || (now > 0 && self.connection_id(addr, now - 1) == id)
    }

    fn interval_secs(&self) -> u32 {
        u32::try_from(self.config.interval.as_secs()).unwrap_or(u32::MAX).max(1)
    }
}

/// An HTTP and UDP tracker listening on one port number.
pub struct TrackerServer {
    tcp: TcpListener,
    udp: UdpSocket,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

impl TrackerServer {
    /// Binds TCP on `addr`, then UDP on the same IP and port (if `addr`'s port is 0, the port
    /// the TCP listener got).
    pub async fn bind(addr: SocketAddr, config: TrackerConfig) -> std::io::Result<TrackerServer> {
        use rand::{Rng, SeedableRng};
        let tcp = TcpListener::bind(addr).await?;
        let local_addr = tcp.local_addr()?;
        let udp = UdpSocket::bind(local_addr).await?;
        let mut rng = StdRng::from_os_rng();
        let secret = rng.random();
        tracing::info!(%local_addr, "tracker listening on TCP and UDP");
        Ok(TrackerServer {
            tcp,
            udp,
            local_addr,
            shared: Arc::new(Shared {
                swarms: Mutex::new(Swarms::new(config.clone(), rng)),
                config,
                secret,
                epoch: Instant::now(),
            }),
        })
    }

    /// The address both sockets are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until the future is dropped or its task aborted (which also stops every HTTP
    /// connection, since they live in a `JoinSet` owned here).
    pub async fn run(self) -> std::io::Result<()> {
        let TrackerServer { tcp, udp, shared, .. } = self;
        let mut connections = JoinSet::new();
        let udp_loop = serve_udp(&udp, &shared);
        tokio::pin!(udp_loop);
        loop {
            tokio::select! {
                () = &mut udp_loop => unreachable!("serve_udp never returns"),
                accepted = tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if connections.len() >= MAX_HTTP_CONNECTIONS {
                            tracing::warn!(%peer, "too many HTTP connections, closing new one");
                            continue;
                        }
                        connections.spawn(serve_http(stream, peer, shared.clone()));
                    }
                    Err(e) => {
                        // Typically out of file descriptors: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }
}

/// Serves one HTTP connection.
async fn serve_http(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let response = handle_http(&shared, &req, peer);
        async move { Ok::<_, Infallible>(response) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(HTTP_CONNECTION_LIFETIME, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTP connection error"),
        Err(_) => tracing::debug!(%peer, "HTTP connection closed after its lifetime"),
    }
}

fn handle_http(
    shared: &Shared,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    if req.uri().path() != "/announce" {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"not found")))
            .unwrap_or_default();
    }
    let query = req.uri().query().unwrap_or("");
    let body = match parse_announce_query(query.as_bytes()) {
        Err(e) => {
            tracing::debug!(%peer, error = %e, "bad announce");
            encode_failure(&e.to_string())
        }
        Ok(q) => {
            let announce = PeerAnnounce {
                info_hash: q.info_hash,
                peer_id: q.peer_id,
                addr: SocketAddr::new(peer.ip().to_canonical(), q.port),
                left: q.left,
                event: q.event,
                num_want: shared.num_want(q.num_want),
            };
            tracing::debug!(addr = %announce.addr, info_hash = %q.info_hash, event = ?q.event, "HTTP announce");
            match shared.announce(&announce, |_| true) {
                Ok(reply) => {
                    encode_http_reply(&reply, shared.interval_secs(), q.compact, q.no_peer_id)
                }
                Err(e) => encode_failure(&e.to_string()),
            }
        }
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

/// `d14:failure reason<len>:<reason>e`.
pub fn encode_failure(reason: &str) -> Vec<u8> {
    let mut e = Encoder::new();
    // Cannot fail: one key, emitted in order, nothing nested.
    e.emit_dict(|mut d| d.emit_pair(b"failure reason", reason))
        .and_then(|()| e.get_output())
        .expect("a one-key dictionary always encodes")
}

/// The bencoded reply to an HTTP announce: `complete`, `incomplete`, `interval` and `peers`
/// (compact, IPv6 peers then in `peers6`; or a list of dictionaries).
pub fn encode_http_reply(
    reply: &SwarmReply,
    interval: u32,
    compact: bool,
    no_peer_id: bool,
) -> Vec<u8> {
    let mut e = Encoder::new();
    let result = e.emit_dict(|mut d| {
        d.emit_pair(b"complete", reply.complete)?;
        d.emit_pair(b"incomplete", reply.incomplete)?;
        d.emit_pair(b"interval", interval)?;
        if compact {
            let (mut v4, mut v6) = (Vec::new(), Vec::new());
            for (addr, _) in &reply.peers {
                push_compact_peer(if addr.is_ipv4() { &mut v4 } else { &mut v6 }, *addr);
            }
            d.emit_pair_with(b"peers", |e| e.emit_bytes(&v4))?;
            if !v6.is_empty() {
                d.emit_pair_with(b"peers6", |e| e.emit_bytes(&v6))?;
            }
        } else {
            d.emit_pair_with(b"peers", |e: SingleItemEncoder| {
                e.emit_list(|e| {
                    for (addr, id) in &reply.peers {
                        e.emit_dict(|mut p| {
                            p.emit_pair(b"ip", addr.ip().to_string())?;
                            if !no_peer_id {
                                p.emit_pair_with(b"peer id", |e| e.emit_bytes(&id.0))?;
                            }
                            p.emit_pair(b"port", addr.port())
                        })?;
                    }
                    Ok(())
                })
            })?;
        }
        Ok(())
    });
    // Cannot fail: keys are emitted in sorted order and nesting is three levels deep.
    result.and_then(|()| e.get_output()).expect("sorted keys and shallow nesting always encode")
}

/// Serves UDP datagrams forever; errors are logged, never fatal.
async fn serve_udp(socket: &UdpSocket, shared: &Shared) {
    let mut buf = vec![0u8; udp::MAX_DATAGRAM];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive error");
                continue;
            }
        };
        if let Some(reply) = handle_udp(shared, &buf[..n], from) {
            if let Err(e) = socket.send_to(&reply, from).await {
                tracing::debug!(%from, error = %e, "UDP send error");
            }
        }
    }
}

fn handle_udp(shared: &Shared, datagram: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
    let request = match udp::parse_request(datagram) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%from, error = %e, "unreadable UDP request");
            return None;
        }
    };
    match request {
        UdpRequest::Connect { transaction_id } => Some(udp::encode_connect_reply(
            transaction_id,
            shared.connection_id(from, shared.bucket()),
        )),
        UdpRequest::Announce { connection_id, transaction_id, .. }
        | UdpRequest::Scrape { connection_id, transaction_id, .. }
            if !shared.connection_id_valid(from, connection_id) =>
        {
            Some(udp::encode_error_reply(transaction_id, "invalid or expired connection id"))
        }
        UdpRequest::Announce {
            transaction_id,
            info_hash,
            peer_id,
            left,
            event,
            num_want,
            port,
            ..
        } => {
            if port == 0 {
                return Some(udp::encode_error_reply(transaction_id, "invalid port 0"));
            }
            let ip = from.ip().to_canonical();
            let announce = PeerAnnounce {
                info_hash,
                peer_id,
                addr: SocketAddr::new(ip, port),
                left: Some(left),
                event,
                num_want: shared.num_want(num_want),
            };
            tracing::debug!(addr = %announce.addr, %info_hash, ?event, "UDP announce");
            // The reply's peer format follows the family the request came over.
            let v6 = ip.is_ipv6();
            match shared.announce(&announce, |a| a.is_ipv6() == v6) {
                Ok(reply) => {
                    let peers: Vec<SocketAddr> = reply.peers.iter().map(|(a, _)| *a).collect();
                    Some(udp::encode_announce_reply(
                        transaction_id,
                        shared.interval_secs(),
                        reply.incomplete,
                        reply.complete,
                        &peers,
                    ))
                }
                Err(e) => Some(udp::encode_error_reply(transaction_id, &e.to_string())),
            }
        }
        UdpRequest::Scrape { transaction_id, info_hashes, .. } => {
            let swarms = shared.swarms.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let stats: Vec<_> = info_hashes
                .iter()
                .map(|h| {
                    let s = swarms.stats(now, h);
                    (s.complete, s.downloaded, s.incomplete)
                })
                .collect();
            Some(udp::encode_scrape_reply(transaction_id, &stats))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn ann(id: u8, port: u16, left: Option<u64>, event: Event) -> PeerAnnounce {
        PeerAnnounce {
            info_hash: InfoHash([1; 20]),
            peer_id: PeerId([id; 20]),
            addr: SocketAddr::from(([10, 0, 0, id], port)),
            left,
            event,
            num_want: 50,
        }
    }

    fn swarms(config: TrackerConfig) -> Swarms {
        Swarms::new(config, StdRng::seed_from_u64(7))
    }

    #[test]
    fn query_parses_binary_ids_and_defaults() {
        let q = parse_announce_query(
            b"info_hash=%00%01%02%03%04%05%06%07%08%09%0a%0B%0c%0d%0e%0f%10%11%12%13\
              &peer_id=-SC0100-abcdefghijkl&port=6881&left=5&event=started&compact=1\
              &ip=6.6.6.6&numwant=-1&port=9",
        )
        .unwrap();
        let mut hash = [0u8; 20];
        for (i, b) in hash.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(
            q,
            AnnounceQuery {
                info_hash: InfoHash(hash),
                peer_id: PeerId(*b"-SC0100-abcdefghijkl"),
                port: 6881,
                uploaded: 0,
                downloaded: 0,
                left: Some(5),
                event: Event::Started,
                num_want: None,
                compact: true,
                no_peer_id: false,
            }
        );
    }

    #[test]
    fn query_rejects_bad_input() {
        let ok_ids = "info_hash=aaaaaaaaaaaaaaaaaaaa&peer_id=bbbbbbbbbbbbbbbbbbbb";
        let cases: &[(&str, QueryError)] = &[
            ("", QueryError::Missing("port")),
            (ok_ids, QueryError::Missing("port")),
            (&format!("{ok_ids}&port=0"), QueryError::Invalid("port")),
            (&format!("{ok_ids}&port=70000"), QueryError::Invalid("port")),
            (&format!("{ok_ids}&port=1&left=-1"), QueryError::Invalid("left")),
            (&format!("{ok_ids}&port=1&event=bogus"), QueryError::Invalid("event")),
            ("info_hash=%00&peer_id=bbbbbbbbbbbbbbbbbbbb&port=1", QueryError::Invalid("info_hash")),
            ("peer_id=bbbbbbbbbbbbbbbbbbbb&port=1", QueryError::Missing("info_hash")),
            ("info_hash=aaaaaaaaaaaaaaaaaaaa&port=1&peer_id=%zz", QueryError::Invalid("peer_id")),
        ];
        for (query, expected) in cases {
            assert_eq!(parse_announce_query(query.as_bytes()).as_ref(), Err(expected), "{query}");
        }
        // Garbage bytes, stray separators: an error, not a panic.
        assert!(parse_announce_query(b"&&==&\xff\xfe=%%%&port=%").is_err());
    }

    #[test]
    fn announce_returns_others_and_counts() {
        let mut s = swarms(TrackerConfig::default());
        let t = Instant::now();
        let a = ann(1, 1000, Some(10), Event::Started);
        let b = ann(2, 2000, Some(0), Event::Started);
        let r = s.announce(t, &a, |_| true).unwrap();
        assert_eq!((r.peers.len(), r.complete, r.incomplete), (0, 0, 1));
        let r = s.announce(t, &b, |_| true).unwrap();
        assert_eq!(r.peers, vec![(a.addr, a.peer_id)]);
        assert_eq!((r.complete, r.incomplete), (1, 1));
        let r = s.announce(t, &ann(1, 1000, Some(0), Event::Completed), |_| true).unwrap();
        assert_eq!(r.peers, vec![(b.addr, b.peer_id)]);
        assert_eq!((r.complete, r.incomplete), (2, 0));
        assert_eq!(
            s.stats(t, &a.info_hash),
            SwarmStats { complete: 2, downloaded: 1, incomplete: 0 }
        );
        let r = s.announce(t, &ann(2, 2000, Some(0), Event::Stopped), |_| true).unwrap();
        assert_eq!((r.peers.len(), r.complete, r.incomplete), (0, 1, 0));
        let r = s.announce(t, &ann(1, 1000, Some(0), Event::Stopped), |_| true).unwrap();
        assert_eq!((r.complete, r.incomplete), (0, 0));
        assert_eq!(s.torrent_count(), 0);
    }

    #[test]
    fn num_want_limits_and_filters() {
        let mut s = swarms(TrackerConfig::default());
        let t = Instant::now();
        for id in 1..=10 {
            s.announce(t, &ann(id, 1000, Some(1), Event::None), |_| true).unwrap();
        }
        let mut q = ann(1, 1000, Some(1), Event::None);
        q.num_want = 3;
        let r = s.announce(t, &q, |_| true).unwrap();
        assert_eq!(r.peers.len(), 3);
        assert!(r.peers.iter().all(|(a, _)| *a != q.addr));
        let r = s.announce(t, &q, |a| a.ip() == IpAddr::from([10, 0, 0, 5])).unwrap();
        assert_eq!(r.peers, vec![(SocketAddr::from(([10, 0, 0, 5], 1000)), PeerId([5; 20]))]);
    }

    #[test]
    fn peers_expire_and_tables_are_capped() {
        let config = TrackerConfig {
            interval: Duration::from_secs(1000),
            peer_ttl: Duration::from_secs(10),
            max_peers_returned: 50,
            max_torrents: 1,
            max_peers_per_torrent: 2,
        };
        let mut s = swarms(config);
        let t = Instant::now();
        s.announce(t, &ann(1, 1, Some(1), Event::None), |_| true).unwrap();
        s.announce(t, &ann(2, 1, Some(1), Event::None), |_| true).unwrap();
        // A third peer is answered but not remembered.
        let r = s.announce(t, &ann(3, 1, Some(1), Event::None), |_| true).unwrap();
        assert_eq!((r.peers.len(), r.incomplete), (2, 2));
        let mut other = ann(4, 1, Some(1), Event::None);
        other.info_hash = InfoHash([2; 20]);
        assert_eq!(s.announce(t, &other, |_| true), Err(Refusal::TooManyTorrents));

        // Peer 2 fell silent: expired, so neither returned nor counted, though not yet swept.
        let later = t + Duration::from_secs(10);
        let r = s.announce(later, &ann(1, 1, Some(1), Event::None), |_| true).unwrap();
        assert_eq!((r.peers.len(), r.complete, r.incomplete), (0, 0, 1));
        assert_eq!(s.torrent_count(), 1);

        // By the next sweep peer 1 has expired too: its swarm is dropped and a new torrent fits.
        let r = s.announce(t + Duration::from_secs(1000), &other, |_| true).unwrap();
        assert_eq!((r.peers.len(), r.incomplete), (0, 1));
        assert_eq!(s.torrent_count(), 1);
    }
}
