//! Joining the cluster: announcing to `--join` addresses and remembered peers, and reporting
//! addresses that cannot be reached.

use super::{EventLoop, peer_id_of};
use crate::peerstore::KnownPeer;
use crate::swim::{SwimId, rejoin_targets};
use libp2p::Multiaddr;
use libp2p::swarm::dial_opts::DialOpts;
use rand::seq::IndexedRandom;
use std::time::Instant;
use tracing::warn;

impl EventLoop {
    pub(super) fn kick_joins(&mut self) {
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
    pub(super) fn announce_to_known(&mut self) {
        let targets = rejoin_targets(self.foca.iter_membership_state(), self.foca.identity(), &mut rand::rng());
        for t in targets {
            self.announce(t);
        }
    }

    pub(super) fn announce(&mut self, dst: SwimId) {
        let r = self.foca.announce(dst, &mut self.rt);
        self.foca_result(r, None);
        self.drain();
    }

    pub(super) fn dial_failed(&mut self, addr: &Multiaddr, err: &(dyn std::error::Error + 'static)) {
        if let Some(suppressed) = self.dial_log.check(Instant::now()) {
            if mentions_key_mismatch(err) {
                warn!(%addr, suppressed, "cannot join through this address: the peer there uses a different cluster key");
            } else {
                warn!(%addr, err = %err, suppressed, "cannot reach join address; is a peer running there, and does it use the same cluster key?");
            }
        }
    }
}

/// Whether any error in the chain is the cluster-key check failing (see `behaviour`).
pub(super) fn mentions_key_mismatch(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.to_string().contains(crate::behaviour::KEY_MISMATCH) {
            return true;
        }
        cur = e.source();
    }
    false
}
