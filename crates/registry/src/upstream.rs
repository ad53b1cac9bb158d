//! The OCI distribution client: manifests (an index resolved to this peer's platform) and
//! blobs, through `oci-client` with the peer's logins.
//!
//! Manifests are kept byte for byte, so their digests are the registry's. A blob is streamed
//! into the content store while it arrives; a broken connection resumes with a `Range` request
//! from where it stopped, and the store checks the sha256 of the whole before it keeps
//! anything.

use crate::error::RegistryError;
use crate::logins::Logins;
use crate::reference::ImageRef;
use futures::StreamExt;
use oci_client::Client;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol, SizedStream};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use shoal_image::{Descriptor, Digest};
use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Media types of manifests and indexes, OCI and Docker.
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const ACCEPTED: [&str; 4] = [MEDIA_OCI_MANIFEST, MEDIA_OCI_INDEX, MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_LIST];

/// Largest manifest or index accepted.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Most layers an image may have (Docker's own limit is 127; this is generous).
pub const MAX_LAYERS: usize = 1000;
/// How often a broken blob download is resumed before giving up.
const RESUMES: u32 = 5;

/// A manifest or index as the registry sent it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RawManifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

impl RawManifest {
    fn is_index(&self) -> bool {
        matches!(self.media_type.as_str(), MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST)
    }

    /// The manifest's descriptor.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor { media_type: self.media_type.clone(), digest: self.digest.clone(), size: self.bytes.len() as u64 }
    }
}

/// An image as a registry describes it: the index (when the reference named one), this
/// platform's manifest, and what the manifest names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub index: Option<RawManifest>,
    pub manifest: RawManifest,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The platform images are chosen for: this peer's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
}

impl Platform {
    /// This machine's, in OCI's words.
    pub fn this() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform { os: "linux".into(), architecture: architecture.into() }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)
    }
}

/// Talks to registries for this peer.
pub struct Upstream {
    logins: Arc<Logins>,
    insecure: Vec<String>,
    platform: Platform,
    /// One client per registry host (its protocol and token cache are per host).
    clients: Mutex<HashMap<String, Arc<Client>>>,
    /// Registries that could not be reached lately, and when: asked again only after
    /// [`UNREACHABLE_BACKOFF`], so a replica restarting in a loop or a burst of pulls does not
    /// wait out a connect timeout each time.
    unreachable: Mutex<HashMap<String, (std::time::Instant, String)>>,
}

/// How long a registry that could not be reached is not asked again.
const UNREACHABLE_BACKOFF: Duration = Duration::from_secs(10);

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("insecure", &self.insecure).field("platform", &self.platform).finish()
    }
}

impl Upstream {
    pub fn new(logins: Arc<Logins>, insecure: Vec<String>, platform: Platform) -> Upstream {
        Upstream {
            logins,
            insecure,
            platform,
            clients: Mutex::new(HashMap::new()),
            unreachable: Mutex::new(HashMap::new()),
        }
    }

    pub fn logins(&self) -> &Arc<Logins> {
        &self.logins
    }

    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// Whether `registry` was named with `--insecure-registry`.
    pub fn is_insecure(&self, registry: &str) -> bool {
        self.insecure.iter().any(|h| h == registry)
    }

    fn client(&self, r: &ImageRef) -> Arc<Client> {
        let host = r.registry().to_string();
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(host)
            .or_insert_with(|| {
                let protocol = if r.plain_http(&self.insecure) { ClientProtocol::Http } else { ClientProtocol::Https };
                Arc::new(Client::new(ClientConfig {
                    protocol,
                    // Indexes are resolved here, so the choice and the index's bytes are ours.
                    platform_resolver: None,
                    connect_timeout: Some(Duration::from_secs(10)),
                    read_timeout: Some(Duration::from_secs(60)),
                    user_agent: concat!("shoal/", env!("CARGO_PKG_VERSION")),
                    ..ClientConfig::default()
                }))
            })
            .clone()
    }

    /// Forgets cached clients (and their tokens) for `registry`, after a new login.
    pub fn forget(&self, registry: &str) {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).remove(registry);
    }

    /// The manifest or index `r` names, as sent, its digest checked when `r` pins one.
    pub async fn manifest(&self, r: &ImageRef) -> Result<RawManifest, RegistryError> {
        let host = r.registry().to_string();
        if let Some((at, detail)) = self.unreachable.lock().unwrap_or_else(|e| e.into_inner()).get(&host)
            && at.elapsed() < UNREACHABLE_BACKOFF
        {
            return Err(RegistryError::Unreachable {
                registry: host,
                detail: format!("{detail}; not asked again for {} s", UNREACHABLE_BACKOFF.as_secs()),
            });
        }
        let client = self.client(r);
        let auth = self.logins.auth(r.registry());
        let what = format!("manifest {r}");
        let pulled =
            client.pull_manifest_raw(r.oci(), &auth, &ACCEPTED).await.map_err(|e| map_err(r.registry(), &what, e));
        let mut unreachable = self.unreachable.lock().unwrap_or_else(|e| e.into_inner());
        match &pulled {
            Err(RegistryError::Unreachable { detail, .. }) => {
                unreachable.insert(host, (std::time::Instant::now(), detail.clone()));
            }
            _ => {
                unreachable.remove(&host);
            }
        }
        drop(unreachable);
        let (bytes, digest) = pulled?;
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(RegistryError::BadManifest {
                reference: r.to_string(),
                why: format!("a manifest of {} bytes is over the {MAX_MANIFEST_BYTES}-byte limit", bytes.len()),
            });
        }
        let actual = Digest::of(&bytes);
        // oci-client checks a registry's Docker-Content-Digest header and a pinned digest;
        // the bytes are hashed here again so nothing rests on a header.
        let claimed = r.digest().unwrap_or(&digest);
        if actual.as_str() != claimed {
            return Err(RegistryError::DigestMismatch {
                registry: r.registry().into(),
                what,
                expected: claimed.to_string(),
                actual: actual.to_string(),
            });
        }
        let media_type = media_type_of(&bytes).ok_or_else(|| RegistryError::BadManifest {
            reference: r.to_string(),
            why: "not a manifest or an index".into(),
        })?;
        Ok(RawManifest { bytes: bytes.to_vec(), media_type, digest: actual })
    }

    /// Resolves `r` to this platform's manifest and what it names.
    pub async fn resolve(&self, r: &ImageRef) -> Result<Resolved, RegistryError> {
        let top = self.manifest(r).await?;
        let (index, manifest) = if top.is_index() {
            let chosen = choose_platform(r, &top, &self.platform)?;
            let m = self.manifest(&r.at_digest(chosen.as_str())).await?;
            if m.is_index() {
                return Err(RegistryError::BadManifest {
                    reference: r.to_string(),
                    why: "an index names an index".into(),
                });
            }
            (Some(top), m)
        } else {
            (None, top)
        };
        parse_manifest(r, index, manifest)
    }

    /// A reader of blob `d` of `r`'s repository (resuming on broken connections). The bytes
    /// are not checked here: the content store checks the sha256 of the whole.
    pub fn blob_reader(&self, r: &ImageRef, d: &Descriptor, rt: tokio::runtime::Handle) -> BlobReader {
        // Bounded: a slow store slows the download. The reader blocks (it runs on a blocking
        // thread), the download task awaits.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(16);
        let failure: Arc<Mutex<Option<RegistryError>>> = Arc::default();
        let failed = failure.clone();
        let (client, auth, r, d) = (self.client(r), self.logins.auth(r.registry()), r.repository_ref(), d.clone());
        let task = rt.spawn(async move {
            let registry = r.registry().to_string();
            client.store_auth_if_needed(r.oci().resolve_registry(), &auth).await;
            let what = format!("blob {}", d.digest);
            let mut offset = 0u64;
            let mut resumes = 0;
            loop {
                let opened = if offset == 0 {
                    client.pull_blob_stream(r.oci(), d.digest.as_str()).await.map(|s| (s, 0))
                } else {
                    match client.pull_blob_stream_partial(r.oci(), d.digest.as_str(), offset, None).await {
                        Ok(BlobResponse::Partial(s)) => Ok((s, 0)),
                        // The registry ignored the range: skip what we have.
                        Ok(BlobResponse::Full(s)) => Ok((s, offset)),
                        Err(e) => Err(e),
                    }
                };
                let (stream, skip) = match opened {
                    Ok(x) => x,
                    Err(e) => {
                        let e = map_err(&registry, &what, e);
                        if e.is_transient() && resumes < RESUMES {
                            resumes += 1;
                            tokio::time::sleep(Duration::from_millis(200 << resumes)).await;
                            continue;
                        }
                        // Recorded before the reader hears of it.
                        let message = e.to_string();
                        *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                        let _ = tx.send(Err(std::io::Error::other(message))).await;
                        return;
                    }
                };
                match pump(stream, skip, &mut offset, d.size, &tx).await {
                    Pumped::Done | Pumped::ReaderGone => return,
                    Pumped::TooLong => {
                        let message = format!("{what}: the registry sent more than the {} bytes announced", d.size);
                        *failed.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(RegistryError::Registry { registry, message: message.clone() });
                        let _ = tx.send(Err(std::io::Error::other(message))).await;
                        return;
                    }
                    Pumped::Broken(e) if resumes < RESUMES => {
                        resumes += 1;
                        tracing::debug!(registry, digest = %d.digest, offset, err = %e, "blob download broke; resuming");
                    }
                    Pumped::Broken(e) => {
                        let message = format!("{what}: the download broke {RESUMES} times, the last: {e}");
                        *failed.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(RegistryError::Registry { registry, message: message.clone() });
                        let _ = tx.send(Err(std::io::Error::other(message))).await;
                        return;
                    }
                }
            }
        });
        BlobReader { rx, buf: bytes::Bytes::new(), task: Some(task), got: 0, failure }
    }
}

enum Pumped {
    Done,
    ReaderGone,
    /// More bytes than the manifest says the blob has: a lying or broken registry.
    TooLong,
    Broken(String),
}

/// Moves a response's bytes to the reader, skipping the first `skip`, counting `offset`.
async fn pump(
    s: SizedStream,
    mut skip: u64,
    offset: &mut u64,
    size: u64,
    tx: &tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
) -> Pumped {
    let mut stream = s.stream;
    while let Some(chunk) = stream.next().await {
        let mut chunk = match chunk {
            Ok(c) => c,
            // Every byte is here and oci-client's own check failed: the store's check of the
            // whole says which digest the bytes have (and keeps nothing).
            Err(_) if *offset >= size => return Pumped::Done,
            Err(e) => return Pumped::Broken(e.to_string()),
        };
        if skip > 0 {
            let n = skip.min(chunk.len() as u64);
            skip -= n;
            chunk = chunk.slice(n as usize..);
            if chunk.is_empty() {
                continue;
            }
        }
        *offset += chunk.len() as u64;
        if *offset > size {
            return Pumped::TooLong;
        }
        if tx.send(Ok(chunk)).await.is_err() {
            return Pumped::ReaderGone;
        }
    }
    if *offset < size {
        Pumped::Broken(format!("the stream ended after {} of {size} bytes", *offset))
    } else {
        Pumped::Done
    }
}

/// The blocking end of a blob download (what the content store reads).
pub struct BlobReader {
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>,
    buf: bytes::Bytes,
    task: Option<tokio::task::JoinHandle<()>>,
    got: u64,
    failure: Arc<Mutex<Option<RegistryError>>>,
}

impl BlobReader {
    /// Bytes handed to the reader so far.
    pub fn bytes_read(&self) -> u64 {
        self.got
    }

    /// Where the registry's own error lands when the download fails (the reader sees only
    /// an I/O error).
    pub fn failure(&self) -> Arc<Mutex<Option<RegistryError>>> {
        self.failure.clone()
    }
}

impl Read for BlobReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.buf = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf = self.buf.slice(n..);
        self.got += n as u64;
        Ok(n)
    }
}

impl Drop for BlobReader {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A manifest's media type: its `mediaType` field, else by shape (OCI allows leaving it out).
pub(crate) fn media_type_of(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if let Some(m) = v.get("mediaType").and_then(|m| m.as_str()) {
        return ACCEPTED.contains(&m).then(|| m.to_string());
    }
    if v.get("manifests").is_some() {
        Some(MEDIA_OCI_INDEX.into())
    } else if v.get("config").is_some() {
        Some(MEDIA_OCI_MANIFEST.into())
    } else {
        None
    }
}

/// The digest of the index's manifest for `platform`.
pub fn choose_platform(r: &ImageRef, index: &RawManifest, platform: &Platform) -> Result<Digest, RegistryError> {
    let bad = |why: &str| RegistryError::BadManifest { reference: r.to_string(), why: why.to_string() };
    let v: serde_json::Value = serde_json::from_slice(&index.bytes).map_err(|e| bad(&e.to_string()))?;
    let entries = v.get("manifests").and_then(|m| m.as_array()).ok_or_else(|| bad("an index without manifests"))?;
    let mut available = Vec::new();
    for e in entries {
        let os = e["platform"]["os"].as_str().unwrap_or("?");
        let arch = e["platform"]["architecture"].as_str().unwrap_or("?");
        if os == platform.os && arch == platform.architecture {
            let d = e["digest"].as_str().ok_or_else(|| bad("an index entry without a digest"))?;
            return d.parse().map_err(|_| bad("an index entry with a malformed digest"));
        }
        if os != "unknown" {
            available.push(format!("{os}/{arch}"));
        }
    }
    Err(RegistryError::NoPlatform {
        reference: r.to_string(),
        platform: platform.to_string(),
        available: if available.is_empty() { "nothing".into() } else { available.join(", ") },
    })
}

/// Reads the config and layers a manifest names (bounded, digests well-formed).
pub fn parse_manifest(
    r: &ImageRef,
    index: Option<RawManifest>,
    manifest: RawManifest,
) -> Result<Resolved, RegistryError> {
    let bad = |why: String| RegistryError::BadManifest { reference: r.to_string(), why };
    #[derive(serde::Deserialize)]
    struct M {
        config: Descriptor,
        #[serde(default)]
        layers: Vec<Descriptor>,
    }
    let m: M = serde_json::from_slice(&manifest.bytes).map_err(|e| bad(format!("unreadable manifest: {e}")))?;
    if m.layers.len() > MAX_LAYERS {
        return Err(bad(format!("{} layers is over the limit of {MAX_LAYERS}", m.layers.len())));
    }
    Ok(Resolved { index, manifest, config: m.config, layers: m.layers })
}

/// An oci-client error as one that says what to do.
fn map_err(registry: &str, what: &str, e: OciDistributionError) -> RegistryError {
    let registry = registry.to_string();
    let what = what.to_string();
    match e {
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
            RegistryError::Unauthorized { registry, what }
        }
        OciDistributionError::ImageManifestNotFoundError(_) => RegistryError::NotFound { registry, what },
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                RegistryError::Unauthorized { registry, what }
            } else if codes.iter().any(|c| {
                matches!(c, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::BlobUnknown)
            }) {
                RegistryError::NotFound { registry, what }
            } else {
                RegistryError::Registry { registry, message: envelope.to_string() }
            }
        }
        OciDistributionError::ServerError { code: 401 | 403, .. } => RegistryError::Unauthorized { registry, what },
        OciDistributionError::ServerError { code: 404, .. } => RegistryError::NotFound { registry, what },
        OciDistributionError::DigestError(d) => RegistryError::DigestMismatch {
            registry,
            what,
            expected: "the digest asked for".into(),
            actual: d.to_string(),
        },
        OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() => {
            RegistryError::Unreachable { registry, detail: error_chain(&e) }
        }
        other => RegistryError::Registry { registry, message: format!("{what}: {}", error_chain(&other)) },
    }
}

/// An error and its sources, joined (reqwest's top-level message alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(v: serde_json::Value) -> RawManifest {
        let bytes = serde_json::to_vec(&v).unwrap();
        RawManifest { media_type: media_type_of(&bytes).unwrap(), digest: Digest::of(&bytes), bytes }
    }

    #[test]
    fn an_index_resolves_to_this_platform_or_says_what_it_has() {
        let r = ImageRef::parse("127.0.0.1:5000/multi:v1").unwrap();
        let (amd, arm) = (format!("sha256:{}", "1".repeat(64)), format!("sha256:{}", "2".repeat(64)));
        let idx = raw(serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": MEDIA_OCI_MANIFEST, "digest": arm, "size": 10, "platform": {"os": "linux", "architecture": "arm64"}},
                {"mediaType": MEDIA_OCI_MANIFEST, "digest": amd, "size": 10, "platform": {"os": "linux", "architecture": "amd64"}},
            ]
        }));
        assert_eq!(idx.media_type, MEDIA_OCI_INDEX);
        let amd64 = Platform { os: "linux".into(), architecture: "amd64".into() };
        assert_eq!(choose_platform(&r, &idx, &amd64).unwrap().as_str(), amd);
        let s390 = Platform { os: "linux".into(), architecture: "s390x".into() };
        let e = choose_platform(&r, &idx, &s390).unwrap_err().to_string();
        assert!(e.contains("linux/s390x") && e.contains("linux/arm64, linux/amd64"), "{e}");
    }

    #[test]
    fn manifests_parse_in_both_dialects_and_are_bounded() {
        let r = ImageRef::parse("app").unwrap();
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let docker = raw(serde_json::json!({
            "schemaVersion": 2, "mediaType": MEDIA_DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": d('a'), "size": 3},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": d('b'), "size": 5}]
        }));
        assert_eq!(docker.media_type, MEDIA_DOCKER_MANIFEST);
        let res = parse_manifest(&r, None, docker).unwrap();
        assert_eq!(res.config.digest.as_str(), d('a'));
        assert_eq!(res.layers.len(), 1);
        // OCI without mediaType: known by shape.
        let oci =
            raw(serde_json::json!({"schemaVersion": 2, "config": {"mediaType": "x", "digest": d('a'), "size": 1}}));
        assert_eq!(oci.media_type, MEDIA_OCI_MANIFEST);
        let layers: Vec<_> =
            (0..MAX_LAYERS + 1).map(|_| serde_json::json!({"mediaType": "x", "digest": d('c'), "size": 1})).collect();
        let huge = raw(
            serde_json::json!({"schemaVersion": 2, "config": {"mediaType": "x", "digest": d('a'), "size": 1}, "layers": layers}),
        );
        assert!(parse_manifest(&r, None, huge).unwrap_err().to_string().contains("over the limit"));
        let bad_digest =
            raw(serde_json::json!({"schemaVersion": 2, "config": {"mediaType": "x", "digest": "md5:00", "size": 1}}));
        assert!(parse_manifest(&r, None, bad_digest).is_err());
        assert!(media_type_of(b"{\"mediaType\": \"text/html\"}").is_none());
    }
}
