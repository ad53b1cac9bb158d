//! What can go wrong talking to a registry, each error saying what to do.

use std::path::PathBuf;

/// Errors of registry pulls and logins.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {reference:?}: {why}")]
    BadReference { reference: String, why: String },
    #[error(
        "registry {registry} refused the credentials for {what}: log in with `shoal registry login {registry}` \
         (the password is read from standard input)"
    )]
    Unauthorized { registry: String, what: String },
    #[error("registry {registry} has no {what} (check the name and the tag: `skopeo list-tags` shows the tags)")]
    NotFound { registry: String, what: String },
    #[error(
        "cannot reach registry {registry}: {detail} (is it up? for a registry on plain HTTP outside \
         127.0.0.0/8, start the agent with --insecure-registry {registry})"
    )]
    Unreachable { registry: String, detail: String },
    #[error(
        "registry {registry} answered {what} with bytes whose digest is {actual}, not {expected}: nothing was stored"
    )]
    DigestMismatch { registry: String, what: String, expected: String, actual: String },
    #[error("{reference} has no image for {platform} (it has: {available})")]
    NoPlatform { reference: String, platform: String, available: String },
    #[error("{reference}: {why}")]
    BadManifest { reference: String, why: String },
    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },
    #[error("cannot store what registry {registry} sent: {source}")]
    Store {
        registry: String,
        #[source]
        source: shoal_blobs::BlobsError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the saved registry logins in {path} are unreadable: {why} (log in again to replace them)")]
    Logins { path: PathBuf, why: String },
}

impl RegistryError {
    /// Whether another source (a peer, the registry itself) could do better: a peer that failed
    /// to fetch for us is passed over on these.
    pub fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Unreachable { .. } | RegistryError::Registry { .. } | RegistryError::Store { .. })
    }

    /// The error a peer passes back over the wire, and rebuilt on the asking side.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            RegistryError::Unauthorized { .. } => "unauthorized",
            RegistryError::NotFound { .. } => "not-found",
            RegistryError::Unreachable { .. } => "unreachable",
            RegistryError::DigestMismatch { .. } => "digest-mismatch",
            RegistryError::NoPlatform { .. } => "no-platform",
            RegistryError::BadManifest { .. } | RegistryError::BadReference { .. } => "bad-manifest",
            _ => "other",
        }
    }
}
