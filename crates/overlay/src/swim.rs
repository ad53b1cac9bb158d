//! SWIM membership through foca: the identity type and the protocol settings.
//!
//! Foca runs the SWIM protocol (direct and indirect probes, suspicion, infection-style
//! dissemination, periodic gossip and announces). Shoal gives it:
//! - [`SwimId`]: peer id + generation + listen addresses. The address is the peer id, so a
//!   restarted peer (same id, higher generation) replaces its old self everywhere
//!   (`win_addr_conflict`), and a peer declared dead during a partition renews itself with the
//!   next generation and rejoins as soon as a message crosses (`renew`).
//!   Carrying the addresses means anyone who hears of a member can probe it at once.
//! - [`swim_config`]: Shoal's defaults, derived from cluster size the way memberlist does,
//!   but with a 500 ms probe period so a killed peer is marked dead in about 2-3 s.

use foca::{Config, Identity, Member, PeriodicParams};
use libp2p::{Multiaddr, PeerId};
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

/// A member as SWIM knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SwimId {
    pub peer: PeerId,
    pub generation: u64,
    pub addrs: Vec<Multiaddr>,
}

impl Identity for SwimId {
    type Addr = PeerId;

    fn renew(&self) -> Option<Self> {
        Some(SwimId { generation: self.generation + 1, ..self.clone() })
    }

    fn addr(&self) -> PeerId {
        self.peer
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // Newer generation wins; equal generations never carry different addresses from an
        // honest peer, but break the tie deterministically anyway.
        (self.generation, addrs_key(&self.addrs)) > (adversary.generation, addrs_key(&adversary.addrs))
    }
}

fn addrs_key(addrs: &[Multiaddr]) -> Vec<Vec<u8>> {
    addrs.iter().map(|a| a.to_vec()).collect()
}

/// Timing knobs of the failure detector.
#[derive(Debug, Clone, PartialEq)]
pub struct SwimTuning {
    /// How often each peer probes one other.
    pub probe_period: Duration,
    /// How long a direct probe may take before indirect probes are sent.
    pub probe_rtt: Duration,
    /// Suspicion lasts `alpha * log10(max(n, 10)) * probe_period` before a peer is declared
    /// dead (memberlist uses alpha = 4 with a 1 s period).
    pub suspicion_alpha: f64,
    /// How often to retry members believed dead (heals partitions).
    pub announce_to_dead_every: Duration,
}

impl Default for SwimTuning {
    fn default() -> Self {
        SwimTuning {
            probe_period: Duration::from_millis(500),
            probe_rtt: Duration::from_millis(200),
            suspicion_alpha: 3.0,
            announce_to_dead_every: Duration::from_secs(3),
        }
    }
}

impl SwimTuning {
    /// How long a suspect has to refute before it is declared dead, at cluster size `n`.
    pub fn suspicion(&self, n: usize) -> Duration {
        let factor = (n.max(10) as f64).log10() * self.suspicion_alpha;
        self.probe_period.mul_f64(factor)
    }
}

/// Foca's configuration for a cluster of about `n` peers.
pub fn swim_config(n: usize, t: &SwimTuning) -> Config {
    let n32 = std::num::NonZeroU32::new(n.clamp(1, u32::MAX as usize) as u32).unwrap_or(std::num::NonZeroU32::MIN);
    let lan = Config::new_lan(n32);
    let nz = |v: usize| NonZeroUsize::new(v).unwrap_or(NonZeroUsize::MIN);
    Config {
        probe_period: t.probe_period,
        probe_rtt: t.probe_rtt,
        num_indirect_probes: nz(3),
        // Retransmit each update a few more times than memberlist: our transport is reliable
        // streams, so extra copies cost bytes, not loss.
        max_transmissions: lan.max_transmissions.checked_add(2).unwrap_or(NonZeroU8::MAX),
        suspect_to_down_after: t.suspicion(n),
        remove_down_after: Some(Duration::from_secs(24 * 3600)),
        max_packet_size: nz(crate::wire::MAX_SWIM_PACKET),
        notify_down_members: true,
        // Announces are answered with a feed of members (up to a whole packet): every 30 s,
        // as foca's LAN default, keeps that under ~2 KB/s per peer even at 10,000 peers.
        periodic_announce: Some(PeriodicParams { frequency: Duration::from_secs(30), num_members: nz(1) }),
        periodic_announce_to_down_members: Some(PeriodicParams {
            frequency: t.announce_to_dead_every,
            num_members: nz(2),
        }),
        // Only sent when there is something new; faster spreading of a suspicion or a death
        // shortens failover (every survivor starts its own suspicion timer sooner).
        periodic_gossip: Some(PeriodicParams { frequency: Duration::from_millis(100), num_members: nz(3) }),
    }
}

/// How many members to announce to after a rejoin or when SWIM has gone quiet.
pub const REJOIN_FANOUT: usize = 3;

/// Whom to announce to after foca renewed our identity, or when no SWIM packet has arrived for
/// a while although we believe we have members.
///
/// Why this is needed: when a partition heals, every peer learns at about the same moment that
/// the other side declared it dead, and renews its identity. Foca then resets to
/// "disconnected" and gossips to the *old* identities of peers that have renewed too, which
/// drop those messages as not addressed to them; with no timers running, the whole cluster
/// would fall silent for good (the simulator shows it). An announce is accepted by whatever
/// identity now holds the address, so announcing to a few known members, in any state, always
/// restarts the conversation.
pub fn rejoin_targets<'a, T: Identity + 'a>(
    members: impl Iterator<Item = &'a Member<T>>,
    me: &T,
    rng: &mut impl rand::Rng,
) -> Vec<T> {
    let all: Vec<&T> = members.map(|m| m.id()).filter(|id| id.addr() != me.addr()).collect();
    all.sample(rng, REJOIN_FANOUT).map(|id| (*id).clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_generation_wins_and_renew_bumps() {
        let peer = PeerId::random();
        let a = SwimId { peer, generation: 5, addrs: vec![] };
        let b = a.renew().unwrap();
        assert_eq!(b.generation, 6);
        assert!(b.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&b));
        assert_eq!(a.addr(), b.addr());
    }

    #[test]
    fn suspicion_scales_with_cluster_size() {
        let t = SwimTuning::default();
        assert_eq!(t.suspicion(5), Duration::from_millis(1500));
        assert!(t.suspicion(10_000) > t.suspicion(100));
        let c = swim_config(5, &t);
        assert_eq!(c.suspect_to_down_after, Duration::from_millis(1500));
    }
}
