//! The cluster network in the agent: this peer's subnet claim, its network record, and the
//! desired state handed to the [`shoal_net::Network`] actor.
//!
//! One task ([`Node::run_network`]) does it all, woken by membership and record changes, by
//! the services' endpoints, by container exits and creations, and every second:
//! 1. **Claim.** On the first pass it waits (bounded) for the cluster's records, then keeps the
//!    subnet saved in `net.json` unless a claim that beats it is known, else claims a free one
//!    ([`shoal_net::ipam::claim`]); each later pass checks the claim again, so a peer that lost
//!    a race (a concurrent join, a healed partition) moves at once. The claim is saved before
//!    it is published.
//! 2. **Record.** The claim, the transport, the WireGuard key and this peer's container names
//!    go into the signed peer record (pushed to members when they change).
//! 3. **Desired state.** Every live peer whose claim wins, every service with its address and
//!    running replicas, and every known container name go to the network actor, which changes
//!    only what differs.

use crate::{Node, NodeError};
use shoal_net::ipam::{self, Claim, Subnet};
use shoal_net::record::{self, NetRecord};
use shoal_net::{Desired, PeerNet, ServiceNet, Transport};
use shoal_overlay::libp2p::multiaddr::Protocol as MaProtocol;
use shoal_types::{NetworkInfo, NetworkPeer, Protocol, ServiceAddress};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;
use tracing::{info, warn};

/// Where the claim is kept across restarts.
const CLAIM_FILE: &str = "net.json";
/// How long a joining peer waits for the cluster's records before claiming.
const CLAIM_SETTLE: Duration = Duration::from_secs(3);
/// How long a container creation waits for the claim.
const CLAIM_WAIT: Duration = Duration::from_secs(20);

/// The network parts of a node.
pub(crate) struct NetParts {
    pub(crate) network: shoal_net::Network,
    pub(crate) claim: tokio::sync::watch::Sender<Option<Claim>>,
    pub(crate) kick: tokio::sync::Notify,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The first IPv4 address of `addrs` that is neither unspecified nor, when there is another,
/// loopback.
fn ipv4_of(addrs: &[shoal_overlay::libp2p::Multiaddr]) -> Option<Ipv4Addr> {
    let ips: Vec<Ipv4Addr> = addrs
        .iter()
        .flat_map(|a| a.iter())
        .filter_map(|p| match p {
            MaProtocol::Ip4(ip) if !ip.is_unspecified() => Some(ip),
            _ => None,
        })
        .collect();
    ips.iter().find(|ip| !ip.is_loopback()).or(ips.first()).copied()
}

/// The network record's key derivation context for the WireGuard pre-shared key.
pub(crate) const PSK_CONTEXT: &str = "shoal 2026-11 wireguard preshared key";

impl Node {
    pub(crate) fn net(&self) -> &NetParts {
        self.net_parts()
    }

    /// This peer's subnet, waiting (bounded) for the claim on a fresh start.
    pub(crate) async fn claimed_subnet(&self) -> Result<Subnet, NodeError> {
        let mut rx = self.net().claim.subscribe();
        let wait = rx.wait_for(Option::is_some);
        match tokio::time::timeout(CLAIM_WAIT, wait).await {
            Ok(Ok(c)) => c.as_ref().map(|c| c.subnet).ok_or(NodeError::NetworkNotReady),
            _ => Err(NodeError::NetworkNotReady),
        }
    }

    /// Wakes the network task (a container was created or removed).
    pub(crate) fn kick_network(&self) {
        self.net().kick.notify_one();
    }

    fn load_claim(&self) -> Option<Claim> {
        let me = self.overlay().peer_id().to_string();
        if let Some(fixed) = &self.config().container_subnet {
            return Subnet::parse(fixed).ok().map(|subnet| Claim { peer: me, subnet, since_ms: 0 });
        }
        let text = std::fs::read_to_string(self.config().data_dir.join(CLAIM_FILE)).ok()?;
        let c: Claim = serde_json::from_str(&text).ok()?;
        (c.peer == me).then_some(c)
    }

    fn save_claim(&self, c: &Claim) -> std::io::Result<()> {
        let path = self.config().data_dir.join(CLAIM_FILE);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(c).unwrap_or_default())?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(tmp, path)
    }

    /// Every other peer's published network record: (peer id, live, record).
    async fn records(&self) -> Vec<(String, bool, NetRecord)> {
        match self.overlay().published(record::KEY).await {
            Ok(all) => all
                .into_iter()
                .filter_map(|p| NetRecord::from_value(&p.value).map(|r| (p.peer.to_string(), p.live, r)))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Waits until the cluster's records have had a chance to arrive (a lone first start
    /// claims at once).
    async fn settle(&self) {
        let Ok(status) = self.overlay().status().await else { return };
        if status.remembered_peers == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + CLAIM_SETTLE;
        let mut changes = self.overlay().changes();
        while tokio::time::Instant::now() < deadline {
            if let Ok(m) = self.overlay().members().await
                && !m.is_empty()
                && m.iter().all(|m| m.has_record)
            {
                return;
            }
            let _ = tokio::time::timeout_at(deadline, changes.changed()).await;
        }
    }

    /// The claim to hold now, given the others'.
    fn reclaim(&self, mine: Option<&Claim>, records: &[(String, bool, NetRecord)]) -> Option<Claim> {
        let me = self.overlay().peer_id().to_string();
        if self.config().container_subnet.is_some() {
            return mine.cloned();
        }
        let others: Vec<Claim> = records.iter().map(|(p, _, r)| r.claim(p)).collect();
        match ipam::claim(&self.config().network.pool, &me, mine, &others, now_ms()) {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(err = %e, "cannot claim a container subnet");
                mine.cloned()
            }
        }
    }

    /// The network task (see the module documentation).
    pub(crate) async fn run_network(self) {
        let parts = self.net();
        let mut changes = self.overlay().changes();
        let mut endpoints = self.services().endpoints();
        let mut exits = self.exits();
        let mut mine = self.load_claim();
        let cancel = self.cancel().clone();
        if mine.is_none() {
            tokio::select! {
                () = self.settle() => {}
                () = cancel.cancelled() => return,
            }
        }
        let mut published: Option<NetRecord> = None;
        let mut warned: BTreeSet<String> = BTreeSet::new();
        loop {
            let records = self.records().await;
            let claim = self.reclaim(mine.as_ref(), &records);
            if claim != mine
                && let Some(c) = &claim
            {
                match &mine {
                    Some(old) => {
                        warn!(old = %old.subnet, new = %c.subnet, "another peer holds this peer's subnet by an older claim; moving")
                    }
                    None => info!(subnet = %c.subnet, "claimed a container subnet"),
                }
                if let Err(e) = self.save_claim(c) {
                    warn!(err = %e, "cannot save the subnet claim; it is published anyway");
                }
                if let (Some(old), Some(rt)) = (&mine, self.runtime_cell().get()) {
                    let (rt, new) = (rt.clone(), c.subnet.to_string());
                    let moved = crate::containers::blocking(move || -> Result<(), shoal_runtime::RuntimeError> {
                        rt.set_subnet(shoal_runtime::net::Subnet::parse(&new)?)
                    })
                    .await;
                    if !matches!(moved, Ok(Ok(()))) {
                        warn!(old = %old.subnet, "cannot move the bridge to the new subnet");
                    }
                }
                mine = claim;
            }
            parts.claim.send_if_modified(|c| {
                let changed = *c != mine;
                *c = mine.clone();
                changed
            });
            let current = endpoints.borrow_and_update().clone();
            // Kernel state only where it serves: once this peer runs containers, or once the
            // cluster has services (every peer answers their published ports).
            let active = self.runtime_cell().get().is_some() || !current.is_empty();
            if let Some(c) = &mine {
                // The bridge (and so the DNS address) exists once the runtime is open.
                if active
                    && self.runtime_cell().get().is_none()
                    && let Err(e) = self.runtime().await
                {
                    warn!(err = %e, "cannot open the container runtime; the network waits");
                }
                let names = self.local_names(c.subnet).await;
                let rec = NetRecord {
                    subnet: c.subnet,
                    since_ms: c.since_ms,
                    transport: self.config().network.transport,
                    port: self.transport_port(),
                    wg_key: parts.network.public_key().map(|k| record::encode_key(&k)),
                    epoch: parts.network.epoch(),
                    names: names.clone(),
                };
                if published.as_ref() != Some(&rec) {
                    if let Err(e) =
                        self.overlay().publish_ext(vec![(record::KEY.to_string(), Some(rec.to_value()))]).await
                    {
                        warn!(err = %e, "cannot publish the network record");
                    }
                    published = Some(rec);
                }
                if active {
                    let desired = self.desired(c, &records, names, &current, &mut warned).await;
                    if parts.network.apply(desired).await.is_err() {
                        return;
                    }
                }
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = endpoints.changed() => {}
                _ = exits.changed() => {}
                () = parts.kick.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = cancel.cancelled() => return,
            }
        }
    }

    fn transport_port(&self) -> u16 {
        let n = &self.config().network;
        match n.transport {
            Transport::Vxlan => n.vxlan_port,
            _ => n.wg_port,
        }
    }

    /// This peer's running containers with an address in `subnet`, by name.
    async fn local_names(&self, subnet: Subnet) -> BTreeMap<String, Ipv4Addr> {
        let Ok(list) = self.containers(false).await else { return BTreeMap::new() };
        list.into_iter()
            .filter_map(|c| Some((c.name, c.ip?.parse::<Ipv4Addr>().ok()?)))
            .filter(|(_, ip)| subnet.contains(*ip))
            .take(record::MAX_NAMES)
            .collect()
    }

    async fn desired(
        &self,
        mine: &Claim,
        records: &[(String, bool, NetRecord)],
        mut names: BTreeMap<String, Ipv4Addr>,
        endpoints: &[shoal_services::Endpoints],
        warned: &mut BTreeSet<String>,
    ) -> Desired {
        let net = &self.config().network;
        let members = self.overlay().members().await.unwrap_or_default();
        let addrs: BTreeMap<String, (String, Option<Ipv4Addr>)> =
            members.iter().map(|m| (m.peer.to_string(), (m.name.clone(), ipv4_of(&m.addrs)))).collect();
        // Only live peers' claims compete for routes; a dead peer's keeps its subnet reserved.
        let live: Vec<Claim> =
            records.iter().filter(|(_, l, _)| *l).map(|(p, _, r)| r.claim(p)).chain([mine.clone()]).collect();
        let winners = ipam::winners(&live);
        let mut peers = Vec::new();
        for (id, is_live, r) in records {
            let Some((name, Some(underlay))) = addrs.get(id).cloned() else { continue };
            if !is_live || winners.get(&r.subnet).is_none_or(|w| &w.peer != id) {
                continue;
            }
            if r.transport != net.transport {
                if warned.insert(id.clone()) {
                    warn!(peer = %name, theirs = %r.transport, ours = %net.transport, "the peer uses another network transport; its containers are unreachable from here");
                }
                continue;
            }
            for (n, ip) in &r.names {
                names.entry(n.clone()).or_insert(*ip);
            }
            peers.push(PeerNet {
                id: id.clone(),
                name,
                subnet: r.subnet,
                underlay,
                port: r.port,
                wg_key: r.wg_key_bytes(),
                epoch: r.epoch,
            });
        }
        peers.sort();
        let vips = ipam::vips(&net.vips, endpoints.iter().map(|e| (e.name.as_str(), e.vip)));
        let services = endpoints
            .iter()
            .filter_map(|e| {
                Some(ServiceNet {
                    name: e.name.clone(),
                    vip: *vips.get(&e.name)?,
                    ports: e.ports.clone(),
                    backends: e.backends.clone(),
                })
            })
            .collect();
        let cfg = self.config();
        let mut agent_ports: Vec<(Protocol, u16)> = cfg
            .listen
            .iter()
            .flat_map(|a| a.iter())
            .filter_map(|p| match p {
                MaProtocol::Tcp(port) => Some((Protocol::Tcp, port)),
                MaProtocol::Udp(port) => Some((Protocol::Udp, port)),
                _ => None,
            })
            .collect();
        agent_ports.push((Protocol::Tcp, self.blobs().data_port()));
        agent_ports.push((Protocol::Udp, self.transport_port()));
        if let Some(api) = cfg.api_listen {
            agent_ports.push((Protocol::Tcp, api.port()));
        }
        agent_ports.sort();
        agent_ports.dedup();
        Desired { subnet: Some(mine.subnet), underlay: ipv4_of(&cfg.listen), peers, services, names, agent_ports }
    }

    /// `shoal network`.
    pub async fn network_info(&self) -> Result<NetworkInfo, NodeError> {
        let parts = self.net();
        let state = parts.network.state().await.map_err(|_| NodeError::NetworkNotReady)?;
        let net = &self.config().network;
        let subnet = parts.claim.borrow().as_ref().map(|c| c.subnet);
        let endpoints = self.services().endpoints().borrow().clone();
        let vips = ipam::vips(&net.vips, endpoints.iter().map(|e| (e.name.as_str(), e.vip)));
        Ok(NetworkInfo {
            transport: net.transport.to_string(),
            subnet: subnet.map(|s| s.to_string()),
            gateway: subnet.map(|s| s.gateway().to_string()),
            mtu: net.transport.mtu(),
            pool: net.pool.net.to_string(),
            service_pool: net.vips.to_string(),
            port: self.transport_port(),
            public_key: parts.network.public_key().map(|k| record::encode_key(&k)),
            error: state.error.clone(),
            peers: state
                .peers
                .iter()
                .map(|p| NetworkPeer {
                    id: p.peer.id.clone(),
                    name: p.peer.name.clone(),
                    subnet: p.peer.subnet.to_string(),
                    endpoint: format!("{}:{}", p.peer.underlay, p.peer.port),
                    last_handshake_secs: p.last_handshake.map(|d| d.as_secs()),
                    rx_bytes: p.rx_bytes,
                    tx_bytes: p.tx_bytes,
                })
                .collect(),
            services: endpoints
                .iter()
                .filter_map(|e| {
                    Some(ServiceAddress {
                        name: e.name.clone(),
                        vip: vips.get(&e.name)?.to_string(),
                        ports: e.ports.iter().map(ToString::to_string).collect(),
                        backends: e.backends.iter().map(ToString::to_string).collect(),
                    })
                })
                .collect(),
        })
    }

    /// A virtual address for a new service: free among the services known here.
    pub(crate) async fn pick_vip(&self, name: &str) -> Result<Option<Ipv4Addr>, NodeError> {
        let net = &self.config().network;
        let specs = self.services().list().await?;
        let taken: BTreeSet<Ipv4Addr> =
            ipam::vips(&net.vips, specs.iter().map(|s| (s.spec.name.as_str(), s.spec.vip))).into_values().collect();
        Ok(ipam::pick_vip(&net.vips, name, &taken))
    }
}
