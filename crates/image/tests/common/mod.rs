//! Test helpers: an in-memory blob store that really verifies what it is given, and builders
//! for the archives `docker save`, `skopeo copy … oci-archive:` and `tar` produce.
#![allow(dead_code)] // each test crate uses a different part
#![allow(unreachable_pub)] // `pub` here means "shared by the test crates"

use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::json;
use shoal_image::{
    BlobSink, BlobSource, Descriptor, Digest, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER_TAR, MEDIA_OCI_LAYER_TAR_GZIP,
    MEDIA_OCI_MANIFEST, SinkError, SourceError,
};

/// Blobs in memory, keyed by digest; `put` verifies digest and size and keeps nothing on mismatch.
#[derive(Default, Debug)]
pub struct MemStore {
    pub blobs: HashMap<Digest, Vec<u8>>,
    /// How many blobs `put` stored.
    pub puts: usize,
}

impl BlobSink for MemStore {
    fn contains(&self, digest: &Digest) -> bool {
        self.blobs.contains_key(digest)
    }

    fn put(&mut self, digest: &Digest, size: Option<u64>, r: &mut dyn Read) -> Result<(), SinkError> {
        let mut buf = Vec::new();
        r.read_to_end(&mut buf)?;
        if let Some(size) = size
            && size != buf.len() as u64
        {
            return Err(SinkError::SizeMismatch { expected: size, actual: buf.len() as u64 });
        }
        let actual = Digest::of(&buf);
        if &actual != digest {
            return Err(SinkError::DigestMismatch { expected: digest.clone(), actual });
        }
        self.puts += 1;
        self.blobs.insert(actual, buf);
        Ok(())
    }
}

impl BlobSource for MemStore {
    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + '_>, SourceError> {
        match self.blobs.get(digest) {
            Some(b) => Ok(Box::new(Cursor::new(b.as_slice()))),
            None => Err(SourceError::NotFound { digest: digest.clone() }),
        }
    }
}

/// One tar entry to build.
#[derive(Debug, Clone)]
pub enum Item {
    File(String, Vec<u8>),
    Dir(String),
    Symlink(String, String),
    /// A file whose name is written as is, bypassing the tar crate's checks (for `..` names).
    RawName(String, Vec<u8>),
}

pub fn file(name: &str, data: impl Into<Vec<u8>>) -> Item {
    Item::File(name.to_string(), data.into())
}

/// A tar of `items`, in order, with fixed metadata.
pub fn tar(items: &[Item]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for item in items {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match item {
            Item::File(name, data) => {
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, &data[..]).unwrap();
            }
            Item::Dir(name) => {
                h.set_mode(0o755);
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, name, &[][..]).unwrap();
            }
            Item::Symlink(name, target) => {
                h.set_mode(0o777);
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, name, target).unwrap();
            }
            Item::RawName(name, data) => {
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                let field = &mut h.as_old_mut().name;
                field[..name.len()].copy_from_slice(name.as_bytes());
                h.set_cksum();
                b.append(&h, &data[..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

pub fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

/// Writes `bytes` to `dir/name`.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Writes `items` as files into the directory `dir` (an OCI layout directory).
pub fn write_dir(dir: &Path, items: &[Item]) {
    for item in items {
        if let Item::File(name, data) = item {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, data).unwrap();
        }
    }
}

/// A small image: two layers (tar or gzip'd tar), a docker-style config.
#[derive(Debug, Clone)]
pub struct Image {
    /// The layer blobs as stored in the archive.
    pub layers: Vec<Vec<u8>>,
    pub diff_ids: Vec<Digest>,
    pub gzip: bool,
    pub config: Vec<u8>,
}

impl Image {
    pub fn new(gzip_layers: bool) -> Image {
        let l1 = tar(&[
            Item::Dir("etc/".into()),
            file("etc/hostname", "shoal\n"),
            file("bin/hello", "#!/bin/sh\necho hello\n"),
        ]);
        let l2 = tar(&[file("app/main.txt", "layer two\n".repeat(50))]);
        let diff_ids = vec![Digest::of(&l1), Digest::of(&l2)];
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/hello"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": "test"}, {"created_by": "test 2"}],
        }))
        .unwrap();
        let layers = if gzip_layers { vec![gzip(&l1), gzip(&l2)] } else { vec![l1, l2] };
        Image { layers, diff_ids, gzip: gzip_layers, config }
    }

    pub fn config_digest(&self) -> Digest {
        Digest::of(&self.config)
    }

    pub fn layer_descriptors(&self) -> Vec<Descriptor> {
        let media = if self.gzip { MEDIA_OCI_LAYER_TAR_GZIP } else { MEDIA_OCI_LAYER_TAR };
        self.layers.iter().map(|l| desc(media, l)).collect()
    }

    pub fn config_descriptor(&self) -> Descriptor {
        desc(MEDIA_OCI_CONFIG, &self.config)
    }

    /// A `docker save` archive in the old layout: `<hex>.json`, `<id>/layer.tar`; the second
    /// image id's layer is a symlink when `share` (docker does that for identical layers).
    pub fn docker_old(&self, tags: &[&str]) -> Vec<Item> {
        let cfg = format!("{}.json", self.config_digest().hex());
        let ids: Vec<String> = (0..self.layers.len()).map(|i| format!("{:064x}", i + 1)).collect();
        let manifest = json!([{
            "Config": cfg,
            "RepoTags": tags,
            "Layers": ids.iter().map(|id| format!("{id}/layer.tar")).collect::<Vec<_>>(),
        }]);
        let mut items = vec![file(&cfg, self.config.clone())];
        for (id, layer) in ids.iter().zip(&self.layers) {
            items.push(Item::Dir(format!("{id}/")));
            items.push(file(&format!("{id}/VERSION"), "1.0"));
            items.push(file(&format!("{id}/json"), "{}"));
            items.push(file(&format!("{id}/layer.tar"), layer.clone()));
        }
        items.push(file("manifest.json", serde_json::to_vec(&manifest).unwrap()));
        items.push(file("repositories", "{}"));
        items
    }

    /// The OCI manifest of this image, with the given media types.
    pub fn oci_manifest(&self, manifest_type: &str, config_type: &str, layer_type: &str) -> Vec<u8> {
        let layers: Vec<_> = self
            .layers
            .iter()
            .map(|l| json!({"mediaType": layer_type, "digest": Digest::of(l), "size": l.len()}))
            .collect();
        serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": self.config_digest(), "size": self.config.len()},
            "layers": layers,
        }))
        .unwrap()
    }

    /// An OCI layout holding `manifest` (and this image's blobs), with an index.json entry
    /// carrying `annotations`.
    pub fn oci_layout(&self, manifest: &[u8], annotations: &[(&str, &str)]) -> Vec<Item> {
        let ann: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": media_type_of(manifest),
                "digest": Digest::of(manifest),
                "size": manifest.len(),
                "annotations": ann,
            }],
        });
        let mut items = vec![
            file("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#),
            file("index.json", serde_json::to_vec(&index).unwrap()),
            Item::Dir("blobs/sha256/".into()),
            blob(manifest),
            blob(&self.config),
        ];
        items.extend(self.layers.iter().map(|l| blob(l)));
        items
    }

    /// A Docker ≥ 25 `docker save` archive: an OCI layout plus a manifest.json pointing into it.
    pub fn docker_25(&self, name: &str, tag: &str) -> (Vec<Item>, Vec<u8>) {
        let media = if self.gzip { MEDIA_OCI_LAYER_TAR_GZIP } else { MEDIA_OCI_LAYER_TAR };
        let manifest = self.oci_manifest(MEDIA_OCI_MANIFEST, MEDIA_OCI_CONFIG, media);
        let full = format!("{name}:{tag}");
        let mut items = self
            .oci_layout(&manifest, &[("io.containerd.image.name", &full), ("org.opencontainers.image.ref.name", tag)]);
        let docker = json!([{
            "Config": format!("blobs/sha256/{}", self.config_digest().hex()),
            "RepoTags": [format!("{name}:{tag}")],
            "Layers": self.layers.iter().map(|l| format!("blobs/sha256/{}", Digest::of(l).hex())).collect::<Vec<_>>(),
        }]);
        items.push(file("manifest.json", serde_json::to_vec(&docker).unwrap()));
        (items, manifest)
    }
}

pub fn desc(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor { media_type: media_type.to_string(), digest: Digest::of(bytes), size: bytes.len() as u64 }
}

pub fn blob(bytes: &[u8]) -> Item {
    file(&format!("blobs/sha256/{}", Digest::of(bytes).hex()), bytes.to_vec())
}

fn media_type_of(doc: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(doc).unwrap();
    v["mediaType"].as_str().unwrap_or_default().to_string()
}

/// Checks with oci-spec (independent of shoal-image's own structs) that the stored manifest is
/// an OCI manifest naming exactly `config` and `layers`, that the config parses as an OCI
/// config, and that every blob is in the store.
pub fn assert_stored_image(store: &MemStore, manifest: &Descriptor, config: &Descriptor, layers: &[Descriptor]) {
    assert_eq!(manifest.media_type, MEDIA_OCI_MANIFEST);
    assert_eq!(config.media_type, MEDIA_OCI_CONFIG);
    let bytes = store.blobs.get(&manifest.digest).expect("manifest stored");
    assert_eq!(bytes.len() as u64, manifest.size);
    let parsed = oci_spec::image::ImageManifest::from_reader(&bytes[..]).expect("a valid OCI manifest");
    assert_eq!(parsed.schema_version(), 2);
    assert_eq!(parsed.media_type().as_ref().map(|m| m.to_string()).as_deref(), Some(MEDIA_OCI_MANIFEST));
    let as_ours = |d: &oci_spec::image::Descriptor| Descriptor {
        media_type: d.media_type().to_string(),
        digest: d.digest().to_string().parse().unwrap(),
        size: d.size(),
    };
    assert_eq!(&as_ours(parsed.config()), config);
    let parsed_layers: Vec<Descriptor> = parsed.layers().iter().map(as_ours).collect();
    assert_eq!(parsed_layers, layers);
    let cfg = store.blobs.get(&config.digest).expect("config stored");
    oci_spec::image::ImageConfiguration::from_reader(&cfg[..]).expect("a valid OCI config");
    for l in layers {
        let b = store.blobs.get(&l.digest).expect("layer stored");
        assert_eq!(b.len() as u64, l.size);
    }
}
