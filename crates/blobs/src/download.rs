//! One download: fetches a blob's pieces from many peers at once.
//!
//! One task owns the partial file and all the bookkeeping; sessions report to it over a bounded
//! channel ([`SessionEvent`]) and it commands them by queueing frames. Every 250 ms it checks
//! for stalled requests, looks for more holders every 2 s, checkpoints verified pieces to disk
//! every second, and publishes its progress.
//!
//! - Holders are every live member that answers `Hello` with an offer, plus what the DHT names;
//!   while downloading we announce ourselves too, and answer `Hello` with our bitfield, so later
//!   downloaders fetch from us (and we from them: a session is symmetric).
//! - Requests are pipelined (2-24 per peer, from its measured rate); pieces are chosen by
//!   [`crate::picker`] (rarest first; the seed only for pieces no other downloader has; endgame).
//! - A request not answered in time is cancelled and re-asked elsewhere; a peer that stalls
//!   three times is dropped and not asked again for 30 s. A peer that sends a corrupt piece is
//!   dropped at once and not asked again for 10 minutes.

use crate::TransferFailure;
use crate::bitfield::Bitfield;
use crate::cid::ContentId;
use crate::ctx::{Ctx, SharedPartial};
use crate::frame::Frame;
use crate::manifest::PieceManifest;
use crate::picker::{PickInput, pick};
use crate::proto::{Request, Response};
use crate::session::SessionEvent;
use crate::store::Partial;
use crate::{Progress, TransferState};
use shoal_overlay::libp2p::PeerId;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// Most peers one download talks to at once.
const MAX_PEERS: usize = 16;
const BAN_STALL: Duration = Duration::from_secs(30);
const BAN_CORRUPT: Duration = Duration::from_secs(600);
const REJECT_BACKOFF: Duration = Duration::from_secs(2);
/// Pieces ahead of a streaming reader's position asked for first, in order.
const STREAM_WINDOW: u32 = 4;
/// Give up when no holder has been found for this long and nothing was fetched.
const NO_HOLDER_TIMEOUT: Duration = Duration::from_secs(30);

struct Slot {
    peer: PeerId,
    tx: mpsc::Sender<Frame>,
    /// `None`: the peer holds every piece.
    has: Option<Bitfield>,
    asked: HashMap<u32, Instant>,
    rejected: HashMap<u32, Instant>,
    last_piece: Instant,
    /// Bytes per second from this peer, smoothed over ticks.
    rate: f64,
    /// Bytes received since the last tick.
    since_tick: u64,
    stalls: u32,
}

pub(crate) struct Download {
    ctx: Arc<Ctx>,
    cid: ContentId,
    manifest: Arc<PieceManifest>,
    partial: Option<Partial>,
    shared: Arc<SharedPartial>,
    rx: mpsc::Receiver<SessionEvent>,
    tx: mpsc::Sender<SessionEvent>,
    peers: HashMap<u64, Slot>,
    inflight: Vec<u8>,
    avail: Vec<u16>,
    banned: HashMap<PeerId, Instant>,
    not_holders: HashMap<PeerId, Instant>,
    connecting: HashSet<PeerId>,
    progress: watch::Sender<Progress>,
    fetched: u64,
    rate: f64,
    rate_mark: (Instant, u64),
    dirty: bool,
    last_checkpoint: Instant,
    checkpointing: Option<tokio::task::JoinHandle<()>>,
    discovering: bool,
    discovery_rounds: u64,
    last_discovery: Instant,
    last_tick: Instant,
    started: Instant,
    rng: rand::rngs::StdRng,
}

impl Download {
    /// Prepares a download; the caller registers `shared`, the event sender and the progress
    /// receiver in `ctx.running`, then spawns [`Download::run`].
    pub(crate) fn new(
        ctx: Arc<Ctx>,
        partial: Partial,
    ) -> (Download, mpsc::Sender<SessionEvent>, Arc<SharedPartial>, watch::Receiver<Progress>) {
        let manifest = partial.manifest.clone();
        let shared = Arc::new(SharedPartial {
            manifest: manifest.clone(),
            have: std::sync::RwLock::new(partial.have.clone()),
            file: partial.file(),
            reader_at: std::sync::atomic::AtomicU32::new(u32::MAX),
        });
        let (tx, rx) = mpsc::channel(256);
        let n = manifest.pieces() as usize;
        let initial =
            progress_of(&partial.cid, &manifest, &partial.have, 0, Vec::new(), 0.0, TransferState::Running, None);
        let (ptx, prx) = watch::channel(initial);
        let now = Instant::now();
        let d = Download {
            cid: partial.cid,
            manifest,
            partial: Some(partial),
            shared: shared.clone(),
            rx,
            tx: tx.clone(),
            peers: HashMap::new(),
            inflight: vec![0; n],
            avail: vec![0; n],
            banned: HashMap::new(),
            not_holders: HashMap::new(),
            connecting: HashSet::new(),
            progress: ptx,
            fetched: 0,
            rate: 0.0,
            rate_mark: (now, 0),
            dirty: false,
            last_checkpoint: now,
            checkpointing: None,
            discovering: false,
            discovery_rounds: 0,
            last_discovery: now - Duration::from_secs(60),
            last_tick: now,
            started: now,
            rng: rand::make_rng(),
            ctx,
        };
        (d, tx, shared, prx)
    }

    fn have(&self) -> &Bitfield {
        static EMPTY: std::sync::OnceLock<Bitfield> = std::sync::OnceLock::new();
        self.partial.as_ref().map_or_else(|| EMPTY.get_or_init(|| Bitfield::new(0)), |p| &p.have)
    }

    pub(crate) async fn run(mut self) {
        let _ = self.ctx.overlay.provide(&self.cid.0).await;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome: Result<(), DownloadError> = loop {
            if self.have().is_full() {
                break self.finish().await;
            }
            tokio::select! {
                ev = self.rx.recv() => {
                    if let Some(ev) = ev
                        && let Err(e) = self.on_event(ev).await
                    {
                        break Err(e);
                    }
                }
                _ = tick.tick() => {
                    if let Err(e) = self.on_tick() {
                        break Err(e);
                    }
                }
                _ = self.ctx.shutdown.cancelled() => {
                    self.checkpoint(true).await;
                    return;
                }
            }
            self.schedule();
        };
        let state = if outcome.is_ok() { TransferState::Complete } else { TransferState::Failed };
        if let Err(e) = &outcome {
            warn!(cid = %self.cid, err = %e, "download failed");
            let _ = self.ctx.overlay.unprovide(&self.cid.0).await;
        } else {
            shoal_metrics::get().transfers_completed.inc();
            info!(ev = "transfer.done", cid = %self.cid, size = self.manifest.size, secs = self.started.elapsed().as_secs_f64(), fetched = self.fetched, "download complete");
        }
        self.publish(state, outcome.err());
        self.ctx.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.cid);
    }

    fn publish(&self, state: TransferState, error: Option<DownloadError>) {
        let have = self.shared.have.read().unwrap_or_else(|p| p.into_inner()).clone();
        let sources = self.peers.values().map(|s| (s.peer, s.rate * 8.0)).collect();
        let p = progress_of(&self.cid, &self.manifest, &have, self.fetched, sources, self.rate, state, error);
        self.progress.send_replace(p);
    }

    // ---- events ---------------------------------------------------------------------------

    async fn on_event(&mut self, ev: SessionEvent) -> Result<(), DownloadError> {
        match ev {
            SessionEvent::Opened { sid, peer, tx } => {
                self.connecting.remove(&peer);
                let n = self.manifest.pieces();
                let now = Instant::now();
                self.peers.insert(
                    sid,
                    Slot {
                        peer,
                        tx,
                        has: Some(Bitfield::new(n)),
                        asked: HashMap::new(),
                        rejected: HashMap::new(),
                        last_piece: now,
                        rate: 0.0,
                        since_tick: 0,
                        stalls: 0,
                    },
                );
            }
            SessionEvent::Bitfield { sid, bits } => {
                if let Some(s) = self.peers.get_mut(&sid) {
                    if let Some(old) = &s.has {
                        for p in old.ones() {
                            self.avail[p as usize] = self.avail[p as usize].saturating_sub(1);
                        }
                    }
                    for p in bits.ones() {
                        self.avail[p as usize] += 1;
                    }
                    s.has = Some(bits);
                }
            }
            SessionEvent::Complete { sid } => {
                if let Some(s) = self.peers.get_mut(&sid)
                    && let Some(old) = s.has.take()
                {
                    for p in old.ones() {
                        self.avail[p as usize] = self.avail[p as usize].saturating_sub(1);
                    }
                }
            }
            SessionEvent::Have { sid, index } => {
                if let Some(Slot { has: Some(b), .. }) = self.peers.get_mut(&sid)
                    && !b.get(index)
                {
                    b.set(index);
                    self.avail[index as usize] += 1;
                }
            }
            SessionEvent::Piece { sid, index, data } => self.on_piece(sid, index, data).await?,
            SessionEvent::Corrupt { sid, index } => {
                if let Some(s) = self.drop_slot(sid) {
                    warn!(peer = %s.peer, cid = %self.cid, piece = index, "a peer sent a corrupt piece; dropped it and will not ask it again for 10 minutes");
                    self.banned.insert(s.peer, Instant::now() + BAN_CORRUPT);
                }
            }
            SessionEvent::Reject { sid, index } => {
                if let Some(s) = self.peers.get_mut(&sid)
                    && s.asked.remove(&index).is_some()
                {
                    s.rejected.insert(index, Instant::now());
                    self.inflight[index as usize] = self.inflight[index as usize].saturating_sub(1);
                }
            }
            SessionEvent::Closed { sid } => {
                self.drop_slot(sid);
            }
            SessionEvent::ConnectFailed { peer, holder } => {
                self.connecting.remove(&peer);
                if !holder {
                    self.not_holders.insert(peer, Instant::now());
                }
            }
            SessionEvent::Candidates(list) => {
                self.discovering = false;
                self.connect_to(list);
            }
        }
        Ok(())
    }

    async fn on_piece(&mut self, sid: u64, index: u32, data: bytes::Bytes) -> Result<(), DownloadError> {
        if let Some(s) = self.peers.get_mut(&sid) {
            if s.asked.remove(&index).is_some() {
                self.inflight[index as usize] = self.inflight[index as usize].saturating_sub(1);
            }
            s.last_piece = Instant::now();
            s.stalls = 0;
            s.rate = 0.7 * s.rate + 0.3 * data.len() as f64 * 4.0;
        }
        if self.have().get(index) {
            return Ok(()); // an endgame duplicate
        }
        let file = self.shared.file.clone();
        let (off, _) = self.manifest.range(index);
        let len = data.len();
        tokio::task::spawn_blocking(move || file.write_all_at(&data, off)).await.map_err(|e| e.to_string())?.map_err(
            |e| {
                if e.raw_os_error() == Some(28) {
                    DownloadError {
                        failure: TransferFailure::DiskFull,
                        message: "the disk is full; free space and run the command again to resume".to_string(),
                    }
                } else {
                    DownloadError::from(format!("cannot write the download: {e}"))
                }
            },
        )?;
        if let Some(p) = self.partial.as_mut() {
            p.have.set(index);
        }
        self.shared.have.write().unwrap_or_else(|p| p.into_inner()).set(index);
        self.fetched += len as u64;
        self.dirty = true;
        // Cancel copies asked elsewhere (endgame), and tell everyone we have it.
        for s in self.peers.values_mut() {
            if s.asked.remove(&index).is_some() {
                self.inflight[index as usize] = self.inflight[index as usize].saturating_sub(1);
                let _ = s.tx.try_send(Frame::Cancel(index));
            }
            let _ = s.tx.try_send(Frame::Have(index));
        }
        Ok(())
    }

    fn drop_slot(&mut self, sid: u64) -> Option<Slot> {
        let s = self.peers.remove(&sid)?;
        for i in s.asked.keys() {
            self.inflight[*i as usize] = self.inflight[*i as usize].saturating_sub(1);
        }
        if let Some(b) = &s.has {
            for p in b.ones() {
                self.avail[p as usize] = self.avail[p as usize].saturating_sub(1);
            }
        }
        // Closing our queue ends the session's writer; the session then ends.
        Some(s)
    }

    // ---- periodic work --------------------------------------------------------------------

    fn on_tick(&mut self) -> Result<(), DownloadError> {
        let now = Instant::now();
        self.banned.retain(|_, until| *until > now);
        // A peer that said "not here" may be starting the same download this very moment (all
        // peers pulling an image at once): ask again soon, or early swarms split apart.
        self.not_holders.retain(|_, t| now.duration_since(*t) < Duration::from_secs(1));
        // Per-peer rates, from what arrived since the last tick (ticks are 250 ms apart).
        let tick_secs = now.duration_since(self.last_tick).as_secs_f64().max(0.05);
        self.last_tick = now;
        for s in self.peers.values_mut() {
            let inst = s.since_tick as f64 / tick_secs;
            s.rate = if s.rate == 0.0 { inst } else { 0.8 * s.rate + 0.2 * inst };
            s.since_tick = 0;
        }
        // Stalled peers: requests outstanding and nothing delivered for a while. (Not "a request
        // is old": with several queued on a shared link the last one legitimately waits.)
        let piece = f64::from(self.manifest.piece_size);
        let mut to_drop = Vec::new();
        for (sid, s) in self.peers.iter_mut() {
            s.rejected.retain(|_, t| now.duration_since(*t) < REJECT_BACKOFF);
            if s.asked.is_empty() {
                s.last_piece = now;
                continue;
            }
            let patience = Duration::from_secs_f64((4.0 * piece / s.rate.max(125_000.0)).clamp(5.0, 60.0));
            if now.duration_since(s.last_piece) <= patience {
                continue;
            }
            for i in s.asked.keys() {
                self.inflight[*i as usize] = self.inflight[*i as usize].saturating_sub(1);
                let _ = s.tx.try_send(Frame::Cancel(*i));
            }
            s.asked.clear();
            s.stalls += 1;
            s.last_piece = now;
            if s.stalls >= 3 {
                to_drop.push(*sid);
            }
        }
        for sid in to_drop {
            if let Some(s) = self.drop_slot(sid) {
                debug!(peer = %s.peer, cid = %self.cid, "abandoning a stalled peer");
                self.banned.insert(s.peer, now + BAN_STALL);
            }
        }
        // Rate.
        let dt = now.duration_since(self.rate_mark.0).as_secs_f64();
        if dt >= 1.0 {
            let inst = (self.fetched - self.rate_mark.1) as f64 / dt;
            self.rate = if self.rate == 0.0 { inst } else { 0.5 * self.rate + 0.5 * inst };
            self.rate_mark = (now, self.fetched);
        }
        // More holders.
        let want_more = self.peers.len() + self.connecting.len() < MAX_PEERS;
        let due = now.duration_since(self.last_discovery)
            > if self.peers.is_empty() { Duration::from_millis(500) } else { Duration::from_secs(2) };
        if want_more && due && !self.discovering {
            self.discover();
        }
        if self.peers.is_empty()
            && self.fetched == 0
            && self.have().count() == 0
            && now.duration_since(self.started) > NO_HOLDER_TIMEOUT
        {
            return Err(DownloadError {
                failure: TransferFailure::NoHolder,
                message: format!(
                    "no peer holds {} (asked every live peer for {} s)",
                    self.cid,
                    NO_HOLDER_TIMEOUT.as_secs()
                ),
            });
        }
        if self.dirty && now.duration_since(self.last_checkpoint) > Duration::from_secs(1) {
            self.spawn_checkpoint();
        }
        self.publish(TransferState::Running, None);
        Ok(())
    }

    fn discover(&mut self) {
        self.discovering = true;
        self.last_discovery = Instant::now();
        // The DHT names holders beyond the members asked; consult it every 10th round, or
        // whenever we talk to nobody.
        self.discovery_rounds += 1;
        let use_dht = self.peers.is_empty() || self.discovery_rounds.is_multiple_of(10);
        let (ctx, tx, cid) = (self.ctx.clone(), self.tx.clone(), self.cid);
        tokio::spawn(async move {
            let c = ctx.candidates(&cid, use_dht).await;
            let _ = tx.send(SessionEvent::Candidates(c)).await;
        });
    }

    fn connect_to(&mut self, list: Vec<(PeerId, Vec<shoal_overlay::libp2p::Multiaddr>)>) {
        let connected: HashSet<PeerId> = self.peers.values().map(|s| s.peer).collect();
        for (peer, addrs) in list {
            if self.peers.len() + self.connecting.len() >= MAX_PEERS {
                break;
            }
            if connected.contains(&peer)
                || self.connecting.contains(&peer)
                || self.banned.contains_key(&peer)
                || self.not_holders.contains_key(&peer)
            {
                continue;
            }
            self.connecting.insert(peer);
            let (ctx, tx, cid, manifest) = (self.ctx.clone(), self.tx.clone(), self.cid, self.manifest.clone());
            tokio::spawn(async move {
                let holder = match ctx.ask(peer, &Request::Hello { cid, want_manifest: false }).await {
                    Ok(Response::Offer(offer)) => {
                        if ctx.open_session(peer, &addrs, &offer, cid, manifest, tx.clone()).await.is_ok() {
                            return;
                        }
                        true
                    }
                    Ok(Response::NotHere) => false,
                    _ => true,
                };
                let _ = tx.send(SessionEvent::ConnectFailed { peer, holder }).await;
            });
        }
    }

    /// Queues as many requests as each peer should have in flight.
    fn schedule(&mut self) {
        let Some(partial) = self.partial.as_ref() else { return };
        let have = &partial.have;
        let piece = f64::from(self.manifest.piece_size);
        // Requests that have taken three times as long as their peer's rate says they should
        // (at least 2 s): only those are worth a second copy in the endgame.
        let now = Instant::now();
        let overdue: HashSet<u32> = self
            .peers
            .values()
            .flat_map(|s| {
                let queued = s.asked.len().max(1) as f64;
                let late = Duration::from_secs_f64((3.0 * queued * piece / s.rate.max(125_000.0)).clamp(2.0, 30.0));
                s.asked.iter().filter(move |(_, t)| now.duration_since(**t) > late).map(|(i, _)| *i)
            })
            .collect();
        // A reader streaming the blob: the next few pieces after its position come first.
        let window = match self.shared.reader_at.load(std::sync::atomic::Ordering::Relaxed) {
            u32::MAX => None,
            at => Some((at, at.saturating_add(STREAM_WINDOW))),
        };
        let mut sids: Vec<u64> = self.peers.keys().copied().collect();
        // Fairness between peers: a different first peer each time.
        use rand::seq::SliceRandom;
        sids.shuffle(&mut self.rng);
        for sid in sids {
            while let Some(s) = self.peers.get(&sid) {
                let depth = (2.0 + s.rate * 0.25 / piece).clamp(2.0, 24.0) as usize;
                if s.asked.len() >= depth || s.tx.capacity() == 0 {
                    break;
                }
                let asked = |i: u32| s.asked.contains_key(&i) || s.rejected.contains_key(&i);
                let inp = PickInput {
                    peer_has: s.has.as_ref(),
                    have,
                    inflight: &self.inflight,
                    asked_of_peer: &asked,
                    avail: &self.avail,
                    overdue: &|i| overdue.contains(&i),
                    window,
                };
                let Some(i) = pick(&inp, &mut self.rng) else { break };
                let Some(s) = self.peers.get_mut(&sid) else { break };
                if s.tx.try_send(Frame::Request(i)).is_err() {
                    break;
                }
                if s.has.is_none() {
                    tracing::debug!(piece = i, peer = %s.peer, avail = self.avail[i as usize], inflight = self.inflight[i as usize], "asking a seed");
                }
                s.asked.insert(i, Instant::now());
                self.inflight[i as usize] += 1;
            }
        }
    }

    // ---- durability -----------------------------------------------------------------------

    fn spawn_checkpoint(&mut self) {
        if self.checkpointing.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let Some(p) = self.partial.as_ref() else { return };
        self.dirty = false;
        self.last_checkpoint = Instant::now();
        let (store, job) = (self.ctx.store.clone(), p.checkpoint_job());
        self.checkpointing = Some(tokio::task::spawn_blocking(move || {
            if let Err(e) = store.checkpoint(&job) {
                warn!(err = %e, "cannot checkpoint a download");
            }
        }));
    }

    async fn checkpoint(&mut self, wait: bool) {
        if let Some(h) = self.checkpointing.take() {
            let _ = h.await;
        }
        if wait {
            self.spawn_checkpoint();
            if let Some(h) = self.checkpointing.take() {
                let _ = h.await;
            }
        }
    }

    async fn finish(&mut self) -> Result<(), DownloadError> {
        self.checkpoint(false).await;
        let Some(partial) = self.partial.take() else { return Err("download already finished".into()) };
        let store = self.ctx.store.clone();
        let r = tokio::task::spawn_blocking(move || store.finish_partial(partial)).await.map_err(|e| e.to_string())?;
        r.map(drop).map_err(|e| match e {
            crate::StoreError::DiskFull { .. } => {
                DownloadError { failure: TransferFailure::DiskFull, message: e.to_string() }
            }
            other => other.to_string().into(),
        })
    }
}

/// Why a download stopped: the kind a caller acts on, and the words for the user.
#[derive(Debug)]
struct DownloadError {
    failure: TransferFailure,
    message: String,
}

impl From<String> for DownloadError {
    fn from(message: String) -> Self {
        DownloadError { failure: TransferFailure::Other, message }
    }
}

impl From<&str> for DownloadError {
    fn from(message: &str) -> Self {
        message.to_string().into()
    }
}

impl std::fmt::Display for DownloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[allow(clippy::too_many_arguments)]
fn progress_of(
    cid: &ContentId,
    m: &PieceManifest,
    have: &Bitfield,
    fetched: u64,
    sources: Vec<(PeerId, f64)>,
    rate: f64,
    state: TransferState,
    error: Option<DownloadError>,
) -> Progress {
    let have_bytes: u64 = have.ones().map(|i| m.range(i).1 as u64).sum();
    Progress {
        cid: *cid,
        size: m.size,
        pieces: m.pieces(),
        have_pieces: have.count(),
        have_bytes,
        fetched_bytes: fetched,
        peers: sources.len(),
        rate_bps: rate * 8.0,
        state,
        failure: error.as_ref().map(|e| e.failure),
        error: error.map(|e| e.message),
        have: have.clone(),
        sources,
    }
}
