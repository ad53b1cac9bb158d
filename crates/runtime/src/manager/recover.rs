//! Finding containers again when the agent starts, and watching shims that are not our
//! children.

use super::Runtime;
use crate::state::{ContainerDir, Phase, ShimState, now_unix, write_json_atomic};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

impl Runtime {
    /// Finds the containers on disk again (agent start): live shims are left alone; a container
    /// whose shim died is cleaned up, then restarted if its policy says so or removed if `--rm`
    /// (a managed one, see [`crate::RuntimeConfig::managed_label`], is left exited).
    pub(super) fn recover(&self) {
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
            } else if !stopped && !self.is_managed(&meta.spec) && meta.spec.restart.should_restart(255, s.restarts) {
                let extra = vec!["--restarts".to_string(), (s.restarts + 1).to_string()];
                if let Err(e) = self.spawn_shim_with(&dir, &extra) {
                    tracing::warn!(?e, id = %meta.id, "cannot restart the container");
                }
            }
        }
        let live: HashSet<String> = self.metas().keys().cloned().collect();
        self.inner.pool.release_all_but(&live);
    }

    fn is_managed(&self, spec: &shoal_types::ContainerSpec) -> bool {
        self.inner.cfg.managed_label.as_ref().is_some_and(|l| spec.labels.contains_key(l))
    }

    /// Watches recovered shims (not our children) so `--rm` containers are removed when done.
    pub(super) fn spawn_watcher(&self) {
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
}
