//! One data-channel session: a sealed TCP connection between two peers about one blob.
//!
//! The session task reads frames and answers them:
//! - `Request(i)`: serve piece `i` from the store (complete blob) or from the running download
//!   (a piece already verified), within the agent's upload rate limit; else `Reject(i)`.
//! - `Piece(i, data)`: only if a local download is attached; verified against the manifest
//!   here (so hashing runs on many cores at once), then handed to the download as
//!   [`SessionEvent::Piece`], or reported as [`SessionEvent::Corrupt`] and the session closed.
//! - `Bitfield`, `Have`, `Complete`, `Reject`: forwarded to the attached download.
//!
//! A writer task owns the sending half. It has two bounded queues and always empties the first
//! before taking from the second: control frames (`Have`, `Request`, `Cancel`, `Reject`; up to
//! 4096, a few bytes each), so announcements and requests never wait behind uploads and are
//! never dropped for lack of room; and pieces (at most 8 buffered per session).
//! A session with no traffic for 60 s closes itself.

use crate::bitfield::Bitfield;
use crate::channel::{ChannelError, SealedReader, SealedWriter, Side, seal};
use crate::cid::ContentId;
use crate::ctx::Ctx;
use crate::frame::Frame;
use crate::manifest::{MAX_PIECE, PieceManifest};
use bytes::Bytes;
use shoal_overlay::libp2p::PeerId;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc};
use tracing::debug;

/// What a session tells the download it is attached to.
#[derive(Debug)]
pub(crate) enum SessionEvent {
    Opened {
        sid: u64,
        peer: PeerId,
        tx: mpsc::Sender<Frame>,
    },
    Bitfield {
        sid: u64,
        bits: Bitfield,
    },
    Complete {
        sid: u64,
    },
    Have {
        sid: u64,
        index: u32,
    },
    /// A verified piece.
    Piece {
        sid: u64,
        index: u32,
        data: Bytes,
    },
    Corrupt {
        sid: u64,
        index: u32,
    },
    Reject {
        sid: u64,
        index: u32,
    },
    Closed {
        sid: u64,
    },
    /// From a connect attempt that did not become a session.
    ConnectFailed {
        peer: PeerId,
        holder: bool,
    },
    /// From discovery.
    Candidates(Vec<(PeerId, Vec<shoal_overlay::libp2p::Multiaddr>)>),
}

const IDLE: Duration = Duration::from_secs(60);
/// Room for control frames per session (a `Have` per piece of a large blob fits).
pub(crate) const CONTROL_QUEUE: usize = 4096;
/// Pieces one session serves at once.
const SERVE_CONCURRENCY: usize = 8;

/// Runs a session to its end.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    stream: TcpStream,
    side: Side,
    key: [u8; 32],
    cid: ContentId,
    peer: PeerId,
    manifest: Arc<PieceManifest>,
    attach: Option<mpsc::Sender<SessionEvent>>,
) {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let Ok((reader, writer)) = seal(r, w, &key, side, 5 + MAX_PIECE as usize + 64) else { return };
    let sid = ctx.next_sid.fetch_add(1, Ordering::Relaxed);
    ctx.sessions.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel::<Frame>(CONTROL_QUEUE);
    let (data_tx, data_rx) = mpsc::channel::<Frame>(8);
    let writer_task = tokio::spawn(write_loop(writer, rx, data_rx));
    // Tell the other side what we hold.
    let first = match ctx.holding(&cid) {
        Some(None) => Frame::Complete,
        Some(Some(bits)) => Frame::Bitfield(bits),
        None => Frame::Bitfield(Bitfield::new(manifest.pieces())),
    };
    let _ = tx.send(first).await;
    if let Some(a) = &attach {
        let _ = a.send(SessionEvent::Opened { sid, peer, tx: tx.clone() }).await;
    }
    let r = read_loop(&ctx, reader, &tx, &data_tx, sid, cid, peer, &manifest, attach.as_ref()).await;
    if let Err(e) = r {
        debug!(%peer, %cid, err = %e, "session ended");
    }
    if let Some(a) = &attach {
        let _ = a.send(SessionEvent::Closed { sid }).await;
    }
    drop(tx);
    drop(data_tx);
    let _ = writer_task.await;
    ctx.sessions.fetch_sub(1, Ordering::Relaxed);
}

async fn write_loop(
    mut w: SealedWriter<OwnedWriteHalf>,
    mut rx: mpsc::Receiver<Frame>,
    mut data_rx: mpsc::Receiver<Frame>,
) {
    loop {
        let f = tokio::select! {
            biased;
            Some(f) = rx.recv() => f,
            Some(f) = data_rx.recv() => f,
            else => break,
        };
        let header = f.header();
        let r = match &f {
            Frame::Piece(_, data) => w.send(&[&header, data]).await,
            _ => w.send(&[&header]).await,
        };
        if r.is_err() {
            return;
        }
        if rx.is_empty() && data_rx.is_empty() && w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// Errors that end a session.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("bad frame: {0}")]
    Frame(#[from] crate::frame::FrameError),
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error("corrupt piece {0}")]
    Corrupt(u32),
    #[error("unsolicited piece {0}")]
    Unsolicited(u32),
}

#[allow(clippy::too_many_arguments)]
async fn read_loop(
    ctx: &Arc<Ctx>,
    mut reader: SealedReader<OwnedReadHalf>,
    tx: &mpsc::Sender<Frame>,
    data_tx: &mpsc::Sender<Frame>,
    sid: u64,
    cid: ContentId,
    peer: PeerId,
    manifest: &Arc<PieceManifest>,
    attach: Option<&mpsc::Sender<SessionEvent>>,
) -> Result<(), SessionError> {
    let serving = Arc::new(Semaphore::new(SERVE_CONCURRENCY));
    // Pieces the other side cancelled before we sent them.
    let cancelled: Arc<std::sync::Mutex<std::collections::HashSet<u32>>> = Default::default();
    let pieces = manifest.pieces();
    loop {
        let mut buf = Vec::new();
        let got = tokio::time::timeout(IDLE, reader.recv(&mut buf)).await.map_err(|_| SessionError::Idle(IDLE))??;
        if !got {
            return Ok(());
        }
        let len = buf.len();
        let frame = Frame::decode(Bytes::from(buf), pieces)?;
        let forward = |ev: SessionEvent| async move {
            if let Some(a) = attach {
                let _ = a.send(ev).await;
            }
        };
        match frame {
            Frame::Request(i) => {
                if !ctx.seed_should_serve(&cid, i, peer) {
                    let _ = tx.send(Frame::Reject(i)).await;
                    continue;
                }
                let Ok(permit) = serving.clone().try_acquire_owned() else {
                    let _ = tx.send(Frame::Reject(i)).await;
                    continue;
                };
                let (ctx, tx, data_tx, manifest) = (ctx.clone(), tx.clone(), data_tx.clone(), manifest.clone());
                let cancelled = cancelled.clone();
                cancelled.lock().unwrap_or_else(|p| p.into_inner()).remove(&i);
                tokio::spawn(async move {
                    let was_cancelled = || cancelled.lock().unwrap_or_else(|p| p.into_inner()).remove(&i);
                    match ctx.read_piece(&cid, &manifest, i).await {
                        Some(_) if was_cancelled() => {}
                        Some(mut data) => {
                            ctx.up.acquire(data.len()).await;
                            if was_cancelled() {
                                drop(permit);
                                return;
                            }
                            if ctx.corrupt_uploads && !data.is_empty() {
                                data[0] ^= 0xff;
                            }
                            ctx.uploaded.fetch_add(data.len() as u64, Ordering::Relaxed);
                            shoal_metrics::get().content_sent_to(&peer.to_string(), data.len() as u64);
                            let _ = data_tx.send(Frame::Piece(i, Bytes::from(data))).await;
                        }
                        None => {
                            let _ = tx.send(Frame::Reject(i)).await;
                        }
                    }
                    drop(permit);
                });
            }
            Frame::Piece(i, data) => {
                let Some(_) = attach else { return Err(SessionError::Unsolicited(i)) };
                ctx.down.acquire(len).await;
                let m = manifest.clone();
                let (ok, data) = tokio::task::spawn_blocking(move || (m.verify(i, &data), data))
                    .await
                    .unwrap_or((false, Bytes::new()));
                let m = shoal_metrics::get();
                if ok {
                    m.pieces_verified.inc();
                    m.content_received_from(&peer.to_string(), data.len() as u64);
                    forward(SessionEvent::Piece { sid, index: i, data }).await;
                } else {
                    m.pieces_rejected.inc();
                    forward(SessionEvent::Corrupt { sid, index: i }).await;
                    return Err(SessionError::Corrupt(i));
                }
            }
            Frame::Bitfield(bits) => forward(SessionEvent::Bitfield { sid, bits }).await,
            Frame::Complete => forward(SessionEvent::Complete { sid }).await,
            Frame::Have(i) => {
                ctx.peer_has(&cid, i, peer);
                forward(SessionEvent::Have { sid, index: i }).await
            }
            Frame::Reject(i) => forward(SessionEvent::Reject { sid, index: i }).await,
            Frame::Cancel(i) => {
                cancelled.lock().unwrap_or_else(|p| p.into_inner()).insert(i);
            }
        }
    }
}
