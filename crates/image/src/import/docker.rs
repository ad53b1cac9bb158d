//! Importing a `docker save` archive through its `manifest.json` (Docker < 25 layout:
//! `<hex>.json` config, `<id>/layer.tar` layers, possibly symlinked to each other).
//!
//! The archive has no manifest, and nothing names a layer by its digest except the config's
//! `rootfs.diff_ids` (digests of the uncompressed layers). So: the config is hashed (and checked
//! against its file name when that is `<hex>.json` or `blobs/sha256/<hex>`); each layer is
//! probed, and an uncompressed layer is stored under its diff_id (the sink verifies it), while
//! a compressed one is hashed first (both compressed and decompressed, checking the diff_id).
//! Then an OCI manifest is generated, always byte-identical for the same image, and stored
//! after the config.

use super::archive::{Archive, Located, read_up_to};
use super::{Found, GZIP_MAGIC, LayerHashes, hash_layer, parse_json, put_bytes, put_files};
use crate::BlobSink;
use crate::digest::Digest;
use crate::error::ImportError;
use crate::model::{
    ConfigRootfs, Descriptor, DockerManifestEntry, Format, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER_TAR,
    MEDIA_OCI_LAYER_TAR_GZIP, MEDIA_OCI_MANIFEST, Manifest, Reference,
};

const MANIFEST_JSON: &str = "manifest.json";

/// Reads `manifest.json` in `archive` and stores the image into `sink`.
pub(super) fn import(
    archive: &Archive,
    hint: Option<&Reference>,
    sink: &mut dyn BlobSink,
) -> Result<Found, ImportError> {
    let images = read_manifest_json(archive)?;
    let hint = hint.map(|h| h.to_string());
    let image = images
        .iter()
        .find(|i| hint.as_ref().is_some_and(|h| i.repo_tags.iter().flatten().any(|t| t == h)))
        .or_else(|| images.first())
        .ok_or_else(|| ImportError::NoManifest { entry: MANIFEST_JSON.to_string() })?;

    let config_loc = archive.locate(&image.config)?;
    let config_bytes = archive.read_metadata(&config_loc)?;
    let config_digest = Digest::of(&config_bytes);
    if let Some(expected) = digest_from_name(&image.config)
        && expected != config_digest
    {
        return Err(ImportError::DigestMismatch { entry: image.config.clone(), expected, actual: config_digest });
    }
    let config: ConfigRootfs = parse_json(&image.config, "image config", &config_bytes)?;
    let diff_ids = config.rootfs.map(|r| r.diff_ids);
    if let Some(diff_ids) = &diff_ids
        && diff_ids.len() != image.layers.len()
    {
        return Err(ImportError::LayerCount { config_layers: diff_ids.len(), manifest_layers: image.layers.len() });
    }

    // Probe each layer; a gzip archive streams them in archive order, so results are kept by
    // position in the manifest.
    let mut probes: Vec<(Located, (usize, Option<Digest>))> = Vec::with_capacity(image.layers.len());
    for (i, layer) in image.layers.iter().enumerate() {
        let diff_id = diff_ids.as_ref().and_then(|d| d.get(i)).cloned();
        probes.push((archive.locate(layer)?, (i, diff_id)));
    }
    let mut found: Vec<Option<Probe>> = probes.iter().map(|_| None).collect();
    archive.stream(&probes, |loc, (i, diff_id), r| {
        let probe = probe_layer(r, diff_id.as_ref()).map_err(|e| archive.read_error(loc, e))?;
        if let (Some(expected), Some(actual)) = (diff_id, &probe.diff_id)
            && expected != actual
        {
            return Err(ImportError::DigestMismatch {
                entry: loc.entry.clone(),
                expected: expected.clone(),
                actual: actual.clone(),
            });
        }
        if let Some(slot) = found.get_mut(*i) {
            *slot = Some(probe);
        }
        Ok(())
    })?;
    let mut layers: Vec<(Located, Descriptor)> = Vec::with_capacity(probes.len());
    for ((loc, _), probe) in probes.into_iter().zip(found) {
        let probe = probe
            .ok_or_else(|| ImportError::Missing { archive: archive.path().to_path_buf(), entry: loc.entry.clone() })?;
        let media_type = if probe.gzip { MEDIA_OCI_LAYER_TAR_GZIP } else { MEDIA_OCI_LAYER_TAR };
        let descriptor = Descriptor { media_type: media_type.to_string(), digest: probe.digest, size: loc.size };
        layers.push((loc, descriptor));
    }

    let wanted: Vec<(Located, Digest)> = layers.iter().map(|(loc, d)| (loc.clone(), d.digest.clone())).collect();
    put_files(archive, sink, &wanted)?;
    put_bytes(sink, &image.config, &config_digest, &config_bytes)?;

    let config =
        Descriptor { media_type: MEDIA_OCI_CONFIG.to_string(), digest: config_digest, size: config_bytes.len() as u64 };
    let layers: Vec<Descriptor> = layers.into_iter().map(|(_, d)| d).collect();
    let manifest = Manifest::oci(config.clone(), layers.clone());
    let manifest_bytes =
        serde_json::to_vec(&manifest).expect("serializing a manifest of strings and numbers cannot fail");
    let manifest_digest = Digest::of(&manifest_bytes);
    put_bytes(sink, "generated manifest", &manifest_digest, &manifest_bytes)?;

    Ok(Found {
        name: image.repo_tags.iter().flatten().next().cloned(),
        format: Format::DockerArchive,
        manifest: Descriptor {
            media_type: MEDIA_OCI_MANIFEST.to_string(),
            digest: manifest_digest,
            size: manifest_bytes.len() as u64,
        },
        config,
        layers,
    })
}

/// The first tag of the first image of `manifest.json` (for a Docker ≥ 25 archive whose
/// `index.json` carries no name).
pub(super) fn first_repo_tag(archive: &Archive) -> Result<Option<String>, ImportError> {
    let images = read_manifest_json(archive)?;
    Ok(images.first().and_then(|i| i.repo_tags.iter().flatten().next().cloned()))
}

fn read_manifest_json(archive: &Archive) -> Result<Vec<DockerManifestEntry>, ImportError> {
    let loc = archive.locate(MANIFEST_JSON)?;
    parse_json(MANIFEST_JSON, "docker manifest.json", &archive.read_metadata(&loc)?)
}

/// The digest a docker archive's config file name states: `<hex>.json` or `blobs/sha256/<hex>`.
fn digest_from_name(name: &str) -> Option<Digest> {
    let file = name.rsplit('/').next().unwrap_or(name);
    let hex = file.strip_suffix(".json").unwrap_or(file);
    Digest::from_hex(hex).ok()
}

/// What probing a layer found.
struct Probe {
    /// The blob's digest.
    digest: Digest,
    gzip: bool,
    /// The digest of the uncompressed layer, if it was computed (not for an uncompressed
    /// layer with a known diff_id: the sink checks that one while storing it).
    diff_id: Option<Digest>,
}

/// Probes a layer: an uncompressed layer with a known diff_id is only sniffed; anything else is
/// hashed in full.
fn probe_layer(r: &mut dyn std::io::Read, diff_id: Option<&Digest>) -> std::io::Result<Probe> {
    let mut magic = [0u8; 2];
    let n = read_up_to(r, &mut magic)?;
    let gzip = n == 2 && magic == GZIP_MAGIC;
    if let (false, Some(diff_id)) = (gzip, diff_id) {
        return Ok(Probe { digest: diff_id.clone(), gzip, diff_id: None });
    }
    let mut rest = std::io::Read::chain(&magic[..n], r);
    let LayerHashes { digest, diff_id, gzip, .. } = hash_layer(&mut rest)?;
    Ok(Probe { digest, gzip, diff_id: Some(diff_id) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_state_digests() {
        let d = Digest::of(b"x");
        assert_eq!(digest_from_name(&format!("{}.json", d.hex())), Some(d.clone()));
        assert_eq!(digest_from_name(&format!("blobs/sha256/{}", d.hex())), Some(d));
        assert_eq!(digest_from_name("config.json"), None);
    }
}
