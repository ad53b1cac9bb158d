//! The layer store: unpacked layers on disk keyed by digest, atomic installation, and the
//! short symlinks that keep overlay mount options within a page.

use super::{LayerError, mount_overlay, unpack_layer};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::io::Errno;
use tracing::{debug, info, warn};

const TMP_DIR: &str = ".tmp";
const LINK_DIR: &str = "l";
const LOCK_FILE: &str = "lock";
const SHORT_LINK_LEN: usize = 12;

/// Checks that `digest_hex` is 64 lowercase hex characters, so it is a safe single path component.
pub fn validate_digest(digest_hex: &str) -> Result<(), LayerError> {
    let ok = digest_hex.len() == 64 && digest_hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok { Ok(()) } else { Err(LayerError::InvalidDigest { digest: digest_hex.to_owned() }) }
}

/// Unpacked layers on disk, keyed by the sha256 of their blob. See the module documentation for
/// the layout. One process at a time may have a store open (an `flock` on `<root>/lock`); share
/// the value between threads instead of opening it twice.
#[derive(Debug)]
pub struct LayerStore {
    root: PathBuf,
    _lock: fs::File,
}

fn store_err<E: Into<io::Error>>(op: &'static str, path: &Path) -> impl FnOnce(E) -> LayerError + use<E> {
    let path = path.to_path_buf();
    move |e| LayerError::Store { op, path, source: e.into() }
}

impl LayerStore {
    /// Opens (creating it if needed) the store at `root` and removes temporary directories that a
    /// crash left behind.
    pub fn open(root: &Path) -> Result<Self, LayerError> {
        fs::create_dir_all(root).map_err(store_err("create", root))?;
        let root = fs::canonicalize(root).map_err(store_err("resolve", root))?;
        let lock_path = root.join(LOCK_FILE);
        let lock = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path);
        let lock = lock.map_err(store_err("open the lock file", &lock_path))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Err(Errno::WOULDBLOCK) => return Err(LayerError::StoreLocked { root }),
            other => other.map_err(store_err("lock", &lock_path))?,
        }
        let tmp = root.join(TMP_DIR);
        for dir in [&tmp, &root.join(LINK_DIR)] {
            fs::create_dir_all(dir).map_err(store_err("create", dir))?;
        }
        for leftover in fs::read_dir(&tmp).map_err(store_err("list", &tmp))? {
            let path = leftover.map_err(store_err("list", &tmp))?.path();
            warn!(path = %path.display(), "removing a layer directory left behind by an interrupted unpack");
            fs::remove_dir_all(&path).map_err(store_err("remove a leftover temporary directory", &path))?;
        }
        Ok(Self { root, _lock: lock })
    }

    /// The store's root directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The unpacked directory of a layer, if it is in the store.
    pub fn get(&self, digest_hex: &str) -> Result<Option<PathBuf>, LayerError> {
        validate_digest(digest_hex)?;
        let fs_dir = self.root.join(digest_hex).join("fs");
        Ok(fs_dir.symlink_metadata().is_ok_and(|m| m.is_dir()).then_some(fs_dir))
    }

    /// Returns `<root>/<digest_hex>/fs`, unpacking the blob that `open` yields first if the layer is
    /// not there yet. `open` is not called when the layer is already unpacked.
    pub fn ensure<R: Read>(
        &self,
        digest_hex: &str,
        open: impl FnOnce() -> io::Result<R>,
    ) -> Result<PathBuf, LayerError> {
        if let Some(fs_dir) = self.get(digest_hex)? {
            self.short_link(digest_hex)?;
            return Ok(fs_dir);
        }
        let src = open().map_err(|source| LayerError::OpenBlob { digest: digest_hex.to_owned(), source })?;
        let tmp = self.make_tmp(digest_hex)?;
        let unpacked = (|| {
            let fs_tmp = tmp.join("fs");
            fs::create_dir(&fs_tmp).map_err(store_err("create", &fs_tmp))?;
            let stats = unpack_layer(src, &fs_tmp)?;
            let dir = fs::File::open(&tmp).map_err(store_err("open", &tmp))?;
            rustix::fs::syncfs(&dir).map_err(store_err("sync", &tmp))?;
            Ok(stats)
        })();
        let stats = unpacked.inspect_err(|_| self.discard(&tmp))?;
        let final_dir = self.root.join(digest_hex);
        let cwd = rustix::fs::CWD;
        match rustix::fs::renameat_with(cwd, &tmp, cwd, &final_dir, rustix::fs::RenameFlags::NOREPLACE) {
            Ok(()) => {
                let root = fs::File::open(&self.root).map_err(store_err("open", &self.root))?;
                rustix::fs::fsync(&root).map_err(store_err("sync", &self.root))?;
                info!(digest = digest_hex, ?stats, "layer unpacked");
            }
            Err(Errno::EXIST | Errno::NOTEMPTY) => {
                debug!(digest = digest_hex, "another caller unpacked this layer first; using theirs");
                self.discard(&tmp);
            }
            Err(e) => {
                self.discard(&tmp);
                return Err(store_err("move an unpacked layer to", &final_dir)(e));
            }
        }
        let missing = || io::Error::new(io::ErrorKind::NotFound, "the layer directory has no fs/; remove it");
        let fs_dir = self.get(digest_hex)?.ok_or_else(|| store_err("find the layer in", &final_dir)(missing()))?;
        self.short_link(digest_hex)?;
        Ok(fs_dir)
    }

    /// Removes a layer (and its short link). Returns whether it was there. The caller makes sure
    /// no mounted overlay still uses it.
    pub fn remove(&self, digest_hex: &str) -> Result<bool, LayerError> {
        validate_digest(digest_hex)?;
        self.remove_short_links(digest_hex)?;
        let dir = self.root.join(digest_hex);
        if dir.symlink_metadata().is_err() {
            return Ok(false);
        }
        // Move it out of sight first so that no one sees a half-deleted layer.
        let tmp = self.tmp_name(digest_hex);
        fs::rename(&dir, &tmp).map_err(store_err("move away", &dir))?;
        self.discard(&tmp);
        Ok(true)
    }

    /// The digests of the layers in the store, sorted. Unreadable entries are left out.
    pub fn list(&self) -> Vec<String> {
        let entries = fs::read_dir(&self.root).into_iter().flatten().flatten();
        let mut out: Vec<String> = entries
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| self.get(name).ok().flatten().is_some())
            .collect();
        out.sort();
        out
    }

    /// A short path to the layer's directory, `<root>/l/<short>`, for overlay mount options.
    pub fn lower_path(&self, digest_hex: &str) -> Result<PathBuf, LayerError> {
        if self.get(digest_hex)?.is_none() {
            return Err(LayerError::NotFound { digest: digest_hex.to_owned(), root: self.root.clone() });
        }
        self.short_link(digest_hex)
    }

    /// Mounts the given layers (top first) at `target` through their short paths; see
    /// [`mount_overlay`].
    pub fn mount(
        &self,
        target: &Path,
        layers_top_first: &[&str],
        upper: Option<(&Path, &Path)>,
    ) -> Result<(), LayerError> {
        let lowers = layers_top_first.iter().map(|d| self.lower_path(d)).collect::<Result<Vec<_>, _>>()?;
        mount_overlay(target, &lowers, upper)
    }

    fn tmp_name(&self, digest_hex: &str) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let short = digest_hex.get(..SHORT_LINK_LEN).unwrap_or(digest_hex);
        self.root.join(TMP_DIR).join(format!("{short}-{}-{n}", std::process::id()))
    }

    fn make_tmp(&self, digest_hex: &str) -> Result<PathBuf, LayerError> {
        loop {
            let tmp = self.tmp_name(digest_hex);
            match fs::create_dir(&tmp) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                other => return other.map(|()| tmp.clone()).map_err(store_err("create", &tmp)),
            }
        }
    }

    fn discard(&self, tmp: &Path) {
        if let Err(err) = fs::remove_dir_all(tmp) {
            warn!(path = %tmp.display(), ?err, "cannot remove a temporary layer directory; the next open removes it");
        }
    }

    /// Candidate short names of a layer: its first 12, 16, ... 64 hex characters. The link's
    /// target names the layer in full, so a colliding prefix is detected and skipped.
    fn short_names(digest_hex: &str) -> impl Iterator<Item = &str> {
        (SHORT_LINK_LEN..=digest_hex.len()).step_by(4).filter_map(|len| digest_hex.get(..len))
    }

    fn short_link(&self, digest_hex: &str) -> Result<PathBuf, LayerError> {
        let want = PathBuf::from(format!("../{digest_hex}/fs"));
        let links = self.root.join(LINK_DIR);
        for name in Self::short_names(digest_hex) {
            let link = links.join(name);
            let existing = match fs::read_link(&link) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => match std::os::unix::fs::symlink(&want, &link) {
                    Ok(()) => return Ok(link),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => fs::read_link(&link).ok(),
                    Err(e) => return Err(store_err("create the short link", &link)(e)),
                },
                other => other.ok(),
            };
            if existing.as_deref() == Some(want.as_path()) {
                return Ok(link);
            }
            debug!(link = %link.display(), "short layer name taken by another layer; trying a longer one");
        }
        let taken = io::Error::new(io::ErrorKind::AlreadyExists, "every short name is taken by something else");
        Err(store_err("create a short link in", &links)(taken))
    }

    fn remove_short_links(&self, digest_hex: &str) -> Result<(), LayerError> {
        let want = PathBuf::from(format!("../{digest_hex}/fs"));
        for name in Self::short_names(digest_hex) {
            let link = self.root.join(LINK_DIR).join(name);
            match fs::read_link(&link) {
                Ok(target) if target == want => fs::remove_file(&link).map_err(store_err("remove", &link))?,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_digest_validation() {
        assert!(validate_digest(&"0123456789abcdef".repeat(4)).is_ok());
        for bad in ["", "abc", &"A".repeat(64), &"g".repeat(64), &"a".repeat(65), &format!("/{}", "a".repeat(63))] {
            assert!(validate_digest(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn layers_short_names_grow_to_the_full_digest() {
        let digest = "ab".repeat(32);
        let names: Vec<&str> = LayerStore::short_names(&digest).collect();
        assert_eq!(names.first().map(|n| n.len()), Some(SHORT_LINK_LEN));
        assert_eq!(names.last(), Some(&digest.as_str()));
    }
}
