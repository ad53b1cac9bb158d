//! The OCI runtime spec of one container, built from `run`'s options ([`ContainerSpec`]) and the
//! image's config, with Docker's defaults and Docker's meaning for every option.
//!
//! What comes from where:
//! - command ([`resolve_command`]): `--entrypoint` replaces the image's Entrypoint and drops its
//!   Cmd; otherwise Entrypoint + (the given command, else the image's Cmd).
//! - environment ([`resolve_env`]): Docker's default `PATH`, `HOSTNAME`, the image's Env, then the
//!   `-e` entries; a later entry replaces an earlier one with the same key.
//! - working directory ([`resolve_workdir`]): `--workdir`, else the image's WorkingDir, else `/`.
//! - user ([`resolve_user`]): `--user`, else the image's User, looked up in the image's own
//!   /etc/passwd and /etc/group. The root filesystem is untrusted: those files are found without
//!   following a symlink out of it and read up to a bounded size.
//! - process: no terminal, `no_new_privileges`, umask 022, Docker's default capabilities,
//!   `RLIMIT_NOFILE` 1024/20000 lowered to what this process may grant.
//! - namespaces: pid, mount, uts, ipc, cgroup, and network (joined when a path is given).
//! - mounts: runc's defaults, the generated /etc files read-only, then the volumes.
//! - masked and read-only paths: Docker's lists.
//! - resources: a CPU quota over a 100 ms period, memory without swap beyond it, pids, and
//!   Docker's device allow list. Seccomp: [`crate::seccomp::default_profile`].
//!
//! # What libcontainer 0.7 does with it, and what that changes here
//! - Capability sets the spec leaves out are left as they are, not emptied as runc does. Docker
//!   leaves effective and permitted out for a non-root user; here they are given, empty, or the
//!   process would keep the shim's full sets until `execve`.
//! - `setgroups` is skipped for an empty supplementary group list, which would leave the container
//!   with the shim's groups; the list therefore always holds at least the primary group.
//! - On a cgroup v1 or hybrid host (like this one: v1 controllers under /sys/fs/cgroup/<name>,
//!   cgroup2 at /sys/fs/cgroup/unified), the `cgroup` mount becomes a tmpfs plus one fresh mount per
//!   v1 hierarchy (namespaced, as the container has a cgroup namespace), and the `ro` option is
//!   lost: all of them end up writable, so a root process could raise its own memory limit. The
//!   tmpfs and every hierarchy ([`HostFacts::cgroup_v1_hierarchies`]) are therefore also listed as
//!   read-only paths, which libcontainer bind-remounts read-only after the pivot. The cgroup2
//!   hierarchy of a hybrid host is not mounted in the container. On a cgroup v2-only host the
//!   mount is a `cgroup2` mount that keeps `ro`.
//! - Mounts use the new mount API (`fsopen`, `open_tree`, `mount_setattr`): a read-only bind only
//!   covers sub-mounts with the recursive `rro` option, which read-only volumes carry.

//!
//! # Where it lives
//! `process` (command, environment, working directory), `user` (the user database, read
//! safely), `mounts`, `resources`, `host` ([`HostFacts`]) and `build` ([`build_spec`]), which
//! puts them together.

mod build;
mod host;
mod mounts;
mod process;
mod resources;
#[cfg(test)]
mod test_support;
mod user;

pub use build::{build_spec, build_spec_for_host};
pub use host::HostFacts;
pub use process::{resolve_command, resolve_env, resolve_workdir};
pub use user::{ResolvedUser, resolve_user};

use std::io;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::Capability;
use shoal_types::ContainerSpec;

/// `PATH` when the image sets none: Docker's default.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Smallest memory limit accepted: Docker's minimum, 6 MiB.
pub const MIN_MEMORY_BYTES: u64 = 6 << 20;
/// CFS period of the CPU limit, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// Soft `RLIMIT_NOFILE` of the container's process.
pub const NOFILE_SOFT: u64 = 1024;
/// Hard `RLIMIT_NOFILE` of the container's process, when this process may grant it.
pub const NOFILE_HARD: u64 = 20_000;

/// Docker's default capability set.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths hidden from the container (Docker's list): kernel memory, keys, timers, firmware, and
/// the power-capping counters of the Platypus side channel.
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths the container may read but not write (Docker's list).
pub const READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Host paths of the generated /etc files, bind-mounted read-only into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcFiles {
    /// Becomes /etc/hosts.
    pub hosts: PathBuf,
    /// Becomes /etc/hostname.
    pub hostname: PathBuf,
    /// Becomes /etc/resolv.conf.
    pub resolv_conf: PathBuf,
}

/// Everything [`build_spec`] needs about one container.
#[derive(Debug, Clone)]
pub struct SpecInput<'a> {
    /// What the user asked for.
    pub spec: &'a ContainerSpec,
    /// The image's config (its `config` part gives Entrypoint, Cmd, Env, WorkingDir, User).
    pub image: &'a ImageConfiguration,
    /// The container's root filesystem, mounted; absolute.
    pub rootfs: &'a Path,
    /// Hostname inside the container (also `$HOSTNAME`).
    pub hostname: &'a str,
    /// A network namespace to join (like /run/netns/NAME); a new, empty one when absent.
    pub netns: Option<&'a Path>,
    /// The container's cgroup, as libcontainer takes it.
    pub cgroups_path: &'a Path,
    /// The generated /etc files, if any.
    pub etc_files: Option<EtcFiles>,
}

/// Why no spec could be built. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Neither the options nor the image give a command.
    #[error(
        "image {image} defines no command (no Entrypoint or Cmd): give one after the image name, like `shoal run {image} sh -c '...'`"
    )]
    NoCommand { image: String },
    /// The command's first word is empty.
    #[error("the command {command:?} starts with an empty program name; put the program to run first")]
    EmptyProgram { command: Vec<String> },
    /// An argument holds a NUL byte, which `execve` cannot pass.
    #[error("command argument {arg:?} contains a NUL byte, which no program can receive; remove it")]
    NulInArgument { arg: String },
    /// An environment entry is not `KEY=VALUE`.
    #[error("environment entry {entry:?} (from {origin}): expected KEY=VALUE with a non-empty KEY and no NUL byte")]
    Env { entry: String, origin: &'static str },
    /// The working directory is not an absolute path.
    #[error(
        "working directory {workdir:?} (from {origin}) is not an absolute path; give one that starts with /, like --workdir /app"
    )]
    BadWorkdir { workdir: String, origin: &'static str },
    /// The user is not one of the accepted forms.
    #[error("user {user:?} (from {origin}): expected UID, UID:GID, NAME or NAME:GROUP, like --user 1000:1000")]
    BadUser { user: String, origin: &'static str },
    /// A numeric id is too large.
    #[error("id {id} in user {user:?} is out of range: user and group ids go from 0 to 2147483647")]
    IdOutOfRange { user: String, id: String },
    /// A user name the image does not define.
    #[error(
        "user {name:?} is not in /etc/passwd of image {image}; give a numeric id (like --user 1000:1000) or a user the image defines"
    )]
    UnknownUser { name: String, image: String },
    /// A group name the image does not define.
    #[error(
        "group {name:?} is not in /etc/group of image {image}; give a numeric id (like --user 1000:1000) or a group the image defines"
    )]
    UnknownGroup { name: String, image: String },
    /// The image's /etc/passwd or /etc/group cannot be read.
    #[error("cannot read {file} of image {image} ({source}); give --user as numeric UID:GID to run without it")]
    UserDatabase {
        file: &'static str,
        image: String,
        #[source]
        source: io::Error,
    },
    /// The memory limit is below Docker's minimum.
    #[error("memory limit of {bytes} bytes is below the minimum of 6 MiB; give at least -m 6m, or no limit")]
    MemoryTooSmall { bytes: u64 },
    /// The CPU limit is below what the kernel can enforce.
    #[error(
        "CPU limit of {millis} millicpus is below the minimum of 10 (0.01 CPU); give at least --cpus 0.01, or no limit"
    )]
    CpuTooSmall { millis: u64 },
    /// A limit does not fit the kernel's interface.
    #[error("{what} of {value} is too large; give a smaller value, or none for no limit")]
    TooLarge { what: &'static str, value: u64 },
    /// A volume's host path is relative.
    #[error("volume {volume}: the host path must be absolute, like -v /srv/data:/data")]
    VolumeHostNotAbsolute { volume: String },
    /// A volume's host path does not exist or cannot be reached.
    #[error("volume {volume}: host path {host} cannot be used ({source}); create it first or fix the path")]
    VolumeHostMissing {
        volume: String,
        host: String,
        #[source]
        source: io::Error,
    },
    /// A volume's container path is unusable.
    #[error("volume {volume}: the container path must be absolute, without `..`, and neither / nor under /proc")]
    VolumeContainerPath { volume: String },
    /// Two volumes share a container path.
    #[error("volume {volume}: {container} is already the target of another volume; give each volume its own path")]
    VolumeDuplicate { volume: String, container: String },
    /// The hostname cannot be set.
    #[error("hostname {hostname:?} is not valid: it must be 1-64 bytes without a NUL byte; choose a shorter name")]
    Hostname { hostname: String },
    /// A path the runtime passes in is relative (a bug in the caller).
    #[error("{what} {path} is not an absolute path; the runtime must pass absolute paths (this is a bug)")]
    NotAbsolute { what: &'static str, path: PathBuf },
    /// This process's file limit cannot be read.
    #[error("cannot read this process's RLIMIT_NOFILE ({source}); is /proc mounted?")]
    HostLimits {
        #[source]
        source: nix::errno::Errno,
    },
    /// The host's mount table cannot be read.
    #[error("cannot read /proc/self/mountinfo to find the cgroup v1 hierarchies ({source}); is /proc mounted?")]
    HostMounts {
        #[source]
        source: io::Error,
    },
}
