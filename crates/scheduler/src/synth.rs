//! Synthetic clusters for simulations and benchmarks: random peers and services from a seed.
//!
//! Everything is derived from a [`SplitMix64`] seeded by the caller, so a run that finds a
//! problem is reproduced by its seed. The shapes are meant to look like a small fleet: two
//! regions, three zones each (a tenth of the peers without a zone label), some SSD peers, 2–16
//! CPUs and 4–64 GiB per peer; services reserving 0.1–1 CPU and 64 MiB–2 GiB, a quarter of them
//! constrained to `region=eu`, some to `disk=ssd`, half spread over `zone`.

use crate::place::PeerView;
use shoal_types::{Resources, ServiceSpec};
use std::collections::BTreeMap;
use std::ops::RangeInclusive;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A small, fast, seedable generator (SplitMix64); not for secrets.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `range` (nearly uniform; the bias is below 2^-32 for small ranges).
    pub fn in_range(&mut self, range: RangeInclusive<u64>) -> u64 {
        let (lo, hi) = (*range.start(), *range.end());
        if hi <= lo {
            return lo;
        }
        match (hi - lo).checked_add(1) {
            Some(span) => lo + self.next_u64() % span,
            None => self.next_u64(),
        }
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.in_range(0..=i as u64) as usize;
            items.swap(i, j);
        }
    }
}

/// `count` peers named `peer-0000`…, with random capacities and labels (see the module docs).
pub fn peers(rng: &mut SplitMix64, count: usize) -> Vec<PeerView> {
    (0..count).map(|i| peer(rng, &format!("peer-{i:04}"))).collect()
}

/// One random peer called `id`.
pub fn peer(rng: &mut SplitMix64, id: &str) -> PeerView {
    let region = if rng.percent(50) { "eu" } else { "us" };
    let mut labels = BTreeMap::new();
    labels.insert("region".to_string(), region.to_string());
    if rng.percent(90) {
        let zone = ["a", "b", "c"][rng.in_range(0..=2) as usize];
        labels.insert("zone".to_string(), format!("{region}-{zone}"));
    }
    if rng.percent(30) {
        labels.insert("disk".to_string(), "ssd".to_string());
    }
    PeerView {
        id: id.to_string(),
        capacity: Resources::new(rng.in_range(2..=16) * 1000, rng.in_range(4..=64) * GIB),
        labels,
        draining: false,
    }
}

/// `count` services named `svc-0000`…, each with a replica count drawn from `replicas`.
pub fn services(rng: &mut SplitMix64, count: usize, replicas: RangeInclusive<u32>) -> Vec<ServiceSpec> {
    (0..count)
        .map(|i| {
            let mut constraints = BTreeMap::new();
            if rng.percent(25) {
                constraints.insert("region".to_string(), "eu".to_string());
            }
            if rng.percent(10) {
                constraints.insert("disk".to_string(), "ssd".to_string());
            }
            ServiceSpec {
                name: format!("svc-{i:04}"),
                image: format!("registry.example/app-{i}:1"),
                replicas: rng.in_range(u64::from(*replicas.start())..=u64::from(*replicas.end())) as u32,
                cpus_milli: rng.in_range(2..=20) * 50,
                memory_bytes: rng.in_range(1..=32) * 64 * MIB,
                constraints,
                spread: rng.percent(50).then(|| "zone".to_string()),
                max_unavailable: 1,
                ..Default::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_cluster() {
        let a = (peers(&mut SplitMix64::new(7), 20), services(&mut SplitMix64::new(8), 20, 1..=10));
        let b = (peers(&mut SplitMix64::new(7), 20), services(&mut SplitMix64::new(8), 20, 1..=10));
        assert_eq!(a, b);
        assert!(a.1.iter().all(|s| (1..=10).contains(&s.replicas)));
        let mut rng = SplitMix64::new(1);
        assert_eq!(rng.in_range(3..=3), 3);
        assert!((0..1000).all(|_| (5..=9).contains(&rng.in_range(5..=9))));
        let mut v: Vec<u32> = (0..50).collect();
        rng.shuffle(&mut v);
        v.sort();
        assert_eq!(v, (0..50).collect::<Vec<_>>());
    }
}
