//! Content ids: the BLAKE3 hash of a blob's piece manifest, written `b3:<64 hex>`.
//!
//! Because the id is the hash of the list of piece hashes, a peer that has only the id can
//! fetch the manifest from anyone, check it against the id, and from then on check every
//! piece on arrival: the id binds every byte.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A content id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId(pub [u8; 32]);

/// Why text is not a content id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a content id: it looks like b3:<64 hex digits> (as `shoal share` prints)")]
pub struct CidError(pub String);

impl ContentId {
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, for tables.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b3:{}", self.hex())
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b3:{}", self.short())
    }
}

impl FromStr for ContentId {
    type Err = CidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let h = s.trim().strip_prefix("b3:").unwrap_or(s.trim());
        let mut out = [0u8; 32];
        if h.len() != 64 || hex::decode_to_slice(h, &mut out).is_err() {
            return Err(CidError(s.to_string()));
        }
        Ok(ContentId(out))
    }
}

impl Serialize for ContentId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.serialize_str(&self.to_string()) } else { s.serialize_bytes(&self.0) }
    }
}

impl<'de> Deserialize<'de> for ContentId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let b: Vec<u8> = serde::Deserialize::deserialize(d)?;
            let arr: [u8; 32] = b.try_into().map_err(|_| serde::de::Error::custom("content id must be 32 bytes"))?;
            Ok(ContentId(arr))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_text_json_and_postcard() {
        let c = ContentId([7; 32]);
        assert_eq!(c.to_string().parse::<ContentId>().unwrap(), c);
        assert_eq!(c.hex().parse::<ContentId>().unwrap(), c);
        assert!("b3:1234".parse::<ContentId>().is_err());
        assert!("sha256:00".parse::<ContentId>().is_err());
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<ContentId>(&j).unwrap(), c);
        let p = postcard::to_stdvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<ContentId>(&p).unwrap(), c);
    }
}
