//! `/v1` routes, one file per resource.

mod peers;
mod status;

use crate::AppState;
use axum::Router;
use axum::routing::get;

pub(crate) use peers::__path_get_peer;
pub(crate) use peers::__path_list_peers;
pub(crate) use status::__path_get_status;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/status", get(status::get_status))
        .route("/v1/peers", get(peers::list_peers))
        .route("/v1/peers/{id}", get(peers::get_peer))
}
