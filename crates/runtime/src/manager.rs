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

use crate::state::{ContainerDir, ContainerMeta, NetMeta, Phase, ShimState, now_unix, write_json_atomic};
use shoal_types::{ContainerInfo, ContainerSpec, ContainerState, ContainerStats, SpecParseError};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a shim may take to start a container.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Docker's smallest memory limit.
const MIN_MEMORY: u64 = 6 << 20;

/// How the runtime is set up.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where containers and layers live (`<data-dir>/runtime`).
    pub root: PathBuf,
    /// The `shoal` executable (started as `shoal __shim DIR`).
    pub exe: PathBuf,
    /// Container subnet.
    pub subnet: crate::net::Subnet,
    /// Bridge name.
    pub bridge: String,
    /// Rotate container logs at this size.
    pub log_max_bytes: u64,
    /// Log files kept per container.
    pub log_files: u32,
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
    /// The shim could not start the container; its message.
    #[error("{0}")]
    Start(String),
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
        let pool = crate::net::Pool::open(&cfg.root, cfg.subnet)?;
        crate::net::ensure_bridge(&cfg.bridge, cfg.subnet)?;
        let cgroup_parent = crate::cgroup::containers_parent()?;
        let rt = Runtime {
            inner: Arc::new(Inner {
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

    fn dir(&self, id: &str) -> ContainerDir {
        ContainerDir(self.inner.cfg.root.join("containers").join(id))
    }

    fn metas(&self) -> std::sync::MutexGuard<'_, HashMap<String, ContainerMeta>> {
        self.inner.metas.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates and starts a container. Returns once it runs (or has already exited). With
    /// `attach`, also a guard that keeps an auto-remove container until the caller has read
    /// its end (taken before the container starts, so even `true` cannot vanish first).
    pub fn create(
        &self,
        spec: ContainerSpec,
        image: ResolvedImage,
        attach: bool,
    ) -> Result<(ContainerInfo, Option<AttachGuard>), RuntimeError> {
        let _warm = crate::cgroup::warm_migrations(START_TIMEOUT);
        let config: oci_spec::image::ImageConfiguration = serde_json::from_slice(&image.config)
            .map_err(|source| RuntimeError::ImageConfig { image: image.reference.clone(), source })?;
        let command = crate::spec::resolve_command(&spec, &config)?;
        for e in &spec.env {
            shoal_types::container::check_env(e)?;
        }
        if spec.memory_bytes != 0 && spec.memory_bytes < MIN_MEMORY {
            return Err(RuntimeError::MemoryTooSmall(spec.memory_bytes));
        }
        for v in &spec.volumes {
            if !Path::new(&v.host).exists() {
                return Err(RuntimeError::VolumeMissing(format!("{}:{}", v.host, v.container)));
            }
        }
        let guard = self.inner.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        let id = random_id();
        let name = match &spec.name {
            Some(n) => {
                shoal_types::container::check_name(n)?;
                n.clone()
            }
            None => default_name(&image.reference, &id),
        };
        let live: Vec<ContainerMeta> = self.metas().values().cloned().collect();
        if live.iter().any(|m| m.name == name) {
            return Err(RuntimeError::NameInUse(name));
        }
        for p in &spec.ports {
            let by = live.iter().find(|m| {
                m.spec.ports.iter().any(|q| q.host_port == p.host_port)
                    && self.dir(&m.id).read_state().is_ok_and(|s| s.shim_alive())
            });
            if let Some(m) = by {
                return Err(RuntimeError::PortInUse {
                    port: p.host_port,
                    container: p.container_port,
                    by: format!(" by container {}", m.name),
                });
            }
            if std::net::TcpListener::bind(("0.0.0.0", p.host_port)).is_err() {
                return Err(RuntimeError::PortInUse {
                    port: p.host_port,
                    container: p.container_port,
                    by: String::new(),
                });
            }
        }
        let mut lowers = Vec::new();
        for (hex, path) in image.layers.iter().rev() {
            let path = path.clone();
            lowers.push(self.inner.layers.ensure(hex, move || std::fs::File::open(path))?);
        }
        let dir = self.dir(&id);
        let made = (|| -> Result<ContainerMeta, RuntimeError> {
            std::fs::create_dir_all(dir.etc()).map_err(io(&dir.etc()))?;
            let ip = self.inner.pool.allocate(&id)?;
            let subnet = self.inner.cfg.subnet;
            let (netns, veth) = crate::net::names(&id);
            let net = NetMeta {
                ip,
                prefix: subnet.prefix,
                gateway: subnet.gateway(),
                bridge: self.inner.cfg.bridge.clone(),
                netns,
                veth,
            };
            let meta = ContainerMeta {
                id: id.clone(),
                name: name.clone(),
                image: image.reference.clone(),
                image_digest: image.digest.clone(),
                command,
                spec: ContainerSpec { name: Some(name.clone()), ..spec },
                created_unix: now_unix(),
                lowers,
                net: Some(net),
                cgroups_path: self.inner.cgroup_parent.join(&id),
                log_max_bytes: self.inner.cfg.log_max_bytes,
                log_files: self.inner.cfg.log_files,
            };
            write_etc(&dir, &meta)?;
            let cfg_path = dir.path().join("image-config.json");
            std::fs::write(&cfg_path, &image.config).map_err(io(&cfg_path))?;
            write_json_atomic(&dir.meta(), &meta, true).map_err(io(&dir.meta()))?;
            Ok(meta)
        })();
        let meta = match made {
            Ok(m) => m,
            Err(e) => {
                self.purge(&id, None);
                return Err(e);
            }
        };
        self.inner.creating.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone());
        self.metas().insert(id.clone(), meta.clone());
        drop(guard);
        let result = self.start_created(&id, &dir, &meta, attach);
        self.inner.creating.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        if result.is_ok() && self.is_finished(&id) {
            // It may have ended before we stopped guarding it: act on that now.
            self.on_exit(&id);
        }
        result
    }

    fn start_created(
        &self,
        id: &str,
        dir: &ContainerDir,
        meta: &ContainerMeta,
        attach: bool,
    ) -> Result<(ContainerInfo, Option<AttachGuard>), RuntimeError> {
        let id = id.to_string();
        let (dir, meta) = (dir.clone(), meta.clone());
        let attached = attach.then(|| self.attach(&id));
        if let Err(e) = self.spawn_shim(&dir) {
            self.purge(&id, Some(&meta));
            return Err(e);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match dir.read_state() {
                Ok(s) if s.phase == Phase::Failed => {
                    let msg = s.error.unwrap_or_else(|| "the container failed to start".into());
                    self.purge(&id, Some(&meta));
                    return Err(RuntimeError::Start(msg));
                }
                Ok(s) if s.phase != Phase::Starting => break,
                _ => {}
            }
            if Instant::now() > deadline {
                self.kill_everything(&meta);
                self.purge(&id, Some(&meta));
                return Err(RuntimeError::StartTimeout(START_TIMEOUT));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok((self.info(&id)?, attached))
    }

    fn spawn_shim(&self, dir: &ContainerDir) -> Result<(), RuntimeError> {
        self.spawn_shim_with(dir, &[])
    }

    fn spawn_shim_with(&self, dir: &ContainerDir, extra: &[String]) -> Result<(), RuntimeError> {
        let exe = &self.inner.cfg.exe;
        let mut child = std::process::Command::new(exe)
            .arg("__shim")
            .arg(dir.path())
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .env_remove("RUST_LOG")
            .spawn()
            .map_err(io(exe))?;
        let rt = self.clone();
        let id = dir.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // Reap the shim (it is our child until we die) and act on its end at once.
        std::thread::spawn(move || {
            let _ = child.wait();
            rt.on_exit(&id);
        });
        Ok(())
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

    /// Every container (running only unless `all`), newest first.
    pub fn list(&self, all: bool) -> Vec<ContainerInfo> {
        let metas: Vec<ContainerMeta> = self.metas().values().cloned().collect();
        let mut out: Vec<ContainerInfo> = metas
            .iter()
            .map(|m| to_info(m, self.dir(&m.id).read_state().ok().as_ref()))
            .filter(|i| all || matches!(i.state, ContainerState::Running | ContainerState::Restarting))
            .collect();
        out.sort_by(|a, b| b.created_unix.cmp(&a.created_unix).then(a.name.cmp(&b.name)));
        out
    }

    /// One container.
    pub fn inspect(&self, key: &str) -> Result<ContainerInfo, RuntimeError> {
        self.info(&self.resolve(key)?)
    }

    /// Stops: SIGTERM, then SIGKILL after `secs`; returns once it has exited.
    pub fn stop(&self, key: &str, secs: u64) -> Result<ContainerInfo, RuntimeError> {
        let id = self.resolve(key)?;
        self.control(&id, &format!("stop {secs}"))?;
        self.wait_exited(&id, Duration::from_secs(secs + 30));
        self.info(&id)
    }

    /// Sends a signal (default SIGKILL).
    pub fn kill(&self, key: &str, signal: Option<&str>) -> Result<ContainerInfo, RuntimeError> {
        let id = self.resolve(key)?;
        let sig = signal.unwrap_or("KILL");
        if crate::shim::parse_signal(sig).is_none() {
            return Err(RuntimeError::Start(format!("unknown signal {sig}; use a name like TERM or a number like 15")));
        }
        self.control(&id, &format!("kill {sig}"))?;
        if matches!(crate::shim::parse_signal(sig), Some(nix::sys::signal::Signal::SIGKILL)) {
            self.wait_exited(&id, Duration::from_secs(30));
        }
        self.info(&id)
    }

    fn control(&self, id: &str, line: &str) -> Result<(), RuntimeError> {
        use std::io::{Read, Write};
        let dir = self.dir(id);
        let state = dir.read_state().ok();
        if !state
            .as_ref()
            .is_some_and(|s| s.shim_alive() && matches!(s.phase, Phase::Running | Phase::Restarting | Phase::Starting))
        {
            return Ok(()); // not running: nothing to stop
        }
        let mut conn = std::os::unix::net::UnixStream::connect(dir.ctl()).map_err(io(&dir.ctl()))?;
        conn.write_all(format!("{line}\n").as_bytes()).map_err(io(&dir.ctl()))?;
        let mut reply = String::new();
        let _ = conn.take(256).read_to_string(&mut reply);
        match reply.strip_prefix("error: ") {
            Some(e) => Err(RuntimeError::Start(e.trim().to_string())),
            None => Ok(()),
        }
    }

    /// Waits until the container has exited for good (or `limit` passes).
    pub fn wait_exited(&self, id: &str, limit: Duration) -> Option<ContainerInfo> {
        let deadline = Instant::now() + limit;
        loop {
            let state = self.dir(id).read_state().ok();
            let done = match &state {
                Some(s) => matches!(s.phase, Phase::Exited | Phase::Failed) || !s.shim_alive(),
                None => true,
            };
            if done || Instant::now() > deadline {
                return self.info(id).ok();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Removes a container; with `force` a running one is killed first.
    pub fn remove(&self, key: &str, force: bool) -> Result<(), RuntimeError> {
        let id = self.resolve(key)?;
        let info = self.info(&id)?;
        if matches!(info.state, ContainerState::Running | ContainerState::Restarting | ContainerState::Created) {
            if !force {
                return Err(RuntimeError::Running(info.name));
            }
            self.control(&id, "kill KILL")?;
            self.wait_exited(&id, Duration::from_secs(30));
        }
        // The shim tears down after reporting the exit: let it finish (bounded).
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.dir(&id).read_state().is_ok_and(|s| s.shim_alive()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let meta = self.metas().get(&id).cloned();
        if let Some(meta) = &meta {
            self.kill_everything(meta);
        }
        self.purge(&id, meta.as_ref());
        Ok(())
    }

    /// Kills whatever is left of a container whose shim is gone or stuck, and undoes mounts.
    fn kill_everything(&self, meta: &ContainerMeta) {
        let dir = self.dir(&meta.id);
        if let Ok(s) = dir.read_state()
            && s.shim_alive()
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(s.shim_pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for d in crate::cgroup::existing_dirs(&meta.cgroups_path) {
            if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
        // Give the kernel a moment to empty the cgroups before removing them.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline
            && crate::cgroup::existing_dirs(&meta.cgroups_path)
                .iter()
                .any(|d| std::fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty()))
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let root = dir.youki().join(&meta.id);
        if root.join("state.json").exists()
            && let Ok(mut c) = libcontainer::container::Container::load(root.clone())
        {
            let _ = c.delete(true);
        }
        crate::cgroup::remove(&meta.cgroups_path);
        crate::shim::teardown(&dir, meta);
    }

    /// Deletes the directory and the address of a container that is no longer running.
    fn purge(&self, id: &str, meta: Option<&ContainerMeta>) {
        let dir = self.dir(id);
        let _ = std::fs::remove_file(dir.ctl());
        if let Some(meta) = meta {
            crate::shim::teardown(&dir, meta);
            crate::cgroup::remove(&meta.cgroups_path);
            if let Some(net) = &meta.net {
                self.inner.pool.release(net.ip, id);
            }
        } else {
            self.inner.pool.release_all_but(&self.metas().keys().filter(|k| *k != id).cloned().collect());
        }
        if crate::shim::is_mounted(&dir.rootfs()) {
            tracing::warn!(%id, "root filesystem still mounted; keeping the directory");
        } else {
            self.discard_dir(id, dir.path());
        }
        self.metas().remove(id);
        self.inner.cpu.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    /// Removes a container's directory without making the caller wait for the file system:
    /// it is renamed into `trash/` (one atomic step, so the container is gone at once) and
    /// deleted there by a thread of its own. Whatever a crash leaves in `trash/` is deleted
    /// when the runtime opens.
    fn discard_dir(&self, id: &str, path: &Path) {
        let trash = self.inner.cfg.root.join("trash");
        let target = trash.join(id);
        if std::fs::create_dir_all(&trash).is_ok() && std::fs::rename(path, &target).is_ok() {
            let spawned = std::thread::Builder::new().name("rm-container-dir".into()).spawn(move || {
                let _ = std::fs::remove_dir_all(&target);
            });
            if spawned.is_ok() {
                return;
            }
            let _ = std::fs::remove_dir_all(trash.join(id));
        }
        let _ = std::fs::remove_dir_all(path);
    }

    /// The shim of `id` exited (or was found dead): remove it if it asked for `--rm`.
    fn on_exit(&self, id: &str) {
        self.inner.exits.send_modify(|n| *n += 1);
        if self.inner.creating.lock().unwrap_or_else(|e| e.into_inner()).contains(id) {
            return;
        }
        let Some(meta) = self.metas().get(id).cloned() else { return };
        let attached = self.inner.attached.lock().unwrap_or_else(|e| e.into_inner()).get(id).copied().unwrap_or(0);
        if meta.spec.auto_remove && attached == 0 {
            // Only once the shim has gone: it tears down after reporting the exit.
            let exited = self.dir(id).read_state().map_or(true, |s| !s.shim_alive());
            if exited {
                self.kill_everything(&meta);
                self.purge(id, Some(&meta));
            }
        }
    }

    /// Changes whenever a container's supervisor exits (wake-up for followers).
    pub fn exits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.exits.subscribe()
    }

    /// Marks a client as following the container's output until it ends.
    pub fn attach(&self, id: &str) -> AttachGuard {
        *self.inner.attached.lock().unwrap_or_else(|e| e.into_inner()).entry(id.to_string()).or_default() += 1;
        AttachGuard { rt: self.clone(), id: id.to_string() }
    }

    /// The command that runs `args` inside a running container (`shoal __exec DIR -- ARGS`);
    /// the caller gives it stdio and waits for it.
    pub fn exec_command(&self, key: &str, args: &[String]) -> Result<std::process::Command, RuntimeError> {
        let id = self.resolve(key)?;
        let info = self.info(&id)?;
        if info.state != ContainerState::Running {
            return Err(RuntimeError::NotRunning(info.name));
        }
        let mut cmd = std::process::Command::new(&self.inner.cfg.exe);
        cmd.arg("__exec").arg(self.dir(&id).path()).arg("--").args(args).env_remove("RUST_LOG");
        Ok(cmd)
    }

    /// The container's log directory.
    pub fn log_dir(&self, key: &str) -> Result<(String, PathBuf), RuntimeError> {
        let id = self.resolve(key)?;
        Ok((id.clone(), self.dir(&id).logs()))
    }

    /// Whether the container's current run is over (exited for good or between restarts).
    pub fn is_finished(&self, id: &str) -> bool {
        self.dir(id).read_state().map_or(true, |s| matches!(s.phase, Phase::Exited | Phase::Failed) || !s.shim_alive())
    }

    /// Whether the container's supervisor has exited (after its teardown), or the container is
    /// gone altogether.
    pub fn shim_gone(&self, id: &str) -> bool {
        self.dir(id).read_state().map_or(true, |s| !s.shim_alive())
    }

    /// CPU, memory and pids of every running container.
    pub fn stats(&self) -> Vec<ContainerStats> {
        let now = Instant::now();
        let mut cpu = self.inner.cpu.lock().unwrap_or_else(|e| e.into_inner());
        self.list(false)
            .into_iter()
            .map(|info| {
                let meta_path = self.metas().get(&info.id).map(|m| m.cgroups_path.clone()).unwrap_or_default();
                let u = crate::cgroup::usage(&meta_path);
                let percent = match cpu.insert(info.id.clone(), (now, u.cpu_nanos)) {
                    Some((then, nanos)) if now > then => {
                        (u.cpu_nanos.saturating_sub(nanos)) as f64 / (now - then).as_nanos() as f64 * 100.0
                    }
                    _ => 0.0,
                };
                ContainerStats {
                    id: info.id,
                    name: info.name,
                    cpu_percent: percent,
                    cpu_nanos: u.cpu_nanos,
                    memory_bytes: u.memory_bytes,
                    memory_limit_bytes: u.memory_limit,
                    pids: u.pids,
                    pids_limit: u.pids_limit,
                }
            })
            .collect()
    }

    /// Finds the containers on disk again (agent start): live shims are left alone; a container
    /// whose shim died is cleaned up, then restarted if its policy says so or removed if `--rm`.
    fn recover(&self) {
        let root = self.inner.cfg.root.join("containers");
        let Ok(entries) = std::fs::read_dir(&root) else { return };
        for e in entries.flatten() {
            let dir = ContainerDir(e.path());
            let Ok(meta) = dir.read_meta() else {
                tracing::warn!(dir = %e.path().display(), "container directory without a readable meta.json; removing it");
                let _ = std::fs::remove_dir_all(e.path());
                continue;
            };
            self.metas().insert(meta.id.clone(), meta.clone());
            let state = dir.read_state().ok();
            let alive = state.as_ref().is_some_and(ShimState::shim_alive);
            if alive {
                tracing::info!(id = %meta.id, name = %meta.name, "found a running container again");
                continue;
            }
            let phase = state.as_ref().map(|s| s.phase);
            if matches!(phase, Some(Phase::Exited | Phase::Failed)) {
                if meta.spec.auto_remove {
                    self.purge(&meta.id, Some(&meta));
                }
                continue;
            }
            tracing::warn!(id = %meta.id, name = %meta.name, "the container's supervisor died; cleaning up");
            self.kill_everything(&meta);
            if let Some(net) = &meta.net {
                crate::net::remove_stray_veth(net);
            }
            let mut s = state.unwrap_or_else(|| ShimState::new(0));
            let stopped = s.stopped;
            s.phase = Phase::Exited;
            s.pid = None;
            s.exit_code = s.exit_code.or(Some(255));
            s.finished_unix = Some(now_unix());
            s.error = Some("its supervisor died (agent host crash or kill)".into());
            let _ = write_json_atomic(&dir.state(), &s, true);
            if meta.spec.auto_remove {
                self.purge(&meta.id, Some(&meta));
            } else if !stopped && meta.spec.restart.should_restart(255, s.restarts) {
                let extra = vec!["--restarts".to_string(), (s.restarts + 1).to_string()];
                if let Err(e) = self.spawn_shim_with(&dir, &extra) {
                    tracing::warn!(?e, id = %meta.id, "cannot restart the container");
                }
            }
        }
        let live: HashSet<String> = self.metas().keys().cloned().collect();
        self.inner.pool.release_all_but(&live);
    }

    /// Watches recovered shims (not our children) so `--rm` containers are removed when done.
    fn spawn_watcher(&self) {
        let weak = Arc::downgrade(&self.inner);
        std::thread::spawn(move || {
            while let Some(inner) = weak.upgrade() {
                let rt = Runtime { inner };
                let ids: Vec<String> =
                    rt.metas().values().filter(|m| m.spec.auto_remove).map(|m| m.id.clone()).collect();
                for id in ids {
                    if rt.is_finished(&id) {
                        rt.on_exit(&id);
                    }
                }
                drop(rt);
                std::thread::sleep(Duration::from_millis(500));
            }
        });
    }

    /// Every container's cgroup path, mount point and netns (for leftover checks in tests).
    pub fn root(&self) -> &Path {
        &self.inner.cfg.root
    }
}

/// Held while a client follows a container; see [`Runtime::attach`].
#[derive(Debug)]
pub struct AttachGuard {
    rt: Runtime,
    id: String,
}

impl Drop for AttachGuard {
    fn drop(&mut self) {
        {
            let mut map = self.rt.inner.attached.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(&self.id) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&self.id);
                }
            }
        }
        if self.rt.is_finished(&self.id) {
            self.rt.on_exit(&self.id);
        }
    }
}

fn to_info(meta: &ContainerMeta, state: Option<&ShimState>) -> ContainerInfo {
    let alive = state.is_some_and(ShimState::shim_alive);
    let st = match state.map(|s| s.phase) {
        Some(Phase::Starting) if alive => ContainerState::Created,
        Some(Phase::Running) if alive => ContainerState::Running,
        Some(Phase::Restarting) if alive => ContainerState::Restarting,
        _ => ContainerState::Exited,
    };
    ContainerInfo {
        id: meta.id.clone(),
        name: meta.name.clone(),
        image: meta.image.clone(),
        image_digest: meta.image_digest.clone(),
        command: meta.command.clone(),
        state: st,
        pid: state.and_then(|s| s.pid).filter(|_| st == ContainerState::Running),
        exit_code: state.and_then(|s| s.exit_code).filter(|_| st != ContainerState::Running),
        reason: state.and_then(|s| if s.oom_killed { Some("OOMKilled".to_string()) } else { s.error.clone() }),
        created_unix: meta.created_unix,
        started_unix: state.and_then(|s| s.started_unix),
        finished_unix: state.and_then(|s| s.finished_unix),
        restarts: state.map_or(0, |s| s.restarts),
        ip: meta.net.as_ref().map(|n| n.ip.to_string()),
        spec: meta.spec.clone(),
    }
}

/// Writes /etc/hosts, /etc/hostname and /etc/resolv.conf for the container.
fn write_etc(dir: &ContainerDir, meta: &ContainerMeta) -> Result<(), RuntimeError> {
    let etc = dir.etc();
    let ip = meta.net.as_ref().map(|n| n.ip.to_string());
    let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(ip) = &ip {
        hosts.push_str(&format!("{ip}\t{}\n", meta.name));
    }
    let resolv = std::fs::read_to_string("/etc/resolv.conf")
        .ok()
        .map(|r| {
            // A loopback resolver on the host is unreachable from the container's namespace.
            r.lines().filter(|l| !l.trim_start().starts_with("nameserver 127.")).collect::<Vec<_>>().join("\n") + "\n"
        })
        .unwrap_or_default();
    for (name, body) in [("hosts", hosts), ("hostname", format!("{}\n", meta.name)), ("resolv.conf", resolv)] {
        let p = etc.join(name);
        std::fs::write(&p, body).map_err(io(&p))?;
    }
    Ok(())
}

fn random_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    // Mix in time and pid so an unreadable /dev/urandom still gives distinct ids.
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    for (i, b) in t.to_le_bytes().iter().chain(std::process::id().to_le_bytes().iter()).enumerate() {
        bytes[i % 32] ^= b;
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `web-3fa2c1` from image `app/web:v1`.
fn default_name(image: &str, id: &str) -> String {
    let base = image.rsplit('/').next().unwrap_or(image);
    let base = base.split([':', '@']).next().unwrap_or(base);
    let clean: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .take(40)
        .collect();
    let clean = clean.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    if clean.is_empty() { format!("c-{}", &id[..6]) } else { format!("{clean}-{}", &id[..6]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_valid() {
        for image in ["app/web:v1", "busybox", "sha256:abc", "::", "x@sha256:12"] {
            let n = default_name(image, &random_id());
            assert!(shoal_types::container::check_name(&n).is_ok(), "{image} -> {n}");
        }
        assert_ne!(random_id(), random_id());
    }
}
