//! `/v1/content`: share, list, fetch, read, pin and remove blobs.

use crate::AppState;
use crate::error::{ApiError, ApiJson, ApiPath};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use shoal_types::{ByteRange, ContentInfo, SharedContent, TransferInfo};

/// The uploaded body as a blocking reader (the store hashes and writes on a blocking thread).
pub(crate) fn body_reader(body: Body) -> DrainOnDrop<tokio_util::io::SyncIoBridge<impl tokio::io::AsyncRead + Unpin>> {
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    DrainOnDrop { inner: tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream)), done: false }
}

/// Most bytes of a refused upload read and thrown away so the client sees the answer.
const DRAIN_LIMIT: u64 = 1 << 30;

/// A reader that, if dropped before the end (the store refused the upload: quota, digest,
/// disk), reads and discards the rest (up to [`DRAIN_LIMIT`]). Closing a connection with an
/// unread request body makes the peer see a reset instead of the error response.
pub(crate) struct DrainOnDrop<R: std::io::Read> {
    inner: R,
    done: bool,
}

impl<R: std::io::Read> std::io::Read for DrainOnDrop<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.done = true;
        }
        Ok(n)
    }
}

impl<R: std::io::Read> Drop for DrainOnDrop<R> {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::io::copy(&mut std::io::Read::take(&mut self.inner, DRAIN_LIMIT), &mut std::io::sink());
        }
    }
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// Stores the request body as a blob and announces it to the cluster.
#[utoipa::path(post, path = "/v1/content", tag = "content",
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    params(("x-shoal-name" = Option<String>, Header, description = "file name to remember")),
    responses((status = 201, body = SharedContent), (status = 400, body = shoal_types::ErrorBody), (status = 507, body = shoal_types::ErrorBody)))]
pub(crate) async fn share(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, ApiJson<SharedContent>), ApiError> {
    let size = header_str(&headers, header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok());
    let name = header_str(&headers, "x-shoal-name").filter(|n| n.len() <= 255 && !n.chars().any(char::is_control));
    let r = s.node.share(body_reader(body), size, name).await?;
    Ok((if r.existed { StatusCode::OK } else { StatusCode::CREATED }, ApiJson(r)))
}

/// Every blob in this peer's store (complete and partial).
#[utoipa::path(get, path = "/v1/content", tag = "content", responses((status = 200, body = [ContentInfo])))]
pub(crate) async fn list(State(s): State<AppState>) -> Result<ApiJson<Vec<ContentInfo>>, ApiError> {
    Ok(ApiJson(s.node.content().await?))
}

/// The bytes of a blob (id or unique prefix), in order; if this peer does not have it all yet,
/// it is fetched and streamed as verified pieces arrive. `Range: bytes=START-[END]` reads part.
#[utoipa::path(get, path = "/v1/content/{id}", tag = "content", params(("id" = String, Path, description = "content id or unique prefix")),
    responses((status = 200, content_type = "application/octet-stream"), (status = 206, content_type = "application/octet-stream"),
        (status = 404, body = shoal_types::ErrorBody), (status = 416)))]
pub(crate) async fn read(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let asked = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_string);
    let range = match asked.as_deref().map(ByteRange::parse) {
        None => None,
        Some(Some(r)) => Some(r),
        Some(None) => {
            return Err(ApiError::BadRequest(format!(
                "unsupported Range {asked:?}: use bytes=START-, bytes=START-END or bytes=-COUNT (one range)"
            )));
        }
    };
    // A suffix range's start needs the size: the stream opened at 0 tells it, and is
    // opened again where the range starts.
    let hint = range.map_or(Some(0), |r| r.start());
    let (size, mut rx) = s.node.stream_content(&id, hint.unwrap_or(0)).await?;
    let (start, end) = match range.map(|r| r.within(size)) {
        None => (0, size.saturating_sub(1)),
        Some(Some(x)) => x,
        Some(None) => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = format!("bytes */{size}").parse() {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    if hint != Some(start) && start > 0 {
        drop(rx);
        rx = s.node.stream_content(&id, start).await?.1;
    }
    let len = if size == 0 { 0 } else { end + 1 - start };
    // Chunks in order as they arrive, cut at the end of the range.
    let body = async_stream_body(move |tx| async move {
        let mut left = len;
        while left > 0 {
            let Some(chunk) = rx.recv().await else { break };
            let mut chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            };
            if chunk.len() as u64 > left {
                chunk.truncate(left as usize);
            }
            left -= chunk.len() as u64;
            if tx.send(Ok(chunk)).await.is_err() {
                break;
            }
        }
    });
    let mut r = (
        [(header::CONTENT_TYPE, "application/octet-stream".to_string()), (header::CONTENT_LENGTH, len.to_string())],
        body,
    )
        .into_response();
    r.headers_mut().insert(header::ACCEPT_RANGES, header::HeaderValue::from_static("bytes"));
    if range.is_some() {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = format!("bytes {start}-{end}/{size}").parse() {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(r)
}

/// A body fed by a task through a channel.
fn async_stream_body<F, Fut>(f: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    Body::from_stream(tokio_stream_from(rx))
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Starts fetching a blob from the peers that hold it (or joins the running download).
#[utoipa::path(post, path = "/v1/content/{id}/fetch", tag = "content", params(("id" = String, Path, description = "full content id")),
    responses((status = 202, body = TransferInfo), (status = 400, body = shoal_types::ErrorBody), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn fetch(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, ApiJson<TransferInfo>), ApiError> {
    Ok((StatusCode::ACCEPTED, ApiJson(s.node.fetch(&id).await?)))
}

/// A download's progress (or the state of local content).
#[utoipa::path(get, path = "/v1/content/{id}/progress", tag = "content", params(("id" = String, Path, description = "content id or unique prefix")),
    responses((status = 200, body = TransferInfo), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn progress(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<TransferInfo>, ApiError> {
    Ok(ApiJson(s.node.transfer(&id).await?))
}

/// `?cluster=`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct TransfersQuery {
    /// Every live peer's downloads, not only this peer's (each names its downloader).
    #[serde(default)]
    cluster: bool,
}

/// Downloads running now, with the peers each gets pieces from and at what rate.
#[utoipa::path(get, path = "/v1/transfers", tag = "content", params(TransfersQuery),
    responses((status = 200, body = [TransferInfo])))]
pub(crate) async fn transfers(
    State(s): State<AppState>,
    crate::error::ApiQuery(q): crate::error::ApiQuery<TransfersQuery>,
) -> ApiJson<Vec<TransferInfo>> {
    ApiJson(if q.cluster { s.node.cluster_transfers().await } else { s.node.transfers() })
}

/// Removes a blob (refused while an image uses it).
#[utoipa::path(delete, path = "/v1/content/{id}", tag = "content", params(("id" = String, Path, description = "content id or unique prefix")),
    responses((status = 204), (status = 404, body = shoal_types::ErrorBody), (status = 409, body = shoal_types::ErrorBody)))]
pub(crate) async fn remove(State(s): State<AppState>, ApiPath(id): ApiPath<String>) -> Result<StatusCode, ApiError> {
    s.node.remove_content(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pins a blob: it is never evicted to stay under the quota.
#[utoipa::path(put, path = "/v1/content/{id}/pin", tag = "content", params(("id" = String, Path, description = "content id or unique prefix")),
    responses((status = 204), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn pin(State(s): State<AppState>, ApiPath(id): ApiPath<String>) -> Result<StatusCode, ApiError> {
    s.node.pin_content(&id, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Unpins a blob.
#[utoipa::path(delete, path = "/v1/content/{id}/pin", tag = "content", params(("id" = String, Path, description = "content id or unique prefix")),
    responses((status = 204), (status = 404, body = shoal_types::ErrorBody)))]
pub(crate) async fn unpin(State(s): State<AppState>, ApiPath(id): ApiPath<String>) -> Result<StatusCode, ApiError> {
    s.node.pin_content(&id, false).await?;
    Ok(StatusCode::NO_CONTENT)
}
