//! Partial downloads: sparse files that verified pieces are written into, checkpoints that
//! make them durable, and completion.

use super::{BLOBS, MANIFESTS, Store, StoreError, io_err, now_ms, read_range, sync_dir};
use crate::bitfield::Bitfield;
use crate::cid::ContentId;
use crate::manifest::PieceManifest;
use crate::store::BlobRecord;
use sha2::{Digest as _, Sha256};
use shoal_image::Digest;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// A download in progress: its sparse file and the pieces it holds.
pub struct Partial {
    pub cid: ContentId,
    pub manifest: std::sync::Arc<PieceManifest>,
    pub have: Bitfield,
    file: std::sync::Arc<File>,
    path: PathBuf,
}

/// What a checkpoint needs, detached from the download (it runs on a blocking thread).
pub struct CheckpointJob {
    cid: ContentId,
    file: std::sync::Arc<File>,
    path: PathBuf,
    have: Bitfield,
}

impl Partial {
    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    /// The sparse file (to write verified pieces into from any thread).
    pub fn file(&self) -> std::sync::Arc<File> {
        self.file.clone()
    }

    /// A snapshot for [`Store::checkpoint`]: the pieces written so far.
    pub fn checkpoint_job(&self) -> CheckpointJob {
        CheckpointJob { cid: self.cid, file: self.file.clone(), path: self.path.clone(), have: self.have.clone() }
    }
}

impl Store {
    /// Starts (or resumes) a download of `cid` whose manifest is `manifest_bytes` (already
    /// checked against `cid`).
    pub fn begin_partial(
        &self,
        cid: &ContentId,
        manifest: std::sync::Arc<PieceManifest>,
        manifest_bytes: &[u8],
        expect_sha256: Option<Digest>,
        name: Option<&str>,
    ) -> Result<Partial, StoreError> {
        let path = self.partial_path(cid);
        let existing = self.get(cid)?;
        let have = match existing {
            Some(r) if r.complete => {
                return Err(StoreError::BadRecord { what: cid.to_string(), reason: "already complete".into() });
            }
            Some(r) => {
                let mut r2 = r.clone();
                r2.wanted = true;
                self.put_record(cid, &r2)?;
                r.have.filter(|h| h.len() == manifest.pieces()).unwrap_or_else(|| Bitfield::new(manifest.pieces()))
            }
            None => {
                self.reserve(manifest.size)?;
                let now = now_ms();
                let rec = BlobRecord {
                    size: manifest.size,
                    complete: false,
                    have: Some(Bitfield::new(manifest.pieces())),
                    pinned: false,
                    sha256: None,
                    name: name.map(str::to_string),
                    created_ms: now,
                    last_access_ms: now,
                    wanted: true,
                    expect_sha256,
                };
                let tx = self.db.begin_write()?;
                {
                    let v = serde_json::to_vec(&rec).expect("records always serialize");
                    tx.open_table(BLOBS)?.insert(cid.0.as_slice(), v.as_slice())?;
                    tx.open_table(MANIFESTS)?.insert(cid.0.as_slice(), manifest_bytes)?;
                }
                tx.commit()?;
                Bitfield::new(manifest.pieces())
            }
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        file.set_len(manifest.size).map_err(io_err(&path))?;
        Ok(Partial { cid: *cid, manifest, have, file: std::sync::Arc::new(file), path })
    }

    /// Writes a verified piece into a partial download (not yet durable: see `checkpoint`).
    pub fn write_piece(&self, p: &Partial, index: u32, data: &[u8]) -> Result<(), StoreError> {
        let (off, _) = p.manifest.range(index);
        p.file.write_all_at(data, off).map_err(io_err(&p.path))
    }

    /// Reads a piece a partial download already holds (to serve it onward).
    pub fn read_partial_piece(&self, p: &Partial, index: u32) -> Result<Vec<u8>, StoreError> {
        if !p.have.get(index) {
            return Err(StoreError::NoPiece { cid: p.cid, index });
        }
        read_range(&p.file, &p.path, &p.manifest, index)
    }

    /// Makes the pieces of a snapshot durable, then records them as present.
    pub fn checkpoint(&self, job: &CheckpointJob) -> Result<(), StoreError> {
        job.file.sync_data().map_err(io_err(&job.path))?;
        if let Some(mut r) = self.get(&job.cid)?
            && !r.complete
        {
            r.have = Some(job.have.clone());
            self.put_record(&job.cid, &r)?;
        }
        Ok(())
    }

    /// Completes a download: syncs, checks the expected sha256 (if any), and makes the blob
    /// visible. On a digest mismatch the partial is removed.
    pub fn finish_partial(&self, p: Partial) -> Result<Digest, StoreError> {
        p.file.sync_all().map_err(io_err(&p.path))?;
        let mut rec = self.get(&p.cid)?.ok_or(StoreError::NotFound { cid: p.cid })?;
        let mut sha = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0u64;
        while off < p.manifest.size {
            let n = (p.manifest.size - off).min(buf.len() as u64) as usize;
            p.file.read_exact_at(&mut buf[..n], off).map_err(io_err(&p.path))?;
            sha.update(&buf[..n]);
            off += n as u64;
        }
        let actual = Digest::from_sha256(sha.finalize().into());
        if let Some(e) = &rec.expect_sha256
            && e != &actual
        {
            let cid = p.cid;
            drop(p);
            self.remove_unchecked(&cid)?;
            return Err(StoreError::DigestMismatch { expected: e.to_string(), actual: actual.to_string() });
        }
        // Commit first, then rename: a crash between the two leaves a complete record and the
        // verified file under partial/, which `reconcile` moves into place at the next open.
        // (Renaming first lost the download: an incomplete record whose partial was gone.)
        rec.complete = true;
        rec.have = None;
        rec.wanted = false;
        rec.sha256 = Some(actual.clone());
        rec.last_access_ms = now_ms();
        self.commit_complete(&p.cid, &rec, None)?;
        let dest = self.blob_path(&p.cid);
        std::fs::rename(&p.path, &dest).map_err(io_err(&dest))?;
        sync_dir(&self.dir.join("blobs"));
        sync_dir(&self.dir.join("partial"));
        Ok(actual)
    }

    /// Downloads that were wanted and are not complete (to resume after a restart).
    pub fn wanted(&self) -> Result<Vec<ContentId>, StoreError> {
        Ok(self.list()?.into_iter().filter(|(_, r)| !r.complete && r.wanted).map(|(c, _)| c).collect())
    }
}
