//! Services: how fast a leaderless cluster heals, how little it moves, how fast it starts
//! replicas, and how fast the pure scheduler and the simulator go.
//!
//! - **failover**: a 5-peer lab runs a 5-replica service. Each round `lab kill --all`s a peer
//!   running one (agent and containers, like a power loss; the victim rotates) and times, as
//!   seen from another live peer's API (`GET /v1/services/web/replicas`, polled every 50 ms),
//!   until every replica runs exactly once and none on the killed peer. A side poller records
//!   where the time goes (detection at the new host, the replacement running there). Healthy
//!   replicas moved are counted: replicas off the victim whose peer or container changed.
//! - **return**: the victim is started again; once it is alive everywhere and sees the service,
//!   the placement is watched for 5 s and every replica whose peer or container changed counts
//!   as moved (sticky placement: 0). Then `service rebalance` spreads the replicas again (one
//!   per peer), timed, before the next round.
//! - **startup**: `POST /v1/services` (what `shoal service create` sends) with 20 replicas, image
//!   already on every peer, until 20 run exactly once as seen from the same peer.
//! - **placement**: `shoal_scheduler::place` on a synthetic cluster of 1,000 peers and 10,000
//!   fresh replicas, against Nomad's C1M figure.
//! - **simulation**: `shoal_scheduler::sim` with 1,000 peers and 300 services at rest; 100 peers
//!   are killed at once; simulated seconds until every peer's view agrees and every replica runs
//!   exactly once (the agent's timings: detection 1.8-2.6 s, gossip up to 0.3 s).
//!
//! Targets from the issue: failover median <= 2.5 s and 0 healthy replicas moved (Docker Swarm
//! ~20 s, Nomad 20-30 s), 0 moved on return, >= 100,000 placements/s.

use crate::stats::{Summary, median_f64, summarize};
use anyhow::{Context, bail};
use shoal_api::client::Client;
use shoal_testkit::lab::TestLab;
use shoal_testkit::state_of;
use shoal_types::{ContainerInfo, ImageInfo, PeerInfo, PeerState, ReplicaInfo, ServiceSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const PEERS: usize = 5;
const POLL: Duration = Duration::from_millis(50);
const IMAGE: &str = "busybox:svc";
const TICKER: &str = "while true; do sleep 1; done";
const FAILOVER_SERVICE: &str = "web";
const STARTUP_SERVICE: &str = "burst";
const STARTUP_REPLICAS: u32 = 20;
const STARTUP_RUNS: usize = 3;
/// Nomad's "C1M" run: one million containers placed in about 4.5 minutes by 5 servers.
const NOMAD_C1M_PER_SEC: f64 = 3750.0;

/// Running replicas of one service: index -> peer ids running it.
type Placement = BTreeMap<u32, Vec<String>>;
/// Running replicas with their containers: index -> (peer id, container id) of each copy.
type Copies = BTreeMap<u32, Vec<(String, String)>>;

fn running(list: &[ReplicaInfo]) -> Placement {
    copies(list).into_iter().map(|(i, v)| (i, v.into_iter().map(|(p, _)| p).collect())).collect()
}

fn copies(list: &[ReplicaInfo]) -> Copies {
    let mut out = Copies::new();
    for r in list.iter().filter(|r| r.state == "running") {
        out.entry(r.slot.index().unwrap_or(u32::MAX)).or_default().push((r.peer.clone(), r.container.clone()));
    }
    out
}

/// Replicas of `before` (not on `except`) whose peer or container is not the same in `after`.
fn moved(before: &Copies, after: &Copies, except: Option<&str>) -> usize {
    before
        .iter()
        .filter(|(_, v)| !v.iter().any(|(p, _)| Some(p.as_str()) == except))
        .filter(|(i, v)| after.get(i) != Some(v))
        .count()
}

/// Indexes `0..n` each running exactly once, none on `not_on`, and (if `distinct`) all on
/// different peers.
fn settled(p: &Placement, n: u32, not_on: Option<&str>, distinct: bool) -> bool {
    p.len() == n as usize
        && p.keys().copied().eq(0..n)
        && p.values().all(|v| v.len() == 1)
        && p.values().flatten().all(|id| Some(id.as_str()) != not_on)
        && (!distinct || p.values().flatten().collect::<BTreeSet<_>>().len() == n as usize)
}

fn replicas_path(service: &str) -> String {
    format!("/v1/services/{service}/replicas")
}

/// Waits until every peer in `viewers` sees `n` replicas of `service` settled.
async fn wait_settled(
    clients: &[Client],
    viewers: &[usize],
    service: &str,
    n: u32,
    distinct: bool,
    within: Duration,
) -> anyhow::Result<Placement> {
    let t0 = Instant::now();
    'outer: loop {
        let mut last = Placement::new();
        for &v in viewers {
            last = running(&clients[v].get::<Vec<ReplicaInfo>>(&replicas_path(service)).await.unwrap_or_default());
            if !settled(&last, n, None, distinct) {
                if t0.elapsed() > within {
                    bail!("peer {v} sees {last:?} after {within:?}, wanted {n} replicas of {service} once each");
                }
                tokio::time::sleep(POLL).await;
                continue 'outer;
            }
        }
        return Ok(last);
    }
}

/// Waits until no peer has any container left.
async fn wait_no_containers(clients: &[Client], within: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let mut left = 0;
        for c in clients {
            left += c.get::<Vec<ContainerInfo>>("/v1/containers?all=true").await.map_or(usize::MAX / 8, |v| v.len());
        }
        if left == 0 {
            return Ok(());
        }
        if t0.elapsed() > within {
            bail!("{left} containers still exist {within:?} after service rm");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn summary(xs: &[Duration]) -> anyhow::Result<Summary> {
    summarize(xs).context("no runs")
}

/// What the side poller saw during one failover round, from the kill.
#[derive(Debug, Default)]
struct Trace {
    /// Per live peer: when it first reported the victim dead.
    dead_seen: BTreeMap<usize, Duration>,
    /// Replacement replicas (index, peer): when that peer first reported it running itself.
    started: BTreeMap<(u32, usize), Duration>,
}

/// Polls every live peer: its view of the victim, and the replicas it runs itself that did not
/// run there before the kill. Once `stop` is set it goes on until every live peer has marked the
/// victim dead, for at most 5 s more.
async fn trace(
    clients: Vec<(usize, Client)>,
    ids: Vec<String>,
    victim: usize,
    before: Placement,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> Trace {
    let mut t = Trace::default();
    let path = replicas_path(FAILOVER_SERVICE);
    let mut stopped: Option<Instant> = None;
    while t0.elapsed() < Duration::from_secs(90) {
        // A sweep that starts after `stop` still runs in full, so it sees what the viewer saw.
        if stopped.is_none() && stop.load(Ordering::Relaxed) {
            stopped = Some(Instant::now());
        }
        for (p, c) in &clients {
            if !t.dead_seen.contains_key(p)
                && let Ok(view) = c.get::<Vec<PeerInfo>>("/v1/peers").await
                && state_of(&view, &ids[victim]) == Some(PeerState::Dead)
            {
                t.dead_seen.insert(*p, t0.elapsed());
            }
            if let Ok(list) = c.get::<Vec<ReplicaInfo>>(&path).await {
                for r in list.iter().filter(|r| r.state == "running" && r.peer == ids[*p]) {
                    let new = !before.get(&r.slot.index().unwrap_or(u32::MAX)).is_some_and(|v| v.contains(&r.peer));
                    if new {
                        t.started.entry((r.slot.index().unwrap_or(u32::MAX), *p)).or_insert_with(|| t0.elapsed());
                    }
                }
            }
        }
        if let Some(s) = stopped
            && (t.dead_seen.len() == clients.len() || s.elapsed() > Duration::from_secs(5))
        {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    t
}

struct Failover {
    total: Vec<Duration>,
    detect_host: Vec<Duration>,
    detect_all: Vec<Duration>,
    started: Vec<Duration>,
    /// Healthy replicas (not on the victim) moved by the failover, per round.
    moved: Vec<f64>,
    /// Replicas moved when the victim came back, per round.
    moved_on_return: Vec<f64>,
    kill_cmd: Vec<Duration>,
    back: Vec<Duration>,
    rebalance: Vec<Duration>,
    api_poll: Vec<f64>,
}

async fn failover(lab: &TestLab, clients: &[Client], ids: &[String], runs: usize) -> anyhow::Result<Failover> {
    let all: Vec<usize> = (0..PEERS).collect();
    let path = replicas_path(FAILOVER_SERVICE);
    let mut f = Failover {
        total: Vec::new(),
        detect_host: Vec::new(),
        detect_all: Vec::new(),
        started: Vec::new(),
        moved: Vec::new(),
        moved_on_return: Vec::new(),
        kill_cmd: Vec::new(),
        back: Vec::new(),
        rebalance: Vec::new(),
        api_poll: Vec::new(),
    };
    for r in 0..runs {
        let before = wait_settled(clients, &all, FAILOVER_SERVICE, PEERS as u32, true, Duration::from_secs(60)).await?;
        let before_copies = copies(&clients[0].get::<Vec<ReplicaInfo>>(&path).await?);
        // Every peer runs one replica; rotate over them.
        let hosts: BTreeSet<usize> =
            before.values().flatten().filter_map(|id| ids.iter().position(|x| x == id)).collect();
        let hosts: Vec<usize> = hosts.into_iter().collect();
        let victim = hosts[r % hosts.len()];
        let viewer = (victim + 1) % PEERS;
        let live: Vec<(usize, Client)> =
            all.iter().filter(|&&i| i != victim).map(|&i| (i, clients[i].clone())).collect();
        let stop = Arc::new(AtomicBool::new(false));

        let t0 = Instant::now();
        lab.ok(&["kill", "--all", &victim.to_string()])?;
        f.kill_cmd.push(t0.elapsed());
        let side = tokio::spawn(trace(live, ids.to_vec(), victim, before.clone(), t0, stop.clone()));
        let deadline = Duration::from_secs(60);
        let (total, healed) = loop {
            let q = Instant::now();
            let list = clients[viewer].get::<Vec<ReplicaInfo>>(&path).await;
            f.api_poll.push(secs(q.elapsed()) * 1000.0);
            if let Ok(list) = list
                && settled(&running(&list), PEERS as u32, Some(&ids[victim]), false)
            {
                break (t0.elapsed(), copies(&list));
            }
            if t0.elapsed() > deadline {
                stop.store(true, Ordering::Relaxed);
                bail!("run {r}: replicas not back on the other peers {deadline:?} after killing peer {victim}");
            }
            tokio::time::sleep(POLL).await;
        };
        // The side poller finishes once the slowest live peer has marked the victim dead.
        stop.store(true, Ordering::Relaxed);
        let t = side.await?;
        let placed_hosts: Vec<usize> = t.started.keys().map(|(_, p)| *p).collect();
        let detect_host = placed_hosts.iter().filter_map(|p| t.dead_seen.get(p)).max().copied();
        let detect_all = (t.dead_seen.len() == PEERS - 1).then(|| t.dead_seen.values().max().copied()).flatten();
        // Sampled every 50 ms, the host's own report can trail the viewer's: it ran by `total`.
        let started = t.started.values().max().map(|d| (*d).min(total));
        eprintln!(
            "  run {r}: killed peer {victim}; replicas {:?} now on peers {:?}; victim dead at its new host {}, at all live peers {}; running there {}; seen by peer {viewer} {:.2} s",
            t.started.keys().map(|(i, _)| *i).collect::<Vec<_>>(),
            placed_hosts,
            fmt_opt(detect_host),
            fmt_opt(detect_all),
            fmt_opt(started),
            secs(total)
        );
        f.total.push(total);
        f.detect_host.extend(detect_host);
        f.detect_all.extend(detect_all);
        f.started.extend(started);
        f.moved.push(moved(&before_copies, &healed, Some(&ids[victim])) as f64);

        // Bring it back: once it is alive everywhere and sees the service, watch for 5 s.
        let t1 = Instant::now();
        lab.ok(&["start", &victim.to_string()])?;
        lab.wait_states(&all, &all, PeerState::Alive, Duration::from_secs(60)).await?;
        wait_settled(clients, &[victim], FAILOVER_SERVICE, PEERS as u32, false, Duration::from_secs(60)).await?;
        f.back.push(t1.elapsed());
        let mut worst = 0;
        let watch = Instant::now();
        while watch.elapsed() < Duration::from_secs(5) {
            let now = copies(&clients[viewer].get::<Vec<ReplicaInfo>>(&path).await?);
            worst = worst.max(moved(&healed, &now, None));
            tokio::time::sleep(POLL).await;
        }
        f.moved_on_return.push(worst as f64);
        // Spread out again (one per peer) for the next round.
        let t2 = Instant::now();
        let rebalance = format!("/v1/services/{FAILOVER_SERVICE}/rebalance");
        clients[viewer].send_json::<_, serde_json::Value>(hyper::Method::POST, &rebalance, &()).await?;
        wait_settled(clients, &all, FAILOVER_SERVICE, PEERS as u32, true, Duration::from_secs(60)).await?;
        f.rebalance.push(t2.elapsed());
        // The request is over (cleared) before the next round, or it would move the next victim's
        // replicas back when that one returns.
        let svc = format!("/v1/services/{FAILOVER_SERVICE}");
        let cleared = Instant::now();
        while clients[viewer].get::<shoal_types::ServiceInfo>(&svc).await?.spec.rebalance.is_some() {
            anyhow::ensure!(cleared.elapsed() < Duration::from_secs(30), "the rebalance request was never cleared");
            tokio::time::sleep(POLL).await;
        }
        eprintln!(
            "  run {r}: moved by the failover {}, on return {worst}; back {:.2} s, rebalanced {:.2} s",
            f.moved.last().copied().unwrap_or(0.0),
            secs(f.back.last().copied().unwrap_or_default()),
            secs(t2.elapsed())
        );
    }
    Ok(f)
}

fn count(xs: &[f64]) -> String {
    format!(
        "median {:.0}, max {:.0}, total {:.0} over {} rounds",
        median_f64(xs),
        xs.iter().copied().fold(0.0, f64::max),
        xs.iter().sum::<f64>(),
        xs.len()
    )
}

fn fmt_opt(d: Option<Duration>) -> String {
    d.map_or("not seen".into(), |d| format!("{:.2} s", secs(d)))
}

async fn startup(clients: &[Client]) -> anyhow::Result<Vec<Duration>> {
    let spec = ServiceSpec {
        name: STARTUP_SERVICE.into(),
        image: IMAGE.into(),
        replicas: STARTUP_REPLICAS,
        cmd: vec!["sh".into(), "-c".into(), TICKER.into()],
        max_unavailable: 1,
        ..Default::default()
    };
    let c = &clients[0];
    let mut times = Vec::new();
    for r in 0..STARTUP_RUNS {
        wait_no_containers(clients, Duration::from_secs(60)).await?;
        let t0 = Instant::now();
        c.send_json::<_, serde_json::Value>(hyper::Method::POST, "/v1/services", &spec).await?;
        wait_settled(clients, &[0], STARTUP_SERVICE, STARTUP_REPLICAS, false, Duration::from_secs(120)).await?;
        let took = t0.elapsed();
        eprintln!("  startup run {r}: {STARTUP_REPLICAS} running after {:.2} s", secs(took));
        times.push(took);
        remove(c, STARTUP_SERVICE).await?;
    }
    wait_no_containers(clients, Duration::from_secs(60)).await?;
    Ok(times)
}

async fn remove(c: &Client, service: &str) -> anyhow::Result<()> {
    let (status, _) = c.raw(hyper::Method::DELETE, &format!("/v1/services/{service}"), None).await?;
    anyhow::ensure!(status == 204, "service rm {service}: the agent answered {status}");
    Ok(())
}

/// Makes sure every peer holds the image (it does after the failover rounds; pulled if not).
async fn image_everywhere(lab: &TestLab, clients: &[Client]) -> anyhow::Result<()> {
    for (i, c) in clients.iter().enumerate() {
        let have = c.get::<Vec<ImageInfo>>("/v1/images").await?.iter().any(|im| im.reference == IMAGE);
        if !have {
            eprintln!("  peer {i} lacks {IMAGE}: pulling it");
            lab.ok(&["exec", &i.to_string(), "--", "shoal", "image", "pull", IMAGE])?;
        }
    }
    Ok(())
}

/// Median time of `shoal service ps --json` run through `lab exec`, for comparison with an API poll.
fn cli_poll_ms(lab: &TestLab, n: usize) -> anyhow::Result<f64> {
    let mut v = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        lab.ok(&["exec", "1", "--", "shoal", "service", "ps", FAILOVER_SERVICE, "--json"])?;
        v.push(secs(t.elapsed()) * 1000.0);
    }
    Ok(median_f64(&v))
}

struct Placing {
    replicas: usize,
    placed: usize,
    peers: usize,
    median: Duration,
}

fn placement() -> Placing {
    use shoal_scheduler::synth::{self, SplitMix64};
    let mut rng = SplitMix64::new(3);
    let peers = synth::peers(&mut rng, 1000);
    let services = synth::services(&mut rng, 1000, 10..=10);
    let replicas = services.iter().map(|s| s.replicas as usize).sum();
    let mut times = Vec::new();
    let mut placed = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let a = shoal_scheduler::place(services.iter().map(|s| (s.name.as_str(), s)), &peers, []);
        times.push(t.elapsed());
        placed = std::hint::black_box(a).placed.len();
    }
    let median = summarize(&times).map_or(Duration::ZERO, |s| s.median);
    Placing { replicas, placed, peers: peers.len(), median }
}

pub(crate) async fn run(runs: usize) -> anyhow::Result<()> {
    let lab = TestLab::up("bench-svc", PEERS, &["--peer-memory", "512m", "--peer-cpus", "1"])?;
    let all: Vec<usize> = (0..PEERS).collect();
    lab.wait_states(&all, &all, PeerState::Alive, Duration::from_secs(30)).await?;
    let ids = lab.ids()?;
    let clients: Vec<Client> = all.iter().map(|&i| lab.client(i)).collect();
    let archive = lab.root.path().join("busybox.tar");
    shoal_testkit::images::write_busybox_image(&archive, IMAGE, &[], serde_json::json!({"Env": ["PATH=/bin"]}));
    lab.ok(&["exec", "0", "--", "shoal", "image", "import", &archive.display().to_string()])?;

    println!(
        "== services: failover in a {PEERS}-peer lab (1 CPU, 512 MiB each), {PEERS} replicas one per peer, `lab kill --all` one, until {PEERS} run once each elsewhere"
    );
    let t = Instant::now();
    lab.ok(&[
        "exec",
        "1",
        "--",
        "shoal",
        "service",
        "create",
        "--name",
        FAILOVER_SERVICE,
        "--replicas",
        &PEERS.to_string(),
        IMAGE,
        "sh",
        "-c",
        TICKER,
    ])?;
    wait_settled(&clients, &all, FAILOVER_SERVICE, PEERS as u32, true, Duration::from_secs(120)).await?;
    println!("first placement (4 peers pull the image from peer 0): {:.2} s", secs(t.elapsed()));
    let f = failover(&lab, &clients, &ids, runs).await?;
    let cli_ms = cli_poll_ms(&lab, 10)?;
    println!("shoal failover:                        {}", summary(&f.total)?);
    println!("  victim marked dead at the new host:  {}", summary(&f.detect_host)?);
    println!("  ... at every live peer:              {}", summary(&f.detect_all)?);
    println!("  replacement running at its new host: {}", summary(&f.started)?);
    println!(
        "  => median detection {:.2} s, then start {:.2} s, then report gossip to the viewer {:.2} s",
        secs(summary(&f.detect_host)?.median),
        secs(summary(&f.started)?.median.saturating_sub(summary(&f.detect_host)?.median)),
        secs(summary(&f.total)?.median.saturating_sub(summary(&f.started)?.median))
    );
    println!(
        "  poll: every {} ms through the API, median request {:.1} ms (`lab exec .. service ps --json`: {:.0} ms); `lab kill --all` command {:.0} ms (clock starts before it)",
        POLL.as_millis(),
        median_f64(&f.api_poll),
        cli_ms,
        secs(summary(&f.kill_cmd)?.median) * 1000.0
    );
    println!("  healthy replicas moved by a failover: {} (target 0)", count(&f.moved));
    println!("restart -> the victim alive everywhere and seeing the service: {}", summary(&f.back)?);
    println!("  replicas moved by its return (watched 5 s): {} (target 0)", count(&f.moved_on_return));
    println!("`service rebalance` -> one replica per peer again: {}", summary(&f.rebalance)?);
    println!(
        "failover target <= 2.5 s: {}; references: Docker Swarm ~20 s, Nomad 20-30 s, Kubernetes minutes (defaults); ratio to Swarm's 20 s: {:.3}",
        if summary(&f.total)?.median <= Duration::from_millis(2500) { "met" } else { "MISSED" },
        secs(summary(&f.total)?.median) / 20.0
    );
    remove(&clients[0], FAILOVER_SERVICE).await?;

    println!(
        "== services: startup, `service create --replicas {STARTUP_REPLICAS}` (image on every peer) until {STARTUP_REPLICAS} run once each, seen from the creating peer"
    );
    image_everywhere(&lab, &clients).await?;
    let s = startup(&clients).await?;
    println!("shoal startup: {}", summary(&s)?);

    println!("== scheduler: shoal_scheduler::place, pure, one core");
    let p = tokio::task::spawn_blocking(placement).await?;
    let rate = p.replicas as f64 / secs(p.median).max(1e-9);
    println!(
        "{} replicas ({} placed) of 1000 services on {} peers: median of 5 {:.1} ms = {:.0} replicas/s",
        p.replicas,
        p.placed,
        p.peers,
        secs(p.median) * 1000.0,
        rate
    );
    println!(
        "Nomad C1M (5 servers): ~{NOMAD_C1M_PER_SEC:.0} placements/s; ratio shoal/nomad {:.1}; target >= 100,000/s: {}",
        rate / NOMAD_C1M_PER_SEC,
        if rate >= 100_000.0 { "met" } else { "MISSED" }
    );

    println!("== simulator: 1,000 peers, 300 services at rest, 100 peers killed at once");
    let sims = tokio::task::spawn_blocking(|| (1..=3).map(simulate).collect::<Vec<_>>()).await?;
    for (seed, (converged, real, stats)) in sims.iter().enumerate() {
        println!(
            "  seed {}: converged after {} simulated; {:.1} s of real time; {} replicas restarted, {} healthy moved, {} duplicates stopped",
            seed + 1,
            converged.map_or("never (60 s limit)".to_string(), |ms| format!("{:.2} s", ms as f64 / 1000.0)),
            secs(*real),
            stats.starts,
            stats.moves,
            stats.duplicates
        );
    }
    let times: Vec<f64> = sims.iter().filter_map(|(c, _, _)| c.map(|ms| ms as f64 / 1000.0)).collect();
    println!("simulated convergence: median {:.2} s over {} seeds", median_f64(&times), times.len());
    Ok(())
}

/// 1,000 peers and 300 services at rest, 100 killed at once: simulated ms to convergence, the
/// real time it took, and what happened to containers after the kill.
fn simulate(seed: u64) -> (Option<u64>, Duration, shoal_scheduler::sim::SimStats) {
    use shoal_scheduler::sim::{Sim, SimConfig};
    use shoal_scheduler::synth::{self, SplitMix64};
    let mut rng = SplitMix64::new(seed);
    let peers = synth::peers(&mut rng, 1000);
    let services = synth::services(&mut rng, 300, 1..=10);
    let mut sim = Sim::new(SimConfig { seed, ..SimConfig::default() }, peers);
    for s in services {
        sim.put(0, s);
    }
    sim.prime();
    let mut victims: Vec<usize> = (0..1000).collect();
    rng.shuffle(&mut victims);
    let t = Instant::now();
    for &v in &victims[..100] {
        sim.kill(v);
    }
    let converged = sim.run_until_converged(60_000);
    (converged, t.elapsed(), sim.stats().clone())
}
