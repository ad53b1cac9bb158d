//! `shoal image export`: write an image as an OCI archive that skopeo, podman and docker load.
//!
//! The archive is an uncompressed tar holding an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`) plus a docker `manifest.json` that points at the same blobs, so
//! `docker load` (before and after Docker 25), `podman load` and `skopeo … oci-archive:FILE`
//! all accept it. `index.json` names the image twice, as containerd and Docker ≥ 25 expect:
//! `org.opencontainers.image.ref.name` = the tag, `io.containerd.image.name` = `name:tag`.
//!
//! Output is deterministic: entries sorted by path, mtime 0, uid/gid 0, files 0644 and
//! directories 0755, JSON serialized in a fixed order. Blobs stream from the [`BlobSource`]
//! straight into the tar; each is checked against its descriptor's size and digest (the tar
//! header needs the size before the bytes). On error the output is incomplete and must be
//! discarded.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use crate::BlobSource;
use crate::digest::{Digest, HashingReader};
use crate::error::ExportError;
use crate::model::{
    ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, Descriptor, DockerManifestEntry, Index, IndexEntry,
    MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, Manifest, OciLayout, Reference,
};

/// The largest manifest export reads into memory.
const MANIFEST_LIMIT: u64 = 8 << 20;
/// Tar block size.
const BLOCK: usize = 512;
/// Copy buffer size.
const CHUNK: usize = 64 * 1024;

/// Writes the image `reference` whose manifest is `manifest` as an OCI archive to `out`,
/// reading blobs from `src`.
///
/// `out` receives many small writes (tar headers, padding): give it a buffered writer. On
/// error, what was written is an incomplete archive and must be discarded.
pub fn export_oci_archive(
    reference: &Reference,
    manifest: &Descriptor,
    src: &dyn BlobSource,
    out: &mut dyn Write,
) -> Result<(), ExportError> {
    if manifest.media_type != MEDIA_OCI_MANIFEST {
        return Err(ExportError::NotAnOciManifest {
            digest: manifest.digest.clone(),
            media_type: manifest.media_type.clone(),
        });
    }
    let manifest_bytes = read_manifest(src, manifest)?;
    let parsed: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|source| ExportError::Manifest { digest: manifest.digest.clone(), source })?;

    // Every blob once, sorted by digest (= by path); the manifest comes from memory.
    let mut blobs: BTreeMap<&Digest, u64> = BTreeMap::new();
    for d in std::iter::once(&parsed.config).chain(&parsed.layers) {
        blobs.entry(&d.digest).or_insert(d.size);
    }
    blobs.remove(&manifest.digest);

    let docker = vec![DockerManifestEntry {
        config: blob_path(&parsed.config.digest),
        repo_tags: Some(vec![reference.to_string()]),
        layers: parsed.layers.iter().map(|l| blob_path(&l.digest)).collect(),
    }];
    let annotations = BTreeMap::from([
        (ANNOTATION_CONTAINERD_NAME.to_string(), reference.to_string()),
        (ANNOTATION_REF_NAME.to_string(), reference.tag().to_string()),
    ]);
    let index = Index {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_INDEX.to_string()),
        manifests: vec![IndexEntry {
            media_type: MEDIA_OCI_MANIFEST.to_string(),
            digest: manifest.digest.clone(),
            size: manifest.size,
            platform: None,
            annotations,
        }],
    };
    let layout = OciLayout { image_layout_version: "1.0.0".to_string() };

    let mut tar = TarWriter { out };
    tar.dir("blobs/")?;
    tar.dir("blobs/sha256/")?;
    let mut manifest_written = false;
    for (digest, size) in blobs {
        if !manifest_written && manifest.digest < *digest {
            tar.file("blobs/sha256/", manifest.digest.hex(), &manifest_bytes)?;
            manifest_written = true;
        }
        tar.blob(src, digest, size)?;
    }
    if !manifest_written {
        tar.file("blobs/sha256/", manifest.digest.hex(), &manifest_bytes)?;
    }
    tar.file("", "index.json", &json(&index))?;
    tar.file("", "manifest.json", &json(&docker))?;
    tar.file("", "oci-layout", &json(&layout))?;
    tar.finish()
}

/// Serializes one of Shoal's own JSON structs (strings, numbers, maps with string keys).
fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("serializing structs of strings and numbers cannot fail")
}

fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// Reads and verifies the manifest.
fn read_manifest(src: &dyn BlobSource, manifest: &Descriptor) -> Result<Vec<u8>, ExportError> {
    let digest = &manifest.digest;
    if manifest.size > MANIFEST_LIMIT {
        return Err(ExportError::ManifestTooLarge {
            digest: digest.clone(),
            size: manifest.size,
            limit: MANIFEST_LIMIT,
        });
    }
    let reader = src.open(digest).map_err(|source| ExportError::Source { digest: digest.clone(), source })?;
    let mut bytes = Vec::with_capacity(usize::try_from(manifest.size).unwrap_or(0));
    reader
        .take(MANIFEST_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ExportError::Read { digest: digest.clone(), source })?;
    if bytes.len() as u64 != manifest.size {
        return Err(ExportError::SizeMismatch {
            digest: digest.clone(),
            expected: manifest.size,
            actual: bytes.len() as u64,
        });
    }
    let actual = Digest::of(&bytes);
    if &actual != digest {
        return Err(ExportError::DigestMismatch { expected: digest.clone(), actual });
    }
    Ok(bytes)
}

/// Writes a deterministic ustar stream.
struct TarWriter<'a> {
    out: &'a mut dyn Write,
}

impl TarWriter<'_> {
    fn header(&mut self, path: &str, size: u64, dir: bool) -> Result<(), ExportError> {
        let mut h = tar::Header::new_ustar();
        h.set_path(path).map_err(ExportError::Write)?;
        h.set_size(size);
        h.set_mode(if dir { 0o755 } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(if dir { tar::EntryType::Directory } else { tar::EntryType::Regular });
        h.set_cksum();
        self.out.write_all(h.as_bytes()).map_err(ExportError::Write)
    }

    fn pad(&mut self, size: u64) -> Result<(), ExportError> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem]).map_err(ExportError::Write)?;
        }
        Ok(())
    }

    fn dir(&mut self, path: &str) -> Result<(), ExportError> {
        self.header(path, 0, true)
    }

    fn file(&mut self, dir: &str, name: &str, bytes: &[u8]) -> Result<(), ExportError> {
        self.header(&format!("{dir}{name}"), bytes.len() as u64, false)?;
        self.out.write_all(bytes).map_err(ExportError::Write)?;
        self.pad(bytes.len() as u64)
    }

    /// Streams a blob from `src`, checking it is exactly `size` bytes with this digest.
    fn blob(&mut self, src: &dyn BlobSource, digest: &Digest, size: u64) -> Result<(), ExportError> {
        let reader = src.open(digest).map_err(|source| ExportError::Source { digest: digest.clone(), source })?;
        self.header(&blob_path(digest), size, false)?;
        let read_err = |source| ExportError::Read { digest: digest.clone(), source };
        let mut reader = HashingReader::new(reader);
        let mut buf = vec![0u8; CHUNK];
        let mut remaining = size;
        while remaining > 0 {
            let want = usize::try_from(remaining).unwrap_or(CHUNK).min(CHUNK);
            let n = match reader.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(ExportError::SizeMismatch {
                        digest: digest.clone(),
                        expected: size,
                        actual: size - remaining,
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_err(e)),
            };
            self.out.write_all(&buf[..n]).map_err(ExportError::Write)?;
            remaining -= n as u64;
        }
        let extra = io::copy(&mut reader, &mut io::sink()).map_err(read_err)?;
        if extra > 0 {
            return Err(ExportError::SizeMismatch { digest: digest.clone(), expected: size, actual: size + extra });
        }
        let (actual, _) = reader.finish();
        if &actual != digest {
            return Err(ExportError::DigestMismatch { expected: digest.clone(), actual });
        }
        self.pad(size)
    }

    /// Ends the archive with two zero blocks.
    fn finish(self) -> Result<(), ExportError> {
        self.out.write_all(&[0u8; 2 * BLOCK]).map_err(ExportError::Write)?;
        self.out.flush().map_err(ExportError::Write)
    }
}
