//! Search records in the DHT's keyword index (issue 14's structured search): a node that
//! shares files puts each file's signed search record under every keyword of its name, and
//! `swarmcast search --mode dht` gets the entries of each query word and keeps the records
//! that name every word.
//!
//! An entry is a BEP 44 mutable item signed by the publisher's node key: `k` the key, `salt`
//! the info-hash (one entry per publisher and file), `seq` the Unix second it was signed, or
//! one more than the last if the clock stepped back (a newer one replaces it), `v` the record itself in its canonical postcard encoding (well
//! under BEP 44's 1,000 bytes: a name is at most 255). The DHT nodes check the entry's
//! signature; the searcher checks the record too (signature, expiry, size caps) and that the
//! entry's key and salt are the record's publisher and info-hash, so no entry can speak for a
//! record it does not carry.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use dht::proto::core::{index_target, MutableItem};
use dht::proto::krpc::Value;
use dht::Dht;
use overlay::chat::inert::inert;
use overlay::chat::ChatEvent;
use overlay::identity::Identity;
use overlay::proto::search::{self, Record};
use tokio::sync::mpsc;

/// How long a published record is valid; entries are put again when a third of it is left
/// (the DHT drops an entry two hours after its last put).
pub const LIFETIME: Duration = Duration::from_secs(3600);

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The keyword index entry of `record` with sequence number `seq` (newer replaces older),
/// signed by `identity` (its publisher).
pub fn entry(identity: &Identity, record: &Record, seq: i64) -> Result<MutableItem> {
    let bytes = postcard::to_allocvec(record).context("encoding a search record")?;
    let value = Value::Bytes(bytes);
    let salt = record.info_hash.to_vec();
    let sig = identity.sign(&MutableItem::signed_bytes(&salt, seq, &value));
    Ok(MutableItem { key: identity.id().0, salt, seq, value, sig })
}

/// The record an entry carries, if it checks out at Unix time `now`.
pub fn record_of(item: &MutableItem, now: u64) -> Result<Record> {
    let Value::Bytes(bytes) = &item.value else { bail!("an index entry that is not bytes") };
    let record: Record = overlay::wire::from_canonical(bytes).context("not a search record")?;
    record.check(now).context("a search record that does not check out")?;
    if record.publisher.0 != item.key || record.info_hash[..] != item.salt[..] {
        bail!("an index entry whose key or salt is not its record's publisher and info-hash");
    }
    Ok(record)
}

/// Files published at once (each under all its keywords at once).
const PUBLISH_AT_ONCE: usize = 4;

/// Puts the records of `files` (signed by `identity`) under each keyword of their names (a
/// file's keywords at once, [`PUBLISH_AT_ONCE`] files at once), and announces each torrent on
/// `port`, in rounds a third of [`LIFETIME`] apart, until the task is aborted. Within a round,
/// files no DHT node took (the node has not joined yet) are tried again after 2 s, the wait
/// doubling, until the next round is due.
pub fn keep_publishing(
    node: Arc<Dht>,
    identity: Identity,
    files: Vec<overlay::chat::SharedFile>,
    port: u16,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let files: Vec<Arc<overlay::chat::SharedFile>> = files.into_iter().map(Arc::new).collect();
        // Each file's last seq (its entries' salt is its info-hash, so seqs are per file).
        let mut seqs = vec![0i64; files.len()];
        loop {
            let next_round = tokio::time::Instant::now() + LIFETIME / 3;
            let mut todo: Vec<usize> = (0..files.len()).collect();
            let mut retry = Duration::from_secs(2);
            loop {
                let mut missed = Vec::new();
                let mut running = tokio::task::JoinSet::<Option<(usize, bool)>>::new();
                for (n, &i) in todo.iter().enumerate() {
                    if n >= PUBLISH_AT_ONCE {
                        match running.join_next().await {
                            Some(Ok(Some((i, done)))) => missed.extend((!done).then_some(i)),
                            _ => return,
                        }
                    }
                    // The signing second; one more than the last if the clock stepped back.
                    let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
                    seqs[i] = now.max(seqs[i].saturating_add(1));
                    let (node, identity, f, seq) =
                        (node.clone(), identity.clone(), files[i].clone(), seqs[i]);
                    running.spawn(async move {
                        publish(&node, &identity, &f, seq, port).await.map(|done| (i, done))
                    });
                }
                while let Some(r) = running.join_next().await {
                    match r {
                        Ok(Some((i, done))) => missed.extend((!done).then_some(i)),
                        _ => return,
                    }
                }
                if missed.is_empty() {
                    break;
                }
                if tokio::time::Instant::now() + retry >= next_round {
                    eprintln!(
                        "DHT: no node took the index entries of {} files; trying again later",
                        missed.len()
                    );
                    break;
                }
                tokio::time::sleep(retry).await;
                retry *= 2;
                todo = missed;
            }
            tokio::time::sleep_until(next_round).await;
        }
    })
}

/// Puts one file's record under each keyword of its name (at once) and announces its torrent:
/// whether that is done (false: no node took an entry, to try again), `None` once the DHT node
/// stopped.
async fn publish(
    node: &Arc<Dht>,
    identity: &Identity,
    f: &overlay::chat::SharedFile,
    seq: i64,
    port: u16,
) -> Option<bool> {
    let expires = unix_now() + LIFETIME.as_secs();
    let (name, size, hash) = (f.name.clone(), f.size, f.info_hash);
    let record = Record::signed(identity, name, size, hash, f.peers.clone(), expires);
    let item = match entry(identity, &record, seq) {
        Ok(item) => item,
        Err(e) => {
            // Not one to retry.
            eprintln!("DHT: cannot publish {}: {e:#}", f.name);
            return Some(true);
        }
    };
    // A name with no word of two letters has nothing to put it under: announced only, and
    // done.
    let words = search::keywords(&f.name);
    let nothing_to_put = words.is_empty();
    let mut puts = tokio::task::JoinSet::new();
    for word in words {
        let (node, item) = (node.clone(), item.clone());
        puts.spawn(async move { node.index_put(index_target(&word), item).await });
    }
    let mut stored = 0;
    while let Some(r) = puts.join_next().await {
        stored += r.ok()?.ok()?.announced_to;
    }
    node.announce(dht::NodeId(hash), port, true).await.ok()?;
    tracing::info!("DHT: {} published ({stored} index entries stored)", f.name);
    Some(nothing_to_put || stored > 0)
}

/// The records under every word of `words` in the index that name them all, one per
/// publisher and file, each with the hops of the lookup that found it first: sent to `results`
/// as each word's lookup ends. Returns how many entries were refused (forged, expired, or not
/// the record they claim); stops early once `results` is closed.
pub async fn find(
    node: Arc<Dht>,
    words: &[String],
    results: mpsc::Sender<(Record, u8)>,
) -> Result<usize> {
    let mut lookups = tokio::task::JoinSet::new();
    for w in words {
        let (node, target) = (node.clone(), index_target(w));
        lookups.spawn(async move { node.index_get(target).await });
    }
    let now = unix_now();
    // A lookup brings at most `dht::proto::core::MAX_LOOKUP_ITEMS` entries, so this set is
    // bounded by that many per word.
    let mut sent = std::collections::BTreeSet::new();
    let mut refused = 0;
    while let Some(r) = lookups.join_next().await {
        let r = r.context("a lookup task failed")?;
        let r = r.map_err(|_| anyhow::anyhow!("the DHT node stopped"))?;
        for item in &r.items {
            match record_of(item, now) {
                Ok(rec) if search::matches_words(&rec.name, words) => {
                    if sent.insert((rec.publisher, rec.info_hash))
                        && results.send((rec, r.first_hops.unwrap_or(1))).await.is_err()
                    {
                        return Ok(refused);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!("refused an index entry: {e:#}");
                    refused += 1;
                }
            }
        }
    }
    Ok(refused)
}

/// How long a chat front end's DHT search runs at most.
pub const SEARCH_TIMEOUT: Duration = Duration::from_secs(30);

/// A DHT keyword search for the chat front ends (`/search --dht WORDS`), reported as the
/// overlay's searches are: an `Info` naming it, a `Found` for each record as each word's lookup
/// ends, then `SearchDone`. Stops when `events` closes.
pub fn spawn_search(node: Arc<Dht>, text: String, events: mpsc::Sender<ChatEvent>) {
    tokio::spawn(async move {
        let id: u64 = rand::random();
        let words = search::keywords(&text);
        let text = format!("search {id:016x} (DHT): {}", inert(&text));
        if events.send(ChatEvent::Info { text }).await.is_err() {
            return;
        }
        let (tx, mut rx) = mpsc::channel(64);
        let lookup = tokio::spawn(async move {
            tokio::time::timeout(SEARCH_TIMEOUT, find(node, &words, tx)).await
        });
        let mut results = 0;
        while let Some((record, hops)) = rx.recv().await {
            results += 1;
            if events.send(ChatEvent::found(id, record, hops)).await.is_err() {
                lookup.abort();
                return;
            }
        }
        let problem = match lookup.await {
            Ok(Ok(Ok(_))) => None,
            Ok(Ok(Err(e))) => Some(format!("DHT search {id:016x}: {e:#}")),
            Ok(Err(_)) => Some(format!("DHT search {id:016x} stopped after {SEARCH_TIMEOUT:?}")),
            Err(e) => Some(format!("DHT search {id:016x} failed: {e}")),
        };
        if let Some(text) = problem {
            let _ = events.send(ChatEvent::Error { text }).await;
        }
        let _ = events.send(ChatEvent::SearchDone { search: id, results }).await;
    });
}

/// DHT contacts learned through the overlay: joins through `anchors` as a short-lived node
/// (a fresh key), asks each neighbour where its DHT node listens (`Sync::DhtAsk`), and returns
/// the first addresses named on the neighbour's own IP address (claims to try).
pub async fn contacts_via_overlay(
    anchors: &[String],
    listen: std::net::SocketAddr,
    timeout: Duration,
) -> Result<Vec<std::net::SocketAddr>> {
    use overlay::chat::envelope::{dht_contacts_from, Sync};
    use overlay::driver::{Driver, Event};
    let anchors = crate::anchors::resolve(anchors).await?;
    let identity = Identity::generate(&mut rand::rng());
    let endpoint = overlay::transport::Endpoint::bind(&identity, listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    let advertise = endpoint.local_addr()?;
    let mut driver = Driver::start(endpoint, advertise, Default::default(), anchors, Vec::new());
    let ask = postcard::to_allocvec(&Sync::DhtAsk).context("encoding a DHT question")?;
    let mut asked = std::collections::BTreeSet::new();
    let found = tokio::time::timeout(timeout, async {
        loop {
            match driver.next_event().await {
                Event::NeighborUp(peer) if driver.direct(peer, ask.clone()).is_ok() => {
                    asked.insert(peer);
                }
                Event::Direct { from, payload } => {
                    // Neighbours also send catch-up requests and their own questions: only an
                    // answer from one we asked counts, once.
                    let Ok(Sync::DhtContacts { addrs }) = overlay::wire::from_canonical(&payload)
                    else {
                        continue;
                    };
                    if !asked.remove(&from) {
                        continue;
                    }
                    let usable = dht_contacts_from(addrs, from.addr);
                    if !usable.is_empty() {
                        return usable;
                    }
                }
                _ => {}
            }
        }
    })
    .await;
    driver.shutdown().await;
    found.map_err(|_| {
        anyhow::anyhow!(
            "no overlay node reached through the anchors named a DHT node within {}",
            humantime::format_duration(timeout)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(identity: &Identity, name: &str, expires: u64) -> Record {
        let peers = vec!["127.0.0.1:6881".parse().expect("an address")];
        Record::signed(identity, name.into(), 1234, [7; 20], peers, expires)
    }

    #[test]
    fn an_entry_gives_back_its_record_and_nothing_else_does() {
        let mut rng = rand::rng();
        let (alice, mallory) = (Identity::generate(&mut rng), Identity::generate(&mut rng));
        let now = unix_now();
        let rec = record(&alice, "Desert Caravan.mp4", now + 600);
        let item = entry(&alice, &rec, 1).expect("an entry");
        assert!(item.verifies(), "the BEP 44 signature is the publisher's");
        assert_eq!(record_of(&item, now).expect("checks out"), rec);
        // Expired by the time it is read.
        assert!(record_of(&item, now + 601).is_err());
        // Another key's entry carrying Alice's record: the key is not the record's publisher.
        let stolen = entry(&mallory, &rec, 1).expect("an entry");
        assert!(stolen.verifies());
        assert!(record_of(&stolen, now).is_err());
        // An entry whose salt names another file.
        let mut other_salt = item.clone();
        other_salt.salt = vec![8; 20];
        assert!(record_of(&other_salt, now).is_err());
        // A record altered after signing (its own signature no longer matches).
        let mut forged = rec.clone();
        forged.size = 1;
        let forged_item = entry(&alice, &forged, 1).expect("an entry");
        assert!(record_of(&forged_item, now).is_err());
        // Not a record at all, or not canonical (a byte added).
        let mut junk = item.clone();
        junk.value = Value::Bytes(b"not a record".to_vec());
        assert!(record_of(&junk, now).is_err());
        let mut longer = item.clone();
        if let Value::Bytes(b) = &mut longer.value {
            b.push(0);
        }
        assert!(record_of(&longer, now).is_err());
        // A record that claims to live longer than records may.
        let far = entry(&alice, &record(&alice, "x film", now + 3 * 3600), 1).expect("an entry");
        assert!(record_of(&far, now).is_err());
    }

    #[test]
    fn an_entry_of_the_longest_name_fits_a_bep44_value() {
        let identity = Identity::generate(&mut rand::rng());
        let name = "é".repeat(search::MAX_NAME_BYTES / 2);
        let mut rec = record(&identity, &name, unix_now() + 600);
        rec.peers = (0..search::MAX_RECORD_PEERS as u16)
            .map(|i| std::net::SocketAddr::from(([0xfe80, 0, 0, 0, 0, 0, 0, i], 65535)))
            .collect();
        let item = entry(&identity, &rec, 1).expect("an entry");
        assert!(item.value.encode().len() <= dht::proto::krpc::MAX_VALUE);
    }
}
