//! Piece manifests: a blob's size, piece size and the BLAKE3 hash of every piece.
//!
//! Encoding (canonical, so the id is well defined): `"shoal/pieces/1\0"`, size (u64 LE),
//! piece size (u32 LE), piece count (u32 LE), then 32 bytes per piece. The content id is the
//! BLAKE3 hash of that encoding. Piece size is a power of two from 1 MiB to 4 MiB, chosen so a
//! blob has at most 16,384 pieces where possible (a 256 MiB blob has 256 pieces of 1 MiB).

use crate::cid::ContentId;

const MAGIC: &[u8] = b"shoal/pieces/1\0";
/// Smallest piece.
pub const MIN_PIECE: u32 = 1 << 20;
/// Largest piece (also bounds a data-channel record).
pub const MAX_PIECE: u32 = 4 << 20;
/// Most pieces a manifest may list (4 TiB at 4 MiB pieces).
pub const MAX_PIECES: u32 = 1 << 20;
/// Largest encoded manifest.
pub const MAX_MANIFEST_BYTES: usize = MAGIC.len() + 16 + 32 * MAX_PIECES as usize;

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("piece manifest is malformed: {0}")]
    Malformed(&'static str),
    #[error("piece manifest does not match content id {0}: a peer sent the wrong manifest")]
    WrongId(ContentId),
}

/// A blob's pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceManifest {
    pub size: u64,
    pub piece_size: u32,
    pub hashes: Vec<[u8; 32]>,
}

/// The piece size for a blob of `size` bytes.
pub fn piece_size_for(size: u64) -> u32 {
    let target = size.div_ceil(16_384).next_power_of_two();
    target.clamp(u64::from(MIN_PIECE), u64::from(MAX_PIECE)) as u32
}

impl PieceManifest {
    pub fn pieces(&self) -> u32 {
        self.hashes.len() as u32
    }

    /// Byte offset and length of piece `i`.
    pub fn range(&self, i: u32) -> (u64, usize) {
        let off = u64::from(i) * u64::from(self.piece_size);
        let len = self.size.saturating_sub(off).min(u64::from(self.piece_size));
        (off, len as usize)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(MAGIC.len() + 16 + 32 * self.hashes.len());
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&self.piece_size.to_le_bytes());
        v.extend_from_slice(&(self.hashes.len() as u32).to_le_bytes());
        for h in &self.hashes {
            v.extend_from_slice(h);
        }
        v
    }

    pub fn id(&self) -> ContentId {
        ContentId(*blake3::hash(&self.encode()).as_bytes())
    }

    /// Decodes and checks internal consistency.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::Malformed("too large"));
        }
        let rest = bytes.strip_prefix(MAGIC).ok_or(ManifestError::Malformed("bad magic"))?;
        if rest.len() < 16 {
            return Err(ManifestError::Malformed("truncated header"));
        }
        let size = u64::from_le_bytes(rest[0..8].try_into().map_err(|_| ManifestError::Malformed("size"))?);
        let piece_size = u32::from_le_bytes(rest[8..12].try_into().map_err(|_| ManifestError::Malformed("piece"))?);
        let count = u32::from_le_bytes(rest[12..16].try_into().map_err(|_| ManifestError::Malformed("count"))?);
        if !(MIN_PIECE..=MAX_PIECE).contains(&piece_size) || !piece_size.is_power_of_two() {
            return Err(ManifestError::Malformed("piece size out of range"));
        }
        if count > MAX_PIECES || u64::from(count) != size.div_ceil(u64::from(piece_size)).max(1) {
            return Err(ManifestError::Malformed("piece count does not match size"));
        }
        let body = &rest[16..];
        if body.len() != 32 * count as usize {
            return Err(ManifestError::Malformed("hash list length"));
        }
        let hashes = body.chunks_exact(32).map(|c| c.try_into().unwrap_or([0; 32])).collect();
        Ok(PieceManifest { size, piece_size, hashes })
    }

    /// Decodes and checks the manifest hashes to `id`.
    pub fn decode_for(id: &ContentId, bytes: &[u8]) -> Result<Self, ManifestError> {
        if blake3::hash(bytes).as_bytes() != &id.0 {
            return Err(ManifestError::WrongId(*id));
        }
        Self::decode(bytes)
    }

    /// Whether `data` is piece `i`.
    pub fn verify(&self, i: u32, data: &[u8]) -> bool {
        let (_, len) = self.range(i);
        self.hashes.get(i as usize).is_some_and(|h| data.len() == len && blake3::hash(data).as_bytes() == h)
    }
}

/// Builds a manifest from a stream of bytes of known total size.
pub struct ManifestBuilder {
    piece_size: u32,
    cur: blake3::Hasher,
    cur_len: u64,
    hashes: Vec<[u8; 32]>,
    size: u64,
}

impl ManifestBuilder {
    pub fn new(total_size: u64) -> Self {
        ManifestBuilder {
            piece_size: piece_size_for(total_size),
            cur: blake3::Hasher::new(),
            cur_len: 0,
            hashes: Vec::new(),
            size: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.size += data.len() as u64;
        while !data.is_empty() {
            let room = u64::from(self.piece_size) - self.cur_len;
            let take = (data.len() as u64).min(room) as usize;
            self.cur.update(&data[..take]);
            self.cur_len += take as u64;
            data = &data[take..];
            if self.cur_len == u64::from(self.piece_size) {
                self.hashes.push(*self.cur.finalize().as_bytes());
                self.cur = blake3::Hasher::new();
                self.cur_len = 0;
            }
        }
    }

    /// The manifest; `None` if the bytes seen do not add up to a consistent blob.
    pub fn finish(mut self) -> PieceManifest {
        if self.cur_len > 0 || self.hashes.is_empty() {
            self.hashes.push(*self.cur.finalize().as_bytes());
        }
        PieceManifest { size: self.size, piece_size: self.piece_size, hashes: self.hashes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn build(data: &[u8], chunk: usize) -> PieceManifest {
        let mut b = ManifestBuilder::new(data.len() as u64);
        for c in data.chunks(chunk.max(1)) {
            b.update(c);
        }
        b.finish()
    }

    #[test]
    fn piece_sizes() {
        assert_eq!(piece_size_for(0), MIN_PIECE);
        assert_eq!(piece_size_for(256 << 20), 1 << 20);
        assert_eq!(piece_size_for(40 << 30), 4 << 20);
    }

    #[test]
    fn empty_blob_has_one_empty_piece() {
        let m = build(&[], 1);
        assert_eq!(m.pieces(), 1);
        assert!(m.verify(0, &[]));
        assert_eq!(PieceManifest::decode(&m.encode()).unwrap(), m);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn builder_matches_whole_pieces(len in 0usize..(3 << 20), chunk in 1usize..200_000) {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let m = build(&data, chunk);
            prop_assert_eq!(m.size, len as u64);
            for i in 0..m.pieces() {
                let (off, l) = m.range(i);
                prop_assert!(m.verify(i, &data[off as usize..off as usize + l]));
            }
            let enc = m.encode();
            prop_assert_eq!(&PieceManifest::decode_for(&m.id(), &enc).unwrap(), &m);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = PieceManifest::decode(&bytes);
        }
    }

    #[test]
    fn wrong_manifest_for_id_is_refused() {
        let m = build(b"hello", 5);
        let other = build(b"world", 5);
        assert_eq!(PieceManifest::decode_for(&m.id(), &other.encode()), Err(ManifestError::WrongId(m.id())));
        assert!(!m.verify(0, b"hellO"));
    }
}
