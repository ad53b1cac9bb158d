//! `shoal image import`: read an image archive, verify it, and store its blobs.
//!
//! [`import_archive`] opens the archive ([`archive::Archive`] indexes a tar once, or reads a
//! directory), picks a reader by what the archive holds, and turns the reader's findings into
//! [`Imported`]:
//!
//! - `oci-layout` present: an OCI layout ([`oci`]), whether or not a docker `manifest.json` sits
//!   beside it (Docker ≥ 25 writes both);
//! - else `manifest.json`: a `docker save` archive ([`docker`]), whose manifest is generated;
//! - else any other tar: a root-filesystem tarball ([`rootfs`]), imported as one layer under
//!   `--name`.
//!
//! Each reader reads the small JSON documents into memory (bounded, and verified against their
//! digests before they are trusted), then streams the layers through [`BlobSink::put`], and
//! stores the config and the manifest last: when the manifest is in the sink, so is the rest
//! of the image.

mod archive;
mod docker;
mod oci;
mod rootfs;

use std::io::{self, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use serde::de::DeserializeOwned;

use crate::BlobSink;
use crate::digest::{Digest, HashingReader, HashingWriter};
use crate::error::{ImportError, SinkError, What};
use crate::model::{Descriptor, Format, Imported, Reference};
use archive::{Archive, Located, read_up_to};

/// The first two bytes of a gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// How to import.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// `--name NAME:TAG`: the image's name. Required for root-filesystem tarballs; for image
    /// archives it replaces the name the archive carries (and picks the image with that name
    /// when the archive holds several).
    pub name: Option<String>,
}

/// Imports the image in the archive (or OCI layout directory) at `path` into `sink`.
///
/// Every blob is verified against its digest and size on its way into the sink; blobs the
/// sink already has are not read again. On error, the sink holds at most blobs that were fully
/// verified (never the manifest of a partly stored image).
pub fn import_archive(path: &Path, opts: &ImportOptions, sink: &mut dyn BlobSink) -> Result<Imported, ImportError> {
    let name = match &opts.name {
        Some(name) => {
            Some(name.parse::<Reference>().map_err(|source| ImportError::InvalidName { name: name.clone(), source })?)
        }
        None => None,
    };
    let archive = Archive::open(path)?;
    let found = if archive.has("oci-layout") {
        let mut found = oci::import(&archive, name.as_ref(), sink)?;
        if found.name.is_none() && name.is_none() && archive.has("manifest.json") {
            // Only a fallback for the name: the image itself came from the verified OCI layout,
            // so a broken manifest.json beside it just means no name.
            found.name = docker::first_repo_tag(&archive).unwrap_or(None);
        }
        found
    } else if archive.has("manifest.json") {
        docker::import(&archive, name.as_ref(), sink)?
    } else if archive.is_dir() {
        return Err(ImportError::NotALayout { archive: path.to_path_buf() });
    } else {
        if name.is_none() {
            return Err(ImportError::NameRequired { archive: path.to_path_buf() });
        }
        rootfs::import(&archive, sink)?
    };
    let reference = match (name, found.name) {
        (Some(name), _) => Some(name),
        (None, Some(archive_name)) => Some(
            archive_name.parse().map_err(|source| ImportError::ArchiveName { name: archive_name.clone(), source })?,
        ),
        (None, None) => None,
    };
    Ok(Imported {
        reference,
        format: found.format,
        manifest: found.manifest,
        config: found.config,
        layers: found.layers,
    })
}

/// What a format reader found and stored.
struct Found {
    /// The name the archive gives the image, unparsed.
    name: Option<String>,
    format: Format,
    manifest: Descriptor,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// Parses a metadata document.
fn parse_json<T: DeserializeOwned>(entry: &str, what: What, bytes: &[u8]) -> Result<T, ImportError> {
    serde_json::from_slice(bytes).map_err(|source| ImportError::Json { entry: entry.to_string(), what, source })
}

/// Checks bytes read into memory against their descriptor.
fn verify(entry: &str, bytes: &[u8], digest: &Digest, size: u64) -> Result<(), ImportError> {
    if bytes.len() as u64 != size {
        return Err(ImportError::SizeMismatch { entry: entry.to_string(), expected: size, actual: bytes.len() as u64 });
    }
    let actual = Digest::of(bytes);
    if &actual != digest {
        return Err(ImportError::DigestMismatch { entry: entry.to_string(), expected: digest.clone(), actual });
    }
    Ok(())
}

/// Stores verified in-memory bytes (a config or manifest) unless the sink has them.
fn put_bytes(sink: &mut dyn BlobSink, entry: &str, digest: &Digest, bytes: &[u8]) -> Result<(), ImportError> {
    if sink.contains(digest) {
        return Ok(());
    }
    let mut reader = bytes;
    sink.put(digest, Some(bytes.len() as u64), &mut reader).map_err(|e| sink_error(entry, digest, e))
}

/// Streams each wanted archive file into the sink under its expected digest (once per digest,
/// skipping digests the sink has).
fn put_files(archive: &Archive, sink: &mut dyn BlobSink, wanted: &[(Located, Digest)]) -> Result<(), ImportError> {
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<(Located, Digest)> = wanted
        .iter()
        .filter(|(loc, digest)| !sink.contains(digest) && seen.insert((loc.entry.clone(), digest.clone())))
        .cloned()
        .collect();
    archive.stream(&unique, |loc, digest, r| put_reader(archive, loc, sink, digest, r))
}

/// Streams one file into the sink, telling read errors (the archive's fault) apart from store
/// errors.
fn put_reader(
    archive: &Archive,
    loc: &Located,
    sink: &mut dyn BlobSink,
    digest: &Digest,
    r: &mut dyn Read,
) -> Result<(), ImportError> {
    if sink.contains(digest) {
        return Ok(());
    }
    let mut tracked = Tracked { inner: r, error: None };
    match sink.put(digest, Some(loc.size), &mut tracked) {
        Ok(()) => Ok(()),
        Err(e) => match tracked.error.take() {
            Some(read_error) => Err(archive.read_error(loc, read_error)),
            None => Err(sink_error(&loc.entry, digest, e)),
        },
    }
}

/// A sink error on the blob read from `entry`, as an [`ImportError`].
fn sink_error(entry: &str, digest: &Digest, e: SinkError) -> ImportError {
    match e {
        SinkError::DigestMismatch { expected, actual } => {
            ImportError::DigestMismatch { entry: entry.to_string(), expected, actual }
        }
        SinkError::SizeMismatch { expected, actual } => {
            ImportError::SizeMismatch { entry: entry.to_string(), expected, actual }
        }
        source => ImportError::Sink { digest: digest.clone(), source },
    }
}

/// A reader that remembers the first error its inner reader returned.
struct Tracked<'a> {
    inner: &'a mut dyn Read,
    error: Option<io::Error>,
}

impl Read for Tracked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            if e.kind() != io::ErrorKind::Interrupted && self.error.is_none() {
                self.error = Some(io::Error::new(e.kind(), e.to_string()));
            }
        })
    }
}

/// The digests of a layer blob.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LayerHashes {
    /// sha256 of the blob as stored (compressed or not).
    digest: Digest,
    /// Its length.
    size: u64,
    /// sha256 of the uncompressed tar.
    diff_id: Digest,
    /// Whether the blob is gzip-compressed.
    gzip: bool,
}

/// Hashes a layer as stored and, if it is gzip-compressed, decompressed.
fn hash_layer(r: &mut dyn Read) -> io::Result<LayerHashes> {
    let mut outer = HashingReader::new(r);
    let mut magic = [0u8; 2];
    let n = read_up_to(&mut outer, &mut magic)?;
    let gzip = n == 2 && magic == GZIP_MAGIC;
    let diff_id = if gzip {
        // The decoder gets the magic bytes again, then the rest through `outer`.
        let mut decoder = MultiGzDecoder::new((&magic[..]).chain(&mut outer));
        let mut tar = HashingWriter::new(io::sink());
        io::copy(&mut decoder, &mut tar)?;
        io::copy(&mut decoder.into_inner(), &mut io::sink())?;
        Some(tar.finish().0)
    } else {
        io::copy(&mut outer, &mut io::sink())?;
        None
    };
    let (digest, size) = outer.finish();
    Ok(LayerHashes { diff_id: diff_id.unwrap_or_else(|| digest.clone()), digest, size, gzip })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn hash_layer_sees_through_gzip() {
        let tar = b"not really a tar, but bytes".repeat(100);
        let plain = hash_layer(&mut &tar[..]).unwrap();
        assert_eq!(
            plain,
            LayerHashes { digest: Digest::of(&tar), size: tar.len() as u64, diff_id: Digest::of(&tar), gzip: false }
        );

        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&tar).unwrap();
        let gz = enc.finish().unwrap();
        let hashed = hash_layer(&mut &gz[..]).unwrap();
        assert_eq!(
            hashed,
            LayerHashes { digest: Digest::of(&gz), size: gz.len() as u64, diff_id: Digest::of(&tar), gzip: true }
        );

        let truncated = &gz[..gz.len() - 10];
        assert!(hash_layer(&mut &truncated[..]).is_err());
        assert_eq!(hash_layer(&mut &b""[..]).unwrap().size, 0);
    }
}
