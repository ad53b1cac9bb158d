//! Bad input to the content subsystem: a clear error, nothing half written visible, and the
//! agent keeps running.

#![allow(clippy::unwrap_used)]

use shoal_testkit::{Agent, AgentSpec, shoal_bin};
use std::path::Path;
use std::process::{Command, Output};

fn cli(a: &Agent, args: &[&str]) -> Output {
    Command::new(shoal_bin()).arg("--addr").arg(&a.socket).args(args).output().unwrap()
}

fn err(o: &Output) -> String {
    assert!(!o.status.success(), "expected a failure; stdout: {}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn content_count(a: &Agent) -> usize {
    let v: serde_json::Value = serde_json::from_str(&ok(cli(a, &["content", "ls", "--json"]))).unwrap();
    v.as_array().unwrap().len()
}

fn file(dir: &Path, name: &str, len: usize, seed: u8) -> String {
    let p = dir.join(name);
    std::fs::write(&p, (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect::<Vec<_>>()).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_archives_and_unknown_ids_are_clear_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut a = Agent::start(dir.path(), AgentSpec::new("errs"))?;
    a.ready().await?;
    // A docker archive cut in half.
    let good = dir.path().join("good.tar");
    shoal_testkit::images::write_docker_archive(
        &good,
        "app:v1",
        &[shoal_testkit::images::layer(&[("f", &vec![1u8; 100_000])])],
    );
    let bytes = std::fs::read(&good)?;
    let cut = dir.path().join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2])?;
    let e = err(&cli(&a, &["image", "import", cut.to_str().unwrap()]));
    assert!(e.contains("truncated") || e.contains("corrupt"), "{e}");
    // Garbage.
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"this is not an archive at all")?;
    let e = err(&cli(&a, &["image", "import", junk.to_str().unwrap()]));
    assert!(!e.is_empty());
    // A rootfs tarball without a name says to pass one.
    let rootfs = dir.path().join("rootfs.tar");
    std::fs::write(&rootfs, shoal_testkit::images::layer(&[("bin/sh", b"x")]))?;
    let e = err(&cli(&a, &["image", "import", rootfs.to_str().unwrap()]));
    assert!(e.contains("--name"), "{e}");
    assert!(ok(cli(&a, &["image", "ls"])).lines().count() <= 1, "no image appeared");
    assert_eq!(content_count(&a), 0, "nothing half imported is visible");
    // An id nobody has, and one that is not an id.
    let e = err(&cli(&a, &["get", &format!("b3:{}", "ab".repeat(32))]));
    assert!(e.contains("no live peer holds it") || e.contains("no peer holds"), "{e}");
    let e = err(&cli(&a, &["get", "nonsense"]));
    assert!(e.contains("content id"), "{e}");
    // Still alive, and the good archive imports.
    ok(cli(&a, &["image", "import", good.to_str().unwrap()]));
    assert_eq!(content_count(&a), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_quota_evicts_old_content_then_refuses_clearly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut spec = AgentSpec::new("quota");
    spec.extra = vec!["--store-quota".into(), "7m".into()];
    let mut a = Agent::start(dir.path(), spec)?;
    a.ready().await?;
    let x = ok(cli(&a, &["share", &file(dir.path(), "x", 3 << 20, 1)]));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let y = ok(cli(&a, &["share", &file(dir.path(), "y", 3 << 20, 2)]));
    ok(cli(&a, &["content", "pin", y.trim()]));
    std::thread::sleep(std::time::Duration::from_millis(20));
    // z does not fit next to x and y: x, least recently used and unpinned, is evicted.
    let z = ok(cli(&a, &["share", &file(dir.path(), "z", 3 << 20, 3)]));
    let ls = ok(cli(&a, &["content", "ls", "--json"]));
    assert!(!ls.contains(x.trim()) && ls.contains(y.trim()) && ls.contains(z.trim()), "{ls}");
    // Pin z too: now nothing may go, and a fourth is refused with the way out.
    ok(cli(&a, &["content", "pin", z.trim()]));
    let e = err(&cli(&a, &["share", &file(dir.path(), "w", 3 << 20, 4)]));
    assert!(e.contains("full") && e.contains("--store-quota"), "{e}");
    assert_eq!(content_count(&a), 2);
    assert_eq!(a.status().await?.cluster_size, 1, "the agent keeps running");
    Ok(())
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_a_clear_error_and_leaves_nothing_behind() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mnt = dir.path().join("disk");
    std::fs::create_dir_all(&mnt)?;
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"]).arg(&mnt).status()?;
    assert!(st.success(), "mounting a tmpfs needs root");
    let _guard = SmallDisk(mnt.clone());
    let mut a = Agent::start(&mnt, AgentSpec::new("full"))?;
    a.ready().await?;
    let e = err(&cli(&a, &["share", &file(dir.path(), "big", 24 << 20, 5)]));
    assert!(e.contains("disk") && e.contains("full"), "{e}");
    assert_eq!(content_count(&a), 0);
    let tmp = mnt.join("full/content/tmp");
    assert_eq!(std::fs::read_dir(&tmp)?.count(), 0, "no temp file left in {}", tmp.display());
    // Space is back: a small share works.
    ok(cli(&a, &["share", &file(dir.path(), "small", 1 << 20, 6)]));
    assert_eq!(content_count(&a), 1);
    drop(a);
    Ok(())
}
