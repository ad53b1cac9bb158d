//! The lab's cgroups: one per peer, nested under this process's own cgroup in every hierarchy
//! the lab uses, so the lab never escapes the cgroup it was started in.
//!
//! On a v1 (or hybrid) host: `<mount of memory|pids|cpu>/<own path>/shoal-lab-<lab>/peer-<i>`,
//! with a memory limit, a pids limit and a CPU quota that make the peer's advertised capacity
//! real. On a pure v2 host: `<own path>/shoal-lab-<lab>/peer-<i>` in the unified tree.
//! A peer's agent (and later its containers) run inside; teardown kills every process found in
//! the lab's cgroups and removes the directories deepest first.

use crate::LabError;
use std::path::{Path, PathBuf};

const V1_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// Where a hierarchy is mounted and where this process sits in it.
#[derive(Debug, Clone)]
struct Hierarchy {
    controller: &'static str,
    mount: PathBuf,
    own: String,
}

fn hierarchies() -> Vec<Hierarchy> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    let pure_v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if pure_v2 {
        if let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::")) {
            out.push(Hierarchy {
                controller: "unified",
                mount: PathBuf::from("/sys/fs/cgroup"),
                own: path.to_string(),
            });
        }
        return out;
    }
    for ctrl in V1_CONTROLLERS {
        let own_path = own.lines().find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctrls, path) = (p.next()?, p.next()?, p.next()?);
            ctrls.split(',').any(|c| c == ctrl).then(|| path.to_string())
        });
        let mount = mountinfo.lines().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mut post = post.split_whitespace();
            let (fstype, _src, opts) = (post.next()?, post.next()?, post.next()?);
            let point = pre.split_whitespace().nth(4)?;
            (fstype == "cgroup" && opts.split(',').any(|o| o == ctrl)).then(|| PathBuf::from(point))
        });
        if let (Some(own), Some(mount)) = (own_path, mount) {
            out.push(Hierarchy { controller: ctrl, mount, own });
        }
    }
    // One path for every hierarchy: the deepest of this process's own paths, when the others
    // lie above it (e.g. memory in `/process_api/x`, the rest at `/`). A peer's agent then sits
    // at the same path in every hierarchy, which its container runtime needs (libcontainer
    // joins one cgroups path below every controller's mount), and the lab stays nested under
    // this process's own cgroup in each.
    if let Some(deepest) = out.iter().map(|h| h.own.clone()).max_by_key(|p| p.len()) {
        let above = |p: &str| p == "/" || deepest == p || deepest.starts_with(&format!("{}/", p.trim_end_matches('/')));
        if out.iter().all(|h| above(&h.own)) {
            for h in &mut out {
                h.own = deepest.clone();
            }
        }
    }
    out
}

fn lab_dir(h: &Hierarchy, lab: &str) -> PathBuf {
    h.mount.join(h.own.trim_start_matches('/')).join(format!("shoal-lab-{lab}"))
}

/// Limits for one peer.
#[derive(Debug, Clone, Copy)]
pub struct PeerLimits {
    pub memory_bytes: u64,
    pub millicpus: u64,
    pub pids: u64,
}

/// Creates peer `i`'s cgroups and sets its limits; returns the directories to join.
pub(crate) fn create_peer(lab: &str, i: usize, limits: PeerLimits) -> Result<Vec<PathBuf>, LabError> {
    let mut dirs = Vec::new();
    for h in hierarchies() {
        let dir = lab_dir(&h, lab).join(format!("peer-{i}"));
        std::fs::create_dir_all(&dir).map_err(|source| LabError::Io { path: dir.clone(), source })?;
        let set = |file: &str, value: String| {
            let p = dir.join(file);
            std::fs::write(&p, value).map_err(|source| LabError::Io { path: p, source })
        };
        match h.controller {
            "memory" => set("memory.limit_in_bytes", limits.memory_bytes.to_string())?,
            "pids" => set("pids.max", limits.pids.to_string())?,
            "cpu" => {
                set("cpu.cfs_period_us", "100000".into())?;
                set("cpu.cfs_quota_us", (limits.millicpus * 100).max(1000).to_string())?;
            }
            _ => {}
        }
        dirs.push(dir);
    }
    Ok(dirs)
}

/// Peer `i`'s cgroup directories (whether or not they exist).
pub(crate) fn peer_dirs(lab: &str, i: usize) -> Vec<PathBuf> {
    hierarchies().iter().map(|h| lab_dir(h, lab).join(format!("peer-{i}"))).collect()
}

/// The lab's top cgroup directories that exist now: in the hierarchies the lab uses, and in
/// every other v1 hierarchy where its peers' container runtimes made directories below it
/// (libcontainer creates a container's cgroup in every controller it finds).
pub(crate) fn lab_dirs(lab: &str) -> Vec<PathBuf> {
    let hs = hierarchies();
    let mut dirs: Vec<PathBuf> = hs.iter().map(|h| lab_dir(h, lab)).filter(|d| d.exists()).collect();
    if let Some(own) = hs.first().map(|h| h.own.clone())
        && let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup")
    {
        for e in entries.flatten() {
            let d = e.path().join(own.trim_start_matches('/')).join(format!("shoal-lab-{lab}"));
            if d.is_dir() && !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    dirs
}

/// Every process in `dir` or below.
pub(crate) fn procs_below(dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Removes `dir` and everything below it, deepest first. Fails if processes remain.
pub(crate) fn remove_tree(dir: &Path) -> Result<(), LabError> {
    if !dir.exists() {
        return Ok(());
    }
    let children: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    for c in children {
        remove_tree(&c)?;
    }
    std::fs::remove_dir(dir).map_err(|source| LabError::Io { path: dir.to_path_buf(), source })
}

/// Whether process `pid` sits in peer `i`'s cgroup of this lab (guards against pid reuse).
pub(crate) fn pid_in_peer(pid: i32, lab: &str, i: usize) -> bool {
    let needle = format!("/shoal-lab-{lab}/peer-{i}");
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|t| t.lines().any(|l| l.ends_with(&needle) || l.contains(&format!("{needle}/"))))
        .unwrap_or(false)
}
