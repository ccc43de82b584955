//! The chat service: rooms and direct messages on the overlay, with history in SQLite.
//!
//! One task runs [`run`]: it owns the [`Driver`] (and so the node core), the identity and the
//! history [`Store`], takes [`Command`]s from a front end (the terminal UI, the `--script`
//! line mode, or nothing for a headless node) and reports [`ChatEvent`]s back.
//!
//! - Sending: the message is signed, committed to SQLite, then broadcast; only then is it
//!   reported as [`ChatEvent::Sent`].
//! - Receiving: every envelope is verified ([`envelope::open`]) before the node relays it (the
//!   driver's validator) and again when it is delivered; forged, altered or malformed ones are
//!   dropped and logged, and go no further than the first honest node. New ones are committed, then shown; duplicates
//!   (already in the store) are not shown again.
//! - Catch-up (anti-entropy): when a neighbor comes up, the node sends it a [`Sync::Request`]
//!   per topic it follows, listing the ids it has; the neighbor answers with what is missing,
//!   verified and stored like live messages, and asked again while `more` is set.
//! - Display: every string a peer chose (nicknames, texts) is passed through [`inert::inert`]
//!   before it is reported, so control characters, escape sequences and bidi overrides reach
//!   the terminal UI and the `--script` output as visible escapes, never as commands.
//! - Direct messages go on the directory topic, sealed to the recipient's key; everyone relays
//!   it, and keeps it for a while in a bounded store-and-forward cache (so a recipient who was
//!   offline catches up on it); only the recipient can open it.
//! - Storage is bounded: the node keeps only the rooms it follows and the directory, with the
//!   caps and the expiry in [`store`]'s docs; its own messages are kept for good.

pub mod envelope;
pub mod inert;
pub mod store;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::driver::{Driver, Event, Peer};
use crate::identity::{Identity, NodeId};
use crate::proto::node::{self, TopicId};
use crate::proto::search::{self, Record};
use crate::transport::Endpoint;
use envelope::{Content, DirectPlain, Sync, Verified};
use inert::inert;
use store::Store;

/// Everything a chat node needs to start.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// Data directory (key, history).
    pub data: PathBuf,
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Address others should dial (defaults to the bound address).
    pub advertise: Option<SocketAddr>,
    /// Anchors to join through.
    pub anchors: Vec<SocketAddr>,
    /// Nickname.
    pub nick: String,
    /// Rooms to follow from the start (the first is the current room).
    pub rooms: Vec<String>,
    /// Overlay tunables.
    pub node: node::Config,
    /// What this node shares: published as signed search records ([`search::Record`]),
    /// re-signed before they expire.
    pub share: Vec<SharedFile>,
    /// This node's DHT, if it runs one: where it listens (told to neighbours that ask), and
    /// where to report the DHT addresses neighbours tell us (each new neighbour is asked once),
    /// so the overlay's contacts double as DHT bootstrap contacts.
    pub dht: Option<DhtHook>,
}

/// See [`ChatConfig::dht`].
#[derive(Debug, Clone)]
pub struct DhtHook {
    /// The UDP addresses of our DHT node.
    pub addrs: Vec<SocketAddr>,
    /// Addresses neighbours gave (dropped when full).
    pub contacts: mpsc::Sender<SocketAddr>,
}

/// One thing a node shares, as the search records it publishes describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFile {
    /// The torrent's name.
    pub name: String,
    /// Bytes of content.
    pub size: u64,
    /// Its info-hash.
    pub info_hash: [u8; 20],
    /// Where this node serves it over BitTorrent.
    pub peers: Vec<SocketAddr>,
}

/// How long a published record is valid; it is re-signed when a third of it is left.
pub const RECORD_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);

/// What a front end asks of the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send text to a room.
    Say {
        /// The room (must be followed).
        room: String,
        /// The text.
        text: String,
    },
    /// Follow a room (and catch up on it).
    Join(String),
    /// Send a direct message to the node(s) using `nick`, or to a hex id prefix.
    Msg {
        /// Nickname or id prefix.
        to: String,
        /// The text.
        text: String,
    },
    /// Report the neighbors.
    Peers,
    /// Change nickname.
    Nick(String),
    /// Print the last `n` messages of a room from the history.
    History {
        /// The room.
        room: String,
        /// How many.
        n: usize,
    },
    /// Search what nodes share, by words of its name.
    Search {
        /// The words.
        text: String,
        /// How.
        mode: search::Mode,
    },
}

/// How a message reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// Broadcast while we were online.
    Live,
    /// Anti-entropy from a neighbor.
    Sync,
    /// From our own history.
    History,
}

/// What the service reports to a front end (one JSON object per line in `--script` mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChatEvent {
    /// The node is up.
    Ready {
        /// Our id (hex).
        id: String,
        /// Our address.
        addr: String,
        /// Our nickname.
        nick: String,
    },
    /// A room message.
    Message {
        /// Room.
        room: String,
        /// Author's nickname (made [`inert`](inert::inert)); unless the author is the only key
        /// that claims it, followed by `?` and the first 16 hex digits of the author's id.
        nick: String,
        /// Author's id (hex).
        author: String,
        /// Text (made [`inert`](inert::inert)).
        text: String,
        /// Message id (hex).
        id: String,
        /// Author's clock, ms, believed up to this node's clock plus
        /// [`store::MAX_CLOCK_SKEW_MS`].
        sent_ms: u64,
        /// How it came.
        via: Via,
    },
    /// A direct message to us.
    Dm {
        /// Author's nickname (made [`inert`](inert::inert)); unless the author is the only key
        /// that claims it, followed by `?` and the first 16 hex digits of the author's id.
        nick: String,
        /// Author's id (hex).
        author: String,
        /// Text (made [`inert`](inert::inert)).
        text: String,
        /// Message id (hex).
        id: String,
        /// How it came.
        via: Via,
    },
    /// Our message was committed and broadcast.
    Sent {
        /// Room, or `@nick` for a direct message.
        to: String,
        /// The text.
        text: String,
        /// Message id (hex).
        id: String,
    },
    /// Neighbor list.
    Peers {
        /// `nick (short id) addr` per neighbor.
        peers: Vec<String>,
    },
    /// A neighbor came or went.
    Neighbor {
        /// True: up.
        up: bool,
        /// `short-id@addr`.
        peer: String,
    },
    /// A result of one of our searches (one per file and publisher).
    Found {
        /// The search it answers.
        search: u64,
        /// The file's name (made [`inert`](inert::inert)).
        name: String,
        /// Its size, bytes (the publisher's claim).
        size: u64,
        /// Its info-hash (hex).
        info_hash: String,
        /// Where the publisher serves it.
        peers: Vec<SocketAddr>,
        /// The publisher's id (hex).
        publisher: String,
        /// Overlay hops away.
        hops: u8,
    },
    /// One of our searches ended.
    SearchDone {
        /// Which.
        search: u64,
        /// Results it found.
        results: usize,
    },
    /// Something for the person to know.
    Info {
        /// The text.
        text: String,
    },
    /// A command failed.
    Error {
        /// What went wrong and what to do.
        text: String,
    },
}

impl ChatEvent {
    /// The [`ChatEvent::Found`] of a record a search found `hops` away (over the overlay, or
    /// in the DHT's index).
    pub fn found(search: u64, record: search::Record, hops: u8) -> ChatEvent {
        ChatEvent::Found {
            search,
            name: inert(&record.name),
            size: record.size,
            info_hash: hex::encode(record.info_hash),
            peers: record.peers,
            publisher: record.publisher.to_string(),
            hops,
        }
    }
}

/// Errors that stop the service.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// Identity file problem.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// History database problem.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Could not open the UDP socket.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn text_of(v: &Verified) -> String {
    match &v.content {
        Content::Room { text, .. } => text.clone(),
        _ => String::new(),
    }
}

fn hex32(b: &[u8; 32]) -> String {
    hex::encode(b)
}

struct Service {
    identity: Identity,
    nick: String,
    store: Store,
    driver: Driver,
    rooms: Vec<String>,
    events: mpsc::Sender<ChatEvent>,
    /// Topics we asked a neighbor about and may accept replies for.
    syncing: BTreeSet<(Peer, TopicId)>,
    /// What we share, and when its records were last signed (Unix seconds).
    shared: Vec<SharedFile>,
    signed_at: u64,
    dht: Option<DhtHook>,
    /// Neighbours asked for their DHT contacts, whose answer we take (one each).
    dht_asked: BTreeSet<Peer>,
}

/// Runs a chat node until `commands` closes (the front end quit) or a fatal error.
pub async fn run(
    config: ChatConfig,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<ChatEvent>,
) -> Result<(), ChatError> {
    if !envelope::valid_nick(&config.nick) {
        return Err(ChatError::Config(format!(
            "nickname {:?} is not valid: use 1-32 characters without spaces",
            config.nick
        )));
    }
    if let Some(bad) = config.rooms.iter().find(|r| !envelope::valid_room(r)) {
        return Err(ChatError::Config(format!(
            "room name {bad:?} is not valid: use 1-64 of a-z, 0-9, - and _"
        )));
    }
    std::fs::create_dir_all(&config.data).map_err(|e| {
        ChatError::Config(format!("cannot create data directory {}: {e}", config.data.display()))
    })?;
    let identity = Identity::load_or_create(&config.data)?;
    let store = Store::open(&config.data, identity.id())?;
    let endpoint = Endpoint::bind(&identity, config.listen)?;
    let bound = endpoint
        .local_addr()
        .map_err(|e| ChatError::Config(format!("cannot read the bound UDP address: {e}")))?;
    let advertise = config.advertise.unwrap_or(bound);
    let known: Vec<Peer> = store.peers()?.into_iter().map(|(id, addr)| Peer { id, addr }).collect();
    let mut driver = Driver::start(endpoint, advertise, config.node, config.anchors, known);
    // Forged, altered or malformed envelopes, and valid ones under another message's id, are
    // dropped before they are relayed.
    driver.set_validator(Box::new(|topic, id, raw| {
        envelope::open(*topic, raw).is_ok_and(|v| v.id == *id)
    }));
    driver.enable_search(search::Config::default());
    let mut svc = Service {
        identity,
        nick: config.nick,
        store,
        driver,
        rooms: Vec::new(),
        events,
        syncing: BTreeSet::new(),
        dht: config.dht.clone(),
        dht_asked: BTreeSet::new(),
        shared: config.share,
        signed_at: 0,
    };
    svc.publish_records();
    // A fresh node follows nothing yet, so these fit unless the configuration lists too many.
    svc.driver
        .subscribe(envelope::directory_topic())
        .map_err(|e| ChatError::Config(e.to_string()))?;
    for room in &config.rooms {
        svc.join_room(room).map_err(ChatError::Config)?;
    }
    svc.emit(ChatEvent::Ready {
        id: svc.identity.id().to_string(),
        addr: advertise.to_string(),
        nick: svc.nick.clone(),
    })
    .await;
    svc.announce();
    let mut remember = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(cmd) => svc.command(cmd).await,
                None => break,
            },
            ev = svc.driver.next_event() => svc.on_event(ev).await,
            _ = remember.tick() => {
                svc.remember_peers();
                svc.publish_records();
                if let Err(e) = svc.store.expire_relayed(now_ms()) {
                    tracing::warn!("cannot expire relayed direct messages: {e}");
                }
            }
        }
    }
    svc.remember_peers();
    svc.driver.shutdown().await;
    Ok(())
}

impl Service {
    async fn emit(&mut self, ev: ChatEvent) {
        // A front end that went away just stops receiving.
        let _ = self.events.send(ev).await;
    }

    fn followed_topics(&self) -> Vec<TopicId> {
        let mut t = vec![envelope::directory_topic()];
        t.extend(self.rooms.iter().map(|r| envelope::room_topic(r)));
        t
    }

    /// Follows `room` (and catches up on it); the error says why not, for the person.
    fn join_room(&mut self, room: &str) -> Result<(), String> {
        if self.rooms.iter().any(|r| r == room) {
            return Ok(());
        }
        let topic = envelope::room_topic(room);
        self.driver.subscribe(topic).map_err(|e| match e {
            node::Error::TooManyTopics => format!(
                "cannot join #{room}: this node already follows {} rooms, the most it can",
                self.rooms.len()
            ),
            e => format!("cannot join #{room}: {e}"),
        })?;
        self.rooms.push(room.to_string());
        for peer in self.driver.neighbors() {
            self.request_sync(peer, topic);
        }
        Ok(())
    }

    fn announce(&mut self) {
        let content = Content::Presence {
            author: self.identity.id(),
            nick: self.nick.clone(),
            sent_ms: now_ms(),
        };
        let v = envelope::seal(&self.identity, content);
        if let Err(e) = self.publish(&v) {
            tracing::warn!("presence not sent: {e}");
        }
    }

    /// Commits then broadcasts one of our own messages.
    fn publish(&mut self, v: &Verified) -> Result<(), String> {
        self.store.insert(v, now_ms()).map_err(|e| e.to_string())?;
        self.driver.broadcast(v.content.topic(), v.id, v.raw.clone()).map_err(|e| e.to_string())
    }

    /// Signs our records anew when a third of their life is left (or never were).
    fn publish_records(&mut self) {
        let now = now_ms() / 1000;
        let life = RECORD_LIFETIME.as_secs();
        if self.signed_at != 0 && now < self.signed_at + life * 2 / 3 {
            return;
        }
        self.signed_at = now;
        for f in &self.shared {
            let record = Record::signed(
                &self.identity,
                f.name.clone(),
                f.size,
                f.info_hash,
                f.peers.clone(),
                now + life,
            );
            if let Err(e) = self.driver.share(record) {
                tracing::warn!("cannot share {}: {e}", f.name);
            }
        }
    }

    fn remember_peers(&self) {
        let now = now_ms();
        for p in
            self.driver.neighbors().into_iter().chain(self.driver.passive().into_iter().take(8))
        {
            if let Err(e) = self.store.remember_peer(&p.id, p.addr, now) {
                tracing::warn!("cannot remember peer: {e}");
            }
        }
    }

    async fn command(&mut self, cmd: Command) {
        let result = match cmd {
            Command::Say { room, text } => self.say(room, text).await,
            Command::Join(room) => {
                if envelope::valid_room(&room) {
                    match self.join_room(&room) {
                        Ok(()) => {
                            self.emit(ChatEvent::Info { text: format!("joined #{room}") }).await;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    Err(format!("room name {room:?} is not valid: use 1-64 of a-z, 0-9, - and _"))
                }
            }
            Command::Msg { to, text } => self.dm(to, text).await,
            Command::Peers => {
                let mut peers = Vec::new();
                for p in self.driver.neighbors() {
                    let nick = self.store.nick(&p.id).ok().flatten().unwrap_or_else(|| "?".into());
                    let nick = inert(&nick);
                    peers.push(format!("{nick} ({}) {}", p.id.short(), p.addr));
                }
                self.emit(ChatEvent::Peers { peers }).await;
                Ok(())
            }
            Command::Nick(nick) => {
                if envelope::valid_nick(&nick) {
                    self.nick = nick;
                    self.announce();
                    Ok(())
                } else {
                    Err(format!("nickname {nick:?} is not valid: 1-32 characters, no spaces"))
                }
            }
            Command::History { room, n } => self.history(&room, n).await,
            Command::Search { text, mode } => {
                if search::keywords(&text).is_empty() {
                    Err("search for at least one word of two letters or more".to_string())
                } else {
                    match self.driver.search(&text, mode) {
                        Ok(id) => {
                            let text = format!("search {id:016x}: {}", inert(&text));
                            self.emit(ChatEvent::Info { text }).await;
                            Ok(())
                        }
                        Err(e) => Err(format!("cannot search: {e}")),
                    }
                }
            }
        };
        if let Err(text) = result {
            self.emit(ChatEvent::Error { text }).await;
        }
    }

    async fn say(&mut self, room: String, text: String) -> Result<(), String> {
        if !self.rooms.contains(&room) {
            return Err(format!("not in #{room}; /join {room} first"));
        }
        if text.len() > envelope::MAX_TEXT {
            return Err(format!(
                "message too long ({} bytes, max {})",
                text.len(),
                envelope::MAX_TEXT
            ));
        }
        let content = Content::Room {
            author: self.identity.id(),
            nick: self.nick.clone(),
            room: room.clone(),
            sent_ms: now_ms(),
            nonce: rand::rng().random(),
            text,
        };
        let v = envelope::seal(&self.identity, content);
        self.publish(&v)?;
        let text = inert(&text_of(&v));
        self.emit(ChatEvent::Sent { to: room, text, id: hex32(&v.id.0) }).await;
        Ok(())
    }

    async fn dm(&mut self, to: String, text: String) -> Result<(), String> {
        if text.len() > envelope::MAX_TEXT {
            return Err(format!(
                "message too long ({} bytes, max {})",
                text.len(),
                envelope::MAX_TEXT
            ));
        }
        let recipient = self.recipient(&to)?;
        let plain = DirectPlain { nick: self.nick.clone(), text: text.clone() };
        let v = envelope::seal_direct(
            &self.identity,
            recipient,
            &plain,
            now_ms(),
            rand::rng().random(),
        )
        .map_err(|e| e.to_string())?;
        self.publish(&v)?;
        let (to, text) = (format!("@{}", inert(&to)), inert(&text));
        self.emit(ChatEvent::Sent { to, text, id: hex32(&v.id.0) }).await;
        Ok(())
    }

    /// The one key `/msg TO` means: the only key that claims the nick `to`, else the only known
    /// key whose hex id starts with `to` (8 digits at least). Several keys for one nick are
    /// never guessed between (the latest claim could be anybody's): the error lists them.
    fn recipient(&self, to: &str) -> Result<NodeId, String> {
        let claimants = self.store.claimants(to).map_err(|e| e.to_string())?;
        match claimants.as_slice() {
            [one] => return Ok(one.author),
            [first, rest @ ..] => {
                let others: Vec<String> = rest.iter().map(|c| c.author.to_string()).collect();
                return Err(format!(
                    "{} keys claim the nick {}: {} (seen first) and {}; send with /msg ID text, \
                     giving enough of the id to tell them apart",
                    claimants.len(),
                    inert(to),
                    first.author,
                    others.join(", ")
                ));
            }
            [] => {}
        }
        if to.len() < 8 || !to.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "nobody called {} is known yet; /peers lists neighbors",
                inert(to)
            ));
        }
        let prefix = to.to_ascii_lowercase();
        let mut ids: Vec<NodeId> = self
            .driver
            .neighbors()
            .into_iter()
            .chain(self.driver.passive())
            .map(|p| p.id)
            .filter(|id| id.to_string().starts_with(&prefix))
            .collect();
        ids.extend(self.store.authors_with_prefix(&prefix).map_err(|e| e.to_string())?);
        ids.sort();
        ids.dedup();
        match ids.as_slice() {
            [one] => Ok(*one),
            [] => Err(format!("no known node has an id starting with {prefix}")),
            _ => Err(format!("{} known ids start with {prefix}; give more of it", ids.len())),
        }
    }

    /// A nickname as shown: inert, and followed by `?` and 16 hex digits of the author's id
    /// unless the author is the only key that claims it.
    fn shown_nick(&self, author: &NodeId, nick: &str) -> String {
        let sole = match self.store.claimants(nick) {
            Ok(c) => c.len() == 1 && c[0].author == *author,
            Err(_) => false,
        };
        if sole {
            inert(nick)
        } else {
            // A NodeId displays as 64 hex digits.
            format!("{}?{}", inert(nick), &author.to_string()[..16])
        }
    }

    async fn history(&mut self, room: &str, n: usize) -> Result<(), String> {
        let rows = self.store.recent(&envelope::room_topic(room), n).map_err(|e| e.to_string())?;
        for row in rows {
            if let Ok(v) = envelope::open(envelope::room_topic(room), &row.raw) {
                self.show(&v, Via::History).await;
            }
        }
        Ok(())
    }

    async fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Deliver { topic, payload, from, .. } => {
                // Our own broadcasts are already stored and reported.
                if from.is_some() {
                    self.receive(topic, &payload, Via::Live).await;
                }
            }
            Event::Direct { from, payload } => self.on_direct(from, &payload).await,
            Event::NeighborUp(peer) => {
                // Remembered at once, so a restart can re-join through it with anchors down.
                if let Err(e) = self.store.remember_peer(&peer.id, peer.addr, now_ms()) {
                    tracing::warn!("cannot remember peer: {e}");
                }
                for topic in self.followed_topics() {
                    self.request_sync(peer, topic);
                }
                if self.dht.is_some() {
                    let bytes = postcard::to_allocvec(&Sync::DhtAsk).expect("encodes");
                    if self.driver.direct(peer, bytes).is_ok() {
                        self.dht_asked.insert(peer);
                    }
                }
                self.emit(ChatEvent::Neighbor { up: true, peer: format!("{peer:?}") }).await;
            }
            Event::NeighborDown(peer) => {
                self.syncing.retain(|(p, _)| *p != peer);
                self.dht_asked.remove(&peer);
                self.emit(ChatEvent::Neighbor { up: false, peer: format!("{peer:?}") }).await;
            }
            Event::Search(search::Output::Result { id, record, hops }) => {
                self.emit(ChatEvent::found(id, record, hops)).await;
            }
            Event::Search(search::Output::Done { id, results }) => {
                self.emit(ChatEvent::SearchDone { search: id, results }).await;
            }
            // The driver turns searches' sends into frames.
            Event::Search(search::Output::Send { .. }) => {}
        }
    }

    /// Verifies, commits and shows one envelope; returns whether it was new.
    async fn receive(&mut self, topic: TopicId, raw: &[u8], via: Via) -> bool {
        let v = match envelope::open(topic, raw) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("dropped a message: {e}");
                return false;
            }
        };
        // Only followed rooms are kept (the node core delivers no others; catch-up replies
        // are for topics asked about, but a room name is checked here all the same).
        if let Content::Room { room, .. } = &v.content {
            if !self.rooms.contains(room) {
                return false;
            }
        }
        let claim = match &v.content {
            Content::Room { author, nick, .. } | Content::Presence { author, nick, .. } => {
                Some((*author, nick.clone(), self.store.claimants(nick).unwrap_or_default()))
            }
            Content::Direct { .. } => None,
        };
        match self.store.insert(&v, now_ms()) {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                tracing::error!("cannot store a message, not showing it: {e}");
                return false;
            }
        }
        if let Some((author, nick, before)) = claim {
            if let Some(first) =
                before.first().filter(|_| !before.iter().any(|c| c.author == author))
            {
                let text = format!(
                    "{author} also calls itself {nick}, which {} was first seen using; \
                     its messages now show the id, and /msg {nick} asks which",
                    first.author,
                    nick = inert(&nick)
                );
                self.emit(ChatEvent::Info { text }).await;
            }
        }
        self.show(&v, via).await;
        true
    }

    async fn show(&mut self, v: &Verified, via: Via) {
        match &v.content {
            Content::Room { author, nick, room, sent_ms, text, .. }
                if self.rooms.contains(room) =>
            {
                let nick = self.shown_nick(author, nick);
                self.emit(ChatEvent::Message {
                    room: room.clone(),
                    nick,
                    author: author.to_string(),
                    text: inert(text),
                    id: hex32(&v.id.0),
                    sent_ms: store::clamp_sent_ms(*sent_ms, now_ms()),
                    via,
                })
                .await;
            }
            Content::Direct { author, to, .. } if *to == self.identity.id() => {
                match envelope::open_direct(&self.identity, &v.content) {
                    Ok(plain) => {
                        self.emit(ChatEvent::Dm {
                            nick: self.shown_nick(author, &plain.nick),
                            author: author.to_string(),
                            text: inert(&plain.text),
                            id: hex32(&v.id.0),
                            via,
                        })
                        .await;
                    }
                    Err(e) => tracing::warn!("direct message from {} dropped: {e}", author.short()),
                }
            }
            _ => {}
        }
    }

    fn request_sync(&mut self, peer: Peer, topic: TopicId) {
        let rows = match self.store.recent(&topic, envelope::MAX_SYNC_IDS) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!("cannot read history for catch-up: {e}");
                return;
            }
        };
        let since_ms = if rows.len() == envelope::MAX_SYNC_IDS { rows[0].sent_ms } else { 0 };
        let have = rows.iter().map(|r| r.id).collect();
        let req = Sync::Request { topic, since_ms, have };
        let bytes = postcard::to_allocvec(&req).expect("postcard encodes a Sync to a Vec");
        if self.driver.direct(peer, bytes).is_ok() {
            self.syncing.insert((peer, topic));
        }
    }

    async fn on_direct(&mut self, from: Peer, payload: &[u8]) {
        let Ok(sync) = crate::wire::from_canonical::<Sync>(payload) else {
            tracing::warn!("malformed catch-up frame from {from:?}");
            return;
        };
        match sync {
            Sync::Request { topic, since_ms, have } => {
                if have.len() > envelope::MAX_SYNC_IDS {
                    return;
                }
                let have: BTreeSet<_> = have.into_iter().collect();
                let (mut messages, mut more) =
                    match self.store.since(&topic, since_ms, &have, envelope::MAX_SYNC_MESSAGES) {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!("cannot read history for a neighbor: {e}");
                            return;
                        }
                    };
                // Keep the reply within one frame.
                let mut total = 0;
                let budget = node::MAX_DIRECT - 1024;
                if let Some(cut) = messages.iter().position(|m| {
                    total += m.len() + 4;
                    total > budget
                }) {
                    messages.truncate(cut);
                    more = true;
                }
                let reply = Sync::Reply { topic, messages, more };
                let bytes = postcard::to_allocvec(&reply).expect("postcard encodes a Sync");
                let _ = self.driver.direct(from, bytes);
            }
            Sync::Reply { topic, messages, more } => {
                if !self.syncing.remove(&(from, topic))
                    || messages.len() > envelope::MAX_SYNC_MESSAGES
                {
                    return;
                }
                let mut new = 0usize;
                for raw in &messages {
                    if self.receive(topic, raw, Via::Sync).await {
                        new += 1;
                    }
                }
                if more && new > 0 {
                    self.request_sync(from, topic);
                }
            }
            Sync::DhtAsk => {
                let addrs = self.dht.as_ref().map(|d| d.addrs.clone()).unwrap_or_default();
                let reply = Sync::DhtContacts { addrs };
                let bytes = postcard::to_allocvec(&reply).expect("postcard encodes a Sync");
                let _ = self.driver.direct(from, bytes);
            }
            Sync::DhtContacts { addrs } => {
                let Some(dht) = &self.dht else { return };
                if !self.dht_asked.remove(&from) {
                    return;
                }
                for a in envelope::dht_contacts_from(addrs, from.addr) {
                    let _ = dht.contacts.try_send(a);
                }
            }
        }
    }
}
