//! Unpacking one layer blob into a directory: decompression, path checks, every entry type,
//! metadata and xattrs, and the OCI-to-overlayfs whiteout conversion (see the module docs).

use super::LayerError;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use tracing::debug;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// How a layer blob was compressed, as told by its first bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    #[default]
    None,
    /// gzip (`1f 8b`), possibly several members.
    Gzip,
    /// zstd (`28 b5 2f fd`), possibly several frames.
    Zstd,
}

impl Compression {
    /// Tells the compression from the first (up to four) bytes of a blob.
    pub fn sniff(prefix: &[u8]) -> Self {
        match prefix {
            [0x1f, 0x8b, ..] => Self::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Self::Zstd,
            _ => Self::None,
        }
    }
}

/// What [`unpack_layer`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// The compression of the blob.
    pub compression: Compression,
    /// Tar entries processed, whiteouts included.
    pub entries: u64,
    /// Bytes of regular-file contents written.
    pub file_bytes: u64,
    /// `.wh.NAME` entries turned into 0:0 character devices.
    pub whiteouts: u64,
    /// `.wh..wh..opq` entries turned into opaque directories.
    pub opaque_dirs: u64,
}

fn read_err(source: io::Error) -> LayerError {
    LayerError::Read { source }
}

fn write_err<E: Into<io::Error>>(dest: &Path, entry: &Path, op: &'static str) -> impl FnOnce(E) -> LayerError + use<E> {
    let (entry, dest) = (entry.to_path_buf(), dest.to_path_buf());
    move |e| LayerError::Write { entry, dest, op, source: e.into() }
}

fn header_err(entry: &Path, field: &'static str, source: io::Error) -> LayerError {
    LayerError::Header { entry: entry.to_path_buf(), field, source }
}

/// Unpacks one layer blob (gzip, zstd or plain tar) into `dest`, an existing empty directory,
/// converting OCI whiteouts to overlayfs form. See the module documentation for the rules.
///
/// On error `dest` holds a partial layer: the caller deletes it ([`LayerStore::ensure`](super::LayerStore::ensure) does).
pub fn unpack_layer(mut src: impl Read, dest: &Path) -> Result<LayerStats, LayerError> {
    let mut magic = Vec::with_capacity(4);
    src.by_ref().take(4).read_to_end(&mut magic).map_err(read_err)?;
    let compression = Compression::sniff(&magic);
    let stream = io::Cursor::new(magic).chain(src);
    let reader: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(stream),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(stream)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(stream).map_err(read_err)?),
    };
    let root = rustix::fs::open(dest, DIR_FLAGS, Mode::empty()).map_err(write_err(
        dest,
        Path::new("."),
        "open the destination directory",
    ))?;
    let stats = LayerStats { compression, ..LayerStats::default() };
    let mut unpacker = Unpacker { dest, root, dirs: Vec::new(), buf: vec![0; 64 * 1024], stats };

    let mut archive = tar::Archive::new(EofTracker { inner: reader, hit_eof: false });
    for entry in archive.entries().map_err(read_err)? {
        unpacker.entry(&mut entry.map_err(read_err)?)?;
    }
    let mut rest = archive.into_inner();
    if rest.hit_eof {
        return Err(LayerError::Truncated);
    }
    // Reading to the end makes the decoders check their trailers (gzip CRC and length, zstd checksum).
    io::copy(&mut rest, &mut io::sink()).map_err(read_err)?;
    unpacker.finish()?;
    debug!(dest = %dest.display(), ?unpacker.stats, "layer unpacked");
    Ok(unpacker.stats)
}

/// Remembers whether the stream ended, so that a tar cut at a block boundary (which the `tar`
/// crate takes for a clean end) is told apart from one that reached its end-of-archive marker.
struct EofTracker<R> {
    inner: R,
    hit_eof: bool,
}

impl<R: Read> Read for EofTracker<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hit_eof |= n == 0 && !buf.is_empty();
        Ok(n)
    }
}

/// Metadata of one entry, applied after its contents.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Ids for chown; `owner_id` ruled out u32::MAX, which would mean "leave unchanged".
fn owner(uid: u32, gid: u32) -> (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) {
    (Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(gid)))
}

impl Meta {
    fn times(&self) -> Timestamps {
        let t = Timespec { tv_sec: self.mtime, tv_nsec: 0 };
        Timestamps { last_access: t, last_modification: t }
    }
}

struct Unpacker<'d> {
    dest: &'d Path,
    root: OwnedFd,
    /// Directories whose metadata is applied at the end, since creating their children changes
    /// their mtime.
    dirs: Vec<(PathBuf, Meta)>,
    buf: Vec<u8>,
    stats: LayerStats,
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY.union(OFlags::RDONLY).union(OFlags::CLOEXEC);

/// Opens a directory of the layer, walking with `RESOLVE_IN_ROOT`: `..` and absolute symlinks stay
/// inside the layer. `openat2` may ask for a retry when a rename raced the walk.
fn open_in_root(root: &OwnedFd, rel: &Path) -> Result<OwnedFd, Errno> {
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV;
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(root, rel, DIR_FLAGS, Mode::empty(), resolve) {
            Err(Errno::AGAIN) if tries < 16 => tries += 1,
            other => return other,
        }
    }
}

fn parent_of(rel: &Path) -> &Path {
    rel.parent().unwrap_or(Path::new(""))
}

/// Validates a tar path: no absolute paths, no `..`; `.` components are dropped. Empty means the
/// layer root.
fn normalize(raw: &Path) -> Result<PathBuf, LayerError> {
    let mut out = PathBuf::new();
    for component in raw.components() {
        let reason = match component {
            Component::Normal(part) => {
                out.push(part);
                continue;
            }
            Component::CurDir => continue,
            Component::ParentDir => "contains a `..` component",
            Component::RootDir | Component::Prefix(_) => "is an absolute path",
        };
        return Err(LayerError::UnsafePath { entry: raw.to_path_buf(), reason });
    }
    Ok(out)
}

/// A path that reaches `name` inside the directory `dir` for calls that only take paths (xattrs
/// on symlinks and device nodes). The magic link is the directory itself; `name` is a single
/// component and the `l*` calls do not follow it.
fn proc_path(dir: &OwnedFd, name: &OsStr) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
}

fn owner_id(entry: &Path, field: &'static str, raw: io::Result<u64>) -> Result<u32, LayerError> {
    let raw = raw.map_err(|e| header_err(entry, field, e))?;
    u32::try_from(raw).ok().filter(|id| *id != u32::MAX).ok_or_else(|| {
        header_err(entry, field, io::Error::new(io::ErrorKind::InvalidData, format!("{raw} is out of range")))
    })
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, path: &Path) -> Result<Meta, LayerError> {
    let header = entry.header();
    let mode = header.mode().map_err(|e| header_err(path, "mode", e))? & 0o7777;
    let uid = owner_id(path, "uid", header.uid())?;
    let gid = owner_id(path, "gid", header.gid())?;
    let mtime = header.mtime().map_err(|e| header_err(path, "mtime", e))?;
    let mtime = i64::try_from(mtime).unwrap_or(i64::MAX);
    let mut xattrs = Vec::new();
    for ext in entry.pax_extensions().map_err(read_err)?.into_iter().flatten() {
        let ext = ext.map_err(|e| header_err(path, "pax extension", e))?;
        let Some(name) = ext.key_bytes().strip_prefix(PAX_XATTR_PREFIX) else { continue };
        if name.starts_with(OVERLAY_XATTR_PREFIX) {
            debug!(entry = %path.display(), "dropping a trusted.overlay.* xattr from a layer");
            continue;
        }
        xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
    }
    Ok(Meta { mode, uid, gid, mtime, xattrs })
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>, raw: &Path) -> Result<PathBuf, LayerError> {
    let target = entry.link_name().map_err(|e| header_err(raw, "link target", e))?;
    Ok(target.ok_or_else(|| header_err(raw, "link target", io::ErrorKind::NotFound.into()))?.into_owned())
}

/// Where copying an entry's contents failed: reading the stream or writing the disk.
enum CopyFail {
    Read(io::Error),
    Write(io::Error),
}

fn copy_contents(from: &mut impl Read, to: &mut impl Write, buf: &mut [u8]) -> Result<u64, CopyFail> {
    let mut total = 0u64;
    loop {
        let n = match from.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyFail::Read(e)),
        };
        to.write_all(&buf[..n]).map_err(CopyFail::Write)?;
        total += n as u64;
    }
}

impl Unpacker<'_> {
    fn err<E: Into<io::Error>>(&self, entry: &Path, op: &'static str) -> impl FnOnce(E) -> LayerError + use<E> {
        write_err(self.dest, entry, op)
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), LayerError> {
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if kind == T::XGlobalHeader {
            return Ok(()); // e.g. `git archive`'s comment; it describes no file
        }
        let raw = entry.path().map_err(read_err)?.into_owned();
        let rel = normalize(&raw)?;
        self.stats.entries += 1;
        let unsupported = |raw| LayerError::UnsupportedEntry { entry: raw, kind: char::from(kind.as_byte()) };
        let Some(name) = rel.file_name().map(OsStr::to_os_string) else {
            // `./`: metadata of the layer root.
            if !kind.is_dir() {
                return Err(unsupported(raw));
            }
            self.dirs.push((rel, read_meta(entry, &raw)?));
            return Ok(());
        };
        if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(entry, &rel, name.as_bytes(), OsStr::from_bytes(hidden));
        }
        let meta = read_meta(entry, &raw)?;
        let parent = self.open_parent(&rel, &raw)?;
        let name = name.as_os_str();
        let (file_type, dev) = match kind {
            T::Regular | T::Continuous | T::GNUSparse => {
                self.clear(&parent, name, false, &raw)?;
                let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(&parent, name, flags, Mode::from_raw_mode(0o600))
                    .map_err(self.err(&raw, "create file"))?;
                let mut file = fs::File::from(fd);
                self.stats.file_bytes += match copy_contents(entry, &mut file, &mut self.buf) {
                    Ok(n) => n,
                    Err(CopyFail::Read(source)) => return Err(read_err(source)),
                    Err(CopyFail::Write(source)) => return Err(self.err(&raw, "write file contents")(source)),
                };
                return self.apply_meta_fd(file.as_fd(), &meta, &raw);
            }
            T::Directory => {
                if !self.clear(&parent, name, true, &raw)? {
                    rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700))
                        .map_err(self.err(&raw, "create directory"))?;
                }
                self.dirs.push((rel, meta));
                return Ok(());
            }
            T::Symlink => {
                let target = link_target(entry, &raw)?;
                self.clear(&parent, name, false, &raw)?;
                rustix::fs::symlinkat(&target, &parent, name).map_err(self.err(&raw, "create symlink"))?;
                return self.apply_meta_at(&parent, name, &meta, true, &raw);
            }
            T::Link => return self.hardlink(&parent, name, &rel, &raw, &link_target(entry, &raw)?),
            T::Fifo => (FileType::Fifo, 0),
            T::Char | T::Block => {
                let header = entry.header();
                let major = header.device_major().map_err(|e| header_err(&raw, "device major", e))?;
                let minor = header.device_minor().map_err(|e| header_err(&raw, "device minor", e))?;
                let file_type = if kind == T::Char { FileType::CharacterDevice } else { FileType::BlockDevice };
                (file_type, rustix::fs::makedev(major.unwrap_or(0), minor.unwrap_or(0)))
            }
            _ => return Err(unsupported(raw)),
        };
        self.clear(&parent, name, false, &raw)?;
        rustix::fs::mknodat(&parent, name, file_type, Mode::from_raw_mode(0o600), dev)
            .map_err(self.err(&raw, "create device node or fifo"))?;
        self.apply_meta_at(&parent, name, &meta, false, &raw)
    }

    /// `dir/.wh.NAME` → 0:0 char device `dir/NAME`; `dir/.wh..wh..opq` → opaque `dir`.
    fn whiteout<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        rel: &Path,
        marker: &[u8],
        hidden: &OsStr,
    ) -> Result<(), LayerError> {
        if marker == OPAQUE_MARKER {
            let parent = self.open_parent(rel, rel)?;
            rustix::fs::fsetxattr(&parent, OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(self.err(rel, "mark the directory opaque (trusted.overlay.opaque)"))?;
            self.stats.opaque_dirs += 1;
            return Ok(());
        }
        if hidden.as_bytes().starts_with(WHITEOUT_PREFIX) {
            debug!(entry = %rel.display(), "skipping aufs metadata entry");
            return Ok(());
        }
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(LayerError::UnsafePath { entry: rel.to_path_buf(), reason: "is a whiteout without a name" });
        }
        let uid = owner_id(rel, "uid", entry.header().uid())?;
        let gid = owner_id(rel, "gid", entry.header().gid())?;
        let owner = owner(uid, gid);
        let parent = self.open_parent(rel, rel)?;
        self.clear(&parent, hidden, false, rel)?;
        rustix::fs::mknodat(&parent, hidden, FileType::CharacterDevice, Mode::empty(), rustix::fs::makedev(0, 0))
            .map_err(self.err(rel, "create the whiteout device"))?;
        rustix::fs::chownat(&parent, hidden, owner.0, owner.1, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(self.err(rel, "set the whiteout's owner"))?;
        self.stats.whiteouts += 1;
        Ok(())
    }

    fn hardlink(&self, parent: &OwnedFd, name: &OsStr, rel: &Path, raw: &Path, to: &Path) -> Result<(), LayerError> {
        let target = normalize(to)?;
        let link_err = |e: Errno| LayerError::HardlinkTarget {
            entry: raw.to_path_buf(),
            target: to.to_path_buf(),
            source: e.into(),
        };
        let Some(target_name) = target.file_name() else { return Err(link_err(Errno::ISDIR)) };
        let target_dir = open_in_root(&self.root, parent_of(&target)).map_err(link_err)?;
        rustix::fs::statat(&target_dir, target_name, AtFlags::SYMLINK_NOFOLLOW).map_err(link_err)?;
        if target == rel {
            return Ok(()); // a link to itself: nothing to do
        }
        self.clear(parent, name, false, raw)?;
        rustix::fs::linkat(&target_dir, target_name, parent, name, AtFlags::empty()).map_err(link_err)
    }

    /// Opens the parent directory of `rel`, creating missing directories (mode 0755, root) on the way.
    fn open_parent(&self, rel: &Path, raw: &Path) -> Result<OwnedFd, LayerError> {
        let parent = parent_of(rel);
        match open_in_root(&self.root, parent) {
            Err(Errno::NOENT) => {}
            other => return other.map_err(self.err(raw, "open the parent directory")),
        }
        let mut current = open_in_root(&self.root, Path::new("")).map_err(self.err(raw, "open the layer root"))?;
        let mut prefix = PathBuf::new();
        for part in parent.iter() {
            prefix.push(part);
            current = match open_in_root(&self.root, &prefix) {
                Err(Errno::NOENT) => {
                    match rustix::fs::mkdirat(&current, part, Mode::from_raw_mode(0o755)) {
                        // It exists but does not resolve: a symlink to nowhere.
                        Err(Errno::EXIST) => {
                            return Err(LayerError::BrokenParent { entry: raw.to_path_buf(), component: prefix });
                        }
                        other => other.map_err(self.err(raw, "create a parent directory"))?,
                    }
                    let fd = rustix::fs::openat(&current, part, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())
                        .map_err(self.err(raw, "open a created parent directory"))?;
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))
                        .map_err(self.err(raw, "set a directory's mode"))?;
                    fd
                }
                other => other.map_err(self.err(raw, "open a parent directory"))?,
            };
        }
        Ok(current)
    }

    /// Makes room for a new entry `name` in `parent`: removes what an earlier entry put there,
    /// except a directory when `keep_dir` (then returns true: the directory is reused).
    fn clear(&self, parent: &OwnedFd, name: &OsStr, keep_dir: bool, raw: &Path) -> Result<bool, LayerError> {
        let stat = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => return Ok(false),
            other => other.map_err(self.err(raw, "inspect an existing entry"))?,
        };
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            rustix::fs::unlinkat(parent, name, AtFlags::empty()).map_err(self.err(raw, "replace an entry"))?;
        } else if !keep_dir {
            // std's remove_dir_all never follows symlinks inside the tree.
            fs::remove_dir_all(proc_path(parent, name)).map_err(self.err(raw, "replace a directory"))?;
        }
        Ok(keep_dir && FileType::from_raw_mode(stat.st_mode) == FileType::Directory)
    }

    /// Owner, then mode (chown clears setuid), then xattrs (chown clears file capabilities), then times.
    fn apply_meta_fd(&self, fd: impl AsFd, meta: &Meta, raw: &Path) -> Result<(), LayerError> {
        let (fd, (uid, gid)) = (fd.as_fd(), owner(meta.uid, meta.gid));
        rustix::fs::fchown(fd, uid, gid).map_err(self.err(raw, "set owner"))?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode)).map_err(self.err(raw, "set mode"))?;
        for (name, value) in &meta.xattrs {
            rustix::fs::fsetxattr(fd, OsStr::from_bytes(name), value, XattrFlags::empty())
                .map_err(self.err(raw, "set an extended attribute"))?;
        }
        rustix::fs::futimens(fd, &meta.times()).map_err(self.err(raw, "set modification time"))
    }

    /// The same for what cannot be opened: symlinks, device nodes, fifos.
    fn apply_meta_at(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        meta: &Meta,
        link: bool,
        raw: &Path,
    ) -> Result<(), LayerError> {
        let (uid, gid) = owner(meta.uid, meta.gid);
        rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW).map_err(self.err(raw, "set owner"))?;
        if !link {
            // The last component is the node just made with mknodat, not a symlink.
            rustix::fs::chmodat(dir, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                .map_err(self.err(raw, "set mode"))?;
        }
        for (xname, value) in &meta.xattrs {
            rustix::fs::lsetxattr(proc_path(dir, name), OsStr::from_bytes(xname), value, XattrFlags::empty())
                .map_err(self.err(raw, "set an extended attribute"))?;
        }
        rustix::fs::utimensat(dir, name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(self.err(raw, "set modification time"))
    }

    /// Applies directory metadata once every entry is written. A directory replaced by a later
    /// entry is skipped.
    fn finish(&mut self) -> Result<(), LayerError> {
        for (rel, meta) in &self.dirs {
            let fd = match rel.file_name() {
                None => open_in_root(&self.root, rel),
                Some(name) => open_in_root(&self.root, parent_of(rel))
                    .and_then(|parent| rustix::fs::openat(&parent, name, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())),
            };
            match fd {
                Ok(fd) => self.apply_meta_fd(&fd, meta, rel)?,
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => {
                    debug!(entry = %rel.display(), "directory replaced by a later entry; skipping its metadata");
                }
                Err(e) => return Err(self.err(rel, "open a directory to set its metadata")(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_normalize_drops_dots_and_refuses_escapes() {
        assert_eq!(normalize(Path::new("./a//b/./c/")).unwrap(), Path::new("a/b/c"));
        assert_eq!(normalize(Path::new("./")).unwrap(), Path::new(""));
        for bad in ["../x", "a/../../x", "a/..", "/etc/passwd"] {
            assert!(matches!(normalize(Path::new(bad)), Err(LayerError::UnsafePath { .. })), "{bad}");
        }
    }

    #[test]
    fn layers_sniff_compression() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(Compression::sniff(b"etc/"), Compression::None);
        assert_eq!(Compression::sniff(&[0x1f]), Compression::None);
        assert_eq!(Compression::sniff(&[]), Compression::None);
    }
}
