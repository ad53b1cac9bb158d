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
        Some(SwimId { generation: self.generation.saturating_add(1), ..self.clone() })
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

/// What [`vet_packet`] needs to know about a member.
pub trait Generations {
    /// The generation and addresses in the member's signed record, if one is held.
    fn signed(&self, peer: &PeerId) -> Option<(u64, Vec<Multiaddr>)>;
}

impl<F: Fn(&PeerId) -> Option<(u64, Vec<Multiaddr>)>> Generations for F {
    fn signed(&self, peer: &PeerId) -> Option<(u64, Vec<Multiaddr>)> {
        self(peer)
    }
}

/// How many rejoins (each one generation) an `Alive` about a peer may be ahead of its signed
/// record: the record follows a rejoin within a gossip round or two.
pub const MAX_GENERATIONS_AHEAD_OF_RECORD: u64 = 16;
/// How far ahead of this peer's clock the generation of a peer whose record is not held yet
/// may be: generations are the Unix milliseconds of an agent's start (plus one per rejoin).
pub const MAX_GENERATION_AHEAD_MS: u64 = 60_000;

/// Checks a SWIM packet from `sender` against what peers have signed, and drops the member
/// updates in it that claim more than SWIM's own probing can know. What the sender says about
/// itself passes (the connection proves who it is). About this peer (`me`), any generation it
/// has not reached is dropped. About a third peer whose signed record is held: an older
/// generation passes (foca ignores it anyway); the record's generation passes only with the
/// record's addresses; a newer one only as `Alive` and at most
/// [`MAX_GENERATIONS_AHEAD_OF_RECORD`] ahead (a rejoin the record has not caught up with). About
/// a peer whose record is not held yet (a joiner being spread): only `Alive`, at most
/// [`MAX_GENERATION_AHEAD_MS`] ahead of `now_ms`. So nobody can declare another peer dead at a
/// generation it never had (one forged `Down` with a huge generation would otherwise evict it
/// for as long as dead members are remembered), nor make everyone probe a made-up identity for
/// a known peer (an `Alive` with other addresses or a far newer generation wins foca's
/// conflict resolution).
///
/// Returns `Ok(None)` when the packet can go to foca as it is, `Ok(Some((bytes, dropped)))`
/// for the packet without the dropped updates, `Err` when the packet claims another sender or
/// does not decode.
pub fn vet_packet(
    data: &[u8],
    me: &SwimId,
    sender: PeerId,
    records: &impl Generations,
    now_ms: u64,
) -> Result<Option<(Vec<u8>, usize)>, String> {
    use bytes::{Buf, BufMut};
    use foca::{Codec, PostcardCodec};
    let mut buf = data;
    let header = Codec::<SwimId>::decode_header(&mut PostcardCodec, &mut buf).map_err(|e| e.to_string())?;
    if header.src.peer != sender {
        return Err(format!("packet claims to come from {}", header.src.peer));
    }
    if buf.remaining() < 2 || header.message == foca::Message::Broadcast {
        return Ok(None);
    }
    let count = buf.get_u16();
    // Each member takes at least a few bytes: a count beyond what is left is a lie.
    let mut kept = Vec::with_capacity((count as usize).min(buf.remaining() / 8));
    let mut dropped = 0;
    for _ in 0..count {
        let m = Codec::<SwimId>::decode_member(&mut PostcardCodec, &mut buf).map_err(|e| e.to_string())?;
        let id = m.id();
        let ok = if id.peer == sender {
            true
        } else if id.peer == me.peer {
            id.generation <= me.generation
        } else {
            let alive = m.state() == foca::State::Alive;
            match records.signed(&id.peer) {
                Some((g, _)) if id.generation < g => true,
                Some((g, addrs)) if id.generation == g => id.addrs == addrs,
                // A rejoin (+1 each) or a restart (a new start time, same addresses) that the
                // record has not caught up with.
                Some((g, addrs)) => {
                    alive
                        && (id.generation - g <= MAX_GENERATIONS_AHEAD_OF_RECORD
                            || (id.addrs == addrs && id.generation <= now_ms.saturating_add(MAX_GENERATION_AHEAD_MS)))
                }
                None => alive && id.generation <= now_ms.saturating_add(MAX_GENERATION_AHEAD_MS),
            }
        };
        if ok {
            kept.push(m);
        } else {
            dropped += 1;
        }
    }
    if dropped == 0 {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(data.len());
    Codec::<SwimId>::encode_header(&mut PostcardCodec, &header, &mut out).map_err(|e| e.to_string())?;
    out.put_u16(kept.len() as u16);
    for m in &kept {
        Codec::<SwimId>::encode_member(&mut PostcardCodec, m, &mut out).map_err(|e| e.to_string())?;
    }
    out.extend_from_slice(buf);
    Ok(Some((out, dropped)))
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

    fn packet(src: &SwimId, updates: &[foca::Member<SwimId>], tail: &[u8]) -> Vec<u8> {
        use bytes::BufMut;
        use foca::{Codec, Header, Message, PostcardCodec};
        let h = Header { src: src.clone(), src_incarnation: 0, dst: src.clone(), message: Message::Gossip };
        let mut out = Vec::new();
        Codec::<SwimId>::encode_header(&mut PostcardCodec, &h, &mut out).unwrap();
        out.put_u16(updates.len() as u16);
        for m in updates {
            Codec::<SwimId>::encode_member(&mut PostcardCodec, m, &mut out).unwrap();
        }
        out.extend_from_slice(tail);
        out
    }

    #[test]
    fn forged_generations_and_third_party_claims_are_dropped() {
        use foca::{Codec, Member, PostcardCodec, State};
        let now = 1_800_000_000_000u64;
        let addr: Multiaddr = "/ip4/10.0.0.9/tcp/4100".parse().unwrap();
        let id = |g| SwimId { peer: PeerId::random(), generation: g, addrs: vec![] };
        let (me, sender, stranger) = (id(now - 10), id(now - 5), id(now - 7));
        let known = SwimId { addrs: vec![addr.clone()], ..id(now - 100) };
        let (known_peer, known_addrs) = (known.peer, known.addrs.clone());
        let records = move |p: &PeerId| (*p == known_peer).then(|| (now - 100, known_addrs.clone()));
        let at = |who: &SwimId, g: u64, state| Member::new(SwimId { generation: g, ..who.clone() }, 0, state);
        let honest = [
            at(&known, now - 100, State::Down),  // SWIM's own conclusion at its signed generation
            at(&known, now - 200, State::Alive), // old news; foca ignores it
            at(&sender, now - 5, State::Down),   // the sender leaving
            at(&sender, now + 3_600_000, State::Alive), // the sender's own (fast-clock) generation
            at(&me, now - 10, State::Suspect),   // we are suspected: foca refutes
            at(&known, now - 98, State::Alive),  // a rejoin its record has not caught up with
            at(&stranger, now - 7, State::Alive), // a joiner being spread
            at(&known, now + 1, State::Alive),   // a restart at its own addresses
        ];
        let p = packet(&sender, &honest, b"records");
        assert_eq!(vet_packet(&p, &me, sender.peer, &records, now), Ok(None));

        let other_addrs = Member::new(
            SwimId { addrs: vec!["/ip4/10.6.6.6/tcp/1".parse().unwrap()], ..known.clone() },
            0,
            State::Alive,
        );
        let forged = [
            at(&known, u64::MAX, State::Down),
            at(&known, now - 50, State::Down),            // newer than its record says
            at(&known, now + 3_600_000, State::Alive),    // far past its record and the clock
            other_addrs,                                  // its generation, but other addresses
            at(&me, now - 9, State::Down),                // a generation of ours we never had
            at(&stranger, now - 7, State::Down),          // the death of a peer whose record is unknown
            at(&stranger, now + 3_600_000, State::Alive), // a joiner from the far future
        ];
        let mixed: Vec<_> = honest.iter().chain(forged.iter()).cloned().collect();
        let p = packet(&sender, &mixed, b"records");
        let (clean, dropped) = vet_packet(&p, &me, sender.peer, &records, now).unwrap().expect("rewritten");
        assert_eq!(dropped, forged.len());
        assert_eq!(clean, packet(&sender, &honest, b"records"), "the honest updates and the tail are kept");
        let mut buf = clean.as_slice();
        let h = Codec::<SwimId>::decode_header(&mut PostcardCodec, &mut buf).unwrap();
        assert_eq!(h.src, sender);

        assert!(vet_packet(&p, &me, PeerId::random(), &records, now).is_err(), "another sender");
        // A count far beyond the bytes: an error, not a huge allocation.
        let mut lying = packet(&sender, &[], b"");
        let n = lying.len();
        lying[n - 2..].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(vet_packet(&lying, &me, sender.peer, &records, now).is_err());
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
