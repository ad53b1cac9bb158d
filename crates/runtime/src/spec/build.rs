//! Putting the spec together: the process (user, capabilities, rlimits), namespaces, mounts,
//! masked and read-only paths, resources and seccomp.

use super::mounts::{default_mounts, mount, readonly_paths, volume_mounts};
use super::resources::resources;
use super::{
    DEFAULT_CAPABILITIES, HostFacts, MASKED_PATHS, NOFILE_HARD, NOFILE_SOFT, SpecError, SpecInput, resolve_command,
    resolve_env, resolve_user, resolve_workdir,
};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, Linux, LinuxCapabilities, LinuxNamespace, LinuxNamespaceType, PosixRlimit, PosixRlimitBuilder,
    PosixRlimitType, Process, Root, Spec, User,
};

/// Builds the spec, reading the host facts it depends on ([`HostFacts::probe`]).
pub fn build_spec(input: &SpecInput<'_>) -> Result<Spec, SpecError> {
    build_spec_for_host(input, &HostFacts::probe()?)
}

/// Builds the spec for a host described by `host`.
pub fn build_spec_for_host(input: &SpecInput<'_>, host: &HostFacts) -> Result<Spec, SpecError> {
    let spec = input.spec;
    check_absolute("root filesystem", input.rootfs)?;
    if let Some(netns) = input.netns {
        check_absolute("network namespace", netns)?;
    }
    if input.hostname.is_empty() || input.hostname.len() > 64 || input.hostname.contains('\0') {
        return Err(SpecError::Hostname { hostname: input.hostname.to_string() });
    }
    let args = resolve_command(spec, input.image)?;
    let env = resolve_env(spec, input.image, input.hostname)?;
    let cwd = resolve_workdir(spec, input.image)?;
    let user = resolve_user(input.rootfs, spec, input.image)?;
    let resources = resources(spec)?;
    let volumes = volume_mounts(&spec.volumes)?;

    let mut mounts = default_mounts();
    if let Some(etc) = &input.etc_files {
        // A volume on the same path replaces the generated file, as in Docker.
        let generated =
            [("/etc/hosts", &etc.hosts), ("/etc/hostname", &etc.hostname), ("/etc/resolv.conf", &etc.resolv_conf)];
        for (target, source) in generated {
            if !volumes.iter().any(|v| v.destination() == Path::new(target)) {
                mounts.push(mount(target, "bind", source, &["bind", "ro", "nosuid", "nodev", "noexec"]));
            }
        }
    }
    mounts.extend(volumes);

    let mut oci_user = User::default();
    oci_user
        .set_uid(user.uid)
        .set_gid(user.gid)
        .set_additional_gids(Some(user.additional_gids.clone()))
        .set_umask(Some(0o022))
        .set_username(None);
    let mut process = Process::default();
    process
        .set_terminal(Some(false))
        .set_console_size(None)
        .set_user(oci_user)
        .set_args(Some(args))
        .set_command_line(None)
        .set_env(Some(env))
        .set_cwd(PathBuf::from(cwd))
        .set_capabilities(Some(capabilities(user.uid)))
        .set_rlimits(Some(vec![nofile_limit(host)]))
        .set_no_new_privileges(Some(true))
        .set_apparmor_profile(None)
        .set_oom_score_adj(None)
        .set_selinux_label(None)
        .set_io_priority(None)
        .set_scheduler(None)
        .set_exec_cpu_affinity(None);

    let mut linux = Linux::default();
    linux
        .set_net_devices(None)
        .set_uid_mappings(None)
        .set_gid_mappings(None)
        .set_sysctl(None)
        .set_resources(Some(resources))
        .set_cgroups_path(Some(input.cgroups_path.to_path_buf()))
        .set_namespaces(Some(namespaces(input.netns)))
        // libcontainer creates null, zero, full, tty, random and urandom itself.
        .set_devices(None)
        .set_seccomp(Some(crate::seccomp::default_profile()))
        .set_rootfs_propagation(None)
        .set_masked_paths(Some(MASKED_PATHS.iter().map(|p| (*p).to_string()).collect()))
        .set_readonly_paths(Some(readonly_paths(host)))
        .set_mount_label(None)
        .set_intel_rdt(None)
        .set_memory_policy(None)
        .set_personality(None)
        .set_time_offsets(None);

    let mut root = Root::default();
    root.set_path(input.rootfs.to_path_buf()).set_readonly(Some(spec.read_only));

    let mut oci = Spec::default();
    oci.set_root(Some(root))
        .set_mounts(Some(mounts))
        .set_process(Some(process))
        .set_hostname(Some(input.hostname.to_string()))
        .set_domainname(None)
        .set_hooks(None)
        .set_annotations(None)
        .set_linux(Some(linux));
    Ok(oci)
}

fn check_absolute(what: &'static str, path: &Path) -> Result<(), SpecError> {
    if path.is_absolute() { Ok(()) } else { Err(SpecError::NotAbsolute { what, path: path.to_path_buf() }) }
}

/// Docker's capabilities: all three sets for root; for another user only the bounding set, so
/// the program starts without capabilities, as `execve` would leave it.
fn capabilities(uid: u32) -> LinuxCapabilities {
    let docker: Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
    let granted = if uid == 0 { docker.clone() } else { Capabilities::new() };
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(docker))
        .set_effective(Some(granted.clone()))
        .set_permitted(Some(granted))
        .set_inheritable(Some(Capabilities::new()))
        .set_ambient(Some(Capabilities::new()));
    caps
}

/// 1024 soft / 20000 hard, lowered to this process's hard limit: raising it needs
/// `CAP_SYS_RESOURCE`, and libcontainer would fail to start the container.
fn nofile_limit(host: &HostFacts) -> PosixRlimit {
    let hard = NOFILE_HARD.min(host.nofile_hard);
    PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(hard)
        .soft(NOFILE_SOFT.min(hard))
        .build()
        .expect("every field of PosixRlimit is set or has a default")
}

fn namespaces(netns: Option<&Path>) -> Vec<LinuxNamespace> {
    use LinuxNamespaceType::{Cgroup, Ipc, Mount as Mnt, Network, Pid, Uts};
    [Pid, Mnt, Uts, Ipc, Cgroup, Network]
        .into_iter()
        .map(|typ| {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(typ);
            if typ == Network {
                ns.set_path(netns.map(Path::to_path_buf));
            }
            ns
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::EtcFiles;
    use crate::spec::test_support::{image, rootfs, run, strings};
    use oci_spec::image::ImageConfiguration;
    use oci_spec::runtime::Capability;
    use serde_json::json;
    use shoal_types::{ContainerSpec, VolumeMount};

    fn host(nofile_hard: u64, v1: &[&str]) -> HostFacts {
        HostFacts { nofile_hard, cgroup_v1_hierarchies: strings(v1) }
    }

    fn build(
        spec: &ContainerSpec,
        img: &ImageConfiguration,
        rootfs: &Path,
        facts: &HostFacts,
    ) -> Result<Spec, SpecError> {
        let input = SpecInput {
            spec,
            image: img,
            rootfs,
            hostname: "web-1",
            netns: Some(Path::new("/run/netns/shoal-abc")),
            cgroups_path: Path::new("/shoal/abc"),
            etc_files: Some(EtcFiles {
                hosts: "/var/lib/shoal/c/etc/hosts".into(),
                hostname: "/var/lib/shoal/c/etc/hostname".into(),
                resolv_conf: "/var/lib/shoal/c/etc/resolv.conf".into(),
            }),
        };
        build_spec_for_host(&input, facts)
    }

    #[test]
    fn spec_has_docker_defaults() {
        let root = rootfs();
        let img = image(json!({ "Cmd": ["sh"], "User": "web" }));
        let oci = build(&run("img:1"), &img, root.path(), &host(1 << 20, &[])).expect("spec");
        assert_eq!(oci.hostname().as_deref(), Some("web-1"));
        let root_cfg = oci.root().as_ref().expect("root");
        assert_eq!((root_cfg.path().as_path(), root_cfg.readonly()), (root.path(), Some(false)));

        let process = oci.process().as_ref().expect("process");
        assert_eq!(process.terminal(), Some(false));
        assert_eq!(process.no_new_privileges(), Some(true));
        assert_eq!(process.oom_score_adj(), None);
        assert_eq!(process.cwd(), Path::new("/"));
        assert_eq!((process.user().uid(), process.user().gid()), (1000, 1000));
        assert_eq!(process.user().additional_gids().as_deref(), Some(&[10, 29][..]));
        // Non-root: bounding only, as Docker.
        let caps = process.capabilities().as_ref().expect("caps");
        assert_eq!(caps.bounding().as_ref().map(|c| c.len()), Some(14));
        for set in [caps.effective(), caps.permitted(), caps.inheritable(), caps.ambient()] {
            assert_eq!(set.as_ref().map(|c| c.len()), Some(0));
        }
        let rlimit = process.rlimits().as_ref().expect("rlimits")[0];
        assert_eq!((rlimit.typ(), rlimit.soft(), rlimit.hard()), (PosixRlimitType::RlimitNofile, 1024, 20_000));

        let linux = oci.linux().as_ref().expect("linux");
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/shoal/abc")));
        let namespaces = linux.namespaces().as_ref().expect("namespaces");
        assert_eq!(namespaces.len(), 6);
        let net = namespaces.iter().find(|n| n.typ() == LinuxNamespaceType::Network).expect("net");
        assert_eq!(net.path().as_deref(), Some(Path::new("/run/netns/shoal-abc")));
        assert!(namespaces.iter().any(|n| n.typ() == LinuxNamespaceType::Cgroup && n.path().is_none()));
        assert!(linux.masked_paths().as_ref().expect("masked").iter().any(|p| p == "/proc/kcore"));
        assert_eq!(linux.readonly_paths().as_ref().expect("readonly").len(), 5);
        assert!(linux.seccomp().is_some());

        let targets: Vec<&Path> =
            oci.mounts().as_ref().expect("mounts").iter().map(|m| m.destination().as_path()).collect();
        let expected = [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
            "/etc/hosts",
            "/etc/hostname",
            "/etc/resolv.conf",
        ];
        assert_eq!(targets, expected.iter().map(Path::new).collect::<Vec<_>>());
        let hosts = &oci.mounts().as_ref().expect("mounts")[7];
        assert!(hosts.options().as_ref().expect("options").iter().any(|o| o == "ro"));
    }

    #[test]
    fn spec_for_root_read_only_v1_host_with_volumes() {
        let root = rootfs();
        let vol = tempfile::tempdir().expect("tempdir");
        let spec = ContainerSpec {
            read_only: true,
            cmd: strings(&["true"]),
            volumes: vec![
                VolumeMount { host: vol.path().display().to_string(), container: "/data".into(), read_only: false },
                VolumeMount { host: vol.path().display().to_string(), container: "/etc/hosts".into(), read_only: true },
            ],
            ..run("img:1")
        };
        let oci = build(&spec, &image(json!({})), root.path(), &host(4096, &["cpu", "memory"])).expect("spec");
        assert_eq!(oci.root().as_ref().and_then(|r| r.readonly()), Some(true));
        let process = oci.process().as_ref().expect("process");
        assert_eq!(process.user().uid(), 0);
        let caps = process.capabilities().as_ref().expect("caps");
        assert_eq!(caps.effective(), caps.bounding());
        assert_eq!(caps.permitted(), caps.bounding());
        assert!(caps.bounding().as_ref().expect("bounding").contains(&Capability::NetBindService));
        assert!(!caps.bounding().as_ref().expect("bounding").contains(&Capability::SysAdmin));
        let rlimit = process.rlimits().as_ref().expect("rlimits")[0];
        assert_eq!((rlimit.soft(), rlimit.hard()), (1024, 4096), "clamped to the host's hard limit");

        let readonly = oci.linux().as_ref().and_then(|l| l.readonly_paths().clone()).expect("readonly");
        assert_eq!(&readonly[5..], &strings(&["/sys/fs/cgroup", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/memory"])[..]);

        let mounts = oci.mounts().as_ref().expect("mounts");
        let targets: Vec<&Path> = mounts.iter().map(|m| m.destination().as_path()).collect();
        // The volume on /etc/hosts replaces the generated file.
        assert_eq!(targets.iter().filter(|t| **t == Path::new("/etc/hosts")).count(), 1);
        assert_eq!(targets[targets.len() - 2..], [Path::new("/data"), Path::new("/etc/hosts")]);
    }

    #[test]
    fn spec_refuses_bad_input() {
        let root = rootfs();
        let img = image(json!({ "Cmd": ["sh"] }));
        let facts = host(1024, &[]);
        assert!(matches!(build(&run("i"), &img, Path::new("rel/rootfs"), &facts), Err(SpecError::NotAbsolute { .. })));
        let spec = ContainerSpec { user: Some("ghost".into()), ..run("i") };
        assert!(matches!(build(&spec, &img, root.path(), &facts), Err(SpecError::UnknownUser { .. })));
        let spec = ContainerSpec { memory_bytes: 1 << 20, ..run("i") };
        assert!(matches!(build(&spec, &img, root.path(), &facts), Err(SpecError::MemoryTooSmall { .. })));
        let input = SpecInput {
            spec: &run("i"),
            image: &img,
            rootfs: root.path(),
            hostname: &"h".repeat(65),
            netns: None,
            cgroups_path: Path::new("c"),
            etc_files: None,
        };
        assert!(matches!(build_spec_for_host(&input, &facts), Err(SpecError::Hostname { .. })));
    }

    #[test]
    fn spec_round_trips_through_json() {
        let root = rootfs();
        let spec =
            ContainerSpec { cpus_milli: 500, memory_bytes: 64 << 20, pids: 50, env: strings(&["A=1"]), ..run("i") };
        let oci =
            build(&spec, &image(json!({ "Cmd": ["sh"] })), root.path(), &host(1 << 20, &["memory"])).expect("spec");
        let text = serde_json::to_string_pretty(&oci).expect("serialises");
        let back: Spec = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, oci);
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(value["process"]["noNewPrivileges"], true);
        assert_eq!(value["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(value["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        // libcontainer's own loader takes it too.
        let file = root.path().join("config.json");
        oci.save(&file).expect("save");
        assert_eq!(Spec::load(&file).expect("load"), oci);
    }
}
