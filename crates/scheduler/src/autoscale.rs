//! Autoscaling decisions from measured CPU: pure, so they are tested without a cluster.
//!
//! Utilisation is the mean CPU use of the replicas as a percentage of each replica's CPU limit
//! (one core when it has none). Above 110 % of the target the service grows to what would bring
//! it to the target (at least one more); below 60 % it shrinks (at least one fewer); in between
//! nothing changes. The wide band plus the node's cool-downs (grow at most every 10 s, shrink
//! at most every 30 s) keep it from flapping. The result always lies in `[min, max]`.

use shoal_types::Autoscale;

/// The new replica count, or `None` to leave it.
pub fn decide(current: u32, a: &Autoscale, cpu_limit_milli: u64, usage_milli: &[u64]) -> Option<u32> {
    let (min, max) = (a.min.min(a.max), a.max.max(1));
    let clamp = |n: u32| n.clamp(min.max(1), max);
    if current < min.max(1) || current > max {
        return Some(clamp(current));
    }
    if usage_milli.is_empty() || a.target_cpu_percent == 0 {
        return None;
    }
    let limit = if cpu_limit_milli == 0 { 1000 } else { cpu_limit_milli } as f64;
    let mean = usage_milli.iter().sum::<u64>() as f64 / usage_milli.len() as f64;
    let util = mean / limit * 100.0;
    let target = f64::from(a.target_cpu_percent);
    let desired = (f64::from(current) * util / target).ceil() as u32;
    let next = if util > target * 1.1 {
        clamp(desired.max(current + 1))
    } else if util < target * 0.6 {
        clamp(desired.min(current.saturating_sub(1)))
    } else {
        current
    };
    (next != current).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: Autoscale = Autoscale { min: 2, max: 10, target_cpu_percent: 50 };

    #[test]
    fn grows_shrinks_and_holds() {
        assert_eq!(decide(2, &A, 1000, &[900, 900]), Some(4), "90% of a core at 50% target: double");
        assert_eq!(decide(4, &A, 1000, &[100, 100, 100, 100]), Some(2), "10%: shrink to min");
        assert_eq!(decide(4, &A, 1000, &[500, 450, 520, 480]), None, "near target: hold");
        assert_eq!(decide(3, &A, 200, &[200, 200, 200]), Some(6), "limit-relative");
        assert_eq!(decide(1, &A, 1000, &[]), Some(2), "below min is corrected");
        assert_eq!(decide(9, &A, 1000, &[1000; 9]), Some(10), "never above max");
    }

    proptest! {
        #[test]
        fn always_within_bounds(current in 1u32..20, min in 1u32..5, span in 0u32..10, target in 1u32..100,
                                usage in proptest::collection::vec(0u64..4000, 0..12), limit in 0u64..4000) {
            let a = Autoscale { min, max: min + span, target_cpu_percent: target };
            if let Some(n) = decide(current, &a, limit, &usage) {
                prop_assert!(n >= min && n <= min + span);
                prop_assert_ne!(n, current);
            }
        }

        #[test]
        fn steady_load_at_target_never_moves(current in 2u32..10) {
            let usage = vec![500u64; current as usize];
            prop_assert_eq!(decide(current, &A, 1000, &usage), None);
        }
    }
}
