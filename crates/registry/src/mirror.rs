//! The registry mirror: a read-only OCI distribution endpoint (`--mirror-listen`, default
//! 127.0.0.1:5050) that containerd, Docker, Podman and skopeo pull through.
//!
//! It serves what the cluster holds and pulls through (once per cluster, see [`crate::cluster`])
//! what nobody has yet: a manifest is answered only once the whole image is in this peer's
//! store, so a 200 on a manifest is never followed by a blob it cannot serve. When neither the
//! cluster nor the registry has it, the answer is a 404 with an OCI error body, and the client
//! falls back to the registry itself. The upstream registry of a request is the `?ns=`
//! parameter containerd sends, else the configured default (`--mirror-registry`, docker.io).
//!
//! The endpoint has no authentication: like Spegel's, it is meant for the host's own clients
//! and listens on loopback unless told otherwise; it never writes and only pulls what a
//! registry the peer can reach already serves.

use crate::cluster::Cluster;
use crate::reference::ImageRef;
use crate::upstream::media_type_of;
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use shoal_blobs::ImageRecord;
use shoal_image::Digest;
use shoal_types::ByteRange;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The mirror's default address.
pub const DEFAULT_MIRROR_LISTEN: &str = "127.0.0.1:5050";

#[derive(Clone)]
struct Mirror {
    cluster: Arc<Cluster>,
    default_registry: Arc<str>,
}

/// Serves the mirror on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cluster: Arc<Cluster>,
    default_registry: String,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = Mirror { cluster, default_registry: default_registry.into() };
    let app = Router::new().fallback(handle).with_state(state);
    if let Ok(a) = listener.local_addr() {
        info!(addr = %a, "registry mirror listening");
    }
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

/// An OCI error answer.
fn oci_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "errors": [{ "code": code, "message": message, "detail": null }] });
    let mut r = (status, axum::Json(body)).into_response();
    r.headers_mut().insert("Docker-Distribution-API-Version", HeaderValue::from_static("registry/2.0"));
    r
}

enum Route {
    Ping,
    Manifest { name: String, reference: String },
    Blob { name: String, digest: String },
}

fn route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/v2/")?;
    if rest.is_empty() {
        return Some(Route::Ping);
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return Some(Route::Manifest { name: name.to_string(), reference: reference.to_string() });
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        return Some(Route::Blob { name: name.to_string(), digest: digest.to_string() });
    }
    None
}

async fn handle(
    State(m): State<Mirror>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return oci_error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "this mirror is read-only");
    }
    let head = method == Method::HEAD;
    let registry = q.get("ns").map(String::as_str).unwrap_or(&m.default_registry).to_string();
    let mut r = match route(uri.path()) {
        Some(Route::Ping) => {
            let mut r = (StatusCode::OK, axum::Json(serde_json::json!({}))).into_response();
            r.headers_mut().insert("Docker-Distribution-API-Version", HeaderValue::from_static("registry/2.0"));
            return r;
        }
        Some(Route::Manifest { name, reference }) => m.manifest(&registry, &name, &reference, head).await,
        Some(Route::Blob { name, digest }) => m.blob(&registry, &name, &digest, head, &headers).await,
        None => oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "not an OCI distribution path"),
    };
    r.headers_mut().insert("Docker-Distribution-API-Version", HeaderValue::from_static("registry/2.0"));
    r
}

impl Mirror {
    async fn manifest(&self, registry: &str, name: &str, reference: &str, head: bool) -> Response {
        let sep = if reference.starts_with("sha256:") { "@" } else { ":" };
        let r = match ImageRef::parse(&format!("{registry}/{name}{sep}{reference}")) {
            Ok(r) => r,
            Err(e) => return oci_error(StatusCode::NOT_FOUND, "NAME_INVALID", &e.to_string()),
        };
        if let Some(found) = self.local_manifest(&r).await {
            return manifest_response(found, head);
        }
        // Nobody here has it: the cluster's copy, else the registry (once per cluster).
        let blobs = self.cluster.blobs();
        let pulled = match blobs.pull(&r.key()).await {
            Ok(rec) => Ok(rec),
            Err(_) => self.cluster.pull(&r).await.map_err(|e| e.to_string()),
        };
        match pulled {
            Ok(_) => match self.local_manifest(&r).await {
                Some(found) => manifest_response(found, head),
                None => oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", "pulled, but the manifest is not here"),
            },
            Err(e) => {
                debug!(image = %r, err = %e, "mirror: not in the cluster or the registry");
                oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", &e)
            }
        }
    }

    /// The manifest `r` names, if this peer holds it and everything it names.
    async fn local_manifest(&self, r: &ImageRef) -> Option<(Vec<u8>, String, Digest)> {
        let blobs = self.cluster.blobs();
        let digest: Digest = match r.digest() {
            Some(d) => d.parse().ok()?,
            None => {
                // A tag: the image record (the index it came by, if any, else the manifest).
                let key = r.key();
                let store = blobs.store();
                let rec: ImageRecord = tokio::task::spawn_blocking(move || store.image(&key)).await.ok()?.ok()??;
                rec.index.as_ref().unwrap_or(&rec.manifest).digest.clone()
            }
        };
        let cid = blobs.complete_sha256(&digest).await?;
        let store = blobs.store();
        let bytes = tokio::task::spawn_blocking(move || -> Option<Vec<u8>> {
            let mut f = store.open_blob(&cid).ok()?;
            let mut buf = Vec::new();
            f.by_ref().take(crate::upstream::MAX_MANIFEST_BYTES as u64 + 1).read_to_end(&mut buf).ok()?;
            Some(buf)
        })
        .await
        .ok()??;
        let media_type = media_type_of(&bytes)?;
        // A platform manifest is served only with its blobs here (an index names manifests that
        // are fetched on their own request).
        if !media_type.contains("index") && !media_type.contains("list") && !self.has_blobs_of(&bytes).await {
            return None;
        }
        Some((bytes, media_type, digest))
    }

    async fn has_blobs_of(&self, manifest: &[u8]) -> bool {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(manifest) else { return false };
        let digests = std::iter::once(&v["config"])
            .chain(v["layers"].as_array().into_iter().flatten())
            .filter_map(|d| d["digest"].as_str()?.parse::<Digest>().ok());
        for d in digests {
            if self.cluster.blobs().complete_sha256(&d).await.is_none() {
                return false;
            }
        }
        true
    }

    async fn blob(&self, registry: &str, name: &str, digest: &str, head: bool, headers: &HeaderMap) -> Response {
        let Ok(d) = digest.parse::<Digest>() else {
            return oci_error(StatusCode::NOT_FOUND, "DIGEST_INVALID", "only sha256 digests are served");
        };
        let blobs = self.cluster.blobs();
        let Some(cid) = blobs.complete_sha256(&d).await else {
            debug!(registry, name, %d, "mirror: a blob nobody asked a manifest for");
            return oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "not in the cluster; ask the registry");
        };
        let (file, size) = match blobs.open(cid).await {
            Ok(x) => x,
            Err(e) => {
                warn!(%d, err = %e, "mirror: cannot open a stored blob");
                return oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "cannot read it here");
            }
        };
        let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(ByteRange::parse);
        let (status, start, len) = match range.map(|r| r.within(size)) {
            Some(Some((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
            Some(None) => {
                let mut r = oci_error(StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UNKNOWN", "range not satisfiable");
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return r;
            }
            None => (StatusCode::OK, 0, size),
        };
        let mut builder = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, len)
            .header(header::ACCEPT_RANGES, "bytes")
            .header("Docker-Content-Digest", d.as_str());
        if status == StatusCode::PARTIAL_CONTENT {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", start + len - 1));
        }
        let body = if head {
            Body::empty()
        } else {
            let mut file = file;
            if file.seek(SeekFrom::Start(start)).is_err() {
                return oci_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", "cannot read the blob");
            }
            let reader = tokio::fs::File::from_std(file);
            use tokio::io::AsyncReadExt;
            Body::from_stream(tokio_util::io::ReaderStream::with_capacity(reader.take(len), 1 << 20))
        };
        builder.body(body).unwrap_or_else(|_| oci_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", "response"))
    }
}

fn manifest_response((bytes, media_type, digest): (Vec<u8>, String, Digest), head: bool) -> Response {
    let len = bytes.len();
    let body = if head { Body::empty() } else { Body::from(bytes) };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, media_type)
        .header(header::CONTENT_LENGTH, len)
        .header("Docker-Content-Digest", digest.as_str())
        .body(body)
        .unwrap_or_else(|_| oci_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", "response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_with_slashes_in_names() {
        assert!(matches!(route("/v2/"), Some(Route::Ping)));
        match route("/v2/library/nginx/manifests/1.27") {
            Some(Route::Manifest { name, reference }) => {
                assert_eq!((name.as_str(), reference.as_str()), ("library/nginx", "1.27"))
            }
            _ => panic!("a manifest path"),
        }
        match route("/v2/a/b/c/blobs/sha256:00") {
            Some(Route::Blob { name, digest }) => assert_eq!((name.as_str(), digest.as_str()), ("a/b/c", "sha256:00")),
            _ => panic!("a blob path"),
        }
        assert!(route("/v3/x").is_none());
        assert!(route("/v2/x/tags/list").is_none());
    }
}
