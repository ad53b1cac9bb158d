//! Blob records in the database: reading, writing and deleting them, piece manifests, the
//! sha256 index, last access and pinning.

use super::{BLOBS, MANIFESTS, SHA, Store, StoreError, now_ms};
use crate::bitfield::Bitfield;
use crate::cid::ContentId;
use crate::manifest::PieceManifest;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use shoal_image::Digest;

/// What the store knows about one blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlobRecord {
    pub size: u64,
    pub complete: bool,
    /// Pieces present, while partial.
    #[serde(default)]
    pub have: Option<Bitfield>,
    #[serde(default)]
    pub pinned: bool,
    /// The blob's sha256 (OCI blobs, and every blob imported here).
    #[serde(default)]
    pub sha256: Option<Digest>,
    /// The file name it was shared under, if any.
    #[serde(default)]
    pub name: Option<String>,
    pub created_ms: u64,
    pub last_access_ms: u64,
    /// A download was asked for and should resume after a restart.
    #[serde(default)]
    pub wanted: bool,
    /// The sha256 a partial download must have when complete.
    #[serde(default)]
    pub expect_sha256: Option<Digest>,
}

impl Store {
    pub fn get(&self, cid: &ContentId) -> Result<Option<BlobRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(BLOBS)?;
        let Some(v) = t.get(cid.0.as_slice())? else { return Ok(None) };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| StoreError::BadRecord { what: cid.to_string(), reason: e.to_string() })
    }

    pub(super) fn put_record(&self, cid: &ContentId, r: &BlobRecord) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(BLOBS)?;
            let v = serde_json::to_vec(r).expect("records always serialize");
            t.insert(cid.0.as_slice(), v.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    pub(super) fn delete_record(&self, cid: &ContentId) -> Result<Option<BlobRecord>, StoreError> {
        let old = self.get(cid)?;
        let tx = self.db.begin_write()?;
        {
            tx.open_table(BLOBS)?.remove(cid.0.as_slice())?;
            tx.open_table(MANIFESTS)?.remove(cid.0.as_slice())?;
            if let Some(sha) = old.as_ref().and_then(|r| r.sha256.as_ref()) {
                let mut t = tx.open_table(SHA)?;
                let points_here = t.get(sha.to_string().as_str())?.is_some_and(|v| v.value() == cid.0.as_slice());
                if points_here {
                    t.remove(sha.to_string().as_str())?;
                }
            }
        }
        tx.commit()?;
        Ok(old)
    }

    /// Every record, complete and partial.
    pub fn list(&self) -> Result<Vec<(ContentId, BlobRecord)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(BLOBS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let Ok(arr) = <[u8; 32]>::try_from(k.value()) else { continue };
            match serde_json::from_slice(v.value()) {
                Ok(r) => out.push((ContentId(arr), r)),
                Err(e) => tracing::warn!(cid = %ContentId(arr), err = %e, "skipping a damaged content record"),
            }
        }
        Ok(out)
    }

    /// The encoded piece manifest of `cid`.
    pub fn manifest_bytes(&self, cid: &ContentId) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(MANIFESTS)?;
        Ok(t.get(cid.0.as_slice())?.map(|v| v.value().to_vec()))
    }

    pub fn manifest(&self, cid: &ContentId) -> Result<Option<PieceManifest>, StoreError> {
        match self.manifest_bytes(cid)? {
            Some(b) => PieceManifest::decode(&b)
                .map(Some)
                .map_err(|e| StoreError::BadRecord { what: cid.to_string(), reason: e.to_string() }),
            None => Ok(None),
        }
    }

    /// The content id of the blob with this sha256, if complete here.
    pub fn by_sha256(&self, digest: &Digest) -> Result<Option<ContentId>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SHA)?;
        Ok(t.get(digest.to_string().as_str())?.and_then(|v| <[u8; 32]>::try_from(v.value()).ok()).map(ContentId))
    }

    /// Records that `cid` was used now (for least-recently-used eviction).
    pub fn touch(&self, cid: &ContentId) -> Result<(), StoreError> {
        if let Some(mut r) = self.get(cid)? {
            r.last_access_ms = now_ms();
            self.put_record(cid, &r)?;
        }
        Ok(())
    }

    pub fn set_pinned(&self, cid: &ContentId, pinned: bool) -> Result<(), StoreError> {
        let mut r = self.get(cid)?.ok_or(StoreError::NotFound { cid: *cid })?;
        r.pinned = pinned;
        self.put_record(cid, &r)
    }
}
