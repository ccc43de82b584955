//! Magnet links: fetch the info dictionary from peers with metadata exchange (BEP 9) before the
//! torrent can start. The metadata is accepted only if its SHA-1 equals the magnet's info-hash.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rand::SeedableRng;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info};

use super::peer;
use crate::magnet::Magnet;
use crate::metainfo::{Info, Metainfo};
use crate::proto::ext::{ExtHandshake, MetadataMsg, MAX_METADATA, METADATA_PIECE, OUR_UT_METADATA};
use crate::proto::wire::{self, Message, DEFAULT_MAX_MESSAGE};
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
}

/// Resolves `magnet` into a full [`Metainfo`] by asking peers: those in the link (`x.pe`),
/// `extra_peers`, and those the link's trackers return. `our_port` is announced to trackers.
pub async fn fetch_metadata(
    magnet: &Magnet,
    extra_peers: &[SocketAddr],
    our_port: u16,
    per_peer_timeout: Duration,
) -> Result<Metainfo, MetadataError> {
    let mut rng = rand_chacha::ChaCha8Rng::from_os_rng();
    let our_id = PeerId::generate(&mut rng);
    let mut candidates: Vec<SocketAddr> = extra_peers.to_vec();
    for p in &magnet.peers {
        if let Ok(a) = p.parse() {
            candidates.push(a);
        }
    }
    if !magnet.trackers.is_empty() {
        let tiers = magnet.trackers.iter().map(|t| vec![t.clone()]).collect();
        let mut list = TrackerList::new(tiers, &mut rng);
        let req = AnnounceRequest {
            info_hash: magnet.info_hash,
            peer_id: our_id,
            port: our_port,
            uploaded: 0,
            downloaded: 0,
            left: 1,
            event: TrackerEvent::None,
            num_want: 50,
        };
        match list.announce(&req, Duration::from_secs(10)).await {
            Ok((_, resp)) => candidates.extend(resp.peers),
            Err(e) => debug!("magnet tracker announce failed: {e}"),
        }
    }
    candidates.dedup();
    if candidates.is_empty() {
        return Err(MetadataError::NoPeers);
    }
    let mut last = String::new();
    for addr in &candidates {
        match tokio::time::timeout(per_peer_timeout, from_peer(*addr, magnet, our_id)).await {
            Ok(Ok(raw)) => {
                let info = Info::from_bytes(&raw).map_err(|e| MetadataError::AllFailed {
                    tried: candidates.len(),
                    last: format!("metadata from {addr} does not parse: {e}"),
                })?;
                info!(peer = %addr, bytes = raw.len(), "fetched torrent metadata");
                return Ok(Metainfo {
                    info,
                    info_hash: magnet.info_hash,
                    info_bytes: raw,
                    trackers: magnet.trackers.iter().map(|t| vec![t.clone()]).collect(),
                    comment: None,
                    created_by: None,
                    creation_date: None,
                });
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: timed out"),
        }
        debug!("metadata fetch failed: {last}");
    }
    Err(MetadataError::AllFailed { tried: candidates.len(), last })
}

async fn from_peer(addr: SocketAddr, magnet: &Magnet, our_id: PeerId) -> Result<Vec<u8>, String> {
    let c = peer::connect(addr, magnet.info_hash, our_id, Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    if !c.theirs.supports_extensions() {
        return Err("peer does not support the extension protocol".into());
    }
    let mut stream = c.stream;
    let mut out = BytesMut::new();
    if c.theirs.supports_fast() {
        Message::HaveNone.encode(&mut out);
    }
    let hs = ExtHandshake { ut_metadata: Some(OUR_UT_METADATA), ..Default::default() };
    Message::Extended { id: 0, payload: Bytes::from(hs.encode()) }.encode(&mut out);
    stream.write_all(&out).await.map_err(|e| e.to_string())?;

    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut pieces: Vec<Option<Bytes>> = vec![];
    let mut size = 0u32;
    loop {
        let msg = loop {
            match wire::decode(&mut buf, DEFAULT_MAX_MESSAGE).map_err(|e| e.to_string())? {
                Some(m) => break m,
                None => {
                    if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                        return Err("peer closed the connection".into());
                    }
                }
            }
        };
        let Message::Extended { id, payload } = msg else {
            continue;
        };
        if id == 0 {
            let theirs = ExtHandshake::decode(&payload).map_err(|e| e.to_string())?;
            let (Some(their_id), Some(n)) = (theirs.ut_metadata, theirs.metadata_size) else {
                return Err("peer does not offer metadata (ut_metadata)".into());
            };
            if n == 0 || n > MAX_METADATA {
                return Err(format!("peer claims metadata of {n} bytes"));
            }
            if !pieces.is_empty() {
                continue;
            }
            size = n;
            let count = n.div_ceil(METADATA_PIECE);
            pieces = vec![None; count as usize];
            let mut req = BytesMut::new();
            for piece in 0..count {
                let payload = Bytes::from(MetadataMsg::Request { piece }.encode());
                Message::Extended { id: their_id, payload }.encode(&mut req);
            }
            stream.write_all(&req).await.map_err(|e| e.to_string())?;
            continue;
        }
        if id != OUR_UT_METADATA || pieces.is_empty() {
            continue;
        }
        match MetadataMsg::decode(&payload).map_err(|e| e.to_string())? {
            MetadataMsg::Reject { piece } => {
                return Err(format!("peer rejected metadata piece {piece}"))
            }
            MetadataMsg::Request { .. } => {}
            MetadataMsg::Data { piece, total_size, data } => {
                let start = piece as usize * METADATA_PIECE as usize;
                let want = (size as usize).saturating_sub(start).min(METADATA_PIECE as usize);
                if total_size != size || piece as usize >= pieces.len() || data.len() != want {
                    return Err("peer sent a metadata piece of the wrong size".into());
                }
                pieces[piece as usize] = Some(data);
                if pieces.iter().all(Option::is_some) {
                    let raw: Vec<u8> =
                        pieces.iter().flatten().flat_map(|b| b.iter().copied()).collect();
                    if Sha1::digest(&raw).as_slice() != magnet.info_hash.0 {
                        return Err("metadata does not match the magnet's info-hash".into());
                    }
                    return Ok(raw);
                }
            }
        }
    }
}
