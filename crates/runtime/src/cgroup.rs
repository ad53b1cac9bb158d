//! Where containers' cgroups go, and reading them back (stats, OOM kills).
//!
//! libcontainer joins a spec's absolute `cgroupsPath` below every controller's mount point.
//! This process may sit in different cgroups per controller (on this machine kind: `memory` in
//! `/process_api/<id>`, the rest at `/`), and containers must nest under the agent's own cgroup,
//! never beside it. [`containers_parent`] therefore takes the deepest of this process's own
//! paths over the controllers containers use, checks that every other one is a prefix of it,
//! and appends `shoal`; each container gets `<that>/<id>`. Reading works on a v1/v2 hybrid
//! (v1 files) and on a pure v2 host (`cpu.stat`, `memory.current`, `memory.events`).

use std::path::{Path, PathBuf};

/// The v1 controllers a container's limits and stats use.
const CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "pids", "devices"];

/// Why the containers' cgroup parent cannot be chosen.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// /proc/self/cgroup unreadable.
    #[error("cannot read /proc/self/cgroup: {0}")]
    Read(#[source] std::io::Error),
    /// The per-controller paths diverge.
    #[error(
        "this process sits in cgroups that are not nested in one another ({a} vs {b}); start the agent in one cgroup per controller along a single path"
    )]
    Divergent {
        /// One path.
        a: String,
        /// Another.
        b: String,
    },
}

/// Whether the host has only cgroup v2.
pub fn is_pure_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The cgroup path (absolute, mount-point relative) under which containers are created.
pub fn containers_parent() -> Result<PathBuf, CgroupError> {
    let text = std::fs::read_to_string("/proc/self/cgroup").map_err(CgroupError::Read)?;
    let mut paths: Vec<String> = Vec::new();
    for (ctrls, path) in cgroup_lines(&text) {
        let relevant = if is_pure_v2() { ctrls.is_empty() } else { ctrls.split(',').any(|c| CONTROLLERS.contains(&c)) };
        if relevant {
            paths.push(path.to_string());
        }
    }
    paths.sort_by_key(|p| p.len());
    let deepest = paths.last().cloned().unwrap_or_else(|| "/".into());
    for p in &paths {
        let prefix = p.trim_end_matches('/');
        if !(deepest == *p || deepest.starts_with(&format!("{prefix}/")) || p == "/") {
            return Err(CgroupError::Divergent { a: p.clone(), b: deepest });
        }
    }
    Ok(PathBuf::from(deepest).join("shoal"))
}

/// Keeps the kernel's cgroup migration lock fast while a container starts; stops on drop.
///
/// Moving a process between cgroups takes a global percpu rwsem for writing, and the first
/// writer after a quiet spell waits for an RCU grace period (5-11 ms here); writers that follow
/// within a grace period of the last one do not. A container start migrates its init into its
/// cgroups, so without this it pays that wait serially. The warmer writes this process's own
/// pid into the cgroup it already sits in (a no-op move that takes the lock) every 2 ms, from
/// the moment a creation begins, so the wait overlaps the rest of the set-up and the real move
/// finds the lock warm. Best effort: a failed write ends the warmer and changes nothing.
pub struct MigrationWarmer(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for MigrationWarmer {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Starts a [`MigrationWarmer`] that gives up after `limit` at the latest.
pub fn warm_migrations(limit: std::time::Duration) -> MigrationWarmer {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let spawned = std::thread::Builder::new().name("cgroup-warm".into()).spawn(move || {
        let Some(procs) = own_procs_file() else { return };
        let pid = std::process::id().to_string();
        let deadline = std::time::Instant::now() + limit;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) && std::time::Instant::now() < deadline {
            if std::fs::write(&procs, &pid).is_err() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    });
    if let Err(e) = spawned {
        tracing::debug!(?e, "cannot start the cgroup warmer");
    }
    MigrationWarmer(stop)
}

/// `cgroup.procs` of the cgroup this process sits in, in the `pids` hierarchy (v1) or the
/// unified one (pure v2).
fn own_procs_file() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let v2 = is_pure_v2();
    let (_, path) = cgroup_lines(&text)
        .find(|(ctrls, _)| if v2 { ctrls.is_empty() } else { ctrls.split(',').any(|c| c == "pids") })?;
    Some(controller_dir("pids", Path::new(path)).join("cgroup.procs"))
}

/// The (controllers, path) pairs of a `/proc/<pid>/cgroup` text.
fn cgroup_lines(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        (ctrls, path)
    })
}

/// Resource use read from one container's cgroups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time, nanoseconds.
    pub cpu_nanos: u64,
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// Memory limit, bytes (0: none).
    pub memory_limit: u64,
    /// Tasks.
    pub pids: u64,
    /// Task limit (0: none).
    pub pids_limit: u64,
    /// Times the OOM killer killed a task in it.
    pub oom_kills: u64,
}

fn read_u64(path: PathBuf) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_key(path: PathBuf, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Directory of `controller` for the cgroup `path`.
pub fn controller_dir(controller: &str, path: &Path) -> PathBuf {
    let rel = path.strip_prefix("/").unwrap_or(path);
    if is_pure_v2() {
        Path::new("/sys/fs/cgroup").join(rel)
    } else {
        Path::new("/sys/fs/cgroup").join(controller).join(rel)
    }
}

/// Reads a container's usage; missing files read as zero.
pub fn usage(path: &Path) -> Usage {
    if is_pure_v2() {
        let d = controller_dir("", path);
        let max = |f: &str| std::fs::read_to_string(d.join(f)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        return Usage {
            cpu_nanos: read_key(d.join("cpu.stat"), "usage_usec").unwrap_or(0) * 1000,
            memory_bytes: read_u64(d.join("memory.current")).unwrap_or(0),
            memory_limit: max("memory.max"),
            pids: read_u64(d.join("pids.current")).unwrap_or(0),
            pids_limit: max("pids.max"),
            oom_kills: read_key(d.join("memory.events"), "oom_kill").unwrap_or(0),
        };
    }
    let mem = controller_dir("memory", path);
    let limit = read_u64(mem.join("memory.limit_in_bytes")).unwrap_or(0);
    Usage {
        cpu_nanos: read_u64(controller_dir("cpuacct", path).join("cpuacct.usage")).unwrap_or(0),
        memory_bytes: read_u64(mem.join("memory.usage_in_bytes")).unwrap_or(0),
        // v1 reports "no limit" as a huge page-rounded number.
        memory_limit: if limit >= 1 << 62 { 0 } else { limit },
        pids: read_u64(controller_dir("pids", path).join("pids.current")).unwrap_or(0),
        pids_limit: std::fs::read_to_string(controller_dir("pids", path).join("pids.max"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0),
        oom_kills: read_key(mem.join("memory.oom_control"), "oom_kill").unwrap_or(0),
    }
}

/// Every cgroup directory of `path` that exists (for leftover checks and cleanup).
pub fn existing_dirs(path: &Path) -> Vec<PathBuf> {
    if is_pure_v2() {
        return [controller_dir("", path)].into_iter().filter(|d| d.exists()).collect();
    }
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else { return Vec::new() };
    let rel = path.strip_prefix("/").unwrap_or(path);
    entries.flatten().map(|e| e.path().join(rel)).filter(|d| d.is_dir()).collect()
}

/// Removes `path`'s directories in every hierarchy (they must be empty of tasks).
pub fn remove(path: &Path) {
    for d in existing_dirs(path) {
        let _ = std::fs::remove_dir(&d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_nests_under_own_cgroup() {
        let parent = containers_parent().expect("parent");
        assert!(parent.is_absolute() && parent.ends_with("shoal"));
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("read");
        let mem = own.lines().find(|l| l.split(':').nth(1).is_some_and(|c| c.split(',').any(|c| c == "memory")));
        if let Some(mem) = mem {
            let path = mem.splitn(3, ':').nth(2).expect("path");
            assert!(parent.starts_with(path), "{parent:?} under {path}");
        }
    }
}
