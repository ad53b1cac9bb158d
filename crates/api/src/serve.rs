//! Serving the router on a unix socket (root-only) or on TCP (token required).

use crate::auth::require_token;
use axum::Router;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tracing::info;

/// Errors binding an API listener.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Another agent already answers on this socket
    #[error("another agent is already serving {path}; stop it or use another --data-dir / --api-socket")]
    InUse { path: String },
    /// The socket or address could not be bound
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    /// Serving failed
    #[error("API server failed: {0}")]
    Serve(std::io::Error),
}

/// Binds the unix socket at `path` (mode 0600). A stale socket left by a crashed agent is
/// replaced; one a live agent still answers on is an error.
pub async fn bind_unix(path: &Path) -> Result<UnixListener, ServeError> {
    let shown = path.display().to_string();
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ServeError::InUse { path: shown });
        }
        let _ = std::fs::remove_file(path);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| ServeError::Bind { addr: shown.clone(), source })?;
    }
    let listener = UnixListener::bind(path).map_err(|source| ServeError::Bind { addr: shown.clone(), source })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| ServeError::Bind { addr: shown, source })?;
    Ok(listener)
}

/// Serves `app` on a listener from [`bind_unix`] until `shutdown` completes, then removes the
/// socket file.
pub async fn serve_unix(
    listener: UnixListener,
    path: &Path,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    info!(socket = %path.display(), "API listening");
    let r = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    let _ = std::fs::remove_file(path);
    r.map_err(ServeError::Serve)
}

/// Binds a TCP listener for the API (split from serving so the caller learns bind errors, and
/// the port of `:0`, before it starts).
pub async fn bind_tcp(addr: std::net::SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr: addr.to_string(), source })
}

/// Serves `app` on `listener`, requiring `Authorization: Bearer <token>` on every request.
pub async fn serve_tcp(
    listener: TcpListener,
    token: String,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let app = app.layer(axum::middleware::from_fn_with_state(Arc::new(token), require_token));
    if let Ok(a) = listener.local_addr() {
        info!(addr = %a, "API listening on TCP (token required)");
    }
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.map_err(ServeError::Serve)
}
