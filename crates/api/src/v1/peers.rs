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

/// Retires a peer's operator grant: the desired-state writes it makes from now on are void on
/// every peer. Only an operator peer can do it (403 on a worker).
#[utoipa::path(post, path = "/v1/peers/{id}/revoke", tag = "cluster",
    params(("id" = String, Path, description = "peer id or name")),
    responses((status = 204), (status = 403, body = shoal_types::ErrorBody), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn revoke_peer(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    check_id(&id)?;
    s.node.revoke(&id).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 256 || id.chars().any(|c| c.is_control()) {
        return Err(ApiError::BadRequest(format!("`{}` is not a peer id or name", id.escape_debug())));
    }
    Ok(())
}

/// One peer, by peer id or name.
#[utoipa::path(get, path = "/v1/peers/{id}", tag = "cluster",
    params(("id" = String, Path, description = "peer id or name")),
    responses((status = 200, body = PeerInfo), (status = 400, body = shoal_types::ErrorBody), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn get_peer(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<PeerInfo>, ApiError> {
    check_id(&id)?;
    Ok(ApiJson(s.node.peer(&id).await?))
}
