//! The desired state on disk: `services.bin` in the data dir, the encoded [`ServiceMap`].
//!
//! Written whole after every change: to a temporary file, `fsync`ed, renamed over the old one,
//! and the directory `fsync`ed, so a crash leaves the old map or the new one, never a torn one,
//! and a change acknowledged to a user survives a power loss. A file that does not decode
//! (another format, damage) is set aside as `services.bin.bad` and the cluster's copy comes back
//! through anti-entropy.

use crate::error::ServiceError;
use shoal_scheduler::ServiceMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tracing::warn;

/// Largest encoded service map accepted from disk or from a peer.
pub const MAX_MAP: usize = 4 << 20;

/// Where the map lives.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    path: PathBuf,
}

impl Store {
    pub(crate) fn new(dir: &Path) -> Store {
        Store { path: dir.join("services.bin") }
    }

    /// The saved map (or an empty one), and whether it was saved before entries were sealed.
    pub(crate) fn load(&self) -> (ServiceMap, bool) {
        let Ok(bytes) = std::fs::read(&self.path) else { return (ServiceMap::new(), false) };
        match ServiceMap::decode(&bytes, MAX_MAP) {
            Ok(m) => (m, bytes.first() == Some(&shoal_scheduler::WIRE_FORMAT_UNSEALED)),
            Err(e) => {
                let bad = self.path.with_extension("bin.bad");
                warn!(err = %e, path = %self.path.display(), kept = %bad.display(),
                    "cannot read the saved services; starting from the cluster's copy");
                let _ = std::fs::rename(&self.path, bad);
                (ServiceMap::new(), false)
            }
        }
    }

    /// Writes `bytes` durably (see the module docs).
    pub(crate) async fn save(&self, bytes: Vec<u8>) -> Result<(), ServiceError> {
        let path = self.path.clone();
        let result = tokio::task::spawn_blocking(move || write_atomic(&path, &bytes)).await;
        let source = match result {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(join) => std::io::Error::other(join.to_string()),
        };
        Err(ServiceError::Save { path: self.path.clone(), source })
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_scheduler::Hlc;
    use shoal_types::ServiceSpec;

    #[tokio::test]
    async fn saves_and_loads_and_sets_damage_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        assert!(store.load().0.is_empty());
        let mut m = ServiceMap::new();
        m.put(ServiceSpec { name: "web".into(), image: "app".into(), ..Default::default() }, Hlc::new(1, 0, "a"));
        store.save(m.encode()).await.unwrap();
        assert_eq!(store.load(), (m.clone(), false));
        // Only a format-3 file is from before seals (its entries are adopted under this peer's
        // seal); format 4 and 5 files are sealed already.
        // (An empty format-3 map: the format byte and a zero entry count.)
        let v3 = [shoal_scheduler::WIRE_FORMAT_UNSEALED, 0];
        std::fs::write(dir.path().join("services.bin"), v3).unwrap();
        assert!(store.load().1, "format 3 is unsealed");
        let mut sealed = ServiceMap::new();
        let mut s = ServiceSpec { name: "web".into(), image: "app:2".into(), ..Default::default() };
        s.rollback_image = Some("app:1".into());
        sealed.put(s, Hlc::new(2, 0, "a"));
        for map in [&m, &sealed] {
            let bytes = map.encode();
            assert!(bytes[0] >= 4);
            store.save(bytes).await.unwrap();
            assert_eq!(store.load(), (map.clone(), false), "format {} is sealed", map.encode()[0]);
        }
        std::fs::write(dir.path().join("services.bin"), b"\x09junk").unwrap();
        assert!(store.load().0.is_empty());
        assert!(dir.path().join("services.bin.bad").exists());
    }
}
