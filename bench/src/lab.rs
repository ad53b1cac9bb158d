//! The lab: measured throughput of shaped links against their setting, the time `lab up` takes
//! (until every peer sees every other alive), and the agents' memory.

use crate::stats::{median_f64, proc_usage};
use shoal_testkit::lab::{TestLab, measure_tcp};
use std::net::Ipv4Addr;
use std::time::Instant;

pub(crate) fn link_rates(settings_mbit: &[u64], runs: usize) -> anyhow::Result<Vec<(u64, f64)>> {
    let lab = TestLab::up("bench-rate", 2, &[])?;
    let (a, b) = (lab.netns(0), lab.netns(1));
    let mut out = Vec::new();
    let mut port = 6000;
    for &m in settings_mbit {
        for i in ["0", "1"] {
            lab.ok(&["link", i, "--bandwidth", &format!("{m}mbit")])?;
        }
        // About 3 s of traffic per run.
        let bytes = (m as usize * 1_000_000 / 8 * 3).max(1 << 20);
        let mut rates = Vec::new();
        for _ in 0..runs {
            port += 1;
            rates.push(measure_tcp(&a, &b, Ipv4Addr::new(198, 18, 0, 11), port, bytes)?);
        }
        out.push((m, median_f64(&rates)));
    }
    Ok(out)
}

pub(crate) struct UpFigure {
    pub(crate) peers: usize,
    pub(crate) median_secs: f64,
    pub(crate) total_rss_mib: f64,
}

pub(crate) fn up_times(sizes: &[usize], runs: usize) -> anyhow::Result<Vec<UpFigure>> {
    let mut out = Vec::new();
    for &n in sizes {
        let mut times = Vec::new();
        let mut rss = 0.0;
        for _ in 0..runs {
            let t0 = Instant::now();
            let lab = TestLab::up("bench-up", n, &["--peer-memory", "256m", "--peer-cpus", "0.25"])?;
            times.push(t0.elapsed().as_secs_f64());
            let pids: Vec<u32> = lab.status()?.iter().filter_map(|r| r["pid"].as_u64()).map(|p| p as u32).collect();
            anyhow::ensure!(pids.len() == n, "only {} of {n} agents running", pids.len());
            rss = pids.iter().filter_map(|p| proc_usage(*p)).map(|(kib, _)| kib as f64 / 1024.0).sum();
        }
        out.push(UpFigure { peers: n, median_secs: median_f64(&times), total_rss_mib: rss });
    }
    Ok(out)
}
