//! `GET /v1/network`: this peer's part of the cluster network.

use crate::AppState;
use crate::error::{ApiError, ApiJson};
use axum::extract::State;
use shoal_types::NetworkInfo;

/// This peer's subnet and transport, each remote peer's route (and, encrypted, its last
/// handshake and bytes), and every service's address.
#[utoipa::path(get, path = "/v1/network", tag = "cluster",
    responses((status = 200, body = NetworkInfo), (status = 503, body = shoal_types::ErrorBody)))]
pub(crate) async fn get_network(State(s): State<AppState>) -> Result<ApiJson<NetworkInfo>, ApiError> {
    Ok(ApiJson(s.node.network_info().await?))
}
