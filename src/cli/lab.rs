//! `shoal lab`: bring up, inspect, break and tear down a cluster of containerized peers.

use super::output::{Table, print_json};
use anyhow::{Context, bail};
use shoal_api::client::Client;
use shoal_lab::link::{parse_bandwidth, parse_latency, parse_loss};
use shoal_lab::{Lab, LinkSpec, UpOptions};
use shoal_types::{AgentStatus, PeerInfo};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Which lab (several can run side by side).
    #[arg(long, global = true, default_value = "lab", env = "SHOAL_LAB")]
    name: String,
    /// Where labs keep their state, data and logs [default: /var/lib/shoal/labs].
    #[arg(long, global = true, env = "SHOAL_LAB_ROOT")]
    root: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Start a lab: one agent per peer, each in its own network namespace and cgroup.
    Up(UpArgs),
    /// Each peer: index, id, name, IP, state, link settings.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a peer's network namespace (SHOAL_ADDR points at its agent).
    Exec {
        index: usize,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// SIGKILL a peer's agent (with --all, also its containers: a machine losing power).
    Kill {
        index: usize,
        /// Kill the peer's containers and their supervisors too.
        #[arg(long)]
        all: bool,
    },
    /// SIGTERM a peer's agent (it leaves the cluster gracefully).
    Stop { index: usize },
    /// Start a peer's agent again (same id, same data).
    Start { index: usize },
    /// Cut the network between groups of peers, e.g. `0,1,2 3,4`.
    Partition {
        #[arg(required = true)]
        groups: Vec<String>,
    },
    /// Remove every cut.
    Heal,
    /// Reshape one peer's link while it runs.
    Link(LinkArgs),
    /// Show a peer's agent log.
    Logs {
        index: usize,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
    },
    /// Remove every namespace, veth, bridge, cgroup, process and mount of the lab.
    Down,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Number of peers.
    #[arg(long, default_value_t = 4)]
    peers: usize,
    #[command(flatten)]
    link: LinkFlags,
    /// Address range inside the lab.
    #[arg(long, default_value = shoal_lab::DEFAULT_SUBNET)]
    subnet: String,
    /// CPUs each peer offers (and its cgroup allows).
    #[arg(long, default_value = "1")]
    peer_cpus: String,
    /// Memory each peer offers (its cgroup allows 512 MiB more for the agent itself).
    #[arg(long, default_value = "1g")]
    peer_memory: String,
    /// Peers find each other with mDNS instead of joining peer 0.
    #[arg(long)]
    mdns: bool,
    /// Install missing tools (iproute2) with apt.
    #[arg(long)]
    install_deps: bool,
    /// Extra argument for every agent, repeatable.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
    /// Give the last N peers a worker key (`shoal keygen --worker`): they run replicas and
    /// serve content, but cannot change services.
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

#[derive(Debug, clap::Args)]
struct LinkFlags {
    /// Bandwidth of each peer's link, each direction: e.g. 50mbit.
    #[arg(long)]
    bandwidth: Option<String>,
    /// One-way delay, e.g. 20ms (needs the kernel's sch_netem).
    #[arg(long)]
    latency: Option<String>,
    /// Packet loss, e.g. 0.5% (needs the kernel's sch_netem).
    #[arg(long)]
    loss: Option<String>,
}

#[derive(Debug, clap::Args)]
struct LinkArgs {
    index: usize,
    #[command(flatten)]
    link: LinkFlags,
}

impl LinkFlags {
    /// The spec these flags give, starting from `base` (flags not given keep base's values).
    fn spec(&self, base: LinkSpec) -> anyhow::Result<LinkSpec> {
        let mut s = base;
        if let Some(b) = &self.bandwidth {
            s.bandwidth_bps = parse_bandwidth(b)?;
        }
        if let Some(l) = &self.latency {
            s.latency_us = parse_latency(l)?;
        }
        if let Some(l) = &self.loss {
            s.loss_pct = parse_loss(l)?;
        }
        Ok(s)
    }
}

fn root(args: &Args) -> PathBuf {
    args.root.clone().unwrap_or_else(|| PathBuf::from("/var/lib/shoal/labs"))
}

/// One row of `lab status --json`.
#[derive(Debug, serde::Serialize)]
struct PeerRow {
    index: usize,
    id: Option<String>,
    name: String,
    ip: String,
    /// running or stopped (the agent process).
    state: &'static str,
    /// How the rest of the cluster sees it: alive, suspect, dead, left (null if no peer runs).
    cluster_state: Option<String>,
    pid: Option<i32>,
    link: LinkSpec,
    group: Option<usize>,
    socket: PathBuf,
    log: PathBuf,
}

async fn agent_status(lab: &Lab, i: usize) -> Option<AgentStatus> {
    let c = Client::new(&lab.socket(i).display().to_string(), None).ok()?;
    c.get("/v1/status").await.ok()
}

async fn view_from(lab: &Lab, i: usize) -> Option<Vec<PeerInfo>> {
    let c = Client::new(&lab.socket(i).display().to_string(), None).ok()?;
    c.get("/v1/peers").await.ok()
}

async fn rows(lab: &mut Lab) -> anyhow::Result<Vec<PeerRow>> {
    let n = lab.state.peers.len();
    for i in 0..n {
        if lab.is_running(i)
            && let Some(s) = agent_status(lab, i).await
        {
            lab.set_peer_id(i, s.id)?;
        }
    }
    let mut out = Vec::new();
    for i in 0..n {
        let running = lab.is_running(i);
        // The cluster's verdict, from the first other running peer.
        let mut cluster_state = None;
        if let Some(id) = &lab.state.peers[i].id {
            for j in (0..n).filter(|&j| j != i && lab.is_running(j)) {
                if let Some(view) = view_from(lab, j).await {
                    cluster_state = view.iter().find(|p| &p.id == id).map(|p| p.state.to_string());
                    break;
                }
            }
        }
        let p = &lab.state.peers[i];
        out.push(PeerRow {
            index: i,
            id: p.id.clone(),
            name: format!("peer-{i}"),
            ip: p.ip.to_string(),
            state: if running { "running" } else { "stopped" },
            cluster_state,
            pid: if running { p.pid } else { None },
            link: p.link.clone(),
            group: lab.state.groups.as_ref().and_then(|g| g.iter().position(|g| g.contains(&i)).map(|k| k + 1)),
            socket: lab.socket(i),
            log: lab.log_path(i),
        });
    }
    Ok(out)
}

fn print_rows(rows: &[PeerRow]) {
    let mut t = Table::new(&["INDEX", "NAME", "IP", "ID", "AGENT", "CLUSTER", "LINK", "GROUP"]);
    for r in rows {
        t.row(vec![
            r.index.to_string(),
            r.name.clone(),
            r.ip.clone(),
            r.id.clone().unwrap_or_else(|| "-".into()),
            r.state.to_string(),
            r.cluster_state.clone().unwrap_or_else(|| "-".into()),
            r.link.to_string(),
            r.group.map_or("-".into(), |g| g.to_string()),
        ]);
    }
    t.print();
}

/// Waits until every running peer answers its API.
async fn wait_ready(lab: &mut Lab, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    for i in 0..lab.state.peers.len() {
        loop {
            if let Some(s) = agent_status(lab, i).await {
                lab.set_peer_id(i, s.id)?;
                break;
            }
            if !lab.is_running(i) {
                bail!("peer {i}'s agent exited; see `shoal lab logs {i}`:\n{}", tail_of(&lab.log_path(i), 15));
            }
            if Instant::now() > deadline {
                bail!("peer {i}'s agent did not answer within {within:?}; see `shoal lab logs {i}`");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Waits (bounded) until every peer sees every other alive; the status table shows the rest.
async fn wait_formed(lab: &Lab, within: Duration) {
    let n = lab.state.peers.len();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let mut formed = true;
        for i in 0..n {
            let alive = view_from(lab, i)
                .await
                .map_or(0, |v| v.iter().filter(|p| p.state == shoal_types::PeerState::Alive).count());
            if alive < n {
                formed = false;
                break;
            }
        }
        if formed {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tail_of(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn parse_groups(groups: &[String]) -> anyhow::Result<Vec<Vec<usize>>> {
    groups
        .iter()
        .map(|g| {
            g.split(',')
                .map(|i| {
                    i.trim().parse::<usize>().with_context(|| format!("`{g}` is not a list of peer indexes like 0,1,2"))
                })
                .collect()
        })
        .collect()
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let root = root(&args);
    let name = args.name.clone();
    match args.cmd {
        Cmd::Up(up) => {
            shoal_lab::check_tools(up.install_deps)?;
            let link = up.link.spec(LinkSpec::default())?;
            let t0 = Instant::now();
            let mut lab = Lab::up(UpOptions {
                name: name.clone(),
                peers: up.peers,
                subnet: shoal_lab::parse_subnet(&up.subnet)?,
                link,
                shoal: std::env::current_exe().context("locating the shoal binary")?,
                root,
                peer_cpus: up.peer_cpus,
                peer_memory: up.peer_memory,
                mdns: up.mdns,
                agent_args: up.agent_args,
                workers: up.workers,
            })?;
            wait_ready(&mut lab, Duration::from_secs(60)).await?;
            wait_formed(&lab, Duration::from_secs(60)).await;
            let rows = rows(&mut lab).await?;
            print_rows(&rows);
            eprintln!(
                "lab `{name}` is up: {} peers in {:.1} s. Try: shoal lab exec 0 -- shoal peers",
                rows.len(),
                t0.elapsed().as_secs_f64()
            );
        }
        Cmd::Status { json } => {
            let mut lab = Lab::open(&root, &name)?;
            let rows = rows(&mut lab).await?;
            if json {
                print_json(&rows)?;
            } else {
                print_rows(&rows);
            }
        }
        Cmd::Exec { index, cmd } => {
            let lab = Lab::open(&root, &name)?;
            let status = lab.exec(index, &cmd)?;
            return Ok(ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8));
        }
        Cmd::Kill { index, all: false } => Lab::open(&root, &name)?.kill(index)?,
        Cmd::Kill { index, all: true } => Lab::open(&root, &name)?.kill_all(index)?,
        Cmd::Stop { index } => Lab::open(&root, &name)?.stop(index)?,
        Cmd::Start { index } => {
            let mut lab = Lab::open(&root, &name)?;
            lab.start(index)?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while agent_status(&lab, index).await.is_none() {
                if Instant::now() > deadline || !lab.is_running(index) {
                    bail!("peer {index}'s agent did not come up; see `shoal lab logs {index}`");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Cmd::Partition { groups } => Lab::open(&root, &name)?.partition(parse_groups(&groups)?)?,
        Cmd::Heal => Lab::open(&root, &name)?.heal()?,
        Cmd::Link(l) => {
            let mut lab = Lab::open(&root, &name)?;
            if l.index >= lab.state.peers.len() {
                bail!(
                    "the lab has peers 0 to {}; there is no peer {}",
                    lab.state.peers.len().saturating_sub(1),
                    l.index
                );
            }
            let spec = l.link.spec(lab.state.peers[l.index].link.clone())?;
            lab.set_link(l.index, spec.clone())?;
            eprintln!("peer {}: {}", l.index, spec);
        }
        Cmd::Logs { index, follow, tail } => {
            let lab = Lab::open(&root, &name)?;
            if index >= lab.state.peers.len() {
                bail!("the lab has peers 0 to {}; there is no peer {index}", lab.state.peers.len().saturating_sub(1));
            }
            let path = lab.log_path(index);
            print!(
                "{}",
                match tail {
                    Some(n) => tail_of(&path, n) + "\n",
                    None => std::fs::read_to_string(&path).unwrap_or_default(),
                }
            );
            if follow {
                let mut pos = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    if len > pos {
                        let bytes = std::fs::read(&path).unwrap_or_default();
                        print!("{}", String::from_utf8_lossy(bytes.get(pos as usize..).unwrap_or_default()));
                        pos = len;
                    }
                }
            }
        }
        Cmd::Down => {
            let r = Lab::down(&root, &name)?;
            if r == shoal_lab::DownReport::default() {
                eprintln!("lab `{name}`: nothing to remove");
            } else {
                eprintln!(
                    "lab `{name}` removed: {} processes, {} namespaces, {} cgroup trees, {} mounts",
                    r.processes,
                    r.namespaces.len(),
                    r.cgroups,
                    r.mounts
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of the hidden `shoal __enter`.
#[derive(Debug, clap::Args)]
pub(crate) struct EnterArgs {
    #[arg(long)]
    netns: PathBuf,
    #[arg(long)]
    cgroup: Vec<PathBuf>,
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

/// Runs before any async runtime exists (setns must happen in a single-threaded process).
pub(crate) fn enter(a: &EnterArgs) -> ExitCode {
    let err = shoal_lab::enter::enter_and_exec(&a.netns, &a.cgroup, &a.cmd);
    eprintln!("error: {err}");
    ExitCode::from(126)
}
