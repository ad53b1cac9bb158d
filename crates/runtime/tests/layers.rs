//! Layer unpacking, the layer store and overlay mounts, end to end on the real filesystem.
//!
//! Most of these need root (unpacking chowns every entry; device nodes, `trusted.*` xattrs and
//! mounts need it too); without it they print a note and return.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use proptest::prelude::*;
use shoal_runtime::layers::{
    Compression, LayerError, LayerStore, mount_overlay, overlay_options, unmount, unpack_layer,
};
use tar::{Builder, EntryType, Header};

const MTIME: u64 = 1_600_000_000;

fn is_root() -> bool {
    let root = fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    if !root {
        eprintln!("skipping: needs root");
    }
    root
}

/// A made-up digest whose short name (its first 12 hex characters) differs for each `n`.
fn digest(n: u32) -> String {
    format!("{n:08x}").repeat(8)
}

/// Builds a layer tar in memory.
struct Layer {
    b: Builder<Vec<u8>>,
}

impl Layer {
    fn new() -> Self {
        Self { b: Builder::new(Vec::new()) }
    }

    fn header(kind: EntryType, mode: u32, uid: u64, gid: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(MTIME);
        h.set_size(0);
        h
    }

    fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = Self::header(EntryType::Directory, mode, 0, 0);
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    fn file_owned(mut self, path: &str, mode: u32, uid: u64, gid: u64, data: &[u8]) -> Self {
        let mut h = Self::header(EntryType::Regular, mode, uid, gid);
        h.set_size(data.len() as u64);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    fn file(self, path: &str, data: &[u8]) -> Self {
        self.file_owned(path, 0o644, 0, 0, data)
    }

    fn xattr_file(mut self, path: &str, data: &[u8], xattrs: &[(&str, &[u8])]) -> Self {
        self.b.append_pax_extensions(xattrs.iter().copied()).unwrap();
        self.file(path, data)
    }

    fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(EntryType::Symlink, 0o777, 0, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(EntryType::Link, 0o644, 0, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    fn node(mut self, path: &str, kind: EntryType, mode: u32, major: u32, minor: u32) -> Self {
        let mut h = Self::header(kind, mode, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    /// An entry whose name (and link name) bypass the builder's checks, as an attacker would write.
    fn raw(mut self, kind: EntryType, name: &[u8], link: Option<&[u8]>, data: &[u8]) -> Self {
        let mut h = Self::header(kind, 0o644, 0, 0);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        }
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    fn tar(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }

    fn gzip(self) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&self.tar()).unwrap();
        gz.finish().unwrap()
    }

    fn zstd(self) -> Vec<u8> {
        zstd::encode_all(&self.tar()[..], 3).unwrap()
    }
}

/// The lower layer of the merged-view tests.
fn base_layer() -> Layer {
    Layer::new()
        .dir("etc/", 0o755)
        .file("etc/motd", b"welcome\n")
        .file("etc/hostname", b"base\n")
        .dir("opt/", 0o755)
        .file("opt/a", b"a")
        .file("opt/b", b"b")
        .dir("usr/bin/", 0o755)
        .file_owned("usr/bin/dash", 0o755, 0, 0, b"#!dash")
        .symlink("usr/bin/sh", "dash")
        .file_owned("usr/bin/su", 0o4755, 0, 0, b"su")
        .hardlink("usr/bin/sudo", "usr/bin/su")
}

/// The upper layer: deletes etc/motd, replaces opt/ wholesale, adds a tool.
fn top_layer() -> Layer {
    Layer::new()
        .dir("etc/", 0o755)
        .file("etc/.wh.motd", b"")
        .dir("opt/", 0o755)
        .file("opt/.wh..wh..opq", b"")
        .file("opt/c", b"c")
        .dir("bin/", 0o755)
        .file_owned("bin/tool", 0o750, 1000, 2000, b"tool")
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(path, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.push(e.path());
        if e.file_type().unwrap().is_dir() {
            walk(&e.path(), out);
        }
    }
}

/// Unmounts on drop so that a failed assertion does not leave a mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = unmount(&self.0);
    }
}

#[test]
fn layers_unpack_keeps_modes_owners_links_devices_and_xattrs() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("fs");
    fs::create_dir(&dest).unwrap();
    let layer = Layer::new()
        .dir("./", 0o711)
        .dir("tmp/", 0o1777)
        .dir("home/alice/", 0o750)
        .file_owned("home/alice/notes", 0o640, 1000, 2000, b"hello")
        .dir("usr/bin/", 0o755)
        .file_owned("usr/bin/su", 0o4755, 0, 0, b"su binary")
        .file_owned("usr/bin/wall", 0o2755, 0, 5, b"wall")
        .hardlink("usr/bin/sudo", "usr/bin/su")
        .symlink("usr/bin/sh", "dash")
        .symlink("etc/localtime", "/usr/share/zoneinfo/UTC")
        .node("dev/null", EntryType::Char, 0o666, 1, 3)
        .node("dev/loop0", EntryType::Block, 0o660, 7, 0)
        .node("run/initctl", EntryType::Fifo, 0o600, 0, 0)
        .xattr_file(
            "etc/tagged",
            b"x",
            &[("SCHILY.xattr.user.shoal", b"yes"), ("SCHILY.xattr.trusted.overlay.redirect", b"/etc")],
        )
        .tar();
    let stats = unpack_layer(&layer[..], &dest).unwrap();
    assert_eq!(stats.compression, Compression::None);
    assert_eq!(stats.file_bytes, 5 + 9 + 4 + 1);

    let meta = |p: &str| fs::symlink_metadata(dest.join(p)).unwrap();
    assert_eq!(meta(".").mode() & 0o7777, 0o711, "`./` sets the layer root's metadata");
    assert_eq!(meta("tmp").mode() & 0o7777, 0o1777);
    assert_eq!(meta("home/alice").mode() & 0o7777, 0o750);
    assert_eq!(meta("home/alice").mtime(), MTIME as i64, "a directory keeps its mtime after children are written");
    let notes = meta("home/alice/notes");
    assert_eq!((notes.mode() & 0o7777, notes.uid(), notes.gid()), (0o640, 1000, 2000));
    assert_eq!(notes.mtime(), MTIME as i64);
    assert_eq!(meta("usr/bin/su").mode() & 0o7777, 0o4755);
    assert_eq!((meta("usr/bin/wall").mode() & 0o7777, meta("usr/bin/wall").gid()), (0o2755, 5));
    assert_eq!(meta("usr/bin/sudo").ino(), meta("usr/bin/su").ino());
    assert_eq!(meta("usr/bin/su").nlink(), 2);
    assert_eq!(fs::read_link(dest.join("usr/bin/sh")).unwrap(), Path::new("dash"));
    assert_eq!(fs::read_link(dest.join("etc/localtime")).unwrap(), Path::new("/usr/share/zoneinfo/UTC"));
    assert!(meta("dev/null").file_type().is_char_device());
    assert_eq!(meta("dev/null").rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(meta("dev/null").mode() & 0o7777, 0o666);
    assert!(meta("dev/loop0").file_type().is_block_device());
    assert_eq!(meta("dev/loop0").rdev(), rustix::fs::makedev(7, 0));
    assert!(meta("run/initctl").file_type().is_fifo());
    assert_eq!(xattr(&dest.join("etc/tagged"), "user.shoal").as_deref(), Some(&b"yes"[..]));
    assert_eq!(xattr(&dest.join("etc/tagged"), "trusted.overlay.redirect"), None, "overlay xattrs are dropped");
}

#[test]
fn layers_whiteouts_become_overlay_devices_and_opaque_dirs() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layer = top_layer().file(".wh.toplevel", b"").file("deep/er/.wh.gone", b"").file("x/.wh..wh.plnk", b"");
    let stats = unpack_layer(&layer.gzip()[..], tmp.path()).unwrap();
    assert_eq!(stats.compression, Compression::Gzip);
    assert_eq!((stats.whiteouts, stats.opaque_dirs), (3, 1));
    for whiteout in ["etc/motd", "toplevel", "deep/er/gone"] {
        let m = fs::symlink_metadata(tmp.path().join(whiteout)).unwrap();
        assert!(m.file_type().is_char_device(), "{whiteout} is a char device");
        assert_eq!(m.rdev(), 0, "{whiteout} is 0:0");
    }
    assert_eq!(xattr(&tmp.path().join("opt"), "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert_eq!(names(&tmp.path().join("opt")), ["c"]);
    let mut all = Vec::new();
    walk(tmp.path(), &mut all);
    assert!(all.iter().all(|p| !p.file_name().unwrap().to_string_lossy().starts_with(".wh.")), "{all:?}");
}

#[test]
fn layers_stack_into_the_merged_view_read_only_and_writable() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = LayerStore::open(&tmp.path().join("store")).unwrap();
    let (base, top) = (digest(1), digest(2));
    let base_tar = base_layer().tar();
    let top_gz = top_layer().gzip();
    let base_dir = store.ensure(&base, || Ok(&base_tar[..])).unwrap();
    let top_dir = store.ensure(&top, || Ok(&top_gz[..])).unwrap();
    assert_eq!(base_dir, store.root().join(&base).join("fs"));
    assert_eq!(store.list(), vec![base.clone(), top.clone()]);

    let merged = tmp.path().join("merged");
    fs::create_dir(&merged).unwrap();
    store.mount(&merged, &[&top, &base], None).unwrap();
    let guard = Mounted(merged.clone());
    let check_view = |root: &Path| {
        assert!(!root.join("etc/motd").exists(), "whited-out file is gone");
        assert_eq!(fs::read(root.join("etc/hostname")).unwrap(), b"base\n");
        assert_eq!(names(&root.join("opt")), ["c"], "opaque dir shows only the upper layer");
        assert_eq!(fs::read_link(root.join("usr/bin/sh")).unwrap(), Path::new("dash"));
        let tool = fs::metadata(root.join("bin/tool")).unwrap();
        assert_eq!((tool.mode() & 0o7777, tool.uid(), tool.gid()), (0o750, 1000, 2000));
        let (su, sudo) =
            (fs::metadata(root.join("usr/bin/su")).unwrap(), fs::metadata(root.join("usr/bin/sudo")).unwrap());
        assert_eq!(su.mode() & 0o7777, 0o4755);
        assert_eq!(su.ino(), sudo.ino(), "hard links share an inode");
    };
    check_view(&merged);
    let err = fs::write(merged.join("etc/new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(rustix::io::Errno::ROFS.raw_os_error()));
    drop(guard);
    assert!(!merged.join("etc").exists(), "unmounted");

    let (upper, work) = (tmp.path().join("upper"), tmp.path().join("work"));
    fs::create_dir(&upper).unwrap();
    fs::create_dir(&work).unwrap();
    mount_overlay(&merged, &[top_dir, base_dir], Some((&upper, &work))).unwrap();
    let guard = Mounted(merged.clone());
    check_view(&merged);
    fs::write(merged.join("etc/new"), b"new").unwrap();
    fs::remove_file(merged.join("etc/hostname")).unwrap();
    drop(guard);
    unmount(&merged).unwrap(); // a second unmount is fine
    assert_eq!(fs::read(upper.join("etc/new")).unwrap(), b"new");
    let whiteout = fs::symlink_metadata(upper.join("etc/hostname")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    assert_eq!(fs::read(store.get(&base).unwrap().unwrap().join("etc/hostname")).unwrap(), b"base\n");
}

#[test]
fn layers_single_layer_read_only_mount_is_a_read_only_bind() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = LayerStore::open(&tmp.path().join("store")).unwrap();
    let tar = base_layer().tar();
    store.ensure(&digest(7), || Ok(&tar[..])).unwrap();
    let target = tmp.path().join("rootfs");
    fs::create_dir(&target).unwrap();
    store.mount(&target, &[&digest(7)], None).unwrap();
    let _guard = Mounted(target.clone());
    assert_eq!(fs::read(target.join("etc/motd")).unwrap(), b"welcome\n");
    let err = fs::write(target.join("etc/motd"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(rustix::io::Errno::ROFS.raw_os_error()));
}

#[test]
fn layers_many_layers_mount_through_short_links() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = LayerStore::open(&tmp.path().join("store")).unwrap();
    let digests: Vec<String> = (100..170).map(digest).collect();
    for (i, d) in digests.iter().enumerate() {
        let tar = Layer::new().file(&format!("layer{i}"), d.as_bytes()).file("top", d.as_bytes()).tar();
        store.ensure(d, || Ok(&tar[..])).unwrap();
    }
    let full: Vec<PathBuf> = digests.iter().rev().map(|d| store.get(d).unwrap().unwrap()).collect();
    assert!(matches!(overlay_options(&full, None), Err(LayerError::MountOptionsTooLong { .. })));
    let target = tmp.path().join("merged");
    fs::create_dir(&target).unwrap();
    let top_first: Vec<&str> = digests.iter().rev().map(String::as_str).collect();
    store.mount(&target, &top_first, None).unwrap();
    let _guard = Mounted(target.clone());
    for i in 0..digests.len() {
        assert!(target.join(format!("layer{i}")).exists());
    }
    assert_eq!(fs::read(target.join("top")).unwrap(), digests[digests.len() - 1].as_bytes());
}

#[test]
fn layers_short_links_survive_prefix_collisions() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = LayerStore::open(tmp.path()).unwrap();
    let a = format!("{}{}", "ab".repeat(8), "1".repeat(48));
    let b = format!("{}{}", "ab".repeat(8), "2".repeat(48));
    let tar_a = Layer::new().file("who", b"a").tar();
    let tar_b = Layer::new().file("who", b"b").tar();
    store.ensure(&a, || Ok(&tar_a[..])).unwrap();
    store.ensure(&b, || Ok(&tar_b[..])).unwrap();
    let (la, lb) = (store.lower_path(&a).unwrap(), store.lower_path(&b).unwrap());
    assert_ne!(la, lb);
    assert_eq!(fs::read(la.join("who")).unwrap(), b"a");
    assert_eq!(fs::read(lb.join("who")).unwrap(), b"b");
    assert!(store.remove(&a).unwrap());
    assert!(!la.exists() && fs::symlink_metadata(&la).is_err(), "short link removed");
    assert_eq!(fs::read(store.lower_path(&b).unwrap().join("who")).unwrap(), b"b");
    assert!(!store.remove(&a).unwrap());
    assert_eq!(store.list(), vec![b.clone()]);
    assert!(matches!(store.lower_path(&a), Err(LayerError::NotFound { .. })));
}

#[test]
fn layers_refuse_parent_dir_and_absolute_names() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("fs");
    for (name, link) in
        [(&b"../evil"[..], None), (b"ok/../../evil", None), (b"/evil", None), (b"innocent", Some(&b"../evil"[..]))]
    {
        fs::create_dir(&dest).unwrap();
        let kind = if link.is_some() { EntryType::Link } else { EntryType::Regular };
        let layer = Layer::new().file("evil", b"inside").raw(kind, name, link, b"pwned").tar();
        let err = unpack_layer(&layer[..], &dest).unwrap_err();
        assert!(matches!(err, LayerError::UnsafePath { .. }), "{err}");
        assert!(err.to_string().contains("refusing"), "{err}");
        assert!(!tmp.path().join("evil").exists());
        fs::remove_dir_all(&dest).unwrap();
    }
}

#[test]
fn layers_symlinks_cannot_carry_writes_outside_the_layer() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("victim"), b"original").unwrap();
    let out = outside.to_str().unwrap();
    let fresh = |n: &str| {
        let d = tmp.path().join(n);
        fs::create_dir(&d).unwrap();
        d
    };

    // `a -> /abs/outside`, then `a/passwd`: resolved inside the layer, where it does not exist.
    let dest = fresh("l1");
    let layer = Layer::new().symlink("a", out).file("a/passwd", b"root::0:0").tar();
    let err = unpack_layer(&layer[..], &dest).unwrap_err();
    assert!(matches!(err, LayerError::BrokenParent { .. }), "{err}");

    // `b -> /etc` with the layer's own etc/: written to <layer>/etc/passwd.
    let dest = fresh("l2");
    let layer = Layer::new().dir("etc/", 0o755).symlink("b", "/etc").file("b/passwd", b"root::0:0").tar();
    unpack_layer(&layer[..], &dest).unwrap();
    assert_eq!(fs::read(dest.join("etc/passwd")).unwrap(), b"root::0:0");

    // Relative escape through `..` inside a symlink target stays at the layer root.
    let dest = fresh("l3");
    let layer = Layer::new().symlink("c", "../../../../../../..").file("c/escaped", b"x").tar();
    unpack_layer(&layer[..], &dest).unwrap();
    assert!(dest.join("escaped").exists());

    // A regular file over a symlink replaces the symlink instead of writing through it.
    let dest = fresh("l4");
    let victim = format!("{out}/victim");
    let layer = Layer::new().symlink("d", &victim).file("d", b"evil").tar();
    unpack_layer(&layer[..], &dest).unwrap();
    assert_eq!(fs::read(dest.join("d")).unwrap(), b"evil");
    assert!(fs::symlink_metadata(dest.join("d")).unwrap().is_file());

    // A hard link through a symlink to outside finds nothing to link.
    let dest = fresh("l5");
    let layer = Layer::new().symlink("e", out).hardlink("f", "e/victim").tar();
    let err = unpack_layer(&layer[..], &dest).unwrap_err();
    assert!(matches!(err, LayerError::HardlinkTarget { .. }), "{err}");

    assert_eq!(names(&outside), ["victim"]);
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"original");
    assert_eq!(fs::metadata(outside.join("victim")).unwrap().nlink(), 1);
}

#[test]
fn layers_later_entries_replace_earlier_ones() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layer = Layer::new()
        .file("x", b"one")
        .file("x", b"two")
        .dir("d/", 0o755)
        .file("d/f", b"f")
        .file("d", b"now a file")
        .symlink("s", "x")
        .dir("s/", 0o700)
        .dir("keep/", 0o755)
        .file("keep/a", b"a")
        .dir("keep/", 0o700)
        .tar();
    unpack_layer(&layer[..], tmp.path()).unwrap();
    assert_eq!(fs::read(tmp.path().join("x")).unwrap(), b"two");
    assert_eq!(fs::read(tmp.path().join("d")).unwrap(), b"now a file");
    assert!(fs::symlink_metadata(tmp.path().join("s")).unwrap().is_dir());
    assert_eq!(fs::read(tmp.path().join("keep/a")).unwrap(), b"a", "a repeated directory keeps its contents");
    assert_eq!(fs::metadata(tmp.path().join("keep")).unwrap().mode() & 0o7777, 0o700, "the last header wins");
}

#[test]
fn layers_truncated_gzip_is_an_error_and_leaves_no_layer() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = LayerStore::open(tmp.path()).unwrap();
    let gz = base_layer().file("big", &vec![7u8; 100_000]).gzip();
    let cut = &gz[..gz.len() / 2];
    let err = store.ensure(&digest(3), || Ok(cut)).unwrap_err();
    assert!(matches!(err, LayerError::Read { .. } | LayerError::Truncated), "{err}");
    assert_eq!(store.get(&digest(3)).unwrap(), None);
    assert!(store.list().is_empty());
    assert!(names(&tmp.path().join(".tmp")).is_empty(), "temporary directory cleaned up");

    // Cut just before the gzip trailer: the tar is complete but the CRC is never checked.
    let err = store.ensure(&digest(3), || Ok(&gz[..gz.len() - 4])).unwrap_err();
    assert!(matches!(err, LayerError::Read { .. }), "{err}");
    // A wrong CRC.
    let mut bad = gz.clone();
    let at = bad.len() - 8;
    bad[at] ^= 0xff;
    let err = store.ensure(&digest(3), || Ok(&bad[..])).unwrap_err();
    assert!(matches!(err, LayerError::Read { .. }), "{err}");
    assert!(store.list().is_empty());
    store.ensure(&digest(3), || Ok(&gz[..])).unwrap();
}

#[test]
fn layers_tar_without_end_marker_is_truncated() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tar = Layer::new().file("a", b"a").file("b", b"b").tar();
    let without_marker = &tar[..tar.len() - 1024];
    let err = unpack_layer(without_marker, tmp.path()).unwrap_err();
    assert!(matches!(err, LayerError::Truncated), "{err}");
    let err = unpack_layer(&b""[..], tmp.path()).unwrap_err();
    assert!(matches!(err, LayerError::Truncated), "{err}");
    // Cut inside an entry's contents.
    let tar = Layer::new().file("big", &[1u8; 5000]).tar();
    let err = unpack_layer(&tar[..3000], tmp.path()).unwrap_err();
    assert!(matches!(err, LayerError::Read { .. } | LayerError::Truncated), "{err}");
}

#[test]
fn layers_zstd_layer_unpacks() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let z = Layer::new().dir("a/", 0o755).file("a/b", b"zstd!").zstd();
    let stats = unpack_layer(&z[..], tmp.path()).unwrap();
    assert_eq!(stats.compression, Compression::Zstd);
    assert_eq!(fs::read(tmp.path().join("a/b")).unwrap(), b"zstd!");
    let err = unpack_layer(&z[..z.len() - 3], tmp.path()).unwrap_err();
    assert!(matches!(err, LayerError::Read { .. } | LayerError::Truncated), "{err}");
}

#[test]
fn layers_ensure_twice_does_not_unpack_again() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = LayerStore::open(tmp.path()).unwrap();
    let tar = base_layer().tar();
    let first = store.ensure(&digest(4), || Ok(&tar[..])).unwrap();
    let marker = first.join("etc/added-after");
    fs::write(&marker, b"kept").unwrap();
    let mut opened = false;
    let second = store
        .ensure(&digest(4), || {
            opened = true;
            Ok(&tar[..])
        })
        .unwrap();
    assert_eq!(first, second);
    assert!(!opened, "the blob is not opened again");
    assert!(marker.exists(), "the directory was not unpacked again");
}

#[test]
fn layers_concurrent_ensure_of_one_digest_agrees() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(LayerStore::open(tmp.path()).unwrap());
    let tar = Arc::new(base_layer().file("big", &vec![3u8; 1 << 20]).gzip());
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (store, tar, barrier) = (store.clone(), tar.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                store.ensure(&digest(5), || Ok(&tar[..])).unwrap()
            })
        })
        .collect();
    let paths: Vec<PathBuf> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(paths.iter().all(|p| p == &paths[0]));
    assert_eq!(fs::read(paths[0].join("big")).unwrap().len(), 1 << 20);
    assert!(names(&tmp.path().join(".tmp")).is_empty());
    assert_eq!(store.list(), vec![digest(5)]);
}

#[test]
fn layers_open_removes_leftovers_and_locks_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LayerStore::open(tmp.path()).unwrap();
    assert!(matches!(LayerStore::open(tmp.path()), Err(LayerError::StoreLocked { .. })));
    drop(store);
    let leftover = tmp.path().join(".tmp/0000-1-1/fs/usr");
    fs::create_dir_all(&leftover).unwrap();
    fs::write(leftover.join("half"), b"written").unwrap();
    let store = LayerStore::open(tmp.path()).unwrap();
    assert!(names(&tmp.path().join(".tmp")).is_empty());
    assert!(store.list().is_empty());
}

#[test]
fn layers_invalid_digests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LayerStore::open(tmp.path()).unwrap();
    let upper = "A".repeat(64);
    let short = "a".repeat(63);
    let dotted = format!("../{}", "a".repeat(61));
    for bad in ["", "sha256:abc", upper.as_str(), short.as_str(), dotted.as_str()] {
        let err = store.ensure(bad, || Ok(&b""[..])).unwrap_err();
        assert!(matches!(err, LayerError::InvalidDigest { .. }), "{bad}: {err}");
        assert!(matches!(store.remove(bad), Err(LayerError::InvalidDigest { .. })));
    }
}

#[test]
fn layers_mount_argument_errors_are_clear() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(mount_overlay(tmp.path(), &[], None), Err(LayerError::NoLowerLayers)));
    let comma = vec![PathBuf::from("/a,b"), PathBuf::from("/c")];
    assert!(matches!(overlay_options(&comma, None), Err(LayerError::MountPath { .. })));
    let relative = vec![PathBuf::from("a"), PathBuf::from("/c")];
    assert!(matches!(overlay_options(&relative, None), Err(LayerError::MountPath { .. })));
    let opts = overlay_options(&[PathBuf::from("/x"), PathBuf::from("/y")], Some((Path::new("/u"), Path::new("/w"))));
    assert_eq!(opts.unwrap(), "lowerdir=/x:/y,upperdir=/u,workdir=/w,index=off");
    // Not mounted, or not there at all: fine.
    unmount(tmp.path()).unwrap();
    unmount(&tmp.path().join("missing")).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn layers_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let tmp = tempfile::tempdir().unwrap();
        let _ = unpack_layer(&bytes[..], tmp.path());
    }

    #[test]
    fn layers_mutated_layers_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        gzip in any::<bool>(),
    ) {
        let layer = base_layer().node("dev/null", EntryType::Char, 0o666, 1, 3).symlink("x", "/etc");
        let mut bytes = if gzip { top_layer().gzip() } else { layer.tar() };
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= value;
        }
        let tmp = tempfile::tempdir().unwrap();
        let _ = unpack_layer(&bytes[..], tmp.path());
    }
}
