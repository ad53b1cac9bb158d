//! `/v1/services`: declare, list, inspect, scale, update and remove leaderless services.
//! Any peer accepts these; the change reaches every peer through the replicated state.

use crate::AppState;
use crate::error::{ApiError, ApiJson, ApiQuery};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use shoal_types::{ReplicaInfo, ServiceInfo, ServiceLogLine, ServiceSpec};

/// `?replicas=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScaleQuery {
    /// The new replica count.
    replicas: u32,
}

/// Every service, with how many replicas run.
#[utoipa::path(get, path = "/v1/services", tag = "services", responses((status = 200, body = [ServiceInfo])))]
pub(crate) async fn list(State(s): State<AppState>) -> Result<ApiJson<Vec<ServiceInfo>>, ApiError> {
    Ok(ApiJson(s.node.service_list().await?))
}

/// Declares a new service.
#[utoipa::path(post, path = "/v1/services", tag = "services", request_body = ServiceSpec,
    responses((status = 201, body = ServiceInfo), (status = 400, body = shoal_types::ErrorBody), (status = 409, body = shoal_types::ErrorBody)))]
pub(crate) async fn create(
    State(s): State<AppState>,
    ApiJson(spec): ApiJson<ServiceSpec>,
) -> Result<(StatusCode, ApiJson<ServiceInfo>), ApiError> {
    Ok((StatusCode::CREATED, ApiJson(s.node.create_service(spec).await?)))
}

/// One service.
#[utoipa::path(get, path = "/v1/services/{name}", tag = "services", params(("name" = String, Path, description = "service name")),
    responses((status = 200, body = ServiceInfo), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn get(State(s): State<AppState>, Path(name): Path<String>) -> Result<ApiJson<ServiceInfo>, ApiError> {
    Ok(ApiJson(s.node.service(&name).await?))
}

/// Replaces a service's spec (image, resources, ...).
#[utoipa::path(put, path = "/v1/services/{name}", tag = "services", params(("name" = String, Path, description = "service name")), request_body = ServiceSpec,
    responses((status = 200, body = ServiceInfo), (status = 400, body = shoal_types::ErrorBody), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn update(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiJson(spec): ApiJson<ServiceSpec>,
) -> Result<ApiJson<ServiceInfo>, ApiError> {
    Ok(ApiJson(s.node.update_service(&name, spec).await?))
}

/// Changes the replica count.
#[utoipa::path(put, path = "/v1/services/{name}/scale", tag = "services", params(("name" = String, Path, description = "service name"), ScaleQuery),
    responses((status = 200, body = ServiceInfo), (status = 404, body = shoal_types::ErrorBody), (status = 409, body = shoal_types::ErrorBody)))]
pub(crate) async fn scale(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ScaleQuery>,
) -> Result<ApiJson<ServiceInfo>, ApiError> {
    Ok(ApiJson(s.node.scale_service(&name, q.replicas).await?))
}

/// Spreads a service's replicas evenly again: one `max_unavailable` batch at a time, each new
/// copy running before the old one stops.
#[utoipa::path(post, path = "/v1/services/{name}/rebalance", tag = "services", params(("name" = String, Path, description = "service name")),
    responses((status = 200, body = ServiceInfo), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn rebalance(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<ApiJson<ServiceInfo>, ApiError> {
    Ok(ApiJson(s.node.rebalance_service(&name).await?))
}

/// Rolls a service back to the image it ran before its last update: a rolling update to it.
#[utoipa::path(post, path = "/v1/services/{name}/rollback", tag = "services", params(("name" = String, Path, description = "service name")),
    responses((status = 200, body = ServiceInfo), (status = 403, body = shoal_types::ErrorBody), (status = 404, body = shoal_types::ErrorBody), (status = 409, body = shoal_types::ErrorBody)))]
pub(crate) async fn rollback(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<ApiJson<ServiceInfo>, ApiError> {
    Ok(ApiJson(s.node.rollback_service(&name).await?))
}

/// Restarts one replica wherever it runs: its peer stops the container and starts a fresh
/// one. Answers at once (202) with the replica as it was.
#[utoipa::path(post, path = "/v1/services/{name}/replicas/{replica}/restart", tag = "services",
    params(("name" = String, Path, description = "service name"), ("replica" = String, Path, description = "the replica's index, or for a global service its peer's id (or the id's last 8 characters)")),
    responses((status = 202, body = ReplicaInfo), (status = 403, body = shoal_types::ErrorBody), (status = 404, body = shoal_types::ErrorBody),
        (status = 409, body = shoal_types::ErrorBody), (status = 502, body = shoal_types::ErrorBody)))]
pub(crate) async fn restart_replica(
    State(s): State<AppState>,
    Path((name, replica)): Path<(String, String)>,
) -> Result<(StatusCode, ApiJson<ReplicaInfo>), ApiError> {
    Ok((StatusCode::ACCEPTED, ApiJson(s.node.restart_replica(&name, &replica).await?)))
}

/// Each replica of a service: where it runs and how it is doing, and why one does not run
/// (`error`); replicas not reported yet are `pending`, those no peer can run `unplaced`.
#[utoipa::path(get, path = "/v1/services/{name}/replicas", tag = "services", params(("name" = String, Path, description = "service name")),
    responses((status = 200, body = [ReplicaInfo]), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn replicas(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<ApiJson<Vec<ReplicaInfo>>, ApiError> {
    Ok(ApiJson(s.node.replicas(Some(&name)).await?))
}

/// Removes a service; every peer stops its replicas.
#[utoipa::path(delete, path = "/v1/services/{name}", tag = "services", params(("name" = String, Path, description = "service name")),
    responses((status = 204), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn remove(State(s): State<AppState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    s.node.remove_service(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?follow=&tail=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogsQuery {
    /// Keep streaming new lines (polled every second).
    #[serde(default)]
    follow: bool,
    /// Only the last N lines of each replica (default 1000).
    tail: Option<u32>,
}

/// Output of every replica, wherever it runs, merged by time (newline-delimited JSON).
#[utoipa::path(get, path = "/v1/services/{name}/logs", tag = "services", params(("name" = String, Path, description = "service name"), LogsQuery),
    responses((status = 200, description = "newline-delimited ServiceLogLine", body = ServiceLogLine), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn logs(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let mut since = std::collections::BTreeMap::new();
    let first = s.node.service_logs(&name, q.tail.unwrap_or(1000), &mut since).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<ServiceLogLine>(256);
    let node = s.node.clone();
    tokio::spawn(async move {
        for l in first {
            if tx.send(l).await.is_err() {
                return;
            }
        }
        if !q.follow {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = tx.closed() => return,
            }
            let Ok(lines) = node.service_logs(&name, 5000, &mut since).await else { return };
            for l in lines {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(crate::v1::containers::ndjson(rx).into_response())
}
