//! The image vocabulary: media types, descriptors, image references, and the JSON documents
//! (OCI manifest and index, docker `manifest.json`) that import reads and export writes.
//!
//! The JSON structs are deliberately minimal: they read only the fields Shoal needs (unknown
//! fields are ignored) and, when Shoal generates a document, serialize in a fixed field order
//! with no optional noise, so the same image always gives the same bytes and digest.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::ReferenceError;

/// Media type of an OCI image manifest.
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image config.
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an uncompressed OCI layer.
pub const MEDIA_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Media type of a gzip-compressed OCI layer.
pub const MEDIA_OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Media type of a zstd-compressed OCI layer (accepted in OCI manifests, never generated).
pub const MEDIA_OCI_LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Media type of an OCI image index.
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Docker's (pre-OCI) media types, accepted on import and converted to the OCI ones.
pub(crate) mod docker {
    pub(crate) const MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub(crate) const MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub(crate) const CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub(crate) const LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
    pub(crate) const LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub(crate) const FOREIGN_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
}

/// Non-distributable OCI layer types (deprecated by OCI, still valid and still seen).
const MEDIA_OCI_NONDIST_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
const MEDIA_OCI_NONDIST_TAR_GZIP: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
const MEDIA_OCI_NONDIST_TAR_ZSTD: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";

/// Annotation holding an image's tag (or, written by some tools, its full reference).
pub(crate) const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation holding an image's full `name:tag` (containerd, Docker ≥ 25).
pub(crate) const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Whether `media_type` is an OCI layer type Shoal keeps as is.
pub(crate) fn is_oci_layer(media_type: &str) -> bool {
    matches!(
        media_type,
        MEDIA_OCI_LAYER_TAR
            | MEDIA_OCI_LAYER_TAR_GZIP
            | MEDIA_OCI_LAYER_TAR_ZSTD
            | MEDIA_OCI_NONDIST_TAR
            | MEDIA_OCI_NONDIST_TAR_GZIP
            | MEDIA_OCI_NONDIST_TAR_ZSTD
    )
}

/// The OCI layer type for a docker (or OCI) layer type, if it is a layer type at all.
pub(crate) fn oci_layer_type(media_type: &str) -> Option<&'static str> {
    Some(match media_type {
        MEDIA_OCI_LAYER_TAR | docker::LAYER_TAR => MEDIA_OCI_LAYER_TAR,
        MEDIA_OCI_LAYER_TAR_GZIP | docker::LAYER_TAR_GZIP => MEDIA_OCI_LAYER_TAR_GZIP,
        MEDIA_OCI_LAYER_TAR_ZSTD => MEDIA_OCI_LAYER_TAR_ZSTD,
        MEDIA_OCI_NONDIST_TAR => MEDIA_OCI_NONDIST_TAR,
        MEDIA_OCI_NONDIST_TAR_GZIP | docker::FOREIGN_LAYER_TAR_GZIP => MEDIA_OCI_NONDIST_TAR_GZIP,
        MEDIA_OCI_NONDIST_TAR_ZSTD => MEDIA_OCI_NONDIST_TAR_ZSTD,
        _ => return None,
    })
}

/// A pointer to a blob: its media type, digest and size (the OCI content descriptor, reduced
/// to the fields Shoal uses).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Descriptor {
    /// What the blob is, e.g. [`MEDIA_OCI_MANIFEST`].
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// The sha256 of the blob's bytes.
    pub digest: Digest,
    /// The blob's length in bytes.
    pub size: u64,
}

/// An image name and tag, `NAME:TAG`, validated like docker does (`registry.example:5000/team/app:1.2`).
///
/// The name is kept as given: `nginx` stays `nginx` (it is not expanded to
/// `docker.io/library/nginx`). A missing tag means `latest`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reference {
    name: String,
    tag: String,
}

/// The tag a reference without one gets.
const DEFAULT_TAG: &str = "latest";
/// Docker's limit on the length of a repository name.
const MAX_NAME_LEN: usize = 255;
/// Docker's limit on the length of a tag.
const MAX_TAG_LEN: usize = 128;

impl Reference {
    /// A reference from a name and a tag, both validated.
    pub fn new(name: &str, tag: &str) -> Result<Reference, ReferenceError> {
        validate_name(name)?;
        validate_tag(tag)?;
        Ok(Reference { name: name.to_string(), tag: tag.to_string() })
    }

    /// The repository name, e.g. `registry.example:5000/team/app`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tag, e.g. `1.2` or `latest`.
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

fn validate_tag(tag: &str) -> Result<(), ReferenceError> {
    let bad = || ReferenceError::Tag { tag: tag.to_string() };
    let mut bytes = tag.bytes();
    let first = bytes.next().ok_or_else(bad)?;
    if tag.len() > MAX_TAG_LEN || !(first.is_ascii_alphanumeric() || first == b'_') {
        return Err(bad());
    }
    if bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) { Ok(()) } else { Err(bad()) }
}

fn validate_name(name: &str) -> Result<(), ReferenceError> {
    let bad = || ReferenceError::Name { name: name.to_string() };
    if name.is_empty() {
        return Err(ReferenceError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ReferenceError::NameTooLong { name: name.to_string(), max: MAX_NAME_LEN });
    }
    let mut components = name.split('/').peekable();
    let first = components.next().ok_or_else(bad)?;
    // Like docker: the first component is a registry host when more follow and it looks like
    // one (has a dot or a port, or is `localhost`).
    let is_host = components.peek().is_some() && (first.contains('.') || first.contains(':') || first == "localhost");
    if is_host {
        if !valid_host(first) {
            return Err(bad());
        }
    } else if !valid_path_component(first) {
        return Err(bad());
    }
    for component in components {
        if !valid_path_component(component) {
            return Err(bad());
        }
    }
    Ok(())
}

/// `host[:port]`, host being dot-separated labels of letters, digits and inner dashes.
fn valid_host(host: &str) -> bool {
    let (host, port) = match host.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (host, None),
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    port_ok && host.split('.').all(label_ok)
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn valid_path_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        // A separator run; the character after it is alphanumeric (checked by the next
        // iteration, and `last` is alphanumeric).
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains('@') {
            return Err(ReferenceError::DigestReference { reference: s.to_string() });
        }
        let last_slash = s.rfind('/');
        let (name, tag) = match s.rfind(':') {
            // A colon after the last slash separates the tag; one before it is a registry port.
            Some(colon) if last_slash.is_none_or(|slash| colon > slash) => (&s[..colon], &s[colon + 1..]),
            _ => (s, DEFAULT_TAG),
        };
        Reference::new(name, tag)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

impl Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The kind of archive an image was imported from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// A `docker save` archive read through its `manifest.json` (Docker < 25, or other tools
    /// that write only that). Docker ≥ 25 archives also hold an OCI layout and import as
    /// [`Format::OciArchive`].
    DockerArchive,
    /// A tar (optionally gzip-compressed) holding an OCI image layout.
    OciArchive,
    /// A directory holding an OCI image layout.
    OciLayoutDir,
    /// A plain root-filesystem tarball, imported as a one-layer image.
    Rootfs,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::DockerArchive => "docker-archive",
            Format::OciArchive => "oci-archive",
            Format::OciLayoutDir => "oci-layout",
            Format::Rootfs => "rootfs",
        })
    }
}

/// What an import stored: the image's name (if it has one) and its descriptors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The image's name: `--name` if given, else the name the archive carries, if any.
    pub reference: Option<Reference>,
    /// The kind of archive it came from.
    pub format: Format,
    /// The OCI manifest (media type always [`MEDIA_OCI_MANIFEST`]).
    pub manifest: Descriptor,
    /// The config (media type always [`MEDIA_OCI_CONFIG`]).
    pub config: Descriptor,
    /// The layers, bottom first, exactly as the manifest lists them.
    pub layers: Vec<Descriptor>,
}

/// An image manifest as read (OCI or docker v2: the same shape) and as generated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub(crate) schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub(crate) media_type: Option<String>,
    pub(crate) config: Descriptor,
    pub(crate) layers: Vec<Descriptor>,
}

impl Manifest {
    /// An OCI manifest for this config and these layers.
    pub(crate) fn oci(config: Descriptor, layers: Vec<Descriptor>) -> Manifest {
        Manifest { schema_version: 2, media_type: Some(MEDIA_OCI_MANIFEST.to_string()), config, layers }
    }
}

/// An image index (`index.json`, or a nested multi-platform index / docker manifest list).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Index {
    #[serde(rename = "schemaVersion")]
    pub(crate) schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub(crate) media_type: Option<String>,
    pub(crate) manifests: Vec<IndexEntry>,
}

/// One entry of an index: a descriptor with its platform and annotations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct IndexEntry {
    #[serde(rename = "mediaType", default)]
    pub(crate) media_type: String,
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) annotations: BTreeMap<String, String>,
}

/// The platform of an index entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub(crate) architecture: String,
    #[serde(default)]
    pub(crate) os: String,
}

/// The `oci-layout` file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OciLayout {
    #[serde(rename = "imageLayoutVersion")]
    pub(crate) image_layout_version: String,
}

/// One image of a docker `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DockerManifestEntry {
    #[serde(rename = "Config")]
    pub(crate) config: String,
    #[serde(rename = "RepoTags", default)]
    pub(crate) repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    pub(crate) layers: Vec<String>,
}

/// The part of an image config import checks: the layers' uncompressed digests.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ConfigRootfs {
    #[serde(default)]
    pub(crate) rootfs: Option<Rootfs>,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Rootfs {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) diff_ids: Vec<Digest>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(s: &str) -> Result<(String, String), ReferenceError> {
        s.parse::<Reference>().map(|r| (r.name().to_string(), r.tag().to_string()))
    }

    #[test]
    fn parses_names_and_tags_like_docker() {
        let ok = |s: &str, name: &str, tag: &str| assert_eq!(r(s).unwrap(), (name.into(), tag.into()), "{s}");
        ok("nginx", "nginx", "latest");
        ok("nginx:1.25", "nginx", "1.25");
        ok("library/nginx:1.25-alpine", "library/nginx", "1.25-alpine");
        ok("docker.io/library/nginx:latest", "docker.io/library/nginx", "latest");
        ok("localhost:5000/app", "localhost:5000/app", "latest");
        ok("localhost:5000/app:v_1.0", "localhost:5000/app", "v_1.0");
        ok("Registry.Example.com/team/my_app__x:__x", "Registry.Example.com/team/my_app__x", "__x");
        ok("a---b/c.d:T", "a---b/c.d", "T");
        ok("localhost:5000", "localhost", "5000");
        assert_eq!("app:1".parse::<Reference>().unwrap().to_string(), "app:1");
        assert_eq!("app".parse::<Reference>().unwrap().to_string(), "app:latest");
    }

    #[test]
    fn rejects_what_docker_rejects() {
        for bad in [
            "",
            ":tag",
            "Nginx",
            "nginx:",
            "nginx:-x",
            "nginx:.x",
            "a//b",
            "/a",
            "a/",
            "a..b",
            "a___b",
            "-a",
            "a-",
            "a/b/:t",
            "ex ample",
            "a:b:c",
            "host:port/x",
            "host:123456/x",
            "a/-b.com/c",
        ] {
            assert!(r(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(matches!(r("nginx@sha256:abc"), Err(ReferenceError::DigestReference { .. })));
        assert!(matches!(r(&"a".repeat(256)), Err(ReferenceError::NameTooLong { .. })));
        assert!(matches!(r(&format!("a:{}", "t".repeat(129))), Err(ReferenceError::Tag { .. })));
    }

    #[test]
    fn reference_serde_is_the_string_form() {
        let reference: Reference = "x/y:z".parse().unwrap();
        assert_eq!(serde_json::to_string(&reference).unwrap(), "\"x/y:z\"");
        assert_eq!(serde_json::from_str::<Reference>("\"x/y:z\"").unwrap(), reference);
    }

    #[test]
    fn descriptor_uses_oci_field_names() {
        let d = Descriptor { media_type: MEDIA_OCI_CONFIG.into(), digest: Digest::of(b"{}"), size: 2 };
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!(r#"{{"mediaType":"{MEDIA_OCI_CONFIG}","digest":"{}","size":2}}"#, d.digest));
        assert_eq!(serde_json::from_str::<Descriptor>(&json).unwrap(), d);
    }

    #[test]
    fn layer_types_convert_from_docker() {
        assert_eq!(oci_layer_type(docker::LAYER_TAR_GZIP), Some(MEDIA_OCI_LAYER_TAR_GZIP));
        assert_eq!(oci_layer_type(docker::LAYER_TAR), Some(MEDIA_OCI_LAYER_TAR));
        assert_eq!(oci_layer_type(MEDIA_OCI_CONFIG), None);
        assert!(is_oci_layer(MEDIA_OCI_LAYER_TAR_ZSTD));
        assert!(!is_oci_layer(docker::LAYER_TAR_GZIP));
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_display_round_trips(s in "[a-zA-Z0-9._:/@-]{0,40}") {
            if let Ok(reference) = s.parse::<Reference>() {
                prop_assert_eq!(reference.to_string().parse::<Reference>().unwrap(), reference);
            }
        }
    }
}
