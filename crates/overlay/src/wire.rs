//! The overlay's message codec: one versioned, size-capped frame per message.
//!
//! A frame is `[PROTOCOL_VERSION] ++ postcard(message)`, at most [`MAX_FRAME`] bytes in all. The
//! codec is generic over any serde type, so the membership and broadcast messages (and later the
//! chat's) share one version byte and one cap. [`crate::transport`] carries frames with a length
//! prefix and refuses any longer than the same [`MAX_FRAME`] before allocating.
//!
//! Frames come from outside: [`decode`] rejects, with a typed error and never a panic, an empty
//! frame, an oversized one, an unknown version, malformed postcard, trailing bytes and any other
//! encoding that is not the one [`encode`] produces (postcard itself accepts over-long varints),
//! so one message has exactly one encoding the receiver accepts: `encode(decode(x)) == x`.
//! [`from_canonical`] is the same check without the version byte, for bytes that are hashed or
//! signed (chat envelopes) or nested in a frame.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The version byte every frame starts with. Bump it on any incompatible message change.
pub const PROTOCOL_VERSION: u8 = 1;

/// The largest frame (version byte included) that is encoded, sent, received or decoded.
pub const MAX_FRAME: usize = 64 * 1024;

/// Why a message could not be encoded or a frame decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The frame has no bytes at all, not even the version byte.
    #[error("empty frame: expected at least the version byte")]
    Empty,
    /// The frame (or the encoded message) is larger than [`MAX_FRAME`].
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The frame's length in bytes.
        len: usize,
        /// The limit, [`MAX_FRAME`].
        max: usize,
    },
    /// The frame's version byte is not [`PROTOCOL_VERSION`]: the peer runs another protocol version.
    #[error("frame has protocol version {found}, this node speaks version {expected}; upgrade the older node")]
    UnknownVersion {
        /// The version byte the frame carried.
        found: u8,
        /// [`PROTOCOL_VERSION`].
        expected: u8,
    },
    /// The bytes after the version byte are not a valid encoding of the expected message type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A whole message was decoded but bytes were left over after it.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The bytes decode, but are not the canonical encoding of what they decode to (for
    /// example an over-long varint), so they would give one message a second identity.
    #[error("non-canonical encoding")]
    NonCanonical,
    /// The message could not be serialized (a serde `Serialize` impl failed).
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// Encodes `msg` as one frame: the version byte followed by its postcard encoding.
///
/// Fails with [`WireError::TooLarge`] if the frame would exceed [`MAX_FRAME`].
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    let frame = postcard::to_extend(msg, vec![PROTOCOL_VERSION])
        .map_err(|e| WireError::Encode(e.to_string()))?;
    if frame.len() > MAX_FRAME {
        return Err(WireError::TooLarge { len: frame.len(), max: MAX_FRAME });
    }
    Ok(frame)
}

/// Decodes one frame produced by [`encode`] into a `T`.
///
/// Every check happens before any allocation the frame could ask for: postcard's own lengths are
/// bounded by the frame's bytes, and the frame itself is capped at [`MAX_FRAME`]. Only the
/// canonical encoding is accepted (see [`from_canonical`]).
pub fn decode<T: Serialize + DeserializeOwned>(frame: &[u8]) -> Result<T, WireError> {
    if frame.len() > MAX_FRAME {
        return Err(WireError::TooLarge { len: frame.len(), max: MAX_FRAME });
    }
    let (&version, body) = frame.split_first().ok_or(WireError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(WireError::UnknownVersion { found: version, expected: PROTOCOL_VERSION });
    }
    from_canonical(body)
}

/// Decodes postcard `bytes` (no version byte) into a `T`, accepting only the one encoding
/// postcard produces for it: no trailing bytes, and re-encoding gives back exactly `bytes`.
/// Use it for anything whose bytes are hashed or signed, so a changed byte can never make a
/// "new" message out of an old one.
///
/// The caller bounds `bytes`; the re-encoding is no longer than them for our message types.
pub fn from_canonical<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let (msg, rest) =
        postcard::take_from_bytes::<T>(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    let again = postcard::to_allocvec(&msg).map_err(|e| WireError::Encode(e.to_string()))?;
    if again != bytes {
        return Err(WireError::NonCanonical);
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Join { ttl: u8, addr: String },
        Data(Vec<u8>),
        Ping,
    }

    #[test]
    fn round_trip() {
        for msg in [
            Msg::Join { ttl: 6, addr: "127.0.0.1:4000".into() },
            Msg::Data(vec![1, 2, 3]),
            Msg::Ping,
        ] {
            let frame = encode(&msg).unwrap();
            assert_eq!(frame[0], PROTOCOL_VERSION);
            assert_eq!(decode::<Msg>(&frame).unwrap(), msg);
        }
    }

    #[test]
    fn ping_encoding_is_exact() {
        // Variant index 2 as a postcard varint, after the version byte.
        assert_eq!(encode(&Msg::Ping).unwrap(), vec![PROTOCOL_VERSION, 2]);
    }

    #[test]
    fn largest_message_fits_and_one_more_byte_does_not() {
        // Frame = version (1) + variant (1) + varint length (3 bytes for >= 16384) + payload.
        let fits = Msg::Data(vec![7; MAX_FRAME - 5]);
        let frame = encode(&fits).unwrap();
        assert_eq!(frame.len(), MAX_FRAME);
        assert_eq!(decode::<Msg>(&frame).unwrap(), fits);
        assert_eq!(
            encode(&Msg::Data(vec![7; MAX_FRAME - 4])),
            Err(WireError::TooLarge { len: MAX_FRAME + 1, max: MAX_FRAME })
        );
    }

    #[test]
    fn empty_frame() {
        assert_eq!(decode::<Msg>(&[]), Err(WireError::Empty));
    }

    #[test]
    fn too_large_frame() {
        let frame = vec![PROTOCOL_VERSION; MAX_FRAME + 1];
        assert_eq!(
            decode::<Msg>(&frame),
            Err(WireError::TooLarge { len: MAX_FRAME + 1, max: MAX_FRAME })
        );
    }

    #[test]
    fn unknown_version() {
        let mut frame = encode(&Msg::Ping).unwrap();
        frame[0] = 9;
        assert_eq!(
            decode::<Msg>(&frame),
            Err(WireError::UnknownVersion { found: 9, expected: PROTOCOL_VERSION })
        );
    }

    #[test]
    fn malformed() {
        // Unknown variant index.
        assert!(matches!(decode::<Msg>(&[PROTOCOL_VERSION, 7]), Err(WireError::Malformed(_))));
        // Only the version byte.
        assert!(matches!(decode::<Msg>(&[PROTOCOL_VERSION]), Err(WireError::Malformed(_))));
        // A length claiming far more bytes than the frame holds: an error, not an allocation.
        let frame = [PROTOCOL_VERSION, 1, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2];
        assert!(matches!(decode::<Msg>(&frame), Err(WireError::Malformed(_))));
    }

    #[test]
    fn over_long_varints_are_refused() {
        // `Data(vec![1])` is [version, 1, 1, 1]; the same with the length 1 written as the
        // two-byte varint 0x81 0x00, and the variant index likewise.
        assert_eq!(encode(&Msg::Data(vec![1])), Ok(vec![PROTOCOL_VERSION, 1, 1, 1]));
        for frame in
            [vec![PROTOCOL_VERSION, 1, 0x81, 0x00, 1], vec![PROTOCOL_VERSION, 0x81, 0x00, 1, 1]]
        {
            assert_eq!(decode::<Msg>(&frame), Err(WireError::NonCanonical), "{frame:?}");
        }
        assert_eq!(from_canonical::<Msg>(&[0x82, 0x00]), Err(WireError::NonCanonical));
        assert_eq!(from_canonical::<Msg>(&[2]), Ok(Msg::Ping));
    }

    #[test]
    fn trailing_bytes() {
        let mut frame = encode(&Msg::Ping).unwrap();
        frame.extend_from_slice(&[0, 0, 0]);
        assert_eq!(decode::<Msg>(&frame), Err(WireError::TrailingBytes(3)));
    }
}
