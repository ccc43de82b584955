//! One peer connection's I/O: the handshake, a reader task that turns bytes into messages for
//! the torrent task, and a writer task that sends what the torrent task decides (reading block
//! data from storage itself, so uploads do not pass through the torrent task).

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

use super::stream::{PeerReadHalf, PeerStream, PeerWriteHalf};
use super::Event;
use crate::metainfo::InfoHash;
use crate::proto::mse::{self, Cipher, CryptoSet, Mse, Role};
use crate::proto::wire::{self, Handshake, Message, HANDSHAKE_LEN, PIECE_HEADER_LEN};
use crate::proto::{BlockRef, PeerKey};
use crate::ratelimit::RateLimiter;
use crate::storage::Storage;
use crate::PeerId;

/// A connection (TCP or uTP) whose handshake has been exchanged.
pub struct Connected {
    pub stream: PeerStream,
    pub addr: SocketAddr,
    pub theirs: Handshake,
    pub outgoing: bool,
    /// The RC4 streams when the connection is encrypted (MSE/PE with RC4 selected); boxed, as
    /// they are large (two 256-byte states) and most connections have none.
    pub crypto: Option<Box<StreamCrypto>>,
    /// Payload the peer sent right after its handshake, already decrypted.
    pub pending: Vec<u8>,
}

impl Connected {
    /// The receiving and sending sides, each with its RC4 stream if the connection is
    /// encrypted.
    pub fn into_halves(self) -> (ReadHalf, WriteHalf) {
        let (rd, wr) = self.stream.into_split();
        let (encrypt, decrypt) = match self.crypto {
            Some(c) => (Some(c.encrypt), Some(c.decrypt)),
            None => (None, None),
        };
        (ReadHalf { rd, decrypt, pending: self.pending }, WriteHalf { wr, encrypt })
    }
}

/// Both directions' RC4 streams of an encrypted connection.
pub struct StreamCrypto {
    pub encrypt: Cipher,
    pub decrypt: Cipher,
}

/// Which transports peers are dialled and accepted over (qBittorrent's "peer connection
/// protocol": TCP and µTP, TCP, µTP).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// Both accepted; dialled over TCP first, then uTP (see [`connect`]).
    #[default]
    Both,
    Tcp,
    Utp,
}

/// What dials may use, owned so that dialling tasks can keep it: the transports allowed and
/// our uTP socket.
#[derive(Clone, Default)]
pub struct Dialer {
    pub transport: Transport,
    pub utp: Option<std::sync::Arc<utp::driver::UtpSocket>>,
}

impl Dialer {
    /// How one dial goes (TCP when there is no uTP socket: a session that must speak uTP alone
    /// refuses to start without one).
    pub fn via(&self) -> Via<'_> {
        match (self.transport, self.utp.as_deref()) {
            (Transport::Both, Some(u)) => Via::Both(u),
            (Transport::Utp, Some(u)) => Via::Utp(u),
            _ => Via::Tcp,
        }
    }
}

/// The transports one dial may use.
#[derive(Clone, Copy)]
pub enum Via<'a> {
    Tcp,
    /// TCP first, then uTP on this socket.
    Both(&'a utp::driver::UtpSocket),
    Utp(&'a utp::driver::UtpSocket),
}

/// How connections are encrypted (MSE/PE).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Encryption {
    /// Accept both; dial with an encrypted handshake offering RC4 and plaintext, and again in
    /// plain if that fails (libtorrent's default). When a peer offers both we select plaintext
    /// for the payload, as libtorrent does unless told `prefer_rc4`: the handshake is hidden,
    /// the bulk is not paid for twice.
    #[default]
    Prefer,
    /// Encrypted handshakes only, RC4 for the payload; plain BitTorrent is refused.
    Require,
    /// Plain BitTorrent only.
    Disable,
}

/// Opens a TCP connection to `addr`, leaving from `local` when it is a specific address of
/// the same family (the address the node listens on: `--bind`), else from the system's choice.
pub async fn dial(addr: SocketAddr, local: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(ip) = local.filter(|ip| !ip.is_unspecified() && ip.is_ipv4() == addr.is_ipv4()) {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}

/// Opens a connection to `addr` over uTP (`utp` given) or TCP (from `local`, see [`dial`]).
async fn open(
    addr: SocketAddr,
    local: Option<IpAddr>,
    utp: Option<&utp::driver::UtpSocket>,
) -> io::Result<PeerStream> {
    match utp {
        Some(u) => Ok(PeerStream::Utp(u.connect(addr).await?)),
        None => Ok(PeerStream::Tcp(dial(addr, local).await?)),
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

/// Connects to `addr` and exchanges handshakes; the peer must answer for `info_hash`. With
/// [`Via::Both`], over TCP first (from `local`, see [`dial`]); when that fails (refused,
/// unanswered, or a peer that takes the TCP connection and drops it, as a libtorrent set to
/// uTP only does), over uTP (BEP 29), each with half of `timeout`. TCP first, because every
/// client speaks it (aria2 has no uTP) and a peer without TCP refuses at once, where a uTP SYN
/// to a peer without uTP waits out a timeout (both carry a swarm at about the same speed:
/// README, "uTP"); uTP reaches the peers that speak only it.
pub async fn connect(
    addr: SocketAddr,
    local: Option<IpAddr>,
    via: Via<'_>,
    info_hash: InfoHash,
    our_id: PeerId,
    timeout: Duration,
    encryption: Encryption,
) -> io::Result<Connected> {
    let over = |utp, limit| connect_over(addr, local, utp, info_hash, our_id, limit, encryption);
    // uTP only where our UDP socket can reach (its address family).
    let reaches = |u: &utp::driver::UtpSocket| u.local_addr().is_ipv4() == addr.is_ipv4();
    let u = match via {
        Via::Tcp => return over(None, timeout).await,
        Via::Both(u) if !reaches(u) => return over(None, timeout).await,
        Via::Both(u) => u,
        Via::Utp(u) if !reaches(u) => {
            let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("uTP only, and our uTP socket is not {family}"),
            ));
        }
        Via::Utp(u) => return over(Some(u), timeout).await,
    };
    match over(None, timeout / 2).await {
        Ok(c) => Ok(c),
        Err(tcp) => {
            debug!(%addr, "over TCP: {tcp}; trying uTP");
            match over(Some(u), timeout / 2).await {
                Ok(c) => Ok(c),
                // No uTP there: what went wrong over TCP is the error worth reporting (a peer
                // that closed on our handshake may want the other encryption, say).
                Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut) => Err(tcp),
                Err(e) => Err(e),
            }
        }
    }
}

/// [`connect`] over one transport (uTP when `utp` is given), within `timeout`.
async fn connect_over(
    addr: SocketAddr,
    local: Option<IpAddr>,
    utp: Option<&utp::driver::UtpSocket>,
    info_hash: InfoHash,
    our_id: PeerId,
    timeout: Duration,
    encryption: Encryption,
) -> io::Result<Connected> {
    let started = tokio::time::Instant::now();
    let plain = || async {
        let mut stream = open(addr, local, utp).await?;
        stream.set_nodelay()?;
        stream.write_all(&Handshake::new(info_hash, our_id).encode()).await?;
        let theirs = read_handshake(&mut stream).await?;
        if theirs.info_hash != info_hash {
            return Err(invalid("peer answered for another torrent"));
        }
        Ok(Connected { stream, addr, theirs, outgoing: true, crypto: None, pending: Vec::new() })
    };
    let encrypted = |mut stream: PeerStream, provide| async move {
        stream.set_nodelay()?;
        let role = Role::Initiator {
            info_hash,
            provide,
            initial_payload: Handshake::new(info_hash, our_id).encode().to_vec(),
        };
        let (_, crypto, received) = run_mse(&mut stream, role).await?;
        let (theirs, crypto, pending) = finish_handshake(&mut stream, crypto, received).await?;
        if theirs.info_hash != info_hash {
            return Err(invalid("peer answered for another torrent"));
        }
        Ok(Connected { stream, addr, theirs, outgoing: true, crypto, pending })
    };
    let handshake = || timed_out("handshake");
    match encryption {
        Encryption::Disable => {
            tokio::time::timeout(timeout, plain()).await.map_err(|_| handshake())?
        }
        Encryption::Require => {
            let attempt = async { encrypted(open(addr, local, utp).await?, CryptoSet::RC4).await };
            tokio::time::timeout(timeout, attempt).await.map_err(|_| handshake())?
        }
        Encryption::Prefer => {
            // A connect that fails is final. An encrypted handshake that fails (the peer
            // breaks it off, answers what we refuse, or stays silent for half the time
            // allowed) is tried again in plain with the rest, as libtorrent does.
            let stream = tokio::time::timeout(timeout, open(addr, local, utp))
                .await
                .map_err(|_| timed_out("connect"))??;
            let first = tokio::time::timeout(timeout / 2, encrypted(stream, CryptoSet::BOTH)).await;
            let why = match first {
                Ok(Ok(c)) => return Ok(c),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_string(),
            };
            debug!(%addr, "encrypted handshake failed ({why}); trying plain");
            let left = timeout.saturating_sub(started.elapsed());
            tokio::time::timeout(left, plain()).await.map_err(|_| handshake())?
        }
    }
}

/// Reads an incoming peer's handshake, plain or encrypted as `encryption` allows; `lookup`
/// finds the torrent it asks for (our peer id for it, and what to hand the connection to), and
/// `torrents` lists the info-hashes an encrypted handshake may name. An unknown info-hash
/// closes the connection.
pub async fn accept<T>(
    mut stream: PeerStream,
    addr: SocketAddr,
    lookup: impl Fn(&InfoHash) -> Option<(PeerId, T)>,
    torrents: impl FnOnce() -> Vec<InfoHash>,
    timeout: Duration,
    encryption: Encryption,
) -> io::Result<(Connected, T)> {
    tokio::time::timeout(timeout, async {
        stream.set_nodelay()?;
        let mut first = [0u8; 20];
        stream.read_exact(&mut first).await?;
        let (theirs, crypto, pending) = if mse::is_plain_handshake(&first) {
            if encryption == Encryption::Require {
                return Err(invalid("peer sent a plain handshake and we require encryption"));
            }
            let mut buf = [0u8; HANDSHAKE_LEN];
            buf[..20].copy_from_slice(&first);
            stream.read_exact(&mut buf[20..]).await?;
            (Handshake::decode(&buf).map_err(|e| invalid(&e.to_string()))?, None, Vec::new())
        } else {
            if encryption == Encryption::Disable {
                return Err(invalid("peer sent no BitTorrent handshake (encryption is disabled)"));
            }
            let allowed =
                if encryption == Encryption::Require { CryptoSet::RC4 } else { CryptoSet::BOTH };
            let role = Role::Responder { torrents: torrents(), allowed };
            let (skey, crypto, received) = run_mse_with(&mut stream, role, &first).await?;
            let done = finish_handshake(&mut stream, crypto, received).await?;
            // The torrent named inside must be the one the encryption handshake proved.
            if done.0.info_hash != skey {
                return Err(invalid("peer's handshake names another torrent than its encryption"));
            }
            done
        };
        let Some((our_id, target)) = lookup(&theirs.info_hash) else {
            return Err(invalid("peer asked for a torrent we do not have"));
        };
        let mut ours = Handshake::new(theirs.info_hash, our_id).encode();
        let mut crypto = crypto;
        if let Some(c) = &mut crypto {
            c.encrypt.apply(&mut ours);
        }
        stream.write_all(&ours).await?;
        Ok((Connected { stream, addr, theirs, outgoing: false, crypto, pending }, target))
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))?
}

async fn run_mse(stream: &mut PeerStream, role: Role) -> io::Result<MseDone> {
    run_mse_with(stream, role, &[]).await
}

/// What an MSE handshake left: the torrent both sides proved they know, the streams (with RC4
/// selected) and the payload received so far, decrypted.
type MseDone = (InfoHash, Option<Box<StreamCrypto>>, Vec<u8>);

/// Drives an MSE handshake core over `stream`, `first` being bytes already read, until it is
/// done, fails, or passes its deadline.
///
/// The core runs on the blocking pool whenever it may compute a key (at the start and on
/// received bytes): each of the key exchange's two modular exponentiations takes about 0.17 ms
/// here, and a burst of handshakes (a viewer joining a swarm of 20 streaming viewers, each
/// side dialling) held the runtime's two threads, and every task on them, for 50–90 ms.
async fn run_mse_with(stream: &mut PeerStream, role: Role, first: &[u8]) -> io::Result<MseDone> {
    use rand::SeedableRng;
    // The thread's RNG cannot move between threads: a generator seeded from it can.
    let mut rng = rand_chacha::ChaCha8Rng::from_rng(&mut rand::rng());
    let first = first.to_vec();
    let mut core = off_runtime(move || {
        let now = std::time::Instant::now();
        let mut core = Mse::new(now, role, &mut rng);
        if !first.is_empty() {
            core.handle(now, &first);
        }
        core
    })
    .await?;
    let mut buf = [0u8; 4096];
    loop {
        while let Some(out) = core.poll() {
            match out {
                mse::Output::Send(bytes) => stream.write_all(&bytes).await?,
                mse::Output::Done(est) => {
                    let est = *est;
                    let crypto = match (est.encrypt, est.decrypt) {
                        (Some(encrypt), Some(decrypt)) => {
                            Some(Box::new(StreamCrypto { encrypt, decrypt }))
                        }
                        _ => None,
                    };
                    return Ok((est.info_hash, crypto, est.received));
                }
                mse::Output::Failed(why) => return Err(invalid(&why)),
            }
        }
        let read = match core.next_deadline() {
            Some(at) => {
                let at = tokio::time::Instant::from_std(at);
                match tokio::time::timeout_at(at, stream.read(&mut buf)).await {
                    Ok(read) => read?,
                    // Past the deadline: the core fails the handshake.
                    Err(_) => {
                        core.handle(std::time::Instant::now(), &[]);
                        continue;
                    }
                }
            }
            None => stream.read(&mut buf).await?,
        };
        if read == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "early eof"));
        }
        let received = buf[..read].to_vec();
        core = off_runtime(move || {
            core.handle(std::time::Instant::now(), &received);
            core
        })
        .await?;
    }
}

/// Runs `f` on the blocking pool.
async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| io::Error::other(e.to_string()))
}

/// Reads the peer's BitTorrent handshake after MSE: from what already came, then from the
/// stream (decrypted). Returns it, what followed it, and the streams.
async fn finish_handshake(
    stream: &mut PeerStream,
    mut crypto: Option<Box<StreamCrypto>>,
    mut received: Vec<u8>,
) -> io::Result<(Handshake, Option<Box<StreamCrypto>>, Vec<u8>)> {
    while received.len() < HANDSHAKE_LEN {
        let mut more = vec![0u8; HANDSHAKE_LEN - received.len()];
        stream.read_exact(&mut more).await?;
        if let Some(c) = &mut crypto {
            c.decrypt.apply(&mut more);
        }
        received.extend_from_slice(&more);
    }
    let head: &[u8; HANDSHAKE_LEN] =
        received[..HANDSHAKE_LEN].try_into().expect("the length was checked above");
    let theirs = Handshake::decode(head).map_err(|e| invalid(&e.to_string()))?;
    received.drain(..HANDSHAKE_LEN);
    Ok((theirs, crypto, received))
}

async fn read_handshake(stream: &mut PeerStream) -> io::Result<Handshake> {
    let mut buf = [0u8; HANDSHAKE_LEN];
    stream.read_exact(&mut buf).await?;
    Handshake::decode(&buf).map_err(|e| invalid(&e.to_string()))
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// What the torrent task asks a connection's writer to do.
#[derive(Debug)]
pub enum Outgoing {
    Msg(Message),
    /// Send this block (read from storage) when the upload limit allows.
    Block(BlockRef),
    /// The peer cancelled this request: drop it if not yet sent.
    Cancel(BlockRef),
    /// We choked the peer: drop every queued block; with `reject`, tell the peer (BEP 6).
    DropBlocks {
        reject: bool,
    },
}

/// Counters a connection shares with the torrent task.
#[derive(Default)]
pub struct PeerCounters {
    /// Payload bytes of PIECE messages written to the socket.
    pub uploaded: AtomicU64,
}

/// Most commands waiting for a connection's writer. An honest peer needs far fewer (at most
/// its requests in flight, ours, and HAVEs); a peer that stops reading while it keeps
/// requesting fills this up and is disconnected, so it cannot grow our memory.
pub const MAX_OUTGOING_QUEUE: usize = 8192;
/// Most block bytes read from storage in one trip to the blocking pool (when uploads are not
/// limited). Measured, swarmcast seed -> libtorrent leecher, 1 GiB: 3.83 s with 256 KiB, 3.55 s
/// with 1 MiB (fewer trips, fewer context switches).
const READ_BATCH_BYTES: usize = 1024 * 1024;
/// A write that makes no progress for this long closes the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// The running tasks of one connection.
pub struct PeerIo {
    tx: mpsc::Sender<Outgoing>,
    /// Set when the queue to the writer was full: the torrent task drops the peer.
    overflowed: AtomicBool,
    pub counters: Arc<PeerCounters>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl PeerIo {
    /// Queues a command for the writer; a full queue marks the connection for closing.
    pub fn push(&self, cmd: Outgoing) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(cmd) {
            self.overflowed.store(true, Ordering::Relaxed);
        }
    }

    /// True once a command could not be queued because the peer does not read.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }
}

impl Drop for PeerIo {
    fn drop(&mut self) {
        // Dropping the connection's state in the torrent task closes the socket: both halves'
        // tasks are stopped so neither outlives the peer's entry.
        self.reader.abort();
        self.writer.abort();
    }
}

/// Limits a connection applies to itself.
pub struct IoLimits {
    /// The torrent's own bucket, then the session's (shared by all its torrents).
    pub upload: [Arc<RateLimiter>; 2],
    pub download: [Arc<RateLimiter>; 2],
    pub max_message: u32,
    /// Most blocks a peer may have queued with us; more requests close the connection.
    pub max_queued_blocks: usize,
    /// The torrent's disk write queue: readers pause while it is over its bound.
    pub disk: Arc<super::disk::DiskBacklog>,
    /// The session's totals, updated as bytes go out.
    pub stats: Arc<super::Stats>,
}

/// Starts the reader and writer tasks of a connection.
pub fn spawn(
    conn: Connected,
    key: PeerKey,
    events: mpsc::Sender<Event>,
    storage: Arc<Storage>,
    limits: Arc<IoLimits>,
) -> PeerIo {
    let (reader, writer) = conn.into_halves();
    let (tx, rx) = mpsc::channel(MAX_OUTGOING_QUEUE);
    let counters = Arc::new(PeerCounters::default());
    let reader = tokio::spawn(read_loop(reader, key, events.clone(), limits.clone()));
    let writer =
        tokio::spawn(write_loop(writer, key, rx, events, storage, limits, counters.clone()));
    PeerIo { tx, overflowed: AtomicBool::new(false), counters, reader, writer }
}

/// A connection's receiving side: the socket, and the RC4 stream if it is encrypted.
pub struct ReadHalf {
    pub rd: PeerReadHalf,
    pub decrypt: Option<Cipher>,
    /// Bytes received with the handshake, decrypted: read before the socket.
    pub pending: Vec<u8>,
}

impl ReadHalf {
    /// Reads what the socket has into `buf` (decrypted); 0 at end of stream.
    pub async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        if !self.pending.is_empty() {
            let n = self.pending.len();
            buf.extend_from_slice(&self.pending);
            self.pending = Vec::new();
            return Ok(n);
        }
        let before = buf.len();
        let n = self.rd.read_buf(buf).await?;
        if let Some(d) = &mut self.decrypt {
            d.apply(&mut buf[before..]);
        }
        Ok(n)
    }
}

/// A connection's sending side: the socket, and the RC4 stream if it is encrypted.
pub struct WriteHalf {
    pub wr: PeerWriteHalf,
    pub encrypt: Option<Cipher>,
}

impl WriteHalf {
    /// Writes `out` (encrypting it in place first), giving up after [`WRITE_TIMEOUT`] without
    /// progress.
    pub async fn write(&mut self, out: &mut [u8]) -> Result<(), String> {
        if let Some(e) = &mut self.encrypt {
            e.apply(out);
        }
        write_timed(&mut self.wr, out).await
    }
}

async fn read_loop(
    mut rd: ReadHalf,
    key: PeerKey,
    events: mpsc::Sender<Event>,
    limits: Arc<IoLimits>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let reason = loop {
        match next_message(&mut buf, limits.max_message) {
            Ok(Some(msg)) => {
                if events.send(Event::Msg(key, msg)).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => break e,
        }
        // A slow disk slows the peers down instead of filling memory.
        limits.disk.wait().await;
        match rd.read_buf(&mut buf).await {
            Ok(0) => break "connection closed by peer".to_string(),
            Ok(n) => {
                for bucket in &limits.download {
                    bucket.acquire(n).await;
                }
            }
            Err(e) => break format!("read error: {e}"),
        }
    };
    let _ = events.send(Event::Closed(key, reason)).await;
}

/// Why a connection's writer stopped.
enum WriteStop {
    /// The socket failed or the peer broke a rule: close this connection.
    Peer(String),
    /// Reading a block from our own disk failed: the torrent stops.
    Disk(String),
}

async fn write_all(wr: &mut WriteHalf, out: &mut [u8]) -> Result<(), WriteStop> {
    wr.write(out).await.map_err(WriteStop::Peer)
}

/// The next whole message in `buf`, if there is one; else makes room for the next read.
/// Every connection's reader (the session's and the magnet fetch's) goes through here.
pub(super) fn next_message(buf: &mut BytesMut, max: u32) -> Result<Option<Message>, String> {
    match wire::decode(buf, max) {
        Ok(Some(msg)) => Ok(Some(msg)),
        Ok(None) => {
            if buf.capacity() - buf.len() < 16 * 1024 {
                buf.reserve(64 * 1024);
            }
            Ok(None)
        }
        Err(e) => Err(format!("protocol error: {e}")),
    }
}

/// Writes `out`, giving up on a peer that does not read for [`WRITE_TIMEOUT`].
pub(super) async fn write_timed(wr: &mut PeerWriteHalf, out: &[u8]) -> Result<(), String> {
    match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(out)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write error: {e}")),
        Err(_) => Err("write timed out: the peer does not read".into()),
    }
}

async fn write_loop(
    mut wr: WriteHalf,
    key: PeerKey,
    mut rx: mpsc::Receiver<Outgoing>,
    events: mpsc::Sender<Event>,
    storage: Arc<Storage>,
    limits: Arc<IoLimits>,
    counters: Arc<PeerCounters>,
) {
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut blocks: VecDeque<BlockRef> = VecDeque::new();
    // Headers and block bytes of the batch being sent; reused (see below).
    let mut scratch: Vec<u8> = Vec::new();
    let mut open = true;
    let result: Result<(), WriteStop> = async {
        loop {
            // Take everything that is ready, so cancels can remove queued blocks.
            if blocks.is_empty() && out.is_empty() {
                match rx.recv().await {
                    Some(cmd) => apply(cmd, &mut out, &mut blocks, limits.max_queued_blocks)?,
                    None => open = false,
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                apply(cmd, &mut out, &mut blocks, limits.max_queued_blocks)?;
            }
            if !out.is_empty() {
                write_all(&mut wr, &mut out).await?;
                out.clear();
            }
            if !blocks.is_empty() {
                // Unlimited, a few blocks at a time (one trip to the blocking pool for up to
                // READ_BATCH_BYTES); under an upload limit one at a time, so no block waits for
                // tokens that its batch-mates took.
                let unlimited = limits.upload.iter().all(|b| b.rate().is_none());
                let mut batch = Vec::new();
                let mut bytes = 0usize;
                if unlimited {
                    while let Some(b) = blocks.front().copied() {
                        if !batch.is_empty() && bytes + b.length as usize > READ_BATCH_BYTES {
                            break;
                        }
                        blocks.pop_front();
                        bytes += b.length as usize;
                        batch.push(b);
                    }
                } else {
                    // Tokens first, then the block: a CANCEL that arrives while they are earned
                    // still removes it. Taken first, the block went out anyway: in `lab swarm`
                    // N = 50, 0.5% of all bytes were endgame blocks sent after their CANCEL.
                    let want = blocks.front().map_or(0, |b| b.length as usize);
                    for bucket in &limits.upload {
                        bucket.acquire(want).await;
                    }
                    while let Ok(cmd) = rx.try_recv() {
                        apply(cmd, &mut out, &mut blocks, limits.max_queued_blocks)?;
                    }
                    let got = blocks.pop_front();
                    let len = got.map_or(0, |b| b.length as usize);
                    for bucket in &limits.upload {
                        if len > want {
                            bucket.acquire(len - want).await;
                        } else {
                            bucket.refund(want - len);
                        }
                    }
                    let Some(b) = got else { continue };
                    bytes = len;
                    batch.push(b);
                }
                // Off the runtime: a slow disk must not stall other connections' tasks. The
                // blocks are read straight into their place in the outgoing bytes, between
                // their headers, in a buffer kept while the connection has blocks to send: no
                // zeroing (after it first grows) and no copy. Profiled (perf, swarmcast seed ->
                // libtorrent, 1 GiB), zeroing a fresh buffer and copying it into the output
                // took 11% of the seed's CPU.
                let st = storage.clone();
                let mut buf = std::mem::take(&mut scratch);
                let (mut buf, len) = tokio::task::spawn_blocking(move || {
                    let total =
                        batch.iter().map(|b| PIECE_HEADER_LEN + b.length as usize).sum::<usize>();
                    if buf.len() < total {
                        buf.resize(total, 0);
                    }
                    let mut at = 0;
                    for b in &batch {
                        let header = Message::piece_header(b.piece, b.offset, b.length as usize);
                        buf[at..at + PIECE_HEADER_LEN].copy_from_slice(&header);
                        at += PIECE_HEADER_LEN;
                        let end = at + b.length as usize;
                        st.read(b.piece, b.offset, &mut buf[at..end])?;
                        at = end;
                    }
                    Ok::<_, io::Error>((buf, at))
                })
                .await
                .map_err(|e| WriteStop::Disk(e.to_string()))?
                .map_err(|e| WriteStop::Disk(e.to_string()))?;
                write_all(&mut wr, &mut buf[..len]).await?;
                // Kept while blocks wait (a busy connection reuses it); an idle one frees it.
                scratch = if blocks.is_empty() { Vec::new() } else { buf };
                counters.uploaded.fetch_add(bytes as u64, Ordering::Relaxed);
                limits.stats.uploaded.fetch_add(bytes as u64, Ordering::Relaxed);
            }
            if !open && blocks.is_empty() {
                let _ = wr.wr.shutdown().await;
                return Ok(());
            }
        }
    }
    .await;
    let ev = match result {
        Ok(()) => return,
        Err(WriteStop::Peer(why)) => Event::Closed(key, why),
        Err(WriteStop::Disk(why)) => Event::DiskFailed(why),
    };
    let _ = events.send(ev).await;
}

fn apply(
    cmd: Outgoing,
    out: &mut BytesMut,
    blocks: &mut VecDeque<BlockRef>,
    max_queued: usize,
) -> Result<(), WriteStop> {
    match cmd {
        Outgoing::Msg(m) => m.encode(out),
        Outgoing::Block(b) => {
            if blocks.len() >= max_queued {
                return Err(WriteStop::Peer(format!("more than {max_queued} requests queued")));
            }
            if !blocks.contains(&b) {
                blocks.push_back(b);
            }
        }
        Outgoing::Cancel(b) => blocks.retain(|q| *q != b),
        Outgoing::DropBlocks { reject } => {
            for b in blocks.drain(..) {
                if reject {
                    Message::RejectRequest { piece: b.piece, offset: b.offset, length: b.length }
                        .encode(out);
                }
            }
        }
    }
    Ok(())
}
