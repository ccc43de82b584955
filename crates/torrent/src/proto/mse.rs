//! Message Stream Encryption / Protocol Encryption (MSE/PE, the Vuze and libtorrent spec) as a
//! sans-IO handshake core: a Diffie-Hellman exchange over the 768-bit prime, then RC4 streams
//! keyed from the shared secret and the torrent's info-hash (the SKEY), each with its first
//! 1,024 bytes discarded. It hides the BitTorrent handshake from anyone who does not know the
//! info-hash, which is what lets us talk to peers (and through networks) that refuse plain
//! BitTorrent.
//!
//! Wire, A the initiator and B the responder (`HASH` is SHA-1, `S` the DH secret, `VC` eight
//! zero bytes, `ENCRYPT` RC4 with A's key, `ENCRYPT2` with B's, each pad 0..=512 random bytes):
//!
//! ```text
//! A -> B  Ya, PadA
//! B -> A  Yb, PadB
//! A -> B  HASH('req1', S), HASH('req2', SKEY) xor HASH('req3', S),
//!         ENCRYPT(VC, crypto_provide, len(PadC), PadC, len(IA)), ENCRYPT(IA)
//! B -> A  ENCRYPT2(VC, crypto_select, len(PadD), PadD), then the payload
//! ```
//!
//! After that the payload goes encrypted both ways if `crypto_select` is RC4, in plain if it is
//! plaintext (only the handshake was hidden). IA, the initiator's first payload, is always
//! encrypted; we put our BitTorrent handshake there.
//!
//! Contract: as every core of the crate, [`Mse::handle`] takes time and input, [`Mse::poll`]
//! drains outputs, [`Mse::next_deadline`] says when to call back. Everything the peer sends is
//! hostile: the pads, the synchronisation scans and IA are bounded, a key outside `(1, P-1)` or
//! a nonzero VC fails the handshake, and the input buffer never holds more than
//! [`MAX_BUFFERED`] unparsed bytes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use num_bigint::BigUint;
use rand::{Rng, RngCore};
use rc4::consts::U20;
use rc4::{KeyInit, Rc4, StreamCipher};
use sha1::{Digest, Sha1};

use crate::metainfo::InfoHash;

/// The DH prime of the spec (768 bits), big-endian.
const PRIME: [u8; 96] = hex_literal(
    b"FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A36210000000000090563",
);
/// Bytes of a public key and of the shared secret.
pub const KEY_LEN: usize = 96;
/// Longest pad either side may send.
pub const MAX_PAD: usize = 512;
/// Longest initial payload (IA) an initiator may send: the spec's 2-byte length allows any.
/// (libtorrent sends its 68-byte BitTorrent handshake there.)
pub const MAX_IA: usize = u16::MAX as usize;
/// Most bytes the core holds unparsed from the peer before the handshake completes: a key and
/// the largest pad while it looks for the synchronisation marker, or the largest IA while it
/// waits for all of it, with room to spare. Bytes after the handshake's end are payload and do
/// not count (see [`Mse::handle`]).
pub const MAX_BUFFERED: usize = 68 * 1024;
/// How long a handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of RC4 keystream thrown away before use.
const DISCARD: usize = 1024;

/// The `crypto_provide` / `crypto_select` bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CryptoSet(pub u32);

impl CryptoSet {
    pub const PLAINTEXT: CryptoSet = CryptoSet(0x01);
    pub const RC4: CryptoSet = CryptoSet(0x02);
    pub const BOTH: CryptoSet = CryptoSet(0x03);

    pub fn contains(self, other: CryptoSet) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }
}

/// What was agreed for the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crypto {
    /// Only the handshake was hidden.
    Plaintext,
    /// The payload goes through [`Cipher`]s both ways.
    Rc4,
}

/// One direction's RC4 keystream, its first 1,024 bytes already discarded.
pub struct Cipher(Rc4<U20>);

impl Cipher {
    fn new(key: [u8; 20]) -> Self {
        let mut rc4 = Rc4::<U20>::new(&key.into());
        let mut skip = [0u8; DISCARD];
        rc4.apply_keystream(&mut skip);
        Cipher(rc4)
    }

    /// Encrypts or decrypts `data` in place (the same operation), moving the stream on.
    pub fn apply(&mut self, data: &mut [u8]) {
        self.0.apply_keystream(data);
    }
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher")
    }
}

/// A completed handshake.
#[derive(Debug)]
pub struct Established {
    /// The torrent the connection is for (the SKEY both sides proved they know).
    pub info_hash: InfoHash,
    pub crypto: Crypto,
    /// For what we send, with [`Crypto::Rc4`].
    pub encrypt: Option<Cipher>,
    /// For what we receive, with [`Crypto::Rc4`].
    pub decrypt: Option<Cipher>,
    /// Payload the peer already sent, decrypted: for a responder, the initiator's IA first.
    pub received: Vec<u8>,
}

/// What the core asks of its driver.
#[derive(Debug)]
pub enum Output {
    /// Write these bytes to the peer.
    Send(Vec<u8>),
    /// The handshake is done; payload flows from here. (Boxed: the two RC4 states are large.)
    Done(Box<Established>),
    /// The handshake failed: close the connection.
    Failed(String),
}

/// Which side we are.
pub enum Role {
    /// We dialled: we know the torrent, offer `provide`, and send `initial_payload` as IA.
    Initiator { info_hash: InfoHash, provide: CryptoSet, initial_payload: Vec<u8> },
    /// We were dialled: any of `torrents` may be asked for; we select from `allowed`,
    /// plaintext when both are offered and allowed (as libtorrent does unless `prefer_rc4`).
    Responder { torrents: Vec<InfoHash>, allowed: CryptoSet },
}

enum State {
    /// Initiator: waiting for Yb.
    AwaitKey,
    /// Responder: waiting for Ya.
    AwaitInitiatorKey,
    /// Initiator: scanning PadB for ENCRYPT2(VC).
    SyncVc {
        vc: [u8; 8],
        scanned: usize,
    },
    /// Initiator: crypto_select and len(PadD).
    AwaitSelect,
    /// Initiator: PadD.
    SkipPadD {
        len: usize,
        select: Crypto,
    },
    /// Responder: scanning PadA for HASH('req1', S).
    SyncReq1 {
        req1: [u8; 20],
        scanned: usize,
    },
    /// Responder: the obfuscated SKEY hash.
    AwaitSkey,
    /// Responder: VC, crypto_provide and len(PadC).
    AwaitProvide,
    /// Responder: PadC and len(IA).
    SkipPadC {
        len: usize,
        provide: CryptoSet,
    },
    /// Responder: IA.
    AwaitIa {
        len: usize,
        provide: CryptoSet,
    },
    Finished,
}

/// Where a synchronisation scan stands ([`Mse::sync`]).
enum Sync {
    Found,
    /// Not yet; scan again from this offset when more bytes come.
    Waiting(usize),
}

/// One MSE handshake, either side.
pub struct Mse {
    role: Role,
    state: State,
    private: BigUint,
    secret: Option<[u8; KEY_LEN]>,
    info_hash: Option<InfoHash>,
    encrypt: Option<Cipher>,
    decrypt: Option<Cipher>,
    buf: Vec<u8>,
    out: VecDeque<Output>,
    deadline: Instant,
    /// PadC (initiator) or PadB (responder): chosen at the start from the RNG.
    pad: Vec<u8>,
}

impl Mse {
    /// Starts a handshake at `now`; randomness (the private key, the pads) comes from `rng`.
    /// An initiator's first bytes are ready in [`Mse::poll`] at once.
    pub fn new(now: Instant, role: Role, rng: &mut impl RngCore) -> Self {
        let mut key = [0u8; 20];
        rng.fill_bytes(&mut key);
        let private = BigUint::from_bytes_be(&key);
        let mut pad = vec![0u8; rng.random_range(0..=MAX_PAD)];
        rng.fill_bytes(&mut pad);
        let initiator = matches!(role, Role::Initiator { .. });
        let mut mse = Mse {
            role,
            state: if initiator { State::AwaitKey } else { State::AwaitInitiatorKey },
            private,
            secret: None,
            info_hash: None,
            encrypt: None,
            decrypt: None,
            buf: Vec::new(),
            out: VecDeque::new(),
            deadline: now + HANDSHAKE_TIMEOUT,
            pad,
        };
        if initiator {
            let mut first = mse.public_key().to_vec();
            let mut pad_a = vec![0u8; rng.random_range(0..=MAX_PAD)];
            rng.fill_bytes(&mut pad_a);
            first.extend_from_slice(&pad_a);
            mse.out.push_back(Output::Send(first));
        }
        mse
    }

    /// When [`Mse::handle`] must be called even if nothing arrives (the handshake's deadline).
    pub fn next_deadline(&self) -> Option<Instant> {
        (!matches!(self.state, State::Finished)).then_some(self.deadline)
    }

    /// Feeds bytes received from the peer (empty to just let time pass). Bytes are taken as
    /// far as the handshake can parse them, at most [`MAX_BUFFERED`] unparsed at a time; what
    /// follows the end of the handshake in the same call is payload and goes to
    /// [`Established::received`] (decrypted), however long.
    pub fn handle(&mut self, now: Instant, received: &[u8]) {
        if matches!(self.state, State::Finished) {
            return;
        }
        if now >= self.deadline {
            return self.fail("encryption handshake timed out");
        }
        let mut input = received;
        loop {
            let room = MAX_BUFFERED - self.buf.len();
            if room == 0 {
                return self.fail("peer sent too much during the encryption handshake");
            }
            let (now_in, later) = input.split_at(room.min(input.len()));
            self.buf.extend_from_slice(now_in);
            input = later;
            if let Err(why) = self.advance() {
                return self.fail(&why);
            }
            if matches!(self.state, State::Finished) {
                // Done: the rest is payload, in the stream the handshake ended on.
                if let Some(Output::Done(est)) = self.out.back_mut() {
                    let mut rest = input.to_vec();
                    if let Some(d) = &mut est.decrypt {
                        d.apply(&mut rest);
                    }
                    est.received.extend_from_slice(&rest);
                }
                return;
            }
            if input.is_empty() {
                return;
            }
        }
    }

    /// The next output, if any.
    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn fail(&mut self, why: &str) {
        self.state = State::Finished;
        self.buf.clear();
        self.out.push_back(Output::Failed(why.to_string()));
    }

    fn public_key(&self) -> [u8; KEY_LEN] {
        let y = BigUint::from(2u32).modpow(&self.private, &BigUint::from_bytes_be(&PRIME));
        to_key_bytes(&y)
    }

    /// Reads the peer's public key from the buffer and computes the shared secret.
    fn take_key(&mut self) -> Result<[u8; KEY_LEN], String> {
        let theirs = BigUint::from_bytes_be(&self.buf[..KEY_LEN]);
        self.buf.drain(..KEY_LEN);
        let p = BigUint::from_bytes_be(&PRIME);
        // 0, 1 and P-1 (and anything not below P) would make the secret guessable.
        if theirs <= BigUint::from(1u32) || theirs >= &p - 1u32 {
            return Err("peer sent an invalid encryption key".into());
        }
        let s = to_key_bytes(&theirs.modpow(&self.private, &p));
        self.secret = Some(s);
        Ok(s)
    }

    /// Takes `n` bytes off the buffer, decrypted.
    fn take_decrypted(&mut self, n: usize) -> Vec<u8> {
        let mut bytes: Vec<u8> = self.buf.drain(..n).collect();
        if let Some(d) = &mut self.decrypt {
            d.apply(&mut bytes);
        }
        bytes
    }

    fn advance(&mut self) -> Result<(), String> {
        loop {
            match std::mem::replace(&mut self.state, State::Finished) {
                State::AwaitKey => {
                    if self.buf.len() < KEY_LEN {
                        self.state = State::AwaitKey;
                        return Ok(());
                    }
                    let s = self.take_key()?;
                    let Role::Initiator { info_hash, provide, initial_payload } = &self.role else {
                        unreachable!("only an initiator awaits the responder's key");
                    };
                    let (info_hash, provide) = (*info_hash, *provide);
                    let ia = initial_payload.clone();
                    self.info_hash = Some(info_hash);
                    let mut encrypt = Cipher::new(hash3(b"keyA", &s, &info_hash.0));
                    let mut decrypt = Cipher::new(hash3(b"keyB", &s, &info_hash.0));
                    let mut msg = Vec::with_capacity(40 + 16 + self.pad.len() + ia.len());
                    msg.extend_from_slice(&hash2(b"req1", &s));
                    let req2 = hash2(b"req2", &info_hash.0);
                    let req3 = hash2(b"req3", &s);
                    msg.extend(req2.iter().zip(req3).map(|(a, b)| a ^ b));
                    let start = msg.len();
                    msg.extend_from_slice(&[0u8; 8]);
                    msg.extend_from_slice(&provide.0.to_be_bytes());
                    msg.extend_from_slice(&(self.pad.len() as u16).to_be_bytes());
                    msg.extend_from_slice(&self.pad);
                    msg.extend_from_slice(&(ia.len() as u16).to_be_bytes());
                    msg.extend_from_slice(&ia);
                    encrypt.apply(&mut msg[start..]);
                    self.out.push_back(Output::Send(msg));
                    // The responder's VC, as it will look on the wire.
                    let mut vc = [0u8; 8];
                    decrypt.apply(&mut vc);
                    self.encrypt = Some(encrypt);
                    self.decrypt = Some(decrypt);
                    self.state = State::SyncVc { vc, scanned: 0 };
                }
                State::SyncVc { vc, scanned } => match self.sync(&vc, scanned)? {
                    Sync::Found => self.state = State::AwaitSelect,
                    Sync::Waiting(scanned) => {
                        self.state = State::SyncVc { vc, scanned };
                        return Ok(());
                    }
                },
                State::AwaitSelect => {
                    if self.buf.len() < 6 {
                        self.state = State::AwaitSelect;
                        return Ok(());
                    }
                    let head = self.take_decrypted(6);
                    let select =
                        CryptoSet(u32::from_be_bytes([head[0], head[1], head[2], head[3]]));
                    let len = u16::from_be_bytes([head[4], head[5]]) as usize;
                    let Role::Initiator { provide, .. } = &self.role else {
                        unreachable!("only an initiator awaits crypto_select");
                    };
                    let select = if select == CryptoSet::RC4 && provide.contains(CryptoSet::RC4) {
                        Crypto::Rc4
                    } else if select == CryptoSet::PLAINTEXT
                        && provide.contains(CryptoSet::PLAINTEXT)
                    {
                        Crypto::Plaintext
                    } else {
                        return Err(format!(
                            "peer selected an encryption we did not offer ({:#x})",
                            select.0
                        ));
                    };
                    if len > MAX_PAD {
                        return Err("peer sent a pad longer than 512 bytes".into());
                    }
                    self.state = State::SkipPadD { len, select };
                }
                State::SkipPadD { len, select } => {
                    if self.buf.len() < len {
                        self.state = State::SkipPadD { len, select };
                        return Ok(());
                    }
                    self.take_decrypted(len);
                    return self.finish(select, Vec::new());
                }
                State::AwaitInitiatorKey => {
                    if self.buf.len() < KEY_LEN {
                        self.state = State::AwaitInitiatorKey;
                        return Ok(());
                    }
                    let s = self.take_key()?;
                    let mut reply = self.public_key().to_vec();
                    reply.extend_from_slice(&self.pad);
                    self.out.push_back(Output::Send(reply));
                    self.state = State::SyncReq1 { req1: hash2(b"req1", &s), scanned: 0 };
                }
                State::SyncReq1 { req1, scanned } => match self.sync(&req1, scanned)? {
                    Sync::Found => self.state = State::AwaitSkey,
                    Sync::Waiting(scanned) => {
                        self.state = State::SyncReq1 { req1, scanned };
                        return Ok(());
                    }
                },
                State::AwaitSkey => {
                    if self.buf.len() < 20 {
                        self.state = State::AwaitSkey;
                        return Ok(());
                    }
                    let s = self.secret.expect("the secret is known once the keys are exchanged");
                    let req3 = hash2(b"req3", &s);
                    let req2: Vec<u8> =
                        self.buf.drain(..20).zip(req3).map(|(a, b)| a ^ b).collect();
                    let Role::Responder { torrents, .. } = &self.role else {
                        unreachable!("only a responder awaits the SKEY");
                    };
                    let Some(info_hash) =
                        torrents.iter().copied().find(|ih| hash2(b"req2", &ih.0)[..] == req2[..])
                    else {
                        return Err("peer asked for a torrent we do not have".into());
                    };
                    self.info_hash = Some(info_hash);
                    self.decrypt = Some(Cipher::new(hash3(b"keyA", &s, &info_hash.0)));
                    self.encrypt = Some(Cipher::new(hash3(b"keyB", &s, &info_hash.0)));
                    self.state = State::AwaitProvide;
                }
                State::AwaitProvide => {
                    if self.buf.len() < 14 {
                        self.state = State::AwaitProvide;
                        return Ok(());
                    }
                    let head = self.take_decrypted(14);
                    if head[..8] != [0u8; 8] {
                        return Err("peer's encryption handshake does not verify".into());
                    }
                    let provide =
                        CryptoSet(u32::from_be_bytes([head[8], head[9], head[10], head[11]]));
                    let len = u16::from_be_bytes([head[12], head[13]]) as usize;
                    if len > MAX_PAD {
                        return Err("peer sent a pad longer than 512 bytes".into());
                    }
                    self.state = State::SkipPadC { len, provide };
                }
                State::SkipPadC { len, provide } => {
                    if self.buf.len() < len + 2 {
                        self.state = State::SkipPadC { len, provide };
                        return Ok(());
                    }
                    let bytes = self.take_decrypted(len + 2);
                    // At most MAX_IA by its 2-byte length.
                    let ia = u16::from_be_bytes([bytes[len], bytes[len + 1]]) as usize;
                    self.state = State::AwaitIa { len: ia, provide };
                }
                State::AwaitIa { len, provide } => {
                    if self.buf.len() < len {
                        self.state = State::AwaitIa { len, provide };
                        return Ok(());
                    }
                    let ia = self.take_decrypted(len);
                    let Role::Responder { allowed, .. } = &self.role else {
                        unreachable!("only a responder awaits IA");
                    };
                    let select = if allowed.contains(CryptoSet::PLAINTEXT)
                        && provide.contains(CryptoSet::PLAINTEXT)
                    {
                        Crypto::Plaintext
                    } else if allowed.contains(CryptoSet::RC4) && provide.contains(CryptoSet::RC4) {
                        Crypto::Rc4
                    } else {
                        return Err(format!(
                            "peer offers no encryption we allow (offers {:#x}, we allow {:#x})",
                            provide.0, allowed.0
                        ));
                    };
                    let bits = match select {
                        Crypto::Plaintext => CryptoSet::PLAINTEXT,
                        Crypto::Rc4 => CryptoSet::RC4,
                    };
                    // VC, crypto_select, and an empty PadD (PadB already varied the length).
                    let mut msg = vec![0u8; 8];
                    msg.extend_from_slice(&bits.0.to_be_bytes());
                    msg.extend_from_slice(&0u16.to_be_bytes());
                    if let Some(e) = &mut self.encrypt {
                        e.apply(&mut msg);
                    }
                    self.out.push_back(Output::Send(msg));
                    return self.finish(select, ia);
                }
                State::Finished => return Ok(()),
            }
        }
    }

    /// Looks for `marker` after a pad of at most [`MAX_PAD`] bytes at the buffer's start,
    /// from `scanned` on. Found: the pad and the marker leave the buffer.
    fn sync(&mut self, marker: &[u8], scanned: usize) -> Result<Sync, String> {
        match find(&self.buf, marker, scanned) {
            Some(at) if at <= MAX_PAD => {
                self.buf.drain(..at + marker.len());
                Ok(Sync::Found)
            }
            None if self.buf.len() < MAX_PAD + marker.len() => {
                Ok(Sync::Waiting(self.buf.len().saturating_sub(marker.len() - 1)))
            }
            _ => Err("no encryption handshake from the peer".into()),
        }
    }

    /// Hands over the streams and whatever payload has arrived.
    fn finish(&mut self, crypto: Crypto, mut received: Vec<u8>) -> Result<(), String> {
        let mut rest = std::mem::take(&mut self.buf);
        let (encrypt, mut decrypt) = match crypto {
            Crypto::Rc4 => (self.encrypt.take(), self.decrypt.take()),
            Crypto::Plaintext => (None, None),
        };
        if let Some(d) = &mut decrypt {
            d.apply(&mut rest);
        }
        received.extend_from_slice(&rest);
        let info_hash = self.info_hash.expect("the torrent is known before the end");
        self.state = State::Finished;
        let est = Established { info_hash, crypto, encrypt, decrypt, received };
        self.out.push_back(Output::Done(Box::new(est)));
        Ok(())
    }
}

/// Whether the first bytes of an incoming connection are a plain BitTorrent handshake (and not
/// an MSE public key). Needs 20 bytes.
pub fn is_plain_handshake(first: &[u8]) -> bool {
    first.len() >= 20 && first[0] == 19 && &first[1..20] == crate::proto::wire::PROTOCOL
}

fn to_key_bytes(n: &BigUint) -> [u8; KEY_LEN] {
    let bytes = n.to_bytes_be();
    let mut out = [0u8; KEY_LEN];
    out[KEY_LEN - bytes.len()..].copy_from_slice(&bytes);
    out
}

fn hash2(tag: &[u8], a: &[u8]) -> [u8; 20] {
    Sha1::new().chain_update(tag).chain_update(a).finalize().into()
}

fn hash3(tag: &[u8], a: &[u8], b: &[u8]) -> [u8; 20] {
    Sha1::new().chain_update(tag).chain_update(a).chain_update(b).finalize().into()
}

/// Position of `needle` in `hay`, searching from `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if hay.len() < needle.len() {
        return None;
    }
    (from..=hay.len() - needle.len()).find(|&i| &hay[i..i + needle.len()] == needle)
}

/// Decodes a hex literal at compile time.
const fn hex_literal<const N: usize>(hex: &[u8]) -> [u8; N] {
    const fn digit(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("not a hex digit"),
        }
    }
    assert!(hex.len() == 2 * N, "wrong length");
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = digit(hex[2 * i]) << 4 | digit(hex[2 * i + 1]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const IH: InfoHash = InfoHash([7u8; 20]);

    /// Runs a handshake between two cores in memory, handing bytes over `chunk` at a time, and
    /// returns both ends' outcomes.
    fn run(
        provide: CryptoSet,
        allowed: CryptoSet,
        torrents: Vec<InfoHash>,
        chunk: usize,
        seed: u64,
    ) -> (Result<Established, String>, Result<Established, String>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let now = Instant::now();
        let ia = b"the initiator's first payload".to_vec();
        let role = Role::Initiator { info_hash: IH, provide, initial_payload: ia };
        let mut a = Mse::new(now, role, &mut rng);
        let mut b = Mse::new(now, Role::Responder { torrents, allowed }, &mut rng);
        let (mut a_done, mut b_done) = (None, None);
        /// Drains `from`'s outputs into `to`; true if bytes moved.
        fn pump(
            from: &mut Mse,
            to: &mut Mse,
            done: &mut Option<Result<Established, String>>,
            now: Instant,
            chunk: usize,
        ) -> bool {
            let mut moved = false;
            while let Some(out) = from.poll() {
                match out {
                    Output::Send(bytes) => {
                        moved = true;
                        for piece in bytes.chunks(chunk) {
                            to.handle(now, piece);
                        }
                    }
                    Output::Done(e) => *done = Some(Ok(*e)),
                    Output::Failed(why) => *done = Some(Err(why)),
                }
            }
            moved
        }
        for _ in 0..10_000 {
            let a_moved = pump(&mut a, &mut b, &mut a_done, now, chunk);
            let b_moved = pump(&mut b, &mut a, &mut b_done, now, chunk);
            if !a_moved && !b_moved {
                break;
            }
        }
        // A side whose peer failed is still waiting (its driver would see the socket close).
        let waiting = || Err("still waiting".to_string());
        (a_done.unwrap_or_else(waiting), b_done.unwrap_or_else(waiting))
    }

    fn check_streams(mut a: Established, mut b: Established) {
        let mut msg = b"piece data from a to b".to_vec();
        if let Some(e) = &mut a.encrypt {
            e.apply(&mut msg);
            assert_ne!(&msg[..], b"piece data from a to b");
        }
        if let Some(d) = &mut b.decrypt {
            d.apply(&mut msg);
        }
        assert_eq!(&msg[..], b"piece data from a to b");
        let mut back = b"and back".to_vec();
        if let Some(e) = &mut b.encrypt {
            e.apply(&mut back);
        }
        if let Some(d) = &mut a.decrypt {
            d.apply(&mut back);
        }
        assert_eq!(&back[..], b"and back");
    }

    #[test]
    fn both_sides_agree_on_the_torrent_and_the_streams() {
        let cases = [
            (CryptoSet::BOTH, CryptoSet::BOTH, Crypto::Plaintext),
            (CryptoSet::BOTH, CryptoSet::RC4, Crypto::Rc4),
            (CryptoSet::RC4, CryptoSet::BOTH, Crypto::Rc4),
            (CryptoSet::PLAINTEXT, CryptoSet::BOTH, Crypto::Plaintext),
        ];
        for (seed, (provide, allowed, want)) in cases.into_iter().enumerate() {
            for chunk in [1, 7, 4096] {
                let other = InfoHash([1u8; 20]);
                let (a, b) = run(provide, allowed, vec![other, IH], chunk, seed as u64);
                let (a, b) = (a.unwrap(), b.unwrap());
                assert_eq!((a.info_hash, b.info_hash), (IH, IH));
                assert_eq!((a.crypto, b.crypto), (want, want), "{provide:?} {allowed:?}");
                assert_eq!(b.received, b"the initiator's first payload");
                assert!(a.received.is_empty());
                assert_eq!(a.encrypt.is_some(), want == Crypto::Rc4);
                check_streams(a, b);
            }
        }
    }

    #[test]
    fn no_common_encryption_or_an_unknown_torrent_fails_the_handshake() {
        let (_, b) = run(CryptoSet::PLAINTEXT, CryptoSet::RC4, vec![IH], 4096, 1);
        assert!(b.unwrap_err().contains("no encryption we allow"));
        let (_, b) = run(CryptoSet::BOTH, CryptoSet::BOTH, vec![InfoHash([2; 20])], 4096, 2);
        assert!(b.unwrap_err().contains("torrent we do not have"));
    }

    #[test]
    fn hostile_bytes_fail_the_handshake_with_bounded_memory() {
        let now = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let responder = |rng: &mut ChaCha8Rng| {
            Mse::new(now, Role::Responder { torrents: vec![IH], allowed: CryptoSet::BOTH }, rng)
        };
        // A degenerate key (1, so the secret would be 1).
        let mut b = responder(&mut rng);
        let mut key = [0u8; KEY_LEN];
        key[KEY_LEN - 1] = 1;
        b.handle(now, &key);
        assert!(matches!(b.poll(), Some(Output::Failed(_))));
        // A valid key, then garbage that never contains HASH('req1', S): fails within the pad.
        let mut b = responder(&mut rng);
        let mut key = [0u8; KEY_LEN];
        key[KEY_LEN - 1] = 5;
        b.handle(now, &key);
        assert!(matches!(b.poll(), Some(Output::Send(_))));
        let mut fed = 0;
        while b.next_deadline().is_some() {
            b.handle(now, &[0xEE; 64]);
            fed += 64;
            assert!(fed <= MAX_PAD + 20 + 64, "still scanning after {fed} bytes");
        }
        assert!(matches!(b.poll(), Some(Output::Failed(_))));
        // A megabyte in one go: the key is taken, then the scan gives up within the pad.
        let mut b = responder(&mut rng);
        b.handle(now, &vec![3u8; 1 << 20]);
        assert!(matches!(b.poll(), Some(Output::Send(_))));
        assert!(matches!(b.poll(), Some(Output::Failed(_))));
        assert!(b.next_deadline().is_none());
        // Silence past the deadline.
        let mut b = responder(&mut rng);
        b.handle(now + HANDSHAKE_TIMEOUT, &[]);
        assert!(matches!(b.poll(), Some(Output::Failed(why)) if why.contains("timed out")));
    }

    #[test]
    fn payload_arriving_with_the_end_of_the_handshake_is_handed_over_whatever_its_size() {
        for (provide, allowed) in
            [(CryptoSet::BOTH, CryptoSet::RC4), (CryptoSet::BOTH, CryptoSet::BOTH)]
        {
            let now = Instant::now();
            let mut rng = ChaCha8Rng::seed_from_u64(9);
            let role = Role::Initiator { info_hash: IH, provide, initial_payload: vec![1; 68] };
            let mut a = Mse::new(now, role, &mut rng);
            let mut b = Mse::new(now, Role::Responder { torrents: vec![IH], allowed }, &mut rng);
            let sends = |m: &mut Mse| {
                let mut wire = Vec::new();
                let mut done = None;
                while let Some(out) = m.poll() {
                    match out {
                        Output::Send(bytes) => wire.extend(bytes),
                        Output::Done(e) => done = Some(e),
                        Output::Failed(why) => panic!("{why}"),
                    }
                }
                (wire, done)
            };
            b.handle(now, &sends(&mut a).0); // Ya, PadA
            a.handle(now, &sends(&mut b).0); // Yb, PadB
            b.handle(now, &sends(&mut a).0); // req1 .. IA
            let (mut wire, done) = sends(&mut b);
            let mut theirs = done.expect("the responder is done");
            // The responder's first 100 KB of payload leave with its last handshake bytes.
            let mut payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            let want = payload.clone();
            if let Some(e) = &mut theirs.encrypt {
                e.apply(&mut payload);
            }
            wire.extend(payload);
            a.handle(now, &wire);
            let (_, done) = sends(&mut a);
            let ours = done.expect("the initiator is done, not over its buffer bound");
            assert_eq!(ours.received, want);
        }
    }

    #[test]
    fn the_prime_is_the_specs() {
        let p = BigUint::from_bytes_be(&PRIME);
        assert_eq!(p.bits(), 768);
        assert_eq!(PRIME[..4], [0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(PRIME[92..], [0x00, 0x09, 0x05, 0x63]);
    }
}
