//! What a peer publishes about its network, under the key [`KEY`] of its signed peer record:
//! its subnet claim, its transport and, for the encrypted one, its WireGuard public key, and
//! the names of its containers. Everything read from another peer is bounded and checked:
//! a malformed value is ignored (the peer gets no route), never trusted in part.

use crate::Transport;
use crate::ipam::{Claim, Subnet};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The record key.
pub const KEY: &str = "net";
/// At most this many container names per peer are published (the record is bounded).
pub const MAX_NAMES: usize = 128;

/// A peer's network, as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRecord {
    /// The subnet it claims.
    pub subnet: Subnet,
    /// When it first claimed it (ms since the epoch; 0 for a subnet fixed by configuration).
    pub since_ms: u64,
    /// Its transport.
    pub transport: Transport,
    /// The transport's UDP port.
    pub port: u16,
    /// Its WireGuard public key, hex (encrypted transport only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wg_key: Option<String>,
    /// When its transport last started (ms since the epoch).
    #[serde(default)]
    pub epoch: u64,
    /// Its containers' names and addresses (at most [`MAX_NAMES`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub names: BTreeMap<String, Ipv4Addr>,
}

impl NetRecord {
    /// The claim it makes, as peer `peer`.
    pub fn claim(&self, peer: &str) -> Claim {
        Claim { peer: peer.to_string(), subnet: self.subnet, since_ms: self.since_ms }
    }

    /// The record as published.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Reads another peer's value: `None` when it is malformed. Names that are not valid
    /// container names, or addresses outside the peer's own subnet, are dropped.
    pub fn from_value(v: &serde_json::Value) -> Option<NetRecord> {
        let mut r: NetRecord = serde_json::from_value(v.clone()).ok()?;
        if r.subnet.prefix > 30 || r.port == 0 {
            return None;
        }
        if r.wg_key.as_deref().is_some_and(|k| decode_key(k).is_none()) {
            return None;
        }
        let subnet = r.subnet;
        r.names.retain(|n, ip| shoal_types::container::check_name(n).is_ok() && subnet.contains(*ip));
        if r.names.len() > MAX_NAMES {
            r.names = r.names.into_iter().take(MAX_NAMES).collect();
        }
        Some(r)
    }

    /// The WireGuard key as bytes.
    pub fn wg_key_bytes(&self) -> Option<[u8; 32]> {
        self.wg_key.as_deref().and_then(decode_key)
    }
}

/// 64 hex digits to 32 bytes.
pub fn decode_key(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// 32 bytes as 64 hex digits.
pub fn encode_key(key: &[u8; 32]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> NetRecord {
        NetRecord {
            subnet: Subnet::parse("198.19.4.0/24").unwrap(),
            since_ms: 7,
            transport: Transport::Encrypted,
            port: 51820,
            wg_key: Some(encode_key(&[0xab; 32])),
            epoch: 1,
            names: [("web".to_string(), Ipv4Addr::new(198, 19, 4, 2))].into(),
        }
    }

    #[test]
    fn round_trips_and_drops_what_does_not_belong() {
        let r = rec();
        assert_eq!(NetRecord::from_value(&r.to_value()), Some(r.clone()));
        assert_eq!(r.wg_key_bytes(), Some([0xab; 32]));
        let mut lying = r.clone();
        lying.names.insert("other".into(), Ipv4Addr::new(198, 19, 9, 2));
        lying.names.insert("Bad Name!".into(), Ipv4Addr::new(198, 19, 4, 3));
        assert_eq!(
            NetRecord::from_value(&lying.to_value()).unwrap().names,
            r.names,
            "only its own subnet, valid names"
        );
        let mut bad_key = r.clone();
        bad_key.wg_key = Some("zz".into());
        assert_eq!(NetRecord::from_value(&bad_key.to_value()), None);
        assert_eq!(NetRecord::from_value(&serde_json::json!({"subnet": "x"})), None);
        let mut many = r;
        for i in 0..200u8 {
            many.names.insert(format!("c{i}"), Ipv4Addr::new(198, 19, 4, i));
        }
        assert_eq!(NetRecord::from_value(&many.to_value()).unwrap().names.len(), MAX_NAMES);
    }
}
