//! What is on disk for one container, and the shim's report of how it is doing.
//!
//! ```text
//! <root>/containers/<id>/
//!     meta.json        ContainerMeta: written once by the agent before the shim starts
//!     state.json       ShimState: rewritten (atomically) by the shim at every change
//!     bundle/config.json  the OCI runtime spec
//!     rootfs/          overlay mount point (mounted by the shim while it runs)
//!     upper/ work/     the container's own writable layer
//!     etc/             generated hosts, hostname, resolv.conf
//!     logs/            container.log, container.log.1, ... (JSON lines, rotated by size)
//!     youki/           libcontainer's own state
//! ```
//!
//! The shim's control socket (`stop`, `kill`) is `/run/shoal/ctl/<id prefix>.sock`.
//!
//! The agent reads `state.json`, never writes it; the shim reads `meta.json`, never writes it.
//! Both files are replaced with write-to-temp + rename, so a reader sees a whole file or the
//! previous one, and a crash loses at most the last change.

use serde::{Deserialize, Serialize};
use shoal_types::ContainerSpec;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Where shims' control sockets live (root only).
pub const CTL_DIR: &str = "/run/shoal/ctl";

/// Written by the agent when it creates a container; everything the shim needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerMeta {
    /// 64 hex characters.
    pub id: String,
    /// Unique name on the peer.
    pub name: String,
    /// The image reference as the user gave it.
    pub image: String,
    /// Manifest digest of the image.
    pub image_digest: String,
    /// Resolved command line.
    pub command: Vec<String>,
    /// The spec as given.
    pub spec: ContainerSpec,
    /// Seconds since the epoch.
    pub created_unix: u64,
    /// Layer directories, top first.
    pub lowers: Vec<PathBuf>,
    /// Container network; `None` runs it without a network namespace of its own making.
    pub net: Option<NetMeta>,
    /// Absolute cgroups path (the same below every controller's mount point).
    pub cgroups_path: PathBuf,
    /// Rotate a log file when it reaches this size.
    pub log_max_bytes: u64,
    /// How many log files to keep (current + rotated).
    pub log_files: u32,
}

/// A container's place on the peer's bridge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetMeta {
    /// Its address.
    pub ip: Ipv4Addr,
    /// Prefix length of the bridge subnet.
    pub prefix: u8,
    /// The bridge's address (default route).
    pub gateway: Ipv4Addr,
    /// The bridge's name.
    pub bridge: String,
    /// Network namespace name (under /run/netns).
    pub netns: String,
    /// Host end of the veth pair.
    pub veth: String,
    /// MTU of both ends (the cluster transport's; 1500 when absent, as written by older agents).
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// Where the container is in its life, as the shim reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The shim is setting up.
    Starting,
    /// The container's init runs.
    Running,
    /// It exited and the restart policy runs it again after a back-off.
    Restarting,
    /// It exited for good; the shim has torn down mounts and network.
    Exited,
    /// It could not be started; `error` says why. Nothing is left mounted.
    Failed,
}

/// The shim's report, `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimState {
    /// Phase.
    pub phase: Phase,
    /// The shim's pid.
    pub shim_pid: u32,
    /// The shim's start time in clock ticks since boot (guards against pid reuse).
    pub shim_start_ticks: u64,
    /// The container init's host pid while running.
    pub pid: Option<u32>,
    /// Start of the current/last run.
    pub started_unix: Option<u64>,
    /// End of the last run.
    pub finished_unix: Option<u64>,
    /// Exit code of the last run (128+signal when killed).
    pub exit_code: Option<i32>,
    /// The last run was killed by the memory limit.
    pub oom_killed: bool,
    /// Restarts by the restart policy so far.
    pub restarts: u32,
    /// The user stopped or killed it (no more restarts).
    pub stopped: bool,
    /// Why it failed to start.
    pub error: Option<String>,
    /// Whose the failure to start is (absent in states written before this field existed).
    #[serde(default)]
    pub failure: Option<StartFailure>,
}

/// What kind of failure stopped a container from starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFailure {
    /// The container as asked cannot run: its command is missing, its spec is invalid.
    Command,
    /// A published port is taken on this host.
    Port,
    /// The host could not set it up (mount, network, cgroups, libcontainer): not the user's
    /// doing.
    Setup,
}

impl ShimState {
    /// A fresh state for shim `pid`.
    pub fn new(shim_pid: u32) -> ShimState {
        ShimState {
            phase: Phase::Starting,
            shim_pid,
            shim_start_ticks: process_start_ticks(shim_pid).unwrap_or(0),
            pid: None,
            started_unix: None,
            finished_unix: None,
            exit_code: None,
            oom_killed: false,
            restarts: 0,
            stopped: false,
            error: None,
            failure: None,
        }
    }

    /// Whether the shim that wrote this is still the process with that pid.
    pub fn shim_alive(&self) -> bool {
        process_start_ticks(self.shim_pid).is_some_and(|t| t == self.shim_start_ticks)
    }
}

/// A process's start time (field 22 of /proc/PID/stat), or None when it does not exist.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts at field 3; field 22 is the 20th from here.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The files of one container directory.
#[derive(Debug, Clone)]
pub struct ContainerDir(pub PathBuf);

impl ContainerDir {
    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.0
    }
    /// `meta.json`.
    pub fn meta(&self) -> PathBuf {
        self.0.join("meta.json")
    }
    /// `state.json`.
    pub fn state(&self) -> PathBuf {
        self.0.join("state.json")
    }
    /// The OCI bundle.
    pub fn bundle(&self) -> PathBuf {
        self.0.join("bundle")
    }
    /// The overlay mount point.
    pub fn rootfs(&self) -> PathBuf {
        self.0.join("rootfs")
    }
    /// The writable layer.
    pub fn upper(&self) -> PathBuf {
        self.0.join("upper")
    }
    /// overlayfs's work directory.
    pub fn work(&self) -> PathBuf {
        self.0.join("work")
    }
    /// Generated /etc files.
    pub fn etc(&self) -> PathBuf {
        self.0.join("etc")
    }
    /// Log files.
    pub fn logs(&self) -> PathBuf {
        self.0.join("logs")
    }
    /// libcontainer's root.
    pub fn youki(&self) -> PathBuf {
        self.0.join("youki")
    }
    /// The shim's control socket. Not in the directory: a unix socket path is limited to 108
    /// bytes, which a deep data dir plus a 64-character id exceeds.
    pub fn ctl(&self) -> PathBuf {
        let id = self.0.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Path::new(CTL_DIR).join(format!("{}.sock", &id[..id.len().min(32)]))
    }

    /// Reads `meta.json`.
    pub fn read_meta(&self) -> std::io::Result<ContainerMeta> {
        read_json(&self.meta())
    }
    /// Reads `state.json`.
    pub fn read_state(&self) -> std::io::Result<ShimState> {
        read_json(&self.state())
    }
}

/// Reads a JSON file (bounded to 4 MiB).
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<T> {
    let meta = std::fs::metadata(path)?;
    if meta.len() > 4 << 20 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "file larger than 4 MiB"));
    }
    let bytes = std::fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Writes `value` as JSON to `path` atomically (temp file, fsync, rename).
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T, sync: bool) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    serde_json::to_writer(&mut f, value).map_err(std::io::Error::other)?;
    f.flush()?;
    if sync {
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_ticks_are_read() {
        let me = std::process::id();
        let t = process_start_ticks(me);
        assert!(t.is_some());
        let s = ShimState::new(me);
        assert!(s.shim_alive());
        assert!(process_start_ticks(u32::MAX).is_none());
    }
}
