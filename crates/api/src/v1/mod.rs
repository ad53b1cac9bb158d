//! `/v1` routes, one file per resource.

pub(crate) mod containers;
pub(crate) mod content;
pub(crate) mod events;
pub(crate) mod images;
mod network;
mod peers;
pub(crate) mod services;
mod status;

use crate::AppState;
use axum::Router;
use axum::routing::{get, post, put};

pub(crate) use network::__path_get_network;
pub(crate) use peers::__path_get_peer;
pub(crate) use peers::__path_list_peers;
pub(crate) use peers::__path_revoke_peer;
pub(crate) use status::__path_get_status;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/status", get(status::get_status))
        .route("/v1/peers", get(peers::list_peers))
        .route("/v1/events", get(events::list))
        .route("/v1/peers/{id}", get(peers::get_peer))
        .route("/v1/peers/{id}/revoke", post(peers::revoke_peer))
        .route("/v1/network", get(network::get_network))
        .route("/v1/content", get(content::list).post(content::share))
        .route("/v1/content/{id}", get(content::read).delete(content::remove))
        .route("/v1/content/{id}/fetch", post(content::fetch))
        .route("/v1/content/{id}/progress", get(content::progress))
        .route("/v1/content/{id}/pin", put(content::pin).delete(content::unpin))
        .route("/v1/transfers", get(content::transfers))
        .route("/v1/images", get(images::list).delete(images::remove))
        .route("/v1/images/import", post(images::import))
        .route("/v1/images/pull", post(images::pull))
        .route("/v1/images/pulls", get(images::pulls))
        .route("/v1/registries/login", post(images::login))
        .route("/v1/registries/logout", post(images::logout))
        .route("/v1/images/export", get(images::export))
        .route("/v1/containers", get(containers::list).post(containers::run))
        .route("/v1/containers/{id}", get(containers::inspect).delete(containers::remove))
        .route("/v1/containers/{id}/stop", post(containers::stop))
        .route("/v1/containers/{id}/kill", post(containers::kill))
        .route("/v1/containers/{id}/wait", post(containers::wait))
        .route("/v1/containers/{id}/logs", get(containers::logs))
        .route("/v1/containers/{id}/exec", post(containers::exec))
        .route("/v1/stats", get(containers::stats))
        .route("/v1/services", get(services::list).post(services::create))
        .route("/v1/services/{name}", get(services::get).put(services::update).delete(services::remove))
        .route("/v1/services/{name}/scale", put(services::scale))
        .route("/v1/services/{name}/rebalance", post(services::rebalance))
        .route("/v1/services/{name}/rollback", post(services::rollback))
        .route("/v1/services/{name}/replicas", get(services::replicas))
        .route("/v1/services/{name}/replicas/{replica}/restart", post(services::restart_replica))
        .route("/v1/services/{name}/logs", get(services::logs))
}
