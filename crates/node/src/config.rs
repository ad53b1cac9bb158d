//! Agent configuration: defaults, then the `--config` TOML file, then command-line flags.
//!
//! Every setting has a default that gives a working single-peer cluster, so `shoal agent` with
//! no flags runs. The file uses the flags' names (`listen`, `join`, `cluster-key`, ...), and
//! flags always win over it. Join addresses may be multiaddrs or plain `host:port`.

use serde::Deserialize;
use shoal_overlay::SwimTuning;
use shoal_overlay::libp2p::Multiaddr;
use shoal_types::{ByteSize, Labels, Resources};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default overlay port.
pub const DEFAULT_PORT: u16 = 4100;

/// Configuration errors, each naming the bad value and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The config file is not valid TOML for Shoal
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    /// An address is neither a multiaddr nor host:port
    #[error("`{value}` is not an address: use a multiaddr such as /ip4/10.0.0.1/tcp/4100 or host:port")]
    BadAddr { value: String },
    /// A label is malformed
    #[error(transparent)]
    Label(#[from] shoal_types::LabelError),
    /// A resource amount is malformed
    #[error("bad {what}: {message}")]
    BadResource { what: &'static str, message: String },
    /// The API listen address is malformed
    #[error("`{value}` is not a host:port for --api-listen")]
    BadApiListen { value: String },
    /// A rate is malformed
    #[error("bad {what}: {source}")]
    BadRate { what: &'static str, source: shoal_types::rate::RateError },
    /// The data listen address is malformed
    #[error("`{value}` is not a host:port for --data-listen")]
    BadDataListen { value: String },
    #[error("`{value}` is not a host:port for --mirror-listen (or `off`)")]
    BadMirrorListen { value: String },
    #[error("`{value}` is not a host:port for --metrics-listen (or `off`)")]
    BadMetricsListen { value: String },
    /// The container subnet is malformed
    #[error("`{value}` is not an IPv4 subnet like 198.19.0.0/24 (prefix 8-29) for --container-subnet")]
    BadSubnet { value: String },
    /// The bridge name is not a valid interface name
    #[error("`{value}` is not a valid interface name for --bridge (1-15 letters, digits, '-', '_')")]
    BadBridge { value: String },
    /// A network setting is malformed
    #[error("{what}: {source}")]
    BadNetwork { what: &'static str, source: shoal_net::ipam::IpamError },
    /// An unknown transport
    #[error("`{value}` is not a transport for --network-transport: use encrypted, vxlan or local")]
    BadTransport { value: String },
    /// The pools overlap
    #[error("--cluster-subnet {pool} and --service-subnet {vips} overlap; give them disjoint ranges")]
    PoolsOverlap { pool: String, vips: String },
    /// A key and --insecure together
    #[error("--insecure runs an open cluster without a key, but a cluster key is given too; choose one")]
    KeyAndInsecure,
}

fn valid_subnet(text: &str) -> bool {
    text.split_once('/').is_some_and(|(ip, p)| {
        ip.parse::<std::net::Ipv4Addr>().is_ok() && p.parse::<u8>().is_ok_and(|p| (8..=29).contains(&p))
    })
}

/// The data channel listens on the first TCP listen address's IP, on a port the system
/// picks: holders announce their port in every offer, so no fixed default is needed, and a
/// fixed one (it was the overlay's port + 1) collided with an agent on the next port.
/// `--data-listen` fixes it (for firewalls).
fn default_data_listen(listen: &[Multiaddr]) -> SocketAddr {
    use shoal_overlay::libp2p::multiaddr::Protocol;
    for a in listen {
        let mut ip = None;
        for p in a.iter() {
            match p {
                Protocol::Ip4(v) => ip = Some(std::net::IpAddr::V4(v)),
                Protocol::Ip6(v) => ip = Some(std::net::IpAddr::V6(v)),
                Protocol::Tcp(_) => {
                    if let Some(ip) = ip {
                        return SocketAddr::new(ip, 0);
                    }
                }
                _ => {}
            }
        }
    }
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// Where an agent keeps the cluster key it made itself.
pub fn default_key_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("cluster.key")
}

/// The `[swim]` table of the config file (milliseconds).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SwimFile {
    pub probe_period_ms: Option<u64>,
    pub probe_rtt_ms: Option<u64>,
    pub suspicion_alpha: Option<f64>,
}

/// The config file, as written by the user.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub name: Option<String>,
    pub listen: Option<Vec<String>>,
    pub join: Option<Vec<String>>,
    pub cluster_key: Option<PathBuf>,
    pub insecure: Option<bool>,
    pub mdns: Option<bool>,
    pub labels: Option<Labels>,
    pub api_socket: Option<PathBuf>,
    pub api_listen: Option<String>,
    pub api_token_file: Option<PathBuf>,
    pub cpus: Option<f64>,
    pub memory: Option<String>,
    pub dead_retention_secs: Option<u64>,
    pub store_quota: Option<String>,
    pub upload_limit: Option<String>,
    pub download_limit: Option<String>,
    pub data_listen: Option<String>,
    pub container_subnet: Option<String>,
    pub bridge: Option<String>,
    pub cluster_subnet: Option<String>,
    pub subnet_size: Option<u8>,
    pub service_subnet: Option<String>,
    pub network_transport: Option<String>,
    pub wg_port: Option<u16>,
    pub vxlan_port: Option<u16>,
    pub insecure_registries: Option<Vec<String>>,
    pub mirror_listen: Option<String>,
    pub mirror_registry: Option<String>,
    pub metrics_listen: Option<String>,
    pub swim: Option<SwimFile>,
}

impl FileConfig {
    /// Reads and parses a TOML config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })
    }
}

/// Settings given as flags; `None` means "not given".
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub name: Option<String>,
    pub listen: Vec<String>,
    pub join: Vec<String>,
    pub cluster_key: Option<PathBuf>,
    pub insecure: bool,
    pub mdns: bool,
    pub labels: Vec<String>,
    pub api_socket: Option<PathBuf>,
    pub api_listen: Option<String>,
    pub api_token_file: Option<PathBuf>,
    pub cpus: Option<String>,
    pub memory: Option<String>,
    pub store_quota: Option<String>,
    pub upload_limit: Option<String>,
    pub download_limit: Option<String>,
    pub data_listen: Option<String>,
    pub container_subnet: Option<String>,
    pub bridge: Option<String>,
    pub cluster_subnet: Option<String>,
    pub subnet_size: Option<u8>,
    pub service_subnet: Option<String>,
    pub network_transport: Option<String>,
    pub wg_port: Option<u16>,
    pub vxlan_port: Option<u16>,
    pub insecure_registries: Vec<String>,
    pub mirror_listen: Option<String>,
    pub mirror_registry: Option<String>,
    pub metrics_listen: Option<String>,
}

/// The resolved configuration the agent runs with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub name: String,
    pub listen: Vec<Multiaddr>,
    pub join: Vec<Multiaddr>,
    /// The cluster key file: the one given, else `<data dir>/cluster.key` (made on first
    /// start); `None` only with `--insecure`.
    pub cluster_key: Option<PathBuf>,
    /// `--insecure`: an open cluster, no key.
    pub insecure: bool,
    pub mdns: bool,
    pub labels: Labels,
    pub api_socket: PathBuf,
    pub api_listen: Option<SocketAddr>,
    pub api_token_file: PathBuf,
    /// Capacity override in millicores.
    pub cpus: Option<u64>,
    /// Capacity override in bytes.
    pub memory: Option<u64>,
    pub tuning: SwimTuning,
    pub dead_retention: Duration,
    /// Most bytes the content store may hold.
    pub store_quota: Option<u64>,
    /// Upload and download limits, bits per second.
    pub upload_limit: Option<u64>,
    pub download_limit: Option<u64>,
    /// Where the content data channel listens.
    pub data_listen: SocketAddr,
    /// This peer's container subnet when fixed by `--container-subnet` (no claim, no cluster
    /// routes to it unless the transport is local).
    pub container_subnet: Option<String>,
    /// Name of this peer's container bridge.
    pub bridge: String,
    /// The cluster network's settings.
    pub network: shoal_net::NetSettings,
    /// `--insecure-registry`: registries spoken to over plain HTTP (loopback ones always are).
    pub insecure_registries: Vec<String>,
    /// Where the registry mirror listens (`None`: off).
    pub mirror_listen: Option<SocketAddr>,
    /// The registry a mirror request without `?ns=` is for.
    pub mirror_registry: String,
    /// Where Prometheus metrics are served (`None`: off).
    pub metrics_listen: Option<SocketAddr>,
}

/// The data dir used when none is given: `/var/lib/shoal` for root, else under the user's
/// data home.
pub fn default_data_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/shoal");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(x).join("shoal");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/shoal"),
        None => PathBuf::from("shoal-data"),
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

/// The API socket a CLI should use when nothing is configured.
pub fn default_api_socket() -> PathBuf {
    default_data_dir().join("shoal.sock")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "shoal".to_string())
}

/// Parses a multiaddr or `host:port` (IP literal or DNS name).
pub fn parse_addr(value: &str) -> Result<Multiaddr, ConfigError> {
    let bad = || ConfigError::BadAddr { value: value.to_string() };
    if value.starts_with('/') {
        return value.parse().map_err(|_| bad());
    }
    if let Ok(sa) = value.parse::<SocketAddr>() {
        let ip = match sa.ip() {
            std::net::IpAddr::V4(ip) => format!("/ip4/{ip}"),
            std::net::IpAddr::V6(ip) => format!("/ip6/{ip}"),
        };
        return format!("{ip}/tcp/{}", sa.port()).parse().map_err(|_| bad());
    }
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') {
        return Err(bad());
    }
    format!("/dns4/{host}/tcp/{port}").parse().map_err(|_| bad())
}

impl AgentConfig {
    /// Merges defaults, the file and the flags.
    pub fn resolve(file: FileConfig, o: Overrides) -> Result<Self, ConfigError> {
        let data_dir = o.data_dir.or(file.data_dir).unwrap_or_else(default_data_dir);
        let listen_raw = if o.listen.is_empty() {
            file.listen.unwrap_or_else(|| {
                vec![format!("/ip4/0.0.0.0/tcp/{DEFAULT_PORT}"), format!("/ip4/0.0.0.0/udp/{DEFAULT_PORT}/quic-v1")]
            })
        } else {
            o.listen
        };
        let join_raw = if o.join.is_empty() { file.join.unwrap_or_default() } else { o.join };
        let mut labels = file.labels.unwrap_or_default();
        shoal_types::labels::validate_labels(&labels)?;
        for l in &o.labels {
            let (k, v) = shoal_types::parse_label(l)?;
            labels.insert(k, v);
        }
        shoal_types::labels::validate_labels(&labels)?;
        let cpus = match (o.cpus, file.cpus) {
            (Some(s), _) => Some(
                Resources::parse_cpus(&s)
                    .map_err(|e| ConfigError::BadResource { what: "--cpus", message: e.to_string() })?,
            ),
            (None, Some(f)) => Some(
                Resources::parse_cpus(&f.to_string())
                    .map_err(|e| ConfigError::BadResource { what: "cpus", message: e.to_string() })?,
            ),
            (None, None) => None,
        };
        let memory = match o.memory.or(file.memory) {
            Some(s) => Some(
                s.parse::<ByteSize>()
                    .map_err(|e| ConfigError::BadResource { what: "memory", message: e.to_string() })?
                    .0,
            ),
            None => None,
        };
        let api_listen = match o.api_listen.or(file.api_listen) {
            Some(v) => Some(v.parse::<SocketAddr>().map_err(|_| ConfigError::BadApiListen { value: v.clone() })?),
            None => None,
        };
        let swim = file.swim.unwrap_or_default();
        let mut tuning = SwimTuning::default();
        if let Some(ms) = swim.probe_period_ms {
            tuning.probe_period = Duration::from_millis(ms.max(50));
        }
        if let Some(ms) = swim.probe_rtt_ms {
            tuning.probe_rtt = Duration::from_millis(ms.max(10));
        }
        if let Some(a) = swim.suspicion_alpha {
            tuning.suspicion_alpha = a.clamp(0.5, 20.0);
        }
        if tuning.probe_rtt >= tuning.probe_period {
            tuning.probe_rtt = tuning.probe_period / 2;
        }
        let rate = |what: &'static str, v: Option<String>| -> Result<Option<u64>, ConfigError> {
            match v {
                Some(s) => shoal_types::rate::parse_rate(&s).map_err(|source| ConfigError::BadRate { what, source }),
                None => Ok(None),
            }
        };
        let upload_limit = rate("--upload-limit", o.upload_limit.or(file.upload_limit))?;
        let download_limit = rate("--download-limit", o.download_limit.or(file.download_limit))?;
        let store_quota = match o.store_quota.or(file.store_quota) {
            Some(s) => Some(
                s.parse::<ByteSize>()
                    .map_err(|e| ConfigError::BadResource { what: "store quota", message: e.to_string() })?
                    .0,
            ),
            None => None,
        };
        let listen: Vec<Multiaddr> = listen_raw.iter().map(|s| parse_addr(s)).collect::<Result<_, _>>()?;
        let data_listen = match o.data_listen.or(file.data_listen) {
            Some(v) => v.parse::<SocketAddr>().map_err(|_| ConfigError::BadDataListen { value: v.clone() })?,
            None => default_data_listen(&listen),
        };
        let container_subnet = o.container_subnet.or(file.container_subnet);
        if let Some(s) = &container_subnet
            && !valid_subnet(s)
        {
            return Err(ConfigError::BadSubnet { value: s.clone() });
        }
        let net_err = |what| move |source| ConfigError::BadNetwork { what, source };
        let pool_text =
            o.cluster_subnet.or(file.cluster_subnet).unwrap_or_else(|| shoal_net::ipam::DEFAULT_POOL.into());
        let pool_net = shoal_net::ipam::Subnet::parse(&pool_text).map_err(net_err("--cluster-subnet"))?;
        let size = o.subnet_size.or(file.subnet_size).unwrap_or(shoal_net::ipam::DEFAULT_PEER_PREFIX);
        let pool = shoal_net::ipam::Pool::new(pool_net, size).map_err(net_err("--subnet-size"))?;
        let vip_text =
            o.service_subnet.or(file.service_subnet).unwrap_or_else(|| shoal_net::ipam::DEFAULT_VIP_POOL.into());
        let vips = shoal_net::ipam::Subnet::parse(&vip_text).map_err(net_err("--service-subnet"))?;
        if vips.overlaps(&pool_net) {
            return Err(ConfigError::PoolsOverlap { pool: pool_text, vips: vip_text });
        }
        let insecure = o.insecure || file.insecure.unwrap_or(false);
        let given_key = o.cluster_key.or(file.cluster_key);
        if insecure && given_key.is_some() {
            return Err(ConfigError::KeyAndInsecure);
        }
        // Secure by default: without a key and without --insecure, the data dir's own key.
        let cluster_key = if insecure { None } else { Some(given_key.unwrap_or_else(|| default_key_path(&data_dir))) };
        let has_key = cluster_key.is_some();
        let transport = match o.network_transport.or(file.network_transport) {
            Some(t) => t.parse::<shoal_net::Transport>().map_err(|_| ConfigError::BadTransport { value: t })?,
            None if has_key => shoal_net::Transport::Encrypted,
            None => shoal_net::Transport::Vxlan,
        };
        let network = shoal_net::NetSettings {
            pool,
            vips,
            transport,
            wg_port: o.wg_port.or(file.wg_port).unwrap_or(shoal_net::DEFAULT_WG_PORT),
            vxlan_port: o.vxlan_port.or(file.vxlan_port).unwrap_or(shoal_net::DEFAULT_VXLAN_PORT),
        };
        let bridge = o.bridge.or(file.bridge).unwrap_or_else(|| "shoal0".into());
        if bridge.is_empty()
            || bridge.len() > 15
            || !bridge.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::BadBridge { value: bridge });
        }
        let mirror_listen = match o.mirror_listen.or(file.mirror_listen).as_deref() {
            Some("off") => None,
            Some(a) => {
                Some(a.parse::<SocketAddr>().map_err(|_| ConfigError::BadMirrorListen { value: a.to_string() })?)
            }
            None => Some(SocketAddr::from(([127, 0, 0, 1], 5050))),
        };
        let mirror_registry = o.mirror_registry.or(file.mirror_registry).unwrap_or_else(|| "docker.io".into());
        let metrics_listen = match o.metrics_listen.or(file.metrics_listen).as_deref() {
            Some("off") => None,
            Some(a) => {
                Some(a.parse::<SocketAddr>().map_err(|_| ConfigError::BadMetricsListen { value: a.to_string() })?)
            }
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
        };
        let mut insecure_registries = o.insecure_registries;
        insecure_registries.extend(file.insecure_registries.unwrap_or_default());
        Ok(AgentConfig {
            insecure_registries,
            mirror_listen,
            mirror_registry,
            metrics_listen,
            container_subnet,
            bridge,
            network,
            store_quota,
            upload_limit,
            download_limit,
            data_listen,
            api_socket: o.api_socket.or(file.api_socket).unwrap_or_else(|| data_dir.join("shoal.sock")),
            api_token_file: o.api_token_file.or(file.api_token_file).unwrap_or_else(|| data_dir.join("api.token")),
            name: o.name.or(file.name).unwrap_or_else(hostname),
            listen,
            join: join_raw.iter().map(|s| parse_addr(s)).collect::<Result<_, _>>()?,
            cluster_key,
            insecure,
            mdns: o.mdns || file.mdns.unwrap_or(false),
            labels,
            api_listen,
            cpus,
            memory,
            tuning,
            dead_retention: Duration::from_secs(file.dead_retention_secs.unwrap_or(24 * 3600)),
            data_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_give_a_working_agent() {
        let c = AgentConfig::resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(c.listen.len(), 2);
        assert!(c.join.is_empty());
        assert_eq!(c.api_socket, c.data_dir.join("shoal.sock"));
        assert!(!c.name.is_empty());
    }

    #[test]
    fn flags_win_over_the_file() {
        let file: FileConfig = toml::from_str(
            r#"
            name = "from-file"
            listen = ["/ip4/127.0.0.1/tcp/5000"]
            join = ["10.0.0.1:4100"]
            labels = { zone = "a", rack = "r1" }
            memory = "1g"
            [swim]
            probe-period-ms = 1000
            "#,
        )
        .unwrap();
        let o = Overrides { name: Some("flag".into()), labels: vec!["zone=b".into()], ..Default::default() };
        let c = AgentConfig::resolve(file, o).unwrap();
        assert_eq!(c.name, "flag");
        assert_eq!(c.labels["zone"], "b");
        assert_eq!(c.labels["rack"], "r1");
        assert_eq!(c.join[0].to_string(), "/ip4/10.0.0.1/tcp/4100");
        assert_eq!(c.memory, Some(1 << 30));
        assert_eq!(c.tuning.probe_period, Duration::from_secs(1));
    }

    #[test]
    fn bad_values_name_the_fix() {
        let o = Overrides { join: vec!["nonsense".into()], ..Default::default() };
        let e = AgentConfig::resolve(FileConfig::default(), o).unwrap_err();
        assert!(e.to_string().contains("multiaddr"), "{e}");
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
        assert_eq!(parse_addr("seed.example:4100").unwrap().to_string(), "/dns4/seed.example/tcp/4100");
        assert_eq!(parse_addr("[::1]:7").unwrap().to_string(), "/ip6/::1/tcp/7");
    }
}
