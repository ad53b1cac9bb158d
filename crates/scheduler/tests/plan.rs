//! Property test of the planner: a peer that carries out its plans, whatever it ran before,
//! ends up running exactly the replicas assigned to it at the current versions, and never has
//! more replicas of a service down for replacement at once than `max_unavailable` allows.
//! The other peer runs its share perfectly (its reports say so every round).

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use shoal_scheduler::{
    Health, Hlc, Input, LocalReplica, PeerView, ReplicaState, Report, ServiceMap, StopReason, plan, spec_version,
};
use shoal_types::{ContainerState, Resources, ServiceSpec, Slot};
use std::collections::{BTreeMap, BTreeSet};

const NAMES: [&str; 3] = ["api", "db", "web"];

fn arb_map() -> impl Strategy<Value = ServiceMap> {
    proptest::collection::vec((0..NAMES.len(), 0u32..6, 0u32..3, 1u64..5, any::<bool>()), 0..6).prop_map(|edits| {
        let mut m = ServiceMap::new();
        for (n, replicas, max_unavailable, millis, remove) in edits {
            let hlc = Hlc::new(millis, 0, "x");
            if remove {
                m.remove(NAMES[n], hlc);
            } else {
                let spec = ServiceSpec {
                    name: NAMES[n].to_string(),
                    image: format!("img:{millis}"),
                    replicas,
                    max_unavailable,
                    ..Default::default()
                };
                m.put(spec, hlc);
            }
        }
        m
    })
}

/// Containers from the past: any service name (removed ones too), slot, version and state.
fn arb_local() -> impl Strategy<Value = Vec<LocalReplica>> {
    proptest::collection::vec((0..NAMES.len() + 1, 0u32..7, 0u64..6, 0u8..3), 0..15).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (n, index, img, state))| LocalReplica {
                container: format!("old{i:02}"),
                service: NAMES.get(n).copied().unwrap_or("gone").to_string(),
                slot: Slot::Index(index),
                version: format!("v{img}"),
                state: [ContainerState::Running, ContainerState::Exited, ContainerState::Created][state as usize],
                restarts: 0,
                started_unix: Some(0),
                ip: None,
                cpu_milli: 0,
            })
            .collect()
    })
}

fn peers() -> Vec<PeerView> {
    ["me", "other"]
        .iter()
        .map(|id| PeerView {
            id: id.to_string(),
            capacity: Resources::new(100_000, 1 << 40),
            labels: BTreeMap::new(),
            draining: false,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_peer_converges_to_its_share(map in arb_map(), mut local in arb_local()) {
        // Real versions for the services that exist (the arbitrary ones are all outdated).
        let version = |s: &str| map.get(s).map(spec_version).unwrap_or_default();
        let peers = peers();
        let (health, failures, starting, scaled) = (BTreeMap::<String, Health>::new(), BTreeMap::new(), BTreeSet::new(), BTreeMap::new());
        let mut theirs: Vec<Report> = Vec::new();
        let mut next_id = 0;
        let mut settled = false;
        for round in 0..60 {
            let refs: Vec<&Report> = theirs.iter().collect();
            let input = Input {
                me: "me", now_ms: 1_000_000, now_unix: 1_000_000, services: &map, peers: &peers, reports: &refs,
                local: &local, health: &health, failures: &failures, starting: &starting, scaled: &scaled, writers: None,
            };
            let p = plan(&input);
            // The other peer runs what is assigned to it, at the current version.
            let next_theirs: Vec<Report> = p.assignment.on_peer("other").map(|(s, slot)| Report {
                peer: "other".into(), service: s.to_string(), slot: slot.clone(), version: version(s),
                state: ReplicaState::Running, restarts: 0, cpu_milli: 0, failures: 0, fault: None,
                container: String::new(), ip: None, started_unix: None,
            }).collect();
            if p.stops.is_empty() && p.starts.is_empty() && next_theirs == theirs {
                settled = true;
                break;
            }
            theirs = next_theirs;
            let mut replaced: BTreeMap<String, u32> = BTreeMap::new();
            for stop in &p.stops {
                let pos = local.iter().position(|c| c.container == stop.container);
                prop_assert!(pos.is_some(), "stop of an unknown container");
                let c = local.remove(pos.unwrap_or_default());
                if let StopReason::Outdated { .. } = stop.reason && c.state == ContainerState::Running {
                    *replaced.entry(c.service).or_default() += 1;
                }
            }
            for start in &p.starts {
                prop_assert_eq!(p.assignment.owner(&start.service, &start.slot), Some("me"));
                prop_assert!(!local.iter().any(|c| c.service == start.service && c.slot == start.slot), "started twice");
                next_id += 1;
                local.push(LocalReplica {
                    container: format!("new{next_id:03}"), service: start.service.clone(), slot: start.slot.clone(),
                    version: start.version.clone(), state: ContainerState::Created, restarts: 0,
                    started_unix: Some(0), ip: None, cpu_milli: 0,
                });
            }
            for (service, n) in replaced {
                let allowed = map.get(&service).map(|s| s.max_unavailable.max(1)).unwrap_or(0);
                prop_assert!(n <= allowed, "{n} running replicas of {service} replaced at once, {allowed} allowed");
            }
            // Started containers run by the next round.
            for c in &mut local {
                if c.state == ContainerState::Created {
                    c.state = ContainerState::Running;
                }
            }
            prop_assert!(round < 59, "no convergence");
        }
        prop_assert!(settled);
        let refs: Vec<&Report> = theirs.iter().collect();
        let input = Input {
            me: "me", now_ms: 1_000_000, now_unix: 1_000_000, services: &map, peers: &peers, reports: &refs,
            local: &local, health: &health, failures: &failures, starting: &starting, scaled: &scaled, writers: None,
        };
        let assignment = plan(&input).assignment;
        let have: BTreeSet<(String, Slot, String)> =
            local.iter().map(|c| (c.service.clone(), c.slot.clone(), c.version.clone())).collect();
        let want: BTreeSet<(String, Slot, String)> =
            assignment.on_peer("me").map(|(s, i)| (s.to_string(), i.clone(), version(s))).collect();
        prop_assert_eq!(have, want);
        prop_assert_eq!(local.len(), assignment.on_peer("me").count(), "one container per replica");
    }
}
