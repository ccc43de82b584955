//! `--share DIR` of `chat`, `node` and `anchor`: every file directly in DIR becomes a torrent
//! (hashed at start), seeded from one session on the overlay's address, and described to the
//! chat service as a [`SharedFile`], which publishes it as a signed search record.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use overlay::chat::SharedFile;
use torrent::magnet::Magnet;
use torrent::metainfo::{CreateOptions, InfoHash, Metainfo};
use torrent::session::{Encryption, Role, Session, SessionConfig, SessionOptions, TorrentHandle};

/// Files shared from one directory, each seeded until [`Sharing::shutdown`].
pub struct Sharing {
    torrents: Vec<TorrentHandle>,
    _session: Session,
    /// The task publishing the files in the DHT.
    publisher: Option<tokio::task::JoinHandle<()>>,
    /// What the search records say.
    pub files: Vec<SharedFile>,
}

impl Sharing {
    /// Stops seeding.
    pub async fn shutdown(self) {
        if let Some(task) = &self.publisher {
            task.abort();
        }
        for t in self.torrents {
            t.shutdown().await;
        }
    }
}

/// The regular files directly in `dir` (not hidden, not links), in name order.
fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read --share directory {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        // file_type() does not follow links: a link to elsewhere is not shared.
        if !hidden && entry.file_type().is_ok_and(|t| t.is_file()) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Hashes and seeds every file in `dir` on `ip` (any free port), telling peers to find it at
/// `ip` and that port. Given the node's identity and DHT node, it also publishes the files in
/// the DHT ([`crate::dht_index::keep_publishing`]).
pub async fn share_dir(
    dir: &Path,
    ip: IpAddr,
    dht: Option<(overlay::identity::Identity, std::sync::Arc<dht::Dht>)>,
) -> Result<Sharing> {
    let files = files_in(dir)?;
    if files.is_empty() {
        bail!("--share {}: no files in it to share", dir.display());
    }
    let options = SessionOptions {
        listen: SocketAddr::new(ip, 0),
        upload_limit: None,
        download_limit: None,
        encryption: Encryption::Prefer,
        transport: torrent::session::Transport::Both,
    };
    let session = Session::bind(options).await.context("cannot open a port to seed from")?;
    let at = SocketAddr::new(ip, session.local_addr().port());
    let mut torrents = Vec::new();
    let mut shared = Vec::new();
    for path in files {
        eprintln!("sharing {}: hashing...", path.display());
        let p = path.clone();
        let bytes = tokio::task::spawn_blocking(move || {
            torrent::metainfo::create(&p, &CreateOptions::default(), &mut |_, _| {})
        })
        .await
        .context("hashing stopped")?
        .with_context(|| format!("cannot make a torrent of {}", path.display()))?;
        let meta = Metainfo::from_bytes(&bytes).context("the torrent just made does not parse")?;
        let file = SharedFile {
            name: meta.info.name.clone(),
            size: meta.info.total_length,
            info_hash: meta.info_hash.0,
            peers: vec![at],
        };
        let config = SessionConfig { seed_when_done: true, ..SessionConfig::default() };
        let handle = session
            .add(meta, dir.to_path_buf(), Role::Seed, config)
            .await
            .with_context(|| format!("cannot seed {}", path.display()))?;
        torrents.push(handle);
        shared.push(file);
    }
    eprintln!("sharing {} files from {} on {at}", shared.len(), dir.display());
    let publisher = dht.map(|(identity, node)| {
        crate::dht_index::keep_publishing(node, identity, shared.clone(), at.port())
    });
    Ok(Sharing { torrents, _session: session, files: shared, publisher })
}

/// The magnet link of a search result: its info-hash, name, and the peers its publishers
/// named (`x.pe`), so it downloads with no tracker and no DHT.
pub fn magnet(name: &str, info_hash: [u8; 20], peers: &[SocketAddr]) -> String {
    Magnet {
        info_hash: InfoHash(info_hash),
        display_name: Some(name.to_string()),
        trackers: Vec::new(),
        peers: peers.iter().map(|p| p.to_string()).collect(),
    }
    .to_uri()
}

/// Downloads a magnet link's torrent into `out` (the chat UI's `/get N`), telling `note` how
/// it goes.
pub async fn download(magnet: &str, out: &Path, note: impl Fn(String) + Send + Sync) -> Result<()> {
    let magnet = Magnet::parse(magnet).context("invalid magnet link")?;
    let options = SessionOptions {
        listen: SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0),
        upload_limit: None,
        download_limit: None,
        encryption: Encryption::Prefer,
        transport: torrent::session::Transport::Both,
    };
    let session = Session::bind(options).await.context("cannot open a port to download on")?;
    let meta = torrent::session::magnet::fetch_metadata(
        &magnet,
        &[],
        session.local_addr(),
        torrent::proto::metadata::MetadataConfig::default(),
        Encryption::Prefer,
        session.dialer(),
        &|tried| {
            note(format!("none of the {tried} peers tried has the metadata yet; asking again"))
        },
    )
    .await
    .context("cannot fetch the torrent's metadata from its peers")?;
    let name = meta.info.name.clone();
    note(format!("downloading {name} into {}", out.display()));
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let config = SessionConfig { peers: crate::magnet_peers(&magnet).await, ..Default::default() };
    let handle = session.add(meta, out.to_path_buf(), Role::Download, config).await?;
    let result = handle.wait_complete().await;
    handle.shutdown().await;
    result.with_context(|| format!("download of {name} failed"))?;
    note(format!("{name}: complete, every piece verified"));
    Ok(())
}
