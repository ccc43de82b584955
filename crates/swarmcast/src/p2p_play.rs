//! `swarmcast play URL --p2p`: the viewer is also a peer of the movie's torrent (the
//! `movie.torrent` that `stream package` writes beside the MPD). Every segment is asked of the
//! other viewers first, through the torrent engine with only that segment's pieces wanted
//! (`fetch_urgent_only`); what does not arrive before the player's patience runs out comes from
//! the CDN, and its pieces are handed to the engine (`add_piece`: hashed like a peer's) so the
//! viewer serves them to the next. KanKan and PPLive clients worked this way, through a local
//! node; p2p-media-loader falls back to HTTP before a segment's deadline the same way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use bytes::Bytes;
use stream::player::{PeerPart, Peers, PeersFuture};
use torrent::metainfo::{Info, Metainfo};
use torrent::session::{Role, Session, SessionConfig, TorrentHandle, TorrentReader};

/// The movie's torrent beside the MPD.
pub const MOVIE_TORRENT: &str = crate::stream_serve::MOVIE_TORRENT;
/// Longest `join` waits for a first given viewer to answer.
const PEER_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
/// Most bytes of a movie's torrent we download.
const MAX_TORRENT_BYTES: usize = 8 << 20;

/// The viewer's side of the swarm: the running torrent and its files by path.
pub struct TorrentPeers {
    handle: TorrentHandle,
    reader: TorrentReader,
    /// File index by path relative to the package (the MPD's directory).
    files: HashMap<String, usize>,
    /// Pieces of the files the player will ask for next ([`Peers::prefetch`]), soonest first.
    prefetch: std::sync::Mutex<Vec<u32>>,
    /// The pieces each fetch in progress waits for, by request id, oldest first.
    waiting: std::sync::Mutex<Vec<(u64, Vec<u32>)>>,
    next_id: std::sync::atomic::AtomicU64,
    /// Keeps a temporary download folder alive.
    _dir: Option<tempfile::TempDir>,
}

/// How to join the movie's swarm.
pub struct P2pOptions {
    pub listen: SocketAddr,
    pub peers: Vec<SocketAddr>,
    /// Where the segments are stored (`None`: a temporary folder, removed at the end).
    pub dir: Option<PathBuf>,
    /// Bytes per second to other viewers / from them (`None`: unlimited).
    pub upload_limit: Option<u64>,
    pub download_limit: Option<u64>,
}

impl TorrentPeers {
    /// Fetches the movie's torrent from the MPD's directory and joins its swarm.
    pub async fn join(mpd_url: &str, opts: P2pOptions) -> Result<TorrentPeers> {
        let url = stream::mpd::resolve_url(mpd_url, MOVIE_TORRENT);
        let config = http_layer::ClientConfig {
            max_response_bytes: MAX_TORRENT_BYTES,
            user_agent: "Swarmcast/0.1 (swarmcast play --p2p)".to_owned(),
            ..http_layer::ClientConfig::default()
        };
        let client = http_layer::HttpClient::new(config)?;
        let response = client.get(&url).await.with_context(|| format!("cannot fetch {url}"))?;
        anyhow::ensure!(
            response.status().is_success(),
            "{url}: HTTP {} (package the movie again with `swarmcast stream package`, which \
             writes {MOVIE_TORRENT}, or play without --p2p)",
            response.status().as_u16()
        );
        let bytes = response.bytes_capped(MAX_TORRENT_BYTES).await?;
        let meta = Metainfo::from_bytes(&bytes).with_context(|| url.clone())?;
        let files = files_by_path(&meta.info);
        let (dir, tmp) = match opts.dir {
            Some(d) => (d, None),
            None => {
                let t = tempfile::Builder::new().prefix("swarmcast-p2p-").tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let config = SessionConfig {
            listen: opts.listen,
            peers: opts.peers,
            upload_limit: opts.upload_limit,
            download_limit: opts.download_limit,
            seed_when_done: true,
            ..SessionConfig::default()
        };
        let wait_for_peers = !config.peers.is_empty();
        let handle = Session::start(meta, dir, Role::Download, config)
            .await
            .context("cannot start the movie's torrent")?;
        let reader = handle.reader();
        reader.fetch_urgent_only(true).await;
        if wait_for_peers {
            // The first segments are asked for at once: give the given viewers a moment to
            // answer, or those would all come from the CDN.
            let stats = handle.stats().clone();
            let connected = || stats.peers.load(std::sync::atomic::Ordering::Relaxed) > 0;
            let until = Instant::now() + PEER_WAIT;
            while !connected() && Instant::now() < until {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        Ok(TorrentPeers {
            handle,
            reader,
            files,
            prefetch: Default::default(),
            waiting: Default::default(),
            next_id: Default::default(),
            _dir: tmp,
        })
    }

    /// The port other viewers reach us on.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// Stops the torrent, then removes a temporary download folder on the blocking pool
    /// (deleting its files on the runtime's thread would hold up every task sharing it).
    pub async fn shutdown(self) {
        let TorrentPeers { handle, reader, _dir, .. } = self;
        handle.shutdown().await;
        drop(reader);
        if let Some(dir) = _dir {
            let _ = tokio::task::spawn_blocking(move || drop(dir)).await;
        }
    }

    /// Stops the torrent if this is its last holder (else it stops when the last one drops).
    pub async fn shutdown_shared(peers: Arc<TorrentPeers>) {
        if let Ok(p) = Arc::try_unwrap(peers) {
            p.shutdown().await;
        }
    }

    /// Stops fetching from peers while the player fetches from the CDN, so the viewer's
    /// downloads never exceed one link's worth (the peers' limit or the CDN's, not both); other
    /// requests still waiting for peers (a browser's) keep their pieces.
    async fn pause(&self) {
        if let Ok(mut p) = self.prefetch.lock() {
            p.clear();
        }
        self.reader.set_urgent(self.urgent_list()).await;
    }

    /// The pieces waited for, oldest request first, then the prefetch window.
    fn urgent_list(&self) -> Vec<u32> {
        let mut list: Vec<u32> = Vec::new();
        if let Ok(w) = self.waiting.lock() {
            for (_, pieces) in w.iter() {
                list.extend(pieces.iter().filter(|p| !list.contains(p)).collect::<Vec<_>>());
            }
        }
        if let Ok(ahead) = self.prefetch.lock() {
            let ahead: Vec<u32> = ahead.iter().copied().filter(|p| !list.contains(p)).collect();
            list.extend(ahead);
        }
        list
    }

    /// What the verified pieces `had` hold of file `index`, the bytes from its first missing
    /// piece to its last left for the CDN (the whole file when none is missing); `None` when no
    /// piece is had.
    async fn part(&self, index: usize, had: &torrent::Bitfield) -> Option<PeerPart> {
        let info = self.reader.info();
        let f = &info.files[index];
        let pl = u64::from(info.piece_length);
        let pieces = self.pieces(index);
        let Some(first) = pieces.clone().find(|&p| !had.has(p)) else {
            // Everything verified just as the wait ended.
            let data = self.reader.read_at(f.offset, f.length as usize, 0).await.ok()?;
            return Some(PeerPart::whole(data.to_vec()));
        };
        let last = pieces.clone().rev().find(|&p| !had.has(p))?;
        if pieces.clone().all(|p| !had.has(p)) {
            return None;
        }
        // Piece bounds within the file.
        let span = |p: u32| {
            let start = (u64::from(p) * pl).max(f.offset) - f.offset;
            let end = (u64::from(p) * pl + u64::from(info.piece_size(p))).min(f.offset + f.length);
            start..end - f.offset
        };
        let missing = span(first).start..span(last).end;
        let mut data = vec![0u8; f.length as usize];
        for p in pieces.filter(|&p| had.has(p)) {
            let s = span(p);
            if missing.contains(&s.start) {
                continue;
            }
            let bytes = self.reader.read_at(f.offset + s.start, (s.end - s.start) as usize, 0);
            let bytes = bytes.await.ok()?;
            data[s.start as usize..s.end as usize].copy_from_slice(&bytes);
        }
        Some(PeerPart { data, missing })
    }

    /// The pieces of file `index` (none for an empty file).
    fn pieces(&self, index: usize) -> std::ops::Range<u32> {
        let info = self.reader.info();
        let f = &info.files[index];
        if f.length == 0 {
            return 0..0;
        }
        let pl = u64::from(info.piece_length);
        (f.offset / pl) as u32..((f.offset + f.length - 1) / pl) as u32 + 1
    }
}

/// A [`TorrentPeers`] still joining the swarm: playback starts at once, as without peers, and
/// what is asked for before the swarm is joined comes from the CDN without waiting, so
/// joining never delays the start.
pub struct JoiningPeers {
    ready: tokio::sync::watch::Receiver<Option<Arc<TorrentPeers>>>,
    task: tokio::task::JoinHandle<Result<Arc<TorrentPeers>>>,
    /// Files the player fetched from the CDN before the swarm was joined, handed to it once
    /// joined (at most [`MAX_PENDING_BYTES`]).
    pending: Arc<std::sync::Mutex<Pending>>,
}

/// Files offered before the join, and their bytes; the timeline told before it.
#[derive(Default)]
struct Pending {
    files: Vec<(String, Bytes)>,
    bytes: usize,
    timeline: Option<Vec<(String, u32)>>,
}

/// Most bytes of files kept for the swarm while it is being joined.
const MAX_PENDING_BYTES: usize = 32 << 20;

impl JoiningPeers {
    /// Starts joining the swarm of the movie at `mpd_url`; `joined` runs once it has.
    pub fn start(
        mpd_url: &str,
        opts: P2pOptions,
        joined: impl FnOnce(&TorrentPeers) + Send + 'static,
    ) -> JoiningPeers {
        let (tx, ready) = tokio::sync::watch::channel(None);
        let url = mpd_url.to_string();
        let pending: Arc<std::sync::Mutex<Pending>> = Arc::default();
        let early = pending.clone();
        let task = tokio::spawn(async move {
            let peers = Arc::new(TorrentPeers::join(&url, opts).await?);
            joined(&peers);
            tx.send_replace(Some(peers.clone()));
            // An offer either saw the swarm joined or is in `pending` now (both under its lock).
            let (files, timeline) = early
                .lock()
                .map(|mut p| (std::mem::take(&mut p.files), p.timeline.take()))
                .unwrap_or_default();
            if let Some(t) = timeline {
                peers.timeline(t).await;
            }
            for (path, data) in files {
                peers.offer(&path, data).await;
            }
            Ok(peers)
        });
        JoiningPeers { ready, task, pending }
    }

    /// The joined swarm, once the join has ended (its error if it failed).
    pub async fn finish(self) -> Result<Arc<TorrentPeers>> {
        self.task.await.context("joining the swarm panicked")?
    }
}

impl Peers for JoiningPeers {
    fn fetch(&self, path: &str, deadline: Instant) -> PeersFuture<'_, Option<PeerPart>> {
        let peers = self.ready.borrow().clone();
        let path = path.to_string();
        Box::pin(async move { peers?.fetch(&path, deadline).await })
    }

    fn offer(&self, path: &str, data: Bytes) -> PeersFuture<'_, ()> {
        let peers = match self.pending.lock() {
            Ok(mut pending) => {
                let peers = self.ready.borrow().clone();
                if peers.is_none() && pending.bytes + data.len() <= MAX_PENDING_BYTES {
                    pending.bytes += data.len();
                    pending.files.push((path.to_string(), data.clone()));
                }
                peers
            }
            Err(_) => None,
        };
        let path = path.to_string();
        Box::pin(async move {
            if let Some(p) = peers {
                p.offer(&path, data).await;
            }
        })
    }

    fn prefetch(&self, files: Vec<Vec<String>>) -> PeersFuture<'_, ()> {
        let peers = self.ready.borrow().clone();
        Box::pin(async move {
            if let Some(p) = peers {
                p.prefetch(files).await;
            }
        })
    }

    fn missing(&self, path: &str) -> Option<u64> {
        self.ready.borrow().as_ref().and_then(|p| p.missing(path))
    }

    fn serves(&self, path: &str) -> PeersFuture<'_, bool> {
        let peers = self.ready.borrow().clone();
        let path = path.to_string();
        Box::pin(async move {
            match peers {
                Some(p) => p.serves(&path).await,
                None => false,
            }
        })
    }

    fn timeline(&self, files: Vec<(String, u32)>) -> PeersFuture<'_, ()> {
        let peers = match self.pending.lock() {
            Ok(mut pending) => {
                let peers = self.ready.borrow().clone();
                if peers.is_none() {
                    pending.timeline = Some(files.clone());
                }
                peers
            }
            Err(_) => None,
        };
        Box::pin(async move {
            if let Some(p) = peers {
                p.timeline(files).await;
            }
        })
    }
}

/// Every real file of `info` by its path below the torrent's folder: the segments, not the
/// manifest (always from the CDN) nor a file over the player's segment limit.
fn files_by_path(info: &Info) -> HashMap<String, usize> {
    let files = info.files.iter().enumerate().filter(|(_, f)| {
        let name = f.path.last().map(String::as_str).unwrap_or_default();
        !f.pad && f.length > 0 && f.length <= MAX_SEGMENT_BYTES && !name.ends_with(".mpd")
    });
    files.map(|(i, f)| (f.path.join("/"), i)).collect()
}

/// Largest file asked of peers (the player's own segment limit).
const MAX_SEGMENT_BYTES: u64 = 256 << 20;

/// Takes a fetch's pieces out of [`TorrentPeers::waiting`] however the fetch ends.
struct Waiting<'a> {
    peers: &'a TorrentPeers,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Ok(mut w) = self.peers.waiting.lock() {
            w.retain(|(id, _)| *id != self.id);
        }
    }
}

impl Peers for TorrentPeers {
    fn fetch(&self, path: &str, deadline: Instant) -> PeersFuture<'_, Option<PeerPart>> {
        let index = self.files.get(path).copied();
        let path = path.to_string();
        Box::pin(async move {
            let index = index?;
            let pieces = self.pieces(index);
            let mut have = self.reader.have();
            let missing = |h: &torrent::Bitfield| pieces.clone().filter(|&p| !h.has(p)).count();
            let asked = Instant::now();
            if missing(&have.borrow_and_update()) > 0 {
                // Nobody has it: the CDN at once, no wait (the first viewer pays nothing).
                if !self.reader.available(pieces.clone().collect()).await {
                    tracing::debug!(path, "no peer has it: from the CDN");
                    self.pause().await;
                    return None;
                }
                // This file (after those other requests wait for: a browser asks for audio
                // and video at once), then the ones the player will ask for next.
                let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Ok(mut w) = self.waiting.lock() {
                    w.push((id, pieces.clone().collect()));
                }
                let waiting = Waiting { peers: self, id };
                self.reader.set_urgent(self.urgent_list()).await;
                while missing(&have.borrow_and_update()) > 0 {
                    match tokio::time::timeout_at(deadline.into(), have.changed()).await {
                        Ok(Ok(())) => {}
                        _ => {
                            tracing::debug!(path, "peers too slow: the rest from the CDN");
                            drop(waiting);
                            self.pause().await;
                            let had = have.borrow().clone();
                            return self.part(index, &had).await;
                        }
                    }
                }
            }
            // Waited for, or prefetched before it was asked for (0 ms).
            let ms = asked.elapsed().as_millis();
            tracing::debug!(path, pieces = pieces.len(), ms, "from peers");
            let f = &self.reader.info().files[index];
            let data = self.reader.read_at(f.offset, f.length as usize, 0).await.ok()?;
            Some(PeerPart::whole(data.to_vec()))
        })
    }

    fn prefetch(&self, files: Vec<Vec<String>>) -> PeersFuture<'_, ()> {
        Box::pin(async move {
            let have = self.reader.have().borrow().clone();
            // Of each file's alternatives, the first that is here or that a peer serving us
            // has, else the last (what the player plays).
            let mut pieces: Vec<u32> = Vec::new();
            for choices in &files {
                let known: Vec<usize> =
                    choices.iter().filter_map(|p| self.files.get(p).copied()).collect();
                let mut chosen = known.last().copied();
                for &i in &known[..known.len().saturating_sub(1)] {
                    if self.reader.served(self.pieces(i).collect()).await {
                        chosen = Some(i);
                        break;
                    }
                }
                pieces.extend(chosen.into_iter().flat_map(|i| self.pieces(i)));
            }
            pieces.retain(|&p| !have.has(p));
            if let Ok(mut p) = self.prefetch.lock() {
                *p = pieces;
            }
            let urgent = self.urgent_list();
            if !urgent.is_empty() {
                self.reader.set_urgent(urgent).await;
            }
        })
    }

    fn timeline(&self, files: Vec<(String, u32)>) -> PeersFuture<'_, ()> {
        Box::pin(async move {
            let info = self.reader.info();
            // A piece's place: the latest segment among the files in it (0: none, as init
            // segments, which come first).
            let mut timeline = vec![0u32; info.num_pieces() as usize];
            for (path, segment) in files {
                let Some(&index) = self.files.get(&path) else { continue };
                for p in self.pieces(index) {
                    if let Some(t) = timeline.get_mut(p as usize) {
                        *t = (*t).max(segment);
                    }
                }
            }
            self.reader.set_timeline(timeline).await;
        })
    }

    fn serves(&self, path: &str) -> PeersFuture<'_, bool> {
        let index = self.files.get(path).copied();
        Box::pin(async move {
            match index {
                Some(i) => self.reader.served(self.pieces(i).collect()).await,
                None => false,
            }
        })
    }

    fn missing(&self, path: &str) -> Option<u64> {
        let &index = self.files.get(path)?;
        let info = self.reader.info();
        let f = &info.files[index];
        let pl = u64::from(info.piece_length);
        let have = self.reader.have();
        let have = have.borrow();
        // Each missing piece's overlap with the file.
        let missing = self.pieces(index).filter(|&p| !have.has(p)).map(|p| {
            let start = u64::from(p) * pl;
            let end = start + u64::from(info.piece_size(p));
            end.min(f.offset + f.length) - start.max(f.offset)
        });
        Some(missing.sum())
    }

    fn offer(&self, path: &str, data: Bytes) -> PeersFuture<'_, ()> {
        let index = self.files.get(path).copied();
        Box::pin(async move {
            let Some(index) = index else { return };
            let info = self.reader.info();
            let f = &info.files[index];
            let pl = u64::from(info.piece_length);
            // Only a file that starts a piece (an aligned torrent) fills whole pieces alone.
            if data.len() as u64 != f.length || !f.offset.is_multiple_of(pl) {
                return;
            }
            let have = self.reader.have().borrow().clone();
            for p in self.pieces(index) {
                if have.has(p) {
                    continue;
                }
                let at = (u64::from(p) * pl - f.offset) as usize;
                let size = info.piece_size(p) as usize;
                let end = (at + size).min(data.len());
                let piece = if end - at == size {
                    data.slice(at..end)
                } else {
                    // The file's last piece: the rest is the pad after it (zeros); if it is
                    // not, the hash check fails and the piece is fetched from peers.
                    let mut v = data[at..end].to_vec();
                    v.resize(size, 0);
                    Bytes::from(v)
                };
                self.reader.add_piece(p, piece).await;
            }
            // Done once they are stored and verified, so a viewer that stops right after
            // playing leaves its folder whole; a piece that fails its check (the CDN's bytes
            // did not match the torrent) is waited for until OFFER_WAIT.
            let mut have = self.reader.have();
            let pieces = self.pieces(index);
            let stored = have.wait_for(|h| pieces.clone().all(|p| h.has(p)));
            let _ = tokio::time::timeout(OFFER_WAIT, stored).await;
        })
    }
}

/// Longest [`TorrentPeers::offer`] waits for the pieces it added to be stored and verified.
const OFFER_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// How the browser's local node is set up (`play URL --p2p --serve ADDR`).
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// How long a segment waits for peers before the CDN is asked for the rest.
    pub wait: std::time::Duration,
    /// dash.js's directory.
    pub assets: PathBuf,
}

/// Serves the movie at `mpd_url` to a browser on `opts.listen`, as an edge whose origin is the
/// other viewers first and the CDN second (`stream::edge::PeerSource`); a browser opening
/// `/player` plays it with dash.js. Runs until Ctrl-C.
pub async fn serve_browser(mpd_url: &str, peers: TorrentPeers, opts: ServeOptions) -> Result<()> {
    // As the player reads it (redirects followed): the node stands in front of where it ends.
    let (mpd_url, mpd) = stream::player::fetch_manifest(mpd_url).await?;
    let mpd_url = mpd_url.as_str();
    // Where the segments are: the first BaseURL, else the manifest's folder.
    let base = match mpd.base_urls.first() {
        Some(b) => stream::mpd::resolve_url(mpd_url, b),
        None => stream::mpd::resolve_url(mpd_url, "./"),
    };
    let (origin, prefix, manifest) = split_base(&base, mpd_url)?;
    let assets = stream::web::check_assets(&opts.assets)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .map(|_| opts.assets.clone())?;
    let source = stream::edge::PeerSource {
        peers: std::sync::Arc::new(peers),
        prefix,
        wait: opts.wait,
        assets,
        manifest,
    };
    let config = stream::edge::EdgeConfig::new(origin, LOCAL_CACHE_BYTES, "local node");
    let server = stream::edge::EdgeServer::bind_with_peers(opts.listen, config, Some(source))
        .await
        .context("cannot start the local node")?;
    let addr = server.local_addr();
    println!(
        "open http://{addr}/player in a browser (Ctrl-C to stop); counters: http://{addr}/health"
    );
    tokio::select! {
        r = server.run() => r.context("the local node stopped")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// Bytes of segments the local node keeps for the browser's repeated requests.
const LOCAL_CACHE_BYTES: u64 = 64 << 20;

/// `http://HOST:PORT/dir/` → (`http://HOST:PORT`, `/dir/` decoded, the manifest's file name).
fn split_base(base: &str, mpd_url: &str) -> Result<(String, String, String)> {
    let url = http_layer::parse_url(base).map_err(|e| anyhow::anyhow!("{e}"))?;
    let origin = url.origin().ascii_serialization();
    let path = percent_encoding::percent_decode_str(url.path()).decode_utf8_lossy().into_owned();
    let prefix = match path.rfind('/') {
        Some(i) => path[..=i].to_string(),
        None => "/".to_string(),
    };
    let mpd = http_layer::parse_url(mpd_url).map_err(|e| anyhow::anyhow!("{e}"))?;
    let name = mpd.path().rsplit('/').next().unwrap_or_default();
    let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy().into_owned();
    anyhow::ensure!(!name.is_empty(), "{mpd_url} does not name a manifest file");
    Ok((origin, prefix, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_splits_into_origin_prefix_and_manifest() {
        let (o, p, m) =
            split_base("http://127.0.0.1:8080/movie/", "http://r:1/movie/manifest.mpd").unwrap();
        assert_eq!(
            (o.as_str(), p.as_str(), m.as_str()),
            ("http://127.0.0.1:8080", "/movie/", "manifest.mpd")
        );
        let (o, p, _) = split_base("http://e/a%20b/x.m4s", "http://e/a%20b/m.mpd").unwrap();
        assert_eq!((o.as_str(), p.as_str()), ("http://e", "/a b/"));
        assert!(split_base("http://e/", "http://e/").is_err());
    }
}
