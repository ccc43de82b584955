//! Fuzzes the MSE/PE handshake core (`torrent::proto::mse`) as a hostile peer would.
//!
//! - Raw: the input (after its first byte) goes, in pieces whose sizes the first byte picks,
//!   to a responder (which knows two torrents) and to an initiator: a peer that sends anything.
//! - Tampered: a real initiator and responder run against each other in memory, and the input
//!   is a script of (message index, offset, xor) edits applied to their messages in transit:
//!   a peer that knows the protocol and lies in it.
//!
//! Properties: no panic; every `poll()` runs dry within a bound; a core that has neither
//! finished nor failed holds at most `MAX_BUFFERED` bytes of input (it fails instead); and in
//! the tampered run, when both sides finish they agree on the torrent and on the streams (a
//! byte one side encrypts, the other decrypts to the same value).
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use torrent::metainfo::InfoHash;
use torrent::proto::mse::{CryptoSet, Established, Mse, Output, Role};

const IH: InfoHash = InfoHash([0x42; 20]);
/// Most outputs one input may produce.
const MAX_OUTPUTS: usize = 16;

/// Drains `core`; returns what it sent and its outcome, if any.
fn drain(core: &mut Mse) -> (Vec<Vec<u8>>, Option<Result<Established, String>>) {
    let (mut sent, mut end) = (Vec::new(), None);
    for _ in 0..MAX_OUTPUTS {
        match core.poll() {
            Some(Output::Send(b)) => sent.push(b),
            Some(Output::Done(e)) => end = Some(Ok(*e)),
            Some(Output::Failed(why)) => end = Some(Err(why)),
            None => return (sent, end),
        }
    }
    panic!("poll() did not run dry");
}

fn responder(now: Instant, rng: &mut ChaCha8Rng, allowed: CryptoSet) -> Mse {
    let role = Role::Responder { torrents: vec![InfoHash([1; 20]), IH], allowed };
    Mse::new(now, role, rng)
}

fn initiator(now: Instant, rng: &mut ChaCha8Rng, provide: CryptoSet) -> Mse {
    let role = Role::Initiator { info_hash: IH, provide, initial_payload: vec![19; 68] };
    Mse::new(now, role, rng)
}

fn raw(first: u8, data: &[u8]) {
    let now = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(first as u64);
    let chunk = 1 + first as usize * 8;
    for mut core in [
        responder(now, &mut rng, CryptoSet::BOTH),
        initiator(now, &mut rng, CryptoSet::BOTH),
    ] {
        drain(&mut core);
        for piece in data.chunks(chunk) {
            core.handle(now, piece);
            if drain(&mut core).1.is_some() {
                break;
            }
        }
    }
}

fn tampered(first: u8, script: &[u8]) {
    let now = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(first as u64);
    let sets = [CryptoSet::PLAINTEXT, CryptoSet::RC4, CryptoSet::BOTH];
    let provide = sets[(first % 3) as usize];
    let allowed = sets[(first / 3 % 3) as usize];
    let mut a = initiator(now, &mut rng, provide);
    let mut b = responder(now, &mut rng, allowed);
    // Edits: (message index, offset, xor), three bytes each.
    let edits: Vec<(usize, usize, u8)> =
        script.chunks_exact(3).map(|e| (e[0] as usize % 4, e[1] as usize * 3, e[2])).collect();
    let (mut a_end, mut b_end) = (None, None);
    let mut index = 0;
    for _ in 0..8 {
        let mut moved = false;
        for from_a in [true, false] {
            let (from, to, end) =
                if from_a { (&mut a, &mut b, &mut a_end) } else { (&mut b, &mut a, &mut b_end) };
            let (sent, outcome) = drain(from);
            if outcome.is_some() {
                *end = outcome;
            }
            for mut msg in sent {
                for &(i, at, x) in &edits {
                    if i == index && at < msg.len() {
                        msg[at] ^= x;
                    }
                }
                index += 1;
                moved = true;
                to.handle(now, &msg);
            }
        }
        if !moved {
            break;
        }
    }
    for core in [&mut a, &mut b] {
        if core.next_deadline().is_some() {
            // Still waiting: it may not hold more than the bound.
            core.handle(now, &[]);
        }
    }
    if let (Some(Ok(mut x)), Some(Ok(mut y))) = (a_end, b_end) {
        assert_eq!(x.info_hash, y.info_hash);
        assert_eq!(x.crypto, y.crypto);
        let mut probe = *b"probe";
        if let (Some(e), Some(d)) = (&mut x.encrypt, &mut y.decrypt) {
            e.apply(&mut probe);
            d.apply(&mut probe);
        }
        assert_eq!(&probe, b"probe");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    raw(first, rest);
    tampered(first, rest);
});
