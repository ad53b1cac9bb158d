//! Container operations (`run`, `ps`, `stop`, `kill`, `rm`, `logs`, `stats`), in the shapes the
//! API returns. The runtime's calls block (files, processes), so they run on tokio's blocking
//! pool. The runtime is opened on first use, or at start when containers exist on disk (so a
//! restarted agent finds them again at once); an agent that never runs a container never
//! creates a bridge.

use crate::{Node, NodeError};
use shoal_runtime::{AttachGuard, ResolvedImage, Runtime, RuntimeConfig};
use shoal_types::{ContainerInfo, ContainerSpec, ContainerStats};
use std::io::Read;
use std::time::Duration;

/// Where the runtime keeps containers and layers.
pub(crate) fn runtime_root(node_dir: &std::path::Path) -> std::path::PathBuf {
    node_dir.join("runtime")
}

/// Whether containers from an earlier run are on disk.
pub(crate) fn has_containers(node_dir: &std::path::Path) -> bool {
    std::fs::read_dir(runtime_root(node_dir).join("containers")).is_ok_and(|mut d| d.next().is_some())
}

pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, NodeError> {
    Ok(tokio::task::spawn_blocking(f).await?)
}

impl Node {
    /// The runtime, opened on first use.
    pub(crate) async fn runtime(&self) -> Result<Runtime, NodeError> {
        let cfg = self.config().clone();
        let node = self.clone();
        self.runtime_cell()
            .get_or_try_init(|| async move {
                let exe = std::env::current_exe().map_err(NodeError::Exe)?;
                let claimed = node.claimed_subnet().await?;
                let subnet = shoal_runtime::net::Subnet::parse(&claimed.to_string())
                    .map_err(shoal_runtime::RuntimeError::from)?;
                let rc = RuntimeConfig {
                    root: runtime_root(&cfg.data_dir),
                    exe,
                    subnet,
                    mtu: cfg.network.transport.mtu(),
                    dns: Some(claimed.gateway()),
                    bridge: cfg.bridge.clone(),
                    log_max_bytes: 10 << 20,
                    log_files: 3,
                    managed_label: Some(shoal_services::LABEL_SERVICE.to_string()),
                };
                let rt = blocking(move || Runtime::open(rc)).await??;
                node.forward_exits(rt.exits());
                Ok(rt)
            })
            .await
            .cloned()
    }

    /// Passes the runtime's exit wake-ups on to [`Node::exits`] until the node stops.
    fn forward_exits(&self, mut from: tokio::sync::watch::Receiver<u64>) {
        let (to, cancel) = (self.exits_sender().clone(), self.cancel().clone());
        self.tasks().spawn(async move {
            loop {
                tokio::select! {
                    changed = from.changed() => if changed.is_err() { return },
                    () = cancel.cancelled() => return,
                }
                to.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
    }

    /// Creates and starts a container; the image is pulled from peers if this peer lacks it.
    pub async fn run_container(&self, spec: ContainerSpec) -> Result<ContainerInfo, NodeError> {
        Ok(self.run_container_attached(spec, false).await?.0)
    }

    /// Like [`Node::run_container`]; with `attach`, also a guard that keeps an auto-remove
    /// container until its output has been read to the end.
    pub(crate) async fn run_container_attached(
        &self,
        spec: ContainerSpec,
        attach: bool,
    ) -> Result<(ContainerInfo, Option<AttachGuard>), NodeError> {
        let rt = self.runtime().await?;
        let image = self.resolve_image(&spec.image).await?;
        let t = std::time::Instant::now();
        let made = blocking(move || rt.create(spec, image, attach)).await?;
        let m = shoal_metrics::get();
        match &made {
            Ok(_) => {
                m.container_starts.inc();
                m.container_start_seconds.observe(t.elapsed().as_secs_f64());
            }
            Err(_) => {
                m.container_start_failures.inc();
            }
        }
        self.kick_network();
        Ok(made?)
    }

    /// Starts `args` inside a running container (`exec`, health checks).
    pub async fn exec_session(&self, key: &str, args: Vec<String>) -> Result<crate::ExecSession, NodeError> {
        let (rt, key) = (self.runtime().await?, key.to_string());
        let cmd = blocking(move || rt.exec_command(&key, &args)).await??;
        crate::ExecSession::spawn(cmd)
    }

    /// A container's log directory and full id.
    pub(crate) async fn container_logs(&self, key: &str) -> Result<(String, std::path::PathBuf), NodeError> {
        let (rt, key) = (self.runtime().await?, key.to_string());
        Ok(blocking(move || rt.log_dir(&key)).await??)
    }

    /// Waits (bounded) until the container's supervisor has finished its teardown.
    pub(crate) async fn wait_shim_gone(&self, id: &str, limit: Duration) -> Result<(), NodeError> {
        let rt = self.runtime().await?;
        let mut exits = self.exits();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (rt2, id2) = (rt.clone(), id.to_string());
            if blocking(move || rt2.shim_gone(&id2)).await? || tokio::time::Instant::now() > deadline {
                return Ok(());
            }
            // The shim's exit wakes us; the short timeout covers the teardown after its report.
            let _ = tokio::time::timeout(Duration::from_millis(20), exits.changed()).await;
        }
    }

    /// Whether the container's run is over (for good).
    pub(crate) async fn container_finished(&self, id: &str) -> Result<bool, NodeError> {
        let (rt, id) = (self.runtime().await?, id.to_string());
        blocking(move || rt.is_finished(&id)).await
    }

    /// Finds an image here (or pulls it) and lays out what the runtime needs.
    async fn resolve_image(&self, reference: &str) -> Result<ResolvedImage, NodeError> {
        let rec = self.image_for_run(reference).await?;
        let store = self.blobs().store();
        blocking(move || -> Result<ResolvedImage, NodeError> {
            let mut config = Vec::new();
            store
                .open_blob(&rec.config.cid)
                .map_err(shoal_blobs::BlobsError::from)?
                .take(8 << 20)
                .read_to_end(&mut config)
                .map_err(|source| NodeError::ImageConfig { image: rec.reference.clone(), source })?;
            let layers = rec.layers.iter().map(|l| (l.digest.hex().to_string(), store.blob_path(&l.cid))).collect();
            Ok(ResolvedImage {
                reference: rec.reference.clone(),
                digest: rec.manifest.digest.to_string(),
                config,
                layers,
            })
        })
        .await?
    }

    /// Containers (running only unless `all`).
    pub async fn containers(&self, all: bool) -> Result<Vec<ContainerInfo>, NodeError> {
        if self.runtime_cell().get().is_none() && !has_containers(&self.config().data_dir) {
            return Ok(Vec::new());
        }
        let rt = self.runtime().await?;
        blocking(move || rt.list(all)).await
    }

    /// One container by name or id prefix.
    pub async fn container(&self, key: &str) -> Result<ContainerInfo, NodeError> {
        let (rt, key) = (self.runtime().await?, key.to_string());
        Ok(blocking(move || rt.inspect(&key)).await??)
    }

    /// `stop -t`.
    pub async fn stop_container(&self, key: &str, secs: u64) -> Result<ContainerInfo, NodeError> {
        let (rt, key) = (self.runtime().await?, key.to_string());
        Ok(blocking(move || rt.stop(&key, secs)).await??)
    }

    /// `kill [-s SIGNAL]`.
    pub async fn kill_container(&self, key: &str, signal: Option<String>) -> Result<ContainerInfo, NodeError> {
        let (rt, key) = (self.runtime().await?, key.to_string());
        Ok(blocking(move || rt.kill(&key, signal.as_deref())).await??)
    }

    /// `rm [-f]`; the container's connection tracking goes with it.
    pub async fn remove_container(&self, key: &str, force: bool) -> Result<(), NodeError> {
        let (rt, key) = (self.runtime().await?, key.to_string());
        let ip = {
            let (rt, key) = (rt.clone(), key.clone());
            blocking(move || rt.inspect(&key)).await?.ok().and_then(|c| c.ip?.parse::<std::net::Ipv4Addr>().ok())
        };
        blocking(move || rt.remove(&key, force)).await??;
        if let Some(ip) = ip {
            self.net().network.forget(ip).await;
        }
        self.kick_network();
        Ok(())
    }

    /// Waits until the container's run is over (for good, not between restarts); its info.
    /// Woken by the runtime's exit events, not by polling.
    pub async fn wait_container(&self, key: &str) -> Result<ContainerInfo, NodeError> {
        let id = self.container(key).await?.id;
        let mut exits = self.exits();
        loop {
            exits.borrow_and_update();
            if self.container_finished(&id).await? {
                return self.container(&id).await;
            }
            // A lost wake-up costs at most this long.
            let _ = tokio::time::timeout(Duration::from_secs(1), exits.changed()).await;
        }
    }

    /// CPU, memory and pids per running container.
    pub async fn container_stats(&self) -> Result<Vec<ContainerStats>, NodeError> {
        if self.runtime_cell().get().is_none() && !has_containers(&self.config().data_dir) {
            return Ok(Vec::new());
        }
        let rt = self.runtime().await?;
        blocking(move || rt.stats()).await
    }
}
