//! Magnet links: fetch the info dictionary from peers with metadata exchange (BEP 9) before the
//! torrent can start. Every decision (whom to dial and ask for which piece, whom to drop, when
//! the dictionary is whole and its SHA-1 equals the magnet's info-hash) is made by the sans-IO
//! [`MetadataCore`]; this module is its tokio driver: it announces to the link's trackers for
//! addresses (again each time the core asks for more), dials, runs one task per connection
//! that turns bytes into messages and back, and sleeps until the core's deadline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::SeedableRng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use super::peer::{self, next_message, Connected, Encryption};
use crate::magnet::Magnet;
use crate::metainfo::{Info, InfoHash, Metainfo};
use crate::proto::metadata::{Input, MetadataConfig, MetadataCore, Output};
use crate::proto::wire::{Message, DEFAULT_MAX_MESSAGE};
use crate::proto::PeerKey;
use crate::tracker::{AnnounceRequest, Event as TrackerEvent, TrackerList};
use crate::PeerId;

/// Why a magnet link could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("no peer to fetch the torrent's metadata from: give one with --peer HOST:PORT or use a magnet link with a tracker (tr=) or peer (x.pe=)")]
    NoPeers,
    #[error(
        "could not fetch the torrent's metadata from any of {tried} peers (last error: {last})"
    )]
    AllFailed { tried: usize, last: String },
    #[error(
        "the torrent's metadata matches its info-hash but is not a valid info dictionary: {0}"
    )]
    BadInfo(String),
}

/// Resolves `magnet` into a full [`Metainfo`] by asking peers: those in the link (`x.pe`),
/// `extra_peers`, and those the link's trackers return. `listen`'s port is announced to
/// trackers, and dials leave from its address (if one is given). `config` says how long a
/// peer may stay silent and how long to keep asking for peers once every address was tried
/// (see [`MetadataConfig`]; its default is what `swarmcast get` uses). Connections are
/// encrypted as `encryption` says and go over the transports `dialer` allows (a session's
/// [`crate::session::Session::dialer`]). `waiting(tried)` is called each time every address
/// was tried and none had the dictionary yet, before asking for peers again (for people: the
/// wait may last `config.patience`).
pub async fn fetch_metadata(
    magnet: &Magnet,
    extra_peers: &[SocketAddr],
    listen: SocketAddr,
    config: MetadataConfig,
    encryption: Encryption,
    dialer: peer::Dialer,
    waiting: &(dyn Fn(usize) + Send + Sync),
) -> Result<Metainfo, MetadataError> {
    let mut rng = rand_chacha::ChaCha8Rng::from_os_rng();
    let our_id = PeerId::generate(&mut rng);
    let mut given: Vec<SocketAddr> = extra_peers.to_vec();
    given.extend(magnet.peers.iter().filter_map(|p| p.parse::<SocketAddr>().ok()));
    let trackers = (!magnet.trackers.is_empty()).then(|| {
        let tiers = magnet.trackers.iter().map(|t| vec![t.clone()]).collect();
        let list = TrackerList::new(tiers, &mut rng).from_address(listen.ip());
        let req = AnnounceRequest {
            info_hash: magnet.info_hash,
            peer_id: our_id,
            port: listen.port(),
            uploaded: 0,
            downloaded: 0,
            left: 1,
            event: TrackerEvent::None,
            num_want: 50,
        };
        (list, req)
    });
    let mut sources = Sources { given, trackers };
    let candidates = sources.addresses().await;
    // With trackers, an empty first answer is asked again within the patience.
    if candidates.is_empty() && sources.trackers.is_none() {
        return Err(MetadataError::NoPeers);
    }
    let core = MetadataCore::new(magnet.info_hash, candidates, config, Instant::now());
    let ids = (magnet.info_hash, our_id);
    let raw = run(core, &mut sources, ids, encryption, dialer, listen.ip(), waiting).await?;
    let info = Info::from_bytes(&raw).map_err(|e| MetadataError::BadInfo(e.to_string()))?;
    info!(bytes = raw.len(), "fetched torrent metadata");
    Ok(Metainfo {
        info,
        info_hash: magnet.info_hash,
        info_bytes: raw.to_vec(),
        trackers: magnet.trackers.iter().map(|t| vec![t.clone()]).collect(),
        comment: None,
        created_by: None,
        creation_date: None,
    })
}

/// Where a fetch gets addresses: those it was given, and its trackers, asked again each time.
struct Sources {
    given: Vec<SocketAddr>,
    trackers: Option<(TrackerList, AnnounceRequest)>,
}

impl Sources {
    async fn addresses(&mut self) -> Vec<SocketAddr> {
        let mut all = self.given.clone();
        if let Some((list, req)) = &mut self.trackers {
            match list.announce(req, Duration::from_secs(10)).await {
                Ok((_, resp)) => all.extend(resp.peers),
                Err(e) => debug!("magnet tracker announce failed: {e}"),
            }
        }
        all
    }
}

/// What dials and connections tell the fetch loop.
enum Event {
    Connected(Connected),
    ConnectFailed(SocketAddr, String),
    Msg(PeerKey, Message),
    Closed(PeerKey, String),
}

/// Most messages waiting for one connection's writer. The core sends a handful (HAVE_NONE, its
/// handshake, a few requests, a reject per request the peer makes); a peer that fills this
/// does not read and is closed.
const MAX_OUTGOING: usize = 64;
/// How long a dial and the BitTorrent handshake may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection's task and the queue to its writer; dropping it closes the connection.
struct Conn {
    tx: mpsc::Sender<Message>,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Carries out what `core` decides until it is done or has failed; dials leave from `local`
/// (see [`peer::dial`]).
async fn run(
    mut core: MetadataCore,
    sources: &mut Sources,
    (info_hash, our_id): (InfoHash, PeerId),
    encryption: Encryption,
    dialer: peer::Dialer,
    local: std::net::IpAddr,
    waiting: &(dyn Fn(usize) + Send + Sync),
) -> Result<Bytes, MetadataError> {
    let (events_tx, mut events) = mpsc::channel(256);
    let mut conns: BTreeMap<PeerKey, Conn> = BTreeMap::new();
    let mut next_key = 0;
    // Dials, aborted when the fetch returns so none lingers past it.
    let mut dials = tokio::task::JoinSet::new();
    let far = Duration::from_secs(3600);
    loop {
        while let Some(out) = core.poll() {
            match out {
                Output::Send(key, msg) => {
                    let full = conns.get(&key).is_some_and(|c| c.tx.try_send(msg).is_err());
                    if full {
                        conns.remove(&key);
                        let why = "peer does not read what we send (outgoing queue full)";
                        core.handle(Instant::now(), Input::Closed(key, why.into()));
                    }
                }
                Output::Connect(addr) => {
                    let events = events_tx.clone();
                    let dialer = dialer.clone();
                    dials.spawn(async move {
                        let dial = peer::connect(
                            addr,
                            Some(local),
                            dialer.via(),
                            info_hash,
                            our_id,
                            DIAL_TIMEOUT,
                            encryption,
                        );
                        let ev = match dial.await {
                            Ok(c) => Event::Connected(c),
                            Err(e) => Event::ConnectFailed(addr, e.to_string()),
                        };
                        let _ = events.send(ev).await;
                    });
                }
                Output::Disconnect(key, why) => {
                    debug!(?key, "metadata peer disconnected: {why}");
                    conns.remove(&key);
                }
                Output::WantPeers => {
                    // Nothing is open or being dialled when the core asks, so nothing waits
                    // while the trackers answer (10 s at most each).
                    info!("no peer had the torrent's metadata yet; asking for peers again");
                    waiting(core.tried());
                    let more = sources.addresses().await;
                    core.handle(Instant::now(), Input::Peers(more));
                }
                Output::Done(raw) => return Ok(raw),
                Output::Failed { tried: 0, .. } => return Err(MetadataError::NoPeers),
                Output::Failed { tried, last } => {
                    return Err(MetadataError::AllFailed { tried, last })
                }
            }
        }
        // Finished dials leave the set: a fetch that dials again stays bounded.
        while dials.try_join_next().is_some() {}
        let deadline = core.next_deadline().unwrap_or_else(|| Instant::now() + far);
        let input = tokio::select! {
            // The loop holds a sender itself, so the channel never closes.
            Some(ev) = events.recv() => match ev {
                Event::Connected(c) => {
                    let peer = PeerKey(next_key);
                    next_key += 1;
                    let (tx, rx) = mpsc::channel(MAX_OUTGOING);
                    let (fast, extensions) =
                        (c.theirs.supports_fast(), c.theirs.supports_extensions());
                    let addr = c.addr;
                    let task = tokio::spawn(connection(c, peer, rx, events_tx.clone()));
                    conns.insert(peer, Conn { tx, task });
                    Input::Connected { peer, addr, fast, extensions }
                }
                Event::ConnectFailed(addr, why) => Input::ConnectFailed(addr, why),
                Event::Msg(key, msg) => Input::Message(key, msg),
                Event::Closed(key, why) => {
                    conns.remove(&key);
                    Input::Closed(key, why)
                }
            },
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => Input::Timeout,
        };
        core.handle(Instant::now(), input);
    }
}

/// One connection: messages read go to the fetch loop, messages queued are written.
async fn connection(
    conn: Connected,
    key: PeerKey,
    mut rx: mpsc::Receiver<Message>,
    events: mpsc::Sender<Event>,
) {
    let (mut rd, mut wr) = conn.into_halves();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::new();
    let why = loop {
        match next_message(&mut buf, DEFAULT_MAX_MESSAGE) {
            Ok(Some(msg)) => {
                if events.send(Event::Msg(key, msg)).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => break e,
        }
        tokio::select! {
            read = rd.read_buf(&mut buf) => match read {
                Ok(0) => break "connection closed by peer".to_string(),
                Ok(_) => {}
                Err(e) => break format!("read error: {e}"),
            },
            msg = rx.recv() => {
                // The fetch loop dropped this connection.
                let Some(msg) = msg else { return };
                msg.encode(&mut out);
                while let Ok(m) = rx.try_recv() {
                    m.encode(&mut out);
                }
                match wr.write(&mut out).await {
                    Ok(()) => out.clear(),
                    Err(e) => break e,
                }
            }
        }
    };
    let _ = events.send(Event::Closed(key, why)).await;
}
