//! The lab's state file (`<lab dir>/lab.json`), rewritten atomically after every change, so
//! every `shoal lab` command (and `lab down` after a crash) knows what exists.

use crate::LabError;
use crate::link::LinkSpec;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// One peer of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerState {
    pub index: usize,
    pub ip: Ipv4Addr,
    /// The agent's pid while it runs.
    pub pid: Option<i32>,
    /// The peer id, once the agent has reported it.
    pub id: Option<String>,
    pub link: LinkSpec,
}

/// The whole lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub dir: PathBuf,
    pub subnet_prefix: u8,
    pub shoal: PathBuf,
    pub port: u16,
    pub peer_cpus: String,
    pub peer_memory: String,
    pub mdns: bool,
    pub agent_args: Vec<String>,
    /// The last `workers` peers hold a worker key.
    #[serde(default)]
    pub workers: usize,
    pub peers: Vec<PeerState>,
    /// The current partition, if any.
    pub groups: Option<Vec<Vec<usize>>>,
}

impl LabState {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("lab.json")
    }

    pub fn load(dir: &Path) -> Result<Option<Self>, LabError> {
        let p = Self::path(dir);
        match std::fs::read(&p) {
            Ok(b) => {
                serde_json::from_slice(&b).map(Some).map_err(|e| LabError::BadState { path: p, reason: e.to_string() })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(LabError::Io { path: p, source }),
        }
    }

    pub fn save(&self) -> Result<(), LabError> {
        let p = Self::path(&self.dir);
        let tmp = p.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(self).expect("lab state always serializes");
        std::fs::write(&tmp, bytes).map_err(|source| LabError::Io { path: tmp.clone(), source })?;
        std::fs::rename(&tmp, &p).map_err(|source| LabError::Io { path: p, source })
    }
}
