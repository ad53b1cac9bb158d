//! Property tests of the service map CRDT: merge is a semilattice join, replicas that saw the
//! same edits converge whatever the order, and the last writer (by clock) wins.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use shoal_scheduler::{Clock, Hlc, ServiceMap};
use shoal_types::ServiceSpec;

const NAMES: [&str; 4] = ["api", "db", "web", "worker"];

fn spec(name: &str, image: u8) -> ServiceSpec {
    ServiceSpec {
        name: name.to_string(),
        image: format!("img:{image}"),
        replicas: u32::from(image % 3),
        max_unavailable: 1,
        ..Default::default()
    }
}

/// An edit: which name, and `Some(image)` for a put or `None` for a remove.
type Edit = (usize, Option<u8>);

fn edit() -> impl Strategy<Value = Edit> {
    (0..NAMES.len(), proptest::option::of(0u8..4))
}

/// Clocks from a tiny range, so that equal versions (the tie-break path) come up often.
fn small_hlc() -> impl Strategy<Value = Hlc> {
    (0u64..4, 0u32..2, prop_oneof![Just("x"), Just("y")]).prop_map(|(m, c, n)| Hlc::new(m, c, n))
}

fn apply(map: &mut ServiceMap, (name, image): &Edit, hlc: Hlc) -> bool {
    match image {
        Some(i) => map.put(spec(NAMES[*name], *i), hlc),
        None => map.remove(NAMES[*name], hlc),
    }
}

fn arb_map() -> impl Strategy<Value = ServiceMap> {
    proptest::collection::vec((edit(), small_hlc()), 0..12).prop_map(|edits| {
        let mut m = ServiceMap::new();
        for (e, h) in edits {
            apply(&mut m, &e, h);
        }
        m
    })
}

fn merged(a: &ServiceMap, b: &ServiceMap) -> ServiceMap {
    let mut out = a.clone();
    out.merge(b);
    out
}

/// One step of a run with several peers: a local edit at some wall-clock time, or one peer
/// merging another's map (anti-entropy).
#[derive(Debug, Clone)]
enum Step {
    Edit { peer: usize, now: u64, edit: Edit },
    Sync { from: usize, to: usize },
}

fn step(peers: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..peers, 0u64..30, edit()).prop_map(|(peer, now, edit)| Step::Edit { peer, now, edit }),
        1 => (0..peers, 0..peers).prop_map(|(from, to)| Step::Sync { from, to }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn merge_is_commutative(a in arb_map(), b in arb_map()) {
        let (ab, ba) = (merged(&a, &b), merged(&b, &a));
        prop_assert_eq!(ab.digest(), ba.digest());
        prop_assert_eq!(ab, ba);
    }

    #[test]
    fn merge_is_associative(a in arb_map(), b in arb_map(), c in arb_map()) {
        let left = merged(&merged(&a, &b), &c);
        let right = merged(&a, &merged(&b, &c));
        prop_assert_eq!(left.digest(), right.digest());
        prop_assert_eq!(left, right);
    }

    #[test]
    fn merge_is_idempotent_and_reports_change(a in arb_map(), b in arb_map()) {
        let mut aa = a.clone();
        prop_assert!(!aa.merge(&a));
        prop_assert_eq!(&aa, &a);
        let mut ab = a.clone();
        let changed = ab.merge(&b);
        prop_assert_eq!(changed, ab != a);
        prop_assert!(!ab.merge(&b), "merging the same map twice changes nothing the second time");
    }

    #[test]
    fn digest_is_equal_exactly_when_maps_are(a in arb_map(), b in arb_map()) {
        prop_assert_eq!(a == b, a.digest() == b.digest());
    }

    #[test]
    fn wire_form_round_trips(a in arb_map()) {
        let bytes = a.encode();
        prop_assert_eq!(ServiceMap::decode(&bytes, bytes.len()).unwrap(), a);
        if !bytes.is_empty() {
            prop_assert!(ServiceMap::decode(&bytes, bytes.len() - 1).is_err());
        }
    }

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = ServiceMap::decode(&bytes, 1 << 16);
    }

    /// Peers edit concurrently and gossip partially; once all maps are merged, in any order,
    /// every result is the same, and equals applying the whole edit log to one map in any order.
    #[test]
    fn concurrent_edits_converge(
        steps in proptest::collection::vec(step(4), 1..60),
        seed in any::<u64>(),
    ) {
        let mut clocks: Vec<Clock> = (0..4).map(|i| Clock::new(format!("node-{i}"))).collect();
        let mut maps = vec![ServiceMap::new(); 4];
        let mut log: Vec<(Edit, Hlc)> = Vec::new();
        for s in &steps {
            match s {
                Step::Edit { peer, now, edit } => {
                    let hlc = clocks[*peer].tick(*now);
                    apply(&mut maps[*peer], edit, hlc.clone());
                    log.push((*edit, hlc));
                }
                Step::Sync { from, to } => {
                    let source = maps[*from].clone();
                    maps[*to].merge(&source);
                    if let Some(v) = source.max_version() {
                        clocks[*to].observe(v);
                    }
                }
            }
        }
        let mut rng = shoal_scheduler::synth::SplitMix64::new(seed);
        let mut reference: Option<ServiceMap> = None;
        for _ in 0..4 {
            let mut order: Vec<usize> = (0..4).collect();
            rng.shuffle(&mut order);
            let mut all = ServiceMap::new();
            for i in order {
                all.merge(&maps[i]);
            }
            let mut shuffled = log.clone();
            rng.shuffle(&mut shuffled);
            let mut replayed = ServiceMap::new();
            for (e, h) in shuffled {
                apply(&mut replayed, &e, h);
            }
            prop_assert_eq!(&replayed, &all);
            match &reference {
                Some(r) => prop_assert_eq!(r.digest(), all.digest()),
                None => reference = Some(all),
            }
        }
    }

    /// Put at `t_put` and remove at `t_remove`, applied or merged in either order: the service is
    /// live exactly when the put is newer.
    #[test]
    fn higher_clock_wins_between_put_and_remove(
        t_put in small_hlc(), t_remove in small_hlc(), image in 0u8..4,
    ) {
        prop_assume!(t_put != t_remove);
        let mut put = ServiceMap::new();
        put.put(spec("web", image), t_put.clone());
        let mut removed = ServiceMap::new();
        removed.remove("web", t_remove.clone());
        for m in [merged(&put, &removed), merged(&removed, &put), {
            let mut m = put.clone();
            m.remove("web", t_remove.clone());
            m
        }, {
            let mut m = removed.clone();
            m.put(spec("web", image), t_put.clone());
            m
        }] {
            prop_assert_eq!(m.get("web").is_some(), t_put > t_remove);
            let expected = if t_put > t_remove { &t_put } else { &t_remove };
            prop_assert_eq!(m.entry("web").map(|e| &e.version), Some(expected));
        }
    }
}
