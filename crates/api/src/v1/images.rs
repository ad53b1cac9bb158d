//! `/v1/images`: import, list, pull, export and remove OCI images.

use crate::AppState;
use crate::error::{ApiError, ApiJson, ApiQuery};
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde::Deserialize;
use shoal_types::{ImageInfo, PullRequest, PullStatus, RegistryLogin};

/// `?name=` or `?reference=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct NameQuery {
    /// NAME:TAG (for import: required for a rootfs tarball, overrides the archive's own name).
    name: Option<String>,
}

/// `?reference=NAME:TAG`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefQuery {
    /// NAME:TAG.
    reference: String,
}

/// Imports an image archive sent as the body: `docker save` output, an OCI archive, or a
/// plain root-filesystem tarball (with `?name=`).
#[utoipa::path(post, path = "/v1/images/import", tag = "images", params(NameQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = ImageInfo), (status = 400, body = shoal_types::ErrorBody), (status = 507, body = shoal_types::ErrorBody)))]
pub(crate) async fn import(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<NameQuery>,
    body: Body,
) -> Result<(StatusCode, ApiJson<ImageInfo>), ApiError> {
    let body = tokio_util::io::StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    Ok((StatusCode::CREATED, ApiJson(s.node.import_image(body, q.name).await?)))
}

/// Images on this peer, with the peers that hold each.
#[utoipa::path(get, path = "/v1/images", tag = "images", responses((status = 200, body = [ImageInfo])))]
pub(crate) async fn list(State(s): State<AppState>) -> Result<ApiJson<Vec<ImageInfo>>, ApiError> {
    Ok(ApiJson(s.node.images().await?))
}

/// Fetches an image: from the peers that hold it, else from its registry (each blob fetched
/// from the registry once per cluster); answers when every blob is here.
#[utoipa::path(post, path = "/v1/images/pull", tag = "images", request_body = PullRequest,
    responses((status = 200, body = ImageInfo), (status = 400, body = shoal_types::ErrorBody), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn pull(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<PullRequest>,
) -> Result<ApiJson<ImageInfo>, ApiError> {
    Ok(ApiJson(s.node.pull_image(&req.reference).await?))
}

/// Registry pulls in progress on this peer, blob by blob.
#[utoipa::path(get, path = "/v1/images/pulls", tag = "images", responses((status = 200, body = [PullStatus])))]
pub(crate) async fn pulls(State(s): State<AppState>) -> ApiJson<Vec<PullStatus>> {
    ApiJson(s.node.registry_pulls())
}

/// Checks credentials with a registry and saves them on this peer (never sent to peers).
#[utoipa::path(post, path = "/v1/registries/login", tag = "images", request_body = RegistryLogin,
    responses((status = 204), (status = 403, body = shoal_types::ErrorBody), (status = 502, body = shoal_types::ErrorBody)))]
pub(crate) async fn login(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<RegistryLogin>,
) -> Result<StatusCode, ApiError> {
    s.node.registry_login(&req.registry, &req.username, &req.password).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `{"registry": HOST}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogoutRequest {
    registry: String,
}

/// Forgets this peer's saved login for a registry.
#[utoipa::path(post, path = "/v1/registries/logout", tag = "images", request_body = LogoutRequest,
    responses((status = 204), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn logout(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<LogoutRequest>,
) -> Result<StatusCode, ApiError> {
    if s.node.registry_logout(&req.registry).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no saved login for {} on this peer", req.registry)))
    }
}

/// The image as an OCI archive (loadable by skopeo, podman and docker).
#[utoipa::path(get, path = "/v1/images/export", tag = "images", params(RefQuery),
    responses((status = 200, content_type = "application/x-tar"), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn export(State(s): State<AppState>, ApiQuery(q): ApiQuery<RefQuery>) -> Result<Response, ApiError> {
    let (file, size) = s.node.export_image(&q.reference).await?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
    Ok((
        [(header::CONTENT_TYPE, "application/x-tar".to_string()), (header::CONTENT_LENGTH, size.to_string())],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Removes an image, and its blobs that no other image uses.
#[utoipa::path(delete, path = "/v1/images", tag = "images", params(RefQuery),
    responses((status = 204), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn remove(State(s): State<AppState>, ApiQuery(q): ApiQuery<RefQuery>) -> Result<StatusCode, ApiError> {
    s.node.remove_image(&q.reference).await?;
    Ok(StatusCode::NO_CONTENT)
}
