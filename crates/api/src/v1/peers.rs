//! `GET /v1/peers` and `GET /v1/peers/{id}`: the membership view.

use crate::AppState;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use axum::extract::State;
use serde::Deserialize;
use shoal_types::{PeerInfo, PeerState};

/// Filters for the peer list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct PeerQuery {
    /// Only peers in this state: alive, suspect, dead or left.
    state: Option<PeerState>,
}

/// Every peer this agent knows, itself first.
#[utoipa::path(get, path = "/v1/peers", tag = "cluster", params(PeerQuery),
    responses((status = 200, body = [PeerInfo]), (status = 400, body = shoal_types::ErrorBody)))]
pub(crate) async fn list_peers(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<PeerQuery>,
) -> Result<ApiJson<Vec<PeerInfo>>, ApiError> {
    Ok(ApiJson(s.node.peers(q.state).await?))
}

/// One peer, by peer id or name.
#[utoipa::path(get, path = "/v1/peers/{id}", tag = "cluster",
    params(("id" = String, Path, description = "peer id or name")),
    responses((status = 200, body = PeerInfo), (status = 400, body = shoal_types::ErrorBody), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn get_peer(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<PeerInfo>, ApiError> {
    if id.is_empty() || id.len() > 256 || id.chars().any(|c| c.is_control()) {
        return Err(ApiError::BadRequest(format!("`{}` is not a peer id or name", id.escape_debug())));
    }
    Ok(ApiJson(s.node.peer(&id).await?))
}
