//! The [`Node`] handle: starts the agent's subsystems and answers the API.

use crate::config::AgentConfig;
use crate::error::NodeError;
use shoal_overlay::{KeyFile, LocalInfo, Overlay, OverlayConfig, load_or_create_identity};
use shoal_types::{AgentStatus, PeerInfo, PeerState, Resources};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// How long a leaving agent waits for other peers to run its replicas.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the node's own tasks after cancelling them.
const TASKS_GRACE: Duration = Duration::from_secs(5);

/// A running agent. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    cfg: AgentConfig,
    overlay: Overlay,
    blobs: shoal_blobs::Blobs,
    overlay_task: Mutex<Option<JoinHandle<()>>>,
    runtime: tokio::sync::OnceCell<shoal_runtime::Runtime>,
    /// The services actor (set once at start).
    services: OnceLock<shoal_services::Services>,
    services_task: Mutex<Option<JoinHandle<()>>>,
    /// The cluster network (set once at start).
    net: OnceLock<crate::network::NetParts>,
    /// Registry pulls (set once at start).
    registry: OnceLock<Arc<shoal_registry::Cluster>>,
    events: Arc<shoal_events::EventLog>,
    net_task: Mutex<Option<JoinHandle<()>>>,
    /// Bumped whenever a container's supervisor exits (forwarded from the runtime once open).
    exits: Arc<tokio::sync::watch::Sender<u64>>,
    /// Cancels the node's own tasks (the state protocol, the exit forwarder).
    cancel: CancellationToken,
    tasks: TaskTracker,
    started: Instant,
    capacity: Resources,
    /// The key file (`None` in an open cluster) and what it allows.
    keys: Option<KeyFile>,
    trust: shoal_scheduler::Trust,
}

impl Node {
    /// Prepares the data dir and keys, then starts every subsystem.
    pub async fn start(cfg: AgentConfig) -> Result<Node, NodeError> {
        let dir = &cfg.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| NodeError::DataDir { path: dir.clone(), source })?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|source| NodeError::DataDir { path: dir.clone(), source })?;
        // A data dir with an identity but no key file ran as an open cluster before: making a
        // key now would split it from its peers silently. Only a new data dir gets a new key.
        let events = crate::events::open_log(dir, &cfg.name)?;
        let is_new = !dir.join("identity.key").exists();
        let keypair = load_or_create_identity(&dir.join("identity.key"))?;
        let keys = match &cfg.cluster_key {
            Some(p) if *p == crate::config::default_key_path(dir) && !p.exists() && !is_new => {
                return Err(NodeError::NoKeyForOldCluster { data_dir: dir.clone() });
            }
            // Secure by default: the first start makes the data dir's own key.
            Some(p) if *p == crate::config::default_key_path(dir) && !p.exists() => {
                let key = KeyFile::generate();
                shoal_overlay::keys::write_secret(p, key.to_file_text().as_bytes())?;
                info!(
                    key = %p.display(),
                    "made an operator key for a new cluster; to add a peer, copy this file to it (mode 0600) and run `shoal agent --cluster-key FILE --join <this peer's address>`; for a peer that runs work but changes no services, give it a worker key instead: `shoal keygen --worker FILE -o worker.key`"
                );
                Some(key)
            }
            Some(p) => Some(KeyFile::load(p)?),
            None => {
                warn!(
                    "INSECURE (--insecure): no cluster key; any machine that can reach this peer can join the cluster, run containers on it and change its services. Drop --insecure to use a key."
                );
                None
            }
        };
        let capacity = crate::resources::detect(cfg.cpus, cfg.memory);
        let cluster_key = keys.as_ref().map(|k| k.cluster);
        let trust = crate::trust::trust_of(keys.as_ref(), &keypair);
        let role = match &trust {
            shoal_scheduler::Trust::Open => "open",
            t if t.can_write() => "operator",
            _ => "worker",
        };
        info!(peer = %keypair.public().to_peer_id(), name = %cfg.name, %capacity, key = ?cluster_key, role, "starting agent");
        let mut ext = std::collections::BTreeMap::new();
        if let Some(g) = crate::trust::grant_value(&trust) {
            ext.insert(crate::trust::GRANT_KEY.to_string(), g);
        }
        let local = LocalInfo { name: cfg.name.clone(), labels: cfg.labels.clone(), capacity, free: capacity, ext };
        let (overlay, task) = Overlay::start(OverlayConfig {
            keypair,
            cluster_key,
            listen: cfg.listen.clone(),
            join: cfg.join.clone(),
            mdns: cfg.mdns,
            state_dir: cfg.data_dir.clone(),
            local,
            tuning: cfg.tuning.clone(),
            dead_retention: cfg.dead_retention,
        })
        .await?;
        let psk = cluster_key.map(|k| k.derive(crate::network::PSK_CONTEXT));
        let corrupt_uploads = std::env::var("SHOAL_TEST_CORRUPT_UPLOADS").is_ok_and(|v| v == "1");
        let blobs = shoal_blobs::Blobs::start(
            shoal_blobs::BlobsConfig {
                dir: cfg.data_dir.join("content"),
                quota: cfg.store_quota,
                data_listen: cfg.data_listen,
                upload_limit: cfg.upload_limit.map(|b| b / 8),
                download_limit: cfg.download_limit.map(|b| b / 8),
                corrupt_uploads,
                tags: match &trust {
                    shoal_scheduler::Trust::Open => None,
                    keyed => Some(std::sync::Arc::new(crate::trust::OperatorTags(keyed.clone()))),
                },
            },
            overlay.clone(),
        )
        .await?;
        let node = Node {
            inner: Arc::new(Inner {
                cfg,
                overlay,
                blobs,
                overlay_task: Mutex::new(Some(task)),
                runtime: tokio::sync::OnceCell::new(),
                services: OnceLock::new(),
                services_task: Mutex::new(None),
                net: OnceLock::new(),
                registry: OnceLock::new(),
                events,
                net_task: Mutex::new(None),
                exits: Arc::new(tokio::sync::watch::Sender::new(0)),
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
                started: Instant::now(),
                capacity,
                keys,
                trust,
            }),
        };
        let upstreams =
            std::fs::read_to_string("/etc/resolv.conf").map(|t| shoal_net::dns::host_resolvers(&t)).unwrap_or_default();
        let (network, net_task) = shoal_net::Network::start(shoal_net::NetworkConfig {
            settings: node.inner.cfg.network.clone(),
            bridge: node.inner.cfg.bridge.clone(),
            me: node.inner.overlay.peer_id().to_string(),
            state_dir: node.inner.cfg.data_dir.clone(),
            psk,
            upstreams,
        })?;
        let _ = node.inner.net.set(crate::network::NetParts {
            network,
            claim: tokio::sync::watch::Sender::new(None),
            kick: tokio::sync::Notify::new(),
        });
        *node.inner.net_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(net_task);
        let running = shoal_services::Services::spawn(
            shoal_services::Config {
                dir: node.inner.cfg.data_dir.clone(),
                name: node.inner.cfg.name.clone(),
                tick: Duration::from_millis(500),
                trust: node.inner.trust.clone(),
            },
            crate::services::NodeContainers { node: node.clone() },
            crate::services::NodeCluster { overlay: node.inner.overlay.clone(), node: node.clone() },
        );
        let _ = node.inner.services.set(running.services);
        *node.inner.services_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(running.task);
        node.inner.tasks.spawn(node.clone().run_network());
        // Containers from before a restart: find them again now, not at the first request
        // (their subnet is the saved claim, so this does not wait for the cluster).
        if crate::containers::has_containers(&node.inner.cfg.data_dir)
            && let Err(e) = node.runtime().await
        {
            warn!(err = %e, "cannot open the container runtime; containers from before are not supervised");
        }
        node.serve_state_protocol()?;
        node.serve_events()?;
        node.start_metrics().await;
        node.start_registry().await?;
        Ok(node)
    }

    pub(crate) fn inner_arc(&self) -> &Arc<Inner> {
        &self.inner
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Node {
        Node { inner }
    }

    /// When the agent started, in seconds since the Unix epoch.
    pub(crate) fn started_at_unix(&self) -> f64 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        now.saturating_sub(self.inner.started.elapsed()).as_secs_f64()
    }

    pub(crate) fn event_log(&self) -> &Arc<shoal_events::EventLog> {
        &self.inner.events
    }

    pub(crate) fn registry_cell(&self) -> &OnceLock<Arc<shoal_registry::Cluster>> {
        &self.inner.registry
    }

    pub(crate) fn set_registry(&self, cluster: Arc<shoal_registry::Cluster>) {
        let _ = self.inner.registry.set(cluster);
    }

    /// The key file this peer runs with (`None`: an open cluster).
    pub(crate) fn keys(&self) -> Option<&KeyFile> {
        self.inner.keys.as_ref()
    }

    /// What this peer's key allows.
    pub(crate) fn trust(&self) -> &shoal_scheduler::Trust {
        &self.inner.trust
    }

    pub(crate) fn services(&self) -> &shoal_services::Services {
        self.inner.services.get().expect("the services actor is started before the node is handed out")
    }

    pub(crate) fn net_parts(&self) -> &crate::network::NetParts {
        self.inner.net.get().expect("the network is started before the node is handed out")
    }

    pub(crate) fn overlay(&self) -> &Overlay {
        &self.inner.overlay
    }

    pub(crate) fn cancel(&self) -> &CancellationToken {
        &self.inner.cancel
    }

    pub(crate) fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    /// Changes whenever a container's supervisor exits.
    pub fn exits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.exits.subscribe()
    }

    pub(crate) fn exits_sender(&self) -> &Arc<tokio::sync::watch::Sender<u64>> {
        &self.inner.exits
    }

    pub(crate) fn runtime_cell(&self) -> &tokio::sync::OnceCell<shoal_runtime::Runtime> {
        &self.inner.runtime
    }

    /// The configuration this agent runs with.
    pub fn config(&self) -> &AgentConfig {
        &self.inner.cfg
    }

    /// This machine's capacity as offered to the cluster.
    pub fn capacity(&self) -> Resources {
        self.inner.capacity
    }

    /// Every known peer, optionally only those in `state`.
    pub async fn peers(&self, state: Option<PeerState>) -> Result<Vec<PeerInfo>, NodeError> {
        let mut peers = self.inner.overlay.peers().await?;
        if let Some(s) = state {
            peers.retain(|p| p.state == s);
        }
        Ok(peers)
    }

    /// One peer, by id or by name.
    pub async fn peer(&self, key: &str) -> Result<PeerInfo, NodeError> {
        let peers = self.inner.overlay.peers().await?;
        if let Some(p) = peers.iter().find(|p| p.id == key) {
            return Ok(p.clone());
        }
        // Names need not be unique (a peer rebuilt with a new identity keeps its name): prefer
        // a live one.
        let mut named: Vec<&PeerInfo> = peers.iter().filter(|p| p.name == key).collect();
        named.sort_by_key(|p| !p.state.is_active());
        let found = named.first().copied();
        found.cloned().ok_or_else(|| NodeError::NoPeer(key.to_string()))
    }

    /// This agent's status.
    pub async fn status(&self) -> Result<AgentStatus, NodeError> {
        let s = self.inner.overlay.status().await?;
        Ok(AgentStatus {
            id: s.peer_id.to_string(),
            name: self.inner.cfg.name.clone(),
            version: shoal_types::VERSION.to_string(),
            listen_addrs: s.listen_addrs,
            cluster_size: s.cluster_size,
            known_peers: s.known_peers,
            private_network: s.private_network,
            generation: s.generation,
            uptime_secs: self.inner.started.elapsed().as_secs(),
            data_dir: self.inner.cfg.data_dir.display().to_string(),
            dropped_messages: s.dropped_messages,
            uploaded_bytes: self.inner.blobs.uploaded(),
        })
    }

    /// The content subsystem.
    pub fn blobs(&self) -> &shoal_blobs::Blobs {
        &self.inner.blobs
    }

    /// Leaves the cluster gracefully and stops the subsystems, in order: service replicas are
    /// handed off (bounded), the services actor and its tasks stop, the node's own tasks stop,
    /// then content, then the overlay leaves.
    pub async fn shutdown(&self) {
        self.services().drain(DRAIN_LIMIT).await;
        self.services().shutdown().await;
        let task = self.inner.services_task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(TASKS_GRACE, self.inner.tasks.wait()).await.is_err() {
            warn!("some of the node's tasks did not stop in time");
        }
        // With containers still running the network stays for them and the next agent; with
        // none, nothing of it is left behind.
        let keep = self.containers(true).await.is_ok_and(|c| !c.is_empty());
        self.net().network.shutdown(!keep).await;
        let task = self.inner.net_task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
        self.inner.blobs.shutdown();
        if let Err(e) = self.inner.overlay.leave().await {
            warn!(err = %e, "overlay already stopped");
        }
        let task = self.inner.overlay_task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}
