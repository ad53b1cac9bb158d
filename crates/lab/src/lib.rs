//! `shoal lab`: a cluster of containerized peers on one machine.
//!
//! Each peer is a real `shoal agent` in its own network namespace (own IP, routes, ports), its
//! own data dir and its own cgroup (memory, pids and CPU limits), joined to the lab's switch
//! by a veth whose two directions are shaped with kernel `tc`. The lab can cut and heal the
//! network between groups of peers, reshape a link, kill and restart an agent, and run any
//! command inside a peer. Everything lives under the lab's directory, its namespaces and its
//! cgroups, so `down` can remove all of it even after a crash.
//!
//! Why iproute2 and not a netlink crate: `ip`/`tc` are what users inspect a lab with, their
//! errors are clear, and `ip netns` leaves namespaces where every tool finds them
//! (`/run/netns`). The lab's operations are rare and not on any hot path.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod cgroup;
mod cmd;
pub mod enter;
pub mod link;
pub mod net;
pub mod state;

pub use cmd::check_tools;
pub use link::LinkSpec;
pub use state::{LabState, PeerState};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Everything that can go wrong in the lab, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A tool is missing
    #[error("`{tool}` is not installed: install the Debian package {package} (or rerun with --install-deps)")]
    MissingTool { tool: String, package: String },
    /// A command failed
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    /// The kernel cannot emulate latency or loss
    #[error(
        "this kernel has no sch_netem (CONFIG_NET_SCH_NETEM), which --latency and --loss need: load the module with `modprobe sch_netem` or use a kernel that has it; --bandwidth works without it"
    )]
    NoNetem,
    /// Not root
    #[error("shoal lab needs root: it creates network namespaces, veths and cgroups")]
    NotRoot,
    /// A lab of that name exists
    #[error("lab `{name}` is already up with {peers} peers; run `shoal lab down{flag}` first, or pick another --name")]
    AlreadyUp { name: String, peers: usize, flag: String },
    /// No lab of that name
    #[error("no lab named `{name}` is up; start one with `shoal lab up`")]
    NotUp { name: String },
    /// Peer index out of range
    #[error("the lab has peers 0 to {max}; there is no peer {index}")]
    NoSuchPeer { index: usize, max: usize },
    /// The agent of a peer already runs
    #[error("peer {index}'s agent is already running (pid {pid})")]
    AlreadyRunning { index: usize, pid: i32 },
    /// A subnet that does not parse.
    #[error("`{0}` is not a subnet: use e.g. {DEFAULT_SUBNET}")]
    BadSubnet(String),
    /// A subnet prefix out of range.
    #[error("subnet prefix /{0} is out of range: use /8 to /28")]
    PrefixOutOfRange(u8),
    /// A subnet too small for the peers.
    #[error("subnet /{prefix} is too small for {peers} peers")]
    SubnetTooSmall { prefix: u8, peers: usize },
    /// A lab name that breaks the rule.
    #[error("lab name `{0}`: use 1-24 of a-z, 0-9 and -")]
    BadName(String),
    /// A peer count out of range.
    #[error("--peers {0}: use 1 to 250")]
    BadPeerCount(usize),
    /// A `--peer-memory` that does not parse.
    #[error("--peer-memory: {0}")]
    BadPeerMemory(#[from] shoal_types::ByteSizeError),
    /// A `--peer-cpus` that does not parse.
    #[error("--peer-cpus: {0}")]
    BadPeerCpus(#[from] shoal_types::ResourcesError),
    /// A partition naming a peer twice.
    #[error("peer {0} is in two groups")]
    InTwoGroups(usize),
    /// Processes that survive SIGKILL.
    #[error("processes {pids:?} of lab `{name}` would not die")]
    Unkillable { pids: Vec<i32>, name: String },
    /// A file could not be read or written
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The state file is damaged
    #[error("lab state {path} is damaged ({reason}); `shoal lab down` still cleans up")]
    BadState { path: PathBuf, reason: String },
}

/// How to bring a lab up.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub name: String,
    pub peers: usize,
    /// First address and prefix length, e.g. 198.18.0.0/24 (RFC 2544's benchmarking range).
    pub subnet: (Ipv4Addr, u8),
    pub link: LinkSpec,
    /// The `shoal` binary the peers run.
    pub shoal: PathBuf,
    /// Where labs live (`<root>/<name>`).
    pub root: PathBuf,
    pub peer_cpus: String,
    pub peer_memory: String,
    /// Peers find each other by mDNS instead of joining peer 0.
    pub mdns: bool,
    pub agent_args: Vec<String>,
    /// The last `workers` peers get a worker key (they run work but change no services).
    pub workers: usize,
}

/// Runs `shoal keygen ARGS` (the lab's operator key, or a worker key made from it).
fn keygen(shoal: &Path, args: &[&std::ffi::OsStr]) -> Result<(), LabError> {
    let out = Command::new(shoal)
        .arg("keygen")
        .args(args)
        .output()
        .map_err(|source| LabError::Io { path: shoal.to_path_buf(), source })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("shoal keygen {}", args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        });
    }
    Ok(())
}

/// The default lab subnet: inside 198.18.0.0/15, reserved for network benchmarking.
pub const DEFAULT_SUBNET: &str = "198.18.0.0/24";
/// The port every peer's agent listens on (each peer has its own namespace).
pub const PEER_PORT: u16 = 4100;
/// Host addresses start here (.10, .11, ...).
const FIRST_HOST: u32 = 10;

/// Parses `a.b.c.d/n`.
pub fn parse_subnet(s: &str) -> Result<(Ipv4Addr, u8), LabError> {
    let bad = || LabError::BadSubnet(s.to_string());
    let (ip, len) = s.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if !(8..=28).contains(&len) {
        return Err(LabError::PrefixOutOfRange(len));
    }
    let mask = u32::MAX << (32 - len);
    Ok((Ipv4Addr::from(u32::from(ip) & mask), len))
}

fn peer_ip(subnet: (Ipv4Addr, u8), i: usize) -> Result<Ipv4Addr, LabError> {
    let hosts = (1u64 << (32 - subnet.1)) - 1;
    let host = u64::from(FIRST_HOST) + i as u64;
    if host >= hosts {
        return Err(LabError::SubnetTooSmall { prefix: subnet.1, peers: i + 1 });
    }
    Ok(Ipv4Addr::from(u32::from(subnet.0) + host as u32))
}

/// Lab names become parts of namespace and cgroup names.
pub fn validate_name(name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= 24
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if ok { Ok(()) } else { Err(LabError::BadName(name.to_string())) }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// What `down` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DownReport {
    pub processes: usize,
    pub namespaces: Vec<String>,
    pub cgroups: usize,
    pub mounts: usize,
    pub dir_removed: bool,
}

/// A lab that is up.
pub struct Lab {
    pub state: LabState,
}

fn name_flag(name: &str) -> String {
    if name == "lab" { String::new() } else { format!(" --name {name}") }
}

impl Lab {
    /// Creates the network, cgroups and data dirs, and starts every agent. On failure,
    /// everything created so far is removed again.
    pub fn up(o: UpOptions) -> Result<Lab, LabError> {
        if !is_root() {
            return Err(LabError::NotRoot);
        }
        validate_name(&o.name)?;
        if o.peers == 0 || o.peers > 250 {
            return Err(LabError::BadPeerCount(o.peers));
        }
        for i in 0..o.peers {
            peer_ip(o.subnet, i)?;
        }
        let dir = o.root.join(&o.name);
        if let Ok(Some(existing)) = LabState::load(&dir) {
            let running = existing.peers.iter().filter(|p| is_running(&existing, p.index)).count();
            if running > 0 || !net::lab_namespaces(&o.name).is_empty() {
                return Err(LabError::AlreadyUp {
                    name: o.name.clone(),
                    peers: existing.peers.len(),
                    flag: name_flag(&o.name),
                });
            }
        }
        if !net::lab_namespaces(&o.name).is_empty() {
            return Err(LabError::AlreadyUp { name: o.name.clone(), peers: 0, flag: name_flag(&o.name) });
        }
        // Leftovers of a crashed lab of the same name (no namespaces, no processes) go first.
        Lab::down(&o.root, &o.name)?;
        match Self::build(&o, &dir) {
            Ok(lab) => Ok(lab),
            Err(e) => {
                let _ = Lab::down(&o.root, &o.name);
                Err(e)
            }
        }
    }

    fn build(o: &UpOptions, dir: &Path) -> Result<Lab, LabError> {
        std::fs::create_dir_all(dir).map_err(|source| LabError::Io { path: dir.to_path_buf(), source })?;
        let key = dir.join("cluster.key");
        keygen(&o.shoal, &["-o".as_ref(), key.as_os_str()])?;
        if o.workers > 0 {
            keygen(
                &o.shoal,
                &["--worker".as_ref(), key.as_os_str(), "-o".as_ref(), dir.join("worker.key").as_os_str()],
            )?;
        }
        net::create_hub(&o.name)?;
        if o.link.needs_netem() {
            net::probe_netem(&o.name)?;
        }
        let memory = o.peer_memory.parse::<shoal_types::ByteSize>()?.0;
        let millicpus = shoal_types::Resources::parse_cpus(&o.peer_cpus)?;
        let mut peers = Vec::new();
        for i in 0..o.peers {
            let ip = peer_ip(o.subnet, i)?;
            net::create_peer(&o.name, i, ip, o.subnet.1)?;
            net::apply_link(&o.name, i, &o.link)?;
            // The agent itself needs headroom above what it offers to workloads.
            let limits = cgroup::PeerLimits { memory_bytes: memory + (512 << 20), millicpus, pids: 16384 };
            cgroup::create_peer(&o.name, i, limits)?;
            let pdir = dir.join(format!("peer-{i}"));
            std::fs::create_dir_all(&pdir).map_err(|source| LabError::Io { path: pdir, source })?;
            peers.push(PeerState { index: i, ip, pid: None, id: None, link: o.link.clone() });
        }
        let mut lab = Lab {
            state: LabState {
                name: o.name.clone(),
                dir: dir.to_path_buf(),
                subnet_prefix: o.subnet.1,
                shoal: o.shoal.clone(),
                port: PEER_PORT,
                peer_cpus: o.peer_cpus.clone(),
                peer_memory: o.peer_memory.clone(),
                mdns: o.mdns,
                agent_args: o.agent_args.clone(),
                workers: o.workers.min(o.peers),
                peers,
                groups: None,
            },
        };
        lab.state.save()?;
        for i in 0..o.peers {
            lab.start(i)?;
        }
        Ok(lab)
    }

    /// Opens the lab `name` under `root`.
    pub fn open(root: &Path, name: &str) -> Result<Lab, LabError> {
        validate_name(name)?;
        match LabState::load(&root.join(name))? {
            Some(state) => Ok(Lab { state }),
            None => Err(LabError::NotUp { name: name.to_string() }),
        }
    }

    fn check_index(&self, i: usize) -> Result<(), LabError> {
        if i < self.state.peers.len() {
            Ok(())
        } else {
            Err(LabError::NoSuchPeer { index: i, max: self.state.peers.len().saturating_sub(1) })
        }
    }

    pub fn peer_dir(&self, i: usize) -> PathBuf {
        self.state.dir.join(format!("peer-{i}"))
    }

    /// The API socket of peer `i`'s agent.
    pub fn socket(&self, i: usize) -> PathBuf {
        self.peer_dir(i).join("shoal.sock")
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.peer_dir(i).join("agent.log")
    }

    pub fn netns(&self, i: usize) -> PathBuf {
        net::netns_path(&net::peer_ns(&self.state.name, i))
    }

    /// Whether peer `i`'s agent runs.
    pub fn is_running(&self, i: usize) -> bool {
        is_running(&self.state, i)
    }

    fn enter_command(&self, i: usize, cgroups: &[PathBuf]) -> Command {
        let mut c = Command::new(&self.state.shoal);
        c.arg("__enter").arg("--netns").arg(self.netns(i));
        for cg in cgroups {
            c.arg("--cgroup").arg(cg);
        }
        c.arg("--");
        c
    }

    /// Whether peer `i` holds a worker key (the last `workers` peers do).
    pub fn is_worker(&self, i: usize) -> bool {
        i + self.state.workers >= self.state.peers.len()
    }

    /// Starts peer `i`'s agent (same identity and data as before, if it ran already).
    pub fn start(&mut self, i: usize) -> Result<(), LabError> {
        self.check_index(i)?;
        if let Some(pid) = self.state.peers[i].pid.filter(|_| self.is_running(i)) {
            return Err(LabError::AlreadyRunning { index: i, pid });
        }
        let dir = self.peer_dir(i);
        let log_path = self.log_path(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| LabError::Io { path: log_path.clone(), source })?;
        let err_log = log.try_clone().map_err(|source| LabError::Io { path: log_path.clone(), source })?;
        let mut c = self.enter_command(i, &cgroup::peer_dirs(&self.state.name, i));
        c.arg(&self.state.shoal)
            .arg("agent")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--name", &format!("peer-{i}")])
            .args(["--listen", &format!("/ip4/0.0.0.0/tcp/{}", self.state.port)])
            .arg("--cluster-key")
            .arg(self.state.dir.join(if self.is_worker(i) { "worker.key" } else { "cluster.key" }))
            .args(["--cpus", &self.state.peer_cpus, "--memory", &self.state.peer_memory]);
        if self.state.mdns {
            c.arg("--mdns");
        } else if i != 0 {
            c.args(["--join", &format!("{}:{}", self.state.peers[0].ip, self.state.port)]);
        }
        c.args(&self.state.agent_args)
            .env_remove("SHOAL_ADDR")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .process_group(0);
        let mut child = c.spawn().map_err(|source| LabError::Io { path: self.state.shoal.clone(), source })?;
        let pid = child.id() as i32;
        // `__enter` joins the cgroups before it execs the agent; wait for that, so that
        // `is_running` (which checks the cgroup, against pid reuse) is true from here on.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cgroup::pid_in_peer(pid, &self.state.name, i) {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(LabError::Command {
                    cmd: format!("starting peer {i}'s agent"),
                    stderr: format!("it exited with {status}; see {}", log_path.display()),
                });
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.state.peers[i].pid = Some(pid);
        // The child is reparented to init when this process exits; nobody waits on it here.
        drop(child);
        self.state.save()
    }

    /// SIGKILLs peer `i`'s agent (its containers, if any, keep running).
    pub fn kill(&mut self, i: usize) -> Result<(), LabError> {
        self.check_index(i)?;
        if let Some(pid) = self.state.peers[i].pid.filter(|_| self.is_running(i)) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            wait_gone(pid, Duration::from_secs(5));
        }
        self.state.peers[i].pid = None;
        self.state.save()
    }

    /// SIGKILLs everything of peer `i`: its agent, its containers' supervisors and the
    /// containers (like a machine losing power). Their leftovers are cleaned when the peer's
    /// agent starts again, or by `lab down`.
    pub fn kill_all(&mut self, i: usize) -> Result<(), LabError> {
        self.kill(i)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids: Vec<i32> =
                cgroup::peer_dirs(&self.state.name, i).iter().flat_map(|d| cgroup::procs_below(d)).collect();
            if pids.is_empty() || Instant::now() > deadline {
                return Ok(());
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERMs peer `i`'s agent (a graceful leave) and waits for it to exit.
    pub fn stop(&mut self, i: usize) -> Result<(), LabError> {
        self.check_index(i)?;
        if let Some(pid) = self.state.peers[i].pid.filter(|_| self.is_running(i)) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            if !wait_gone(pid, Duration::from_secs(10)) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                wait_gone(pid, Duration::from_secs(5));
            }
        }
        self.state.peers[i].pid = None;
        self.state.save()
    }

    /// Cuts the network between `groups` (peers in none form one more group).
    pub fn partition(&mut self, groups: Vec<Vec<usize>>) -> Result<(), LabError> {
        let mut seen = std::collections::HashSet::new();
        for g in &groups {
            for &i in g {
                self.check_index(i)?;
                if !seen.insert(i) {
                    return Err(LabError::InTwoGroups(i));
                }
            }
        }
        net::partition(&self.state.name, self.state.peers.len(), &groups)?;
        self.state.groups = Some(groups);
        self.state.save()
    }

    /// Removes every cut.
    pub fn heal(&mut self) -> Result<(), LabError> {
        net::heal(&self.state.name, self.state.peers.len())?;
        self.state.groups = None;
        self.state.save()
    }

    /// Reshapes peer `i`'s link.
    pub fn set_link(&mut self, i: usize, link: LinkSpec) -> Result<(), LabError> {
        self.check_index(i)?;
        net::apply_link(&self.state.name, i, &link)?;
        self.state.peers[i].link = link;
        self.state.save()
    }

    /// Runs `cmd` inside peer `i`'s network namespace with `SHOAL_ADDR` set to its agent.
    pub fn exec(&self, i: usize, cmd: &[String]) -> Result<ExitStatus, LabError> {
        self.check_index(i)?;
        let mut c = self.enter_command(i, &[]);
        c.args(cmd).env("SHOAL_ADDR", self.socket(i));
        if let Some(bin_dir) = self.state.shoal.parent() {
            let path = std::env::var("PATH").unwrap_or_default();
            c.env("PATH", format!("{}:{path}", bin_dir.display()));
        }
        c.status().map_err(|source| LabError::Io { path: self.state.shoal.clone(), source })
    }

    /// Records the peer id an agent reported.
    pub fn set_peer_id(&mut self, i: usize, id: String) -> Result<(), LabError> {
        self.check_index(i)?;
        if self.state.peers[i].id.as_deref() != Some(id.as_str()) {
            self.state.peers[i].id = Some(id);
            self.state.save()?;
        }
        Ok(())
    }

    /// Removes the lab `name`: every process in its cgroups, its namespaces (and so its veths
    /// and bridges), its cgroups, any mount under its directory, and the directory. Works on a
    /// lab whose processes were killed or whose state file is gone; does nothing if nothing
    /// is left.
    pub fn down(root: &Path, name: &str) -> Result<DownReport, LabError> {
        validate_name(name)?;
        if !is_root() {
            return Err(LabError::NotRoot);
        }
        let dir = root.join(name);
        let mut report = DownReport::default();
        // 1. Processes: the state's pids (if still ours) and everything in the lab's cgroups.
        let mut killed = std::collections::BTreeSet::new();
        if let Ok(Some(st)) = LabState::load(&dir) {
            for p in &st.peers {
                if let Some(pid) = p.pid.filter(|_| is_running(&st, p.index)) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    killed.insert(pid);
                }
            }
        }
        let cg_dirs = cgroup::lab_dirs(name);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids: std::collections::BTreeSet<i32> = cg_dirs.iter().flat_map(|d| cgroup::procs_below(d)).collect();
            if pids.is_empty() {
                break;
            }
            for pid in &pids {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            killed.extend(pids.iter().copied());
            if Instant::now() > deadline {
                return Err(LabError::Unkillable { pids: pids.iter().copied().collect(), name: name.to_string() });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        report.processes = killed.len();
        // 2. Mounts under the lab dir (container root filesystems a killed agent left).
        report.mounts = unmount_below(&dir);
        // 3. Namespaces, and with them veths and bridges; also the namespaces of the peers'
        // containers (their supervisors were killed above, so nobody else removes them).
        report.namespaces = net::delete_namespaces(name);
        report.namespaces.extend(delete_container_namespaces(&dir));
        // 4. Cgroups.
        for d in &cg_dirs {
            report.cgroups += 1;
            cgroup::remove_tree(d)?;
        }
        // 5. The directory.
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|source| LabError::Io { path: dir.clone(), source })?;
            report.dir_removed = true;
        }
        Ok(report)
    }
}

/// Deletes the network namespaces named in the container directories under `dir`
/// (`*/runtime/containers/*/meta.json`, field `net.netns`); returns their names.
fn delete_container_namespaces(dir: &Path) -> Vec<String> {
    let mut n = Vec::new();
    let Ok(peers) = std::fs::read_dir(dir) else { return n };
    for peer in peers.flatten() {
        let Ok(containers) = std::fs::read_dir(peer.path().join("runtime/containers")) else { continue };
        for c in containers.flatten() {
            let Ok(text) = std::fs::read_to_string(c.path().join("meta.json")) else { continue };
            let Ok(meta) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
            if let Some(ns) = meta["net"]["netns"].as_str()
                && !ns.contains('/')
                && Path::new("/run/netns").join(ns).exists()
            {
                cmd::run_quiet("ip", &["netns", "del", ns]);
                n.push(ns.to_string());
            }
        }
    }
    n
}

fn is_running(st: &LabState, i: usize) -> bool {
    let Some(pid) = st.peers.get(i).and_then(|p| p.pid) else { return false };
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').and_then(|p| s.get(p + 2..p + 3)).map(|st| st != "Z" && st != "X"))
        .unwrap_or(false);
    alive && cgroup::pid_in_peer(pid, &st.name, i)
}

/// Waits for a process to disappear (or become a zombie); true if it did.
fn wait_gone(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let gone = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rfind(')').and_then(|p| s.get(p + 2..p + 3)).is_some_and(|st| st == "Z" || st == "X"))
            .unwrap_or(true);
        if gone {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lazily unmounts every mount point at or below `dir`, deepest first; returns how many.
fn unmount_below(dir: &Path) -> usize {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return 0 };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    let n = points.len();
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_and_addresses() {
        let s = parse_subnet("198.18.0.7/24").unwrap();
        assert_eq!(s, (Ipv4Addr::new(198, 18, 0, 0), 24));
        assert_eq!(peer_ip(s, 0).unwrap(), Ipv4Addr::new(198, 18, 0, 10));
        assert_eq!(peer_ip(s, 244).unwrap(), Ipv4Addr::new(198, 18, 0, 254));
        assert!(peer_ip(s, 245).is_err());
        assert!(parse_subnet("198.18.0.0").is_err() && parse_subnet("198.18.0.0/30").is_err());
    }

    #[test]
    fn names() {
        assert!(validate_name("lab").is_ok() && validate_name("t-3").is_ok());
        assert!(validate_name("").is_err() && validate_name("Lab").is_err() && validate_name("a/b").is_err());
    }
}
