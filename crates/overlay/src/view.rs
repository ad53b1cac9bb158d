//! The membership view: SWIM's verdicts combined with peer records into the states users see.
//!
//! A pure state machine: [`MemberView::apply`] takes one foca notification and `now`, and
//! [`MemberView::state_of`] derives a peer's [`PeerState`]:
//! - `left` if the peer's record for its current generation says it is leaving;
//! - otherwise `dead` if SWIM declared that generation down;
//! - otherwise `suspect` if SWIM currently suspects it, else `alive`.
//!
//! Generations only move forward: a notification about an older run of a peer is ignored, and
//! a newer run (a restart, or a rejoin after a partition) replaces the old one and is alive.

use crate::record::PeerRecord;
use crate::swim::SwimId;
use foca::OwnedNotification;
use libp2p::{Multiaddr, PeerId};
use shoal_types::PeerState;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What the view knows about one peer from SWIM.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewEntry {
    pub generation: u64,
    /// SWIM considers this generation active (alive or suspect).
    pub up: bool,
    /// When `up` or `generation` last changed.
    pub since: Instant,
    pub addrs: Vec<Multiaddr>,
}

/// A change worth logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewChange {
    Up { peer: PeerId, generation: u64 },
    Down { peer: PeerId, generation: u64 },
    Restarted { peer: PeerId, generation: u64 },
}

/// Every other peer SWIM has told us about.
#[derive(Debug, Default, Clone)]
pub struct MemberView {
    entries: HashMap<PeerId, ViewEntry>,
}

impl MemberView {
    /// Applies one foca notification.
    pub fn apply(&mut self, n: &OwnedNotification<SwimId>, now: Instant) -> Option<ViewChange> {
        match n {
            OwnedNotification::MemberUp(id) => self.set(id, true, now),
            OwnedNotification::MemberDown(id) => self.set(id, false, now),
            OwnedNotification::Rename(_, new) => {
                let e = self.entries.get_mut(&new.peer)?;
                if new.generation <= e.generation {
                    return None;
                }
                e.generation = new.generation;
                e.addrs = new.addrs.clone();
                e.since = now;
                Some(ViewChange::Restarted { peer: new.peer, generation: new.generation })
            }
            _ => None,
        }
    }

    fn set(&mut self, id: &SwimId, up: bool, now: Instant) -> Option<ViewChange> {
        let e = self.entries.entry(id.peer).or_insert_with(|| ViewEntry {
            generation: id.generation,
            up: !up,
            since: now,
            addrs: id.addrs.clone(),
        });
        if id.generation < e.generation || (id.generation == e.generation && e.up == up) {
            return None;
        }
        e.generation = id.generation;
        e.up = up;
        e.since = now;
        e.addrs = id.addrs.clone();
        Some(if up {
            ViewChange::Up { peer: id.peer, generation: id.generation }
        } else {
            ViewChange::Down { peer: id.peer, generation: id.generation }
        })
    }

    /// The state users see, given the peer's latest record and whether SWIM suspects it now.
    pub fn state_of(&self, peer: &PeerId, record: Option<&PeerRecord>, suspect: bool) -> Option<PeerState> {
        let e = self.entries.get(peer)?;
        Some(derive_state(e, record, suspect))
    }

    pub fn get(&self, peer: &PeerId) -> Option<&ViewEntry> {
        self.entries.get(peer)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&PeerId, &ViewEntry)> {
        self.entries.iter()
    }

    /// Peers SWIM considers active.
    pub fn active(&self) -> impl Iterator<Item = (&PeerId, &ViewEntry)> {
        self.entries.iter().filter(|(_, e)| e.up)
    }

    /// Forgets peers that have been down longer than `after`; returns them.
    pub fn prune(&mut self, now: Instant, after: Duration) -> Vec<PeerId> {
        let gone: Vec<PeerId> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.up && now.saturating_duration_since(e.since) > after)
            .map(|(p, _)| *p)
            .collect();
        for p in &gone {
            self.entries.remove(p);
        }
        gone
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The state rules, apart so they can be tested alone.
pub fn derive_state(e: &ViewEntry, record: Option<&PeerRecord>, suspect: bool) -> PeerState {
    let leaving = record.is_some_and(|r| r.leaving && r.generation == e.generation);
    if leaving {
        PeerState::Left
    } else if !e.up {
        PeerState::Dead
    } else if suspect {
        PeerState::Suspect
    } else {
        PeerState::Alive
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(peer: PeerId, generation: u64) -> SwimId {
        SwimId { peer, generation, addrs: vec![] }
    }

    fn rec(peer: PeerId, generation: u64, leaving: bool) -> PeerRecord {
        PeerRecord {
            peer,
            generation,
            version: 1,
            name: String::new(),
            addrs: vec![],
            labels: Default::default(),
            capacity: Default::default(),
            free: Default::default(),
            agent_version: String::new(),
            leaving,
            ext: Default::default(),
        }
    }

    #[test]
    fn kill_restart_leave() {
        let p = PeerId::random();
        let t = Instant::now();
        let mut v = MemberView::default();
        v.apply(&OwnedNotification::MemberUp(id(p, 1)), t);
        assert_eq!(v.state_of(&p, None, false), Some(PeerState::Alive));
        assert_eq!(v.state_of(&p, None, true), Some(PeerState::Suspect));
        v.apply(&OwnedNotification::MemberDown(id(p, 1)), t);
        assert_eq!(v.state_of(&p, None, false), Some(PeerState::Dead));
        // Restart: foca renames the down identity to the new one, then reports it up.
        v.apply(&OwnedNotification::Rename(id(p, 1), id(p, 2)), t);
        v.apply(&OwnedNotification::MemberUp(id(p, 2)), t);
        assert_eq!(v.state_of(&p, None, false), Some(PeerState::Alive));
        assert_eq!(v.get(&p).unwrap().generation, 2);
        // A late notification about the old run changes nothing.
        assert_eq!(v.apply(&OwnedNotification::MemberDown(id(p, 1)), t), None);
        assert_eq!(v.state_of(&p, None, false), Some(PeerState::Alive));
        // Leaving record for the current run: left, whether or not SWIM saw it go yet.
        let leaving = rec(p, 2, true);
        assert_eq!(v.state_of(&p, Some(&leaving), false), Some(PeerState::Left));
        v.apply(&OwnedNotification::MemberDown(id(p, 2)), t);
        assert_eq!(v.state_of(&p, Some(&leaving), false), Some(PeerState::Left));
        // An old leaving record does not make a new run "left".
        v.apply(&OwnedNotification::MemberUp(id(p, 3)), t);
        assert_eq!(v.state_of(&p, Some(&leaving), false), Some(PeerState::Alive));
    }

    #[test]
    fn prune_forgets_long_dead_peers_only() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let mut v = MemberView::default();
        v.apply(&OwnedNotification::MemberUp(id(a, 1)), t0);
        v.apply(&OwnedNotification::MemberUp(id(b, 1)), t0);
        v.apply(&OwnedNotification::MemberDown(id(b, 1)), t0);
        let later = t0 + Duration::from_secs(100);
        assert_eq!(v.prune(later, Duration::from_secs(10)), vec![b]);
        assert!(v.get(&a).is_some() && v.get(&b).is_none());
    }

    #[derive(Debug, Clone)]
    enum Ev {
        Up(usize, u64),
        Down(usize, u64),
        Rename(usize, u64),
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            (0..3usize, 0..5u64).prop_map(|(p, g)| Ev::Up(p, g)),
            (0..3usize, 0..5u64).prop_map(|(p, g)| Ev::Down(p, g)),
            (0..3usize, 0..5u64).prop_map(|(p, g)| Ev::Rename(p, g)),
        ]
    }

    proptest! {
        // Generations never go backwards, and the last word about the newest generation decides
        // liveness, whatever order notifications arrive in.
        #[test]
        fn generations_are_monotonic_and_newest_news_wins(evs in proptest::collection::vec(ev(), 1..60)) {
            let peers: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
            let mut v = MemberView::default();
            let mut model: HashMap<usize, (u64, bool)> = HashMap::new();
            let t = Instant::now();
            for e in &evs {
                let before: HashMap<PeerId, u64> = v.iter().map(|(p, e)| (*p, e.generation)).collect();
                match *e {
                    Ev::Up(p, g) | Ev::Down(p, g) => {
                        let up = matches!(e, Ev::Up(..));
                        let n = if up { OwnedNotification::MemberUp(id(peers[p], g)) } else { OwnedNotification::MemberDown(id(peers[p], g)) };
                        v.apply(&n, t);
                        let m = model.entry(p).or_insert((g, up));
                        if g >= m.0 { *m = (g, up); }
                    }
                    Ev::Rename(p, g) => {
                        v.apply(&OwnedNotification::Rename(id(peers[p], 0), id(peers[p], g)), t);
                        if let Some(m) = model.get_mut(&p) && g > m.0 { m.0 = g; }
                    }
                }
                for (p, e) in v.iter() {
                    prop_assert!(e.generation >= before.get(p).copied().unwrap_or(0));
                }
            }
            for (i, p) in peers.iter().enumerate() {
                match (model.get(&i), v.get(p)) {
                    (Some(&(g, up)), Some(e)) => {
                        prop_assert_eq!(e.generation, g);
                        prop_assert_eq!(e.up, up);
                        let s = v.state_of(p, None, false).unwrap();
                        prop_assert_eq!(s, if up { PeerState::Alive } else { PeerState::Dead });
                    }
                    (None, None) => {}
                    (m, e) => prop_assert!(false, "model {:?} view {:?}", m, e),
                }
            }
        }
    }
}
