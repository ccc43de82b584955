//! `swarmcast up`: the long-lived node (issue 16). One process holds a multi-torrent session
//! (one peer port for every torrent), keeps its torrents in SQLite (`DIR/node.sqlite`, see
//! `store.rs`) and answers an HTTP API (`api.rs`) that the thin CLI commands (`client.rs`:
//! `add`, `ls`, `info`, `pause`, `resume`, `rm`) and, later, the web UI drive.
//!
//! - One node per data folder: `DIR/lock` is held (an OS file lock, released by the kernel
//!   however the process ends) and a second `up` on the same DIR is refused.
//! - `DIR/api` (mode 0600) holds the API's address and a random token, so a client run by the
//!   same user finds the node; every API call must carry the token.
//! - After `kill -9` and a restart every torrent that was not paused starts again; its files
//!   are re-checked, so only pieces that were not verified on disk are fetched again.
//! - A torrent keeps seeding once complete (as Transmission and qBittorrent do), until paused
//!   or removed. Its files go to `DIR/downloads` unless the add names a folder.

mod api;
pub mod client;
mod events;
mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use torrent::magnet::Magnet;
use torrent::metainfo::{InfoHash, Metainfo};
use torrent::session::{Encryption, Role, Session, SessionConfig, SessionOptions, TorrentHandle};

use store::{Row, Store};

/// `swarmcast up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// The node's folder: its database, lock, API file and (by default) downloads. Default:
    /// $XDG_DATA_HOME/swarmcast, else ~/.local/share/swarmcast.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Where the HTTP API (and later the web UI) listens. Loopback only for now: listening
    /// beyond it needs a password, which is not built yet.
    #[arg(long, default_value = "127.0.0.1:7373")]
    pub listen: SocketAddr,
    /// TCP (and uTP) port for peers of every torrent (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Address peers reach us on (TCP and UDP).
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: std::net::IpAddr,
    /// Where downloads go unless an add names a folder. Default: DIR/downloads.
    #[arg(long)]
    pub downloads: Option<PathBuf>,
}

/// The default node folder.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("swarmcast");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/swarmcast")
}

/// What a torrent is doing.
enum Phase {
    /// A magnet waiting for its metadata from peers.
    Fetching(tokio::task::JoinHandle<()>),
    /// Files opened and re-checked before the torrent runs.
    Checking(tokio::task::JoinHandle<()>),
    Running(Box<TorrentHandle>),
    Paused,
    /// Could not start; the reason for a person.
    Failed(String),
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Fetching(_) => "fetching metadata",
            Phase::Checking(_) => "checking",
            Phase::Running(h) if h.stats().complete.load(Ordering::Relaxed) => "seeding",
            Phase::Running(_) => "downloading",
            Phase::Paused => "paused",
            Phase::Failed(_) => "failed",
        }
    }
}

/// A torrent of the node.
struct Entry {
    row: Row,
    meta: Option<Arc<Metainfo>>,
    phase: Phase,
    /// Bumped at every start and stop, so a start that finishes late knows it was overtaken.
    generation: u64,
    /// Payload bytes per second, sampled once a second.
    rate_down: u64,
    rate_up: u64,
    last_counts: (u64, u64),
}

/// The node's shared state.
pub struct Node {
    session: Session,
    encryption: Encryption,
    store: Mutex<Store>,
    torrents: Mutex<BTreeMap<InfoHash, Entry>>,
    downloads: PathBuf,
    data: PathBuf,
    started: Instant,
    events: Arc<events::Events>,
    /// Node-wide, so a task of a removed torrent never matches one added again.
    generations: std::sync::atomic::AtomicU64,
}

/// Why a call on a torrent failed, mapped to an HTTP status by the API.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no torrent {0}: `swarmcast ls` lists them")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for NodeError {
    fn from(e: anyhow::Error) -> Self {
        NodeError::Internal(e)
    }
}

/// A torrent as the API shows it.
#[derive(serde::Serialize)]
pub struct TorrentView {
    pub id: String,
    pub name: String,
    pub state: &'static str,
    pub error: Option<String>,
    pub progress: f64,
    pub size: u64,
    pub have_bytes: u64,
    pub downloaded: u64,
    pub uploaded: u64,
    pub download_rate: u64,
    pub upload_rate: u64,
    pub peers: usize,
    pub save_dir: String,
    pub added_at: i64,
}

/// A file of a torrent.
#[derive(serde::Serialize)]
pub struct FileView {
    pub index: usize,
    pub path: String,
    pub length: u64,
    /// Verified bytes of this file.
    pub have_bytes: u64,
}

#[derive(serde::Serialize)]
pub struct TorrentDetail {
    #[serde(flatten)]
    pub torrent: TorrentView,
    pub piece_length: Option<u32>,
    pub pieces: Option<u32>,
    pub pieces_have: u32,
    pub files: Vec<FileView>,
    pub trackers: Vec<Vec<String>>,
    pub magnet: String,
}

/// What an add names.
pub enum AddSource {
    Magnet(Magnet),
    Torrent(Box<Metainfo>),
}

impl Node {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn torrents(&self) -> MutexGuard<'_, BTreeMap<InfoHash, Entry>> {
        self.torrents.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The info-hash a user's id names: 40 hex digits, or a prefix of at least 4 that names
    /// one torrent.
    fn resolve(&self, id: &str) -> Result<InfoHash, NodeError> {
        if let Some(ih) = InfoHash::from_hex(id) {
            return Ok(ih);
        }
        let id = id.to_ascii_lowercase();
        if id.len() < 4 || id.len() > 40 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(NodeError::NotFound(format!("{id:?} (an id is hex, at least 4 digits)")));
        }
        let torrents = self.torrents();
        let mut matching = torrents.keys().filter(|ih| ih.to_string().starts_with(&id));
        match (matching.next(), matching.next()) {
            (Some(ih), None) => Ok(*ih),
            (Some(_), Some(_)) => Err(NodeError::BadRequest(format!(
                "{id} names more than one torrent: give more digits"
            ))),
            _ => Err(NodeError::NotFound(id)),
        }
    }

    /// Adds a torrent, stores it and starts it unless `paused`.
    pub fn add(
        self: &Arc<Self>,
        source: AddSource,
        save_dir: Option<PathBuf>,
        paused: bool,
    ) -> Result<TorrentView, NodeError> {
        let save_dir = save_dir.unwrap_or_else(|| self.downloads.clone());
        if !save_dir.is_absolute() {
            return Err(NodeError::BadRequest(format!(
                "the folder {} is not an absolute path",
                save_dir.display()
            )));
        }
        let added_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let (row, meta) = match source {
            AddSource::Magnet(m) => {
                let name = m.display_name.clone().unwrap_or_else(|| m.info_hash.to_string());
                let trackers = m.trackers.iter().map(|t| vec![t.clone()]).collect();
                let row = Row {
                    info_hash: m.info_hash,
                    name,
                    magnet: Some(m.to_uri()),
                    info: None,
                    trackers,
                    save_dir,
                    paused,
                    added_at,
                };
                (row, None)
            }
            AddSource::Torrent(t) => {
                let row = Row {
                    info_hash: t.info_hash,
                    name: t.info.name.clone(),
                    magnet: None,
                    info: Some(t.info_bytes.clone()),
                    trackers: t.trackers.clone(),
                    save_dir,
                    paused,
                    added_at,
                };
                (row, Some(Arc::new(*t)))
            }
        };
        let ih = row.info_hash;
        {
            let mut torrents = self.torrents();
            if torrents.contains_key(&ih) {
                return Err(NodeError::Conflict(format!("the node already has {ih}")));
            }
            if !self.store().insert(&row)? {
                return Err(NodeError::Conflict(format!("the node already has {ih}")));
            }
            let entry = Entry {
                row,
                meta,
                phase: Phase::Paused,
                generation: 0,
                rate_down: 0,
                rate_up: 0,
                last_counts: (0, 0),
            };
            torrents.insert(ih, entry);
        }
        if !paused {
            self.start(ih, false)?;
        }
        self.view(ih).ok_or_else(|| NodeError::NotFound(ih.to_string()))
    }

    /// Starts a stored torrent that is paused or failed (anything else is left as it is):
    /// fetches a magnet's metadata first, then opens and re-checks its files and runs it on the
    /// session. With `persist`, the database records it as not paused, in the same step.
    fn start(self: &Arc<Self>, ih: InfoHash, persist: bool) -> Result<(), NodeError> {
        let mut torrents = self.torrents();
        let entry = torrents.get_mut(&ih).ok_or_else(|| NodeError::NotFound(ih.to_string()))?;
        if !matches!(entry.phase, Phase::Paused | Phase::Failed(_)) {
            return Ok(());
        }
        if persist {
            self.store().set_paused(ih, false)?;
        }
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        entry.generation = generation;
        let node = self.clone();
        let meta = entry.meta.clone();
        let magnet = entry.row.magnet.clone();
        let save_dir = entry.row.save_dir.clone();
        let fetching = meta.is_none();
        let task = tokio::spawn(async move {
            let meta = match meta {
                Some(m) => m,
                None => match node.fetch(ih, magnet.as_deref(), generation).await {
                    Ok(m) => m,
                    Err(e) => return node.fail(ih, generation, format!("{e:#}")),
                },
            };
            node.run_torrent(ih, meta, save_dir, generation).await;
        });
        entry.phase = if fetching { Phase::Fetching(task) } else { Phase::Checking(task) };
        Ok(())
    }

    /// Fetches a magnet's info dictionary from its peers and trackers, and stores it.
    async fn fetch(
        self: &Arc<Self>,
        ih: InfoHash,
        magnet: Option<&str>,
        generation: u64,
    ) -> Result<Arc<Metainfo>> {
        let magnet = Magnet::parse(magnet.context("no metadata and no magnet to fetch it by")?)
            .context("the stored magnet does not parse")?;
        let meta = torrent::session::magnet::fetch_metadata(
            &magnet,
            &[],
            self.session.local_addr(),
            // A long-lived node waits for a magnet's peers as long as it runs (a one-shot `get`
            // gives up after 5 minutes).
            torrent::proto::metadata::MetadataConfig {
                patience: Duration::from_secs(30 * 86_400),
                ..Default::default()
            },
            self.encryption,
            self.session.dialer(),
            &|tried| tracing::info!(%ih, tried, "no peer has the metadata yet; asking again"),
        )
        .await?;
        self.store().set_info(ih, &meta.info.name, &meta.info_bytes)?;
        let meta = Arc::new(meta);
        let mut torrents = self.torrents();
        if let Some(e) = torrents.get_mut(&ih).filter(|e| e.generation == generation) {
            e.row.name = meta.info.name.clone();
            e.row.info = Some(meta.info_bytes.clone());
            e.meta = Some(meta.clone());
            // The files are checked next.
            if let Phase::Fetching(task) = std::mem::replace(&mut e.phase, Phase::Paused) {
                e.phase = Phase::Checking(task);
            }
        }
        Ok(meta)
    }

    async fn run_torrent(
        self: &Arc<Self>,
        ih: InfoHash,
        meta: Arc<Metainfo>,
        save_dir: PathBuf,
        generation: u64,
    ) {
        if let Err(e) = std::fs::create_dir_all(&save_dir) {
            return self.fail(ih, generation, format!("cannot create {}: {e}", save_dir.display()));
        }
        // A magnet's `x.pe` peers are dialled besides those its trackers give.
        let magnet = self.torrents().get(&ih).and_then(|e| e.row.magnet.clone());
        let peers = match magnet.as_deref().map(Magnet::parse) {
            Some(Ok(m)) => crate::magnet_peers(&m).await,
            _ => vec![],
        };
        let config = SessionConfig { seed_when_done: true, peers, ..SessionConfig::default() };
        let added = self.session.add((*meta).clone(), save_dir, Role::Download, config).await;
        let handle = match added {
            Ok(h) => h,
            Err(e) => return self.fail(ih, generation, e.to_string()),
        };
        let ended = handle.ended();
        let stale = {
            let mut torrents = self.torrents();
            match torrents.get_mut(&ih).filter(|e| e.generation == generation) {
                Some(e) => {
                    e.phase = Phase::Running(Box::new(handle));
                    // A torrent that stops by itself (a disk error) shows as failed.
                    let node = self.clone();
                    tokio::spawn(async move {
                        if let Some(why) = ended.await {
                            node.fail(ih, generation, why);
                        }
                    });
                    None
                }
                // Paused or removed while it was being checked.
                None => Some(handle),
            }
        };
        if let Some(h) = stale {
            h.shutdown().await;
        }
    }

    fn fail(&self, ih: InfoHash, generation: u64, why: String) {
        tracing::warn!(%ih, "torrent stopped: {why}");
        let mut torrents = self.torrents();
        if let Some(e) = torrents.get_mut(&ih).filter(|e| e.generation == generation) {
            e.phase = Phase::Failed(why);
        }
    }

    /// Stops a torrent's work and waits until it stopped: a running torrent shuts down, a
    /// metadata fetch is cancelled, a check (files being opened and re-hashed on the blocking
    /// pool) is let finish and then shut down. With `persist`, the database records it as
    /// paused, in the same step.
    async fn stop(&self, ih: InfoHash, persist: bool) -> Result<(), NodeError> {
        let old = {
            let mut torrents = self.torrents();
            let e = torrents.get_mut(&ih).ok_or_else(|| NodeError::NotFound(ih.to_string()))?;
            if persist {
                self.store().set_paused(ih, true)?;
            }
            e.generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
            std::mem::replace(&mut e.phase, Phase::Paused)
        };
        match old {
            Phase::Running(h) => h.shutdown().await,
            Phase::Fetching(t) => t.abort(),
            // Its generation is stale now: it shuts down what it started.
            Phase::Checking(t) => {
                let _ = t.await;
            }
            Phase::Paused | Phase::Failed(_) => {}
        }
        Ok(())
    }

    pub async fn pause(self: &Arc<Self>, id: &str) -> Result<TorrentView, NodeError> {
        let ih = self.resolve(id)?;
        self.stop(ih, true).await?;
        self.view(ih).ok_or_else(|| NodeError::NotFound(id.into()))
    }

    pub async fn resume(self: &Arc<Self>, id: &str) -> Result<TorrentView, NodeError> {
        let ih = self.resolve(id)?;
        self.start(ih, true)?;
        self.view(ih).ok_or_else(|| NodeError::NotFound(id.into()))
    }

    /// Removes a torrent; with `delete_data`, also the files this node's downloads created
    /// (those recorded in the torrent's state file), never a file it found there.
    pub async fn remove(&self, id: &str, delete_data: bool) -> Result<Vec<PathBuf>, NodeError> {
        let ih = self.resolve(id)?;
        self.stop(ih, false).await?;
        let entry = self.torrents().remove(&ih);
        self.store().remove(ih)?;
        let Some(entry) = entry else { return Ok(vec![]) };
        let (true, Some(meta)) = (delete_data, entry.meta) else { return Ok(vec![]) };
        let dir = entry.row.save_dir.clone();
        let removed =
            tokio::task::spawn_blocking(move || torrent::storage::remove_created(&meta.info, &dir))
                .await
                .map_err(|e| NodeError::Internal(anyhow::anyhow!("{e}")))?
                .map_err(|e| NodeError::Internal(e.into()))?;
        Ok(removed)
    }

    /// Every torrent, oldest first.
    pub fn list(&self) -> Vec<TorrentView> {
        let torrents = self.torrents();
        let mut all: Vec<_> = torrents.iter().map(|(ih, e)| view_of(*ih, e)).collect();
        all.sort_by(|a, b| a.added_at.cmp(&b.added_at).then_with(|| a.id.cmp(&b.id)));
        all
    }

    fn view(&self, ih: InfoHash) -> Option<TorrentView> {
        self.torrents().get(&ih).map(|e| view_of(ih, e))
    }

    pub fn detail(&self, id: &str) -> Result<TorrentDetail, NodeError> {
        let ih = self.resolve(id)?;
        let torrents = self.torrents();
        let e = torrents.get(&ih).ok_or_else(|| NodeError::NotFound(id.into()))?;
        let have = match &e.phase {
            Phase::Running(h) => Some(h.reader().have().borrow().clone()),
            _ => None,
        };
        let mut files = Vec::new();
        if let Some(meta) = &e.meta {
            let info = &meta.info;
            let piece = u64::from(info.piece_length);
            for (index, f) in info.files.iter().enumerate().filter(|(_, f)| !f.pad) {
                let mut have_bytes = 0;
                if let (Some(have), true) = (&have, f.length > 0) {
                    let (first, last) = (f.offset / piece, (f.offset + f.length - 1) / piece);
                    for p in first..=last {
                        if have.has(p as u32) {
                            let start = (p * piece).max(f.offset);
                            let end = ((p + 1) * piece).min(f.offset + f.length);
                            have_bytes += end - start;
                        }
                    }
                }
                files.push(FileView {
                    index,
                    path: f.path.join("/"),
                    length: f.length,
                    have_bytes,
                });
            }
        }
        let magnet = Magnet {
            info_hash: ih,
            display_name: Some(e.row.name.clone()),
            trackers: e.row.trackers.iter().flatten().cloned().collect(),
            // Our own address, when it is one a peer can dial.
            peers: Some(self.session.local_addr())
                .filter(|a| !a.ip().is_unspecified())
                .map(|a| a.to_string())
                .into_iter()
                .collect(),
        };
        Ok(TorrentDetail {
            torrent: view_of(ih, e),
            piece_length: e.meta.as_ref().map(|m| m.info.piece_length),
            pieces: e.meta.as_ref().map(|m| m.info.num_pieces()),
            pieces_have: have.as_ref().map_or(0, |h| h.count()),
            files,
            trackers: e.row.trackers.clone(),
            magnet: magnet.to_uri(),
        })
    }

    /// The node itself.
    pub fn about(&self) -> serde_json::Value {
        let torrents = self.torrents();
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "peer_port": self.session.local_addr().port(),
            "data_dir": self.data.display().to_string(),
            "downloads": self.downloads.display().to_string(),
            "torrents": torrents.len(),
            "uptime_secs": self.started.elapsed().as_secs(),
        })
    }

    /// Samples every running torrent's rates over the last `secs` seconds.
    fn sample_rates(&self, secs: f64) {
        let mut torrents = self.torrents();
        for e in torrents.values_mut() {
            let counts = match &e.phase {
                Phase::Running(h) => (
                    h.stats().downloaded.load(Ordering::Relaxed),
                    h.stats().uploaded.load(Ordering::Relaxed),
                ),
                _ => (0, 0),
            };
            let per_sec = |now: u64, then: u64| (now.saturating_sub(then) as f64 / secs) as u64;
            e.rate_down = per_sec(counts.0, e.last_counts.0);
            e.rate_up = per_sec(counts.1, e.last_counts.1);
            e.last_counts = counts;
        }
    }

    /// The node's numbers in Prometheus' text format.
    pub fn metrics(&self) -> String {
        use std::fmt::Write;
        let list = self.list();
        let mut out = String::new();
        let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
        for t in &list {
            *by_state.entry(t.state).or_default() += 1;
        }
        let _ = writeln!(out, "# HELP swarmcast_torrents Torrents of the node by state.");
        let _ = writeln!(out, "# TYPE swarmcast_torrents gauge");
        for (state, n) in by_state {
            let _ = writeln!(out, "swarmcast_torrents{{state=\"{state}\"}} {n}");
        }
        type Series = (&'static str, &'static str, &'static str, fn(&TorrentView) -> f64);
        let series: [Series; 5] = [
            (
                "downloaded_bytes_total",
                "counter",
                "Payload bytes received since the torrent started.",
                |t| t.downloaded as f64,
            ),
            (
                "uploaded_bytes_total",
                "counter",
                "Payload bytes sent since the torrent started.",
                |t| t.uploaded as f64,
            ),
            ("verified_bytes", "gauge", "Verified bytes on disk.", |t| t.have_bytes as f64),
            ("size_bytes", "gauge", "The torrent's size.", |t| t.size as f64),
            ("peers", "gauge", "Connected peers.", |t| t.peers as f64),
        ];
        for (name, kind, help, value) in series {
            let _ = writeln!(out, "# HELP swarmcast_torrent_{name} {help}");
            let _ = writeln!(out, "# TYPE swarmcast_torrent_{name} {kind}");
            for t in &list {
                // The id is hex: safe as a label value; the name is a peer's claim, left out.
                let _ = writeln!(out, "swarmcast_torrent_{name}{{id=\"{}\"}} {}", t.id, value(t));
            }
        }
        let _ = writeln!(out, "# HELP swarmcast_uptime_seconds Seconds since the node started.");
        let _ = writeln!(out, "# TYPE swarmcast_uptime_seconds gauge");
        let _ = writeln!(out, "swarmcast_uptime_seconds {}", self.started.elapsed().as_secs());
        out
    }

    /// Shuts every torrent down (announcing `stopped`).
    async fn shutdown(&self) {
        let phases: Vec<Phase> = {
            let mut torrents = self.torrents();
            torrents.values_mut().map(|e| std::mem::replace(&mut e.phase, Phase::Paused)).collect()
        };
        for p in phases {
            match p {
                Phase::Running(h) => h.shutdown().await,
                Phase::Fetching(t) | Phase::Checking(t) => t.abort(),
                Phase::Paused | Phase::Failed(_) => {}
            }
        }
    }
}

fn view_of(ih: InfoHash, e: &Entry) -> TorrentView {
    let (mut progress, mut size, mut have_bytes, mut downloaded, mut uploaded, mut peers) =
        (0.0, 0, 0, 0, 0, 0);
    if let Some(meta) = &e.meta {
        size = meta.info.files.iter().filter(|f| !f.pad).map(|f| f.length).sum();
    }
    if let Phase::Running(h) = &e.phase {
        let s = h.stats();
        progress = s.progress();
        have_bytes = s.bytes_have.load(Ordering::Relaxed);
        downloaded = s.downloaded.load(Ordering::Relaxed);
        uploaded = s.uploaded.load(Ordering::Relaxed);
        peers = s.peers.load(Ordering::Relaxed);
    }
    TorrentView {
        id: ih.to_string(),
        name: e.row.name.clone(),
        state: e.phase.name(),
        error: match &e.phase {
            Phase::Failed(why) => Some(why.clone()),
            _ => None,
        },
        progress,
        size,
        have_bytes,
        downloaded,
        uploaded,
        download_rate: e.rate_down,
        upload_rate: e.rate_up,
        peers,
        save_dir: e.row.save_dir.display().to_string(),
        added_at: e.row.added_at,
    }
}

/// Holds `DIR/lock` for the life of the process; a second node on DIR is refused.
fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another swarmcast node is already running on {} (stop it first, or start this one \
             with another --data DIR)",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// A new random API token (32 bytes from the OS's generator, hex).
fn new_token() -> String {
    use rand::TryRngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).expect("the OS random generator failed");
    hex::encode(bytes)
}

/// `swarmcast up`: runs until Ctrl-C or SIGTERM.
pub async fn up(args: UpArgs) -> Result<()> {
    if !args.listen.ip().is_loopback() {
        bail!(
            "--listen {}: the API listens on loopback only for now (listening beyond it needs a \
             password, which is not built yet); use 127.0.0.1:PORT",
            args.listen
        );
    }
    let data = args.data.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data)
        .with_context(|| format!("cannot create the node's folder {}", data.display()))?;
    let data = std::fs::canonicalize(&data)?;
    let _lock = lock_dir(&data)?;
    let downloads = match &args.downloads {
        Some(d) => std::path::absolute(d)?,
        None => data.join("downloads"),
    };
    let store = Store::open(&data)?;
    let rows = store.torrents()?;
    let encryption = Encryption::Prefer;
    let session = Session::bind(SessionOptions {
        listen: SocketAddr::new(args.bind, args.port),
        upload_limit: None,
        download_limit: None,
        encryption,
        transport: torrent::session::Transport::Both,
    })
    .await?;
    let node = Arc::new(Node {
        session,
        encryption,
        store: Mutex::new(store),
        torrents: Mutex::new(BTreeMap::new()),
        downloads,
        data: data.clone(),
        started: Instant::now(),
        events: Arc::default(),
        generations: Default::default(),
    });
    let count = rows.len();
    for row in rows {
        let ih = row.info_hash;
        let (meta, phase) = match row.metainfo() {
            Ok(m) => (m.map(Arc::new), Phase::Paused),
            Err(e) => (None, Phase::Failed(format!("{e:#}"))),
        };
        let start = !row.paused && !matches!(phase, Phase::Failed(_));
        let entry = Entry {
            row,
            meta,
            phase,
            generation: 0,
            rate_down: 0,
            rate_up: 0,
            last_counts: (0, 0),
        };
        node.torrents().insert(ih, entry);
        if start {
            node.start(ih, false)?;
        }
    }
    let token = new_token();
    let (addr, server) = api::serve(node.clone(), args.listen, token.clone()).await?;
    let api_file = client::write_api_file(&data, addr, &token)?;
    println!("open http://{addr}/#token={token}");
    eprintln!(
        "swarmcast node up: web UI and API on http://{addr}/ (token in {}), peers on port {}, \
         {count} torrents, data in {} (Ctrl-C to stop)",
        api_file.display(),
        node.session.local_addr().port(),
        data.display()
    );
    // Every tick, what changed goes out as events; once a second the rates are sampled.
    let sampler = {
        let node = node.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(events::TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sent = BTreeMap::new();
            let mut last_rates = Instant::now();
            loop {
                tick.tick().await;
                if last_rates.elapsed() >= Duration::from_secs(1) {
                    let secs = last_rates.elapsed().as_secs_f64();
                    last_rates = Instant::now();
                    node.sample_rates(secs);
                }
                for e in events::diff(&mut sent, &node.list()) {
                    node.events.push(e);
                }
            }
        })
    };
    wait_for_stop().await;
    eprintln!("stopping: announcing to trackers and closing connections...");
    sampler.abort();
    server.abort();
    let _ = std::fs::remove_file(&api_file);
    node.shutdown().await;
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn wait_for_stop() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}
