//! Mounts: runc's defaults, the read-only paths, and volumes as recursive bind mounts.

use super::{HostFacts, READONLY_PATHS, SpecError};
use std::fs;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Mount;
use shoal_types::VolumeMount;

/// Where cgroup hierarchies are mounted, on the host and in the container.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

pub(super) fn mount(target: impl Into<PathBuf>, typ: &str, source: impl Into<PathBuf>, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(target.into())
        .set_typ(Some(typ.to_string()))
        .set_source(Some(source.into()))
        .set_options(Some(options.iter().map(|o| (*o).to_string()).collect()));
    m
}

/// runc's (and Docker's) default mounts.
pub(super) fn default_mounts() -> Vec<Mount> {
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
        mount(CGROUP_ROOT, "cgroup", "cgroup", &["nosuid", "noexec", "nodev", "relatime", "ro"]),
    ]
}

/// Docker's read-only paths, plus the cgroup v1 mounts libcontainer leaves writable.
pub(super) fn readonly_paths(host: &HostFacts) -> Vec<String> {
    let mut paths: Vec<String> = READONLY_PATHS.iter().map(|p| (*p).to_string()).collect();
    if !host.cgroup_v1_hierarchies.is_empty() {
        // The tmpfs first: remounting it copies the hierarchies' mounts, which are then made
        // read-only one by one.
        paths.push(CGROUP_ROOT.to_string());
        paths.extend(host.cgroup_v1_hierarchies.iter().map(|h| format!("{CGROUP_ROOT}/{h}")));
    }
    paths
}

/// Volumes as recursive bind mounts. Read-only ones are read-only all the way down (`rro`).
pub(super) fn volume_mounts(volumes: &[VolumeMount]) -> Result<Vec<Mount>, SpecError> {
    let mut mounts: Vec<Mount> = Vec::with_capacity(volumes.len());
    for v in volumes {
        let volume = format!("{}:{}", v.host, v.container);
        let host = Path::new(&v.host);
        if !host.is_absolute() || v.host.contains('\0') {
            return Err(SpecError::VolumeHostNotAbsolute { volume });
        }
        if let Err(source) = fs::metadata(host) {
            return Err(SpecError::VolumeHostMissing { volume, host: v.host.clone(), source });
        }
        let Some(target) = container_path(&v.container) else {
            return Err(SpecError::VolumeContainerPath { volume });
        };
        if mounts.iter().any(|m| m.destination() == &target) {
            return Err(SpecError::VolumeDuplicate { volume, container: target.display().to_string() });
        }
        let options: &[&str] = if v.read_only { &["rbind", "ro", "rro"] } else { &["rbind", "rw"] };
        mounts.push(mount(target, "bind", host, options));
    }
    Ok(mounts)
}

/// `text` as a clean absolute path, if it is one: no `..`, not `/`, not in /proc.
fn container_path(text: &str) -> Option<PathBuf> {
    if !text.starts_with('/') || text.contains('\0') {
        return None;
    }
    let mut clean = PathBuf::from("/");
    for component in Path::new(text).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => clean.push(name),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (clean != Path::new("/") && !clean.starts_with("/proc")).then_some(clean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::test_support::strings;

    #[test]
    fn volume_paths_are_checked() {
        let host = tempfile::tempdir().expect("tempdir");
        let h = host.path().display().to_string();
        let vol = |host: &str, container: &str, read_only| VolumeMount {
            host: host.into(),
            container: container.into(),
            read_only,
        };

        let mounts = volume_mounts(&[vol(&h, "/data/", true), vol(&h, "/cache", false)]).expect("valid");
        assert_eq!(mounts[0].destination(), Path::new("/data"));
        assert_eq!(mounts[0].source().as_deref(), Some(host.path()));
        assert_eq!(mounts[0].options().as_deref(), Some(&strings(&["rbind", "ro", "rro"])[..]));
        assert_eq!(mounts[1].options().as_deref(), Some(&strings(&["rbind", "rw"])[..]));

        let err = |vols: &[VolumeMount]| volume_mounts(vols).expect_err("refused");
        assert!(matches!(err(&[vol("rel", "/d", false)]), SpecError::VolumeHostNotAbsolute { .. }));
        let missing = err(&[vol("/nonexistent/shoal/volume", "/d", false)]);
        assert!(matches!(missing, SpecError::VolumeHostMissing { .. }) && missing.to_string().contains("create it"));
        for bad in ["d", "/", "/a/../b", "/proc/x", "/proc", "//"] {
            assert!(matches!(err(&[vol(&h, bad, false)]), SpecError::VolumeContainerPath { .. }), "{bad}");
        }
        assert!(matches!(err(&[vol(&h, "/d", false), vol(&h, "/d/", true)]), SpecError::VolumeDuplicate { .. }));
    }
}
