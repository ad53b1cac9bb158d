//! The reference for membership: HashiCorp Serf (memberlist's SWIM + Lifeguard), Debian's
//! `serf` package, run with its default LAN settings on loopback.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `serf agent` process.
pub(crate) struct SerfAgent {
    pub(crate) name: String,
    pub(crate) bind: u16,
    pub(crate) rpc: u16,
    child: Option<Child>,
    log: PathBuf,
}

/// The installed Serf's version line, if Serf is installed.
pub(crate) fn version() -> Option<String> {
    let out = Command::new("serf").arg("version").output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").to_string())
}

impl SerfAgent {
    pub(crate) fn start(dir: &Path, name: &str, bind: u16, rpc: u16) -> anyhow::Result<Self> {
        let mut a = SerfAgent { name: name.into(), bind, rpc, child: None, log: dir.join(format!("{name}.log")) };
        a.spawn()?;
        Ok(a)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(&self.log)?;
        let child = Command::new("serf")
            .args(["agent", "-node", &self.name, "-bind", &format!("127.0.0.1:{}", self.bind)])
            .args(["-rpc-addr", &format!("127.0.0.1:{}", self.rpc), "-log-level", "warn"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting serf")?;
        self.child = Some(child);
        Ok(())
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// `serf members`: name -> status.
    pub(crate) fn members(&self) -> Option<Vec<(String, String)>> {
        let out = Command::new("serf")
            .args(["members", "-format", "json", "-rpc-addr", &format!("127.0.0.1:{}", self.rpc)])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(
            v["members"]
                .as_array()?
                .iter()
                .map(|m| (m["name"].as_str().unwrap_or("").to_string(), m["status"].as_str().unwrap_or("").to_string()))
                .collect(),
        )
    }

    pub(crate) fn join(&self, bind: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = Command::new("serf")
                .args(["join", "-rpc-addr", &format!("127.0.0.1:{}", self.rpc), &format!("127.0.0.1:{bind}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("serf {} could not join 127.0.0.1:{bind}", self.name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SerfAgent {
    fn drop(&mut self) {
        self.kill();
    }
}
