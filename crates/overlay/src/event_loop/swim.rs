//! SWIM plumbing of the event loop: foca's output (packets, timers, notifications) and the
//! `/shoal/swim/1` packets coming in.

use super::EventLoop;
use crate::record;
use crate::swim::SwimId;
use crate::view::ViewChange;
use crate::wire::Frame;
use foca::OwnedNotification;
use libp2p::PeerId;
use libp2p::request_response;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

impl EventLoop {
    pub(super) fn drain(&mut self) {
        let mut changed_view = false;
        loop {
            let mut progressed = false;
            while let Some((to, data)) = self.rt.to_send() {
                progressed = true;
                if to.peer == self.me.peer {
                    continue;
                }
                shoal_metrics::get().swim_packets_sent.inc();
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
                changed_view = true;
                self.on_notification(n);
            }
            let changed = record::lock(&self.book).take_changed();
            for p in changed {
                progressed = true;
                changed_view = true;
                self.on_record_changed(p);
            }
            if !progressed {
                break;
            }
        }
        if changed_view {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    pub(super) fn foca_result(&mut self, r: Result<(), foca::Error>, from: Option<PeerId>) {
        let Err(e) = r else { return };
        match (&e, from) {
            (foca::Error::IncompleteProbeCycle, _) => debug!("probe cycle overran its period"),
            (_, Some(peer)) => self.bad_message(peer, "swim", &e),
            (_, None) => warn!(err = %e, "membership protocol error"),
        }
    }

    pub(super) fn bad_message(&mut self, peer: PeerId, protocol: &str, err: &dyn std::fmt::Display) {
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
                let name = self.name_of(&peer);
                info!(ev = "peer.joined", %peer, name, generation, "peer alive");
                record::lock(&self.book).welcome(&peer);
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
                let name = self.name_of(&peer);
                info!(ev = "peer.restarted", %peer, name, generation, "peer restarted");
                self.dirty.insert(peer);
                self.need_record(peer, generation);
            }
            Some(ViewChange::Down { peer, generation }) => {
                let name = self.name_of(&peer);
                record::lock(&self.book).farewell(&peer);
                let left = record::lock(&self.book)
                    .get(&peer)
                    .is_some_and(|r| r.record.leaving && r.record.generation == generation);
                if left {
                    info!(ev = "peer.left", %peer, name, generation, "peer left");
                } else {
                    warn!(ev = "peer.dead", %peer, name, generation, "peer dead");
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

    /// A peer's name from its record (empty until the record has arrived).
    pub(super) fn name_of(&self, peer: &PeerId) -> String {
        record::lock(&self.book).get(peer).map(|r| r.record.name.clone()).unwrap_or_default()
    }

    pub(super) fn on_swim_event(&mut self, ev: request_response::Event<Frame<Vec<u8>>, ()>) {
        use request_response::{Event, Message};
        match ev {
            Event::Message { peer, message: Message::Request { request, channel, .. }, .. } => match request {
                Frame::Ok(packet) => {
                    shoal_metrics::get().swim_packets_received.inc();
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
        let book = self.book.clone();
        let signed =
            move |p: &PeerId| record::lock(&book).get(p).map(|r| (r.record.generation, r.record.addrs.clone()));
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let vetted = match crate::swim::vet_packet(data, &self.me, peer, &signed, now_ms) {
            Ok(v) => v,
            Err(e) => return self.bad_message(peer, "swim", &e),
        };
        let data = match &vetted {
            Some((clean, dropped)) => {
                // Not a refused message: an honest peer can relay a suspicion that reached it
                // before the suspect's record reached us. The rest of the packet still counts.
                debug!(%peer, dropped, "dropped member updates beyond what signed records show");
                clean.as_slice()
            }
            None => data,
        };
        self.last_swim_rx = Instant::now();
        let r = self.foca.handle_data(data, &mut self.rt);
        self.foca_result(r, Some(peer));
        self.drain();
    }
}
