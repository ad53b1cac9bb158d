//! How much this machine offers: CPUs and memory, as the kernel and our cgroup allow.
//!
//! CPUs: `available_parallelism` (affinity and cgroup v2 quota), lowered by a cgroup v1 CFS
//! quota if one applies. Memory: `MemTotal`, lowered by the memory limit of our own cgroup
//! (v1 `memory.limit_in_bytes` or v2 `memory.max`). `--cpus` and `--memory` override both, which
//! is how several lab peers on one machine each offer a slice.

use shoal_types::Resources;
use std::path::Path;

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn own_cgroup(controller: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        if ctrls.split(',').any(|c| c == controller) || (controller.is_empty() && ctrls.is_empty()) {
            Some(path.to_string())
        } else {
            None
        }
    })
}

fn cgroup_memory_limit() -> Option<u64> {
    let v1 = own_cgroup("memory").and_then(|p| {
        read_u64(&Path::new("/sys/fs/cgroup/memory").join(p.trim_start_matches('/')).join("memory.limit_in_bytes"))
    });
    let v2 = own_cgroup("").and_then(|p| {
        ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .find_map(|root| read_u64(&Path::new(root).join(p.trim_start_matches('/')).join("memory.max")))
    });
    [v1, v2].into_iter().flatten().min()
}

fn cgroup_cpu_millis() -> Option<u64> {
    let p = own_cgroup("cpu")?;
    let dir = Path::new("/sys/fs/cgroup/cpu").join(p.trim_start_matches('/'));
    let quota = std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).ok()?.trim().parse::<i64>().ok()?;
    let period = read_u64(&dir.join("cpu.cfs_period_us"))?;
    (quota > 0 && period > 0).then(|| (quota as u64 * 1000) / period)
}

fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// This machine's capacity, with optional overrides.
pub fn detect(cpus: Option<u64>, memory: Option<u64>) -> Resources {
    let cpus = cpus.unwrap_or_else(|| {
        let n = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1) * 1000;
        cgroup_cpu_millis().map_or(n, |q| q.min(n))
    });
    let memory = memory.unwrap_or_else(|| {
        let total = mem_total().unwrap_or(0);
        cgroup_memory_limit().map_or(total, |l| l.min(total))
    });
    Resources::new(cpus, memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_something_plausible_and_honours_overrides() {
        let r = detect(None, None);
        assert!(r.millicpus >= 1000);
        assert!(r.memory_bytes > 64 << 20);
        assert_eq!(detect(Some(500), Some(1 << 30)), Resources::new(500, 1 << 30));
    }
}
