//! Who may change desired state, with no leader to ask.
//!
//! A keyed cluster has one **authority**: the Ed25519 key pair in the operator key file
//! (`shoal keygen`). Its public half is in every key file, operator and worker alike; its
//! secret half only in the operator's. A peer started with the operator key issues itself a
//! [`grant`](Writer::new): the authority's signature of the peer's own identity key. Every entry
//! of desired state it writes carries a [`Seal`]: the writer's public key, its grant and the
//! writer's signature of the entry (name, version, spec). Every peer checks the seal against
//! the authority before it merges an entry ([`Authority::check_entry`]), so a peer that holds
//! only a worker key (the membership secret and the authority's public half) can run work but
//! can neither write nor forge desired state, and every entry names the peer that wrote it.
//!
//! A [`Revocation`], signed by the authority, retires one writer: every entry it sealed is
//! void everywhere, whatever its stamp (a writer picks its own stamps, so a bound by version
//! could be dodged by backdating; see [`crate::ServiceMap::purge_revoked`]). The operator peer
//! that revokes re-seals, at their versions, the entries of that writer it holds, so the
//! desired state it saw stays. It is for a peer that was an operator and is no
//! longer one (its operator key file replaced by a worker key, or the machine retired): the
//! grant it may have kept is then worthless. A leaked operator key is not revocable this way
//! (its holder can grant itself again): that takes a new cluster key.
//!
//! All signatures cover BLAKE3 digests with their own derivation context, so a signature of
//! one kind can never be replayed as another.

use crate::crdt::Entry;
use crate::hlc::Hlc;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use shoal_types::ServiceSpec;

/// An Ed25519 public key.
pub type PublicKey = [u8; 32];

/// The writer's signature on an entry of desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// The writer's public key (its peer identity key).
    pub writer: PublicKey,
    /// The authority's signature of the writer's grant (64 bytes).
    pub grant: Vec<u8>,
    /// The writer's signature of the entry (64 bytes).
    pub sig: Vec<u8>,
}

/// The authority's word that `writer` may no longer write: all its entries are void. `at` is
/// when it was made (of two revocations of one writer, the earlier is kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The retired writer.
    pub writer: PublicKey,
    /// When the revocation was made.
    pub at: Hlc,
    /// The authority's signature (64 bytes).
    pub sig: Vec<u8>,
}

/// Why an entry or a revocation is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// The entry carries no seal
    #[error("the entry is not signed; only a peer with the operator key may write desired state")]
    Unsigned,
    /// The grant is not the authority's
    #[error("the writer's grant is not signed by this cluster's operator key")]
    BadGrant,
    /// The writer's signature does not match the entry
    #[error("the entry's signature does not match its content")]
    BadSignature,
    /// The writer has been revoked
    #[error("the writer's operator grant was revoked")]
    Revoked,
    /// A key is not a valid Ed25519 point
    #[error("not a valid public key")]
    BadKey,
}

fn digest(context: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(context);
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    *h.finalize().as_bytes()
}

fn grant_digest(writer: &PublicKey) -> [u8; 32] {
    digest("shoal 2026 operator grant v1", &[writer])
}

fn entry_digest(name: &str, version: &Hlc, spec: Option<&ServiceSpec>) -> [u8; 32] {
    let v = postcard::to_stdvec(version).expect("an Hlc always serialises");
    let s = postcard::to_stdvec(&spec).expect("a ServiceSpec always serialises");
    // The rollback image is not in the spec's encoding (format 4 peers' entries verify as they
    // were signed); when there is one, the seal covers it too.
    match spec.and_then(|s| s.rollback_image.as_deref()) {
        None => digest("shoal 2026 desired-state entry v1", &[name.as_bytes(), &v, &s]),
        Some(r) => digest("shoal 2026 desired-state entry v1", &[name.as_bytes(), &v, &s, r.as_bytes()]),
    }
}

fn tag_digest(reference: &str, manifest: &str, at_ms: u64) -> [u8; 32] {
    digest("shoal 2026 image tag v1", &[reference.as_bytes(), manifest.as_bytes(), &at_ms.to_le_bytes()])
}

fn revocation_digest(writer: &PublicKey, at: &Hlc) -> [u8; 32] {
    let v = postcard::to_stdvec(at).expect("an Hlc always serialises");
    digest("shoal 2026 operator revocation v1", &[writer, &v])
}

fn verify(key: &VerifyingKey, msg: &[u8; 32], sig: &[u8]) -> bool {
    let Ok(bytes) = <[u8; 64]>::try_from(sig) else { return false };
    key.verify_strict(msg, &Signature::from_bytes(&bytes)).is_ok()
}

/// The public half of the cluster's operator key: what every peer checks writes against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority(VerifyingKey);

impl Authority {
    /// The authority whose public key is `key`.
    pub fn from_public(key: &PublicKey) -> Result<Self, TrustError> {
        VerifyingKey::from_bytes(key).map(Authority).map_err(|_| TrustError::BadKey)
    }

    /// The authority of an operator key's secret half.
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        Authority(SigningKey::from_bytes(secret).verifying_key())
    }

    /// Its public key.
    pub fn public(&self) -> PublicKey {
        self.0.to_bytes()
    }

    /// Whether `grant` is this authority's grant to `writer`.
    pub fn grant_ok(&self, writer: &PublicKey, grant: &[u8]) -> bool {
        verify(&self.0, &grant_digest(writer), grant)
    }

    /// Checks `entry` of service `name`: sealed by a writer this authority granted, and the
    /// writer's signature covers exactly this name, version and spec. Returns the writer.
    pub fn check_entry(&self, name: &str, entry: &Entry) -> Result<PublicKey, TrustError> {
        let seal = entry.seal.as_ref().ok_or(TrustError::Unsigned)?;
        if !self.grant_ok(&seal.writer, &seal.grant) {
            return Err(TrustError::BadGrant);
        }
        let writer = VerifyingKey::from_bytes(&seal.writer).map_err(|_| TrustError::BadKey)?;
        if !verify(&writer, &entry_digest(name, &entry.version, entry.spec.as_ref()), &seal.sig) {
            return Err(TrustError::BadSignature);
        }
        Ok(seal.writer)
    }

    /// Checks a writer's seal on "image `reference` is manifest `manifest`, as of `at_ms`".
    pub fn check_tag(&self, reference: &str, manifest: &str, at_ms: u64, seal: &Seal) -> Result<PublicKey, TrustError> {
        if !self.grant_ok(&seal.writer, &seal.grant) {
            return Err(TrustError::BadGrant);
        }
        let writer = VerifyingKey::from_bytes(&seal.writer).map_err(|_| TrustError::BadKey)?;
        if !verify(&writer, &tag_digest(reference, manifest, at_ms), &seal.sig) {
            return Err(TrustError::BadSignature);
        }
        Ok(seal.writer)
    }

    /// Whether `r` is signed by this authority.
    pub fn check_revocation(&self, r: &Revocation) -> bool {
        verify(&self.0, &revocation_digest(&r.writer, &r.at), &r.sig)
    }
}

/// An operator peer's means to write: its identity key and the grant it issued itself.
#[derive(Clone)]
pub struct Writer {
    key: SigningKey,
    grant: Vec<u8>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Writer({})", hex(&self.public()))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Writer {
    /// The writer whose identity secret is `identity`, granted by the authority `operator`.
    pub fn new(identity: &[u8; 32], operator: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(identity);
        let grant = SigningKey::from_bytes(operator).sign(&grant_digest(&key.verifying_key().to_bytes())).to_bytes();
        Writer { key, grant: grant.to_vec() }
    }

    /// Its public key.
    pub fn public(&self) -> PublicKey {
        self.key.verifying_key().to_bytes()
    }

    /// Its grant (the authority's signature of its public key).
    pub fn grant(&self) -> &[u8] {
        &self.grant
    }

    /// Seals "image `reference` is manifest `manifest`, as of `at_ms`".
    pub fn seal_tag(&self, reference: &str, manifest: &str, at_ms: u64) -> Seal {
        let sig = self.key.sign(&tag_digest(reference, manifest, at_ms)).to_bytes().to_vec();
        Seal { writer: self.public(), grant: self.grant.clone(), sig }
    }

    /// Seals the entry `version`/`spec` of service `name`.
    pub fn seal(&self, name: &str, version: &Hlc, spec: Option<&ServiceSpec>) -> Seal {
        let sig = self.key.sign(&entry_digest(name, version, spec)).to_bytes().to_vec();
        Seal { writer: self.public(), grant: self.grant.clone(), sig }
    }
}

/// The authority `operator` revokes `writer` from version `at` on.
pub fn revoke(operator: &[u8; 32], writer: PublicKey, at: Hlc) -> Revocation {
    let sig = SigningKey::from_bytes(operator).sign(&revocation_digest(&writer, &at)).to_bytes().to_vec();
    Revocation { writer, at, sig }
}

/// How a peer treats desired state.
#[derive(Debug, Clone, Default)]
#[allow(clippy::large_enum_variant)] // one per peer, cloned once at start
pub enum Trust {
    /// An open cluster (`--insecure`): nothing is signed or checked.
    #[default]
    Open,
    /// A keyed cluster: entries must be sealed by a writer the authority granted.
    Keyed {
        /// The cluster's authority.
        authority: Authority,
        /// This peer's writer, if it holds the operator key; `None` on a worker.
        writer: Option<Writer>,
    },
}

impl Trust {
    /// Whether this peer may write desired state.
    pub fn can_write(&self) -> bool {
        !matches!(self, Trust::Keyed { writer: None, .. })
    }

    /// This peer's writer key, if it holds the operator key.
    pub fn writer_key(&self) -> Option<PublicKey> {
        match self {
            Trust::Keyed { writer: Some(w), .. } => Some(w.public()),
            _ => None,
        }
    }

    /// The seal for a local edit (`None` in an open cluster). Call only when [`Trust::can_write`].
    pub fn seal(&self, name: &str, version: &Hlc, spec: Option<&ServiceSpec>) -> Option<Seal> {
        match self {
            Trust::Keyed { writer: Some(w), .. } => Some(w.seal(name, version, spec)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(image: &str) -> ServiceSpec {
        ServiceSpec { name: "web".into(), image: image.into(), replicas: 2, ..Default::default() }
    }

    #[test]
    fn a_granted_writers_entry_verifies_and_any_change_breaks_it() {
        let (op, id) = ([7u8; 32], [9u8; 32]);
        let auth = Authority::from_secret(&op);
        let w = Writer::new(&id, &op);
        let v = Hlc::new(10, 0, "a");
        let s = spec("app:1");
        let entry = Entry { version: v.clone(), spec: Some(s.clone()), seal: Some(w.seal("web", &v, Some(&s))) };
        assert_eq!(auth.check_entry("web", &entry), Ok(w.public()));
        assert_eq!(auth.check_entry("db", &entry), Err(TrustError::BadSignature), "another name");
        let mut other = entry.clone();
        other.spec = Some(spec("evil:1"));
        assert_eq!(auth.check_entry("web", &other), Err(TrustError::BadSignature), "another spec");
        let mut later = entry.clone();
        later.version = Hlc::new(11, 0, "a");
        assert_eq!(auth.check_entry("web", &later), Err(TrustError::BadSignature), "another version");
        let mut tomb = entry.clone();
        tomb.spec = None;
        assert_eq!(auth.check_entry("web", &tomb), Err(TrustError::BadSignature), "a tombstone");
        let unsigned = Entry { seal: None, ..entry.clone() };
        assert_eq!(auth.check_entry("web", &unsigned), Err(TrustError::Unsigned));
    }

    #[test]
    fn a_writer_granted_by_another_authority_is_refused() {
        let auth = Authority::from_secret(&[1; 32]);
        let stranger = Writer::new(&[2; 32], &[3; 32]);
        let v = Hlc::new(1, 0, "x");
        let entry = Entry { version: v.clone(), spec: None, seal: Some(stranger.seal("web", &v, None)) };
        assert_eq!(auth.check_entry("web", &entry), Err(TrustError::BadGrant));
        // A writer that grants itself with its own key is no better.
        let selfish = Writer::new(&[2; 32], &[2; 32]);
        let entry = Entry { version: v.clone(), spec: None, seal: Some(selfish.seal("web", &v, None)) };
        assert_eq!(auth.check_entry("web", &entry), Err(TrustError::BadGrant));
    }

    #[test]
    fn a_tag_seal_binds_reference_manifest_and_time() {
        let auth = Authority::from_secret(&[1; 32]);
        let w = Writer::new(&[2; 32], &[1; 32]);
        let seal = w.seal_tag("app:v1", "sha256:aa", 5);
        assert_eq!(auth.check_tag("app:v1", "sha256:aa", 5, &seal), Ok(w.public()));
        assert!(auth.check_tag("app:v1", "sha256:bb", 5, &seal).is_err(), "another manifest");
        assert!(auth.check_tag("app:v2", "sha256:aa", 5, &seal).is_err(), "another tag");
        assert!(auth.check_tag("app:v1", "sha256:aa", 6, &seal).is_err(), "another time");
        let rogue = Writer::new(&[3; 32], &[3; 32]).seal_tag("app:v1", "sha256:bb", 9);
        assert_eq!(auth.check_tag("app:v1", "sha256:bb", 9, &rogue), Err(TrustError::BadGrant));
    }

    #[test]
    fn revocations_verify_only_under_the_authority() {
        let auth = Authority::from_secret(&[1; 32]);
        let r = revoke(&[1; 32], [5; 32], Hlc::new(3, 0, "a"));
        assert!(auth.check_revocation(&r));
        assert!(!auth.check_revocation(&Revocation { writer: [6; 32], ..r.clone() }));
        assert!(!auth.check_revocation(&revoke(&[2; 32], [5; 32], Hlc::new(3, 0, "a"))));
    }

    #[test]
    fn workers_cannot_write_and_open_clusters_do_not_sign() {
        let auth = Authority::from_secret(&[1; 32]);
        assert!(!Trust::Keyed { authority: auth.clone(), writer: None }.can_write());
        assert!(Trust::Open.can_write());
        assert_eq!(Trust::Open.seal("web", &Hlc::new(1, 0, "a"), None), None);
        let t = Trust::Keyed { authority: auth, writer: Some(Writer::new(&[4; 32], &[1; 32])) };
        assert!(t.can_write() && t.seal("web", &Hlc::new(1, 0, "a"), None).is_some());
    }
}
