//! The content store (`<data-dir>/content`).
//!
//! Layout:
//! - `blobs/<hex>`: complete blobs, named by content id, written once and never modified;
//! - `partial/<hex>`: downloads in progress (sparse files, verified pieces at their offsets);
//! - `tmp/`: imports being written (emptied at start);
//! - `store.redb`: records (size, pinned, last access, sha256, the bitfield of a partial), piece
//!   manifests, the sha256 → content id index for OCI blobs, and image records.
//!
//! Visibility is atomic: a blob appears under `blobs/` (and as complete in the records) only
//! after every byte was verified and synced; an import that fails keeps nothing. A partial's
//! bitfield is persisted only after its file was synced (`checkpoint`), so after a crash every
//! piece marked present really is on disk.
//!
//! Quota: before space is taken, least recently used blobs that are neither pinned nor part of
//! an image are evicted; if that is not enough the write fails with [`StoreError::Full`].

use crate::bitfield::Bitfield;
use crate::cid::ContentId;
use crate::manifest::{ManifestBuilder, PieceManifest};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use shoal_image::Digest;
use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const BLOBS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("blobs");
const MANIFESTS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("manifests");
const SHA: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sha256");
const IMAGES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("images");

/// Errors of the content store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The metadata database failed
    #[error("content database: {0}")]
    Db(#[from] redb::Error),
    /// Over the quota even after evicting what may be evicted
    #[error(
        "the content store is full: {needed} more bytes needed, {usage} of {quota} in use and nothing left to evict; remove content (`shoal content rm`), unpin some, or raise --store-quota"
    )]
    Full { needed: u64, usage: u64, quota: u64 },
    /// The disk itself is full
    #[error("the disk holding {path} is full; free space or move --data-dir")]
    DiskFull { path: PathBuf },
    /// No such content
    #[error("no content {cid} in this peer's store")]
    NotFound { cid: ContentId },
    /// The bytes are not the content they claim to be
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    /// Fewer or more bytes than announced
    #[error("expected {expected} bytes, got {actual}: the input was truncated or padded")]
    SizeMismatch { expected: u64, actual: u64 },
    /// Still used by an image
    #[error("{cid} is part of image(s) {images}; remove the image first (`shoal image rm`)")]
    InUse { cid: ContentId, images: String },
    /// A stored record no longer decodes
    #[error("damaged store record for {what}: {reason}")]
    BadRecord { what: String, reason: String },
    /// Piece index out of range or not held
    #[error("piece {index} of {cid} is not held here")]
    NoPiece { cid: ContentId, index: u32 },
    /// No image of that name
    #[error("no image {reference} on this peer; `shoal image ls` lists them, `shoal image pull` fetches one")]
    NoImage { reference: String },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(impl From<$t> for StoreError { fn from(e: $t) -> Self { StoreError::Db(e.into()) } })*};
}
from_redb!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError, redb::DatabaseError);

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
    pub created_ms: u64,
}

impl ImageRecord {
    pub fn blobs(&self) -> impl Iterator<Item = &BlobRef> {
        std::iter::once(&self.manifest).chain(std::iter::once(&self.config)).chain(&self.layers)
    }

    pub fn size(&self) -> u64 {
        self.blobs().map(|b| b.size).sum()
    }
}

/// What [`Store::put`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub cid: ContentId,
    pub size: u64,
    pub sha256: Digest,
    /// The blob was already in the store.
    pub existed: bool,
}

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

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| {
        if source.raw_os_error() == Some(libc_enospc()) {
            StoreError::DiskFull { path: path.to_path_buf() }
        } else {
            StoreError::Io { path: path.to_path_buf(), source }
        }
    }
}

const fn libc_enospc() -> i32 {
    28
}

/// The content store. Thread-safe; every method blocks (call from `spawn_blocking`).
pub struct Store {
    dir: PathBuf,
    db: Database,
    quota: Option<u64>,
    usage: AtomicU64,
    /// Serializes space reservation so two writers cannot both take the last bytes.
    reserve_lock: std::sync::Mutex<()>,
}

impl Store {
    /// Opens (or creates) the store in `dir`; cleans up what a crash left behind.
    pub fn open(dir: &Path, quota: Option<u64>) -> Result<Store, StoreError> {
        for sub in ["blobs", "partial", "tmp"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        // Imports that were being written when we stopped are gone for good.
        if let Ok(rd) = std::fs::read_dir(dir.join("tmp")) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let db = Database::create(dir.join("store.redb"))?;
        let tx = db.begin_write()?;
        {
            tx.open_table(BLOBS)?;
            tx.open_table(MANIFESTS)?;
            tx.open_table(SHA)?;
            tx.open_table(IMAGES)?;
        }
        tx.commit()?;
        let store =
            Store { dir: dir.to_path_buf(), db, quota, usage: AtomicU64::new(0), reserve_lock: Default::default() };
        store.reconcile()?;
        Ok(store)
    }

    /// Drops records whose files vanished and files without records (a crash between
    /// writing a file and committing its record).
    fn reconcile(&self) -> Result<(), StoreError> {
        let records = self.list()?;
        let mut known = HashSet::new();
        let mut usage = 0;
        for (cid, r) in &records {
            let path = if r.complete { self.blob_path(cid) } else { self.partial_path(cid) };
            if path.exists() {
                known.insert(cid.hex());
                usage += r.size;
            } else {
                self.delete_record(cid)?;
            }
        }
        for sub in ["blobs", "partial"] {
            if let Ok(rd) = std::fs::read_dir(self.dir.join(sub)) {
                for e in rd.flatten() {
                    if !known.contains(&e.file_name().to_string_lossy().into_owned()) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
        self.usage.store(usage, Ordering::Relaxed);
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn blob_path(&self, cid: &ContentId) -> PathBuf {
        self.dir.join("blobs").join(cid.hex())
    }

    fn partial_path(&self, cid: &ContentId) -> PathBuf {
        self.dir.join("partial").join(cid.hex())
    }

    /// Bytes held (complete blobs and space reserved for partial ones).
    pub fn usage(&self) -> u64 {
        self.usage.load(Ordering::Relaxed)
    }

    pub fn quota(&self) -> Option<u64> {
        self.quota
    }

    // ---- records --------------------------------------------------------------------------

    pub fn get(&self, cid: &ContentId) -> Result<Option<BlobRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(BLOBS)?;
        let Some(v) = t.get(cid.0.as_slice())? else { return Ok(None) };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| StoreError::BadRecord { what: cid.to_string(), reason: e.to_string() })
    }

    fn put_record(&self, cid: &ContentId, r: &BlobRecord) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(BLOBS)?;
            let v = serde_json::to_vec(r).expect("records always serialize");
            t.insert(cid.0.as_slice(), v.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    fn delete_record(&self, cid: &ContentId) -> Result<Option<BlobRecord>, StoreError> {
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

    // ---- space ----------------------------------------------------------------------------

    /// Makes room for `bytes` more, evicting if needed; the caller then adds them to usage.
    fn reserve(&self, bytes: u64) -> Result<(), StoreError> {
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

    fn release(&self, bytes: u64) {
        let _ = self.usage.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u.saturating_sub(bytes)));
    }

    /// Content ids used by images.
    fn referenced(&self) -> Result<HashSet<ContentId>, StoreError> {
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

    // ---- writing whole blobs --------------------------------------------------------------

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

    fn commit_complete(&self, cid: &ContentId, rec: &BlobRecord, manifest: Option<&[u8]>) -> Result<(), StoreError> {
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

    // ---- partial downloads ----------------------------------------------------------------

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
        let dest = self.blob_path(&p.cid);
        std::fs::rename(&p.path, &dest).map_err(io_err(&dest))?;
        sync_dir(&self.dir.join("blobs"));
        rec.complete = true;
        rec.have = None;
        rec.wanted = false;
        rec.sha256 = Some(actual.clone());
        rec.last_access_ms = now_ms();
        self.commit_complete(&p.cid, &rec, None)?;
        Ok(actual)
    }

    /// Downloads that were wanted and are not complete (to resume after a restart).
    pub fn wanted(&self) -> Result<Vec<ContentId>, StoreError> {
        Ok(self.list()?.into_iter().filter(|(_, r)| !r.complete && r.wanted).map(|(c, _)| c).collect())
    }

    // ---- removal --------------------------------------------------------------------------

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

    fn remove_unchecked(&self, cid: &ContentId) -> Result<(), StoreError> {
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

    // ---- images ---------------------------------------------------------------------------

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

fn read_range(f: &File, path: &Path, m: &PieceManifest, index: u32) -> Result<Vec<u8>, StoreError> {
    let (off, len) = m.range(index);
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, off).map_err(io_err(path))?;
    Ok(buf)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

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
