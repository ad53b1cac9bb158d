//! What the spec depends on about the host: the `RLIMIT_NOFILE` this process may grant and the
//! cgroup v1 hierarchies of its mount table.

use super::SpecError;
use std::fs;

/// What the spec depends on about the host; [`HostFacts::probe`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// Hard `RLIMIT_NOFILE` of this process: without `CAP_SYS_RESOURCE` a container cannot get more.
    pub nofile_hard: u64,
    /// Names of the cgroup v1 hierarchies mounted under /sys/fs/cgroup (`memory`, `cpu,cpuacct`,
    /// `systemd`, ...); empty on a cgroup v2-only host.
    pub cgroup_v1_hierarchies: Vec<String>,
}

impl HostFacts {
    /// Reads this process's `RLIMIT_NOFILE` and the cgroup v1 hierarchies of its mount table.
    pub fn probe() -> Result<HostFacts, SpecError> {
        let (_, nofile_hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_err(|source| SpecError::HostLimits { source })?;
        let mountinfo =
            fs::read_to_string("/proc/self/mountinfo").map_err(|source| SpecError::HostMounts { source })?;
        Ok(HostFacts { nofile_hard, cgroup_v1_hierarchies: cgroup_v1_hierarchies(&mountinfo) })
    }
}

/// The names of the `cgroup` (v1) mounts directly under /sys/fs/cgroup in a mountinfo table:
/// the hierarchies libcontainer mounts into the container.
fn cgroup_v1_hierarchies(mountinfo: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else { continue };
        if after.split(' ').next() != Some("cgroup") {
            continue;
        }
        let Some(name) = before.split(' ').nth(4).and_then(|m| m.strip_prefix("/sys/fs/cgroup/")) else { continue };
        // Mountinfo escapes unusual bytes as \NNN; such a name is not one libcontainer mounts.
        if !name.is_empty() && !name.contains(['/', '\\']) && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::test_support::strings;

    #[test]
    fn host_facts_find_cgroup_v1_hierarchies() {
        let mountinfo = "\
25 1 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
29 25 0:26 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
30 1 0:26 / /mnt/elsewhere rw - cgroup cgroup rw,memory
31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        assert_eq!(cgroup_v1_hierarchies(mountinfo), strings(&["systemd", "cpu,cpuacct", "memory"]));
        assert!(cgroup_v1_hierarchies("25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n").is_empty());
        let facts = HostFacts::probe().expect("this host");
        assert!(facts.nofile_hard > 0);
    }
}
