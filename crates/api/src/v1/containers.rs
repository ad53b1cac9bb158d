//! `/v1/containers`: run, list, inspect, stop, kill, remove, logs, wait; `/v1/stats`.
//!
//! An attached run (`POST /v1/containers?attach=true`) answers with newline-delimited JSON
//! [`AttachEvent`]s: `started`, then each line of output as the shim logs it, then `exited`
//! with the exit code. `logs?follow=true` streams [`LogEntry`] lines until the container's run
//! is over. The node drives both from log-directory and exit events; each handler only turns
//! the node's stream into a response.

use crate::AppState;
use crate::error::{ApiError, ApiJson, ApiQuery};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use shoal_types::{AttachEvent, ContainerInfo, ContainerSpec, ContainerStats, ExecEvent, LogEntry};

/// `?all=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Include exited containers.
    #[serde(default)]
    all: bool,
}

/// `?attach=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunQuery {
    /// Stream the output and the exit (newline-delimited JSON) instead of returning at once.
    #[serde(default)]
    attach: bool,
}

/// `?t=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct StopQuery {
    /// Seconds between SIGTERM and SIGKILL (default 10).
    t: Option<u64>,
}

/// `?signal=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct KillQuery {
    /// Signal name or number (default KILL).
    signal: Option<String>,
}

/// `?force=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct RemoveQuery {
    /// Kill it first if it runs.
    #[serde(default)]
    force: bool,
}

/// `?follow=&tail=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogsQuery {
    /// Keep streaming until the container's run is over.
    #[serde(default)]
    follow: bool,
    /// Only the last N lines.
    tail: Option<usize>,
}

/// Containers on this peer, newest first.
#[utoipa::path(get, path = "/v1/containers", tag = "containers", params(ListQuery),
    responses((status = 200, body = [ContainerInfo])))]
pub(crate) async fn list(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<ApiJson<Vec<ContainerInfo>>, ApiError> {
    Ok(ApiJson(s.node.containers(q.all).await?))
}

/// Creates and starts a container (pulling its image from peers if needed).
#[utoipa::path(post, path = "/v1/containers", tag = "containers", params(RunQuery), request_body = ContainerSpec,
    responses((status = 201, body = ContainerInfo), (status = 200, description = "attached: newline-delimited AttachEvent", body = AttachEvent),
        (status = 400, body = shoal_types::ErrorBody), (status = 404, body = shoal_types::ErrorBody), (status = 409, body = shoal_types::ErrorBody)))]
pub(crate) async fn run(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<RunQuery>,
    ApiJson(spec): ApiJson<ContainerSpec>,
) -> Result<Response, ApiError> {
    if !q.attach {
        let info = s.node.run_container(spec).await?;
        return Ok((StatusCode::CREATED, ApiJson(info)).into_response());
    }
    Ok(ndjson(s.node.run_attached(spec).await?))
}

pub(crate) fn ndjson<T: serde::Serialize + Send + 'static>(rx: tokio::sync::mpsc::Receiver<T>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        let mut line = serde_json::to_vec(&item).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line)), rx))
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(stream)).into_response()
}

/// One container by name or id prefix.
#[utoipa::path(get, path = "/v1/containers/{id}", tag = "containers", params(("id" = String, Path, description = "name or id prefix")),
    responses((status = 200, body = ContainerInfo), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn inspect(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<ContainerInfo>, ApiError> {
    Ok(ApiJson(s.node.container(&id).await?))
}

/// SIGTERM, then SIGKILL after `t` seconds; answers once it has exited.
#[utoipa::path(post, path = "/v1/containers/{id}/stop", tag = "containers", params(("id" = String, Path, description = "name or id prefix"), StopQuery),
    responses((status = 200, body = ContainerInfo), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn stop(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<StopQuery>,
) -> Result<ApiJson<ContainerInfo>, ApiError> {
    Ok(ApiJson(s.node.stop_container(&id, q.t.unwrap_or(10)).await?))
}

/// Sends a signal to the container's init (default KILL).
#[utoipa::path(post, path = "/v1/containers/{id}/kill", tag = "containers", params(("id" = String, Path, description = "name or id prefix"), KillQuery),
    responses((status = 200, body = ContainerInfo), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn kill(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<KillQuery>,
) -> Result<ApiJson<ContainerInfo>, ApiError> {
    Ok(ApiJson(s.node.kill_container(&id, q.signal).await?))
}

/// Removes a container and everything it had (mount, network, cgroups, logs).
#[utoipa::path(delete, path = "/v1/containers/{id}", tag = "containers", params(("id" = String, Path, description = "name or id prefix"), RemoveQuery),
    responses((status = 204), (status = 404, body = shoal_types::ErrorBody), (status = 409, body = shoal_types::ErrorBody)))]
pub(crate) async fn remove(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    s.node.remove_container(&id, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Waits until the container's run is over; answers with its exit.
#[utoipa::path(post, path = "/v1/containers/{id}/wait", tag = "containers", params(("id" = String, Path, description = "name or id prefix")),
    responses((status = 200, body = ContainerInfo), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn wait(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<ContainerInfo>, ApiError> {
    Ok(ApiJson(s.node.wait_container(&id).await?))
}

/// The container's output (newline-delimited LogEntry).
#[utoipa::path(get, path = "/v1/containers/{id}/logs", tag = "containers", params(("id" = String, Path, description = "name or id prefix"), LogsQuery),
    responses((status = 200, description = "newline-delimited LogEntry", body = LogEntry), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn logs(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    Ok(ndjson(s.node.logs(&id, q.tail, q.follow).await?))
}

/// `?args=` for exec.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecQuery {
    /// The command and its arguments, as a JSON array of strings.
    args: String,
}

/// Runs a command in a running container. The request body is its stdin (streamed); the answer
/// is newline-delimited [`ExecEvent`]s: its output as it comes, then its exit code.
#[utoipa::path(post, path = "/v1/containers/{id}/exec", tag = "containers", params(("id" = String, Path, description = "name or id prefix"), ExecQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "newline-delimited ExecEvent", body = ExecEvent), (status = 404, body = shoal_types::ErrorBody), (status = 409, body = shoal_types::ErrorBody)))]
pub(crate) async fn exec(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ExecQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    use futures::TryStreamExt;
    let args: Vec<String> = serde_json::from_str(&q.args)
        .map_err(|e| ApiError::BadRequest(format!("args must be a JSON array of strings: {e}")))?;
    if args.is_empty() {
        return Err(ApiError::BadRequest("give a command to run".into()));
    }
    let mut session = s.node.exec_session(&id, args).await?;
    session.feed(tokio_util::io::StreamReader::new(body.into_data_stream().map_err(std::io::Error::other)));
    Ok(ndjson(session.events()))
}

/// CPU, memory and pids of every running container, from its cgroups.
#[utoipa::path(get, path = "/v1/stats", tag = "containers", responses((status = 200, body = [ContainerStats])))]
pub(crate) async fn stats(State(s): State<AppState>) -> Result<ApiJson<Vec<ContainerStats>>, ApiError> {
    Ok(ApiJson(s.node.container_stats().await?))
}
