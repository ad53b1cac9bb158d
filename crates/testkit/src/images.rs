//! Image archives for tests, built in memory: a `docker save` archive and an OCI archive with
//! one small layer each. Digests are computed here, independently of Shoal's image code.

use sha2::{Digest as _, Sha256};
use std::path::Path;

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A layer tar holding `files`.
pub fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, *data).expect("in-memory tar");
    }
    b.into_inner().expect("in-memory tar")
}

fn config(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Env": ["PATH=/bin", "GREETING=hello"], "Cmd": ["/bin/app"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": diff_ids.iter().map(|d| format!("sha256:{d}")).collect::<Vec<_>>() },
    }))
    .expect("json")
}

fn append(b: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, name, data).expect("writing a test archive");
}

/// Writes a `docker save`-style archive (`manifest.json`, `<id>/layer.tar`, `<hex>.json`).
pub fn write_docker_archive(path: &Path, tag: &str, layers: &[Vec<u8>]) {
    let diffs: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    let cfg = config(&diffs);
    let cfg_name = format!("{}.json", sha(&cfg));
    let mut b = tar::Builder::new(std::fs::File::create(path).expect("create archive"));
    let mut names = Vec::new();
    for (l, d) in layers.iter().zip(&diffs) {
        let n = format!("{d}/layer.tar");
        append(&mut b, &n, l);
        names.push(n);
    }
    append(&mut b, &cfg_name, &cfg);
    let manifest = serde_json::to_vec(&serde_json::json!([{ "Config": cfg_name, "RepoTags": [tag], "Layers": names }]))
        .expect("json");
    append(&mut b, "manifest.json", &manifest);
    b.into_inner().expect("finish archive");
}

/// Writes an OCI archive (`oci-layout`, `index.json`, `blobs/sha256/…`); returns the manifest digest.
pub fn write_oci_archive(path: &Path, tag: &str, layers: &[Vec<u8>]) -> String {
    let diffs: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    let cfg = config(&diffs);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha(&cfg)), "size": cfg.len() },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{}", sha(l)), "size": l.len()
        })).collect::<Vec<_>>(),
    }))
    .expect("json");
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", sha(&manifest)),
            "size": manifest.len(), "annotations": { "org.opencontainers.image.ref.name": tag } }],
    }))
    .expect("json");
    let mut b = tar::Builder::new(std::fs::File::create(path).expect("create archive"));
    append(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    append(&mut b, "index.json", &index);
    for blob in layers.iter().chain([&cfg, &manifest]) {
        append(&mut b, &format!("blobs/sha256/{}", sha(blob)), blob);
    }
    b.into_inner().expect("finish archive");
    format!("sha256:{}", sha(&manifest))
}
