//! `export_oci_archive`: round trips through import, byte-for-byte determinism, the layout
//! docker/podman/skopeo expect, and refusal of a corrupt store.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::io::{self, Read, Write};
use std::process::Command;

use common::*;
use shoal_image::{
    Descriptor, Digest, ExportError, Format, ImportOptions, Imported, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER_TAR_GZIP,
    MEDIA_OCI_MANIFEST, Reference, SourceError, export_oci_archive, import_archive,
};

fn import_items(items: &[Item], store: &mut MemStore) -> Imported {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "in.tar", &tar(items));
    import_archive(&path, &ImportOptions::default(), store).unwrap()
}

fn export(reference: &str, manifest: &Descriptor, store: &MemStore) -> Result<Vec<u8>, ExportError> {
    let reference: Reference = reference.parse().unwrap();
    let mut out = Vec::new();
    export_oci_archive(&reference, manifest, store, &mut out)?;
    Ok(out)
}

/// The entries of a tar: (path, mode, mtime, uid, gid, bytes).
fn entries(bytes: &[u8]) -> Vec<(String, u32, u64, u64, u64, Vec<u8>)> {
    let mut archive = tar::Archive::new(bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            (path, h.mode().unwrap(), h.mtime().unwrap(), h.uid().unwrap(), h.gid().unwrap(), data)
        })
        .collect()
}

fn docker_image() -> (MemStore, Imported) {
    let mut store = MemStore::default();
    let imported = import_items(&Image::new(false).docker_old(&["app:1.0"]), &mut store);
    (store, imported)
}

#[test]
fn round_trip_keeps_the_image() {
    for image in [Image::new(false), Image::new(true)] {
        let mut store = MemStore::default();
        let first = if image.gzip {
            let m = image.oci_manifest(MEDIA_OCI_MANIFEST, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER_TAR_GZIP);
            import_items(&image.oci_layout(&m, &[("io.containerd.image.name", "team/app:1.0")]), &mut store)
        } else {
            import_items(&image.docker_old(&["team/app:1.0"]), &mut store)
        };
        let exported = export("team/app:1.0", &first.manifest, &store).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "out.tar", &exported);
        let mut again = MemStore::default();
        let second = import_archive(&path, &ImportOptions::default(), &mut again).unwrap();
        assert_eq!(second.format, Format::OciArchive);
        assert_eq!(second.reference.as_ref().unwrap().to_string(), "team/app:1.0");
        assert_eq!(second.manifest, first.manifest);
        assert_eq!(second.config, first.config);
        assert_eq!(second.layers, first.layers);
        assert_eq!(again.blobs, store.blobs);

        // And exporting the re-imported image gives the same bytes again.
        assert_eq!(export("team/app:1.0", &second.manifest, &again).unwrap(), exported);
    }
}

#[test]
fn output_is_deterministic_and_sorted() {
    let (store, imported) = docker_image();
    let (store2, imported2) = docker_image();
    let a = export("app:1.0", &imported.manifest, &store).unwrap();
    let b = export("app:1.0", &imported2.manifest, &store2).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, export("app:1.1", &imported.manifest, &store).unwrap(), "the name is in the archive");

    let entries = entries(&a);
    let paths: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
    assert_eq!(&paths[..2], ["blobs/", "blobs/sha256/"]);
    assert_eq!(&paths[paths.len() - 3..], ["index.json", "manifest.json", "oci-layout"]);
    assert_eq!(paths.len(), 2 + 2 + imported.layers.len() + 3, "dirs, manifest, config, layers, 3 documents");
    for (path, mode, mtime, uid, gid, _) in &entries {
        assert_eq!((*mtime, *uid, *gid), (0, 0, 0), "{path}");
        assert_eq!(*mode, if path.ends_with('/') { 0o755 } else { 0o644 }, "{path}");
    }
}

#[test]
fn archive_holds_oci_layout_and_docker_manifest() {
    let (store, imported) = docker_image();
    let bytes = export("registry.example:5000/app:1.0", &imported.manifest, &store).unwrap();
    let entries = entries(&bytes);
    let get = |name: &str| entries.iter().find(|e| e.0 == name).map(|e| e.5.clone()).unwrap();

    assert_eq!(get("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#);

    let index = oci_spec::image::ImageIndex::from_reader(&get("index.json")[..]).unwrap();
    assert_eq!(index.manifests().len(), 1);
    let m = &index.manifests()[0];
    assert_eq!(m.digest().to_string(), imported.manifest.digest.to_string());
    assert_eq!(m.size(), imported.manifest.size);
    assert_eq!(m.media_type().to_string(), MEDIA_OCI_MANIFEST);
    let ann = m.annotations().as_ref().unwrap();
    assert_eq!(ann["org.opencontainers.image.ref.name"], "1.0");
    assert_eq!(ann["io.containerd.image.name"], "registry.example:5000/app:1.0");

    let docker: serde_json::Value = serde_json::from_slice(&get("manifest.json")).unwrap();
    let blob = |d: &Digest| format!("blobs/sha256/{}", d.hex());
    let layers: Vec<String> = imported.layers.iter().map(|l| blob(&l.digest)).collect();
    assert_eq!(
        docker,
        serde_json::json!([{
            "Config": blob(&imported.config.digest),
            "RepoTags": ["registry.example:5000/app:1.0"],
            "Layers": layers,
        }])
    );

    // Every blob is there, byte for byte.
    for d in std::iter::once(&imported.manifest).chain([&imported.config]).chain(&imported.layers) {
        assert_eq!(&get(&blob(&d.digest)), store.blobs.get(&d.digest).unwrap());
    }
}

#[test]
fn corrupt_or_missing_store_blobs_are_refused() {
    let (store, imported) = docker_image();

    let mut missing = MemStore { blobs: store.blobs.clone(), puts: 0 };
    missing.blobs.remove(&imported.layers[1].digest);
    let err = export("app:1", &imported.manifest, &missing).unwrap_err();
    assert!(matches!(err, ExportError::Source { source: SourceError::NotFound { .. }, .. }), "{err:?}");

    let mut flipped = MemStore { blobs: store.blobs.clone(), puts: 0 };
    flipped.blobs.get_mut(&imported.layers[0].digest).unwrap()[100] ^= 1;
    let err = export("app:1", &imported.manifest, &flipped).unwrap_err();
    assert!(matches!(err, ExportError::DigestMismatch { .. }), "{err:?}");

    for delta in [-1i64, 1] {
        let mut resized = MemStore { blobs: store.blobs.clone(), puts: 0 };
        let blob = resized.blobs.get_mut(&imported.layers[0].digest).unwrap();
        if delta < 0 {
            blob.pop();
        } else {
            blob.push(0);
        }
        let err = export("app:1", &imported.manifest, &resized).unwrap_err();
        assert!(matches!(err, ExportError::SizeMismatch { .. }), "{err:?}");
    }

    let mut bad_manifest = MemStore { blobs: store.blobs.clone(), puts: 0 };
    bad_manifest.blobs.get_mut(&imported.manifest.digest).unwrap()[0] = b'[';
    let err = export("app:1", &imported.manifest, &bad_manifest).unwrap_err();
    assert!(matches!(err, ExportError::DigestMismatch { .. }), "{err:?}");

    let docker_type = Descriptor {
        media_type: "application/vnd.docker.distribution.manifest.v2+json".into(),
        ..imported.manifest.clone()
    };
    let err = export("app:1", &docker_type, &store).unwrap_err();
    assert!(matches!(err, ExportError::NotAnOciManifest { .. }), "{err:?}");
}

/// A writer that fails once `limit` bytes were written, like a full disk.
struct FullDisk {
    written: usize,
    limit: usize,
}

impl Write for FullDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() > self.limit {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left on device"));
        }
        self.written += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn write_errors_are_reported() {
    let (store, imported) = docker_image();
    let reference: Reference = "app:1".parse().unwrap();
    let mut out = FullDisk { written: 0, limit: 5000 };
    let err = export_oci_archive(&reference, &imported.manifest, &store, &mut out).unwrap_err();
    assert!(matches!(err, ExportError::Write(_)), "{err:?}");
    assert!(err.to_string().contains("free space"), "{err}");
}

/// If skopeo is installed, it must read the archive and see the same manifest.
#[test]
fn skopeo_reads_the_archive_when_installed() {
    let (store, imported) = docker_image();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "app.tar", &export("app:1.0", &imported.manifest, &store).unwrap());
    let Some(raw) = skopeo(&["inspect", "--raw", &format!("oci-archive:{}", path.display())]) else {
        eprintln!("note: skopeo is not installed; skipping the skopeo check");
        return;
    };
    assert_eq!(Digest::of(&raw), imported.manifest.digest);
    let inspect = skopeo(&["inspect", &format!("oci-archive:{}", path.display())]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&inspect).unwrap();
    assert_eq!(v["Digest"], imported.manifest.digest.to_string());
}

fn skopeo(args: &[&str]) -> Option<Vec<u8>> {
    let out = Command::new("skopeo").args(args).output().ok()?;
    assert!(out.status.success(), "skopeo {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Some(out.stdout)
}

/// GNU tar (if installed) must list and extract the archive; the extracted directory imports as
/// an OCI layout, and GNU tar's own re-packing (`./` names, gzip, 10 KiB records) imports too.
#[test]
fn gnu_tar_interoperates_when_installed() {
    let (store, imported) = docker_image();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "app.tar", &export("app:1.0", &imported.manifest, &store).unwrap());
    let extracted = dir.path().join("x");
    std::fs::create_dir(&extracted).unwrap();
    let Ok(status) = Command::new("tar").arg("-xf").arg(&path).arg("-C").arg(&extracted).status() else {
        eprintln!("note: tar is not installed; skipping the GNU tar check");
        return;
    };
    assert!(status.success());

    let mut from_dir = MemStore::default();
    let r = import_archive(&extracted, &ImportOptions::default(), &mut from_dir).unwrap();
    assert_eq!(r.format, Format::OciLayoutDir);
    assert_eq!(r.manifest, imported.manifest);
    assert_eq!(r.reference.unwrap().to_string(), "app:1.0");

    let repacked = dir.path().join("re.tgz");
    let status = Command::new("tar").arg("-czf").arg(&repacked).arg("-C").arg(&extracted).arg(".").status().unwrap();
    assert!(status.success());
    let mut from_gnu = MemStore::default();
    let r = import_archive(&repacked, &ImportOptions::default(), &mut from_gnu).unwrap();
    assert_eq!(r.format, Format::OciArchive);
    assert_eq!(r.manifest, imported.manifest);
    assert_eq!(from_gnu.blobs, store.blobs);
}
