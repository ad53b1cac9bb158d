//! Lab harness: a `shoal lab` brought up through the real CLI, always torn down on drop (even
//! when the test fails), plus helpers that act inside a peer's network namespace.

use anyhow::{Context, bail};
use nix::sched::{CloneFlags, setns};
use serde_json::Value;
use shoal_api::client::Client;
use shoal_types::{PeerInfo, PeerState};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A lab for one test.
pub struct TestLab {
    pub name: String,
    pub root: tempfile::TempDir,
}

impl TestLab {
    /// `shoal lab up --peers N <extra>` under a private root and a unique name.
    pub fn up(hint: &str, peers: usize, extra: &[&str]) -> anyhow::Result<TestLab> {
        let root = tempfile::Builder::new().prefix("shoal-lab-").tempdir()?;
        let name = format!("{hint}-{:04x}", rand_u16());
        let lab = TestLab { name, root };
        let out = lab.cli(&[&["up", "--peers", &peers.to_string()], extra].concat());
        if !out.status.success() {
            bail!("lab up failed: {}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
        }
        Ok(lab)
    }

    /// Runs `shoal lab <args>` for this lab.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(crate::shoal_bin())
            .arg("lab")
            .args(["--name", &self.name])
            .args(args)
            .env("SHOAL_LAB_ROOT", self.root.path())
            .output()
            .expect("run shoal lab")
    }

    /// Starts `shoal lab <args>` without waiting (for commands that run a while).
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.spawn_with(args, std::process::Stdio::null())
    }

    /// [`TestLab::spawn`] with the command's standard output piped (to read what it streams).
    pub fn spawn_piped(&self, args: &[&str]) -> std::process::Child {
        self.spawn_with(args, std::process::Stdio::piped())
    }

    fn spawn_with(&self, args: &[&str], stdout: std::process::Stdio) -> std::process::Child {
        Command::new(crate::shoal_bin())
            .arg("lab")
            .args(["--name", &self.name])
            .args(args)
            .env("SHOAL_LAB_ROOT", self.root.path())
            .stdout(stdout)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn shoal lab")
    }

    /// The API client of peer `i`.
    pub fn client(&self, i: usize) -> Client {
        Client::new(&self.socket(i).display().to_string(), None).expect("socket path")
    }

    /// Like [`TestLab::cli`] but fails on a non-zero exit.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.cli(args);
        if !out.status.success() {
            bail!("shoal lab {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `lab status --json`.
    pub fn status(&self) -> anyhow::Result<Vec<Value>> {
        Ok(serde_json::from_str(&self.ok(&["status", "--json"])?)?)
    }

    pub fn dir(&self) -> PathBuf {
        self.root.path().join(&self.name)
    }

    pub fn socket(&self, i: usize) -> PathBuf {
        self.dir().join(format!("peer-{i}/shoal.sock"))
    }

    pub fn netns(&self, i: usize) -> PathBuf {
        PathBuf::from(format!("/run/netns/shoal-{}-{i}", self.name))
    }

    /// Peer `i`'s view of the cluster, through its API.
    pub async fn peers(&self, i: usize) -> anyhow::Result<Vec<PeerInfo>> {
        let c = Client::new(&self.socket(i).display().to_string(), None)?;
        Ok(c.get("/v1/peers").await?)
    }

    /// Peer ids by index, from `lab status`.
    pub fn ids(&self) -> anyhow::Result<Vec<String>> {
        self.status()?.iter().map(|r| r["id"].as_str().map(str::to_string).context("peer without id")).collect()
    }

    /// Waits until each peer in `viewers` sees each of `subjects` in `state`.
    pub async fn wait_states(
        &self,
        viewers: &[usize],
        subjects: &[usize],
        state: PeerState,
        within: Duration,
    ) -> anyhow::Result<Duration> {
        let ids = self.ids()?;
        let t0 = Instant::now();
        'outer: loop {
            for &v in viewers {
                let view = self.peers(v).await.unwrap_or_default();
                for &s in subjects {
                    if crate::state_of(&view, &ids[s]) != Some(state) {
                        if t0.elapsed() > within {
                            bail!("peer {v} does not see peer {s} {state} after {within:?}: {view:?}");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue 'outer;
                    }
                }
            }
            return Ok(t0.elapsed());
        }
    }

    /// The agent logs of peers `0..n` (warnings and services' decisions), for a failing test's
    /// output.
    pub fn agent_logs(&self, n: usize) -> String {
        let mut out = String::new();
        for i in 0..n {
            let text = String::from_utf8_lossy(&self.cli(&["logs", &i.to_string()]).stdout).into_owned();
            for l in text.lines().filter(|l| l.contains("WARN") || l.contains("services") || l.contains("swim")) {
                out.push_str(&format!("peer {i}: {l}\n"));
            }
        }
        out
    }

    pub fn down(&self) -> Output {
        self.cli(&["down"])
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let out = self.down();
        if !out.status.success() {
            eprintln!("lab down failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

fn rand_u16() -> u16 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.subsec_nanos() ^ std::process::id().rotate_left(7)) as u16
}

/// Runs `f` on a new thread that has entered the network namespace at `ns`.
pub fn in_netns<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<anyhow::Result<T>> {
    let ns = ns.to_path_buf();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&ns).with_context(|| format!("opening {}", ns.display()))?;
        setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering {}", ns.display()))?;
        Ok(f())
    })
}

/// Reads `r` to its end: (bytes, seconds from the first byte to the end).
pub fn read_timed(r: &mut impl Read) -> std::io::Result<(usize, f64)> {
    let mut buf = vec![0u8; 256 * 1024];
    let (mut got, mut first) = (0usize, None);
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        got += n;
    }
    Ok((got, first.map_or(0.0, |t: Instant| t.elapsed().as_secs_f64())))
}

/// Sends `bytes` over TCP from the namespace `from` to `to_ip:port` inside `to`, and returns
/// the receiver's measured goodput in bits per second.
pub fn measure_tcp(from: &Path, to: &Path, to_ip: Ipv4Addr, port: u16, bytes: usize) -> anyhow::Result<f64> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let rx = in_netns(to, move || -> anyhow::Result<f64> {
        let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
        ready_tx.send(()).ok();
        let (mut s, _) = l.accept()?;
        let (got, secs) = read_timed(&mut s)?;
        Ok(got as f64 * 8.0 / secs.max(1e-9))
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).context("receiver did not start")?;
    let tx = in_netns(from, move || -> anyhow::Result<()> {
        let mut s = TcpStream::connect((to_ip, port))?;
        let chunk = vec![0x5au8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n])?;
            left -= n;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        Ok(())
    });
    tx.join().map_err(|_| anyhow::anyhow!("sender panicked"))???;
    rx.join().map_err(|_| anyhow::anyhow!("receiver panicked"))??
}

/// Everything of lab `name` that still exists: namespaces, cgroup dirs, processes, mounts,
/// the lab directory. Empty means `lab down` left nothing behind.
pub fn leftovers(name: &str, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let ns_prefix = format!("shoal-{name}-");
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&ns_prefix) {
                out.push(format!("netns {n}"));
            }
        }
    }
    let cg = format!("shoal-lab-{name}");
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    if p.file_name().is_some_and(|f| f.to_string_lossy() == cg) {
                        out.push(format!("cgroup {}", p.display()));
                    } else if p.components().count() < 9 {
                        stack.push(p);
                    }
                }
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Ok(text) = std::fs::read_to_string(e.path().join("cgroup"))
                && text.contains(&format!("/{cg}/"))
            {
                out.push(format!("process {}", e.file_name().to_string_lossy()));
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for l in mounts.lines() {
        if let Some(p) = l.split_whitespace().nth(4)
            && (p.starts_with(&dir.display().to_string()) || p.contains(&ns_prefix))
        {
            out.push(format!("mount {p}"));
        }
    }
    if dir.exists() {
        out.push(format!("dir {}", dir.display()));
    }
    out
}
