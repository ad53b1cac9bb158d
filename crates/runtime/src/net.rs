//! Container networking on one peer: a bridge, an address per container, a veth pair each.
//!
//! The agent keeps one bridge (`shoal0` by default) whose address is the first of the
//! container subnet (default `198.19.0.0/24`, inside 198.18.0.0/15, which RFC 2544 reserves for
//! benchmarking, so no real network a host sits on uses it; configurable). Each container gets
//! a named network namespace `/run/netns/shoal-<id12>`, a veth pair whose host end (`shv<id12>`)
//! is enslaved to the bridge and whose other end is the container's `eth0`, loopback up, and a
//! default route via the bridge. Containers on one peer reach each other through the bridge.
//!
//! Addresses come from a persistent pool: one file per address under `<root>/net/ips/`, made
//! with `O_EXCL`, so two creations never get the same address and a restarted agent keeps the
//! allocations of the containers it finds again. iproute2 does the kernel work in two batched
//! invocations (host side, namespace side) so setting up costs two short processes.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The default container subnet.
pub const DEFAULT_SUBNET: &str = "198.19.0.0/24";
/// The default bridge name.
pub const DEFAULT_BRIDGE: &str = "shoal0";

/// What went wrong setting up a container's network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A subnet that does not parse.
    #[error("container subnet {0:?}: expected an IPv4 network like 198.19.0.0/24 (prefix 8-29)")]
    Subnet(String),
    /// No free address.
    #[error(
        "no free container address left in {0}; remove stopped containers (shoal rm) or configure a larger --container-subnet"
    )]
    PoolExhausted(String),
    /// iproute2 missing.
    #[error("`ip` (package iproute2) is not installed; install it with: apt-get install iproute2")]
    MissingIp,
    /// An iproute2 command failed.
    #[error("{cmd} failed: {stderr}")]
    Command {
        /// What ran.
        cmd: String,
        /// Its complaint.
        stderr: String,
    },
    /// The pool directory.
    #[error("container address pool {path}: {source}")]
    Pool {
        /// The pool directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A parsed subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// Network address.
    pub base: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl Subnet {
    /// Parses `a.b.c.d/n`.
    pub fn parse(text: &str) -> Result<Subnet, NetError> {
        let err = || NetError::Subnet(text.to_string());
        let (ip, prefix) = text.split_once('/').ok_or_else(err)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        if !(8..=29).contains(&prefix) {
            return Err(err());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Subnet { base: Ipv4Addr::from(u32::from(ip) & mask), prefix })
    }

    /// The bridge's (gateway) address: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1)
    }

    /// Host addresses available to containers (excludes network, gateway, broadcast).
    pub fn container_addrs(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.base);
        let size = 1u32 << (32 - self.prefix);
        (2..size - 1).map(move |i| Ipv4Addr::from(base + i))
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// The persistent address pool.
#[derive(Debug, Clone)]
pub struct Pool {
    dir: PathBuf,
    subnet: Subnet,
}

impl Pool {
    /// Opens the pool under `root/net/ips`.
    pub fn open(root: &Path, subnet: Subnet) -> Result<Pool, NetError> {
        let dir = root.join("net").join("ips");
        std::fs::create_dir_all(&dir).map_err(|source| NetError::Pool { path: dir.clone(), source })?;
        Ok(Pool { dir, subnet })
    }

    /// The subnet.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// Takes a free address for container `id`.
    pub fn allocate(&self, id: &str) -> Result<Ipv4Addr, NetError> {
        for ip in self.subnet.container_addrs() {
            let path = self.dir.join(ip.to_string());
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(id.as_bytes()).map_err(|source| NetError::Pool { path: path.clone(), source })?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(NetError::Pool { path, source }),
            }
        }
        Err(NetError::PoolExhausted(self.subnet.to_string()))
    }

    /// Gives an address back (only if `id` holds it).
    pub fn release(&self, ip: Ipv4Addr, id: &str) {
        let path = self.dir.join(ip.to_string());
        if std::fs::read_to_string(&path).is_ok_and(|holder| holder == id) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Releases every address whose holder is not in `live`.
    pub fn release_all_but(&self, live: &std::collections::HashSet<String>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            if std::fs::read_to_string(e.path()).is_ok_and(|holder| !live.contains(&holder)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Runs `ip` with `args`, feeding `batch` to its stdin when given.
fn ip(args: &[&str], batch: Option<&str>) -> Result<(), NetError> {
    let mut cmd = Command::new("ip");
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd.stdin(if batch.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            NetError::MissingIp
        } else {
            NetError::Command { cmd: format!("ip {}", args.join(" ")), stderr: e.to_string() }
        }
    })?;
    if let (Some(text), Some(mut stdin)) = (batch, child.stdin.take()) {
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetError::Command { cmd: format!("ip {}", args.join(" ")), stderr: e.to_string() })?;
    if !out.status.success() {
        let what =
            batch.map_or_else(|| args.join(" "), |b| format!("{} <<< {}", args.join(" "), b.replace('\n', "; ")));
        return Err(NetError::Command {
            cmd: format!("ip {what}"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
        });
    }
    Ok(())
}

/// Whether interface `name` exists in this process's network namespace. (Not through
/// /sys/class/net: a process that entered a namespace with setns still sees the sysfs of the
/// namespace it was mounted in.)
fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure the bridge exists, has the gateway address, and is up.
pub fn ensure_bridge(name: &str, subnet: Subnet) -> Result<(), NetError> {
    if !link_exists(name) {
        // Another agent (or a race) may create it between the check and here: tolerate EEXIST.
        if let Err(e) = ip(&["link", "add", name, "type", "bridge"], None)
            && !link_exists(name)
        {
            return Err(e);
        }
    }
    let addr = format!("{}/{}", subnet.gateway(), subnet.prefix);
    let _ = ip(&["addr", "replace", &addr, "dev", name], None);
    ip(&["link", "set", name, "up"], None)
}

/// Names for container `id`'s netns and host veth end.
pub fn names(id: &str) -> (String, String) {
    let short = &id[..id.len().min(12)];
    (format!("shoal-{short}"), format!("shv{short}"))
}

/// Creates the namespace and veth pair for a container and configures both ends.
pub fn setup(net: &crate::state::NetMeta) -> Result<(), NetError> {
    let host = format!(
        "netns add {ns}\nlink add {veth} type veth peer name eth0 netns {ns}\nlink set {veth} master {br}\nlink set {veth} up\n",
        ns = net.netns,
        veth = net.veth,
        br = net.bridge
    );
    ip(&["-batch", "-"], Some(&host))?;
    let inside = format!(
        "addr add {ip}/{prefix} dev eth0\nlink set lo up\nlink set eth0 up\nroute add default via {gw}\n",
        ip = net.ip,
        prefix = net.prefix,
        gw = net.gateway
    );
    if let Err(e) = ip(&["-n", &net.netns, "-batch", "-"], Some(&inside)) {
        teardown(net);
        return Err(e);
    }
    Ok(())
}

/// Whether the container's namespace exists.
pub fn exists(net: &crate::state::NetMeta) -> bool {
    Path::new("/run/netns").join(&net.netns).exists()
}

/// Deletes the namespace (which destroys the veth pair with it); idempotent.
pub fn teardown(net: &crate::state::NetMeta) {
    if exists(net) {
        // Deleting the namespace takes the veth pair with it; a host end left without one
        // (a crash between the two steps of setup) is removed here.
        let _ = ip(&["netns", "del", &net.netns], None);
    } else if link_exists(&net.veth) {
        let _ = ip(&["link", "del", &net.veth], None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let s = Subnet::parse("198.19.0.77/24").expect("parse");
        assert_eq!(s.base, Ipv4Addr::new(198, 19, 0, 0));
        assert_eq!(s.gateway(), Ipv4Addr::new(198, 19, 0, 1));
        assert_eq!(s.container_addrs().count(), 253);
        assert_eq!(s.container_addrs().next(), Some(Ipv4Addr::new(198, 19, 0, 2)));
        for bad in ["198.19.0.0", "x/24", "198.19.0.0/30", "198.19.0.0/4"] {
            assert!(Subnet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pool_never_hands_out_twice_and_persists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Subnet::parse("10.99.0.0/29").expect("parse");
        let pool = Pool::open(dir.path(), s).expect("pool");
        let a = pool.allocate("a").expect("a");
        let b = pool.allocate("b").expect("b");
        assert_ne!(a, b);
        let again = Pool::open(dir.path(), s).expect("reopen");
        let mut rest = Vec::new();
        while let Ok(ip) = again.allocate("c") {
            rest.push(ip);
        }
        assert_eq!(rest.len(), 3, "8 addresses minus net, gw, bcast, a, b");
        assert!(matches!(again.allocate("d"), Err(NetError::PoolExhausted(_))));
        again.release(a, "not-a");
        assert!(again.allocate("d").is_err(), "only the holder releases");
        again.release(a, "a");
        assert_eq!(again.allocate("d").ok(), Some(a));
        again.release_all_but(&["d".to_string()].into_iter().collect());
        assert_eq!(std::fs::read_dir(dir.path().join("net/ips")).expect("dir").count(), 1);
    }
}
