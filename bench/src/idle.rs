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
    pub(crate) dashboard: Option<DashboardCost>,
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
    let dashboard = match shoal_pids.first() {
        Some(&pid) => {
            Some(with_dashboard(&c.agents[0].socket, pid, secs, tps, cpu_pct(&before[0], &after[0], tps, wall))?)
        }
        None => None,
    };
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
        dashboard,
    })
}

fn cpu_pct(before: &(u64, u64), after: &(u64, u64), tps: f64, wall: f64) -> f64 {
    after.1.saturating_sub(before.1) as f64 / tps / wall * 100.0
}

/// The dashboard's cost: peer 0's agent CPU with the page open (a client reading its event
/// stream) vs closed, and the dashboard process's own CPU and memory.
pub(crate) struct DashboardCost {
    pub(crate) agent_cpu_closed_pct: f64,
    pub(crate) agent_cpu_open_pct: f64,
    pub(crate) dashboard_cpu_pct: f64,
    pub(crate) dashboard_rss_mib: f64,
    pub(crate) sse_bytes: usize,
}

fn with_dashboard(
    socket: &std::path::Path,
    agent: u32,
    secs: u64,
    tps: f64,
    closed: f64,
) -> anyhow::Result<DashboardCost> {
    use std::io::{Read, Write};
    let dash = shoal_testkit::Dashboard::start(socket)?;
    let (port, path, pid) = (dash.port, dash.path().to_string(), dash.process.0.id());
    // Sign in: the token for a cookie.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut head = String::new();
    s.read_to_string(&mut head)?;
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: ").or_else(|| l.strip_prefix("Set-Cookie: ")))
        .and_then(|c| c.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("the dashboard set no cookie: {head}"))?
        .to_string();
    // A page open for the window: read its event stream.
    let mut sse = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(sse, "GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n")?;
    let window = Duration::from_secs(secs);
    sse.set_read_timeout(Some(Duration::from_millis(200)))?;
    let before = (proc_usage(agent), proc_usage(pid));
    let t0 = Instant::now();
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 16];
    while t0.elapsed() < window {
        match sse.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(_) => {}
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let after = (proc_usage(agent), proc_usage(pid));
    drop(dash);
    let pct = |b: Option<(u64, u64)>, a: Option<(u64, u64)>| match (b, a) {
        (Some(b), Some(a)) => cpu_pct(&b, &a, tps, wall),
        _ => f64::NAN,
    };
    Ok(DashboardCost {
        agent_cpu_closed_pct: closed,
        agent_cpu_open_pct: pct(before.0, after.0),
        dashboard_cpu_pct: pct(before.1, after.1),
        dashboard_rss_mib: after.1.map_or(f64::NAN, |u| u.0 as f64 / 1024.0),
        sse_bytes: got,
    })
}

/// Median resident memory and CPU of a cluster's agents over one idle window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    pub(crate) rss_mib: f64,
    pub(crate) cpu_pct: f64,
}

/// The agents' idle cost before and after a change: the same window on a cluster of an older
/// build (`baseline`) and of this one, alternated round by round (which goes first alternates
/// too, so a drift of the machine hits both alike).
pub(crate) struct BeforeAfter {
    pub(crate) before: Usage,
    pub(crate) after: Usage,
}

/// This build runs as shipped: the metrics endpoint on (each agent its own port), scraped
/// every 15 s as Prometheus does by default, and the event log recording; the baseline runs
/// with its own defaults.
pub(crate) async fn before_after(
    peers: usize,
    secs: u64,
    rounds: usize,
    baseline: std::path::PathBuf,
) -> anyhow::Result<BeforeAfter> {
    anyhow::ensure!(baseline.is_file(), "no baseline binary at {}", baseline.display());
    let mut out = Vec::new();
    for round in 0..rounds {
        let mut pair = [None, None];
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let u = if which == 0 {
                let c = Cluster::start_bin(peers, true, "info", Some(baseline.clone()), |_| Vec::new()).await?;
                idle_usage(&c, secs, &[]).await
            } else {
                let ports: Vec<u16> = (0..peers).map(|_| shoal_testkit::free_port()).collect::<anyhow::Result<_>>()?;
                let flags = |i: usize| vec!["--metrics-listen".to_string(), format!("127.0.0.1:{}", ports[i])];
                let c = Cluster::start_bin(peers, true, "info", None, flags).await?;
                idle_usage(&c, secs, &ports).await
            };
            pair[which] = Some(u);
        }
        let (Some(b), Some(a)) = (pair[0], pair[1]) else { unreachable!("both ran") };
        println!(
            "  round {}: before {:.1} MiB {:.2} % CPU, after {:.1} MiB {:.2} % CPU",
            round + 1,
            b.rss_mib,
            b.cpu_pct,
            a.rss_mib,
            a.cpu_pct
        );
        out.push((b, a));
    }
    let med = |f: &dyn Fn(&(Usage, Usage)) -> f64| median_f64(&out.iter().map(f).collect::<Vec<_>>());
    Ok(BeforeAfter {
        before: Usage { rss_mib: med(&|r| r.0.rss_mib), cpu_pct: med(&|r| r.0.cpu_pct) },
        after: Usage { rss_mib: med(&|r| r.1.rss_mib), cpu_pct: med(&|r| r.1.cpu_pct) },
    })
}

/// The agents' median memory and CPU over `secs` after a settling pause, scraping each
/// `/metrics` port every 15 s meanwhile.
async fn idle_usage(c: &Cluster, secs: u64, scrape: &[u16]) -> Usage {
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pids: Vec<u32> = c.agents.iter().filter_map(|a| a.pid()).collect();
    let before: Vec<Option<(u64, u64)>> = pids.iter().map(|p| proc_usage(*p)).collect();
    let t0 = Instant::now();
    let window = Duration::from_secs(secs);
    while t0.elapsed() < window {
        for port in scrape {
            let _ = shoal_testkit::registry::http_request(
                std::net::SocketAddr::from(([127, 0, 0, 1], *port)),
                "GET",
                "/metrics",
                &[],
                b"",
            );
        }
        tokio::time::sleep(Duration::from_secs(15).min(window.saturating_sub(t0.elapsed()))).await;
    }
    let wall = t0.elapsed().as_secs_f64();
    let tps = ticks_per_sec();
    let (mut rss, mut cpu) = (Vec::new(), Vec::new());
    for (p, b) in pids.iter().zip(before) {
        if let (Some(b), Some(a)) = (b, proc_usage(*p)) {
            rss.push(a.0 as f64 / 1024.0);
            cpu.push(cpu_pct(&b, &a, tps, wall));
        }
    }
    Usage { rss_mib: median_f64(&rss), cpu_pct: median_f64(&cpu) }
}
