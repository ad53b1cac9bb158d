//! End-to-end harness: start real `shoal agent` processes on loopback and drive them through
//! the real API client.
//!
//! Every agent is a child process with its own data dir under one temporary directory and its
//! log in `<dir>/<name>.log`. Dropping an [`Agent`] kills it, dropping a [`Cluster`] removes the
//! directory, so a failing test leaves nothing running. [`eventually`] polls a condition with a
//! deadline instead of sleeping.
#![allow(clippy::unwrap_used)]

pub mod browser;
pub mod containers;
pub mod images;
pub mod lab;
pub mod noise;
pub mod registry;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shoal_api::client::Client;
use shoal_types::{AgentStatus, PeerInfo, PeerState};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `shoal` binary under test: `SHOAL_BIN`, else the one next to the test executable.
pub fn shoal_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SHOAL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("shoal")
}

/// A TCP port on 127.0.0.1 that was free a moment ago (another process may take it before the
/// caller binds it).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The cluster subnet of test agents started without network settings of their own.
pub const PLAIN_AGENT_POOL: &str = "198.19.224.0/20";

/// How to start one agent.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub name: String,
    pub cluster_key: Option<PathBuf>,
    pub join: Vec<String>,
    pub extra: Vec<String>,
    /// `--log-level` (tests log the overlay at debug; benchmarks keep the default).
    pub log_level: String,
    /// `--listen` [default: a free port on 127.0.0.1].
    pub listen: Option<String>,
    /// Another `shoal` binary [default: [`shoal_bin`]], e.g. an older build for a before/after
    /// benchmark; flags it does not know are left out of the defaults this kit adds.
    pub bin: Option<PathBuf>,
    /// Extra environment variables for the agent process.
    pub env: Vec<(String, String)>,
}

impl AgentSpec {
    pub fn new(name: &str) -> Self {
        AgentSpec {
            name: name.to_string(),
            cluster_key: None,
            join: vec![],
            extra: vec![],
            log_level: "info,shoal_overlay=debug".to_string(),
            listen: None,
            bin: None,
            env: Vec::new(),
        }
    }
}

/// A running (or stopped) agent process.
pub struct Agent {
    pub spec: AgentSpec,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    listen: String,
}

impl Agent {
    /// Starts an agent with its data under `root/<name>`.
    pub fn start(root: &Path, spec: AgentSpec) -> anyhow::Result<Agent> {
        let dir = root.join(&spec.name);
        std::fs::create_dir_all(&dir)?;
        let mut a = Agent {
            socket: dir.join("shoal.sock"),
            log: root.join(format!("{}.log", spec.name)),
            dir,
            child: None,
            listen: spec.listen.clone().unwrap_or_else(|| "/ip4/127.0.0.1/tcp/0".to_string()),
            spec,
        };
        a.spawn()?;
        Ok(a)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let bin = self.spec.bin.clone().unwrap_or_else(shoal_bin);
        // An older binary may predate some of the defaults below.
        let help = self.spec.bin.as_ref().map(|b| {
            Command::new(b)
                .args(["agent", "--help"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        });
        let knows = |flag: &str| help.as_ref().is_none_or(|h| h.contains(flag));
        let mut cmd = Command::new(&bin);
        cmd.arg("agent")
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--name")
            .arg(&self.spec.name)
            .arg("--listen")
            .arg(&self.listen)
            .args(["--cpus", "1", "--memory", "1g", "--log-level", &self.spec.log_level])
            .env_remove("RUST_LOG")
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(k) = &self.spec.cluster_key {
            cmd.arg("--cluster-key").arg(k);
        }
        for j in &self.spec.join {
            cmd.arg("--join").arg(j);
        }
        // Agents of parallel tests share the host's network namespace. One that brings no
        // network settings of its own claims its subnet from a range the container hosts'
        // slots (198.19.20-219.0/24, see `containers`) never use, so its routes cannot cover
        // another test's containers.
        if !self.spec.extra.iter().any(|a| a == "--cluster-subnet" || a == "--container-subnet") {
            cmd.args(["--cluster-subnet", PLAIN_AGENT_POOL]);
        }
        // Likewise the metrics endpoint and the registry mirror: off unless a test asks for one
        // on its own port.
        for flag in ["--metrics-listen", "--mirror-listen"] {
            if !self.spec.extra.iter().any(|a| a == flag) && knows(flag) {
                cmd.args([flag, "off"]);
            }
        }
        cmd.args(&self.spec.extra);
        self.child = Some(cmd.spawn().with_context(|| format!("starting {}", bin.display()))?);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The API client for this agent.
    pub fn client(&self) -> Client {
        Client::new(&self.socket.display().to_string(), None).unwrap()
    }

    /// Waits until the agent answers its API; fails early if it exited.
    pub async fn ready(&mut self) -> anyhow::Result<AgentStatus> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("agent {} exited with {status}; log:\n{}", self.spec.name, self.log_text());
            }
            if let Ok(s) = self.client().get::<AgentStatus>("/v1/status").await {
                // Pin the port for restarts: the same address after a restart, like a real host.
                if let Some(a) = s.listen_addrs.iter().find(|a| a.contains("/tcp/")) {
                    self.listen = a.split("/p2p/").next().unwrap_or(a).to_string();
                }
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("agent {} did not answer within 20 s; log:\n{}", self.spec.name, self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn status(&self) -> anyhow::Result<AgentStatus> {
        Ok(self.client().get("/v1/status").await?)
    }

    pub async fn peers(&self) -> anyhow::Result<Vec<PeerInfo>> {
        Ok(self.client().get("/v1/peers").await?)
    }

    /// The address others join through (with `/p2p/<id>`).
    pub async fn join_addr(&self) -> anyhow::Result<String> {
        let s = self.status().await?;
        s.listen_addrs.into_iter().find(|a| a.contains("/tcp/")).context("agent has no TCP address")
    }

    fn signal_and_wait(&mut self, sig: Signal, timeout: Duration) -> anyhow::Result<()> {
        let Some(mut c) = self.child.take() else { return Ok(()) };
        let _ = kill(Pid::from_raw(c.id() as i32), sig);
        let deadline = Instant::now() + timeout;
        loop {
            if c.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("agent {} did not exit within {timeout:?} of {sig}", self.spec.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the peer vanishes without a word.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.signal_and_wait(Signal::SIGKILL, Duration::from_secs(5))
    }

    /// SIGTERM: the peer leaves gracefully.
    pub fn terminate(&mut self) -> anyhow::Result<()> {
        self.signal_and_wait(Signal::SIGTERM, Duration::from_secs(10))
    }

    /// Starts the agent again with the same data dir and address.
    pub async fn restart(&mut self) -> anyhow::Result<AgentStatus> {
        self.spawn()?;
        self.ready().await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Several agents sharing one temporary directory and (optionally) one cluster key.
pub struct Cluster {
    pub agents: Vec<Agent>,
    pub key: Option<PathBuf>,
    pub root: tempfile::TempDir,
    log_level: String,
    /// The binary its agents run [default: [`shoal_bin`]].
    bin: Option<PathBuf>,
}

impl Cluster {
    /// Starts `n` agents; every one after the first joins through the first's address only.
    pub async fn start(n: usize, with_key: bool) -> anyhow::Result<Cluster> {
        Self::start_with(n, with_key, "info,shoal_overlay=debug").await
    }

    /// [`Cluster::start`] with a log level for every agent.
    pub async fn start_with(n: usize, with_key: bool, log_level: &str) -> anyhow::Result<Cluster> {
        Self::start_bin(n, with_key, log_level, None, |_| Vec::new()).await
    }

    /// [`Cluster::start_with`] running `bin` (another build of shoal), each agent with the
    /// extra flags `extra(i)` gives.
    pub async fn start_bin(
        n: usize,
        with_key: bool,
        log_level: &str,
        bin: Option<PathBuf>,
        extra: impl Fn(usize) -> Vec<String>,
    ) -> anyhow::Result<Cluster> {
        let root = tempfile::Builder::new().prefix("shoal-test-").tempdir()?;
        let key = if with_key { Some(write_key(root.path(), "cluster.key")?) } else { None };
        let mut c = Cluster { agents: Vec::new(), key, root, log_level: log_level.to_string(), bin };
        for i in 0..n {
            let flags = extra(i);
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            c.add_with(&format!("peer-{i}"), &flags).await?;
        }
        Ok(c)
    }

    /// Starts one more agent joining through agent 0.
    pub async fn add(&mut self, name: &str) -> anyhow::Result<&mut Agent> {
        self.add_with(name, &[]).await
    }

    /// [`Cluster::add`] with extra agent flags.
    pub async fn add_with(&mut self, name: &str, extra: &[&str]) -> anyhow::Result<&mut Agent> {
        let mut spec = AgentSpec::new(name);
        spec.extra = extra.iter().map(|s| s.to_string()).collect();
        spec.log_level = self.log_level.clone();
        spec.cluster_key = self.key.clone();
        spec.bin = self.bin.clone();
        if let Some(first) = self.agents.first() {
            spec.join.push(first.join_addr().await?);
        }
        let mut a = Agent::start(self.root.path(), spec)?;
        a.ready().await?;
        self.agents.push(a);
        Ok(self.agents.last_mut().unwrap())
    }

    /// All logs, for failure messages.
    pub fn logs(&self) -> String {
        self.agents.iter().map(|a| format!("==== {} ====\n{}", a.spec.name, a.log_text())).collect()
    }
}

/// Writes a new cluster key file into `dir`.
pub fn write_key(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    let key = shoal_overlay::ClusterKey::generate();
    shoal_overlay::keys::write_secret(&path, key.to_file_text().as_bytes())?;
    Ok(path)
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
pub async fn eventually<T>(timeout: Duration, what: &str, f: impl AsyncFnMut() -> Option<T>) -> anyhow::Result<T> {
    eventually_every(timeout, Duration::from_millis(100), what, f).await
}

/// [`eventually`], polling every `poll` (benchmarks that time a change poll finer).
pub async fn eventually_every<T>(
    timeout: Duration,
    poll: Duration,
    what: &str,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(poll).await;
    }
}

/// The state `viewer` reports for peer `id`.
pub fn state_of(peers: &[PeerInfo], id: &str) -> Option<PeerState> {
    peers.iter().find(|p| p.id == id).map(|p| p.state)
}

/// A child process, killed and reaped when dropped.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `shoal dashboard` for the agent at `socket`, on a free loopback port.
pub struct Dashboard {
    pub process: KillOnDrop,
    /// The URL it printed (with its one-time token).
    pub url: String,
    pub port: u16,
}

impl Dashboard {
    pub fn start(socket: &Path) -> anyhow::Result<Dashboard> {
        use std::io::{BufRead, BufReader};
        let port = free_port()?;
        let mut child = std::process::Command::new(shoal_bin())
            .arg("--addr")
            .arg(socket)
            .args(["dashboard", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("the dashboard's stdout")?;
        let process = KillOnDrop(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let url = line.split_whitespace().last().unwrap_or_default().to_string();
        anyhow::ensure!(
            url.starts_with("http://127.0.0.1:") && url.contains("?token="),
            "the dashboard printed {line:?}"
        );
        Ok(Dashboard { process, url, port })
    }

    /// The URL's path and query (`/?token=…`).
    pub fn path(&self) -> &str {
        &self.url[self.url.find("/?").unwrap_or(0)..]
    }
}
