//! The tokio driver of the BitTorrent engine. A [`Session`] listens on one port for any number
//! of torrents: its acceptor reads each incoming handshake and routes the connection to the
//! torrent with that info-hash (an unknown one is closed unanswered); one upload and one download
//! bucket are shared by all its torrents, each torrent's own limits on top. Each torrent has
//! its outgoing connections, a tracker announcer, a disk thread, and one *torrent task* that
//! owns the sans-IO [`TorrentCore`] and carries out what it decides. Each connection has a reader and a writer task ([`peer`]); they talk to the
//! torrent task over channels, so every protocol decision is made in one place, in arrival order,
//! by the same code the simulator (`sim::swarm`) runs.
//!
//! The driver's own work is I/O: accepting and dialling (handshakes), reading and writing
//! sockets under the rate limits, the disk thread ([`disk`]), the announcer task, and closing a
//! connection whose writer queue overflowed. The core's invariants are listed on
//! [`TorrentCore`].

pub mod disk;
pub mod magnet;
pub mod peer;
pub mod stream;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::metainfo::{Info, InfoHash, Metainfo};
use crate::proto::choker::ChokerConfig;
use crate::proto::picker::PickerConfig;
use crate::proto::torrent::{CoreConfig, Geometry, Input, Output, TorrentCore};
use crate::proto::wire::{Message, DEFAULT_MAX_MESSAGE};
use crate::proto::PeerKey;
use crate::ratelimit::RateLimiter;
use crate::storage::{Existing, Mode, Storage, StorageError};
use crate::tracker::{AnnounceRequest, Event as TrackerEvent, TrackerList};
use crate::{Bitfield, PeerId};
use disk::{DiskJob, DiskQueue};
use peer::{Connected, IoLimits, Outgoing, PeerIo};
pub use peer::{Encryption, Transport};

pub use crate::proto::torrent::{BAN_AFTER_FAILED_PIECES, MAX_CANDIDATES};
/// Most incoming connections in their handshake at once; more are closed at once.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// How a torrent behaves (and, for [`Session::start`], where its one-torrent session listens).
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Where to listen for peers (port 0 picks one); used by [`Session::start`] only.
    pub listen: SocketAddr,
    /// Peers to dial besides those trackers return.
    pub peers: Vec<SocketAddr>,
    /// Bytes per second for all uploads / downloads of this torrent together (the session's
    /// own limits, [`SessionOptions`], apply on top).
    pub upload_limit: Option<u64>,
    pub download_limit: Option<u64>,
    /// Cap on connected peers.
    pub max_peers: usize,
    /// Keep running and seeding once complete (a seed always does).
    pub seed_when_done: bool,
    pub choker: ChokerConfig,
    pub picker: PickerConfig,
    /// Seed for every random choice (`None`: from the OS).
    pub rng_seed: Option<u64>,
    /// Announce to the torrent's trackers.
    pub use_trackers: bool,
    /// Extra trackers (tried after the torrent's own).
    pub extra_trackers: Vec<String>,
    /// Numwant sent to trackers.
    pub num_want: u32,
    /// Cap on one wire message.
    pub max_message: u32,
    /// What a download does with existing files it did not create.
    pub existing: Existing,
    /// A torrent that starts complete super-seeds (BEP 16) until every piece went out once.
    pub super_seed: bool,
    /// Protocol encryption (MSE/PE); used by [`Session::start`] only (a session added to
    /// keeps its own, [`SessionOptions::encryption`]).
    pub encryption: Encryption,
    /// The transports peers use; [`Session::start`] only, as `encryption`.
    pub transport: Transport,
    /// Peer exchange (BEP 11); never for a private torrent, whatever this says.
    pub pex: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            peers: vec![],
            upload_limit: None,
            download_limit: None,
            max_peers: 50,
            seed_when_done: false,
            choker: ChokerConfig::default(),
            picker: PickerConfig::default(),
            rng_seed: None,
            use_trackers: true,
            extra_trackers: vec![],
            num_want: 50,
            max_message: DEFAULT_MAX_MESSAGE,
            existing: Existing::Refuse,
            super_seed: false,
            encryption: Encryption::Prefer,
            transport: Transport::Both,
            pex: true,
        }
    }
}

/// Why a session could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot listen on {addr}: {source} (pick another --port)")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("disk error: {0}")]
    Io(#[from] io::Error),
    #[error(
        "disk error: {0}. The download stopped; fix the disk (free space, permissions) or \
         download elsewhere with -o DIR, then run the same command to resume (verified pieces \
         are kept)"
    )]
    Disk(String),
    #[error("the session stopped before the download completed")]
    Stopped,
    #[error("this torrent is already running in the session")]
    Duplicate,
}

/// Live numbers of a session, readable from any thread (progress bars, labs).
#[derive(Default)]
pub struct Stats {
    pub pieces_total: AtomicU32,
    pub pieces_have: AtomicU32,
    pub bytes_total: AtomicU64,
    /// Verified payload bytes on disk.
    pub bytes_have: AtomicU64,
    /// Payload bytes received / sent.
    pub downloaded: AtomicU64,
    pub uploaded: AtomicU64,
    pub peers: AtomicUsize,
    pub complete: AtomicBool,
    /// Pieces that failed their hash check.
    pub hash_failures: AtomicU32,
    pub banned: AtomicU32,
}

impl Stats {
    /// Fraction of verified bytes, 0.0–1.0.
    pub fn progress(&self) -> f64 {
        let total = self.bytes_total.load(Ordering::Relaxed);
        if total == 0 {
            return 0.0;
        }
        self.bytes_have.load(Ordering::Relaxed) as f64 / total as f64
    }
}

/// Limits and address of a whole session, shared by all its torrents.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Where to listen for peers of every torrent (port 0 picks one).
    pub listen: SocketAddr,
    /// Bytes per second for all uploads / downloads of the session together.
    pub upload_limit: Option<u64>,
    pub download_limit: Option<u64>,
    /// Protocol encryption (MSE/PE) for every connection, incoming and outgoing.
    pub encryption: Encryption,
    /// The transports peers are dialled and accepted over.
    pub transport: Transport,
}

/// What the acceptor needs of each torrent: where its connections go, and the peer id it
/// answers handshakes with.
struct Route {
    events: mpsc::Sender<Event>,
    our_id: PeerId,
}

/// The part of a session its torrents and its acceptor share.
struct Shared {
    local_addr: SocketAddr,
    /// The transports peers use, and uTP (BEP 29) on the UDP port of the same number when it
    /// could be bound: peers that speak only uTP are dialled and accepted there.
    dialer: peer::Dialer,
    upload: Arc<RateLimiter>,
    download: Arc<RateLimiter>,
    /// Running torrents by info-hash (at most one each).
    routes: std::sync::Mutex<BTreeMap<InfoHash, Route>>,
    encryption: Encryption,
    /// Set once a peer broke off a handshake under a strict `encryption` and the person was
    /// told what that may mean (once per session, not once per dial).
    encryption_hinted: AtomicBool,
    /// Set by the first handshake of ours that succeeded: from then on our `encryption` is known
    /// to work, and a peer that closes during a handshake (one shutting down, say) is no reason
    /// to suggest another.
    handshake_worked: AtomicBool,
}

impl Shared {
    fn routes(&self) -> std::sync::MutexGuard<'_, BTreeMap<InfoHash, Route>> {
        // A panic while holding the lock cannot leave the map half-updated (single inserts and
        // removes), so a poisoned lock is still usable.
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A session: one listening port for any number of torrents, incoming handshakes routed by
/// info-hash, one upload and one download bucket shared by all its torrents (each torrent's own
/// limits apply on top). Dropping the session stops accepting; each torrent runs until its
/// [`TorrentHandle`] shuts it down or it finishes.
pub struct Session {
    shared: Arc<Shared>,
    acceptor: tokio::task::JoinHandle<()>,
    /// The datagrams on the uTP port that are not uTP, until a DHT node takes them.
    udp_others: std::sync::Mutex<Option<utp::driver::Others>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// A running torrent of a [`Session`].
pub struct TorrentHandle {
    stats: Arc<Stats>,
    reader: TorrentReader,
    events: mpsc::Sender<Event>,
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    done: watch::Receiver<Option<Result<(), String>>>,
    task: tokio::task::JoinHandle<()>,
    /// A torrent started with [`Session::start`] owns its session.
    _session: Option<Session>,
}

/// Whether we start with data or fetch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Serve existing data (read-only); every piece must verify.
    Seed,
    /// Download into the directory (re-checking what is already there).
    Download,
}

impl Session {
    /// Binds the listening port and starts accepting peers for the torrents added later.
    pub async fn bind(options: SessionOptions) -> Result<Session, SessionError> {
        let listener = TcpListener::bind(options.listen)
            .await
            .map_err(|source| SessionError::Listen { addr: options.listen, source })?;
        let local_addr = listener.local_addr()?;
        let (utp, udp_others) =
            match utp::driver::UtpSocket::bind_sharing(local_addr, Default::default()).await {
                Ok((u, others)) => (Some(Arc::new(u)), Some(others)),
                Err(e) if options.transport == Transport::Utp => {
                    return Err(SessionError::Listen { addr: local_addr, source: e })
                }
                Err(e) => {
                    tracing::warn!("no uTP on UDP {local_addr} ({e}): peers over TCP only");
                    (None, None)
                }
            };
        let shared = Arc::new(Shared {
            local_addr,
            dialer: peer::Dialer { transport: options.transport, utp },
            upload: RateLimiter::new(options.upload_limit),
            download: RateLimiter::new(options.download_limit),
            routes: std::sync::Mutex::new(BTreeMap::new()),
            encryption: options.encryption,
            encryption_hinted: AtomicBool::new(false),
            handshake_worked: AtomicBool::new(false),
        });
        let (tcp, utp) = (accept_loop(listener, shared.clone()), utp_accept_loop(shared.clone()));
        let acceptor = tokio::spawn(async move {
            tokio::join!(tcp, utp);
        });
        let udp_others = std::sync::Mutex::new(udp_others);
        Ok(Session { shared, acceptor, udp_others })
    }

    /// How the session dials peers (for a magnet's metadata fetch before its torrent is added).
    pub fn dialer(&self) -> peer::Dialer {
        self.shared.dialer.clone()
    }

    /// The UDP socket of the session's port and the datagrams on it that are not uTP, for a
    /// DHT node to run on the port peers connect to (as libtorrent's does); `None` without uTP
    /// or once taken.
    pub fn take_udp_others(&self) -> Option<utp::driver::Others> {
        self.udp_others.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// A session with one torrent: binds `config.listen`, with `config`'s limits as the
    /// torrent's own, and starts the torrent. The handle keeps the session alive.
    pub async fn start(
        meta: Metainfo,
        dir: PathBuf,
        role: Role,
        config: SessionConfig,
    ) -> Result<TorrentHandle, SessionError> {
        let session = Session::bind(SessionOptions {
            listen: config.listen,
            upload_limit: None,
            download_limit: None,
            encryption: config.encryption,
            transport: config.transport,
        })
        .await?;
        let mut handle = session.add(meta, dir, role, config).await?;
        handle._session = Some(session);
        Ok(handle)
    }

    /// The address peers reach every torrent of this session on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The info-hashes of the running torrents.
    pub fn torrents(&self) -> Vec<InfoHash> {
        self.shared.routes().keys().copied().collect()
    }

    /// Opens storage, re-checks existing data and starts the torrent on this session's port.
    /// `config.upload_limit` / `download_limit` are the torrent's own limits, on top of the
    /// session's; `config.listen` is not used (the session's port is).
    pub async fn add(
        &self,
        meta: Metainfo,
        dir: PathBuf,
        role: Role,
        config: SessionConfig,
    ) -> Result<TorrentHandle, SessionError> {
        if self.shared.routes().contains_key(&meta.info_hash) {
            return Err(SessionError::Duplicate);
        }
        // A seed is complete from the start and keeps serving: it never ends by itself.
        let config =
            SessionConfig { seed_when_done: config.seed_when_done || role == Role::Seed, ..config };
        let mode = if role == Role::Seed { Mode::ReadOnly } else { Mode::ReadWrite };
        let info = meta.info.clone();
        let shared_info = Arc::new(meta.info.clone());
        let existing = config.existing;
        let storage = tokio::task::spawn_blocking(move || -> Result<_, SessionError> {
            let s = Storage::open_with(&info, &dir, mode, existing)?;
            let have = s.check_existing(|_, _| {})?;
            Ok((s, have))
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))??;
        let (storage, have) = storage;
        let storage = Arc::new(storage);
        let local_addr = self.shared.local_addr;
        let stats = Arc::new(Stats::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (done_tx, done) = watch::channel(None);
        let mut rng = match config.rng_seed {
            Some(s) => ChaCha8Rng::seed_from_u64(s),
            None => ChaCha8Rng::from_os_rng(),
        };
        let our_id = PeerId::generate(&mut rng);
        let torrent = Torrent::new(
            meta,
            storage.clone(),
            have,
            config,
            rng,
            our_id,
            self.shared.clone(),
            stats.clone(),
        )?;
        if role == Role::Seed && !torrent.core.have().is_full() {
            let have = torrent.core.have().count();
            let total = torrent.core.have().len();
            return Err(SessionError::Io(io::Error::other(format!(
                "the data does not match the torrent: {have} of {total} pieces verify \
                 (is --data the file or directory the torrent was made from?)"
            ))));
        }
        {
            let mut routes = self.shared.routes();
            if routes.contains_key(&torrent.info_hash) {
                return Err(SessionError::Duplicate);
            }
            let route = Route { events: torrent.events_tx.clone(), our_id };
            routes.insert(torrent.info_hash, route);
        }
        let events = torrent.events_tx.clone();
        let have_rx = torrent.have_tx.subscribe();
        let task = tokio::spawn(torrent.run(shutdown_rx, done_tx));
        let reader =
            TorrentReader { have: have_rx, storage, info: shared_info, events: events.clone() };
        Ok(TorrentHandle {
            stats,
            reader,
            events,
            local_addr,
            shutdown,
            done,
            task,
            _session: None,
        })
    }
}

/// Accepts peers for every torrent of a session: reads the handshake, finds the torrent by
/// info-hash (an unknown one is closed), answers with that torrent's peer id and hands the
/// connection to its task. At most [`MAX_PENDING_HANDSHAKES`] handshakes run at once.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let Ok((stream, addr)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if shared.dialer.transport == Transport::Utp {
            debug!(%addr, "uTP only: TCP connection closed");
            continue;
        }
        incoming(stream::PeerStream::Tcp(stream), addr, &shared, &handshakes);
    }
}

/// Accepts peers over uTP (never returns; pending forever without a uTP socket).
async fn utp_accept_loop(shared: Arc<Shared>) {
    let Some(utp) = shared.dialer.utp.clone() else {
        return std::future::pending().await;
    };
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let Ok(s) = utp.accept().await else { return };
        let addr = s.peer_addr();
        if shared.dialer.transport == Transport::Tcp {
            debug!(%addr, "TCP only: uTP connection closed");
            continue;
        }
        incoming(stream::PeerStream::Utp(s), addr, &shared, &handshakes);
    }
}

/// Runs an incoming connection's handshake (at most [`MAX_PENDING_HANDSHAKES`] at once per
/// transport) and hands it to its torrent.
fn incoming(
    stream: stream::PeerStream,
    addr: SocketAddr,
    shared: &Arc<Shared>,
    handshakes: &Arc<tokio::sync::Semaphore>,
) {
    let Ok(permit) = handshakes.clone().try_acquire_owned() else {
        debug!(%addr, "too many handshakes in progress: connection closed");
        return;
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let lookup = |ih: &InfoHash| shared.routes().get(ih).map(|r| (r.our_id, r.events.clone()));
        let torrents = || shared.routes().keys().copied().collect();
        let timeout = Duration::from_secs(10);
        match peer::accept(stream, addr, lookup, torrents, timeout, shared.encryption).await {
            Ok((c, events)) => {
                let _ = events.send(Event::Connected(c)).await;
            }
            Err(e) => debug!(%addr, "incoming handshake failed: {e}"),
        }
    });
}

impl TorrentHandle {
    /// Live numbers.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The address peers reach us on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A reader of the torrent's content, for other tasks (an HTTP server, say).
    pub fn reader(&self) -> TorrentReader {
        self.reader.clone()
    }

    /// The torrent's info dictionary (files, piece size).
    pub fn info(&self) -> &Info {
        &self.reader.info
    }

    /// Adds addresses to dial (found by the DHT, say). They join the torrent's candidate list,
    /// which is bounded ([`crate::proto::torrent::MAX_CANDIDATES`]) like the trackers' answers.
    pub async fn add_peers(&self, peers: Vec<SocketAddr>) {
        let _ = self.events.send(Event::Peers(peers)).await;
    }

    /// Waits until the download is complete and every piece verified on disk (immediately for a
    /// seed), or the session ended with an error.
    pub async fn wait_complete(&self) -> Result<(), SessionError> {
        let mut done = self.done.clone();
        loop {
            if self.stats.complete.load(Ordering::Acquire) {
                return Ok(());
            }
            if let Some(r) = done.borrow_and_update().clone() {
                return r.map_err(|e| SessionError::Io(io::Error::other(e)));
            }
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            tick.tick().await;
            tokio::select! {
                r = done.changed() => if r.is_err() { return Err(SessionError::Stopped) },
                _ = tick.tick() => {}
            }
        }
    }

    /// Completes when the torrent's task ends, however it ends: `Some(reason)` for an error (a
    /// disk failure, say), `None` otherwise. It does not borrow the handle, so whoever keeps the
    /// handle can watch it from another task.
    pub fn ended(&self) -> impl std::future::Future<Output = Option<String>> + Send + 'static {
        let mut done = self.done.clone();
        async move {
            loop {
                if let Some(r) = done.borrow_and_update().clone() {
                    return r.err();
                }
                if done.changed().await.is_err() {
                    return Some("the torrent's task ended".into());
                }
            }
        }
    }

    /// Waits until the torrent ends by itself (a download without seeding, after completion).
    pub async fn wait_finished(&self) -> Result<(), SessionError> {
        let mut done = self.done.clone();
        loop {
            if let Some(r) = done.borrow_and_update().clone() {
                return r.map_err(|e| SessionError::Io(io::Error::other(e)));
            }
            if done.changed().await.is_err() {
                return Err(SessionError::Stopped);
            }
        }
    }

    /// Stops the torrent: announces `stopped` (best effort) and closes its connections.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Reads a running torrent's content while it downloads; cheap to clone (see
/// [`TorrentHandle::reader`]). Once the torrent's task has ended, verified bytes can still be
/// read; a read that waits for a missing piece then fails.
#[derive(Clone)]
pub struct TorrentReader {
    have: watch::Receiver<Bitfield>,
    storage: Arc<Storage>,
    info: Arc<Info>,
    events: mpsc::Sender<Event>,
}

impl TorrentReader {
    /// The torrent's info dictionary (files, piece size).
    pub fn info(&self) -> &Info {
        &self.info
    }

    /// The verified pieces; `changed()` wakes as more verify.
    pub fn have(&self) -> watch::Receiver<Bitfield> {
        self.have.clone()
    }

    /// Pieces to fetch before any other, most urgent first (see
    /// [`TorrentCore::set_urgent`]); an empty list ends the urgency.
    pub async fn set_urgent(&self, pieces: Vec<u32>) {
        let _ = self.events.send(Event::Urgent(pieces)).await;
    }

    /// True when every piece of `pieces` is had here or announced by a connected peer: worth
    /// waiting for. False also when the torrent has stopped.
    pub async fn available(&self, pieces: Vec<u32>) -> bool {
        self.ask(|tx| Event::Available(pieces, tx)).await
    }

    /// Sends the question `event` makes with its answer channel; false when the torrent has
    /// stopped.
    async fn ask(&self, event: impl FnOnce(tokio::sync::oneshot::Sender<bool>) -> Event) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.events.send(event(tx)).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Each piece's place in playback order, for a streamed movie (see
    /// [`TorrentCore::set_timeline`]).
    pub async fn set_timeline(&self, timeline: Vec<u32>) {
        let _ = self.events.send(Event::Timeline(timeline)).await;
    }

    /// True when every piece of `pieces` is had here or announced by a peer that serves us
    /// now (see [`TorrentCore::served`]). False also when the torrent has stopped.
    pub async fn served(&self, pieces: Vec<u32>) -> bool {
        self.ask(|tx| Event::Served(pieces, tx)).await
    }

    /// With `on`, only urgent pieces are fetched (see [`TorrentCore::set_urgent_only`]): a
    /// viewer of a streamed movie fetches what it plays and serves what it has.
    pub async fn fetch_urgent_only(&self, on: bool) {
        let _ = self.events.send(Event::UrgentOnly(on)).await;
    }

    /// A whole piece's bytes from elsewhere (an HTTP server): written and hashed like a peer's,
    /// then had and served (see [`Input::AddPiece`]); ignored if the piece is had already.
    pub async fn add_piece(&self, piece: u32, data: Bytes) {
        let _ = self.events.send(Event::AddPiece(piece, data)).await;
    }

    /// `len` bytes of the torrent's content at `offset` (across files, in torrent order), once
    /// every piece under them is verified: missing ones are made urgent, with the `ahead`
    /// pieces after the range (a reader's next bytes), and waited for. Bytes are read from
    /// disk only after their piece verified, and all `len` bytes are held in memory. Fails if
    /// the range is outside the torrent or the torrent stops first. A piece no peer has is
    /// waited for as long as it takes: drop the future to give up (the HTTP server does when
    /// its client leaves).
    pub async fn read_at(
        &self,
        offset: u64,
        len: usize,
        ahead: u32,
    ) -> Result<Bytes, SessionError> {
        let total = self.info.total_length;
        let pl = self.info.piece_length as u64;
        let end = offset.checked_add(len as u64).filter(|&e| e <= total && len > 0);
        let Some(end) = end else {
            let why = format!("bytes {offset}..+{len} are outside the torrent's {total} bytes");
            return Err(SessionError::Io(io::Error::new(io::ErrorKind::InvalidInput, why)));
        };
        let (first, last) = ((offset / pl) as u32, ((end - 1) / pl) as u32);
        let pieces = self.info.num_pieces();
        let mut have = self.have.clone();
        loop {
            let missing: Vec<u32> = {
                let h = have.borrow_and_update();
                let after = last.saturating_add(1)..last.saturating_add(1).saturating_add(ahead);
                let wanted = (first..=last).chain(after.filter(|&p| p < pieces));
                wanted.filter(|&p| !h.has(p)).collect()
            };
            let waiting = missing.first().is_some_and(|&p| p <= last);
            if !missing.is_empty() {
                // Also when only the read-ahead is missing: the reader's next bytes come first.
                self.set_urgent(missing).await;
            }
            if !waiting {
                break;
            }
            if have.changed().await.is_err() {
                return Err(SessionError::Stopped);
            }
        }
        let storage = self.storage.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            let mut at = offset;
            while at < end {
                let piece = (at / pl) as u32;
                let within = at - piece as u64 * pl;
                let n = (pl - within).min(end - at) as usize;
                let from = (at - offset) as usize;
                storage.read(piece, within as u32, &mut buf[from..from + n])?;
                at += n as u64;
            }
            Ok::<_, io::Error>(Bytes::from(buf))
        });
        Ok(read.await.map_err(|e| io::Error::other(e.to_string()))??)
    }
}

/// Messages into the torrent task.
pub enum Event {
    Msg(PeerKey, Message),
    Closed(PeerKey, String),
    Connected(Connected),
    ConnectFailed(SocketAddr),
    /// A piece was hashed; `blocks` holds each block's SHA-1 when asked for or when it failed.
    Verified {
        piece: u32,
        ok: bool,
        blocks: Option<Vec<[u8; 20]>>,
    },
    /// A tracker answered (`None`: every tracker failed).
    Announced(Option<(Duration, Vec<SocketAddr>)>),
    /// Addresses to dial, from another source (the DHT).
    Peers(Vec<SocketAddr>),
    /// Pieces a reader waits for (see [`TorrentCore::set_urgent`]).
    Urgent(Vec<u32>),
    /// Fetch only the urgent pieces, or everything again.
    UrgentOnly(bool),
    /// Is every one of these pieces had here or by a connected peer?
    Available(Vec<u32>, tokio::sync::oneshot::Sender<bool>),
    /// Is every one of these pieces had here or by a peer that serves us?
    Served(Vec<u32>, tokio::sync::oneshot::Sender<bool>),
    /// Each piece's place in playback order (see [`TorrentCore::set_timeline`]).
    Timeline(Vec<u32>),
    /// A whole piece from elsewhere (see [`TorrentReader::add_piece`]).
    AddPiece(u32, Bytes),
    /// A local write, read or sync failed: the torrent stops (never the peer's fault).
    DiskFailed(String),
    /// Everything written is on stable storage.
    Synced,
}

/// What the announcer task is asked to send.
struct AnnounceJob {
    event: TrackerEvent,
    uploaded: u64,
    downloaded: u64,
    left: u64,
}

/// A live connection: its tasks, and how much of its upload the core has been told about.
struct Conn {
    io: PeerIo,
    uploaded_seen: u64,
}

/// The torrent task: carries out what the [`TorrentCore`] decides.
struct Torrent {
    core: TorrentCore,
    info_hash: InfoHash,
    our_id: PeerId,
    storage: Arc<Storage>,
    disk: DiskQueue,
    /// A local disk error that stopped the torrent.
    fatal: Option<String>,
    stats: Arc<Stats>,
    limits: Arc<IoLimits>,
    conns: BTreeMap<PeerKey, Conn>,
    next_key: u64,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    /// The announcer task's queue: the core has at most one announce in flight, plus `stopped`.
    announces: Option<mpsc::Sender<AnnounceJob>>,
    session: Arc<Shared>,
    /// The verified pieces, for readers of the content ([`TorrentReader::read_at`]).
    have_tx: watch::Sender<Bitfield>,
}

impl Torrent {
    #[allow(clippy::too_many_arguments)]
    fn new(
        meta: Metainfo,
        storage: Arc<Storage>,
        have: Bitfield,
        config: SessionConfig,
        mut rng: ChaCha8Rng,
        our_id: PeerId,
        session: Arc<Shared>,
        stats: Arc<Stats>,
    ) -> io::Result<Self> {
        let now = Instant::now();
        let our_port = session.local_addr.port();
        let (events_tx, events) = mpsc::channel(4096);
        let disk = DiskQueue::start(storage.clone(), events_tx.clone())?;
        let limits = Arc::new(IoLimits {
            disk: disk.backlog().clone(),
            upload: [RateLimiter::new(config.upload_limit), session.upload.clone()],
            download: [RateLimiter::new(config.download_limit), session.download.clone()],
            max_message: config.max_message,
            // libtorrent's max_allowed_in_request_queue; we ask peers for at most 500 (reqq).
            max_queued_blocks: 2000,
            stats: stats.clone(),
        });
        let mut tiers = if config.use_trackers { meta.trackers.clone() } else { vec![] };
        for t in &config.extra_trackers {
            tiers.push(vec![t.clone()]);
        }
        let announces = (!tiers.is_empty()).then(|| {
            let (tx, rx) = mpsc::channel(4);
            let list = TrackerList::new(tiers, &mut rng).from_address(session.local_addr.ip());
            let base = AnnounceRequest {
                info_hash: meta.info_hash,
                peer_id: our_id,
                port: our_port,
                uploaded: 0,
                downloaded: 0,
                left: 0,
                event: TrackerEvent::None,
                num_want: config.num_want,
            };
            tokio::spawn(announcer(list, base, rx, events_tx.clone()));
            tx
        });
        let geometry = Geometry {
            piece_length: meta.info.piece_length,
            total_length: meta.info.total_length,
            metadata: Bytes::from(meta.info_bytes.clone()),
        };
        let core_config = CoreConfig {
            max_peers: config.max_peers,
            seed_when_done: config.seed_when_done,
            choker: config.choker.clone(),
            picker: config.picker.clone(),
            announce: announces.is_some(),
            our_port,
            our_id,
            super_seed: config.super_seed,
            pex: config.pex && !meta.info.private,
            // A specific IPv6 listen address is ours to tell peers of (BEP 10's `ipv6`).
            our_ipv6: match session.local_addr.ip() {
                std::net::IpAddr::V6(ip) if !ip.is_unspecified() => Some(ip),
                _ => None,
            },
        };
        let core_rng = ChaCha8Rng::seed_from_u64(rng.random());
        let mut core = TorrentCore::new(geometry, have, core_config, core_rng, now);
        core.handle(now, Input::Peers(config.peers.clone()));
        let (have_tx, _) = watch::channel(core.have().clone());
        let torrent = Torrent {
            have_tx,
            core,
            info_hash: meta.info_hash,
            our_id,
            storage,
            disk,
            fatal: None,
            stats,
            limits,
            conns: BTreeMap::new(),
            next_key: 0,
            events_tx,
            events,
            announces,
            session,
        };
        torrent.publish();
        Ok(torrent)
    }

    async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        done: watch::Sender<Option<Result<(), String>>>,
    ) {
        let far = Duration::from_secs(3600);
        loop {
            self.carry_out();
            self.disk.flush();
            self.publish();
            if self.fatal.is_some() || self.core.is_finished() {
                break;
            }
            let deadline = self.core.next_deadline().unwrap_or_else(|| Instant::now() + far);
            tokio::select! {
                ev = self.events.recv() => {
                    // The torrent task holds a sender itself, so the channel never closes.
                    let Some(ev) = ev else { break };
                    self.handle(ev);
                    // Drain what else is ready before doing timed work.
                    for _ in 0..256 {
                        match self.events.try_recv() {
                            Ok(ev) => self.handle(ev),
                            Err(_) => break,
                        }
                    }
                    self.drop_overflowed();
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                    let now = Instant::now();
                    self.report_uploads(now);
                    self.core.handle(now, Input::Timeout);
                    self.drop_overflowed();
                }
                _ = shutdown.changed() => break,
            }
        }
        // No more incoming connections for this torrent.
        self.session.routes().remove(&self.info_hash);
        self.core.stop();
        self.carry_out();
        self.disk.flush();
        // Give the announcer a moment to send `stopped`.
        if self.announces.is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.conns.clear();
        let result = if let Some(e) = self.fatal.take() {
            Err(SessionError::Disk(e).to_string())
        } else if self.core.is_complete() {
            Ok(())
        } else {
            Err("stopped before the download completed".to_string())
        };
        let _ = done.send(Some(result));
    }

    /// Copies the core's counters to the shared [`Stats`] (`uploaded` is counted by the
    /// connections' writers themselves).
    fn publish(&self) {
        let s = self.core.stats();
        self.stats.pieces_total.store(s.pieces_total, Ordering::Relaxed);
        self.stats.pieces_have.store(s.pieces_have, Ordering::Relaxed);
        self.stats.bytes_total.store(s.bytes_total, Ordering::Relaxed);
        self.stats.bytes_have.store(s.bytes_have, Ordering::Relaxed);
        self.stats.downloaded.store(s.downloaded, Ordering::Relaxed);
        self.stats.peers.store(s.peers, Ordering::Relaxed);
        self.stats.hash_failures.store(s.hash_failures, Ordering::Relaxed);
        self.stats.banned.store(s.banned, Ordering::Relaxed);
        if self.core.is_complete() {
            self.stats.complete.store(true, Ordering::Release);
        }
        // Verified pieces are never un-verified (a piece verifies once; `on_verified` ignores a
        // second verdict), so a change in the count is a change in the set.
        let have = self.core.have();
        self.have_tx.send_if_modified(|b| {
            let changed = b.count() != have.count();
            if changed {
                b.clone_from(have);
            }
            changed
        });
    }

    /// Tells the core how many block bytes each connection wrote since the last report.
    fn report_uploads(&mut self, now: Instant) {
        for (&key, c) in self.conns.iter_mut() {
            let up = c.io.counters.uploaded.load(Ordering::Relaxed);
            let delta = up - c.uploaded_seen;
            c.uploaded_seen = up;
            if delta > 0 {
                self.core.handle(now, Input::Uploaded(key, delta));
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        let now = Instant::now();
        let input = match ev {
            Event::Msg(key, msg) => Input::Message(key, msg),
            Event::Closed(key, reason) => {
                self.conns.remove(&key);
                Input::Closed(key, reason)
            }
            Event::Connected(c) => {
                let key = PeerKey(self.next_key);
                self.next_key += 1;
                let input = Input::Connected {
                    peer: key,
                    addr: c.addr,
                    id: c.theirs.peer_id,
                    fast: c.theirs.supports_fast(),
                    extensions: c.theirs.supports_extensions(),
                    outgoing: c.outgoing,
                };
                let io = peer::spawn(
                    c,
                    key,
                    self.events_tx.clone(),
                    self.storage.clone(),
                    self.limits.clone(),
                );
                self.conns.insert(key, Conn { io, uploaded_seen: 0 });
                input
            }
            Event::ConnectFailed(addr) => Input::ConnectFailed(addr),
            Event::Verified { piece, ok, blocks } => Input::Verified { piece, ok, blocks },
            Event::Announced(Some((interval, peers))) => Input::Announced { interval, peers },
            Event::Announced(None) => Input::AnnounceFailed,
            Event::Peers(list) => Input::Peers(list),
            Event::Urgent(pieces) => {
                self.core.set_urgent(now, &pieces);
                return;
            }
            Event::Timeline(t) => {
                self.core.set_timeline(t);
                return;
            }
            Event::UrgentOnly(on) => {
                self.core.set_urgent_only(now, on);
                return;
            }
            Event::Available(pieces, answer) => {
                let _ = answer.send(pieces.iter().all(|&p| self.core.available(p)));
                return;
            }
            Event::Served(pieces, answer) => {
                let _ = answer.send(pieces.iter().all(|&p| self.core.served(p)));
                return;
            }
            Event::AddPiece(piece, data) => Input::AddPiece { piece, data },
            Event::DiskFailed(e) => {
                warn!("disk error, stopping the torrent: {e}");
                // The first failure is the one to report.
                self.fatal.get_or_insert(e);
                return;
            }
            Event::Synced => Input::Synced,
        };
        self.core.handle(now, input);
    }

    /// Carries out everything the core asked for.
    fn carry_out(&mut self) {
        while let Some(out) = self.core.poll() {
            let push = |conns: &BTreeMap<PeerKey, Conn>, key: PeerKey, cmd: Outgoing| {
                if let Some(c) = conns.get(&key) {
                    c.io.push(cmd);
                }
            };
            match out {
                Output::Send(key, msg) => push(&self.conns, key, Outgoing::Msg(msg)),
                Output::Serve(key, b) => push(&self.conns, key, Outgoing::Block(b)),
                Output::CancelServe(key, b) => push(&self.conns, key, Outgoing::Cancel(b)),
                Output::DropServes { peer, reject } => {
                    push(&self.conns, peer, Outgoing::DropBlocks { reject })
                }
                Output::Disconnect(key, _) => {
                    self.conns.remove(&key);
                }
                Output::Connect(addr) => self.dial(addr),
                Output::Write { piece, offset, data } => {
                    self.disk.push(DiskJob::Write { piece, offset, data })
                }
                Output::Verify { piece, blocks } => {
                    self.disk.push(DiskJob::Verify { piece, blocks })
                }
                Output::Sync => self.disk.push(DiskJob::Sync),
                Output::Announce { event, uploaded, downloaded, left } => {
                    if let Some(tx) = &self.announces {
                        // Never full: the core has at most one announce in flight, plus
                        // `stopped`.
                        let _ = tx.try_send(AnnounceJob { event, uploaded, downloaded, left });
                    }
                }
                Output::Event(e) => debug!(?e, "torrent event"),
            }
        }
    }

    /// Drops every peer whose outgoing queue overflowed: it does not read what we send.
    fn drop_overflowed(&mut self) {
        let stuck: Vec<PeerKey> =
            self.conns.iter().filter(|(_, c)| c.io.overflowed()).map(|(k, _)| *k).collect();
        let now = Instant::now();
        for k in stuck {
            self.conns.remove(&k);
            let why = "peer does not read what we send (outgoing queue full)".to_string();
            self.core.handle(now, Input::Closed(k, why));
        }
    }

    fn dial(&self, addr: SocketAddr) {
        let events = self.events_tx.clone();
        let (ih, id, session) = (self.info_hash, self.our_id, self.session.clone());
        tokio::spawn(async move {
            let encryption = session.encryption;
            let local = Some(session.local_addr.ip());
            let timeout = Duration::from_secs(10);
            let via = session.dialer.via();
            let dialed = peer::connect(addr, local, via, ih, id, timeout, encryption);
            let ev = match dialed.await {
                Ok(c) => {
                    session.handshake_worked.store(true, Ordering::Relaxed);
                    Event::Connected(c)
                }
                Err(e) => {
                    debug!(%addr, "dial failed: {e}");
                    // A peer that closes on our handshake may want the other kind: say so once.
                    let closed = matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                    );
                    if closed
                        && encryption != Encryption::Prefer
                        && !session.handshake_worked.load(Ordering::Relaxed)
                        && !session.encryption_hinted.swap(true, Ordering::Relaxed)
                    {
                        let maybe = if encryption == Encryption::Require {
                            "it may not accept encrypted connections (--encryption require)"
                        } else {
                            "it may require encryption (--encryption disable)"
                        };
                        warn!(
                            %addr,
                            "a peer closed the connection during the handshake: {maybe}; \
                             --encryption prefer (the default) tries both"
                        );
                    }
                    Event::ConnectFailed(addr)
                }
            };
            let _ = events.send(ev).await;
        });
    }
}

/// The announcer task: sends what the core asks for, one announce at a time, and reports back.
async fn announcer(
    mut list: TrackerList,
    base: AnnounceRequest,
    mut jobs: mpsc::Receiver<AnnounceJob>,
    events: mpsc::Sender<Event>,
) {
    while let Some(job) = jobs.recv().await {
        let stopped = job.event == TrackerEvent::Stopped;
        let req = AnnounceRequest {
            uploaded: job.uploaded,
            downloaded: job.downloaded,
            left: job.left,
            event: job.event,
            num_want: if stopped { 0 } else { base.num_want },
            ..base.clone()
        };
        let result = match list.announce(&req, Duration::from_secs(10)).await {
            Ok((url, resp)) => {
                debug!(%url, peers = resp.peers.len(), "announced");
                Some((resp.interval, resp.peers))
            }
            Err(e) => {
                warn!("tracker announce failed: {e}");
                None
            }
        };
        if stopped || events.send(Event::Announced(result)).await.is_err() {
            return;
        }
    }
}
