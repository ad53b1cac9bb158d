//! `/shoal/blob/1`: the control exchange over an authenticated libp2p stream.
//!
//! One request and one response per stream, each `len: u32 BE` + postcard, bounded before
//! allocation. A downloader sends `Hello { cid }`; a holder answers with an `Offer`: what it
//! holds (all, or a bitfield while it is still downloading), the piece manifest if asked, and a
//! single-use ticket with a fresh AES-256-GCM key for the data channel (`channel`). The key only
//! ever travels inside the private, noise-encrypted libp2p connection. `Describe` asks a peer for
//! an image by name.

use crate::bitfield::Bitfield;
use crate::cid::ContentId;
use crate::manifest::MAX_MANIFEST_BYTES;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::{Deserialize, Serialize};
use shoal_overlay::libp2p::StreamProtocol;

/// The protocol name.
pub const BLOB_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/blob/1");
/// Largest request.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Largest response (an offer with the largest manifest).
pub const MAX_RESPONSE: usize = MAX_MANIFEST_BYTES + 64 * 1024;

/// A request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// "I want this blob": answered with an offer or `NotHere`.
    Hello { cid: ContentId, want_manifest: bool },
    /// "Do you have image NAME:TAG?": answered with `Image` or `NotHere`.
    Describe { reference: String },
}

/// A response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Offer(Offer),
    NotHere,
    /// The image record, JSON (see `store::ImageRecord`).
    Image {
        record: Vec<u8>,
    },
    /// Too many sessions right now; try later or elsewhere.
    Busy,
}

/// What a holder offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    /// `None`: every piece.
    pub have: Option<Bitfield>,
    pub manifest: Option<Vec<u8>>,
    pub ticket: [u8; 16],
    pub key: [u8; 32],
    /// The holder's data-channel TCP port.
    pub port: u16,
}

/// Errors on the control stream.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("control stream I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("control message of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("malformed control message: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Writes one message.
pub async fn write_msg<W: AsyncWrite + Unpin, M: Serialize>(w: &mut W, m: &M) -> Result<(), ProtoError> {
    let body = postcard::to_stdvec(m)?;
    w.write_all(&(body.len() as u32).to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one message of at most `max` bytes.
pub async fn read_msg<R: AsyncRead + Unpin, M: for<'de> Deserialize<'de>>(
    r: &mut R,
    max: usize,
) -> Result<M, ProtoError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(ProtoError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(postcard::from_bytes(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_bounds() {
        futures::executor::block_on(async {
            let req = Request::Hello { cid: ContentId([1; 32]), want_manifest: true };
            let mut buf = Vec::new();
            write_msg(&mut buf, &req).await.unwrap();
            let back: Request = read_msg(&mut buf.as_slice(), MAX_REQUEST).await.unwrap();
            assert_eq!(back, req);
            let mut huge = (MAX_REQUEST as u32 + 1).to_be_bytes().to_vec();
            huge.extend([0; 8]);
            assert!(matches!(
                read_msg::<_, Request>(&mut huge.as_slice(), MAX_REQUEST).await,
                Err(ProtoError::TooLarge { .. })
            ));
        });
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = postcard::from_bytes::<Request>(&bytes);
            let _ = postcard::from_bytes::<Response>(&bytes);
        }
    }
}
