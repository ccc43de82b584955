//! Chat messages on the wire: signed by their author, end-to-end encrypted when direct.
//!
//! Everything here is pure (no I/O, no clock): the caller passes times and randomness.
//!
//! - A [`Signed`] envelope carries postcard bytes of a [`Content`] and the author's ed25519
//!   signature over `SIGN_CONTEXT || content`. Its message id is SHA-256 of the whole encoded
//!   envelope. Only canonical bytes are accepted (the envelope and the content must each be
//!   exactly what postcard encodes them to, see [`crate::wire::from_canonical`]) and signatures
//!   are checked strictly, so one message has one encoding and one id: a changed byte is either
//!   refused or, for the author alone, a new signed message.
//! - Room messages ([`Content::Room`]) travel on the room's broadcast tree.
//! - Direct messages ([`Content::Direct`]) travel on the shared directory topic, so they reach
//!   the recipient through the overlay even without a direct connection; only the recipient can
//!   read them: the text is sealed with ChaCha20-Poly1305 under a key from X25519 between a
//!   fresh ephemeral key and the recipient's ed25519 key mapped to X25519 (as libsodium's
//!   `crypto_box_seal` over `crypto_sign_ed25519_pk_to_curve25519`), expanded with HKDF-SHA256
//!   bound to both ids.
//! - [`Content::Presence`] announces a nickname on the directory topic so `/msg NICK` works.
//! - [`Sync`] frames are the anti-entropy catch-up between neighbors (never relayed).

use chacha20poly1305::aead::Aead;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use curve25519_dalek::montgomery::MontgomeryPoint;
use ed25519_dalek::VerifyingKey;
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;

use crate::identity::{verify, Identity, NodeId};
use crate::proto::node::TopicId;
use crate::proto::plumtree::MessageId;
use crate::wire;

/// Domain separation for signatures.
const SIGN_CONTEXT: &[u8] = b"swarmcast chat v1\0";
/// Longest room name, in bytes.
pub const MAX_ROOM: usize = 64;
/// Longest nickname, in bytes.
pub const MAX_NICK: usize = 32;
/// Longest message text, in bytes.
pub const MAX_TEXT: usize = 2000;
/// Largest encoded envelope accepted.
pub const MAX_ENVELOPE: usize = 4096;

/// The topic carrying direct messages and presence (not a room anyone can `/join`).
pub fn directory_topic() -> TopicId {
    TopicId(Sha256::digest(b"swarmcast directory v1").into())
}

/// The broadcast topic of a room.
pub fn room_topic(room: &str) -> TopicId {
    let mut h = Sha256::new();
    h.update(b"swarmcast room v1\0");
    h.update(room.as_bytes());
    TopicId(h.finalize().into())
}

/// Checks a room name: 1..=64 bytes of lowercase letters, digits, `-` and `_`.
pub fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_ROOM
        && room
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Checks a nickname: 1..=32 bytes, no control characters or spaces.
pub fn valid_nick(nick: &str) -> bool {
    !nick.is_empty() && nick.len() <= MAX_NICK && nick.chars().all(|c| !c.is_control() && c != ' ')
}

/// What an author says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// A message to a room.
    Room {
        /// Author's id (must match the signature).
        author: NodeId,
        /// Author's nickname at the time.
        nick: String,
        /// Room name.
        room: String,
        /// Author's clock, ms since the Unix epoch.
        sent_ms: u64,
        /// Random, so two equal texts at the same ms still differ.
        nonce: u64,
        /// The text.
        text: String,
    },
    /// An encrypted direct message.
    Direct {
        /// Author's id (must match the signature).
        author: NodeId,
        /// Recipient's id.
        to: NodeId,
        /// Author's clock, ms since the Unix epoch.
        sent_ms: u64,
        /// Ephemeral X25519 public key.
        ephemeral: [u8; 32],
        /// ChaCha20-Poly1305 ciphertext of [`DirectPlain`] (postcard).
        sealed: Vec<u8>,
    },
    /// A nickname announcement.
    Presence {
        /// Author's id (must match the signature).
        author: NodeId,
        /// Nickname.
        nick: String,
        /// Author's clock, ms since the Unix epoch.
        sent_ms: u64,
    },
}

impl Content {
    /// The author.
    pub fn author(&self) -> NodeId {
        match self {
            Content::Room { author, .. }
            | Content::Direct { author, .. }
            | Content::Presence { author, .. } => *author,
        }
    }

    /// The author's timestamp.
    pub fn sent_ms(&self) -> u64 {
        match self {
            Content::Room { sent_ms, .. }
            | Content::Direct { sent_ms, .. }
            | Content::Presence { sent_ms, .. } => *sent_ms,
        }
    }

    /// The topic this content travels on.
    pub fn topic(&self) -> TopicId {
        match self {
            Content::Room { room, .. } => room_topic(room),
            _ => directory_topic(),
        }
    }
}

/// The plaintext inside a direct message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectPlain {
    /// Author's nickname.
    pub nick: String,
    /// The text.
    pub text: String,
}

/// A content and its author's signature, as broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// postcard bytes of a [`Content`].
    pub content: Vec<u8>,
    /// ed25519 signature over `SIGN_CONTEXT || content`.
    pub sig: Vec<u8>,
}

/// A verified message: its id, its raw envelope (to store and re-serve) and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// SHA-256 of `raw`.
    pub id: MessageId,
    /// The encoded envelope.
    pub raw: Vec<u8>,
    /// What it says.
    pub content: Content,
}

/// Why an envelope was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Larger than [`MAX_ENVELOPE`].
    #[error("envelope of {0} bytes exceeds {MAX_ENVELOPE}")]
    TooLarge(usize),
    /// Not a valid encoding.
    #[error("malformed envelope")]
    Malformed,
    /// The signature does not match the author.
    #[error("bad signature: forged or altered message")]
    BadSignature,
    /// A field is out of bounds (room name, nick, text length).
    #[error("invalid field: {0}")]
    Invalid(&'static str),
    /// A direct message that is not for us, or cannot be opened.
    #[error("cannot decrypt direct message")]
    Undecryptable,
    /// The message arrived on a topic other than its own.
    #[error("message on the wrong topic")]
    WrongTopic,
}

fn id_of(raw: &[u8]) -> MessageId {
    MessageId(Sha256::digest(raw).into())
}

/// Signs and encodes `content` as `identity`; returns the verified form.
pub fn seal(identity: &Identity, content: Content) -> Verified {
    let bytes = postcard::to_allocvec(&content).expect("postcard encodes any Content to a Vec");
    let mut signed = SIGN_CONTEXT.to_vec();
    signed.extend_from_slice(&bytes);
    let sig = identity.sign(&signed).to_vec();
    let raw = postcard::to_allocvec(&Signed { content: bytes, sig })
        .expect("postcard encodes any Signed to a Vec");
    Verified { id: id_of(&raw), raw, content }
}

/// Decodes and verifies an envelope received on `topic`.
pub fn open(topic: TopicId, raw: &[u8]) -> Result<Verified, EnvelopeError> {
    if raw.len() > MAX_ENVELOPE {
        return Err(EnvelopeError::TooLarge(raw.len()));
    }
    // Canonical only: postcard alone would also take trailing bytes and over-long varints, and
    // each such variant of a signed envelope would be a "new" message with a new id.
    let signed: Signed = wire::from_canonical(raw).map_err(|_| EnvelopeError::Malformed)?;
    let content: Content =
        wire::from_canonical(&signed.content).map_err(|_| EnvelopeError::Malformed)?;
    let sig: [u8; 64] = signed.sig.as_slice().try_into().map_err(|_| EnvelopeError::Malformed)?;
    let mut msg = SIGN_CONTEXT.to_vec();
    msg.extend_from_slice(&signed.content);
    if !verify(&content.author(), &msg, &sig) {
        return Err(EnvelopeError::BadSignature);
    }
    match &content {
        Content::Room { nick, room, text, .. } => {
            if !valid_room(room) {
                return Err(EnvelopeError::Invalid("room"));
            }
            if !valid_nick(nick) {
                return Err(EnvelopeError::Invalid("nick"));
            }
            if text.len() > MAX_TEXT {
                return Err(EnvelopeError::Invalid("text"));
            }
        }
        Content::Presence { nick, .. } if !valid_nick(nick) => {
            return Err(EnvelopeError::Invalid("nick"));
        }
        _ => {}
    }
    if content.topic() != topic {
        return Err(EnvelopeError::WrongTopic);
    }
    Ok(Verified { id: id_of(raw), raw: raw.to_vec(), content })
}

fn dm_key(shared: &MontgomeryPoint, ephemeral: &[u8; 32], from: &NodeId, to: &NodeId) -> [u8; 32] {
    let mut info = b"swarmcast dm v1".to_vec();
    info.extend_from_slice(ephemeral);
    info.extend_from_slice(&from.0);
    info.extend_from_slice(&to.0);
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(None, shared.as_bytes())
        .expand(&info, &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

/// Builds an encrypted direct message to `to`. `ephemeral_secret` must be fresh random bytes.
pub fn seal_direct(
    identity: &Identity,
    to: NodeId,
    plain: &DirectPlain,
    sent_ms: u64,
    ephemeral_secret: [u8; 32],
) -> Result<Verified, EnvelopeError> {
    let recipient = VerifyingKey::from_bytes(&to.0).map_err(|_| EnvelopeError::Invalid("to"))?;
    let ephemeral = MontgomeryPoint::mul_base_clamped(ephemeral_secret).to_bytes();
    let shared = recipient.to_montgomery().mul_clamped(ephemeral_secret);
    let key = dm_key(&shared, &ephemeral, &identity.id(), &to);
    let bytes = postcard::to_allocvec(plain).expect("postcard encodes DirectPlain");
    let sealed = ChaCha20Poly1305::new(&key.into())
        .encrypt(&[0u8; 12].into(), bytes.as_slice())
        .map_err(|_| EnvelopeError::Undecryptable)?;
    let content = Content::Direct { author: identity.id(), to, sent_ms, ephemeral, sealed };
    Ok(seal(identity, content))
}

/// Opens a direct message addressed to `identity` (the key is fresh per message, so the fixed
/// nonce is never reused with one key).
pub fn open_direct(identity: &Identity, content: &Content) -> Result<DirectPlain, EnvelopeError> {
    let Content::Direct { author, to, ephemeral, sealed, .. } = content else {
        return Err(EnvelopeError::Undecryptable);
    };
    if *to != identity.id() {
        return Err(EnvelopeError::Undecryptable);
    }
    let scalar = identity.signing_key().to_scalar_bytes();
    let shared = MontgomeryPoint(*ephemeral).mul_clamped(scalar);
    if shared.as_bytes() == &[0u8; 32] {
        return Err(EnvelopeError::Undecryptable);
    }
    let key = dm_key(&shared, ephemeral, author, to);
    let bytes = ChaCha20Poly1305::new(&key.into())
        .decrypt(&[0u8; 12].into(), sealed.as_slice())
        .map_err(|_| EnvelopeError::Undecryptable)?;
    let plain: DirectPlain =
        postcard::from_bytes(&bytes).map_err(|_| EnvelopeError::Undecryptable)?;
    if !valid_nick(&plain.nick) || plain.text.len() > MAX_TEXT {
        return Err(EnvelopeError::Invalid("direct message"));
    }
    Ok(plain)
}

/// Most ids in one [`Sync::Request`] (a longer one is ignored).
pub const MAX_SYNC_IDS: usize = 1024;
/// Most envelopes in one [`Sync::Reply`] (they also must fit one frame).
pub const MAX_SYNC_MESSAGES: usize = 64;

/// Most DHT addresses in one [`Sync::DhtContacts`] (a longer list is ignored).
pub const MAX_DHT_CONTACTS: usize = 4;

/// The DHT addresses of a [`Sync::DhtContacts`] from the neighbour at `from` worth trying: at
/// most [`MAX_DHT_CONTACTS`], each on the IP its overlay connection comes from (a neighbour
/// cannot aim our DHT at a third party), none with port 0.
pub fn dht_contacts_from(addrs: Vec<SocketAddr>, from: SocketAddr) -> Vec<SocketAddr> {
    if addrs.len() > MAX_DHT_CONTACTS {
        return Vec::new();
    }
    addrs.into_iter().filter(|a| a.port() != 0 && a.ip() == from.ip()).collect()
}

/// Frames between neighbors: anti-entropy, and the DHT contacts that let a node that knows
/// only an anchor join the DHT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sync {
    /// "I have these ids of `topic` sent at or after `since_ms`; send me what else you have."
    Request {
        /// The topic.
        topic: TopicId,
        /// Author time from which the requester's list is complete.
        since_ms: u64,
        /// Ids the requester has (at most [`MAX_SYNC_IDS`]).
        have: Vec<MessageId>,
    },
    /// Envelopes the requester lacked (at most [`MAX_SYNC_MESSAGES`]); `more` if there are more.
    Reply {
        /// The topic.
        topic: TopicId,
        /// Encoded envelopes.
        messages: Vec<Vec<u8>>,
        /// True when the responder had more than it sent; the requester asks again.
        more: bool,
    },
    /// "Where does your DHT node listen?"
    DhtAsk,
    /// The answer: the UDP addresses of the responder's DHT node (at most
    /// [`MAX_DHT_CONTACTS`]; none if it runs none). A claim, used only to join the DHT.
    DhtContacts {
        /// The addresses.
        addrs: Vec<SocketAddr>,
    },
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn ident(seed: u64) -> Identity {
        Identity::generate(&mut ChaCha8Rng::seed_from_u64(seed))
    }

    fn room_msg(who: &Identity, text: &str) -> Content {
        let (author, nick) = (who.id(), "ann".to_string());
        Content::Room {
            author,
            nick,
            room: "general".into(),
            sent_ms: 5,
            nonce: 1,
            text: text.into(),
        }
    }

    #[test]
    fn dht_contacts_only_on_the_neighbours_own_ip() {
        let from: SocketAddr = "10.0.0.5:4500".parse().unwrap();
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let named = vec![a("10.0.0.5:6881"), a("10.0.0.9:6881"), a("10.0.0.5:0"), a("[::1]:7")];
        assert_eq!(dht_contacts_from(named, from), vec![a("10.0.0.5:6881")]);
        let too_many = vec![a("10.0.0.5:1"); MAX_DHT_CONTACTS + 1];
        assert!(dht_contacts_from(too_many, from).is_empty());
    }

    #[test]
    fn signed_room_message_round_trips_and_alterations_are_refused() {
        let ann = ident(1);
        let v = seal(&ann, room_msg(&ann, "hello"));
        let topic = room_topic("general");
        assert_eq!(open(topic, &v.raw), Ok(v.clone()));
        assert_eq!(open(room_topic("other"), &v.raw), Err(EnvelopeError::WrongTopic));
        // Flip every byte in turn: never accepted as the same message, never a panic.
        for i in 0..v.raw.len() {
            let mut bad = v.raw.clone();
            bad[i] ^= 0x01;
            if let Ok(w) = open(topic, &bad) {
                panic!("altered byte {i} accepted as {w:?}");
            }
        }
        // A forger signs with its own key but claims ann's id.
        let eve = ident(2);
        let forged = seal(&eve, room_msg(&ann, "I am ann"));
        assert_eq!(open(topic, &forged.raw), Err(EnvelopeError::BadSignature));
        assert_eq!(open(topic, &[0xff; 5000]), Err(EnvelopeError::TooLarge(5000)));
    }

    /// Issue 9 item 11: one appended byte, or a length re-written as an over-long varint, must
    /// not turn a signed message into a "new" one with its own id.
    #[test]
    fn only_the_canonical_encoding_of_an_envelope_is_accepted() {
        let ann = ident(1);
        let v = seal(&ann, room_msg(&ann, "hello"));
        let topic = room_topic("general");
        let mut appended = v.raw.clone();
        appended.push(0);
        assert_eq!(open(topic, &appended), Err(EnvelopeError::Malformed));
        // The envelope starts with the content's length as a one-byte varint (< 128 bytes);
        // write it as two bytes.
        let len = v.raw[0];
        assert!(len < 0x80, "short content");
        let mut over_long = vec![len | 0x80, 0x00];
        over_long.extend_from_slice(&v.raw[1..]);
        assert_eq!(open(topic, &over_long), Err(EnvelopeError::Malformed));
        // The signed content itself with a trailing byte: only ann could sign it, but it is
        // still refused.
        let Signed { mut content, .. } = postcard::from_bytes(&v.raw).expect("sealed above");
        content.push(0);
        let mut signed = SIGN_CONTEXT.to_vec();
        signed.extend_from_slice(&content);
        let sig = ann.sign(&signed).to_vec();
        let raw = postcard::to_allocvec(&Signed { content, sig }).expect("encodes");
        assert_eq!(open(topic, &raw), Err(EnvelopeError::Malformed));
        assert_eq!(open(topic, &v.raw), Ok(v));
    }

    /// What fuzz/fuzz_targets/overlay_wire.rs asserts, run in every `cargo test` on random
    /// mutations of valid inputs (flipped, inserted, deleted bytes, and a byte re-written as an
    /// over-long varint): whatever is accepted is canonical, `encode(decode(x)) == x`.
    #[test]
    fn accepted_inputs_are_canonical_under_random_mutation() {
        use crate::driver::Peer;
        use crate::proto::hyparview;
        use crate::proto::node::Wire;
        use crate::proto::plumtree;

        let (ann, bob) = (ident(1), ident(2));
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let room = seal(&ann, room_msg(&ann, "hello"));
        let plain = DirectPlain { nick: "ann".into(), text: "hi".into() };
        let dm = seal_direct(&ann, bob.id(), &plain, 7, rng.random()).expect("valid recipient");
        let presence =
            seal(&ann, Content::Presence { author: ann.id(), nick: "ann".into(), sent_ms: 300 });
        let peer = Peer { id: ann.id(), addr: "127.0.0.1:4500".parse().expect("addr") };
        let frames: Vec<Wire<Peer>> = vec![
            Wire::Gossip {
                topic: room_topic("general"),
                msg: plumtree::Message::Gossip { id: room.id, payload: room.raw.clone(), round: 3 },
            },
            Wire::Gossip {
                topic: directory_topic(),
                msg: plumtree::Message::IHave(vec![(dm.id, 1), (presence.id, 200)]),
            },
            Wire::Membership(hyparview::Message::Shuffle {
                origin: peer,
                ttl: 5,
                nodes: vec![peer, peer],
            }),
            Wire::Direct(vec![1, 2, 3]),
        ];
        let syncs = [
            Sync::Request { topic: directory_topic(), since_ms: 1 << 40, have: vec![room.id] },
            Sync::Reply { topic: directory_topic(), messages: vec![dm.raw.clone()], more: true },
        ];
        let mut seeds: Vec<Vec<u8>> =
            frames.iter().map(|f| wire::encode(f).expect("small frame")).collect();
        seeds.extend([room.raw.clone(), dm.raw.clone(), presence.raw.clone()]);
        seeds.extend(syncs.iter().map(|s| postcard::to_allocvec(s).expect("encodes")));

        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut x = seeds[rng.random_range(0..seeds.len())].clone();
            for _ in 0..rng.random_range(1..=2) {
                let i = rng.random_range(0..x.len());
                match rng.random_range(0..4) {
                    0 => x[i] ^= 1 << rng.random_range(0..8),
                    1 => x.insert(i, rng.random()),
                    2 => {
                        x.remove(i);
                    }
                    _ if x[i] < 0x80 => x.splice(i..=i, [x[i] | 0x80, 0]).for_each(drop),
                    _ => {}
                }
                if x.is_empty() {
                    x.push(0);
                }
            }
            if let Ok(msg) = wire::decode::<Wire<Peer>>(&x) {
                accepted += 1;
                assert_eq!(wire::encode(&msg).expect("re-encodes"), x);
            }
            if let Ok(v) = open(directory_topic(), &x).or_else(|_| open(room_topic("general"), &x))
            {
                accepted += 1;
                let signed: Signed = postcard::from_bytes(&x).expect("open decoded it");
                assert_eq!(postcard::to_allocvec(&signed).expect("encodes"), x);
                assert_eq!(postcard::to_allocvec(&v.content).expect("encodes"), signed.content);
            }
            if let Ok(sync) = wire::from_canonical::<Sync>(&x) {
                accepted += 1;
                assert_eq!(postcard::to_allocvec(&sync).expect("encodes"), x);
            }
        }
        assert!(accepted > 100, "the mutations exercise the accepting paths ({accepted})");
    }

    #[test]
    fn direct_message_opens_for_recipient_only() {
        let (ann, bob, eve) = (ident(1), ident(2), ident(3));
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let plain = DirectPlain { nick: "ann".into(), text: "secret plan".into() };
        let v = seal_direct(&ann, bob.id(), &plain, 7, rng.random()).expect("valid recipient");
        let got = open(directory_topic(), &v.raw).expect("signed by ann");
        assert_eq!(open_direct(&bob, &got.content), Ok(plain));
        assert_eq!(open_direct(&eve, &got.content), Err(EnvelopeError::Undecryptable));
        assert!(!v.raw.windows(6).any(|w| w == b"secret"), "plaintext visible on the wire");
        // Eve re-addresses the sealed box to herself: the signature no longer matches.
        let Content::Direct { author, sent_ms, ephemeral, sealed, .. } = got.content else {
            panic!("a direct message");
        };
        let readdressed = Content::Direct { author, to: eve.id(), sent_ms, ephemeral, sealed };
        assert_eq!(open_direct(&eve, &readdressed), Err(EnvelopeError::Undecryptable));
    }
}
