//! OCI images for Shoal: import and export, independent of where blobs are stored.
//!
//! An image is an OCI manifest, a config and layers, each a blob named by its sha256 digest.
//! [`import_archive`] reads a `docker save` archive, an OCI archive (or OCI layout directory),
//! or a plain root-filesystem tarball (like `docker import`), verifies every blob against its
//! digest, and hands each blob to a [`BlobSink`] (Shoal's content store); it returns the
//! image's descriptors. [`export_oci_archive`] writes an OCI archive that skopeo, podman and
//! docker can load, reading blobs from a [`BlobSource`].
//!
//! Nothing here does network I/O or knows about Shoal's store or transfer protocol.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod digest;
mod error;
mod export;
mod import;
mod model;

pub use digest::{Digest, DigestError, HashingReader, HashingWriter};
pub use error::{ExportError, ImportError, ReferenceError, SinkError, SourceError};
pub use export::export_oci_archive;
pub use import::{ImportOptions, import_archive};
pub use model::{
    Descriptor, Format, Imported, MEDIA_OCI_CONFIG, MEDIA_OCI_INDEX, MEDIA_OCI_LAYER_TAR, MEDIA_OCI_LAYER_TAR_GZIP,
    MEDIA_OCI_LAYER_TAR_ZSTD, MEDIA_OCI_MANIFEST, Reference,
};

use std::io::Read;

/// Where imported blobs go (Shoal's content store implements it).
pub trait BlobSink {
    /// Whether a blob with this digest is already stored (import may then skip reading it,
    /// but must still have verified any bytes it did read).
    fn contains(&self, digest: &Digest) -> bool;

    /// Stores the bytes read from `r`. The sink must check that their sha256 equals `digest`
    /// and, if given, that their length equals `size`, and must keep nothing on mismatch or on
    /// any read error (returning [`SinkError::DigestMismatch`] / [`SinkError::SizeMismatch`]).
    fn put(&mut self, digest: &Digest, size: Option<u64>, r: &mut dyn Read) -> Result<(), SinkError>;
}

/// Where exported blobs come from.
pub trait BlobSource {
    /// The blob with this digest.
    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + '_>, SourceError>;
}
