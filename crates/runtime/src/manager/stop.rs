//! `stop` and `kill`: control lines to a container's shim, and waiting for the exit.

use super::{Runtime, RuntimeError, io};
use crate::state::Phase;
use shoal_types::ContainerInfo;
use std::time::{Duration, Instant};

impl Runtime {
    /// Stops: SIGTERM, then SIGKILL after `secs`; returns once it has exited.
    /// A grace period is at most [`crate::MAX_STOP_SECS`].
    pub fn stop(&self, key: &str, secs: u64) -> Result<ContainerInfo, RuntimeError> {
        let id = self.resolve(key)?;
        let secs = secs.min(crate::MAX_STOP_SECS);
        self.control(&id, &format!("stop {secs}"))?;
        self.wait_exited(&id, Duration::from_secs(secs + 30));
        self.info(&id)
    }

    /// Sends a signal (default SIGKILL).
    pub fn kill(&self, key: &str, signal: Option<&str>) -> Result<ContainerInfo, RuntimeError> {
        let id = self.resolve(key)?;
        let sig = signal.unwrap_or("KILL");
        if crate::shim::parse_signal(sig).is_none() {
            return Err(RuntimeError::BadSignal(sig.to_string()));
        }
        self.control(&id, &format!("kill {sig}"))?;
        if matches!(crate::shim::parse_signal(sig), Some(nix::sys::signal::Signal::SIGKILL)) {
            self.wait_exited(&id, Duration::from_secs(30));
        }
        self.info(&id)
    }

    pub(super) fn control(&self, id: &str, line: &str) -> Result<(), RuntimeError> {
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
            Some(e) => Err(RuntimeError::Control(e.trim().to_string())),
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
}
