//! Why playback fails ([`PlayError`]), and the limits the player checks.

use crate::mpd::MpdError;
use crate::proto::abr::LadderError;
use crate::proto::trace::TraceError;

/// Largest media or initialization segment accepted, bytes.
pub const MAX_SEGMENT_BYTES: u64 = 256 << 20;
/// Rounds over all replicas before a segment is given up.
pub(super) const MAX_ROUNDS: usize = 3;
/// Largest speed-up accepted.
pub const MAX_SPEED: f64 = 1000.0;

/// Why playback could not start or finish, in terms of what to fix.
#[derive(Debug, thiserror::Error)]
pub enum PlayError {
    /// A URL that this player cannot fetch.
    #[error("cannot fetch {url}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A transfer failed (connection, timeout, broken body).
    #[error("{url}: {reason}")]
    Http {
        /// The URL.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The manifest was refused.
    #[error("the manifest at {url} is refused: {source}")]
    Mpd {
        /// Where it came from.
        url: String,
        /// Why.
        source: MpdError,
    },
    /// The manifest has nothing this player can play.
    #[error("the manifest at {url} cannot be played: {reason}")]
    Unplayable {
        /// Where it came from.
        url: String,
        /// Why.
        reason: String,
    },
    /// The representations do not make a ladder.
    #[error("the video representations do not make a bitrate ladder: {0}")]
    Ladder(#[from] LadderError),
    /// A segment failed on every replica, [`MAX_ROUNDS`] times over.
    #[error("segment {segment} failed on every replica ({tried} tries); last error: {last}")]
    AllReplicasFailed {
        /// The segment index.
        segment: usize,
        /// Requests made.
        tried: usize,
        /// The last failure.
        last: String,
    },
    /// A segment larger than [`MAX_SEGMENT_BYTES`].
    #[error("{url} is {bytes} bytes or more, over the {MAX_SEGMENT_BYTES}-byte segment limit")]
    SegmentTooLarge {
        /// The URL.
        url: String,
        /// Its announced or received size.
        bytes: u64,
    },
    /// A bandwidth trace that cannot be used.
    #[error("bad bandwidth trace: {0}")]
    Trace(String),
    /// A speed that is not in (0, [`MAX_SPEED`]].
    #[error("speed {0} must be a number in (0, {MAX_SPEED}]")]
    BadSpeed(f64),
}

impl From<TraceError> for PlayError {
    fn from(e: TraceError) -> Self {
        PlayError::Trace(e.to_string())
    }
}
