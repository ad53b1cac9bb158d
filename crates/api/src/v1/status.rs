//! `GET /v1/status`: this agent.

use crate::AppState;
use crate::error::{ApiError, ApiJson};
use axum::extract::State;
use shoal_types::AgentStatus;

/// This agent's id, name, version, listen addresses and cluster size.
#[utoipa::path(get, path = "/v1/status", tag = "agent",
    responses((status = 200, body = AgentStatus), (status = 503, body = shoal_types::ErrorBody)))]
pub(crate) async fn get_status(State(s): State<AppState>) -> Result<ApiJson<AgentStatus>, ApiError> {
    Ok(ApiJson(s.node.status().await?))
}
