//! Records in the event loop: signing and gossiping our own, and the `/shoal/ctl/1`
//! push-pull anti-entropy that fills in everyone else's.

use super::EventLoop;
use crate::record::{self, PeerRecord, SignedRecord, WireRecord};
use crate::wire::{CtlRequest, CtlResponse, Frame};
use libp2p::PeerId;
use libp2p::request_response;
use rand::seq::IndexedRandom;
use std::time::{Duration, Instant};
use tracing::{debug, error};

/// How many bytes of records one sync response carries at most.
const SYNC_BUDGET: usize = 2 * 1024 * 1024;
/// Minimum time between two syncs we start with the same peer.
const SYNC_COOLDOWN: Duration = Duration::from_millis(500);

impl EventLoop {
    pub(super) fn publish_local(&mut self) {
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

    // ---- anti-entropy --------------------------------------------------------------------

    pub(super) fn request_sync(&mut self, peer: PeerId) {
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

    pub(super) fn anti_entropy(&mut self) {
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

    pub(super) fn on_ctl_event(&mut self, ev: request_response::Event<Frame<CtlRequest>, CtlResponse>) {
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
}
