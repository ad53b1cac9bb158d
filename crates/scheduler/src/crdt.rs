//! The replicated desired state: which services exist and how each is declared.
//!
//! [`ServiceMap`] is a state-based CRDT, a map from service name to a last-writer-wins register
//! ([`Entry`]) versioned by a hybrid logical clock ([`Hlc`]). Creating or updating a service is a
//! [`ServiceMap::put`], deleting it a [`ServiceMap::remove`], which leaves a tombstone (an entry
//! without a spec) so that an older put arriving later cannot bring the service back. Peers
//! exchange whole maps (or compare [`ServiceMap::digest`]s first and exchange only when they
//! differ) and [`ServiceMap::merge`] them: per name, the entry with the higher version wins.
//!
//! Because the winner of a name is the maximum of a total order over entries, merge is a join
//! of a semilattice: commutative, associative and idempotent, so every peer that has received
//! the same set of edits holds the same map, whatever the order and number of deliveries. The
//! crate's `tests/crdt.rs` checks this with property tests and `DESIGN.md` argues it.
//!
//! Ties: two different entries with the same version can only come from a buggy or malicious
//! node (a node never issues the same stamp twice), but merge must still be order-independent,
//! so at equal versions a tombstone beats a spec and of two specs the one with the greater
//! canonical (postcard) encoding wins.
//!
//! Each entry may carry the [`Seal`] of the operator peer that wrote it, and the map carries the
//! authority's [`Revocation`]s (a grow-only set, merged by union): see [`crate::trust`]. The map
//! itself merges whatever it is given; checking seals is the caller's job before it merges.
//!
//! On the wire a map is one format byte followed by the postcard encoding of the entries and of
//! the revocations, then (format 5) each service's `rollback_image` (not part of the spec's own
//! encoding, so a spec written by a format-4 peer encodes, and verifies, as it did);
//! [`ServiceMap::decode`] refuses input over a caller-given size before parsing it, and refuses
//! entries whose key differs from the name in their spec. Formats 4 (before rollback images)
//! and 3 (before seals) are still read.

use crate::hlc::Hlc;
use crate::trust::{PublicKey, Revocation, Seal};
use serde::{Deserialize, Serialize, Serializer};
use shoal_types::ServiceSpec;
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// The format byte that starts [`ServiceMap::encode`]'s output.
pub const WIRE_FORMAT: u8 = 5;
/// The format before rollback images.
const WIRE_FORMAT_NO_ROLLBACK: u8 = 4;
/// The format before entries were sealed (still read, as entries without seals).
pub const WIRE_FORMAT_UNSEALED: u8 = 3;
/// The most revocations a map carries (only the authority can make them).
pub const MAX_REVOCATIONS: usize = 1024;

/// One service name's register: the latest version and the spec it set, or `None` once removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The clock of the edit that wrote this entry.
    pub version: Hlc,
    /// The declared service, or `None` for a tombstone left by a remove.
    pub spec: Option<ServiceSpec>,
    /// The writer's seal (`None` in an open cluster).
    pub seal: Option<Seal>,
}

/// An entry of format 3.
#[derive(Deserialize)]
struct UnsealedEntry {
    version: Hlc,
    spec: Option<ServiceSpec>,
}

impl Entry {
    /// The order in which entries for the same name win: by version, then (only for the ties
    /// a correct node never produces) a tombstone over a spec, then by canonical encoding.
    fn precedence(&self, other: &Entry) -> Ordering {
        self.version.cmp(&other.version).then_with(|| match (&self.spec, &other.spec) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(a), Some(b)) if a == b => Ordering::Equal,
            (Some(a), Some(b)) => {
                encode_spec(a).cmp(&encode_spec(b)).then_with(|| a.rollback_image.cmp(&b.rollback_image))
            }
        })
    }
}

/// Why bytes from a peer are not a service map.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The service map is larger than allowed; the sender has too many services or is misbehaving
    #[error("the service map is {len} bytes, more than the {max} allowed")]
    TooLarge { len: usize, max: usize },
    /// The service map is empty: not even the format byte arrived
    #[error("the service map is empty: not even the format byte arrived")]
    Empty,
    /// The service map is in a format this node does not know; upgrade this node
    #[error("the service map is in format {format}, this node knows only format {WIRE_FORMAT}: upgrade this node")]
    UnknownFormat { format: u8 },
    /// The service map is malformed
    #[error("the service map is malformed: {source}")]
    Malformed {
        #[source]
        source: postcard::Error,
    },
    /// The service map is followed by extra bytes
    #[error("the service map is followed by {extra} unexpected bytes")]
    TrailingBytes { extra: usize },
    /// An entry's key differs from the name inside its spec
    #[error("the service map has an entry `{key}` whose spec is named `{name}`")]
    NameMismatch { key: String, name: String },
    /// More revocations than any cluster makes
    #[error("the service map carries {count} revocations, more than the {MAX_REVOCATIONS} allowed")]
    TooManyRevocations { count: usize },
    /// A rollback image for a name the map has no live service under
    #[error("the service map names a rollback image for `{name}`, which it has no service under")]
    RollbackWithoutService { name: String },
    /// Rollback images out of order, twice for a name, empty, or an empty list
    #[error("the service map's rollback images are not in canonical form")]
    RollbackNotCanonical,
}

/// The replicated map of declared services (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "BTreeMap<String, Entry>")]
pub struct ServiceMap {
    entries: BTreeMap<String, Entry>,
    #[serde(skip)]
    revoked: BTreeMap<PublicKey, Revocation>,
}

impl Serialize for ServiceMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.entries.serialize(s)
    }
}

impl TryFrom<BTreeMap<String, Entry>> for ServiceMap {
    type Error = DecodeError;

    fn try_from(entries: BTreeMap<String, Entry>) -> Result<Self, Self::Error> {
        for (key, entry) in &entries {
            if let Some(spec) = &entry.spec
                && spec.name != *key
            {
                return Err(DecodeError::NameMismatch { key: key.clone(), name: spec.name.clone() });
            }
        }
        Ok(ServiceMap { entries, revoked: BTreeMap::new() })
    }
}

impl ServiceMap {
    /// A map with no services and no tombstones.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares (creates or updates) `spec` under its name at version `hlc`. Returns whether the
    /// map changed: an edit older than the current entry for the name loses and changes nothing.
    pub fn put(&mut self, spec: ServiceSpec, hlc: Hlc) -> bool {
        let name = spec.name.clone();
        self.apply(name, Entry { version: hlc, spec: Some(spec), seal: None })
    }

    /// Removes the service `name` at version `hlc`, leaving a tombstone (even if the name is
    /// unknown here, so that a concurrent older put elsewhere loses once the maps merge).
    /// Returns whether the map changed.
    pub fn remove(&mut self, name: &str, hlc: Hlc) -> bool {
        self.apply(name.to_string(), Entry { version: hlc, spec: None, seal: None })
    }

    /// Writes a whole entry (a sealed local edit) under `name`; like [`ServiceMap::put`], an
    /// entry that does not beat the current one changes nothing. Returns whether the map changed.
    pub fn insert_entry(&mut self, name: &str, entry: Entry) -> bool {
        self.apply(name.to_string(), entry)
    }

    /// Adds a revocation (one per writer; of two, the earlier wins) and drops the entries it
    /// invalidates. Returns whether the map changed. The caller checks its signature.
    pub fn revoke(&mut self, r: Revocation) -> bool {
        let newer = match self.revoked.get(&r.writer) {
            Some(old) => r.at < old.at,
            None => self.revoked.len() < MAX_REVOCATIONS,
        };
        if newer {
            self.revoked.insert(r.writer, r);
        }
        self.purge_revoked() > 0 || newer
    }

    /// Gives every entry without a seal the seal `seal` makes for it (an operator adopting a
    /// map saved before entries were sealed); returns how many it sealed.
    pub fn seal_unsealed(&mut self, seal: impl Fn(&str, &Entry) -> Option<Seal>) -> usize {
        let mut n = 0;
        for (name, e) in self.entries.iter_mut().filter(|(_, e)| e.seal.is_none()) {
            e.seal = seal(name, e);
            n += usize::from(e.seal.is_some());
        }
        n
    }

    /// The revocations held.
    pub fn revocations(&self) -> impl Iterator<Item = &Revocation> {
        self.revoked.values()
    }

    /// Whether `writer` has been revoked.
    pub fn is_writer_revoked(&self, writer: &PublicKey) -> bool {
        self.revoked.contains_key(writer)
    }

    /// Whether `entry` was written by a revoked writer. Every entry of a revoked writer is
    /// void, whatever its version: a writer picks its own stamps, so a bound by version could
    /// be dodged by backdating. The operator that revokes re-seals the entries it wants kept.
    pub fn is_revoked(&self, entry: &Entry) -> bool {
        entry.seal.as_ref().is_some_and(|s| self.revoked.contains_key(&s.writer))
    }

    /// Drops every entry a revocation invalidates; returns how many. Peers that still hold an
    /// older, valid entry for the name give it back at the next merge.
    pub fn purge_revoked(&mut self) -> usize {
        let before = self.entries.len();
        let revoked = std::mem::take(&mut self.revoked);
        let probe = ServiceMap { entries: BTreeMap::new(), revoked };
        self.entries.retain(|_, e| !probe.is_revoked(e));
        self.revoked = probe.revoked;
        before - self.entries.len()
    }

    /// Merges `other` into this map: per name the winning entry is kept. Returns whether this map
    /// changed.
    pub fn merge(&mut self, other: &ServiceMap) -> bool {
        let mut changed = false;
        for r in other.revoked.values() {
            changed |= self.revoke(r.clone());
        }
        for (name, entry) in &other.entries {
            if self.is_revoked(entry) {
                continue;
            }
            match self.entries.get_mut(name) {
                Some(mine) => {
                    if entry.precedence(mine) == Ordering::Greater {
                        *mine = entry.clone();
                        changed = true;
                    }
                }
                None => {
                    self.entries.insert(name.clone(), entry.clone());
                    changed = true;
                }
            }
        }
        changed
    }

    fn apply(&mut self, name: String, entry: Entry) -> bool {
        match self.entries.get_mut(&name) {
            Some(mine) if entry.precedence(mine) != Ordering::Greater => false,
            Some(mine) => {
                *mine = entry;
                true
            }
            None => {
                self.entries.insert(name, entry);
                true
            }
        }
    }

    /// The declared (not removed) services, by name, with their versions.
    pub fn live(&self) -> impl Iterator<Item = (&str, &ServiceSpec, &Hlc)> {
        self.entries.iter().filter_map(|(name, e)| e.spec.as_ref().map(|spec| (name.as_str(), spec, &e.version)))
    }

    /// Every entry, tombstones included, by name.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(name, e)| (name.as_str(), e))
    }

    /// The spec of `name`, unless it was never declared or has been removed.
    pub fn get(&self, name: &str) -> Option<&ServiceSpec> {
        self.entries.get(name).and_then(|e| e.spec.as_ref())
    }

    /// The entry of `name`, tombstone or not.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// Number of entries, tombstones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map has no entries at all (not even tombstones).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The greatest version in the map; feed it to [`crate::Clock::observe`] after a merge so
    /// that the next local edit is newer than everything seen.
    pub fn max_version(&self) -> Option<&Hlc> {
        self.entries.values().map(|e| &e.version).max()
    }

    /// A BLAKE3 hash of the map's canonical encoding: equal exactly when the maps are equal (up
    /// to hash collisions), so peers can compare digests before exchanging whole maps.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("shoal-scheduler 2025 service map digest v1");
        h.update(&(self.entries.len() as u64).to_le_bytes());
        for (name, entry) in &self.entries {
            hash_str(&mut h, name);
            h.update(&entry.version.millis.to_le_bytes());
            h.update(&entry.version.counter.to_le_bytes());
            hash_str(&mut h, &entry.version.node);
            match &entry.spec {
                None => {
                    h.update(&[0]);
                }
                Some(spec) => {
                    h.update(&[1]);
                    // postcard's encoding of one type is self-delimiting, so no length prefix.
                    postcard::to_io(spec, &mut h).expect("a ServiceSpec always serialises and a hasher never fails");
                    // Only when set: a map without rollback images digests as format 4 did.
                    if let Some(r) = &spec.rollback_image {
                        hash_str(&mut h, r);
                    }
                }
            }
        }
        h.update(&(self.revoked.len() as u64).to_le_bytes());
        for r in self.revoked.values() {
            h.update(&r.writer);
            h.update(&r.at.millis.to_le_bytes());
            h.update(&r.at.counter.to_le_bytes());
            hash_str(&mut h, &r.at.node);
        }
        *h.finalize().as_bytes()
    }

    /// Drops tombstones whose version is older than `older_than_millis` and returns how many.
    ///
    /// This trades safety for space: a put older than a dropped tombstone that arrives later
    /// (from a peer that was partitioned for longer than the horizon) resurrects the service.
    /// Pick a horizon longer than any partition the cluster should heal from; every peer must
    /// use a similar one or the maps stop converging until the stale put is removed again.
    pub fn gc_tombstones(&mut self, older_than_millis: u64) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.spec.is_some() || e.version.millis >= older_than_millis);
        before - self.entries.len()
    }

    /// The wire form: [`WIRE_FORMAT`] followed by the postcard encoding of the entries, the
    /// revocations and the rollback images; a map without rollback images is written in format
    /// 4 (the same bytes without the last part), which peers of the version before read too.
    pub fn encode(&self) -> Vec<u8> {
        let rollbacks: Vec<(&str, &str)> = self
            .entries
            .iter()
            .filter_map(|(name, e)| Some((name.as_str(), e.spec.as_ref()?.rollback_image.as_deref()?)))
            .collect();
        let format = if rollbacks.is_empty() { WIRE_FORMAT_NO_ROLLBACK } else { WIRE_FORMAT };
        let mut out = vec![format];
        postcard::to_io(&self.entries, &mut out).expect("a ServiceMap always serialises and a Vec never fails");
        let revoked: Vec<&Revocation> = self.revoked.values().collect();
        postcard::to_io(&revoked, &mut out).expect("revocations always serialise and a Vec never fails");
        if format == WIRE_FORMAT {
            postcard::to_io(&rollbacks, &mut out).expect("pairs of strings always serialise and a Vec never fails");
        }
        out
    }

    /// Parses [`ServiceMap::encode`]'s output, refusing input longer than `max_len` before
    /// looking at it.
    pub fn decode(bytes: &[u8], max_len: usize) -> Result<Self, DecodeError> {
        if bytes.len() > max_len {
            return Err(DecodeError::TooLarge { len: bytes.len(), max: max_len });
        }
        let (&format, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        let malformed = |source| DecodeError::Malformed { source };
        let (entries, revoked, rest) = match format {
            WIRE_FORMAT | WIRE_FORMAT_NO_ROLLBACK => {
                let (mut entries, rest): (BTreeMap<String, Entry>, _) =
                    postcard::take_from_bytes(body).map_err(malformed)?;
                let (revoked, mut rest): (Vec<Revocation>, _) = postcard::take_from_bytes(rest).map_err(malformed)?;
                if format == WIRE_FORMAT {
                    let (rollbacks, after): (Vec<(String, String)>, _) =
                        postcard::take_from_bytes(rest).map_err(malformed)?;
                    rest = after;
                    // Canonical: names in strictly increasing order, each a live service, each
                    // image non-empty (format 5 is written only with at least one).
                    if rollbacks.is_empty() || rollbacks.windows(2).any(|w| w[0].0 >= w[1].0) {
                        return Err(DecodeError::RollbackNotCanonical);
                    }
                    for (name, image) in rollbacks {
                        let Some(spec) = entries.get_mut(&name).and_then(|e| e.spec.as_mut()) else {
                            return Err(DecodeError::RollbackWithoutService { name });
                        };
                        if image.is_empty() {
                            return Err(DecodeError::RollbackNotCanonical);
                        }
                        spec.rollback_image = Some(image);
                    }
                }
                (entries, revoked, rest)
            }
            WIRE_FORMAT_UNSEALED => {
                let (old, rest): (BTreeMap<String, UnsealedEntry>, _) =
                    postcard::take_from_bytes(body).map_err(malformed)?;
                let entries =
                    old.into_iter().map(|(k, e)| (k, Entry { version: e.version, spec: e.spec, seal: None })).collect();
                (entries, Vec::new(), rest)
            }
            format => return Err(DecodeError::UnknownFormat { format }),
        };
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes { extra: rest.len() });
        }
        if revoked.len() > MAX_REVOCATIONS {
            return Err(DecodeError::TooManyRevocations { count: revoked.len() });
        }
        let mut map = ServiceMap::try_from(entries)?;
        for r in revoked {
            map.revoke(r);
        }
        Ok(map)
    }
}

fn hash_str(h: &mut blake3::Hasher, s: &str) {
    h.update(&(s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

fn encode_spec(spec: &ServiceSpec) -> Vec<u8> {
    postcard::to_stdvec(spec).expect("a ServiceSpec always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, image: &str) -> ServiceSpec {
        ServiceSpec { name: name.into(), image: image.into(), replicas: 2, max_unavailable: 1, ..Default::default() }
    }

    #[test]
    fn put_remove_and_stale_edits() {
        let mut m = ServiceMap::new();
        assert!(m.put(spec("web", "nginx:1"), Hlc::new(10, 0, "a")));
        assert!(!m.put(spec("web", "nginx:0"), Hlc::new(9, 0, "b")), "older put loses");
        assert_eq!(m.get("web").map(|s| s.image.as_str()), Some("nginx:1"));
        assert!(m.remove("web", Hlc::new(11, 0, "b")));
        assert_eq!(m.get("web"), None);
        assert_eq!(m.len(), 1, "the tombstone stays");
        assert_eq!(m.live().count(), 0);
        assert!(!m.put(spec("web", "nginx:1"), Hlc::new(10, 5, "a")), "put older than the remove loses");
        assert!(m.put(spec("web", "nginx:2"), Hlc::new(12, 0, "a")), "newer put revives");
        assert_eq!(
            m.live().map(|(n, s, v)| (n, s.image.as_str(), v.millis)).collect::<Vec<_>>(),
            [("web", "nginx:2", 12)]
        );
    }

    #[test]
    fn remove_of_unknown_name_leaves_a_tombstone() {
        let mut a = ServiceMap::new();
        a.remove("db", Hlc::new(5, 0, "a"));
        let mut b = ServiceMap::new();
        b.put(spec("db", "pg"), Hlc::new(4, 0, "b"));
        assert!(b.merge(&a));
        assert_eq!(b.get("db"), None);
        assert!(!a.merge(&b));
    }

    #[test]
    fn equal_versions_tie_break_independently_of_order() {
        let v = Hlc::new(1, 1, "x");
        let mut a = ServiceMap::new();
        a.put(spec("s", "one"), v.clone());
        let mut b = ServiceMap::new();
        b.put(spec("s", "two"), v.clone());
        let mut c = ServiceMap::new();
        c.remove("s", v);
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, ba);
        ab.merge(&c);
        assert_eq!(ab.get("s"), None, "tombstone wins a tie");
    }

    #[test]
    fn digest_tracks_equality() {
        let mut a = ServiceMap::new();
        let empty = a.digest();
        a.put(spec("web", "nginx"), Hlc::new(1, 0, "a"));
        let one = a.digest();
        assert_ne!(empty, one);
        let mut b = ServiceMap::new();
        b.put(spec("web", "nginx"), Hlc::new(1, 0, "a"));
        assert_eq!(b.digest(), one);
        b.put(spec("web", "nginx"), Hlc::new(1, 0, "b"));
        assert_ne!(b.digest(), one, "the version is part of the state");
    }

    #[test]
    fn wire_round_trip_and_limits() {
        let mut m = ServiceMap::new();
        let mut s = spec("web", "nginx");
        s.constraints.insert("region".into(), "eu".into());
        s.spread = Some("zone".into());
        m.put(s, Hlc::new(1, 0, "a"));
        m.remove("old", Hlc::new(2, 0, "a"));
        let bytes = m.encode();
        assert_eq!(ServiceMap::decode(&bytes, 1 << 20).unwrap(), m);
        assert!(matches!(ServiceMap::decode(&bytes, 3), Err(DecodeError::TooLarge { .. })));
        assert!(matches!(ServiceMap::decode(&[], 10), Err(DecodeError::Empty)));
        assert!(matches!(ServiceMap::decode(&[9, 0], 10), Err(DecodeError::UnknownFormat { format: 9 })));
        assert!(matches!(ServiceMap::decode(&bytes[..bytes.len() - 1], 1 << 20), Err(DecodeError::Malformed { .. })));
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(ServiceMap::decode(&long, 1 << 20), Err(DecodeError::TrailingBytes { extra: 1 })));
        // JSON goes through the same validation.
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<ServiceMap>(&json).unwrap(), m);
    }

    #[test]
    fn decode_refuses_a_key_that_differs_from_the_spec_name() {
        let mut entries = BTreeMap::new();
        entries.insert(
            "web".to_string(),
            Entry { version: Hlc::new(1, 0, "a"), spec: Some(spec("db", "pg")), seal: None },
        );
        let mut bytes = vec![WIRE_FORMAT_NO_ROLLBACK];
        bytes.extend(postcard::to_stdvec(&entries).unwrap());
        bytes.push(0); // no revocations
        let err = ServiceMap::decode(&bytes, 1 << 20).unwrap_err();
        assert!(matches!(err, DecodeError::NameMismatch { .. }), "{err}");
    }

    #[test]
    fn gc_drops_only_old_tombstones() {
        let mut m = ServiceMap::new();
        m.put(spec("keep", "x"), Hlc::new(1, 0, "a"));
        m.remove("old", Hlc::new(5, 0, "a"));
        m.remove("new", Hlc::new(50, 0, "a"));
        assert_eq!(m.gc_tombstones(10), 1);
        assert!(m.entry("old").is_none() && m.entry("new").is_some() && m.get("keep").is_some());
        assert_eq!(m.max_version(), Some(&Hlc::new(50, 0, "a")));
    }

    #[test]
    fn a_revocation_voids_the_revoked_writers_entries_everywhere() {
        use crate::trust::{Writer, revoke};
        let op = [1u8; 32];
        let (good, bad) = (Writer::new(&[2; 32], &op), Writer::new(&[3; 32], &op));
        let sealed = |w: &Writer, name: &str, image: &str, v: Hlc| {
            let s = spec(name, image);
            Entry { seal: Some(w.seal(name, &v, Some(&s))), version: v, spec: Some(s) }
        };
        let mut a = ServiceMap::new();
        a.insert_entry("web", sealed(&good, "web", "app:1", Hlc::new(10, 0, "g")));
        a.insert_entry("db", sealed(&bad, "db", "pg:1", Hlc::new(5, 0, "b")));
        let mut b = a.clone();
        b.insert_entry("web", sealed(&bad, "web", "evil:1", Hlc::new(30, 0, "b")));
        assert_eq!(b.get("web").map(|s| s.image.as_str()), Some("evil:1"));
        // Revoked: every entry b sealed goes, a backdated one included; a's web comes back
        // from the peer that kept it.
        let r = revoke(&op, bad.public(), Hlc::new(20, 0, "g"));
        assert!(b.revoke(r.clone()));
        assert_eq!(b.get("web"), None);
        assert_eq!(b.get("db"), None, "an entry stamped before the revocation is void too");
        assert!(b.merge(&a));
        assert_eq!(b.get("web").map(|s| s.image.as_str()), Some("app:1"));
        let mut c = ServiceMap::new();
        c.insert_entry("new", sealed(&bad, "new", "evil:1", Hlc::new(1, 0, "b")));
        assert!(a.merge(&b), "the revocation travels");
        assert!(!a.merge(&c), "a backdated entry of a revoked writer is not merged");
        assert_eq!(a.get("web").map(|s| s.image.as_str()), Some("app:1"));
        assert_eq!(a.get("db"), None);
        // The revocation survives the wire, and changes the digest.
        let back = ServiceMap::decode(&a.encode(), 1 << 20).unwrap();
        assert_eq!(back.revocations().count(), 1);
        assert_eq!(back.digest(), a.digest());
        assert_ne!(a.digest(), ServiceMap::try_from(a.entries.clone()).unwrap().digest());
    }

    #[test]
    fn a_rollback_image_travels_beside_the_spec_and_is_sealed_with_it() {
        use crate::trust::{Authority, Writer};
        let op = [1u8; 32];
        let w = Writer::new(&[2; 32], &op);
        let authority = Authority::from_secret(&op);
        let v = Hlc::new(10, 0, "g");
        let mut s = spec("web", "app:2");
        s.rollback_image = Some("app:1".into());
        let mut m = ServiceMap::new();
        m.insert_entry("web", Entry { seal: Some(w.seal("web", &v, Some(&s))), version: v.clone(), spec: Some(s) });
        m.put(spec("db", "pg:1"), Hlc::new(3, 0, "g"));
        let back = ServiceMap::decode(&m.encode(), 1 << 20).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.get("web").and_then(|s| s.rollback_image.as_deref()), Some("app:1"));
        assert_eq!(back.get("db").and_then(|s| s.rollback_image.clone()), None);
        assert_eq!(back.digest(), m.digest());
        let entry = back.entry("web").unwrap();
        assert!(authority.check_entry("web", entry).is_ok());
        // The seal covers the rollback image: another one (or none) does not verify.
        let mut forged = entry.clone();
        forged.spec.as_mut().unwrap().rollback_image = Some("evil:1".into());
        assert!(authority.check_entry("web", &forged).is_err());
        forged.spec.as_mut().unwrap().rollback_image = None;
        assert!(authority.check_entry("web", &forged).is_err());
        // A different rollback image is a different map.
        let mut other = m.clone();
        other.entries.get_mut("web").unwrap().spec.as_mut().unwrap().rollback_image = None;
        assert_ne!(other.digest(), m.digest());
    }

    #[test]
    fn a_format_4_map_is_read_and_its_seals_still_verify() {
        use crate::trust::{Authority, Writer};
        let op = [1u8; 32];
        let w = Writer::new(&[2; 32], &op);
        let v = Hlc::new(10, 0, "g");
        let s = spec("web", "app:1");
        let mut entries = BTreeMap::new();
        entries.insert("web".to_string(), Entry { seal: Some(w.seal("web", &v, Some(&s))), version: v, spec: Some(s) });
        // What a format-4 peer sends: entries and revocations, nothing after.
        let mut bytes = vec![4u8];
        postcard::to_io(&entries, &mut bytes).unwrap();
        bytes.push(0);
        let m = ServiceMap::decode(&bytes, 1 << 20).unwrap();
        assert!(Authority::from_secret(&op).check_entry("web", m.entry("web").unwrap()).is_ok());
        assert_eq!(m.get("web").and_then(|s| s.rollback_image.clone()), None);
    }

    #[test]
    fn rollback_images_are_canonical_and_a_map_without_any_is_format_4() {
        let mut m = ServiceMap::new();
        m.put(spec("a", "app:1"), Hlc::new(1, 0, "x"));
        m.put(spec("b", "app:1"), Hlc::new(1, 0, "x"));
        assert_eq!(m.encode()[0], WIRE_FORMAT_NO_ROLLBACK, "peers of the version before read it");
        let mut body = Vec::new();
        postcard::to_io(&m.entries, &mut body).unwrap();
        body.push(0);
        let with = |pairs: &[(&str, &str)]| {
            let mut b = vec![WIRE_FORMAT];
            b.extend(&body);
            postcard::to_io(&pairs.to_vec(), &mut b).unwrap();
            ServiceMap::decode(&b, 1 << 20)
        };
        assert!(with(&[("a", "app:0"), ("b", "app:0")]).is_ok());
        for bad in [&[][..], &[("b", "app:0"), ("a", "app:0")], &[("a", "app:0"), ("a", "app:9")], &[("a", "")]] {
            assert!(matches!(with(bad), Err(DecodeError::RollbackNotCanonical)), "{bad:?}");
        }
    }

    #[test]
    fn a_rollback_image_for_no_service_is_refused() {
        let mut m = ServiceMap::new();
        m.put(spec("web", "app:1"), Hlc::new(1, 0, "a"));
        m.remove("gone", Hlc::new(2, 0, "a"));
        let mut bytes = vec![WIRE_FORMAT];
        postcard::to_io(&m.entries, &mut bytes).unwrap();
        bytes.push(0);
        for name in ["nope", "gone"] {
            let mut b = bytes.clone();
            postcard::to_io(&vec![(name, "app:0")], &mut b).unwrap();
            let err = ServiceMap::decode(&b, 1 << 20).unwrap_err();
            assert!(matches!(err, DecodeError::RollbackWithoutService { .. }), "{err}");
        }
    }

    #[test]
    fn a_format_3_map_is_read_without_seals() {
        let mut old = BTreeMap::new();
        old.insert("web".to_string(), (Hlc::new(1, 0, "a"), Some(spec("web", "app:1"))));
        let mut bytes = vec![3u8];
        postcard::to_io(&old, &mut bytes).unwrap();
        let m = ServiceMap::decode(&bytes, 1 << 20).unwrap();
        assert_eq!(m.entry("web").map(|e| (e.seal.is_none(), e.version.millis)), Some((true, 1)));
    }
}
