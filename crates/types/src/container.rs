//! Containers as the API and CLI see them: what to run (`ContainerSpec`), and what is running
//! (`ContainerInfo`, `ContainerStats`).
//!
//! The spec is Docker's `run` vocabulary: everything left unset comes from the image config.
//! Parsing of the CLI's short forms (`-p 8080:80`, `-v /a:/b:ro`, `--restart on-failure:3`)
//! lives here too, so the CLI and the agent reject the same inputs with the same words.

use serde::{Deserialize, Serialize};

/// What to run: the body of `POST /v1/containers`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContainerSpec {
    /// Container name; generated when absent. Unique on the peer.
    #[serde(default)]
    pub name: Option<String>,
    /// Image reference (`name:tag`, or a content id / digest).
    pub image: String,
    /// Replaces the image's Entrypoint when set (an empty list clears it).
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's Cmd when non-empty.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `KEY=VALUE` pairs, added to (and overriding) the image's Env.
    #[serde(default)]
    pub env: Vec<String>,
    /// CPU limit in millicpus (1000 = one core); none when 0.
    #[serde(default)]
    pub cpus_milli: u64,
    /// Memory limit in bytes; none when 0.
    #[serde(default)]
    pub memory_bytes: u64,
    /// Maximum number of processes; none when 0.
    #[serde(default)]
    pub pids: u64,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// Bind mounts from the host.
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// Restart policy.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Mount the root filesystem read-only.
    #[serde(default)]
    pub read_only: bool,
    /// `UID[:GID]` (numbers) or a user name from the image's /etc/passwd; the image's User when absent.
    #[serde(default)]
    pub user: Option<String>,
    /// Working directory; the image's WorkingDir (or `/`) when absent.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Remove the container when it exits (`--rm`).
    #[serde(default)]
    pub auto_remove: bool,
    /// Free-form labels (services mark their replicas with them).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// `bridge` (an address on the cluster network) or `none` (loopback only).
    #[serde(default)]
    pub network: NetworkMode,
}

/// How a container is networked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// An address on this peer's bridge, routed to every container of the cluster.
    #[default]
    Bridge,
    /// Its own network namespace with loopback only.
    None,
}

impl std::str::FromStr for NetworkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bridge" => Ok(NetworkMode::Bridge),
            "none" => Ok(NetworkMode::None),
            other => Err(format!("unknown network {other:?}: use bridge or none")),
        }
    }
}

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// `-p [IP:]HOST:CONTAINER[/tcp|/udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PortMapping {
    /// Port on the host.
    pub host_port: u16,
    /// Port inside the container.
    pub container_port: u16,
    /// The host address to answer on (every address, 127.0.0.1 included, when absent).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "127.0.0.1"))]
    pub host_ip: Option<std::net::Ipv4Addr>,
    /// TCP or UDP.
    #[serde(default)]
    pub protocol: Protocol,
}

/// `-v /host:/container[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VolumeMount {
    /// Absolute path on the host.
    pub host: String,
    /// Absolute path in the container.
    pub container: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// `--restart no|on-failure[:N]|always`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case", tag = "policy")]
pub enum RestartPolicy {
    /// Never restart.
    #[default]
    No,
    /// Restart after a non-zero exit, at most `max` times (0 = no bound).
    OnFailure {
        /// Most restarts; 0 for no bound.
        #[serde(default)]
        max: u32,
    },
    /// Restart whatever the exit status, until stopped by the user.
    Always,
}

impl RestartPolicy {
    /// Whether a container that exited with `code` after `restarts` restarts should run again.
    pub fn should_restart(&self, code: i32, restarts: u32) -> bool {
        match *self {
            RestartPolicy::No => false,
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure { max } => code != 0 && (max == 0 || restarts < max),
        }
    }
}

/// Why a CLI short form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecParseError {
    /// `-p {0}`: expected [IP:]HOST:CONTAINER[/udp] with ports 1-65535 (like -p 8080:80)
    #[error(
        "-p {0}: expected [IP:]HOST:CONTAINER[/tcp|/udp] with ports 1-65535, like -p 8080:80 or -p 127.0.0.1:53:53/udp"
    )]
    Port(String),
    /// `-v {0}`: expected /host/path:/container/path[:ro|:rw], both absolute
    #[error("-v {0}: expected /host/path:/container/path[:ro|:rw], both absolute")]
    Volume(String),
    /// `--restart {0}`: expected no, always, or on-failure[:N]
    #[error("--restart {0}: expected no, always, or on-failure[:N]")]
    Restart(String),
    /// `-e {0}`: expected KEY=VALUE
    #[error("-e {0}: expected KEY=VALUE with a non-empty KEY")]
    Env(String),
    /// `--name {0}`
    #[error("--name {0}: names are 1-64 characters of letters, digits, '_', '.', '-', starting with a letter or digit")]
    Name(String),
}

impl PortMapping {
    /// A TCP mapping on every host address.
    pub fn tcp(host_port: u16, container_port: u16) -> PortMapping {
        PortMapping { host_port, container_port, host_ip: None, protocol: Protocol::Tcp }
    }

    /// Parses `[IP:]HOST:CONTAINER[/tcp|/udp]`.
    pub fn parse(text: &str) -> Result<PortMapping, SpecParseError> {
        let err = || SpecParseError::Port(text.to_string());
        let (body, protocol) = match text.rsplit_once('/') {
            Some((b, "tcp")) => (b, Protocol::Tcp),
            Some((b, "udp")) => (b, Protocol::Udp),
            Some(_) => return Err(err()),
            None => (text, Protocol::Tcp),
        };
        let port = |s: &str| s.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(err);
        let parts: Vec<&str> = body.split(':').collect();
        let (host_ip, host, container) = match parts.as_slice() {
            [h, c] => (None, *h, *c),
            [ip, h, c] => (Some(ip.parse::<std::net::Ipv4Addr>().map_err(|_| err())?), *h, *c),
            _ => return Err(err()),
        };
        Ok(PortMapping { host_port: port(host)?, container_port: port(container)?, host_ip, protocol })
    }
}

impl PortMapping {
    /// As `docker ps` shows it: `0.0.0.0:8080->80/tcp`.
    pub fn docker_style(&self) -> String {
        let ip = self.host_ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
        format!("{ip}:{}->{}/{}", self.host_port, self.container_port, self.protocol)
    }
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(f, "{}:{}/{}", self.host_port, self.container_port, self.protocol)
    }
}

impl VolumeMount {
    /// Parses `/host:/container[:ro|:rw]`.
    pub fn parse(text: &str) -> Result<VolumeMount, SpecParseError> {
        let err = || SpecParseError::Volume(text.to_string());
        let mut parts = text.split(':');
        let host = parts.next().filter(|p| p.starts_with('/')).ok_or_else(err)?;
        let container = parts.next().filter(|p| p.starts_with('/')).ok_or_else(err)?;
        let read_only = match parts.next() {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(_) => return Err(err()),
        };
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(VolumeMount { host: host.into(), container: container.into(), read_only })
    }
}

impl RestartPolicy {
    /// Parses Docker's `--restart` forms.
    pub fn parse(text: &str) -> Result<RestartPolicy, SpecParseError> {
        match text {
            "no" => Ok(RestartPolicy::No),
            "always" | "unless-stopped" => Ok(RestartPolicy::Always),
            "on-failure" => Ok(RestartPolicy::OnFailure { max: 0 }),
            _ => text
                .strip_prefix("on-failure:")
                .and_then(|n| n.parse().ok())
                .map(|max| RestartPolicy::OnFailure { max })
                .ok_or_else(|| SpecParseError::Restart(text.to_string())),
        }
    }
}

/// Checks `-e KEY=VALUE`.
pub fn check_env(text: &str) -> Result<(), SpecParseError> {
    match text.split_once('=') {
        Some((k, _)) if !k.is_empty() && !k.contains('\0') => Ok(()),
        _ => Err(SpecParseError::Env(text.to_string())),
    }
}

/// Checks a container name (Docker's rule, bounded length).
pub fn check_name(name: &str) -> Result<(), SpecParseError> {
    let ok = (1..=64).contains(&name.len())
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok { Ok(()) } else { Err(SpecParseError::Name(name.to_string())) }
}

/// A container's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    /// Being set up.
    Created,
    /// Its process runs.
    Running,
    /// Exited; waiting out the restart back-off.
    Restarting,
    /// Exited and will not run again by itself.
    Exited,
}

impl std::fmt::Display for ContainerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Restarting => "restarting",
            ContainerState::Exited => "exited",
        })
    }
}

/// One container, as `ps`, `inspect` and the API show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContainerInfo {
    /// 64 hex characters; any unique prefix works in commands.
    pub id: String,
    /// Unique name on the peer.
    pub name: String,
    /// The image reference it was started from.
    pub image: String,
    /// The image manifest digest.
    pub image_digest: String,
    /// The command line it runs (entrypoint + cmd).
    pub command: Vec<String>,
    /// Lifecycle state.
    pub state: ContainerState,
    /// Pid of its init process on the host, while running.
    pub pid: Option<u32>,
    /// Exit code of the last run, once exited (137 after SIGKILL / OOM).
    pub exit_code: Option<i32>,
    /// `OOMKilled` when the memory limit killed it, else absent.
    pub reason: Option<String>,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Start time of the current/last run, seconds since the Unix epoch.
    pub started_unix: Option<u64>,
    /// Exit time of the last run, seconds since the Unix epoch.
    pub finished_unix: Option<u64>,
    /// Times restarted by the restart policy.
    pub restarts: u32,
    /// Its address on the peer's container bridge.
    pub ip: Option<String>,
    /// The spec it was created with.
    pub spec: ContainerSpec,
}

/// Resource use of one running container, read from its cgroups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContainerStats {
    /// Container id.
    pub id: String,
    /// Container name.
    pub name: String,
    /// CPU use since the previous sample, in percent of one core.
    pub cpu_percent: f64,
    /// CPU time used since start, nanoseconds.
    pub cpu_nanos: u64,
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// Memory limit, bytes (0: none).
    pub memory_limit_bytes: u64,
    /// Processes and threads.
    pub pids: u64,
    /// Process limit (0: none).
    pub pids_limit: u64,
}

/// One line of a container's output (`logs`, attached `run`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogEntry {
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The text, with its newline when it had one.
    pub text: String,
    /// When the shim read it, nanoseconds since the Unix epoch.
    pub time_unix_nanos: u64,
}

/// What an attached `run` streams, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum AttachEvent {
    /// The container runs.
    Started {
        /// As created.
        container: Box<ContainerInfo>,
    },
    /// A line of output.
    Output(LogEntry),
    /// Its run is over; `exit_code` and `reason` say how.
    Exited {
        /// As it ended.
        container: Box<ContainerInfo>,
    },
    /// Following failed; the container may still run.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// What `exec` streams, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum ExecEvent {
    /// Output of the command.
    Output(LogEntry),
    /// The command ended with this exit code.
    Exit {
        /// Exit code (128+signal when killed, 126/127 when it could not run).
        code: i32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_short_forms() {
        assert_eq!(PortMapping::parse("8080:80"), Ok(PortMapping::tcp(8080, 80)));
        let udp = PortMapping::parse("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!(
            (udp.host_ip, udp.host_port, udp.container_port, udp.protocol),
            (Some([127, 0, 0, 1].into()), 5353, 53, Protocol::Udp)
        );
        assert_eq!(udp.to_string(), "127.0.0.1:5353:53/udp");
        assert!(PortMapping::parse("1.2.3:80:80").is_err() && PortMapping::parse("80:80/sctp").is_err());
        assert_eq!(PortMapping::parse("8080:80/tcp").map(|p| p.container_port), Ok(80));
        for bad in ["80", "0:80", "a:b", "70000:80", "8080:80/sctp", "1.2.3.4:0:80"] {
            assert!(PortMapping::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            VolumeMount::parse("/a:/b:ro"),
            Ok(VolumeMount { host: "/a".into(), container: "/b".into(), read_only: true })
        );
        assert!(VolumeMount::parse("a:/b").is_err());
        assert!(VolumeMount::parse("/a:/b:rx").is_err());
        assert_eq!(RestartPolicy::parse("on-failure:3"), Ok(RestartPolicy::OnFailure { max: 3 }));
        assert!(RestartPolicy::parse("sometimes").is_err());
        assert!(check_env("A=1").is_ok() && check_env("=1").is_err() && check_env("A").is_err());
        assert!(check_name("web-1").is_ok() && check_name("-x").is_err() && check_name("a/b").is_err());
    }

    #[test]
    fn restart_policy_decides() {
        assert!(!RestartPolicy::No.should_restart(1, 0));
        assert!(RestartPolicy::Always.should_restart(0, 100));
        let p = RestartPolicy::OnFailure { max: 2 };
        assert!(p.should_restart(1, 1) && !p.should_restart(1, 2) && !p.should_restart(0, 0));
    }
}
