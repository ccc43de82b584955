//! The thin CLI of a running node: `swarmcast add`, `ls`, `info`, `pause`, `resume`, `rm`. Each
//! finds the node through `DIR/api` (written by `swarmcast up`, mode 0600: its address and
//! token) and makes one API call.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::Method;

/// What `DIR/api` holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct ApiFile {
    url: String,
    token: String,
    pid: u32,
}

/// Most bytes of an `api` file read.
const MAX_API_FILE: u64 = 4096;

/// Writes `DIR/api` (mode 0600, through a temporary file and a rename); returns its path.
pub fn write_api_file(dir: &Path, addr: SocketAddr, token: &str) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("api");
    let tmp = dir.join(format!("api.{}.tmp", std::process::id()));
    let file =
        ApiFile { url: format!("http://{addr}"), token: token.into(), pid: std::process::id() };
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec(&file)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// `--data DIR` of the client commands.
#[derive(clap::Args, Clone)]
pub struct NodeDir {
    /// The node's folder (as given to `swarmcast up --data`).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// The client commands.
#[derive(clap::Subcommand)]
pub enum ClientCommand {
    /// Add a torrent to the running node: a magnet link, a .torrent file or an http(s) URL of one.
    Add {
        source: String,
        /// Where its files go (default: the node's downloads folder).
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// Add it paused.
        #[arg(long)]
        paused: bool,
        #[command(flatten)]
        node: NodeDir,
    },
    /// List the node's torrents.
    Ls {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        node: NodeDir,
    },
    /// Show one torrent: files, pieces, trackers, magnet.
    Info {
        /// Info-hash, or a prefix of at least 4 hex digits.
        id: String,
        #[command(flatten)]
        node: NodeDir,
    },
    /// Pause a torrent (it stays paused across restarts).
    Pause {
        id: String,
        #[command(flatten)]
        node: NodeDir,
    },
    /// Resume a paused or failed torrent.
    Resume {
        id: String,
        #[command(flatten)]
        node: NodeDir,
    },
    /// Remove a torrent from the node.
    Rm {
        id: String,
        /// Also delete the files its download created (never files it found there).
        #[arg(long)]
        delete_data: bool,
        #[command(flatten)]
        node: NodeDir,
    },
}

/// A connection to a running node.
struct NodeClient {
    http: http_layer::HttpClient,
    url: String,
    token: String,
}

impl NodeClient {
    fn find(dir: &NodeDir) -> Result<NodeClient> {
        let dir = dir.data.clone().unwrap_or_else(super::default_data_dir);
        let path = dir.join("api");
        let start = format!("start one with `swarmcast up --data {}`", dir.display());
        let bytes = match std::fs::File::open(&path) {
            Ok(f) => {
                use std::io::Read;
                use std::os::unix::fs::MetadataExt;
                let meta = f.metadata()?;
                if meta.mode() & 0o077 != 0 || meta.uid() != rustix::process::getuid().as_raw() {
                    bail!(
                        "{} is readable by others or not yours: it holds the node's token, so it \
                         is not trusted (the node writes it with mode 0600)",
                        path.display()
                    );
                }
                let mut b = Vec::new();
                f.take(MAX_API_FILE).read_to_end(&mut b)?;
                b
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("no swarmcast node runs on {}: {start}", dir.display())
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let api: ApiFile = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a node's api file", path.display()))?;
        let addr = api.url.strip_prefix("http://").and_then(|a| a.parse::<SocketAddr>().ok());
        if !addr.is_some_and(|a| a.ip().is_loopback()) {
            bail!("{} names {}, not a loopback address", path.display(), api.url);
        }
        let http = http_layer::HttpClient::new(http_layer::ClientConfig {
            max_response_bytes: 64 << 20,
            total_timeout: std::time::Duration::from_secs(60),
            ..Default::default()
        })?;
        Ok(NodeClient { http, url: api.url, token: api.token })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let mut headers = vec![(AUTHORIZATION, format!("Bearer {}", self.token))];
        let body = match body {
            Some(b) => {
                headers.push((CONTENT_TYPE, "application/json".into()));
                Bytes::from(serde_json::to_vec(&b)?)
            }
            None => Bytes::new(),
        };
        let url = format!("{}/api/v1/{path}", self.url);
        let fetched = self.http.request(method, &url, &headers, body).await.map_err(|e| {
            anyhow::anyhow!(
                "the node at {} does not answer ({e}); if it stopped, start it with \
                 `swarmcast up`",
                self.url
            )
        })?;
        let status = fetched.status();
        let bytes = fetched.bytes().await?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("the node answered {status} with something not JSON"))?;
        if !status.is_success() {
            let msg = value.get("error").and_then(|e| e.as_str()).unwrap_or("no reason given");
            bail!("{msg} ({status})");
        }
        Ok(value)
    }
}

/// A torrent id as typed: hex digits only (an info-hash or a prefix of one), so it cannot
/// change the API call it goes into.
fn check_id(id: &str) -> Result<&str> {
    if id.is_empty() || id.len() > 40 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{id:?} is not a torrent id: give its info-hash, or the first digits of it (`swarmcast ls`)");
    }
    Ok(id)
}

/// Runs a client command.
pub async fn run(cmd: ClientCommand) -> Result<()> {
    match cmd {
        ClientCommand::Add { source, output, paused, node } => {
            let c = NodeClient::find(&node)?;
            let mut body = serde_json::json!({ "paused": paused });
            if source.starts_with("magnet:") {
                body["magnet"] = source.into();
            } else if source.starts_with("http://") || source.starts_with("https://") {
                body["url"] = source.into();
            } else {
                let path = Path::new(&source);
                let meta = std::fs::metadata(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                if meta.len() > torrent::metainfo::MAX_TORRENT_SIZE as u64 {
                    bail!("{} is too large to be a .torrent file", path.display());
                }
                let raw = std::fs::read(path)?;
                body["torrent"] = data_encoding::BASE64.encode(&raw).into();
            }
            if let Some(o) = output {
                body["save_dir"] = std::path::absolute(&o)?.display().to_string().into();
            }
            let t = c.call(Method::POST, "torrents", Some(body)).await?;
            println!(
                "added {} {}",
                t["id"].as_str().unwrap_or(""),
                t["name"].as_str().unwrap_or("")
            );
        }
        ClientCommand::Ls { json, node } => {
            let all = NodeClient::find(&node)?.call(Method::GET, "torrents", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(());
            }
            let list = all.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no torrents: add one with `swarmcast add MAGNET|FILE|URL`");
            }
            for t in list {
                println!(
                    "{:.8}  {:>5.1}%  {:<17}  down {:>10}/s  up {:>10}/s  {:>3} peers  {}",
                    t["id"].as_str().unwrap_or(""),
                    t["progress"].as_f64().unwrap_or(0.0) * 100.0,
                    t["state"].as_str().unwrap_or(""),
                    human(t["download_rate"].as_u64().unwrap_or(0)),
                    human(t["upload_rate"].as_u64().unwrap_or(0)),
                    t["peers"].as_u64().unwrap_or(0),
                    t["name"].as_str().unwrap_or(""),
                );
                if let Some(e) = t["error"].as_str() {
                    println!("          error: {e}");
                }
            }
        }
        ClientCommand::Info { id, node } => {
            let t = NodeClient::find(&node)?
                .call(Method::GET, &format!("torrents/{}", check_id(&id)?), None)
                .await?;
            println!("{}", serde_json::to_string_pretty(&t)?);
        }
        ClientCommand::Pause { id, node } => {
            let t = NodeClient::find(&node)?
                .call(Method::POST, &format!("torrents/{}/pause", check_id(&id)?), None)
                .await?;
            println!("{}: {}", t["name"].as_str().unwrap_or(""), t["state"].as_str().unwrap_or(""));
        }
        ClientCommand::Resume { id, node } => {
            let t = NodeClient::find(&node)?
                .call(Method::POST, &format!("torrents/{}/resume", check_id(&id)?), None)
                .await?;
            println!("{}: {}", t["name"].as_str().unwrap_or(""), t["state"].as_str().unwrap_or(""));
        }
        ClientCommand::Rm { id, delete_data, node } => {
            let path = format!("torrents/{}?delete_data={delete_data}", check_id(&id)?);
            let r = NodeClient::find(&node)?.call(Method::DELETE, &path, None).await?;
            let removed = r["removed_files"].as_array().map_or(0, Vec::len);
            if delete_data {
                println!("removed {id} and {removed} of its files");
            } else {
                println!("removed {id} (its files are kept)");
            }
        }
    }
    Ok(())
}

/// Bytes as a short human figure (KiB, MiB, GiB).
fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1048576 => format!("{:.1} KiB", b / 1024.0),
        1048576..1073741824 => format!("{:.1} MiB", b / 1048576.0),
        _ => format!("{:.2} GiB", b / 1073741824.0),
    }
}
