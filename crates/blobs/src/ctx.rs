//! State shared by every task of the content subsystem.
//!
//! Holds the store, the overlay handle, rate limits, the single-use data-channel tickets this
//! peer has issued, and the running downloads (so that sessions can serve pieces a download
//! already verified, and attach to it when the other side also has pieces for us).

use crate::bitfield::Bitfield;
use crate::channel::Side;
use crate::cid::ContentId;
use crate::limit::RateLimit;
use crate::manifest::PieceManifest;
use crate::proto::{BLOB_PROTOCOL, MAX_REQUEST, MAX_RESPONSE, Offer, Request, Response, read_msg, write_msg};
use crate::session::{self, SessionEvent};
use crate::store::Store;
use shoal_overlay::Overlay;
use shoal_overlay::libp2p::multiaddr::Protocol;
use shoal_overlay::libp2p::{Multiaddr, PeerId};
use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// A ticket this peer issued in an offer.
pub(crate) struct Ticket {
    pub(crate) peer: PeerId,
    pub(crate) cid: ContentId,
    pub(crate) key: [u8; 32],
    pub(crate) expires: Instant,
}

/// The state of a running download that sessions may use.
pub(crate) struct SharedPartial {
    pub(crate) manifest: Arc<PieceManifest>,
    pub(crate) have: RwLock<Bitfield>,
    pub(crate) file: Arc<File>,
    /// The next piece a reader streaming the blob needs (`u32::MAX`: nobody reads it now).
    pub(crate) reader_at: std::sync::atomic::AtomicU32,
}

/// A running download, as the rest of the subsystem sees it.
pub(crate) struct Running {
    pub(crate) events: mpsc::Sender<SessionEvent>,
    pub(crate) shared: Arc<SharedPartial>,
    pub(crate) progress: watch::Receiver<crate::Progress>,
}

pub(crate) struct Ctx {
    pub(crate) store: Arc<Store>,
    pub(crate) overlay: Overlay,
    pub(crate) me: PeerId,
    pub(crate) data_port: u16,
    pub(crate) up: RateLimit,
    pub(crate) down: RateLimit,
    pub(crate) corrupt_uploads: bool,
    pub(crate) tickets: Mutex<HashMap<[u8; 16], Ticket>>,
    pub(crate) running: Mutex<HashMap<ContentId, Running>>,
    pub(crate) sessions: AtomicUsize,
    pub(crate) next_sid: AtomicU64,
    pub(crate) uploaded: AtomicU64,
    pub(crate) shutdown: CancellationToken,
    /// Pieces of complete blobs we sent lately, and to whom (super-seeding).
    pub(crate) sent: Mutex<HashMap<ContentId, SentLog>>,
}

/// Per piece of a seeded blob: to whom it last went, when it was accepted, and when that peer
/// announced it had it.
pub(crate) type SentLog = HashMap<u32, (PeerId, Instant, Option<Instant>)>;

/// How long after the recipient announced a piece the seed keeps refusing it to others (time
/// for the announcement, sent to every peer at once, to arrive).
pub(crate) const SUPERSEED_AFTER: Duration = Duration::from_secs(2);
/// A send that never completed (its session died) stops blocking the piece after this.
const SUPERSEED_STUCK: Duration = Duration::from_secs(30);

/// Most sessions this peer keeps open at once.
pub(crate) const MAX_SESSIONS: usize = 512;
const TICKET_TTL: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ctx {
    /// `Some(None)`: we hold every piece; `Some(Some(bits))`: we are downloading it;
    /// `None`: we hold nothing of it.
    pub(crate) fn holding(&self, cid: &ContentId) -> Option<Option<Bitfield>> {
        if let Some(r) = lock(&self.running).get(cid) {
            return Some(Some(r.shared.have.read().unwrap_or_else(|p| p.into_inner()).clone()));
        }
        match self.store.get(cid) {
            Ok(Some(r)) if r.complete => Some(None),
            _ => None,
        }
    }

    /// Reads a piece we can serve, from a complete blob or a running download.
    pub(crate) async fn read_piece(&self, cid: &ContentId, manifest: &Arc<PieceManifest>, i: u32) -> Option<Vec<u8>> {
        let shared = lock(&self.running).get(cid).map(|r| r.shared.clone());
        if let Some(sh) = shared {
            if !sh.have.read().unwrap_or_else(|p| p.into_inner()).get(i) {
                return None;
            }
            let (off, len) = sh.manifest.range(i);
            return tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; len];
                sh.file.read_exact_at(&mut buf, off).ok().map(|_| buf)
            })
            .await
            .ok()
            .flatten();
        }
        let (store, m, cid) = (self.store.clone(), manifest.clone(), *cid);
        tokio::task::spawn_blocking(move || store.read_piece(&cid, &m, i).ok()).await.ok().flatten()
    }

    /// Super-seeding: whether a seed should serve piece `i` of `cid` to `peer` now. Until the
    /// peer it went to announces it (`Have`), and for [`SUPERSEED_AFTER`] after, it is refused.
    /// (A finished write is no signal: the kernel's socket buffer takes it long before a slow
    /// link delivers it.) that peer will announce it and the requester fetches it there, so the
    /// seed's upload, the scarcest in the swarm, goes to pieces nobody has yet. Pieces of
    /// partial blobs (we are a downloader relaying) are always served.
    pub(crate) fn seed_should_serve(&self, cid: &ContentId, i: u32, peer: PeerId) -> bool {
        if lock(&self.running).contains_key(cid) {
            return true;
        }
        let now = Instant::now();
        let mut sent = lock(&self.sent);
        let log = sent.entry(*cid).or_default();
        let busy = |(p, accepted, done): &(PeerId, Instant, Option<Instant>)| {
            *p != peer
                && match done {
                    None => now.duration_since(*accepted) < SUPERSEED_STUCK,
                    Some(d) => now.duration_since(*d) < SUPERSEED_AFTER,
                }
        };
        if log.get(&i).is_some_and(busy) {
            return false;
        }
        match log.get(&i) {
            Some((prev, accepted, announced)) => {
                tracing::debug!(piece = i, %peer, %prev, accepted_ago = ?now.duration_since(*accepted),
                announced_ago = ?announced.map(|d| now.duration_since(d)), "seed sends a piece again")
            }
            None => tracing::trace!(piece = i, %peer, "seed sends a piece"),
        }
        log.insert(i, (peer, now, None));
        if log.len() > 1 << 16 {
            log.retain(|_, (_, a, d)| {
                d.map_or(now.duration_since(*a) < SUPERSEED_STUCK, |d| now.duration_since(d) < SUPERSEED_AFTER)
            });
        }
        true
    }

    /// `peer` announced it holds piece `i` of `cid` (see [`Ctx::seed_should_serve`]).
    pub(crate) fn peer_has(&self, cid: &ContentId, i: u32, peer: PeerId) {
        if let Some(e) = lock(&self.sent).get_mut(cid).and_then(|l| l.get_mut(&i))
            && e.0 == peer
            && e.2.is_none()
        {
            e.2 = Some(Instant::now());
        }
    }

    /// Issues a single-use ticket for `peer` to open a data channel about `cid`.
    /// A single-use ticket for `peer` to fetch `cid` on the data channel; `None` (answered
    /// `Busy`) when [`MAX_TICKETS`] are outstanding, or [`MAX_TICKETS_PER_PEER`] for this peer:
    /// a peer that asks and never connects cannot grow the table.
    pub(crate) fn issue_ticket(&self, peer: PeerId, cid: ContentId) -> Option<([u8; 16], [u8; 32])> {
        let ticket: [u8; 16] = rand::random();
        let key: [u8; 32] = rand::random();
        let now = Instant::now();
        let mut t = lock(&self.tickets);
        t.retain(|_, v| v.expires > now);
        if t.len() >= MAX_TICKETS || t.values().filter(|v| v.peer == peer).count() >= MAX_TICKETS_PER_PEER {
            return None;
        }
        t.insert(ticket, Ticket { peer, cid, key, expires: now + TICKET_TTL });
        Some((ticket, key))
    }

    /// Redeems a ticket (once).
    pub(crate) fn redeem(&self, ticket: &[u8; 16]) -> Option<Ticket> {
        let t = lock(&self.tickets).remove(ticket)?;
        (t.expires > Instant::now()).then_some(t)
    }

    /// Asks `peer` over the private libp2p connection.
    pub(crate) async fn ask(&self, peer: PeerId, req: &Request) -> Result<Response, AskError> {
        let mut control = self.overlay.streams();
        let mut stream = tokio::time::timeout(Duration::from_secs(5), control.open_stream(peer, BLOB_PROTOCOL))
            .await
            .map_err(|_| AskError::Timeout)?
            .map_err(|e| AskError::Open(e.to_string()))?;
        let exchange = async {
            write_msg(&mut stream, req).await?;
            read_msg::<_, Response>(&mut stream, MAX_RESPONSE).await
        };
        tokio::time::timeout(Duration::from_secs(15), exchange)
            .await
            .map_err(|_| AskError::Timeout)?
            .map_err(AskError::Proto)
    }

    /// Opens the data channel an offer allows and runs the session (until it ends).
    pub(crate) async fn open_session(
        self: &Arc<Self>,
        peer: PeerId,
        addrs: &[Multiaddr],
        offer: &Offer,
        cid: ContentId,
        manifest: Arc<PieceManifest>,
        attach: mpsc::Sender<SessionEvent>,
    ) -> Result<(), AskError> {
        // Loopback only in a cluster on one host (this peer listens on loopback alone): a
        // holder that lists 127.0.0.1 must not make us hand its ticket to whatever listens
        // on that port here.
        let own: Vec<IpAddr> = match self.overlay.status().await {
            Ok(s) => {
                s.listen_addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()).filter_map(|a| ip_of(&a)).collect()
            }
            Err(_) => Vec::new(),
        };
        let single_host = !own.is_empty() && own.iter().all(IpAddr::is_loopback);
        let ips: Vec<IpAddr> = addrs.iter().filter_map(ip_of).filter(|ip| dialable(*ip, single_host)).collect();
        let mut last = AskError::NoAddress;
        for ip in ips {
            let addr = SocketAddr::new(ip, offer.port);
            match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await {
                Ok(Ok(mut s)) => {
                    s.write_all(&offer.ticket).await.map_err(|e| AskError::Open(e.to_string()))?;
                    session::run(self.clone(), s, Side::Opener, offer.key, cid, peer, manifest, Some(attach)).await;
                    return Ok(());
                }
                Ok(Err(e)) => last = AskError::Open(format!("{addr}: {e}")),
                Err(_) => last = AskError::Timeout,
            }
        }
        Err(last)
    }

    /// Peers that may hold `cid`: live members (known at once from SWIM), plus, when
    /// `use_dht`, the holders the DHT names. A DHT lookup can take seconds, so callers use it
    /// only when members were not enough, or now and then in large clusters.
    pub(crate) async fn candidates(&self, cid: &ContentId, use_dht: bool) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let members = self.overlay.members().await.unwrap_or_default();
        let mut out: Vec<(PeerId, Vec<Multiaddr>)> = members.iter().map(|m| (m.peer, m.addrs.clone())).collect();
        if use_dht
            && let Ok(Ok(found)) =
                tokio::time::timeout(Duration::from_secs(3), self.overlay.find_providers(&cid.0)).await
        {
            for p in found {
                if p != self.me && !out.iter().any(|(q, _)| *q == p) {
                    let addrs = members.iter().find(|m| m.peer == p).map(|m| m.addrs.clone()).unwrap_or_default();
                    out.push((p, addrs));
                }
            }
        }
        out.retain(|(p, _)| *p != self.me);
        out
    }
}

/// Whether a data connection may go to `ip`: never to an unspecified or multicast address,
/// to loopback only when `single_host` (every peer of the cluster is on this machine).
pub(crate) fn dialable(ip: IpAddr, single_host: bool) -> bool {
    // `::ffff:127.0.0.1` is loopback too.
    let ip = ip.to_canonical();
    !(ip.is_unspecified() || ip.is_multicast()) && (single_host || !ip.is_loopback())
}

/// The IP of a `/ip4/…/tcp/…` or `/ip6/…/tcp/…` address.
pub(crate) fn ip_of(a: &Multiaddr) -> Option<IpAddr> {
    a.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// Why asking a peer failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AskError {
    #[error("timed out")]
    Timeout,
    #[error("cannot open a stream: {0}")]
    Open(String),
    #[error(transparent)]
    Proto(#[from] crate::proto::ProtoError),
    #[error("the peer has no usable address")]
    NoAddress,
}

/// Serves one inbound control stream.
pub(crate) async fn serve_control(ctx: Arc<Ctx>, peer: PeerId, mut stream: shoal_overlay::libp2p::Stream) {
    let Ok(Ok(req)) =
        tokio::time::timeout(Duration::from_secs(10), read_msg::<_, Request>(&mut stream, MAX_REQUEST)).await
    else {
        return;
    };
    let resp = match req {
        Request::Hello { cid, want_manifest } => match ctx.holding(&cid) {
            _ if ctx.sessions.load(std::sync::atomic::Ordering::Relaxed) >= MAX_SESSIONS => Response::Busy,
            Some(have) => match ctx.issue_ticket(peer, cid) {
                Some((ticket, key)) => {
                    let manifest = if want_manifest { ctx.store.manifest_bytes(&cid).ok().flatten() } else { None };
                    Response::Offer(Offer { have, manifest, ticket, key, port: ctx.data_port })
                }
                None => Response::Busy,
            },
            None => Response::NotHere,
        },
        Request::Describe { reference } => match ctx.store.image(&reference) {
            Ok(Some(img)) if img.blobs().all(|b| ctx.store.get(&b.cid).ok().flatten().is_some_and(|r| r.complete)) => {
                Response::Image { record: serde_json::to_vec(&img).unwrap_or_default() }
            }
            _ => Response::NotHere,
        },
    };
    let _ = write_msg(&mut stream, &resp).await;
}

/// Most outstanding tickets.
pub(crate) const MAX_TICKETS: usize = 4096;
/// Most outstanding tickets of one peer (a download holds a few per holder).
pub(crate) const MAX_TICKETS_PER_PEER: usize = 256;

/// Serves one inbound data connection: the first 16 bytes must be a ticket we issued.
/// How long a data connection may take to send its ticket (a downloader sends it at once).
pub(crate) const TICKET_WAIT: Duration = Duration::from_secs(2);

///
/// `waiting` is the connection's place among those that have not sent a ticket yet; once its
/// ticket checks out it trades it for one of `sessions` (or is closed when they are all taken),
/// so hosts that connect and send nothing can hold only the small waiting pool, never the
/// sessions of peers that hold tickets.
pub(crate) async fn serve_data(
    ctx: Arc<Ctx>,
    mut stream: TcpStream,
    waiting: tokio::sync::OwnedSemaphorePermit,
    sessions: Arc<tokio::sync::Semaphore>,
) {
    use tokio::io::AsyncReadExt;
    let mut ticket = [0u8; 16];
    if tokio::time::timeout(TICKET_WAIT, stream.read_exact(&mut ticket)).await.map_or(true, |r| r.is_err()) {
        return;
    }
    drop(waiting);
    let Some(t) = ctx.redeem(&ticket) else {
        tracing::debug!("data connection with an unknown or expired ticket refused");
        return;
    };
    let Ok(_session) = sessions.try_acquire_owned() else {
        tracing::debug!("data sessions at their limit; connection closed");
        return;
    };
    let manifest = match ctx.store.manifest(&t.cid) {
        Ok(Some(m)) => Arc::new(m),
        _ => return,
    };
    let attach = lock(&ctx.running).get(&t.cid).map(|r| r.events.clone());
    session::run(ctx.clone(), stream, Side::Acceptor, t.key, t.cid, t.peer, manifest, attach).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_connections_go_to_loopback_only_on_one_host() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lan: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(!dialable(lo, false), "a holder listing 127.0.0.1 in a real cluster");
        assert!(dialable(lo, true), "a cluster on one host");
        assert!(dialable(lan, false) && dialable(lan, true));
        assert!(!dialable("::ffff:127.0.0.1".parse().unwrap(), false), "IPv4-mapped loopback");
        for bad in ["0.0.0.0", "224.0.0.1", "::", "::ffff:0.0.0.0"] {
            assert!(!dialable(bad.parse().unwrap(), true), "{bad}");
        }
    }
}
