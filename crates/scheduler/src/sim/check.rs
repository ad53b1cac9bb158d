//! Looking at a simulated cluster: what runs, what a peer would place, whether it is at rest
//! ([`Sim::converged`]), and putting it at rest at once for large benchmarks ([`Sim::prime`]).

use super::{Container, Sim, Versioned, own_reports_now};
use crate::place::{Assignment, PeerView, ReplicaKey};
use crate::plan;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

impl Sim {
    /// Puts the cluster at rest at once (instead of simulating the rounds it takes): every
    /// peer gets peer 0's map, each placed replica runs on its owner, every peer has every
    /// peer's reports. For large benchmarks that measure what comes after.
    pub fn prime(&mut self) {
        let map = self.peers[0].map.clone();
        let views: Vec<PeerView> =
            (0..self.peers.len()).filter(|&i| self.peers[i].alive).map(|i| self.peers[i].view.clone()).collect();
        let a = crate::place::place(map.live().map(|(n, s, _)| (n, s)), &views, []);
        let index: BTreeMap<&str, usize> =
            self.peers.iter().enumerate().map(|(i, p)| (p.view.id.as_str(), i)).collect();
        let mut installs: Vec<(usize, ReplicaKey)> = Vec::new();
        for (key, owner) in &a.placed {
            if let Some(&i) = index.get(owner.as_str()) {
                installs.push((i, key.clone()));
            }
        }
        for (i, (service, slot)) in installs {
            let version = map.get(&service).map(plan::spec_version).unwrap_or_default();
            let p = &mut self.peers[i];
            p.next_container += 1;
            let id = format!("{}-{}", p.view.id, p.next_container);
            p.containers.insert(id, Container { service, slot, version, running: true, started_secs: 0 });
        }
        for i in 0..self.peers.len() {
            self.peers[i].map = map.clone();
            let mine = (self.peers[i].published.0 + 1, Arc::new(own_reports_now(self, i)));
            self.peers[i].published = mine;
        }
        let book: BTreeMap<usize, Versioned> =
            (0..self.peers.len()).map(|i| (i, self.peers[i].published.clone())).collect();
        for p in &mut self.peers {
            p.reports = book.iter().filter(|(m, _)| p.members.contains(m)).map(|(m, r)| (*m, r.clone())).collect();
            p.dirty = false;
        }
    }

    /// Replicas running now (on live peers, or on crashed agents' surviving containers): replica
    /// → peers running it.
    pub fn running(&self) -> BTreeMap<ReplicaKey, Vec<usize>> {
        let mut out: BTreeMap<ReplicaKey, Vec<usize>> = BTreeMap::new();
        for (i, p) in self.peers.iter().enumerate() {
            for c in p.containers.values().filter(|c| c.running) {
                out.entry((c.service.clone(), c.slot.clone())).or_default().push(i);
            }
        }
        out
    }

    /// The assignment peer `i` computes from its current view.
    pub fn assignment(&self, i: usize) -> Assignment {
        let (views, mut all) = self.view_of(i);
        let p = &self.peers[i];
        all.extend(p.published.1.iter());
        crate::place::place(p.map.live().map(|(n, s, _)| (n, s)), &views, all)
    }

    /// Whether the cluster is at rest: every live peer sees the same live peers, the same map
    /// and every live peer's current reports; no start is in flight; and every placed replica
    /// runs exactly once, on its owner, at the current version, with nothing else running.
    pub fn converged(&self) -> bool {
        self.unsettled().is_none()
    }

    /// Why the cluster is not at rest yet (see [`Sim::converged`]), if it is not.
    pub fn unsettled(&self) -> Option<String> {
        let live: Vec<usize> = (0..self.peers.len()).filter(|&i| self.peers[i].alive).collect();
        let &first = live.first()?;
        if self.side.iter().any(|&s| s != 0) {
            return Some("partitioned".into());
        }
        let members: BTreeSet<usize> = live.iter().copied().collect();
        for &i in &live {
            let p = &self.peers[i];
            if p.members != members {
                return Some(format!("peer {i} sees members {:?}, alive are {members:?}", p.members));
            }
            if p.map != self.peers[first].map {
                return Some(format!("peer {i}'s map differs from peer {first}'s"));
            }
            if !p.starting.is_empty() || !p.settled {
                return Some(format!("peer {i} is starting {:?} (settled: {})", p.starting, p.settled));
            }
            if let Some(j) = live.iter().find(|&&j| p.reports.get(&j).is_none_or(|r| r.0 != self.peers[j].published.0))
            {
                return Some(format!("peer {i} has stale reports of peer {j}"));
            }
        }
        if let Some(i) = (0..self.peers.len()).find(|&i| !self.peers[i].alive && !self.peers[i].containers.is_empty()) {
            return Some(format!("crashed peer {i} still runs containers"));
        }
        let a = self.assignment(first);
        let map = &self.peers[first].map;
        let running = self.running();
        for (key, owner) in &a.placed {
            let holders = running.get(key).map(Vec::as_slice).unwrap_or_default();
            let [holder] = holders else {
                return Some(format!("{key:?} (owner {owner}) runs on peers {holders:?}"));
            };
            let current = map.get(&key.0).map(plan::spec_version);
            let at_version = self.peers[*holder]
                .containers
                .values()
                .any(|c| c.service == key.0 && c.slot == key.1 && Some(&c.version) == current.as_ref());
            if self.peers[*holder].view.id != *owner || !at_version {
                return Some(format!("{key:?} runs on peer {holder}, owner {owner}, current version: {at_version}"));
            }
        }
        if let Some((key, on)) = running.iter().find(|(k, _)| !a.placed.contains_key(*k)) {
            return Some(format!("{key:?} runs on {on:?} but is not placed"));
        }
        if let Some((name, _, _)) = map.live().find(|(_, s, _)| s.rebalance.is_some() || s.previous_image.is_some()) {
            return Some(format!("{name}: an update or rebalance is not settled yet"));
        }
        for &i in &live {
            let plan = self.plan_of(i);
            if !plan.stops.is_empty() || !plan.starts.is_empty() || !plan.writes.is_empty() {
                return Some(format!("peer {i} still acts: {:?} {:?} {:?}", plan.stops, plan.starts, plan.writes));
            }
        }
        None
    }
}
