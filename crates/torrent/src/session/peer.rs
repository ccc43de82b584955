//! One peer connection's I/O: the handshake, a reader task that turns bytes into messages for
//! the torrent task, and a writer task that sends what the torrent task decides (reading block
//! data from storage itself, so uploads do not pass through the torrent task).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Event;
use crate::metainfo::InfoHash;
use crate::proto::wire::{self, Handshake, Message, HANDSHAKE_LEN};
use crate::proto::{BlockRef, PeerKey};
use crate::ratelimit::RateLimiter;
use crate::storage::Storage;
use crate::PeerId;

/// A TCP connection whose handshake has been exchanged.
pub struct Connected {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    pub theirs: Handshake,
    pub outgoing: bool,
}

/// Dials `addr` and exchanges handshakes; the peer must answer for `info_hash`.
pub async fn connect(
    addr: SocketAddr,
    info_hash: InfoHash,
    our_id: PeerId,
    timeout: Duration,
) -> io::Result<Connected> {
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        stream.write_all(&Handshake::new(info_hash, our_id).encode()).await?;
        let theirs = read_handshake(&mut stream).await?;
        if theirs.info_hash != info_hash {
            return Err(invalid("peer answered for another torrent"));
        }
        Ok(Connected { stream, addr, theirs, outgoing: true })
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))?
}

/// Reads an incoming peer's handshake and answers with ours if `accepts` its info-hash.
pub async fn accept(
    mut stream: TcpStream,
    addr: SocketAddr,
    accepts: InfoHash,
    our_id: PeerId,
    timeout: Duration,
) -> io::Result<Connected> {
    tokio::time::timeout(timeout, async {
        stream.set_nodelay(true)?;
        let theirs = read_handshake(&mut stream).await?;
        if theirs.info_hash != accepts {
            return Err(invalid("peer asked for a torrent we do not have"));
        }
        stream.write_all(&Handshake::new(accepts, our_id).encode()).await?;
        Ok(Connected { stream, addr, theirs, outgoing: false })
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))?
}

async fn read_handshake(stream: &mut TcpStream) -> io::Result<Handshake> {
    let mut buf = [0u8; HANDSHAKE_LEN];
    stream.read_exact(&mut buf).await?;
    Handshake::decode(&buf).map_err(|e| invalid(&e.to_string()))
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// What the torrent task asks a connection's writer to do.
#[derive(Debug)]
pub enum Outgoing {
    Msg(Message),
    /// Send this block (read from storage) when the upload limit allows.
    Block(BlockRef),
    /// The peer cancelled this request: drop it if not yet sent.
    Cancel(BlockRef),
    /// We choked the peer: drop every queued block; with `reject`, tell the peer (BEP 6).
    DropBlocks {
        reject: bool,
    },
}

/// Counters a connection shares with the torrent task.
#[derive(Default)]
pub struct PeerCounters {
    /// Payload bytes of PIECE messages written to the socket.
    pub uploaded: AtomicU64,
}

/// The running tasks of one connection.
pub struct PeerIo {
    pub tx: mpsc::UnboundedSender<Outgoing>,
    pub counters: Arc<PeerCounters>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for PeerIo {
    fn drop(&mut self) {
        // Dropping the connection's state in the torrent task closes the socket: both halves'
        // tasks are stopped so neither outlives the peer's entry.
        self.reader.abort();
        self.writer.abort();
    }
}

/// Limits a connection applies to itself.
pub struct IoLimits {
    pub upload: Arc<RateLimiter>,
    pub download: Arc<RateLimiter>,
    pub max_message: u32,
    /// Most blocks a peer may have queued with us; more requests are dropped (or rejected).
    pub max_queued_blocks: usize,
    /// The session's totals, updated as bytes go out.
    pub stats: Arc<super::Stats>,
}

/// Starts the reader and writer tasks of a connection.
pub fn spawn(
    stream: TcpStream,
    key: PeerKey,
    events: mpsc::Sender<Event>,
    storage: Arc<Storage>,
    limits: Arc<IoLimits>,
) -> PeerIo {
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    let counters = Arc::new(PeerCounters::default());
    let reader = tokio::spawn(read_loop(rd, key, events.clone(), limits.clone()));
    let writer = tokio::spawn(write_loop(wr, key, rx, events, storage, limits, counters.clone()));
    PeerIo { tx, counters, reader, writer }
}

async fn read_loop(
    mut rd: OwnedReadHalf,
    key: PeerKey,
    events: mpsc::Sender<Event>,
    limits: Arc<IoLimits>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let reason = loop {
        match wire::decode(&mut buf, limits.max_message) {
            Ok(Some(msg)) => {
                if events.send(Event::Msg(key, msg)).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => break format!("protocol error: {e}"),
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => break "connection closed by peer".to_string(),
            Ok(n) => limits.download.acquire(n).await,
            Err(e) => break format!("read error: {e}"),
        }
    };
    let _ = events.send(Event::Closed(key, reason)).await;
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    key: PeerKey,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    events: mpsc::Sender<Event>,
    storage: Arc<Storage>,
    limits: Arc<IoLimits>,
    counters: Arc<PeerCounters>,
) {
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut blocks: VecDeque<BlockRef> = VecDeque::new();
    let mut open = true;
    let result: io::Result<()> = async {
        loop {
            // Take everything that is ready, so cancels can remove queued blocks.
            if blocks.is_empty() && out.is_empty() {
                match rx.recv().await {
                    Some(cmd) => apply(cmd, &mut out, &mut blocks, limits.max_queued_blocks),
                    None => open = false,
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                apply(cmd, &mut out, &mut blocks, limits.max_queued_blocks);
            }
            if !out.is_empty() {
                wr.write_all(&out).await?;
                out.clear();
            }
            if let Some(b) = blocks.pop_front() {
                limits.upload.acquire(b.length as usize).await;
                out.put_slice(&Message::piece_header(b.piece, b.offset, b.length as usize));
                let start = out.len();
                out.resize(start + b.length as usize, 0);
                let st = storage.clone();
                storage_read(&st, b, &mut out[start..])?;
                wr.write_all(&out).await?;
                out.clear();
                counters.uploaded.fetch_add(b.length as u64, Ordering::Relaxed);
                limits.stats.uploaded.fetch_add(b.length as u64, Ordering::Relaxed);
            }
            if !open && blocks.is_empty() {
                let _ = wr.shutdown().await;
                return Ok(());
            }
        }
    }
    .await;
    if let Err(e) = result {
        let _ = events.send(Event::Closed(key, format!("write error: {e}"))).await;
    }
}

fn storage_read(storage: &Storage, b: BlockRef, buf: &mut [u8]) -> io::Result<()> {
    storage.read(b.piece, b.offset, buf)
}

fn apply(cmd: Outgoing, out: &mut BytesMut, blocks: &mut VecDeque<BlockRef>, max_queued: usize) {
    match cmd {
        Outgoing::Msg(m) => m.encode(out),
        Outgoing::Block(b) => {
            if blocks.len() < max_queued && !blocks.contains(&b) {
                blocks.push_back(b);
            }
        }
        Outgoing::Cancel(b) => blocks.retain(|q| *q != b),
        Outgoing::DropBlocks { reject } => {
            for b in blocks.drain(..) {
                if reject {
                    Message::RejectRequest { piece: b.piece, offset: b.offset, length: b.length }
                        .encode(out);
                }
            }
        }
    }
}
