//! The tokio driver: one UDP socket, one task, any number of [`Connection`]s, each seen by its
//! owner as a [`UtpStream`] (`AsyncRead` + `AsyncWrite`). The task feeds the cores every
//! datagram and deadline, sends what they ask, and moves bytes between each core and its
//! stream's buffers. All protocol logic is in the cores.
//!
//! A datagram is routed by (sender, connection id). A SYN from an address and id we do not know
//! opens a connection that [`UtpSocket::accept`] hands out; at most [`MAX_CONNECTIONS`] live at
//! once and [`MAX_PENDING_ACCEPT`] wait to be accepted (more SYNs are dropped: a SYN flood
//! costs a bounded table). Datagrams that are not uTP or name no connection are dropped and
//! counted.
//!
//! [`UtpSocket::bind_sharing`] shares the port with another protocol, as libtorrent serves uTP
//! and the DHT on one port: datagrams that start with `d` (a bencoded dictionary: KRPC; never a
//! uTP header, whose first byte is a type below 5 and version 1) go to [`Others`] instead, at
//! most [`MAX_OTHERS_QUEUED`] waiting (more are dropped, as a full socket buffer drops them).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::conn::{Closed, Config, Connection, Input, Output, State};
use crate::packet::{Kind, Packet, MAX_PACKET};

/// Connections alive at once, at most.
pub const MAX_CONNECTIONS: usize = 1024;
/// Accepted connections waiting for [`UtpSocket::accept`], at most.
pub const MAX_PENDING_ACCEPT: usize = 64;
/// Accepted connections whose peer has said nothing since its SYN, at most (a spoofed SYN
/// costs a slot until the idle timeout; these cannot take every slot).
pub const MAX_HALF_OPEN: usize = 128;
/// Datagrams for the port's other protocol waiting to be taken, at most.
pub const MAX_OTHERS_QUEUED: usize = 256;
/// The largest datagram passed on to the other protocol (a KRPC message is far smaller), so
/// an unread queue holds at most 2 MiB.
pub const MAX_OTHER_DATAGRAM: usize = 8192;
/// The socket buffers asked for, each way (the kernel caps them at `net.core.rmem_max` and
/// `wmem_max`): a window's burst fits, where the default 208 KiB drops the tail of one on
/// loopback and the lost tail waits for a timeout.
const SOCKET_BUFFER: usize = 4 << 20;
/// Bytes buffered between a stream and its connection, each way.
const PIPE_BYTES: usize = 1 << 20;

/// Bytes between a [`UtpStream`] and its connection.
#[derive(Default)]
struct Pipe {
    /// Received, for the application to read.
    inbound: VecDeque<u8>,
    /// Written by the application, for the connection to send.
    outbound: VecDeque<u8>,
    /// The peer finished and everything it sent is in `inbound`.
    eof: bool,
    /// The application shut its writing side.
    shut: bool,
    /// The connection is gone (reset, timed out, or the socket stopped).
    failed: Option<io::ErrorKind>,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

type SharedPipe = Arc<Mutex<Pipe>>;

fn lock(p: &SharedPipe) -> std::sync::MutexGuard<'_, Pipe> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// One uTP connection as a byte stream.
pub struct UtpStream {
    pipe: SharedPipe,
    wake_task: Arc<Notify>,
    peer: SocketAddr,
}

impl UtpStream {
    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
}

impl AsyncRead for UtpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut p = lock(&self.pipe);
        if !p.inbound.is_empty() {
            let n = buf.remaining().min(p.inbound.len());
            let (a, b) = p.inbound.as_slices();
            let first = n.min(a.len());
            buf.put_slice(&a[..first]);
            buf.put_slice(&b[..n - first]);
            p.inbound.drain(..n);
            drop(p);
            self.wake_task.notify_one();
            return Poll::Ready(Ok(()));
        }
        if p.eof {
            return Poll::Ready(Ok(()));
        }
        if let Some(kind) = p.failed {
            return Poll::Ready(Err(io::Error::new(kind, "uTP connection lost")));
        }
        p.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for UtpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut p = lock(&self.pipe);
        if let Some(kind) = p.failed {
            return Poll::Ready(Err(io::Error::new(kind, "uTP connection lost")));
        }
        if p.shut {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "shut down")));
        }
        let room = PIPE_BYTES.saturating_sub(p.outbound.len());
        if room == 0 {
            p.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(data.len());
        p.outbound.extend(&data[..n]);
        drop(p);
        self.wake_task.notify_one();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut p = lock(&self.pipe);
        if p.outbound.is_empty() || p.failed.is_some() {
            return Poll::Ready(Ok(()));
        }
        p.writer = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(&self.pipe).shut = true;
        self.wake_task.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for UtpStream {
    fn drop(&mut self) {
        lock(&self.pipe).shut = true;
        self.wake_task.notify_one();
    }
}

enum Command {
    Connect(SocketAddr, oneshot::Sender<io::Result<UtpStream>>),
}

/// The datagrams on a uTP socket's port that are not uTP, and the socket to answer them on
/// (see the module docs). The receiver ends when the [`UtpSocket`] is dropped.
pub struct Others {
    pub socket: Arc<UdpSocket>,
    pub incoming: mpsc::Receiver<(Vec<u8>, SocketAddr)>,
}

/// A UDP socket speaking uTP. Dropping it stops its task (and every connection).
pub struct UtpSocket {
    commands: mpsc::Sender<Command>,
    accepted: tokio::sync::Mutex<mpsc::Receiver<UtpStream>>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

/// A UDP socket on `addr` with [`SOCKET_BUFFER`]s (as large as the kernel allows).
fn bind_udp(addr: SocketAddr) -> io::Result<Arc<UdpSocket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Smaller buffers only cost speed.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(Arc::new(UdpSocket::from_std(socket.into())?))
}

/// The socket's task stopped.
fn stopped() -> io::Error {
    io::Error::other("the uTP socket has stopped")
}

impl UtpSocket {
    /// Binds `addr` and starts the task.
    pub async fn bind(addr: SocketAddr, config: Config) -> io::Result<UtpSocket> {
        UtpSocket::start(bind_udp(addr)?, config, None)
    }

    /// Binds `addr` for uTP and for another protocol (a DHT node), whose datagrams come out of
    /// [`Others`].
    pub async fn bind_sharing(addr: SocketAddr, config: Config) -> io::Result<(UtpSocket, Others)> {
        let socket = bind_udp(addr)?;
        let (tx, incoming) = mpsc::channel(MAX_OTHERS_QUEUED);
        let utp = UtpSocket::start(socket.clone(), config, Some(tx))?;
        Ok((utp, Others { socket, incoming }))
    }

    fn start(
        socket: Arc<UdpSocket>,
        config: Config,
        others: Option<mpsc::Sender<(Vec<u8>, SocketAddr)>>,
    ) -> io::Result<UtpSocket> {
        let local = socket.local_addr()?;
        let io = Io::new(socket)?;
        let (commands, rx) = mpsc::channel(64);
        let (accept_tx, accepted) = mpsc::channel(MAX_PENDING_ACCEPT);
        let task = tokio::spawn(run(io, config, rx, accept_tx, others));
        Ok(UtpSocket { commands, accepted: tokio::sync::Mutex::new(accepted), local, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Opens a connection to `peer`; fails if it does not answer (the core's timeouts).
    pub async fn connect(&self, peer: SocketAddr) -> io::Result<UtpStream> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Connect(peer, tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// The next connection a peer opened.
    pub async fn accept(&self) -> io::Result<UtpStream> {
        self.accepted.lock().await.recv().await.ok_or_else(stopped)
    }
}

impl Drop for UtpSocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A connection and the stream it feeds. Dropped (the connection closed, or the socket
/// stopped), it leaves its stream failed unless it finished, so no reader or writer waits on
/// it forever.
struct Entry {
    conn: Connection,
    pipe: SharedPipe,
    /// A connect waiting for the handshake.
    opening: Option<oneshot::Sender<io::Result<UtpStream>>>,
    stream: Option<UtpStream>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        let mut p = lock(&self.pipe);
        if !p.eof && p.failed.is_none() {
            p.failed = Some(io::ErrorKind::BrokenPipe);
        }
        if let Some(w) = p.reader.take() {
            w.wake();
        }
        if let Some(w) = p.writer.take() {
            w.wake();
        }
    }
}

/// The largest send of many datagrams at once (UDP GSO): below what one IP packet may carry.
const MAX_BATCH_BYTES: usize = 65_000;

/// The socket, and the state of its batched sends and receives (UDP GSO and GRO, where the
/// kernel has them: one system call for up to 64 datagrams of one size to one address, and
/// for as many arriving at once from one).
struct Io {
    socket: Arc<UdpSocket>,
    state: quinn_udp::UdpSocketState,
}

impl Io {
    fn new(socket: Arc<UdpSocket>) -> io::Result<Io> {
        let state = quinn_udp::UdpSocketState::new((&*socket).into())?;
        Ok(Io { socket, state })
    }

    /// Sends `bytes` to `to`: one datagram, or datagrams of `segment` bytes each (the last may
    /// be shorter). A datagram that cannot be sent is a lost packet (the cores resend).
    async fn send(&self, to: SocketAddr, bytes: &[u8], segment: Option<usize>) {
        let t = quinn_udp::Transmit {
            destination: to,
            ecn: None,
            contents: bytes,
            segment_size: segment,
            src_ip: None,
        };
        let send = || self.state.send((&*self.socket).into(), &t);
        let _ = self.socket.async_io(Interest::WRITABLE, send).await;
    }

    /// One receive into `buf`: the datagrams are `buf[..meta.len]` in pieces of `meta.stride`.
    fn try_recv(&self, buf: &mut [u8]) -> io::Result<quinn_udp::RecvMeta> {
        let mut meta = [quinn_udp::RecvMeta::default()];
        let bufs = &mut [io::IoSliceMut::new(buf)];
        self.socket.try_io(Interest::READABLE, || {
            self.state.recv((&*self.socket).into(), bufs, &mut meta).map(|_| ())
        })?;
        Ok(meta[0])
    }

    async fn recv(&self, buf: &mut [u8]) -> io::Result<quinn_udp::RecvMeta> {
        loop {
            self.socket.readable().await?;
            match self.try_recv(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }
}

/// Datagrams to one address gathered for one send (see [`Io`]): of one size, the last may be
/// shorter.
#[derive(Default)]
struct Batch {
    to: Option<SocketAddr>,
    bytes: Vec<u8>,
    segment: usize,
    count: usize,
}

impl Batch {
    async fn push(&mut self, io: &Io, to: SocketAddr, datagram: &[u8]) {
        let fits = self.to == Some(to)
            && datagram.len() <= self.segment
            && self.count < io.state.max_gso_segments()
            && self.bytes.len() + datagram.len() <= MAX_BATCH_BYTES;
        if !fits {
            self.flush(io).await;
            (self.to, self.segment) = (Some(to), datagram.len());
        }
        self.bytes.extend_from_slice(datagram);
        self.count += 1;
        // A shorter datagram ends a batch.
        if datagram.len() < self.segment {
            self.flush(io).await;
        }
    }

    async fn flush(&mut self, io: &Io) {
        if let Some(to) = self.to.filter(|_| self.count > 0) {
            io.send(to, &self.bytes, (self.count > 1).then_some(self.segment)).await;
        }
        self.bytes.clear();
        self.count = 0;
    }
}

async fn run(
    io: Io,
    config: Config,
    mut commands: mpsc::Receiver<Command>,
    accept: mpsc::Sender<UtpStream>,
    others: Option<mpsc::Sender<(Vec<u8>, SocketAddr)>>,
) {
    let wake = Arc::new(Notify::new());
    let mut conns: HashMap<(SocketAddr, u16), Entry> = HashMap::new();
    let mut buf = vec![0u8; MAX_PACKET];
    let mut batch = Batch::default();
    let mut dropped: u64 = 0;
    loop {
        let now = Instant::now();
        // Move bytes between each connection and its stream; send what the cores ask.
        let mut gone = Vec::new();
        for (key, e) in conns.iter_mut() {
            shuttle(now, e);
            // Until the core has nothing more to say (moving bytes may make it send).
            let mut rounds = 0;
            loop {
                let mut said = false;
                while let Some(out) = e.conn.poll() {
                    said = true;
                    match out {
                        Output::Transmit(bytes) => batch.push(&io, key.0, &bytes).await,
                        Output::Connected => {
                            if let (Some(tx), Some(s)) = (e.opening.take(), e.stream.take()) {
                                let _ = tx.send(Ok(s));
                            }
                        }
                        Output::Closed(why) => {
                            let kind = match why {
                                Closed::Finished => None,
                                Closed::Reset => Some(io::ErrorKind::ConnectionReset),
                                Closed::TimedOut => Some(io::ErrorKind::TimedOut),
                            };
                            let mut p = lock(&e.pipe);
                            // Whatever arrived is the stream's, however much is left unread.
                            e.conn.read_into(now, &mut p.inbound, usize::MAX);
                            match kind {
                                Some(k) => p.failed = Some(k),
                                // Both sides finished: reads end, writes fail.
                                None => (p.eof, p.shut) = (true, true),
                            }
                            if let Some(w) = p.reader.take() {
                                w.wake();
                            }
                            if let Some(w) = p.writer.take() {
                                w.wake();
                            }
                            drop(p);
                            if let Some(tx) = e.opening.take() {
                                let _ = tx.send(Err(io::Error::new(
                                    kind.unwrap_or(io::ErrorKind::ConnectionRefused),
                                    "uTP connect failed",
                                )));
                            }
                        }
                        Output::Readable | Output::Writable => {}
                    }
                }
                shuttle(now, e);
                rounds += 1;
                if !said || rounds == 4 {
                    break;
                }
            }
            // A connect whose caller gave up (its timeout passed) is not kept retrying.
            let abandoned = e.opening.as_ref().is_some_and(|tx| tx.is_closed());
            if e.conn.state() == State::Closed || abandoned {
                gone.push(*key);
            }
        }
        batch.flush(&io).await;
        for k in gone {
            conns.remove(&k);
        }
        let deadline = conns.values().filter_map(|e| e.conn.next_deadline()).min();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            got = io.recv(&mut buf) => {
                let Ok(meta) = got else { continue };
                let now = Instant::now();
                let mut ctx = Incoming {
                    conns: &mut conns,
                    config: &config,
                    accept: &accept,
                    wake: &wake,
                    others: others.as_ref(),
                };
                dropped += ctx.datagrams(now, &meta, &buf);
                // Whatever else already waits is taken before answering, so one acknowledgement
                // covers a burst (at most 64 receives a turn).
                for _ in 0..64 {
                    let Ok(meta) = io.try_recv(&mut buf) else { break };
                    dropped += ctx.datagrams(now, &meta, &buf);
                }
                if dropped > 0 && dropped.is_power_of_two() {
                    tracing::debug!(dropped, "uTP datagrams that name no connection");
                }
            }
            cmd = commands.recv() => {
                let Some(Command::Connect(peer, reply)) = cmd else { return };
                if conns.len() >= MAX_CONNECTIONS {
                    let _ = reply.send(Err(io::Error::other("too many uTP connections")));
                    continue;
                }
                // A receive id free for this peer.
                let mut id = rand_u16();
                while conns.contains_key(&(peer, id)) || conns.contains_key(&(peer, id.wrapping_add(1))) {
                    id = id.wrapping_add(2);
                }
                let conn = Connection::connect(Instant::now(), config.clone(), id, rand_u16());
                let pipe = SharedPipe::default();
                let stream = UtpStream { pipe: pipe.clone(), wake_task: wake.clone(), peer };
                conns.insert((peer, id), Entry { conn, pipe, opening: Some(reply), stream: Some(stream) });
            }
            _ = wake.notified() => {}
            _ = sleep => {
                let now = Instant::now();
                for e in conns.values_mut() {
                    e.conn.handle(now, Input::Tick);
                }
            }
        }
    }
}

/// What a received datagram may touch.
struct Incoming<'a> {
    conns: &'a mut HashMap<(SocketAddr, u16), Entry>,
    config: &'a Config,
    accept: &'a mpsc::Sender<UtpStream>,
    wake: &'a Arc<Notify>,
    /// Where the port's other protocol takes its datagrams, if the port is shared.
    others: Option<&'a mpsc::Sender<(Vec<u8>, SocketAddr)>>,
}

impl Incoming<'_> {
    /// Routes the datagrams of one receive; returns how many were dropped.
    fn datagrams(&mut self, now: Instant, meta: &quinn_udp::RecvMeta, buf: &[u8]) -> u64 {
        let stride = meta.stride.max(1);
        let got = &buf[..meta.len.min(buf.len())];
        got.chunks(stride).map(|d| u64::from(!self.datagram(now, meta.addr, d))).sum()
    }

    /// Routes one datagram; false when it was dropped (not uTP, no such connection, or a SYN
    /// past the tables' bounds).
    fn datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> bool {
        if let Some(others) = self.others.filter(|_| crate::packet::is_krpc(bytes)) {
            return bytes.len() <= MAX_OTHER_DATAGRAM
                && others.try_send((bytes.to_vec(), from)).is_ok();
        }
        let p = match Packet::decode(bytes) {
            Ok(p) => p,
            Err(e) => {
                tracing::trace!(%from, error = %e, head = ?&bytes[..bytes.len().min(40)], "not a uTP packet we accept");
                return false;
            }
        };
        let h = &p.header;
        if h.kind == Kind::Syn {
            let key = (from, h.connection_id.wrapping_add(1));
            if let Some(e) = self.conns.get_mut(&key) {
                e.conn.handle(now, Input::Packet(&p));
                return true;
            }
            let half_open = self.conns.values().filter(|e| !e.conn.established()).count();
            if self.conns.len() >= MAX_CONNECTIONS
                || self.accept.capacity() == 0
                || half_open >= MAX_HALF_OPEN
            {
                return false;
            }
            let conn = Connection::accept(now, self.config.clone(), h, rand_u16());
            let pipe = SharedPipe::default();
            let stream = UtpStream { pipe: pipe.clone(), wake_task: self.wake.clone(), peer: from };
            if self.accept.try_send(stream).is_err() {
                return false;
            }
            self.conns.insert(key, Entry { conn, pipe, opening: None, stream: None });
            return true;
        }
        match self.conns.get_mut(&(from, h.connection_id)) {
            Some(e) => {
                e.conn.handle(now, Input::Packet(&p));
                true
            }
            None => {
                tracing::trace!(%from, id = h.connection_id, kind = ?h.kind, "uTP packet for no connection");
                false
            }
        }
    }
}

/// Moves bytes: the stream's written bytes into the connection, the connection's received
/// bytes into the stream's buffer (as far as it has room), and wakes whoever waits.
fn shuttle(now: Instant, e: &mut Entry) {
    // A stream dropped by its owner reads nothing more: what arrives is discarded, so the
    // peer's window stays open while our FIN goes out.
    let orphaned = Arc::strong_count(&e.pipe) == 1;
    let mut p = lock(&e.pipe);
    if orphaned {
        p.inbound.clear();
    }
    if !p.outbound.is_empty() && e.conn.state() == State::Connected {
        let (a, _) = p.outbound.as_slices();
        let n = e.conn.write(now, a);
        p.outbound.drain(..n);
        if n > 0 {
            if let Some(w) = p.writer.take() {
                w.wake();
            }
        }
    }
    if p.shut && p.outbound.is_empty() && e.conn.state() == State::Connected {
        e.conn.close(now);
    }
    let room = PIPE_BYTES.saturating_sub(p.inbound.len());
    if room > 0 && e.conn.read_into(now, &mut p.inbound, room) > 0 {
        if let Some(w) = p.reader.take() {
            w.wake();
        }
    }
    if e.conn.at_eof() && !p.eof {
        p.eof = true;
        if let Some(w) = p.reader.take() {
            w.wake();
        }
    }
}

/// A random 16-bit number (connection ids and first sequence numbers).
fn rand_u16() -> u16 {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn streams_carry_bytes_both_ways_over_loopback() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let server = UtpSocket::bind(any, Config::default()).await.unwrap();
        let client = UtpSocket::bind(any, Config::default()).await.unwrap();
        let data: Vec<u8> = (0..8_000_000u32).map(|i| (i * 7 + i / 1013) as u8).collect();
        let to = server.local_addr();
        let sent = data.clone();
        // The server echoes everything back, then closes.
        let echo = tokio::spawn(async move {
            let mut s = server.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0u8; 65536];
            while got.len() < sent.len() {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "early end at {}", got.len());
                got.extend_from_slice(&buf[..n]);
                s.write_all(&buf[..n]).await.unwrap();
            }
            s.shutdown().await.unwrap();
            s.flush().await.unwrap();
            // Keep the socket until the client has everything.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
            (got == sent, server)
        });
        let s = client.connect(to).await.unwrap();
        let (mut r, mut w) = tokio::io::split(s);
        let writer = {
            let data = data.clone();
            tokio::spawn(async move {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
                w
            })
        };
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        assert_eq!(back.len(), data.len());
        assert!(back == data, "the echo differs");
        let _w = writer.await.unwrap();
        let (server_ok, _server) = echo.await.unwrap();
        assert!(server_ok, "the server read other bytes");
    }

    #[tokio::test]
    async fn a_reader_far_behind_gets_every_byte_after_both_ends_closed() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let server = UtpSocket::bind(any, Config::default()).await.unwrap();
        let client = UtpSocket::bind(any, Config::default()).await.unwrap();
        let data: Vec<u8> = (0..1_800_000u32).map(|i| (i % 251) as u8).collect();
        let mut c = client.connect(server.local_addr()).await.unwrap();
        let mut s = server.accept().await.unwrap();
        // The client closes its side at once and reads nothing for a while; the server sends
        // more than one buffer holds and closes.
        c.shutdown().await.unwrap();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            s.write_all(&sent).await.unwrap();
            s.shutdown().await.unwrap();
            s
        });
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data);
        drop(writer.await.unwrap());
        // Dropping the socket fails its streams instead of leaving them waiting.
        let mut d = client.connect(server.local_addr()).await.unwrap();
        drop(client);
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), d.read(&mut buf)).await;
        assert!(matches!(r, Ok(Err(_))), "{r:?}");
    }

    #[tokio::test]
    async fn connecting_to_nobody_fails_and_garbage_is_dropped() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let config = Config {
            min_timeout: std::time::Duration::from_millis(50),
            max_retransmits: 2,
            ..Config::default()
        };
        let client = UtpSocket::bind(any, config).await.unwrap();
        // A UDP socket that never answers.
        let silent = std::net::UdpSocket::bind(any).unwrap();
        let err = client.connect(silent.local_addr().unwrap()).await.err().expect("no answer");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Garbage and packets for unknown connections are dropped; the socket still works.
        silent.send_to(b"not utp at all", client.local_addr()).unwrap();
        silent.send_to(&[0x21; 20], client.local_addr()).unwrap();
        let server = UtpSocket::bind(any, Config::default()).await.unwrap();
        let mut s = client.connect(server.local_addr()).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut a = server.accept().await.unwrap();
        let mut buf = [0u8; 4];
        a.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[tokio::test]
    async fn a_shared_port_passes_bencoded_datagrams_on_and_still_speaks_utp() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (server, mut others) = UtpSocket::bind_sharing(any, Config::default()).await.unwrap();
        let dht_peer = tokio::net::UdpSocket::bind(any).await.unwrap();
        // Datagrams from the other protocol come out as they were, with their sender.
        let query = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
        dht_peer.send_to(query, server.local_addr()).await.unwrap();
        let (got, from) = others.incoming.recv().await.unwrap();
        assert_eq!((got.as_slice(), from), (&query[..], dht_peer.local_addr().unwrap()));
        // Answers leave from the same port.
        others.socket.send_to(b"d1:y1:re", from).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, replier) = dht_peer.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], replier), (&b"d1:y1:re"[..], server.local_addr()));
        // uTP on the same port is untouched, and its packets are not passed on.
        let client = UtpSocket::bind(any, Config::default()).await.unwrap();
        let mut c = client.connect(server.local_addr()).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut s = server.accept().await.unwrap();
        let mut four = [0u8; 4];
        s.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"ping");
        assert!(others.incoming.try_recv().is_err(), "a uTP packet was passed on");
        // More than the queue holds, unread: the excess is dropped, the socket keeps working.
        for _ in 0..MAX_OTHERS_QUEUED + 50 {
            dht_peer.send_to(query, server.local_addr()).await.unwrap();
        }
        s.write_all(b"pong").await.unwrap();
        c.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"pong");
        // The receiver ends with the socket, after what was queued.
        drop(server);
        let mut queued = 0;
        let counting = async {
            while others.incoming.recv().await.is_some() {
                queued += 1;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), counting).await.unwrap();
        assert!((1..=MAX_OTHERS_QUEUED).contains(&queued), "{queued} queued");
    }

    #[tokio::test]
    async fn a_syn_flood_costs_a_bounded_table() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let server = UtpSocket::bind(any, Config::default()).await.unwrap();
        let flooder = tokio::net::UdpSocket::bind(any).await.unwrap();
        let syn = |id: u16| {
            let header = crate::packet::Header {
                kind: Kind::Syn,
                connection_id: id,
                timestamp_us: 0,
                timestamp_diff_us: 0,
                wnd_size: 65535,
                seq_nr: 1,
                ack_nr: 0,
                sack: None,
            };
            Packet { header, payload: &[] }.encode()
        };
        // Counts the connections accept hands out until none comes for 300 ms.
        let drain = || async {
            let mut n = 0;
            let wait = std::time::Duration::from_millis(300);
            while let Ok(Ok(_)) = tokio::time::timeout(wait, server.accept()).await {
                n += 1;
            }
            n
        };
        // 2,000 SYNs that never say more.
        for id in 0..2000u16 {
            flooder.send_to(&syn(id.wrapping_mul(2)), server.local_addr()).await.unwrap();
        }
        // (The application takes them as they come: the half-open ones are capped.)
        let first = drain().await;
        assert!((1..=MAX_HALF_OPEN).contains(&first), "{first} accepted");
        // More: still capped, as none of those said more than its SYN.
        for id in 2000..6000u16 {
            flooder.send_to(&syn(id.wrapping_mul(2)), server.local_addr()).await.unwrap();
            if id % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let total = first + drain().await;
        assert!(total <= MAX_HALF_OPEN, "{total} half-open connections were kept");
    }
}
