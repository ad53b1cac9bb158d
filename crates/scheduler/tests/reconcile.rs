//! Property test of reconciliation: a peer that runs the actions it is given, whatever it ran
//! before, ends up running exactly its assigned replicas at the current versions, and never
//! replaces more healthy outdated replicas of a service at once than `max_unavailable` allows.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use shoal_scheduler::{Action, Hlc, PeerView, Running, ServiceMap, StopReason, place, reconcile};
use shoal_types::{Resources, ServiceSpec};
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
                    image: "img".into(),
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

/// Containers from the past: any service name (removed ones too), index, version and health.
fn arb_running() -> impl Strategy<Value = Vec<Running>> {
    proptest::collection::vec((0..NAMES.len() + 1, 0u32..7, 0u64..6, any::<bool>()), 0..15).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (n, index, millis, healthy))| Running {
                service: NAMES.get(n).copied().unwrap_or("gone").to_string(),
                index,
                version: Hlc::new(millis, 0, "x").to_string(),
                container_id: format!("old{i:02}"),
                healthy,
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
    fn a_peer_converges_to_its_share(map in arb_map(), mut running in arb_running()) {
        let assignment = place(map.live().map(|(n, s, _)| (n, s)), &peers());
        let version = |s: &str| map.get(s).map(shoal_scheduler::spec_version).unwrap_or_default();
        let mut next_id = 0;
        for round in 0..40 {
            let actions = reconcile(&assignment, &map, "me", &running);
            if actions.is_empty() {
                break;
            }
            prop_assert!(round < 39, "no convergence: {actions:?}");
            let mut replaced: BTreeMap<String, u32> = BTreeMap::new();
            let mut seen_start = false;
            for a in actions {
                match a {
                    Action::Stop { container_id, reason } => {
                        prop_assert!(!seen_start, "stops come before starts");
                        let pos = running.iter().position(|r| r.container_id == container_id);
                        prop_assert!(pos.is_some(), "stop of an unknown container");
                        let r = running.remove(pos.unwrap_or_default());
                        if let StopReason::Outdated { .. } = reason && r.healthy {
                            *replaced.entry(r.service).or_default() += 1;
                        }
                    }
                    Action::Start { service, index } => {
                        seen_start = true;
                        prop_assert_eq!(assignment.owner(&service, index), Some("me"));
                        prop_assert!(!running.iter().any(|r| r.service == service && r.index == index), "started twice");
                        next_id += 1;
                        running.push(Running {
                            version: version(&service),
                            service,
                            index,
                            container_id: format!("new{next_id:03}"),
                            healthy: false,
                        });
                    }
                }
            }
            for (service, n) in replaced {
                let allowed = map.get(&service).map(|s| s.max_unavailable.max(1)).unwrap_or(0);
                prop_assert!(n <= allowed, "{n} healthy replicas of {service} replaced at once, {allowed} allowed");
            }
            // Health checks pass before the next round.
            for r in &mut running {
                r.healthy = true;
            }
        }
        let have: BTreeSet<(String, u32, String)> =
            running.iter().map(|r| (r.service.clone(), r.index, r.version.clone())).collect();
        let want: BTreeSet<(String, u32, String)> =
            assignment.on_peer("me").map(|(s, i)| (s.to_string(), i, version(s))).collect();
        prop_assert_eq!(have, want);
        prop_assert_eq!(running.len(), assignment.on_peer("me").count(), "one container per replica");
    }
}
