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
//!
//! This file holds the store itself (opening, paths, usage) and the error type; the rest is
//! split by concern: `records`, `space` (quota, eviction, removal), `blobs` (whole blobs in and
//! out), `partial` (downloads), `images` and `sink` (the image crate's sink and source).

mod blobs;
mod images;
mod partial;
mod records;
mod sink;
mod space;

pub use blobs::Stored;
pub use images::{BlobRef, ImageRecord};
pub use partial::{CheckpointJob, Partial};
pub use records::BlobRecord;
pub use sink::{StoreSink, StoreSource};

use crate::cid::ContentId;
use crate::manifest::PieceManifest;
use redb::{Database, TableDefinition};
use std::collections::HashSet;
use std::fs::File;
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
    /// writing a file and committing its record), and moves a finished download whose rename
    /// a crash interrupted into place.
    fn reconcile(&self) -> Result<(), StoreError> {
        let records = self.list()?;
        let mut known = HashSet::new();
        let mut usage = 0;
        for (cid, r) in &records {
            let path = if r.complete { self.blob_path(cid) } else { self.partial_path(cid) };
            // A finished download committed but not yet renamed when we stopped: finish it.
            if r.complete && !path.exists() && self.partial_path(cid).exists() {
                std::fs::rename(self.partial_path(cid), &path).map_err(io_err(&path))?;
                sync_dir(&self.dir.join("blobs"));
            }
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
