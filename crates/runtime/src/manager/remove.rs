//! `rm`: removing a container, killing whatever is left of it, and the auto-removal of
//! `--rm` containers when their shim exits.

use super::{Runtime, RuntimeError};
use crate::state::ContainerMeta;
use shoal_types::ContainerState;
use std::path::Path;
use std::time::{Duration, Instant};

impl Runtime {
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
    pub(super) fn kill_everything(&self, meta: &ContainerMeta) {
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
    pub(super) fn purge(&self, id: &str, meta: Option<&ContainerMeta>) {
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
    pub(super) fn on_exit(&self, id: &str) {
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
}
