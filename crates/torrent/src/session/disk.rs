//! The torrent's disk thread: block writes and the final sync run here, off the async runtime,
//! in the order the torrent task queued them. A piece's verification is queued after its blocks,
//! so when the thread reaches it every block is written; the hashing itself then runs on the
//! runtime's blocking pool, so pieces are hashed on every core while the thread keeps writing.
//! At most one piece per core is hashed at once (each holds a piece-sized buffer): when hashing
//! falls behind, the thread waits, the write queue fills and the peers are slowed down, instead
//! of the blocking pool starting a thread and a buffer per piece (up to 512 threads).
//! The sync is queued only once every piece has verified, so no hashing is left by then.
//!
//! Hashing starts before that: the thread feeds each piece's SHA-1 with its blocks as it writes
//! them, while they run in order from the piece's start ([`Running`]), as libtorrent does. A
//! piece whose blocks all came in order is verified without reading it back; otherwise only the
//! bytes after the in-order run are read. Measured (1 GiB, swarmcast seed → swarmcast leecher,
//! loopback): reading pieces back for hashing was 22% of the leecher's CPU time.
//!
//! The queue is bounded in bytes: while more than [`MAX_QUEUED_WRITE_BYTES`] of blocks wait,
//! every connection of the torrent stops reading from its socket ([`DiskBacklog::wait`]), as
//! libtorrent does with `max_queued_disk_bytes`, so a slow disk slows the peers down instead of
//! filling memory. What can still arrive while reading is paused is what the connections had
//! already read into the torrent task's event channel.
//!
//! A failed write, read or sync is a local error: it is reported as [`Event::DiskFailed`] and
//! stops the torrent; it is never charged to the peer that sent the data.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
    let buffers = Arc::new(Mutex::new(Vec::new()));
    // One entry per piece written to and not yet verified: at most the torrent's piece count.
    let mut running: HashMap<u32, Running> = HashMap::new();
    let mut failed = false;
    for job in rx.iter().flatten() {
        let result = match job {
            DiskJob::Write { piece, offset, data } => {
                let r = if failed { Ok(()) } else { storage.write(piece, offset, &data) };
                if r.is_ok() && !failed {
                    Running::wrote(&mut running, piece, offset, &data);
                }
                let before = backlog.bytes.fetch_sub(data.len() as u64, Ordering::AcqRel);
                if before.saturating_sub(data.len() as u64) <= MAX_QUEUED_WRITE_BYTES {
                    backlog.drained.notify_waiters();
                }
                r.map(|()| None)
            }
            DiskJob::Verify { .. } | DiskJob::Sync if failed => continue,
            DiskJob::Verify { piece, blocks } => {
                // Block digests (to find a liar) need the whole piece read back.
                let run = running.remove(&piece).filter(|_| !blocks).unwrap_or_default();
                let size = storage.piece_size(piece);
                let (run, blocks) = if run.upto > 0 && run.upto == size {
                    // Every byte was hashed as it was written: nothing to read.
                    match storage.verify_rest(piece, run.hasher, size, &mut Vec::new()) {
                        Ok(true) => {
                            storage.write_behind(piece);
                            let event = Event::Verified { piece, ok: true, blocks: None };
                            if events.blocking_send(event).is_err() {
                                return;
                            }
                            continue;
                        }
                        // A failed piece is read back below, for its block digests.
                        _ => (Running::default(), true),
                    }
                } else {
                    (run, blocks)
                };
                // The semaphore is never closed.
                let Ok(permit) = runtime.block_on(hashers.clone().acquire_owned()) else {
                    return;
                };
                let (storage, events, buffers) = (storage.clone(), events.clone(), buffers.clone());
                runtime.spawn_blocking(move || {
                    let mut buf = buffers.lock().ok().and_then(|mut b| b.pop()).unwrap_or_default();
                    let event = verify(&storage, piece, blocks, run, &mut buf);
                    if let Ok(mut b) = buffers.lock() {
                        b.push(buf);
                    }
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

/// Hashes one piece, going on from `run` (its first bytes, hashed as they were written); with
/// `blocks`, or when the piece fails, reads it whole for each block's SHA-1 (to find a liar).
/// `buf` is scratch space.
fn verify(storage: &Storage, piece: u32, blocks: bool, run: Running, buf: &mut Vec<u8>) -> Event {
    let result = (|| {
        if !blocks && storage.verify_rest(piece, run.hasher, run.upto, buf)? {
            return Ok::<_, std::io::Error>(Event::Verified { piece, ok: true, blocks: None });
        }
        let ok = storage.verify(piece, buf)?;
        let digests = buf.chunks(BLOCK_SIZE as usize).map(|b| Sha1::digest(b).into()).collect();
        Ok(Event::Verified { piece, ok, blocks: Some(digests) })
    })();
    if let Ok(Event::Verified { ok: true, .. }) = &result {
        storage.write_behind(piece);
    }
    result.unwrap_or_else(|e| Event::DiskFailed(e.to_string()))
}

/// A piece's SHA-1 over its first `upto` bytes, fed with the blocks written in order from its
/// start.
#[derive(Default)]
struct Running {
    hasher: Sha1,
    upto: u32,
}

impl Running {
    /// Feeds `data`, just written at `offset` of `piece`, to the piece's running hash if it
    /// continues the in-order run. A block after a gap leaves the run where it is (the bytes
    /// from there are read back when the piece is verified); a block rewriting bytes already
    /// hashed drops the run, so the hash is always of the bytes on disk.
    fn wrote(running: &mut HashMap<u32, Running>, piece: u32, offset: u32, data: &[u8]) {
        let run = running.entry(piece).or_default();
        if offset == run.upto {
            run.hasher.update(data);
            run.upto += data.len() as u32;
        } else if offset < run.upto {
            running.remove(&piece);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::tests::info_for;
    use crate::storage::Mode;

    const PIECE: u32 = 4 * BLOCK_SIZE;

    /// Writes each `(piece, block, bytes)` in the order given, then verifies `piece` (asking for
    /// block digests with `blocks`) and returns what the disk thread reported.
    async fn write_then_verify(
        writes: &[(u32, u32, Vec<u8>)],
        piece: u32,
        blocks: bool,
    ) -> (bool, Option<Vec<[u8; 20]>>) {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3 * PIECE).map(|i| (i * 7 + i / 251) as u8).collect();
        let (info, _) = info_for(&[("f.bin", &data)], PIECE);
        let storage = Arc::new(Storage::open(&info, dir.path(), Mode::ReadWrite).unwrap());
        let (tx, mut rx) = mpsc::channel(16);
        let mut queue = DiskQueue::start(storage, tx).unwrap();
        for (p, block, bytes) in writes {
            let data = Bytes::copy_from_slice(bytes);
            queue.push(DiskJob::Write { piece: *p, offset: block * BLOCK_SIZE, data });
        }
        queue.push(DiskJob::Verify { piece, blocks });
        queue.flush();
        match rx.recv().await {
            Some(Event::Verified { piece: p, ok, blocks }) if p == piece => (ok, blocks),
            _ => panic!("expected the verdict on piece {piece}"),
        }
    }

    /// The torrent's bytes of `block` in `piece` (as `write_then_verify` makes them).
    fn good(piece: u32, block: u32) -> Vec<u8> {
        let start = piece * PIECE + block * BLOCK_SIZE;
        (start..start + BLOCK_SIZE).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn whole(piece: u32, order: &[u32]) -> Vec<(u32, u32, Vec<u8>)> {
        order.iter().map(|&b| (piece, b, good(piece, b))).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_piece_verifies_whatever_order_its_blocks_were_written_in() {
        for order in [[0, 1, 2, 3], [1, 0, 3, 2], [3, 2, 1, 0], [0, 2, 1, 3]] {
            assert_eq!(
                write_then_verify(&whole(1, &order), 1, false).await,
                (true, None),
                "{order:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_block_rewritten_after_it_was_hashed_is_judged_by_the_bytes_on_disk() {
        // Good bytes hashed in order, then block 1 overwritten with garbage: the piece fails.
        let mut writes = whole(2, &[0, 1, 2, 3]);
        writes.push((2, 1, vec![0xAB; BLOCK_SIZE as usize]));
        let (ok, digests) = write_then_verify(&writes, 2, false).await;
        assert!(!ok);
        let digests = digests.expect("a failed piece comes with its block digests");
        assert_eq!(digests[1], <[u8; 20]>::from(Sha1::digest([0xAB; BLOCK_SIZE as usize])));
        assert_eq!(digests[0], <[u8; 20]>::from(Sha1::digest(good(2, 0))));

        // Garbage first, then the good bytes over it: the piece passes.
        let mut writes = vec![(0, 0, vec![0xCD; BLOCK_SIZE as usize])];
        writes.extend(whole(0, &[1, 2, 3, 0]));
        assert_eq!(write_then_verify(&writes, 0, false).await, (true, None));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn block_digests_come_with_a_failed_piece_and_when_asked_for() {
        let mut writes = whole(1, &[0, 1, 2, 3]);
        writes[2].2[5] ^= 1;
        let (ok, digests) = write_then_verify(&writes, 1, false).await;
        assert!(!ok);
        let want: Vec<[u8; 20]> = writes.iter().map(|w| Sha1::digest(&w.2).into()).collect();
        assert_eq!(digests, Some(want.clone()));

        let (ok, digests) = write_then_verify(&whole(1, &[0, 1, 2, 3]), 1, true).await;
        assert!(ok);
        let want: Vec<[u8; 20]> = (0..4).map(|b| Sha1::digest(good(1, b)).into()).collect();
        assert_eq!(digests, Some(want));
    }
}
