//! Random access to the files of an image archive: a tar file, a gzip-compressed tar file, or a
//! directory.
//!
//! [`Archive::open`] indexes a tar once (names, sizes, data offsets, links) without reading file
//! data, rejecting entry names that escape the archive and data that runs past the end of the
//! file. Afterwards, [`Archive::locate`] resolves a name (following links inside the archive),
//! [`Archive::read_metadata`] reads a small file into memory under a size limit, and
//! [`Archive::stream`] hands each wanted file's bytes to a callback as a reader, never holding
//! a whole file in memory.
//!
//! A plain tar is read by seeking to each file's data. A gzip-compressed tar cannot seek, so
//! the index pass keeps small metadata files in memory (bounded) and [`Archive::stream`]
//! decompresses the archive once more and visits the wanted files in archive order.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::error::ImportError;

/// The most bytes of a single metadata document (index, manifest, config) read into memory.
pub(crate) const METADATA_LIMIT: u64 = 8 << 20;
/// Files up to this size that look like metadata are cached by the index pass of a gzip tar.
const CACHE_FILE_LIMIT: u64 = 1 << 20;
/// Total bytes the index pass of a gzip tar caches.
const CACHE_BUDGET: u64 = 16 << 20;
/// Tar block size.
const BLOCK: u64 = 512;
/// Links followed before giving up (a loop).
const MAX_LINK_HOPS: usize = 16;

/// An opened archive.
pub(crate) struct Archive {
    path: PathBuf,
    kind: Kind,
}

enum Kind {
    Dir,
    Tar(TarIndex),
}

struct TarIndex {
    gzip: bool,
    entries: HashMap<String, TarEntry>,
    /// Contents of small metadata-like files (gzip tars only), by ordinal.
    cache: HashMap<usize, Vec<u8>>,
}

struct TarEntry {
    /// Position in the archive, counting from 0 (the last entry with a name wins).
    ordinal: usize,
    kind: EntryKind,
}

enum EntryKind {
    File {
        offset: u64,
        size: u64,
    },
    /// A symlink or hard link, with its target resolved to a name in the archive, or `None` if
    /// the target lies outside the archive.
    Link {
        target: Option<String>,
        raw: String,
    },
    /// A directory, device, fifo or sparse file.
    Other,
}

/// A file found in the archive, ready to be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located {
    /// The name as asked for (for messages).
    pub(crate) entry: String,
    /// The name of the file finally reached (after links).
    resolved: String,
    ordinal: usize,
    offset: u64,
    pub(crate) size: u64,
}

impl Located {
    /// The whole archive file as one blob (a rootfs tarball's layer), named `entry` in messages.
    pub(crate) fn whole_file(entry: String, size: u64) -> Located {
        Located { resolved: entry.clone(), entry, ordinal: 0, offset: 0, size }
    }
}

impl Archive {
    /// Opens `path`: a directory, or a tar file (gzip-compressed or not), which is indexed.
    pub(crate) fn open(path: &Path) -> Result<Archive, ImportError> {
        let open_err = |source| ImportError::Open { archive: path.to_path_buf(), source };
        let meta = std::fs::metadata(path).map_err(open_err)?;
        if meta.is_dir() {
            return Ok(Archive { path: path.to_path_buf(), kind: Kind::Dir });
        }
        let mut file = File::open(path).map_err(open_err)?;
        let mut magic = [0u8; 2];
        let got = read_up_to(&mut file, &mut magic).map_err(open_err)?;
        if got == 0 {
            return Err(ImportError::Empty { archive: path.to_path_buf() });
        }
        let gzip = got == 2 && magic == [0x1f, 0x8b];
        file.seek(SeekFrom::Start(0)).map_err(open_err)?;
        let index = if gzip { index_gzip(path, file)? } else { index_plain(path, file, meta.len())? };
        if index.entries.is_empty() {
            return Err(ImportError::Empty { archive: path.to_path_buf() });
        }
        Ok(Archive { path: path.to_path_buf(), kind: Kind::Tar(index) })
    }

    /// The archive's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the archive is a directory.
    pub(crate) fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir)
    }

    /// Whether `name` is a file in the archive (after links).
    pub(crate) fn has(&self, name: &str) -> bool {
        self.locate(name).is_ok()
    }

    /// Finds the file `name`, following links that stay inside the archive.
    pub(crate) fn locate(&self, name: &str) -> Result<Located, ImportError> {
        let traversal = || ImportError::PathTraversal { archive: self.path.clone(), entry: name.to_string() };
        let missing = || ImportError::Missing { archive: self.path.clone(), entry: name.to_string() };
        let not_a_file = || ImportError::NotAFile { archive: self.path.clone(), entry: name.to_string() };
        let normalized = normalize(name).ok_or_else(traversal)?;
        let index = match &self.kind {
            Kind::Dir => {
                let meta = std::fs::metadata(self.path.join(&normalized)).map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => missing(),
                    _ => ImportError::Open { archive: self.path.join(&normalized), source: e },
                })?;
                if !meta.is_file() {
                    return Err(not_a_file());
                }
                let size = meta.len();
                return Ok(Located { entry: name.to_string(), resolved: normalized, ordinal: 0, offset: 0, size });
            }
            Kind::Tar(index) => index,
        };
        let mut current = normalized;
        for _ in 0..MAX_LINK_HOPS {
            let entry = index.entries.get(&current).ok_or_else(missing)?;
            match &entry.kind {
                EntryKind::File { offset, size } => {
                    return Ok(Located {
                        entry: name.to_string(),
                        resolved: current,
                        ordinal: entry.ordinal,
                        offset: *offset,
                        size: *size,
                    });
                }
                EntryKind::Link { target: Some(target), .. } => current = target.clone(),
                EntryKind::Link { target: None, raw } => {
                    return Err(ImportError::PathTraversal {
                        archive: self.path.clone(),
                        entry: format!("{current} -> {raw}"),
                    });
                }
                EntryKind::Other => return Err(not_a_file()),
            }
        }
        Err(not_a_file())
    }

    /// Reads the whole of a small file, refusing files over [`METADATA_LIMIT`].
    pub(crate) fn read_metadata(&self, loc: &Located) -> Result<Vec<u8>, ImportError> {
        if loc.size > METADATA_LIMIT {
            return Err(ImportError::MetadataTooLarge {
                entry: loc.entry.clone(),
                size: loc.size,
                limit: METADATA_LIMIT,
            });
        }
        if let Kind::Tar(index) = &self.kind
            && let Some(bytes) = index.cache.get(&loc.ordinal)
        {
            return Ok(bytes.clone());
        }
        let mut out = None;
        self.stream(&[(loc.clone(), ())], |_, (), r| {
            let mut buf = Vec::with_capacity(usize::try_from(loc.size).unwrap_or(0));
            r.take(METADATA_LIMIT + 1).read_to_end(&mut buf).map_err(|e| self.read_error(loc, e))?;
            out = Some(buf);
            Ok(())
        })?;
        let buf = out.ok_or_else(|| ImportError::Missing { archive: self.path.clone(), entry: loc.entry.clone() })?;
        if buf.len() as u64 != loc.size {
            return Err(ImportError::Truncated { archive: self.path.clone(), entry: loc.entry.clone() });
        }
        Ok(buf)
    }

    /// A read error on `loc`, as an [`ImportError`].
    pub(crate) fn read_error(&self, loc: &Located, source: io::Error) -> ImportError {
        ImportError::Read { archive: self.path.clone(), entry: loc.entry.clone(), source }
    }

    /// Calls `f` with each wanted file (and its tag `T`) and a reader of exactly its bytes: in
    /// the given order for directories and plain tars, in archive order for gzip tars
    /// (decompressing once, plus once more for each file wanted more than once).
    pub(crate) fn stream<T>(
        &self,
        wanted: &[(Located, T)],
        mut f: impl FnMut(&Located, &T, &mut dyn Read) -> Result<(), ImportError>,
    ) -> Result<(), ImportError> {
        let open_err = |source| ImportError::Open { archive: self.path.clone(), source };
        match &self.kind {
            Kind::Dir => {
                for (loc, tag) in wanted {
                    let file = File::open(self.path.join(&loc.resolved)).map_err(open_err)?;
                    f(loc, tag, &mut BufReader::new(file).take(loc.size))?;
                }
                Ok(())
            }
            Kind::Tar(index) if !index.gzip => {
                let mut file = File::open(&self.path).map_err(open_err)?;
                for (loc, tag) in wanted {
                    file.seek(SeekFrom::Start(loc.offset)).map_err(open_err)?;
                    f(loc, tag, &mut BufReader::new(&mut file).take(loc.size))?;
                }
                Ok(())
            }
            Kind::Tar(_) => {
                let mut pending: Vec<&(Located, T)> = wanted.iter().collect();
                while !pending.is_empty() {
                    pending = self.gzip_pass(&pending, &mut f)?;
                }
                Ok(())
            }
        }
    }

    /// One decompressing pass over a gzip tar, visiting one wanted file per ordinal; returns the
    /// wanted files left for another pass (those sharing an ordinal with an earlier one).
    fn gzip_pass<'w, T>(
        &self,
        pending: &[&'w (Located, T)],
        f: &mut impl FnMut(&Located, &T, &mut dyn Read) -> Result<(), ImportError>,
    ) -> Result<Vec<&'w (Located, T)>, ImportError> {
        let mut by_ordinal: HashMap<usize, &(Located, T)> = HashMap::new();
        let mut later = Vec::new();
        for &item in pending {
            match by_ordinal.entry(item.0.ordinal) {
                std::collections::hash_map::Entry::Occupied(_) => later.push(item),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(item);
                }
            }
        }
        let file = File::open(&self.path).map_err(|source| ImportError::Open { archive: self.path.clone(), source })?;
        let mut tar = tar::Archive::new(MultiGzDecoder::new(BufReader::new(file)));
        let corrupt = |source| ImportError::Corrupt { archive: self.path.clone(), source };
        let entries = tar.entries().map_err(corrupt)?;
        for (ordinal, entry) in entries.enumerate() {
            if by_ordinal.is_empty() {
                break;
            }
            let mut entry = entry.map_err(corrupt)?;
            if let Some((loc, tag)) = by_ordinal.remove(&ordinal) {
                f(loc, tag, &mut entry)?;
            }
        }
        if let Some((loc, _)) = by_ordinal.values().next() {
            // The index pass saw it, so the archive changed underneath us.
            return Err(ImportError::Truncated { archive: self.path.clone(), entry: loc.entry.clone() });
        }
        Ok(later)
    }

    /// Calls `f` with a reader of the whole raw file (a tar archive only).
    pub(crate) fn stream_raw<T>(
        &self,
        f: impl FnOnce(&mut dyn Read) -> Result<T, ImportError>,
    ) -> Result<T, ImportError> {
        let file = File::open(&self.path).map_err(|source| ImportError::Open { archive: self.path.clone(), source })?;
        f(&mut BufReader::new(file))
    }
}

/// Reads into `buf` until it is full or the reader ends; returns how much was read.
pub(crate) fn read_up_to(r: &mut (impl Read + ?Sized), buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Indexes a plain tar by seeking over file data.
fn index_plain(path: &Path, file: File, len: u64) -> Result<TarIndex, ImportError> {
    let mut tar = tar::Archive::new(BufReader::new(file));
    let mut index = TarIndex { gzip: false, entries: HashMap::new(), cache: HashMap::new() };
    let mut end = 0;
    let entries =
        tar.entries_with_seek().map_err(|source| ImportError::Corrupt { archive: path.to_path_buf(), source })?;
    for (ordinal, entry) in entries.enumerate() {
        let entry = entry.map_err(|source| tar_error(path, ordinal, source))?;
        let (name, kind) = describe(path, &entry)?;
        if let EntryKind::File { offset, size } = kind
            && offset.checked_add(size).is_none_or(|end| end > len)
        {
            return Err(ImportError::Truncated { archive: path.to_path_buf(), entry: name });
        }
        end = end.max(entry_end(&entry));
        index.entries.insert(name, TarEntry { ordinal, kind });
    }
    check_end_marker(path, &index, end, len)?;
    Ok(index)
}

/// Where an entry's data ends, padded to the next tar block.
fn entry_end<R: Read>(entry: &tar::Entry<'_, R>) -> u64 {
    entry.raw_file_position().saturating_add(entry.size().div_ceil(BLOCK) * BLOCK)
}

/// Checks that a tar went on past its last entry (`end`) for at least the zero block that marks
/// its end (`len` is how far it went). Without the marker, a tar cut at an entry boundary
/// would look complete, only smaller.
fn check_end_marker(path: &Path, index: &TarIndex, end: u64, len: u64) -> Result<(), ImportError> {
    if index.entries.is_empty() || len >= end.saturating_add(BLOCK) {
        Ok(())
    } else {
        Err(ImportError::NoEndMarker { archive: path.to_path_buf() })
    }
}

/// A reader that counts the bytes read through it.
struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// Indexes a gzip tar by decompressing it once, keeping small metadata files in memory, and
/// checking the gzip stream to its end (so a corrupt trailer is caught now).
fn index_gzip(path: &Path, file: File) -> Result<TarIndex, ImportError> {
    let corrupt = |source| ImportError::Corrupt { archive: path.to_path_buf(), source };
    let mut tar = tar::Archive::new(Counting { inner: MultiGzDecoder::new(BufReader::new(file)), count: 0 });
    let mut index = TarIndex { gzip: true, entries: HashMap::new(), cache: HashMap::new() };
    let mut cached = 0u64;
    let mut end = 0;
    let entries = tar.entries().map_err(|source| tar_error(path, 0, source))?;
    for (ordinal, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|source| tar_error(path, ordinal, source))?;
        let (name, kind) = describe(path, &entry)?;
        if let EntryKind::File { size, .. } = kind
            && size <= CACHE_FILE_LIMIT
            && cached + size <= CACHE_BUDGET
            && looks_like_metadata(&name)
        {
            let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            entry.read_to_end(&mut buf).map_err(corrupt)?;
            if buf.len() as u64 != size {
                return Err(ImportError::Truncated { archive: path.to_path_buf(), entry: name });
            }
            cached += size;
            index.cache.insert(ordinal, buf);
        }
        end = end.max(entry_end(&entry));
        index.entries.insert(name, TarEntry { ordinal, kind });
    }
    let mut rest = tar.into_inner();
    // The tar reader stopped at the end marker (or the end of the stream): compare.
    check_end_marker(path, &index, end, rest.count)?;
    // Read the rest of the stream so the gzip trailer (CRC and length) is checked.
    io::copy(&mut rest, &mut io::sink()).map_err(corrupt)?;
    Ok(index)
}

/// A tar parse error: at the first entry the file is not a tar at all.
fn tar_error(path: &Path, ordinal: usize, source: io::Error) -> ImportError {
    if ordinal == 0 {
        ImportError::NotAnArchive { archive: path.to_path_buf() }
    } else {
        ImportError::Corrupt { archive: path.to_path_buf(), source }
    }
}

/// Files whose content import may need as metadata.
fn looks_like_metadata(name: &str) -> bool {
    name == "oci-layout" || name.ends_with(".json") || name.starts_with("blobs/")
}

/// The normalized name and kind of a tar entry.
fn describe<R: Read>(path: &Path, entry: &tar::Entry<'_, R>) -> Result<(String, EntryKind), ImportError> {
    let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    let name = normalize(&raw_name)
        .ok_or_else(|| ImportError::PathTraversal { archive: path.to_path_buf(), entry: raw_name.clone() })?;
    let kind = entry.header().entry_type();
    let kind = if kind.is_file() || kind.is_contiguous() {
        EntryKind::File { offset: entry.raw_file_position(), size: entry.size() }
    } else if kind.is_symlink() || kind.is_hard_link() {
        let raw = entry.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        // A symlink's target is relative to its directory, a hard link's to the archive root.
        let base = if kind.is_symlink() { name.rsplit_once('/').map_or("", |(dir, _)| dir) } else { "" };
        EntryKind::Link { target: resolve(base, &raw), raw }
    } else {
        EntryKind::Other
    };
    Ok((name, kind))
}

/// `name` without `.` components and duplicate slashes, or `None` if it is absolute or has a
/// `..` component (it could escape the archive).
pub(crate) fn normalize(name: &str) -> Option<String> {
    if name.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

/// Resolves a link `target` relative to the directory `base` (both inside the archive), or
/// `None` if it is absolute or climbs out of the archive.
fn resolve(base: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_strips_dots_and_rejects_escapes() {
        assert_eq!(normalize("./manifest.json").as_deref(), Some("manifest.json"));
        assert_eq!(normalize("blobs//sha256/./x").as_deref(), Some("blobs/sha256/x"));
        assert_eq!(normalize("a/b/").as_deref(), Some("a/b"));
        assert_eq!(normalize("../x"), None);
        assert_eq!(normalize("a/../../x"), None);
        assert_eq!(normalize("/etc/passwd"), None);
    }

    #[test]
    fn resolve_stays_inside() {
        assert_eq!(resolve("abc", "../def/layer.tar").as_deref(), Some("def/layer.tar"));
        assert_eq!(resolve("", "def/layer.tar").as_deref(), Some("def/layer.tar"));
        assert_eq!(resolve("abc", "../../etc/passwd"), None);
        assert_eq!(resolve("abc", "/etc/passwd"), None);
    }
}
