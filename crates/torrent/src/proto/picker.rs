//! The piece picker: which blocks to request from which peer (sans-IO).
//!
//! Policy, in order of precedence for one `pick`:
//! 0. **Urgent pieces**, in the order the owner gave them ([`PiecePicker::set_urgent`]): the
//!    pieces a reader of a file still downloading waits for (libtorrent's `set_piece_deadline`
//!    is the model), started or continued before anything else. With no urgent pieces this step
//!    does nothing and draws nothing from the RNG.
//! 1. **Partial pieces first.** Blocks nobody has requested yet in pieces that are already under
//!    way, so that pieces complete (and can be verified and shared) instead of many being started.
//! 2. **A new piece**: chosen uniformly at random while fewer than
//!    [`PickerConfig::random_first`] pieces are verified (a new peer needs *something* to trade
//!    quickly, and rare pieces are slow to fetch), then **rarest first** by the availability that
//!    neighbours' BITFIELD / HAVE messages report, ties broken at random by the injected RNG.
//! 3. **Endgame**: once every missing block is requested from someone, a block outstanding at
//!    other peers may be requested again, from up to [`PickerConfig::endgame_max_dup`] peers at
//!    once; when it arrives, [`BlockOutcome::Accepted::cancels`] lists the CANCELs to send. As in
//!    libtorrent, a peer gets such a duplicate only when nothing is outstanding at it, one block
//!    at a time ([`PickerConfig::endgame_when_idle`]). In `lab swarm` N = 50 that halved the
//!    blocks received twice (66–95 against 109–148 per run, seeds 1–4) at the same ratio.
//!
//! Blocks are [`BLOCK_SIZE`] bytes, except the last block of a piece whose length is not a
//! multiple of it (in practice: the last block of the last piece).
//!
//! # Using a [`PiecePicker`]
//! The picker is a core without timers, so of the project's four method groups (getters,
//! handlers, mutators, polling; `docs/architecture.md`) it has the first three: its decisions
//! are the return values of [`pick`](PiecePicker::pick) and
//! [`block_received`](PiecePicker::block_received). [`crate::proto::torrent::TorrentCore`] owns
//! it and is its only caller in the engine.
//! - Getters: [`have`](PiecePicker::have), [`is_complete`](PiecePicker::is_complete),
//!   [`in_endgame`](PiecePicker::in_endgame), [`availability`](PiecePicker::availability),
//!   [`outstanding`](PiecePicker::outstanding), [`num_pieces`](PiecePicker::num_pieces),
//!   [`piece_size`](PiecePicker::piece_size).
//! - Availability, as peer messages arrive: [`peer_bitfield`](PiecePicker::peer_bitfield)
//!   (BITFIELD / HAVE_ALL), [`peer_have`](PiecePicker::peer_have) (HAVE),
//!   [`peer_left`](PiecePicker::peer_left) (disconnect).
//! - Priorities: [`set_urgent`](PiecePicker::set_urgent) (a mutator), read back with
//!   [`urgent`](PiecePicker::urgent).
//! - Requests: [`pick`](PiecePicker::pick) whenever a peer that unchoked us has room in its
//!   request pipeline; [`release`](PiecePicker::release) on REJECT or timeout,
//!   [`release_peer`](PiecePicker::release_peer) on CHOKE.
//! - Data: [`block_received`](PiecePicker::block_received) for every PIECE message, then once a
//!   piece is complete and hashed, [`piece_verified`](PiecePicker::piece_verified) or
//!   [`piece_failed`](PiecePicker::piece_failed) (whose answer names the peers to suspect).
//!
//! # Unsolicited blocks
//! A block is accepted if it is still missing and its piece is under way (some block of it has
//! been requested), whoever sends it: that covers a request we released on timeout whose answer
//! arrives late, or a peer that answered after a CHOKE. A block of a piece nobody asked for is
//! [`BlockOutcome::Unexpected`], so a peer cannot make us write data we never wanted. Every
//! sender is recorded as a contributor, so a bad block still gets its peer suspected.
//!
//! # Invariants
//! - `state[p]` is `Have` ⇔ `have.has(p)`; `Active` ⇔ `active` holds `p`; `Complete` ⇔
//!   `complete` holds `p`; `untouched` = number of `Untouched` pieces.
//! - `(p, i)` is in `peers[k].outstanding` ⇔ `k` is in `active[p].blocks[i].holders`; a
//!   received block has no holders.
//! - `ActivePiece::free` = blocks neither received nor held; `free_blocks` = Σ `free` over
//!   `active`; every free block index is ≥ `ActivePiece::first_free`.
//! - `availability[p]` = number of peer records whose `has` contains `p`.
//!
//! # Cost
//! Per block: O(active pieces) to find a partial piece plus O(log) bookkeeping; a new piece
//! costs one O(pieces) scan. Endgame picks scan the active pieces' blocks.

use std::collections::{BTreeMap, BTreeSet};

use super::{BlockRef, PeerKey, BLOCK_SIZE};
use crate::Bitfield;

/// Tuning of a [`PiecePicker`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PickerConfig {
    /// New pieces are chosen at random (not rarest first) while fewer than this many pieces are
    /// verified.
    pub random_first: u32,
    /// In endgame, the most peers one block is outstanding at simultaneously. Values below 2
    /// disable duplicate requests.
    pub endgame_max_dup: usize,
    /// In endgame, a peer is asked for a duplicate only when nothing is outstanding at it, one
    /// block per pick (libtorrent's `request_a_block`). `false`: its whole pipeline may be
    /// filled with duplicates.
    pub endgame_when_idle: bool,
}

impl Default for PickerConfig {
    /// Four random pieces, and endgame blocks requested from at most two peers, one at a time
    /// from an idle peer.
    fn default() -> Self {
        PickerConfig { random_first: 4, endgame_max_dup: 2, endgame_when_idle: true }
    }
}

/// What to do with a block that arrived ([`PiecePicker::block_received`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockOutcome {
    /// New data: write it. `piece_complete` = every block of the piece has now been received
    /// (verify it next). `cancels` = other peers that also have this block outstanding
    /// (endgame): send them CANCEL. They are no longer counted as outstanding.
    Accepted { piece_complete: bool, cancels: Vec<(PeerKey, BlockRef)> },
    /// Not requested from anyone, wrong length/offset, or already received: ignore the data.
    Unexpected,
}

/// Where a piece is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PieceState {
    /// Missing, and no block of it requested (or reset by a failed hash).
    Untouched,
    /// Missing, some block requested at some point; tracked in `active`.
    Active,
    /// Every block received, waiting for the hash verdict; tracked in `complete`.
    Complete,
    /// Verified.
    Have,
}

/// One block of an active piece.
#[derive(Clone, Debug, Default)]
struct Block {
    received: bool,
    /// Peers this block is outstanding at, in request order (more than one only in endgame).
    holders: Vec<PeerKey>,
}

/// A piece under way.
#[derive(Clone, Debug)]
struct ActivePiece {
    blocks: Vec<Block>,
    received: u32,
    /// Blocks neither received nor outstanding anywhere: what a normal pick can hand out.
    free: u32,
    /// No block below this index is free, so picks do not rescan the head of a big piece.
    first_free: u32,
    /// Everyone who sent a block of it, for banning if the hash fails.
    contributors: BTreeSet<PeerKey>,
}

/// What the picker knows about one peer.
#[derive(Clone, Debug)]
struct PeerRecord {
    /// What it announced; exactly what was added to `availability`, so it is what is removed.
    has: Bitfield,
    /// (piece, block index) requested from it and not yet answered, released or cancelled.
    outstanding: BTreeSet<(u32, u32)>,
}

/// The block layout of a torrent.
#[derive(Clone, Copy, Debug)]
struct Layout {
    piece_length: u32,
    total_length: u64,
    num_pieces: u32,
}

impl Layout {
    fn new(piece_length: u32, total_length: u64) -> Self {
        let num_pieces = if piece_length == 0 {
            0
        } else {
            // Metainfo parsing caps the piece count far below u32::MAX; saturate regardless.
            u32::try_from(total_length.div_ceil(u64::from(piece_length))).unwrap_or(u32::MAX)
        };
        Layout { piece_length, total_length, num_pieces }
    }

    /// Bytes in piece `p` (`p` < `num_pieces`).
    fn piece_size(&self, p: u32) -> u32 {
        if p + 1 == self.num_pieces {
            let rest = self.total_length - u64::from(p) * u64::from(self.piece_length);
            // rest ≤ piece_length because num_pieces = ceil(total / piece_length).
            rest.min(u64::from(self.piece_length)) as u32
        } else {
            self.piece_length
        }
    }

    fn blocks_in(&self, p: u32) -> u32 {
        self.piece_size(p).div_ceil(BLOCK_SIZE)
    }

    fn block_ref(&self, p: u32, i: u32) -> BlockRef {
        let offset = i * BLOCK_SIZE;
        BlockRef { piece: p, offset, length: BLOCK_SIZE.min(self.piece_size(p) - offset) }
    }

    /// The block index of `b` if it is exactly one of this torrent's blocks.
    fn index_of(&self, b: BlockRef) -> Option<u32> {
        if b.piece >= self.num_pieces || !b.offset.is_multiple_of(BLOCK_SIZE) {
            return None;
        }
        let i = b.offset / BLOCK_SIZE;
        (i < self.blocks_in(b.piece) && self.block_ref(b.piece, i) == b).then_some(i)
    }
}

/// The piece picker of one torrent. See the [module docs](self) for the policy and call order.
pub struct PiecePicker<R: rand::Rng> {
    config: PickerConfig,
    layout: Layout,
    rng: R,
    have: Bitfield,
    state: Vec<PieceState>,
    availability: Vec<u32>,
    /// Pieces under way, iterated in index order so seeded runs repeat.
    active: BTreeMap<u32, ActivePiece>,
    /// Complete pieces awaiting their hash verdict, with their contributors.
    complete: BTreeMap<u32, BTreeSet<PeerKey>>,
    peers: BTreeMap<PeerKey, PeerRecord>,
    /// Number of `Untouched` pieces: with `free_blocks`, decides endgame in O(1).
    untouched: u32,
    free_blocks: u64,
    /// Pieces wanted first, most urgent first (at most [`MAX_URGENT`]).
    urgent: Vec<u32>,
    /// Fetch the urgent pieces only (a viewer of a streamed movie wants the segments it plays,
    /// not the whole torrent).
    urgent_only: bool,
}

/// Most urgent pieces kept: the first ones of a longer list.
pub const MAX_URGENT: usize = 1024;

impl<R: rand::Rng> PiecePicker<R> {
    /// A picker for a torrent of `total_length` bytes in pieces of `piece_length`.
    /// `have`: pieces already verified on disk (resume); a bitfield of the wrong length is
    /// ignored (treated as nothing verified).
    pub fn new(
        config: PickerConfig,
        piece_length: u32,
        total_length: u64,
        have: Bitfield,
        rng: R,
    ) -> Self {
        let layout = Layout::new(piece_length, total_length);
        let n = layout.num_pieces;
        let have = if have.len() == n { have } else { Bitfield::new(n) };
        let state: Vec<PieceState> = (0..n)
            .map(|p| if have.has(p) { PieceState::Have } else { PieceState::Untouched })
            .collect();
        PiecePicker {
            config,
            layout,
            rng,
            untouched: n - have.count(),
            have,
            state,
            availability: vec![0; n as usize],
            active: BTreeMap::new(),
            complete: BTreeMap::new(),
            peers: BTreeMap::new(),
            free_blocks: 0,
            urgent: Vec::new(),
            urgent_only: false,
        }
    }

    /// With `on`, [`PiecePicker::pick`] hands out blocks of urgent pieces only.
    pub fn set_urgent_only(&mut self, on: bool) {
        self.urgent_only = on;
    }

    /// True when only urgent pieces are fetched.
    pub fn urgent_only(&self) -> bool {
        self.urgent_only
    }

    /// The piece's bytes came from elsewhere (an HTTP server) and await their hash verdict:
    /// its outstanding requests are forgotten and it is not picked again, unless the verdict
    /// is bad ([`PiecePicker::piece_failed`] then makes it missing again). Out of range, or
    /// already complete or verified: ignored (returns false).
    pub fn piece_supplied(&mut self, piece: u32) -> bool {
        if piece >= self.layout.num_pieces {
            return false;
        }
        match self.state[piece as usize] {
            PieceState::Have | PieceState::Complete => return false,
            PieceState::Untouched => self.untouched -= 1,
            PieceState::Active => self.drop_active(piece),
        }
        self.state[piece as usize] = PieceState::Complete;
        self.complete.insert(piece, BTreeSet::new());
        true
    }

    /// Pieces to fetch before any other, most urgent first, replacing the previous list (an
    /// empty list ends the urgency). Pieces out of range are ignored, so are repeats, and only
    /// the first [`MAX_URGENT`] are kept; pieces already verified are skipped when picking.
    pub fn set_urgent(&mut self, pieces: &[u32]) {
        self.urgent.clear();
        let n = self.layout.num_pieces;
        for &p in pieces {
            if self.urgent.len() == MAX_URGENT {
                break;
            }
            if p < n && !self.urgent.contains(&p) {
                self.urgent.push(p);
            }
        }
    }

    /// The urgent pieces not verified yet, most urgent first.
    pub fn urgent(&self) -> impl Iterator<Item = u32> + '_ {
        self.urgent.iter().copied().filter(|&p| !self.have.has(p))
    }

    /// Verified pieces.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// True when every piece is verified.
    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    /// True when every missing block is outstanding at some peer, so `pick` hands out
    /// duplicates.
    pub fn in_endgame(&self) -> bool {
        !self.is_complete()
            && self.untouched == 0
            && self.free_blocks == 0
            && !self.active.is_empty()
    }

    /// How many connected peers announced `piece` (0 when out of range).
    pub fn availability(&self, piece: u32) -> u32 {
        self.availability.get(piece as usize).copied().unwrap_or(0)
    }

    /// Number of requests outstanding at `peer`.
    pub fn outstanding(&self, peer: PeerKey) -> usize {
        self.peers.get(&peer).map_or(0, |r| r.outstanding.len())
    }

    /// The blocks requested from `peer` and not yet received.
    pub fn outstanding_blocks(&self, peer: PeerKey) -> Vec<BlockRef> {
        let Some(r) = self.peers.get(&peer) else { return Vec::new() };
        r.outstanding.iter().map(|&(p, i)| self.layout.block_ref(p, i)).collect()
    }

    /// Whether some block of `piece` was ever requested (or it is verified).
    pub fn started(&self, piece: u32) -> bool {
        self.state.get(piece as usize).is_some_and(|s| *s != PieceState::Untouched)
    }

    /// Number of pieces in the torrent.
    pub fn num_pieces(&self) -> u32 {
        self.layout.num_pieces
    }

    /// Bytes in `piece` (0 when out of range).
    pub fn piece_size(&self, piece: u32) -> u32 {
        if piece < self.layout.num_pieces {
            self.layout.piece_size(piece)
        } else {
            0
        }
    }

    /// A peer's full set of pieces (BITFIELD or HAVE_ALL). Replaces what it announced before.
    /// A bitfield of the wrong length is ignored.
    pub fn peer_bitfield(&mut self, peer: PeerKey, bf: &Bitfield) {
        if bf.len() != self.layout.num_pieces {
            return;
        }
        let record = self.record(peer);
        let old = std::mem::replace(&mut record.has, bf.clone());
        for p in old.iter_set() {
            self.availability[p as usize] -= 1;
        }
        for p in bf.iter_set() {
            self.availability[p as usize] += 1;
        }
    }

    /// A peer announced one more piece (HAVE). Repeats and out-of-range pieces are ignored.
    pub fn peer_have(&mut self, peer: PeerKey, piece: u32) {
        if piece >= self.layout.num_pieces {
            return;
        }
        if self.record(peer).has.set(piece) {
            self.availability[piece as usize] += 1;
        }
    }

    /// A peer disconnected: its availability is dropped and its outstanding requests released.
    /// The picker removes what it recorded from this peer's BITFIELD / HAVE messages, so `_bf`
    /// (the driver's view of the same thing) cannot skew availability; it is kept for callers.
    pub fn peer_left(&mut self, peer: PeerKey, _bf: &Bitfield) {
        self.release_peer(peer);
        if let Some(record) = self.peers.remove(&peer) {
            for p in record.has.iter_set() {
                self.availability[p as usize] -= 1;
            }
        }
    }

    /// Up to `max` new block requests for `peer` among pieces in `peer_has`, registered as
    /// outstanding for `peer`. Never returns a block already outstanding at `peer`. A `peer_has`
    /// of the wrong length yields nothing.
    pub fn pick(&mut self, peer: PeerKey, peer_has: &Bitfield, max: usize) -> Vec<BlockRef> {
        if max == 0 || peer_has.len() != self.layout.num_pieces || self.is_complete() {
            return Vec::new();
        }
        let mut picked: Vec<(u32, u32)> = Vec::new();

        // 0. Urgent pieces, in their order: continued or started.
        for k in 0..self.urgent.len() {
            if picked.len() == max {
                break;
            }
            let p = self.urgent[k];
            if !peer_has.has(p) {
                continue;
            }
            match self.state[p as usize] {
                PieceState::Active => {
                    if let Some(piece) = self.active.get_mut(&p) {
                        self.free_blocks -= take_free(piece, p, peer, max, &mut picked);
                    }
                }
                PieceState::Untouched => self.start_piece(p, peer, max, &mut picked),
                PieceState::Have | PieceState::Complete => {}
            }
        }

        if self.urgent_only {
            return self.register(peer, picked);
        }

        // 1. Finish what is under way.
        for (&p, piece) in self.active.iter_mut() {
            if picked.len() == max {
                break;
            }
            if piece.free > 0 && peer_has.has(p) {
                self.free_blocks -= take_free(piece, p, peer, max, &mut picked);
            }
        }

        // 2. Start new pieces.
        while picked.len() < max {
            let Some(p) = self.choose_new(peer_has) else {
                break;
            };
            self.start_piece(p, peer, max, &mut picked);
        }

        // 3. Endgame: duplicate blocks held elsewhere, least duplicated first.
        let idle = picked.is_empty() && self.outstanding(peer) == 0;
        let max = if self.config.endgame_when_idle { usize::from(idle) } else { max };
        if picked.len() < max && self.in_endgame() {
            'dup: for holders in 1..self.config.endgame_max_dup {
                for (&p, piece) in self.active.iter_mut() {
                    if !peer_has.has(p) {
                        continue;
                    }
                    for (i, b) in piece.blocks.iter_mut().enumerate() {
                        if picked.len() == max {
                            break 'dup;
                        }
                        if !b.received && b.holders.len() == holders && !b.holders.contains(&peer) {
                            b.holders.push(peer);
                            picked.push((p, i as u32));
                        }
                    }
                }
            }
        }

        self.register(peer, picked)
    }

    /// Records `picked` as outstanding at `peer` and returns the blocks.
    fn register(&mut self, peer: PeerKey, picked: Vec<(u32, u32)>) -> Vec<BlockRef> {
        let layout = self.layout;
        let record = self.record(peer);
        picked
            .into_iter()
            .map(|(p, i)| {
                record.outstanding.insert((p, i));
                layout.block_ref(p, i)
            })
            .collect()
    }

    /// A request to `peer` was rejected or timed out: the block can be requested again (from
    /// anyone, `peer` included). Unknown blocks are ignored.
    pub fn release(&mut self, peer: PeerKey, block: BlockRef) {
        let Some(i) = self.layout.index_of(block) else {
            return;
        };
        let Some(record) = self.peers.get_mut(&peer) else {
            return;
        };
        if record.outstanding.remove(&(block.piece, i)) {
            self.unhold(peer, block.piece, i);
        }
    }

    /// `peer` choked us: every request outstanding at it is released. Returns how many.
    pub fn release_peer(&mut self, peer: PeerKey) -> usize {
        let Some(record) = self.peers.get_mut(&peer) else {
            return 0;
        };
        let released = std::mem::take(&mut record.outstanding);
        for &(p, i) in &released {
            self.unhold(peer, p, i);
        }
        released.len()
    }

    /// A block arrived from `peer`. Returns what to do with it; see the module docs for which
    /// unsolicited blocks are accepted.
    pub fn block_received(&mut self, peer: PeerKey, block: BlockRef) -> BlockOutcome {
        let Some(i) = self.layout.index_of(block) else {
            return BlockOutcome::Unexpected;
        };
        let p = block.piece;
        if self.state[p as usize] != PieceState::Active {
            return BlockOutcome::Unexpected;
        }
        let Some(piece) = self.active.get_mut(&p) else {
            return BlockOutcome::Unexpected;
        };
        let b = &mut piece.blocks[i as usize];
        if b.received {
            return BlockOutcome::Unexpected;
        }
        b.received = true;
        let holders = std::mem::take(&mut b.holders);
        if holders.is_empty() {
            piece.free -= 1;
            self.free_blocks -= 1;
        }
        piece.received += 1;
        piece.contributors.insert(peer);
        let piece_complete = piece.received as usize == piece.blocks.len();

        let mut cancels = Vec::new();
        for h in holders {
            if let Some(record) = self.peers.get_mut(&h) {
                record.outstanding.remove(&(p, i));
            }
            if h != peer {
                cancels.push((h, block));
            }
        }
        if piece_complete {
            // Present: `state[p]` is Active, so `active` holds `p` (invariant).
            if let Some(piece) = self.active.remove(&p) {
                self.complete.insert(p, piece.contributors);
            }
            self.state[p as usize] = PieceState::Complete;
        }
        BlockOutcome::Accepted { piece_complete, cancels }
    }

    /// The piece's hash is good: it counts as have. Also accepted for a piece not yet complete
    /// (found on disk): its outstanding requests are then forgotten. Out of range: ignored.
    pub fn piece_verified(&mut self, piece: u32) {
        if piece >= self.layout.num_pieces {
            return;
        }
        match self.state[piece as usize] {
            PieceState::Have => return,
            PieceState::Untouched => self.untouched -= 1,
            PieceState::Active => self.drop_active(piece),
            PieceState::Complete => {
                self.complete.remove(&piece);
            }
        }
        self.state[piece as usize] = PieceState::Have;
        self.have.set(piece);
    }

    /// The piece's hash failed: all its blocks become missing again. Returns the peers that
    /// contributed blocks to it (for banning), sorted. A verified piece (re-check) becomes
    /// missing with no contributors known; a piece still under way or untouched cannot have
    /// been hashed, and is left alone.
    pub fn piece_failed(&mut self, piece: u32) -> Vec<PeerKey> {
        if piece >= self.layout.num_pieces {
            return Vec::new();
        }
        let contributors = match self.state[piece as usize] {
            PieceState::Untouched | PieceState::Active => return Vec::new(),
            PieceState::Complete => self.complete.remove(&piece).unwrap_or_default(),
            PieceState::Have => {
                self.have.clear(piece);
                BTreeSet::new()
            }
        };
        self.state[piece as usize] = PieceState::Untouched;
        self.untouched += 1;
        contributors.into_iter().collect()
    }

    /// Makes untouched piece `p` active and takes its first free blocks for `peer`.
    fn start_piece(&mut self, p: u32, peer: PeerKey, max: usize, picked: &mut Vec<(u32, u32)>) {
        let blocks = self.layout.blocks_in(p);
        let mut piece = ActivePiece {
            blocks: vec![Block::default(); blocks as usize],
            received: 0,
            free: blocks,
            first_free: 0,
            contributors: BTreeSet::new(),
        };
        self.state[p as usize] = PieceState::Active;
        self.untouched -= 1;
        self.free_blocks += u64::from(blocks) - take_free(&mut piece, p, peer, max, picked);
        self.active.insert(p, piece);
    }

    /// The record of `peer`, created empty on first mention.
    fn record(&mut self, peer: PeerKey) -> &mut PeerRecord {
        let n = self.layout.num_pieces;
        self.peers
            .entry(peer)
            .or_insert_with(|| PeerRecord { has: Bitfield::new(n), outstanding: BTreeSet::new() })
    }

    /// An untouched piece `peer_has` has: random while few are verified, else rarest first;
    /// ties by reservoir sampling, so each tied piece is equally likely. One O(pieces) scan.
    fn choose_new(&mut self, peer_has: &Bitfield) -> Option<u32> {
        if self.untouched == 0 {
            return None;
        }
        let random = self.have.count() < self.config.random_first;
        let mut best = None;
        let mut best_avail = u32::MAX;
        let mut ties = 0u32;
        for (p, state) in self.state.iter().enumerate() {
            let p = p as u32;
            if *state != PieceState::Untouched || !peer_has.has(p) {
                continue;
            }
            let avail = if random { 0 } else { self.availability[p as usize] };
            if avail < best_avail {
                best = Some(p);
                best_avail = avail;
                ties = 1;
            } else if avail == best_avail {
                ties += 1;
                if self.rng.random_range(0..ties) == 0 {
                    best = Some(p);
                }
            }
        }
        best
    }

    /// `peer` no longer holds block `i` of piece `p` (its outstanding entry is already gone).
    fn unhold(&mut self, peer: PeerKey, p: u32, i: u32) {
        let Some(piece) = self.active.get_mut(&p) else {
            return;
        };
        let b = &mut piece.blocks[i as usize];
        b.holders.retain(|&h| h != peer);
        if b.holders.is_empty() && !b.received {
            piece.free += 1;
            piece.first_free = piece.first_free.min(i);
            self.free_blocks += 1;
        }
    }

    /// Stops tracking an active piece, forgetting the requests outstanding for it.
    fn drop_active(&mut self, p: u32) {
        let Some(piece) = self.active.remove(&p) else {
            return;
        };
        for (i, b) in piece.blocks.iter().enumerate() {
            for h in &b.holders {
                if let Some(record) = self.peers.get_mut(h) {
                    record.outstanding.remove(&(p, i as u32));
                }
            }
        }
        self.free_blocks -= u64::from(piece.free);
    }
}

/// Hands free blocks of `piece` (index `p`) to `peer` until `picked` holds `max`. Returns how
/// many it took.
fn take_free(
    piece: &mut ActivePiece,
    p: u32,
    peer: PeerKey,
    max: usize,
    picked: &mut Vec<(u32, u32)>,
) -> u64 {
    let mut taken = 0;
    let mut i = piece.first_free;
    while (i as usize) < piece.blocks.len() && picked.len() < max && piece.free > 0 {
        let b = &mut piece.blocks[i as usize];
        if !b.received && b.holders.is_empty() {
            b.holders.push(peer);
            piece.free -= 1;
            picked.push((p, i));
            taken += 1;
        }
        i += 1;
    }
    // Every block in first_free..i is now taken or was not free.
    piece.first_free = i;
    taken
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::collections::{BTreeMap, VecDeque};

    const KIB: u32 = 1024;

    fn picker(
        config: PickerConfig,
        piece_length: u32,
        total: u64,
        seed: u64,
    ) -> PiecePicker<ChaCha8Rng> {
        let n = Layout::new(piece_length, total).num_pieces;
        PiecePicker::new(
            config,
            piece_length,
            total,
            Bitfield::new(n),
            ChaCha8Rng::seed_from_u64(seed),
        )
    }

    fn bits(n: u32, set: impl IntoIterator<Item = u32>) -> Bitfield {
        let mut b = Bitfield::new(n);
        for i in set {
            b.set(i);
        }
        b
    }

    fn block(piece: u32, offset: u32, length: u32) -> BlockRef {
        BlockRef { piece, offset, length }
    }

    /// Checks every invariant in the module docs.
    fn check_invariants<R: rand::Rng>(pk: &PiecePicker<R>) {
        let n = pk.layout.num_pieces;
        let mut untouched = 0;
        for p in 0..n {
            match pk.state[p as usize] {
                PieceState::Untouched => untouched += 1,
                PieceState::Active => assert!(pk.active.contains_key(&p)),
                PieceState::Complete => assert!(pk.complete.contains_key(&p)),
                PieceState::Have => {}
            }
            assert_eq!(pk.have.has(p), pk.state[p as usize] == PieceState::Have);
            let avail = pk.peers.values().filter(|r| r.has.has(p)).count() as u32;
            assert_eq!(pk.availability(p), avail, "availability of {p}");
        }
        assert_eq!(untouched, pk.untouched);
        assert_eq!(
            pk.active.len() + pk.complete.len() + untouched as usize + pk.have.count() as usize,
            n as usize
        );
        let mut free_total = 0u64;
        for (&p, piece) in &pk.active {
            assert_eq!(piece.blocks.len() as u32, pk.layout.blocks_in(p));
            let mut free = 0;
            for (i, b) in piece.blocks.iter().enumerate() {
                let i = i as u32;
                if b.received {
                    assert!(b.holders.is_empty());
                } else if b.holders.is_empty() {
                    free += 1;
                    assert!(i >= piece.first_free);
                }
                for h in &b.holders {
                    assert!(pk.peers[h].outstanding.contains(&(p, i)));
                }
                assert!(b.holders.len() <= pk.config.endgame_max_dup.max(1));
            }
            assert_eq!(piece.free, free);
            assert_eq!(piece.received as usize, piece.blocks.iter().filter(|b| b.received).count());
            free_total += u64::from(free);
        }
        assert_eq!(pk.free_blocks, free_total);
        for (k, r) in &pk.peers {
            for (p, i) in &r.outstanding {
                assert!(pk.active[p].blocks[*i as usize].holders.contains(k));
            }
        }
    }

    /// A simulated remote peer: what it has and the requests it will answer, in order.
    struct SimPeer {
        key: PeerKey,
        has: Bitfield,
        queue: VecDeque<BlockRef>,
    }

    /// Drives a picker against simulated peers that answer one request per step each.
    struct Swarm {
        picker: PiecePicker<ChaCha8Rng>,
        peers: Vec<SimPeer>,
        /// How often each block was requested.
        requests: BTreeMap<BlockRef, u32>,
        received_bytes: u64,
        pipeline: usize,
    }

    impl Swarm {
        fn new(picker: PiecePicker<ChaCha8Rng>, has: Vec<Bitfield>) -> Self {
            let mut swarm = Swarm {
                picker,
                peers: Vec::new(),
                requests: BTreeMap::new(),
                received_bytes: 0,
                pipeline: 4,
            };
            for (k, has) in has.into_iter().enumerate() {
                let key = PeerKey(k as u64);
                swarm.picker.peer_bitfield(key, &has);
                swarm.peers.push(SimPeer { key, has, queue: VecDeque::new() });
            }
            swarm
        }

        fn step(&mut self) {
            for k in 0..self.peers.len() {
                let room = self.pipeline - self.picker.outstanding(self.peers[k].key);
                let was_endgame = self.picker.in_endgame();
                let picked = self.picker.pick(self.peers[k].key, &self.peers[k].has, room);
                for b in picked {
                    let n = self.requests.entry(b).or_default();
                    *n += 1;
                    if *n > 1 {
                        assert!(
                            was_endgame || self.picker.in_endgame(),
                            "{b:?} requested twice outside endgame"
                        );
                    }
                    assert!(!self.peers[k].queue.contains(&b), "{b:?} twice to one peer");
                    self.peers[k].queue.push_back(b);
                }
            }
            for k in 0..self.peers.len() {
                let Some(b) = self.peers[k].queue.pop_front() else {
                    continue;
                };
                match self.picker.block_received(self.peers[k].key, b) {
                    BlockOutcome::Accepted { piece_complete, cancels } => {
                        self.received_bytes += u64::from(b.length);
                        for (other, cb) in cancels {
                            assert_eq!(cb, b);
                            let q = &mut self.peers[other.0 as usize].queue;
                            let before = q.len();
                            q.retain(|x| *x != cb);
                            assert_eq!(q.len() + 1, before, "cancel for a block not queued");
                        }
                        if piece_complete {
                            self.picker.piece_verified(b.piece);
                        }
                    }
                    BlockOutcome::Unexpected => panic!("{b:?} from {k} unexpected"),
                }
            }
            check_invariants(&self.picker);
        }

        fn drive(&mut self) {
            for _ in 0..100_000 {
                if self.picker.is_complete() {
                    return;
                }
                self.step();
            }
            panic!("download did not finish");
        }
    }

    #[test]
    fn full_download_with_three_peers() {
        // 7 full pieces of 64 KiB and a last piece of 20,000 bytes (blocks of 16384 + 3616).
        let total = 7 * 64 * u64::from(KIB) + 20_000;
        for seed in 0..5 {
            let pk = picker(PickerConfig::default(), 64 * KIB, total, seed);
            let n = pk.num_pieces();
            assert_eq!(n, 8);
            let seeder = Bitfield::full(n);
            let evens = bits(n, (0..n).filter(|p| p % 2 == 0));
            let odds = bits(n, (0..n).filter(|p| p % 2 == 1));
            let mut swarm = Swarm::new(pk, vec![seeder, evens, odds]);
            swarm.drive();
            assert!(swarm.picker.is_complete());
            assert_eq!(swarm.received_bytes, total);
            assert_eq!(swarm.requests.len(), 7 * 4 + 2, "every block requested");
            let dups: u32 = swarm.requests.values().map(|n| n - 1).sum();
            assert!(dups <= swarm.requests.len() as u32, "at most one duplicate per block");
            assert!(swarm.requests.values().all(|&n| n <= 2), "endgame_max_dup = 2");
            assert!(swarm.peers.iter().all(|p| p.queue.is_empty()));
            assert!(!swarm.picker.in_endgame());
            assert!(swarm.picker.pick(PeerKey(0), &Bitfield::full(n), 4).is_empty());
        }
    }

    #[test]
    fn last_block_is_short() {
        // Piece 0: two blocks; piece 1: 16384 + 100 bytes.
        let total = 2 * 16384 + 16384 + 100;
        let mut pk = picker(PickerConfig::default(), 32 * KIB, total, 1);
        assert_eq!(pk.num_pieces(), 2);
        assert_eq!(pk.piece_size(1), 16484);
        let mut got = pk.pick(PeerKey(1), &Bitfield::full(2), 10);
        got.sort();
        assert_eq!(
            got,
            vec![
                block(0, 0, 16384),
                block(0, 16384, 16384),
                block(1, 0, 16384),
                block(1, 16384, 100)
            ]
        );
        // The wrong length for the short block, or a full block where the short one is.
        assert_eq!(pk.block_received(PeerKey(1), block(1, 16384, 16384)), BlockOutcome::Unexpected);
        assert_eq!(pk.block_received(PeerKey(1), block(1, 16384, 99)), BlockOutcome::Unexpected);
        assert_eq!(pk.block_received(PeerKey(1), block(1, 100, 100)), BlockOutcome::Unexpected);
        assert_eq!(
            pk.block_received(PeerKey(1), block(1, 16384, 100)),
            BlockOutcome::Accepted { piece_complete: false, cancels: vec![] }
        );
        assert_eq!(
            pk.block_received(PeerKey(1), block(1, 0, 16384)),
            BlockOutcome::Accepted { piece_complete: true, cancels: vec![] }
        );
        // Once complete, the piece is neither requested nor have until verified.
        assert_eq!(pk.block_received(PeerKey(1), block(1, 0, 16384)), BlockOutcome::Unexpected);
        assert!(!pk.have().has(1));
        pk.release_peer(PeerKey(1));
        assert_eq!(
            pk.pick(PeerKey(1), &Bitfield::full(2), 10),
            vec![block(0, 0, 16384), block(0, 16384, 16384)]
        );
        pk.piece_verified(1);
        assert!(pk.have().has(1));
    }

    #[test]
    fn rarest_first_after_random_first_pieces() {
        // One-block pieces; the first four verified (resume), so rarest first is on.
        let n = 12;
        for seed in 0..10 {
            let have = bits(n, 0..4);
            let mut pk = PiecePicker::new(
                PickerConfig::default(),
                16 * KIB,
                u64::from(n) * 16384,
                have,
                ChaCha8Rng::seed_from_u64(seed),
            );
            // Piece 9 is announced by one peer, 6 by two, the rest by three.
            pk.peer_bitfield(PeerKey(1), &Bitfield::full(n));
            pk.peer_bitfield(PeerKey(2), &bits(n, (0..n).filter(|&p| p != 9)));
            pk.peer_bitfield(PeerKey(3), &bits(n, 0..6));
            for p in 7..n {
                if p != 9 {
                    pk.peer_have(PeerKey(3), p);
                }
            }
            pk.peer_have(PeerKey(3), 7); // a repeat counts once
            assert_eq!(pk.availability(9), 1);
            assert_eq!(pk.availability(6), 2);
            assert_eq!(pk.availability(7), 3);
            assert_eq!(pk.pick(PeerKey(1), &Bitfield::full(n), 1), vec![block(9, 0, 16384)]);
            assert_eq!(pk.pick(PeerKey(1), &Bitfield::full(n), 1), vec![block(6, 0, 16384)]);
            // Among equally rare pieces, only ones the peer has.
            let next = pk.pick(PeerKey(3), &bits(n, [4, 5, 8]), 1);
            assert!(
                next == vec![block(4, 0, 16384)]
                    || next == vec![block(5, 0, 16384)]
                    || next == vec![block(8, 0, 16384)]
            );
        }
    }

    #[test]
    fn rarest_first_ties_are_random() {
        let n = 8;
        let mut firsts = BTreeSet::new();
        for seed in 0..20 {
            let mut pk = PiecePicker::new(
                PickerConfig { random_first: 0, endgame_max_dup: 2, endgame_when_idle: false },
                16 * KIB,
                u64::from(n) * 16384,
                Bitfield::new(n),
                ChaCha8Rng::seed_from_u64(seed),
            );
            pk.peer_bitfield(PeerKey(1), &Bitfield::full(n));
            firsts.insert(pk.pick(PeerKey(1), &Bitfield::full(n), 1)[0].piece);
        }
        assert!(firsts.len() > 3, "ties broken at random: {firsts:?}");
    }

    #[test]
    fn first_pieces_are_random() {
        let n = 16;
        let mut firsts = BTreeSet::new();
        for seed in 0..20 {
            let mut pk = picker(PickerConfig::default(), 16 * KIB, u64::from(n) * 16384, seed);
            // Piece 5 is the unique rarest, yet the first picks ignore availability.
            pk.peer_bitfield(PeerKey(1), &Bitfield::full(n));
            pk.peer_bitfield(PeerKey(2), &bits(n, (0..n).filter(|&p| p != 5)));
            let first = pk.pick(PeerKey(1), &Bitfield::full(n), 1);
            assert_eq!(first.len(), 1);
            firsts.insert(first[0].piece);
        }
        assert!(firsts.len() > 3, "not random: {firsts:?}");
        assert!(firsts.iter().any(|&p| p != 0) && firsts.iter().any(|&p| p != 5));
    }

    #[test]
    fn first_pieces_random_then_rarest() {
        // Four pieces verified through the picker itself switch it to rarest first.
        let n = 10;
        let mut pk = picker(PickerConfig::default(), 16 * KIB, u64::from(n) * 16384, 7);
        pk.peer_bitfield(PeerKey(1), &Bitfield::full(n));
        pk.peer_bitfield(PeerKey(2), &bits(n, (0..n).filter(|&p| p != 3)));
        let mut done = 0;
        while done < 4 {
            let b = pk.pick(PeerKey(2), &bits(n, (0..n).filter(|&p| p != 3)), 1)[0];
            assert_ne!(b.piece, 3);
            assert_eq!(
                pk.block_received(PeerKey(2), b),
                BlockOutcome::Accepted { piece_complete: true, cancels: vec![] }
            );
            pk.piece_verified(b.piece);
            done += 1;
        }
        assert_eq!(pk.pick(PeerKey(1), &Bitfield::full(n), 1), vec![block(3, 0, 16384)]);
    }

    #[test]
    fn urgent_pieces_come_first_in_their_order_even_before_partial_ones() {
        // Pieces of four blocks.
        let n = 8;
        let mut pk = picker(PickerConfig::default(), 64 * KIB, u64::from(n) * 65536, 5);
        let all = Bitfield::full(n);
        pk.peer_bitfield(PeerKey(1), &all);
        // A piece under way (one block of four taken).
        let first = pk.pick(PeerKey(1), &all, 1)[0].piece;
        let (a, b) = ((first + 3) % n, (first + 6) % n);
        // Repeats and pieces out of range are dropped; a verified one is skipped.
        pk.set_urgent(&[b, a, b, n, 99]);
        assert_eq!(pk.urgent().collect::<Vec<_>>(), vec![b, a]);
        let got = pk.pick(PeerKey(1), &all, 9);
        let pieces: Vec<u32> = got.iter().map(|x| x.piece).collect();
        assert_eq!(pieces, vec![b, b, b, b, a, a, a, a, first]);
        // Once b is verified it is no longer urgent.
        for x in got.iter().filter(|x| x.piece == b) {
            pk.block_received(PeerKey(1), *x);
        }
        pk.piece_verified(b);
        assert_eq!(pk.urgent().collect::<Vec<_>>(), vec![a]);
        // A peer without a gets no block of it.
        let without_a = bits(n, (0..n).filter(|&p| p != a));
        pk.peer_bitfield(PeerKey(2), &without_a);
        assert!(pk.pick(PeerKey(2), &without_a, 4).iter().all(|x| x.piece != a));
        pk.set_urgent(&[]);
        assert_eq!(pk.urgent().count(), 0);
    }

    #[test]
    fn with_no_urgent_pieces_the_picks_are_those_of_before() {
        // The same seed, with and without an urgent list that was then cleared: every pick the
        // same (step 0 draws nothing from the RNG).
        let n = 64;
        let run = |urgent: bool| {
            let mut pk = picker(PickerConfig::default(), 16 * KIB, u64::from(n) * 16384, 9);
            if urgent {
                pk.set_urgent(&[5, 9]);
                pk.set_urgent(&[]);
            }
            let all = Bitfield::full(n);
            pk.peer_bitfield(PeerKey(1), &all);
            (0..20).flat_map(|_| pk.pick(PeerKey(1), &all, 3)).collect::<Vec<_>>()
        };
        assert_eq!(run(true), run(false));
    }

    #[test]
    fn a_long_urgent_list_is_capped() {
        let n = 4096;
        let mut pk = picker(PickerConfig::default(), 16 * KIB, u64::from(n) * 16384, 5);
        let all: Vec<u32> = (0..n).rev().collect();
        pk.set_urgent(&all);
        let kept: Vec<u32> = pk.urgent().collect();
        assert_eq!(kept.len(), MAX_URGENT);
        assert_eq!(kept[0], n - 1);
    }

    #[test]
    fn partial_pieces_continue_before_new_ones() {
        // Pieces of four blocks.
        let n = 6;
        let mut pk = picker(PickerConfig::default(), 64 * KIB, u64::from(n) * 65536, 3);
        let all = Bitfield::full(n);
        let a = pk.pick(PeerKey(1), &all, 1);
        assert_eq!(a.len(), 1);
        let p = a[0].piece;
        assert_eq!(a[0].offset, 0);
        // Another peer continues the same piece, then starts one new piece.
        let b = pk.pick(PeerKey(2), &all, 4);
        assert_eq!(
            b[..3],
            [block(p, 16384, 16384), block(p, 32768, 16384), block(p, 49152, 16384)]
        );
        assert_ne!(b[3].piece, p);
        let q = b[3].piece;
        // A released block of the first piece comes before the rest of the second.
        pk.release(PeerKey(2), block(p, 32768, 16384));
        assert_eq!(pk.outstanding(PeerKey(2)), 3);
        let mut c = pk.pick(PeerKey(3), &all, 4);
        c.sort();
        let mut expect = vec![
            block(p, 32768, 16384),
            block(q, 16384, 16384),
            block(q, 32768, 16384),
            block(q, 49152, 16384),
        ];
        expect.sort();
        assert_eq!(c, expect);
        // A peer without the partial pieces gets a new piece.
        let d = pk.pick(PeerKey(4), &bits(n, (0..n).filter(|&x| x != p && x != q)), 1);
        assert!(d[0].piece != p && d[0].piece != q);
    }

    #[test]
    fn endgame_duplicates_and_cancels() {
        // Two pieces of two blocks.
        let n = 2;
        let all = Bitfield::full(n);
        let eager = PickerConfig { endgame_when_idle: false, ..PickerConfig::default() };
        let mut pk = picker(eager, 32 * KIB, 65536, 5);
        let a = pk.pick(PeerKey(1), &all, 3);
        assert_eq!(a.len(), 3);
        assert!(!pk.in_endgame());
        // B gets the last free block, then (endgame) duplicates of A's three.
        let b = pk.pick(PeerKey(2), &all, 10);
        assert_eq!(b.len(), 4);
        assert!(pk.in_endgame());
        assert!(a.iter().all(|x| b.contains(x)));
        assert!(pk.pick(PeerKey(2), &all, 10).is_empty(), "never twice to one peer");
        // C may only duplicate the block B alone holds: the others have two holders.
        let only_b: Vec<BlockRef> = b.iter().copied().filter(|x| !a.contains(x)).collect();
        assert_eq!(only_b.len(), 1);
        assert_eq!(pk.pick(PeerKey(3), &all, 10), only_b, "at most two holders");
        // A's last block arrives from B: cancel it at A.
        let x = a[2];
        assert_eq!(
            pk.block_received(PeerKey(2), x),
            BlockOutcome::Accepted { piece_complete: false, cancels: vec![(PeerKey(1), x)] }
        );
        assert_eq!(pk.outstanding(PeerKey(1)), 2);
        assert_eq!(pk.outstanding(PeerKey(2)), 3);
        assert_eq!(pk.block_received(PeerKey(1), x), BlockOutcome::Unexpected);
        // A peer with three allowed holders may duplicate the rest.
        let mut pk3 = picker(
            PickerConfig { random_first: 4, endgame_max_dup: 3, endgame_when_idle: false },
            32 * KIB,
            65536,
            5,
        );
        pk3.pick(PeerKey(1), &all, 4);
        pk3.pick(PeerKey(2), &all, 4);
        assert_eq!(pk3.pick(PeerKey(3), &all, 10).len(), 4);
        assert!(pk3.pick(PeerKey(4), &all, 10).is_empty());
        // Releasing in endgame makes the block free again: endgame ends.
        assert_eq!(pk.release_peer(PeerKey(1)), 2);
        assert_eq!(pk.release_peer(PeerKey(2)), 3);
        assert_eq!(pk.release_peer(PeerKey(3)), 1);
        assert!(!pk.in_endgame());
        assert_eq!(pk.pick(PeerKey(3), &all, 10).len(), 3);
    }

    #[test]
    fn in_endgame_only_an_idle_peer_gets_a_duplicate_and_one_at_a_time() {
        // Two pieces of two blocks; A holds three, B the last free one.
        let all = Bitfield::full(2);
        let mut pk = picker(PickerConfig::default(), 32 * KIB, 65536, 5);
        let a = pk.pick(PeerKey(1), &all, 3);
        let b = pk.pick(PeerKey(2), &all, 10);
        assert_eq!(b.len(), 1, "the free block only: B still has it outstanding");
        assert!(pk.in_endgame());
        assert!(pk.pick(PeerKey(2), &all, 10).is_empty(), "B is busy: no duplicate");
        // C has nothing outstanding: one duplicate of A's blocks, not three.
        let c = pk.pick(PeerKey(3), &all, 10);
        assert_eq!(c.len(), 1);
        assert!(a.contains(&c[0]));
        assert!(pk.pick(PeerKey(3), &all, 10).is_empty(), "C is busy now");
        // B's block arrives: B is idle and may duplicate one of A's blocks C did not take.
        assert!(matches!(pk.block_received(PeerKey(2), b[0]), BlockOutcome::Accepted { .. }));
        let b2 = pk.pick(PeerKey(2), &all, 10);
        assert_eq!(b2.len(), 1);
        assert!(a.contains(&b2[0]) && b2[0] != c[0]);
    }

    #[test]
    fn failed_piece_is_requested_again_and_names_contributors() {
        // One piece of three blocks.
        let all = Bitfield::full(1);
        let mut pk = picker(PickerConfig::default(), 48 * KIB, 49152, 2);
        let a = pk.pick(PeerKey(7), &all, 2);
        let b = pk.pick(PeerKey(3), &all, 1);
        assert_eq!(b, vec![block(0, 32768, 16384)]);
        assert!(matches!(
            pk.block_received(PeerKey(7), a[0]),
            BlockOutcome::Accepted { piece_complete: false, .. }
        ));
        assert!(matches!(
            pk.block_received(PeerKey(3), b[0]),
            BlockOutcome::Accepted { piece_complete: false, .. }
        ));
        assert_eq!(
            pk.block_received(PeerKey(7), a[1]),
            BlockOutcome::Accepted { piece_complete: true, cancels: vec![] }
        );
        assert!(pk.pick(PeerKey(9), &all, 3).is_empty());
        assert_eq!(pk.piece_failed(0), vec![PeerKey(3), PeerKey(7)]);
        assert!(!pk.have().has(0) && !pk.is_complete());
        assert_eq!(
            pk.pick(PeerKey(9), &all, 3),
            vec![block(0, 0, 16384), block(0, 16384, 16384), block(0, 32768, 16384)]
        );
        for x in [block(0, 0, 16384), block(0, 16384, 16384), block(0, 32768, 16384)] {
            assert!(matches!(pk.block_received(PeerKey(9), x), BlockOutcome::Accepted { .. }));
        }
        pk.piece_verified(0);
        assert!(pk.is_complete());
        // Failing again after verification (a re-check) makes it missing, contributors unknown.
        assert_eq!(pk.piece_failed(0), vec![]);
        assert!(!pk.is_complete());
        assert_eq!(pk.pick(PeerKey(9), &all, 1).len(), 1);
        check_invariants(&pk);
    }

    #[test]
    fn peer_left_releases_requests_and_availability() {
        let n = 4;
        let mut pk = picker(PickerConfig::default(), 32 * KIB, u64::from(n) * 32768, 4);
        let all = Bitfield::full(n);
        pk.peer_bitfield(PeerKey(1), &all);
        pk.peer_bitfield(PeerKey(2), &bits(n, [0, 1]));
        pk.peer_have(PeerKey(2), 3);
        assert_eq!((0..n).map(|p| pk.availability(p)).collect::<Vec<_>>(), vec![2, 2, 1, 2]);
        let a = pk.pick(PeerKey(1), &all, 8);
        assert_eq!(a.len(), 8);
        assert_eq!(pk.outstanding(PeerKey(1)), 8);
        // The driver's bitfield is stale; the picker removes what it recorded.
        pk.peer_left(PeerKey(1), &Bitfield::new(n));
        assert_eq!(pk.outstanding(PeerKey(1)), 0);
        assert_eq!((0..n).map(|p| pk.availability(p)).collect::<Vec<_>>(), vec![1, 1, 0, 1]);
        assert!(!pk.in_endgame());
        let mut b = pk.pick(PeerKey(2), &bits(n, [0, 1, 3]), 8);
        b.sort();
        let mut expect: Vec<_> = a.iter().copied().filter(|x| x.piece != 2).collect();
        expect.sort();
        assert_eq!(b, expect);
        // A late answer from the departed peer is still a missing block of a piece under way.
        assert!(matches!(pk.block_received(PeerKey(1), a[0]), BlockOutcome::Accepted { .. }));
        check_invariants(&pk);
    }

    #[test]
    fn hostile_and_odd_input_is_ignored() {
        let n = 3;
        let mut pk = picker(PickerConfig::default(), 16 * KIB, u64::from(n) * 16384, 0);
        pk.peer_bitfield(PeerKey(1), &Bitfield::full(5));
        pk.peer_have(PeerKey(1), 3);
        pk.peer_have(PeerKey(1), u32::MAX);
        assert_eq!(pk.availability(0), 0);
        assert_eq!(pk.availability(99), 0);
        assert!(pk.pick(PeerKey(1), &Bitfield::full(4), 5).is_empty());
        assert!(pk.pick(PeerKey(1), &Bitfield::full(n), 0).is_empty());
        for b in [
            block(3, 0, 16384),
            block(u32::MAX, u32::MAX, u32::MAX),
            block(0, 1, 16384),
            block(0, 0, 0),
        ] {
            assert_eq!(pk.block_received(PeerKey(1), b), BlockOutcome::Unexpected);
            pk.release(PeerKey(1), b);
        }
        // Unsolicited data for a piece nobody asked for is refused.
        assert_eq!(pk.block_received(PeerKey(1), block(0, 0, 16384)), BlockOutcome::Unexpected);
        pk.piece_verified(7);
        assert!(pk.piece_failed(7).is_empty());
        pk.peer_left(PeerKey(42), &Bitfield::new(1));
        assert_eq!(pk.release_peer(PeerKey(42)), 0);
        check_invariants(&pk);
        // A resume bitfield of the wrong length counts as nothing; an empty torrent is complete.
        let pk = PiecePicker::new(
            PickerConfig::default(),
            16 * KIB,
            3 * 16384,
            Bitfield::full(2),
            ChaCha8Rng::seed_from_u64(0),
        );
        assert_eq!(pk.have().count(), 0);
        let mut empty = PiecePicker::new(
            PickerConfig::default(),
            16 * KIB,
            0,
            Bitfield::new(0),
            ChaCha8Rng::seed_from_u64(0),
        );
        assert!(empty.is_complete() && !empty.in_endgame());
        assert!(empty.pick(PeerKey(1), &Bitfield::new(0), 4).is_empty());
        let zero = PiecePicker::new(
            PickerConfig::default(),
            0,
            100,
            Bitfield::new(0),
            ChaCha8Rng::seed_from_u64(0),
        );
        assert_eq!(zero.num_pieces(), 0);
    }

    #[test]
    fn resumed_pieces_are_never_picked() {
        let n = 5;
        let have = bits(n, [0, 2, 4]);
        let mut pk = PiecePicker::new(
            PickerConfig::default(),
            16 * KIB,
            u64::from(n) * 16384,
            have,
            ChaCha8Rng::seed_from_u64(9),
        );
        let mut got: Vec<u32> =
            pk.pick(PeerKey(1), &Bitfield::full(n), 10).iter().map(|b| b.piece).collect();
        got.sort();
        assert_eq!(got, vec![1, 3]);
        pk.piece_verified(1);
        pk.piece_verified(3);
        assert!(pk.is_complete());
    }

    /// Random interleavings of pick / receive / release / choke / leave / hash failure, checked
    /// against a model of who holds what; then a plain drive must finish.
    #[test]
    fn random_interleavings_stay_consistent_and_finish() {
        for seed in 0..12 {
            let mut ops = ChaCha8Rng::seed_from_u64(1000 + seed);
            let piece_length = [16 * KIB, 48 * KIB, 40 * KIB][seed as usize % 3];
            let total = u64::from(piece_length) * 9 + 5000;
            let config = PickerConfig {
                random_first: 2,
                endgame_max_dup: 2 + (seed as usize % 2),
                endgame_when_idle: seed % 3 == 0,
            };
            let mut pk = picker(config, piece_length, total, seed);
            let n = pk.num_pieces();
            // Slot 0 is always a seeder, so the swarm can always finish.
            let mut slots: Vec<(PeerKey, Bitfield)> = Vec::new();
            let mut next_key = 0u64;
            let mut held: BTreeMap<PeerKey, BTreeSet<BlockRef>> = BTreeMap::new();
            let fresh = |slot: usize, ops: &mut ChaCha8Rng, next_key: &mut u64| {
                let has = if slot == 0 {
                    Bitfield::full(n)
                } else {
                    bits(n, (0..n).filter(|_| ops.random_bool(0.5)))
                };
                *next_key += 1;
                (PeerKey(*next_key), has)
            };
            for slot in 0..4 {
                let (k, has) = fresh(slot, &mut ops, &mut next_key);
                pk.peer_bitfield(k, &has);
                slots.push((k, has));
            }
            let mut bytes = 0u64;
            let mut steps = 0;
            while !pk.is_complete() && steps < 3000 {
                steps += 1;
                let slot = ops.random_range(0..slots.len());
                let key = slots[slot].0;
                let mine = held.entry(key).or_default();
                match ops.random_range(0..100) {
                    0..40 => {
                        let max = ops.random_range(0..6);
                        for b in pk.pick(key, &slots[slot].1, max) {
                            assert!(slots[slot].1.has(b.piece));
                            assert!(mine.insert(b), "{b:?} handed to {key:?} twice");
                        }
                    }
                    40..80 => {
                        let Some(&b) = mine.iter().nth(ops.random_range(0..mine.len().max(1)))
                        else {
                            continue;
                        };
                        mine.remove(&b);
                        match pk.block_received(key, b) {
                            BlockOutcome::Accepted { piece_complete, cancels } => {
                                bytes += u64::from(b.length);
                                for (other, cb) in cancels {
                                    assert_eq!(cb, b);
                                    assert!(held.get_mut(&other).unwrap().remove(&cb));
                                }
                                if piece_complete {
                                    if ops.random_bool(0.15) {
                                        let blamed = pk.piece_failed(b.piece);
                                        assert!(blamed.contains(&key));
                                        assert!(blamed.windows(2).all(|w| w[0] < w[1]));
                                        bytes -= u64::from(pk.piece_size(b.piece));
                                    } else {
                                        pk.piece_verified(b.piece);
                                    }
                                }
                            }
                            BlockOutcome::Unexpected => panic!("outstanding {b:?} unexpected"),
                        }
                    }
                    80..88 => {
                        let Some(&b) = mine.iter().next() else {
                            continue;
                        };
                        mine.remove(&b);
                        pk.release(key, b);
                    }
                    88..93 => {
                        assert_eq!(pk.release_peer(key), mine.len());
                        mine.clear();
                    }
                    93..97 => {
                        pk.peer_left(key, &slots[slot].1);
                        held.remove(&key);
                        let (k, has) = fresh(slot, &mut ops, &mut next_key);
                        pk.peer_bitfield(k, &has);
                        slots[slot] = (k, has);
                    }
                    _ => {
                        let p = ops.random_range(0..n);
                        if slots[slot].1.set(p) {
                            pk.peer_have(key, p);
                        }
                    }
                }
                for (k, set) in &held {
                    assert_eq!(pk.outstanding(*k), set.len());
                }
                check_invariants(&pk);
            }
            // Finish with the current peers, answering in order.
            let peers: Vec<Bitfield> = slots.iter().map(|(_, h)| h.clone()).collect();
            for (k, _) in &slots {
                pk.peer_left(*k, &Bitfield::new(n));
            }
            let mut swarm = Swarm::new(pk, peers);
            swarm.drive();
            assert_eq!(bytes + swarm.received_bytes, total, "seed {seed}");
        }
    }
}
