//! Failure detection: time from SIGKILL of a peer until every other peer marks it dead, Shoal
//! and Serf side by side, same machine, same run.

use crate::serf::SerfAgent;
use crate::stats::{Summary, summarize};
use anyhow::bail;
use shoal_testkit::{Cluster, state_of};
use shoal_types::PeerState;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(20);

async fn shoal_all_see(
    c: &Cluster,
    skip: usize,
    id: &str,
    want: PeerState,
    within: Duration,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    loop {
        let mut all = true;
        for (i, a) in c.agents.iter().enumerate() {
            if i == skip {
                continue;
            }
            let peers = a.peers().await.unwrap_or_default();
            if state_of(&peers, id) != Some(want) {
                all = false;
                break;
            }
        }
        if all {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > within {
            bail!("peers did not all see {id} {want} within {within:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Shoal: `runs` SIGKILLs in a `peers`-peer cluster (default settings, cluster key).
pub(crate) async fn shoal(peers: usize, runs: usize) -> anyhow::Result<Summary> {
    let mut c = Cluster::start_with(peers, true, "info").await?;
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for a in &c.agents {
            v.push(a.status().await?.id);
        }
        v
    };
    for id in &ids {
        shoal_all_see(&c, usize::MAX, id, PeerState::Alive, Duration::from_secs(30)).await?;
    }
    let mut times = Vec::new();
    for r in 0..runs {
        let victim = 1 + r % (peers - 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.agents[victim].kill()?;
        let took = shoal_all_see(&c, victim, &ids[victim], PeerState::Dead, Duration::from_secs(60)).await?;
        eprintln!("  shoal run {r}: peer-{victim} dead everywhere after {:.2} s", took.as_secs_f64());
        times.push(took);
        c.agents[victim].restart().await?;
        shoal_all_see(&c, usize::MAX, &ids[victim], PeerState::Alive, Duration::from_secs(60)).await?;
    }
    summarize(&times).ok_or_else(|| anyhow::anyhow!("no runs"))
}

fn serf_all_see(
    agents: &[SerfAgent],
    skip: usize,
    name: &str,
    want: &str,
    within: Duration,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    loop {
        let all = agents
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .all(|(_, a)| a.members().is_some_and(|m| m.iter().any(|(n, s)| n == name && s == want)));
        if all {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > within {
            bail!("serf agents did not all see {name} {want} within {within:?}");
        }
        std::thread::sleep(POLL);
    }
}

/// Serf with its defaults: the same experiment.
pub(crate) fn serf(peers: usize, runs: usize, base_port: u16) -> anyhow::Result<Summary> {
    let dir = tempfile::tempdir()?;
    let mut agents = Vec::new();
    for i in 0..peers {
        let p = base_port + 2 * i as u16;
        agents.push(SerfAgent::start(dir.path(), &format!("serf-{i}"), p, p + 1)?);
    }
    std::thread::sleep(Duration::from_millis(500));
    for a in &agents[1..] {
        a.join(agents[0].bind)?;
    }
    for a in &agents {
        serf_all_see(&agents, usize::MAX, &a.name.clone(), "alive", Duration::from_secs(30))?;
    }
    let mut times = Vec::new();
    for r in 0..runs {
        let victim = 1 + r % (peers - 1);
        std::thread::sleep(Duration::from_secs(2));
        let name = agents[victim].name.clone();
        agents[victim].kill();
        let took = serf_all_see(&agents, victim, &name, "failed", Duration::from_secs(60))?;
        eprintln!("  serf run {r}: {name} failed everywhere after {:.2} s", took.as_secs_f64());
        times.push(took);
        agents[victim].restart()?;
        std::thread::sleep(Duration::from_millis(300));
        agents[victim].join(agents[0].bind)?;
        serf_all_see(&agents, usize::MAX, &name, "alive", Duration::from_secs(60))?;
    }
    summarize(&times).ok_or_else(|| anyhow::anyhow!("no runs"))
}
