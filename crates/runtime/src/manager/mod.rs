//! The agent's side of the runtime: creates container directories, starts shims, finds them
//! again after a restart, and answers `ps`, `stop`, `kill`, `rm`, `logs`, `stats`.
//!
//! The agent never holds a container's lifecycle itself: each container has a shim
//! ([`crate::shim`]) that outlives the agent. [`Runtime`] keeps only a cache of each
//! container's `meta.json`; the truth about a container's life is the shim's `state.json` and
//! whether the shim's process (pid + start time) still exists. Calls are blocking (file and
//! process work); the node runs them on tokio's blocking pool.
//!
//! Creation checks everything it can before making anything (name, env, volumes, memory,
//! ports, the command), then unpacks missing layers, writes the directory and starts the shim,
//! and waits for the shim's verdict. If the start fails, everything made is removed again.
//!
//! This file holds the types and the lookups every verb shares; each verb lives in a file of
//! its own: `create`, `list` (ps, inspect, stats), `stop` (stop, kill), `remove`, `attach`
//! (following output, exec, logs) and `recover` (finding containers again after a restart).

mod attach;
mod create;
mod list;
mod recover;
mod remove;
mod stop;

pub use attach::AttachGuard;

use crate::state::{ContainerDir, ContainerMeta};
use list::to_info;
use shoal_types::{ContainerInfo, SpecParseError};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the runtime is set up.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where containers and layers live (`<data-dir>/runtime`).
    pub root: PathBuf,
    /// The `shoal` executable (started as `shoal __shim DIR`).
    pub exe: PathBuf,
    /// Container subnet (this peer's claim; see [`Runtime::set_subnet`]).
    pub subnet: crate::net::Subnet,
    /// MTU of containers' interfaces: the cluster transport's, so nothing is fragmented or
    /// black-holed on the way to another peer.
    pub mtu: u32,
    /// The resolver containers use (the agent's DNS on the bridge address); the host's
    /// resolvers when absent.
    pub dns: Option<std::net::Ipv4Addr>,
    /// Bridge name.
    pub bridge: String,
    /// Rotate container logs at this size.
    pub log_max_bytes: u64,
    /// Log files kept per container.
    pub log_files: u32,
    /// Containers with this label belong to a layer above (services): when the agent starts
    /// and finds one whose supervisor died, it is cleaned up and left exited, not restarted by
    /// its policy; that layer decides whether this peer should still run it.
    pub managed_label: Option<String>,
}

/// An image ready to run: what the node found in its content store.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// As the user named it.
    pub reference: String,
    /// Manifest digest.
    pub digest: String,
    /// The image config JSON.
    pub config: Vec<u8>,
    /// Layers bottom first: (sha256 hex of the blob, path of the blob file).
    pub layers: Vec<(String, PathBuf)>,
}

/// What went wrong, in words for the user.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No such container.
    #[error("no container {0}; see `shoal ps -a`")]
    NotFound(String),
    /// A prefix matching several.
    #[error("{0} matches more than one container; give more of the id or the name")]
    Ambiguous(String),
    /// Name taken.
    #[error("the name {0} is already used by a container on this peer; pick another or `shoal rm {0}`")]
    NameInUse(String),
    /// Running when it must not be.
    #[error("container {0} is running; stop it first (`shoal stop {0}`) or use `shoal rm -f {0}`")]
    Running(String),
    /// Not running when it must be.
    #[error("container {0} is not running; start a new one with `shoal run`")]
    NotRunning(String),
    /// A short form or name that does not parse.
    #[error(transparent)]
    Parse(#[from] SpecParseError),
    /// Memory below the minimum.
    #[error("--memory {0} bytes is below the minimum of 6 MiB")]
    MemoryTooSmall(u64),
    /// A volume whose host path does not exist.
    #[error("-v {0}: the host path does not exist; create it first")]
    VolumeMissing(String),
    /// `-p` on a container without a network.
    #[error("a container with --network none has no address to publish ports to; drop -p or use --network bridge")]
    PortsWithoutNetwork,
    /// A host port taken.
    #[error("port {port} on this host is already in use{by}; pick another host port with -p OTHER:{container}")]
    PortInUse {
        /// Host port.
        port: u16,
        /// Container port.
        container: u16,
        /// " by container X" or empty.
        by: String,
    },
    /// The image config does not parse.
    #[error("image {image}: its config is not valid OCI JSON ({source}); import it again")]
    ImageConfig {
        /// Image.
        image: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// Building the command or spec failed.
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    /// A layer failed to unpack.
    #[error(transparent)]
    Layer(#[from] crate::layers::LayerError),
    /// Networking failed.
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// cgroups.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// The shim could not start the container: its message and whose fault it is.
    #[error("{message}")]
    Start {
        /// What went wrong, for the user.
        message: String,
        /// Whose it is.
        failure: crate::state::StartFailure,
    },
    /// A signal name or number that does not exist.
    #[error("unknown signal {0}; use a name like TERM or a number like 15")]
    BadSignal(String),
    /// The container's supervisor refused a control request.
    #[error("the container's supervisor refused: {0}")]
    Control(String),
    /// The shim did not report in time.
    #[error("the container's supervisor did not report within {0:?}; see the agent log")]
    StartTimeout(Duration),
    /// File trouble.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io { path: path.to_path_buf(), source }
}

/// The runtime of this peer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Runtime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: RuntimeConfig,
    layers: crate::layers::LayerStore,
    pool: crate::net::Pool,
    /// The subnet new containers get addresses from.
    subnet: Mutex<crate::net::Subnet>,
    cgroup_parent: PathBuf,
    metas: Mutex<HashMap<String, ContainerMeta>>,
    /// Attached clients per container: an auto-remove container waits for them to read its end.
    attached: Mutex<HashMap<String, usize>>,
    /// Last CPU sample per container, for `stats`.
    cpu: Mutex<HashMap<String, (Instant, u64)>>,
    /// Bumped whenever a shim exits, so followers need not poll for the end.
    exits: tokio::sync::watch::Sender<u64>,
    /// Containers being created: not finished even though their shim has not reported yet.
    creating: Mutex<HashSet<String>>,
    /// Serialises creations (names and ports are checked then taken).
    create_lock: Mutex<()>,
}

impl Runtime {
    /// Opens the runtime: directories, bridge, cgroup parent; finds existing containers again.
    pub fn open(cfg: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let containers = cfg.root.join("containers");
        std::fs::create_dir_all(&containers).map_err(io(&containers))?;
        // Container directories a crash left half deleted (see `discard_dir`).
        let _ = std::fs::remove_dir_all(cfg.root.join("trash"));
        let layers = crate::layers::LayerStore::open(&cfg.root.join("layers"))?;
        let pool = crate::net::Pool::open(&cfg.root)?;
        crate::net::ensure_bridge(&cfg.bridge, cfg.subnet)?;
        let cgroup_parent = crate::cgroup::containers_parent()?;
        let rt = Runtime {
            inner: Arc::new(Inner {
                subnet: Mutex::new(cfg.subnet),
                cfg,
                layers,
                pool,
                cgroup_parent,
                metas: Mutex::new(HashMap::new()),
                attached: Mutex::new(HashMap::new()),
                cpu: Mutex::new(HashMap::new()),
                exits: tokio::sync::watch::Sender::new(0),
                create_lock: Mutex::new(()),
                creating: Mutex::new(HashSet::new()),
            }),
        };
        rt.recover();
        rt.spawn_watcher();
        Ok(rt)
    }

    /// The subnet new containers get addresses from.
    pub fn subnet(&self) -> crate::net::Subnet {
        *self.inner.subnet.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the bridge and new containers to `subnet` (this peer lost its claim to another).
    /// Containers already running keep their addresses.
    pub fn set_subnet(&self, subnet: crate::net::Subnet) -> Result<(), RuntimeError> {
        let _guard = self.inner.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        crate::net::readdress_bridge(&self.inner.cfg.bridge, self.subnet(), subnet)?;
        *self.inner.subnet.lock().unwrap_or_else(|e| e.into_inner()) = subnet;
        Ok(())
    }

    fn dir(&self, id: &str) -> ContainerDir {
        ContainerDir(self.inner.cfg.root.join("containers").join(id))
    }

    fn metas(&self) -> std::sync::MutexGuard<'_, HashMap<String, ContainerMeta>> {
        self.inner.metas.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Info for one container by exact id.
    fn info(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let meta = self.metas().get(id).cloned().ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        let state = self.dir(id).read_state().ok();
        Ok(to_info(&meta, state.as_ref()))
    }

    /// Finds a container by name, full id or unique id prefix.
    pub fn resolve(&self, key: &str) -> Result<String, RuntimeError> {
        let metas = self.metas();
        if let Some(m) = metas.values().find(|m| m.name == key) {
            return Ok(m.id.clone());
        }
        let hits: Vec<&String> = metas.keys().filter(|id| !key.is_empty() && id.starts_with(key)).collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(RuntimeError::NotFound(key.to_string())),
            _ => Err(RuntimeError::Ambiguous(key.to_string())),
        }
    }

    /// Every container's cgroup path, mount point and netns (for leftover checks in tests).
    pub fn root(&self) -> &Path {
        &self.inner.cfg.root
    }
}
