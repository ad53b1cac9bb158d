//! The overlay actor: one task owns the libp2p swarm, foca and the record book.
//!
//! Messages it takes ([`Command`], from the [`crate::Overlay`] handle): `Peers`, `Status`,
//! `UpdateLocal` (new capacity/free/labels to publish), `Leave` (graceful shutdown).
//!
//! What it does with the network:
//! - SWIM: every foca packet goes out as a `/shoal/swim/1` request to the member's addresses;
//!   every packet in is checked (size, header decodes, sender identity = connection's peer) and
//!   handed to foca. Foca's timers live in a `DelayQueue`.
//! - Records: our own record is (re)signed and added as a foca broadcast whenever it changes.
//!   Every 2 s, and whenever a member appears whose record we lack, we pull from one peer with
//!   a `/shoal/ctl/1` `Sync` digest; a responder that sees the requester holds newer records
//!   pulls back (push-pull anti-entropy).
//! - Joining: `--join` addresses (with or without `/p2p/<id>`) and peers remembered on disk
//!   are sent a SWIM announce; while the peer has no live member it retries with backoff.
//! - Leaving: publish a record with `leaving = true`, push it straight to live members, tell
//!   foca to leave, and stop once the pushes are answered or 2 s have passed.

use crate::behaviour::{Behaviour, BehaviourEvent};
use crate::peerstore::{KnownPeer, PeerStore};
use crate::ratelimit::LogLimiter;
use crate::record::{self, MAX_ADDRS, PeerRecord, RecordHandler, SharedBook, SignedRecord, WireRecord};
use crate::swim::{SwimId, SwimTuning, rejoin_targets, swim_config};
use crate::view::{MemberView, ViewChange};
use crate::wire::{CtlRequest, CtlResponse, Frame};
use crate::{LocalInfo, OverlayStatus};
use foca::{AccumulatingRuntime, Codec, Foca, OwnedNotification, PostcardCodec, Timer};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad, mdns};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use shoal_types::{PeerInfo, PeerState};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::time::DelayQueue;
use tracing::{debug, error, info, warn};

pub(crate) type SwimFoca = Foca<SwimId, PostcardCodec, StdRng, RecordHandler>;

/// How many bytes of records one sync response carries at most.
const SYNC_BUDGET: usize = 2 * 1024 * 1024;
/// How long a graceful leave waits for peers to acknowledge.
const LEAVE_GRACE: Duration = Duration::from_secs(2);
/// Minimum time between two syncs we start with the same peer.
const SYNC_COOLDOWN: Duration = Duration::from_millis(500);

/// Requests the handle sends to the actor.
pub(crate) enum Command {
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    Status(oneshot::Sender<OverlayStatus>),
    UpdateLocal(LocalInfo, oneshot::Sender<()>),
    Leave(oneshot::Sender<()>),
    /// Live members with their addresses (this peer excluded).
    Members(oneshot::Sender<Vec<Member>>),
    /// Announce in the DHT that we hold `key`.
    Provide(kad::RecordKey),
    /// Stop announcing `key`.
    Unprovide(kad::RecordKey),
    /// Who the DHT says holds `key`.
    FindProviders(kad::RecordKey, oneshot::Sender<Vec<PeerId>>),
    /// Sets one key of this peer's published per-peer state (`None` removes it).
    SetExt(String, Option<serde_json::Value>),
}

/// A live member as other subsystems need it.
#[derive(Debug, Clone)]
pub struct Member {
    pub peer: PeerId,
    pub addrs: Vec<Multiaddr>,
    pub name: String,
    /// Per-peer state other subsystems publish in their record (`LocalInfo::ext`).
    pub ext: std::collections::BTreeMap<String, serde_json::Value>,
}

struct Leaving {
    reply: Option<oneshot::Sender<()>>,
    pending: HashSet<OutboundRequestId>,
    deadline: Instant,
}

/// Largest value one `ext` key may hold in this peer's record (the record is bounded).
pub(crate) const MAX_EXT_VALUE: usize = 12 << 10;

pub(crate) struct EventLoop {
    pub(crate) swarm: Swarm<Behaviour>,
    pub(crate) foca: SwimFoca,
    pub(crate) rt: AccumulatingRuntime<SwimId>,
    pub(crate) timers: DelayQueue<Timer<SwimId>>,
    pub(crate) book: SharedBook,
    pub(crate) rejected: Arc<AtomicU64>,
    pub(crate) rejected_seen: u64,
    pub(crate) view: MemberView,
    pub(crate) keypair: Keypair,
    pub(crate) me: SwimId,
    pub(crate) local: LocalInfo,
    pub(crate) local_version: u64,
    pub(crate) listen_addrs: Vec<Multiaddr>,
    pub(crate) tuning: SwimTuning,
    pub(crate) config_n: usize,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) bootstrap: Vec<Multiaddr>,
    pub(crate) known: Vec<KnownPeer>,
    pub(crate) join_dials: HashMap<ConnectionId, Multiaddr>,
    pub(crate) store: PeerStore,
    pub(crate) dirty: HashSet<PeerId>,
    pub(crate) forget: Vec<PeerId>,
    pub(crate) bad_msg_log: LogLimiter,
    pub(crate) dropped: u64,
    pub(crate) dial_log: LogLimiter,
    pub(crate) started: Instant,
    pub(crate) next_join: Instant,
    pub(crate) join_backoff: Duration,
    pub(crate) last_sync: HashMap<PeerId, Instant>,
    pub(crate) last_prune: Instant,
    pub(crate) last_flush: Instant,
    pub(crate) last_swim_rx: Instant,
    pub(crate) private: bool,
    pub(crate) dead_retention: Duration,
    leaving: Option<Leaving>,
    early_events: Vec<SwarmEvent<BehaviourEvent>>,
    provider_queries: HashMap<kad::QueryId, (HashSet<PeerId>, oneshot::Sender<Vec<PeerId>>)>,
}

/// Everything [`EventLoop::new`] needs.
pub(crate) struct LoopParts {
    pub(crate) swarm: Swarm<Behaviour>,
    pub(crate) keypair: Keypair,
    pub(crate) me: SwimId,
    pub(crate) local: LocalInfo,
    pub(crate) listen_addrs: Vec<Multiaddr>,
    pub(crate) tuning: SwimTuning,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) bootstrap: Vec<Multiaddr>,
    pub(crate) known: Vec<KnownPeer>,
    pub(crate) store: PeerStore,
    pub(crate) private: bool,
    pub(crate) dead_retention: Duration,
    /// Swarm events that arrived while the overlay was starting.
    pub(crate) early_events: Vec<SwarmEvent<BehaviourEvent>>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The `/p2p/<id>` at the end of an address, if any.
pub(crate) fn peer_id_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

impl EventLoop {
    pub(crate) fn new(p: LoopParts) -> Self {
        let book: SharedBook = Default::default();
        let rejected = Arc::new(AtomicU64::new(0));
        let handler = RecordHandler { book: book.clone(), rejected: rejected.clone() };
        let foca = Foca::with_custom_broadcast(
            p.me.clone(),
            swim_config(1, &p.tuning),
            rand::make_rng::<StdRng>(),
            PostcardCodec,
            handler,
        );
        let now = Instant::now();
        let mut el = EventLoop {
            swarm: p.swarm,
            foca,
            rt: AccumulatingRuntime::new(),
            timers: DelayQueue::new(),
            book,
            rejected,
            rejected_seen: 0,
            view: MemberView::default(),
            keypair: p.keypair,
            me: p.me,
            local: p.local,
            local_version: 0,
            listen_addrs: p.listen_addrs,
            tuning: p.tuning,
            config_n: 1,
            commands: p.commands,
            bootstrap: p.bootstrap,
            known: p.known,
            join_dials: HashMap::new(),
            store: p.store,
            dirty: HashSet::new(),
            forget: Vec::new(),
            bad_msg_log: LogLimiter::new(Duration::from_secs(5)),
            dropped: 0,
            dial_log: LogLimiter::new(Duration::from_secs(10)),
            started: now,
            next_join: now,
            join_backoff: Duration::from_secs(2),
            last_sync: HashMap::new(),
            last_prune: now,
            last_flush: now,
            last_swim_rx: now,
            private: p.private,
            dead_retention: p.dead_retention,
            leaving: None,
            early_events: p.early_events,
            provider_queries: HashMap::new(),
        };
        el.publish_local();
        el
    }

    pub(crate) async fn run(mut self) {
        let mut sync_tick = tokio::time::interval(Duration::from_secs(2));
        sync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut house_tick = tokio::time::interval(Duration::from_millis(500));
        house_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.kick_joins();
        for ev in std::mem::take(&mut self.early_events) {
            self.on_swarm_event(ev);
        }
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                Some(t) = self.timers.next(), if !self.timers.is_empty() => {
                    let r = self.foca.handle_timer(t.into_inner(), &mut self.rt);
                    self.foca_result(r, None);
                    self.drain();
                }
                cmd = self.commands.recv() => match cmd {
                    Some(c) => self.on_command(c),
                    // Every handle is gone: nobody can ask us anything, so stop quietly.
                    None => break,
                },
                _ = sync_tick.tick() => self.anti_entropy(),
                _ = house_tick.tick() => self.housekeeping(),
            }
            if let Some(l) = &mut self.leaving
                && (l.pending.is_empty() || Instant::now() >= l.deadline)
            {
                if let Some(reply) = l.reply.take() {
                    let _ = reply.send(());
                }
                break;
            }
        }
        self.flush_store(true);
        debug!("overlay stopped");
    }

    // ---- foca plumbing -------------------------------------------------------------------

    fn drain(&mut self) {
        loop {
            let mut progressed = false;
            while let Some((to, data)) = self.rt.to_send() {
                progressed = true;
                if to.peer == self.me.peer {
                    continue;
                }
                self.swarm.behaviour_mut().swim.send_request_with_addresses(
                    &to.peer,
                    Frame::Ok(data.to_vec()),
                    to.addrs.clone(),
                );
            }
            while let Some((after, timer)) = self.rt.to_schedule() {
                progressed = true;
                self.timers.insert(timer, after);
            }
            while let Some(n) = self.rt.to_notify() {
                progressed = true;
                self.on_notification(n);
            }
            let changed = record::lock(&self.book).take_changed();
            for p in changed {
                progressed = true;
                self.on_record_changed(p);
            }
            if !progressed {
                break;
            }
        }
    }

    fn foca_result(&mut self, r: Result<(), foca::Error>, from: Option<PeerId>) {
        let Err(e) = r else { return };
        match (&e, from) {
            (foca::Error::IncompleteProbeCycle, _) => debug!("probe cycle overran its period"),
            (_, Some(peer)) => self.bad_message(peer, "swim", &e),
            (_, None) => warn!(err = %e, "membership protocol error"),
        }
    }

    fn bad_message(&mut self, peer: PeerId, protocol: &str, err: &dyn std::fmt::Display) {
        self.dropped += 1;
        if let Some(suppressed) = self.bad_msg_log.check(Instant::now()) {
            warn!(%peer, protocol, %err, suppressed, "dropped a bad message from a peer");
        }
    }

    fn on_notification(&mut self, n: OwnedNotification<SwimId>) {
        match &n {
            OwnedNotification::Active => info!("joined the cluster"),
            OwnedNotification::Idle => {
                if self.leaving.is_none() {
                    warn!("no other live peer; will keep retrying known addresses");
                }
                self.next_join = Instant::now();
                self.join_backoff = Duration::from_secs(2);
            }
            OwnedNotification::Defunct if self.leaving.is_none() => {
                // Leaving makes foca defunct on purpose; otherwise only reachable if renew()
                // returned None, and ours always renews.
                error!("this peer was declared dead and could not rejoin");
            }
            OwnedNotification::Rejoin(id) => {
                info!(
                    generation = id.generation,
                    "declared dead by the cluster (partition?); rejoined with a new generation"
                );
                self.announce_to_known();
                self.me = id.clone();
                let store = self.store.clone();
                let g = id.generation;
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = store.set_generation(g) {
                        warn!(err = %e, "could not record the new generation");
                    }
                });
                self.local_version = 0;
                self.publish_local();
            }
            _ => {}
        }
        let change = self.view.apply(&n, Instant::now());
        match change {
            Some(ViewChange::Up { peer, generation }) => {
                info!(%peer, generation, "peer alive");
                // Every member goes into the DHT routing table, which is also where the swarm
                // finds addresses when a subsystem opens a stream to a member.
                for a in self.view.get(&peer).map(|e| e.addrs.clone()).unwrap_or_default() {
                    self.swarm.behaviour_mut().kad.add_address(&peer, a);
                }
                if self.view.active().count() == 1 {
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                }
                self.dirty.insert(peer);
                self.need_record(peer, generation);
            }
            Some(ViewChange::Restarted { peer, generation }) => {
                info!(%peer, generation, "peer restarted");
                self.dirty.insert(peer);
                self.need_record(peer, generation);
            }
            Some(ViewChange::Down { peer, generation }) => {
                let left = record::lock(&self.book)
                    .get(&peer)
                    .is_some_and(|r| r.record.leaving && r.record.generation == generation);
                if left {
                    info!(%peer, "peer left");
                } else {
                    warn!(%peer, "peer dead");
                }
                self.swarm.behaviour_mut().kad.remove_peer(&peer);
            }
            None => {}
        }
    }

    fn need_record(&mut self, peer: PeerId, generation: u64) {
        let have = record::lock(&self.book).get(&peer).is_some_and(|r| r.record.generation >= generation);
        if !have {
            self.request_sync(peer);
        }
    }

    fn on_record_changed(&mut self, peer: PeerId) {
        if peer == self.me.peer {
            return;
        }
        self.dirty.insert(peer);
        let addrs = record::lock(&self.book).get(&peer).map(|r| r.record.addrs.clone()).unwrap_or_default();
        for a in addrs {
            self.swarm.behaviour_mut().kad.add_address(&peer, a);
        }
    }

    // ---- our own record ------------------------------------------------------------------

    fn publish_local(&mut self) {
        self.local_version += 1;
        let rec = PeerRecord {
            peer: self.me.peer,
            generation: self.me.generation,
            version: self.local_version,
            name: self.local.name.clone(),
            addrs: self.me.addrs.clone(),
            labels: self.local.labels.clone(),
            capacity: self.local.capacity,
            free: self.local.free,
            agent_version: shoal_types::VERSION.to_string(),
            leaving: self.leaving.is_some(),
            ext: self.local.ext.clone(),
        };
        let signed = match SignedRecord::sign(rec, &self.keypair) {
            Ok(s) => s,
            Err(e) => {
                error!(err = %e, "cannot publish this peer's record");
                return;
            }
        };
        // The handler verifies and stores it in the book, and foca queues it for gossip.
        if let Err(e) = self.foca.add_broadcast(&signed.encode()) {
            error!(err = %e, "cannot queue this peer's record for gossip");
            record::lock(&self.book).insert_verified(signed);
        }
        let r = self.foca.broadcast(&mut self.rt);
        self.foca_result(r, None);
        self.drain();
    }

    // ---- joining -------------------------------------------------------------------------

    fn kick_joins(&mut self) {
        for addr in self.bootstrap.clone() {
            match peer_id_of(&addr) {
                Some(peer) if peer == self.me.peer => {}
                Some(peer) => self.announce(SwimId { peer, generation: 0, addrs: vec![addr] }),
                None => {
                    let opts = DialOpts::unknown_peer_id().address(addr.clone()).build();
                    let id = opts.connection_id();
                    match self.swarm.dial(opts) {
                        Ok(()) => {
                            self.join_dials.insert(id, addr);
                        }
                        Err(e) => self.dial_failed(&addr, &e),
                    }
                }
            }
        }
        let mut known: Vec<KnownPeer> = self.known.iter().filter(|k| k.peer != self.me.peer).cloned().collect();
        if known.len() > 8 {
            known = known.sample(&mut rand::rng(), 8).cloned().collect();
        }
        for k in known {
            if !k.addrs.is_empty() {
                self.announce(SwimId { peer: k.peer, generation: 0, addrs: k.addrs });
            }
        }
    }

    /// Announces to a few members SWIM knows, in any state (see [`rejoin_targets`]).
    fn announce_to_known(&mut self) {
        let targets = rejoin_targets(self.foca.iter_membership_state(), self.foca.identity(), &mut rand::rng());
        for t in targets {
            self.announce(t);
        }
    }

    fn announce(&mut self, dst: SwimId) {
        let r = self.foca.announce(dst, &mut self.rt);
        self.foca_result(r, None);
        self.drain();
    }

    fn dial_failed(&mut self, addr: &Multiaddr, err: &(dyn std::error::Error + 'static)) {
        if let Some(suppressed) = self.dial_log.check(Instant::now()) {
            if mentions_key_mismatch(err) {
                warn!(%addr, suppressed, "cannot join through this address: the peer there uses a different cluster key");
            } else {
                warn!(%addr, err = %err, suppressed, "cannot reach join address; is a peer running there, and does it use the same cluster key?");
            }
        }
    }

    // ---- anti-entropy --------------------------------------------------------------------

    fn request_sync(&mut self, peer: PeerId) {
        let now = Instant::now();
        if peer == self.me.peer || self.last_sync.get(&peer).is_some_and(|t| now.duration_since(*t) < SYNC_COOLDOWN) {
            return;
        }
        self.last_sync.insert(peer, now);
        let digest = record::lock(&self.book).digest();
        let addrs = self.view.get(&peer).map(|e| e.addrs.clone()).unwrap_or_default();
        self.swarm.behaviour_mut().ctl.send_request_with_addresses(
            &peer,
            Frame::Ok(CtlRequest::Sync { digest }),
            addrs,
        );
    }

    fn anti_entropy(&mut self) {
        let active: Vec<PeerId> = self.view.active().map(|(p, _)| *p).collect();
        if let Some(peer) = active.choose(&mut rand::rng()).copied() {
            self.request_sync(peer);
        }
    }

    fn offer_record(&mut self, from: PeerId, wire: WireRecord) {
        let r = record::lock(&self.book).offer(wire);
        if let Err(e) = r {
            self.bad_message(from, "ctl", &e);
        }
    }

    // ---- housekeeping --------------------------------------------------------------------

    fn housekeeping(&mut self) {
        let now = Instant::now();
        let rejected = self.rejected.load(Ordering::Relaxed);
        if rejected > self.rejected_seen {
            if let Some(suppressed) = self.bad_msg_log.check(now) {
                warn!(
                    count = rejected - self.rejected_seen,
                    suppressed, "dropped invalid peer records (bad signature or malformed)"
                );
            }
            self.rejected_seen = rejected;
        }

        let n = 1 + self.view.active().count();
        if n != self.config_n {
            match self.foca.set_config(swim_config(n, &self.tuning)) {
                Ok(()) => self.config_n = n,
                Err(e) => warn!(err = %e, "cannot retune membership for cluster size"),
            }
        }

        // Watchdog: members but no SWIM traffic for several probe periods means foca has gone
        // quiet (see `rejoin_targets`); restart the conversation.
        if self.leaving.is_none() && n > 1 && now.duration_since(self.last_swim_rx) > self.tuning.probe_period * 8 {
            debug!("no SWIM traffic lately; announcing to known members");
            self.last_swim_rx = now;
            self.announce_to_known();
        }

        if self.leaving.is_none() {
            if n > 1 {
                self.join_backoff = Duration::from_secs(2);
            } else if now >= self.next_join && (!self.bootstrap.is_empty() || !self.known.is_empty()) {
                self.kick_joins();
                self.next_join = now + self.join_backoff;
                self.join_backoff = (self.join_backoff * 2).min(Duration::from_secs(30));
            }
        }

        if now.duration_since(self.last_prune) > Duration::from_secs(60) {
            self.last_prune = now;
            for p in self.view.prune(now, self.dead_retention) {
                record::lock(&self.book).remove(&p);
                self.dirty.remove(&p);
                self.forget.push(p);
                self.known.retain(|k| k.peer != p);
            }
            self.last_sync.retain(|_, t| now.duration_since(*t) < Duration::from_secs(60));
        }
        if now.duration_since(self.last_flush) > Duration::from_secs(5) {
            self.flush_store(false);
        }
    }

    fn flush_store(&mut self, wait: bool) {
        self.last_flush = Instant::now();
        if self.dirty.is_empty() && self.forget.is_empty() {
            return;
        }
        let book = record::lock(&self.book);
        let now = unix_ms();
        let peers: Vec<KnownPeer> = self
            .dirty
            .drain()
            .filter_map(|p| {
                let rec = book.get(&p);
                let addrs = self
                    .view
                    .get(&p)
                    .map(|e| e.addrs.clone())
                    .filter(|a| !a.is_empty())
                    .or_else(|| rec.map(|r| r.record.addrs.clone()))?;
                Some(KnownPeer {
                    peer: p,
                    name: rec.map(|r| r.record.name.clone()).unwrap_or_default(),
                    addrs,
                    last_seen_ms: now,
                })
            })
            .collect();
        drop(book);
        for kp in &peers {
            match self.known.iter_mut().find(|k| k.peer == kp.peer) {
                Some(k) => *k = kp.clone(),
                None => self.known.push(kp.clone()),
            }
        }
        let forget = std::mem::take(&mut self.forget);
        let store = self.store.clone();
        let job = move || {
            if let Err(e) = store.update(&peers, &forget) {
                warn!(err = %e, "cannot save known peers");
            }
        };
        if wait {
            job();
        } else {
            tokio::task::spawn_blocking(job);
        }
    }

    // ---- swarm events --------------------------------------------------------------------

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Swim(ev)) => self.on_swim_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Ctl(ev)) => self.on_ctl_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                for a in info.listen_addrs.into_iter().filter(|a| !is_loopback(a)).take(MAX_ADDRS) {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, a);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                ..
            })) => self.on_kad_progress(id, result, step.last),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                for (peer, addr) in list {
                    if self.view.get(&peer).is_none_or(|e| !e.up) && peer != self.me.peer {
                        debug!(%peer, %addr, "found a peer on the local network");
                        self.announce(SwimId { peer, generation: 0, addrs: vec![addr] });
                    }
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, .. } => {
                if let Some(addr) = self.join_dials.remove(&connection_id) {
                    debug!(%peer_id, %addr, "reached join address");
                    let mut addr = addr;
                    addr.push(Protocol::P2p(peer_id));
                    self.announce(SwimId { peer: peer_id, generation: 0, addrs: vec![addr] });
                }
            }
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                let join_addr = self.join_dials.remove(&connection_id).or_else(|| {
                    let peer = peer_id?;
                    self.bootstrap.iter().find(|a| peer_id_of(a) == Some(peer)).cloned()
                });
                if let Some(addr) = join_addr {
                    self.dial_failed(&addr, &error);
                }
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                if let Some(suppressed) = self.dial_log.check(Instant::now()) {
                    if mentions_key_mismatch(&error) {
                        warn!(from = %send_back_addr, suppressed, "refused a connection from a peer with a different cluster key");
                    } else {
                        warn!(from = %send_back_addr, err = %error, suppressed, "refused a connection");
                    }
                }
            }
            SwarmEvent::NewListenAddr { address, .. } if !self.listen_addrs.contains(&address) => {
                info!(%address, "listening");
                self.listen_addrs.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => self.listen_addrs.retain(|a| a != &address),
            _ => {}
        }
    }

    fn on_swim_event(&mut self, ev: request_response::Event<Frame<Vec<u8>>, ()>) {
        use request_response::{Event, Message};
        match ev {
            Event::Message { peer, message: Message::Request { request, channel, .. }, .. } => match request {
                Frame::Ok(packet) => {
                    let _ = self.swarm.behaviour_mut().swim.send_response(channel, ());
                    self.on_swim_packet(peer, &packet);
                }
                // Dropping the channel closes the stream without an answer.
                Frame::Refused(e) => self.bad_message(peer, "swim", &e),
            },
            Event::OutboundFailure { peer, error, .. } => {
                debug!(%peer, err = %error, "swim send failed");
                if matches!(error, request_response::OutboundFailure::Timeout) {
                    // A stalled connection (a partition, a frozen peer) would hold every later
                    // probe; drop it so the next probe dials afresh.
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
            Event::InboundFailure { peer, error: request_response::InboundFailure::Io(e), .. } => {
                self.bad_message(peer, "swim", &e)
            }
            _ => {}
        }
    }

    fn on_swim_packet(&mut self, peer: PeerId, data: &[u8]) {
        match Codec::<SwimId>::decode_header(&mut PostcardCodec, data) {
            Ok(h) if h.src.peer == peer => {}
            Ok(h) => {
                let err = format!("packet claims to come from {}", h.src.peer);
                return self.bad_message(peer, "swim", &err);
            }
            Err(e) => return self.bad_message(peer, "swim", &e),
        }
        self.last_swim_rx = Instant::now();
        let r = self.foca.handle_data(data, &mut self.rt);
        self.foca_result(r, Some(peer));
        self.drain();
    }

    fn on_ctl_event(&mut self, ev: request_response::Event<Frame<CtlRequest>, CtlResponse>) {
        use request_response::{Event, Message};
        match ev {
            Event::Message { peer, message: Message::Request { request: Frame::Refused(e), .. }, .. } => {
                self.bad_message(peer, "ctl", &e)
            }
            Event::Message { peer, message: Message::Request { request: Frame::Ok(request), channel, .. }, .. } => {
                let response = match request {
                    CtlRequest::Sync { digest } => {
                        let book = record::lock(&self.book);
                        let (records, more) = book.newer_than(&digest, SYNC_BUDGET);
                        let they_have_newer = digest
                            .iter()
                            .any(|d| book.get(&d.peer).is_none_or(|r| r.record.order() < (d.generation, d.version)));
                        drop(book);
                        if they_have_newer {
                            self.request_sync(peer);
                        }
                        CtlResponse::Records { records, more }
                    }
                    CtlRequest::Push { records } => {
                        for r in records.into_iter().take(64) {
                            self.offer_record(peer, r);
                        }
                        CtlResponse::Ack
                    }
                };
                let _ = self.swarm.behaviour_mut().ctl.send_response(channel, response);
                self.drain();
            }
            Event::Message { peer, message: Message::Response { request_id, response }, .. } => {
                if let Some(l) = &mut self.leaving {
                    l.pending.remove(&request_id);
                }
                if let CtlResponse::Records { records, more } = response {
                    for r in records {
                        self.offer_record(peer, r);
                    }
                    if more {
                        self.last_sync.remove(&peer);
                        self.request_sync(peer);
                    }
                    self.drain();
                }
            }
            Event::OutboundFailure { peer, request_id, error, .. } => {
                if let Some(l) = &mut self.leaving {
                    l.pending.remove(&request_id);
                }
                debug!(%peer, err = %error, "control request failed");
            }
            Event::InboundFailure { peer, error: request_response::InboundFailure::Io(e), .. } => {
                self.bad_message(peer, "ctl", &e)
            }
            _ => {}
        }
    }

    // ---- commands ------------------------------------------------------------------------

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Peers(reply) => {
                let _ = reply.send(self.peers());
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::UpdateLocal(info, reply) => {
                if info != self.local {
                    self.local = info;
                    self.publish_local();
                }
                let _ = reply.send(());
            }
            Command::Leave(reply) => self.start_leave(reply),
            Command::Members(reply) => {
                let book = record::lock(&self.book);
                let members = self
                    .view
                    .active()
                    .map(|(p, e)| {
                        let rec = book.get(p).map(|r| &r.record);
                        Member {
                            peer: *p,
                            addrs: if e.addrs.is_empty() {
                                rec.map(|r| r.addrs.clone()).unwrap_or_default()
                            } else {
                                e.addrs.clone()
                            },
                            name: rec.map(|r| r.name.clone()).unwrap_or_default(),
                            ext: rec.map(|r| r.ext.clone()).unwrap_or_default(),
                        }
                    })
                    .collect();
                let _ = reply.send(members);
            }
            Command::Provide(key) => {
                if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key) {
                    warn!(err = %e, "cannot announce content in the DHT");
                }
            }
            Command::Unprovide(key) => self.swarm.behaviour_mut().kad.stop_providing(&key),
            Command::SetExt(key, value) => {
                // A value that would push the signed record over its bound is refused here,
                // so it cannot freeze every later update of this peer's record.
                if let Some(v) = &value
                    && serde_json::to_vec(v).map_or(usize::MAX, |b| b.len()) > MAX_EXT_VALUE
                {
                    warn!(%key, "record extension too large; not published");
                    return;
                }
                let changed = match value {
                    Some(v) => self.local.ext.insert(key, v.clone()).as_ref() != Some(&v),
                    None => self.local.ext.remove(&key).is_some(),
                };
                if changed {
                    self.publish_local();
                }
            }
            Command::FindProviders(key, reply) => {
                let id = self.swarm.behaviour_mut().kad.get_providers(key);
                self.provider_queries.insert(id, (HashSet::new(), reply));
            }
        }
    }

    fn on_kad_progress(&mut self, id: kad::QueryId, result: kad::QueryResult, last: bool) {
        let kad::QueryResult::GetProviders(r) = result else { return };
        let Some((found, _)) = self.provider_queries.get_mut(&id) else { return };
        if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = r {
            found.extend(providers);
        }
        if last && let Some((found, reply)) = self.provider_queries.remove(&id) {
            let _ = reply.send(found.into_iter().collect());
        }
    }

    fn start_leave(&mut self, reply: oneshot::Sender<()>) {
        if self.leaving.is_some() {
            let _ = reply.send(());
            return;
        }
        info!("leaving the cluster");
        self.leaving =
            Some(Leaving { reply: Some(reply), pending: HashSet::new(), deadline: Instant::now() + LEAVE_GRACE });
        self.publish_local();
        let Some(wire) = record::lock(&self.book).get(&self.me.peer).map(|r| r.wire.clone()) else {
            return;
        };
        let targets: Vec<(PeerId, Vec<Multiaddr>)> =
            self.view.active().map(|(p, e)| (*p, e.addrs.clone())).take(64).collect();
        let mut pending = HashSet::new();
        for (peer, addrs) in targets {
            let id = self.swarm.behaviour_mut().ctl.send_request_with_addresses(
                &peer,
                Frame::Ok(CtlRequest::Push { records: vec![wire.clone()] }),
                addrs,
            );
            pending.insert(id);
        }
        if let Some(l) = &mut self.leaving {
            l.pending = pending;
        }
        let r = self.foca.leave_cluster(&mut self.rt);
        self.foca_result(r, None);
        self.drain();
    }

    fn suspects(&self) -> HashSet<(PeerId, u64)> {
        self.foca
            .iter_membership_state()
            .filter(|m| m.state() == foca::State::Suspect)
            .map(|m| (m.id().peer, m.id().generation))
            .collect()
    }

    fn peers(&self) -> Vec<PeerInfo> {
        let now = Instant::now();
        let book = record::lock(&self.book);
        let suspects = self.suspects();
        let mut out = vec![PeerInfo {
            id: self.me.peer.to_string(),
            name: self.local.name.clone(),
            addrs: self.me.addrs.iter().map(|a| a.to_string()).collect(),
            state: if self.leaving.is_some() { PeerState::Left } else { PeerState::Alive },
            capacity: self.local.capacity,
            free: self.local.free,
            labels: self.local.labels.clone(),
            version: shoal_types::VERSION.to_string(),
            generation: self.me.generation,
            is_self: true,
            since_ms: now.duration_since(self.started).as_millis() as u64,
        }];
        for (peer, e) in self.view.iter() {
            let rec = book.get(peer).map(|r| &r.record);
            let state = crate::view::derive_state(e, rec, suspects.contains(&(*peer, e.generation)));
            let since = now.duration_since(e.since);
            out.push(peer_info(*peer, rec, &e.addrs, state, e.generation, since));
        }
        // Peers that left before SWIM told us about them: their signed leaving record is proof.
        for r in book.records().map(|r| &r.record) {
            if r.leaving && r.peer != self.me.peer && self.view.get(&r.peer).is_none() {
                out.push(peer_info(r.peer, Some(r), &[], PeerState::Left, r.generation, Duration::ZERO));
            }
        }
        out.sort_by(|a, b| (!a.is_self, &a.name, &a.id).cmp(&(!b.is_self, &b.name, &b.id)));
        out
    }

    fn status(&self) -> OverlayStatus {
        let mut listen: Vec<String> = self
            .listen_addrs
            .iter()
            .map(|a| {
                let mut a = a.clone();
                a.push(Protocol::P2p(self.me.peer));
                a.to_string()
            })
            .collect();
        listen.sort();
        OverlayStatus {
            peer_id: self.me.peer,
            generation: self.me.generation,
            listen_addrs: listen,
            cluster_size: 1 + self.view.active().count(),
            known_peers: 1 + self.view.len(),
            private_network: self.private,
            uptime: self.started.elapsed(),
            dropped_messages: self.dropped + self.rejected.load(Ordering::Relaxed),
        }
    }
}

/// Whether any error in the chain is the cluster-key check failing (see `behaviour`).
fn mentions_key_mismatch(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.to_string().contains(crate::behaviour::KEY_MISMATCH) {
            return true;
        }
        cur = e.source();
    }
    false
}

/// A row of the peer list from what SWIM and the peer's record say.
fn peer_info(
    peer: PeerId,
    rec: Option<&PeerRecord>,
    swim_addrs: &[Multiaddr],
    state: PeerState,
    generation: u64,
    since: Duration,
) -> PeerInfo {
    let addrs = if swim_addrs.is_empty() { rec.map(|r| r.addrs.as_slice()).unwrap_or_default() } else { swim_addrs };
    PeerInfo {
        id: peer.to_string(),
        name: rec.map(|r| r.name.clone()).unwrap_or_default(),
        addrs: addrs.iter().map(|a| a.to_string()).collect(),
        state,
        capacity: rec.map(|r| r.capacity).unwrap_or_default(),
        free: rec.map(|r| r.free).unwrap_or_default(),
        labels: rec.map(|r| r.labels.clone()).unwrap_or_default(),
        version: rec.map(|r| r.agent_version.clone()).unwrap_or_default(),
        generation,
        is_self: false,
        since_ms: since.as_millis() as u64,
    }
}

pub(crate) fn is_loopback(a: &Multiaddr) -> bool {
    a.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}
