//! Frames on the data channel (each one sealed record, see `channel`).
//!
//! Both ends may send every frame (a session is symmetric, as in BitTorrent): a peer that is
//! itself downloading asks the other for pieces too.
//!
//! | tag | frame | body |
//! |---|---|---|
//! | 1 | `Bitfield` | the sender's pieces (bitfield bytes) |
//! | 2 | `Have` | index u32: the sender just got a piece |
//! | 3 | `Request` | index u32 |
//! | 4 | `Cancel` | index u32 |
//! | 5 | `Piece` | index u32, then the piece bytes |
//! | 6 | `Reject` | index u32: the sender cannot serve it |
//! | 7 | `Complete` | (none): the sender holds every piece |

use crate::bitfield::Bitfield;
use bytes::Bytes;

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Bitfield(Bitfield),
    Have(u32),
    Request(u32),
    Cancel(u32),
    Piece(u32, Bytes),
    Reject(u32),
    Complete,
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("unknown frame tag {0}")]
    UnknownTag(u8),
    #[error("frame body has the wrong length")]
    BadLength,
    #[error("piece index {index} out of range (the blob has {pieces})")]
    BadIndex { index: u32, pieces: u32 },
}

fn index(body: &[u8], pieces: u32) -> Result<u32, FrameError> {
    let arr: [u8; 4] = body.get(..4).and_then(|b| b.try_into().ok()).ok_or(FrameError::BadLength)?;
    let i = u32::from_be_bytes(arr);
    if i >= pieces {
        return Err(FrameError::BadIndex { index: i, pieces });
    }
    Ok(i)
}

impl Frame {
    /// Decodes a record of a blob with `pieces` pieces. Piece bodies are sliced, not copied.
    pub fn decode(record: Bytes, pieces: u32) -> Result<Frame, FrameError> {
        let (&tag, body) = record.split_first().ok_or(FrameError::Empty)?;
        let fixed = |body: &[u8]| if body.len() == 4 { index(body, pieces) } else { Err(FrameError::BadLength) };
        Ok(match tag {
            1 => Frame::Bitfield(Bitfield::from_bytes(pieces, body.to_vec()).ok_or(FrameError::BadLength)?),
            2 => Frame::Have(fixed(body)?),
            3 => Frame::Request(fixed(body)?),
            4 => Frame::Cancel(fixed(body)?),
            5 => Frame::Piece(index(body, pieces)?, record.slice(5..)),
            6 => Frame::Reject(fixed(body)?),
            7 if body.is_empty() => Frame::Complete,
            7 => return Err(FrameError::BadLength),
            t => return Err(FrameError::UnknownTag(t)),
        })
    }

    /// The record header; for `Piece` the data follows separately (no copy).
    pub fn header(&self) -> Vec<u8> {
        let with_index = |tag: u8, i: u32| {
            let mut v = vec![tag];
            v.extend_from_slice(&i.to_be_bytes());
            v
        };
        match self {
            Frame::Bitfield(b) => {
                let mut v = vec![1];
                v.extend_from_slice(b.bytes());
                v
            }
            Frame::Have(i) => with_index(2, *i),
            Frame::Request(i) => with_index(3, *i),
            Frame::Cancel(i) => with_index(4, *i),
            Frame::Piece(i, _) => with_index(5, *i),
            Frame::Reject(i) => with_index(6, *i),
            Frame::Complete => vec![7],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(f: &Frame) -> Bytes {
        let mut v = f.header();
        if let Frame::Piece(_, d) = f {
            v.extend_from_slice(d);
        }
        Bytes::from(v)
    }

    #[test]
    fn round_trips() {
        let mut bf = Bitfield::new(20);
        bf.set(3);
        for f in [
            Frame::Bitfield(bf),
            Frame::Have(19),
            Frame::Request(0),
            Frame::Cancel(5),
            Frame::Piece(7, Bytes::from_static(b"data")),
            Frame::Reject(2),
            Frame::Complete,
        ] {
            assert_eq!(Frame::decode(encode(&f), 20).unwrap(), f);
        }
        assert_eq!(Frame::decode(encode(&Frame::Have(20)), 20), Err(FrameError::BadIndex { index: 20, pieces: 20 }));
        assert_eq!(Frame::decode(Bytes::from_static(&[9]), 20), Err(FrameError::UnknownTag(9)));
    }

    proptest! {
        #[test]
        fn arbitrary_records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), pieces in 1u32..100) {
            let _ = Frame::decode(Bytes::from(bytes), pieces);
        }
    }
}
