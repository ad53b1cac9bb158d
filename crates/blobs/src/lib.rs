//! Shoal's content: a verified, content-addressed store and a swarming peer-to-peer transfer.
//!
//! A blob is split into pieces (1-4 MiB); its id is the BLAKE3 hash of its piece manifest (the
//! list of piece hashes), so every piece is checked on arrival against a hash bound to the id.
//! A download asks every live peer (and the DHT) who holds the blob, opens a session to each
//! holder, and fetches different pieces from many of them at once, rarest first, while serving
//! the pieces it already has; the seed is only asked for pieces nobody else has.
//!
//! Control messages (who has what, manifests, tickets) travel over the private libp2p overlay
//! ([`proto`]); pieces travel over direct TCP connections sealed with AES-256-GCM under a key
//! handed out over the overlay ([`channel`]), because the overlay's double encryption caps a
//! stream at a fraction of what the link can carry (see `DESIGN.md`).
//!
//! Images are stored as their OCI manifest, config and layer blobs ([`store::ImageRecord`]);
//! shared layers are stored and transferred once.
//!
//! Tasks: one accept loop for data connections, one for control streams, one task per session
//! ([`session`]) and one per download ([`download`]), all sharing [`ctx::Ctx`].
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod bitfield;
pub mod channel;
pub mod cid;
mod ctx;
mod download;
pub mod frame;
pub mod limit;
pub mod manifest;
pub mod picker;
pub mod proto;
mod service;
mod session;
pub mod store;

pub use cid::ContentId;
pub use service::{Blobs, BlobsConfig, BlobsError, ImageSummary, TagSeals, image_key};

pub use store::{BlobRecord, ImageRecord, StoreError};

use serde::Serialize;

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferState {
    Running,
    Complete,
    Failed,
}

/// Why a transfer failed, as far as a caller must tell causes apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransferFailure {
    /// This peer's disk is full (free space, then fetch again: it resumes).
    DiskFull,
    /// No live peer holds the content.
    NoHolder,
    /// The download stopped before it finished.
    Interrupted,
    /// Anything else (the message says what).
    Other,
}

/// A download's progress.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub cid: ContentId,
    pub size: u64,
    pub pieces: u32,
    pub have_pieces: u32,
    pub have_bytes: u64,
    /// Bytes received from peers in this run (pieces kept from an earlier run not counted).
    pub fetched_bytes: u64,
    pub peers: usize,
    pub rate_bps: f64,
    pub state: TransferState,
    pub error: Option<String>,
    /// What kind of failure `error` is, when the transfer failed.
    pub failure: Option<TransferFailure>,
    pub have: bitfield::Bitfield,
    /// The peers pieces come from right now, each with its rate in bits per second.
    #[serde(skip)]
    pub sources: Vec<(shoal_overlay::libp2p::PeerId, f64)>,
}
