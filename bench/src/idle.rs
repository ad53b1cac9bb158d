//! An idle cluster: resident memory and CPU of each agent, and false positives (any peer ever
//! seen as not alive), Shoal and Serf side by side over the same window.

use crate::serf::SerfAgent;
use crate::stats::{median_f64, proc_usage, ticks_per_sec};
use shoal_testkit::Cluster;
use shoal_types::PeerState;
use std::time::{Duration, Instant};

pub(crate) struct IdleReport {
    pub(crate) shoal_rss_mib: f64,
    pub(crate) shoal_cpu_pct: f64,
    pub(crate) shoal_false_positives: usize,
    pub(crate) serf_rss_mib: Option<f64>,
    pub(crate) serf_cpu_pct: Option<f64>,
    pub(crate) secs: u64,
}

pub(crate) async fn run(peers: usize, secs: u64, with_serf: bool, base_port: u16) -> anyhow::Result<IdleReport> {
    let c = Cluster::start_with(peers, true, "info").await?;
    let dir = tempfile::tempdir()?;
    let mut serfs = Vec::new();
    if with_serf {
        for i in 0..peers {
            let p = base_port + 2 * i as u16;
            serfs.push(SerfAgent::start(dir.path(), &format!("serf-{i}"), p, p + 1)?);
        }
        std::thread::sleep(Duration::from_millis(500));
        for a in &serfs[1..] {
            a.join(serfs[0].bind)?;
        }
    }
    // Settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let shoal_pids: Vec<u32> = c.agents.iter().filter_map(|a| a.pid()).collect();
    let serf_pids: Vec<u32> = serfs.iter().filter_map(|a| a.pid()).collect();
    let before: Vec<(u64, u64)> = shoal_pids.iter().chain(&serf_pids).filter_map(|p| proc_usage(*p)).collect();
    // False positives are read from the agents' logs ("peer dead", "peer restarted") rather than
    // by polling their APIs, which would cost Shoal CPU that Serf does not pay.
    let log_len: Vec<usize> = c.agents.iter().map(|a| a.log_text().len()).collect();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let wall = t0.elapsed().as_secs_f64();
    let mut false_positives = 0;
    for (a, from) in c.agents.iter().zip(log_len) {
        let text = a.log_text();
        let new = text.get(from..).unwrap_or("");
        false_positives += new.matches("peer dead").count() + new.matches("peer restarted").count();
        let seen = a.peers().await.unwrap_or_default();
        false_positives += seen.iter().filter(|p| p.state != PeerState::Alive).count();
    }
    let after: Vec<(u64, u64)> = shoal_pids.iter().chain(&serf_pids).filter_map(|p| proc_usage(*p)).collect();
    let tps = ticks_per_sec();
    let cpu: Vec<f64> =
        before.iter().zip(&after).map(|(b, a)| (a.1.saturating_sub(b.1)) as f64 / tps / wall * 100.0).collect();
    let rss: Vec<f64> = after.iter().map(|a| a.0 as f64 / 1024.0).collect();
    let n = shoal_pids.len();
    Ok(IdleReport {
        shoal_rss_mib: median_f64(&rss[..n]),
        shoal_cpu_pct: median_f64(&cpu[..n]),
        shoal_false_positives: false_positives,
        serf_rss_mib: with_serf.then(|| median_f64(&rss[n..])),
        serf_cpu_pct: with_serf.then(|| median_f64(&cpu[n..])),
        secs,
    })
}
