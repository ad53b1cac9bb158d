//! `create`: checks a container's request, unpacks missing layers, writes its directory and
//! starts its shim, then waits for the shim's verdict (removing everything again on failure).

use super::{AttachGuard, ResolvedImage, Runtime, RuntimeError, io};
use crate::state::{ContainerDir, ContainerMeta, NetMeta, Phase, now_unix, write_json_atomic};
use shoal_types::{ContainerInfo, ContainerSpec};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a shim may take to start a container.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Docker's smallest memory limit.
const MIN_MEMORY: u64 = 6 << 20;

impl Runtime {
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
        if spec.network == shoal_types::NetworkMode::None && !spec.ports.is_empty() {
            return Err(RuntimeError::PortsWithoutNetwork);
        }
        for p in &spec.ports {
            let by = live.iter().find(|m| {
                m.spec.ports.iter().any(|q| crate::proxy::clash(p, q))
                    && self.dir(&m.id).read_state().is_ok_and(|s| s.shim_alive())
            });
            if let Some(m) = by {
                return Err(RuntimeError::PortInUse {
                    port: p.host_port,
                    container: p.container_port,
                    by: format!(" by container {}", m.name),
                });
            }
            if crate::proxy::bind(p).is_err() {
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
            let net = match spec.network {
                shoal_types::NetworkMode::None => None,
                shoal_types::NetworkMode::Bridge => {
                    let subnet = self.subnet();
                    let ip = self.inner.pool.allocate(subnet, &id)?;
                    let (netns, veth) = crate::net::names(&id);
                    Some(NetMeta {
                        ip,
                        prefix: subnet.prefix,
                        gateway: subnet.gateway(),
                        bridge: self.inner.cfg.bridge.clone(),
                        netns,
                        veth,
                        mtu: Some(self.inner.cfg.mtu),
                    })
                }
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
                net,
                cgroups_path: self.inner.cgroup_parent.join(&id),
                log_max_bytes: self.inner.cfg.log_max_bytes,
                log_files: self.inner.cfg.log_files,
            };
            write_etc(&dir, &meta, self.inner.cfg.dns)?;
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
                    let message = s.error.unwrap_or_else(|| "the container failed to start".into());
                    let failure = s.failure.unwrap_or(crate::state::StartFailure::Setup);
                    self.purge(&id, Some(&meta));
                    return Err(RuntimeError::Start { message, failure });
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

    pub(super) fn spawn_shim_with(&self, dir: &ContainerDir, extra: &[String]) -> Result<(), RuntimeError> {
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
}

/// Writes /etc/hosts, /etc/hostname and /etc/resolv.conf for the container.
fn write_etc(dir: &ContainerDir, meta: &ContainerMeta, dns: Option<std::net::Ipv4Addr>) -> Result<(), RuntimeError> {
    let etc = dir.etc();
    let ip = meta.net.as_ref().map(|n| n.ip.to_string());
    let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(ip) = &ip {
        hosts.push_str(&format!("{ip}\t{}\n", meta.name));
    }
    let resolv =
        resolv_conf(std::fs::read_to_string("/etc/resolv.conf").ok().as_deref(), dns.filter(|_| meta.net.is_some()));
    for (name, body) in [("hosts", hosts), ("hostname", format!("{}\n", meta.name)), ("resolv.conf", resolv)] {
        let p = etc.join(name);
        std::fs::write(&p, body).map_err(io(&p))?;
    }
    Ok(())
}

/// A container's resolv.conf: the agent's resolver when there is one (it answers the cluster's
/// names and forwards the rest to the host's resolvers), else the host's resolvers minus
/// loopback ones (unreachable from the container's namespace). The host's search domains stay.
fn resolv_conf(host: Option<&str>, agent: Option<std::net::Ipv4Addr>) -> String {
    let host = host.unwrap_or_default();
    let mut out: Vec<String> = host
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            match agent {
                Some(_) => !l.starts_with("nameserver") && !l.starts_with("options"),
                None => !l.starts_with("nameserver 127."),
            }
        })
        .map(str::to_string)
        .collect();
    if let Some(ip) = agent {
        out.push(format!("nameserver {ip}"));
        // Service names are single labels: look them up as they are, before the search list.
        out.push("options ndots:0".into());
    }
    out.join("\n") + "\n"
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

    #[test]
    fn resolv_conf_points_at_the_agent_and_keeps_search_domains() {
        let host = "search lab.example\nnameserver 127.0.0.53\nnameserver 10.0.0.1\noptions edns0\n";
        let agent = resolv_conf(Some(host), Some([198, 19, 3, 1].into()));
        assert_eq!(agent, "search lab.example\nnameserver 198.19.3.1\noptions ndots:0\n");
        let plain = resolv_conf(Some(host), None);
        assert_eq!(plain, "search lab.example\nnameserver 10.0.0.1\noptions edns0\n");
    }
}
