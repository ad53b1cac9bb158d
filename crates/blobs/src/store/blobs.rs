//! Whole blobs: storing one read from a stream (checked, then made visible atomically),
//! opening it and reading its pieces.

use super::{BLOBS, MANIFESTS, SHA, Store, StoreError, io_err, now_ms, read_range, sync_dir};
use crate::cid::ContentId;
use crate::manifest::{ManifestBuilder, PieceManifest};
use crate::store::BlobRecord;
use sha2::{Digest as _, Sha256};
use shoal_image::Digest;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// What [`Store::put`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub cid: ContentId,
    pub size: u64,
    pub sha256: Digest,
    /// The blob was already in the store.
    pub existed: bool,
}

impl Store {
    /// Stores a blob read from `r`. `size`, if known, is checked (and reserved up front);
    /// `expect` (sha256) is checked at the end. On any failure nothing is kept.
    pub fn put(
        &self,
        r: &mut dyn Read,
        size: Option<u64>,
        expect: Option<&Digest>,
        name: Option<&str>,
    ) -> Result<Stored, StoreError> {
        let tmp_path = self.dir.join("tmp").join(format!("{:016x}", rand::random::<u64>()));
        let result = self.put_inner(r, size, expect, name, &tmp_path);
        let _ = std::fs::remove_file(&tmp_path);
        result
    }

    fn put_inner(
        &self,
        r: &mut dyn Read,
        size: Option<u64>,
        expect: Option<&Digest>,
        name: Option<&str>,
        tmp_path: &Path,
    ) -> Result<Stored, StoreError> {
        let mut file = File::create(tmp_path).map_err(io_err(tmp_path))?;
        let mut sha = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        // Known size: one pass (write + piece hashes + sha256). Unknown: write and sha256,
        // then hash pieces in a second pass over the file.
        let mut builder = size.map(ManifestBuilder::new);
        if let Some(s) = size {
            self.reserve(s)?;
        }
        let reserved = size.unwrap_or(0);
        let written = (|| {
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(source) => return Err(StoreError::Io { path: PathBuf::from("<input>"), source }),
                };
                total += n as u64;
                if size.is_some_and(|s| total > s) {
                    return Err(StoreError::SizeMismatch { expected: size.unwrap_or(0), actual: total });
                }
                sha.update(&buf[..n]);
                if let Some(b) = builder.as_mut() {
                    b.update(&buf[..n]);
                }
                file.write_all(&buf[..n]).map_err(io_err(tmp_path))?;
            }
            Ok(())
        })();
        if let Err(e) = written {
            self.release(reserved);
            return Err(e);
        }
        let checked = self.check_written(size, expect, total, sha.finalize().into());
        let actual = match checked {
            Ok(d) => d,
            Err(e) => {
                self.release(reserved);
                return Err(e);
            }
        };
        if size.is_none() {
            self.reserve(total)?;
        }
        let manifest = match builder {
            Some(b) => b.finish(),
            None => {
                let mut b = ManifestBuilder::new(total);
                let mut f = File::open(tmp_path).map_err(io_err(tmp_path))?;
                loop {
                    let n = f.read(&mut buf).map_err(io_err(tmp_path))?;
                    if n == 0 {
                        break;
                    }
                    b.update(&buf[..n]);
                }
                b.finish()
            }
        };
        let cid = manifest.id();
        if self.get(&cid)?.is_some_and(|r| r.complete) {
            self.release(total);
            self.touch(&cid)?;
            return Ok(Stored { cid, size: total, sha256: actual, existed: true });
        }
        file.sync_all().map_err(io_err(tmp_path))?;
        drop(file);
        let dest = self.blob_path(&cid);
        std::fs::rename(tmp_path, &dest).map_err(io_err(&dest))?;
        sync_dir(&self.dir.join("blobs"));
        let now = now_ms();
        let rec = BlobRecord {
            size: total,
            complete: true,
            have: None,
            pinned: false,
            sha256: Some(actual.clone()),
            name: name.map(str::to_string),
            created_ms: now,
            last_access_ms: now,
            wanted: false,
            expect_sha256: None,
        };
        self.commit_complete(&cid, &rec, Some(&manifest.encode()))?;
        Ok(Stored { cid, size: total, sha256: actual, existed: false })
    }

    fn check_written(
        &self,
        size: Option<u64>,
        expect: Option<&Digest>,
        total: u64,
        sha: [u8; 32],
    ) -> Result<Digest, StoreError> {
        if let Some(s) = size
            && s != total
        {
            return Err(StoreError::SizeMismatch { expected: s, actual: total });
        }
        let actual = Digest::from_sha256(sha);
        if let Some(e) = expect
            && e != &actual
        {
            return Err(StoreError::DigestMismatch { expected: e.to_string(), actual: actual.to_string() });
        }
        Ok(actual)
    }

    pub(super) fn commit_complete(
        &self,
        cid: &ContentId,
        rec: &BlobRecord,
        manifest: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let v = serde_json::to_vec(rec).expect("records always serialize");
            tx.open_table(BLOBS)?.insert(cid.0.as_slice(), v.as_slice())?;
            if let Some(m) = manifest {
                tx.open_table(MANIFESTS)?.insert(cid.0.as_slice(), m)?;
            }
            if let Some(sha) = &rec.sha256 {
                tx.open_table(SHA)?.insert(sha.to_string().as_str(), cid.0.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Opens a complete blob for reading.
    pub fn open_blob(&self, cid: &ContentId) -> Result<File, StoreError> {
        match self.get(cid)? {
            Some(r) if r.complete => {
                let p = self.blob_path(cid);
                File::open(&p).map_err(io_err(&p))
            }
            _ => Err(StoreError::NotFound { cid: *cid }),
        }
    }

    /// Reads piece `index` of a complete blob (for serving).
    pub fn read_piece(&self, cid: &ContentId, manifest: &PieceManifest, index: u32) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(cid);
        let f = File::open(&p).map_err(|_| StoreError::NoPiece { cid: *cid, index })?;
        read_range(&f, &p, manifest, index)
    }
}
