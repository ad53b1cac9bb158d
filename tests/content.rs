//! End-to-end content distribution in labs: real agents, real shaped links, real files.

#![allow(clippy::unwrap_used)]

use sha2::{Digest, Sha256};
use shoal_testkit::lab::TestLab;
use shoal_types::{AgentStatus, TransferInfo};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn random_file(dir: &Path, name: &str, len: usize) -> PathBuf {
    let p = dir.join(name);
    shoal_testkit::noise::write_random_file(&p, len as u64, len as u64).unwrap();
    p
}

fn sha(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

fn share(lab: &TestLab, i: usize, file: &Path) -> String {
    lab.ok(&["exec", &i.to_string(), "--", "shoal", "share", file.to_str().unwrap()]).unwrap().trim().to_string()
}

async fn progress(lab: &TestLab, i: usize, id: &str) -> Option<TransferInfo> {
    lab.client(i).get(&format!("/v1/content/{id}/progress")).await.ok()
}

fn wait_all(children: Vec<std::process::Child>) -> Vec<String> {
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "get failed: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stderr).into_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn share_on_one_get_on_three_at_once_byte_identical_and_swarmed() -> anyhow::Result<()> {
    let lab = TestLab::up("share", 4, &["--bandwidth", "40mbit"])?;
    let dir = tempfile::tempdir()?;
    let src = random_file(dir.path(), "data.bin", 24 << 20);
    let id = share(&lab, 0, &src);
    assert!(id.starts_with("b3:"), "{id}");
    let gets: Vec<_> = (1..4)
        .map(|i| {
            let out = dir.path().join(format!("out{i}.bin"));
            lab.spawn(&["exec", &i.to_string(), "--", "shoal", "get", &id, "-o", out.to_str().unwrap()])
        })
        .collect();
    wait_all(gets);
    for i in 1..4 {
        assert_eq!(sha(&dir.path().join(format!("out{i}.bin"))), sha(&src), "peer {i}");
    }
    // Swarmed: the seed did not send the whole blob to each of the three.
    let seed: AgentStatus = lab.client(0).get("/v1/status").await?;
    let others: u64 = {
        let mut t = 0;
        for i in 1..4 {
            t += lab.client(i).get::<AgentStatus>("/v1/status").await?.uploaded_bytes;
        }
        t
    };
    eprintln!("seed uploaded {} MiB, downloaders {} MiB", seed.uploaded_bytes >> 20, others >> 20);
    // Super-seeding: the seed sends each piece about once.
    assert!(seed.uploaded_bytes < 30 << 20, "the seed sent {} bytes for a 24 MiB blob", seed.uploaded_bytes);
    assert!(others > 12 << 20, "downloaders served each other only {others} bytes");
    // Every peer now holds it and lists it.
    let ls = lab.ok(&["exec", "3", "--", "shoal", "content", "ls", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&ls)?;
    assert_eq!(v[0]["id"], id.as_str());
    assert_eq!(v[0]["state"], "complete");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_serving_corrupt_pieces_cannot_poison_anyone() -> anyhow::Result<()> {
    let lab = TestLab::up("poison", 4, &["--bandwidth", "40mbit"])?;
    let dir = tempfile::tempdir()?;
    let src = random_file(dir.path(), "data.bin", 8 << 20);
    let id = share(&lab, 0, &src);
    lab.ok(&["exec", "1", "--", "shoal", "get", &id])?;
    // Peer 1 now holds the blob; restart it so that it corrupts everything it uploads.
    lab.ok(&["stop", "1"])?;
    let out = std::process::Command::new(shoal_testkit::shoal_bin())
        .args(["lab", "--name", &lab.name, "start", "1"])
        .env("SHOAL_LAB_ROOT", lab.root.path())
        .env("SHOAL_TEST_CORRUPT_UPLOADS", "1")
        .output()?;
    assert!(out.status.success());
    lab.wait_states(&[0, 2, 3], &[1], shoal_types::PeerState::Alive, Duration::from_secs(20)).await?;
    let gets: Vec<_> = (2..4)
        .map(|i| {
            let out = dir.path().join(format!("out{i}.bin"));
            lab.spawn(&["exec", &i.to_string(), "--", "shoal", "get", &id, "-o", out.to_str().unwrap()])
        })
        .collect();
    wait_all(gets);
    for i in 2..4 {
        assert_eq!(sha(&dir.path().join(format!("out{i}.bin"))), sha(&src), "peer {i} got the right bytes");
    }
    let caught = (2..4).filter(|i| lab.ok(&["logs", &i.to_string()]).unwrap().contains("sent a corrupt piece")).count();
    assert!(caught >= 1, "the corrupting peer was never detected");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_seed_midway_the_others_finish_from_each_other() -> anyhow::Result<()> {
    // Slow links: the seed's pieces spread among the downloaders long before each has all.
    let lab = TestLab::up("seedkill", 4, &["--bandwidth", "4mbit"])?;
    let dir = tempfile::tempdir()?;
    let src = random_file(dir.path(), "data.bin", 6 << 20);
    let id = share(&lab, 0, &src);
    let gets: Vec<_> = (1..4)
        .map(|i| {
            let out = dir.path().join(format!("out{i}.bin"));
            lab.spawn(&["exec", &i.to_string(), "--", "shoal", "get", &id, "-o", out.to_str().unwrap()])
        })
        .collect();
    // Wait until the downloaders jointly hold every piece, then kill the seed.
    let deadline = Instant::now() + Duration::from_secs(90);
    let held_at_kill = loop {
        let mut union: Option<Vec<u8>> = None;
        let mut held = Vec::new();
        for i in 1..4 {
            if let Some(p) = progress(&lab, i, &id).await {
                let bits = hex::decode(&p.have).unwrap_or_default();
                held.push((p.have_pieces, p.pieces));
                union = Some(match union {
                    None => bits,
                    Some(u) => u.iter().zip(bits.iter().chain(std::iter::repeat(&0))).map(|(a, b)| a | b).collect(),
                });
            }
        }
        let pieces = held.first().map_or(0, |h| h.1);
        let joint = union.map_or(0, |u| u.iter().map(|b| b.count_ones()).sum::<u32>());
        if held.len() == 3 && pieces > 0 && joint >= pieces {
            break held;
        }
        assert!(Instant::now() < deadline, "the downloaders never jointly held every piece");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    lab.ok(&["kill", "0"])?;
    eprintln!("pieces held per downloader when the seed died: {held_at_kill:?}");
    assert!(held_at_kill.iter().any(|(h, n)| h < n), "someone was still missing pieces when the seed died");
    wait_all(gets);
    for i in 1..4 {
        assert_eq!(sha(&dir.path().join(format!("out{i}.bin"))), sha(&src), "peer {i}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_downloader_resumes_with_the_pieces_it_had() -> anyhow::Result<()> {
    let lab = TestLab::up("resume", 2, &["--bandwidth", "8mbit"])?;
    let dir = tempfile::tempdir()?;
    let src = random_file(dir.path(), "data.bin", 8 << 20);
    let id = share(&lab, 0, &src);
    let get = lab.spawn(&["exec", "1", "--", "shoal", "get", &id]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if progress(&lab, 1, &id).await.is_some_and(|p| p.have_pieces >= 4) {
            break;
        }
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let a checkpoint happen, then crash the downloader.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let killed = lab.ok(&["kill", "1"]);
    let _ = get.wait_with_output();
    killed?;
    lab.ok(&["start", "1"])?;
    // It resumes on its own, keeping what it had verified.
    let kept = progress(&lab, 1, &id).await.map(|p| p.have_pieces).unwrap_or(0);
    assert!(kept >= 3, "only {kept} pieces kept across the restart");
    let out = dir.path().join("out.bin");
    lab.ok(&["exec", "1", "--", "shoal", "get", &id, "-o", out.to_str().unwrap()])?;
    assert_eq!(sha(&out), sha(&src));
    Ok(())
}

fn skopeo_digest(archive: &Path) -> String {
    let out = std::process::Command::new("skopeo")
        .args(["inspect", &format!("oci-archive:{}", archive.display())])
        .output()
        .expect("skopeo is installed by scripts/deps.sh");
    assert!(out.status.success(), "skopeo inspect: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["Digest"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn images_import_pull_export_and_skopeo_agrees() -> anyhow::Result<()> {
    use shoal_testkit::images::{layer, write_docker_archive, write_oci_archive};
    let lab = TestLab::up("image", 3, &[])?;
    let dir = tempfile::tempdir()?;
    let base = layer(&[("bin/app", b"#!/bin/sh\necho hi\n"), ("etc/motd", b"hello")]);
    let extra = layer(&[("data/big", &vec![7u8; 3 << 20])]);
    let docker = dir.path().join("app-v1.tar");
    write_docker_archive(&docker, "app:v1", std::slice::from_ref(&base));
    let oci = dir.path().join("app-v2.tar");
    let v2_digest = write_oci_archive(&oci, "v2", &[base, extra]);

    let out = lab.ok(&["exec", "0", "--", "shoal", "image", "import", docker.to_str().unwrap()])?;
    assert!(out.starts_with("app:v1 sha256:"), "{out}");
    let v1_digest = out.split_whitespace().nth(1).unwrap().to_string();
    let out = lab.ok(&["exec", "0", "--", "shoal", "image", "import", oci.to_str().unwrap(), "--name", "app:v2"])?;
    assert_eq!(out.trim(), format!("app:v2 {v2_digest}"), "the OCI manifest is kept byte for byte");

    // The shared base layer is stored once: 1 manifest + 1 config + 1 layer for v1, and
    // 1 + 1 + 1 more for v2.
    let ls: serde_json::Value =
        serde_json::from_str(&lab.ok(&["exec", "0", "--", "shoal", "content", "ls", "--json"])?)?;
    assert_eq!(ls.as_array().unwrap().len(), 6, "{ls}");

    // Another peer pulls both; the first peer's listing names who holds them.
    for r in ["app:v1", "app:v2"] {
        let out = lab.ok(&["exec", "2", "--", "shoal", "image", "pull", r])?;
        assert!(out.starts_with(r), "{out}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ls: serde_json::Value = serde_json::from_str(&lab.ok(&["exec", "0", "--", "shoal", "image", "ls", "--json"])?)?;
    let v1 = ls.as_array().unwrap().iter().find(|i| i["reference"] == "app:v1").unwrap();
    assert!(v1["holders"].as_array().unwrap().iter().any(|h| h == "peer-2"), "{ls}");

    // Exports from both peers are byte-identical OCI archives skopeo reads with the same digest.
    let e0 = dir.path().join("e0.tar");
    let e2 = dir.path().join("e2.tar");
    lab.ok(&["exec", "0", "--", "shoal", "image", "export", "app:v1", "-o", e0.to_str().unwrap()])?;
    lab.ok(&["exec", "2", "--", "shoal", "image", "export", "app:v1", "-o", e2.to_str().unwrap()])?;
    assert_eq!(sha(&e0), sha(&e2));
    assert_eq!(skopeo_digest(&e2), v1_digest);
    let e3 = dir.path().join("e3.tar");
    lab.ok(&["exec", "2", "--", "shoal", "image", "export", "app:v2", "-o", e3.to_str().unwrap()])?;
    assert_eq!(skopeo_digest(&e3), v2_digest);

    // Removing an image removes its blobs no other image uses.
    lab.ok(&["exec", "2", "--", "shoal", "image", "rm", "app:v2"])?;
    let ls: serde_json::Value =
        serde_json::from_str(&lab.ok(&["exec", "2", "--", "shoal", "content", "ls", "--json"])?)?;
    assert_eq!(ls.as_array().unwrap().len(), 3, "v1's blobs stay: {ls}");
    Ok(())
}

/// `shoal get ID -o -` streams in order while the pieces arrive: on an 8 mbit link the first
/// bytes come long before the whole, the bytes are the blob's, and a Range read of the API
/// gives the part asked for.
#[tokio::test(flavor = "multi_thread")]
async fn get_to_stdout_streams_verified_pieces_in_order_as_they_arrive() -> anyhow::Result<()> {
    let lab = TestLab::up("stream", 2, &["--bandwidth", "8mbit"])?;
    let dir = tempfile::tempdir()?;
    let src = random_file(dir.path(), "data.bin", 8 << 20);
    let id = share(&lab, 0, &src);
    let started = Instant::now();
    let mut get = lab.spawn_piped(&["exec", "1", "--", "shoal", "get", &id, "-o", "-"]);
    let mut stdout = get.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut first: Option<Duration> = None;
        let mut all = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = stdout.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            first.get_or_insert(started.elapsed());
            all.extend_from_slice(&buf[..n]);
        }
        (first, all)
    });
    let (first, all) = reader.join().unwrap();
    let whole = started.elapsed();
    let out = get.wait_with_output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(hex::encode(Sha256::digest(&all)), sha(&src), "the streamed bytes are the blob's");
    let first = first.expect("some bytes");
    eprintln!("8 MiB over 8 mbit: first byte after {first:?}, all after {whole:?}");
    // 8 MiB at 8 mbit is over 8 s; the first pieces arrive within a few seconds.
    assert!(whole > Duration::from_secs(6), "the link was not shaped: {whole:?}");
    assert!(first < whole / 3, "first byte {first:?} of {whole:?}: not streamed");

    // A Range read of the API, from the peer that now has it all.
    let data = std::fs::read(&src)?;
    let (status, part) = lab.client(1).get_range(&format!("/v1/content/{id}"), 1_000_000, 1_000_999).await?;
    assert_eq!(status, 206);
    assert_eq!(&part[..], &data[1_000_000..1_001_000]);
    // The last bytes (a suffix range), past the end (416), and a form not served (400).
    let path = format!("/v1/content/{id}");
    let (status, tail) = lab.client(1).get_ranged(&path, "bytes=-1000").await?;
    assert_eq!((status, &tail[..]), (206, &data[data.len() - 1000..]));
    let (status, _) = lab.client(1).get_ranged(&path, &format!("bytes={}-", data.len())).await?;
    assert_eq!(status, 416);
    let (status, _) = lab.client(1).get_ranged(&path, "bytes=0-1,5-6").await?;
    assert_eq!(status, 400);
    Ok(())
}
