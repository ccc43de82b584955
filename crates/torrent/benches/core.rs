//! The piece picker and the choker at scale: 10,000 pieces and 200 peers.
//!
//! Run: `cargo bench -p torrent --bench core`. Each benchmark's name says what one iteration
//! does; criterion prints the time per iteration (and per block or peer, with `thrpt`).
//!
//! - `picker/round`: every one of 200 peers (each with a random half of the pieces) gets up to
//!   16 blocks picked, and each block comes back; completed pieces are verified. One iteration is
//!   one such round on a picker that already has 10% of the pieces; the fresh picker and the
//!   peers' bitfields are built outside the timed part.
//! - `choker/rechoke`: a rechoke of 200 interested peers with download rates (4 regular slots and
//!   the optimistic one), the decisions drained.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use torrent::proto::choker::{Choker, ChokerConfig};
use torrent::proto::picker::{BlockOutcome, PickerConfig, PiecePicker};
use torrent::proto::PeerKey;
use torrent::Bitfield;

const PIECES: u32 = 10_000;
const PIECE_LENGTH: u32 = 256 * 1024;
const PEERS: u64 = 200;
const PIPELINE: usize = 16;

fn setup_picker() -> (PiecePicker<ChaCha8Rng>, Vec<Bitfield>) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut have = Bitfield::new(PIECES);
    for p in 0..PIECES {
        if rng.random_ratio(1, 10) {
            have.set(p);
        }
    }
    let total = u64::from(PIECES) * u64::from(PIECE_LENGTH);
    let picker_rng = ChaCha8Rng::seed_from_u64(2);
    let mut picker =
        PiecePicker::new(PickerConfig::default(), PIECE_LENGTH, total, have, picker_rng);
    let mut fields = Vec::new();
    for peer in 0..PEERS {
        let mut bf = Bitfield::new(PIECES);
        for p in 0..PIECES {
            if rng.random_bool(0.5) {
                bf.set(p);
            }
        }
        picker.peer_bitfield(PeerKey(peer), &bf);
        fields.push(bf);
    }
    (picker, fields)
}

fn picker(c: &mut Criterion) {
    let mut group = c.benchmark_group("picker");
    group.throughput(Throughput::Elements(PEERS * PIPELINE as u64));
    group.sample_size(20);
    group.bench_function("round", |b| {
        b.iter_batched_ref(
            setup_picker,
            |(picker, fields)| {
                for peer in 0..PEERS {
                    let key = PeerKey(peer);
                    for block in picker.pick(key, &fields[peer as usize], PIPELINE) {
                        if let BlockOutcome::Accepted { piece_complete: true, .. } =
                            picker.block_received(key, block)
                        {
                            picker.piece_verified(block.piece);
                        }
                    }
                }
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn choker(c: &mut Criterion) {
    let mut group = c.benchmark_group("choker");
    group.throughput(Throughput::Elements(PEERS));
    let config = ChokerConfig::default();
    let interval = config.rechoke_interval;
    let start = Instant::now();
    let mut choker = Choker::new(config, ChaCha8Rng::seed_from_u64(3), start);
    for peer in 0..PEERS {
        choker.peer_connected(start, PeerKey(peer));
        choker.set_interested(start, PeerKey(peer), true);
    }
    while choker.poll().is_some() {}
    let mut now = start;
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    group.bench_function("rechoke", |b| {
        b.iter(|| {
            for peer in 0..PEERS {
                choker.record_downloaded(PeerKey(peer), rng.random_range(0..1 << 20));
            }
            now += interval + Duration::from_millis(1);
            choker.handle_timeout(now);
            let mut decisions = 0;
            while choker.poll().is_some() {
                decisions += 1;
            }
            decisions
        })
    });
    group.finish();
}

criterion_group!(benches, picker, choker);
criterion_main!(benches);
