//! Key material: the peer's own ed25519 identity and the shared cluster key.
//!
//! The identity is created once, on first start, and kept in the data dir (`identity.key`,
//! mode 0600, libp2p protobuf encoding), so the peer id survives restarts. The cluster key is a
//! libp2p private-network pre-shared key in the same file format IPFS uses for `swarm.key`:
//! a peer without it cannot complete even the first handshake with a cluster peer.
//!
//! A key file ([`KeyFile`]) holds the cluster key and, after it, the peer's role: an
//! **operator** key carries the secret half of the cluster's authority (an Ed25519 key that
//! grants the right to change desired state), a **worker** key only its public half:
//! ```text
//! /key/swarm/psk/1.0.0/          /key/swarm/psk/1.0.0/
//! /base16/                       /base16/
//! <64 hex: membership secret>    <64 hex: membership secret>
//! /shoal/operator/1/             /shoal/authority/1/
//! <64 hex: authority secret>     <64 hex: authority public key>
//! ```
//! A file with only the first three lines (made before roles existed) is an operator key whose
//! authority is derived from the membership secret, so every peer that holds it is an
//! operator, as before; no worker key can be made from it.

use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Errors reading or writing key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read
    #[error("cannot read key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The key file could not be written
    #[error("cannot write key file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    /// The identity file is not a libp2p keypair
    #[error(
        "{path} is not a Shoal identity key (it may be corrupt); move it away to create a new identity, which gives this peer a new id"
    )]
    BadIdentity { path: PathBuf },
    /// The cluster key file is not a pre-shared key
    #[error("{path} is not a cluster key ({reason}); create one with `shoal keygen -o {path}`")]
    BadClusterKey { path: PathBuf, reason: String },
    /// A key file others can read
    #[error("{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    TooOpen { path: PathBuf, mode: u32 },
}

/// Loads the identity at `path`, creating it (mode 0600) if it does not exist.
pub fn load_or_create_identity(path: &Path) -> Result<Keypair, KeyError> {
    match fs::read(path) {
        Ok(bytes) => {
            Keypair::from_protobuf_encoding(&bytes).map_err(|_| KeyError::BadIdentity { path: path.to_path_buf() })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().expect("ed25519 keys always encode");
            write_secret(path, &bytes)?;
            Ok(key)
        }
        Err(source) => Err(KeyError::Read { path: path.to_path_buf(), source }),
    }
}

/// Writes `bytes` to `path` atomically with mode 0600: a crash leaves the old file or the new
/// one, never half of one.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let err = |source| KeyError::Write { path: path.to_path_buf(), source };
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)?;
    // The rename is durable once the directory is on disk too.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    }
    Ok(())
}

const OPERATOR_LINE: &str = "/shoal/operator/1/";
const AUTHORITY_LINE: &str = "/shoal/authority/1/";

/// What a key file allows besides membership.
#[derive(Clone, PartialEq, Eq)]
pub enum Role {
    /// The authority's secret: this peer may change desired state.
    Operator([u8; 32]),
    /// The authority's public key: this peer runs work but changes no desired state.
    Worker([u8; 32]),
}

/// A whole key file: the cluster key and the role (see the module docs).
#[derive(Clone)]
pub struct KeyFile {
    /// The membership secret.
    pub cluster: ClusterKey,
    /// Operator or worker.
    pub role: Role,
    /// Whether the file predates roles (its authority derives from the membership secret).
    pub shared: bool,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let role = match self.role {
            Role::Operator(_) => "operator",
            Role::Worker(_) => "worker",
        };
        write!(f, "KeyFile({}, {role})", self.cluster.fingerprint())
    }
}

fn hex32(line: Option<&str>) -> Result<[u8; 32], String> {
    let text = line.map(str::trim).ok_or("the key line is missing")?;
    let bytes = hex::decode(text).map_err(|e| format!("the key line is not hex: {e}"))?;
    bytes.try_into().map_err(|_| "the key line is not 32 bytes".to_string())
}

fn public_of(secret: &[u8; 32]) -> [u8; 32] {
    let mut s = *secret;
    let sk = libp2p::identity::ed25519::SecretKey::try_from_bytes(&mut s).expect("any 32 bytes are an Ed25519 secret");
    libp2p::identity::ed25519::Keypair::from(sk).public().to_bytes()
}

impl KeyFile {
    /// A new cluster: a random membership secret and a random authority (an operator key).
    pub fn generate() -> Self {
        KeyFile { cluster: ClusterKey::generate(), role: Role::Operator(rand::random()), shared: false }
    }

    /// Reads a key file; refuses one that other users can read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let meta = fs::metadata(path).map_err(|source| KeyError::Read { path: path.to_path_buf(), source })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen { path: path.to_path_buf(), mode });
        }
        let text = fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text).map_err(|reason| KeyError::BadClusterKey { path: path.to_path_buf(), reason })
    }

    /// Parses the text of a key file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let cluster = ClusterKey::parse(text)?;
        let mut rest = text.lines().skip(3).filter(|l| !l.trim().is_empty());
        match rest.next().map(str::trim) {
            None => Ok(KeyFile {
                role: Role::Operator(cluster.derive("shoal 2026 shared operator key v1")),
                cluster,
                shared: true,
            }),
            Some(OPERATOR_LINE) => Ok(KeyFile { cluster, role: Role::Operator(hex32(rest.next())?), shared: false }),
            Some(AUTHORITY_LINE) => {
                let public = hex32(rest.next())?;
                libp2p::identity::ed25519::PublicKey::try_from_bytes(&public)
                    .map_err(|_| "the authority key is not a valid Ed25519 public key".to_string())?;
                Ok(KeyFile { cluster, role: Role::Worker(public), shared: false })
            }
            Some(other) => Err(format!("unknown line {other:?} after the cluster key")),
        }
    }

    /// The file text.
    pub fn to_file_text(&self) -> String {
        let mut out = self.cluster.to_file_text();
        match (&self.role, self.shared) {
            (_, true) => {}
            (Role::Operator(s), false) => out.push_str(&format!("{OPERATOR_LINE}\n{}\n", hex::encode(s))),
            (Role::Worker(p), false) => out.push_str(&format!("{AUTHORITY_LINE}\n{}\n", hex::encode(p))),
        }
        out
    }

    /// The worker key of this operator key: the same membership secret and only the public
    /// half of the authority.
    pub fn worker(&self) -> Result<KeyFile, String> {
        match (&self.role, self.shared) {
            (Role::Worker(_), _) => Err("this is a worker key already; make worker keys from the operator key".into()),
            (Role::Operator(_), true) => Err(
                "this cluster key predates operator keys: every peer that holds it is an operator, and a worker key made from it would be one too. Make a new cluster key with `shoal keygen -o cluster.key` and give it to every peer".into(),
            ),
            (Role::Operator(s), false) => {
                Ok(KeyFile { cluster: self.cluster, role: Role::Worker(public_of(s)), shared: false })
            }
        }
    }

    /// The authority's public key.
    pub fn authority(&self) -> [u8; 32] {
        match &self.role {
            Role::Operator(s) => public_of(s),
            Role::Worker(p) => *p,
        }
    }

    /// The authority's secret, on an operator key.
    pub fn operator_secret(&self) -> Option<&[u8; 32]> {
        match &self.role {
            Role::Operator(s) => Some(s),
            Role::Worker(_) => None,
        }
    }
}

/// The secret every peer of one cluster shares.
#[derive(Clone, Copy)]
pub struct ClusterKey(PreSharedKey);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey({})", self.fingerprint())
    }
}

impl ClusterKey {
    /// A new random key.
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        ClusterKey(PreSharedKey::new(bytes))
    }

    /// Reads a key file (operator or worker); refuses one that other users can read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        KeyFile::load(path).map(|k| k.cluster)
    }

    /// Parses the membership secret at the start of a key file.
    pub fn parse(text: &str) -> Result<Self, String> {
        text.parse::<PreSharedKey>().map(ClusterKey).map_err(|e| e.to_string())
    }

    /// The key file text (`/key/swarm/psk/1.0.0/` format).
    pub fn to_file_text(self) -> String {
        self.0.to_key_file()
    }

    /// A short public fingerprint that identifies the key without revealing it.
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint().to_string()
    }

    /// A 32-byte secret for another use of the key (`context` names the use), so a leak of
    /// one derived secret reveals neither the key nor the others.
    pub fn derive(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, self.to_file_text().as_bytes())
    }

    pub(crate) fn psk(self) -> PreSharedKey {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let a = load_or_create_identity(&path).unwrap();
        let b = load_or_create_identity(&path).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn corrupt_identity_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        fs::write(&path, b"garbage").unwrap();
        let err = load_or_create_identity(&path).unwrap_err();
        assert!(err.to_string().contains("move it away"), "{err}");
    }

    #[test]
    fn derived_secrets_depend_on_key_and_context() {
        let (a, b) = (ClusterKey::generate(), ClusterKey::generate());
        assert_eq!(a.derive("x"), ClusterKey::parse(&a.to_file_text()).unwrap().derive("x"));
        assert_ne!(a.derive("x"), a.derive("y"));
        assert_ne!(a.derive("x"), b.derive("x"));
    }

    #[test]
    fn operator_and_worker_keys_share_the_cluster_and_the_authority() {
        let op = KeyFile::generate();
        let back = KeyFile::parse(&op.to_file_text()).unwrap();
        assert!(back.role == op.role && !back.shared);
        let worker = KeyFile::parse(&op.worker().unwrap().to_file_text()).unwrap();
        assert_eq!(worker.cluster.fingerprint(), op.cluster.fingerprint());
        assert_eq!(worker.cluster.derive("x"), op.cluster.derive("x"), "same derived secrets");
        assert_eq!(worker.authority(), op.authority());
        assert!(
            worker.operator_secret().is_none()
                && !worker.to_file_text().contains(&hex::encode(op.operator_secret().unwrap()))
        );
        assert!(worker.worker().is_err());
        // A key made before roles: every holder is an operator; no worker key from it.
        let old = KeyFile::parse(&op.cluster.to_file_text()).unwrap();
        assert!(old.shared && old.operator_secret().is_some());
        assert_eq!(old.authority(), KeyFile::parse(&op.cluster.to_file_text()).unwrap().authority());
        assert!(old.worker().unwrap_err().contains("predates"));
        assert!(KeyFile::parse(&format!("{}/shoal/authority/1/\nzz\n", op.cluster.to_file_text())).is_err());
        assert!(KeyFile::parse(&format!("{}/what/\n", op.cluster.to_file_text())).is_err());
    }

    #[test]
    fn cluster_key_round_trips_and_refuses_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        let key = ClusterKey::generate();
        write_secret(&path, key.to_file_text().as_bytes()).unwrap();
        let back = ClusterKey::load(&path).unwrap();
        assert_eq!(back.fingerprint(), key.fingerprint());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(ClusterKey::load(&path), Err(KeyError::TooOpen { .. })));
        fs::write(dir.path().join("bad.key"), "nope").unwrap();
        fs::set_permissions(dir.path().join("bad.key"), fs::Permissions::from_mode(0o600)).unwrap();
        let err = ClusterKey::load(&dir.path().join("bad.key")).unwrap_err();
        assert!(err.to_string().contains("shoal keygen"), "{err}");
    }
}
