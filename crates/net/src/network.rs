//! The network actor: one task that owns every kernel object of the cluster network on this
//! peer and makes it match the latest [`Desired`] state it was given.
//!
//! ```text
//!  node (membership, services, containers) ──apply(Desired)──► actor ──► data path (vxlan | wg)
//!                                                                   ├──► nft table (one transaction)
//!                                                                   ├──► DNS names (one swap)
//!                                                                   └──► conntrack (UDP backends gone)
//! ```
//!
//! Each part is changed only when its own inputs changed; a failed step is logged and retried
//! on the next state or after a second. The state keeps flowing while the agent restarts for
//! the kernel transports (VXLAN device, routes and the nft table stay; the agent takes them
//! over again); the encrypted transport's TUN device lives in the agent's process, so its
//! traffic pauses until the new agent has made new sessions. On shutdown with no containers
//! left everything is removed; with containers running it is kept for the next agent.

use crate::ipam::Subnet;
use crate::kernel::Netlink;
use crate::{Desired, NetSettings, PeerNet, ServiceNet, Transport};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

/// How the actor runs.
#[derive(Clone)]
pub struct NetworkConfig {
    /// Pools, transport, ports.
    pub settings: NetSettings,
    /// The container bridge (made by the runtime; the actor adds its rules around it).
    pub bridge: String,
    /// This peer's id.
    pub me: String,
    /// Where the WireGuard key lives.
    pub state_dir: PathBuf,
    /// The pre-shared key mixed into WireGuard handshakes (derived from the cluster key).
    pub psk: Option<[u8; 32]>,
    /// The resolvers names outside the cluster are forwarded to.
    pub upstreams: Vec<std::net::IpAddr>,
}

/// Why the network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The actor stopped.
    #[error("the network task has stopped")]
    Stopped,
    /// The WireGuard key.
    #[error("the encrypted transport's key {path}: {source}")]
    Key {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What `shoal network` shows.
#[derive(Debug, Clone, Default)]
pub struct NetworkState {
    /// This peer's subnet.
    pub subnet: Option<Subnet>,
    /// Peers with a route, and their transport statistics.
    pub peers: Vec<PeerState>,
    /// Where DNS is served.
    pub dns: Option<SocketAddr>,
    /// Services with an address.
    pub services: usize,
    /// The last error, if the last change failed.
    pub error: Option<String>,
    /// When the state was last made to match.
    pub synced: Option<Instant>,
}

/// One remote peer as the data path sees it.
#[derive(Debug, Clone)]
pub struct PeerState {
    /// The peer.
    pub peer: PeerNet,
    /// Time since the last handshake (encrypted).
    pub last_handshake: Option<Duration>,
    /// Bytes received (encrypted transport).
    pub rx_bytes: u64,
    /// Bytes sent (encrypted transport).
    pub tx_bytes: u64,
}

enum Command {
    Apply(Box<Desired>),
    State(oneshot::Sender<NetworkState>),
    Forget(Ipv4Addr),
    Shutdown { cleanup: bool, reply: oneshot::Sender<()> },
}

/// Handle to the network actor. Cheap to clone.
#[derive(Clone)]
pub struct Network {
    tx: mpsc::Sender<Command>,
    public_key: Option<[u8; 32]>,
    epoch: u64,
    synced: watch::Receiver<u64>,
}

impl Network {
    /// Starts the actor (nothing is made before the first state with a subnet).
    pub fn start(cfg: NetworkConfig) -> Result<(Network, tokio::task::JoinHandle<()>), NetworkError> {
        let private = match cfg.settings.transport {
            Transport::Encrypted => {
                let path = cfg.state_dir.join("wg.key");
                Some(crate::wg::load_or_create_key(&path).map_err(|source| NetworkError::Key { path, source })?)
            }
            _ => None,
        };
        let epoch =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let (tx, rx) = mpsc::channel(16);
        let (synced_tx, synced) = watch::channel(0);
        let actor = Actor {
            cfg,
            private,
            nl: None,
            wg: None,
            dns: None,
            applied: Applied::default(),
            state: NetworkState::default(),
            synced: synced_tx,
        };
        let task = tokio::spawn(actor.run(rx));
        Ok((Network { tx, public_key: private.map(|p| crate::wg::public_key(&p)), epoch, synced }, task))
    }

    /// This peer's WireGuard public key (encrypted transport).
    pub fn public_key(&self) -> Option<[u8; 32]> {
        self.public_key
    }

    /// When this run's transport started (published, so peers know to make new sessions).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Hands the actor a new desired state (the latest wins; earlier ones not yet applied are
    /// skipped).
    pub async fn apply(&self, desired: Desired) -> Result<(), NetworkError> {
        self.tx.send(Command::Apply(Box::new(desired))).await.map_err(|_| NetworkError::Stopped)
    }

    /// Changes each time a state has been applied.
    pub fn synced(&self) -> watch::Receiver<u64> {
        self.synced.clone()
    }

    /// What the network looks like now.
    pub async fn state(&self) -> Result<NetworkState, NetworkError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::State(reply)).await.map_err(|_| NetworkError::Stopped)?;
        rx.await.map_err(|_| NetworkError::Stopped)
    }

    /// Forgets connection tracking of a removed container's address.
    pub async fn forget(&self, ip: Ipv4Addr) {
        let _ = self.tx.send(Command::Forget(ip)).await;
    }

    /// Stops the actor; with `cleanup`, removes the table, the devices and the routes too.
    pub async fn shutdown(&self, cleanup: bool) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown { cleanup, reply }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// What was last applied, part by part.
#[derive(Default)]
struct Applied {
    subnet: Option<Subnet>,
    underlay: Option<Ipv4Addr>,
    peers: Option<Vec<PeerNet>>,
    nft: Option<String>,
    backends: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    names: Option<(Vec<ServiceNet>, BTreeMap<String, Ipv4Addr>)>,
    data_dev: Option<u32>,
}

struct Actor {
    cfg: NetworkConfig,
    private: Option<[u8; 32]>,
    nl: Option<Netlink>,
    wg: Option<crate::wg::WgDevice>,
    dns: Option<crate::dns::DnsServer>,
    applied: Applied,
    state: NetworkState,
    synced: watch::Sender<u64>,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut want: Option<Box<Desired>> = None;
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dirty = false;
        loop {
            let cmd = tokio::select! {
                c = rx.recv() => c,
                _ = retry.tick(), if dirty => {
                    if let Some(d) = &want {
                        dirty = self.sync(d).await.is_err();
                    }
                    continue;
                }
            };
            let Some(cmd) = cmd else { return };
            let Command::Apply(mut d) = cmd else {
                if self.handle(cmd).await.is_break() {
                    return;
                }
                continue;
            };
            // Only the latest state matters; what else waits is answered after it.
            let mut others = Vec::new();
            while let Ok(c) = rx.try_recv() {
                match c {
                    Command::Apply(newer) => d = newer,
                    Command::Shutdown { .. } => {
                        // Nothing queued after a stop is applied (its senders see `Stopped`).
                        others.push(c);
                        break;
                    }
                    other => others.push(other),
                }
            }
            dirty = self.sync(&d).await.is_err();
            want = Some(d);
            for c in others {
                if self.handle(c).await.is_break() {
                    return;
                }
            }
        }
    }

    /// A command other than `Apply`; `Break` once the actor is to stop.
    async fn handle(&mut self, cmd: Command) -> std::ops::ControlFlow<()> {
        match cmd {
            Command::Apply(_) => {}
            Command::State(reply) => {
                let mut s = self.state.clone();
                if let Some(wg) = &self.wg {
                    let stats: BTreeMap<String, crate::wg::WgPeerStats> =
                        wg.stats().into_iter().map(|p| (p.id.clone(), p)).collect();
                    for p in &mut s.peers {
                        if let Some(st) = stats.get(&p.peer.id) {
                            p.last_handshake = st.last_handshake;
                            p.rx_bytes = st.rx_bytes;
                            p.tx_bytes = st.tx_bytes;
                        }
                    }
                }
                let _ = reply.send(s);
            }
            Command::Forget(ip) => {
                if let Err(e) = crate::conntrack::forget_address(ip).await {
                    tracing::debug!(err = %e, %ip, "cannot forget a removed container's connections");
                }
            }
            Command::Shutdown { cleanup, reply } => {
                self.stop(cleanup).await;
                let _ = reply.send(());
                return std::ops::ControlFlow::Break(());
            }
        }
        std::ops::ControlFlow::Continue(())
    }

    fn netlink(&mut self) -> Result<Netlink, String> {
        if self.nl.is_none() {
            self.nl = Some(Netlink::connect().map_err(|e| format!("netlink: {e}"))?);
        }
        self.nl.clone().ok_or_else(|| "netlink".to_string())
    }

    /// Makes everything match `d`; `Err` when a part failed (retried later).
    async fn sync(&mut self, d: &Desired) -> Result<(), ()> {
        let Some(subnet) = d.subnet else { return Ok(()) };
        let mut errors = Vec::new();
        if let Err(e) = self.sync_host(subnet) {
            errors.push(e);
        }
        if let Err(e) = self.sync_data_path(d, subnet).await {
            errors.push(e);
        }
        if let Err(e) = self.sync_nft(d, subnet).await {
            errors.push(e);
        }
        if let Err(e) = self.sync_dns(d, subnet).await {
            errors.push(e);
        }
        self.sync_conntrack(&d.services).await;
        self.state.subnet = Some(subnet);
        self.state.services = d.services.len();
        self.state.peers = d
            .peers
            .iter()
            .map(|p| PeerState { peer: p.clone(), last_handshake: None, rx_bytes: 0, tx_bytes: 0 })
            .collect();
        if errors.is_empty() {
            if self.state.error.take().is_some() {
                info!("the cluster network is set up again");
            }
            self.state.synced = Some(Instant::now());
            self.synced.send_modify(|n| *n = n.wrapping_add(1));
            Ok(())
        } else {
            let text = errors.join("; ");
            if self.state.error.as_deref() != Some(&text) {
                warn!(err = %text, "cannot set up the cluster network; retrying");
            }
            self.state.error = Some(text);
            Err(())
        }
    }

    /// Forwarding on, and loopback addresses allowed out through the bridge and the tunnel
    /// (published ports answer on 127.0.0.1; the nft table drops such packets from outside).
    fn sync_host(&mut self, _subnet: Subnet) -> Result<(), String> {
        let mut devs = vec![self.cfg.bridge.clone()];
        match self.cfg.settings.transport {
            Transport::Vxlan => devs.push(crate::vxlan::device_name(&self.cfg.bridge)),
            Transport::Encrypted => devs.push(crate::wg::device_name(&self.cfg.bridge)),
            Transport::Local => {}
        }
        crate::kernel::sysctl("net.ipv4.ip_forward", "1").map_err(|e| format!("enable IPv4 forwarding: {e}"))?;
        for dev in devs {
            // The tunnel device may not exist yet on the first pass; the next one sets it.
            let _ = crate::kernel::sysctl(&format!("net.ipv4.conf.{dev}.route_localnet"), "1");
        }
        Ok(())
    }

    async fn sync_data_path(&mut self, d: &Desired, subnet: Subnet) -> Result<(), String> {
        let same = self.applied.subnet == Some(subnet)
            && self.applied.underlay == d.underlay
            && self.applied.peers.as_ref() == Some(&d.peers);
        if same {
            return Ok(());
        }
        let nl = self.netlink()?;
        let gateway = subnet.gateway();
        match self.cfg.settings.transport {
            Transport::Local => {}
            Transport::Vxlan => {
                let local = d.underlay;
                let dev = crate::vxlan::device_name(&self.cfg.bridge);
                let index = crate::vxlan::ensure(&nl, &dev, &self.cfg.me, local, self.cfg.settings.vxlan_port, subnet)
                    .await
                    .map_err(|e| e.to_string())?;
                crate::vxlan::sync(&nl, index, gateway, &d.peers).await.map_err(|e| e.to_string())?;
                self.applied.data_dev = Some(index);
            }
            Transport::Encrypted => {
                let dev = crate::wg::device_name(&self.cfg.bridge);
                if self.wg.is_none() {
                    let Some(private) = self.private else { return Err("no WireGuard key".into()) };
                    // A TUN device left by a crashed agent would make the name taken.
                    let _ = nl.delete_link(&dev).await;
                    let cfg = crate::wg::WgConfig {
                        dev: dev.clone(),
                        port: self.cfg.settings.wg_port,
                        private,
                        psk: self.cfg.psk,
                        peer_prefix: self.cfg.settings.pool.peer_prefix,
                    };
                    self.wg = Some(crate::wg::WgDevice::start(cfg).map_err(|e| e.to_string())?);
                }
                let index = nl.index(&dev).await.ok_or_else(|| format!("TUN device {dev} vanished"))?;
                nl.set_only_address(index, subnet.base, 32).await.map_err(|e| e.to_string())?;
                nl.up(index, None).await.map_err(|e| e.to_string())?;
                if let Some(wg) = &self.wg {
                    wg.set_peers(&d.peers);
                }
                let routes =
                    d.peers.iter().map(|p| ((p.subnet.base, p.subnet.prefix), (None, Some(gateway)))).collect();
                nl.sync_routes(index, &routes).await.map_err(|e| e.to_string())?;
                let _ = crate::kernel::sysctl(&format!("net.ipv4.conf.{dev}.route_localnet"), "1");
                self.applied.data_dev = Some(index);
            }
        }
        self.applied.subnet = Some(subnet);
        self.applied.underlay = d.underlay;
        self.applied.peers = Some(d.peers.clone());
        Ok(())
    }

    async fn sync_nft(&mut self, d: &Desired, subnet: Subnet) -> Result<(), String> {
        let table = crate::nft::table_name(&self.cfg.bridge);
        let members: Vec<Ipv4Addr> = d.peers.iter().map(|p| p.underlay).collect();
        let tunnel = match self.cfg.settings.transport {
            Transport::Vxlan => Some(crate::vxlan::device_name(&self.cfg.bridge)),
            Transport::Encrypted => Some(crate::wg::device_name(&self.cfg.bridge)),
            Transport::Local => None,
        };
        let text = crate::nft::Ruleset {
            table: &table,
            bridge: &self.cfg.bridge,
            subnet,
            pool: self.cfg.settings.pool.net,
            vips: self.cfg.settings.vips,
            tunnel: tunnel.as_deref(),
            vxlan: (self.cfg.settings.transport == Transport::Vxlan)
                .then_some((self.cfg.settings.vxlan_port, &members[..])),
            services: &d.services,
            agent_ports: &d.agent_ports,
        }
        .render();
        if self.applied.nft.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        crate::nft::run(&text, false).await.map_err(|e| e.to_string())?;
        self.applied.nft = Some(text);
        Ok(())
    }

    async fn sync_dns(&mut self, d: &Desired, subnet: Subnet) -> Result<(), String> {
        let addr = SocketAddr::from((subnet.gateway(), 53));
        if self.dns.as_ref().is_some_and(|s| s.addr() != addr)
            && let Some(old) = self.dns.take()
        {
            old.stop().await;
            self.applied.names = None;
        }
        if self.dns.is_none() {
            let server =
                crate::dns::DnsServer::start(addr, self.cfg.upstreams.clone()).await.map_err(|e| e.to_string())?;
            self.state.dns = Some(server.addr());
            self.dns = Some(server);
        }
        let key = (d.services.clone(), d.names.clone());
        if self.applied.names.as_ref() != Some(&key) {
            if let Some(s) = &self.dns {
                s.set(crate::dns::names(&d.services, &d.names));
            }
            self.applied.names = Some(key);
        }
        Ok(())
    }

    /// Deletes UDP conntrack entries of replicas that left a service.
    async fn sync_conntrack(&mut self, services: &[ServiceNet]) {
        let now: BTreeMap<String, BTreeSet<Ipv4Addr>> =
            services.iter().map(|s| (s.name.clone(), s.backends.iter().copied().collect())).collect();
        let mut gone = BTreeSet::new();
        for (name, old) in &self.applied.backends {
            let kept = now.get(name);
            gone.extend(old.iter().filter(|ip| kept.is_none_or(|k| !k.contains(ip))).copied());
        }
        for ip in gone {
            if let Err(e) = crate::conntrack::forget_udp_backend(ip).await {
                tracing::debug!(err = %e, %ip, "cannot forget UDP connections of a replica that left");
            }
        }
        self.applied.backends = now;
    }

    async fn stop(&mut self, cleanup: bool) {
        if let Some(s) = self.dns.take() {
            s.stop().await;
        }
        if let Some(wg) = self.wg.take() {
            tokio::task::spawn_blocking(move || wg.stop()).await.ok();
        }
        if !cleanup {
            return;
        }
        if let Err(e) = crate::nft::delete(&crate::nft::table_name(&self.cfg.bridge)).await {
            tracing::debug!(err = %e, "cannot remove the nft table");
        }
        if let Ok(nl) = self.netlink() {
            for dev in [crate::vxlan::device_name(&self.cfg.bridge), crate::wg::device_name(&self.cfg.bridge)] {
                let _ = nl.delete_link(&dev).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state asked for while newer desired states queue up is still answered: draining the
    /// queue for the latest state once dropped whatever else was in it (`shoal network` then
    /// said "no container subnet yet", and a stop or a forget could be lost the same way).
    #[tokio::test]
    async fn commands_queued_behind_a_state_change_are_answered() {
        let dir = tempfile::tempdir().unwrap();
        let pool = crate::ipam::Pool::new(Subnet::parse("198.19.0.0/16").unwrap(), 24).unwrap();
        let (net, task) = Network::start(NetworkConfig {
            settings: NetSettings {
                pool,
                vips: Subnet::parse("198.20.0.0/16").unwrap(),
                transport: Transport::Local,
                wg_port: 0,
                vxlan_port: 0,
            },
            bridge: "shoaltest0".into(),
            me: "me".into(),
            state_dir: dir.path().to_path_buf(),
            psk: None,
            upstreams: vec![],
        })
        .unwrap();
        for round in 0..200 {
            let (a, b) = (net.clone(), net.clone());
            let applies = tokio::spawn(async move {
                for _ in 0..4 {
                    a.apply(Desired::default()).await.unwrap();
                }
            });
            let state = tokio::spawn(async move { b.state().await });
            applies.await.unwrap();
            assert!(state.await.unwrap().is_ok(), "round {round}: a state request went unanswered");
        }
        net.shutdown(false).await;
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("the actor stops").unwrap();
    }
}
