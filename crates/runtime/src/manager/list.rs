//! `ps`, `inspect` and `stats`: what the runtime reports about its containers.

use super::{Runtime, RuntimeError};
use crate::state::{ContainerMeta, Phase, ShimState};
use shoal_types::{ContainerInfo, ContainerState, ContainerStats};
use std::time::Instant;

impl Runtime {
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
}

pub(super) fn to_info(meta: &ContainerMeta, state: Option<&ShimState>) -> ContainerInfo {
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
