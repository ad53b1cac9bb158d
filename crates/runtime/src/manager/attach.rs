//! Following a container: attach guards (which keep a `--rm` container until its end has been
//! read), exit notifications, exec and the log directory.

use super::{Runtime, RuntimeError};
use crate::state::Phase;
use shoal_types::ContainerState;
use std::path::PathBuf;

impl Runtime {
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
