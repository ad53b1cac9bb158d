//! OCI image layers turned into directories that overlayfs stacks.
//!
//! # Unpacking
//!
//! [`unpack_layer`] reads one layer blob (gzip, zstd or plain tar, told apart by its first bytes) and
//! writes its entries into an empty directory, keeping mode bits (setuid, setgid, sticky included),
//! ownership, modification times, symlinks, hard links, device nodes, fifos and `SCHILY.xattr.*`
//! extended attributes. The tar must end with its end-of-archive marker, and the compressed stream
//! is read to its end so that gzip's CRC and zstd's checksum are checked: a truncated or corrupt blob
//! is an error, never a half layer.
//!
//! Every write is relative to a directory file descriptor. Parent directories are looked up with
//! `openat2(RESOLVE_IN_ROOT)`, so a symlink that an earlier entry created is followed the way it
//! would be inside the container (`a -> /etc` then `a/passwd` writes `<layer>/etc/passwd`), and the
//! kernel guarantees the walk never leaves the layer directory. The last component of an entry is
//! never followed: it is created with `O_EXCL`, `mknodat`, `symlinkat` or `linkat`, after removing
//! whatever an earlier entry of the same layer left under that name. Names that are absolute or
//! contain `..` are refused outright. Needs Linux 5.6 or newer (`openat2`).
//!
//! Extended attributes named `trusted.overlay.*` inside a layer are dropped: they would let an image
//! steer overlayfs (redirects, metacopy, opacity) behind the runtime's back.
//!
//! # Whiteouts
//!
//! OCI layers mark deletions with files (image-spec `layer.md`, "Whiteouts"); overlayfs has its own
//! form, and each layer is converted while it is unpacked:
//!
//! | in the tar                | on disk                                                 |
//! |---------------------------|---------------------------------------------------------|
//! | `dir/.wh.NAME`            | character device 0:0 at `dir/NAME`                      |
//! | `dir/.wh..wh..opq`        | xattr `trusted.overlay.opaque=y` on `dir`               |
//! | `dir/.wh..wh.OTHER`       | skipped (aufs bookkeeping)                              |
//!
//! Nothing named `.wh.*` is left on disk. Setting `trusted.*` attributes needs `CAP_SYS_ADMIN`.
//!
//! # The store on disk
//!
//! ```text
//! <root>/lock                 flock(2) held by the one process that has the store open
//! <root>/<sha256 hex>/fs/     an unpacked layer, a lowerdir for overlayfs
//! <root>/l/<short>            symlink -> ../<sha256 hex>/fs (short paths for mount options)
//! <root>/.tmp/<unique>/fs     a layer being unpacked or removed; emptied by `LayerStore::open`
//! ```
//!
//! [`LayerStore::ensure`] unpacks into `.tmp`, calls `syncfs`, then `renameat2(RENAME_NOREPLACE)`
//! moves the whole directory to `<root>/<hex>`: a layer directory is either complete or absent,
//! even after a crash. Two callers racing on one digest both unpack; the loser of the rename deletes
//! its copy and returns the winner's. The blob's digest is trusted: the caller verifies it.
//!
//! # Mounting
//!
//! [`mount_overlay`] mounts `overlay` with `lowerdir=…[,upperdir=…,workdir=…],index=off`.
//! `index=off` (the kernel default unless built otherwise) keeps a lower layer usable by many
//! overlays with different uppers; no `userxattr`, `metacopy` or `redirect_dir` is asked for, so the
//! kernel defaults of Debian 12's 6.1 apply (the runtime runs as root in the initial user
//! namespace). Overlayfs refuses a single lower without an upper, so that case becomes a read-only
//! bind mount of the layer (whiteouts in a bottom layer hide nothing anyway).
//!
//! The whole option string must fit in one page (4095 bytes and a NUL). The process is
//! multi-threaded, so Docker's chdir-and-use-relative-paths trick is out; instead
//! [`LayerStore::mount`] names each layer by its short symlink `<root>/l/<first 12 hex>` (longer
//! prefixes on a collision, each link checked before use), about 40 bytes a layer with a typical
//! root: ~100 layers fit. [`mount_overlay`] itself takes any paths and fails with
//! [`LayerError::MountOptionsTooLong`] rather than letting the kernel truncate.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};
use tracing::{debug, info, warn};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";
/// The kernel copies mount data into one page, NUL included.
const MAX_MOUNT_DATA: usize = 4095;
const TMP_DIR: &str = ".tmp";
const LINK_DIR: &str = "l";
const LOCK_FILE: &str = "lock";
const SHORT_LINK_LEN: usize = 12;

/// Errors of layer unpacking, the layer store and overlay mounts.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The layer stream could not be read or decompressed.
    #[error("cannot read the layer stream, the blob is corrupt or truncated (fetch it again): {source}")]
    Read { source: io::Error },
    /// The tar ended before its end-of-archive marker.
    #[error("the layer stream ends before the tar end-of-archive marker: the blob is truncated, fetch it again")]
    Truncated,
    /// An entry name is absolute or climbs out with `..`.
    #[error("layer entry `{entry}` {reason}; refusing a layer that could write outside its directory")]
    UnsafePath { entry: PathBuf, reason: &'static str },
    /// An entry's parent goes through a symlink whose target does not exist in the layer.
    #[error(
        "layer entry `{entry}` goes through `{component}`, a symlink to a directory that is not in the layer; \
         refusing to create directories through it (the image is malformed)"
    )]
    BrokenParent { entry: PathBuf, component: PathBuf },
    /// An entry of a tar type that has no meaning in a layer.
    #[error("layer entry `{entry}` has tar type `{kind}`, which a layer cannot hold; the image is malformed")]
    UnsupportedEntry { entry: PathBuf, kind: char },
    /// An entry's header field is unreadable or out of range.
    #[error("layer entry `{entry}` has an invalid {field} in its tar header (the image is malformed): {source}")]
    Header { entry: PathBuf, field: &'static str, source: io::Error },
    /// A hard link points at nothing unpacked so far.
    #[error("layer entry `{entry}` is a hard link to `{target}`, which is not an earlier entry of the layer: {source}")]
    HardlinkTarget { entry: PathBuf, target: PathBuf, source: io::Error },
    /// Writing an entry to disk failed.
    #[error("cannot {op} for layer entry `{entry}` under {dest}: {source} (is the disk full, or not running as root?)")]
    Write { entry: PathBuf, dest: PathBuf, op: &'static str, source: io::Error },
    /// A digest that is not 64 lowercase hex characters.
    #[error("`{digest}` is not a sha256 digest in hex (expected 64 lowercase hex characters, without `sha256:`)")]
    InvalidDigest { digest: String },
    /// The layer is not unpacked in the store.
    #[error("layer {digest} is not unpacked in the store at {root}; unpack it with `ensure` first")]
    NotFound { digest: String, root: PathBuf },
    /// The caller's function that opens the layer blob failed.
    #[error("cannot open the blob of layer {digest}: {source}")]
    OpenBlob { digest: String, source: io::Error },
    /// A filesystem operation on the store itself failed.
    #[error("layer store: cannot {op} {path}: {source}; check that the directory is writable and on a local disk")]
    Store { op: &'static str, path: PathBuf, source: io::Error },
    /// Another process has the store open.
    #[error("the layer store at {root} is in use by another process; stop it or give this one another data directory")]
    StoreLocked { root: PathBuf },
    /// A path that cannot be written into overlay mount options.
    #[error("cannot use `{path}` in overlay mount options: {reason}")]
    MountPath { path: PathBuf, reason: &'static str },
    /// The overlay options exceed the page the kernel accepts.
    #[error(
        "overlay mount options are {len} bytes, over the kernel's limit of {max}: use fewer layers, or \
         `LayerStore::mount`, which names layers by short paths"
    )]
    MountOptionsTooLong { len: usize, max: usize },
    /// An overlay needs at least one lower layer.
    #[error("an overlay mount needs at least one lower layer")]
    NoLowerLayers,
    /// mount(2) failed.
    #[error("cannot mount {fstype} at {target} (options `{options}`): {source}; the kernel log (dmesg) says why")]
    Mount { fstype: &'static str, target: PathBuf, options: String, source: io::Error },
    /// umount2(2) failed.
    #[error("cannot unmount {target}: {source}")]
    Unmount { target: PathBuf, source: io::Error },
}

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
/// On error `dest` holds a partial layer: the caller deletes it ([`LayerStore::ensure`] does).
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

fn push_mount_path(data: &mut String, path: &Path) -> Result<(), LayerError> {
    let reason = match path.to_str() {
        None => "overlay paths must be valid UTF-8",
        Some(_) if !path.is_absolute() => "it must be an absolute path",
        Some(s) if s.contains([',', ':', '\\', '\0']) => {
            "it contains `,`, `:`, `\\` or NUL, which overlay options cannot carry"
        }
        Some(s) => {
            data.push_str(s);
            return Ok(());
        }
    };
    Err(LayerError::MountPath { path: path.to_path_buf(), reason })
}

/// The overlayfs option string for [`mount_overlay`], checked against the one-page limit.
pub fn overlay_options(lowers_top_first: &[PathBuf], upper: Option<(&Path, &Path)>) -> Result<String, LayerError> {
    if lowers_top_first.is_empty() {
        return Err(LayerError::NoLowerLayers);
    }
    let mut data = String::from("lowerdir=");
    for (i, lower) in lowers_top_first.iter().enumerate() {
        data.push_str(if i > 0 { ":" } else { "" });
        push_mount_path(&mut data, lower)?;
    }
    if let Some((upper, work)) = upper {
        data.push_str(",upperdir=");
        push_mount_path(&mut data, upper)?;
        data.push_str(",workdir=");
        push_mount_path(&mut data, work)?;
    }
    data.push_str(",index=off");
    if data.len() > MAX_MOUNT_DATA {
        return Err(LayerError::MountOptionsTooLong { len: data.len(), max: MAX_MOUNT_DATA });
    }
    Ok(data)
}

/// Mounts an overlay of `lowers_top_first` at `target`, writable through `upper` =
/// `(upperdir, workdir)` (same filesystem, workdir empty) or read-only when `None`. A single lower
/// without an upper becomes a read-only bind mount, since overlayfs needs two lowers then.
pub fn mount_overlay(
    target: &Path,
    lowers_top_first: &[PathBuf],
    upper: Option<(&Path, &Path)>,
) -> Result<(), LayerError> {
    let options = overlay_options(lowers_top_first, upper)?;
    let mount_err = |fstype, options: String| {
        move |e: Errno| LayerError::Mount { fstype, target: target.to_path_buf(), options, source: e.into() }
    };
    if let ([lower], None) = (lowers_top_first, upper) {
        rustix::mount::mount_bind(lower, target).map_err(mount_err("bind", format!("bind {}", lower.display())))?;
        if let Err(e) = rustix::mount::mount_remount(target, MountFlags::BIND | MountFlags::RDONLY, "") {
            let _ = rustix::mount::unmount(target, UnmountFlags::DETACH);
            return Err(mount_err("bind", "remount,bind,ro".to_owned())(e));
        }
        return Ok(());
    }
    // push_mount_path refused NUL, so this cannot fail; map it anyway rather than panic.
    let data = CString::new(options.as_str()).map_err(|_| mount_err("overlay", options.clone())(Errno::INVAL))?;
    let flags = if upper.is_none() { MountFlags::RDONLY } else { MountFlags::empty() };
    rustix::mount::mount("overlay", target, "overlay", flags, data.as_c_str())
        .map_err(mount_err("overlay", options))?;
    debug!(target = %target.display(), layers = lowers_top_first.len(), writable = upper.is_some(), "overlay mounted");
    Ok(())
}

/// Unmounts `target`; lazily (detached) if it is busy. Not mounted (or missing) is fine.
pub fn unmount(target: &Path) -> Result<(), LayerError> {
    let err = |e: Errno| LayerError::Unmount { target: target.to_path_buf(), source: e.into() };
    match rustix::mount::unmount(target, UnmountFlags::empty()) {
        Ok(()) | Err(Errno::INVAL | Errno::NOENT) => Ok(()),
        Err(Errno::BUSY) => {
            warn!(target = %target.display(), "mount busy; detaching it lazily");
            rustix::mount::unmount(target, UnmountFlags::DETACH).map_err(err)
        }
        Err(e) => Err(err(e)),
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
    fn layers_digest_validation() {
        assert!(validate_digest(&"0123456789abcdef".repeat(4)).is_ok());
        for bad in ["", "abc", &"A".repeat(64), &"g".repeat(64), &"a".repeat(65), &format!("/{}", "a".repeat(63))] {
            assert!(validate_digest(bad).is_err(), "{bad}");
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

    #[test]
    fn layers_short_names_grow_to_the_full_digest() {
        let digest = "ab".repeat(32);
        let names: Vec<&str> = LayerStore::short_names(&digest).collect();
        assert_eq!(names.first().map(|n| n.len()), Some(SHORT_LINK_LEN));
        assert_eq!(names.last(), Some(&digest.as_str()));
    }

    #[test]
    fn layers_options_over_a_page_are_refused() {
        let lowers: Vec<PathBuf> =
            (0..200).map(|i| PathBuf::from(format!("/var/lib/shoal/layers/{i:064}/fs"))).collect();
        let err = overlay_options(&lowers, None).unwrap_err();
        assert!(matches!(err, LayerError::MountOptionsTooLong { max: MAX_MOUNT_DATA, .. }), "{err}");
    }
}
