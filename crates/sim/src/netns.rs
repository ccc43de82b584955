//! The distribution-time lab with **hosts of their own**: every node (tracker, seeder, N
//! leechers) is a real `swarmcast` process in its own Linux network namespace, with its own
//! address, joined to the others through a bridge; upload (and download) caps are enforced by
//! the kernel (`tc` HTB), not by the engine's token bucket. Root only.
//!
//! The layout of one run, prefix `sc-<pid>-<run>`:
//!
//! ```text
//!   namespace sc-P-R-hub:  bridge sc-br ── sc-p0 ── sc-p1 ── … ── sc-p(N+1)    (hub side of veths)
//!   namespace sc-P-R-k:    lo, sc-eth = 10.77.x.y/16                           (node k's side)
//! ```
//!
//! Node 0 is the tracker (P2P only), node 1 the seeder, node 2+i leecher i. Every link lives
//! inside one of the run's namespaces, so nothing is created in the caller's namespace, and
//! deleting the namespaces removes every link with them.
//!
//! Shaping: on a node's `sc-eth` (its egress = its upload) an HTB root with two classes: the
//! data class at the node's upload rate, and a high-priority class for small TCP packets (pure
//! ACKs and short BitTorrent control messages), so a node that uploads at its cap still acks
//! and requests what it downloads promptly (without it, caps held at 66–94%; see
//! `/work/shared/REAL-PEERS.md`). A download cap is the same on the hub side of the veth. HTB
//! counts bytes on the wire (Ethernet, IP and TCP headers included), so a cap u is a link rate:
//! payload moves at about 95% of it.
//!
//! Measurements: a leecher completes when its stderr says `complete, every piece verified`;
//! uploads are the hub-side veth receive counters (what the node sent), sampled every 200 ms —
//! bytes on the wire, headers, ACKs and BitTorrent messages included, so `duplicates_s` of the
//! gap breakdown counts protocol overhead as well as duplicate blocks.
//!
//! Cleanup: the `Testbed` guard owned by the run's future kills every child process and
//! deletes every namespace when it drops — on success, on error, on panic, and when the caller
//! drops the future (Ctrl-C). Namespaces left by a run whose process died (SIGKILL) are removed
//! at the start of the next run.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use torrent::metainfo::{CreateOptions, Metainfo};
use torrent::proto::choker::ChokerConfig;

use crate::bound::Bound;
use crate::lab::{
    report, verify_copies, Architecture, LabConfig, LabError, LabProgress, LabReport, Measured,
};

/// Every namespace this module makes starts with this (then `<pid>-<run>-`).
pub const PREFIX: &str = "sc-";
/// The port every node listens on (each node has its own address).
const PEER_PORT: u16 = 6881;
const TRACKER_PORT: u16 = 6969;
/// Name of a node's interface inside its namespace.
const NODE_DEV: &str = "sc-eth";
const BRIDGE: &str = "sc-br";
/// TCP packets shorter than this (IP total length) go to the priority class: pure ACKs (52
/// bytes with timestamps, up to ~84 with SACK blocks) and short BitTorrent messages (HAVE,
/// REQUEST batches), which are what keeps the other direction moving. They are a fraction of a
/// percent of the bytes.
const SMALL_PACKET: u16 = 128;
/// Rate of the priority class, bits per second: far above what ACKs need.
const SMALL_PACKET_RATE_BITS: u64 = 50_000_000;
/// How long a node may take to print that it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Environment variable naming a folder where each node's whole stderr is kept.
pub const LOG_DIR_ENV: &str = "SWARMCAST_LAB_LOG_DIR";
/// Lines of a node's stderr kept for error messages.
const LOG_TAIL: usize = 20;
/// The leecher's stderr line that marks completion (see `swarmcast get`).
const COMPLETE_MARK: &str = "complete, every piece verified";

/// Work directories (file, torrent, downloads) are `$TMPDIR/<this><pid>-XXXXXX`.
const WORK_DIR_PREFIX: &str = "swarmcast-netns-";
/// Runs in this process so far, so two runs in one process never share names.
static RUNS: AtomicU32 = AtomicU32::new(0);

/// What went wrong setting up or running the namespace lab.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("--netns needs root (it creates network namespaces); run it as root or with sudo")]
    NotRoot,
    #[error("--netns needs `{tool}` from iproute2 on PATH ({source}); install iproute2")]
    MissingTool { tool: &'static str, source: io::Error },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot run {what}: {source}")]
    Spawn { what: String, source: io::Error },
    #[error("{what} needs `swarmcast {subcommand} {flag}`, which {binary} does not have")]
    MissingFlag { what: String, subcommand: &'static str, flag: &'static str, binary: String },
    #[error("{node} exited early ({status}); its last output:\n{tail}")]
    NodeExited { node: String, status: String, tail: String },
    #[error("{node} was not ready after {secs} s; its last output:\n{tail}")]
    NotReady { node: String, secs: u64, tail: String },
    #[error("cannot read the interface counters: {0}")]
    Counters(String),
}

impl From<NetnsError> for LabError {
    fn from(e: NetnsError) -> Self {
        LabError::Setup(e.to_string())
    }
}

fn setup<E: std::fmt::Display>(e: E) -> LabError {
    LabError::Setup(e.to_string())
}

/// Runs one lab with every node in its own network namespace (see the module docs).
/// `swarmcast` is the binary to run as the nodes (the CLI passes its own path). `on_progress` is
/// called about every 500 ms. Needs root, `ip` and `tc`.
pub async fn run_netns(
    config: &LabConfig,
    swarmcast: &Path,
    mut on_progress: impl FnMut(&LabProgress),
) -> Result<LabReport, LabError> {
    let problem = config.problem();
    problem.validate()?;
    let min_rate = 16 * 1024;
    let p2p = config.architecture == Architecture::P2p;
    if config.server_upload < min_rate
        || (p2p && config.peer_uploads.iter().any(|&u| u < min_rate))
        || config.download_limit.is_some_and(|d| d < min_rate)
    {
        return Err(LabError::RateTooLow);
    }
    let n = config.peer_uploads.len();
    if n + 2 > 60_000 {
        return Err(setup(format!(
            "--netns runs at most 59998 leechers (one address each in 10.77.0.0/16), not {n}"
        )));
    }
    let bound: Bound = match config.architecture {
        Architecture::P2p => problem.p2p(),
        Architecture::ClientServer => problem.client_server(),
    };
    preflight()?;
    let flags = node_flags(config, swarmcast)?;
    remove_stale();

    let work = tempfile::Builder::new()
        .prefix(&format!("{WORK_DIR_PREFIX}{}-", std::process::id()))
        .tempdir()
        .map_err(setup)?;
    let seed_dir = work.path().join("seed");
    std::fs::create_dir_all(&seed_dir).map_err(setup)?;
    let file = seed_dir.join("lab.bin");
    {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut data = vec![0u8; config.file_size as usize];
        rng.fill_bytes(&mut data);
        std::fs::write(&file, &data).map_err(setup)?;
    }
    let tracker_addr = node_addr(0);
    let seeder_addr = node_addr(1);
    let opts = CreateOptions {
        trackers: if p2p {
            vec![format!("http://{tracker_addr}:{TRACKER_PORT}/announce")]
        } else {
            vec![]
        },
        piece_size: config.piece_size,
        ..CreateOptions::default()
    };
    let bytes = torrent::metainfo::create(&file, &opts, &mut |_, _| {}).map_err(setup)?;
    let meta = Metainfo::from_bytes(&bytes).map_err(setup)?;
    let torrent_file = work.path().join("lab.torrent");
    std::fs::write(&torrent_file, &bytes).map_err(setup)?;

    // From here on every namespace and process belongs to `bed`, so any exit cleans up.
    let prefix = format!("{PREFIX}{}-{}", std::process::id(), RUNS.fetch_add(1, Ordering::Relaxed));
    let mut bed = Testbed::new(prefix);
    // Node 0 (the tracker) exists only in P2P; its slot stays empty otherwise.
    let first = if p2p { 0 } else { 1 };
    let mut shaping = BTreeMap::new();
    shaping.insert(1, (Some(config.server_upload), None));
    for (i, &u) in config.peer_uploads.iter().enumerate() {
        shaping.insert(2 + i, (p2p.then_some(u), config.download_limit));
    }
    bed.build((first..n + 2).collect(), &shaping)?;

    let bin = swarmcast.display().to_string();
    let max_peers = (config.neighbors as usize * 2).max(n + 1).to_string();
    if p2p {
        let listen = format!("{tracker_addr}:{TRACKER_PORT}");
        let mut args = vec!["tracker", "--listen", &listen, "--interval", "3600"];
        args.extend(flags.tracker.iter().map(String::as_str));
        bed.spawn(0, "tracker", &bin, &args, Some("tracker on "))?;
        bed.wait_ready(0).await?;
    }
    let torrent_arg = torrent_file.display().to_string();
    let file_arg = file.display().to_string();
    let seeder_ip = seeder_addr.to_string();
    let port = PEER_PORT.to_string();
    let mut args = vec![
        "seed",
        &torrent_arg,
        "--data",
        &file_arg,
        "--bind",
        &seeder_ip,
        "--port",
        &port,
        "--max-peers",
        &max_peers,
    ];
    args.extend(flags.seeder.iter().map(String::as_str));
    bed.spawn(1, "seeder", &bin, &args, Some("seeding "))?;
    bed.wait_ready(1).await?;

    let seeder_peer = format!("{seeder_addr}:{PEER_PORT}");
    let baseline = bed.uploads()?;
    let started = Instant::now();
    for i in 0..n {
        let out = work.path().join(format!("leecher{i}")).display().to_string();
        let ip = node_addr(2 + i).to_string();
        let mut args = vec![
            "get",
            &torrent_arg,
            "-o",
            &out,
            "--bind",
            &ip,
            "--port",
            &port,
            "--seed",
            "--max-peers",
            &max_peers,
        ];
        if !p2p {
            args.extend(["--peer", seeder_peer.as_str()]);
        }
        args.extend(flags.leecher.iter().map(String::as_str));
        bed.spawn(2 + i, &format!("leecher {i}"), &bin, &args, None)?;
    }

    // Watch: completions from stderr, a 200 ms timeline of cumulative uploads from counters.
    let upload_at = |u: &BTreeMap<usize, u64>, k: usize| {
        u.get(&k).copied().unwrap_or(0).saturating_sub(baseline.get(&k).copied().unwrap_or(0))
    };
    let leecher_sum = |u: &BTreeMap<usize, u64>| (0..n).map(|i| upload_at(u, 2 + i)).sum::<u64>();
    let mut timeline: Vec<(f64, u64, u64)> = vec![(0.0, 0, 0)];
    // When 90% of all N·F bytes were verified: the tail (last pieces, endgame) starts.
    let mut tail_from: Option<f64> = None;
    let mut last_sample = Instant::now();
    let mut last_progress = Instant::now();
    let outcome = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        bed.check_alive()?;
        let done = bed.completions(n, started);
        let complete = done.iter().filter(|d| d.is_some()).count();
        if last_sample.elapsed() >= Duration::from_millis(200) || complete == n {
            last_sample = Instant::now();
            let t = started.elapsed().as_secs_f64();
            let u = bed.uploads()?;
            timeline.push((t, upload_at(&u, 1), leecher_sum(&u)));
        }
        let delivered = bed.delivered(n);
        if tail_from.is_none() && delivered >= 0.9 {
            tail_from = Some(started.elapsed().as_secs_f64());
        }
        if last_progress.elapsed() >= Duration::from_millis(500) {
            last_progress = Instant::now();
            on_progress(&LabProgress { elapsed: started.elapsed(), complete, n, delivered });
        }
        if complete == n {
            break Ok(done);
        }
        if started.elapsed() > config.time_limit {
            break Err(LabError::TimedOut {
                limit_s: config.time_limit.as_secs_f64(),
                complete,
                n,
                progress: delivered * 100.0,
            });
        }
    };
    let done = outcome?;
    let last = timeline.last().copied().unwrap_or((0.0, 0, 0));
    let final_uploads = bed.uploads()?;
    drop(bed);

    let uploads: Vec<u64> = (0..n).map(|i| upload_at(&final_uploads, 2 + i)).collect();
    let identical_copies = verify_copies(&file, work.path(), n)?;
    // The last timeline sample was taken when the last leecher completed: report those bytes,
    // not what moved while the processes were being stopped.
    Ok(report(
        config,
        bound,
        Measured {
            done: &done,
            uploads,
            seeder_up: last.1,
            peers_up: last.2,
            timeline: &timeline,
            tail_from,
            identical_copies,
            piece_size: meta.info.piece_length,
            pieces: meta.info.num_pieces(),
        },
    ))
}

/// Checks for root, `ip` and `tc` before anything is made.
fn preflight() -> Result<(), NetnsError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if effective_uid(&status) != Some(0) {
        return Err(NetnsError::NotRoot);
    }
    for tool in ["ip", "tc"] {
        Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|source| NetnsError::MissingTool { tool, source })?;
    }
    Ok(())
}

/// The effective uid from `/proc/self/status` (`Uid: real effective saved fs`).
fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Extra flags for the node commands, for settings whose CLI defaults differ from the config.
#[derive(Debug, Default, PartialEq, Eq)]
struct NodeFlags {
    tracker: Vec<String>,
    seeder: Vec<String>,
    leecher: Vec<String>,
}

/// Flags that make the processes behave as the in-process lab's sessions do. A setting that
/// equals the CLI default needs no flag; one that differs needs a flag the binary may lack, which
/// is checked against its `--help` so the error says what is missing.
fn node_flags(config: &LabConfig, swarmcast: &Path) -> Result<NodeFlags, NetnsError> {
    let wanted = wanted_flags(config);
    let binary = swarmcast.display().to_string();
    for (subcommand, list) in
        [("tracker", &wanted.tracker), ("seed", &wanted.seeder), ("get", &wanted.leecher)]
    {
        if list.is_empty() {
            continue;
        }
        let out = Command::new(swarmcast)
            .args([subcommand, "--help"])
            .stderr(Stdio::null())
            .output()
            .map_err(|source| NetnsError::Spawn {
                what: format!("{binary} {subcommand} --help"),
                source,
            })?;
        let help = String::from_utf8_lossy(&out.stdout);
        for flag in list.iter().filter(|f| f.starts_with("--")) {
            if !help.contains(flag.as_str()) {
                let (what, flag) = match flag.as_str() {
                    "--upload-slots" if config.architecture == Architecture::ClientServer => (
                        "the client-server lab (the server unchokes all N clients)",
                        "--upload-slots",
                    ),
                    "--upload-slots" => ("--upload-slots other than 4", "--upload-slots"),
                    "--num-want" => ("--neighbors below N and 50", "--num-want"),
                    "--seed-slots" => ("--seed-slots other than 10", "--seed-slots"),
                    _ => ("--neighbors below N and 50", "--max-peers-returned"),
                };
                return Err(NetnsError::MissingFlag {
                    what: format!("{what} under --netns"),
                    subcommand,
                    flag,
                    binary,
                });
            }
        }
    }
    Ok(wanted)
}

/// The flags `node_flags` asks for (without checking the binary).
fn wanted_flags(config: &LabConfig) -> NodeFlags {
    let n = config.peer_uploads.len();
    let mut f = NodeFlags::default();
    let default_slots = ChokerConfig::default().upload_slots;
    let p2p = config.architecture == Architecture::P2p;
    let seeder_slots = if p2p { config.upload_slots } else { n };
    if seeder_slots != default_slots {
        f.seeder.extend(["--upload-slots".into(), seeder_slots.to_string()]);
    }
    if p2p && config.upload_slots != default_slots {
        f.leecher.extend(["--upload-slots".into(), config.upload_slots.to_string()]);
    }
    if config.seed_slots != ChokerConfig::default().seed_slots {
        let k = config.seed_slots.to_string();
        f.seeder.extend(["--seed-slots".into(), k.clone()]);
        f.leecher.extend(["--seed-slots".into(), k]);
    }
    // The CLI's tracker returns up to 50 peers and clients ask for 50; the in-process lab uses
    // `neighbors` for both. They differ only when `neighbors` is the smaller cap.
    let cli_default = 50;
    if p2p && (config.neighbors as usize) < n.min(cli_default) {
        let k = config.neighbors.to_string();
        f.tracker.extend(["--max-peers-returned".into(), k.clone()]);
        f.seeder.extend(["--num-want".into(), k.clone()]);
        f.leecher.extend(["--num-want".into(), k]);
    }
    f
}

/// Node k's address: 10.77.0.1 for node 0, counting up through 10.77.0.0/16.
fn node_addr(k: usize) -> Ipv4Addr {
    let h = k + 1;
    Ipv4Addr::new(10, 77, (h >> 8) as u8, (h & 0xff) as u8)
}

/// The MAC address of node k's interface (locally administered, from the same number as its
/// IP address).
fn node_mac(k: usize) -> String {
    let h = k + 1;
    format!("02:77:00:00:{:02x}:{:02x}", (h >> 8) & 0xff, h & 0xff)
}

/// The hub-side interface of node k's veth.
fn hub_dev(k: usize) -> String {
    format!("sc-p{k}")
}

/// `tc -batch` lines: HTB on `dev` with the data class at `rate` bytes/s and a priority class
/// for small TCP packets.
fn htb_script(dev: &str, rate: u64) -> String {
    let bits = rate * 8;
    format!(
        "qdisc add dev {dev} root handle 1: htb default 20\n\
         class add dev {dev} parent 1: classid 1:10 htb rate {SMALL_PACKET_RATE_BITS}bit \
         quantum 60000 prio 0\n\
         class add dev {dev} parent 1: classid 1:20 htb rate {bits}bit ceil {bits}bit \
         quantum 60000 prio 1\n\
         filter add dev {dev} parent 1: protocol ip prio 1 u32 match ip protocol 6 0xff \
         match u16 0x0000 {mask:#06x} at 2 flowid 1:10\n",
        mask = !(SMALL_PACKET - 1),
    )
}

/// The pid in a namespace name `sc-<pid>-...`, if it has that shape.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, tail) = rest.split_once('-')?;
    if tail.is_empty() {
        return None;
    }
    pid.parse().ok()
}

/// Deletes namespaces and work directories of earlier runs whose process is gone, killing what
/// still runs in the namespaces.
fn remove_stale() {
    let me = std::process::id();
    let dead = |pid: u32| pid != me && !Path::new(&format!("/proc/{pid}")).exists();
    if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix(WORK_DIR_PREFIX))
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok());
            if pid.is_some_and(dead) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let list = String::from_utf8_lossy(&out.stdout);
    let stale: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| owner_pid(name).is_some_and(dead))
        .collect();
    if stale.is_empty() {
        return;
    }
    tracing::warn!(count = stale.len(), "removing namespaces left by a lab that died");
    for name in &stale {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
            let pids = String::from_utf8_lossy(&out.stdout);
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
    }
    let script: String = stale.iter().map(|n| format!("netns del {n}\n")).collect();
    if let Err(e) = batch("ip", None, &script, true) {
        tracing::warn!("cannot remove stale namespaces: {e}");
    }
}

/// Runs `tool [-n ns] [-force] -batch -` with `script` on stdin.
fn batch(tool: &str, ns: Option<&str>, script: &str, force: bool) -> Result<(), NetnsError> {
    let mut cmd = Command::new(tool);
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    if force {
        cmd.arg("-force");
    }
    cmd.args(["-batch", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let command = format!("{cmd:?}").replace('"', "");
    let mut child =
        cmd.spawn().map_err(|source| NetnsError::Spawn { what: command.clone(), source })?;
    if let Some(mut stdin) = child.stdin.take() {
        // An error here means the tool exited early; its status and stderr say why.
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| NetnsError::Spawn { what: command.clone(), source })?;
    if out.status.success() {
        return Ok(());
    }
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    // `ip`/`tc` name the failing line as `-:N`; show it.
    if let Some(line) = failing_line(&stderr).and_then(|k| script.lines().nth(k - 1)) {
        stderr.push_str(&format!(" (line: `{line}`)"));
    }
    Err(NetnsError::Command { command, stderr })
}

/// The line number in `Command failed -:N`.
fn failing_line(stderr: &str) -> Option<usize> {
    let at = stderr.rfind("-:")?;
    let digits: String = stderr[at + 2..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|&k| k > 0)
}

/// What a node printed, kept by the thread that reads its stderr.
#[derive(Default)]
struct NodeLog {
    tail: VecDeque<String>,
    ready: bool,
    complete_at: Option<Instant>,
    /// Last progress fraction printed (`lab.bin: 42.0% ...`).
    progress: f64,
}

struct Node {
    name: String,
    child: Child,
    log: Arc<Mutex<NodeLog>>,
}

/// Owns every namespace and process of one run; dropping it kills the processes and deletes
/// the namespaces (which removes the veths and the bridge with them).
struct Testbed {
    prefix: String,
    /// Namespaces made (or being made); deleted in reverse order.
    namespaces: Vec<String>,
    /// Running nodes, by node index.
    nodes: BTreeMap<usize, Node>,
}

impl Testbed {
    fn new(prefix: String) -> Self {
        Testbed { prefix, namespaces: Vec::new(), nodes: BTreeMap::new() }
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    fn ns(&self, k: usize) -> String {
        format!("{}-{k}", self.prefix)
    }

    /// Makes the hub, one namespace per node in `ks`, the veths and the shaping.
    /// `shaping[k] = (upload, download)` in bytes per second.
    fn build(
        &mut self,
        ks: Vec<usize>,
        shaping: &BTreeMap<usize, (Option<u64>, Option<u64>)>,
    ) -> Result<(), NetnsError> {
        let hub = self.hub();
        // Recorded before they exist, so a failure half-way still deletes what was made.
        self.namespaces.push(hub.clone());
        let names: Vec<String> = ks.iter().map(|&k| self.ns(k)).collect();
        self.namespaces.extend(names);
        let script: String = self.namespaces.iter().map(|n| format!("netns add {n}\n")).collect();
        batch("ip", None, &script, false)?;

        let mut hub_script = format!("link set lo up\nlink add {BRIDGE} type bridge\n");
        for &k in &ks {
            let dev = hub_dev(k);
            hub_script.push_str(&format!(
                "link add {dev} type veth peer name {NODE_DEV} address {} netns {}\n\
                 link set {dev} master {BRIDGE} up\n",
                node_mac(k),
                self.ns(k)
            ));
        }
        hub_script.push_str(&format!("link set {BRIDGE} up\n"));
        batch("ip", Some(&hub), &hub_script, false)?;

        let mut hub_tc = String::new();
        for &k in &ks {
            let ns = self.ns(k);
            let mut script = format!(
                "link set lo up\naddr add {}/16 dev {NODE_DEV}\nlink set {NODE_DEV} up\n",
                node_addr(k)
            );
            // Static neighbours instead of ARP: the kernel's ARP table is shared by every
            // namespace and holds gc_thresh3 = 1,024 learned entries by default, which a mesh of
            // N = 50 (2,600 pairs) overflows ("neighbour: arp_cache: neighbor table overflow!"
            // in dmesg): the late nodes could then reach no one, not even the tracker, and the
            // run stalled. Permanent entries are not counted against that limit.
            for &other in ks.iter().filter(|&&o| o != k) {
                script.push_str(&format!(
                    "neigh replace {} lladdr {} dev {NODE_DEV} nud permanent\n",
                    node_addr(other),
                    node_mac(other)
                ));
            }
            batch("ip", Some(&ns), &script, false)?;
            let (up, down) = shaping.get(&k).copied().unwrap_or((None, None));
            if let Some(up) = up {
                batch("tc", Some(&ns), &htb_script(NODE_DEV, up), false)?;
            }
            if let Some(down) = down {
                hub_tc.push_str(&htb_script(&hub_dev(k), down));
            }
        }
        if !hub_tc.is_empty() {
            batch("tc", Some(&hub), &hub_tc, false)?;
        }
        Ok(())
    }

    /// Starts `bin args...` in node k's namespace; `ready` is the stderr text that says it is
    /// serving (`None`: ready at once).
    fn spawn(
        &mut self,
        k: usize,
        name: &str,
        bin: &str,
        args: &[&str],
        ready: Option<&'static str>,
    ) -> Result<(), NetnsError> {
        let ns = self.ns(k);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns, bin])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|source| NetnsError::Spawn { what: format!("{name} ({cmd:?})"), source })?;
        let log = Arc::new(Mutex::new(NodeLog { ready: ready.is_none(), ..NodeLog::default() }));
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            // For diagnosis: SWARMCAST_LAB_LOG_DIR=DIR keeps each node's whole stderr in
            // DIR/NAME.log (with SWARMCAST_LOG=debug, the nodes' protocol logs).
            let copy = std::env::var_os(LOG_DIR_ENV).and_then(|dir| {
                let file =
                    std::path::Path::new(&dir).join(format!("{}.log", name.replace(' ', "-")));
                std::fs::File::create(file).ok()
            });
            let reader = std::thread::Builder::new()
                .name(format!("netns-{name}"))
                .spawn(move || read_log(stderr, &log, ready, copy));
            if let Err(source) = reader {
                let _ = child.kill();
                let _ = child.wait();
                return Err(NetnsError::Spawn {
                    what: format!("a thread to read {name}'s output"),
                    source,
                });
            }
        }
        self.nodes.insert(k, Node { name: name.to_string(), child, log });
        Ok(())
    }

    /// Waits until node k printed its ready line.
    async fn wait_ready(&mut self, k: usize) -> Result<(), NetnsError> {
        let started = Instant::now();
        loop {
            self.check_alive()?;
            {
                let node = &self.nodes[&k];
                let log = lock(&node.log);
                if log.ready {
                    return Ok(());
                }
                if started.elapsed() > READY_TIMEOUT {
                    return Err(NetnsError::NotReady {
                        node: node.name.clone(),
                        secs: READY_TIMEOUT.as_secs(),
                        tail: tail(&log),
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fails if any node has exited (they all run until the guard stops them).
    fn check_alive(&mut self) -> Result<(), NetnsError> {
        for node in self.nodes.values_mut() {
            if let Ok(Some(status)) = node.child.try_wait() {
                // Let the reader thread take in the last lines before quoting them.
                std::thread::sleep(Duration::from_millis(50));
                return Err(NetnsError::NodeExited {
                    node: node.name.clone(),
                    status: status.to_string(),
                    tail: tail(&lock(&node.log)),
                });
            }
        }
        Ok(())
    }

    /// Completion time of each of the n leechers, seconds after `started`.
    fn completions(&self, n: usize, started: Instant) -> Vec<Option<f64>> {
        (0..n)
            .map(|i| {
                let at = self.nodes.get(&(2 + i)).and_then(|l| lock(&l.log).complete_at);
                at.map(|t| t.saturating_duration_since(started).as_secs_f64())
            })
            .collect()
    }

    /// Fraction of all N·F bytes the leechers report verified (their lines come every 5 s).
    fn delivered(&self, n: usize) -> f64 {
        let sum: f64 = (0..n)
            .filter_map(|i| self.nodes.get(&(2 + i)))
            .map(|l| {
                let log = lock(&l.log);
                if log.complete_at.is_some() {
                    1.0
                } else {
                    log.progress
                }
            })
            .sum();
        sum / n.max(1) as f64
    }

    /// Bytes each node has sent so far: the hub-side veth's receive counter, by node index.
    fn uploads(&self) -> Result<BTreeMap<usize, u64>, NetnsError> {
        let out = Command::new("ip")
            .args(["-n", &self.hub(), "-s", "-j", "link", "show"])
            .output()
            .map_err(|e| NetnsError::Counters(e.to_string()))?;
        if !out.status.success() {
            return Err(NetnsError::Counters(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        parse_rx_bytes(&out.stdout)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            let _ = node.child.kill();
        }
        for node in self.nodes.values_mut() {
            let _ = node.child.wait();
        }
        if self.namespaces.is_empty() {
            return;
        }
        let script: String =
            self.namespaces.iter().rev().map(|n| format!("netns del {n}\n")).collect();
        if let Err(e) = batch("ip", None, &script, true) {
            // Some may not exist (a failed setup); say so only if any is left.
            let left = Command::new("ip")
                .args(["netns", "list"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let prefix = format!("{}-", self.prefix);
            if left.lines().any(|l| l.starts_with(&prefix)) {
                eprintln!(
                    "warning: could not delete the lab's network namespaces ({e}); \
                     remove them with `ip netns del NAME` for each {prefix}* in `ip netns list`"
                );
            }
        }
    }
}

/// Reads a node's stderr until it closes, noting readiness, progress and completion.
fn read_log(
    stderr: impl io::Read,
    log: &Mutex<NodeLog>,
    ready: Option<&str>,
    mut copy: Option<std::fs::File>,
) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if let Some(f) = copy.as_mut() {
            use std::io::Write;
            if writeln!(f, "{line}").is_err() {
                copy = None;
            }
        }
        let now = Instant::now();
        let mut log = lock(log);
        if ready.is_some_and(|r| line.contains(r)) {
            log.ready = true;
        }
        if log.complete_at.is_none() && line.contains(COMPLETE_MARK) {
            log.complete_at = Some(now);
        }
        if let Some(p) = progress_of(&line) {
            log.progress = p;
        }
        if log.tail.len() == LOG_TAIL {
            log.tail.pop_front();
        }
        log.tail.push_back(line);
    }
}

/// The fraction in a progress line `NAME: 42.0% down ...`.
fn progress_of(line: &str) -> Option<f64> {
    let (_, rest) = line.split_once(": ")?;
    let (pct, _) = rest.split_once("% ")?;
    pct.parse::<f64>().ok().map(|p| (p / 100.0).clamp(0.0, 1.0))
}

fn lock(log: &Mutex<NodeLog>) -> std::sync::MutexGuard<'_, NodeLog> {
    // A reader thread that panicked leaves plain data behind; it is still readable.
    log.lock().unwrap_or_else(|e| e.into_inner())
}

fn tail(log: &NodeLog) -> String {
    if log.tail.is_empty() {
        return "(nothing)".into();
    }
    log.tail.iter().cloned().collect::<Vec<_>>().join("\n")
}

/// Receive byte counters of the `sc-p<k>` interfaces in `ip -s -j link show` output.
fn parse_rx_bytes(json: &[u8]) -> Result<BTreeMap<usize, u64>, NetnsError> {
    let v: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| NetnsError::Counters(format!("`ip -j` output is not JSON: {e}")))?;
    let links =
        v.as_array().ok_or_else(|| NetnsError::Counters("`ip -j` output is not a list".into()))?;
    let mut out = BTreeMap::new();
    for link in links {
        let Some(k) = link
            .get("ifname")
            .and_then(|n| n.as_str())
            .and_then(|n| n.strip_prefix("sc-p"))
            .and_then(|k| k.parse::<usize>().ok())
        else {
            continue;
        };
        let bytes = link
            .pointer("/stats64/rx/bytes")
            .and_then(|b| b.as_u64())
            .ok_or_else(|| NetnsError::Counters(format!("no rx byte counter for sc-p{k}")))?;
        out.insert(k, bytes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(arch: Architecture, n: usize, slots: usize, neighbors: u32) -> LabConfig {
        LabConfig {
            architecture: arch,
            file_size: 1 << 20,
            server_upload: 1 << 20,
            peer_uploads: vec![1 << 19; n],
            download_limit: None,
            piece_size: None,
            seed: 1,
            neighbors,
            upload_slots: slots,
            seed_slots: ChokerConfig::default().seed_slots,
            time_limit: Duration::from_secs(60),
        }
    }

    #[test]
    fn addresses_count_up_through_the_subnet() {
        assert_eq!(node_addr(0), Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(node_addr(254), Ipv4Addr::new(10, 77, 0, 255));
        assert_eq!(node_addr(255), Ipv4Addr::new(10, 77, 1, 0));
        assert_eq!(node_addr(59_999), Ipv4Addr::new(10, 77, 234, 96));
    }

    #[test]
    fn interface_names_fit_ifnamsiz() {
        // IFNAMSIZ is 16 including the NUL.
        assert!(hub_dev(59_999).len() <= 15);
        assert!(NODE_DEV.len() <= 15 && BRIDGE.len() <= 15);
    }

    #[test]
    fn htb_script_has_a_capped_data_class_and_a_small_packet_class() {
        let s = htb_script("sc-eth", 524_288);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "qdisc add dev sc-eth root handle 1: htb default 20");
        assert_eq!(
            lines[2],
            "class add dev sc-eth parent 1: classid 1:20 htb rate 4194304bit ceil 4194304bit \
             quantum 60000 prio 1"
        );
        assert_eq!(
            lines[3],
            "filter add dev sc-eth parent 1: protocol ip prio 1 u32 match ip protocol 6 0xff \
             match u16 0x0000 0xff80 at 2 flowid 1:10"
        );
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn owner_pid_reads_only_our_names() {
        assert_eq!(owner_pid("sc-1234-0-hub"), Some(1234));
        assert_eq!(owner_pid("sc-1234-3-7"), Some(1234));
        assert_eq!(owner_pid("sc-1234"), None);
        assert_eq!(owner_pid("sc-abc-1"), None);
        assert_eq!(owner_pid("docker-1234-1"), None);
    }

    #[test]
    fn effective_uid_is_the_second_uid_field() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Name:\tx\n"), None);
    }

    #[test]
    fn progress_and_failing_lines_parse() {
        assert_eq!(
            progress_of("lab.bin: 42.5% down 1.0 MiB/s up 0.5 MiB/s peers 3 ETA 2s"),
            Some(0.425)
        );
        assert_eq!(progress_of("seeding on port 6881 (Ctrl-C to stop)"), None);
        assert_eq!(failing_line("RTNETLINK answers: File exists\nCommand failed -:3"), Some(3));
        assert_eq!(failing_line("Error: something"), None);
    }

    #[test]
    fn rx_counters_come_from_hub_side_veths() {
        let json = br#"[{"ifname":"lo","stats64":{"rx":{"bytes":5}}},
            {"ifname":"sc-br","stats64":{"rx":{"bytes":9}}},
            {"ifname":"sc-p1","stats64":{"rx":{"bytes":1000},"tx":{"bytes":7}}},
            {"ifname":"sc-p12","stats64":{"rx":{"bytes":42}}}]"#;
        let m = parse_rx_bytes(json).unwrap();
        assert_eq!(m, BTreeMap::from([(1, 1000), (12, 42)]));
        assert!(parse_rx_bytes(br#"[{"ifname":"sc-p1"}]"#).is_err());
    }

    #[test]
    fn flags_only_where_the_cli_defaults_differ() {
        let f = wanted_flags(&config(Architecture::P2p, 20, 4, 30));
        assert_eq!(f, NodeFlags::default());
        let f = wanted_flags(&config(Architecture::ClientServer, 20, 4, 30));
        assert_eq!(f.seeder, vec!["--upload-slots", "20"]);
        assert!(f.leecher.is_empty() && f.tracker.is_empty());
        let f = wanted_flags(&config(Architecture::P2p, 40, 4, 30));
        assert_eq!(f.tracker, vec!["--max-peers-returned", "30"]);
        assert_eq!(f.leecher, vec!["--num-want", "30"]);
    }
}
