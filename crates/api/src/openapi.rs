//! The OpenAPI document, generated from the handlers' annotations.
//!
//! `docs/openapi.json` in the repository is this document; a test fails if they differ
//! (regenerate with `SHOAL_UPDATE_OPENAPI=1 cargo test -p shoal-api openapi`).

use axum::Json;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Shoal agent API", description = "Every Shoal agent serves this API on its unix socket (root only) and, with --api-listen, on TCP behind a bearer token."),
    paths(
        crate::v1::get_status, crate::v1::events::list, crate::v1::list_peers, crate::v1::get_peer, crate::v1::revoke_peer, crate::v1::get_network,
        crate::v1::content::share, crate::v1::content::list, crate::v1::content::read, crate::v1::content::fetch,
        crate::v1::content::progress, crate::v1::content::transfers, crate::v1::content::remove,
        crate::v1::content::pin, crate::v1::content::unpin,
        crate::v1::images::import, crate::v1::images::list, crate::v1::images::pull, crate::v1::images::export,
        crate::v1::images::remove,
        crate::v1::containers::list, crate::v1::containers::run, crate::v1::containers::inspect,
        crate::v1::containers::stop, crate::v1::containers::kill, crate::v1::containers::remove,
        crate::v1::containers::wait, crate::v1::containers::logs, crate::v1::containers::stats,
        crate::v1::containers::exec,
        crate::v1::images::pulls, crate::v1::images::login, crate::v1::images::logout,
        crate::v1::services::list, crate::v1::services::create, crate::v1::services::get, crate::v1::services::update,
        crate::v1::services::scale, crate::v1::services::rebalance, crate::v1::services::rollback,
        crate::v1::services::restart_replica, crate::v1::services::replicas, crate::v1::services::remove,
        crate::v1::services::logs,
    ),
    components(schemas(
        shoal_types::AgentStatus, shoal_types::ClusterEvent, shoal_types::PeerInfo, shoal_types::PeerState, shoal_types::resources::ResourcesJson,
        shoal_types::ErrorBody, shoal_types::ContentInfo, shoal_types::SharedContent, shoal_types::TransferInfo, shoal_types::TransferSource,
        shoal_types::ImageInfo, shoal_types::PullRequest, shoal_types::RegistryLogin, shoal_types::PullStatus, shoal_types::PullBlob,
        shoal_types::ContainerSpec, shoal_types::ContainerInfo, shoal_types::ContainerState, shoal_types::ContainerStats,
        shoal_types::PortMapping, shoal_types::VolumeMount, shoal_types::RestartPolicy, shoal_types::LogEntry,
        shoal_types::AttachEvent, shoal_types::ExecEvent,
        shoal_types::ServiceSpec, shoal_types::ServiceInfo, shoal_types::ReplicaInfo, shoal_types::Autoscale, shoal_types::ServiceMode, shoal_types::Slot,
        shoal_types::ServiceLogLine, shoal_types::NetworkInfo, shoal_types::NetworkPeer, shoal_types::ServiceAddress,
        shoal_types::NetworkMode, shoal_types::Protocol,
    )),
    tags(
        (name = "agent", description = "This agent"), (name = "cluster", description = "Membership"),
        (name = "content", description = "Content shared peer to peer"), (name = "images", description = "OCI images"),
        (name = "containers", description = "Containers on this peer"),
        (name = "services", description = "Leaderless services placed across the peers"),
    ),
)]
pub struct ApiDoc;

/// The document as pretty JSON.
pub fn document() -> String {
    ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document always serializes")
}

pub(crate) async fn serve_doc() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_document_in_repo_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let generated = super::document() + "\n";
        if std::env::var_os("SHOAL_UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json is stale: run SHOAL_UPDATE_OPENAPI=1 cargo test -p shoal-api openapi"
        );
    }
}
