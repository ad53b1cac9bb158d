//! The store as the image crate's blob sink (imports) and blob source (exports).

use super::{Store, StoreError};
use crate::cid::ContentId;
use shoal_image::Digest;
use std::io::Read;

/// A [`shoal_image::BlobSink`] over the store: every blob an image import finds is verified
/// against its sha256 and stored.
pub struct StoreSink<'a> {
    pub store: &'a Store,
    /// sha256 → (cid, size) of every blob put or found.
    pub stored: std::collections::HashMap<Digest, (ContentId, u64)>,
}

impl<'a> StoreSink<'a> {
    pub fn new(store: &'a Store) -> Self {
        StoreSink { store, stored: Default::default() }
    }
}

impl shoal_image::BlobSink for StoreSink<'_> {
    fn contains(&self, digest: &Digest) -> bool {
        self.stored.contains_key(digest) || self.store.by_sha256(digest).ok().flatten().is_some()
    }

    fn put(&mut self, digest: &Digest, size: Option<u64>, r: &mut dyn Read) -> Result<(), shoal_image::SinkError> {
        use shoal_image::SinkError;
        match self.store.put(r, size, Some(digest), None) {
            Ok(s) => {
                self.stored.insert(digest.clone(), (s.cid, s.size));
                Ok(())
            }
            Err(StoreError::DigestMismatch { actual, .. }) => Err(SinkError::DigestMismatch {
                expected: digest.clone(),
                actual: actual.parse().unwrap_or_else(|_| digest.clone()),
            }),
            Err(StoreError::SizeMismatch { expected, actual }) => Err(SinkError::SizeMismatch { expected, actual }),
            Err(e @ (StoreError::Full { .. } | StoreError::DiskFull { .. })) => {
                Err(SinkError::Full { message: e.to_string() })
            }
            Err(StoreError::Io { source, .. }) => Err(SinkError::Io(source)),
            Err(e) => Err(SinkError::Io(std::io::Error::other(e.to_string()))),
        }
    }
}

/// A [`shoal_image::BlobSource`] over the store.
pub struct StoreSource<'a>(pub &'a Store);

impl shoal_image::BlobSource for StoreSource<'_> {
    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + '_>, shoal_image::SourceError> {
        let cid = self
            .0
            .by_sha256(digest)
            .ok()
            .flatten()
            .ok_or_else(|| shoal_image::SourceError::NotFound { digest: digest.clone() })?;
        let f = self.0.open_blob(&cid).map_err(|_| shoal_image::SourceError::NotFound { digest: digest.clone() })?;
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, f)))
    }
}
