//! The agent's side of the trust model (`shoal_scheduler::trust` has the rules): the
//! [`Trust`] a key file gives, the grant an operator peer publishes in its record, checking
//! other peers' grants, and revoking an operator peer.

use crate::error::NodeError;
use crate::node::Node;
use shoal_overlay::KeyFile;
use shoal_overlay::libp2p::PeerId;
use shoal_overlay::libp2p::identity::{Keypair, PublicKey};
use shoal_scheduler::{Authority, Hlc, Trust, Writer};
use std::collections::BTreeMap;
use tracing::info;

/// The record `ext` key under which an operator peer publishes its grant (hex).
pub(crate) const GRANT_KEY: &str = "operator";

/// What `keys` allows this peer (`None`: an open cluster).
pub(crate) fn trust_of(keys: Option<&KeyFile>, identity: &Keypair) -> Trust {
    let Some(keys) = keys else { return Trust::Open };
    let authority = Authority::from_public(&keys.authority()).expect("a loaded key file's authority is a valid key");
    let writer = keys.operator_secret().map(|op| {
        let ed = identity.clone().try_into_ed25519().expect("Shoal identities are Ed25519");
        let secret: [u8; 32] = ed.secret().as_ref().try_into().expect("an Ed25519 secret is 32 bytes");
        Writer::new(&secret, op)
    });
    Trust::Keyed { authority, writer }
}

/// The grant this peer publishes, if it is an operator.
pub(crate) fn grant_value(trust: &Trust) -> Option<serde_json::Value> {
    match trust {
        Trust::Keyed { writer: Some(w), .. } => Some(serde_json::Value::String(hex::encode(w.grant()))),
        _ => None,
    }
}

/// The Ed25519 key behind a peer id.
pub(crate) fn ed25519_of(peer: &PeerId) -> Option<[u8; 32]> {
    let key = PublicKey::try_decode_protobuf(peer.as_ref().digest()).ok()?;
    Some(key.try_into_ed25519().ok()?.to_bytes())
}

/// `peer`'s writer key, if its record (`ext`) carries a grant of this cluster's authority. In
/// an open cluster every peer may write (its key, if it has one, is given).
pub(crate) fn operator_key(
    trust: &Trust,
    peer: &PeerId,
    ext: &BTreeMap<String, serde_json::Value>,
) -> Option<[u8; 32]> {
    let key = ed25519_of(peer)?;
    match trust {
        Trust::Open => Some(key),
        Trust::Keyed { authority, .. } => {
            let grant = ext.get(GRANT_KEY).and_then(|v| v.as_str()).and_then(|h| hex::decode(h).ok())?;
            authority.grant_ok(&key, &grant).then_some(key)
        }
    }
}

impl Node {
    /// Whether `peer`, as this peer knows it, is an operator: its record carries a valid grant
    /// and its key is not revoked.
    pub(crate) async fn peer_is_operator(&self, peer: &PeerId) -> bool {
        if matches!(self.trust(), Trust::Open) {
            return true;
        }
        let members = self.overlay().members().await.unwrap_or_default();
        let Some(key) = members.iter().find(|m| m.peer == *peer).and_then(|m| operator_key(self.trust(), peer, &m.ext))
        else {
            return false;
        };
        !self.services().is_revoked(key).await.unwrap_or(true)
    }

    /// Retires the operator grant of `peer` (id or name) from now on: its desired-state writes
    /// from now are void on every peer. Only an operator peer can sign the revocation.
    pub async fn revoke(&self, peer: &str) -> Result<(), NodeError> {
        let Some(op) = self.keys().and_then(KeyFile::operator_secret) else {
            return Err(NodeError::Services(shoal_services::ServiceError::NotOperator));
        };
        // A peer id works even for a peer this one has forgotten (a machine long retired).
        let (id, name) = match self.peer(peer).await {
            Ok(info) => (info.id.parse::<PeerId>().map_err(|_| NodeError::NoPeer(peer.to_string()))?, info.name),
            Err(e) => (peer.parse::<PeerId>().map_err(|_| e)?, String::new()),
        };
        let key = ed25519_of(&id).ok_or_else(|| NodeError::NoPeer(peer.to_string()))?;
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let at = Hlc::new(now, 0, self.overlay().peer_id().to_string());
        self.services().revoke(shoal_scheduler::trust::revoke(op, key, at)).await?;
        info!(peer = %id, name, "revoked the peer's operator grant");
        Ok(())
    }
}

/// Image tags sealed by this cluster's operators (see `shoal_blobs::TagSeals`). A seal is the
/// hex of postcard `(made_ms, Seal)`.
#[derive(Debug)]
pub(crate) struct OperatorTags(pub(crate) Trust);

impl shoal_blobs::TagSeals for OperatorTags {
    fn seal(&self, reference: &str, manifest_digest: &str) -> Option<String> {
        let Trust::Keyed { writer: Some(w), .. } = &self.0 else { return None };
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let seal = w.seal_tag(reference, manifest_digest, now);
        postcard::to_stdvec(&(now, seal)).ok().map(hex::encode)
    }

    fn check(&self, reference: &str, manifest_digest: &str, seal: &str) -> Option<u64> {
        let Trust::Keyed { authority, .. } = &self.0 else { return None };
        let bytes = hex::decode(seal).ok().filter(|b| b.len() <= 1024)?;
        let (at, seal): (u64, shoal_scheduler::Seal) = postcard::from_bytes(&bytes).ok()?;
        authority.check_tag(reference, manifest_digest, at, &seal).ok().map(|_| at)
    }
}
