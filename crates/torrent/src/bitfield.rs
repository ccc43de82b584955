//! A fixed-length set of piece indices, stored as the wire's BITFIELD layout (BEP 3: the high
//! bit of the first byte is piece 0; spare bits at the end are zero).

/// Which pieces someone has.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: u32,
    count: u32,
}

/// A BITFIELD payload that does not fit the torrent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bitfield of {got} bytes does not fit {pieces} pieces (or sets a spare bit)")]
pub struct BitfieldError {
    got: usize,
    pieces: u32,
}

impl Bitfield {
    /// An empty bitfield for `len` pieces.
    pub fn new(len: u32) -> Self {
        Bitfield { bytes: vec![0; (len as usize).div_ceil(8)], len, count: 0 }
    }

    /// A bitfield with every one of `len` pieces set.
    pub fn full(len: u32) -> Self {
        let mut b = Self::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    /// Parses a BITFIELD payload: the length must match exactly and spare bits must be zero.
    pub fn from_wire(payload: &[u8], len: u32) -> Result<Self, BitfieldError> {
        let err = BitfieldError { got: payload.len(), pieces: len };
        if payload.len() != (len as usize).div_ceil(8) {
            return Err(err);
        }
        let spare = (payload.len() * 8) as u32 - len;
        if spare > 0 {
            let mask = (1u8 << spare) - 1;
            if payload[payload.len() - 1] & mask != 0 {
                return Err(err);
            }
        }
        let count = payload.iter().map(|b| b.count_ones()).sum();
        Ok(Bitfield { bytes: payload.to_vec(), len, count })
    }

    /// The wire layout.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of pieces this bitfield covers.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when the torrent has no pieces at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many pieces are set.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// True when every piece is set.
    pub fn is_full(&self) -> bool {
        self.count == self.len
    }

    /// Whether piece `i` is set; out-of-range indices are not.
    pub fn has(&self, i: u32) -> bool {
        i < self.len && self.bytes[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
    }

    /// Sets piece `i`; returns false if it was already set or is out of range.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len || self.has(i) {
            return false;
        }
        self.bytes[(i / 8) as usize] |= 0x80 >> (i % 8);
        self.count += 1;
        true
    }

    /// Clears piece `i`; returns false if it was not set.
    pub fn clear(&mut self, i: u32) -> bool {
        if !self.has(i) {
            return false;
        }
        self.bytes[(i / 8) as usize] &= !(0x80 >> (i % 8));
        self.count -= 1;
        true
    }

    /// True when `theirs` has a piece that `self` lacks (we are interested in them).
    /// Bitfields of different lengths never interest.
    pub fn wants_any_of(&self, theirs: &Bitfield) -> bool {
        self.len == theirs.len
            && self.bytes.iter().zip(&theirs.bytes).any(|(ours, t)| t & !ours != 0)
    }

    /// The set pieces, in increasing order.
    pub fn iter_set(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(move |&i| self.has(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip_and_spare_bits() {
        let mut b = Bitfield::new(10);
        assert!(b.set(0) && b.set(9) && !b.set(9) && !b.set(10));
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert_eq!(Bitfield::from_wire(&[0x80, 0x40], 10).unwrap(), b);
        assert!(Bitfield::from_wire(&[0x80, 0x41], 10).is_err(), "spare bit set");
        assert!(Bitfield::from_wire(&[0x80], 10).is_err(), "too short");
        assert_eq!(b.iter_set().collect::<Vec<_>>(), vec![0, 9]);
        assert!(b.clear(0) && !b.clear(0));
        assert_eq!(b.count(), 1);
        let mut theirs = Bitfield::new(10);
        assert!(!b.wants_any_of(&theirs));
        theirs.set(9);
        assert!(!b.wants_any_of(&theirs), "we have 9 already");
        theirs.set(3);
        assert!(b.wants_any_of(&theirs));
    }
}
