//! The overlay actor: one task owns the libp2p swarm, foca and the record book.
//!
//! Messages it takes ([`Command`], from the [`crate::Overlay`] handle): `Peers`, `Status`,
//! `Members`, `UpdateLocal` (new capacity/free/labels to publish), `SetExt` (other subsystems'
//! per-peer state in our record, optionally pushed to members at once), DHT provider
//! commands, `Leave` (graceful shutdown). It bumps a watch channel whenever membership or a
//! record changes, so subsystems react at once instead of polling.
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
//!
//! This file holds the actor's state, its main loop and the swarm-event dispatch; the handlers
//! live next to it: `swim` (foca plumbing), `records` (our record, anti-entropy), `joining`,
//! `housekeeping` and `commands`.

mod commands;
mod housekeeping;
mod joining;
mod records;
mod swim;

use crate::behaviour::{Behaviour, BehaviourEvent};
use crate::peerstore::{KnownPeer, PeerStore};
use crate::ratelimit::LogLimiter;
use crate::record::{MAX_ADDRS, RecordHandler, SharedBook};
use crate::swim::{SwimId, SwimTuning, swim_config};
use crate::view::MemberView;
use crate::{LocalInfo, OverlayStatus};
use foca::{AccumulatingRuntime, Foca, PostcardCodec, Timer};
use futures::StreamExt;
use joining::mentions_key_mismatch;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::OutboundRequestId;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad, mdns};
use rand::rngs::StdRng;
use shoal_types::PeerInfo;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::time::DelayQueue;
use tracing::{debug, info, warn};

pub(crate) type SwimFoca = Foca<SwimId, PostcardCodec, StdRng, RecordHandler>;

/// Requests the handle sends to the actor.
pub(crate) enum Command {
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    Status(oneshot::Sender<OverlayStatus>),
    UpdateLocal(LocalInfo, oneshot::Sender<()>),
    Leave(oneshot::Sender<()>),
    /// Live members with their addresses (this peer excluded).
    Members(oneshot::Sender<Vec<Member>>),
    /// One `ext` key of every record this peer holds, live or not (this peer excluded).
    Published(String, oneshot::Sender<Vec<Published>>),
    /// Announce in the DHT that we hold `key`.
    Provide(kad::RecordKey),
    /// Stop announcing `key`.
    Unprovide(kad::RecordKey),
    /// Who the DHT says holds `key`.
    FindProviders(kad::RecordKey, oneshot::Sender<Vec<PeerId>>),
    /// Where `peer`'s open connections come from (the addresses the transport saw, not the
    /// ones the peer advertises).
    RemoteAddrs(PeerId, oneshot::Sender<Vec<Multiaddr>>),
    /// Sets keys of this peer's published per-peer state (`None` removes one); with `push`,
    /// the new record is also sent straight to live members, not only gossiped.
    SetExt(Vec<(String, Option<serde_json::Value>)>, bool),
}

/// A live member as other subsystems need it.
#[derive(Debug, Clone)]
pub struct Member {
    pub peer: PeerId,
    pub addrs: Vec<Multiaddr>,
    pub name: String,
    /// Whether its signed record for its current generation has arrived (until then name,
    /// empty, not known to be empty).
    pub has_record: bool,
    /// What it offers, from its record.
    pub capacity: shoal_types::Resources,
    /// Its labels, from its record.
    pub labels: shoal_types::Labels,
    /// Per-peer state other subsystems publish in their record (`LocalInfo::ext`).
    pub ext: std::collections::BTreeMap<String, serde_json::Value>,
}

impl Member {
    /// Its name, or its id while its record has not said (or says no name).
    pub fn name_or_id(&self) -> String {
        if self.name.is_empty() { self.peer.to_string() } else { self.name.clone() }
    }
}

/// One peer's value of an `ext` key, whatever the peer's state.
#[derive(Debug, Clone)]
pub struct Published {
    pub peer: PeerId,
    /// SWIM considers the peer active and the record is of its current generation.
    pub live: bool,
    pub value: serde_json::Value,
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
    /// The peers suspected at the last housekeeping (for `peer.suspect` events).
    pub(crate) suspected: HashSet<(PeerId, u64)>,
    /// Each connected peer's open connections and the remote address of each.
    pub(crate) connections: HashMap<PeerId, HashMap<ConnectionId, Multiaddr>>,
    pub(crate) store: PeerStore,
    pub(crate) dirty: HashSet<PeerId>,
    pub(crate) forget: Vec<PeerId>,
    /// Records of peers SWIM did not know at the last prune: forgotten if still so at the next.
    pub(crate) orphans: std::collections::HashSet<PeerId>,
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
    /// Bumped whenever membership or a record changes ([`crate::Overlay::changes`]).
    pub(crate) changes: Arc<tokio::sync::watch::Sender<u64>>,
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
    pub(crate) changes: Arc<tokio::sync::watch::Sender<u64>>,
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
        // Our own record is never evicted from a full book.
        crate::record::lock(&book).welcome(&p.me.peer);
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
            connections: HashMap::new(),
            suspected: HashSet::new(),
            store: p.store,
            dirty: HashSet::new(),
            forget: Vec::new(),
            orphans: Default::default(),
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
            changes: p.changes,
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
            SwarmEvent::ConnectionClosed { peer_id, connection_id, .. } => {
                if let Some(open) = self.connections.get_mut(&peer_id) {
                    open.remove(&connection_id);
                    if open.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                self.connections
                    .entry(peer_id)
                    .or_default()
                    .insert(connection_id, endpoint.get_remote_address().clone());
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
}

pub(crate) fn is_loopback(a: &Multiaddr) -> bool {
    a.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}
