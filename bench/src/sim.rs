//! Membership at scale, by simulation: the agent's foca configuration on 1,000 and 10,000
//! simulated peers (no sockets). Convergence time after a failure, and traffic per peer.

use shoal_overlay::sim::{Sim, SimConfig};
use std::collections::HashSet;
use std::time::{Duration, Instant};

pub(crate) struct SimReport {
    pub(crate) peers: usize,
    pub(crate) to_first: Duration,
    pub(crate) to_99: Duration,
    pub(crate) to_all: Option<Duration>,
    pub(crate) steady_msgs_per_peer_s: f64,
    pub(crate) failure_msgs_per_peer_s: f64,
    pub(crate) steady_bytes_per_peer_s: f64,
    pub(crate) wall: Duration,
}

pub(crate) fn run(peers: usize, seed: u64) -> SimReport {
    let wall0 = Instant::now();
    let mut sim = Sim::new(SimConfig::lan(peers, seed));
    eprintln!("  set-up of {peers} peers took {:.1} s", wall0.elapsed().as_secs_f64());
    let target = (peers / 2) as u32;
    sim.watch = Some(target);
    sim.run_for(Duration::from_secs(5));
    let (p0, b0, t0) = (sim.packets, sim.bytes, sim.now());
    sim.run_for(Duration::from_secs(10));
    let steady_secs = (sim.now() - t0).as_secs_f64();
    let steady_msgs = (sim.packets - p0) as f64 / peers as f64 / steady_secs;
    let steady_bytes = (sim.bytes - b0) as f64 / peers as f64 / steady_secs;

    let crash_at = sim.now();
    let p1 = sim.packets;
    sim.crash(target);
    let need = peers - 1;
    let mut seen: HashSet<u32> = HashSet::new();
    let (mut first, mut p99, mut all) = (None, None, None);
    let step = Duration::from_millis(50);
    while sim.now() - crash_at < Duration::from_secs(60) {
        sim.run_for(step);
        for e in sim.observed.drain(..) {
            if !e.up && e.subject.idx == target {
                seen.insert(e.observer);
            }
        }
        let el = sim.now() - crash_at;
        if first.is_none() && !seen.is_empty() {
            first = Some(el);
        }
        if p99.is_none() && seen.len() * 100 >= need * 99 {
            p99 = Some(el);
        }
        if seen.len() >= need {
            all = Some(el);
            break;
        }
    }
    let fail_secs = (sim.now() - crash_at).as_secs_f64();
    SimReport {
        peers,
        to_first: first.unwrap_or_default(),
        to_99: p99.unwrap_or_default(),
        to_all: all,
        steady_msgs_per_peer_s: steady_msgs,
        failure_msgs_per_peer_s: (sim.packets - p1) as f64 / peers as f64 / fail_secs,
        steady_bytes_per_peer_s: steady_bytes,
        wall: wall0.elapsed(),
    }
}
