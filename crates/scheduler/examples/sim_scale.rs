//! `cargo run --release -p shoal-scheduler --example sim_scale [PEERS] [SERVICES] [KILL]`.
use shoal_scheduler::sim::{Sim, SimConfig};
use shoal_scheduler::synth::{self, SplitMix64};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (n, s, k) = (
        args.first().copied().unwrap_or(1000),
        args.get(1).copied().unwrap_or(300),
        args.get(2).copied().unwrap_or(100),
    );
    let mut rng = SplitMix64::new(42);
    let peers = synth::peers(&mut rng, n);
    let services = synth::services(&mut rng, s, 1..=10);
    let replicas: u32 = services.iter().map(|s| s.replicas).sum();
    let mut sim = Sim::new(SimConfig::default(), peers);
    for svc in services {
        sim.put(0, svc);
    }
    sim.prime();
    println!("{n} peers, {s} services ({replicas} replicas); primed, converged: {:?}", sim.unsettled());
    let t1 = Instant::now();
    let mut victims: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut victims);
    for &v in &victims[..k] {
        sim.kill(v);
    }
    let healed = sim.run_until_converged(120_000);
    println!("kill {k}: converged in {healed:?} ms simulated ({:?} real), {:?}", t1.elapsed(), sim.stats());
}
