//! The errors of import, export, and the blob store traits.
//!
//! Every message says what went wrong and what the user can do about it. Paths inside an archive
//! are called `entry`; the archive (or directory) itself is `archive`.

use std::io;
use std::path::PathBuf;

use crate::digest::Digest;

/// Why a string is not a valid `NAME:TAG` image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The name is empty.
    #[error("the image name is empty: give it as NAME:TAG, e.g. `myapp:1.0`")]
    Empty,
    /// The name breaks docker's naming rules.
    #[error(
        "`{name}` is not a valid image name: use lowercase letters, digits and the separators `.`, `_`, `-`, \
         `/`, optionally after a registry host (`registry.example:5000/app`)"
    )]
    Name { name: String },
    /// The name is longer than docker allows.
    #[error("the image name `{name}` is longer than {max} characters; choose a shorter one")]
    NameTooLong { name: String, max: usize },
    /// The tag breaks docker's tag rules.
    #[error(
        "`{tag}` is not a valid tag: use up to 128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`"
    )]
    Tag { tag: String },
    /// A `NAME@sha256:…` reference was given.
    #[error("`{reference}` names an image by digest; Shoal names images by tag: give NAME:TAG")]
    DigestReference { reference: String },
}

/// Why a [`crate::BlobSink`] refused or failed to store a blob.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The bytes do not hash to the digest they were stored under.
    #[error(
        "the blob's content has digest {actual}, not the expected {expected}: the data is corrupt or was tampered with"
    )]
    DigestMismatch { expected: Digest, actual: Digest },
    /// The bytes are not as long as their descriptor says.
    #[error("the blob is {actual} bytes long, not the expected {expected}: the data is truncated or corrupt")]
    SizeMismatch { expected: u64, actual: u64 },
    /// The store ran out of disk space or quota.
    #[error("the blob store is full ({message}); free disk space or raise the store's quota, then retry")]
    Full { message: String },
    /// Reading the blob or writing it to the store failed.
    #[error("cannot store the blob: {0}")]
    Io(#[from] io::Error),
}

/// Why a [`crate::BlobSource`] cannot provide a blob.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The store does not have the blob.
    #[error("blob {digest} is not in the store; pull or import the image again")]
    NotFound { digest: Digest },
    /// Reading the blob from the store failed.
    #[error("cannot read the blob from the store: {0}")]
    Io(#[from] io::Error),
}

/// What a metadata document was expected to be, for error messages.
pub(crate) type What = &'static str;

/// Why an archive could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The archive file or directory cannot be opened or read.
    #[error("cannot read `{archive}`: {source}; check the path and its permissions")]
    Open { archive: PathBuf, source: io::Error },
    /// The file is neither a tar archive nor gzip-compressed tar.
    #[error(
        "`{archive}` is not an image archive: expected a tar file (optionally gzip-compressed) from \
         `docker save`, `skopeo copy … oci-archive:…` or a root-filesystem tarball"
    )]
    NotAnArchive { archive: PathBuf },
    /// The directory is not an OCI image layout.
    #[error(
        "the directory `{archive}` is not an OCI image layout (it has no `oci-layout` and `index.json`); \
         give an OCI layout directory or an archive file"
    )]
    NotALayout { archive: PathBuf },
    /// The tar or gzip stream is truncated or corrupt.
    #[error("`{archive}` is truncated or corrupt ({source}); re-create it (e.g. with `docker save`) or copy it again")]
    Corrupt { archive: PathBuf, source: io::Error },
    /// An entry's data runs past the end of the file.
    #[error("`{archive}` is truncated: entry `{entry}` runs past the end of the file; re-create it or copy it again")]
    Truncated { archive: PathBuf, entry: String },
    /// The tar ends without its end-of-archive marker.
    #[error(
        "`{archive}` is truncated: it ends without tar's end-of-archive marker, so files may be missing; \
         re-create it or copy it again"
    )]
    NoEndMarker { archive: PathBuf },
    /// The archive contains no files at all.
    #[error("`{archive}` is an empty archive; nothing to import")]
    Empty { archive: PathBuf },
    /// An entry name (or a link inside an image archive) leads outside the archive.
    #[error(
        "entry `{entry}` in `{archive}` escapes the archive (absolute path or `..`); refusing to import it: \
         the archive is malformed or malicious"
    )]
    PathTraversal { archive: PathBuf, entry: String },
    /// A file the image needs is not in the archive.
    #[error("`{entry}` is missing from `{archive}`: the archive is incomplete; re-create it (e.g. with `docker save`)")]
    Missing { archive: PathBuf, entry: String },
    /// An entry the image needs is a directory, device, or a link that cannot be followed.
    #[error(
        "`{entry}` in `{archive}` is not a regular file (or a link to one inside the archive); the archive is malformed"
    )]
    NotAFile { archive: PathBuf, entry: String },
    /// A metadata document is larger than import reads into memory.
    #[error("`{entry}` is {size} bytes, more than the {limit}-byte limit for image metadata; the archive is malformed")]
    MetadataTooLarge { entry: String, size: u64, limit: u64 },
    /// A metadata document is not the JSON it should be.
    #[error("`{entry}` is not a valid {what}: {source}; the archive is corrupt or not an image archive")]
    Json { entry: String, what: What, source: serde_json::Error },
    /// A blob's content does not match its digest.
    #[error(
        "`{entry}` has digest {actual}, but {expected} was expected: the archive is corrupt or was tampered with; \
         re-create it (e.g. with `docker save`)"
    )]
    DigestMismatch { entry: String, expected: Digest, actual: Digest },
    /// A blob's length does not match its descriptor.
    #[error(
        "`{entry}` is {actual} bytes, but its descriptor says {expected}: the archive is corrupt or was tampered with; \
         re-create it"
    )]
    SizeMismatch { entry: String, expected: u64, actual: u64 },
    /// The `oci-layout` file names a layout version Shoal does not know.
    #[error("`{archive}` uses OCI layout version {version}; Shoal reads version 1.x layouts")]
    LayoutVersion { archive: PathBuf, version: String },
    /// A manifest or index has a schema version other than 2.
    #[error(
        "`{entry}` has schemaVersion {version}; only schema version 2 manifests can be imported (re-save with a current docker or skopeo)"
    )]
    SchemaVersion { entry: String, version: u32 },
    /// A blob's media type is not one of a container image.
    #[error(
        "`{entry}` has media type `{media_type}`, which is not part of a container image Shoal can import \
         (OCI or Docker v2 image manifests with tar layers)"
    )]
    UnsupportedMediaType { entry: String, media_type: String },
    /// The index lists no image manifest.
    #[error("`{entry}` lists no image manifest; the archive holds no image")]
    NoManifest { entry: String },
    /// Indexes nest deeper than import follows.
    #[error("`{entry}` nests image indexes more than {limit} deep; the archive is malformed")]
    IndexTooDeep { entry: String, limit: usize },
    /// The config lists a different number of layers than the manifest.
    #[error(
        "the image config lists {config_layers} layers but the manifest lists {manifest_layers}: the archive is corrupt; \
         re-create it with `docker save`"
    )]
    LayerCount { config_layers: usize, manifest_layers: usize },
    /// A rootfs tarball was given without a name.
    #[error(
        "`{archive}` is a plain filesystem tarball, not a docker or OCI image archive, so it carries no image name; \
         pass `--name NAME:TAG`"
    )]
    NameRequired { archive: PathBuf },
    /// `--name` is not a valid reference.
    #[error("invalid `--name {name}`: {source}")]
    InvalidName { name: String, source: ReferenceError },
    /// The name the archive carries is not a valid reference.
    #[error(
        "the archive names its image `{name}`, which is not valid ({source}); pass `--name NAME:TAG` to name it yourself"
    )]
    ArchiveName { name: String, source: ReferenceError },
    /// Reading a blob's bytes from the archive failed part-way.
    #[error("cannot read `{entry}` from `{archive}`: {source}; the archive is truncated or corrupt, re-create it")]
    Read { archive: PathBuf, entry: String, source: io::Error },
    /// The blob store failed to store a blob.
    #[error("cannot store blob {digest}: {source}")]
    Sink { digest: Digest, source: SinkError },
}

/// Why an image could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The manifest descriptor is not an OCI image manifest.
    #[error("{digest} has media type `{media_type}`; only OCI image manifests can be exported (re-import the image)")]
    NotAnOciManifest { digest: Digest, media_type: String },
    /// The store cannot provide a blob.
    #[error("cannot export blob {digest}: {source}")]
    Source { digest: Digest, source: SourceError },
    /// Reading a blob from the store failed part-way.
    #[error("cannot read blob {digest} from the store: {source}")]
    Read { digest: Digest, source: io::Error },
    /// The stored blob does not hash to its digest.
    #[error(
        "the store's copy of {expected} is corrupt (its content hashes to {actual}); remove the image and import or pull it again"
    )]
    DigestMismatch { expected: Digest, actual: Digest },
    /// The stored blob is not as long as its descriptor says.
    #[error(
        "the store's copy of {digest} is {actual} bytes, not {expected}; remove the image and import or pull it again"
    )]
    SizeMismatch { digest: Digest, expected: u64, actual: u64 },
    /// The manifest is larger than export reads into memory.
    #[error("manifest {digest} is {size} bytes, more than the {limit}-byte limit; it is not an image manifest")]
    ManifestTooLarge { digest: Digest, size: u64, limit: u64 },
    /// The stored manifest is not a valid OCI manifest.
    #[error(
        "manifest {digest} in the store is not a valid image manifest: {source}; remove the image and import it again"
    )]
    Manifest { digest: Digest, source: serde_json::Error },
    /// Writing the archive failed.
    #[error(
        "cannot write the archive: {0}; check free space and permissions at the destination (the partial file is unusable)"
    )]
    Write(#[source] io::Error),
}
