//! Content digests: `sha256:<64 lowercase hex digits>`, the name of every blob.
//!
//! [`Digest`] is the parsed, validated form (only sha256 is accepted, as everywhere in Shoal).
//! [`HashingReader`] and [`HashingWriter`] compute a digest and a byte count while data streams
//! through them, so a blob is hashed without being held in memory.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// The only algorithm Shoal names blobs with.
const PREFIX: &str = "sha256:";
/// Hex digits in a sha256 digest.
const HEX_LEN: usize = 64;

/// A sha256 content digest, shown and parsed as `sha256:<64 lowercase hex digits>`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    /// The full form, `sha256:` followed by 64 lowercase hex digits (validated on construction).
    full: String,
}

/// Why a string is not a digest Shoal accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The digest names another algorithm (or none).
    #[error("`{value}` is not a sha256 digest: blobs are named `sha256:<64 hex digits>`")]
    Algorithm { value: String },
    /// The part after `sha256:` is not 64 lowercase hex digits.
    #[error("`{value}` is not a valid sha256 digest: expected `sha256:` and 64 lowercase hex digits")]
    Hex { value: String },
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_sha256(Sha256::digest(bytes).into())
    }

    /// The digest whose raw sha256 value is `hash`.
    pub fn from_sha256(hash: [u8; 32]) -> Digest {
        Digest { full: format!("{PREFIX}{}", hex::encode(hash)) }
    }

    /// The digest with these 64 hex digits (without the `sha256:` prefix), e.g. a blob's
    /// file name in an OCI layout.
    pub fn from_hex(hex: &str) -> Result<Digest, DigestError> {
        if is_lower_hex64(hex) {
            Ok(Digest { full: format!("{PREFIX}{hex}") })
        } else {
            Err(DigestError::Hex { value: hex.to_string() })
        }
    }

    /// The 64 lowercase hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> &str {
        &self.full[PREFIX.len()..]
    }

    /// The full form, `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

fn is_lower_hex64(s: &str) -> bool {
    s.len() == HEX_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some(hex) = s.strip_prefix(PREFIX) else {
            return Err(DigestError::Algorithm { value: s.to_string() });
        };
        if is_lower_hex64(hex) {
            Ok(Digest { full: s.to_string() })
        } else {
            Err(DigestError::Hex { value: s.to_string() })
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.full)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.full)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A reader that hashes and counts every byte read through it.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Sha256::new(), len: 0 }
    }

    /// Bytes read so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been read yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest and length of everything read so far.
    pub fn finish(self) -> (Digest, u64) {
        (Digest::from_sha256(self.hasher.finalize().into()), self.len)
    }

    /// The digest and length so far, and the inner reader.
    pub fn finish_with_inner(self) -> (Digest, u64, R) {
        (Digest::from_sha256(self.hasher.finalize().into()), self.len, self.inner)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let read = buf.get(..n).unwrap_or_default();
        self.hasher.update(read);
        self.len += n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts every byte written through it (to `inner`).
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`; use [`io::sink()`] to only hash.
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), len: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest and length of everything written, and the inner writer.
    pub fn finish(self) -> (Digest, u64, W) {
        (Digest::from_sha256(self.hasher.finalize().into()), self.len, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or_default());
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digest_of_known_input() {
        assert_eq!(Digest::of(b"").to_string(), EMPTY);
        assert_eq!(Digest::of(b"abc").hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn parse_round_trips_and_rejects_others() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.as_str(), EMPTY);
        assert_eq!(Digest::from_hex(d.hex()).unwrap(), d);
        assert!(matches!("sha512:abcd".parse::<Digest>(), Err(DigestError::Algorithm { .. })));
        assert!(matches!(EMPTY[7..].parse::<Digest>(), Err(DigestError::Algorithm { .. })));
        assert!(matches!("sha256:abcd".parse::<Digest>(), Err(DigestError::Hex { .. })));
        assert!(matches!(
            EMPTY.to_uppercase().replace("SHA256", "sha256").parse::<Digest>(),
            Err(DigestError::Hex { .. })
        ));
        assert!(matches!(format!("{EMPTY}0").parse::<Digest>(), Err(DigestError::Hex { .. })));
        assert!(Digest::from_hex("../../etc/passwd").is_err());
    }

    #[test]
    fn serde_uses_the_string_form() {
        let d = Digest::of(b"x");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"md5:00\"").is_err());
    }

    #[test]
    fn hashing_reader_and_writer_agree_with_of() {
        let data = vec![7u8; 100_000];
        let mut r = HashingReader::new(&data[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(r.finish(), (Digest::of(&data), data.len() as u64));
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(&data).unwrap();
        let (d, n, inner) = w.finish();
        assert_eq!((d, n), (Digest::of(&data), data.len() as u64));
        assert_eq!(inner, data);
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_strings_never_panics(s in ".*") {
            let _ = s.parse::<Digest>();
        }

        #[test]
        fn display_parse_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let d = Digest::of(&bytes);
            prop_assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        }
    }
}
