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

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    Capabilities, Capability, Linux, LinuxCapabilities, LinuxCpu, LinuxDeviceCgroup, LinuxDeviceType, LinuxMemory,
    LinuxNamespace, LinuxNamespaceType, LinuxPids, LinuxResources, Mount, PosixRlimit, PosixRlimitBuilder,
    PosixRlimitType, Process, Root, Spec, User,
};
use shoal_types::{ContainerSpec, VolumeMount};

/// `PATH` when the image sets none: Docker's default.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Smallest memory limit accepted: Docker's minimum, 6 MiB.
pub const MIN_MEMORY_BYTES: u64 = 6 << 20;
/// CFS period of the CPU limit, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// Smallest CFS quota the kernel accepts (1 ms), so the smallest limit is 10 millicpus.
const MIN_CPU_QUOTA_US: u64 = 1_000;
/// Soft `RLIMIT_NOFILE` of the container's process.
pub const NOFILE_SOFT: u64 = 1024;
/// Hard `RLIMIT_NOFILE` of the container's process, when this process may grant it.
pub const NOFILE_HARD: u64 = 20_000;
/// Largest user or group id: runc refuses ids above `i32::MAX`.
const MAX_ID: u64 = i32::MAX as u64;
/// Largest /etc/passwd or /etc/group read from an image.
const MAX_USER_DB_BYTES: u64 = 1 << 20;
/// Symlinks followed while looking up one path in the root filesystem, as the kernel's limit.
const MAX_SYMLINKS: usize = 40;
/// Where cgroup hierarchies are mounted, on the host and in the container.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

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

/// What the spec depends on about the host; [`HostFacts::probe`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// Hard `RLIMIT_NOFILE` of this process: without `CAP_SYS_RESOURCE` a container cannot get more.
    pub nofile_hard: u64,
    /// Names of the cgroup v1 hierarchies mounted under /sys/fs/cgroup (`memory`, `cpu,cpuacct`,
    /// `systemd`, ...); empty on a cgroup v2-only host.
    pub cgroup_v1_hierarchies: Vec<String>,
}

/// A user resolved to ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups; never empty (see the module header).
    pub additional_gids: Vec<u32>,
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

/// The command line the container runs, with Docker's rules for Entrypoint and Cmd.
pub fn resolve_command(spec: &ContainerSpec, image: &ImageConfiguration) -> Result<Vec<String>, SpecError> {
    let config = image.config().as_ref();
    let mut command = match &spec.entrypoint {
        // `--entrypoint ""` arrives as [""] (Docker's CLI) or []: both clear the Entrypoint.
        Some(entrypoint) if entrypoint.len() == 1 && entrypoint[0].is_empty() => Vec::new(),
        Some(entrypoint) => entrypoint.clone(),
        None => config.and_then(|c| c.entrypoint().clone()).unwrap_or_default(),
    };
    if !spec.cmd.is_empty() {
        command.extend(spec.cmd.iter().cloned());
    } else if spec.entrypoint.is_none() {
        // A given entrypoint drops the image's Cmd, as in Docker.
        command.extend(config.and_then(|c| c.cmd().clone()).unwrap_or_default());
    }
    match command.first() {
        None => return Err(SpecError::NoCommand { image: spec.image.clone() }),
        Some(program) if program.is_empty() => return Err(SpecError::EmptyProgram { command }),
        Some(_) => {}
    }
    if let Some(arg) = command.iter().find(|a| a.contains('\0')) {
        return Err(SpecError::NulInArgument { arg: arg.clone() });
    }
    Ok(command)
}

/// The container's environment: `PATH`, `HOSTNAME`, the image's Env, then `-e` entries.
pub fn resolve_env(spec: &ContainerSpec, image: &ImageConfiguration, hostname: &str) -> Result<Vec<String>, SpecError> {
    let mut env: Vec<(String, String)> =
        vec![("PATH".into(), DEFAULT_PATH.into()), ("HOSTNAME".into(), hostname.to_string())];
    for entry in image.config().as_ref().and_then(|c| c.env().as_ref()).into_iter().flatten() {
        match split_env(entry) {
            Some((key, value)) => set_env(&mut env, key, value),
            // Never log the entry: it may hold a secret.
            None => tracing::warn!(image = %spec.image, "ignoring an Env entry of the image that is not KEY=VALUE"),
        }
    }
    for entry in &spec.env {
        let (key, value) = split_env(entry).ok_or_else(|| SpecError::Env { entry: entry.clone(), origin: "-e" })?;
        set_env(&mut env, key, value);
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

fn split_env(entry: &str) -> Option<(&str, &str)> {
    entry.split_once('=').filter(|(key, _)| !key.is_empty() && !entry.contains('\0'))
}

fn set_env(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value.to_string(),
        None => env.push((key.to_string(), value.to_string())),
    }
}

/// The working directory: `--workdir`, else the image's WorkingDir, else `/`.
pub fn resolve_workdir(spec: &ContainerSpec, image: &ImageConfiguration) -> Result<String, SpecError> {
    let from_image = image.config().as_ref().and_then(|c| c.working_dir().as_deref());
    let (workdir, origin) = match (spec.workdir.as_deref(), from_image) {
        (Some(w), _) if !w.is_empty() => (w, "--workdir"),
        (_, Some(w)) if !w.is_empty() => (w, "the image's WorkingDir"),
        _ => return Ok("/".into()),
    };
    if !workdir.starts_with('/') || workdir.contains('\0') {
        return Err(SpecError::BadWorkdir { workdir: workdir.to_string(), origin });
    }
    Ok(workdir.to_string())
}

/// The user to run as: `--user`, else the image's User, else root, resolved against the
/// image's /etc/passwd and /etc/group the way runc does for Docker.
pub fn resolve_user(
    rootfs: &Path,
    spec: &ContainerSpec,
    image: &ImageConfiguration,
) -> Result<ResolvedUser, SpecError> {
    let from_image = image.config().as_ref().and_then(|c| c.user().as_deref());
    let (user, origin) = match spec.user.as_deref() {
        Some(u) if !u.is_empty() => (u, "--user"),
        _ => (from_image.unwrap_or(""), "the image's User"),
    };
    lookup_user(rootfs, user, origin, &spec.image)
}

/// Resolves `user` (`UID`, `UID:GID`, `NAME`, `NAME:GROUP`, or empty for root).
///
/// A numeric user need not exist: its group is then 0. A named user or group must. Without an
/// explicit group, the supplementary groups are those listing the user's name as a member.
fn lookup_user(rootfs: &Path, user: &str, origin: &'static str, image: &str) -> Result<ResolvedUser, SpecError> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if user.contains('\0') || group_part.is_some_and(|g| g.is_empty() || g.contains(':')) {
        return Err(SpecError::BadUser { user: user.to_string(), origin });
    }
    let uid_number = numeric_id(user_part, user)?;
    let gid_number = match group_part {
        Some(g) => numeric_id(g, user)?,
        None => None,
    };
    if let (Some(uid), Some(gid)) = (uid_number, gid_number) {
        // Nothing to look up: no supplementary groups with an explicit group, as in runc.
        return Ok(ResolvedUser { uid, gid, additional_gids: vec![gid] });
    }
    let passwd = read_user_db(rootfs, "/etc/passwd", image)?;
    let users = parse_passwd(passwd.as_deref().unwrap_or(""));
    let entry = if user_part.is_empty() {
        users.iter().find(|u| u.uid == 0)
    } else if let Some(uid) = uid_number {
        users.iter().find(|u| u.uid == uid)
    } else {
        let found = users.iter().find(|u| u.name == user_part);
        Some(found.ok_or_else(|| SpecError::UnknownUser { name: user_part.to_string(), image: image.to_string() })?)
    };
    let uid = match (entry, uid_number) {
        (Some(e), _) => e.uid,
        (None, Some(uid)) => uid,
        (None, None) => 0,
    };
    let needs_groups = match group_part {
        Some(_) => gid_number.is_none(),
        None => entry.is_some(),
    };
    let group_text = if needs_groups { read_user_db(rootfs, "/etc/group", image)? } else { None };
    let groups = parse_group(group_text.as_deref().unwrap_or(""));
    let (gid, mut additional_gids) = match group_part {
        Some(g) => match gid_number {
            Some(gid) => (gid, Vec::new()),
            None => {
                let group = groups
                    .iter()
                    .find(|e| e.name == g)
                    .ok_or_else(|| SpecError::UnknownGroup { name: g.to_string(), image: image.to_string() })?;
                (group.gid, Vec::new())
            }
        },
        None => {
            let gid = entry.map_or(0, |e| e.gid);
            let member_of: Vec<u32> = match entry {
                Some(e) => groups.iter().filter(|g| g.members.contains(&e.name)).map(|g| g.gid).collect(),
                None => Vec::new(),
            };
            (gid, member_of)
        }
    };
    let mut seen = Vec::with_capacity(additional_gids.len());
    additional_gids.retain(|g| {
        if seen.contains(g) {
            false
        } else {
            seen.push(*g);
            true
        }
    });
    if additional_gids.is_empty() {
        additional_gids.push(gid);
    }
    Ok(ResolvedUser { uid, gid, additional_gids })
}

/// `Some(id)` when `text` is all digits, an error when that number is out of range.
fn numeric_id(text: &str, user: &str) -> Result<Option<u32>, SpecError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    let out_of_range = || SpecError::IdOutOfRange { user: user.to_string(), id: text.to_string() };
    let id: u64 = text.parse().map_err(|_| out_of_range())?;
    if id > MAX_ID {
        return Err(out_of_range());
    }
    u32::try_from(id).map(Some).map_err(|_| out_of_range())
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn parse_id(field: &str) -> Option<u32> {
    field.trim().parse::<u32>().ok().filter(|id| u64::from(*id) <= MAX_ID)
}

/// Lines `name:password:uid:gid:...`; malformed ones are skipped, as libc does.
fn parse_passwd(text: &str) -> Vec<PasswdEntry<'_>> {
    text.lines().filter_map(passwd_entry).collect()
}

fn passwd_entry(line: &str) -> Option<PasswdEntry<'_>> {
    let mut fields = line.split(':');
    let name = fields.next().filter(|n| !n.is_empty() && !n.starts_with('#'))?;
    let _password = fields.next()?;
    Some(PasswdEntry { name, uid: parse_id(fields.next()?)?, gid: parse_id(fields.next()?)? })
}

/// Lines `name:password:gid:member,member`; malformed ones are skipped.
fn parse_group(text: &str) -> Vec<GroupEntry<'_>> {
    text.lines().filter_map(group_entry).collect()
}

fn group_entry(line: &str) -> Option<GroupEntry<'_>> {
    let mut fields = line.split(':');
    let name = fields.next().filter(|n| !n.is_empty() && !n.starts_with('#'))?;
    let _password = fields.next()?;
    let gid = parse_id(fields.next()?)?;
    let members = fields.next().unwrap_or("").split(',').map(str::trim).filter(|m| !m.is_empty()).collect();
    Some(GroupEntry { name, gid, members })
}

/// The contents of /etc/passwd or /etc/group in the image, `None` when it has none.
fn read_user_db(rootfs: &Path, file: &'static str, image: &str) -> Result<Option<String>, SpecError> {
    let bytes = read_in_rootfs(rootfs, Path::new(file), MAX_USER_DB_BYTES)
        .map_err(|source| SpecError::UserDatabase { file, image: image.to_string(), source })?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// Reads `path` as the container would see it (symlinks resolved inside `rootfs`, never out of
/// it); `None` when it does not exist. Refuses anything but a regular file of at most `limit` bytes.
fn read_in_rootfs(rootfs: &Path, path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let Some(resolved) = resolve_in_rootfs(rootfs, path)? else { return Ok(None) };
    // O_NOFOLLOW: the last component was checked not to be a symlink; O_NONBLOCK: a FIFO planted
    // there must not hang the open.
    let file = match fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&resolved)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "it is not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("it is larger than {} KiB", limit >> 10)));
    }
    Ok(Some(bytes))
}

enum Step {
    Up,
    Name(OsString),
}

fn steps(path: &Path) -> Vec<Step> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(Step::Name(name.to_os_string())),
            Component::ParentDir => Some(Step::Up),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Resolves `path` inside `rootfs` as if `rootfs` were `/`: `..` stops at the top and an absolute
/// symlink restarts from `rootfs`, so the result is always under `rootfs`. `None` when a component
/// does not exist. The result's last component is not a symlink.
fn resolve_in_rootfs(rootfs: &Path, path: &Path) -> io::Result<Option<PathBuf>> {
    let mut pending: VecDeque<Step> = steps(path).into();
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(step) = pending.pop_front() {
        let name = match step {
            Step::Up => {
                resolved.pop();
                continue;
            }
            Step::Name(name) => name,
        };
        let candidate = rootfs.join(&resolved).join(&name);
        let meta = match fs::symlink_metadata(&candidate) {
            Ok(meta) => meta,
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => return Ok(None),
            Err(e) => return Err(e),
        };
        if !meta.file_type().is_symlink() {
            resolved.push(name);
            continue;
        }
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "too many levels of symbolic links"));
        }
        let target = fs::read_link(&candidate)?;
        if target.is_absolute() {
            resolved = PathBuf::new();
        }
        for step in steps(&target).into_iter().rev() {
            pending.push_front(step);
        }
    }
    Ok(Some(rootfs.join(resolved)))
}

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

fn mount(target: impl Into<PathBuf>, typ: &str, source: impl Into<PathBuf>, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(target.into())
        .set_typ(Some(typ.to_string()))
        .set_source(Some(source.into()))
        .set_options(Some(options.iter().map(|o| (*o).to_string()).collect()));
    m
}

/// runc's (and Docker's) default mounts.
fn default_mounts() -> Vec<Mount> {
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
fn readonly_paths(host: &HostFacts) -> Vec<String> {
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
fn volume_mounts(volumes: &[VolumeMount]) -> Result<Vec<Mount>, SpecError> {
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

/// CPU quota over [`CPU_PERIOD_US`], memory with swap equal to it (no swap beyond the limit),
/// pids, and Docker's device rules.
fn resources(spec: &ContainerSpec) -> Result<LinuxResources, SpecError> {
    let mut resources = LinuxResources::default();
    resources.set_devices(Some(device_rules()));
    if spec.memory_bytes != 0 {
        if spec.memory_bytes < MIN_MEMORY_BYTES {
            return Err(SpecError::MemoryTooSmall { bytes: spec.memory_bytes });
        }
        let limit = i64::try_from(spec.memory_bytes)
            .map_err(|_| SpecError::TooLarge { what: "memory limit", value: spec.memory_bytes })?;
        let mut memory = LinuxMemory::default();
        // OCI's swap is memory + swap: equal to the limit means no swap at all.
        memory.set_limit(Some(limit)).set_swap(Some(limit));
        resources.set_memory(Some(memory));
    }
    if spec.cpus_milli != 0 {
        let too_large = || SpecError::TooLarge { what: "CPU limit (millicpus)", value: spec.cpus_milli };
        let quota = spec.cpus_milli.checked_mul(CPU_PERIOD_US).ok_or_else(too_large)? / 1000;
        if quota < MIN_CPU_QUOTA_US {
            return Err(SpecError::CpuTooSmall { millis: spec.cpus_milli });
        }
        let mut cpu = LinuxCpu::default();
        cpu.set_quota(Some(i64::try_from(quota).map_err(|_| too_large())?)).set_period(Some(CPU_PERIOD_US));
        resources.set_cpu(Some(cpu));
    }
    if spec.pids != 0 {
        let limit =
            i64::try_from(spec.pids).map_err(|_| SpecError::TooLarge { what: "pids limit", value: spec.pids })?;
        let mut pids = LinuxPids::default();
        pids.set_limit(limit);
        resources.set_pids(Some(pids));
    }
    Ok(resources)
}

/// Deny every device, then allow Docker's defaults: creating any node (`m`), and using the
/// standard character devices and pseudo-terminals.
fn device_rules() -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::{A, B, C};
    let rule = |allow: bool, typ: LinuxDeviceType, major: Option<i64>, minor: Option<i64>, access: &str| {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(allow).set_typ(Some(typ)).set_major(major).set_minor(minor).set_access(Some(access.to_string()));
        r
    };
    vec![
        rule(false, A, None, None, "rwm"),
        rule(true, C, None, None, "m"),
        rule(true, B, None, None, "m"),
        rule(true, C, Some(1), Some(3), "rwm"), // null
        rule(true, C, Some(1), Some(5), "rwm"), // zero
        rule(true, C, Some(1), Some(7), "rwm"), // full
        rule(true, C, Some(1), Some(8), "rwm"), // random
        rule(true, C, Some(1), Some(9), "rwm"), // urandom
        rule(true, C, Some(5), Some(0), "rwm"), // tty
        rule(true, C, Some(5), Some(1), "rwm"), // console
        rule(true, C, Some(5), Some(2), "rwm"), // ptmx
        rule(true, C, Some(136), None, "rwm"),  // pts/*
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn image(config: serde_json::Value) -> ImageConfiguration {
        serde_json::from_value(json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": [] },
            "config": config,
        }))
        .expect("valid image config")
    }

    fn run(image: &str) -> ContainerSpec {
        ContainerSpec { image: image.into(), ..Default::default() }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn command_follows_docker() {
        let both = image(json!({ "Entrypoint": ["/ep", "-x"], "Cmd": ["default"] }));
        let cmd_only = image(json!({ "Cmd": ["sh"] }));
        let nothing = image(json!({}));
        // (image, --entrypoint, command, expected; None for "no command")
        type Case<'a> = (&'a ImageConfiguration, Option<&'a [&'a str]>, &'a [&'a str], Option<&'a [&'a str]>);
        let table: Vec<Case<'_>> = vec![
            (&both, None, &[], Some(&["/ep", "-x", "default"])),
            (&both, None, &["mine"], Some(&["/ep", "-x", "mine"])),
            (&both, Some(&["/other"]), &[], Some(&["/other"])),
            (&both, Some(&["/other"]), &["a"], Some(&["/other", "a"])),
            (&both, Some(&[""]), &["ls", "/"], Some(&["ls", "/"])),
            (&both, Some(&[]), &["ls"], Some(&["ls"])),
            (&both, Some(&[""]), &[], None),
            (&cmd_only, None, &[], Some(&["sh"])),
            (&cmd_only, None, &["echo", "hi"], Some(&["echo", "hi"])),
            (&cmd_only, Some(&["/bin/env"]), &[], Some(&["/bin/env"])),
            (&nothing, None, &[], None),
            (&nothing, None, &["true"], Some(&["true"])),
        ];
        for (img, entrypoint, cmd, expected) in table {
            let spec = ContainerSpec { entrypoint: entrypoint.map(strings), cmd: strings(cmd), ..run("img:1") };
            let got = resolve_command(&spec, img);
            match expected {
                Some(want) => assert_eq!(got.expect("a command"), strings(want), "{entrypoint:?} {cmd:?}"),
                None => {
                    let err = got.expect_err("no command");
                    assert!(matches!(err, SpecError::NoCommand { .. }), "{err}");
                    assert!(err.to_string().contains("give one after the image name"), "{err}");
                }
            }
        }
    }

    #[test]
    fn command_refuses_empty_program_and_nul() {
        let img = image(json!({ "Entrypoint": [""], "Cmd": ["x"] }));
        assert!(matches!(resolve_command(&run("i"), &img), Err(SpecError::EmptyProgram { .. })));
        let spec = ContainerSpec { cmd: strings(&["echo", "a\0b"]), ..run("i") };
        assert!(matches!(resolve_command(&spec, &image(json!({}))), Err(SpecError::NulInArgument { .. })));
    }

    #[test]
    fn env_merges_and_overrides_by_key() {
        let img = image(json!({ "Env": ["LANG=C", "FOO=image", "broken"] }));
        let spec = ContainerSpec { env: strings(&["FOO=mine", "NEW=1", "EMPTY="]), ..run("i") };
        let env = resolve_env(&spec, &img, "web").expect("env");
        assert_eq!(
            env,
            strings(&[&format!("PATH={DEFAULT_PATH}"), "HOSTNAME=web", "LANG=C", "FOO=mine", "NEW=1", "EMPTY="])
        );

        let img = image(json!({ "Env": ["PATH=/opt/bin"] }));
        let spec = ContainerSpec { env: strings(&["HOSTNAME=override"]), ..run("i") };
        assert_eq!(resolve_env(&spec, &img, "web").expect("env"), strings(&["PATH=/opt/bin", "HOSTNAME=override"]));

        for bad in ["NOEQUALS", "=v", "K=a\0b"] {
            let spec = ContainerSpec { env: strings(&[bad]), ..run("i") };
            assert!(matches!(resolve_env(&spec, &img, "h"), Err(SpecError::Env { .. })), "{bad}");
        }
    }

    #[test]
    fn workdir_comes_from_option_then_image_then_root() {
        let img = image(json!({ "WorkingDir": "/srv" }));
        assert_eq!(resolve_workdir(&run("i"), &img).expect("dir"), "/srv");
        let spec = ContainerSpec { workdir: Some("/app".into()), ..run("i") };
        assert_eq!(resolve_workdir(&spec, &img).expect("dir"), "/app");
        assert_eq!(resolve_workdir(&run("i"), &image(json!({}))).expect("dir"), "/");
        let spec = ContainerSpec { workdir: Some("app".into()), ..run("i") };
        let err = resolve_workdir(&spec, &img).expect_err("relative");
        assert!(err.to_string().contains("--workdir"), "{err}");
        let err = resolve_workdir(&run("i"), &image(json!({ "WorkingDir": "rel" }))).expect_err("relative");
        assert!(err.to_string().contains("image's WorkingDir"), "{err}");
    }

    /// A root filesystem with a small user database.
    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("etc")).expect("mkdir");
        fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n# comment\nbroken line\nweb:x:1000:1000::/home/web:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        )
        .expect("passwd");
        fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nwheel:x:10:root,web\nweb:x:1000:\naudio:x:29:web\nstaff:x:50:\nnogroup:x:65534:\n",
        )
        .expect("group");
        dir
    }

    fn user(root: &Path, user: &str) -> Result<ResolvedUser, SpecError> {
        lookup_user(root, user, "--user", "img:1")
    }

    fn ids(uid: u32, gid: u32, groups: &[u32]) -> ResolvedUser {
        ResolvedUser { uid, gid, additional_gids: groups.to_vec() }
    }

    #[test]
    fn user_forms_resolve_like_docker() {
        let root = rootfs();
        let r = root.path();
        assert_eq!(user(r, "").expect("root"), ids(0, 0, &[10]));
        assert_eq!(user(r, "web").expect("name"), ids(1000, 1000, &[10, 29]));
        assert_eq!(user(r, "1000").expect("uid"), ids(1000, 1000, &[10, 29]));
        assert_eq!(user(r, "4242").expect("unknown uid"), ids(4242, 0, &[0]));
        assert_eq!(user(r, "4242:77").expect("uid:gid"), ids(4242, 77, &[77]));
        assert_eq!(user(r, "web:staff").expect("name:group"), ids(1000, 50, &[50]));
        assert_eq!(user(r, "1000:audio").expect("uid:group"), ids(1000, 29, &[29]));
        assert_eq!(user(r, "nobody").expect("nobody"), ids(65534, 65534, &[65534]));

        let err = user(r, "ghost").expect_err("unknown");
        assert!(matches!(&err, SpecError::UnknownUser { name, .. } if name == "ghost"), "{err}");
        assert!(err.to_string().contains("img:1"), "{err}");
        assert!(matches!(user(r, "web:ghosts"), Err(SpecError::UnknownGroup { .. })));
        for bad in ["web:", "a:b:c"] {
            assert!(matches!(user(r, bad), Err(SpecError::BadUser { .. })), "{bad}");
        }
        assert!(matches!(user(r, "2147483648"), Err(SpecError::IdOutOfRange { .. })));
        assert!(matches!(user(r, "1:99999999999999999999"), Err(SpecError::IdOutOfRange { .. })));
    }

    #[test]
    fn user_without_user_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(user(dir.path(), "123").expect("numeric"), ids(123, 0, &[0]));
        assert_eq!(user(dir.path(), "").expect("root"), ids(0, 0, &[0]));
        assert!(matches!(user(dir.path(), "web"), Err(SpecError::UnknownUser { .. })));
    }

    #[test]
    fn user_comes_from_option_then_image() {
        let root = rootfs();
        let img = image(json!({ "User": "web" }));
        assert_eq!(resolve_user(root.path(), &run("i"), &img).expect("image user").uid, 1000);
        let spec = ContainerSpec { user: Some("0".into()), ..run("i") };
        assert_eq!(resolve_user(root.path(), &spec, &img).expect("option").uid, 0);
    }

    #[test]
    fn user_database_symlinks_stay_inside_the_rootfs() {
        // A host file that must never be read: it defines "evil".
        let host = tempfile::tempdir().expect("tempdir");
        let host_passwd = host.path().join("passwd");
        fs::write(&host_passwd, "evil:x:4242:4242::/:/bin/sh\n").expect("host passwd");

        let root = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(root.path().join("etc")).expect("mkdir");
        std::os::unix::fs::symlink(&host_passwd, root.path().join("etc/passwd")).expect("symlink");
        assert!(matches!(user(root.path(), "evil"), Err(SpecError::UnknownUser { .. })), "absolute symlink escaped");

        fs::remove_file(root.path().join("etc/passwd")).expect("rm");
        let climb = format!("../../../../../../../..{}", host_passwd.display());
        std::os::unix::fs::symlink(&climb, root.path().join("etc/passwd")).expect("symlink");
        assert!(matches!(user(root.path(), "evil"), Err(SpecError::UnknownUser { .. })), "relative symlink escaped");

        // The same absolute target, present inside the root filesystem, is what counts.
        let inside = root.path().join(host_passwd.strip_prefix("/").expect("absolute"));
        fs::create_dir_all(inside.parent().expect("parent")).expect("mkdir");
        fs::write(&inside, "app:x:500:500::/:/bin/sh\n").expect("inner passwd");
        fs::remove_file(root.path().join("etc/passwd")).expect("rm");
        std::os::unix::fs::symlink(&host_passwd, root.path().join("etc/passwd")).expect("symlink");
        assert_eq!(user(root.path(), "app").expect("resolved inside"), ids(500, 500, &[500]));

        // A loop is an error, not a hang.
        fs::remove_file(root.path().join("etc/passwd")).expect("rm");
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("etc/passwd")).expect("symlink");
        assert!(matches!(user(root.path(), "app"), Err(SpecError::UserDatabase { .. })));
    }

    #[test]
    fn user_database_must_be_small_and_regular() {
        let root = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(root.path().join("etc/passwd")).expect("a directory");
        assert!(matches!(user(root.path(), "web"), Err(SpecError::UserDatabase { .. })));
        fs::remove_dir(root.path().join("etc/passwd")).expect("rm");
        let big = "x".repeat((MAX_USER_DB_BYTES + 1) as usize);
        fs::write(root.path().join("etc/passwd"), big).expect("big");
        let err = user(root.path(), "web").expect_err("too big");
        assert!(err.to_string().contains("larger than") && err.to_string().contains("UID:GID"), "{err}");
        // As the message says, numeric UID:GID needs no user database.
        assert_eq!(user(root.path(), "5:6").expect("numeric"), ids(5, 6, &[6]));
        nix::unistd::mkfifo(&root.path().join("etc/group"), nix::sys::stat::Mode::S_IRWXU).expect("fifo");
        fs::write(root.path().join("etc/passwd"), "web:x:1:1::/:/bin/sh\n").expect("passwd");
        assert!(matches!(user(root.path(), "web"), Err(SpecError::UserDatabase { file: "/etc/group", .. })));
    }

    #[test]
    fn resources_convert() {
        let spec = ContainerSpec { cpus_milli: 1500, memory_bytes: 256 << 20, pids: 100, ..run("i") };
        let r = resources(&spec).expect("resources");
        let cpu = r.cpu().as_ref().expect("cpu");
        assert_eq!((cpu.quota(), cpu.period()), (Some(150_000), Some(100_000)));
        let memory = r.memory().as_ref().expect("memory");
        assert_eq!((memory.limit(), memory.swap()), (Some(256 << 20), Some(256 << 20)));
        assert_eq!(r.pids().as_ref().map(|p| p.limit()), Some(100));

        let none = resources(&run("i")).expect("no limits");
        assert!(none.cpu().is_none() && none.memory().is_none() && none.pids().is_none());
        let devices = none.devices().as_ref().expect("devices");
        assert_eq!(devices[0].to_string(), "a *:* rwm");
        assert!(!devices[0].allow());
        let allowed: Vec<String> = devices.iter().filter(|d| d.allow()).map(|d| d.to_string()).collect();
        for want in ["c *:* m", "b *:* m", "c 1:3 rwm", "c 1:9 rwm", "c 5:2 rwm", "c 136:* rwm"] {
            assert!(allowed.iter().any(|a| a == want), "{want} missing from {allowed:?}");
        }
    }

    #[test]
    fn resources_refuse_unenforceable_limits() {
        let spec = ContainerSpec { memory_bytes: (6 << 20) - 1, ..run("i") };
        let err = resources(&spec).expect_err("too small");
        assert!(matches!(err, SpecError::MemoryTooSmall { .. }) && err.to_string().contains("6 MiB"), "{err}");
        assert!(resources(&ContainerSpec { memory_bytes: 6 << 20, ..run("i") }).is_ok());
        assert!(matches!(resources(&ContainerSpec { cpus_milli: 9, ..run("i") }), Err(SpecError::CpuTooSmall { .. })));
        assert!(resources(&ContainerSpec { cpus_milli: 10, ..run("i") }).is_ok());
        for spec in [
            ContainerSpec { cpus_milli: u64::MAX, ..run("i") },
            ContainerSpec { memory_bytes: u64::MAX, ..run("i") },
            ContainerSpec { pids: u64::MAX, ..run("i") },
        ] {
            assert!(matches!(resources(&spec), Err(SpecError::TooLarge { .. })));
        }
    }

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
