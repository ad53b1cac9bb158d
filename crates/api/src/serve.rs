//! Serving the router on a unix socket (root-only) or on TCP (token required).

use crate::auth::require_token;
use axum::Router;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
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
        if answers(path, LIVE_WAIT).await {
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

/// How long a socket that accepts but does not answer is watched before it counts as live.
const LIVE_WAIT: Duration = Duration::from_secs(3);

/// Whether an agent answers HTTP on the socket at `path`. A connection alone proves nothing:
/// the socket of an agent that was just killed keeps accepting (into the kernel's backlog)
/// until its process has finished dying, and a restart right after `kill -9` met that. So a
/// socket counts as live when something answers; one that refuses is stale at once; one that
/// accepts and stays silent is asked again until `wait` passes, and then counts as live (a
/// stuck agent still holds its data dir).
async fn answers(path: &Path, wait: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let Ok(mut conn) = UnixStream::connect(path).await else { return false };
        let asked = conn.write_all(b"GET /v1/version HTTP/1.0\r\n\r\n").await.is_ok();
        let mut byte = [0u8; 1];
        let reply = tokio::time::timeout(Duration::from_millis(200), conn.read(&mut byte)).await;
        if asked && matches!(reply, Ok(Ok(n)) if n > 0) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

/// Serves `app` over TLS on `listener`, requiring `Authorization: Bearer <token>` on every
/// request.
pub async fn serve_tcp(
    listener: TcpListener,
    token: String,
    tls: crate::tls::AgentTls,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let app = app.layer(axum::middleware::from_fn_with_state(Arc::new(token), require_token));
    let addr = listener.local_addr().map_err(ServeError::Serve)?;
    let listener = crate::tls::TlsListener::new(listener, tls.config).map_err(ServeError::Serve)?;
    info!(%addr, fingerprint = %tls.fingerprint, "API listening on TCP (TLS, token required)");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.map_err(ServeError::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket whose owner is dying (it accepts, never answers, then goes) is taken over; a
    /// live agent's is refused; a stale file is replaced.
    #[tokio::test]
    async fn a_dying_agents_socket_is_taken_over_and_a_live_ones_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("api.sock");

        // Dying: bound and listening, never accepting, closed after 400 ms.
        let dying = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            drop(dying);
        });
        let taken = bind_unix(&path).await;
        closer.join().expect("closer");
        assert!(taken.is_ok(), "a dying agent's socket is taken over: {:?}", taken.err());
        drop(taken);

        // Live: something answers HTTP.
        let _ = std::fs::remove_file(&path);
        let live = bind_unix(&path).await.expect("bind");
        let server = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((mut c, _)) = live.accept().await {
                let _ = c.write_all(b"HTTP/1.0 404 Not Found\r\n\r\n").await;
            }
        });
        let refused = bind_unix(&path).await;
        assert!(matches!(refused, Err(ServeError::InUse { .. })), "a live agent's socket is refused");
        server.abort();

        // Stale: the file is there, nothing listens.
        let _ = server.await;
        assert!(bind_unix(&path).await.is_ok(), "a stale socket file is replaced");
    }
}
