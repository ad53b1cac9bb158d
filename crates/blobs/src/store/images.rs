//! Image records: an image's manifest, config and layers as blobs of the store.

use super::{IMAGES, Store, StoreError};
use crate::cid::ContentId;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use shoal_image::Digest;
use std::collections::BTreeSet;

/// A blob as part of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub cid: ContentId,
}

/// An image: its OCI manifest, config and layers, each a blob in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub reference: String,
    pub manifest: BlobRef,
    pub config: BlobRef,
    pub layers: Vec<BlobRef>,
    /// The index the manifest was chosen from, when the image came from a registry by a
    /// multi-platform tag (kept so the mirror can serve the tag as the registry did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<BlobRef>,
    pub created_ms: u64,
    /// An operator's seal on "this reference names this manifest" (hex; see
    /// [`crate::TagSeals`]); `None` in an open cluster or for a worker's own import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

impl ImageRecord {
    pub fn blobs(&self) -> impl Iterator<Item = &BlobRef> {
        std::iter::once(&self.manifest).chain(std::iter::once(&self.config)).chain(&self.layers).chain(&self.index)
    }

    pub fn size(&self) -> u64 {
        self.blobs().map(|b| b.size).sum()
    }
}

impl Store {
    pub fn put_image(&self, img: &ImageRecord) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let v = serde_json::to_vec(img).expect("images always serialize");
            tx.open_table(IMAGES)?.insert(img.reference.as_str(), v.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn image(&self, reference: &str) -> Result<Option<ImageRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(IMAGES)?;
        let Some(v) = t.get(reference)? else { return Ok(None) };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| StoreError::BadRecord { what: reference.to_string(), reason: e.to_string() })
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(IMAGES)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (_, v) = item?;
            if let Ok(i) = serde_json::from_slice(v.value()) {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Removes the image record; its blobs become ordinary content (evictable, or removed
    /// at once when no other image uses them and `prune` is set). Returns blobs removed.
    pub fn remove_image(&self, reference: &str, prune: bool) -> Result<Vec<ContentId>, StoreError> {
        let img = self.image(reference)?.ok_or(StoreError::NoImage { reference: reference.to_string() })?;
        let tx = self.db.begin_write()?;
        tx.open_table(IMAGES)?.remove(reference)?;
        tx.commit()?;
        let mut removed = Vec::new();
        if prune {
            let still: BTreeSet<ContentId> = self.referenced()?.into_iter().collect();
            for b in img.blobs() {
                if !still.contains(&b.cid) && self.get(&b.cid)?.is_some_and(|r| !r.pinned) {
                    self.remove_unchecked(&b.cid)?;
                    removed.push(b.cid);
                }
            }
        }
        Ok(removed)
    }
}
