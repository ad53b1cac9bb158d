//! Container networking on one peer: a bridge, an address per container, a veth pair each.
//!
//! The agent keeps one bridge (`shoal0` by default) whose address is the first of this peer's
//! container subnet (claimed from the cluster pool, see `shoal_net::ipam`). Each container gets
//! a named network namespace `/run/netns/shoal-<id12>`, a veth pair whose host end (`shv<id12>`)
//! is enslaved to the bridge and whose other end is the container's `eth0`, loopback up, and a
//! default route via the bridge. Containers on one peer reach each other through the bridge.
//!
//! Addresses come from a persistent pool: one file per address under `<root>/net/ips/`, made
//! with `O_EXCL`, so two creations never get the same address and a restarted agent keeps the
//! allocations of the containers it finds again. The per-container work is done over netlink
//! (rtnetlink) from the shim itself, with no helper process: a container's network costs a
//! few system calls, not two `ip` processes. Only the bridge, made once per agent, uses
//! iproute2.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
    /// A netlink or namespace step of a container's network set-up failed.
    #[error("{0}")]
    Netlink(String),
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
}

impl Pool {
    /// Opens the pool under `root/net/ips`.
    pub fn open(root: &Path) -> Result<Pool, NetError> {
        let dir = root.join("net").join("ips");
        std::fs::create_dir_all(&dir).map_err(|source| NetError::Pool { path: dir.clone(), source })?;
        Ok(Pool { dir })
    }

    /// Takes a free address of `subnet` for container `id`.
    pub fn allocate(&self, subnet: Subnet, id: &str) -> Result<Ipv4Addr, NetError> {
        for ip in subnet.container_addrs() {
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
        Err(NetError::PoolExhausted(subnet.to_string()))
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

/// Whether interface `name` exists in the calling thread's network namespace. (Not through
/// /sys/class/net: a process that entered a namespace with setns still sees the sysfs of the
/// namespace it was mounted in. `if_nametoindex` asks the kernel through a socket, which
/// lives in the caller's namespace.)
fn link_exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
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
    pin_mac(name)?;
    let addr = format!("{}/{}", subnet.gateway(), subnet.prefix);
    let _ = ip(&["addr", "replace", &addr, "dev", name], None);
    ip(&["link", "set", name, "up"], None)
}

/// Makes the bridge keep its MAC address. Left alone, a Linux bridge takes the lowest MAC of
/// its ports and changes it when that port leaves: every container on the peer then holds a
/// neighbour entry for a gateway MAC that no longer exists and loses DNS, the other peers and
/// the world until the entry goes stale (30-50 s). An address set by hand stays, and setting
/// the current one again changes nothing for containers already running. (Read over netlink by
/// `ip`: /sys/class/net may show another network namespace's devices.)
fn pin_mac(name: &str) -> Result<(), NetError> {
    let out = Command::new("ip").args(["-o", "link", "show", "dev", name]).output();
    let text = out.as_ref().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let mac = text.split_whitespace().skip_while(|w| *w != "link/ether").nth(1);
    let Some(mac) = mac else {
        return Err(NetError::Command {
            cmd: format!("ip -o link show dev {name}"),
            stderr: format!("no MAC address in {text:?}"),
        });
    };
    ip(&["link", "set", name, "address", mac], None)
}

/// Moves the bridge from `old` to `new`: the new gateway address is added first, then the old
/// one removed (containers already on `old` lose their gateway, and keep their address).
pub fn readdress_bridge(name: &str, old: Subnet, new: Subnet) -> Result<(), NetError> {
    ensure_bridge(name, new)?;
    if old != new {
        let addr = format!("{}/{}", old.gateway(), old.prefix);
        let _ = ip(&["addr", "del", &addr, "dev", name], None);
    }
    Ok(())
}

/// Names for container `id`'s netns and host veth end.
pub fn names(id: &str) -> (String, String) {
    let short = &id[..id.len().min(12)];
    (format!("shoal-{short}"), format!("shv{short}"))
}

/// Where named network namespaces live (as `ip netns` keeps them).
const NETNS_DIR: &str = "/run/netns";

fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn failed(what: impl std::fmt::Display, e: impl std::fmt::Display) -> NetError {
    NetError::Netlink(format!("{what}: {e}"))
}

/// Makes /run/netns a shared mount point, as `ip netns add` does, so that a namespace mounted
/// there is seen (and unmounted) in every mount namespace that has a copy of it.
fn prepare_netns_dir() -> Result<(), NetError> {
    use nix::mount::{MsFlags, mount};
    std::fs::create_dir_all(NETNS_DIR).map_err(|e| failed(NETNS_DIR, e))?;
    let shared = || mount(None::<&str>, NETNS_DIR, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>);
    match shared() {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself, then share it.
            mount(Some(NETNS_DIR), NETNS_DIR, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                .map_err(|e| failed(format!("bind mount {NETNS_DIR}"), e))?;
            shared().map_err(|e| failed(format!("share {NETNS_DIR}"), e))
        }
        Err(e) => Err(failed(format!("share {NETNS_DIR}"), e)),
    }
}

/// Creates the namespace and veth pair for a container and configures both ends, over
/// netlink from this process: a fresh network namespace bound at `/run/netns/<netns>`, a veth
/// pair made with its host end already on the bridge and up and its other end, `eth0`,
/// created inside the namespace; then, inside, the address, loopback and `eth0` up, and the
/// default route via the bridge. On failure nothing is left.
pub fn setup(net: &crate::state::NetMeta) -> Result<(), NetError> {
    prepare_netns_dir()?;
    // A namespace deleted moments ago takes its veth pair with it asynchronously (the kernel
    // cleans up in a work queue): wait for the old host end to go before reusing its name, and
    // remove it if something keeps it alive.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while link_exists(&net.veth) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    remove_stray_veth(net);
    let bridge = nix::net::if_::if_nametoindex(net.bridge.as_str())
        .map_err(|e| failed(format!("bridge {} (is the agent's bridge gone?)", net.bridge), e))?;
    let path = netns_path(&net.netns);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&path)
        .map_err(|e| failed(format!("create {}", path.display()), e))?;
    let net2 = net.clone();
    // A thread of its own: it moves into the new namespace, which nothing else of this
    // process should do.
    let result = std::thread::spawn(move || configure(&net2, bridge))
        .join()
        .unwrap_or_else(|_| Err(NetError::Netlink("the network set-up thread panicked".into())));
    if result.is_err() {
        teardown(net);
    }
    result
}

/// The set-up thread's work; see [`setup`].
fn configure(net: &crate::state::NetMeta, bridge: u32) -> Result<(), NetError> {
    use rtnetlink::packet_route::link::{InfoData, InfoVeth};
    use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
    use std::os::fd::AsRawFd;
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_io().build().map_err(|e| failed("netlink runtime", e))?;
    let _enter = rt.enter();
    // The host's socket first, while this thread is still in the host's namespace.
    let (conn, host, _) = rtnetlink::new_connection().map_err(|e| failed("netlink socket", e))?;
    rt.spawn(conn);
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| failed("new network namespace", e))?;
    let path = netns_path(&net.netns);
    nix::mount::mount(
        Some("/proc/thread-self/ns/net"),
        &path,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| failed(format!("bind the namespace at {}", path.display()), e))?;
    let (conn, inside, _) = rtnetlink::new_connection().map_err(|e| failed("netlink socket", e))?;
    rt.spawn(conn);
    let ns = std::fs::File::open(&path).map_err(|e| failed(path.display(), e))?;
    rt.block_on(async {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name("eth0".into())
            .address(mac_for(net.ip).to_vec())
            .mtu(net.mtu.unwrap_or(1500))
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let mtu = net.mtu.unwrap_or(1500);
        let veth = LinkVeth::new(&net.veth, "eth0")
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .controller(bridge)
            .mtu(mtu)
            .up()
            .build();
        host.link().add(veth).execute().await.map_err(|e| failed(format!("create veth {}", net.veth), e))?;
        let index = |name: &str| {
            nix::net::if_::if_nametoindex(name).map_err(|e| failed(format!("{name} in the container's namespace"), e))
        };
        let (lo, eth0) = (index("lo")?, index("eth0")?);
        inside
            .address()
            .add(eth0, net.ip.into(), net.prefix)
            .execute()
            .await
            .map_err(|e| failed(format!("address {}/{}", net.ip, net.prefix), e))?;
        for (name, i) in [("lo", lo), ("eth0", eth0)] {
            inside
                .link()
                .set(LinkUnspec::new_with_index(i).up().build())
                .execute()
                .await
                .map_err(|e| failed(format!("set {name} up"), e))?;
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(net.gateway).build();
        inside.route().add(route).execute().await.map_err(|e| failed(format!("default route via {}", net.gateway), e))
    })
}

/// A container's MAC address, made from its IP address (`0a:58:` and the four bytes, as the
/// CNI bridge plugin does; Docker does the same with `02:42:`). An address handed to a new
/// container after another left comes with the same MAC, so the neighbour entries that the
/// peer and the other containers hold for it stay true; a random MAC would leave them pointing
/// at a port that is gone until they go stale (30-50 s without an answer).
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x0a, 0x58, a, b, c, d]
}

/// Whether the container's namespace exists.
pub fn exists(net: &crate::state::NetMeta) -> bool {
    netns_path(&net.netns).exists()
}

/// Deletes the namespace, which destroys the veth pair with it (the kernel does that once the
/// last process in it is gone); idempotent.
pub fn teardown(net: &crate::state::NetMeta) {
    let path = netns_path(&net.netns);
    if path.exists() {
        let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&path);
    }
}

/// Removes a host veth end whose namespace is gone but which something kept alive (a stray
/// process in the namespace); for clean-up after a crash, not on the hot path.
pub fn remove_stray_veth(net: &crate::state::NetMeta) {
    if !exists(net) && link_exists(&net.veth) {
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
        let pool = Pool::open(dir.path()).expect("pool");
        let a = pool.allocate(s, "a").expect("a");
        let b = pool.allocate(s, "b").expect("b");
        assert_ne!(a, b);
        let again = Pool::open(dir.path()).expect("reopen");
        let mut rest = Vec::new();
        while let Ok(ip) = again.allocate(s, "c") {
            rest.push(ip);
        }
        assert_eq!(rest.len(), 3, "8 addresses minus net, gw, bcast, a, b");
        assert!(matches!(again.allocate(s, "d"), Err(NetError::PoolExhausted(_))));
        again.release(a, "not-a");
        assert!(again.allocate(s, "d").is_err(), "only the holder releases");
        again.release(a, "a");
        assert_eq!(again.allocate(s, "d").ok(), Some(a));
        again.release_all_but(&["d".to_string()].into_iter().collect());
        assert_eq!(std::fs::read_dir(dir.path().join("net/ips")).expect("dir").count(), 1);
    }

    fn meta(tag: &str, bridge: &str) -> crate::state::NetMeta {
        crate::state::NetMeta {
            ip: Ipv4Addr::new(198, 19, 251, 2),
            prefix: 24,
            gateway: Ipv4Addr::new(198, 19, 251, 1),
            bridge: bridge.into(),
            netns: format!("shoal-ut{tag}{}", std::process::id()),
            veth: format!("shvut{tag}{}", std::process::id() % 100_000),
            mtu: Some(1420),
        }
    }

    /// The netlink set-up on a real bridge: the namespace has the address, loopback and the
    /// default route, the host end is on the bridge; teardown removes the namespace and the
    /// pair goes with it; a missing bridge is a clear error that leaves nothing.
    #[test]
    fn netlink_setup_and_teardown() {
        let bridge = format!("shbut{}", std::process::id() % 100_000);
        ensure_bridge(&bridge, Subnet::parse("198.19.251.0/24").expect("subnet")).expect("bridge");
        let net = meta("a", &bridge);
        let result = setup(&net);
        let inside = Command::new("ip").args(["-n", &net.netns, "-o", "addr", "show", "dev", "eth0"]).output();
        let route = Command::new("ip").args(["-n", &net.netns, "route", "show", "default"]).output();
        let lo = Command::new("ip").args(["-n", &net.netns, "-o", "link", "show", "dev", "lo"]).output();
        let eth0 = Command::new("ip").args(["-n", &net.netns, "-o", "link", "show", "dev", "eth0"]).output();
        let on_bridge = Path::new("/sys/class/net").join(&bridge).join("brif").join(&net.veth).exists();
        // The bridge keeps its MAC when a port with a lower one comes and goes.
        let bridge_mac = || std::fs::read_to_string(Path::new("/sys/class/net").join(&bridge).join("address")).ok();
        let before = bridge_mac();
        let low = format!("shvlo{}", std::process::id() % 100_000);
        let _ = ip(&["link", "add", &low, "address", "02:00:00:00:00:01", "type", "veth"], None);
        let _ = ip(&["link", "set", &low, "master", &bridge], None);
        let during = bridge_mac();
        let _ = ip(&["link", "del", &low], None);
        teardown(&net);
        let gone = !exists(&net);
        let after = bridge_mac();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while link_exists(&net.veth) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let veth_gone = !link_exists(&net.veth);
        let missing = meta("b", "shbut-missing");
        let refused = setup(&missing);
        let _ = ip(&["link", "del", &bridge], None);
        result.expect("setup");
        let text =
            |o: std::io::Result<std::process::Output>| String::from_utf8_lossy(&o.expect("ip").stdout).into_owned();
        let inside = text(inside);
        assert!(inside.contains("198.19.251.2/24"), "address inside");
        let eth0 = text(eth0);
        assert!(eth0.contains("link/ether 0a:58:c6:13:fb:02"), "the MAC follows the address: {eth0}");
        assert!(eth0.contains("mtu 1420"), "the transport's MTU inside");
        assert!(text(route).contains("via 198.19.251.1"), "default route");
        assert!(text(lo).contains("UP"), "loopback up");
        assert!(on_bridge, "host end on the bridge");
        assert!(
            before.is_some() && before == during && before == after,
            "the bridge keeps its MAC: {before:?}, then {during:?} with a lower port, then {after:?}"
        );
        assert!(gone && veth_gone, "teardown leaves neither namespace nor veth");
        let err = refused.expect_err("no bridge").to_string();
        assert!(err.contains("shbut-missing"), "{err}");
        assert!(!exists(&missing), "a failed set-up leaves no namespace");
    }
}
