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
//!
//! # Layout of this module
//!
//! `unpack` holds [`unpack_layer`] and the whiteout conversion, `store` the [`LayerStore`],
//! `mount` the overlay option string and the mounts.

mod mount;
mod store;
mod unpack;

pub use mount::{mount_overlay, overlay_options, unmount};
pub use store::{LayerStore, validate_digest};
pub use unpack::{Compression, LayerStats, unpack_layer};

use std::io;
use std::path::PathBuf;

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
