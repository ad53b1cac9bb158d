//! Registry credentials: what `shoal registry login` saved on this peer, else the user's Docker
//! `config.json` (and its credential helpers), else anonymous.
//!
//! Saved logins live in one file in the data dir, mode 0600, replaced atomically. They never
//! leave the peer: a peer fetching for another uses its own logins (see `cluster`).

use crate::error::RegistryError;
use oci_client::secrets::RegistryAuth;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file's name in the data dir.
pub const LOGINS_FILE: &str = "registry-logins.json";

#[derive(Clone, Serialize, Deserialize)]
struct Login {
    username: String,
    password: String,
}

/// This peer's registry logins.
pub struct Logins {
    path: PathBuf,
    saved: Mutex<BTreeMap<String, Login>>,
    /// Also look in the user's Docker config (off in tests, which must not read `~/.docker`).
    docker_config: bool,
}

impl std::fmt::Debug for Logins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logins").field("path", &self.path).field("hosts", &self.hosts()).finish()
    }
}

impl Logins {
    /// Reads the logins saved in `data_dir` (none yet: empty).
    pub fn open(data_dir: &Path, docker_config: bool) -> Result<Logins, RegistryError> {
        let path = data_dir.join(LOGINS_FILE);
        let saved = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| RegistryError::Logins { path: path.clone(), why: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(RegistryError::Io { path, source }),
        };
        Ok(Logins { path, saved: Mutex::new(saved), docker_config })
    }

    /// The hosts with a saved login.
    pub fn hosts(&self) -> Vec<String> {
        self.saved.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    /// The credentials for `registry`.
    pub fn auth(&self, registry: &str) -> RegistryAuth {
        if let Some(l) = self.saved.lock().unwrap_or_else(|e| e.into_inner()).get(registry) {
            return RegistryAuth::Basic(l.username.clone(), l.password.clone());
        }
        if self.docker_config {
            // Docker keys Docker Hub by its v1 index URL.
            let key = if registry == "docker.io" { "https://index.docker.io/v1/" } else { registry };
            match docker_credential::get_credential(key) {
                Ok(docker_credential::DockerCredential::UsernamePassword(u, p)) => return RegistryAuth::Basic(u, p),
                Ok(docker_credential::DockerCredential::IdentityToken(t)) => return RegistryAuth::Bearer(t),
                Err(_) => {}
            }
        }
        RegistryAuth::Anonymous
    }

    /// Saves a login for `registry` (replacing any), durably, readable by root only.
    pub fn save(&self, registry: &str, username: &str, password: &str) -> Result<(), RegistryError> {
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = saved.clone();
        next.insert(registry.to_string(), Login { username: username.to_string(), password: password.to_string() });
        self.write(&next)?;
        *saved = next;
        Ok(())
    }

    /// Forgets the login for `registry`; whether there was one.
    pub fn remove(&self, registry: &str) -> Result<bool, RegistryError> {
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = saved.clone();
        let had = next.remove(registry).is_some();
        if had {
            self.write(&next)?;
            *saved = next;
        }
        Ok(had)
    }

    fn write(&self, logins: &BTreeMap<String, Login>) -> Result<(), RegistryError> {
        let io = |source| RegistryError::Io { path: self.path.clone(), source };
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(logins).map_err(|e| io(std::io::Error::other(e)))?;
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
        f.write_all(&body).and_then(|()| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn logins_are_saved_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let logins = Logins::open(dir.path(), false).unwrap();
        assert!(matches!(logins.auth("127.0.0.1:5000"), RegistryAuth::Anonymous));
        logins.save("127.0.0.1:5000", "alice", "s3cret").unwrap();
        let mode = std::fs::metadata(dir.path().join(LOGINS_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Logins::open(dir.path(), false).unwrap();
        assert!(matches!(again.auth("127.0.0.1:5000"), RegistryAuth::Basic(u, p) if u == "alice" && p == "s3cret"));
        assert!(format!("{again:?}").find("s3cret").is_none(), "Debug must not show passwords");
        assert!(again.remove("127.0.0.1:5000").unwrap());
        assert!(matches!(Logins::open(dir.path(), false).unwrap().auth("127.0.0.1:5000"), RegistryAuth::Anonymous));
    }

    #[test]
    fn a_corrupt_logins_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOGINS_FILE), b"{not json").unwrap();
        let e = Logins::open(dir.path(), false).unwrap_err().to_string();
        assert!(e.contains("log in again"), "{e}");
    }
}
