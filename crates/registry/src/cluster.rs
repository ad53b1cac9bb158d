//! Pulling from a registry once per cluster, with no tracker.
//!
//! Each blob has an owner: the live peer that rendezvous hashing picks for its digest
//! (highest `blake3(digest ‖ peer id)`). A peer that needs a blob nobody in the cluster holds
//! asks the owner over `/shoal/upstream/1`; the owner fetches it from the registry once (a
//! second ask waits for the first fetch) into its content store and answers the content id;
//! every asker then swarms the blob from the owner and from each other. All peers compute the
//! same owner from the same membership, so N peers asking at once cause one registry fetch.
//! If the owner dies or fails, the asker fetches the blob itself: the registry is the last
//! resort, never a single point of failure.
//!
//! Tags resolve the same way, keyed by the reference: the owner asks the registry and keeps
//! the answer briefly (30 s), so a burst of pulls costs one manifest request. A tag answer
//! decides what every replica runs, so in a keyed cluster only operator peers resolve tags
//! for others (the caller's `may_resolve` says who); a digest answer is checked by its hash
//! and may come from anyone. With the registry down, the owner answers from what it resolved
//! before.

use crate::error::RegistryError;
use crate::reference::ImageRef;
use crate::upstream::{RawManifest, Resolved, Upstream, choose_platform, parse_manifest};
use futures::future::BoxFuture;
use futures::{AsyncWriteExt, StreamExt};
use serde::{Deserialize, Serialize};
use shoal_blobs::proto::{read_msg, write_msg};
use shoal_blobs::store::BlobRef;
use shoal_blobs::{Blobs, BlobsError, ContentId, ImageRecord};
use shoal_image::{Descriptor, Digest};
use shoal_overlay::Overlay;
use shoal_overlay::libp2p::{PeerId, StreamProtocol};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// The protocol peers ask each other to fetch from a registry on.
pub const UPSTREAM_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/upstream/1");
/// Largest ask.
const MAX_ASK: usize = 4096;
/// Largest answer: an index and a manifest.
const MAX_ANSWER: usize = 2 * crate::upstream::MAX_MANIFEST_BYTES + 4096;
/// Asks served at once; past it a peer is told `Busy` and fetches for itself.
const MAX_SERVED: usize = 32;
/// How long a resolved tag is reused without asking the registry again.
const TAG_FRESH: Duration = Duration::from_secs(30);
/// How long a resolved tag is kept for when the registry cannot be reached.
const TAG_KEPT: Duration = Duration::from_secs(24 * 3600);
/// Most tags remembered.
const MAX_TAGS: usize = 4096;
/// How long a stream to a peer may take to open.
const STREAM_OPEN: Duration = Duration::from_secs(5);
/// How long a peer may take to resolve a reference for this one.
const MANIFEST_ASK: Duration = Duration::from_secs(20);
/// How long a peer's ask may be served for: a fetch of the largest blob at a slow 1 MiB/s.
const SERVE_LIMIT: Duration = Duration::from_secs(3600);
/// Blobs fetched from peers or the registry at once for one pull.
const PARALLEL_BLOBS: usize = 4;

/// What a peer asks on [`UPSTREAM_PROTOCOL`] (public for tests that play a hostile peer).
#[derive(Debug, Serialize, Deserialize)]
pub enum Ask {
    /// "Resolve this reference (tag or digest) to its manifest."
    Manifest { reference: String },
    /// "Fetch blob `digest`, which manifest `manifest` of that repository names, into your
    /// store and tell me its content id." The owner resolves the manifest itself and takes the
    /// blob's size from it: a peer cannot make another fetch a blob no manifest names.
    Blob { reference: String, manifest: String, digest: String },
}

/// Why an ask got no answer.
enum Miss {
    /// No stream to the peer, or one that broke at once (not connected yet, a protocol still
    /// being negotiated, gone): worth trying again shortly.
    Open,
    /// The peer took the ask but did not answer in time: it is not asked again.
    NoAnswer,
}

/// What a peer answers on [`UPSTREAM_PROTOCOL`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Answer {
    Manifest { index: Option<RawManifest>, manifest: RawManifest },
    Blob { cid: ContentId },
    Failed { kind: String, message: String },
    Busy,
}

/// A resolved reference: when, the index (if any) and the manifest.
type TagAnswer = (Instant, Option<RawManifest>, RawManifest);

/// Who may resolve tags for this peer (in a keyed cluster: operators).
pub type MayResolve = Arc<dyn Fn(PeerId) -> BoxFuture<'static, bool> + Send + Sync>;

/// Where each blob of a pull came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Already in this peer's store.
    Local,
    /// Swarmed from peers (one of which may have fetched it from the registry for us).
    Peers,
    /// Fetched from the registry by this peer.
    Registry,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Peers => "peers",
            Source::Registry => "registry",
        }
    }
}

/// One blob of a pull in progress.
#[derive(Debug, Clone, Serialize)]
pub struct BlobProgress {
    pub digest: String,
    pub size: u64,
    pub done: u64,
    pub source: Option<Source>,
    pub finished: bool,
    #[serde(skip)]
    cid: Option<ContentId>,
}

/// A pull in progress, as the CLI shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PullProgress {
    pub reference: String,
    pub blobs: Vec<BlobProgress>,
}

/// Pulls images from registries for this peer and fetches for others.
pub struct Cluster {
    upstream: Arc<Upstream>,
    blobs: Blobs,
    overlay: Overlay,
    me: PeerId,
    may_resolve: MayResolve,
    /// Reference → (when resolved, answer).
    tags: Mutex<HashMap<String, TagAnswer>>,
    /// One fetch per digest at a time on this peer.
    fetching: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Pulls in progress, by reference.
    pulls: Mutex<HashMap<String, Arc<Mutex<PullProgress>>>>,
    /// Registry byte counters of fetches in progress (digest → bytes so far).
    fetched: Mutex<HashMap<Digest, Arc<std::sync::atomic::AtomicU64>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("me", &self.me).finish()
    }
}

impl Cluster {
    /// Starts serving other peers' asks.
    pub async fn start(
        upstream: Arc<Upstream>,
        blobs: Blobs,
        overlay: Overlay,
        may_resolve: MayResolve,
    ) -> Result<Arc<Cluster>, RegistryError> {
        let me = overlay
            .status()
            .await
            .map_err(|e| RegistryError::Registry { registry: "-".into(), message: e.to_string() })?
            .peer_id;
        let cluster = Arc::new(Cluster {
            upstream,
            blobs,
            overlay: overlay.clone(),
            me,
            may_resolve,
            tags: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
            pulls: Mutex::new(HashMap::new()),
            fetched: Mutex::new(HashMap::new()),
        });
        let mut incoming = overlay
            .streams()
            .accept(UPSTREAM_PROTOCOL)
            .map_err(|e| RegistryError::Registry { registry: "-".into(), message: e.to_string() })?;
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SERVED));
        let weak = Arc::downgrade(&cluster);
        tokio::spawn(async move {
            while let Some((peer, mut stream)) = incoming.next().await {
                let Some(c) = weak.upgrade() else { return };
                let slot = slots.clone().try_acquire_owned();
                tokio::spawn(async move {
                    let ask =
                        match tokio::time::timeout(Duration::from_secs(10), read_msg::<_, Ask>(&mut stream, MAX_ASK))
                            .await
                        {
                            Ok(Ok(a)) => a,
                            _ => return,
                        };
                    let answer = match slot {
                        Ok(_slot) => {
                            // The asker sends one ask and waits: anything more from it (its
                            // stream closing, it giving up) ends the work done for it.
                            let mut more = [0u8; 1];
                            tokio::select! {
                                a = tokio::time::timeout(SERVE_LIMIT, c.serve(peer, ask)) => a.unwrap_or(Answer::Busy),
                                _ = futures::AsyncReadExt::read(&mut stream, &mut more) => {
                                    tracing::debug!(%peer, "the asker went away: its ask is dropped");
                                    return;
                                }
                            }
                        }
                        Err(_) => Answer::Busy,
                    };
                    let _ = write_msg(&mut stream, &answer).await;
                    let _ = stream.close().await;
                });
            }
        });
        Ok(cluster)
    }

    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    async fn serve(&self, peer: PeerId, ask: Ask) -> Answer {
        let failed = |e: RegistryError| Answer::Failed { kind: e.kind().into(), message: e.to_string() };
        let reference = match &ask {
            Ask::Manifest { reference } | Ask::Blob { reference, .. } => reference,
        };
        let r = match ImageRef::parse(reference) {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        // A loopback registry is this machine's: only a peer on the same machine means the same
        // one (and another machine's peer has no business with this one's local services). Its
        // addresses are its own claim: its connections to this peer must come from the
        // loopback too.
        if is_local(&r).await && !(self.machine_mates().await.contains(&peer) && self.connected_locally(peer).await) {
            return Answer::Failed {
                kind: "refused".into(),
                message: "a loopback registry is fetched from only for peers on the same machine".into(),
            };
        }
        match ask {
            Ask::Manifest { .. } => {
                debug!(%peer, %r, "resolving for a peer");
                match self.resolve_here(&r).await {
                    Ok((index, manifest)) => Answer::Manifest { index, manifest },
                    Err(e) => failed(e),
                }
            }
            Ask::Blob { manifest, digest, .. } => {
                let d = match self.named_blob(&r, &manifest, &digest).await {
                    Ok(d) => d,
                    Err(e) => return failed(e),
                };
                debug!(%peer, %r, digest = %d.digest, "fetching a blob for a peer");
                match self.fetch_here(&r, &d).await {
                    Ok(cid) => Answer::Blob { cid },
                    Err(e) => failed(e),
                }
            }
        }
    }

    /// The descriptor of blob `digest` in manifest `manifest` of `r`'s repository, as this
    /// peer resolves that manifest itself (a digest: cached, one request per image at most).
    async fn named_blob(&self, r: &ImageRef, manifest: &str, digest: &str) -> Result<Descriptor, RegistryError> {
        let bad = |why: String| RegistryError::BadManifest { reference: r.to_string(), why };
        let manifest: Digest = manifest.parse().map_err(|_| bad("a malformed manifest digest".into()))?;
        let at = r.at_digest(manifest.as_str());
        let (index, m) = self.resolve_here(&at).await?;
        let res = parse_manifest(&at, index, m)?;
        std::iter::once(&res.config)
            .chain(&res.layers)
            .find(|d| d.digest.as_str() == digest)
            .cloned()
            .ok_or_else(|| bad(format!("manifest {manifest} names no blob {digest}")))
    }

    /// The peers that may fetch from `r`'s registry for others: every live peer (and this
    /// one), or for a loopback registry only those on this machine.
    async fn members_here(&self, r: &ImageRef) -> Vec<PeerId> {
        let mut peers: Vec<PeerId> = if r.is_loopback() {
            self.machine_mates().await
        } else {
            self.overlay.members().await.unwrap_or_default().into_iter().map(|m| m.peer).collect()
        };
        if !peers.contains(&self.me) {
            peers.push(self.me);
        }
        peers
    }

    /// Live peers on this machine (all their addresses on the loopback: a peer claiming one
    /// it does not answer on is found dead by the failure detector).
    async fn machine_mates(&self) -> Vec<PeerId> {
        let members = self.overlay.members().await.unwrap_or_default();
        members.into_iter().filter(|m| on_loopback(&m.addrs)).map(|m| m.peer).collect()
    }

    /// Whether every connection `peer` has open to this peer comes from the loopback (as the
    /// transport saw it, whatever the peer advertises).
    async fn connected_locally(&self, peer: PeerId) -> bool {
        on_loopback(&self.overlay.remote_addrs(peer).await.unwrap_or_default())
    }

    /// What `r` names now: the digest of its index, or of its manifest when it has no index
    /// (what a service pins).
    pub async fn resolve_top(&self, r: &ImageRef) -> Result<Digest, RegistryError> {
        let res = self.resolve(r).await?;
        Ok(res.index.as_ref().unwrap_or(&res.manifest).digest.clone())
    }

    /// Resolves `r` (through the owner of its name when that is another peer).
    pub async fn resolve(&self, r: &ImageRef) -> Result<Resolved, RegistryError> {
        let key = r.key();
        let mut candidates = self.members_here(r).await;
        if r.digest().is_none() {
            // Only peers that may vouch for a tag resolve it for others.
            let mut vouching = Vec::new();
            for p in candidates {
                if p == self.me || (self.may_resolve)(p).await {
                    vouching.push(p);
                }
            }
            candidates = vouching;
        }
        let owner = owner_of(key.as_bytes(), &candidates);
        if let Some(owner) = owner.filter(|o| *o != self.me) {
            // Whatever the owner says short of a checked answer (even "no such tag"), this peer
            // asks the registry itself: a peer's word is never the last.
            match self.ask_again(owner, &Ask::Manifest { reference: key.clone() }, MANIFEST_ASK).await {
                Some(Answer::Manifest { index, manifest }) => match check_answer(r, index, manifest) {
                    Ok(res) => match self.for_this_platform(r, res).await {
                        Ok(res) => return Ok(res),
                        Err(e) => debug!(peer = %owner, err = %e, "resolving this platform's manifest here"),
                    },
                    Err(e) => warn!(peer = %owner, err = %e, "a peer's answer for a tag did not check out"),
                },
                other => debug!(peer = %owner, answer = ?other.map(|a| format!("{a:?}")), "resolving here instead"),
            }
        }
        let (index, manifest) = self.resolve_here(r).await?;
        parse_manifest(r, index, manifest)
    }

    /// An answer resolved on a peer of another platform names that peer's manifest: this
    /// peer's is chosen from the same index (checked by its digest, from a peer or the registry).
    async fn for_this_platform(&self, r: &ImageRef, res: Resolved) -> Result<Resolved, RegistryError> {
        let Some(index) = &res.index else { return Ok(res) };
        let want = choose_platform(r, index, self.upstream.platform())?;
        if want == res.manifest.digest {
            return Ok(res);
        }
        let at = r.at_digest(want.as_str());
        let owner = owner_of(at.key().as_bytes(), &self.members_here(r).await).filter(|o| *o != self.me);
        let from_peer = match owner {
            Some(o) => match self.ask_again(o, &Ask::Manifest { reference: at.key() }, MANIFEST_ASK).await {
                Some(Answer::Manifest { index: None, manifest }) => check_answer(&at, None, manifest).ok(),
                _ => None,
            },
            None => None,
        };
        let manifest = match from_peer {
            Some(m) => m.manifest,
            None => self.upstream.manifest(&at).await?,
        };
        parse_manifest(r, res.index, manifest)
    }

    /// Resolves `r` with the registry (or this peer's recent answer).
    async fn resolve_here(&self, r: &ImageRef) -> Result<(Option<RawManifest>, RawManifest), RegistryError> {
        let key = r.key();
        let cached = self.tags.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        if let Some((at, index, manifest)) = &cached
            && (at.elapsed() < TAG_FRESH || r.digest().is_some())
        {
            return Ok((index.clone(), manifest.clone()));
        }
        match self.upstream.resolve(r).await {
            Ok(res) => {
                let mut tags = self.tags.lock().unwrap_or_else(|e| e.into_inner());
                if tags.len() >= MAX_TAGS {
                    tags.retain(|_, (at, _, _)| at.elapsed() < TAG_FRESH);
                }
                if tags.len() < MAX_TAGS {
                    tags.insert(key, (Instant::now(), res.index.clone(), res.manifest.clone()));
                }
                Ok((res.index, res.manifest))
            }
            Err(e @ RegistryError::Unreachable { .. }) => match cached {
                Some((at, index, manifest)) if at.elapsed() < TAG_KEPT => {
                    warn!(%r, err = %e, "the registry cannot be reached: using the answer from before");
                    Ok((index, manifest))
                }
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// One ask: `limit` for the answer once the stream is open.
    async fn ask(&self, peer: PeerId, ask: &Ask, limit: Duration) -> Result<Answer, Miss> {
        let mut streams = self.overlay.streams();
        let mut stream = match tokio::time::timeout(STREAM_OPEN, streams.open_stream(peer, UPSTREAM_PROTOCOL)).await {
            Ok(Ok(s)) => s,
            _ => return Err(Miss::Open),
        };
        // A stream opens lazily: an error on it is a failed open (cheap to try again), only
        // silence past `limit` is a peer that does not answer.
        let exchange = async {
            write_msg(&mut stream, ask).await.ok()?;
            read_msg::<_, Answer>(&mut stream, MAX_ANSWER).await.ok()
        };
        match tokio::time::timeout(limit, exchange).await {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => Err(Miss::Open),
            Err(_) => Err(Miss::NoAnswer),
        }
    }

    /// An ask, tried again a few times while no stream opens (a connection still being set
    /// up); a peer that took the ask and did not answer is not asked again.
    async fn ask_again(&self, peer: PeerId, ask: &Ask, limit: Duration) -> Option<Answer> {
        for attempt in 0..3 {
            match self.ask(peer, ask, limit).await {
                Ok(a) => return Some(a),
                Err(Miss::NoAnswer) => return None,
                Err(Miss::Open) => tokio::time::sleep(Duration::from_millis(200 << attempt)).await,
            }
        }
        None
    }

    /// Pulls `r` into this peer's store and records it as an image.
    pub async fn pull(&self, r: &ImageRef) -> Result<ImageRecord, RegistryError> {
        let key = r.key();
        let progress = Arc::new(Mutex::new(PullProgress { reference: key.clone(), blobs: Vec::new() }));
        self.pulls.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), progress.clone());
        // Gone from the list however the pull ends, a caller that gives up included.
        let _listed = Unlist { map: &self.pulls, key, mine: progress.clone() };
        self.pull_inner(r, &progress).await
    }

    async fn pull_inner(
        &self,
        r: &ImageRef,
        progress: &Arc<Mutex<PullProgress>>,
    ) -> Result<ImageRecord, RegistryError> {
        let res = self.resolve(r).await?;
        let mut wanted: Vec<Descriptor> = Vec::new();
        for d in std::iter::once(&res.config).chain(&res.layers) {
            if !wanted.iter().any(|w| w.digest == d.digest) {
                wanted.push(d.clone());
            }
        }
        progress.lock().unwrap_or_else(|e| e.into_inner()).blobs = wanted
            .iter()
            .map(|d| BlobProgress {
                digest: d.digest.to_string(),
                size: d.size,
                done: 0,
                source: None,
                finished: false,
                cid: None,
            })
            .collect();
        // Collected first: a lazy iterator's closure in the future's state makes it not Send.
        let mut fetches = Vec::with_capacity(wanted.len());
        for (i, d) in wanted.iter().enumerate() {
            fetches.push(self.fetch_one(r, &res.manifest.digest, d, progress, i));
        }
        let fetched: Vec<Result<(Digest, ContentId), RegistryError>> =
            futures::stream::iter(fetches).buffer_unordered(PARALLEL_BLOBS).collect().await;
        let mut cids = HashMap::new();
        for f in fetched {
            let (d, c) = f?;
            cids.insert(d, c);
        }
        let blob_ref = |d: &Descriptor| -> Result<BlobRef, RegistryError> {
            let cid = *cids.get(&d.digest).ok_or_else(|| RegistryError::BadManifest {
                reference: r.to_string(),
                why: format!("blob {} was not fetched", d.digest),
            })?;
            Ok(BlobRef { media_type: d.media_type.clone(), digest: d.digest.clone(), size: d.size, cid })
        };
        let config = blob_ref(&res.config)?;
        let layers = res.layers.iter().map(blob_ref).collect::<Result<Vec<_>, _>>()?;
        let manifest = self.store_bytes(r, &res.manifest).await?;
        let index = match &res.index {
            Some(i) => Some(self.store_bytes(r, i).await?),
            None => None,
        };
        let rec = ImageRecord {
            reference: r.key(),
            manifest,
            config,
            layers,
            index,
            created_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            seal: None,
        };
        let top = rec.index.as_ref().unwrap_or(&rec.manifest).digest.clone();
        let rec = self.blobs.add_image(rec).await.map_err(|e| store_err(r, e))?;
        if r.digest().is_none() {
            // Also under its digest, so a service pinned to it (and a pull by digest) finds it
            // on the peers when the registry is down.
            let mut by_digest = rec.clone();
            by_digest.reference = format!("{}/{}@{top}", r.registry(), r.repository());
            self.blobs.add_image(by_digest).await.map_err(|e| store_err(r, e))?;
        }
        info!(ev = "image.pulled", image = %rec.reference, digest = %rec.manifest.digest, from = "registry", "pulled from the registry");
        Ok(rec)
    }

    /// One blob of a pull, its progress marked done.
    async fn fetch_one(
        &self,
        r: &ImageRef,
        manifest: &Digest,
        d: &Descriptor,
        progress: &Arc<Mutex<PullProgress>>,
        i: usize,
    ) -> Result<(Digest, ContentId), RegistryError> {
        let (cid, source) = self.ensure_blob(r, manifest, d, progress, i).await?;
        let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
        p.blobs[i].source = Some(source);
        p.blobs[i].done = d.size;
        p.blobs[i].finished = true;
        Ok((d.digest.clone(), cid))
    }

    /// Pulls in progress on this peer.
    pub fn pulls(&self) -> Vec<PullProgress> {
        let pulls: Vec<Arc<Mutex<PullProgress>>> =
            self.pulls.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        let fetched = self.fetched.lock().unwrap_or_else(|e| e.into_inner()).clone();
        pulls
            .into_iter()
            .map(|p| {
                let mut p = p.lock().unwrap_or_else(|e| e.into_inner()).clone();
                for b in p.blobs.iter_mut().filter(|b| !b.finished) {
                    let from_registry = b.digest.parse::<Digest>().ok().and_then(|d| fetched.get(&d).cloned());
                    if let Some(n) = from_registry {
                        b.done = n.load(std::sync::atomic::Ordering::Relaxed);
                        b.source = Some(Source::Registry);
                    } else if let Some(pr) = b.cid.and_then(|c| self.blobs.progress(&c)) {
                        b.done = pr.have_bytes;
                        b.source = Some(Source::Peers);
                    }
                }
                p
            })
            .collect()
    }

    /// The content id of blob `d` (named by `manifest`), in this peer's store when this returns.
    async fn ensure_blob(
        &self,
        r: &ImageRef,
        manifest: &Digest,
        d: &Descriptor,
        progress: &Arc<Mutex<PullProgress>>,
        i: usize,
    ) -> Result<(ContentId, Source), RegistryError> {
        if let Some(cid) = self.blobs.complete_sha256(&d.digest).await {
            return Ok((cid, Source::Local));
        }
        let owner = owner_of(d.digest.as_str().as_bytes(), &self.members_here(r).await);
        if let Some(owner) = owner.filter(|o| *o != self.me) {
            // Long enough for the owner to fetch the whole blob at 1 MiB/s.
            let limit = Duration::from_secs(120) + Duration::from_secs(d.size >> 20);
            let ask =
                Ask::Blob { reference: r.to_string(), manifest: manifest.to_string(), digest: d.digest.to_string() };
            // Whatever the owner answers is a hint: the content it names must turn out to be
            // this blob, and on any failure (even "the registry's bytes do not match") this
            // peer goes to the registry itself.
            match self.ask_again(owner, &ask, limit).await {
                Some(Answer::Blob { cid }) => {
                    progress.lock().unwrap_or_else(|e| e.into_inner()).blobs[i].cid = Some(cid);
                    // Bounded like the ask: a peer that names content it cannot send does not
                    // hold this pull up.
                    let swarm = self.blobs.fetch_and_wait(cid, Some(d.digest.clone()), Some(d.size));
                    let swarmed = tokio::time::timeout(limit, swarm).await.unwrap_or_else(|_| {
                        Err(shoal_blobs::BlobsError::Transfer {
                            cid,
                            reason: format!("not here after {limit:?}"),
                            failure: shoal_blobs::TransferFailure::Interrupted,
                        })
                    });
                    match swarmed {
                        Ok(()) if self.blobs.is_complete_as(cid, &d.digest).await => return Ok((cid, Source::Peers)),
                        Ok(()) => {
                            warn!(peer = %owner, digest = %d.digest, %cid, "a peer named content that is not the blob; fetching it here")
                        }
                        Err(e) => {
                            warn!(peer = %owner, digest = %d.digest, err = %e, "cannot swarm a blob a peer fetched; fetching it here")
                        }
                    }
                }
                other => {
                    info!(peer = %owner, digest = %d.digest, answer = ?other, "the blob's owner did not fetch it; fetching it here")
                }
            }
        }
        Ok((self.fetch_here(r, d).await?, Source::Registry))
    }

    /// Fetches blob `d` from the registry into the store (once at a time per digest).
    async fn fetch_here(&self, r: &ImageRef, d: &Descriptor) -> Result<ContentId, RegistryError> {
        let lock = self.fetching.lock().unwrap_or_else(|e| e.into_inner()).entry(d.digest.clone()).or_default().clone();
        // The entry goes with the last one waiting on it, however each ends. The guard holds
        // this fetch's only reference (besides the map's), so its count says who else waits.
        let entry = Unlock { map: &self.fetching, digest: d.digest.clone(), lock };
        let _held = entry.lock.lock().await;
        if let Some(cid) = self.blobs.complete_sha256(&d.digest).await {
            return Ok(cid);
        }
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        self.fetched.lock().unwrap_or_else(|e| e.into_inner()).insert(d.digest.clone(), counter.clone());
        let _counted = Uncount { map: &self.fetched, digest: d.digest.clone() };
        let reader = Counted { inner: self.upstream.blob_reader(r, d, tokio::runtime::Handle::current()), counter };
        let failure = reader.inner.failure();
        match self.blobs.share_verified(reader, d.size, d.digest.clone()).await {
            Ok(cid) => {
                info!(registry = r.registry(), digest = %d.digest, size = d.size, "fetched a blob from the registry");
                Ok(cid)
            }
            Err(BlobsError::Store(shoal_blobs::StoreError::DigestMismatch { actual, .. })) => {
                Err(RegistryError::DigestMismatch {
                    registry: r.registry().into(),
                    what: format!("blob {}", d.digest),
                    expected: d.digest.to_string(),
                    actual,
                })
            }
            // The registry's own error (unreachable, refused, gone) rather than the store's
            // "cannot read".
            Err(e) => Err(failure.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_else(|| store_err(r, e))),
        }
    }

    /// Stores a manifest's exact bytes.
    async fn store_bytes(&self, r: &ImageRef, m: &RawManifest) -> Result<BlobRef, RegistryError> {
        let cid = match self.blobs.complete_sha256(&m.digest).await {
            Some(cid) => cid,
            None => self
                .blobs
                .share_verified(std::io::Cursor::new(m.bytes.clone()), m.bytes.len() as u64, m.digest.clone())
                .await
                .map_err(|e| store_err(r, e))?,
        };
        Ok(BlobRef { media_type: m.media_type.clone(), digest: m.digest.clone(), size: m.bytes.len() as u64, cid })
    }
}

fn store_err(r: &ImageRef, source: BlobsError) -> RegistryError {
    RegistryError::Store { registry: r.registry().to_string(), source }
}

/// A peer's manifest answer, checked: the bytes hash to the digests they claim, a pinned
/// digest is the one answered, and an index names the manifest given.
fn check_answer(r: &ImageRef, index: Option<RawManifest>, manifest: RawManifest) -> Result<Resolved, RegistryError> {
    let mismatch = |m: &RawManifest| RegistryError::DigestMismatch {
        registry: r.registry().into(),
        what: format!("a peer's manifest for {r}"),
        expected: m.digest.to_string(),
        actual: Digest::of(&m.bytes).to_string(),
    };
    for m in index.iter().chain(std::iter::once(&manifest)) {
        if Digest::of(&m.bytes) != m.digest || m.bytes.len() > crate::upstream::MAX_MANIFEST_BYTES {
            return Err(mismatch(m));
        }
    }
    let top = index.as_ref().unwrap_or(&manifest);
    if let Some(pinned) = r.digest()
        && top.digest.as_str() != pinned
    {
        return Err(mismatch(top));
    }
    if let Some(i) = &index {
        let v: serde_json::Value = serde_json::from_slice(&i.bytes).unwrap_or_default();
        let named = v["manifests"]
            .as_array()
            .is_some_and(|l| l.iter().any(|e| e["digest"].as_str() == Some(manifest.digest.as_str())));
        if !named {
            return Err(RegistryError::BadManifest {
                reference: r.to_string(),
                why: "a peer answered a manifest its index does not name".into(),
            });
        }
    }
    parse_manifest(r, index, manifest)
}

/// The rendezvous owner of `key` among `peers`: the highest `blake3(key ‖ peer)`.
pub fn owner_of(key: &[u8], peers: &[PeerId]) -> Option<PeerId> {
    peers
        .iter()
        .max_by_key(|p| {
            let mut h = blake3::Hasher::new();
            h.update(key);
            h.update(&p.to_bytes());
            *h.finalize().as_bytes()
        })
        .copied()
}

/// Whether `r`'s registry is this machine: named so, or a name that resolves here (resolved
/// with a short limit; a name that does not resolve is not local, and its fetch fails anyway).
async fn is_local(r: &ImageRef) -> bool {
    if r.is_loopback() {
        return true;
    }
    let host = r.oci().resolve_registry();
    let target = if host.ends_with(']') || !host.contains(':') { format!("{host}:443") } else { host.to_string() };
    match tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host(target)).await {
        Ok(Ok(mut addrs)) => addrs.any(|a| crate::reference::is_local_ip(a.ip())),
        _ => false,
    }
}

/// Whether a peer's addresses are all on the loopback (a peer on this machine).
fn on_loopback(addrs: &[shoal_overlay::libp2p::Multiaddr]) -> bool {
    use shoal_overlay::libp2p::multiaddr::Protocol;
    !addrs.is_empty()
        && addrs.iter().all(|a| {
            a.iter().any(|p| match p {
                Protocol::Ip4(ip) => ip.is_loopback(),
                Protocol::Ip6(ip) => ip.is_loopback(),
                _ => false,
            })
        })
}

/// Takes a pull off the list when dropped (unless a newer pull of the same name replaced it).
struct Unlist<'a> {
    map: &'a Mutex<HashMap<String, Arc<Mutex<PullProgress>>>>,
    key: String,
    mine: Arc<Mutex<PullProgress>>,
}

impl Drop for Unlist<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&self.key).is_some_and(|p| Arc::ptr_eq(p, &self.mine)) {
            map.remove(&self.key);
        }
    }
}

/// Drops a digest's fetch lock from the map when the last holder is done with it.
struct Unlock<'a> {
    map: &'a Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    digest: Digest,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for Unlock<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // The map's reference and this one: nobody else waits.
        if map.get(&self.digest).is_some_and(|l| Arc::ptr_eq(l, &self.lock) && Arc::strong_count(l) <= 2) {
            map.remove(&self.digest);
        }
    }
}

/// Drops a registry fetch's byte counter when the fetch ends.
struct Uncount<'a> {
    map: &'a Mutex<HashMap<Digest, Arc<std::sync::atomic::AtomicU64>>>,
    digest: Digest,
}

impl Drop for Uncount<'_> {
    fn drop(&mut self) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.digest);
    }
}

/// Counts the bytes a reader hands out (the progress of a registry fetch).
struct Counted<R> {
    inner: R,
    counter: Arc<std::sync::atomic::AtomicU64>,
}

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_peer_picks_the_same_owner_and_a_dead_owner_moves_only_its_keys() {
        let peers: Vec<PeerId> = (0..8).map(|_| PeerId::random()).collect();
        let keys: Vec<String> = (0..2000).map(|i| format!("sha256:{i:064x}")).collect();
        let owners: Vec<PeerId> = keys.iter().map(|k| owner_of(k.as_bytes(), &peers).unwrap()).collect();
        // Order of the membership list does not matter.
        let mut shuffled = peers.clone();
        shuffled.reverse();
        for (k, o) in keys.iter().zip(&owners) {
            assert_eq!(owner_of(k.as_bytes(), &shuffled), Some(*o));
        }
        // Spread: every peer owns some keys, none more than twice its share.
        for p in &peers {
            let n = owners.iter().filter(|o| *o == p).count();
            assert!(n > 100 && n < 500, "{n} of 2000 keys on one of 8 peers");
        }
        // One peer dies: only its keys move.
        let dead = peers[3];
        let alive: Vec<PeerId> = peers.iter().copied().filter(|p| *p != dead).collect();
        for (k, o) in keys.iter().zip(&owners) {
            let now = owner_of(k.as_bytes(), &alive).unwrap();
            if *o != dead {
                assert_eq!(now, *o);
            } else {
                assert_ne!(now, dead);
            }
        }
        assert_eq!(owner_of(b"x", &[]), None);
    }

    #[test]
    fn a_peers_manifest_answer_is_checked() {
        let r = ImageRef::parse("127.0.0.1:5000/app:v1").unwrap();
        let d = format!("sha256:{}", "a".repeat(64));
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": crate::upstream::MEDIA_OCI_MANIFEST,
            "config": {"mediaType": "x", "digest": d, "size": 1}, "layers": []
        }))
        .unwrap();
        let good = RawManifest {
            media_type: crate::upstream::MEDIA_OCI_MANIFEST.into(),
            digest: Digest::of(&bytes),
            bytes: bytes.clone(),
        };
        assert!(check_answer(&r, None, good.clone()).is_ok());
        let mut lying = good.clone();
        lying.bytes.push(b' ');
        assert!(matches!(check_answer(&r, None, lying), Err(RegistryError::DigestMismatch { .. })));
        // A digest reference must get exactly that manifest.
        let pinned = r.at_digest(&format!("sha256:{}", "b".repeat(64)));
        assert!(check_answer(&pinned, None, good.clone()).is_err());
        assert!(check_answer(&r.at_digest(good.digest.as_str()), None, good.clone()).is_ok());
        // An index that does not name the manifest.
        let idx_bytes = br#"{"schemaVersion":2,"manifests":[]}"#.to_vec();
        let idx = RawManifest {
            media_type: crate::upstream::MEDIA_OCI_INDEX.into(),
            digest: Digest::of(&idx_bytes),
            bytes: idx_bytes,
        };
        assert!(check_answer(&r, Some(idx), good).is_err());
    }
}
