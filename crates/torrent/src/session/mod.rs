//! The tokio driver for one torrent: a listener, outgoing connections, the tracker announcer,
//! and one *torrent task* that owns the sans-IO cores ([`PiecePicker`], [`Choker`]) and feeds
//! them what the peers say. Each connection has a reader and a writer task
//! ([`peer`]); they talk to the torrent task over channels, so all protocol decisions are made
//! in one place and in arrival order.
//!
//! Invariants kept by the torrent task:
//! - a piece is announced (HAVE), served, or counted only after its SHA-1 verified on disk;
//! - at most one connection per remote peer id (simultaneous dials: the connection opened by the
//!   peer with the lower id survives on both sides);
//! - a peer whose block was proven wrong (its block differs from the piece's verified bytes) is
//!   banned by address; so is a peer that alone sent [`BAN_AFTER_FAILED_PIECES`] failed pieces.

pub mod disk;
pub mod magnet;
pub mod peer;

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
use tracing::{debug, info, warn};

use crate::metainfo::Metainfo;
use crate::proto::choker::{ChokeDecision, Choker, ChokerConfig};
use crate::proto::ext::{ExtHandshake, MetadataMsg, METADATA_PIECE, OUR_UT_METADATA};
use crate::proto::picker::{BlockOutcome, PickerConfig, PiecePicker};
use crate::proto::wire::{Handshake, Message, DEFAULT_MAX_MESSAGE};
use crate::proto::{BlockRef, PeerKey, BLOCK_SIZE};
use crate::ratelimit::RateLimiter;
use crate::storage::{Existing, Mode, Storage, StorageError};
use crate::tracker::{AnnounceRequest, Event as TrackerEvent, TrackerList};
use crate::{Bitfield, PeerId};
use disk::{DiskJob, DiskQueue};
use peer::{Connected, IoLimits, Outgoing, PeerIo};

/// A peer contributing to this many failed pieces is banned even without proof.
pub const BAN_AFTER_FAILED_PIECES: u32 = 3;
/// The largest block we serve; larger requests are rejected.
const MAX_SERVED_BLOCK: u32 = 128 * 1024;
/// Most addresses kept to dial (from trackers and `--peer`); more are ignored until some go.
pub const MAX_CANDIDATES: usize = 2_000;
/// Most incoming connections in their handshake at once; more are closed at once.
pub const MAX_PENDING_HANDSHAKES: usize = 64;
/// Seconds of a peer's download rate kept in requests in flight.
const REQUEST_QUEUE_SECS: f64 = 0.5;
/// Fewest requests kept in flight to an unchoking peer.
const MIN_PIPELINE: usize = 4;

/// How a session behaves.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Where to listen for peers (port 0 picks one).
    pub listen: SocketAddr,
    /// Peers to dial besides those trackers return.
    pub peers: Vec<SocketAddr>,
    /// Bytes per second for all uploads / downloads of this session together.
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

/// A running torrent.
pub struct Session {
    stats: Arc<Stats>,
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    done: watch::Receiver<Option<Result<(), String>>>,
    task: tokio::task::JoinHandle<()>,
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
    /// Opens storage, re-checks existing data, binds the listener and starts the torrent task.
    pub async fn start(
        meta: Metainfo,
        dir: PathBuf,
        role: Role,
        config: SessionConfig,
    ) -> Result<Session, SessionError> {
        let mode = if role == Role::Seed { Mode::ReadOnly } else { Mode::ReadWrite };
        let info = meta.info.clone();
        let existing = config.existing;
        let storage = tokio::task::spawn_blocking(move || -> Result<_, SessionError> {
            let s = Storage::open_with(&info, &dir, mode, existing)?;
            let have = s.check_existing(|_, _| {})?;
            Ok((s, have))
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))??;
        let (storage, have) = storage;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| SessionError::Listen { addr: config.listen, source })?;
        let local_addr = listener.local_addr()?;
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
            Arc::new(storage),
            have,
            config,
            rng,
            our_id,
            local_addr.port(),
            stats.clone(),
        )?;
        if role == Role::Seed && !torrent.picker.is_complete() {
            let have = torrent.picker.have().count();
            let total = torrent.picker.have().len();
            return Err(SessionError::Io(io::Error::other(format!(
                "the data does not match the torrent: {have} of {total} pieces verify \
                 (is --data the file or directory the torrent was made from?)"
            ))));
        }
        let task = tokio::spawn(torrent.run(listener, shutdown_rx, done_tx));
        Ok(Session { stats, local_addr, shutdown, done, task })
    }

    /// Live numbers.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The address peers reach us on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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

    /// Waits until the session ends by itself (a download without seeding, after completion).
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

    /// Stops the session: announces `stopped` (best effort) and closes every connection.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
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
    Peers(Vec<SocketAddr>),
    /// A local write, read or sync failed: the torrent stops (never the peer's fault).
    DiskFailed(String),
    /// Everything written is on stable storage.
    Synced,
}

/// A byte-rate estimate over roughly the last few seconds (exponential moving average).
#[derive(Default, Clone, Copy)]
struct Rate {
    bytes_since: u64,
    per_sec: f64,
}

impl Rate {
    fn add(&mut self, n: u64) {
        self.bytes_since += n;
    }
    fn tick(&mut self, secs: f64) {
        let sample = self.bytes_since as f64 / secs.max(1e-3);
        self.per_sec = if self.per_sec == 0.0 { sample } else { 0.6 * self.per_sec + 0.4 * sample };
        self.bytes_since = 0;
    }
}

struct PeerState {
    addr: SocketAddr,
    id: PeerId,
    io: PeerIo,
    fast: bool,
    ext: Option<ExtHandshake>,
    has: Bitfield,
    /// True once the peer told us what it has (BITFIELD, HAVE, HAVE_ALL, HAVE_NONE): a
    /// HAVE_ALL/HAVE_NONE after that is a protocol violation. (aria2 sends ALLOWED_FAST before
    /// its BITFIELD, so "first message" is too strict a rule.)
    said_what_it_has: bool,
    am_choking: bool,
    am_interested: bool,
    peer_choking: bool,
    peer_interested: bool,
    /// Target number of outstanding requests, grown with the peer's rate.
    pipeline: usize,
    down: Rate,
    up: Rate,
    uploaded_seen: u64,
    last_msg: Instant,
    last_block: Instant,
    last_sent: Instant,
    snubbed: bool,
    failed_pieces: u32,
}

struct Torrent {
    meta: Metainfo,
    storage: Arc<Storage>,
    disk: DiskQueue,
    /// A local disk error that stopped the torrent.
    fatal: Option<String>,
    /// Every piece verified and the final sync queued; complete once it is done.
    syncing: bool,
    picker: PiecePicker<ChaCha8Rng>,
    choker: Choker<ChaCha8Rng>,
    config: SessionConfig,
    rng: ChaCha8Rng,
    our_id: PeerId,
    our_port: u16,
    stats: Arc<Stats>,
    limits: Arc<IoLimits>,
    peers: BTreeMap<PeerKey, PeerState>,
    next_key: u64,
    /// Addresses we may dial, with the time of the last attempt and failures so far.
    candidates: BTreeMap<SocketAddr, (Option<Instant>, u32)>,
    connecting: BTreeSet<SocketAddr>,
    banned: BTreeSet<SocketAddr>,
    /// Who sent each block of pieces not yet verified (for smart banning).
    block_source: HashMap<(u32, u32), PeerKey>,
    /// Blocks of failed pieces: (offset, sender's address, SHA-1 of what it sent).
    suspects: HashMap<u32, Vec<(u32, SocketAddr, [u8; 20])>>,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    started: Instant,
    completed_announced: bool,
    /// Our own announce events for the announcer (`Completed`, then `Stopped`: at most two
    /// ever, so a channel of two never fills; nothing a peer says reaches it).
    tracker_kick: Option<mpsc::Sender<TrackerEvent>>,
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
        our_port: u16,
        stats: Arc<Stats>,
    ) -> io::Result<Self> {
        let now = Instant::now();
        let info = &meta.info;
        let picker_rng = ChaCha8Rng::seed_from_u64(rng.random());
        let choker_rng = ChaCha8Rng::seed_from_u64(rng.random());
        let picker = PiecePicker::new(
            config.picker.clone(),
            info.piece_length,
            info.total_length,
            have.clone(),
            picker_rng,
        );
        let mut choker = Choker::new(config.choker.clone(), choker_rng, now);
        choker.set_seeding(have.is_full());
        stats.pieces_total.store(info.num_pieces(), Ordering::Relaxed);
        stats.bytes_total.store(info.total_length, Ordering::Relaxed);
        stats.pieces_have.store(have.count(), Ordering::Relaxed);
        let have_bytes: u64 = have.iter_set().map(|p| info.piece_size(p) as u64).sum();
        stats.bytes_have.store(have_bytes, Ordering::Relaxed);
        let (events_tx, events) = mpsc::channel(4096);
        let disk = DiskQueue::start(storage.clone(), events_tx.clone())?;
        let limits = Arc::new(IoLimits {
            disk: disk.backlog().clone(),
            upload: RateLimiter::new(config.upload_limit),
            download: RateLimiter::new(config.download_limit),
            max_message: config.max_message,
            // libtorrent's max_allowed_in_request_queue; we ask peers for at most 500 (reqq).
            max_queued_blocks: 2000,
            stats: stats.clone(),
        });
        let mut candidates = BTreeMap::new();
        for p in &config.peers {
            candidates.insert(*p, (None, 0));
        }
        Ok(Torrent {
            meta,
            storage,
            disk,
            fatal: None,
            syncing: false,
            picker,
            choker,
            config,
            rng,
            our_id,
            our_port,
            stats,
            limits,
            peers: BTreeMap::new(),
            next_key: 0,
            candidates,
            connecting: BTreeSet::new(),
            banned: BTreeSet::new(),
            block_source: HashMap::new(),
            suspects: HashMap::new(),
            events_tx,
            events,
            started: now,
            completed_announced: false,
            tracker_kick: None,
        })
    }

    async fn run(
        mut self,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
        done: watch::Sender<Option<Result<(), String>>>,
    ) {
        self.spawn_acceptor(listener);
        self.spawn_announcer();
        if self.picker.is_complete() {
            self.on_complete();
            self.disk.flush();
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_tick = Instant::now();
        loop {
            let choke_at = tokio::time::Instant::from_std(self.choker.next_deadline());
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
                _ = tokio::time::sleep_until(choke_at) => {
                    self.choker.handle_timeout(Instant::now());
                    self.apply_choker();
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    let secs = now.duration_since(last_tick).as_secs_f64();
                    last_tick = now;
                    self.on_tick(now, secs);
                }
                _ = shutdown.changed() => break,
            }
            self.disk.flush();
            if self.fatal.is_some() {
                break;
            }
            if self.stats.complete.load(Ordering::Relaxed) && !self.config.seed_when_done {
                // A plain download ends once complete and announced.
                if self.completed_announced {
                    break;
                }
            }
        }
        if let Some(tx) = &self.tracker_kick {
            let _ = tx.try_send(TrackerEvent::Stopped);
        }
        // Give the announcer a moment to send `stopped`.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.peers.clear();
        let result = if let Some(e) = self.fatal.take() {
            Err(SessionError::Disk(e).to_string())
        } else if self.stats.complete.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("stopped before the download completed".to_string())
        };
        let _ = done.send(Some(result));
    }

    fn spawn_acceptor(&self, listener: TcpListener) {
        let events = self.events_tx.clone();
        let info_hash = self.meta.info_hash;
        let our_id = self.our_id;
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok((stream, addr)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    debug!(%addr, "too many handshakes in progress: connection closed");
                    continue;
                };
                let tx = events.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match peer::accept(stream, addr, info_hash, our_id, Duration::from_secs(10))
                        .await
                    {
                        Ok(c) => {
                            let _ = tx.send(Event::Connected(c)).await;
                        }
                        Err(e) => debug!(%addr, "incoming handshake failed: {e}"),
                    }
                });
                if events.is_closed() {
                    return;
                }
            }
        });
    }

    fn spawn_announcer(&mut self) {
        let mut tiers = if self.config.use_trackers { self.meta.trackers.clone() } else { vec![] };
        for t in &self.config.extra_trackers {
            tiers.push(vec![t.clone()]);
        }
        if tiers.is_empty() {
            return;
        }
        let (kick, mut kicks) = mpsc::channel(2);
        self.tracker_kick = Some(kick);
        let mut list = TrackerList::new(tiers, &mut self.rng);
        let events = self.events_tx.clone();
        let stats = self.stats.clone();
        let info_hash = self.meta.info_hash;
        let (peer_id, port, num_want) = (self.our_id, self.our_port, self.config.num_want);
        tokio::spawn(async move {
            let mut event = TrackerEvent::Started;
            loop {
                let have = stats.bytes_have.load(Ordering::Relaxed);
                let req = AnnounceRequest {
                    info_hash,
                    peer_id,
                    port,
                    uploaded: stats.uploaded.load(Ordering::Relaxed),
                    downloaded: stats.downloaded.load(Ordering::Relaxed),
                    left: stats.bytes_total.load(Ordering::Relaxed).saturating_sub(have),
                    event,
                    num_want: if event == TrackerEvent::Stopped { 0 } else { num_want },
                };
                let interval;
                match list.announce(&req, Duration::from_secs(10)).await {
                    Ok((url, resp)) => {
                        debug!(%url, peers = resp.peers.len(), "announced");
                        interval = resp.interval.max(Duration::from_secs(5));
                        if event == TrackerEvent::Stopped {
                            return;
                        }
                        event = TrackerEvent::None;
                        if events.send(Event::Peers(resp.peers)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        warn!("tracker announce failed: {e}");
                        if event == TrackerEvent::Stopped {
                            return;
                        }
                        interval = Duration::from_secs(15);
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    k = kicks.recv() => match k {
                        Some(e) => event = e,
                        None => return,
                    },
                }
            }
        });
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Msg(key, msg) => {
                if let Err(reason) = self.on_message(key, msg) {
                    self.drop_peer(key, &reason);
                }
            }
            Event::Closed(key, reason) => self.drop_peer(key, &reason),
            Event::Connected(c) => {
                self.connecting.remove(&c.addr);
                self.on_connected(c);
            }
            Event::ConnectFailed(addr) => {
                self.connecting.remove(&addr);
                if let Some(c) = self.candidates.get_mut(&addr) {
                    c.1 += 1;
                }
            }
            Event::Verified { piece, ok, blocks } => self.on_verified(piece, ok, blocks),
            Event::DiskFailed(e) => {
                warn!("disk error, stopping the torrent: {e}");
                // The first failure is the one to report.
                self.fatal.get_or_insert(e);
            }
            Event::Synced => self.on_synced(),
            Event::Peers(list) => {
                for a in list {
                    if self.candidates.len() >= MAX_CANDIDATES {
                        // Forget addresses that never answered before refusing new ones.
                        self.candidates.retain(|_, (_, fails)| *fails < 5);
                        if self.candidates.len() >= MAX_CANDIDATES {
                            break;
                        }
                    }
                    if a.port() != 0 && !self.banned.contains(&a) {
                        self.candidates.entry(a).or_insert((None, 0));
                    }
                }
                self.connect_more(Instant::now());
            }
        }
    }

    fn on_connected(&mut self, c: Connected) {
        let theirs: Handshake = c.theirs;
        if theirs.peer_id == self.our_id || self.banned.contains(&c.addr) {
            return;
        }
        if self.peers.len() >= self.config.max_peers {
            return;
        }
        if let Some((&dup, _)) = self.peers.iter().find(|(_, p)| p.id == theirs.peer_id) {
            // Keep the connection dialed by the lower peer id; both ends decide alike.
            let new_dialer = if c.outgoing { self.our_id } else { theirs.peer_id };
            if new_dialer < std::cmp::max(self.our_id, theirs.peer_id) {
                self.drop_peer(dup, "duplicate connection");
            } else {
                return;
            }
        }
        let key = PeerKey(self.next_key);
        self.next_key += 1;
        let now = Instant::now();
        let io = peer::spawn(
            c.stream,
            key,
            self.events_tx.clone(),
            self.storage.clone(),
            self.limits.clone(),
        );
        let n = self.meta.info.num_pieces();
        let mut st = PeerState {
            addr: c.addr,
            id: theirs.peer_id,
            io,
            fast: theirs.supports_fast(),
            ext: None,
            has: Bitfield::new(n),
            said_what_it_has: false,
            am_choking: true,
            am_interested: false,
            peer_choking: true,
            peer_interested: false,
            pipeline: 16,
            down: Rate::default(),
            up: Rate::default(),
            uploaded_seen: 0,
            last_msg: now,
            last_block: now,
            last_sent: now,
            snubbed: false,
            failed_pieces: 0,
        };
        // First message: what we have.
        let have = self.picker.have();
        let first = if st.fast && have.is_full() {
            Some(Message::HaveAll)
        } else if st.fast && have.count() == 0 {
            Some(Message::HaveNone)
        } else if have.count() > 0 {
            Some(Message::Bitfield(Bytes::copy_from_slice(have.as_bytes())))
        } else {
            None
        };
        if let Some(m) = first {
            st.io.push(Outgoing::Msg(m));
        }
        if theirs.supports_extensions() {
            let hs = ExtHandshake {
                ut_metadata: Some(OUR_UT_METADATA),
                metadata_size: Some(self.meta.info_bytes.len() as u32),
                client: Some("Swarmcast 0.1".into()),
                reqq: Some(500),
                port: Some(self.our_port),
            };
            st.io.push(Outgoing::Msg(Message::Extended {
                id: 0,
                payload: Bytes::from(hs.encode()),
            }));
        }
        st.last_sent = now;
        debug!(peer = %c.addr, ?key, outgoing = c.outgoing, "connected");
        self.peers.insert(key, st);
        self.choker.peer_connected(now, key);
        self.stats.peers.store(self.peers.len(), Ordering::Relaxed);
        self.apply_choker();
    }

    fn drop_peer(&mut self, key: PeerKey, reason: &str) {
        let Some(p) = self.peers.remove(&key) else {
            return;
        };
        debug!(peer = %p.addr, "disconnected: {reason}");
        self.picker.peer_left(key, &p.has);
        self.choker.peer_disconnected(key);
        self.stats.peers.store(self.peers.len(), Ordering::Relaxed);
        self.apply_choker();
        // Its released requests can go to others now.
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for k in keys {
            self.fill_requests(k);
        }
    }

    fn send(&mut self, key: PeerKey, msg: Message) {
        if let Some(p) = self.peers.get_mut(&key) {
            p.last_sent = Instant::now();
            p.io.push(Outgoing::Msg(msg));
        }
    }

    /// Handles one message; an error disconnects the peer.
    fn on_message(&mut self, key: PeerKey, msg: Message) -> Result<(), String> {
        let now = Instant::now();
        let n = self.meta.info.num_pieces();
        let Some(p) = self.peers.get_mut(&key) else {
            return Ok(());
        };
        p.last_msg = now;
        let first = !p.said_what_it_has;
        if matches!(
            msg,
            Message::Have(_) | Message::Bitfield(_) | Message::HaveAll | Message::HaveNone
        ) {
            p.said_what_it_has = true;
        }
        match msg {
            Message::KeepAlive => {}
            Message::Choke => {
                p.peer_choking = true;
                self.picker.release_peer(key);
            }
            Message::Unchoke => {
                p.peer_choking = false;
                self.fill_requests(key);
            }
            Message::Interested => {
                p.peer_interested = true;
                self.choker.set_interested(now, key, true);
                self.apply_choker();
            }
            Message::NotInterested => {
                p.peer_interested = false;
                self.choker.set_interested(now, key, false);
                self.apply_choker();
            }
            Message::Have(piece) => {
                if piece >= n {
                    return Err(format!("HAVE for piece {piece} of {n}"));
                }
                if p.has.set(piece) {
                    self.picker.peer_have(key, piece);
                    self.update_interest(key);
                }
            }
            Message::Bitfield(raw) => {
                let bf = Bitfield::from_wire(&raw, n).map_err(|e| e.to_string())?;
                if first {
                    p.has = bf;
                    let has = p.has.clone();
                    self.picker.peer_bitfield(key, &has);
                } else {
                    // aria2 re-sends its whole BITFIELD instead of HAVE after HAVE_NONE: treat a
                    // later BITFIELD as HAVEs for the pieces it adds (peers never lose pieces).
                    for piece in bf.iter_set() {
                        if p.has.set(piece) {
                            self.picker.peer_have(key, piece);
                        }
                    }
                }
                self.update_interest(key);
            }
            Message::HaveAll | Message::HaveNone => {
                if !p.fast || !first {
                    return Err("HAVE_ALL/HAVE_NONE out of place".into());
                }
                if matches!(msg, Message::HaveAll) {
                    p.has = Bitfield::full(n);
                    let has = p.has.clone();
                    self.picker.peer_bitfield(key, &has);
                    self.update_interest(key);
                }
            }
            Message::Request { piece, offset, length } => {
                let b = BlockRef { piece, offset, length };
                let size = self.meta.info.piece_size(piece);
                let valid = piece < n
                    && length > 0
                    && length <= MAX_SERVED_BLOCK
                    && offset.checked_add(length).is_some_and(|end| end <= size)
                    && self.picker.have().has(piece);
                if valid && !p.am_choking {
                    p.io.push(Outgoing::Block(b));
                } else if p.fast {
                    p.io.push(Outgoing::Msg(Message::RejectRequest { piece, offset, length }));
                }
            }
            Message::Cancel { piece, offset, length } => {
                p.io.push(Outgoing::Cancel(BlockRef { piece, offset, length }));
            }
            Message::RejectRequest { piece, offset, length } => {
                self.picker.release(key, BlockRef { piece, offset, length });
                self.fill_requests(key);
            }
            Message::Piece { piece, offset, data } => self.on_block(key, piece, offset, data)?,
            Message::Port(_) | Message::SuggestPiece(_) | Message::AllowedFast(_) => {}
            Message::Extended { id, payload } => self.on_extended(key, id, payload)?,
        }
        Ok(())
    }

    fn on_block(
        &mut self,
        key: PeerKey,
        piece: u32,
        offset: u32,
        data: Bytes,
    ) -> Result<(), String> {
        let now = Instant::now();
        let block = BlockRef { piece, offset, length: data.len() as u32 };
        let len = data.len() as u64;
        match self.picker.block_received(key, block) {
            BlockOutcome::Unexpected => {}
            BlockOutcome::Accepted { piece_complete, cancels } => {
                // Written by the disk thread, in order: the piece's verification queued below
                // comes after every one of its writes. A write that fails stops the torrent.
                self.disk.push(DiskJob::Write { piece, offset, data });
                self.block_source.insert((piece, offset), key);
                for (other, b) in cancels {
                    self.send(
                        other,
                        Message::Cancel { piece: b.piece, offset: b.offset, length: b.length },
                    );
                }
                self.stats.downloaded.fetch_add(len, Ordering::Relaxed);
                self.choker.record_downloaded(key, len);
                if let Some(p) = self.peers.get_mut(&key) {
                    p.down.add(len);
                    p.last_block = now;
                    p.snubbed = false;
                }
                if piece_complete {
                    // Block digests are needed to find who lied when this piece failed before.
                    let blocks = self.suspects.contains_key(&piece);
                    self.disk.push(DiskJob::Verify { piece, blocks });
                }
            }
        }
        self.fill_requests(key);
        Ok(())
    }

    fn on_verified(&mut self, piece: u32, ok: bool, blocks: Option<Vec<[u8; 20]>>) {
        let offsets: Vec<u32> = {
            let size = self.meta.info.piece_size(piece);
            (0..size.div_ceil(BLOCK_SIZE)).map(|i| i * BLOCK_SIZE).collect()
        };
        let digest_at = |off: u32| blocks.as_ref()?.get((off / BLOCK_SIZE) as usize).copied();
        if !ok {
            self.stats.hash_failures.fetch_add(1, Ordering::Relaxed);
            // Remember who sent what, to find the liar once the piece verifies.
            let mut record = Vec::new();
            for &off in &offsets {
                if let Some(src) = self.block_source.remove(&(piece, off)) {
                    if let (Some(p), Some(digest)) = (self.peers.get(&src), digest_at(off)) {
                        record.push((off, p.addr, digest));
                    }
                }
            }
            self.suspects.entry(piece).or_default().extend(record);
            let contributors = self.picker.piece_failed(piece);
            warn!(piece, ?contributors, "piece failed its hash check; fetching it again");
            // Without proof, only a peer that sent the whole piece is counted against: honest
            // peers that shared a piece with a liar are cleared when it verifies (smart ban).
            if let [only] = contributors[..] {
                let ban = self.peers.get_mut(&only).is_some_and(|p| {
                    p.failed_pieces += 1;
                    p.failed_pieces >= BAN_AFTER_FAILED_PIECES
                });
                if ban {
                    self.ban(only);
                }
            }
            let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
            for k in keys {
                self.fill_requests(k);
            }
            return;
        }
        for off in &offsets {
            self.block_source.remove(&(piece, *off));
        }
        if let Some(bad) = self.suspects.remove(&piece) {
            let mut liars = BTreeSet::new();
            for (off, addr, digest) in bad {
                if digest_at(off).is_some_and(|good| good != digest) {
                    liars.insert(addr);
                }
            }
            for addr in liars {
                warn!(peer = %addr, "peer sent corrupt data: banned");
                let key = self.peers.iter().find(|(_, p)| p.addr == addr).map(|(k, _)| *k);
                if self.banned.insert(addr) {
                    self.stats.banned.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(k) = key {
                    self.drop_peer(k, "banned: sent corrupt data");
                }
            }
        }
        self.picker.piece_verified(piece);
        self.stats.pieces_have.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_have.fetch_add(self.meta.info.piece_size(piece) as u64, Ordering::Relaxed);
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for k in &keys {
            let has = self.peers.get(k).is_some_and(|p| p.has.has(piece));
            if !has {
                self.send(*k, Message::Have(piece));
            }
            self.update_interest(*k);
        }
        if self.picker.is_complete() {
            self.on_complete();
        }
    }

    fn ban(&mut self, key: PeerKey) {
        if let Some(p) = self.peers.get(&key) {
            warn!(peer = %p.addr, "peer took part in too many failed pieces: banned");
            if self.banned.insert(p.addr) {
                self.stats.banned.fetch_add(1, Ordering::Relaxed);
            }
            self.drop_peer(key, "banned");
        }
    }

    /// Every piece verified: complete once the data is synced.
    fn on_complete(&mut self) {
        if self.stats.complete.load(Ordering::Relaxed) || self.syncing {
            return;
        }
        self.syncing = true;
        self.disk.push(DiskJob::Sync);
    }

    fn on_synced(&mut self) {
        if self.stats.complete.load(Ordering::Relaxed) || !self.syncing {
            return;
        }
        info!(
            secs = self.started.elapsed().as_secs_f64(),
            "download complete: every piece verified"
        );
        self.choker.set_seeding(true);
        self.stats.complete.store(true, Ordering::Release);
        if let Some(tx) = &self.tracker_kick {
            let _ = tx.try_send(TrackerEvent::Completed);
        }
        self.completed_announced = true;
        // Seeds have nothing to trade with seeds.
        let seeds: Vec<PeerKey> =
            self.peers.iter().filter(|(_, p)| p.has.is_full()).map(|(k, _)| *k).collect();
        for k in seeds {
            self.drop_peer(k, "both complete");
        }
    }

    /// Drops every peer whose outgoing queue overflowed: it does not read what we send.
    fn drop_overflowed(&mut self) {
        let stuck: Vec<PeerKey> =
            self.peers.iter().filter(|(_, p)| p.io.overflowed()).map(|(k, _)| *k).collect();
        for k in stuck {
            self.drop_peer(k, "peer does not read what we send (outgoing queue full)");
        }
    }

    fn update_interest(&mut self, key: PeerKey) {
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        let want = self.picker.have().wants_any_of(&p.has);
        if want != p.am_interested {
            p.am_interested = want;
            let m = if want { Message::Interested } else { Message::NotInterested };
            self.send(key, m);
        }
        if want {
            self.fill_requests(key);
        }
    }

    /// Tops up the peer's request pipeline.
    fn fill_requests(&mut self, key: PeerKey) {
        let Some(p) = self.peers.get(&key) else {
            return;
        };
        if p.peer_choking || !p.am_interested {
            return;
        }
        let depth = if p.snubbed { 1 } else { p.pipeline };
        let out = self.picker.outstanding(key);
        if out >= depth {
            return;
        }
        let blocks = self.picker.pick(key, &p.has, depth - out);
        if blocks.is_empty() {
            return;
        }
        if let Some(p) = self.peers.get_mut(&key) {
            p.last_sent = Instant::now();
            if out == 0 {
                // The clock for snub detection starts when we begin waiting.
                p.last_block = Instant::now();
            }
            for b in blocks {
                p.io.push(Outgoing::Msg(Message::Request {
                    piece: b.piece,
                    offset: b.offset,
                    length: b.length,
                }));
            }
        }
    }

    fn on_extended(&mut self, key: PeerKey, id: u8, payload: Bytes) -> Result<(), String> {
        if id == 0 {
            let hs = ExtHandshake::decode(&payload).map_err(|e| e.to_string())?;
            if let Some(p) = self.peers.get_mut(&key) {
                if let Some(q) = hs.reqq {
                    p.pipeline = p.pipeline.min(q.max(1) as usize);
                }
                p.ext = Some(hs);
            }
            return Ok(());
        }
        if id != OUR_UT_METADATA {
            return Ok(());
        }
        let msg = MetadataMsg::decode(&payload).map_err(|e| e.to_string())?;
        let Some(their_id) = self.peers.get(&key).and_then(|p| p.ext.as_ref()?.ut_metadata) else {
            return Ok(());
        };
        if let MetadataMsg::Request { piece } = msg {
            let info = &self.meta.info_bytes;
            let start = piece as usize * METADATA_PIECE as usize;
            let reply = if start < info.len() {
                let end = (start + METADATA_PIECE as usize).min(info.len());
                MetadataMsg::Data {
                    piece,
                    total_size: info.len() as u32,
                    data: Bytes::copy_from_slice(&info[start..end]),
                }
            } else {
                MetadataMsg::Reject { piece }
            };
            self.send(
                key,
                Message::Extended { id: their_id, payload: Bytes::from(reply.encode()) },
            );
        }
        Ok(())
    }

    fn apply_choker(&mut self) {
        while let Some(d) = self.choker.poll() {
            let (key, choke) = match d {
                ChokeDecision::Choke(k) => (k, true),
                ChokeDecision::Unchoke(k) => (k, false),
            };
            let Some(p) = self.peers.get_mut(&key) else {
                continue;
            };
            if p.am_choking == choke {
                continue;
            }
            p.am_choking = choke;
            if choke {
                p.io.push(Outgoing::Msg(Message::Choke));
                p.io.push(Outgoing::DropBlocks { reject: p.fast });
            } else {
                p.io.push(Outgoing::Msg(Message::Unchoke));
            }
        }
    }

    fn on_tick(&mut self, now: Instant, secs: f64) {
        let mut to_drop = vec![];
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            let Some(p) = self.peers.get_mut(&key) else {
                continue;
            };
            let up_now = p.io.counters.uploaded.load(Ordering::Relaxed);
            let delta = up_now - p.uploaded_seen;
            p.uploaded_seen = up_now;
            p.up.add(delta);
            self.choker.record_uploaded(key, delta);
            p.down.tick(secs);
            p.up.tick(secs);
            // Keep about half a second of the peer's rate in flight (4 to 500 blocks): enough to
            // cover a round trip, short enough that the last blocks do not queue behind a slow
            // peer's backlog at the end of the download.
            let by_rate = (p.down.per_sec * REQUEST_QUEUE_SECS / BLOCK_SIZE as f64).ceil() as usize;
            let cap = p.ext.as_ref().and_then(|e| e.reqq).unwrap_or(250).max(1) as usize;
            p.pipeline = by_rate.clamp(MIN_PIPELINE, 500).min(cap);
            if now.duration_since(p.last_msg) > Duration::from_secs(180) {
                to_drop.push((key, "silent for 3 minutes"));
                continue;
            }
            if now.duration_since(p.last_sent) > Duration::from_secs(90) {
                p.last_sent = now;
                p.io.push(Outgoing::Msg(Message::KeepAlive));
            }
            let waiting = self.picker.outstanding(key) > 0;
            if waiting && !p.snubbed && now.duration_since(p.last_block) > Duration::from_secs(30) {
                debug!(peer = %p.addr, "snubbed: no data for 30 s");
                p.snubbed = true;
                self.picker.release_peer(key);
            }
        }
        for (k, why) in to_drop {
            self.drop_peer(k, why);
        }
        self.drop_overflowed();
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for k in keys {
            self.fill_requests(k);
        }
        self.connect_more(now);
    }

    fn connect_more(&mut self, now: Instant) {
        if self.stats.complete.load(Ordering::Relaxed) && !self.config.seed_when_done {
            return;
        }
        let connected: BTreeSet<SocketAddr> = self.peers.values().map(|p| p.addr).collect();
        let mut budget =
            self.config.max_peers.saturating_sub(self.peers.len() + self.connecting.len());
        let ours = self.our_port;
        let mut dial = vec![];
        for (addr, (last, fails)) in self.candidates.iter_mut() {
            if budget == 0 {
                break;
            }
            if connected.contains(addr)
                || self.connecting.contains(addr)
                || self.banned.contains(addr)
                || *fails >= 5
                || (addr.ip().is_loopback() && addr.port() == ours)
            {
                continue;
            }
            let backoff = Duration::from_secs(5 * (1 << *fails));
            if last.is_some_and(|t| now.duration_since(t) < backoff) {
                continue;
            }
            *last = Some(now);
            dial.push(*addr);
            budget -= 1;
        }
        for addr in dial {
            self.connecting.insert(addr);
            let events = self.events_tx.clone();
            let (ih, id) = (self.meta.info_hash, self.our_id);
            tokio::spawn(async move {
                let ev = match peer::connect(addr, ih, id, Duration::from_secs(10)).await {
                    Ok(c) => Event::Connected(c),
                    Err(e) => {
                        debug!(%addr, "dial failed: {e}");
                        Event::ConnectFailed(addr)
                    }
                };
                let _ = events.send(ev).await;
            });
        }
    }
}
