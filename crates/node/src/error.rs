//! Errors of the agent core, each with the [`ErrorKind`] the API answers it with: what the
//! user must fix (400), what does not exist (404), what conflicts with the current state
//! (409), what this peer may not do (403), a full disk (507), peers that could not provide something (502), an agent that
//! cannot serve now (503), and faults of the agent itself (500, the cause only in its log).

use shoal_overlay::{KeyError, OverlayError};
use shoal_services::ServiceError;

/// How a front end should answer an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong; the message says how to fix it.
    BadRequest,
    /// What the request names does not exist.
    NotFound,
    /// The request conflicts with the current state.
    Conflict,
    /// This peer may not do it (a worker asked to change desired state).
    Forbidden,
    /// Out of space.
    Full,
    /// Peers could not provide what was needed.
    Peers,
    /// The agent cannot serve this now (shutting down, a subsystem stopped).
    Unavailable,
    /// A fault of the agent; the message is for its log only.
    Internal,
}

/// What went wrong inside the agent.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No peer has this id or name.
    #[error("no peer `{0}`; see `shoal peers`")]
    NoPeer(String),
    /// Text that should be a content id is not one.
    #[error(transparent)]
    BadContentId(#[from] shoal_blobs::cid::CidError),
    /// No peer holds the image a container needs.
    #[error("image {0} is not on this peer or any other; import it with `shoal image import`")]
    NoImage(String),
    /// The upload could not be received.
    #[error("receiving the upload failed: {0}")]
    Upload(#[source] std::io::Error),
    /// An image's config could not be read from the store.
    #[error("cannot read the config of image {image}: {source}")]
    ImageConfig {
        /// The image.
        image: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The `shoal` executable (for shims and exec) cannot be found.
    #[error("cannot find the shoal executable: {0}")]
    Exe(#[source] std::io::Error),
    /// The exec helper could not be started.
    #[error("cannot start the exec helper: {0}")]
    ExecSpawn(#[source] std::io::Error),
    /// A stream protocol is registered twice (a bug).
    #[error("the protocol {0} is already registered")]
    ProtocolTaken(&'static str),
    /// A blocking task panicked or was cancelled.
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Key material could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The overlay failed or has stopped.
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    /// A content operation failed.
    #[error(transparent)]
    Content(#[from] shoal_blobs::BlobsError),
    /// A container operation failed.
    #[error(transparent)]
    Runtime(#[from] shoal_runtime::RuntimeError),
    /// A services operation failed.
    #[error(transparent)]
    Services(#[from] ServiceError),
    /// Neither the cluster nor the image's registry has the image.
    #[error(
        "image {image} is not on this peer or any other, and {why}; import it with `shoal image import`, or check the name and the registry"
    )]
    NoImageAnywhere { image: String, why: String },
    /// A registry pull or login failed.
    #[error(transparent)]
    Registry(#[from] shoal_registry::RegistryError),
    /// The cluster network could not start.
    #[error(transparent)]
    Network(#[from] shoal_net::NetworkError),
    /// No subnet claimed yet.
    #[error(
        "this peer has no container subnet yet (it claims one once it has heard from the cluster); try again in a few seconds, and see `shoal network`"
    )]
    NetworkNotReady,
    /// The data dir ran an open cluster before and no key is given.
    #[error(
        "{data_dir} belongs to a peer that ran without a cluster key: a new key would cut it off from its peers. Give it the cluster's key with --cluster-key FILE (all peers alike), or keep the open cluster with --insecure"
    )]
    NoKeyForOldCluster { data_dir: std::path::PathBuf },
    /// A service has no image to roll back to (409).
    #[error(
        "service {0} has no earlier image to roll back to (it has not been updated, or its last update was rolled back already); set one with `shoal service update --image IMAGE {0}`"
    )]
    NoRollback(String),
    /// No such replica of a service (404).
    #[error("service {service} has no replica {replica}; see `shoal service ps {service}`")]
    NoReplica { service: String, replica: String },
    /// The replica has no container to restart yet (409).
    #[error("replica {replica} has no container to restart (it is {state}); see `shoal service ps`")]
    ReplicaNotStarted { replica: String, state: String },
    /// The peer running the replica did not restart it (502).
    #[error("peer {peer} did not restart replica {replica}: {why}")]
    RestartRefused { replica: String, peer: String, why: String },
    /// The data dir could not be prepared.
    #[error("cannot prepare data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn disk_full(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT)
}

impl NodeError {
    /// How to answer it.
    pub fn kind(&self) -> ErrorKind {
        use ErrorKind as K;
        match self {
            NodeError::NoPeer(_)
            | NodeError::NoImage(_)
            | NodeError::NoImageAnywhere { .. }
            | NodeError::NoReplica { .. } => K::NotFound,
            NodeError::NoRollback(_) | NodeError::ReplicaNotStarted { .. } => K::Conflict,
            NodeError::RestartRefused { .. } => K::Peers,
            NodeError::BadContentId(_) => K::BadRequest,
            NodeError::Upload(e) if disk_full(e) => K::Full,
            NodeError::Upload(_) => K::BadRequest,
            NodeError::Overlay(_) | NodeError::NetworkNotReady => K::Unavailable,
            NodeError::Content(e) => content_kind(e),
            NodeError::Runtime(e) => runtime_kind(e),
            NodeError::Services(e) => services_kind(e),
            NodeError::Registry(e) => registry_kind(e),
            NodeError::ImageConfig { .. }
            | NodeError::ProtocolTaken(_)
            | NodeError::Exe(_)
            | NodeError::ExecSpawn(_)
            | NodeError::Task(_)
            | NodeError::Key(_)
            | NodeError::Network(_)
            | NodeError::NoKeyForOldCluster { .. }
            | NodeError::DataDir { .. } => K::Internal,
        }
    }
}

fn content_kind(e: &shoal_blobs::BlobsError) -> ErrorKind {
    use ErrorKind as K;
    use shoal_blobs::{BlobsError as B, StoreError as S};
    match e {
        B::NoMatch(_) | B::NoImageHolder(_) | B::UnsignedTag(_) | B::Store(S::NotFound { .. } | S::NoImage { .. }) => {
            K::NotFound
        }
        B::Ambiguous { .. } | B::BadReference(_) | B::NoName | B::Import(_) => K::BadRequest,
        B::Store(S::DigestMismatch { .. } | S::SizeMismatch { .. }) => K::BadRequest,
        B::Store(S::InUse { .. }) => K::Conflict,
        B::Store(S::Full { .. } | S::DiskFull { .. }) => K::Full,
        B::Transfer { failure: shoal_blobs::TransferFailure::DiskFull, .. } => K::Full,
        B::Transfer { .. } | B::BadImage { .. } => K::Peers,
        B::Io { source, .. } if disk_full(source) => K::Full,
        _ => K::Internal,
    }
}

fn runtime_kind(e: &shoal_runtime::RuntimeError) -> ErrorKind {
    use ErrorKind as K;
    use shoal_runtime::RuntimeError as R;
    use shoal_runtime::state::StartFailure;
    match e {
        R::NotFound(_) => K::NotFound,
        R::NameInUse(_) | R::Running(_) | R::NotRunning(_) | R::PortInUse { .. } => K::Conflict,
        R::Ambiguous(_)
        | R::Parse(_)
        | R::MemoryTooSmall(_)
        | R::VolumeMissing(_)
        | R::ImageConfig { .. }
        | R::PortsWithoutNetwork => K::BadRequest,
        R::Spec(_) | R::BadSignal(_) => K::BadRequest,
        R::Start { failure: StartFailure::Command, .. } => K::BadRequest,
        R::Start { failure: StartFailure::Port, .. } => K::Conflict,
        R::Start { failure: StartFailure::Setup, .. } => K::Internal,
        R::Io { source, .. } if disk_full(source) => K::Full,
        _ => K::Internal,
    }
}

fn registry_kind(e: &shoal_registry::RegistryError) -> ErrorKind {
    use ErrorKind as K;
    use shoal_registry::RegistryError as R;
    match e {
        R::BadReference { .. } => K::BadRequest,
        R::Unauthorized { .. } => K::Forbidden,
        R::NotFound { .. } | R::NoPlatform { .. } => K::NotFound,
        // The registry (a gateway to the agent) failed or lied: 502.
        R::Unreachable { .. } | R::DigestMismatch { .. } | R::BadManifest { .. } | R::Registry { .. } => K::Peers,
        R::Store { source, .. } => content_kind(source),
        R::Io { source, .. } if disk_full(source) => K::Full,
        R::Io { .. } | R::Logins { .. } => K::Internal,
    }
}

fn services_kind(e: &ServiceError) -> ErrorKind {
    use ErrorKind as K;
    match e {
        ServiceError::Spec(_) | ServiceError::NameMismatch { .. } => K::BadRequest,
        ServiceError::NotFound(_) => K::NotFound,
        ServiceError::Exists(_) | ServiceError::Global(_) | ServiceError::PortTaken { .. } => K::Conflict,
        ServiceError::Save { .. } if e.is_disk_full() => K::Full,
        ServiceError::Save { .. } => K::Internal,
        ServiceError::Stopped => K::Unavailable,
        ServiceError::NotOperator | ServiceError::BadRevocation => K::Forbidden,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_blobs::{BlobsError, TransferFailure};
    use shoal_runtime::RuntimeError;
    use shoal_runtime::state::StartFailure;

    #[tokio::test]
    async fn each_error_gets_the_answer_its_cause_deserves() {
        let join = tokio::spawn(async { panic!("boom") }).await.expect_err("a panicked task");
        assert_eq!(NodeError::Task(join).kind(), ErrorKind::Internal, "a failed task is the agent's fault");
        let spawn = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(NodeError::ExecSpawn(spawn).kind(), ErrorKind::Internal);
        let cid = "b3:00".parse::<shoal_blobs::ContentId>().expect_err("not an id");
        assert_eq!(NodeError::BadContentId(cid).kind(), ErrorKind::BadRequest);
        let full = BlobsError::Transfer {
            cid: shoal_blobs::ContentId([0; 32]),
            reason: "disk".into(),
            failure: TransferFailure::DiskFull,
        };
        assert_eq!(NodeError::Content(full).kind(), ErrorKind::Full, "a full disk during a download is 507");
        let gone = BlobsError::Transfer {
            cid: shoal_blobs::ContentId([0; 32]),
            reason: "x".into(),
            failure: TransferFailure::NoHolder,
        };
        assert_eq!(NodeError::Content(gone).kind(), ErrorKind::Peers);
        let start = |failure| NodeError::Runtime(RuntimeError::Start { message: "m".into(), failure });
        assert_eq!(start(StartFailure::Setup).kind(), ErrorKind::Internal, "a failed mount is not the user's");
        assert_eq!(start(StartFailure::Command).kind(), ErrorKind::BadRequest);
        assert_eq!(start(StartFailure::Port).kind(), ErrorKind::Conflict);
        let disk = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(NodeError::Upload(disk).kind(), ErrorKind::Full);
        assert_eq!(NodeError::Services(ServiceError::Exists("web".into())).kind(), ErrorKind::Conflict);
        assert_eq!(NodeError::Services(ServiceError::Stopped).kind(), ErrorKind::Unavailable);
    }
}
