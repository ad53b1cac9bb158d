//! Addresses without a leader: each peer's container subnet and each service's virtual
//! address, as pure functions of what the peers' signed records and the service map say.
//!
//! **Subnets.** The cluster pool (`--cluster-subnet`, default [`DEFAULT_POOL`]) is cut into
//! per-peer subnets (default /24). A peer *claims* one: the subnet it held before (persisted in
//! its data dir), else the first free one from a slot its id hashes to. A claim is a
//! [`Claim`] `{peer, subnet, since}` published in the peer's signed record. Two claims of the
//! same subnet are resolved the same way on every peer: the older claim (`since`), then the
//! smaller peer id, keeps it ([`beats`]); the other peer claims again. A peer takes no subnet
//! that any record it knows claims — live or dead, until the dead peer's record is pruned — so
//! a peer that comes back after a crash finds its subnet still free.
//!
//! Why two live peers never *keep* the same subnet: every live peer eventually sees every other
//! live peer's record (gossip plus anti-entropy); a peer that sees a claim beating its own on
//! the same subnet gives its own up at once; [`beats`] is a strict total order on claims of one
//! subnet, so of any two live claimants exactly one sees the other beating it. The loser's next
//! claim avoids every subnet it knows to be claimed. Until the records meet (two peers joining
//! at the same moment, two sides of a partition) both may use the subnet; the simulation in
//! `tests/claims.rs` checks that with many concurrent joins and after a partition heals every
//! live peer ends with a subnet no other live peer holds, and that a peer keeps its subnet
//! across restarts.
//!
//! **Service addresses.** Each service asks for a virtual address when it is created
//! ([`pick_vip`], stored in its spec, kept by updates) from the VIP pool ([`DEFAULT_VIP_POOL`]).
//! Two services created at once may ask for the same one: [`vips`] resolves that the same way
//! on every peer (the smaller name keeps it, the other takes the next free address), so every
//! live service has a distinct, stable address.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

/// The default cluster pool: inside 198.18.0.0/15, which RFC 2544 reserves for benchmarking (no
/// LAN uses it), clear of the lab's 198.18.0.0/24 and the runtime benchmark's 198.18.200.0/24.
pub const DEFAULT_POOL: &str = "198.19.0.0/16";
/// The default size of one peer's subnet (254 containers).
pub const DEFAULT_PEER_PREFIX: u8 = 24;
/// The default pool of service addresses (4,094 services), clear of the lab and the cluster pool.
pub const DEFAULT_VIP_POOL: &str = "198.18.240.0/20";

/// An IPv4 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Subnet {
    /// Network address (host bits zero).
    pub base: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

/// A subnet that does not parse or does not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// Not `a.b.c.d/n`.
    #[error("{0:?} is not an IPv4 network like 198.19.0.0/16")]
    Parse(String),
    /// Host bits set.
    #[error("{0}: the address has host bits set; use the network address")]
    HostBits(String),
    /// Per-peer subnets larger than the pool, or too small to hold containers.
    #[error("per-peer subnets /{peer} do not fit the pool /{pool} (need pool < peer <= 29)")]
    Sizes {
        /// Pool prefix.
        pool: u8,
        /// Peer prefix.
        peer: u8,
    },
    /// Every subnet of the pool is claimed.
    #[error("all {0} subnets of the cluster pool are claimed; use a larger --cluster-subnet")]
    Exhausted(u32),
}

impl Subnet {
    /// Parses `a.b.c.d/n` (host bits must be zero).
    pub fn parse(text: &str) -> Result<Subnet, IpamError> {
        let err = || IpamError::Parse(text.to_string());
        let (ip, prefix) = text.split_once('/').ok_or_else(err)?;
        let base: Ipv4Addr = ip.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        if prefix > 32 {
            return Err(err());
        }
        let s = Subnet { base, prefix };
        if u32::from(base) & !s.mask() != 0 {
            return Err(IpamError::HostBits(text.to_string()));
        }
        Ok(s)
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) }
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.base)
    }

    /// Whether the two networks share an address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.contains(other.base) || other.contains(self.base)
    }

    /// The first usable address (the bridge's, the containers' gateway).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1)
    }

    /// Addresses in the network.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// The `i`-th address of the network.
    pub fn nth(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base).wrapping_add(i))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl std::str::FromStr for Subnet {
    type Err = IpamError;
    fn from_str(s: &str) -> Result<Self, IpamError> {
        Subnet::parse(s)
    }
}

/// The cluster pool cut into per-peer subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// The whole pool.
    pub net: Subnet,
    /// Prefix of one peer's subnet.
    pub peer_prefix: u8,
}

impl Pool {
    /// A pool of `net` in /`peer_prefix` subnets.
    pub fn new(net: Subnet, peer_prefix: u8) -> Result<Pool, IpamError> {
        if peer_prefix <= net.prefix || peer_prefix > 29 || net.prefix < 8 {
            return Err(IpamError::Sizes { pool: net.prefix, peer: peer_prefix });
        }
        Ok(Pool { net, peer_prefix })
    }

    /// How many peer subnets the pool holds.
    pub fn count(&self) -> u32 {
        1u32 << (self.peer_prefix - self.net.prefix)
    }

    /// The `i`-th peer subnet.
    pub fn subnet(&self, i: u32) -> Subnet {
        let step = 1u32 << (32 - u32::from(self.peer_prefix));
        Subnet { base: Ipv4Addr::from(u32::from(self.net.base) + i * step), prefix: self.peer_prefix }
    }

    /// The index of `s` in the pool, if it is one of its peer subnets.
    pub fn index(&self, s: &Subnet) -> Option<u32> {
        if s.prefix != self.peer_prefix || !self.net.contains(s.base) {
            return None;
        }
        let step = 1u32 << (32 - u32::from(self.peer_prefix));
        Some((u32::from(s.base) - u32::from(self.net.base)) / step)
    }
}

/// A peer's claim on a subnet, as its record publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Claim {
    /// The claiming peer's id.
    pub peer: String,
    /// The subnet.
    pub subnet: Subnet,
    /// When the peer first claimed it (its clock, ms since the epoch): older claims win.
    pub since_ms: u64,
}

/// Whether claim `a` keeps the subnet against `b` (same subnet): the older claim, then the
/// smaller peer id. A strict total order, the same on every peer.
pub fn beats(a: &Claim, b: &Claim) -> bool {
    (a.since_ms, &a.peer) < (b.since_ms, &b.peer)
}

fn slot_of(peer: &str, count: u32) -> u32 {
    let h = blake3::derive_key("shoal 2026 subnet slot", peer.as_bytes());
    (u32::from_le_bytes([h[0], h[1], h[2], h[3]])) % count
}

/// The claim peer `me` should hold, given the claim it held (`mine`, if any) and every other
/// claim it knows of (live or dead peers'). It keeps `mine` unless `mine` is outside the pool
/// or another claim of the same subnet beats it; otherwise it claims the first subnet no known
/// claim holds, from the slot its id hashes to, stamped `now_ms`.
pub fn claim<'a>(
    pool: &Pool,
    me: &str,
    mine: Option<&Claim>,
    others: impl IntoIterator<Item = &'a Claim>,
    now_ms: u64,
) -> Result<Claim, IpamError> {
    let others: Vec<&Claim> = others.into_iter().filter(|c| c.peer != me).collect();
    if let Some(m) = mine
        && pool.index(&m.subnet).is_some()
        && !others.iter().any(|o| o.subnet == m.subnet && beats(o, m))
    {
        return Ok(m.clone());
    }
    let count = pool.count();
    let mut taken = vec![false; count as usize];
    for i in others.iter().filter_map(|o| pool.index(&o.subnet)) {
        taken[i as usize] = true;
    }
    let start = slot_of(me, count);
    (0..count)
        .map(|k| (start + k) % count)
        .find(|i| !taken[*i as usize])
        .map(|i| Claim { peer: me.to_string(), subnet: pool.subnet(i), since_ms: now_ms })
        .ok_or(IpamError::Exhausted(count))
}

/// The subnet each live peer uses once every claim has been seen: each keeps its claim unless
/// another live claim of the same subnet beats it (then it has none until it claims again).
pub fn winners<'a>(claims: impl IntoIterator<Item = &'a Claim>) -> BTreeMap<Subnet, &'a Claim> {
    let mut out: BTreeMap<Subnet, &Claim> = BTreeMap::new();
    for c in claims {
        match out.get(&c.subnet) {
            Some(held) if beats(held, c) => {}
            _ => {
                out.insert(c.subnet, c);
            }
        }
    }
    out
}

/// A fresh virtual address for a new service: from the slot its name hashes to, the first one
/// of `pool` (network and broadcast addresses excluded) that no address in `taken` holds.
pub fn pick_vip(pool: &Subnet, name: &str, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let usable = (pool.size().saturating_sub(2)).min(u64::from(u32::MAX)) as u32;
    if usable == 0 {
        return None;
    }
    let start = slot_of(name, usable);
    (0..usable).map(|k| pool.nth(1 + (start + k) % usable)).find(|ip| !taken.contains(ip))
}

/// Every live service's address: the one it asked for (`requested`, from its spec), unless a
/// service with a smaller name asked for the same one, or it asked for none or one outside the
/// pool; those get [`pick_vip`] among what is left, in name order. The same on every peer that
/// has the same services.
pub fn vips<'a>(
    pool: &Subnet,
    services: impl IntoIterator<Item = (&'a str, Option<Ipv4Addr>)>,
) -> BTreeMap<String, Ipv4Addr> {
    let services: BTreeMap<&str, Option<Ipv4Addr>> = services.into_iter().collect();
    let mut out = BTreeMap::new();
    let mut taken = BTreeSet::new();
    let mut later = Vec::new();
    for (name, requested) in &services {
        match requested.filter(|ip| pool.contains(*ip) && !taken.contains(ip) && *ip != pool.base) {
            Some(ip) => {
                taken.insert(ip);
                out.insert(name.to_string(), ip);
            }
            None => later.push(*name),
        }
    }
    for name in later {
        if let Some(ip) = pick_vip(pool, name, &taken) {
            taken.insert(ip);
            out.insert(name.to_string(), ip);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pool() -> Pool {
        Pool::new(Subnet::parse(DEFAULT_POOL).unwrap(), 24).unwrap()
    }

    #[test]
    fn subnets_parse_and_pools_cut() {
        let p = pool();
        assert_eq!(p.count(), 256);
        assert_eq!(p.subnet(5).to_string(), "198.19.5.0/24");
        assert_eq!(p.index(&Subnet::parse("198.19.5.0/24").unwrap()), Some(5));
        assert_eq!(p.subnet(5).gateway(), Ipv4Addr::new(198, 19, 5, 1));
        assert!(matches!(Subnet::parse("198.19.0.1/16"), Err(IpamError::HostBits(_))));
        assert!(matches!(Pool::new(Subnet::parse("10.0.0.0/24").unwrap(), 16), Err(IpamError::Sizes { .. })));
        let lab = Subnet::parse("198.18.0.0/24").unwrap();
        assert!(!lab.overlaps(&p.net) && !lab.overlaps(&Subnet::parse(DEFAULT_VIP_POOL).unwrap()));
        assert!(!p.net.overlaps(&Subnet::parse(DEFAULT_VIP_POOL).unwrap()));
    }

    #[test]
    fn a_claim_is_kept_unless_an_older_one_holds_the_subnet() {
        let p = pool();
        let a = claim(&p, "a", None, &[], 10).unwrap();
        assert_eq!(claim(&p, "a", Some(&a), &[], 99).unwrap(), a, "kept across restarts");
        let older = Claim { peer: "z".into(), subnet: a.subnet, since_ms: 5 };
        let again = claim(&p, "a", Some(&a), std::slice::from_ref(&older), 20).unwrap();
        assert_ne!(again.subnet, a.subnet, "an older claim wins");
        assert_eq!(again.since_ms, 20);
        let same_age = Claim { peer: "b".into(), subnet: a.subnet, since_ms: 10 };
        assert_eq!(claim(&p, "a", Some(&a), std::slice::from_ref(&same_age), 20).unwrap(), a, "then the smaller id");
    }

    #[test]
    fn vips_are_distinct_stable_and_in_the_pool() {
        let pool = Subnet::parse(DEFAULT_VIP_POOL).unwrap();
        let web = pick_vip(&pool, "web", &BTreeSet::new()).unwrap();
        let m = vips(&pool, [("web", Some(web)), ("api", Some(web)), ("db", None)]);
        assert_eq!(m["api"], web, "the smaller name keeps a contested address");
        assert_ne!(m["web"], web);
        assert!(m.values().all(|ip| pool.contains(*ip)));
        assert_eq!(m.values().collect::<BTreeSet<_>>().len(), 3);
    }

    proptest! {
        #[test]
        fn vip_choice_is_deterministic_and_unique(names in proptest::collection::btree_set("[a-z]{1,6}", 0..40), seed in any::<u64>()) {
            let pool = Subnet::parse("10.9.0.0/26").unwrap();
            let mut taken = BTreeSet::new();
            let mut asked = Vec::new();
            for (i, n) in names.iter().enumerate() {
                // Some ask for a fresh address, some for one another already has (concurrent creates).
                let ip = if (seed >> (i % 64)) & 1 == 1 { taken.iter().next().copied() } else { pick_vip(&pool, n, &taken) };
                if let Some(ip) = ip { taken.insert(ip); }
                asked.push((n.as_str(), ip));
            }
            let a = vips(&pool, asked.iter().cloned());
            let mut rev = asked.clone();
            rev.reverse();
            prop_assert_eq!(&a, &vips(&pool, rev));
            prop_assert_eq!(a.len(), names.len().min(62));
            prop_assert_eq!(a.values().collect::<BTreeSet<_>>().len(), a.len());
            // Uncontested requests are kept.
            for (n, ip) in &asked {
                if let Some(ip) = ip && asked.iter().filter(|(_, o)| o == &Some(*ip)).count() == 1 {
                    prop_assert_eq!(a.get(*n), Some(ip));
                }
            }
        }

        #[test]
        fn a_claim_never_takes_a_subnet_someone_else_claims(n in 1usize..200, me in "[a-z0-9]{4,10}") {
            let p = Pool::new(Subnet::parse("10.0.0.0/16").unwrap(), 24).unwrap();
            let others: Vec<Claim> = (0..n as u32).map(|i| Claim { peer: format!("p{i}"), subnet: p.subnet(i * 7 % 256), since_ms: 1 }).collect();
            let c = claim(&p, &me, None, &others, 2).unwrap();
            prop_assert!(others.iter().all(|o| o.subnet != c.subnet));
        }
    }
}
