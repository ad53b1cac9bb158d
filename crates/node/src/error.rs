//! Errors of the agent core, shaped so the API can map each to a status code.

use shoal_overlay::{KeyError, OverlayError};

/// What went wrong inside the agent.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The request names something that does not exist
    #[error("{what} not found")]
    NotFound { what: String },
    /// The request conflicts with the current state
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed
    #[error("{0}")]
    Invalid(String),
    /// Key material could not be loaded
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The overlay failed or has stopped
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    /// A content operation failed
    #[error(transparent)]
    Content(#[from] shoal_blobs::BlobsError),
    /// A container operation failed
    #[error(transparent)]
    Runtime(#[from] shoal_runtime::RuntimeError),
    /// The data dir could not be prepared
    #[error("cannot prepare data dir {path}: {source}")]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
}
