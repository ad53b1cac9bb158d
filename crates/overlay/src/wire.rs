//! Wire framing for Shoal's own request-response protocols.
//!
//! Each request and each response travels on its own libp2p stream and ends where the stream's
//! write side closes, so no length prefix is needed. The reader never accepts more than the
//! protocol's bound: it reads at most `max + 1` bytes and refuses the message if it got more,
//! before anything is decoded. An inbound request that breaks a rule is not an I/O error
//! (libp2p would swallow it): the reader returns [`Frame::Refused`] with the typed
//! [`WireError`], and the event loop counts it, logs it (rate-limited) and drops it.
//!
//! Protocols:
//! - `/shoal/swim/1`: request = one foca (SWIM) packet, bounded by the foca packet size;
//!   response = one byte, `0` (received). Foca never waits for it; it only keeps streams tidy.
//! - `/shoal/ctl/1`: request and response are postcard-encoded [`CtlRequest`] / [`CtlResponse`].

use crate::record::WireRecord;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use std::io;

/// The SWIM transport protocol.
pub const SWIM_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/swim/1");
/// The control protocol: record sync and pushes.
pub const CTL_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/ctl/1");

/// Largest SWIM packet: foca's own bound on packets it produces and accepts.
pub const MAX_SWIM_PACKET: usize = 64 * 1024;
/// Largest control request (a digest of 10,000 peers is about 500 KiB).
pub const MAX_CTL_REQUEST: usize = 4 * 1024 * 1024;
/// Largest control response.
pub const MAX_CTL_RESPONSE: usize = 4 * 1024 * 1024;

/// Why a message from a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer sent more than the protocol allows
    #[error("message larger than the {max}-byte limit of {protocol}")]
    TooLarge { protocol: &'static str, max: usize },
    /// The bytes did not decode
    #[error("malformed {protocol} message: {source}")]
    Malformed { protocol: &'static str, source: postcard::Error },
    /// The response byte was not the expected acknowledgement
    #[error("unexpected {protocol} response")]
    BadAck { protocol: &'static str },
}

impl From<WireError> for io::Error {
    fn from(e: WireError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// An inbound request: the message, or why it was refused. Outbound requests are always `Ok`.
#[derive(Debug)]
pub enum Frame<T> {
    Ok(T),
    Refused(WireError),
}

/// Reads one whole message of at most `max` bytes.
pub(crate) async fn read_bounded<T: AsyncRead + Unpin>(
    io: &mut T,
    max: usize,
    protocol: &'static str,
) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(max as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > max {
        return Err(WireError::TooLarge { protocol, max }.into());
    }
    Ok(buf)
}

/// An entry of a sync digest: "I hold this version of this peer's record".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestEntry {
    pub peer: PeerId,
    pub generation: u64,
    pub version: u64,
}

/// A control request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CtlRequest {
    /// Anti-entropy: send me every record newer than (or missing from) this digest.
    Sync { digest: Vec<DigestEntry> },
    /// Here are records you may not have (used when leaving, so peers learn it at once).
    Push { records: Vec<WireRecord> },
}

/// A control response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CtlResponse {
    /// Records the requester lacks; `more` says the size bound cut the list short.
    Records { records: Vec<WireRecord>, more: bool },
    /// Push received.
    Ack,
}

/// Decodes a control message, mapping failures to a typed error.
pub fn decode_ctl<M: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<M, WireError> {
    postcard::from_bytes(bytes).map_err(|source| WireError::Malformed { protocol: "ctl", source })
}

fn encode<M: Serialize>(m: &M) -> io::Result<Vec<u8>> {
    postcard::to_stdvec(m).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Codec for `/shoal/swim/1`.
#[derive(Debug, Clone, Default)]
pub struct SwimCodec;

/// Reads an inbound request: I/O errors stay errors, rule breaks become [`Frame::Refused`].
async fn read_frame<T: AsyncRead + Unpin, M>(
    io: &mut T,
    max: usize,
    protocol: &'static str,
    decode: impl FnOnce(&[u8]) -> Result<M, WireError>,
) -> io::Result<Frame<M>> {
    match read_bounded(io, max, protocol).await {
        Ok(bytes) => Ok(match decode(&bytes) {
            Ok(m) => Frame::Ok(m),
            Err(e) => Frame::Refused(e),
        }),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => match e.into_inner().map(|b| b.downcast::<WireError>()) {
            Some(Ok(w)) => Ok(Frame::Refused(*w)),
            Some(Err(other)) => Err(io::Error::new(io::ErrorKind::InvalidData, other)),
            None => Err(io::Error::from(io::ErrorKind::InvalidData)),
        },
        Err(e) => Err(e),
    }
}

fn refused_write() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "a refused frame is never sent")
}

impl libp2p::request_response::Codec for SwimCodec {
    type Protocol = StreamProtocol;
    type Request = Frame<Vec<u8>>;
    type Response = ();

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Frame<Vec<u8>>> {
        read_frame(io, MAX_SWIM_PACKET, "swim", |b| Ok(b.to_vec())).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<()> {
        let ack = read_bounded(io, 1, "swim").await?;
        if ack.as_slice() != [0] {
            return Err(WireError::BadAck { protocol: "swim" }.into());
        }
        Ok(())
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Frame<Vec<u8>>,
    ) -> io::Result<()> {
        match req {
            Frame::Ok(b) => io.write_all(&b).await,
            Frame::Refused(_) => Err(refused_write()),
        }
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        _: (),
    ) -> io::Result<()> {
        io.write_all(&[0]).await
    }
}

/// Codec for `/shoal/ctl/1`.
#[derive(Debug, Clone, Default)]
pub struct CtlCodec;

impl libp2p::request_response::Codec for CtlCodec {
    type Protocol = StreamProtocol;
    type Request = Frame<CtlRequest>;
    type Response = CtlResponse;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Frame<CtlRequest>> {
        read_frame(io, MAX_CTL_REQUEST, "ctl", decode_ctl).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<CtlResponse> {
        let bytes = read_bounded(io, MAX_CTL_RESPONSE, "ctl").await?;
        Ok(decode_ctl(&bytes)?)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Frame<CtlRequest>,
    ) -> io::Result<()> {
        match req {
            Frame::Ok(r) => io.write_all(&encode(&r)?).await,
            Frame::Refused(_) => Err(refused_write()),
        }
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: CtlResponse,
    ) -> io::Result<()> {
        io.write_all(&encode(&res)?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use libp2p::request_response::Codec;
    use proptest::prelude::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn oversized_swim_packet_is_refused_before_decoding() {
        let mut io = Cursor::new(vec![7u8; MAX_SWIM_PACKET + 10]);
        match block_on(SwimCodec.read_request(&SWIM_PROTOCOL, &mut io)).unwrap() {
            Frame::Refused(e @ WireError::TooLarge { .. }) => assert!(e.to_string().contains("limit"), "{e}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // It stopped reading at the bound instead of buffering everything.
        assert_eq!(io.position() as usize, MAX_SWIM_PACKET + 1);
        let mut io = Cursor::new(vec![7u8; MAX_SWIM_PACKET]);
        match block_on(SwimCodec.read_request(&SWIM_PROTOCOL, &mut io)).unwrap() {
            Frame::Ok(b) => assert_eq!(b.len(), MAX_SWIM_PACKET),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ctl_round_trip() {
        let req = CtlRequest::Sync { digest: vec![DigestEntry { peer: PeerId::random(), generation: 3, version: 9 }] };
        let mut buf = Cursor::new(Vec::new());
        block_on(CtlCodec.write_request(&CTL_PROTOCOL, &mut buf, Frame::Ok(req.clone()))).unwrap();
        let mut rd = Cursor::new(buf.into_inner());
        let back = block_on(CtlCodec.read_request(&CTL_PROTOCOL, &mut rd)).unwrap();
        match (req, back) {
            (CtlRequest::Sync { digest: a }, Frame::Ok(CtlRequest::Sync { digest: b })) => assert_eq!(a, b),
            other => panic!("unexpected {other:?}"),
        }
        let mut rd = Cursor::new(vec![0xFF; 16]);
        assert!(matches!(
            block_on(CtlCodec.read_request(&CTL_PROTOCOL, &mut rd)).unwrap(),
            Frame::Refused(WireError::Malformed { .. })
        ));
    }

    proptest! {
        // Any bytes a peer sends to the control protocol give a value or a typed error.
        #[test]
        fn ctl_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode_ctl::<CtlRequest>(&bytes);
            let _ = decode_ctl::<CtlResponse>(&bytes);
        }
    }
}
