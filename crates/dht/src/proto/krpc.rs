//! KRPC, the DHT's wire format (BEP 5): one bencoded dictionary per UDP datagram, a query
//! (`y` = `q`), a response (`r`) or an error (`e`), matched by the transaction id `t`.
//!
//! Besides BEP 5's `ping`, `find_node`, `get_peers` and `announce_peer`, the codec carries the
//! fields of BEP 42 (`ip`: the address the responder saw us at), BEP 43 (`ro`: a read-only node
//! that answers no queries), BEP 44 (`get` / `put` of immutable and mutable items: `v`, `k`,
//! `sig`, `seq`, `salt`, `cas`), BEP 51 (`sample_infohashes`: `samples`, `interval`, `num`),
//! BEP 33 (`scrape`, `seed`, `BFsd`, `BFpe`) and BEP 32 (IPv6: `nodes6`, 18-byte `values` and
//! `ip`, `want`). Addresses of either family go through [`NodeAddr`]. It also carries
//! Swarmcast's keyword index (no BEP): `index_get` and `index_put`, whose entries are BEP 44
//! mutable items ([`MutableItem`]: `k`, `salt`, `seq`, `sig`, `v`), many under one `target`,
//! returned as a list of such dictionaries in `items` (at most [`MAX_ITEMS`]).
//!
//! # Every datagram is hostile
//! - At most [`MAX_PACKET`] bytes and [`MAX_DEPTH`] levels of nesting; anything larger is
//!   refused before it is parsed.
//! - Canonical bencode only (sorted keys, no leading zeros: `bendy` refuses the rest), with no
//!   bytes after the dictionary: signed BEP 44 values are re-encoded byte for byte.
//! - Every field has its size: ids and info-hashes 20 bytes, `nodes` a multiple of 26,
//!   `nodes6` of 38, `values` entries and `ip` 6 or 18 bytes, `want` at most 4 short entries, `samples` a multiple of 20, `k` 32, `sig` 64, `salt` at most
//!   [`MAX_SALT`], a BEP 44 `v` at most [`MAX_VALUE`] encoded, `t` at most [`MAX_TID`], tokens
//!   at most [`MAX_TOKEN`]. A field of the wrong type or size is an error, not a default.
//! - Unknown keys are skipped (other clients add their own; BEP 5 asks for that), unknown
//!   query methods are reported as such so the node can answer error 204.
//!
//! Decoding returns [`KrpcError`]; the driver drops the datagram and counts it. It never
//! panics (fuzzed: `fuzz/fuzz_targets/krpc.rs`).

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use bendy::decoding::{Decoder, DictDecoder, Object};
use bendy::encoding::{Encoder, SingleItemEncoder, SortedDictEncoder};

use super::addr::NodeAddr;
use super::bloom::ScrapeFilter;
use super::id::NodeId;

/// The largest datagram we parse. Real messages stay under one Ethernet frame (libtorrent
/// sizes its replies to fit 1,500 bytes); a BEP 44 `put` with a full 1,000-byte value is about
/// 1,300.
pub const MAX_PACKET: usize = 2048;
/// Nesting we accept: message, arguments, a list of values, and some room for a BEP 44 value.
pub const MAX_DEPTH: usize = 8;
/// Longest transaction id (clients use 2–4 bytes).
pub const MAX_TID: usize = 16;
/// Longest `announce_peer` / `put` token (libtorrent: 4 bytes; we write 8).
pub const MAX_TOKEN: usize = 32;
/// A BEP 44 value is at most 1,000 bytes, bencoded.
pub const MAX_VALUE: usize = 1000;
/// A BEP 44 salt is at most 64 bytes.
pub const MAX_SALT: usize = 64;
/// Longest error message or client version kept.
const MAX_TEXT: usize = 256;
/// Entries of a `want` list (BEP 32 defines two).
const MAX_WANT: usize = 4;
/// Keyword index entries one `index_get` reply carries, at most (a reply fits a datagram).
pub const MAX_ITEMS: usize = 8;

/// Why a datagram was not a KRPC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KrpcError {
    #[error("datagram of {0} bytes is over the {MAX_PACKET}-byte limit")]
    TooLarge(usize),
    #[error("not canonical bencode: {0}")]
    Bencode(String),
    #[error("bytes after the message")]
    Trailing,
    #[error("missing or malformed field '{0}'")]
    Field(&'static str),
    /// A query whose method we do not know (answer with error 204, "method unknown").
    #[error("unknown query method")]
    UnknownMethod { tid: Vec<u8> },
}

fn benc(e: bendy::decoding::Error) -> KrpcError {
    KrpcError::Bencode(e.to_string())
}

/// One KRPC message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Transaction id, echoed by the response.
    pub tid: Vec<u8>,
    pub body: Body,
    /// The sender's client and version (`v`), a claim (at most 256 bytes kept).
    pub version: Option<Vec<u8>>,
    /// BEP 42: the address the responder saw the requester at.
    pub ip: Option<SocketAddr>,
    /// BEP 43: the sender is read-only and answers no queries.
    pub read_only: bool,
}

/// What a message says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// `want` (BEP 32): which families of nodes the querier asks for.
    Query {
        id: NodeId,
        method: Method,
        want: Want,
    },
    Response(Response),
    Error {
        code: i64,
        message: String,
    },
}

/// BEP 32's `want`: `n4` and/or `n6`. Neither means "nodes of the family the query came over".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Want {
    pub n4: bool,
    pub n6: bool,
}

/// A query's method and arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    Ping,
    FindNode {
        target: NodeId,
    },
    /// `scrape` (BEP 33): answer with the swarm's bloom filters instead of its peers.
    GetPeers {
        info_hash: NodeId,
        scrape: bool,
    },
    /// `seed` (BEP 33): the announcer has the whole torrent.
    AnnouncePeer {
        info_hash: NodeId,
        port: u16,
        implied_port: bool,
        token: Vec<u8>,
        seed: bool,
    },
    /// BEP 44 `get`: `seq` asks for a mutable item only if newer.
    Get {
        target: NodeId,
        seq: Option<i64>,
    },
    Put(Put),
    /// BEP 51.
    SampleInfohashes {
        target: NodeId,
    },
    /// Swarmcast's keyword index: the entries stored under `target`. `token`, one the node
    /// gave us, proves we receive at our address (so the reply may be full).
    IndexGet {
        target: NodeId,
        token: Option<Vec<u8>>,
    },
    /// Swarmcast's keyword index: store one signed entry under `target` (a BEP 44 mutable
    /// item, which the storing node verifies; `target` is not its BEP 44 target).
    IndexPut {
        target: NodeId,
        token: Vec<u8>,
        item: MutableItem,
    },
}

/// A BEP 44 mutable item: a value signed by an ed25519 key, under `target` = SHA-1(key ‖ salt),
/// newer when its `seq` is higher. Also an entry of the keyword index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MutableItem {
    pub key: [u8; 32],
    pub salt: Vec<u8>,
    pub seq: i64,
    pub value: Value,
    pub sig: [u8; 64],
}

impl MutableItem {
    /// Where the item lives: SHA-1 of the public key and the salt.
    pub fn target(key: &[u8; 32], salt: &[u8]) -> NodeId {
        use sha1::{Digest, Sha1};
        let mut h = Sha1::new();
        h.update(key);
        h.update(salt);
        NodeId(h.finalize().into())
    }

    /// The bytes the signature covers (BEP 44): `4:salt<len>:<salt>` when salted, then
    /// `3:seqi<seq>e1:v<bencoded value>`.
    pub fn signed_bytes(salt: &[u8], seq: i64, value: &Value) -> Vec<u8> {
        let mut b = Vec::new();
        if !salt.is_empty() {
            b.extend_from_slice(format!("4:salt{}:", salt.len()).as_bytes());
            b.extend_from_slice(salt);
        }
        b.extend_from_slice(format!("3:seqi{seq}e1:v").as_bytes());
        b.extend_from_slice(&value.encode());
        b
    }

    /// Whether the signature is the key's over this salt, seq and value.
    pub fn verifies(&self) -> bool {
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&self.key) else {
            return false;
        };
        let sig = ed25519_dalek::Signature::from_bytes(&self.sig);
        key.verify_strict(&Self::signed_bytes(&self.salt, self.seq, &self.value), &sig).is_ok()
    }

    /// Its size in a reply's `items` list: `d1:k32:…4:salt…3:seqi…e3:sig64:…1:v…e`.
    pub fn wire_len(&self) -> usize {
        let digits = |n: usize| n.to_string().len();
        let salt = if self.salt.is_empty() {
            0
        } else {
            6 + digits(self.salt.len()) + 1 + self.salt.len()
        };
        2 + 38 + salt + 5 + self.seq.to_string().len() + 2 + 72 + 3 + self.value.encode().len()
    }
}

/// BEP 44 `put` arguments. Immutable when `key` is `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Put {
    pub token: Vec<u8>,
    pub value: Value,
    pub key: Option<[u8; 32]>,
    pub sig: Option<[u8; 64]>,
    pub seq: Option<i64>,
    pub salt: Vec<u8>,
    pub cas: Option<i64>,
}

/// A response's fields; which ones are present depends on the query it answers (KRPC does not
/// say), so all are optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub id: Option<NodeId>,
    /// `nodes`: the closest nodes the responder knows.
    pub nodes: Vec<CompactNode>,
    /// `values`: peers of a swarm (`get_peers`): the 6-byte entries here, the 18-byte (IPv6,
    /// BEP 32) ones in `values6`; on the wire they share one list.
    pub values: Vec<SocketAddrV4>,
    pub values6: Vec<SocketAddrV6>,
    /// `nodes6` (BEP 32): IPv6 nodes, 38 bytes each.
    pub nodes6: Vec<CompactNode6>,
    pub token: Option<Vec<u8>>,
    /// BEP 44 item.
    pub value: Option<Value>,
    pub key: Option<[u8; 32]>,
    pub sig: Option<[u8; 64]>,
    pub seq: Option<i64>,
    /// BEP 51.
    pub samples: Vec<NodeId>,
    pub interval: Option<i64>,
    pub num: Option<i64>,
    /// BEP 33: bloom filters of the swarm's seeds (`BFsd`) and downloaders (`BFpe`).
    pub seeds_filter: Option<Box<ScrapeFilter>>,
    pub peers_filter: Option<Box<ScrapeFilter>>,
    /// Swarmcast's keyword index (`index_get`): entries, at most [`MAX_ITEMS`].
    pub items: Vec<MutableItem>,
}

/// A node in compact form: id and address (BEP 5: IPv4, 26 bytes on the wire; BEP 32: IPv6,
/// 38 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CompactNode<A = SocketAddrV4> {
    pub id: NodeId,
    pub addr: A,
}

/// An IPv6 node in compact form (BEP 32).
pub type CompactNode6 = CompactNode<SocketAddrV6>;

/// A bencoded value (a BEP 44 item's `v`), kept as a tree in canonical order so that its
/// encoding is the bytes that were signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    /// Keys in strictly increasing order (decoding refuses any other).
    Dict(Vec<(Vec<u8>, Value)>),
}

impl Value {
    /// The canonical bencoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new().with_max_depth(MAX_DEPTH);
        let r = e.emit_with(|s| self.emit(s));
        r.and_then(|_| e.get_output()).expect("in-memory bencode of a canonical value")
    }

    fn emit(&self, s: SingleItemEncoder<'_>) -> Result<(), bendy::encoding::Error> {
        match self {
            Value::Int(i) => s.emit_int(*i),
            Value::Bytes(b) => s.emit_bytes(b),
            Value::List(items) => s.emit_list(|e| {
                for item in items {
                    e.emit_with(|s| item.emit(s))?;
                }
                Ok(())
            }),
            Value::Dict(pairs) => s.emit_dict(|mut d| {
                for (k, v) in pairs {
                    d.emit_pair_with(k, |s| v.emit(s))?;
                }
                Ok(())
            }),
        }
    }

    fn decode(o: Object<'_, '_>) -> Result<Value, KrpcError> {
        Ok(match o {
            Object::Integer(s) => Value::Int(s.parse().map_err(|_| KrpcError::Field("v"))?),
            Object::Bytes(b) => Value::Bytes(b.to_vec()),
            Object::List(mut l) => {
                let mut items = Vec::new();
                while let Some(x) = l.next_object().map_err(benc)? {
                    items.push(Value::decode(x)?);
                }
                Value::List(items)
            }
            Object::Dict(mut d) => {
                let mut pairs = Vec::new();
                while let Some((k, v)) = d.next_pair().map_err(benc)? {
                    pairs.push((k.to_vec(), Value::decode(v)?));
                }
                Value::Dict(pairs)
            }
        })
    }
}

type EncResult = Result<(), bendy::encoding::Error>;

impl Message {
    /// Parses one datagram.
    pub fn decode(datagram: &[u8]) -> Result<Message, KrpcError> {
        if datagram.len() > MAX_PACKET {
            return Err(KrpcError::TooLarge(datagram.len()));
        }
        let mut dec = Decoder::new(datagram).with_max_depth(MAX_DEPTH);
        let Some(Object::Dict(mut top)) = dec.next_object().map_err(benc)? else {
            return Err(KrpcError::Field("message dictionary"));
        };
        let mut tid = None;
        let mut kind = None;
        let mut method: Option<Vec<u8>> = None;
        let mut args: Option<Args> = None;
        let mut response = None;
        let mut error = None;
        let mut version = None;
        let mut ip = None;
        let mut read_only = false;
        while let Some((k, v)) = top.next_pair().map_err(benc)? {
            match k {
                b"t" => tid = Some(bytes_max(v, "t", MAX_TID)?.to_vec()),
                b"y" => kind = Some(bytes_max(v, "y", 1)?.to_vec()),
                b"q" => method = Some(bytes_max(v, "q", 32)?.to_vec()),
                b"a" => args = Some(Args::decode(dict(v, "a")?)?),
                b"r" => response = Some(decode_response(dict(v, "r")?)?),
                b"e" => error = Some(decode_error(v)?),
                b"v" => {
                    if let Object::Bytes(b) = v {
                        version = Some(b[..b.len().min(MAX_TEXT)].to_vec());
                    }
                }
                b"ip" => {
                    let b = bytes(v, "ip")?;
                    ip = Some(match b.len() {
                        6 => SocketAddr::V4(SocketAddrV4::read_compact(b)),
                        18 => SocketAddr::V6(SocketAddrV6::read_compact(b)),
                        _ => return Err(KrpcError::Field("ip")),
                    });
                }
                b"ro" => read_only = int(v, "ro")? == 1,
                _ => skip(v)?,
            }
        }
        drop(top);
        if dec.next_object().map_err(benc)?.is_some() {
            return Err(KrpcError::Trailing);
        }
        let tid = tid.ok_or(KrpcError::Field("t"))?;
        let body = match kind.as_deref() {
            Some(b"q") => {
                let args = args.ok_or(KrpcError::Field("a"))?;
                let id = args.id.ok_or(KrpcError::Field("a.id"))?;
                let method = match method.as_deref().ok_or(KrpcError::Field("q"))? {
                    b"ping" => Method::Ping,
                    b"find_node" => Method::FindNode { target: args.need_target()? },
                    b"get_peers" => {
                        Method::GetPeers { info_hash: args.need_info_hash()?, scrape: args.scrape }
                    }
                    b"announce_peer" => Method::AnnouncePeer {
                        info_hash: args.need_info_hash()?,
                        port: args.port.ok_or(KrpcError::Field("a.port"))?,
                        implied_port: args.implied_port,
                        token: args.token.ok_or(KrpcError::Field("a.token"))?,
                        seed: args.seed,
                    },
                    b"get" => Method::Get { target: args.need_target()?, seq: args.seq },
                    b"put" => Method::Put(Put {
                        token: args.token.ok_or(KrpcError::Field("a.token"))?,
                        value: args.value.ok_or(KrpcError::Field("a.v"))?,
                        key: args.key,
                        sig: args.sig,
                        seq: args.seq,
                        salt: args.salt.unwrap_or_default(),
                        cas: args.cas,
                    }),
                    b"sample_infohashes" => {
                        Method::SampleInfohashes { target: args.need_target()? }
                    }
                    b"index_get" => {
                        Method::IndexGet { target: args.need_target()?, token: args.token }
                    }
                    b"index_put" => Method::IndexPut {
                        target: args.need_target()?,
                        token: args.token.ok_or(KrpcError::Field("a.token"))?,
                        item: MutableItem {
                            key: args.key.ok_or(KrpcError::Field("a.k"))?,
                            salt: args.salt.unwrap_or_default(),
                            seq: args.seq.ok_or(KrpcError::Field("a.seq"))?,
                            value: args.value.ok_or(KrpcError::Field("a.v"))?,
                            sig: args.sig.ok_or(KrpcError::Field("a.sig"))?,
                        },
                    },
                    _ => return Err(KrpcError::UnknownMethod { tid }),
                };
                Body::Query { id, method, want: args.want }
            }
            Some(b"r") => Body::Response(response.ok_or(KrpcError::Field("r"))?),
            Some(b"e") => {
                let (code, message) = error.ok_or(KrpcError::Field("e"))?;
                Body::Error { code, message }
            }
            _ => return Err(KrpcError::Field("y")),
        };
        Ok(Message { tid, body, version, ip, read_only })
    }

    /// The datagram for this message. Keys go out in canonical order.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new().with_max_depth(MAX_DEPTH);
        let r = e.emit_dict(|mut d| {
            match &self.body {
                Body::Query { id, method, want } => {
                    d.emit_pair_with(b"a", |s| s.emit_dict(|a| emit_args(a, id, method, want)))?;
                }
                Body::Error { code, message } => {
                    d.emit_pair_with(b"e", |s| {
                        s.emit_list(|l| {
                            l.emit_int(*code)?;
                            l.emit_str(message)
                        })
                    })?;
                }
                Body::Response(_) => {}
            }
            match &self.ip {
                Some(SocketAddr::V4(ip)) => {
                    d.emit_pair_with(b"ip", |s| s.emit_bytes(&compact(ip)))?;
                }
                Some(SocketAddr::V6(ip)) => {
                    d.emit_pair_with(b"ip", |s| s.emit_bytes(&compact(ip)))?;
                }
                None => {}
            }
            if let Body::Query { method, .. } = &self.body {
                d.emit_pair_with(b"q", |s| s.emit_str(method_name(method)))?;
            }
            if let Body::Response(r) = &self.body {
                d.emit_pair_with(b"r", |s| s.emit_dict(|rd| emit_response(rd, r)))?;
            }
            if self.read_only {
                d.emit_pair(b"ro", 1)?;
            }
            d.emit_pair_with(b"t", |s| s.emit_bytes(&self.tid))?;
            if let Some(v) = &self.version {
                d.emit_pair_with(b"v", |s| s.emit_bytes(v))?;
            }
            let y = match self.body {
                Body::Query { .. } => "q",
                Body::Response(_) => "r",
                Body::Error { .. } => "e",
            };
            d.emit_pair(b"y", y)
        });
        r.and_then(|_| e.get_output()).expect("in-memory bencode with sorted keys")
    }
}

fn method_name(m: &Method) -> &'static str {
    match m {
        Method::Ping => "ping",
        Method::FindNode { .. } => "find_node",
        Method::GetPeers { .. } => "get_peers",
        Method::AnnouncePeer { .. } => "announce_peer",
        Method::Get { .. } => "get",
        Method::Put(_) => "put",
        Method::SampleInfohashes { .. } => "sample_infohashes",
        Method::IndexGet { .. } => "index_get",
        Method::IndexPut { .. } => "index_put",
    }
}

fn emit_args(mut a: SortedDictEncoder<'_>, id: &NodeId, m: &Method, want: &Want) -> EncResult {
    // Keys in sorted order: cas, id, implied_port, info_hash, k, port, salt, scrape, seed, seq,
    // sig, target, token, v, want.
    if let Method::Put(p) = m {
        if let Some(cas) = p.cas {
            a.emit_pair(b"cas", cas)?;
        }
    }
    a.emit_pair_with(b"id", |s| s.emit_bytes(&id.0))?;
    let emitted: EncResult = match m {
        Method::Ping => Ok(()),
        Method::FindNode { target } | Method::SampleInfohashes { target } => {
            a.emit_pair_with(b"target", |s| s.emit_bytes(&target.0))
        }
        Method::IndexGet { target, token } => {
            a.emit_pair_with(b"target", |s| s.emit_bytes(&target.0))?;
            match token {
                Some(t) => a.emit_pair_with(b"token", |s| s.emit_bytes(t)),
                None => Ok(()),
            }
        }
        Method::IndexPut { target, token, item } => {
            a.emit_pair_with(b"k", |s| s.emit_bytes(&item.key))?;
            if !item.salt.is_empty() {
                a.emit_pair_with(b"salt", |s| s.emit_bytes(&item.salt))?;
            }
            a.emit_pair(b"seq", item.seq)?;
            a.emit_pair_with(b"sig", |s| s.emit_bytes(&item.sig))?;
            a.emit_pair_with(b"target", |s| s.emit_bytes(&target.0))?;
            a.emit_pair_with(b"token", |s| s.emit_bytes(token))?;
            a.emit_pair_with(b"v", |s| item.value.emit(s))
        }
        Method::GetPeers { info_hash, scrape } => {
            a.emit_pair_with(b"info_hash", |s| s.emit_bytes(&info_hash.0))?;
            if *scrape {
                a.emit_pair(b"scrape", 1)?;
            }
            Ok(())
        }
        Method::AnnouncePeer { info_hash, port, implied_port, token, seed } => {
            if *implied_port {
                a.emit_pair(b"implied_port", 1)?;
            }
            a.emit_pair_with(b"info_hash", |s| s.emit_bytes(&info_hash.0))?;
            a.emit_pair(b"port", *port)?;
            if *seed {
                a.emit_pair(b"seed", 1)?;
            }
            a.emit_pair_with(b"token", |s| s.emit_bytes(token))
        }
        Method::Get { target, seq } => {
            if let Some(seq) = seq {
                a.emit_pair(b"seq", *seq)?;
            }
            a.emit_pair_with(b"target", |s| s.emit_bytes(&target.0))
        }
        Method::Put(p) => {
            if let Some(k) = &p.key {
                a.emit_pair_with(b"k", |s| s.emit_bytes(k))?;
            }
            if !p.salt.is_empty() {
                a.emit_pair_with(b"salt", |s| s.emit_bytes(&p.salt))?;
            }
            if let Some(seq) = p.seq {
                a.emit_pair(b"seq", seq)?;
            }
            if let Some(sig) = &p.sig {
                a.emit_pair_with(b"sig", |s| s.emit_bytes(sig))?;
            }
            a.emit_pair_with(b"token", |s| s.emit_bytes(&p.token))?;
            a.emit_pair_with(b"v", |s| p.value.emit(s))
        }
    };
    emitted?;
    if want.n4 || want.n6 {
        a.emit_pair_with(b"want", |s| {
            s.emit_list(|l| {
                if want.n4 {
                    l.emit_str("n4")?;
                }
                if want.n6 {
                    l.emit_str("n6")?;
                }
                Ok(())
            })
        })?;
    }
    Ok(())
}

fn emit_response(mut d: SortedDictEncoder<'_>, r: &Response) -> EncResult {
    // Sorted: BFpe, BFsd, id, interval, items, k, nodes, nodes6, num, samples, seq, sig, token,
    // v, values.
    if let Some(f) = &r.peers_filter {
        d.emit_pair_with(b"BFpe", |s| s.emit_bytes(&f.0))?;
    }
    if let Some(f) = &r.seeds_filter {
        d.emit_pair_with(b"BFsd", |s| s.emit_bytes(&f.0))?;
    }
    if let Some(id) = &r.id {
        d.emit_pair_with(b"id", |s| s.emit_bytes(&id.0))?;
    }
    if let Some(i) = r.interval {
        d.emit_pair(b"interval", i)?;
    }
    if !r.items.is_empty() {
        d.emit_pair_with(b"items", |s| {
            s.emit_list(|l| {
                for it in &r.items {
                    l.emit_dict(|mut e| {
                        e.emit_pair_with(b"k", |s| s.emit_bytes(&it.key))?;
                        if !it.salt.is_empty() {
                            e.emit_pair_with(b"salt", |s| s.emit_bytes(&it.salt))?;
                        }
                        e.emit_pair(b"seq", it.seq)?;
                        e.emit_pair_with(b"sig", |s| s.emit_bytes(&it.sig))?;
                        e.emit_pair_with(b"v", |s| it.value.emit(s))
                    })?;
                }
                Ok(())
            })
        })?;
    }
    if let Some(k) = &r.key {
        d.emit_pair_with(b"k", |s| s.emit_bytes(k))?;
    }
    if !r.nodes.is_empty() {
        d.emit_pair_with(b"nodes", |s| s.emit_bytes(&compact_nodes(&r.nodes)))?;
    }
    if !r.nodes6.is_empty() {
        d.emit_pair_with(b"nodes6", |s| s.emit_bytes(&compact_nodes(&r.nodes6)))?;
    }
    if let Some(n) = r.num {
        d.emit_pair(b"num", n)?;
    }
    if !r.samples.is_empty() {
        let buf: Vec<u8> = r.samples.iter().flat_map(|s| s.0).collect();
        d.emit_pair_with(b"samples", |s| s.emit_bytes(&buf))?;
    }
    if let Some(seq) = r.seq {
        d.emit_pair(b"seq", seq)?;
    }
    if let Some(sig) = &r.sig {
        d.emit_pair_with(b"sig", |s| s.emit_bytes(sig))?;
    }
    if let Some(t) = &r.token {
        d.emit_pair_with(b"token", |s| s.emit_bytes(t))?;
    }
    if let Some(v) = &r.value {
        d.emit_pair_with(b"v", |s| v.emit(s))?;
    }
    if !r.values.is_empty() || !r.values6.is_empty() {
        d.emit_pair_with(b"values", |s| {
            s.emit_list(|l| {
                for p in &r.values {
                    l.emit_bytes(&compact(p))?;
                }
                for p in &r.values6 {
                    l.emit_bytes(&compact(p))?;
                }
                Ok(())
            })
        })?;
    }
    Ok(())
}

/// Query arguments as they arrive, before the method says which are required.
#[derive(Default)]
struct Args {
    id: Option<NodeId>,
    target: Option<NodeId>,
    info_hash: Option<NodeId>,
    port: Option<u16>,
    implied_port: bool,
    token: Option<Vec<u8>>,
    value: Option<Value>,
    key: Option<[u8; 32]>,
    sig: Option<[u8; 64]>,
    seq: Option<i64>,
    salt: Option<Vec<u8>>,
    cas: Option<i64>,
    scrape: bool,
    seed: bool,
    want: Want,
}

impl Args {
    fn decode(mut d: DictDecoder<'_, '_>) -> Result<Args, KrpcError> {
        let mut a = Args::default();
        while let Some((k, v)) = d.next_pair().map_err(benc)? {
            match k {
                b"id" => a.id = Some(id(v, "a.id")?),
                b"target" => a.target = Some(id(v, "a.target")?),
                b"info_hash" => a.info_hash = Some(id(v, "a.info_hash")?),
                b"port" => {
                    a.port = Some(
                        u16::try_from(int(v, "a.port")?).map_err(|_| KrpcError::Field("a.port"))?,
                    )
                }
                b"implied_port" => a.implied_port = int(v, "a.implied_port")? == 1,
                b"token" => a.token = Some(bytes_max(v, "a.token", MAX_TOKEN)?.to_vec()),
                b"v" => a.value = Some(value(v)?),
                b"k" => a.key = Some(array(v, "a.k")?),
                b"sig" => a.sig = Some(array(v, "a.sig")?),
                b"seq" => a.seq = Some(int(v, "a.seq")?),
                b"salt" => a.salt = Some(bytes_max(v, "a.salt", MAX_SALT)?.to_vec()),
                b"cas" => a.cas = Some(int(v, "a.cas")?),
                b"scrape" => a.scrape = int(v, "a.scrape")? == 1,
                b"seed" => a.seed = int(v, "a.seed")? == 1,
                b"want" => {
                    let Object::List(mut l) = v else {
                        return Err(KrpcError::Field("a.want"));
                    };
                    // Unknown families are ignored; at most a few entries.
                    let mut n = 0;
                    while let Some(w) = l.next_object().map_err(benc)? {
                        n += 1;
                        if n > MAX_WANT {
                            return Err(KrpcError::Field("a.want"));
                        }
                        match bytes_max(w, "a.want", 8)? {
                            b"n4" => a.want.n4 = true,
                            b"n6" => a.want.n6 = true,
                            _ => {}
                        }
                    }
                }
                _ => skip(v)?,
            }
        }
        Ok(a)
    }

    fn need_target(&self) -> Result<NodeId, KrpcError> {
        self.target.ok_or(KrpcError::Field("a.target"))
    }

    fn need_info_hash(&self) -> Result<NodeId, KrpcError> {
        self.info_hash.ok_or(KrpcError::Field("a.info_hash"))
    }
}

fn decode_response(mut d: DictDecoder<'_, '_>) -> Result<Response, KrpcError> {
    let mut r = Response::default();
    while let Some((k, v)) = d.next_pair().map_err(benc)? {
        match k {
            b"id" => r.id = Some(id(v, "r.id")?),
            b"nodes" => r.nodes = read_nodes(bytes(v, "r.nodes")?, "r.nodes")?,
            b"values" => {
                let Object::List(mut l) = v else {
                    return Err(KrpcError::Field("r.values"));
                };
                while let Some(p) = l.next_object().map_err(benc)? {
                    let b = bytes(p, "r.values")?;
                    match b.len() {
                        6 => r.values.push(SocketAddrV4::read_compact(b)),
                        18 => r.values6.push(SocketAddrV6::read_compact(b)),
                        _ => return Err(KrpcError::Field("r.values")),
                    }
                }
            }
            b"nodes6" => r.nodes6 = read_nodes(bytes(v, "r.nodes6")?, "r.nodes6")?,
            b"token" => r.token = Some(bytes_max(v, "r.token", MAX_TOKEN)?.to_vec()),
            b"v" => r.value = Some(value(v)?),
            b"k" => r.key = Some(array(v, "r.k")?),
            b"sig" => r.sig = Some(array(v, "r.sig")?),
            b"seq" => r.seq = Some(int(v, "r.seq")?),
            b"samples" => {
                let b = bytes(v, "r.samples")?;
                if b.len() % 20 != 0 {
                    return Err(KrpcError::Field("r.samples"));
                }
                r.samples =
                    b.chunks_exact(20).map(|c| NodeId(c.try_into().expect("20 bytes"))).collect();
            }
            b"interval" => r.interval = Some(int(v, "r.interval")?),
            b"num" => r.num = Some(int(v, "r.num")?),
            b"BFsd" => r.seeds_filter = Some(Box::new(ScrapeFilter(array(v, "r.BFsd")?))),
            b"BFpe" => r.peers_filter = Some(Box::new(ScrapeFilter(array(v, "r.BFpe")?))),
            b"items" => {
                let Object::List(mut l) = v else {
                    return Err(KrpcError::Field("r.items"));
                };
                while let Some(o) = l.next_object().map_err(benc)? {
                    if r.items.len() == MAX_ITEMS {
                        return Err(KrpcError::Field("r.items"));
                    }
                    r.items.push(decode_item(dict(o, "r.items")?)?);
                }
            }
            _ => skip(v)?,
        }
    }
    Ok(r)
}

/// One keyword index entry: `k`, `seq`, `sig` and `v` required, `salt` optional.
fn decode_item(mut d: DictDecoder<'_, '_>) -> Result<MutableItem, KrpcError> {
    let (mut key, mut salt, mut seq, mut sig, mut val) = (None, Vec::new(), None, None, None);
    while let Some((k, v)) = d.next_pair().map_err(benc)? {
        match k {
            b"k" => key = Some(array(v, "r.items.k")?),
            b"salt" => salt = bytes_max(v, "r.items.salt", MAX_SALT)?.to_vec(),
            b"seq" => seq = Some(int(v, "r.items.seq")?),
            b"sig" => sig = Some(array(v, "r.items.sig")?),
            b"v" => val = Some(value(v)?),
            _ => skip(v)?,
        }
    }
    Ok(MutableItem {
        key: key.ok_or(KrpcError::Field("r.items.k"))?,
        salt,
        seq: seq.ok_or(KrpcError::Field("r.items.seq"))?,
        value: val.ok_or(KrpcError::Field("r.items.v"))?,
        sig: sig.ok_or(KrpcError::Field("r.items.sig"))?,
    })
}

fn decode_error(v: Object<'_, '_>) -> Result<(i64, String), KrpcError> {
    let Object::List(mut l) = v else {
        return Err(KrpcError::Field("e"));
    };
    let code = match l.next_object().map_err(benc)? {
        Some(o) => int(o, "e")?,
        None => return Err(KrpcError::Field("e")),
    };
    let message = match l.next_object().map_err(benc)? {
        Some(Object::Bytes(b)) => text(b),
        Some(_) => return Err(KrpcError::Field("e")),
        None => String::new(),
    };
    while let Some(o) = l.next_object().map_err(benc)? {
        skip(o)?;
    }
    Ok((code, message))
}

/// A peer's text for people: at most [`MAX_TEXT`] bytes of it, invalid UTF-8 replaced, cut at
/// a character boundary to at most [`MAX_TEXT`] bytes again.
fn text(b: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(&b[..b.len().min(MAX_TEXT)]).into_owned();
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

/// Reads a value to its end (the decoder must consume nested containers before moving on).
fn skip(o: Object<'_, '_>) -> Result<(), KrpcError> {
    match o {
        Object::List(mut l) => {
            while let Some(x) = l.next_object().map_err(benc)? {
                skip(x)?;
            }
        }
        Object::Dict(mut d) => {
            while let Some((_, x)) = d.next_pair().map_err(benc)? {
                skip(x)?;
            }
        }
        Object::Bytes(_) | Object::Integer(_) => {}
    }
    Ok(())
}

fn value(o: Object<'_, '_>) -> Result<Value, KrpcError> {
    let v = Value::decode(o)?;
    if v.encode().len() > MAX_VALUE {
        return Err(KrpcError::Field("v"));
    }
    Ok(v)
}

fn dict<'o, 's>(o: Object<'o, 's>, field: &'static str) -> Result<DictDecoder<'o, 's>, KrpcError> {
    match o {
        Object::Dict(d) => Ok(d),
        _ => Err(KrpcError::Field(field)),
    }
}

fn int(o: Object<'_, '_>, field: &'static str) -> Result<i64, KrpcError> {
    match o {
        Object::Integer(s) => s.parse().map_err(|_| KrpcError::Field(field)),
        _ => Err(KrpcError::Field(field)),
    }
}

fn bytes<'s>(o: Object<'_, 's>, field: &'static str) -> Result<&'s [u8], KrpcError> {
    match o {
        Object::Bytes(b) => Ok(b),
        _ => Err(KrpcError::Field(field)),
    }
}

/// A byte string whose length is in `len`.
fn sized<'s>(
    o: Object<'_, 's>,
    field: &'static str,
    len: std::ops::RangeInclusive<usize>,
) -> Result<&'s [u8], KrpcError> {
    let b = bytes(o, field)?;
    if !len.contains(&b.len()) {
        return Err(KrpcError::Field(field));
    }
    Ok(b)
}

fn bytes_max<'s>(
    o: Object<'_, 's>,
    field: &'static str,
    max: usize,
) -> Result<&'s [u8], KrpcError> {
    sized(o, field, 0..=max)
}

fn array<const N: usize>(o: Object<'_, '_>, field: &'static str) -> Result<[u8; N], KrpcError> {
    bytes(o, field)?.try_into().map_err(|_| KrpcError::Field(field))
}

fn id(o: Object<'_, '_>, field: &'static str) -> Result<NodeId, KrpcError> {
    Ok(NodeId(array(o, field)?))
}

/// Compact nodes of one family (`nodes`, `nodes6`): a whole number of entries or an error.
pub(crate) fn read_nodes<A: NodeAddr>(
    b: &[u8],
    field: &'static str,
) -> Result<Vec<CompactNode<A>>, KrpcError> {
    if !b.len().is_multiple_of(A::COMPACT_NODE) {
        return Err(KrpcError::Field(field));
    }
    let node = |c: &[u8]| CompactNode {
        id: NodeId(c[..20].try_into().expect("a compact node starts with 20 bytes")),
        addr: A::read_compact(&c[20..]),
    };
    Ok(b.chunks_exact(A::COMPACT_NODE).map(node).collect())
}

pub(crate) fn compact_nodes<A: NodeAddr>(nodes: &[CompactNode<A>]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(nodes.len() * A::COMPACT_NODE);
    for n in nodes {
        buf.extend_from_slice(&n.id.0);
        n.addr.write_compact(&mut buf);
    }
    buf
}

fn compact<A: NodeAddr>(a: &A) -> Vec<u8> {
    let mut b = Vec::with_capacity(A::COMPACT_ADDR);
    a.write_compact(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn id(b: u8) -> NodeId {
        NodeId([b; 20])
    }

    fn roundtrip(m: Message) {
        let bytes = m.encode();
        assert!(bytes.len() <= MAX_PACKET);
        assert_eq!(Message::decode(&bytes), Ok(m), "{}", String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn decodes_bep5_examples_byte_for_byte() {
        // The examples of BEP 5, with their 20-byte ids.
        let ping = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
        let m = Message::decode(ping).unwrap();
        assert_eq!(m.tid, b"aa");
        assert_eq!(
            m.body,
            Body::Query {
                id: NodeId(*b"abcdefghij0123456789"),
                method: Method::Ping,
                want: Want::default()
            }
        );
        assert_eq!(m.encode(), ping, "our encoding is the canonical one");

        let announce = b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe";
        let m = Message::decode(announce).unwrap();
        assert_eq!(
            m.body,
            Body::Query {
                id: NodeId(*b"abcdefghij0123456789"),
                method: Method::AnnouncePeer {
                    info_hash: NodeId(*b"mnopqrstuvwxyz123456"),
                    port: 6881,
                    implied_port: true,
                    token: b"aoeusnth".to_vec(),
                    seed: false,
                },
                want: Want::default()
            }
        );
        assert_eq!(m.encode(), announce);

        let peers = b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re";
        let m = Message::decode(peers).unwrap();
        let Body::Response(r) = &m.body else { panic!("{m:?}") };
        assert_eq!(r.values.len(), 2);
        assert_eq!(r.values[0], SocketAddrV4::read_compact(b"axje.u"));
        assert_eq!(m.encode(), peers);

        let err = b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee";
        let m = Message::decode(err).unwrap();
        assert_eq!(m.body, Body::Error { code: 201, message: "A Generic Error Ocurred".into() });
        assert_eq!(m.encode(), err);
    }

    #[test]
    fn every_message_kind_roundtrips() {
        let addr = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 6881);
        let addr6 = SocketAddrV6::new(Ipv6Addr::LOCALHOST, 6882, 0, 0);
        let q = |method| Message {
            tid: vec![1, 2],
            body: Body::Query { id: id(1), method, want: Want::default() },
            version: Some(b"SC01".to_vec()),
            ip: None,
            read_only: false,
        };
        roundtrip(q(Method::Ping));
        roundtrip(Message {
            tid: vec![3],
            body: Body::Query {
                id: id(1),
                method: Method::FindNode { target: id(2) },
                want: Want { n4: true, n6: true },
            },
            version: None,
            ip: None,
            read_only: false,
        });
        roundtrip(q(Method::FindNode { target: id(2) }));
        roundtrip(q(Method::GetPeers { info_hash: id(3), scrape: false }));
        roundtrip(q(Method::GetPeers { info_hash: id(3), scrape: true }));
        roundtrip(q(Method::Get { target: id(4), seq: Some(7) }));
        roundtrip(q(Method::SampleInfohashes { target: id(5) }));
        roundtrip(q(Method::AnnouncePeer {
            info_hash: id(3),
            port: 1,
            implied_port: false,
            token: vec![5],
            seed: true,
        }));
        roundtrip(q(Method::Put(Put {
            token: b"tok".to_vec(),
            value: Value::Dict(vec![
                (b"a".to_vec(), Value::List(vec![Value::Int(-3), Value::Bytes(b"x".to_vec())])),
                (b"b".to_vec(), Value::Int(0)),
            ]),
            key: Some([9; 32]),
            sig: Some([8; 64]),
            seq: Some(4),
            salt: b"salt".to_vec(),
            cas: Some(3),
        })));
        roundtrip(Message {
            tid: vec![7],
            body: Body::Response(Response {
                id: Some(id(6)),
                nodes: vec![CompactNode { id: id(7), addr }, CompactNode { id: id(8), addr }],
                values: vec![addr],
                values6: vec![addr6],
                nodes6: vec![CompactNode6 { id: id(11), addr: addr6 }],
                token: Some(vec![1, 2, 3, 4]),
                value: Some(Value::Bytes(b"Hello World!".to_vec())),
                key: None,
                sig: None,
                seq: None,
                samples: vec![id(9), id(10)],
                interval: Some(21600),
                num: Some(2),
                seeds_filter: Some(Box::new(ScrapeFilter([0x0f; 256]))),
                peers_filter: Some(Box::new(ScrapeFilter([0xf0; 256]))),
                items: vec![],
            }),
            version: None,
            ip: Some(addr6.into()),
            read_only: true,
        });
    }

    #[test]
    fn an_entry_knows_its_size_and_the_largest_reply_fits_a_datagram() {
        let biggest = MutableItem {
            key: [1; 32],
            salt: vec![2; MAX_SALT],
            seq: i64::MIN,
            value: Value::Bytes(vec![3; MAX_VALUE - 4]),
            sig: [4; 64],
        };
        assert_eq!(biggest.value.encode().len(), MAX_VALUE);
        for it in [biggest.clone(), MutableItem { salt: vec![], seq: 7, ..biggest.clone() }] {
            let r = Response { items: vec![it.clone()], ..Response::default() };
            let bare = Response::default();
            let m = |r: Response| Message {
                tid: vec![0; 4],
                body: Body::Response(r),
                version: None,
                ip: None,
                read_only: false,
            };
            assert_eq!(
                m(r).encode().len() - m(bare).encode().len(),
                "5:itemsle".len() + it.wire_len()
            );
        }
        // One largest entry, both families' nodes, a token and our address: one datagram.
        let addr = SocketAddrV4::new(Ipv4Addr::new(1, 2, 3, 4), 5);
        let addr6 = SocketAddrV6::new(Ipv6Addr::LOCALHOST, 6, 0, 0);
        let full = Message {
            tid: vec![0; MAX_TID],
            body: Body::Response(Response {
                id: Some(id(1)),
                nodes: vec![CompactNode { id: id(2), addr }; 8],
                nodes6: vec![CompactNode6 { id: id(3), addr: addr6 }; 8],
                token: Some(vec![9; MAX_TOKEN]),
                items: vec![biggest],
                ..Response::default()
            }),
            version: Some(vec![b'v'; 4]),
            ip: Some(addr6.into()),
            read_only: false,
        };
        assert!(full.encode().len() <= MAX_PACKET, "{}", full.encode().len());
        roundtrip(full);
    }

    #[test]
    fn keyword_index_messages_round_trip_and_reply_lists_are_capped() {
        let item = |n: u8| MutableItem {
            key: [n; 32],
            salt: vec![n; 20],
            seq: i64::from(n),
            value: Value::Bytes(vec![b'r'; 100]),
            sig: [n; 64],
        };
        let q = |method| Message {
            tid: vec![1, 2],
            body: Body::Query { id: id(1), method, want: Want::default() },
            version: None,
            ip: None,
            read_only: false,
        };
        roundtrip(q(Method::IndexGet { target: id(3), token: None }));
        roundtrip(q(Method::IndexGet { target: id(3), token: Some(b"tok".to_vec()) }));
        roundtrip(q(Method::IndexPut { target: id(3), token: b"tok".to_vec(), item: item(4) }));
        let unsalted = MutableItem { salt: vec![], ..item(5) };
        roundtrip(q(Method::IndexPut { target: id(3), token: b"t".to_vec(), item: unsalted }));
        let reply = |items: Vec<MutableItem>| Message {
            tid: vec![7],
            body: Body::Response(Response { id: Some(id(6)), items, ..Response::default() }),
            version: None,
            ip: None,
            read_only: false,
        };
        roundtrip(reply(
            (0..MAX_ITEMS as u8).map(|n| MutableItem { value: Value::Int(1), ..item(n) }).collect(),
        ));
        // One entry too many, or one missing its signature, and the reply is refused.
        let long = reply(
            (0..=MAX_ITEMS as u8)
                .map(|n| MutableItem { value: Value::Int(1), salt: vec![], ..item(n) })
                .collect(),
        );
        assert_eq!(Message::decode(&long.encode()), Err(KrpcError::Field("r.items")));
        let bytes = reply(vec![item(1)]).encode();
        let cut = String::from_utf8_lossy(&bytes).replace("3:sig64:", "3:sin64:");
        assert_eq!(Message::decode(cut.as_bytes()), Err(KrpcError::Field("r.items.sig")));
        // An index put needs its key, signature and seq.
        let put = q(Method::IndexPut { target: id(3), token: b"t".to_vec(), item: item(2) });
        let no_key = String::from_utf8_lossy(&put.encode()).replacen("1:k32:", "1:j32:", 1);
        assert_eq!(Message::decode(no_key.as_bytes()), Err(KrpcError::Field("a.k")));
    }

    #[test]
    fn hostile_datagrams_are_refused_with_a_reason() {
        let big = vec![b'x'; MAX_PACKET + 1];
        assert_eq!(Message::decode(&big), Err(KrpcError::TooLarge(MAX_PACKET + 1)));
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"le", "not a dictionary"),
            (b"d1:t2:aa1:y1:qe", "query without arguments"),
            (b"d1:ad2:id19:abcdefghij012345678e1:q4:ping1:t2:aa1:y1:qe", "short id"),
            (b"d1:q4:ping1:ad2:id20:abcdefghij0123456789e1:t2:aa1:y1:qe", "unsorted keys"),
            (b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qei1e", "trailing bytes"),
            (b"d1:rd2:id20:abcdefghij01234567895:nodes3:abce1:t2:aa1:y1:re", "nodes not ×26"),
            (b"d1:rd6:valuesl5:abcdeee1:t2:aa1:y1:re", "a 5-byte peer"),
            (b"d1:rd6:nodes65:abcdee1:t2:aa1:y1:re", "nodes6 not x38"),
            (b"d1:rd6:valuesl10:abcdefghijee1:t2:aa1:y1:re", "a 10-byte peer"),
            (b"d2:ip7:abcdefg1:rd2:id20:abcdefghij0123456789e1:t2:aa1:y1:re", "a 7-byte ip"),
            (b"d1:ad2:id20:abcdefghij01234567894:wanti4ee1:q4:ping1:t2:aa1:y1:qe", "want not a list"),
            (b"d1:ad2:id20:abcdefghij01234567894:wantl2:n42:n42:n42:n42:n4ee1:q4:ping1:t2:aa1:y1:qe", "want of 5"),
            (b"d1:rd2:idi3ee1:t2:aa1:y1:re", "an integer id"),
            (b"d1:ad2:id20:abcdefghij01234567894:porti70000e5:token1:x9:info_hash20:mnopqrstuvwxyz123456e1:q13:announce_peer1:t2:aa1:y1:qe", "unsorted args"),
            (b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti70000e5:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe", "port over 65535"),
            (b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t17:aaaaaaaaaaaaaaaaa1:y1:qe", "17-byte tid"),
            (b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:xe", "unknown y"),
            (b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe1:x", "garbage after"),
            (b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:y1:qe", "no tid"),
        ];
        for (bytes, why) in cases {
            assert!(Message::decode(bytes).is_err(), "accepted ({why})");
        }
        // An unknown method keeps its tid, for the 204 reply.
        let unknown = b"d1:ad2:id20:abcdefghij0123456789e1:q5:vote!1:t2:ab1:y1:qe";
        assert_eq!(Message::decode(unknown), Err(KrpcError::UnknownMethod { tid: b"ab".to_vec() }));
        // Nesting past MAX_DEPTH in an unknown key.
        let deep = format!(
            "d1:ad2:id20:abcdefghij01234567891:z{}{}e1:q4:ping1:t2:aa1:y1:qe",
            "l".repeat(MAX_DEPTH),
            "e".repeat(MAX_DEPTH)
        );
        assert!(Message::decode(deep.as_bytes()).is_err(), "nesting past the limit");
        // A BEP 44 value over 1,000 bytes, encoded.
        let mut over = b"d1:ad2:id20:abcdefghij01234567895:token1:x1:v".to_vec();
        over.extend_from_slice(format!("{}:", MAX_VALUE).as_bytes());
        over.extend(std::iter::repeat_n(b'z', MAX_VALUE));
        over.extend_from_slice(b"e1:q3:put1:t2:aa1:y1:qe");
        assert_eq!(Message::decode(&over), Err(KrpcError::Field("v")));
    }

    #[test]
    fn unknown_keys_are_skipped_whatever_their_shape() {
        let m =
            b"d1:ad2:id20:abcdefghij01234567891:zld1:xli1eeeee1:q4:ping1:t2:aa1:y1:q2:zzd1:ali1eeee";
        let got = Message::decode(m).unwrap();
        assert_eq!(
            got.body,
            Body::Query {
                id: NodeId(*b"abcdefghij0123456789"),
                method: Method::Ping,
                want: Want::default()
            }
        );
    }
}
