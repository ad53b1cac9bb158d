//! Shoal's shared vocabulary.
//!
//! Plain data that more than one crate needs: resource amounts, human byte sizes, labels, the
//! peer view the API returns and the status of an agent. Nothing here does I/O or knows about
//! tokio, libp2p or HTTP, so every crate (and the CLI) can depend on it cheaply.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod bytesize;
pub mod container;
pub mod content;
pub mod events;
pub mod labels;
pub mod network;
pub mod peer;
pub mod range;
pub mod rate;
pub mod resources;
pub mod service;

pub use bytesize::{ByteSize, ByteSizeError};
pub use container::{
    AttachEvent, ContainerInfo, ContainerSpec, ContainerState, ContainerStats, ExecEvent, LogEntry, NetworkMode,
    PortMapping, Protocol, RestartPolicy, SpecParseError, VolumeMount,
};
pub use content::{
    ContentInfo, ImageInfo, PullBlob, PullRequest, PullStatus, RegistryLogin, SharedContent, TransferInfo,
    TransferSource,
};
pub use events::{ClusterEvent, EVENT_KINDS};
pub use labels::{LabelError, Labels, parse_label};
pub use network::{NetworkInfo, NetworkPeer, ServiceAddress};
pub use peer::{AgentStatus, PeerInfo, PeerState};
pub use range::ByteRange;
pub use resources::{Resources, ResourcesError};
pub use service::{Autoscale, ReplicaInfo, ServiceInfo, ServiceLogLine, ServiceMode, ServiceSpec, Slot};

/// The version of this build, as `shoal status` and peer records report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The body of every API error: a message that says what went wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What went wrong, in words meant for the user.
    pub error: String,
}
