//! The torrent's disk thread: block writes and the final sync run here, off the async runtime,
//! in the order the torrent task queued them. A piece's verification is queued after its blocks,
//! so when the thread reaches it every block is written; the hashing itself then runs on the
//! runtime's blocking pool, so pieces are hashed on every core while the thread keeps writing.
//! At most one piece per core is hashed at once (each holds a piece-sized buffer): when hashing
//! falls behind, the thread waits, the write queue fills and the peers are slowed down, instead
//! of the blocking pool starting a thread and a buffer per piece (up to 512 threads).
//! The sync is queued only once every piece has verified, so no hashing is left by then.
//!
//! The queue is bounded in bytes: while more than [`MAX_QUEUED_WRITE_BYTES`] of blocks wait,
//! every connection of the torrent stops reading from its socket ([`DiskBacklog::wait`]), as
//! libtorrent does with `max_queued_disk_bytes`, so a slow disk slows the peers down instead of
//! filling memory. What can still arrive while reading is paused is what the connections had
//! already read into the torrent task's event channel.
//!
//! A failed write, read or sync is a local error: it is reported as [`Event::DiskFailed`] and
//! stops the torrent; it is never charged to the peer that sent the data.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use sha1::{Digest, Sha1};
use tokio::sync::{mpsc, Notify, Semaphore};

use super::Event;
use crate::proto::BLOCK_SIZE;
use crate::storage::Storage;

/// Block bytes queued for writing beyond which connections stop reading. Measured, 1 GiB from a
/// swarmcast seed on loopback, page cache dropped: the leecher's peak RSS was 52-56 MiB with
/// 16 MiB, 27.5-28 MiB with 4 MiB, and the time the same (2.2 s). libtorrent's
/// `max_queued_disk_bytes` defaults to 1 MiB.
pub const MAX_QUEUED_WRITE_BYTES: u64 = 4 << 20;

/// Work for the disk thread.
pub enum DiskJob {
    Write {
        piece: u32,
        offset: u32,
        data: Bytes,
    },
    /// Hash the piece; with `blocks`, also each block's SHA-1 (to find a liar).
    Verify {
        piece: u32,
        blocks: bool,
    },
    /// Flush everything written to stable storage.
    Sync,
}

/// Bytes waiting to be written, shared with every connection's reader.
#[derive(Default)]
pub struct DiskBacklog {
    bytes: AtomicU64,
    drained: Notify,
}

impl DiskBacklog {
    /// Waits while the write queue is over its bound.
    pub async fn wait(&self) {
        loop {
            let drained = self.drained.notified();
            if self.bytes.load(Ordering::Acquire) <= MAX_QUEUED_WRITE_BYTES {
                return;
            }
            drained.await;
        }
    }

    /// Bytes queued now.
    pub fn queued(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }
}

/// The sending side of the disk thread's queue. Jobs are gathered and handed over in one batch
/// per turn of the torrent task ([`DiskQueue::flush`]): one wake-up of the thread, not one a block.
pub struct DiskQueue {
    tx: std::sync::mpsc::Sender<Vec<DiskJob>>,
    pending: Vec<DiskJob>,
    backlog: Arc<DiskBacklog>,
}

impl DiskQueue {
    /// Starts the disk thread for `storage`; results go to `events`.
    /// Must be called from within the tokio runtime (verification uses its blocking pool).
    pub fn start(storage: Arc<Storage>, events: mpsc::Sender<Event>) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let backlog = Arc::new(DiskBacklog::default());
        let shared = backlog.clone();
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("swarmcast-disk".into())
            .spawn(move || run(storage, rx, events, shared, runtime))?;
        Ok(DiskQueue { tx, pending: Vec::new(), backlog })
    }

    /// The backlog the connections watch.
    pub fn backlog(&self) -> &Arc<DiskBacklog> {
        &self.backlog
    }

    /// Queues a job for the next [`DiskQueue::flush`] (never blocks; the byte bound is kept by
    /// the readers pausing).
    pub fn push(&mut self, job: DiskJob) {
        if let DiskJob::Write { data, .. } = &job {
            self.backlog.bytes.fetch_add(data.len() as u64, Ordering::AcqRel);
        }
        self.pending.push(job);
    }

    /// Hands the queued jobs to the disk thread.
    pub fn flush(&mut self) {
        if !self.pending.is_empty() {
            // The thread only exits once this sender is gone, so sending cannot fail while we
            // live.
            let _ = self.tx.send(std::mem::take(&mut self.pending));
        }
    }
}

fn run(
    storage: Arc<Storage>,
    rx: std::sync::mpsc::Receiver<Vec<DiskJob>>,
    events: mpsc::Sender<Event>,
    backlog: Arc<DiskBacklog>,
    runtime: tokio::runtime::Handle,
) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let hashers = Arc::new(Semaphore::new(cores));
    let mut failed = false;
    for job in rx.iter().flatten() {
        let result = match job {
            DiskJob::Write { piece, offset, data } => {
                let r = if failed { Ok(()) } else { storage.write(piece, offset, &data) };
                let before = backlog.bytes.fetch_sub(data.len() as u64, Ordering::AcqRel);
                if before.saturating_sub(data.len() as u64) <= MAX_QUEUED_WRITE_BYTES {
                    backlog.drained.notify_waiters();
                }
                r.map(|()| None)
            }
            DiskJob::Verify { .. } | DiskJob::Sync if failed => continue,
            DiskJob::Verify { piece, blocks } => {
                // The semaphore is never closed.
                let Ok(permit) = runtime.block_on(hashers.clone().acquire_owned()) else {
                    return;
                };
                let (storage, events) = (storage.clone(), events.clone());
                runtime.spawn_blocking(move || {
                    let event = verify(&storage, piece, blocks);
                    drop(permit);
                    let _ = events.blocking_send(event);
                });
                continue;
            }
            DiskJob::Sync => storage.sync().map(|()| Some(Event::Synced)),
        };
        let event = match result {
            Ok(None) => continue,
            Ok(Some(ev)) => ev,
            Err(e) => {
                if failed {
                    continue;
                }
                // Report the first failure only; later jobs are skipped (the torrent stops).
                failed = true;
                Event::DiskFailed(e.to_string())
            }
        };
        if events.blocking_send(event).is_err() {
            return;
        }
    }
}

/// Hashes one piece (and, when asked or when it failed, each of its blocks).
fn verify(storage: &Storage, piece: u32, blocks: bool) -> Event {
    let mut buf = Vec::new();
    match storage.verify(piece, &mut buf) {
        Ok(ok) => {
            let digests = (blocks || !ok)
                .then(|| buf.chunks(BLOCK_SIZE as usize).map(|b| Sha1::digest(b).into()).collect());
            Event::Verified { piece, ok, blocks: digests }
        }
        Err(e) => Event::DiskFailed(e.to_string()),
    }
}
