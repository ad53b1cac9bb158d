//! [`Blobs`]: the content subsystem's handle, what the agent's API calls.
//!
//! `start` opens the store, binds the data port, accepts control streams on the overlay,
//! resumes downloads that were running when the agent stopped, and announces held content in
//! the DHT. Every other method is one operation of `shoal share/get/content/image`.

use crate::cid::ContentId;
use crate::ctx::{Ctx, Running, serve_control, serve_data};
use crate::download::Download;
use crate::limit::RateLimit;
use crate::manifest::PieceManifest;
use crate::proto::{Request, Response};
use crate::store::{BlobRecord, BlobRef, ImageRecord, Store, StoreError, StoreSink, StoreSource, Stored, now_ms};
use crate::{Progress, TransferState};
use futures::StreamExt;
use shoal_image::{Digest, ImportOptions, Reference};
use shoal_overlay::Overlay;
use shoal_overlay::libp2p::PeerId;
use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How the content subsystem runs.
#[derive(Debug, Clone)]
pub struct BlobsConfig {
    /// `<data-dir>/content`.
    pub dir: PathBuf,
    /// Most bytes the store may hold.
    pub quota: Option<u64>,
    /// Where the data channel listens (port 0: any).
    pub data_listen: SocketAddr,
    /// Upload limit, bytes per second.
    pub upload_limit: Option<u64>,
    /// Download limit, bytes per second.
    pub download_limit: Option<u64>,
    /// Test only: corrupt every piece served (to test that peers cannot be poisoned).
    pub corrupt_uploads: bool,
    /// Who vouches for image tags in a keyed cluster (`None`: an open cluster, where the first
    /// peer that describes a tag is believed).
    pub tags: Option<Arc<dyn TagSeals>>,
}

/// Signs and checks image tags: in a keyed cluster a tag is desired state, so only an
/// operator's word says which manifest it names. A pull takes an image record from a peer only
/// with a valid seal, and of several the newest, so a peer cannot poison a tag.
pub trait TagSeals: Send + Sync + std::fmt::Debug + 'static {
    /// This peer's seal on `reference` → `manifest_digest`, if it may vouch (an operator).
    fn seal(&self, reference: &str, manifest_digest: &str) -> Option<String>;
    /// When `seal` was made (ms), if it is an operator's seal on `reference` → `manifest_digest`.
    fn check(&self, reference: &str, manifest_digest: &str, seal: &str) -> Option<u64>;
}

/// Errors of content operations, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum BlobsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen for data connections on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("no content matches `{0}` on this peer; `shoal content ls` lists it")]
    NoMatch(String),
    #[error("`{prefix}` matches several items ({matches}); give more of the id")]
    Ambiguous { prefix: String, matches: String },
    #[error(transparent)]
    Import(#[from] shoal_image::ImportError),
    #[error(transparent)]
    Export(#[from] shoal_image::ExportError),
    #[error("cannot fetch {cid}: {reason}")]
    Transfer { cid: ContentId, reason: String, failure: crate::TransferFailure },
    #[error("no peer holds image {0}; `shoal image ls` shows what the cluster has")]
    NoImageHolder(String),
    #[error(
        "image {0} is offered only by peers whose tag no operator signed (a worker's own import, or a poisoned tag); import it on a peer that holds the operator key"
    )]
    UnsignedTag(String),
    #[error("image {reference} from a peer is inconsistent: {reason}")]
    BadImage { reference: String, reason: String },
    #[error("the archive names no image; pass --name NAME:TAG")]
    NoName,
    #[error("`{0}` is not an image name: use NAME[:TAG], for example app:v1")]
    BadReference(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("internal task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the content protocol is already registered")]
    ProtocolTaken,
}

fn task_err(e: tokio::task::JoinError) -> BlobsError {
    BlobsError::Task(e)
}

/// An image with the peers that hold it.
#[derive(Debug, Clone)]
pub struct ImageSummary {
    pub record: ImageRecord,
    /// Names of the peers (this one included) that hold it.
    pub holders: Vec<String>,
}

/// The content subsystem. Cheap to clone.
#[derive(Clone)]
pub struct Blobs {
    ctx: Arc<Ctx>,
    tags: Option<Arc<dyn TagSeals>>,
}

/// Most image references a peer advertises in its record.
const MAX_ADVERTISED_IMAGES: usize = 64;
/// Control streams (`/shoal/blob/1`) served at once.
const MAX_CONTROL_STREAMS: usize = 256;
/// Data connections waiting for their ticket at once.
pub(crate) const MAX_WAITING_CONNECTIONS: usize = 128;
/// Data connections served at once (each one piece transfer with one peer).
pub(crate) const MAX_DATA_CONNECTIONS: usize = 512;

impl Blobs {
    pub async fn start(cfg: BlobsConfig, overlay: Overlay) -> Result<Blobs, BlobsError> {
        let dir = cfg.dir.clone();
        let quota = cfg.quota;
        let store = tokio::task::spawn_blocking(move || Store::open(&dir, quota)).await.map_err(task_err)??;
        let listener = TcpListener::bind(cfg.data_listen)
            .await
            .map_err(|source| BlobsError::Bind { addr: cfg.data_listen, source })?;
        let data_port =
            listener.local_addr().map_err(|source| BlobsError::Bind { addr: cfg.data_listen, source })?.port();
        if cfg.corrupt_uploads {
            warn!("TEST MODE: this peer corrupts every piece it uploads");
        }
        let ctx = Arc::new(Ctx {
            store: Arc::new(store),
            me: overlay.peer_id(),
            overlay: overlay.clone(),
            data_port,
            up: RateLimit::new(cfg.upload_limit),
            down: RateLimit::new(cfg.download_limit),
            corrupt_uploads: cfg.corrupt_uploads,
            tickets: Default::default(),
            running: Default::default(),
            sessions: Default::default(),
            next_sid: Default::default(),
            uploaded: Default::default(),
            shutdown: CancellationToken::new(),
            sent: Default::default(),
        });
        // Data connections: at most MAX_WAITING_CONNECTIONS that have not sent a ticket yet
        // (one past it is closed at once; a downloader retries), each closed after TICKET_WAIT
        // without one, and MAX_DATA_CONNECTIONS sessions of ticket holders. A flood of idle
        // connections can neither take every file descriptor nor the ticket holders' sessions.
        let c = ctx.clone();
        let waiting = Arc::new(tokio::sync::Semaphore::new(MAX_WAITING_CONNECTIONS));
        let sessions = Arc::new(tokio::sync::Semaphore::new(MAX_DATA_CONNECTIONS));
        tokio::spawn(async move {
            let mut refused = 0u64;
            loop {
                tokio::select! {
                    r = listener.accept() => match r {
                        Ok((s, from)) => match waiting.clone().try_acquire_owned() {
                            Ok(slot) => {
                                let (c, sessions) = (c.clone(), sessions.clone());
                                tokio::spawn(serve_data(c, s, slot, sessions));
                            }
                            Err(_) => {
                                refused += 1;
                                if refused.is_power_of_two() {
                                    warn!(%from, refused, "data connections at their limit; closing new ones");
                                }
                            }
                        },
                        Err(e) => { warn!(err = %e, "data listener error"); tokio::time::sleep(Duration::from_millis(100)).await; }
                    },
                    _ = c.shutdown.cancelled() => return,
                }
            }
        });
        // Control streams.
        let mut incoming =
            overlay.streams().accept(crate::proto::BLOB_PROTOCOL).map_err(|_| BlobsError::ProtocolTaken)?;
        let c = ctx.clone();
        let control_slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONTROL_STREAMS));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    next = incoming.next() => match next {
                        // Bounded: past MAX_CONTROL_STREAMS at once a new stream is dropped
                        // (the asker tries another holder or again later).
                        Some((peer, stream)) => match control_slots.clone().try_acquire_owned() {
                            Ok(slot) => {
                                let c = c.clone();
                                tokio::spawn(async move { serve_control(c, peer, stream).await; drop(slot); });
                            }
                            Err(_) => tracing::debug!(%peer, "control streams at their limit; stream dropped"),
                        },
                        None => return,
                    },
                    _ = c.shutdown.cancelled() => return,
                }
            }
        });
        let blobs = Blobs { ctx, tags: cfg.tags.clone() };
        info!(port = data_port, usage = blobs.ctx.store.usage(), "content store ready");
        blobs.seal_unsealed_images().await;
        // Resume downloads, announce what we hold.
        let b = blobs.clone();
        tokio::spawn(async move {
            let store = b.ctx.store.clone();
            let (wanted, complete) = tokio::task::spawn_blocking(move || {
                let all = store.list().unwrap_or_default();
                let wanted: Vec<ContentId> =
                    all.iter().filter(|(_, r)| !r.complete && r.wanted).map(|(c, _)| *c).collect();
                let complete: Vec<ContentId> = all.iter().filter(|(_, r)| r.complete).map(|(c, _)| *c).collect();
                (wanted, complete)
            })
            .await
            .unwrap_or_default();
            for cid in wanted {
                info!(%cid, "resuming an interrupted download");
                if let Err(e) = b.fetch(cid, None).await {
                    warn!(%cid, err = %e, "cannot resume a download");
                }
            }
            for cid in complete {
                let _ = b.ctx.overlay.provide(&cid.0).await;
            }
            b.advertise_images().await;
        });
        Ok(blobs)
    }

    pub fn store(&self) -> Arc<Store> {
        self.ctx.store.clone()
    }

    pub fn data_port(&self) -> u16 {
        self.ctx.data_port
    }

    /// Bytes in the content store.
    pub fn store_usage(&self) -> u64 {
        self.ctx.store.usage()
    }

    /// Bytes uploaded to peers since start.
    pub fn uploaded(&self) -> u64 {
        self.ctx.uploaded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops every download (their pieces are kept) and the listeners.
    pub fn shutdown(&self) {
        self.ctx.shutdown.cancel();
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, BlobsError> {
        let store = self.ctx.store.clone();
        Ok(tokio::task::spawn_blocking(move || f(&store)).await.map_err(task_err)??)
    }

    // ---- content --------------------------------------------------------------------------

    /// Stores what `r` yields and announces it.
    pub async fn share<R: Read + Send + 'static>(
        &self,
        mut r: R,
        size: Option<u64>,
        name: Option<String>,
    ) -> Result<Stored, BlobsError> {
        let stored = self.blocking(move |s| s.put(&mut r, size, None, name.as_deref())).await?;
        let _ = self.ctx.overlay.provide(&stored.cid.0).await;
        Ok(stored)
    }

    /// Every record (complete and partial).
    pub async fn list(&self) -> Result<Vec<(ContentId, BlobRecord)>, BlobsError> {
        self.blocking(|s| s.list()).await
    }

    /// A content id from a full id or a unique prefix of local content.
    pub async fn resolve(&self, text: &str) -> Result<ContentId, BlobsError> {
        if let Ok(cid) = text.parse::<ContentId>() {
            return Ok(cid);
        }
        let hex = text.trim().trim_start_matches("b3:").to_ascii_lowercase();
        if hex.len() < 4 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(BlobsError::NoMatch(text.to_string()));
        }
        let all = self.list().await?;
        let matches: Vec<ContentId> = all.iter().map(|(c, _)| *c).filter(|c| c.hex().starts_with(&hex)).collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(BlobsError::NoMatch(text.to_string())),
            many => Err(BlobsError::Ambiguous {
                prefix: text.to_string(),
                matches: many.iter().map(|c| c.short()).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    pub async fn remove(&self, cid: ContentId) -> Result<(), BlobsError> {
        // A running download of it stops first.
        self.ctx.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&cid);
        self.blocking(move |s| s.remove(&cid)).await?;
        let _ = self.ctx.overlay.unprovide(&cid.0).await;
        Ok(())
    }

    pub async fn pin(&self, cid: ContentId, pinned: bool) -> Result<(), BlobsError> {
        self.blocking(move |s| s.set_pinned(&cid, pinned)).await
    }

    /// A complete blob for reading, and its size.
    pub async fn open(&self, cid: ContentId) -> Result<(std::fs::File, u64), BlobsError> {
        self.blocking(move |s| {
            let f = s.open_blob(&cid)?;
            s.touch(&cid)?;
            let size = s.get(&cid)?.map(|r| r.size).unwrap_or(0);
            Ok((f, size))
        })
        .await
    }

    /// Streams blob `cid` from byte `offset`: from the store when it is complete, else while
    /// it downloads, in order, each piece as soon as it has arrived and been verified (the
    /// picker fetches the pieces just ahead of the reader first). Returns the blob's size and
    /// the chunks; an error ends the stream.
    pub async fn stream(
        &self,
        cid: ContentId,
        offset: u64,
    ) -> Result<(u64, mpsc::Receiver<std::io::Result<bytes::Bytes>>), BlobsError> {
        let (tx, rx) = mpsc::channel(4);
        if let Ok((file, size)) = self.open(cid).await {
            tokio::task::spawn_blocking(move || send_file(file, offset, size, tx));
            return Ok((size, rx));
        }
        let mut progress = self.fetch(cid, None).await?;
        let shared = self.ctx.running.lock().unwrap_or_else(|p| p.into_inner()).get(&cid).map(|r| r.shared.clone());
        let Some(shared) = shared else {
            // It completed in between.
            let (file, size) = self.open(cid).await?;
            tokio::task::spawn_blocking(move || send_file(file, offset, size, tx));
            return Ok((size, rx));
        };
        let size = shared.manifest.size;
        tokio::spawn(async move {
            let m = shared.manifest.clone();
            let first = if m.piece_size == 0 { 0 } else { (offset / u64::from(m.piece_size)) as u32 };
            // The piece this reader waits for steers the picker. Another reader of the same blob
            // may have moved the mark since: only our own mark is cleared.
            let release = |at: u32| {
                let _ = shared.reader_at.compare_exchange(
                    at,
                    u32::MAX,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                );
            };
            let mut at = u32::MAX;
            for i in first..m.pieces() {
                at = i;
                shared.reader_at.store(i, std::sync::atomic::Ordering::Relaxed);
                let mut over = false;
                loop {
                    let (arrived, failed) = {
                        let p = progress.borrow_and_update();
                        let failed = (p.state == TransferState::Failed)
                            .then(|| p.error.clone().unwrap_or_else(|| "the download failed".into()));
                        (p.have.get(i) || p.state == TransferState::Complete, failed)
                    };
                    if arrived {
                        break;
                    }
                    // Never a piece that is not here: the file holds zeros there.
                    let failed = failed.or_else(|| over.then(|| format!("the download stopped before piece {i}")));
                    if let Some(e) = failed {
                        let _ = tx.send(Err(std::io::Error::other(e))).await;
                        release(at);
                        return;
                    }
                    tokio::select! {
                        changed = progress.changed() => over = changed.is_err(),
                        // The reader went away while waiting.
                        () = tx.closed() => {
                            release(at);
                            return;
                        }
                    }
                }
                let (off, len) = m.range(i);
                let skip = if i == first { offset.saturating_sub(off) as usize } else { 0 };
                let file = shared.file.clone();
                let read = tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt;
                    let mut buf = vec![0u8; len];
                    file.read_exact_at(&mut buf, off).map(|()| bytes::Bytes::from(buf).slice(skip.min(len)..))
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                let stop = read.is_err();
                if tx.send(read).await.is_err() || stop {
                    break;
                }
            }
            release(at);
        });
        Ok((size, rx))
    }

    /// Every running download's progress.
    pub fn running(&self) -> Vec<Progress> {
        self.ctx
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|r| r.progress.borrow().clone())
            .collect()
    }

    /// A running or finished download's progress.
    pub fn progress(&self, cid: &ContentId) -> Option<Progress> {
        self.ctx.running.lock().unwrap_or_else(|p| p.into_inner()).get(cid).map(|r| r.progress.borrow().clone())
    }

    /// Starts fetching `cid` (or joins the running download); returns its progress.
    pub async fn fetch(
        &self,
        cid: ContentId,
        expect_sha256: Option<Digest>,
    ) -> Result<watch::Receiver<Progress>, BlobsError> {
        self.fetch_sized(cid, expect_sha256, None).await
    }

    /// [`Blobs::fetch`] of content that must be `expect_size` bytes long: content of another
    /// size (a peer naming the wrong content) is refused before a byte is fetched or space
    /// reserved.
    async fn fetch_sized(
        &self,
        cid: ContentId,
        expect_sha256: Option<Digest>,
        expect_size: Option<u64>,
    ) -> Result<watch::Receiver<Progress>, BlobsError> {
        let sized = |size: u64| match expect_size {
            Some(want) if want != size => Err(BlobsError::Transfer {
                cid,
                reason: format!("the content is {size} bytes, not the {want} expected"),
                failure: crate::TransferFailure::Other,
            }),
            _ => Ok(()),
        };
        if let Some(r) = self.ctx.running.lock().unwrap_or_else(|p| p.into_inner()).get(&cid) {
            sized(r.shared.manifest.size)?;
            return Ok(r.progress.clone());
        }
        let rec = self.blocking(move |s| s.get(&cid)).await?;
        if let Some(r) = &rec {
            sized(r.size)?;
        }
        if let Some(r) = &rec
            && r.complete
        {
            let store = self.ctx.store.clone();
            let m = tokio::task::spawn_blocking(move || store.manifest(&cid)).await.map_err(task_err)??;
            let pieces = m.as_ref().map_or(1, PieceManifest::pieces);
            let (_, rx) = watch::channel(Progress {
                cid,
                size: r.size,
                pieces,
                have_pieces: pieces,
                have_bytes: r.size,
                fetched_bytes: 0,
                peers: 0,
                rate_bps: 0.0,
                state: TransferState::Complete,
                error: None,
                failure: None,
                have: crate::bitfield::Bitfield::full(pieces),
                sources: Vec::new(),
            });
            return Ok(rx);
        }
        // The manifest: ours (resuming), or from any holder, checked against the id.
        let (manifest, bytes) = match self.blocking(move |s| s.manifest_bytes(&cid)).await? {
            Some(b) => (
                PieceManifest::decode_for(&cid, &b).map_err(|e| BlobsError::Transfer {
                    cid,
                    reason: e.to_string(),
                    failure: crate::TransferFailure::Other,
                })?,
                b,
            ),
            None => self.fetch_manifest(cid).await?,
        };
        sized(manifest.size)?;
        let manifest = Arc::new(manifest);
        let store = self.ctx.store.clone();
        let m2 = manifest.clone();
        let partial = tokio::task::spawn_blocking(move || store.begin_partial(&cid, m2, &bytes, expect_sha256, None))
            .await
            .map_err(task_err)??;
        let mut running = self.ctx.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = running.get(&cid) {
            return Ok(r.progress.clone());
        }
        let (dl, events, shared, progress) = Download::new(self.ctx.clone(), partial);
        running.insert(cid, Running { events, shared, progress: progress.clone() });
        drop(running);
        tokio::spawn(dl.run());
        Ok(progress)
    }

    async fn fetch_manifest(&self, cid: ContentId) -> Result<(PieceManifest, Vec<u8>), BlobsError> {
        // Peers that are starting or joining may not answer yet: ask for a while, but stop
        // early once every live peer has said twice that it does not have it.
        let start = tokio::time::Instant::now();
        let mut all_said_no = 0;
        let mut round = 0;
        loop {
            // Members first; the DHT from the second round on.
            let candidates = self.ctx.candidates(&cid, round > 0).await;
            round += 1;
            let asks = candidates.iter().map(|(peer, _)| {
                let ctx = self.ctx.clone();
                let peer = *peer;
                async move { (peer, ctx.ask(peer, &Request::Hello { cid, want_manifest: true }).await) }
            });
            let answers = futures::future::join_all(asks).await;
            let mut no = 0;
            for (peer, r) in &answers {
                match r {
                    Ok(Response::Offer(o)) => match o.manifest.as_deref().map(|b| PieceManifest::decode_for(&cid, b)) {
                        Some(Ok(m)) => return Ok((m, o.manifest.clone().unwrap_or_default())),
                        Some(Err(e)) => {
                            warn!(%peer, %cid, err = %e, "a peer sent a manifest that does not match the content id")
                        }
                        None => {}
                    },
                    Ok(Response::NotHere) => no += 1,
                    _ => {}
                }
            }
            if !answers.is_empty() && no == answers.len() {
                all_said_no += 1;
            }
            let waited = start.elapsed();
            let give_up = all_said_no >= 2
                || (candidates.is_empty() && waited > Duration::from_secs(3))
                || waited > Duration::from_secs(30);
            if give_up {
                return Err(BlobsError::Transfer {
                    cid,
                    failure: crate::TransferFailure::NoHolder,
                    reason: format!(
                        "no live peer holds it (asked {} peers); is it shared on a peer that is up?",
                        candidates.len()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Fetches `cid` and waits until it is complete.
    /// With `expect_sha256`, the content must hash to it, however it got here (a download
    /// joined or one finished before may have been started without that expectation).
    pub async fn fetch_and_wait(
        &self,
        cid: ContentId,
        expect_sha256: Option<Digest>,
        expect_size: Option<u64>,
    ) -> Result<(), BlobsError> {
        let mut rx = self.fetch_sized(cid, expect_sha256.clone(), expect_size).await?;
        let checked = async |this: &Self| match &expect_sha256 {
            Some(d) if !this.is_complete_as(cid, d).await => Err(BlobsError::Transfer {
                cid,
                reason: format!("the content is not {d}"),
                failure: crate::TransferFailure::Other,
            }),
            _ => Ok(()),
        };
        loop {
            let p = rx.borrow_and_update().clone();
            match p.state {
                TransferState::Complete => return checked(self).await,
                TransferState::Failed => {
                    return Err(BlobsError::Transfer {
                        cid,
                        reason: p.error.unwrap_or_else(|| "failed".into()),
                        failure: p.failure.unwrap_or(crate::TransferFailure::Other),
                    });
                }
                TransferState::Running => {}
            }
            if rx.changed().await.is_err() {
                // The download task ended; its last word is in the store.
                let done = self.blocking(move |s| s.get(&cid)).await?.is_some_and(|r| r.complete);
                return if done {
                    checked(self).await
                } else {
                    Err(BlobsError::Transfer {
                        cid,
                        reason: "interrupted".into(),
                        failure: crate::TransferFailure::Interrupted,
                    })
                };
            }
        }
    }

    // ---- images ---------------------------------------------------------------------------

    /// Imports an archive (docker save, OCI archive or layout, or a rootfs tarball).
    pub async fn import_image(&self, path: &Path, name: Option<String>) -> Result<ImageRecord, BlobsError> {
        if let Some(n) = &name {
            n.parse::<Reference>().map_err(|_| BlobsError::BadReference(n.clone()))?;
        }
        let (store, path, tags) = (self.ctx.store.clone(), path.to_path_buf(), self.tags.clone());
        let rec = tokio::task::spawn_blocking(move || -> Result<ImageRecord, BlobsError> {
            let mut sink = StoreSink::new(&store);
            let imported = shoal_image::import_archive(&path, &ImportOptions { name }, &mut sink)?;
            let reference = imported.reference.as_ref().ok_or(BlobsError::NoName)?.to_string();
            let blob_ref = |d: &shoal_image::Descriptor| -> Result<BlobRef, BlobsError> {
                let cid = match sink.stored.get(&d.digest) {
                    Some((c, _)) => *c,
                    None => store.by_sha256(&d.digest)?.ok_or_else(|| BlobsError::BadImage {
                        reference: reference.clone(),
                        reason: format!("blob {} was not stored", d.digest),
                    })?,
                };
                Ok(BlobRef { media_type: d.media_type.clone(), digest: d.digest.clone(), size: d.size, cid })
            };
            let rec = ImageRecord {
                reference: reference.clone(),
                manifest: blob_ref(&imported.manifest)?,
                config: blob_ref(&imported.config)?,
                layers: imported.layers.iter().map(&blob_ref).collect::<Result<_, _>>()?,
                index: None,
                created_ms: now_ms(),
                seal: tags.as_ref().and_then(|t| t.seal(&reference, &imported.manifest.digest.to_string())),
            };
            store.put_image(&rec)?;
            Ok(rec)
        })
        .await
        .map_err(task_err)??;
        for b in rec.blobs() {
            let _ = self.ctx.overlay.provide(&b.cid.0).await;
        }
        self.advertise_images().await;
        Ok(rec)
    }

    /// Records an image whose blobs are all in the store (pulled from a registry): sealed
    /// when this peer may vouch for tags, announced, advertised.
    pub async fn add_image(&self, mut rec: ImageRecord) -> Result<ImageRecord, BlobsError> {
        image_key(&rec.reference)?;
        rec.seal = self.tags.as_ref().and_then(|t| t.seal(&rec.reference, &rec.manifest.digest.to_string()));
        let r2 = rec.clone();
        self.blocking(move |s| {
            for b in r2.blobs() {
                if !s.get(&b.cid)?.is_some_and(|r| r.complete) {
                    return Err(StoreError::NotFound { cid: b.cid });
                }
            }
            s.put_image(&r2)
        })
        .await?;
        for b in rec.blobs() {
            let _ = self.ctx.overlay.provide(&b.cid.0).await;
        }
        self.advertise_images().await;
        Ok(rec)
    }

    /// Stores exactly `size` bytes from `r` whose sha256 must be `digest` (nothing is kept
    /// otherwise), and announces the blob.
    pub async fn share_verified<R: Read + Send + 'static>(
        &self,
        mut r: R,
        size: u64,
        digest: Digest,
    ) -> Result<ContentId, BlobsError> {
        let stored = self.blocking(move |s| s.put(&mut r, Some(size), Some(&digest), None)).await?;
        let _ = self.ctx.overlay.provide(&stored.cid.0).await;
        Ok(stored.cid)
    }

    /// Whether this peer holds an image named `reference` or a live peer advertises one.
    pub async fn is_known(&self, reference: &str) -> bool {
        let Ok(key) = image_key(reference) else { return false };
        let k2 = key.clone();
        if self.blocking(move |s| s.image(&k2)).await.ok().flatten().is_some() {
            return true;
        }
        self.image_holders().await.contains_key(&key)
    }

    /// The content id of a complete blob with this sha256, if the store holds one.
    pub async fn complete_sha256(&self, digest: &Digest) -> Option<ContentId> {
        let digest = digest.clone();
        self.blocking(move |s| {
            Ok(match s.by_sha256(&digest)? {
                Some(cid) if s.get(&cid)?.is_some_and(|r| r.complete) => Some(cid),
                _ => None,
            })
        })
        .await
        .ok()
        .flatten()
    }

    /// Whether `cid` is complete here and its bytes hash to `digest` (what a peer said it is).
    pub async fn is_complete_as(&self, cid: ContentId, digest: &Digest) -> bool {
        let digest = digest.clone();
        self.blocking(move |s| Ok(s.get(&cid)?.is_some_and(|r| r.complete && r.sha256.as_ref() == Some(&digest))))
            .await
            .unwrap_or(false)
    }

    /// On an operator peer, seals the images it holds that carry no seal (imported or pulled
    /// before tags were sealed): it vouches for what it already has.
    async fn seal_unsealed_images(&self) {
        let Some(tags) = self.tags.clone() else { return };
        let sealed = self
            .blocking(move |s| {
                let mut n = 0;
                for mut img in s.images()?.into_iter().filter(|i| i.seal.is_none()) {
                    img.seal = tags.seal(&img.reference, &img.manifest.digest.to_string());
                    if img.seal.is_some() {
                        s.put_image(&img)?;
                        n += 1;
                    }
                }
                Ok(n)
            })
            .await;
        match sealed {
            Ok(0) => {}
            Ok(n) => info!(images = n, "sealed the tags of images held from before"),
            Err(e) => warn!(err = %e, "cannot seal the images held from before"),
        }
    }

    /// Publishes the images this peer holds in its record, so others can find them.
    async fn advertise_images(&self) {
        let images = self.blocking(|s| s.images()).await.unwrap_or_default();
        let mut refs: Vec<String> = images.into_iter().map(|i| i.reference).collect();
        refs.sort();
        refs.truncate(MAX_ADVERTISED_IMAGES);
        let _ = self.ctx.overlay.set_ext("images", Some(serde_json::json!(refs))).await;
    }

    /// Local images, with the cluster peers that advertise each.
    pub async fn images(&self) -> Result<Vec<ImageSummary>, BlobsError> {
        let local = self.blocking(|s| s.images()).await?;
        let holders = self.image_holders().await;
        let me = self.ctx.overlay.status().await.ok().map(|_| "(self)".to_string()).unwrap_or_default();
        Ok(local
            .into_iter()
            .map(|record| {
                let mut h: Vec<String> = holders.get(&record.reference).cloned().unwrap_or_default();
                h.insert(0, me.clone());
                ImageSummary { record, holders: h }
            })
            .collect())
    }

    async fn image_holders(&self) -> HashMap<String, Vec<String>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for m in self.ctx.overlay.members().await.unwrap_or_default() {
            if let Some(list) = m.ext.get("images").and_then(|v| v.as_array()) {
                for r in list.iter().filter_map(|v| v.as_str()) {
                    out.entry(r.to_string()).or_default().push(if m.name.is_empty() {
                        m.peer.to_string()
                    } else {
                        m.name.clone()
                    });
                }
            }
        }
        out
    }

    /// Fetches an image another peer holds; its blobs come from every peer holding them.
    pub async fn pull(&self, reference: &str) -> Result<ImageRecord, BlobsError> {
        let reference = image_key(reference)?;
        let local = {
            let rf = reference.clone();
            self.blocking(move |s| s.image(&rf)).await?
        };
        if let Some(img) = local {
            let store = self.ctx.store.clone();
            let i2 = img.clone();
            let complete = tokio::task::spawn_blocking(move || {
                i2.blobs().all(|b| store.get(&b.cid).ok().flatten().is_some_and(|r| r.complete))
            })
            .await
            .map_err(task_err)?;
            if complete {
                return Ok(img);
            }
        }
        let rec = self.describe(&reference).await?;
        let bad = |reason: &str| BlobsError::BadImage { reference: reference.clone(), reason: reason.to_string() };
        // A name with a digest (`REPO@sha256:…`, what a service pins) is bound by it: the
        // peer's record must be that index or manifest.
        if let Some((_, pinned)) = reference.split_once('@')
            && rec.index.as_ref().unwrap_or(&rec.manifest).digest.as_str() != pinned
        {
            return Err(bad("a peer's record for this digest names other content"));
        }
        // The manifest first: it names the config and layers by sha256, binding everything.
        self.fetch_and_wait(rec.manifest.cid, Some(rec.manifest.digest.clone()), None).await?;
        let manifest = self.read_json(rec.manifest.cid).await?;
        let cfg = manifest["config"]["digest"].as_str().ok_or_else(|| bad("manifest has no config"))?;
        if cfg != rec.config.digest.to_string() {
            return Err(bad("config digest differs from the manifest"));
        }
        let layers: Vec<&str> = manifest["layers"]
            .as_array()
            .map(|l| l.iter().filter_map(|d| d["digest"].as_str()).collect())
            .unwrap_or_default();
        let ours: Vec<String> = rec.layers.iter().map(|l| l.digest.to_string()).collect();
        if layers != ours {
            return Err(bad("layer digests differ from the manifest"));
        }
        let fetches = std::iter::once(&rec.config)
            .chain(&rec.layers)
            .chain(&rec.index)
            .map(|b| self.fetch_and_wait(b.cid, Some(b.digest.clone()), None));
        for r in futures::future::join_all(fetches).await {
            r?;
        }
        if let Some(i) = &rec.index {
            let index = self.read_json(i.cid).await?;
            let named = index["manifests"]
                .as_array()
                .is_some_and(|l| l.iter().any(|e| e["digest"].as_str() == Some(rec.manifest.digest.as_str())));
            if !named {
                return Err(bad("the image's index does not name its manifest"));
            }
        }
        let mut rec = rec;
        rec.reference = reference;
        rec.created_ms = now_ms();
        let r2 = rec.clone();
        self.blocking(move |s| s.put_image(&r2)).await?;
        self.advertise_images().await;
        tracing::info!(ev = "image.pulled", image = %rec.reference, digest = %rec.manifest.digest, from = "peers", "pulled an image from peers");
        Ok(rec)
    }

    /// A manifest or index in the store, read as JSON (8 MiB at most).
    async fn read_json(&self, cid: ContentId) -> Result<serde_json::Value, BlobsError> {
        let store = self.ctx.store.clone();
        tokio::task::spawn_blocking(move || -> Result<serde_json::Value, BlobsError> {
            let mut f = store.open_blob(&cid)?;
            let mut buf = Vec::new();
            f.by_ref()
                .take(8 << 20)
                .read_to_end(&mut buf)
                .map_err(|source| BlobsError::Io { path: PathBuf::from("manifest"), source })?;
            serde_json::from_slice(&buf)
                .map_err(|e| BlobsError::BadImage { reference: String::new(), reason: e.to_string() })
        })
        .await
        .map_err(task_err)?
    }

    async fn describe(&self, reference: &str) -> Result<ImageRecord, BlobsError> {
        let members = self.ctx.overlay.members().await.unwrap_or_default();
        // Peers advertising the image first, then everyone else.
        let mut order: Vec<PeerId> = Vec::new();
        for m in &members {
            let has = m
                .ext
                .get("images")
                .and_then(|v| v.as_array())
                .is_some_and(|l| l.iter().any(|v| v.as_str() == Some(reference)));
            if has {
                order.insert(0, m.peer);
            } else {
                order.push(m.peer);
            }
        }
        // In a keyed cluster: the newest operator-sealed answer of up to this many.
        const SEALED_ANSWERS: usize = 3;
        let mut sealed: Vec<(u64, ImageRecord)> = Vec::new();
        let mut unsealed = false;
        for peer in order {
            let Ok(Response::Image { record }) =
                self.ctx.ask(peer, &Request::Describe { reference: reference.to_string() }).await
            else {
                continue;
            };
            let rec = match serde_json::from_slice::<ImageRecord>(&record) {
                Ok(r) => r,
                Err(e) => {
                    warn!(%peer, err = %e, "a peer described an image in a form this agent cannot read");
                    continue;
                }
            };
            let Some(tags) = &self.tags else { return Ok(rec) };
            let digest = rec.manifest.digest.to_string();
            match rec.seal.as_deref().and_then(|s| tags.check(reference, &digest, s)) {
                Some(at) => {
                    sealed.push((at, rec));
                    if sealed.len() >= SEALED_ANSWERS {
                        break;
                    }
                }
                None => {
                    unsealed = true;
                    warn!(%peer, reference, digest, "a peer offered an image tag no operator signed; ignored");
                }
            }
        }
        match sealed
            .into_iter()
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.manifest.digest.cmp(&b.1.manifest.digest)))
        {
            Some((_, rec)) => Ok(rec),
            None if unsealed => Err(BlobsError::UnsignedTag(reference.to_string())),
            None => Err(BlobsError::NoImageHolder(reference.to_string())),
        }
    }

    /// Writes `reference` as an OCI archive at `out` (atomically: a temp file, then rename).
    pub async fn export_image(&self, reference: &str, out: &Path) -> Result<(), BlobsError> {
        let r: Reference = reference.parse().map_err(|_| BlobsError::BadReference(reference.to_string()))?;
        let (store, out) = (self.ctx.store.clone(), out.to_path_buf());
        tokio::task::spawn_blocking(move || -> Result<(), BlobsError> {
            let img = store.image(&r.to_string())?.ok_or(StoreError::NoImage { reference: r.to_string() })?;
            let desc = shoal_image::Descriptor {
                media_type: img.manifest.media_type.clone(),
                digest: img.manifest.digest.clone(),
                size: img.manifest.size,
            };
            let tmp = out.with_extension("partial");
            let result = (|| {
                let f = std::fs::File::create(&tmp).map_err(|source| BlobsError::Io { path: tmp.clone(), source })?;
                let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
                shoal_image::export_oci_archive(&r, &desc, &StoreSource(&store), &mut w)?;
                let f = w.into_inner().map_err(|e| BlobsError::Io { path: tmp.clone(), source: e.into_error() })?;
                f.sync_all().map_err(|source| BlobsError::Io { path: tmp.clone(), source })?;
                std::fs::rename(&tmp, &out).map_err(|source| BlobsError::Io { path: out.clone(), source })
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        })
        .await
        .map_err(task_err)?
    }

    /// Removes an image; blobs no other image uses are removed too (unless pinned).
    pub async fn remove_image(&self, reference: &str) -> Result<Vec<ContentId>, BlobsError> {
        let key = image_key(reference)?;
        let removed = self.blocking(move |s| s.remove_image(&key, true)).await?;
        for c in &removed {
            let _ = self.ctx.overlay.unprovide(&c.0).await;
        }
        self.advertise_images().await;
        Ok(removed)
    }
}

/// The key an image is stored and advertised under: `NAME:TAG` (a missing tag is `latest`) or
/// `NAME@sha256:HEX` for an image pulled by digest.
pub fn image_key(reference: &str) -> Result<String, BlobsError> {
    let bad = || BlobsError::BadReference(reference.to_string());
    match reference.split_once('@') {
        Some((name, digest)) => {
            Reference::new(name, "latest").map_err(|_| bad())?;
            digest.parse::<Digest>().map_err(|_| bad())?;
            Ok(reference.to_string())
        }
        None => Ok(reference.parse::<Reference>().map_err(|_| bad())?.to_string()),
    }
}

/// Sends a complete blob from `offset` in 1 MiB chunks (on a blocking thread).
fn send_file(mut file: std::fs::File, offset: u64, size: u64, tx: mpsc::Sender<std::io::Result<bytes::Bytes>>) {
    use std::io::{Seek, SeekFrom};
    if let Err(e) = file.seek(SeekFrom::Start(offset.min(size))) {
        let _ = tx.blocking_send(Err(e));
        return;
    }
    let mut left = size.saturating_sub(offset);
    while left > 0 {
        let mut buf = vec![0u8; left.min(1 << 20) as usize];
        match file.read_exact(&mut buf) {
            Ok(()) => {
                left -= buf.len() as u64;
                if tx.blocking_send(Ok(bytes::Bytes::from(buf))).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}
