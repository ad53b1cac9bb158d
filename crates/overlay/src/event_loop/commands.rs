//! Commands from the [`crate::Overlay`] handle: queries (peers, status, members, DHT
//! providers), updates of our own record, and the graceful leave.

use super::{Command, EventLoop, Leaving, MAX_EXT_VALUE, Member, Published};
use crate::OverlayStatus;
use crate::record::{self, PeerRecord};
use crate::wire::{CtlRequest, Frame};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::OutboundRequestId;
use libp2p::{Multiaddr, PeerId, kad};
use shoal_types::{PeerInfo, PeerState};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tracing::{info, warn};

/// How long a graceful leave waits for peers to acknowledge.
const LEAVE_GRACE: Duration = Duration::from_secs(2);
/// Members a changed record is sent to straight away (gossip and anti-entropy reach the rest).
const PUSH_FANOUT: usize = 16;

impl EventLoop {
    pub(super) fn on_command(&mut self, c: Command) {
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
            Command::RemoteAddrs(peer, reply) => {
                let addrs = self.connections.get(&peer).map(|c| c.values().cloned().collect()).unwrap_or_default();
                let _ = reply.send(addrs);
            }
            Command::Members(reply) => {
                let book = record::lock(&self.book);
                let members = self
                    .view
                    .active()
                    .map(|(p, e)| {
                        // A record of an earlier generation describes the peer before it
                        // restarted (its replicas then): not its state now.
                        let rec = book.get(p).map(|r| &r.record).filter(|r| r.generation == e.generation);
                        Member {
                            peer: *p,
                            addrs: if e.addrs.is_empty() {
                                rec.map(|r| r.addrs.clone()).unwrap_or_default()
                            } else {
                                e.addrs.clone()
                            },
                            name: rec.map(|r| r.name.clone()).unwrap_or_default(),
                            has_record: rec.is_some(),
                            capacity: rec.map(|r| r.capacity).unwrap_or_default(),
                            labels: rec.map(|r| r.labels.clone()).unwrap_or_default(),
                            ext: rec.map(|r| r.ext.clone()).unwrap_or_default(),
                        }
                    })
                    .collect();
                let _ = reply.send(members);
            }
            Command::Published(key, reply) => {
                let book = record::lock(&self.book);
                let found = book
                    .records()
                    .filter_map(|r| {
                        let value = r.record.ext.get(&key)?.clone();
                        let peer = r.record.peer;
                        let live = self.view.get(&peer).is_some_and(|e| e.up && e.generation == r.record.generation);
                        Some(Published { peer, live, value })
                    })
                    .filter(|p| p.peer != *self.swarm.local_peer_id())
                    .collect();
                let _ = reply.send(found);
            }
            Command::Provide(key) => {
                if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key) {
                    warn!(err = %e, "cannot announce content in the DHT");
                }
            }
            Command::Unprovide(key) => self.swarm.behaviour_mut().kad.stop_providing(&key),
            Command::SetExt(entries, push) => {
                let mut changed = false;
                for (key, value) in entries {
                    // A value that would push the signed record over its bound is refused
                    // here, so it cannot freeze every later update of this peer's record.
                    if let Some(v) = &value
                        && serde_json::to_vec(v).map_or(usize::MAX, |b| b.len()) > MAX_EXT_VALUE
                    {
                        warn!(%key, "record extension too large; not published");
                        continue;
                    }
                    changed |= match value {
                        Some(v) => self.local.ext.insert(key, v.clone()).as_ref() != Some(&v),
                        None => self.local.ext.remove(&key).is_some(),
                    };
                }
                if changed {
                    self.publish_local();
                    if push {
                        self.push_local(PUSH_FANOUT);
                    }
                }
            }
            Command::FindProviders(key, reply) => {
                let id = self.swarm.behaviour_mut().kad.get_providers(key);
                self.provider_queries.insert(id, (HashSet::new(), reply));
            }
        }
    }

    pub(super) fn on_kad_progress(&mut self, id: kad::QueryId, result: kad::QueryResult, last: bool) {
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
        let pending = self.push_local(64);
        if let Some(l) = &mut self.leaving {
            l.pending = pending;
        }
        let r = self.foca.leave_cluster(&mut self.rt);
        self.foca_result(r, None);
        self.drain();
    }

    /// Sends our current record straight to up to `fanout` live members (random ones when
    /// there are more); the requests to wait for.
    fn push_local(&mut self, fanout: usize) -> HashSet<OutboundRequestId> {
        use rand::seq::IteratorRandom;
        let mut pending = HashSet::new();
        let Some(wire) = record::lock(&self.book).get(&self.me.peer).map(|r| r.wire.clone()) else {
            return pending;
        };
        let targets: Vec<(PeerId, Vec<Multiaddr>)> =
            self.view.active().map(|(p, e)| (*p, e.addrs.clone())).sample(&mut rand::rng(), fanout);
        for (peer, addrs) in targets {
            let id = self.swarm.behaviour_mut().ctl.send_request_with_addresses(
                &peer,
                Frame::Ok(CtlRequest::Push { records: vec![wire.clone()] }),
                addrs,
            );
            pending.insert(id);
        }
        pending
    }

    pub(super) fn suspects(&self) -> HashSet<(PeerId, u64)> {
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
            remembered_peers: self.known.len() + self.bootstrap.len(),
            private_network: self.private,
            uptime: self.started.elapsed(),
            dropped_messages: self.dropped + self.rejected.load(Ordering::Relaxed),
        }
    }
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
