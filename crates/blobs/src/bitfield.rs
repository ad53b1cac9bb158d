//! Which pieces a peer holds.

use serde::{Deserialize, Serialize};

/// A fixed-length set of piece indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bitfield {
    len: u32,
    #[serde(with = "serde_bytes_hex")]
    bits: Vec<u8>,
}

mod serde_bytes_hex {
    use serde::{Deserialize, Deserializer, Serializer};
    pub(super) fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.serialize_str(&hex::encode(b)) } else { s.serialize_bytes(b) }
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            hex::decode(s).map_err(serde::de::Error::custom)
        } else {
            serde::Deserialize::deserialize(d)
        }
    }
}

impl Bitfield {
    /// An empty set over `len` pieces.
    pub fn new(len: u32) -> Self {
        Bitfield { len, bits: vec![0; (len as usize).div_ceil(8)] }
    }

    /// Every piece.
    pub fn full(len: u32) -> Self {
        let mut b = Self::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    /// Rebuilds a set from bytes, refusing a wrong length or bits past the end.
    pub fn from_bytes(len: u32, bits: Vec<u8>) -> Option<Self> {
        if bits.len() != (len as usize).div_ceil(8) {
            return None;
        }
        let b = Bitfield { len, bits };
        let tail_ok = (len..(b.bits.len() as u32 * 8)).all(|i| !b.raw_get(i));
        tail_ok.then_some(b)
    }

    fn raw_get(&self, i: u32) -> bool {
        self.bits[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.raw_get(i)
    }

    pub fn set(&mut self, i: u32) {
        if i < self.len {
            self.bits[(i / 8) as usize] |= 1 << (i % 8);
        }
    }

    pub fn count(&self) -> u32 {
        self.bits.iter().map(|b| b.count_ones()).sum()
    }

    pub fn is_full(&self) -> bool {
        self.count() == self.len
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bits
    }

    /// Indexes that are set.
    pub fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.raw_get(i))
    }

    /// Union with another set of the same length.
    pub fn union(&mut self, other: &Bitfield) {
        if other.len == self.len {
            for (a, b) in self.bits.iter_mut().zip(&other.bits) {
                *a |= *b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn set_get_count(len in 0u32..300, idx in proptest::collection::vec(0u32..320, 0..50)) {
            let mut b = Bitfield::new(len);
            let mut model = std::collections::BTreeSet::new();
            for i in idx {
                b.set(i);
                if i < len { model.insert(i); }
            }
            prop_assert_eq!(b.count() as usize, model.len());
            prop_assert_eq!(b.ones().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            let back = Bitfield::from_bytes(len, b.bytes().to_vec()).unwrap();
            prop_assert_eq!(back, b);
        }
    }

    #[test]
    fn refuses_bad_bytes() {
        assert!(Bitfield::from_bytes(9, vec![0]).is_none());
        assert!(Bitfield::from_bytes(9, vec![0, 0b10]).is_none(), "bit 9 is past the end");
        assert!(Bitfield::full(10).is_full());
    }
}
