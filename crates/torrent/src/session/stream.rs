//! A peer connection's transport: TCP or uTP (BEP 29). Both carry the same BitTorrent bytes;
//! this enum lets the handshake and the connection's reader and writer tasks run over either.
//! The TCP side is the kernel's socket halves as before (no lock between them); the uTP side is
//! a [`utp::driver::UtpStream`] split with `tokio::io::split`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use utp::driver::UtpStream;

/// A connection to a peer.
pub enum PeerStream {
    Tcp(TcpStream),
    Utp(UtpStream),
}

/// Its receiving side.
pub enum PeerReadHalf {
    Tcp(OwnedReadHalf),
    Utp(tokio::io::ReadHalf<UtpStream>),
}

/// Its sending side.
pub enum PeerWriteHalf {
    Tcp(OwnedWriteHalf),
    Utp(tokio::io::WriteHalf<UtpStream>),
}

impl PeerStream {
    /// TCP: send small writes at once (no Nagle). uTP has its own rule (a partial packet
    /// waits while others are in flight, `utp::conn`).
    pub fn set_nodelay(&self) -> io::Result<()> {
        match self {
            PeerStream::Tcp(s) => s.set_nodelay(true),
            PeerStream::Utp(_) => Ok(()),
        }
    }

    /// "TCP" or "uTP", for logs and statistics.
    pub fn transport(&self) -> &'static str {
        match self {
            PeerStream::Tcp(_) => "TCP",
            PeerStream::Utp(_) => "uTP",
        }
    }

    pub fn into_split(self) -> (PeerReadHalf, PeerWriteHalf) {
        match self {
            PeerStream::Tcp(s) => {
                let (r, w) = s.into_split();
                (PeerReadHalf::Tcp(r), PeerWriteHalf::Tcp(w))
            }
            PeerStream::Utp(s) => {
                let (r, w) = tokio::io::split(s);
                (PeerReadHalf::Utp(r), PeerWriteHalf::Utp(w))
            }
        }
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            PeerStream::Utp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Tcp(s) => Pin::new(s).poll_write(cx, b),
            PeerStream::Utp(s) => Pin::new(s).poll_write(cx, b),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            PeerStream::Utp(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            PeerStream::Utp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for PeerReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerReadHalf::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            PeerReadHalf::Utp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerWriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerWriteHalf::Tcp(s) => Pin::new(s).poll_write(cx, b),
            PeerWriteHalf::Utp(s) => Pin::new(s).poll_write(cx, b),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerWriteHalf::Tcp(s) => Pin::new(s).poll_flush(cx),
            PeerWriteHalf::Utp(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerWriteHalf::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            PeerWriteHalf::Utp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
