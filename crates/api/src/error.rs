//! The API's one error type: client errors carry their status and a message that says what to
//! do; server errors are an opaque 500 with the cause in the agent's log.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use shoal_node::{ErrorKind, NodeError};
use shoal_types::ErrorBody;

/// An error answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (400)
    #[error("{0}")]
    BadRequest(String),
    /// No such resource (404)
    #[error("{0}")]
    NotFound(String),
    /// Missing or wrong bearer token (401)
    #[error("missing or wrong API token: send `Authorization: Bearer <token>` (the CLI reads SHOAL_TOKEN)")]
    Unauthorized,
    /// The agent cannot serve this right now (503)
    #[error("{0}")]
    Unavailable(String),
    /// Conflicts with the current state (409)
    #[error("{0}")]
    Conflict(String),
    /// This peer may not do it (403)
    #[error("{0}")]
    Forbidden(String),
    /// Out of space (507)
    #[error("{0}")]
    Full(String),
    /// Peers could not provide it (502)
    #[error("{0}")]
    Peers(String),
    /// A bug or an unexpected failure (500); the message is logged, not returned
    #[error("internal error")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Peers(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "API request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, Json(ErrorBody { error: self.to_string() })).into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let msg = e.to_string();
        match e.kind() {
            ErrorKind::BadRequest => ApiError::BadRequest(msg),
            ErrorKind::NotFound => ApiError::NotFound(msg),
            ErrorKind::Conflict => ApiError::Conflict(msg),
            ErrorKind::Forbidden => ApiError::Forbidden(msg),
            ErrorKind::Full => ApiError::Full(msg),
            ErrorKind::Peers => ApiError::Peers(msg),
            ErrorKind::Unavailable => ApiError::Unavailable(msg),
            ErrorKind::Internal => ApiError::Internal(msg),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

/// Answer for unknown routes.
pub(crate) async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no such endpoint: {}; see /v1/openapi.json", uri.path()))
}

/// `Json` that rejects with [`ApiError`].
#[derive(axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub(crate) struct ApiJson<T>(pub T);

/// `Query` that rejects with [`ApiError`].
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct ApiQuery<T>(pub T);

/// `Path` that rejects with [`ApiError`].
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct ApiPath<T>(pub T);

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}
