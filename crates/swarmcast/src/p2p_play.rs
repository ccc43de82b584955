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
use std::time::Instant;

use anyhow::{Context, Result};
use bytes::Bytes;
use stream::player::{Peers, PeersFuture};
use torrent::metainfo::{Info, Metainfo};
use torrent::session::{Role, Session, SessionConfig, TorrentHandle, TorrentReader};

/// The movie's torrent beside the MPD.
pub const MOVIE_TORRENT: &str = crate::stream_serve::MOVIE_TORRENT;
/// Most bytes of a movie's torrent we download.
const MAX_TORRENT_BYTES: usize = 8 << 20;

/// The viewer's side of the swarm: the running torrent and its files by path.
pub struct TorrentPeers {
    handle: TorrentHandle,
    reader: TorrentReader,
    /// File index by path relative to the package (the MPD's directory).
    files: HashMap<String, usize>,
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
        let handle = Session::start(meta, dir, Role::Download, config)
            .await
            .context("cannot start the movie's torrent")?;
        let reader = handle.reader();
        reader.fetch_urgent_only(true).await;
        Ok(TorrentPeers { handle, reader, files, _dir: tmp })
    }

    /// The port other viewers reach us on.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// Stops the torrent.
    pub async fn shutdown(self) {
        self.handle.shutdown().await;
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

/// Every real file of `info` by its path below the torrent's folder.
fn files_by_path(info: &Info) -> HashMap<String, usize> {
    let files = info.files.iter().enumerate().filter(|(_, f)| !f.pad && f.length > 0);
    files.map(|(i, f)| (f.path.join("/"), i)).collect()
}

impl Peers for TorrentPeers {
    fn fetch(&mut self, path: &str, deadline: Instant) -> PeersFuture<'_, Option<Bytes>> {
        let index = self.files.get(path).copied();
        let path = path.to_string();
        Box::pin(async move {
            let index = index?;
            let pieces = self.pieces(index);
            let mut have = self.reader.have();
            let missing = |h: &torrent::Bitfield| pieces.clone().filter(|&p| !h.has(p)).count();
            if missing(&have.borrow_and_update()) > 0 {
                // Nobody has it: the CDN at once, no wait (the first viewer pays nothing).
                if !self.reader.available(pieces.clone().collect()).await {
                    tracing::debug!(path, "no peer has it: from the CDN");
                    return None;
                }
                self.reader.set_urgent(pieces.clone().collect()).await;
                while missing(&have.borrow_and_update()) > 0 {
                    match tokio::time::timeout_at(deadline.into(), have.changed()).await {
                        Ok(Ok(())) => {}
                        _ => {
                            tracing::debug!(path, "peers too slow: from the CDN");
                            return None;
                        }
                    }
                }
            }
            let f = &self.reader.info().files[index];
            self.reader.read_at(f.offset, f.length as usize, 0).await.ok()
        })
    }

    fn offer(&mut self, path: &str, data: Bytes) -> PeersFuture<'_, ()> {
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
        })
    }
}
