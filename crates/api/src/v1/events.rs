//! `GET /v1/events`: what the cluster saw happen, merged from every live peer.

use crate::AppState;
use crate::error::{ApiError, ApiJson, ApiQuery};
use crate::v1::containers::ndjson;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use shoal_types::ClusterEvent;

/// `?since_ms=&limit=&follow=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// Only events at or after this time (milliseconds since the Unix epoch); default: all kept.
    #[serde(default)]
    since_ms: u64,
    /// At most this many (the newest); default 1000, at most 5000.
    limit: Option<usize>,
    /// Keep streaming new events (newline-delimited JSON) until the client goes away.
    #[serde(default)]
    follow: bool,
}

/// The events every live peer recorded, merged: oldest first, one entry per fact (the peers
/// that saw it in `seen_by`). With `follow`, newline-delimited ClusterEvent, then each new one.
#[utoipa::path(get, path = "/v1/events", tag = "agent", params(EventsQuery),
    responses((status = 200, body = [ClusterEvent], description = "a JSON array, or newline-delimited ClusterEvent with follow")))]
pub(crate) async fn list(State(s): State<AppState>, ApiQuery(q): ApiQuery<EventsQuery>) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(1000).clamp(1, 5000);
    if q.follow {
        return Ok(ndjson(s.node.follow_events(q.since_ms, limit)));
    }
    Ok(ApiJson(s.node.cluster_events(q.since_ms, limit).await).into_response())
}
