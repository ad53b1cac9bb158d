//! A container host for tests: one agent with a bridge and subnet of its own (so tests run in
//! parallel without sharing addresses), a busybox test image imported, the CLI at hand, and
//! cleanup on drop: every container removed, stray shims killed, the bridge deleted.

use crate::{Agent, AgentSpec, shoal_bin};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// One agent ready to run containers.
pub struct ContainerHost {
    pub agent: Agent,
    pub root: tempfile::TempDir,
    pub bridge: String,
    pub subnet: String,
    slot: PathBuf,
}

/// Waits (at most `limit`) until directory `dir` is empty or gone: for what the system
/// finishes asynchronously after a removal.
fn wait_until_empty(dir: &Path, limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    while std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Takes a free slot number (bridge `shtN`, subnet `198.19.N.0/24`) across test processes.
fn take_slot() -> (u32, PathBuf) {
    let dir = Path::new("/tmp/shoal-test-slots");
    std::fs::create_dir_all(dir).expect("slot dir");
    let start = std::process::id() % 200;
    for i in 0..200 {
        let n = 20 + (start + i) % 200;
        let path = dir.join(n.to_string());
        // A slot whose holder died is stale: reclaim it.
        if let Ok(holder) = std::fs::read_to_string(&path)
            && let Ok(pid) = holder.trim().parse::<u32>()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_file(&path);
        }
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            use std::io::Write;
            let _ = write!(f, "{}", std::process::id());
            return (n, path);
        }
    }
    panic!("no free test slot in /tmp/shoal-test-slots");
}

impl ContainerHost {
    /// Starts the agent and imports `busybox:test` (plus `extra` layers and `config`).
    pub async fn start(name: &str) -> anyhow::Result<ContainerHost> {
        Self::start_with_image(name, &[], Self::default_config()).await
    }

    /// The default test image config.
    pub fn default_config() -> serde_json::Value {
        serde_json::json!({ "Env": ["PATH=/usr/bin:/bin", "GREETING=hello"], "Cmd": ["sh"], "WorkingDir": "/" })
    }

    /// Starts the agent and imports `busybox:test` built from `extra` layers and `config`.
    pub async fn start_with_image(
        name: &str,
        extra: &[Vec<u8>],
        config: serde_json::Value,
    ) -> anyhow::Result<ContainerHost> {
        let (n, slot) = take_slot();
        let root = tempfile::Builder::new().prefix("shoal-ctr-").tempdir()?;
        let bridge = format!("sht{n}");
        let subnet = format!("198.19.{n}.0/24");
        let mut spec = AgentSpec::new(name);
        spec.log_level = "info,shoal_runtime=debug".into();
        // Agents of parallel tests share the host's network namespace: each has its own bridge
        // and subnet, and no transport between peers (their bridges are routed by this kernel).
        spec.extra = vec![
            "--bridge".into(),
            bridge.clone(),
            "--container-subnet".into(),
            subnet.clone(),
            "--network-transport".into(),
            "local".into(),
        ];
        // A table a killed run left.
        let table = format!("shoal_{bridge}");
        let _ = Command::new("nft").args(["delete", "table", "inet", &table]).output();
        let mut agent = Agent::start(root.path(), spec)?;
        agent.ready().await?;
        let host = ContainerHost { agent, root, bridge, subnet, slot };
        // The slot is ours alone: namespaces holding its addresses are leftovers of a killed run.
        host.delete_our_netns();
        host.import("busybox:test", extra, config)?;
        Ok(host)
    }

    /// Imports a busybox image with `extra` layers under `tag`.
    pub fn import(&self, tag: &str, extra: &[Vec<u8>], config: serde_json::Value) -> anyhow::Result<()> {
        let path = self.root.path().join(format!("{}.tar", tag.replace([':', '/'], "_")));
        crate::images::write_busybox_image(&path, tag, extra, config);
        let out = self.shoal(&["image", "import", &path.display().to_string()]);
        anyhow::ensure!(out.status.success(), "image import failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    /// Runs the CLI against this agent.
    pub fn shoal(&self, args: &[&str]) -> Output {
        Command::new(shoal_bin())
            .args(args)
            .env("SHOAL_ADDR", &self.agent.socket)
            .stdin(Stdio::null())
            .output()
            .expect("running the shoal CLI")
    }

    /// Runs the CLI and returns its stdout, failing with its stderr if it failed.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.shoal(args);
        anyhow::ensure!(
            out.status.success(),
            "shoal {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `inspect NAME` as JSON.
    pub fn inspect(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.ok(&["inspect", name])?)?)
    }

    /// The runtime's directory.
    pub fn runtime_dir(&self) -> PathBuf {
        self.agent.dir.join("runtime")
    }

    /// What a container of this host left behind: cgroup dirs, mounts, netns, veths, processes.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        // Removed containers' directories are deleted from `trash/` in the background.
        let trash = self.runtime_dir().join("trash");
        wait_until_empty(&trash, std::time::Duration::from_secs(5));
        if let Ok(d) = std::fs::read_dir(&trash) {
            for e in d.flatten() {
                found.push(format!("undeleted container dir {}", e.path().display()));
            }
        }
        let containers = self.runtime_dir().join("containers");
        if let Ok(d) = std::fs::read_dir(&containers) {
            for e in d.flatten() {
                found.push(format!("container dir {}", e.path().display()));
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = self.runtime_dir().display().to_string();
        for l in mounts.lines().filter(|l| l.contains(&root)) {
            found.push(format!("mount {l}"));
        }
        if let Ok(d) = std::fs::read_dir("/run/netns") {
            for e in d.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("shoal-") && self.netns_is_ours(&name) {
                    found.push(format!("netns {name}"));
                }
            }
        }
        // The kernel destroys a deleted namespace's veth pair asynchronously (a work queue, an
        // RCU grace period or two): give it a moment, as `ip netns del` users must too.
        let brif = format!("/sys/class/net/{}/brif", self.bridge);
        wait_until_empty(Path::new(&brif), std::time::Duration::from_secs(3));
        if let Ok(d) = std::fs::read_dir(&brif) {
            for e in d.flatten() {
                found.push(format!("veth {}", e.file_name().to_string_lossy()));
            }
        }
        for pid in self.shim_pids() {
            found.push(format!("shim process {pid}"));
        }
        if let Ok(text) = std::fs::read_to_string("/proc/self/cgroup") {
            for l in text.lines() {
                let mut p = l.splitn(3, ':');
                let (_, ctrls, path) = (p.next(), p.next().unwrap_or(""), p.next().unwrap_or("/"));
                if ctrls.split(',').any(|c| c == "memory") {
                    let dir = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')).join("shoal");
                    if let Ok(d) = std::fs::read_dir(&dir) {
                        for e in d.flatten().filter(|e| e.path().is_dir()) {
                            let id = e.file_name().to_string_lossy().into_owned();
                            if self.owned_ids().contains(&id) {
                                found.push(format!("cgroup {}", e.path().display()));
                            }
                        }
                    }
                }
            }
        }
        found
    }

    fn delete_our_netns(&self) {
        if let Ok(d) = std::fs::read_dir("/run/netns") {
            for e in d.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("shoal-") && self.netns_is_ours(&name) {
                    let _ = Command::new("ip").args(["netns", "del", &name]).output();
                }
            }
        }
    }

    fn owned_ids(&self) -> Vec<String> {
        let log = self.agent.log_text();
        let mut ids: Vec<String> = Vec::new();
        for w in log.split(|c: char| !c.is_ascii_hexdigit()) {
            if w.len() == 64 {
                ids.push(w.to_string());
            }
        }
        ids
    }

    fn netns_is_ours(&self, name: &str) -> bool {
        // Our containers' namespaces hold an address of our subnet.
        let prefix = self.subnet.trim_end_matches(".0/24");
        Command::new("ip")
            .args(["-n", name, "-4", "addr"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{prefix}.")))
            .unwrap_or(false)
    }

    /// Pids of shims serving this host's containers.
    pub fn shim_pids(&self) -> Vec<u32> {
        let root = self.runtime_dir().display().to_string();
        let mut pids = Vec::new();
        if let Ok(d) = std::fs::read_dir("/proc") {
            for e in d.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.contains("__shim") && cmd.contains(&root) {
                    pids.push(pid);
                }
            }
        }
        pids
    }
}

impl Drop for ContainerHost {
    fn drop(&mut self) {
        if let Ok(out) =
            Command::new(shoal_bin()).args(["ps", "-a", "--json"]).env("SHOAL_ADDR", &self.agent.socket).output()
            && let Ok(list) = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
        {
            for c in list {
                if let Some(id) = c["id"].as_str() {
                    let _ =
                        Command::new(shoal_bin()).args(["rm", "-f", id]).env("SHOAL_ADDR", &self.agent.socket).output();
                }
            }
        }
        for pid in self.shim_pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
        // Containers whose removal failed: kill what runs in their cgroups, remove the cgroups.
        if let Ok(d) = std::fs::read_dir(self.runtime_dir().join("containers")) {
            for e in d.flatten() {
                let meta: serde_json::Value = std::fs::read_to_string(e.path().join("meta.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or_default();
                let Some(cg) = meta["cgroups_path"].as_str().filter(|p| p.contains("/shoal/")) else { continue };
                let Ok(hs) = std::fs::read_dir("/sys/fs/cgroup") else { continue };
                for h in hs.flatten() {
                    let dir = h.path().join(cg.trim_start_matches('/'));
                    for pid in std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
                        if let Ok(pid) = pid.trim().parse::<i32>() {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        }
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    let _ = std::fs::remove_dir(&dir);
                }
            }
        }
        // Root filesystems a killed shim left mounted.
        let root = self.runtime_dir().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for point in mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| p.starts_with(&root)) {
            let _ = Command::new("umount").args(["-l", point]).output();
        }
        self.delete_our_netns();
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
        let _ = Command::new("nft").args(["delete", "table", "inet", &format!("shoal_{}", self.bridge)]).output();
        let _ = std::fs::remove_file(&self.slot);
    }
}
