//! Image archives for tests, built in memory: a `docker save` archive and an OCI archive with
//! one small layer each. Digests are computed here, independently of Shoal's image code.

use sha2::{Digest as _, Sha256};
use std::path::Path;

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A tar header owned by root with mtime 0 (the path and checksum are set when appended).
fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    h
}

/// A layer tar holding `files`.
pub fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = header(tar::EntryType::Regular, data.len() as u64, 0o755);
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
    let mut h = header(tar::EntryType::Regular, data.len() as u64, 0o644);
    b.append_data(&mut h, name, data).expect("writing a test archive");
}

/// Writes a `docker save`-style archive (`manifest.json`, `<id>/layer.tar`, `<hex>.json`).
pub fn write_docker_archive(path: &Path, tag: &str, layers: &[Vec<u8>]) {
    write_docker_archive_with(path, tag, layers, config);
}

/// [`write_docker_archive`] with the image config made by `config` from the layers' diff ids.
fn write_docker_archive_with(path: &Path, tag: &str, layers: &[Vec<u8>], config: impl FnOnce(&[String]) -> Vec<u8>) {
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

/// A layer holding Debian's static busybox as `/bin/busybox`, a symlink per applet, the usual
/// top-level directories, and `/etc/passwd`/`/etc/group` with `root` and `app` (1000:1000).
/// Needs the busybox-static package (scripts/deps.sh installs it).
pub fn busybox_layer() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)");
    let list = std::process::Command::new("/bin/busybox").arg("--list").output().expect("busybox --list");
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32| {
        let mut h = header(tar::EntryType::Directory, 0, mode);
        b.append_data(&mut h, name, std::io::empty()).expect("in-memory tar");
    };
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root", "home", "home/app", "app", "var", "usr", "usr/bin"] {
        dir(&mut b, d, if d == "tmp" { 0o1777 } else { 0o755 });
    }
    let mut h = header(tar::EntryType::Regular, busybox.len() as u64, 0o755);
    b.append_data(&mut h, "bin/busybox", busybox.as_slice()).expect("in-memory tar");
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet == "busybox" || applet.contains('/') {
            continue;
        }
        let mut h = header(tar::EntryType::Symlink, 0, 0o777);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox").expect("in-memory tar");
    }
    let mut h = header(tar::EntryType::Symlink, 0, 0o777);
    b.append_link(&mut h, "usr/bin/env", "/bin/busybox").expect("in-memory tar");
    let files: [(&str, &[u8]); 2] = [
        ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"),
        ("etc/group", b"root:x:0:\napp:x:1000:\nstaff:x:50:app\n"),
    ];
    for (name, data) in files {
        let mut h = header(tar::EntryType::Regular, data.len() as u64, 0o644);
        b.append_data(&mut h, name, data).expect("in-memory tar");
    }
    b.into_inner().expect("in-memory tar")
}

/// Writes a `docker save` archive of busybox plus `extra` layers, with the image config
/// section `config` (Env, Cmd, Entrypoint, WorkingDir, User, ExposedPorts as Docker writes them).
pub fn write_busybox_image(path: &Path, tag: &str, extra: &[Vec<u8>], config: serde_json::Value) {
    let mut layers = vec![busybox_layer()];
    layers.extend(extra.iter().cloned());
    write_docker_archive_with(path, tag, &layers, |diffs| {
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": config,
            "rootfs": { "type": "layers", "diff_ids": diffs.iter().map(|d| format!("sha256:{d}")).collect::<Vec<_>>() },
        }))
        .expect("json")
    });
}

/// The source of `udp-echo PORT`: answers every datagram on PORT with its own bytes.
const UDP_ECHO: &str = r#"
fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).expect("udp-echo PORT");
    let s = std::net::UdpSocket::bind(("0.0.0.0", port)).expect("bind");
    let mut buf = [0u8; 65536];
    loop {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    }
}
"#;

/// A layer holding `/bin/udp-echo`, a static UDP echo server (busybox has none), compiled here
/// with the toolchain that builds the tests.
pub fn udp_echo_layer(scratch: &Path) -> anyhow::Result<Vec<u8>> {
    let src = scratch.join("udp-echo.rs");
    let bin = scratch.join("udp-echo");
    std::fs::write(&src, UDP_ECHO)?;
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = std::process::Command::new(rustc)
        .args(["--edition", "2021", "-O", "-C", "target-feature=+crt-static", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()?;
    anyhow::ensure!(out.status.success(), "compiling udp-echo: {}", String::from_utf8_lossy(&out.stderr));
    let data = std::fs::read(&bin)?;
    Ok(layer(&[("bin/udp-echo", &data)]))
}
