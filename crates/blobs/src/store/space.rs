//! Space: reserving bytes under the quota, evicting least recently used content, and removal.

use super::{Store, StoreError};
use crate::cid::ContentId;
use crate::store::BlobRecord;
use std::collections::HashSet;
use std::sync::atomic::Ordering;

impl Store {
    /// Makes room for `bytes` more, evicting if needed; the caller then adds them to usage.
    pub(super) fn reserve(&self, bytes: u64) -> Result<(), StoreError> {
        let Some(quota) = self.quota else {
            self.usage.fetch_add(bytes, Ordering::Relaxed);
            return Ok(());
        };
        let _g = self.reserve_lock.lock().unwrap_or_else(|p| p.into_inner());
        let usage = self.usage();
        if usage + bytes > quota {
            self.gc(usage + bytes - quota)?;
        }
        let usage = self.usage();
        if usage + bytes > quota {
            return Err(StoreError::Full { needed: bytes, usage, quota });
        }
        self.usage.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn release(&self, bytes: u64) {
        let _ = self.usage.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u.saturating_sub(bytes)));
    }

    /// Content ids used by images.
    pub(super) fn referenced(&self) -> Result<HashSet<ContentId>, StoreError> {
        Ok(self.images()?.iter().flat_map(|i| i.blobs().map(|b| b.cid)).collect())
    }

    /// Evicts unpinned, unreferenced complete blobs, least recently used first, until `need`
    /// bytes are free or nothing is left to evict. Returns the bytes freed.
    pub fn gc(&self, need: u64) -> Result<u64, StoreError> {
        let referenced = self.referenced()?;
        let mut candidates: Vec<(ContentId, BlobRecord)> =
            self.list()?.into_iter().filter(|(c, r)| r.complete && !r.pinned && !referenced.contains(c)).collect();
        candidates.sort_by_key(|(_, r)| r.last_access_ms);
        let mut freed = 0;
        for (cid, r) in candidates {
            if freed >= need {
                break;
            }
            tracing::info!(%cid, size = r.size, "evicting least recently used content to stay under the quota");
            self.remove_unchecked(&cid)?;
            freed += r.size;
        }
        Ok(freed)
    }

    /// Removes `cid` (complete or partial) unless an image uses it.
    pub fn remove(&self, cid: &ContentId) -> Result<(), StoreError> {
        let images: Vec<String> =
            self.images()?.into_iter().filter(|i| i.blobs().any(|b| &b.cid == cid)).map(|i| i.reference).collect();
        if !images.is_empty() {
            return Err(StoreError::InUse { cid: *cid, images: images.join(", ") });
        }
        if self.get(cid)?.is_none() {
            return Err(StoreError::NotFound { cid: *cid });
        }
        self.remove_unchecked(cid)
    }

    pub(super) fn remove_unchecked(&self, cid: &ContentId) -> Result<(), StoreError> {
        if let Some(r) = self.delete_record(cid)? {
            self.release(r.size);
        }
        for p in [self.blob_path(cid), self.partial_path(cid)] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::Io { path: p, source }),
            }
        }
        Ok(())
    }
}
