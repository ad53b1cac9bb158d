//! In-memory effects for tests: [`FakeContainers`] (containers that start at once, or fail as
//! told) and [`FakeNet`] / [`FakeCluster`] (peers in one process whose records and
//! desired-state exchanges go through shared memory), so the actor is tested without a runtime
//! or an overlay.

use crate::effects::{Cluster, ClusterView, Containers, Member};
use crate::error::EffectError;
use crate::{LABEL_SERVICE, Services};
use shoal_scheduler::{Fault, PeerView};
use shoal_types::{ContainerInfo, ContainerSpec, ContainerState, Resources};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct Boxes {
    containers: BTreeMap<String, ContainerInfo>,
    next: u64,
    fail_starts: Option<Fault>,
    healthy: bool,
    started: u64,
    checks: u64,
}

/// Containers in memory: a start creates a running container at once.
#[derive(Clone, Default)]
pub struct FakeContainers {
    inner: Arc<Mutex<Boxes>>,
}

impl FakeContainers {
    /// No containers; starts succeed and health checks pass.
    pub fn new() -> FakeContainers {
        let f = FakeContainers::default();
        lock(&f.inner).healthy = true;
        f
    }

    /// Makes every later start fail with `fault` (or succeed again with `None`).
    pub fn fail_starts(&self, fault: Option<Fault>) {
        lock(&self.inner).fail_starts = fault;
    }

    /// Makes health checks pass or fail.
    pub fn set_healthy(&self, healthy: bool) {
        lock(&self.inner).healthy = healthy;
    }

    /// The containers now.
    pub fn all(&self) -> Vec<ContainerInfo> {
        lock(&self.inner).containers.values().cloned().collect()
    }

    /// Containers started so far, and health checks run.
    pub fn counts(&self) -> (u64, u64) {
        let b = lock(&self.inner);
        (b.started, b.checks)
    }

    /// Ends a container as if it had exited for good.
    pub fn exit(&self, id: &str) {
        if let Some(c) = lock(&self.inner).containers.get_mut(id) {
            c.state = ContainerState::Exited;
        }
    }
}

impl Containers for FakeContainers {
    async fn list(&self) -> Result<Vec<ContainerInfo>, EffectError> {
        Ok(self.all().into_iter().filter(|c| c.spec.labels.contains_key(LABEL_SERVICE)).collect())
    }

    async fn start(&self, spec: ContainerSpec) -> Result<(), Fault> {
        let mut b = lock(&self.inner);
        if let Some(f) = &b.fail_starts {
            return Err(f.clone());
        }
        let name = spec.name.clone().unwrap_or_default();
        if b.containers.values().any(|c| c.name == name) {
            return Err(Fault { local: true, message: format!("the name {name} is in use") });
        }
        b.next += 1;
        b.started += 1;
        let id = format!("{:064x}", b.next);
        let info = ContainerInfo {
            id: id.clone(),
            name,
            image: spec.image.clone(),
            image_digest: String::new(),
            command: spec.cmd.clone(),
            state: ContainerState::Running,
            pid: None,
            exit_code: None,
            reason: None,
            created_unix: 0,
            started_unix: Some(0),
            finished_unix: None,
            restarts: 0,
            ip: None,
            spec,
        };
        b.containers.insert(id, info);
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), EffectError> {
        lock(&self.inner).containers.remove(id);
        Ok(())
    }

    async fn check(&self, _id: &str, _cmd: Vec<String>, _timeout: Duration) -> bool {
        let mut b = lock(&self.inner);
        b.checks += 1;
        b.healthy
    }

    async fn cpu(&self) -> BTreeMap<String, u64> {
        BTreeMap::new()
    }

    fn exits(&self) -> Option<watch::Receiver<u64>> {
        None
    }
}

struct FakePeer {
    view: PeerView,
    alive: bool,
    reports: Option<serde_json::Value>,
    services: Option<Services>,
    operator: bool,
}

struct Net {
    peers: BTreeMap<String, FakePeer>,
}

/// Peers in one process, all seeing each other at once (no delays, no partitions).
#[derive(Clone)]
pub struct FakeNet {
    inner: Arc<Mutex<Net>>,
    changes: Arc<watch::Sender<u64>>,
}

impl Default for FakeNet {
    fn default() -> Self {
        FakeNet {
            inner: Arc::new(Mutex::new(Net { peers: BTreeMap::new() })),
            changes: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl FakeNet {
    /// A new, empty network.
    pub fn new() -> FakeNet {
        FakeNet::default()
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Adds an alive peer with ample room; its cluster handle.
    pub fn join(&self, id: &str) -> FakeCluster {
        let view = PeerView {
            id: id.to_string(),
            capacity: Resources::new(64_000, 1 << 40),
            labels: BTreeMap::new(),
            draining: false,
        };
        lock(&self.inner)
            .peers
            .insert(id.to_string(), FakePeer { view, alive: true, reports: None, services: None, operator: true });
        self.bump();
        FakeCluster { net: self.clone(), me: id.to_string() }
    }

    /// Lets the others reach `id`'s services (for desired-state exchanges).
    pub fn register(&self, id: &str, services: Services) {
        if let Some(p) = lock(&self.inner).peers.get_mut(id) {
            p.services = Some(services);
        }
    }

    /// Marks a peer as holding a worker key (its record carries no operator grant).
    pub fn set_worker(&self, id: &str) {
        if let Some(p) = lock(&self.inner).peers.get_mut(id) {
            p.operator = false;
        }
        self.bump();
    }

    /// Marks a peer dead or alive; its record goes with it.
    pub fn set_alive(&self, id: &str, alive: bool) {
        if let Some(p) = lock(&self.inner).peers.get_mut(id) {
            p.alive = alive;
            if !alive {
                p.reports = None;
            }
        }
        self.bump();
    }
}

/// A stand-in writer key for fake peer `id` (the fake network checks no grants).
pub fn fake_key(id: &str) -> [u8; 32] {
    let mut k = [0u8; 32];
    for (i, b) in id.bytes().enumerate() {
        k[i % 32] ^= b.wrapping_add(i as u8);
    }
    k
}

/// One peer's view of a [`FakeNet`].
#[derive(Clone)]
pub struct FakeCluster {
    net: FakeNet,
    me: String,
}

impl Cluster for FakeCluster {
    fn me(&self) -> String {
        self.me.clone()
    }

    async fn view(&self) -> Result<ClusterView, EffectError> {
        let net = lock(&self.net.inner);
        let members = net
            .peers
            .values()
            .filter(|p| p.alive)
            .map(|p| Member {
                view: p.view.clone(),
                name: p.view.id.clone(),
                reports: p.reports.clone(),
                has_record: true,
                operator: p.operator.then(|| fake_key(&p.view.id)),
            })
            .collect();
        Ok(ClusterView { members, known: net.peers.len().saturating_sub(1) })
    }

    async fn publish(&self, reports: serde_json::Value, draining: bool) -> Result<(), EffectError> {
        if let Some(p) = lock(&self.net.inner).peers.get_mut(&self.me) {
            p.reports = Some(reports);
            p.view.draining = draining;
        }
        self.net.bump();
        Ok(())
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.net.changes.subscribe()
    }

    async fn sync(&self, peer: &str, map: Vec<u8>) -> Result<Option<Vec<u8>>, EffectError> {
        let services = lock(&self.net.inner).peers.get(peer).filter(|p| p.alive).and_then(|p| p.services.clone());
        let unreachable = || EffectError::Peer { peer: peer.to_string(), reason: "not reachable".into() };
        let services = services.ok_or_else(unreachable)?;
        match services.merge(map).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(EffectError::Peer { peer: peer.to_string(), reason: e.to_string() }),
            Err(_) => Err(unreachable()),
        }
    }
}
