//! Importing a plain root-filesystem tarball (like `docker import`) as a one-layer image.
//!
//! The file itself, compressed or not, is the layer. Its diff_id is the sha256 of the
//! uncompressed tar. The config and manifest are generated with no timestamps, so the same
//! tarball always gives the same image digest.

use serde::Serialize;

use super::archive::{Archive, Located};
use super::{Found, LayerHashes, hash_layer, put_bytes, put_reader};
use crate::BlobSink;
use crate::digest::Digest;
use crate::error::ImportError;
use crate::model::{
    Descriptor, Format, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER_TAR, MEDIA_OCI_LAYER_TAR_GZIP, MEDIA_OCI_MANIFEST, Manifest,
    Rootfs,
};

/// The generated image config (field order is the serialized order).
#[derive(Serialize)]
struct Config {
    architecture: &'static str,
    os: &'static str,
    config: serde_json::Map<String, serde_json::Value>,
    rootfs: Rootfs,
    history: Vec<History>,
}

#[derive(Serialize)]
struct History {
    created_by: &'static str,
}

/// Stores the tarball `archive` as a one-layer image.
pub(super) fn import(archive: &Archive, sink: &mut dyn BlobSink) -> Result<Found, ImportError> {
    let whole = |size| Located::whole_file("(the whole tarball)".to_string(), size);
    let hashes = archive.stream_raw(|r| {
        hash_layer(r).map_err(|source| ImportError::Corrupt { archive: archive.path().to_path_buf(), source })
    })?;
    let LayerHashes { digest, size, diff_id, gzip } = hashes;
    let layer = Descriptor {
        media_type: if gzip { MEDIA_OCI_LAYER_TAR_GZIP } else { MEDIA_OCI_LAYER_TAR }.to_string(),
        digest,
        size,
    };
    let config = Config {
        architecture: "amd64",
        os: "linux",
        config: serde_json::Map::new(),
        rootfs: Rootfs { kind: "layers".to_string(), diff_ids: vec![diff_id] },
        history: vec![History { created_by: "shoal image import" }],
    };
    let config_bytes = serde_json::to_vec(&config).expect("serializing a config of strings cannot fail");
    let config = Descriptor {
        media_type: MEDIA_OCI_CONFIG.to_string(),
        digest: Digest::of(&config_bytes),
        size: config_bytes.len() as u64,
    };
    let manifest = Manifest::oci(config.clone(), vec![layer.clone()]);
    let manifest_bytes =
        serde_json::to_vec(&manifest).expect("serializing a manifest of strings and numbers cannot fail");
    let manifest_digest = Digest::of(&manifest_bytes);

    archive.stream_raw(|r| put_reader(archive, &whole(size), sink, &layer.digest, r))?;
    put_bytes(sink, "generated config", &config.digest, &config_bytes)?;
    put_bytes(sink, "generated manifest", &manifest_digest, &manifest_bytes)?;
    Ok(Found {
        name: None,
        format: Format::Rootfs,
        manifest: Descriptor {
            media_type: MEDIA_OCI_MANIFEST.to_string(),
            digest: manifest_digest,
            size: manifest_bytes.len() as u64,
        },
        config,
        layers: vec![layer],
    })
}
