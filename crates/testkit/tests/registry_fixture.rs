//! The registry fixture against the real `docker-registry` and `skopeo` (scripts/deps.sh).
#![allow(clippy::unwrap_used)]

use shoal_testkit::images::{layer, write_docker_archive, write_oci_archive};
use shoal_testkit::registry::{
    Compression, MANIFEST_ACCEPT, ManifestFormat, OCI_INDEX, OCI_MANIFEST, PushOptions, Registry, inspect_digest,
    push_docker_archive, push_oci_archive, push_two_platform_index, push_with, sha256_digest,
};
use std::path::Path;

fn small_oci(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let path = dir.join(format!("{name}.tar"));
    let digest = write_oci_archive(&path, "latest", &[layer(&[("hello.txt", format!("hello {name}\n").as_bytes())])]);
    (path, digest)
}

fn manifest(reg: &Registry, repo: &str, reference: &str) -> (String, serde_json::Value) {
    let r =
        reg.request("GET", &format!("/v2/{repo}/manifests/{reference}"), &[("Accept", MANIFEST_ACCEPT)], b"").unwrap();
    assert_eq!(r.status, 200, "GET manifest {repo}:{reference}: {}", r.text());
    let digest = r.header("Docker-Content-Digest").expect("Docker-Content-Digest").to_string();
    assert_eq!(digest, sha256_digest(&r.body), "Docker-Content-Digest is the body's digest");
    (digest, r.json().unwrap())
}

#[test]
fn push_inspect_and_count_blob_gets() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&tmp.path().join("reg"), None).unwrap();
    assert!(reg.addr().ip().is_loopback());
    assert_eq!(reg.host(), format!("127.0.0.1:{}", reg.addr().port()));
    let (archive, _) = small_oci(tmp.path(), "app");

    let pushed = push_oci_archive(&reg, &archive, "test/app:1", None).unwrap();
    let inspected = inspect_digest(&reg, "test/app:1").unwrap();
    assert!(inspected.starts_with("sha256:") && inspected.len() == 71, "{inspected}");
    assert_eq!(inspected, pushed);
    assert_eq!(reg.manifest_digest("test/app", "1").unwrap(), pushed);

    let (digest, m) = manifest(&reg, "test/app", "1");
    assert_eq!(digest, pushed);
    assert_eq!(m["mediaType"], OCI_MANIFEST);
    // skopeo gzipped the archive's uncompressed layer on the way in.
    assert_eq!(m["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    let blob = m["layers"][0]["digest"].as_str().unwrap().to_string();

    assert_eq!(reg.blob_gets(&blob), 0, "pushing and inspecting fetch no layer");
    let head = reg.request("HEAD", &format!("/v2/test/app/blobs/{blob}"), &[], b"").unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(reg.blob_gets(&blob), 0, "a HEAD is no fetch");
    let get = reg.request("GET", &format!("/v2/test/app/blobs/{blob}"), &[], b"").unwrap();
    assert_eq!(get.status, 200);
    assert_eq!(sha256_digest(&get.body), blob);
    assert_eq!(&get.body[..2], &[0x1f, 0x8b], "a gzip layer");
    assert_eq!(reg.blob_gets(&blob), 1, "log:\n{}", reg.log());
    let missing = reg.request("GET", &format!("/v2/test/app/blobs/sha256:{}", "0".repeat(64)), &[], b"").unwrap();
    assert_eq!(missing.status, 404);
    assert_eq!(reg.blob_gets(&format!("sha256:{}", "0".repeat(64))), 0, "a 404 is no fetch");

    let before = reg.manifest_gets();
    manifest(&reg, "test/app", &pushed);
    assert_eq!(reg.manifest_gets(), before + 1);
    assert_eq!(reg.manifest_gets_of("test/app", &pushed), 1);
    assert!(reg.requests().iter().any(|r| r.method == "HEAD" && r.path.ends_with(&blob)));
}

#[test]
fn preserve_digests_v2s2_and_docker_archives() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&tmp.path().join("reg"), None).unwrap();
    let (archive, archive_digest) = small_oci(tmp.path(), "raw");

    // --preserve-digests: the archive's manifest and its uncompressed layer, byte for byte.
    let opts = PushOptions { compression: Compression::Preserve, ..Default::default() };
    let pushed = push_with(&reg, &format!("oci-archive:{}", archive.display()), "test/raw:1", &opts).unwrap();
    assert_eq!(pushed, archive_digest);
    let (_, m) = manifest(&reg, "test/raw", "1");
    assert_eq!(m["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar");

    // Docker v2 schema 2 from an OCI archive.
    let (archive2, _) = small_oci(tmp.path(), "v2s2");
    let opts = PushOptions { format: ManifestFormat::V2s2, ..Default::default() };
    let pushed = push_with(&reg, &format!("oci-archive:{}", archive2.display()), "test/v2s2:1", &opts).unwrap();
    let (digest, m) = manifest(&reg, "test/v2s2", "1");
    assert_eq!(digest, pushed);
    assert_eq!(m["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");
    assert_eq!(m["layers"][0]["mediaType"], "application/vnd.docker.image.rootfs.diff.tar.gzip");

    // zstd layers (a layer this registry has in no other form).
    let (archive3, _) = small_oci(tmp.path(), "zstd");
    let opts = PushOptions { compression: Compression::Zstd, ..Default::default() };
    let pushed = push_with(&reg, &format!("oci-archive:{}", archive3.display()), "test/zstd:1", &opts).unwrap();
    let (digest, m) = manifest(&reg, "test/zstd", "1");
    assert_eq!(digest, pushed);
    assert_eq!(m["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd");

    // A `docker save` archive.
    let docker = tmp.path().join("docker.tar");
    write_docker_archive(&docker, "app:latest", &[layer(&[("bin/app", b"#!/bin/sh\necho docker\n")])]);
    let pushed = push_docker_archive(&reg, &docker, "test/docker:1", None).unwrap();
    let (digest, m) = manifest(&reg, "test/docker", "1");
    assert_eq!(digest, pushed);
    assert_eq!(m["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");

    let err = push_with(&reg, "oci-archive:/nonexistent.tar", "test/x:1", &PushOptions::default()).unwrap_err();
    assert!(format!("{err:#}").contains("nonexistent"), "{err:#}");
}

#[test]
fn auth_required() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&tmp.path().join("reg"), Some(("alice", "s3cret"))).unwrap();
    assert!(std::fs::read_to_string(tmp.path().join("reg/htpasswd")).unwrap().starts_with("alice:$2y$"));

    let anon = reg.request_as(None, "GET", "/v2/", &[], b"").unwrap();
    assert_eq!(anon.status, 401);
    assert!(anon.header("www-authenticate").unwrap().starts_with("Basic realm="), "{:?}", anon.headers);
    assert_eq!(reg.request("GET", "/v2/", &[], b"").unwrap().status, 200);
    assert_eq!(reg.request_as(Some(("alice", "nope")), "GET", "/v2/", &[], b"").unwrap().status, 401);

    let (archive, _) = small_oci(tmp.path(), "private");
    let err = push_oci_archive(&reg, &archive, "test/private:1", Some(("alice", "wrong"))).unwrap_err();
    assert!(format!("{err:#}").contains("authentication"), "{err:#}");
    let err = push_oci_archive(&reg, &archive, "test/private:1", None).unwrap_err();
    assert!(format!("{err:#}").contains("authentication"), "{err:#}");
    assert_eq!(reg.request("GET", "/v2/test/private/tags/list", &[], b"").unwrap().status, 404, "nothing pushed");

    let pushed = push_oci_archive(&reg, &archive, "test/private:1", Some(("alice", "s3cret"))).unwrap();
    assert_eq!(inspect_digest(&reg, "test/private:1").unwrap(), pushed);
    let anon =
        reg.request_as(None, "GET", "/v2/test/private/manifests/1", &[("Accept", MANIFEST_ACCEPT)], b"").unwrap();
    assert_eq!(anon.status, 401);
    assert_eq!(manifest(&reg, "test/private", "1").0, pushed);
}

#[test]
fn two_platform_index() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&tmp.path().join("reg"), None).unwrap();
    let pushed = push_two_platform_index(&reg, "test/multi", "1").unwrap();
    assert_eq!(pushed.platforms.len(), 2);

    let (digest, index) = manifest(&reg, "test/multi", "1");
    assert_eq!(digest, pushed.digest);
    assert_eq!(index["mediaType"], OCI_INDEX);
    let entries = index["manifests"].as_array().unwrap();
    let archs: Vec<&str> = entries.iter().map(|e| e["platform"]["architecture"].as_str().unwrap()).collect();
    assert_eq!(archs, ["amd64", "arm64"]);
    for (e, p) in entries.iter().zip(&pushed.platforms) {
        assert_eq!(e["digest"], p.manifest.as_str());
        let (d, m) = manifest(&reg, "test/multi", &p.manifest);
        assert_eq!(d, p.manifest);
        assert_eq!(e["size"].as_u64().unwrap(), serde_json::to_vec(&m).unwrap().len() as u64);
        let cfg = reg.request("GET", &format!("/v2/test/multi/blobs/{}", p.config), &[], b"").unwrap().json().unwrap();
        assert_eq!(cfg["architecture"], e["platform"]["architecture"]);
        let layer = reg.request("GET", &format!("/v2/test/multi/blobs/{}", p.layer), &[], b"").unwrap();
        assert_eq!(layer.status, 200);
        assert_eq!(reg.blob_gets(&p.layer), 1);
    }
    assert_eq!(inspect_digest(&reg, "test/multi:1").unwrap(), pushed.digest);
}

#[test]
fn stop_and_restart_keep_port_and_storage() {
    let tmp = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(&tmp.path().join("reg"), None).unwrap();
    let addr = reg.addr();
    let (archive, _) = small_oci(tmp.path(), "kept");
    let pushed = push_oci_archive(&reg, &archive, "test/kept:1", None).unwrap();

    reg.stop();
    assert!(!reg.is_running());
    assert!(reg.request("GET", "/v2/", &[], b"").is_err(), "the registry is down");
    assert!(inspect_digest(&reg, "test/kept:1").is_err());

    reg.restart().unwrap();
    assert!(reg.is_running());
    assert_eq!(reg.addr(), addr);
    assert_eq!(manifest(&reg, "test/kept", "1").0, pushed);
    assert_eq!(reg.log().matches("listening on").count(), 2, "one log across restarts");
}

#[test]
fn restart_fails_with_the_log_when_the_port_is_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(&tmp.path().join("reg"), None).unwrap();
    reg.stop();
    let _squatter = std::net::TcpListener::bind(reg.addr()).unwrap();
    let err = reg.restart().unwrap_err();
    assert!(format!("{err:#}").contains("address already in use"), "{err:#}");
    assert!(!reg.is_running());
}
