//! Times `place()` on a synthetic cluster: `cargo run --release -p shoal-scheduler --example
//! place_throughput [PEERS] [SERVICES] [REPLICAS_PER_SERVICE]` (defaults: 1000, 1000, 10).

use shoal_scheduler::place;
use shoal_scheduler::synth::{self, SplitMix64};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let peers_n = args.first().copied().unwrap_or(1000);
    let services_n = args.get(1).copied().unwrap_or(1000);
    let per = args.get(2).copied().unwrap_or(10) as u32;
    let mut rng = SplitMix64::new(3);
    let peers = synth::peers(&mut rng, peers_n);
    let services = synth::services(&mut rng, services_n, per..=per);
    let replicas: usize = services.iter().map(|s| s.replicas as usize).sum();
    let mut best = f64::MAX;
    let mut placed = 0;
    for _ in 0..5 {
        let start = Instant::now();
        let a = place(services.iter().map(|s| (s.name.as_str(), s)), &peers, []);
        best = best.min(start.elapsed().as_secs_f64());
        placed = a.placed.len();
    }
    println!(
        "{replicas} replicas ({placed} placed) of {services_n} services on {peers_n} peers: {:.1} ms, {:.0} replicas/s",
        best * 1000.0,
        replicas as f64 / best
    );
}
