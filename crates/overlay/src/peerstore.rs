//! What the overlay keeps on disk (`<data-dir>/overlay.redb`).
//!
//! - `meta/generation`: the last generation this peer used. Each start takes
//!   `max(last + 1, unix-ms now)`, so generations grow even if the clock steps back.
//! - `peers/<peer id>`: addresses and name of every peer seen, so a restarted agent finds its
//!   cluster again without `--join`.
//!
//! redb gives ACID commits: a crash mid-write leaves the previous state.

use libp2p::{Multiaddr, PeerId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const PEERS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("peers");

/// Errors of the on-disk peer store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened
    #[error("cannot open {path}: {source}; if another agent uses this data dir, stop it or pick another --data-dir")]
    Open { path: PathBuf, source: redb::DatabaseError },
    /// A read or write failed
    #[error("peer store: {0}")]
    Db(#[from] redb::Error),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(impl From<$t> for StoreError { fn from(e: $t) -> Self { StoreError::Db(e.into()) } })*};
}
from_redb!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// A peer remembered across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnownPeer {
    pub peer: PeerId,
    pub name: String,
    pub addrs: Vec<Multiaddr>,
    pub last_seen_ms: u64,
}

/// Handle to the store; cheap to clone, usable from blocking threads.
#[derive(Clone)]
pub struct PeerStore {
    db: Arc<Database>,
}

impl PeerStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
        Ok(PeerStore { db: Arc::new(db) })
    }

    /// Takes the next generation number and records it.
    pub fn next_generation(&self, now_ms: u64) -> Result<u64, StoreError> {
        let tx = self.db.begin_write()?;
        let g = {
            let mut t = tx.open_table(META)?;
            let last = t.get("generation")?.map(|v| v.value()).unwrap_or(0);
            let g = (last + 1).max(now_ms);
            t.insert("generation", g)?;
            g
        };
        tx.commit()?;
        Ok(g)
    }

    /// Records a generation taken while running (a rejoin after being declared dead).
    pub fn set_generation(&self, g: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(META)?;
            let last = t.get("generation")?.map(|v| v.value()).unwrap_or(0);
            t.insert("generation", last.max(g))?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every remembered peer. Entries that no longer decode are skipped.
    pub fn known_peers(&self) -> Result<Vec<KnownPeer>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = match tx.open_table(PEERS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for item in t.iter()? {
            let (_, v) = item?;
            if let Ok(p) = serde_json::from_slice::<KnownPeer>(v.value()) {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Inserts or replaces peers, and removes `forget`, in one transaction.
    pub fn update(&self, peers: &[KnownPeer], forget: &[PeerId]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(PEERS)?;
            for p in peers {
                let v = serde_json::to_vec(p).expect("KnownPeer always serializes");
                t.insert(p.peer.to_bytes().as_slice(), v.as_slice())?;
            }
            for p in forget {
                t.remove(p.to_bytes().as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_grow_and_peers_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("overlay.redb");
        let s = PeerStore::open(&path).unwrap();
        let g1 = s.next_generation(1000).unwrap();
        let g2 = s.next_generation(5).unwrap(); // clock went back
        assert_eq!(g1, 1000);
        assert_eq!(g2, 1001);
        let p = KnownPeer {
            peer: PeerId::random(),
            name: "a".into(),
            addrs: vec!["/ip4/10.0.0.1/tcp/1".parse().unwrap()],
            last_seen_ms: 7,
        };
        s.update(std::slice::from_ref(&p), &[]).unwrap();
        drop(s);
        let s = PeerStore::open(&path).unwrap();
        assert_eq!(s.known_peers().unwrap(), vec![p.clone()]);
        s.update(&[], &[p.peer]).unwrap();
        assert!(s.known_peers().unwrap().is_empty());
        assert_eq!(s.next_generation(0).unwrap(), 1002);
    }
}
