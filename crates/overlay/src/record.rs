//! Peer records: what each peer says about itself, signed, versioned and gossiped.
//!
//! A record carries a peer's name, addresses, labels, capacity and free resources, its version
//! of Shoal and whether it is leaving. Only its owner writes it: the body is signed with the
//! owner's ed25519 key, and a record is accepted only if the signature matches the peer id
//! inside it, so a peer can relay others' records but never forge or alter one.
//!
//! Records are ordered by `(generation, version)`: the generation grows each time the peer
//! restarts (or rejoins after being declared dead), the version each time the owner changes the
//! record within a run. The body is JSON, so later versions of Shoal can add fields (the `ext`
//! map is room for more per-peer state) and older ones ignore them. A signed record may be up to
//! [`MAX_RECORD_BYTES`], far above memberlist's 512-byte node metadata.
//!
//! Records spread two ways (see `event_loop`): pushed as foca custom broadcasts, piggybacked
//! on SWIM traffic ([`RecordHandler`]), and pulled by periodic anti-entropy (`CtlRequest::Sync`).

use crate::wire::DigestEntry;
use libp2p::identity::{Keypair, PublicKey};
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use shoal_types::{Labels, Resources};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Largest signed record a peer may publish or accept.
pub const MAX_RECORD_BYTES: usize = 16 * 1024;
/// Most addresses a record (or SWIM identity) carries.
pub const MAX_ADDRS: usize = 16;
const SIGNING_CONTEXT: &[u8] = b"shoal/record/v1\0";

/// What a peer says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerRecord {
    pub peer: PeerId,
    pub generation: u64,
    pub version: u64,
    pub name: String,
    pub addrs: Vec<Multiaddr>,
    #[serde(default)]
    pub labels: Labels,
    pub capacity: Resources,
    pub free: Resources,
    pub agent_version: String,
    /// The peer announced a graceful shutdown of this generation.
    #[serde(default)]
    pub leaving: bool,
    /// Room for later per-peer state (workloads, stored content ...).
    #[serde(default)]
    pub ext: BTreeMap<String, serde_json::Value>,
}

impl PeerRecord {
    /// The ordering key: newer records win.
    pub fn order(&self) -> (u64, u64) {
        (self.generation, self.version)
    }
}

/// Why a record was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Larger than [`MAX_RECORD_BYTES`]
    #[error("record of {len} bytes exceeds the {MAX_RECORD_BYTES}-byte limit")]
    TooLarge { len: usize },
    /// The envelope or body did not decode
    #[error("malformed record: {reason}")]
    Malformed { reason: String },
    /// The peer id does not embed a usable public key
    #[error("peer id {peer} does not embed an ed25519 public key")]
    NoPublicKey { peer: PeerId },
    /// The signature does not verify
    #[error("record for {peer} has a bad signature")]
    BadSignature { peer: PeerId },
    /// The record breaks a content rule (too many addresses, labels ...)
    #[error("record for {peer} is invalid: {reason}")]
    Invalid { peer: PeerId, reason: String },
}

/// The signed form that travels: the exact body bytes and the owner's signature over them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRecord {
    pub body: Vec<u8>,
    pub signature: Vec<u8>,
}

/// A verified record together with its wire form (relayed unchanged).
#[derive(Debug, Clone, PartialEq)]
pub struct SignedRecord {
    pub record: PeerRecord,
    pub wire: WireRecord,
}

/// Extracts the public key a peer id embeds (ed25519 ids inline their key).
pub fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    PublicKey::try_decode_protobuf(mh.digest()).ok()
}

impl SignedRecord {
    /// Signs `record` with `key`, which must be the record's peer's key.
    pub fn sign(record: PeerRecord, key: &Keypair) -> Result<Self, RecordError> {
        debug_assert_eq!(record.peer, key.public().to_peer_id());
        let body = serde_json::to_vec(&record).map_err(|e| RecordError::Malformed { reason: e.to_string() })?;
        let mut msg = SIGNING_CONTEXT.to_vec();
        msg.extend_from_slice(&body);
        let signature = key.sign(&msg).map_err(|e| RecordError::Malformed { reason: e.to_string() })?;
        let signed = SignedRecord { record, wire: WireRecord { body, signature } };
        let len = signed.encoded_len();
        if len > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge { len });
        }
        Ok(signed)
    }

    /// Decodes the body without checking the signature (cheap: used to skip stale records
    /// before paying for verification). Call [`SignedRecord::verify`] before trusting it.
    pub fn decode_unverified(wire: WireRecord) -> Result<Self, RecordError> {
        let len = wire.body.len() + wire.signature.len();
        if len > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge { len });
        }
        let record: PeerRecord =
            serde_json::from_slice(&wire.body).map_err(|e| RecordError::Malformed { reason: e.to_string() })?;
        Ok(SignedRecord { record, wire })
    }

    /// Checks the signature and the content rules.
    pub fn verify(&self) -> Result<(), RecordError> {
        let peer = self.record.peer;
        let key = public_key_of(&peer).ok_or(RecordError::NoPublicKey { peer })?;
        let mut msg = SIGNING_CONTEXT.to_vec();
        msg.extend_from_slice(&self.wire.body);
        if !key.verify(&msg, &self.wire.signature) {
            return Err(RecordError::BadSignature { peer });
        }
        let invalid = |reason: &str| RecordError::Invalid { peer, reason: reason.to_string() };
        if self.record.addrs.len() > MAX_ADDRS {
            return Err(invalid("too many addresses"));
        }
        if self.record.name.len() > 253 {
            return Err(invalid("name too long"));
        }
        shoal_types::labels::validate_labels(&self.record.labels).map_err(|e| invalid(&e.to_string()))?;
        Ok(())
    }

    /// Decodes and verifies.
    pub fn from_wire(wire: WireRecord) -> Result<Self, RecordError> {
        let s = Self::decode_unverified(wire)?;
        s.verify()?;
        Ok(s)
    }

    /// The foca broadcast / postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(&self.wire).expect("a Vec<u8> pair always encodes")
    }

    fn encoded_len(&self) -> usize {
        self.wire.body.len() + self.wire.signature.len()
    }
}

/// The most records a peer holds. A cluster larger than this is out of Shoal's range; past it,
/// only records of peers that SWIM knows replace others (a flood of identities made with the
/// cluster key cannot crowd out the members).
pub const MAX_RECORDS: usize = 10_000;

/// What [`RecordBook::offer`] did with a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Newer than what we had: stored.
    Accepted,
    /// Same or older than what we hold (or than what we forgot).
    Stale,
    /// A new peer's record while the book is full.
    Full,
}

/// The latest record of every peer we know, shared between the foca broadcast handler and the
/// event loop (both run on the event loop's task; the mutex is never held across an await).
#[derive(Debug, Default)]
pub struct RecordBook {
    records: HashMap<PeerId, SignedRecord>,
    /// Records removed as no longer wanted, by (generation, version): an older or equal copy
    /// relayed back by a peer that still holds it is stale, so it cannot live forever.
    forgotten: HashMap<PeerId, (u64, u64)>,
    /// Peers SWIM counts as members (kept by the event loop): when the book is full, a
    /// member's record takes the place of a non-member's.
    members: std::collections::HashSet<PeerId>,
    /// Peers whose record changed since the event loop last looked.
    changed: Vec<PeerId>,
}

impl RecordBook {
    /// Stores `rec` if it is newer than the one held. `rec` must be verified.
    pub fn insert_verified(&mut self, rec: SignedRecord) -> Offer {
        let peer = rec.record.peer;
        if self.is_stale(&rec.record) {
            return Offer::Stale;
        }
        if !self.records.contains_key(&peer) && self.records.len() >= MAX_RECORDS {
            if !self.members.contains(&peer) {
                return Offer::Full;
            }
            let Some(evict) = self.records.keys().find(|p| !self.members.contains(*p)).copied() else {
                return Offer::Full;
            };
            self.forget(&evict);
        }
        self.records.insert(peer, rec);
        self.changed.push(peer);
        Offer::Accepted
    }

    /// Decodes, skips stale, verifies and stores a record from the wire.
    pub fn offer(&mut self, wire: WireRecord) -> Result<Offer, RecordError> {
        let rec = SignedRecord::decode_unverified(wire)?;
        if self.is_stale(&rec.record) {
            return Ok(Offer::Stale);
        }
        rec.verify()?;
        Ok(self.insert_verified(rec))
    }

    fn is_stale(&self, r: &PeerRecord) -> bool {
        self.records.get(&r.peer).is_some_and(|old| old.record.order() >= r.order())
            || self.forgotten.get(&r.peer).is_some_and(|&o| o >= r.order())
    }

    /// Removes `peer`'s record and refuses the same or older copies of it from now on (until
    /// [`RecordBook::welcome`]). The memory of forgotten records is bounded too: past
    /// [`MAX_RECORDS`] it starts afresh.
    pub fn forget(&mut self, peer: &PeerId) {
        if let Some(r) = self.records.remove(peer) {
            if self.forgotten.len() >= MAX_RECORDS {
                self.forgotten.clear();
            }
            self.forgotten.insert(*peer, r.record.order());
        }
    }

    /// `peer` is a member (again): any copy of its record may be taken, and when the book is
    /// full its record takes a non-member's place.
    pub fn welcome(&mut self, peer: &PeerId) {
        self.forgotten.remove(peer);
        self.members.insert(*peer);
    }

    /// `peer` is no longer a member.
    pub fn farewell(&mut self, peer: &PeerId) {
        self.members.remove(peer);
    }

    pub fn get(&self, peer: &PeerId) -> Option<&SignedRecord> {
        self.records.get(peer)
    }

    /// Every record held.
    pub fn records(&self) -> impl Iterator<Item = &SignedRecord> {
        self.records.values()
    }

    pub fn remove(&mut self, peer: &PeerId) {
        self.records.remove(peer);
    }

    /// Peers whose records are held.
    pub fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.records.keys()
    }

    /// Takes the list of peers whose records changed.
    pub fn take_changed(&mut self) -> Vec<PeerId> {
        std::mem::take(&mut self.changed)
    }

    /// "What I hold", for anti-entropy.
    pub fn digest(&self) -> Vec<DigestEntry> {
        self.records
            .values()
            .map(|r| DigestEntry { peer: r.record.peer, generation: r.record.generation, version: r.record.version })
            .collect()
    }

    /// Records newer than, or absent from, `digest`, up to `budget` bytes. Returns the records
    /// and whether some were left out.
    pub fn newer_than(&self, digest: &[DigestEntry], budget: usize) -> (Vec<WireRecord>, bool) {
        let theirs: HashMap<&PeerId, (u64, u64)> =
            digest.iter().map(|d| (&d.peer, (d.generation, d.version))).collect();
        let mut out = Vec::new();
        let mut used = 0;
        let mut more = false;
        for rec in self.records.values() {
            if theirs.get(&rec.record.peer).is_some_and(|&o| o >= rec.record.order()) {
                continue;
            }
            let len = rec.encoded_len() + 16;
            if used + len > budget {
                more = true;
                continue;
            }
            used += len;
            out.push(rec.wire.clone());
        }
        (out, more)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Shared handle to the record book.
pub type SharedBook = Arc<Mutex<RecordBook>>;

/// Locks the book; a poisoned lock (a panic elsewhere) still yields the data, which is only
/// ever mutated by whole-record inserts.
pub fn lock(book: &SharedBook) -> std::sync::MutexGuard<'_, RecordBook> {
    book.lock().unwrap_or_else(|p| p.into_inner())
}

/// Key foca uses to decide which broadcasts supersede which.
#[derive(Debug, Clone)]
pub struct RecordKey {
    peer: PeerId,
    order: (u64, u64),
}

impl foca::Invalidates for RecordKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.peer == other.peer && self.order >= other.order
    }
}

/// Foca's custom-broadcast handler for records: accepts (and re-disseminates) only records
/// that are valid and newer than what we hold.
pub struct RecordHandler {
    pub(crate) book: SharedBook,
    /// Decode or signature failures, counted for rate-limited logging by the event loop.
    pub(crate) rejected: Arc<std::sync::atomic::AtomicU64>,
}

impl<T> foca::BroadcastHandler<T> for RecordHandler {
    type Key = RecordKey;
    type Error = RecordError;

    fn receive_item(&mut self, data: &[u8], _sender: Option<&T>) -> Result<Option<RecordKey>, RecordError> {
        let wire: WireRecord =
            postcard::from_bytes(data).map_err(|e| RecordError::Malformed { reason: e.to_string() })?;
        let mut book = lock(&self.book);
        let rec = match SignedRecord::decode_unverified(wire) {
            Ok(r) => r,
            Err(e) => {
                self.rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(e);
            }
        };
        let key = RecordKey { peer: rec.record.peer, order: rec.record.order() };
        if book.is_stale(&rec.record) {
            return Ok(None);
        }
        if let Err(e) = rec.verify() {
            self.rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(e);
        }
        book.insert_verified(rec);
        Ok(Some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(key: &Keypair, generation: u64, version: u64) -> PeerRecord {
        PeerRecord {
            peer: key.public().to_peer_id(),
            generation,
            version,
            name: "edge-1".into(),
            addrs: vec!["/ip4/127.0.0.1/tcp/4100".parse().unwrap()],
            labels: [("zone".to_string(), "eu".to_string())].into(),
            capacity: Resources::new(2000, 1 << 30),
            free: Resources::new(1500, 1 << 29),
            agent_version: "0.1.0".into(),
            leaving: false,
            ext: Default::default(),
        }
    }

    #[test]
    fn signed_record_round_trips_and_verifies() {
        let key = Keypair::generate_ed25519();
        let s = SignedRecord::sign(record(&key, 1, 1), &key).unwrap();
        let back = SignedRecord::from_wire(s.wire.clone()).unwrap();
        assert_eq!(back.record, s.record);
    }

    #[test]
    fn tampered_or_forged_records_are_refused() {
        let key = Keypair::generate_ed25519();
        let mut s = SignedRecord::sign(record(&key, 1, 1), &key).unwrap();
        let body = String::from_utf8(s.wire.body.clone()).unwrap().replace("edge-1", "evil-1");
        s.wire.body = body.into_bytes();
        assert!(matches!(SignedRecord::from_wire(s.wire), Err(RecordError::BadSignature { .. })));

        // A record about peer A signed by peer B.
        let other = Keypair::generate_ed25519();
        let mut forged = record(&key, 1, 2);
        forged.name = "forged".into();
        let body = serde_json::to_vec(&forged).unwrap();
        let mut msg = SIGNING_CONTEXT.to_vec();
        msg.extend_from_slice(&body);
        let wire = WireRecord { signature: other.sign(&msg).unwrap(), body };
        assert!(matches!(SignedRecord::from_wire(wire), Err(RecordError::BadSignature { .. })));
    }

    #[test]
    fn book_keeps_only_newer_records() {
        let key = Keypair::generate_ed25519();
        let mut book = RecordBook::default();
        let v2 = SignedRecord::sign(record(&key, 1, 2), &key).unwrap();
        let v1 = SignedRecord::sign(record(&key, 1, 1), &key).unwrap();
        let g2 = SignedRecord::sign(record(&key, 2, 1), &key).unwrap();
        assert_eq!(book.offer(v2.wire.clone()).unwrap(), Offer::Accepted);
        assert_eq!(book.offer(v1.wire.clone()).unwrap(), Offer::Stale);
        assert_eq!(book.offer(v2.wire.clone()).unwrap(), Offer::Stale);
        assert_eq!(book.offer(g2.wire.clone()).unwrap(), Offer::Accepted);
        assert_eq!(book.get(&key.public().to_peer_id()).unwrap().record.generation, 2);
        assert_eq!(book.take_changed().len(), 2);
    }

    #[test]
    fn anti_entropy_sends_only_what_is_missing() {
        let a = Keypair::generate_ed25519();
        let b = Keypair::generate_ed25519();
        let mut book = RecordBook::default();
        book.offer(SignedRecord::sign(record(&a, 1, 3), &a).unwrap().wire).unwrap();
        book.offer(SignedRecord::sign(record(&b, 1, 1), &b).unwrap().wire).unwrap();
        let digest = vec![DigestEntry { peer: a.public().to_peer_id(), generation: 1, version: 3 }];
        let (recs, more) = book.newer_than(&digest, 1 << 20);
        assert_eq!(recs.len(), 1);
        assert!(!more);
        let (recs, more) = book.newer_than(&[], 10);
        assert!(recs.is_empty() && more);
    }

    #[test]
    fn oversized_records_are_refused() {
        let key = Keypair::generate_ed25519();
        let mut r = record(&key, 1, 1);
        r.ext.insert("big".into(), serde_json::Value::String("x".repeat(MAX_RECORD_BYTES)));
        assert!(matches!(SignedRecord::sign(r, &key), Err(RecordError::TooLarge { .. })));
    }

    #[test]
    fn the_book_is_bounded_and_forgotten_records_stay_out() {
        let mut book = RecordBook::default();
        let keys: Vec<Keypair> = (0..MAX_RECORDS + 1).map(|_| Keypair::generate_ed25519()).collect();
        for k in &keys[..MAX_RECORDS] {
            let rec = SignedRecord::sign(record(k, 1, 1), k).unwrap();
            assert_eq!(book.insert_verified(rec), Offer::Accepted);
        }
        let last = &keys[MAX_RECORDS];
        assert_eq!(book.offer(SignedRecord::sign(record(last, 1, 1), last).unwrap().wire).unwrap(), Offer::Full);
        let first = &keys[0];
        let peer = first.public().to_peer_id();
        assert_eq!(
            book.offer(SignedRecord::sign(record(first, 1, 2), first).unwrap().wire).unwrap(),
            Offer::Accepted,
            "a held peer's newer record still replaces its old one"
        );
        book.forget(&peer);
        assert!(book.get(&peer).is_none());
        let again = SignedRecord::sign(record(first, 1, 2), first).unwrap().wire;
        assert_eq!(book.offer(again.clone()).unwrap(), Offer::Stale, "relayed back");
        assert_eq!(book.offer(SignedRecord::sign(record(last, 1, 1), last).unwrap().wire).unwrap(), Offer::Accepted);
        book.welcome(&peer);
        book.forget(&last.public().to_peer_id());
        assert_eq!(book.offer(again).unwrap(), Offer::Accepted, "a member again");
        // Full again: a member's record takes a non-member's place; a stranger's does not.
        let (member, stranger) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        assert_eq!(book.len(), MAX_RECORDS);
        let signed = |k: &Keypair| SignedRecord::sign(record(k, 1, 1), k).unwrap().wire;
        assert_eq!(book.offer(signed(&stranger)).unwrap(), Offer::Full);
        book.welcome(&member.public().to_peer_id());
        assert_eq!(book.offer(signed(&member)).unwrap(), Offer::Accepted);
        assert_eq!(book.len(), MAX_RECORDS);
        assert!(book.get(&peer).is_some(), "members are never evicted");
    }
}
