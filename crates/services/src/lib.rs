//! Leaderless services: one actor per peer owns the desired state and everything this peer
//! does about it.
//!
//! ```text
//!  API / CLI ──► Services (handle) ──Command (bounded 64, oneshot reply)──┐
//!  peers ──/shoal/state/1 Sync──► node ──Command::Merge────────────────────┤
//!                                                                          ▼
//!                                                 ┌──────────── actor task ─────────────┐
//!   Cluster::changes ─ membership/record changed ─►│ owns: ServiceMap + Clock, health,   │
//!   Containers::exits ─ a container exited ───────►│ start failures, starts in progress, │
//!   tick (500 ms) ─ timers, anti-entropy (1 s) ───►│ autoscale marks, the last snapshot  │
//!                                                 │                                     │
//!                                                 │ round: view + containers ──► plan() │
//!                                                 └──┬──────────────┬──────────────┬────┘
//!                   JoinSet, child cancellation token│              │              │
//!             start / remove / health-check tasks ◄──┘   sync tasks ◄┘   publish ◄──┘
//!             (Containers)          (results come back  (Cluster::sync:  (Cluster::publish:
//!                                    as messages)        push, pull)      reports in record)
//! ```
//!
//! - **Desired state**: a [`ServiceMap`](shoal_scheduler::ServiceMap) CRDT. A change made here is
//!   merged, saved durably (`services.bin`, [`store`]) before the caller hears back, and pushed
//!   to every live member; every second the map is also exchanged with one random member, so a
//!   peer that was away catches up.
//! - **Rounds**: on any change (a command, a membership or record change, a container exit, a
//!   task's result) and every 500 ms, the actor gathers the cluster view and its containers,
//!   runs [`shoal_scheduler::plan`] and carries out the plan: stops, starts, health checks and
//!   rewrites of desired state (rollback, settled updates, autoscaling) as tasks whose results
//!   come back as messages. It acts only on a complete view (every member's record known) and,
//!   after a start, once the view has settled, so it never starts replicas that peers it has not
//!   heard from yet still run.
//! - **Reports**: after each round this peer's reports are published in its record
//!   ([`reports`]) when they changed; every peer plans from everyone's.
//! - **Shutdown**: [`Services::drain`] marks the peer draining and waits (bounded) until others
//!   run its replicas, then stops them; [`Services::shutdown`] cancels the actor, which cancels
//!   its tasks and waits for them, in that order.
//!
//! The effects sit behind [`Containers`] and [`Cluster`]; [`fake`] has in-memory ones for tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod actor;
pub mod effects;
pub mod error;
pub mod fake;
pub mod reports;
mod round;
pub mod store;
mod view;

pub use effects::{Cluster, ClusterView, Containers, Member};
pub use error::{EffectError, ServiceError, SpecError, check_spec};

use shoal_scheduler::DecodeError;
use shoal_types::{ReplicaInfo, ServiceInfo, ServiceSpec};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Labels that mark a container as a service replica.
pub const LABEL_SERVICE: &str = "shoal.service";
/// The replica's slot: an index, or the peer id of a global service's replica.
pub const LABEL_SLOT: &str = "shoal.replica";
/// The spec version the replica was started from.
pub const LABEL_VERSION: &str = "shoal.version";

/// How the actor runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where `services.bin` lives.
    pub dir: PathBuf,
    /// This peer's name (for `service ps`).
    pub name: String,
    /// Time between two rounds when nothing happens.
    pub tick: Duration,
    /// Who may write desired state, and this peer's means to (see `shoal_scheduler::trust`).
    pub trust: shoal_scheduler::Trust,
}

/// One service as the network needs it: its address, its published ports and where its
/// running (and healthy) replicas are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Service name.
    pub name: String,
    /// Its virtual address.
    pub vip: Option<std::net::Ipv4Addr>,
    /// Its published ports.
    pub ports: Vec<shoal_types::PortMapping>,
    /// Addresses of its running replicas on live peers, sorted.
    pub backends: Vec<std::net::Ipv4Addr>,
}

/// Handle to the services actor. Cheap to clone.
#[derive(Clone)]
pub struct Services {
    tx: mpsc::Sender<actor::Command>,
    endpoints: tokio::sync::watch::Receiver<std::sync::Arc<Vec<Endpoints>>>,
}

/// The running actor: its handle and its task.
pub struct Running {
    /// The handle.
    pub services: Services,
    /// The actor's task; it ends after [`Services::shutdown`].
    pub task: JoinHandle<()>,
}

impl Services {
    /// Loads the saved desired state and starts the actor.
    pub fn spawn<C: Containers, K: Cluster>(cfg: Config, containers: C, cluster: K) -> Running {
        let (tx, rx) = mpsc::channel(64);
        let (endpoints_tx, endpoints) = tokio::sync::watch::channel(std::sync::Arc::new(Vec::new()));
        let task = tokio::spawn(actor::Actor::new(cfg, containers, cluster, endpoints_tx).run(rx));
        Running { services: Services { tx, endpoints }, task }
    }

    /// Every service's address, ports and running replicas; changes when any of it does
    /// (after the round that saw it, so within a round of a replica starting, failing its
    /// health check or its peer dying).
    pub fn endpoints(&self) -> tokio::sync::watch::Receiver<std::sync::Arc<Vec<Endpoints>>> {
        self.endpoints.clone()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> actor::Command) -> Result<T, ServiceError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| ServiceError::Stopped)?;
        rx.await.map_err(|_| ServiceError::Stopped)
    }

    /// Declares a new service.
    pub async fn create(&self, spec: ServiceSpec) -> Result<ServiceInfo, ServiceError> {
        let name = spec.name.clone();
        self.ask(|reply| actor::Command::Put { spec: Box::new(spec), create: true, reply }).await??;
        self.get(&name).await
    }

    /// Replaces a service's spec (`service update`, `deploy`).
    pub async fn update(&self, spec: ServiceSpec) -> Result<ServiceInfo, ServiceError> {
        let name = spec.name.clone();
        self.ask(|reply| actor::Command::Put { spec: Box::new(spec), create: false, reply }).await??;
        self.get(&name).await
    }

    /// Changes a replicated service's replica count.
    pub async fn scale(&self, name: &str, replicas: u32) -> Result<ServiceInfo, ServiceError> {
        let mut spec = self.spec(name).await?;
        if spec.mode == shoal_types::ServiceMode::Global {
            return Err(ServiceError::Global(name.to_string()));
        }
        spec.replicas = replicas;
        self.update(spec).await
    }

    /// Asks for the replicas of `name` to be spread evenly again (rolling).
    pub async fn rebalance(&self, name: &str) -> Result<ServiceInfo, ServiceError> {
        let n = name.to_string();
        self.ask(|reply| actor::Command::Rebalance { name: n, reply }).await??;
        self.get(name).await
    }

    /// Retires an operator peer's grant (the revocation is the authority's, checked here too).
    pub async fn revoke(&self, revocation: shoal_scheduler::Revocation) -> Result<(), ServiceError> {
        self.ask(|reply| actor::Command::Revoke { revocation, reply }).await?
    }

    /// Whether the writer `key` has been revoked.
    pub async fn is_revoked(&self, key: [u8; 32]) -> Result<bool, ServiceError> {
        self.ask(|reply| actor::Command::IsRevoked { key, reply }).await
    }

    /// Whether this peer may change services (and ask other peers to restart replicas): it
    /// holds the operator key (or the cluster is open) and its grant is not revoked.
    pub async fn may_write(&self) -> Result<bool, ServiceError> {
        self.ask(|reply| actor::Command::MayWrite { reply }).await
    }

    /// Removes a service everywhere.
    pub async fn remove(&self, name: &str) -> Result<(), ServiceError> {
        let name = name.to_string();
        self.ask(|reply| actor::Command::Remove { name, reply }).await?
    }

    /// A live service's spec.
    pub async fn spec(&self, name: &str) -> Result<ServiceSpec, ServiceError> {
        let n = name.to_string();
        self.ask(|reply| actor::Command::Spec { name: n, reply })
            .await?
            .ok_or_else(|| ServiceError::NotFound(name.into()))
    }

    /// Every service with how it is doing.
    pub async fn list(&self) -> Result<Vec<ServiceInfo>, ServiceError> {
        self.ask(|reply| actor::Command::List { reply }).await
    }

    /// One service.
    pub async fn get(&self, name: &str) -> Result<ServiceInfo, ServiceError> {
        self.list().await?.into_iter().find(|s| s.spec.name == name).ok_or_else(|| ServiceError::NotFound(name.into()))
    }

    /// The replicas of `name` (or of every service), wherever they run or why they do not.
    pub async fn replicas(&self, name: Option<&str>) -> Result<Vec<ReplicaInfo>, ServiceError> {
        if let Some(n) = name {
            self.spec(n).await?;
        }
        let name = name.map(str::to_string);
        self.ask(|reply| actor::Command::Replicas { name, reply }).await
    }

    /// Merges a peer's encoded map; this peer's map back if the two still differ.
    pub async fn merge(&self, bytes: Vec<u8>) -> Result<Result<Option<Vec<u8>>, DecodeError>, ServiceError> {
        self.ask(|reply| actor::Command::Merge { bytes, reply }).await
    }

    /// Marks this peer draining and returns once its replicas run elsewhere and are stopped
    /// here, or after `limit` (then they are stopped anyway).
    pub async fn drain(&self, limit: Duration) {
        let _ = self.ask(|reply| actor::Command::Drain { limit, reply }).await;
    }

    /// Stops the actor and its tasks (in that order) and waits for them.
    pub async fn shutdown(&self) {
        let _ = self.ask(|reply| actor::Command::Shutdown { reply }).await;
    }
}
