//! Importing an OCI image layout (an OCI archive, an OCI layout directory, or the OCI half of a
//! Docker ≥ 25 `docker save` archive).
//!
//! `oci-layout` must name a 1.x layout. From `index.json` one image is picked (by `--name` if an
//! entry carries that name, else `linux/amd64`, else the first real platform, else the first),
//! following nested indexes / docker manifest lists. The manifest and config are read into
//! memory and verified; the layers are streamed into the sink, then the config and manifest.
//!
//! An OCI manifest is stored byte for byte, so its digest stays the one in the archive. A
//! docker v2 manifest is converted to an OCI manifest with the same config and layers (the
//! media types change, so the manifest's digest does too).

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::archive::{Archive, Located};
use super::{Found, parse_json, put_bytes, put_files, verify};
use crate::BlobSink;
use crate::digest::Digest;
use crate::error::ImportError;
use crate::model::{
    ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, Descriptor, Format, Index, IndexEntry, MEDIA_OCI_CONFIG,
    MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, Manifest, OciLayout, Reference, docker, is_oci_layer, oci_layer_type,
};

/// How many image indexes deep import follows.
const MAX_INDEX_DEPTH: usize = 4;

/// The platform picked from a multi-platform index.
const PREFERRED_OS: &str = "linux";
const PREFERRED_ARCH: &str = "amd64";

/// Reads the OCI layout in `archive` and stores the image into `sink`.
pub(super) fn import(
    archive: &Archive,
    hint: Option<&Reference>,
    sink: &mut dyn BlobSink,
) -> Result<Found, ImportError> {
    let layout_loc = archive.locate("oci-layout")?;
    let layout: OciLayout = parse_json("oci-layout", "OCI layout file", &archive.read_metadata(&layout_loc)?)?;
    if !layout.image_layout_version.starts_with("1.") {
        return Err(ImportError::LayoutVersion {
            archive: archive.path().to_path_buf(),
            version: layout.image_layout_version,
        });
    }
    let index_loc = archive.locate("index.json")?;
    let index: Index = parse_json("index.json", "OCI image index", &archive.read_metadata(&index_loc)?)?;
    check_schema("index.json", index.schema_version)?;
    let top = choose(&index, hint, "index.json")?;
    let name = archive_name(top);

    // Follow nested indexes down to an image manifest.
    let mut entry = top.clone();
    let mut depth = 0;
    let (manifest_entry, manifest_bytes, media_type) = loop {
        let (bytes, blob_name) = read_blob(archive, &entry.digest, entry.size)?;
        let media_type = if entry.media_type.is_empty() { sniff(&bytes) } else { entry.media_type.clone() };
        match media_type.as_str() {
            MEDIA_OCI_MANIFEST | docker::MANIFEST => break (entry, bytes, media_type),
            MEDIA_OCI_INDEX | docker::MANIFEST_LIST => {
                depth += 1;
                if depth > MAX_INDEX_DEPTH {
                    return Err(ImportError::IndexTooDeep { entry: blob_name, limit: MAX_INDEX_DEPTH });
                }
                let nested: Index = parse_json(&blob_name, "image index", &bytes)?;
                check_schema(&blob_name, nested.schema_version)?;
                entry = choose(&nested, None, &blob_name)?.clone();
            }
            _ => return Err(ImportError::UnsupportedMediaType { entry: blob_name, media_type }),
        }
    };
    let manifest_name = blob_path(&manifest_entry.digest);
    let manifest: Manifest = parse_json(&manifest_name, "image manifest", &manifest_bytes)?;
    check_schema(&manifest_name, manifest.schema_version)?;

    let (config_bytes, config_name) = read_blob(archive, &manifest.config.digest, manifest.config.size)?;
    parse_json::<serde_json::Map<String, serde_json::Value>>(&config_name, "image config", &config_bytes)?;

    let keep = media_type == MEDIA_OCI_MANIFEST
        && manifest.config.media_type == MEDIA_OCI_CONFIG
        && manifest.layers.iter().all(|l| is_oci_layer(&l.media_type));
    let (manifest, manifest_bytes) = if keep { (manifest, manifest_bytes) } else { convert(&manifest_name, manifest)? };
    let manifest_desc = Descriptor {
        media_type: MEDIA_OCI_MANIFEST.to_string(),
        digest: if keep { manifest_entry.digest } else { Digest::of(&manifest_bytes) },
        size: manifest_bytes.len() as u64,
    };

    let mut wanted: Vec<(Located, Digest)> = Vec::with_capacity(manifest.layers.len());
    for layer in &manifest.layers {
        let name = blob_path(&layer.digest);
        let loc = archive.locate(&name)?;
        if loc.size != layer.size {
            return Err(ImportError::SizeMismatch { entry: name, expected: layer.size, actual: loc.size });
        }
        wanted.push((loc, layer.digest.clone()));
    }
    put_files(archive, sink, &wanted)?;
    put_bytes(sink, &config_name, &manifest.config.digest, &config_bytes)?;
    put_bytes(sink, &manifest_name, &manifest_desc.digest, &manifest_bytes)?;

    Ok(Found {
        name,
        format: if archive.is_dir() { Format::OciLayoutDir } else { Format::OciArchive },
        manifest: manifest_desc,
        config: manifest.config,
        layers: manifest.layers,
    })
}

/// `blobs/sha256/<hex>`, where an OCI layout keeps a blob.
fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// Reads a blob into memory and verifies it; returns it with its path (for messages).
fn read_blob(archive: &Archive, digest: &Digest, size: u64) -> Result<(Vec<u8>, String), ImportError> {
    let name = blob_path(digest);
    let loc = archive.locate(&name)?;
    if loc.size != size {
        return Err(ImportError::SizeMismatch { entry: name, expected: size, actual: loc.size });
    }
    let bytes = archive.read_metadata(&loc)?;
    verify(&name, &bytes, digest, size)?;
    Ok((bytes, name))
}

fn check_schema(entry: &str, version: u32) -> Result<(), ImportError> {
    if version == 2 { Ok(()) } else { Err(ImportError::SchemaVersion { entry: entry.to_string(), version }) }
}

/// The media type of a manifest or index whose descriptor did not say: its own `mediaType`,
/// else guessed from its shape.
fn sniff(bytes: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Shape {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<IgnoredAny>,
        config: Option<IgnoredAny>,
    }
    match serde_json::from_slice::<Shape>(bytes) {
        Ok(Shape { media_type: Some(m), .. }) => m,
        Ok(Shape { manifests: Some(_), .. }) => MEDIA_OCI_INDEX.to_string(),
        Ok(Shape { config: Some(_), .. }) => MEDIA_OCI_MANIFEST.to_string(),
        _ => "unknown".to_string(),
    }
}

/// Whether an index entry may point at an image (a manifest or a nested index).
fn is_image_entry(entry: &IndexEntry) -> bool {
    matches!(
        entry.media_type.as_str(),
        "" | MEDIA_OCI_MANIFEST | MEDIA_OCI_INDEX | docker::MANIFEST | docker::MANIFEST_LIST
    )
}

/// Picks the image of an index: the one named `hint`, else linux/amd64, else the first with a
/// real platform (not an attestation's `unknown/unknown`), else the first.
fn choose<'i>(index: &'i Index, hint: Option<&Reference>, entry: &str) -> Result<&'i IndexEntry, ImportError> {
    let images: Vec<&IndexEntry> = index.manifests.iter().filter(|m| is_image_entry(m)).collect();
    let named = |m: &&&IndexEntry| {
        hint.is_some_and(|h| {
            let full = h.to_string();
            [ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME].iter().any(|k| m.annotations.get(*k) == Some(&full))
        })
    };
    let amd64 = |m: &&&IndexEntry| {
        m.platform.as_ref().is_some_and(|p| p.os == PREFERRED_OS && p.architecture == PREFERRED_ARCH)
    };
    let real = |m: &&&IndexEntry| m.platform.as_ref().is_none_or(|p| p.os != "unknown" && p.architecture != "unknown");
    images
        .iter()
        .find(named)
        .or_else(|| images.iter().find(amd64))
        .or_else(|| images.iter().find(real))
        .or_else(|| images.first())
        .copied()
        .ok_or_else(|| ImportError::NoManifest { entry: entry.to_string() })
}

/// The name an index entry gives its image: the containerd name (a full `name:tag`), else the
/// OCI ref name if it is a full reference (a bare tag names no image).
fn archive_name(entry: &IndexEntry) -> Option<String> {
    if let Some(name) = entry.annotations.get(ANNOTATION_CONTAINERD_NAME) {
        return Some(name.clone());
    }
    entry.annotations.get(ANNOTATION_REF_NAME).filter(|r| r.contains('/') || r.contains(':')).cloned()
}

/// Converts a docker v2 manifest (or an OCI manifest with docker media types) to an OCI
/// manifest and serializes it.
fn convert(entry: &str, manifest: Manifest) -> Result<(Manifest, Vec<u8>), ImportError> {
    let unsupported = |media_type: &str| ImportError::UnsupportedMediaType {
        entry: entry.to_string(),
        media_type: media_type.to_string(),
    };
    let config_type = manifest.config.media_type.as_str();
    if config_type != MEDIA_OCI_CONFIG && config_type != docker::CONFIG {
        return Err(unsupported(config_type));
    }
    let config = Descriptor { media_type: MEDIA_OCI_CONFIG.to_string(), ..manifest.config };
    let layers = manifest
        .layers
        .into_iter()
        .map(|l| match oci_layer_type(&l.media_type) {
            Some(t) => Ok(Descriptor { media_type: t.to_string(), ..l }),
            None => Err(unsupported(&l.media_type)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let manifest = Manifest::oci(config, layers);
    let bytes = serde_json::to_vec(&manifest).expect("serializing a manifest of strings and numbers cannot fail");
    Ok((manifest, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Platform;
    use std::collections::BTreeMap;

    fn entry(arch: &str, os: &str, annotations: &[(&str, &str)]) -> IndexEntry {
        IndexEntry {
            media_type: MEDIA_OCI_MANIFEST.into(),
            digest: Digest::of(arch.as_bytes()),
            size: 1,
            platform: Some(Platform { architecture: arch.into(), os: os.into() }),
            annotations: annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        }
    }

    fn index(entries: Vec<IndexEntry>) -> Index {
        Index { schema_version: 2, media_type: None, manifests: entries }
    }

    #[test]
    fn choose_prefers_name_then_amd64_then_real_platforms() {
        let idx = index(vec![
            entry("unknown", "unknown", &[]),
            entry("arm64", "linux", &[(ANNOTATION_CONTAINERD_NAME, "app:2")]),
            entry("amd64", "linux", &[]),
        ]);
        assert_eq!(choose(&idx, None, "i").unwrap().platform.as_ref().unwrap().architecture, "amd64");
        let hint: Reference = "app:2".parse().unwrap();
        assert_eq!(choose(&idx, Some(&hint), "i").unwrap().platform.as_ref().unwrap().architecture, "arm64");
        let idx = index(vec![entry("unknown", "unknown", &[]), entry("arm64", "linux", &[])]);
        assert_eq!(choose(&idx, None, "i").unwrap().platform.as_ref().unwrap().architecture, "arm64");
        assert!(matches!(choose(&index(vec![]), None, "i"), Err(ImportError::NoManifest { .. })));
    }

    #[test]
    fn archive_name_ignores_bare_tags() {
        assert_eq!(archive_name(&entry("a", "b", &[(ANNOTATION_REF_NAME, "latest")])), None);
        assert_eq!(archive_name(&entry("a", "b", &[(ANNOTATION_REF_NAME, "x/y:1")])).as_deref(), Some("x/y:1"));
        let both = entry("a", "b", &[(ANNOTATION_REF_NAME, "1"), (ANNOTATION_CONTAINERD_NAME, "docker.io/x/y:1")]);
        assert_eq!(archive_name(&both).as_deref(), Some("docker.io/x/y:1"));
    }

    #[test]
    fn sniff_guesses_from_shape() {
        assert_eq!(sniff(br#"{"manifests":[]}"#), MEDIA_OCI_INDEX);
        assert_eq!(sniff(br#"{"config":{}}"#), MEDIA_OCI_MANIFEST);
        assert_eq!(sniff(br#"{"mediaType":"x","config":{}}"#), "x");
        assert_eq!(sniff(b"nope"), "unknown");
    }
}
