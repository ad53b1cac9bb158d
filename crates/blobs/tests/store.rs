//! The content store on its own: what is kept, what is refused, what is evicted, what survives.

use shoal_blobs::manifest::{ManifestBuilder, PieceManifest};
use shoal_blobs::store::{BlobRef, ImageRecord, Store, StoreError};
use shoal_image::Digest;
use std::sync::Arc;

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn files(dir: &std::path::Path, sub: &str) -> usize {
    std::fs::read_dir(dir.join(sub)).map(|r| r.count()).unwrap_or(0)
}

#[test]
fn put_dedupes_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), None).unwrap();
    let d = data(3 << 20, 1);
    let a = s.put(&mut d.as_slice(), Some(d.len() as u64), None, Some("a.bin")).unwrap();
    assert!(!a.existed);
    assert_eq!(a.sha256, Digest::of(&d));
    let b = s.put(&mut d.as_slice(), None, None, None).unwrap();
    assert!(b.existed && b.cid == a.cid, "same bytes, same id, stored once");
    assert_eq!(files(dir.path(), "blobs"), 1);
    let mut f = s.open_blob(&a.cid).unwrap();
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut back).unwrap();
    assert_eq!(back, d);
    assert_eq!(s.by_sha256(&a.sha256).unwrap(), Some(a.cid));
    assert_eq!(s.usage(), d.len() as u64);
}

#[test]
fn a_wrong_digest_or_a_short_read_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), None).unwrap();
    let d = data(100_000, 2);
    let wrong = Digest::of(b"something else");
    let e = s.put(&mut d.as_slice(), Some(d.len() as u64), Some(&wrong), None).unwrap_err();
    assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
    let e = s.put(&mut d.as_slice(), Some(d.len() as u64 + 1), None, None).unwrap_err();
    assert!(matches!(e, StoreError::SizeMismatch { .. }), "{e}");
    assert!(s.list().unwrap().is_empty());
    assert_eq!(files(dir.path(), "blobs") + files(dir.path(), "tmp"), 0);
    assert_eq!(s.usage(), 0, "failed writes release their reservation");
}

#[test]
fn quota_evicts_least_recently_used_but_never_pinned_or_image_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), Some(5 << 20)).unwrap();
    let put = |seed| {
        let d = data(2 << 20, seed);
        s.put(&mut d.as_slice(), Some(d.len() as u64), None, None).unwrap()
    };
    let a = put(1);
    std::thread::sleep(std::time::Duration::from_millis(5));
    let b = put(2);
    // A third 2 MiB blob does not fit: the least recently used (a) goes.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let c = put(3);
    assert!(s.get(&a.cid).unwrap().is_none());
    assert!(s.get(&b.cid).unwrap().is_some() && s.get(&c.cid).unwrap().is_some());
    // Pin b, make c part of an image: nothing can be evicted, so the next put is refused.
    s.set_pinned(&b.cid, true).unwrap();
    let r = |st: &shoal_blobs::store::Stored| BlobRef {
        media_type: "x".into(),
        digest: st.sha256.clone(),
        size: st.size,
        cid: st.cid,
    };
    s.put_image(&ImageRecord {
        reference: "app:v1".into(),
        manifest: r(&c),
        config: r(&c),
        layers: vec![],
        index: None,
        created_ms: 0,
        seal: None,
    })
    .unwrap();
    let d = data(2 << 20, 4);
    let e = s.put(&mut d.as_slice(), Some(d.len() as u64), None, None).unwrap_err();
    assert!(matches!(e, StoreError::Full { .. }), "{e}");
    assert!(e.to_string().contains("--store-quota"), "{e}");
    assert!(matches!(s.remove(&c.cid), Err(StoreError::InUse { .. })));
    // Removing the image frees its blobs.
    s.remove_image("app:v1", true).unwrap();
    assert!(s.get(&c.cid).unwrap().is_none());
}

#[test]
fn partial_downloads_survive_a_restart_and_complete_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(5 << 20 | 123, 9);
    let mut b = ManifestBuilder::new(d.len() as u64);
    b.update(&d);
    let m = b.finish();
    let cid = m.id();
    let sha = Digest::of(&d);
    {
        let s = Store::open(dir.path(), None).unwrap();
        let mut p = s.begin_partial(&cid, Arc::new(m.clone()), &m.encode(), Some(sha.clone()), None).unwrap();
        for i in [0u32, 2, 4] {
            let (off, len) = m.range(i);
            s.write_piece(&p, i, &d[off as usize..off as usize + len]).unwrap();
            p.have.set(i);
        }
        s.checkpoint(&p.checkpoint_job()).unwrap();
        // Written but not checkpointed: must not be claimed after a crash.
        let (off, len) = m.range(1);
        s.write_piece(&p, 1, &d[off as usize..off as usize + len]).unwrap();
        assert!(s.open_blob(&cid).is_err(), "a partial is never readable as a blob");
    }
    let s = Store::open(dir.path(), None).unwrap();
    assert_eq!(s.wanted().unwrap(), vec![cid]);
    let mut p = s.begin_partial(&cid, Arc::new(m.clone()), &m.encode(), None, None).unwrap();
    assert_eq!(p.have.ones().collect::<Vec<_>>(), vec![0, 2, 4]);
    let missing: Vec<u32> = (0..m.pieces()).filter(|i| !p.have.get(*i)).collect();
    for i in missing {
        let (off, len) = m.range(i);
        s.write_piece(&p, i, &d[off as usize..off as usize + len]).unwrap();
        p.have.set(i);
    }
    assert_eq!(s.finish_partial(p).unwrap(), sha);
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut s.open_blob(&cid).unwrap(), &mut back).unwrap();
    assert_eq!(back, d);
    assert!(s.wanted().unwrap().is_empty());
}

/// A crash after a finished download was committed and before its file was renamed into
/// place (simulated by moving the file back): the next open finishes the rename, the blob is
/// complete and readable, and nothing is downloaded again.
#[test]
fn a_crash_between_commit_and_rename_keeps_the_download() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(300_000, 9);
    let mut b = ManifestBuilder::new(d.len() as u64);
    b.update(&d);
    let m: PieceManifest = b.finish();
    let cid = m.id();
    {
        let s = Store::open(dir.path(), None).unwrap();
        let mut p = s.begin_partial(&cid, Arc::new(m.clone()), &m.encode(), None, None).unwrap();
        for i in 0..m.pieces() {
            let (off, len) = m.range(i);
            s.write_piece(&p, i, &d[off as usize..off as usize + len]).unwrap();
            p.have.set(i);
        }
        s.finish_partial(p).unwrap();
    }
    let name = cid.hex();
    std::fs::rename(dir.path().join("blobs").join(&name), dir.path().join("partial").join(&name)).unwrap();
    let s = Store::open(dir.path(), None).unwrap();
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut s.open_blob(&cid).expect("the blob survived"), &mut back).unwrap();
    assert_eq!(back, d);
    assert!(s.wanted().unwrap().is_empty(), "nothing to download again");
    assert_eq!(files(dir.path(), "partial"), 0);
}

#[test]
fn a_download_that_does_not_match_its_expected_digest_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), None).unwrap();
    let d = data(1000, 3);
    let mut b = ManifestBuilder::new(d.len() as u64);
    b.update(&d);
    let m: PieceManifest = b.finish();
    let mut p = s.begin_partial(&m.id(), Arc::new(m.clone()), &m.encode(), Some(Digest::of(b"not it")), None).unwrap();
    s.write_piece(&p, 0, &d).unwrap();
    p.have.set(0);
    assert!(matches!(s.finish_partial(p), Err(StoreError::DigestMismatch { .. })));
    assert!(s.get(&m.id()).unwrap().is_none());
    assert_eq!(files(dir.path(), "partial") + files(dir.path(), "blobs"), 0);
}

#[test]
fn leftovers_of_a_crash_are_cleaned_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), None).unwrap();
        let d = data(10, 1);
        s.put(&mut d.as_slice(), None, None, None).unwrap();
    }
    std::fs::write(dir.path().join("tmp/half-written"), b"x").unwrap();
    std::fs::write(dir.path().join("blobs/ffff"), b"orphan").unwrap();
    let s = Store::open(dir.path(), None).unwrap();
    assert_eq!(files(dir.path(), "tmp"), 0);
    assert_eq!(files(dir.path(), "blobs"), 1);
    assert_eq!(s.list().unwrap().len(), 1);
}
