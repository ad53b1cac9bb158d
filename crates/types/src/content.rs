//! Content and image views, as `shoal content`, `shoal get` and `shoal image` show them.

use serde::{Deserialize, Serialize};

/// One blob in a peer's store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContentInfo {
    /// Content id (`b3:` + 64 hex digits).
    pub id: String,
    pub size: u64,
    /// complete, or partial while downloading.
    pub state: String,
    /// Bytes held (equals `size` when complete).
    pub have_bytes: u64,
    pub pinned: bool,
    /// The file name it was shared under.
    pub name: Option<String>,
    /// sha256 digest (`sha256:…`), once complete.
    pub sha256: Option<String>,
    /// Images this blob belongs to.
    pub images: Vec<String>,
    /// Unix milliseconds of the last use (eviction is least recently used first).
    pub last_used_ms: u64,
}

/// What `shoal share` (and `POST /v1/content`) returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SharedContent {
    pub id: String,
    pub size: u64,
    pub sha256: String,
    /// The store already had it.
    pub existed: bool,
}

/// A download's progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TransferInfo {
    pub id: String,
    pub size: u64,
    pub have_bytes: u64,
    /// Bytes received from peers in this run.
    pub fetched_bytes: u64,
    pub pieces: u32,
    pub have_pieces: u32,
    /// Peers this download exchanges pieces with right now.
    pub peers: usize,
    /// Bits per second, smoothed.
    pub rate_bps: f64,
    /// running, complete or failed.
    pub state: String,
    pub error: Option<String>,
    /// Which pieces are held, as a hex bitfield (bit i of byte i/8 = piece i).
    pub have: String,
    /// The peer downloading (its id).
    #[serde(default)]
    pub peer: String,
    /// The peers pieces come from right now, with their rates.
    #[serde(default)]
    pub sources: Vec<TransferSource>,
}

/// A peer a download gets pieces from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TransferSource {
    /// Its id.
    pub peer: String,
    /// Bits per second from it, smoothed.
    pub rate_bps: f64,
}

/// One image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageInfo {
    /// NAME:TAG.
    pub reference: String,
    /// The manifest digest (`sha256:…`): the image's identity.
    pub digest: String,
    /// Bytes of manifest, config and layers.
    pub size: u64,
    pub layers: usize,
    /// Peers holding it (this one first, as "(self)").
    pub holders: Vec<String>,
    pub created_ms: u64,
}

/// `POST /v1/images/pull`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PullRequest {
    pub reference: String,
}

/// `POST /v1/registries/login`: checked with the registry, then saved on this peer only.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegistryLogin {
    /// HOST[:PORT] (`docker.io` for Docker Hub).
    pub registry: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLogin").field("registry", &self.registry).field("username", &self.username).finish()
    }
}

/// One blob of a registry pull in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PullBlob {
    pub digest: String,
    pub size: u64,
    /// Bytes here so far.
    pub done: u64,
    /// `local`, `peers` or `registry`, once known.
    pub source: Option<String>,
    pub finished: bool,
}

/// A registry pull in progress on this peer (`GET /v1/images/pulls`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PullStatus {
    pub reference: String,
    pub blobs: Vec<PullBlob>,
}
