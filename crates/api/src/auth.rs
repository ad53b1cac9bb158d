//! Bearer-token authentication for the TCP listener.
//!
//! The unix socket is protected by file permissions (root only). Over TCP every request must
//! carry `Authorization: Bearer <token>`; the token lives in `<data-dir>/api.token` (mode 0600,
//! created on first start) and is compared in constant time.

use crate::ApiError;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

/// Reads the token at `path`, creating a random one if the file does not exist, and makes
/// sure the file's second line is the agent's certificate `fingerprint` (see [`crate::tls`]):
/// the file (mode 0600) is all a remote CLI needs. Returns the token.
pub fn load_or_create_token(path: &Path, fingerprint: &str) -> std::io::Result<String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let (token, pin) = parse_token_file(&text);
    if pin.as_deref() == Some(fingerprint)
        && let Some(t) = token
    {
        return Ok(t);
    }
    let token = token.unwrap_or_else(|| hex::encode(rand::random::<[u8; 32]>()));
    let tmp = path.with_extension("token.tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(format!("{token}\n{fingerprint}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(token)
}

/// A token file's token (first line) and certificate fingerprint (second line), if present.
pub fn parse_token_file(text: &str) -> (Option<String>, Option<String>) {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let token = lines.next().map(str::to_string);
    let pin = lines.next().filter(|l| l.starts_with("sha256:")).map(str::to_string);
    (token, pin)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware: refuses requests without the right bearer token.
pub async fn require_token(State(token): State<Arc<String>>, req: Request, next: Next) -> Result<Response, ApiError> {
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => Ok(next.run(req).await),
        _ => Err(ApiError::Unauthorized),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("api.token");
        let a = load_or_create_token(&p, "sha256:aa").unwrap();
        let b = load_or_create_token(&p, "sha256:aa").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        let c = load_or_create_token(&p, "sha256:bb").unwrap();
        assert_eq!(a, c, "a new certificate keeps the token");
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(parse_token_file(&text), (Some(a.clone()), Some("sha256:bb".into())));
        assert_eq!(parse_token_file("tok"), (Some("tok".into()), None), "a token file from before");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(
            constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd") && !constant_time_eq(b"a", b"ab")
        );
    }
}
