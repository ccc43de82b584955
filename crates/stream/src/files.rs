//! Files of a content directory, served safely: [`resolve_path`] maps a request path onto a
//! regular file under the (canonical) root, and [`OriginBody`] streams a byte window of an open
//! file, a small buffer, or chunks a task sends (a torrent file read while it downloads) as a
//! response body. The origin ([`crate::origin`]) and the web
//! player's routes ([`crate::web`]) both serve through it; it uses neither.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::io::{AsyncRead, ReadBuf};

use crate::request_path::RequestPath;

/// Bytes read from a file per body frame.
const CHUNK: usize = 64 * 1024;

/// A response body: a fixed buffer or a byte window of an open file, read in chunks.
pub enum OriginBody {
    /// In-memory bodies (errors, empty HEAD answers, small files read whole).
    Bytes(Option<Bytes>),
    /// `remaining` bytes of `file` from its current position.
    File { file: tokio::fs::File, remaining: u64, buf: Vec<u8> },
    /// `remaining` bytes that a task produces into a channel (a torrent's file read while it
    /// downloads); the body ends with an error if the channel closes early.
    Channel { rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>, remaining: u64 },
}

impl OriginBody {
    /// A body of `len` bytes sent into the returned channel's sender, at most `depth` chunks
    /// ahead of the client.
    pub fn channel(len: u64, depth: usize) -> (tokio::sync::mpsc::Sender<io::Result<Bytes>>, Self) {
        let (tx, rx) = tokio::sync::mpsc::channel(depth.max(1));
        (tx, OriginBody::Channel { rx, remaining: len })
    }

    pub(crate) fn empty() -> OriginBody {
        OriginBody::Bytes(None)
    }
    fn text(s: &'static str) -> OriginBody {
        OriginBody::Bytes(Some(Bytes::from_static(s.as_bytes())))
    }
}

impl From<&'static str> for OriginBody {
    fn from(text: &'static str) -> OriginBody {
        if text.is_empty() {
            OriginBody::empty()
        } else {
            OriginBody::text(text)
        }
    }
}

impl Body for OriginBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            OriginBody::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            OriginBody::File { file, remaining, buf } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let want = (*remaining).min(CHUNK as u64) as usize;
                buf.resize(want, 0);
                let mut read_buf = ReadBuf::new(&mut buf[..want]);
                match Pin::new(file).poll_read(cx, &mut read_buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                    Poll::Ready(Ok(())) => {
                        let n = read_buf.filled().len();
                        if n == 0 {
                            // The file shrank under us: end the body with an error so the
                            // client sees a short response, not a hang.
                            *remaining = 0;
                            return Poll::Ready(Some(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "file shrank while being served",
                            ))));
                        }
                        *remaining -= n as u64;
                        Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(&buf[..n])))))
                    }
                }
            }
            OriginBody::Channel { rx, remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                match rx.poll_recv(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Some(Ok(b))) => {
                        // Never more than announced: the length is in the headers already.
                        let b = b.slice(..b.len().min(*remaining as usize));
                        *remaining -= b.len() as u64;
                        Poll::Ready(Some(Ok(Frame::data(b))))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        *remaining = 0;
                        Poll::Ready(Some(Err(e)))
                    }
                    Poll::Ready(None) => {
                        *remaining = 0;
                        Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the body's source stopped early",
                        ))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            OriginBody::Bytes(b) => b.is_none(),
            OriginBody::File { remaining, .. } | OriginBody::Channel { remaining, .. } => {
                *remaining == 0
            }
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            OriginBody::Bytes(b) => {
                hyper::body::SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            OriginBody::File { remaining, .. } | OriginBody::Channel { remaining, .. } => {
                hyper::body::SizeHint::with_exact(*remaining)
            }
        }
    }
}

/// Maps a request path onto a file under `root` (canonical), or `None` (→ 404) if it names
/// nothing or something other than a regular file. Nothing outside `root` is ever opened: the
/// path's segments are plain ([`RequestPath`]) and the decision is made on canonical paths
/// before any read.
pub async fn resolve_path(root: &Path, path: &RequestPath) -> Option<PathBuf> {
    let (root, path) = (root.to_owned(), path.clone());
    // One trip to the blocking pool for all its system calls.
    tokio::task::spawn_blocking(move || resolve_path_blocking(&root, &path)).await.ok()?
}

/// [`resolve_path`] for a caller already off the async runtime.
pub fn resolve_path_blocking(root: &Path, path: &RequestPath) -> Option<PathBuf> {
    let relative: PathBuf = path.segments().collect();
    let canonical = std::fs::canonicalize(root.join(&relative)).ok()?;
    if !canonical.starts_with(root) {
        return None;
    }
    let meta = std::fs::metadata(&canonical).ok()?;
    meta.is_file().then_some(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unsafe_paths_resolve_to_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = tokio::fs::canonicalize(dir.path()).await.unwrap();
        std::fs::create_dir(root.join("m")).unwrap();
        std::fs::write(root.join("m/a.m4s"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
        let resolve = |raw: &'static str| {
            let root = root.clone();
            async move {
                let path = RequestPath::parse(raw).ok()?;
                resolve_path(&root, &path).await
            }
        };
        assert_eq!(resolve("/m/a.m4s").await, Some(root.join("m/a.m4s")));
        assert_eq!(resolve("//m//a.m4s").await, Some(root.join("m/a.m4s")));
        assert_eq!(resolve("/m/%61.m4s").await, Some(root.join("m/a.m4s")));
        for bad in [
            "/",
            "/m",
            "/../etc/passwd",
            "/m/../m/a.m4s",
            "/%2e%2e/etc/passwd",
            "/%2E%2E%2fetc%2fpasswd",
            "/m/..%5c..%5cetc",
            "/m\\a.m4s",
            "/./m/a.m4s",
            "/C:/x",
            "/%00",
            "/%ff",
            "/nope",
            "/out/passwd",
        ] {
            assert_eq!(resolve(bad).await, None, "{bad}");
        }
    }
}
