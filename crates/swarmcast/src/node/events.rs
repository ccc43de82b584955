//! The node's event stream, `GET /api/v1/events` (Server-Sent Events). Each event has an
//! increasing id; the last [`KEEP`] are kept, so a client that reconnects with `Last-Event-ID`
//! gets what it missed. A client that missed more than that gets a `reset` event first (fetch
//! the whole state again), then the new events. Events are JSON:
//! - `{"type":"torrent","torrent":{…}}`: a torrent was added or changed (as in the list);
//! - `{"type":"removed","id":"…"}`: a torrent was removed;
//! - `{"type":"reset"}`: events were lost; reload the state.
//!
//! What feeds it: [`diff`] compares the torrent list every [`TICK`] with the last one sent, so a
//! change reaches clients within one tick.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::sync::{mpsc, watch};

use super::TorrentView;

/// Events kept for clients that reconnect.
pub const KEEP: usize = 4096;
/// How often the torrent list is compared with what was sent.
pub const TICK: Duration = Duration::from_millis(200);
/// A comment sent to an idle stream, so a client that went away is noticed.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Event streams open at once; more are refused (503).
pub const MAX_STREAMS: usize = 32;

/// The kept events and the newest id.
pub struct Events {
    log: Mutex<VecDeque<(u64, String)>>,
    newest: watch::Sender<u64>,
    streams: std::sync::atomic::AtomicUsize,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            log: Mutex::new(VecDeque::new()),
            newest: watch::channel(0).0,
            streams: Default::default(),
        }
    }
}

impl Events {
    fn log(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, String)>> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an event (JSON) and wakes the streams.
    pub fn push(&self, json: String) {
        let id = {
            let mut log = self.log();
            let id = log.back().map_or(1, |(id, _)| id + 1);
            log.push_back((id, json));
            while log.len() > KEEP {
                log.pop_front();
            }
            id
        };
        self.newest.send_replace(id);
    }

    /// The events after `after`, and whether some between were dropped.
    fn since(&self, after: u64) -> (Vec<(u64, String)>, bool) {
        let log = self.log();
        let oldest = log.front().map_or(u64::MAX, |(id, _)| *id);
        let lost = after + 1 < oldest && log.back().is_some_and(|(id, _)| *id > after);
        (log.iter().filter(|(id, _)| *id > after).cloned().collect(), lost)
    }

    /// The id of the newest event (0: none yet).
    pub fn newest(&self) -> u64 {
        *self.newest.borrow()
    }

    /// A stream of the events after `after` (`None`: from now on), or `None` when
    /// [`MAX_STREAMS`] are open.
    pub fn subscribe(self: &std::sync::Arc<Self>, after: Option<u64>) -> Option<SseBody> {
        use std::sync::atomic::Ordering;
        if self.streams.fetch_add(1, Ordering::AcqRel) >= MAX_STREAMS {
            self.streams.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let (tx, rx) = mpsc::channel(16);
        let events = self.clone();
        let mut newest = self.newest.subscribe();
        let mut at = after.unwrap_or_else(|| self.newest());
        tokio::spawn(async move {
            // Tells the browser to retry after 1 s if the stream breaks.
            let mut ok = tx.send(Bytes::from_static(b"retry: 1000\n\n")).await.is_ok();
            while ok {
                let (batch, lost) = events.since(at);
                if lost {
                    let reset = format!("id: {at}\ndata: {{\"type\":\"reset\"}}\n\n");
                    ok = tx.send(Bytes::from(reset)).await.is_ok();
                }
                for (id, json) in batch {
                    if !ok {
                        break;
                    }
                    ok = tx.send(Bytes::from(format!("id: {id}\ndata: {json}\n\n"))).await.is_ok();
                    at = id;
                }
                if !ok {
                    break;
                }
                tokio::select! {
                    changed = newest.changed() => if changed.is_err() { break },
                    _ = tokio::time::sleep(KEEPALIVE) => {
                        ok = tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_ok();
                    }
                    _ = tx.closed() => break,
                }
            }
            events.streams.fetch_sub(1, Ordering::AcqRel);
        });
        Some(SseBody { rx })
    }
}

/// A response body fed by the stream's task; it ends when the task does.
pub struct SseBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// The events that take the clients from the list `sent` to `now`; updates `sent`.
pub fn diff(sent: &mut BTreeMap<String, String>, now: &[TorrentView]) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for t in now {
        seen.insert(t.id.clone());
        let json = serde_json::to_string(t).unwrap_or_default();
        if sent.get(&t.id) != Some(&json) {
            out.push(format!("{{\"type\":\"torrent\",\"torrent\":{json}}}"));
            sent.insert(t.id.clone(), json);
        }
    }
    let gone: Vec<String> = sent.keys().filter(|id| !seen.contains(*id)).cloned().collect();
    for id in gone {
        sent.remove(&id);
        out.push(serde_json::json!({ "type": "removed", "id": id }).to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_what_it_missed_or_a_reset_when_too_much_was_dropped() {
        let e = Events::default();
        assert_eq!(e.since(0), (vec![], false));
        for i in 0..3 {
            e.push(format!("{i}"));
        }
        assert_eq!(e.newest(), 3);
        let (got, lost) = e.since(1);
        assert_eq!(got, vec![(2, "1".to_string()), (3, "2".to_string())]);
        assert!(!lost);
        for i in 0..KEEP {
            e.push(format!("{i}"));
        }
        let (got, lost) = e.since(1);
        assert!(lost, "events 2 and 3 are gone");
        assert_eq!(got.len(), KEEP);
        assert_eq!(got[0].0, 4, "the oldest kept");
        let (got, lost) = e.since(e.newest());
        assert!(got.is_empty() && !lost);
    }
}
