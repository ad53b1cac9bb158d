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
//! On the wire a map is one format byte followed by the postcard encoding of the entries;
//! [`ServiceMap::decode`] refuses input over a caller-given size before parsing it, and refuses
//! entries whose key differs from the name in their spec.

use crate::hlc::Hlc;
use serde::{Deserialize, Serialize, Serializer};
use shoal_types::ServiceSpec;
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// The format byte that starts [`ServiceMap::encode`]'s output.
pub const WIRE_FORMAT: u8 = 3;

/// One service name's register: the latest version and the spec it set, or `None` once removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The clock of the edit that wrote this entry.
    pub version: Hlc,
    /// The declared service, or `None` for a tombstone left by a remove.
    pub spec: Option<ServiceSpec>,
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
            (Some(a), Some(b)) => encode_spec(a).cmp(&encode_spec(b)),
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
}

/// The replicated map of declared services (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "BTreeMap<String, Entry>")]
pub struct ServiceMap {
    entries: BTreeMap<String, Entry>,
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
        Ok(ServiceMap { entries })
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
        self.apply(name, Entry { version: hlc, spec: Some(spec) })
    }

    /// Removes the service `name` at version `hlc`, leaving a tombstone (even if the name is
    /// unknown here, so that a concurrent older put elsewhere loses once the maps merge).
    /// Returns whether the map changed.
    pub fn remove(&mut self, name: &str, hlc: Hlc) -> bool {
        self.apply(name.to_string(), Entry { version: hlc, spec: None })
    }

    /// Merges `other` into this map: per name the winning entry is kept. Returns whether this map
    /// changed.
    pub fn merge(&mut self, other: &ServiceMap) -> bool {
        let mut changed = false;
        for (name, entry) in &other.entries {
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
                }
            }
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

    /// The wire form: [`WIRE_FORMAT`] followed by the postcard encoding of the entries.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![WIRE_FORMAT];
        postcard::to_io(&self.entries, &mut out).expect("a ServiceMap always serialises and a Vec never fails");
        out
    }

    /// Parses [`ServiceMap::encode`]'s output, refusing input longer than `max_len` before
    /// looking at it.
    pub fn decode(bytes: &[u8], max_len: usize) -> Result<Self, DecodeError> {
        if bytes.len() > max_len {
            return Err(DecodeError::TooLarge { len: bytes.len(), max: max_len });
        }
        let (&format, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if format != WIRE_FORMAT {
            return Err(DecodeError::UnknownFormat { format });
        }
        let (entries, rest): (BTreeMap<String, Entry>, _) =
            postcard::take_from_bytes(body).map_err(|source| DecodeError::Malformed { source })?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes { extra: rest.len() });
        }
        ServiceMap::try_from(entries)
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
        entries.insert("web".to_string(), Entry { version: Hlc::new(1, 0, "a"), spec: Some(spec("db", "pg")) });
        let mut bytes = vec![WIRE_FORMAT];
        bytes.extend(postcard::to_stdvec(&entries).unwrap());
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
}
